-- The host's OTLP push (`--otlp URL`, and a script's `sonde.otlp{}`)
-- received by the project's OTLP/JSON sink (spec/fixtures/otlp-sink.py),
-- which checks every request's schema: the series match /metrics, the
-- buffer keeps its bound while the sink is down and delivery resumes,
-- a stop while a push hangs, a reload.
local helpers = require "helpers"
local sinks = require "support.otlp_sink"

local script = helpers.script

-- /metrics text -> { family = { type, samples = { key -> value } } }, with
-- histogram samples under the family's name (key: labels without le, then
-- the list { le, cumulative count }, count, sum).  Label values here are
-- plain: no escapes to undo.
local function read_metrics(text)
  local fams, types = {}, {}
  for line in text:gmatch("[^\n]+") do
    local name, kind = line:match("^# TYPE (%S+) (%S+)$")
    if name then
      types[name] = kind
      fams[name] = { type = kind, samples = {} }
    elseif not line:find("^#") then
      local n, lbls, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not n then
        n, v = line:match("^([%w_:]+) (%S+)$")
        lbls = "{}"
      end
      local pairs_, le = {}, nil
      for k, val in lbls:gmatch('([%w_]+)="(.-)"') do
        if k == "le" then le = val else pairs_[#pairs_ + 1] = k .. "=" .. val end
      end
      table.sort(pairs_)
      local key = table.concat(pairs_, ",")
      local base = n:match("^(.-)_bucket$") or n:match("^(.-)_sum$")
        or n:match("^(.-)_count$")
      if base and types[base] == "histogram" then
        local h = fams[base].samples[key] or { buckets = {} }
        fams[base].samples[key] = h
        if le then
          h.buckets[#h.buckets + 1] = { le == "+Inf" and math.huge
            or tonumber(le), tonumber(v) }
        elseif n:find("_sum$") then h.sum = tonumber(v)
        else h.count = tonumber(v) end
      else
        fams[n] = fams[n] or { type = "untyped", samples = {} }
        fams[n].samples[key] = tonumber(v)
      end
    end
  end
  return fams
end

local function key_of(point)
  local parts = {}
  for _, kv in ipairs(point.attributes or {}) do
    parts[#parts + 1] = kv.key .. "=" .. kv.value.stringValue
  end
  table.sort(parts)
  return table.concat(parts, ",")
end

-- An OTLP request's metrics by name.
local function otlp_metrics(body)
  local out = {}
  for _, m in ipairs(body.resourceMetrics[1].scopeMetrics[1].metrics) do
    out[m.name] = m
  end
  return out
end

local function metrics_of(port)
  local r = helpers.fetch(port, "/metrics")
  assert.are.equal(200, r.http_status)
  return r.body
end

local function value(text, series)
  local v = text:match("\n" .. series:gsub("[%p]", "%%%0") .. " (%S+)")
  return tonumber(v)
end

describe("sonde --otlp", function()
  local sink
  before_each(function() sink = sinks.start() end)
  after_each(function()
    helpers.cleanup_hosts()
    sinks.stop_all()
  end)

  it("usage errors", function()
    local path = script("none.lua", "")
    for _, args in ipairs {
      { "--otlp", "ftp://127.0.0.1/v1/metrics", path },
      { "--otlp-interval", "1", path },
      { "--otlp", sink:url(), "--otlp-interval", "0", path },
      { "--otlp", sink:url(), "--otlp-header", "no colon", path },
      { "--otlp", sink:url(), "--otlp-resource", "no-equals", path },
      { "--otlp-resource", "a=b", path },
      { "--otlp", "http://127.0.0.1:99999/v1/metrics", path },
    } do
      local rc, _, err = helpers.host_run(args)
      assert.are.equal(2, rc, table.concat(args, " ") .. "\n" .. err)
      assert.is_truthy(err:find("otlp", 1, true), err)
    end
  end)

  it("pushes the series /metrics serves, with their values", function()
    local path = script("push.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "ok", period = 3600, initial_delay = 0.1, exec = { command = { "true" } } }
      sonde.probe { name = "bad", period = 3600, initial_delay = 0.1, exec = { command = { "false" } } }
    ]])
    local h = helpers.host_start { "--log-format", "json", "--listen", "0",
      "--otlp", sink:url(), "--otlp-interval", "0.3",
      "--otlp-header", "X-Scope-OrgID: team-a",
      "--otlp-resource", "service.instance.id=host-a/shard-1",
      "--otlp-resource", "deployment.environment=test", path }
    local port = helpers.listen_port(h)
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("probe_result") >= 2 end, 15), h:stderr())
    local text = metrics_of(port)
    local t0 = os.time()
    -- a push read after that scrape (the probes run once an hour: their
    -- series stay as they were)
    local req = h:wait_for(function()
      local reqs = sink:requests()
      local last = reqs[#reqs]
      if last and last.time > t0 + 1 then return last end
    end, 15)
    assert.is_truthy(req, h:stderr())
    for _, r in ipairs(sink:requests()) do
      assert.are.same({}, r.errors)
      assert.are.equal(200, r.status)
      assert.are.equal("team-a", r.headers["x-scope-orgid"])
    end
    local prom, got = read_metrics(text), otlp_metrics(req.body)
    -- the same families
    local a, b = {}, {}
    for name, f in pairs(prom) do
      if next(f.samples) then a[#a + 1] = name end   -- (a family without
    end                                              -- samples is not sent)
    for name in pairs(got) do b[#b + 1] = name end
    table.sort(a)
    table.sort(b)
    assert.are.same(a, b)
    for _, name in ipairs { "probe_success", "sonde_probe_state",
        "sonde_build_info", "sonde_probe_runs_total" } do
      local m = got[name]
      local points = name == "sonde_probe_runs_total" and m.sum.dataPoints
        or m.gauge.dataPoints
      local seen = {}
      for _, p in ipairs(points) do seen[key_of(p)] = p.asDouble end
      assert.are.same(prom[name].samples, seen, name)
    end
    local runs = got.sonde_probe_runs_total.sum
    assert.is_true(runs.isMonotonic)
    assert.are.equal(2, runs.aggregationTemporality)
    -- probe_success: 1 for ok, 0 for bad
    local ok_key, bad_key
    for k, v in pairs(prom.probe_success.samples) do
      if k:find("probe=ok", 1, true) then ok_key = k assert.are.equal(1, v) end
      if k:find("probe=bad", 1, true) then bad_key = k assert.are.equal(0, v) end
    end
    assert.is_truthy(ok_key and bad_key)
    -- the duration histogram: Prometheus' cumulative buckets from OTLP's
    -- per-bucket counts
    local hist = got.sonde_probe_run_duration_seconds.histogram
    assert.are.equal(2, hist.aggregationTemporality)
    local seen = {}
    for _, p in ipairs(hist.dataPoints) do
      local cum, buckets = 0, {}
      for i, c in ipairs(p.bucketCounts) do
        cum = cum + tonumber(c)
        buckets[i] = { p.explicitBounds[i] or math.huge, cum }
      end
      seen[key_of(p)] = { buckets = buckets, count = tonumber(p.count),
        sum = p.sum }
    end
    local want = prom.sonde_probe_run_duration_seconds.samples
    for k, w in pairs(want) do
      local s = seen[k]
      assert.is_truthy(s, k)
      assert.are.equal(w.count, s.count)
      assert.are.equal(1, s.count)
      assert.is_true(math.abs(w.sum - s.sum) < 1e-9)
      assert.are.equal(#w.buckets, #s.buckets)
      for i, wb in ipairs(w.buckets) do
        assert.is_true(wb[1] == s.buckets[i][1]
          or math.abs(wb[1] - s.buckets[i][1]) < 1e-12)
        assert.are.equal(wb[2], s.buckets[i][2])
      end
    end
    local res = {}
    for _, kv in ipairs(req.body.resourceMetrics[1].resource.attributes) do
      res[kv.key] = kv.value.stringValue
    end
    assert.are.equal("sonde", res["service.name"])
    assert.are.equal("host-a/shard-1", res["service.instance.id"])
    assert.are.equal("test", res["deployment.environment"])
    assert.is_truthy(res["host.name"])
    -- and the push's own series on /metrics
    text = metrics_of(port)
    assert.is_true(value(text, string.format('sonde_otlp_sent_total{url="%s"}',
      sink:url())) >= 1, text)
    assert.are.equal(0, h:term())
  end)

  it("with the sink down the buffer keeps its bound and the oldest are "
    .. "dropped; with the sink back the batches waiting arrive", function()
    local port = sink.port
    sink:stop()
    local path = script("buffer.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "ok", period = 3600, initial_delay = 0.1, exec = { command = { "true" } } }
      sonde.otlp { url = %q, interval = 0.5, buffer = 3, backoff = 0.05,
        max_backoff = 0.1 }
    ]], "http://127.0.0.1:" .. port .. "/v1/metrics"))
    local h = helpers.host_start { "--log-format", "json", "--listen", "0", path }
    local lport = helpers.listen_port(h)
    local url = "http://127.0.0.1:" .. port .. "/v1/metrics"
    local dropped = string.format('sonde_otlp_dropped_total{url="%s",reason="buffer_full"}', url)
    local pending = string.format('sonde_otlp_pending_batches{url="%s"}', url)
    local sent = string.format('sonde_otlp_sent_total{url="%s"}', url)
    local text
    assert.is_truthy(h:wait_for(function()
      text = metrics_of(lport)
      assert.is_true(value(text, pending) <= 3, text)
      -- (3 waiting: none in flight at that moment)
      return value(text, dropped) >= 3 and value(text, pending) == 3
    end, 20), text)
    assert.are.equal(3, value(text, pending))
    assert.are.equal(0, value(text, sent))
    assert.are.equal(1, #h:events("otlp", { status = "dropped" }))
    local t_up = require("sonde.core").wall_time()
    sink = sinks.start { port = port }
    assert.is_truthy(h:wait_for(function()
      text = metrics_of(lport)
      return value(text, sent) >= 4
    end, 20), text)
    local reqs = sink:requests()
    for _, r in ipairs(reqs) do
      assert.are.same({}, r.errors)
      assert.are.equal(200, r.status)
    end
    -- the first one delivered was read while the sink was down, and the
    -- batches come in the order they were read
    local function time_of(r)
      local m = otlp_metrics(r.body).probe_success
      return tonumber(m.gauge.dataPoints[1].timeUnixNano) / 1e9
    end
    assert.is_true(time_of(reqs[1]) < t_up)
    for i = 2, #reqs do
      assert.is_true(time_of(reqs[i]) > time_of(reqs[i - 1]))
    end
    -- and nothing more is dropped
    local d = value(text, dropped)
    helpers.sleep(0.6)
    assert.are.equal(d, value(metrics_of(lport), dropped))
    assert.are.equal(1, #h:events("otlp", { status = "resumed" }))
    assert.are.equal(0, h:term())
  end)

  it("a reload ends the script's exporter; the new load's takes over",
      function()
    local path = script("reload.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "ok", period = 3600, initial_delay = 0.1, exec = { command = { "true" } } }
      sonde.otlp { url = %q, interval = 0.2 }
    ]], sink:url()))
    local h = helpers.host_start { "--log-format", "json", "--listen", "0", path }
    local lport = helpers.listen_port(h)
    local sent = string.format('sonde_otlp_sent_total{url="%s"}', sink:url())
    assert.is_truthy(h:wait_for(function()
      return (value(metrics_of(lport), sent) or 0) >= 3 end, 20))
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function(x)
      return #x:events("reload", { status = "ok" }) == 1 end, 20))
    local text = metrics_of(lport)
    local _, n = text:gsub("\nsonde_otlp_sent_total{", "")
    assert.are.equal(1, n, text)
    assert.are.equal(2, #h:events("otlp", { status = "started" }))
    assert.are.equal(0, h:term())
  end)

  it("sonde check accepts a script that pushes, and pushes nothing",
      function()
    local path = script("check.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "ok", period = 1, exec = { command = { "true" } } }
      sonde.otlp { url = %q, interval = 0.1 }
    ]], sink:url()))
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(0, rc, out .. err)
    helpers.sleep(0.3)
    assert.are.same({}, sink:requests())
    path = script("bad.lua", [[
      require("sonde").otlp { url = "http://127.0.0.1:1/v1/metrics", buffer = 0 }
    ]])
    rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(2, rc, out .. err)
    assert.is_truthy((out .. err):find("sonde.otlp: buffer", 1, true), out .. err)
  end)

  it("SIGTERM while a push hangs: the host exits 0", function()
    sink:control("hang=1")
    local path = script("hang.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "ok", period = 3600, initial_delay = 0.1, exec = { command = { "true" } } }
    ]])
    local h = helpers.host_start { "--log-format", "json", "--otlp", sink:url(),
      "--otlp-interval", "0.2", path }
    assert.is_truthy(h:wait_for(function() return sink:hanging() == 1 end, 20))
    assert.are.equal(0, h:term(), h:stderr())
    assert.are.equal(1, #h:events("host_stop"))
    sink:control("hang=0")
  end)
end)
