-- Nothing left behind: what probe commands and services leave outside
-- their process group (`setsid`, `setsid -f`, a double fork, a daemon
-- that ignores SIGTERM or execs with an empty environment) is ended by
-- the host: a probe's once its command has ended, a service's when that
-- process exits (not another service's), and everything at SIGTERM; `sonde
-- once` too.
--
-- Every leftover is a `sleep` with a unique number ("301.123456"): after
-- each spec, whatever still carries one is killed by pid (a broken host
-- must not leave them on the machine).
local helpers = require "helpers"

local script = helpers.script

-- A list of strings as Lua source.
local function lit(list)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = string.format("%q", v) end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

describe("host: escaped descendants", function()
  -- unique sleep durations "<base>.<random>" (spec/helpers.lua)
  local tags = helpers.tags()
  local tag, left_with, left_all = tags.new, tags.left, tags.left_all

  after_each(function()
    helpers.cleanup_hosts()
    tags.kill()
  end)

  local function start(path)
    return helpers.host_start { "--log-format", "json", path }
  end

  local function sh(cmd)
    -- (`$` is sonde's expansion character: `$$` is one `$`)
    return { "sh", "-c", (cmd:gsub("%$", "$$")) }
  end

  it("a probe command's setsid and setsid -f children end once it has "
    .. "ended, while the host runs", function()
    local t1, t2, t3 = tag(301), tag(302), tag(303)
    local path = script("probe_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "esc", period = 60, timeout = 5,
        exec = { command = %s } }
    ]], lit(sh(string.format(
      -- one in a new session with its output elsewhere, one that holds
      -- the probe's stdout (the run drains it), a double fork whose
      -- grandchild left the group
      "setsid sh -c 'sleep %s' >/dev/null 2>&1 & setsid -f sleep %s; "
      .. "sh -c 'setsid sleep %s >/dev/null 2>&1 &' ; echo ok", t1, t2, t3)))))
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "esc" }) >= 1
    end, 15), h:stderr())
    local r = h:events("probe_result", { probe = "esc" })[1]
    assert.are.same({ "success", "ok\n" }, { r.status, r.output })
    -- ended while the host runs on (the next run is a minute away)
    local gone = h:wait_for(function()
      return #left_all { t1, t2, t3 } == 0
    end, 10)
    assert.is_truthy(gone, "left: "
      .. helpers.describe_procs(left_all { t1, t2, t3 }))
    assert.is_true(h:alive())
    assert.are.equal(0, h:term())
  end)

  -- The timeout result comes at the deadline; the host kills the command
  -- (SIGKILL after its 1 s grace) and then ends what it left behind.
  it("a timed-out probe command ignoring SIGTERM: the result at the "
    .. "deadline; the command and its escaped child end afterwards", function()
    local t1, t2 = tag(321), tag(322)
    local path = script("timeout_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "slow", period = 60, timeout = 0.5,
        exec = { command = %s } }
    ]], lit(sh(string.format(
      "setsid -f sleep %s; trap '' TERM; exec sleep %s", t1, t2)))))
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "slow" }) >= 1
    end, 15), h:stderr())
    local r = h:events("probe_result", { probe = "slow" })[1]
    assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
    assert.is_true(r.duration < 1.4, "duration " .. tostring(r.duration))
    local gone = h:wait_for(function()
      return #left_all { t1, t2 } == 0
    end, 10)
    assert.is_truthy(gone, "left: " .. helpers.describe_procs(left_all { t1, t2 }))
    assert.is_true(h:alive())
    assert.are.equal(0, h:term())
  end)

  it("an exec action's setsid -f child ends once the action has ended",
    function()
    local t1 = tag(313)
    local path = script("action_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "bad", kind = "liveness", period = 60,
        timeout = 5, failure_threshold = 1,
        exec = { command = { "false" } },
        on_failure = sonde.action.exec { command = %s } }
    ]], lit(sh(string.format("setsid -f sleep %s; echo done", t1)))))
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("action", { probe = "bad", status = "done" }) >= 1
    end, 15), h:stderr())
    local gone = h:wait_for(function() return #left_with(t1) == 0 end, 10)
    assert.is_truthy(gone, "left: " .. helpers.describe_procs(left_with(t1)))
    assert.is_true(h:alive())
    assert.are.equal(0, h:term())
  end)

  it("a service that daemonizes a child and exits: the child ends with "
    .. "each instance; another service's escaped child survives those "
    .. "restarts until SIGTERM", function()
    local tb, ta = tag(304), tag(305)
    local path = script("service_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "steady", grace = 1,
        command = %s }
      sonde.service { name = "crashy", grace = 1,
        restart = { backoff = 0.3, max_backoff = 0.3 },
        command = %s }
    ]], lit(sh(string.format(
        "setsid -f sleep %s; exec sleep 1000", ta))),
      lit(sh(string.format(
        "setsid -f sleep %s$$ >/dev/null 2>&1; sleep 0.2; exit 1", tb)))))
    local h = start(path)
    -- steady's escaped child, seen once
    assert.is_truthy(h:wait_for(function() return #left_with(ta) == 1 end,
      15), h:stderr())
    local steady_child = left_with(ta)[1].pid
    local function exits(x)
      return #x:events("service_exit", { service = "crashy" })
    end
    assert.is_truthy(h:wait_for(function(x) return exits(x) >= 4 end, 20),
      h:stderr())
    -- at most the running instance's child is left of crashy's (each one
    -- has its own number: sleep <tag><pid>)
    local ok = h:wait_for(function() return #left_with(tb) <= 1 end, 10)
    assert.is_truthy(ok, "left: " .. helpers.describe_procs(left_with(tb)))
    -- and steady's is the same process as before
    local still = left_with(ta)
    assert.are.equal(1, #still, helpers.describe_procs(still))
    assert.are.equal(steady_child, still[1].pid)
    assert.are.equal(0, h:term())
    assert.are.same({}, left_all { ta, tb })
  end)

  it("SIGTERM ends every escaped descendant: one that ignores SIGTERM "
    .. "(SIGKILL after the grace), one with an empty environment, a "
    .. "probe's that still runs; the host exits 0 within the grace", function()
    local t1, t2, t3, t4 = tag(306), tag(307), tag(308), tag(309)
    local path = script("term_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "daemons", grace = 1,
        command = %s }
      sonde.probe { name = "slow", period = 60, timeout = 30,
        exec = { command = %s } }
    ]], lit(sh(string.format(
        "setsid -f sleep %s; setsid -f env -i /bin/sleep %s; "
        .. "setsid -f sh -c \"trap '' TERM; exec sleep %s\"; exec sleep 1000",
        t1, t2, t3))),
      lit(sh(string.format(
        "setsid -f sleep %s >/dev/null 2>&1; exec sleep 1000", t4)))))
    local h = start(path)
    local all = { t1, t2, t3, t4 }
    assert.is_truthy(h:wait_for(function() return #left_all(all) == 4 end,
      15), h:stderr() .. helpers.describe_procs(left_all(all)))
    local t0 = helpers.now()
    assert.are.equal(0, h:term(20))
    local took = helpers.now() - t0
    assert.are.same({}, left_all(all),
      helpers.describe_procs(left_all(all)))
    assert.is_true(took < 10, "SIGTERM took " .. took .. " s")
  end)

  it("sonde.stop() from the script ends them too", function()
    local t1 = tag(310)
    local path = script("stop_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "p", period = 60, timeout = 5,
        exec = { command = %s },
        on_result = function() sonde.stop() end }
    ]], lit(sh(string.format(
        "setsid -f sh -c \"trap '' TERM; exec sleep %s\" >/dev/null 2>&1; "
        .. "echo ok", t1)))))
    local h = start(path)
    assert.are.equal(0, h:wait(20), h:stderr())
    assert.are.same({}, left_with(t1), helpers.describe_procs(left_with(t1)))
  end)

  it("os.exit from a hook ends them too: a running service's and a "
    .. "running probe command's escaped children, one already re-parented",
    function()
    local t1, t2, t3 = tag(314), tag(315), tag(316)
    local go = helpers.scratch() .. "/go"
    local path = script("exit_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "daemons", grace = 1, command = %s }
      sonde.probe { name = "slow", period = 60, timeout = 30,
        exec = { command = %s } }
      sonde.probe { name = "quit", period = 0.2, initial_delay = 0.5,
        exec = { command = { "cat", %q } },
        on_result = function(r) if r.status == "success" then os.exit(4) end end }
    ]], lit(sh(string.format(
        "setsid sh -c \"trap '' TERM; exec sleep %s\" & "
        .. "setsid -f sleep %s; exec sleep 1000", t1, t2))),
      lit(sh(string.format("setsid sleep %s & exec sleep 1000", t3))),
      go))
    local h = start(path)
    local all = { t1, t2, t3 }
    assert.is_truthy(h:wait_for(function() return #left_all(all) == 3 end,
      15), h:stderr() .. helpers.describe_procs(left_all(all)))
    helpers.write(go, "")           -- the hook calls os.exit(4)
    assert.are.equal(4, h:wait(20), h:stderr())
    assert.is_truthy(helpers.eventually(function()
      return #left_all(all) == 0
    end, 3), helpers.describe_procs(left_all(all)))
  end)

  it("an escaped process nobody owns (empty environment), left alone, is "
    .. "reaped once it exits by itself, long after its command", function()
    -- SIGCHLD is watched again after each scan: this exit, with no other
    -- child exiting around it, is what makes the next scan
    local t1 = tag(1)                      -- sleep 1.<random> s
    local path = script("late_exit.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "p", period = 60, timeout = 5,
        exec = { command = %s } }
    ]], lit(sh(string.format(
        "setsid -f env -i /bin/sleep %s >/dev/null 2>&1; echo ok", t1)))))
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result", { probe = "p" }) >= 1
    end, 15), h:stderr())
    assert.are.same({ "success", "ok\n" },
      { h:events("probe_result")[1].status, h:events("probe_result")[1].output })
    assert.is_truthy(helpers.eventually(function()
      return #left_with(t1) == 0
    end, 10), helpers.describe_procs(left_with(t1)))
    -- it exited as a child of the host: reaped, no zombie stays
    assert.is_truthy(helpers.eventually(function()
      return #helpers.zombies_of(h.pid) == 0
    end, 3), helpers.describe_procs(helpers.zombies_of(h.pid)))
    assert.is_true(h:alive(), h:stderr())
  end)

  it("sonde once ends what its probes left behind before it exits",
    function()
    local t1, t2 = tag(311), tag(312)
    local path = script("once_escape.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "p", timeout = 5,
        exec = { command = %s } }
    ]], lit(sh(string.format(
        "setsid -f sleep %s; setsid -f env -i /bin/sleep %s >/dev/null; "
        .. "echo ok", t1, t2)))))
    local rc, out, err = helpers.host_run({ "once", path }, nil, 30)
    assert.are.equal(0, rc, out .. err)
    assert.is_truthy(out:find("success", 1, true), out)
    assert.are.same({}, left_all { t1, t2 },
      helpers.describe_procs(left_all { t1, t2 }))
  end)
end)
