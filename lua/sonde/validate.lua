--- Validation of specs: declarative schemas and the checks they are made
-- of.  Every error names where (the call or the probe), the field path and
-- the reason, and is raised at the user's own file and line:
--
--   /etc/sonde/probes.lua:3: probe "x": http_get.port: must be 1..65535, got 70000
--
-- A schema lists its fields in order, each with its type and options:
--
--   local TCP = validate.schema {
--     { "host", "host", default = "127.0.0.1" },
--     { "port", "port", required = true },
--     { "timeout", "seconds", default = 1 },
--   }
--   local opts = TCP:apply({ where = "sonde.tcp_socket" }, spec)
--
-- A field's type is the name of a check below (`"string"`, `"seconds"`,
-- ...), another schema (a nested table, checked with the field path as
-- prefix), or a function `(ctx, value, field, rule) -> value`.  Options:
-- `required`, `default` (used when the field is nil), and whatever the
-- check reads (`allow_zero`, `min`, `nonempty`, `allow_nul`).  Fields not
-- in the schema are rejected.  `apply` returns a new table with the checked
-- (normalised) values.
--
-- Internal module of sonde; used by the probers, probes, services and
-- actions.
-- @module sonde.validate
local M = {}

local fmt = string.format
local mtype = math.type

-- Where sonde's own Lua files live ("@/path/lua/sonde/"): frames there are
-- not the user's.  Taken from this file's own chunk name.
local OWN = debug.getinfo(1, "S").source:match("^(@.*[/\\])[^/\\]+$") or "@"

--- True when a chunk name (`debug.getinfo().source`) is one of sonde's own
-- Lua files.
function M.is_own_source(source)
  return source:sub(1, #OWN) == OWN
end

--- The stack level (as `error` counts it from its caller) of the first
-- function outside sonde's own files and C: the user's call site; 0 (no
-- position) when sonde was not called from a user's file.
function M.user_level()
  local level = 2
  while true do
    local info = debug.getinfo(level + 1, "S")
    if not info then return 0 end            -- none: no position
    if info.what ~= "C" and not M.is_own_source(info.source) then
      return level
    end
    level = level + 1
  end
end

--- Raise an error for the user's call site: `msg` prefixed with the
-- user's file and line.
function M.raise(msg)
  error(msg, M.user_level())
end

--- Raise a spec error for `field`.
-- @tparam table ctx `{ where = "sonde.exec" | 'probe "x"', prefix = "exec." }`:
-- `where` names the call or the probe, `prefix` goes before field paths
-- @tparam string|nil field the field path (nil: the spec as a whole)
-- @tparam string reason a format for `string.format(reason, ...)`
function M.fail(ctx, field, reason, ...)
  local path = (ctx.prefix or "") .. (field or "")
  path = path:gsub("%.$", "")
  local msg
  if path ~= "" then
    msg = fmt("%s: %s: %s", ctx.where, path, fmt(reason, ...))
  else
    msg = fmt("%s: %s", ctx.where, fmt(reason, ...))
  end
  error(msg, M.user_level())
end

--- A value as it appears in messages (strings quoted).
function M.show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end
local show = M.show

---------------------------------------------------------------------------
-- Checks: (ctx, value, field, rule) -> value; value is never nil here
---------------------------------------------------------------------------

local checks = {}
M.checks = checks

-- A check that the value is of Lua type `name`.
local function of_type(name)
  return function(ctx, v, field)
    if type(v) ~= name then
      M.fail(ctx, field, "must be a %s, got %s", name, type(v))
    end
    return v
  end
end

checks.table = of_type("table")
checks["function"] = of_type("function")
checks.boolean = of_type("boolean")

--- A string; NUL bytes are refused unless `rule.allow_nul` (they would cut
-- the value short in C); `rule.nonempty` refuses "".
function checks.string(ctx, v, field, rule)
  if type(v) ~= "string" then
    M.fail(ctx, field, "must be a string, got %s", type(v))
  end
  if not (rule and rule.allow_nul) and v:find("\0", 1, true) then
    M.fail(ctx, field, "must not contain a NUL byte")
  end
  if rule and rule.nonempty and v == "" then
    M.fail(ctx, field, "must be a non-empty string")
  end
  return v
end

--- The longest time any timer or timeout takes: about 31 years
-- (SONDE_MAX_SECONDS in the C core).
M.MAX_SECONDS = 1e9

--- Seconds as a number (fractional allowed), > 0 unless `rule.allow_zero`,
-- at least `rule.min` when given, at most MAX_SECONDS.
function checks.seconds(ctx, v, field, rule)
  if type(v) ~= "number" or v ~= v or v == math.huge then
    M.fail(ctx, field, "must be a number of seconds, got %s", show(v))
  end
  if v > M.MAX_SECONDS then
    M.fail(ctx, field, "must be at most %g seconds, got %s", M.MAX_SECONDS,
      show(v))
  end
  local zero = rule and rule.allow_zero
  if v < 0 or (v == 0 and not zero) then
    M.fail(ctx, field, "must be %s, got %s", zero and ">= 0" or "> 0", show(v))
  end
  if rule and rule.min and v < rule.min then
    M.fail(ctx, field, "must be >= %g, got %s", rule.min, show(v))
  end
  return v
end

--- A whole number (bytes, counts), >= `rule.min` (default 0).
function checks.count(ctx, v, field, rule)
  if mtype(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)
      and math.abs(v) < 2^53) then
    M.fail(ctx, field, "must be a whole number, got %s", show(v))
  end
  local min = rule and rule.min or 0
  if v < min then M.fail(ctx, field, "must be >= %d, got %s", min, show(v)) end
  return math.tointeger(v)
end

