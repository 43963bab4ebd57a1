--- Event log: one line per event on stderr, as text or JSON.
--
-- Every line carries `time` (UTC, ISO 8601 with milliseconds), `level`
-- (`debug`, `info`, `warn`, `error`) and `event` (a name below), then the
-- event's fields.
--
-- Events and their fields:
--
--   * `probe_result`: probe, kind, status, reason, duration, output,
--     state (the probe's state before this result), streak (the run of
--     equal results toward a threshold, e.g. "failure 2/3"), and
--     exit_code / signal / http_status where the handler has them;
--   * `state_change`: probe, kind, from, to, reason (the result's reason,
--     or `new_instance` when a service restart resets the probe);
--   * `probe_skipped`: probe, why (`overrun`: the previous run was still
--     going at the next tick);
--   * `hook_error`: probe, hook, error (with traceback);
--   * `action`: probe, action, status (`started`, `done`, `failed`,
--     `suppressed`), detail;
--   * `service_start`: service, pid, instance;
--   * `service_exit`: service, pid, exit_code or signal, uptime;
--   * `service_restart`: service, delay, restarts, why (`exit`,
--     `liveness`, `startup`);
--   * `service_stop`: service;
--   * `service_output`: service, stream (`stdout`/`stderr`), line (at most
--     4096 bytes; a longer line comes in pieces, all but the last with
--     `partial` true);
--   * `reload`: status (`ok`, `failed`), error;
--   * `message`: text (sonde.log.info/warn/error from scripts);
--   * `host_start`, `host_stop`: script;
--   * `listen`: host, port (the endpoint of --listen);
--   * `http_error`: path, error (an endpoint handler failed: 500);
--   * `late_declaration`: probe or service, detail (declared by a script
--     that had declared nothing before it first waited);
--   * `task_error`: error (a task or callback of the script raised; the
--     host logs it and goes on).
--
-- Bytes that are not valid UTF-8 and control characters are escaped
-- (`\xFF`, `\n` in text; `\u00XX` for controls in JSON, and `\\xFF` text
-- for invalid bytes), never dropped, so output with NUL bytes or binary
-- junk is shown whole.
-- @module sonde.log
local M = {}

local fmt = string.format
local format = "text"      -- or "json"
local min_level = 2        -- info
local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local sink = io.stderr

--- Choose the line format: `"text"` (default) or `"json"`.
-- @raise on another value
function M.set_format(f)
  if f ~= "text" and f ~= "json" then
    error(fmt("log format must be text or json, got %s", tostring(f)), 2)
  end
  format = f
end

function M.get_format() return format end

--- Lowest level written: "debug", "info" (default), "warn", "error".
function M.set_level(l)
  if not LEVELS[l] then error("unknown log level " .. tostring(l), 2) end
  min_level = LEVELS[l]
end

--- Write lines to `file` (an io file) instead of stderr.
function M.set_sink(file) sink = file end

-- Split s into valid UTF-8 sequences and single bad bytes; call
-- ok(chunk) for valid runs and bad(byte) for invalid bytes.
local function utf8_walk(s, ok, bad)
  local i, n = 1, #s
  while i <= n do
    local j = i
    -- longest valid prefix from i
    while j <= n do
      local c = s:byte(j)
      local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
        or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4
        or 0
      if len == 0 or j + len - 1 > n then break end
      if len > 1 and not utf8.len(s, j, j + len - 1) then break end
      j = j + len
    end
    if j > i then ok(s:sub(i, j - 1)) end
    if j <= n then bad(s:byte(j)); j = j + 1 end
    i = j
  end
end

local SHORT = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                ['"'] = '\\"', ["\\"] = "\\\\" }

-- An escaper: printable UTF-8 kept, the SHORT escapes, other control
-- bytes through `ctrl` (a format for the byte), invalid bytes through `bad`.
local function escaper(ctrl, bad)
  return function(s)
    local out = {}
    utf8_walk(s, function(chunk)
      out[#out + 1] = chunk:gsub('[%c"\\]', function(c)
        return SHORT[c] or fmt(ctrl, c:byte())
      end)
    end, function(b) out[#out + 1] = fmt(bad, b) end)
    return table.concat(out)
  end
end

--- Escape a byte string for a text log line: printable UTF-8 kept,
-- `\n \r \t \\ \"` and other controls and invalid bytes as `\xFF`.
M.escape_text = escaper("\\x%02X", "\\x%02X")

local json_body = escaper("\\u%04x", "\\\\x%02X")

--- Encode a byte string as a JSON string literal (with quotes).  Invalid
-- UTF-8 bytes become the text `\xFF` (escaped as `\\xFF`).
function M.json_string(s)
  return '"' .. json_body(s) .. '"'
end

--- Encode a Lua value as JSON (tables with 1..n keys as arrays, others as
-- objects with sorted keys; functions and other types as strings).
function M.json(v)
  local t = type(v)
  if t == "string" then return M.json_string(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return fmt("%.17g", v):gsub(",", ".")
  elseif t == "boolean" then return tostring(v)
  elseif t == "nil" then return "null"
  elseif t == "table" then
    local n = #v
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    if n > 0 and #keys == n then
      local parts = {}
      for i = 1, n do parts[i] = M.json(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do
      parts[#parts + 1] = M.json_string(tostring(k)) .. ":" .. M.json(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return M.json_string(tostring(v))
end

local core = require "sonde.core"

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
    for k, v in pairs(fields) do obj[k] = v end
    line = M.json(obj)
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

--- Script messages: `sonde.log.info(fmt, ...)` (string.format style).
for _, level in ipairs { "debug", "info", "warn", "error" } do
  M[level] = function(f, ...)
    local ok, text = pcall(fmt, tostring(f), ...)
    M.event(level, "message", { text = ok and text or tostring(f) })
  end
end

return M
