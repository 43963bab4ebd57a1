-- Every example in examples/ runs under the host and does what its header
-- says, against loopback servers only.
local helpers = require "helpers"
local fixture = require "fixture"
local E = require "engine_helpers"

local EXAMPLES = "examples/"

describe("examples", function()
  local hosts, servers, dirs = {}, {}, {}

  teardown(function()
    for _, h in ipairs(hosts) do h:cleanup() end
    for _, s in ipairs(servers) do s:stop() end
    for _, d in ipairs(dirs) do helpers.rmtree(d) end
  end)

  local function start(args, env)
    local h = E.host_start(args, env)
    hosts[#hosts + 1] = h
    return h
  end

  local function server(opts)
    local s = fixture.start(opts)
    servers[#servers + 1] = s
    return s
  end

  local function tmpdir()
    local d = helpers.tmpdir()
    dirs[#dirs + 1] = d
    return d
  end

  describe("liveness-exec.lua (healthy 3 s, period 1 s)", function()
    local evs, rc, text

    setup(function()
      local d = tmpdir()
      local h = start({ "--log-format", "json",
        EXAMPLES .. "liveness-exec.lua", "3", "1" },
        { SONDE_DEMO_FILE = d .. "/healthy" })
      -- the restart comes at about 6 s; then a success of the new instance
      h:wait_for(function(x)
        local restarted = #x:events("service_restart") >= 1
        if not restarted then return false end
        local all = x:events()
        local seen = false
        for _, e in ipairs(all) do
          if e.event == "service_restart" then seen = true end
          if seen and e.event == "probe_result" and e.status == "success" then
            return true
          end
        end
        return false
      end, 15)
      h:signal("TERM")
      rc = h:wait(10)
      text = h:stderr()
      evs = h:events()
    end)

    it("exits 0 on SIGTERM", function()
      assert.are.equal(0, rc, text)
    end)

    it("success results, then failure results", function()
      local pr = E.select(evs, "probe_result", { probe = "liveness-exec" })
      local seq = {}
      for i, e in ipairs(pr) do seq[i] = e.status == "success" and "S" or "F" end
      seq = table.concat(seq)
      assert.is_truthy(seq:match("^S+FFF"), seq)
      local f = E.select(pr, nil, { status = "failure" })[1]
      assert.are.equal("exit_code", f.reason)
      assert.are.equal(1, f.exit_code)
      assert.is_truthy(f.output:find("No such file or directory", 1, true),
        f.output)
      assert.are.equal("liveness", f.kind)
    end)

    it("a state_change to failure, the on_change message, a restart "
      .. "why=liveness, success after it", function()
      local sc = E.select(evs, "state_change", { probe = "liveness-exec",
        to = "failure" })
      assert.is_true(#sc >= 1, text)
      assert.are.equal("success", sc[1].from)
      local msg = E.select(evs, "message",
        { text = "liveness-exec went success -> failure" })
      assert.is_true(#msg >= 1, text)
      local r = E.select(evs, "service_restart", { service = "liveness" })
      assert.is_true(#r >= 1, text)
      assert.are.equal("liveness", r[1].why)
      assert.are.equal(0, r[1].delay)
      local seen, ok = false, false
      for _, e in ipairs(evs) do
        if e.event == "service_restart" then seen = true end
        if seen and e.event == "probe_result" and e.status == "success" then
          ok = true
        end
      end
      assert.is_true(ok, "no success after the restart:\n" .. text)
      assert.is_true(#E.select(evs, "service_start") >= 2)
    end)
  end)

  describe("http.lua (once)", function()
    it("web-ready: /healthz is 404 -> failure; web-live: / with X-Probe "
      .. "-> success; exit 1", function()
      local srv = server { log = true }
      local rc, out, err = E.host_run({ "once", "--format", "json",
        EXAMPLES .. "http.lua" }, { SONDE_HTTP_PORT = tostring(srv.port) })
      assert.are.equal(1, rc, out .. err)
      local objs = E.decode_lines(out)
      assert.are.equal(2, #objs, out)
      local ready, live = objs[1], objs[2]
      assert.are.same({ "web-ready", "readiness", "failure", "http_status",
        404, "HTTP probe failed with statuscode: 404" },
        { ready.probe, ready.kind, ready.status, ready.reason,
          ready.http_status, ready.output })
      assert.are.same({ "web-live", "liveness", "success", "ok", 200,
        "ok body" }, { live.probe, live.kind, live.status, live.reason,
          live.http_status, live.output })
      local targets, probe_header = {}, nil
      for _, head in ipairs(srv:requests()) do
        local t = fixture.request_target(head)
        targets[#targets + 1] = t
        if t == "/" then
          probe_header = fixture.header_lines(head, "X-Probe")[1]
        end
      end
      table.sort(targets)
      assert.are.same({ "/", "/healthz" }, targets)
      assert.are.equal("X-Probe: sonde", probe_header)
    end)
  end)

  describe("custom-check.lua (once)", function()
    it("/login is 404: the check passes the HTTP failure on as is, exit 1",
      function()
      local srv = server { log = true }
      local rc, out, err = E.host_run({ "once", "--format", "json",
        EXAMPLES .. "custom-check.lua" },
        { SONDE_HTTP_PORT = tostring(srv.port) })
      assert.are.equal(1, rc, out .. err)
      local objs = E.decode_lines(out)
      assert.are.equal(1, #objs, out)
      local r = objs[1]
      assert.are.same({ "login-flow", "failure", "http_status", 404,
        "HTTP probe failed with statuscode: 404" },
        { r.probe, r.status, r.reason, r.http_status, r.output })
      -- it stopped at the login page: no /api/health request
      local targets = {}
      for _, head in ipairs(srv:requests()) do
        targets[#targets + 1] = fixture.request_target(head)
      end
      assert.are.same({ "/login" }, targets)
    end)
  end)

  describe("tcp.lua (once)", function()
    it("a listening port (127.0.0.1 and ::1) -> success, exit 0", function()
      local v4 = server {}
      server { host = "::1", port = v4.port }
      local rc, out, err = E.host_run({ "once", "--format", "json",
        EXAMPLES .. "tcp.lua" }, { SONDE_TCP_PORT = tostring(v4.port) })
      assert.are.equal(0, rc, out .. err)
      local objs = E.decode_lines(out)
      assert.are.equal(2, #objs)
      assert.are.same({ "db-tcp", "success", "ok" },
        { objs[1].probe, objs[1].status, objs[1].reason })
      assert.are.same({ "db-tcp-v6", "success", "ok" },
        { objs[2].probe, objs[2].status, objs[2].reason })
    end)

    it("a closed port -> failure connect_refused, exit 1", function()
      local s = fixture.start {}
      local port = s.port
      s:stop()
      local rc, out, err = E.host_run({ "once", "--format", "json",
        EXAMPLES .. "tcp.lua" }, { SONDE_TCP_PORT = tostring(port) })
      assert.are.equal(1, rc, out .. err)
      local objs = E.decode_lines(out)
      assert.are.equal(2, #objs)
      for _, o in ipairs(objs) do
        assert.are.equal("failure", o.status)
        assert.are.equal("connect_refused", o.reason)
      end
    end)
  end)

  describe("remediation.lua (run, period 0.2)", function()
    local srv, h, d, actlog, snap0, snap1, snap2, rc, text, evs

    setup(function()
      d = tmpdir()
      srv = server { log = true }
      actlog = d .. "/actions.log"
      local flag = d .. "/app-ok"
      helpers.write(flag, "")
      h = start({ "--log-format", "json", EXAMPLES .. "remediation.lua" }, {
        SONDE_FLAG = flag, SONDE_WEBHOOK = srv:url("/echo"),
        SONDE_ACTION_LOG = actlog, SONDE_PERIOD = "0.2" })
      h:wait_for(function(x)
        return #x:events("probe_result", { probe = "app-flag",
          status = "success" }) >= 3
      end, 15)
      -- give a transition's actions time to finish before the snapshot
      os.execute("sleep 0.5")
      snap0 = E.read_file(actlog) or ""
      os.remove(flag)
      h:wait_for(function()
        return (E.read_file(actlog) or ""):find("app-flag failure exit_code",
          1, true) and #h:events("action", { status = "done" }) >= 2
      end, 15)
      snap1 = E.read_file(actlog) or ""
      helpers.write(flag, "")
      h:wait_for(function()
        local s = E.read_file(actlog) or ""
        local i = s:find("app-flag failure exit_code", 1, true)
        return i and s:find("app-flag recovered", i, true)
      end, 15)
      snap2 = E.read_file(actlog) or ""
      h:signal("TERM")
      rc = h:wait(10)
      text = h:stderr()
      evs = h:events()
    end)

    it("exits 0 on SIGTERM", function()
      assert.are.equal(0, rc, text)
    end)

    it("flag gone: failure after 2 runs, the webhook POSTs JSON to the "
      .. "fixture", function()
      local sc = E.select(evs, "state_change", { probe = "app-flag",
        to = "failure" })
      assert.are.equal(1, #sc, text)
      local posts = {}
      for _, head in ipairs(srv:requests()) do
        if fixture.request_line(head) == "POST /echo HTTP/1.1" then
          posts[#posts + 1] = head
        end
      end
      assert.are.equal(1, #posts, srv:log())
      assert.are.same({ "Content-Type: application/json" },
        fixture.header_lines(posts[1], "Content-Type"))
      local len = fixture.header_lines(posts[1], "Content-Length")[1]
      assert.is_truthy(len and tonumber(len:match("%d+")) > 20, len)
      local wh = E.select(evs, "action", { probe = "app-flag",
        action = "webhook " .. srv:url("/echo") })
      local st = {}
      for i, e in ipairs(wh) do st[i] = e.status end
      assert.are.same({ "started", "done" }, st)
      assert.are.equal("200", wh[2].detail)
    end)

    it("flag gone: the exec action records `app-flag failure exit_code`",
      function()
      assert.is_truthy(snap1:find("app-flag failure exit_code\n", 1, true),
        snap1)
      local _, n = snap1:gsub("app%-flag failure exit_code\n", "")
      assert.are.equal(1, n, snap1)
    end)

    it("flag back: on_recovery records `app-flag recovered`", function()
      local i = snap2:find("app-flag failure exit_code\n", 1, true)
      assert.is_truthy(i, snap2)
      assert.is_truthy(snap2:find("app-flag recovered\n", i, true), snap2)
      local sc = E.select(evs, "state_change", { probe = "app-flag" })
      local tr = {}
      for k, e in ipairs(sc) do tr[k] = e.from .. ">" .. e.to end
      -- the seed (not ready) -> ready at start, then the two transitions
      assert.are.same({ "failure>success", "success>failure",
        "failure>success" }, tr)
    end)

    it("no on_recovery at start: the readiness seed is not a failure that "
      .. "recovered", function()
      assert.are.equal("", snap0)
      assert.are.equal("app-flag failure exit_code\napp-flag recovered\n",
        snap2)
    end)
  end)

  describe("remediation.lua's webhook body", function()
    -- A one-request HTTP receiver (luasocket) that stores the whole
    -- request, body included (the fixture logs heads only).
    local RECEIVER = [[
      local socket = require "socket"
      local out, portfile = arg[1], arg[2]
      local srv = assert(socket.bind("127.0.0.1", 0))
      srv:settimeout(30)
      local _, port = srv:getsockname()
      local f = assert(io.open(portfile .. ".tmp", "w"))
      f:write(port, "\n") f:close()
      os.rename(portfile .. ".tmp", portfile)
      local c = srv:accept()
      if not c then os.exit(1) end
      c:settimeout(10)
      local head, len = {}, 0
      while true do
        local line = c:receive("*l")
        if not line or line == "" then break end
        head[#head + 1] = line
        local n = line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
        if n then len = tonumber(n) end
      end
      local body = len > 0 and c:receive(len) or ""
      c:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
      c:close()
      f = assert(io.open(out .. ".tmp", "wb"))
      f:write(table.concat(head, "\n"), "\n\n", body or "") f:close()
      os.rename(out .. ".tmp", out)
    ]]

    it("is the failure result as JSON, naming the probe", function()
      local d = tmpdir()
      helpers.write(d .. "/recv.lua", RECEIVER)
      local out, portfile = d .. "/request", d .. "/port"
      os.execute(string.format("cd %s && LUA_PATH=%s LUA_CPATH=%s timeout 40 "
        .. "lua5.4 recv.lua %s %s </dev/null >/dev/null 2>&1 & echo $! > %s",
        E.q(d), E.q(package.path), E.q(package.cpath), E.q(out),
        E.q(portfile), E.q(d .. "/recv.pid")))
      local rpid
      local ok, err = pcall(function()
        local t0 = helpers.now()
        while not E.read_file(portfile) and helpers.now() - t0 < 5 do
          os.execute("sleep 0.05")
        end
        rpid = tonumber((E.read_file(d .. "/recv.pid") or ""):match("%d+"))
        local port = tonumber((E.read_file(portfile) or ""):match("%d+"))
        assert(port, "receiver did not start")
        local h = start({ "--log-format", "json",
          EXAMPLES .. "remediation.lua" }, {
          SONDE_FLAG = d .. "/no-such-flag",
          SONDE_WEBHOOK = "http://127.0.0.1:" .. port .. "/alert",
          SONDE_ACTION_LOG = d .. "/actions.log", SONDE_PERIOD = "0.2" })
        local got = h:wait_for(function() return E.read_file(out) end, 15)
        h:signal("TERM")
        assert.are.equal(0, h:wait(10))
        assert.is_truthy(got, h:stderr())
        local req = E.read_file(out)
        local head, body = req:match("^(.-)\n\n(.*)$")
        assert.is_truthy(head:find("^POST /alert HTTP/1.1\n"), head)
        local obj = E.json_decode(body)
        assert.are.equal("table", type(obj), body)
        assert.are.same({ "app-flag", "readiness", "failure", "exit_code", 1 },
          { obj.probe, obj.kind, obj.status, obj.reason, obj.exit_code })
      end)
      if rpid then os.execute("kill " .. rpid .. " 2>/dev/null") end
      assert(ok, err)
    end)
  end)

  describe("concurrent.lua", function()
    it("prints 10 results with the expected statuses", function()
      local srv = server {}
      local rc, out, err = E.host_run({ EXAMPLES .. "concurrent.lua",
        string.format("http://127.0.0.1:%d", srv.port) })
      assert.are.equal(0, rc, out .. err)
      local lines = E.lines(out)
      assert.are.equal(12, #lines, out)
      assert.is_truthy(lines[1]:match("^probe%s+status%s+reason%s+time%s+"
        .. "output$"), lines[1])
      local got = {}
      for i = 2, 11 do
        local name = lines[i]:sub(1, 24):gsub("%s+$", "")
        local status, reason = lines[i]:sub(26):match("^(%S+)%s+(%S+)")
        got[name] = status .. " " .. reason
      end
      assert.are.same({
        ["exec: echo"] = "success ok",
        ["exec: exit 3"] = "failure exit_code",
        ["exec: nagios warning"] = "warning exit_code",
        ["exec: sleep, timeout 1"] = "failure timeout",
        ["exec: not found"] = "failure not_found",
        ["tcp: nothing on :1"] = "failure connect_refused",
        ["http: 200"] = "success ok",
        ["http: 503"] = "failure http_status",
        ["http: redirect /a->/b"] = "success ok",
        ["http: slow, timeout 1"] = "failure timeout",
      }, got)
      local secs = tonumber(lines[12]:match(
        "^10 probes in ([%d.]+) s %(they ran concurrently%)$"))
      assert.is_truthy(secs, lines[12])
      assert.is_true(secs >= 0.9 and secs < 5, lines[12])
    end)
  end)
end)
