-- Running under systemd (README "Running under systemd", lua/sonde/host/run.lua
-- and src/lnotify.c): the host speaks the sd_notify(3) protocol to
-- $NOTIFY_SOCKET, which a python3 listener plays here (spec/support/notify.lua).
local helpers = require "helpers"

local wait_for, has_line = helpers.eventually, helpers.has_line

---------------------------------------------------------------------------

-- A script with a service and two probes; it marks its own load with
-- X_SPEC=load-begin / X_SPEC=load-end on the notify socket (core.sd_notify
-- is the host's own sender, so the datagrams' order is the order of the
-- calls).
local SCRIPT = [[
local sonde = require "sonde"
local core = require "sonde.core"
core.sd_notify("X_SPEC=load-begin")
os.execute("sleep 0.3")
sonde.service { name = "sleeper", command = { "sleep", "600" }, grace = 2 }
sonde.probe { name = "one", period = 0.5, exec = { command = { "true" } } }
sonde.probe { name = "two", period = 0.5, exec = { command = { "true" } } }
core.sd_notify("X_SPEC=load-end")
]]

-- A service that ignores SIGTERM (grace 1 s): the stop takes a second.
local STUBBORN = [[
local sonde = require "sonde"
sonde.service { name = "stubborn", grace = 1, command = { "sh", "-c",
  "trap '' TERM; echo ready; while :; do sleep 0.1; done" } }
sonde.probe { name = "tick", period = 0.2, exec = { command = { "true" } } }
]]

