-- Hooks and actions that misbehave are contained: an on_result that raises
-- or never returns makes that result unknown (hook_error), a webhook that
-- cannot connect is logged as a failed action, and the other probes keep
-- their schedule.  on_result may also override the verdict.
local sonde = require "sonde"
local helpers = require "helpers"

describe("misbehaving hooks and actions in one configuration", function()
  -- A: on_result raises; B: on_result never returns; C: on_failure
  -- webhook to a closed port; D: healthy, period 0.2.  Run 3 s once, then
  -- each `it` checks one of them.
  local evs, a, b, c, d
  local d_runs, d_times = 0, {}

  setup(function()
    helpers.fresh()
    local t0 = sonde.now()
    a = sonde.probe {
      name = "A-raises", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function() error("boom from A") end,
    }
    b = sonde.probe {
      name = "B-loops", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function() while true do end end,
    }
    c = sonde.probe {
      name = "C-webhook", kind = "liveness",
      exec = { command = { "false" } }, period = 0.2, timeout = 5,
      failure_threshold = 1, action_interval = 60,
      on_failure = sonde.action.webhook {
        url = "http://127.0.0.1:1/alert", timeout = 2 },
    }
    d = sonde.probe {
      name = "D-healthy", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function()
        d_runs = d_runs + 1
        d_times[#d_times + 1] = string.format("%.2f", sonde.now() - t0)
      end,
    }
    evs = helpers.run_logged(3)
  end)

  teardown(helpers.fresh)

  -- The probe's results, every one unknown hook_error (at least `min`),
  -- and its hook_error events: one per result, the first of on_result.
  local function hook_errors(name, min)
    local rs = helpers.select(evs, "probe_result", { probe = name })
    assert.is_true(#rs >= min, name .. " results: " .. #rs)
    for _, e in ipairs(rs) do
      assert.are.same({ "unknown", "hook_error" }, { e.status, e.reason })
    end
    local hs = helpers.select(evs, "hook_error", { probe = name })
    assert.are.equal(#rs, #hs)
    assert.are.equal("on_result", hs[1].hook)
    return rs, hs
  end

  it("A (on_result raises): every result unknown hook_error, error logged",
    function()
    local _, ha = hook_errors("A-raises", 1)
    assert.is_truthy(ha[1].error:find("boom from A", 1, true), ha[1].error)
    assert.are.equal("failure", a.state)       -- unknown moved nothing
    assert.are.equal("unknown", a.last_result.status)
    assert.are.equal("hook_error", a.last_result.reason)
  end)

  it("B (on_result loops forever): interrupted after the documented "
    .. "bound, then skipped (quarantine); unknown hook_error", function()
    local hook = require "sonde.hook"
    local _, hb = hook_errors("B-loops", 2)
    local bound = string.format("hook exceeded its time limit of %g s",
      hook.default_bound)
    assert.is_truthy(hb[1].error:find(bound, 1, true), hb[1].error)
    -- interrupted once: within the quarantine (10 s) it is only skipped
    local interrupted = 0
    for i, e in ipairs(hb) do
      if e.error:find(bound, 1, true) then
        interrupted = interrupted + 1
      else
        assert.is_truthy(e.error:find("^hook on_result skipped for "), e.error)
      end
      assert.are.equal("on_result", e.hook, i)
    end
    assert.are.equal(1, interrupted)
    assert.are.equal("failure", b.state)
  end)

  it("C (webhook to a closed port): the action failure is logged, once "
    .. "(action_interval)", function()
    assert.are.equal("failure", c.state)
    local ac = helpers.select(evs, "action", { probe = "C-webhook" })
    local statuses = {}
    for i, e in ipairs(ac) do statuses[i] = e.status end
    assert.are.same({ "started", "failed" }, statuses)
    assert.are.equal("webhook http://127.0.0.1:1/alert", ac[2].action)
    assert.is_truthy(ac[2].detail:find("^failure connect_refused"),
      ac[2].detail)
    -- C kept probing (no service: nothing holds)
    local rc = helpers.select(evs, "probe_result", { probe = "C-webhook" })
    assert.is_true(#rc >= 2, "C results: " .. #rc)
  end)

  it("D (healthy, period 0.2) keeps its schedule: about 15 runs in 3 s",
    function()
    assert.are.equal("success", d.state)
    assert.is_true(d_runs >= 8, string.format("D ran %d times in 3 s "
      .. "(period 0.2), at %s s", d_runs, table.concat(d_times, " ")))
  end)
end)

describe("on_result verdicts", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  it("on_result overrides the verdict: return \"warning\", \"custom\"",
    function()
    local seen = {}
    local p = sonde.probe {
      name = "override", kind = "readiness",
      exec = { command = { "sh", "-c", "echo bad; exit 1" } },
      period = 0.2, timeout = 5, success_threshold = 1,
      on_result = function(r)
        seen[#seen + 1] = r.status                 -- the raw verdict
        if #seen >= 3 then sonde.after(0, helpers.stop_now) end
        return "warning", "custom"
      end,
    }
    local evs = helpers.run_logged(30)
    local rs = helpers.select(evs, "probe_result", { probe = "override" })
    local sc = helpers.select(evs, "state_change", { probe = "override" })
    assert.are.same({ "failure", "failure", "failure" }, seen)
    assert.are.equal(3, #rs)
    for _, e in ipairs(rs) do
      assert.are.same({ "warning", "custom", "bad\n", 1 },
        { e.status, e.reason, e.output, e.exit_code })
    end
    assert.are.equal("warning", p.last_result.status)
    assert.are.equal("custom", p.last_result.reason)
    -- a warning counts as success: the readiness probe became ready
    assert.are.equal("success", p.state)
    assert.are.equal(1, #sc)
    assert.are.same({ "failure", "success", "custom" },
      { sc[1].from, sc[1].to, sc[1].reason })
  end)

  it("on_result returning something that is not a status -> unknown "
    .. "hook_error", function()
    local n = 0
    local p = sonde.probe {
      name = "nonsense", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function()
        n = n + 1
        if n >= 2 then sonde.after(0, helpers.stop_now) end
        return "fine"
      end,
    }
    local evs = helpers.run_logged(30)
    local rs = helpers.select(evs, "probe_result", { probe = "nonsense" })
    local he = helpers.select(evs, "hook_error", { probe = "nonsense" })
    assert.are.equal(2, #rs)
    assert.are.equal("unknown", rs[1].status)
    assert.are.equal("hook_error", rs[1].reason)
    assert.are.equal(2, #he)
    assert.is_truthy(he[1].error:find("returned status fine", 1, true),
      he[1].error)
    assert.are.equal("failure", p.state)
  end)

  it("on_result returning a reason that cannot be printed: the run still "
    .. "counts", function()
    local bad = setmetatable({}, { __tostring = function() error("no text") end })
    local p = sonde.probe {
      name = "odd-reason", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function(_, probe)
        if probe.runs >= 2 then sonde.after(0, helpers.stop_now) end
        return "failure", bad
      end,
    }
    local evs = helpers.run_logged(30)
    local rs = helpers.select(evs, "probe_result", { probe = "odd-reason" })
    assert.are.equal(2, #rs)
    assert.are.same({ "failure", "(error object without a printable form)" },
      { rs[1].status, rs[1].reason })
    assert.are.equal(2, p.runs)
  end)
end)
