--- sonde: kubelet-style exec, HTTP, TCP and gRPC probes, ICMP echo and DNS
-- queries,
-- on one event loop.
--
-- Every prober works in two styles:
--
--   * with a callback: `sonde.exec(spec, function(result) ... end)` returns
--     an operation id at once; the callback runs later, inside `sonde.run()`;
--   * inside a task started with `sonde.spawn(fn)`: `sonde.exec(spec)`
--     yields the task until the result is ready and returns it.
--
-- Called outside a task without a callback, a prober raises an error.  A
-- wrong spec raises an error that names the field and the reason.  A probe
-- outcome (refused, timeout, non-zero exit...) never raises: it is a result.
--
-- **Result table** (every prober):
--
--   * `status`: `"success"`, `"warning"`, `"failure"` or `"unknown"`;
--   * `reason`: one of `ok`, `exit_code`, `signal`, `timeout`, `not_found`,
--     `permission`, `spawn`, `connect_refused`, `connect_timeout`, `dns`,
--     `network`, `tls`, `tls_expiry`, `http_status`, `grpc_status`,
--     `redirect`, `protocol`, `config`, `resource`, `cancelled`, `expect`
--     (an expectation of http_get or tcp_socket was not met: see
--     sonde.expect); declared probes add `hook_error` (a hook
--     raised or hit its bound, or the hook or check is quarantined:
--     status unknown), `check_error` (a custom check raised or
--     returned nonsense: failure) and `check` (a custom check's own
--     non-success verdict);
--   * `output`: string (bytes), kubelet's human-readable output;
--   * `duration`: seconds (monotonic clock);
--   * `error`: detail text of a failure, or nil; `code`: errno / CURLcode.
--
-- Trap: the top level of a `require`d file cannot yield; call probers from
-- a task (`sonde.spawn`) or give them a callback.
--
-- This file is the public facade only: the task runtime is sonde.task,
-- the probers' specs sonde.probers, loads and what they own sonde.config
-- (README, "Inside sonde", has the map).
-- @module sonde

local core = require "sonde.core"
local validate = require "sonde.validate"
local task = require "sonde.task"
local probers = require "sonde.probers"
local config = require "sonde.config"
local action = require "sonde.action"
local log = require "sonde.log"
local k8s = require "sonde.k8s"
local pod = require "sonde.pod"
local nagios = require "sonde.nagios"
local targets = require "sonde.targets"
local each = require "sonde.each"
local metrics = require "sonde.metrics"
local otlp = require "sonde.otlp"
local blackbox = require "sonde.blackbox"

local sonde = { version = core.version }

local fmt = string.format

---------------------------------------------------------------------------
-- Tasks and the loop
---------------------------------------------------------------------------

