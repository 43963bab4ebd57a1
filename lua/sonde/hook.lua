--- Protected, time-bounded calls of user hooks (on_result, on_change,
-- function actions).
--
-- A hook runs in a coroutine of its own with a count hook: when it has run
-- for longer than its bound (default 0.5 s of wall time, checked every
-- 1000 VM instructions) it is stopped (even a pcall in the hook cannot
-- catch that) and reported as the error `hook exceeded its time limit of
-- N s`.  The loop stands still while a hook runs, so a
-- probe whose hook was interrupted skips that hook for the next
-- `quarantine` seconds (10; see sonde.probe): other probes keep their
-- schedule.  An error (or the interruption) is returned, with a
-- traceback, never raised.  Hooks cannot wait: a hook that calls a prober
-- or sonde.sleep gets an error; start a task with sonde.spawn from the hook
-- for work that waits (it runs under the hook's bound until it first
-- waits, so a busy loop there is stopped too).
-- @module sonde.hook
local core = require "sonde.core"
local task = require "sonde.task"

local M = {}

M.default_bound = 0.5   -- seconds
M.quarantine = 10       -- seconds a hook that hit its bound is skipped

--- Call fn(...) protected and bounded.
-- @return true, results... | false, error message (with traceback),
-- timed_out (true when the bound stopped it)
function M.call(fn, bound, ...)
  bound = bound or M.default_bound
  local co = coroutine.create(fn)
  -- the bound yields the coroutine from a count hook: a pcall inside the
  -- hook cannot catch it (see src/ldeadline.c)
  core.set_deadline(co, bound)
  local res = table.pack(task.resume_until(co, core.now() + bound, ...))
  if core.deadline_hit(co) then
    coroutine.close(co)
    return false, string.format("hook exceeded its time limit of %g s",
      bound), true
  end
  if not res[1] then
    local ok, text = pcall(tostring, res[2])
    return false, debug.traceback(co, ok and text or "(error object "
      .. "without a printable form)")
  end
  if coroutine.status(co) ~= "dead" then
    -- it yielded: not allowed (see above); it is abandoned
    coroutine.close(co)
    return false, "hook yielded; hooks cannot wait (use sonde.spawn inside " ..
      "the hook for work that waits)"
  end
  return table.unpack(res, 1, res.n)
end

return M
