--- `sonde [--listen ADDR] SCRIPT [ARGS...]` and `sonde pod MANIFEST`: run
-- a load until SIGTERM or SIGINT; SIGHUP reloads.
--
--   * The script's top level runs as a task of the load (bounded by
--     sonde.config.load_bound until it finishes or first waits); then
--     its services and probes start.  A script that declares nothing runs
--     as a plain Lua script on the loop and the host exits when its work is
--     done.
--   * SIGTERM / SIGINT, or the script's own `sonde.stop()`, stop the load
--     (sonde.config: probes, tasks, timers, operations, then services with
--     their grace) and the host exits 0, within the services' grace plus
--     about a second; a second SIGTERM / SIGINT meanwhile kills the
--     services (SIGKILL), and SIGHUP is ignored from then on.
--   * SIGHUP loads the script again: on success the new load replaces the
--     old one (what did not change keeps running); on failure the error is
--     logged (`reload status=failed`) and the running load goes on.
--   * The host is a child subreaper and reaps orphaned descendants.  What
--     a command leaves behind outside its process group (`setsid`, a
--     double fork, a daemon) is ended (SIGTERM, SIGKILL after a grace):
--     a probe's or action's once that command has ended, a service's when
--     its process exits (with the service's grace), and at shutdown every
--     one that is left, with the longest grace of the services (at least
--     1 s) counted from the signal; the host exits once none is left.  An
--     error escaping a task or callback is logged (`task_error`) and the
--     engine goes on; `os.exit` kills the running commands first.
--   * systemd `Type=notify`: READY=1 once started, RELOADING=1 / READY=1
--     around a reload, STOPPING=1, and WATCHDOG=1 every half WatchdogSec.
-- @module sonde.host.run
local core = require "sonde.core"
local log = require "sonde.log"
local task = require "sonde.task"
local config = require "sonde.config"
local endpoints = require "sonde.endpoints"
local blackbox = require "sonde.blackbox"
local common = require "sonde.host.common"
local metrics = require "sonde.metrics"
local otlp = require "sonde.otlp"

local M = {}

--- Seconds between two returns of the heap's free memory to the system.
M.TRIM_PERIOD = 10

local S = core.signals
local plural = common.plural

local function run_loop()
  common.log_errors()
  task.run()
end

-- The grace of the shutdown's ending of escaped processes: the longest of
-- the services', at least 1 s (the exec prober's kill grace).
local function shutdown_grace(cfg)
  local g = 1
  for _, s in ipairs(cfg.services) do g = math.max(g, s.grace) end
  return g
end

-- A plain script has ended: end what its commands left behind.
local function sweep_plain()
  core.end_orphans(1, nil, function() end)
  run_loop()
end

local function status_line(cfg)
  return plural(#cfg.probes, "probe") .. ", " .. plural(#cfg.services, "service")
end

--- `source` (see sonde.host.common.source) with a blackbox_exporter
-- configuration read first at each load: the load fails with its error,
-- or the configuration becomes the one `sonde.module` takes modules from
-- and the load's `/probe` serves; `loaded(ok)` is told which (the
-- /metrics reload gauges).  Used by run, check and once with
-- `--config.file`.
function M.with_blackbox(source, path, loaded)
  local inner = source.load
  return { name = source.name, manifest = source.manifest, load = function(...)
    local conf, err = blackbox.load(path)
    if loaded then loaded(conf ~= nil) end
    if not conf then error(err, 0) end
    blackbox.current = conf
    config.ambient().blackbox = conf
    -- the modules left out, at each load: /probe answers them 501
    for name, why in pairs(conf.unsupported) do
      if type(name) == "string" then
        log.event("error", "blackbox_module_unsupported", { module = name,
          error = why })
      end
    end
    if type(inner) == "string" then
      local chunk, lerr = loadfile(inner)
      if not chunk then error(lerr, 0) end
      return chunk(...)
    end
    return inner(...)
  end }
