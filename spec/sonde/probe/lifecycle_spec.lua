-- sonde.probe: what a declared probe owns and ends (its custom check is
-- closed, not abandoned), and the kubelet rules tied to its service: a
-- readiness probe publishes failure as soon as the instance exits; after a
-- startup success the liveness and readiness probes run at once.
local sonde = require "sonde"
local helpers = require "helpers"

local closer = helpers.closer

describe("declared probes", function()
  local log
  before_each(function()
    helpers.fresh()
    log = helpers.capture()
  end)
  after_each(function()
    log:close()
    helpers.fresh()
  end)

  describe("a custom check", function()
    -- A probe (timeout 0.2 s) whose check is `check`; its first result
    -- goes into `trace` as "STATUS REASON" and ends the run.
    local function first_result(name, trace, check)
      return sonde.probe { name = name, period = 10, timeout = 0.2, check = check,
        on_result = function(r)
          trace[#trace + 1] = r.status .. " " .. r.reason
          sonde.after(0, helpers.stop_now)
        end }
    end

    it("that times out while waiting is closed: its <close> variables run",
      function()
      local trace = {}
      local p = first_result("slow", trace, function()
        local c <close> = closer(trace, "closed")
        sonde.sleep(5)
        trace[#trace + 1] = "woke"     -- never
        return "success"
      end)
      assert(helpers.run_for(10))
      assert.are.same({ "failure timeout", "closed" }, trace)
      assert.are.equal(0, p.scope.ntasks)
    end)

    it("that is running when its probe stops is closed", function()
      local trace = {}
      local p = sonde.probe {
        name = "stopped-in-flight", period = 10, timeout = 30,
        check = function()
          local c <close> = closer(trace, "closed")
          trace[#trace + 1] = "started"
          sonde.sleep(20)
          return "success"
        end,
      }
      assert(helpers.run_for(0.3))
      assert.are.same({ "started", "closed" }, trace)
      assert.is_true(p.stopped)
      assert.are.equal(0, p.scope.ntasks)
    end)

    it("that busy-loops past its timeout is stopped and closed", function()
      local trace = {}
      first_result("spinning", trace, function()
        local c <close> = closer(trace, "closed")
        while true do end
      end)
      assert(helpers.run_for(10))
      assert.are.same({ "closed", "failure timeout" }, trace)
    end)

    it("tasks a hook spawned end with the probe", function()
      local trace = {}
      local p = sonde.probe {
        name = "spawner", exec = { command = { "true" } }, period = 10,
        on_change = function()
          sonde.spawn(function()
            local c <close> = closer(trace, "hook task closed")
            sonde.sleep(30)
          end)
        end,
      }
      assert(helpers.run_for(0.3))
      assert.are.same({ "hook task closed" }, trace)
      assert.are.equal(0, p.scope.ntasks)
    end)
  end)

  describe("with a service", function()
    local dir
    before_each(function() dir = helpers.tmpdir() end)
    after_each(function() helpers.rmtree(dir) end)

    it("readiness publishes failure as soon as the instance exits, and is "
      .. "ready again only through its own successes", function()
      local svc = sonde.service {
        name = "short", command = { "sh", "-c", "sleep 0.6; exit 3" },
        restart = { backoff = 0.5 }, grace = 1,
      }
      local trace = {}
      local r = sonde.probe {
        name = "ready", kind = "readiness", service = svc, period = 0.1,
        exec = { command = { "true" } },
        on_change = function(new, old, res)
          trace[#trace + 1] = string.format("%s->%s %s #%d", old, new,
            res.reason, svc.instance)
          if #trace == 4 then sonde.after(0, helpers.stop_now) end
        end,
      }
      assert(helpers.run_for(10))
      -- instance 1 ready; exits (3): failure at once, with the exit in the
      -- output; the restart comes at once (the first one), no seed change
      -- (failure -> failure); ready again after its own success
      assert.are.same({ "failure->success ok #1", "success->failure not_running #1",
        "failure->success ok #2", "success->failure not_running #2" }, trace)
      local changes = log:events("state_change", { probe = "ready" })
      assert.are.equal("not_running", changes[2].reason)
      local results = log:events("probe_result", { probe = "ready" })
      for _, e in ipairs(results) do assert.are.equal("success", e.status) end
      assert.are.equal("failure", r.state)
    end)

    it("restart policy never: a liveness failure ends the service for "
      .. "good (kubelet: restartPolicy Never); an action still restarts it",
      function()
      local svc = sonde.service {
        name = "killed", command = { "sleep", "30" },
        restart = { policy = "never" },
      }
      local live = sonde.probe {
        name = "killer", kind = "liveness", service = svc, period = 0.1,
        failure_threshold = 1, exec = { command = { "false" } },
      }
      local other = sonde.service {
        name = "kept", command = { "sleep", "30" },
        restart = { policy = "never", backoff = 0.1 },
      }
      local states = {}
      assert(helpers.run_for(1.5, { at = {
        { 0.3, function() other:restart("action") end },
        { 1.2, function()
          states = { svc.state, svc.instance, other.state, other.instance }
        end },
      } }))
      assert.are.same({ "stopped", 1, "running", 2 }, states)
      assert.are.equal("failure", live.state)
      local evs = log:events("service_restart")
      assert.are.equal(1, #evs)
      assert.are.same({ "kept", "action" }, { evs[1].service, evs[1].why })
    end)

    it("readiness of a service that is not restarted stays failure",
      function()
      local svc = sonde.service {
        name = "once", command = { "sh", "-c", "sleep 0.3" },
        restart = { policy = "never" },
      }
      local r = sonde.probe {
        name = "ready-once", kind = "readiness", service = svc, period = 0.1,
        exec = { command = { "true" } },
      }
      local states = {}
      assert(helpers.run_for(1.2, { at = {
        { 0.2, function() states[1] = r.state end },
        { 1.0, function() states[2] = r.state end },
      } }))
      assert.are.same({ "success", "failure" }, states)
      assert.are.equal("stopped", svc.state)
      local failure = log:events("state_change", { probe = "ready-once",
        to = "failure" })
      assert.are.equal(1, #failure)
      assert.are.equal("not_running", failure[1].reason)
    end)

    it("after a startup success, liveness and readiness run at once", function()
      local svc = sonde.service {
        name = "slowstart", command = { "sleep", "30" }, grace = 1,
      }
      local t = {}
      local function at(name)
        return function() t[name] = t[name] or sonde.now() end
      end
      sonde.probe {
        name = "st", kind = "startup", service = svc, period = 0.1,
        timeout = 2, exec = { command = { "test", "-f", dir .. "/up" } },
        failure_threshold = 100,
        on_change = function(new) if new == "success" then at("startup")() end end,
      }
      sonde.probe {
        name = "live", kind = "liveness", service = svc, period = 30,
        exec = { command = { "true" } }, on_result = at("liveness"),
      }
      sonde.probe {
        name = "ready", kind = "readiness", service = svc, period = 30,
        exec = { command = { "true" } }, on_result = at("readiness"),
      }
      assert(helpers.run_for(1.5, { at = {
        { 0.4, function() helpers.write(dir .. "/up", "") end },
      } }))
      assert.is_number(t.startup)
      assert.is_number(t.liveness, "liveness never ran")
      assert.is_number(t.readiness, "readiness never ran")
      -- a period of 30 s: without the trigger they would not have run yet
      assert.is_true(t.liveness - t.startup < 0.5)
      assert.is_true(t.readiness - t.startup < 0.5)
      -- and nothing ran before the startup success
      local early = log:events("probe_result", { probe = "live" })
      assert.are.equal(1, #early)
    end)
  end)
end)
