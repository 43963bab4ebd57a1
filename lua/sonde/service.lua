--- Supervised services: processes sonde starts, watches and restarts, the
-- way the kubelet supervises containers.
--
--   sonde.service{
--     name = "web",                       -- required, unique
--     command = { "/usr/bin/prog", ... }, -- required; argv, no shell
--     env = { K = "v" },                  -- environment (+ PATH)
--     cwd = "/srv",
--     restart = {
--       policy = "always",   -- "always" | "on-failure" | "never"
--       backoff = 10,        -- seconds before the 2nd restart, doubling
--       max_backoff = 300,   -- seconds, the cap
--       reset_after = 600,   -- seconds of running that reset the back-off
--     },
--     grace = 30,            -- seconds between SIGTERM and SIGKILL
--     output = "log",        -- "log": stdout/stderr lines in the log
--                            -- (service_output), rate-limited (see
--                            -- OUTPUT_BURST); "discard": dropped
--   }
--
-- The process runs in a new process group; its stdout and stderr go to the
-- log line by line (`service_output`), unless `output = "discard"`: at
-- most 1000 lines per 10 s per service, the rest dropped and counted
-- (`service_output_dropped`; see OUTPUT_BURST).  When it exits it is restarted
-- (policy permitting) with the kubelet's back-off: the first restart at
-- once, then `backoff` seconds doubling up to `max_backoff`; after it ran
-- `reset_after` seconds the count starts again.  A liveness or startup
-- probe that fails restarts it the same way (SIGTERM to the group, SIGKILL
-- after `grace`).  Stopping it (host shutdown) sends SIGTERM, then SIGKILL
-- after `grace`, and does not restart it.  With `policy = "never"` a
-- liveness or startup failure ends the process for good too (kubelet: a
-- container killed by a probe restarts only when the pod's restartPolicy
-- is not Never); a restart asked by an action (sonde.action.restart)
-- always starts it again.  Under the host (a subreaper),
-- what the process left behind outside its group (`setsid`, a double
-- fork, a daemon) ends with it, whichever way it ended: SIGTERM, then
-- SIGKILL after `grace` (see sonde.core.end_orphans).
-- @module sonde.service
local core = require "sonde.core"
local validate = require "sonde.validate"
local log = require "sonde.log"
local probers = require "sonde.probers"
local redact = require "sonde.redact"

local M = {}
local Service = {}
Service.__index = Service
M.Service = Service

local MAX_LINE = 4096

M.restart_schema = validate.schema {
  { "policy", "enum", values = { "always", "on-failure", "never" },
    default = "always" },
  { "backoff", "seconds", default = 10 },
  { "max_backoff", "seconds", default = 300, allow_zero = true },
  { "reset_after", "seconds", default = 600, allow_zero = true },
}

M.schema = validate.schema {
  { "name", "string", required = true, nonempty = true },
  { "command", "strings", required = true, nonempty = true },
  { "env", "env" },
  { "cwd", "string" },
  { "restart", M.restart_schema },
  { "grace", "seconds", default = 30, allow_zero = true },
  { "output", "enum", values = { "log", "discard" }, default = "log" },
}

--- True when `v` is a service (made by `new`).
function M.is(v) return getmetatable(v) == Service end

--- Validate a service spec and make the (not yet started) service.
-- @raise `FILE:LINE: service "NAME": FIELD: reason`, at the user's line
function M.new(spec)
  local ctx = { where = "sonde.service" }
  validate.checks.table(ctx, spec, "spec")
  if type(spec.name) ~= "string" or spec.name == "" then
    validate.fail(ctx, "name", "must be a non-empty string")
  end
  ctx.where = string.format("service %q", spec.name)
  local s = M.schema:apply(ctx, spec)
  local r = s.restart or M.restart_schema:apply(ctx, {}, "restart")
  -- the exec prober's environment rules
  local opts = probers.handlers.exec.prepare(ctx, { command = spec.command,
    env = spec.env, cwd = spec.cwd })
  opts.timeout = 0                   -- no deadline: it runs until it ends
  local self = setmetatable({
    name = s.name,
    spec = spec,
    opts = opts,
    policy = r.policy,
    backoff = r.backoff,
    max_backoff = r.max_backoff,
    reset_after = r.reset_after,
    grace = s.grace,
    output = s.output,
    state = "new",            -- new, running, backoff, stopping, stopped
    instance = 0,             -- counts starts
    restarts = 0,             -- total restarts
    streak = 0,               -- restarts since the back-off was reset
    final = false,            -- no restart any more (see no_restart)
    probes = {},
    last_exit = nil,          -- the last instance's exit: exit_code, signal,
                              -- reason, status
    watch = nil,              -- function(svc, what, ...) told of "start",
                              -- "exit" (result, restarting) and "started"
                              -- (the startup probe succeeded): a pod's
                              -- (sonde.podrun)
    out_limit = { ends = -math.huge, count = 0, dropped = 0 },
  }, Service)
  return self
end

