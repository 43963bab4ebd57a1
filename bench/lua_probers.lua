-- bench/lua_probers.lua: the probers called from Lua, on the schedule of
-- bench/raw.c, under the host (bench/bench.lua runs it).
--
--   build/bin/sonde bench/lua_probers.lua KIND TARGET N PERIOD WARMUP SECONDS
--
-- KIND tcp (TARGET a port on 127.0.0.1), http (a URL) or exec (a command
-- path).  N slots, each at a fixed rate of one run per PERIOD seconds,
-- slot i (0-based) first due i/N * PERIOD after the start, on the core's
-- timers (sonde.core.timer, no task per run); a tick whose previous run
-- is still in flight skips; one that comes after later slots of its own
-- passed counts them as missed (as lua/sonde/ticker.lua).  Each run is one
-- callback-style call, `sonde.tcp_socket(spec, cb)` / `sonde.http_get` /
-- `sonde.exec`, with the spec table built once.
--
-- After WARMUP seconds it measures for SECONDS and prints one JSON line
-- with the fields of bench/raw.c: cpu (os.clock(): the C library's
-- clock(), CLOCK_PROCESS_CPUTIME_ID, user + system of every thread of
-- this process, children excluded: getrusage(RUSAGE_SELF)'s figure, to
-- the microsecond), runs, ok, skipped,
-- missed, rss (bytes, at the end), p50/p99/max lateness (seconds: tick
-- start minus due time).
local sonde = require "sonde"
local core = require "sonde.core"

local kind, target = arg[1], arg[2]
local N, PERIOD = tonumber(arg[3]), tonumber(arg[4])
local WARMUP, SECONDS = tonumber(arg[5]), tonumber(arg[6])
assert(kind and target and N and PERIOD and WARMUP and SECONDS,
  "usage: lua_probers.lua KIND TARGET N PERIOD WARMUP SECONDS")

local prober, spec
if kind == "tcp" then
  prober, spec = sonde.tcp_socket, { port = assert(tonumber(target)) }
elseif kind == "http" then
  prober, spec = sonde.http_get, { url = target }
elseif kind == "exec" then
  prober, spec = sonde.exec, { command = { target } }
else
  error("unknown kind " .. tostring(kind))
end

local now, timer = core.now, core.timer
local floor = math.floor
local measuring = false
local runs, ok, skipped, missed = 0, 0, 0, 0
local late, nlate = {}, 0

local t0 = now()
for i = 0, N - 1 do
  local first_at = t0 + i / N * PERIOD
  local next_at, ticks, busy = first_at, 0, false
  local function done(r)
    busy = false
    if measuring then
      runs = runs + 1
      if r.status == "success" then ok = ok + 1 end
    end
  end
  local tick
  function tick()
    local t = now()
    local k = floor((t - first_at) / PERIOD) + 1
    if k <= ticks then k = ticks + 1 end
    if measuring then
      missed = missed + (k - ticks - 1)
      nlate = nlate + 1
      late[nlate] = t - next_at
    end
    ticks = k
    next_at = first_at + k * PERIOD
    timer(math.max(0, next_at - now()), tick)
    if busy then
      if measuring then skipped = skipped + 1 end
      return
    end
    busy = true
    prober(spec, done)
  end
  timer(math.max(0, first_at - now()), tick)
end

sonde.sleep(WARMUP)
measuring = true
local cpu0 = os.clock()
sonde.sleep(SECONDS)
local cpu = os.clock() - cpu0
local st = core.process_stats()
measuring = false
local n = nlate
local l = table.move(late, 1, n, 1, {})
table.sort(l)
local function rank(q)
  if n == 0 then return 0 end
  local i = math.ceil(q * n)
  if i < 1 then i = 1 end
  return l[math.min(i, n)]
end
io.stdout:write(string.format('{"system":"lua","kind":"%s","n":%d,"period":%g,'
  .. '"seconds":%g,"cpu":%.6f,"runs":%d,"ok":%d,"skipped":%d,"missed":%d,'
  .. '"rss":%d,"p50":%.6f,"p99":%.6f,"max":%.6f}\n', kind, N, PERIOD, SECONDS,
  cpu, runs, ok, skipped, missed, floor(st.rss_bytes), rank(0.5), rank(0.99),
  n > 0 and l[n] or 0))
io.stdout:flush()
os.exit(0)
