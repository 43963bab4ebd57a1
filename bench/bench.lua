-- bench/bench.lua: the performance benchmark (`make bench`).
--
--   lua5.4 bench/bench.lua HOST MODULE RAW FIXTURE
--
-- In one run, against one loopback target it starts itself (the
-- project's fixture server: GET /ok answers 200 and closes; a TCP connect
-- is accepted), for each probe kind (tcp, http, exec) it measures:
--
--   raw       bench/raw.c: the least a C program on libevent does for the
--             same answer (see its header), on the same schedule;
--   lua       bench/lua_probers.lua under the host: the probers called
--             from Lua with a callback, on core timers, same schedule;
--   declared  bench/declared.lua under the host: N `sonde.probe`s, no
--             hooks, default log level;
--   blackbox  Debian's prometheus-blackbox-exporter (tcp and http only),
--             driven through /probe at the same rate by `raw drive`.
--
-- Schedule: 1,000 slots at period 1 s (1,000 runs/s) for tcp and http;
-- 100 at 1 s for exec, measured over a longer window (a spawn of
-- /bin/true costs its child about 3 ms of CPU on the two-core machine
-- this was written on: 1,000 spawns/s would take more than both cores,
-- and 200/s already made every system late).  Each
-- system runs ROUNDS (3) rounds, interleaved (round 1 of every system,
-- then round 2...), each a fresh process: WARMUP seconds, then a window
-- of SECONDS.  The tables give medians over the rounds; ratios are the
-- medians of the per-round ratios (systems of one round run minutes
-- apart at most).  Then 10,000 declared TCP and HTTP probes at period
-- 10 s (one process each: a warm-up of at least a period, then three
-- windows of a period, then three with scrapes, below) and 1,000 at
-- period 10 s for the RSS slope (bytes per probe between 1,000 and
-- 10,000 at the same period).  Finally the
-- targets, each with its measured value and "met" or "missed", and the
-- stripped size of the host and the module.  The benchmark never fails
-- on a missed target; it exits non-zero only when it cannot measure.
--
-- Scrapes: the 10,000-probe hosts listen on a free loopback port
-- (`--listen 127.0.0.1:PORT`) and, after their windows without scrapes,
-- run as many windows (SCRAPE_WINDOWS) while bench/scraper.py, a separate
-- /usr/bin/python3 process (its CPU is not the host's), polls GET /metrics
-- with "Accept-Encoding: gzip" (as Prometheus sends it) and GET /status,
-- each path once a second on its own schedule (never two of a path at
-- once: a scrape that runs over makes the next start at its end, counted
-- as a late start), a new connection each, client timeout 30 s.  The host
-- (bench/declared.lua) and the scraper agree on the windows through two
-- files (see both): a window with scrapes lasts until the scrapes started
-- in it have ended, so their whole cost falls in it.  Printed side by
-- side, per kind: CPU % of one core of the host, RSS, lateness p50/p99/
-- max (medians over the windows), runs, skipped, missed, failed, without
-- and with scrapes.  Per scrape (client side): the /metrics body as sent
-- (gzip when the answer says Content-Encoding: gzip) and decoded, the
-- /status body likewise (medians), the time from request to last byte
-- (median, max), failed or timed-out scrapes and late starts; and the
-- host's CPU per scrape: (host CPU in the windows with scrapes - the
-- rate without scrapes x their length) / the scrapes started in them
-- (either path), in ms.  Then one GET /metrics without Accept-Encoding
-- (the uncompressed exposition) goes through `promtool check metrics`
-- (Debian's prometheus package; "promtool not installed" when missing):
-- pass or fail and its first lines.  The targets add "lateness p99 with
-- scrapes <= 5 ms", no failed scrape, and promtool clean; the targets on
-- the 10,000-probe windows above (CPU, RSS, lateness) count only the
-- windows without scrapes.
--
-- Environment: BENCH_QUICK=1 (shorter windows, for development; one
-- window without scrapes and one with at 10,000 probes);
-- BENCH_MEMORY=SECONDS (only the no-growth check: 1,000 declared TCP
-- probes at period 1 s for SECONDS, RSS sampled every 10 s); BENCH_DIR
-- (a private directory; every process started is appended to
-- BENCH_DIR/pids so that `make bench` kills what is left, by PID).
-- Loopback only.
local HOST, MODULE, RAW, FIXTURE = arg[1], arg[2], arg[3], arg[4]
assert(HOST and MODULE and RAW and FIXTURE,
  "usage: bench.lua HOST MODULE RAW FIXTURE")
local EXPORTER = "/usr/bin/prometheus-blackbox-exporter"
local QUICK = os.getenv("BENCH_QUICK") == "1"
local MEMORY = tonumber(os.getenv("BENCH_MEMORY") or "")

local fmt = string.format

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function sleep(s) os.execute("sleep " .. s) end

local function now()
  return tonumber(read("/proc/uptime"):match("^(%S+)"))
end

local DIR = os.getenv("BENCH_DIR")
local own_dir = false
if not DIR or DIR == "" then
  DIR = sh("mktemp -d /tmp/sonde-bench.XXXXXX"):gsub("%s+$", "")
  own_dir = true
end
local PIDS = DIR .. "/pids"

-- Background processes: started through sh, their pid recorded.
local running = {}

-- Every process started carries BENCH_DIR=DIR in its environment: a pid
-- is signalled only while /proc/PID/environ says it is still one of ours
-- (never a recycled pid).
local MARK = "BENCH_DIR=" .. DIR

local function ours(pid)
  local env = read("/proc/" .. pid .. "/environ")
  return env ~= nil and ("\0" .. env):find("\0" .. MARK .. "\0", 1, true) ~= nil
end

local function spawn(cmd, out)
  local pid = tonumber(sh(fmt("env %s %s > %s 2>&1 & echo $!", q(MARK), cmd,
    q(out)))
    :match("%d+"))
  assert(pid, "cannot start: " .. cmd)
  running[pid] = true
  local f = assert(io.open(PIDS, "a"))
  f:write(pid, "\n")
  f:close()
  return pid
end

local function alive(pid)
  local s = read("/proc/" .. pid .. "/stat")
  return s ~= nil and not s:match("^%d+ %b() Z")
end

local function stop(pid)
  if not running[pid] then return end
  running[pid] = nil
  if not ours(pid) then return end
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local t0 = now()
  while alive(pid) and now() - t0 < 3 do sleep(0.05) end
  if alive(pid) and ours(pid) then
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  end
end

local function cleanup()
  for pid in pairs(running) do stop(pid) end
  if own_dir then os.execute("rm -rf " .. q(DIR)) end
end

local function wait_for(pred, timeout)
  local t0 = now()
  while now() - t0 < timeout do
    local v = pred()
    if v then return v end
    sleep(0.05)
  end
end

-- A command run to its end, in the foreground: its pid goes to the pids
-- file too (sh execs it), its stdout is returned, its stderr kept in a
-- file (returned as the second value).
local nrun = 0
local function run(cmd)
  nrun = nrun + 1
  local err = fmt("%s/run-%d.err", DIR, nrun)
  local out = sh(fmt("env %s sh -c %s 2> %s", q(MARK),
    q(fmt("echo $$ >> %s; exec %s", q(PIDS), cmd)), q(err)))
  return out, err
end

-- The flat JSON objects that raw.c and the Lua scripts print.
local function decode(line)
  local t = {}
  for k, v in line:gmatch('"([%w_]+)":("?[^,"}]*"?)') do
    if v == "null" then t[k] = nil
    elseif v == "true" or v == "false" then t[k] = v == "true"
    elseif v:sub(1, 1) == '"' then t[k] = v:sub(2, -2)
    else t[k] = tonumber(v) end
  end
  return t
end

local function lines_of(out)
  local list = {}
  for l in out:gmatch("[^\n]+") do
    if l:match("^{") then list[#list + 1] = decode(l) end
  end
  return list
end

local function count(path, what)
  local n = 0
  local f = io.open(path, "rb")
  if not f then return 0 end
  for l in f:lines() do
    if l:find(what, 1, true) then n = n + 1 end
  end
  f:close()
  return n
end

local function median(list)
  local l = {}
  for _, v in ipairs(list) do if v then l[#l + 1] = v end end
  if #l == 0 then return nil end
  table.sort(l)
  local m = (#l + 1) // 2
  return #l % 2 == 1 and l[m] or (l[m] + l[m + 1]) / 2
end

---------------------------------------------------------------------------
-- The settings
---------------------------------------------------------------------------
local ROUNDS = 3
local WARMUP = QUICK and 1.2 or 1.5      -- at least one period (1 s)
local SECONDS = QUICK and 2 or 5
local SECONDS_OF = { exec = QUICK and 3 or 8 }   -- fewer runs: a longer window
local BIG_WINDOWS = QUICK and 1 or 3     -- 10,000 probes at period 10 s
local SCRAPE_WINDOWS = QUICK and 1 or 3  -- then as many with scrapes
local BIG_WINDOW = QUICK and 5 or 10
local N = { tcp = 1000, http = 1000, exec = 100 }
local KINDS = { "tcp", "http", "exec" }
local SYSTEMS = { "raw", "lua", "declared", "blackbox" }

---------------------------------------------------------------------------
-- The target
---------------------------------------------------------------------------
local PORT, URL

local function start_fixture()
  local out = DIR .. "/fixture.out"
  spawn(fmt("%s --max-seconds 3600", q(FIXTURE)), out)
  PORT = wait_for(function()
    local s = read(out)
    return s and tonumber(s:match("PORT (%d+)"))
  end, 10)
  assert(PORT, "the fixture server did not start")
  URL = fmt("http://127.0.0.1:%d/ok", PORT)
end

local function target(kind)
  if kind == "tcp" then return tostring(PORT)
  elseif kind == "http" then return URL end
  return "/bin/true"
end

---------------------------------------------------------------------------
-- One measurement of each system
---------------------------------------------------------------------------
local function window(kind) return SECONDS_OF[kind] or SECONDS end

local function measure_raw(kind, n)
  local out = run(fmt("%s %s --port %d --url %s --n %d --period 1 --warmup %g "
    .. "--seconds %g", q(RAW), kind, PORT, q(URL), n, WARMUP, window(kind)))
  return lines_of(out)[1]
end

-- A script under the host that fails goes on running (the host logs the
-- error): a bound on each, well past what it should take.
local function bounded(seconds)
  return fmt("timeout -k 5 %d ", math.ceil(seconds + 60))
end

local function measure_lua(kind, n)
  local out = run(fmt("%s%s bench/lua_probers.lua %s %s %d 1 %g %g",
    bounded(WARMUP + window(kind)), q(HOST), kind, q(target(kind)), n,
    WARMUP, window(kind)))
  return lines_of(out)[1]
end

-- The host's log (info, its default) goes to a file: the skipped ticks
-- are counted there when the core has no schedule_stats, and any failed
-- run shows there.
-- `scrape` (optional): { windows, port, phase, ack }: the host listens
-- on 127.0.0.1:port and runs that many more windows while the scraper
-- polls it (see bench/declared.lua).
local function measure_declared(kind, n, period, warmup, window, windows,
                                scrape)
  local listen, extra, more = "", "", 0
  if scrape then
    listen = fmt("--listen 127.0.0.1:%d ", scrape.port)
    extra = fmt(" %d %s %s", scrape.windows, q(scrape.phase), q(scrape.ack))
    more = scrape.windows * window + 60
  end
  local out, err = run(fmt("%s%s %sbench/declared.lua %s %s %d %g %g %g %d%s",
    bounded(warmup + window * windows + more), q(HOST), listen, kind,
    q(target(kind)), n, period, warmup, window, windows, extra))
  local list = lines_of(out)
  for _, r in ipairs(list) do
    r.log_skipped = count(err, "probe_skipped")
  end
  return list
end

local PYTHON = "/usr/bin/python3"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- 10,000 declared probes at period 10 s: BIG_WINDOWS windows without
-- scrapes, then SCRAPE_WINDOWS windows while bench/scraper.py polls the
-- host's /metrics and /status every second.  Returns the host's windows,
-- the scraper's lines (nil without a python3) and the file holding one
-- uncompressed /metrics scrape.
local function measure_big(kind, warm)
  if not exists(PYTHON) then
    print(fmt("  no %s: 10,000 %s probes measured without scrapes only",
      PYTHON, kind))
    return measure_declared(kind, 10000, 10, warm, BIG_WINDOW, BIG_WINDOWS)
  end
  local base = fmt("%s/scrape-%s", DIR, kind)
  local sc = { windows = SCRAPE_WINDOWS, port = tonumber(sh(q(RAW) .. " port")),
    phase = base .. ".phase", ack = base .. ".ack" }
  local save, out = base .. ".metrics", base .. ".out"
  write(sc.phase, "idle\n")
  os.remove(sc.ack)
  local pid = spawn(fmt("%s bench/scraper.py --port %d --phase %s --ack %s "
    .. "--save %s --interval 1 --timeout 30 --max-seconds %d", PYTHON,
    sc.port, q(sc.phase), q(sc.ack), q(save),
    math.ceil(warm + BIG_WINDOW * (BIG_WINDOWS + SCRAPE_WINDOWS) + 180)), out)
  local list = measure_declared(kind, 10000, 10, warm, BIG_WINDOW,
    BIG_WINDOWS, sc)
  write(sc.phase, "done\n")   -- (in case the host ended early)
  wait_for(function() return not alive(pid) end, 40)
  stop(pid)
  return list, lines_of(read(out) or ""), save
end

-- `promtool check metrics` on a saved exposition: { ok, lines, bytes },
-- or nil and why not.
local function promtool(path)
  local tool = sh("command -v promtool 2>/dev/null"):gsub("%s+$", "")
  if tool == "" then return nil, "promtool not installed" end
  local f = io.open(path, "rb")
  if not f then return nil, "no uncompressed /metrics scrape saved" end
  local bytes = f:seek("end")
  f:close()
  local out = sh(fmt("%s check metrics < %s 2>&1; echo \"rc=$?\"", q(tool),
    q(path)))
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  local lines = {}
  for l in out:gmatch("[^\n]+") do
    if not l:match("^rc=%d+$") then lines[#lines + 1] = l end
  end
  return { ok = rc == 0, rc = rc, lines = lines, bytes = bytes }
end

local BLACKBOX_YML = [[
modules:
  http_2xx:
    prober: http
    timeout: 1s
  tcp_connect:
    prober: tcp
    timeout: 1s
]]

local function measure_blackbox(kind, n)
  local yml = DIR .. "/blackbox.yml"
  write(yml, BLACKBOX_YML)
  local port = tonumber(sh(q(RAW) .. " port"))
  local log = DIR .. "/blackbox.log"
  os.remove(log)
  local pid = spawn(fmt("%s --config.file=%s --web.listen-address=127.0.0.1:%d",
    EXPORTER, q(yml), port), log)
  local up = wait_for(function()
    local s = read(log)
    return s and s:find("Listening on", 1, true)
  end, 10)
  if not up then
    stop(pid)
    error("blackbox_exporter did not start: " .. (read(log) or ""))
  end
  local url = kind == "tcp"
    and fmt("http://127.0.0.1:%d/probe?module=tcp_connect&target=127.0.0.1:%d",
      port, PORT)
    or fmt("http://127.0.0.1:%d/probe?module=http_2xx&target=%s", port, URL)
  local out = run(fmt("%s drive --kind %s --pid %d --url %s --n %d --period 1 "
    .. "--timeout 2 --warmup %g --seconds %g", q(RAW), kind, pid, q(url), n,
    WARMUP, SECONDS))
  stop(pid)
  return lines_of(out)[1]
end

local function measure(system, kind)
  local n = N[kind]
  if system == "raw" then return measure_raw(kind, n)
  elseif system == "lua" then return measure_lua(kind, n)
  elseif system == "declared" then
    return measure_declared(kind, n, 1, WARMUP, window(kind), 1)[1]
  elseif kind ~= "exec" then return measure_blackbox(kind, n) end
end

---------------------------------------------------------------------------
-- Printing
---------------------------------------------------------------------------
local function us(r) return r.runs > 0 and r.cpu / r.runs * 1e6 or nil end

local function ms(v) return v and fmt("%.2f", v * 1e3) or "n/a" end

local function progress(round, r)
  io.write(fmt("  round %d %-5s %-9s %8.1f µs/run  %6.1f MB  runs %6d  "
    .. "ok %6d  skipped %s  p99 %s ms\n", round, r.kind, r.system,
    us(r) or 0 / 0, r.rss / 1048576, r.runs, r.ok,
    r.skipped and tostring(r.skipped) or "n/a", ms(r.p99)))
  io.flush()
end

---------------------------------------------------------------------------
-- The memory check (BENCH_MEMORY)
---------------------------------------------------------------------------
local function memory_check(seconds)
  print(fmt("sonde memory: 1,000 declared TCP probes at period 1 s "
    .. "(1,000 runs/s) for %d s, RSS every 10 s", seconds))
  local windows = math.max(1, seconds // 10)
  local list = measure_declared("tcp", 1000, 1, 10, 10, windows)
  if #list == 0 then error("the host printed nothing") end
  local first, last, max, runs, ok = list[1].rss, list[#list].rss, 0, 0, 0
  -- least squares slope, bytes per minute
  local sx, sy, sxx, sxy = 0, 0, 0, 0
  for i, r in ipairs(list) do
    local x = i * 10 / 60
    sx, sy, sxx, sxy = sx + x, sy + r.rss, sxx + x * x, sxy + x * r.rss
    max = math.max(max, r.rss)
    runs, ok = runs + r.runs, ok + r.ok
    io.write(fmt("  %4d s  RSS %7.2f MB  runs %5d  ok %5d  cpu %.2f s\n",
      10 + i * 10, r.rss / 1048576, r.runs, r.ok, r.cpu))
  end
  local n = #list
  local slope = n > 1 and (n * sxy - sx * sy) / (n * sxx - sx * sx) or 0
  -- no growth: the largest RSS of the last third is at most that of the
  -- first third plus 1 MiB (the collector's saw-tooth stays inside)
  local third = math.max(1, n // 3)
  local head, tail = 0, 0
  for i = 1, third do head = math.max(head, list[i].rss) end
  for i = n - third + 1, n do tail = math.max(tail, list[i].rss) end
  print(fmt("RSS first %.2f MB, last %.2f MB, max %.2f MB, slope %.1f KB/min; "
    .. "runs %d (ok %d), skipped %d (log)", first / 1048576, last / 1048576,
    max / 1048576, slope / 1024, runs, ok, list[1].log_skipped))
  print(fmt("target: no growth over %d s at 1,000 runs/s (max RSS of the last "
    .. "third <= first third's + 1 MiB): %.2f -> %.2f MB: %s", seconds,
    head / 1048576, tail / 1048576, tail <= head + 1048576 and "met"
      or "missed"))
end

---------------------------------------------------------------------------
-- The benchmark
---------------------------------------------------------------------------
local function stripped_size()
  local h, m = DIR .. "/sonde.stripped", DIR .. "/core.so.stripped"
  if not os.execute(fmt("strip -o %s %s && strip -o %s %s", q(h), q(HOST), q(m),
    q(MODULE))) then
    return nil
  end
  local function size(p)
    local f = assert(io.open(p, "rb"))
    local s = f:seek("end")
    f:close()
    return s
  end
  return size(h), size(m)
end

local function bench()
  local t_start = now()
  print(fmt("sonde benchmark%s: target fixture server 127.0.0.1:%d; %d rounds "
    .. "of %g s (after %g s warm-up) per system; %s",
    QUICK and " (BENCH_QUICK)" or "", PORT, ROUNDS, SECONDS, WARMUP,
    "tcp and http 1,000 slots, exec 100 slots, period 1 s"))
  local res = {}   -- res[kind][system] = list of rounds
  for _, k in ipairs(KINDS) do res[k] = {} end
  for round = 1, ROUNDS do
    for _, kind in ipairs(KINDS) do
      for _, system in ipairs(SYSTEMS) do
        local r = measure(system, kind)
        if r then
          r.kind, r.system = kind, system
          res[kind][system] = res[kind][system] or {}
          res[kind][system][round] = r
          progress(round, r)
        elseif not (system == "blackbox" and kind == "exec") then
          print(fmt("  round %d %s %s: no figures", round, kind, system))
        end
      end
    end
  end

  -- 10,000 and 1,000 declared probes at period 10 s
  local big = {}
  for _, kind in ipairs({ "tcp", "http" }) do
    local warm = QUICK and 10.5 or 11
    local all, scrapes, saved = measure_big(kind, warm)
    local l, with = {}, {}
    for i, r in ipairs(all) do
      r.kind, r.system = kind, "declared"
      if r.scrape then with[#with + 1] = r else l[#l + 1] = r end
      io.write(fmt("  10,000 %-4s window %d%s: %5.2f %% of a core  %6.1f MB  "
        .. "runs %6d  ok %6d  skipped %s  p99 %s ms  max %s ms\n", kind, i,
        r.scrape and " (scrapes)" or "", r.cpu / r.seconds * 100,
        r.rss / 1048576, r.runs, r.ok,
        r.skipped and tostring(r.skipped) or "n/a", ms(r.p99), ms(r.max)))
    end
    local pt, why
    if scrapes then
      io.write(fmt("  10,000 %-4s scrapes: %d lines from the scraper\n", kind,
        #scrapes))
      pt, why = promtool(saved)
    end
    local small = measure_declared(kind, 1000, 10, warm, QUICK and 2 or 4, 1)
    big[kind] = { big = l, with = with, scrapes = scrapes, promtool = pt,
      promtool_why = why, small = small[1] }
    if small[1] then
      io.write(fmt("  1,000 %-4s at period 10 s: %6.1f MB\n", kind,
        small[1].rss / 1048576))
    end
  end

  -- the tables
  local function figures(list)
    if not list or not next(list) then return nil end
    local f = { cpu = {}, rss = {}, p50 = {}, p99 = {}, max = {}, runs = {},
      skipped = 0, missed = 0, fail = 0, has_skipped = false, has_late = false }
    for _, r in pairs(list) do
      f.cpu[#f.cpu + 1] = us(r)
      f.rss[#f.rss + 1] = r.rss
      f.runs[#f.runs + 1] = r.runs
      f.fail = f.fail + (r.fail or (r.runs - r.ok))
      f.missed = f.missed + (r.missed or 0)
      if r.system ~= "blackbox" and r.p99 then
        f.p50[#f.p50 + 1], f.p99[#f.p99 + 1], f.max[#f.max + 1] = r.p50, r.p99,
          r.max
        f.has_late = true
      end
      if r.skipped then
        f.skipped = f.skipped + r.skipped
        f.has_skipped = true
      elseif r.log_skipped then
        -- from the log: the whole run of that process, counted once
        if (r.window or 1) == 1 then f.skipped = f.skipped + r.log_skipped end
        f.log = true
      end
    end
    return f
  end

  -- median over rounds of a per-round ratio of two systems' CPU per run
  local function ratio(kind, a, b)
    local l = {}
    local ra, rb = res[kind][a], res[kind][b]
    if not ra or not rb then return nil end
    for round = 1, ROUNDS do
      local x, y = ra[round], rb[round]
      if x and y and us(x) and us(y) then l[#l + 1] = us(x) / us(y) end
    end
    return median(l)
  end

  local ratios = {}
  print()
  print("Medians of " .. ROUNDS .. " rounds (CPU: this process only, the "
    .. "target and children excluded; skipped, missed and failed: totals)")
  for _, kind in ipairs(KINDS) do
    print()
    print(fmt("%s, %d probes at period 1 s, windows of %g s:", kind, N[kind],
      window(kind)))
    print(fmt("  %-9s %10s %8s %22s %7s %8s %6s %10s %11s", "system",
      "CPU µs/run", "RSS MB", "late p50/p99/max ms", "runs", "skipped",
      "failed", "sonde/raw", "bb/sonde"))
    ratios[kind] = {}
    for _, system in ipairs(SYSTEMS) do
      local f = figures(res[kind][system])
      if f then
        local late = f.has_late and fmt("%s/%s/%s", ms(median(f.p50)),
          ms(median(f.p99)), ms(median(f.max))) or "n/a"
        local sr, bb = "", ""
        if system == "lua" or system == "declared" then
          local v = ratio(kind, system, "raw")
          ratios[kind][system] = v
          sr = v and fmt("%.2fx", v) or "n/a"
        elseif system == "blackbox" then
          local v = ratio(kind, "blackbox", "declared")
          ratios[kind].blackbox = v
          bb = v and fmt("%.1fx", v) or "n/a"
        end
        local skipped = (f.has_skipped and tostring(f.skipped))
          or (f.log and f.skipped .. " (log)") or "n/a"
        print(fmt("  %-9s %10.1f %8.1f %22s %7.0f %8s %6d %10s %11s", system,
          median(f.cpu) or 0 / 0, median(f.rss) / 1048576, late,
          median(f.runs), skipped, f.fail, sr, bb))
      end
    end
  end
  print()
  print("  raw: bench/raw.c; lua: probers called from Lua "
    .. "(bench/lua_probers.lua);")
  print("  declared: sonde.probe under the host (bench/declared.lua); bb:")
  print("  blackbox_exporter's CPU per /probe answered with probe_success 1")
  print("  (its skipped: the driver's requests not sent, the last still "
    .. "pending);")
  print("  lateness: tick start minus due time (n/a: not measured, see "
    .. "the notes)")
  local children = {}
  for _, r in pairs(res.exec.raw or {}) do
    if r.cpu_children and r.runs > 0 then
      children[#children + 1] = r.cpu_children / r.runs * 1e6
    end
  end
  if #children > 0 then
    print(fmt("  exec: each /bin/true costs its child %.0f µs of CPU (raw's "
      .. "RUSAGE_CHILDREN), not counted above", median(children)))
  end

  print()
  print(fmt("10,000 declared probes at period 10 s (%d windows of %g s after "
    .. "a warm-up of at least a period):", BIG_WINDOWS, BIG_WINDOW))
  print(fmt("  %-5s %12s %8s %22s %7s %8s %6s %14s", "kind", "% of a core",
    "RSS MB", "late p50/p99/max ms", "runs", "skipped", "failed",
    "RSS B/probe"))
  for _, kind in ipairs({ "tcp", "http" }) do
    local b = big[kind]
    local f = figures(b.big)
    if f then
      local pct = {}
      local rss_max = 0
      for _, r in ipairs(b.big) do
        pct[#pct + 1] = r.cpu / r.seconds * 100
        rss_max = math.max(rss_max, r.rss)
      end
      b.pct, b.rss = median(pct), rss_max
      if b.small then
        b.slope = (rss_max - b.small.rss) / 9000
      end
      b.p99 = f.has_late and median(f.p99) or nil
      b.skipped = f.has_skipped and f.skipped or nil
      local late = f.has_late and fmt("%s/%s/%s", ms(median(f.p50)),
        ms(median(f.p99)), ms(median(f.max))) or "n/a"
      local skipped = (f.has_skipped and tostring(f.skipped))
        or (f.log and f.skipped .. " (log)") or "n/a"
      print(fmt("  %-5s %12.2f %8.1f %22s %7.0f %8s %6d %14s", kind, b.pct,
        rss_max / 1048576, late, median(f.runs), skipped, f.fail,
        b.slope and fmt("%.0f", b.slope) or "n/a"))
    end
  end
  print("  CPU: median of the windows; RSS: the largest; RSS B/probe: (RSS of "
    .. "10,000 - RSS of 1,000) / 9,000, both at period 10 s")
  for _, kind in ipairs({ "tcp", "http" }) do
    local f = figures(res[kind].raw)
    if f and median(f.cpu) then
      print(fmt("  raw %s at the same rate (1,000 runs/s, its CPU per run "
        .. "above): %.2f %% of a core", kind, median(f.cpu) * 1000 / 1e6 * 100))
    end
  end

  -- the same 10,000 probes without and with scrapes
  print()
  print(fmt("10,000 declared probes at period 10 s, without and with an "
    .. "external scraper polling GET /metrics (Accept-Encoding: gzip) and "
    .. "GET /status, each every 1 s (%d + %d windows of %g s):",
    BIG_WINDOWS, SCRAPE_WINDOWS, BIG_WINDOW))
  print(fmt("  %-5s %-8s %12s %8s %22s %7s %8s %7s %6s", "kind", "scrapes",
    "% of a core", "RSS MB", "late p50/p99/max ms", "runs", "skipped",
    "missed", "failed"))
  local function kb(v) return v and fmt("%.0f", v / 1024) or "n/a" end
  for _, kind in ipairs({ "tcp", "http" }) do
    local b = big[kind]
    for _, side in ipairs({ "without", "with" }) do
      local list = side == "without" and b.big or b.with
      local f = figures(list)
      if f then
        local pct, rss = {}, 0
        for _, r in ipairs(list) do
          pct[#pct + 1] = r.cpu / r.seconds * 100
          rss = math.max(rss, r.rss)
        end
        local late = f.has_late and fmt("%s/%s/%s", ms(median(f.p50)),
          ms(median(f.p99)), ms(median(f.max))) or "n/a"
        if side == "with" then
          b.with_p99 = f.has_late and median(f.p99) or nil
          b.with_pct = median(pct)
        end
        print(fmt("  %-5s %-8s %12.2f %8.1f %22s %7.0f %8s %7d %6d", kind,
          side, median(pct), rss / 1048576, late, median(f.runs),
          f.has_skipped and tostring(f.skipped) or "n/a", f.missed, f.fail))
      else
        print(fmt("  %-5s %-8s %12s", kind, side, "not measured"))
      end
    end
  end
  print("  CPU, lateness: medians of the windows; RSS: the largest; skipped, "
    .. "missed, failed: totals")

  print()
  print("Scrapes at 10,000 probes (client side, the scraper's requests "
    .. "started in the windows with scrapes):")
  print(fmt("  %-5s %-9s %5s %6s %5s %-9s %11s %12s %18s", "kind", "path", "n",
    "failed", "late", "encoding", "sent KB", "decoded KB",
    "time med/max ms"))
  for _, kind in ipairs({ "tcp", "http" }) do
    local b = big[kind]
    if not b.scrapes then
      print(fmt("  %-5s not measured (no %s)", kind, PYTHON))
    else
      local in_window = {}
      for _, r in ipairs(b.with) do in_window[r.window] = r end
      local total, failed = 0, 0
      for _, path in ipairs({ "/metrics", "/status" }) do
        local n, fail, late, wire, dec, secs, enc = 0, 0, 0, {}, {}, {}, {}
        local errors, nerrors = {}, 0
        for _, x in ipairs(b.scrapes) do
          if x.path == path and not x.identity and in_window[x.window] then
            n = n + 1
            if x.error then
              fail = fail + 1
              local e = x.error:gsub("%d+", "N")
              if not errors[e] then
                nerrors = nerrors + 1
                errors[e], errors[nerrors] = true, x.error
              end
            else
              wire[#wire + 1], dec[#dec + 1] = x.wire, x.decoded
              enc[x.encoding or "?"] = true
            end
            if x.late then late = late + 1 end
            secs[#secs + 1] = x.seconds
          end
        end
        total, failed = total + n, failed + fail
        local encs = {}
        for e in pairs(enc) do encs[#encs + 1] = e end
        table.sort(encs)
        local mx = 0
        for _, v in ipairs(secs) do mx = math.max(mx, v) end
        print(fmt("  %-5s %-9s %5d %6d %5d %-9s %11s %12s %18s", kind, path, n,
          fail, late, #encs > 0 and table.concat(encs, ",") or "n/a",
          kb(median(wire)), kb(median(dec)),
          #secs > 0 and fmt("%s/%s", ms(median(secs)), ms(mx)) or "n/a"))
        for i = 1, math.min(nerrors, 3) do
          print(fmt("  %-5s %-9s failed: %s", kind, path, errors[i]))
        end
      end
      b.nscrapes, b.failed_scrapes = total, failed
      -- host CPU per scrape: the windows' CPU beyond the rate without
      -- scrapes, over the scrapes started in them
      local extra, seconds = 0, 0
      local idle = b.pct and b.pct / 100
      for _, r in ipairs(b.with) do
        if idle then extra = extra + r.cpu - idle * r.seconds end
        seconds = seconds + r.seconds
      end
      if idle and total > 0 then
        b.cpu_per_scrape = extra / total
        print(fmt("  %-5s host CPU per scrape: %.1f ms ((%.2f s of CPU in %g s "
          .. "with scrapes - %.2f %% of a core without) / %d scrapes, either "
          .. "path)", kind, b.cpu_per_scrape * 1e3, extra + idle * seconds,
          seconds, idle * 100, total))
      else
        print(fmt("  %-5s host CPU per scrape: n/a (%d scrapes)", kind, total))
      end
      for _, x in ipairs(b.scrapes) do
        if x.identity then
          print(fmt("  %-5s one GET /metrics without Accept-Encoding: %s, "
            .. "%s KB as sent (%s) in %s ms", kind,
            x.error or "ok", kb(x.wire), x.encoding or "?", ms(x.seconds)))
        end
      end
      local pt = b.promtool
      if pt then
        print(fmt("  %-5s promtool check metrics (that scrape, %.1f MB): %s",
          kind, pt.bytes / 1048576, pt.ok and "pass"
            or fmt("fail (exit %s)", tostring(pt.rc))))
        for i = 1, math.min(#pt.lines, 5) do
          print("          " .. pt.lines[i]:sub(1, 150))
        end
        if #pt.lines > 5 then
          print(fmt("          (%d more lines)", #pt.lines - 5))
        end
      else
        print(fmt("  %-5s promtool check metrics: skipped, %s", kind,
          b.promtool_why or "not run"))
      end
    end
  end
  print("  sent: the body as sent (gzip when the server compresses: "
    .. "Content-Encoding), decoded: uncompressed; medians over the scrapes;")
  print("  time: request to last byte on the client (a new connection each); "
    .. "late: started after its due second (the previous one ran over)")

  -- targets
  print()
  print("Targets (the benchmark never fails on a missed one):")
  -- nil when not measured, else whether `pred` holds
  local function check(v, pred)
    if v == nil then return nil end
    return pred(v) and true or false
  end
  local function target_line(text, value, ok)
    local verdict = ok == nil and "not measured" or (ok and "met" or "missed")
    print(fmt("  %-62s %-24s %s", text, value, verdict))
  end
  local function ratio_target(text, v, limit)
    target_line(text, v and fmt("%.2fx", v) or "n/a",
      check(v, function(x) return x <= limit end))
  end
  ratio_target("declared TCP probe CPU <= 1.5x raw", ratios.tcp.declared, 1.5)
  ratio_target("declared HTTP probe CPU <= 1.3x raw", ratios.http.declared, 1.3)
  ratio_target("declared exec probe CPU (parent) <= 1.2x raw",
    ratios.exec.declared, 1.2)
  for _, kind in ipairs(KINDS) do
    ratio_target(fmt("Lua %s prober call CPU <= 1.3x raw", kind),
      ratios[kind].lua, 1.3)
  end
  for _, kind in ipairs({ "tcp", "http" }) do
    local v = ratios[kind].blackbox
    target_line(fmt("blackbox_exporter CPU per %s probe >= 8x sonde's",
      kind:upper()), v and fmt("%.1fx", v) or "n/a",
      check(v, function(x) return x >= 8 end))
  end
  local bt, bh = big.tcp, big.http
  target_line("10,000 TCP probes at period 10 s: CPU < 5 % of a core",
    bt.pct and fmt("%.2f %%", bt.pct) or "n/a",
    check(bt.pct, function(x) return x < 5 end))
  target_line("10,000 TCP probes at period 10 s: RSS < 40 MB",
    bt.rss and fmt("%.1f MB", bt.rss / 1048576) or "n/a",
    check(bt.rss, function(x) return x < 40 * 1048576 end))
  target_line("10,000 HTTP probes at period 10 s: CPU < 12 % of a core",
    bh.pct and fmt("%.2f %%", bh.pct) or "n/a",
    check(bh.pct, function(x) return x < 12 end))
  -- lateness and skipped ticks of every declared run
  local worst, late_known, skipped, missed, from_log = 0, true, 0, 0, false
  local function each_declared(fn)
    for _, kind in ipairs(KINDS) do
      for _, r in pairs(res[kind].declared or {}) do fn(r) end
    end
    for _, kind in ipairs({ "tcp", "http" }) do
      for _, r in ipairs(big[kind].big or {}) do fn(r) end
    end
  end
  -- lateness: the median p99 of each configuration (over its rounds or
  -- windows), the worst of those
  for _, kind in ipairs(KINDS) do
    local f = figures(res[kind].declared)
    if f and f.has_late then worst = math.max(worst, median(f.p99))
    else late_known = false end
  end
  for _, kind in ipairs({ "tcp", "http" }) do
    local f = figures(big[kind].big)
    if f and f.has_late then worst = math.max(worst, median(f.p99))
    else late_known = false end
  end
  each_declared(function(r)
    if r.skipped then
      skipped = skipped + r.skipped
    else
      -- from the log: the whole run of that process, counted once
      if (r.window or 1) == 1 then skipped = skipped + (r.log_skipped or 0) end
      from_log = true
    end
    missed = missed + (r.missed or 0)
  end)
  target_line("declared probes: schedule lateness p99 <= 2 ms",
    late_known and fmt("p99 %.2f ms (worst)", worst * 1e3)
      or "n/a (no schedule_stats)",
    check(late_known and worst or nil, function(x) return x <= 0.002 end))
  target_line("declared probes: none skipped, none missed (never stacked)",
    fmt("%d skipped%s, %d missed", skipped, from_log and " (log)" or "",
      missed),
    skipped == 0 and missed == 0)
  local hs, ms_ = stripped_size()
  local worst_s, known_s, failed_s, nscr = 0, true, 0, 0
  local pt_ok, pt_known = true, false
  for _, kind in ipairs({ "tcp", "http" }) do
    local b = big[kind]
    if b.with_p99 then worst_s = math.max(worst_s, b.with_p99)
    else known_s = false end
    failed_s = failed_s + (b.failed_scrapes or 0)
    nscr = nscr + (b.nscrapes or 0)
    if b.promtool then
      pt_known = true
      pt_ok = pt_ok and b.promtool.ok
    end
  end
  target_line("10,000 probes: lateness p99 with scrapes <= 5 ms",
    known_s and fmt("p99 %.2f ms (worst)", worst_s * 1e3) or "n/a",
    check(known_s and worst_s or nil, function(x) return x <= 0.005 end))
  target_line("10,000 probes: no scrape failed or timed out",
    fmt("%d of %d failed", failed_s, nscr),
    check(nscr > 0 and failed_s or nil, function(x) return x == 0 end))
  local pt_verdict = nil
  if pt_known then pt_verdict = pt_ok end
  target_line("10,000 probes: promtool check metrics clean",
    pt_known and (pt_ok and "pass" or "fail") or "n/a", pt_verdict)
  target_line("stripped host + module < 300 KB", hs and fmt("%d + %d = %d KB",
    hs // 1024, ms_ // 1024, (hs + ms_) // 1024) or "n/a",
    check(hs and hs + ms_, function(x) return x < 300 * 1024 end))
  target_line("no RSS growth over 10 min at 1,000 runs/s", "make bench-memory",
    nil)
  print(fmt("Memory per declared probe (RSS slope, 1,000 -> 10,000 at period "
    .. "10 s): TCP %s B, HTTP %s B",
    bt.slope and fmt("%.0f", bt.slope) or "n/a",
    bh.slope and fmt("%.0f", bh.slope) or "n/a"))
  print(fmt("\nbench: %.0f s", now() - t_start))
end

local ok, err = xpcall(function()
  start_fixture()
  if MEMORY then memory_check(MEMORY) else bench() end
end, debug.traceback)
cleanup()
if not ok then
  io.stderr:write("bench: ", tostring(err), "\n")
  os.exit(1)
end
