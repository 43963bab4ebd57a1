--- Expectations without writing Lua: what an HTTP response or a TCP
-- conversation must show for the probe to succeed (blackbox_exporter's
-- valid_status_codes, fail_if_* and query_response; Gatus' conditions).
--
--   http_get = { port = 8080, path = "/health", expect = {
--     status = { 200, 401 } | "2xx" | 200,   -- codes and classes accepted
--     max_duration = 0.5,                     -- seconds
--     headers = { ["content-type"] = "^application/json" },
--     body = "Lua pattern", body_not = "Lua pattern",
--     json = { ["$.status"] = "ok", ["$.checks[0].healthy"] = true },
--   } }
--   tcp_socket = { port = 6379, send = "PING\r\n", expect = "^%+PONG" }
--   tcp_socket = { port = 25, expect = {
--     { expect = "^220" }, { send = "EHLO sonde\r\n" }, { expect = "^250 " },
--   } }
--
-- Order (the first unmet expectation decides; the result is then a
-- failure, reason `expect`, its output naming the expectation and what
-- was seen): status, max_duration, headers, body, body_not (all judged in
-- C on the loop, src/expect.c), then json (in Lua, with lua-cjson's
-- `cjson.safe`).  `status` replaces the kubelet's classification (a 401
-- listed is a success); without it the kubelet's holds and a failure
-- there (reason http_status) is final.  Expectations are judged only on a
-- response: a transport failure or a timeout stays what it is.
--
-- Patterns are Lua patterns (string.find's, matched by the core's C copy
-- of Lua's matcher: src/pattern.c), checked when declared.  Body and json
-- expectations see the body as read, at most `max_body` bytes (10240):
-- a longer document is cut there (a JSON document then does not parse).
--
-- JSON paths: `$` then any of `.name` (an object's member; a name is one
-- or more bytes other than `.`, `[`, `]`) and `[N]` (an array's element,
-- 0-based).  The value found must equal the one given, with its JSON type:
-- a Lua string equals a JSON string of the same bytes, a number a JSON
-- number of the same value (1 equals 1.0), a boolean the same boolean.
-- Nothing else matches (not "1" and 1, not null; objects and arrays are
-- never equal to a value given).
-- @module sonde.expect
local core = require "sonde.core"
local validate = require "sonde.validate"

local M = {}

local fmt = string.format
local fail, show = validate.fail, validate.show
local quote = core.quote

--- The most bytes one `send` may hold.
M.MAX_SEND = 65536

--- A Lua pattern (NULs allowed), refused when Lua would raise on it.
function M.pattern(ctx, v, field)
  validate.checks.string(ctx, v, field, { allow_nul = true })
  local err = core.pattern_check(v)
  if err then
    fail(ctx, field, "not a valid Lua pattern %s: %s", show(v), err)
  end
  return v
end
local pattern = M.pattern

---------------------------------------------------------------------------
-- HTTP
---------------------------------------------------------------------------

local STATUS_MSG = "must be a status code 100..599 or a class \"1xx\".."
  .. "\"5xx\", got %s"

local function status_item(ctx, v, field)
  if type(v) == "number" and v == math.floor(v) then
    if v < 100 or v > 599 then fail(ctx, field, STATUS_MSG, show(v)) end
    v = math.tointeger(v)
    return { v, v }
  elseif type(v) == "string" then
    local d = v:match("^([1-5])[xX][xX]$")
    if d then return { tonumber(d) * 100, tonumber(d) * 100 + 99 } end
  end
  fail(ctx, field, STATUS_MSG, show(v))
end

local function status(ctx, v, field)
  if type(v) ~= "table" then return { status_item(ctx, v, field) } end
  validate.checks.array(ctx, v, field)
  if #v == 0 then fail(ctx, field, "must not be empty") end
  local out = {}
  for i, x in ipairs(v) do
    out[i] = status_item(ctx, x, fmt("%s[%d]", field, i))
  end
  return out
end

-- Sorted string keys of a map (a stable order to judge in), or a failure.
local function sorted_keys(ctx, t, field, what)
  validate.checks.table(ctx, t, field)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      fail(ctx, field, "keys must be %s, got %s", what, show(k))
    end
    keys[#keys + 1] = k
  end
  if #keys == 0 then fail(ctx, field, "must not be empty") end
  table.sort(keys)
  return keys
end

local function headers(ctx, v, field)
  local out = {}
  for i, name in ipairs(sorted_keys(ctx, v, field, "header names")) do
    local f = fmt("%s[%s]", field, show(name))
    if not core.header_name(name) then
      fail(ctx, f, "not a header name (letters, digits and '-' only)")
    end
    out[i] = { name = name, pattern = pattern(ctx, v[name], f) }
  end
  return out
end

-- "$.a.b[0]" -> { "a", "b", 1 } (integers: array positions, 1-based)
local function json_path(ctx, path, field)
  if path:sub(1, 1) ~= "$" then
    fail(ctx, field, "a path starts with \"$\", got %s", show(path))
  end
  local steps, i = {}, 2
  while i <= #path do
    local name, j = path:match("^%.([^%.%[%]]+)()", i)
    if name then
      steps[#steps + 1] = name
    else
      local n
      n, j = path:match("^%[(%d+)%]()", i)
      if not n then
        fail(ctx, field, "bad path %s at byte %d: expected .name or [index]",
          show(path), i)
      end
      local k = math.tointeger(tonumber(n))
      if not k or k >= 2^31 then
        fail(ctx, field, "bad path %s at byte %d: index %s is too large",
          show(path), i, n)
      end
      steps[#steps + 1] = k + 1
    end
    i = j
  end
  return steps
end

local cjson        -- cjson.safe, loaded when a json expectation is declared

local function json(ctx, v, field)
  if not cjson then
    local ok, mod = pcall(require, "cjson.safe")
    if not ok then
      fail(ctx, field, "needs the Lua module cjson.safe (Debian: lua-cjson): "
        .. "%s", tostring(mod):match("^[^\n]*"))
    end
    cjson = mod
  end
  local out = {}
  for i, path in ipairs(sorted_keys(ctx, v, field, "JSON paths (\"$.a\")")) do
    local f = fmt("%s[%s]", field, show(path))
    local want = v[path]
    local t = type(want)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      fail(ctx, f, "must be a string, number or boolean, got %s", t)
    end
    if t == "number" and (want ~= want or want == math.huge
        or want == -math.huge) then
      fail(ctx, f, "must be a finite number, got %s", show(want))
    end
    out[i] = { path = path, steps = json_path(ctx, path, f), want = want }
  end
  return out
end

M.http_schema = validate.schema {
  { "status", status },
  { "max_duration", "seconds" },
  { "headers", headers },
  { "body", pattern },
  { "body_not", pattern },
  { "json", json },
}

--- Check an http_get `expect` table: returns the core's part (nil when
-- there is none: judged in C) and the json list (nil without: judged in
-- Lua by `judge_json`).
-- @raise naming the field
function M.http(ctx, v, field, method)
  local s = M.http_schema:apply(ctx, v, field)
  if method == "HEAD" and (s.body or s.body_not or s.json) then
    fail(ctx, field, "a HEAD request has no body: body, body_not and json "
      .. "cannot be expected")
  end
  local c
  if s.status or s.max_duration or s.headers or s.body or s.body_not then
    c = { status = s.status, max_duration = s.max_duration,
          headers = s.headers, body = s.body, body_not = s.body_not }
  end
  return c, s.json
end

-- A JSON value as a message shows it.
local function shown(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 2^63 then
      return fmt("%d", math.tointeger(v))
    end
    return fmt("%.14g", v)
  end
  if t == "boolean" then return tostring(v) end
  if v == cjson.null then return "null" end
  if t == "table" then
    if next(v) == nil then return "an empty object or array" end
    return #v > 0 and "an array" or "an object"
  end
  return t
end

local function failed(r, msg)
  r.status, r.reason, r.output = "failure", "expect", msg
  return r
end

--- Judge the json expectations (from `http`) on a result table: only a
-- response that the core's judging left a success or a warning.  Changes
-- and returns r.
function M.judge_json(list, r)
  if not r.http_status or (r.status ~= "success" and r.status ~= "warning")
  then
    return r
  end
  local doc, err = cjson.decode(r.body or "")
  if doc == nil then
    return failed(r, fmt("expect.json: body is not JSON (%s)%s", tostring(err),
      r.truncated and fmt(" (body cut at max_body: %d bytes read)", #r.body)
        or ""))
  end
  for _, e in ipairs(list) do
    local v = doc
    for _, k in ipairs(e.steps) do
      if type(v) ~= "table" then v = nil; break end
      v = v[k]
      if v == nil then break end
    end
    local key = fmt("expect.json[%s]", quote(e.path, 200))
    if v == nil then return failed(r, key .. ": not found") end
    if type(v) ~= type(e.want) or v ~= e.want then
      return failed(r, fmt("%s: got %s, want %s", key, shown(v),
        shown(e.want)))
    end
  end
  return r
end

---------------------------------------------------------------------------
-- TCP
---------------------------------------------------------------------------

local function send_bytes(ctx, v, field)
  validate.checks.string(ctx, v, field, { allow_nul = true })
  if #v > M.MAX_SEND then
    fail(ctx, field, "must be at most %d bytes, got %d", M.MAX_SEND, #v)
  end
  return v
end

local function starttls(ctx, v, field)
  return validate.checks.boolean(ctx, v, field)
end

local STEP = validate.schema {
  { "expect", pattern },
  { "send", send_bytes },
  { "starttls", starttls },
}

--- The steps of a tcp_socket spec's `send` and `expect` (nil when it has
-- neither), for the core: `{ kind =, data =, name = }`.  `expect` is a
-- pattern (after `send`, when both are given) or a list of steps, each
-- `{ expect = pattern, send = bytes, starttls = true }` (one or more:
-- expect first, then send, then the TLS handshake (once, with the options
-- of tcp_socket.tls, which then does not start TLS at once), as in
-- blackbox_exporter's query_response).
-- @raise naming the field
function M.tcp(ctx, spec)
  local send, expect = spec.send, spec.expect
  if send == nil and expect == nil then return nil end
  local steps = {}
  if type(expect) == "table" then
    if send ~= nil then
      fail(ctx, "send", "cannot be combined with a list of steps in expect "
        .. "(put it in the list: { send = ... })")
    end
    validate.checks.array(ctx, expect, "expect")
    if #expect == 0 then fail(ctx, "expect", "must not be empty") end
    local starttls_seen = false
    for i, e in ipairs(expect) do
      local f = fmt("expect[%d]", i)
      local s = STEP:apply(ctx, e, f)
      if s.expect == nil and s.send == nil and not s.starttls then
        fail(ctx, f, "needs expect, send or starttls")
      end
      if s.expect then
        steps[#steps + 1] = { kind = "expect", data = s.expect,
          name = f .. ".expect" }
      end
      if s.send then
        steps[#steps + 1] = { kind = "send", data = s.send,
          name = f .. ".send" }
      end
      if s.starttls then
        -- (blackbox_exporter's query_response: expect, send, then the
        -- TLS upgrade, with tcp_socket.tls's options)
        if starttls_seen then
          fail(ctx, f .. ".starttls", "only one starttls step")
        end
        starttls_seen = true
        steps[#steps + 1] = { kind = "starttls", data = "",
          name = f .. ".starttls" }
      end
    end
    return steps
  end
  if send ~= nil then
    steps[1] = { kind = "send", data = send_bytes(ctx, send, "send"),
      name = "send" }
  end
  if expect ~= nil then
    if type(expect) ~= "string" then
      fail(ctx, "expect", "must be a Lua pattern or a list of steps, got %s",
        type(expect))
    end
    steps[#steps + 1] = { kind = "expect", data = pattern(ctx, expect,
      "expect"), name = "expect" }
  end
  return steps
end

return M
