-- The fixture server (spec/fixtures/fixture-server.c, built as
-- $SONDE_BUILD/test/fixture-server) in the background, and requests heads
-- taken apart, for spec/helpers.lua (its API is listed there):
--
--   local srv = H.fixture { host = "127.0.0.1", mode = "http", log = true }
--   srv:url("/ok")      --> "http://127.0.0.1:PORT/ok"
--   srv:requests()      --> { raw request head, ... }
--   srv:connections()   --> number of accepted connections
--   srv:stop()
--
-- opts: host ("127.0.0.1"), mode ("http"; "tcp-full": a full accept queue;
-- "silent": accepts, never reads nor answers; "dns": a DNS server on UDP,
-- names listed in the server's source; "line": a line protocol, PING ->
-- +PONG, EHLO, QUIT and hostile commands, see the server's source), log
-- (keep the requests, the DNS questions or the lines read), port (0: any),
-- max_seconds (300), banner (mode line: the line sent at connect).
return function(H)
  local q = H.q
  local Server = {}
  Server.__index = Server
  local remember
  remember, H.stop_fixtures = H.registry("stop")

  function H.fixture(opts)
    opts = opts or {}
    local host = opts.host or "127.0.0.1"
    local mode = opts.mode or "http"
    local bin = H.build .. "/test/fixture-server"
    if not H.read_file(bin) then
      error(("fixture server binary %s not found (run `make %s`)")
        :format(bin, "build/test/fixture-server"), 2)
    end
    local srv = setmetatable({ host = host, mode = mode,
      out_path = os.tmpname(), err_path = os.tmpname(),
      log_path = opts.log and os.tmpname() or nil }, Server)
    if srv.log_path then H.write(srv.log_path, "") end
    local args = { q(bin), "--host", q(host), "--mode", q(mode),
      "--port", tostring(opts.port or 0),
      "--max-seconds", tostring(opts.max_seconds or 300) }
    if opts.banner then
      args[#args + 1] = "--banner"
      args[#args + 1] = q(opts.banner)
    end
    if srv.log_path then
      args[#args + 1] = "--log"
      args[#args + 1] = q(srv.log_path)
    end
    -- One shell: start the server in the background, print its pid, then
    -- wait (at most 5 s) for the PORT line and print the server's stdout.
    local p = assert(io.popen(table.concat({
      "exec </dev/null;",
      table.concat(args, " "), ">" .. q(srv.out_path), "2>" .. q(srv.err_path), "&",
      "pid=$!; echo \"PID $pid\";",
      "end=$(( $(date +%s%N) + 5000000000 ));",
      "while [ \"$(date +%s%N)\" -lt \"$end\" ]; do",
      "  grep -q '^PORT ' " .. q(srv.out_path) .. " && break;",
      "  kill -0 $pid 2>/dev/null || break;",
      "  sleep 0.01;",
      "done;",
      "cat " .. q(srv.out_path),
    }, " "), "r"))
    local text = p:read("a")
    p:close()
    srv.pid = tonumber(text:match("PID (%d+)"))
    srv.port = tonumber(text:match("\nPORT (%d+)"))
    if not srv.port then
      local stderr_text = H.read_file(srv.err_path) or ""
      srv:stop()
      error(("fixture server (%s, mode %s) did not print a PORT line within 5 s%s")
        :format(host, mode,
          stderr_text ~= "" and (": " .. stderr_text:gsub("%s+$", "")) or ""), 2)
    end
    return remember(srv)
  end

  --- A port where a fixture server listened a moment ago.
  function H.closed_port()
    local s = H.fixture()
    local port = s.port
    s:stop()
    return port
  end

  --- "http://HOST:PORT" .. path (IPv6 hosts bracketed).
  function Server:url(path)
    path = path or "/"
    if path:sub(1, 1) ~= "/" then path = "/" .. path end
    local h = self.host
    if h:find(":", 1, true) then h = "[" .. h .. "]" end
    return ("http://%s:%d%s"):format(h, self.port, path)
  end

  --- Whole log text ("" when nothing was logged).
  function Server:log()
    if not self.log_path then error("fixture started without log = true", 2) end
    return H.read_file(self.log_path) or ""
  end

  --- Raw request heads (CRLFs kept, the final empty line included).
  function Server:requests()
    local reqs, cur = {}, nil
    for _, line in ipairs(H.lines(self:log())) do
      if line:sub(-1) == "\r" then
        cur = cur or {}
        cur[#cur + 1] = line .. "\n"
      elseif line == "END" then
        reqs[#reqs + 1] = table.concat(cur or {})
        cur = nil
      end
    end
    return reqs
  end

  function Server:connections()
    local n = 0
    for _ in self:log():gmatch("CONN %d+\n") do n = n + 1 end
    return n
  end

  --- Truncate the log (the server appends, so this is safe while it runs).
  function Server:clear_log()
    if self.log_path then H.write(self.log_path, "") end
  end

  --- SIGTERM the server and wait until it is gone (SIGKILL after 3 s).
  function Server:stop()
    if self.pid and not self.stopped then
      self.stopped = true
      self:signal("TERM")
      local deadline = H.now() + 3
      while not H.gone(self.pid) and H.now() < deadline do H.sleep(0.01) end
      if not H.gone(self.pid) then self:signal("KILL") end
    end
    for _, path in ipairs { self.out_path, self.err_path, self.log_path } do
      os.remove(path)
    end
  end

  function Server:signal(sig)
    os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
  end

  function Server:alive()
    return self.pid ~= nil and not self.stopped and not H.gone(self.pid)
  end

  function H.urlencode(s)
    return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end

  --- The lines of a raw head (without CRLF, the final empty line dropped).
  function H.head_lines(head)
    local lines = {}
    for line in head:gmatch("([^\r\n]*)\r\n") do
      if line ~= "" then lines[#lines + 1] = line end
    end
    return lines
  end

  --- Header lines named `name` (any case), as "Name: value".
  function H.header_lines(head, name)
    local found, lname = {}, name:lower()
    for i, line in ipairs(H.head_lines(head)) do
      local n = i > 1 and line:match("^([^:]+):")
      if n and n:lower() == lname then found[#found + 1] = line end
    end
    return found
  end

  --- "GET / HTTP/1.1"
  function H.request_line(head)
    return H.head_lines(head)[1]
  end

  --- "/path?query"
  function H.request_target(head)
    return (H.request_line(head) or ""):match("^%S+ (%S+) ")
  end

  --- A self-signed certificate for 127.0.0.1 (CN and subjectAltName):
  -- dir/cert.pem and dir/key.pem.
  function H.self_signed(dir)
    assert(os.execute("openssl req -x509 -newkey rsa:2048 -nodes -days 2"
      .. " -keyout " .. q(dir .. "/key.pem") .. " -out " .. q(dir .. "/cert.pem")
      .. " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
      .. " >/dev/null 2>&1"), "openssl req failed")
  end

  --- `openssl s_server -www` on 127.0.0.1 with dir/cert.pem and
  -- dir/key.pem, on a free port (tries random ones until it says ACCEPT).
  -- @treturn table { port, pid, stop = function() }
  function H.tls_server(dir)
    local out = dir .. "/server.out"
    for _ = 1, 20 do
      local port = math.random(20000, 60000)
      local p = io.popen("openssl s_server -accept 127.0.0.1:" .. port
        .. " -cert " .. q(dir .. "/cert.pem") .. " -key " .. q(dir .. "/key.pem")
        .. " -www > " .. q(out) .. " 2>&1 & echo $!")
      local pid = tonumber(p:read("l"))
      p:close()
      local ok = H.eventually(function()
        local text = H.read_file(out) or ""
        return text:find("ACCEPT", 1, true) or text:find("error", 1, true)
      end, 5)
      if ok and (H.read_file(out) or ""):find("ACCEPT", 1, true) then
        return { port = port, pid = pid, stop = function()
          os.execute("kill " .. pid .. " 2>/dev/null")
        end }
      end
      os.execute("kill " .. pid .. " 2>/dev/null")
    end
    error("could not start openssl s_server", 2)
  end
end
