-- A real gRPC health server for the specs (spec/fixtures/
-- grpc_health_server.py, Debian's python3-grpcio run by /usr/bin/python3;
-- its stubs generated from spec/fixtures/health.proto with
-- python3-grpc-tools once per busted run), for spec/helpers.lua:
--
--   local g = H.grpc_server { "--status", "=SERVING" }   -- its arguments
--   g.port, g.pid
--   g:stop()            -- SIGTERM by pid, SIGKILL after 3 s; waits
--   H.stop_grpc_servers()   -- every one started and not stopped
return function(H)
  local q = H.q
  local Server = {}
  Server.__index = Server
  local remember
  remember, H.stop_grpc_servers = H.registry("stop")
  local stubs

  function H.grpc_server(args)
    stubs = stubs or (H.scratch() .. "/grpc-stubs")
    local script = H.root .. "/spec/fixtures/grpc_health_server.py"
    local out = os.tmpname()
    local argv = { "/usr/bin/python3", q(script), "--stubs", q(stubs) }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = q(a) end
    local pid, text = H.spawn_ready(table.concat(argv, " "), out, "^PORT ", 20)
    local srv = setmetatable({ out = out, pid = pid,
      port = tonumber(text:match("\nPORT (%d+)")) }, Server)
    if not srv.port then
      srv:stop()
      error("gRPC health server did not print a PORT line within 20 s: "
        .. text, 2)
    end
    return remember(srv)
  end

  function Server:stop()
    if self.pid and not self.stopped then
      self.stopped = true
      H.terminate(self.pid)
    end
    os.remove(self.out)
  end

  function Server:alive()
    return self.pid ~= nil and not self.stopped and not H.gone(self.pid)
  end
end
