-- sonde.config: one load of a script and everything it owns; what a
-- reload carries over and what it ends; a load that fails.  In-process,
-- with scripts given as functions (config.load takes a path or a
-- function), on the real loop.
local sonde = require "sonde"
local config = require "sonde.config"
local task = require "sonde.task"
local core = require "sonde.core"
local metrics = require "sonde.metrics"
local helpers = require "helpers"

local closer = helpers.closer

-- Run the loop for `seconds`, then stop the load `get()` returns, and run
-- until everything has ended.
local function run_for(seconds, get)
  assert.is_true(helpers.run_for(seconds, { load = get, max = 10 }))
end

describe("sonde.config", function()
  local log
  before_each(function() log = helpers.capture() end)
  after_each(function() log:close() end)

  it("a load owns its top level, tasks, timers, series; stop ends them",
    function()
    local trace, fired = {}, false
    local cfg = assert(config.load(function()
      sonde.metrics.gauge("things", "things")
      sonde.spawn(function()
        local c <close> = closer(trace, "spawned task closed")
        while true do sonde.sleep(0.05) end
      end)
      sonde.after(30, function() fired = true end)
      local c <close> = closer(trace, "top level closed")
      sonde.sleep(30)                     -- the top level waits
    end, {}, { name = "owned" }))
    assert.are.equal(2, cfg.scope.ntasks)
    assert.are.equal(1, cfg.scope.nops)
    assert.is_table(cfg.registry.by_name.things)
    cfg:start()
    run_for(0.3, function() return cfg end)
    table.sort(trace)
    assert.are.same({ "spawned task closed", "top level closed" }, trace)
    assert.is_false(fired)
    assert.are.equal(0, cfg.scope.ntasks)
    assert.are.equal(0, cfg.scope.nops)
    assert.are.equal("stopped", cfg.state)
  end)

  it("a load that fails ends what it started and names the error", function()
    local trace, fired = {}, false
    local cfg, err = config.load(function()
      sonde.spawn(function()
        local c <close> = closer(trace, "closed")
        sonde.sleep(30)
      end)
      sonde.after(0.05, function() fired = true end)
      error("broken script")
    end, {}, { name = "broken" })
    assert.is_nil(cfg)
    assert.matches("broken script", err)
    assert.are.same({ "closed" }, trace)
    assert.are.equal(0, core.pending())
    assert.is_false(fired)
  end)

  it("a top level that runs past the load bound fails to load", function()
    local saved = config.load_bound
    config.load_bound = 0.2
    local cfg, err = config.load(function() while true do end end, {},
      { name = "looping.lua" })
    config.load_bound = saved
    assert.is_nil(cfg)
    assert.are.equal("looping.lua: the script's top level ran for more than "
      .. "0.2 s without finishing or waiting, and was stopped", err)
  end)

  it("a plain lua5.4 script (tasks, then sonde.run()) runs past the load bound "
    .. "under the host", function()
    local saved = config.load_bound
    config.load_bound = 0.2
    task.hosted = true
    local trace = {}
    local cfg, co = config.load(function()
      for i = 1, 2 do
        sonde.spawn(function()
          for _ = 1, 4 do
            sonde.exec { command = { "true" } }
            sonde.sleep(0.1)
          end
          trace[#trace + 1] = "task " .. i
        end)
      end
      local returned = sonde.run()
      trace[#trace + 1] = "run returned " .. tostring(returned)
      -- busy for longer than the load bound: no bound applies any more
      local t0 = core.now()
      while core.now() - t0 < 0.4 do end
      trace[#trace + 1] = "top level done"
    end, {}, { name = "plain.lua" })
    task.hosted = false
    config.load_bound = saved
    assert.is_table(cfg, co)
    assert.are.equal("suspended", coroutine.status(co))   -- waits in run()
    cfg:start()
    assert(pcall(task.run))
    -- both tasks ended before run() returned, in either order: they run
    -- the same commands and sleeps at the same time
    local tasks = { trace[1], trace[2] }
    table.sort(tasks)
    assert.are.same({ "task 1", "task 2", "run returned true",
      "top level done" }, { tasks[1], tasks[2], trace[3], trace[4], trace[5] })
    assert.are.equal("dead", coroutine.status(co))
    cfg:stop()
  end)

  it("sonde.run() in a task of a load with running probes waits until the "
    .. "load is stopped", function()
    task.hosted = true
    local trace = {}
    local cfg
    cfg = assert(config.load(function()
      sonde.probe { name = "p", exec = { command = { "true" } }, period = 0.1 }
      local c <close> = closer(trace, "top level closed")
      sonde.run()
      -- run() waiting in a task returns once its load has stopped
      trace[#trace + 1] = "run returned, load " .. cfg.state
    end, {}, { name = "declares.lua" }))
    task.hosted = false
    cfg:start()
    run_for(0.5, function() return cfg end)
    assert.are.same({ "run returned, load stopped", "top level closed" }, trace)
    assert.is_true(cfg.probes[1].runs >= 3)
  end)

  describe("apply (a reload)", function()
    -- A script generation: a periodic task, a custom metric, a probe whose
    -- hook reads a top-level variable, a probe whose spec changes.
    local function script(gen, seen, ticks)
      return function()
        local g = sonde.metrics.gauge("generation", "generation " .. gen)
        g:set(gen)
        sonde.spawn(function()
          local c <close> = closer(seen, "task " .. gen .. " closed")
          while true do
            ticks[gen] = (ticks[gen] or 0) + 1
            sonde.sleep(0.05)
          end
        end)
        sonde.probe { name = "kept", exec = { command = { "true" } },
          period = 0.1,
          on_result = function() seen.hook = gen end }
        sonde.probe { name = "changed", exec = { command = { "true" } },
          period = 0.1 + gen / 1000 }
        if gen == 0 then
          sonde.probe { name = "removed", exec = { command = { "true" } },
            period = 0.1 }
        end
      end
    end

    it("keeps unchanged probes (state, counters, new hook values), ends the "
      .. "rest of the old load", function()
      local seen, ticks = {}, {}
      local current = assert(config.load(script(0, seen, ticks), {},
        { name = "gen0" }))
      current:start()
      local kept0 = current.probe_by_name.kept
      local changed0 = current.probe_by_name.changed
      local removed0 = current.probe_by_name.removed
      local runs_before
      core.timer(0.35, function()
        runs_before = kept0.runs
        local new = assert(config.load(script(1, seen, ticks), {},
          { name = "gen1" }))
        current = config.apply(current, new)
      end)
      run_for(0.8, function() return current end)
      -- kept: the same object, counters went on, the new hook ran
      assert.are.equal(kept0, current.probe_by_name.kept)
      assert.is_true(runs_before >= 2)
      assert.is_true(kept0.runs > runs_before)
      assert.are.equal(1, seen.hook)
      assert.are.equal("success", kept0.state)
      -- changed: replaced; removed: stopped
      assert.are_not.equal(changed0, current.probe_by_name.changed)
      assert.is_true(changed0.stopped)
      assert.is_true(removed0.stopped)
      assert.is_nil(current.probe_by_name.removed)
      -- the old task was closed at the reload, the new one at the stop
      assert.are.equal("task 0 closed", seen[1])
      assert.are.equal("task 1 closed", seen[2])
      -- the metric is the new load's only
      local text = metrics.render(current)
      local _, n = text:gsub("# TYPE generation gauge", "")
      assert.are.equal(1, n)
      assert.matches("# HELP generation generation 1\n", text, 1, true)
      assert.matches("\ngeneration 1\n", text, 1, true)
    end)

    it("after 50 reloads exactly one copy of the task runs, the metric is "
      .. "served once with the new definition, the hook sees the new values",
      function()
      local seen, ticks = {}, {}
      local current = assert(config.load(script(0, seen, ticks), {},
        { name = "gen0" }))
      current:start()
      local gen = 0
      local function reload()
        gen = gen + 1
        current = config.apply(current, assert(config.load(
          script(gen, seen, ticks), {}, { name = "gen" .. gen })))
        if gen < 50 then core.timer(0.01, reload) end
      end
      core.timer(0.05, reload)
      local last_ticks
      core.timer(1.2, function() last_ticks = ticks[50] end)
      run_for(1.5, function() return current end)
      assert.are.equal(50, gen)
      -- every generation's task closed, exactly once
      local closed = {}
      for _, v in ipairs(seen) do closed[v] = (closed[v] or 0) + 1 end
      for g = 0, 50 do
        assert.are.equal(1, closed["task " .. g .. " closed"], "task " .. g)
      end
      assert.are.equal(50, seen.hook)
      -- only generation 50 ticked in the end: one task, every 50 ms
      assert.is_true(ticks[50] - last_ticks <= 8, "ticks " .. ticks[50] - last_ticks)
      local text = metrics.render(current)
      local _, n = text:gsub("# TYPE generation gauge", "")
      assert.are.equal(1, n)
      assert.matches("# HELP generation generation 50\n# TYPE generation gauge\n"
        .. "generation 50\n", text, 1, true)
    end)

    -- Reload `current` with each generation in turn, `gap` seconds apart,
    -- and run for `seconds` in all: the events logged, and the last load.
    local function reloads(gens, gap, seconds)
      local capture = helpers.capture()
      local current = assert(config.load(gens[1], {}, { name = "gen1" }))
      current:start()
      local i = 1
      local function reload()
        i = i + 1
        current = config.apply(current, assert(config.load(gens[i], {},
          { name = "gen" .. i })))
        if i < #gens then core.timer(gap, reload) end
      end
      core.timer(gap, reload)
      local ok, err = pcall(helpers.run_for, seconds, { load = function()
        return current end, max = 10 })
      local evs = capture:all()
      capture:close()
      assert(ok, err)
      return evs, current
    end

    -- At most one instance of each service ran at any time.
    local function one_at_a_time(evs)
      local running, most = {}, {}
      for _, e in ipairs(evs) do
        local n = e.service
        if e.event == "service_start" then
          running[n] = (running[n] or 0) + 1
          most[n] = math.max(most[n] or 0, running[n])
        elseif e.event == "service_exit" then
          running[n] = running[n] - 1
        end
      end
      for n, m in pairs(most) do assert.are.equal(1, m, n) end
      return most
    end

    it("tasks the hooks of a kept probe started end with the old load",
      function()
      local ticks, closed = {}, {}
      local function gen(g)
        return function()
          local started = false
          sonde.probe { name = "watched", exec = { command = { "true" } },
            period = 0.1, on_result = function()
              if started then return end
              started = true
              sonde.spawn(function()
                local c <close> = closer(closed, g)
                while true do
                  ticks[g] = (ticks[g] or 0) + 1
                  sonde.sleep(0.02)
                end
              end)
            end }
        end
      end
      local _, current = reloads({ gen(1), gen(2), gen(3), gen(4), gen(5) },
        0.15, 1.2)
      assert.are.same({ 1, 2, 3, 4, 5 }, closed)
      assert.is_true(current.probe_by_name.watched.runs >= 8)
      for g = 1, 5 do assert.is_true(ticks[g] >= 1, "generation " .. g) end
    end)

    it("an old load's <close> handler that calls sonde.stop() leaves what the "
      .. "new load kept", function()
      local svc
      local evs, current = reloads({
        function()
          svc = sonde.service { name = "keep", command = { "sleep", "30" },
            grace = 1 }
          sonde.spawn(function()
            local c <close> = setmetatable({}, { __close = function()
              sonde.stop()
            end })
            sonde.sleep(30)
          end)
        end,
        function()
          sonde.service { name = "keep", command = { "sleep", "30" }, grace = 1 }
        end,
      }, 0.2, 0.6)
      assert.are.equal(svc, current.service_by_name.keep)
      -- one instance, stopped only by the end of the run
      assert.are.equal(1, #helpers.select(evs, "service_start"))
      local stops = helpers.select(evs, "service_stop")
      assert.are.equal(1, #stops)
      assert.are.equal(evs[#evs], stops[1])
    end)

    it("a replaced service starts only after every earlier instance exited, "
      .. "however fast the reloads come", function()
      local function gen(g)
        return function()
          sonde.service { name = "slow", grace = 0.4, command = { "sh", "-c",
            "trap '' TERM; sleep 30; : " .. g } }
        end
      end
      local evs = reloads({ gen(1), gen(2), gen(3) }, 0.1, 1.5)
      one_at_a_time(evs)
      local starts = helpers.select(evs, "service_start")
      assert.are.equal(2, #starts)            -- generation 2 never ran
      assert.matches(": 3$", starts[2].command)
    end)

    it("a service declared late waits for the one of the old load", function()
      local function gen(g)
        return function()
          sonde.probe { name = "p", exec = { command = { "true" } }, period = 1 }
          sonde.sleep(0.01)                   -- then declares, late
          sonde.service { name = "late", grace = 0.4, command = { "sh", "-c",
            "trap '' TERM; sleep 30; : " .. g } }
        end
      end
      local evs = reloads({ gen(1), gen(2) }, 0.2, 1.2)
      one_at_a_time(evs)
      assert.are.equal(2, #helpers.select(evs, "service_start"))
    end)

    it("compares specs without running their metamethods", function()
      local function gen(g)
        return function()
          local calls = 0
          -- pairs works once (the declaration), then raises
          local spec = setmetatable({ name = "odd", period = 0.1,
            exec = { command = { "true" } },
            on_result = function() end }, { __pairs = function(t)
              calls = calls + 1
              if calls > 1 then error("no pairs for " .. g) end
              return next, t, nil
            end })
          sonde.probe(spec)
        end
      end
      local evs, current = reloads({ gen(1), gen(2) }, 0.2, 0.5)
      assert.are.equal(1, #helpers.select(evs, "state_change", { probe = "odd" }))
      assert.is_true(current.probe_by_name.odd.runs >= 4)
    end)
  end)

  it("declarations into a stopped load are refused at the user's line",
    function()
    local cfg = config.new { name = "done.lua" }
    cfg:stop()
    local ok, err = pcall(cfg.probe, cfg, { name = "p",
      exec = { command = { "true" } } })
    assert.is_false(ok)
    assert.matches("sonde.probe: the script's load %(done.lua%) was stopped "
      .. "or replaced", err)
    assert.matches("^spec/sonde/config_spec.lua:%d+: ", err)
  end)
end)
