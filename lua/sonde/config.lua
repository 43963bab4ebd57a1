--- A load of a script, and everything it owns.
--
-- A load (the first one, and each reload) owns what is created while its
-- code runs: the probes and services it declares, its tasks (the script's
-- own top level, `sonde.spawn`), timers (`sonde.after`), operations
-- started with a callback, and its custom metric series (see sonde.task
-- scopes and sonde.metrics registries).  Code runs "in" a load when it is
-- the script's top level or a task of it, or a hook, check or action of
-- one of its probes.
--
--   local cfg, err = config.load("/etc/sonde/probes.lua", args)  -- not started
--   cfg:start()                        -- services, then probes
--   new = config.load(...); config.apply(cfg, new)   -- a reload
--   cfg:stop(done)                     -- the end: done() once services exited
--
-- `apply` carries over what did not change (services and probes with the
-- same spec keep running, with their state and counters; a kept probe
-- runs the new load's hooks) and ends the rest of the old load: its other
-- probes and services are stopped, its tasks closed (`coroutine.close`:
-- `<close>` variables run), its timers and operations cancelled, its
-- series dropped.  A load that fails leaves the running one untouched and
-- ends what it had started itself.
--
-- Pods (sonde.pod, sonde.podrun) own their containers' services: a load
-- starts and stops a pod as a whole (its own order: init containers,
-- sidecars, then the app containers; stopped apps first, then sidecars),
-- and a reload keeps a pod whole (the same manifest, the same pod: it
-- runs on untouched) or replaces it whole (the old pod stops, then the
-- new one starts from its first init container).
--
-- A library user (plain `lua5.4`) declares into the default load, which
-- `sonde.run()` starts; once stopped, the next declarations go into a new
-- default load.
-- @module sonde.config
local validate = require "sonde.validate"
local log = require "sonde.log"
local task = require "sonde.task"
local metrics = require "sonde.metrics"
local probe = require "sonde.probe"
local service = require "sonde.service"
local ticker = require "sonde.ticker"

local M = {}
local Config = {}
Config.__index = Config
M.Config = Config

local fmt = string.format

--- Seconds a script's top level may run before it finishes or first
-- waits (a script stuck in a loop fails to load instead of wedging the
-- host).
M.load_bound = 10

--- A new, empty load.
-- @tparam[opt] table opts `name` (the script, for messages), `dry` (true:
-- nothing it calls starts anything: `sonde check`), `scope` (use this
-- scope instead of a new one)
function M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    name = opts.name or "script", probes = {}, services = {},
    probe_by_name = {}, service_by_name = {}, registry = metrics.registry(),
    pods = {}, pod_by_name = {}, groups = {},
    state = "loading",        -- loading, started, stopped
  }, Config)
  self.scope = opts.scope or task.scope { name = self.name, dry = opts.dry }
  self.scope.data = self
  return self
end

local default

--- The load that code running now belongs to: that of the running task,
-- hook or callback, else the default load of a library user.
function M.ambient()
  local cfg = task.current().data
  if cfg then return cfg end
  if not default then
    default = M.new { name = "default", scope = task.default }
  end
  return default
end

