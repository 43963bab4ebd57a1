-- The C core's loop through `sonde.core` itself (not the Lua facade):
--   * cancelling an operation from inside its own callbacks, or another
--     one from a callback, is safe (run under AddressSanitizer with
--     `make check SANITIZE=1`);
--   * callbacks run on the main thread whichever coroutine runs the loop,
--     so a coroutine's time bound (core.set_deadline) does not reach them;
--   * the error policy: core.on_error(fn) handles callback errors and the
--     loop goes on; without a handler core.run() raises the first one;
--   * a signal handler that removes itself.
local core = require "sonde.core"
local helpers = require "helpers"

local read_file = helpers.read_file

local function open_fds()
  return assert(core.process_stats().open_fds, "open_fds unreadable")
end

local function group_members(pgid)
  return helpers.pids_of(helpers.procs_in_groups(pgid))
end

local function group_gone(pgid)
  return helpers.eventually(function() return #group_members(pgid) == 0 end, 3)
end

-- Run a Lua script in a child lua5.4 (the same module paths and, under
-- SANITIZE=1, the same sanitizers); its stdout+stderr and whether it
-- exited 0.
local function run_child(script)
  local out, ok = helpers.run_lua(script)
  return out, ok == true
end

local SH = "/bin/sh"
local ENV = { "PATH=/usr/bin:/bin" }

describe("sonde.core loop", function()
  setup(function()
    -- orphans of the commands' groups are re-parented to us and reaped
    -- with their group
    core.set_subreaper(true)
  end)

  teardown(function()
    core.set_subreaper(false)
  end)

  after_each(function()
    core.on_error(nil)
    assert.are.equal(0, core.pending())
  end)

  describe("cancelling from inside callbacks", function()
    it("a streaming exec cancelled from its own on_output stops at once and leaves nothing", function()
      local fds_before = open_fds()
      local id, pid, calls, cancelled, final = nil, nil, 0, nil, false
      id = core.exec({ argv = { SH, "-c", "yes | head -c 1000000" }, env = ENV,
                       timeout = 5 },
        function() final = true end,
        function(stream, data)
          calls = calls + 1
          assert(stream == 1 and #data > 0)
          pid = core.exec_pid(id)
          cancelled = core.cancel(id)
        end)
      assert.are.equal(1, core.pending())
      assert.is_true(core.run())
      assert.are.equal(1, calls)          -- no output after the cancel
      assert.is_true(cancelled)
      assert.is_false(final)              -- the result callback never runs
      assert.are.equal(0, core.pending())
      assert.is_nil(core.exec_pid(id))
      assert.is_false(core.cancel(id))
      assert.is_number(pid)
      assert.is_true(group_gone(pid), "process group " .. pid .. " still has "
        .. table.concat(group_members(pid), " "))
      assert.is_nil(read_file("/proc/" .. pid .. "/stat"))
      assert.are.equal(fds_before, open_fds())
    end)

    it("an on_output callback can cancel another running exec", function()
      local fds_before = open_fds()
      local victim, victim_pid, victim_done, cancelled, result = nil, nil, false, nil, nil
      victim = core.exec({ argv = { "/bin/sleep", "10" }, env = ENV, timeout = 20 },
        function() victim_done = true end,
        function() end)
      victim_pid = core.exec_pid(victim)
      core.exec({ argv = { SH, "-c", "echo one; echo two >&2" }, env = ENV, timeout = 5 },
        function(r) result = r end,
        function()
          if cancelled == nil then cancelled = core.cancel(victim) end
        end)
      local t0 = core.now()
      assert.is_true(core.run())
      assert.is_true(core.now() - t0 < 5)
      assert.is_true(cancelled)
      assert.is_false(victim_done)
      assert.are.equal("success", result.status)
      assert.are.equal(0, result.exit_code)
      assert.is_true(group_gone(victim_pid))
      assert.are.equal(fds_before, open_fds())
    end)

    it("cancelling an exec from its own result callback returns false", function()
      local id, result, again
      id = core.exec({ argv = { "/bin/true" }, env = ENV, timeout = 5 }, function(r)
        result = r
        again = core.cancel(id)
      end)
      assert.is_true(core.run())
      assert.are.equal("success", result.status)
      assert.is_false(again)
      assert.are.equal(0, core.pending())
    end)

    it("cancelling a streaming exec from its own result callback returns false", function()
      local id, result, again, out = nil, nil, nil, {}
      id = core.exec({ argv = { SH, "-c", "echo streamed" }, env = ENV, timeout = 5 },
        function(r)
          result = r
          again = core.cancel(id)
        end,
        function(_, data) out[#out + 1] = data end)
      assert.is_true(core.run())
      assert.are.equal("success", result.status)
      assert.are.equal("streamed\n", table.concat(out))
      assert.are.equal("", result.output)
      assert.is_false(again)
    end)

    it("a timer cancelling itself from its own callback gets false", function()
      local id, fired, again = nil, 0, nil
      id = core.timer(0.01, function()
        fired = fired + 1
        again = core.cancel(id)
      end)
      assert.is_true(core.run())
      assert.are.equal(1, fired)
      assert.is_false(again)
    end)

    it("an HTTP result callback cancels itself (false) and the other transfers (true)", function()
      local port = assert(core.listen("127.0.0.1", 0, function(_, path)
        return 200, "hello " .. path
      end))
      local ids, results, cancels = {}, {}, {}
      for i = 1, 3 do
        local my
        my = core.http({ url = "http://127.0.0.1:" .. port .. "/" .. i, timeout = 5 },
          function(r)
            results[#results + 1] = r
            cancels[#cancels + 1] = core.cancel(my)
            for _, other in ipairs(ids) do
              if other ~= my then cancels[#cancels + 1] = core.cancel(other) end
            end
            core.unlisten()               -- else the listener keeps run() going
          end)
        ids[i] = my
      end
      assert.is_true(core.run())
      assert.are.equal(1, #results)
      assert.are.equal("success", results[1].status)
      assert.matches("^hello /%d$", results[1].body)
      assert.are.same({ false, true, true }, cancels)
    end)

    it("a callback cancels other pending operations: they never call back", function()
      local long_timer_fired, long_exec_done = false, false
      local long_timer = core.timer(10, function() long_timer_fired = true end)
      local long_exec = core.exec({ argv = { "/bin/sleep", "10" }, env = ENV, timeout = 20 },
        function() long_exec_done = true end)
      local exec_pid = core.exec_pid(long_exec)
      local got = {}
      core.timer(0.02, function()
        got[1] = core.cancel(long_timer)
        got[2] = core.cancel(long_exec)
        got[3] = core.cancel(long_timer)
      end)
      local t0 = core.now()
      assert.is_true(core.run())
      assert.is_true(core.now() - t0 < 5)
      assert.are.same({ true, true, false }, got)
      assert.is_false(long_timer_fired)
      assert.is_false(long_exec_done)
      assert.is_true(group_gone(exec_pid))
    end)
  end)

  describe("callbacks run on the main thread", function()
    it("when core.run() is called from a coroutine", function()
      local seen, listen_port = {}, nil
      local co = coroutine.create(function()
        core.timer(0.01, function()
          seen.timer = select(2, coroutine.running())
          seen.nested = { pcall(core.run) }
        end)
        core.exec({ argv = { "/bin/echo", "x" }, env = ENV, timeout = 5 },
          function(r)
            seen.exec = select(2, coroutine.running())
            seen.exec_status = r.status
          end,
          function() seen.output = select(2, coroutine.running()) end)
        listen_port = assert(core.listen("127.0.0.1", 0, function(method, path)
          seen.request = select(2, coroutine.running())
          return 200, method .. " " .. path
        end))
        core.http({ url = "http://127.0.0.1:" .. listen_port .. "/main", timeout = 5 },
          function(r)
            seen.http = select(2, coroutine.running())
            seen.body = r.body
            core.unlisten()               -- else the listener keeps run() going
          end)
        return core.run()
      end)
      local ok, r = coroutine.resume(co)
      assert.is_true(ok, tostring(r))
      assert.is_true(r)
      assert.are.equal("dead", coroutine.status(co))
      assert.is_true(seen.timer)
      assert.is_true(seen.exec)
      assert.are.equal("success", seen.exec_status)
      assert.is_true(seen.output)
      assert.is_true(seen.request)
      assert.is_true(seen.http)
      assert.are.equal("GET /main", seen.body)
      -- run() inside a callback: the loop is already running
      assert.is_false(seen.nested[1])
      assert.matches("sonde.run: the loop is already running", seen.nested[2], 1, true)
    end)

    it("a coroutine's deadline does not stop the callbacks of the loop it runs", function()
      local fired, spins = false, 0
      local co = coroutine.create(function()
        core.timer(1, function()
          -- far more than the deadline hook's 1000 instructions
          for _ = 1, 20000 do spins = spins + 1 end
          fired = true
        end)
        return core.run()
      end)
      core.set_deadline(co, 0.2)
      local t0 = core.now()
      local ok, r = coroutine.resume(co)
      local hit = core.deadline_hit(co)
      core.clear_deadline(co)
      assert.is_true(ok, tostring(r))
      assert.is_true(r)
      assert.is_false(hit)
      assert.are.equal("dead", coroutine.status(co))
      assert.is_true(fired)
      assert.are.equal(20000, spins)
      assert.is_true(core.now() - t0 >= 0.9)
    end)
  end)

  describe("error policy", function()
    it("core.on_error(fn): fn gets each callback error on the main thread and the loop goes on", function()
      local errs, on_main, later = {}, {}, false
      core.on_error(function(e)
        errs[#errs + 1] = e
        on_main[#on_main + 1] = select(2, coroutine.running())
      end)
      local obj = { code = 7 }
      core.timer(0.01, function() error("boom from a timer") end)
      core.timer(0.03, function() error(obj) end)
      core.exec({ argv = { "/bin/true" }, env = ENV, timeout = 5 }, function()
        error("boom from an exec result")
      end)
      core.timer(0.1, function() later = true end)
      local ok, r = pcall(core.run)
      core.on_error(nil)
      assert.is_true(ok, tostring(r))
      assert.is_true(r)
      assert.is_true(later)
      assert.are.equal(3, #errs)
      assert.are.same({ true, true, true }, on_main)
      local strings = {}
      for _, e in ipairs(errs) do
        if type(e) == "string" then strings[#strings + 1] = e else
          assert.are.equal(obj, e)      -- a non-string error is passed as is
        end
      end
      assert.are.equal(2, #strings)
      local all = table.concat(strings, "\n")
      assert.matches("boom from a timer", all, 1, true)
      assert.matches("boom from an exec result", all, 1, true)
      for _, s in ipairs(strings) do
        assert.matches("stack traceback:", s, 1, true)
      end
    end)

    it("core.on_error(fn) also applies when core.run() is called from a coroutine", function()
      local errs = {}
      core.on_error(function(e) errs[#errs + 1] = e end)
      local co = coroutine.create(function()
        core.timer(0.01, function() error("boom in a coroutine's loop") end)
        return core.run()
      end)
      local ok, r = coroutine.resume(co)
      core.on_error(nil)
      assert.is_true(ok, tostring(r))
      assert.is_true(r)
      assert.are.equal(1, #errs)
      assert.matches("boom in a coroutine's loop", errs[1], 1, true)
    end)

    it("a failing error handler is reported on stderr and the loop goes on", function()
      local out, ok = run_child([[
local core = require "sonde.core"
core.on_error(function(e) error("the handler broke too") end)
core.timer(0.01, function() error("first failure") end)
local later = false
core.timer(0.05, function() later = true end)
local r = core.run()
io.stdout:write(r == true and later and "loop went on\n" or "loop stopped\n")
]])
      assert.is_true(ok, out)
      assert.matches("sonde: error in error handler: ", out, 1, true)
      assert.matches("the handler broke too", out, 1, true)
      assert.matches("loop went on", out, 1, true)
    end)

    it("without a handler core.run() raises the first error and can be run again", function()
      core.on_error(nil)
      local after, second = false, false
      core.timer(0.01, function() error("boom without a handler") end)
      core.timer(0.2, function() after = true end)
      local ok, err = pcall(core.run)
      assert.is_false(ok)
      assert.matches("boom without a handler", err, 1, true)
      assert.matches("stack traceback:", err, 1, true)
      assert.is_false(after)              -- the loop stopped at the error
      assert.are.equal(1, core.pending())
      core.timer(0.01, function() second = true end)
      assert.is_true(core.run())
      assert.is_true(after)
      assert.is_true(second)
    end)

    it("without a handler the error reaches the coroutine that called core.run()", function()
      local co = coroutine.create(function()
        core.timer(0.01, function() error("boom to the coroutine") end)
        return pcall(core.run)
      end)
      local ok, pok, err = coroutine.resume(co)
      assert.is_true(ok)
      assert.is_false(pok)
      assert.matches("boom to the coroutine", err, 1, true)
      assert.is_true(core.run())          -- and the loop runs again
    end)
  end)

  describe("signals", function()
    it("a SIGUSR1 handler that removes itself", function()
      local S = core.signals
      local pid = helpers.pid()
      local calls, got, on_main = 0, nil, nil
      local guard
      core.on_signal(S.USR1, function(sig)
        calls = calls + 1
        got = sig
        on_main = select(2, coroutine.running())
        core.on_signal(sig, nil)
        core.cancel(guard)
      end)
      -- a bound: without the signal the watcher would keep run() going
      guard = core.timer(5, function() core.on_signal(S.USR1, nil) end)
      core.timer(0.01, function() os.execute("kill -USR1 " .. pid) end)
      assert.is_true(core.run())
      assert.are.equal(1, calls)
      assert.are.equal(S.USR1, got)
      assert.is_true(on_main)
    end)

    it("a handler that removes itself while the signal arrived twice (child process)", function()
      -- In a child: should the second delivery reach a restored default
      -- disposition, it would kill the child, not the test runner.
      local out, ok = run_child([[
local core = require "sonde.core"
local pid = tonumber(io.open("/proc/self/stat"):read("a"):match("^(%d+)"))
local S = core.signals
local calls, guard = 0, nil
core.on_signal(S.USR1, function(sig)
  calls = calls + 1
  core.on_signal(sig, nil)
  core.cancel(guard)
end)
guard = core.timer(5, function() core.on_signal(S.USR1, nil) end)
core.timer(0.01, function()
  os.execute("kill -USR1 " .. pid .. "; kill -USR1 " .. pid)
end)
core.run()
io.stdout:write("calls " .. calls .. "\n")
]])
      assert.is_true(ok, out)
      assert.are.equal("calls 1\n", out)
    end)
  end)
end)
