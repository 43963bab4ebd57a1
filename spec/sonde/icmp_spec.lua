-- The `icmp = {...}` handler of declared probes (lua/sonde/probe.lua, run
-- by the C worker: src/worker.c) and its series on /metrics
-- (lua/sonde/metrics.lua, blackbox_exporter 0.23's icmp prober's names).
-- Loopback only (127.0.0.1).
local sonde = require "sonde"
local config = require "sonde.config"
local metrics = require "sonde.metrics"
local helpers = require "helpers"

local PROMTOOL = "/usr/bin/promtool"

local function probe_err(spec)
  return helpers.error_here(function() sonde.probe(spec) end)
end

-- The one sample of `series` (name and labels as printed) in text.
local function sample(text, series)
  local v = text:match("\n" .. series:gsub("%p", "%%%0") .. " ([^\n]+)\n")
  return v and tonumber(v)
end

describe("sonde.probe with icmp", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  it("runs on its period, in the C worker, and its results carry the icmp "
    .. "fields", function()
    local p = sonde.probe { name = "ping", period = 0.2, timeout = 1,
      icmp = { host = "127.0.0.1", payload_size = 64 } }
    assert.are.equal("icmp", p.handler)
    helpers.run_for(0.7)
    assert.is_true(p.runs >= 2, "runs " .. p.runs)
    assert.are.equal("success", p.state)
    local r = p.last_result
    assert.are.same({ "success", "ok", "127.0.0.1", 4, 64, "ping" },
      { r.status, r.reason, r.remote_addr, r.ip_protocol, r.reply_ttl,
        r.probe })
    assert.is_number(r.rtt)
    assert.is_true(p.stats.n >= 2)
  end)

  it("its series on /metrics: probe_icmp_duration_seconds{phase}, "
    .. "probe_icmp_reply_hop_limit, probe_ip_protocol, probe_ip_addr_hash",
    function()
    sonde.probe { name = "up", period = 0.2, icmp = { host = "127.0.0.1" } }
    sonde.probe { name = "down", period = 0.2,
      icmp = { host = "127.0.0.1", ip_protocol_fallback = false } }
    sonde.probe { name = "shell", period = 0.2, exec = { command = { "true" } } }
    local cfg = config.ambient()
    helpers.run_for(0.5)
    local text = metrics.render(cfg)
    -- (an icmp probe's target is its host: target and instance)
    local up = 'probe="up",kind="readiness",target="127.0.0.1",'
      .. 'instance="127.0.0.1"'
    local down = 'probe="down",kind="readiness",target="127.0.0.1",'
      .. 'instance="127.0.0.1"'
    for _, ph in ipairs { "resolve", "setup", "rtt" } do
      local v = sample(text, "probe_icmp_duration_seconds{" .. up .. ',phase="'
        .. ph .. '"}')
      assert.is_number(v, ph .. "\n" .. text)
      assert.is_true(v >= 0 and v < 1, ph .. " " .. v)
      -- the failed lookup: every phase 0, as blackbox_exporter registers them
      assert.are.equal(0, sample(text, "probe_icmp_duration_seconds{" .. down
        .. ',phase="' .. ph .. '"}'), text)
    end
    assert.are.equal(64, sample(text, "probe_icmp_reply_hop_limit{" .. up .. "}"))
    assert.is_nil(sample(text, "probe_icmp_reply_hop_limit{" .. down .. "}"))
    assert.are.equal(4, sample(text, "probe_ip_protocol{" .. up .. "}"))
    assert.are.equal(0, sample(text, "probe_ip_protocol{" .. down .. "}"))
    assert.are.equal(3668918509,                    -- FNV-1a of 127.0.0.1
      sample(text, "probe_ip_addr_hash{" .. up .. "}"))
    assert.are.equal(1, sample(text, "probe_success{" .. up .. "}"))
    assert.are.equal(0, sample(text, "probe_success{" .. down .. "}"))
    -- nothing of it for the exec probe; each family once
    assert.is_nil(text:find('probe_ip_protocol{probe="shell"', 1, true))
    assert.are.equal(sample(text, "probe_icmp_duration_seconds{" .. up
      .. ',phase="resolve"}'), sample(text, "probe_dns_lookup_time_seconds{"
      .. up .. "}"))
    for _, fam in ipairs { "probe_icmp_duration_seconds",
        "probe_icmp_reply_hop_limit", "probe_ip_protocol", "probe_ip_addr_hash",
        "probe_dns_lookup_time_seconds" } do
      local _, n = text:gsub("# TYPE " .. fam .. " gauge\n", "")
      assert.are.equal(1, n, fam)
    end
    if helpers.sh("test -x " .. PROMTOOL) == 0 then
      local tmp = os.tmpname()
      helpers.write(tmp, text)
      local rc, out = helpers.sh("env -u LD_PRELOAD " .. PROMTOOL
        .. " check metrics < " .. helpers.q(tmp))
      os.remove(tmp)
      assert.are.equal(0, rc, out)
    end
  end)

  it("the host: `sonde once` runs icmp probes, `sonde check` names the "
    .. "file and line of a bad one", function()
    local good = helpers.script("ping.lua", [[
local sonde = require "sonde"
sonde.probe { name = "v4", icmp = { host = "127.0.0.1" } }
sonde.probe { name = "none", icmp = { host = "127.0.0.1",
  ip_protocol_fallback = false } }
]])
    local code, out = helpers.host_run { "once", "--format", "json", good }
    assert.are.equal(1, code, out)             -- "none" failed
    local by = {}
    for _, e in ipairs(helpers.decode_lines(out)) do by[e.probe] = e end
    assert.are.same({ "success", "ok" }, { by.v4.status, by.v4.reason }, out)
    assert.are.same({ "failure", "dns" }, { by.none.status, by.none.reason },
      out)
    local bad = helpers.script("bad.lua", [[
local sonde = require "sonde"
sonde.probe { name = "b",
  icmp = { host = "127.0.0.1", payload_size = 70000 } }
]])
    local rc, o, e = helpers.host_run { "check", bad }
    assert.are.equal(2, rc, o .. e)
    assert.matches(bad .. ':2: probe "b": icmp.payload_size: must be 0..65507, '
      .. "got 70000", e, 1, true)
  end)

  it("a bad icmp spec is refused at load, at the caller's line, naming the "
    .. "field", function()
    assert.are.equal('probe "i": icmp.ttl: must be 0..255, got 300',
      probe_err { name = "i", icmp = { host = "127.0.0.1", ttl = 300 } })
    assert.are.equal('probe "i": icmp.host: is required',
      probe_err { name = "i", icmp = {} })
    assert.are.equal('probe "i": icmp.timeout: is set on the probe (timeout)',
      probe_err { name = "i", icmp = { host = "::1", timeout = 2 } })
    assert.are.equal('probe "i": icmp: unknown field "port"',
      probe_err { name = "i", icmp = { host = "::1", port = 1 } })
    assert.are.equal('probe "i": icmp.preferred_ip_protocol: must be ip4 or '
      .. 'ip6, got "4"', probe_err { name = "i", icmp = { host = "::1",
        preferred_ip_protocol = "4" } })
    assert.are.equal('probe "i": icmp: may not specify more than 1 handler '
      .. 'type (exec given too)', probe_err { name = "i", icmp = {
        host = "::1" }, exec = { command = { "true" } } })
  end)
end)
