-- busted helper (`.busted`: helper = "spec/support/setup.lua"), run once
-- before any spec:
--
--   * without $SONDE_BUILD (a plain `busted` or `luarocks test`), builds
--     what is missing or out of date (`make -s all build/test/fixture-server`),
--     quietly: make's output is shown only when it fails;
--   * puts $SONDE_BUILD/lib (default build/lib) first on package.cpath, so
--     that `make check SANITIZE=1` loads build-san's module;
--   * sends sonde's log to a temporary file for the whole run, so that no
--     engine line reaches the terminal (spec/helpers.lua's H.capture sets
--     its own sink and puts this one back);
--   * at the end, removes that file and the specs' scratch directories.
local H = require "helpers"

if (os.getenv("SONDE_BUILD") or "") == "" then
  local targets = "all build/test/fixture-server"
  local dir = "-C " .. H.q(H.root) .. " "
  -- (MAKEFLAGS etc. of an outer make would change what this one does)
  local make = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make " .. dir
  if H.sh(make .. "-s -q " .. targets) ~= 0 then
    local rc, out = H.sh(make .. "-s " .. targets)
    if rc ~= 0 then
      error("spec/support/setup.lua: building sonde failed:\n" .. out, 0)
    end
  end
end

package.cpath = H.build .. "/lib/?.so;" .. package.cpath

local quiet = os.tmpname()
H.quiet_log = assert(io.open(quiet, "w"))
require("sonde.log").set_sink(H.quiet_log)
require("busted").subscribe({ "exit" }, function()
  H.quiet_log:close()
  os.remove(quiet)
  H.remove_scratch()
  return nil, true
end, { priority = 1 })   -- before summary.lua's exit, which may os.exit
