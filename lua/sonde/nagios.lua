--- Nagios / monitoring-plugins output (Monitoring Plugins Development
-- Guidelines, "Plugin Output"): the first line is the summary, performance
-- data follows a `|`; further lines are long output, and perfdata may go on
-- after a `|` there too:
--
--   DISK OK - free space: / 3326 MB (56%) | /=2643MB;5948;5958;0;5968
--   / 15272 MB (77%);
--   /boot 68 MB (69%); | /boot=68MB;88;93;0;98
--   /home=69357MB;253404;253409;0;253414
--
-- Each perfdata item is `'label'=value[UOM];[warn];[crit];[min];[max]`;
-- a label with spaces or `=` is quoted with `'` (a literal quote doubled).
-- @module sonde.nagios
local M = {}

-- Split perfdata text into items, honouring quoted labels.
local function items(text)
  local out, i, n = {}, 1, #text
  while i <= n do
    while i <= n and text:sub(i, i):find("%s") do i = i + 1 end
    if i > n then break end
    local start = i
    if text:sub(i, i) == "'" then
      i = i + 1
      while i <= n do
        local c = text:sub(i, i)
        if c == "'" then
          if text:sub(i + 1, i + 1) == "'" then i = i + 2 else i = i + 1 break end
        else
          i = i + 1
        end
      end
    end
    while i <= n and not text:sub(i, i):find("%s") do i = i + 1 end
    out[#out + 1] = text:sub(start, i - 1)
  end
  return out
end

local function number(s)
  if s == nil or s == "" then return nil end
  return tonumber(s)
end

--- Parse one perfdata item.
-- @return { label, value, uom, warn, crit, min, max } (warn and crit are
-- kept as the plugin's range text, e.g. "10:20", and also as numbers when
-- they are plain numbers: warn_value, crit_value) | nil when malformed
function M.parse_item(item)
  local label, rest
  if item:sub(1, 1) == "'" then
    local j = 2
    local parts = {}
    while j <= #item do
      local c = item:sub(j, j)
      if c == "'" then
        if item:sub(j + 1, j + 1) == "'" then
          parts[#parts + 1] = "'"
          j = j + 2
        else
          break
        end
      else
        parts[#parts + 1] = c
        j = j + 1
      end
    end
    label = table.concat(parts)
    if item:sub(j + 1, j + 1) ~= "=" then return nil end
    rest = item:sub(j + 2)
  else
    label, rest = item:match("^([^=]+)=(.*)$")
    if not label then return nil end
  end
  local fields = {}
  for f in (rest .. ";"):gmatch("([^;]*);") do fields[#fields + 1] = f end
  local v, uom = (fields[1] or ""):match("^([-+]?[%d%.]+[eE]?[-+]?%d*)(.*)$")
  if not v then
    if fields[1] == "U" then v, uom = nil, "" else return nil end
  end
  local p = {
    label = label,
    value = v and tonumber(v),      -- nil: "U" (undetermined)
    uom = uom or "",
    warn = fields[2] ~= "" and fields[2] or nil,
    crit = fields[3] ~= "" and fields[3] or nil,
    min = number(fields[4]),
    max = number(fields[5]),
  }
  p.warn_value = number(p.warn)
  p.crit_value = number(p.crit)
  if v and not p.value then return nil end
  return p
end

--- Parse plugin output.
-- @treturn string summary (the first line's text)
-- @treturn string long output (the other lines' text, perfdata removed)
-- @treturn table perfdata items (see parse_item), in order
function M.parse(output)
  local lines = {}
  for line in (output .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  if lines[#lines] == "" and #lines > 1 then lines[#lines] = nil end
  local perftext = {}
  local first = lines[1] or ""
  local summary, p1 = first:match("^(.-)|(.*)$")
  if summary then
    perftext[#perftext + 1] = p1
  else
    summary = first
  end
  local long, in_perf = {}, false
  for i = 2, #lines do
    local l = lines[i]
    if in_perf then
      perftext[#perftext + 1] = l
    else
      local text, p = l:match("^(.-)|(.*)$")
      if text then
        text = text:gsub("%s+$", "")
        if text ~= "" then long[#long + 1] = text end
        perftext[#perftext + 1] = p
        in_perf = true
      else
        long[#long + 1] = l
      end
    end
  end
  local perf = {}
  for _, t in ipairs(perftext) do
    for _, it in ipairs(items(t)) do
      local p = M.parse_item(it)
      if p then perf[#perf + 1] = p end
    end
  end
  return (summary:gsub("%s+$", "")), table.concat(long, "\n"), perf
end

--- Add `summary`, `long_output` and `perfdata` to an exec result.
function M.annotate(r)
  r.summary, r.long_output, r.perfdata = M.parse(r.output or "")
  return r
end

return M
