--- OTLP push: the series `/metrics` serves, sent every `interval` seconds
-- as OTLP/HTTP JSON (an `ExportMetricsServiceRequest`, opentelemetry-proto
-- `collector/metrics/v1`) to an OpenTelemetry Collector's `otlp` receiver
-- (protocol http: `http://HOST:4318/v1/metrics`) or to Prometheus >= 3 run
-- with `--web.enable-otlp-receiver`
-- (`http://HOST:9090/api/v1/otlp/v1/metrics`).
--
--   local e = otlp.exporter {         -- otlp: this module
--     url = "http://127.0.0.1:4318/v1/metrics", interval = 15,
--     collect = function() return metrics.render(cfg) end }
--   e:start()      -- timers and requests belong to the current task scope
--   e:stop()
--
-- What is sent is what the exposition text says, family by family
-- (`encode`): a `gauge` (and an untyped family) becomes an OTLP Gauge, a
-- `counter` a Sum (`isMonotonic` true, temporality CUMULATIVE), a
-- `histogram` a Histogram (CUMULATIVE; `bucketCounts` per bucket, not
-- cumulative as Prometheus prints them, one more than `explicitBounds`,
-- the last for +Inf); summaries are left out (sonde serves none).  Metric
-- names and label names stay as `/metrics` prints them (no unit is set);
-- labels become data point attributes (string values).  Values are
-- `asDouble` (NaN and infinities as the strings "NaN", "Infinity",
-- "-Infinity", the proto3 JSON mapping of a double); counts and times
-- (`timeUnixNano`: when the series were read; `startTimeUnixNano` of sums
-- and histograms: the process's start) are decimal strings (proto3 JSON
-- maps 64-bit integers to strings).  The resource carries `service.name`
-- "sonde", `service.instance.id` (default: the host name) and
-- `host.name`; the scope is `sonde` with sonde's version.
--
-- Delivery (the OTLP/HTTP specification's rules): one request in flight
-- at a time, through libcurl on the loop.  A 2xx is delivered.  No
-- answer (connection refused, timeout, ...), 429 or 5xx are retried with
-- a back-off (`backoff` seconds, doubling to `max_backoff`; a longer
-- `Retry-After` of a number of seconds is followed, up to 300 s) while
-- newer batches queue behind (a batch that failed goes back in front, so
-- batches arrive in the order they were read); another answer (4xx, a
-- 3xx not followed) is not retryable: that batch is dropped and logged at
-- error.  Batches waiting are bounded (`buffer` batches, `buffer_bytes`
-- bytes): past either bound the oldest is dropped (a batch over
-- `buffer_bytes` on its own is never queued).  Counted in sonde's
-- own series: `sonde_otlp_sent_total` (batches delivered),
-- `sonde_otlp_failed_total` (requests that failed, retried or not),
-- `sonde_otlp_dropped_total{reason}` (`buffer_full`, `rejected`) and
-- `sonde_otlp_pending_batches` (waiting, the one in flight aside), each
-- with the label `url` (scheme, host, port and path only).
--
-- Events (sonde.log): `otlp` with status `started` (info: url,
-- interval), `failed` (warn; the first failure of a run of them, with
-- `http_status` or `error`, and `retry_in`), `rejected` (error: a
-- non-retryable answer, with `http_status` and the body's first 200
-- bytes), `dropped` (warn: a batch pushed out of the full buffer, or
-- over `buffer_bytes` on its own; the first of a run of failures),
-- `resumed` (info: delivered again after failures, with `failed` and
-- `dropped` meanwhile).
-- @module sonde.otlp
local core = require "sonde.core"
local json = require "sonde.json"
local log = require "sonde.log"
local task = require "sonde.task"
local validate = require "sonde.validate"
local redact = require "sonde.redact"
local probers = require "sonde.probers"
local metrics = require "sonde.metrics"

local M = {}

local fmt = string.format

---------------------------------------------------------------------------
-- The exposition text, read back
---------------------------------------------------------------------------

local UNESCAPE = { ["\\"] = "\\", ['"'] = '"', n = "\n" }

local function number(s)
  if s == "+Inf" or s == "Inf" then return math.huge end
  if s == "-Inf" then return -math.huge end
  if s == "NaN" then return 0 / 0 end
  return tonumber(s)
end

-- `{a="x",b="y"}` from position i of line: the labels as a list of
-- { name, value } in their order, and the position after the `}`; nil
-- when malformed.
local function parse_labels(line, i)
  local out = {}
  i = i + 1                                   -- past "{"
  while true do
    i = line:find("[^ ]", i) or #line + 1
    if line:sub(i, i) == "}" then return out, i + 1 end
    local name, e = line:match("^([%a_][%w_]*)%s*=%s*\"()", i)
    if not name then return nil end
    local parts, j = {}, e
    while true do
      local k = line:find('[\\"]', j)
      if not k then return nil end
      parts[#parts + 1] = line:sub(j, k - 1)
      if line:sub(k, k) == '"' then j = k + 1 break end
      local c = line:sub(k + 1, k + 1)
      parts[#parts + 1] = UNESCAPE[c] or ("\\" .. c)
      j = k + 2
    end
    out[#out + 1] = { name, table.concat(parts) }
    i = line:find("[^ ]", j) or #line + 1
    local c = line:sub(i, i)
    if c == "," then i = i + 1
    elseif c ~= "}" then return nil end
  end
end

--- Read Prometheus text exposition (format 0.0.4) back into families.
-- A sample belongs to the family its name is, or, for a histogram or
-- summary, to the family it is the `_bucket`, `_sum`, `_count` of; a
-- sample of no declared family makes an untyped one.  Timestamps are
-- ignored.
-- @tparam string text
-- @treturn table a list of `{ name, help, type ("gauge", "counter",
-- "histogram", "summary", "untyped"), samples = { { name, labels = { {
-- name, value }, ... }, value }, ... } }` in the order of the text
-- @return nil, error (the line) on a line that is not exposition text
function M.parse(text)
  local families, by_name = {}, {}
  local function family(name)
    local f = by_name[name]
    if not f then
      f = { name = name, type = "untyped", samples = {} }
      by_name[name] = f
      families[#families + 1] = f
    end
    return f
  end
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) == "#" then
      local what, name, rest = line:match("^#%s+(%u+)%s+([%a_:][%w_:]*)%s?(.*)$")
      if what == "HELP" then
        family(name).help = rest:gsub("\\(.)", function(c)
          return c == "n" and "\n" or c == "\\" and "\\" or "\\" .. c
        end)
      elseif what == "TYPE" then
        family(name).type = rest
      end
    else
      local name, i = line:match("^%s*([%a_:][%w_:]*)()")
      if not name then return nil, "not a sample: " .. line end
      local lbls = {}
      if line:sub(i, i) == "{" then
        lbls, i = parse_labels(line, i)
        if not lbls then return nil, "malformed labels: " .. line end
      end
      local v = line:match("^%s+(%S+)", i)
      local value = v and number(v)
      if not value then return nil, "no value: " .. line end
      local f = by_name[name]
      if not f or f.type == "histogram" or f.type == "summary" then
        local base = name:match("^(.*)_bucket$") or name:match("^(.*)_sum$")
          or name:match("^(.*)_count$")
        local bf = base and by_name[base]
        if bf and (bf.type == "histogram" or bf.type == "summary") then
          f = bf
        end
      end
      f = f or family(name)
      f.samples[#f.samples + 1] = { name = name, labels = lbls, value = value }
    end
  end
  return families
end

---------------------------------------------------------------------------
-- OTLP JSON
---------------------------------------------------------------------------

-- The request is written as text in one pass over the exposition, without
-- a table per point: a push of a thousand probes' series (some 20,000
-- samples) takes the loop for tens of milliseconds, not most of a second.

local jstr = json.string

-- A double as proto3 JSON has it: a number, or "NaN", "Infinity",
-- "-Infinity".
local function double(v)
  if v ~= v then return '"NaN"' end
  if v == math.huge then return '"Infinity"' end
  if v == -math.huge then return '"-Infinity"' end
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2^53 then return fmt("%d", v) end
  return fmt("%.17g", v)
end

-- A uint64 / fixed64 as proto3 JSON has it: a decimal string (quoted).
local function u64(v)
  if v ~= v or v < 0 then return '"0"' end
  if v >= 2^63 then return '"9223372036854775807"' end
  return fmt('"%d"', math.floor(v))
end

-- `,"attributes":[...]` of a label set as the exposition prints it
-- (`{a="x",b="y"}`), or "" for none; nil when malformed.  Kept from one
-- push to the next (label sets rarely change): at most ATTR_CACHE of them.
local ATTR_CACHE = 50000
local attr_cache, attr_n = {}, 0

local function attrs_json(raw)
  if raw == "" or raw == "{}" then return "" end
  local a = attr_cache[raw]
  if a then return a end
  local list = parse_labels(raw, 1)
  if not list then return nil end
  local parts = {}
  for i, l in ipairs(list) do
    parts[i] = '{"key":' .. jstr(l[1]) .. ',"value":{"stringValue":'
      .. jstr(l[2]) .. "}}"
  end
  a = #parts > 0 and ',"attributes":[' .. table.concat(parts, ",") .. "]" or ""
  if attr_n >= ATTR_CACHE then attr_cache, attr_n = {}, 0 end
  attr_cache[raw], attr_n = a, attr_n + 1
  return a
end

-- A sample line: name, raw labels ("" when none), value; nil when it is
-- not one.
local function sample_line(line)
  local name, raw, v = line:match("^([%a_:][%w_:]*)(%b{})[ \t]+(%S+)")
  if not name then
    name, v = line:match("^([%a_:][%w_:]*)[ \t]+(%S+)")
    raw = ""
  end
  if not name then                -- a `}` or `{` inside a label value
    local i
    name, i = line:match("^([%a_:][%w_:]*)(){")
    if not name then return nil end
    local list, e = parse_labels(line, i)
    if not list then return nil end
    raw, v = line:sub(i, e - 1), line:match("^[ \t]+(%S+)", e)
  end
  v = v and number(v)
  if not v then return nil end
  return name, raw, v
end

local HIST_SUFFIX = { _bucket = true, _sum = true, _count = true }

-- A histogram sample's label set without `le`, and `le`; kept like
-- attributes.
local le_cache, le_n = {}, 0
local function le_split(raw)
  local c = le_cache[raw]
  if c then return c[1], c[2] end
  local le = raw:match('[{,]le="([^"]*)"')
  local key = raw:gsub('([{,])le="[^"]*",?', "%1"):gsub(",}$", "}")
  if le_n >= ATTR_CACHE then le_cache, le_n = {}, 0 end
  le_cache[raw], le_n = { key, le }, le_n + 1
  return key, le
end

local function histogram_points(f, now, start)
  local points = {}
  for _, g in ipairs(f.order) do
    table.sort(g.buckets, function(a, b) return a[1] < b[1] end)
    local bounds, counts, prev = {}, {}, 0
    for _, b in ipairs(g.buckets) do
      if b[1] ~= math.huge then bounds[#bounds + 1] = double(b[1]) end
      counts[#counts + 1] = u64(math.max(b[2] - prev, 0))
      prev = math.max(prev, b[2])
    end
    local count = g.count or prev
    if #g.buckets == 0 or g.buckets[#g.buckets][1] ~= math.huge then
      counts[#counts + 1] = u64(math.max(count - prev, 0))   -- the +Inf one
    end
    local p = { '{"timeUnixNano":', now, ',"startTimeUnixNano":', start,
      ',"count":', u64(count), ',"bucketCounts":[', table.concat(counts, ","),
      "]" }
    if #bounds > 0 then
      p[#p + 1] = ',"explicitBounds":[' .. table.concat(bounds, ",") .. "]"
    end
    if g.sum and g.sum == g.sum and math.abs(g.sum) ~= math.huge then
      p[#p + 1] = ',"sum":' .. double(g.sum)
    end
    p[#p + 1] = g.attrs .. "}"
    points[#points + 1] = table.concat(p)
  end
  return points
end

local hostname
--- The machine's host name (/proc/sys/kernel/hostname), read once.
function M.hostname()
  if not hostname then
    local f = io.open("/proc/sys/kernel/hostname", "r")
    hostname = f and f:read("l") or "localhost"
    if f then f:close() end
  end
  return hostname
end

--- The ExportMetricsServiceRequest of an exposition text, as JSON text
-- (the body of a POST to `/v1/metrics`): see the module doc for the
-- mapping.  Summaries are left out (sonde serves none).
-- @tparam string text the exposition (e.g. `sonde.metrics.render(cfg)`)
-- @tparam[opt] table opts `time` (seconds since the epoch of the points;
-- default now), `start` (of sums and histograms; default the process's
-- start), `resource` (attributes name -> string, over the defaults)
-- @treturn string
-- @return nil, error (the line) when the text is not exposition text
function M.encode(text, opts)
  opts = opts or {}
  local t = opts.time or core.wall_time()
  local now = u64(math.floor(t * 1e6) * 1000)
  local st = opts.start or core.process_stats().start_time_seconds or t
  local start = u64(math.floor(st * 1e6) * 1000)
  local fams, order = {}, {}
  local function family(name)
    local f = fams[name]
    if not f then
      f = { name = name, type = "untyped", points = {}, groups = {}, order = {} }
      fams[name], order[#order + 1] = f, f
    end
    return f
  end
  local gauge_head = '{"timeUnixNano":' .. now .. ',"asDouble":'
  local sum_head = '{"timeUnixNano":' .. now .. ',"startTimeUnixNano":'
    .. start .. ',"asDouble":'
  for line in text:gmatch("[^\n]+") do
    if line:byte(1) == 35 then                    -- "#"
      local what, name, rest = line:match("^#%s+(%u+)%s+([%a_:][%w_:]*)%s?(.*)$")
      if what == "HELP" then
        family(name).help = rest:gsub("\\(.)", function(c)
          return c == "n" and "\n" or c == "\\" and "\\" or "\\" .. c
        end)
      elseif what == "TYPE" then
        family(name).type = rest
      end
    elseif line:find("%S") then
      local name, raw, v = sample_line(line)
      if not name then return nil, "not a sample: " .. line end
      local f = fams[name]
      local suffix = not (f and f.type ~= "histogram")
        and name:match("^.*(_%l+)$")
      if suffix and HIST_SUFFIX[suffix] then
        local hf = fams[name:sub(1, -#suffix - 1)]
        if hf and (hf.type == "histogram" or hf.type == "summary") then
          f = hf
        end
      end
      f = f or family(name)
      if f.type == "histogram" then
        local key, le = le_split(raw)
        local g = f.groups[key]
        if not g then
          local a = attrs_json(key)
          if not a then return nil, "malformed labels: " .. line end
          g = { attrs = a, buckets = {} }
          f.groups[key], f.order[#f.order + 1] = g, g
        end
        local suf = name:sub(#f.name + 1)
        if suf == "_bucket" then
          local b = le and number(le)
          if b then g.buckets[#g.buckets + 1] = { b, v } end
        elseif suf == "_sum" then g.sum = v
        elseif suf == "_count" then g.count = v end
      elseif f.type ~= "summary" then
        local a = attrs_json(raw)
        if not a then return nil, "malformed labels: " .. line end
        f.points[#f.points + 1] = (f.type == "counter" and sum_head
          or gauge_head) .. double(v) .. a .. "}"
      end
    end
  end
  local metrics = {}
  for _, f in ipairs(order) do
    local head = '{"name":' .. jstr(f.name)
      .. (f.help and f.help ~= "" and ',"description":' .. jstr(f.help) or "")
    if f.type == "histogram" and #f.order > 0 then
      metrics[#metrics + 1] = head .. ',"histogram":{"aggregationTemporality":2,'
        .. '"dataPoints":[' .. table.concat(histogram_points(f, now, start), ",")
        .. "]}}"
    elseif #f.points > 0 then
      local kind = f.type == "counter"
        and ',"sum":{"aggregationTemporality":2,"isMonotonic":true,'
        or ',"gauge":{'
      metrics[#metrics + 1] = head .. kind .. '"dataPoints":['
        .. table.concat(f.points, ",") .. "]}}"
    end
  end
  local res = { ["service.name"] = "sonde",
    ["service.instance.id"] = M.hostname(), ["host.name"] = M.hostname() }
  for k, v in pairs(opts.resource or {}) do res[k] = tostring(v) end
  local names = {}
  for k in pairs(res) do names[#names + 1] = k end
  table.sort(names)
  local rattrs = {}
  for i, k in ipairs(names) do
    rattrs[i] = '{"key":' .. jstr(k) .. ',"value":{"stringValue":'
      .. jstr(res[k]) .. "}}"
  end
  return '{"resourceMetrics":[{"resource":{"attributes":['
    .. table.concat(rattrs, ",") .. ']},"scopeMetrics":[{"scope":{"name":"sonde",'
    .. '"version":' .. jstr(core.version) .. "}"
    .. (#metrics > 0 and ',"metrics":[' .. table.concat(metrics, ",") .. "]" or "")
    .. "}]}]}"
end

---------------------------------------------------------------------------
-- The exporter
---------------------------------------------------------------------------

local live = setmetatable({}, { __mode = "k" })   -- exporter -> true

local Exporter = {}
Exporter.__index = Exporter

local SCHEMA = validate.schema {
  { "url", "string", required = true },
  { "interval", "seconds", default = 15, min = 0.01 },   -- else a busy loop
  { "timeout", "seconds", default = 10 },
  { "headers", "table" },
  { "buffer", "count", default = 100 },
  { "buffer_bytes", "count", default = 16 * 1024 * 1024 },
  { "backoff", "seconds", default = 1 },
  { "max_backoff", "seconds", default = 60 },
  { "resource", "table" },
  { "tls", "table" },
  { "collect", "function" },
}

--- The most seconds a server's `Retry-After` makes the exporter wait.
M.MAX_RETRY_AFTER = 300

--- A new exporter (not started).
--
-- spec fields: `url` (required: the full URL, `.../v1/metrics`),
-- `interval` (seconds between two batches, default 15, at least 0.01),
-- `timeout` (of a request, default 10), `headers` (map name -> value, e.g.
-- `Authorization`; as http_get's), `buffer` (batches waiting at most,
-- default 100), `buffer_bytes` (their bytes at most, default 16 MiB),
-- `backoff` (first retry delay, default 1), `max_backoff` (default 60),
-- `resource` (more resource attributes, name -> string, over
-- `service.name`, `service.instance.id`, `host.name`), `tls` (http_get's
-- `tls`; `verify` defaults to true, as for webhooks), `collect` (required
-- here: a function returning the exposition text to send).
-- @raise naming the field, on a bad spec (a URL http_get refuses too)
function M.exporter(spec)
  local ctx = { where = "sonde.otlp" }
  validate.checks.table(ctx, spec, "spec")
  local s = SCHEMA:apply(ctx, spec)
  if not s.collect then validate.fail(ctx, "collect", "is required") end
  if s.buffer < 1 then validate.fail(ctx, "buffer", "must be at least 1") end
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(s.headers or {}) do headers[k] = v end
  local tls = { verify = true }
  for k, v in pairs(s.tls or {}) do tls[k] = v end
  local req = { url = s.url, method = "POST", headers = headers,
    timeout = s.timeout, tls = tls, follow_redirects = "same-origin" }
  -- checked once: each request is these options with its body
  local opts = probers.handlers.http_get.prepare(ctx, req)
  local self = setmetatable({ spec = s, opts = opts, queue = {}, bytes = 0,
    sent = 0, failed = 0, dropped = { buffer_full = 0, rejected = 0 },
    url_label = redact.endpoint(s.url), state = "new" }, Exporter)
  return self
end

local function event(level, fields)
  log.event(level, "otlp", fields)
end

--- Start: a batch every `interval` seconds (the first one interval from
-- now).  The timers and requests belong to the current task scope (a
-- script's load, or the host's own): closing it ends them.
function Exporter:start()
  if self.state ~= "new" then return self end
  self.scope = task.current()
  if self.scope.dry then return self end          -- `sonde check`
  self.state = "started"
  live[self] = true
  local function tick()
    self.tick_timer = task.after(self.spec.interval, tick)
    self:push()
  end
  self.tick_timer = task.after(self.spec.interval, tick)
  event("info", { url = self.url_label, status = "started",
    interval = self.spec.interval })
  return self
end

--- True while started and its scope is open.
function Exporter:running()
  return self.state == "started" and not self.scope.closed
end

--- Stop: the timers and the request in flight are cancelled; what waits
-- is dropped (not counted).  Idempotent.
function Exporter:stop()
  if self.state == "stopped" then return end
  self.state = "stopped"
  live[self] = nil
  for _, k in ipairs { "tick_timer", "retry_timer", "inflight" } do
    if self[k] then task.cancel(self[k]) self[k] = nil end
  end
  self.queue, self.bytes = {}, 0
end

-- Drop the oldest waiting batch.
function Exporter:drop_oldest()
  local b = table.remove(self.queue, 1)
  self.bytes = self.bytes - #b
  self.dropped.buffer_full = self.dropped.buffer_full + 1
  if not self.drop_logged then
    self.drop_logged = true
    event("warn", { url = self.url_label, status = "dropped",
      pending = #self.queue, detail = "buffer full: the oldest batch dropped" })
  end
end

-- Queue a batch, behind (or, `first`, in front of) those waiting; the
-- oldest go when a bound is passed.  false when `body` alone is over the
-- bounds.
function Exporter:enqueue(body, first)
  local s = self.spec
  if #body > s.buffer_bytes then
    self.dropped.buffer_full = self.dropped.buffer_full + 1
    if not self.drop_logged then
      self.drop_logged = true
      event("warn", { url = self.url_label, status = "dropped",
        pending = #self.queue, detail = fmt("a batch of %d bytes, over "
          .. "buffer_bytes (%d) on its own", #body, s.buffer_bytes) })
    end
    return false
  end
  if first then table.insert(self.queue, 1, body)
  else self.queue[#self.queue + 1] = body end
  self.bytes = self.bytes + #body
  while #self.queue > s.buffer or self.bytes > s.buffer_bytes do
    self:drop_oldest()
  end
  return true
end

--- Read the series now, queue them as a batch and send what waits (when
-- no request is in flight and no retry is pending).
function Exporter:push()
  if not self:running() then return end
  local text = self.spec.collect()
  local body, err = M.encode(text, { resource = self.spec.resource })
  if not body then
    event("error", { url = self.url_label, status = "failed",
      error = "the series could not be read: " .. tostring(err) })
    return
  end
  self:enqueue(body)
  self:pump()
end

-- Seconds a `Retry-After` header asks for (a number of seconds only).
local function retry_after(r)
  local h = type(r.headers) == "table" and r.headers["retry-after"]
  local n = h and tonumber(h:match("^%s*(%d+)%s*$"))
  if n then return math.min(n, M.MAX_RETRY_AFTER) end
end

function Exporter:pump()
  if not self:running() or self.inflight or self.retry_timer
      or #self.queue == 0 then
    return
  end
  local body = table.remove(self.queue, 1)
  self.bytes = self.bytes - #body
  local opts = {}
  for k, v in pairs(self.opts) do opts[k] = v end
  opts.body = body
  local h = probers.handlers.http_get
  task.within(self.scope, function()
    self.inflight = task.start("sonde.otlp", function(k)
      return h.start(opts, k)
    end, function(r)
      self.inflight = nil
      self:answered(body, r)
    end)
  end)
end

function Exporter:answered(body, r)
  local code = r.http_status or 0
  if code >= 200 and code < 300 then
    self.sent = self.sent + 1
    if self.delay then
      event("info", { url = self.url_label, status = "resumed",
        failed = self.failed - self.failed_at, dropped =
          self.dropped.buffer_full - self.dropped_at })
    end
    self.delay, self.drop_logged = nil, nil
    return self:pump()
  end
  self.failed = self.failed + 1
  if code == 0 or code == 429 or code >= 500 then
    -- retryable: back in front, then a back-off
    if not self.delay then
      self.failed_at, self.dropped_at = self.failed - 1,
        self.dropped.buffer_full
    end
    local prev = self.delay
    self.delay = prev and math.min(prev * 2, self.spec.max_backoff)
      or self.spec.backoff
    -- a Retry-After waits longer than the back-off, never shorter (as the
    -- OpenTelemetry Collector's exporters: the larger of the two), or a
    -- server answering `429, Retry-After: 0` would get a storm of retries
    local wait = math.max(retry_after(r) or 0, self.delay)
    if not prev then
      event("warn", { url = self.url_label, status = "failed",
        http_status = code ~= 0 and code or nil,
        error = code == 0 and (r.output or r.reason) or nil,
        retry_in = wait })
    end
    self:enqueue(body, true)
    task.within(self.scope, function()
      self.retry_timer = task.after(wait, function()
        self.retry_timer = nil
        self:pump()
      end)
    end)
    return
  end
  -- not retryable (OTLP/HTTP: any other 4xx; a 3xx not followed)
  self.dropped.rejected = self.dropped.rejected + 1
  event("error", { url = self.url_label, status = "rejected",
    http_status = code, detail = type(r.body) == "string"
      and r.body:sub(1, 200) or nil })
  return self:pump()
end

--- sonde's own series of the exporters that run (sonde.metrics adds them
-- to /metrics): exposition text, whole families.
-- @treturn string ("" when none runs)
function M.exposition()
  local list = {}
  for e in pairs(live) do
    if e:running() then list[#list + 1] = e else live[e] = nil end
  end
  if #list == 0 then return "" end
  table.sort(list, function(a, b) return a.url_label < b.url_label end)
  local out = {}
  local function family(name, kind, help, value)
    out[#out + 1] = fmt("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
    for _, e in ipairs(list) do value(e, metrics.escape(e.url_label)) end
  end
  family("sonde_otlp_sent_total", "counter", "OTLP batches delivered.",
    function(e, u) out[#out + 1] = fmt('sonde_otlp_sent_total{url="%s"} %d\n', u, e.sent) end)
  family("sonde_otlp_failed_total", "counter",
    "OTLP requests that failed (retried or not).",
    function(e, u) out[#out + 1] = fmt('sonde_otlp_failed_total{url="%s"} %d\n', u, e.failed) end)
  family("sonde_otlp_dropped_total", "counter",
    "OTLP batches dropped: buffer_full (the oldest, past the buffer's "
    .. "bound), rejected (a non-retryable answer).",
    function(e, u)
      for _, r in ipairs { "buffer_full", "rejected" } do
        out[#out + 1] = fmt('sonde_otlp_dropped_total{url="%s",reason="%s"} %d\n',
          u, r, e.dropped[r])
      end
    end)
  family("sonde_otlp_pending_batches", "gauge",
    "OTLP batches waiting (the one in flight aside).",
    function(e, u)
      out[#out + 1] = fmt('sonde_otlp_pending_batches{url="%s"} %d\n', u,
        #e.queue)
    end)
  return table.concat(out)
end

metrics.extra[#metrics.extra + 1] = M.exposition

return M
