-- Fleet, shape 1: one sonde per host, scraped by Prometheus
-- (examples/fleet/per-host/prometheus.yml).  Each host runs
--
--   sonde --listen 0.0.0.0:9464 /etc/sonde/probes.lua
--
-- and probes its own services on loopback; Prometheus scrapes every
-- sonde's /metrics with honor_labels, so each probe's series keep their
-- own `instance` and `team` labels.  Every host probes the same loopback
-- targets, so `instance` is set to this host's name and the port probed
-- (web-1:8080): with honor_labels, a series must not be the same on two
-- hosts.  The exec probe has no target, hence no instance of its own:
-- Prometheus gives it the sonde's address.
--
--   SONDE_HTTP_PORT=8080 SONDE_TCP_PORT=5432 build/bin/sonde --listen 9464 \
--     examples/fleet/per-host/probes.lua
local sonde = require "sonde"

-- this host's name as the fleet knows it (SONDE_HOST, else the kernel's)
local function host_name()
  local f = io.open("/proc/sys/kernel/hostname")
  local name = f and f:read("l")
  if f then f:close() end
  return os.getenv("SONDE_HOST") or name or "localhost"
end
local HOST = host_name()

local http_port = tonumber(os.getenv("SONDE_HTTP_PORT")) or 8080
local db_port = tonumber(os.getenv("SONDE_TCP_PORT")) or 5432
local period = tonumber(os.getenv("SONDE_PERIOD")) or 15

-- the web application: ready when / answers 2xx within half a second
sonde.probe {
  name = "web", kind = "readiness",
  labels = { team = "web", instance = HOST .. ":" .. http_port },
  http_get = { port = http_port, path = "/",
               expect = { status = "2xx", max_duration = 0.5 } },
  period = period, timeout = 2, failure_threshold = 2,
}

-- its database: the port accepts connections
sonde.probe {
  name = "db", kind = "readiness",
  labels = { team = "data", instance = HOST .. ":" .. db_port },
  tcp_socket = { port = db_port },
  period = period, timeout = 1,
}

-- the root file system, with a Nagios plugin (Debian: monitoring-plugins-basic)
sonde.probe {
  name = "disk", kind = "readiness",
  labels = { team = "ops" },
  exec = { command = { "/usr/lib/nagios/plugins/check_disk",
                       "-w", "20%", "-c", "10%", "-p", "/" },
           codes = "nagios" },
  period = period * 4, timeout = 10,
}
