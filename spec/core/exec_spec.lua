-- The exec prober (src/exec.c) against real child processes:
--   sonde.exec(spec [, callback])
-- Inside a sonde task (no callback) it yields and returns the result; with a
-- callback it returns at once and the callback gets the result from the loop.
local sonde = require "sonde"
local helpers = require "helpers"

local run = helpers.run

-- Run one exec probe in a task and return its result.
local function exec(spec, max_seconds)
  return run(function() return sonde.exec(spec) end, max_seconds)
end

-- The error message of calling sonde.exec(spec) inside a task (nil when it
-- did not raise; then the probe ran to its end inside the task).
local function exec_error(spec)
  local ok, err = run(function() return pcall(sonde.exec, spec) end)
  if ok then return nil end
  return tostring(err)
end

local function no_group_left(pids, timeout)
  local left = helpers.eventually(function()
    return #helpers.procs_in_groups(pids) == 0
  end, timeout or 2)
  return left, helpers.describe_procs(helpers.procs_in_groups(pids))
end

describe("sonde.exec", function()
  setup(function()
    -- Grandchildren left behind by probe commands are re-parented to us, so
    -- the prober can reap them (no zombies).
    sonde.set_subreaper(true)
  end)

  teardown(function()
    sonde.set_subreaper(false)
  end)

  describe("exit status", function()
    it("exit 3 with stdout and stderr -> failure exit_code, stdout then stderr", function()
      local r = exec { command = { "sh", "-c", "echo out; echo err >&2; exit 3" } }
      assert.are.same({ "failure", "exit_code", 3, "out\nerr\n" },
        { r.status, r.reason, r.exit_code, r.output })
      assert.is_nil(r.signal)
      assert.is_false(r.truncated)
    end)

    it("stdout comes before stderr even when stderr is written first", function()
      local r = exec { command = { "sh", "-c", "echo err >&2; sleep 0.1; echo out" } }
      assert.are.same({ "success", "out\nerr\n" }, { r.status, r.output })
    end)

    it("true -> success ok, exit_code 0, empty output", function()
      local r = exec { command = { "true" } }
      assert.are.same({ "success", "ok", 0, "" },
        { r.status, r.reason, r.exit_code, r.output })
      assert.is_false(r.truncated)
      assert.is_number(r.duration)
      assert.is_true(r.duration >= 0 and r.duration < 1)
    end)

    it("false -> failure exit_code 1", function()
      local r = exec { command = { "false" } }
      assert.are.same({ "failure", "exit_code", 1, "" },
        { r.status, r.reason, r.exit_code, r.output })
    end)

    -- argv is $(VAR)-expanded (kubelet), where `$$` is an escaped `$`: the
    -- shell's `$$` is written `$$$$` in a command.
    it("$$ in argv is one $ (kubelet expansion)", function()
      local r = exec { command = { "echo", "$$", "$$$$" } }
      assert.are.equal("$ $$\n", r.output)
    end)

    it("killed by SIGKILL -> failure signal 9", function()
      local r = exec { command = { "sh", "-c", "kill -KILL $$$$" } }
      assert.are.same({ "failure", "signal", 9 }, { r.status, r.reason, r.signal })
      assert.is_nil(r.exit_code)
    end)

    it("sh -c nosuchcmd -> failure exit_code 127", function()
      local r = exec { command = { "sh", "-c", "nosuchcmd" } }
      assert.are.same({ "failure", "exit_code", 127 },
        { r.status, r.reason, r.exit_code })
    end)

    it("pid is the command's pid and its process group id", function()
      local r = exec { command = { "sh", "-c", "echo $$$$; cut -d' ' -f5 /proc/$$$$/stat" } }
      assert.are.equal("success", r.status)
      assert.is_number(r.pid)
      assert.is_true(r.pid > 1)
      assert.are.equal(r.pid .. "\n" .. r.pid .. "\n", r.output)
    end)
  end)

  describe("start failures", function()
    it("/nonexistent -> failure not_found", function()
      local r = exec { command = { "/nonexistent" } }
      assert.are.same({ "failure", "not_found" }, { r.status, r.reason })
    end)

    it("a name not on PATH -> failure not_found", function()
      local r = exec { command = { "sonde-no-such-command-xyz" } }
      assert.are.same({ "failure", "not_found" }, { r.status, r.reason })
    end)

    it("a script without the execute bit -> failure permission", function()
      local dir = helpers.tmpdir()
      local script = helpers.write(dir .. "/noexec.sh", "#!/bin/sh\necho hi\n", "644")
      local r = exec { command = { script } }
      helpers.rmtree(dir)
      assert.are.same({ "failure", "permission" }, { r.status, r.reason })
    end)

    -- what names a start failure is looked at once the spawn has failed
    it("a directory as the command -> failure permission naming it", function()
      local r = exec { command = { "/tmp" } }
      assert.are.same({ "failure", "permission", "/tmp: Permission denied" },
        { r.status, r.reason, r.output })
    end)

    it("a cwd that does not exist -> failure not_found naming the cwd", function()
      for _, cmd in ipairs { "true", "/bin/true" } do
        local r = exec { command = { cmd }, cwd = "/nonexistent-sonde-dir" }
        assert.are.same({ "failure", "not_found",
          "/nonexistent-sonde-dir: No such file or directory" },
          { r.status, r.reason, r.output })
      end
    end)

    it("a cwd that is a file -> failure naming the cwd", function()
      local r = exec { command = { "/bin/true" }, cwd = "/etc/hostname" }
      assert.are.same({ "failure", "/etc/hostname: Not a directory" },
        { r.status, r.output })
    end)

    it("a script whose interpreter is missing -> failure not_found naming the "
      .. "script", function()
      local dir = helpers.tmpdir()
      local script = helpers.write(dir .. "/badinterp.sh",
        "#!/nonexistent/interpreter\n", "755")
      local r = exec { command = { script } }
      helpers.rmtree(dir)
      assert.are.same({ "failure", "not_found",
        script .. ": No such file or directory" },
        { r.status, r.reason, r.output })
    end)
  end)

  describe("exit seen after the pipes are closed", function()
    -- the command closes stdout and stderr and runs on: its exit, not the
    -- end of its output, makes the result
    it("its exit code once it exits", function()
      local r = exec { command = { "sh", "-c",
        "echo before; exec >&- 2>&-; sleep 0.3; exit 3" }, timeout = 5 }
      assert.are.same({ "failure", "exit_code", 3, "before\n" },
        { r.status, r.reason, r.exit_code, r.output })
    end)

    it("killed by a signal once the pipes are closed", function()
      local r = exec { command = { "sh", "-c",
        "exec >&- 2>&-; sleep 0.2; kill -KILL $$$$" }, timeout = 5 }
      assert.are.same({ "failure", "signal", 9 },
        { r.status, r.reason, r.signal })
    end)

    it("a timeout when it runs past its deadline, its group gone", function()
      local r = exec { command = { "sh", "-c", "exec >&- 2>&-; sleep 30" },
        timeout = 0.5 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      local gone, left = no_group_left({ r.pid }, 5)
      assert.is_true(gone, "left behind: " .. left)
    end)

    it("many short commands at once all get their exit code", function()
      local results = run(function()
        local out, left = {}, 40
        for i = 1, 40 do
          sonde.exec({ command = { "sh", "-c", "exit " .. (i % 7) } },
            function(r) out[i] = r; left = left - 1 end)
        end
        while left > 0 do sonde.sleep(0.01) end
        return out
      end, 30)
      for i = 1, 40 do
        assert.are.same({ i % 7 == 0 and "success" or "failure", i % 7 },
          { results[i].status, results[i].exit_code })
      end
    end)
  end)

  describe("timeout", function()
    it("sh -c 'sleep 15' with timeout 2 -> failure timeout with the kubelet text", function()
      local r = exec { command = { "sh", "-c", "sleep 15" }, timeout = 2 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration >= 1.9 and r.duration <= 3.5, "duration " .. r.duration)
      assert.are.equal('command timed out: "sh -c sleep 15" timed out after 2s', r.output)
      local gone, left = no_group_left({ r.pid })
      assert.is_true(gone, left)
    end)

    it("the default timeout is 1 s", function()
      local r = exec { command = { "sleep", "5" } }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration >= 0.9 and r.duration <= 2.5, "duration " .. r.duration)
      assert.are.equal('command timed out: "sleep 5" timed out after 1s', r.output)
    end)

    it("a fractional timeout is honoured", function()
      local r = exec { command = { "sleep", "5" }, timeout = 0.3 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration >= 0.25 and r.duration <= 1.5, "duration " .. r.duration)
    end)

    it("output written before the timeout is kept", function()
      local r = exec { command = { "sh", "-c", "echo partial; sleep 15" }, timeout = 1 }
      assert.are.same({ "failure", "timeout", "partial\n" },
        { r.status, r.reason, r.output })
    end)

    it("10 x sh -c 'sleep 300 & sleep 300' time out and leave no process or zombie", function()
      local results = {}
      for i = 1, 10 do
        sonde.exec({ command = { "sh", "-c", "sleep 300 & sleep 300" }, timeout = 1 },
          function(r) results[i] = r end)
      end
      local t0 = helpers.now()
      sonde.run()
      local elapsed = helpers.now() - t0
      local pids = {}
      for i = 1, 10 do
        local r = results[i]
        assert.is_table(r, "no result for probe " .. i)
        assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
        assert.is_number(r.pid)
        pids[#pids + 1] = r.pid
      end
      assert.is_true(elapsed < 5, "10 concurrent 1 s timeouts took " .. elapsed .. " s")
      local gone, left = no_group_left(pids, 2)
      assert.is_true(gone, "left behind: " .. left)
    end)

    it("a command ignoring SIGTERM is killed with SIGKILL after the grace", function()
      local r = exec { command = { "sh", "-c", 'trap "" TERM; sleep 30' }, timeout = 1 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration < 3.5, "duration " .. r.duration)
      local gone, left = no_group_left({ r.pid }, 10)
      assert.is_true(gone, "left behind: " .. left)
    end)

    -- kubelet reports a timeout at the deadline: the killing (SIGTERM, then
    -- SIGKILL after kill_grace) and the reaping go on in the background.
    it("a command ignoring SIGTERM: the timeout result comes at the deadline, "
      .. "not after kill_grace; the group is killed after the grace, no zombie", function()
      local core = require "sonde.core"
      local r, took, alive
      local t0 = helpers.now()
      core.exec({ argv = { "sh", "-c", 'trap "" TERM; echo started; sleep 30' },
                  timeout = 0.3, kill_grace = 2 },
        function(res)
          r, took = res, helpers.now() - t0
          -- it ignores SIGTERM: still there during the grace
          alive = #helpers.procs_in_groups({ res.pid }) > 0
        end)
      -- (the loop runs until the group has been ended too)
      assert.is_true(helpers.eventually(function() return r ~= nil end, 10))
      assert.are.same({ "failure", "timeout", "started\n" },
        { r.status, r.reason, r.output })
      assert.is_true(took < 1.5, "the result took " .. took .. " s")
      assert.is_nil(r.exit_code)
      assert.is_true(alive, "the group was gone at the deadline")
      local gone, left = no_group_left({ r.pid }, 10)
      assert.is_true(gone, "left behind: " .. left)
      local z = helpers.zombies_of()
      assert.are.equal(0, #z, helpers.describe_procs(z))
    end)

    it("a timed-out command's descriptors are closed at the deadline, and "
      .. "freeing the engine's loop kills a group still in its grace", function()
      local out = helpers.run_lua([[
        local core = require "sonde.core"
        core.set_subreaper(true)             -- as the host is
        -- closed now, not by a collection during the run (fds() counts)
        local stat = io.open("/proc/self/stat")
        local me = stat:read("n")
        stat:close()
        local function fds()
          local n, p = 0, io.popen("ls /proc/" .. me .. "/fd")
          for _ in p:lines() do n = n + 1 end
          p:close()
          return n
        end
        local before = fds()
        local r
        core.exec({ argv = { "sh", "-c", 'trap "" TERM; sleep 30' },
                    timeout = 0.2, kill_grace = 60 },
          function(res) r = res; error("stop the loop") end)
        pcall(core.run)
        io.write(r.reason, " ", r.pid, " ", fds() - before, "\n")
        io.flush()
        os.exit(0, true)     -- closes the state: the loop is freed
      ]])
      local reason, pid, extra = out:match("^(%S+) (%d+) (%-?%d+)\n")
      assert.are.equal("timeout", reason, out)
      assert.are.equal("0", extra, out)
      -- the engine exited (its loop freed) well before the 60 s grace
      local gone, left = no_group_left({ tonumber(pid) }, 10)
      assert.is_true(gone, "left behind: " .. left)
    end)
  end)

  describe("output", function()
    it("yes with timeout 1: output capped at 10240 bytes, memory bounded", function()
      collectgarbage()
      local rss0 = helpers.rss_kb()
      local r = exec { command = { "yes" }, timeout = 1 }
      local rss1 = helpers.rss_kb()
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.are.equal(10240, #r.output)
      assert.are.equal(string.rep("y\n", 5120), r.output)
      assert.is_true(r.truncated)
      assert.is_true(rss1 - rss0 < 50 * 1024, "VmRSS grew by " .. (rss1 - rss0) .. " kB")
    end)

    -- A flooding pipe is paused between two bounded reads: the engine
    -- reads at most 64 KiB per 5 ms of it and the writer waits.
    it("yes for its whole timeout: the engine spends little CPU on it", function()
      local cpu = helpers.cpu_seconds
      local c0, t0 = cpu(), helpers.now()
      local r = exec { command = { "yes" }, timeout = 1 }
      local used, wall = cpu() - c0, helpers.now() - t0
      assert.are.same({ "failure", "timeout", 10240 }, { r.status, r.reason, #r.output })
      assert.is_true(used < 0.3 * wall,
        string.format("the engine used %.2f s of CPU in %.2f s", used, wall))
    end)

    it("5 MB then exit 0 with timeout 2: success (dropped past max_output, "
      .. "not a timeout)", function()
      local r = exec { command = { "head", "-c", "5000000", "/dev/zero" }, timeout = 2 }
      assert.are.same({ "success", "ok", 0, 10240, true },
        { r.status, r.reason, r.exit_code, #r.output, r.truncated })
    end)

    it("a flood from an escaped child holding the pipe (paused) does not "
      .. "keep the run past its drain after the command's exit", function()
      local tag = string.format("drain%d.%06d", helpers.pid(), math.random(0, 999999))
      local r = exec { command = { "sh", "-c",
        "setsid yes " .. tag .. " & sleep 0.2; exit 3" }, timeout = 5 }
      assert.are.same({ "failure", "exit_code", 3, true },
        { r.status, r.reason, r.exit_code, r.truncated })
      assert.is_true(r.duration < 4, "duration " .. r.duration)
      -- the escaped `yes` dies of SIGPIPE once the pipe is closed
      local core = require "sonde.core"
      assert.is_true(helpers.eventually(function()
        core.reap_orphans()
        return #helpers.procs_matching(tag:gsub("%p", "%%%0")) == 0
      end, 10), helpers.describe_procs(helpers.procs_matching(tag:gsub("%p", "%%%0"))))
    end)

    it("1 MB then exit 0: success with the first 10240 bytes, truncated", function()
      local r = exec { command = { "head", "-c", "1048576", "/dev/zero" } }
      assert.are.same({ "success", "ok", 0, string.rep("\0", 10240) },
        { r.status, r.reason, r.exit_code, r.output })
      assert.is_true(r.truncated)
    end)

    it("exactly 10240 bytes is not truncated", function()
      local r = exec { command = { "head", "-c", "10240", "/dev/zero" } }
      assert.are.equal("success", r.status)
      assert.are.equal(10240, #r.output)
      assert.is_false(r.truncated)
    end)

    it("max_output = 5 with printf abcdefgh -> abcde", function()
      local r = exec { command = { "printf", "abcdefgh" }, max_output = 5 }
      assert.are.same({ "success", "abcde" }, { r.status, r.output })
      assert.is_true(r.truncated)
    end)

    it("the cap applies to stdout followed by stderr", function()
      local r = exec { command = { "sh", "-c", "printf abc; printf def >&2" }, max_output = 5 }
      assert.are.equal("abcde", r.output)
      assert.is_true(r.truncated)
    end)

    it("binary output with NUL bytes is kept byte for byte", function()
      local r = exec { command = { "printf", [[a\000b\377]] } }
      assert.are.equal("a\0b\255", r.output)
    end)

    it("sh -c 'sleep 30 & echo hi' ends when sh exits; its background group is gone", function()
      local t0 = helpers.now()
      local r = exec { command = { "sh", "-c", "sleep 30 & echo hi" }, timeout = 5 }
      local elapsed = helpers.now() - t0
      assert.are.same({ "success", "ok", "hi\n" }, { r.status, r.reason, r.output })
      assert.is_true(r.duration < 1, "duration " .. r.duration)
      assert.is_true(elapsed < 1.5, "elapsed " .. elapsed)
      local gone, left = no_group_left({ r.pid }, 2)
      assert.is_true(gone, "left behind: " .. left)
    end)

    it("stdin is /dev/null: cat ends at once", function()
      local r = exec { command = { "cat" }, timeout = 5 }
      assert.are.same({ "success", "" }, { r.status, r.output })
      assert.is_true(r.duration < 1, "duration " .. r.duration)
    end)
  end)

  describe("command and environment", function()
    -- name, spec, the output, whether the status (success) is checked too
    for _, c in ipairs {
      { "expands $(VAR) in argv against env",
        { command = { "echo", "$(GREETING)-$$(X)" }, env = { GREETING = "hi" } },
        "hi-$(X)\n", true },
      { "does not use a shell: arguments are passed as they are",
        { command = { "printf", "%s|", "a b", "$HOME", "*" } }, "a b|$HOME|*|" },
      { "the environment is env only (HOME is not inherited)",
        { command = { "sh", "-c", 'echo "$FOO|$HOME"' }, env = { FOO = "bar" } },
        "bar|\n", true },
      { "finds sh through the host's PATH when env has no PATH",
        { command = { "sh", "-c", "echo ok" } }, "ok\n", true },
      { "env.PATH replaces the host's PATH",
        { command = { "/bin/sh", "-c", 'echo "$PATH"' }, env = { PATH = "/custom/bin" } },
        "/custom/bin\n", true },
    } do
      it(c[1], function()
        local r = exec(c[2])
        if c[4] then assert.are.equal("success", r.status) end
        assert.are.equal(c[3], r.output)
      end)
    end

    it("the environment is exactly env plus the host's PATH", function()
      local r = exec { command = { "env" }, env = { A = "1", B = "two words" } }
      assert.are.equal("success", r.status)
      local lines, owner = {}, nil
      for line in r.output:gmatch("[^\n]+") do
        -- (set because this spec makes us a subreaper: see loop.h)
        if line:find("^SONDE_OWNER=") then owner = line
        else lines[#lines + 1] = line end
      end
      table.sort(lines)
      assert.are.same({ "A=1", "B=two words", "PATH=" .. os.getenv("PATH") }, lines)
      assert.is_truthy(owner and owner:find("^SONDE_OWNER=" .. helpers.pid()
        .. "%.%d+%.%d+$"), owner)
    end)

    it("a SONDE_OWNER in env is replaced by the run's own mark", function()
      local r = exec { command = { "env" }, env = { SONDE_OWNER = "forged",
        A = "1" } }
      local marks = {}
      for line in r.output:gmatch("[^\n]+") do
        if line:find("^SONDE_OWNER=") then marks[#marks + 1] = line end
      end
      assert.are.equal(1, #marks, r.output)
      assert.is_truthy(marks[1]:find("^SONDE_OWNER=" .. helpers.pid()
        .. "%.%d+%.%d+$"), marks[1])
    end)

    it("runs in cwd", function()
      local dir = helpers.tmpdir()
      local r = exec { command = { "pwd" }, cwd = dir }
      helpers.rmtree(dir)
      assert.are.same({ "success", dir .. "\n" }, { r.status, r.output })
    end)

    it("the child inherits no stray file descriptors", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      local r = exec { command = { "sh", "-c", "ls /proc/self/fd" } }
      f:close()
      os.remove(path)
      assert.are.equal("success", r.status)
      -- 0 1 2, and 3: the directory ls itself opened
      assert.are.equal("0\n1\n2\n3\n", r.output)
    end)
  end)

  -- `input`: bytes written to the command's stdin (a pipe fed from the
  -- loop without blocking, closed after the last byte).
  describe("input", function()
    it("cat gets the input byte for byte, NULs included, then EOF", function()
      local r = exec { command = { "cat" }, input = "hello\0world\n", timeout = 5 }
      assert.are.same({ "success", "hello\0world\n" }, { r.status, r.output })
    end)

    it("1 MiB (the cap) reaches the command whole", function()
      local r = exec { command = { "wc", "-c" }, input = string.rep("x", 1048576),
        timeout = 10 }
      assert.are.same({ "success", "1048576" }, { r.status, r.output:match("%d+") })
    end)

    it("empty input: stdin is at EOF at once", function()
      local r = exec { command = { "cat" }, input = "", timeout = 5 }
      assert.are.same({ "success", "" }, { r.status, r.output })
    end)

    it("a command that closed its stdin: EPIPE is ignored, no SIGPIPE here", function()
      -- the write gets EPIPE; without care SIGPIPE would kill this process
      local r = exec { command = { "sh", "-c", "exec 0<&-; sleep 0.3; echo done" },
        input = string.rep("x", 200000), timeout = 5 }
      assert.are.same({ "success", "done\n" }, { r.status, r.output })
      r = exec { command = { "true" }, input = string.rep("y", 1048576), timeout = 5 }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("a command that never reads does not hold the loop: its timeout applies", function()
      local t0 = helpers.now()
      local ticks = 0
      local r = run(function()
        local done = false
        sonde.spawn(function()
          while not done do sonde.sleep(0.05) ticks = ticks + 1 end
        end)
        local res = sonde.exec { command = { "sleep", "30" },
          input = string.rep("z", 1048576), timeout = 0.5 }
        done = true
        return res
      end, 20)
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(helpers.now() - t0 < 5, "took " .. (helpers.now() - t0))
      assert.is_true(ticks >= 3, "the loop ran " .. ticks .. " timer ticks")
    end)

    it("more than 1 MiB is refused naming input", function()
      local err = exec_error { command = { "cat" }, input = string.rep("x", 1048577) }
      assert.is_truthy(err and err:find("input"), err)
      err = exec_error { command = { "cat" }, input = 42 }
      assert.is_truthy(err and err:find("input"), err)
    end)
  end)

  -- `env_data`: environment variables set in the child that the $(VAR)
  -- expansion of argv never sees (untrusted values stay data).
  describe("env_data", function()
    local show = { "sh", "-c", 'printf "%s|%s" "$1" "$X"', "sh", "$(X)" }

    it("$(X) stays literal when X is only in env_data; the child sees X", function()
      local r = exec { command = show, env_data = { X = "$(rm -rf /); `id`" } }
      assert.are.same({ "success", "$(X)|$(rm -rf /); `id`" }, { r.status, r.output })
    end)

    it("a name in env and env_data: env expands argv, env_data is in the child", function()
      local r = exec { command = show, env = { X = "from env" },
        env_data = { X = "from data" } }
      assert.are.same({ "success", "from env|from data" }, { r.status, r.output })
    end)

    it("the environment is env, env_data and the host's PATH", function()
      local r = exec { command = { "env" }, env = { A = "1" }, env_data = { B = "2" } }
      local lines = {}
      for line in r.output:gmatch("[^\n]+") do
        -- (SONDE_OWNER: this spec makes us a subreaper, see above)
        if not line:find("^SONDE_OWNER=") then lines[#lines + 1] = line end
      end
      table.sort(lines)
      assert.are.same({ "A=1", "B=2", "PATH=" .. os.getenv("PATH") }, lines)
    end)

    it("bad names or values are refused naming env_data", function()
      for _, bad in ipairs { { ["A=B"] = "x" }, { A = 1 }, { A = "a\0b" }, "x" } do
        local err = exec_error { command = { "true" }, env_data = bad }
        assert.is_truthy(err and err:find("env_data"), err)
      end
    end)
  end)

  describe("codes", function()
    local custom = { [0] = "success", [1] = "warning", [2] = "unknown", default = "failure" }
    -- name, then { exit code, codes, status, reason (nil: not compared) }
    local cases = {
      { "kubelet (default): 0 success, anything else failure", {
        { 0, nil, "success", "ok" }, { 1, nil, "failure", "exit_code" },
        { 2, "kubelet", "failure", "exit_code" }, { 3, "kubelet", "failure", "exit_code" } } },
      { "nagios: 0 success, 1 warning, 2 failure, 3 unknown", {
        { 0, "nagios", "success", "ok" }, { 1, "nagios", "warning", "exit_code" },
        { 2, "nagios", "failure", "exit_code" }, { 3, "nagios", "unknown", "exit_code" } } },
      { "consul: 0 success, 1 warning, other failure", {
        { 0, "consul", "success", "ok" }, { 1, "consul", "warning", "exit_code" },
        { 2, "consul", "failure", "exit_code" }, { 3, "consul", "failure", "exit_code" } } },
      { "a custom table with a default", {
        { 0, custom, "success" }, { 1, custom, "warning" }, { 2, custom, "unknown" },
        { 5, custom, "failure" } } },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        for _, row in ipairs(c[2]) do
          local n, codes, status, reason = row[1], row[2], row[3], row[4]
          local r = exec { command = { "sh", "-c", "exit " .. n }, codes = codes }
          if reason then
            assert.are.same({ status, reason, n }, { r.status, r.reason, r.exit_code })
          else
            assert.are.equal(status, r.status)
          end
        end
      end)
    end
  end)

  describe("resources", function()
    it("the fd count is back to its baseline after 20 probes", function()
      exec { command = { "true" } } -- warm up whatever the loop opens once
      local before = helpers.fd_count()
      for i = 1, 20 do
        local r = exec { command = { "sh", "-c", "echo " .. i .. "; echo e >&2" } }
        assert.are.equal(i .. "\ne\n", r.output)
      end
      assert.are.equal(before, helpers.fd_count())
    end)

    it("two probes in two tasks run concurrently", function()
      local t0 = helpers.now()
      local a, b
      sonde.spawn(function() a = sonde.exec { command = { "sleep", "0.4" } } end)
      sonde.spawn(function() b = sonde.exec { command = { "sleep", "0.4" } } end)
      sonde.run()
      local elapsed = helpers.now() - t0
      assert.are.equal("success", a.status)
      assert.are.equal("success", b.status)
      assert.is_true(elapsed < 0.75, "elapsed " .. elapsed)
    end)
  end)

  describe("callback style", function()
    it("returns at once and calls the callback from sonde.run()", function()
      local got
      sonde.exec({ command = { "sh", "-c", "echo cb" } }, function(r) got = r end)
      assert.is_nil(got)
      sonde.run()
      assert.is_table(got)
      assert.are.same({ "success", "cb\n" }, { got.status, got.output })
    end)

    it("without a callback outside a task raises", function()
      local ok, err = pcall(sonde.exec, { command = { "true" } })
      assert.is_false(ok)
      err = tostring(err)
      assert.is_truthy(err:find("spawn") or err:find("callback"), err)
      sonde.run() -- nothing may have been left pending
    end)
  end)

  describe("spec validation", function()
    -- name, spec, what the message names
    local refused = {
      { "missing command", {}, "command" },
      { "empty command", { command = {} }, "command" },
      { "command that is a string", { command = "true" }, "command" },
      { "command with a non-string element", { command = { "echo", {} } }, "command" },
      { "timeout = 0", { command = { "true" }, timeout = 0 }, "timeout" },
      { "timeout = -1", { command = { "true" }, timeout = -1 }, "timeout" },
      { "unknown key", { command = { "true" }, bogus = 1 }, "bogus" },
      { "unknown codes name", { command = { "true" }, codes = "bogus" }, "codes" },
    }
    for _, c in ipairs(refused) do
      it(c[1], function()
        local err = exec_error(c[2])
        assert.is_truthy(err and err:find(c[3]), err)
      end)
    end

    it("the callback style validates too", function()
      local ok, err = pcall(sonde.exec, { command = {} }, function() end)
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("command"), tostring(err))
      sonde.run()
    end)
  end)

  describe("hardening", function()
    it("timeout = 1e19 raises naming timeout", function()
      helpers.spec_error(sonde.exec, { command = { "true" }, timeout = 1e19 },
        "sonde.exec", "timeout")
    end)

    it("timeout = 1e9 is accepted", function()
      helpers.accepted(sonde.exec, { command = { "true" }, timeout = 1e9 })
    end)

    it("cwd with a NUL byte raises naming cwd", function()
      helpers.spec_error(sonde.exec, { command = { "true" }, cwd = "/tmp\0junk" },
        "cwd", "NUL")
    end)

    it("./true with cwd /bin is success, exit 0", function()
      local r = exec { command = { "./true" }, cwd = "/bin" }
      assert.are.same({ "success", "ok", 0 }, { r.status, r.reason, r.exit_code })
    end)

    it("./nosuch with cwd /bin is failure not_found", function()
      local r = exec { command = { "./nosuch" }, cwd = "/bin" }
      assert.are.same({ "failure", "not_found" }, { r.status, r.reason })
    end)

    it("codes { default = 'unknown' } applies to exit 0 too", function()
      local r = exec { command = { "true" }, codes = { default = "unknown" } }
      assert.are.same({ "unknown", "exit_code", 0 }, { r.status, r.reason, r.exit_code })
    end)

    it("codes { [0] = 'success', default = 'warning' } maps exit 1 to warning", function()
      local r = exec { command = { "false" }, codes = { [0] = "success", default = "warning" } }
      assert.are.same({ "warning", "exit_code", 1 }, { r.status, r.reason, r.exit_code })
    end)

    -- bash, not sh: Debian's sh (dash) does not pass `trap "" CHLD` on to
    -- the command it execs (SigIgn stays 0), bash does.  The child checks
    -- that it really started with SIGCHLD ignored.
    it("with SIGCHLD inherited as ignored, exit statuses are still collected", function()
      local out = helpers.run_lua([[
        local f = assert(io.open("/proc/self/status"))
        local st = f:read("a"); f:close()
        local ign = tonumber(st:match("SigIgn:%s*(%x+)"), 16)
        io.write((ign & (1 << 16)) ~= 0 and "SIGCHLD ignored\n" or "SIGCHLD not ignored\n")
        local sonde = require "sonde"
        sonde.spawn(function()
          local r = sonde.exec { command = { "false" } }
          io.write(tostring(r.status), " ", tostring(r.reason), " ", tostring(r.exit_code), "\n")
        end)
        sonde.run()
      ]], { prefix = [[trap "" CHLD;]], shell = "bash" })
      -- the precondition: the child really started with SIGCHLD ignored
      assert.is_truthy(out:find("SIGCHLD ignored\n", 1, true), "child output:\n" .. out)
      assert.is_truthy(out:find("\nfailure exit_code 1\n", 1, true), "child output:\n" .. out)
    end)
  end)

  describe("under attack", function()
    -- Start Lua `code` in a lua5.4 running beside this process (the
    -- suite's module paths), arg[1] = dir; its pid is written to dir/pid.
    -- Returns the pid and the io.popen handle: closing it waits for the
    -- engine's end (and reaps it: this process is a subreaper here).
    local function background_lua(dir, code)
      helpers.write(dir .. "/engine.lua", code)
      local p = assert(io.popen(string.format(
        "%s timeout 60 sh -c %s </dev/null >%s 2>&1", helpers.lua_env(),
        helpers.q("echo $$ >" .. helpers.q(dir .. "/pid") .. "; exec lua5.4 " ..
          helpers.q(dir .. "/engine.lua") .. " " .. helpers.q(dir)),
        helpers.q(dir .. "/out")), "r"))
      local pid
      for _ = 1, 500 do
        pid = tonumber((helpers.read_file(dir .. "/pid") or ""):match("%d+"))
        if pid then break end
        helpers.sleep(0.01)
      end
      if not pid then p:close() end
      return assert(pid, "the engine did not start"), p
    end

    -- wait (outside the loop) until file `path` exists, at most `secs`
    local function wait_file(path, secs)
      local deadline = helpers.now() + (secs or 10)
      repeat
        local text = helpers.read_file(path)
        if text and text ~= "" then return text end
        helpers.sleep(0.02)
      until helpers.now() > deadline
      return helpers.read_file(path)
    end

    it("megabytes on stderr: output capped at max_output, truncated, "
      .. "promptly", function()
      local t0 = helpers.now()
      local r = exec({ command = { "sh", "-c",
        "echo out; head -c 20000000 /dev/zero | tr '\\0' e >&2; exit 2" },
        timeout = 10 }, 20)
      local took = helpers.now() - t0
      assert.are.same({ "failure", "exit_code", 2, true, 10240 },
        { r.status, r.reason, r.exit_code, r.truncated, #r.output })
      assert.are.equal("out\n" .. string.rep("e", 10236), r.output)
      assert.is_true(took < 8, "took " .. took)
      -- and a stderr flood that never ends: a timeout, output capped
      r = exec({ command = { "sh", "-c", "yes >&2" }, timeout = 0.5 }, 20)
      assert.are.same({ "failure", "timeout", true, 10240 },
        { r.status, r.reason, r.truncated, #r.output })
    end)

    it("out of descriptors: unknown/resource (never failure), and the next "
      .. "run succeeds once descriptors come back", function()
      local out = helpers.run_lua([[
        local sonde = require "sonde"
        local held = {}
        local function line(tag, r)
          io.write(tag, " ", r.status, " ", r.reason, " ", tostring(r.error), "\n")
        end
        sonde.spawn(function()
          line("before", sonde.exec { command = { "true" } })
          while true do
            local f = io.open("/dev/null")
            if not f then break end
            held[#held + 1] = f
          end
          line("none", sonde.exec { command = { "true" } })
          -- 1 to 8 descriptors free: every step is one or the other
          for k = 1, 8 do
            table.remove(held):close()
            line("free" .. k, sonde.exec { command = { "true" } })
          end
          for _, f in ipairs(held) do f:close() end
          line("after", sonde.exec { command = { "true" } })
        end)
        sonde.run()
      ]], { prefix = "ulimit -n 64;" })
      assert.is_truthy(out:find("\nnone unknown resource [^\n]*Too many open files\n"),
        out)
      assert.is_truthy(out:find("^before success ok nil\n"), out)
      assert.is_truthy(out:find("\nafter success ok nil\n$"), out)
      for k = 1, 8 do
        local l = out:match("\nfree" .. k .. " ([^\n]*)")
        assert.is_truthy(l and (l:find("^success ok") or l:find("^unknown resource")),
          out)
      end
    end)

    it("a host stalled (SIGSTOP) past the timeout while the command ran: "
      .. "after SIGCONT its result is a success, not a timeout", function()
      local dir = helpers.tmpdir()
      local pid, engine = background_lua(dir, [[
        local sonde = require "sonde"
        local dir = arg[1]
        sonde.set_subreaper(true)
        sonde.spawn(function()
          local r = sonde.exec { timeout = 1, command = { "sh", "-c",
            "echo started >" .. dir .. "/started; sleep 0.3; echo done" } }
          local f = io.open(dir .. "/result.tmp", "w")
          f:write(r.status, " ", r.reason, " ", r.output)
          f:close()
          os.rename(dir .. "/result.tmp", dir .. "/result")
        end)
        sonde.run()
      ]])
      assert.is_truthy(wait_file(dir .. "/started"), "the command did not start")
      os.execute("kill -STOP " .. pid)
      helpers.sleep(2)                      -- the stall: twice the timeout
      os.execute("kill -CONT " .. pid)
      local result = wait_file(dir .. "/result")
      if not result then os.execute("kill -KILL " .. pid) end
      engine:close()                        -- it ends after the result
      local out = helpers.read_file(dir .. "/out")
      helpers.rmtree(dir)
      assert.are.equal("success ok done\n", result, out)
    end)
  end)
end)
