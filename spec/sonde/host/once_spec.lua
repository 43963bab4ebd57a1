-- `sonde once SCRIPT [NAME...]` (sonde.host.once): each probe run once;
-- exit codes, --format json, NAME.
local helpers = require "helpers"

local script = helpers.script

describe("sonde once", function()
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
      local rc, out, err = helpers.host_run { "once", path }
      assert.are.equal(c[3], rc, out .. err)
      assert.are.equal(#c[2], #helpers.lines(out), out)
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
    local rc, out, err = helpers.host_run { "once", "--format", "json", path }
    assert.are.equal(1, rc, err)
    local objs, bad = helpers.decode_lines(out)
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
    local rc, out = helpers.host_run { "once", path }
    assert.are.equal(0, rc)
    local lines = helpers.lines(out)
    assert.are.equal(1, #lines, out)
    assert.is_truthy(lines[1]:match("^two%-lines%s+success%s+ok%s+"
      .. "%d+%.%d%d%ds  one\\ntwo$"), lines[1])
  end)

  it("NAME runs only that probe; an unknown NAME is exit 2", function()
    local dir = helpers.scratch()
    local path = script("names.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "a", exec = { command = { "touch", %q } } }
      sonde.probe { name = "b", exec = { command = { "touch", %q } } }
      sonde.probe { name = "c", exec = { command = { "false" } } }
    ]], dir .. "/ran-a", dir .. "/ran-b"))
    local rc, out = helpers.host_run { "once", "--format", "json", path, "b" }
    assert.are.equal(0, rc)
    local objs = helpers.decode_lines(out)
    assert.are.equal(1, #objs)
    assert.are.equal("b", objs[1].probe)
    assert.is_nil(helpers.read_file(dir .. "/ran-a"))
    assert.is_not_nil(helpers.read_file(dir .. "/ran-b"))
    rc, out = helpers.host_run { "once", path, "c", "b" }
    assert.are.equal(1, rc)
    local lines = helpers.lines(out)
    assert.are.equal(2, #lines)
    assert.is_truthy(lines[1]:match("^c%s+failure"), lines[1])
    assert.is_truthy(lines[2]:match("^b%s+success"), lines[2])
    local err
    rc, out, err = helpers.host_run { "once", path, "zzz" }
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
    local rc, out = helpers.host_run { "once", path }
    assert.are.equal(0, rc)
    assert.is_truthy(out:find("  a\\x00b\\xFFc\n", 1, true), out)
    rc, out = helpers.host_run { "once", "--format", "json", path }
    assert.are.equal(0, rc)
    assert.is_truthy(out:find('"output":"a\\u0000b\\\\xFFc"', 1, true), out)
    local obj = helpers.decode_lines(out)[1]
    assert.are.equal("a\0b\\xFFc", obj.output)
  end)

  it("SIGINT ends it (128 + 2) and kills the probes' commands", function()
    local path = script("interrupted.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "long", exec = { command = { "sleep", "87" } },
                    timeout = 100 }
    ]])
    local h = helpers.host_start { "once", path }
    assert(helpers.eventually(function()
      return #helpers.procs_matching("^sleep 87$") == 1 end, 10))
    h:signal("INT")
    assert.are.equal(130, h:wait(10))
    assert.is_true(helpers.eventually(function()
      return #helpers.procs_matching("^sleep 87$") == 0 end, 5))
  end)

  it("os.exit from the script's task takes the probes' commands with it",
    function()
    local path = script("exits.lua", [[
      local sonde = require "sonde"
      sonde.probe { name = "long", exec = { command = { "sleep", "88" } },
                    timeout = 100 }
      sonde.spawn(function() sonde.sleep(0.3) os.exit(5) end)
    ]])
    local rc = helpers.host_run { "once", path }
    assert.are.equal(5, rc)
    assert.is_true(helpers.eventually(function()
      return #helpers.procs_matching("^sleep 88$") == 0 end, 5))
  end)
end)
