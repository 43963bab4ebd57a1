--- The probers' specs: one declarative schema per handler (`exec`,
-- `http_get`, `tcp_socket`, `grpc`, `icmp`, `dns`), and how a checked spec
-- starts an operation on the C core.  The public calls and their documentation are in
-- `sonde` (lua/sonde/init.lua); declared probes, services and actions use
-- the same handlers.
--
--   local h = probers.handlers.exec
--   local opts = h.prepare({ where = "sonde.exec" }, spec)  -- raises on a bad spec
--   local id = h.start(opts, function(result) ... end)     -- an operation id
-- @module sonde.probers
local core = require "sonde.core"
local regex = require "sonde.regex"
local validate = require "sonde.validate"
local nagios = require "sonde.nagios"
local redact = require "sonde.redact"
local expect = require "sonde.expect"

local M = {}

local fmt = string.format
local fail, show = validate.fail, validate.show

---------------------------------------------------------------------------
-- exec
---------------------------------------------------------------------------

local EXEC_CODES = {
  kubelet = { [0] = "success", default = "failure" },
  -- monitoring-plugins: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; any other
  -- code is a broken plugin: failure.
  nagios = { [0] = "success", "warning", "failure", "unknown",
             default = "failure" },
  consul = { [0] = "success", "warning", default = "failure" },
}
local STATUSES = { success = true, warning = true, failure = true,
                   unknown = true }
M.STATUSES = STATUSES

-- `codes`: a name or a table exit code -> status.
local function exec_codes(ctx, codes, field)
  if type(codes) == "string" then
    if not EXEC_CODES[codes] then
      fail(ctx, field, "must be \"kubelet\", \"nagios\", \"consul\" or a "
        .. "table, got %s", show(codes))
    end
    return codes
  end
  validate.checks.table(ctx, codes, field)
  for k, v in pairs(codes) do
    if not (k == "default" or (math.type(k) == "integer" and k >= 0
        and k <= 255)) then
      fail(ctx, field, "keys must be exit codes 0..255 or \"default\", got %s",
        show(k))
    end
    if not STATUSES[v] then
      fail(ctx, fmt("%s[%s]", field, show(k)), "must be a status (success, "
        .. "warning, failure, unknown), got %s", show(v))
    end
  end
  return codes
end

--- The most bytes `input` may hold (SONDE_MAX_INPUT in the C core).
M.MAX_INPUT = 1048576

