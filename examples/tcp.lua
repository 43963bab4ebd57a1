-- tcp.lua: TCP probes (kubelet tcpSocket): connected is success.
--
--   SONDE_TCP_PORT=5432 build/bin/sonde once examples/tcp.lua
--
-- Probes 127.0.0.1:$SONDE_TCP_PORT (default 5432) and ::1 on the same port.
local sonde = require "sonde"

local port = tonumber(os.getenv("SONDE_TCP_PORT")) or 5432

sonde.probe {
  name = "db-tcp",
  tcp_socket = { port = port },
  period = 10, timeout = 1,
}

sonde.probe {
  name = "db-tcp-v6",
  tcp_socket = { host = "::1", port = port },
  period = 10, timeout = 1,
  on_change = function(new, old, result)
    sonde.log.warn("db over IPv6: %s -> %s (%s)", old, new, result.reason)
  end,
}
