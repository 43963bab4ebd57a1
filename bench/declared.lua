-- bench/declared.lua: N declared probes under the host, measured from
-- inside (bench/bench.lua runs it).
--
--   build/bin/sonde [--listen ADDR] bench/declared.lua KIND TARGET N PERIOD \
--     WARMUP WINDOW WINDOWS [SCRAPE_WINDOWS PHASE ACK]
--
-- Declares N probes `sonde.probe { name = "bench-<i>", period = PERIOD,
-- tcp_socket | http_get | exec = ... }` (KIND tcp: TARGET a port on
-- 127.0.0.1; http: a URL; exec: a command path), no hooks nor actions,
-- the defaults otherwise; the engine spreads their first runs over the
-- first period.  After WARMUP seconds (at least one period, so that every
-- probe has started) it measures WINDOWS windows of WINDOW seconds each
-- and prints one JSON line per window, with the fields of bench/raw.c:
--   cpu      CPU time of this process in the window (seconds; os.clock(),
--            i.e. CLOCK_PROCESS_CPUTIME_ID: user + system of all its
--            threads, children excluded, as getrusage(RUSAGE_SELF))
--   runs, ok results in the window, and the successes among them
--   fail     results that were not a success (summed over the probes)
--   skipped  ticks skipped because the run was still in flight
--   missed   ticks missed (slots that passed while the loop was late)
--   rss      bytes, at the end of the window
--   p50, p99, max  lateness of the ticks (seconds)
-- `runs`, `skipped`, `missed` and the lateness come from
-- `sonde.core.schedule_stats(reset)` when the core has it.  Without it,
-- runs and ok are summed over the probes (`p.runs`, `p.stats`), missed
-- over their tickers, and skipped and the lateness are null: the
-- skipped ticks are then only in the log (`probe_skipped`, counted by
-- bench.lua from stderr).
--
-- With SCRAPE_WINDOWS (the host started with --listen), SCRAPE_WINDOWS
-- more windows follow the WINDOWS ones, while bench/scraper.py polls
-- /metrics and /status: this script tells it when through the file PHASE
-- ("idle" until then; "scrape W" from the start of window W, after the
-- figures are reset, to its end; then "pause W", and the window goes on
-- until the scraper writes "pause W" to ACK: no scrape in flight, so
-- that every scrape started in the window ends in it; "done" after the
-- last window, and this script waits for "done" in ACK, the scraper's
-- last fetch done, before exiting).  Those waits are 60 s at most.
-- Each line has "scrape": true or false, and "seconds" is then the
-- window's actual length.
local sonde = require "sonde"
local core = require "sonde.core"

local kind, target = arg[1], arg[2]
local N, PERIOD = tonumber(arg[3]), tonumber(arg[4])
local WARMUP, WINDOW, WINDOWS = tonumber(arg[5]), tonumber(arg[6]),
  tonumber(arg[7])
local SCRAPE_WINDOWS, PHASE, ACK = tonumber(arg[8] or "0"), arg[9], arg[10]
assert(kind and target and N and PERIOD and WARMUP and WINDOW and WINDOWS
  and SCRAPE_WINDOWS and (SCRAPE_WINDOWS == 0 or (PHASE and ACK)),
  "usage: declared.lua KIND TARGET N PERIOD WARMUP WINDOW WINDOWS "
  .. "[SCRAPE_WINDOWS PHASE ACK]")

-- Waits (60 s at most) until ACK reads `s`.
local function wait_ack(s)
  for _ = 1, 3000 do
    local f = io.open(ACK)
    local v = f and f:read("l")
    if f then f:close() end
    if v == s then return true end
    sonde.sleep(0.02)
  end
  return false
end

local function set_phase(s)
  if not PHASE then return end
  local tmp = PHASE .. ".tmp"
  local f = assert(io.open(tmp, "w"))
  f:write(s, "\n")
  f:close()
  assert(os.rename(tmp, PHASE))
end

local handler, spec
if kind == "tcp" then
  handler, spec = "tcp_socket", { port = assert(tonumber(target)) }
elseif kind == "http" then
  handler, spec = "http_get", { url = target }
elseif kind == "exec" then
  handler, spec = "exec", { command = { target } }
else
  error("unknown kind " .. tostring(kind))
end

local probes = {}
for i = 1, N do
  probes[i] = sonde.probe { name = "bench-" .. i, period = PERIOD,
    [handler] = spec }
end

local stats = core.schedule_stats

-- Counters summed over the probes (the fallback without schedule_stats).
local function sums()
  local runs, ok, missed = 0, 0, 0
  for i = 1, N do
    local st = probes[i].stats
    runs = runs + st.n
    ok = ok + st.counts.success
    missed = missed + st.missed
  end
  return runs, ok, missed
end

local function num(v)
  return v == nil and "null" or string.format("%.6f", v)
end

sonde.sleep(WARMUP)
for w = 1, WINDOWS + SCRAPE_WINDOWS do
  local scrape = w > WINDOWS
  -- (reading every probe's counters takes a while with 10,000 probes:
  -- done before the figures are reset and after they are read)
  local runs0, ok0, missed0 = sums()
  collectgarbage()     -- (and its garbage is not the window's)
  if stats then stats(true) end
  local cpu0, t0 = os.clock(), core.now()
  if scrape then set_phase("scrape " .. w) end
  sonde.sleep(WINDOW)
  if scrape then
    set_phase("pause " .. w)
    wait_ack("pause " .. w)
  end
  local cpu, seconds = os.clock() - cpu0, WINDOW
  if scrape then seconds = core.now() - t0 end
  local s = stats and stats(false)
  local st = core.process_stats()
  local runs, ok, missed = sums()
  runs, ok, missed = runs - runs0, ok - ok0, missed - missed0
  local fail = runs - ok
  local skipped
  if s then
    runs, missed, skipped = s.runs, s.missed, s.skipped
  end
  io.stdout:write(string.format('{"system":"declared","kind":"%s","n":%d,'
    .. '"period":%g,"seconds":%g,"window":%d,"cpu":%.6f,"runs":%d,"ok":%d,'
    .. '"fail":%d,'
    .. '"skipped":%s,"missed":%d,"rss":%d,"p50":%s,"p99":%s,"max":%s,'
    .. '"schedule_stats":%s,"scrape":%s}\n', kind, N, PERIOD, seconds, w,
    cpu, runs, ok, fail,
    skipped and string.format("%d", skipped) or "null", missed,
    math.floor(st.rss_bytes), num(s and s.p50), num(s and s.p99),
    num(s and s.max), s and "true" or "false", tostring(scrape)))
  io.stdout:flush()
end
if SCRAPE_WINDOWS > 0 then
  set_phase("done")
  wait_ack("done")
end
os.exit(0)
