--- Tasks and their owners: the runtime under `sonde.spawn`, the probers'
-- waits, `sonde.sleep`, `sonde.after`, `sonde.cancel` and `sonde.run`.
--
-- A **task** is a coroutine that waits on operations of the C core: a
-- prober called inside it yields until the result is in.  Tasks are only
-- ever resumed from the main thread (the C core calls every callback
-- there, through its one protected caller), never from the thread that
-- happened to start the loop.
--
-- A **scope** owns what is created while its code runs: tasks, operations
-- started with a callback, and timers.  Every task, operation and timer
-- has exactly one scope; `scope:close()` ends all of it: operations and
-- timers are cancelled (their callbacks never run), tasks are closed with
-- `coroutine.close`, so their `<close>` variables run (an error there is
-- logged as `task_error`).  A load of a script owns a scope (see
-- sonde.config); so does each declared probe (its custom check and what
-- its hooks start).  Code outside any task runs in the *ambient* scope:
-- the one set by `within`, else the default scope of a library user.
--
-- A task that closes its own scope (e.g. `sonde.stop()` from a task) is
-- closed at its next wait.  Nothing new can be started in a closed scope:
-- that raises an error.
-- @module sonde.task
local core = require "sonde.core"
local log = require "sonde.log"
local validate = require "sonde.validate"

local M = {}

local fmt = string.format

local Scope = {}
Scope.__index = Scope

local info = setmetatable({}, { __mode = "k" })   -- co -> task record
local op_scope = {}      -- operation id -> scope (callback style and timers)
local ambient            -- scope of code running outside tasks
local running = false    -- inside M.run()
local bound_until        -- deadline (monotonic) of the bounded code running

--- Seconds a task's `<close>` handlers may run when it is closed.
M.close_bound = 0.5

--- Make a scope.
-- @tparam[opt] table opts `name` (for messages), `dry` (true: probers and
-- timers started in it do nothing, as for `sonde check`), `data` (what
-- owns the scope; sonde.config puts its load there)
-- @treturn table the scope
function M.scope(opts)
  opts = opts or {}
  return setmetatable({ name = opts.name or "scope", dry = opts.dry,
    data = opts.data, tasks = {}, ntasks = 0, ops = {}, nops = 0,
    holds = 0, idle_waiters = {}, closed = false }, Scope)
end

--- The scope of a library user's code (plain `lua5.4`).
M.default = M.scope { name = "default" }

--- Seconds a `__tostring` may run when `text_of` converts a value.
M.text_bound = 0.1

local UNPRINTABLE = "(error object without a printable form)"

--- The text of a value (an error object, usually), by `tostring`, safe to
-- call from the engine: a `__tostring` (or `__name`) metamethod runs in a
-- coroutine of its own bounded by `text_bound` seconds
-- (src/ldeadline.c), so a looping one is stopped.  A value that cannot be
-- printed (its `__tostring` fails, loops or returns no string) gives
-- `(error object without a printable form)`.
-- @treturn string
local function text_of(err)
  if type(err) == "string" then return err end
  if debug.getmetatable(err) == nil then return tostring(err) end
  local co = coroutine.create(tostring)
  core.set_deadline(co, M.text_bound)
  local ok, t = coroutine.resume(co, err)
  if coroutine.status(co) ~= "dead" then
    core.set_deadline(co, M.text_bound)
    coroutine.close(co)
    return UNPRINTABLE
  end
  if ok and type(t) == "string" then return t end
  return UNPRINTABLE
end
M.text_of = text_of

-- A message handler that adds a traceback once.
local function traceback(err)
  local t = text_of(err)
  if t:find("\nstack traceback:", 1, true) then return t end
  return debug.traceback(t, 2)
end
M.traceback = traceback

--- The running task's scope, else the ambient scope, else the default.
function M.current()
  local t = info[coroutine.running()]
  if t then return t.scope end
  return ambient or M.default
end

--- Call `fn(...)` with `scope` as the ambient scope (what it spawns or
-- starts belongs to that scope).  Errors propagate, with a traceback.
local function restore(prev, ok, ...)
  ambient = prev
  if not ok then error((...), 0) end
  return ...
end

function M.within(scope, fn, ...)
  local prev = ambient
  ambient = scope
  return restore(prev, xpcall(fn, traceback, ...))
end

--- True inside a task (a coroutine started by spawn).
function M.in_task()
  return info[coroutine.running()] ~= nil
