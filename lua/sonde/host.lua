--- The `sonde` host's command line (called by src/host/main.c).
--
--   sonde [--log-format text|json] [--listen ADDR] SCRIPT [ARGS...]
--       run until SIGTERM/SIGINT; SIGHUP reloads SCRIPT; --listen serves
--       /metrics, /healthz, /readyz, /status (see sonde.metrics) on ADDR:
--       "PORT" or ":PORT" (127.0.0.1 only), "HOST:PORT", "[V6]:PORT"
--   sonde pod [--container NAME] MANIFEST
--                             run a Kubernetes Pod's (or pod template's)
--                             container and its probes (see sonde.pod)
--   sonde check SCRIPT        load and validate, list probes and services;
--                             exit 0, or 2 with the error
--   sonde once [--format text|json] SCRIPT [NAME...]
--                             run each (named) probe once; exit 0 if all
--                             succeeded (warnings included), 1 if any
--                             failed, 3 if any was unknown and none failed
--   sonde --version | --help
--
-- Exit codes: 0 fine, 1 failure (once) or a runtime error, 2 usage or
-- script error, 3 unknown (once).
-- @module sonde.host
local core = require "sonde.core"
local log = require "sonde.log"

local M = {}

local watchdog_timer       -- the pending WATCHDOG=1 keep-alive

local USAGE = [[
usage: sonde [--log-format text|json] [--listen ADDR] SCRIPT [ARGS...]
       sonde [--log-format F] [--listen ADDR] pod [--container NAME] MANIFEST
       sonde check SCRIPT
       sonde once [--format text|json] SCRIPT [NAME...]
       sonde --version | --help

  SCRIPT            run the probes and services the Lua script declares,
                    until SIGTERM or SIGINT; SIGHUP reloads the script
  pod MANIFEST      run a container of a Kubernetes Pod/Deployment manifest
                    (YAML or JSON) with its probes, like SCRIPT
  check SCRIPT      load and validate only; list probes and services
  once SCRIPT       run each probe (or each NAME) once and print results;
                    exit 0 all succeeded, 1 a failure, 3 unknown only
  --log-format F    event lines on stderr as text (default) or json
  --listen ADDR     serve /metrics, /healthz, /readyz, /status on ADDR
                    (PORT or :PORT = 127.0.0.1 only, HOST:PORT, [V6]:PORT)
  --format F        once: results as text (default) or json lines
]]

