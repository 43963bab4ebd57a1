--- The host's HTTP endpoints (`sonde --listen ADDR`), on libevent's HTTP
-- server in the loop (src/lhttpd.c).
--
-- GET or HEAD; other methods 405, unknown paths 404; nothing here changes
-- state or runs anything:
--
--   * `/metrics`: Prometheus text exposition format 0.0.4 (sonde.metrics);
--   * `/healthz`: 200 while the loop runs;
--   * `/readyz`: 200 when every readiness probe is ready and every pod is
--     ready, else 503 with the names of those that are not, one per line
--     (a readiness probe whose service is not running is not ready).  A
--     pod (sonde.podrun) is ready as the kubelet's Ready condition says:
--     its init containers have completed, and each app container and
--     sidecar runs, has started (startup probe) and is ready (readiness
--     probe); its lines name the pod (`pod NAME: initializing (...)`) or a
--     container (`container NAME: why`), and its probes are counted
--     through it;
--   * `/readyz?container=NAME`: 200 when that container of a pod is ready
--     (an init container: once it exited 0), 503 with why not, 404 when no
--     pod has a container of that name;
--   * `/readyz/NAME`, `/livez/NAME`: 200 when that readiness / liveness
--     probe's state is success, 503 when not, 404 when there is no such
--     probe of that kind (NAME percent-decoded);
--   * `/status`: JSON `{ probes = { NAME = { kind, state, runs, counts,
--     streak, service, last = result } }, services = { NAME = { state,
--     restarts, pid, instance, exit_code, signal; and for a pod's
--     container: pod, kind (init, sidecar, app) } }, pods = { NAME = {
--     phase, ready, initialized, restart_policy, containers = { { name,
--     kind, state, reason, ready, started, restarts, exit_code, signal },
--     ... } } }, version }` (a pod's containers in its order; `state` in
--     the kubelet's words: waiting, running, terminated).  `last` holds the result's
--     plain fields, but not the response `body`, and its `output` cut to
--     its first `STATUS_OUTPUT` (256) bytes, with `output_bytes` the whole
--     length when cut: the endpoint does not republish what targets sent.
--     `/status?output=1` gives `output` whole and `body` too.  URL
--     credentials are masked (`user:xxxxx@`, sonde.redact).  A result
--     that came over TLS keeps its `tls` facts table.  The whole /status
--     is streamed (chunked), M.STATUS_BATCH probes per loop turn (fewer
--     once a turn's text reaches M.STATUS_SLICE bytes), probes
--     in declaration order, so that a host with many probes does not
--     hold its loop to serialise them;
--   * `/status?probe=NAME` (NAME percent-decoded, `+` a space, as Go's
--     url.ParseQuery): `{ probes = { NAME = ... }, version }`, that probe
--     only (no services nor pods); 404 when no probe has that name;
--   * `/status?limit=N&offset=K`: a page of the probes in declaration
--     order, K skipped (default 0), N at most (1..10000; default 10000),
--     with services and pods whole as in `/status`, and `page = { offset,
--     limit, total, next }` (`total` the number of probes, `next` the
--     offset of the next page, absent on the last); a bad value is
--     answered 400 naming the parameter.  `output=1` applies to every
--     form.
--
-- `/metrics` and `/status` answers are gzip-compressed (Content-Encoding)
-- when the request's Accept-Encoding accepts gzip (M.accepts_gzip); the
-- short text answers are not.
--
-- Bounds (M.limits; src/lhttpd.c has the details): at most 64 connections
-- at once (at the cap the listener stops accepting: new connections wait
-- in the kernel's accept queue until one closes); a connection idle for
-- 5 s is closed; a request must arrive whole within 10 s of the
-- connection's accept (or of the previous answer on it), so a client
-- sending a byte now and then is cut; the request line and headers may
-- take 8 KiB (more: 400); a request announcing a body is answered 413
-- without reading it.  Out of descriptors the listener pauses (50 ms,
-- doubling to 1 s) instead of spinning, and logs `http_accept` (at once,
-- then every 10 s with the count).
-- @module sonde.endpoints
local core = require "sonde.core"
local log = require "sonde.log"
local json = require "sonde.json"
local metrics = require "sonde.metrics"
local redact = require "sonde.redact"
local blackbox = require "sonde.blackbox"

local M = {}

--- Bytes of a result's output /status shows unless asked for all.
M.STATUS_OUTPUT = 256

-- A probe's /status entry.
local function probe_status(p, full)
  local last
  if p.last_result then
    last = {}
    for k, v in pairs(p.last_result) do
      if type(v) ~= "function" and type(v) ~= "table" then last[k] = v end
    end
    last.url = redact.url(last.url)
    -- the peer certificate facts of a TLS probe (sonde.http_get)
    if type(p.last_result.tls) == "table" then
      last.tls = p.last_result.tls
    end
    if not full then
      last.body = nil
      local out = last.output
      if type(out) == "string" and #out > M.STATUS_OUTPUT then
        last.output = out:sub(1, M.STATUS_OUTPUT)
        last.output_bytes = #out
      end
    end
  end
  return { kind = p.kind, state = p.state, runs = p.runs,
    counts = p.stats and p.stats.counts or {}, streak = p:streak_count(),
    service = p.service and p.service.name or nil, last = last }
end

-- The services' and the pods' /status entries (pods nil when none).
local function services_status(cfg)
  local services = {}
  for _, s in ipairs(cfg.services) do
    local e = s.state == "stopped" and s.last_exit or {}
    services[s.name] = { state = s.state, restarts = s.restarts, pid = s.pid,
      instance = s.instance, exit_code = e.exit_code, signal = e.signal,
      pod = s.pod and s.pod.name or nil, kind = s.pod_kind }
  end
  local pods
  for _, p in ipairs(cfg.pods or {}) do
    pods = pods or {}
    pods[p.name] = p:status()
  end
  return services, pods
end

--- The /status table of a load.
-- @tparam table cfg a load (sonde.config)
-- @tparam[opt] boolean full with each last result's whole `output` and its
-- `body` (`/status?output=1`)
function M.status(cfg, full)
  local probes = {}
  for _, p in ipairs(cfg.probes) do probes[p.name] = probe_status(p, full) end
  local services, pods = services_status(cfg)
  return { probes = probes, services = services, pods = pods,
    version = core.version }
end

-- Each probe's last /status entry as JSON (`"NAME":{...}`), kept on the
-- probe while its worker's version says nothing it shows changed: a host
-- polled every second re-encodes only the probes that ran since.  (On
-- the probe, not in a weak table: the collector walks weak tables whole
-- in its atomic step, which a large host pays at every cycle.)
local function entry_json(p, full)
  local w = rawget(p, "worker")
  local v = w and w:version()
  local c = rawget(p, "status_json")
  if c and v and c.v == v and c.full == full and c.cut == M.STATUS_OUTPUT then
    return c.text
  end
  local text = json.string(p.name) .. ":" .. json.encode(probe_status(p, full))
  if v then
    rawset(p, "status_json", { v = v, full = full, cut = M.STATUS_OUTPUT,
      text = text })
  end
  return text
end

--- Probes one step of a streamed /status encodes: small enough that a
-- step takes well under 2 ms of the loop.  An entry with a last result
-- costs about 30 us (sonde.json; 10,000 declared TCP probes, each with a
-- refused connection's result: steps of 16 take 0.5 ms, median, os.clock).
M.STATUS_BATCH = 16

--- The bytes after which a step of a streamed /status stops, however few
-- probes it holds (at least one): with `output=1`, entries carry whole
-- bodies and outputs (up to a probe's `max_body` / `max_output`), and 16
-- of them would be one long step.
M.STATUS_SLICE = 65536

--- The /status JSON text as a producer (core.listen): the probes of
-- `cfg.probes` from index `first` to `last` (all by default), M.STATUS_BATCH
-- of them per call (fewer when they reach M.STATUS_SLICE bytes: at least
-- one), each entry encoded by sonde.json; then the services,
-- the pods, the version and, when given, `page`.  The same content as
-- json.encode(M.status(cfg, full)) (key order aside: probes in declaration
-- order).  The list of probes is taken when this is called; the services
-- and pods at the end.
-- @tparam table cfg a load
-- @tparam[opt] boolean full as M.status
-- @tparam[opt] table range `{ first, last, page = table }`
-- @treturn function the producer: a string or a list of strings per
-- call, then nil
function M.status_producer(cfg, full, range)
  local list = table.move(cfg.probes, 1, #cfg.probes, 1, {})
  local first = range and range.first or 1
  local last = math.min(range and range.last or #list, #list)
  local i, stage = first, "head"
  return function()
    if stage == "head" then
      stage = "probes"
      return '{"probes":{'
    elseif stage == "probes" then
      local parts, n, bytes = {}, 0, 0
      local stop = math.min(i + M.STATUS_BATCH - 1, last)
      local j = i
      while j <= stop and bytes < M.STATUS_SLICE do
        local p = list[j]
        n = n + 1
        local e = entry_json(p, full)
        if j > first then
          parts[n] = ","
          n = n + 1
        end
        parts[n] = e         -- (kept on the probe: no new string)
        bytes = bytes + #e
        j = j + 1
      end
      i = j
      if i > last then stage = "tail" end
      return parts           -- (core.listen writes the pieces in turn)
    elseif stage == "tail" then
      stage = "done"
      local services, pods = services_status(cfg)
      local out = { '},"services":', json.encode(services) }
      if pods then out[#out + 1] = ',"pods":' .. json.encode(pods) end
      if range and range.page then
        out[#out + 1] = ',"page":' .. json.encode(range.page)
      end
      out[#out + 1] = ',"version":' .. json.encode(core.version) .. "}\n"
      return table.concat(out)
    end
    return nil
  end
end

-- The value of `name` in a query string (`a=1&b=2`), or nil.
local function query_arg(query, name)
  if type(query) ~= "string" then return nil end
  for k, v in query:gmatch("([^&=]+)=?([^&]*)") do
    if k == name then return v end
  end
end

-- A name as text bodies show it: valid UTF-8 (U+FFFD for a bad byte),
-- control bytes as `\xHH`, so a line is a line (a probe name is the
-- script's, a requested one the client's).
local function text(s)
  s = json.valid_utf8(s, "\u{FFFD}")
  return (s:gsub("%c", function(c) return ("\\x%02X"):format(c:byte()) end))
end

-- Percent-decoded.
local function decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- A query string's value percent-decoded, '+' a space (as query_values
-- below and Go's url.ParseQuery).
local function query_decode(s)
  return decode((s:gsub("+", " ")))
end

-- /readyz?container=NAME: that container of a pod.
local function container_ready(cfg, name)
  for _, pod in ipairs(cfg.pods or {}) do
    local c = pod.by_name[name]
    if c then
      local ok, why = pod:container_ready(c)
      if ok then return 200, "ok\n" end
      return 503, text(why) .. "\n"
    end
  end
  return 404, "no container named " .. text(name) .. "\n"
end

local function find(cfg, name, kind)
  local p = cfg.probe_by_name[name]
  if p and p.kind == kind then return p end
end

---------------------------------------------------------------------------
-- blackbox_exporter's /probe (a load with a blackbox configuration: the
-- host's --config.file)
---------------------------------------------------------------------------

--- Seconds taken off the scrape's X-Prometheus-Scrape-Timeout-Seconds
-- (blackbox_exporter's --timeout-offset).
M.timeout_offset = 0.5

--- /probe requests that named no known module (blackbox_module_unknown_total).
M.module_unknown = 0

--- The last load of the blackbox configuration (the host sets them):
-- whether it succeeded, and when it last did (seconds since the epoch):
-- blackbox_exporter_config_last_reload_successful and
-- blackbox_exporter_config_last_reload_success_timestamp_seconds.
M.config_ok, M.config_time = nil, nil

-- A query string's values, decoded as Go's url.ParseQuery does ('+' is a
-- space, %XX a byte); the first value of a repeated name.
local function query_values(query)
  local out = {}
  if type(query) ~= "string" then return out end
  for pair in query:gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function dec(x)
      return (x:gsub("+", " "):gsub("%%(%x%x)", function(h)
        return string.char(tonumber(h, 16))
      end))
    end
    k = dec(k)
    if out[k] == nil then out[k] = dec(v) end
  end
  return out
end

--- Answer `/probe?target=T&module=M[&debug=true][&hostname=H]` as
-- blackbox_exporter (hostname: the Host header of an http module):
-- 400 "Unknown module" / "Target parameter is missing", else one probe of
-- the module on the loop, answered (core.listen_reply) when it is done,
-- with its series or, with debug=true, its logs, series and module.
-- @return status, body, content type; or "defer" (answered later)
function M.probe(cfg, method, query, headers, id)
  local conf = cfg.blackbox
  local q = query_values(query)
  local name = q.module
  if name == nil or name == "" then name = "http_2xx" end
  local module = conf.modules[name]
  local why = not module and conf.unsupported and conf.unsupported[name]
  if why then                  -- a module sonde cannot honour (its reason)
    return 501, why .. "\n"
  end
  if not module then
    M.module_unknown = M.module_unknown + 1
    return 400, string.format("Unknown module %q\n", name)
  end
  local timeout, terr = blackbox.timeout(module,
    headers and headers["x-prometheus-scrape-timeout-seconds"], M.timeout_offset)
  if not timeout then
    return 500, "Failed to parse timeout from Prometheus header: " .. terr .. "\n"
  end
  local target = q.target
  if target == nil or target == "" then
    return 400, "Target parameter is missing\n"
  end
  local debug = q.debug == "true"
  local hostname = q.hostname
  if hostname == "" or module.prober ~= "http" then hostname = nil end
  if hostname then
    local clash = module:host_conflict(hostname)
    if clash then return 400, clash .. "\n" end
  end
  local ok, err = pcall(module.run, module, target, { timeout = timeout,
      hostname = hostname },
    function(res)
      local body, ctype
      if debug then
        body, ctype = blackbox.debug_text(res), "text/plain"
      else
        body = blackbox.render(res)
        ctype = "text/plain; version=0.0.4; charset=utf-8"
      end
      core.listen_reply(id, 200, body, ctype)
    end)
  if not ok then
    log.event("error", "http_error", { path = "/probe", error = tostring(err) })
    return 500, "internal error\n"
  end
  return "defer"
end

-- blackbox_exporter's own series, after sonde's.
local function blackbox_metrics()
  local out = "# HELP blackbox_module_unknown_total Count of unknown modules "
    .. "requested by probes\n# TYPE blackbox_module_unknown_total counter\n"
    .. "blackbox_module_unknown_total " .. M.module_unknown .. "\n"
  if M.config_ok ~= nil then
    out = out .. "# HELP blackbox_exporter_config_last_reload_successful "
      .. "Blackbox exporter config loaded successfully.\n"
      .. "# TYPE blackbox_exporter_config_last_reload_successful gauge\n"
      .. "blackbox_exporter_config_last_reload_successful "
      .. (M.config_ok and 1 or 0) .. "\n"
      .. "# HELP blackbox_exporter_config_last_reload_success_timestamp_seconds "
      .. "Timestamp of the last successful configuration reload.\n"
      .. "# TYPE blackbox_exporter_config_last_reload_success_timestamp_seconds gauge\n"
      .. "blackbox_exporter_config_last_reload_success_timestamp_seconds "
      .. string.format("%.3f", M.config_time or 0) .. "\n"
  end
  return out
end

--- Whether an Accept-Encoding header's value accepts gzip (RFC 9110
-- 12.5.3): comma-separated codings, each with an optional `;q=` weight;
-- `gzip` (or `x-gzip`) with a weight above 0, or else `*` with one; a
-- weight of 0, or one that is not a number, refuses; names are
-- case-insensitive.  nil (no header): false.
-- @tparam[opt] string value
-- @treturn boolean
function M.accepts_gzip(value)
  if type(value) ~= "string" then return false end
  local gzip, star
  for item in value:gmatch("[^,]+") do
    local coding, params = item:match("^%s*([^;%s]+)%s*(.*)$")
    if coding then
      coding = coding:lower()
      local weight = 1
      for k, v in params:gmatch(";%s*([^=;%s]+)%s*=%s*([^;%s]*)") do
        if k:lower() == "q" then weight = tonumber(v) or 0 end
      end
      if coding == "gzip" or coding == "x-gzip" then
        gzip = math.max(gzip or 0, weight)
      elseif coding == "*" then
        star = weight
      end
    end
  end
  if gzip then return gzip > 0 end
  return star ~= nil and star > 0
end

--- The most probes a /status page may have (`limit`).
M.STATUS_PAGE_MAX = 10000

-- An integer query value in min..max, or nil and why not.
local function integer_arg(v, min, max)
  local n = v:match("^%d+$") and math.tointeger(tonumber(v))
  if not n or n < min or n > max then
    if max == math.maxinteger then
      return nil, ("must be an integer >= %d"):format(min)
    end
    return nil, ("must be an integer in %d..%d"):format(min, max)
  end
  return n
end

-- /status, /status?probe=NAME, /status?limit=N&offset=K (and output=1).
local function status_answer(cfg, query)
  local full = query_arg(query, "output")
  full = full ~= nil and full ~= "0" and full ~= ""
  local name = query_arg(query, "probe")
  if name then
    name = query_decode(name)
    local p = cfg.probe_by_name[name]
    if not p then return 404, "no probe named " .. text(name) .. "\n" end
    return 200, json.encode({ probes = { [p.name] = probe_status(p, full) },
      version = core.version }) .. "\n", "application/json"
  end
  local limit, offset = query_arg(query, "limit"), query_arg(query, "offset")
  if not limit and not offset then
    return 200, M.status_producer(cfg, full), "application/json"
  end
  local why
  limit, why = integer_arg(query_decode(limit or tostring(M.STATUS_PAGE_MAX)), 1,
    M.STATUS_PAGE_MAX)
  if not limit then return 400, "limit " .. why .. "\n" end
  offset, why = integer_arg(query_decode(offset or "0"), 0, math.maxinteger)
  if not offset then return 400, "offset " .. why .. "\n" end
  local total = #cfg.probes
  -- (offset may be near math.maxinteger: compared with total - limit, and
  -- clamped to total, so that offset + limit never wraps)
  local more = offset < total - limit
  local page = { offset = offset, limit = limit, total = total,
    next = more and offset + limit or nil }
  return 200, M.status_producer(cfg, full, { first = math.min(offset, total) + 1,
    last = more and offset + limit or total, page = page }), "application/json"
end

--- Answer one request.
-- @tparam table cfg the load
-- @tparam string method
-- @tparam string path percent-encoded, without the query
-- @tparam[opt] string query the query string (`output=1`)
-- @tparam[opt] table headers the request's (lowercase names): its
-- Accept-Encoding decides whether /metrics and /status are gzip'd
-- @treturn integer status
-- @treturn string|function body, or a producer (core.listen)
-- @treturn[opt] string content type
-- @treturn[opt] string "gzip" when the body is to be compressed
function M.route(cfg, method, path, query, headers)
  if method ~= "GET" and method ~= "HEAD" then
    return 405, "method not allowed\n"
  end
  local gzip = M.accepts_gzip(headers and headers["accept-encoding"])
    and "gzip" or nil
  if path == "/metrics" then
    -- written a slice per loop turn by the C core (sonde.metrics.source)
    return 200, metrics.source(cfg, cfg.blackbox and blackbox_metrics or nil),
      "text/plain; version=0.0.4; charset=utf-8", gzip
  elseif path == "/healthz" then
    return 200, "ok\n"
  elseif path == "/readyz" then
    local container = query_arg(query, "container")
    if container then return container_ready(cfg, decode(container)) end
    local bad, owned = {}, {}
    for _, pod in ipairs(cfg.pods or {}) do
      for _, p in ipairs(pod:probes()) do owned[p] = true end
    end
    for _, p in ipairs(cfg.probes) do
      if p.kind == "readiness" and not owned[p] and p.state ~= "success" then
        bad[#bad + 1] = text(p.name)
      end
    end
    for _, pod in ipairs(cfg.pods or {}) do
      local ok, why = pod:ready()
      if not ok then
        for _, w in ipairs(why) do bad[#bad + 1] = text(w) end
      end
    end
    if #bad == 0 then return 200, "ok\n" end
    return 503, "not ready:\n" .. table.concat(bad, "\n") .. "\n"
  elseif path == "/status" then
    local status, body, ctype = status_answer(cfg, query)
    return status, body, ctype, status == 200 and gzip or nil
  end
  local which, name = path:match("^/(%a+)z/(.+)$")
  if name then name = decode(name) end     -- the path comes percent-encoded
  local kind = which == "ready" and "readiness" or which == "live" and "liveness"
  if kind then
    local p = find(cfg, name, kind)
    if not p then
      return 404, "no " .. kind .. " probe named " .. text(name) .. "\n"
    end
    if p.state == "success" then return 200, "ok\n" end
    return 503, p.state .. "\n"
  end
  return 404, "not found\n"
end

--- The endpoint's bounds (core.listen's limits): connections open at
-- once, seconds idle, seconds for a whole request, bytes of request line
-- and headers.
M.limits = { max_connections = 64, idle_timeout = 5, request_timeout = 10,
  max_header_bytes = 8192 }

--- Serve the endpoints on host:port (port 0: any free port), answering
-- for the load `get_cfg()` returns at each request.
-- @tparam[opt] table limits fields of M.limits to override
-- @return the bound port | nil, error
function M.listen(host, port, get_cfg, limits)
  local l = {}
  for k, v in pairs(M.limits) do l[k] = v end
  for k, v in pairs(limits or {}) do l[k] = v end
  return core.listen(host, port, function(method, path, query, headers, id)
    local cfg = get_cfg()
    local ok, status, body, ctype, encoding
    if path == "/probe" and cfg.blackbox and (method == "GET"
        or method == "HEAD") then
      ok, status, body, ctype = pcall(M.probe, cfg, method, query, headers, id)
    else
      ok, status, body, ctype, encoding = pcall(M.route, cfg, method, path,
        query, headers)
    end
    if not ok then
      log.event("error", "http_error", { path = path, error = tostring(status) })
      return 500, "internal error\n"
    end
    return status, body, ctype, encoding
  end, l)
end

--- Stop serving.
M.close = core.unlisten

return M
