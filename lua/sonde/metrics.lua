--- Metrics and health endpoints of the host (`sonde --listen ADDR`).
--
-- Endpoints (GET or HEAD; other methods 405, unknown paths 404; nothing
-- here changes state or runs anything):
--
--   * `/metrics`: Prometheus text exposition format 0.0.4;
--   * `/healthz`: 200 while the loop runs;
--   * `/readyz`: 200 when every readiness probe is ready, else 503 with the
--     names of those that are not, one per line;
--   * `/readyz/NAME`, `/livez/NAME`: 200 when that readiness / liveness
--     probe's state is success, 503 when not, 404 when there is no such
--     probe of that kind;
--   * `/status`: JSON `{ probes = { NAME = { kind, state, runs, counts,
--     last = result } }, services = { NAME = { state, restarts, pid,
--     instance } } }`.
--
-- Series (names follow blackbox_exporter where one exists; every probe
-- series has the labels `probe` and `kind`):
--
--   * `probe_success` 1 when the probe's state is success, else 0;
--   * `probe_duration_seconds` of the last run;
--   * `probe_http_status_code` of the last run (HTTP probes);
--   * `sonde_probe_runs_total{status}` runs by result status (counter);
--   * `sonde_probe_state{state}` 1 for the current state (success,
--     failure, unknown), 0 for the others;
--   * `sonde_probe_run_duration_seconds` histogram of run durations;
--   * `sonde_perfdata{probe,label,uom}`: performance data of the last run
--     of a `codes = "nagios"` exec probe, with `sonde_perfdata_warn`,
--     `_crit` (when the threshold is a plain number, not a range),
--     `_min` and `_max` beside it;
--   * `sonde_service_up{service}` 1 while running, `sonde_service_restarts_total{service}`;
--   * `sonde_build_info{version,lua}` 1;
--   * `process_resident_memory_bytes`, `process_cpu_seconds_total`,
--     `process_open_fds`, `process_max_fds`, `process_start_time_seconds`.
--
-- Scripts add their own with `sonde.metrics.gauge(name, help, labels)` and
-- `sonde.metrics.counter(name, help, labels)`.
-- @module sonde.metrics
local core = require "sonde.core"
local log = require "sonde.log"

local M = {}

local BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
local fmt = string.format

--- Escape a label value (exposition format: backslash, quote, newline).
function M.escape(v)
  return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"',
    ["\n"] = "\\n" }))
end

local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2^53 then
    return fmt("%d", v)
  end
  return fmt("%.17g", v)
end

local function labels(t, keys)
  if not keys or #keys == 0 then return "" end
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = fmt('%s="%s"', k, M.escape(t[k] or ""))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

---------------------------------------------------------------------------
-- Per-probe accounting (called by the probe worker for every result)
---------------------------------------------------------------------------

--- Count one result of probe `p`.
function M.observe(p, r)
  local s = p.stats
  if not s then
    s = { counts = { success = 0, warning = 0, failure = 0, unknown = 0 },
          buckets = {}, sum = 0, n = 0 }
    for i = 1, #BUCKETS do s.buckets[i] = 0 end
    p.stats = s
  end
  s.counts[r.status] = (s.counts[r.status] or 0) + 1
  local d = tonumber(r.duration) or 0
  s.sum, s.n = s.sum + d, s.n + 1
  for i, b in ipairs(BUCKETS) do
    if d <= b then s.buckets[i] = s.buckets[i] + 1 end
  end
end

---------------------------------------------------------------------------
-- Script-defined series
---------------------------------------------------------------------------

local custom = {}      -- name -> series, in declaration order in `order`
local order = {}
local RESERVED = { probe_ = true, sonde_ = true, process_ = true }

local Series = {}
Series.__index = Series

local function key_of(self, values)
  local parts = {}
  for i, l in ipairs(self.labels) do
    local v = values and values[l]
    if v == nil then
      error(fmt("metric %s: label %s has no value", self.name, l), 3)
    end
    parts[i] = tostring(v)
  end
  return table.concat(parts, "\0")
end

--- Set a gauge: `g:set(value, { label = value, ... })`.
function Series:set(v, values)
  if self.kind ~= "gauge" then error("set: " .. self.name .. " is a counter", 2) end
  if type(v) ~= "number" then error("set: number expected", 2) end
  local k = key_of(self, values)
  self.values[k] = { v = v, l = values }
end

--- Add to a counter (default 1; never negative).
function Series:inc(n, values)
  n = n or 1
  if type(n) ~= "number" or n < 0 then
    error("inc: a non-negative number expected", 2)
  end
  local k = key_of(self, values)
  local e = self.values[k] or { v = 0, l = values }
  e.v = e.v + n
  self.values[k] = e
end

