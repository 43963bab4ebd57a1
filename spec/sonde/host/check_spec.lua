-- `sonde check SCRIPT` (sonde.host.check): list the probes and services
-- of a valid script, exit 0; the error of a broken one, exit 2.
local helpers = require "helpers"

local script = helpers.script

describe("sonde check", function()
  it("lists the probes and services of a valid script, exit 0", function()
    local path = script("valid.lua", [[
      local sonde = require "sonde"
      local web = sonde.service { name = "web", command = { "sleep", "600" } }
      sonde.probe { name = "web-live", service = web,
                    exec = { command = { "true" } }, period = 5 }
      sonde.probe { name = "web-ready", kind = "readiness",
                    http_get = { port = 8080, path = "/healthz" },
                    success_threshold = 2 }
    ]])
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(0, rc, err)
    assert.are.equal("", err)
    local lines = helpers.lines(out)
    assert.are.equal(path .. ": 1 service, 2 probes", lines[1])
    assert.are.equal(4, #lines, out)
    assert.is_truthy(lines[2]:match("^service%s+web%s+sleep 600$"), lines[2])
    assert.is_truthy(lines[3]:match("^probe%s+web%-live%s+liveness%s+exec%s+"
      .. "period=5s timeout=1s initial_delay=0s success_threshold=1 "
      .. "failure_threshold=3 service=web$"), lines[3])
    assert.is_truthy(lines[4]:match("^probe%s+web%-ready%s+readiness%s+"
      .. "http_get%s+period=10s timeout=1s initial_delay=0s "
      .. "success_threshold=2 failure_threshold=3$"), lines[4])
  end)

  it("one line per service: line ends and tabs in a command show as \\n "
    .. "and \\t", function()
    local path = script("multiline.lua", [[
      local sonde = require "sonde"
      sonde.service { name = "s", command = { "sh", "-c", "a\n\tb\n" } }
    ]])
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(0, rc, err)
    local lines = helpers.lines(out)
    assert.are.equal(2, #lines, out)
    assert.is_truthy(lines[2]:match("^service%s+s%s+sh %-c a\\n\\tb\\n$"),
      lines[2])
  end)

  it("a syntax error: the error on stderr, exit 2", function()
    local path = script("syntax.lua", "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = 'x',, }\n")
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.is_truthy(err:find("^sonde: " .. path:gsub("%p", "%%%0")
      .. ":2: "), err)
  end)

  it("a bad spec: the error names the probe and the field, exit 2",
    function()
    local path = script("badspec.lua", "local sonde = require 'sonde'\n"
      .. "sonde.probe { name = 'web', http_get = { port = 0 } }\n")
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.is_truthy(err:find(path .. ":2: probe \"web\": http_get.port: "
      .. "must be 1..65535, got 0", 1, true), err)
    local svc = script("badsvc.lua", "local sonde = require 'sonde'\n"
      .. "sonde.service { name = 'db', command = { 'x' }, grace = -1 }\n")
    rc, out, err = helpers.host_run { "check", svc }
    assert.are.equal(2, rc)
    assert.is_truthy(err:find('service "db": grace: must be >= 0, got -1',
      1, true), err)
  end)

  it("a script that calls sonde.run() at its top level: listed, nothing "
    .. "started", function()
    local dir = helpers.scratch()
    local path = script("runs.lua", string.format([[
      local sonde = require "sonde"
      sonde.service { name = "svc", command = { "touch", %q } }
      sonde.probe { name = "p", exec = { command = { "touch", %q } },
                    period = 0.1 }
      sonde.run()
    ]], dir .. "/service-ran", dir .. "/probe-ran"))
    local rc, out, err = helpers.host_run({ "check", path }, nil, 20)
    assert.are.equal(0, rc, err)
    assert.are.equal(path .. ": 1 service, 1 probe", helpers.lines(out)[1])
    assert.is_nil(helpers.read_file(dir .. "/service-ran"))
    assert.is_nil(helpers.read_file(dir .. "/probe-ran"))
  end)
end)
