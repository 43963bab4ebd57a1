--- sonde: kubelet-style exec, HTTP and TCP probes on one event loop.
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
--     `network`, `tls`, `http_status`, `redirect`, `protocol`, `config`,
--     `resource`, `cancelled`; declared probes add `hook_error` (a hook
--     raised: status unknown), `check_error` (a custom check raised or
--     returned nonsense: failure) and `check` (a custom check's own
--     non-success verdict);
--   * `output`: string (bytes), kubelet's human-readable output;
--   * `duration`: seconds (monotonic clock);
--   * `error`: detail text of a failure, or nil; `code`: errno / CURLcode.
--
-- Trap: the top level of a `require`d file cannot yield; call probers from
-- a task (`sonde.spawn`) or give them a callback.
-- @module sonde

local core = require "sonde.core"
local check = require "sonde.check"

local sonde = { version = core.version }

local fmt = string.format

---------------------------------------------------------------------------
-- Tasks: coroutines that wait on operations.  One resumer (`resume`); a
-- task waits on exactly one operation id at a time (`waiting[co]`).
---------------------------------------------------------------------------

local is_task = setmetatable({}, { __mode = "k" })
local waiting = setmetatable({}, { __mode = "k" })
local on_abort = setmetatable({}, { __mode = "k" })

local function text_of(err)
  local ok, t = pcall(tostring, err)
  return ok and t or "(error object without a printable form)"
end

local function resume(co, ...)
  if coroutine.status(co) ~= "suspended" then return end  -- closed by user
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    on_abort[co] = nil
    error(debug.traceback(co, text_of(err)), 0)
  end
  if coroutine.status(co) == "suspended" and waiting[co] == nil then
    -- stopped by its time bound, or a bare coroutine.yield
    local why = core.deadline_hit(co) and "deadline" or "yield"
    coroutine.close(co)
    local h = on_abort[co]
    on_abort[co] = nil
    if h then return h(why) end
    if why == "deadline" then
      error("sonde: a task ran past its time limit and was stopped", 0)
    end
    error("sonde: a task yielded by itself; inside a task use sonde.sleep "
      .. "or the probers, not coroutine.yield", 0)
  end
end

--- Start `fn(...)` as a task, at once: it runs until it first waits.
-- @tparam function fn
-- @return the task's coroutine
-- @raise the error of fn if it fails before its first wait
function sonde.spawn(fn, ...)
  if type(fn) ~= "function" then
    error(fmt("sonde.spawn: function expected, got %s", type(fn)), 2)
  end
  local co = coroutine.create(fn)
  is_task[co] = true
  resume(co, ...)
  return co
end

-- A task with a running-time bound (custom checks, script loads): after
-- `bound` seconds it is stopped where it runs (src/ldeadline.c) and
-- `abort(why)` is called with "deadline" (or "yield" for a bare
-- coroutine.yield).  Returns the coroutine.
local function bounded_task(fn, bound, abort, ...)
  local co = coroutine.create(fn)
  is_task[co] = true
  on_abort[co] = abort
  core.set_deadline(co, bound)
  resume(co, ...)
  return co
end

--- Wait in the current task for an operation started by `start(cb)`.
local function await(where, start)
  local co, main = coroutine.running()
  if main or not is_task[co] then
    error(fmt("%s: not in a sonde task: call it inside sonde.spawn(fn), "
      .. "or pass a callback", where), 3)
  end
  if not coroutine.isyieldable() then
    error(fmt("%s: cannot wait here (a C call boundary, e.g. a metamethod "
      .. "or table.sort comparator, is in the way)", where), 3)
  end
  local id
  id = start(function(result)
    if waiting[co] ~= id then return end
    waiting[co] = nil
    resume(co, result)
  end)
  waiting[co] = id
  return coroutine.yield()
end

--- Run the event loop until no operation is pending.  Probes and
-- services declared with `sonde.probe` / `sonde.service` start first (and
-- keep the loop busy: it then runs until they are stopped).
-- @return true
-- @raise the error of a callback or task that failed (the loop stops
-- there; call run() again to go on)
function sonde.run()
  local engine = package.loaded["sonde.engine"]
  if engine then engine.start(engine.current) end
  return core.run()
end