function Service:attach(probe)
  self.probes[#self.probes + 1] = probe
  self:update_gates()
end

function Service:detach(probe)
  for i, p in ipairs(self.probes) do
    if p == probe then
      table.remove(self.probes, i)
      self:update_gates()
      return
    end
  end
end

--- Tell each probe whether the startup probe gates it: its runs wait
-- until the startup probe has succeeded (called when the probes or the
-- startup probe's state change).
function Service:update_gates()
  for _, p in ipairs(self.probes) do p:update_gate() end
end

--- The startup probe of this service, if any.
function Service:startup_probe()
  for _, p in ipairs(self.probes) do
    if p.kind == "startup" and not p.stopped then return p end
  end
end

-- Tell the watcher, if any (see `watch`).
local function tell(self, what, ...)
  if self.watch then self.watch(self, what, ...) end
end

--- Called by the startup probe when it publishes success: the liveness
-- and readiness probes run at once (kubelet: readiness is triggered when
-- the container is started but not ready).
function Service:startup_succeeded()
  for _, p in ipairs(self.probes) do
    if p.kind ~= "startup" then p:trigger() end
  end
  tell(self, "started")
end

--- True when the instance runs and its startup probe, if any, has
-- succeeded (kubelet: the container's `started`).
function Service:started()
  if self.state ~= "running" then return false end
  local sp = self:startup_probe()
  return sp == nil or sp.state == "success"
end

--- Service output in the log is rate-limited per service (over all its
-- instances, so a crash loop counts as one flood): at most OUTPUT_BURST
-- lines (pieces of long lines count as lines) per window of
-- OUTPUT_WINDOW seconds, a window starting at the first line after the
-- previous one ended.  Lines over the limit are dropped and counted (a
-- long line dropped whole counts as one); the
-- count is logged as `service_output_dropped` (warn: service, dropped,
-- window) when the window ends, and at the service's exit.
M.OUTPUT_BURST = 1000
M.OUTPUT_WINDOW = 10

-- Log the count of dropped lines, if any, and end the window's timer.
local function report_dropped(self)
  local l = self.out_limit
  if l.timer then core.cancel(l.timer) l.timer = nil end
  if l.dropped > 0 then
    log.event("warn", "service_output_dropped", { service = self.name,
      dropped = l.dropped, window = M.OUTPUT_WINDOW })
    l.dropped = 0
  end
end

-- May one more line be logged now?  Starts a new window when the last
-- one is over.
local function room(self)
  local l = self.out_limit
  local now = core.now()
  if now >= l.ends then
    report_dropped(self)
    l.ends, l.count = now + M.OUTPUT_WINDOW, 0
  end
  return l.count < M.OUTPUT_BURST
end

-- room(), and count the line in.
local function take(self)
  if not room(self) then return false end
  self.out_limit.count = self.out_limit.count + 1
  return true
end

local function drop(self, n)
  local l = self.out_limit
  l.dropped = l.dropped + n
  if not l.timer then
    l.timer = core.timer(math.max(l.ends - core.now(), 0), function()
      l.timer = nil
      report_dropped(self)
    end)
  end
end

-- The number of complete lines of `s` (a long one counts once) plus the
-- MAX_LINE pieces of its unfinished tail, and what is left of that tail:
-- counted in linear time, without splitting.
local function count_lines(s)
  local i = s:reverse():find("\n", 1, true)
  local n, tail = 0, s
  if i then
    tail = s:sub(#s - i + 2)
    n = select(2, s:gsub("\n", ""))
  end
  if #tail > MAX_LINE then
    local k = (#tail - 1) // MAX_LINE
    n = n + k
    tail = tail:sub(k * MAX_LINE + 1)
  end
  return n, tail
end

-- Line-buffer one stream's output into the log.  Lines longer than
-- MAX_LINE bytes are logged in MAX_LINE pieces (`partial` true on all but
-- the last).  Linear in the output: plain find, no patterns that rescan.
-- Over the rate limit, whole chunks are counted, not split.
local function output_sink(self)
  local partial = { "", "" }
  local function emit(stream, line, more)
    if not take(self) then drop(self, 1) return end
    log.event("info", "service_output", { service = self.name,
      stream = stream == 1 and "stdout" or "stderr", line = line,
      partial = more or nil })
  end
  return function(stream, data)
    local buf = partial[stream] .. data
    local pos = 1
    while true do
      local nl = buf:find("\n", pos, true)
      if not nl then break end
      if not room(self) then
        -- over the limit: count the rest of this chunk's lines at once
        local n, tail = count_lines(buf:sub(pos))
        drop(self, n)
        partial[stream] = tail
        return
      end
      local line = buf:sub(pos, nl - 1)
      while #line > MAX_LINE do
        emit(stream, line:sub(1, MAX_LINE), true)
        line = line:sub(MAX_LINE + 1)
      end
      emit(stream, line)
      pos = nl + 1
    end
    buf = buf:sub(pos)
    while #buf > MAX_LINE do
      emit(stream, buf:sub(1, MAX_LINE), true)
      buf = buf:sub(MAX_LINE + 1)
    end
    partial[stream] = buf
  end, partial
end

--- Start the process now (state new, backoff or stopped).
function Service:start()
  if self.state == "running" or self.state == "stopping" then return end
  self.instance = self.instance + 1
  self.started_at = core.now()
  self.restart_why = nil
  local instance = self.instance
  if self.output == "discard" then
    self.op = core.exec(self.opts, function(r) self:exited(r, instance) end,
      function() end)
  else
    local sink, partial = output_sink(self)
    self.op = core.exec(self.opts, function(r)
      for s = 1, 2 do
        if partial[s] ~= "" then sink(s, "\n") end
      end
      report_dropped(self)
      self:exited(r, instance)
    end, sink)
  end
  self.state = "running"
  self.pid = core.exec_pid(self.op)
  log.event("info", "service_start", { service = self.name, pid = self.pid,
    instance = instance, command = self.opts.written.command })
  for _, p in ipairs(self.probes) do p:instance_started() end
  tell(self, "start")
end

function Service:exited(r, instance)
  redact.exec_result(r, self.opts.written)       -- argv as written, no secrets
  local uptime = core.now() - self.started_at
  -- what it left behind (escaped its process group) ends with it: SIGTERM,
  -- SIGKILL after grace; another service's or instance's is not touched
  if self.op then core.end_orphans(self.grace, self.op) end
  self.op = nil
  self.pid = r.pid
  local expected = r.reason == "ok" or self.state == "stopping"
    or self.restart_why ~= nil
  log.event(expected and "info" or "warn", "service_exit", {
    service = self.name, pid = r.pid, instance = instance,
    exit_code = r.exit_code, signal = r.signal, status = r.status,
    reason = r.reason, uptime = uptime,
    error = r.reason ~= "exit_code" and r.reason ~= "ok" and r.reason ~= "signal"
      and r.output or nil })
  self.last_exit = { exit_code = r.exit_code, signal = r.signal,
    reason = r.reason, status = r.status }
  local how = r.exit_code and ("exit code " .. r.exit_code)
    or r.signal and ("signal " .. r.signal) or r.reason
  for _, p in ipairs(self.probes) do p:instance_stopped(how) end
  if self.state == "stopping" then
    self.state = "stopped"
    log.event("info", "service_stop", { service = self.name })
    local waiters = self.stop_waiters or {}
    self.stop_waiters = nil
    for _, f in ipairs(waiters) do f() end
    tell(self, "exit", r, false)
    return
  end
  local why = self.restart_why or "exit"
  if self.final or (self.policy == "never" and why ~= "action")
      or (why == "exit" and self.policy == "on-failure"
        and r.exit_code == 0) then
    self.state = "stopped"
    tell(self, "exit", r, false)
    return
  end
  if uptime >= self.reset_after then self.streak = 0 end
  local delay = self.streak == 0 and 0
    or math.min(self.backoff * 2 ^ (self.streak - 1), self.max_backoff)
  self.streak = self.streak + 1
  self.restarts = self.restarts + 1
  self.state = "backoff"
  log.event("info", "service_restart", { service = self.name, delay = delay,
    restarts = self.restarts, why = why })
  self.timer = core.timer(delay, function()
    self.timer = nil
    if self.state == "backoff" then self:start() end
  end)
  tell(self, "exit", r, true)
end

--- Restart the process (liveness / startup failure, an action): SIGTERM
-- to its group, SIGKILL after `grace`; it is started again, with back-off,
-- once it has exited.
-- @tparam string why "liveness", "startup", "action"...
-- @tparam[opt] number grace seconds, instead of the service's grace
function Service:restart(why, grace)
  if self.state == "running" and self.op then
    self.restart_why = why
    core.terminate(self.op, grace or self.grace)
  end
end

--- From now on an exit is the last one: the process is not started
-- again, and one waiting in back-off stays stopped (a pod that stops:
-- its sidecars wait for their turn to get SIGTERM and must not come back
-- meanwhile).
function Service:no_restart()
  self.final = true
  if self.state == "backoff" then
    if self.timer then core.cancel(self.timer) self.timer = nil end
    self.state = "stopped"
  end
end

--- Stop the process for good (SIGTERM, SIGKILL after grace); `done()` is
-- called once it has exited (at once if it is not running).
-- @tparam[opt] function done
-- @tparam[opt] number grace seconds, instead of the service's grace
function Service:stop(done, grace)
  if self.timer then core.cancel(self.timer) self.timer = nil end
  if self.state == "running" and self.op then
    self.state = "stopping"
    self.stop_waiters = self.stop_waiters or {}
    if done then table.insert(self.stop_waiters, done) end
    core.terminate(self.op, grace or self.grace)
  else
    if self.state ~= "stopping" then self.state = "stopped" end
    if done then
      if self.state == "stopping" then
        table.insert(self.stop_waiters, done)
      else
        done()
      end
    end
  end
end

return M
