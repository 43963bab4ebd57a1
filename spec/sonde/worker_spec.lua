-- sonde.worker: the kubelet prober worker's threshold step (reference
-- kubelet-probes.md 8.3 steps 12-15, vectors of 8.4) as a pure function.
-- No loop, no clock: each test feeds statuses through worker.step and
-- checks the exact counting state and transition after every result.
local worker = require "sonde.worker"

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[deep_copy(k)] = deep_copy(x) end
  return c
end

-- The counting state as a plain table (hold always a boolean).
local function state(w)
  return { state = w.state, last = w.last, run = w.run, hold = w.hold }
end

-- A transition with absent flags as false, so that `same` compares exact
-- values whatever way the module leaves a flag unset.
local function tr(t)
  if t == nil then return nil end
  local c = { from = t.from, to = t.to, changed = t.changed, run = t.run,
              hold = t.hold or false, restart = t.restart or false }
  for k in pairs(t) do
    assert(c[k] ~= nil, "unexpected transition field " .. tostring(k))
  end
  return c
end

local SERVICE = { name = "web" }   -- anything true: the probe watches it

local function probe(kind, s, f, service)
  return { kind = kind, success_threshold = s, failure_threshold = f,
           service = service }
end

-- Feed `status` to `w`: check that step changes neither argument, then
-- check the new state and the transition (nil: none published).
local function feed(w, status, p, want_state, want_t)
  local w0, p0 = deep_copy(w), deep_copy(p)
  local n, t = worker.step(w, status, p)
  assert.same(w0, w)
  assert.same(p0, p)
  assert.are_not.equal(w, n)
  assert.same(want_state, state(n))
  assert.same(want_t, tr(t))
  return n, t
end

local function S(state_, last, run, hold)
  return { state = state_, last = last, run = run, hold = hold or false }
end

