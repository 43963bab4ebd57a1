-- core.worker (src/worker.c, src/lworker.c): a declared probe's worker
-- driven directly, against real loopback targets (the fixture server's
-- port, a closed port) and real commands.  Its schedule, runs, skips,
-- threshold step, what it tells on_event, its counters, and how it ends
-- (stop, garbage collection, errors).  The step's and the schedule's
-- vectors are in spec/sonde/worker_spec.lua and spec/sonde/ticker_spec.lua;
-- here only their C entry points' argument checks.
--
-- No timed assertion beyond loose bounds: the loop runs until a condition
-- holds (run_until), and the schedule is checked against the worker's own
-- count of missed slots, not against wall-clock tolerances.
local core = require "sonde.core"
local helpers = require "helpers"

local P = 0.05                -- the period of most workers here, seconds
-- How far from its slot a tick may be seen: libevent's timers run on
-- CLOCK_MONOTONIC_COARSE (a jiffy, up to 4 ms behind core.now()'s clock),
-- so a tick may come that much early; it is still counted in its slot.
local TOL = 0.01

-- What run_until raises from a callback to break out of the loop.
local BREAK = setmetatable({}, { __tostring = function()
  return "worker_spec: loop break" end })

-- Run the loop until pred() holds (polled every 10 ms) or `max` seconds
-- (5) have passed; then stop the workers in `ws` and break out of the loop
-- (the others stay started).  Returns pred's last value.  (With a
-- core.on_error handler set, the handler gets BREAK and the loop runs on
-- until nothing is left: stop every worker through `ws` then.)
local function run_until(pred, ws, max)
  local deadline = core.now() + (max or 5)
  local v, done
  local function finish()
    done = true
    for _, w in ipairs(ws or {}) do w:stop() end
  end
  local function poll()
    if done then return end
    v = pred()
    if v or core.now() >= deadline then
      finish()
      error(BREAK)
    end
    core.timer(0.01, poll)
  end
  core.timer(0, poll)
  local ok, err = pcall(core.run)
  if not ok and err ~= BREAK then
    finish()
    error(err, 0)
  end
  return v
end

-- Let the loop run `seconds` (only to give what must NOT happen its
-- chance); the workers in `ws` are stopped at the end.
local function idle(seconds, ws)
  local t_end = core.now() + seconds
  run_until(function() return core.now() >= t_end end, ws, seconds + 1)
end

