-- The host's metrics and health endpoints (`sonde --listen ADDR`,
-- lua/sonde/endpoints.lua, the exposition of lua/sonde/metrics.lua): the
-- host runs as a subprocess with a script that declares a service and
-- probes of every kind; the endpoints are fetched with sonde.http_get from
-- this process (no curl), /metrics is checked with `promtool check metrics`
-- and parsed to compare exact values.  Also the --listen argument and the
-- shutdown on SIGTERM.
local sonde = require "sonde"
local helpers = require "helpers"

local q = helpers.q
local fetch, listen_port = helpers.fetch, helpers.listen_port

local PROMTOOL = "/usr/bin/promtool"
local CHECK_TCP = "/usr/lib/nagios/plugins/check_tcp"

-- The odd probe name: a double quote, a backslash followed by "n" (which
-- must not come out as a newline) and a real newline.
local WEIRD = 'we"ird\\na\nme'
local WEIRD_ESCAPED = 'we\\"ird\\\\na\\nme'

-- The script run by the host; arg[1] is the fixture server's port.
local SCRIPT = [=[
local sonde = require "sonde"
local port = assert(tonumber(arg[1]), "fixture port expected")
local svc = sonde.service { name = "sleeper", command = { "sleep", "600" } }
sonde.probe { name = "live", kind = "liveness", service = svc,
  period = 0.2, exec = { command = { "true" } } }
sonde.probe { name = "ready-ok", kind = "readiness", period = 0.2,
  exec = { command = { "true" } } }
sonde.probe { name = "ready-bad", kind = "readiness", period = 0.2,
  exec = { command = { "false" } } }
sonde.probe { name = "web", kind = "readiness", period = 0.2,
  http_get = { url = "http://127.0.0.1:" .. port .. "/ok" } }
sonde.probe { name = WEIRD_NAME, kind = "readiness", period = 0.2,
  exec = { command = { "true" } } }
sonde.probe { name = "tcp-plugin", kind = "readiness", period = 0.3,
  timeout = 5, exec = { command = { CHECK_TCP, "-H", "127.0.0.1", "-p",
  tostring(port) }, codes = "nagios" } }
sonde.probe { name = "binary", kind = "readiness", period = 0.2,
  exec = { command = { "printf", "a\\0b\\377c" } } }
-- a plugin printing bytes that are not UTF-8 and a control in its labels
sonde.probe { name = "plugin-bytes", kind = "readiness", period = 0.2,
  exec = { command = { "printf",
    "OK | 'a\\377b'=1;2;3 'a\\376b'=5 c\\001d=2 'q\"'=3\\n" },
    codes = "nagios" } }
sonde.probe { name = "big", kind = "readiness", period = 0.2,
  http_get = { url = "http://127.0.0.1:" .. port .. "/big?n=1000" } }
-- every run fails, but not enough of them to publish failure
sonde.probe { name = "flaky", kind = "liveness", period = 0.2,
  failure_threshold = 1000, exec = { command = { "false" } } }
local g = sonde.metrics.gauge("app_queue_depth", "Depth.", { "queue" })
g:set(3, { queue = "a" })
]=]

local PROBES = {
  live = { kind = "liveness", state = "success" },
  ["ready-ok"] = { kind = "readiness", state = "success" },
  ["ready-bad"] = { kind = "readiness", state = "failure" },
  web = { kind = "readiness", state = "success" },
  [WEIRD] = { kind = "readiness", state = "success" },
  ["tcp-plugin"] = { kind = "readiness", state = "success" },
  binary = { kind = "readiness", state = "success" },
  ["plugin-bytes"] = { kind = "readiness", state = "success" },
  big = { kind = "readiness", state = "success" },
  -- the state after the thresholds is not the last run's outcome
  flaky = { kind = "liveness", state = "success", last = "failure" },
}

local function script_text()
  return SCRIPT:gsub("WEIRD_NAME", function() return string.format("%q", WEIRD) end)
    :gsub("CHECK_TCP", function() return string.format("%q", CHECK_TCP) end)
    .. ""
end

local function describe_result(r)
  return string.format("status=%s reason=%s http_status=%s error=%s body=%q",
    tostring(r.status), tostring(r.reason), tostring(r.http_status),
    tostring(r.error), tostring(r.body))
end

---------------------------------------------------------------------------
-- A small parser of the text exposition format (samples only)
---------------------------------------------------------------------------

local UNESCAPE = { ["\\"] = "\\", ['"'] = '"', n = "\n" }

