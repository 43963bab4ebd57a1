-- A host stalled (SIGSTOP/SIGCONT, a paused VM) past a custom check's
-- timeout while the command the check waits on ran and finished: after
-- SIGCONT the check's result is that command's, not a timeout (the exec
-- prober already handles its own deadline so; the check's deadline fired
-- first and reported `check timed out`).
local helpers = require "helpers"

describe("a custom check after a host stall", function()
  after_each(helpers.cleanup_hosts)

  it("whose command finished during the stall is not a timeout", function()
    local dir = helpers.scratch()
    local path = helpers.script("stall.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "chk", period = 60, timeout = 1,
        check = function()
          return sonde.exec { timeout = 0.9, command = { "sh", "-c",
            "echo started > %s/started; sleep 0.3; echo done" } }
        end }
    ]], dir))
    local h = helpers.host_start { "--log-format", "json", "--log-level",
      "debug", path }
    assert.is_truthy(h:wait_for(function()
      return helpers.read_file(dir .. "/started")
    end, 15), h:stderr())
    h:signal("STOP")
    helpers.sleep(2)                      -- the stall: twice the timeout
    h:signal("CONT")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "chk" }) >= 1
    end, 10), h:stderr())
    local r = h:events("probe_result", { probe = "chk" })[1]
    assert.are.same({ "success", "ok", "done\n" },
      { r.status, r.reason, r.output }, h:stderr())
    assert.are.equal(0, h:term())
  end)
end)