end

--- Run the command.
-- @tparam table source see sonde.host.common.source
-- @tparam table args the script's arguments
-- @tparam[opt] table listen `{ host, port }` for the endpoints
-- @tparam[opt] table push `{ url, interval, headers, resource }`: the OTLP push of
-- the series /metrics serves (sonde.otlp); it belongs to the host, not to
-- a load: it goes on over reloads (with the new load's series) and ends
-- with the host
-- @tparam[opt] table bb `{ path, offset }`: a blackbox_exporter
-- configuration read at each load (before the script, which may use its
-- modules: sonde.module) and served on `/probe` (sonde.endpoints)
-- @treturn integer exit code
function M.main(source, args, listen, push, bb)
  core.set_subreaper(true)
  common.guard_exit()
  -- Lua's generational collector: a host's heap is mostly long-lived
  -- (thousands of probes and their tables) and its garbage short-lived
  -- (scrapes, results read, log lines).  The incremental collector walks
  -- the whole heap at every cycle, and a scrape's garbage started cycles
  -- whose steps held the loop for tens of ms at 10,000 probes (probe
  -- lateness p99 with a scraper polling /metrics and /status every
  -- second: 37-82 ms); the young collections of the generational one
  -- walk what is new (p99 0.3-2.9 ms the same way).
  collectgarbage("generational")
  task.hosted = true
  common.set_arg(source.name, args)
  if bb then
    source = M.with_blackbox(source, bb.path, function(ok)
      endpoints.config_ok = ok
      if ok then endpoints.config_time = core.wall_time() end
    end)
    endpoints.timeout_offset = bb.offset
  end
  local current, err
  local exporter, push_scope
  if push then
    local ok, e = pcall(otlp.exporter, { url = push.url,
      interval = push.interval, headers = push.headers,
      resource = push.resource,
      collect = function() return metrics.render(current) end })
    if not ok then common.err("--otlp: %s", task.text_of(e)) return 2 end
    exporter = e
  end
  current, err = config.load(source.load, args, { name = source.name })
  if not current then common.err("%s", common.load_error(err)) return 2 end
  if listen then
    local port, lerr = endpoints.listen(listen.host, listen.port,
      function() return current end)
    if not port then
      current:stop()
      common.err("--listen: %s", lerr)
      return 2
    end
    log.event("info", "listen", { host = listen.host, port = port })
  end
  if current:empty() and not listen and not exporter then
    -- nothing declared: a plain script, run until its work is done.
    -- What it declares after it first waited starts at once, but the host
    -- does not handle signals for it: declare first.
    current.plain = true
    current:start()
    run_loop()
    sweep_plain()
    return 0
  end
  log.event("info", "host_start", { script = source.name,
    services = #current.services, probes = #current.probes })
  local watchdog, trimmer, stopping, signals_off
  -- SIGTERM, SIGINT, or the script stopped its own load (sonde.stop()):
  -- end it all; the loop then runs out and the host exits.  A second
  -- SIGTERM or SIGINT meanwhile kills the services at once (SIGKILL)
  -- rather than leave them behind; SIGHUP is ignored from now on.
  local function shutdown(sig)
    if stopping then
      if sig ~= "script" then
        log.event("warn", "host_stop", { script = source.name, signal = sig,
          detail = "stopping already: services killed" })
        core.kill_all(S.KILL)
        core.end_orphans(0)                 -- and what escaped: SIGKILL
      end
      return
    end
    stopping = true
    log.event("info", "host_stop", { script = source.name, signal = sig })
    if watchdog then core.cancel(watchdog) end
    if trimmer then core.cancel(trimmer) end
    watchdog, trimmer = nil, nil
    core.sd_notify("STOPPING=1")
    endpoints.close()
    if push_scope then                      -- its timers and request
      exporter:stop()
      push_scope:close()
    end
    -- the load stops, and every escaped descendant (the services' too)
    -- gets SIGTERM now and SIGKILL when the services' grace is over; the
    -- signals are watched until both are done
    local left = 2
    local function done()
      left = left - 1
      if left > 0 then return end
      signals_off = true
      for _, x in ipairs { S.TERM, S.INT, S.HUP, S.CHLD } do
        core.on_signal(x, nil)
      end
      core.reap_orphans()
    end
    core.end_orphans(shutdown_grace(current), nil, done)
    current:stop(done)
  end
  local function own(cfg)
    cfg.on_stop = function() shutdown("script") end
    return cfg
  end
  own(current)
  core.on_signal(S.TERM, shutdown)
  core.on_signal(S.INT, shutdown)
  -- reap orphans 0.1 s after a child exits, at most every 0.1 s.  With
  -- many probe commands SIGCHLD arrives all the time, and a signal
  -- delivered costs the host more than the rest of a command's run: once
  -- one has come, SIGCHLD is not watched (its default: ignored, the exit
  -- statuses kept) until the scan, which watches it again first, then
  -- reaps what exited meanwhile (a child exiting after that signals the
  -- next scan).
  local function watch_chld()
    core.on_signal(S.CHLD, function()
      core.on_signal(S.CHLD, nil)
      core.timer(0.1, function()
        if signals_off then return end      -- the host is ending
        watch_chld()
        core.reap_orphans()
      end)
    end)
  end
  watch_chld()
  core.on_signal(S.HUP, function()
    if stopping then return end
    core.sd_notify("RELOADING=1")
    local new, lerr = config.load(source.load, args, { name = source.name })
    if not new then
      lerr = common.load_error(lerr)
      log.event("error", "reload", { status = "failed", error = lerr })
      core.sd_notify("READY=1\nSTATUS=reload failed: " .. lerr:match("^[^\n]*"))
      return
    end
    if new.state == "stopped" then          -- its top level called sonde.stop()
      return shutdown("script")
    end
    local ok, aerr = pcall(config.apply, current, own(new))
    if not ok then                          -- a bug: keep what runs
      new:stop()
      log.event("error", "reload", { status = "failed",
        error = task.text_of(aerr) })
      return
    end
    current = new
    collectgarbage()      -- the old load's garbage, as after the first
    core.trim()
    core.sd_notify("READY=1\nSTATUS=" .. status_line(new))
    log.event("info", "reload", { status = "ok",
      services = #new.services, probes = #new.probes })
  end)
  if current.state == "stopped" then        -- its top level called sonde.stop()
    shutdown("script")
  end
  current:start()
  if exporter and not stopping then
    push_scope = task.scope { name = "otlp" }
    task.within(push_scope, exporter.start, exporter)
  end
  -- what loading left behind (validation, the top level's garbage) goes
  -- back to the system: with thousands of probes it is most of the peak
  collectgarbage()
  core.trim()
  -- systemd Type=notify: ready once the script is loaded and started;
  -- with WatchdogSec=, a keep-alive from the loop at half the interval.
  core.sd_notify("READY=1\nSTATUS=" .. status_line(current))
  local wd = core.watchdog_usec()
  if wd and not stopping then          -- (a script that stopped itself)
    local function ping()
      core.sd_notify("WATCHDOG=1")
      watchdog = core.timer(wd / 2e6, ping)
    end
    watchdog = core.timer(wd / 2e6, ping)
  end
  -- What the heap has freed goes back to the system every TRIM_PERIOD
  -- seconds (a burst of results or logs leaves free memory that malloc
  -- keeps otherwise): a fraction of a millisecond when there is little.
  local function trim()
    core.trim()
    trimmer = core.timer(M.TRIM_PERIOD, trim)
  end
  if not stopping then trimmer = core.timer(M.TRIM_PERIOD, trim) end
  run_loop()
  return 0
end

return M