--- Wait `seconds` (a number >= 0) in the current task.
-- @raise outside a task
function sonde.sleep(seconds)
  check.seconds({ where = "sonde.sleep" }, seconds, "seconds", nil,
    true)
  if seconds == nil then error("sonde.sleep: seconds: number expected", 2) end
  await("sonde.sleep", function(cb)
    if sonde._dry_run then return 0 end      -- sonde check: nothing runs
    return core.timer(seconds, cb)
  end)
end

--- Call `cb()` after `seconds`.  Returns the operation id.
function sonde.after(seconds, cb)
  check.seconds({ where = "sonde.after" }, seconds, "seconds", 0,
    true)
  if type(cb) ~= "function" then
    error("sonde.after: callback function expected", 2)
  end
  return core.timer(seconds, function() cb() end)
end

--- Cancel an operation started with a callback: the callback is never
-- called; an exec probe's process group is killed and reaped.
-- @treturn boolean true if it was still pending
function sonde.cancel(id)
  return core.cancel(id)
end

--- Run `fn(...)` as a task and then the loop until nothing is pending
-- (what the `sonde` host does with a script).
function sonde.main(fn, ...)
  sonde.spawn(fn, ...)
  return core.run()
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
    error(fmt("sonde.expand: string expected, got %s", type(str)), 2)
  end
  if type(env) ~= "table" then
    error(fmt("sonde.expand: env: table expected, got %s", type(env)), 2)
  end
  return core.expand(str, env)
end

---------------------------------------------------------------------------
-- Probers
---------------------------------------------------------------------------

-- `sonde._dry_run` (sonde check): validate, start nothing.
local function never() return 0 end

local function dispatch(where, start, cb)
  if sonde._dry_run then start = never end
  if cb ~= nil then
    if type(cb) ~= "function" then
      check.fail({ where = where }, nil, "callback must be a function, got %s",
        type(cb))
    end
    return start(cb)
  end
  return await(where, start)
end

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

local EXEC_KEYS = { command = true, env = true, cwd = true, timeout = true,
                    max_output = true, codes = true }

local function exec_codes(ctx, codes)
  if codes == nil then return EXEC_CODES.kubelet, nil end
  if type(codes) == "string" then
    local t = EXEC_CODES[codes]
    if not t then
      check.fail(ctx, "codes", "must be \"kubelet\", \"nagios\", \"consul\" "
        .. "or a table, got %s", check.show(codes))
    end
    -- monitoring-plugins: a plugin that times out is UNKNOWN
    return t, codes == "nagios" and "unknown" or nil
  end
  check.table(ctx, codes, "codes")
  for k, v in pairs(codes) do
    if not (k == "default" or (math.type(k) == "integer" and k >= 0
        and k <= 255)) then
      check.fail(ctx, "codes", "keys must be exit codes 0..255 or "
        .. "\"default\", got %s", check.show(k))
    end
    if not STATUSES[v] then
      check.fail(ctx, fmt("codes[%s]", check.show(k)), "must be a status "
        .. "(success, warning, failure, unknown), got %s", check.show(v))
    end
  end
  return codes, nil
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
local handlers = {}

