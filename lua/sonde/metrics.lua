--- The metrics registry: per-probe accounting, script-defined series, and
-- the Prometheus text exposition (format 0.0.4) of a load, served by
-- sonde.endpoints on `/metrics`.
--
-- How a scrape is written: a declared probe's series are written by the C
-- core straight from its worker's live state (its last result, counters
-- and state; src/expo.c), family by family, a slice of about M.SLICE
-- bytes at a time (M.source, M.stream): the endpoint sends each slice as
-- it is made, gzip-compressed when the scraper accepts it, and the loop
-- runs probes between slices.  Nothing is rendered ahead or kept between
-- scrapes; the label pairs of each probe are made once, when it is
-- declared (M.prepare).  A family's lines are those of every probe at the
-- time that family is written: a run that ends during a scrape shows in
-- the families written after it.
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
--   * `sonde_probe_run_duration_seconds` histogram of run durations
--     (11 buckets; a probe with `metrics = { histogram = false }` has
--     none: 14 lines fewer per probe);
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
local log = require "sonde.log"

local M = {}

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

--- Check a probe's `metrics` options (sonde.probe `metrics = { histogram =
-- false }`): `histogram` (boolean, default true) writes its run-duration
-- histogram, `sonde_probe_run_duration_seconds` (11 buckets, +Inf, sum
-- and count: 14 of a TCP probe's 24 lines; without it a scrape of 10,000
-- TCP probes is about 40 % of the bytes).
-- @raise naming the field
-- @treturn table a copy
function M.check_options(ctx, v, field)
  if type(v) ~= "table" then
    validate.fail(ctx, field, "must be a table ({ histogram = false }), got %s",
      type(v))
  end
  local out = {}
  for k, val in pairs(v) do
    if k ~= "histogram" then
      validate.fail(ctx, field .. "." .. tostring(k), "unknown field (known: "
        .. "histogram)")
    end
    if type(val) ~= "boolean" then
      validate.fail(ctx, field .. "." .. k, "must be a boolean, got %s",
        type(val))
    end
    out[k] = val
  end
  return out
end

--- Give probe p's worker the label pairs of its series (sonde.probe
-- calls it once it is made, and again when its target changes): its
-- name, kind, target, instance and `labels`, escaped.  Done once per
-- probe, so that a scrape only reads numbers.
function M.prepare(p)
  local name = M.escape(p.name)
  local base = fmt('probe="%s",kind="%s"', name, M.escape(p.kind))
    .. probe_tail(p)
  local hist = not (p.metrics_opts and p.metrics_opts.histogram == false)
  rawset(p, "series_base", base)
  -- a name the escaping changed may print as another probe's (M.stream)
  rawset(p, "series_name", name ~= p.name and name or nil)
  p.worker:set_series(base, hist)
end

-- The workers whose series a load's /metrics writes, in its probes'
-- order: made again when its probe list changed.  The list changes by
-- appending (a declaration into a running load, sonde.probe_each) or by
-- being replaced (Config:remove_probes); a reload makes a new load.  So
-- the list table and its length tell a change.  Two probes whose names
-- print alike once escaped would write the same series: the second is
-- left out, and told once.
local function series_list(cfg)
  local c = rawget(cfg, "series_cache")
  local probes = cfg.probes
  if c and c.probes == probes and c.n == #probes then return c.ws end
  local ws, k, printed = {}, 0, nil
  for _, p in ipairs(probes) do
    if not rawget(p, "series_base") then M.prepare(p) end
    local name = rawget(p, "series_name")
    local ok = true
    if name then                 -- (rare: escaping changed the name)
      printed = printed or {}
      local by = cfg.probe_by_name
      if printed[name] or (by and by[name] and by[name] ~= p) then
        ok = false
        if not rawget(p, "series_clash") then
          rawset(p, "series_clash", true)
          log.event("warn", "metrics_name_clash", {
            probe = name, why = "its name prints as another probe's once "
              .. "escaped: its series are left out" })
        end
      end
      printed[name] = true
    end
    if ok then
      k = k + 1
      ws[k] = p.worker
    end
  end
  rawset(cfg, "series_cache", { probes = probes, n = #probes, ws = ws })
  return ws
end

-- Family indexes by name (core.expo_family).
local fam_index = {}
local function family_index(name, kind, help)
  local i = fam_index[name]
  if not i then
    i = core.expo_family(name, kind, help)
    fam_index[name] = i
  end
  return i
end


-- Nagios plugin performance data series: family, field of a perfdata item
local PERF = { { "sonde_perfdata", "value" }, { "sonde_perfdata_warn", "warn_value" },
  { "sonde_perfdata_crit", "crit_value" }, { "sonde_perfdata_min", "min" },
  { "sonde_perfdata_max", "max" } }
local PL = { "probe", "label", "uom" }

--- Set probe p's series that come from its last result `r` in Lua (the
-- worker writes the others): a nagios plugin's performance data
-- (`sonde_perfdata*`) and a blackbox_exporter module probe's series (what
-- /probe answers for its run, r.blackbox_fams, but probe_success and
-- probe_duration_seconds, which every probe has), each with the probe's
-- labels before its own.  sonde.probe calls it after each such result.
function M.set_extras(p, r)
  if not rawget(p, "series_base") then M.prepare(p) end
  local base = rawget(p, "series_base")
  local ex
  local function add(i, line)
    ex = ex or {}
    ex[i] = (ex[i] or "") .. line
  end
  local fams = r.blackbox_fams
  if type(fams) == "table" then
    local names = {}
    for name in pairs(fams) do
      if name ~= "probe_success" and name ~= "probe_duration_seconds" then
        names[#names + 1] = name
      end
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local f = fams[name]
      local i = family_index(name, f.type, f.help)
      local keys = {}
      for k in pairs(f.samples) do keys[#keys + 1] = k end
      table.sort(keys)
      local out = {}
      for _, k in ipairs(keys) do
        local lbl = k == "" and "{" .. base .. "}"
          or "{" .. base .. "," .. k:sub(2)
        out[#out + 1] = name .. lbl .. " " .. num(f.samples[k]) .. "\n"
      end
      add(i, table.concat(out))
    end
  end
  if type(r.perfdata) == "table" and #r.perfdata > 0 then
    local tail = probe_tail(p)
    for _, m in ipairs(PERF) do
      local seen = {}
      for _, item in ipairs(r.perfdata) do   -- a repeated label: the first
        local lbl = labels({ probe = p.name, label = item.label,
          uom = item.uom }, PL)
        if tail ~= "" then lbl = lbl:sub(1, -2) .. tail .. "}" end
        if item[m[2]] ~= nil and not seen[lbl] then
          seen[lbl] = true
          add(family_index(m[1], "gauge", ""), m[1] .. lbl .. " "
            .. num(item[m[2]]) .. "\n")
        end
      end
    end
  end
  if ex or rawget(p, "series_extras") then
    rawset(p, "series_extras", ex ~= nil)
    p.worker:set_series_extras(ex)
  end
end

--- Bytes of exposition a stream's producer gives per call (about).
M.SLICE = 65536

--- The /metrics text of a load, a slice at a time: a function that
-- returns the next text (about M.SLICE bytes, whole lines) at each call,
-- then nil.  The probes' series are written by the C core from their
-- workers' live state (src/lexpo.c: each family's lines for every probe,
-- read when the family's turn comes), then the services', sonde's own,
-- the process's and the script's series, then each M.extra's and
-- `more()`'s text.  A call costs about the time to write M.SLICE bytes,
-- whatever the number of probes: the endpoint (sonde.endpoints) makes one
-- call per loop turn.
-- @tparam table cfg a load (sonde.config): `probes`, `services`, `registry`
-- @tparam[opt] function more returns text to add at the end
-- @treturn function
function M.stream(cfg, more)
  local s = M.source(cfg, more)
  return function()
    if s then
      local t = s:read(M.SLICE)
      if t then return t end
      s = nil
    end
    return nil
  end
end

--- The same as a core.expo_stream (`s:read(max_bytes) -> text | nil`),
-- which sonde.endpoints hands to the HTTP server as it is: the server
-- reads it without making Lua strings (src/lhttpd.c).
-- @tparam table cfg a load
-- @tparam[opt] function more returns text to add at the end
function M.source(cfg, more)
  return core.expo_stream(series_list(cfg), function()
    local t = M.render_rest(cfg)
    for _, f in ipairs(M.extra) do t = t .. f() end
    if more then t = t .. more() end
    return t
  end)
end

--- The /metrics text of a load, whole (sonde.otlp's push, `sonde check`):
-- M.stream's slices joined.
-- @tparam table cfg a load (sonde.config)
-- @treturn string
function M.render(cfg)
  local parts, n = {}, 0
  for t in M.stream(cfg) do
    n = n + 1
    parts[n] = t
  end
  return table.concat(parts)
end

--- The series of a load that are not its probes': services, sonde's
-- build, the process, the script's own (sonde.metrics.gauge / counter).
-- @treturn string exposition text (whole families)
function M.render_rest(cfg)
  local out = {}
  local function family(name, kind, help)
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
  return table.concat(out, "\n") .. "\n"
end

--- Functions called by each `render`, each returning exposition text
-- (whole families, each line ending in a newline, or ""): the series of
-- sonde's own subsystems (sonde.otlp's `sonde_otlp_*`), appended.
M.extra = {}

return M