local function exec_input(ctx, v, field)
  validate.checks.string(ctx, v, field, { allow_nul = true })
  if #v > M.MAX_INPUT then
    fail(ctx, field, "must be at most %d bytes, got %d", M.MAX_INPUT, #v)
  end
  return v
end

M.exec_schema = validate.schema {
  { "command", "strings", required = true, nonempty = true },
  { "env", "env" },
  { "env_data", "env" },
  { "input", exec_input },
  { "cwd", "string" },
  { "timeout", "seconds", default = 1 },
  { "max_output", "count", default = 10240 },
  { "codes", exec_codes },
}

--- Check an exec spec and make the core's options: argv `$(VAR)`-expanded
-- against `env` only, the environment as "K=V" strings: `env`, then
-- `env_data` over it (a name in both gets env_data's value in the child),
-- plus PATH from this process unless one of them sets it.  `env_data` is
-- for values that must stay data (a probe's output given to an action):
-- they reach the child's environment but never the `$(VAR)` expansion of
-- argv, where `$(NAME)` of a name only in env_data stays literal.
-- `input` (a string, NULs allowed, at most MAX_INPUT bytes) is written to
-- the command's stdin, then closed; without it stdin is /dev/null.
-- @raise naming the field
local function exec_prepare(ctx, spec)
  local s = M.exec_schema:apply(ctx, spec)
  local env = s.env or {}
  local codes = s.codes or "kubelet"
  local opts = {
    argv = {}, env = {}, cwd = s.cwd, timeout = s.timeout,
    max_output = s.max_output, input = s.input,
    codes = type(codes) == "string" and EXEC_CODES[codes] or codes,
    -- monitoring-plugins: a plugin that times out is UNKNOWN
    timeout_status = codes == "nagios" and "unknown" or nil,
    nagios = codes == "nagios",
  }
  for i, a in ipairs(s.command) do opts.argv[i] = core.expand(a, env) end
  -- what messages show: the command as written, never the values of env
  -- it was expanded with (sonde.redact.exec_result)
  opts.written = { command = table.concat(s.command, " "),
    argv0 = s.command[1], expanded = table.concat(opts.argv, " "),
    expanded0 = opts.argv[1] }
  local child = {}
  for k, v in pairs(env) do child[k] = v end
  for k, v in pairs(s.env_data or {}) do child[k] = v end
  local names = {}
  for k in pairs(child) do names[#names + 1] = k end
  if child.PATH == nil and os.getenv("PATH") then names[#names + 1] = "PATH" end
  table.sort(names)
  for i, k in ipairs(names) do
    opts.env[i] = k .. "=" .. (child[k] or os.getenv(k))
  end
  return opts
end

-- What a run's result becomes before anyone sees it: messages echo the
-- command as written (sonde.redact.exec_result); in nagios mode the result
-- also carries the plugin output parsed (summary, long_output, perfdata:
-- see sonde.nagios).
local function exec_finish(opts, r)
  r = redact.exec_result(r, opts.written)
  if opts.nagios then return nagios.annotate(r) end
  return r
end

local function exec_start(opts, cb)
  return core.exec(opts, function(r) cb(exec_finish(opts, r)) end)
end

---------------------------------------------------------------------------
-- http_get
---------------------------------------------------------------------------

-- kubelet httpHeaders: an array of {name=, value=} in order, or a map
-- name -> string | array of strings (names sorted for a stable order).
local HEADER = validate.schema {
  { "name", "string", required = true },
  { "value", "string", required = true },
}

local function http_headers(ctx, h, field)
  validate.checks.table(ctx, h, field)
  local out = {}
  local function add(f, name, value)
    local canon = core.header_name(name)
    if not canon then
      fail(ctx, f .. ".name", "invalid header name %s (letters, digits and "
        .. "'-' only)", show(name))
    end
    -- a CR or LF would start another header line (injection); NUL ends it
    if value:find("[\r\n%z]") then
      fail(ctx, f, "header %s: the value must not contain CR, LF or NUL",
        canon)
    end
    out[#out + 1] = { name = canon, value = value }
  end
  if next(h) == nil or math.type(next(h)) == "integer" or #h > 0 then
    validate.checks.array(ctx, h, field)
    for i, e in ipairs(h) do
      local f = fmt("%s[%d]", field, i)
      local one = HEADER:apply(ctx, e, f)
      add(f, one.name, one.value)
    end
  else
    local names = {}
    for k in pairs(h) do
      if type(k) ~= "string" then
        fail(ctx, field, "keys must be header names, got %s", show(k))
      end
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
      local v, f = h[k], field .. "." .. k
      if type(v) == "table" then
        validate.checks.strings(ctx, v, f)
        for _, one in ipairs(v) do add(f, k, one) end
      else
        add(f, k, validate.checks.string(ctx, v, f))
      end
    end
  end
  return out
end

local function http_method(ctx, m, field)
  validate.checks.string(ctx, m, field)
  if not m:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    fail(ctx, field, "not an HTTP method: %s", show(m))
  end
  return m:upper()
end

local function http_scheme(ctx, v, field)
  validate.checks.string(ctx, v, field)
  local s = v:lower()
  if s ~= "http" and s ~= "https" then
    fail(ctx, field, "must be HTTP or HTTPS, got %s", show(v))
  end
  return s
end

local function absolute_url(ctx, url, field)
  validate.checks.string(ctx, url, field)
  if #url > 8192 then fail(ctx, field, "is longer than 8192 bytes") end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.+)$")
  if not scheme or not rest:match("^[^/?#]") then
    fail(ctx, field, "must be an absolute http:// or https:// URL, got %s",
      show(redact.url(url)))
  end
  if scheme:lower() ~= "http" and scheme:lower() ~= "https" then
    fail(ctx, field, "scheme must be http or https, got %s", show(scheme))
  end
  if url:find("[%z\1-\32\127]") then
    fail(ctx, field, "must not contain spaces or control characters")
  end
  local host, port = core.parse_url(url)
  if not host then fail(ctx, field, "%s: %s", port, show(redact.url(url))) end
  if port and (port < 1 or port > 65535) then
    fail(ctx, field, "port must be 1..65535, got %d", port)
  end
  return url
end

-- TLS protocol versions by the names `min_version` takes: sonde's
-- ("TLS1.2") and blackbox_exporter's ("TLS12").
local TLS_VERSIONS = { ["TLS1.0"] = "TLS1.0", ["TLS1.1"] = "TLS1.1",
  ["TLS1.2"] = "TLS1.2", ["TLS1.3"] = "TLS1.3", TLS10 = "TLS1.0",
  TLS11 = "TLS1.1", TLS12 = "TLS1.2", TLS13 = "TLS1.3" }

local function tls_version(ctx, v, field)
  validate.checks.string(ctx, v, field)
  local n = TLS_VERSIONS[v:upper()]
  if not n then
    fail(ctx, field, "must be TLS1.0, TLS1.1, TLS1.2 or TLS1.3 (or TLS10 .. "
      .. "TLS13), got %s", show(v))
  end
  return n
end

-- A file the TLS options name: readable now, or the spec is refused (it
-- is read again at each run: a file that goes away later fails the run).
local function tls_file(ctx, v, field)
  validate.checks.string(ctx, v, field)
  if v == "" then fail(ctx, field, "must not be empty") end
  local f, err = io.open(v, "rb")
  if not f then fail(ctx, field, "cannot be read: %s", err) end
  f:close()
  return v
end

local TLS_FIELDS = validate.schema {
  { "verify", "boolean", default = false },
  { "ca_file", tls_file },
  { "cert_file", tls_file },
  { "key_file", tls_file },
  { "server_name", function(ctx, v, field)
      validate.checks.string(ctx, v, field)
      -- a host name or an IP address: what SNI and a certificate carry
      if v == "" or #v > 253 or v:find("[^%w%.%-_:%[%]]") then
        fail(ctx, field, "must be a host name or an IP address, got %s",
          show(v))
      end
      return v
    end },
  { "min_version", tls_version },
  { "expiry_warning", "seconds" },
  { "expiry_failure", "seconds" },
}

--- The `tls` of http_get, tcp_socket and grpc (see sonde.http_get): a
-- table of verify, ca_file, cert_file, key_file (mutual TLS; key_file
-- needs cert_file, cert_file alone holds both; the files must be readable
-- when the spec is checked), server_name (SNI and the name verified),
-- min_version, expiry_warning, expiry_failure (seconds; no default: off);
-- or `true` (the same as `{}`: TLS with the defaults), or `false` (none).
-- @raise naming the field
function M.tls_schema(ctx, v, field)
  if v == false then return nil end
  if v == true then v = {} end
  if type(v) ~= "table" then
    fail(ctx, field, "must be a boolean or a table of tls fields (verify, "
      .. "ca_file, ...), got %s", type(v))
  end
  local s = TLS_FIELDS:apply(ctx, v, field)
  if s.key_file and not s.cert_file then
    fail(ctx, field .. ".key_file", "needs cert_file")
  end
  if s.expiry_warning and s.expiry_failure
      and s.expiry_failure > s.expiry_warning then
    fail(ctx, field .. ".expiry_failure", "must not exceed expiry_warning "
      .. "(%s), got %s", show(s.expiry_warning), show(s.expiry_failure))
  end
  return s
end

--- Which redirects an http_get probe follows (`follow_redirects`):
-- "same-host" (the default, kubelet: the hostname of the first URL, any
-- port or scheme), "same-origin" (scheme, hostname and port all those of
-- the first URL; a URL without a port has its scheme's default), "none".
-- A redirect not followed ends the probe with its 3xx response: status
-- warning, reason redirect, `http_status` the 3xx.  Webhooks use
-- "same-origin" or "none" together with `tls = { verify = true }`.
M.FOLLOW_REDIRECTS = { "same-host", "same-origin", "none" }

M.http_schema = validate.schema {
  { "url", absolute_url },
  { "scheme", http_scheme },
  { "host", "host", default = "127.0.0.1" },
  { "port", "port" },
  { "path", "string" },
  { "ports", "ports" },
  { "headers", http_headers },
  { "method", http_method, default = "GET" },
  { "body", "string", allow_nul = true },
  { "timeout", "seconds", default = 1 },
  { "max_body", "count", default = 10240 },
  { "tls", M.tls_schema },
  { "follow_redirects", "enum", values = M.FOLLOW_REDIRECTS,
    default = "same-host" },
  { "expect", "table" },        -- checked by sonde.expect (needs method)
}

--- Check an http_get spec and make the core's options (the URL built from
-- the kubelet's parts when `url` is not given).
-- @raise naming the field
local function http_prepare(ctx, spec)
  local s = M.http_schema:apply(ctx, spec)
  local url = s.url
  if url then
    for _, k in ipairs { "scheme", "host", "port", "path", "ports" } do
      if spec[k] ~= nil then fail(ctx, k, "cannot be combined with url") end
    end
  else
    if s.port == nil then fail(ctx, "port", "is required") end
    local port = validate.port_of(ctx, s.port, s.ports, "port")
    url = core.format_url(s.scheme or "http", s.host, port, s.path or "/")
  end
  local c_expect, json_expect
  if s.expect then
    c_expect, json_expect = expect.http(ctx, s.expect, "expect", s.method)
  end
  local o = {
    url = url, method = s.method, body = s.body, headers = s.headers or {},
    timeout = s.timeout, max_body = s.max_body,
    follow_redirects = s.follow_redirects,
    tls = s.tls,
  }
  -- judged by the core (status, max_duration, headers, body, body_not)
  -- and, for json, by http_finish (the result must then pass through
  -- Lua: sonde.probe filters such a probe's results).  Set only when
  -- given: a constructor's nil fields still size the table, and a
  -- declared probe keeps its options for its lifetime.
  if c_expect then o.expect = c_expect end
  if json_expect then o.expect_json = json_expect end
  return o
end

-- What an http_get run's result becomes before anyone sees it: URL
-- passwords masked, then the json expectations judged.
local function http_finish(opts, r)
  r = redact.http_result(r)
  if opts.expect_json then r = expect.judge_json(opts.expect_json, r) end
  return r
end

---------------------------------------------------------------------------
-- tcp_socket
---------------------------------------------------------------------------

M.tcp_schema = validate.schema {
  { "host", "host", default = "127.0.0.1" },
  { "port", "port", required = true },
  { "ports", "ports" },
  { "timeout", "seconds", default = 1 },
  { "tls", M.tls_schema },
  { "send", "string", allow_nul = true },     -- both checked by
  { "expect", function(_, v) return v end },  -- sonde.expect.tcp
}

--- Check a tcp_socket spec and make the core's options; `send` and
-- `expect` become the steps the connection walks once connected (see
-- sonde.expect).  `tls`: a TLS handshake right after connecting, or, with
-- a `starttls = true` step, at that step (its options then; none given:
-- the defaults).
local function tcp_prepare(ctx, spec)
  local s = M.tcp_schema:apply(ctx, spec)
  local steps = expect.tcp(ctx, spec)
  -- a STARTTLS step: TLS there (with `tls`'s options), not on connect
  local tls = s.tls
  for _, st in ipairs(steps or {}) do
    if st.kind == "starttls" then tls = tls or {} end
  end
  local o = { host = s.host, timeout = s.timeout,
              port = validate.port_of(ctx, s.port, s.ports, "port") }
  -- (set only when given: see http_prepare)
  if tls then o.tls = tls end
  if steps then o.steps = steps end
  return o
end

---------------------------------------------------------------------------
-- grpc
---------------------------------------------------------------------------

-- kubelet GRPCAction.port: an int32, no named ports.
local function grpc_port(ctx, v, field)
  if type(v) == "string" then
    fail(ctx, field, "must be a port number 1..65535 (a gRPC probe takes no "
      .. "named port), got %s", show(v))
  end
  return validate.checks.port_number(ctx, v, field)
end

-- HealthCheckRequest.service: a protobuf 3 string, so UTF-8 (Go's client
-- refuses to send anything else).
local function grpc_service(ctx, v, field)
  validate.checks.string(ctx, v, field)
  if not utf8.len(v) then fail(ctx, field, "must be valid UTF-8") end
  if #v > 4096 then fail(ctx, field, "must be at most 4096 bytes, got %d", #v) end
  return v
end


M.grpc_schema = validate.schema {
  { "host", "host", default = "127.0.0.1" },
  { "port", grpc_port, required = true },
  { "service", grpc_service, default = "" },
  { "timeout", "seconds", default = 1 },
  { "tls", M.tls_schema },
}

local function grpc_prepare(ctx, spec)
  local s = M.grpc_schema:apply(ctx, spec)
  return { host = s.host, port = s.port, service = s.service,
           timeout = s.timeout, tls = s.tls }
end

---------------------------------------------------------------------------
-- icmp
---------------------------------------------------------------------------

-- An IP literal (IPv4, or IPv6 bare): what source_ip_address takes.
local function ip_literal(ctx, v, field)
  validate.checks.string(ctx, v, field)
  local a, b, c, d = v:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    for _, x in ipairs { a, b, c, d } do
      if tonumber(x) > 255 then a = nil end
    end
    if a then return v end
  elseif v:find(":", 1, true) and v:find("^[%x:%.]+$")
      and select(2, v:gsub(":", "")) >= 2 then
    return v
  end
  fail(ctx, field, "must be an IP address (IPv6 without brackets), got %s",
    show(v))
end

local function icmp_range(lo, hi)
  return function(ctx, v, field)
    local n = validate.checks.count(ctx, v, field)
    if n < lo or n > hi then
      fail(ctx, field, "must be %d..%d, got %s", lo, hi, show(v))
    end
    return n
  end
end

--- The most bytes of echo data (SONDE_ICMP_PAYLOAD_MAX in the C core).
M.ICMP_PAYLOAD_MAX = 65507

-- blackbox_exporter's icmp module fields (config.ICMPProbe), by its names
-- and defaults; `socket` is sonde's own.
M.icmp_schema = validate.schema {
  { "host", "host", required = true },
  { "preferred_ip_protocol", function(ctx, v, field)
      if v == "" then return "ip6" end   -- blackbox_exporter: "" is ip6
      return validate.checks.enum(ctx, v, field, { values = { "ip4", "ip6" } })
    end, default = "ip6" },
  { "ip_protocol_fallback", "boolean", default = true },
  { "payload_size", icmp_range(0, M.ICMP_PAYLOAD_MAX), default = 0 },
  { "dont_fragment", "boolean", default = false },
  { "ttl", icmp_range(0, 255), default = 64 },
  { "source_ip_address", ip_literal },
  { "timeout", "seconds", default = 1 },
  { "socket", "enum", values = { "auto", "raw", "datagram" },
    default = "auto" },
}

--- Check an icmp spec and make the core's options (sonde/icmp.h).
-- @raise naming the field
local function icmp_prepare(ctx, spec)
  local s = M.icmp_schema:apply(ctx, spec)
  if s.host == nil then fail(ctx, "host", "must not be empty") end
  return { host = s.host, ip_protocol = s.preferred_ip_protocol == "ip4"
    and 4 or 6, fallback = s.ip_protocol_fallback,
    payload_size = s.payload_size, dont_fragment = s.dont_fragment,
    ttl = s.ttl, source_ip = s.source_ip_address, timeout = s.timeout,
    socket = s.socket }
end

---------------------------------------------------------------------------
-- dns (blackbox_exporter's dns prober; sonde/dns.h)
---------------------------------------------------------------------------

-- "IP", "IP:port", "[IPv6]", "[IPv6]:port" or a bare IPv6: ip, port (53).
local function dns_server(ctx, v, field)
  validate.checks.string(ctx, v, field, { nonempty = true })
  local ip, port = v:match("^%[([^%]]+)%]:(%d+)$")
  if not ip then ip = v:match("^%[([^%]]+)%]$") end
  if not ip then
    local colons = select(2, v:gsub(":", ""))
    if colons == 1 then ip, port = v:match("^([^:]+):(%d+)$")
    else ip = v end
  end
  if not ip or not core.dns_check("address", ip) then
    fail(ctx, field, "must be an IP address with an optional port (\"IP\", "
      .. "\"IP:PORT\", \"[IPv6]:PORT\"), got %s", show(v))
  end
  port = port and tonumber(port) or 53
  if port < 1 or port > 65535 then
    fail(ctx, field, "port must be 1..65535, got %d", port)
  end
  return { ip = ip, port = math.tointeger(port) }
end

-- A name as c-ares encodes it: labels of 1..63 bytes, 253 in all (a final
-- '.' allowed; "." alone is the root).
local function dns_name(ctx, v, field)
  validate.checks.string(ctx, v, field, { nonempty = true })
  if v == "." then return v end
  local bare = v:gsub("%.$", "")
  if #bare > 253 then
    fail(ctx, field, "must be at most 253 bytes, got %d", #bare)
  end
  for label in (bare .. "."):gmatch("([^.]*)%.") do
    if label == "" or #label > 63 then
      fail(ctx, field, "labels must be 1..63 bytes, got %s", show(v))
    end
  end
  return v
end

-- A name of a number table (type, class), in any case.
local function dns_named(what, example)
  return function(ctx, v, field)
    if math.type(v) == "integer" and v >= 0 and v <= 65535 then return v end
    if type(v) == "string" then
      local n = core.dns_check(what, v:upper())
      if n then return n end
    end
    fail(ctx, field, "not a DNS %s (%s), got %s", what, example, show(v))
  end
end

local function dns_rcodes(ctx, v, field)
  -- (an empty list would pass no reply at all)
  validate.checks.strings(ctx, v, field, { nonempty = true })
  local out = {}
  for i, name in ipairs(v) do
    local n = core.dns_check("rcode", name:upper())
    if not n then
      fail(ctx, fmt("%s[%d]", field, i), "not an rcode (NOERROR, FORMERR, "
        .. "SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, ...), got %s", show(name))
    end
    out[i] = n
  end
  return out
end

-- RE2 regexps (blackbox.yml's) as sonde.regex compiles them: a list of
-- { source, ere }.
local function dns_regexps(ctx, v, field)
  validate.checks.strings(ctx, v, field)
  local out = {}
  for i, re in ipairs(v) do
    local c, err = regex.compile(re)
    if not c then
      fail(ctx, fmt("%s[%d]", field, i), "regexp %s: %s", show(re), err)
    end
    out[i] = c
  end
  return out
end

--- The rules of one section's validation (blackbox_exporter's
-- DNSRRValidator): arrays of regexps (RE2 syntax, as POSIX EREs by
-- sonde.regex).
M.dns_validator_schema = validate.schema {
  { "fail_if_matches_regexp", dns_regexps },
  { "fail_if_all_match_regexp", dns_regexps },
  { "fail_if_not_matches_regexp", dns_regexps },
  { "fail_if_none_matches_regexp", dns_regexps },
}

M.dns_schema = validate.schema {
  { "server", dns_server, required = true },
  { "name", dns_name, required = true },
  { "type", dns_named("type", "A, AAAA, MX, TXT, SOA, ..., TYPE65"),
    default = 255 },
  { "class", dns_named("class", "IN, CH, HS, ANY"), default = 1 },
  { "transport", "enum", values = { "udp", "tcp" }, default = "udp" },
  { "recursion_desired", "boolean", default = true },
  { "timeout", "seconds", default = 1 },
  { "valid_rcodes", dns_rcodes },
  { "validate_answer_rrs", M.dns_validator_schema },
  { "validate_authority_rrs", M.dns_validator_schema },
  { "validate_additional_rrs", M.dns_validator_schema },
}

--- Check a dns spec and make the core's options (sonde.dns documents the
-- fields).
-- @raise naming the field
local function dns_prepare(ctx, spec)
  local s = M.dns_schema:apply(ctx, spec)
  local o = { server = s.server.ip, port = s.server.port, name = s.name,
    qtype = s.type, qclass = s.class, transport = s.transport,
    recursion_desired = s.recursion_desired, timeout = s.timeout }
  -- (set only when given: see http_prepare)
  if s.valid_rcodes then o.valid_rcodes = s.valid_rcodes end
  -- the core takes the regexps as POSIX EREs (`validate`) and as written
  -- (`shown`, for its messages)
  for sec, v in pairs { answer = s.validate_answer_rrs,
      authority = s.validate_authority_rrs,
      additional = s.validate_additional_rrs } do
    o.validate, o.shown = o.validate or {}, o.shown or {}
    o.validate[sec], o.shown[sec] = {}, {}
    for rule, list in pairs(v) do
      local eres, srcs = {}, {}
      for i, c in ipairs(list) do eres[i], srcs[i] = c.ere, c.source end
      o.validate[sec][rule], o.shown[sec][rule] = eres, srcs
    end
  end
  return o
end

---------------------------------------------------------------------------
-- Checked specs kept for the tables they came from
---------------------------------------------------------------------------

-- A copy of a spec made of plain tables (no metatable, at most 4 deep)
-- holding strings, numbers and booleans, or nil for any other spec.
local function snapshot(t, depth)
  if getmetatable(t) ~= nil or depth > 4 then return nil end
  local c = {}
  for k, v in next, t do
    local tv = type(v)
    if tv == "table" then
      v = snapshot(v, depth + 1)
      if v == nil then return nil end
    elseif tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
      return nil
    end
    c[k] = v
  end
  return c
end

-- True when `t` still holds exactly what its snapshot `s` does.
local function unchanged(t, s)
  if getmetatable(t) ~= nil then return false end
  for k, v in next, t do
    local w = s[k]
    if type(v) == "table" then
      if type(w) ~= "table" or not unchanged(v, w) then return false end
    elseif v ~= w then
      return false
    end
  end
  for k in next, s do
    if rawget(t, k) == nil then return false end
  end
  return true
end

local memo = {}    -- handler -> weak table: spec -> { opts, snapshot }

--- `h.prepare` of `spec`, kept while the spec table lives and holds the
-- same values (compared field by field, nested tables too): a script that
-- probes again with the same table, unchanged, does not pay for its checks
-- again.  A spec holding anything but plain tables, strings, numbers and
-- booleans is checked every time.
-- @raise as h.prepare (a spec that raised is not kept)
function M.prepare(where, h, spec)
  local kept = memo[h]
  if not kept then
    kept = setmetatable({}, { __mode = "k" })
    memo[h] = kept
  end
  local m = type(spec) == "table" and kept[spec]
  if m and unchanged(spec, m[2]) then return m[1] end
  local opts = h.prepare({ where = where }, spec)
  local snap = snapshot(spec, 1)
  kept[spec] = snap and { opts, snap } or nil
  return opts
end

--- The handlers by name: `prepare(ctx, spec) -> opts` (raises on a bad
-- spec), `start(opts, cb) -> operation id` (cb gets the result table) and
-- `finish(opts, r) -> r`, what `start` does to the core's result table
-- before cb gets it (for results the C worker kept: sonde.probe).
M.handlers = {
  exec = { prepare = exec_prepare, start = exec_start, finish = exec_finish },
  -- URL credentials are masked in the result (sonde.redact.http_result)
  http_get = { prepare = http_prepare, start = function(opts, cb)
    return core.http(opts, function(r) cb(http_finish(opts, r)) end)
  end, finish = http_finish },
  tcp_socket = { prepare = tcp_prepare, start = core.tcp,
    finish = function(_, r) return r end },
  grpc = { prepare = grpc_prepare, start = core.grpc,
    finish = function(_, r) return r end },
  icmp = { prepare = icmp_prepare, start = core.icmp,
    finish = function(_, r) return r end },
  dns = { prepare = dns_prepare, start = core.dns,
    finish = function(_, r) return r end },
}

return M
