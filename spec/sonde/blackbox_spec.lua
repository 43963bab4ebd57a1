-- blackbox_exporter configurations (sonde.blackbox): the loader's errors,
-- the RE2 -> POSIX ERE mapping, and `sonde --config.file` side by side with
-- Debian's prometheus-blackbox-exporter 0.23 on the same blackbox.yml and
-- the same loopback targets, /probe answers compared series by series.
local H = require "helpers"

local BBX = "/usr/bin/prometheus-blackbox-exporter"
local q = H.q

-- The exposition text as { ["name{labels}"] = value } and the set of
-- family names with their HELP and TYPE lines.
local function parse(text)
  local series, meta = {}, {}
  for line in text:gmatch("[^\n]+") do
    local kind, name, rest = line:match("^# (%u+) (%S+) (.*)$")
    if kind then
      meta[name] = meta[name] or {}
      meta[name][kind] = rest
    elseif not line:match("^#") then
      local key, v = line:match("^(%S+) (%S+)$")
      if not key then key, v = line:match("^(.*}) (%S+)$") end
      assert(key, "cannot parse: " .. line)
      series[key] = tonumber(v) or (v == "+Inf" and math.huge) or v
    end
  end
  return series, meta
end

-- curl, not under the sanitizers' preloads (make check SANITIZE=1)
local CURL = "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS curl"

local function curl(url, header)
  local cmd = CURL .. " -s -m 20 -w '\\n%{http_code}' "
    .. (header and ("-H " .. q(header) .. " ") or "") .. q(url)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local body, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code), body
end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

