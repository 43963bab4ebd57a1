-- Scrapes in flight against the host (src/lhttpd.c streams, src/lexpo.c,
-- lua/sonde/endpoints.lua): slow readers of /metrics and /status, plain
-- and gzip, HTTP/1.1 and 1.0, while SIGHUP replaces the script by one with
-- far fewer probes.  Each reply must be whole and valid, or visibly cut
-- (no terminating chunk); the host goes on probing and gives its sockets
-- back.  Under SANITIZE=1 the host is the ASan build: a stream reading a
-- freed probe would abort it.
local socket = require "socket"
local helpers = require "helpers"

local PROMTOOL = "/usr/bin/promtool"

-- N probes on a closed loopback port (a refused connection per run), and
-- "tick" every 0.2 s.
local function script_text(n, port)
  return ([[
    local sonde = require "sonde"
    for i = 1, %d do
      sonde.probe { name = "p-" .. i, period = 10,
        labels = { team = 't"\\' .. (i %% 3) },
        tcp_socket = { host = "127.0.0.1", port = %d } }
    end
    sonde.probe { name = "tick", period = 0.2,
      tcp_socket = { host = "127.0.0.1", port = %d } }
  ]]):format(n, port, port)
end

local function closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- The body of a chunked reply, and whether its terminating chunk came.
local function dechunk(body)
  local out, i = {}, 1
  while true do
    local size, j = body:match("^(%x+)[^\r]*\r\n()", i)
    if not size then return table.concat(out), false end
    size = tonumber(size, 16)
    if size == 0 then return table.concat(out), body:sub(j, j + 1) == "\r\n" end
    if #body < j + size + 1 then return table.concat(out), false end
    out[#out + 1] = body:sub(j, j + size - 1)
    i = j + size + 2
  end
end

describe("scrapes in flight (--listen)", function()
  after_each(helpers.cleanup_hosts)

  it("slow readers of /metrics and /status over a SIGHUP that removes "
    .. "most probes: whole and valid or cut, the host probes on and gives "
    .. "its sockets back", function()
    local port = closed_port()
    local path = helpers.script("scrape_hostile.lua", script_text(600, port))
    local h = helpers.host_start { "--log-format", "json", "--listen",
      "127.0.0.1:0", path }
    local lport = helpers.listen_port(h)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "tick" }) >= 3
    end, 15), h:stderr())
    local base = helpers.sockets_of(h.pid)

    local conns = {}
    for i = 1, 16 do
      local c = assert(socket.tcp4())
      -- a small window: the host cannot write a reply ahead of the reader
      assert(c:setoption("recv-buffer-size", 4096))
      assert(c:connect("127.0.0.1", lport))
      local what = i % 2 == 0 and "/metrics" or "/status"
      local gzip = i % 4 < 2
      local v10 = i % 3 == 0
      c:send(("GET %s HTTP/1.%d\r\nHost: x\r\nConnection: close\r\n%s\r\n")
        :format(what, v10 and 0 or 1, gzip and "Accept-Encoding: gzip\r\n" or ""))
      c:settimeout(0)
      conns[i] = { c = c, path = what, gzip = gzip, v10 = v10, parts = {},
        n = 0 }
    end
    -- read a little of each, so that every reply is under way
    local function read_some(limit)
      local open = 0
      for _, k in ipairs(conns) do
        if not k.done then
          local data, err, partial = k.c:receive(limit)
          data = data or partial
          if data and #data > 0 then
            k.parts[#k.parts + 1] = data
            k.n = k.n + #data
          end
          if err == "closed" then k.done = true else open = open + 1 end
        end
      end
      return open
    end
    local deadline = helpers.now() + 20
    repeat
      read_some(512)
      local started = 0
      for _, k in ipairs(conns) do
        if k.n >= 1024 or k.done then started = started + 1 end
      end
      if started == #conns then break end
      socket.select(nil, nil, 0.01)
    until helpers.now() > deadline

    local in_flight = 0
    for _, k in ipairs(conns) do
      if not k.done then in_flight = in_flight + 1 end
    end
    assert.is_true(in_flight >= 8, ("%d replies in flight"):format(in_flight))
    -- the script now declares 20 probes: 580 go while their lines stream
    helpers.replace(path, script_text(20, port))
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload", { status = "ok" }) >= 1
    end, 20), h:stderr())

    deadline = helpers.now() + 60
    while read_some(65536) > 0 and helpers.now() < deadline do
      socket.select(nil, nil, 0.002)
    end
    local whole, cut = 0, 0
    for _, k in ipairs(conns) do
      assert.is_true(k.done, k.path .. ": still open")
      k.c:close()
      local raw = table.concat(k.parts)
      local head, body = raw:match("^(.-\r\n)\r\n(.*)$")
      assert.is_truthy(head and head:find("^HTTP/1%.[01] 200"), raw:sub(1, 200))
      local complete
      if k.v10 then           -- HTTP/1.0: the body ends with the connection
        complete = nil
      else
        body, complete = dechunk(body)
      end
      if complete == false then
        cut = cut + 1
      elseif not k.gzip then
        if complete then whole = whole + 1 end
        if k.path == "/status" then
          assert.is_truthy(helpers.json_decode(body), body:sub(-200))
        elseif complete then
          assert.is_truthy(body:find("\nsonde_build_info{", 1, true))
          local f = os.tmpname()
          helpers.write(f, body)
          local ok = os.execute(PROMTOOL .. " check metrics <" .. f
            .. " >/dev/null 2>&1")
          os.remove(f)
          assert.is_true(ok == true or ok == 0, "promtool refused a /metrics")
        end
      end
    end
    assert.is_true(whole + cut > 0)

    -- the host probes on, answers, and its sockets come back
    local ticks = #h:events("probe_result", { probe = "tick" })
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "tick" }) >= ticks + 3
    end, 15), h:stderr())
    assert.are.equal(200, helpers.fetch(lport, "/healthz").http_status)
    assert.is_truthy(h:wait_for(function()
      return helpers.sockets_of(h.pid) <= base
    end, 15), ("sockets: %d, before %d"):format(helpers.sockets_of(h.pid), base))
    assert.are.equal(0, h:term())
    assert.is_nil(h:stderr():find("AddressSanitizer", 1, true), h:stderr())
  end)
end)
