--- The kubelet prober worker's threshold step, as a pure function
-- (reference: kubelet-probes.md section 8.3, steps 12-15; test vectors
-- in section 8.4).
--
-- A worker's counting state is a table `{ state, last, run, hold }`:
--
--   * `state`: the published result, `"success"`, `"failure"` or
--     `"unknown"` (startup before its first verdict);
--   * `last`: the verdict of the current run of equal results
--     (`"success"`, `"failure"` or nil before the first);
--   * `run`: how many results in a row were `last`;
--   * `hold`: true when the worker stopped probing until a new instance
--     of its service (liveness after a failure, startup after any verdict;
--     a probe without a service never holds: nothing replaces it).
--
-- `step` takes one result status and returns a new state table and the
-- transition it makes, if any; it changes nothing it is given.  It is the
-- C core's step (sonde_step in src/worker.c, which the probes' workers
-- run), so that specs feed it vectors without a loop.  Warning
-- counts as success; unknown counts toward neither (the engine's own
-- trouble never restarts a healthy service).
-- @module sonde.worker
local core = require "sonde.core"

local M = {}

--- The seed state of a probe kind (kubelet): readiness starts not ready,
-- liveness healthy, startup unknown.
M.SEED = { readiness = "failure", liveness = "success", startup = "unknown" }

--- A fresh counting state for `kind`.
-- @tparam string kind "liveness" | "readiness" | "startup"
function M.seed(kind)
  return { state = M.SEED[kind], last = nil, run = 0, hold = false }
end

--- One result through the thresholds.
-- @tparam table w the counting state (not modified)
-- @tparam string status the result's status
-- @tparam table p `{ kind, success_threshold, failure_threshold, service }`
-- (`service`: anything true when the probe watches a service)
-- @treturn table the new counting state
-- @treturn table|nil the transition when a result is published:
-- `{ from, to, changed = from ~= to, run = the run that reached the
-- threshold, hold = true when the worker now holds (its run is then reset
-- to 0), restart = true for a published liveness or startup failure }`
function M.step(w, status, p)
  local state, last, run, hold, from, to, changed, trun, thold, restart =
    core.step(w.state, w.last, w.run, w.hold, status, p.kind,
      p.success_threshold, p.failure_threshold, p.service ~= nil and
      p.service ~= false)
  local n = { state = state, last = last, run = run, hold = hold }
  if not from then return n, nil end
  return n, { from = from, to = to, changed = changed, run = trun,
    hold = thold or nil, restart = thold and restart or nil }
end

--- Publish `to` without counting (kubelet step 6: a readiness probe whose
-- container is not running publishes failure).
-- @treturn table the new counting state
-- @treturn table the transition `{ from, to, changed }`
function M.force(w, to)
  return { state = to, last = w.last, run = w.run, hold = w.hold },
    { from = w.state, to = to, changed = w.state ~= to }
end

--- The run so far toward its threshold, for logs: `"failure 2/3"`; the
-- run keeps counting past the threshold.  With the transition `t` of the
-- same step, the run that published (before a hold reset it).  nil before
-- the first verdict.
function M.streak(w, p, t)
  if not w.last then return nil end
  return string.format("%s %d/%d", w.last, t and t.run or w.run,
    w.last == "failure" and p.failure_threshold or p.success_threshold)
end

return M