--- An array: keys exactly 1..n, no holes (a `nil` in a table constructor
-- leaves one).
function checks.array(ctx, t, field)
  checks.table(ctx, t, field)
  local count, max = 0, 0
  for k in pairs(t) do
    if mtype(k) ~= "integer" or k < 1 then
      M.fail(ctx, field, "must be an array (bad key %s)", show(k))
    end
    count = count + 1
    if k > max then max = k end
  end
  if max ~= count then
    local hole = 1
    while t[hole] ~= nil do hole = hole + 1 end
    M.fail(ctx, field, "must be an array without holes (element %d is nil)",
      hole)
  end
  return t
end

--- An array of strings without NUL bytes; `rule.nonempty` refuses {}.
function checks.strings(ctx, v, field, rule)
  checks.array(ctx, v, field)
  local n = #v
  if rule and rule.nonempty and n == 0 then
    M.fail(ctx, field, "must not be empty")
  end
  for i = 1, n do
    local f = fmt("%s[%d]", field, i)
    if type(v[i]) ~= "string" then
      M.fail(ctx, f, "must be a string, got %s", type(v[i]))
    end
    if v[i]:find("\0", 1, true) then M.fail(ctx, f, "must not contain a NUL byte") end
  end
  return v
end

--- An environment table: names (not empty, no "=", no NUL) to strings.
function checks.env(ctx, v, field)
  checks.table(ctx, v, field)
  for k, val in pairs(v) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then
      M.fail(ctx, field, "invalid variable name %s", show(k))
    end
    local f = field .. "." .. k
    if type(val) ~= "string" then
      M.fail(ctx, f, "must be a string, got %s", type(val))
    end
    if val:find("\0", 1, true) then M.fail(ctx, f, "must not contain a NUL byte") end
  end
  return v
end

--- A port number 1..65535.
function checks.port_number(ctx, v, field)
  if mtype(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
    M.fail(ctx, field, "must be a port number 1..65535, got %s", show(v))
  end
  if v < 1 or v > 65535 then
    M.fail(ctx, field, "must be 1..65535, got %s", show(v))
  end
  return math.tointeger(v)
end

local PORT = nil   -- the schema of one kubelet container port (below)

--- kubelet container ports: an array of `{ name = "http", port = 8080 }`.
function checks.ports(ctx, v, field)
  checks.array(ctx, v, field)
  for i, p in ipairs(v) do PORT:apply(ctx, p, fmt("%s[%d]", field, i)) end
  return v
end

--- A port: a number 1..65535, or a name; names are resolved against the
-- spec's `ports` by the caller (see `port_of`).
function checks.port(ctx, v, field)
  if type(v) == "string" then return v end
  return checks.port_number(ctx, v, field)
end

--- kubelet ResolveContainerPort: `port` as a number, or a name looked up
-- in `ports` (first match wins).
function M.port_of(ctx, port, ports, field)
  if type(port) ~= "string" then return port end
  for _, p in ipairs(ports or {}) do
    if p.name == port then return math.tointeger(p.port) end
  end
  M.fail(ctx, field, "port %s not found in ports", show(port))
end

--- A host name or IP literal; IPv6 is given bare ("::1"), not in brackets
-- (a zone is allowed: "fe80::1%eth0").  "" is the default.
function checks.host(ctx, v, field, rule)
  checks.string(ctx, v, field)
  if v == "" then return rule and rule.default end
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

--- One of `rule.values` (an array of strings).
function checks.enum(ctx, v, field, rule)
  for _, x in ipairs(rule.values) do
    if v == x then return v end
  end
  local last = #rule.values
  local allowed = last == 1 and rule.values[1] or
    table.concat(rule.values, ", ", 1, last - 1) .. " or " .. rule.values[last]
  M.fail(ctx, field, "must be %s, got %s", allowed, show(v))
end

---------------------------------------------------------------------------
-- Schemas
---------------------------------------------------------------------------

local Schema = {}
Schema.__index = Schema

--- Make a schema from an ordered list of field rules
-- `{ name, type, required =, default =, ... }`.
-- @raise when a rule names an unknown check (a bug in sonde)
function M.schema(rules)
  local s = setmetatable({ rules = rules, known = {} }, Schema)
  for _, r in ipairs(rules) do
    local t = r[2]
    if type(t) == "string" and not checks[t] then
      error("validate.schema: unknown check " .. t, 2)
    end
    s.known[r[1]] = r
  end
  return s
end

--- True when `v` is a schema.
function M.is_schema(v) return getmetatable(v) == Schema end

--- Check one value against a field type (a check name, a schema or a
-- function).
function M.check(ctx, t, v, field, rule)
  if type(t) == "string" then return checks[t](ctx, v, field, rule) end
  if getmetatable(t) == Schema then return t:apply(ctx, v, field) end
  return t(ctx, v, field, rule)
end

--- Check table `spec` against the schema.  `field` is the path of the
-- table itself inside a larger spec (nil at the top).
-- @return a new table with the checked values (defaults filled in)
function Schema:apply(ctx, spec, field)
  checks.table(ctx, spec, field or (not ctx.prefix and "spec" or nil))
  local prefix = field and (field .. ".") or ""
  for k in pairs(spec) do
    if not self.known[k] then
      M.fail(ctx, field, "unknown field %s", show(k))
    end
  end
  local out = {}
  for _, r in ipairs(self.rules) do
    local name = r[1]
    local v = spec[name]
    if v == nil then
      if r.required then M.fail(ctx, prefix .. name, "is required") end
      out[name] = r.default
    else
      out[name] = M.check(ctx, r[2], v, prefix .. name, r)
    end
  end
  return out
end

PORT = M.schema {
  { "name", "string" },
  { "port", "port_number", required = true },
}

return M
