-- A real DNS server for the specs: Debian's dnsmasq (dnsmasq-base), on
-- 127.0.0.1 and a free port, serving only what its arguments declare (no
-- upstream, no /etc/hosts, no configuration file), and a silent UDP
-- socket, for spec/helpers.lua:
--
--   local d = H.dnsmasq { "--host-record=www.example.test,127.0.0.5" }
--   d.port, d.pid
--   d:stop()              -- SIGTERM by pid, SIGKILL after 3 s; waits
--   H.stop_dnsmasqs()     -- every one started and not stopped (and
--                         -- every H.dns_scripted)
--   local f = H.dns_scripted()  -- spec/fixtures/dns_scripted.py: replies
--   f.port, f:stop()            -- built byte by byte (python3)
--   local s = H.silent_udp()   -- a bound UDP socket that never answers:
--   s.port, s.close(), s.receive()  -- (LuaSocket, in this process;
--                                   -- receive: the next datagram or nil)
--
-- dnsmasq runs in the foreground of its own process (killed by its pid),
-- as the user and group running the specs (as root it would otherwise
-- switch to "nobody"), outside the sanitizers' preloads.
return function(H)
  local q = H.q
  local Server = {}
  Server.__index = Server
  local remember
  remember, H.stop_dnsmasqs = H.registry("stop")

  -- A port free for both UDP and TCP on 127.0.0.1 (a race with the rest
  -- of the machine remains: H.dnsmasq tries again when it loses it).
  local function free_port()
    local socket = require "socket"
    for _ = 1, 20 do
      local u = assert(socket.udp())
      assert(u:setsockname("127.0.0.1", 0))
      local _, port = u:getsockname()
      local t = assert(socket.tcp())
      local ok = t:bind("127.0.0.1", port)
      t:close()
      u:close()
      if ok then return tonumber(port) end
    end
    error("no free port for dnsmasq")
  end

  local function id(flag)
    local p = assert(io.popen("id " .. flag))
    local v = p:read("l")
    p:close()
    return v
  end

  function H.dnsmasq(args)
    local last
    for _ = 1, 3 do
      local port = free_port()
      local out = os.tmpname()
      local argv = { "dnsmasq", "--no-resolv", "--no-hosts",
        "--conf-file=/dev/null", "--keep-in-foreground", "--port=" .. port,
        "--listen-address=127.0.0.1", "--bind-interfaces",
        "--user=" .. id("-un"), "--group=" .. id("-gn"), "--log-facility=-",
        "--pid-file=" }
      for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
      for i, a in ipairs(argv) do argv[i] = q(a) end
      local pid, text = H.spawn_ready("PATH=/usr/sbin:/sbin:$PATH "
        .. table.concat(argv, " "), out, "started, version", 10)
      local srv = setmetatable({ out = out, port = port, pid = pid }, Server)
      if srv:alive() and text:find("started, version", 1, true)
          and #H.listening(port) > 0 then
        return remember(srv)
      end
      srv:stop()
      last = text
    end
    error("dnsmasq did not start: " .. tostring(last), 2)
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

  function Server:log() return H.read_file(self.out) or "" end

  -- spec/fixtures/dns_scripted.py under Debian's python3: { port, pid,
  -- stop(), alive() }
  function H.dns_scripted()
    local out = os.tmpname()
    local p = assert(io.popen(table.concat({
      "exec </dev/null;",
      "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS /usr/bin/python3",
      q(H.root .. "/spec/fixtures/dns_scripted.py"), ">" .. q(out), "2>&1 &",
      "pid=$!; echo \"PID $pid\";",
      "end=$(( $(date +%s%N) + 10000000000 ));",
      "while [ \"$(date +%s%N)\" -lt \"$end\" ]; do",
      "  grep -q '^PORT ' " .. q(out) .. " && break;",
      "  kill -0 $pid 2>/dev/null || break;",
      "  sleep 0.02;",
      "done;",
      "cat " .. q(out),
    }, " "), "r"))
    local text = p:read("a")
    p:close()
    local srv = setmetatable({ out = out,
      pid = tonumber(text:match("PID (%d+)")),
      port = tonumber(text:match("\nPORT (%d+)")) }, Server)
    if not srv.port then
      srv:stop()
      error("dns_scripted.py did not print a PORT line: " .. text, 2)
    end
    return remember(srv)
  end

  function H.silent_udp()
    local socket = require "socket"
    local u = assert(socket.udp())
    assert(u:setsockname("127.0.0.1", 0))
    local _, port = u:getsockname()
    return { port = tonumber(port), close = function() u:close() end,
      -- the next datagram it received (waits up to 1 s), or nil
      receive = function()
        u:settimeout(1)
        return (u:receive())
      end }
  end
end
