--- The one JSON encoder of sonde: log lines (`--log-format json`),
-- `/status`, webhook bodies and `sonde once --format json`.
--
-- Byte strings that are not valid UTF-8 are never dropped: each invalid
-- byte becomes the text `\xFF` (in JSON, `"\\xFF"`), so binary output stays
-- readable and every line stays valid JSON.  Control characters are
-- escaped (`\n`, `\u0001`).
-- @module sonde.json
local M = {}

local fmt = string.format
local byte, sub = string.byte, string.sub

-- Split s into valid UTF-8 runs and single bad bytes; call ok(chunk) for
-- valid runs and bad(byte) for invalid bytes.  Linear in #s.
local function utf8_walk(s, ok, bad)
  local i, n = 1, #s
  while i <= n do
    local j = i
    while j <= n do
      local c = byte(s, j)
      local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
        or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4
        or 0
      if len == 0 or j + len - 1 > n then break end
      if len > 1 and not utf8.len(s, j, j + len - 1) then break end
      j = j + len
    end
    if j > i then ok(sub(s, i, j - 1)) end
    if j <= n then bad(byte(s, j)); j = j + 1 end
    i = j
  end
end

--- `s` as valid UTF-8: each byte that is not part of a valid sequence
-- (RFC 3629: no overlongs, surrogates or code points past U+10FFFF)
-- replaced by `repl` (default U+FFFD, the replacement character).
-- Returns `s` itself when it is valid (all-ASCII text: one `find`).
-- @tparam string s
-- @tparam[opt] string repl
-- @treturn string
function M.valid_utf8(s, repl)
  if not s:find("[\128-\255]") or utf8.len(s) then return s end
  repl = repl or "\239\191\189"
  local out = {}
  utf8_walk(s, function(chunk) out[#out + 1] = chunk end,
    function() out[#out + 1] = repl end)
  return table.concat(out)
end

local SHORT = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                ['"'] = '\\"', ["\\"] = "\\\\" }

--- Make an escaper: printable UTF-8 kept, `\n \r \t \" \\` escaped, other
-- control bytes formatted with `ctrl` (a format taking the byte), invalid
-- UTF-8 bytes with `bad`.
-- @tparam string ctrl e.g. `"\\u%04x"`
-- @tparam string bad e.g. `"\\\\x%02X"`
-- @treturn function(string) -> string
function M.escaper(ctrl, bad)
  return function(s)
    if not s:find('[%c"\\\128-\255]') then return s end   -- the common case
    local out = {}
    utf8_walk(s, function(chunk)
      out[#out + 1] = chunk:gsub('[%c"\\]', function(c)
        return SHORT[c] or fmt(ctrl, byte(c))
      end)
    end, function(b) out[#out + 1] = fmt(bad, b) end)
    return table.concat(out)
  end
end

local body = M.escaper("\\u%04x", "\\\\x%02X")

--- Encode a byte string as a JSON string literal, quotes included.
-- @tparam string s
-- @treturn string
function M.string(s)
  return '"' .. body(s) .. '"'
end

local encode

local function encode_table(v, seen)
  if seen[v] then return '"(cycle)"' end
  seen[v] = true
  local keys, n, max = {}, 0, 0
  local array = true
  for k in pairs(v) do
    n = n + 1
    keys[n] = k
    if math.type(k) ~= "integer" or k < 1 then array = false
    elseif k > max then max = k end
  end
  local out
  if array and n > 0 and max == n then        -- keys exactly 1..n
    local parts = {}
    for i = 1, n do parts[i] = encode(v[i], seen) end
    out = "[" .. table.concat(parts, ",") .. "]"
  else
    -- keys as strings, sorted; where two keys print alike (1 and "1") the
    -- string key is kept
    local by_name, names = {}, {}
    for _, k in ipairs(keys) do
      local name = tostring(k)
      if by_name[name] == nil then names[#names + 1] = name end
      if by_name[name] == nil or type(k) == "string" then by_name[name] = k end
    end
    table.sort(names)
    local parts = {}
    for i, name in ipairs(names) do
      parts[i] = M.string(name) .. ":" .. encode(v[by_name[name]], seen)
    end
    out = "{" .. table.concat(parts, ",") .. "}"
  end
  seen[v] = nil
  return out
end

encode = function(v, seen)
  local t = type(v)
  if t == "string" then return M.string(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    if v == math.floor(v) and math.abs(v) < 2^53 then return fmt("%d", v) end
    return (fmt("%.17g", v):gsub(",", "."))
  elseif t == "boolean" then return tostring(v)
  elseif t == "nil" then return "null"
  elseif t == "table" then return encode_table(v, seen)
  end
  return M.string(tostring(v))
end

--- Encode a Lua value as JSON text.  A table whose keys are exactly
-- 1..n is an array; any other table an object with its keys as strings,
-- sorted (stable output; of two keys that print alike, 1 and "1", the
-- string key is kept); an empty table is `{}`.  NaN and infinities are
-- `null`; functions, threads and userdata are their `tostring` text; a
-- table met again inside itself is the string `"(cycle)"`.
-- @param v
-- @treturn string
function M.encode(v)
  return encode(v, {})
end

return M
