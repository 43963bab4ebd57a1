-- http.lua: HTTP probes, kubelet httpGet style.
--
--   SONDE_HTTP_PORT=8080 build/bin/sonde examples/http.lua     # run them
--   SONDE_HTTP_PORT=8080 build/bin/sonde once examples/http.lua
--
-- Probes 127.0.0.1:$SONDE_HTTP_PORT (default 8080): a readiness probe on
-- /healthz (2xx ready, 3xx warning, else not ready) and a liveness probe
-- through a named port with a custom header.
local sonde = require "sonde"

local port = tonumber(os.getenv("SONDE_HTTP_PORT")) or 8080

sonde.probe {
  name = "web-ready",
  kind = "readiness",
  http_get = { port = port, path = "/healthz" },
  period = 5, timeout = 1, success_threshold = 2, failure_threshold = 3,
}

-- the same probe as a Kubernetes pod spec would say it
sonde.probe(sonde.k8s.probe {
  name = "web-live",
  kind = "liveness",
  ports = { { name = "http", port = port } },
  httpGet = { path = "/", port = "http",
              httpHeaders = { { name = "X-Probe", value = "sonde" } } },
  periodSeconds = 10,
})
