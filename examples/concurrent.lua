-- concurrent.lua: run a handful of probes at once and print their results.
--
--   build/bin/sonde examples/concurrent.lua [BASE_URL]
--
-- BASE_URL is an HTTP server to probe (`make demo-probes` starts the project's
-- fixture server on 127.0.0.1 and passes its URL); without it the HTTP
-- probes go to 127.0.0.1:1, where nothing listens.
local sonde = require "sonde"

local base = arg and arg[1] or "http://127.0.0.1:1"

local probes = {
  { "exec: echo",            "exec", { command = { "sh", "-c", "echo hello from $(WHO)" },
                                       env = { WHO = "sonde" } } },
  { "exec: exit 3",          "exec", { command = { "sh", "-c", "echo broken >&2; exit 3" } } },
  { "exec: nagios warning",  "exec", { command = { "sh", "-c", "echo 'DISK WARNING - 15% free'; exit 1" },
                                       codes = "nagios" } },
  { "exec: sleep, timeout 1","exec", { command = { "sleep", "30" }, timeout = 1 } },
  { "exec: not found",       "exec", { command = { "/nonexistent/check" } } },
  { "tcp: nothing on :1",    "tcp_socket", { port = 1 } },
  { "http: 200",             "http_get", { url = base .. "/ok" } },
  { "http: 503",             "http_get", { url = base .. "/status/503" } },
  { "http: redirect /a->/b", "http_get", { url = base .. "/a" } },
  { "http: slow, timeout 1", "http_get", { url = base .. "/sleep?s=3", timeout = 1 } },
}

local function show(name, r)
  local out = r.output:gsub("\n", "\\n")
  if #out > 60 then out = out:sub(1, 57) .. "..." end
  print(string.format("%-24s %-8s %-16s %6.3fs  %s", name, r.status, r.reason,
    r.duration, out))
end

print(string.format("%-24s %-8s %-16s %7s  %s", "probe", "status", "reason",
  "time", "output"))
local t0 = sonde.now()
local done = 0
for _, p in ipairs(probes) do
  -- every probe is its own task: they all run at once on one loop
  sonde.spawn(function()
    show(p[1], sonde[p[2]](p[3]))
    done = done + 1
  end)
end
sonde.run()
print(string.format("%d probes in %.2f s (they ran concurrently)", done,
  sonde.now() - t0))