describe("systemd notify protocol", function()
  local dir
  local listeners = {}

  before_each(function()
    dir = helpers.tmpdir()
  end)

  after_each(function()
    helpers.cleanup_hosts()
    for _, l in ipairs(listeners) do l:stop() end
    listeners = {}
    helpers.rmtree(dir)
  end)

  local function start(script_text, env)
    local path = helpers.write(dir .. "/probes.lua", script_text)
    local h = helpers.host_start({ "--log-format", "json", path }, env)
    h.script = path
    return h
  end

  local function listener(name, secs)
    local l = helpers.notify_listener(dir, name, secs)
    listeners[#listeners + 1] = l
    return l
  end

  local function wait_ready(l, h, from)
    local ok = wait_for(function() return l:find("READY=1", from) end, 10)
    assert.is_truthy(ok, "no READY=1; received:\n" .. l:dump()
      .. "\nhost stderr:\n" .. h:stderr())
    return ok
  end

  it("READY=1 comes once the script is loaded, with a STATUS counting the "
    .. "probes", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    wait_ready(l, h)
    helpers.sleep(0.3)
    local msgs = l:messages()
    local dump = l:dump()
    local b = l:find("X_SPEC=load-begin", 1, msgs)
    local e = l:find("X_SPEC=load-end", 1, msgs)
    local r, ready = l:find("READY=1", 1, msgs)
    assert.is_truthy(b and e, dump)
    assert.is_true(b < e and e < r, "READY=1 before the script was loaded:\n"
      .. dump)
    assert.are.equal(1, l:count("READY=1", msgs), dump)
    local status = ready.msg:match("STATUS=([^\n]*)")
    assert.is_truthy(status, "no STATUS with READY=1: " .. dump)
    assert.is_truthy(status:find("2 probes", 1, true), status)
    assert.is_truthy(status:find("1 service", 1, true), status)
    -- no watchdog asked for, none sent
    assert.are.equal(0, l:count("WATCHDOG=1", msgs), dump)
    -- the probes run
    assert.is_truthy(wait_for(function()
      return #h:events("probe_result", { probe = "one" }) >= 1
    end, 5), h:stderr())
  end)

  it("WATCHDOG_USEC=400000: WATCHDOG=1 every half interval", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000" })
    local r = wait_ready(l, h)
    helpers.sleep(1.8)
    local msgs = l:messages()
    local dump = l:dump()
    local t_ready = msgs[r].t
    local n, first = 0, nil
    for i = r + 1, #msgs do
      if has_line(msgs[i].msg, "WATCHDOG=1") then
        first = first or msgs[i].t
        if msgs[i].t <= t_ready + 1.5 then n = n + 1 end
      end
    end
    assert.is_true(n >= 3, n .. " WATCHDOG=1 in 1.5 s:\n" .. dump)
    assert.is_true(n <= 10, n .. " WATCHDOG=1 in 1.5 s (every 0.2 s "
      .. "expected):\n" .. dump)
    -- the first one well within the 0.4 s systemd would wait
    assert.is_true(first - t_ready < 0.4, string.format("first WATCHDOG=1 "
      .. "%.3f s after READY=1", first - t_ready))
    -- none before READY=1
    for i = 1, r - 1 do
      assert.is_false(has_line(msgs[i].msg, "WATCHDOG=1"), dump)
    end
  end)

  it("WATCHDOG_PID of the host itself: WATCHDOG=1 is sent", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000", WATCHDOG_PID = "$$" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 3
    end, 5), l:dump())
  end)

  it("WATCHDOG_PID of another process: no WATCHDOG=1", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000", WATCHDOG_PID = tostring(helpers.pid()) })
    wait_ready(l, h)
    helpers.sleep(1.5)
    assert.are.equal(0, l:count("WATCHDOG=1"), l:dump())
    -- the rest of the protocol still works
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    assert.is_truthy(wait_for(function() return l:find("STOPPING=1") end, 3),
      l:dump())
  end)

  it("SIGHUP: RELOADING=1, the script loaded again, then READY=1", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    local r = wait_ready(l, h)
    h:signal("HUP")
    local ok = wait_for(function()
      local rl = l:find("RELOADING=1", r + 1)
      return rl and l:find("READY=1", rl + 1)
    end, 10)
    local dump = l:dump()
    assert.is_truthy(ok, "no RELOADING=1 then READY=1:\n" .. dump
      .. "\n" .. h:stderr())
    local msgs = l:messages()
    local rl = l:find("RELOADING=1", 1, msgs)
    assert.is_true(rl > r, dump)
    local b = l:find("X_SPEC=load-begin", rl + 1, msgs)
    local e = l:find("X_SPEC=load-end", rl + 1, msgs)
    local r2, ready2 = l:find("READY=1", rl + 1, msgs)
    assert.is_truthy(b and e and r2, dump)
    assert.is_true(b < e and e < r2, dump)
    assert.is_truthy((ready2.msg:match("STATUS=([^\n]*)") or "")
      :find("2 probes", 1, true), dump)
    assert.are.equal(1, l:count("RELOADING=1", msgs), dump)
    assert.are.equal(2, l:count("READY=1", msgs), dump)
    assert.are.equal(1, #h:events("reload", { status = "ok" }), h:stderr())
  end)

  it("SIGHUP with a broken script: RELOADING=1, then READY=1 again (the "
    .. "old configuration runs on)", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    local r = wait_ready(l, h)
    helpers.write(h.script .. ".new", "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = ")
    assert(os.rename(h.script .. ".new", h.script))
    h:signal("HUP")
    local ok = wait_for(function()
      local rl = l:find("RELOADING=1", r + 1)
      return rl and l:find("READY=1", rl + 1)
    end, 10)
    assert.is_truthy(ok, "no RELOADING=1 then READY=1:\n" .. l:dump()
      .. "\n" .. h:stderr())
    assert.are.equal(1, #h:events("reload", { status = "failed" }),
      h:stderr())
    -- the old probes keep running
    local before = #h:events("probe_result", { probe = "one" })
    assert.is_truthy(wait_for(function()
      return #h:events("probe_result", { probe = "one" }) >= before + 2
    end, 5), h:stderr())
  end)

  it("SIGTERM: STOPPING=1, and no WATCHDOG=1 after it while the services "
    .. "stop", function()
    local l = listener()
    local h = start(STUBBORN, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 2
        and #h:events("service_output", { service = "stubborn" }) >= 1
    end, 5), l:dump() .. "\n" .. h:stderr())
    local t0 = helpers.now()
    h:signal("TERM")
    local rc = h:wait(10)
    local took = helpers.now() - t0
    assert.are.equal(0, rc, h:stderr())
    -- the stop waited for the grace of the stubborn service: time enough
    -- for a few keep-alives, had they not been stopped
    assert.is_true(took >= 0.8, string.format("stop took %.2f s", took))
    helpers.sleep(0.5)
    local msgs = l:messages()
    local dump = l:dump()
    local s = l:find("STOPPING=1", 1, msgs)
    assert.is_truthy(s, "no STOPPING=1:\n" .. dump)
    assert.are.equal(1, l:count("STOPPING=1", msgs), dump)
    for i = s + 1, #msgs do
      assert.is_false(has_line(msgs[i].msg, "WATCHDOG=1"),
        "WATCHDOG=1 after STOPPING=1:\n" .. dump)
      assert.is_false(has_line(msgs[i].msg, "READY=1"),
        "READY=1 after STOPPING=1:\n" .. dump)
    end
    for _, e in ipairs(h:events("service_start")) do
      assert.is_true(helpers.gone(e.pid), "service " .. e.pid .. " left")
    end
  end)

  it("an abstract socket name (@name)", function()
    local name = string.format("@sonde-spec-%d-%d", helpers.pid(),
      math.random(1, 1e9))
    local l = listener(name)
    local h = start(SCRIPT, { NOTIFY_SOCKET = name, WATCHDOG_USEC = "400000" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 2
    end, 5), l:dump())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    assert.is_truthy(wait_for(function() return l:find("STOPPING=1") end, 3),
      l:dump())
  end)

  -- The host runs, reloads and stops as usual; nothing is logged as an
  -- error and nothing but JSON lines reach stderr.
  local function runs_normally(env)
    local h = start(SCRIPT, env)
    local function results() return #h:events("probe_result",
      { probe = "one", status = "success" }) end
    assert.is_truthy(wait_for(function() return results() >= 2 end, 10),
      h:stderr())
    h:signal("HUP")
    assert.is_truthy(wait_for(function()
      return #h:events("reload", { status = "ok" }) >= 1
    end, 10), h:stderr())
    local n = results()
    assert.is_truthy(wait_for(function() return results() >= n + 2 end, 10),
      h:stderr())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    local evs, bad = helpers.decode_lines(h:stderr())
    assert.are.same({}, bad)
    assert.are.same({}, helpers.select(evs, nil, { level = "error" }))
    assert.are.equal(1, #helpers.select(evs, "host_stop"), h:stderr())
  end

  it("without NOTIFY_SOCKET nothing breaks (watchdog asked for or not)",
    function()
    runs_normally({})
    runs_normally({ WATCHDOG_USEC = "400000" })
  end)

  it("with NOTIFY_SOCKET naming no socket nothing breaks", function()
    runs_normally({ NOTIFY_SOCKET = dir .. "/nobody-listens.sock",
      WATCHDOG_USEC = "400000" })
    runs_normally({ NOTIFY_SOCKET = "@sonde-spec-nobody-" .. helpers.pid(),
      WATCHDOG_USEC = "400000" })
  end)
end)