local function new_series(kind, name, help, lbls)
  if type(name) ~= "string" or not name:find("^[a-zA-Z_:][a-zA-Z0-9_:]*$") then
    error(fmt("sonde.metrics.%s: name: not a valid metric name: %s", kind,
      tostring(name)), 3)
  end
  for prefix in pairs(RESERVED) do
    if name:sub(1, #prefix) == prefix then
      error(fmt("sonde.metrics.%s: name: %s is reserved for sonde's own "
        .. "series", kind, prefix), 3)
    end
  end
  if kind == "counter" and not name:find("_total$") then
    error(fmt("sonde.metrics.counter: name: counters end in _total, got %s",
      name), 3)
  end
  if custom[name] then
    error(fmt("sonde.metrics.%s: name: %s is already defined", kind, name), 3)
  end
  lbls = lbls or {}
  for i, l in ipairs(lbls) do
    if type(l) ~= "string" or not l:find("^[a-zA-Z_][a-zA-Z0-9_]*$")
        or l:sub(1, 2) == "__" then
      error(fmt("sonde.metrics.%s: labels[%d]: not a valid label name: %s",
        kind, i, tostring(l)), 3)
    end
  end
  local s = setmetatable({ kind = kind, name = name,
    help = help and tostring(help) or name, labels = lbls, values = {} },
    Series)
  custom[name] = s
  order[#order + 1] = s
  return s
end

--- A gauge series: `sonde.metrics.gauge("queue_depth", "help", {"queue"})`.
-- @raise on an invalid or reserved name (probe_, sonde_, process_)
function M.gauge(name, help, lbls) return new_series("gauge", name, help, lbls) end

--- A counter series (name ending in `_total`).
function M.counter(name, help, lbls) return new_series("counter", name, help, lbls) end

---------------------------------------------------------------------------
-- Rendering
---------------------------------------------------------------------------

local function help_escape(s)
  return (s:gsub("\\", "\\\\"):gsub("\n", "\\n"))
end

--- The /metrics text for a configuration.
function M.render(cfg)
  local out = {}
  local function family(name, kind, help)
    out[#out + 1] = fmt("# HELP %s %s", name, help_escape(help))
    out[#out + 1] = fmt("# TYPE %s %s", name, kind)
  end
  local function sample(name, lbl, v)
    out[#out + 1] = name .. lbl .. " " .. num(v)
  end
  local PK = { "probe", "kind" }
  local probes = cfg.probes
  local function pl(p) return labels({ probe = p.name, kind = p.kind }, PK) end
  family("probe_success", "gauge", "1 when the probe's state is success.")
  for _, p in ipairs(probes) do
    sample("probe_success", pl(p), p.state == "success" and 1 or 0)
  end
  family("probe_duration_seconds", "gauge", "Duration of the last run.")
  for _, p in ipairs(probes) do
    if p.last_result then
      sample("probe_duration_seconds", pl(p), p.last_result.duration or 0)
    end
  end
  family("probe_http_status_code", "gauge", "HTTP status of the last run.")
  for _, p in ipairs(probes) do
    if p.handler == "http_get" and p.last_result then
      sample("probe_http_status_code", pl(p),
        p.last_result.http_status or 0)
    end
  end
  family("sonde_probe_runs_total", "counter", "Probe runs by result status.")
  for _, p in ipairs(probes) do
    for _, st in ipairs { "success", "warning", "failure", "unknown" } do
      local c = p.stats and p.stats.counts[st] or 0
      sample("sonde_probe_runs_total", labels({ probe = p.name, kind = p.kind,
        status = st }, { "probe", "kind", "status" }), c)
    end
  end
  family("sonde_probe_state", "gauge", "1 for the probe's current state.")
  for _, p in ipairs(probes) do
    for _, st in ipairs { "success", "failure", "unknown" } do
      sample("sonde_probe_state", labels({ probe = p.name, kind = p.kind,
        state = st }, { "probe", "kind", "state" }), p.state == st and 1 or 0)
    end
  end
  family("sonde_probe_run_duration_seconds", "histogram",
    "Durations of probe runs.")
  for _, p in ipairs(probes) do
    local s = p.stats
    for i, b in ipairs(BUCKETS) do
      sample("sonde_probe_run_duration_seconds_bucket", labels({ probe = p.name,
        kind = p.kind, le = num(b) }, { "probe", "kind", "le" }),
        s and s.buckets[i] or 0)
    end
    sample("sonde_probe_run_duration_seconds_bucket", labels({ probe = p.name,
      kind = p.kind, le = "+Inf" }, { "probe", "kind", "le" }), s and s.n or 0)
    sample("sonde_probe_run_duration_seconds_sum", pl(p), s and s.sum or 0)
    sample("sonde_probe_run_duration_seconds_count", pl(p), s and s.n or 0)
  end
  -- Nagios plugin performance data of each probe's last run
  local PERF = { { "sonde_perfdata", "value", "Plugin performance data value." },
    { "sonde_perfdata_warn", "warn_value", "Plugin warning threshold (plain numbers only)." },
    { "sonde_perfdata_crit", "crit_value", "Plugin critical threshold (plain numbers only)." },
    { "sonde_perfdata_min", "min", "Plugin minimum." },
    { "sonde_perfdata_max", "max", "Plugin maximum." } }
  local PL = { "probe", "label", "uom" }
  for _, m in ipairs(PERF) do
    local first = true
    for _, p in ipairs(probes) do
      local pd = p.last_result and p.last_result.perfdata
      local seen = {}              -- a repeated label: the first one counts
      for _, item in ipairs(pd or {}) do
        local key = item.label .. "\0" .. item.uom
        if item[m[2]] ~= nil and not seen[key] then
          seen[key] = true
          if first then family(m[1], "gauge", m[3]) first = false end
          sample(m[1], labels({ probe = p.name, label = item.label,
            uom = item.uom }, PL), item[m[2]])
        end
      end
    end
  end
  family("sonde_service_up", "gauge", "1 while the service's process runs.")
  for _, s in ipairs(cfg.services) do
    sample("sonde_service_up", labels({ service = s.name }, { "service" }),
      s.state == "running" and 1 or 0)
  end
  family("sonde_service_restarts_total", "counter", "Restarts of the service.")
  for _, s in ipairs(cfg.services) do
    sample("sonde_service_restarts_total", labels({ service = s.name },
      { "service" }), s.restarts)
  end
  family("sonde_build_info", "gauge", "sonde's version; always 1.")
  sample("sonde_build_info", labels({ version = core.version, lua = _VERSION },
    { "version", "lua" }), 1)
  local ps = core.process_stats()
  local PROC = {
    { "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", "rss_bytes" },
    { "process_cpu_seconds_total", "counter", "User and system CPU time in seconds.", "cpu_seconds" },
    { "process_open_fds", "gauge", "Open file descriptors.", "open_fds" },
    { "process_max_fds", "gauge", "Maximum number of open file descriptors.", "max_fds" },
    { "process_start_time_seconds", "gauge", "Start time since the epoch in seconds.", "start_time_seconds" },
  }
  for _, m in ipairs(PROC) do
    if ps[m[4]] then
      family(m[1], m[2], m[3])
      sample(m[1], "", ps[m[4]])
    end
  end
  for _, s in ipairs(order) do
    family(s.name, s.kind, s.help)
    local keys = {}
    for k in pairs(s.values) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local e = s.values[k]
      sample(s.name, labels(e.l or {}, s.labels), e.v)
    end
  end
  return table.concat(out, "\n") .. "\n"
end

--- The /status table for a configuration.
function M.status(cfg)
  local probes, services = {}, {}
  for _, p in ipairs(cfg.probes) do
    local last
    if p.last_result then
      last = {}
      for k, v in pairs(p.last_result) do
        if type(v) ~= "function" and type(v) ~= "table" then last[k] = v end
      end
    end
    probes[p.name] = { kind = p.kind, state = p.state, runs = p.runs,
      counts = p.stats and p.stats.counts or {}, streak = p.run,
      service = p.service and p.service.name or nil, last = last }
  end
  for _, s in ipairs(cfg.services) do
    services[s.name] = { state = s.state, restarts = s.restarts, pid = s.pid,
      instance = s.instance }
  end
  return { probes = probes, services = services, version = core.version }
end

---------------------------------------------------------------------------
-- The HTTP handler
---------------------------------------------------------------------------

local function find(cfg, name, kind)
  local p = cfg.probe_by_name[name]
  if p and p.kind == kind then return p end
end

local function route(cfg, method, path)
  if method ~= "GET" and method ~= "HEAD" then
    return 405, "method not allowed\n"
  end
  if path == "/metrics" then
    return 200, M.render(cfg), "text/plain; version=0.0.4; charset=utf-8"
  elseif path == "/healthz" then
    return 200, "ok\n"
  elseif path == "/readyz" then
    local bad = {}
    for _, p in ipairs(cfg.probes) do
      if p.kind == "readiness" and p.state ~= "success" then
        bad[#bad + 1] = p.name
      end
    end
    if #bad == 0 then return 200, "ok\n" end
    return 503, "not ready:\n" .. table.concat(bad, "\n") .. "\n"
  elseif path == "/status" then
    return 200, log.json(M.status(cfg)) .. "\n", "application/json"
  end
  local which, name = path:match("^/(%a+)z/(.+)$")
  if name then                     -- the path comes percent-encoded
    name = name:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  local kind = which == "ready" and "readiness" or which == "live" and "liveness"
  if kind then
    local p = find(cfg, name, kind)
    if not p then return 404, "no " .. kind .. " probe named " .. name .. "\n" end
    if p.state == "success" then return 200, "ok\n" end
    return 503, p.state .. "\n"
  end
  return 404, "not found\n"
end

--- Serve the endpoints on host:port (port 0: any free port).
-- @return the bound port | nil, error
function M.listen(host, port, get_cfg)
  return core.listen(host, port, function(method, path)
    local ok, status, body, ctype = pcall(route, get_cfg(), method, path)
    if not ok then
      log.event("error", "http_error", { path = path, error = tostring(status) })
      return 500, "internal error\n"
    end
    return status, body, ctype
  end)
end

return M
