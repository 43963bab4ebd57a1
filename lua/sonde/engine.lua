--- The engine: the set of declared services and probes, and what starts,
-- stops and reloads them.
--
-- Declarations (`sonde.probe`, `sonde.service`) go into the configuration
-- being loaded.  A library user's declarations start when `sonde.run()` is
-- called (or at once if the engine is already started); the host loads a
-- script, then starts what it declared.
-- @module sonde.engine
local core = require "sonde.core"
local log = require "sonde.log"
local probe = require "sonde.probe"
local service = require "sonde.service"

local M = {}

local function new_config()
  return { probes = {}, services = {}, probe_by_name = {},
           service_by_name = {}, started = false }
end

M.current = new_config()    -- the running configuration
M.loading = M.current       -- where declarations go

--- Declare a service (see sonde.service).  Returns the service object.
-- @raise on a bad spec or a duplicate name
function M.service(spec)
  local s = service.new(spec)
  local cfg = M.loading
  if cfg.service_by_name[s.name] then
    error(string.format("service %q: name: declared twice", s.name), 2)
  end
  cfg.service_by_name[s.name] = s
  cfg.services[#cfg.services + 1] = s
  if cfg.plain then
    log.event("warn", "late_declaration", { service = s.name, detail =
      "declared after the script first waited: runs without the host's "
      .. "signal handling; declare services before waiting" })
  end
  if cfg.started then s:start() end
  return s
end

--- Declare a probe (see sonde.probe).  Returns the probe object.
-- @raise on a bad spec or a duplicate name
function M.probe(spec)
  local p = probe.new(spec)
  local cfg = M.loading
  if p.service and cfg.service_by_name[p.service.name] ~= p.service then
    error(string.format("probe %q: service: %q is not a service declared "
      .. "by this script (sonde.service)", p.name, p.service.name), 2)
  end
  if cfg.probe_by_name[p.name] then
    error(string.format("probe %q: name: declared twice", p.name), 2)
  end
  cfg.probe_by_name[p.name] = p
  cfg.probes[#cfg.probes + 1] = p
  if cfg.plain then
    log.event("warn", "late_declaration", { probe = p.name, detail =
      "declared after the script first waited: runs without the host's "
      .. "signal handling; declare probes before waiting" })
  end
  if cfg.started then p:start(0) end
  return p
end

-- Spread over their first period the probes without an initial delay
-- that start together (no service: they start now).
local function start_probes(list)
  local free = {}
  for _, p in ipairs(list) do
    if not p.service and p.initial_delay == 0 then free[#free + 1] = p end
  end
  local rank = {}
  for i, p in ipairs(free) do rank[p] = (i - 1) / #free end
  for _, p in ipairs(list) do p:start((rank[p] or 0) * p.period) end
end

--- Start a configuration: services first, then probes.
function M.start(cfg)
  cfg = cfg or M.current
  if cfg.started or cfg.stopped then return end
  cfg.started = true
  for _, s in ipairs(cfg.services) do s:start() end
  start_probes(cfg.probes)
end

--- Stop everything of a configuration: probes (in-flight runs
-- cancelled), then services (SIGTERM, SIGKILL after grace).  `done()` is
-- called when every service has exited.
function M.stop(cfg, done)
  cfg = cfg or M.current
  cfg.started = false
  cfg.stopped = true       -- sonde.run() does not start it again
  for _, p in ipairs(cfg.probes) do p:stop() end
  local left = #cfg.services
  if left == 0 then if done then done() end return end
  for _, s in ipairs(cfg.services) do
    s:stop(function()
      left = left - 1
      if left == 0 and done then done() end
    end)
  end
end

--- Load a script (a path, or a function that declares) into a new
-- configuration without starting it.  The script runs as a sonde task;
-- what it declares before it first waits is the configuration (what it
-- declares later goes into the running configuration).
-- @return cfg, the script's task | nil, error message
function M.load(path, args)
  local sonde = require "sonde"
  local chunk, err
  if type(path) == "function" then chunk = path
  else chunk, err = loadfile(path) end
  if not chunk then return nil, err end
  local cfg = new_config()
  local saved = M.loading
  M.loading = cfg
  local aborted
  local ok, co = pcall(sonde._bounded_task, chunk, M.load_bound,
    function(why) aborted = why end, table.unpack(args or {}))
  M.loading = saved
  if not ok then return nil, co end
  if aborted then
    return nil, string.format("%s: the script's top level %s", path,
      aborted == "deadline" and string.format("ran for more than %g s "
        .. "without finishing or waiting, and was stopped", M.load_bound)
      or "yielded by itself (use sonde.sleep)")
  end
  -- a script that waits goes on later without a bound
  if coroutine.status(co) == "suspended" then core.clear_deadline(co) end
  return cfg, co
end

--- Seconds a script's top level may run before it finishes or first
-- waits (a script stuck in a loop fails to load instead of wedging the
-- host).
M.load_bound = 10

-- A stable text for a spec, to tell whether it changed on reload:
-- functions compare by their bytecode, services by name.
local function fingerprint(v, seen)
  seen = seen or {}
  local t = type(v)
  if t == "function" then
    local ok, code = pcall(string.dump, v, true)
    return "f:" .. (ok and code or tostring(v))
  elseif t == "table" then
    if getmetatable(v) == service.Service then return "svc:" .. v.name end
    if seen[v] then return "cycle" end
    seen[v] = true
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do
      parts[#parts + 1] = tostring(k) .. "=" .. fingerprint(v[k], seen)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return t .. ":" .. tostring(v)
end
M.fingerprint = fingerprint

--- Replace the running configuration by `new`: services and probes whose
-- spec did not change keep running with their state and counters; the
-- others are stopped, and the new ones started.
function M.apply(new)
  local old = M.current
  -- services
  for i, s in ipairs(new.services) do
    local o = old.service_by_name[s.name]
    if o and fingerprint(o.spec) == fingerprint(s.spec) then
      new.services[i] = o
      new.service_by_name[s.name] = o
      o.kept = true
    end
  end
  for i, p in ipairs(new.probes) do
    local o = old.probe_by_name[p.name]
    local svc_kept = not p.service or new.service_by_name[p.service.name]
      == (o and o.service)
    if o and svc_kept and fingerprint(o.spec) == fingerprint(p.spec) then
      new.probes[i] = o
      new.probe_by_name[p.name] = o
      o.kept = true
    elseif p.service then
      p.service = new.service_by_name[p.service.name] or p.service
    end
  end
  for _, p in ipairs(old.probes) do
    if not p.kept then p:stop() end
    p.kept = nil
  end
  local replaced = {}     -- name -> old service still on its way out
  for _, s in ipairs(old.services) do
    if not s.kept then
      s:stop()
      if new.service_by_name[s.name] then replaced[s.name] = s end
    end
    s.kept = nil
  end
  M.current, M.loading = new, new
  new.started = true
  local fresh = {}
  for _, s in ipairs(new.services) do
    if s.state == "new" then
      local o = replaced[s.name]
      if o then
        -- the new instance starts once the old one has exited (it may
        -- hold a port, a lock...)
        o:stop(function()
          if M.current == new and s.state == "new" then s:start() end
        end)
      else
        s:start()
      end
    end
  end
  for _, p in ipairs(new.probes) do
    if p.timer == nil and p.first_at == nil then fresh[#fresh + 1] = p end
  end
  start_probes(fresh)
end

--- Run every probe of cfg (or those named) once, without thresholds,
-- hooks or services; `done(results)` gets them in declaration order.
function M.once(cfg, names, done)
  local list = {}
  if names and #names > 0 then
    for _, n in ipairs(names) do
      local p = cfg.probe_by_name[n]
      if not p then return nil, string.format("no probe named %q", n) end
      list[#list + 1] = p
    end
  else
    list = cfg.probes
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

return M
