--- One declared probe per target: `sonde.probe_each`.
--
--   sonde.probe_each(sonde.targets.file_sd("web.json"), function(t)
--     return { http_get = { url = "http://" .. t.address .. "/health" },
--              period = 15, failure_threshold = 2 }
--   end, { shard = { 0, 3 } })
--
-- The function gets a target (see sonde.targets: `t.address`, `t.labels`,
-- `t.host`, `t.port`, `t.name`) and returns a probe spec (sonde.probe's
-- fields; `name` defaults to `t.name`), or nil for no probe.  The
-- target's labels not starting with `__` go on the probe's series (as
-- Prometheus puts a target group's labels on its targets' series), under
-- the spec's own `labels` (see M.labels).  When the
-- target list changes, without a reload: a new target gets its probe
-- (started at once); a target still there keeps its probe, with its state,
-- counters, thresholds and schedule (the function is not called again); a
-- target gone has its probe stopped and its series removed.  Targets are
-- told apart by all their labels (`t.key`): a target whose labels changed
-- is a new one (the function runs for it; the old probe goes).
--
-- An error in the function, or in the spec it returns, for one target is
-- logged (`probe_each_error`, with the target's address and labels) and
-- that target has no probe; the others go on.  It is tried again at the
-- next change of the list.  The function runs under a time bound (that of
-- hooks, sonde.hook) and cannot wait.
--
-- The group belongs to the script's load: a reload declares it anew (a
-- file_sd source is read during the load, so probes whose spec did not
-- change keep their state across it, as any probe); a stop ends it.
-- @module sonde.each
local validate = require "sonde.validate"
local log = require "sonde.log"
local task = require "sonde.task"
local hook = require "sonde.hook"
local targets = require "sonde.targets"
local metrics = require "sonde.metrics"

local M = {}
local Group = {}
Group.__index = Group
M.Group = Group

local fmt = string.format

--- Bound in seconds of one call of the spec function.
M.bound = 0.5

-- The spec as the function returned it (a table, taken as is: it is
-- sonde.probe's to check) or nil.
local function take(spec)
  if spec ~= nil and type(spec) ~= "table" then
    return nil, fmt("the function returned %s, expected a probe spec (a "
      .. "table) or nil", type(spec))
  end
  return spec
end

--- The labels of target t's probe: the target's own (those not starting
-- with `__`, as Prometheus attaches a target group's labels to every
-- series of its targets), less the names sonde's probe series set
-- themselves (metrics.RESERVED_LABELS), then the spec's `labels` over
-- them.  A spec's `labels` that is not a table is returned as is, for
-- sonde.probe to refuse.
-- @treturn table|nil
function M.labels(t, given)
  if given ~= nil and type(given) ~= "table" then return given end
  local out = {}
  for k, v in pairs(t.labels or {}) do
    if type(k) == "string" and k:sub(1, 2) ~= "__" and type(v) == "string"
        and not metrics.RESERVED_LABELS[k] and k ~= "job" then
      out[k] = v
    end
  end
  for k, v in pairs(given or {}) do out[k] = v end
  if next(out) == nil then return given end
  return out
end

--- Declare one probe per target of `src` into load `cfg`.
-- @tparam table cfg the load (sonde.config)
-- @param src a source (sonde.targets) or a list for sonde.targets.static
-- @tparam function fn target -> probe spec | nil
-- @tparam[opt] table opts `shard` (`{ i, n, source_labels =, separator =
-- }`, or false: no sharding; default: the host's `--shard`, unless src is
-- itself a shard)
-- @return the group: `g.probes` (target key -> probe name), `g:names()`
-- @raise on bad arguments
function M.new(cfg, src, fn, opts)
  local ctx = { where = "sonde.probe_each" }
  if not targets.is_source(src) then
    if type(src) ~= "table" then
      validate.fail(ctx, "targets", "must be a source (sonde.targets) or a "
        .. "list, got %s", type(src))
    end
    src = targets.static(src)
  end
  if type(fn) ~= "function" then
    validate.fail(ctx, "fn", "must be a function, got %s", type(fn))
  end
  opts = opts or {}
  validate.checks.table(ctx, opts, "opts")
  for k in pairs(opts) do
    if k ~= "shard" then validate.fail(ctx, tostring(k), "unknown option") end
  end
  local shard
  if opts.shard then
    shard = targets.check_shard("sonde.probe_each", opts.shard)
  elseif opts.shard == nil and targets.host_shard and not src.sharded then
    shard = targets.check_shard("--shard", targets.host_shard)
  end
  local self = setmetatable({ cfg = cfg, source = src, fn = fn,
    shard = shard, probes = {}, failed = {} }, Group)
  cfg:group(self)
  self:update(src:list())
  src:on_change(function(list) self:update(list) end)
  return self
end

--- The names of the group's probes, sorted.
function Group:names()
  local out = {}
  for _, name in pairs(self.probes) do out[#out + 1] = name end
  table.sort(out)
  return out
end

function Group:fail(t, err)
  log.event("error", "probe_each_error", { target = t.address,
    labels = t.key, error = err })
end

-- Declare the probe of target t: its name | nil, error.
function Group:declare(t)
  local ok, spec, bad = hook.call_with(take, self.fn, M.bound, t)
  if not ok then return nil, spec end
  if bad then return nil, bad end
  if spec == nil then return nil end
  -- (a copy: the function may return one table for every target)
  local copy = {}
  for k, v in next, spec do copy[k] = v end
  spec = copy
  if spec.name == nil then spec.name = t.name end
  spec.labels = M.labels(t, spec.labels)
  local pok, p = pcall(task.within, self.cfg.scope, self.cfg.probe, self.cfg,
    spec)
  if not pok then return nil, task.text_of(p):gsub("\nstack traceback:.*$", "") end
  return p.name
end

--- Follow a new list of targets: add, keep, remove (see the module doc).
function Group:update(list)
  local cfg = self.cfg
  if cfg.state == "stopped" then return end
  local want, order = {}, {}
  for _, t in ipairs(list) do
    if not want[t.key] and (not self.shard or targets.keeps(self.shard, t)) then
      want[t.key] = t
      order[#order + 1] = t
    end
  end
  local added, gone = 0, {}
  for key, name in pairs(self.probes) do
    if not want[key] then
      self.probes[key] = nil
      gone[#gone + 1] = name
    end
  end
  local removed = cfg:remove_probes(gone)
  for _, t in ipairs(order) do
    if not self.probes[t.key] then
      local name, err = self:declare(t)
      if name then
        self.probes[t.key] = name
        added = added + 1
      elseif err then
        self:fail(t, err)
      end
    end
  end
  if added + removed > 0 then
    log.event("info", "probe_each", { source = self.source.name,
      added = added, removed = removed, probes = #self:names() })
  end
end

return M