-- lua.c's convention for the script: arg[0] the script, arg[1..] its
-- arguments (also passed as `...`).
local function set_arg(script, args)
  _G.arg = table.move(args, 1, #args, 1, { [0] = script })
end

local function err(fmt, ...)
  io.stderr:write("sonde: ", string.format(fmt, ...), "\n")
end

-- A load error without the stack traceback (file:line stays in the
-- message); SONDE_TRACEBACK=1 keeps it.
local function load_error(e)
  e = tostring(e)
  if os.getenv("SONDE_TRACEBACK") ~= "1" then
    e = e:gsub("\nstack traceback:.*$", "")
  end
  return e
end

local function plural(n, word)
  return string.format("%d %s%s", n, word, n == 1 and "" or "s")
end

local function cmd_check(script)
  local engine = require "sonde.engine"
  set_arg(script, {})
  -- validate only: probers and sonde.sleep called by the script's top
  -- level start nothing (a task that calls one just stops there)
  require("sonde")._dry_run = true
  local cfg, e = engine.load(script, {})
  if not cfg then err("%s", load_error(e)) return 2 end
  print(string.format("%s: %s, %s", script, plural(#cfg.services, "service"),
    plural(#cfg.probes, "probe")))
  for _, s in ipairs(cfg.services) do
    print(string.format("service %-20s %s", s.name,
      table.concat(s.opts.argv, " ")))
  end
  for _, p in ipairs(cfg.probes) do
    print(string.format("probe   %-20s %-9s %-10s period=%gs timeout=%gs "
      .. "initial_delay=%gs success_threshold=%d failure_threshold=%d%s",
      p.name, p.kind, p.handler, p.period, p.timeout, p.initial_delay,
      p.success_threshold, p.failure_threshold,
      p.service and (" service=" .. p.service.name) or ""))
  end
  return 0
end

local function cmd_once(script, names, format)
  local engine = require "sonde.engine"
  set_arg(script, {})
  local cfg, e = engine.load(script, {})
  if not cfg then err("%s", load_error(e)) return 2 end
  local results
  local ok, nerr = engine.once(cfg, names, function(r) results = r end)
  if not ok then err("%s", nerr) return 2 end
  core.run()
  local failed, unknown = false, false
  for _, r in ipairs(results) do
    if r.status == "failure" then failed = true end
    if r.status == "unknown" then unknown = true end
    if format == "json" then
      io.stdout:write(log.json {
        probe = r.probe, kind = r.kind, status = r.status, reason = r.reason,
        output = r.output, duration = r.duration, time = r.time,
        exit_code = r.exit_code, signal = r.signal,
        http_status = r.http_status, error = r.error,
      }, "\n")
    else
      io.stdout:write(string.format("%-20s %-8s %-16s %7.3fs  %s\n", r.probe,
        r.status, r.reason, r.duration, log.escape_text(r.output or "")))
    end
  end
  io.stdout:flush()
  return failed and 1 or unknown and 3 or 0
end

-- "9100", ":9100" -> 127.0.0.1; "0.0.0.0:9100"; "[::1]:9100"
local function parse_listen(a)
  local host, port = a:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = a:match("^([^:]*):(%d+)$") end
  if not host then port = a:match("^(%d+)$") end
  port = tonumber(port)
  if not port or port > 65535 then return nil end
  if not host or host == "" then host = "127.0.0.1" end
  return host, port
end

-- `script` is a path (SCRIPT) or { name =, load = function } (pod).
local function cmd_run(script, args, listen)
  local engine = require "sonde.engine"
  core.set_subreaper(true)
  -- os.exit from a hook or a task ends the process at once: take the
  -- services and running commands with it (SIGKILL) rather than leave them
  -- orphaned.  The Lua state is not closed (that would free the loop
  -- under its own feet).
  local real_exit = os.exit
  os.exit = function(code)
    core.kill_all(core.signals.KILL)
    io.stdout:flush()
    io.stderr:flush()
    return real_exit(code, false)
  end
  local source = script
  if type(script) == "table" then
    source, script = script.load, script.name
  end
  set_arg(script, args)
  local cfg, e = engine.load(source, args)
  if not cfg then err("%s", load_error(e)) return 2 end
  local task = e
  if listen then
    local port, lerr = require("sonde.metrics").listen(listen.host,
      listen.port, function() return engine.current end)
    if not port then err("--listen: %s", lerr) return 2 end
    log.event("info", "listen", { host = listen.host, port = port })
  end
  engine.current, engine.loading = cfg, cfg
  if #cfg.services == 0 and #cfg.probes == 0 and not listen then
    -- nothing declared: a plain script, run until its work is done.
    -- Probes or services it declares after it first waited start at once
    -- but the host does not handle signals for them: declare them first.
    if coroutine.status(task) ~= "dead" then
      cfg.started = true
      cfg.plain = true
    end
    core.run()
    return 0
  end
  log.event("info", "host_start", { script = script,
    services = #cfg.services, probes = #cfg.probes })
  local S = core.signals
  local function shutdown(sig)
    log.event("info", "host_stop", { script = script, signal = sig })
    if watchdog_timer then core.cancel(watchdog_timer) end
    watchdog_timer = nil
    core.sd_notify("STOPPING=1")
    for _, s in ipairs { S.TERM, S.INT, S.HUP } do core.on_signal(s, nil) end
    core.unlisten()
    engine.stop(engine.current, function()
      core.on_signal(S.CHLD, nil)
      core.reap_orphans()
    end)
  end
  core.on_signal(S.TERM, shutdown)
  core.on_signal(S.INT, shutdown)
  -- reap orphans at most every 0.1 s: with many probe commands SIGCHLD
  -- arrives all the time
  local reap_pending = false
  core.on_signal(S.CHLD, function()
    if reap_pending then return end
    reap_pending = true
    core.timer(0.1, function()
      reap_pending = false
      core.reap_orphans()
    end)
  end)
  core.on_signal(S.HUP, function()
    core.sd_notify("RELOADING=1")
    local new, lerr = engine.load(source, args)
    if not new then
      log.event("error", "reload", { status = "failed", error = load_error(lerr) })
      core.sd_notify("READY=1\nSTATUS=reload failed: " .. tostring(lerr):match("^[^\n]*"))
      return
    end
    engine.apply(new)
    core.sd_notify("READY=1\nSTATUS=" .. plural(#new.probes, "probe") .. ", "
      .. plural(#new.services, "service"))
    log.event("info", "reload", { status = "ok",
      services = #new.services, probes = #new.probes })
  end)
  engine.start(cfg)
  -- systemd Type=notify: ready once the script is loaded and started;
  -- with WatchdogSec=, a keep-alive from the loop at half the interval.
  core.sd_notify("READY=1\nSTATUS=" .. plural(#cfg.probes, "probe") .. ", "
    .. plural(#cfg.services, "service"))
  local wd = core.watchdog_usec()
  if wd then
    local function ping()
      core.sd_notify("WATCHDOG=1")
      watchdog_timer = core.timer(wd / 2e6, ping)
    end
    watchdog_timer = core.timer(wd / 2e6, ping)
  end
  -- An error escaping a task or callback (the script's own sonde.spawn,
  -- code after its top level waited) is logged; the engine goes on.
  while true do
    local ok, rerr = pcall(core.run)
    if ok then break end
    log.event("error", "task_error", { error = tostring(rerr) })
  end
  return 0
end

--- Run the command line `args` (argv without the program name).
-- @treturn integer the exit code
function M.main(args)
  local i = 1
  local listen
  local function usage_error(fmt, ...)
    err(fmt, ...)
    io.stderr:write(USAGE)
    return 2
  end
  while args[i] and args[i]:sub(1, 2) == "--" do
    local a = args[i]
    if a == "--version" then
      print(string.format("sonde %s (%s)", core.version, _VERSION))
      return 0
    elseif a == "--help" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "--log-format" then
      local f = args[i + 1]
      if f ~= "text" and f ~= "json" then
        return usage_error("--log-format takes text or json")
      end
      log.set_format(f)
      i = i + 2
    elseif a == "--listen" then
      local host, port = parse_listen(args[i + 1] or "")
      if not host then
        return usage_error("--listen takes PORT, :PORT, HOST:PORT or [V6]:PORT")
      end
      listen = { host = host, port = port }
      i = i + 2
    else
      return usage_error("unknown option %s", a)
    end
  end
  local cmd = args[i]
  if cmd == nil then return usage_error("no script given") end
  if cmd == "-h" then io.stdout:write(USAGE) return 0 end
  if (cmd == "check" or cmd == "once" or cmd == "pod") and not args[i + 1] then
    return usage_error("%s: no %s given", cmd, cmd == "pod" and "manifest"
      or "script")
  end
  if cmd == "pod" and args[i + 1] then
    local j, container = i + 1, nil
    if args[j] == "--container" then
      container = args[j + 1]
      if not container then return usage_error("--container takes a name") end
      j = j + 2
    end
    local manifest = args[j]
    if not manifest then return usage_error("pod: no manifest given") end
    return cmd_run({ name = manifest, load = function()
      require("sonde.pod").load(manifest, { container = container })
    end }, {}, listen)
  end
  if cmd == "check" and args[i + 1] then
    return cmd_check(args[i + 1])
  elseif cmd == "once" and args[i + 1] then
    local j, format = i + 1, "text"
    if args[j] == "--format" then
      format = args[j + 1]
      if format ~= "text" and format ~= "json" then
        return usage_error("--format takes text or json")
      end
      j = j + 2
    end
    if not args[j] then return usage_error("once: no script given") end
    return cmd_once(args[j], table.move(args, j + 1, #args, 1, {}), format)
  end
  return cmd_run(cmd, table.move(args, i + 1, #args, 1, {}), listen)
end

return M
