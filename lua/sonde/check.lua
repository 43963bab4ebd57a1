--- Validation of probe specs: every error names the field and the reason.
-- Internal module of sonde; errors are raised as strings of the form
-- `"<where>: <field>: <reason>"`, e.g. `sonde.http_get: port: must be
-- 1..65535, got 0`.
-- @module sonde.check
local M = {}

local fmt = string.format
local mtype = math.type

--- Raise a spec error for `field` at the user's call site.
-- @tparam table ctx `{ where = "sonde.exec", prefix = "exec." }`: `where`
-- names the call or the probe, `prefix` is put before field paths (a
-- handler inside a probe).  The error is raised at the user's call site
-- (see user_level).
function M.fail(ctx, field, reason, ...)
  local msg
  if field then
    msg = fmt("%s: %s%s: %s", ctx.where, ctx.prefix or "", field,
      fmt(reason, ...))
  elseif ctx.prefix then
    msg = fmt("%s: %s: %s", ctx.where, ctx.prefix:sub(1, -2), fmt(reason, ...))
  else
    msg = fmt("%s: %s", ctx.where, fmt(reason, ...))
  end
  error(msg, M.user_level())
end

--- The stack level (as error() counts it from its caller) of the first
-- function outside sonde's own Lua files: the user's call site.
function M.user_level()
  local level = 2
  while true do
    local info = debug.getinfo(level + 1, "S")
    if not info then return 1 end
    if info.what ~= "C" and not info.source:find("sonde/[%w_]+%.lua$") then
      return level
    end
    level = level + 1
  end
end

local function show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end
M.show = show

--- Reject keys of `t` not in `allowed` (a set).
function M.known_keys(ctx, t, allowed, prefix)
  for k in pairs(t) do
    if not allowed[k] then
      M.fail(ctx, nil, "unknown field %s", prefix and (prefix .. "." .. tostring(k))
        or show(k))
    end
  end
end

function M.table(ctx, v, field)
  if type(v) ~= "table" then
    M.fail(ctx, field, "must be a table, got %s", type(v))
  end
  return v
end

--- A string; NUL bytes are refused unless `allow_nul` (they would cut
-- the value short in C).
function M.string(ctx, v, field, default, allow_nul)
  if v == nil then return default end
  if type(v) ~= "string" then
    M.fail(ctx, field, "must be a string, got %s", type(v))
  end
  if not allow_nul and v:find("\0", 1, true) then
    M.fail(ctx, field, "must not contain a NUL byte")
  end
  return v
end

--- Check that `t` is an array: keys exactly 1..n, no holes (a `nil` in a
-- table constructor leaves one).
function M.array(ctx, t, field)
  M.table(ctx, t, field)
  local count, max = 0, 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then
      M.fail(ctx, field, "must be an array (bad key %s)", show(k))
    end
    count = count + 1
    if k > max then max = k end
  end
  if max ~= count then
    M.fail(ctx, field, "must be an array without holes (element %d is nil)",
      (function() for i = 1, max do if t[i] == nil then return i end end end)())
  end
  return t
end

M.MAX_SECONDS = 1e9   -- about 31 years (SONDE_MAX_SECONDS)

--- A number in seconds (fractional allowed), > 0 unless `allow_zero`, at
-- most 1e9.
function M.seconds(ctx, v, field, default, allow_zero)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v == math.huge then
    M.fail(ctx, field, "must be a number of seconds, got %s", show(v))
  end
  if v > M.MAX_SECONDS then
    M.fail(ctx, field, "must be at most %g seconds, got %s", M.MAX_SECONDS,
      show(v))
  end
  if v < 0 or (v == 0 and not allow_zero) then
    M.fail(ctx, field, "must be %s, got %s", allow_zero and ">= 0" or "> 0",
      show(v))
  end
  return v
end

--- A non-negative integer (bytes, counts).
function M.count(ctx, v, field, default)
  if v == nil then return default end
  if mtype(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)
      and v < 2^53) then
    M.fail(ctx, field, "must be a whole number, got %s", show(v))
  end
  if v < 0 then M.fail(ctx, field, "must be >= 0, got %s", show(v)) end
  return math.tointeger(v)
end

function M.boolean(ctx, v, field, default)
  if v == nil then return default end
  if type(v) ~= "boolean" then
    M.fail(ctx, field, "must be a boolean, got %s", type(v))
  end
  return v
end

--- An array (1..n, no holes, nothing else) of strings without NUL bytes.
function M.strings(ctx, v, field, nonempty)
  M.array(ctx, v, field)
  local n = #v
  if nonempty and n == 0 then M.fail(ctx, field, "must not be empty") end
  for i = 1, n do
    if type(v[i]) ~= "string" then
      M.fail(ctx, fmt("%s[%d]", field, i), "must be a string, got %s",
        type(v[i]))
    end
    if v[i]:find("\0", 1, true) then
      M.fail(ctx, fmt("%s[%d]", field, i), "must not contain a NUL byte")
    end
  end
  return v
end

--- An environment table: names (no "=", no NUL, not empty) to strings.
function M.env(ctx, v, field)
  if v == nil then return {} end
  M.table(ctx, v, field)
  for k, val in pairs(v) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then
      M.fail(ctx, field, "invalid variable name %s", show(k))
    end
    if type(val) ~= "string" then
      M.fail(ctx, field .. "." .. k, "must be a string, got %s", type(val))
    end
    if val:find("\0", 1, true) then
      M.fail(ctx, field .. "." .. k, "must not contain a NUL byte")
    end
  end
  return v
end

--- kubelet container ports: array of `{ name = "http", port = 8080 }`.
function M.ports(ctx, v, field)
  if v == nil then return nil end
  M.array(ctx, v, field)
  for i, p in ipairs(v) do
    local f = fmt("%s[%d]", field, i)
    M.table(ctx, p, f)
    M.known_keys(ctx, p, { name = true, port = true }, f)
    M.string(ctx, p.name, f .. ".name")
    M.port_number(ctx, p.port, f .. ".port")
  end
  return v
end

function M.port_number(ctx, v, field)
  if mtype(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
    M.fail(ctx, field, "must be a port number 1..65535, got %s", show(v))
  end
  if v < 1 or v > 65535 then
    M.fail(ctx, field, "must be 1..65535, got %s", show(v))
  end
  return math.tointeger(v)
end

--- kubelet ResolveContainerPort: a number 1..65535, or a name looked up in
-- `ports` (first match wins).
function M.port(ctx, v, ports, field)
  if v == nil then M.fail(ctx, field, "is required") end
  if type(v) == "string" then
    for _, p in ipairs(ports or {}) do
      if p.name == v then return math.tointeger(p.port) end
    end
    M.fail(ctx, field, "port %s not found in ports", show(v))
  end
  return M.port_number(ctx, v, field)
end

--- A host name or IP literal; IPv6 is given bare ("::1"), not in brackets
-- (an IPv6 zone is allowed: "fe80::1%eth0").
function M.host(ctx, v, field, default)
  v = M.string(ctx, v, field, default)
  if v == "" then return default end
  if v:find("[%[%]]") then
    M.fail(ctx, field, "IPv6 addresses are given without brackets, got %s",
      show(v))
  end
  local colons = select(2, v:gsub(":", ""))
  if colons == 1 then
    M.fail(ctx, field, "must not include a port (use port), got %s", show(v))
  end
  if #v > 253 or not v:find("^[%w%.%-_:%%]+$") or
      (colons > 1 and not v:find("^[%x:%.]+%%?[%w%.%-_]*$")) then
    M.fail(ctx, field, "not a host name or IP address: %s", show(v))
  end
  return v
end

return M
