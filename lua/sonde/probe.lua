--- Declared probes: kubelet-semantics probe workers.
--
--   sonde.probe{
--     name = "web-live",                 -- required, unique
--     kind = "liveness",                 -- liveness | readiness | startup
--     -- exactly one handler:
--     exec = {...} | http_get = {...} | tcp_socket = {...} | check = fn,
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
-- success; unknown counts toward neither (the engine's own trouble never
-- restarts a healthy service).
--
-- With a service: a startup probe gates the service's liveness and
-- readiness probes (they skip their runs until startup has succeeded, again
-- after each restart); a published liveness or startup failure restarts the
-- service and the probe holds (runs nothing) until the new instance runs,
-- when state and counters reset to the seed; startup holds after its
-- success too.  Every new instance resets all its probes to their seeds.
-- Without a service nothing holds: a liveness probe keeps probing and its
-- actions do the remediation.
--
-- Scheduling: the first run is `initial_delay` after the service (or the
-- probe) started, then runs follow at a fixed rate without drift.  A run
-- still going at the next tick makes that tick skip (`probe_skipped`,
-- why overrun): runs are never stacked.  Probes without an initial delay
-- that start together are spread over their first period.  Stopping a
-- probe cancels its in-flight run.
--
-- Every result of a declared probe carries `probe` (name), `kind` and
-- `time` (wall-clock start of the run, seconds since the epoch).
-- @module sonde.probe
local core = require "sonde.core"
local check = require "sonde.check"
local log = require "sonde.log"
local hook = require "sonde.hook"
local action = require "sonde.action"
local metrics = require "sonde.metrics"

local M = {}
local Probe = {}
Probe.__index = Probe
M.Probe = Probe

local KEYS = {
  name = true, kind = true, exec = true, http_get = true, tcp_socket = true,
  check = true, initial_delay = true, period = true, timeout = true,
  success_threshold = true, failure_threshold = true, env = true,
  ports = true, service = true, on_result = true, on_change = true,
  on_failure = true, on_recovery = true, action_interval = true,
  termination_grace = true,
}
local HANDLERS = { "exec", "http_get", "tcp_socket", "check" }
local SEED = { readiness = "failure", liveness = "success",
               startup = "unknown" }
local STATUSES = { success = true, warning = true, failure = true,
                   unknown = true }

local function count(ctx, v, field, default)
  if type(v) == "number" and v < 1 then
    check.fail(ctx, field, "must be >= 1, got %s", check.show(v))
  end
  return check.count(ctx, v, field, default)
end

--- Validate a probe spec and make the (not yet started) probe.
-- @raise `probe "NAME": FIELD: reason`
function M.new(spec)
  local sonde = require "sonde"
  local ctx = { where = "sonde.probe" }
  check.table(ctx, spec, "spec")
  if type(spec.name) ~= "string" or spec.name == "" then
    check.fail(ctx, "name", "must be a non-empty string")
  end
  ctx.where = string.format("probe %q", spec.name)
  check.known_keys(ctx, spec, KEYS)
  local service = spec.service
  if service ~= nil and getmetatable(service) ~=
      require("sonde.service").Service then
    check.fail(ctx, "service", "must be a sonde.service, got %s",
      type(service))
  end
  local kind = check.string(ctx, spec.kind, "kind",
    service and "liveness" or "readiness")
  if not SEED[kind] then
    check.fail(ctx, "kind", "must be liveness, readiness or startup, got %s",
      check.show(kind))
  end
  local handler
  for _, h in ipairs(HANDLERS) do
    if spec[h] ~= nil then
      if handler then
        check.fail(ctx, h, "may not specify more than 1 handler type (%s "
          .. "given too)", handler)
      end
      handler = h
    end
  end
  if not handler then
    check.fail(ctx, nil, "must specify a handler type (exec, http_get, "
      .. "tcp_socket or check)")
  end
  local timeout = check.seconds(ctx, spec.timeout, "timeout", 1)
  local self = setmetatable({
    name = spec.name, kind = kind, spec = spec, handler = handler,
    service = service,
    initial_delay = check.seconds(ctx, spec.initial_delay, "initial_delay",
      0, true),
    period = check.seconds(ctx, spec.period, "period", 10),
    timeout = timeout,
    success_threshold = count(ctx, spec.success_threshold,
      "success_threshold", 1),
    failure_threshold = count(ctx, spec.failure_threshold,
      "failure_threshold", 3),
    action_interval = check.seconds(ctx, spec.action_interval,
      "action_interval", 30, true),
    termination_grace = check.seconds(ctx, spec.termination_grace,
      "termination_grace", nil),
    last_action = {},
    runs = 0,
  }, Probe)
  if self.period < 0.1 then
    check.fail(ctx, "period", "must be >= 0.1, got %s", check.show(self.period))
  end
  if kind == "readiness" and self.termination_grace then
    check.fail(ctx, "termination_grace", "must not be set for readiness "
      .. "probes (they never restart anything)")
  end
  if kind ~= "readiness" and self.success_threshold ~= 1 then
    check.fail(ctx, "success_threshold", "must be 1 for %s probes, got %d",
      kind, self.success_threshold)
  end
  for _, h in ipairs { "on_result", "on_change" } do
    if spec[h] ~= nil and type(spec[h]) ~= "function" then
      check.fail(ctx, h, "must be a function, got %s", type(spec[h]))
    end
  end
  self.on_failure = action.list(ctx, spec.on_failure, "on_failure")
  self.on_recovery = action.list(ctx, spec.on_recovery, "on_recovery")
  local env = check.env(ctx, spec.env, "env")
  local ports = check.ports(ctx, spec.ports, "ports")
  if handler == "check" then
    if type(spec.check) ~= "function" then
      check.fail(ctx, "check", "must be a function, got %s", type(spec.check))
    end
  else
    -- the handler's own spec, with the probe's timeout, env and ports
    local h = check.table(ctx, spec[handler], handler)
    if h.timeout ~= nil then
      check.fail(ctx, handler .. ".timeout", "is set on the probe (timeout)")
    end
    local hs = {}
    for k, v in pairs(h) do hs[k] = v end
    hs.timeout = timeout
    if handler == "exec" and hs.env == nil and next(env) then hs.env = env end
    if handler ~= "exec" and hs.ports == nil and ports and hs.url == nil then
      hs.ports = ports
    end
    self.opts = sonde._handlers[handler].prepare(
      { where = ctx.where, prefix = handler .. "." }, hs)
  end
  self:reset()
  return self
end

--- Back to the seed state, counters cleared.
function Probe:reset()
  self.state = SEED[self.kind]
  self.last = nil
  self.run = 0
  self.on_hold = false
end

--- Start scheduling: first run at initial_delay (+ `spread`) from now.
function Probe:start(spread)
  self.stopped = false
  if self.service then
    self.service:attach(self)
    if self.service.state == "running" then
      self:schedule(core.now() + self.initial_delay + (spread or 0))
    end
  else
    self:schedule(core.now() + self.initial_delay + (spread or 0))
  end
end

function Probe:schedule(first_at)
  self:cancel_timer()
  self.first_at = first_at
  self.ticks = 0
  self:arm(first_at)
end

function Probe:arm(at)
  self.next_at = at
  self.timer = core.timer(math.max(0, at - core.now()), function()
    self.timer = nil
    self:tick()
  end)
end

function Probe:cancel_timer()
  if self.timer then core.cancel(self.timer) self.timer = nil end
end

-- Fixed rate: the next tick is first_at + k * period for the smallest k
-- after now; ticks missed while a run overran are skipped.
function Probe:next_tick()
  local now = core.now()
  local k = math.floor((now - self.first_at) / self.period) + 1
  if k <= self.ticks then k = self.ticks + 1 end
  self.ticks = k
  self:arm(self.first_at + k * self.period)
end

function Probe:gated()
  if not self.service or self.kind == "startup" then return false end
  local sp = self.service:startup_probe()
  return sp ~= nil and sp.state ~= "success"
end

function Probe:tick()
  self:next_tick()
  if self.on_hold or self:gated() then return end
  if self.inflight then
    log.event("warn", "probe_skipped", { probe = self.name, why = "overrun" })
    return
  end
  self:run_once(function(r) self:handle(r) end)
end

--- Run the handler once; `done(result)` gets the result (with probe, kind
-- and time set).  Used by the scheduler and by `sonde once`.
function Probe:run_once(done)
  local sonde = require "sonde"
  local started, wall = core.now(), core.wall_time()
  local token = {}
  self.inflight = token
  local function finish(r)
    if self.inflight ~= token then return end   -- cancelled or timed out
    self.inflight, self.inflight_id, self.inflight_task = nil, nil, nil
    r.probe, r.kind, r.time = self.name, self.kind, wall
    r.duration = r.duration or (core.now() - started)
    self.runs = self.runs + 1
    done(r)
  end
  if self.handler ~= "check" then
    self.inflight_id = sonde._handlers[self.handler].start(self.opts, finish)
    return
  end
  -- a custom check: a task, bounded by the probe's timeout
  local deadline = core.timer(self.timeout, function()
    local co = self.inflight_task
    if co and sonde._waiting[co] then
      core.cancel(sonde._waiting[co])
      sonde._waiting[co] = nil
    end
    finish { status = "failure", reason = "timeout",
      output = string.format("check timed out after %gs", self.timeout) }
  end)
  self.inflight_id = deadline
  local function verdict(ok, a, b)
    if not ok then
      log.event("warn", "hook_error", { probe = self.name, hook = "check",
        error = tostring(a) })
      return { status = "failure", reason = "check_error",
        output = tostring(a):match("^[^\n]*") or "" }
    elseif type(a) == "table" and STATUSES[rawget(a, "status")] then
      local r = {}
      for k, v in pairs(a) do r[k] = v end
      r.reason = type(r.reason) == "string" and r.reason
        or (r.status == "success" and "ok" or "check")
      r.output = r.output ~= nil and tostring(r.output) or ""
      r.duration = nil
      return r
    elseif STATUSES[a] then
      return { status = a, reason = a == "success" and "ok" or "check",
        output = b ~= nil and tostring(b) or "" }
    end
    return { status = "failure", reason = "check_error", output =
      "check returned " .. tostring(a) .. ": expected a status "
      .. "(success, warning, failure, unknown) or a result table" }
  end
  -- the probe's timeout bounds the check's running code too, not only its
  -- waits: a check stuck in a loop is stopped (src/ldeadline.c) and its
  -- result is a timeout.  The loop stands still while the check's Lua
  -- code runs.
  self.inflight_task = sonde._bounded_task(function()
    local ok, a, b = xpcall(self.spec.check, debug.traceback)
    if self.inflight ~= token then return end
    core.cancel(deadline)
    local pok, r = pcall(verdict, ok, a, b)
    finish(pok and r or { status = "failure", reason = "check_error",
      output = "the check's result could not be read: " .. tostring(r) })
  end, self.timeout, function(why)
    if self.inflight ~= token then return end
    core.cancel(deadline)
    finish { status = "failure", reason = why == "deadline" and "timeout"
      or "check_error", output = why == "deadline"
        and string.format("check ran for longer than its timeout of %gs "
          .. "and was stopped", self.timeout)
        or "the check yielded by itself (use sonde.sleep or the probers)" }
  end)
end

-- Call a hook; on error log it and return false, err.  A hook that hit its
-- time bound is skipped (false, "disabled ...") for hook.quarantine s.
function Probe:call_hook(name, ...)
  local f = self.spec[name]
  if not f then return true end
  local now = core.now()
  local q = self.quarantined and self.quarantined[name]
  if q and now < q then
    local msg = string.format("hook %s skipped for %.1f s more after "
      .. "exceeding its time limit", name, q - now)
    log.event("warn", "hook_error", { probe = self.name, hook = name,
      error = msg })
    return false, msg
  end
  local res = table.pack(hook.call(f, nil, ...))
  if not res[1] then
    log.event("error", "hook_error", { probe = self.name, hook = name,
      error = res[2] })
    if res[3] then       -- timed out: give the loop back to the others
      self.quarantined = self.quarantined or {}
      self.quarantined[name] = core.now() + hook.quarantine
    end
    return false, res[2]
  end
  return table.unpack(res, 1, res.n)
end

--- Take one result through hooks, thresholds and transitions.
function Probe:handle(r)
  -- on_result may override the verdict
  if self.spec.on_result then
    local ok, status, reason = self:call_hook("on_result", r, self)
    if not ok then
      r.status, r.reason = "unknown", "hook_error"
      r.error = status
    elseif status ~= nil then
      if STATUSES[status] then
        r.reason = reason and tostring(reason)
          or (status == "success" and status ~= r.status and "ok")
          or r.reason
        r.status = status
      else
        log.event("error", "hook_error", { probe = self.name,
          hook = "on_result", error = "returned status " .. tostring(status)
            .. " (not success, warning, failure or unknown)" })
        r.status, r.reason = "unknown", "hook_error"
      end
    end
  end
  if not STATUSES[r.status] then    -- a hook may have scribbled on it
    r.status, r.reason = "unknown", "hook_error"
  end
  if type(r.duration) ~= "number" then r.duration = 0 end
  if type(r.reason) ~= "string" then r.reason = tostring(r.reason) end
  self.last_result = r
  metrics.observe(self, r)
  local v = r.status == "failure" and "failure" or "success"
  local streak
  if r.status ~= "unknown" then                 -- unknown moves no counter
    if v == self.last then self.run = self.run + 1
    else self.last, self.run = v, 1 end
    -- the run so far / its threshold; the run keeps counting past it
    streak = string.format("%s %d/%d", v, self.run, v == "failure"
      and self.failure_threshold or self.success_threshold)
  end
  log.event(r.status == "success" and "info" or "warn", "probe_result", {
    probe = self.name, kind = self.kind, status = r.status,
    reason = r.reason, duration = r.duration, output = r.output,
    exit_code = r.exit_code, signal = r.signal, http_status = r.http_status,
    state = self.state, streak = streak,
  })
  if r.status == "unknown" then return end
  if (v == "failure" and self.run < self.failure_threshold) or
     (v == "success" and self.run < self.success_threshold) then
    return
  end
  local old = self.state
  self.state = v
  if old ~= v then
    log.event(v == "success" and "info" or "warn", "state_change", {
      probe = self.name, kind = self.kind, from = old, to = v,
      reason = r.reason })
    self:call_hook("on_change", v, old, r)
  end
  -- Actions: on_failure when a failure is published (the seed does not
  -- count), on_recovery at the first success published after it.
  if v == "failure" and not self.alerted then
    self.alerted = true
    action.run_all(self.on_failure, r, self, core.now())
  elseif v == "success" and self.alerted then
    self.alerted = false
    action.run_all(self.on_recovery, r, self, core.now())
  end
  if self.service and ((self.kind == "liveness" and v == "failure") or
      self.kind == "startup") then
    self.on_hold = true
    self.run = 0
    if v == "failure" then
      self.service:restart(self.kind, self.termination_grace)
    end
  end
end

--- Cancel the in-flight run, if any.
function Probe:cancel_run()
  if self.inflight_id then core.cancel(self.inflight_id) end
  local co = self.inflight_task
  local sonde = package.loaded["sonde"]
  if co and sonde and sonde._waiting[co] then
    core.cancel(sonde._waiting[co])
    sonde._waiting[co] = nil
  end
  self.inflight, self.inflight_id, self.inflight_task = nil, nil, nil
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
    self:call_hook("on_change", self.state, old, { status = self.state,
      reason = "new_instance", output = "", probe = self.name,
      kind = self.kind, time = core.wall_time(), duration = 0 })
  end
  self:schedule(core.now() + self.initial_delay)
end

--- Called by the service: its instance has exited.
function Probe:instance_stopped()
  self:cancel_timer()
  self:cancel_run()
end

--- Stop for good: timer cancelled, in-flight run cancelled.
function Probe:stop()
  self.stopped = true
  self:cancel_timer()
  self:cancel_run()
  if self.service then self.service:detach(self) end
end

return M