-- A published transition; `run` is the run that reached the threshold
-- (before a hold resets the state's run to 0).
local function T(from, to, run, hold, restart)
  return { from = from, to = to, changed = from ~= to, run = run,
           hold = hold or false, restart = restart or false }
end

local STATUS = { S = "success", F = "failure", W = "warning", U = "unknown" }

-- Feed `w` one result per line of `steps` and check each as `feed` does:
--   RESULT  STATE LAST RUN [hold]  |  FROM>TO RUN [hold] [restart]
-- (RESULT: S, F, W or U; after the bar the transition published, or "-"
-- for none).  Returns the last state.
local function play(w, p, steps)
  for line in steps:gmatch("[^\n]+") do
    local left, right = line:match("^%s*(.-)%s*|%s*(.-)%s*$")
    if left then
      local r, st, last, run, hold = left:match("^(%a)%s+(%a+)%s+(%a+)%s+(%d+)%s*(%a*)$")
      assert(r, "bad step: " .. line)
      local want_t
      if right ~= "-" then
        local from, to, trun, flags = right:match("^(%a+)>(%a+)%s+(%d+)%s*(.*)$")
        assert(from, "bad transition: " .. line)
        want_t = T(from, to, tonumber(trun), flags:find("hold") ~= nil,
          flags:find("restart") ~= nil)
      end
      w = feed(w, STATUS[r], p, S(st, last, tonumber(run), hold == "hold"), want_t)
    end
  end
  return w
end

describe("sonde.worker", function()
  describe("seed", function()
    it("seeds each kind as the kubelet does", function()
      assert.same(S("failure", nil, 0), state(worker.seed("readiness")))
      assert.same(S("success", nil, 0), state(worker.seed("liveness")))
      assert.same(S("unknown", nil, 0), state(worker.seed("startup")))
      assert.same({ readiness = "failure", liveness = "success",
                    startup = "unknown" }, worker.SEED)
    end)

    it("returns a fresh table each time", function()
      local a, b = worker.seed("liveness"), worker.seed("liveness")
      assert.are_not.equal(a, b)
      a.run = 5
      assert.equal(0, b.run)
      assert.equal(0, worker.seed("liveness").run)
    end)
  end)

  describe("TestFailureThreshold (readiness, S=1, F=3)", function()
    it("publishes failure at the 3rd failure in a row, success at once",
      function()
      local p, w = probe("readiness", 1, 3), worker.seed("readiness")
      for _ = 1, 2 do
        -- S,S,S: success each time (run 1, 2, 3: past the threshold, the
        -- run keeps counting and every result publishes)
        -- (round 1 from the seed, round 2 after the failures: both failure)
        -- then F,F: still success, nothing published; 3rd F: failure; 4th
        -- and 5th: failure again (no change)
        w = play(w, p, [[
          S  success success 1 | failure>success 1
          S  success success 2 | success>success 2
          S  success success 3 | success>success 3
          F  success failure 1 | -
          F  success failure 2 | -
          F  failure failure 3 | success>failure 3
          F  failure failure 4 | failure>failure 4
          F  failure failure 5 | failure>failure 5
        ]])
      end
      -- next round: the first S is success immediately
      play(w, p, "S  success success 1 | failure>success 1")
    end)
  end)

  describe("TestSuccessThreshold (readiness, S=3, F=1)", function()
    it("needs 3 successes in a row; one failure publishes at once", function()
      local p, w = probe("readiness", 3, 1), worker.seed("readiness")
      for _ = 1, 2 do
        w = play(w, p, [[
          S  failure success 1 | -
          S  failure success 2 | -
          S  success success 3 | failure>success 3
          F  failure failure 1 | success>failure 1
        ]])
      end
      -- a success run broken by a failure starts again from 1
      play(w, p, [[
        S  failure success 1 | -
        S  failure success 2 | -
        F  failure failure 1 | failure>failure 1
        S  failure success 1 | -
      ]])
    end)
  end)

  describe("startup (S=1, F=3, with a service)", function()
    it("TestStartupProbeSuccessThreshold: first success publishes and holds",
      function()
      local p = probe("startup", 1, 3, SERVICE)
      play(worker.seed("startup"), p,
        "S  success success 0 hold | unknown>success 1 hold")
    end)

    it("TestStartupProbeFailureThreshold: unknown, unknown, then failure "
      .. "with run 0 and hold", function()
      local p = probe("startup", 1, 3, SERVICE)
      play(worker.seed("startup"), p, [[
        F  unknown failure 1 | -
        F  unknown failure 2 | -
        F  failure failure 0 hold | unknown>failure 3 hold restart
      ]])
    end)

    it("TestResultRunOnStartupCheckFailure: F,F -> unknown (run 1, 2); "
      .. "F -> failure (run 0)", function()
      local p = probe("startup", 1, 3, SERVICE)
      local w = play(worker.seed("startup"), p, "F  unknown failure 1 | -")
      assert.equal(1, w.run)
      w = play(w, p, "F  unknown failure 2 | -")
      assert.equal(2, w.run)
      w = play(w, p, "F  failure failure 0 hold | unknown>failure 3 hold restart")
      assert.equal(0, w.run)
    end)
  end)

  describe("TestResultRunOnLivenessCheckFailure (S=1, F=3)", function()
    it("S -> success (run 1); F, F -> success (run 1, 2); F -> failure, "
      .. "run 0", function()
      local p = probe("liveness", 1, 3, SERVICE)
      play(worker.seed("liveness"), p, [[
        S  success success 1 | success>success 1
        F  success failure 1 | -
        F  success failure 2 | -
        F  failure failure 0 hold | success>failure 3 hold restart
      ]])
    end)
  end)

  describe("TestOnHoldOnLivenessOrStartupCheckFailure (F=1)", function()
    for _, kind in ipairs { "liveness", "startup" } do
      it(kind .. ": a failure holds and asks for a restart; a new instance "
        .. "(the seed) lifts the hold", function()
        local p = probe(kind, 1, 1, SERVICE)
        local seed = worker.seed(kind)
        local w = feed(seed, "failure", p, S("failure", "failure", 0, true),
          T(seed.state, "failure", 1, true, true))
        assert.is_true(w.hold)
        -- the engine skips a held worker (step 5); the next instance
        -- starts from the seed, not held
        w = worker.seed(kind)
        assert.is_false(w.hold)
        -- then a success: liveness is not held, startup holds again
        play(w, p, kind == "liveness"
          and "S  success success 1 | success>success 1"
          or "S  success success 0 hold | unknown>success 1 hold")
      end)
    end

    it("readiness never holds, even with a service", function()
      local p = probe("readiness", 1, 1, SERVICE)
      play(worker.seed("readiness"), p, [[
        S  success success 1 | failure>success 1
        F  failure failure 1 | success>failure 1
        F  failure failure 2 | failure>failure 2
      ]])
    end)

    it("only a new instance (the seed) lifts a hold, never a result",
      function()
      -- the engine does not probe a held worker; if a result came anyway,
      -- the hold stays (kubelet: onHold is cleared only by step 4)
      local p = probe("liveness", 1, 1, SERVICE)
      local held = S("failure", "failure", 0, true)
      play(held, p, "S  success success 1 hold | failure>success 1")
      play(held, p, "U  failure failure 0 hold | -")
      play(S("failure", "failure", 0, true), probe("readiness", 2, 3),
        "S  failure success 1 hold | -")
    end)

    it("a published liveness success neither holds nor restarts", function()
      local p = probe("liveness", 1, 3, SERVICE)
      play(S("failure", "failure", 3), p, "S  success success 1 | failure>success 1")
    end)
  end)

  describe("a probe without a service", function()
    it("liveness never holds and its run keeps counting past the threshold",
      function()
      local p = probe("liveness", 1, 3, nil)
      assert.is_nil(p.service)
      local w = play(worker.seed("liveness"), p, [[
        F  success failure 1 | -
        F  success failure 2 | -
        F  failure failure 3 | success>failure 3
        F  failure failure 4 | failure>failure 4
        F  failure failure 5 | failure>failure 5
      ]])
      assert.equal("failure 5/3", worker.streak(w, p))
      play(w, p, "S  success success 1 | failure>success 1")
    end)

    it("startup never holds, after a success or a failure", function()
      local p = probe("startup", 1, 2, nil)
      play(worker.seed("startup"), p, [[
        S  success success 1 | unknown>success 1
        S  success success 2 | success>success 2
        F  success failure 1 | -
        F  failure failure 2 | success>failure 2
        F  failure failure 3 | failure>failure 3
      ]])
    end)
  end)

  describe("statuses", function()
    it("warning counts as success", function()
      local p = probe("readiness", 2, 3)
      -- (the last four: a warning breaks a failure run)
      play(worker.seed("readiness"), p, [[
        W  failure success 1 | -
        S  success success 2 | failure>success 2
        W  success success 3 | success>success 3
        F  success failure 1 | -
        F  success failure 2 | -
        W  success success 1 | -
        F  success failure 1 | -
      ]])
    end)

    it("a liveness warning never restarts", function()
      local p = probe("liveness", 1, 1, SERVICE)
      play(S("failure", "failure", 1), p, "W  success success 1 | failure>success 1")
    end)

    it("unknown moves no counter and publishes nothing", function()
      local cases = {
        { probe("readiness", 1, 3), worker.seed("readiness") },
        { probe("liveness", 1, 3, SERVICE), S("success", "failure", 2) },
        { probe("startup", 1, 3, SERVICE), S("unknown", "failure", 2) },
        { probe("readiness", 3, 1), S("failure", "success", 2) },
        { probe("liveness", 1, 1, SERVICE), S("failure", "failure", 0, true) },
        { probe("liveness", 1, 3), S("failure", "failure", 7) },
      }
      for _, c in ipairs(cases) do
        local p, w = c[1], c[2]
        local n = feed(w, "unknown", p, state(w), nil)
        -- and many unknowns in a row still change nothing
        for _ = 1, 10 do n = feed(n, "unknown", p, state(w), nil) end
      end
    end)

    it("unknown inside a run neither breaks nor extends it", function()
      local p = probe("liveness", 1, 3, SERVICE)
      play(worker.seed("liveness"), p, [[
        F  success failure 1 | -
        U  success failure 1 | -
        F  success failure 2 | -
        U  success failure 2 | -
        U  success failure 2 | -
        F  failure failure 0 hold | success>failure 3 hold restart
      ]])
    end)
  end)

  describe("force", function()
    it("publishes without counting", function()
      local w = S("success", "success", 4)
      local w0 = deep_copy(w)
      local n, t = worker.force(w, "failure")
      assert.same(w0, w)
      assert.same(S("failure", "success", 4), state(n))
      assert.same({ from = "success", to = "failure", changed = true }, t)
    end)

    it("reports no change when the state is already the forced one",
      function()
      local w = worker.seed("readiness")
      local n, t = worker.force(w, "failure")
      assert.same(S("failure", nil, 0), state(n))
      assert.same({ from = "failure", to = "failure", changed = false }, t)
      assert.are_not.equal(w, n)
    end)

    it("keeps the run going: counting resumes where it was", function()
      local p = probe("readiness", 1, 3)
      local w = play(worker.seed("readiness"), p,
        "S  success success 1 | failure>success 1")
      w = worker.force(w, "failure")
      assert.same(S("failure", "success", 1), state(w))
      -- a failure run starts at 1, a success run would go on at 2
      play(w, p, "F  failure failure 1 | -")
      play(w, p, "S  success success 2 | failure>success 2")
    end)

    it("keeps the hold", function()
      local w = S("failure", "failure", 0, true)
      local n = worker.force(w, "failure")
      assert.is_true(n.hold)
    end)
  end)

  describe("streak", function()
    it("is nil before the first verdict", function()
      local p, w = probe("readiness", 1, 3), worker.seed("readiness")
      assert.is_nil(worker.streak(w, p))
      w = worker.step(w, "unknown", p)
      assert.is_nil(worker.streak(w, p))
    end)

    it("shows the run toward its own threshold", function()
      local p, w = probe("readiness", 2, 3), worker.seed("readiness")
      w = worker.step(w, "failure", p)
      assert.equal("failure 1/3", worker.streak(w, p))
      w = worker.step(w, "failure", p)
      assert.equal("failure 2/3", worker.streak(w, p))
      w = worker.step(w, "warning", p)
      assert.equal("success 1/2", worker.streak(w, p))
      w = worker.step(w, "success", p)
      assert.equal("success 2/2", worker.streak(w, p))
      w = worker.step(w, "success", p)
      assert.equal("success 3/2", worker.streak(w, p))
    end)

    it("with the step's transition, shows the run that published, before "
      .. "a hold reset it", function()
      local p = probe("liveness", 1, 3, SERVICE)
      local w, t = worker.step(S("success", "failure", 2), "failure", p)
      assert.equal(0, w.run)
      assert.equal("failure 3/3", worker.streak(w, p, t))
      assert.equal("failure 0/3", worker.streak(w, p))
      -- startup success: "success 1/1", the state's run is 0
      local sp = probe("startup", 1, 3, SERVICE)
      local sw, st = worker.step(worker.seed("startup"), "success", sp)
      assert.equal("success 1/1", worker.streak(sw, sp, st))
      assert.equal("success 0/1", worker.streak(sw, sp))
    end)

    it("with the transition of a publish without hold, shows the same run",
      function()
      local p = probe("readiness", 1, 3)
      local w, t = worker.step(S("success", "failure", 4), "failure", p)
      assert.equal("failure 5/3", worker.streak(w, p, t))
      assert.equal("failure 5/3", worker.streak(w, p))
      -- no transition (nothing published): the state's run
      w, t = worker.step(worker.seed("readiness"), "failure", p)
      assert.is_nil(t)
      assert.equal("failure 1/3", worker.streak(w, p, t))
    end)

    it("changes neither argument", function()
      local p = probe("readiness", 2, 3)
      local w = S("failure", "failure", 2)
      local w0, p0 = deep_copy(w), deep_copy(p)
      assert.equal("failure 2/3", worker.streak(w, p))
      assert.same(w0, w)
      assert.same(p0, p)
    end)
  end)

  describe("purity", function()
    it("step never modifies the table it is given, over a long sequence",
      function()
      local seq = { "success", "failure", "warning", "unknown", "failure",
                    "failure", "failure", "success", "unknown", "failure" }
      for _, kind in ipairs { "liveness", "readiness", "startup" } do
        for _, svc in ipairs { SERVICE, false } do
          local p = probe(kind, 1, 2, svc or nil)
          local w = worker.seed(kind)
          for _, status in ipairs(seq) do
            local before = deep_copy(w)
            local pb = deep_copy(p)
            local n = worker.step(w, status, p)
            assert.same(before, w)
            assert.same(pb, p)
            assert.are_not.equal(w, n)
            w = n
          end
        end
      end
    end)
  end)
end)
