-- Every example in examples/ runs under the host and does what its header
-- says, against loopback servers only; the systemd unit is well formed.
local helpers = require "helpers"

local EXAMPLES = "examples/"

describe("examples", function()
  teardown(function()
    helpers.cleanup_hosts()
    helpers.stop_fixtures()
  end)

  local start, server = helpers.host_start, helpers.fixture

  -- SIGTERM: the exit code, the log and its events.
  local function stopped(h)
    local rc = h:term()
    return rc, h:stderr(), h:events()
  end

  describe("liveness-exec.lua (healthy 3 s, period 1 s)", function()
    local evs, rc, text

    setup(function()
      local d = helpers.scratch()
      local h = start({ "--log-format", "json",
        EXAMPLES .. "liveness-exec.lua", "3", "1" },
        { SONDE_DEMO_FILE = d .. "/healthy" })
      -- the restart comes at about 6 s; then a success of the new instance
      h:wait_for(function(x)
        local all = x:events()
        local r = helpers.index_of(all, "service_restart")
        return r and helpers.index_of(all, "probe_result", { status = "success" }, r + 1)
      end, 15)
      rc, text, evs = stopped(h)
    end)

    it("exits 0 on SIGTERM", function()
      assert.are.equal(0, rc, text)
    end)

    it("success results, then failure results", function()
      local pr = helpers.select(evs, "probe_result", { probe = "liveness-exec" })
      local seq = {}
      for i, e in ipairs(pr) do seq[i] = e.status == "success" and "S" or "F" end
      seq = table.concat(seq)
      assert.is_truthy(seq:match("^S+FFF"), seq)
      local f = helpers.select(pr, nil, { status = "failure" })[1]
      assert.are.same({ "exit_code", 1 }, { f.reason, f.exit_code })
      assert.is_truthy(f.output:find("No such file or directory", 1, true),
        f.output)
      assert.are.equal("liveness", f.kind)
    end)

    it("a state_change to failure, the on_change message, a restart "
      .. "why=liveness, success after it", function()
      local sc = helpers.select(evs, "state_change", { probe = "liveness-exec",
        to = "failure" })
      assert.is_true(#sc >= 1, text)
      assert.are.equal("success", sc[1].from)
      local msg = helpers.select(evs, "message",
        { text = "liveness-exec went success -> failure" })
      assert.is_true(#msg >= 1, text)
      local r = helpers.select(evs, "service_restart", { service = "liveness" })
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
      assert.is_true(#helpers.select(evs, "service_start") >= 2)
    end)
  end)

  describe("http.lua (once)", function()
    it("web-ready: /healthz is 404 -> failure; web-live: / with X-Probe "
      .. "-> success; exit 1", function()
      local srv = server { log = true }
      local rc, out, err = helpers.host_run({ "once", "--format", "json",
        EXAMPLES .. "http.lua" }, { SONDE_HTTP_PORT = tostring(srv.port) })
      assert.are.equal(1, rc, out .. err)
      local objs = helpers.decode_lines(out)
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
        local t = helpers.request_target(head)
        targets[#targets + 1] = t
        if t == "/" then
          probe_header = helpers.header_lines(head, "X-Probe")[1]
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
      local rc, out, err = helpers.host_run({ "once", "--format", "json",
        EXAMPLES .. "custom-check.lua" },
        { SONDE_HTTP_PORT = tostring(srv.port) })
      assert.are.equal(1, rc, out .. err)
      local objs = helpers.decode_lines(out)
      assert.are.equal(1, #objs, out)
      local r = objs[1]
      assert.are.same({ "login-flow", "failure", "http_status", 404,
        "HTTP probe failed with statuscode: 404" },
        { r.probe, r.status, r.reason, r.http_status, r.output })
      -- it stopped at the login page: no /api/health request
      local targets = {}
      for _, head in ipairs(srv:requests()) do
        targets[#targets + 1] = helpers.request_target(head)
      end
      assert.are.same({ "/login" }, targets)
    end)
  end)

  describe("tcp.lua (once)", function()
    it("a listening port (127.0.0.1 and ::1) -> success, exit 0", function()
      local v4 = server {}
      server { host = "::1", port = v4.port }
      local rc, out, err = helpers.host_run({ "once", "--format", "json",
        EXAMPLES .. "tcp.lua" }, { SONDE_TCP_PORT = tostring(v4.port) })
      assert.are.equal(0, rc, out .. err)
      local objs = helpers.decode_lines(out)
      assert.are.equal(2, #objs)
      assert.are.same({ "db-tcp", "success", "ok" },
        { objs[1].probe, objs[1].status, objs[1].reason })
      assert.are.same({ "db-tcp-v6", "success", "ok" },
        { objs[2].probe, objs[2].status, objs[2].reason })
    end)

    it("a closed port -> failure connect_refused, exit 1", function()
      local port = helpers.closed_port()
      local rc, out, err = helpers.host_run({ "once", "--format", "json",
        EXAMPLES .. "tcp.lua" }, { SONDE_TCP_PORT = tostring(port) })
      assert.are.equal(1, rc, out .. err)
      local objs = helpers.decode_lines(out)
      assert.are.equal(2, #objs)
      for _, o in ipairs(objs) do
        assert.are.same({ "failure", "connect_refused" }, { o.status, o.reason })
      end
    end)
  end)

  describe("remediation.lua (run, period 0.2)", function()
    local srv, h, d, actlog, snap0, snap1, snap2, rc, text, evs

    setup(function()
      d = helpers.scratch()
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
      helpers.sleep(0.5)
      snap0 = helpers.read_file(actlog) or ""
      os.remove(flag)
      h:wait_for(function()
        return (helpers.read_file(actlog) or ""):find("app-flag failure exit_code",
          1, true) and #h:events("action", { status = "done" }) >= 2
      end, 15)
      snap1 = helpers.read_file(actlog) or ""
      helpers.write(flag, "")
      h:wait_for(function()
        local s = helpers.read_file(actlog) or ""
        local i = s:find("app-flag failure exit_code", 1, true)
        return i and s:find("app-flag recovered", i, true)
      end, 15)
      snap2 = helpers.read_file(actlog) or ""
      rc, text, evs = stopped(h)
    end)

    it("exits 0 on SIGTERM", function()
      assert.are.equal(0, rc, text)
    end)

    it("flag gone: failure after 2 runs, the webhook POSTs JSON to the "
      .. "fixture", function()
      local sc = helpers.select(evs, "state_change", { probe = "app-flag",
        to = "failure" })
      assert.are.equal(1, #sc, text)
      local posts = {}
      for _, head in ipairs(srv:requests()) do
        if helpers.request_line(head) == "POST /echo HTTP/1.1" then
          posts[#posts + 1] = head
        end
      end
      assert.are.equal(1, #posts, srv:log())
      assert.are.same({ "Content-Type: application/json" },
        helpers.header_lines(posts[1], "Content-Type"))
      local len = helpers.header_lines(posts[1], "Content-Length")[1]
      assert.is_truthy(len and tonumber(len:match("%d+")) > 20, len)
      local wh = helpers.select(evs, "action", { probe = "app-flag",
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
      local sc = helpers.select(evs, "state_change", { probe = "app-flag" })
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
      local d = helpers.scratch()
      helpers.write(d .. "/recv.lua", RECEIVER)
      local out, portfile = d .. "/request", d .. "/port"
      os.execute(string.format("cd %s && %s timeout 40 "
        .. "lua5.4 recv.lua %s %s </dev/null >/dev/null 2>&1 & echo $! > %s",
        helpers.q(d), helpers.lua_env(), helpers.q(out),
        helpers.q(portfile), helpers.q(d .. "/recv.pid")))
      local rpid
      local ok, err = pcall(function()
        helpers.eventually(function() return helpers.read_file(portfile) end, 5)
        rpid = tonumber((helpers.read_file(d .. "/recv.pid") or ""):match("%d+"))
        local port = tonumber((helpers.read_file(portfile) or ""):match("%d+"))
        assert(port, "receiver did not start")
        local h = start({ "--log-format", "json",
          EXAMPLES .. "remediation.lua" }, {
          SONDE_FLAG = d .. "/no-such-flag",
          SONDE_WEBHOOK = "http://127.0.0.1:" .. port .. "/alert",
          SONDE_ACTION_LOG = d .. "/actions.log", SONDE_PERIOD = "0.2" })
        local got = h:wait_for(function() return helpers.read_file(out) end, 15)
        h:signal("TERM")
        assert.are.equal(0, h:wait(10))
        assert.is_truthy(got, h:stderr())
        local req = helpers.read_file(out)
        local head, body = req:match("^(.-)\n\n(.*)$")
        assert.is_truthy(head:find("^POST /alert HTTP/1.1\n"), head)
        local obj = helpers.json_decode(body)
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
      local rc, out, err = helpers.host_run({ EXAMPLES .. "concurrent.lua",
        string.format("http://127.0.0.1:%d", srv.port) })
      assert.are.equal(0, rc, out .. err)
      local lines = helpers.lines(out)
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

local UNIT = "examples/sonde.service"

describe("examples/sonde.service", function()
  -- [Section] -> { key -> { values... } } (systemd keys may repeat)
  local function parse_unit(text)
    local units, section = {}, nil
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      local s = line:match("^%[([^%]]+)%]%s*$")
      if s then
        section = s
        units[s] = units[s] or {}
      elseif not line:match("^%s*[#;]") and not line:match("^%s*$") then
        local k, v = line:match("^%s*([%w]+)%s*=%s*(.-)%s*$")
        assert(k and section, "bad unit line: " .. line)
        units[section][k] = units[section][k] or {}
        table.insert(units[section][k], v)
      end
    end
    return units
  end

  it("is a Type=notify unit with ExecReload sending SIGHUP and a watchdog",
    function()
    local text = assert(helpers.read_file(UNIT), UNIT .. " missing")
    local unit = parse_unit(text)
    local svc = unit.Service
    assert.is_truthy(svc, "no [Service] section")
    assert.are.same({ "notify" }, svc.Type)
    assert.is_truthy(svc.ExecReload, "no ExecReload=")
    local reload = svc.ExecReload[1]
    assert.is_truthy(reload:find("kill", 1, true), reload)
    assert.is_truthy(reload:find("-HUP", 1, true), reload)
    assert.is_truthy(reload:find("$MAINPID", 1, true), reload)
    assert.is_truthy(svc.WatchdogSec, "no WatchdogSec=")
    local wd = tonumber(svc.WatchdogSec[1]:match("^(%d+)s?$"))
    assert.is_truthy(wd and wd > 0, svc.WatchdogSec[1])
    assert.is_truthy(svc.ExecStart, "no ExecStart=")
    assert.is_truthy(svc.ExecStart[1]:find("--log-format json", 1, true),
      svc.ExecStart[1])
    -- only the main process may notify (the services and probes are
    -- children of sonde)
    if svc.NotifyAccess then
      assert.are.same({ "main" }, svc.NotifyAccess)
    end
    assert.is_truthy(unit.Install and unit.Install.WantedBy,
      "no [Install] WantedBy=")
    -- `systemd-analyze verify` is deliberately not used: systemd need not
    -- be installed where the suite runs.
  end)
end)

-- examples/fleet/: the three shapes of a fleet (README, "Fleet").  Every
-- configuration is checked by the tool that reads it (promtool, sonde);
-- what runs here runs on loopback only: the example hosts (*.example) are
-- replaced by 127.0.0.1 addresses before anything could contact them.
local FLEET = EXAMPLES .. "fleet/"

describe("examples/fleet", function()
  local sinks = require "support.otlp_sink"
  local targets = require "sonde.targets"
  local start, server = helpers.host_start, helpers.fixture

  teardown(function()
    helpers.cleanup_hosts()
    helpers.stop_fixtures()
    sinks.stop_all()
  end)

  local function promtool_ok(path)
    assert.are.equal(0, (helpers.sh("command -v promtool")),
      "promtool is not installed (Debian: prometheus)")
    local rc, out = helpers.sh("promtool check config " .. helpers.q(path))
    assert.are.equal(0, rc, out)
    assert.is_truthy(out:find("SUCCESS", 1, true), out)
    assert.is_falsy(out:find("WARNING", 1, true), out)
  end

  local function sonde_check(args, env)
    local rc, out, err = helpers.host_run(args, env)
    assert.are.equal(0, rc, out .. err)
    return out, err
  end

  -- label="value" pairs of the series `name` in an exposition, one table
  -- per line
  local function series(text, name)
    local out = {}
    for lbls, v in text:gmatch("\n" .. name .. "(%b{}) (%S+)") do
      local l = { value = tonumber(v) }
      for k, x in lbls:gmatch('([%w_]+)="(.-)"[,}]') do l[k] = x end
      out[#out + 1] = l
    end
    return out
  end

  describe("per-host (one sonde per host, scraped)", function()
    it("prometheus.yml passes promtool check config", function()
      promtool_ok(FLEET .. "per-host/prometheus.yml")
      local text = helpers.read_file(FLEET .. "per-host/prometheus.yml")
      assert.is_truthy(text:find("honor_labels: true", 1, true))
    end)

    it("probes.lua passes sonde check: web, db, disk", function()
      local out = sonde_check({ "check", FLEET .. "per-host/probes.lua" })
      assert.is_truthy(out:find("3 probes", 1, true), out)
    end)

    it("runs: /metrics has web and db with this host's instance and "
      .. "their team", function()
      local web, db = server {}, server {}
      local h = start({ "--log-format", "json", "--listen", "127.0.0.1:0",
        FLEET .. "per-host/probes.lua" }, {
        SONDE_HTTP_PORT = tostring(web.port), SONDE_TCP_PORT = tostring(db.port),
        SONDE_HOST = "web-1", SONDE_PERIOD = "0.2" })
      local port = helpers.listen_port(h)
      local text
      local ok = h:wait_for(function()
        local r = helpers.fetch(port, "/metrics")
        text = r.body or ""
        local got = {}
        for _, s in ipairs(series(text, "probe_success")) do got[s.probe] = s end
        return got.web and got.db and got
      end, 15)
      assert.are.equal(0, h:term(), h:stderr())
      assert.is_truthy(ok, text)
      assert.are.same({ 1, "web-1:" .. web.port, "web",
        "http://127.0.0.1:" .. web.port .. "/" },
        { ok.web.value, ok.web.instance, ok.web.team, ok.web.target })
      assert.are.same({ 1, "web-1:" .. db.port, "data",
        "127.0.0.1:" .. db.port },
        { ok.db.value, ok.db.instance, ok.db.team, ok.db.target })
    end)
  end)

  describe("probe (sondes behind Prometheus's /probe, sharded)", function()
    it("prometheus.yml passes promtool check config", function()
      promtool_ok(FLEET .. "probe/prometheus.yml")
    end)

    it("Prometheus sends every target to the one sonde of its shard, the "
      .. "shard sonde --shard gives it", function()
      assert.are.equal(0, (helpers.sh("command -v prometheus")),
        "prometheus is not installed (Debian: prometheus)")
      local dir = helpers.scratch()
      -- the sondes' addresses -> loopback ports where nothing listens
      local ports, seen = {}, {}
      for i = 0, 2 do
        local p
        repeat p = helpers.closed_port() until not seen[p]
        seen[p], ports[i] = true, p
      end
      local conf = helpers.read_file(FLEET .. "probe/prometheus.yml")
      local n
      conf, n = conf:gsub("sonde%-(%d)%.example:9115", function(i)
        return "127.0.0.1:" .. ports[tonumber(i)]
      end)
      assert.are.equal(6, n)
      assert.is_falsy(conf:find("%.example:%d"), "an address left: " .. conf)
      helpers.write(dir .. "/prometheus.yml", conf)
      local want = {}     -- job -> { target = true }
      for _, f in ipairs { "http", "tcp" } do
        local json = helpers.read_file(FLEET .. "probe/targets-" .. f .. ".json")
        helpers.write(dir .. "/targets-" .. f .. ".json", json)
        local job = "blackbox-" .. f
        want[job] = {}
        for _, g in ipairs(helpers.json_decode(json)) do
          for _, t in ipairs(g.targets) do want[job][t] = true end
        end
      end
      local port = helpers.closed_port()
      local rc, out = helpers.sh(string.format("cd %s && (prometheus "
        .. "--config.file=prometheus.yml --storage.tsdb.path=data "
        .. "--web.listen-address=127.0.0.1:%d >prometheus.log 2>&1 & echo $!)",
        helpers.q(dir), port))
      assert.are.equal(0, rc)
      local pid = tonumber(out:match("%d+"))
      local ok, err = pcall(function()
        local active
        local deadline = helpers.now() + 90
        repeat
          helpers.sleep(0.5)
          local r = helpers.fetch(port, "/api/v1/targets")
          local doc = r.http_status == 200 and helpers.json_decode(r.body)
          if doc and doc.data and #doc.data.activeTargets >= 9 then
            active = doc.data.activeTargets
          end
        until active or helpers.now() > deadline
        assert.is_table(active, "prometheus did not list its targets: "
          .. (helpers.read_file(dir .. "/prometheus.log") or ""))
        local got = {}
        for _, t in ipairs(active) do
          local job = t.labels.job
          if want[job] then
            local target = t.discoveredLabels.__address__
            assert.is_nil((got[job] or {})[target], "twice: " .. target)
            got[job] = got[job] or {}
            got[job][target] = true
            local shard = targets.shard_of({ labels = { __address__ = target } }, 3)
            local host = t.scrapeUrl:match("^http://([^/]+)/probe%?")
            assert.are.equal("127.0.0.1:" .. ports[shard], host, t.scrapeUrl)
            assert.are.equal(target, t.labels.instance)
            assert.is_truthy(t.scrapeUrl:find("target=", 1, true), t.scrapeUrl)
          end
        end
        assert.are.same(want, got)
        -- the targets spread over the shards (else this proves little)
        local used = {}
        for _, ts in pairs(want) do
          for t in pairs(ts) do
            used[targets.shard_of({ labels = { __address__ = t } }, 3)] = true
          end
        end
        assert.is_true(used[0] and used[1] and used[2] or false)
      end)
      os.execute("kill " .. pid .. " 2>/dev/null")
      assert(ok, err)
    end)

    it("end to end on loopback: Prometheus scrapes three sondes on "
      .. "blackbox.yml through the example's relabeling, every target up "
      .. "with probe_success 1", function()
      assert.are.equal(0, (helpers.sh("command -v prometheus")),
        "prometheus is not installed (Debian: prometheus)")
      local dir = helpers.scratch()
      local web, db = server {}, server {}
      local sondes = {}
      for i = 0, 2 do
        local h = start({ "--log-format", "json", "--config.file",
          FLEET .. "probe/blackbox.yml", "--listen", "127.0.0.1:0" })
        sondes[i] = { h = h, port = helpers.listen_port(h) }
      end
      -- the example, its sondes on loopback, scraped every second; its
      -- targets replaced by the fixture servers' (nothing else contacted)
      local conf = helpers.read_file(FLEET .. "probe/prometheus.yml")
      conf = conf:gsub("sonde%-(%d)%.example:9115", function(i)
        return "127.0.0.1:" .. sondes[tonumber(i)].port
      end):gsub("scrape_interval: 30s", "scrape_interval: 1s")
        :gsub("scrape_timeout: 10s", "scrape_timeout: 1s")
      assert.is_falsy(conf:find("%.example"), conf)
      helpers.write(dir .. "/prometheus.yml", conf)
      local http = { web:url("/ok"), web:url("/"), web:url("/b"),
        web:url("/echo"), db:url("/ok") }
      local tcp = { "127.0.0.1:" .. web.port, "127.0.0.1:" .. db.port }
      local json = require "sonde.json"
      helpers.write(dir .. "/targets-http.json",
        json.encode { { targets = http, labels = { team = "web" } } })
      helpers.write(dir .. "/targets-tcp.json",
        json.encode { { targets = tcp, labels = { team = "data" } } })
      local port = helpers.closed_port()
      local rc, out = helpers.sh(string.format("cd %s && (prometheus "
        .. "--config.file=prometheus.yml --storage.tsdb.path=data "
        .. "--web.listen-address=127.0.0.1:%d >prometheus.log 2>&1 & echo $!)",
        helpers.q(dir), port))
      assert.are.equal(0, rc)
      local pid = tonumber(out:match("%d+"))
      local ok, err = pcall(function()
        local want = #http + #tcp
        local got
        local deadline = helpers.now() + 90
        repeat
          helpers.sleep(0.5)
          local r = helpers.fetch(port,
            "/api/v1/query?query=probe_success%7Bjob%3D~%22blackbox-.%2A%22%7D")
          local doc = r.http_status == 200 and helpers.json_decode(r.body)
          if doc and doc.data and #doc.data.result == want then
            got = doc.data.result
          end
        until got or helpers.now() > deadline
        assert.is_table(got, "no probe_success for every target: "
          .. (helpers.read_file(dir .. "/prometheus.log") or ""))
        local seen = {}
        for _, x in ipairs(got) do
          assert.are.equal("1", x.value[2], x.metric.instance)
          seen[x.metric.instance] = x.metric.team
        end
        for _, t in ipairs(http) do assert.are.equal("web", seen[t], t) end
        for _, t in ipairs(tcp) do assert.are.equal("data", seen[t], t) end
        -- each target's scrapes went to its shard's sonde, which answered
        local r = helpers.fetch(port, "/api/v1/targets")
        local doc = helpers.json_decode(r.body)
        local n = 0
        for _, t in ipairs(doc.data.activeTargets) do
          if t.labels.job ~= "sonde" then
            n = n + 1
            local shard = targets.shard_of({ labels = {
              __address__ = t.discoveredLabels.__address__ } }, 3)
            assert.is_truthy(t.scrapeUrl:find("^http://127%.0%.0%.1:"
              .. sondes[shard].port .. "/probe%?"), t.scrapeUrl)
          end
        end
        assert.are.equal(want, n)
      end)
      os.execute("kill " .. pid .. " 2>/dev/null")
      for i = 0, 2 do sondes[i].h:term() end
      assert(ok, err)
    end)

    it("blackbox.yml passes sonde --config.file F --config.check: its 6 "
      .. "modules", function()
      local path = FLEET .. "probe/blackbox.yml"
      local rc, out, err = helpers.host_run({ "--config.file", path,
        "--config.check" })
      assert.are.equal(0, rc, out .. err)
      assert.are.equal(path .. ": config file is ok: 6 modules\n", out)
    end)

    it("a sonde on blackbox.yml answers /probe: http_2xx and tcp_connect "
      .. "against the fixture succeed, the module's timeout bounds the "
      .. "probe", function()
      local srv = server {}
      local h = start({ "--log-format", "json", "--config.file",
        FLEET .. "probe/blackbox.yml", "--web.listen-address", "127.0.0.1:0" })
      local port = helpers.listen_port(h)
      local function probe(module, target, extra)
        local r = helpers.fetch(port, "/probe?module=" .. module .. "&target="
          .. helpers.urlencode(target) .. (extra or ""))
        assert.are.equal(200, r.http_status, r.body)
        return r.body
      end
      local http = probe("http_2xx", srv:url("/ok"))
      local tcp = probe("tcp_connect", "127.0.0.1:" .. srv.port)
      local closed = probe("tcp_connect", "127.0.0.1:" .. helpers.closed_port())
      local dbg = probe("http_2xx", srv:url("/ok"), "&debug=true")
      local m = helpers.fetch(port, "/metrics").body
      assert.are.equal(0, h:term(), h:stderr())
      assert.is_truthy(http:find("\nprobe_success 1\n", 1, true), http)
      assert.is_truthy(http:find("\nprobe_http_status_code 200\n", 1, true), http)
      assert.is_truthy(tcp:find("\nprobe_success 1\n", 1, true), tcp)
      assert.is_truthy(closed:find("\nprobe_success 0\n", 1, true), closed)
      -- the module's timeout (5s) is shorter than the default scrape
      -- timeout's 120 s less the offset
      assert.is_truthy(dbg:find("timeout_seconds=5", 1, true), dbg)
      assert.is_truthy(m:find("\nblackbox_exporter_config_last_reload_successful 1\n",
        1, true), m)
    end)
  end)

  describe("shards (self-scheduled, pushing OTLP)", function()
    it("shard.lua passes sonde check on the example targets: every target "
      .. "on exactly one of 3 shards", function()
      local names = {}
      for i = 0, 2 do
        local out = sonde_check({ "check", "--shard", i .. "/3",
          FLEET .. "shards/shard.lua" },
          { SONDE_TARGETS = FLEET .. "shards/targets.json" })
        for name in out:gmatch("\nprobe%s+(%S+)") do
          assert.is_nil(names[name], "twice: " .. name)
          names[name] = i
        end
      end
      local n = 0
      for _ in pairs(names) do n = n + 1 end
      assert.are.equal(8, n)
    end)

    it("otelcol.yaml has an otlp receiver over http feeding a metrics "
      .. "pipeline (the collector itself is not run here)", function()
      local yaml = require "lyaml"
      local c = yaml.load(helpers.read_file(FLEET .. "shards/otelcol.yaml"))
      assert.is_table(c.receivers.otlp.protocols.http)
      assert.are.equal("0.0.0.0:4318", c.receivers.otlp.protocols.http.endpoint)
      assert.are.same({ "otlp" }, c.service.pipelines.metrics.receivers)
      for _, e in ipairs(c.service.pipelines.metrics.exporters) do
        assert.is_table(c.exporters[e], e)
      end
    end)

    it("runs as shard 0 of 2: probes shard 0's targets only and pushes "
      .. "their series to an OTLP receiver", function()
      local web = server {}
      local closed = helpers.closed_port()
      local http, tcp = {}, {}
      http[1] = "127.0.0.1:" .. web.port
      for i = 2, 5 do http[#http + 1] = "127.0.0." .. i .. ":" .. closed end
      for i = 6, 9 do tcp[#tcp + 1] = "127.0.0." .. i .. ":" .. closed end
      local dir = helpers.scratch()
      local file = helpers.write(dir .. "/targets.json",
        require("sonde.json").encode {
          { targets = http, labels = { team = "web", scheme = "http" } },
          { targets = tcp, labels = { team = "data", check = "tcp" } } })
      local want, other = {}, 0
      for _, list in ipairs { http, tcp } do
        for _, a in ipairs(list) do
          if targets.shard_of({ labels = { __address__ = a } }, 2) == 0 then
            want[list == http and "http://" .. a .. "/" or a] = true
          else
            other = other + 1
          end
        end
      end
      assert.is_truthy(next(want) and other > 0, "all targets on one shard")
      local sink = sinks.start()
      local h = start({ "--log-format", "json", "--listen", "127.0.0.1:0",
        "--shard", "0/2", "--otlp", sink:url(), "--otlp-interval", "0.5",
        "--otlp-resource", "service.instance.id=sonde-0",
        FLEET .. "shards/shard.lua" },
        { SONDE_TARGETS = file, SONDE_PERIOD = "0.2" })
      local port = helpers.listen_port(h)
      -- /metrics: probe_success of exactly shard 0's targets
      local text
      local got = h:wait_for(function()
        text = helpers.fetch(port, "/metrics").body or ""
        local g = {}
        for _, s in ipairs(series(text, "probe_success")) do g[s.target] = true end
        for t in pairs(want) do if not g[t] then return nil end end
        return g
      end, 15)
      assert.are.same(want, got, text)
      -- the push: the same targets' probe_success, this shard's instance id
      local pushed, res
      h:wait_for(function()
        for _, req in ipairs(sink:requests()) do
          local rm = req.body.resourceMetrics[1]
          for _, m in ipairs(rm.scopeMetrics[1].metrics) do
            if m.name == "probe_success" then
              local g = {}
              for _, p in ipairs(m.gauge.dataPoints) do
                for _, kv in ipairs(p.attributes) do
                  if kv.key == "target" then g[kv.value.stringValue] = true end
                end
              end
              local all = true
              for t in pairs(want) do all = all and g[t] end
              if all then pushed, res = g, rm.resource end
            end
          end
        end
        return pushed
      end, 15)
      assert.are.equal(0, h:term(), h:stderr())
      assert.are.same(want, pushed)
      local id
      for _, kv in ipairs(res.attributes) do
        if kv.key == "service.instance.id" then id = kv.value.stringValue end
      end
      assert.are.equal("sonde-0", id)
    end)
  end)
end)
