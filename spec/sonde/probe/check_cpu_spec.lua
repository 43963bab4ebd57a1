-- A custom check's own running time is bounded by `check_cpu` (default
-- 0.25 s per run), apart from its timeout: time spent waiting (probers,
-- sonde.sleep) does not count.  A check that runs past it is stopped
-- (failure/timeout) and quarantined like a hook: its next runs do not
-- start for hook.quarantine seconds (unknown/hook_error, logged).  Before,
-- a busy check held the loop for its whole timeout, period after period.
local sonde = require "sonde"
local hook = require "sonde.hook"
local helpers = require "helpers"

describe("check_cpu", function()
  local saved_quarantine = hook.quarantine
  before_each(helpers.fresh)
  after_each(function()
    hook.quarantine = saved_quarantine
    helpers.fresh()
  end)

  local function statuses(list)
    local out = {}
    for i, e in ipairs(list) do out[i] = e.status .. "/" .. e.reason end
    return table.concat(out, " ")
  end

  it("a busy check (period 0.5, timeout 5) next to a fast probe: the fast "
    .. "probe keeps its schedule, the check is stopped once and quarantined",
    function()
    local busy_runs, fast_runs = 0, 0
    sonde.probe { name = "busy", kind = "readiness", period = 0.5,
      timeout = 5, check = function()
        busy_runs = busy_runs + 1
        while true do end
      end }
    sonde.probe { name = "fast", kind = "readiness", period = 0.1,
      exec = { command = { "true" } },
      on_result = function() fast_runs = fast_runs + 1 end }
    local evs = helpers.run_logged(3)
    -- about 30 runs in 3 s; before, none while the check held the loop
    assert.is_true(fast_runs >= 10, "fast ran " .. fast_runs .. " times")
    local rs = helpers.select(evs, "probe_result", { probe = "busy" })
    assert.is_true(#rs >= 4, statuses(rs))
    assert.are.same({ "failure", "timeout" }, { rs[1].status, rs[1].reason })
    assert.is_truthy(rs[1].output:find("check_cpu of 0.25 s", 1, true),
      rs[1].output)
    for i = 2, #rs do
      assert.are.same({ "unknown", "hook_error" },
        { rs[i].status, rs[i].reason }, statuses(rs))
    end
    assert.are.equal(1, busy_runs)            -- not started again
    local he = helpers.select(evs, "hook_error", { probe = "busy",
      hook = "check" })
    assert.are.equal(#rs, #he)
    assert.are.equal("error", he[1].level)
    assert.is_truthy(he[1].error:find("ran for more than its check_cpu of "
      .. "0.25 s without waiting and was stopped", 1, true), he[1].error)
    for i = 2, #he do
      assert.are.equal("warn", he[i].level)
      assert.is_truthy(he[i].error:find("^check skipped for %d+%.%d s more "
        .. "after exceeding its running time limit"), he[i].error)
    end
  end)

  it("after the quarantine the check runs again (and is stopped again)",
    function()
    hook.quarantine = 0.6
    local busy_runs = 0
    sonde.probe { name = "busy", kind = "readiness", period = 0.2,
      timeout = 5, check_cpu = 0.05, check = function()
        busy_runs = busy_runs + 1
        if busy_runs >= 3 then sonde.after(0, helpers.stop_now) end
        while true do end
      end }
    local evs = helpers.run_logged(20)
    assert.are.equal(3, busy_runs)
    local rs = helpers.select(evs, "probe_result", { probe = "busy" })
    local hits = 0
    for _, r in ipairs(rs) do
      if r.status == "failure" then
        hits = hits + 1
        assert.are.equal("timeout", r.reason)
      else
        assert.are.same({ "unknown", "hook_error" }, { r.status, r.reason })
      end
    end
    assert.is_true(hits >= 2, statuses(rs))
  end)

  it("waiting does not count: a check that sleeps 0.4 s in all with "
    .. "check_cpu 0.05 succeeds", function()
    local p = sonde.probe { name = "waits", kind = "readiness", period = 0.2,
      timeout = 5, check_cpu = 0.05, check = function()
        for _ = 1, 4 do sonde.sleep(0.1) end
        sonde.after(0, helpers.stop_now)
        return "success"
      end }
    local evs = helpers.run_logged(20)
    local rs = helpers.select(evs, "probe_result", { probe = "waits" })
    assert.are.equal(1, #rs)
    assert.are.same({ "success", "ok" }, { rs[1].status, rs[1].reason })
    assert.are.equal("success", p.state)
  end)

  it("running adds up over the run's slices: busy 0.1 s between waits, "
    .. "five times, with check_cpu 0.25 is stopped", function()
    local slices = 0
    sonde.probe { name = "slices", kind = "readiness", period = 10,
      timeout = 5, check = function()
        for _ = 1, 5 do
          local t = sonde.now()
          while sonde.now() - t < 0.1 do end
          slices = slices + 1
          sonde.sleep(0.01)
        end
        return "success"
      end }
    local evs = helpers.run_logged(2)
    local rs = helpers.select(evs, "probe_result", { probe = "slices" })
    assert.are.equal(1, #rs)
    assert.are.same({ "failure", "timeout" }, { rs[1].status, rs[1].reason })
    assert.is_true(slices < 5, slices .. " slices")
  end)

  it("a task the check spawns runs under the check's running bound until "
    .. "it first waits", function()
    sonde.probe { name = "spawner", kind = "readiness", period = 10,
      timeout = 5, check = function()
        sonde.spawn(function() while true do end end)
        return "success"
      end }
    local evs = helpers.run_logged(1.5)
    local rs = helpers.select(evs, "probe_result", { probe = "spawner" })
    assert.are.equal(1, #rs)
    assert.are.equal("failure", rs[1].status)
  end)

  it("is validated: seconds > 0, only for a custom check; default 0.25",
    function()
    local p = sonde.probe { name = "d", check = function() return "success" end }
    assert.are.equal(0.25, p.check_cpu)
    local msg = helpers.error_here(function()
      sonde.probe { name = "z", check_cpu = 0, check = function() end }
    end)
    assert.is_truthy(msg:find('probe "z": check_cpu: must be > 0', 1, true),
      msg)
    msg = helpers.error_here(function()
      sonde.probe { name = "e", check_cpu = 1, exec = { command = { "true" } } }
    end)
    assert.is_truthy(msg:find('probe "e": check_cpu: is only for a custom '
      .. 'check', 1, true), msg)
  end)
end)
