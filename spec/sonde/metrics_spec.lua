-- sonde.metrics: the registry's checks of script-defined series
-- (sonde.metrics.gauge / counter), in this process.  The exposition text
-- as served is in spec/sonde/endpoints_spec.lua.
local sonde = require "sonde"
local helpers = require "helpers"

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

describe("sonde.metrics.render", function()
  local metrics = require "sonde.metrics"
  local core = require "sonde.core"
  -- a probe as render reads it: `stats` in the shape of the C worker's
  local function probe(name)
    local buckets = {}
    for i = 1, #core.DURATION_BUCKETS do buckets[i] = 0 end
    return { name = name, kind = "readiness", handler = "exec",
      state = "success", last_result = { duration = 0.01,
        status = "success" },
      stats = { counts = { success = 0, warning = 0, failure = 0,
        unknown = 0 }, buckets = buckets, sum = 0, n = 0 } }
  end

  it("probes whose names print alike once escaped: each series once, the "
    .. "first probe's", function()
    local text = metrics.render({ services = {}, probes = {
      probe("a\255"), probe("a\254"), probe("a\239\191\189"), probe("b") } })
    local n = 0
    for _ in text:gmatch('\nprobe_success{probe="a\239\191\189",kind="readiness"} 1') do
      n = n + 1
    end
    assert.are.equal(1, n, text)
    assert.is_truthy(text:find('\nprobe_success{probe="b",kind="readiness"} 1',
      1, true))
    -- every series once
    local seen = {}
    for line in text:gmatch("[^\n]+") do
      if not line:find("^#") then
        local series = line:match("^(.-) [^ ]+$")
        assert.is_nil(seen[series], series)
        seen[series] = true
      end
    end
  end)

  it("a gRPC probe whose last result came over TLS: the TLS series "
    .. "beside the gRPC ones (keyed on result.tls, whatever the handler)",
    function()
    local g = probe("api")
    g.handler = "grpc"
    g.last_result = { duration = 0.01, status = "success", grpc_status = 0,
      serving_status = "SERVING", tls = { earliest_expiry = 1804258986,
        last_chain_expiry = 1804258986, verified = true,
        subject = "CN=api", issuer = "CN=ca", dns_names = { "api", "b" },
        serial = "1000", fingerprint_sha256 = "ab12", version = "TLS 1.3",
        cipher = "TLS_AES_128_GCM_SHA256" } }
    local plain = probe("plain")
    plain.handler = "grpc"
    plain.last_result = { duration = 0.01, status = "success",
      grpc_status = 0, serving_status = "SERVING" }
    local text = metrics.render({ services = {}, probes = { g, plain } })
    local pl = 'probe="api",kind="readiness"'
    for _, line in ipairs {
      "probe_ssl_earliest_cert_expiry{" .. pl .. "} 1804258986",
      "probe_ssl_last_chain_expiry_timestamp_seconds{" .. pl
        .. "} 1804258986",
      "probe_ssl_last_chain_info{" .. pl .. ',fingerprint_sha256="ab12",'
        .. 'subject="CN=api",issuer="CN=ca",subjectalternative="api,b",'
        .. 'serialnumber="1000"} 1',
      "probe_tls_version_info{" .. pl .. ',version="TLS 1.3"} 1',
      "probe_tls_cipher_info{" .. pl .. ',cipher="TLS_AES_128_GCM_SHA256"} 1',
      "probe_grpc_status_code{" .. pl .. "} 0",
    } do
      assert.is_truthy(text:find("\n" .. line .. "\n", 1, true),
        line .. "\n" .. text)
    end
    assert.is_nil(text:find('probe_ssl_earliest_cert_expiry{probe="plain"',
      1, true), text)
    assert.is_nil(text:find('probe_tls_version_info{probe="plain"', 1, true),
      text)
  end)

  it("the same text, series for series, when rendered again (label sets "
    .. "are kept per probe)", function()
    local ps = { probe("x"), probe("y") }
    -- one failure of 0.2 s, as the worker counts it
    local st = ps[1].stats
    st.counts.failure, st.sum, st.n = 1, 0.2, 1
    for i, b in ipairs(core.DURATION_BUCKETS) do
      if 0.2 <= b then st.buckets[i] = 1 end
    end
    local a = metrics.render({ services = {}, probes = ps }):gsub("process_[^\n]*\n", "")
    local b = metrics.render({ services = {}, probes = ps }):gsub("process_[^\n]*\n", "")
    assert.are.equal(a, b)
    assert.is_truthy(a:find('sonde_probe_runs_total{probe="x",kind="readiness",'
      .. 'status="failure"} 1', 1, true), a)
    assert.is_truthy(a:find('sonde_probe_run_duration_seconds_bucket{probe="x",'
      .. 'kind="readiness",le="0.25"} 1', 1, true), a)
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
end)

describe("sonde.metrics.render of declared probes", function()
  local metrics = require "sonde.metrics"
  local core = require "sonde.core"
  local function probe(name, handler, opts, last)
    local buckets = {}
    for i = 1, #core.DURATION_BUCKETS do buckets[i] = 0 end
    return { name = name, kind = "readiness", handler = handler or "exec",
      opts = opts, state = "success", last_result = last,
      stats = { counts = { success = 0, warning = 0, failure = 0,
        unknown = 0 }, buckets = buckets, sum = 0, n = 0 } }
  end
  local function render(ps)
    return metrics.render { services = {}, probes = ps }
  end
  local function has(text, line)
    assert.is_truthy(text:find("\n" .. line .. "\n", 1, true),
      line .. "\n--- in:\n" .. text)
  end

  it("probe_success is the last run's outcome (success or warning: 1), "
    .. "whatever the state; none before the first run", function()
    local a = probe("a", nil, nil, { status = "failure", duration = 0.1 })
    local b = probe("b", nil, nil, { status = "warning", duration = 0.1 })
    b.state = "failure"
    local c = probe("c", nil, nil, { status = "unknown", duration = 0.1 })
    local d = probe("d")                    -- never ran
    local text = render { a, b, c, d }
    has(text, 'probe_success{probe="a",kind="readiness"} 0')
    has(text, 'sonde_probe_state{probe="a",kind="readiness",state="success"} 1')
    has(text, 'probe_success{probe="b",kind="readiness"} 1')
    has(text, 'sonde_probe_state{probe="b",kind="readiness",state="failure"} 1')
    has(text, 'probe_success{probe="c",kind="readiness"} 0')
    assert.is_nil(text:find('probe_success{probe="d"', 1, true), text)
    has(text, 'sonde_probe_state{probe="d",kind="readiness",state="success"} 1')
  end)

  it("bucket bounds print as Prometheus does: le=\"0.005\", le=\"1\"",
    function()
    local text = render { probe("h") }
    for _, b in ipairs { "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
        "0.5", "1", "2.5", "5", "10", "+Inf" } do
      has(text, 'sonde_probe_run_duration_seconds_bucket{probe="h",'
        .. 'kind="readiness",le="' .. b .. '"} 0')
    end
    assert.is_nil(text:find("0000000", 1, true), text)
  end)

  it("target and instance: the URL (password masked), host:port ([v6])",
    function()
    local w = probe("w", "http_get", { url = "https://u:pw@example.test:8443/x?y=1" })
    local t = probe("t", "tcp_socket", { host = "::1", port = 5432 })
    local g = probe("g", "grpc", { host = "127.0.0.1", port = 50051 })
    local e = probe("e", "exec", { command = { "true" } })
    local text = render { w, t, g, e }
    has(text, 'sonde_probe_state{probe="w",kind="readiness",target='
      .. '"https://u:xxxxx@example.test:8443/x?y=1",instance='
      .. '"https://u:xxxxx@example.test:8443/x?y=1",state="success"} 1')
    has(text, 'sonde_probe_state{probe="t",kind="readiness",target="[::1]:5432",'
      .. 'instance="[::1]:5432",state="success"} 1')
    has(text, 'sonde_probe_state{probe="g",kind="readiness",target='
      .. '"127.0.0.1:50051",instance="127.0.0.1:50051",state="success"} 1')
    has(text, 'sonde_probe_state{probe="e",kind="readiness",state="success"} 1')
    assert.is_nil(text:find("pw", 1, true), text)
  end)

  it("user labels on every series of the probe; instance given replaces "
    .. "the target's, \"\" drops it", function()
    local w = probe("w", "http_get", { url = "http://127.0.0.1:1/" },
      { status = "success", duration = 0.5, http_status = 200,
        tls = { earliest_expiry = 1800000000, version = "TLS 1.3",
          cipher = "C", dns_names = {} } })
    w.labels = { team = "web", zone = 'a"b', instance = "frontend" }
    local x = probe("x", "tcp_socket", { host = "127.0.0.1", port = 9 },
      { status = "success", duration = 0.5 })
    x.labels = { instance = "" }
    local n = probe("n", "exec", nil, { status = "success", duration = 0,
      perfdata = { { label = "time", value = 1, uom = "s" } } })
    n.labels = { team = "ops" }
    local text = render { w, x, n }
    local wl = 'probe="w",kind="readiness",target="http://127.0.0.1:1/",'
      .. 'instance="frontend",team="web",zone="a\\"b"'
    for line in text:gmatch("[^\n]+") do
      if line:find('probe="w"', 1, true) then
        assert.is_truthy(line:find(wl, 1, true), line)
      end
    end
    has(text, "probe_success{" .. wl .. "} 1")
    has(text, "probe_http_status_code{" .. wl .. "} 200")
    has(text, "probe_tls_version_info{" .. wl .. ',version="TLS 1.3"} 1')
    has(text, 'probe_success{probe="x",kind="readiness",target="127.0.0.1:9"} 1')
    has(text, 'sonde_perfdata{probe="n",label="time",uom="s",team="ops"} 1')
    has(text, 'sonde_probe_state{probe="n",kind="readiness",team="ops",'
      .. 'state="success"} 1')
  end)

  it("HTTP series from the result's phases, sizes, version and TLS; "
    .. "probe_ip_protocol for HTTP, TCP and gRPC", function()
    local w = probe("w", "http_get", { url = "https://127.0.0.1:1/" },
      { status = "success", duration = 0.5, http_status = 200, redirects = 2,
        phases = { resolve = 0.001, connect = 0.002, tls = 0.003,
          processing = 0.004, transfer = 0.005 }, http_version = 1.1,
        content_length = 1234, body_size = 5678, ip_protocol = 6,
        tls = { version = "TLS 1.3", cipher = "C", dns_names = {} } })
    local f = probe("f", "http_get", { url = "http://127.0.0.1:1/" },
      { status = "failure", duration = 0.5, http_version = 0,
        content_length = -1, body_size = 0, ip_protocol = 0,
        phases = { resolve = 0.001, connect = 0, tls = 0, processing = 0,
          transfer = 0 } })
    local t = probe("t", "tcp_socket", { host = "127.0.0.1", port = 9 },
      { status = "success", duration = 0.5, ip_protocol = 4 })
    local text = render { w, f, t }
    local wl = 'probe="w",kind="readiness",target="https://127.0.0.1:1/",'
      .. 'instance="https://127.0.0.1:1/"'
    for _, c in ipairs { { "resolve", "0.001" }, { "connect", "0.002" },
        { "tls", "0.003" }, { "processing", "0.004" },
        { "transfer", "0.005" } } do
      has(text, "probe_http_duration_seconds{" .. wl .. ',phase="' .. c[1]
        .. '"} ' .. c[2])
    end
    has(text, "probe_dns_lookup_time_seconds{" .. wl .. "} 0.001")
    has(text, "probe_http_content_length{" .. wl .. "} 1234")
    has(text, "probe_http_uncompressed_body_length{" .. wl .. "} 5678")
    has(text, "probe_http_redirects{" .. wl .. "} 2")
    has(text, "probe_http_ssl{" .. wl .. "} 1")
    has(text, "probe_http_version{" .. wl .. "} 1.1")
    has(text, "probe_ip_protocol{" .. wl .. "} 6")
    local fl = 'probe="f",kind="readiness",target="http://127.0.0.1:1/",'
      .. 'instance="http://127.0.0.1:1/"'
    has(text, "probe_success{" .. fl .. "} 0")
    has(text, "probe_http_content_length{" .. fl .. "} -1")
    has(text, "probe_http_ssl{" .. fl .. "} 0")
    has(text, "probe_http_version{" .. fl .. "} 0")
    has(text, "probe_ip_protocol{" .. fl .. "} 0")
    has(text, 'probe_ip_protocol{probe="t",kind="readiness",target='
      .. '"127.0.0.1:9",instance="127.0.0.1:9"} 4')
    assert.is_nil(text:find('probe_http_version{probe="t"', 1, true), text)
    -- HELP texts are blackbox_exporter's
    has(text, "# HELP probe_http_duration_seconds Duration of http request by "
      .. "phase, summed over all redirects")
    assert.is_truthy(text:find("# HELP probe_success Displays whether or not "
      .. "the probe was a success\n", 1, true), text)
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
  local core = require "sonde.core"
  local function probe(name, last)
    local buckets = {}
    for i = 1, #core.DURATION_BUCKETS do buckets[i] = 0 end
    return { name = name, kind = "readiness", handler = "check", opts = {},
      state = "success", last_result = last,
      stats = { counts = { success = 1, warning = 0, failure = 0,
        unknown = 0 }, buckets = buckets, sum = 0, n = 1 } }
  end
  local function fams(code)
    return {
      probe_success = { help = "h", type = "gauge", samples = { [""] = 1 } },
      probe_http_status_code = { help = "Response HTTP status code",
        type = "gauge", samples = { [""] = code } },
      probe_http_duration_seconds = { help = "d", type = "gauge", samples = {
        ['{phase="connect"}'] = 0.25, ['{phase="tls"}'] = 0.5 } },
      probe_ssl_earliest_cert_expiry = { help = "e", type = "gauge",
        samples = { [""] = 1800000000 } },
    }
  end

  it("gives each family once, the module's samples with the probe's labels, "
    .. "and no second TLS series from the result's tls facts", function()
    local text = metrics.render({ services = {}, probes = {
      probe("a", { status = "success", duration = 0.1, tls = {
        earliest_expiry = 1, has_earliest_expiry = true, version = "TLS 1.3",
        cipher = "x", dns_names = {} }, blackbox_fams = fams(200) }),
      probe("b", { status = "failure", duration = 0.1,
        blackbox_fams = (function()
          local f = fams(500)
          f.probe_ssl_earliest_cert_expiry = nil      -- plain HTTP
          return f
        end)() }),
    } })
    for _, line in ipairs {
      'probe_http_status_code{probe="a",kind="readiness"} 200',
      'probe_http_status_code{probe="b",kind="readiness"} 500',
      'probe_http_duration_seconds{probe="a",kind="readiness",phase="connect"} 0.25',
      'probe_ssl_earliest_cert_expiry{probe="a",kind="readiness"} 1800000000',
      'probe_success{probe="b",kind="readiness"} 0',
    } do
      assert.is_truthy(helpers.has_line(text, line), line .. "\n" .. text)
    end
    for _, fam in ipairs { "probe_http_status_code", "probe_success",
        "probe_http_duration_seconds", "probe_ssl_earliest_cert_expiry" } do
      local _, n = text:gsub("\n# TYPE " .. fam .. " ", "")
      assert.are.equal(1, n, fam .. "\n" .. text)
    end
    local _, n = text:gsub("\nprobe_ssl_earliest_cert_expiry{", "")
    assert.are.equal(1, n, text)
    assert.is_nil(text:find("probe_tls_version_info", 1, true), text)
  end)
end)
