--- Running blackbox_exporter modules (sonde.blackbox) on the loop, and the
-- series blackbox_exporter 0.23 answers for each prober (prober/http.go,
-- tcp.go, grpc.go, utils.go, handler.go), with its names, HELP texts and
-- TYPEs, families sorted by name as its registry gathers them.
--
--   module:run(target, { timeout = s }, function(res) ... end) -> op id
--   res = { success = bool, duration = s, families = {...}, logs = {...},
--           result = the prober's result table }
--   run.render(res)      -- text exposition format 0.0.4
--   run.debug_text(res, module)   -- the ?debug=true page
-- @module sonde.blackbox.run
local core = require "sonde.core"
local probers = require "sonde.probers"
local metrics = require "sonde.metrics"

local M = {}

local fmt = string.format

---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
--- Base64 (standard, padded): HTTP basic authentication.
function M.base64(s)
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return B64:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

--- A float as Go's strconv.FormatFloat(v, 'g', -1, 64) prints it (what
-- blackbox_exporter's exposition shows: 1.804258986e+09, 0.000123):
-- sonde.metrics.float.
M.gofloat = metrics.float

-- The address of "ip:port" / "[v6]:port".
local function addr_ip(a)
  if type(a) ~= "string" then return nil end
  return a:match("^%[(.-)%]:%d+$") or a:match("^([^:]+):%d+$") or a
end

-- The bytes of an IP address (4 or 16), or nil.
local function ip_bytes(ip)
  if not ip then return nil end
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d)) end
  if not ip:find(":") then return nil end
  ip = ip:gsub("%%.*$", "")
  -- an embedded IPv4 tail
  local head, v4 = ip:match("^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  local tail = {}
  if head then
    local bytes = ip_bytes(v4)
    ip = head .. fmt("%x:%x", bytes:byte(1) * 256 + bytes:byte(2),
      bytes:byte(3) * 256 + bytes:byte(4))
  end
  local left, right = ip:match("^(.-)::(.*)$")
  local groups = {}
  local function split(s)
    local t = {}
    if s == "" then return t end
    for g in s:gmatch("[^:]+") do t[#t + 1] = tonumber(g, 16) or 0 end
    return t
  end
  if left then
    local l, r = split(left), split(right)
    for _, g in ipairs(l) do groups[#groups + 1] = g end
    for _ = 1, 8 - #l - #r do groups[#groups + 1] = 0 end
    for _, g in ipairs(r) do groups[#groups + 1] = g end
  else
    groups = split(ip)
  end
  for i = 1, 8 do
    local g = groups[i] or 0
    tail[#tail + 1] = string.char(g // 256, g % 256)
  end
  local s = table.concat(tail)
  -- Go: an IPv4-mapped address hashes as its 4 bytes (ip.To4())
  if s:sub(1, 12) == ("\0"):rep(10) .. "\255\255" then return s:sub(13) end
  return s
end

--- FNV-1a (32 bits) of the address's bytes: blackbox_exporter's ipHash.
function M.ip_hash(ip)
  local bytes = ip_bytes(ip)
  if not bytes then return 0 end
  local h = 2166136261
  for i = 1, #bytes do
    h = h ~ bytes:byte(i)
    h = (h * 16777619) & 0xffffffff
  end
  return h
end

-- RFC 3339 with milliseconds, UTC (go-kit's DefaultTimestampUTC).
local function ts()
  local t = core.wall_time and core.wall_time() or os.time()
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) ..
    fmt(".%03dZ", math.floor((t % 1) * 1000))
end

-- logfmt value
local function lv(v)
  v = tostring(v)
  if v == "" or v:find('[%s"=\\]') or v:find("[%c]") then
    return '"' .. v:gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
  end
  return v
end

---------------------------------------------------------------------------
-- A probe's registry
---------------------------------------------------------------------------

local Reg = {}
Reg.__index = Reg

local function registry()
  return setmetatable({ fams = {} }, Reg)
end

-- Declare a family (a gauge) with its help.
function Reg:family(name, help, typ)
  local f = self.fams[name]
  if not f then
    f = { name = name, help = help, type = typ or "gauge", samples = {} }
    self.fams[name] = f
  end
  return f
end

-- A sample's key: its labels, a list of { name, value } pairs (sorted by
-- name), as the exposition writes them ("" for none).
local function sample_key(labels)
  local parts = {}
  for _, l in ipairs(labels or {}) do
    parts[#parts + 1] = fmt('%s="%s"', l[1], metrics.escape(l[2]))
  end
  return #parts > 0 and "{" .. table.concat(parts, ",") .. "}" or ""
end

-- Set a sample.
function Reg:set(name, help, value, labels)
  self:family(name, help).samples[sample_key(labels)] = value
end

-- Add to a sample (from 0).
function Reg:add(name, help, value, labels)
  local samples = self:family(name, help).samples
  local key = sample_key(labels)
  samples[key] = (samples[key] or 0) + value
end

--- The text exposition of a probe's series (families by name; a family
-- without samples is left out, as client_golang's Gather does).
function M.render(res)
  local names = {}
  for n, f in pairs(res.families.fams) do
    if next(f.samples) then names[#names + 1] = n end
  end
  table.sort(names)
  local out = {}
  for _, n in ipairs(names) do
    local f = res.families.fams[n]
    out[#out + 1] = fmt("# HELP %s %s", n, f.help)
    out[#out + 1] = fmt("# TYPE %s %s", n, f.type)
    local keys = {}
    for k in pairs(f.samples) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      out[#out + 1] = n .. k .. " " .. M.gofloat(f.samples[k])
    end
  end
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- Shared series
---------------------------------------------------------------------------

local HELP = {
  success = "Displays whether or not the probe was a success",
  duration = "Returns how long the probe took to complete in seconds",
  dns_lookup = "Returns the time taken for probe dns lookup in seconds",
  ip_protocol = "Specifies whether probe ip protocol is IP4 or IP6",
  ip_hash = "Specifies the hash of IP address. It's useful to detect if the IP address changes.",
  regex = "Indicates if probe failed due to regex",
  ssl_earliest = "Returns last SSL chain expiry in unixtime",
  ssl_chain = "Returns last SSL chain expiry in timestamp",
  ssl_info = "Contains SSL leaf certificate information",
  tls_version = "Returns the TLS version used or NaN when unknown",
}

-- Go's time.Time{}.Unix(): what blackbox exports for an unverified chain
local GO_ZERO_TIME = -62135596800

-- chooseProtocol's three gauges, from a result's address.
local function ip_series(reg, r, log, host)
  -- an IP literal target is its own address (blackbox resolves it before
  -- dialing, so a refused connection still has it)
  if host then host = host:match("^%[(.*)%]$") or host end
  local literal = host and ip_bytes(host) and host
  local ip = literal or addr_ip(r.remote_addr)
  local proto = r.ip_protocol
  if (proto == nil or proto == 0) and ip then proto = ip:find(":") and 6 or 4 end
  reg:set("probe_dns_lookup_time_seconds", HELP.dns_lookup,
    r.phases and r.phases.resolve or 0)
  reg:set("probe_ip_protocol", HELP.ip_protocol, proto or 0)
  reg:set("probe_ip_addr_hash", HELP.ip_hash, ip and M.ip_hash(ip) or 0)
  if ip then log("info", "Resolved target address", "ip", ip) end
end

-- blackbox's chooseProtocol: resolve `host` (core.resolve; an IP literal
-- is itself), pick the first address of the preferred family (`proto`
-- "ip6" or "ip4"), else, with `fallback`, the last address of the other
-- (Go's loop), and set probe_ip_protocol, probe_ip_addr_hash and
-- probe_dns_lookup_time_seconds.  k(ip, lookup_seconds) or k(nil, seconds,
-- error).  Returns the lookup's op id, or nil when k ran at once.
local function choose(reg, log, host, proto, fallback, timeout, k)
  host = host:match("^%[(.*)%]$") or host
  reg:set("probe_ip_protocol", HELP.ip_protocol, 0)
  reg:set("probe_ip_addr_hash", HELP.ip_hash, 0)
  reg:set("probe_dns_lookup_time_seconds", HELP.dns_lookup, 0)
  log("info", "Resolving target address", "target", host, "ip_protocol", proto)
  local function pick(list, seconds)
    local want = proto == "ip4" and 4 or 6
    local chosen, other
    for _, ip in ipairs(list) do
      local fam = ip:find(":") and 6 or 4
      if fam == want then chosen = ip break end
      other = ip
    end
    reg:set("probe_dns_lookup_time_seconds", HELP.dns_lookup, seconds)
    if not chosen then
      if not other or not fallback then
        local err = "unable to find ip; no fallback"
        if not fallback and #list > 0 then
          err = fmt("lookup %s: no such host", host)
        end
        log("error", "Resolution with IP protocol failed", "target", host,
          "ip_protocol", proto, "err", err)
        return k(nil, seconds, err)
      end
      chosen, want = other, want == 4 and 6 or 4
    end
    reg:set("probe_ip_protocol", HELP.ip_protocol, want)
    reg:set("probe_ip_addr_hash", HELP.ip_hash, M.ip_hash(chosen))
    log("info", "Resolved target address", "target", host, "ip", chosen)
    return k(chosen, seconds)
  end
  if ip_bytes(host) then return pick({ host }, 0) end
  return core.resolve(host, timeout, function(r)
    if r.status ~= "success" then
      reg:set("probe_dns_lookup_time_seconds", HELP.dns_lookup, r.duration or 0)
      log("error", "Resolution with IP protocol failed", "target", host, "err", r.output)
      return k(nil, r.duration or 0, r.output)
    end
    local list = {}
    for ip in r.output:gmatch("[^\n]+") do list[#list + 1] = ip end
    return pick(list, r.duration or 0)
  end)
end

-- blackbox's TLS series of a connection state (sonde's `tls` facts).
local function tls_series(reg, t, with_chain)
  reg:set("probe_ssl_earliest_cert_expiry", HELP.ssl_earliest,
    t.earliest_expiry or GO_ZERO_TIME)
  reg:set("probe_tls_version_info", HELP.tls_version, 1,
    { { "version", t.version or "unknown" } })
  if with_chain then
    reg:set("probe_ssl_last_chain_expiry_timestamp_seconds", HELP.ssl_chain,
      t.last_chain_expiry or GO_ZERO_TIME)
  end
  reg:set("probe_ssl_last_chain_info", HELP.ssl_info, 1, {
    { "fingerprint_sha256", t.fingerprint_sha256 or "" },
    { "issuer", t.issuer or "" },
    { "subject", t.subject or "" },
    { "subjectalternative", table.concat(t.dns_names or {}, ",") } })
end

---------------------------------------------------------------------------
-- http
---------------------------------------------------------------------------

local HTTP_HELP = {
  duration = "Duration of http request by phase, summed over all redirects",
  content_length = "Length of http content response",
  uncompressed = "Length of uncompressed response body",
  redirects = "The number of redirects",
  ssl = "Indicates if SSL was used for the final redirect",
  status = "Response HTTP status code",
  version = "Returns the version of HTTP of the probe response",
  last_modified = "Returns the Last-Modified HTTP response header in unixtime",
}

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7,
  Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds since the epoch of an HTTP date (http.ParseTime: RFC 1123,
-- RFC 850, ANSI C), or nil.
local function http_time(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, H, Mi, S = s:match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, H, Mi, S = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tostring(1900 + tonumber(y) + (tonumber(y) < 69 and 100 or 0)) end
  end
  if not d then
    mon, d, H, Mi, S, y = s:match("^%a+ (%a%a%a) +(%d+) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  if not d or not MONTHS[mon] then return nil end
  -- days from civil (UTC, no time zone involved)
  local yy, m, dd = tonumber(y), MONTHS[mon], tonumber(d)
  if m <= 2 then yy = yy - 1 end
  local era = yy // 400
  local yoe = yy - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + dd - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(H) * 3600 + tonumber(Mi) * 60 + tonumber(S)
end
M.http_time = http_time

local PROTO = { [1.0] = "HTTP/1.0", [1.1] = "HTTP/1.1", [2] = "HTTP/2.0",
  [3] = "HTTP/3.0" }

-- A header's lines (sonde joins a repeated header with ", ").
local function header_values(r, name)
  local v = r.headers and r.headers[name]
  if v == nil then return {} end
  return { v }
end

local function canon(name)
  return core.header_name and core.header_name(name) or name
end

local NO_RESPONSE = { connect_refused = true, connect_timeout = true,
  timeout = true, dns = true, network = true, tls = true, protocol = true,
  resource = true, config = true, cancelled = true }

-- Go's redirect codes (net/http redirectBehavior)
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true,
  [308] = true }

-- A Location resolved against the URL it came from (RFC 3986, without
-- removing dot segments); the fragment dropped.
local function resolve_url(base, loc)
  loc = loc:gsub("#.*$", "")
  if loc:match("^%a[%w+.-]*:") then return loc end
  local scheme, authority, path = base:match("^(%a[%w+.-]*)://([^/?#]*)([^#]*)")
  if not scheme then return loc end
  if loc:sub(1, 2) == "//" then return scheme .. ":" .. loc end
  if loc:sub(1, 1) == "/" then return scheme .. "://" .. authority .. loc end
  local p = path:gsub("%?.*$", "")
  if loc == "" then return scheme .. "://" .. authority .. path end
  if loc:sub(1, 1) == "?" then return scheme .. "://" .. authority .. p .. loc end
  return scheme .. "://" .. authority .. (p:match("^(.*/)") or "/") .. loc
end

local function authority_of(url)
  return (url:match("^%a[%w+.-]*://([^/?#]*)") or ""):lower()
end

local function host_of(authority)
  return authority:match("^%[(.-)%]") or authority:match("^([^:]*)")
end

-- A probe's cookie jar (blackbox gives each probe a fresh Go cookiejar):
-- the Set-Cookie lines of a response (sonde joins repeats with ", ")
-- stored by name, domain and path; `header(url)` the Cookie line for a
-- request.  Host-only cookies go to their host, a Domain cookie to the
-- domain and its subdomains; Path is a prefix; Secure needs https;
-- Max-Age <= 0 removes one.  (Expires dates and public suffixes are not
-- interpreted.)
local function jar()
  local cookies = {}
  local J = {}
  function J.store(url, set_cookie)
    if type(set_cookie) ~= "string" then return end
    local host = host_of(authority_of(url))
    local path = (url:match("^%a[%w+.-]*://[^/?#]*(/[^?#]*)") or "/")
    local dir = path:match("^(.*)/[^/]*$")
    if not dir or dir == "" then dir = "/" end
    -- one cookie per ", name=" boundary
    local text = ", " .. set_cookie
    local starts = {}
    for at in text:gmatch("(), [%w!#$%%&'*+.^_`|~-]+=") do starts[#starts + 1] = at end
    for i, at in ipairs(starts) do
      local one = text:sub(at + 2, (starts[i + 1] or #text + 1) - 1)
      local name, value = one:match("^([^=;]+)=([^;]*)")
      if name then
        local c = { name = name, value = value, host = host, path = dir }
        for attr in one:gmatch(";%s*([^;]+)") do
          local k, v = attr:match("^([^=]+)=?(.*)$")
          k = k:lower():gsub("%s+$", "")
          if k == "domain" and v ~= "" then
            c.domain = v:gsub("^%.", ""):lower()
          elseif k == "path" and v:sub(1, 1) == "/" then c.path = v
          elseif k == "secure" then c.secure = true
          elseif k == "max-age" and tonumber(v) and tonumber(v) <= 0 then c.gone = true
          end
        end
        if not c.domain or host == c.domain or host:sub(-#c.domain - 1) == "." .. c.domain then
          local key = name .. "\0" .. (c.domain or host) .. "\0" .. c.path
          cookies[key] = not c.gone and c or nil
        end
      end
    end
  end
  function J.header(url)
    local host = host_of(authority_of(url))
    local https = url:lower():match("^https:") ~= nil
    local path = url:match("^%a[%w+.-]*://[^/?#]*(/[^?#]*)") or "/"
    local out = {}
    for _, c in pairs(cookies) do
      local ok = c.domain and (host == c.domain or host:sub(-#c.domain - 1) == "." .. c.domain)
        or (not c.domain and host == c.host)
      if ok and path:sub(1, #c.path) == c.path and (https or not c.secure) then
        out[#out + 1] = c.name .. "=" .. c.value
      end
    end
    table.sort(out)
    return #out > 0 and table.concat(out, "; ") or nil
  end
  return J
end

-- The requests of one probe, redirects followed as Go's client does for
-- blackbox_exporter: any host, at most 10, 301/302/303 turning other
-- methods into GET without a body, 307/308 keeping both; a custom Host
-- kept through relative redirects; Authorization dropped for another
-- host (not a subdomain); the TLS server name given to the first
-- host's requests only.  cb(r) gets the last response (or failure) with
-- `redirects` (Go's len(via)), `redirect_stopped` (a 3xx not followed)
-- and `phases` summed over the requests.
local function follow(h, spec, first_tls, other_tls, log, deadline, cb)
  local acc = { resolve = 0, connect = 0, tls = 0, processing = 0, transfer = 0 }
  local first_authority = authority_of(spec.url)
  local first_host = host_of(first_authority)
  local cookies = jar()
  local function hop(url, method, body, host_header, auth, n)
    local s = {}
    for k, v in pairs(spec) do s[k] = v end
    s.url, s.method, s.body = url, method, body
    s.follow_redirects = "none"
    s.headers = {}
    local has_cookie
    for _, e in ipairs(spec.headers) do
      local l = e.name:lower()
      if l == "cookie" then has_cookie = true end
      if l ~= "host" and l ~= "authorization" then s.headers[#s.headers + 1] = e end
    end
    -- the jar's cookies go to the host the URL names (Go's jar: req.URL)
    local c = not has_cookie and cookies.header(url)
    if c then s.headers[#s.headers + 1] = { name = "Cookie", value = c } end
    if host_header then s.headers[#s.headers + 1] = { name = "Host", value = host_header } end
    if auth then s.headers[#s.headers + 1] = { name = "Authorization", value = auth } end
    s.tls = authority_of(url) == first_authority and first_tls or other_tls
    s.timeout = math.max(deadline - core.now(), 1e-3)
    if n > 1 then log("info", "Making HTTP request", "url", url, "host", host_header or "") end
    local ok, o = pcall(probers.handlers.http_get.prepare, { where = "redirect" }, s)
    if not ok then
      return cb { status = "failure", reason = "config", output = tostring(o),
        error = tostring(o), redirects = n - 1, phases = acc }
    end
    return probers.handlers.http_get.start(o, function(r)
      local ph = r.phases or {}
      for _, k in ipairs { "connect", "tls", "processing", "transfer" } do
        acc[k] = acc[k] + (ph[k] or 0)
      end
      if n > 1 then acc.resolve = acc.resolve + (ph.resolve or 0) end
      r.phases = acc
      cookies.store(url, r.headers and r.headers["set-cookie"])
      local loc = r.headers and r.headers.location
      if r.http_status and REDIRECT[r.http_status] and loc and loc ~= "" then
        log("info", "Received redirect", "location", loc)
        r.redirects = n
        if n > 10 or not h.follow_redirects then
          log("info", "Not following redirect")
          r.redirect_stopped = true
          return cb(r)
        end
        local nurl = resolve_url(url, loc)
        local nmethod, nbody = method, body
        if r.http_status <= 303 then
          nbody = nil
          if method ~= "GET" and method ~= "HEAD" then nmethod = "GET" end
        end
        local relative = not loc:match("^%a[%w+.-]*:") and loc:sub(1, 2) ~= "//"
        local nhost = relative and host_header or nil
        local nauth = auth
        local to = host_of(authority_of(nurl))
        if nauth and to ~= first_host and not (to:sub(-#first_host - 1) == "." .. first_host) then
          nauth = nil
        end
        return hop(nurl, nmethod, nbody, nhost, nauth, n + 1)
      end
      r.redirects = n - 1
      cb(r)
    end)
  end
  local host_header, auth
  for _, e in ipairs(spec.headers) do
    local l = e.name:lower()
    if l == "host" then host_header = e.value elseif l == "authorization" then auth = e.value end
  end
  return hop(spec.url, spec.method, spec.body, host_header, auth, 1)
end

local function http_probe(m, target, timeout, log, reg, done, ropts)
  local h = m.spec
  local module_headers = h.headers
  if ropts.hostname then             -- /probe's hostname= (setHTTPHost)
    module_headers = {}
    for _, e in ipairs(h.headers) do
      if e.name:lower() ~= "host" then module_headers[#module_headers + 1] = e end
    end
    module_headers[#module_headers + 1] = { name = "Host", value = ropts.hostname }
  end
  for _, p in ipairs { "connect", "tls", "processing", "transfer" } do
    reg:set("probe_http_duration_seconds", HTTP_HELP.duration, 0, { { "phase", p } })
  end
  reg:set("probe_http_content_length", HTTP_HELP.content_length, 0)
  reg:set("probe_http_uncompressed_body_length", HTTP_HELP.uncompressed, 0)
  reg:set("probe_http_redirects", HTTP_HELP.redirects, 0)
  reg:set("probe_http_ssl", HTTP_HELP.ssl, 0)
  reg:set("probe_http_status_code", HTTP_HELP.status, 0)
  reg:set("probe_http_version", HTTP_HELP.version, 0)
  reg:set("probe_failed_due_to_regex", HELP.regex, 0)
  if not target:match("^[hH][tT][tT][pP][sS]?://") then target = "http://" .. target end
  local headers, has = {}, {}
  for _, e in ipairs(module_headers) do
    headers[#headers + 1] = { name = e.name, value = e.value }
    has[e.name:lower()] = true
  end
  if h.authorization and not has.authorization then
    headers[#headers + 1] = { name = "Authorization", value = h.authorization }
  end
  -- blackbox: without tls_config.server_name, a Host header names the
  -- server TLS is for
  local tls_opts = h.tls
  for _, e in ipairs(module_headers) do
    if e.name:lower() == "host" and not h.tls.server_name then
      tls_opts = {}
      for k, v in pairs(h.tls) do tls_opts[k] = v end
      tls_opts.server_name = e.value:match("^%[(.-)%]") or e.value:match("^([^:]+)")
    end
  end
  local need_body = #h.fail_if_body_matches > 0 or #h.fail_if_body_not_matches > 0
  local max_body = 16 * 1024 * 1024
  if h.body_size_limit then max_body = h.body_size_limit + 1 end
  if not need_body and not h.body_size_limit then max_body = 65536 end
  local spec = { url = target, method = h.method, headers = headers,
    body = h.body ~= "" and h.body or nil, timeout = timeout,
    max_body = max_body, tls = tls_opts,
    follow_redirects = "none" }      -- followed by follow()
  local ok, opts = pcall(probers.handlers.http_get.prepare,
    { where = "target" }, spec)
  if not ok then
    log("error", "Could not parse target URL", "err", (tostring(opts):gsub("^.-target: ", "")))
    reg.fams.probe_http_duration_seconds.samples = {}
    return done(false)
  end
  local scheme, authority, rest = target:match("^(%a+)://([^/?#]*)(.*)$")
  local thost, tport = authority:match("^%[([^%]]+)%](.*)$")
  if not thost then thost, tport = authority:match("^([^:]*)(.*)$") end
  local deadline = core.now() + timeout
  -- resolved first (blackbox's chooseProtocol: the address series, and a
  -- name that does not resolve ends the probe); the first request goes to
  -- the address chosen, with the target's Host and TLS server name, as
  -- blackbox's does; redirects are followed by follow() as Go's client
  return choose(reg, log, thost, h.ip_protocol, h.ip_protocol_fallback,
      timeout, function(ip, lookup)
    if not ip then
      reg.fams.probe_http_duration_seconds.samples = {
        ['{phase="resolve"}'] = lookup }
      return done(false)
    end
    local first_tls, other_tls = tls_opts, {}
    for k, v in pairs(h.tls) do other_tls[k] = v end
    other_tls.server_name = nil
    local fspec = {}
    for k, v in pairs(spec) do fspec[k] = v end
    if not authority:find("@", 1, true) then
      fspec.url = scheme .. "://" .. (ip:find(":") and "[" .. ip .. "]" or ip)
        .. tport .. rest
      if not has.host then
        fspec.headers = { table.unpack(spec.headers) }
        fspec.headers[#fspec.headers + 1] = { name = "Host", value = authority }
      end
      if not tls_opts.server_name then
        first_tls = {}
        for k, v in pairs(tls_opts) do first_tls[k] = v end
        first_tls.server_name = thost
      end
    end
    log("info", "Making HTTP request", "url", fspec.url, "host", authority)
    return follow(h, fspec, first_tls, other_tls, log, deadline, function(r)
    local ph = r.phases or {}
    reg:set("probe_http_duration_seconds", HTTP_HELP.duration,
      lookup + (ph.resolve or 0), { { "phase", "resolve" } })
    for _, p in ipairs { "connect", "tls", "processing", "transfer" } do
      reg:set("probe_http_duration_seconds", HTTP_HELP.duration, ph[p] or 0,
        { { "phase", p } })
    end
    local status = r.http_status
    local got = status and status > 0 and not NO_RESPONSE[r.reason]
    local success = false
    if not got then
      log("error", "Error for HTTP request", "err", r.error or r.output or r.reason)
      reg:set("probe_http_redirects", HTTP_HELP.redirects, r.redirects or 0)
    else
      log("info", "Received HTTP response", "status_code", status)
      if #h.valid_status_codes > 0 then
        for _, c in ipairs(h.valid_status_codes) do
          if c == status then success = true break end
        end
        if not success then
          log("info", "Invalid HTTP response status code", "status_code", status,
            "valid_status_codes", "[" .. table.concat(h.valid_status_codes, " ") .. "]")
        end
      elseif status >= 200 and status < 300 then
        success = true
      else
        log("info", "Invalid HTTP response status code, wanted 2xx", "status_code", status)
      end
      if success and (#h.fail_if_header_matches > 0 or #h.fail_if_header_not_matches > 0) then
        local okh = true
        for _, hm in ipairs(h.fail_if_header_matches) do
          local vals = header_values(r, hm.header)
          if #vals == 0 then
            if not hm.allow_missing then
              log("error", "Missing required header", "header", hm.header)
              okh = false break
            end
          else
            for _, v in ipairs(vals) do
              if hm.regexp.match(v) then
                log("error", "Header matched regular expression", "header", hm.header,
                  "regexp", hm.regexp.source, "value_count", #vals)
                okh = false break
              end
            end
            if not okh then break end
          end
        end
        if okh then
          for _, hm in ipairs(h.fail_if_header_not_matches) do
            local vals = header_values(r, hm.header)
            if #vals == 0 then
              if not hm.allow_missing then
                log("error", "Missing required header", "header", hm.header)
                okh = false break
              end
            else
              local any = false
              for _, v in ipairs(vals) do
                if hm.regexp.match(v) then any = true break end
              end
              if not any then
                log("error", "Header did not match regular expression", "header", hm.header,
                  "regexp", hm.regexp.source, "value_count", #vals)
                okh = false break
              end
            end
          end
        end
        success = okh
        reg:set("probe_failed_due_to_regex", HELP.regex, okh and 0 or 1)
      end
      local body = r.body or ""
      local limited = h.body_size_limit and #body > h.body_size_limit
      if limited then body = body:sub(1, h.body_size_limit) end
      if success and need_body then
        local okb = not limited
        if limited then log("error", "Error reading HTTP body", "err", "http: request body too large") end
        for _, re in ipairs(okb and h.fail_if_body_matches or {}) do
          if re.match(body) then
            log("error", "Body matched regular expression", "regexp", re.source)
            okb = false break
          end
        end
        for _, re in ipairs(okb and h.fail_if_body_not_matches or {}) do
          if not re.match(body) then
            log("error", "Body did not match regular expression", "regexp", re.source)
            okb = false break
          end
        end
        success = okb
        reg:set("probe_failed_due_to_regex", HELP.regex, okb and 0 or 1)
      end
      local redirect_stop = r.redirect_stopped
      if limited and not redirect_stop then
        log("info", "Failed to read HTTP response body", "err", "http: request body too large")
        success = false
      end
      local size = r.body_size or #(r.body or "")
      if redirect_stop then size = 0 end
      if limited then size = h.body_size_limit end
      reg:set("probe_http_uncompressed_body_length", HTTP_HELP.uncompressed, size)
      local lm = http_time(r.headers and r.headers["last-modified"])
      if lm then reg:set("probe_http_last_modified_timestamp_seconds", HTTP_HELP.last_modified, lm) end
      local version = r.http_version or 1.1
      reg:set("probe_http_version", HTTP_HELP.version, version)
      if #h.valid_http_versions > 0 then
        local proto, found = PROTO[version] or "", false
        for _, v in ipairs(h.valid_http_versions) do
          if v == proto then found = true break end
        end
        if not found then
          log("error", "Invalid HTTP version number", "version", proto)
          success = false
        end
      end
      reg:set("probe_http_redirects", HTTP_HELP.redirects, r.redirects or 0)
      reg:set("probe_http_content_length", HTTP_HELP.content_length,
        r.content_length or (r.headers and tonumber(r.headers["content-length"])) or -1)
      reg:set("probe_http_status_code", HTTP_HELP.status, status)
    end
    local final_tls = type(r.tls) == "table" and got
    if final_tls then
      reg:set("probe_http_ssl", HTTP_HELP.ssl, 1)
      tls_series(reg, r.tls, true)
      if h.fail_if_ssl then
        log("error", "Final request was over SSL")
        success = false
      end
    elseif h.fail_if_not_ssl then
      log("error", "Final request was not over SSL")
      success = false
    end
    done(success, r)
  end)
  end)
end

---------------------------------------------------------------------------
-- tcp
---------------------------------------------------------------------------

local function split_host_port(target)
  local host, port = target:match("^%[(.-)%]:(%d+)$")
  if not host then host, port = target:match("^([^:]*):(%d+)$") end
  return host, tonumber(port)
end

local function tcp_probe(m, target, timeout, log, reg, done)
  local t = m.spec
  reg:set("probe_failed_due_to_regex", HELP.regex, 0)
  local host, port = split_host_port(target)
  if not host or not port or port < 1 or port > 65535 then
    log("error", "Error splitting target address and port", "err",
      fmt("address %s: missing port in address", target))
    return done(false)
  end
  local opts = { host = host == "" and "127.0.0.1" or host, port = port,
    timeout = timeout }
  local steps = {}
  for i, q in ipairs(t.query_response) do
    if q.expect then
      steps[#steps + 1] = { kind = "expect_re", data = q.expect.ere,
        name = fmt("query_response[%d].expect", i - 1) }
    end
    if q.template then     -- expanded with the expect's submatches
      steps[#steps + 1] = { kind = "send_expand", data = q.template,
        name = fmt("query_response[%d].send", i - 1) }
    elseif q.send ~= "" then
      steps[#steps + 1] = { kind = "send", data = q.send .. "\n",
        name = fmt("query_response[%d].send", i - 1) }
    end
    if q.starttls then
      steps[#steps + 1] = { kind = "starttls", name = fmt("query_response[%d].starttls", i - 1) }
    end
  end
  local starttls = false
  for _, s in ipairs(steps) do if s.kind == "starttls" then starttls = true end end
  if t.tls or starttls then
    local tls = {}
    for k, v in pairs(t.tls_config) do tls[k] = v end
    -- blackbox: the TLS server name is the target's host unless set
    if not tls.server_name and host ~= "" then tls.server_name = host end
    opts.tls = tls
  end
  if #steps > 0 then opts.steps = steps end
  local started = core.now()
  return choose(reg, log, opts.host, t.ip_protocol, t.ip_protocol_fallback,
      timeout, function(ip)
    if not ip then return done(false) end
    opts.host = ip
    opts.timeout = math.max(timeout - (core.now() - started), 1e-3)
    return core.tcp(opts, function(r)
    local success = r.status == "success"
    if r.reason == "connect_refused" or r.reason == "connect_timeout"
        or (r.reason == "tls" and not starttls) or r.reason == "dns" then
      log("error", "Error dialing TCP", "err", r.error or r.output)
    elseif success or r.reason == "expect" or r.reason == "timeout" then
      log("info", "Successfully dialed")
    end
    if type(r.tls) == "table" then tls_series(reg, r.tls, true) end
    if r.reason == "expect" then
      reg:set("probe_failed_due_to_regex", HELP.regex, 1)
      log("error", "Regexp did not match", "err", r.output)
    elseif not success then
      log("error", "Probe error", "err", r.error or r.output)
    end
    done(success, r)
  end)
  end)
end

---------------------------------------------------------------------------
-- grpc
---------------------------------------------------------------------------

local GRPC_HELP = {
  duration = "Duration of gRPC request by phase",
  ssl = "Indicates if SSL was used for the connection",
  status = "Response gRPC status code",
  health = "Response HealthCheck response",
}
local SERVING = { "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" }

local function grpc_probe(m, target, timeout, log, reg, done)
  local g = m.spec
  reg:set("probe_grpc_duration_seconds", GRPC_HELP.duration, 0, { { "phase", "resolve" } })
  reg:set("probe_grpc_ssl", GRPC_HELP.ssl, 0)
  reg:set("probe_grpc_status_code", GRPC_HELP.status, 0)
  reg:family("probe_grpc_healthcheck_response", GRPC_HELP.health)
  reg:set("probe_ssl_earliest_cert_expiry", HELP.ssl_earliest, 0)
  local t = target:gsub("^[hH][tT][tT][pP][sS]?://", ""):gsub("/.*$", "")
  local host, port = split_host_port(t)
  if not host then host = t:match("^%[(.-)%]$") or t end
  port = port or (g.tls and 443 or 80)
  local opts = { host = host == "" and "127.0.0.1" or host, port = port,
    service = g.service, timeout = timeout }
  if g.tls then
    local tls = {}
    for k, v in pairs(g.tls_config) do tls[k] = v end
    opts.tls = tls
  end
  local started = core.now()
  -- resolved first, as blackbox (the address series; a name that does not
  -- resolve ends the probe), then the call dials the name as grpc-go does
  return choose(reg, log, opts.host, g.ip_protocol, g.ip_protocol_fallback,
      timeout, function(ip, lookup)
    reg:set("probe_grpc_duration_seconds", GRPC_HELP.duration, lookup,
      { { "phase", "resolve" } })
    if not ip then return done(false) end
    opts.timeout = math.max(timeout - (core.now() - started), 1e-3)
    local check_start = core.now()
    return core.grpc(opts, function(r)
    reg:set("probe_grpc_duration_seconds", GRPC_HELP.duration,
      core.now() - check_start, { { "phase", "check" } })
    for _, s in ipairs(SERVING) do
      reg:set("probe_grpc_healthcheck_response", GRPC_HELP.health,
        r.serving_status == s and 1 or 0, { { "serving_status", s } })
    end
    local code = r.grpc_status
    if code == nil then
      -- what grpc-go's status.FromError gives a call that failed
      code = r.reason == "timeout" and 4 or 14
    end
    reg:set("probe_grpc_status_code", GRPC_HELP.status, code)
    if type(r.tls) == "table" then
      reg:set("probe_grpc_ssl", GRPC_HELP.ssl, 1)
      reg:set("probe_ssl_earliest_cert_expiry", HELP.ssl_earliest,
        r.tls.earliest_expiry or GO_ZERO_TIME)
      reg:set("probe_tls_version_info", HELP.tls_version, 1,
        { { "version", r.tls.version or "unknown" } })
      reg:set("probe_ssl_last_chain_info", HELP.ssl_info, 1, {
        { "fingerprint_sha256", r.tls.fingerprint_sha256 or "" },
        { "issuer", r.tls.issuer or "" },
        { "subject", r.tls.subject or "" },
        { "subjectalternative", table.concat(r.tls.dns_names or {}, ",") } })
    end
    local success = r.status == "success"
    if not success then
      log("error", "can't connect grpc server:", "err", r.output)
    end
    done(success, r)
  end)
  end)
end

---------------------------------------------------------------------------
-- dns and icmp: through the probers of those names, when present
---------------------------------------------------------------------------

-- Start the prober `kind` (probers.handlers, when this build has it) with
-- `spec`; cb(r) gets its result.  Returns the op id, or nil after logging
-- why it could not start (done(false) is then the caller's).
local function start_external(kind, m, spec, log, cb)
  local h = probers.handlers[kind]
  if not h then
    log("error", "Error", "err", fmt("the %s prober is not part of this "
      .. "build of sonde: module %q cannot run", kind, m.name))
    return nil, false
  end
  local ok, opts = pcall(h.prepare, { where = "module " .. m.name }, spec)
  if not ok then
    log("error", "Error", "err", tostring(opts))
    return nil, false
  end
  return h.start(opts, function(r)
    if h.finish then r = h.finish(opts, r) end
    cb(r)
  end), true
end

local DNS_HELP = {
  duration = "Duration of DNS request by phase",
  answer = "Returns number of entries in the answer resource record list",
  authority = "Returns number of entries in the authority resource record list",
  additional = "Returns number of entries in the additional resource record list",
  succeeded = "Displays whether or not the query was executed successfully",
  serial = "Returns the serial number of the zone",
}

-- blackbox's dns prober through sonde's (sonde.dns: c-ares).
local function dns_probe(m, target, timeout, log, reg, done)
  local d = m.spec
  for _, p in ipairs { "resolve", "connect", "request" } do
    reg:set("probe_dns_duration_seconds", DNS_HELP.duration, 0, { { "phase", p } })
  end
  reg:set("probe_dns_answer_rrs", DNS_HELP.answer, 0)
  reg:set("probe_dns_authority_rrs", DNS_HELP.authority, 0)
  reg:set("probe_dns_additional_rrs", DNS_HELP.additional, 0)
  reg:set("probe_dns_query_succeeded", DNS_HELP.succeeded, 0)
  -- net.SplitHostPort, else the whole target with port 53
  local host, port = split_host_port(target)
  if not host then host, port = target, 53 end
  local function sources(v)
    local out = {}
    for k, list in pairs(v) do
      if #list > 0 then
        out[k] = {}
        for i, re in ipairs(list) do out[k][i] = re.source end
      end
    end
    return next(out) and out or nil
  end
  local spec = { server = target, name = d.query_name, type = d.query_type,
    class = d.query_class, transport = d.transport_protocol,
    recursion_desired = d.recursion_desired, timeout = timeout,
    valid_rcodes = d.valid_rcodes,
    validate_answer_rrs = sources(d.validate_answer_rrs),
    validate_authority_rrs = sources(d.validate_authority_rrs),
    validate_additional_rrs = sources(d.validate_additional_rrs) }
  local t0 = core.now()
  return choose(reg, log, host, d.ip_protocol, d.ip_protocol_fallback, timeout,
      function(ip, lookup)
    reg:set("probe_dns_duration_seconds", DNS_HELP.duration, lookup,
      { { "phase", "resolve" } })
    if not ip then return done(false) end
    spec.server = (ip:find(":") and "[" .. ip .. "]" or ip) .. ":" .. port
    spec.timeout = math.max(timeout - (core.now() - t0), 1e-3)
  local id, started = start_external("dns", m, spec, log, function(r)
    reg:set("probe_dns_duration_seconds", DNS_HELP.duration,
      r.lookup_time or 0, { { "phase", "request" } })
    if r.rcode then
      reg:set("probe_dns_answer_rrs", DNS_HELP.answer, r.answer_rrs or 0)
      reg:set("probe_dns_authority_rrs", DNS_HELP.authority, r.authority_rrs or 0)
      reg:set("probe_dns_additional_rrs", DNS_HELP.additional, r.additional_rrs or 0)
      reg:set("probe_dns_query_succeeded", DNS_HELP.succeeded, 1)
      if d.query_type == "SOA" then
        reg:set("probe_dns_serial", DNS_HELP.serial, r.serial or 0)
      end
    else
      log("error", "Error while sending a DNS query", "err", r.output)
    end
    if r.status ~= "success" and r.rcode then
      log("error", "Probe error", "err", r.output)
    end
    done(r.status == "success", r)
  end)
  if not started then return done(false) end
  return id
  end)
end

local ICMP_HELP = {
  duration = "Duration of icmp request by phase",
  hop_limit = "Replied packet hop limit (TTL for ipv4)",
}

-- blackbox's icmp prober through sonde's (sonde.icmp).
local function icmp_probe(m, target, timeout, log, reg, done)
  local i = m.spec
  for _, p in ipairs { "resolve", "setup", "rtt" } do
    reg:set("probe_icmp_duration_seconds", ICMP_HELP.duration, 0, { { "phase", p } })
  end
  local spec = { host = target, preferred_ip_protocol = i.ip_protocol,
    ip_protocol_fallback = i.ip_protocol_fallback, payload_size = i.payload_size,
    dont_fragment = i.dont_fragment, ttl = i.ttl, timeout = timeout,
    source_ip_address = i.source_ip_address }
  local id, started = start_external("icmp", m, spec, log, function(r)
    ip_series(reg, r, log, target)
    if r.ip_addr_hash then reg:set("probe_ip_addr_hash", HELP.ip_hash, r.ip_addr_hash) end
    local ph = r.phases or {}
    for _, p in ipairs { "resolve", "setup", "rtt" } do
      reg:set("probe_icmp_duration_seconds", ICMP_HELP.duration, ph[p] or 0, { { "phase", p } })
    end
    if r.status == "success" and r.reply_ttl then
      reg:set("probe_icmp_reply_hop_limit", ICMP_HELP.hop_limit, r.reply_ttl)
    end
    if r.status ~= "success" then log("error", "Probe error", "err", r.output) end
    done(r.status == "success", r)
  end)
  if not started then return done(false) end
  return id
end

local RUN = { http = http_probe, tcp = tcp_probe, grpc = grpc_probe,
  dns = dns_probe, icmp = icmp_probe }

---------------------------------------------------------------------------
-- Modules
---------------------------------------------------------------------------

local Module = {}
Module.__index = Module

--- Whether `v` is a blackbox module (sonde.module).
function M.is_module(v)
  return getmetatable(v) == Module
end

--- Run one probe of the module against `target` on the loop; `cb(res)`
-- gets `{ success, duration, families, logs, result, target, module }`.
-- `opts.timeout`: seconds (default: the module's timeout, else 119.5,
-- blackbox's without a scrape header); `opts.hostname`: an http module's
-- Host header (/probe's hostname=; M.host_conflict tells a clash).
-- @return the operation's id (core.cancel), or nil when it ended at once
function Module:run(target, opts, cb)
  opts = opts or {}
  local timeout = opts.timeout
  if not timeout then timeout = self.timeout > 0 and self.timeout or 119.5 end
  if timeout <= 0 then timeout = 1e-3 end
  local reg = registry()
  local logs = {}
  local name = self.name
  local function log(level, msg, ...)
    local kv = { ...}
    local parts = { "ts=" .. ts(), "module=" .. lv(name), "target=" .. lv(target),
      "level=" .. level, "msg=" .. lv(msg) }
    for i = 1, #kv, 2 do parts[#parts + 1] = kv[i] .. "=" .. lv(kv[i + 1]) end
    logs[#logs + 1] = table.concat(parts, " ")
  end
  log("info", "Beginning probe", "probe", self.prober, "timeout_seconds", M.gofloat(timeout))
  local start = core.now()
  local finished, sync, early = false, false, nil
  local function done(success, r)
    if finished then return end
    finished = true
    local duration = core.now() - start
    reg:set("probe_success", HELP.success, success and 1 or 0)
    reg:set("probe_duration_seconds", HELP.duration, duration)
    if success then
      log("info", "Probe succeeded", "duration_seconds", M.gofloat(duration))
    else
      log("error", "Probe failed", "duration_seconds", M.gofloat(duration))
    end
    local res = { success = success, duration = duration, families = reg,
      logs = logs, result = r, target = target, module = self }
    if sync then early = res else cb(res) end
  end
  sync = true
  local id = RUN[self.prober](self, target, timeout, log, reg, done, opts)
  sync = false
  -- ended before it started (a bad target): the callback still comes
  -- from the loop, never before run() returns
  if early then
    return core.timer(0, function() cb(early) end)
  end
  return id
end

--- blackbox's setHTTPHost check: the error text when the module sets
-- another Host header than `hostname`, else nil.
function Module:host_conflict(hostname)
  for _, e in ipairs(self.prober == "http" and self.spec.headers or {}) do
    if e.name:lower() == "host" and e.value ~= hostname then
      return fmt("host header defined both in module configuration (%s) and "
        .. "with URL-parameter 'hostname' (%s)", e.value, hostname)
    end
  end
end

--- The module's configuration as YAML (the debug page).
function Module:yaml()
  local ok, lyaml = pcall(require, "lyaml")
  if ok and lyaml.dump then
    local ok2, s = pcall(lyaml.dump, { self.raw })
    if ok2 then return (s:gsub("^%-%-%-\n", ""):gsub("\n%.%.%.\n$", "\n")) end
  end
  return "prober: " .. self.prober .. "\n"
end

--- The ?debug=true page: the probe's logs, its series, the module.
function M.debug_text(res)
  return "Logs for the probe:\n" .. table.concat(res.logs, "\n") .. "\n"
    .. "\n\n\nMetrics that would have been returned:\n" .. M.render(res)
    .. "\n\n\nModule configuration:\n" .. res.module:yaml()
end

--- Make a module runnable (sonde.blackbox builds `m` from the file).
function M.module(m)
  return setmetatable(m, Module)
end

return M