--- Start `fn(...)` as a task, at once: it runs until it first waits.  The
-- task belongs to the code that spawned it (a script's load, a probe): it
-- is closed when that owner is stopped or replaced.
-- @tparam function fn
-- @return the task (a coroutine; see `sonde.close`)
-- @raise the error of fn if it fails before its first wait
function sonde.spawn(fn, ...)
  if type(fn) ~= "function" then
    validate.raise(fmt("sonde.spawn: function expected, got %s", type(fn)))
  end
  return task.spawn(fn, ...)
end

--- Close a task: what it waits for is cancelled and its `<close>`
-- variables run.  A task closing itself is closed at its next wait.
-- @return true if it was still live, false otherwise
-- @raise when `co` is not a coroutine
sonde.close = task.close

--- Run the event loop until no operation is pending.  Probes and
-- services declared with `sonde.probe` / `sonde.service` start first (and
-- keep the loop busy: it then runs until they are stopped).
--
-- Inside a task while the loop already runs (or under the `sonde` host,
-- which runs the loop itself), `sonde.run()` waits instead until nothing
-- else of its owner is pending (no other task, operation or timer, no
-- running probe or service), so a script written for plain `lua5.4` runs
-- the same under the host.
-- @return true
-- @raise the error of a callback or task that failed (the loop stops
-- there; call run() again to go on); "already running" when called from
-- a callback
function sonde.run()
  if task.in_task() and (task.running() or task.hosted) then
    return task.wait_idle()
  end
  config.ambient():start()
  return task.run()
end

--- Wait `seconds` (a number >= 0) in the current task.
-- @raise outside a task
function sonde.sleep(seconds)
  if seconds == nil then
    validate.raise("sonde.sleep: seconds: number expected")
  end
  validate.checks.seconds({ where = "sonde.sleep" }, seconds, "seconds",
    { allow_zero = true })
  return task.sleep(seconds)
end

--- Call `cb()` after `seconds` (a timer).  The timer belongs to the code
-- that set it, like a task.
-- @treturn integer the timer's id (for `sonde.cancel`)
function sonde.after(seconds, cb)
  validate.checks.seconds({ where = "sonde.after" }, seconds, "seconds",
    { allow_zero = true })
  if type(cb) ~= "function" then
    validate.raise("sonde.after: callback function expected")
  end
  return task.after(seconds, cb)
end

--- Cancel an operation started with a callback, or a timer: the callback
-- is never called; an exec probe's process group is killed and reaped.
-- @treturn boolean true if it was still pending
function sonde.cancel(id)
  return task.cancel(id)
end

--- Run `fn(...)` as a task and then the loop until nothing is pending.
function sonde.main(fn, ...)
  sonde.spawn(fn, ...)
  return sonde.run()
end

--- Monotonic clock, seconds.
sonde.now = core.now

--- Make this process a child subreaper (Linux), so that descendants that
-- probe commands leave behind are re-parented here and reaped by sonde.
-- @treturn true|nil,string
sonde.set_subreaper = core.set_subreaper

--- Kubernetes `$(VAR)` expansion (kubelet semantics, reference section 7).
-- `$(NAME)` is replaced by env[NAME] when defined, else left as is; `$$` is
-- a literal `$`; nothing else is special.  Difference from the kubelet: a
-- byte that is not valid UTF-8 after `$` is copied unchanged (Go replaces
-- it with U+FFFD).
-- @tparam string str
-- @tparam table env names to string values
-- @treturn string
-- @raise on wrong argument types
function sonde.expand(str, env)
  if type(str) ~= "string" then
    validate.raise(fmt("sonde.expand: string expected, got %s", type(str)))
  end
  if type(env) ~= "table" then
    validate.raise(fmt("sonde.expand: env: table expected, got %s", type(env)))
  end
  return core.expand(str, env)
end

---------------------------------------------------------------------------
-- Probers
---------------------------------------------------------------------------

-- With a callback: an operation of the current owner; without: a wait in
-- the running task.
local function call(where, h, spec, cb)
  local opts = probers.prepare(where, h, spec)
  local function start(k) return h.start(opts, k) end
  if cb ~= nil then
    if type(cb) ~= "function" then
      validate.fail({ where = where }, nil, "callback must be a function, "
        .. "got %s", type(cb))
    end
    return task.start(where, start, cb)
  end
  return task.await(where, start)
end

--- Run a command (kubelet exec probe).
--
-- spec fields:
--
--   * `command`: array of strings, required; argv, run without a shell;
--     each element is `$(VAR)`-expanded against `env` first;
--   * `env`: table name -> string; the command's whole environment, plus
--     `PATH` from this process unless env sets it (kubelet: the container's
--     static env only);
--   * `env_data`: table name -> string; more environment variables, set in
--     the child (over `env`) but never used by the `$(VAR)` expansion of
--     `command`: `$(X)` of a name X only given here stays literal.  For
--     values that must stay data (what a probed target printed);
--   * `input`: string (NULs allowed, at most 1 MiB) written to the
--     command's stdin, which is then closed; default: stdin is /dev/null.
--     A command that does not read it all loses the rest, nothing fails;
--   * `cwd`: working directory (default: this process's);
--   * `timeout`: seconds, > 0, default 1.  At the deadline the command's
--     process group gets SIGTERM, then SIGKILL one second later;
--   * `max_output`: bytes of output kept, default 10240 (kubelet);
--   * `codes`: how exit codes map to statuses: `"kubelet"` (default: 0
--     success, else failure), `"nagios"` (0 success, 1 warning, 2 failure,
--     3 unknown, others failure; a timeout is unknown, as the plugin
--     guidelines say; the result also gets `summary`, `long_output` and
--     `perfdata`, a list of `{ label, value, uom, warn, crit, min, max }`:
--     see sonde.nagios), `"consul"` (0
--     success, 1 warning, else failure), or a table
--     `{ [0] = "success", [1] = "warning", default = "failure" }`.
--
-- Result fields beyond the common ones: `exit_code` (when it exited),
-- `signal` (number, when killed by one), `pid` (the command's pid and
-- process group), `truncated` (boolean: output hit max_output).  `output`
-- is stdout followed by stderr (not interleaved), capped at max_output; on
-- a timeout with no output it is kubelet's `command timed out: "<argv>"
-- timed out after <d>`.  Reasons: ok, exit_code, signal, timeout,
-- not_found, permission, spawn; resource (status unknown) when this
-- process is out of descriptors or processes.
--
-- When the command exits, what is left of its process group is killed, so
-- background children never hold a result back.
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.exec(spec, callback)
  return call("sonde.exec", probers.handlers.exec, spec, callback)
end

--- HTTP GET (or another method) against a URL (kubelet httpGet probe).
--
-- spec fields: either `url` (absolute http:// or https://) or the
-- kubelet's parts: `scheme` ("http" default, or "https", any case),
-- `host` (default "127.0.0.1"; IPv6 bare, "::1"), `port` (1..65535, or a
-- name looked up in `ports = { {name=, port=} }`, required), `path`
-- (default "/"; a missing leading "/" is added; the query is kept).  Then:
--
--   * `headers`: array of `{ name =, value = }` (kubelet httpHeaders) or a
--     map name -> string | array of strings.  Names must match
--     `[-A-Za-z0-9]+` and are canonicalised ("x-id" -> "X-Id").
--     Defaults: `User-Agent: sonde/<version>`, `Accept: */*`,
--     `Connection: close`; a User-Agent or Accept of "" removes the line; a
--     `Host` header sets the request host (the connection still goes to
--     `host`).  A value containing CR, LF or NUL is refused with the
--     spec (raised, naming the field: it would inject a header line);
--   * `method` (default "GET"), `body` (string);
--   * `timeout`: seconds, > 0, default 1: one deadline for resolution,
--     connect, TLS, every redirect hop, headers and body;
--   * `max_body`: bytes of body read, default 10240 (kubelet); reaching it
--     is not an error;
--   * `tls = { verify, ca_file, cert_file, key_file, server_name,
--     min_version, expiry_warning, expiry_failure }`: certificates are not
--     verified unless verify is true (kubelet); `ca_file` the PEM CAs
--     trusted instead of the system's; `cert_file` and `key_file` a client
--     certificate (mutual TLS); `server_name` the SNI sent and the name
--     verified (the connection still goes to the URL's host, the Host
--     header stays the URL's); `min_version` "TLS1.0" .. "TLS1.3" (or
--     blackbox_exporter's "TLS10" .. "TLS13"); `expiry_warning`,
--     `expiry_failure` (seconds, no default): a peer certificate expiring
--     sooner makes the result a warning / failure, reason tls_expiry,
--     whatever the status code (an expired one: failure);
--   * `follow_redirects`: "same-host" (default, kubelet), "same-origin"
--     (scheme, hostname and port unchanged) or "none"; a redirect not
--     followed ends the probe with its 3xx (a warning, reason redirect);
--   * `expect`: what the response must show, `{ status = { 200, 401 } |
--     "2xx" | 200, max_duration = seconds, headers = { [name] = pattern },
--     body = pattern, body_not = pattern, json = { ["$.a.b[0]"] = value }
--     }` (Lua patterns); judged in that order, the first unmet one makes
--     the result a failure, reason expect, its output saying what was
--     expected and seen; `status` replaces the classification below.
--     See sonde.expect (lua/sonde/expect.lua) for the details.
--
-- Classification (kubelet): 2xx success (output = body); 3xx warning,
-- reason redirect (output `Probe terminated redirects, Response body:
-- <body>`); anything else failure, reason http_status (output `HTTP probe
-- failed with statuscode: <code>`).  Redirects are followed while the
-- hostname stays that of the first URL, with at most 10 requests in all
-- (a 10th answer that redirects again is a failure, reason redirect, as
-- with Go's client in the kubelet); a redirect to another hostname is not followed: the 3xx is
-- the final response.  Result fields beyond the common ones:
-- `http_status`, `body`, `headers` (lowercase name -> value, repeats
-- joined with ", "), `url` (last URL requested), `redirects`,
-- `remote_addr`, `truncated`, and over TLS `tls`: the peer certificate
-- facts `{ earliest_expiry, last_chain_expiry (seconds since the epoch;
-- the latter only for a verified chain), verified, subject, issuer,
-- dns_names = {...}, serial, fingerprint_sha256, version ("TLS 1.3"),
-- cipher }` (blackbox_exporter's definitions, see sonde/tls.h).  A
-- password in a URL shown in `url`, `error` or `output` is masked
-- (`user:xxxxx@`).  Status unknown, reason
-- resource: no socket could be opened (out of descriptors) or out of
-- memory; failure, reason protocol: a header line over 100 KB or headers
-- over 300 KB; a TLS handshake stalled after the TCP connect is timeout,
-- not connect_timeout.
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.http_get(spec, callback)
  return call("sonde.http_get", probers.handlers.http_get, spec, callback)
end

--- Open a TCP connection and close it (kubelet tcpSocket probe).
--
-- spec fields: `host` (default "127.0.0.1"; IPv6 bare), `port` (1..65535
-- or a name in `ports`), `ports`, `timeout` (seconds, > 0, default 1),
-- and a line protocol check once connected, within the same timeout:
-- `send` (bytes, e.g. "PING\r\n") and `expect` (a Lua pattern: lines are
-- read until one matches, e.g. "^%+PONG"), or `expect` as a list of
-- steps: `{ { expect = "^220" }, { send = "EHLO sonde\r\n" },
-- { expect = "^250 " } }`.
-- An unmet expectation is a failure, reason expect (timeout when the
-- deadline passes first); on success the output is the last line matched.
-- See sonde.expect.
-- A name is resolved on the loop (/etc/hosts, then the name servers of
-- /etc/resolv.conf) and its addresses tried in turn, all within `timeout`.
-- Connected: success (output ""); refused: failure connect_refused; no
-- connection by the deadline: failure connect_timeout; name not resolved
-- (or no answer by the deadline): failure dns; other errors: failure
-- network.  `output` is the kubelet's ("dial tcp 127.0.0.1:80: connect:
-- connection refused").  Result adds `remote_addr` (the address tried
-- last).
--
-- `tls = { ... }` (the fields of http_get's `tls`): a TLS handshake right
-- after connecting, within the same `timeout` (blackbox_exporter's tcp
-- prober with `tls: true`); the SNI and the name verified are
-- `server_name`, else `host` when it is a name.  Handshake failed:
-- failure tls ("dial tcp ADDR: TLS handshake: certificate verify failed:
-- ..."); not done by the deadline: failure timeout ("TLS handshake not
-- finished: i/o timeout"); a ca_file, cert_file or key_file that cannot
-- be read: failure tls, before connecting.  The result then has `tls`
-- (the certificate facts, as for https) and the expiry thresholds apply.
-- With `send`/`expect` steps, they go through TLS; a step with
-- `starttls = true` (SMTP, IMAP, POP3 ... STARTTLS) makes the handshake
-- happen there instead, after that step's expect and send, with `tls`'s
-- options (none given: the defaults); what was read in clear past the
-- step's line is dropped.  A TLS error in a later step: failure tls.
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.tcp_socket(spec, callback)
  return call("sonde.tcp_socket", probers.handlers.tcp_socket, spec, callback)
end

--- gRPC health check (kubelet grpc probe): one call of the standard
-- health protocol, `grpc.health.v1.Health/Check`, over HTTP/2.
--
-- spec fields: `port` (1..65535, required; a number only: the kubelet's
-- grpc probe takes no named port), `service` (string, default "": the
-- server as a whole; UTF-8), `host` (default "127.0.0.1", as http_get
-- and tcp_socket; IPv6 bare), `timeout` (seconds, > 0, default 1: one
-- deadline for resolution, connect, TLS and the call), `tls` (false, the
-- default: plaintext HTTP/2 with prior knowledge as the kubelet; true:
-- TLS with HTTP/2 chosen by ALPN and http_get's defaults, certificates
-- not verified; or a table with http_get's `tls` fields and meanings:
-- `verify`, `ca_file`, `cert_file`, `key_file`, `server_name`,
-- `min_version`, `expiry_warning`, `expiry_failure`).  Over TLS a
-- certificate expiring sooner than `expiry_failure` / `expiry_warning`
-- makes a completed call's result a failure / warning with reason
-- tls_expiry, whatever the serving status (as http_get's thresholds win
-- over the status code).
--
-- Outcomes (output in the kubelet's words; DUR is the timeout as Go
-- prints it, "1s"): SERVING is success, reason ok, output "service
-- healthy"; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN are failure, reason
-- grpc_status, output `service unhealthy (responded with "NOT_SERVING")`;
-- no health service (grpc-status 12) is failure grpc_status, "error: this
-- server does not implement the grpc health protocol
-- (grpc.health.v1.Health): <message>"; another grpc-status (5 for a
-- service the server does not know) is failure grpc_status, "error:
-- health rpc probe failed: rpc error: code = NotFound desc = <message>";
-- the deadline passing once connected is failure timeout, "timeout:
-- health rpc did not complete within DUR"; no connection by then (no TCP
-- connect: connect_timeout; no TLS handshake or no word from the server:
-- timeout) `timeout: failed to connect service "ADDR" within DUR:
-- context deadline exceeded`; refused (at once: connect_refused), TLS
-- (tls), name (dns) and other errors `error: failed to connect service at
-- "ADDR": <error>`; a server that is not gRPC (an HTTP/1 server, a
-- malformed answer) failure protocol.  Result fields beyond the common
-- ones: `grpc_status` (the call's status code, when one came),
-- `serving_status` ("SERVING", "NOT_SERVING", ... when a response was
-- decoded), `remote_addr`, and over TLS `tls` (the peer certificate
-- facts, as http_get's).
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.grpc(spec, callback)
  return call("sonde.grpc", probers.handlers.grpc, spec, callback)
end

--- ICMP echo ("ping"): one echo request, its reply awaited
-- (blackbox_exporter's icmp prober, its module's field names and
-- defaults).
--
-- spec fields: `host` (required: a name or an IP literal, IPv6 bare),
-- `preferred_ip_protocol` ("ip6", the default, or "ip4"),
-- `ip_protocol_fallback` (true: when the name has no address of the
-- preferred family, take one of the other; an IP literal counts the same
-- way), `payload_size` (bytes of echo data, 0..65507; 0, the default:
-- the 28 bytes "Prometheus Blackbox Exporter", else that many bytes
-- starting with that text, zero-filled), `ttl` (the request's TTL / hop
-- limit, 0..255, default 64; 0: the system's), `dont_fragment` (IPv4:
-- the DF bit; needs the raw socket), `source_ip_address` (an IP literal
-- to send from, of the target's family), `timeout` (seconds, > 0,
-- default 1: one deadline for the lookup, the request and its reply),
-- `socket` (sonde's own: "auto", the default, "raw" or "datagram").
--
-- Sockets (as blackbox_exporter): an unprivileged ICMP datagram socket
-- when the process's group is inside `net.ipv4.ping_group_range` (that
-- sysctl covers IPv6 too), else a raw socket (root or CAP_NET_RAW).  With
-- neither: failure, reason permission, the output saying what to change.
-- A reply counts when it is an echo reply from the target with the
-- request's sequence (and identifier, on a raw socket) and exactly its
-- payload; other ICMP traffic is ignored.
--
-- Outcomes: the reply: success, output "echo reply from ADDR in S s (seq
-- N, hop limit H)"; none by the deadline: failure timeout ("icmp ADDR:
-- no echo reply by the deadline: i/o timeout"); a name that does not
-- resolve, or has no address of a usable family: failure dns; no route,
-- a request over the path MTU with dont_fragment, a source address not
-- here: failure network; out of descriptors: unknown resource.  Result
-- fields beyond the common ones: `rtt` (seconds, success only),
-- `reply_ttl` (the reply's TTL / hop limit, when the socket told it),
-- `ip_protocol` (4 or 6; 0 when no address was chosen), `socket`
-- ("datagram" or "raw": the socket used, once one was opened),
-- `ip_addr_hash` (blackbox_exporter's probe_ip_addr_hash), `remote_addr`
-- (the IP probed, no port), `phases = { resolve, setup, rtt }` (seconds:
-- blackbox_exporter's probe_icmp_duration_seconds).
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.icmp(spec, callback)
  return call("sonde.icmp", probers.handlers.icmp, spec, callback)
end

--- DNS query (blackbox_exporter's dns prober, v0.23): one query to one
-- server, with c-ares on the loop, its reply checked as blackbox_exporter
-- checks it.
--
-- spec fields:
--
--   * `server`: the server to ask, an IP address with an optional port,
--     required: "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353" (port
--     53 by default; a name is not taken: no resolver is asked which
--     server to ask);
--   * `name`: the name asked, required ("example.test", a final "." or
--     not: it is asked as written, no search list);
--   * `type`: "A", "AAAA", "MX", "TXT", "CNAME", "NS", "SOA", "PTR",
--     "SRV", "CAA", "ANY" ... or "TYPE65" or a number; default "ANY"
--     (blackbox_exporter's default); `class`: "IN" (default), "CH", ...;
--   * `transport`: "udp" (default) or "tcp";
--   * `recursion_desired`: boolean, default true (the RD bit);
--   * `timeout`: seconds, > 0, default 1: one deadline for the query (UDP:
--     one datagram, never re-sent; TCP: connection and exchange);
--   * `valid_rcodes`: the rcodes that pass, e.g. `{ "NOERROR",
--     "NXDOMAIN" }`; default `{ "NOERROR" }`;
--   * `validate_answer_rrs`, `validate_authority_rrs`,
--     `validate_additional_rrs`: `{ fail_if_matches_regexp = {...},
--     fail_if_all_match_regexp = {...}, fail_if_not_matches_regexp =
--     {...}, fail_if_none_matches_regexp = {...} }`, regexps matched
--     against each record of the section as text, the way Go's
--     miekg/dns prints it: `"example.test.\t300\tIN\tA\t127.0.0.1"`.
--     fail_if_matches: a record matching one fails; fail_if_not_matches: a
--     record not matching one fails; fail_if_none_matches: no record
--     matching one fails; fail_if_all_match: fails unless every record
--     matches each (blackbox_exporter's code, whatever the name says);
--     fail_if_not_matches and fail_if_none_matches fail on an empty
--     section.  The regexps are RE2 (Go) syntax as in blackbox.yml, run as
--     POSIX extended regexps as sonde.regex maps them; what POSIX cannot
--     do (`(?m)`, `\p{..}`, back-references) is refused at declaration,
--     naming the field.
--
-- Outcomes: the rcode valid and every validation passed is success, reason
-- ok, output "NOERROR: 1 answer, 0 authority, 0 additional records"; an
-- rcode not in valid_rcodes is failure, reason dns ("rcode NXDOMAIN is not
-- one of the valid rcodes (NOERROR)"); a failed validation is failure,
-- reason expect (the output names the section, the rule, the regexp and
-- the record); no reply by the deadline: failure timeout ("query to
-- 127.0.0.1:53 over udp: i/o timeout"); refused (nothing listening on the
-- TCP port, or an ICMP port unreachable for UDP): failure
-- connect_refused; a reply that does not parse: failure protocol; other
-- socket errors: failure network; out of memory or descriptors: unknown
-- resource.
--
-- Result fields beyond the common ones: `remote_addr` (the server,
-- "ip:port" / "[ip]:port"), `ip_protocol` (4 or 6), `lookup_time` (seconds from sending the query
-- to the reply or the failure), and once a reply came: `rcode`
-- ("NOERROR", "NXDOMAIN", ...), `answer_rrs`, `authority_rrs`,
-- `additional_rrs` (counts), `answer`, `authority`, `additional` (arrays of
-- the records' text, as matched by the validations), `serial` (the SOA
-- serial, for a type "SOA" query answered with one).
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
function sonde.dns(spec, callback)
  return call("sonde.dns", probers.handlers.dns, spec, callback)
end

---------------------------------------------------------------------------
-- Declarations
---------------------------------------------------------------------------

--- Declare a probe: see lua/sonde/probe.lua for the fields and the
-- kubelet semantics.  It belongs to the script's load.
-- @return the probe object
-- @raise `FILE:LINE: probe "NAME": FIELD: reason` on a bad spec
function sonde.probe(spec)
  -- a blackbox_exporter module run against a target (sonde.blackbox):
  -- the target is its series' target label
  if type(spec) == "table" and rawget(spec, "module") ~= nil then
    local target = rawget(spec, "target")
    local p = config.ambient():probe(blackbox.probe_spec(spec))
    rawset(p, "blackbox_target", target)
    metrics.prepare(p)               -- its target label
    return p
  end
  return config.ambient():probe(spec)
end

--- Declare a supervised service: see lua/sonde/service.lua.
-- @return the service object (for `service =` in probes and
-- `sonde.action.restart`)
-- @raise `FILE:LINE: service "NAME": FIELD: reason` on a bad spec
function sonde.service(spec)
  return config.ambient():service(spec)
end

--- Stop the current load: every declared probe (in-flight runs
-- cancelled) and service (SIGTERM, SIGKILL after its grace), its tasks
-- (closed: `<close>` variables run; the calling task at its next wait),
-- timers and operations; `done()` is called once every service has
-- exited.  A stopped load is not started again.
-- @raise when `done` is given and is not a function
function sonde.stop(done)
  if done ~= nil and type(done) ~= "function" then
    validate.raise("sonde.stop: done must be a function")
  end
  config.ambient():stop(done)
end

--- Remediation actions: see lua/sonde/action.lua.
sonde.action = { restart = action.restart, exec = action.exec,
                 webhook = action.webhook }

--- The event log: `sonde.log.info(fmt, ...)`, `warn`, `error`, `debug`,
-- `set_level`, `set_format` (see lua/sonde/log.lua).
sonde.log = log

--- Kubernetes: `sonde.k8s.probe{...}` translates a probe with the pod
-- spec's field names (lua/sonde/k8s.lua); `sonde.k8s.load(path [, {
-- container = NAME }])` declares a manifest's pod: its containers as
-- services with their probes, run in the kubelet's order; it returns the
-- (first) container's service and probes, and the pod
-- (lua/sonde/pod.lua, lua/sonde/podrun.lua).
sonde.k8s = { probe = k8s.probe, load = pod.load }

--- Script-defined metric series, served on `/metrics` and belonging to
-- the script's load (see lua/sonde/metrics.lua):
-- `sonde.metrics.gauge(name, help, labels)`, `.counter(...)`.
sonde.metrics = {
  gauge = function(...) return config.ambient().registry:gauge(...) end,
  counter = function(...) return config.ambient().registry:counter(...) end,
}

--- blackbox_exporter configurations (lua/sonde/blackbox.lua):
-- `sonde.blackbox.load(path)` reads a blackbox.yml (raising
-- `PATH: module "NAME": FIELD: reason` when sonde cannot run it) and makes
-- it the configuration `sonde.module` takes its modules from and the
-- host's `/probe` serves (under the host, `--config.file` is loaded
-- first); it returns `{ path, modules = { NAME = module } }`.  `module:run(target, { timeout = s }, cb)` runs one
-- probe (cb gets `{ success, duration, result, logs }`),
-- `sonde.blackbox.render(res)` gives the series /probe would answer.
sonde.blackbox = {
  load = function(path)
    local conf, err = blackbox.load(path)
    if not conf then validate.raise(err) end
    blackbox.current = conf
    -- served on /probe too (with --listen)
    config.ambient().blackbox = conf
    return conf
  end,
  parse = blackbox.parse,
  render = blackbox.render,
}

--- A module of the blackbox configuration loaded (`--config.file` or
-- `sonde.blackbox.load`), for `sonde.probe { module = sonde.module(NAME),
-- target = "http://...", ... }` (thresholds, hooks and actions as usual).
-- @raise when no configuration is loaded or it has no such module
function sonde.module(name)
  local ok, m = pcall(blackbox.module, name)
  if not ok then validate.raise(tostring(m):gsub("^[^:]*:%d+: ", "")) end
  return m
end

--- Push the load's series (what `/metrics` serves) as OTLP/HTTP JSON every
-- `interval` seconds to an OpenTelemetry Collector or Prometheus >= 3's
-- OTLP receiver: `sonde.otlp{ url = "http://127.0.0.1:4318/v1/metrics",
-- interval = 15, headers = {}, buffer = 100, buffer_bytes, timeout = 10,
-- backoff = 1, max_backoff = 60, resource = {}, tls = {} }` (see
-- lua/sonde/otlp.lua for the fields, the mapping and the retries).  The
-- exporter belongs to the script's load: a reload or a stop ends its
-- timers and its request in flight.
-- @return the exporter (`:stop()`; `sent`, `failed`, `dropped` counters)
-- @raise naming the field, on a bad spec
function sonde.otlp(spec)
  validate.checks.table({ where = "sonde.otlp" }, spec, "spec")
  local cfg = config.ambient()
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  s.collect = s.collect or function() return metrics.render(cfg) end
  return otlp.exporter(s):start()
end

--- Nagios plugin output parsing (lua/sonde/nagios.lua).
sonde.nagios = nagios

--- Targets from service discovery, in Prometheus's formats, and
-- Prometheus's hashmod sharding (lua/sonde/targets.lua):
-- `sonde.targets.file_sd(path [, { refresh = 300 }])`,
-- `sonde.targets.http_sd(url [, { refresh = 60 }])`,
-- `sonde.targets.static{ "host:port", { targets = {...}, labels = {...} } }`,
-- `sonde.targets.shard(source, i, n [, { source_labels, separator }])`,
-- `sonde.targets.shard_of(target, n [, opts])`,
-- `sonde.targets.host_shard()` (the host's `--shard I/N`: i, n, or nil).
sonde.targets = {
  file_sd = targets.file_sd, http_sd = targets.http_sd,
  static = targets.static, shard = targets.shard, shard_of = targets.shard_of,
  host_shard = function()
    local s = targets.host_shard
    return s and s.i, s and s.n
  end,
}

--- Declare one probe per target: `fn(target)` returns the probe's spec
-- (see lua/sonde/each.lua).  Probes are added, kept (with their state)
-- and removed as the targets change, without a reload; the host's
-- `--shard I/N` (or `opts.shard = { i, n }`) keeps one shard's targets.
-- @param targets a source (sonde.targets) or a list of addresses / groups
-- @tparam function fn target -> probe spec | nil
-- @tparam[opt] table opts `shard`
-- @return the group (`g:names()`: its probes' names)
-- @raise on bad arguments, at the user's line
function sonde.probe_each(targets_, fn, opts)
  return each.new(config.ambient(), targets_, fn, opts)
end

return sonde
