--- Event log: one line per event on stderr, as text or JSON.
--
-- Every line carries `time` (UTC, ISO 8601 with milliseconds), `level`
-- (`debug`, `info`, `warn`, `error`) and `event` (a name below), then the
-- event's fields.  Lines below the level set with `set_level` (the host's
-- `--log-level`, default `info`) are not written.  What each level holds:
--
--   * `debug`: every probe run (`probe_result` of a success);
--   * `info`: state changes, service lifecycle and output, actions that
--     ran, reloads, the host's start and stop;
--   * `warn`: runs that are not a success (`probe_result` with status
--     warning, failure or unknown), skipped runs, suppressed or failed
--     actions, unexpected service exits;
--   * `error`: hook and task errors, failed reloads.
--
-- Events and their fields:
--
--   * `probe_result` (debug for a success, warn otherwise): probe, kind,
--     status, reason, duration, output,
--     state (the probe's state before this result), streak (the run of
--     equal results toward a threshold, e.g. "failure 2/3"), and
--     exit_code / signal / http_status / grpc_status / serving_status
--     where the handler has them;
--   * `state_change`: probe, kind, from, to, reason (the result's reason,
--     or `new_instance` when a service restart resets the probe);
--   * `probe_skipped`: probe, why (`overrun`: the previous run was still
--     going at the next tick);
--   * `hook_error`: probe, hook (`on_result`, `on_change`, `check` for a
--     custom check that raised or ran past `check_cpu`), error (with
--     traceback); at warn while a hook or check is quarantined;
--   * `action`: probe, action, status (`started`, `done`, `failed`,
--     `suppressed`), detail;
--   * `service_start`: service, pid, instance, command (as written, with
--     `$(VAR)` unexpanded);
--   * `service_exit`: service, pid, exit_code or signal, uptime;
--   * `service_restart`: service, delay, restarts, why (`exit`,
--     `liveness`, `startup`, `action`);
--   * `service_stop`: service;
--   * `service_output` (unless the service has `output = "discard"`):
--     service, stream (`stdout`/`stderr`), line (at most
--     4096 bytes; a longer line comes in pieces, all but the last with
--     `partial` true); rate-limited per service: at most 1000 lines per
--     10 s window (sonde.service OUTPUT_BURST, OUTPUT_WINDOW);
--   * `service_output_dropped` (warn): service, dropped (lines over the
--     limit), window (seconds); when the window ends and at the exit;
--   * `reload`: status (`ok`, `failed`), error;
--   * `message`: text (sonde.log.info/warn/error from scripts);
--   * `host_start`: script, services, probes; `host_stop`: script, signal
--     (the number, or `script` when the script stopped its own load);
--   * `listen`: host, port (the endpoint of --listen);
--   * `http_error`: path, error (an endpoint handler failed: 500);
--   * `http_accept` (warn): text (the endpoint's accept() failed, e.g. out
--     of descriptors: it stops accepting for a while, 50 ms doubling to 1 s;
--     logged at the first failure, then every 10 s with the count);
--   * `libevent`: text (libevent's own messages, at their level);
--   * `log_dropped` (warn): dropped (messages from C beyond 10 a second,
--     src/logq.h; a later such message carries `dropped` too);
--   * `pod_ignored`: pod, container, fields (of a manifest's container,
--     the fields only a container runtime uses: image, resources...;
--     without container: the pod's own, nodeSelector, tolerations...);
--   * `pod_unsupported` (warn): pod, container (absent for the pod's own
--     fields), field (e.g. `env[2].valueFrom`, `volumeMounts`,
--     `lifecycle.preStop`, `volumes`), detail (what sonde does instead);
--     once per load;
--   * `pod_phase`: pod, phase (`Pending` at the start, with init,
--     sidecars, containers, restart_policy; `Running` once the app
--     containers start; `Succeeded`; `Failed`, at error, with reason
--     `init_failed` or `container_failed`, container, exit_code or
--     signal, detail);
--   * `pod_stop`: pod (its containers stop: apps first, then sidecars);
--   * `late_declaration`: probe or service, detail (declared by a script
--     that had declared nothing before it first waited);
--   * `otlp`: url, status (`started` with interval; `failed`, warn, the
--     first failed push of a run, with http_status or error and retry_in;
--     `rejected`, error, a non-retryable answer, with http_status and
--     detail; `dropped`, warn, the buffer full; `resumed`, info, with
--     failed and dropped meanwhile): the OTLP push (sonde.otlp);
--   * `task_error`: error (a task or callback of the script raised, or a
--     `<close>` handler failed while its task was closed; the host logs it
--     and goes on).
--
-- Bytes that are not valid UTF-8 and control characters are escaped
-- (`\xFF`, `\n` in text; `\u00XX` for controls in JSON, and `\\xFF` text
-- for invalid bytes), never dropped, so output with NUL bytes or binary
-- junk is shown whole.
--
-- Secrets: a URL's password in any string field is masked as Go's
-- `url.URL.Redacted` prints it (`https://user:xxxxx@host/`, sonde.redact),
-- whoever wrote the field.
-- @module sonde.log
local core = require "sonde.core"
local json = require "sonde.json"
local redact = require "sonde.redact"

local M = {}

local fmt = string.format
local format = "text"      -- or "json"
local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local min_level = LEVELS.info
local sink = io.stderr
local level_listeners = {}

--- Call `f()` after each set_level (the probes' workers skip Lua for the
-- results that would not be logged).
function M.on_level(f)
  level_listeners[#level_listeners + 1] = f
end

--- Choose the line format: `"text"` (default) or `"json"`.
-- @raise on another value
function M.set_format(f)
  if f ~= "text" and f ~= "json" then
    error(fmt("sonde.log.set_format: text or json expected, got %s",
      tostring(f)), 2)
  end
  format = f
end

--- The line format in use, `"text"` or `"json"`.
function M.get_format() return format end

--- Lowest level written: `"debug"`, `"info"` (default), `"warn"` or
-- `"error"` (the host's `--log-level`).  At info a successful probe run is
-- not logged; at debug every run is.
-- @raise on another value
function M.set_level(l)
  if not LEVELS[l] then
    error(fmt("sonde.log.set_level: debug, info, warn or error expected, "
      .. "got %s", tostring(l)), 2)
  end
  min_level = LEVELS[l]
  for _, f in ipairs(level_listeners) do f() end
end

--- The lowest level written.
function M.get_level()
  for name, n in pairs(LEVELS) do if n == min_level then return name end end
end

--- True when events of `level` are written (to skip building them).
function M.enabled(level)
  return (LEVELS[level] or 2) >= min_level
end

--- Write lines to `file` (an open io file, or any object with `write` and
-- `flush`) instead of stderr; `nil` restores stderr.
function M.set_sink(file) sink = file or io.stderr end

--- Escape a byte string for a text log line: printable UTF-8 kept,
-- `\n \r \t \\ \"` and other controls and invalid bytes as `\xFF`.
M.escape_text = json.escaper("\\x%02X", "\\x%02X")

local function now_iso()
  local w = core.wall_time()
  local t = math.floor(w)
  return os.date("!%Y-%m-%dT%H:%M:%S", t) .. fmt(".%03dZ", math.floor((w - t) * 1000))
end

-- Order of the leading fields in text lines; the rest follow sorted.
local FIRST = { "probe", "service", "kind", "status", "reason", "from", "to" }

--- Write one event.  `fields` values: strings, numbers, booleans.
-- @tparam string level "debug" | "info" | "warn" | "error"
-- @tparam string event the event name
-- @tparam table fields
function M.event(level, event, fields)
  if (LEVELS[level] or 2) < min_level then return end
  fields = fields or {}
  local line
  if format == "json" then
    local obj = { time = now_iso(), level = level, event = event }
    for k, v in pairs(fields) do obj[k] = redact.text(v) end
    line = json.encode(obj)
  else
    local parts = { now_iso(), level, event }
    local seen = {}
    local function add(k)
      local v = fields[k]
      if v == nil or seen[k] then return end
      seen[k] = true
      if type(v) == "number" then
        v = math.type(v) == "integer" and tostring(v) or fmt("%.6g", v)
      elseif type(v) == "string" then
        v = redact.text(v)
        v = v:find("^[%w%._/:%-]+$") and v or '"' .. M.escape_text(v) .. '"'
      else
        v = '"' .. M.escape_text(tostring(v)) .. '"'
      end
      parts[#parts + 1] = k .. "=" .. v
    end
    for _, k in ipairs(FIRST) do add(k) end
    local rest = {}
    for k in pairs(fields) do if not seen[k] then rest[#rest + 1] = k end end
    table.sort(rest)
    for _, k in ipairs(rest) do add(k) end
    line = table.concat(parts, " ")
  end
  sink:write(line, "\n")
  sink:flush()
end

-- Messages from C (libevent's own, the endpoint's listener), rate-limited
-- there and delivered from the loop.
core.on_log(function(level, event, text, dropped)
  M.event(level, event, { text = text ~= "" and text or nil,
    dropped = dropped > 0 and dropped or nil })
end)

--- Script messages: `sonde.log.info(fmt, ...)` (string.format style).
for _, level in ipairs { "debug", "info", "warn", "error" } do
  M[level] = function(f, ...)
    local ok, text = pcall(fmt, tostring(f), ...)
    M.event(level, "message", { text = ok and text or tostring(f) })
  end
end

return M
