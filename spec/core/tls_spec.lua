-- TLS facts, options and expiry thresholds (src/tls.c, src/http.c) against
-- `openssl s_server` with certificates made here by the `openssl` command
-- (spec/support/pki.lua): a CA, a valid leaf, one expiring in 5 days, an
-- expired one, one for another name, a client certificate.
local sonde = require "sonde"
local helpers = require "helpers"

local http, assert_raises = helpers.prober(sonde.http_get)

local DAY = 86400

describe("TLS on http_get", function()
  local pki, good, soon, expired, epoch, mtls, tls12, sni

  lazy_setup(function()
    pki = helpers.pki(helpers.scratch())
    good = helpers.s_server { cert = pki.good }
    soon = helpers.s_server { cert = pki.soon }
    expired = helpers.s_server { cert = pki.expired }
    epoch = helpers.s_server { cert = pki.epoch }
    -- a client certificate signed by the CA is required
    mtls = helpers.s_server { cert = pki.good,
      args = { "-Verify", "1", "-CAfile", pki.ca } }
    -- at most TLS 1.2
    tls12 = helpers.s_server { cert = pki.good, args = { "-tls1_2" } }
    -- the `other` certificate for the SNI other.sonde.test, else `good`
    sni = helpers.s_server { cert = pki.good, args = { "-cert2",
      pki.other.cert, "-key2", pki.other.key, "-servername",
      "other.sonde.test" } }
  end)

  lazy_teardown(helpers.stop_s_servers)

  local function url(s) return "https://127.0.0.1:" .. s.port .. "/" end

  describe("facts", function()
    it("match what openssl says of the certificate", function()
      local r = http { url = url(good), timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      local t = r.tls
      assert.is_table(t)
      assert.are.equal(helpers.not_after(pki.good.cert), t.earliest_expiry)
      -- the chain verified: leaf (90 days) and CA (10 years): the leaf's
      assert.are.equal(helpers.not_after(pki.good.cert), t.last_chain_expiry)
      assert.is_true(t.verified)
      assert.are.equal("CN=good.sonde.test", t.subject)
      assert.are.equal("CN=sonde test CA,O=sonde test", t.issuer)
      assert.are.same({ "good.sonde.test", "localhost" }, t.dns_names)
      assert.are.equal(helpers.x509(pki.good.cert, "-serial")
        :match("=(%x+)"):lower(), t.serial)
      local fp = helpers.x509(pki.good.cert, "-fingerprint -sha256")
        :match("=([%x:]+)"):gsub(":", ""):lower()
      assert.are.equal(fp, t.fingerprint_sha256)
      assert.are.equal("TLS 1.3", t.version)
      assert.matches("^TLS_", t.cipher)
    end)

    it("are there without verification, the chain not verified", function()
      local r = http { url = url(expired), timeout = 5 }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      assert.are.equal(helpers.not_after(pki.expired.cert),
        r.tls.earliest_expiry)
      assert.are.equal(1580515200, r.tls.earliest_expiry) -- 2020-02-01
      assert.is_false(r.tls.verified)
      assert.is_nil(r.tls.last_chain_expiry)
    end)

    it("a notAfter of 1970-01-01T00:00:00Z is 0, a time like any other",
      function()
      local r = http { url = url(epoch), timeout = 5 }
      assert.are.same({ "success", "ok", 0 },
        { r.status, r.reason, r.tls.earliest_expiry })
      r = http { url = url(epoch), timeout = 5,
        tls = { expiry_warning = 14 * DAY } }
      assert.are.same({ "failure", "tls_expiry" }, { r.status, r.reason })
      assert.matches("expired .* days ago %(1970%-01%-01 00:00:00 UTC%)",
        r.output)
    end)

    it("TLS 1.2 is named as blackbox_exporter names it", function()
      local r = http { url = url(tls12), timeout = 5 }
      assert.are.same({ "success", "TLS 1.2" }, { r.status, r.tls.version })
      assert.matches("^TLS_ECDHE_", r.tls.cipher)
    end)

    it("plain HTTP has none", function()
      local srv = helpers.fixture {}
      local r = http { url = srv:url("/ok") }
      srv:stop()
      assert.are.equal("success", r.status)
      assert.is_nil(r.tls)
    end)
  end)

  describe("verification", function()
    it("fails without the CA (reason tls), succeeds with ca_file", function()
      local r = http { url = url(good), timeout = 5, tls = { verify = true } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      r = http { url = url(good), timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("an expired certificate fails verification (reason tls)", function()
      local r = http { url = url(expired), timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("expired", r.error)
    end)
  end)

  describe("server_name", function()
    it("is the SNI sent: the server answers with the other certificate",
      function()
      local r = http { url = url(sni), timeout = 5,
        tls = { verify = true, ca_file = pki.ca,
                server_name = "other.sonde.test" } }
      assert.are.same({ "success", "CN=other.sonde.test" },
        { r.status, r.tls.subject })
      -- without it, no SNI for an IP literal: the default certificate
      r = http { url = url(sni), timeout = 5 }
      assert.are.same({ "success", "CN=good.sonde.test" },
        { r.status, r.tls.subject })
      -- a host name in the URL is the SNI, server_name replaces it
      r = http { url = "https://localhost:" .. sni.port .. "/", timeout = 5,
        tls = { server_name = "other.sonde.test" } }
      assert.are.same({ "success", "CN=other.sonde.test" },
        { r.status, r.tls.subject })
    end)

    it("is the name verified: a mismatch fails with reason tls", function()
      local r = http { url = url(good), timeout = 5,
        tls = { verify = true, ca_file = pki.ca,
                server_name = "wrong.sonde.test" } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("hostname mismatch", r.error)
      r = http { url = url(good), timeout = 5,
        tls = { verify = true, ca_file = pki.ca,
                server_name = "good.sonde.test" } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("is not checked without verify", function()
      local r = http { url = url(good), timeout = 5,
        tls = { server_name = "wrong.sonde.test" } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)
  end)

  describe("mutual TLS", function()
    it("succeeds with the client certificate and key", function()
      local r = http { url = url(mtls), timeout = 5,
        tls = { verify = true, ca_file = pki.ca, cert_file = pki.client.cert,
                key_file = pki.client.key } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("fails without it, reason tls", function()
      local r = http { url = url(mtls), timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    end)

    it("a file that cannot be read is refused when the spec is checked",
      function()
      for _, f in ipairs { "ca_file", "cert_file", "key_file" } do
        local t = { cert_file = pki.client.cert }
        t[f] = pki.dir .. "/none"
        assert_raises({ url = url(mtls), timeout = 5, tls = t },
          "tls." .. f .. ": cannot be read: " .. pki.dir .. "/none: No such file")
      end
    end)

    it("a key that went away after the spec was checked fails the run, "
      .. "reason tls", function()
      local key = pki.dir .. "/key-copy.pem"
      assert(os.execute("cp " .. helpers.q(pki.client.key) .. " "
        .. helpers.q(key)))
      -- the same table again is not checked again (see sonde.http_get)
      local spec = { url = url(mtls), timeout = 5,
        tls = { cert_file = pki.client.cert, key_file = key } }
      local r = http(spec)
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      os.remove(key)
      r = http(spec)
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    end)

    it("tls = true is tls = {}, tls = false none", function()
      local r = http { url = url(mtls), timeout = 5, tls = true }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert_raises({ url = url(mtls), tls = "yes" },
        "tls: must be a boolean or a table of tls fields")
    end)
  end)

  describe("min_version", function()
    it("TLS1.3 against a server capped at 1.2 fails, reason tls", function()
      for _, v in ipairs { "TLS1.3", "TLS13" } do
        local r = http { url = url(tls12), timeout = 5,
          tls = { min_version = v } }
        assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      end
    end)

    it("TLS1.2 against it succeeds", function()
      local r = http { url = url(tls12), timeout = 5,
        tls = { min_version = "TLS12" } }
      assert.are.same({ "success", "TLS 1.2" }, { r.status, r.tls.version })
    end)
  end)

  describe("expiry thresholds", function()
    it("none by default: a certificate expiring in 5 days is success",
      function()
      local r = http { url = url(soon), timeout = 5 }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("closer than expiry_warning is a warning, reason tls_expiry",
      function()
      local r = http { url = url(soon), timeout = 5,
        tls = { expiry_warning = 14 * DAY } }
      assert.are.same({ "warning", "tls_expiry" }, { r.status, r.reason })
      assert.matches("expires in [45]%.%d days", r.output)
      assert.are.equal(200, r.http_status)
    end)

    it("closer than expiry_failure is a failure, reason tls_expiry",
      function()
      local r = http { url = url(soon), timeout = 5,
        tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
      assert.are.same({ "failure", "tls_expiry" }, { r.status, r.reason })
    end)

    it("further than both: the status code decides", function()
      local r = http { url = url(good), timeout = 5,
        tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("an expired certificate is a failure once a threshold is set",
      function()
      local r = http { url = url(expired), timeout = 5,
        tls = { expiry_warning = 14 * DAY } }
      assert.are.same({ "failure", "tls_expiry" }, { r.status, r.reason })
      assert.matches("expired .* ago", r.output)
    end)

    it("is judged before the status code", function()
      -- a real HTTPS server answering 404 to everything (Python's
      -- http.server on the `soon` certificate)
      local dir = helpers.scratch()
      local code = table.concat({
        "import http.server, ssl, sys",
        "class H(http.server.BaseHTTPRequestHandler):",
        "    def do_GET(self): self.send_error(404)",
        "    def log_message(self, *a): pass",
        "s = http.server.HTTPServer(('127.0.0.1', 0), H)",
        "c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)",
        "c.load_cert_chain(sys.argv[1], sys.argv[2])",
        "s.socket = c.wrap_socket(s.socket, server_side=True)",
        "print(s.server_address[1], flush=True)",
        "s.serve_forever()", "" }, "\n")
      helpers.write(dir .. "/srv.py", code)
      local p = io.popen("exec python3 " .. helpers.q(dir .. "/srv.py") .. " "
        .. helpers.q(pki.soon.cert) .. " " .. helpers.q(pki.soon.key)
        .. " > " .. helpers.q(dir .. "/port") .. " 2>&1 < /dev/null & echo $!")
      local pid = p:read("l")
      p:close()
      finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
      local port = helpers.eventually(function()
        return (helpers.read_file(dir .. "/port") or ""):match("^(%d+)\n")
      end, 10)
      assert.is_truthy(port, helpers.read_file(dir .. "/port"))
      local u = "https://127.0.0.1:" .. port .. "/"
      local r = http { url = u, timeout = 5 }
      assert.are.same({ "failure", "http_status", 404 },
        { r.status, r.reason, r.http_status })
      -- a warning threshold never hides the failure; a failure threshold
      -- takes precedence over it
      r = http { url = u, timeout = 5, tls = { expiry_warning = 14 * DAY } }
      assert.are.same({ "failure", "http_status", 404 },
        { r.status, r.reason, r.http_status })
      r = http { url = u, timeout = 5,
        tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
      assert.are.same({ "failure", "tls_expiry", 404 },
        { r.status, r.reason, r.http_status })
      -- judged after the expectations: a 404 expected is a success, which
      -- the warning threshold makes a warning
      r = http { url = u, timeout = 5, expect = { status = 404 },
        tls = { expiry_warning = 14 * DAY } }
      assert.are.same({ "warning", "tls_expiry", 404 },
        { r.status, r.reason, r.http_status })
      r = http { url = u, timeout = 5, expect = { status = 404 },
        tls = { expiry_warning = 1 * DAY } }
      assert.are.same({ "success", "ok", 404 },
        { r.status, r.reason, r.http_status })
    end)
  end)

  describe("declared probes", function()
    before_each(helpers.fresh)
    after_each(helpers.fresh)

    it("check the tls fields at declaration, at the user's line", function()
      assert.are.equal('probe "web": http_get.tls.min_version: must be '
        .. 'TLS1.0, TLS1.1, TLS1.2 or TLS1.3 (or TLS10 .. TLS13), got '
        .. '"TLS1.4"', helpers.error_here(function()
          sonde.probe { name = "web", http_get = { url = "https://x/",
            tls = { min_version = "TLS1.4" } } }
        end))
      assert.are.equal('probe "db": tcp_socket.tls.expiry_warning: must be '
        .. 'a number of seconds, got "14d"', helpers.error_here(function()
          sonde.probe { name = "db", tcp_socket = { port = 5432,
            tls = { expiry_warning = "14d" } } }
        end))
    end)
  end)

  describe("fields are checked", function()
    local u = "https://127.0.0.1:1/"
    it("with the field's name", function()
      assert_raises({ url = u, tls = { verify = "yes" } }, "tls.verify")
      assert_raises({ url = u, tls = { ca_file = 1 } }, "tls.ca_file")
      assert_raises({ url = u, tls = { cert_file = "" } }, "tls.cert_file")
      assert_raises({ url = u, tls = { key_file = pki.client.key } },
        "tls.key_file",
        "needs cert_file")
      assert_raises({ url = u, tls = { server_name = "" } },
        "tls.server_name")
      assert_raises({ url = u, tls = { server_name = "a\nb\1" } },
        "tls.server_name: must be a host name or an IP address")
      assert_raises({ url = u, tls = { min_version = "TLS1.4" } },
        "tls.min_version", "TLS1.4")
      assert_raises({ url = u, tls = { min_version = 12 } },
        "tls.min_version")
      assert_raises({ url = u, tls = { expiry_warning = -1 } },
        "tls.expiry_warning")
      assert_raises({ url = u, tls = { expiry_failure = "7d" } },
        "tls.expiry_failure")
      assert_raises({ url = u, tls = { expiry_warning = DAY,
        expiry_failure = 2 * DAY } }, "tls.expiry_failure",
        "must not exceed expiry_warning")
      assert_raises({ url = u, tls = { bogus = 1 } }, "tls", "bogus")
    end)

    it("at the user's file and line", function()
      local msg = helpers.error_here(function()
        sonde.http_get({ url = u, tls = { min_version = "SSL3" } },
          function() end)
      end)
      assert.matches("tls.min_version", msg, 1, true)
    end)
  end)
end)

describe("TLS on tcp_socket", function()
  local tcp, tcp_raises = helpers.prober(sonde.tcp_socket)
  local pki, good, expired, sni, mtls12, tls12

  lazy_setup(function()
    pki = helpers.pki(helpers.scratch())
    good = helpers.s_server { cert = pki.good }
    expired = helpers.s_server { cert = pki.expired }
    epoch = helpers.s_server { cert = pki.epoch }
    sni = helpers.s_server { cert = pki.good, args = { "-cert2",
      pki.other.cert, "-key2", pki.other.key, "-servername",
      "other.sonde.test" } }
    -- TLS 1.2: the server refuses a missing client certificate inside the
    -- handshake (TLS 1.3 says so only after the client's side is done)
    mtls12 = helpers.s_server { cert = pki.good,
      args = { "-Verify", "1", "-CAfile", pki.ca, "-tls1_2" } }
    tls12 = helpers.s_server { cert = pki.good, args = { "-tls1_2" } }
  end)

  lazy_teardown(helpers.stop_s_servers)

  it("without tls, only connects: no facts", function()
    local r = tcp { port = good.port, timeout = 5 }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    assert.is_nil(r.tls)
  end)

  it("the handshake gives the same facts as HTTPS", function()
    local r = tcp { port = good.port, timeout = 5,
      tls = { verify = true, ca_file = pki.ca } }
    assert.are.same({ "success", "ok", "" }, { r.status, r.reason, r.output })
    local t = r.tls
    assert.are.equal(helpers.not_after(pki.good.cert), t.earliest_expiry)
    assert.are.equal(helpers.not_after(pki.good.cert), t.last_chain_expiry)
    assert.are.same({ "CN=good.sonde.test", "CN=sonde test CA,O=sonde test",
      "TLS 1.3" }, { t.subject, t.issuer, t.version })
    assert.are.same({ "good.sonde.test", "localhost" }, t.dns_names)
    local fp = helpers.x509(pki.good.cert, "-fingerprint -sha256")
      :match("=([%x:]+)"):gsub(":", ""):lower()
    assert.are.equal(fp, t.fingerprint_sha256)
  end)

  it("verification: unknown issuer and wrong name fail, reason tls",
    function()
    local r = tcp { port = good.port, timeout = 5, tls = { verify = true } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("certificate verify failed", r.error)
    assert.matches("^dial tcp 127.0.0.1:%d+: TLS handshake: ", r.output)
    r = tcp { port = good.port, timeout = 5, tls = { verify = true,
      ca_file = pki.ca, server_name = "wrong.sonde.test" } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("hostname mismatch", r.error)
    -- a host name is the name verified (and the SNI)
    r = tcp { host = "localhost", port = good.port, timeout = 5,
      tls = { verify = true, ca_file = pki.ca } }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
  end)

  it("server_name is the SNI sent", function()
    local r = tcp { port = sni.port, timeout = 5,
      tls = { server_name = "other.sonde.test" } }
    assert.are.same({ "success", "CN=other.sonde.test" },
      { r.status, r.tls.subject })
    r = tcp { port = sni.port, timeout = 5, tls = {} }
    assert.are.same({ "success", "CN=good.sonde.test" },
      { r.status, r.tls.subject })
  end)

  it("mutual TLS: with the client certificate, and without", function()
    local r = tcp { port = mtls12.port, timeout = 5, tls = { verify = true,
      ca_file = pki.ca, cert_file = pki.client.cert,
      key_file = pki.client.key } }
    assert.are.same({ "success", "ok", "TLS 1.2" },
      { r.status, r.reason, r.tls.version })
    r = tcp { port = mtls12.port, timeout = 5,
      tls = { verify = true, ca_file = pki.ca } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
  end)

  it("min_version TLS1.3 against a server capped at 1.2 fails", function()
    local r = tcp { port = tls12.port, timeout = 5,
      tls = { min_version = "TLS1.3" } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
  end)

  it("expiry thresholds: tls_expiry", function()
    local r = tcp { port = expired.port, timeout = 5, tls = {} }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    r = tcp { port = expired.port, timeout = 5,
      tls = { expiry_warning = 14 * DAY } }
    assert.are.same({ "failure", "tls_expiry" }, { r.status, r.reason })
    assert.matches("expired", r.output)
    r = tcp { port = good.port, timeout = 5,
      tls = { expiry_warning = 100 * DAY } }
    assert.are.same({ "warning", "tls_expiry" }, { r.status, r.reason })
  end)

  it("a file that cannot be read: refused when checked; gone by the run, "
    .. "the run fails at once, reason tls", function()
    local tcp_raises = select(2, helpers.prober(sonde.tcp_socket))
    tcp_raises({ port = good.port, tls = { ca_file = pki.dir .. "/none.pem" } },
      "tls.ca_file: cannot be read: ")
    local ca = pki.dir .. "/ca-copy.pem"
    assert(os.execute("cp " .. helpers.q(pki.ca) .. " " .. helpers.q(ca)))
    local spec = { port = good.port, timeout = 5, tls = { ca_file = ca } }
    local r = tcp(spec)
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    os.remove(ca)
    r = tcp(spec)                 -- the same table: not checked again
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("ca_file .*ca%-copy.pem: No such file", r.error)
  end)

  it("a silent peer: the handshake times out (reason timeout)", function()
    local srv = helpers.fixture { mode = "silent" }
    local r = tcp { port = srv.port, timeout = 0.5, tls = {} }
    srv:stop()
    assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
    assert.matches("TLS handshake not finished", r.error)
  end)

  it("fields are checked with their names", function()
    tcp_raises({ port = 1, tls = { verify = 1 } }, "tls.verify")
    tcp_raises({ port = 1, tls = { min_version = "TLS2" } },
      "tls.min_version")
    tcp_raises({ port = 1, tls = { expiry_failure = 0 } },
      "tls.expiry_failure")
  end)
end)

-- /metrics of a host running declared probes over TLS: blackbox_exporter's
-- series with their names, types, labels and values; promtool accepts it.
describe("TLS metrics (--listen)", function()
  local pki, good, h, port

  lazy_setup(function()
    pki = helpers.pki(helpers.scratch())
    good = helpers.s_server { cert = pki.good }
    local dir = helpers.scratch()
    local path = helpers.write(dir .. "/tls.lua", ([[
local sonde = require "sonde"
sonde.probe { name = "https", kind = "readiness", period = 0.2, timeout = 5,
  http_get = { url = "https://127.0.0.1:%d/",
               tls = { verify = true, ca_file = %q } } }
sonde.probe { name = "https-unverified", kind = "readiness", period = 0.2,
  timeout = 5, http_get = { url = "https://127.0.0.1:%d/" } }
sonde.probe { name = "tcp-tls", kind = "liveness", period = 0.2,
  timeout = 5, tcp_socket = { port = %d, tls = {} } }
sonde.probe { name = "plain", kind = "readiness", period = 0.2,
  exec = { command = { "true" } } }
]]):format(good.port, pki.ca, good.port, good.port))
    h = helpers.host_start { "--log-format", "json", "--log-level", "info",
      "--listen", "127.0.0.1:0", path }
    port = helpers.listen_port(h)
  end)

  lazy_teardown(function()
    if h then h:cleanup() end
    helpers.stop_s_servers()
  end)

  local function metrics()
    local text
    for _ = 1, 150 do
      text = helpers.fetch(port, "/metrics").body or ""
      if select(2, text:gsub("probe_tls_version_info{", "")) == 3 then break end
      helpers.sleep(0.1)
    end
    return text
  end

  local function has(text, line)
    assert.is_truthy(helpers.has_line(text, line),
      "no line " .. line .. " in:\n" .. text)
  end

  it("exports blackbox_exporter's TLS series", function()
    local text = metrics()
    local exp = helpers.not_after(pki.good.cert)
    local fp = helpers.x509(pki.good.cert, "-fingerprint -sha256")
      :match("=([%x:]+)"):gsub(":", ""):lower()
    local serial = helpers.x509(pki.good.cert, "-serial"):match("=(%x+)")
      :lower()
    -- (every series of a probe with a target: target and instance)
    local url = ("https://127.0.0.1:%d/"):format(good.port)
    for _, p in ipairs { "https", "https-unverified" } do
      local pl = ('probe="%s",kind="readiness",target="%s",instance="%s"')
        :format(p, url, url)
      has(text, ("probe_ssl_earliest_cert_expiry{%s} %d"):format(pl, exp))
      has(text, ('probe_tls_version_info{%s,version="TLS 1.3"} 1'):format(pl))
      assert.matches("probe_tls_cipher_info{" .. pl:gsub("%p", "%%%0")
        .. ',cipher="TLS_[%w_]+"} 1', text)
      has(text, ('probe_ssl_last_chain_info{%s,fingerprint_sha256="%s",'
        .. 'subject="CN=good.sonde.test",issuer="CN=sonde test CA,O=sonde '
        .. 'test",subjectalternative="good.sonde.test,localhost",'
        .. 'serialnumber="%s"} 1'):format(pl, fp, serial))
    end
    -- the chain verified only for the probe with the CA
    has(text, ('probe_ssl_last_chain_expiry_timestamp_seconds{probe="https",'
      .. 'kind="readiness",target="%s",instance="%s"} %d'):format(url, url,
      exp))
    assert.is_nil(text:find('probe_ssl_last_chain_expiry_timestamp_seconds{'
      .. 'probe="https-unverified"', 1, true))
    assert.is_nil(text:find('probe="plain",kind="readiness",version', 1, true))
    has(text, ('probe_tls_version_info{probe="tcp-tls",kind="liveness",'
      .. 'target="127.0.0.1:%d",instance="127.0.0.1:%d",version="TLS 1.3"} 1')
      :format(good.port, good.port))
    has(text, ('probe_ssl_earliest_cert_expiry{probe="tcp-tls",'
      .. 'kind="liveness",target="127.0.0.1:%d",instance="127.0.0.1:%d"} %d')
      :format(good.port, good.port, exp))
    for _, f in ipairs { "probe_ssl_earliest_cert_expiry",
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "probe_ssl_last_chain_info", "probe_tls_version_info",
        "probe_tls_cipher_info" } do
      has(text, "# TYPE " .. f .. " gauge")
    end
  end)

  it("/status shows the facts of the last result", function()
    metrics()
    local r = helpers.fetch(port, "/status")
    local st = assert(helpers.json_decode(r.body))
    local t = st.probes.https.last.tls
    assert.are.same({ "CN=good.sonde.test", "TLS 1.3",
      helpers.not_after(pki.good.cert) },
      { t.subject, t.version, t.earliest_expiry })
    assert.are.same({ "good.sonde.test", "localhost" }, t.dns_names)
    assert.is_nil(st.probes.plain.last.tls)
  end)

  it("promtool check metrics accepts it", function()
    local text = metrics()
    local tmp = helpers.scratch() .. "/metrics.txt"
    helpers.write(tmp, text)
    local code, out = helpers.sh("env -u LD_PRELOAD /usr/bin/promtool check "
      .. "metrics < " .. helpers.q(tmp))
    assert.are.equal(0, code, out .. "\n" .. text)
  end)
end)
