-- sonde.task: tasks, their scopes (owners) and what closing a scope ends.
-- Everything runs on the real loop; waits are bounded timers.
local sonde = require "sonde"
local task = require "sonde.task"
local core = require "sonde.core"
local helpers = require "helpers"

local closer = helpers.closer

-- Run the loop until nothing else is pending, at most 10 s.
local function run()
  helpers.drain(10)
end

-- A scope named `name` with a task for each function, which gets `log`
-- (a list) as its argument: the scope and the log.
local function spawned(name, ...)
  local s, log, fns = task.scope { name = name }, {}, { ... }
  task.within(s, function()
    for _, fn in ipairs(fns) do task.spawn(fn, log) end
  end)
  return s, log
end

-- Close the scope and run the loop: the task_error events logged.
local function close_errors(s)
  local log = helpers.capture()
  s:close()
  run()
  local evs = log:events("task_error")
  log:close()
  return evs
end

describe("sonde.task", function()
  it("a scope owns its tasks, timers and operations; close ends them all",
    function()
    local s = task.scope { name = "test" }
    local log, fired = {}, false
    local pid
    task.within(s, function()
      task.spawn(function()
        local c <close> = closer(log, "sleeper")
        task.sleep(30)
        log[#log + 1] = "woke"            -- never
      end)
      task.after(0.2, function() fired = true end)
      sonde.exec({ command = { "sleep", "30" }, timeout = 60 }, function()
        log[#log + 1] = "exec done"       -- never
      end)
    end)
    assert.are.same({ 1, 2 }, { s.ntasks, s.nops })
    -- the exec's pid, to see its process go
    for id in pairs(s.ops) do pid = pid or core.exec_pid(id) end
    assert.is_number(pid)
    core.timer(0.05, function() s:close() end)
    run()
    assert.are.same({ "sleeper" }, log)
    assert.is_false(fired)
    assert.are.same({ 0, 0 }, { s.ntasks, s.nops })
    assert.is_true(helpers.eventually(function() return helpers.gone(pid) end, 5))
    assert.are.equal(0, core.pending())
  end)

  it("nothing new starts in a closed scope", function()
    local s = task.scope { name = "gone" }
    s:close()
    task.within(s, function()
      local ok, err = pcall(task.spawn, function() end)
      assert.is_false(ok)
      assert.matches("its owner %(gone%) was stopped or replaced", err)
      ok, err = pcall(task.after, 1, function() end)
      assert.is_false(ok)
      assert.matches("sonde.after: its owner %(gone%)", err)
    end)
  end)

  it("a task that closes its own scope is closed at its next wait", function()
    local s, log
    s, log = spawned("self", function(l)
      local c <close> = closer(l, "closed")
      task.sleep(0.01)
      s:close()
      l[#l + 1] = "after close"   -- still runs: the task is running
      task.sleep(0.01)
      l[#l + 1] = "after wait"    -- never
    end)
    run()
    assert.are.same({ "after close", "closed" }, log)
    assert.are.equal(0, s.ntasks)
  end)

  it("a task spawned by a task belongs to the same scope", function()
    local s = task.scope { name = "parent" }
    local inner_scope
    task.within(s, function()
      task.spawn(function()
        task.spawn(function() inner_scope = task.current() task.sleep(5) end)
      end)
    end)
    assert.are.equal(s, inner_scope)
    assert.are.equal(1, s.ntasks)        -- the outer one finished
    s:close()
    run()
  end)

  it("an error in a <close> handler is logged as task_error, the rest goes on",
    function()
    local s, order = spawned("bad closer", function()
      local c <close> = setmetatable({}, { __close = function() error("closer boom") end })
      task.sleep(30)
    end, function(l)
      local c <close> = closer(l, "second")
      task.sleep(30)
    end)
    local evs = close_errors(s)
    assert.are.same({ "second" }, order)
    assert.are.equal(1, #evs)
    assert.matches("while closing a task: .*closer boom", evs[1].error)
  end)

  it("waiting inside a <close> handler is an error that names the reason",
    function()
    local evs = close_errors(spawned("waiting closer", function()
      local c <close> = setmetatable({}, { __close = function() task.sleep(1) end })
      task.sleep(30)
    end))
    assert.are.equal(1, #evs)
    assert.matches("cannot wait while the task is being closed", evs[1].error)
  end)

  it("close(co) closes one task, and is harmless twice", function()
    local log = {}
    local co
    task.within(task.scope(), function()
      co = task.spawn(function()
        local c <close> = closer(log, "one")
        task.sleep(30)
      end)
    end)
    assert.is_true(sonde.close(co))
    assert.is_false(sonde.close(co))
    assert.are.same({ "one" }, log)
    assert.are.equal(0, core.pending())
  end)

  it("wait_idle resumes when nothing else of the scope is pending", function()
    local _, log = spawned("idle", function(l)
      task.sleep(0.1)
      l[#l + 1] = "worker done"
    end, function(l)
      task.wait_idle()
      l[#l + 1] = "idle"
    end)
    run()
    assert.are.same({ "worker done", "idle" }, log)
  end)

  it("a held scope is not idle until released", function()
    local s = task.scope { name = "held" }
    local log = {}
    s:hold()
    task.within(s, function()
      task.spawn(function() task.wait_idle() log[#log + 1] = "idle" end)
    end)
    core.timer(0.1, function() log[#log + 1] = "release" s:release() end)
    run()
    assert.are.same({ "release", "idle" }, log)
  end)

  it("a dry scope starts nothing: waits stop there, callbacks never come",
    function()
    local s = task.scope { name = "dry", dry = true }
    local log = {}
    task.within(s, function()
      task.spawn(function()
        log[#log + 1] = "before"
        sonde.exec { command = { "true" } }
        log[#log + 1] = "after"           -- never
      end)
      assert.are.equal(0, sonde.exec({ command = { "true" } }, function() end))
      assert.are.equal(0, sonde.after(0, function() log[#log + 1] = "timer" end))
    end)
    assert.are.equal(0, core.pending())
    s:close()
    assert.are.same({ "before" }, log)
  end)

  it("resumes tasks on the main thread, even when run() is called from a task",
    function()
    local mains = {}
    local s = task.scope()
    task.within(s, function()
      task.spawn(function()
        task.sleep(0.01)
        mains[#mains + 1] = select(2, coroutine.running())  -- a task: false
      end)
      task.after(0.02, function()
        mains[#mains + 1] = select(2, coroutine.running())  -- main: true
      end)
    end)
    local runner = coroutine.create(function() return task.run() end)
    assert(coroutine.resume(runner))
    assert.are.same({ false, true }, mains)
  end)

  -- In a child process: were the sleep accepted, its timer would keep
  -- this process's loop busy for ever.
  it("sonde.sleep(1e19) inside a task raises", function()
    local out = helpers.run_lua([[
      local sonde = require "sonde"
      sonde.spawn(function()
        local ok, err = pcall(sonde.sleep, 1e19)
        io.write(ok and "ACCEPTED\n" or ("RAISED " .. tostring(err) .. "\n"))
      end)
      sonde.run()
      io.write("DONE\n")
    ]])
    assert.is_truthy(out:find("RAISED [^\n]*sonde%.sleep"), "child output:\n" .. out)
    assert.is_truthy(out:find("DONE\n", 1, true), "child output:\n" .. out)
  end)

  it("a <close> handler that never ends is stopped after close_bound",
    function()
    local s, trace = spawned("endless closer", function(log)
      local c <close> = setmetatable({}, { __close = function()
        log[#log + 1] = "closing"
        while true do end
      end })
      task.sleep(30)
    end)
    local t0 = core.now()
    local evs = close_errors(s)
    assert.are.same({ "closing" }, trace)
    assert.is_true(core.now() - t0 < task.close_bound + 5)  -- loose
    assert.are.equal(1, #evs)
    assert.matches("while closing a task: time limit exceeded", evs[1].error)
  end)

  it("a task spawned by bounded code keeps its bound until it first waits",
    function()
    local s = task.scope { name = "bounded" }
    local trace, err = {}, nil
    task.bounded(s, function()
      -- waits at once: free from then on, however long it later runs
      task.spawn(function()
        task.sleep(0.01)
        local t0 = core.now()
        while core.now() - t0 < 0.4 do end
        trace[#trace + 1] = "long run after a wait"
      end)
      local ok, e = pcall(task.spawn, function() while true do end end)
      err = not ok and e
    end, 0.2, function(why) trace[#trace + 1] = "aborted: " .. why end)
    run()
    assert.are.same({ "long run after a wait" }, trace)
    assert.matches("^spec/sonde/task_spec.lua:%d+: sonde.spawn: the new task "
      .. "ran without waiting past the time limit of the code that started "
      .. "it", err)
    s:close()
  end)

  it("a task spawned by a hook runs under the hook's bound", function()
    local hook = require "sonde.hook"
    local s = task.scope { name = "hooked" }
    local ok, err = task.within(s, hook.call, function()
      task.spawn(function() while true do end end)
    end, 0.2)
    assert.is_false(ok)
    assert.matches("sonde.spawn: the new task ran without waiting", err)
    s:close()
  end)

  it("cancel() leaves alone what user code did not start with a callback",
    function()
    local r
    local s = task.scope { name = "own ops" }
    task.within(s, function()
      task.spawn(function() r = sonde.exec { command = { "true" } } end)
    end)
    -- the task's wait is sonde's own operation: its id is not the user's.
    -- Ids are given in order: the one just before a new timer's.
    local mark = core.timer(10, function() end)
    core.cancel(mark)
    local id0 = mark - 1
    assert.is_number(core.exec_pid(id0))
    assert.is_false(sonde.cancel(id0))
    run()
    assert.are.equal("success", r.status)
    -- an operation started with a callback is the user's to cancel
    local id = sonde.exec({ command = { "sleep", "5" } }, function() end)
    assert.is_true(sonde.cancel(id))
    assert.is_false(sonde.cancel(id))
    s:close()
  end)

  it("run() waiting in a task returns when its scope is closed", function()
    local s = task.scope { name = "run waiter" }
    local trace = {}
    s:hold()                                  -- never idle by itself
    task.within(s, function()
      task.spawn(function()
        task.wait_idle()
        trace[#trace + 1] = "returned"
        local ok, err = pcall(task.sleep, 1)  -- nothing waits any more
        trace[#trace + 1] = ok and "slept" or err:match("owner %b()")
      end)
    end)
    core.timer(0.05, function() s:close() end)
    run()
    assert.are.same({ "returned", "owner (run waiter)" }, trace)
  end)
end)