-- Add a declared probe or service (`what`) to the load; one declared
-- into a running load starts at once.
function Config:add(what, obj, start)
  local by_name, list = self[what .. "_by_name"], self[what .. "s"]
  if by_name[obj.name] then
    validate.raise(fmt("%s %q: name: declared twice", what, obj.name))
  end
  by_name[obj.name] = obj
  list[#list + 1] = obj
  if self.state == "started" then
    self:late(obj, what)
    start(obj)
  end
  return obj
end

--- Declare a service (see sonde.service).
-- @tparam table spec
-- @tparam[opt] table opts `{ pod = true }`: a pod's container, which its
-- pod starts (see `pod`), never the load
-- @raise on a bad spec or a name declared twice, at the user's line
function Config:service(spec, opts)
  self:open("sonde.service")
  local held = opts and opts.pod
  return self:add("service", service.new(spec),
    function(s) if not held then self:start_service(s) end end)
end

--- Declare a probe (see sonde.probe).
-- @raise on a bad spec, a service of another script or a name declared
-- twice, at the user's line
function Config:probe(spec)
  self:open("sonde.probe")
  local p = probe.new(spec, self)
  if p.service and self.service_by_name[p.service.name] ~= p.service then
    validate.raise(fmt("probe %q: service: %q is not a service declared by "
      .. "this script (sonde.service)", p.name, p.service.name))
  end
  return self:add("probe", p, function(x) x:start(0) end)
end

--- Declare a pod (sonde.podrun, made by sonde.pod from a manifest) whose
-- services this load already declared: the pod starts and stops them.
-- @raise on a pod name declared twice
function Config:pod(p)
  self:open("sonde.k8s.load")
  if self.pod_by_name[p.name] then
    validate.raise(fmt("pod %q: declared twice", p.name))
  end
  self.pod_by_name[p.name] = p
  self.pods[#self.pods + 1] = p
  if self.state == "started" then p:start() end
  return p
end

-- Declarations into a stopped load are refused.
function Config:open(where)
  if self.state == "stopped" then
    validate.raise(fmt("%s: the script's load (%s) was stopped or replaced",
      where, self.name))
  end
end

-- A declaration into a running load: started at once.  A script run as a
-- plain one (it declared nothing before it first waited) is warned.
function Config:late(obj, what)
  if #self.probes + #self.services == 1 then self.scope:hold() end
  if self.plain then
    log.event("warn", "late_declaration", { [what] = obj.name, detail =
      "declared after the script first waited: runs without the host's "
      .. "signal handling; declare " .. what .. "s before waiting" })
  end
end

-- Start probes that start together, those without an initial delay and
-- without a service spread over their first period.
local function start_probes(list)
  local free = {}
  for _, p in ipairs(list) do
    if not p.service and p.initial_delay == 0 then free[#free + 1] = p end
  end
  local rank = {}
  for i, p in ipairs(free) do rank[p] = ticker.spread(i, #free, p.period) end
  for _, p in ipairs(list) do p:start(rank[p] or 0) end
end

--- Start what the load declared: services first, then probes.  A stopped
-- load is not started again; a dry one (`sonde check`) never starts.
function Config:start()
  if self.state ~= "loading" or self.scope.dry then return end
  self.state = "started"
  if #self.probes + #self.services > 0 then self.scope:hold() end
  for _, s in ipairs(self.services) do
    if not s.pod then s:start() end
  end
  start_probes(self.probes)
  -- (after the probes: a pod waits on its sidecars' startup probes)
  for _, p in ipairs(self.pods) do p:start() end
end

--- Stop the load for good: probes (in-flight runs cancelled), tasks
-- closed, timers and operations cancelled, then services (SIGTERM,
-- SIGKILL after their grace).  `done()` is called once every service has
-- exited (at once when none runs).  Idempotent; a second `done` is called
-- too.  The first stop calls `self.on_stop()` at its end when set (the
-- host learns that a script stopped its own load).
function Config:stop(done)
  local was = self.state
  self.state = "stopped"
  if self == default then
    -- a library user goes on in a fresh default load
    default = nil
    task.default = task.scope { name = "default" }
  end
  if was ~= "stopped" then
    for _, p in ipairs(self.probes) do p:stop() end
  end
  self.scope:close()
  local left = 1
  local function one_done()
    left = left - 1
    if left == 0 and done then done() end
  end
  for _, s in ipairs(self.services) do
    if not s.pod then
      left = left + 1
      s:stop(one_done)
    end
  end
  for _, p in ipairs(self.pods) do
    left = left + 1
    p:stop(one_done)
  end
  one_done()
  if was ~= "stopped" and self.on_stop then self.on_stop() end
end

--- Load a script (a path, or a function that declares) into a new load
-- without starting it.  The script's top level runs as a task of the
-- load, bounded by `load_bound` seconds until it finishes or first waits;
-- what it declares by then is the load (later declarations join it).
-- @tparam string|function source
-- @tparam[opt] table args the script's `...`
-- @tparam[opt] table opts `name`, `dry` (see `new`)
-- @return the load, and its top-level task | nil, error message
function M.load(source, args, opts)
  opts = opts or {}
  local name = opts.name or (type(source) == "string" and source or "script")
  local chunk, err
  if type(source) == "function" then chunk = source
  else chunk, err = loadfile(source) end
  if not chunk then return nil, err end
  local cfg = M.new { name = name, dry = opts.dry }
  local failed
  local co = task.bounded(cfg.scope, chunk, M.load_bound, function(why, msg)
    failed = why == "error" and msg or fmt("%s: the script's top level %s",
      name, why == "deadline" and fmt("ran for more than %g s without "
        .. "finishing or waiting, and was stopped", M.load_bound)
      or "yielded by itself (use sonde.sleep)")
  end, table.unpack(args or {}))
  if failed then
    cfg:stop()
    return nil, failed
  end
  -- a script that waits goes on later without a bound
  task.unbound(co)
  return cfg, co
end

-- A stable text for a spec, to tell whether it changed on reload:
-- functions compare by their bytecode, services by name.  Raw access only
-- (no metamethod runs), so a spec cannot make a reload fail halfway.
local function text_of(v)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then
    return t .. ":" .. tostring(v)
  end
  return t
end

local function fingerprint(v, seen)
  seen = seen or {}
  local t = type(v)
  if t == "function" then
    local ok, code = pcall(string.dump, v, true)
    return "f:" .. (ok and code or "?")
  elseif t == "table" then
    if service.is(v) then return "svc:" .. v.name end
    if seen[v] then return "cycle" end
    seen[v] = true
    local keys = {}
    for k in next, v do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return text_of(a) < text_of(b) end)
    local parts = {}
    for i, k in ipairs(keys) do
      parts[i] = text_of(k) .. "=" .. fingerprint(rawget(v, k), seen)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return text_of(v)
end

--- A stable text for a value (a spec, a manifest's pod): equal values,
-- equal texts.
M.fingerprint = function(v) return fingerprint(v) end

-- Call fn once service `o`, being replaced, has exited: o's own process,
-- or, if o never started because it was itself waiting for the one
-- before it, that one's.
local function after_exit(o, fn)
  if o.waiting_for then return after_exit(o.waiting_for, fn) end
  o:stop(fn)
end

--- Start service `s` of this load; if a reload replaced a service of the
-- same name, once that one has exited (it may hold a port, a lock...).
function Config:start_service(s)
  local o = self.leaving and self.leaving[s.name]
  if not o then return s:start() end
  s.waiting_for = o
  after_exit(o, function()
    if s.waiting_for ~= o then return end
    s.waiting_for = nil
    if self.state == "started" and s.state == "new" then s:start() end
  end)
end

--- Replace the running load `old` by `new` (a reload): services and probes
-- whose spec did not change keep running with their state and counters;
-- the rest of `old` is ended (see the module doc) and `new` started.
-- What to keep is decided before anything changes.
-- @return new
function M.apply(old, new)
  local keep = {}         -- new object -> the old one it is replaced by
  -- a pod is kept whole, with its services, when its manifest is the same
  for _, p in ipairs(new.pods) do
    local o = old.pod_by_name[p.name]
    if o and o.fingerprint == p.fingerprint then keep[p] = o end
  end
  for _, s in ipairs(new.services) do
    local o = old.service_by_name[s.name]
    if s.pod or (o and o.pod) then
      if s.pod and o and keep[s.pod] and o.pod == keep[s.pod] then
        keep[s] = o
      end
    elseif o and fingerprint(o.spec) == fingerprint(s.spec) then
      keep[s] = o
    end
  end
  for _, p in ipairs(new.probes) do
    local o = old.probe_by_name[p.name]
    local svc = p.service and (keep[p.service] or p.service)
    if o and svc == o.service and fingerprint(o.spec) == fingerprint(p.spec) then
      keep[p] = o
    end
  end
  -- the new load takes the kept ones; the old keeps only what ends
  local kept = {}
  for _, what in ipairs { "pod", "service", "probe" } do
    local list, by_name = new[what .. "s"], new[what .. "_by_name"]
    for i, x in ipairs(list) do
      local o = keep[x]
      if o then
        if what == "probe" then o:adopt(x) end
        list[i], by_name[x.name], kept[o] = o, o, true
      elseif x.service then
        x.service = keep[x.service] or x.service
      end
    end
    local left, left_by_name = {}, {}
    for _, o in ipairs(old[what .. "s"]) do
      if not kept[o] then
        left[#left + 1], left_by_name[o.name] = o, o
      end
    end
    old[what .. "s"], old[what .. "_by_name"] = left, left_by_name
  end
  old.state = "stopped"
  new.leaving = {}
  for _, p in ipairs(old.probes) do p:stop() end
  for _, s in ipairs(old.services) do
    new.leaving[s.name] = s
    if not s.pod then s:stop() end
  end
  -- the pods replaced stop in their own order; the new ones start once
  -- every one of them is gone (a container may hold a port, a lock...)
  local leaving_pods = old.pods
  for _, p in ipairs(leaving_pods) do p:stop() end
  old.scope:close()
  new.state = "started"
  if #new.probes + #new.services > 0 then new.scope:hold() end
  for _, s in ipairs(new.services) do
    if s.state == "new" and not s.pod then new:start_service(s) end
  end
  local fresh = {}
  for _, p in ipairs(new.probes) do
    if not kept[p] then fresh[#fresh + 1] = p end
  end
  start_probes(fresh)
  for _, p in ipairs(new.pods) do
    if not kept[p] then p:start(leaving_pods) end
  end
  return new
end

--- Run every probe (or those named) once, without thresholds, hooks or
-- services; `done(results)` gets them in declaration order.
-- @return true | nil, error (no probe of that name)
function Config:once(names, done)
  local list = {}
  if names and #names > 0 then
    for _, n in ipairs(names) do
      local p = self.probe_by_name[n]
      if not p then return nil, fmt("no probe named %q", n) end
      list[#list + 1] = p
    end
  else
    list = self.probes
  end
  local results, left = {}, #list
  if left == 0 then done(results) return true end
  for i, p in ipairs(list) do
    p:run_once(function(r)
      results[i] = r
      left = left - 1
      if left == 0 then done(results) end
    end)
  end
  return true
end

--- True when the load declared neither probes nor services (nor
-- probes per target, sonde.probe_each).
function Config:empty()
  return #self.probes == 0 and #self.services == 0 and #self.groups == 0
end

---------------------------------------------------------------------------
-- Probes per target (sonde.each): declared and removed while running
---------------------------------------------------------------------------

--- Add a group of probes per target (sonde.each), which declares and
-- removes its probes itself as its targets change.
function Config:group(g)
  self:open("sonde.probe_each")
  self.groups[#self.groups + 1] = g
  return g
end

--- Stop the probes named in `names` and take them out of the load (their
-- series go with them); names of no probe are skipped.
-- @treturn integer how many were removed
function Config:remove_probes(names)
  local gone = {}
  for _, name in ipairs(names) do
    local p = self.probe_by_name[name]
    if p then
      gone[p] = true
      self.probe_by_name[name] = nil
    end
  end
  if next(gone) == nil then return 0 end
  local kept, n = {}, 0
  for _, p in ipairs(self.probes) do
    if not gone[p] then kept[#kept + 1] = p end
  end
  self.probes = kept
  for p in pairs(gone) do
    p:stop()
    n = n + 1
  end
  return n
end

return M
