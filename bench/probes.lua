-- bench/probes.lua: what running probes concurrently on one loop buys,
-- measured against a baseline run in the same script.
--
--   build/bin/sonde bench/probes.lua BASE_URL   (`make bench-concurrency`)
--
-- Prints, for each kind, the time of N probes run one after another
-- (baseline) and N run at once, and the ratio.  Loopback only.
local sonde = require "sonde"

local base = assert(arg[1], "usage: bench/probes.lua BASE_URL")
local N = tonumber(arg[2]) or 200

local function sequential(start)
  local t0 = sonde.now()
  for _ = 1, N do start() end
  return sonde.now() - t0
end

local function concurrent(start)
  local t0 = sonde.now()
  local left = N
  for _ = 1, N do
    sonde.spawn(function()
      start()
      left = left - 1
    end)
  end
  while left > 0 do sonde.sleep(0.001) end
  return sonde.now() - t0
end

local cases = {
  { "exec true", function() sonde.exec { command = { "true" } } end },
  { "os.execute true (no sonde)", nil, function() os.execute("true") end },
  { "http_get /ok", function() sonde.http_get { url = base .. "/ok" } end },
  { "http_get /sleep?s=0.05", function()
      sonde.http_get { url = base .. "/sleep?s=0.05" } end },
  { "tcp_socket", function()
      sonde.tcp_socket { port = tonumber(base:match(":(%d+)$")) } end },
}

print(string.format("%-28s %12s %12s %8s", "N=" .. N, "one by one", "at once",
  "ratio"))
for _, c in ipairs(cases) do
  if c[2] then
    local seq = sequential(c[2])
    local con = concurrent(c[2])
    print(string.format("%-28s %11.3fs %11.3fs %7.1fx", c[1], seq, con,
      seq / con))
  else
    local seq = sequential(c[3])
    print(string.format("%-28s %11.3fs %12s %8s", c[1], seq, "-", "-"))
  end
end
