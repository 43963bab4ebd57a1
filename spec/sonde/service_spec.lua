-- Supervised services: restart policy and the kubelet back-off, stop with
-- SIGTERM then SIGKILL after the grace, output lines into the log.
local sonde = require "sonde"
local helpers = require "helpers"

describe("services", function()
  local svcs

  before_each(function()
    helpers.fresh()
    svcs = {}
  end)

  after_each(function()
    helpers.fresh()
    local pids = {}
    for _, s in ipairs(svcs) do if s.pid then pids[#pids + 1] = s.pid end end
    helpers.kill_groups(pids)
  end)

  local function service(spec)
    local s = sonde.service(spec)
    svcs[#svcs + 1] = s
    return s
  end

  -- run the current configuration for `seconds`; the log's events
  local function run(seconds, at)
    return helpers.run_logged(seconds, { at = at })
  end

  it("a service that exits at once is restarted with the back-off "
    .. "0, 0.2, 0.4, 0.4...", function()
    local s = service {
      name = "crash", command = { "sh", "-c", "exit 3" },
      restart = { backoff = 0.2, max_backoff = 0.4 },
    }
    local evs = run(3.5)
    local restarts = helpers.select(evs, "service_restart", { service = "crash" })
    assert.is_true(#restarts >= 5, "restarts: " .. #restarts)
    local delays = {}
    for i, r in ipairs(restarts) do
      delays[i] = r.delay
      assert.are.same({ "exit", i }, { r.why, r.restarts })
    end
    local want = { 0, 0.2 }
    for i = 3, #restarts do want[i] = 0.4 end
    assert.are.same(want, delays)
    local exits = helpers.select(evs, "service_exit", { service = "crash" })
    assert.is_true(#exits >= #restarts)
    for i, e in ipairs(exits) do
      assert.are.same({ 3, "failure", "exit_code", i },
        { e.exit_code, e.status, e.reason, e.instance })
    end
    local starts = helpers.select(evs, "service_start", { service = "crash" })
    assert.is_true(#starts >= #restarts)
    for i, e in ipairs(starts) do
      assert.are.same({ i, "sh -c exit 3" }, { e.instance, e.command })
    end
    assert.are.equal(#restarts, s.restarts)
  end)

  it("the back-off count starts again after reset_after seconds of running",
    function()
    service {
      name = "flaky", command = { "sh", "-c", "sleep 0.4; exit 1" },
      restart = { backoff = 0.2, max_backoff = 0.4, reset_after = 0.3 },
    }
    local evs = run(2.2)
    local restarts = helpers.select(evs, "service_restart", { service = "flaky" })
    assert.is_true(#restarts >= 3, "restarts: " .. #restarts)
    for _, r in ipairs(restarts) do assert.are.equal(0, r.delay) end
  end)

  it("restart.policy never: not restarted", function()
    local s = service {
      name = "once", command = { "sh", "-c", "exit 3" },
      restart = { policy = "never", backoff = 0.2 },
    }
    local evs = run(1.2)
    assert.are.equal(0, #helpers.select(evs, "service_restart"))
    local exits = helpers.select(evs, "service_exit", { service = "once" })
    assert.are.equal(1, #exits)
    assert.are.equal(3, exits[1].exit_code)
    assert.are.equal(1, #helpers.select(evs, "service_start", { service = "once" }))
    assert.are.same({ 0, 1, "stopped" }, { s.restarts, s.instance, s.state })
  end)

  it("restart.policy on-failure: exit 0 is not restarted, exit 3 is",
    function()
    local ok0 = service {
      name = "ok0", command = { "sh", "-c", "exit 0" },
      restart = { policy = "on-failure", backoff = 0.2 },
    }
    local bad = service {
      name = "bad3", command = { "sh", "-c", "exit 3" },
      restart = { policy = "on-failure", backoff = 0.2, max_backoff = 0.2 },
    }
    local evs = run(1.5)
    assert.are.equal(0, #helpers.select(evs, "service_restart", { service = "ok0" }))
    assert.are.equal(1, #helpers.select(evs, "service_exit", { service = "ok0" }))
    assert.are.equal(0, helpers.select(evs, "service_exit",
      { service = "ok0" })[1].exit_code)
    assert.are.same({ 0, "stopped" }, { ok0.restarts, ok0.state })
    local r3 = helpers.select(evs, "service_restart", { service = "bad3" })
    assert.is_true(#r3 >= 2, "restarts of bad3: " .. #r3)
    assert.are.equal(#r3, bad.restarts)
  end)

  it("stop() sends SIGTERM, then SIGKILL after the grace (0.5 s), and "
    .. "leaves no process", function()
    local s = service {
      name = "stubborn",
      command = { "sh", "-c", 'trap "" TERM; sleep 60' },
      grace = 0.5,
    }
    local t_stop
    local evs = run(1.0, { { 0.999, function() t_stop = sonde.now() end } })
    local t_end = sonde.now()
    local took = t_end - t_stop
    assert.is_true(took >= 0.45 and took < 3, "stop took " .. took)
    local exits = helpers.select(evs, "service_exit", { service = "stubborn" })
    assert.are.equal(1, #exits)
    assert.are.equal(9, exits[1].signal)            -- SIGKILL
    assert.are.equal("signal", exits[1].reason)
    assert.are.equal(1, #helpers.select(evs, "service_stop",
      { service = "stubborn" }))
    assert.are.equal(0, #helpers.select(evs, "service_restart"))
    assert.are.equal("stopped", s.state)
    local gone = helpers.eventually(function()
      return #helpers.procs_in_groups(s.pid) == 0
    end, 3)
    assert.is_true(gone, helpers.describe_procs(
      helpers.procs_in_groups(s.pid)))
  end)

  it("stop() of a service that obeys SIGTERM does not wait for the grace",
    function()
    local s = service {
      name = "polite", command = { "sleep", "60" }, grace = 10,
    }
    local t_stop
    local evs = run(0.5, { { 0.499, function() t_stop = sonde.now() end } })
    local t_end = sonde.now()
    local exits = helpers.select(evs, "service_exit")
    assert.is_true(t_end - t_stop < 3, "stop took " .. (t_end - t_stop))
    assert.are.equal(1, #exits)
    assert.are.equal(15, exits[1].signal)           -- SIGTERM
    assert.are.equal("stopped", s.state)
  end)

  it("stdout and stderr lines are service_output events with the exact "
    .. "text", function()
    service {
      name = "talk",
      command = { "sh", "-c", [[echo hello; echo "two  words"; echo;
        printf '%s\n' 'tab	"quoted" \back'; echo err >&2; printf 'no newline']] },
      restart = { policy = "never" },
    }
    local evs = run(1.0)
    local out, errs = {}, {}
    for _, e in ipairs(helpers.select(evs, "service_output", { service = "talk" })) do
      if e.stream == "stdout" then out[#out + 1] = e.line
      else
        assert.are.equal("stderr", e.stream)
        errs[#errs + 1] = e.line
      end
    end
    assert.are.same({ "hello", "two  words", "", 'tab\t"quoted" \\back',
      "no newline" }, out)
    assert.are.same({ "err" }, errs)
  end)

  describe("output rate limit", function()
    local service_mod = require "sonde.service"
    local burst, window = service_mod.OUTPUT_BURST, service_mod.OUTPUT_WINDOW

    after_each(function()
      service_mod.OUTPUT_BURST, service_mod.OUTPUT_WINDOW = burst, window
    end)

    it("5000 lines: the first 1000 (the burst) are logged, the count of the "
      .. "rest is logged at the exit", function()
      assert.are.same({ 1000, 10 }, { burst, window })     -- as documented
      service {
        name = "chatty", command = { "seq", "5000" },
        restart = { policy = "never" },
      }
      local evs = run(1.5)
      local out = helpers.select(evs, "service_output", { service = "chatty" })
      assert.are.equal(1000, #out)
      for i, e in ipairs(out) do assert.are.equal(tostring(i), e.line) end
      local dropped = helpers.select(evs, "service_output_dropped",
        { service = "chatty" })
      assert.are.equal(1, #dropped)
      assert.are.same({ "warn", 4000, 10 },
        { dropped[1].level, dropped[1].dropped, dropped[1].window })
      local i = helpers.index_of(evs, "service_output_dropped")
      assert.is_true(i > helpers.index_of(evs, "service_output", { line = "1000" }))
      assert.is_true(i < helpers.index_of(evs, "service_exit"))
    end)

    it("the count is logged when the window ends, then lines are logged "
      .. "again", function()
      service_mod.OUTPUT_BURST, service_mod.OUTPUT_WINDOW = 10, 0.5
      service {
        name = "bursty",
        command = { "sh", "-c", "seq 100; sleep 1; echo again; sleep 30" },
        restart = { policy = "never" },
      }
      local evs = run(2)
      local out = helpers.select(evs, "service_output", { service = "bursty" })
      assert.are.equal(11, #out)
      assert.are.same({ "1", "10", "again" }, { out[1].line, out[10].line, out[11].line })
      local dropped = helpers.select(evs, "service_output_dropped",
        { service = "bursty" })
      assert.are.equal(1, #dropped)
      assert.are.equal(90, dropped[1].dropped)
      -- at the window's end, before the next line, long before the stop
      local i = helpers.index_of(evs, "service_output_dropped")
      assert.is_true(i < helpers.index_of(evs, "service_output", { line = "again" }))
    end)

    it("a crash loop is one flood: the limit spans the service's instances",
      function()
      service {
        name = "crashy", command = { "sh", "-c", "seq 600; exit 1" },
        restart = { backoff = 0.1, max_backoff = 0.1 },
      }
      local evs = run(1.5)
      local out = helpers.select(evs, "service_output", { service = "crashy" })
      assert.are.equal(1000, #out)
      local exits = helpers.select(evs, "service_exit", { service = "crashy" })
      assert.is_true(#exits >= 3, "exits " .. #exits)
      local total = 0
      for _, e in ipairs(helpers.select(evs, "service_output_dropped",
          { service = "crashy" })) do
        total = total + e.dropped
      end
      assert.are.equal(600 * #exits - 1000, total)
    end)
  end)
end)
