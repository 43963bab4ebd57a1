--- blackbox_exporter configurations (blackbox.yml, version 0.23): modules
-- read, checked and made runnable on the loop.
--
--   local bb = require("sonde.blackbox")
--   local conf, err = bb.load("/etc/prometheus/blackbox.yml")
--   local m = conf.modules.http_2xx            -- or bb.module("http_2xx")
--   m:run("http://127.0.0.1:8080/", { timeout = 5 }, function(res)
--     print(res.success, bb.render(res))        -- the /probe answer
--   end)
--
-- A configuration is `modules: { NAME: { prober, timeout, http | tcp |
-- grpc | dns | icmp } }`, with blackbox_exporter's fields and defaults
-- (config/config.go).  What sonde cannot honour (an unknown field, or a
-- value sonde does not support) makes the load fail with
-- `PATH: module "NAME": FIELD: reason`; nothing is silently ignored.
-- Regular expressions (Go RE2) are mapped to POSIX ERE
-- (sonde.regex) or refused at load.
--
-- Supported fields:
--
--   * module: `prober` (http, tcp, grpc, dns, icmp), `timeout` (a Go
--     duration; default 0: the scrape's, see M.timeout);
--   * http: `valid_status_codes` (default 2xx), `valid_http_versions`,
--     `method` (GET), `headers`, `body`, `fail_if_ssl`, `fail_if_not_ssl`,
--     `fail_if_body_matches_regexp`, `fail_if_body_not_matches_regexp`,
--     `fail_if_header_matches`, `fail_if_header_not_matches` (`header`,
--     `regexp`, `allow_missing`), `preferred_ip_protocol` (ip4, ip6),
--     `ip_protocol_fallback`, `no_follow_redirects`, `body_size_limit`,
--     `compression` ("" or identity only), and of http_client_config:
--     `follow_redirects`, `enable_http2`, `basic_auth` (`username`,
--     `password`, `password_file`), `bearer_token`, `bearer_token_file`,
--     `authorization` (`type`, `credentials`, `credentials_file`),
--     `tls_config`;
--   * tcp: `query_response` (`expect`, `send`, `starttls`), `tls`,
--     `tls_config`, `preferred_ip_protocol`, `ip_protocol_fallback`;
--   * grpc: `service`, `tls`, `tls_config`, `preferred_ip_protocol`,
--     `ip_protocol_fallback`;
--   * dns, icmp: blackbox_exporter's fields, checked; run by the dns and
--     icmp probers when this build has them (else each run fails, saying
--     so);
--   * tls_config: `insecure_skip_verify` (false: verified, as blackbox),
--     `ca_file`, `cert_file`, `key_file`, `server_name`, `min_version`
--     (TLS10 .. TLS13).
-- @module sonde.blackbox
local regex = require "sonde.regex"
local run = require "sonde.blackbox.run"
local task = require "sonde.task"

local M = {}

local fmt = string.format

local MAX_CONFIG = 8 * 1024 * 1024   -- bytes

-- Raise a load error: "PATH: module "NAME": FIELD: reason".
local function fail(ctx, field, reason, ...)
  local where = ctx.path
  if ctx.module then where = fmt("%s: module %q", where, ctx.module) end
  if field then where = where .. ": " .. field end
  error({ bb = where .. ": " .. fmt(reason, ...) }, 0)
end

-- Raise what sonde cannot honour in a module blackbox_exporter would take:
-- the module is left out (M.parse: `unsupported`), the others load.
local function unsupported(ctx, field, reason, ...)
  local ok, e = pcall(fail, ctx, field, reason, ...)
  assert(not ok)
  e.unsupported = true
  error(e, 0)
end

local function show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end

-- A mapping (a Lua table with string keys only, or empty).
local function mapping(ctx, v, field)
  if v == nil then return {} end
  if type(v) ~= "table" then fail(ctx, field, "must be a mapping, got %s", show(v)) end
  for k in pairs(v) do
    if type(k) ~= "string" then
      fail(ctx, field, "must be a mapping, got a list")
    end
  end
  return v
end

local function list(ctx, v, field)
  if v == nil then return {} end
  if type(v) ~= "table" then fail(ctx, field, "must be a list, got %s", show(v)) end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail(ctx, field, "must be a list, got a mapping")
    end
  end
  return v
end

local function boolean(ctx, v, field, default)
  if v == nil then return default end
  if type(v) ~= "boolean" then fail(ctx, field, "must be true or false, got %s", show(v)) end
  return v
end

local function string_(ctx, v, field, default)
  if v == nil then return default end
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" then fail(ctx, field, "must be a string, got %s", show(v)) end
  return v
end

-- Fields of `t` not in `known` (a set): the first, sorted, is an error.
local function known_fields(ctx, t, known, prefix, what)
  local bad = {}
  for k in pairs(t) do
    if not known[k] then bad[#bad + 1] = tostring(k) end
  end
  table.sort(bad)
  if bad[1] then
    if known[bad[1]] == false then
      unsupported(ctx, prefix .. bad[1], "is not supported by sonde")
    end
    fail(ctx, prefix .. bad[1], "unknown field%s", what and (" of " .. what) or "")
  end
end

local function set(keys)
  local s = {}
  for _, k in ipairs(keys) do s[k] = true end
  return s
end

--- Seconds of a Go duration ("5s", "1m30s", "250ms", "1h"); an integer is
-- nanoseconds (yaml.v3 into time.Duration).
-- @treturn number|nil
function M.duration(v)
  if math.type(v) == "integer" then return v / 1e9 end
  if type(v) ~= "string" then return nil end
  if v == "0" then return 0 end
  local units = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1,
    m = 60, h = 3600 }
  local total, rest = 0, v
  if rest == "" then return nil end
  while rest ~= "" do
    local num, unit, r = rest:match("^(%d*%.?%d*)([a-zµ]+)(.*)$")
    if not num or num == "" or num == "." or not units[unit] then return nil end
    total = total + tonumber(num) * units[unit]
    rest = r
  end
  return total
end

--- Bytes of a units.Base2Bytes ("10MB" = 10 MiB, "1KiB", "512B", or an
-- integer).
function M.bytes(v)
  if math.type(v) == "integer" then return v end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^(%d+)(%a*)$")
  if not num then return nil end
  local mult = { [""] = 1, B = 1, KB = 2^10, KiB = 2^10, MB = 2^20, MiB = 2^20,
    GB = 2^30, GiB = 2^30, TB = 2^40, TiB = 2^40 }
  if not mult[unit] then return nil end
  return math.tointeger(tonumber(num) * mult[unit])
end

local TLS_VERSIONS = { TLS10 = "TLS1.0", TLS11 = "TLS1.1", TLS12 = "TLS1.2",
  TLS13 = "TLS1.3" }

local function readable(ctx, v, field)
  v = string_(ctx, v, field)
  if v == nil or v == "" then return nil end
  local f, err = io.open(v, "rb")
  -- (blackbox_exporter reads it at each probe, which then fails; sonde's
  -- probers read their files when the probe is made: the module is left
  -- out until a reload finds the file)
  if not f then unsupported(ctx, field, "cannot be read: %s", err) end
  f:close()
  return v
end

-- tls_config (prometheus/common config.TLSConfig) -> sonde's tls table.
local TLS_KNOWN = { insecure_skip_verify = true, ca_file = true,
  cert_file = true, key_file = true, server_name = true, min_version = true,
  ca = false, cert = false, key = false, max_version = false }
local function tls_config(ctx, v, field)
  v = mapping(ctx, v, field)
  known_fields(ctx, v, TLS_KNOWN, field .. ".", "tls_config")
  local t = { verify = not boolean(ctx, v.insecure_skip_verify,
    field .. ".insecure_skip_verify", false) }
  t.ca_file = readable(ctx, v.ca_file, field .. ".ca_file")
  t.cert_file = readable(ctx, v.cert_file, field .. ".cert_file")
  t.key_file = readable(ctx, v.key_file, field .. ".key_file")
  if (t.cert_file == nil) ~= (t.key_file == nil) then
    fail(ctx, field, "cert_file and key_file must both be given")
  end
  local sn = string_(ctx, v.server_name, field .. ".server_name")
  if sn and sn ~= "" then t.server_name = sn end
  local mv = string_(ctx, v.min_version, field .. ".min_version")
  if mv and mv ~= "" then
    t.min_version = TLS_VERSIONS[mv]
    if not t.min_version then
      fail(ctx, field .. ".min_version", "must be TLS10, TLS11, TLS12 or "
        .. "TLS13, got %s", show(mv))
    end
  end
  return t
end

local function ip_protocol(ctx, v, field)
  v = string_(ctx, v, field, "")
  if v ~= "" and v ~= "ip4" and v ~= "ip6" then
    fail(ctx, field, "must be ip4 or ip6, got %s", show(v))
  end
  return v == "ip4" and "ip4" or "ip6"      -- blackbox: anything else is ip6
end

local function compiled(ctx, v, field)
  if type(v) ~= "string" then fail(ctx, field, "must be a string, got %s", show(v)) end
  local re, err = regex.compile(v)
  if not re then
    -- valid RE2 that POSIX cannot express: unsupported; else invalid
    local raise = (err:find("not supported", 1, true) or err:find("POSIX", 1, true))
      and unsupported or fail
    raise(ctx, field, "regular expression %s cannot be used: %s", show(v), err)
  end
  return re
end

local function regex_list(ctx, v, field)
  local out = {}
  for i, e in ipairs(list(ctx, v, field)) do
    out[i] = compiled(ctx, e, fmt("%s[%d]", field, i - 1))
  end
  return out
end

local HEADER_MATCH = { header = true, regexp = true, allow_missing = true }
local function header_matches(ctx, v, field)
  local out = {}
  for i, e in ipairs(list(ctx, v, field)) do
    local f = fmt("%s[%d]", field, i - 1)
    e = mapping(ctx, e, f)
    known_fields(ctx, e, HEADER_MATCH, f .. ".")
    local h = string_(ctx, e.header, f .. ".header")
    if not h or h == "" then fail(ctx, f .. ".header", "is required") end
    if e.regexp == nil then fail(ctx, f .. ".regexp", "is required") end
    out[i] = { header = h:lower(), regexp = compiled(ctx, e.regexp, f .. ".regexp"),
      allow_missing = boolean(ctx, e.allow_missing, f .. ".allow_missing", false) }
  end
  return out
end

local function read_secret_file(ctx, v, field)
  local path = readable(ctx, v, field)
  local f = io.open(path, "rb")
  local s = f:read("a")
  f:close()
  return (s:gsub("%s+$", ""))
end

local HTTP_KNOWN = set { "valid_status_codes", "valid_http_versions",
  "preferred_ip_protocol", "ip_protocol_fallback", "no_follow_redirects",
  "fail_if_ssl", "fail_if_not_ssl", "method", "headers",
  "fail_if_body_matches_regexp", "fail_if_body_not_matches_regexp",
  "fail_if_header_matches", "fail_if_header_not_matches", "body",
  "compression", "body_size_limit",
  -- http_client_config (inline)
  "follow_redirects", "enable_http2", "basic_auth", "bearer_token",
  "bearer_token_file", "authorization", "tls_config" }
for _, k in ipairs { "skip_resolve_phase_with_proxy", "proxy_url", "no_proxy",
    "proxy_from_environment", "proxy_connect_header", "oauth2",
    "http_headers" } do
  HTTP_KNOWN[k] = false
end

local function http_module(ctx, v)
  v = mapping(ctx, v, "http")
  known_fields(ctx, v, HTTP_KNOWN, "http.", "http")
  local h = {}
  h.valid_status_codes = {}
  for i, c in ipairs(list(ctx, v.valid_status_codes, "http.valid_status_codes")) do
    if math.type(c) ~= "integer" then
      fail(ctx, fmt("http.valid_status_codes[%d]", i - 1), "must be an "
        .. "integer, got %s", show(c))
    end
    h.valid_status_codes[i] = c
  end
  h.valid_http_versions = {}
  for i, s in ipairs(list(ctx, v.valid_http_versions, "http.valid_http_versions")) do
    h.valid_http_versions[i] = string_(ctx, s, fmt("http.valid_http_versions[%d]", i - 1))
  end
  h.ip_protocol = ip_protocol(ctx, v.preferred_ip_protocol, "http.preferred_ip_protocol")
  h.ip_protocol_fallback = boolean(ctx, v.ip_protocol_fallback,
    "http.ip_protocol_fallback", true)
  h.fail_if_ssl = boolean(ctx, v.fail_if_ssl, "http.fail_if_ssl", false)
  h.fail_if_not_ssl = boolean(ctx, v.fail_if_not_ssl, "http.fail_if_not_ssl", false)
  h.method = string_(ctx, v.method, "http.method", "")
  if h.method == "" then h.method = "GET" end
  if not h.method:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    fail(ctx, "http.method", "not an HTTP method: %s", show(h.method))
  end
  h.headers = {}
  local names = {}
  for k in pairs(mapping(ctx, v.headers, "http.headers")) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local val = string_(ctx, v.headers[k], "http.headers." .. k)
    if not k:match("^[%w%-_]+$") then
      fail(ctx, "http.headers." .. k, "invalid header name")
    end
    if val:find("[\r\n%z]") then
      fail(ctx, "http.headers." .. k, "the value must not contain CR, LF or NUL")
    end
    h.headers[#h.headers + 1] = { name = k, value = val }
  end
  h.body = string_(ctx, v.body, "http.body", "")
  h.fail_if_body_matches = regex_list(ctx, v.fail_if_body_matches_regexp,
    "http.fail_if_body_matches_regexp")
  h.fail_if_body_not_matches = regex_list(ctx, v.fail_if_body_not_matches_regexp,
    "http.fail_if_body_not_matches_regexp")
  h.fail_if_header_matches = header_matches(ctx, v.fail_if_header_matches,
    "http.fail_if_header_matches")
  h.fail_if_header_not_matches = header_matches(ctx, v.fail_if_header_not_matches,
    "http.fail_if_header_not_matches")
  local comp = string_(ctx, v.compression, "http.compression", "")
  if comp ~= "" and comp:lower() ~= "identity" then
    unsupported(ctx, "http.compression", "only \"\" or identity is supported by "
      .. "sonde (it asks for no compression), got %s", show(comp))
  end
  if v.body_size_limit ~= nil then
    local b = M.bytes(v.body_size_limit)
    if not b then
      fail(ctx, "http.body_size_limit", "must be a size (512B, 10KB, 1MiB, "
        .. "...), got %s", show(v.body_size_limit))
    end
    if b > 0 then h.body_size_limit = b end
  end
  -- http_client_config
  h.follow_redirects = boolean(ctx, v.follow_redirects, "http.follow_redirects", true)
  if v.no_follow_redirects ~= nil then
    h.follow_redirects = not boolean(ctx, v.no_follow_redirects,
      "http.no_follow_redirects")
  end
  h.enable_http2 = boolean(ctx, v.enable_http2, "http.enable_http2", true)
  local auth
  if v.basic_auth ~= nil then
    local b = mapping(ctx, v.basic_auth, "http.basic_auth")
    known_fields(ctx, b, set { "username", "password", "password_file" },
      "http.basic_auth.")
    local user = string_(ctx, b.username, "http.basic_auth.username", "")
    local pass = string_(ctx, b.password, "http.basic_auth.password", "")
    if b.password_file ~= nil then
      if pass ~= "" then
        fail(ctx, "http.basic_auth", "at most one of password and "
          .. "password_file must be configured")
      end
      pass = read_secret_file(ctx, b.password_file, "http.basic_auth.password_file")
    end
    auth = "Basic " .. run.base64(user .. ":" .. pass)
  end
  local function bearer(token, field)
    if auth then
      fail(ctx, field, "at most one of basic_auth, bearer_token, "
        .. "bearer_token_file and authorization may be configured")
    end
    auth = "Bearer " .. token
  end
  if v.bearer_token ~= nil then
    bearer(string_(ctx, v.bearer_token, "http.bearer_token"), "http.bearer_token")
  end
  if v.bearer_token_file ~= nil then
    bearer(read_secret_file(ctx, v.bearer_token_file, "http.bearer_token_file"),
      "http.bearer_token_file")
  end
  if v.authorization ~= nil then
    local a = mapping(ctx, v.authorization, "http.authorization")
    known_fields(ctx, a, set { "type", "credentials", "credentials_file" },
      "http.authorization.")
    if auth then
      fail(ctx, "http.authorization", "at most one of basic_auth, "
        .. "bearer_token, bearer_token_file and authorization may be configured")
    end
    local typ = string_(ctx, a.type, "http.authorization.type", "Bearer")
    if typ == "" then typ = "Bearer" end
    if typ:lower() == "basic" then
      fail(ctx, "http.authorization.type", "Basic is not allowed here: use "
        .. "basic_auth")
    end
    local cred = string_(ctx, a.credentials, "http.authorization.credentials", "")
    if a.credentials_file ~= nil then
      cred = read_secret_file(ctx, a.credentials_file,
        "http.authorization.credentials_file")
    end
    auth = typ .. " " .. cred
  end
  h.authorization = auth
  h.tls = tls_config(ctx, v.tls_config, "http.tls_config")
  return h
end

local TCP_KNOWN = set { "preferred_ip_protocol", "ip_protocol_fallback",
  "query_response", "tls", "tls_config" }
TCP_KNOWN.source_ip_address = false
local QR_KNOWN = set { "expect", "send", "starttls" }

local function tcp_module(ctx, v)
  v = mapping(ctx, v, "tcp")
  known_fields(ctx, v, TCP_KNOWN, "tcp.", "tcp")
  local t = {
    ip_protocol = ip_protocol(ctx, v.preferred_ip_protocol, "tcp.preferred_ip_protocol"),
    ip_protocol_fallback = boolean(ctx, v.ip_protocol_fallback,
      "tcp.ip_protocol_fallback", true),
    tls = boolean(ctx, v.tls, "tcp.tls", false),
    tls_config = tls_config(ctx, v.tls_config, "tcp.tls_config"),
    query_response = {},
  }
  local starttls = false
  for i, q in ipairs(list(ctx, v.query_response, "tcp.query_response")) do
    local f = fmt("tcp.query_response[%d]", i - 1)
    q = mapping(ctx, q, f)
    known_fields(ctx, q, QR_KNOWN, f .. ".")
    local e = {}
    if q.expect ~= nil and q.expect ~= "" then
      e.expect = compiled(ctx, q.expect, f .. ".expect")
    end
    e.send = string_(ctx, q.send, f .. ".send", "")
    if e.expect and e.send:find("$", 1, true) then
      -- blackbox_exporter expands the send with the expect's submatches
      -- (Go's Regexp.Expand): $1, ${1}, $name, ${name}, $$
      local tpl, terr = regex.expand_template(e.send, e.expect.groups)
      if not tpl then unsupported(ctx, f .. ".send", "%s", terr) end
      e.template = tpl
    end
    if #e.send > 65535 then fail(ctx, f .. ".send", "is longer than 65535 bytes") end
    e.starttls = boolean(ctx, q.starttls, f .. ".starttls", false)
    if e.starttls then
      if starttls or t.tls then
        unsupported(ctx, f .. ".starttls", "sonde supports one TLS handshake per "
          .. "connection (one starttls step, and not with tls: true)")
      end
      starttls = true
    end
    t.query_response[i] = e
  end
  return t
end

local GRPC_KNOWN = set { "service", "tls", "tls_config", "ip_protocol_fallback",
  "preferred_ip_protocol" }
local function grpc_module(ctx, v)
  -- blackbox 0.23's DefaultModule has no grpc defaults: a module without
  -- a grpc section gets Go's zero values (no ip_protocol_fallback)
  local present = v ~= nil
  v = mapping(ctx, v, "grpc")
  known_fields(ctx, v, GRPC_KNOWN, "grpc.", "grpc")
  local service = string_(ctx, v.service, "grpc.service", "")
  if not utf8.len(service) then fail(ctx, "grpc.service", "must be valid UTF-8") end
  return {
    service = service,
    tls = boolean(ctx, v.tls, "grpc.tls", false),
    tls_config = tls_config(ctx, v.tls_config, "grpc.tls_config"),
    ip_protocol = ip_protocol(ctx, v.preferred_ip_protocol, "grpc.preferred_ip_protocol"),
    ip_protocol_fallback = boolean(ctx, v.ip_protocol_fallback,
      "grpc.ip_protocol_fallback", present),
  }
end

local DNS_KNOWN = set { "preferred_ip_protocol", "ip_protocol_fallback",
  "transport_protocol", "query_class", "query_name", "query_type",
  "recursion_desired", "valid_rcodes", "validate_answer_rrs",
  "validate_authority_rrs", "validate_additional_rrs" }
DNS_KNOWN.dns_over_tls = false
DNS_KNOWN.tls_config = false
DNS_KNOWN.source_ip_address = false
local RR_KNOWN = set { "fail_if_matches_regexp", "fail_if_all_match_regexp",
  "fail_if_not_matches_regexp", "fail_if_none_matches_regexp" }
local QTYPES = set { "A", "AAAA", "ANY", "CAA", "CNAME", "DNSKEY", "DS", "MX",
  "NS", "NSEC", "NSEC3", "PTR", "SOA", "SRV", "TXT", "TLSA", "HTTPS", "SVCB",
  "SSHFP", "NAPTR" }
local QCLASSES = set { "IN", "CH", "HS", "CS", "NONE", "ANY" }
local RCODES = set { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
  "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "BADSIG",
  "BADVERS", "BADKEY", "BADTIME", "BADMODE", "BADNAME", "BADALG", "BADTRUNC",
  "BADCOOKIE" }

local function rr_validator(ctx, v, field)
  v = mapping(ctx, v, field)
  known_fields(ctx, v, RR_KNOWN, field .. ".")
  local out = {}
  for k in pairs(RR_KNOWN) do
    local f = field .. "." .. k
    out[k] = regex_list(ctx, v[k], f)
  end
  return out
end

local function dns_module(ctx, v)
  v = mapping(ctx, v, "dns")
  known_fields(ctx, v, DNS_KNOWN, "dns.", "dns")
  local d = {
    ip_protocol = ip_protocol(ctx, v.preferred_ip_protocol, "dns.preferred_ip_protocol"),
    ip_protocol_fallback = boolean(ctx, v.ip_protocol_fallback,
      "dns.ip_protocol_fallback", true),
    transport_protocol = string_(ctx, v.transport_protocol, "dns.transport_protocol", "udp"),
    query_class = string_(ctx, v.query_class, "dns.query_class", "IN"),
    query_name = string_(ctx, v.query_name, "dns.query_name", ""),
    query_type = string_(ctx, v.query_type, "dns.query_type", "ANY"),
    recursion_desired = boolean(ctx, v.recursion_desired, "dns.recursion_desired", true),
    valid_rcodes = {},
    validate_answer_rrs = rr_validator(ctx, v.validate_answer_rrs, "dns.validate_answer_rrs"),
    validate_authority_rrs = rr_validator(ctx, v.validate_authority_rrs, "dns.validate_authority_rrs"),
    validate_additional_rrs = rr_validator(ctx, v.validate_additional_rrs, "dns.validate_additional_rrs"),
  }
  if d.transport_protocol == "" then d.transport_protocol = "udp" end
  if d.transport_protocol ~= "udp" and d.transport_protocol ~= "tcp" then
    fail(ctx, "dns.transport_protocol", "must be udp or tcp, got %s", show(d.transport_protocol))
  end
  if d.query_name == "" then fail(ctx, "dns.query_name", "query name must be set for DNS module") end
  if d.query_class == "" then d.query_class = "IN" end
  if not QCLASSES[d.query_class] then
    fail(ctx, "dns.query_class", "query class '%s' is not valid", d.query_class)
  end
  if d.query_type == "" then d.query_type = "ANY" end
  if not QTYPES[d.query_type] then
    fail(ctx, "dns.query_type", "query type '%s' is not valid (or not supported by sonde)",
      d.query_type)
  end
  for i, r in ipairs(list(ctx, v.valid_rcodes, "dns.valid_rcodes")) do
    local f = fmt("dns.valid_rcodes[%d]", i - 1)
    r = string_(ctx, r, f)
    if not RCODES[r] then fail(ctx, f, "not an rcode: %s", show(r)) end
    d.valid_rcodes[i] = r
  end
  if #d.valid_rcodes == 0 then d.valid_rcodes = { "NOERROR" } end
  return d
end

local ICMP_KNOWN = set { "preferred_ip_protocol", "ip_protocol_fallback",
  "payload_size", "dont_fragment", "ttl", "source_ip_address" }
local function icmp_module(ctx, v)
  v = mapping(ctx, v, "icmp")
  known_fields(ctx, v, ICMP_KNOWN, "icmp.", "icmp")
  local i = {
    ip_protocol = ip_protocol(ctx, v.preferred_ip_protocol, "icmp.preferred_ip_protocol"),
    ip_protocol_fallback = boolean(ctx, v.ip_protocol_fallback,
      "icmp.ip_protocol_fallback", true),
    payload_size = v.payload_size or 0,
    dont_fragment = boolean(ctx, v.dont_fragment, "icmp.dont_fragment", false),
    ttl = v.ttl or 64,
    source_ip_address = string_(ctx, v.source_ip_address, "icmp.source_ip_address"),
  }
  if i.source_ip_address == "" then i.source_ip_address = nil end
  if i.source_ip_address and not (i.source_ip_address:match("^%d+%.%d+%.%d+%.%d+$")
      or i.source_ip_address:match("^[%x:]*:[%x:%.]*$")) then
    fail(ctx, "icmp.source_ip_address", "must be an IP address, got %s",
      show(i.source_ip_address))
  end
  if math.type(i.payload_size) ~= "integer" or i.payload_size < 0 or i.payload_size > 65000 then
    fail(ctx, "icmp.payload_size", "must be an integer 0..65000, got %s", show(i.payload_size))
  end
  if math.type(i.ttl) ~= "integer" or i.ttl < 0 or i.ttl > 255 then
    fail(ctx, "icmp.ttl", "must be an integer 0..255, got %s", show(i.ttl))
  end
  if i.ttl == 0 then i.ttl = 64 end
  return i
end

local PROBERS = { http = http_module, tcp = tcp_module, grpc = grpc_module,
  dns = dns_module, icmp = icmp_module }
local MODULE_KNOWN = set { "prober", "timeout", "http", "tcp", "icmp", "dns", "grpc" }

-- One module from its YAML mapping.
local function module_of(ctx, name, v)
  ctx.module = name
  v = mapping(ctx, v, nil)
  known_fields(ctx, v, MODULE_KNOWN, "", "a module")
  local prober = string_(ctx, v.prober, "prober")
  if prober == nil or not PROBERS[prober] then
    -- blackbox loads it and answers each /probe 400 "Unknown prober"
    fail(ctx, "prober", "must be http, tcp, grpc, dns or icmp, got %s",
      show(prober))
  end
  local timeout = 0
  if v.timeout ~= nil then
    -- (a string: blackbox_exporter refuses a number, `cannot unmarshal
    -- !!int`, as yaml.v3 does for a time.Duration)
    timeout = type(v.timeout) == "string" and M.duration(v.timeout)
    if not timeout or timeout < 0 then
      fail(ctx, "timeout", "must be a duration (5s, 500ms, 1m), got %s",
        show(v.timeout))
    end
  end
  -- the other probers' sections are read and checked as blackbox does,
  -- but only the module's own is used
  local m = { name = name, prober = prober, timeout = timeout, raw = v,
    file = ctx.path }
  for p, f in pairs(PROBERS) do
    if v[p] ~= nil or p == prober then
      if p == "dns" and p ~= prober and v[p] == nil then goto continue end
      local spec = f(ctx, v[p])
      if p == prober then m.spec = spec end
    end
    ::continue::
  end
  return run.module(m)
end

--- Parse configuration text (YAML).
-- @tparam string text
-- @tparam[opt] string path for messages
-- What blackbox_exporter itself refuses (YAML, unknown fields, values) is
-- an error of the whole configuration, as there.  A module blackbox_exporter
-- takes but sonde cannot honour (a field sonde does not support, a regexp
-- POSIX cannot express, `${1}` substitutions, a file that cannot be read) is
-- left out: `unsupported[NAME]` says why (and `unsupported[i]`, in name
-- order); the other modules load.
-- @return the configuration `{ path, modules = { NAME = module }, names,
-- unsupported }`, or nil and `PATH: module "NAME": FIELD: reason`
function M.parse(text, path)
  path = path or "blackbox.yml"
  local ok, res = pcall(function()
    local ctx = { path = path }
    local okl, lyaml = pcall(require, "lyaml")
    if not okl then
      fail(ctx, nil, "reading blackbox.yml needs lua-yaml (Debian: apt-get "
        .. "install lua-yaml)")
    end
    local okp, docs = pcall(lyaml.load, text, { all = true })
    if not okp then fail(ctx, nil, "error parsing config file: %s", tostring(docs)) end
    local doc = docs[1]
    if docs[2] ~= nil then fail(ctx, nil, "more than one YAML document") end
    if doc == nil or doc == lyaml.null then doc = {} end
    if type(doc) ~= "table" then fail(ctx, nil, "must be a mapping") end
    known_fields(ctx, doc, { modules = true }, "", "the configuration")
    local modules, unusable = {}, {}
    local mods = mapping(ctx, doc.modules, "modules")
    local names = {}
    for k in pairs(mods) do names[#names + 1] = k end
    table.sort(names)
    for _, name in ipairs(names) do
      local okm, m = pcall(module_of, ctx, name, mods[name])
      if okm then
        modules[name] = m
      elseif type(m) == "table" and m.unsupported then
        unusable[name] = m.bb
        unusable[#unusable + 1] = m.bb
      else
        error(m, 0)
      end
      ctx.module = nil
    end
    return { path = path, modules = modules, names = names,
      unsupported = unusable }
  end)
  if ok then return res end
  if type(res) == "table" and res.bb then return nil, res.bb end
  error(res, 0)
end

--- Read and parse a configuration file.
-- @return the configuration, or nil and the error
function M.load(path)
  if type(path) ~= "string" then
    error("sonde.blackbox.load: a path (string) expected", 2)
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, "error reading config file: " .. err end
  local text = f:read(MAX_CONFIG + 1)
  f:close()
  if text and #text > MAX_CONFIG then
    return nil, fmt("%s: larger than %d bytes", path, MAX_CONFIG)
  end
  return M.parse(text or "", path)
end

--- The configuration `sonde.module(name)` takes its modules from: the
-- host's `--config.file`, or the last `sonde.blackbox.load` of a script.
M.current = nil

--- A module of the current configuration.
-- @raise when no configuration is loaded or it has no such module
function M.module(name)
  if type(name) ~= "string" then
    error("sonde.module: a module name (string) expected", 2)
  end
  if not M.current then
    error("sonde.module: no blackbox configuration loaded (--config.file, or "
      .. "sonde.blackbox.load(path))", 2)
  end
  local m = M.current.modules[name]
  if not m and M.current.unsupported and M.current.unsupported[name] then
    error("sonde.module: " .. M.current.unsupported[name], 2)
  elseif not m then
    error(fmt("sonde.module: unknown module %q in %s", name, M.current.path), 2)
  end
  return m
end

--- The probe timeout of a /probe request (blackbox_exporter's getTimeout):
-- the scrape's `X-Prometheus-Scrape-Timeout-Seconds` (120 when absent or
-- 0) minus `offset`, or the module's `timeout` when set and shorter (or
-- when the difference is negative).
-- @treturn number|nil seconds, or nil and an error (a header that is not a
-- number)
function M.timeout(module, header, offset)
  local t = 0
  if header ~= nil and header ~= "" then
    t = tonumber(header)
    if not t then return nil, fmt("strconv.ParseFloat: parsing %q: invalid syntax", header) end
  end
  if t == 0 then t = 120 end
  local max = t - offset
  if (module.timeout < max and module.timeout > 0) or max < 0 then
    return module.timeout
  end
  return max
end

--- A sonde.probe spec with `module` (sonde.module) and `target` made into
-- a probe with a custom check: each run is one probe of the module against
-- the target, bounded by the probe's `timeout` (default: the module's
-- `timeout` when set, else 1 s).  The check's result is `success` when
-- blackbox_exporter's probe_success would be 1, else `failure` with the
-- prober's reason (`connect_refused`, `timeout`, `tls`, ...) or `expect`
-- when the module judged a response (status code, regexps, HTTP version,
-- SSL) and `output` the reason blackbox_exporter logs; the prober's result
-- fields (http_status, grpc_status, serving_status, tls, remote_addr,
-- redirects) are kept, and `blackbox` holds the series text /probe would
-- answer.  Thresholds, hooks and actions work as for any probe.
-- @raise when `module` is not a module, `target` is not a string, or a
-- handler is given too
function M.probe_spec(spec)
  local m, target = spec.module, spec.target
  local name = type(spec.name) == "string" and fmt("probe %q", spec.name) or "sonde.probe"
  if not run.is_module(m) then
    error(fmt("%s: module: a module expected (sonde.module(name)), got %s",
      name, type(m)), 3)
  end
  if type(target) ~= "string" or target == "" then
    error(fmt("%s: target: a target string expected (as /probe's target=)", name), 3)
  end
  for _, h in ipairs { "exec", "http_get", "tcp_socket", "grpc", "check" } do
    if spec[h] ~= nil then
      error(fmt("%s: module: cannot be combined with %s", name, h), 3)
    end
  end
  local out = {}
  for k, v in pairs(spec) do out[k] = v end
  out.module, out.target = nil, nil
  if out.timeout == nil and m.timeout > 0 then out.timeout = m.timeout end
  local timeout = out.timeout or 1
  out.check = function()
    local res = task.await("sonde.probe", function(k)
      return m:run(target, { timeout = timeout }, k)
    end)
    local r = {}
    for k, v in pairs(res.result or {}) do
      if type(v) ~= "table" or k == "tls" then r[k] = v end
    end
    r.body, r.headers = nil, nil
    local last
    for _, line in ipairs(res.logs) do
      if line:find(" level=error ", 1, true) and not line:find('msg="Probe failed"', 1, true) then
        last = line:match(' msg=(.*)$')
      end
    end
    if res.success then
      r.status, r.reason, r.output = "success", "ok", r.output or ""
    else
      r.status = "failure"
      if not r.reason or r.reason == "ok" or r.reason == "redirect"
          or r.reason == "http_status" then
        r.reason = "expect"
      end
      if r.reason == "expect" or not r.output or r.output == "" then
        r.output = last and last:gsub('^"(.-)"', "%1") or "probe failed"
      end
    end
    r.blackbox = run.render(res)
    -- its families, for /metrics (sonde.metrics)
    r.blackbox_fams = res.families and res.families.fams
    r.duration = nil
    return r
  end
  return out
end

M.render = run.render
M.debug_text = run.debug_text

return M
