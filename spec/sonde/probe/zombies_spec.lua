-- A declared probe whose command leaves background children behind: with
-- sonde.set_subreaper(true) nothing of those process groups survives the
-- runs and no zombie child of this process remains.
local sonde = require "sonde"
local helpers = require "helpers"

describe("probe commands that background children", function()
  local groups = {}

  setup(function()
    assert(sonde.set_subreaper(true))
  end)

  teardown(function()
    -- safety: nothing of the groups may outlive the spec
    local pids = {}
    for pg in pairs(groups) do pids[#pids + 1] = pg end
    helpers.kill_groups(pids)
    sonde.set_subreaper(false)
    helpers.fresh()
  end)

  before_each(helpers.fresh)

  it("leave no process and no zombie after 5 s of runs every 0.2 s",
    function()
    local results = {}
    local p = sonde.probe { name = "bg", kind = "readiness", period = 0.2, timeout = 5,
      exec = { command = { "sh", "-c", "sleep 30 & sleep 30 & echo ok" } },
      on_result = function(r)
        results[#results + 1] = r
        if r.pid then groups[r.pid] = true end
      end,
    }
    helpers.run_logged(5)

    -- every run succeeded at once: the background sleeps held nothing back
    assert.is_true(#results >= 15, "runs: " .. #results)
    for _, r in ipairs(results) do
      assert.are.same({ "success", "ok\n" }, { r.status, r.output })
      assert.is_true(r.duration < 2, "duration " .. r.duration)
      assert.is_number(r.pid)
    end
    assert.are.equal(#results, p.runs)

    -- nothing of those process groups is left (reaping may take a moment:
    -- the loop runs meanwhile in helpers.eventually)
    local left = helpers.eventually(function()
      return #helpers.procs_in_groups(groups) == 0
    end, 3)
    assert.is_true(left, "left: "
      .. helpers.describe_procs(helpers.procs_in_groups(groups)))
    local none = helpers.eventually(function()
      return #helpers.zombies_of() == 0
    end, 3)
    local z = {}
    for _, st in ipairs(helpers.zombies_of()) do
      z[#z + 1] = st.pid .. " " .. st.comm
    end
    assert.is_true(none, "zombie children: " .. table.concat(z, ", "))
    -- no `sleep 30` of ours anywhere
    local mine = {}
    for _, pr in ipairs(helpers.procs_matching("^sleep 30$")) do
      if groups[pr.pgid] then mine[#mine + 1] = pr end
    end
    assert.are.equal(0, #mine, helpers.describe_procs(mine))
  end)
end)
