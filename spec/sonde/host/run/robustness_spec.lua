-- The host under misuse and load (regressions): hooks and checks that
-- will not stop, unprintable errors, scripts whose top level never ends,
-- os.exit from a hook, a service flooding one endless line, hundreds of
-- probes at once, reloads that replace a service, foreign service objects,
-- late declarations.
--
-- Every host runs as a subprocess (spec/helpers.lua: H.host_start),
-- with JSON log lines; after_each stops every host started (TERM, then
-- KILL, and the process groups of its services) even when a spec failed.
local helpers = require "helpers"

local script = helpers.script

local replace, index_of, after = helpers.replace, helpers.index_of, helpers.after

-- Short view of a list of results, for assertion messages.
local function show(list)
  local parts = {}
  for i, e in ipairs(list) do
    if i > 5 then parts[#parts + 1] = "..." break end
    parts[#parts + 1] = string.format("%s/%s %q", tostring(e.status),
      tostring(e.reason), tostring(e.output))
  end
  return table.concat(parts, "; ")
end

-- Pids of the zombie children of process `ppid`.
local function zombies_of(ppid)
  return helpers.pids_of(helpers.zombies_of(ppid))
end

describe("host robustness", function()
  -- unique numbers for command lines ("1000.123456"): after_each kills
  -- (by pid) whatever process still has one, in case a broken host left a
  -- service or a probe command behind (spec/helpers.lua)
  local tags = helpers.tags()
  local tag, left_with = tags.new, tags.left

  after_each(function()
    helpers.cleanup_hosts()
    tags.kill()
  end)

  local function start(path)
    return helpers.host_start { "--log-format", "json", path }
  end

  local function results_of(h, probe, where)
    local w = { probe = probe }
    for k, v in pairs(where or {}) do w[k] = v end
    return h:events("probe_result", w)
  end

  -- SIGTERM: the host exits 0 within `bound` seconds.
  local function term_ok(h, bound)
    local t0 = helpers.now()
    h:signal("TERM")
    local rc = h:wait((bound or 5) + 10)
    local took = helpers.now() - t0
    assert.are.equal(0, rc, "exit code after SIGTERM; log:\n"
      .. h:stderr():sub(-3000))
    assert.is_true(took < (bound or 5), "SIGTERM took " .. took .. " s")
  end

  -------------------------------------------------------------------------
  -- 1. hooks that catch their own time-limit error
  -------------------------------------------------------------------------
  it("a hook that pcalls around its own time limit is still stopped: "
    .. "unknown/hook_error, the other probes keep running, SIGTERM works",
    function()
    local path = script("pcall_hook.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "stubborn", period = 0.2,
        exec = { command = { "true" } },
        on_result = function()
          while true do pcall(function() while true do end end) end
        end }
      sonde.probe { name = "healthy", period = 0.2,
        exec = { command = { "true" } } }
    ]])
    local h = start(path)
    local t0 = helpers.now()
    local ok = h:wait_for(function(x)
      return #results_of(x, "healthy") >= 5 and #results_of(x, "stubborn") >= 1
    end, 3)
    assert.is_truthy(ok, string.format("after %.1f s: healthy %d, stubborn %d"
      .. "\n%s", helpers.now() - t0, #results_of(h, "healthy"),
      #results_of(h, "stubborn"), h:stderr():sub(-3000)))
    assert.is_true(h:alive())
    local stub = results_of(h, "stubborn")
    assert.are.equal("unknown", stub[1].status)
    assert.are.equal("hook_error", stub[1].reason)
    for _, r in ipairs(stub) do
      assert.are.same({ "unknown", "hook_error" }, { r.status, r.reason })
    end
    local herr = h:events("hook_error", { probe = "stubborn",
      hook = "on_result" })
    assert.is_true(#herr >= 1)
    assert.is_truthy(herr[1].error:find("time limit", 1, true), herr[1].error)
    for _, r in ipairs(results_of(h, "healthy")) do
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end
    term_ok(h, 5)
  end)

  -------------------------------------------------------------------------
  -- 2. custom checks and hooks that misbehave
  -------------------------------------------------------------------------
  describe("custom checks and hooks that misbehave", function()
    -- run `decl` (a probe named "bad") next to a healthy probe; wait for
    -- `n` results of bad, each of them `status` and `reason`; the healthy
    -- probe keeps running after bad's first result; SIGTERM still works.
    -- Returns the host.
    local function with_bad_probe(decl, n, status, reason)
      local path = script("bad.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "healthy", period = 0.2,
          exec = { command = { "true" } } }
      ]] .. decl)
      local h = start(path)
      local ok = h:wait_for(function(x)
        return #results_of(x, "bad") >= n end, 10)
      assert.is_truthy(ok, "results of bad: " .. #results_of(h, "bad")
        .. "\n" .. h:stderr():sub(-3000))
      local evs = h:events()
      local first = index_of(evs, "probe_result", { probe = "bad" })
      local base = #helpers.select(after(evs, first), "probe_result",
        { probe = "healthy" })
      assert.is_truthy(h:wait_for(function(x)
        return #helpers.select(after(x:events(), first), "probe_result",
          { probe = "healthy" }) >= base + 3
      end, 10), "the healthy probe stopped\n" .. h:stderr():sub(-3000))
      assert.is_true(h:alive())
      local bad = results_of(h, "bad")
      term_ok(h, 5)
      for _, r in ipairs(bad) do
        assert.are.same({ status, reason }, { r.status, r.reason }, show(bad))
      end
      return h
    end

    it("a check stuck in `while true do end` past its timeout (check_cpu "
      .. "above it) fails with timeout", function()
      with_bad_probe([[
        sonde.probe { name = "bad", period = 1, timeout = 0.5, check_cpu = 1,
          check = function() while true do end end }
      ]], 2, "failure", "timeout")
    end)

    it("a check calling coroutine.yield() fails with check_error",
      function()
      with_bad_probe([[
        sonde.probe { name = "bad", period = 0.3, timeout = 0.5,
          check = function() coroutine.yield() return "success" end }
      ]], 2, "failure", "check_error")
    end)

    it("a check returning a table whose __index raises fails with "
      .. "check_error", function()
      with_bad_probe([[
        sonde.probe { name = "bad", period = 0.3, timeout = 0.5,
          check = function()
            return setmetatable({}, { __index = function()
              error("no fields here")
            end })
          end }
      ]], 2, "failure", "check_error")
    end)

    it("on_result raising an error object whose __tostring raises: "
      .. "unknown/hook_error", function()
      local h = with_bad_probe([[
        sonde.probe { name = "bad", period = 0.3,
          exec = { command = { "true" } },
          on_result = function()
            error(setmetatable({}, { __tostring = function()
              error("cannot print this")
            end }))
          end }
      ]], 2, "unknown", "hook_error")
      assert.is_true(#h:events("hook_error", { probe = "bad",
        hook = "on_result" }) >= 2)
      assert.are.equal(0, #h:events("task_error"))
    end)
  end)

  -------------------------------------------------------------------------
  -- 3. a top level that never ends
  -------------------------------------------------------------------------
  describe("a script whose top level loops forever", function()
    it("sonde check: exit 2, the top level ran too long", function()
      local path = script("forever.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "p", exec = { command = { "true" } } }
        while true do end
      ]])
      local t0 = helpers.now()
      local rc, out, err = helpers.host_run({ "check", path }, nil, 40)
      local took = helpers.now() - t0
      assert.are.equal(2, rc, err)
      assert.are.equal("", out)
      assert.is_true(took < 15, "check took " .. took .. " s")
      assert.is_truthy(err:find(path, 1, true), err)
      assert.is_truthy(err:find("top level ran for more than", 1, true), err)
    end)

    it("SIGHUP into it: reload failed, the old probes keep running",
      function()
      local path = script("hup.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "tick", period = 0.2,
          exec = { command = { "true" } } }
      ]])
      local h = start(path)
      assert.is_truthy(h:wait_for(function(x)
        return #results_of(x, "tick") >= 3 end, 15), h:stderr())
      replace(path, [[
        local sonde = require "sonde"
        sonde.probe { name = "tick", period = 0.2,
          exec = { command = { "false" } } }
        while true do end
      ]])
      h:signal("HUP")
      assert.is_truthy(h:wait_for(function(x)
        return #x:events("reload") >= 1 end, 25), h:stderr():sub(-3000))
      local rel = h:events("reload")[1]
      assert.are.same({ "failed", "error" }, { rel.status, rel.level })
      assert.is_truthy(rel.error:find("top level ran for more than", 1, true),
        rel.error)
      local evs = h:events()
      local i = index_of(evs, "reload")
      assert.is_truthy(h:wait_for(function(x)
        return #helpers.select(after(x:events(), i), "probe_result",
          { probe = "tick" }) >= 3
      end, 10), h:stderr():sub(-3000))
      assert.is_true(h:alive())
      -- still the old probe: `true`, not the new script's `false`
      for _, r in ipairs(results_of(h, "tick")) do
        assert.are.same({ "success", "ok" }, { r.status, r.reason })
      end
      term_ok(h, 5)
    end)
  end)

  -------------------------------------------------------------------------
  -- 4. os.exit inside a hook
  -------------------------------------------------------------------------
  it("os.exit(3) in a hook: the host exits 3 and its service is gone",
    function()
    local stag, ptag = tag(1234), tag(2345)
    local path = script("exit.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "sleeper", command = { "sleep", %q } }
      sonde.probe { name = "slow", period = 30, timeout = 100,
        exec = { command = { "sleep", %q } } }
      sonde.probe { name = "quit", period = 0.2, initial_delay = 1,
        exec = { command = { "true" } },
        on_result = function() os.exit(3) end }
    ]], stag, ptag))
    local h = start(path)
    local rc = h:wait(20)
    assert.are.equal(3, rc, h:stderr():sub(-3000))
    local starts = h:events("service_start", { service = "sleeper" })
    assert.are.equal(1, #starts, h:stderr())
    local pid = starts[1].pid
    assert.is_truthy(helpers.eventually(function() return helpers.gone(pid) end, 3),
      "service pid " .. pid .. " still there")
    local svc_left = left_with("sleep " .. stag)
    assert.are.equal(0, #svc_left, helpers.describe_procs(svc_left))
    -- the probe command that was still running went with it
    local probe_left = left_with("sleep " .. ptag)
    assert.are.equal(0, #probe_left, helpers.describe_procs(probe_left))
  end)

  -------------------------------------------------------------------------
  -- 5. a service writing 3 MB without a newline
  -------------------------------------------------------------------------
  it("a service writing 3 MB without a newline: probes keep their "
    .. "schedule, the line is logged in pieces of at most 4096 bytes",
    function()
    local path = script("flood.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "flood", command = { "sh", "-c",
        "head -c 3000000 /dev/zero | tr '\\0' x; sleep %s" } }
      sonde.probe { name = "healthy", period = 0.2,
        exec = { command = { "true" } } }
    ]], tag(1000)))
    local h = start(path)
    local t0 = helpers.now()
    local ok = h:wait_for(function(x)
      return #results_of(x, "healthy") >= 8 end, 3)
    assert.is_truthy(ok, string.format("healthy results after %.1f s: %d",
      helpers.now() - t0, #results_of(h, "healthy")))
    assert.is_true(h:alive())
    term_ok(h, 5)
    local out = h:events("service_output", { service = "flood" })
    local pieces, partial, too_long = {}, 0, 0
    for _, e in ipairs(out) do
      assert.are.equal("stdout", e.stream)
      if #e.line > 4096 then too_long = too_long + 1 end
      if e.partial == true then partial = partial + 1 end
      pieces[#pieces + 1] = e.line
    end
    assert.are.equal(0, too_long, "service_output lines over 4096 bytes")
    -- 3000000 = 732 * 4096 + 1728: 732 partial pieces, then the rest at
    -- the end of the output
    assert.are.equal(733, #out)
    assert.are.equal(732, partial)
    for i = 1, 732 do
      assert.are.equal(4096, #out[i].line)
      assert.is_true(out[i].partial)
    end
    assert.are.equal(1728, #out[733].line)
    assert.is_nil(out[733].partial)
    local all = table.concat(pieces)
    assert.are.equal(3000000, #all)
    assert.is_nil(all:find("[^x]"))
  end)

  -------------------------------------------------------------------------
  -- 6. many probes at once
  -------------------------------------------------------------------------
  it("300 exec probes every 0.2 s: no timeouts, SIGTERM ends it, no "
    .. "zombie children left", function()
    local path = script("many.lua", [[
      local sonde = require "sonde"
      for i = 1, 300 do
        sonde.probe { name = "p" .. i, period = 0.2,
          exec = { command = { "true" } } }
      end
    ]])
    local h = start(path)
    helpers.sleep(4)
    assert.is_true(h:alive(), h:stderr():sub(-3000))
    -- zombies of the host now must be reaped soon after
    local z1 = zombies_of(h.pid)
    helpers.sleep(1)
    local still = {}
    local z2 = {}
    for _, pid in ipairs(zombies_of(h.pid)) do z2[pid] = true end
    for _, pid in ipairs(z1) do
      if z2[pid] then still[#still + 1] = pid end
    end
    assert.are.equal(0, #still, "zombie children of the host for 1 s: "
      .. table.concat(still, " "))
    term_ok(h, 5.5)
    assert.are.equal(0, #zombies_of(h.pid))
    local results = h:events("probe_result")
    assert.is_true(#results >= 300, "only " .. #results .. " results")
    local timeouts, other = {}, {}
    for _, r in ipairs(results) do
      if r.status == "failure" and r.reason == "timeout" then
        timeouts[#timeouts + 1] = r
      elseif r.status ~= "success" then
        other[#other + 1] = r
      end
    end
    assert.are.equal(0, #timeouts, "failure timeout results of true: "
      .. show(timeouts))
    assert.are.equal(0, #other, "results other than success: " .. show(other))
  end)

  -------------------------------------------------------------------------
  -- 7. reload replacing a service
  -------------------------------------------------------------------------
  it("a reload changing a service's command: the old instance exits "
    .. "before the new one starts", function()
    -- the command carries the generation: sleep 1000.N, then 1001.N
    local t1 = tag(1000)
    local t2 = "1001" .. t1:sub(5)
    tags.add(t2)
    local function v(arg)
      return string.format([[
        local sonde = require "sonde"
        sonde.service { name = "svc", command = { "sleep", "%s" } }
        sonde.probe { name = "tick", period = 0.2,
          exec = { command = { "true" } } }
      ]], arg)
    end
    local path = script("svc.lua", v(t1))
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("service_start", { service = "svc" }) >= 1
        and #results_of(x, "tick") >= 2
    end, 15), h:stderr())
    local old = h:events("service_start", { service = "svc" })[1]
    replace(path, v(t2))
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("service_start", { service = "svc" }) >= 2 end, 15),
      h:stderr():sub(-3000))
    assert.are.equal("ok", h:events("reload")[1].status)
    local evs = h:events()
    local starts = helpers.select(evs, "service_start", { service = "svc" })
    assert.are.equal(2, #starts)
    assert.are.equal("sleep " .. t1, old.command)
    assert.are.equal("sleep " .. t2, starts[2].command)
    local i_exit = index_of(evs, "service_exit", { service = "svc",
      pid = old.pid })
    local i_start = index_of(evs, "service_start", { service = "svc",
      pid = starts[2].pid })
    assert.is_truthy(i_exit, "no service_exit of the old instance")
    assert.is_true(i_exit < i_start, "the new service_start (event "
      .. i_start .. ") came before the old service_exit (event " .. i_exit
      .. ")")
    assert.is_true(helpers.gone(old.pid))
    -- (its start is logged when spawned: its exec may not be done yet, and
    -- /proc shows no command line while the exec replaces the image)
    local cmd
    h:wait_for(function()
      cmd = (helpers.read_file(string.format("/proc/%d/cmdline",
        starts[2].pid)) or ""):gsub("%z$", "")
      return cmd == "sleep\0" .. t2
    end, 5)
    assert.are.equal("sleep\0" .. t2, cmd)
    term_ok(h, 5)
    assert.is_true(helpers.gone(starts[2].pid))
  end)

  -------------------------------------------------------------------------
  -- 8. load errors
  -------------------------------------------------------------------------
  describe("load errors", function()
    it("a probe naming a service object not declared by the script",
      function()
      local path = script("foreign.lua", [[
        local sonde = require "sonde"
        local x = require("sonde.service").new { name = "x",
          command = { "true" } }
        sonde.probe { name = "p", service = x,
          exec = { command = { "true" } } }
      ]])
      local rc, out, err = helpers.host_run { "check", path }
      assert.are.equal(2, rc, err)
      assert.are.equal("", out)
      assert.is_truthy(err:find('probe "p": service: ', 1, true), err)
      assert.is_truthy(err:find('"x"', 1, true), err)
    end)

    it("restart = { backoff = 0 }", function()
      local path = script("backoff.lua", [[
        local sonde = require "sonde"
        sonde.service { name = "s", command = { "sleep", "600" },
          restart = { backoff = 0 } }
      ]])
      local rc, out, err = helpers.host_run { "check", path }
      assert.are.equal(2, rc, err)
      assert.are.equal("", out)
      assert.is_truthy(err:find('service "s": restart.backoff: must be > 0, '
        .. "got 0", 1, true), err)
    end)
  end)

  -------------------------------------------------------------------------
  -- 9. late declarations
  -------------------------------------------------------------------------
  it("a script that declares nothing, waits, then declares a probe: the "
    .. "probe runs and late_declaration is logged", function()
    local path = script("late.lua", [[
      local sonde = require "sonde"
      sonde.sleep(0.3)
      sonde.probe { name = "late", period = 0.2,
        exec = { command = { "true" } } }
    ]])
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return #results_of(x, "late") >= 3 end, 10), h:stderr():sub(-3000))
    local late = h:events("late_declaration", { probe = "late" })
    assert.are.equal(1, #late, h:stderr():sub(-3000))
    assert.are.equal("warn", late[1].level)
    assert.are.equal("string", type(late[1].detail))
    for _, r in ipairs(results_of(h, "late")) do
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end
    assert.is_true(h:alive())
  end)
end)
