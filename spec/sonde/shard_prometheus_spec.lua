-- Sharding checked against Prometheus's own relabeling: Debian's
-- prometheus reads the same file_sd file, with one scrape job per shard
-- (`hashmod` into __tmp_hash, then `keep` regex I), and its
-- /api/v1/targets lists what each shard kept (activeTargets) and dropped;
-- sonde's shard I must keep exactly the same targets, for every I.  The
-- targets are loopback addresses on a port where nothing listens (scraping
-- them fails; only the target lists matter).
local sonde = require "sonde"
local config = require "sonde.config"
local helpers = require "helpers"

local N_TARGETS = 50

-- The shardings compared: { modulus, source_labels, separator }.
local SHARDINGS = {
  { job = "a", n = 3 },
  { job = "b", n = 4, source_labels = { "__address__", "env" },
    separator = "|" },
  { job = "c", n = 7 },
}

local function yaml_list(l)
  return "[" .. table.concat(l, ", ") .. "]"
end

local function prometheus_config(file)
  local out = { "global:", "  scrape_interval: 1h", "scrape_configs:" }
  for _, s in ipairs(SHARDINGS) do
    for i = 0, s.n - 1 do
      local src = yaml_list(s.source_labels or { "__address__" })
      out[#out + 1] = string.format([[
  - job_name: %s%d
    file_sd_configs: [{files: [%s]}]
    relabel_configs:
      - source_labels: %s
        separator: '%s'
        modulus: %d
        target_label: __tmp_hash
        action: hashmod
      - source_labels: [__tmp_hash]
        regex: '%d'
        action: keep]], s.job, i, file, src, s.separator or ";", s.n, i)
    end
  end
  return table.concat(out, "\n") .. "\n"
end

local function jobs_total()
  local n = 0
  for _, s in ipairs(SHARDINGS) do n = n + s.n end
  return n
end

describe("--shard / shard = {i, n}", function()
  local dir, pid
  before_each(function() helpers.fresh() end)
  after_each(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    pid = nil
    config.ambient():stop()
    helpers.fresh()
  end)

  it("keeps exactly the targets Prometheus's hashmod relabeling keeps, for "
    .. "every shard", function()
    assert.are.equal(0, (helpers.sh("command -v prometheus")),
      "prometheus is not installed (Debian: prometheus)")
    dir = helpers.scratch()
    local closed = helpers.closed_port()
    local groups = { { targets = {}, labels = { env = "blue" } },
                     { targets = {}, labels = { env = "green" } } }
    for i = 1, N_TARGETS do
      local g = groups[i % 2 + 1]
      g.targets[#g.targets + 1] = string.format("127.0.0.%d:%d", i,
        closed + (i % 3))
    end
    local file = helpers.write(dir .. "/targets.json",
      require("sonde.json").encode(groups))
    helpers.write(dir .. "/prometheus.yml", prometheus_config(file))
    local port = helpers.closed_port()
    local rc, out = helpers.sh(string.format("cd %s && (prometheus "
      .. "--config.file=prometheus.yml --storage.tsdb.path=data "
      .. "--web.listen-address=127.0.0.1:%d >prometheus.log 2>&1 & echo $!)",
      helpers.q(dir), port))
    assert.are.equal(0, rc)
    pid = tonumber(out:match("%d+"))
    -- every job has discovered its 50 targets (kept or dropped)
    local kept_by_job
    local deadline = helpers.now() + 90
    repeat
      helpers.sleep(0.5)
      local r = helpers.fetch(port, "/api/v1/targets")
      local doc = r.http_status == 200 and helpers.json_decode(r.body)
      if doc and doc.data then
        local seen, kept = {}, {}
        local total = 0
        for _, what in ipairs { "activeTargets", "droppedTargets" } do
          for _, t in ipairs(doc.data[what]) do
            local job = t.discoveredLabels.job
            seen[job] = (seen[job] or 0) + 1
            total = total + 1
            if what == "activeTargets" then
              kept[job] = kept[job] or {}
              table.insert(kept[job], t.discoveredLabels.__address__)
            end
          end
        end
        if total == N_TARGETS * jobs_total() then kept_by_job = kept end
      end
    until kept_by_job or helpers.now() > deadline
    assert.is_table(kept_by_job, "prometheus did not list its targets: "
      .. (helpers.read_file(dir .. "/prometheus.log") or ""))
    -- sonde on the same file: a shard source, and probe_each's option
    local src = sonde.targets.file_sd(file)
    assert.are.equal(N_TARGETS, #src:list())
    for _, s in ipairs(SHARDINGS) do
      local union = 0
      for i = 0, s.n - 1 do
        local job = s.job .. i
        local want = kept_by_job[job] or {}
        table.sort(want)
        local opts = { source_labels = s.source_labels, separator = s.separator }
        local got = {}
        for _, t in ipairs(sonde.targets.shard(src, i, s.n, opts):list()) do
          got[#got + 1] = t.address
        end
        table.sort(got)
        assert.are.same(want, got, "shard " .. job)
        local each = {}
        local g = sonde.probe_each(src, function(t)
          each[#each + 1] = t.address
          return { name = job .. " " .. t.address, check = function()
            return "success" end }
        end, { shard = { i, s.n, source_labels = s.source_labels,
          separator = s.separator } })
        table.sort(each)
        assert.are.same(want, each, "probe_each shard " .. job)
        assert.are.equal(#want, #g:names())
        union = union + #got
      end
      assert.are.equal(N_TARGETS, union)
    end
  end)
end)