end

local function ensure_open(scope, where)
  if scope.closed then
    validate.raise(fmt("%s: its owner (%s) was stopped or replaced", where,
      scope.name))
  end
end

---------------------------------------------------------------------------
-- Idle: what `sonde.run()` waits for inside a task
---------------------------------------------------------------------------

-- Nothing live but tasks waiting in run(), no operation, no hold.
local function idle(scope)
  return scope.ntasks == #scope.idle_waiters and scope.nops == 0
    and scope.holds == 0
end

local resume

local function wake_idle(scope)
  if scope.waking or #scope.idle_waiters == 0 or not idle(scope) then return end
  scope.waking = true
  core.timer(0, function()
    scope.waking = false
    if not idle(scope) or scope.closed then return end
    local list = scope.idle_waiters
    scope.idle_waiters = {}
    for _, co in ipairs(list) do
      local t = info[co]
      if t then t.idle = false resume(co) end
    end
  end)
end

--- Keep the scope from being idle (declared probes and services hold
-- their load's scope while they run).
function Scope:hold() self.holds = self.holds + 1 end

--- Undo one `hold`.
function Scope:release()
  self.holds = self.holds - 1
  wake_idle(self)
end

---------------------------------------------------------------------------
-- Tasks
---------------------------------------------------------------------------

local function detach(co)
  local t = info[co]
  if not t or t.detached then return end
  t.detached = true
  local s = t.scope
  if s.tasks[co] then
    s.tasks[co] = nil
    s.ntasks = s.ntasks - 1
  end
  wake_idle(s)
end

-- Close a suspended or dead task: cancel what it waits for, run its
-- `<close>` variables.  A running (or normal) task is marked and closed
-- at its next wait.  Returns true if it was live.
local function close_task(co)
  local t = info[co]
  local st = coroutine.status(co)
  if st == "running" or st == "normal" then
    if t then t.doomed = true end
    return true
  end
  if t then
    if t.wait and t.wait ~= 0 then core.cancel(t.wait) end
    t.wait = nil
    if t.idle then
      t.idle = false
      local w = t.scope.idle_waiters
      for i = #w, 1, -1 do if w[i] == co then table.remove(w, i) end end
    end
  end
  local was_live = st == "suspended"
  if t then t.closing = true end
  -- the closers get a bound of their own (the task's may be spent)
  core.set_deadline(co, M.close_bound)
  local prev = bound_until
  bound_until = core.now() + M.close_bound
  local ok, err = coroutine.close(co)
  bound_until = prev
  detach(co)
  if not ok and t and not t.failed then
    log.event("error", "task_error", { error = "while closing a task: "
      .. text_of(err) })
  end
  return was_live
end

-- Resume task co (from the main thread, inside a callback).  An error in
-- the task closes it and is raised (the C core's error policy takes it).
resume = function(co, ...)
  if coroutine.status(co) ~= "suspended" then return end
  local t = info[co]
  local prev, prev_bound = ambient, bound_until
  local started, limit = core.now(), t.bound_until
  if t.running then
    -- a running-time bound: what is left of it bounds this slice (and
    -- what the task spawns in it), unless the task's deadline comes first
    limit = math.min(limit or math.huge, started + t.running)
    t.running_hit = limit == started + t.running
    core.set_deadline(co, limit - started)
  end
  ambient, bound_until = t.scope, limit
  local ok, err = coroutine.resume(co, ...)
  ambient, bound_until = prev, prev_bound
  if t.running then t.running = t.running - (core.now() - started) end
  if not ok then
    local text = text_of(err)
    local msg = text:find("\nstack traceback:", 1, true) and text
      or debug.traceback(co, text)
    t.failed = true
    t.wait = nil
    close_task(co)
    if t.on_abort then return t.on_abort("error", msg) end
    error(msg, 0)
  end
  if coroutine.status(co) == "dead" then
    detach(co)
    return
  end
  if core.deadline_hit(co) then            -- stopped by its time bound
    t.deadline_hit = true
    close_task(co)
    if t.on_abort then
      return t.on_abort(t.running and t.running_hit and "running"
        or "deadline")
    end
    error("sonde: a task ran past its time limit and was stopped", 0)
  end
  if t.doomed then                         -- its owner closed it meanwhile
    close_task(co)
    return
  end
  if t.wait == nil and not t.idle then     -- a bare coroutine.yield
    close_task(co)
    if t.on_abort then return t.on_abort("yield") end
    error("sonde: a task yielded by itself; inside a task use sonde.sleep "
      .. "or the probers, not coroutine.yield", 0)
  end
end

local function new_task(scope, fn, where)
  ensure_open(scope, where)
  local co = coroutine.create(fn)
  info[co] = { scope = scope }
  scope.tasks[co] = true
  scope.ntasks = scope.ntasks + 1
  return co
end

--- Start `fn(...)` as a task of the current scope, at once: it runs
-- until it first waits.
-- @return the task's coroutine
-- @raise the task's error if it fails before its first wait
function M.spawn(fn, ...)
  local co = new_task(M.current(), fn, "sonde.spawn")
  local until_ = bound_until
  if not until_ then
    resume(co, ...)
    return co
  end
  -- spawned by bounded code (a script's top level while it loads, a hook,
  -- a check): the same deadline holds until the new task first waits
  local t = info[co]
  t.bound_until = until_
  core.set_deadline(co, math.max(0, until_ - core.now()))
  local ok, err = pcall(resume, co, ...)
  if not ok then
    if t.deadline_hit then
      validate.raise("sonde.spawn: the new task ran without waiting past the "
        .. "time limit of the code that started it (a script's top level "
        .. "while it loads, a hook, a check), and was stopped")
    end
    error(err, 0)
  end
  t.bound_until = nil
  if coroutine.status(co) == "suspended" then core.clear_deadline(co) end
  return co
end

--- Resume the plain coroutine `co` (a hook, not a task) under its
-- deadline `until_` (monotonic seconds; set with core.set_deadline): tasks
-- it spawns run under the same deadline until they first wait.
-- @return what coroutine.resume returns
function M.resume_until(co, until_, ...)
  local prev = bound_until
  bound_until = until_
  local res = table.pack(coroutine.resume(co, ...))
  bound_until = prev
  return table.unpack(res, 1, res.n)
end

--- Start `fn(...)` as a task of `scope`, with time bounds: once `bound`
-- seconds have passed (running or waiting) it is stopped where it runs
-- (even a pcall cannot catch that: src/ldeadline.c) and closed; with
-- `running` (seconds), it is stopped too once it has *run* that long in
-- all (the time of its slices between waits, which hold the loop; its
-- waits do not count).  `on_abort(why, msg)` is called with why
-- `"deadline"`, `"running"` (the running bound), `"yield"` (a bare
-- coroutine.yield) or `"error"` (msg: the error with traceback) instead
-- of raising.  The bounds end when the task finishes or `unbound(co)`.
-- @tparam number|table bound seconds, or `{ seconds, running = seconds }`
-- @return the coroutine
function M.bounded(scope, fn, bound, on_abort, ...)
  local running
  if type(bound) == "table" then bound, running = bound[1], bound.running end
  local co = new_task(scope, fn, "sonde.task")
  local t = info[co]
  t.on_abort = on_abort
  t.bound_until = core.now() + bound
  t.running = running
  core.set_deadline(co, bound)
  resume(co, ...)
  return co
end

--- Lift the bounds of a task made by `bounded`; from now on its errors
-- are raised as any task's.
function M.unbound(co)
  local t = info[co]
  if t then t.on_abort, t.bound_until, t.running = nil, nil, nil end
  core.clear_deadline(co)
end

--- Close a task: the operation it waits for is cancelled and its
-- `<close>` variables run.  A task closing itself (or the task that
-- started the running one) is closed at its next wait.
-- @treturn boolean true if it was still live
function M.close(co)
  if type(co) ~= "thread" then
    validate.raise(fmt("sonde.close: a task expected, got %s", type(co)))
  end
  if not info[co] then return false end
  return close_task(co)
end

--- Wait in the running task for an operation started by `start(cb)`
-- (which returns its id); returns what the operation passes to cb.
-- @raise outside a task, or where the task cannot yield
function M.await(where, start)
  local co = coroutine.running()
  local t = info[co]
  if not t then
    validate.raise(fmt("%s: not in a sonde task: call it inside "
      .. "sonde.spawn(fn), or pass a callback", where))
  end
  if t.closing then
    validate.raise(fmt("%s: cannot wait while the task is being closed "
      .. "(in a <close> handler)", where))
  end
  if not coroutine.isyieldable() then
    validate.raise(fmt("%s: cannot wait here (a C call boundary, e.g. a "
      .. "metamethod or table.sort comparator, is in the way)", where))
  end
  if t.doomed then coroutine.yield() end   -- closed there, never resumed
  ensure_open(t.scope, where)
  if t.scope.dry then                       -- sonde check: stop here
    t.wait = 0
    return coroutine.yield()
  end
  local id
  id = start(function(result)
    if t.wait ~= id then return end
    t.wait = nil
    resume(co, result)
  end)
  t.wait = id
  return coroutine.yield()
end

--- Start an operation with a callback in the current scope: `start(k)`
-- starts it with an internal callback `k` and returns its id; `cb(result)`
-- is called in that scope when it completes.  In a dry scope nothing
-- starts and the id is 0.
-- @treturn integer the operation id
function M.start(where, start, cb)
  local scope = M.current()
  ensure_open(scope, where)
  if scope.dry then return 0 end
  local id
  id = start(function(result)
    op_scope[id] = nil
    scope.ops[id] = nil
    scope.nops = scope.nops - 1
    M.within(scope, cb, result)
    wake_idle(scope)
  end)
  op_scope[id] = scope
  scope.ops[id] = true
  scope.nops = scope.nops + 1
  return id
end

--- Wait `seconds` in the running task.
function M.sleep(seconds)
  M.await("sonde.sleep", function(k) return core.timer(seconds, k) end)
end

--- Call `cb()` after `seconds` (a timer of the current scope).
-- @treturn integer the timer's id (for `cancel`)
function M.after(seconds, cb)
  return M.start("sonde.after", function(k) return core.timer(seconds, k) end,
    function() cb() end)
end

--- Cancel an operation or timer started with a callback (`start`,
-- `after`): the callback is never called (an exec operation's process
-- group is killed and reaped).  Other ids (sonde's own operations: probe
-- runs, services, waits of tasks) are left alone.
-- @treturn boolean true if it was still pending
function M.cancel(id)
  local scope = op_scope[id]
  if not scope then return false end
  op_scope[id] = nil
  scope.ops[id] = nil
  scope.nops = scope.nops - 1
  wake_idle(scope)
  return core.cancel(id)
end

---------------------------------------------------------------------------
-- Closing a scope, and the loop
---------------------------------------------------------------------------

--- End everything the scope owns (see the module doc), except that
-- tasks waiting in `wait_idle` (`sonde.run()`) are resumed, from the loop:
-- their run() returns, as it would in a plain script once nothing is
-- pending (nothing new can start in the closed scope).  Idempotent.
function Scope:close()
  if self.closed then return end
  self.closed = true
  for id in pairs(self.ops) do
    op_scope[id] = nil
    core.cancel(id)
  end
  self.ops, self.nops = {}, 0
  local waiters = self.idle_waiters
  self.idle_waiters = {}
  local list = {}
  for co in pairs(self.tasks) do
    if not info[co].idle then list[#list + 1] = co end
  end
  for _, co in ipairs(list) do close_task(co) end
  if #waiters > 0 then
    core.timer(0, function()
      for _, co in ipairs(waiters) do
        local t = info[co]
        if t and t.idle then t.idle = false resume(co) end
      end
    end)
  end
end

--- Wait in the running task until its scope is idle: no other task, no
-- operation or timer with a callback, and nothing holding it (declared
-- probes and services that run).  What `sonde.run()` means inside a task.
function M.wait_idle()
  local co = coroutine.running()
  local t = info[co]
  if not t or not coroutine.isyieldable() then
    validate.raise("sonde.run: the loop is already running")
  end
  local s = t.scope
  t.idle = true
  s.idle_waiters[#s.idle_waiters + 1] = co
  wake_idle(s)
  coroutine.yield()
  return true
end

--- True while `run` runs the loop.
function M.running() return running end

--- Set by the host: it runs the loop itself once the script is loaded, so
-- `sonde.run()` in the script's tasks waits (see `wait_idle`) instead.
M.hosted = false

--- Run the loop until no operation is pending.
-- @raise the error of a callback or task, when no error handler is set
-- (see core.on_error); the loop stops there and can be run again
function M.run()
  if running then validate.raise("sonde.run: the loop is already running") end
  running = true
  local ok, err = pcall(core.run)
  running = false
  if not ok then error(err, 0) end
  return true
end

return M
