-- What leaves user code is converted inside its bound (regressions): an
-- error object, a reason, an output, a status or a result field whose
-- metamethods (__tostring, __pairs, __index, __eq...) never return, given
-- back by a hook, a custom check, a function action, a webhook body
-- function or a task, used to be converted by the engine afterwards, with
-- no bound: the host hung for good.  Also the count hook itself: a
-- pcall that catches the time-limit error inside a C call boundary (a sort
-- comparator) kept the bound from firing again, and the <close> handlers
-- of a hook stopped by its bound ran with no bound.
--
-- Each case runs a host (JSON log) with the misbehaving probe "bad" next
-- to a probe "healthy" (period 0.1 s): the host must go on (healthy keeps
-- running after bad's results) and bad's results must be what is
-- documented.
local helpers = require "helpers"

-- Every metamethod the engine could trigger, each looping forever.
local PRELUDE = [[
local sonde = require "sonde"
local function loop() while true do end end
local evil = setmetatable({}, { __tostring = loop, __index = loop,
  __newindex = loop, __pairs = loop, __len = loop, __eq = loop,
  __lt = loop, __le = loop, __concat = loop, __call = loop })
sonde.probe { name = "healthy", period = 0.1,
  exec = { command = { "true" } } }
]]

describe("values leaving user code are converted inside its bound", function()
  after_each(helpers.cleanup_hosts)

  local function results(h, name)
    return h:events("probe_result", { probe = name })
  end

  local function show(list)
    local out = {}
    for i, e in ipairs(list) do
      if i > 6 then out[#out + 1] = "..." break end
      out[#out + 1] = string.format("%s/%s %q", tostring(e.status),
        tostring(e.reason), tostring(e.output))
    end
    return table.concat(out, "; ")
  end

  -- Start a host with `decl` after PRELUDE; wait until `ready(h)` (default:
  -- bad has `n` results) and healthy has run 5 more times since; the host
  -- is still alive.  Returns the host.
  local function survives(decl, n, ready)
    local path = helpers.script("escape.lua", PRELUDE .. decl)
    local h = helpers.host_start { "--log-format", "json", path }
    ready = ready or function(x) return #results(x, "bad") >= n end
    local ok = h:wait_for(ready, 10)
    assert.is_truthy(ok, "the host stalled: bad " .. show(results(h, "bad"))
      .. "\n" .. h:stderr():sub(-2000))
    local base = #results(h, "healthy")
    assert.is_truthy(h:wait_for(function(x)
      return #results(x, "healthy") >= base + 5 end, 10),
      "healthy stopped\n" .. h:stderr():sub(-2000))
    assert.is_true(h:alive())
    return h
  end

  -- bad's results: every one `status`/`reason` (the first may be `first`)
  local function all_are(h, status, reason, first)
    local rs = results(h, "bad")
    for i, r in ipairs(rs) do
      local want = (i == 1 and first) or { status, reason }
      assert.are.same(want, { r.status, r.reason }, show(rs))
    end
  end

  local function hook_errors(h, hook)
    return h:events("hook_error", { probe = "bad", hook = hook })
  end

  describe("hooks", function()
    it("on_result returning a reason whose __tostring loops: "
      .. "unknown/hook_error, the hook stopped and quarantined", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "true" } },
          on_result = function() return "failure", evil end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
      local he = hook_errors(h, "on_result")
      assert.is_truthy(he[1].error:find("hook exceeded its time limit", 1,
        true), he[1].error)
      assert.is_truthy(he[2].error:find("^hook on_result skipped for"),
        he[2].error)
    end)

    it("on_result raising an error object whose __tostring loops",
      function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "true" } },
          on_result = function() error(evil) end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
      assert.is_truthy(hook_errors(h, "on_result")[1].error:find(
        "time limit", 1, true))
    end)

    it("on_result returning a status that is a looping object", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "true" } },
          on_result = function() return evil end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
    end)

    it("on_result writing a looping object into its result's output",
      function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "false" } },
          on_result = function(r) r.output = evil end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
    end)

    it("on_result writing a looping object into another field of its "
      .. "result (logged, shown by /status): a plain copy", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "false" } },
          on_result = function(r) r.exit_code = evil end }
      ]], 2)
      all_are(h, "failure", "exit_code")
      for _, r in ipairs(results(h, "bad")) do
        assert.are.equal("table", type(r.exit_code))
      end
    end)

    it("on_result catching its own time-limit error inside a sort "
      .. "comparator, in a loop", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "true" } },
          on_result = function()
            while true do
              pcall(table.sort, { 3, 2, 1, 5, 4 }, function() loop() end)
            end
          end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
    end)

    it("on_result stopped by its bound, with a <close> handler that loops",
      function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2,
          exec = { command = { "true" } },
          on_result = function()
            local x <close> = setmetatable({}, { __close = loop })
            loop()
          end }
      ]], 2)
      all_are(h, "unknown", "hook_error")
    end)
  end)

  describe("custom checks", function()
    it("returning a result table whose output loops: stopped by check_cpu, "
      .. "then quarantined", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, timeout = 5,
          check = function() return { status = "success", output = evil } end }
      ]], 2)
      all_are(h, "unknown", "hook_error", { "failure", "timeout" })
    end)

    it("returning a status and an output that loops", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, timeout = 5,
          check = function() return "failure", evil end }
      ]], 2)
      all_are(h, "unknown", "hook_error", { "failure", "timeout" })
    end)

    it("returning a result table with a looping object in another field: "
      .. "a plain copy is kept", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, timeout = 5,
          check = function()
            return { status = "failure", reason = "mine", exit_code = evil,
              output = "out" }
          end }
      ]], 2)
      all_are(h, "failure", "mine")
      local r = results(h, "bad")[1]
      assert.are.equal("out", r.output)
      assert.are.equal("table", type(r.exit_code))
    end)

    it("raising an error object whose __tostring loops: check_error",
      function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, timeout = 5,
          check = function() error(evil) end }
      ]], 2)
      all_are(h, "failure", "check_error")
    end)
  end)

  describe("actions and tasks", function()
    it("a function action raising an error object whose __tostring loops",
      function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, failure_threshold = 1,
          exec = { command = { "false" } },
          on_failure = function() error(evil) end }
      ]], nil, function(x)
        return #x:events("action", { probe = "bad", status = "failed" }) >= 1
          and #results(x, "bad") >= 2
      end)
      local a = h:events("action", { probe = "bad", status = "failed" })[1]
      assert.is_truthy(a.detail:find("time limit", 1, true), a.detail)
    end)

    it("a webhook body function raising an error object whose __tostring "
      .. "loops", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, failure_threshold = 1,
          exec = { command = { "false" } },
          on_failure = sonde.action.webhook { url = "http://127.0.0.1:1/",
            body = function() error(evil) end } }
      ]], nil, function(x)
        return #x:events("action", { probe = "bad", status = "failed" }) >= 1
          and #results(x, "bad") >= 2
      end)
      local a = h:events("action", { probe = "bad", status = "failed" })[1]
      assert.is_truthy(a.detail:find("^body function: .*time limit"), a.detail)
    end)

    it("a function action that writes a looping object into its result "
      .. "does not change what the next action gets", function()
      local h = survives([[
        sonde.probe { name = "bad", period = 0.2, failure_threshold = 1,
          exec = { command = { "false" } },
          on_failure = { function(r) r.output = evil r.status = evil end,
            sonde.action.webhook { url = "http://127.0.0.1:1/" } } }
      ]], nil, function(x)
        return #x:events("action", { probe = "bad", status = "failed" }) >= 1
          and #results(x, "bad") >= 2
      end)
      local a = h:events("action", { probe = "bad", status = "failed" })[1]
      assert.are.equal("webhook http://127.0.0.1:1/", a.action)
    end)

    it("a task raising an error object whose __tostring loops: task_error "
      .. "logged, the host goes on", function()
      local h = survives([[
        sonde.spawn(function() sonde.sleep(0.2) error(evil) end)
      ]], nil, function(x) return #x:events("task_error") >= 1 end)
      assert.are.equal("(error object without a printable form)",
        h:events("task_error")[1].error:match("^[^\n]*"))
    end)
  end)
end)
