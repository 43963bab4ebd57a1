-- Declared dns probes (sonde.probe { dns = {...} }): run by the C worker,
-- checked at declaration, and blackbox_exporter's dns series on /metrics
-- (lua/sonde/metrics.lua), against Debian's dnsmasq
-- (spec/support/dnsmasq.lua).  The prober itself: spec/core/dns_spec.lua.
local sonde = require "sonde"
local core = require "sonde.core"
local metrics = require "sonde.metrics"
local helpers = require "helpers"

local SOA = "026e73076578616d706c650474657374000a686f73746d6173746572076578616d706c"
  .. "6504746573740078c4253500000e1000000258000151800000012c"   -- serial 2026120501

describe("declared dns probes", function()
  local d

  lazy_setup(function()
    d = helpers.dnsmasq { "--local=/example.test/", "--local-ttl=300",
      "--host-record=www.example.test,127.0.0.5",
      "--mx-host=example.test,mail.example.test,10",
      "--dns-rr=example.test,6," .. SOA }
  end)

  lazy_teardown(function()
    helpers.stop_dnsmasqs()
    assert.is_false(d:alive(), "dnsmasq is still running")
  end)

  before_each(helpers.fresh)
  after_each(function()
    helpers.cleanup_hosts()
    helpers.fresh()
  end)

  it("in this process: the C worker runs it; the last result carries the "
    .. "DNS fields, the log line the rcode", function()
    local p = sonde.probe { name = "www", kind = "readiness", period = 0.2,
      dns = { server = "127.0.0.1:" .. d.port, name = "www.example.test",
        type = "A", validate_answer_rrs = {
          fail_if_not_matches_regexp = { "\\tA\\t127\\.0\\.0\\.5$" } } } }
    local logged = helpers.run_logged(1)
    local runs = helpers.select(logged, "probe_result", { probe = "www" })
    assert.is_true(#runs >= 1)
    assert.are.same({ "success", "NOERROR" }, { runs[1].status, runs[1].rcode })
    local r = p.last_result
    assert.are.same({ "success", "ok", "dns", "NOERROR", 1,
      { "www.example.test.\t300\tIN\tA\t127.0.0.5" } },
      { r.status, r.reason, p.handler, r.rcode, r.answer_rrs, r.answer })
    assert.are.equal("success", p.state)
  end)

  it("under the host: blackbox_exporter's dns series on /metrics",
    function()
    local silent = helpers.silent_udp()
    finally(silent.close)
    local path = helpers.script("dns-probes.lua", ([[
      local sonde = require "sonde"
      sonde.probe { name = "mx", kind = "readiness", period = 0.2,
        dns = { server = "127.0.0.1:%d", name = "example.test", type = "MX" } }
      sonde.probe { name = "soa", kind = "readiness", period = 0.2,
        dns = { server = "127.0.0.1:%d", name = "example.test", type = "SOA",
          transport = "tcp" } }
      sonde.probe { name = "nx", kind = "readiness", period = 0.2,
        dns = { server = "127.0.0.1:%d", name = "nope.example.test" } }
      sonde.probe { name = "silent", kind = "readiness", period = 0.2,
        timeout = 0.1, dns = { server = "127.0.0.1:%d", name = "x.test" } }
    ]]):format(d.port, d.port, d.port, silent.port))
    local h = helpers.host_start { "--log-format", "json", "--listen",
      "127.0.0.1:0", path }
    local ok = h:wait_for(function(x)
      for _, name in ipairs { "mx", "soa", "nx", "silent" } do
        if #x:events("probe_result", { probe = name }) == 0 then
          return false
        end
      end
      return true
    end, 15)
    assert.is_truthy(ok, h:stderr())
    local m = helpers.fetch(helpers.listen_port(h), "/metrics").body
    -- each probe's labels: its target (the server) and instance
    local function L(name, port)
      return ('{probe="%s",kind="readiness",target="127.0.0.1:%d",instance='
        .. '"127.0.0.1:%d"}'):format(name, port, port)
    end
    for _, line in ipairs {
      'probe_dns_answer_rrs' .. L("mx", d.port) .. ' 1',
      'probe_dns_authority_rrs' .. L("mx", d.port) .. ' 0',
      'probe_dns_additional_rrs' .. L("mx", d.port) .. ' 0',
      'probe_dns_query_succeeded' .. L("mx", d.port) .. ' 1',
      'probe_dns_serial' .. L("soa", d.port) .. ' 2026120501',
      'probe_dns_query_succeeded' .. L("nx", d.port) .. ' 1',
      'probe_dns_answer_rrs' .. L("nx", d.port) .. ' 0',
      'probe_success' .. L("nx", d.port) .. ' 0',
      'probe_dns_query_succeeded' .. L("silent", silent.port) .. ' 0',
      'probe_success' .. L("mx", d.port) .. ' 1',
    } do
      assert.is_truthy(helpers.has_line(m, line), line .. "\n" .. m)
    end
    assert.matches('\nprobe_dns_lookup_time_seconds'
      .. L("mx", d.port):gsub("%p", "%%%0") .. ' [%d.e-]+\n', m)
    -- the serial only for an SOA query
    assert.is_nil(m:find('probe_dns_serial{probe="mx"', 1, true), m)
    assert.are.equal(0, h:term(), h:stderr())
    local nx = h:events("probe_result", { probe = "nx" })[1]
    assert.are.same({ "failure", "dns", "NXDOMAIN" },
      { nx.status, nx.reason, nx.rcode })
    local sil = h:events("probe_result", { probe = "silent" })[1]
    assert.are.same({ "failure", "timeout" }, { sil.status, sil.reason })
  end)

  it("at declaration: the field's name and reason, at the script's line",
    function()
    for _, c in ipairs {
      { { server = "dns.example", name = "x" },
        'probe "bad": dns.server: must be an IP address' },
      { { server = "127.0.0.1", name = "x", timeout = 2 },
        'probe "bad": dns.timeout: is set on the probe' },
      { { server = "127.0.0.1" }, 'probe "bad": dns.name: is required' },
      { { server = "127.0.0.1", name = "x", validate_answer_rrs = {
          fail_if_matches_regexp = { "(?m)^x" } } },
        'probe "bad": dns.validate_answer_rrs.fail_if_matches_regexp[1]: '
          .. 'regexp "(?m)^x": the multi-line flag (?m) is not supported' },
    } do
      local msg, line = helpers.error_here(function()
        sonde.probe { name = "bad", dns = c[1] }
      end)
      assert.is_truthy(msg:find(c[2], 1, true), msg)
      assert.is_number(line)
    end
    local msg = helpers.error_here(function()
      sonde.probe { name = "two", dns = { server = "127.0.0.1", name = "x" },
        tcp_socket = { port = 1 } }
    end)
    assert.is_truthy(msg:find("may not specify more than 1 handler type", 1,
      true), msg)
  end)
end)

describe("metrics: the dns block", function()
  local metrics = require "sonde.metrics"
  local config = require "sonde.config"
  local d

  lazy_setup(function()
    d = helpers.dnsmasq { "--local=/example.test/", "--local-ttl=300",
      "--host-record=www.example.test,127.0.0.5",
      "--host-record=www.example.test,127.0.0.6",
      "--dns-rr=example.test,6," .. SOA }
  end)
  lazy_teardown(helpers.stop_dnsmasqs)
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  it("a reply's counts; zeros and query_succeeded 0 without one; the "
    .. "serial only for SOA queries answered; nothing before a run",
    function()
    local silent = helpers.silent_udp()
    finally(silent.close)
    local function dns(name, spec, extra)
      local s = { name = name, kind = "readiness", period = 60,
        initial_delay = 0.01, timeout = 0.2, dns = spec }
      for k, v in pairs(extra or {}) do s[k] = v end
      return sonde.probe(s)
    end
    local server = "127.0.0.1:" .. d.port
    local a = dns("a", { server = server, name = "www.example.test",
      type = "A" })
    local t = dns("t", { server = "127.0.0.1:" .. silent.port, name = "x.test" })
    local s = dns("s", { server = server, name = "example.test",
      type = "SOA" })
    dns("fresh", { server = server, name = "x.test" },
      { initial_delay = 3600 })
    local cfg = config.ambient()
    helpers.run_until_ran { a, t, s }
    local text = metrics.render(cfg)
    local function L(name, port)
      return ('{probe="%s",kind="readiness",target="127.0.0.1:%d",instance='
        .. '"127.0.0.1:%d"}'):format(name, port, port)
    end
    local ra, rs = a.last_result, s.last_result
    for _, line in ipairs {
      "probe_dns_lookup_time_seconds" .. L("a", d.port) .. " "
        .. metrics.float(ra.lookup_time),
      "probe_dns_answer_rrs" .. L("a", d.port) .. " 2",
      "probe_dns_authority_rrs" .. L("a", d.port) .. " 0",
      "probe_dns_additional_rrs" .. L("a", d.port) .. " 0",
      "probe_dns_query_succeeded" .. L("a", d.port) .. " 1",
      "probe_dns_answer_rrs" .. L("t", silent.port) .. " 0",
      "probe_dns_query_succeeded" .. L("t", silent.port) .. " 0",
      "probe_dns_serial" .. L("s", d.port) .. " 2026120501",
      "probe_dns_query_succeeded" .. L("s", d.port) .. " 1",
      "# TYPE probe_dns_serial gauge",
    } do
      assert.is_truthy(helpers.has_line(text, line), line .. "\n" .. text)
    end
    assert.are.equal(2, ra.answer_rrs)
    assert.are.equal(2026120501, rs.serial)
    -- the serial only for an SOA query; nothing of a probe before its run
    assert.is_nil(text:find('probe_dns_serial{probe="a"', 1, true), text)
    assert.is_nil(text:find('probe_dns_serial{probe="t"', 1, true), text)
    assert.is_nil(text:find('probe_dns_[a-z_]+{probe="fresh"'), text)
    assert.is_nil(text:find('probe_success{probe="fresh"', 1, true), text)
  end)
end)
