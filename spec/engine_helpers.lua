-- spec/engine_helpers.lua - shared helpers for the engine specs
-- (spec/03-engine, in-process) and the host specs (spec/04-host, the
-- `sonde` binary as a subprocess).
--
--   local E = require "engine_helpers"
--
-- In-process:
--   E.fresh()                 stop the current (default) load, so that the
--                             next declarations go into a new one
--   local log = E.capture()   log events as JSON lines into a temp file;
--   log:events("probe_result")  decoded events (all when no name given)
--   log:close()               restore stderr and the text format
--   E.run_for(seconds, max)   sonde.run() with the current configuration,
--                             stopped from a timer after `seconds`; a
--                             watchdog raises if the loop is still going
--                             `max` seconds later
--
-- Host:
--   E.host_bin()              path of build/bin/sonde
--   E.host_run(args, env)     run the host to its end (timeout 60 s):
--                             returns exit code, stdout, stderr
--   local h = E.host_start(args, env)   start in the background
--   h:stderr() h:stdout() h:alive() h:signal("TERM") h:wait(timeout)
--   h:rc()  h:kill()          (kill: TERM, then KILL, and kill the process
--                             groups of every service_start pid logged)
local helpers = require "helpers"

local E = {}

local q = helpers.shell_quote
E.q = q

local ok_cjson, cjson = pcall(require, "cjson")
local dkjson
if not ok_cjson then dkjson = require "dkjson" end

--- Decode one JSON text; returns the value or nil, error.
function E.json_decode(s)
  if ok_cjson then
    local ok, v = pcall(cjson.decode, s)
    if not ok then return nil, v end
    return v
  end
  local v, _, err = dkjson.decode(s, 1, nil)
  if err then return nil, err end
  return v
end

--- The JSON null value of the decoder (for comparisons).
E.null = ok_cjson and cjson.null or (dkjson and dkjson.null)

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
E.read_file = read_file

