-- A stand-in for systemd's notify socket, for spec/helpers.lua (its API is
-- listed there).  Lua has no unix sockets here, so a small python3 script
-- binds a datagram socket (a path, or an abstract name for "@name") and
-- writes every datagram it gets as one JSON line {"t": monotonic seconds,
-- "msg": text} to a file.
return function(H)
  local q = H.q

  local LISTENER = [[
import json, os, socket, sys, time
name, out, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
addr = "\0" + name[1:] if name.startswith("@") else name
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr)
f = open(out, "w", buffering=1)
f.write(json.dumps({"t": time.monotonic(), "listening": True}) + "\n")
end = time.monotonic() + secs
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data = s.recv(65536)
    except socket.timeout:
        break
    f.write(json.dumps({"t": time.monotonic(),
                        "msg": data.decode("utf-8", "backslashreplace")}) + "\n")
f.close()
s.close()
if not name.startswith("@"):
    os.unlink(name)
]]

  -- Debian's python3 (the Makefile's test packages) when there, so that
  -- the pid we get is python's own and not a version manager's wrapper.
  local PYTHON = H.read_file("/usr/bin/python3") and "/usr/bin/python3"
    or "python3"

  function H.has_line(text, line)
    for _, l in ipairs(H.lines(text)) do
      if l == line then return true end
    end
    return false
  end

  local Listener = {}
  Listener.__index = Listener
  local n = 0

  --- Listen on `name` (default DIR/notify.sock) for `secs` seconds (30).
  function H.notify_listener(dir, name, secs)
    n = n + 1
    local base = string.format("%s/listener%d", dir, n)
    local l = setmetatable({ name = name or (dir .. "/notify.sock"),
      out = base .. ".out", errf = base .. ".err", pidf = base .. ".pid" },
      Listener)
    local script = H.write(dir .. "/listener.py", LISTENER)
    -- python must not get the sanitizer runtime of SANITIZE=1 runs
    os.execute(string.format("env -u LD_PRELOAD %s -u %s %s %s %g "
      .. "</dev/null >/dev/null 2>%s & echo $! >%s", PYTHON, q(script),
      q(l.name), q(l.out), secs or 30, q(l.errf), q(l.pidf)))
    l.pid = tonumber((H.read_file(l.pidf) or ""):match("%d+"))
    assert(l.pid, "python3 did not start")
    assert(H.eventually(function()
      return (H.read_file(l.out) or ""):find('"listening"', 1, true)
    end, 10), "the listener did not bind " .. l.name .. ": "
      .. (H.read_file(l.errf) or ""))
    return l
  end

  --- Received datagrams in order: { t = seconds, msg = text }.
  function Listener:messages()
    local out = {}
    for _, v in ipairs((H.decode_lines(H.read_file(self.out) or ""))) do
      if v.msg then out[#out + 1] = v end
    end
    return out
  end

  --- Index (and message) of the first message from `from` with the line.
  function Listener:find(line, from, msgs)
    msgs = msgs or self:messages()
    for i = from or 1, #msgs do
      if H.has_line(msgs[i].msg, line) then return i, msgs[i] end
    end
  end

  function Listener:count(line, msgs)
    local c = 0
    for _, m in ipairs(msgs or self:messages()) do
      if H.has_line(m.msg, line) then c = c + 1 end
    end
    return c
  end

  --- All messages, for assertion texts.
  function Listener:dump()
    local out = {}
    for i, m in ipairs(self:messages()) do
      out[i] = string.format("%.3f %q", m.t, m.msg)
    end
    return table.concat(out, "\n")
  end

  function Listener:stop()
    if self.pid and not H.gone(self.pid) then
      os.execute(string.format("kill -TERM %d 2>/dev/null", self.pid))
      if not H.eventually(function() return H.gone(self.pid) end, 3) then
        os.execute(string.format("kill -KILL %d 2>/dev/null", self.pid))
      end
    end
  end
end
