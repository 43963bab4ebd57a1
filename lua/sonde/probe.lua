--- Declared probes: kubelet-semantics probe workers.
--
--   sonde.probe{
--     name = "web-live",                 -- required, unique in its script
--     kind = "liveness",                 -- liveness | readiness | startup
--     -- exactly one handler:
--     exec = {...} | http_get = {...} | tcp_socket = {...} | grpc = {...}
--       | icmp = {...} | dns = {...} | check = fn,
--     check_cpu = 0.25,                  -- seconds a check may run per run
--     initial_delay = 0, period = 10, timeout = 1,  -- seconds
--     success_threshold = 1, failure_threshold = 3,
--     env = {...}, ports = {...},        -- for the handler
--     service = svc,                     -- the supervised service watched
--     on_result = fn, on_change = fn,    -- hooks
--     on_failure = action(s), on_recovery = action(s),
--     action_interval = 30,              -- seconds, see sonde.action
--     termination_grace = nil,           -- seconds: grace of the restart
--                                        -- this probe triggers (default:
--                                        -- the service's grace)
--     labels = { team = "web" },         -- on its /metrics series
--     metrics = { histogram = true },    -- its /metrics series: false
--                                        -- leaves out its run-duration
--                                        -- histogram (14 of its series)
--   }
--
-- Defaults are the kubelet's (reference section 9): initial_delay 0,
-- period 10 (fractional down to 0.1), timeout 1, success_threshold 1,
-- failure_threshold 3.  kind defaults to liveness for a probe with a
-- service, readiness otherwise.  success_threshold must be 1 for liveness
-- and startup.  The handler's own `timeout` is the probe's.
--
-- States (kubelet seeds): readiness starts `failure` (not ready), liveness
-- `success`, startup `unknown`.  Each result counts toward a run of equal
-- results: `success_threshold` successes in a row publish success,
-- `failure_threshold` failures in a row publish failure; warning counts as
-- success; unknown counts toward neither (see sonde.worker).
--
-- With a service: a startup probe gates the service's liveness and
-- readiness probes (they skip their runs until startup has succeeded, again
-- after each restart); when it succeeds they run at once, then at their
-- period from there (the kubelet triggers readiness the same way).  A
-- published liveness or startup failure restarts the service and the probe
-- holds (runs nothing) until the new instance runs, when state and counters
-- reset to the seed; startup holds after its success too.  A readiness
-- probe publishes failure as soon as its service's instance exits
-- (stopped, crashed, waiting in back-off, or never restarted): kubelet
-- step 6, "container not running"; it is ready again only through its own
-- successes on the next instance.  Every new instance resets all its
-- probes to their seeds.  Without a service nothing holds: a liveness probe
-- keeps probing and its actions do the remediation.
--
-- Scheduling (the worker's; sonde.ticker shows the arithmetic): the first run is `initial_delay` after the
-- service (or the probe) started, then runs follow at a fixed rate without
-- drift.  A run still going at the next tick makes that tick skip
-- (`probe_skipped`, why overrun): runs are never stacked.  Stopping a probe
-- cancels its in-flight run; a custom check is closed (`coroutine.close`:
-- its `<close>` variables run), when it times out too.
--
-- A probe owns a scope (sonde.task): its custom check (and what the check
-- starts) and its actions' commands and requests belong to it, and end
-- when the probe is stopped or replaced by a reload.  What its hooks and
-- function actions start belongs to the script's load.  A reload that
-- keeps the probe (same spec) keeps its state, counters, schedule and
-- in-flight run, and runs the new script's hooks, check and actions from
-- then on.
--
-- Bounded user code: hooks run under sonde.hook's bound (0.5 s), and one
-- that hits it is skipped for `hook.quarantine` seconds (10): each call
-- meanwhile is logged (`hook_error`) and makes the result `unknown`
-- (hook_error).  A custom check is bounded twice: by `timeout` (running or
-- waiting) and by `check_cpu` (default 0.25 s): the time it spends
-- *running* in one run (its slices between waits, while the loop stands
-- still; its waits on probers and sonde.sleep do not count).  A check that
-- runs past `check_cpu` is stopped and closed: that run is `failure`
-- (reason `timeout`, the output names check_cpu; logged as `hook_error`
-- hook=check), and the check is quarantined like a hook: for the next
-- `hook.quarantine` seconds its runs do not start, each is `unknown`
-- (hook_error) and logged, so a busy check does not freeze the loop
-- period after period, and moves no counter while it does not run.
-- What leaves a hook or a check (results, reasons, outputs, error values)
-- is converted inside its bound with raw access only (see sonde.hook),
-- and hooks and actions get a copy of the result, so no user metamethod
-- runs later in the engine.
--
-- Every result of a declared probe carries `probe` (name), `kind` and
-- `time` (wall-clock start of the run, seconds since the epoch).
--
-- The worker (schedule, runs of exec / http_get / tcp_socket / grpc /
-- icmp / dns, threshold step, counters) is the C core's (`core.worker`,
-- src/worker.c): a run whose result changes nothing and is not logged
-- never enters Lua.  Lua
-- is called for what the script asked for (hooks, custom checks,
-- actions), for published transitions that change something, and for
-- results that are logged.  Fields read from the worker: `p.state`,
-- `p.runs`, `p.last_result` (built when first read after a run), and
-- `p.stats` (`{ counts, buckets, sum, n, runs, skipped, missed }`).
-- @module sonde.probe
local core = require "sonde.core"
local validate = require "sonde.validate"
local log = require "sonde.log"
local task = require "sonde.task"
local hook = require "sonde.hook"
local action = require "sonde.action"
local probers = require "sonde.probers"
local worker = require "sonde.worker"
local service = require "sonde.service"
local metrics = require "sonde.metrics"

local M = {}
local Probe = {}
M.Probe = Probe

-- Fields read from the C worker when asked for (`runs`: runs ended).
local PROPS = {
  state = function(p) return p.worker:state() end,
  runs = function(p) return p.worker:runs() end,
  stats = function(p) return p.worker:stats() end,
  last_result = function(p) return p:last() end,
  -- made when first needed: most probes never start a task
  scope = function(p)
    local sc = task.scope { name = string.format("probe %q", p.name),
      data = p.owner }
    rawset(p, "scope", sc)
    return sc
  end,
}
Probe.__index = function(p, k)
  local f = PROPS[k]
  if f then return f(p) end
  return Probe[k]
end

-- The C worker's handler for each built-in handler (nil: a custom check).
local C_HANDLER = { exec = "exec", http_get = "http", tcp_socket = "tcp",
                    grpc = "grpc", icmp = "icmp", dns = "dns" }

-- Probes whose worker is told the log level (weak).
local live = setmetatable({}, { __mode = "k" })
log.on_level(function()
  for p in pairs(live) do p:notify_level() end
end)

local fmt = string.format
local fail = validate.fail
local STATUSES = probers.STATUSES
local HANDLERS = { "exec", "http_get", "tcp_socket", "grpc", "icmp", "dns",
                   "check" }

local function service_check(ctx, v, field)
  if not service.is(v) then
    fail(ctx, field, "must be a sonde.service, got %s", type(v))
  end
  return v
end

local function actions(ctx, v, field) return action.list(ctx, v, field) end

M.schema = validate.schema {
  { "name", "string", required = true, nonempty = true },
  { "kind", "enum", values = { "liveness", "readiness", "startup" } },
  { "exec", "table" },
  { "http_get", "table" },
  { "tcp_socket", "table" },
  { "grpc", "table" },
  { "icmp", "table" },
  { "dns", "table" },        -- sonde.dns's fields (blackbox_exporter's dns)
  { "check", "function" },
  { "check_cpu", "seconds", default = 0.25 },
  { "initial_delay", "seconds", default = 0, allow_zero = true },
  { "period", "seconds", default = 10, min = 0.1 },
  { "timeout", "seconds", default = 1 },
  { "success_threshold", "count", default = 1, min = 1 },
  { "failure_threshold", "count", default = 3, min = 1 },
  { "env", "env" },
  { "ports", "ports" },
  { "service", service_check },
  { "on_result", "function" },
  { "on_change", "function" },
  { "on_failure", actions, default = {} },
  { "on_recovery", actions, default = {} },
  { "action_interval", "seconds", default = 30, allow_zero = true },
  { "termination_grace", "seconds" },
  -- labels of its series on /metrics (sonde.metrics.check_labels)
  { "labels", function(ctx, v, field)
      return metrics.check_labels(ctx, v, field) end },
  -- which of its series /metrics writes (sonde.metrics.check_options)
  { "metrics", function(ctx, v, field)
      return metrics.check_options(ctx, v, field) end },
}

