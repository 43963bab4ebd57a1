-- Declared probes: the kubelet worker's threshold state machine
-- (reference section 8.3 steps 12-15, test vectors of section 8.4) with a
-- real exec probe whose command plays a scripted sequence of exit codes.
--
-- After every run the probe's published state is read (a 0 s timer set
-- from on_result fires once the result has been handled, long before the
-- next run); on_change transitions are recorded with the run index, and
-- the probe_result log events give the streak text.
local sonde = require "sonde"
local helpers = require "helpers"
local E = require "engine_helpers"

local KUBELET = { S = 0, F = 1 }
local NAGIOS = { S = 0, W = 1, F = 2, U = 3 }
local STATUS = { S = "success", W = "warning", F = "failure", U = "unknown" }

-- Run probe "seq" over `letters` (e.g. "SSFFF"); spec = extra probe fields.
-- Returns { statuses, states (after each run), changes, events, probe }.
local function play(letters, spec, nagios)
  local map = nagios and NAGIOS or KUBELET
  local codes, want_status = {}, {}
  for c in letters:gmatch("%a") do
    codes[#codes + 1] = assert(map[c], "bad letter " .. c)
    want_status[#want_status + 1] = STATUS[c]
  end
  local dir = helpers.tmpdir()
  local cmd = E.scripted(dir, codes, 0)
  E.fresh()
  local log = E.capture()
  local rec = { statuses = {}, states = {}, changes = {}, outputs = {} }
  local n = #codes
  local p
  local fields = {
    name = "seq", kind = "readiness",
    exec = { command = cmd, codes = nagios and "nagios" or nil },
    period = 0.2, timeout = 5,
    on_result = function(r, probe)
      local i = probe.runs
      rec.statuses[i] = r.status
      rec.outputs[i] = r.output
      sonde.after(0, function() rec.states[i] = probe.state end)
      if i >= n then sonde.after(0, E.stop_now) end
    end,
    on_change = function(new, old, r)
      rec.changes[#rec.changes + 1] = { run = p.runs, from = old, to = new,
        status = r.status }
    end,
  }
  for k, v in pairs(spec or {}) do fields[k] = v end
  p = sonde.probe(fields)
  rec.seed = p.state
  local ok, err = pcall(E.run_for, n * 0.2 + 30)
  rec.events = ok and log:events("probe_result", { probe = "seq" }) or {}
  rec.all = ok and log:all() or {}
  log:close()
  helpers.rmtree(dir)
  if not ok then error(err, 0) end
  rec.probe = p
  rec.want_status = want_status
  return rec
end

-- "S F" letters of states: success -> S, failure -> F, unknown -> U.
local function letters(list)
  local out = {}
  for i, s in ipairs(list) do
    out[i] = s == "success" and "S" or s == "failure" and "F"
      or s == "unknown" and "U" or "?" .. tostring(s)
  end
  return table.concat(out)
end

local function check_runs(rec, n)
  assert.are.equal(n, rec.probe.runs, "runs of the probe")
  assert.are.same(rec.want_status, rec.statuses, "result statuses")
  for i = 1, n do
    assert.are.equal(string.format("run %d exit %d\n", i,
      ({ success = 0, warning = 1, failure = rec.nagios and 2 or 1,
         unknown = 3 })[rec.want_status[i]]), rec.outputs[i])
  end
end

describe("probe thresholds (kubelet worker vectors)", function()
  before_each(function() E.fresh() end)
  after_each(function() E.fresh() end)

  it("readiness S=2 F=3: exact state after every run", function()
    local rec = play("S S F F F S F S S",
      { success_threshold = 2, failure_threshold = 3 })
    assert.are.equal("failure", rec.seed)
    check_runs(rec, 9)
    -- state after runs 1..9
    assert.are.equal("FSSSFFFFS", letters(rec.states))
    assert.are.same({
      { run = 2, from = "failure", to = "success", status = "success" },
      { run = 5, from = "success", to = "failure", status = "failure" },
      { run = 9, from = "failure", to = "success", status = "success" },
    }, rec.changes)
    -- the log: state before each result, the streak toward the threshold
    assert.are.equal(9, #rec.events)
    local streaks, before = {}, {}
    for i, e in ipairs(rec.events) do
      streaks[i] = e.streak
      before[i] = e.state
      assert.are.equal("readiness", e.kind)
      assert.are.equal(rec.want_status[i], e.status)
    end
    assert.are.same({ "success 1/2", "success 2/2", "failure 1/3",
      "failure 2/3", "failure 3/3", "success 1/2", "failure 1/3",
      "success 1/2", "success 2/2" }, streaks)
    assert.are.equal("FFSSSFFFF", letters(before))
    local sc = E.select(rec.all, "state_change", { probe = "seq" })
    assert.are.equal(3, #sc)
    assert.are.same({ "failure", "success", "ok" },
      { sc[1].from, sc[1].to, sc[1].reason })
    assert.are.same({ "success", "failure", "exit_code" },
      { sc[2].from, sc[2].to, sc[2].reason })
  end)

  it("TestFailureThreshold (readiness S=1 F=3), twice", function()
    local rec = play("SSSFFFFF SSSFFFFF S",
      { success_threshold = 1, failure_threshold = 3 })
    check_runs(rec, 17)
    assert.are.equal("SSSSSFFF" .. "SSSSSFFF" .. "S", letters(rec.states))
    assert.are.same({
      { run = 1, from = "failure", to = "success", status = "success" },
      { run = 6, from = "success", to = "failure", status = "failure" },
      { run = 9, from = "failure", to = "success", status = "success" },
      { run = 14, from = "success", to = "failure", status = "failure" },
      { run = 17, from = "failure", to = "success", status = "success" },
    }, rec.changes)
  end)

  it("TestSuccessThreshold (readiness S=3 F=1, seeded failure), twice", function()
    local rec = play("SSSF SSSF",
      { success_threshold = 3, failure_threshold = 1 })
    assert.are.equal("failure", rec.seed)
    check_runs(rec, 8)
    assert.are.equal("FFSF" .. "FFSF", letters(rec.states))
    assert.are.same({
      { run = 3, from = "failure", to = "success", status = "success" },
      { run = 4, from = "success", to = "failure", status = "failure" },
      { run = 7, from = "failure", to = "success", status = "success" },
      { run = 8, from = "success", to = "failure", status = "failure" },
    }, rec.changes)
  end)

  it("TestResultRunOnLivenessCheckFailure (liveness without a service, "
    .. "S=1 F=3): seeded success, keeps probing after failure", function()
    local rec = play("SFFF FS", { kind = "liveness", failure_threshold = 3 })
    assert.are.equal("success", rec.seed)
    check_runs(rec, 6)
    assert.are.equal("SSSF" .. "FS", letters(rec.states))
    assert.are.same({
      { run = 4, from = "success", to = "failure", status = "failure" },
      { run = 6, from = "failure", to = "success", status = "success" },
    }, rec.changes)
  end)

  it("warning (nagios exit 1) counts as success", function()
    local rec = play("W W F W F F S",
      { success_threshold = 2, failure_threshold = 2 }, true)
    rec.nagios = true
    check_runs(rec, 7)
    assert.are.same({ "warning", "warning", "failure", "warning", "failure",
      "failure", "success" }, rec.statuses)
    -- W,W publish success; the W between the failures breaks their run
    assert.are.equal("FSSSSFF", letters(rec.states))
    assert.are.same({
      { run = 2, from = "failure", to = "success", status = "warning" },
      { run = 6, from = "success", to = "failure", status = "failure" },
    }, rec.changes)
    local streaks = {}
    for i, e in ipairs(rec.events) do streaks[i] = e.streak end
    assert.are.same({ "success 1/2", "success 2/2", "failure 1/2",
      "success 1/2", "failure 1/2", "failure 2/2", "success 1/2" }, streaks)
  end)

  it("unknown (nagios exit 3) moves neither counter: S, then F,F,U,F -> "
    .. "failure published at the last F", function()
    local rec = play("S F F U F", { success_threshold = 1,
      failure_threshold = 3 }, true)
    rec.nagios = true
    check_runs(rec, 5)
    assert.are.equal("SSSSF", letters(rec.states))
    assert.are.same({
      { run = 1, from = "failure", to = "success", status = "success" },
      { run = 5, from = "success", to = "failure", status = "failure" },
    }, rec.changes)
    -- the unknown result has no streak and did not reset the failure run
    local streaks = {}
    for i, e in ipairs(rec.events) do streaks[i] = e.streak or "-" end
    assert.are.same({ "success 1/1", "failure 1/3", "failure 2/3", "-",
      "failure 3/3" }, streaks)
    assert.are.equal("unknown", rec.events[4].status)
  end)

  it("unknown does not break a run of successes either (S=2: S,U,S -> "
    .. "success at the 3rd run)", function()
    local rec = play("S U S", { success_threshold = 2,
      failure_threshold = 1 }, true)
    rec.nagios = true
    check_runs(rec, 3)
    assert.are.equal("FFS", letters(rec.states))
    assert.are.same({
      { run = 3, from = "failure", to = "success", status = "success" },
    }, rec.changes)
  end)

  it("unknown results only: the readiness seed stays", function()
    local rec = play("U U U U", { success_threshold = 1,
      failure_threshold = 1 }, true)
    rec.nagios = true
    check_runs(rec, 4)
    assert.are.equal("FFFF", letters(rec.states))
    assert.are.same({}, rec.changes)
  end)
end)
