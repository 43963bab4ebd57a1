-- sonde.targets and sonde.probe_each: Prometheus's file_sd and http_sd
-- formats, probes added, kept (with their state) and removed as the
-- target list changes without a reload, what a load owns of them, and
-- hashmod sharding (checked against Prometheus itself in
-- shard_prometheus_spec.lua).
local sonde = require "sonde"
local core = require "sonde.core"
local config = require "sonde.config"
local metrics = require "sonde.metrics"
local targets = require "sonde.targets"
local helpers = require "helpers"

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function groups_json(list)
  return require("sonde.json").encode(list)
end

local function names_of(cfg)
  local out = {}
  for _, p in ipairs(cfg.probes) do out[#out + 1] = p.name end
  table.sort(out)
  return out
end

local function ok_check() return "success" end

-- Run fn as a task of the current load, which runs meanwhile; then stop
-- the load (its discovery timers with it) and let the loop run out.
local function in_loop(fn)
  helpers.run(function()
    local ok, err = xpcall(fn, debug.traceback)
    sonde.stop()
    if not ok then error(err, 0) end
  end)
end

-- python3's http.server serving `dir` on 127.0.0.1 (a .json file is sent
-- as application/json): { port, url(name), stop() }.
local function file_server(dir)
  local out = os.tmpname()
  local pidfile = os.tmpname()
  os.execute(string.format("cd %s && (python3 -u -m http.server 0 --bind "
    .. "127.0.0.1 >%s 2>/dev/null </dev/null & echo $! >%s)", helpers.q(dir),
    helpers.q(out), helpers.q(pidfile)))
  local pid = tonumber(helpers.read_file(pidfile):match("%d+"))
  os.remove(pidfile)
  local port
  local deadline = helpers.now() + 10
  repeat
    port = tonumber((helpers.read_file(out) or ""):match(" port (%d+)"))
    if port then break end
    helpers.sleep(0.05)
  until helpers.now() > deadline
  os.remove(out)
  local srv = { pid = pid, port = port }
  function srv.url(name)
    return string.format("http://127.0.0.1:%d/%s", port, name)
  end
  function srv.stop()
    if srv.pid then os.execute("kill " .. srv.pid .. " 2>/dev/null") end
    srv.pid = nil
  end
  assert(port, "python3 -m http.server did not start")
  return srv
end

