-- Test fixture helper: starts spec/fixtures/fixture-server in the background.
--
--   local fixture = require "fixture"
--   local srv = fixture.start{ host = "127.0.0.1", mode = "http", log = true }
--   srv:url("/ok")      --> "http://127.0.0.1:PORT/ok"
--   srv:requests()      --> { raw request head, ... }
--   srv:connections()   --> number of accepted connections
--   srv:stop()
--
-- Only standard Lua 5.4 (io/os) is used.  Helpers for the specs that do not
-- belong to the server (sleep, monotonic time, fd counting) live here too.

local fixture = {}

local function build_dir()
  local b = os.getenv("SONDE_BUILD")
  if b == nil or b == "" then b = "build" end
  return b
end

fixture.binary = build_dir() .. "/test/fixture-server"

local function shquote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
fixture.shquote = shquote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
fixture.read_file = read_file

--- Sleep for `s` seconds (outside the sonde loop).
function fixture.sleep(s)
  os.execute(("sleep %.3f"):format(s))
end

--- Monotonic-ish wall clock in seconds (CLOCK_BOOTTIME via /proc/uptime,
--- 10 ms resolution), independent of the code under test.
function fixture.now()
  local s = read_file("/proc/uptime")
  local up = s and tonumber(s:match("^(%S+)"))
  if up then return up end
  return os.time()
end

--- The pid of this Lua process.
function fixture.own_pid()
  local s = assert(read_file("/proc/self/stat"), "cannot read /proc/self/stat")
  return assert(tonumber(s:match("^(%d+)")))
end

--- Number of open file descriptors of this Lua process.  The count includes
--- the pipe of the `ls` popen itself, consistently on every call.
function fixture.fd_count()
  local p = assert(io.popen("ls /proc/" .. fixture.own_pid() .. "/fd"))
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

--- Listing of this process's fds (for failure messages).
function fixture.fd_list()
  local p = assert(io.popen("ls -l /proc/" .. fixture.own_pid() .. "/fd 2>&1"))
  local s = p:read("a")
  p:close()
  return s
end

local Server = {}
Server.__index = Server