-- The handler's own spec, with the probe's timeout, env and ports.
local function handler_opts(ctx, s, spec, handler)
  local h = validate.checks.table(ctx, spec[handler], handler)
  if h.timeout ~= nil then
    fail(ctx, handler .. ".timeout", "is set on the probe (timeout)")
  end
  local hs = {}
  for k, v in pairs(h) do hs[k] = v end
  hs.timeout = s.timeout
  if handler == "exec" and hs.env == nil and s.env and next(s.env) then
    hs.env = s.env
  end
  -- (a grpc port is a number only: kubelet)
  if (handler == "http_get" or handler == "tcp_socket") and hs.ports == nil
      and s.ports and hs.url == nil then
    hs.ports = s.ports
  end
  return probers.handlers[handler].prepare(
    { where = ctx.where, prefix = handler .. "." }, hs)
end

--- Validate a probe spec and make the (not yet started) probe.
-- @tparam table spec see the module doc
-- @tparam table owner the load that declares it (sonde.config)
-- @raise `FILE:LINE: probe "NAME": FIELD: reason`, at the user's line
function M.new(spec, owner)
  local ctx = { where = "sonde.probe" }
  validate.checks.table(ctx, spec, "spec")
  if type(spec.name) ~= "string" or spec.name == "" then
    fail(ctx, "name", "must be a non-empty string")
  end
  ctx.where = fmt("probe %q", spec.name)
  local s = M.schema:apply(ctx, spec)
  local kind = s.kind or (s.service and "liveness" or "readiness")
  local handler
  for _, h in ipairs(HANDLERS) do
    if spec[h] ~= nil then
      if handler then
        fail(ctx, h, "may not specify more than 1 handler type (%s given "
          .. "too)", handler)
      end
      handler = h
    end
  end
  if not handler then
    fail(ctx, nil, "must specify a handler type (exec, http_get, tcp_socket, "
      .. "grpc, icmp, dns or check)")
  end
  if handler ~= "check" and spec.check_cpu ~= nil then
    fail(ctx, "check_cpu", "is only for a custom check (check = function)")
  end
  if kind == "readiness" and s.termination_grace then
    fail(ctx, "termination_grace", "must not be set for readiness probes "
      .. "(they never restart anything)")
  end
  if kind ~= "readiness" and s.success_threshold ~= 1 then
    fail(ctx, "success_threshold", "must be 1 for %s probes, got %d", kind,
      s.success_threshold)
  end
  local self = setmetatable({
    name = s.name, kind = kind, spec = spec, handler = handler,
    service = s.service, owner = owner,
    initial_delay = s.initial_delay, period = s.period, timeout = s.timeout,
    check_cpu = handler == "check" and s.check_cpu or nil,
    success_threshold = s.success_threshold,
    failure_threshold = s.failure_threshold,
    action_interval = s.action_interval,
    termination_grace = s.termination_grace,
    on_failure = s.on_failure, on_recovery = s.on_recovery,
    opts = handler ~= "check" and handler_opts(ctx, s, spec, handler) or nil,
    labels = s.labels,                  -- nil when not given
    metrics_opts = s.metrics,           -- nil when not given
  }, Probe)
  self.worker = core.worker {
    kind = kind, period = self.period, service = self.service ~= nil,
    success_threshold = self.success_threshold,
    failure_threshold = self.failure_threshold,
    handler = C_HANDLER[handler], opts = self.opts,
    on_event = Probe.on_event, ctx = self,
  }
  self.worker:set_filter(self:filtered())
  if handler == "check" then
    self.on_done = function(r) self:handle(r) end
  end
  metrics.prepare(self)            -- its series' labels, made once
  return self
