-- bench/tcp_cpu.lua: CPU time per TCP probe (core.tcp), read from
-- /proc/self/stat (utime + stime): N probes (20000), B at once (100), to
-- HOST (127.0.0.1; "localhost" goes through the resolver) on a listening
-- loopback port, e.g. the fixture server's (see `make bench`):
--
--   build/bin/sonde bench/tcp_cpu.lua PORT [N [HOST [B]]]
--
-- Under valgrind --tool=callgrind, two runs with different N give the
-- instructions per probe: (Ir(N2) - Ir(N1)) / (N2 - N1).
local core = require "sonde.core"
local port = assert(tonumber(arg[1]), "usage: bench/tcp_cpu.lua PORT [N [HOST [B]]]")
local N = tonumber(arg[2]) or 20000
local host = arg[3] or "127.0.0.1"
local B = tonumber(arg[4]) or 100
local tck = 100     -- USER_HZ: the clock ticks of /proc/PID/stat on Linux
local function cpu()
  local f = assert(io.open("/proc/self/stat"))
  local st = f:read("a")
  f:close()
  local t = {}
  for w in st:match("%) (.*)$"):gmatch("%S+") do t[#t + 1] = w end
  return (tonumber(t[12]) + tonumber(t[13])) / tck
end
local bad = 0
local function cb(r) if r.status ~= "success" then bad = bad + 1 end end
-- warm up
for _ = 1, B do core.tcp({ host = host, port = port, timeout = 5 }, cb) end
core.run()
local c0, t0 = cpu(), core.now()
for _ = 1, N // B do
  for _ = 1, B do core.tcp({ host = host, port = port, timeout = 5 }, cb) end
  core.run()
end
local c1, t1 = cpu(), core.now()
print(string.format("%s N=%d batch=%d: cpu %.2f s (%.1f us/probe), wall %.2f s, failures %d",
  host, N, B, c1 - c0, (c1 - c0) / N * 1e6, t1 - t0, bad))