local function exec_prepare(ctx, spec)
  check.table(ctx, spec, "spec")
  check.known_keys(ctx, spec, EXEC_KEYS)
  if spec.command == nil then check.fail(ctx, "command", "is required") end
  local argv = check.strings(ctx, spec.command, "command", true)
  local env = check.env(ctx, spec.env, "env")
  local codes, timeout_status = exec_codes(ctx, spec.codes)
  local opts = {
    argv = {},
    env = {},
    cwd = check.string(ctx, spec.cwd, "cwd"),
    timeout = check.seconds(ctx, spec.timeout, "timeout", 1),
    max_output = check.count(ctx, spec.max_output, "max_output", 10240),
    codes = codes,
    timeout_status = timeout_status,
    nagios = spec.codes == "nagios",
  }
  for i, a in ipairs(argv) do opts.argv[i] = core.expand(a, env) end
  local names = {}
  for k in pairs(env) do names[#names + 1] = k end
  if env.PATH == nil and os.getenv("PATH") then
    names[#names + 1] = "PATH"
  end
  table.sort(names)
  for i, k in ipairs(names) do
    opts.env[i] = k .. "=" .. (env[k] or os.getenv(k))
  end
  return opts
end

-- nagios mode: the result also carries the plugin output parsed
-- (summary, long_output, perfdata: see sonde.nagios).
local function exec_start(opts, cb)
  if not opts.nagios then return core.exec(opts, cb) end
  return core.exec(opts, function(r)
    cb(require("sonde.nagios").annotate(r))
  end)
end

handlers.exec = { prepare = exec_prepare, start = exec_start }

function sonde.exec(spec, callback)
  local opts = exec_prepare({ where = "sonde.exec" }, spec)
  return dispatch("sonde.exec", function(cb) return exec_start(opts, cb) end,
    callback)
end

local HTTP_KEYS = { url = true, scheme = true, host = true, port = true,
                    path = true, ports = true, headers = true, method = true,
                    body = true, timeout = true, max_body = true, tls = true }

-- kubelet httpHeaders: an array of {name=, value=} in order, or a map
-- name -> string | array of strings (names sorted for a stable order).
local function http_headers(ctx, h)
  if h == nil then return {} end
  check.table(ctx, h, "headers")
  local out = {}
  local function add(field, name, value)
    if type(name) ~= "string" then
      check.fail(ctx, field .. ".name", "must be a string, got %s", type(name))
    end
    local canon = core.header_name(name)
    if not canon then
      check.fail(ctx, field .. ".name", "invalid header name %s (letters, "
        .. "digits and '-' only)", check.show(name))
    end
    check.string(ctx, value, field .. ".value")
    out[#out + 1] = { name = canon, value = value }
  end
  if next(h) == nil or math.type(next(h)) == "integer" or #h > 0 then
    check.array(ctx, h, "headers")
    for i, e in ipairs(h) do
      local f = fmt("headers[%d]", i)
      check.table(ctx, e, f)
      check.known_keys(ctx, e, { name = true, value = true }, f)
      add(f, e.name, e.value)
    end
  else
    local names = {}
    for k in pairs(h) do
      if type(k) ~= "string" then
        check.fail(ctx, "headers", "keys must be header names, got %s",
          check.show(k))
      end
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
      local v = h[k]
      local f = "headers." .. k
      if type(v) == "table" then
        check.strings(ctx, v, f)
        for _, one in ipairs(v) do add(f, k, one) end
      else
        add(f, k, v)
      end
    end
  end
  return out
end

local function http_url(ctx, spec)
  if spec.url ~= nil then
    for _, k in ipairs { "scheme", "host", "port", "path", "ports" } do
      if spec[k] ~= nil then
        check.fail(ctx, k, "cannot be combined with url")
      end
    end
    local url = check.string(ctx, spec.url, "url")
    if #url > 8192 then
      check.fail(ctx, "url", "is longer than 8192 bytes")
    end
    local scheme, rest = url:match("^(%a[%w+.-]*)://(.+)$")
    if not scheme or not rest:match("^[^/?#]") then
      check.fail(ctx, "url", "must be an absolute http:// or https:// URL, "
        .. "got %s", check.show(url))
    end
    if scheme:lower() ~= "http" and scheme:lower() ~= "https" then
      check.fail(ctx, "url", "scheme must be http or https, got %s",
        check.show(scheme))
    end
    if url:find("[%z\1-\32\127]") then
      check.fail(ctx, "url", "must not contain spaces or control characters")
    end
    local host, port = core.parse_url(url)
    if not host then
      check.fail(ctx, "url", "%s: %s", port, check.show(url))
    end
    if port and (port < 1 or port > 65535) then
      check.fail(ctx, "url", "port must be 1..65535, got %d", port)
    end
    return url
  end
  local scheme = check.string(ctx, spec.scheme, "scheme", "http"):lower()
  if scheme ~= "http" and scheme ~= "https" then
    check.fail(ctx, "scheme", "must be HTTP or HTTPS, got %s",
      check.show(spec.scheme))
  end
  local host = check.host(ctx, spec.host, "host", "127.0.0.1")
  local ports = check.ports(ctx, spec.ports, "ports")
  local port = check.port(ctx, spec.port, ports, "port")
  local path = check.string(ctx, spec.path, "path", "/")
  return core.format_url(scheme, host, port, path)
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
--     `host`).  A value containing CR or LF fails the probe (reason
--     config) before anything is sent;
--   * `method` (default "GET"), `body` (string);
--   * `timeout`: seconds, > 0, default 1: one deadline for resolution,
--     connect, TLS, every redirect hop, headers and body;
--   * `max_body`: bytes of body read, default 10240 (kubelet); reaching it
--     is not an error;
--   * `tls = { verify = false, ca_file = nil }`: certificates are not
--     verified unless verify is true (kubelet).
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
-- `remote_addr`, `truncated`.
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
local function http_prepare(ctx, spec)
  check.table(ctx, spec, "spec")
  check.known_keys(ctx, spec, HTTP_KEYS)
  local tls = spec.tls
  if tls ~= nil then
    check.table(ctx, tls, "tls")
    check.known_keys(ctx, tls, { verify = true, ca_file = true }, "tls")
  end
  local method = check.string(ctx, spec.method, "method", "GET")
  if not method:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    check.fail(ctx, "method", "not an HTTP method: %s", check.show(method))
  end
  local opts = {
    url = http_url(ctx, spec),
    method = method:upper(),
    body = check.string(ctx, spec.body, "body", nil, true),
    headers = http_headers(ctx, spec.headers),
    timeout = check.seconds(ctx, spec.timeout, "timeout", 1),
    max_body = check.count(ctx, spec.max_body, "max_body", 10240),
    tls_verify = tls and check.boolean(ctx, tls.verify, "tls.verify", false),
    ca_file = tls and check.string(ctx, tls.ca_file, "tls.ca_file"),
  }
  return opts
end

handlers.http_get = { prepare = http_prepare, start = core.http }

function sonde.http_get(spec, callback)
  local opts = http_prepare({ where = "sonde.http_get" }, spec)
  return dispatch("sonde.http_get", function(cb) return core.http(opts, cb) end,
    callback)
end

local TCP_KEYS = { host = true, port = true, ports = true, timeout = true }

--- Open a TCP connection and close it (kubelet tcpSocket probe).
--
-- spec fields: `host` (default "127.0.0.1"; IPv6 bare), `port` (1..65535
-- or a name in `ports`), `ports`, `timeout` (seconds, > 0, default 1).
-- Connected: success (output ""); refused: failure connect_refused; no
-- connection by the deadline: failure connect_timeout; name not resolved:
-- failure dns; other errors: failure network.  Result adds `remote_addr`.
-- @tparam table spec
-- @tparam[opt] function callback
-- @return the result (in a task) or the operation id (with a callback)
local function tcp_prepare(ctx, spec)
  check.table(ctx, spec, "spec")
  check.known_keys(ctx, spec, TCP_KEYS)
  local ports = check.ports(ctx, spec.ports, "ports")
  local opts = {
    host = check.host(ctx, spec.host, "host", "127.0.0.1"),
    port = check.port(ctx, spec.port, ports, "port"),
    timeout = check.seconds(ctx, spec.timeout, "timeout", 1),
  }
  return opts
end

handlers.tcp_socket = { prepare = tcp_prepare, start = core.tcp }

function sonde.tcp_socket(spec, callback)
  local opts = tcp_prepare({ where = "sonde.tcp_socket" }, spec)
  return dispatch("sonde.tcp_socket", function(cb) return core.tcp(opts, cb) end,
    callback)
end

--- Declare a probe: see lua/sonde/probe.lua for the fields and the
-- kubelet semantics.  Returns the probe object.
-- @raise `probe "NAME": FIELD: reason` on a bad spec
function sonde.probe(spec)
  return require("sonde.engine").probe(spec)
end

--- Stop every declared probe (in-flight runs cancelled) and service
-- (SIGTERM, SIGKILL after its grace); `done()` is called once every
-- service has exited.  A stopped configuration is not started again.
function sonde.stop(done)
  if done ~= nil and type(done) ~= "function" then
    error("sonde.stop: done must be a function", 2)
  end
  local engine = package.loaded["sonde.engine"]
  if not engine then if done then done() end return end
  engine.stop(engine.current, done)
end

--- Declare a supervised service: see lua/sonde/service.lua.
-- Returns the service object (for `service =` in probes and
-- `sonde.action.restart`).
-- @raise `service "NAME": FIELD: reason` on a bad spec
function sonde.service(spec)
  return require("sonde.engine").service(spec)
end

setmetatable(sonde, { __index = function(t, k)
  -- loaded on first use: sonde.action, .log, .k8s, .metrics, .nagios
  if k == "action" or k == "log" or k == "k8s" or k == "metrics"
      or k == "nagios" then
    local m = require("sonde." .. k)
    rawset(t, k, m)
    return m
  end
end })

-- For the engine (lua/sonde/probe.lua): each handler's `prepare(ctx,
-- spec) -> opts` (validation, raises) and `start(opts, cb) -> id`.
sonde._handlers = handlers
sonde._bounded_task = bounded_task
sonde._waiting = waiting

return sonde
