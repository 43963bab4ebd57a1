-- spec/helpers.lua - utilities shared by the specs (`local helpers = require "helpers"`;
-- the Makefile puts spec/?.lua on LUA_PATH).
--
-- Everything here reads /proc directly or runs short commands with
-- os.execute/io.popen, synchronously: these calls never yield, so they are
-- safe both inside and outside sonde tasks.
local helpers = {}

local function sonde()
  return require "sonde"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
helpers.read_file = read_file

-- Quote a string for /bin/sh.
function helpers.shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end
local q = helpers.shell_quote

-- Our own pid, read from /proc/self/stat by this process itself (a child
-- started to look would see its own pid).
local our_pid
function helpers.pid()
  if not our_pid then
    local stat = assert(read_file("/proc/self/stat"), "cannot read /proc/self/stat")
    our_pid = assert(tonumber(stat:match("^(%d+)")), "cannot parse /proc/self/stat")
  end
  return our_pid
end

-- Lines printed by a shell command (io.popen; the pipe is closed on return).
local function popen_lines(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

-- Number of open file descriptors of this process.  The listing is written
-- to a temporary file by a child while we hold no extra descriptor (an
-- io.popen pipe would be counted too), then read back.
function helpers.fd_count()
  local tmp = os.tmpname()
  local ok = os.execute("ls -1 /proc/" .. helpers.pid() .. "/fd > " .. q(tmp) .. " 2>/dev/null")
  local text = read_file(tmp) or ""
  os.remove(tmp)
  assert(ok, "listing /proc/" .. helpers.pid() .. "/fd failed")
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:match("^%d+$") then n = n + 1 end
  end
  return n
end

-- The numeric entries of /proc (all pids).
local function all_pids()
  local pids = {}
  for _, line in ipairs(popen_lines("ls -1 /proc 2>/dev/null")) do
    local pid = tonumber(line:match("^%d+$"))
    if pid then pids[#pids + 1] = pid end
  end
  return pids
end

-- Parse /proc/N/stat: comm is in parentheses and may contain spaces and
-- parentheses, so split at the LAST ")".  Returns a table or nil (the
-- process is gone).
local function proc_stat(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local comm, rest = s:match("^%d+ %((.*)%) (.*)$")
  if not comm then return nil end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- rest starts at field 3: state(3) ppid(4) pgrp(5) session(6)
  return {
    pid = pid,
    comm = comm,
    state = f[1],
    ppid = tonumber(f[2]),
    pgid = tonumber(f[3]),
    sid = tonumber(f[4]),
  }
end
helpers.proc_stat = proc_stat

local function proc_cmdline(pid)
  local s = read_file("/proc/" .. pid .. "/cmdline")
  if not s then return nil end
  s = s:gsub("%z+$", ""):gsub("%z", " ")
  return s
end

-- Processes (live or zombie) whose process group id is one of `pgids`.
-- `pgids` is a number, a list of numbers, or a set {[pgid] = true}.
-- Returns a list of {pid=, pgid=, ppid=, state=, cmd=}.
function helpers.procs_in_groups(pgids)
  local want = {}
  if type(pgids) == "number" then
    want[pgids] = true
  else
    for k, v in pairs(pgids) do
      if type(k) == "number" and v == true then want[k] = true end
      if type(v) == "number" then want[v] = true end
    end
  end
  local found = {}
  for _, pid in ipairs(all_pids()) do
    local st = proc_stat(pid)
    if st and want[st.pgid] then
      local cmd = proc_cmdline(pid)
      if not cmd or cmd == "" then cmd = "[" .. st.comm .. "]" end
      found[#found + 1] = { pid = pid, pgid = st.pgid, ppid = st.ppid, state = st.state, cmd = cmd }
    end
  end
  return found
end

-- Processes whose command line (NULs as spaces) matches the Lua pattern.
-- This process and the `ls` used to list /proc are left out.
function helpers.procs_matching(pattern)
  local me = helpers.pid()
  local found = {}
  for _, pid in ipairs(all_pids()) do
    if pid ~= me then
      local cmd = proc_cmdline(pid)
      if cmd and cmd ~= "ls -1 /proc" and cmd:find(pattern) then
        local st = proc_stat(pid) or {}
        found[#found + 1] = { pid = pid, pgid = st.pgid, ppid = st.ppid, state = st.state, cmd = cmd }
      end
    end
  end
  return found
end

-- Human-readable list of processes, for assertion messages.
function helpers.describe_procs(list)
  local out = {}
  for _, p in ipairs(list) do
    out[#out + 1] = string.format("%d(pgid %s, %s) %s", p.pid, tostring(p.pgid), tostring(p.state), p.cmd)
  end
  return table.concat(out, "; ")
end

-- Monotonic seconds.
function helpers.now()
  return sonde().now()
end

-- Resident set size of this process, in kB.
function helpers.rss_kb()
  local s = assert(read_file("/proc/self/status"))
  return assert(tonumber(s:match("VmRSS:%s*(%d+)")))
end

local function in_task()
  local _, ismain = coroutine.running()
  return not ismain
end

-- Run `fn` as a sonde task, run the loop until nothing is pending and return
-- fn's return values.  Errors when fn raised (sonde.run re-raises it), when
-- fn did not finish, or when it took longer than `max_seconds` (default 30):
-- a watchdog task raises then, which makes sonde.run() return with that error
-- instead of hanging the suite.
function helpers.run(fn, max_seconds)
  local s = sonde()
  max_seconds = max_seconds or 30
  assert(not in_task(), "helpers.run called inside a task")
  local done, results = false, nil
  local deadline = s.now() + max_seconds
  -- fn's error is caught here and re-raised after the loop, so that the
  -- watchdog ends too and nothing is left pending for the next spec.
  s.spawn(function()
    results = table.pack(xpcall(fn, debug.traceback))
    done = true
  end)
  s.spawn(function()
    while not done do
      if s.now() > deadline then
        error(string.format("helpers.run: task did not finish within %gs", max_seconds), 0)
      end
      s.sleep(0.02)
    end
  end)
  s.run()
  if not done then
    error("helpers.run: task did not finish (sonde.run() returned first)", 2)
  end
  if not results[1] then
    error(results[2], 0)
  end
  return table.unpack(results, 2, results.n)
end

-- Wait until pred() returns a true value or `timeout` seconds (default 2)
-- pass, letting the sonde loop run meanwhile (so it can reap children).
-- Works inside a task (sleeps) or outside one (runs a task).  Returns the
-- last value of pred().
function helpers.eventually(pred, timeout)
  local s = sonde()
  timeout = timeout or 2
  local function poll()
    local deadline = s.now() + timeout
    local v = pred()
    while not v and s.now() < deadline do
      s.sleep(0.05)
      v = pred()
    end
    return v
  end
  if in_task() then
    return poll()
  end
  return helpers.run(poll, timeout + 10)
end

-- A fresh, empty temporary directory.
function helpers.tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -m 700 " .. q(path)), "mkdir " .. path .. " failed")
  return path
end

-- Remove a file or directory tree.
function helpers.rmtree(path)
  assert(path and path ~= "" and path ~= "/", "refusing to remove " .. tostring(path))
  os.execute("rm -rf " .. q(path))
end

-- Write `content` to `path` and optionally chmod it (`mode` e.g. "755").
function helpers.write(path, content, mode)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
  if mode then
    assert(os.execute("chmod " .. q(mode) .. " " .. q(path)), "chmod " .. mode .. " " .. path .. " failed")
  end
  return path
end

return helpers
