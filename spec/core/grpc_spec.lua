-- sonde.grpc (src/grpc.c, src/pb.c) against a real gRPC health server
-- (spec/fixtures/grpc_health_server.py: Debian's python3-grpcio), the
-- fixture server (an HTTP/1 server, a silent port, a full accept queue)
-- and a closed port; the protobuf codec through its test hooks.  kubelet
-- grpc probe semantics and messages (pkg/probe/grpc/grpc.go); loopback
-- only.
local sonde = require "sonde"
local core = require "sonde.core"
local helpers = require "helpers"

local grpc, spec_error = helpers.prober(sonde.grpc)

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

describe("sonde.grpc", function()
  local health, nohealth, slow, raw, http1, silent, full

  lazy_setup(function()
    health = helpers.grpc_server { "--status", "=SERVING",
      "--status", "down=NOT_SERVING", "--status", "unknown=UNKNOWN",
      "--status", "su=SERVICE_UNKNOWN", "--status", "seven=7",
      "--status", "ünï=SERVING" }
    nohealth = helpers.grpc_server { "--no-health" }
    slow = helpers.grpc_server { "--status", "=SERVING", "--sleep", "3" }
    raw = helpers.grpc_server { "--raw-by-service" }
    http1 = helpers.fixture { host = "127.0.0.1", log = true }
    silent = helpers.fixture { host = "127.0.0.1", mode = "silent" }
    full = helpers.fixture { host = "127.0.0.1", mode = "tcp-full" }
  end)

  lazy_teardown(function()
    local pids = {}
    for _, s in ipairs { health, nohealth, slow, raw } do
      if s then pids[#pids + 1] = s.pid end
    end
    helpers.stop_grpc_servers()
    helpers.stop_fixtures()
    for _, pid in ipairs(pids) do
      assert.is_true(helpers.gone(pid), "server " .. pid .. " still runs")
    end
  end)

  describe("a health server", function()
    it("SERVING is success, reason ok, \"service healthy\"", function()
      local r = grpc { port = health.port }
      assert.are.same({ "success", "ok", "service healthy", 0, "SERVING",
        "127.0.0.1:" .. health.port, 4 },
        { r.status, r.reason, r.output, r.grpc_status, r.serving_status,
          r.remote_addr, r.ip_protocol })
      assert.is_nil(r.error)
    end)

    it("asks for the service named, \"\" by default; UTF-8 names pass",
      function()
      assert.are.equal("success", grpc { port = health.port,
        service = "" }.status)
      assert.are.equal("success", grpc { port = health.port,
        service = "ünï" }.status)
      assert.are.equal("success", grpc { port = health.port,
        host = "127.0.0.1" }.status)
      -- a name: libcurl resolves it, as for http_get (/etc/hosts)
      assert.are.equal("success", grpc { port = health.port,
        host = "localhost" }.status)
    end)

    for _, c in ipairs { { "down", "NOT_SERVING" }, { "unknown", "UNKNOWN" },
        { "su", "SERVICE_UNKNOWN" }, { "seven", "7" } } do
      it(c[2] .. " is failure grpc_status, the kubelet's message", function()
        local r = grpc { port = health.port, service = c[1] }
        assert.are.same({ "failure", "grpc_status",
          string.format("service unhealthy (responded with %q)", c[2]), 0,
          c[2] }, { r.status, r.reason, r.output, r.grpc_status,
          r.serving_status })
      end)
    end

    it("a service the server does not know: NOT_FOUND, failure grpc_status",
      function()
      local r = grpc { port = health.port, service = "nosuch" }
      assert.are.same({ "failure", "grpc_status", 5,
        "error: health rpc probe failed: rpc error: code = NotFound desc = "
          .. "unknown service" },
        { r.status, r.reason, r.grpc_status, r.output })
      assert.is_nil(r.serving_status)
    end)

    it("no health service: UNIMPLEMENTED, failure grpc_status", function()
      local r = grpc { port = nohealth.port }
      assert.are.same({ "failure", "grpc_status", 12 },
        { r.status, r.reason, r.grpc_status })
      assert.is_truthy(r.output:find("error: this server does not implement "
        .. "the grpc health protocol (grpc.health.v1.Health): ", 1, true),
        r.output)
    end)

    it("a handler slower than the timeout: failure timeout, \"health rpc "
      .. "did not complete\"", function()
      local r = grpc { port = slow.port, timeout = 0.5 }
      assert.are.same({ "failure", "timeout",
        "timeout: health rpc did not complete within 500ms" },
        { r.status, r.reason, r.output })
    end)
  end)

  describe("not a health server", function()
    it("a refused port: failure connect_refused, at once", function()
      local port = helpers.closed_port()
      local r = grpc { port = port, timeout = 5 }
      assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
      assert.is_truthy(r.output:find(string.format(
        'error: failed to connect service at "127.0.0.1:%d": ', port), 1,
        true), r.output)
      assert.is_nil(r.grpc_status)
    end)

    it("a silent port (accepts, never answers): failure timeout, "
      .. "\"failed to connect\"", function()
      local r = grpc { port = silent.port, timeout = 0.5 }
      assert.are.same({ "failure", "timeout", string.format(
        'timeout: failed to connect service "127.0.0.1:%d" within 500ms: '
          .. "context deadline exceeded", silent.port) },
        { r.status, r.reason, r.output })
    end)

    it("no TCP connection by the deadline: failure connect_timeout",
      function()
      local r = grpc { port = full.port, timeout = 0.5 }
      assert.are.same({ "failure", "connect_timeout", string.format(
        'timeout: failed to connect service "127.0.0.1:%d" within 500ms: '
          .. "context deadline exceeded", full.port) },
        { r.status, r.reason, r.output })
    end)

    it("a plain HTTP/1 server: failure protocol", function()
      local r = grpc { port = http1.port }
      assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
      assert.is_truthy(r.output:find("^error: "), r.output)
      assert.is_nil(r.grpc_status)
    end)
  end)

  describe("hostile answers (the codec behind the prober)", function()
    -- the server answers with the bytes the service names in hex
    local function answer(bytes) return grpc { port = raw.port,
      service = hex(bytes) } end

    it("unknown fields of every wire type are skipped", function()
      local msg = "\x10\x96\x01" ..                -- 2: varint 150
        "\x19" .. string.rep("\0", 8) ..           -- 3: 64-bit
        "\x22\x03abc" ..                           -- 4: bytes
        "\x2b\x30\x05\x2c" ..                      -- 5: group { 6: 5 }
        "\x3d\0\0\0\0" ..                          -- 7: 32-bit
        "\x08\x01"                                 -- 1: SERVING
      local r = answer(msg)
      assert.are.same({ "success", "SERVING" }, { r.status, r.serving_status })
    end)

    it("a reply over 64 KiB is failure protocol; under it, the last value "
      .. "of a repeated field wins", function()
      local big = grpc { port = raw.port, service = "repeat:40000" }
      assert.are.same({ "failure", "protocol" }, { big.status, big.reason })
      assert.is_truthy(big.output:find("response larger than 65536 bytes", 1,
        true), big.output)
      local ok = grpc { port = raw.port, service = "repeat:30000" }
      assert.are.same({ "success", "SERVING" }, { ok.status, ok.serving_status })
    end)

    it("an empty message is UNKNOWN (protobuf's default): failure", function()
      local r = answer("")
      assert.are.same({ "failure", "grpc_status", "UNKNOWN" },
        { r.status, r.reason, r.serving_status })
    end)

    for _, c in ipairs {
      { "a truncated varint", "\x08\x81", "truncated varint" },
      { "an 11-byte varint", "\x08" .. string.rep("\xff", 10) .. "\x01",
        "varint overflows 64 bits" },
      { "a length beyond the message", "\x12\x05ab", "length beyond the end" },
      { "a truncated fixed32", "\x15\x01\x02", "length beyond the end" },
      { "field 1 with the wrong wire type", "\x0a\x01\x01",
        "wanted field has wire type 2" },
      { "wire type 7", "\x0f", "invalid wire type 7" },
      { "an end group without its start", "\x14", "unbalanced group" },
    } do
      it(c[1] .. ": failure protocol, the decoder's error", function()
        local r = answer(c[2])
        assert.are.same({ "failure", "protocol", 0 },
          { r.status, r.reason, r.grpc_status })
        assert.is_truthy(r.output:find("error: health rpc probe failed: rpc "
          .. "error: code = Internal desc = grpc: failed to unmarshal the "
          .. "received message: " .. c[3], 1, true), r.output)
      end)
    end
  end)

  describe("styles", function()
    it("with a callback: an operation id at once, the result later",
      function()
      local got
      local id = sonde.grpc({ port = health.port }, function(r) got = r end)
      assert.is_number(id)
      assert.is_nil(got)
      helpers.drain()
      assert.are.equal("success", got.status)
    end)

    it("inside a task: waits and returns the result", function()
      local a, b = helpers.run(function()
        local x = sonde.grpc { port = health.port }
        local y = sonde.grpc { port = health.port, service = "down" }
        return x, y
      end)
      assert.are.same({ "success", "failure" }, { a.status, b.status })
    end)

    it("cancelled in flight: the callback never runs, nothing is left",
      function()
      local before = helpers.fd_count()
      helpers.accepted(sonde.grpc, { port = slow.port, timeout = 5 })
      assert.is_truthy(helpers.eventually(function()
        return helpers.fd_count() <= before
      end, 5), helpers.fd_list())
    end)

    it("an IPv6 literal, bare", function()
      local v6 = helpers.grpc_server { "--host", "::1", "--status",
        "=NOT_SERVING" }
      local r = grpc { host = "::1", port = v6.port }
      assert.are.same({ "failure", "grpc_status", "[::1]:" .. v6.port },
        { r.status, r.reason, r.remote_addr })
      local gone = grpc { host = "::1", port = helpers.closed_port(),
        timeout = 5 }
      assert.is_truthy(gone.output:find('failed to connect service at "[::1]:',
        1, true), gone.output)
      v6:stop()
    end)

    it("outside a task without a callback: raises", function()
      assert.has_error(function() sonde.grpc { port = health.port } end)
    end)

    it("many at once on the loop, no descriptor left behind", function()
      local closed = helpers.closed_port()
      local specs = { { port = health.port }, { port = nohealth.port },
        { port = health.port, service = "down" }, { port = closed } }
      local before = helpers.fd_count()
      local results = {}
      for i = 1, 20 do
        local spec = specs[i % 4 + 1]
        sonde.grpc(spec, function(r) results[#results + 1] = r end)
      end
      helpers.drain()
      assert.are.equal(20, #results)
      assert.is_truthy(helpers.eventually(function()
        return helpers.fd_count() <= before
      end, 5), helpers.fd_list())
    end)
  end)

  describe("TLS", function()
    local dir, tls

    lazy_setup(function()
      dir = helpers.scratch()
      helpers.self_signed(dir)
      tls = helpers.grpc_server { "--status", "=SERVING",
        "--cert", dir .. "/cert.pem", "--key", dir .. "/key.pem" }
    end)

    it("tls = true: HTTP/2 by ALPN, the certificate not verified", function()
      local r = grpc { port = tls.port, tls = true }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("tls = { verify = true }: an unknown issuer is failure tls", function()
      local r = grpc { port = tls.port, tls = { verify = true } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.is_truthy(r.output:find('^error: failed to connect service at '),
        r.output)
    end)

    it("tls = { verify = true, ca_file = ... } trusts that CA", function()
      local r = grpc { port = tls.port,
        tls = { verify = true, ca_file = dir .. "/cert.pem" } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("plaintext to a TLS server, TLS to a plaintext one: failures",
      function()
      local a = grpc { port = tls.port }
      assert.are.equal("failure", a.status)
      local b = grpc { port = health.port, tls = true }
      assert.are.same({ "failure", "tls" }, { b.status, b.reason })
    end)
  end)

  -- the shared TLS options (src/tls.c), as http_get's, against health
  -- servers on certificates of a CA made here (spec/support/pki.lua)
  describe("TLS with http_get's options", function()
    local DAY = 86400
    local pki, good, soon, expired, other, mtls, tls12

    lazy_setup(function()
      pki = helpers.pki(helpers.scratch())
      local function on(leaf, ...)
        return helpers.grpc_server { "--status", "=SERVING", "--status",
          "down=NOT_SERVING", "--cert", leaf.cert, "--key", leaf.key, ... }
      end
      good = on(pki.good)
      soon = on(pki.soon)
      expired = on(pki.expired)
      other = on(pki.other)
      mtls = on(pki.good, "--client-ca", pki.ca)
      tls12 = helpers.s_server { cert = pki.good, args = { "-tls1_2" } }
    end)

    lazy_teardown(function()
      for _, s in ipairs { good, soon, expired, other, mtls } do
        if s then s:stop() end
      end
      helpers.stop_s_servers()
    end)

    local function fp(cert)
      return (helpers.x509(cert, "-fingerprint -sha256"):match("=([%x:]+)")
        :gsub(":", ""):lower())
    end

    it("the result carries the certificate facts, as openssl says them",
      function()
      local r = grpc { port = good.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok", "SERVING" },
        { r.status, r.reason, r.serving_status })
      local t = r.tls
      assert.is_table(t)
      assert.are.equal(helpers.not_after(pki.good.cert), t.earliest_expiry)
      assert.are.equal(helpers.not_after(pki.good.cert), t.last_chain_expiry)
      assert.is_true(t.verified)
      assert.are.same({ "CN=good.sonde.test", "CN=sonde test CA,O=sonde test" },
        { t.subject, t.issuer })
      assert.are.same({ "good.sonde.test", "localhost" }, t.dns_names)
      assert.are.equal(helpers.x509(pki.good.cert, "-serial")
        :match("=(%x+)"):lower(), t.serial)
      assert.are.equal(fp(pki.good.cert), t.fingerprint_sha256)
      assert.matches("^TLS 1%.[23]$", t.version)
      assert.matches("^TLS_", t.cipher)
    end)

    it("tls = true: facts too, the chain not verified; plaintext: none",
      function()
      local r = grpc { port = good.port, timeout = 5, tls = true }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      assert.are.equal(helpers.not_after(pki.good.cert),
        r.tls.earliest_expiry)
      assert.is_false(r.tls.verified)
      assert.is_nil(r.tls.last_chain_expiry)
      r = grpc { port = health.port, tls = false }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      assert.is_nil(r.tls)
    end)

    it("verify: an unknown issuer is failure tls (no facts), ca_file "
      .. "trusts the CA", function()
      local r = grpc { port = good.port, timeout = 5, tls = { verify = true } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("certificate", r.error)
      assert.is_nil(r.tls)
      assert.is_truthy(r.output:find('error: failed to connect service at "'
        .. "127.0.0.1:" .. good.port .. '": ', 1, true), r.output)
      r = grpc { port = good.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      -- an expired certificate does not verify
      r = grpc { port = expired.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("expired", r.error)
    end)

    it("server_name is the name verified: a mismatch is failure tls",
      function()
      local r = grpc { port = good.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca,
                server_name = "wrong.sonde.test" } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("hostname mismatch", r.error)
      -- `other` names other.sonde.test only (no IP): 127.0.0.1 does not
      -- match, server_name does
      r = grpc { port = other.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      r = grpc { port = other.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca,
                server_name = "other.sonde.test" } }
      assert.are.same({ "success", "ok", "CN=other.sonde.test" },
        { r.status, r.reason, r.tls.subject })
      -- a host name is the name verified without server_name
      r = grpc { host = "localhost", port = good.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      -- not checked without verify
      r = grpc { port = good.port, timeout = 5,
        tls = { server_name = "wrong.sonde.test" } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    it("mutual TLS: with the client certificate and key, and without",
      function()
      local r = grpc { port = mtls.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca, cert_file = pki.client.cert,
                key_file = pki.client.key } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      -- TLS 1.3: the server's refusal comes after the client's side of
      -- the handshake; gRPC's server closes the connection, which libcurl
      -- sees as an HTTP/2 stream not closed cleanly
      r = grpc { port = mtls.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
      assert.is_nil(r.serving_status)
      -- OpenSSL's server says why in an alert: reason tls
      local s = helpers.s_server { cert = pki.good,
        args = { "-Verify", "1", "-CAfile", pki.ca } }
      r = grpc { port = s.port, timeout = 5,
        tls = { verify = true, ca_file = pki.ca } }
      s:stop()
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      assert.matches("alert certificate required", r.error)
      assert.is_truthy(r.output:find('error: failed to connect service at "',
        1, true), r.output)
    end)

    it("min_version: TLS1.3 against a server capped at 1.2 is failure tls",
      function()
      -- (openssl s_server: no gRPC there, so without min_version the
      -- handshake succeeds and the call then times out)
      local r = grpc { port = tls12.port, timeout = 0.5,
        tls = { min_version = "TLS1.3" } }
      assert.are.same({ "failure", "tls" }, { r.status, r.reason })
      r = grpc { port = tls12.port, timeout = 0.5,
        tls = { min_version = "TLS12" } }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      r = grpc { port = good.port, timeout = 5,
        tls = { min_version = "TLS1.2" } }
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
    end)

    describe("expiry thresholds", function()
      it("none by default: a certificate expiring in 5 days is success",
        function()
        local r = grpc { port = soon.port, timeout = 5, tls = true }
        assert.are.same({ "success", "ok" }, { r.status, r.reason })
        assert.are.equal(helpers.not_after(pki.soon.cert),
          r.tls.earliest_expiry)
      end)

      it("closer than expiry_warning: warning tls_expiry on a SERVING "
        .. "server", function()
        local r = grpc { port = soon.port, timeout = 5,
          tls = { expiry_warning = 14 * DAY } }
        assert.are.same({ "warning", "tls_expiry", 0, "SERVING" },
          { r.status, r.reason, r.grpc_status, r.serving_status })
        assert.matches("^TLS certificate expires in [45]%.%d days %(", r.output)
        assert.are.equal(r.output, r.error)
      end)

      it("closer than expiry_failure: failure tls_expiry", function()
        local r = grpc { port = soon.port, timeout = 5,
          tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
        assert.are.same({ "failure", "tls_expiry", "SERVING" },
          { r.status, r.reason, r.serving_status })
      end)

      it("expired with a threshold set: failure tls_expiry", function()
        local r = grpc { port = expired.port, timeout = 5,
          tls = { expiry_warning = 14 * DAY } }
        assert.are.same({ "failure", "tls_expiry" }, { r.status, r.reason })
        assert.matches("^TLS certificate expired .* ago", r.output)
      end)

      it("further than both: the serving status decides", function()
        local r = grpc { port = good.port, timeout = 5,
          tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
        assert.are.same({ "success", "ok" }, { r.status, r.reason })
        r = grpc { port = good.port, timeout = 5, service = "down",
          tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
        assert.are.same({ "failure", "grpc_status" }, { r.status, r.reason })
      end)

      it("a warning threshold never hides a failure; a failure threshold "
        .. "takes precedence over the serving status", function()
        local r = grpc { port = soon.port, timeout = 5, service = "down",
          tls = { expiry_warning = 14 * DAY } }
        assert.are.same({ "failure", "grpc_status", 0, "NOT_SERVING" },
          { r.status, r.reason, r.grpc_status, r.serving_status })
        r = grpc { port = soon.port, timeout = 5, service = "down",
          tls = { expiry_warning = 14 * DAY, expiry_failure = 7 * DAY } }
        assert.are.same({ "failure", "tls_expiry", 0, "NOT_SERVING" },
          { r.status, r.reason, r.grpc_status, r.serving_status })
      end)
    end)

    it("fields are checked with their names, at the caller's line",
      function()
      spec_error({ port = 1, tls = { min_version = "TLS1.4" } },
        "tls.min_version", "TLS1.4")
      spec_error({ port = 1, tls = { key_file = "/etc/hostname" } },
        "tls.key_file",
        "needs cert_file")
      spec_error({ port = 1, tls = { server_name = "" } }, "tls.server_name")
      spec_error({ port = 1, tls = { cert_file = 1 } }, "tls.cert_file")
      spec_error({ port = 1, tls = { expiry_warning = "14d" } },
        "tls.expiry_warning")
      spec_error({ port = 1, tls = { expiry_warning = DAY,
        expiry_failure = 2 * DAY } }, "tls.expiry_failure",
        "must not exceed expiry_warning")
      assert.are.equal('probe "api": grpc.tls.min_version: must be TLS1.0, '
        .. 'TLS1.1, TLS1.2 or TLS1.3 (or TLS10 .. TLS13), got "SSL3"',
        helpers.error_here(function()
          sonde.probe { name = "api", grpc = { port = 1,
            tls = { min_version = "SSL3" } } }
        end))
    end)

    it("a declared probe over TLS: blackbox_exporter's TLS series on "
      .. "/metrics, the facts on /status", function()
      local dir = helpers.scratch()
      local path = helpers.write(dir .. "/grpc-tls.lua", ([[
local sonde = require "sonde"
sonde.probe { name = "grpc-tls", kind = "readiness", period = 0.2,
  timeout = 5, grpc = { port = %d, tls = { verify = true, ca_file = %q } } }
sonde.probe { name = "grpc-soon", kind = "liveness", period = 0.2,
  timeout = 5, grpc = { port = %d,
    tls = { expiry_warning = 14 * 86400 } } }
sonde.probe { name = "grpc-plain", kind = "readiness", period = 0.2,
  grpc = { port = %d } }
]]):format(good.port, pki.ca, soon.port, health.port))
      local h = helpers.host_start { "--log-format", "json", "--listen",
        "127.0.0.1:0", path }
      finally(function() h:cleanup() end)
      local port = helpers.listen_port(h)
      local text
      for _ = 1, 150 do
        text = helpers.fetch(port, "/metrics").body or ""
        if select(2, text:gsub("\nprobe_tls_version_info{", "")) == 2 then
          break
        end
        helpers.sleep(0.1)
      end
      local exp = helpers.not_after(pki.good.cert)
      local function has(line)
        assert.is_truthy(helpers.has_line(text, line),
          "no line " .. line .. " in:\n" .. text)
      end
      -- (every series of a probe with a target: target and instance)
      local function where(name, kind, port)
        return ('probe="%s",kind="%s",target="127.0.0.1:%d",'
          .. 'instance="127.0.0.1:%d"'):format(name, kind, port, port)
      end
      local pl = where("grpc-tls", "readiness", good.port)
      has(("probe_ssl_earliest_cert_expiry{%s} %d"):format(pl, exp))
      has(("probe_ssl_last_chain_expiry_timestamp_seconds{%s} %d")
        :format(pl, exp))
      has(('probe_ssl_last_chain_info{%s,fingerprint_sha256="%s",'
        .. 'subject="CN=good.sonde.test",issuer="CN=sonde test CA,O=sonde '
        .. 'test",subjectalternative="good.sonde.test,localhost",'
        .. 'serialnumber="%s"} 1'):format(pl, fp(pki.good.cert),
        helpers.x509(pki.good.cert, "-serial"):match("=(%x+)"):lower()))
      has(("probe_grpc_status_code{%s} 0"):format(pl))
      has(('probe_ssl_earliest_cert_expiry{%s} %d'):format(
        where("grpc-soon", "liveness", soon.port),
        helpers.not_after(pki.soon.cert)))
      assert.matches("\nprobe_tls_version_info{" .. pl:gsub("%p", "%%%0")
        .. ',version="TLS 1%.[23]"} 1', text)
      assert.is_nil(text:find('probe_ssl_earliest_cert_expiry{probe="grpc-'
        .. 'plain"', 1, true), text)
      -- the expiry warning: results warning, reason tls_expiry (a warning
      -- is logically success: the liveness probe stays in success)
      local soon_runs = h:events("probe_result", { probe = "grpc-soon" })
      assert.is_true(#soon_runs >= 1, h:stderr())
      assert.are.same({ "warning", "tls_expiry", "SERVING", "success" },
        { soon_runs[1].status, soon_runs[1].reason,
          soon_runs[1].serving_status, soon_runs[1].state })
      local st = assert(helpers.json_decode(helpers.fetch(port,
        "/status").body))
      assert.are.same({ "CN=good.sonde.test", exp },
        { st.probes["grpc-tls"].last.tls.subject,
          st.probes["grpc-tls"].last.tls.earliest_expiry })
      assert.is_nil(st.probes["grpc-plain"].last.tls)
      assert.are.equal(0, h:term(), h:stderr())
    end)
  end)

  describe("declared probes", function()
    before_each(helpers.fresh)
    after_each(function()
      helpers.cleanup_hosts()
      helpers.fresh()
    end)

    it("under the host: SERVING publishes success, NOT_SERVING failure",
      function()
      local gone_port = helpers.closed_port()
      local path = helpers.script("grpc-probes.lua", string.format([[
        local sonde = require "sonde"
        sonde.probe { name = "up", kind = "readiness", period = 0.2,
          grpc = { port = %d } }
        sonde.probe { name = "down", kind = "liveness", period = 0.2,
          failure_threshold = 2, grpc = { port = %d, service = "down" } }
        sonde.probe { name = "gone", kind = "liveness", period = 0.2,
          failure_threshold = 1, grpc = { port = %d } }
      ]], health.port, health.port, gone_port))
      local h = helpers.host_start({ "--log-format", "json", "--listen",
        "127.0.0.1:0", path })
      local ok = h:wait_for(function(x)
        return #x:events("state_change", { probe = "up", to = "success" })
            >= 1 and #x:events("state_change", { probe = "down",
            to = "failure" }) >= 1 and #x:events("state_change",
            { probe = "gone", to = "failure" }) >= 1
      end, 15)
      local text = h:stderr()
      assert.is_truthy(ok, text)
      -- blackbox_exporter's grpc series
      local m = helpers.fetch(helpers.listen_port(h), "/metrics").body
      -- (every series of a probe with a target: target and instance)
      local up = ('probe="up",kind="readiness",target="127.0.0.1:%d",'
        .. 'instance="127.0.0.1:%d"'):format(health.port, health.port)
      local gone = 'probe="gone",kind="liveness",target="127.0.0.1:'
        .. gone_port .. '",instance="127.0.0.1:' .. gone_port .. '"'
      local down = ('probe="down",kind="liveness",target="127.0.0.1:%d",'
        .. 'instance="127.0.0.1:%d"'):format(health.port, health.port)
      for _, line in ipairs {
        'probe_grpc_status_code{' .. up .. '} 0',
        'probe_grpc_status_code{' .. gone .. '} -1',
        'probe_grpc_healthcheck_response{' .. up .. ','
          .. 'serving_status="SERVING"} 1',
        'probe_grpc_healthcheck_response{' .. up .. ','
          .. 'serving_status="NOT_SERVING"} 0',
        'probe_grpc_healthcheck_response{' .. down .. ','
          .. 'serving_status="NOT_SERVING"} 1',
        'probe_grpc_healthcheck_response{' .. gone .. ','
          .. 'serving_status="SERVING"} 0',
      } do
        assert.is_truthy(helpers.has_line(m, line), line .. "\n" .. m)
      end
      assert.are.equal(0, h:term(), text)
      local down = h:events("probe_result", { probe = "down" })
      assert.is_true(#down >= 2, text)
      assert.are.same({ "failure", "grpc_status", 0, "NOT_SERVING",
        'service unhealthy (responded with "NOT_SERVING")' },
        { down[1].status, down[1].reason, down[1].grpc_status,
          down[1].serving_status, down[1].output }, text)
      assert.are.equal("grpc_status", h:events("state_change",
        { probe = "down" })[1].reason, text)
      assert.are.equal("connect_refused", h:events("state_change",
        { probe = "gone" })[1].reason, text)
    end)

    it("in this process: a probe's last result carries the gRPC fields",
      function()
      local p = sonde.probe { name = "in-process", kind = "readiness",
        period = 0.2, grpc = { port = health.port, service = "unknown" } }
      local logged = helpers.run_logged(1)
      assert.is_true(#helpers.select(logged, "probe_result",
        { probe = "in-process" }) >= 1)
      local r = p.last_result
      assert.are.same({ "failure", "grpc_status", "UNKNOWN", "grpc" },
        { r.status, r.reason, r.serving_status, p.handler })
    end)

    it("at declaration: the field's name, at the script's line", function()
      local msg = helpers.error_here(function()
        sonde.probe { name = "bad", grpc = { port = "grpc" },
          ports = { { name = "grpc", port = 1 } } }
      end)
      assert.is_truthy(msg:find('probe "bad": grpc.port: must be a port '
        .. 'number 1..65535 (a gRPC probe takes no named port), got "grpc"',
        1, true), msg)
      msg = helpers.error_here(function()
        sonde.probe { name = "bad", grpc = { port = 1, timeout = 2 } }
      end)
      assert.is_truthy(msg:find('probe "bad": grpc.timeout: is set on the '
        .. "probe", 1, true), msg)
      msg = helpers.error_here(function()
        sonde.probe { name = "bad", grpc = { port = 1, tls = 1 } }
      end)
      assert.is_truthy(msg:find('probe "bad": grpc.tls: must be a boolean',
        1, true), msg)
    end)
  end)

  describe("spec errors name the field", function()
    it("port: required, 1..65535, an integer, no named port", function()
      spec_error({}, "sonde.grpc", "port", "is required")
      spec_error({ port = 0 }, "port", "1..65535")
      spec_error({ port = 70000 }, "port", "1..65535")
      spec_error({ port = 1.5 }, "port", "port number")
      spec_error({ port = "grpc" }, "port", "no named port")
    end)

    it("service: a UTF-8 string", function()
      spec_error({ port = 1, service = 5 }, "service", "must be a string")
      spec_error({ port = 1, service = "\xff" }, "service", "UTF-8")
      spec_error({ port = 1, service = "a\0b" }, "service", "NUL")
    end)

    it("host, timeout, tls and unknown fields", function()
      spec_error({ port = 1, host = "[::1]" }, "host", "brackets")
      spec_error({ port = 1, host = 7 }, "host", "string")
      spec_error({ port = 1, timeout = 0 }, "timeout", "> 0")
      spec_error({ port = 1, tls = "yes" }, "tls", "boolean or a table")
      spec_error({ port = 1, tls = { verify = "x" } }, "tls.verify",
        "boolean")
      spec_error({ port = 1, tls = { ca = "x" } }, "tls", "unknown field")
      spec_error({ port = 1, url = "http://x" }, "unknown field", "url")
    end)

    it("raised at the caller's line", function()
      local msg, line = helpers.error_here(function()
        sonde.grpc({ port = 0 }, function() end)
      end)
      assert.is_truthy(msg:find("sonde.grpc: port: must be 1..65535, got 0",
        1, true), msg)
      assert.is_number(line)
    end)
  end)
end)

describe("the protobuf codec (core.pb_*)", function()
  it("varints: 1 to 10 bytes", function()
    assert.are.equal("\0", core.pb_varint(0))
    assert.are.equal("\x7f", core.pb_varint(127))
    assert.are.equal("\x80\x01", core.pb_varint(128))
    assert.are.equal("\x96\x01", core.pb_varint(150))
    assert.are.equal(string.rep("\xff", 9) .. "\x01", core.pb_varint(-1))
  end)

  it("encodes a string field 1; \"\" is left out", function()
    assert.are.equal("\x0a\x03svc", core.pb_encode_string(1, "svc"))
    assert.are.equal("", core.pb_encode_string(1, ""))
    local long = string.rep("x", 300)
    assert.are.equal("\x0a\xac\x02" .. long, core.pb_encode_string(1, long))
    assert.are.equal("\x12\x01a", core.pb_encode_string(2, "a"))
  end)

  it("decodes varint field 1, the last value winning", function()
    assert.are.same({ 1, true }, { core.pb_decode_varint("\x08\x01", 1) })
    assert.are.same({ 0, false }, { core.pb_decode_varint("", 1) })
    assert.are.same({ 2, true },
      { core.pb_decode_varint("\x08\x01\x08\x02", 1) })
    assert.are.same({ -1, true },
      { core.pb_decode_varint("\x08" .. core.pb_varint(-1), 1) })
    -- a field 1 inside a group is not the message's own
    assert.are.same({ 0, false }, { core.pb_decode_varint("\x13\x08\x01\x14",
      1) })
  end)

  it("skips unknown fields of every wire type", function()
    local msg = unhex("109601" .. "19" .. string.rep("00", 8) .. "2203616263"
      .. "2b30052c" .. "3d00000000" .. "0803")
    assert.are.same({ 3, true }, { core.pb_decode_varint(msg, 1) })
  end)

  for _, c in ipairs {
    { "a truncated varint value", "\x08\x80", "truncated varint" },
    { "a truncated key", "\x80", "truncated varint" },
    { "an 11-byte varint", "\x08" .. string.rep("\x80", 10) .. "\x01",
      "varint overflows 64 bits" },
    { "a 10th byte over 1", "\x08" .. string.rep("\xff", 9) .. "\x02",
      "varint overflows 64 bits" },
    { "a length beyond the buffer", "\x12\x05abc", "length beyond the end" },
    { "a huge length", "\x12" .. core.pb_varint(-1), "length beyond the end" },
    { "a truncated fixed64", "\x11\1\2\3", "length beyond the end" },
    { "a truncated fixed32", "\x15\1", "length beyond the end" },
    { "wire type 6", "\x0e", "invalid wire type 6" },
    { "wire type 7", "\x17", "invalid wire type 7" },
    { "field number 0", "\x00\x01", "invalid field number" },
    { "an end group alone", "\x14", "unbalanced group" },
    { "an open group", "\x13\x08\x01", "unbalanced group" },
    { "groups nested too deep", string.rep("\x13", 65), "nested too deep" },
    { "field 1 as bytes", "\x0a\x01\x01", "wanted field has wire type 2" },
    { "field 1 as fixed32", "\x0d\0\0\0\0", "wanted field has wire type 5" },
  } do
    it("refuses " .. c[1], function()
      local v, err = core.pb_decode_varint(c[2], 1)
      assert.is_nil(v)
      assert.is_truthy(err:find(c[3], 1, true), err)
    end)
  end

  it("Go's duration format for the messages", function()
    assert.are.same({ "1s", "1.5s", "500ms", "1m0s", "1m30s", "2h0m0s",
      "100µs", "0s" }, { core.go_duration(1), core.go_duration(1.5),
      core.go_duration(0.5), core.go_duration(60), core.go_duration(90),
      core.go_duration(7200), core.go_duration(0.0001), core.go_duration(0) })
  end)
end)
