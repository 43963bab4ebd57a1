--- Go RE2 regular expressions (blackbox_exporter's configurations) as
-- POSIX extended regular expressions (core.regex: regcomp/regexec).
--
--   local ere, err = regex.translate("(?i)^ok\\s+\\d{3}")
--   local re, err = regex.compile(src)   -- { source, ere, match = fn(s) }
--
-- Only whether a regex matches matters to blackbox_exporter's http and tcp
-- probers (RE2's leftmost-first and POSIX's leftmost-longest agree on
-- that), so greediness is dropped.  Mapped: literals and escapes of
-- punctuation; `.` (no newline, as RE2, unless `(?s)`); `\d \D \s \S \w
-- \W` (ASCII, as RE2) inside and outside brackets (negated ones outside
-- only); `\b \B` (glibc's); `\A \z`; `\n \t \r \f \v \a`, `\xHH`,
-- `\x{H..}`; `\Q...\E`; groups `( )`, `(?: )`, `(?P<n> )`, `(?<n> )`;
-- flags `(?i)`, `(?s)`, `(?U)` (alone or scoped `(?i: )`; `i` by spelling
-- letters in both cases); repetitions `* + ? {n} {n,} {n,m}` and their
-- lazy forms; alternation; bracket expressions with ranges and the POSIX
-- classes.  Refused (with the reason): `(?m)`, Unicode classes `\p`,
-- `\C`, back-references and octal escapes, `[[:^class:]]`, negated
-- escapes inside brackets, non-ASCII bytes inside brackets.
-- @module sonde.regex
local core = require "sonde.core"

local M = {}

local SPECIAL = "[%.%[%]%(%)%*%+%?{}|%^%$\\]"

-- A literal byte as ERE text, outside brackets.
local function lit(c, icase)
  if icase and c:match("%a") then
    return "[" .. c:lower() .. c:upper() .. "]"
  end
  if c:match(SPECIAL) then return "\\" .. c end
  return c
end

local OUT_CLASS = {
  d = "[0-9]", D = "[^0-9]",
  s = "[\t\n\f\r ]", S = "[^\t\n\f\r ]",
  w = "[0-9A-Za-z_]", W = "[^0-9A-Za-z_]",
}
local IN_CLASS = { d = { "0-9" }, s = { "\t", "\n", "\f", "\r", " " },
  w = { "0-9", "A-Z", "a-z", "_" } }
local CTRL = { n = "\n", t = "\t", r = "\r", f = "\f", v = "\v", a = "\a" }
local POSIX = { alnum = true, alpha = true, blank = true, cntrl = true,
  digit = true, graph = true, lower = true, print = true, punct = true,
  space = true, upper = true, xdigit = true }

-- An escape at s[i] == "\\": returns the literal byte(s) or a class name
-- (d, s, w, ...) and the index after it; raises a reason.
local function escape(s, i)
  local c = s:sub(i + 1, i + 1)
  if c == "" then error("trailing backslash", 0) end
  if CTRL[c] then return { lit = CTRL[c] }, i + 2 end
  if c == "x" then
    local h = s:match("^{(%x+)}", i + 2)
    if h then
      local n = tonumber(h, 16)
      if n > 0x10FFFF then error("\\x{" .. h .. "} is not a code point", 0) end
      return { lit = utf8.char(n) }, i + 4 + #h
    end
    h = s:match("^%x%x", i + 2)
    if not h then error("\\x needs two hex digits or {...}", 0) end
    return { lit = utf8.char(tonumber(h, 16)) }, i + 4
  end
  if c:match("%d") then
    error("back-references and octal escapes (\\" .. c .. ") are not "
      .. "supported", 0)
  end
  if c:match("%a") then return { class = c }, i + 2 end
  return { lit = c }, i + 2
end

-- A bracket expression starting at s[i] == "[": the ERE text and the index
-- after it.
local function bracket(s, i, icase)
  local j = i + 1
  local neg = false
  if s:sub(j, j) == "^" then neg, j = true, j + 1 end
  local singles, ranges, classes = {}, {}, {}
  local first = true
  local function add(c)
    if #c ~= 1 or c:byte() > 127 then
      error("non-ASCII characters inside [...] are not supported", 0)
    end
    if c == "\0" then error("NUL inside [...] is not supported", 0) end
    singles[c] = true
    if icase and c:match("%a") then
      singles[c:lower()], singles[c:upper()] = true, true
    end
  end
  while true do
    local c = s:sub(j, j)
    if c == "" then error("missing closing ]", 0) end
    if c == "]" and not first then j = j + 1 break end
    first = false
    local item
    if c == "[" and s:sub(j + 1, j + 1) == ":" then
      local name, e = s:match("^%[:(%^?%a+):%]()", j)
      if not name then error("bad [:class:]", 0) end
      if name:sub(1, 1) == "^" then
        error("negated POSIX classes [[:^" .. name:sub(2) .. ":]] are not "
          .. "supported", 0)
      end
      if name == "word" then
        for _, r in ipairs(IN_CLASS.w) do classes[#classes + 1] = r end
      elseif POSIX[name] then
        classes[#classes + 1] = "[:" .. name .. ":]"
      else
        error("[:" .. name .. ":] is not supported", 0)
      end
      j = e
    else
      if c == "\\" then
        item, j = escape(s, j)
        if item.class then
          local set = IN_CLASS[item.class]
          if not set then
            error("\\" .. item.class .. " inside [...] is not supported", 0)
          end
          for _, r in ipairs(set) do
            if #r == 1 then add(r) else classes[#classes + 1] = r end
          end
          item = nil
        else
          item = item.lit
        end
      else
        item, j = c, j + 1
      end
      if item then
        -- a range?
        if s:sub(j, j) == "-" and s:sub(j + 1, j + 1) ~= "]"
            and s:sub(j + 1, j + 1) ~= "" then
          local hi
          if s:sub(j + 1, j + 1) == "\\" then
            local e
            e, j = escape(s, j + 1)
            if not e.lit then error("a class cannot end a range", 0) end
            hi = e.lit
          else
            hi, j = s:sub(j + 1, j + 1), j + 2
          end
          if #item ~= 1 or #hi ~= 1 or item:byte() > 127 or hi:byte() > 127 then
            error("non-ASCII ranges are not supported", 0)
          end
          if hi:byte() < item:byte() then
            error("invalid range " .. item .. "-" .. hi, 0)
          end
          for b = item:byte(), hi:byte() do
            local ch = string.char(b)
            if ch:match("[%]%-%^%[\\]") or ch == "\0" then
              if ch ~= "\0" then add(ch) end
            end
          end
          local lo_b, hi_b = item:byte(), hi:byte()
          -- endpoints that are special in a bracket are added as singles
          -- above; the range itself goes between safe endpoints
          local function safe(b)
            local ch = string.char(b)
            return b > 0 and not ch:match("[%]%-%^%[\\]")
          end
          while lo_b <= hi_b and not safe(lo_b) do lo_b = lo_b + 1 end
          while hi_b >= lo_b and not safe(hi_b) do hi_b = hi_b - 1 end
          if lo_b <= hi_b then
            ranges[#ranges + 1] = string.char(lo_b) .. "-" .. string.char(hi_b)
            if icase then
              for b = lo_b, hi_b do
                local ch = string.char(b)
                if ch:match("%a") then add(ch) end
              end
            end
          end
        else
          add(item)
        end
      end
    end
  end
  local out = { "[" }
  if neg then out[#out + 1] = "^" end
  if singles["]"] then out[#out + 1] = "]" end
  local keys = {}
  for k in pairs(singles) do
    if k ~= "]" and k ~= "-" and k ~= "^" and k ~= "[" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do out[#out + 1] = k end
  for _, r in ipairs(ranges) do out[#out + 1] = r end
  for _, c in ipairs(classes) do out[#out + 1] = c end
  if singles["["] then out[#out + 1] = "[" end
  if singles["^"] then
    if #out == 1 then                     -- [^] alone would be a negation
      out[#out + 1] = singles["-"] and "-^" or "^"
      singles["-"] = nil
    else
      out[#out + 1] = "^"
    end
  end
  if singles["-"] then out[#out + 1] = "-" end
  if #out == 1 or (neg and #out == 2) then
    error("an empty bracket expression", 0)
  end
  out[#out + 1] = "]"
  return table.concat(out), j
end

--- Translate an RE2 regex to a POSIX ERE.
-- @treturn string|nil the ERE
-- @treturn[2] string why it cannot be mapped
-- What translate emits for an assertion (it matches no byte).
local ANCHOR = { ["^"] = true, ["$"] = true, ["\\b"] = true, ["\\B"] = true }

function M.translate(s)
  local ok, res, groups = pcall(function()
    local out = {}
    local flags = { i = false, s = false }
    local stack = {}
    -- capturing groups: RE2's number -> ERE's, and names -> RE2's number
    -- (ERE has no non-capturing group: `(?:` is a group of its own there)
    local groups = { ere = {}, names = {} }
    local n_re2, n_ere = 0, 0
    local function group(name)
      n_ere = n_ere + 1
      if name ~= false then
        n_re2 = n_re2 + 1
        groups.ere[n_re2] = n_ere
        if name then groups.names[name] = n_re2 end
      end
    end
    local i = 1
    local n = #s
    local function push(t) out[#out + 1] = t end
    local function repetition_follows()
      -- drop a lazy '?' after a repetition
      if s:sub(i, i) == "?" then i = i + 1 end
    end
    while i <= n do
      local c = s:sub(i, i)
      if c == "\\" then
        if s:sub(i + 1, i + 1) == "Q" then
          local e = s:find("\\E", i + 2, true)
          local text = s:sub(i + 2, (e or n + 1) - 1)
          for k = 1, #text do push(lit(text:sub(k, k), flags.i)) end
          i = e and e + 2 or n + 1
        else
          local item
          item, i = escape(s, i)
          if item.lit then
            for k = 1, #item.lit do push(lit(item.lit:sub(k, k), flags.i)) end
          elseif OUT_CLASS[item.class] then
            push(OUT_CLASS[item.class])
          elseif item.class == "b" or item.class == "B" then
            push("\\" .. item.class)
          elseif item.class == "A" then
            push("^")
          elseif item.class == "z" then
            push("$")
          elseif item.class == "p" or item.class == "P" then
            error("Unicode classes (\\" .. item.class .. ") are not supported", 0)
          else
            error("the escape \\" .. item.class .. " is not supported", 0)
          end
        end
      elseif c == "." then
        push(flags.s and "." or "[^\n]")
        i = i + 1
      elseif c == "[" then
        local b
        b, i = bracket(s, i, flags.i)
        push(b)
      elseif c == "(" then
        local saved = { i = flags.i, s = flags.s }
        if s:sub(i + 1, i + 1) == "?" then
          local gname, name_end = s:match("^%?P?<([%w_]+)>()", i + 1)
          if name_end then
            stack[#stack + 1] = saved
            push("(")
            group(gname)
            i = name_end
          else
            local f, close, e = s:match("^%?([%a%-]*)([:%)])()", i + 1)
            if not f then error("unknown group syntax at " .. s:sub(i, i + 3), 0) end
            local on = true
            for k = 1, #f do
              local ch = f:sub(k, k)
              if ch == "-" then on = false
              elseif ch == "i" or ch == "s" then flags[ch] = on
              elseif ch == "U" then -- greediness: no effect on a match
              elseif ch == "m" then
                error("the multi-line flag (?m) is not supported", 0)
              else
                error("unknown flag " .. ch, 0)
              end
            end
            if close == ":" then
              stack[#stack + 1] = saved
              push("(")
              group(false)
            end
            i = e
          end
        else
          stack[#stack + 1] = saved
          push("(")
          group(nil)
          i = i + 1
        end
      elseif c == ")" then
        local saved = table.remove(stack)
        if not saved then error("unexpected )", 0) end
        flags = saved
        push(")")
        i = i + 1
      elseif (c == "*" or c == "+" or c == "?" or s:find("^{%d+,?%d*}", i))
          and ANCHOR[out[#out]] then
        -- RE2 repeats an assertion (`^+OK`, Debian's pop3s_banner); POSIX
        -- refuses it.  At least once is the assertion; possibly none
        -- always holds: nothing.
        local least = c == "+" and 1 or tonumber(s:match("^{(%d+)", i)) or 0
        if least == 0 then out[#out] = nil end
        i = c == "{" and s:match("^{%d+,?%d*}()", i) or i + 1
        repetition_follows()
      elseif c == "*" or c == "+" or c == "?" then
        push(c)
        i = i + 1
        repetition_follows()
      elseif c == "{" then
        local a, comma, b, e = s:match("^{(%d+)(,?)(%d*)}()", i)
        if a then
          if tonumber(a) > 1000 or (b ~= "" and tonumber(b) > 1000) then
            error("repetition count over 1000", 0)
          end
          if b ~= "" and tonumber(b) < tonumber(a) then
            error("invalid repetition {" .. a .. "," .. b .. "}", 0)
          end
          push("{" .. a .. comma .. b .. "}")
          i = e
          repetition_follows()
        else
          push("\\{")
          i = i + 1
        end
      elseif c == "^" or c == "$" or c == "|" then
        push(c)
        i = i + 1
      else
        push(lit(c, flags.i))
        i = i + 1
      end
    end
    if #stack > 0 then error("missing )", 0) end
    return table.concat(out), groups
  end)
  if not ok then return nil, res end
  return res, nil, groups
end

--- Go's Regexp.Expand template (`$1`, `${1}`, `$name`, `${name}`, `$$`)
-- as a SONDE_TCP_SEND_EXPAND template of the ERE translate made (`$N`, N
-- the ERE group's digit; `$$`): a name or number the regexp has no group
-- for is "" (as Go), a malformed `$` stays a `$` (as Go).
-- @tparam string template
-- @tparam table groups translate's third value
-- @treturn string|nil the template, or nil and why (a group past the 9th
-- of the ERE)
function M.expand_template(template, groups)
  local out, i, n = {}, 1, #template
  while i <= n do
    local c = template:sub(i, i)
    if c ~= "$" then
      out[#out + 1] = c
      i = i + 1
    elseif template:sub(i + 1, i + 1) == "$" then
      out[#out + 1] = "$$"
      i = i + 2
    else
      local name, e = template:match("^{([%w_]+)}()", i + 1)
      if not name then name, e = template:match("^([%w_]+)()", i + 1) end
      if not name then                  -- malformed: the "$" as it is
        out[#out + 1] = "$$"
        i = i + 1
      else
        local num = name:find("^%d+$") and tonumber(name) or groups.names[name]
        local g = num == 0 and 0 or (num and groups.ere[num])
        if g and g > 9 then
          return nil, string.format("the submatch %s is the regexp's group "
            .. "%d as POSIX ERE: at most 9 can be used", name, g)
        end
        if g then out[#out + 1] = "$" .. g end
        i = e
      end
    end
  end
  return table.concat(out)
end

--- Translate and compile: `{ source, ere, groups, match =
-- function(subject) }` (groups: translate's third value), or nil and why.
function M.compile(src)
  if type(src) ~= "string" then return nil, "a string expected" end
  local ere, err, groups = M.translate(src)
  if not ere then return nil, err end
  local re, cerr = core.regex(ere)
  if not re then return nil, "does not compile as POSIX ERE " .. ere .. ": " .. cerr end
  return { source = src, ere = ere, groups = groups, match = function(subject)
    return re:match(subject)
  end }
end

return M
