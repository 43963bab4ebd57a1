-- custom-check.lua: a probe written in Lua.  The check function runs as a
-- task: the probers inside it yield, so it reads sequentially while the
-- loop keeps everything else running.  It returns a result table, or a
-- status and a message.
--
--   SONDE_HTTP_PORT=8080 build/bin/sonde once examples/custom-check.lua
local sonde = require "sonde"

local base = string.format("http://127.0.0.1:%d",
  tonumber(os.getenv("SONDE_HTTP_PORT")) or 8080)

sonde.probe {
  name = "login-flow",
  period = 15, timeout = 3,
  check = function()
    local r = sonde.http_get { url = base .. "/login", timeout = 1 }
    if r.status ~= "success" then return r end       -- pass it on as is
    if not r.body:find("csrf", 1, true) then
      return "failure", "no csrf token on the login page"
    end
    local api = sonde.http_get { url = base .. "/api/health", timeout = 1 }
    if api.status ~= "success" then
      return "warning", "login page fine, API says " .. api.reason
    end
    return "success", "login page and API fine"
  end,
}
