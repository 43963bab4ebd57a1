--- Protected, time-bounded calls of user hooks (on_result, on_change,
-- function actions).
--
-- A hook runs in a coroutine of its own with a count hook: when it has run
-- for longer than its bound (default 0.5 s of wall time, checked every
-- 1000 VM instructions) it is interrupted with the error `hook exceeded
-- its time limit of N s`.  The loop stands still while a hook runs, so a
-- probe whose hook was interrupted skips that hook for the next
-- `quarantine` seconds (10; see sonde.probe): other probes keep their
-- schedule.  An error (or the interruption) is returned, with a
-- traceback, never raised.  Hooks cannot wait: a hook that calls a prober
-- or sonde.sleep gets an error; start a task with sonde.spawn from the hook
-- for work that waits.
-- @module sonde.hook
local core = require "sonde.core"

local M = {}

M.default_bound = 0.5   -- seconds
M.quarantine = 10       -- seconds a hook that hit its bound is skipped

--- Call fn(...) protected and bounded.
-- @return true, results... | false, error message (with traceback),
-- timed_out (true when the bound interrupted it)
function M.call(fn, bound, ...)
  bound = bound or M.default_bound
  local co = coroutine.create(fn)
  local deadline = core.now() + bound
  local timed_out = false
  debug.sethook(co, function()
    if core.now() > deadline then
      timed_out = true
      error(string.format("hook exceeded its time limit of %g s", bound), 2)
    end
  end, "", 1000)
  local res = table.pack(coroutine.resume(co, ...))
  if not res[1] then
    return false, debug.traceback(co, tostring(res[2])), timed_out
  end
  if coroutine.status(co) ~= "dead" then
    -- it yielded: not allowed (see above); it is abandoned
    return false, "hook yielded; hooks cannot wait (use sonde.spawn inside " ..
      "the hook for work that waits)"
  end
  return table.unpack(res, 1, res.n)
end

return M
