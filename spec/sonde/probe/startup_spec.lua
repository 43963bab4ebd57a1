-- A startup probe gates its service's liveness probe (kubelet: liveness
-- and readiness are disabled until the container has Started), again after
-- every restart; a startup probe that reaches its failure threshold
-- restarts the service.
local sonde = require "sonde"
local helpers = require "helpers"

local function touch(path) return helpers.write(path, "") end

describe("startup probe gating", function()
  local dir, svc

  before_each(function()
    helpers.fresh()
    dir = helpers.tmpdir()
  end)

  after_each(function()
    helpers.fresh()
    if svc and svc.pid then helpers.kill_groups { svc.pid } end
    svc = nil
    helpers.rmtree(dir)
  end)

  it("liveness runs only after startup succeeded, again after a restart",
    function()
    local seq = {}          -- every result, in order
    local t0 = sonde.now()
    svc = sonde.service {
      name = "app", command = { "sh", "-c", "sleep 60" },
      restart = { backoff = 0.2, max_backoff = 0.4 }, grace = 2,
    }
    -- the steps are driven by the results themselves, not by the clock:
    -- 1 s in: `started` appears; liveness 3 successes in instance 1: both
    -- files go (liveness fails 3 times -> restart); startup 3 failures in
    -- instance 2: both files come back; liveness 3 successes in instance
    -- 2: stop.
    local t_started, t_gone, t_back
    local count = {}
    local function record(r)
      local key = r.probe .. "#" .. svc.instance .. "#" .. r.status
      count[key] = (count[key] or 0) + 1
      seq[#seq + 1] = { probe = r.probe, status = r.status,
        instance = svc.instance, t = sonde.now() - t0 }
      if not t_gone and count["app-alive#1#success"] == 3 then
        t_gone = sonde.now() - t0
        os.remove(dir .. "/alive")
        os.remove(dir .. "/started")
      elseif not t_back and count["app-started#2#failure"] == 3 then
        t_back = sonde.now() - t0
        touch(dir .. "/started")
        touch(dir .. "/alive")
      elseif count["app-alive#2#success"] == 3 then
        sonde.after(0, helpers.stop_now)
      end
    end
    local startup = sonde.probe {
      name = "app-started", kind = "startup", service = svc,
      exec = { command = { "test", "-f", dir .. "/started" } },
      period = 0.2, timeout = 5, failure_threshold = 1000,
      on_result = record,
    }
    local live = sonde.probe {
      name = "app-alive", kind = "liveness", service = svc,
      exec = { command = { "test", "-f", dir .. "/alive" } },
      period = 0.2, timeout = 5, failure_threshold = 3,
      on_result = record,
    }
    touch(dir .. "/alive")
    local evs = helpers.run_logged(40, { at = {
      { 1.0, function()
          t_started = sonde.now() - t0
          touch(dir .. "/started")
        end },
    } })
    local restarts = helpers.select(evs, "service_restart")
    local starts = helpers.select(evs, "service_start")

    -- exactly one restart, by liveness, at once
    assert.are.equal(1, #restarts)
    assert.are.equal("liveness", restarts[1].why)
    assert.are.equal(0, restarts[1].delay)
    assert.are.same({ 1, 2 }, { svc.restarts, svc.instance })
    assert.are.equal(2, #starts)

    local function describe_seq()
      local out = {}
      for _, s in ipairs(seq) do
        out[#out + 1] = string.format("%s#%d %s %.2f", s.probe, s.instance,
          s.status, s.t)
      end
      return table.concat(out, "\n")
    end
    local msg = describe_seq()

    for inst = 1, 2 do
      local startup_success, n_fail_before, after_success = nil, 0, 0
      local live_runs, first_live = 0, nil
      for i, s in ipairs(seq) do
        if s.instance == inst then
          if s.probe == "app-started" then
            if startup_success then
              after_success = after_success + 1
            elseif s.status == "success" then
              startup_success = i
            else
              n_fail_before = n_fail_before + 1
            end
          else
            live_runs = live_runs + 1
            first_live = first_live or i
            assert.is_truthy(startup_success, "instance " .. inst
              .. ": liveness ran before startup succeeded:\n" .. msg)
          end
        end
      end
      assert.is_truthy(startup_success, "instance " .. inst
        .. ": startup never succeeded:\n" .. msg)
      -- startup failed a few times before its file appeared
      assert.is_true(n_fail_before >= 2, "instance " .. inst
        .. ": startup failures before success " .. n_fail_before .. "\n" .. msg)
      -- startup holds after its success
      assert.are.equal(0, after_success, "startup ran after its success:\n"
        .. msg)
      assert.is_true(live_runs >= 3, "instance " .. inst .. ": liveness runs "
        .. live_runs .. "\n" .. msg)
      assert.is_true(first_live > startup_success)
    end

    -- instance 1: liveness never ran before `started` existed
    assert.is_truthy(t_started and t_gone and t_back, msg)
    for _, s in ipairs(seq) do
      if s.probe == "app-alive" and s.instance == 1 then
        assert.is_true(s.t > t_started, "liveness ran at " .. s.t .. "\n"
          .. msg)
      end
    end
    -- instance 1 liveness: successes, then exactly 3 failures (then hold)
    local l1 = {}
    for _, s in ipairs(seq) do
      if s.probe == "app-alive" and s.instance == 1 then
        l1[#l1 + 1] = s.status == "success" and "S" or "F"
      end
    end
    assert.is_truthy(table.concat(l1):match("^S+FFF$"), table.concat(l1)
      .. "\n" .. msg)
    -- instance 2 liveness: successes only
    for _, s in ipairs(seq) do
      if s.probe == "app-alive" and s.instance == 2 then
        assert.are.equal("success", s.status, msg)
        -- not before the files came back
        assert.is_true(s.t > t_back, msg)
      end
    end
    assert.are.equal("success", startup.state)
    assert.are.equal("success", live.state)
  end)

  it("a startup probe that never succeeds restarts the service "
    .. "(why=startup); liveness never runs", function()
    local seq = {}
    svc = sonde.service {
      name = "slow", command = { "sh", "-c", "sleep 60" },
      restart = { backoff = 0.2, max_backoff = 0.4 }, grace = 2,
    }
    local live_runs = 0
    sonde.probe {
      name = "slow-started", kind = "startup", service = svc,
      exec = { command = { "test", "-f", dir .. "/started" } },
      period = 0.2, timeout = 5, failure_threshold = 3,
      on_result = function(r)
        seq[#seq + 1] = { instance = svc.instance, status = r.status }
      end,
    }
    sonde.probe {
      name = "slow-alive", kind = "liveness", service = svc,
      exec = { command = { "true" } },
      period = 0.2, timeout = 5,
      on_result = function() live_runs = live_runs + 1 end,
    }
    local evs = helpers.run_logged(3.5)
    local restarts = helpers.select(evs, "service_restart")
    local changes = helpers.select(evs, "state_change", { probe = "slow-started" })

    assert.are.equal(0, live_runs)
    assert.is_true(#restarts >= 2, "restarts: " .. #restarts)
    for i, r in ipairs(restarts) do
      assert.are.same({ "startup", "slow", i }, { r.why, r.service, r.restarts })
    end
    -- kubelet back-off: the first at once, then backoff doubling (0.2, 0.4)
    assert.are.equal(0, restarts[1].delay)
    assert.are.equal(0.2, restarts[2].delay)
    if restarts[3] then assert.are.equal(0.4, restarts[3].delay) end
    assert.are.equal(#restarts, svc.restarts)
    -- every instance but the last one: exactly 3 failures, then hold
    local per = {}
    for _, s in ipairs(seq) do
      assert.are.equal("failure", s.status)
      per[s.instance] = (per[s.instance] or 0) + 1
    end
    for inst = 1, svc.instance - 1 do
      assert.are.equal(3, per[inst], "startup runs of instance " .. inst)
    end
    -- each failed instance: unknown -> failure, then the seed again
    assert.are.same({ "unknown", "failure", "exit_code" },
      { changes[1].from, changes[1].to, changes[1].reason })
    assert.are.same({ "failure", "unknown", "new_instance" },
      { changes[2].from, changes[2].to, changes[2].reason })
  end)
end)
