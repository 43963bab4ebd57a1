-- `sonde --shard I/N SCRIPT`: sonde.probe_each keeps shard I's targets
-- (Prometheus's hashmod of __address__, checked against Prometheus itself
-- in spec/sonde/shard_prometheus_spec.lua), following the file_sd file
-- without a reload; /metrics shows the probes of that shard only.
local helpers = require "helpers"
local targets = require "sonde.targets"
local json = require "sonde.json"

local SCRIPT = [[
local sonde = require "sonde"
local file = ... or os.getenv("SHARD_FILE")
sonde.probe_each(sonde.targets.file_sd(file, { refresh = 0.1 }), function(t)
  return { check = function() return "success" end, period = 0.2 }
end)
]]

local function file_of(addresses)
  return json.encode { { targets = addresses } }
end

-- The probe names in a /metrics text (label `probe` of sonde_probe_state).
local function probes_in(text)
  local set = {}
  for name in text:gmatch('sonde_probe_state{probe="([^"]*)"') do
    set[name] = true
  end
  local out = {}
  for name in pairs(set) do out[#out + 1] = name end
  table.sort(out)
  return out
end

local function shard(list, i, n)
  local out = {}
  for _, a in ipairs(list) do
    if targets.hashmod(a, n) == i then out[#out + 1] = a end
  end
  table.sort(out)
  return out
end

describe("sonde --shard I/N", function()
  after_each(function() helpers.cleanup_hosts() end)

  it("runs the probes of shard I only, following the file", function()
    local dir = helpers.scratch()
    local path = helpers.write(dir .. "/shard.lua", SCRIPT)
    local first, second = {}, {}
    for i = 1, 30 do first[i] = "127.0.0.1:" .. (42000 + i) end
    for i = 1, 30 do second[i] = "127.0.0.1:" .. (42015 + i) end
    local file = helpers.write(dir .. "/targets.json", file_of(first))
    local h = helpers.host_start { "--log-format", "json", "--shard", "1/3",
      "--listen", "127.0.0.1:0", path, file }
    local port = helpers.listen_port(h)
    local want1 = shard(first, 1, 3)
    assert.is_true(#want1 > 0 and #want1 < #first)
    local got
    assert.is_truthy(h:wait_for(function()
      local r = helpers.fetch(port, "/metrics")
      got = probes_in(r.body or "")
      return #got == #want1
    end), h:stderr())
    assert.are.same(want1, got)
    -- the file changes: shard 1 of the new list, without a reload
    helpers.replace(file, file_of(second))
    local want2 = shard(second, 1, 3)
    assert.is_truthy(h:wait_for(function()
      got = probes_in(helpers.fetch(port, "/metrics").body or "")
      return table.concat(got, " ") == table.concat(want2, " ")
    end), h:stderr())
    assert.are.same(want2, got)
    assert.are.equal(0, #h:events("reload"))
    -- a reload (SIGHUP) keeps the probes, with their counters
    local probe = want2[1]
    local function runs()
      local text = helpers.fetch(port, "/metrics").body or ""
      local n = 0
      for v in text:gmatch('sonde_probe_runs_total{probe="'
          .. probe:gsub("%p", "%%%0") .. '"[^}]*} (%d+)') do
        n = n + tonumber(v)
      end
      return n
    end
    local before
    assert.is_truthy(h:wait_for(function()
      before = runs()
      return before >= 3
    end), h:stderr())
    h:signal("HUP")
    assert.is_truthy(h:wait_for(function()
      return #h:events("reload", { status = "ok" }) == 1
    end), h:stderr())
    assert.is_true(runs() >= before)
    assert.are.same(want2, probes_in(helpers.fetch(port, "/metrics").body))
    assert.are.equal(0, h:term())
  end)

  it("check lists shard I's probes; a wrong shard is a usage error",
    function()
    local dir = helpers.scratch()
    local path = helpers.write(dir .. "/shard.lua", SCRIPT)
    local list = {}
    for i = 1, 12 do list[i] = "127.0.0.1:" .. (43000 + i) end
    local file = helpers.write(dir .. "/targets.json", file_of(list))
    for i = 0, 2 do
      local code, out = helpers.host_run({ "check", "--shard", i .. "/3",
        path }, { SHARD_FILE = file })
      assert.are.equal(0, code, out)
      local names = {}
      for name in out:gmatch("\nprobe%s+(%S+)") do names[#names + 1] = name end
      table.sort(names)
      assert.are.same(shard(list, i, 3), names)
    end
    local code, _, err = helpers.host_run { "--shard", "3/3", path, file }
    assert.are.equal(2, code)
    assert.matches("--shard takes I/N", err, 1, true)
  end)
end)