-- A recorder of on_event calls: the list, and the function.
local function recorder()
  local evs = {}
  return evs, function(_, ev, t)
    evs[#evs + 1] = { ev = ev, t = t, at = core.now() }
  end
end

local function of(evs, name)
  local out = {}
  for _, e in ipairs(evs) do
    if e.ev == name then out[#out + 1] = e end
  end
  return out
end

-- A tag to find a command by its command line: GNU sleep sums its
-- arguments, so `sleep 30 0.000123456` is a 30 s sleep we can name.
local function tag()
  return string.format("0.000%06d", math.random(0, 999999))
end

local function procs_tagged(t)
  return helpers.procs_matching((t:gsub("%p", "%%%0")))
end

local function busy_wait(seconds)
  local till = core.now() + seconds
  while core.now() < till do end
end

-- Every worker a spec makes (but the one it lets go to the garbage
-- collector), stopped after each spec whatever happened.
local made = setmetatable({}, { __mode = "k" })
local function worker(spec)
  local w = core.worker(spec)
  made[w] = true
  return w
end

local BOUNDS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

describe("core.worker", function()
  local srv, closed

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1" }
    closed = helpers.closed_port()
  end)

  lazy_teardown(helpers.stop_fixtures)

  after_each(function()
    for w in pairs(made) do w:stop() end
    core.on_error(nil)
    assert.are.equal(0, core.pending())
  end)

  local function tcp_opts(port)
    return { host = "127.0.0.1", port = port, timeout = 1 }
  end

  describe("schedule", function()
    it("ticks first at first_at, then on the grid first_at + k * period: a loop held up skips slots and does not shift the ticks after", function()
      local PP = 0.2
      local ticks, missed = {}, {}
      local w
      w = worker { kind = "liveness", period = PP, on_event = function(_, ev)
        assert.are.equal("tick", ev)
        ticks[#ticks + 1] = core.now()
        missed[#missed + 1] = w:stats().missed
        return false
      end }
      local first = core.now() + 0.1
      w:start(first)
      assert.is_true(w:active())
      -- hold the loop from first + 1.5 periods to first + 3.5: the ticks
      -- of slots 2 and 3 fall due meanwhile
      local held_until = first + 3.5 * PP
      core.timer(first + 1.5 * PP - core.now(), function()
        busy_wait(held_until - core.now())
      end)
      assert.is_true(run_until(function() return #ticks >= 8 end, { w }))
      assert.is_false(w:active())
      local function slot(i) return first + (i - 1 + missed[i]) * PP end
      for i, t in ipairs(ticks) do
        -- tick i is in slot i - 1 + (the slots the worker says it missed)
        assert.is_true(t >= slot(i) - TOL and t < slot(i) + PP + TOL,
          string.format("tick %d at %+.4f s from its slot %d (%d missed)", i,
            t - slot(i), i - 1 + missed[i], missed[i]))
      end
      local after
      for i, t in ipairs(ticks) do
        if t >= held_until then after = after or i end
      end
      assert.is_true(after ~= nil and after >= 2 and missed[after] >= 1,
        "the held-up tick did not skip a slot")
      -- the ticks after the late one stay on the grid: a schedule counted
      -- from the late tick would put every one of them half a period late
      local best = math.huge
      for i = after + 1, #ticks do best = math.min(best, ticks[i] - slot(i)) end
      assert.is_true(best < 0.25 * PP, "the ticks after the hold are " .. best
        .. " s late at best")
      local s = w:stats()
      assert.are.equal(#ticks, s.skipped)     -- each tick returned false
      assert.are.equal(0, s.runs)
      assert.are.equal(missed[#missed], s.missed)
    end)

    it("start() again restarts the schedule: from a far first_at to a near one, and from inside a tick", function()
      local ticks, missed = {}, {}
      local w, first2, missed2
      w = worker { kind = "liveness", period = P, on_event = function()
        ticks[#ticks + 1] = core.now()
        missed[#missed + 1] = w:stats().missed
        if #ticks == 3 then
          -- the next slot of the old grid is less than a period away
          first2 = core.now() + 4 * P
          missed2 = w:stats().missed
          w:start(first2)
        end
        return false
      end }
      local t0 = core.now()
      w:start(t0 + 100)
      local first = core.now() + 0.1
      w:start(first)
      assert.is_true(run_until(function() return #ticks >= 6 end, { w }))
      assert.is_true(ticks[1] >= first - TOL and ticks[1] < t0 + 50,
        "first tick " .. (ticks[1] - first))
      for i = 4, #ticks do
        local slot = first2 + (i - 4 + missed[i] - missed2) * P
        assert.is_true(ticks[i] >= slot - TOL and ticks[i] < slot + P + TOL,
          string.format("tick %d at %+.4f s from its slot on the new grid", i,
            ticks[i] - slot))
      end
    end)

    it("trigger: start(core.now()) ticks at once and keeps the period from there", function()
      local ticks, missed = {}, {}
      local w
      w = worker { kind = "readiness", period = P, on_event = function()
        ticks[#ticks + 1] = core.now()
        missed[#missed + 1] = w:stats().missed
        return false
      end }
      w:start(core.now() + 100)
      local at
      core.timer(0.05, function()
        at = core.now()
        w:start(at)
      end)
      assert.is_true(run_until(function() return #ticks >= 4 end, { w }))
      assert.is_true(ticks[1] >= at and ticks[1] - at < 1,
        "triggered tick " .. (ticks[1] - at) .. " s after the trigger")
      for i, t in ipairs(ticks) do
        local slot = at + (i - 1 + missed[i]) * P
        assert.is_true(t >= slot - TOL and t < slot + P + TOL,
          string.format("tick %d at %+.4f s from its slot", i, t - slot))
      end
    end)

    it("stop() stops ticking and cancels the run in flight: no event afterwards, the command is gone", function()
      local t = tag()
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = P, handler = "exec",
        opts = { argv = { "/bin/sleep", "30", t }, timeout = 60 },
        on_event = on_event }
      w:set_notify(true, true)
      w:start(core.now())
      local procs
      -- wait until the sleep runs; stop from a callback of the loop
      assert.is_true(run_until(function()
        procs = procs_tagged(t)
        return w:busy() and #procs > 0
      end, { w }))
      assert.are.equal(1, #procs, helpers.describe_procs(procs))
      assert.is_false(w:active())
      assert.is_false(w:busy())
      local n, s = #evs, w:stats()
      assert.are.equal(1, s.runs)
      assert.are.equal(0, s.results)
      idle(6 * P)
      assert.are.equal(n, #evs, "an event came after stop()")
      assert.are.same(s, w:stats())
      assert.are.equal(0, w:runs())
      assert.is_true(helpers.eventually(function() return #procs_tagged(t) == 0 end, 3),
        "the cancelled run's command still runs")
      assert.are.equal(0, core.pending())
    end)

    it("cancel() cancels the run in flight only: the next tick starts a new one", function()
      local t = tag()
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = P, handler = "exec",
        opts = { argv = { "/bin/sleep", "30", t }, timeout = 60 },
        on_event = on_event }
      w:set_notify(true, true)
      w:start(core.now())
      local cancelled
      assert.is_true(run_until(function()
        if not cancelled then
          if not (w:busy() and #procs_tagged(t) == 1) then return false end
          w:cancel()
          cancelled = { w:active(), w:busy() }
        end
        return w:stats().runs >= 2 and w:busy()
      end, { w }))
      assert.are.same({ true, false }, cancelled)
      assert.are.same({}, of(evs, "committed"))   -- the cancelled run never ends
      assert.are.equal(0, w:runs())
      assert.is_true(helpers.eventually(function() return #procs_tagged(t) == 0 end, 3))
    end)
  end)

  describe("a run still going at the next tick", function()
    it("skips the tick (\"skipped\", counted) and never stacks a second run", function()
      local t = tag()
      local evs = {}
      local bad = {}
      local w
      local sched0 = core.schedule_stats()
      w = worker { kind = "liveness", period = P, handler = "exec",
        opts = { argv = { "/bin/sleep", "0.25", t }, timeout = 10 },
        on_event = function(_, ev, tr)
          evs[#evs + 1] = { ev = ev, t = tr }
          local s = w:stats()
          if ev == "skipped" then
            if not w:busy() then bad[#bad + 1] = "skipped while not busy" end
            if s.runs - s.results ~= 1 then
              bad[#bad + 1] = string.format("runs %d, results %d at a skip",
                s.runs, s.results)
            end
            if #of(evs, "skipped") == 2 then
              local procs = procs_tagged(t)
              if #procs ~= 1 then
                bad[#bad + 1] = "commands running: " .. helpers.describe_procs(procs)
              end
            end
          elseif ev == "committed" and w:busy() then
            bad[#bad + 1] = "busy at a result"
          end
        end }
      w:set_notify(true, true)
      w:start(core.now())
      assert.is_true(run_until(function()
        return #of(evs, "committed") >= 2 and #of(evs, "skipped") >= 2
      end, { w }, 10))
      assert.are.same({}, bad)
      local s = w:stats()
      assert.are.equal(#of(evs, "skipped"), s.skipped)
      assert.are.equal(#of(evs, "committed"), s.results)
      assert.is_true(s.runs == s.results or s.runs == s.results + 1,
        "runs " .. s.runs .. ", results " .. s.results)
      -- the skipped events carry no transition
      for _, e in ipairs(of(evs, "skipped")) do assert.is_nil(e.t) end
      local sched = core.schedule_stats()
      assert.is_true(sched.skipped - sched0.skipped >= s.skipped,
        "schedule_stats().skipped " .. sched.skipped - sched0.skipped)
      assert.is_true(helpers.eventually(function() return #procs_tagged(t) == 0 end, 3))
    end)
  end)

  describe("what on_event is told", function()
    it("set_notify(false, true): a steady success readiness probe calls on_event once, for its first success (a change from the seed)", function()
      local evs, on_event = recorder()
      local w = worker { kind = "readiness", period = 0.02, handler = "tcp",
        opts = tcp_opts(srv.port), on_event = on_event }
      w:set_notify(false, true)
      w:start(core.now())
      assert.is_true(run_until(function() return w:stats().n >= 10 end, { w }))
      assert.are.equal(1, #evs)
      assert.are.equal("committed", evs[1].ev)
      assert.are.same({ from = "failure", to = "success", changed = true, run = 1 },
        evs[1].t)
      assert.are.equal(w:stats().n, w:stats().counts.success)
      assert.are.equal("success", w:state())
    end)

    it("a steady success liveness probe (seed success) never calls on_event", function()
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = 0.02, handler = "tcp",
        opts = tcp_opts(srv.port), on_event = on_event }
      w:start(core.now())         -- notify defaults to (false, true)
      assert.is_true(run_until(function() return w:stats().n >= 10 end, { w }))
      assert.are.same({}, evs)
      assert.are.equal("success", w:state())
    end)

    it("failures call \"committed\" each time: nil before the threshold, then the transition (on_failure once)", function()
      local evs, on_event = recorder()
      local w = worker { kind = "readiness", period = 0.02, handler = "tcp",
        failure_threshold = 3, opts = tcp_opts(closed), on_event = on_event }
      w:start(core.now())
      assert.is_true(run_until(function() return w:stats().n >= 5 end, { w }))
      local n = w:stats().n
      assert.are.equal(n, #evs)
      assert.are.equal(n, w:stats().counts.failure)
      for _, e in ipairs(evs) do assert.are.equal("committed", e.ev) end
      assert.is_nil(evs[1].t)
      assert.is_nil(evs[2].t)
      assert.are.same({ from = "failure", to = "failure", changed = false, run = 3,
        actions = "on_failure" }, evs[3].t)
      for i = 4, n do
        assert.are.same({ from = "failure", to = "failure", changed = false, run = i },
          evs[i].t)
      end
      local r = w:last()
      assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
    end)

    it("set_notify(true, ...) makes every success call on_event", function()
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = 0.02, handler = "tcp",
        opts = tcp_opts(srv.port), on_event = on_event }
      w:set_notify(true, false)
      w:start(core.now())
      assert.is_true(run_until(function() return w:stats().n >= 5 end, { w }))
      assert.are.equal(w:stats().counts.success, #evs)
      for i, e in ipairs(evs) do
        assert.are.equal("committed", e.ev)
        assert.are.same({ from = "success", to = "success", changed = false, run = i }, e.t)
      end
    end)

    it("set_notify(false, false): a failure that changes nothing is not told, one that calls actions is", function()
      local evs, on_event = recorder()
      local w = worker { kind = "readiness", period = 0.02, handler = "tcp",
        failure_threshold = 1, opts = tcp_opts(closed), on_event = on_event }
      w:set_notify(false, false)
      w:start(core.now())
      assert.is_true(run_until(function() return w:stats().n >= 4 end, { w }))
      assert.are.equal(1, #evs)
      assert.are.same({ from = "failure", to = "failure", changed = false, run = 1,
        actions = "on_failure" }, evs[1].t)
    end)

    it("runs of a real command: on_failure at the published failure, on_recovery at the first success after it, nothing in between", function()
      local dir = helpers.scratch()
      local file = dir .. "/healthy"
      helpers.write(file, "")
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = 0.02, handler = "exec",
        failure_threshold = 2,
        opts = { argv = { "/bin/sh", "-c", 'test -e "$1"', "sh", file }, timeout = 5 },
        on_event = on_event }
      w:set_notify(false, false)
      w:start(core.now())
      local phase = 1
      assert.is_true(run_until(function()
        local s = w:stats()
        if phase == 1 and s.counts.success >= 3 then
          os.remove(file)
          phase = 2
        elseif phase == 2 and s.counts.failure >= 4 then
          helpers.write(file, "")
          phase = 3
        elseif phase == 3 and #of(evs, "committed") >= 2 and s.counts.success >= 6 then
          return true
        end
      end, { w }, 10))
      -- (a run slower than the period skips a tick: "skipped" events)
      assert.are.equal(#of(evs, "skipped"), w:stats().skipped)
      evs = of(evs, "committed")
      assert.are.equal(2, #evs)
      assert.are.same({ from = "success", to = "failure", changed = true, run = 2,
        actions = "on_failure" }, evs[1].t)
      assert.are.same({ from = "failure", to = "success", changed = true, run = 1,
        actions = "on_recovery" }, evs[2].t)
      local r = w:last()
      assert.are.same({ "success", 0 }, { r.status, r.exit_code })
    end)
  end)

  describe("set_filter(true)", function()
    it("tells \"result\" before counting: last() holds it, stats wait for commit(), which returns the transition", function()
      local evs, seen = {}, {}
      local w
      w = worker { kind = "readiness", period = P, handler = "tcp",
        opts = tcp_opts(srv.port), on_event = function(_, ev, t)
          evs[#evs + 1] = { ev = ev, t = t }
          if ev ~= "result" then return end
          local r, wall = w:last()
          local s = w:stats()
          seen[#seen + 1] = { r = r, wall = wall, n = s.n, runs = w:runs(),
            seq = w:seq(), counts = s.counts }
          if #seen == 3 then
            -- counted as warning (success for the thresholds), 0.3 s
            seen.t = w:commit("warning", 0.3)
            w:stop()
          end
        end }
      assert.is_nil(w:last())
      w:set_filter(true)
      w:start(core.now())
      assert.is_true(run_until(function() return seen.t ~= nil end, { w }))
      assert.are.equal(3, #evs)
      for i, e in ipairs(evs) do
        assert.are.same({ "result" }, { e.ev, e.t })
        local x = seen[i]
        -- not counted before commit
        assert.are.equal(0, x.n)
        assert.are.same({ success = 0, warning = 0, failure = 0, unknown = 0 }, x.counts)
        assert.are.same({ i, i }, { x.runs, x.seq })
        assert.are.same({ "success", "ok", "127.0.0.1:" .. srv.port },
          { x.r.status, x.r.reason, x.r.remote_addr })
        assert.is_true(x.r.duration >= 0 and x.r.duration < 1)
        assert.is_true(math.abs(x.wall - core.wall_time()) < 60, "wall " .. x.wall)
      end
      assert.are.same({ from = "failure", to = "success", changed = true, run = 1 }, seen.t)
      local s = w:stats()
      assert.are.same({ success = 0, warning = 1, failure = 0, unknown = 0 }, s.counts)
      assert.are.same({ 1, 0.3, 3 }, { s.n, s.sum, s.results })
      assert.are.equal("success", w:state())
    end)
  end)

  describe("hold", function()
    it("a liveness worker with service = true holds after a published failure; reset() releases it to the seed", function()
      local evs, on_event = recorder()
      local w = worker { kind = "liveness", period = P, handler = "tcp",
        failure_threshold = 1, service = true, opts = tcp_opts(closed),
        on_event = on_event }
      w:start(core.now())
      assert.is_true(run_until(function() return #evs >= 1 end, {}, 5))
      -- still ticking, but holding: no more runs
      idle(6 * P, {})
      assert.is_true(w:active())
      assert.are.equal(1, #evs)
      assert.are.same({ from = "success", to = "failure", changed = true, run = 1,
        hold = true, restart = true, actions = "on_failure" }, evs[1].t)
      local s = w:stats()
      assert.are.same({ 1, 1, 0 }, { s.runs, s.n, s.skipped })
      assert.are.same({ "failure", "failure", 0, true }, { w:count() })
      w:reset()
      assert.are.same({ "success", nil, 0, false }, { w:count() })
      assert.are.equal("success", w:state())
      -- runs again: the next published failure holds again (no actions:
      -- it is still alerted, reset() keeps that)
      assert.is_true(run_until(function() return #evs >= 2 end, { w }))
      assert.are.same({ from = "success", to = "failure", changed = true, run = 1,
        hold = true, restart = true }, evs[2].t)
      assert.are.equal(2, w:stats().runs)
    end)

    it("a startup worker with a service holds after its success too (told, without restart)", function()
      local evs, on_event = recorder()
      local w = worker { kind = "startup", period = P, handler = "tcp",
        service = true, opts = tcp_opts(srv.port), on_event = on_event }
      assert.are.equal("unknown", w:state())
      w:start(core.now())
      assert.is_true(run_until(function() return #evs >= 1 end, {}))
      idle(4 * P, { w })
      assert.are.equal(1, #evs)
      assert.are.same({ from = "unknown", to = "success", changed = true, run = 1,
        hold = true }, evs[1].t)
      assert.are.same({ "success", "success", 0, true }, { w:count() })
      assert.are.equal(1, w:stats().runs)
    end)
  end)

  describe("set_gated", function()
    it("true: ticks start no run (and skip nothing); false again: they do", function()
      local evs, on_event = recorder()
      local w = worker { kind = "readiness", period = P, handler = "tcp",
        opts = tcp_opts(srv.port), on_event = on_event }
      w:set_notify(true, true)
      w:set_gated(true)
      w:start(core.now())
      local t_open = core.now() + 6 * P
      local gated_runs
      assert.is_true(run_until(function()
        if not gated_runs then
          if core.now() < t_open then return false end
          gated_runs = w:stats().runs
          w:set_gated(false)
        end
        return w:stats().results >= 2
      end, { w }))
      assert.are.equal(0, gated_runs)
      local s = w:stats()
      assert.are.equal(0, s.skipped)
      assert.is_true(s.runs >= 2)
      assert.is_true(#evs >= 2)
    end)
  end)

  describe("force", function()
    it("publishes without counting, actions included", function()
      local w = worker { kind = "readiness", period = 1, on_event = function() end }
      assert.are.same({ from = "failure", to = "failure", changed = false, run = 0,
        actions = "on_failure" }, w:force("failure"))
      assert.are.same({ from = "failure", to = "failure", changed = false, run = 0 },
        w:force("failure"))
      assert.are.same({ from = "failure", to = "success", changed = true, run = 0,
        actions = "on_recovery" }, w:force("success"))
      assert.are.same({ from = "success", to = "unknown", changed = true, run = 0 },
        w:force("unknown"))
      assert.are.same({ "unknown", nil, 0, false }, { w:count() })
      local s = w:stats()
      assert.are.same({ 0, 0, 0 }, { s.n, s.runs, s.results })
      assert.are.same({ success = 0, warning = 0, failure = 0, unknown = 0 }, s.counts)
    end)
  end)

  describe("stats()", function()
    it("counts committed results by status, in cumulative duration buckets (core.DURATION_BUCKETS), with sum and n", function()
      assert.are.same(BOUNDS, core.DURATION_BUCKETS)
      local w = worker { kind = "readiness", period = 1, success_threshold = 2,
        failure_threshold = 2, on_event = function() end }
      assert.is_nil(w:commit("success", 0.003))
      assert.are.same({ from = "failure", to = "success", changed = true, run = 2 },
        w:commit("warning", 0.02))              -- warning counts as success
      assert.is_nil(w:commit("unknown", 20))    -- moves no counter
      assert.are.same({ from = "success", to = "success", changed = false, run = 3 },
        w:commit("success", 0.25))              -- exactly on a bound
      assert.is_nil(w:commit("failure", 0.3))
      assert.are.same({ from = "success", to = "failure", changed = true, run = 2,
        actions = "on_failure" }, w:commit("failure", -1))   -- counted as 0 s
      local s = w:stats()
      assert.are.same({ success = 2, warning = 1, failure = 2, unknown = 1 }, s.counts)
      assert.are.equal(6, s.n)
      assert.is_true(math.abs(s.sum - (0.003 + 0.02 + 20 + 0.25 + 0.3)) < 1e-9, s.sum)
      -- durations 0.003 0.02 20 0.25 0.3 0, each counted in every bucket
      -- whose bound it does not exceed (20 s in none: only in n)
      assert.are.same({ 2, 2, 3, 3, 3, 4, 5, 5, 5, 5, 5 }, s.buckets)
      assert.are.same({ 0, 0, 0, 0 }, { s.runs, s.results, w:runs(), w:seq() })
      assert.are.same({ 0, 0 }, { s.skipped, s.missed })
      assert.are.same({ "failure", "failure", 2, false }, { w:count() })
    end)

    it("runs (started), results, runs() and seq() follow real runs", function()
      local w = worker { kind = "liveness", period = 0.02, handler = "exec",
        opts = { argv = { "/bin/true" } }, on_event = function() end }
      w:start(core.now())
      assert.is_true(run_until(function() return w:runs() >= 3 end, { w }))
      local s = w:stats()
      assert.are.equal(w:runs(), s.results)
      assert.are.equal(w:runs(), w:seq())
      assert.are.equal(s.results, s.n)
      assert.are.equal(s.n, s.counts.success)
      assert.is_true(s.runs == s.results or s.runs == s.results + 1)
      assert.are.equal(s.n, s.buckets[#s.buckets])   -- each well under 10 s
      assert.is_true(s.sum >= 0 and s.sum < s.n)
      assert.are.equal(0, (w:last()).exit_code)
    end)
  end)

  describe("a worker without a handler", function()
    it("is told \"tick\": false counts a skip, true a run; finished() counts runs()", function()
      local sched0 = core.schedule_stats()
      local n, w = 0, nil
      w = worker { kind = "readiness", period = 0.02, on_event = function(_, ev)
        assert.are.equal("tick", ev)
        n = n + 1
        if n % 2 == 1 then return false end
        if n % 4 == 0 then return nil end       -- not true: a skip too
        w:finished()
        w:commit("success", 0.001)
        return true
      end }
      w:start(core.now())
      assert.is_true(run_until(function() return n >= 12 end, { w }))
      local s = w:stats()
      local started = 0
      for i = 1, n do
        if i % 2 == 0 and i % 4 ~= 0 then started = started + 1 end
      end
      assert.are.same({ started, n - started }, { s.runs, s.skipped })
      assert.are.same({ started, started, started }, { w:runs(), s.n, s.counts.success })
      assert.is_nil(w:last())
      local sched = core.schedule_stats()
      assert.is_true(sched.skipped - sched0.skipped >= n - started)
      assert.is_true(sched.runs - sched0.runs >= started)
    end)
  end)

  describe("errors and ends", function()
    it("an on_event that raises is contained: with core.on_error set the worker keeps ticking", function()
      local errs, n = {}, 0
      core.on_error(function(e) if e ~= BREAK then errs[#errs + 1] = e end end)
      local w = worker { kind = "readiness", period = 0.02, on_event = function()
        n = n + 1
        error("boom " .. n)
      end }
      w:start(core.now())
      assert.is_true(run_until(function() return #errs >= 3 end, { w }))
      core.on_error(nil)
      assert.are.equal(n, #errs)
      assert.truthy(errs[1]:find("boom 1", 1, true), errs[1])
      assert.truthy(errs[1]:find("stack traceback", 1, true), errs[1])
      -- a tick whose on_event raised started nothing: a skip
      assert.are.same({ 0, n }, { w:stats().runs, w:stats().skipped })
    end)

    it("without core.on_error, core.run() raises on_event's error and stops; the worker stays started", function()
      local w = worker { kind = "readiness", period = 0.02, on_event = function()
        error("no handler for this", 0)
      end }
      w:start(core.now())
      local ok, err = pcall(core.run)
      local active = w:active()
      w:stop()
      assert.is_true(core.run())
      assert.is_false(ok)
      -- (the message handler adds a traceback)
      assert.are.equal("no handler for this\nstack traceback:",
        tostring(err):match("^[^\n]*\n[^\n]*"))
      assert.is_true(active)
    end)

    it("a committed handler result's on_event that raises is contained too", function()
      local errs = {}
      core.on_error(function(e) if e ~= BREAK then errs[#errs + 1] = e end end)
      local w = worker { kind = "readiness", period = 0.02, handler = "tcp",
        opts = tcp_opts(closed), on_event = function() error("bad hook") end }
      w:start(core.now())
      assert.is_true(run_until(function() return #errs >= 3 end, { w }))
      assert.is_true(w:stats().n >= 3)
    end)

    it("a worker no longer referenced is collected: its timer and its run end, no event after", function()
      local t = tag()
      local events = 0
      local weak = setmetatable({}, { __mode = "v" })
      local keep = {}
      ;(function()
        local w = core.worker { kind = "liveness", period = P, handler = "exec",
          opts = { argv = { "/bin/sleep", "30", t }, timeout = 60 },
          on_event = function() events = events + 1 end }
        w:set_notify(true, true)
        w:start(core.now())
        weak[1], keep[1] = w, w
      end)()
      local collected, at_collect, collected_at
      run_until(function()
        if collected_at then
          -- its timer had the chance to tick a few times
          return core.now() >= collected_at + 6 * P
        end
        local w = weak[1]
        -- its run (the sleep) is going, and a tick was skipped meanwhile
        if w and w:busy() and events >= 1 and #procs_tagged(t) == 1 then
          w = nil
          keep[1] = nil
          collectgarbage()
          collectgarbage()
          collected, at_collect, collected_at = weak[1] == nil, events, core.now()
        end
      end, {}, 10)
      local leftover = weak[1]
      if leftover then leftover:stop() end
      assert.is_true(at_collect ~= nil, "the worker's run did not start")
      assert.is_true(collected, "the worker was not collected")
      assert.are.equal(at_collect, events, "an event came after the collection")
      assert.is_true(helpers.eventually(function() return #procs_tagged(t) == 0 end, 3),
        "the collected worker's run still runs")
    end)

    it("stopping the worker from inside its own on_event: no event after", function()
      for _, case in ipairs {
        { ev = "committed", period = 1,
          spec = { handler = "exec", opts = { argv = { "/bin/true" } } },
          setup = function(w) w:set_notify(true, true) end },
        { ev = "result", period = 1,
          spec = { handler = "tcp", opts = tcp_opts(srv.port) },
          setup = function(w) w:set_filter(true) end },
        { ev = "skipped", period = 0.02, spec = { handler = "exec",
          opts = { argv = { "/bin/sleep", "0.3" }, timeout = 5 } } },
        { ev = "tick", period = 0.02, spec = {} },
      } do
        local evs = {}
        local spec = case.spec
        local w
        spec.kind, spec.period = "liveness", case.period
        spec.on_event = function(_, ev)
          evs[#evs + 1] = ev
          if ev == case.ev then w:stop() end
          return true
        end
        w = worker(spec)
        if case.setup then case.setup(w) end
        w:start(core.now())
        assert.is_true(run_until(function() return #evs > 0 end, {}), case.ev)
        assert.is_false(w:active())
        assert.is_false(w:busy())
        idle(6 * 0.02, {})
        assert.are.same({ case.ev }, evs, case.ev)
        w:stop()
      end
    end)

    it("a closed worker's methods raise", function()
      local w = core.worker { kind = "liveness", period = 1, on_event = function() end }
      w:start(core.now() + 10)
      getmetatable(w).__gc(w)
      getmetatable(w).__gc(w)            -- twice: nothing
      local ok, err = pcall(w.start, w, core.now())
      assert.is_false(ok)
      assert.truthy(err:find("the worker is closed", 1, true), err)
      assert.is_false(pcall(w.stats, w))
      assert.are.equal(0, core.pending())
    end)

    describe("misuse raises clear errors", function()
      local ev = function() end
      local function raises(spec, ...)
        local ok, err = pcall(core.worker, spec)
        assert.is_false(ok, "accepted")
        err = tostring(err)
        for _, needle in ipairs { ... } do
          assert.truthy(err:find(needle, 1, true),
            ("%q should mention %q"):format(err, needle))
        end
      end

      it("the spec", function()
        raises("liveness", "table expected")
        raises({ kind = "bogus", period = 1, on_event = ev }, "kind", "bogus")
        raises({ period = 1, on_event = ev }, "kind")
        raises({ kind = "liveness", on_event = ev }, "period")
        raises({ kind = "liveness", period = 0, on_event = ev }, "period", "> 0")
        raises({ kind = "liveness", period = -1, on_event = ev }, "period")
        raises({ kind = "liveness", period = 0 / 0, on_event = ev }, "period")
        raises({ kind = "liveness", period = math.huge, on_event = ev }, "period")
        raises({ kind = "liveness", period = 1e-300, on_event = ev }, "period")
        raises({ kind = "liveness", period = 1 }, "on_event", "function expected")
        raises({ kind = "liveness", period = 1, on_event = "x" }, "on_event")
        raises({ kind = "liveness", period = 1, on_event = ev, handler = "tcp" },
          "opts", "table expected")
        raises({ kind = "liveness", period = 1, on_event = ev, handler = "ftp",
          opts = {} }, "handler", "ftp")
        raises({ kind = "liveness", period = 1, on_event = ev, failure_threshold = 0 },
          "failure_threshold", "at least 1")
        raises({ kind = "liveness", period = 1, on_event = ev, success_threshold = 1.5 },
          "success_threshold")
        raises({ kind = "liveness", period = 1, on_event = ev, handler = "exec",
          opts = { argv = {} } }, "argv")
        raises({ kind = "liveness", period = 1, on_event = ev, handler = "tcp",
          opts = { port = 1 } }, "host")
        assert.are.equal(0, core.pending())
      end)

      it("the methods", function()
        local w = worker { kind = "liveness", period = 1, on_event = ev }
        local function m(name, ...)
          local ok, err = pcall(w[name], w, ...)
          assert.is_false(ok, name .. " accepted")
          return tostring(err)
        end
        assert.truthy(m("start"):find("number expected", 1, true))
        for _, bad in ipairs { 0 / 0, math.huge, -math.huge, -1e300 } do
          assert.truthy(m("start", bad):find("first_at", 1, true), tostring(bad))
        end
        -- far ahead is fine (its first tick waits like any timer)
        w:start(core.now() + 2e9)
        assert.is_true(w:active())
        w:stop()
        assert.truthy(m("commit", "bogus"):find("bogus", 1, true))
        assert.truthy(m("force", "bogus"):find("bogus", 1, true))
        assert.is_false(w:active())
        assert.is_false(pcall(w.start, {}, 1))  -- not a worker
        assert.are.equal(0, core.pending())
      end)
    end)
  end)

  describe("core.step and core.next_slot", function()
    it("core.step: a few vectors", function()
      -- no result published: 4 values
      assert.are.same({ "success", "failure", 1, false },
        { core.step("success", nil, 0, false, "failure", "liveness", 1, 3, false) })
      assert.are.same({ "failure", "failure", 2, false },
        { core.step("failure", "failure", 2, false, "unknown", "readiness", 2, 3, false) })
      assert.are.same({ "failure", "success", 2, false },
        { core.step("failure", "success", 1, false, "warning", "readiness", 3, 3, false) })
      -- published, holding (liveness failure under a service)
      assert.are.same({ "failure", "failure", 0, true,
          "success", "failure", true, 3, true, true },
        { core.step("success", "failure", 2, false, "failure", "liveness", 1, 3, true) })
    end)

    it("core.step: its arguments are checked", function()
      local good = { "success", nil, 0, false, "failure", "liveness", 1, 3, false }
      local function bad(i, v, needle)
        local args = table.move(good, 1, 9, 1, {})
        args[i] = v
        local ok, err = pcall(core.step, table.unpack(args, 1, 9))
        assert.is_false(ok, ("argument %d = %s accepted"):format(i, tostring(v)))
        assert.truthy(tostring(err):find(needle, 1, true), err)
      end
      assert.is_true(pcall(core.step, table.unpack(good, 1, 9)))
      bad(1, "bogus", "#1")
      bad(1, nil, "#1")
      bad(2, "bogus", "#2")
      bad(3, -1, "#3")
      bad(3, 1.5, "#3")
      bad(5, "bogus", "#5")
      bad(6, "bogus", "#6")
      bad(7, 0, "#7")
      bad(8, 0, "#8")
      bad(8, -3, "#8")
    end)

    it("core.next_slot: a few vectors", function()
      assert.are.same({ 1, 0 }, { core.next_slot(10, 2, 0, 10) })
      assert.are.same({ 1, 0 }, { core.next_slot(10, 2, 0, 9.999) }) -- early
      assert.are.same({ 6, 0 }, { core.next_slot(10, 2, 5, 19.9999) })
      assert.are.same({ 8, 4 }, { core.next_slot(10, 2, 3, 25) })
    end)

    it("core.next_slot: its arguments are checked (and absurd ones do not hang it)", function()
      local function bad(needle, ...)
        local ok, err = pcall(core.next_slot, ...)
        assert.is_false(ok, "accepted")
        assert.truthy(tostring(err):find(needle, 1, true), err)
      end
      bad("#2", 0, 0, 0, 1)
      bad("#2", 0, -1, 0, 1)
      bad("#2", 0, 0 / 0, 0, 1)
      bad("#3", 0, 1, -1, 1)
      bad("#3", 0, 1, 0.5, 1)
      bad("#1", "x", 1, 0, 1)
      bad("#4", 0, 1, 0)
      bad("#1", 0 / 0, 1, 0, 1)
      bad("#4", 0, 1, 0, math.huge)
      bad("#4", 0, 1, 0, 0 / 0)
      bad("#1", -math.huge, 1, 0, 1)
      -- (a slot number beyond 2^53 cannot be exact: refused, not looped on)
      local ok = pcall(core.next_slot, 0, 1e-300, 0, 1)
      assert.is_false(ok)
      ok = pcall(core.next_slot, -1e300, 1, 0, 1)
      assert.is_false(ok)
    end)
  end)

  describe("core.schedule_stats()", function()
    it("counts runs and the lateness of their starts: 0 <= p50 <= p99 <= max, loosely bounded; reset clears", function()
      core.schedule_stats(true)
      local z = core.schedule_stats()
      assert.are.same({ runs = 0, skipped = 0, missed = 0, p50 = 0, p99 = 0, max = 0 }, z)
      local w = worker { kind = "liveness", period = 0.02, handler = "exec",
        opts = { argv = { "/bin/true" } }, on_event = function() end }
      w:start(core.now())
      assert.is_true(run_until(function() return w:stats().runs >= 10 end, { w }))
      local s = core.schedule_stats()
      assert.are.same(s, core.schedule_stats())   -- reading clears nothing
      assert.is_true(s.runs >= w:stats().runs, "runs " .. s.runs)
      assert.is_true(s.p50 >= 0 and s.p50 <= s.p99 and s.p99 <= s.max,
        string.format("p50 %g p99 %g max %g", s.p50, s.p99, s.max))
      assert.is_true(s.max < 1, "max " .. s.max)
      assert.is_true(s.skipped >= 0 and s.missed >= 0)
      local r = core.schedule_stats(true)   -- the figures, then cleared
      assert.are.equal(s.runs, r.runs)
      assert.are.same(z, core.schedule_stats())
    end)
  end)
end)
