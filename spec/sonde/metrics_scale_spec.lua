-- A scrape of a few thousand declared probes (issue: metrics at 10,000
-- probes): metrics.render and metrics.stream (lua/sonde/metrics.lua, the
-- probes' series written by the C core: src/expo.c, src/lexpo.c) give a
-- valid exposition, every probe's series once, families whole, in slices
-- of about metrics.SLICE bytes; bytes per probe with and without the
-- run-duration histogram within loose bounds.  With SONDE_SPEC_FIGURES=1
-- the figures measured are printed on stderr.
local sonde = require "sonde"
local helpers = require "helpers"
local metrics = require "sonde.metrics"
local config = require "sonde.config"
local core = require "sonde.core"

local PROMTOOL = "/usr/bin/promtool"
local N_TCP, N_HTTP = 3000, 30
-- the first runs of probes started together are spread over their period
local PERIOD = 3

describe("a scrape of thousands of declared probes", function()
  local text, slices, cfg, names, web, closed, secs = nil, nil, nil, {}, nil, nil, {}

  setup(function()
    helpers.fresh()
    web = helpers.fixture {}
    closed = helpers.closed_port()
    for i = 1, N_TCP do
      local name = "tcp-" .. i
      names[#names + 1] = name
      sonde.probe { name = name, period = PERIOD, timeout = 2,
        -- every other probe without its histogram
        metrics = i % 2 == 0 and { histogram = false } or nil,
        labels = { team = "t" .. i % 7 },
        tcp_socket = { host = "127.0.0.1", port = i % 3 == 0 and closed
          or web.port } }
    end
    for i = 1, N_HTTP do
      local name = "http-" .. i
      names[#names + 1] = name
      sonde.probe { name = name, period = PERIOD, timeout = 2,
        http_get = { url = web:url(i % 2 == 0 and "/ok" or "/status/503") } }
    end
    cfg = config.ambient()
    -- run until every probe has run once, then stop them all
    local t
    local function poll()
      t = nil
      for _, p in ipairs(cfg.probes) do
        if p.runs < 1 then t = core.timer(0.1, poll) return end
      end
      helpers.stop_now()
    end
    local t0 = helpers.now()
    local ok, err = pcall(helpers.run_for, 60, { at = { { 0.1, poll } } })
    if t then core.cancel(t) end
    assert(ok, err)
    secs.run = helpers.now() - t0
    local c0 = os.clock()
    text = metrics.render(cfg)
    secs.render = os.clock() - c0
    slices = {}
    local max_call = 0
    local producer = metrics.stream(cfg)
    while true do
      c0 = os.clock()
      local s = producer()
      max_call = math.max(max_call, os.clock() - c0)
      if not s then break end
      slices[#slices + 1] = s
    end
    secs.slice_max = max_call
  end)

  teardown(function()
    helpers.fresh()
    helpers.stop_fixtures()
  end)

  it("every probe ran", function()
    for _, p in ipairs(cfg.probes) do
      assert.is_true(p.runs >= 1, p.name)
    end
    assert.are.equal(N_TCP + N_HTTP, #cfg.probes)
  end)

  it("every series once; each family's lines together, after one HELP and "
    .. "one TYPE", function()
    local seen, help, type_, done = {}, {}, {}, {}
    local current
    for line in text:gmatch("[^\n]*\n") do
      line = line:sub(1, -2)
      local h = line:match("^# HELP (%S+)")
      local ty = line:match("^# TYPE (%S+)")
      if h then
        assert.is_nil(help[h], "second HELP " .. h)
        help[h] = true
        if current and current ~= h then done[current] = true end
        current = h
      elseif ty then
        assert.is_nil(type_[ty], "second TYPE " .. ty)
        assert.are.equal(current, ty)
        type_[ty] = line:match("(%S+)$")
      else
        local name = line:match("^[%a_:][%w_:]*")
        assert.is_truthy(name, line)
        local fam = name
        if type_[current] == "histogram" then
          fam = name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
        end
        assert.are.equal(current, fam, line)
        assert.is_nil(done[fam], "family " .. fam .. " split: " .. line)
        local series = line:match("^(.*) [^ ]+$")
        assert.is_nil(seen[series], "twice: " .. series)
        seen[series] = true
      end
    end
    assert.is_truthy(help.probe_success and help.sonde_probe_run_duration_seconds)
  end)

  it("the series of every probe, the histogram only of those that keep it",
    function()
    local success, state, count = {}, {}, {}
    for name in text:gmatch('\nprobe_success{probe="([^"]+)"') do
      success[name] = (success[name] or 0) + 1
    end
    for name in text:gmatch('\nsonde_probe_state{probe="([^"]+)"') do
      state[name] = (state[name] or 0) + 1
    end
    for name in text:gmatch('\nsonde_probe_run_duration_seconds_count{probe="([^"]+)"') do
      count[name] = (count[name] or 0) + 1
    end
    for i, name in ipairs(names) do
      assert.are.equal(1, success[name], name)
      assert.are.equal(3, state[name], name)
      local hist = not (i <= N_TCP and i % 2 == 0)
      assert.are.equal(hist and 1 or nil, count[name], name)
    end
    -- the TCP probes' outcomes as their targets give them
    assert.is_truthy(helpers.has_line(text, 'probe_success{probe="tcp-1",'
      .. 'kind="readiness",target="127.0.0.1:' .. web.port .. '",instance='
      .. '"127.0.0.1:' .. web.port .. '",team="t1"} 1'))
    assert.is_truthy(helpers.has_line(text, 'probe_success{probe="tcp-3",'
      .. 'kind="readiness",target="127.0.0.1:' .. closed .. '",instance='
      .. '"127.0.0.1:' .. closed .. '",team="t3"} 0'))
  end)

  it("bytes per probe, with and without the histogram, within loose bounds",
    function()
    local bytes = { hist = 0, nohist = 0 }
    for line in text:gmatch("[^\n]*\n") do
      local i = line:match('{probe="tcp%-(%d+)"')
      if i then
        local k = tonumber(i) % 2 == 0 and "nohist" or "hist"
        bytes[k] = bytes[k] + #line
      end
    end
    local per_hist = bytes.hist / (N_TCP / 2)
    local per_nohist = bytes.nohist / (N_TCP / 2)
    if os.getenv("SONDE_SPEC_FIGURES") then
      io.stderr:write(string.format("\n[figures] %d probes: %d bytes, %d "
        .. "lines; TCP probe: %.0f bytes with the histogram, %.0f without; "
        .. "render %.3f s CPU, largest stream call %.4f s CPU, %d slices; "
        .. "first runs of all in %.1f s\n", #cfg.probes, #text,
        select(2, text:gsub("\n", "")), per_hist, per_nohist, secs.render,
        secs.slice_max, #slices, secs.run))
    end
    -- 24 lines of about 130 bytes, 10 of them without the histogram
    assert.is_true(per_hist > 1500 and per_hist < 8000, per_hist)
    assert.is_true(per_nohist > 500 and per_nohist < 4000, per_nohist)
    assert.is_true(per_nohist < 0.6 * per_hist, per_nohist / per_hist)
  end)

  it("metrics.stream: slices of whole lines of about metrics.SLICE bytes, "
    .. "that join into render's text", function()
    assert.is_true(#slices > #text / metrics.SLICE / 2, #slices)
    for i, s in ipairs(slices) do
      assert.are.equal("\n", s:sub(-1), "slice " .. i)
      -- a slice stops at the first probe past SLICE bytes (and the last
      -- one holds the series that are not the probes')
      if i < #slices then
        assert.is_true(#s <= metrics.SLICE + 8192, "slice " .. i .. ": " .. #s)
      end
    end
    local function strip(t) return (t:gsub("process_[^\n]*\n", "")) end
    local joined = strip(table.concat(slices))
    local whole = strip(text)
    assert.are.equal(#whole, #joined)
    assert.is_true(whole == joined)
  end)

  it("promtool check metrics passes", function()
    if helpers.sh("test -x " .. PROMTOOL) ~= 0 then
      -- (Debian's prometheus package ships it)
      return
    end
    local tmp = os.tmpname()
    helpers.write(tmp, text)
    local rc, out = helpers.sh("env -u LD_PRELOAD " .. PROMTOOL
      .. " check metrics < " .. helpers.q(tmp))
    os.remove(tmp)
    assert.are.equal(0, rc, out)
  end)
end)
