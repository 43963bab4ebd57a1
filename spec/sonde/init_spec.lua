-- The Lua task API: sonde.spawn / sonde.sleep / sonde.run, errors, version.
local sonde = require "sonde"
local helpers = require "helpers"

describe("sonde tasks", function()
  it("sonde.version is a version string", function()
    assert.is_string(sonde.version)
    assert.is_truthy(sonde.version:match("^%d+%.%d+%.%d+"), sonde.version)
  end)

  it("sonde.now is monotonic seconds", function()
    local a = sonde.now()
    assert.is_number(a)
    local b = helpers.run(function()
      sonde.sleep(0.1)
      return sonde.now()
    end)
    assert.is_true(b - a >= 0.09 and b - a < 1, "slept 0.1 s, now() moved " .. (b - a))
  end)

  it("two sleeping tasks run concurrently and finish in order of their sleeps", function()
    local order = {}
    local t0 = sonde.now()
    sonde.spawn(function()
      sonde.sleep(0.3)
      order[#order + 1] = "long"
    end)
    sonde.spawn(function()
      sonde.sleep(0.2)
      order[#order + 1] = "short"
    end)
    sonde.run()
    local elapsed = sonde.now() - t0
    assert.are.same({ "short", "long" }, order)
    assert.is_true(elapsed > 0.25 and elapsed < 1.0, "elapsed " .. elapsed)
  end)

  it("a task can spawn tasks; sonde.run() waits for all of them", function()
    local done = {}
    sonde.spawn(function()
      for i = 1, 3 do
        sonde.spawn(function()
          sonde.sleep(0.05 * i)
          done[#done + 1] = i
        end)
      end
      done[#done + 1] = 0
    end)
    sonde.run()
    assert.are.same({ 0, 1, 2, 3 }, done)
  end)

  it("sonde.run() returns at once when nothing is pending", function()
    local t0 = sonde.now()
    sonde.run()
    sonde.run()
    assert.is_true(sonde.now() - t0 < 0.1)
  end)

  it("sonde.run() returns when the last task has finished", function()
    local t0 = sonde.now()
    sonde.spawn(function() sonde.sleep(0.1) end)
    sonde.run()
    local elapsed = sonde.now() - t0
    assert.is_true(elapsed >= 0.09 and elapsed < 0.5, "elapsed " .. elapsed)
  end)

  it("helpers.run returns the task's values", function()
    local a, b, c = helpers.run(function()
      sonde.sleep(0.01)
      return 1, nil, "x"
    end)
    assert.are.equal(1, a)
    assert.is_nil(b)
    assert.are.equal("x", c)
  end)

  describe("errors", function()
    it("an error raised in a task is re-raised by sonde.run()", function()
      sonde.spawn(function()
        sonde.sleep(0.01)
        error("boom-in-task")
      end)
      local ok, err = pcall(sonde.run)
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("boom-in-task", 1, true), tostring(err))
      sonde.run() -- the loop is usable afterwards
    end)

    it("an error raised in a callback is re-raised by sonde.run()", function()
      sonde.exec({ command = { "true" } }, function()
        error("boom-in-callback")
      end)
      local ok, err = pcall(sonde.run)
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("boom-in-callback", 1, true), tostring(err))
      sonde.run()
    end)

    it("the loop works after an error", function()
      sonde.spawn(function()
        sonde.sleep(0)
        error("boom-again")
      end)
      assert.has_error(function() sonde.run() end)
      sonde.run()
      local r = helpers.run(function() return sonde.exec { command = { "true" } } end)
      assert.are.equal("success", r.status)
    end)

    it("a prober in a plain coroutine (not a sonde task) without callback raises", function()
      local co = coroutine.wrap(function()
        return sonde.exec { command = { "true" } }
      end)
      local ok, err = pcall(co)
      assert.is_false(ok, "sonde.exec yielded from a coroutine that is not a sonde task")
      err = tostring(err)
      assert.is_truthy(err:find("spawn") or err:find("callback"), err)
      sonde.run()
    end)
  end)
end)
