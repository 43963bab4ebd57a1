-- Hooks and actions that misbehave are contained: an on_result that raises
-- or never returns makes that result unknown (hook_error), a webhook that
-- cannot connect is logged as a failed action, and the other probes keep
-- their schedule.  on_result may also override the verdict.
local sonde = require "sonde"
local helpers = require "helpers"
local E = require "engine_helpers"

describe("misbehaving hooks and actions in one configuration", function()
  -- A: on_result raises; B: on_result never returns; C: on_failure
  -- webhook to a closed port; D: healthy, period 0.2.  Run 3 s once, then
  -- each `it` checks one of them.
  local evs, a, b, c, d
  local d_runs, d_times = 0, {}

  setup(function()
    E.fresh()
    local log = E.capture()
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
    local ok, err = pcall(E.run_for, 3)
    evs = ok and log:all() or {}
    log:close()
    assert(ok, err)
  end)

  teardown(function() E.fresh() end)

  it("A (on_result raises): every result unknown hook_error, error logged",
    function()
    local ra = E.select(evs, "probe_result", { probe = "A-raises" })
    assert.is_true(#ra >= 1)
    for _, e in ipairs(ra) do
      assert.are.equal("unknown", e.status)
      assert.are.equal("hook_error", e.reason)
    end
    local ha = E.select(evs, "hook_error", { probe = "A-raises" })
    assert.are.equal(#ra, #ha)
    assert.are.equal("on_result", ha[1].hook)
    assert.is_truthy(ha[1].error:find("boom from A", 1, true), ha[1].error)
    assert.are.equal("failure", a.state)       -- unknown moved nothing
    assert.are.equal("unknown", a.last_result.status)
    assert.are.equal("hook_error", a.last_result.reason)
  end)

  it("B (on_result loops forever): interrupted after the documented "
    .. "bound, then skipped (quarantine); unknown hook_error", function()
    local hook = require "sonde.hook"
    local rb = E.select(evs, "probe_result", { probe = "B-loops" })
    assert.is_true(#rb >= 2, "B results: " .. #rb)
    for _, e in ipairs(rb) do
      assert.are.equal("unknown", e.status)
      assert.are.equal("hook_error", e.reason)
    end
    local hb = E.select(evs, "hook_error", { probe = "B-loops" })
    assert.are.equal(#rb, #hb)
    assert.are.equal("on_result", hb[1].hook)
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
    local ac = E.select(evs, "action", { probe = "C-webhook" })
    local statuses = {}
    for i, e in ipairs(ac) do statuses[i] = e.status end
    assert.are.same({ "started", "failed" }, statuses)
    assert.are.equal("webhook http://127.0.0.1:1/alert", ac[2].action)
    assert.is_truthy(ac[2].detail:find("^failure connect_refused"),
      ac[2].detail)
    -- C kept probing (no service: nothing holds)
    local rc = E.select(evs, "probe_result", { probe = "C-webhook" })
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
  before_each(function() E.fresh() end)
  after_each(function() E.fresh() end)

  it("on_result overrides the verdict: return \"warning\", \"custom\"",
    function()
    local log = E.capture()
    local seen = {}
    local p = sonde.probe {
      name = "override", kind = "readiness",
      exec = { command = { "sh", "-c", "echo bad; exit 1" } },
      period = 0.2, timeout = 5, success_threshold = 1,
      on_result = function(r)
        seen[#seen + 1] = r.status                 -- the raw verdict
        if #seen >= 3 then sonde.after(0, E.stop_now) end
        return "warning", "custom"
      end,
    }
    local ok, err = pcall(E.run_for, 30)
    local rs = ok and log:events("probe_result", { probe = "override" }) or {}
    local sc = ok and log:events("state_change", { probe = "override" }) or {}
    log:close()
    assert(ok, err)
    assert.are.same({ "failure", "failure", "failure" }, seen)
    assert.are.equal(3, #rs)
    for _, e in ipairs(rs) do
      assert.are.equal("warning", e.status)
      assert.are.equal("custom", e.reason)
      assert.are.equal("bad\n", e.output)
      assert.are.equal(1, e.exit_code)
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
    local log = E.capture()
    local n = 0
    local p = sonde.probe {
      name = "nonsense", kind = "readiness",
      exec = { command = { "true" } }, period = 0.2, timeout = 5,
      on_result = function()
        n = n + 1
        if n >= 2 then sonde.after(0, E.stop_now) end
        return "fine"
      end,
    }
    local ok, err = pcall(E.run_for, 30)
    local rs = ok and log:events("probe_result", { probe = "nonsense" }) or {}
    local he = ok and log:events("hook_error", { probe = "nonsense" }) or {}
    log:close()
    assert(ok, err)
    assert.are.equal(2, #rs)
    assert.are.equal("unknown", rs[1].status)
    assert.are.equal("hook_error", rs[1].reason)
    assert.are.equal(2, #he)
    assert.is_truthy(he[1].error:find("returned status fine", 1, true),
      he[1].error)
    assert.are.equal("failure", p.state)
  end)
end)
