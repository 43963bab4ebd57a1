--- The metrics registry: per-probe accounting, script-defined series, and
-- the Prometheus text exposition (format 0.0.4) of a load, served by
-- sonde.endpoints on `/metrics`.
--
-- Series (names, HELP texts and meanings follow blackbox_exporter v0.23
-- where one exists).  Every series of a declared probe has the labels
-- `probe` and `kind`; a probe with a network target also `target` (the
-- URL of an http_get, its password masked; `host:port` of a tcp_socket or
-- grpc; the host of an icmp; exec and check probes have none, see
-- M.TARGETS) and `instance`, the target too unless its `labels` give
-- `instance` (`""`: none); then the probe's own `labels` (sonde.probe
-- `labels = { team = "web" }`).  A Prometheus that
-- scrapes with `honor_labels: true` keeps that `instance`, so dashboards
-- made for blackbox_exporter (which group by `instance`) find each target;
-- without it Prometheus keeps it as `exported_instance`.
--
--   * `probe_success` the last run's outcome: 1 for success or warning,
--     0 for failure or unknown; absent before the first run (the state
--     after the thresholds is `sonde_probe_state`);
--   * `probe_duration_seconds` of the last run;
--   * `probe_http_status_code` of the last run (HTTP probes);
--   * for HTTP probes, from the last run: `probe_http_duration_seconds{
--     phase}` (resolve, connect, tls, processing, transfer, summed over
--     redirects), `probe_http_content_length` (the final response's
--     Content-Length, -1 when it had none, 0 when no response came),
--     `probe_http_uncompressed_body_length` (bytes of the final body
--     received, decoded), `probe_http_redirects`, `probe_http_ssl` (1 when
--     the final response came over TLS), `probe_http_version` (1, 1.1, 2;
--     0 when no response came);
--   * `probe_ip_protocol` 4 or 6 (0: no connection made) for HTTP, TCP,
--     gRPC, ICMP and DNS probes; `probe_dns_lookup_time_seconds` for HTTP
--     and ICMP probes (their resolve phase) and DNS probes (the query's
--     time);
--   * `probe_grpc_status_code` of the last run (gRPC probes; -1 when no
--     grpc-status came) and `probe_grpc_healthcheck_response{
--     serving_status}` 1 for the serving status the last run received
--     (UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN), 0 for the others
--     (all 0 when none was received), as blackbox_exporter's grpc prober;
--   * ICMP probes (blackbox_exporter 0.23's icmp prober), from the last
--     run: `probe_icmp_duration_seconds{phase}` (resolve, setup, rtt;
--     seconds, 0 for a phase not reached), `probe_icmp_reply_hop_limit`
--     (the reply's TTL / hop limit; only after a reply that told it) and
--     `probe_ip_addr_hash` (FNV-1a 32 of the address probed);
--   * for dns probes, blackbox_exporter's dns series:
--     `probe_dns_answer_rrs`, `probe_dns_authority_rrs`,
--     `probe_dns_additional_rrs` (0 when no reply came),
--     `probe_dns_query_succeeded` (1 when a reply came) and, for SOA
--     queries answered, `probe_dns_serial`;
--   * for probes whose last result came over TLS (HTTPS, TCP with `tls`),
--     blackbox_exporter's series: `probe_ssl_earliest_cert_expiry`,
--     `probe_ssl_last_chain_expiry_timestamp_seconds` (only when the chain
--     verified), `probe_ssl_last_chain_info{fingerprint_sha256,subject,
--     issuer,subjectalternative,serialnumber}` 1,
--     `probe_tls_version_info{version}` 1, `probe_tls_cipher_info{cipher}`
--     1;
--   * probes of a blackbox_exporter module (`sonde.probe { module =
--     sonde.module(NAME), target = T }`): the series /probe answers for
--     their last run (blackbox_exporter's, per prober), with the probe's
--     labels before the module's own, in the families of the same name;
--   * `sonde_probe_runs_total{status}` runs by result status (counter);
--   * `sonde_probe_state{state}` 1 for the current state (success,
--     failure, unknown), 0 for the others;
--   * `sonde_probe_run_duration_seconds` histogram of run durations;
--   * `sonde_perfdata{probe,label,uom}` (and the probe's own labels):
--     performance data of the last run of a `codes = "nagios"` exec
--     probe, with `sonde_perfdata_warn`, `_crit` (when the threshold is a
--     plain number, not a range), `_min` and `_max` beside it;
--   * `sonde_service_up{service}` 1 while running, `sonde_service_restarts_total{service}`;
--   * `sonde_build_info{version,lua}` 1;
--   * `process_resident_memory_bytes`, `process_cpu_seconds_total`,
--     `process_open_fds`, `process_max_fds`, `process_start_time_seconds`.
--
-- Numbers print as Prometheus's Go client prints them (M.float: the
-- shortest text that reads back as the same double), so bucket bounds
-- read `le="0.005"`; integral values print as integers.
--
-- Scripts add their own series with `sonde.metrics.gauge(name, help,
-- labels)` and `sonde.metrics.counter(name, help, labels)`.  A series
-- belongs to the load of the script that defined it (see sonde.config): a
-- reload defines it anew, and only the running load's series are served.
-- @module sonde.metrics
local core = require "sonde.core"
local validate = require "sonde.validate"
local json = require "sonde.json"
local redact = require "sonde.redact"

local M = {}

-- bounds of the run-duration histogram, counted in place by the C worker
local BUCKETS = core.DURATION_BUCKETS
local fmt = string.format

local byte = string.byte
local REPLACEMENT = "\239\191\189"          -- U+FFFD
local LABEL_ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }

-- Valid UTF-8 with the exposition's escapes (`ESC`) applied; other control
-- bytes, for which the format has no escape, as the text `\xHH` (the
-- backslash escaped, so the value reads `\x01`).
local function text_escape(v, pattern, esc)
  if not v:find("[\\\"%c\128-\255]") then return v end  -- the common case
  v = json.valid_utf8(v, REPLACEMENT)
  return (v:gsub(pattern, function(c)
    return esc[c] or fmt("\\\\x%02X", byte(c))
  end))
end

--- Escape a label value (exposition format 0.0.4: backslash, quote and
-- newline escaped).  Whatever bytes it is given, the text is valid UTF-8
-- (Prometheus and promtool refuse anything else): an invalid byte becomes
-- U+FFFD, another control character the text `\xHH`.
-- @param v any value (tostring)
-- @treturn string
function M.escape(v)
  return text_escape(tostring(v), '[\\"%c]', LABEL_ESC)
end

--- A float as Prometheus prints it: Go's `strconv.FormatFloat(v, 'g', -1,
-- 64)`, the shortest text that reads back as the same double (`0.005`,
-- `2.5`, `1`, `1e+06`, `1.5e-07`), and `+Inf`, `-Inf`, `NaN`.  Bucket
-- bounds (`le`) must print so, or `{le="0.005"}` matches nothing.
-- @tparam number v
-- @treturn string
function M.float(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v == 0 then return (1 / v < 0) and "-0" or "0" end
  -- the shortest digits: a normal double's 15 significant digits always
  -- read back as it (%.15g, trailing zeros dropped below); else 16, else
  -- 17 (always exact).  Subnormals hold fewer digits: tried from 1 up.
  local e
  for p = math.abs(v) < 2.2250738585072014e-308 and 0 or 14, 16 do
    e = fmt("%." .. p .. "e", v)
    if tonumber(e) == v then break end
  end
  local sign, int, frac, exp = e:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (int .. frac):gsub("0+$", "")
  if digits == "" then digits = "0" end
  exp = tonumber(exp)
  -- Go's 'g' at the shortest precision: %e when exp < -4 or exp >= 6
  -- (strconv/ftoa.go: "if shortest { eprec = 6 }")
  if exp < -4 or exp >= 6 then
    local m = digits:sub(1, 1)
    if #digits > 1 then m = m .. "." .. digits:sub(2) end
    return fmt("%s%se%s%02d", sign, m, exp < 0 and "-" or "+", math.abs(exp))
  end
  if exp < 0 then
    return sign .. "0." .. string.rep("0", -exp - 1) .. digits
  end
  if #digits <= exp + 1 then
    return sign .. digits .. string.rep("0", exp + 1 - #digits)
  end
  return sign .. digits:sub(1, exp + 1) .. "." .. digits:sub(exp + 2)
end

-- A sample value: integers (and floats holding an integer below 2^53) as
-- integers, which read back exactly (`1764950000`, not Go's
-- `1.76495e+09`); other floats as M.float.
local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2^53 then
    return fmt("%d", v)
  end
  return M.float(v)
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
-- A declared probe's own labels: its target and the user's `labels`
---------------------------------------------------------------------------

--- Label names a probe's `labels` may not take: those sonde's probe series
-- set themselves, and `job` (the scrape's).  Names starting with `__` are
-- Prometheus's own.  `instance` may be given: it replaces the target.
M.RESERVED_LABELS = {
  probe = true, kind = true, target = true, job = true, le = true,
  quantile = true, status = true, state = true, phase = true,
  serving_status = true, fingerprint_sha256 = true, subject = true,
  issuer = true, subjectalternative = true, serialnumber = true,
  version = true, cipher = true, label = true, uom = true,
}

--- Check a probe's `labels` (sonde.probe): `{ team = "web", ... }`, label
-- names as Prometheus's ([a-zA-Z_][a-zA-Z0-9_]*, not `__...`, not one of
-- M.RESERVED_LABELS), values UTF-8 strings (`""`: no such label).
-- @raise naming the field (`labels.team: must be a string, got number`)
-- @treturn table a copy
function M.check_labels(ctx, v, field)
  if type(v) ~= "table" then
    validate.fail(ctx, field, "must be a table of label name = value, got %s",
      type(v))
  end
  local out = {}
  for k, val in pairs(v) do
    if type(k) ~= "string" then
      validate.fail(ctx, field, "label names must be strings, got %s %s",
        type(k), validate.show(k))
    end
    local f = field .. "." .. k
    if not k:find("^[a-zA-Z_][a-zA-Z0-9_]*$") then
      validate.fail(ctx, field, "not a valid label name: %s (Prometheus: "
        .. "[a-zA-Z_][a-zA-Z0-9_]*)", validate.show(k))
    end
    if k:sub(1, 2) == "__" then
      validate.fail(ctx, f, "names starting with __ are reserved for "
        .. "Prometheus")
    end
    if k == "job" then
      validate.fail(ctx, f, "is reserved: the scrape sets it (Prometheus's "
        .. "job_name)")
    elseif M.RESERVED_LABELS[k] then
      validate.fail(ctx, f, "is reserved: sonde's probe series set it")
    end
    if type(val) ~= "string" then
      validate.fail(ctx, f, "must be a string, got %s", type(val))
    end
    if not utf8.len(val) then validate.fail(ctx, f, "must be valid UTF-8") end
    out[k] = val
  end
  return out
end

local function host_port(o)
  local h = o.host
  if h:find(":", 1, true) and h:sub(1, 1) ~= "[" then h = "[" .. h .. "]" end
  return h .. ":" .. tostring(math.tointeger(o.port) or o.port)
end

--- The target of a declared probe, by handler, from its prepared options:
-- what it connects to (its `target` and, by default, `instance` label).
-- Handlers without a network target (exec, check) have none.
M.TARGETS = {
  http_get = function(o) return redact.url(o.url) end,   -- password masked
  tcp_socket = host_port,
  grpc = host_port,
  icmp = function(o) return o.host end,
  dns = function(o)
    return o.server and host_port { host = o.server, port = o.port or 53 }
  end,
}

--- The target of probe `p` (a sonde.probe), or nil.
function M.target(p)
  -- a probe of a blackbox_exporter module (sonde.probe { module, target })
  if rawget(p, "blackbox_target") then return p.blackbox_target end
  local f = M.TARGETS[p.handler]
  return f and p.opts and f(p.opts) or nil
end

---------------------------------------------------------------------------
-- Script-defined series
---------------------------------------------------------------------------

local RESERVED = { "probe_", "sonde_", "process_" }

local Series = {}
Series.__index = Series

local function key_of(self, values)
  local parts = {}
  for i, l in ipairs(self.labels) do
    local v = values and values[l]
    if v == nil then
      validate.raise(fmt("metric %s: label %s has no value", self.name, l))
    end
    parts[i] = tostring(v)
  end
  return table.concat(parts, "\0")
end

-- A copy of the label values, as strings: the caller may change its table.
function Series:label_values(values)
  local out = {}
  for _, l in ipairs(self.labels) do out[l] = tostring(values[l]) end
  return out
end

--- Set a gauge: `g:set(value, { label = value, ... })`.
-- @raise on a counter, a value that is not a number or a missing label
function Series:set(v, values)
  if self.kind ~= "gauge" then error("set: " .. self.name .. " is a counter", 2) end
  if type(v) ~= "number" then error("set: number expected", 2) end
  local k = key_of(self, values)
  self.values[k] = { v = v, l = self:label_values(values) }
end

--- Add to a counter or gauge (default 1; never negative).
-- @raise on a negative, NaN or non-number amount or a missing label
function Series:inc(n, values)
  n = n or 1
  if type(n) ~= "number" or not (n >= 0) then
    error("inc: a non-negative number expected", 2)
  end
  local k = key_of(self, values)
  local e = self.values[k] or { v = 0, l = self:label_values(values) }
  e.v = e.v + n
  self.values[k] = e
end

local Registry = {}
Registry.__index = Registry

--- A registry of script-defined series (one per load).
function M.registry()
  return setmetatable({ by_name = {}, order = {} }, Registry)
end

function Registry:define(kind, name, help, lbls)
  local where = "sonde.metrics." .. kind
  if type(name) ~= "string" or not name:find("^[a-zA-Z_:][a-zA-Z0-9_:]*$") then
    validate.raise(fmt("%s: name: not a valid metric name: %s", where,
      tostring(name)))
  end
  for _, prefix in ipairs(RESERVED) do
    if name:sub(1, #prefix) == prefix then
      validate.raise(fmt("%s: name: %s is reserved for sonde's own series",
        where, prefix))
    end
  end
  if kind == "counter" and not name:find("_total$") then
    validate.raise(fmt("%s: name: counters end in _total, got %s", where,
      name))
  end
  if self.by_name[name] then
    validate.raise(fmt("%s: name: %s is already defined", where, name))
  end
  lbls = lbls or {}
  if type(lbls) ~= "table" then
    validate.raise(fmt("%s: labels: a list of label names expected, got %s",
      where, type(lbls)))
  end
  for i, l in ipairs(lbls) do
    if type(l) ~= "string" or not l:find("^[a-zA-Z_][a-zA-Z0-9_]*$")
        or l:sub(1, 2) == "__" then
      validate.raise(fmt("%s: labels[%d]: not a valid label name: %s",
        where, i, tostring(l)))
    end
  end
  local s = setmetatable({ kind = kind, name = name,
    help = help and tostring(help) or name,
    labels = table.move(lbls, 1, #lbls, 1, {}), values = {} }, Series)
  self.by_name[name] = s
  self.order[#self.order + 1] = s
  return s
end

--- A gauge series of this registry: `reg:gauge("queue_depth", "help",
-- {"queue"})`.
-- @raise on an invalid, reserved (probe_, sonde_, process_) or repeated name
function Registry:gauge(name, help, lbls)
  return self:define("gauge", name, help, lbls)
end

--- A counter series (name ending in `_total`).
-- @raise like gauge
function Registry:counter(name, help, lbls)
  return self:define("counter", name, help, lbls)
end

---------------------------------------------------------------------------
-- Rendering
---------------------------------------------------------------------------

local HELP_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n" }
-- HELP text: backslash and newline escaped, valid UTF-8 (like labels).
local function help_escape(s)
  return text_escape(s, "[\\%c]", HELP_ESC)
end

local STATUSES = { "success", "warning", "failure", "unknown" }
local STATES = { "success", "failure", "unknown" }

-- The label sets of a probe's series, made once per probe (its name,
-- kind, target and labels never change: another spec is another probe):
-- `{probe="..",kind="..",<tail>}` and the same with status, state, phase,
-- le ...; `tail` is `,target="..",instance="..",team=".."` (target and
-- instance when the probe has a target, then the user's labels by name),
-- `clean` when escaping left the name as it was.
local label_cache = setmetatable({}, { __mode = "k" })
-- HealthCheckResponse.ServingStatus names (probe_grpc_healthcheck_response)
local SERVING = { "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" }
-- blackbox_exporter's HTTP phases (probe_http_duration_seconds)
local PHASES = { "resolve", "connect", "tls", "processing", "transfer" }

--- Handlers whose results carry `ip_protocol` (probe_ip_protocol).
M.IP_HANDLERS = { http_get = true, tcp_socket = true, grpc = true,
  icmp = true, dns = true }

--- By handler, the seconds a result's name lookup took
-- (probe_dns_lookup_time_seconds, one family for all of them): an HTTP
-- probe's resolve phase.
local function resolve_phase(r)
  return type(r.phases) == "table" and r.phases.resolve or 0
end
M.LOOKUP_TIME = { http_get = resolve_phase, icmp = resolve_phase,
  dns = function(r) return r.lookup_time or 0 end }

local function probe_tail(p)
  local parts = {}
  local target, user = M.target(p), p.labels or {}
  if target then parts[1] = fmt('target="%s"', M.escape(target)) end
  local instance = user.instance
  if instance == nil then instance = target end
  if instance and instance ~= "" then
    parts[#parts + 1] = fmt('instance="%s"', M.escape(instance))
  end
  local names = {}
  for k, v in pairs(user) do
    if k ~= "instance" and v ~= "" then names[#names + 1] = k end
  end
  table.sort(names)
  for _, k in ipairs(names) do
    parts[#parts + 1] = fmt('%s="%s"', k, M.escape(user[k]))
  end
  return #parts > 0 and "," .. table.concat(parts, ",") or ""
end

local function probe_labels(p)
  local c = label_cache[p]
  if c and c.name == p.name and c.kind == p.kind then return c end
  local name, kind = M.escape(p.name), M.escape(p.kind)
  local tail = probe_tail(p)
  local base = fmt('probe="%s",kind="%s"', name, kind) .. tail
  c = { name = p.name, kind = p.kind, clean = name == p.name, base = base,
        tail = tail, pl = "{" .. base .. "}", status = {}, state = {},
        le = {}, le_inf = fmt('{%s,le="+Inf"}', base) }
  for _, st in ipairs(STATUSES) do
    c.status[st] = fmt('{%s,status="%s"}', base, st)
  end
  for _, st in ipairs(STATES) do
    c.state[st] = fmt('{%s,state="%s"}', base, st)
  end
  c.serving = {}
  for _, st in ipairs(SERVING) do
    c.serving[st] = fmt('{%s,serving_status="%s"}', base, st)
  end
  c.phase = {}
  for _, ph in ipairs(PHASES) do
    c.phase[ph] = fmt('{%s,phase="%s"}', base, ph)
  end
  for i, b in ipairs(BUCKETS) do
    c.le[i] = fmt('{%s,le="%s"}', base, M.float(b))
  end
  label_cache[p] = c
  return c
end

--- The /metrics text of a load: its probes, services and series.
-- @tparam table cfg a load (sonde.config): `probes`, `services`, `registry`
-- @treturn string
-- The series of module probes' last runs (sonde.probe { module = ... }:
-- what blackbox_exporter's /probe answers for them, r.blackbox_fams), by
-- family name: { help, type, lines }, with each probe's labels before the
-- module's own.  probe_success and probe_duration_seconds are left out:
-- every probe has them.
local function module_families(probes, last)
  local mod
  for _, p in ipairs(probes) do
    local r = last[p]
    local fams = r and r.blackbox_fams
    if type(fams) == "table" then
      mod = mod or {}
      local c = probe_labels(p)
      for name, f in pairs(fams) do
        if name ~= "probe_success" and name ~= "probe_duration_seconds" then
          local m = mod[name]
          if not m then
            m = { help = f.help, type = f.type, lines = {} }
            mod[name] = m
          end
          local keys = {}
          for k in pairs(f.samples) do keys[#keys + 1] = k end
          table.sort(keys)
          for _, k in ipairs(keys) do
            local lbl = k == "" and c.pl or c.pl:sub(1, -2) .. "," .. k:sub(2)
            m.lines[#m.lines + 1] = name .. lbl .. " " .. num(f.samples[k])
          end
        end
      end
    end
  end
  return mod
end

function M.render(cfg)
  local out = {}
  -- module probes' families: their lines follow those of the family of
  -- the same name this renderer writes, or come on their own (below)
  local mod, pending
  local function flush()
    if pending then
      for _, l in ipairs(pending) do out[#out + 1] = l end
      pending = nil
    end
  end
  local function family(name, kind, help)
    flush()
    local m = mod and mod[name]
    if m and not m.done then
      m.done, pending = true, m.lines
    end
    out[#out + 1] = fmt("# HELP %s %s", name, help_escape(help))
    out[#out + 1] = fmt("# TYPE %s %s", name, kind)
  end
  -- Two series that print alike (label values that differ only in bytes
  -- the escaping replaced) would be a duplicate sample: the first counts.
  local seen = {}
  local function sample(name, lbl, v)
    local series = name .. lbl
    if seen[series] then return end
    seen[series] = true
    out[#out + 1] = series .. " " .. num(v)
  end
  -- A probe's own series: probe names are unique, so they can only print
  -- alike when escaping changed a name; then (rarely) `seen` decides.
  local probes = cfg.probes
  -- what the C workers hold, read once per probe
  local state, last, stats = {}, {}, {}
  for _, p in ipairs(probes) do
    state[p], last[p], stats[p] = p.state, p.last_result, p.stats
  end
  mod = module_families(probes, last)
  local clean = true
  for _, p in ipairs(probes) do
    if not probe_labels(p).clean then clean = false end
  end
  local function psample(_, name, lbl, v)
    if clean then
      out[#out + 1] = name .. lbl .. " " .. num(v)
    else
      sample(name, lbl, v)
    end
  end
  -- the last run's outcome, as blackbox_exporter's (1: success or
  -- warning); none before the first run.  The state after the thresholds
  -- is sonde_probe_state.
  family("probe_success", "gauge",
    "Displays whether or not the probe was a success")
  for _, p in ipairs(probes) do
    local r = last[p]
    if r then
      local c = probe_labels(p)
      psample(c, "probe_success", c.pl,
        (r.status == "success" or r.status == "warning") and 1 or 0)
    end
  end
  family("probe_duration_seconds", "gauge",
    "Returns how long the probe took to complete in seconds")
  for _, p in ipairs(probes) do
    if last[p] then
      local c = probe_labels(p)
      psample(c, "probe_duration_seconds", c.pl, last[p].duration or 0)
    end
  end
  family("probe_http_status_code", "gauge", "Response HTTP status code")
  for _, p in ipairs(probes) do
    if p.handler == "http_get" and last[p] then
      local c = probe_labels(p)
      psample(c, "probe_http_status_code", c.pl,
        last[p].http_status or 0)
    end
  end
  -- blackbox_exporter's HTTP series (prober/http.go, prober/utils.go,
  -- v0.23), from the last result of each http_get probe: 0 (-1 for the
  -- content length) where the run did not get that far, as blackbox_exporter
  local http = {}
  for _, p in ipairs(probes) do
    if p.handler == "http_get" and last[p] then http[#http + 1] = p end
  end
  if #http > 0 then
    family("probe_http_duration_seconds", "gauge",
      "Duration of http request by phase, summed over all redirects")
    for _, p in ipairs(http) do
      local c, ph = probe_labels(p), last[p].phases
      ph = type(ph) == "table" and ph or {}
      for _, name in ipairs(PHASES) do
        psample(c, "probe_http_duration_seconds", c.phase[name],
          tonumber(ph[name]) or 0)
      end
    end
    local function gauge(name, help, value)
      family(name, "gauge", help)
      for _, p in ipairs(http) do
        local c = probe_labels(p)
        psample(c, name, c.pl, value(last[p]))
      end
    end
    gauge("probe_http_content_length", "Length of http content response",
      function(r) return tonumber(r.content_length) or -1 end)
    gauge("probe_http_uncompressed_body_length",
      "Length of uncompressed response body",
      function(r) return tonumber(r.body_size) or 0 end)
    gauge("probe_http_redirects", "The number of redirects",
      function(r) return tonumber(r.redirects) or 0 end)
    gauge("probe_http_ssl", "Indicates if SSL was used for the final redirect",
      function(r) return type(r.tls) == "table" and 1 or 0 end)
    gauge("probe_http_version",
      "Returns the version of HTTP of the probe response",
      function(r) return tonumber(r.http_version) or 0 end)
  end
  -- One gauge family over the probes that have run whose handler is a key
  -- of `by` (nothing when none): value(p, r) of each.
  local function handler_gauge(name, help, by, value)
    local ps = {}
    for _, p in ipairs(probes) do
      if by[p.handler] and last[p] then ps[#ps + 1] = p end
    end
    if #ps == 0 then return end
    family(name, "gauge", help)
    for _, p in ipairs(ps) do
      local c = probe_labels(p)
      psample(c, name, c.pl, tonumber(value(p, last[p])) or 0)
    end
  end
  -- the time the lookup of the target's name took, one family for every
  -- handler that times one (M.LOOKUP_TIME)
  handler_gauge("probe_dns_lookup_time_seconds",
    "Returns the time taken for probe dns lookup in seconds", M.LOOKUP_TIME,
    function(p, r) return M.LOOKUP_TIME[p.handler](r) end)
  -- IP protocol of the connection (4 or 6; 0: none made), as
  -- blackbox_exporter's http, tcp and grpc probers give it
  handler_gauge("probe_ip_protocol",
    "Specifies whether probe ip protocol is IP4 or IP6", M.IP_HANDLERS,
    function(_, r) return r.ip_protocol end)
  family("probe_grpc_status_code", "gauge", "gRPC status of the last run "
    .. "(-1: none received).")
  for _, p in ipairs(probes) do
    if p.handler == "grpc" and last[p] then
      local c = probe_labels(p)
      psample(c, "probe_grpc_status_code", c.pl, last[p].grpc_status or -1)
    end
  end
  family("probe_grpc_healthcheck_response", "gauge", "1 for the serving "
    .. "status the last run received.")
  for _, p in ipairs(probes) do
    if p.handler == "grpc" and last[p] then
      local c = probe_labels(p)
      for _, st in ipairs(SERVING) do
        psample(c, "probe_grpc_healthcheck_response", c.serving[st],
          last[p].serving_status == st and 1 or 0)
      end
    end
  end
  -- blackbox_exporter's icmp series (prober/icmp.go, prober/utils.go
  -- chooseProtocol), for ICMP probes that have run
  local icmp = {}
  for _, p in ipairs(probes) do
    if p.handler == "icmp" and last[p] then icmp[#icmp + 1] = p end
  end
  if #icmp > 0 then
    local function with(c, k, v)   -- {probe=..,kind=..,k="v"}
      return c.pl:sub(1, -2) .. fmt(',%s="%s"}', k, v)
    end
    family("probe_icmp_duration_seconds", "gauge",
      "Duration of icmp request by phase")
    for _, p in ipairs(icmp) do
      local c, ph = probe_labels(p), last[p].phases or {}
      c.icmp_phase = c.icmp_phase or { resolve = with(c, "phase", "resolve"),
        setup = with(c, "phase", "setup"), rtt = with(c, "phase", "rtt") }
      for _, k in ipairs { "resolve", "setup", "rtt" } do
        psample(c, "probe_icmp_duration_seconds", c.icmp_phase[k], ph[k] or 0)
      end
    end
    family("probe_icmp_reply_hop_limit", "gauge",
      "Replied packet hop limit (TTL for ipv4)")
    for _, p in ipairs(icmp) do
      local r = last[p]
      if r.status == "success" and r.reply_ttl then
        local c = probe_labels(p)
        psample(c, "probe_icmp_reply_hop_limit", c.pl, r.reply_ttl)
      end
    end
    -- (probe_ip_protocol: with the other handlers', M.IP_HANDLERS)
    family("probe_ip_addr_hash", "gauge", "Specifies the hash of IP address. "
      .. "It's useful to detect if the IP address changes.")
    for _, p in ipairs(icmp) do
      local c = probe_labels(p)
      psample(c, "probe_ip_addr_hash", c.pl, last[p].ip_addr_hash or 0)
    end
  end
  -- blackbox_exporter's DNS series (prober/dns.go), for dns probes that
  -- have run: the counts are 0 and query_succeeded 0 when no reply came;
  -- probe_dns_serial only for SOA queries that got a reply (0 when no SOA
  -- answered), as blackbox_exporter registers it
  local dns = {}
  for _, p in ipairs(probes) do
    if p.handler == "dns" and last[p] then dns[#dns + 1] = p end
  end
  if #dns > 0 then
    local DNS = {
      { "probe_dns_answer_rrs", "Returns number of entries in the answer "
        .. "resource record list", function(r) return r.answer_rrs or 0 end },
      { "probe_dns_authority_rrs", "Returns number of entries in the "
        .. "authority resource record list",
        function(r) return r.authority_rrs or 0 end },
      { "probe_dns_additional_rrs", "Returns number of entries in the "
        .. "additional resource record list",
        function(r) return r.additional_rrs or 0 end },
      { "probe_dns_query_succeeded", "Displays whether or not the query was "
        .. "executed successfully", function(r) return r.rcode and 1 or 0 end },
    }
    for _, m in ipairs(DNS) do
      family(m[1], "gauge", m[2])
      for _, p in ipairs(dns) do
        local c = probe_labels(p)
        psample(c, m[1], c.pl, m[3](last[p]))
      end
    end
    local soa = {}
    for _, p in ipairs(dns) do
      if p.opts and p.opts.qtype == 6 and last[p].rcode then
        soa[#soa + 1] = p
      end
    end
    if #soa > 0 then
      family("probe_dns_serial", "gauge", "Returns the serial number of the "
        .. "zone")
      for _, p in ipairs(soa) do
        local c = probe_labels(p)
        psample(c, "probe_dns_serial", c.pl, last[p].serial or 0)
      end
    end
  end
  -- blackbox_exporter's TLS series (prober/http.go, prober/tls.go), for
  -- probes whose last result came over TLS
  local tls = {}
  for _, p in ipairs(probes) do
    -- (a module probe's TLS series are its module's: module_families)
    local t = last[p] and not last[p].blackbox_fams and last[p].tls
    if type(t) == "table" then tls[#tls + 1] = { p, t } end
  end
  if #tls > 0 then
    family("probe_ssl_earliest_cert_expiry", "gauge",
      "Returns last SSL chain expiry in unixtime")
    for _, e in ipairs(tls) do
      if e[2].earliest_expiry then
        local c = probe_labels(e[1])
        psample(c, "probe_ssl_earliest_cert_expiry", c.pl,
          e[2].earliest_expiry)
      end
    end
    family("probe_ssl_last_chain_expiry_timestamp_seconds", "gauge",
      "Returns last SSL chain expiry in timestamp")
    for _, e in ipairs(tls) do
      if e[2].last_chain_expiry then
        local c = probe_labels(e[1])
        psample(c, "probe_ssl_last_chain_expiry_timestamp_seconds", c.pl,
          e[2].last_chain_expiry)
      end
    end
    local function info(name, help, keys, values)
      family(name, "gauge", help)
      for _, e in ipairs(tls) do
        local lbl = labels(values(e[2]), keys)   -- {k="v",...}
        sample(name, "{" .. probe_labels(e[1]).base .. "," .. lbl:sub(2), 1)
      end
    end
    info("probe_ssl_last_chain_info", "Contains SSL leaf certificate information",
      { "fingerprint_sha256", "subject", "issuer",
        "subjectalternative", "serialnumber" }, function(t)
        return { fingerprint_sha256 = t.fingerprint_sha256,
          subject = t.subject, issuer = t.issuer,
          subjectalternative = table.concat(t.dns_names or {}, ","),
          serialnumber = t.serial }
      end)
    info("probe_tls_version_info",
      "Returns the TLS version used or NaN when unknown",
      { "version" }, function(t)
        return { version = t.version }
      end)
    info("probe_tls_cipher_info",
      "Returns the TLS cipher negotiated during handshake",
      { "cipher" }, function(t)
        return { cipher = t.cipher }
      end)
  end
  -- the module probes' families this renderer has no family for
  flush()
  if mod then
    local names = {}
    for n, m in pairs(mod) do
      if not m.done then names[#names + 1] = n end
    end
    table.sort(names)
    for _, n in ipairs(names) do
      family(n, mod[n].type, mod[n].help)    -- (its lines: pending)
    end
  end
  family("sonde_probe_runs_total", "counter", "Probe runs by result status.")
  for _, p in ipairs(probes) do
    local c = probe_labels(p)
    for _, st in ipairs(STATUSES) do
      psample(c, "sonde_probe_runs_total", c.status[st],
        stats[p].counts[st])
    end
  end
  family("sonde_probe_state", "gauge", "1 for the probe's current state.")
  for _, p in ipairs(probes) do
    local c = probe_labels(p)
    for _, st in ipairs(STATES) do
      psample(c, "sonde_probe_state", c.state[st], state[p] == st and 1 or 0)
    end
  end
  family("sonde_probe_run_duration_seconds", "histogram",
    "Durations of probe runs.")
  for _, p in ipairs(probes) do
    local s, c = stats[p], probe_labels(p)
    for i = 1, #BUCKETS do
      psample(c, "sonde_probe_run_duration_seconds_bucket", c.le[i],
        s and s.buckets[i] or 0)
    end
    psample(c, "sonde_probe_run_duration_seconds_bucket", c.le_inf,
      s and s.n or 0)
    psample(c, "sonde_probe_run_duration_seconds_sum", c.pl, s and s.sum or 0)
    psample(c, "sonde_probe_run_duration_seconds_count", c.pl, s and s.n or 0)
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
      local pd = last[p] and last[p].perfdata
      for _, item in ipairs(pd or {}) do  -- a repeated label: the first counts
        local lbl = labels({ probe = p.name, label = item.label,
          uom = item.uom }, PL)
        local tail = probe_labels(p).tail   -- target, user labels
        if tail ~= "" then lbl = lbl:sub(1, -2) .. tail .. "}" end
        if item[m[2]] ~= nil and not seen[m[1] .. lbl] then
          if first then family(m[1], "gauge", m[3]) first = false end
          sample(m[1], lbl, item[m[2]])
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
  for _, s in ipairs(cfg.registry and cfg.registry.order or {}) do
    family(s.name, s.kind, s.help)
    local keys = {}
    for k in pairs(s.values) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local e = s.values[k]
      sample(s.name, labels(e.l or {}, s.labels), e.v)
    end
  end
  local text = table.concat(out, "\n") .. "\n"
  for _, more in ipairs(M.extra) do text = text .. more() end
  return text
end

--- Functions called by each `render`, each returning exposition text
-- (whole families, each line ending in a newline, or ""): the series of
-- sonde's own subsystems (sonde.otlp's `sonde_otlp_*`), appended.
M.extra = {}

return M
