-- Fleet, shape 3: self-scheduled shards that push.  N sondes read the
-- same target list (Prometheus's file_sd format: targets.json), each keeps
-- the targets of its shard, computed as Prometheus's hashmod of
-- __address__, and pushes its series to an OpenTelemetry Collector
-- (examples/fleet/shards/otelcol.yaml) over OTLP/HTTP.  Shard I of 3:
--
--   sonde --shard I/3 \
--     --otlp http://otel-collector.example:4318/v1/metrics \
--     --otlp-resource service.instance.id=sonde-I \
--     /etc/sonde/shard.lua
--
-- A target added to or removed from the file is probed or dropped
-- within `refresh` seconds, without a reload; a target that stays keeps
-- its probe's state.  Each target group's labels (team, ...) go on its
-- probes' series.
local sonde = require "sonde"

local file = os.getenv("SONDE_TARGETS") or "/etc/sonde/targets.json"
local period = tonumber(os.getenv("SONDE_PERIOD")) or 30

sonde.probe_each(sonde.targets.file_sd(file, { refresh = 30 }), function(t)
  if t.labels.check == "tcp" then                  -- a port that accepts
    return { tcp_socket = { host = t.host, port = t.port },
             period = period, timeout = 2 }
  end
  return {                                         -- a page that answers 2xx
    http_get = { url = (t.labels.scheme or "http") .. "://" .. t.address .. "/",
                 expect = { status = "2xx" } },
    period = period, timeout = 5, failure_threshold = 2,
  }
end)
