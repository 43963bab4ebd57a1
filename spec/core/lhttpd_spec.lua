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

local function start(limits, text)
  local dir = helpers.scratch()
  local s = setmetatable({ out = dir .. "/out", err = dir .. "/err",
    pidfile = dir .. "/pid", rcfile = dir .. "/rc" }, Server)
  local script = helpers.write(dir .. "/server.lua", text or SERVER)
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

-- The streaming server: producers of every kind, and what they did
-- (GET /calls: the producers' calls so far; GET /ticks: a 10 ms timer's
-- ticks while /busy streamed).  Errors of callbacks go to stderr, one
-- "ERR" line each.
local STREAM_SERVER = [[
local core = require "sonde.core"
local log = require "sonde.log"
log.set_format("json")
local limits = load("return " .. arg[1])()
core.on_error(function(e)
  io.stderr:write("ERR ", (tostring(e):gsub("\n", " | ")), "\n")
  io.stderr:flush()
end)
local calls, ticks, during = 0, 0, nil
local quit
local function tick()
  ticks = ticks + 1
  if not quit then core.timer(0.01, tick) end
end
core.timer(0.01, tick)
-- piece i of a body: its number, padded, repeated to `size` bytes
local function piece(i, size)
  local unit = ("%08d\n"):format(i)
  return unit:rep(size // #unit + 1):sub(1, size)
end
local function pieces(n, size)
  local i = 0
  return function()
    calls = calls + 1
    i = i + 1
    if i > n then return nil end
    return piece(i, size)
  end
end
local function arg_of(q, k) return tonumber((q or ""):match(k .. "=(%d+)")) end
local port = assert(core.listen("127.0.0.1", 0, function(method, path, q)
  local n, size = arg_of(q, "n") or 80, arg_of(q, "size") or 65536
  if path == "/stream" then
    return 200, pieces(n, size), "text/plain"
  elseif path == "/gzstream" then
    return 200, pieces(n, size), "text/plain", "gzip"
  elseif path == "/gz" then
    return 200, piece(1, size), "text/plain", "gzip"
  elseif path == "/empty" then       -- "" steps, then a few bytes
    local i = 0
    return 200, function()
      calls = calls + 1
      i = i + 1
      if i <= 50 then return "" end
      if i == 51 then return "end\n" end
    end
  elseif path == "/raise" then
    local next_piece = pieces(1000, 1000)
    local i = 0
    return 200, function()
      i = i + 1
      if i > 3 then error("producer failed on purpose") end
      return next_piece()
    end, "text/plain", q == "gzip" and "gzip" or nil
  elseif path == "/table" then
    return 200, function() return { "ok", {} } end
  elseif path == "/list" then      -- lists of strings, written in turn
    local i = 0
    return 200, function()
      i = i + 1
      if i > 3 then return nil end
      return { "a" .. i, "", ("b"):rep(i) }
    end, "text/plain", q == "gzip" and "gzip" or nil
  elseif path == "/endless" then   -- until the client goes
    return 200, function()
      calls = calls + 1
      return piece(calls, 65536)
    end
  elseif path == "/busy" then      -- 200 steps of 2 ms of CPU each
    local i = 0
    return 200, function()
      calls = calls + 1
      i = i + 1
      if i == 1 then during = ticks end
      if i > 200 then
        during = ticks - during
        return nil
      end
      local t = os.clock()
      while os.clock() - t < 0.002 do end
      return "x"
    end
  elseif path == "/calls" then
    return 200, tostring(calls) .. "\n"
  elseif path == "/ticks" then
    return 200, tostring(during) .. "\n"
  elseif path == "/quit" then
    quit = true
    core.unlisten()
    return 200, "bye\n"
  end
  return 404, "no\n"
end, limits))
io.stdout:write(port, "\n")
io.stdout:flush()
core.run()
io.stdout:write("done\n")
io.stdout:flush()
]]

-- What curl got: its exit code, the body (decoded with --compressed),
-- the head; opts: path, compressed, http10, head (-I), raw.
local function curl(port, path, opts)
  opts = opts or {}
  local dir = helpers.scratch()
  local cmd = string.format("env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS "
    .. "curl -sS --max-time 20 %s %s %s %s -D %s -o %s %s 2>%s",
    opts.compressed and "--compressed" or "", opts.http10 and "--http1.0" or "",
    opts.head and "-I" or "", opts.raw and "--raw" or "",
    q(dir .. "/head"), q(dir .. "/body"),
    q("http://127.0.0.1:" .. port .. path), q(dir .. "/err"))
  local ok, _, rc = os.execute(cmd)
  return ok and 0 or rc, helpers.read_file(dir .. "/body") or "",
    helpers.read_file(dir .. "/head") or "", helpers.read_file(dir .. "/err")
end

-- A whole exchange on a raw connection: what came until the server
-- closed it.
local function raw_exchange(port, request)
  local c = connect(port)
  c:settimeout(10)
  c:send(request)
  local got, err, partial = c:receive("*a")
  return got or partial, err
end

local function expected(n, size)
  local parts = {}
  for i = 1, n do
    local unit = ("%08d\n"):format(i)
    parts[i] = unit:rep(size // #unit + 1):sub(1, size)
  end
  return table.concat(parts)
end

-- The body of a chunked message (after the head), and whether it ended
-- with the terminating chunk.
local function dechunk(text)
  local out, i = {}, 1
  while true do
    local size, j = text:match("^(%x+)\r\n()", i)
    if not size then return table.concat(out), false end
    size = tonumber(size, 16)
    if size == 0 then return table.concat(out), text:sub(j, j + 1) == "\r\n" end
    out[#out + 1] = text:sub(j, j + size - 1)
    i = j + size + 2
  end
end

local function value(s, path)
  local _, body = curl(s.port, path)
  return tonumber(body)
end

describe("core.listen: streamed replies", function()
  local s
  setup(function()
    s = start("{ idle_timeout = 5, request_timeout = 1 }", STREAM_SERVER)
  end)
  after_each(function()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    for _, x in ipairs(servers) do
      if x ~= s then x:kill() end
    end
    servers = { s }
  end)
  teardown(function()
    if s then s:kill() end
    servers = {}
    if s then assert.is_nil(s:stderr():find("AddressSanitizer", 1, true), s:stderr()) end
  end)

  it("a producer's 80 pieces of 64 KiB arrive whole and in order, chunked",
    function()
    local rc, body, head = curl(s.port, "/stream?n=80&size=65536")
    assert.are.equal(0, rc)
    assert.are.equal(80 * 65536, #body)
    assert.is_true(body == expected(80, 65536), "the body differs")
    assert.is_truthy(head:find("Transfer-Encoding: chunked", 1, true), head)
    assert.is_nil(head:find("Content-Length", 1, true), head)
    -- on the wire: chunks, the terminating one last; a reply that takes
    -- longer than request_timeout (1 s) is not cut by it (a slow reader:
    -- 32 MiB, more than the kernel's buffers, and a pause of 1.5 s)
    local c = connect(s.port)
    c:send("GET /stream?n=512&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
    local head_lines = {}
    repeat
      local line = assert(c:receive("*l"))
      head_lines[#head_lines + 1] = line
    until line == ""
    assert.are.equal("HTTP/1.1 200 OK", head_lines[1])
    local parts = {}
    while true do
      if #parts == 10 then helpers.sleep(1.5) end
      local size = tonumber(assert(c:receive("*l")), 16)
      if size == 0 then break end
      parts[#parts + 1] = assert(c:receive(size))
      assert.are.equal("", (c:receive("*l")))
    end
    assert.are.equal("", (c:receive("*l")))    -- the end of the last chunk
    -- and the connection serves the next request (at once: the
    -- request_timeout counts again from the end of the answer)
    c:send("GET /calls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", (c:receive("*l")))
    assert.is_true(table.concat(parts) == expected(512, 65536))
  end)

  it("steps with no bytes out go on at the next loop turns", function()
    local rc, body = curl(s.port, "/empty")
    assert.are.equal(0, rc)
    assert.are.equal("end\n", body)
  end)

  it("gzip: a string body and a streamed one decode to the original",
    function()
    local rc, body, head = curl(s.port, "/gz?size=100000", { compressed = true })
    assert.are.equal(0, rc)
    assert.is_true(body == expected(1, 100000), "the body differs")
    assert.is_truthy(head:find("Content-Encoding: gzip", 1, true), head)
    assert.is_truthy(head:find("Vary: Accept-Encoding", 1, true), head)
    local clen = tonumber(head:match("Content%-Length: (%d+)"))
    assert.is_truthy(clen and clen < 100000, head)
    rc, body, head = curl(s.port, "/gzstream?n=80&size=65536", { compressed = true })
    assert.are.equal(0, rc)
    assert.is_true(body == expected(80, 65536), "the body differs")
    assert.is_truthy(head:find("Content-Encoding: gzip", 1, true), head)
    assert.is_truthy(head:find("Transfer-Encoding: chunked", 1, true), head)
    -- compressed on the wire (the raw bytes are a gzip stream)
    local _, raw = curl(s.port, "/gzstream?n=80&size=65536")
    assert.is_true(#raw < 80 * 65536 // 4, "raw " .. #raw)
    assert.are.equal("\31\139", raw:sub(1, 2))
  end)

  it("HEAD: the head only, the producer is never called", function()
    local before = value(s, "/calls")
    local got = raw_exchange(s.port,
      "HEAD /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", got:match("^[^\r]*"))
    assert.is_nil(got:find("Content-Length", 1, true), got)
    assert.are.equal("\r\n\r\n", got:sub(-4), got)
    assert.are.equal(before, value(s, "/calls"))
  end)

  it("HTTP/1.0: the body without chunks, ended by the close", function()
    local got = raw_exchange(s.port, "GET /stream?n=10&size=1000 HTTP/1.0\r\n"
      .. "Connection: keep-alive\r\n\r\n")
    local head, body = got:match("^(.-\r\n\r\n)(.*)$")
    assert.is_truthy(head, got:sub(1, 300))
    assert.is_nil(head:find("chunked", 1, true), head)
    assert.is_nil(head:find("Content-Length", 1, true), head)
    assert.is_true(body == expected(10, 1000), "the body differs")
  end)

  it("a producer that raises: reported, and the reply ends without its "
    .. "last chunk", function()
    local rc, body = curl(s.port, "/raise")
    assert.are.equal(18, rc)     -- CURLE_PARTIAL_FILE
    assert.are.equal(3000, #body)
    assert.is_truthy(until_true(function()
      return s:stderr():find("ERR [^\n]*producer failed on purpose")
    end), s:stderr())
    local got = raw_exchange(s.port, "GET /raise HTTP/1.1\r\nHost: x\r\n\r\n")
    local _, complete = dechunk(got:match("\r\n\r\n(.*)$"))
    assert.is_false(complete)
    -- gzip'd too; and HTTP/1.0 (whose end is the close) is reset
    rc = curl(s.port, "/raise?gzip", { compressed = true })
    assert.is_true(rc ~= 0)
    rc = curl(s.port, "/raise", { http10 = true })
    assert.are.equal(56, rc)     -- CURLE_RECV_ERROR: reset
  end)

  it("a producer returning a list with an item not a string: an error "
    .. "naming it", function()
    local rc = curl(s.port, "/table")
    assert.are.equal(18, rc)
    assert.is_truthy(until_true(function()
      return s:stderr():find("ERR [^\n]*a body producer returned a list "
        .. "whose item 2 is a table")
    end), s:stderr())
  end)

  it("a producer returning lists of strings: each written in turn, plain "
    .. "and gzip'd", function()
    for _, q in ipairs { "", "?gzip" } do
      local rc, body = curl(s.port, "/list" .. q, { compressed = q ~= "" })
      assert.are.equal(0, rc)
      assert.are.equal("a1ba2bba3bbb", body)
    end
  end)

  it("a client gone mid-stream frees the stream: no more calls, its "
    .. "socket closed", function()
    local base = s:sockets()
    local c = connect(s.port)
    c:send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_truthy(c:receive(200000))
    c:close()
    assert.is_truthy(until_true(function() return s:sockets() == base end),
      "sockets " .. s:sockets() .. ", base " .. base)
    local calls = value(s, "/calls")
    helpers.sleep(0.3)
    assert.are.equal(calls, value(s, "/calls") - 0)
    -- many times over: the descriptors come back each time
    for _ = 1, 20 do
      c = connect(s.port)
      c:send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.is_truthy(c:receive(1000))
      c:close()
    end
    assert.is_truthy(until_true(function() return s:sockets() == base end),
      "sockets " .. s:sockets() .. ", base " .. base)
  end)

  it("a client that stops reading is cut at the idle timeout", function()
    local s2 = start("{ idle_timeout = 0.5, request_timeout = 60 }", STREAM_SERVER)
    local base = s2:sockets()
    local c = connect(s2.port)
    c:send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_truthy(c:receive(1000))
    -- the kernel's buffers fill, then nothing moves for 0.5 s
    assert.is_truthy(until_true(function() return s2:sockets() == base end),
      "sockets " .. s2:sockets() .. ", base " .. base)
    assert.is_true(closed_within(c, 10))
  end)

  it("timers run between steps", function()
    local rc, body = curl(s.port, "/busy")
    assert.are.equal(0, rc)
    assert.are.equal(200, #body)
    -- 200 steps of 2 ms: a 10 ms timer fired in between (a loop held for
    -- the whole body would show none)
    local ticks = value(s, "/ticks")
    assert.is_truthy(ticks and ticks >= 5, "ticks " .. tostring(ticks))
  end)

  it("core.unlisten during a stream: the stream ends unfinished, the "
    .. "loop returns", function()
    local s2 = start("{}", STREAM_SERVER)
    local c = connect(s2.port)
    c:send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_truthy(c:receive(1000))
    assert.are.equal("HTTP/1.1 200 OK", (exchange(s2.port,
      "GET /quit HTTP/1.1\r\nHost: x\r\n\r\n")))
    assert.are.equal(0, s2:wait(10), s2:stderr())
    assert.are.equal(s2.port .. "\ndone\n", s2:stdout())
    c:settimeout(5)
    local rest, err, partial = c:receive("*a")
    local _, complete = dechunk(((rest or partial or ""):match("\r\n\r\n(.*)$")) or "")
    assert.is_false(complete, tostring(err))
    assert.is_nil(s2:stderr():find("AddressSanitizer", 1, true), s2:stderr())
  end)
end)
