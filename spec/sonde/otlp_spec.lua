-- sonde.otlp: the exposition text read back, its OTLP/JSON form, and the
-- exporter's delivery (retries, rejections, the buffer, stopping) against
-- the project's OTLP/JSON sink (spec/fixtures/otlp-sink.py), which checks
-- every request's schema.
local sonde = require "sonde"
local otlp = require "sonde.otlp"
local config = require "sonde.config"
local task = require "sonde.task"
local core = require "sonde.core"
local helpers = require "helpers"
local sinks = require "support.otlp_sink"

local TEXT = table.concat({
  '# HELP up_total A "counter" with\\nnewline.',
  "# TYPE up_total counter",
  'up_total{a="x\\"y\\\\z\\n",b="2"} 7',
  "# HELP g A gauge.",
  "# TYPE g gauge",
  "g 1.5",
  'g{k="v"} NaN',
  'g{k="w"} +Inf',
  "# HELP h A histogram.",
  "# TYPE h histogram",
  'h_bucket{p="a",le="0.005"} 1',
  'h_bucket{p="a",le="0.1"} 3',
  'h_bucket{p="a",le="+Inf"} 6',
  'h_sum{p="a"} 12.5',
  'h_count{p="a"} 6',
  'h_bucket{p="b",le="0.005"} 0',
  'h_bucket{p="b",le="0.1"} 0',
  'h_bucket{p="b",le="+Inf"} 0',
  'h_sum{p="b"} 0',
  'h_count{p="b"} 0',
  "loose 3",
  "# HELP empty Nothing.",
  "# TYPE empty gauge",
}, "\n") .. "\n"

local function attrs(point)
  local t = {}
  for _, kv in ipairs(point.attributes or {}) do t[kv.key] = kv.value.stringValue end
  return t
end

local function metric(req, name)
  for _, m in ipairs(req.resourceMetrics[1].scopeMetrics[1].metrics) do
    if m.name == name then return m end
  end
end

