-- The host while commands write as fast as they can (regressions): a
-- service running `yes` and a probe command running `yes` must not starve
-- the loop.  Probes keep their schedule, the service's output in the log is
-- rate-limited with a count of what was dropped, memory stays flat and
-- SIGTERM ends the host at once.
--
-- The host runs as a subprocess (spec/helpers.lua: H.host_start) with JSON
-- log lines; after_each stops it (TERM, then KILL, and the process groups
-- of its services) and kills whatever still carries this run's tag.
local helpers = require "helpers"

describe("host under an output flood", function()
  local tag = string.format("flood%d.%06d", helpers.pid(), math.random(0, 999999))

  after_each(function()
    helpers.cleanup_hosts()
    for _, p in ipairs(helpers.procs_matching(tag:gsub("%p", "%%%0"))) do
      if p.state ~= "Z" then
        os.execute(string.format("kill -KILL %d 2>/dev/null", p.pid))
      end
    end
  end)

  -- Lines of the host's log that have all of `needles` (plain text): cheap
  -- enough even for a log that floods (the original code's).
  local function count(h, needles)
    local n = 0
    for _, line in ipairs(helpers.lines(h:stderr())) do
      local all = true
      for _, s in ipairs(needles) do
        if not line:find(s, 1, true) then all = false break end
      end
      if all then n = n + 1 end
    end
    return n
  end

  local function ticks(h)
    return count(h, { '"event":"probe_result"', '"probe":"tick"' })
  end

  local function rss_kb(pid)
    local f = io.open("/proc/" .. pid .. "/status")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return tonumber(s:match("VmRSS:%s*(%d+)"))
  end

  it("a service and a probe command running `yes`: the probe keeps its "
    .. "period, the log is rate-limited, memory is flat, SIGTERM works",
    function()
    local path = helpers.script("flood.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "yes", command = { "yes", %q } }
      sonde.probe { name = "tick", period = 0.2,
        exec = { command = { "true" } } }
      sonde.probe { name = "spew", period = 1, timeout = 0.5,
        exec = { command = { "yes", %q } } }
    ]], tag, tag))
    local h = helpers.host_start { "--log-format", "json", path }
    local t0 = helpers.now()
    -- 0.2 s period: about 5 results a second; ask for a third of that
    local ok = h:wait_for(function(x) return ticks(x) >= 10 end, 10)
    assert.is_truthy(ok, string.format("tick results after %.1f s: %d\n%s",
      helpers.now() - t0, ticks(h), h:stderr():sub(1, 600)))
    local t1, n1, rss1 = helpers.now(), ticks(h), rss_kb(h.pid)
    ok = h:wait_for(function(x) return ticks(x) >= n1 + 10 end, 10)
    assert.is_truthy(ok, string.format("tick results in %.1f s more: %d",
      helpers.now() - t1, ticks(h) - n1))
    local rss2 = rss_kb(h.pid)
    assert.is_true(h:alive())
    -- memory: flat under the flood (bound loose by orders of magnitude)
    assert.is_true(rss2 - rss1 < 50 * 1024,
      string.format("RSS grew from %d kB to %d kB", rss1, rss2))
    -- SIGTERM ends the host promptly
    local t2 = helpers.now()
    local rc = h:term(10)
    local took = helpers.now() - t2
    assert.are.equal(0, rc, "exit code after SIGTERM (after " .. took .. " s)")
    assert.is_true(took < 10, "SIGTERM took " .. took .. " s")
    -- the flooding probe: each run times out with its output capped
    local spew = h:events("probe_result", { probe = "spew" })
    assert.is_true(#spew >= 1)
    for _, r in ipairs(spew) do
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(#r.output <= 10240)
    end
    -- the service's output: at most the burst per 10 s window, and the
    -- count of the rest logged at its exit
    local elapsed = helpers.now() - t0
    local lines = #h:events("service_output", { service = "yes" })
    assert.is_true(lines >= 1 and lines <= 1000 * (elapsed // 10 + 1),
      string.format("%d service_output lines in %.1f s", lines, elapsed))
    local dropped = h:events("service_output_dropped", { service = "yes" })
    assert.is_true(#dropped >= 1)
    assert.is_true(dropped[#dropped].dropped > 0)
  end)
end)
