-- /metrics as a real Prometheus sees it: the host (`sonde --listen`) runs
-- HTTP, HTTPS, TCP, gRPC and exec probes against loopback fixtures; a
-- Prometheus server (Debian's `prometheus`) scrapes it every second with
-- `honor_labels: true`, the scrape configuration README recommends; then
-- every panel query of Grafana's blackbox_exporter dashboards 7587
-- ("Prometheus Blackbox Exporter") and 13659 ("Blackbox Exporter (HTTP
-- prober)") (spec/fixtures/dashboards/*.queries) is evaluated through
-- Prometheus's /api/v1/query, with the dashboards' template variables
-- filled in as Grafana fills them, and must return data.  The exposition
-- also passes `promtool check metrics`.
local helpers = require "helpers"
local socket = require "socket"

local q = helpers.q
local fetch, listen_port = helpers.fetch, helpers.listen_port

local PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
local DASHBOARDS = helpers.root .. "/spec/fixtures/dashboards/"

local SCRIPT = [=[
local sonde = require "sonde"
local http_url, https_url, ca, tcp_port, grpc_port = table.unpack(arg)
sonde.probe { name = "web", period = 0.5, labels = { team = "web" },
  http_get = { url = http_url } }
sonde.probe { name = "web-tls", period = 0.5, labels = { team = "web" },
  http_get = { url = https_url, tls = { verify = true, ca_file = ca } } }
sonde.probe { name = "db", period = 0.5,
  tcp_socket = { port = tonumber(tcp_port) } }
sonde.probe { name = "api", period = 0.5,
  grpc = { port = tonumber(grpc_port) } }
sonde.probe { name = "cmd", period = 0.5, exec = { command = { "true" } } }
]=]

-- A port nothing listens on just now (the kernel's pick).
local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Grafana's escaping of a multi-value or include-All variable's value in a
-- Prometheus regex matcher (prometheusSpecialRegexEscape): regex
-- metacharacters get a backslash, written doubled inside the PromQL string.
local function regex_escape(v)
  return (v:gsub("\\", "\\\\\\\\"):gsub("[%^%$%*%+%?%.%(%)|{}%[%]']",
    "\\\\%0"))
end

-- The lines of a .queries fixture: variables { name, query } and panels
-- { title, expr }, in order.
local function read_queries(path)
  local vars, panels = {}, {}
  for line in assert(io.lines(path)) do
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local a, b = line:match("^([^\t]+)\t(.+)$")
      assert(a, "bad line in " .. path .. ": " .. line)
      if a:sub(1, 1) == "$" then
        vars[#vars + 1] = { name = a:sub(2), query = b }
      else
        panels[#panels + 1] = { title = a, expr = b }
      end
    end
  end
  return vars, panels
end

describe("Grafana's blackbox_exporter dashboards against a Prometheus "
  .. "scraping sonde", function()
  local dir, srv, tls, grpc, h, sport, pport, prom_pid, prom_log
  local targets = {}

  -- GET a Prometheus API path: the decoded JSON's data.
  local function api(path)
    local r = fetch(pport, path)
    assert.are.equal(200, r.http_status, path .. ": " .. tostring(r.error)
      .. " " .. tostring(r.body))
    local doc = assert(helpers.json_decode(r.body))
    assert.are.equal("success", doc.status, r.body)
    return doc.data
  end
  local function query(expr)
    return api("/api/v1/query?query=" .. helpers.urlencode(expr))
  end

  -- What Grafana's label_values(selector, label) lists (the Prometheus
  -- data source asks /api/v1/label/LABEL/values?match[]=SELECTOR).
  local function label_values(expr)
    local selector, label = expr:match("^label_values%((.-),%s*([%w_]+)%)$")
    assert(selector, "not a label_values query: " .. expr)
    local vals = api("/api/v1/label/" .. label .. "/values?match[]="
      .. helpers.urlencode(selector))
    table.sort(vals)
    return vals
  end

  local function stop_prometheus()
    if not prom_pid then return end
    os.execute("kill -TERM " .. prom_pid .. " 2>/dev/null")
    local deadline = helpers.now() + 10
    while not helpers.gone(prom_pid) and helpers.now() < deadline do
      helpers.sleep(0.05)
    end
    if not helpers.gone(prom_pid) then
      os.execute("kill -KILL " .. prom_pid .. " 2>/dev/null")
    end
    prom_pid = nil
  end

  -- Start Prometheus scraping the host every second; true once it answers
  -- /-/ready (false: it exited, e.g. its port was taken meanwhile).
  local function start_prometheus()
    pport = free_port()
    local conf = helpers.write(dir .. "/prometheus.yml", table.concat({
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 1s",
      "scrape_configs:",
      "  - job_name: sonde",
      "    honor_labels: true",
      "    static_configs:",
      "      - targets: ['127.0.0.1:" .. sport .. "']",
      "" }, "\n"))
    local data = dir .. "/tsdb-" .. pport
    prom_log = dir .. "/prometheus-" .. pport .. ".log"
    -- (not under a SANITIZE=1 run's preloaded sanitizer runtimes)
    local p = assert(io.popen("exec env -u LD_PRELOAD " .. q(PROMETHEUS)
      .. " --config.file=" .. q(conf) .. " --storage.tsdb.path=" .. q(data)
      .. " --web.listen-address=127.0.0.1:" .. pport
      .. " --log.level=warn > " .. q(prom_log) .. " 2>&1 < /dev/null &"
      .. " echo $!"))
    prom_pid = tonumber(p:read("l"))
    p:close()
    local deadline = helpers.now() + 60
    while helpers.now() < deadline do
      if helpers.gone(prom_pid) then prom_pid = nil return false end
      local r = fetch(pport, "/-/ready")
      if r.http_status == 200 then return true end
      helpers.sleep(0.2)
    end
    error("prometheus not ready within 60 s:\n"
      .. (helpers.read_file(prom_log) or ""))
  end

  setup(function()
    dir = helpers.tmpdir()
    srv = helpers.fixture { host = "127.0.0.1" }
    local pki = helpers.pki(helpers.scratch())
    tls = helpers.s_server { cert = pki.good }
    grpc = helpers.grpc_server { "--status", "=SERVING" }
    targets = {
      web = srv:url("/a"),              -- 302 to /b, 200 "b"
      ["web-tls"] = "https://127.0.0.1:" .. tls.port .. "/",
      db = "127.0.0.1:" .. srv.port,
      api = "127.0.0.1:" .. grpc.port,
    }
    local path = helpers.write(dir .. "/probes.lua", SCRIPT)
    h = helpers.host_start { "--log-format", "json", "--listen",
      "127.0.0.1:0", path, targets.web, targets["web-tls"], pki.ca,
      tostring(srv.port), tostring(grpc.port) }
    sport = listen_port(h)
    local started
    for _ = 1, 3 do
      started = start_prometheus()
      if started then break end
    end
    assert(started, "prometheus did not start:\n"
      .. (helpers.read_file(prom_log) or ""))
    -- data: every probe's probe_success and the HTTP series scraped (after
    -- each probe's first run)
    local deadline, ok = helpers.now() + 60, false
    while helpers.now() < deadline do
      local d = query('count(probe_success{job="sonde"}) >= 5 and '
        .. 'count(probe_http_duration_seconds{job="sonde"}) >= 10 and '
        .. 'count(probe_ssl_earliest_cert_expiry{job="sonde"}) >= 1')
      if #d.result > 0 then ok = true break end
      helpers.sleep(0.5)
    end
    assert(ok, "no data in prometheus after 60 s:\n"
      .. (helpers.read_file(prom_log) or "") .. "\n" .. h:stderr())
  end)

  teardown(function()
    stop_prometheus()
    if h then h:cleanup() end
    if grpc then grpc:stop() end
    if tls then tls.stop() end
    if srv then srv:stop() end
    if dir then helpers.rmtree(dir) end
  end)

  it("promtool check metrics accepts the exposition; bucket bounds as "
    .. "Prometheus prints them", function()
    local r = fetch(sport, "/metrics")
    assert.are.equal(200, r.http_status)
    local file = helpers.write(dir .. "/metrics.txt", r.body)
    local code, out = helpers.sh("env -u LD_PRELOAD " .. q(PROMTOOL)
      .. " check metrics < " .. q(file))
    assert.are.equal(0, code, "promtool: " .. out .. "\n" .. r.body)
    assert.is_truthy(r.body:find('le="0.005"} ', 1, true), r.body)
    assert.is_nil(r.body:find('le="0.00500', 1, true), r.body)
    -- Prometheus matches the bound as written
    local d = query('sonde_probe_run_duration_seconds_bucket{job="sonde",'
      .. 'probe="web",le="0.005"}')
    assert.are.equal(1, #d.result)
    d = query('histogram_quantile(0.5, sonde_probe_run_duration_seconds_bucket'
      .. '{job="sonde",probe="web"})')
    assert.are.equal(1, #d.result)
  end)

  it("instance is each probe's target (its own label `target` too); a probe "
    .. "without a target keeps sonde's address", function()
    for name, t in pairs(targets) do
      local d = query(string.format('probe_success{job="sonde",probe="%s"}',
        name))
      assert.are.equal(1, #d.result, name)
      local m = d.result[1].metric
      assert.are.equal(t, m.instance, name)
      assert.are.equal(t, m.target, name)
      assert.are.equal("1", d.result[1].value[2], name)
    end
    local d = query('probe_success{job="sonde",probe="cmd"}')
    assert.are.equal("127.0.0.1:" .. sport, d.result[1].metric.instance)
    assert.is_nil(d.result[1].metric.target)
    d = query('probe_success{job="sonde",team="web"}')
    assert.are.equal(2, #d.result)
    -- the values blackbox_exporter's http prober gives, as scraped
    local tl = string.format('{instance="%s"}', targets["web-tls"])
    assert.are.equal("1", query("probe_http_ssl" .. tl).result[1].value[2])
    assert.are.equal("200",
      query("probe_http_status_code" .. tl).result[1].value[2])
    assert.are.equal("4", query("probe_ip_protocol" .. tl).result[1].value[2])
    for _, name in ipairs { "db", "api" } do
      local sel = string.format('{instance="%s"}', targets[name])
      assert.are.equal("4", query("probe_ip_protocol" .. sel).result[1].value[2])
    end
    assert.are.equal(5, #query("probe_http_duration_seconds" .. tl).result)
    local wl = string.format('{instance="%s"}', targets.web)
    local function value(name, sel)
      local d = query(name .. sel)
      assert.are.equal(1, #d.result, name .. sel)
      return tonumber(d.result[1].value[2])
    end
    assert.are.equal(1.1, value("probe_http_version", wl))
    assert.are.equal(1, value("probe_http_redirects", wl))
    assert.are.equal(1, value("probe_http_content_length", wl))
    assert.are.equal(1, value("probe_http_uncompressed_body_length", wl))
    assert.are.equal(0, value("probe_http_ssl", wl))
    assert.are.equal(200, value("probe_http_status_code", wl))
    -- the phases add up to no more than the run (a scrape may fall between
    -- two runs' series: compare within one scrape's /metrics instead)
    local body = fetch(sport, "/metrics").body
    local sum = 0
    for v in body:gmatch('probe_http_duration_seconds{probe="web",[^}]*} (%S+)') do
      sum = sum + tonumber(v)
    end
    local dur = tonumber(body:match('probe_duration_seconds{probe="web",[^}]*} (%S+)'))
    assert.is_true(sum > 0 and sum <= dur, sum .. " > " .. tostring(dur))
    assert.are.equal(tonumber(body:match(
      'probe_dns_lookup_time_seconds{probe="web",[^}]*} (%S+)')),
      tonumber(body:match('probe_http_duration_seconds{probe="web",[^}]*'
        .. 'phase="resolve"} (%S+)')))
  end)

  -- The queries of a dashboard with its variables filled in: values[name]
  -- is a list of values (several: Grafana's All, `allValue` or the values
  -- joined as (a|b|c)).
  local function fill(expr, values, all_value)
    expr = expr:gsub("%$__rate_interval", "1m"):gsub("%$__interval", "15s")
      :gsub("%$__range", "5m"):gsub("%$interval", "10s")
    return (expr:gsub("%$([%w_]+)", function(name)
      local v = values[name]
      if not v then return nil end
      if #v == 1 then return regex_escape(v[1]) end
      if all_value then return all_value end
      local parts = {}
      for i, x in ipairs(v) do parts[i] = regex_escape(x) end
      return "(" .. table.concat(parts, "|") .. ")"
    end))
  end

  -- Queries whose series only a response over TLS has (none for plain
  -- HTTP, as with blackbox_exporter).
  local function tls_only(expr)
    return expr:find("probe_ssl_", 1, true) or expr:find("probe_tls_", 1, true)
      or expr:find("probe_http_ssl.*> 0")
  end

  local function check_dashboard(id, all_value)
    local vars, panels = read_queries(DASHBOARDS .. id .. ".queries")
    assert.is_true(#panels >= 9, id)
    -- the variables, as Grafana asks for them (in order: one may use the
    -- one before)
    local values = {}
    for _, v in ipairs(vars) do
      values[v.name] = label_values(fill(v.query, values, all_value))
      assert.is_true(#values[v.name] > 0, id .. ": $" .. v.name)
    end
    local instance_var = values.target and "target" or "instance"
    local instances = values[instance_var]
    for _, t in pairs(targets) do
      assert.is_truthy(table.concat(instances, "\n"):find(t, 1, true),
        id .. ": $" .. instance_var .. " lacks " .. t)
    end
    local failed = {}
    local function eval(p, vals, want_data, what)
      local expr = fill(p.expr, vals, all_value)
      local d = query(expr)
      if (#d.result > 0) ~= want_data then
        failed[#failed + 1] = string.format("%s [%s] %s: %s -> %d series",
          id, what, p.title, expr, #d.result)
      end
    end
    for _, p in ipairs(panels) do
      -- the dashboard as it opens: All selected
      eval(p, values, true, "All")
      -- one target at a time (the repeated rows): an HTTPS target has
      -- every series, plain HTTP all but the TLS ones
      for _, name in ipairs { "web-tls", "web" } do
        local vals = {}
        for k, v in pairs(values) do vals[k] = v end
        vals[instance_var] = { targets[name] }
        eval(p, vals, name == "web-tls" or not tls_only(p.expr), name)
      end
    end
    assert.are.same({}, failed)
  end

  it("dashboard 7587 (Prometheus Blackbox Exporter): every panel has data",
    function()
    check_dashboard("7587", nil)
  end)

  it("dashboard 13659 (Blackbox Exporter (HTTP prober)): every panel has "
    .. "data", function()
    check_dashboard("13659", ".+")
  end)

  it("7587's rows for TCP, gRPC and exec targets: status and durations",
    function()
    local _, panels = read_queries(DASHBOARDS .. "7587.queries")
    local rows = { targets.db, targets.api, "127.0.0.1:" .. sport }
    for _, t in ipairs(rows) do
      for _, p in ipairs(panels) do
        if p.title:find("Status$") and not p.title:find("HTTP")
            or p.title:find("Probe Duration") then
          local d = query(fill(p.expr, { target = { t } }))
          assert.is_true(#d.result > 0, t .. ": " .. p.title)
        end
      end
    end
  end)
end)
