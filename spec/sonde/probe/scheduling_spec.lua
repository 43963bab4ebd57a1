-- Scheduling of declared probes: the first run at exactly initial_delay,
-- then a fixed rate without drift, runs never stacked, probes declared
-- together spread over their first period, and stopping a probe cancels
-- its in-flight run.
local sonde = require "sonde"
local helpers = require "helpers"

describe("probe scheduling", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  it("first run at initial_delay, then at a fixed rate (a run's own time "
    .. "does not push the next one)", function()
    local starts = {}
    sonde.probe {
      name = "rate", initial_delay = 0.5, period = 0.3, timeout = 2,
      -- each run takes 0.1 s: with a fixed delay the runs would be 0.4 s
      -- apart, with a fixed rate 0.3 s
      exec = { command = { "sleep", "0.1" } },
      on_result = function(r)
        starts[#starts + 1] = r.time
      end,
    }
    helpers.run_for(3.3)
    assert.is_true(#starts >= 8, "runs: " .. #starts)
    local span = starts[8] - starts[1]
    -- 7 periods: 2.1 s at a fixed rate; 2.8 s with a fixed delay
    assert.is_true(span > 1.9 and span < 2.45,
      string.format("7 intervals took %.3f s (fixed rate: 2.1)", span))
  end)

  it("the first run comes at initial_delay, not a period later", function()
    local t0 = sonde.now()
    local first
    sonde.probe {
      name = "delay", initial_delay = 0.6, period = 5,
      exec = { command = { "true" } },
      on_result = function() first = first or sonde.now() end,
    }
    helpers.run_for(1.2)
    assert.is_not_nil(first, "no run within 1.2 s")
    local d = first - t0
    assert.is_true(d >= 0.55 and d < 1.0, string.format("first run at %.3f s", d))
  end)

  it("a run longer than the period is never stacked: ticks are skipped",
    function()
    local runs = {}
    sonde.probe {
      name = "slow", period = 0.2, timeout = 2,
      exec = { command = { "sleep", "0.5" } },
      on_result = function(r)
        runs[#runs + 1] = { start = r.time, stop = r.time + r.duration }
      end,
    }
    local skipped = helpers.select(helpers.run_logged(2.2), "probe_skipped",
      { probe = "slow" })
    assert.is_true(#runs >= 2, "runs: " .. #runs)
    for i = 2, #runs do
      assert.is_true(runs[i].start >= runs[i - 1].stop - 0.01,
        string.format("run %d started at %.3f before run %d ended at %.3f",
          i, runs[i].start, i - 1, runs[i - 1].stop))
    end
    assert.is_true(#skipped >= 3, "probe_skipped events: " .. #skipped)
    assert.are.equal("overrun", skipped[1].why)
  end)

  it("probes declared together spread over their first period", function()
    local t0 = sonde.now()
    local first = {}
    for i = 1, 4 do
      local name = "spread" .. i
      sonde.probe {
        name = name, period = 1,
        exec = { command = { "true" } },
        on_result = function() first[name] = first[name] or (sonde.now() - t0) end,
      }
    end
    helpers.run_for(1.1)
    local times = {}
    for i = 1, 4 do
      assert.is_not_nil(first["spread" .. i], "spread" .. i .. " never ran")
      times[i] = first["spread" .. i]
    end
    table.sort(times)
    assert.is_true(times[1] < 0.2, "first at " .. times[1])
    assert.is_true(times[4] - times[1] >= 0.5,
      string.format("first runs within %.3f s of each other",
        times[4] - times[1]))
  end)

  it("stopping a probe cancels its in-flight run (the command is killed)",
    function()
    local dir = helpers.tmpdir()
    local pidfile = dir .. "/pid"
    local p = sonde.probe {
      name = "inflight", period = 10, timeout = 60,
      -- `$$$$` is `$$` after sonde's $(VAR) expansion
      exec = { command = { "sh", "-c", "echo $$$$ > " .. pidfile .. "; exec sleep 30" } },
      on_result = function() error("the run must not complete") end,
    }
    helpers.run_for(1, { at = { { 0.5, function() p:stop() end } } })
    local pid = tonumber(helpers.read_file(pidfile) or "")
    helpers.rmtree(dir)
    assert.is_not_nil(pid, "the command did not start")
    assert.is_true(helpers.eventually(function()
      return helpers.proc_stat(pid) == nil
    end, 3), "process " .. pid .. " still exists")
  end)
end)
