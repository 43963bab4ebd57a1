--- Protected, time-bounded calls of user hooks (on_result, on_change,
-- function actions, webhook body functions).
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
--
-- What leaves a hook is converted *inside* its bound, so that no code of
-- the user (a `__tostring`, `__index`, `__pairs`, `__eq`, `__concat`...
-- metamethod) runs later, unbounded, when the engine reads it: an error
-- value becomes its text (with a traceback) while the bound still holds;
-- results go through `convert` (by default `plain`: copies with raw
-- access only).  A conversion that runs past the bound is the hook running
-- past it.  <close> handlers of a hook that was stopped get a bound of
-- their own (sonde.task `close_bound`).
-- @module sonde.hook
local core = require "sonde.core"
local task = require "sonde.task"

local M = {}

M.default_bound = 0.5   -- seconds
M.quarantine = 10       -- seconds a hook that hit its bound is skipped

local UNPRINTABLE = "(error object without a printable form)"
M.UNPRINTABLE = UNPRINTABLE

--- The text of `v`, by `tostring` (its `__tostring` runs *here*: call it
-- inside a bound); a `tostring` that fails gives
-- `(error object without a printable form)`.
-- @treturn string
function M.text(v)
  if type(v) == "string" then return v end
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return UNPRINTABLE
end
local text = M.text

local MAX_DEPTH = 16

local function copy(v, depth, seen)
  local t = type(v)
  if t == "table" then
    if seen[v] then return seen[v] end
    if depth > MAX_DEPTH then return "(table nested too deep)" end
    local c = {}
    seen[v] = c
    for k, x in next, v do                   -- raw: no __pairs, no __index
      local kt = type(k)
      if kt == "string" or kt == "number" or kt == "boolean" then
        c[k] = copy(x, depth + 1, seen)
      end
    end
    return c
  elseif t == "userdata" then
    return text(v)
  end
  return v            -- nil, boolean, number, string, function, thread
end

--- A copy of `v` that is plain data: tables are copied with raw access
-- (`next`, no metamethod runs; no metatable on the copy; keys that are
-- not strings, numbers or booleans dropped; shared and cyclic parts kept
-- shared; at most 16 levels deep), userdata become their text; other
-- values are themselves.  Call it inside a bound (a userdata's
-- `__tostring` runs here).
function M.plain(v) return copy(v, 1, {}) end

--- `plain` of each of its arguments (the default conversion of a hook's
-- results).
function M.plain_all(...)
  local n = select("#", ...)
  local out = { ... }
  for i = 1, n do out[i] = copy(out[i], 1, {}) end
  return table.unpack(out, 1, n)
end

-- The body of a hook's coroutine: fn(...), then its results through
-- `convert`, or its error as text with a traceback, all under the bound.
local function body(convert, fn, ...)
  local tb
  local r = table.pack(xpcall(fn, function(e)
    tb = debug.traceback("", 2)
    return e
  end, ...))
  if not r[1] then
    local msg = text(r[2])
    if tb and not msg:find("\nstack traceback:", 1, true) then
      msg = msg .. tb
    end
    return false, msg
  end
  return true, convert(table.unpack(r, 2, r.n))
end

-- Close the coroutine of a hook that was stopped: its <close> handlers
-- get a bound of their own.
local function close(co)
  core.set_deadline(co, task.close_bound)
  coroutine.close(co)
end

--- Call `fn(...)` protected and bounded; its results go through
-- `convert(...)` inside the bound (what `convert` returns is what the
-- call returns after `true`).
-- @return true, converted results... | false, error message (a string,
-- with traceback), timed_out (true when the bound stopped it)
function M.call_with(convert, fn, bound, ...)
  bound = bound or M.default_bound
  local co = coroutine.create(body)
  -- the bound yields the coroutine from a count hook: a pcall inside the
  -- hook cannot catch it (see src/ldeadline.c)
  core.set_deadline(co, bound)
  local res = table.pack(task.resume_until(co, core.now() + bound, convert,
    fn, ...))
  if core.deadline_hit(co) then
    close(co)
    return false, string.format("hook exceeded its time limit of %g s",
      bound), true
  end
  if not res[1] then            -- `convert` failed: a string, or not shown
    return false, "the hook's results could not be read: " ..
      (type(res[2]) == "string" and res[2] or UNPRINTABLE)
  end
  if coroutine.status(co) ~= "dead" then
    -- it yielded: not allowed (see above); it is abandoned
    close(co)
    return false, "hook yielded; hooks cannot wait (use sonde.spawn inside " ..
      "the hook for work that waits)"
  end
  if not res[2] then return false, res[3] end
  return true, table.unpack(res, 3, res.n)
end

--- Call `fn(...)` protected and bounded, its results made `plain` inside
-- the bound.
-- @return true, results... | false, error message (with traceback),
-- timed_out (true when the bound stopped it)
function M.call(fn, bound, ...)
  return M.call_with(M.plain_all, fn, bound, ...)
end

return M