-- Parse `{a="x",b="y"}` starting at s:sub(i); returns labels, next index.
local function parse_labels(s, i)
  local lbl = {}
  assert(s:sub(i, i) == "{")
  i = i + 1
  while true do
    i = s:find("[^%s,]", i) or #s + 1
    if s:sub(i, i) == "}" then return lbl, i + 1 end
    local name = s:match("^[%a_][%w_]*", i)
    assert(name, "label name expected at: " .. s:sub(i))
    i = i + #name
    assert(s:sub(i, i + 1) == '="', "=\" expected at: " .. s:sub(i))
    i = i + 2
    local parts = {}
    while true do
      local c = s:sub(i, i)
      assert(c ~= "", "unterminated label value in: " .. s)
      if c == '"' then i = i + 1 break end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        parts[#parts + 1] = assert(UNESCAPE[e], "bad escape \\" .. e .. " in: " .. s)
        i = i + 2
      else
        parts[#parts + 1] = c
        i = i + 1
      end
    end
    lbl[name] = table.concat(parts)
  end
end

local function parse_number(v)
  if v == "+Inf" then return math.huge end
  if v == "-Inf" then return -math.huge end
  if v == "NaN" then return 0 / 0 end
  return tonumber(v)
end

-- List of { name, labels, value, line }.
local function parse_exposition(text)
  local samples = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name = assert(line:match("^[%a_:][%w_:]*"), "bad line: " .. line)
      local i = #name + 1
      local lbl = {}
      if line:sub(i, i) == "{" then lbl, i = parse_labels(line, i) end
      local v = line:sub(i):match("^%s+(%S+)")
      samples[#samples + 1] = { name = name, labels = lbl,
        value = assert(parse_number(v), "bad value in: " .. line), line = line }
    end
  end
  return samples
end

-- Samples named `name` whose labels include `where`.
local function select(samples, name, where)
  local out = {}
  for _, s in ipairs(samples) do
    if s.name == name then
      local ok = true
      for k, v in pairs(where or {}) do
        if s.labels[k] ~= v then ok = false break end
      end
      if ok then out[#out + 1] = s end
    end
  end
  return out
end

-- The value of the one sample named `name` with labels `where` (an
-- assertion failure when there is none or more than one).
local function value_of(samples, name, where, text)
  local found = select(samples, name, where)
  local w = {}
  for k, v in pairs(where or {}) do w[#w + 1] = k .. "=" .. string.format("%q", v) end
  table.sort(w)
  local what = name .. "{" .. table.concat(w, ",") .. "}"
  assert(#found == 1, string.format("%d samples of %s in:\n%s", #found, what,
    text or ""))
  return found[1].value
end

local function run_promtool(body)
  local tmp = os.tmpname()
  helpers.write(tmp, body)
  local out = os.tmpname()
  -- (LD_PRELOAD: a SANITIZE=1 run's sanitizer runtimes are not for it)
  local _, _, code = os.execute(string.format(
    "env -u LD_PRELOAD %s check metrics < %s > %s 2>&1", q(PROMTOOL), q(tmp),
    q(out)))
  local text = helpers.read_file(out) or ""
  os.remove(tmp)
  os.remove(out)
  return code, text
end

---------------------------------------------------------------------------

describe("metrics endpoints (--listen)", function()
  local dir, srv, h, port, samples, metrics_text

  setup(function()
    dir = helpers.tmpdir()
    srv = helpers.fixture { host = "127.0.0.1" }
    local path = helpers.write(dir .. "/metrics.lua", script_text())
    h = helpers.host_start { "--log-format", "json", "--listen", "127.0.0.1:0",
      path, tostring(srv.port) }
    port = listen_port(h)
    -- ~1.5 s, and at least 3 results of each period-0.2 probe and one of
    -- each other probe
    local t0 = helpers.now()
    local ok = h:wait_for(function(x)
      if helpers.now() - t0 < 1.5 then return false end
      for name in pairs(PROBES) do
        local need = (name == "tcp-plugin") and 1 or 3
        if #x:events("probe_result", { probe = name }) < need then
          return false
        end
      end
      return true
    end, 20)
    assert(ok, "probes did not run:\n" .. h:stderr())
  end)

  teardown(function()
    if h then h:cleanup() end
    if srv then srv:stop() end
    if dir then helpers.rmtree(dir) end
  end)

  local function get_metrics()
    local r = fetch(port, "/metrics")
    assert.are.equal(200, r.http_status, describe_result(r))
    metrics_text = r.body
    samples = parse_exposition(r.body)
    return r
  end

  it("GET /metrics: 200, text/plain, and promtool accepts it", function()
    local r = get_metrics()
    assert.are.equal("success", r.status, describe_result(r))
    local ct = r.headers and r.headers["content-type"] or ""
    assert.is_truthy(ct:find("^text/plain"), "Content-Type: " .. ct)
    assert.is_false(r.truncated)
    local code, out = run_promtool(r.body)
    assert.are.equal(0, code, "promtool check metrics: " .. out
      .. "\n--- body:\n" .. r.body)
  end)

  it("probe series: probe_success (the last run), state (after the "
    .. "thresholds), runs, HTTP status", function()
    get_metrics()
    local t = metrics_text
    for name, want in pairs(PROBES) do
      local v = value_of(samples, "probe_success",
        { probe = name, kind = want.kind }, t)
      assert.are.equal((want.last or want.state) == "success" and 1 or 0, v,
        "probe_success of " .. name)
      for _, st in ipairs { "success", "failure", "unknown" } do
        assert.are.equal(want.state == st and 1 or 0, value_of(samples,
          "sonde_probe_state", { probe = name, kind = want.kind, state = st }, t),
          "sonde_probe_state of " .. name .. " state=" .. st)
      end
    end
    assert.are.equal(1, value_of(samples, "sonde_probe_state",
      { probe = "ready-ok", kind = "readiness", state = "success" }, t))
    -- period 0.2 for >= 1.5 s
    for _, name in ipairs { "live", "ready-ok" } do
      local n = value_of(samples, "sonde_probe_runs_total",
        { probe = name, kind = PROBES[name].kind, status = "success" }, t)
      assert.is_true(n >= 3, name .. " runs: " .. n)
      assert.are.equal(0, value_of(samples, "sonde_probe_runs_total",
        { probe = name, kind = PROBES[name].kind, status = "failure" }, t))
    end
    local bad = value_of(samples, "sonde_probe_runs_total",
      { probe = "ready-bad", kind = "readiness", status = "failure" }, t)
    assert.is_true(bad >= 3, "ready-bad failures: " .. bad)
    assert.are.equal(200, value_of(samples, "probe_http_status_code",
      { probe = "web", kind = "readiness" }, t))
    -- only the HTTP probes have an HTTP status
    assert.are.equal(2, #select(samples, "probe_http_status_code"), t)
    local d = value_of(samples, "probe_duration_seconds",
      { probe = "web", kind = "readiness" }, t)
    assert.is_true(d >= 0 and d < 5, "duration " .. d)
    -- the histogram's count matches the runs
    local runs = 0
    for _, st in ipairs { "success", "warning", "failure", "unknown" } do
      runs = runs + value_of(samples, "sonde_probe_runs_total",
        { probe = "live", kind = "liveness", status = st }, t)
    end
    assert.are.equal(runs, value_of(samples,
      "sonde_probe_run_duration_seconds_count",
      { probe = "live", kind = "liveness" }, t))
    assert.are.equal(runs, value_of(samples,
      "sonde_probe_run_duration_seconds_bucket",
      { probe = "live", kind = "liveness", le = "+Inf" }, t))
  end)

  it("service, build and process series", function()
    get_metrics()
    local t = metrics_text
    assert.are.equal(1, value_of(samples, "sonde_service_up",
      { service = "sleeper" }, t))
    assert.are.equal(0, value_of(samples, "sonde_service_restarts_total",
      { service = "sleeper" }, t))
    local bi = select(samples, "sonde_build_info")
    assert.are.equal(1, #bi, t)
    assert.are.equal(1, bi[1].value)
    assert.are.equal(sonde.version, bi[1].labels.version)
    assert.is_true(value_of(samples, "process_resident_memory_bytes", {}, t) > 0)
    assert.is_true(value_of(samples, "process_open_fds", {}, t) > 0)
    local st = value_of(samples, "process_start_time_seconds", {}, t)
    assert.is_true(math.abs(st - os.time()) < 60,
      "process_start_time_seconds " .. st .. ", now " .. os.time())
  end)

  it("a label value with a quote, a backslash and a newline is escaped",
    function()
    get_metrics()
    -- exactly `\"`, `\\` and `\n`, as the exposition format says
    assert.is_truthy(metrics_text:find('probe="' .. WEIRD_ESCAPED .. '"', 1,
      true), metrics_text)
    -- no line is split by the raw newline
    assert.is_nil(metrics_text:find('we"ird', 1, true), metrics_text)
    assert.are.equal(1, value_of(samples, "probe_success",
      { probe = WEIRD, kind = "readiness" }, metrics_text))
  end)

  it("script-defined gauge and Nagios perfdata", function()
    get_metrics()
    local t = metrics_text
    assert.are.equal(3, value_of(samples, "app_queue_depth", { queue = "a" }, t))
    assert.is_truthy(t:find("# TYPE app_queue_depth gauge\n", 1, true), t)
    local where = { probe = "tcp-plugin", label = "time", uom = "s" }
    local v = value_of(samples, "sonde_perfdata", where, t)
    assert.is_true(v >= 0 and v < 10, "time " .. v)
    assert.are.equal(0, value_of(samples, "sonde_perfdata_min", where, t))
    assert.are.equal(10, value_of(samples, "sonde_perfdata_max", where, t))
    -- check_tcp gives no thresholds here
    assert.are.equal(0, #select(samples, "sonde_perfdata_warn", where), t)
    assert.are.equal(0, #select(samples, "sonde_perfdata_crit", where), t)
  end)

  it("perfdata labels with bytes that are not UTF-8 are valid UTF-8",
    function()
    get_metrics()
    local t = metrics_text
    assert.are.equal(t, utf8.len(t) and t, "invalid UTF-8 in /metrics")
    local where = { probe = "plugin-bytes", label = "a\u{FFFD}b", uom = "" }
    -- \377 and \376 both print as U+FFFD: one series, the first one's
    assert.are.equal(1, value_of(samples, "sonde_perfdata", where, t))
    assert.are.equal(2, value_of(samples, "sonde_perfdata_warn", where, t))
    assert.are.equal(2, value_of(samples, "sonde_perfdata", { probe =
      "plugin-bytes", label = "c\\x01d", uom = "" }, t))
    assert.are.equal(3, value_of(samples, "sonde_perfdata", { probe =
      "plugin-bytes", label = 'q"', uom = "" }, t))
  end)

  it("/status cuts outputs and leaves bodies out unless ?output=1",
    function()
    local r = fetch(port, "/status")
    local st = assert(helpers.json_decode(r.body))
    local last = st.probes.big.last
    assert.are.equal(256, #last.output)
    assert.are.equal(1000, last.output_bytes)
    assert.is_nil(last.body)
    r = fetch(port, "/status?output=1")
    st = assert(helpers.json_decode(r.body))
    last = st.probes.big.last
    assert.are.equal(string.rep("a", 1000), last.output)
    assert.are.equal(string.rep("a", 1000), last.body)
    assert.is_nil(last.output_bytes)
  end)

  it("/healthz, /readyz, /readyz/NAME, /livez/NAME", function()
    local r = fetch(port, "/healthz")
    assert.are.equal(200, r.http_status, describe_result(r))

    r = fetch(port, "/readyz")
    assert.are.equal(503, r.http_status, describe_result(r))
    local names = {}
    for line in r.body:gmatch("[^\n]+") do names[line] = true end
    assert.is_true(names["ready-bad"], r.body)
    for name in pairs(PROBES) do
      if name ~= "ready-bad" then
        -- (the weird name has a newline: look for each piece too)
        for piece in name:gmatch("[^\n]+") do
          assert.is_nil(names[piece], "listed " .. name .. ":\n" .. r.body)
        end
      end
    end
    assert.is_nil(r.body:find("ready-ok", 1, true), r.body)

    local cases = {
      { "/readyz/ready-ok", 200 }, { "/readyz/web", 200 },
      { "/readyz/ready-bad", 503 }, { "/readyz/live", 404 },
      { "/readyz/nosuch", 404 },
      { "/livez/live", 200 }, { "/livez/nosuch", 404 },
      { "/livez/ready-ok", 404 },
    }
    for _, c in ipairs(cases) do
      r = fetch(port, c[1])
      assert.are.equal(c[2], r.http_status, c[1] .. ": " .. describe_result(r))
    end
  end)

  it("/status is JSON with every probe's state and the service", function()
    local r = fetch(port, "/status")
    assert.are.equal(200, r.http_status, describe_result(r))
    local st, err = helpers.json_decode(r.body)
    assert.is_truthy(st, "invalid JSON (" .. tostring(err) .. "): " .. r.body)
    assert.are.equal("table", type(st.probes), r.body)
    for name, want in pairs(PROBES) do
      local p = st.probes[name]
      assert.is_truthy(p, "no probe " .. name .. " in " .. r.body)
      assert.are.equal(want.state, p.state, name)
      assert.are.equal(want.kind, p.kind, name)
    end
    local n = 0
    for _ in pairs(st.probes) do n = n + 1 end
    assert.are.equal(10, n, r.body)
    assert.are.equal("running", st.services.sleeper.state, r.body)
    assert.are.equal(0, st.services.sleeper.restarts, r.body)
  end)

  it("/status stays valid JSON with NUL and invalid UTF-8 in an output",
    function()
    local r = fetch(port, "/status")
    assert.are.equal(200, r.http_status, describe_result(r))
    local st, err = helpers.json_decode(r.body)
    assert.is_truthy(st, "invalid JSON (" .. tostring(err) .. "): " .. r.body)
    local last = st.probes.binary.last
    assert.is_truthy(last, r.body)
    local out = last.output
    -- not cut at the NUL; the \377 byte is shown (as the text \xFF, the
    -- log's convention), nothing after it dropped
    assert.is_truthy(out:find("^a%zb"), string.format("%q", out))
    assert.is_truthy(out:find("c$"), string.format("%q", out))
    assert.are.equal("a\0b\\xFFc", out)
  end)

  it("unknown path 404, POST 405 (naming GET and HEAD), HEAD 200", function()
    local r = fetch(port, "/nosuch")
    assert.are.equal(404, r.http_status, describe_result(r))
    r = fetch(port, "/metrics", "POST")
    assert.are.equal(405, r.http_status, describe_result(r))
    assert.are.equal("GET, HEAD", r.headers and r.headers["allow"],
      describe_result(r))
    r = fetch(port, "/metrics", "HEAD")
    assert.are.equal(200, r.http_status, describe_result(r))
    assert.are.equal("", r.body or "")
    local ct = r.headers and r.headers["content-type"] or ""
    assert.is_truthy(ct:find("^text/plain"), "Content-Type: " .. ct)
  end)
end)

describe("--listen", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)

  after_each(function()
    helpers.cleanup_hosts()
    helpers.rmtree(dir)
  end)

  local start = helpers.host_start

  local SMALL = [[
    local sonde = require "sonde"
    sonde.service { name = "sleeper", command = { "sleep", "600" } }
    sonde.probe { name = "tick", kind = "readiness", period = 0.2,
                  exec = { command = { "true" } } }
  ]]

  it("a port alone (--listen 0) binds 127.0.0.1 only", function()
    local path = helpers.write(dir .. "/small.lua", SMALL)
    local x = start { "--log-format", "json", "--listen", "0", path }
    local p, ev = listen_port(x)
    assert.are.equal("127.0.0.1", ev.host)
    assert.is_true(p > 0)
    assert.are.same({ "127.0.0.1" }, helpers.listening(p))
    local r = fetch(p, "/healthz")
    assert.are.equal(200, r.http_status, describe_result(r))
  end)

  it("a bad value exits 2 with a usage message", function()
    local path = helpers.write(dir .. "/small.lua", SMALL)
    for _, bad in ipairs { "nonsense", "127.0.0.1:99999", "127.0.0.1:",
        "-1", "" } do
      local code, out, err = helpers.host_run({ "--listen", bad, path }, nil, 20)
      assert.are.equal(2, code, "--listen " .. string.format("%q", bad)
        .. ": " .. out .. err)
      assert.is_truthy(err:find("usage:", 1, true), err)
      assert.is_truthy(err:find("--listen", 1, true), err)
    end
    -- and no value at all
    local code, out, err = helpers.host_run({ "--listen" }, nil, 20)
    assert.are.equal(2, code, out .. err)
    assert.is_truthy(err:find("usage:", 1, true), err)
  end)

  it("a port in use: exit 2, and the reason", function()
    local path = helpers.write(dir .. "/small.lua", SMALL)
    local x = start { "--log-format", "json", "--listen", "0", path }
    local p = listen_port(x)
    local code, out, err = helpers.host_run({ "--listen", tostring(p), path },
      nil, 20)
    assert.are.equal(2, code, out .. err)
    assert.are.equal(string.format("sonde: --listen: cannot listen on "
      .. "127.0.0.1 port %d: Address already in use\n", p), err)
  end)

  it("after SIGTERM the host exits 0 and nothing listens", function()
    local path = helpers.write(dir .. "/small.lua", SMALL)
    local x = start { "--log-format", "json", "--listen", "127.0.0.1:0", path }
    local p = listen_port(x)
    assert.is_truthy(x:wait_for(function(y)
      return #y:events("probe_result", { probe = "tick" }) >= 2 end, 15),
      x:stderr())
    local r = fetch(p, "/readyz")
    assert.are.equal(200, r.http_status, describe_result(r))
    local pids = x:service_pids()
    assert.are.equal(1, #pids, x:stderr())
    x:signal("TERM")
    assert.are.equal(0, x:wait(10), x:stderr())
    assert.are.same({}, helpers.listening(p))
    r = helpers.run(function()
      return sonde.tcp_socket { host = "127.0.0.1", port = p, timeout = 2 }
    end)
    assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
    assert.is_true(helpers.gone(pids[1]), "service " .. pids[1] .. " still there")
  end)
end)

describe("sonde.endpoints.route: text bodies", function()
  local endpoints = require "sonde.endpoints"

  it("a name in /readyz's list or a 404 is valid UTF-8 on one line, "
    .. "whatever bytes the script or the client gave", function()
    local p = { name = "a\nb\255", kind = "readiness", state = "failure" }
    local cfg = { probes = { p }, probe_by_name = { [p.name] = p },
      services = {} }
    local status, body = endpoints.route(cfg, "GET", "/readyz")
    assert.are.equal(503, status)
    assert.are.equal("not ready:\na\\x0Ab\u{FFFD}\n", body)
    status, body = endpoints.route(cfg, "GET", "/readyz/x%0Ay%FF%00")
    assert.are.equal(404, status)
    assert.are.equal("no readiness probe named x\\x0Ay\u{FFFD}\\x00\n", body)
    -- the probe is still found by its own bytes
    status = endpoints.route(cfg, "GET", "/readyz/a%0Ab%FF")
    assert.are.equal(503, status)
  end)
end)

describe("sonde.endpoints.route: /status pages at the integers' end", function()
  local endpoints = require "sonde.endpoints"

  -- The whole text a /status producer gives (or the error it raised).
  local function drain(prod)
    local parts = {}
    for _ = 1, 1000 do
      local ok, s = pcall(prod)
      if not ok then return nil, s end
      if s == nil then return table.concat(parts) end
      parts[#parts + 1] = type(s) == "table" and table.concat(s) or s
    end
    error("the producer never ended")
  end

  it("an offset near math.maxinteger is an empty last page, not a "
    .. "producer error (offset + limit must not wrap)", function()
    local probes, by = {}, {}
    for i = 1, 3 do
      local p = { name = "p" .. i, kind = "readiness", state = "success",
        runs = 0, stats = { counts = {} },
        streak_count = function() return 0 end }
      probes[i], by[p.name] = p, p
    end
    local cfg = { probes = probes, probe_by_name = by, services = {} }
    for _, q in ipairs {
      "limit=1&offset=" .. math.maxinteger,
      "limit=10000&offset=" .. (math.maxinteger - 9999),
      "offset=" .. math.maxinteger,
    } do
      local status, prod = endpoints.route(cfg, "GET", "/status", q)
      assert.are.equal(200, status, q)
      local text, err = drain(prod)
      assert.is_truthy(text, q .. ": " .. tostring(err))
      local st = assert(helpers.json_decode(text), q)
      assert.is_nil(next(st.probes), q)
      assert.are.equal(3, math.tointeger(st.page.total), q)
      assert.is_nil(st.page.next, q)
    end
  end)
end)

describe("sonde.endpoints.route: /status?probe= decoded as a query", function()
  local endpoints = require "sonde.endpoints"

  it("'+' is a space, as /probe?target= and Go's url.ParseQuery read it "
    .. "(Go's url.Values.Encode and Python's urlencode write a space so)",
    function()
    local p = { name = "web front+1", kind = "readiness", state = "success",
      runs = 0, stats = { counts = {} }, streak_count = function() return 0 end }
    local cfg = { probes = { p }, probe_by_name = { [p.name] = p },
      services = {} }
    for _, q in ipairs { "probe=web+front%2B1", "probe=web%20front%2B1",
      "probe=web+front%2b1&limit=x" } do
      local status, body = endpoints.route(cfg, "GET", "/status", q)
      assert.are.equal(200, status, q)
      assert.is_truthy(body:find('"web front+1"', 1, true), q)
    end
    local status, body = endpoints.route(cfg, "GET", "/status",
      "probe=web+front+1")
    assert.are.equal(404, status)
    assert.are.equal("no probe named web front 1\n", body)
    -- a page's numbers too
    status = endpoints.route(cfg, "GET", "/status", "limit=+5")
    assert.are.equal(400, status)
  end)
end)

describe("sonde.endpoints.status_producer: a step's size", function()
  local endpoints = require "sonde.endpoints"

  it("stops a step once it holds M.STATUS_SLICE bytes: /status?output=1 "
    .. "of probes with big bodies is not 16 bodies per loop turn", function()
    local probes, by = {}, {}
    local body = ("\1\"\\a"):rep(64 * 1024)     -- 256 KiB, 6x as JSON
    for i = 1, 40 do
      local p = { name = "p" .. i, kind = "readiness", state = "success",
        runs = 1, stats = { counts = { success = 1 } },
        streak_count = function() return 1 end,
        last_result = { status = "success", output = "o", body = body } }
      probes[i], by[p.name] = p, p
    end
    local cfg = { probes = probes, probe_by_name = by, services = {} }
    local prod, parts = endpoints.status_producer(cfg, true), {}
    while true do
      local s = prod()
      if s == nil then break end
      if type(s) == "table" then s = table.concat(s) end
      parts[#parts + 1] = s
      local _, n = s:gsub('"p%d+":{', "")
      assert.is_true(n <= 1, ("a step of %d probes, %d bytes"):format(n, #s))
    end
    local st = assert(helpers.json_decode(table.concat(parts)))
    assert.are.equal(body, st.probes.p40.last.body)
    -- small entries still go M.STATUS_BATCH at a time
    for _, p in ipairs(probes) do p.last_result.body = nil end
    prod = endpoints.status_producer(cfg, true)
    prod()                                      -- the head
    local _, n = table.concat(prod()):gsub('"p%d+":{', "")
    assert.are.equal(endpoints.STATUS_BATCH, n)
  end)
end)

describe("/status for many probes: one, by pages, whole; gzip", function()
  local socket = require "socket"
  local N = 3000
  local dir, h, port
  -- (a probe name with bytes a URL must escape)
  local ODD = "odd name/é&x=1"

  -- curl, outside the sanitizers' preloads: exit code, body, head
  local function curl(path, args)
    local d = helpers.scratch()
    local ok, _, rc = os.execute(string.format("env -u LD_PRELOAD -u ASAN_OPTIONS "
      .. "-u UBSAN_OPTIONS curl -sS --max-time 30 %s -D %s -o %s %s 2>/dev/null",
      args or "", q(d .. "/head"), q(d .. "/body"),
      q("http://127.0.0.1:" .. port .. path)))
    local head = helpers.read_file(d .. "/head") or ""
    return ok and 0 or rc, helpers.read_file(d .. "/body") or "", head,
      tonumber(head:match("^HTTP/%S+ (%d+)"))
  end

  local function json_of(path, args)
    local rc, body, head, status = curl(path, args)
    assert.are.equal(0, rc, path)
    assert.are.equal(200, status, path .. ": " .. head .. body:sub(1, 200))
    local v, err = helpers.json_decode(body)
    assert.is_truthy(v, path .. ": invalid JSON (" .. tostring(err) .. ")")
    return v, head, body
  end

  local function count(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n
  end

  setup(function()
    dir = helpers.tmpdir()
    -- a loopback port where nothing listens
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, closed = s:getsockname()
    s:close()
    local path = helpers.write(dir .. "/many.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "sleeper", command = { "sleep", "600" } }
      for i = 1, %d do
        sonde.probe { name = "tcp-" .. i, kind = "readiness", period = 3600,
          tcp_socket = { host = "127.0.0.1", port = %d } }
      end
      sonde.probe { name = %q, kind = "liveness", period = 3600,
        exec = { command = { "true" } } }
    ]], N - 1, closed, ODD))
    h = helpers.host_start { "--log-format", "json", "--listen", "127.0.0.1:0",
      path }
    port = listen_port(h)
  end)

  teardown(function()
    if h then h:cleanup() end
    if dir then helpers.rmtree(dir) end
  end)

  it("the whole /status is streamed: valid JSON with every probe", function()
    local st, head = json_of("/status")
    assert.is_truthy(head:find("Transfer-Encoding: chunked", 1, true), head)
    assert.is_nil(head:find("Content-Encoding", 1, true), head)
    assert.are.equal(N, count(st.probes))
    for i = 1, N - 1 do
      local p = st.probes["tcp-" .. i]
      assert.is_truthy(p, "tcp-" .. i)
      assert.are.equal("readiness", p.kind)
    end
    assert.are.equal("liveness", st.probes[ODD].kind)
    assert.are.equal("running", st.services.sleeper.state)
    assert.is_string(st.version)
    assert.is_nil(st.page)
  end)

  it("?probe=NAME: that probe only; 404 for none", function()
    local st = json_of("/status?probe=tcp-17")
    assert.are.same({ "tcp-17" }, (function()
      local k = {}
      for name in pairs(st.probes) do k[#k + 1] = name end
      return k
    end)())
    assert.are.equal("readiness", st.probes["tcp-17"].kind)
    assert.is_nil(st.services)
    assert.is_nil(st.pods)
    assert.is_string(st.version)
    -- percent-decoded
    st = json_of("/status?probe=odd%20name%2F%C3%A9%26x%3D1")
    assert.are.equal("liveness", st.probes[ODD].kind)
    local _, body, _, status = curl("/status?probe=tcp-999999")
    assert.are.equal(404, status)
    assert.are.equal("no probe named tcp-999999\n", body)
  end)

  it("pages: every probe once, in declaration order, with total and next",
    function()
    local seen, order, offset, pages = {}, {}, 0, 0
    while offset do
      local st = json_of("/status?limit=700&offset=" .. offset
        .. (pages == 1 and "&output=1" or ""))
      pages = pages + 1
      assert.are.equal(offset, math.tointeger(st.page.offset))
      assert.are.equal(700, math.tointeger(st.page.limit))
      assert.are.equal(N, math.tointeger(st.page.total))
      assert.are.equal("running", st.services.sleeper.state)
      local n = count(st.probes)
      assert.are.equal(math.min(700, N - offset), n)
      for name in pairs(st.probes) do
        assert.is_nil(seen[name], name .. " twice")
        seen[name] = true
        order[#order + 1] = name
      end
      if offset + 700 < N then
        assert.are.equal(offset + 700, math.tointeger(st.page.next))
      else
        assert.is_nil(st.page.next)
      end
      offset = math.tointeger(st.page.next)
    end
    assert.are.equal(5, pages)
    assert.are.equal(N, count(seen))
    -- declaration order: page k holds tcp-(700k+1) .. tcp-(700k+700)
    local st = json_of("/status?limit=2&offset=699")
    assert.is_truthy(st.probes["tcp-700"] and st.probes["tcp-701"])
    st = json_of("/status?limit=5&offset=" .. (N - 1))
    assert.is_truthy(st.probes[ODD])
    assert.is_nil(st.page.next)
    st = json_of("/status?offset=" .. (N + 10))
    assert.are.equal(0, count(st.probes))
    assert.are.equal(10000, math.tointeger(st.page.limit))
  end)

  it("bad paging values: 400 naming the parameter", function()
    for _, c in ipairs {
      { "limit=0", "limit" }, { "limit=10001", "limit" },
      { "limit=abc", "limit" }, { "limit=", "limit" },
      { "limit=-5", "limit" }, { "offset=-1", "offset" },
      { "offset=x&limit=3", "offset" }, { "limit=5&offset=1.5", "offset" },
      { "offset=99999999999999999999999", "offset" },
    } do
      local _, body, _, status = curl("/status?" .. c[1])
      assert.are.equal(400, status, c[1])
      assert.is_truthy(body:find("^" .. c[2] .. " must be"), c[1] .. ": " .. body)
    end
  end)

  it("gzip when Accept-Encoding accepts it, plain when not", function()
    local _, raw, head = curl("/status", "-H 'Accept-Encoding: gzip'")
    assert.is_truthy(head:find("Content-Encoding: gzip", 1, true), head)
    assert.is_truthy(head:find("Vary: Accept-Encoding", 1, true), head)
    assert.are.equal("\31\139", raw:sub(1, 2))
    local st, _, plain = json_of("/status", "--compressed")
    assert.are.equal(N, count(st.probes))
    assert.is_true(#raw < #plain // 4, ("gzip %d, plain %d"):format(#raw, #plain))
    -- /metrics too
    _, raw, head = curl("/metrics", "-H 'Accept-Encoding: deflate, GZip;q=0.5'")
    assert.is_truthy(head:find("Content-Encoding: gzip", 1, true), head)
    local rc, text = curl("/metrics", "--compressed")
    assert.are.equal(0, rc)
    assert.is_truthy(text:find("\nsonde_build_info{", 1, true), text:sub(1, 300))
    -- refused, or not asked: plain
    for _, ae in ipairs { "gzip;q=0", "identity", "br, *;q=0", "" } do
      _, raw, head = curl("/status", "-H 'Accept-Encoding: " .. ae .. "'")
      assert.is_nil(head:find("Content-Encoding", 1, true), ae .. ": " .. head)
      assert.is_truthy(helpers.json_decode(raw), ae)
    end
    -- the short answers stay plain
    _, raw, head = curl("/healthz", "-H 'Accept-Encoding: gzip'")
    assert.is_nil(head:find("Content-Encoding", 1, true), head)
    assert.are.equal("ok\n", raw)
    -- HEAD: the head of a gzip'd stream, no body
    local rc2, _, head2 = curl("/status", "-I -H 'Accept-Encoding: gzip'")
    assert.are.equal(0, rc2)
    assert.is_truthy(head2:find("Content-Encoding: gzip", 1, true), head2)
    assert.is_nil(head2:find("Content-Length", 1, true), head2)
  end)
end)

describe("sonde.endpoints.accepts_gzip", function()
  local endpoints = require "sonde.endpoints"
  it("reads Accept-Encoding as RFC 9110 says", function()
    local yes = { "gzip", "GZIP", "deflate, gzip", "gzip;q=0.5", " gzip ; q=1",
      "*", "br, *", "x-gzip", "gzip;q=0.001, *;q=0" }
    local no = { false, "", "identity", "gzip;q=0", "gzip; q=0.000", "deflate",
      "*;q=0", "gzip;q=0, *", "br, gzip;q=0, *;q=1", "gzipx", "gzip;q=abc" }
    for _, v in ipairs(yes) do
      assert.is_true(endpoints.accepts_gzip(v), v)
    end
    for _, v in ipairs(no) do
      assert.is_false(endpoints.accepts_gzip(v or nil), tostring(v))
    end
  end)

  it("the streamed /status has the content of json.encode(M.status)",
    function()
    local json = require "sonde.json"
    local probes, by = {}, {}
    for i = 1, 100 do
      local p = { name = "p" .. i, kind = "readiness", state = "success",
        runs = i, stats = { counts = { success = i } },
        streak_count = function() return i end,
        last_result = { status = "success", output = ("o"):rep(300),
          url = "http://u:secret@h/", body = "b" } }
      probes[i], by[p.name] = p, p
    end
    local cfg = { probes = probes, probe_by_name = by, services = {
      { name = "s", state = "running", restarts = 0, pid = 1 } } }
    for _, full in ipairs { false, true } do
      local prod, parts = endpoints.status_producer(cfg, full), {}
      while true do
        local s = prod()
        if s == nil then break end
        parts[#parts + 1] = type(s) == "table" and table.concat(s) or s
      end
      assert.is_true(#parts > 100 // endpoints.STATUS_BATCH)
      local got = assert(helpers.json_decode(table.concat(parts)))
      local want = helpers.json_decode(json.encode(endpoints.status(cfg, full)))
      assert.are.same(want, got)
    end
  end)
end)

describe("/status entries kept between requests", function()
  local sonde = require "sonde"
  local config = require "sonde.config"
  local endpoints = require "sonde.endpoints"
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  local function status(cfg, full)
    local prod, parts = endpoints.status_producer(cfg, full), {}
    for s in prod do
      parts[#parts + 1] = type(s) == "table" and table.concat(s) or s
    end
    return assert(helpers.json_decode(table.concat(parts)))
  end

  it("an entry is made again once its probe ran (or output=1 is asked), "
    .. "kept otherwise", function()
    local core = require "sonde.core"
    local n = 0
    local p = sonde.probe { name = "c", period = 0.5, initial_delay = 0.01,
      check = function()
        n = n + 1
        return { status = n == 1 and "success" or "failure",
          output = ("o"):rep(300) }
      end }
    local q = sonde.probe { name = "idle", period = 60, initial_delay = 3600,
      check = function() return "success" end }
    local cfg = config.ambient()
    local a, b, full, kept, same, t
    local function poll()
      t = nil
      if not a and p.runs == 1 then
        full = status(cfg, true)                  -- whole outputs
        a = status(cfg)                           -- made again, cut
        kept = rawget(q, "status_json")
        status(cfg)
        same = rawget(q, "status_json") == kept  -- nothing of idle changed
      elseif a and p.runs >= 2 then
        b = status(cfg)
        helpers.stop_now()
        return
      end
      t = core.timer(0.01, poll)
    end
    helpers.run_for(15, { at = { { 0.01, poll } } })
    if t then core.cancel(t) end
    assert.are.same({ 1, "success", 256 }, { a.probes.c.runs,
      a.probes.c.last.status, #a.probes.c.last.output })
    assert.is_table(kept)
    assert.is_true(same)
    assert.are.equal(300, #full.probes.c.last.output)
    -- the second run shows
    assert.are.same({ 2, "failure", 256 }, { b.probes.c.runs,
      b.probes.c.last.status, #b.probes.c.last.output })
    assert.are.equal(1, b.probes.c.counts.failure)
  end)
end)
