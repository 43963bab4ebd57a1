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
  local cmd = helpers.scripted(dir, codes, 0)
  helpers.fresh()
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
      if i >= n then sonde.after(0, helpers.stop_now) end
    end,
    on_change = function(new, old, r)
      rec.changes[#rec.changes + 1] = { run = p.runs, from = old, to = new,
        status = r.status }
    end,
  }
  for k, v in pairs(spec or {}) do fields[k] = v end
  p = sonde.probe(fields)
  rec.seed = p.state
  local ok, evs = pcall(helpers.run_logged, n * 0.2 + 30)
  helpers.rmtree(dir)
  if not ok then error(evs, 0) end
  rec.events = helpers.select(evs, "probe_result", { probe = "seq" })
  rec.all = evs
  rec.probe = p
  rec.want_status = want_status
  rec.nagios = nagios
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

-- rec.changes as "RUN FROM>TO STATUS" (the run, the transition and the
-- status of the result that made it).
local function transitions(rec)
  local out = {}
  for i, c in ipairs(rec.changes) do
    out[i] = string.format("%d %s>%s %s", c.run, c.from, c.to, c.status)
  end
  return out
end

-- The runs, the state after each run ("S F" letters) and the transitions.
local function verdict(rec, n, states, changes)
  check_runs(rec, n)
  assert.are.equal(states, letters(rec.states))
  assert.are.same(changes, transitions(rec))
end

-- The streak of each probe_result event (`none` where it has none).
local function streaks(rec, none)
  local out = {}
  for i, e in ipairs(rec.events) do out[i] = e.streak or none end
  return out
end

describe("probe thresholds (kubelet worker vectors)", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  it("readiness S=2 F=3: exact state after every run", function()
    local rec = play("S S F F F S F S S",
      { success_threshold = 2, failure_threshold = 3 })
    assert.are.equal("failure", rec.seed)
    -- state after runs 1..9
    verdict(rec, 9, "FSSSFFFFS", {
      "2 failure>success success",
      "5 success>failure failure",
      "9 failure>success success",
    })
    -- the log: state before each result, the streak toward the threshold
    assert.are.equal(9, #rec.events)
    local before = {}
    for i, e in ipairs(rec.events) do
      before[i] = e.state
      assert.are.same({ "readiness", rec.want_status[i] }, { e.kind, e.status })
    end
    assert.are.same({ "success 1/2", "success 2/2", "failure 1/3",
      "failure 2/3", "failure 3/3", "success 1/2", "failure 1/3",
      "success 1/2", "success 2/2" }, streaks(rec))
    assert.are.equal("FFSSSFFFF", letters(before))
    local sc = helpers.select(rec.all, "state_change", { probe = "seq" })
    assert.are.equal(3, #sc)
    local function change(e) return e.from .. ">" .. e.to .. " " .. e.reason end
    assert.are.same({ "failure>success ok", "success>failure exit_code" },
      { change(sc[1]), change(sc[2]) })
  end)

  it("TestFailureThreshold (readiness S=1 F=3), twice", function()
    local rec = play("SSSFFFFF SSSFFFFF S",
      { success_threshold = 1, failure_threshold = 3 })
    verdict(rec, 17, "SSSSSFFF" .. "SSSSSFFF" .. "S", {
      "1 failure>success success",
      "6 success>failure failure",
      "9 failure>success success",
      "14 success>failure failure",
      "17 failure>success success",
    })
  end)

  it("TestSuccessThreshold (readiness S=3 F=1, seeded failure), twice", function()
    local rec = play("SSSF SSSF",
      { success_threshold = 3, failure_threshold = 1 })
    assert.are.equal("failure", rec.seed)
    verdict(rec, 8, "FFSF" .. "FFSF", {
      "3 failure>success success",
      "4 success>failure failure",
      "7 failure>success success",
      "8 success>failure failure",
    })
  end)

  it("TestResultRunOnLivenessCheckFailure (liveness without a service, "
    .. "S=1 F=3): seeded success, keeps probing after failure", function()
    local rec = play("SFFF FS", { kind = "liveness", failure_threshold = 3 })
    assert.are.equal("success", rec.seed)
    verdict(rec, 6, "SSSF" .. "FS", {
      "4 success>failure failure",
      "6 failure>success success",
    })
  end)

  it("warning (nagios exit 1) counts as success", function()
    local rec = play("W W F W F F S",
      { success_threshold = 2, failure_threshold = 2 }, true)
    assert.are.same({ "warning", "warning", "failure", "warning", "failure",
      "failure", "success" }, rec.statuses)
    -- W,W publish success; the W between the failures breaks their run
    verdict(rec, 7, "FSSSSFF", {
      "2 failure>success warning",
      "6 success>failure failure",
    })
    assert.are.same({ "success 1/2", "success 2/2", "failure 1/2",
      "success 1/2", "failure 1/2", "failure 2/2", "success 1/2" }, streaks(rec))
  end)

  it("unknown (nagios exit 3) moves neither counter: S, then F,F,U,F -> "
    .. "failure published at the last F", function()
    local rec = play("S F F U F", { success_threshold = 1, failure_threshold = 3 }, true)
    verdict(rec, 5, "SSSSF", { "1 failure>success success", "5 success>failure failure" })
    -- the unknown result has no streak and did not reset the failure run
    assert.are.same({ "success 1/1", "failure 1/3", "failure 2/3", "-",
      "failure 3/3" }, streaks(rec, "-"))
    assert.are.equal("unknown", rec.events[4].status)
  end)

  it("unknown does not break a run of successes either (S=2: S,U,S -> "
    .. "success at the 3rd run)", function()
    local rec = play("S U S", { success_threshold = 2, failure_threshold = 1 }, true)
    verdict(rec, 3, "FFS", { "3 failure>success success" })
  end)

  it("unknown results only: the readiness seed stays", function()
    local rec = play("U U U U", { success_threshold = 1, failure_threshold = 1 }, true)
    verdict(rec, 4, "FFFF", {})
  end)
end)