--- Start a fixture server.
-- opts.host ("127.0.0.1"), opts.mode ("http"), opts.log (boolean),
-- opts.port (0), opts.max_seconds (300).
function fixture.start(opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local mode = opts.mode or "http"
  local bin = fixture.binary
  local f = io.open(bin, "rb")
  if not f then
    error(("fixture server binary %s not found (run `make %s`)")
      :format(bin, "build/test/fixture-server"), 2)
  end
  f:close()

  local out_path = os.tmpname()
  local err_path = os.tmpname()
  local log_path = opts.log and os.tmpname() or nil
  if log_path then
    -- start from an empty log
    local lf = assert(io.open(log_path, "w")); lf:close()
  end

  local args = {
    shquote(bin), "--host", shquote(host), "--mode", shquote(mode),
    "--port", tostring(opts.port or 0),
    "--max-seconds", tostring(opts.max_seconds or 300),
  }
  if log_path then
    args[#args + 1] = "--log"
    args[#args + 1] = shquote(log_path)
  end
  -- One shell: start the server in the background, print its pid, then wait
  -- (at most 5 s) for the PORT line and print the server's stdout.
  local cmd = table.concat({
    "exec </dev/null;",
    table.concat(args, " "), ">" .. shquote(out_path), "2>" .. shquote(err_path), "&",
    "pid=$!; echo \"PID $pid\";",
    "end=$(( $(date +%s%N) + 5000000000 ));",
    "while [ \"$(date +%s%N)\" -lt \"$end\" ]; do",
    "  grep -q '^PORT ' " .. shquote(out_path) .. " && break;",
    "  kill -0 $pid 2>/dev/null || break;",
    "  sleep 0.01;",
    "done;",
    "cat " .. shquote(out_path),
  }, " ")
  local p = assert(io.popen(cmd, "r"))
  local text = p:read("a")
  p:close()

  local pid = tonumber(text:match("PID (%d+)"))
  local port = tonumber(text:match("\nPORT (%d+)"))
  local srv = setmetatable({
    pid = pid, port = port, host = host, mode = mode,
    log_path = log_path, out_path = out_path, err_path = err_path,
  }, Server)
  if not port then
    local stderr_text = read_file(err_path) or ""
    srv:stop()
    error(("fixture server (%s, mode %s) did not print a PORT line within 5 s%s")
      :format(host, mode,
        stderr_text ~= "" and (": " .. stderr_text:gsub("%s+$", "")) or ""), 2)
  end
  return srv
end

--- "http://HOST:PORT" .. path (IPv6 hosts bracketed).
function Server:url(path)
  path = path or "/"
  if path:sub(1, 1) ~= "/" then path = "/" .. path end
  local h = self.host
  if h:find(":", 1, true) then h = "[" .. h .. "]" end
  return ("http://%s:%d%s"):format(h, self.port, path)
end

--- Whole log text ("" when logging is off or nothing logged).
function Server:log()
  if not self.log_path then error("fixture started without log = true", 2) end
  return read_file(self.log_path) or ""
end

--- Array of raw request heads (CRLFs kept, including the final empty line).
function Server:requests()
  local reqs, cur = {}, nil
  for line in self:log():gmatch("([^\n]*)\n") do
    if line:sub(-1) == "\r" then
      cur = cur or {}
      cur[#cur + 1] = line .. "\n"
    elseif line == "END" then
      reqs[#reqs + 1] = table.concat(cur or {})
      cur = nil
    end
    -- "CONN n" lines are counted by connections()
  end
  return reqs
end

--- Number of accepted connections.
function Server:connections()
  local n = 0
  for _ in self:log():gmatch("CONN %d+\n") do n = n + 1 end
  return n
end

--- Truncate the log (the server appends, so this is safe while it runs).
function Server:clear_log()
  if not self.log_path then return end
  local f = assert(io.open(self.log_path, "w"))
  f:close()
end

--- SIGTERM the server and wait until it is gone (SIGKILL after 3 s).
function Server:stop()
  if self.pid and not self.stopped then
    local pid = tostring(math.tointeger(self.pid))
    os.execute(table.concat({
      "kill -TERM " .. pid .. " 2>/dev/null;",
      "i=0; while [ $i -lt 300 ]; do",
      "  kill -0 " .. pid .. " 2>/dev/null || exit 0;",
      -- a zombie waiting to be reaped by init counts as gone
      "  s=$(sed -n 's/^[0-9]* ([^)]*) \\(.\\).*/\\1/p' /proc/" .. pid .. "/stat 2>/dev/null);",
      "  [ \"$s\" = Z ] && exit 0;",
      "  sleep 0.01; i=$((i+1));",
      "done;",
      "kill -KILL " .. pid .. " 2>/dev/null; exit 1",
    }, " "))
    self.stopped = true
  end
  for _, path in ipairs { self.out_path, self.err_path, self.log_path } do
    if path then os.remove(path) end
  end
end

--- True while the server process exists (and is not a zombie).
function Server:alive()
  if not self.pid or self.stopped then return false end
  local s = read_file("/proc/" .. math.tointeger(self.pid) .. "/stat")
  return s ~= nil and s:match("^%d+ %b() (%a)") ~= "Z"
end

-- ------------------------------------------------------------------------
-- Name resolution without ever reaching a real nameserver.

--- Run Lua `code` in a child lua5.4 whose /etc/resolv.conf is replaced, in a
--- private mount namespace, by `nameserver 127.0.0.1` (nothing listens on
--- 127.0.0.1:53, so every DNS query fails at once and none leaves the host).
--- The child gets this process's package.path/cpath.  Returns the child's
--- stdout (stderr appended) and the exit status of the whole command.
function fixture.run_with_loopback_resolver(code)
  local resolv = os.tmpname()
  local script = os.tmpname()
  local f = assert(io.open(resolv, "w"))
  f:write("nameserver 127.0.0.1\n")
  f:close()
  f = assert(io.open(script, "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write(code)
  f:close()
  local lua = os.getenv("SONDE_LUA") or "lua5.4"
  local inner = ("mount --bind %s /etc/resolv.conf && grep -qx 'nameserver 127.0.0.1' /etc/resolv.conf && exec %s %s")
    :format(shquote(resolv), shquote(lua), shquote(script))
  local p = assert(io.popen(("timeout 30 unshare -m sh -c %s 2>&1"):format(shquote(inner))))
  local out = p:read("a")
  local ok, how, status = p:close()
  os.remove(resolv)
  os.remove(script)
  return out, ok, how, status
end

-- ------------------------------------------------------------------------
-- Helpers for examining a raw request head.

--- Split a raw head into lines (without CRLF, the final empty line dropped).
function fixture.head_lines(head)
  local lines = {}
  for line in head:gmatch("([^\r\n]*)\r\n") do
    if line ~= "" then lines[#lines + 1] = line end
  end
  return lines
end

--- All header lines named `name` (case-insensitive), as "Name: value" strings.
function fixture.header_lines(head, name)
  local found = {}
  local lname = name:lower()
  for i, line in ipairs(fixture.head_lines(head)) do
    if i > 1 then
      local n = line:match("^([^:]+):")
      if n and n:lower() == lname then found[#found + 1] = line end
    end
  end
  return found
end

--- The request line ("GET / HTTP/1.1").
function fixture.request_line(head)
  return fixture.head_lines(head)[1]
end

--- The request target ("/path?query").
function fixture.request_target(head)
  local l = fixture.request_line(head) or ""
  return l:match("^%S+ (%S+) ")
end

return fixture
