-- The host binary as a subprocess, for spec/helpers.lua (its API is listed
-- there): H.host_run, H.host_start, H.cleanup_hosts, H.listen_port, H.fetch.
--
-- The host runs with `--log-level debug` unless the arguments give a level
-- (specs wait on every probe run, successes included), stdin /dev/null,
-- and without the variables of systemd's notify protocol (NOTIFY_SOCKET,
-- WATCHDOG_USEC, WATCHDOG_PID), so that a suite run under systemd does not
-- talk to it; `env` sets variables, where the value "$$" stands for the
-- host's own pid.
return function(H)
  local luassert = require "luassert"
  local q = H.q

  local function env_prefix(env)
    local parts = { "env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID" }
    local names = {}
    for k in pairs(env or {}) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      local v = env[k]
      parts[#parts + 1] = k .. "=" .. (v == "$$" and "$$" or q(v))
    end
    return table.concat(parts, " ")
  end

  local function command(args, env)
    local has_level = false
    for _, a in ipairs(args) do
      if a == "--log-level" then has_level = true end
    end
    if not has_level and #args > 0 and args[1] ~= "--version"
        and args[1] ~= "--help" then
      args = table.move(args, 1, #args, 3, { "--log-level", "debug" })
    end
    local parts = { env_prefix(env), q(H.host_bin) }
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ")
  end

  function H.host_run(args, env, timeout)
    local out, err = os.tmpname(), os.tmpname()
    local _, _, code = os.execute(string.format(
      "timeout -s KILL %d %s </dev/null >%s 2>%s", timeout or 60,
      command(args, env), q(out), q(err)))
    local o, e = H.read_file(out) or "", H.read_file(err) or ""
    os.remove(out)
    os.remove(err)
    return code, o, e
  end

  local Host = {}
  Host.__index = Host
  local remember
  remember, H.cleanup_hosts = H.registry("cleanup")

  --- The pid is the host's own (`exec`); a wrapper shell waits for it and
  -- writes its exit status to a file.
  function H.host_start(args, env)
    local h = setmetatable({ out = os.tmpname(), err = os.tmpname(),
      rcfile = os.tmpname(), pidfile = os.tmpname() }, Host)
    os.remove(h.rcfile)
    os.remove(h.pidfile)
    local inner = string.format("sh -c %s </dev/null >%s 2>%s & echo $! >%s; "
      .. "wait $!; echo $? >%s.tmp; mv %s.tmp %s",
      q("exec " .. command(args, env)), q(h.out), q(h.err), q(h.pidfile),
      q(h.rcfile), q(h.rcfile), q(h.rcfile))
    os.execute(string.format("sh -c %s </dev/null >/dev/null 2>&1 &", q(inner)))
    local deadline = H.now() + 5
    repeat
      h.pid = tonumber((H.read_file(h.pidfile) or ""):match("(%d+)\n"))
      if h.pid then break end
      H.sleep(0.02)
    until H.now() > deadline
    assert(h.pid, "the host did not start")
    return remember(h)
  end

  function Host:stderr() return H.read_file(self.err) or "" end
  function Host:stdout() return H.read_file(self.out) or "" end

  --- Decoded JSON lines of stderr (with --log-format json).
  function Host:events(name, where)
    return H.select((H.decode_lines(self:stderr())), name, where)
  end

  function Host:rc()
    return tonumber((H.read_file(self.rcfile) or ""):match("%d+"))
  end

  function Host:alive()
    return not self:rc() and not H.gone(self.pid)
  end

  function Host:signal(sig)
    os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
  end

  --- pred(self)'s first true value, polling every 50 ms for at most
  -- `timeout` seconds (default 10); else its last value.
  function Host:wait_for(pred, timeout)
    local deadline = H.now() + (timeout or 10)
    repeat
      local v = pred(self)
      if v then return v end
      H.sleep(0.05)
    until H.now() > deadline
    return pred(self)
  end

  --- The exit code, or nil when the host still runs after `timeout`.
  function Host:wait(timeout)
    return self:wait_for(self.rc, timeout)
  end

  --- SIGTERM, then the exit code (nil when still running after `timeout`,
  -- default 10 s).
  function Host:term(timeout)
    self:signal("TERM")
    return self:wait(timeout or 10)
  end

  --- pids of the services the host started (service_start events, in
  -- either log format).
  function Host:service_pids()
    local text, pids = self:stderr(), {}
    for pid in text:gmatch('"event":"service_start"[^\n]-"pid":(%d+)') do
      pids[#pids + 1] = tonumber(pid)
    end
    for _, line in ipairs(H.lines(text)) do
      if line:find(" service_start ", 1, true) then
        pids[#pids + 1] = tonumber(line:match(" pid=(%d+)"))
      end
    end
    return pids
  end

  --- Stop the host for good: SIGTERM (it stops its services), SIGKILL
  -- after 10 s, then the process groups of its services; remove its files.
  function Host:cleanup()
    if self.cleaned then return end
    self.cleaned = true
    if self:alive() then
      self:signal("TERM")
      if not self:wait(10) then
        self:signal("KILL")
        self:wait(3)
      end
    end
    H.kill_groups(self:service_pids())
    for _, p in ipairs { self.out, self.err, self.rcfile, self.pidfile } do
      os.remove(p)
    end
  end

  --- Start the host, wait (default 15 s) until cond(host), SIGTERM it;
  -- assert that cond came and that the host exited 0.  The host and its
  -- whole stderr.
  function H.host_until(args, cond, timeout, env)
    local h = H.host_start(args, env)
    local ok = h:wait_for(cond, timeout or 15)
    local rc = h:term()
    local text = h:stderr()
    luassert.is_truthy(ok, text)
    luassert.are.equal(0, rc, text)
    return h, text
  end

  function H.listen_port(h)
    assert(h:wait_for(function(x) return #x:events("listen") >= 1 end, 15),
      "no listen event:\n" .. h:stderr())
    local ev = h:events("listen")[1]
    return math.tointeger(ev.port), ev
  end

  --- In this process, with sonde.http_get: the result.
  function H.fetch(port, path, method)
    return H.run(function()
      return require("sonde").http_get { url = string.format(
        "http://127.0.0.1:%d%s", port, path), method = method, timeout = 5,
        max_body = 16 * 1024 * 1024 }
    end, 20)
  end
end
