--- A pod's run: the kubelet's order for the containers of one pod.
--
-- sonde.pod makes a pod from a manifest: one service (sonde.service) per
-- container, with the container's probes, and this object, which starts
-- and stops those services in the kubelet's order.  A load (sonde.config)
-- starts and stops the pod as a whole.
--
--   local p = podrun.new { name = "web", policy = "always", grace = 30,
--     fingerprint = "...", containers = {
--       { name = "setup", kind = "init", service = s1 },
--       { name = "proxy", kind = "sidecar", service = s2 },
--       { name = "app", kind = "app", service = s3 } } }
--
-- Kinds (kubelet, KEP-753 for sidecars):
--
--   * `init`: an init container.  The init containers and sidecars start
--     one after another, in their order; an init container must exit 0
--     before the next one starts.  One that fails is started again by its
--     service (the pod's restartPolicy Always or OnFailure: the service's
--     policy is on-failure, with the crash-loop back-off) while the pod
--     waits; with restartPolicy Never the pod fails (phase Failed,
--     `pod_phase` at error naming the container and its exit) and its app
--     containers never start.  Init containers run once per pod: never
--     again once the app containers started.
--   * `sidecar`: an init container with `restartPolicy: Always`.  The next
--     container starts once the sidecar has started: it runs and its
--     startup probe, if any, has succeeded (kubelet: Started).  It is
--     restarted whenever it exits, whatever the pod's restartPolicy (its
--     service's policy is always), keeps running beside the app
--     containers, and counts in the pod's readiness.
--   * `app`: the pod's containers.  They start together once every init
--     container has completed and every sidecar has started, and follow
--     the pod's restartPolicy.  With restartPolicy Never or OnFailure,
--     once every app container has ended for good the pod has completed
--     (phase Succeeded when all exited 0, else Failed) and its sidecars
--     are stopped.
--
-- Stopping (the host's SIGTERM, a reload that replaces the pod, a pod
-- that completed or failed) starts nothing of the pod again (a sidecar
-- that exits while it waits for its turn stays down: sonde.service
-- no_restart) and follows the kubelet's termination order:
-- the app containers (and an init container still running) get SIGTERM
-- at once, with the pod's grace (terminationGracePeriodSeconds); the
-- sidecars then stop last first, each once the app containers and the
-- sidecars after it have exited, or when the pod's grace has run out
-- since the stop began; a sidecar gets what is left of the pod's grace,
-- at least MIN_GRACE seconds (or the pod's grace when that is shorter).
--
-- Phases (kubelet's words): `Pending` (init containers running),
-- `Running` (the app containers started), `Succeeded`, `Failed`.
-- @module sonde.podrun
local core = require "sonde.core"
local log = require "sonde.log"

local M = {}
local Pod = {}
Pod.__index = Pod
M.Pod = Pod

--- Seconds a sidecar is given at the least between its SIGTERM and
-- its SIGKILL when the pod stops (kubelet: minimumGracePeriodInSeconds),
-- unless the pod's own grace is shorter.
M.MIN_GRACE = 2

local TERMINAL = { Succeeded = true, Failed = true }

--- True when `v` is a pod (made by `new`).
function M.is(v) return getmetatable(v) == Pod end

--- Make a pod (not started).  Each container's service becomes the pod's
-- (`service.pod`, `service.pod_kind`; its starts and exits are watched).
-- @tparam table spec `name`, `policy` ("always", "on-failure", "never"),
-- `restart_policy` (the manifest's word for it, for logs and /status),
-- `grace` (seconds), `fingerprint` (a text: equal for the same manifest),
-- `containers` (in the pod's order: init containers and sidecars first,
-- then the app containers; each `{ name, kind, service }`)
function M.new(spec)
  local self = setmetatable({
    name = spec.name, policy = spec.policy, grace = spec.grace,
    restart_policy = spec.restart_policy or "Always",
    fingerprint = spec.fingerprint,
    containers = {}, by_name = {},
    state = "new",          -- new, waiting, running, stopping, stopped
    phase = "Pending",      -- Pending, Running, Succeeded, Failed
    initialized = false,    -- the app containers were started
  }, Pod)
  for i, c in ipairs(spec.containers) do
    local x = { name = c.name, kind = c.kind, service = c.service, index = i }
    self.containers[i], self.by_name[c.name] = x, x
    rawset(c.service, "pod", self)
    rawset(c.service, "pod_kind", c.kind)
    c.service.watch = function(_, what, ...) self:event(x, what, ...) end
  end
  return self
end

local function counts(self)
  local n = { init = 0, sidecar = 0, app = 0 }
  for _, c in ipairs(self.containers) do n[c.kind] = n[c.kind] + 1 end
  return n
end

local function set_phase(self, phase, fields, level)
  self.phase = phase
  fields = fields or {}
  fields.pod, fields.phase = self.name, phase
  log.event(level or "info", "pod_phase", fields)
end

--- Start the pod: its first init container (or its sidecars, or its app
-- containers).  With `after` (pods a reload replaces), once each of them
-- has stopped.
-- @tparam[opt] table after pods to wait for
function Pod:start(after)
  if self.state ~= "new" then return end
  if after and #after > 0 then
    self.state = "waiting"
    local left = #after + 1
    local function gone()
      left = left - 1
      if left > 0 then return end
      if self.state == "waiting" then
        self.state = "new"
        return self:start()
      end
      -- stopped while it waited: never started
      self:terminate(function() self:stopped() end)
    end
    for _, o in ipairs(after) do o:stop(gone) end
    return gone()
  end
  self.state = "running"
  local n = counts(self)
  set_phase(self, "Pending", { init = n.init, sidecars = n.sidecar,
    containers = n.app, restart_policy = self.restart_policy })
  self:advance()
end

-- What one container's service tells (sonde.service `watch`).
function Pod:event(c, what, r, restarting)
  if self.state ~= "running" or TERMINAL[self.phase] then return end
  if what == "exit" then
    if c.kind == "init" then
      if r.reason == "ok" then
        c.done = true
      elseif not restarting then       -- restartPolicy Never
        return self:fail(c, r)
      end
    elseif c.kind == "app" and not restarting then
      c.final = true
      return self:check_completed()
    end
  end
  self:advance()
end

--- Start what comes next, if it may (re-entrant: a service's start tells
-- the pod at once).
function Pod:advance()
  if self.advancing then self.again = true return end
  self.advancing = true
  repeat
    self.again = false
    self:step()
  until not self.again
  self.advancing = false
end

-- The kubelet's computeInitContainerActions for a pod that runs here:
-- the first init container not completed, or the first sidecar not
-- started once, is started and waited for; when there is none, the app
-- containers start.
function Pod:step()
  if self.state ~= "running" or self.initialized or TERMINAL[self.phase] then
    return
  end
  for _, c in ipairs(self.containers) do
    if c.kind == "init" then
      if not c.done then
        if c.service.state == "new" then c.service:start() end
        return
      end
    elseif c.kind == "sidecar" then
      if not c.initialized then
        if c.service.state == "new" then c.service:start() end
        if not c.service:started() then return end
        c.initialized = true
      end
    end
  end
  self.initialized = true
  set_phase(self, "Running")
  for _, c in ipairs(self.containers) do
    if c.kind == "app" and c.service.state == "new" then c.service:start() end
  end
end

-- An init container failed and the pod's restartPolicy is Never: the pod
-- has failed; what runs (its sidecars) is stopped.
function Pod:fail(c, r)
  set_phase(self, "Failed", { reason = "init_failed", container = c.name,
    exit_code = r.exit_code, signal = r.signal, error = r.reason ~= "exit_code"
      and r.reason ~= "signal" and r.output or nil,
    detail = "init container " .. c.name .. " failed and restartPolicy is "
      .. "Never: the app containers are not started" }, "error")
  self:terminate()
end

-- Every app container has ended for good (restartPolicy Never or
-- OnFailure): the pod has completed; its sidecars are stopped.
function Pod:check_completed()
  local failed
  for _, c in ipairs(self.containers) do
    if c.kind == "app" then
      if not c.final then return end
      local e = c.service.last_exit
      if not failed and not (e and e.reason == "ok") then failed = c end
    end
  end
  if failed then
    local e = failed.service.last_exit or {}
    set_phase(self, "Failed", { reason = "container_failed",
      container = failed.name, exit_code = e.exit_code, signal = e.signal },
      "error")
  else
    set_phase(self, "Succeeded", { reason = "completed" })
  end
  self:terminate()
end

--- Stop every container in the kubelet's termination order (see the
-- module doc); `done()` once all have exited.
function Pod:terminate(done)
  local grace = self.grace
  local t0 = core.now()
  -- nothing of the pod starts again, whatever its policy
  for _, c in ipairs(self.containers) do c.service:no_restart() end
  local order = {}                 -- the sidecars, last first
  for i = #self.containers, 1, -1 do
    local c = self.containers[i]
    if c.kind == "sidecar" then order[#order + 1] = c end
  end
  local begun, left, timer = {}, #order + 1, nil
  local function finished()
    left = left - 1
    if left > 0 then return end
    if timer then core.cancel(timer) timer = nil end
    if done then done() end
  end
  local begin
  local function turn_after(k)
    if k < #order then begin(k + 1) end
  end
  begin = function(k)
    if begun[k] then return end
    begun[k] = true
    local g = math.max(grace - (core.now() - t0), math.min(M.MIN_GRACE, grace))
    order[k].service:stop(function()
      turn_after(k)
      finished()
    end, g)
  end
  local main = 1
  local function main_done()
    main = main - 1
    if main > 0 then return end
    turn_after(0)
    finished()
  end
  for _, c in ipairs(self.containers) do
    if c.kind ~= "sidecar" then
      main = main + 1
      c.service:stop(main_done)
    end
  end
  if #order > 0 then
    -- the pod's grace is over: every sidecar's turn has come
    timer = core.timer(grace, function()
      timer = nil
      for k = 1, #order do begin(k) end
    end)
  end
  main_done()
end

function Pod:stopped()
  self.state = "stopped"
  local waiters = self.waiters or {}
  self.waiters = nil
  for _, f in ipairs(waiters) do f() end
end

--- Stop the pod for good (see the module doc); `done()` once every
-- container has exited (at once when none runs).
function Pod:stop(done)
  if self.state == "stopped" then
    if done then done() end
    return
  end
  self.waiters = self.waiters or {}
  if done then self.waiters[#self.waiters + 1] = done end
  if self.state == "stopping" then return end
  local was = self.state
  self.state = "stopping"
  if was == "waiting" then return end    -- see start: when they are gone
  if was == "running" then
    log.event("info", "pod_stop", { pod = self.name })
  end
  self:terminate(function() self:stopped() end)
end

-- A container's state in the kubelet's words: waiting, running,
-- terminated; and its reason.
local function state_of(self, c)
  local s = c.service
  if s.state == "running" or s.state == "stopping" then return "running" end
  local e = s.last_exit
  if s.state == "backoff" then return "waiting", "CrashLoopBackOff" end
  if s.state == "stopped" and e then
    return "terminated", e.reason == "ok" and "Completed" or "Error"
  end
  return "waiting", not self.initialized and not TERMINAL[self.phase]
    and "PodInitializing" or nil
end

--- Whether a container is ready (kubelet: an init container once it
-- exited 0; a sidecar or app container while it runs, has started and
-- its readiness probe, if any, succeeds).
-- @treturn boolean
-- @treturn[opt] string why not
function Pod:container_ready(c)
  local s = c.service
  if c.kind == "init" then
    if c.done then return true end
    local st, reason = state_of(self, c)
    local e = st == "terminated" and s.last_exit
    return false, "init container not completed (" .. st
      .. (reason and (", " .. reason) or "")
      .. (e and e.exit_code and (", exit code " .. e.exit_code) or "")
      .. (e and e.signal and (", signal " .. e.signal) or "") .. ")"
  end
  if s.state ~= "running" then
    local st, reason = state_of(self, c)
    return false, "not running (" .. st .. (reason and (", " .. reason)
      or "") .. ")"
  end
  for _, p in ipairs(s.probes) do
    if p.kind == "startup" and not p.stopped and p.state ~= "success" then
      return false, "not started (startup probe " .. p.name .. ")"
    end
  end
  for _, p in ipairs(s.probes) do
    if p.kind == "readiness" and not p.stopped and p.state ~= "success" then
      return false, "readiness probe " .. p.name .. " " .. p.state
    end
  end
  return true
end

--- Whether the pod is ready (kubelet: Ready, ContainersReady): running
-- (initialized, not completed) and every app container and sidecar ready.
-- @treturn boolean
-- @treturn table why not: lines naming the pod or a container
function Pod:ready()
  local why = {}
  if TERMINAL[self.phase] then
    why[1] = "pod " .. self.name .. ": " .. self.phase
  elseif not self.initialized then
    local at
    for _, c in ipairs(self.containers) do
      if c.kind ~= "app" and not (c.done or c.initialized) then
        at = c
        break
      end
    end
    why[1] = "pod " .. self.name .. ": initializing" .. (at and (" ("
      .. (at.kind == "init" and "init container " or "sidecar ") .. at.name
      .. ")") or "")
  end
  for _, c in ipairs(self.containers) do
    if c.kind ~= "init" then
      local ok, w = self:container_ready(c)
      if not ok then why[#why + 1] = "container " .. c.name .. ": " .. w end
    end
  end
  return #why == 0, why
end

--- The pod's probes (of all its containers).
function Pod:probes()
  local list = {}
  for _, c in ipairs(self.containers) do
    for _, p in ipairs(c.service.probes) do list[#list + 1] = p end
  end
  return list
end

--- The pod for /status: `{ phase, ready, initialized, restart_policy,
-- containers = { { name, kind, state, reason, ready, started, restarts,
-- exit_code, signal }, ... } }` (containers in the pod's order).
function Pod:status()
  local list = {}
  for i, c in ipairs(self.containers) do
    local s = c.service
    local st, reason = state_of(self, c)
    local e = st == "terminated" and s.last_exit or {}
    local started
    if c.kind ~= "init" then started = s:started() end
    list[i] = { name = c.name, kind = c.kind, state = st, reason = reason,
      ready = (self:container_ready(c)), started = started,
      restarts = s.restarts, exit_code = e.exit_code, signal = e.signal }
  end
  return { phase = self.phase, ready = (self:ready()),
    initialized = self.initialized, restart_policy = self.restart_policy,
    containers = list }
end

return M
