-- The host's --listen endpoint under attack (src/lhttpd.c, with the
-- bounds of lua/sonde/endpoints.lua): a flood of idle and slowloris
-- connections, and a host out of descriptors.  The host runs as a
-- subprocess with JSON log lines; the attacking connections are LuaSocket
-- sockets of this process, on loopback, connected without waiting (the
-- kernel's accept queue fills up: a blocking connect would wait for SYN
-- retries).
local socket = require "socket"
local helpers = require "helpers"

local script = helpers.script
local fetch, listen_port = helpers.fetch, helpers.listen_port

local CAP = require("sonde.endpoints").limits.max_connections

local cpu_seconds, sockets = helpers.cpu_seconds, helpers.sockets_of

-- A connection started without waiting for it to be accepted.
local function open(port)
  local c = assert(socket.tcp())
  c:settimeout(0)
  c:connect("127.0.0.1", port)
  return c
end

-- The peer closed `c` (nothing waits: a read would block = still open).
local function closed(c)
  c:settimeout(0)
  local _, err = c:receive(1)
  return err == "closed" or (err ~= nil and err ~= "timeout")
end

local function close_all(list)
  for _, c in ipairs(list) do c:close() end
end

local function healthz_ok(port)
  local r = fetch(port, "/healthz")
  return r.http_status == 200
end

describe("the --listen endpoint under attack", function()
  local flood = {}

  after_each(function()
    close_all(flood)
    flood = {}
    helpers.cleanup_hosts()
  end)

  it("200 idle and 20 slowloris connections: probes keep their schedule, "
    .. "connections are capped, the slowloris ones are cut, /healthz answers after",
    function()
    local path = script("fast.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "fast", kind = "readiness", period = 0.1,
        exec = { command = { "true" } } }
    ]])
    local h = helpers.host_start { "--log-format", "json", "--listen",
      "127.0.0.1:0", path }
    local port = listen_port(h)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "fast" }) >= 3
    end), h:stderr())
    local base = sockets(h.pid)
    local slow = {}
    for i = 1, 20 do slow[i] = open(port) end
    for i = 1, 200 do flood[i] = open(port) end
    for _, c in ipairs(slow) do flood[#flood + 1] = c end
    local runs0 = #h:events("probe_result", { probe = "fast" })
    -- 12 s: a byte every 0.25 s on each slowloris connection (beyond the
    -- request_timeout of 10 s), and the host's sockets sampled
    local text = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " .. ("a"):rep(200)
    local most, i = 0, 1
    local stop = helpers.now() + 12
    while helpers.now() < stop do
      for _, c in ipairs(slow) do c:send(text:sub(i, i)) end
      i = i + 1
      most = math.max(most, sockets(h.pid))
      helpers.sleep(0.25)
    end
    local runs = #h:events("probe_result", { probe = "fast" }) - runs0
    -- about 120 at period 0.1: a tenth of that is plenty
    assert.is_true(runs >= 12, "probe runs during the flood: " .. runs)
    assert.is_true(most <= base + CAP + 2, string.format(
      "the host held %d sockets (%d before the flood, cap %d)", most, base, CAP))
    local cut = 0
    for _, c in ipairs(slow) do if closed(c) then cut = cut + 1 end end
    assert.are.equal(#slow, cut)
    close_all(flood)
    flood = {}
    assert.is_truthy(h:wait_for(function() return healthz_ok(port) end, 15),
      h:stderr())
    local _, others = helpers.decode_lines(h:stderr())
    assert.are.same({}, others)
    assert.are.equal(0, h:term())
  end)

  it("out of descriptors: the listener backs off (low CPU, JSON lines "
    .. "only) and answers again once connections close", function()
    local path = script("empty.lua", "-- the endpoint only\n")
    local h = helpers.host_start { "--log-format", "json", "--listen",
      "127.0.0.1:0", path }
    local port = listen_port(h)
    assert.is_truthy(healthz_ok(port))
    local rc = helpers.sh(string.format("prlimit --pid %d --nofile=48:48", h.pid))
    assert.are.equal(0, rc)
    for i = 1, 100 do flood[i] = open(port) end
    -- (or a line that is not JSON: fail at once, before it fills the disk)
    assert.is_truthy(h:wait_for(function(x)
      local t = x:stderr()
      return t:find('"event":"http_accept"', 1, true) or t:find("\n[^{]")
    end, 10), h:stderr():sub(1, 2000))
    -- a loose bound: spinning on accept() took 90 % of a CPU
    local t0, c0 = helpers.now(), cpu_seconds(h.pid)
    helpers.sleep(2)
    local share = (cpu_seconds(h.pid) - c0) / (helpers.now() - t0)
    assert.is_true(share < 0.5, "the host used " .. share .. " of a CPU")
    local text = h:stderr()
    local evs, others = helpers.decode_lines(text)
    assert.are.same({}, { table.unpack(others, 1, 5) })
    local accept = helpers.select(evs, "http_accept")
    assert.are.equal("warn", accept[1].level)
    assert.is_truthy(accept[1].text:find("Too many open files", 1, true), text)
    -- the first failure at once, then a line every 10 s
    assert.is_true(#accept <= 2, text)
    assert.is_true(#evs < 50, #evs .. " lines")
    close_all(flood)
    flood = {}
    assert.is_truthy(h:wait_for(function() return healthz_ok(port) end, 15),
      h:stderr())
    assert.are.equal(0, h:term())
  end)
end)

describe("examples/sonde.service", function()
  it("sets LimitNOFILE= above what the endpoint and a few hundred probes take",
    function()
    local text = assert(helpers.read_file(helpers.root .. "/examples/sonde.service"))
    local n = tonumber(text:match("\nLimitNOFILE=(%d+)\n"))
    assert.is_truthy(n, "no LimitNOFILE= in examples/sonde.service")
    assert.is_true(n >= CAP + 3 * 2000, tostring(n))
  end)
end)