describe("sonde.targets", function()
  local log
  before_each(function()
    config.ambient():stop()
    helpers.fresh()
    log = helpers.capture()
  end)
  after_each(function()
    log:close()
    config.ambient():stop()
    helpers.fresh()
  end)

  describe("target groups (Prometheus's format)", function()
    it("give targets with the group's labels, __address__ winning, and the "
      .. "source's meta label; equal label sets are one target", function()
      local list = assert(targets.from_groups({
        { targets = { "10.0.0.1:80", "[::1]:9100" },
          labels = { env = "prod", __address__ = "ignored" } },
        { targets = { "web.example:443", "10.0.0.1:80" },
          labels = { env = "prod" } },
        { targets = { "10.0.0.1:80" } },
        { labels = { lonely = "1" } },
      }, { __meta_filepath = "/x.json" }))
      assert.are.equal(4, #list)
      local a, v6, web, bare = list[1], list[2], list[3], list[4]
      assert.are.same({ __address__ = "10.0.0.1:80", env = "prod",
        __meta_filepath = "/x.json" }, a.labels)
      assert.are.equal("10.0.0.1:80", a.address)
      assert.are.equal("10.0.0.1", a.host)
      assert.are.equal(80, a.port)
      assert.are.equal('10.0.0.1:80{env="prod"}', a.name)
      assert.are.equal('{__address__="10.0.0.1:80", __meta_filepath="/x.json", '
        .. 'env="prod"}', a.key)
      assert.are.equal("::1", v6.host)
      assert.are.equal(9100, v6.port)
      assert.are.equal("web.example", web.host)
      assert.are.equal("10.0.0.1:80", bare.name)
      assert.are_not.equal(a.key, bare.key)
    end)

    it("refuse what Prometheus refuses", function()
      local function err(doc, pattern)
        local list, e = targets.from_groups(doc)
        assert.is_nil(list)
        assert.matches(pattern, e, 1, true)
      end
      err({ { targets = { "a:1" }, label = {} } }, 'unknown field "label"')
      err({ { targets = { "a:1" }, labels = { ["bad-name"] = "x" } } },
        '"bad-name" is not a valid label name')
      err({ { targets = { "a:1" }, labels = { n = 1 } } },
        "labels.n: expected a string")
      err({ { targets = { 1 } } }, "targets[1]: expected a string")
      err({ { targets = { "a:1" } }, require("cjson.safe").null },
        "nil target group item found")
      err(require("lyaml").load("- targets: ['a:1']\n- null\n"),
        "nil target group item found")
      err({ targets = { "a:1" } }, "expected a list of target groups")
      err("x", "expected a list of target groups")
    end)
  end)

  describe("hashmod", function()
    it("is MD5's last 8 bytes, big-endian, modulo N (values from Python's "
      .. "hashlib)", function()
      assert.are.equal("900150983cd24fb0d6963f7d28e17f72", hex(core.md5("abc")))
      assert.are.equal(2, targets.hashmod("abc", 3))
      assert.are.equal(5, targets.hashmod("127.0.0.1:9100", 7))
      assert.are.equal(628, targets.hashmod("10.0.0.1:80;prod", 1000))
      assert.are.equal(3, targets.hashmod("", 5))
      assert.are.equal(685866866, targets.hashmod("abc", 2 ^ 31 // 1))
      local t = targets.target { __address__ = "10.0.0.1:80", env = "prod" }
      assert.are.equal(628, sonde.targets.shard_of(t, 1000,
        { source_labels = { "__address__", "env" } }))
      assert.are.equal(targets.hashmod("10.0.0.1:80|prod", 7),
        sonde.targets.shard_of(t, 7, { source_labels = { "__address__",
          "env" }, separator = "|" }))
      assert.are.equal(targets.hashmod("10.0.0.1:80;", 7),
        sonde.targets.shard_of(t, 7, { source_labels = { "__address__",
          "missing" } }))
    end)

    it("shards split a list: each target on exactly one shard", function()
      local list = {}
      for i = 1, 60 do list[i] = "127.0.0.1:" .. (20000 + i) end
      local seen = {}
      for i = 0, 3 do
        for _, t in ipairs(sonde.targets.shard(list, i, 4):list()) do
          assert.is_nil(seen[t.address])
          seen[t.address] = i
          assert.are.equal(i, targets.hashmod(t.address, 4))
        end
      end
      for _, a in ipairs(list) do assert.is_not_nil(seen[a], a) end
    end)

    it("refuses a shard out of range", function()
      assert.has_error(function() sonde.targets.shard({}, 3, 3) end)
      assert.has_error(function() sonde.targets.shard({}, 0, 0) end)
      assert.has_error(function()
        sonde.probe_each({}, ok_check, { shard = { -1, 2 } })
      end)
      assert.is_nil(targets.parse_shard("3/3"))
      assert.is_nil(targets.parse_shard("1"))
      assert.are.same({ i = 1, n = 3 }, targets.parse_shard("1/3"))
    end)
  end)

  describe("file_sd", function()
    it("reads JSON and YAML, and refuses another extension", function()
      local dir = helpers.scratch()
      local j = helpers.write(dir .. "/a.json",
        '[{"targets":["127.0.0.1:1"],"labels":{"job":"x"}}]')
      local y = helpers.write(dir .. "/a.yml",
        "- targets: ['127.0.0.1:2', '127.0.0.1:3']\n  labels:\n    port: 80\n")
      local jl = sonde.targets.file_sd(j):list()
      assert.are.equal(1, #jl)
      assert.are.same({ __address__ = "127.0.0.1:1", job = "x",
        __meta_filepath = j }, jl[1].labels)
      local yl = sonde.targets.file_sd(y):list()
      assert.are.equal(2, #yl)
      assert.are.equal("80", yl[2].labels.port)
      assert.has_error(function() sonde.targets.file_sd(dir .. "/a.txt") end)
      assert.has_error(function()
        sonde.targets.file_sd(j, { refresh = 0 })
      end)
      -- a refresh that would poll in a busy loop (or, for http_sd, send a
      -- storm of requests that all time out at once) is refused
      for _, f in ipairs { sonde.targets.file_sd, sonde.targets.http_sd } do
        local ok, err = pcall(f, f == sonde.targets.file_sd and j
          or "http://127.0.0.1:1/", { refresh = 1e-6 })
        assert.is_false(ok)
        assert.matches("refresh: must be >= 0.01", tostring(err))
      end
    end)

    it("a broken file keeps the last good list (logged); a missing one has "
      .. "no targets", function()
      local dir = helpers.scratch()
      local path = helpers.write(dir .. "/t.json",
        groups_json { { targets = { "127.0.0.1:1", "127.0.0.1:2" } } })
      in_loop(function()
      local src = sonde.targets.file_sd(path, { refresh = 0.05 })
      local changes = {}
      src:on_change(function(l) changes[#changes + 1] = #l end)
      assert.are.equal(2, #src:list())
      helpers.replace(path, '[{"targets": ["127.0.0.1:3"')
      assert.is_truthy(helpers.eventually(function() return src.errors > 0 end))
      assert.are.equal(2, #src:list())
      local ev = log:events("targets_error")
      assert.are.equal(1, #ev)
      assert.are.equal(path, ev[1].from)
      assert.matches("JSON", ev[1].error)
      assert.are.equal(2, ev[1].kept)
      helpers.replace(path, groups_json { { targets = { "127.0.0.1:3" } } })
      assert.is_truthy(helpers.eventually(function()
        return #src:list() == 1
      end))
      assert.are.equal("127.0.0.1:3", src:list()[1].address)
      os.remove(path)
      assert.is_truthy(helpers.eventually(function()
        return #src:list() == 0
      end))
      assert.are.same({ 1, 0 }, changes)
      end)
    end)

    it("refuses YAML nested deeper than Prometheus's YAML reader takes "
      .. "(10000), before building it (libyaml is quadratic in the depth)",
        function()
      local dir = helpers.scratch()
      local n = 30000
      local deep = helpers.write(dir .. "/deep.yml",
        string.rep("[", n) .. string.rep("]", n) .. "\n")
      assert.are.same({}, sonde.targets.file_sd(deep):list())
      local ev = log:events("targets_error")
      assert.are.equal(1, #ev)
      assert.matches("nested deeper than 10000", ev[1].error)
      -- at the bound and below: read (and refused for what it is)
      local ok = helpers.write(dir .. "/ok.yml", "- targets: "
        .. string.rep("[", 1) .. "'127.0.0.1:1'" .. string.rep("]", 1) .. "\n")
      assert.are.equal(1, #sonde.targets.file_sd(ok):list())
    end)

    it("refuses what is not a regular file (a FIFO would block the loop, "
      .. "a device never end) and a directory, logged", function()
      local dir = helpers.scratch()
      local fifo = dir .. "/t.json"
      assert.is_true(os.execute("mkfifo " .. helpers.q(fifo)))
      -- a writer that gives the FIFO a valid list, if it were ever opened
      local pidfile = dir .. "/pid"
      os.execute(string.format("(printf '[{\"targets\":[\"127.0.0.1:1\"]}]' "
        .. ">%s & echo $! >%s)", helpers.q(fifo), helpers.q(pidfile)))
      local pid = tonumber(helpers.read_file(pidfile):match("%d+"))
      local ok, err = pcall(function()
        local zero = dir .. "/zero.json"
        assert.is_true(os.execute("ln -s /dev/zero " .. helpers.q(zero)))
        local d = dir .. "/d.json"
        assert.is_true(os.execute("mkdir " .. helpers.q(d)))
        for _, path in ipairs { fifo, zero, d } do
          assert.are.same({}, sonde.targets.file_sd(path):list())
        end
        local ev = log:events("targets_error")
        assert.are.equal(3, #ev)
        assert.matches("not a regular file", ev[1].error)
        assert.matches("not a regular file", ev[2].error)
      end)
      os.execute("kill " .. pid .. " 2>/dev/null")
      assert(ok, err)
    end)
  end)

  describe("sonde.probe_each", function()
    it("adds, keeps (state and counters go on) and removes probes as the "
      .. "file changes, without a reload; removed probes lose their series",
      function()
      local dir = helpers.scratch()
      local path = helpers.write(dir .. "/t.json", groups_json {
        { targets = { "127.0.0.1:1", "127.0.0.1:2" }, labels = { team = "a" } } })
      local calls = {}
      local g = sonde.probe_each(sonde.targets.file_sd(path, { refresh = 0.05 }),
        function(t)
          calls[#calls + 1] = t.address
          return { check = ok_check, period = 0.1 }
        end)
      local cfg = config.ambient()
      local A, B = '127.0.0.1:1{team="a"}', '127.0.0.1:2{team="a"}'
      local C = '127.0.0.1:3{team="a"}'
      assert.are.same({ A, B }, names_of(cfg))
      assert.are.same({ A, B }, g:names())
      local pa, pb = cfg.probe_by_name[A], cfg.probe_by_name[B]
      local runs_b
      assert.is_true(helpers.run_for(1.5, { at = {
        { 0.5, function()
          runs_b = pb.runs
          helpers.replace(path, groups_json { { targets = { "127.0.0.1:2",
            "127.0.0.1:3" }, labels = { team = "a" } } })
        end },
      } }))
      -- B kept: the same probe, its counters went on; A stopped; C new
      assert.is_true(runs_b >= 2, "runs before the change: " .. runs_b)
      assert.are.same({ B, C }, g:names())
      assert.are.equal(pb, cfg.probe_by_name[B])
      assert.is_true(pb.runs > runs_b)
      assert.are.equal("success", pb.state)
      assert.is_true(pa.stopped)
      assert.is_nil(cfg.probe_by_name[A])
      assert.is_true(cfg.probe_by_name[C].runs >= 1)
      assert.are.same({ "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3" }, calls)
      local text = metrics.render(cfg)
      assert.matches('probe="127.0.0.1:2{team=\\"a\\"}"', text, 1, true)
      assert.matches('probe="127.0.0.1:3{team=\\"a\\"}"', text, 1, true)
      assert.is_nil(text:find('probe="127.0.0.1:1{', 1, true))
      -- the target group's labels are on the probe's series
      assert.matches('probe_success{probe="127.0.0.1:2{team=\\"a\\"}",'
        .. 'kind="readiness",team="a"} 1', text, 1, true)
      local ev = log:events("probe_each")
      assert.are.same({ 2, 1 }, { ev[1].added, ev[2].added })
      assert.are.same({ 0, 1 }, { ev[1].removed, ev[2].removed })
    end)

    it("an error for one target is logged with it; the others get their "
      .. "probes", function()
      local g = sonde.probe_each({ "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3",
        "127.0.0.1:4" }, function(t)
        if t.port == 2 then error("no spec for this one") end
        if t.port == 3 then return { check = ok_check, period = -1 } end
        if t.port == 4 then return nil end          -- no probe, no error
        return { check = ok_check }
      end)
      assert.are.same({ "127.0.0.1:1" }, g:names())
      local ev = log:events("probe_each_error")
      assert.are.equal(2, #ev)
      assert.are.equal("127.0.0.1:2", ev[1].target)
      assert.matches("no spec for this one", ev[1].error)
      assert.are.equal('{__address__="127.0.0.1:2"}', ev[1].labels)
      assert.are.equal("127.0.0.1:3", ev[2].target)
      assert.matches("period", ev[2].error)
      assert.has_error(function() sonde.probe_each({}, "x") end)
      assert.has_error(function() sonde.probe_each(42, ok_check) end)
    end)

    it("one spec table returned for every target gives each its probe",
      function()
      local shared = { check = ok_check }
      local g = sonde.probe_each({ "127.0.0.1:1", "127.0.0.1:2" },
        function() return shared end)
      assert.are.same({ "127.0.0.1:1", "127.0.0.1:2" }, g:names())
      assert.is_nil(shared.name)
    end)

    it("keeps one shard's targets (option shard)", function()
      local list = {}
      for i = 1, 30 do list[i] = "127.0.0.1:" .. (30000 + i) end
      local g = sonde.probe_each(list, function() return { check = ok_check } end,
        { shard = { 1, 3 } })
      local want = {}
      for _, a in ipairs(list) do
        if targets.hashmod(a, 3) == 1 then want[#want + 1] = a end
      end
      table.sort(want)
      assert.is_true(#want > 0)
      assert.are.same(want, g:names())
    end)

    it("a reload keeps the probes of unchanged targets with their state; "
      .. "reload and stop end the old load's discovery", function()
      local dir = helpers.scratch()
      local path = helpers.write(dir .. "/t.json", groups_json {
        { targets = { "127.0.0.1:1", "127.0.0.1:2" } } })
      local function script()
        sonde.probe_each(sonde.targets.file_sd(path, { refresh = 0.05 }),
          function() return { check = ok_check, period = 0.1 } end)
      end
      local current = assert(config.load(script, {}, { name = "gen0" }))
      current:start()
      local old, kept, runs
      assert.is_true(helpers.run_for(1.2, { load = function() return current end,
        at = { { 0.4, function()
          old = current
          kept = old.probe_by_name["127.0.0.1:1"]
          runs = kept.runs
          current = config.apply(old, assert(config.load(script, {},
            { name = "gen1" })))
        end }, { 0.6, function()
          helpers.replace(path, groups_json { { targets = { "127.0.0.1:1" } } })
        end } } }))
      assert.are.equal(kept, current.probe_by_name["127.0.0.1:1"])
      assert.is_true(kept.runs > runs)
      assert.are.same({ "127.0.0.1:1" }, names_of(current))
      -- the old load's poll ended with it: only the new one saw the change
      assert.are.equal(0, old.scope.nops)
      assert.are.equal(0, current.scope.nops)
      assert.are.equal(1, #log:events("targets", { targets = 1 }))
    end)
  end)

  describe("http_sd", function()
    local srv
    after_each(function() if srv then srv.stop() srv = nil end end)

    it("follows the endpoint; an error keeps the last good list", function()
      local dir = helpers.scratch()
      helpers.write(dir .. "/sd.json", groups_json {
        { targets = { "127.0.0.1:1", "127.0.0.1:2" }, labels = { dc = "x" } } })
      helpers.write(dir .. "/sd.txt", groups_json {
        { targets = { "127.0.0.1:9" } } })
      srv = file_server(dir)
      in_loop(function()
      local url = srv.url("sd.json")
      local src = sonde.targets.http_sd(url, { refresh = 0.1 })
      local txt = sonde.targets.http_sd(srv.url("sd.txt"), { refresh = 30 })
      local g = sonde.probe_each(src, function(t)
        return { check = ok_check, period = 0.1 }
      end)
      assert.are.equal(0, #src:list())           -- nothing before the answer
      assert.is_truthy(helpers.eventually(function() return #src:list() == 2 end,
        10))
      local l = src:list()
      assert.are.same({ __address__ = "127.0.0.1:1", dc = "x",
        __meta_url = url }, l[1].labels)
      assert.are.same({ '127.0.0.1:1{dc="x"}', '127.0.0.1:2{dc="x"}' },
        g:names())
      helpers.replace(dir .. "/sd.json", groups_json {
        { targets = { "127.0.0.1:2", "127.0.0.1:3" }, labels = { dc = "x" } } })
      assert.is_truthy(helpers.eventually(function()
        return g:names()[2] == '127.0.0.1:3{dc="x"}'
      end, 10))
      os.remove(dir .. "/sd.json")                -- 404
      assert.is_truthy(helpers.eventually(function() return src.errors > 0 end,
        10))
      assert.are.equal(2, #src:list())
      assert.are.same({ '127.0.0.1:2{dc="x"}', '127.0.0.1:3{dc="x"}' },
        g:names())
      assert.are.equal(0, #txt:list())
      local errs = {}
      for _, e in ipairs(log:events("targets_error")) do errs[e.from] = e.error end
      assert.are.equal("server returned HTTP status 404", errs[url])
      assert.matches('unsupported content type "text/plain', errs[srv.url("sd.txt")],
        1, true)
      end)
    end)

    it("a reload, then a stop, cancel the request in flight", function()
      local silent = helpers.fixture { mode = "silent", log = true }
      local function script()
        sonde.targets.http_sd(string.format("http://127.0.0.1:%d/sd",
          silent.port), { refresh = 30, timeout = 20 })
        sonde.probe_each(sonde.targets.static { "127.0.0.1:1" },
          function() return { check = ok_check, period = 5 } end)
      end
      local cfg = assert(config.load(script, {}, { name = "silent" }))
      cfg:start()
      assert.are.equal(1, cfg.scope.nops)         -- the request
      local old, after_reload = cfg, {}
      assert.is_true(helpers.run_for(0.6, { load = function() return cfg end,
        at = { { 0.2, function()
          cfg = config.apply(old, assert(config.load(script, {},
            { name = "silent 2" })))
          after_reload = { old.scope.nops, cfg.scope.nops }
        end } } }))
      assert.are.same({ 0, 1 }, after_reload)   -- the old one's cancelled
      assert.are_not.equal(old, cfg)
      assert.are.equal(0, old.scope.nops)
      assert.are.equal(0, cfg.scope.nops)
      assert.are.equal(0, #log:events("targets_error"))
      -- both requests were sent
      assert.is_truthy(helpers.eventually(function()
        return silent:connections() == 2
      end))
      silent:stop()
    end)
  end)
end)
