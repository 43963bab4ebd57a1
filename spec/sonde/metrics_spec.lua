-- sonde.metrics: the registry's checks of script-defined series
-- (sonde.metrics.gauge / counter), and the series of declared probes as
-- metrics.render writes them (from the probes' C workers: src/expo.c),
-- in this process, with real probes against loopback servers.  The
-- exposition text as served is in spec/sonde/endpoints_spec.lua; a scrape
-- of thousands of probes in spec/sonde/metrics_scale_spec.lua.
local sonde = require "sonde"
local helpers = require "helpers"

local run_until_ran = helpers.run_until_ran

describe("sonde.metrics.gauge / counter validation", function()
  local metrics = sonde.metrics
  -- the registry is per process: names unique to this spec
  local n = 0
  local function uniq(prefix)
    n = n + 1
    return string.format("%s_metricsspec_%d_%d", prefix, helpers.pid(), n)
  end

  it("accepts valid declarations", function()
    local g = metrics.gauge(uniq("ok_gauge"), "A gauge.", { "queue", "_x" })
    g:set(1, { queue = "a", _x = "b" })
    g:set(-2.5, { queue = "a", _x = "b" })
    local c = metrics.counter(uniq("ok:counter") .. "_total", "A counter.")
    c:inc()
    c:inc(2.5)
    c:inc(0)
  end)

  it("invalid names raise", function()
    for _, name in ipairs { "", "1abc", "a-b", "a b", "é", "a.b" } do
      assert.has_error(function() metrics.gauge(name, "h") end, nil,
        string.format("%q", name))
    end
    assert.has_error(function() metrics.gauge(nil, "h") end)
    assert.has_error(function() metrics.gauge(42, "h") end)
    assert.has_error(function() metrics.counter("1_total", "h") end)
  end)

  it("reserved prefixes probe_, sonde_, process_ raise", function()
    for _, prefix in ipairs { "probe_", "sonde_", "process_" } do
      assert.has_error(function() metrics.gauge(prefix .. "custom", "h") end,
        nil, prefix)
      assert.has_error(function()
        metrics.counter(prefix .. "custom_total", "h") end, nil, prefix)
    end
    assert.has_error(function() metrics.gauge("probe_success", "h") end)
  end)

  it("a counter not ending in _total raises", function()
    assert.has_error(function() metrics.counter(uniq("requests"), "h") end)
    assert.has_error(function()
      metrics.counter(uniq("requests") .. "_totals", "h") end)
  end)

  it("a duplicate name raises", function()
    local name = uniq("dup")
    metrics.gauge(name, "h")
    assert.has_error(function() metrics.gauge(name, "h") end)
    local cname = uniq("dup") .. "_total"
    metrics.counter(cname, "h")
    assert.has_error(function() metrics.counter(cname, "h") end)
    assert.has_error(function() metrics.gauge(cname, "h") end)
    -- a script-defined one cannot shadow a built-in series either
    assert.has_error(function() metrics.gauge("sonde_build_info", "h") end)
  end)

  it("bad label names raise", function()
    for _, l in ipairs { "1a", "a-b", "a b", "", "__reserved" } do
      assert.has_error(function() metrics.gauge(uniq("lbl"), "h", { l }) end,
        nil, string.format("%q", l))
    end
    assert.has_error(function() metrics.gauge(uniq("lbl"), "h", { 5 }) end)
  end)

  it("counter:inc with a negative raises", function()
    local c = metrics.counter(uniq("neg") .. "_total", "h", { "k" })
    assert.has_error(function() c:inc(-1, { k = "a" }) end)
    assert.has_error(function() c:inc(-0.5, { k = "a" }) end)
    c:inc(1, { k = "a" })
  end)

  it("counter:inc with NaN raises (a counter stuck at NaN for good)",
    function()
    local c = metrics.counter(uniq("nan") .. "_total", "h", { "k" })
    c:inc(1, { k = "a" })
    assert.has_error(function() c:inc(0 / 0, { k = "a" }) end)
    assert.are.equal(1, c.values[next(c.values)].v)
  end)

  it("keeps a copy of the label values it was given", function()
    local m = require "sonde.metrics"
    local reg = m.registry()
    local labels = { "queue" }
    local g = reg:gauge("copied", "help", labels)
    labels[1] = "changed"
    local values = { queue = "a" }
    g:set(1, values)
    values.queue = "b"
    local text = m.render { probes = {}, services = {}, registry = reg }
    assert.is_truthy(text:find('\ncopied{queue="a"} 1\n', 1, true), text)
  end)
end)

describe("sonde.metrics label values", function()
  local metrics = require "sonde.metrics"

  it("plain text as it is", function()
    assert.are.equal("web-1 ok", metrics.escape("web-1 ok"))
  end)

  it("quote, backslash and newline escaped; other controls as \\xHH text",
    function()
    assert.are.equal('a\\"b\\\\c\\nd\\\\x01e\\\\x7F',
      metrics.escape('a"b\\c\nd\1e\127'))
  end)

  it("valid UTF-8 kept, every invalid byte U+FFFD, whatever the bytes",
    function()
    assert.are.equal("é€😀", metrics.escape("é€😀"))
    for _, bad in ipairs { "\255", "\192\128", "\237\160\128", "\244\144\128\128",
        "\226\130", "a\128b" } do
      local e = metrics.escape(bad)
      assert.is_truthy(utf8.len(e), string.format("%q", bad))
      assert.is_truthy(e:find("\239\191\189", 1, true), string.format("%q", bad))
    end
    -- random bytes: always valid UTF-8, never a raw control or lone quote
    math.randomseed(8)
    for _ = 1, 500 do
      local t = {}
      for i = 1, math.random(0, 40) do t[i] = string.char(math.random(0, 255)) end
      local e = metrics.escape(table.concat(t))
      assert.is_truthy(utf8.len(e), string.format("%q", table.concat(t)))
      assert.is_nil(e:find("%c"), string.format("%q", e))
      assert.is_nil(e:gsub("\\\\", ""):gsub('\\"', ""):find('"'), e)
    end
  end)
end)

describe("sonde.metrics.float (Go's strconv.FormatFloat(v, 'g', -1, 64))",
  function()
  local metrics = require "sonde.metrics"

  it("the shortest text that reads back, laid out as Go's 'g'", function()
    for _, c in ipairs {
      { 0.005, "0.005" }, { 0.025, "0.025" }, { 0.1, "0.1" }, { 1.0, "1" },
      { 2.5, "2.5" }, { 10.0, "10" }, { 100000.0, "100000" },
      { 999999.0, "999999" }, { 1e6, "1e+06" }, { 1234567.0, "1.234567e+06" },
      { 1e21, "1e+21" }, { 0.0001, "0.0001" }, { 1e-5, "1e-05" },
      { 1.5e-7, "1.5e-07" }, { -2.5, "-2.5" }, { 0.1 + 0.2,
        "0.30000000000000004" }, { 1 / 3, "0.3333333333333333" },
      { 2^53 + 0.0, "9.007199254740992e+15" }, { 5e-324, "5e-324" },
      { 1.7976931348623157e308, "1.7976931348623157e+308" },
      { 0.0, "0" }, { -0.0, "-0" }, { 1 / 0, "+Inf" }, { -1 / 0, "-Inf" },
      { 0 / 0, "NaN" },
    } do
      assert.are.equal(c[2], metrics.float(c[1]), string.format("%.17g", c[1]))
    end
  end)

  it("reads back as the same double, with at most 17 digits", function()
    math.randomseed(11)
    for _ = 1, 20000 do
      local v = (math.random() - 0.5) * 10 ^ math.random(-40, 40)
      local s = metrics.float(v)
      assert.are.equal(v, tonumber(s), s)
      local digits = s:gsub("e.*", ""):gsub("[^%d]", ""):gsub("^0+", "")
      assert.is_true(#digits <= 17, s)
    end
  end)

  it("the C core prints numbers and escapes label values as this module "
    .. "does (src/expo.c: the series of declared probes)", function()
    local core = require "sonde.core"
    math.randomseed(12)
    local specials = { 0.0, -0.0, 1 / 0, -1 / 0, 0 / 0, 5e-324, 2.5e-310,
      2 ^ 53, 2 ^ 53 + 2, -(2 ^ 53), 1e21, 0.005, 1e-5, 123456.5, 1e6,
      1764950000, -3, 0.1 + 0.2 }
    for _, v in ipairs(specials) do
      assert.are.equal(metrics.float(v), core.expo_float(v), tostring(v))
    end
    for _ = 1, 20000 do
      local v = (math.random() - 0.5) * 10 ^ math.random(-320, 300)
      assert.are.equal(metrics.float(v), core.expo_float(v),
        string.format("%.17g", v))
      local i = math.random(-2 ^ 40, 2 ^ 40) + 0.0
      assert.are.equal(string.format("%d", math.tointeger(i)),
        core.expo_number(i))
    end
    for _ = 1, 5000 do
      local t = {}
      for k = 1, math.random(0, 12) do t[k] = string.char(math.random(0, 255)) end
      local v = table.concat(t)
      assert.are.equal(metrics.escape(v), core.expo_escape(v), ("%q"):format(v))
    end
    for _, v in ipairs { "é€😀", "a\"b\\c\nd\1e\127", "\237\160\128",
        "\192\175", "\244\144\128\128", "\255", "" } do
      assert.are.equal(metrics.escape(v), core.expo_escape(v), ("%q"):format(v))
    end
  end)
end)

-- The series of declared probes, written by the C core from each probe's
-- worker (src/expo.c): real probes against loopback servers, run until
-- each has run, then rendered.  Values that cannot be known in advance
-- (durations, phases) are checked against the probe's own last result.
describe("sonde.metrics.render of declared probes", function()
  local metrics = require "sonde.metrics"
  local config = require "sonde.config"
  local core = require "sonde.core"
  before_each(helpers.fresh)
  after_each(function()
    helpers.fresh()
    helpers.stop_fixtures()
    helpers.stop_grpc_servers()
    helpers.stop_s_servers()
  end)

  -- a value as the exposition prints it (integral below 2^53: integer)
  local function num(v)
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", math.tointeger(v))
    end
    return metrics.float(v)
  end
  local function has(text, line)
    assert.is_truthy(helpers.has_line(text, line),
      line .. "\n--- in:\n" .. text)
  end
  -- every series once
  local function unique(text)
    local seen = {}
    for line in text:gmatch("[^\n]+") do
      if not line:find("^#") then
        local series = line:match("^(.-) [^ ]+$")
        assert.is_nil(seen[series], series)
        seen[series] = true
      end
    end
  end
  local function tcp(name, port, extra)
    local s = { name = name, period = 60, initial_delay = 0.01, timeout = 2,
      tcp_socket = { host = "127.0.0.1", port = port } }
    for k, v in pairs(extra or {}) do s[k] = v end
    return sonde.probe(s)
  end

  it("probes whose names print alike once escaped: each series once, the "
    .. "first probe's; the other is left out, with a warning", function()
    local web = helpers.fixture {}
    local closed = helpers.closed_port()
    local a = tcp("a\255", web.port)
    local a2 = tcp("a\254", closed)
    local b = tcp("b", web.port)
    local cfg = config.ambient()
    run_until_ran { a, a2, b }
    local log = helpers.capture()
    local ok, text = pcall(metrics.render, cfg)
    local clash, logged = log:events("metrics_name_clash"), log:text()
    log:close()
    assert(ok, text)
    local al = 'probe="a\239\191\189",kind="readiness",target="127.0.0.1:'
      .. web.port .. '",instance="127.0.0.1:' .. web.port .. '"'
    has(text, "probe_success{" .. al .. "} 1")
    -- the second probe's series are all left out
    assert.is_nil(text:find(":" .. closed .. '"', 1, true), text)
    local n = 0
    for _ in text:gmatch('\nprobe_success{probe="a\239\191\189"') do
      n = n + 1
    end
    assert.are.equal(1, n, text)
    has(text, 'probe_success{probe="b",kind="readiness",target="127.0.0.1:'
      .. web.port .. '",instance="127.0.0.1:' .. web.port .. '"} 1')
    unique(text)
    assert.are.equal(1, #clash, logged)
    assert.are.equal("a\239\191\189", clash[1].probe)
    -- told once: not again at the next scrape
    log = helpers.capture()
    local again = metrics.render(cfg)
    assert.are.equal(0, #log:events("metrics_name_clash"))
    log:close()
    assert.is_nil(again:find(":" .. closed .. '"', 1, true), again)
  end)

  it("a probe whose name the escaping changes, declared again by a new "
    .. "load (the old one not yet collected): its series, no clash",
    function()
    local keep = {}                  -- the old loads' probes stay alive
    for i, period in ipairs { 60, 30, 20 } do
      helpers.fresh()
      local log = helpers.capture()
      keep[i] = sonde.probe { name = "a\255", period = period,
        exec = { command = { "true" } } }
      local text = metrics.render(config.ambient())
      local clash = log:events("metrics_name_clash")
      log:close()
      has(text, 'sonde_probe_state{probe="a\239\191\189",kind="readiness",'
        .. 'state="failure"} 1')
      assert.are.equal(0, #clash)
    end
  end)

  it("a gRPC probe over TLS: the TLS series beside the gRPC ones (from the "
    .. "result's TLS facts, whatever the handler)", function()
    local pki = helpers.pki(helpers.scratch())
    local gt = helpers.grpc_server { "--status", "=SERVING", "--cert",
      pki.good.cert, "--key", pki.good.key }
    local gp = helpers.grpc_server { "--status", "=SERVING" }
    local api = sonde.probe { name = "api", period = 60, initial_delay = 0.01, timeout = 5,
      grpc = { host = "127.0.0.1", port = gt.port,
        tls = { verify = true, ca_file = pki.ca } } }
    local plain = sonde.probe { name = "plain", period = 60, initial_delay = 0.01, timeout = 5,
      grpc = { host = "127.0.0.1", port = gp.port } }
    local cfg = config.ambient()
    run_until_ran({ api, plain }, 1, 30)
    local r = api.last_result
    assert.are.equal("success", r.status, r.output)
    assert.is_table(r.tls)
    local text = metrics.render(cfg)
    local pl = 'probe="api",kind="readiness",target="127.0.0.1:' .. gt.port
      .. '",instance="127.0.0.1:' .. gt.port .. '"'
    local expiry = helpers.not_after(pki.good.cert)
    local t = r.tls
    for _, line in ipairs {
      "probe_ssl_earliest_cert_expiry{" .. pl .. "} " .. num(expiry),
      "probe_ssl_last_chain_expiry_timestamp_seconds{" .. pl .. "} "
        .. num(t.last_chain_expiry),
      "probe_ssl_last_chain_info{" .. pl .. ',fingerprint_sha256="'
        .. t.fingerprint_sha256 .. '",subject="' .. metrics.escape(t.subject)
        .. '",issuer="' .. metrics.escape(t.issuer) .. '",subjectalternative="'
        .. table.concat(t.dns_names, ",") .. '",serialnumber="' .. t.serial
        .. '"} 1',
      "probe_tls_version_info{" .. pl .. ',version="' .. t.version .. '"} 1',
      "probe_tls_cipher_info{" .. pl .. ',cipher="' .. t.cipher .. '"} 1',
      "probe_grpc_status_code{" .. pl .. "} 0",
      "probe_grpc_healthcheck_response{" .. pl
        .. ',serving_status="SERVING"} 1',
      "probe_ip_protocol{" .. pl .. "} 4",
    } do
      has(text, line)
    end
    assert.is_truthy(t.subject:find("good.sonde.test", 1, true), t.subject)
    assert.are.equal(expiry, t.earliest_expiry)
    has(text, 'probe_grpc_status_code{probe="plain",kind="readiness",target='
      .. '"127.0.0.1:' .. gp.port .. '",instance="127.0.0.1:' .. gp.port
      .. '"} 0')
    for _, fam in ipairs { "probe_ssl_earliest_cert_expiry",
        "probe_ssl_last_chain_info", "probe_tls_version_info",
        "probe_tls_cipher_info", "probe_ssl_last_chain_expiry_timestamp_seconds" } do
      assert.is_nil(text:find("\n" .. fam .. '{probe="plain"', 1, true), text)
    end
    unique(text)
  end)

  it("the same text, series for series, when rendered again (the probes "
    .. "stopped)", function()
    local web = helpers.fixture {}
    local x = tcp("x", helpers.closed_port())
    local y = tcp("y", web.port)
    local cfg = config.ambient()
    run_until_ran { x, y }
    x.worker:stop()
    y.worker:stop()
    local a = metrics.render(cfg):gsub("process_[^\n]*\n", "")
    local b = metrics.render(cfg):gsub("process_[^\n]*\n", "")
    assert.are.equal(a, b)
    local st = x.stats
    assert.is_true(st.counts.failure >= 1)
    local xl = 'probe="x",kind="readiness",target="127.0.0.1:'
    assert.is_truthy(a:find("\nsonde_probe_runs_total{" .. xl .. "%d+\","
      .. 'instance="127.0.0.1:%d+",status="failure"} ' .. st.counts.failure
      .. "\n"), a)
    assert.is_truthy(a:find("\nsonde_probe_run_duration_seconds_count{" .. xl
      .. '%d+",instance="127.0.0.1:%d+"} ' .. st.n .. "\n"), a)
    assert.is_truthy(a:find("\nsonde_probe_run_duration_seconds_sum{" .. xl
      .. '%d+",instance="127.0.0.1:%d+"} ' .. num(st.sum):gsub("%p", "%%%0")
      .. "\n"), a)
    unique(a)
  end)

  it("probe_success is the last run's outcome (success or warning: 1), "
    .. "whatever the state; none before the first run", function()
    local closed = helpers.closed_port()
    -- failing, but not enough times to publish failure (a liveness
    -- probe starts at success)
    local a = sonde.probe { name = "a", kind = "liveness", period = 60,
      initial_delay = 0.01, failure_threshold = 5,
      exec = { command = { "sh", "-c", "echo down; exit 2" },
        codes = "nagios" } }
    -- a warning (success) that is not enough to publish success (a
    -- readiness probe starts at failure)
    local b = sonde.probe { name = "b", period = 60, initial_delay = 0.01,
      success_threshold = 3,
      exec = { command = { "sh", "-c", "echo WARNING - slow; exit 1" },
        codes = "nagios" } }
    local c = sonde.probe { name = "c", period = 60, initial_delay = 0.01,
      exec = { command = { "sh", "-c", "echo UNKNOWN - what; exit 3" },
        codes = "nagios" } }
    local d = sonde.probe { name = "d", period = 60, initial_delay = 3600,
      tcp_socket = { host = "127.0.0.1", port = closed } }
    local cfg = config.ambient()
    run_until_ran { a, b, c }
    assert.are.same({ "failure", "warning", "unknown" },
      { a.last_result.status, b.last_result.status, c.last_result.status })
    assert.are.equal(0, d.runs)
    assert.are.equal("success", a.state)
    assert.are.equal("failure", b.state)
    local text = metrics.render(cfg)
    local function l(n)
      return '{probe="' .. n .. '",kind="' .. (n == "a" and "liveness"
        or "readiness") .. '"'
    end
    has(text, "probe_success" .. l("a") .. "} 0")
    has(text, "sonde_probe_state" .. l("a") .. ',state="' .. a.state .. '"} 1')
    has(text, "sonde_probe_state" .. l("a") .. ',state="failure"} 0')
    has(text, "probe_success" .. l("b") .. "} 1")
    has(text, "sonde_probe_state" .. l("b") .. ',state="success"} 0')
    has(text, "sonde_probe_state" .. l("b") .. ',state="' .. b.state .. '"} 1')
    has(text, "probe_success" .. l("c") .. "} 0")
    assert.is_nil(text:find('probe_success{probe="d"', 1, true), text)
    assert.is_nil(text:find('probe_duration_seconds{probe="d"', 1, true), text)
    has(text, 'sonde_probe_state{probe="d",kind="readiness",target="127.0.0.1:'
      .. closed .. '",instance="127.0.0.1:' .. closed .. '",state="'
      .. d.state .. '"} 1')
    has(text, "probe_duration_seconds" .. l("b") .. "} "
      .. num(b.last_result.duration))
  end)

  it("bucket bounds print as Prometheus does: le=\"0.005\", le=\"1\"; "
    .. "counts as the worker's", function()
    local web = helpers.fixture {}
    local h = tcp("h", web.port)
    local cfg = config.ambient()
    run_until_ran { h }
    local text = metrics.render(cfg)
    local hl = 'probe="h",kind="readiness",target="127.0.0.1:' .. web.port
      .. '",instance="127.0.0.1:' .. web.port .. '"'
    local st = h.stats
    local les = { "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
      "0.5", "1", "2.5", "5", "10" }
    assert.are.equal(#les, #core.DURATION_BUCKETS)
    for i, b in ipairs(les) do
      has(text, "sonde_probe_run_duration_seconds_bucket{" .. hl .. ',le="'
        .. b .. '"} ' .. st.buckets[i])
    end
    has(text, "sonde_probe_run_duration_seconds_bucket{" .. hl
      .. ',le="+Inf"} ' .. st.n)
    assert.is_true(st.buckets[#les] >= 1)
    assert.is_nil(text:find("0000000", 1, true), text)
  end)

  it("target and instance: the URL (password masked), host:port ([v6])",
    function()
    local v6 = helpers.fixture { host = "::1" }
    local closed = helpers.closed_port()
    local url = "http://u:pw@127.0.0.1:" .. closed .. "/x?y=1"
    local w = sonde.probe { name = "w", period = 60, initial_delay = 0.01, timeout = 2,
      http_get = { url = url } }
    local t = sonde.probe { name = "t", period = 60, initial_delay = 0.01, timeout = 2,
      tcp_socket = { host = "::1", port = v6.port } }
    local g = sonde.probe { name = "g", period = 60, initial_delay = 0.01, timeout = 2,
      grpc = { host = "127.0.0.1", port = closed } }
    local e = sonde.probe { name = "e", period = 60, initial_delay = 0.01,
      exec = { command = { "true" } } }
    local cfg = config.ambient()
    run_until_ran { w, t, g, e }
    local text = metrics.render(cfg)
    local masked = "http://u:xxxxx@127.0.0.1:" .. closed .. "/x?y=1"
    has(text, 'sonde_probe_state{probe="w",kind="readiness",target="' .. masked
      .. '",instance="' .. masked .. '",state="' .. w.state .. '"} 1')
    has(text, 'probe_success{probe="t",kind="readiness",target="[::1]:'
      .. v6.port .. '",instance="[::1]:' .. v6.port .. '"} 1')
    has(text, 'probe_ip_protocol{probe="t",kind="readiness",target="[::1]:'
      .. v6.port .. '",instance="[::1]:' .. v6.port .. '"} 6')
    has(text, 'sonde_probe_state{probe="g",kind="readiness",target='
      .. '"127.0.0.1:' .. closed .. '",instance="127.0.0.1:' .. closed
      .. '",state="' .. g.state .. '"} 1')
    has(text, 'sonde_probe_state{probe="e",kind="readiness",state="'
      .. e.state .. '"} 1')
    assert.is_nil(text:find("pw", 1, true), text)
  end)

  it("user labels on every series of the probe (perfdata too); instance "
    .. "given replaces the target's, \"\" drops it", function()
    local pki = helpers.pki(helpers.scratch())
    local tls = helpers.s_server { cert = pki.good }
    local web = helpers.fixture {}
    local url = "https://127.0.0.1:" .. tls.port .. "/"
    local w = sonde.probe { name = "w", period = 60, initial_delay = 0.01, timeout = 5,
      labels = { team = "web", zone = 'a"b', instance = "frontend" },
      http_get = { url = url, tls = { verify = true, ca_file = pki.ca } } }
    local x = tcp("x", web.port, { labels = { instance = "" } })
    local n = sonde.probe { name = "n", period = 60, initial_delay = 0.01, labels = { team = "ops" },
      exec = { command = { "sh", "-c",
        "echo 'OK - fine | time=1s;2;3;0;10 load=0.5'" }, codes = "nagios" } }
    local cfg = config.ambient()
    run_until_ran { w, x, n }
    assert.are.equal("success", w.last_result.status, w.last_result.output)
    local text = metrics.render(cfg)
    local wl = 'probe="w",kind="readiness",target="' .. url .. '",'
      .. 'instance="frontend",team="web",zone="a\\"b"'
    local lines = 0
    for line in text:gmatch("[^\n]+") do
      if line:find('probe="w"', 1, true) then
        lines = lines + 1
        assert.is_truthy(line:find(wl, 1, true), line)
      end
    end
    assert.is_true(lines > 20, text)
    has(text, "probe_success{" .. wl .. "} 1")
    has(text, "probe_http_status_code{" .. wl .. "} 200")
    has(text, "probe_tls_version_info{" .. wl .. ',version="'
      .. w.last_result.tls.version .. '"} 1')
    has(text, 'probe_success{probe="x",kind="readiness",target="127.0.0.1:'
      .. web.port .. '"} 1')
    local nl = 'probe="n",label="time",uom="s",team="ops"'
    has(text, "sonde_perfdata{" .. nl .. "} 1")
    has(text, "sonde_perfdata_warn{" .. nl .. "} 2")
    has(text, "sonde_perfdata_crit{" .. nl .. "} 3")
    has(text, "sonde_perfdata_min{" .. nl .. "} 0")
    has(text, "sonde_perfdata_max{" .. nl .. "} 10")
    has(text, 'sonde_perfdata{probe="n",label="load",uom="",team="ops"} 0.5')
    has(text, 'sonde_probe_state{probe="n",kind="readiness",team="ops",'
      .. 'state="success"} 1')
    unique(text)
  end)

  it("HTTP series from the result's phases, sizes, version and TLS; "
    .. "probe_ip_protocol for HTTP, TCP and gRPC", function()
    local pki = helpers.pki(helpers.scratch())
    local tls = helpers.s_server { cert = pki.good }
    local web = helpers.fixture {}
    local grpc = helpers.grpc_server { "--status", "=SERVING" }
    local closed = helpers.closed_port()
    local url = "https://127.0.0.1:" .. tls.port .. "/"
    local w = sonde.probe { name = "w", period = 60, initial_delay = 0.01, timeout = 5,
      http_get = { url = url, tls = { verify = true, ca_file = pki.ca } } }
    local p = sonde.probe { name = "p", period = 60, initial_delay = 0.01, timeout = 5,
      http_get = { url = web:url("/ok") } }
    local f = sonde.probe { name = "f", period = 60, initial_delay = 0.01, timeout = 2,
      http_get = { url = "http://127.0.0.1:" .. closed .. "/" } }
    local h10 = sonde.probe { name = "h10", period = 60, initial_delay = 0.01,
      timeout = 5, http_get = { url = web:url("/http10") } }
    local t = tcp("t", web.port)
    local g = sonde.probe { name = "g", period = 60, initial_delay = 0.01, timeout = 5,
      grpc = { host = "127.0.0.1", port = grpc.port } }
    local cfg = config.ambient()
    run_until_ran({ w, p, f, h10, t, g }, 1, 30)
    local r = w.last_result
    assert.are.equal("success", r.status, r.output)
    local text = metrics.render(cfg)
    local wl = 'probe="w",kind="readiness",target="' .. url .. '",'
      .. 'instance="' .. url .. '"'
    for _, ph in ipairs { "resolve", "connect", "tls", "processing",
        "transfer" } do
      has(text, "probe_http_duration_seconds{" .. wl .. ',phase="' .. ph
        .. '"} ' .. num(r.phases[ph]))
    end
    assert.is_true(r.phases.tls > 0)
    has(text, "probe_dns_lookup_time_seconds{" .. wl .. "} "
      .. num(r.phases.resolve))
    has(text, "probe_http_content_length{" .. wl .. "} "
      .. num(r.content_length))
    has(text, "probe_http_uncompressed_body_length{" .. wl .. "} "
      .. num(r.body_size))
    assert.is_true(r.body_size > 0)
    has(text, "probe_http_redirects{" .. wl .. "} 0")
    has(text, "probe_http_ssl{" .. wl .. "} 1")
    has(text, "probe_http_version{" .. wl .. "} " .. num(r.http_version))
    has(text, "probe_ip_protocol{" .. wl .. "} 4")
    has(text, "probe_ssl_earliest_cert_expiry{" .. wl .. "} "
      .. num(helpers.not_after(pki.good.cert)))
    local pr = p.last_result
    local pl = 'probe="p",kind="readiness",target="' .. web:url("/ok")
      .. '",instance="' .. web:url("/ok") .. '"'
    has(text, "probe_http_version{" .. pl .. "} 1.1")
    has(text, "probe_http_content_length{" .. pl .. "} " .. pr.content_length)
    has(text, "probe_http_ssl{" .. pl .. "} 0")
    has(text, "probe_http_status_code{" .. pl .. "} 200")
    assert.is_nil(text:find("probe_tls_version_info{" .. pl, 1, true), text)
    local fu = "http://127.0.0.1:" .. closed .. "/"
    local fl = 'probe="f",kind="readiness",target="' .. fu .. '",instance="'
      .. fu .. '"'
    has(text, "probe_success{" .. fl .. "} 0")
    has(text, "probe_http_content_length{" .. fl .. "} "
      .. num(f.last_result.content_length))
    has(text, "probe_http_ssl{" .. fl .. "} 0")
    has(text, "probe_http_version{" .. fl .. "} 0")
    has(text, "probe_http_status_code{" .. fl .. "} 0")
    has(text, "probe_ip_protocol{" .. fl .. "} "
      .. num(f.last_result.ip_protocol or 0))
    -- HTTP/1.0 without a Content-Length: -1, version 1
    local hu = web:url("/http10")
    local hl = 'probe="h10",kind="readiness",target="' .. hu .. '",instance="'
      .. hu .. '"'
    has(text, "probe_http_content_length{" .. hl .. "} -1")
    has(text, "probe_http_version{" .. hl .. "} 1")
    has(text, "probe_http_uncompressed_body_length{" .. hl .. "} 11")
    local tl = 'probe="t",kind="readiness",target="127.0.0.1:' .. web.port
      .. '",instance="127.0.0.1:' .. web.port .. '"'
    has(text, "probe_ip_protocol{" .. tl .. "} 4")
    assert.is_nil(text:find("probe_http_version{" .. tl, 1, true), text)
    has(text, 'probe_ip_protocol{probe="g",kind="readiness",target="127.0.0.1:'
      .. grpc.port .. '",instance="127.0.0.1:' .. grpc.port .. '"} 4')
    -- HELP texts are blackbox_exporter's
    has(text, "# HELP probe_http_duration_seconds Duration of http request by "
      .. "phase, summed over all redirects")
    has(text, "# HELP probe_success Displays whether or not the probe was a "
      .. "success")
    unique(text)
  end)
end)

describe("sonde.probe labels validation", function()
  local sonde = require "sonde"
  local helpers = require "helpers"
  before_each(helpers.fresh)
  after_each(helpers.fresh)
  local ok_exec = { command = { "true" } }
  local function probe_err(labels)
    return helpers.error_here(function()
      sonde.probe { name = "l", exec = ok_exec, labels = labels }
    end)
  end

  it("names as Prometheus's, not reserved, values UTF-8 strings", function()
    assert.are.equal('probe "l": labels.team: must be a string, got number',
      probe_err { team = 5 })
    assert.are.equal('probe "l": labels: not a valid label name: "a-b" '
      .. '(Prometheus: [a-zA-Z_][a-zA-Z0-9_]*)', probe_err { ["a-b"] = "x" })
    assert.are.equal('probe "l": labels: not a valid label name: "1a" '
      .. '(Prometheus: [a-zA-Z_][a-zA-Z0-9_]*)', probe_err { ["1a"] = "x" })
    assert.are.equal('probe "l": labels.__x: names starting with __ are '
      .. 'reserved for Prometheus', probe_err { __x = "x" })
    for _, r in ipairs { "probe", "kind", "target", "le", "phase", "state",
        "status" } do
      assert.are.equal('probe "l": labels.' .. r .. ": is reserved: sonde's "
        .. "probe series set it", probe_err { [r] = "x" })
    end
    assert.are.equal('probe "l": labels.job: is reserved: the scrape sets it '
      .. "(Prometheus's job_name)", probe_err { job = "x" })
    assert.are.equal('probe "l": labels: label names must be strings, got '
      .. "number 1", probe_err { "x" })
    assert.are.equal('probe "l": labels.t: must be valid UTF-8',
      probe_err { t = "a\255" })
    assert.are.equal('probe "l": labels: must be a table of label name = '
      .. "value, got string", probe_err "team=web")
    -- accepted: kept as a copy
    local spec = { team = "web", instance = "x", _y = "" }
    local p = sonde.probe { name = "ok", exec = ok_exec, labels = spec }
    spec.team = "changed"
    assert.are.same({ team = "web", instance = "x", _y = "" }, p.labels)
  end)
end)

describe("metrics: module probes (sonde.probe { module = ... })", function()
  local metrics = require "sonde.metrics"
  local config = require "sonde.config"
  local core = require "sonde.core"
  before_each(helpers.fresh)
  after_each(function()
    helpers.fresh()
    helpers.stop_fixtures()
    helpers.stop_s_servers()
  end)

  it("gives each family once, the module's samples with the probe's labels, "
    .. "and no second TLS series from the result's tls facts", function()
    local dir = helpers.scratch()
    local pki = helpers.pki(dir)
    local tls = helpers.s_server { cert = pki.good }
    local web = helpers.fixture {}
    local conf = helpers.write(dir .. "/bb.yml", "modules:\n  web:\n"
      .. "    prober: http\n    http:\n      valid_status_codes: [200]\n"
      .. "      tls_config: { ca_file: " .. pki.ca .. " }\n")
    sonde.blackbox.load(conf)
    local https = "https://127.0.0.1:" .. tls.port .. "/"
    local a = sonde.probe { name = "a", module = sonde.module("web"),
      target = https, period = 60, initial_delay = 0.01, initial_delay = 0.01, labels = { team = "t" } }
    local b = sonde.probe { name = "b", module = sonde.module("web"),
      target = web:url("/status/500"), period = 60,
      initial_delay = 0.01 }
    local cfg = config.ambient()
    run_until_ran({ a, b }, 1, 20)
    assert.are.same({ "success", "failure" },
      { a.last_result.status, b.last_result.status })
    local text = metrics.render(cfg)
    local al = 'probe="a",kind="readiness",target="' .. https
      .. '",instance="' .. https .. '",team="t"'
    local bu = web:url("/status/500")
    local bl = 'probe="b",kind="readiness",target="' .. bu .. '",instance="'
      .. bu .. '"'
    for _, line in ipairs {
      "probe_http_status_code{" .. al .. "} 200",
      "probe_http_status_code{" .. bl .. "} 500",
      "probe_ssl_earliest_cert_expiry{" .. al .. "} "
        .. string.format("%d", helpers.not_after(pki.good.cert)),
      "probe_success{" .. al .. "} 1",
      "probe_success{" .. bl .. "} 0",
      "probe_http_ssl{" .. al .. "} 1",
    } do
      assert.is_truthy(helpers.has_line(text, line), line .. "\n" .. text)
    end
    assert.is_truthy(text:find("\nprobe_http_duration_seconds{" .. al
      .. ',phase="connect"} ', 1, true), text)
    -- each family once, each series once, whole
    local types, seen, current = {}, {}, nil
    for line in text:gmatch("[^\n]+") do
      local fam = line:match("^# TYPE (%S+) ")
      if fam then
        assert.is_nil(types[fam], fam .. "\n" .. text)
        types[fam], current = true, fam
      elseif not line:find("^#") then
        local series, name = line:match("^(.*) [^ ]+$"),
          line:match("^[%w_:]+")
        assert.is_truthy(name == current or name:sub(1, #current + 1)
          == current .. "_", line)
        assert.is_nil(seen[series], series)
        seen[series] = true
      end
    end
    for _, fam in ipairs { "probe_http_status_code", "probe_success",
        "probe_http_duration_seconds", "probe_ssl_earliest_cert_expiry" } do
      assert.is_true(types[fam], fam)
    end
    local _, n = text:gsub("\nprobe_ssl_earliest_cert_expiry{", "")
    assert.are.equal(1, n, text)
    local _, v = text:gsub("\nprobe_tls_version_info{", "")
    assert.is_true(v <= 1, text)
  end)
end)

describe("sonde.probe metrics = { histogram = false }", function()
  local metrics = require "sonde.metrics"
  local config = require "sonde.config"
  local core = require "sonde.core"
  before_each(helpers.fresh)
  after_each(function()
    helpers.fresh()
    helpers.stop_fixtures()
  end)

  it("leaves out exactly that probe's run-duration histogram", function()
    local web = helpers.fixture {}
    local function tcp(name, m)
      return sonde.probe { name = name, period = 60, initial_delay = 0.01, metrics = m,
        tcp_socket = { host = "127.0.0.1", port = web.port } }
    end
    local on, off, dflt = tcp("on", { histogram = true }),
      tcp("off", { histogram = false }), tcp("dflt")
    local cfg = config.ambient()
    run_until_ran { on, off, dflt }
    local text = metrics.render(cfg)
    local by = { on = {}, off = {}, dflt = {} }
    for line in text:gmatch("[^\n]+") do
      local name, probe = line:match('^([%w_]+){probe="(%w+)"')
      if name then by[probe][#by[probe] + 1] = line end
    end
    local function strip(lines, p)
      local out = {}
      for _, l in ipairs(lines) do
        out[#out + 1] = (l:gsub('probe="' .. p .. '"', 'probe="X"')
          :gsub(" [^ ]+$", ""))
      end
      return out
    end
    -- the same series but the histogram's, in the same order
    local want = {}
    for _, l in ipairs(strip(by.on, "on")) do
      if not l:find("^sonde_probe_run_duration_seconds") then
        want[#want + 1] = l
      end
    end
    assert.are.equal(#by.on - 14, #want)
    assert.are.same(want, strip(by.off, "off"))
    assert.are.same(strip(by.on, "on"), strip(by.dflt, "dflt"))
    -- the family is still there (the others have it)
    assert.are.equal(1, select(2, text:gsub(
      "\n# TYPE sonde_probe_run_duration_seconds histogram\n", "")))
    -- and with no probe keeping it, the family's HELP and TYPE stay
    helpers.fresh()
    local lone = tcp("lone", { histogram = false })
    text = metrics.render(config.ambient())
    assert.is_truthy(text:find('sonde_probe_state{probe="lone"', 1, true))
    assert.is_nil(text:find("\nsonde_probe_run_duration_seconds_", 1, true),
      text)
    assert.is_truthy(lone)
  end)

  it("bad values are refused at load, naming the file:line, the field and "
    .. "the reason", function()
    local function err(m)
      return helpers.error_here(function()
        sonde.probe { name = "m", exec = { command = { "true" } },
          metrics = m }
      end)
    end
    assert.are.equal('probe "m": metrics: must be a table ({ histogram = '
      .. 'false }), got boolean', err(false))
    assert.are.equal('probe "m": metrics: must be a table ({ histogram = '
      .. 'false }), got string', err("histogram=false"))
    assert.are.equal('probe "m": metrics.histogram: must be a boolean, got '
      .. 'string', err { histogram = "no" })
    assert.are.equal('probe "m": metrics.histogram: must be a boolean, got '
      .. 'number', err { histogram = 0 })
    assert.are.equal('probe "m": metrics.buckets: unknown field (known: '
      .. 'histogram)', err { buckets = { 1 } })
    assert.are.equal('probe "m": metrics.1: unknown field (known: '
      .. 'histogram)', err { false })
    -- the line is this file's, the one of the declaration
    local _, line = err { histogram = 1 }
    assert.is_true(line > 0)
  end)
end)
