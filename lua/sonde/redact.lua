--- Keeping secrets out of what sonde shows: URL credentials masked the way
-- Go's `url.URL.Redacted` prints them (`https://user:xxxxx@host/`), the
-- command line of an exec operation shown in its unexpanded `$(VAR)` form,
-- a webhook named without its userinfo, query string and fragment.
--
-- Used where results are made (sonde.probers), where they are shown
-- (sonde.endpoints' `/status`, sonde.action's events) and by sonde.log on
-- every string field, as a last line of defence.  Requires nothing of
-- sonde's; every function is cheap on text that holds no `://`.
-- @module sonde.redact
local M = {}

local find, sub = string.find, string.sub

--- The mask Go prints in place of a password.
M.MASK = "xxxxx"

-- scheme "://" authority: the authority runs to the first / ? # (RFC 3986),
-- or, in running text, to a space, a quote or an angle bracket.
local function mask_authority(auth)
  local at = auth:match("^.*()@")         -- the last @: userinfo before it
  if not at then return nil end
  local userinfo = sub(auth, 1, at - 1)
  local colon = find(userinfo, ":", 1, true)
  if not colon then return nil end        -- a user without a password: kept
  return sub(userinfo, 1, colon) .. M.MASK .. sub(auth, at)
end

--- A URL with its password masked: `scheme://user:xxxxx@host...`, as Go's
-- `url.URL.Redacted` (a user without a password is kept, as Go does).
-- Anything else, a non-string included, is returned as it is.
-- @param u
-- @return the same type
function M.url(u)
  if type(u) ~= "string" or not find(u, "@", 1, true) then return u end
  local scheme, auth, rest = u:match("^(%a[%w+.-]*://)([^/?#]*)(.*)$")
  if not scheme then return u end
  local masked = mask_authority(auth)
  return masked and scheme .. masked .. rest or u
end

--- Every URL in a text with its password masked (see `url`).  A URL ends at
-- a space, a quote, `<`, `>` or the end of its authority.  Linear; returns
-- `s` itself when it holds no `://` (the common case).
-- @tparam string s
-- @treturn string
function M.text(s)
  if type(s) ~= "string" or not find(s, "://", 1, true)
      or not find(s, "@", 1, true) then
    return s
  end
  return (s:gsub("(%a[%w+.-]*://)([^/?#%s\"'<>]*)", function(scheme, auth)
    local masked = mask_authority(auth)
    return masked and scheme .. masked or nil
  end))
end

--- How a webhook is named in events: scheme, host, port and path, no
-- userinfo, query string or fragment (`https://hooks.example/alert`).
-- @tparam string u an absolute URL
-- @treturn string
function M.endpoint(u)
  if type(u) ~= "string" then return u end
  local scheme, auth, path = u:match("^(%a[%w+.-]*://)([^/?#]*)([^?#]*)")
  if not scheme then return (u:gsub("[?#].*$", "")) end
  auth = auth:gsub("^.*@", "")
  return scheme .. auth .. path
end

--- `s` with every plain (not pattern) occurrence of `from` replaced by
-- `to`; `s` itself when there is none.
-- @tparam string s
-- @tparam string from non-empty
-- @tparam string to
-- @treturn string
function M.replace(s, from, to)
  if type(s) ~= "string" or from == "" or from == to then return s end
  local i = find(s, from, 1, true)
  if not i then return s end
  local out, pos = {}, 1
  while i do
    out[#out + 1] = sub(s, pos, i - 1)
    out[#out + 1] = to
    pos = i + #from
    i = find(s, from, pos, true)
  end
  out[#out + 1] = sub(s, pos)
  return table.concat(out)
end

--- An HTTP result made safe to show: `url` masked (`url`), and the
-- messages sonde wrote (`error`, and `output` when the request failed:
-- `get "URL": reason`) with every URL masked.  A body is the target's and
-- is left alone.  Changes `r` in place and returns it.
-- @tparam table r a result of the http prober
-- @treturn table r
function M.http_result(r)
  r.url = M.url(r.url)
  if r.error ~= nil then
    r.error = M.text(r.error)
    if r.output ~= r.body then r.output = M.text(r.output) end
  end
  return r
end

--- An exec result made safe to show: where sonde echoed the command line
-- (a timeout's `command timed out: "<argv>" ...`, a spawn error naming
-- argv[0]), the expanded form, which may hold values of `env`, is put back
-- to the command as written (`$(TOKEN)`).  Changes `r` in place.
-- @tparam table r a result of the exec prober
-- @tparam table w the command { command = as written, argv0 = argv[0] as
--   written, expanded = the command expanded, expanded0 = argv[0]
--   expanded } (sonde.probers makes it: opts.written)
-- @treturn table r
function M.exec_result(r, w)
  if w.expanded == w.command and w.expanded0 == w.argv0 then return r end
  local e = r.error
  if type(e) ~= "string" then return r end
  local same = r.output == e        -- the message stands in for no output
  e = M.replace(e, w.expanded, w.command)
  -- a start-time failure: "<argv0>: No such file or directory"
  if w.expanded0 ~= w.argv0
      and sub(e, 1, #w.expanded0 + 2) == w.expanded0 .. ": " then
    e = w.argv0 .. sub(e, #w.expanded0 + 1)
  end
  r.error = e
  if same then r.output = e end
  return r
end

return M