--- Lines of a text ("" -> {}).
function E.lines(text)
  -- one pass with plain find: patterns that rescan are quadratic on the
  -- megabyte-long lines some specs produce
  local out, pos = {}, 1
  text = text or ""
  while true do
    local nl = text:find("\n", pos, true)
    if not nl then break end
    out[#out + 1] = text:sub(pos, nl - 1)
    pos = nl + 1
  end
  if pos <= #text then out[#out + 1] = text:sub(pos) end
  return out
end

--- Decode every line of a JSON-lines text; bad lines are returned in the
-- second list.
function E.decode_lines(text)
  local good, bad = {}, {}
  for _, line in ipairs(E.lines(text)) do
    if line ~= "" then
      local v = E.json_decode(line)
      if type(v) == "table" then good[#good + 1] = v else bad[#bad + 1] = line end
    end
  end
  return good, bad
end

--- Events named `name` (all when nil) out of decoded events, optionally
-- filtered by field values: E.select(evs, "probe_result", { probe = "a" }).
function E.select(evs, name, where)
  local out = {}
  for _, e in ipairs(evs) do
    if name == nil or e.event == name then
      local match = true
      for k, v in pairs(where or {}) do
        if e[k] ~= v then match = false break end
      end
      if match then out[#out + 1] = e end
    end
  end
  return out
end

---------------------------------------------------------------------------
-- In-process engine
---------------------------------------------------------------------------

--- Stop the current (default) load, waiting for its services, so that
-- the next declarations go into a fresh one.
function E.fresh()
  local config = require "sonde.config"
  local task = require "sonde.task"
  local core = require "sonde.core"
  local cur = config.ambient()
  if cur.state == "started" or #cur.services > 0 or #cur.probes > 0 then
    local done = false
    cur:stop(function() done = true end)
    local guard = core.timer(10, function()
      error("engine_helpers.fresh: services did not stop within 10 s", 0)
    end)
    while not done do task.run() end
    core.cancel(guard)
  end
  return config.ambient()
end

local Capture = {}
Capture.__index = Capture

--- Log events to a temp file as JSON.
function E.capture()
  local log = require "sonde.log"
  local path = os.tmpname()
  local f = assert(io.open(path, "w+b"))
  log.set_sink(f)
  log.set_format("json")
  log.set_level("debug")
  return setmetatable({ path = path, file = f }, Capture)
end

function Capture:text()
  self.file:flush()
  return read_file(self.path) or ""
end

function Capture:all()
  local good, bad = E.decode_lines(self:text())
  assert(#bad == 0, "log lines that are not JSON: " .. table.concat(bad, "\n"))
  return good
end

function Capture:events(name, where)
  return E.select(self:all(), name, where)
end

function Capture:close()
  local log = require "sonde.log"
  log.set_sink(io.stderr)
  log.set_format("text")
  if self.file then self.file:close() self.file = nil end
  os.remove(self.path)
end

--- Run the loop with the current configuration for `seconds`, then stop
-- it (probes, then services with their grace).  A watchdog raises if the
-- loop has not returned `max_extra` (default 20) seconds after the stop.
-- `at` is an optional list of { seconds, fn } called during the run.
local active   -- the run_for in progress: { timers, stop }

--- Stop the run_for in progress now (from a hook or a timer): its
-- pending timers are cancelled and the configuration is stopped.
function E.stop_now()
  if active then active.stop() end
end

function E.run_for(seconds, at, max_extra)
  local sonde = require "sonde"
  local config = require "sonde.config"
  local core = require "sonde.core"
  local cfg = config.ambient()
  local timers = {}
  local watchdog
  local stopped, stopping = false, false
  local function stop()
    if stopping then return end
    stopping = true
    for _, t in ipairs(timers) do core.cancel(t) end
    watchdog = core.timer(max_extra or 20, function()
      error(string.format("engine_helpers.run_for: the loop still ran %gs "
        .. "after the stop", max_extra or 20), 0)
    end)
    cfg:stop(function()
      stopped = true
      if watchdog then core.cancel(watchdog) end
    end)
  end
  active = { stop = stop }
  for _, a in ipairs(at or {}) do
    timers[#timers + 1] = sonde.after(a[1], a[2])
  end
  timers[#timers + 1] = core.timer(seconds, stop)
  local ok, err = pcall(sonde.run)
  active = nil
  for _, t in ipairs(timers) do core.cancel(t) end
  if watchdog then core.cancel(watchdog) end
  if not ok then
    -- leave nothing running for the next spec
    pcall(cfg.stop, cfg, function() end)
    E.kill_services(cfg)
    error(err, 0)
  end
  return stopped
end

--- Kill (SIGKILL) the process groups of the given pids, if still there.
function E.kill_groups(pids)
  for _, pid in ipairs(pids) do
    pid = math.tointeger(pid)
    if pid and pid > 1 then
      os.execute(string.format("kill -KILL -- -%d 2>/dev/null; kill -KILL %d "
        .. "2>/dev/null", pid, pid))
    end
  end
end

--- Services of a configuration: SIGKILL their groups (teardown safety).
function E.kill_services(cfg)
  local pids = {}
  for _, s in ipairs((cfg or {}).services or {}) do
    if s.pid then pids[#pids + 1] = s.pid end
  end
  E.kill_groups(pids)
end

--- A scripted exec command: each run reads the next line of `seq` (an
-- exit code) and exits with it, printing "run N exit C".  Beyond the end
-- of the sequence it exits with `after` (default 0).
-- Returns the command (argv) and the directory.
function E.scripted(dir, codes, after)
  helpers.write(dir .. "/seq", table.concat(codes, "\n") .. "\n")
  helpers.write(dir .. "/run.sh", table.concat({
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

--- Our zombie children (state Z, ppid = us).
function E.zombie_children()
  local me = helpers.pid()
  local out = {}
  local p = assert(io.popen("ls -1 /proc 2>/dev/null"))
  local pids = {}
  for line in p:lines() do
    local pid = tonumber(line:match("^%d+$"))
    if pid then pids[#pids + 1] = pid end
  end
  p:close()
  for _, pid in ipairs(pids) do
    local st = helpers.proc_stat(pid)
    if st and st.ppid == me and st.state == "Z" then out[#out + 1] = st end
  end
  return out
end

---------------------------------------------------------------------------
-- The host binary
---------------------------------------------------------------------------

function E.host_bin()
  local b = os.getenv("SONDE_BUILD")
  if b == nil or b == "" then b = "build" end
  return b .. "/bin/sonde"
end

local function env_prefix(env)
  local parts = {}
  local names = {}
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. q(env[k]) end
  if #parts == 0 then return "" end
  return "env " .. table.concat(parts, " ") .. " "
end

-- The host runs with --log-level debug unless the args set a level: specs
-- wait on every probe run, successes included.
local function argv_text(args)
  local has_level = false
  for _, a in ipairs(args) do
    if a == "--log-level" then has_level = true end
  end
  if not has_level and args[1] ~= "--version" and args[1] ~= "--help"
      and #args > 0 then
    args = table.move(args, 1, #args, 3, { "--log-level", "debug" })
  end
  local parts = {}
  for i, a in ipairs(args) do parts[i] = q(a) end
  return table.concat(parts, " ")
end

--- Run the host to its end: exit code, stdout, stderr.
function E.host_run(args, env, timeout)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = string.format("timeout -s KILL %d %s%s %s </dev/null >%s 2>%s",
    timeout or 60, env_prefix(env), q(E.host_bin()), argv_text(args), q(out),
    q(err))
  local _, _, code = os.execute(cmd)
  local o, e = read_file(out) or "", read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return code, o, e
end

local Host = {}
Host.__index = Host

--- Start the host in the background; its pid is the host itself (a
-- wrapper shell waits for it and writes its exit status to a file).
function E.host_start(args, env)
  local h = setmetatable({
    out = os.tmpname(), err = os.tmpname(), rcfile = os.tmpname(),
    pidfile = os.tmpname(),
  }, Host)
  os.remove(h.rcfile)
  local inner = string.format("%s%s %s </dev/null >%s 2>%s & echo $! >%s; "
    .. "wait $!; echo $? >%s.tmp; mv %s.tmp %s",
    env_prefix(env), q(E.host_bin()), argv_text(args), q(h.out), q(h.err),
    q(h.pidfile), q(h.rcfile), q(h.rcfile), q(h.rcfile))
  os.execute(string.format("sh -c %s </dev/null >/dev/null 2>&1 &", q(inner)))
  local deadline = helpers.now() + 5
  while helpers.now() < deadline do
    local s = read_file(h.pidfile)
    h.pid = s and tonumber(s:match("%d+"))
    if h.pid then break end
    os.execute("sleep 0.02")
  end
  assert(h.pid, "host did not start")
  return h
end

function Host:stderr() return read_file(self.err) or "" end
function Host:stdout() return read_file(self.out) or "" end

--- Decoded JSON lines of stderr (with --log-format json).
function Host:events(name, where)
  local good = E.decode_lines(self:stderr())
  return E.select(good, name, where)
end

function Host:rc()
  local s = read_file(self.rcfile)
  return s and tonumber(s:match("%d+"))
end

function Host:alive()
  if self:rc() then return false end
  local s = read_file(string.format("/proc/%d/stat", self.pid))
  return s ~= nil and s:match("^%d+ %b() (%a)") ~= "Z"
end

function Host:signal(sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
end

--- Wait (polling, outside any loop) until the host has exited; returns
-- its exit code, or nil after `timeout` seconds.
function Host:wait(timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local rc = self:rc()
    if rc then return rc end
    os.execute("sleep 0.05")
  until helpers.now() > deadline
  return self:rc()
end

--- Wait until pred(self) is true (polling every 0.1 s), at most timeout.
function Host:wait_for(pred, timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local v = pred(self)
    if v then return v end
    os.execute("sleep 0.1")
  until helpers.now() > deadline
  return pred(self)
end

--- pids of the services the host started (service_start events; both log
-- formats).
function Host:service_pids()
  local pids = {}
  for pid in self:stderr():gmatch('"event":"service_start"[^\n]-"pid":(%d+)') do
    pids[#pids + 1] = tonumber(pid)
  end
  for line in self:stderr():gmatch("[^\n]+") do
    if line:find(" service_start ", 1, true) then
      local pid = tonumber(line:match(" pid=(%d+)"))
      if pid then pids[#pids + 1] = pid end
    end
  end
  return pids
end

--- Stop the host for good (teardown): TERM, KILL after 5 s; kill the
-- groups of its services; remove the files.
function Host:kill()
  if self.killed then return end
  if self:alive() then
    self:signal("TERM")
    if not self:wait(5) then
      self:signal("KILL")
      self:wait(2)
    end
  end
  E.kill_groups(self:service_pids())
  self.killed = true
end

function Host:cleanup()
  self:kill()
  for _, p in ipairs { self.out, self.err, self.rcfile, self.pidfile } do
    os.remove(p)
  end
end

--- True when process `pid` is gone (or a zombie).
function E.gone(pid)
  local s = read_file(string.format("/proc/%d/stat", pid))
  return s == nil or s:match("^%d+ %b() (%a)") == "Z"
end

return E
