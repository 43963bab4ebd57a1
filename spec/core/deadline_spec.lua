-- Running-time bounds (src/ldeadline.c: core.set_deadline, deadline_hit,
-- clear_deadline), and what they cannot bound.
--
--   * once hit, a bound stays hit: a pcall that catches the time-limit
--     error where the coroutine cannot yield (a sort comparator, a
--     __tostring) gets no further than its next instruction (regression:
--     the hook used to go quiet after its first firing, and such a loop
--     ran for good);
--   * measured: a single C call (a backtracking pattern) and finalizers
--     (__gc) run to their end past any bound; under the host a hook stuck
--     in such a pattern freezes the loop, and the systemd watchdog pings
--     stop (README: WatchdogSec= is the backstop).
local core = require "sonde.core"
local helpers = require "helpers"

-- Run Lua `code` in a child lua5.4 under `timeout 10`: its output, and
-- whether it exited 0.
local function child(code)
  local path = helpers.write(helpers.scratch() .. "/child.lua", code)
  local rc, out = helpers.sh(helpers.lua_env() .. " timeout 10 lua5.4 "
    .. helpers.q(path) .. " 2>&1 </dev/null")
  return out, rc == 0
end

describe("core deadlines", function()
  it("a pcall catching the time-limit error in a sort comparator, in a "
    .. "loop, is stopped", function()
    local out, ok = child([[
      local core = require "sonde.core"
      local co = coroutine.create(function()
        while true do
          pcall(table.sort, { 3, 2, 1, 5, 4 }, function()
            while true do end
          end)
        end
      end)
      core.set_deadline(co, 0.1)
      print(coroutine.resume(co))
      print("hit", core.deadline_hit(co), coroutine.status(co))
    ]])
    assert.is_true(ok, out)
    assert.is_truthy(out:find("hit\ttrue\tsuspended", 1, true), out)
  end)

  it("a loop of pcalls inside a comparator (no yield possible up to the "
    .. "coroutine's body): the error climbs out", function()
    local out, ok = child([[
      local core = require "sonde.core"
      local co = coroutine.create(function()
        table.sort({ 3, 2, 1 }, function()
          while true do pcall(function() while true do end end) end
        end)
      end)
      core.set_deadline(co, 0.1)
      print(coroutine.resume(co))
      print("hit", core.deadline_hit(co), coroutine.status(co))
    ]])
    assert.is_true(ok, out)
    assert.is_truthy(out:find("false\ttime limit exceeded", 1, true), out)
    assert.is_truthy(out:find("hit\ttrue\tdead", 1, true), out)
  end)

  it("a hit bound stays hit until set again: closers run by "
    .. "coroutine.close need a new bound, which they share", function()
    local out, ok = child([[
      local core = require "sonde.core"
      local closed = 0
      local co = coroutine.create(function()
        local b <close> = setmetatable({}, { __close = function()
          while true do end
        end })
        local a <close> = setmetatable({}, { __close = function()
          closed = closed + 1                -- closed first: it runs
        end })
        while true do end
      end)
      core.set_deadline(co, 0.05)
      coroutine.resume(co)
      print("stopped", core.deadline_hit(co))
      core.set_deadline(co, 0.05)          -- what sonde.hook/task do
      print("close", coroutine.close(co))
      print("closed", closed)
    ]])
    assert.is_true(ok, out)
    assert.is_truthy(out:find("stopped\ttrue", 1, true), out)
    assert.is_truthy(out:find("close\tfalse\ttime limit exceeded", 1, true),
      out)
    assert.is_truthy(out:find("closed\t1", 1, true), out)
  end)

  describe("what a count hook cannot bound (measured)", function()
    it("a backtracking pattern runs to its end, far past the bound",
      function()
      local took
      local co = coroutine.create(function()
        local t = core.now()
        local r = string.find(("a"):rep(30), ("a*"):rep(7) .. "b")
        took = core.now() - t
        return r
      end)
      core.set_deadline(co, 0.001)
      local ok, r = coroutine.resume(co)
      core.clear_deadline(co)
      -- the find returned (nil: no match) and the coroutine finished: no
      -- Lua instruction ran in between for the hook to stop it
      assert.is_true(ok)
      assert.is_nil(r)
      assert.are.equal("dead", coroutine.status(co))
      assert.is_true(took > 0.01, string.format("the find took %.3f s", took))
    end)

    it("a finalizer runs to its end, under a bound long spent (the "
      .. "collector runs finalizers with hooks off)", function()
      local ran, done
      local co = coroutine.create(function()
        setmetatable({}, { __gc = function()
          local t = core.now()
          while core.now() - t < 0.2 do end
          ran, done = core.now() - t, true
        end })
        collectgarbage()
        collectgarbage()
        return "after"
      end)
      core.set_deadline(co, 0.01)
      local ok = coroutine.resume(co)
      core.clear_deadline(co)
      assert.is_true(ok)
      assert.is_true(done)
      assert.is_true(ran >= 0.2)
    end)

    it("under the host, a hook stuck in a backtracking pattern freezes "
      .. "the loop: no hook_error, and the WATCHDOG=1 pings stop", function()
      local dir = helpers.tmpdir()
      local l = helpers.notify_listener(dir)
      local path = helpers.write(dir .. "/stuck.lua", [[
        local sonde = require "sonde"
        local core = require "sonde.core"
        local n = 0
        sonde.probe { name = "stuck", period = 0.1,
          exec = { command = { "true" } },
          on_result = function()
            n = n + 1
            if n < 5 then return end
            core.sd_notify("X_SPEC=frozen")
            string.find(("a"):rep(40), ("a*"):rep(12) .. "b")
          end }
      ]])
      local h = helpers.host_start({ "--log-format", "json", path },
        { NOTIFY_SOCKET = l.name, WATCHDOG_USEC = "200000" })
      local ok = helpers.eventually(function()
        return l:count("X_SPEC=frozen") >= 1 end, 10)
      local frozen_at
      if ok then
        helpers.sleep(1.5)      -- 15 ping intervals that must not come
        local msgs = l:messages()
        local before = 0
        for i, m in ipairs(msgs) do
          if helpers.has_line(m.msg, "X_SPEC=frozen") then frozen_at = i end
        end
        for i = 1, frozen_at - 1 do
          if helpers.has_line(msgs[i].msg, "WATCHDOG=1") then
            before = before + 1
          end
        end
        assert.is_true(before >= 2, l:dump())
        for i = frozen_at + 1, #msgs do
          assert.is_false(helpers.has_line(msgs[i].msg, "WATCHDOG=1"),
            "a ping after the freeze:\n" .. l:dump())
        end
        assert.is_true(h:alive())
        assert.are.equal(0, #h:events("hook_error"))
      end
      h:signal("KILL")
      h:wait(5)
      h:cleanup()
      l:stop()
      helpers.rmtree(dir)
      assert.is_truthy(ok, "never frozen\n" .. h:stderr():sub(-2000))
    end)
  end)
end)
