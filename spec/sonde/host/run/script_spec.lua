-- `sonde SCRIPT` as an operator runs it for months: a stop ends everything
-- the script started, whatever its tasks do; reloads replace the script's
-- tasks, series and hook values without piling up; a readiness probe of a
-- dead service makes /readyz answer 503; log levels and discarded service
-- output.  The host runs as a subprocess.
local helpers = require "helpers"

local script = helpers.script

local start, listen_port, fetch = helpers.host_start, helpers.listen_port, helpers.fetch

local function messages(h)
  local out = {}
  for _, e in ipairs(h:events("message")) do out[#out + 1] = e.text end
  return out
end

local function has_message(h, text)
  for _, m in ipairs(messages(h)) do if m == text then return true end end
  return false
end

describe("sonde SCRIPT", function()
  after_each(helpers.cleanup_hosts)

  it("SIGTERM ends the script's tasks, timers and commands, whatever they "
    .. "do, and the host exits 0 soon after its service", function()
    local path = script("busy.lua", [[
local sonde = require "sonde"
sonde.service { name = "svc", command = { "sleep", "60.25" }, grace = 1 }
sonde.probe { name = "slow", exec = { command = { "sleep", "30.25" } },
  period = 0.2, timeout = 40 }
local function chain() sonde.after(0.05, chain) end   -- timers forever
chain()
sonde.spawn(function()                                -- spawns forever
  local c <close> = setmetatable({}, { __close = function()
    sonde.log.info("spawner closed")
  end })
  while true do
    sonde.spawn(function() sonde.sleep(60) end)
    sonde.sleep(0.05)
  end
end)
sonde.spawn(function()                                -- waits on a command
  local c <close> = setmetatable({}, { __close = function()
    sonde.log.info("waiter closed")
  end })
  sonde.exec { command = { "sleep", "45.25" }, timeout = 60 }
end)
local c <close> = setmetatable({}, { __close = function()
  sonde.log.info("top level closed")
end })
sonde.run()                                           -- the top level waits
]])
    local h = start { "--log-format", "json", path }
    assert(h:wait_for(function(x)
      return #x:events("service_start") == 1 and #x:events("probe_skipped") >= 1
    end, 15), h:stderr())
    local t0 = helpers.now()
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    -- loose: the service exits at SIGTERM; nothing else may hold the host
    assert.is_true(helpers.now() - t0 < 5, "took " .. helpers.now() - t0)
    for _, m in ipairs { "spawner closed", "waiter closed", "top level closed" } do
      assert.is_true(has_message(h, m), m .. "\n" .. h:stderr())
    end
    -- (durations no other spec uses: the check is machine-wide)
    assert.are.same({}, helpers.procs_matching("^sleep [346][05]%.25$"))
  end)

  it("50 SIGHUPs: one copy of the task runs, the metric is served once with "
    .. "the new definition, the hook runs the new code with the new values",
    function()
    local genfile = helpers.scratch() .. "/gen"
    helpers.write(genfile, "0")
    local path = script("reload.lua", string.format([[
local sonde = require "sonde"
local f = assert(io.open(%q))
local gen = tonumber(f:read("a"))
f:close()
sonde.metrics.gauge("script_generation", "generation " .. gen):set(gen)
sonde.spawn(function()
  local c <close> = setmetatable({}, { __close = function()
    sonde.log.info("task %%d closed", gen)
  end })
  while true do
    sonde.log.info("tick %%d", gen)
    sonde.sleep(0.1)
  end
end)
sonde.probe { name = "p", exec = { command = { "true" } }, period = 0.1,
  on_result = function() sonde.log.info("hook %%d", gen) end }
]], genfile))
    local h = start { "--log-format", "json", "--listen", "0", path }
    local port = listen_port(h)
    for gen = 1, 50 do
      helpers.write(genfile, tostring(gen))
      h:signal("HUP")
      assert(h:wait_for(function(x) return #x:events("reload") >= gen end, 10),
        "reload " .. gen .. "\n" .. h:stderr())
    end
    local seen = #h:events("message")
    assert(h:wait_for(function(x) return #x:events("message") >= seen + 12 end, 10))
    -- what runs now: ticks and hook runs of generation 50 only
    local msgs = messages(h)
    local late = table.move(msgs, seen + 1, #msgs, 1, {})
    for _, m in ipairs(late) do
      assert.is_truthy(m == "tick 50" or m == "hook 50", m)
    end
    for gen = 0, 49 do
      local n = 0
      for _, m in ipairs(msgs) do
        if m == "task " .. gen .. " closed" then n = n + 1 end
      end
      assert.are.equal(1, n, "task " .. gen .. " closed")
    end
    local r = fetch(port, "/metrics")
    assert.are.equal(200, r.http_status)
    local _, types = r.body:gsub("# TYPE script_generation gauge", "")
    assert.are.equal(1, types)
    assert.is_truthy(r.body:find("# HELP script_generation generation 50\n"
      .. "# TYPE script_generation gauge\nscript_generation 50\n", 1, true),
      r.body)
    assert.are.equal(50, #h:events("reload", { status = "ok" }))
  end)

  it("a readiness probe of a service that exited makes /readyz answer 503",
    function()
    local path = script("dead.lua", [[
local sonde = require "sonde"
local svc = sonde.service { name = "brief", command = { "sleep", "1" },
  restart = { policy = "never" } }
sonde.probe { name = "brief-ready", kind = "readiness", service = svc,
  exec = { command = { "true" } }, period = 0.1 }
]])
    local h = start { "--log-format", "json", "--listen", "0", path }
    local port = listen_port(h)
    assert(h:wait_for(function(x)
      return #x:events("state_change", { to = "success" }) >= 1
    end, 10), h:stderr())
    local r = fetch(port, "/readyz")
    assert.are.equal(200, r.http_status, r.body)
    assert(h:wait_for(function(x) return #x:events("service_exit") >= 1 end, 10))
    r = fetch(port, "/readyz")
    assert.are.same({ 503, "not ready:\nbrief-ready\n" }, { r.http_status, r.body })
    r = fetch(port, "/readyz/brief-ready")
    assert.are.equal(503, r.http_status)
    local ch = h:events("state_change", { to = "failure" })
    assert.are.equal(1, #ch)
    assert.are.equal("not_running", ch[1].reason)
  end)

  describe("log levels", function()
    local path
    before_each(function()
      path = script("levels.lua", [[
local sonde = require "sonde"
local level = ...
if level then sonde.log.set_level(level) end
sonde.service { name = "chatty", command = { "sh", "-c", "echo hello; sleep 60" },
  output = "discard" }
sonde.probe { name = "ok", exec = { command = { "true" } }, period = 0.1 }
sonde.probe { name = "bad", exec = { command = { "false" } }, period = 0.1,
  failure_threshold = 1,
  on_result = function(_, p) if p.runs == 3 then sonde.log.error("third run") end end }
sonde.log.debug("a debug message")
]])
    end)

    local function run(args)
      local h = start(args)
      assert(h:wait_for(function(x)
        return #x:events("message", { text = "third run" }) >= 1
      end, 10), h:stderr())
      h:signal("TERM")
      assert.are.equal(0, h:wait(10))
      return h
    end

    it("info (the default): no successful run, failures, state changes and "
      .. "the service; discarded output stays out", function()
      local h = run { "--log-format", "json", "--log-level", "info", path }
      assert.are.same({}, h:events("probe_result", { probe = "ok" }))
      assert.is_true(#h:events("probe_result", { probe = "bad" }) >= 3)
      assert.are.equal(1, #h:events("state_change", { probe = "ok" }))
      assert.are.equal(1, #h:events("service_start"))
      assert.are.same({}, h:events("service_output"))
      assert.are.same({ "third run" }, messages(h))
      for _, e in ipairs(h:events()) do
        assert.are_not.equal("debug", e.level)
      end
    end)

    it("debug: every run, and debug messages", function()
      local h = run { "--log-format", "json", "--log-level", "debug", path }
      assert.is_true(#h:events("probe_result", { probe = "ok" }) >= 3)
      assert.are.equal("debug", h:events("probe_result", { probe = "ok" })[1].level)
      assert.are.same({ "a debug message", "third run" }, messages(h))
    end)

    it("warn: only what is not fine", function()
      local h = run { "--log-format", "json", "--log-level", "warn", path }
      for _, e in ipairs(h:events()) do
        assert.is_truthy(e.level == "warn" or e.level == "error", e.event)
      end
      assert.are.same({}, h:events("service_start"))
    end)

    it("the script can set the level itself (sonde.log.set_level)", function()
      local h = run { "--log-format", "json", "--log-level", "info", path, "error" }
      assert.are.same({}, h:events("probe_result"))
      assert.are.same({}, h:events("state_change"))
      assert.are.same({ "third run" }, messages(h))
    end)

    it("an unknown level is a usage error", function()
      local rc, out, err = helpers.host_run { "--log-level", "loud", path }
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find("^sonde: %-%-log%-level takes debug, info, warn "
        .. "or error\n"), err)
    end)
  end)

  it("a script that calls sonde.stop() ends the host like SIGTERM", function()
    for _, where in ipairs { "hook", "top level" } do
      local path = script("selfstop.lua", string.format([[
        local sonde = require "sonde"
        sonde.service { name = "svc", command = { "sleep", "60" }, grace = 1 }
        sonde.probe { name = "p", exec = { command = { "true" } }, period = 0.1,
          on_result = function(_, p)
            if %q == "hook" and p.runs == 3 then
              sonde.stop(function() sonde.log.info("services gone") end)
            end
          end }
        if %q == "top level" then sonde.stop() end
      ]], where, where))
      local rc, _, err = helpers.host_run({ "--log-format", "json", path }, nil, 20)
      assert.are.equal(0, rc, where .. "\n" .. err)
      local evs = helpers.decode_lines(err)
      local stop = helpers.select(evs, "host_stop")
      assert.are.equal(1, #stop, where)
      assert.are.equal("script", stop[1].signal)
      if where == "hook" then
        assert.are.equal(1, #helpers.select(evs, "service_stop"))
        assert.are.equal(1, #helpers.select(evs, "message",
          { text = "services gone" }))
      else
        assert.are.same({}, helpers.select(evs, "service_start"))
      end
    end
  end)
end)