describe("sonde.blackbox", function()
  local blackbox
  setup(function()
    blackbox = require "sonde.blackbox"
  end)

  local function parse_err(text)
    local conf, err = blackbox.parse(text, "bb.yml")
    assert.is_nil(conf)
    return err
  end

  -- A module left out (sonde cannot honour it): why, the others loaded.
  local function unsup(text)
    local conf, err = blackbox.parse(text .. "  ok:\n    prober: tcp\n", "bb.yml")
    assert.is_table(conf, err)
    assert.is_table(conf.modules.ok)
    assert.is_nil(conf.modules.m)
    assert.are.equal(conf.unsupported.m, conf.unsupported[1])
    return conf.unsupported.m
  end

  describe("loading", function()
    it("reads modules with blackbox_exporter's defaults", function()
      local conf = assert(blackbox.parse([[
modules:
  http_2xx:
    prober: http
  t:
    prober: tcp
    timeout: 1m30s
    tcp:
      query_response:
        - expect: "^220"
        - send: "QUIT"
]], "bb.yml"))
      local h = conf.modules.http_2xx
      assert.are.equal("http", h.prober)
      assert.are.equal(0, h.timeout)
      assert.are.equal("GET", h.spec.method)
      assert.is_true(h.spec.follow_redirects)
      assert.is_true(h.spec.tls.verify)
      assert.are.equal("ip6", h.spec.ip_protocol)
      assert.are.equal(90, conf.modules.t.timeout)
      assert.are.equal("^220", conf.modules.t.spec.query_response[1].expect.source)
    end)

    it("names the file, the module and the field of what it cannot run",
      function()
      assert.are.equal('bb.yml: module "m": http.proxy_url: is not supported by sonde',
        unsup("modules:\n  m:\n    prober: http\n    http:\n      proxy_url: http://p\n"))
      assert.are.equal('bb.yml: module "m": http.nope: unknown field of http',
        parse_err("modules:\n  m:\n    prober: http\n    http:\n      nope: 1\n"))
      assert.are.equal('bb.yml: module "m": prober: must be http, tcp, grpc, dns or icmp, got "ftp"',
        parse_err("modules:\n  m:\n    prober: ftp\n"))
      assert.are.equal('bb.yml: module "m": timeout: must be a duration (5s, 500ms, 1m), got "soon"',
        parse_err("modules:\n  m:\n    prober: tcp\n    timeout: soon\n"))
      assert.are.equal('bb.yml: module "m": timeout: must be a duration (5s, 500ms, 1m), got 5',
        parse_err("modules:\n  m:\n    prober: tcp\n    timeout: 5\n"))
      assert.matches('^bb.yml: module "m": http.fail_if_body_matches_regexp%[1%]: '
        .. 'regular expression "%(%?m%)%^a" cannot be used: the multi%-line flag',
        unsup("modules:\n  m:\n    prober: http\n    http:\n"
          .. "      fail_if_body_matches_regexp: [ok, '(?m)^a']\n"))
      assert.matches('http.tls_config.ca_file: cannot be read: /nonexistent',
        unsup("modules:\n  m:\n    prober: http\n    http:\n"
          .. "      tls_config: { ca_file: /nonexistent/ca.pem }\n"), 1, true)
      assert.are.equal('bb.yml: module "m": http.tls_config.min_version: must be TLS10, '
        .. 'TLS11, TLS12 or TLS13, got "TLS14"',
        parse_err("modules:\n  m:\n    prober: http\n    http:\n"
          .. "      tls_config: { min_version: TLS14 }\n"))
      assert.are.equal('bb.yml: module "m": http.compression: only "" or identity is '
        .. 'supported by sonde (it asks for no compression), got "gzip"',
        unsup("modules:\n  m:\n    prober: http\n    http:\n      compression: gzip\n"))
      -- a send after an expect: expanded with its submatches
      local qr = assert(blackbox.parse("modules:\n  m:\n    prober: tcp\n    tcp:\n"
        .. "      query_response:\n"
        .. "        - { expect: '^(?:a)(.*)(?P<n>b)$', send: 'x ${1} $n $$ ${7}' }\n",
        "bb.yml")).modules.m.spec.query_response[1]
      assert.are.equal("x $2 $3 $$ ", qr.template)
      assert.matches('tcp.query_response%[0%]%.send: the submatch 10 is the regexp\'s '
        .. 'group 10 as POSIX ERE: at most 9 can be used',
        unsup("modules:\n  m:\n    prober: tcp\n    tcp:\n      query_response:\n"
          .. "        - { expect: '" .. ("(a)"):rep(10) .. "', send: 'x $10' }\n"))
      assert.matches('^bb.yml: module "m": dns.validate_answer_rrs.fail_if_matches_regexp%[0%]: '
        .. 'regular expression "%(%?m%)a" cannot be used: ',
        unsup("modules:\n  m:\n    prober: dns\n    dns:\n      query_name: x\n"
          .. "      validate_answer_rrs: { fail_if_matches_regexp: ['(?m)a'] }\n"))
      assert.are.equal('bb.yml: module "m": dns.query_name: query name must be set for DNS module',
        parse_err("modules:\n  m:\n    prober: dns\n    dns: { query_type: A }\n"))
      assert.are.equal('bb.yml: module "m": icmp.source_ip_address: must be an IP address, got "here"',
        parse_err("modules:\n  m:\n    prober: icmp\n    icmp: { source_ip_address: here }\n"))
      assert.are.equal('bb.yml: module "m": dns.source_ip_address: is not supported by sonde',
        unsup("modules:\n  m:\n    prober: dns\n    dns: { query_name: x, source_ip_address: 127.0.0.1 }\n"))
      assert.are.equal('bb.yml: module "m": grpc.tls: must be true or false, got "yes please"',
        parse_err("modules:\n  m:\n    prober: grpc\n    grpc: { tls: yes please }\n"))
      assert.are.equal("bb.yml: nope: unknown field of the configuration",
        parse_err("nope: 1\n"))
      assert.matches("^bb.yml: error parsing config file: ", parse_err("modules: [\n"))
      local _, err = blackbox.load("/nonexistent/bb.yml")
      assert.matches("^error reading config file: /nonexistent/bb.yml", err)
    end)

    it("takes the scrape's timeout header minus the offset, as getTimeout",
      function()
      local m = { timeout = 0 }
      assert.are.equal(119.5, blackbox.timeout(m, nil, 0.5))
      assert.are.equal(4.5, blackbox.timeout(m, "5", 0.5))
      assert.are.equal(119.5, blackbox.timeout(m, "0", 0.5))
      assert.are.equal(3, blackbox.timeout({ timeout = 3 }, "10", 0.5))
      assert.are.equal(9.5, blackbox.timeout({ timeout = 30 }, "10", 0.5))
      assert.are.equal(3, blackbox.timeout({ timeout = 3 }, "0.2", 0.5))
      local t, err = blackbox.timeout(m, "abc", 0.5)
      assert.is_nil(t)
      assert.matches("invalid syntax", err)
    end)

    it("sends basic_auth, bearer_token and Host as configured, and drops "
      .. "Authorization on a redirect to another host, as Go's client", function()
      local web = H.fixture { log = true }
      local conf = assert(blackbox.parse(string.format([[
modules:
  basic:
    prober: http
    http:
      basic_auth: { username: user, password: pass }
      headers: { Host: "vhost.example:8080", X-Probe: "1" }
  bearer:
    prober: http
    http:
      bearer_token: s3cret
]]), "bb.yml"))
      local to = H.urlencode("http://localhost:" .. web.port .. "/ok")
      local results = H.run(function()
        local task = require "sonde.task"
        local out = {}
        for _, c in ipairs { { "basic", web:url("/ok") },
            { "bearer", web:url("/redirect?to=" .. to) } } do
          out[#out + 1] = task.await("spec", function(k)
            return conf.modules[c[1]]:run(c[2], { timeout = 5 }, k)
          end).success
        end
        return out
      end, 20)
      assert.are.same({ true, true }, results)
      local reqs = web:requests()
      assert.are.equal(3, #reqs)
      assert.are.same({ "Authorization: Basic dXNlcjpwYXNz" }, H.header_lines(reqs[1], "Authorization"))
      assert.are.same({ "Host: vhost.example:8080" }, H.header_lines(reqs[1], "Host"))
      assert.are.same({ "X-Probe: 1" }, H.header_lines(reqs[1], "X-Probe"))
      assert.are.same({ "Authorization: Bearer s3cret" }, H.header_lines(reqs[2], "Authorization"))
      assert.are.same({ "Host: 127.0.0.1:" .. web.port }, H.header_lines(reqs[2], "Host"))
      -- the redirect went to another host name: no Authorization there
      assert.are.same({}, H.header_lines(reqs[3], "Authorization"))
      assert.are.same({ "Host: localhost:" .. web.port }, H.header_lines(reqs[3], "Host"))
      web:stop()
    end)

    it("maps RE2 to POSIX ERE, or refuses with the reason", function()
      local regex = require "sonde.regex"
      local cases = {
        { "(?i)^ok\\s+\\d{3}$", "OK  200", true }, { "a.c", "a\nc", false },
        { "(?s)a.c", "a\nc", true }, { "[\\]a-]+$", "]-a", true },
        { "^HTTP/1\\.[01] 200", "HTTP/1.1 200 OK", true },
        { "foo|bar", "xbar", true }, { "[^a-z]", "abc", false },
        { "x*?y", "xxy", true }, { "a{2,3}", "aa", true },
        { "(?P<n>ab)+$", "abab", true }, { "[[:alpha:]]+", "abc", true },
        { "\\x41", "A", true }, { "[\\d.]+", "1.2", true },
        { "\\Qa.b\\E", "axb", false }, { "\\Qa.b\\E", "a.b", true },
        { "(?i:a)B", "Ab", false }, { "(?i:a)B", "AB", true },
        { "\\W", "abc", false }, { "{", "{", true },
      }
      for _, c in ipairs(cases) do
        local re, err = regex.compile(c[1])
        assert.is_table(re, c[1] .. ": " .. tostring(err))
        assert.are.equal(c[3], re.match(c[2]), c[1] .. " on " .. c[2])
      end
      for _, bad in ipairs { "\\p{L}", "(?m)^a", "\\1", "[[:^alpha:]]", "[\\D]",
          "(a", "[é]" } do
        assert.is_nil((regex.compile(bad)), bad)
      end
    end)
  end)
end)

describe("sonde --config.file side by side with blackbox_exporter", function()
  if not H.read_file(BBX) then
    pending("prometheus-blackbox-exporter is not installed (make test-deps)")
    return
  end
  local dir, conf, web, line, tls, grpc_ok, grpc_svc, bbx_pid, bbx_port
  local host, sonde_port, pki

  setup(function()
    dir = H.scratch()
    pki = H.pki(dir)
    local text = H.read_file(H.root .. "/spec/fixtures/blackbox/side-by-side.yml")
    conf = dir .. "/blackbox.yml"
    H.write(conf, (text:gsub("@CA@", pki.ca)))
    web = H.fixture {}
    line = H.fixture { mode = "line" }
    tls = H.s_server { cert = pki.good }
    grpc_ok = H.grpc_server { "--status", "=SERVING", "--status", "orders=NOT_SERVING" }
    grpc_svc = grpc_ok
    -- Debian's blackbox_exporter on a free port
    for _ = 1, 20 do
      bbx_port = math.random(20000, 60000)
      local p = io.popen("exec env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS " .. BBX .. " --config.file=" .. q(conf)
        .. " --web.listen-address=127.0.0.1:" .. bbx_port
        .. " >" .. q(dir .. "/bbx.log") .. " 2>&1 </dev/null & echo $!")
      bbx_pid = tonumber(p:read("l"))
      p:close()
      if H.eventually(function()
        return curl("http://127.0.0.1:" .. bbx_port .. "/-/healthy") == 200
      end, 10) then break end
      os.execute("kill " .. bbx_pid .. " 2>/dev/null")
      bbx_pid = nil
    end
    assert(bbx_pid, "blackbox_exporter did not start: " .. (H.read_file(dir .. "/bbx.log") or ""))
    host = H.host_start { "--log-format", "json", "--log-level", "info", "--config.file", conf,
      "--web.listen-address", "127.0.0.1:0" }
    sonde_port = H.listen_port(host)
  end)

  teardown(function()
    if bbx_pid then os.execute("kill " .. bbx_pid .. " 2>/dev/null") end
    if host then host:cleanup() end
    H.stop_fixtures()
    H.stop_s_servers()
    H.stop_grpc_servers()
  end)

  local extra = ""     -- more query parameters for the next probes
  local function probe(port, module, target, debug)
    return curl(string.format("http://127.0.0.1:%d/probe?module=%s&target=%s%s%s",
      port, module, H.urlencode(target), debug and "&debug=true" or "", extra),
      "X-Prometheus-Scrape-Timeout-Seconds: 5")
  end

  -- Values that depend on time only: compared for presence.
  local TIMING = { probe_duration_seconds = true, probe_dns_lookup_time_seconds = true,
    probe_http_duration_seconds = true, probe_grpc_duration_seconds = true,
    probe_dns_duration_seconds = true, probe_icmp_duration_seconds = true }

  -- Both answers for module/target: the same series (names and label
  -- sets), HELP and TYPE, and the same values but for timings; returns
  -- sonde's series.
  local function same(module, target, want_success, known)
    -- want_success nil: whatever both say
    local bcode, btext = probe(bbx_port, module, target)
    local scode, stext = probe(sonde_port, module, target)
    assert.are.equal(200, bcode, btext)
    assert.are.equal(200, scode, stext)
    local b, bmeta = parse(btext)
    local s, smeta = parse(stext)
    local label = module .. " " .. target
    -- differences listed in README (known = { series = true }): left out
    for k in pairs(known or {}) do
      for _, t in ipairs { b, s } do
        for key in pairs(t) do
          if key == k or key:sub(1, #k + 1) == k .. "{" then t[key] = nil end
        end
      end
      bmeta[k], smeta[k] = nil, nil
    end
    assert.are.same(keys(b), keys(s), label .. "\nblackbox:\n" .. btext .. "\nsonde:\n" .. stext)
    assert.are.same(bmeta, smeta, label)
    for key, v in pairs(b) do
      local name = key:match("^[^{]+")
      if not TIMING[name] then
        assert.are.equal(v, s[key], label .. ": " .. key .. "\nblackbox:\n"
          .. btext .. "\nsonde:\n" .. stext)
      end
    end
    if want_success ~= nil then
      assert.are.equal(want_success and 1 or 0, s.probe_success, label .. "\n" .. stext)
    end
    return s, b
  end

  describe("http", function()
    it("2xx, other codes, refused, valid_status_codes", function()
      same("http_2xx", web:url("/ok"), true)
      same("http_2xx", web:url("/status/404"), false)
      same("http_2xx", "127.0.0.1:" .. H.closed_port(), false)
      same("http_404_ok", web:url("/status/404"), true)
      same("http_404_ok", web:url("/ok"), false)
      -- a target without a scheme is http://
      same("http_2xx", "127.0.0.1:" .. web.port .. "/ok", true)
      -- names: resolved first (IPv6 preferred, then IPv4), or not at all
      same("http_2xx", "http://localhost:" .. web.port .. "/ok", nil)
      same("http_2xx", "http://nope.invalid:" .. web.port .. "/ok", false)
    end)

    it("body and header regexps", function()
      local s = same("http_body", web:url("/ok"), true)
      assert.are.equal(0, s.probe_failed_due_to_regex)
      s = same("http_body", web:url("/b"), false)
      assert.are.equal(1, s.probe_failed_due_to_regex)
      same("http_header_missing_ok", web:url("/ok"), true)
      s = same("http_header_required", web:url("/ok"), false)
      assert.are.equal(1, s.probe_failed_due_to_regex)
    end)

    it("redirects, followed or not", function()
      local s = same("http_2xx", web:url("/a"), true)
      assert.are.equal(1, s.probe_http_redirects)
      s = same("http_no_follow", web:url("/a"), false)
      assert.are.equal(302, s.probe_http_status_code)
      same("http_old_no_follow", web:url("/a"), false)
      -- to another host (127.0.0.1 -> localhost): followed, as Go's client
      local to = "http://localhost:" .. web.port .. "/ok"
      s = same("http_2xx", web:url("/redirect?to=" .. H.urlencode(to)), nil)
      assert.are.equal(1, s.probe_http_redirects)
      -- a loop: Go stops at its 11th redirect
      s = same("http_2xx", web:url("/loop"), false)
      assert.are.equal(11, s.probe_http_redirects)
      -- POST through 303 (then GET) and 307 (POST again)
      same("http_post", web:url("/redirect?to=%2Fok&code=303"), true)
      same("http_post", web:url("/redirect?to=%2Fok&code=307"), true)
      -- a redirect to a port where nothing listens
      same("http_2xx", web:url("/redirect?to=" .. H.urlencode("http://127.0.0.1:"
        .. H.closed_port() .. "/")), false)
    end)

    it("hostname= sets the Host header, as blackbox", function()
      extra = "&hostname=vhost.example"
      local s = same("http_2xx", web:url("/host"), true)
      extra = ""
      -- the fixture answers the Host it got: same length as blackbox's
      assert.are.equal(#"vhost.example", s.probe_http_content_length)
      for _, port in ipairs { bbx_port, sonde_port } do
        local code, body = curl(string.format("http://127.0.0.1:%d/probe?module="
          .. "http_host&target=%s&hostname=other.example", port,
          H.urlencode(web:url("/host"))))
        assert.are.equal(400, code)
        assert.are.equal("host header defined both in module configuration "
          .. "(vhost.example) and with URL-parameter 'hostname' (other.example)\n", body)
      end
    end)

    it("keeps the cookies a redirect sets, as Go's cookie jar", function()
      local out = os.tmpname()
      local p = io.popen("exec env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS "
        .. "/usr/bin/python3 " .. q(H.root .. "/spec/fixtures/blackbox/cookies.py")
        .. " >" .. q(out) .. " 2>&1 </dev/null & echo $!")
      local pid = tonumber(p:read("l"))
      p:close()
      local port = H.eventually(function()
        return tonumber((H.read_file(out) or ""):match("PORT (%d+)"))
      end, 10)
      assert(port, H.read_file(out))
      local ok, err = pcall(function()
        local s = same("http_2xx", "http://127.0.0.1:" .. port .. "/login", true)
        assert.are.equal(#"cookies: sid=abc123; theme=dark", s.probe_http_content_length)
      end)
      os.execute("kill " .. pid .. " 2>/dev/null")
      os.remove(out)
      assert(ok, err)
    end)

    it("HTTP versions, method, body and headers", function()
      same("http_versions", web:url("/ok"), true)
      same("http_versions_bad", web:url("/ok"), false)
      same("http_post", web:url("/ok"), true)
    end)

    it("TLS: verified, not verified, refused, fail_if_ssl / fail_if_not_ssl",
      function()
      local target = "https://127.0.0.1:" .. tls.port .. "/"
      -- s_server -www's page lists the client's own ciphers: its length
      -- is the client's, not the prober's
      local page = { probe_http_uncompressed_body_length = true }
      local s = same("http_tls", target, true, page)
      assert.are.equal(1, s.probe_http_ssl)
      assert.are.equal(H.not_after(pki.good.cert), s.probe_ssl_earliest_cert_expiry)
      s = same("http_tls_insecure", target, true, page)
      assert.are.equal(-62135596800, s.probe_ssl_last_chain_expiry_timestamp_seconds)
      same("http_2xx", target, false)            -- not verified: a test CA
      same("http_tls_min13", target, true, page)
      same("http_fail_if_ssl", target, false, page)
      same("http_fail_if_not_ssl", web:url("/ok"), false)
    end)
  end)

  describe("tcp", function()
    it("connects, or not", function()
      same("tcp_connect", "127.0.0.1:" .. web.port, true)
      -- a name: resolved first, IPv6 preferred, else IPv4 (localhost is
      -- IPv4 only here, or the fixture is not there: both agree)
      same("tcp_connect", "localhost:" .. web.port, nil)
      same("tcp_connect", "nope.invalid:" .. web.port, false)
      same("tcp_connect", "127.0.0.1:" .. H.closed_port(), false)
    end)

    it("query_response", function()
      local s = same("tcp_ping", "127.0.0.1:" .. line.port, true)
      assert.are.equal(0, s.probe_failed_due_to_regex)
      s = same("tcp_quit_nomatch", "127.0.0.1:" .. line.port, false)
      assert.are.equal(1, s.probe_failed_due_to_regex)
      -- a send expanded with the expect's submatches (Go's Regexp.Expand:
      -- names, numbers past a (?:) group, $$, groups that do not exist)
      s = same("tcp_expand", "127.0.0.1:" .. line.port, true)
      assert.are.equal(0, s.probe_failed_due_to_regex)
      same("tcp_expand_nomatch", "127.0.0.1:" .. line.port, false)
    end)

    it("TLS", function()
      local s = same("tcp_tls", "127.0.0.1:" .. tls.port, true)
      assert.are.equal(H.not_after(pki.good.cert), s.probe_ssl_earliest_cert_expiry)
      same("tcp_tls", "127.0.0.1:" .. web.port, false)
    end)
  end)

  describe("grpc", function()
    it("SERVING, NOT_SERVING, refused", function()
      local s = same("grpc_plain", "127.0.0.1:" .. grpc_ok.port, true)
      assert.are.equal(1, s['probe_grpc_healthcheck_response{serving_status="SERVING"}'])
      s = same("grpc_service", "127.0.0.1:" .. grpc_svc.port, false)
      assert.are.equal(1, s['probe_grpc_healthcheck_response{serving_status="NOT_SERVING"}'])
      same("grpc_plain", "127.0.0.1:" .. H.closed_port(), false)
      same("grpc_bare", "127.0.0.1:" .. grpc_ok.port, false)
    end)

    it("TLS", function()
      local g = H.grpc_server { "--status", "=SERVING", "--cert", pki.good.cert,
        "--key", pki.good.key }
      local s = same("grpc_tls", "127.0.0.1:" .. g.port, true)
      assert.are.equal(1, s.probe_grpc_ssl)
      assert.are.equal(H.not_after(pki.good.cert), s.probe_ssl_earliest_cert_expiry)
      -- a plaintext server: the handshake fails in both
      same("grpc_tls", "127.0.0.1:" .. grpc_ok.port, false)
      g:stop()
    end)
  end)

  -- dns and icmp modules run through sonde's dns and icmp probers: compared
  -- when this build has them
  describe("dns and icmp", function()
    local probers = require "sonde.probers"

    it("dns against the fixture's DNS server", function()
      if not probers.handlers.dns then
        pending("no dns prober in this build")
        return
      end
      local dns = H.fixture { mode = "dns" }
      local target = "127.0.0.1:" .. dns.port
      local s = same("dns_a", target, true)
      assert.are.equal(1, s.probe_dns_answer_rrs)
      same("dns_a_rr", target, false)
      same("dns_nx", target, false)
      same("dns_nx_ok", target, true)
      dns:stop()
    end)

    it("icmp to loopback", function()
      if not probers.handlers.icmp then
        pending("no icmp prober in this build")
        return
      end
      for _, t in ipairs { "127.0.0.1", "::1" } do
        same("icmp_basic", t, true)
        same("icmp_ip4", t, true)
      end
    end)
  end)

  describe("/probe", function()
    it("answers 400 for an unknown module or no target, as blackbox", function()
      for _, port in ipairs { bbx_port, sonde_port } do
        local code, body = curl("http://127.0.0.1:" .. port .. "/probe?module=nope&target=x")
        assert.are.equal(400, code)
        assert.are.equal('Unknown module "nope"\n', body)
        code, body = curl("http://127.0.0.1:" .. port .. "/probe?module=http_2xx")
        assert.are.equal(400, code)
        assert.are.equal("Target parameter is missing\n", body)
      end
      local _, m = curl("http://127.0.0.1:" .. sonde_port .. "/metrics")
      assert.matches("\nblackbox_module_unknown_total [1-9]", m)
      assert.matches("\nblackbox_exporter_config_last_reload_successful 1\n", m, 1, true)
    end)

    it("bounds a probe by the scrape's timeout header minus the offset", function()
      for _, port in ipairs { bbx_port, sonde_port } do
        local url = string.format("http://127.0.0.1:%d/probe?module=tcp_ping&"
          .. "target=%s&debug=true", port, H.urlencode("127.0.0.1:" .. line.port))
        local _, body = curl(url, "X-Prometheus-Scrape-Timeout-Seconds: 3")
        assert.matches("timeout_seconds=2.5\n", body, 1, true)
        -- the module's own timeout when shorter (tcp_connect: 5s)
        url = string.format("http://127.0.0.1:%d/probe?module=tcp_connect&"
          .. "target=%s&debug=true", port, H.urlencode("127.0.0.1:" .. line.port))
        _, body = curl(url, "X-Prometheus-Scrape-Timeout-Seconds: 30")
        assert.matches("timeout_seconds=5\n", body, 1, true)
        local code
        code, body = curl(url, "X-Prometheus-Scrape-Timeout-Seconds: soon")
        assert.are.equal(500, code)
        assert.matches("^Failed to parse timeout from Prometheus header: ", body)
      end
    end)

    it("debug=true gives the logs, the series and the module", function()
      local code, body = probe(sonde_port, "http_2xx", web:url("/ok"), true)
      assert.are.equal(200, code)
      assert.matches("^Logs for the probe:\n", body)
      assert.matches('msg="Probe succeeded"', body, 1, true)
      assert.matches("\n\n\nMetrics that would have been returned:\n", body, 1, true)
      assert.matches("\nprobe_success 1\n", body, 1, true)
      assert.matches("\n\n\nModule configuration:\n", body, 1, true)
      assert.matches("\nprober: http\n", body, 1, true)
    end)

    it("probes concurrently without blocking the loop", function()
      -- a slow target does not hold a fast one back
      local slow = io.popen(CURL .. " -s -m 20 -H 'X-Prometheus-Scrape-Timeout-Seconds: 3' "
        .. q(string.format("http://127.0.0.1:%d/probe?module=tcp_connect&target=%s",
          sonde_port, H.urlencode("127.0.0.1:" .. web.port))))
      local code = probe(sonde_port, "http_2xx", web:url("/ok"))
      assert.are.equal(200, code)
      slow:close()
    end)

    it("runs dns and icmp modules only with their probers", function()
      local code, body = probe(sonde_port, "dns_example", "127.0.0.1:53")
      assert.are.equal(200, code)
      local s = parse(body)
      local probers = require "sonde.probers"
      if not probers.handlers.dns then
        assert.are.equal(0, s.probe_success)
        local _, dbg = probe(sonde_port, "dns_example", "127.0.0.1:53", true)
        assert.matches("the dns prober is not part of this build", dbg, 1, true)
      end
    end)
  end)
end)

describe("sonde.module", function()
  it("makes a declared probe of a module and a target, with hooks", function()
    local web = H.fixture {}
    local dir = H.scratch()
    local conf = dir .. "/bb.yml"
    H.write(conf, "modules:\n  http_2xx:\n    prober: http\n    http:\n"
      .. "      valid_status_codes: [200]\n")
    local script = H.script("module.lua", string.format([[
local sonde = require "sonde"
local bb = sonde.blackbox.load(%q)
assert(bb.modules.http_2xx)
sonde.probe { name = "ok", module = sonde.module("http_2xx"), target = %q,
  period = 0.2, timeout = 2,
  on_result = function(r) sonde.log.info("seen %%s %%s %%s", r.status,
    tostring(r.http_status), r.blackbox:match("probe_success %%d")) end }
sonde.probe { name = "bad", module = sonde.module("http_2xx"), target = %q,
  period = 0.2, timeout = 2,
  on_result = function(r) sonde.log.info("bad %%s %%s", r.status, r.reason) end }
]], conf, web:url("/ok"), web:url("/status/500")))
    local metrics_text
    local _, text = H.host_until({ "--log-level", "info", "--listen", "127.0.0.1:0",
        "--log-format", "json", script }, function(h)
      local e = h:stderr()
      if e:find("seen success 200 probe_success 1", 1, true)
          and e:find("bad failure expect", 1, true) then
        local r = H.fetch(H.listen_port(h), "/metrics")
        metrics_text = r.body
        return true
      end
    end)
    assert.matches("seen success 200", text, 1, true)
    -- the target is the series' target label
    assert.matches('probe_success{probe="ok",kind="readiness",target="'
      .. web:url("/ok"):gsub("%p", "%%%0") .. '"', metrics_text)
    -- the module's own series, with the probe's labels, one family each
    local function L(name)
      return ('{probe="%s",kind="readiness",target="%s",instance="%s"'):format(
        name, web:url(name == "ok" and "/ok" or "/status/500"),
        web:url(name == "ok" and "/ok" or "/status/500")):gsub("%p", "%%%0")
    end
    assert.matches("\nprobe_http_status_code" .. L("ok") .. "} 200\n", metrics_text)
    assert.matches("\nprobe_http_status_code" .. L("bad") .. "} 500\n", metrics_text)
    assert.matches("\nprobe_http_duration_seconds" .. L("ok")
      .. ',phase="processing"} [%d.e-]+\n', metrics_text)
    assert.matches("\nprobe_http_version" .. L("ok") .. "} 1.1\n", metrics_text)
    for _, fam in ipairs { "probe_http_status_code", "probe_http_duration_seconds",
        "probe_success", "probe_ip_protocol" } do
      local _, n = metrics_text:gsub("# TYPE " .. fam .. " ", "")
      assert.are.equal(1, n, fam .. "\n" .. metrics_text)
    end
    local code, _, err = H.host_run { H.script("nomod.lua", [[
local sonde = require "sonde"
sonde.probe { name = "x", module = sonde.module("nope"), target = "x" }
]]) }
    assert.are.equal(2, code)
    assert.matches("no blackbox configuration loaded", err, 1, true)
    web:stop()
  end)

  it("with --config.file: the script's modules come from it", function()
    local dir = H.scratch()
    local conf = dir .. "/bb.yml"
    H.write(conf, "modules:\n  tcp_connect:\n    prober: tcp\n")
    local code, _, err = H.host_run { "--config.file=" .. conf, H.script("m.lua", [[
local sonde = require "sonde"
sonde.module("tcp_connect")
local ok, e = pcall(sonde.module, "nope")
assert(not ok and e:find('unknown module "nope"', 1, true), e)
os.exit(0)
]]) }
    assert.are.equal(0, code, err)
    local out
    -- check and once take it too
    local probes = H.script("mp.lua", [[
local sonde = require "sonde"
sonde.probe { name = "m", module = sonde.module("tcp_connect"), target = "127.0.0.1:1" }
]])
    code, out = H.host_run { "--config.file", conf, "check", probes }
    assert.are.equal(0, code)
    assert.matches("probe   m ", out, 1, true)
    code, out = H.host_run { "--config.file", conf, "once", probes }
    assert.are.equal(1, code)
    assert.matches("failure  connect_refused", out, 1, true)
    code, out = H.host_run { "--config.check", "--config.file", conf }
    assert.are.equal(0, code)
    assert.matches("config file is ok: 1 module", out, 1, true)
    -- Debian's own blackbox.yml (prometheus-blackbox-exporter) loads whole,
    -- irc_banner's `PONG ${1}` and pop3s_banner's `^+OK` included
    local debian = "/etc/prometheus/blackbox.yml"
    assert.is_truthy(H.read_file(debian), debian .. " (prometheus-blackbox-exporter)")
    code, out, err = H.host_run { "--config.check", "--config.file", debian }
    assert.are.equal(0, code, err)
    assert.matches("config file is ok: ", out, 1, true)
    H.write(conf, "modules:\n  t:\n    prober: tcp\n    tcp: { source_ip_address: 1.2.3.4 }\n")
    -- a module sonde cannot honour: logged at load, /probe answers 501
    -- with the reason, the rest runs
    local probe_answer
    local _, text = H.host_until({ "--config.file", conf, "--listen", "127.0.0.1:0",
        "--log-format", "json" }, function(h)
      if h:stderr():find("blackbox_module_unsupported", 1, true) then
        probe_answer = H.fetch(H.listen_port(h), "/probe?module=t&target=127.0.0.1:1")
        return true
      end
    end)
    assert.matches('tcp.source_ip_address: is not supported by sonde', text, 1, true)
    assert.are.equal(501, probe_answer.http_status)
    assert.matches('module "t": tcp.source_ip_address: is not supported by sonde',
      probe_answer.body, 1, true)
    code, _, err = H.host_run { "--config.file=" .. conf, "--config.check" }
    assert.are.equal(1, code)
    assert.matches('module "t": tcp.source_ip_address: is not supported by sonde', err, 1, true)
  end)
end)
