-- core.listen's bounds (src/lhttpd.c) and libevent's messages through
-- sonde.log (src/logq.c).  The server runs in a child lua5.4 (ASan and
-- all: it inherits the suite's environment) with the limits each test
-- gives; clients are LuaSocket sockets of this process, on loopback.
local socket = require "socket"
local helpers = require "helpers"

local q = helpers.q

-- The child: core.listen with the limits given as a Lua table
-- constructor in arg[1]; GET /quit calls core.unlisten from inside the
-- handler.  It prints the port, then "done" when core.run() returns.
local SERVER = [[
local core = require "sonde.core"
local log = require "sonde.log"
log.set_format("json")
local limits = load("return " .. arg[1])()
local port = assert(core.listen("127.0.0.1", 0, function(method, path)
  if path == "/quit" then
    core.unlisten()
    return 200, "bye\n"
  end
  return 200, "ok\n"
end, limits))
io.stdout:write(port, "\n")
io.stdout:flush()
core.run()
io.stdout:write("done\n")
io.stdout:flush()
]]

local Server = {}
Server.__index = Server

local servers = {}

local function start(limits)
  local dir = helpers.scratch()
  local s = setmetatable({ out = dir .. "/out", err = dir .. "/err",
    pidfile = dir .. "/pid", rcfile = dir .. "/rc" }, Server)
  local script = helpers.write(dir .. "/server.lua", SERVER)
  local lua = os.getenv("SONDE_LUA") or "lua5.4"
  local inner = string.format("%s %s %s %s </dev/null >%s 2>%s & echo $! >%s; "
    .. "wait $!; echo $? >%s", helpers.lua_env(), q(lua), q(script), q(limits),
    q(s.out), q(s.err), q(s.pidfile), q(s.rcfile))
  os.execute(string.format("sh -c %s >/dev/null 2>&1 &", q(inner)))
  local deadline = helpers.now() + 10
  repeat
    s.pid = tonumber((helpers.read_file(s.pidfile) or ""):match("(%d+)\n"))
    s.port = tonumber((helpers.read_file(s.out) or ""):match("^(%d+)\n"))
    if s.pid and s.port then break end
    helpers.sleep(0.02)
  until helpers.now() > deadline
  assert(s.port, "the server did not start: " .. (helpers.read_file(s.err) or ""))
  servers[#servers + 1] = s
  return s
end

function Server:stderr() return helpers.read_file(self.err) or "" end
function Server:stdout() return helpers.read_file(self.out) or "" end
function Server:rc() return tonumber((helpers.read_file(self.rcfile) or ""):match("%d+")) end

function Server:wait(timeout)
  local deadline = helpers.now() + (timeout or 10)
  while not self:rc() and helpers.now() < deadline do helpers.sleep(0.05) end
  return self:rc()
end

function Server:kill()
  if not self:rc() then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
    self:wait(5)
  end
end

-- VmRSS of the server, kB.
function Server:rss()
  local s = helpers.read_file("/proc/" .. self.pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Sockets the server holds open.
function Server:sockets()
  return helpers.sockets_of(self.pid)
end

-- Every client socket, closed after each test (a socket left to the
-- garbage collector would close in a later spec file's fd count).
local clients = {}

local function connect(port)
  local c = assert(socket.tcp())
  clients[#clients + 1] = c
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  return c
end

-- The status line of the answer to `raw` on a fresh connection (or nil
-- and the error), and the connection.
local function exchange(port, raw)
  local c = connect(port)
  c:send(raw)
  local line, err = c:receive("*l")
  return line, err, c
end

-- The connection is closed by the peer within `timeout` seconds.
local function closed_within(c, timeout)
  c:settimeout(timeout)
  while true do
    local _, err, partial = c:receive(4096)
    if err == "closed" then return true end
    if err == "timeout" then return false, partial end
    if err then return true end
  end
end

-- The time a poll waits in vain before a test concludes that something
-- did not happen (bounds are loose by an order of magnitude).
local function until_true(pred, timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local v = pred()
    if v then return v end
    helpers.sleep(0.05)
  until helpers.now() > deadline
  return pred()
end

describe("core.listen bounds", function()
  after_each(function()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    for _, s in ipairs(servers) do s:kill() end
    servers = {}
  end)

  it("a request announcing a body is answered 413 before any of it is read",
    function()
    local s = start("{}")
    local line = exchange(s.port, "POST / HTTP/1.1\r\nHost: x\r\n"
      .. "Content-Length: 1000000000\r\n\r\n" .. ("x"):rep(100))
    assert.are.equal("HTTP/1.1 413 Request Entity Too Large", line)
    -- and 64 MB sent anyway are not kept: the connection is closed
    local before = s:rss()
    local c = connect(s.port)
    c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
    local chunk = ("y"):rep(65536)
    for _ = 1, 1024 do
      if not c:send(chunk) then break end
    end
    c:close()
    local grown = s:rss() - before
    assert.is_true(grown < 16 * 1024, "the server grew by " .. grown .. " kB")
    assert.are.equal("HTTP/1.1 200 OK", (exchange(s.port, "GET / HTTP/1.1\r\n"
      .. "Host: x\r\nConnection: close\r\n\r\n")))
  end)

  it("a chunked body is refused the same way", function()
    local s = start("{}")
    local line = exchange(s.port, "POST / HTTP/1.1\r\nHost: x\r\n"
      .. "Transfer-Encoding: chunked\r\n\r\n1000\r\n" .. ("x"):rep(100))
    assert.are.equal("HTTP/1.1 413 Request Entity Too Large", line)
  end)

  it("the request line and headers are bounded (8 KiB): 400, closed", function()
    local s = start("{}")
    local line, _, c = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Long: "
      .. ("a"):rep(64 * 1024))
    assert.are.equal("HTTP/1.1 400 Bad Request", line)
    assert.is_true(closed_within(c, 5))
    -- just under the bound is fine
    line = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Long: "
      .. ("a"):rep(7 * 1024) .. "\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", line)
  end)

  it("max_header_bytes sets the bound", function()
    local s = start("{ max_header_bytes = 1024 }")
    local line = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Long: "
      .. ("a"):rep(2048) .. "\r\n\r\n")
    assert.are.equal("HTTP/1.1 400 Bad Request", line)
  end)

  it("connections are capped: the next waits in the backlog until one closes",
    function()
    local s = start("{ max_connections = 8, idle_timeout = 60, request_timeout = 60 }")
    local base = s:sockets()
    local conns = {}
    for i = 1, 20 do conns[i] = connect(s.port) end
    assert.is_truthy(until_true(function() return s:sockets() >= base + 8 end),
      "sockets: " .. s:sockets() .. " base " .. base)
    helpers.sleep(0.3)          -- the 12 others have their chance to come in
    assert.are.equal(base + 8, s:sockets())
    for _, c in ipairs(conns) do c:close() end
    -- every close is counted, requests or not: rounds of 8 idle
    -- connections closed by the client, then a request
    for _ = 1, 3 do
      local line = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal("HTTP/1.1 200 OK", line)
      conns = {}
      for i = 1, 8 do conns[i] = connect(s.port) end
      assert.is_truthy(until_true(function() return s:sockets() >= base + 8 end))
      for _, c in ipairs(conns) do c:close() end
    end
    local line = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", line)
    -- keep-alive connections that were answered count too
    conns = {}
    for i = 1, 8 do
      local l, _, c = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal("HTTP/1.1 200 OK", l)
      conns[i] = c
    end
    for _, c in ipairs(conns) do c:close() end
    line = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", line)
  end)

  it("an idle connection is closed after idle_timeout", function()
    local s = start("{ idle_timeout = 0.3, request_timeout = 60 }")
    local c = connect(s.port)
    assert.is_true(closed_within(c, 5))
    -- and one idle after an answer (keep-alive)
    local line
    line, _, c = exchange(s.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", line)
    assert.is_true(closed_within(c, 5))
  end)

  it("a slowloris (a byte now and then) is cut at request_timeout", function()
    local s = start("{ idle_timeout = 60, request_timeout = 1 }")
    local c = connect(s.port)
    local text, cut = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " .. ("a"):rep(100), false
    local deadline = helpers.now() + 8
    local i = 1
    while helpers.now() < deadline do
      if not c:send(text:sub(i, i)) then cut = true break end
      i = i + 1
      c:settimeout(0.2)
      local _, err = c:receive(1)
      if err == "closed" then cut = true break end
    end
    assert.is_true(cut, "still open after 8 s")
    assert.is_true(s:rss() > 0)     -- the server is still there
  end)

  it("a HEAD answer has the body's length and no body (kept connection)",
    function()
    local s = start("{}")
    local c = connect(s.port)
    c:send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    local head = {}
    repeat
      local line = assert(c:receive("*l"))
      head[#head + 1] = line
    until line == ""
    assert.are.equal("HTTP/1.1 200 OK", head[1])
    assert.is_truthy(table.concat(head, "\n"):find("Content-Length: 3", 1, true))
    -- the next answer on the connection starts right after the head
    c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", (c:receive("*l")))
  end)

  it("core.unlisten from inside the handler: the answer, then the loop ends",
    function()
    local s = start("{}")
    local others = {}
    for i = 1, 3 do others[i] = connect(s.port) end
    local line, _, c = exchange(s.port, "GET /quit HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", line)
    c:close()
    assert.are.equal(0, s:wait(10), s:stderr())
    assert.are.equal(s.port .. "\ndone\n", s:stdout())
    assert.is_nil(s:stderr():find("AddressSanitizer", 1, true), s:stderr())
  end)
end)

describe("libevent's own messages", function()
  it("go to sonde.log as JSON lines, at most 10 a second, the rest counted",
    function()
    -- evhttp logs "getaddrinfo: ..." for a name that does not resolve; the
    -- resolver is 127.0.0.1, where nothing answers: nothing leaves
    local out, ok = helpers.run_lua([[
      local core = require "sonde.core"
      local log = require "sonde.log"
      log.set_format("json")
      for _ = 1, 50 do
        assert(not core.listen("no-such-host.invalid", 0, function() end))
      end
      core.timer(1.5, function() end)
      core.run()
    ]], { loopback_resolver = true })
    assert.is_true(ok, out)
    local evs, others = helpers.decode_lines(out)
    assert.are.same({}, others)
    local texts = helpers.select(evs, "libevent")
    assert.is_true(#texts >= 1 and #texts <= 10, out)
    assert.is_truthy(texts[1].text:find("getaddrinfo", 1, true), out)
    assert.are.equal("warn", texts[1].level)
    local dropped = 0
    for _, e in ipairs(evs) do dropped = dropped + (e.dropped or 0) end
    assert.are.equal(50 - #texts, dropped, out)
    assert.are.equal(1, #helpers.select(evs, "log_dropped"), out)
  end)
end)
