-- Nagios / monitoring-plugins output: the parser (sonde.nagios.parse, see
-- lua/sonde/nagios.lua and the Monitoring Plugins Development Guidelines)
-- on text vectors, then real plugins from /usr/lib/nagios/plugins run
-- through sonde.exec with codes = "nagios" (check_dummy, check_tcp and
-- check_http against the loopback fixture server), and a plugin killed by
-- the timeout.
local helpers = require "helpers"
local sonde = require "sonde"
local nagios = require "sonde.nagios"

local PLUGINS = "/usr/lib/nagios/plugins/"

-- Compare a parsed perfdata item with the expected fields (every field of
-- `want` must match; the fields listed in `absent` must be nil).
local function item_is(want, got, absent)
  assert.is_truthy(got, "missing item " .. tostring(want.label))
  for k, v in pairs(want) do
    assert.are.equal(v, got[k], string.format("%s.%s", tostring(want.label), k))
  end
  for _, k in ipairs(absent or {}) do
    assert.is_nil(got[k], string.format("%s.%s", tostring(want.label), k))
  end
end

local function labels(perf)
  local out = {}
  for i, p in ipairs(perf) do out[i] = p.label end
  return out
end

describe("sonde.nagios.parse", function()
  it("the plugin guidelines' example", function()
    local out = "DISK OK - free space: / 3326 MB (56%) | /=2643MB;5948;5958;0;5968\n"
      .. "/ 15272 MB (77%);\n"
      .. "/boot 68 MB (69%); | /boot=68MB;88;93;0;98\n"
      .. "/home=69357MB;253404;253409;0;253414"
    local summary, long, perf = nagios.parse(out)
    assert.are.equal("DISK OK - free space: / 3326 MB (56%)", summary)
    assert.are.equal("/ 15272 MB (77%);\n/boot 68 MB (69%);", long)
    assert.are.equal(3, #perf)
    item_is({ label = "/", value = 2643, uom = "MB", warn = "5948",
      crit = "5958", warn_value = 5948, crit_value = 5958, min = 0,
      max = 5968 }, perf[1])
    item_is({ label = "/boot", value = 68, uom = "MB", warn = "88",
      crit = "93", warn_value = 88, crit_value = 93, min = 0, max = 98 },
      perf[2])
    item_is({ label = "/home", value = 69357, uom = "MB", warn = "253404",
      crit = "253409", warn_value = 253404, crit_value = 253409, min = 0,
      max = 253414 }, perf[3])
    -- the same with a final newline (as plugins print it)
    local s2, l2, p2 = nagios.parse(out .. "\n")
    assert.are.equal(summary, s2)
    assert.are.equal(long, l2)
    assert.are.same(perf, p2)
  end)

  it("quoted labels: spaces, = and doubled quotes", function()
    local summary, long, perf = nagios.parse(
      "OK - all fine | 'it''s here'=1 'with spaces'=2.5s;1;2 "
      .. "'a=b'=3% plain=4c")
    assert.are.equal("OK - all fine", summary)
    assert.are.equal("", long)
    assert.are.same({ "it's here", "with spaces", "a=b", "plain" },
      labels(perf))
    item_is({ label = "it's here", value = 1, uom = "" }, perf[1],
      { "warn", "crit", "min", "max" })
    item_is({ label = "with spaces", value = 2.5, uom = "s", warn = "1",
      crit = "2", warn_value = 1, crit_value = 2 }, perf[2], { "min", "max" })
    item_is({ label = "a=b", value = 3, uom = "%" }, perf[3])
    item_is({ label = "plain", value = 4, uom = "c" }, perf[4])
  end)

  it("ranges in warn/crit are kept as text, without a number", function()
    local _, _, perf = nagios.parse(
      "OK | a=5;10:20;@5:9;0;30 b=1;~:3;10: c=2;5;6")
    assert.are.equal(3, #perf)
    item_is({ label = "a", value = 5, uom = "", warn = "10:20",
      crit = "@5:9", min = 0, max = 30 }, perf[1],
      { "warn_value", "crit_value" })
    item_is({ label = "b", value = 1, warn = "~:3", crit = "10:" }, perf[2],
      { "warn_value", "crit_value", "min", "max" })
    item_is({ label = "c", value = 2, warn = "5", crit = "6", warn_value = 5,
      crit_value = 6 }, perf[3])
  end)

  it("value U (undetermined), negative and fractional values", function()
    local _, _, perf = nagios.parse("OK | u=U;;;0;1 t=-3.5C;;;-10;40")
    assert.are.equal(2, #perf)
    item_is({ label = "u", uom = "", min = 0, max = 1 }, perf[1],
      { "value", "warn", "crit" })
    item_is({ label = "t", value = -3.5, uom = "C", min = -10, max = 40 },
      perf[2], { "warn", "crit" })
  end)

  it("no perfdata at all", function()
    local summary, long, perf = nagios.parse("PROCS OK: 3 processes\n")
    assert.are.equal("PROCS OK: 3 processes", summary)
    assert.are.equal("", long)
    assert.are.same({}, perf)
    summary, long, perf = nagios.parse("CRITICAL - down\nline two\nline three\n")
    assert.are.equal("CRITICAL - down", summary)
    assert.are.equal("line two\nline three", long)
    assert.are.same({}, perf)
    summary, long, perf = nagios.parse("")
    assert.are.equal("", summary)
    assert.are.equal("", long)
    assert.are.same({}, perf)
  end)

  it("trailing semicolons and fields may be omitted", function()
    local _, _, perf = nagios.parse("OK | a=1s b=2s;3 c=3s;;4 d=4s;;;; e=5s;1;2;")
    assert.are.equal(5, #perf)
    item_is({ label = "a", value = 1, uom = "s" }, perf[1],
      { "warn", "crit", "min", "max", "warn_value", "crit_value" })
    item_is({ label = "b", value = 2, warn = "3", warn_value = 3 }, perf[2],
      { "crit", "min", "max" })
    item_is({ label = "c", value = 3, crit = "4", crit_value = 4 }, perf[3],
      { "warn", "min", "max" })
    item_is({ label = "d", value = 4 }, perf[4],
      { "warn", "crit", "min", "max" })
    item_is({ label = "e", value = 5, warn = "1", crit = "2" }, perf[5],
      { "min", "max" })
  end)

  it("malformed items are skipped, the others kept", function()
    local summary, _, perf = nagios.parse(
      "OK | good=1 bad novalue= =5 x=abc y=;1;2 good2=2ms")
    assert.are.equal("OK", summary)
    assert.are.same({ "good", "good2" }, labels(perf))
    item_is({ label = "good2", value = 2, uom = "ms" }, perf[2])
  end)
end)

describe("real plugins with codes = \"nagios\"", function()
  local srv

  setup(function()
    srv = helpers.fixture { host = "127.0.0.1" }
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  local function run(argv, extra)
    local spec = { command = argv, codes = "nagios", timeout = 10 }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return helpers.run(function() return sonde.exec(spec) end, 30)
  end

  local function show(r)
    return string.format("status=%s reason=%s exit=%s output=%q",
      tostring(r.status), tostring(r.reason), tostring(r.exit_code),
      tostring(r.output))
  end

  it("check_dummy: 0 success, 1 warning, 2 failure, 3 unknown", function()
    local r = run { PLUGINS .. "check_dummy", "0", "fine" }
    assert.are.equal("success", r.status, show(r))
    assert.are.equal(0, r.exit_code)
    assert.are.equal("OK: fine", r.summary, show(r))
    assert.are.equal("", r.long_output)
    assert.are.same({}, r.perfdata)
    local want = { [1] = { "warning", "WARNING" }, [2] = { "failure", "CRITICAL" },
      [3] = { "unknown", "UNKNOWN" } }
    for code = 1, 3 do
      r = run { PLUGINS .. "check_dummy", tostring(code), "text" }
      assert.are.equal(want[code][1], r.status, show(r))
      assert.are.equal(code, r.exit_code, show(r))
      assert.are.equal(want[code][2] .. ": text", r.summary, show(r))
    end
  end)

  it("check_tcp against the fixture: success with time perfdata", function()
    local r = run { PLUGINS .. "check_tcp", "-H", "127.0.0.1", "-p",
      tostring(srv.port) }
    -- e.g. "TCP OK - 0.000 second response time on 127.0.0.1 port N|time=0.000157s;;;0.000000;10.000000"
    assert.are.equal("success", r.status, show(r))
    assert.are.equal("ok", r.reason, show(r))
    assert.is_truthy(r.summary:find("^TCP OK"), show(r))
    assert.is_nil(r.summary:find("|", 1, true), r.summary)
    assert.are.equal(1, #r.perfdata, show(r))
    item_is({ label = "time", uom = "s", min = 0, max = 10 }, r.perfdata[1],
      { "warn", "crit" })
    assert.is_true(r.perfdata[1].value >= 0 and r.perfdata[1].value < 10)
  end)

  it("check_tcp against a closed port: failure (exit 2)", function()
    local r = run { PLUGINS .. "check_tcp", "-H", "127.0.0.1", "-p", "1" }
    assert.are.equal("failure", r.status, show(r))
    assert.are.equal(2, r.exit_code, show(r))
    assert.are.equal("exit_code", r.reason, show(r))
  end)

  it("check_http against the fixture: /ok success, /status/503 failure",
    function()
    local r = run { PLUGINS .. "check_http", "-I", "127.0.0.1", "-p",
      tostring(srv.port), "-u", "/ok" }
    assert.are.equal("success", r.status, show(r))
    assert.is_truthy(r.summary:find("^HTTP OK"), show(r))
    assert.are.same({ "time", "size" }, labels(r.perfdata), show(r))
    item_is({ label = "time", uom = "s", min = 0, max = 10 }, r.perfdata[1])
    item_is({ label = "size", uom = "B", min = 0 }, r.perfdata[2], { "max" })
    assert.is_true(r.perfdata[2].value > 0)

    r = run { PLUGINS .. "check_http", "-I", "127.0.0.1", "-p",
      tostring(srv.port), "-u", "/status/503" }
    assert.are.equal("failure", r.status, show(r))
    assert.are.equal(2, r.exit_code, show(r))
    assert.is_truthy(r.summary:find("^HTTP CRITICAL"), show(r))
  end)

  it("a plugin killed by the timeout is unknown (kubelet codes: failure)",
    function()
    local t0 = helpers.now()
    local r = run({ "sh", "-c", "sleep 10" }, { timeout = 0.5 })
    assert.are.equal("unknown", r.status, show(r))
    assert.are.equal("timeout", r.reason, show(r))
    assert.is_true(helpers.now() - t0 < 5, "took " .. (helpers.now() - t0))

    r = run({ "sh", "-c", "sleep 10" }, { timeout = 0.5, codes = "kubelet" })
    assert.are.equal("failure", r.status, show(r))
    assert.are.equal("timeout", r.reason, show(r))
    assert.is_nil(r.perfdata)
  end)
end)
