-- The host in run mode and its signals: SIGTERM stops everything and exits
-- 0; SIGHUP reloads the script (a broken script keeps the old
-- configuration running; a changed one keeps what did not change, with its
-- state, and starts what is new).
local helpers = require "helpers"

local script = helpers.script

local replace, index_of, after = helpers.replace, helpers.index_of, helpers.after

describe("host signals", function()
  after_each(helpers.cleanup_hosts)

  local function start(path)
    return helpers.host_start { "--log-format", "json", path }
  end

  local function results_of(h, probe)
    return #h:events("probe_result", { probe = probe })
  end

  -- A host running a service and a probe "tick" that has run 3 times;
  -- the host and its script.
  local function ticking(name)
    local path = script(name, [[
      local sonde = require "sonde"
      sonde.service { name = "sleeper", command = { "sleep", "600" } }
      sonde.probe { name = "tick", period = 0.2,
                    exec = { command = { "true" } } }
    ]])
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return results_of(x, "tick") >= 3 end, 15), h:stderr())
    return h, path
  end

  it("SIGTERM: the host stops its service and exits 0", function()
    local h = ticking("term.lua")
    local starts = h:events("service_start", { service = "sleeper" })
    assert.are.equal(1, #starts)
    local pid = starts[1].pid
    assert.is_false(helpers.gone(pid))
    local t0 = helpers.now()
    h:signal("TERM")
    local rc = h:wait(10)
    local took = helpers.now() - t0
    assert.are.equal(0, rc, h:stderr())
    assert.is_true(took < 5, "exit took " .. took)
    assert.is_true(helpers.gone(pid), "service process " .. pid .. " still there")
    assert.are.equal(0, #helpers.procs_in_groups(pid),
      helpers.describe_procs(helpers.procs_in_groups(pid)))
    local evs = h:events()
    local stop = index_of(evs, "host_stop")
    assert.is_truthy(stop)
    assert.is_truthy(index_of(evs, "service_stop", { service = "sleeper" },
      stop))
    -- the service was not restarted on the way out
    assert.is_nil(index_of(evs, "service_restart"))
    -- no probe ran after the stop began
    assert.is_nil(index_of(evs, "probe_result", nil, stop + 1))
  end)

  it("SIGHUP with a broken script: reload failed, the old probes keep "
    .. "running", function()
    local h, path = ticking("hup.lua")
    local pid = h:events("service_start")[1].pid

    replace(path, "local sonde = require 'sonde'\nsonde.probe { name = ")
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 1 end, 10), h:stderr())
    local rel = h:events("reload")[1]
    assert.are.same({ "failed", "error" }, { rel.status, rel.level })
    assert.is_truthy(rel.error:find(path, 1, true), rel.error)

    -- bad spec: also refused
    replace(path, "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = 'tick', period = 0.01, exec = { command = "
      .. "{ 'true' } } }\n")
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 2 end, 10), h:stderr())
    rel = h:events("reload")[2]
    assert.are.equal("failed", rel.status)
    assert.is_truthy(rel.error:find('probe "tick": period: must be >= 0.1',
      1, true), rel.error)

    -- the old probe goes on after both reloads
    local function after_reload(x)
      local evs = x:events()
      local i = 0
      for j, e in ipairs(evs) do if e.event == "reload" then i = j end end
      return #helpers.select(after(evs, i), "probe_result", { probe = "tick" })
    end
    assert.is_truthy(h:wait_for(function(x) return after_reload(x) >= 3 end,
      10), h:stderr())
    assert.is_true(h:alive())
    -- the service was left alone
    assert.are.equal(1, #h:events("service_start"))
    assert.are.equal(0, #h:events("service_exit"))
    assert.is_false(helpers.gone(pid))
    h:signal("TERM")
    assert.are.equal(0, h:wait(10))
    assert.is_true(helpers.gone(pid))
  end)

  it("SIGHUP with a changed script: unchanged probes keep their state and "
    .. "counters, changed ones restart, new ones start, removed ones stop",
    function()
    -- v1 has the probe "gone", v2 the probe "new" instead; "change"
    -- echoes the version
    local function version(v, third)
      return string.format([[
      local sonde = require "sonde"
      local svc = sonde.service { name = "sleeper",
        command = { "sleep", "600" } }
      sonde.probe { name = "keep", kind = "readiness", period = 0.2,
        success_threshold = 3, exec = { command = { "true" } } }
      sonde.probe { name = "change", kind = "readiness", period = 0.2,
        exec = { command = { "echo", "%s" } } }
      sonde.probe { name = "%s", kind = "readiness", period = 0.2,
        exec = { command = { "true" } } }
      sonde.probe { name = "svc-live", service = svc, period = 0.2,
        exec = { command = { "true" } } }
    ]], v, third)
    end
    local v1, v2 = version("v1", "gone"), version("v2", "new")
    local path = script("reload.lua", v1)
    local h = start(path)
    -- keep reaches success (3 successes), and runs a couple more times
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("state_change", { probe = "keep", to = "success" }) == 1
        and results_of(x, "keep") >= 5
    end, 15), h:stderr())
    local pid = h:events("service_start")[1].pid

    replace(path, v2)
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 1 end, 10), h:stderr())
    assert.are.equal("ok", h:events("reload")[1].status)
    assert.is_truthy(h:wait_for(function(x)
      local evs = x:events()
      local i = index_of(evs, "reload")
      local rest = after(evs, i)
      return #helpers.select(rest, "probe_result", { probe = "keep" }) >= 3
        and #helpers.select(rest, "probe_result", { probe = "new" }) >= 3
        and #helpers.select(rest, "probe_result", { probe = "change" }) >= 3
    end, 10), h:stderr())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10))
    assert.is_true(helpers.gone(pid))

    local evs = h:events()
    local i = index_of(evs, "reload")
    local before, rest = table.move(evs, 1, i - 1, 1, {}), after(evs, i)

    -- keep: still success, its run went on counting (no seed, no restart)
    local keep_before = helpers.select(before, "probe_result", { probe = "keep" })
    local keep_after = helpers.select(rest, "probe_result", { probe = "keep" })
    local last_n = tonumber(keep_before[#keep_before].streak:match(
      "^success (%d+)/3$"))
    assert.is_truthy(last_n)
    for k, e in ipairs(keep_after) do
      assert.are.same({ "success", string.format("success %d/3", last_n + k) },
        { e.state, e.streak })
    end
    assert.are.equal(0, #helpers.select(rest, "state_change", { probe = "keep" }))

    -- change: a new probe from its seed (not ready until its first result)
    local ch = helpers.select(rest, "probe_result", { probe = "change" })
    assert.are.equal("failure", ch[1].state)
    assert.are.equal("success 1/1", ch[1].streak)
    for _, e in ipairs(ch) do assert.are.equal("v2\n", e.output) end
    local chc = helpers.select(rest, "state_change", { probe = "change" })
    assert.are.equal(1, #chc)
    assert.are.same({ "failure", "success" }, { chc[1].from, chc[1].to })

    -- new: runs
    local nw = helpers.select(rest, "probe_result", { probe = "new" })
    assert.are.equal("failure", nw[1].state)
    assert.are.equal(0, #helpers.select(before, "probe_result", { probe = "new" }))

    -- gone: no result after the reload
    assert.are.equal(0, #helpers.select(rest, "probe_result", { probe = "gone" }))

    -- the unchanged service kept its process; its liveness probe went on
    assert.are.equal(1, #helpers.select(evs, "service_start"))
    assert.are.equal(1, #helpers.select(evs, "service_exit"))   -- at the TERM
    local live = helpers.select(rest, "probe_result", { probe = "svc-live" })
    assert.is_true(#live >= 1)
    assert.is_true(tonumber(live[1].streak:match("^success (%d+)/1$")) > 1,
      live[1].streak)
  end)

  it("a second SIGTERM while a service ignores the first kills it: the host "
    .. "exits and leaves nothing behind", function()
    local path = script("stubborn.lua", [[
      local sonde = require "sonde"
      sonde.service { name = "stubborn", grace = 60,
        command = { "sh", "-c", "trap '' TERM; sleep 89 & wait; wait" } }
      sonde.probe { name = "tick", period = 0.2, exec = { command = { "true" } } }
    ]])
    local h = start(path)
    assert(h:wait_for(function(x) return results_of(x, "tick") >= 2 end, 15))
    local pid = h:events("service_start")[1].pid
    h:signal("TERM")
    assert(h:wait_for(function(x) return #x:events("host_stop") == 1 end, 5))
    assert.is_nil(h:wait(0.5))               -- waits out the grace
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    assert.are.equal(2, #h:events("host_stop"))
    assert.is_true(helpers.eventually(function()
      return #helpers.procs_in_groups(pid) == 0 end, 5))
    -- SIGHUP during the stop is ignored: no reload
    assert.are.same({}, h:events("reload"))
  end)
end)
