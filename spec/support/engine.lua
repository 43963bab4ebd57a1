-- The loop of this busted process, for spec/helpers.lua (its API is listed
-- there): running it, declared probes and loads, probers, log capture.
-- Each function requires the sonde modules it uses when it is called, so
-- that it acts on those of the calling spec file.
return function(H)
  local luassert = require "luassert"
  local read_file = H.read_file

  local function in_task()
    local _, ismain = coroutine.running()
    return not ismain
  end

  --- sonde.run() (declared probes and services start), with a watch timer
  -- that looks every 10 ms whether it is the last operation left.
  function H.drain(max)
    local core = require "sonde.core"
    max = max or 30
    local deadline = core.now() + max
    local function watch()
      if core.pending() == 0 then return end     -- only this watch was left
      if core.now() > deadline then
        error(string.format("helpers: the loop still ran after %gs", max), 0)
      end
      core.timer(0.01, watch)
    end
    core.timer(0.01, watch)
    require("sonde").run()
  end

  function H.run(fn, max)
    assert(not in_task(), "helpers.run called inside a task")
    local results
    -- fn's error is caught and raised after the loop, so that nothing is
    -- left pending for the next spec
    require("sonde").spawn(function()
      results = table.pack(xpcall(fn, debug.traceback))
    end)
    H.drain(max)
    if not results then
      error("helpers.run: the task did not finish (nothing else was pending)", 2)
    end
    if not results[1] then error(results[2], 0) end
    return table.unpack(results, 2, results.n)
  end

  --- Works inside a task (it sleeps) or outside one (it runs the loop, so
  -- children can be reaped meanwhile).
  function H.eventually(pred, timeout)
    timeout = timeout or 2
    local core = require "sonde.core"
    local deadline = core.now() + timeout
    local v = pred()
    if in_task() then
      local task = require "sonde.task"
      while not v and core.now() < deadline do
        task.sleep(0.05)
        v = pred()
      end
      return v
    end
    local function poll()
      if v or core.now() >= deadline then return end
      core.timer(0.05, function() v = pred() poll() end)
    end
    poll()
    require("sonde").run()
    return v
  end

  function H.fresh()
    local config = require "sonde.config"
    local core = require "sonde.core"
    local cur = config.ambient()
    if cur.state == "started" or #cur.services > 0 or #cur.probes > 0 then
      local done = false
      cur:stop(function() done = true end)
      local guard = core.timer(10, function()
        error("helpers.fresh: services did not stop within 10 s", 0)
      end)
      while not done do require("sonde.task").run() end
      core.cancel(guard)
    end
    return config.ambient()
  end

  local active   -- the run_for in progress: { stop = fn }

  function H.stop_now()
    if active then active.stop() end
  end

  function H.kill_services(cfg)
    local pids = {}
    for _, s in ipairs((cfg or {}).services or {}) do
      if s.pid then pids[#pids + 1] = s.pid end
    end
    H.kill_groups(pids)
  end

  --- Run the load until every probe of `ps` has ended `n` runs (1), at
  -- most `max` seconds (15); the load is stopped after it (its probes'
  -- workers stopped: nothing changes any more).
  function H.run_until_ran(ps, n, max)
    local core = require "sonde.core"
    n = n or 1
    local function all_ran()
      for _, p in ipairs(ps) do
        if p.runs < n then return false end
      end
      return true
    end
    local t
    local function poll()
      t = nil
      if all_ran() then H.stop_now() else t = core.timer(0.02, poll) end
    end
    local ok, err = pcall(H.run_for, max or 15, { at = { { 0.02, poll } } })
    if t then core.cancel(t) end
    assert(ok, err)
    for _, p in ipairs(ps) do
      assert(p.runs >= n, p.name .. " ran " .. p.runs .. " times")
    end
  end

  --- Returns whether the load's stop completed.
  function H.run_for(seconds, opts)
    opts = opts or {}
    local config = require "sonde.config"
    local core = require "sonde.core"
    local get = opts.load or config.ambient
    local max = opts.max or 20
    local timers, watchdog = {}, nil
    local stopped, stopping = false, false
    local function stop()
      if stopping then return end
      stopping = true
      for _, t in ipairs(timers) do core.cancel(t) end
      watchdog = core.timer(max, function()
        error(string.format("helpers.run_for: the loop still ran %gs after "
          .. "the stop", max), 0)
      end)
      get():stop(function()
        stopped = true
        if watchdog then core.cancel(watchdog) end
      end)
    end
    active = { stop = stop }
    for _, a in ipairs(opts.at or {}) do
      timers[#timers + 1] = core.timer(a[1], a[2])
    end
    timers[#timers + 1] = core.timer(seconds, stop)
    local ok, err = pcall(require("sonde").run)
    active = nil
    for _, t in ipairs(timers) do core.cancel(t) end
    if watchdog then core.cancel(watchdog) end
    if not ok then
      -- leave nothing running for the next spec
      local cfg = get()
      pcall(cfg.stop, cfg, function() end)
      H.kill_services(cfg)
      error(err, 0)
    end
    return stopped
  end

  --- H.run_for with the log captured; returns the events logged.
  function H.run_logged(seconds, opts)
    local log = H.capture()
    local ok, err = pcall(H.run_for, seconds, opts)
    local evs = ok and log:all() or {}
    log:close()
    if not ok then error(err, 0) end
    return evs
  end

  --- Each run reads the next line of `seq` (an exit code), prints "run N
  -- exit C" and exits with it; beyond the end with `after` (default 0).
  -- Returns the command (argv).
  function H.scripted(dir, codes, after)
    H.write(dir .. "/seq", table.concat(codes, "\n") .. "\n")
    H.write(dir .. "/run.sh", table.concat({
      "#!/bin/sh",
      'd="$1"',
      'n=$(cat "$d/n" 2>/dev/null || echo 0)',
      "n=$((n+1))",
      'echo "$n" > "$d/n"',
      'c=$(sed -n "${n}p" "$d/seq")',
      '[ -n "$c" ] || c=' .. tostring(after or 0),
      'echo "run $n exit $c"',
      'exit "$c"',
    }, "\n") .. "\n", "755")
    return { dir .. "/run.sh", dir }
  end

  function H.error_here(fn, ...)
    local here = debug.getinfo(2, "S").short_src .. ":"
    local ok, err = pcall(fn, ...)
    assert(not ok, "no error raised")
    assert(type(err) == "string", "the error is a " .. type(err))
    assert(err:sub(1, #here) == here, "the error is not at " .. here .. " " .. err)
    local line, msg = err:sub(#here + 1):match("^(%d+): (.*)$")
    assert(line, "no line number in: " .. err)
    return msg, tonumber(line)
  end

  function H.closer(list, name)
    return setmetatable({}, { __close = function() list[#list + 1] = name end })
  end

  -- Set by spec/support/setup.lua: where the log goes outside captures.
  H.quiet_log = nil

  --- Run prober(spec, cb) (sonde.exec, .http_get, .tcp_socket) and the
  -- loop; its result (the callback must be called exactly once).
  function H.probe(prober, spec)
    local result, calls = nil, 0
    prober(spec, function(r) result = r; calls = calls + 1 end)
    require("sonde").run()
    luassert.are.equal(1, calls, "callback must be called exactly once")
    return result
  end

  --- Assert that prober(spec, cb) raises at once, with every needle (plain
  -- text) in the message; returns it.  A spec wrongly accepted is cancelled
  -- at once, so that nothing is left waiting.
  function H.spec_error(prober, spec, ...)
    local ok, res = pcall(prober, spec, function() end)
    if ok then require("sonde").cancel(res) end
    require("sonde").run()
    luassert.is_false(ok, "expected a spec error, but the probe was started")
    local err = tostring(res)
    for _, needle in ipairs { ... } do
      luassert.is_truthy(err:find(needle, 1, true),
        ("error message %q should mention %q"):format(err, needle))
    end
    return err
  end

  --- Two functions for one prober: spec -> H.probe(prober, spec), and
  -- (spec, ...) -> H.spec_error(prober, spec, ...).
  function H.prober(prober)
    return function(spec) return H.probe(prober, spec) end,
      function(spec, ...) return H.spec_error(prober, spec, ...) end
  end

  --- Assert that prober(spec, cb) is accepted: the operation it returns is
  -- cancelled at once (still pending), and the loop has nothing left.
  function H.accepted(prober, spec)
    local sonde = require "sonde"
    local called = false
    local ok, id = pcall(prober, spec, function() called = true end)
    luassert.is_true(ok, "spec should be accepted, got: " .. tostring(id))
    luassert.is_not_nil(id, "an operation id is expected")
    luassert.is_true(sonde.cancel(id), "the operation should still be pending")
    local t0 = sonde.now()
    require("sonde").run()
    luassert.is_false(called, "a cancelled operation's callback must not run")
    luassert.is_true(sonde.now() - t0 < 2, "sonde.run() waited after cancel")
  end

  local Capture = {}
  Capture.__index = Capture

  function H.capture()
    local log = require "sonde.log"
    local path = os.tmpname()
    local f = assert(io.open(path, "w+b"))
    local saved = { format = log.get_format(), level = log.get_level() }
    log.set_sink(f)
    log.set_format("json")
    log.set_level("debug")
    return setmetatable({ path = path, file = f, saved = saved }, Capture)
  end

  function Capture:text()
    self.file:flush()
    return read_file(self.path) or ""
  end

  function Capture:all()
    local good, bad = H.decode_lines(self:text())
    assert(#bad == 0, "log lines that are not JSON: " .. table.concat(bad, "\n"))
    return good
  end

  function Capture:events(name, where)
    return H.select(self:all(), name, where)
  end

  function Capture:close()
    local log = require "sonde.log"
    log.set_sink(H.quiet_log)
    log.set_format(self.saved.format)
    log.set_level(self.saved.level)
    if self.file then self.file:close() self.file = nil end
    os.remove(self.path)
  end
end