end

-- Whether the worker hands each result to Lua before counting it: for an
-- on_result hook, and for expectations judged in Lua (http_get's json:
-- the handler's finish judges them).  A probe without either is counted
-- in C.
function Probe:filtered()
  return self.spec.on_result ~= nil
    or (self.opts ~= nil and self.opts.expect_json ~= nil)
    -- a nagios plugin's performance data: its own series (sonde.metrics)
    or (self.opts ~= nil and self.opts.nagios == true)
end

--- Back to the seed state (the counting state; counters stay).
function Probe:reset()
  self.worker:reset()
  if self.kind == "startup" and self.service then
    self.service:update_gates()
  end
end

--- The run of equal results so far (for /status).
function Probe:streak_count()
  local _, _, run = self.worker:count()
  return run
end

-- The counting state as sonde.worker's table (for logs).
function Probe:count()
  local state, last, run, hold = self.worker:count()
  return { state = state, last = last, run = run, hold = hold }
end

--- The last result (nil before the first): a handler's is built from the
-- worker's when first read after its run.
function Probe:last()
  if self.handler == "check" then return rawget(self, "last_r") end
  local seq = self.worker:seq()
  if rawget(self, "last_seq") ~= seq then
    local r, wall = self.worker:last()
    if r then
      r = probers.handlers[self.handler].finish(self.opts, r)
      r.probe, r.kind, r.time = self.name, self.kind, wall
    end
    self.last_r, self.last_seq = r, seq
  end
  return rawget(self, "last_r")
end

-- The worker's log notifications follow the log level: successes are
-- logged at debug, the rest at warn.
function Probe:notify_level()
  self.worker:set_notify(log.enabled("debug"), log.enabled("warn"))
end

-- What the C worker tells (see core.worker).
function Probe:on_event(ev, t)
  if ev == "committed" then
    self:after(self:last(), t)
    -- the worker keeps the result: built again when read (a table per
    -- probe kept between runs would be most of a probe's memory)
    self.last_r, self.last_seq = nil, nil
  elseif ev == "result" then
    self:handle(self:last())
  elseif ev == "skipped" then
    log.event("warn", "probe_skipped", { probe = self.name, why = "overrun" })
  elseif ev == "tick" then
    return self:tick()
  end
end

--- Whether the service's startup probe keeps this one from running.
function Probe:update_gate()
  self.worker:set_gated(self:gated())
end

--- Start scheduling: the first run `initial_delay` (+ `spread`) from now,
-- or from the start of the service's instance.
function Probe:start(spread)
  self.stopped = false
  live[self] = true
  self:notify_level()
  if self.service then
    self.service:attach(self)
    if self.service.state ~= "running" then return end
  end
  self.worker:start(core.now() + self.initial_delay + (spread or 0))
end

function Probe:gated()
  if not self.service or self.kind == "startup" then return false end
  local sp = self.service:startup_probe()
  return sp ~= nil and sp.state ~= "success"
end

-- A custom check's tick (the worker has checked hold and gate): true
-- when a run starts.
function Probe:tick()
  if self.inflight then
    log.event("warn", "probe_skipped", { probe = self.name, why = "overrun" })
    return false
  end
  self:run_once(self.on_done)
  return true
end

--- Run now (and keep the period from now on): a startup probe's success
-- triggers its service's liveness and readiness probes.
function Probe:trigger()
  if self.worker:active() then self.worker:start(core.now()) end
end

local text, plain = hook.text, hook.plain

-- What a custom check returned, as a result table.  Runs inside the
-- check's bound: only raw access, and the values kept are plain copies
-- (sonde.hook), so nothing of the user's runs later in the engine.
local function verdict(ok, a, b)
  if not ok then
    local msg = text(a)
    return { status = "failure", reason = "check_error",
      output = msg:match("^[^\n]*") or "", error = msg }
  end
  local st = type(a) == "table" and rawget(a, "status")
  if type(st) == "string" and STATUSES[st] then
    local r = plain(a)
    local reason, output = rawget(a, "reason"), rawget(a, "output")
    r.reason = type(reason) == "string" and reason
      or (st == "success" and "ok" or "check")
    r.output = output ~= nil and text(output) or ""
    r.duration = nil
    return r
  elseif type(a) == "string" and STATUSES[a] then
    return { status = a, reason = a == "success" and "ok" or "check",
      output = b ~= nil and text(b) or "" }
  end
  return { status = "failure", reason = "check_error", output =
    "check returned " .. text(a) .. ": expected a status (success, "
    .. "warning, failure, unknown) or a result table" }
end

-- The message of a hook (or the check) skipped by its quarantine, or nil.
function Probe:quarantine_left(name)
  local q = self.quarantined and self.quarantined[name]
  local now = core.now()
  if not q or now >= q then return nil end
  return fmt("%s skipped for %.1f s more after exceeding its %stime limit",
    name == "check" and "check" or "hook " .. name, q - now,
    name == "check" and "running " or "")
end

function Probe:quarantine(name)
  self.quarantined = self.quarantined or {}
  self.quarantined[name] = core.now() + hook.quarantine
end

-- A custom check's deadline that fires more than STALL_LATE seconds late
-- gives what completed during the stall STALL_GRACE seconds to come in.
local STALL_LATE, STALL_GRACE = 0.25, 0.1

--- Run the handler once; `done(result)` gets the result (with probe, kind
-- and time set).  Used by the schedule and by `sonde once`.
function Probe:run_once(done)
  local started, wall = core.now(), core.wall_time()
  local token = {}
  self.inflight = token
  local function finish(r)
    if self.inflight ~= token then return end   -- cancelled or timed out
    self.inflight, self.inflight_id, self.inflight_task = nil, nil, nil
    r.probe, r.kind, r.time = self.name, self.kind, wall
    r.duration = r.duration or (core.now() - started)
    if self.handler == "check" then self.worker:finished() end
    done(r)
  end
  if self.handler ~= "check" then
    self.inflight_id = probers.handlers[self.handler].start(self.opts, finish)
    return
  end
  -- A custom check: a task of the probe's scope, bounded by the timeout
  -- both while it waits (this timer) and while it runs (the task's bound:
  -- a check stuck in a loop is stopped, src/ldeadline.c), and by check_cpu
  -- while it runs.  Either way it is closed, so its <close> variables run.
  local skipped = self:quarantine_left("check")
  if skipped then
    log.event("warn", "hook_error", { probe = self.name, hook = "check",
      error = skipped })
    finish { status = "unknown", reason = "hook_error", output = skipped }
    return
  end
  local timeout, cpu = self.timeout, self.check_cpu
  local deadline
  local function expire()
    local co = self.inflight_task
    finish { status = "failure", reason = "timeout",
      output = fmt("check timed out after %gs", timeout) }
    if co then task.close(co) end
  end
  deadline = core.timer(timeout, function()
    -- fired late: the loop was stalled (SIGSTOP/SIGCONT, a paused VM, a
    -- frozen loop) and what the check waits on may have finished
    -- meanwhile (a command's exit, not yet seen): let that come in first
    if core.now() - started - timeout > STALL_LATE then
      deadline = core.timer(STALL_GRACE, expire)
      if self.inflight == token then self.inflight_id = deadline end
      return
    end
    expire()
  end)
  self.inflight_id = deadline
  local co = task.bounded(self.scope, function()
    local ok, a, b = xpcall(self.spec.check, task.traceback)
    -- its verdict is read under its bounds (nothing of the user's runs
    -- after them); what follows (hooks, actions) is not the check's
    local pok, r = pcall(verdict, ok, a, b)
    if not pok then
      r = { status = "failure", reason = "check_error",
        output = "the check's result could not be read: " .. text(r) }
    end
    task.unbound(coroutine.running())
    if self.inflight ~= token then return end
    core.cancel(deadline)
    if not ok then
      log.event("error", "hook_error", { probe = self.name, hook = "check",
        error = r.error })
    end
    finish(r)
  end, { timeout, running = cpu }, function(why)
    if self.inflight ~= token then return end
    core.cancel(deadline)
    if why == "running" then
      local msg = fmt("check ran for more than its check_cpu of %g s without "
        .. "waiting and was stopped; not run for the next %g s", cpu,
        hook.quarantine)
      log.event("error", "hook_error", { probe = self.name, hook = "check",
        error = msg })
      self:quarantine("check")
      finish { status = "failure", reason = "timeout", output = msg }
      return
    end
    finish { status = "failure", reason = why == "deadline" and "timeout"
      or "check_error", output = why == "deadline"
        and fmt("check ran for longer than its timeout of %gs and was "
          .. "stopped", timeout)
        or "the check yielded by itself (use sonde.sleep or the probers)" }
  end)
  if self.inflight == token then self.inflight_task = co end
end

-- Call a hook; what it starts belongs to the probe's load (a reload ends
-- it, and the new load's hooks start their own).  Its results go through
-- `convert` inside its bound (default: hook.plain_all).  On error log it
-- and return false, err.  A hook that hit its time bound is skipped
-- (false, "skipped ...") for hook.quarantine seconds.
function Probe:call_hook(name, convert, ...)
  local f = self.spec[name]
  if not f then return true end
  local msg = self:quarantine_left(name)
  if msg then
    log.event("warn", "hook_error", { probe = self.name, hook = name,
      error = msg })
    return false, msg
  end
  local res = table.pack(task.within(self.owner.scope, hook.call_with,
    convert or hook.plain_all, f, nil, ...))
  if not res[1] then
    log.event("error", "hook_error", { probe = self.name, hook = name,
      error = res[2] })
    if res[3] then self:quarantine(name) end -- give the loop back to the others
    return false, res[2]
  end
  return table.unpack(res, 1, res.n)
end

-- The fields of a result as plain data (raw copy; reason and output text).
local function plain_result(r)
  local c = plain(r)
  if c.output ~= nil and type(c.output) ~= "string" then
    c.output = text(rawget(r, "output"))
  end
  return c
end

-- on_result may override the verdict; it gets a copy of the result, and
-- what it made of that copy is taken back inside its bound.  Returns the
-- result to go on with.
function Probe:apply_on_result(r)
  local mine = plain(r)
  local ok, status, reason, bad, after = self:call_hook("on_result",
    function(st, rs)
      local kept = plain_result(mine)       -- what the hook left in it
      if st == nil then return nil, nil, nil, kept end
      if type(st) ~= "string" or not STATUSES[st] then
        return nil, nil, text(st), kept
      end
      return st, rs and text(rs) or nil, nil, kept
    end, mine, self)
  if not ok then
    r.status, r.reason, r.error = "unknown", "hook_error", status
    return r
  end
  r = after
  if bad then
    log.event("error", "hook_error", { probe = self.name,
      hook = "on_result", error = "returned status " .. bad
        .. " (not success, warning, failure or unknown)" })
    r.status, r.reason = "unknown", "hook_error"
  elseif status ~= nil then
    r.reason = reason or (status == "success" and status ~= r.status and "ok")
      or r.reason
    r.status = status
  end
  return r
end

--- Take one result (a custom check's, or a handler's the worker filters
-- through on_result) through hooks, then count it in the worker.
function Probe:handle(r)
  if self.spec.on_result then r = self:apply_on_result(r) end
  if not STATUSES[r.status] then    -- a hook may have scribbled on it
    r.status, r.reason = "unknown", "hook_error"
  end
  if type(r.duration) ~= "number" then r.duration = 0 end
  if type(r.reason) ~= "string" then r.reason = tostring(r.reason) end
  self.last_r, self.last_seq = r, self.worker:seq()
  self:after(r, self.worker:commit(r.status, r.duration))
  -- series of its own from this result (perfdata, a module's series)
  if r.perfdata or r.blackbox_fams or rawget(self, "series_extras") then
    metrics.set_extras(self, r)
  end
end

-- A counted result: its log line, then what its transition `t` (or nil)
-- publishes.
function Probe:after(r, t)
  local level = r.status == "success" and "debug" or "warn"
  if log.enabled(level) then
    local c = self:count()
    log.event(level, "probe_result", {
      probe = self.name, kind = self.kind, status = r.status,
      reason = r.reason, duration = r.duration, output = r.output,
      exit_code = r.exit_code, signal = r.signal,
      http_status = r.http_status, grpc_status = r.grpc_status,
      serving_status = r.serving_status, rcode = r.rcode,
      state = t and t.from or c.state,
      streak = r.status ~= "unknown" and worker.streak(c, self, t) or nil,
    })
  end
  if t then self:publish(t, r) end
end

--- A published result: state change, hooks, actions, and what it does to
-- the service (restart on a liveness or startup failure; a startup
-- success lets the other probes run at once).
function Probe:publish(t, r)
  local v = t.to
  if self.kind == "startup" and self.service then
    self.service:update_gates()
  end
  if t.changed then
    log.event(v == "success" and "info" or "warn", "state_change", {
      probe = self.name, kind = self.kind, from = t.from, to = v,
      reason = r.reason })
    self:call_hook("on_change", nil, v, t.from, plain(r))
  end
  -- Actions (decided by the worker): on_failure when a failure is
  -- published (the seed does not count), on_recovery at the first success
  -- published after it.
  if t.actions == "on_failure" then
    task.within(self.scope, action.run_all, self.on_failure, plain(r), self,
      core.now(), "on_failure")
  elseif t.actions == "on_recovery" then
    task.within(self.scope, action.run_all, self.on_recovery, plain(r), self,
      core.now(), "on_recovery")
  end
  if self.service then
    if t.restart then
      self.service:restart(self.kind, self.termination_grace)
    elseif self.kind == "startup" and v == "success" then
      self.service:startup_succeeded()
    end
  end
end

--- Cancel the in-flight run, if any (a custom check is closed).
function Probe:cancel_run()
  local id, co = self.inflight_id, self.inflight_task
  self.inflight, self.inflight_id, self.inflight_task = nil, nil, nil
  if id then core.cancel(id) end
  if co then task.close(co) end
  self.worker:cancel()
end

--- Called by the service: a new instance runs.
function Probe:instance_started()
  if self.stopped then return end
  self:cancel_run()
  local old = self.state
  self:reset()
  if old ~= self.state then
    -- kubelet publishes the seed for a new container: a transition
    log.event("info", "state_change", { probe = self.name, kind = self.kind,
      from = old, to = self.state, reason = "new_instance" })
    self:call_hook("on_change", nil, self.state, old, { status = self.state,
      reason = "new_instance", output = "", probe = self.name,
      kind = self.kind, time = core.wall_time(), duration = 0 })
  end
  self.worker:start(core.now() + self.initial_delay)
end

--- Called by the service: its instance has exited.  A readiness probe
-- publishes failure (kubelet: a container that is not running is not
-- ready); the others keep their state until the next instance.
function Probe:instance_stopped(exit)
  self.worker:stop()
  self:cancel_run()
  if self.stopped or self.kind ~= "readiness" then return end
  local t = self.worker:force("failure")
  self:publish(t, { status = "failure", reason = "not_running",
    output = fmt("service %s is not running (%s)", self.service.name,
      exit or "exited"),
    probe = self.name, kind = self.kind, time = core.wall_time(),
    duration = 0 })
end

--- Carry this probe over a reload: `new` (declared by the new load with
-- the same spec) gives its hooks, check and actions, which may close over
-- new values; state, counters and schedule stay.
function Probe:adopt(new)
  self.spec = new.spec
  self.on_failure, self.on_recovery = new.on_failure, new.on_recovery
  self.worker:set_filter(self:filtered())
  new.worker:stop()
  self.owner = new.owner
  local mine, theirs = rawget(self, "scope"), rawget(new, "scope")
  if mine then mine.data = new.owner end
  if theirs then theirs:close() end
end

--- Stop for good: schedule and in-flight run cancelled, and whatever the
-- probe's scope owns (tasks its hooks started, actions in flight) ended.
function Probe:stop()
  self.stopped = true
  live[self] = nil
  self.worker:stop()
  self:cancel_run()
  if self.service then self.service:detach(self) end
  self.scope:close()     -- (made now if it was never needed: closed)
end

return M
