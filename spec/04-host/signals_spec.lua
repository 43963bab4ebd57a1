-- The host in run mode and its signals: SIGTERM stops everything and exits
-- 0; SIGHUP reloads the script (a broken script keeps the old
-- configuration running; a changed one keeps what did not change, with its
-- state, and starts what is new).
local helpers = require "helpers"
local E = require "engine_helpers"

local dir

local function script(name, text)
  return helpers.write(dir .. "/" .. name, text)
end

-- Replace a script file atomically (the host may read it any time).
local function replace(path, text)
  helpers.write(path .. ".new", text)
  assert(os.rename(path .. ".new", path))
end

-- Index (in evs) of the first event matching name/where, or nil.
local function index_of(evs, name, where, from)
  for i = from or 1, #evs do
    local e = evs[i]
    if e.event == name then
      local ok = true
      for k, v in pairs(where or {}) do
        if e[k] ~= v then ok = false break end
      end
      if ok then return i end
    end
  end
end

local function after(evs, i)
  return table.move(evs, i + 1, #evs, 1, {})
end

describe("host signals", function()
  local hosts = {}

  before_each(function() dir = helpers.tmpdir() end)

  after_each(function()
    for _, h in ipairs(hosts) do h:cleanup() end
    hosts = {}
    helpers.rmtree(dir)
  end)

  local function start(path)
    local h = E.host_start { "--log-format", "json", path }
    hosts[#hosts + 1] = h
    return h
  end

  local function results_of(h, probe)
    return #h:events("probe_result", { probe = probe })
  end

  it("SIGTERM: the host stops its service and exits 0", function()
    local path = script("term.lua", [[
      local sonde = require "sonde"
      sonde.service { name = "sleeper", command = { "sleep", "600" } }
      sonde.probe { name = "tick", period = 0.2,
                    exec = { command = { "true" } } }
    ]])
    local h = start(path)
    local ok = h:wait_for(function(x) return results_of(x, "tick") >= 3 end,
      15)
    assert.is_truthy(ok, h:stderr())
    local starts = h:events("service_start", { service = "sleeper" })
    assert.are.equal(1, #starts)
    local pid = starts[1].pid
    assert.is_false(E.gone(pid))
    local t0 = helpers.now()
    h:signal("TERM")
    local rc = h:wait(10)
    local took = helpers.now() - t0
    assert.are.equal(0, rc, h:stderr())
    assert.is_true(took < 5, "exit took " .. took)
    assert.is_true(E.gone(pid), "service process " .. pid .. " still there")
    assert.are.equal(0, #helpers.procs_in_groups(pid),
      helpers.describe_procs(helpers.procs_in_groups(pid)))
    local evs = h:events()
    local stop = index_of(evs, "host_stop")
    assert.is_truthy(stop)
    assert.is_truthy(index_of(evs, "service_stop", { service = "sleeper" },
      stop))
    -- the service was not restarted on the way out
    assert.is_nil(index_of(evs, "service_restart"))
    -- no probe ran after the stop began
    assert.is_nil(index_of(evs, "probe_result", nil, stop + 1))
  end)

  it("SIGHUP with a broken script: reload failed, the old probes keep "
    .. "running", function()
    local path = script("hup.lua", [[
      local sonde = require "sonde"
      sonde.service { name = "sleeper", command = { "sleep", "600" } }
      sonde.probe { name = "tick", period = 0.2,
                    exec = { command = { "true" } } }
    ]])
    local h = start(path)
    assert.is_truthy(h:wait_for(function(x)
      return results_of(x, "tick") >= 3 end, 15), h:stderr())
    local pid = h:events("service_start")[1].pid

    replace(path, "local sonde = require 'sonde'\nsonde.probe { name = ")
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 1 end, 10), h:stderr())
    local rel = h:events("reload")[1]
    assert.are.equal("failed", rel.status)
    assert.are.equal("error", rel.level)
    assert.is_truthy(rel.error:find(path, 1, true), rel.error)

    -- bad spec: also refused
    replace(path, "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = 'tick', period = 0.01, exec = { command = "
      .. "{ 'true' } } }\n")
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 2 end, 10), h:stderr())
    rel = h:events("reload")[2]
    assert.are.equal("failed", rel.status)
    assert.is_truthy(rel.error:find('probe "tick": period: must be >= 0.1',
      1, true), rel.error)

    -- the old probe goes on after both reloads
    local function after_reload(x)
      local evs = x:events()
      local i = 0
      for j, e in ipairs(evs) do if e.event == "reload" then i = j end end
      return #E.select(after(evs, i), "probe_result", { probe = "tick" })
    end
    assert.is_truthy(h:wait_for(function(x) return after_reload(x) >= 3 end,
      10), h:stderr())
    assert.is_true(h:alive())
    -- the service was left alone
    assert.are.equal(1, #h:events("service_start"))
    assert.are.equal(0, #h:events("service_exit"))
    assert.is_false(E.gone(pid))
    h:signal("TERM")
    assert.are.equal(0, h:wait(10))
    assert.is_true(E.gone(pid))
  end)

  it("SIGHUP with a changed script: unchanged probes keep their state and "
    .. "counters, changed ones restart, new ones start, removed ones stop",
    function()
    local v1 = [[
      local sonde = require "sonde"
      local svc = sonde.service { name = "sleeper",
        command = { "sleep", "600" } }
      sonde.probe { name = "keep", kind = "readiness", period = 0.2,
        success_threshold = 3, exec = { command = { "true" } } }
      sonde.probe { name = "change", kind = "readiness", period = 0.2,
        exec = { command = { "echo", "v1" } } }
      sonde.probe { name = "gone", kind = "readiness", period = 0.2,
        exec = { command = { "true" } } }
      sonde.probe { name = "svc-live", service = svc, period = 0.2,
        exec = { command = { "true" } } }
    ]]
    local v2 = [[
      local sonde = require "sonde"
      local svc = sonde.service { name = "sleeper",
        command = { "sleep", "600" } }
      sonde.probe { name = "keep", kind = "readiness", period = 0.2,
        success_threshold = 3, exec = { command = { "true" } } }
      sonde.probe { name = "change", kind = "readiness", period = 0.2,
        exec = { command = { "echo", "v2" } } }
      sonde.probe { name = "new", kind = "readiness", period = 0.2,
        exec = { command = { "true" } } }
      sonde.probe { name = "svc-live", service = svc, period = 0.2,
        exec = { command = { "true" } } }
    ]]
    local path = script("reload.lua", v1)
    local h = start(path)
    -- keep reaches success (3 successes), and runs a couple more times
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("state_change", { probe = "keep", to = "success" }) == 1
        and results_of(x, "keep") >= 5
    end, 15), h:stderr())
    local pid = h:events("service_start")[1].pid

    replace(path, v2)
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload") >= 1 end, 10), h:stderr())
    assert.are.equal("ok", h:events("reload")[1].status)
    assert.is_truthy(h:wait_for(function(x)
      local evs = x:events()
      local i = index_of(evs, "reload")
      local rest = after(evs, i)
      return #E.select(rest, "probe_result", { probe = "keep" }) >= 3
        and #E.select(rest, "probe_result", { probe = "new" }) >= 3
        and #E.select(rest, "probe_result", { probe = "change" }) >= 3
    end, 10), h:stderr())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10))
    assert.is_true(E.gone(pid))

    local evs = h:events()
    local i = index_of(evs, "reload")
    local before, rest = table.move(evs, 1, i - 1, 1, {}), after(evs, i)

    -- keep: still success, its run went on counting (no seed, no restart)
    local keep_before = E.select(before, "probe_result", { probe = "keep" })
    local keep_after = E.select(rest, "probe_result", { probe = "keep" })
    local last_n = tonumber(keep_before[#keep_before].streak:match(
      "^success (%d+)/3$"))
    assert.is_truthy(last_n)
    for k, e in ipairs(keep_after) do
      assert.are.equal("success", e.state)
      assert.are.equal(string.format("success %d/3", last_n + k), e.streak)
    end
    assert.are.equal(0, #E.select(rest, "state_change", { probe = "keep" }))

    -- change: a new probe from its seed (not ready until its first result)
    local ch = E.select(rest, "probe_result", { probe = "change" })
    assert.are.equal("failure", ch[1].state)
    assert.are.equal("success 1/1", ch[1].streak)
    for _, e in ipairs(ch) do assert.are.equal("v2\n", e.output) end
    local chc = E.select(rest, "state_change", { probe = "change" })
    assert.are.equal(1, #chc)
    assert.are.same({ "failure", "success" }, { chc[1].from, chc[1].to })

    -- new: runs
    local nw = E.select(rest, "probe_result", { probe = "new" })
    assert.are.equal("failure", nw[1].state)
    assert.are.equal(0, #E.select(before, "probe_result", { probe = "new" }))

    -- gone: no result after the reload
    assert.are.equal(0, #E.select(rest, "probe_result", { probe = "gone" }))

    -- the unchanged service kept its process; its liveness probe went on
    assert.are.equal(1, #E.select(evs, "service_start"))
    assert.are.equal(1, #E.select(evs, "service_exit"))   -- at the TERM
    local live = E.select(rest, "probe_result", { probe = "svc-live" })
    assert.is_true(#live >= 1)
    assert.is_true(tonumber(live[1].streak:match("^success (%d+)/1$")) > 1,
      live[1].streak)
  end)
end)
