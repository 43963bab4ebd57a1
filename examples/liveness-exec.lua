-- liveness-exec.lua: the Kubernetes "liveness-exec" example without
-- Kubernetes (kubernetes.io, "Configure Liveness, Readiness and Startup
-- Probes").  A service creates /tmp/healthy, removes it after 30 s and
-- sleeps on; a liveness probe `cat /tmp/healthy` every 5 s, after an initial
-- delay of 5 s, fails three times in a row once the file is gone, and sonde
-- restarts the service, which creates the file again.
--
--   build/bin/sonde examples/liveness-exec.lua [HEALTHY_SECONDS [PERIOD]]
--
-- `make demo` runs it (with --log-level debug, so that successful runs are
-- logged too) with the file removed after 10 s and a 2 s period, so that
-- within about 40 s the log shows successes, the failures counted, the
-- restart, and success again.
local sonde = require "sonde"

local healthy = tonumber(arg and arg[1]) or 30
local period = tonumber(arg and arg[2]) or 5
local file = os.getenv("SONDE_DEMO_FILE") or "/tmp/healthy"

local svc = sonde.service {
  name = "liveness",
  command = { "/bin/sh", "-c",
    string.format("touch %s; sleep %d; rm -f %s; sleep 600",
      file, healthy, file) },
  restart = { backoff = 1, max_backoff = 10 },
  grace = 2,
}

sonde.probe {
  name = "liveness-exec",
  kind = "liveness",
  service = svc,
  exec = { command = { "cat", file } },
  initial_delay = period,
  period = period,
  on_change = function(new, old)
    sonde.log.info("liveness-exec went %s -> %s", old, new)
  end,
}
