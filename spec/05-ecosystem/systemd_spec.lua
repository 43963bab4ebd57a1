-- Running under systemd (README "Running under systemd", src/lnotify.c,
-- lua/sonde/host.lua): the host speaks the sd_notify(3) protocol to
-- $NOTIFY_SOCKET.  Lua has no unix sockets here, so a small python3 script
-- plays systemd: it binds a datagram socket (a path, or an abstract name
-- for "@name") and writes every datagram it gets as one JSON line
-- {"t": monotonic seconds, "msg": text} to a file.
local helpers = require "helpers"

local q = helpers.shell_quote
local read_file = helpers.read_file

local BIN = (os.getenv("SONDE_BUILD") or "build") .. "/bin/sonde"
local UNIT = "examples/sonde.service"

---------------------------------------------------------------------------
-- JSON lines
---------------------------------------------------------------------------

local ok_cjson, cjson = pcall(require, "cjson")
local dkjson = (not ok_cjson) and require "dkjson" or nil

local function json_decode(s)
  if ok_cjson then
    local ok, v = pcall(cjson.decode, s)
    if ok then return v end
    return nil
  end
  local v, _, err = dkjson.decode(s, 1, nil)
  if err then return nil end
  return v
end

-- Complete lines (ending in "\n") decoded; the second list holds the
-- lines that are not JSON objects.
local function decode_lines(text)
  local evs, bad = {}, {}
  for line in (text or ""):gmatch("([^\n]*)\n") do
    local v = line ~= "" and json_decode(line)
    if type(v) == "table" then evs[#evs + 1] = v
    elseif line ~= "" then bad[#bad + 1] = line end
  end
  return evs, bad
end

local function select(evs, name, where)
  local out = {}
  for _, e in ipairs(evs) do
    local ok = name == nil or e.event == name
    for k, v in pairs(where or {}) do
      if e[k] ~= v then ok = false end
    end
    if ok then out[#out + 1] = e end
  end
  return out
end

local function sleep(s) os.execute(string.format("sleep %.3f", s)) end

local function wait_for(pred, timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local v = pred()
    if v then return v end
    sleep(0.05)
  until helpers.now() > deadline
  return pred()
end

local function gone(pid)
  local s = read_file(string.format("/proc/%d/stat", pid))
  return s == nil or s:match("^%d+ %b() (%a)") == "Z"
end

---------------------------------------------------------------------------
-- The host as a subprocess
---------------------------------------------------------------------------

-- The systemd variables are removed from the host's environment, then
-- those in `env` set; the value "$$" stands for the host's own pid (the
-- shell that execs it).
local function env_prefix(env)
  local parts = { "env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID" }
  local keys = {}
  for k in pairs(env or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = env[k]
    parts[#parts + 1] = k .. "=" .. (v == "$$" and "$$" or q(v))
  end
  return table.concat(parts, " ")
end

local Host = {}
Host.__index = Host

local function host_start(dir, args, env)
  Host.n = (Host.n or 0) + 1
  local base = string.format("%s/host%d", dir, Host.n)
  local h = setmetatable({ errf = base .. ".err", outf = base .. ".out",
    pidf = base .. ".pid", rcf = base .. ".rc" }, Host)
  local argv = {}
  for i, a in ipairs(args) do argv[i] = q(a) end
  local cmd = string.format("exec %s %s --log-level debug %s", env_prefix(env),
    q(BIN), table.concat(argv, " "))
  local inner = string.format("sh -c %s </dev/null >%s 2>%s & echo $! >%s; "
    .. "wait $!; echo $? >%s.tmp; mv %s.tmp %s", q(cmd), q(h.outf), q(h.errf),
    q(h.pidf), q(h.rcf), q(h.rcf), q(h.rcf))
  os.execute(string.format("sh -c %s </dev/null >/dev/null 2>&1 &", q(inner)))
  local deadline = helpers.now() + 5
  repeat
    local s = read_file(h.pidf)
    h.pid = s and tonumber(s:match("(%d+)\n"))
    if h.pid then break end
    sleep(0.02)
  until helpers.now() > deadline
  assert(h.pid, "the host did not start")
  return h
end

function Host:stderr() return read_file(self.errf) or "" end

function Host:events(name, where)
  return select((decode_lines(self:stderr())), name, where)
end

function Host:rc()
  local s = read_file(self.rcf)
  return s and tonumber(s:match("%d+"))
end

function Host:signal(sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
end

function Host:wait(timeout)
  return wait_for(function() return self:rc() end, timeout)
end

function Host:cleanup()
  if not self.pid then return end
  if not self:rc() then
    self:signal("TERM")
    if not self:wait(10) then
      self:signal("KILL")
      self:wait(3)
    end
  end
  for _, e in ipairs(self:events("service_start")) do
    local pid = math.tointeger(e.pid)
    if pid then
      for _, p in ipairs(helpers.procs_in_groups(pid)) do
        os.execute(string.format("kill -KILL %d 2>/dev/null", p.pid))
      end
    end
  end
end

---------------------------------------------------------------------------
-- The listener (python3)
---------------------------------------------------------------------------

local LISTENER = [[
import json, os, socket, sys, time
name, out, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
addr = "\0" + name[1:] if name.startswith("@") else name
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr)
f = open(out, "w", buffering=1)
f.write(json.dumps({"t": time.monotonic(), "listening": True}) + "\n")
end = time.monotonic() + secs
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data = s.recv(65536)
    except socket.timeout:
        break
    f.write(json.dumps({"t": time.monotonic(),
                        "msg": data.decode("utf-8", "backslashreplace")}) + "\n")
f.close()
s.close()
if not name.startswith("@"):
    os.unlink(name)
]]

-- Debian's python3 (the Makefile's test packages) when there, so that the
-- pid we get is python's own and not a version manager's wrapper.
local PYTHON = "python3"
do
  local f = io.open("/usr/bin/python3", "rb")
  if f then f:close() PYTHON = "/usr/bin/python3" end
end

local Listener = {}
Listener.__index = Listener

-- Start listening on `name` (a path or "@abstract") for `secs` seconds.
local function listen(dir, name, secs)
  Listener.n = (Listener.n or 0) + 1
  local base = string.format("%s/listener%d", dir, Listener.n)
  local l = setmetatable({ name = name, out = base .. ".out",
    errf = base .. ".err", pidf = base .. ".pid" }, Listener)
  local script = helpers.write(dir .. "/listener.py", LISTENER)
  -- python must not get the sanitizer runtime of SANITIZE=1 runs
  os.execute(string.format("env -u LD_PRELOAD %s -u %s %s %s %g "
    .. "</dev/null >/dev/null 2>%s & echo $! >%s", PYTHON, q(script), q(name),
    q(l.out), secs or 20, q(l.errf), q(l.pidf)))
  l.pid = tonumber((read_file(l.pidf) or ""):match("%d+"))
  assert(l.pid, "python3 did not start")
  local ok = wait_for(function()
    return (read_file(l.out) or ""):find('"listening"', 1, true)
  end, 10)
  assert(ok, "the listener did not bind " .. name .. ": "
    .. (read_file(l.errf) or ""))
  return l
end

-- Received datagrams in order: { t = seconds, msg = text }.
function Listener:messages()
  local out = {}
  for _, v in ipairs((decode_lines(read_file(self.out) or ""))) do
    if v.msg then out[#out + 1] = v end
  end
  return out
end

-- Whether the text of a message has a line exactly `line`.
local function has_line(msg, line)
  for l in (msg .. "\n"):gmatch("([^\n]*)\n") do
    if l == line then return true end
  end
  return false
end

-- Index (and message) of the first message from `from` with the line.
function Listener:find(line, from, msgs)
  msgs = msgs or self:messages()
  for i = from or 1, #msgs do
    if has_line(msgs[i].msg, line) then return i, msgs[i] end
  end
end

function Listener:count(line, msgs)
  local n = 0
  for _, m in ipairs(msgs or self:messages()) do
    if has_line(m.msg, line) then n = n + 1 end
  end
  return n
end

-- All messages, for assertion texts.
function Listener:dump()
  local out = {}
  for i, m in ipairs(self:messages()) do
    out[i] = string.format("%.3f %q", m.t, m.msg)
  end
  return table.concat(out, "\n")
end

function Listener:stop()
  if self.pid and not gone(self.pid) then
    os.execute(string.format("kill -TERM %d 2>/dev/null", self.pid))
    if not wait_for(function() return gone(self.pid) end, 3) then
      os.execute(string.format("kill -KILL %d 2>/dev/null", self.pid))
    end
  end
end

---------------------------------------------------------------------------

-- A script with a service and two probes; it marks its own load with
-- X_SPEC=load-begin / X_SPEC=load-end on the notify socket (core.sd_notify
-- is the host's own sender, so the datagrams' order is the order of the
-- calls).
local SCRIPT = [[
local sonde = require "sonde"
local core = require "sonde.core"
core.sd_notify("X_SPEC=load-begin")
os.execute("sleep 0.3")
sonde.service { name = "sleeper", command = { "sleep", "600" }, grace = 2 }
sonde.probe { name = "one", period = 0.5, exec = { command = { "true" } } }
sonde.probe { name = "two", period = 0.5, exec = { command = { "true" } } }
core.sd_notify("X_SPEC=load-end")
]]

-- A service that ignores SIGTERM (grace 1 s): the stop takes a second.
local STUBBORN = [[
local sonde = require "sonde"
sonde.service { name = "stubborn", grace = 1, command = { "sh", "-c",
  "trap '' TERM; echo ready; while :; do sleep 0.1; done" } }
sonde.probe { name = "tick", period = 0.2, exec = { command = { "true" } } }
]]

describe("systemd notify protocol", function()
  local dir
  local hosts, listeners = {}, {}

  before_each(function()
    dir = helpers.tmpdir()
  end)

  after_each(function()
    for _, h in ipairs(hosts) do h:cleanup() end
    hosts = {}
    for _, l in ipairs(listeners) do l:stop() end
    listeners = {}
    helpers.rmtree(dir)
  end)

  local function start(script_text, env)
    local path = helpers.write(dir .. "/probes.lua", script_text)
    local h = host_start(dir, { "--log-format", "json", path }, env)
    h.script = path
    hosts[#hosts + 1] = h
    return h
  end

  local function listener(name, secs)
    local l = listen(dir, name or (dir .. "/notify.sock"), secs or 30)
    listeners[#listeners + 1] = l
    return l
  end

  local function wait_ready(l, h, from)
    local ok = wait_for(function() return l:find("READY=1", from) end, 10)
    assert.is_truthy(ok, "no READY=1; received:\n" .. l:dump()
      .. "\nhost stderr:\n" .. h:stderr())
    return ok
  end

  it("READY=1 comes once the script is loaded, with a STATUS counting the "
    .. "probes", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    wait_ready(l, h)
    sleep(0.3)
    local msgs = l:messages()
    local dump = l:dump()
    local b = l:find("X_SPEC=load-begin", 1, msgs)
    local e = l:find("X_SPEC=load-end", 1, msgs)
    local r, ready = l:find("READY=1", 1, msgs)
    assert.is_truthy(b and e, dump)
    assert.is_true(b < e and e < r, "READY=1 before the script was loaded:\n"
      .. dump)
    assert.are.equal(1, l:count("READY=1", msgs), dump)
    local status = ready.msg:match("STATUS=([^\n]*)")
    assert.is_truthy(status, "no STATUS with READY=1: " .. dump)
    assert.is_truthy(status:find("2 probes", 1, true), status)
    assert.is_truthy(status:find("1 service", 1, true), status)
    -- no watchdog asked for, none sent
    assert.are.equal(0, l:count("WATCHDOG=1", msgs), dump)
    -- the probes run
    assert.is_truthy(wait_for(function()
      return #h:events("probe_result", { probe = "one" }) >= 1
    end, 5), h:stderr())
  end)

  it("WATCHDOG_USEC=400000: WATCHDOG=1 every half interval", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000" })
    local r = wait_ready(l, h)
    sleep(1.8)
    local msgs = l:messages()
    local dump = l:dump()
    local t_ready = msgs[r].t
    local n, first = 0, nil
    for i = r + 1, #msgs do
      if has_line(msgs[i].msg, "WATCHDOG=1") then
        first = first or msgs[i].t
        if msgs[i].t <= t_ready + 1.5 then n = n + 1 end
      end
    end
    assert.is_true(n >= 3, n .. " WATCHDOG=1 in 1.5 s:\n" .. dump)
    assert.is_true(n <= 10, n .. " WATCHDOG=1 in 1.5 s (every 0.2 s "
      .. "expected):\n" .. dump)
    -- the first one well within the 0.4 s systemd would wait
    assert.is_true(first - t_ready < 0.4, string.format("first WATCHDOG=1 "
      .. "%.3f s after READY=1", first - t_ready))
    -- none before READY=1
    for i = 1, r - 1 do
      assert.is_false(has_line(msgs[i].msg, "WATCHDOG=1"), dump)
    end
  end)

  it("WATCHDOG_PID of the host itself: WATCHDOG=1 is sent", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000", WATCHDOG_PID = "$$" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 3
    end, 5), l:dump())
  end)

  it("WATCHDOG_PID of another process: no WATCHDOG=1", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000", WATCHDOG_PID = tostring(helpers.pid()) })
    wait_ready(l, h)
    sleep(1.5)
    assert.are.equal(0, l:count("WATCHDOG=1"), l:dump())
    -- the rest of the protocol still works
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    assert.is_truthy(wait_for(function() return l:find("STOPPING=1") end, 3),
      l:dump())
  end)

  it("SIGHUP: RELOADING=1, the script loaded again, then READY=1", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    local r = wait_ready(l, h)
    h:signal("HUP")
    local ok = wait_for(function()
      local rl = l:find("RELOADING=1", r + 1)
      return rl and l:find("READY=1", rl + 1)
    end, 10)
    local dump = l:dump()
    assert.is_truthy(ok, "no RELOADING=1 then READY=1:\n" .. dump
      .. "\n" .. h:stderr())
    local msgs = l:messages()
    local rl = l:find("RELOADING=1", 1, msgs)
    assert.is_true(rl > r, dump)
    local b = l:find("X_SPEC=load-begin", rl + 1, msgs)
    local e = l:find("X_SPEC=load-end", rl + 1, msgs)
    local r2, ready2 = l:find("READY=1", rl + 1, msgs)
    assert.is_truthy(b and e and r2, dump)
    assert.is_true(b < e and e < r2, dump)
    assert.is_truthy((ready2.msg:match("STATUS=([^\n]*)") or "")
      :find("2 probes", 1, true), dump)
    assert.are.equal(1, l:count("RELOADING=1", msgs), dump)
    assert.are.equal(2, l:count("READY=1", msgs), dump)
    assert.are.equal(1, #h:events("reload", { status = "ok" }), h:stderr())
  end)

  it("SIGHUP with a broken script: RELOADING=1, then READY=1 again (the "
    .. "old configuration runs on)", function()
    local l = listener()
    local h = start(SCRIPT, { NOTIFY_SOCKET = l.name })
    local r = wait_ready(l, h)
    helpers.write(h.script .. ".new", "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = ")
    assert(os.rename(h.script .. ".new", h.script))
    h:signal("HUP")
    local ok = wait_for(function()
      local rl = l:find("RELOADING=1", r + 1)
      return rl and l:find("READY=1", rl + 1)
    end, 10)
    assert.is_truthy(ok, "no RELOADING=1 then READY=1:\n" .. l:dump()
      .. "\n" .. h:stderr())
    assert.are.equal(1, #h:events("reload", { status = "failed" }),
      h:stderr())
    -- the old probes keep running
    local before = #h:events("probe_result", { probe = "one" })
    assert.is_truthy(wait_for(function()
      return #h:events("probe_result", { probe = "one" }) >= before + 2
    end, 5), h:stderr())
  end)

  it("SIGTERM: STOPPING=1, and no WATCHDOG=1 after it while the services "
    .. "stop", function()
    local l = listener()
    local h = start(STUBBORN, { NOTIFY_SOCKET = l.name,
      WATCHDOG_USEC = "400000" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 2
        and #h:events("service_output", { service = "stubborn" }) >= 1
    end, 5), l:dump() .. "\n" .. h:stderr())
    local t0 = helpers.now()
    h:signal("TERM")
    local rc = h:wait(10)
    local took = helpers.now() - t0
    assert.are.equal(0, rc, h:stderr())
    -- the stop waited for the grace of the stubborn service: time enough
    -- for a few keep-alives, had they not been stopped
    assert.is_true(took >= 0.8, string.format("stop took %.2f s", took))
    sleep(0.5)
    local msgs = l:messages()
    local dump = l:dump()
    local s = l:find("STOPPING=1", 1, msgs)
    assert.is_truthy(s, "no STOPPING=1:\n" .. dump)
    assert.are.equal(1, l:count("STOPPING=1", msgs), dump)
    for i = s + 1, #msgs do
      assert.is_false(has_line(msgs[i].msg, "WATCHDOG=1"),
        "WATCHDOG=1 after STOPPING=1:\n" .. dump)
      assert.is_false(has_line(msgs[i].msg, "READY=1"),
        "READY=1 after STOPPING=1:\n" .. dump)
    end
    for _, e in ipairs(h:events("service_start")) do
      assert.is_true(gone(e.pid), "service " .. e.pid .. " left")
    end
  end)

  it("an abstract socket name (@name)", function()
    local name = string.format("@sonde-spec-%d-%d", helpers.pid(),
      math.random(1, 1e9))
    local l = listener(name)
    local h = start(SCRIPT, { NOTIFY_SOCKET = name, WATCHDOG_USEC = "400000" })
    wait_ready(l, h)
    assert.is_truthy(wait_for(function()
      return l:count("WATCHDOG=1") >= 2
    end, 5), l:dump())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    assert.is_truthy(wait_for(function() return l:find("STOPPING=1") end, 3),
      l:dump())
  end)

  -- The host runs, reloads and stops as usual; nothing is logged as an
  -- error and nothing but JSON lines reach stderr.
  local function runs_normally(env)
    local h = start(SCRIPT, env)
    local function results() return #h:events("probe_result",
      { probe = "one", status = "success" }) end
    assert.is_truthy(wait_for(function() return results() >= 2 end, 10),
      h:stderr())
    h:signal("HUP")
    assert.is_truthy(wait_for(function()
      return #h:events("reload", { status = "ok" }) >= 1
    end, 10), h:stderr())
    local n = results()
    assert.is_truthy(wait_for(function() return results() >= n + 2 end, 10),
      h:stderr())
    h:signal("TERM")
    assert.are.equal(0, h:wait(10), h:stderr())
    local evs, bad = decode_lines(h:stderr())
    assert.are.same({}, bad)
    assert.are.same({}, select(evs, nil, { level = "error" }))
    assert.are.equal(1, #select(evs, "host_stop"), h:stderr())
  end

  it("without NOTIFY_SOCKET nothing breaks (watchdog asked for or not)",
    function()
    runs_normally({})
    runs_normally({ WATCHDOG_USEC = "400000" })
  end)

  it("with NOTIFY_SOCKET naming no socket nothing breaks", function()
    runs_normally({ NOTIFY_SOCKET = dir .. "/nobody-listens.sock",
      WATCHDOG_USEC = "400000" })
    runs_normally({ NOTIFY_SOCKET = "@sonde-spec-nobody-" .. helpers.pid(),
      WATCHDOG_USEC = "400000" })
  end)
end)

describe("examples/sonde.service", function()
  -- [Section] -> { key -> { values... } } (systemd keys may repeat)
  local function parse_unit(text)
    local units, section = {}, nil
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      local s = line:match("^%[([^%]]+)%]%s*$")
      if s then
        section = s
        units[s] = units[s] or {}
      elseif not line:match("^%s*[#;]") and not line:match("^%s*$") then
        local k, v = line:match("^%s*([%w]+)%s*=%s*(.-)%s*$")
        assert(k and section, "bad unit line: " .. line)
        units[section][k] = units[section][k] or {}
        table.insert(units[section][k], v)
      end
    end
    return units
  end

  it("is a Type=notify unit with ExecReload sending SIGHUP and a watchdog",
    function()
    local text = assert(read_file(UNIT), UNIT .. " missing")
    local unit = parse_unit(text)
    local svc = unit.Service
    assert.is_truthy(svc, "no [Service] section")
    assert.are.same({ "notify" }, svc.Type)
    assert.is_truthy(svc.ExecReload, "no ExecReload=")
    local reload = svc.ExecReload[1]
    assert.is_truthy(reload:find("kill", 1, true), reload)
    assert.is_truthy(reload:find("-HUP", 1, true), reload)
    assert.is_truthy(reload:find("$MAINPID", 1, true), reload)
    assert.is_truthy(svc.WatchdogSec, "no WatchdogSec=")
    local wd = tonumber(svc.WatchdogSec[1]:match("^(%d+)s?$"))
    assert.is_truthy(wd and wd > 0, svc.WatchdogSec[1])
    assert.is_truthy(svc.ExecStart, "no ExecStart=")
    assert.is_truthy(svc.ExecStart[1]:find("--log-format json", 1, true),
      svc.ExecStart[1])
    -- only the main process may notify (the services and probes are
    -- children of sonde)
    if svc.NotifyAccess then
      assert.are.same({ "main" }, svc.NotifyAccess)
    end
    assert.is_truthy(unit.Install and unit.Install.WantedBy,
      "no [Install] WantedBy=")
    -- `systemd-analyze verify` is deliberately not used: systemd need not
    -- be installed where the suite runs.
  end)
end)