-- The decoded bodies of the sink's requests.
local function bodies(sink)
  local out = {}
  for _, r in ipairs(sink:requests()) do out[#out + 1] = r end
  return out
end

describe("sonde.otlp", function()
  describe("reading the exposition back", function()
    it("families with their type, help, samples, labels unescaped", function()
      local fams = assert(otlp.parse(TEXT))
      local names = {}
      for _, f in ipairs(fams) do names[#names + 1] = f.name .. ":" .. f.type end
      assert.are.same({ "up_total:counter", "g:gauge", "h:histogram",
        "loose:untyped", "empty:gauge" }, names)
      assert.are.equal('A "counter" with\nnewline.', fams[1].help)
      assert.are.same({ { "a", 'x"y\\z\n' }, { "b", "2" } },
        fams[1].samples[1].labels)
      assert.are.equal(10, #fams[3].samples)
      assert.is_true(fams[2].samples[2].value ~= fams[2].samples[2].value)
      assert.are.equal(math.huge, fams[2].samples[3].value)
    end)

    it("refuses what is not exposition text", function()
      for _, bad in ipairs { "x{a=1} 2\n", "x{a=\"1\"}\n", "{} 2\n",
          "x{a=\"1} 2\n", "x 1\ny{a=\"\\\"} 2\n" } do
        assert.is_nil((otlp.parse(bad)), bad)
        assert.is_nil((otlp.encode(bad)), bad)
      end
    end)

    it("label values with braces, commas and escapes", function()
      local text = '# TYPE x gauge\nx{a="}{,le=\\"1\\"",b="\\\\"} 1\n'
        .. '# TYPE h histogram\nh_bucket{title="t}",le="+Inf"} 2\n'
        .. 'h_count{title="t}"} 2\nh_sum{title="t}"} 1\n'
      local req = assert(helpers.json_decode(assert(otlp.encode(text))))
      local x = metric(req, "x").gauge.dataPoints[1]
      assert.are.same({ a = '}{,le="1"', b = "\\" }, attrs(x))
      local h = metric(req, "h").histogram.dataPoints[1]
      assert.are.same({ title = "t}" }, attrs(h))
      assert.are.same({ "2" }, h.bucketCounts)
      assert.is_nil(h.explicitBounds)
    end)
  end)

  describe("the request", function()
    local req = assert(helpers.json_decode(assert(otlp.encode(TEXT, {
      time = 1700000000.25, start = 1600000000,
      resource = { ["deployment.environment"] = "test" } }))))

    it("resource and scope", function()
      local rm = req.resourceMetrics[1]
      local r = attrs(rm.resource)
      assert.are.equal("sonde", r["service.name"])
      assert.are.equal(otlp.hostname(), r["host.name"])
      assert.are.equal(otlp.hostname(), r["service.instance.id"])
      assert.are.equal("test", r["deployment.environment"])
      assert.are.same({ name = "sonde", version = sonde.version },
        rm.scopeMetrics[1].scope)
    end)

    it("a counter is a monotonic cumulative sum; times as decimal strings",
        function()
      local m = metric(req, "up_total")
      assert.are.equal('A "counter" with\nnewline.', m.description)
      assert.are.equal(2, m.sum.aggregationTemporality)
      assert.is_true(m.sum.isMonotonic)
      local p = m.sum.dataPoints[1]
      assert.are.equal(7, p.asDouble)
      assert.are.equal("1700000000250000000", p.timeUnixNano)
      assert.are.equal("1600000000000000000", p.startTimeUnixNano)
      assert.are.same({ a = 'x"y\\z\n', b = "2" }, attrs(p))
    end)

    it("a gauge; NaN and infinities as proto3 JSON strings; untyped as a "
      .. "gauge; a family without samples is left out", function()
      local m = metric(req, "g")
      assert.is_nil(m.gauge.dataPoints[1].attributes)
      assert.are.equal(1.5, m.gauge.dataPoints[1].asDouble)
      assert.are.equal("NaN", m.gauge.dataPoints[2].asDouble)
      assert.are.equal("Infinity", m.gauge.dataPoints[3].asDouble)
      assert.is_nil(m.gauge.dataPoints[1].startTimeUnixNano)
      assert.are.equal(3, metric(req, "loose").gauge.dataPoints[1].asDouble)
      assert.is_nil(metric(req, "empty"))
      local text = assert(otlp.encode(TEXT))
      assert.is_nil(text:find("[^%w\"]nan", 1) or text:find("[^%w\"]inf"))
      assert.is_truthy(text:find('"asDouble":"NaN"', 1, true))
    end)

    it("a histogram: per-bucket counts, one more than the bounds", function()
      local m = metric(req, "h")
      assert.are.equal(2, m.histogram.aggregationTemporality)
      local a, b = m.histogram.dataPoints[1], m.histogram.dataPoints[2]
      assert.are.same({ p = "a" }, attrs(a))
      assert.are.same({ 0.005, 0.1 }, a.explicitBounds)
      assert.are.same({ "1", "2", "3" }, a.bucketCounts)
      assert.are.equal("6", a.count)
      assert.are.equal(12.5, a.sum)
      assert.are.equal("1600000000000000000", a.startTimeUnixNano)
      assert.are.same({ "0", "0", "0" }, b.bucketCounts)
      assert.are.equal("0", b.count)
    end)
  end)

  describe("the sink", function()
    after_each(function() sinks.stop_all() end)

    it("refuses what is not a valid request, with protobuf's parser too",
        function()
      local sink = sinks.start()
      local good = assert(otlp.encode(TEXT))
      local cases = {
        { good, nil },
        { good:gsub('"bucketCounts":%["1","2","3"%]', '"bucketCounts":["1","3","6"]'),
          "add up" },
        { good:gsub('"asDouble":1.5', '"asDouble":"one"'), "protobuf" },
        { good:gsub('"asDouble":1.5', '"asDouble":true'), "a double expected" },
        { good:gsub('"timeUnixNano":("%d+")', '"timeUnixNano":1700000000000000000', 1),
          "decimal string" },
        { good:gsub('"isMonotonic":true', '"isMonotonic":true,"frob":1'), "protobuf" },
        { good:gsub('"asDouble":"NaN"', '"asDouble":NaN'), "not JSON" },
        { good:gsub('"aggregationTemporality":2', '"aggregationTemporality":0', 1),
          "aggregationTemporality" },
      }
      helpers.run(function()
        for _, c in ipairs(cases) do
          if c[2] then assert.are_not.equal(good, c[1]) end  -- (changed)
          local r = sonde.http_get { url = sink:url(), method = "POST",
            body = c[1], timeout = 5,
            headers = { ["Content-Type"] = "application/json" } }
          assert.are.equal(c[2] and 400 or 200, r.http_status, r.body)
        end
      end)
      local reqs = sink:requests()
      assert.are.equal(#cases, #reqs)
      assert.are.same({}, reqs[1].errors)
      for i = 2, #cases do
        local text = table.concat(reqs[i].errors, "\n")
        assert.is_truthy(text:find(cases[i][2], 1, true), text)
      end
    end)
  end)

  describe("the exporter", function()
    local sink
    before_each(function() sink = sinks.start() end)
    after_each(function() sinks.stop_all() end)

    -- An exporter of fixed text, started in a scope of its own; fn(e) runs
    -- in a task; the scope is closed after.
    local function with_exporter(spec, fn)
      local scope = task.scope { name = "otlp-spec" }
      spec.url = spec.url or sink:url()
      spec.collect = spec.collect or function() return TEXT end
      spec.interval = spec.interval or 3600
      local e = otlp.exporter(spec)
      helpers.run(function()
        task.within(scope, e.start, e)
        local ok, err = pcall(fn, e)
        e:stop()
        scope:close()
        assert(ok, err)
      end, 60)
      return e
    end

    it("bad specs are refused, naming the field", function()
      for _, c in ipairs {
        { {}, "url" },
        { { url = "ftp://x/" }, "url" },
        { { url = "http://127.0.0.1:1/", interval = 0 }, "interval" },
        { { url = "http://127.0.0.1:1/", interval = 1e-6 }, "interval" },
        { { url = "http://127.0.0.1:1/", buffer = 0 }, "buffer" },
        { { url = "http://127.0.0.1:1/", headers = { ["Bad Name"] = "x" } },
          "headers" },
        { { url = "http://127.0.0.1:1/", frobnicate = 1 }, "frobnicate" },
      } do
        local ok, err = pcall(sonde.otlp, c[1])
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find("sonde.otlp", 1, true), err)
        assert.is_truthy(tostring(err):find(c[2], 1, true), err)
      end
    end)

    it("pushes every interval; the sink finds each request valid", function()
      local e = with_exporter({ interval = 0.2,
        headers = { Authorization = "Bearer t0ken" } }, function(ex)
        assert.is_truthy(helpers.eventually(function()
          return ex.sent >= 3 end, 20))
      end)
      local reqs = bodies(sink)
      for _, r in ipairs(reqs) do
        assert.are.same({}, r.errors)
        assert.are.equal(200, r.status)
        assert.are.equal("Bearer t0ken", r.headers.authorization)
        assert.are.equal("application/json", r.headers["content-type"])
      end
      assert.is_true(e.sent >= 3)
      assert.are.equal(0, e.failed)
      -- each batch read anew: later times
      local t1 = metric(reqs[1].body, "g").gauge.dataPoints[1].timeUnixNano
      local t3 = metric(reqs[3].body, "g").gauge.dataPoints[1].timeUnixNano
      assert.is_true(#t1 == #t3 and t1 < t3, t1 .. " " .. t3)
    end)

    it("503 and 429 are retried with a back-off, the same batch, then "
      .. "delivered", function()
      sink:control("answers=503,429,503")
      local e = with_exporter({ backoff = 0.05, max_backoff = 0.2 }, function(e)
        e:push()
        assert.is_truthy(helpers.eventually(function() return e.sent == 1 end, 20))
      end)
      local reqs = bodies(sink)
      local st = {}
      for i, r in ipairs(reqs) do
        st[i] = r.status
        assert.are.same({}, r.errors)
        assert.are.same(reqs[1].body, r.body)
      end
      assert.are.same({ 503, 429, 503, 200 }, st)
      assert.are.equal(3, e.failed)
      assert.are.same({ buffer_full = 0, rejected = 0 }, e.dropped)
    end)

    it("a Retry-After in seconds is followed", function()
      sink:control("answers=429&retry_after=1")
      with_exporter({ backoff = 0.01, max_backoff = 0.01 }, function(e)
        e:push()
        assert.is_truthy(helpers.eventually(function() return e.sent == 1 end, 20))
      end)
      local reqs = bodies(sink)
      assert.are.equal(2, #reqs)
      -- (a lower bound only: the back-off alone would be 0.01 s)
      assert.is_true(reqs[2].time - reqs[1].time >= 0.9,
        tostring(reqs[2].time - reqs[1].time))
    end)

    it("a Retry-After shorter than the back-off (0) does not shorten it: "
      .. "no storm of retries", function()
      sink:control("answers=429,429,429&retry_after=0")
      with_exporter({ backoff = 0.2, max_backoff = 0.2 }, function(e)
        e:push()
        assert.is_truthy(helpers.eventually(function() return e.sent == 1 end, 20))
      end)
      local reqs = bodies(sink)
      assert.are.equal(4, #reqs)
      for i = 2, #reqs do
        -- (lower bounds only: the back-off is 0.2 s)
        assert.is_true(reqs[i].time - reqs[i - 1].time >= 0.15,
          tostring(reqs[i].time - reqs[i - 1].time))
      end
    end)

    it("400 is not retried: that batch is dropped, the next goes", function()
      sink:control("answers=400")
      local log = helpers.capture()
      local e = with_exporter({ backoff = 0.01, max_backoff = 0.01 }, function(e)
        e:push()
        assert.is_truthy(helpers.eventually(function()
          return e.dropped.rejected == 1 end, 20))
        task.sleep(0.5)               -- a retry would come by now
        assert.are.equal(1, #bodies(sink))
        e:push()
        assert.is_truthy(helpers.eventually(function() return e.sent == 1 end, 20))
      end)
      local evs = log:events("otlp", { status = "rejected" })
      log:close()
      local st = {}
      for i, r in ipairs(bodies(sink)) do st[i] = r.status end
      assert.are.same({ 400, 200 }, st)
      assert.are.equal(1, e.failed)
      assert.are.equal(1, #evs)
      assert.are.equal(400, evs[1].http_status)
    end)

    it("while nothing answers the buffer keeps its bound, the oldest "
      .. "dropped; the order is kept when delivery resumes", function()
      local port = sink.port
      sink:stop()
      local n = 0
      local e = with_exporter({ buffer = 3, backoff = 0.05, max_backoff = 0.1,
        collect = function() n = n + 1 return "seq " .. n .. "\n" end },
        function(e)
          for _ = 1, 8 do
            e:push()
            assert.is_true(#e.queue <= 3)
            task.sleep(0.05)
          end
          -- the batch in flight failed too, and went back in front: the
          -- oldest, dropped
          assert.is_truthy(helpers.eventually(function()
            return e.dropped.buffer_full == 5 and #e.queue == 3
              and not e.inflight end, 20))
          assert.are.equal(0, e.sent)
          sink = sinks.start { port = port }
          assert.is_truthy(helpers.eventually(function()
            return e.sent == 3 end, 20))
        end)
      local seqs = {}
      for _, r in ipairs(bodies(sink)) do
        assert.are.same({}, r.errors)
        seqs[#seqs + 1] = metric(r.body, "seq").gauge.dataPoints[1].asDouble
      end
      assert.are.same({ 6, 7, 8 }, seqs)
      assert.are.equal(0, #e.queue)
    end)

    it("a batch larger than buffer_bytes on its own is dropped, counted "
      .. "and logged (once in a run of them)", function()
      local log = helpers.capture()
      local e = with_exporter({ buffer_bytes = 100,
        collect = function() return "big " .. string.rep("1", 200) .. "\n" end },
        function(e)
          e:push()
          e:push()
        end)
      local evs = log:events("otlp", { status = "dropped" })
      log:close()
      assert.are.equal(2, e.dropped.buffer_full)
      assert.are.equal(0, #bodies(sink))
      assert.are.equal(1, #evs, "a drop no log line tells")
      assert.matches("buffer_bytes", evs[1].detail)
    end)

    it("a stopped load ends its exporter: the hanging request and the "
      .. "timers go, no descriptor is left", function()
      -- (libcurl and the loop keep what they keep for their lifetime)
      helpers.run(function()
        sonde.http_get { url = sink:url("/requests"), timeout = 5 }
      end)
      sink:control("hang=1")
      local cfg, base
      helpers.run(function()
        base = helpers.fd_count()
        cfg = assert(config.load(function()
          sonde.otlp { url = sink:url(), interval = 0.1 }
        end, {}, { name = "otlp-load" }))
        cfg:start()
        assert.is_truthy(helpers.eventually(function()
          return sink:hanging() == 1 end, 20))
        assert.is_true(helpers.fd_count() > base)
        cfg:stop()
      end, 30)
      -- the loop ran out: no timer of the exporter is left
      assert.are.equal(0, core.pending())
      assert.are.equal(base, helpers.fd_count(), helpers.fd_list())
      assert.are.equal("", otlp.exposition())
      sink:control("hang=0")
    end)
  end)
end)
