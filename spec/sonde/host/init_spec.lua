-- The host's command line (sonde.host): --version, --help, usage errors,
-- the log options in run mode (--log-format json, and how bytes that are
-- not text reach the log) and --listen's argument.
local sonde = require "sonde"
local helpers = require "helpers"

local script = helpers.script

describe("sonde host command line", function()
  teardown(helpers.cleanup_hosts)

  describe("--version and --help", function()
    it("--version prints the version and exits 0", function()
      local rc, out, err = helpers.host_run { "--version" }
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.are.equal(string.format("sonde %s (Lua 5.4)\n", sonde.version),
        out)
    end)

    it("--help prints the usage on stdout and exits 0", function()
      local rc, out, err = helpers.host_run { "--help" }
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
      local rc, out, err = helpers.host_run {}
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_truthy(err:find("^sonde: no script given\nusage: sonde"), err)
      rc, out, err = helpers.host_run { "--frobnicate", "x.lua" }
      assert.are.equal(2, rc)
      assert.is_truthy(err:find("^sonde: unknown option %-%-frobnicate\n"),
        err)
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
      local _, text = helpers.host_until({ "--log-format", "json", path },
        function(x) return #x:events("probe_result", { probe = "bytes" }) >= 3 end)
      local lines = helpers.lines(text)
      assert.is_true(#lines >= 6)
      for _, line in ipairs(lines) do
        local v = helpers.json_decode(line)
        assert.are.equal("table", type(v), "not JSON: " .. line)
        assert.is_truthy(type(v.time) == "string" and v.time:match(
          "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), line)
        assert.is_truthy(({ debug = 1, info = 1, warn = 1, error = 1 })
          [v.level], line)
        assert.are.equal("string", type(v.event), line)
      end
      local evs = helpers.decode_lines(text)
      local names = {}
      for _, e in ipairs(evs) do names[e.event] = true end
      for _, n in ipairs { "host_start", "service_start", "service_output",
          "probe_result", "message", "host_stop" } do
        assert.is_true(names[n] == true, n .. " not logged:\n" .. text)
      end
      local pr = helpers.select(evs, "probe_result", { probe = "bytes" })
      for _, e in ipairs(pr) do
        assert.are.equal("a\0b\\xFFc", e.output)
      end
      assert.is_truthy(text:find('"output":"a\\u0000b\\\\xFFc"', 1, true))
      assert.are.equal("started", helpers.select(evs, "service_output")[1].line)
      assert.are.equal("hello log", helpers.select(evs, "message")[1].text)
    end)

    it("text log: binary output escaped as \\x00 and \\xFF", function()
      local path = script("runtext.lua", [[
        local sonde = require "sonde"
        sonde.probe { name = "bytes", kind = "readiness", period = 0.2,
          exec = { command = { "printf", [=[a\0b\377c]=] } } }
      ]])
      local _, text = helpers.host_until({ path }, function(x)
        return select(2, x:stderr():gsub(" probe_result ", "")) >= 2
      end)
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

  describe("the options of pod, check and once", function()
    local manifest = [[
apiVersion: v1
kind: Pod
metadata: { name: two }
spec:
  containers:
  - { name: sidecar, args: ["sleep", "60"] }
  - { name: web, args: ["sleep", "61"] }
]]

    it("are taken after the manifest too", function()
      local path = script("two.yaml", manifest)
      for _, args in ipairs {
          { "check", "--container", "web", path },
          { "check", path, "--container", "web" },
          { "check", path, "--log-level", "warn", "--container", "web" } } do
        local rc, out, err = helpers.host_run(args)
        assert.are.equal(0, rc, err)
        assert.are.equal(path .. ": 1 service, 0 probes\n"
          .. "pod     two                  restartPolicy=Always grace=30s: "
          .. "app web\n"
          .. "service web                  sleep 61\n", out)
      end
    end)

    it("are refused where they do not belong, and so are extra arguments",
      function()
      local path = script("two.yaml", manifest)
      for _, c in ipairs {
          { { "pod", path, "--format", "json" },
            "sonde: pod: --format is not an option of pod\n" },
          { { "check", "--listen", "0", path },
            "sonde: check: --listen is not an option of check\n" },
          { { "check", path, "extra" },
            "sonde: check: unexpected argument extra\n" },
          { { "--container", "web", "check", path },
            "sonde: unknown option --container\n" } } do
        local rc, out, err = helpers.host_run(c[1])
        assert.are.equal(2, rc)
        assert.are.equal("", out)
        assert.are.equal(c[2], err:sub(1, #c[2]), table.concat(c[1], " "))
      end
    end)
  end)
end)
