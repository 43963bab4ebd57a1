-- The host's command line: --version, --help, check, once (exit codes,
-- --format json, NAME), --log-format json in run mode, and how bytes that
-- are not text reach the log.
local sonde = require "sonde"
local helpers = require "helpers"
local E = require "engine_helpers"

local dir

local function script(name, text)
  return helpers.write(dir .. "/" .. name, text)
end

local function trim(s) return (s:gsub("%s+$", "")) end

describe("sonde host command line", function()
  local hosts = {}

  setup(function() dir = helpers.tmpdir() end)

  teardown(function()
    for _, h in ipairs(hosts) do h:cleanup() end
    helpers.rmtree(dir)
  end)

  local function start(args, env)
    local h = E.host_start(args, env)
    hosts[#hosts + 1] = h
    return h
  end

  describe("--version and --help", function()
    it("--version prints the version and exits 0", function()
      local rc, out, err = E.host_run { "--version" }
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.are.equal(string.format("sonde %s (Lua 5.4)\n", sonde.version),
        out)
    end)

    it("--help prints the usage on stdout and exits 0", function()
      local rc, out, err = E.host_run { "--help" }
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.is_truthy(out:find("^usage: sonde "), out)
      for _, s in ipairs { "check [--container NAME] SCRIPT|MANIFEST",
          "once [--format text|json] [--container NAME] SCRIPT|MANIFEST",
          "--log-format", "--log-level", "--version" } do
        assert.is_truthy(out:find(s, 1, true), s .. " not in:\n" .. out)
      end
    end)

    it("no script, an unknown option: usage on stderr, exit 2", function()
      local rc, out, err = E.host_run {}
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find("^sonde: no script given\nusage: sonde"), err)
      rc, out, err = E.host_run { "--frobnicate", "x.lua" }
      assert.are.equal(2, rc)
      assert.is_truthy(err:find("^sonde: unknown option %-%-frobnicate\n"),
        err)
    end)
  end)

  describe("check", function()
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
      local rc, out, err = E.host_run { "check", path }
      assert.are.equal(0, rc, err)
      assert.are.equal("", err)
      local lines = E.lines(out)
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

    it("a syntax error: the error on stderr, exit 2", function()
      local path = script("syntax.lua", "local sonde = require 'sonde'\n"
        .. "sonde.probe { name = 'x',, }\n")
      local rc, out, err = E.host_run { "check", path }
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find("^sonde: " .. path:gsub("%p", "%%%0")
        .. ":2: "), err)
    end)

    it("a bad spec: the error names the probe and the field, exit 2",
      function()
      local path = script("badspec.lua", "local sonde = require 'sonde'\n"
        .. "sonde.probe { name = 'web', http_get = { port = 0 } }\n")
      local rc, out, err = E.host_run { "check", path }
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find(path .. ":2: probe \"web\": http_get.port: "
        .. "must be 1..65535, got 0", 1, true), err)
      local svc = script("badsvc.lua", "local sonde = require 'sonde'\n"
        .. "sonde.service { name = 'db', command = { 'x' }, grace = -1 }\n")
      rc, out, err = E.host_run { "check", svc }
      assert.are.equal(2, rc)
      assert.is_truthy(err:find('service "db": grace: must be >= 0, got -1',
        1, true), err)
    end)
  end)

  describe("once", function()
    local function probes(list)
      local parts = { "local sonde = require 'sonde'" }
      for _, p in ipairs(list) do
        parts[#parts + 1] = string.format("sonde.probe { name = %q, exec = "
          .. "{ command = { 'sh', '-c', %q }, codes = 'nagios' } }", p[1], p[2])
      end
      return table.concat(parts, "\n") .. "\n"
    end

    local cases = {
      { "all success", { { "a", "exit 0" }, { "b", "exit 0" } }, 0 },
      { "warnings only", { { "a", "exit 0" }, { "w", "exit 1" } }, 0 },
      { "a failure", { { "a", "exit 0" }, { "f", "exit 2" } }, 1 },
      { "failure and unknown", { { "u", "exit 3" }, { "f", "exit 2" } }, 1 },
      { "unknown, no failure", { { "w", "exit 1" }, { "u", "exit 3" } }, 3 },
    }
    for i, c in ipairs(cases) do
      it(c[1] .. " -> exit " .. c[3], function()
        local path = script("once" .. i .. ".lua", probes(c[2]))
        local rc, out, err = E.host_run { "once", path }
        assert.are.equal(c[3], rc, out .. err)
        assert.are.equal(#c[2], #E.lines(out), out)
      end)
    end

    it("--format json: one object per line with the result's fields",
      function()
      local path = script("json.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "warn", exec = { command = { "sh", "-c",
          "echo 'DISK WARNING'; exit 1" }, codes = "nagios" } }
        sonde.probe { name = "ok", kind = "liveness",
          exec = { command = { "echo", "fine" } } }
        sonde.probe { name = "refused", tcp_socket = { port = 1 } }
      ]])
      local rc, out, err = E.host_run { "once", "--format", "json", path }
      assert.are.equal(1, rc, err)
      local objs, bad = E.decode_lines(out)
      assert.are.same({}, bad)
      assert.are.equal(3, #objs, out)
      local w, o, r = objs[1], objs[2], objs[3]
      assert.are.same({ "warn", "readiness", "warning", "exit_code",
        "DISK WARNING\n", 1 }, { w.probe, w.kind, w.status, w.reason,
        w.output, w.exit_code })
      assert.are.same({ "ok", "liveness", "success", "ok", "fine\n", 0 },
        { o.probe, o.kind, o.status, o.reason, o.output, o.exit_code })
      assert.are.same({ "refused", "readiness", "failure", "connect_refused" },
        { r.probe, r.kind, r.status, r.reason })
      for _, x in ipairs(objs) do
        assert.is_number(x.duration)
        assert.is_true(x.duration >= 0 and x.duration < 5)
        assert.is_number(x.time)
        assert.is_true(math.abs(x.time - os.time()) < 120)
      end
    end)

    it("text format: one line per probe, output escaped", function()
      local path = script("text.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "two-lines", exec = { command = { "printf",
          "one\ntwo" } } }
      ]])
      local rc, out = E.host_run { "once", path }
      assert.are.equal(0, rc)
      local lines = E.lines(out)
      assert.are.equal(1, #lines, out)
      assert.is_truthy(lines[1]:match("^two%-lines%s+success%s+ok%s+"
        .. "%d+%.%d%d%ds  one\\ntwo$"), lines[1])
    end)

    it("NAME runs only that probe; an unknown NAME is exit 2", function()
      local path = script("names.lua", string.format([[
        local sonde = require "sonde"
        sonde.probe { name = "a", exec = { command = { "touch", %q } } }
        sonde.probe { name = "b", exec = { command = { "touch", %q } } }
        sonde.probe { name = "c", exec = { command = { "false" } } }
      ]], dir .. "/ran-a", dir .. "/ran-b"))
      local rc, out = E.host_run { "once", "--format", "json", path, "b" }
      assert.are.equal(0, rc)
      local objs = E.decode_lines(out)
      assert.are.equal(1, #objs)
      assert.are.equal("b", objs[1].probe)
      assert.is_nil(E.read_file(dir .. "/ran-a"))
      assert.is_not_nil(E.read_file(dir .. "/ran-b"))
      rc, out = E.host_run { "once", path, "c", "b" }
      assert.are.equal(1, rc)
      local lines = E.lines(out)
      assert.are.equal(2, #lines)
      assert.is_truthy(lines[1]:match("^c%s+failure"), lines[1])
      assert.is_truthy(lines[2]:match("^b%s+success"), lines[2])
      local err
      rc, out, err = E.host_run { "once", path, "zzz" }
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find('no probe named "zzz"', 1, true), err)
    end)

    it("output with a NUL byte and invalid UTF-8 is escaped whole", function()
      local path = script("bytes.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "bytes", exec = { command = { "printf",
          [=[a\0b\377c]=] } } }
      ]])
      local rc, out = E.host_run { "once", path }
      assert.are.equal(0, rc)
      assert.is_truthy(out:find("  a\\x00b\\xFFc\n", 1, true), out)
      rc, out = E.host_run { "once", "--format", "json", path }
      assert.are.equal(0, rc)
      assert.is_truthy(out:find('"output":"a\\u0000b\\\\xFFc"', 1, true), out)
      local obj = E.decode_lines(out)[1]
      assert.are.equal("a\0b\\xFFc", obj.output)
    end)
  end)

  describe("run mode", function()
    it("--log-format json: every stderr line is JSON with time, level and "
      .. "event; binary output escaped, not cut", function()
      local path = script("run.lua", [[
        local sonde = require "sonde"
        local svc = sonde.service { name = "talker", command = { "sh", "-c",
          "echo started; sleep 600" } }
        sonde.probe { name = "bytes", kind = "readiness", period = 0.2,
          exec = { command = { "printf", [=[a\0b\377c]=] } } }
        sonde.probe { name = "svc-live", service = svc, period = 0.2,
          exec = { command = { "true" } } }
        sonde.log.info("hello %s", "log")
      ]])
      local h = start({ "--log-format", "json", path })
      local enough = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "bytes" }) >= 3
      end, 15)
      h:signal("TERM")
      local rc = h:wait(10)
      local text = h:stderr()
      assert.is_truthy(enough, text)
      assert.are.equal(0, rc, text)
      local lines = E.lines(text)
      assert.is_true(#lines >= 6)
      for _, line in ipairs(lines) do
        local v = E.json_decode(line)
        assert.are.equal("table", type(v), "not JSON: " .. line)
        assert.is_truthy(type(v.time) == "string" and v.time:match(
          "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), line)
        assert.is_truthy(({ debug = 1, info = 1, warn = 1, error = 1 })
          [v.level], line)
        assert.are.equal("string", type(v.event), line)
      end
      local evs = E.decode_lines(text)
      local names = {}
      for _, e in ipairs(evs) do names[e.event] = true end
      for _, n in ipairs { "host_start", "service_start", "service_output",
          "probe_result", "message", "host_stop" } do
        assert.is_true(names[n] == true, n .. " not logged:\n" .. text)
      end
      local pr = E.select(evs, "probe_result", { probe = "bytes" })
      for _, e in ipairs(pr) do
        assert.are.equal("a\0b\\xFFc", e.output)
      end
      assert.is_truthy(text:find('"output":"a\\u0000b\\\\xFFc"', 1, true))
      assert.are.equal("started", E.select(evs, "service_output")[1].line)
      assert.are.equal("hello log", E.select(evs, "message")[1].text)
    end)

    it("text log: binary output escaped as \\x00 and \\xFF", function()
      local path = script("runtext.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "bytes", kind = "readiness", period = 0.2,
          exec = { command = { "printf", [=[a\0b\377c]=] } } }
      ]])
      local h = start({ path })
      local ok = h:wait_for(function(x)
        return select(2, x:stderr():gsub(" probe_result ", "")) >= 2
      end, 15)
      h:signal("TERM")
      local rc = h:wait(10)
      local text = h:stderr()
      assert.is_truthy(ok, text)
      assert.are.equal(0, rc, text)
      local n = 0
      for line in text:gmatch("[^\n]+") do
        if line:find(" probe_result ", 1, true) then
          n = n + 1
          assert.is_truthy(line:find(' output="a\\x00b\\xFFc" ', 1, true),
            line)
        end
      end
      assert.is_true(n >= 2)
    end)
  end)
end)
