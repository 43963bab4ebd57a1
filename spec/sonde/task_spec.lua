-- sonde.task: tasks, their scopes (owners) and what closing a scope ends.
-- Everything runs on the real loop; waits are bounded timers.
local sonde = require "sonde"
local task = require "sonde.task"
local core = require "sonde.core"
local helpers = require "helpers"
local E = require "engine_helpers"

-- Run the loop until nothing else is pending, at most 10 s: a watch
-- timer looks every 20 ms whether it is the last operation left.
local function run()
  local deadline = core.now() + 10
  local function watch()
    if core.pending() == 0 then return end     -- only this watch was left
    if core.now() > deadline then error("task_spec: loop still ran after 10 s", 0) end
    core.timer(0.02, watch)
  end
  core.timer(0.02, watch)
  assert(pcall(task.run))
end

local function closer(log, name)
  return setmetatable({}, { __close = function() log[#log + 1] = name end })
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
    assert.are.equal(1, s.ntasks)
    assert.are.equal(2, s.nops)
    -- the exec's pid, to see its process go
    for id in pairs(s.ops) do pid = pid or core.exec_pid(id) end
    assert.is_number(pid)
    core.timer(0.05, function() s:close() end)
    run()
    assert.are.same({ "sleeper" }, log)
    assert.is_false(fired)
    assert.are.equal(0, s.ntasks)
    assert.are.equal(0, s.nops)
    assert.is_true(helpers.eventually(function() return E.gone(pid) end, 5))
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
    local s = task.scope { name = "self" }
    local log = {}
    task.within(s, function()
      task.spawn(function()
        local c <close> = closer(log, "closed")
        task.sleep(0.01)
        s:close()
        log[#log + 1] = "after close"   -- still runs: the task is running
        task.sleep(0.01)
        log[#log + 1] = "after wait"    -- never
      end)
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
    local log = E.capture()
    local s = task.scope { name = "bad closer" }
    local order = {}
    task.within(s, function()
      task.spawn(function()
        local c <close> = setmetatable({}, { __close = function() error("closer boom") end })
        task.sleep(30)
      end)
      task.spawn(function()
        local c <close> = closer(order, "second")
        task.sleep(30)
      end)
    end)
    s:close()
    run()
    local evs = log:events("task_error")
    log:close()
    assert.are.same({ "second" }, order)
    assert.are.equal(1, #evs)
    assert.matches("while closing a task: .*closer boom", evs[1].error)
  end)

  it("waiting inside a <close> handler is an error that names the reason",
    function()
    local log = E.capture()
    local s = task.scope { name = "waiting closer" }
    task.within(s, function()
      task.spawn(function()
        local c <close> = setmetatable({}, { __close = function() task.sleep(1) end })
        task.sleep(30)
      end)
    end)
    s:close()
    run()
    local evs = log:events("task_error")
    log:close()
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
    local s = task.scope { name = "idle" }
    local log = {}
    task.within(s, function()
      task.spawn(function()
        task.sleep(0.1)
        log[#log + 1] = "worker done"
      end)
      task.spawn(function()
        task.wait_idle()
        log[#log + 1] = "idle"
      end)
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
end)
