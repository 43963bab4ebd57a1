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
      state = "success", last_result = { duration = 0.01 },
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
