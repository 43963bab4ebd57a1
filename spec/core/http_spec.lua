-- sonde.http_get (src/http.c) against the fixture server
-- (spec/fixtures/fixture-server.c) and, for HTTPS, `openssl s_server`.
-- kubelet httpGet semantics; every request goes to loopback only.
local sonde = require "sonde"
local helpers = require "helpers"

local q = helpers.q

local DEFAULT_MAX_BODY = 10240

-- a probe's result; its spec refused, naming every `...`
local http, assert_raises = helpers.prober(sonde.http_get)

-- Header lines named `name` in the i-th logged request of `srv`.
local function header_lines(srv, i, name)
  local reqs = srv:requests()
  assert.is_not_nil(reqs[i], ("request #%d was not logged"):format(i))
  return helpers.header_lines(reqs[i], name)
end

describe("sonde.http_get", function()
  local srv, srv2, srv6

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1", log = true }
    srv2 = helpers.fixture { host = "127.0.0.1", log = true }
    srv6 = helpers.fixture { host = "::1", log = true }
  end)

  lazy_teardown(helpers.stop_fixtures)

  before_each(function()
    for _, s in ipairs { srv, srv2, srv6 } do s:clear_log() end
  end)

  describe("status codes", function()
    it("200 is success, reason ok, output = body", function()
      local r = http { url = srv:url("/ok") }
      assert.are.same({ "success", "ok", "ok body", "ok body", 200, 0, srv:url("/ok"), "127.0.0.1:" .. srv.port },
        { r.status, r.reason, r.output, r.body, r.http_status, r.redirects, r.url, r.remote_addr })
      assert.is_nil(r.error)
      assert.is_number(r.duration)
      assert.is_true(r.duration >= 0 and r.duration < 1)
    end)

    it("returns the response headers with lowercase names", function()
      local r = http { url = srv:url("/ok") }
      assert.are.equal("7", r.headers["content-length"])
      assert.are.equal("sonde-fixture", r.headers["server"])
      assert.are.equal("close", r.headers["connection"])
      assert.is_nil(r.headers["Content-Length"])
    end)

    it("joins repeated response headers with \", \"", function()
      local r = http { url = srv:url("/dupheaders") }
      assert.are.equal("success", r.status)
      assert.are.equal("1, 2", r.headers["x-dup"])
    end)

    it("500 is failure http_status with kubelet's output", function()
      local r = http { url = srv:url("/status/500") }
      assert.are.same({ "failure", "http_status", "HTTP probe failed with statuscode: 500", 500, "status 500" },
        { r.status, r.reason, r.output, r.http_status, r.body })
    end)

    it("404 is failure http_status", function()
      local r = http { url = srv:url("/nothing-here") }
      assert.are.same({ "failure", "http_status", "HTTP probe failed with statuscode: 404" },
        { r.status, r.reason, r.output })
    end)

    it("any 2xx is success (201)", function()
      local r = http { url = srv:url("/status/201") }
      assert.are.same({ "success", "ok", 201 }, { r.status, r.reason, r.http_status })
    end)

    it("works without a callback inside sonde.spawn", function()
      local r = helpers.run(function() return sonde.http_get { url = srv:url("/ok") } end)
      assert.is_table(r, "http_get inside a task must return the result")
      assert.are.same({ "success", "ok body" }, { r.status, r.output })
    end)

    it("runs several probes one after another in one task", function()
      local a, b
      sonde.spawn(function()
        a = sonde.http_get { url = srv:url("/ok") }
        b = sonde.http_get { url = srv:url("/status/503") }
      end)
      sonde.run()
      assert.are.equal("success", a.status)
      assert.are.same({ "failure", 503 }, { b.status, b.http_status })
      assert.are.equal(2, #srv:requests())
    end)
  end)

  describe("redirects", function()
    it("a redirect to another hostname is a warning and is not followed", function()
      local target = "http://localhost:" .. srv.port .. "/ok"
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode(target)) }
      assert.are.same({ "warning", "redirect", "Probe terminated redirects, Response body: redirecting", 302, 0 },
        { r.status, r.reason, r.output, r.http_status, r.redirects })
      helpers.sleep(0.2) -- a wrongly followed hop would have arrived by now
      assert.are.equal(1, #srv:requests())
      assert.are.equal(1, srv:connections())
    end)

    it("follows a redirect whose body reaches max_body (as Go's client)", function()
      local r = http { url = srv:url("/a"), max_body = 1 }
      assert.are.same({ "success", 200, 1, srv:url("/b") },
        { r.status, r.http_status, r.redirects, r.url })
    end)

    it("follows a same-host relative redirect (/a -> /b)", function()
      local r = http { url = srv:url("/a") }
      assert.are.same({ "success", "ok", "b", 1, srv:url("/b") },
        { r.status, r.reason, r.output, r.redirects, r.url })
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      assert.are.equal("/a", helpers.request_target(reqs[1]))
      assert.are.equal("/b", helpers.request_target(reqs[2]))
    end)

    for _, code in ipairs { 301, 303, 307, 308 } do
      it("follows a same-host " .. code .. " redirect", function()
        local r = http { url = srv:url("/redirect?code=" .. code .. "&to=%2Fb") }
        assert.are.same({ "success", "b", 1 }, { r.status, r.body, r.redirects })
      end)
    end

    -- Go's client (kubelet): the 10th response that redirects again ends
    -- the probe: 10 requests, 9 redirects followed.
    it("stops a redirect loop at the 10th request: failure redirect", function()
      local r = http { url = srv:url("/loop"), timeout = 5 }
      assert.are.same({ "failure", "redirect", 9 }, { r.status, r.reason, r.redirects })
      assert.are.equal(10, #srv:requests())
      assert.matches("stopped after 10 redirects", r.output, 1, true)
    end)

    it("a 3xx without Location is a warning", function()
      local r = http { url = srv:url("/nolocation") }
      assert.are.same({ "warning", "redirect", 302, "Probe terminated redirects, Response body: no location" },
        { r.status, r.reason, r.http_status, r.output })
      assert.are.equal(1, #srv:requests())
    end)

    it("follows a redirect to the same host on another port", function()
      local target = srv2:url("/ok")
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode(target)) }
      assert.are.same({ "success", "ok body", 1, target, "127.0.0.1:" .. srv2.port },
        { r.status, r.output, r.redirects, r.url, r.remote_addr })
      assert.are.equal(1, #srv:requests())
      assert.are.equal(1, #srv2:requests())
    end)

    it("keeps a user Host header on every hop, exactly once", function()
      local r = http { url = srv:url("/a"), headers = { { name = "host", value = "svc.example" } } }
      assert.are.same({ "success", 1 }, { r.status, r.redirects })
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      for i = 1, #reqs do
        assert.are.same({ "Host: svc.example" }, header_lines(srv, i, "host"))
      end
    end)

    it("one deadline bounds all hops together", function()
      -- two hops of 0.6 s each: each fits in 1 s, both together do not
      local r = http {
        url = srv:url("/sleep?s=0.6&code=302&to=" .. helpers.urlencode("/sleep?s=0.6")),
        timeout = 1,
      }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration < 1.5, "duration " .. r.duration)
      assert.are.equal(2, #srv:requests())
    end)
  end)

  describe("request headers", function()
    it("sends User-Agent sonde/<version>, Accept */* and Connection: close by default", function()
      local r = http { url = srv:url("/echo") }
      assert.are.equal("success", r.status)
      local ua = header_lines(srv, 1, "user-agent")
      assert.are.equal(1, #ua)
      assert.is_truthy(ua[1]:match("^User%-Agent: sonde/%S+$"), ua[1])
      assert.are.same({ "Accept: */*" }, header_lines(srv, 1, "accept"))
      assert.are.same({ "Connection: close" }, header_lines(srv, 1, "connection"))
      assert.are.same({ "Host: 127.0.0.1:" .. srv.port }, header_lines(srv, 1, "host"))
      -- /echo returns the head the server received
      assert.are.equal(srv:requests()[1], r.body)
    end)

    -- name, headers, the header looked at, its lines sent, whether the
    -- result's status is checked too
    local replaced = {
      { "a user Accept replaces the default (exactly one line)",
        { { name = "accept", value = "application/json" } }, "accept",
        { "Accept: application/json" } },
      { "Accept = \"\" removes the Accept line (map form)", { Accept = "" },
        "accept", {}, true },
      { "Accept = \"\" removes the Accept line (array form)",
        { { name = "Accept", value = "" } }, "accept", {} },
      { "User-Agent = \"\" removes the User-Agent line (map form)",
        { ["User-Agent"] = "" }, "user-agent", {}, true },
      { "User-Agent = \"\" removes the User-Agent line (array form)",
        { { name = "user-agent", value = "" } }, "user-agent", {} },
      { "a user User-Agent replaces the default",
        { { name = "User-Agent", value = "probe/1" } }, "user-agent",
        { "User-Agent: probe/1" } },
    }
    for _, c in ipairs(replaced) do
      it(c[1], function()
        local r = http { url = srv:url("/echo"), headers = c[2] }
        if c[5] then assert.are.equal("success", r.status) end
        assert.are.same(c[4], header_lines(srv, 1, c[3]))
      end)
    end

    it("a Host header sets the request Host", function()
      local r = http { url = srv:url("/host"), headers = { Host = "svc.example" } }
      assert.are.same({ "success", "svc.example" }, { r.status, r.body })
      assert.are.same({ "Host: svc.example" }, header_lines(srv, 1, "host"))
    end)

    it("canonicalises header names and keeps the array order", function()
      http {
        url = srv:url("/echo"),
        headers = {
          { name = "x-second-thing", value = "2" },
          { name = "X-FIRST", value = "1" },
        },
      }
      local lines = helpers.head_lines(srv:requests()[1])
      local pos = {}
      for i, l in ipairs(lines) do pos[l] = i end
      assert.is_not_nil(pos["X-Second-Thing: 2"], table.concat(lines, " | "))
      assert.is_not_nil(pos["X-First: 1"], table.concat(lines, " | "))
      assert.is_true(pos["X-Second-Thing: 2"] < pos["X-First: 1"])
    end)

    it("a header value with CR, LF or NUL raises at the call, naming the field "
      .. "and the header, and sends nothing", function()
      assert_raises({ url = srv:url("/echo"),
        headers = { { name = "X-Test", value = "a\r\nX-Injected: yes" } } },
        "headers[1]", "X-Test", "CR, LF or NUL")
      assert_raises({ url = srv:url("/echo"), headers = { ["X-Test"] = "a\nb" } },
        "headers.X-Test", "CR, LF or NUL")
      assert_raises({ url = srv:url("/echo"), headers = { ["X-Test"] = { "ok", "a\rb" } } },
        "headers.X-Test", "CR, LF or NUL")
      assert_raises({ url = srv:url("/echo"), headers = { ["X-Test"] = { "ok", "a\0b" } } },
        "headers.X-Test", "NUL")
      helpers.sleep(0.1)
      assert.are.equal(0, srv:connections())
    end)

    it("a header name outside [-A-Za-z0-9] raises, naming the field and the name", function()
      assert_raises({ url = srv:url("/echo"), headers = { { name = "X_Bad", value = "1" } } },
        "headers", "X_Bad")
      assert_raises({ url = srv:url("/echo"), headers = { ["Bad Name"] = "1" } },
        "headers", "Bad Name")
      helpers.sleep(0.1)
      assert.are.equal(0, srv:connections())
    end)
  end)

  describe("response facts (blackbox_exporter's http series)", function()
    local function phase_sum(r)
      local p = r.phases
      return p.resolve + p.connect + p.processing + p.transfer
    end

    it("gives the HTTP version, Content-Length, body size and IP protocol", function()
      local r = http { url = srv:url("/ok") }
      assert.are.same({ 1.1, 7, 7, 4 },
        { r.http_version, r.content_length, r.body_size, r.ip_protocol })
      local r6 = http { url = srv6:url("/ok") }
      assert.are.same({ "success", 6 }, { r6.status, r6.ip_protocol })
    end)

    it("an HTTP/1.0 reply without Content-Length: version 1, length -1", function()
      local r = http { url = srv:url("/http10") }
      assert.are.same({ "success", 1, -1, 11 },
        { r.status, r.http_version, r.content_length, r.body_size })
    end)

    it("counts the body bytes received, not only those kept under max_body", function()
      local r = http { url = srv:url("/big?n=5000"), max_body = 100000 }
      assert.are.same({ 5000, 5000, 5000 }, { r.content_length, r.body_size, #r.body })
    end)

    it("splits the run into phases that fit in its duration", function()
      local r = http { url = srv:url("/sleep?s=0.15") }
      assert.are.equal("success", r.status)
      for _, k in ipairs { "resolve", "connect", "tls", "processing", "transfer" } do
        assert.is_true(r.phases[k] >= 0, k)
      end
      assert.are.equal(0, r.phases.tls)
      -- the server waits 0.15 s before its first byte: processing
      assert.is_true(r.phases.processing >= 0.14, tostring(r.phases.processing))
      assert.is_true(phase_sum(r) <= r.duration + 0.01)
    end)

    it("sums the phases over the hops of followed redirects", function()
      local r = http { url = srv:url("/redirect?to=%2Fsleep%3Fs%3D0.1") }
      assert.are.same({ "success", 1 }, { r.status, r.redirects })
      assert.is_true(r.phases.processing >= 0.09, tostring(r.phases.processing))
    end)

    it("a refused connection: no version, no length, phases stop at connect", function()
      local r = http { url = "http://127.0.0.1:" .. helpers.closed_port() .. "/" }
      assert.are.same({ "failure", 0, 0, 0, 4 },
        { r.status, r.http_version, r.content_length, r.phases.processing, r.ip_protocol })
    end)
  end)

  describe("bodies", function()
    it("a stalled 200 body is read up to max_body: success at the cap, long before the timeout", function()
      local t0 = helpers.now()
      local r = http { url = srv:url("/stall?code=200&len=1048576&send=20480"), timeout = 5 }
      local wall = helpers.now() - t0
      assert.are.same({ "success", "ok" }, { r.status, r.reason })
      assert.are.equal(DEFAULT_MAX_BODY, #r.body)
      assert.are.equal(("x"):rep(DEFAULT_MAX_BODY), r.body)
      assert.is_true(r.duration < 3, "duration " .. r.duration)
      assert.is_true(wall < 3, "wall time " .. wall)
    end)

    it("a stalled 503 body reaching the cap is failure http_status, long before the timeout", function()
      local r = http { url = srv:url("/stall?code=503&len=1048576&send=20480"), timeout = 5 }
      assert.are.same({ "failure", "http_status", "HTTP probe failed with statuscode: 503", 503 },
        { r.status, r.reason, r.output, r.http_status })
      assert.is_true(r.duration < 3, "duration " .. r.duration)
    end)

    it("a response whose server keeps the connection open completes at Content-Length", function()
      local r = http { url = srv:url("/keepopen"), timeout = 5 }
      assert.are.same({ "success", "ok" }, { r.status, r.body })
      assert.is_true(r.duration < 1, "duration " .. r.duration)
    end)

    it("an HTTP/1.0 body delimited by close is read whole", function()
      local r = http { url = srv:url("/http10") }
      assert.are.same({ "success", 200, "http10 body", "http10 body" },
        { r.status, r.http_status, r.body, r.output })
    end)

    it("a body one byte over max_body is capped at max_body", function()
      local r = http { url = srv:url("/big?n=" .. (DEFAULT_MAX_BODY + 1)) }
      assert.are.same({ "success", ("a"):rep(DEFAULT_MAX_BODY) }, { r.status, r.body })
    end)

    it("a body exactly max_body long is kept whole", function()
      local r = http { url = srv:url("/big?n=" .. DEFAULT_MAX_BODY) }
      assert.are.same({ "success", ("a"):rep(DEFAULT_MAX_BODY) }, { r.status, r.body })
    end)

    it("a body under max_body is kept whole", function()
      local r = http { url = srv:url("/big?n=" .. (DEFAULT_MAX_BODY - 1)) }
      assert.are.same({ "success", ("a"):rep(DEFAULT_MAX_BODY - 1) },
        { r.status, r.body })
    end)

    it("honours a smaller max_body", function()
      local r = http { url = srv:url("/ok"), max_body = 2 }
      assert.are.same({ "success", "ok" }, { r.status, r.body })
    end)

    it("sends method and request body", function()
      local r = http { url = srv:url("/echo"), method = "POST", body = "hello" }
      assert.are.equal("success", r.status)
      local head = srv:requests()[1]
      assert.are.equal("POST /echo HTTP/1.1", helpers.request_line(head))
      assert.are.same({ "Content-Length: 5" }, helpers.header_lines(head, "content-length"))
    end)
  end)

  describe("connection failures", function()
    it("a server closing without a reply is failure protocol, on one connection", function()
      local r = http { url = srv:url("/close") }
      assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
      helpers.sleep(0.2)
      assert.are.equal(1, srv:connections())
    end)

    it("a reply slower than the timeout is failure timeout", function()
      local r = http { url = srv:url("/sleep?s=3"), timeout = 1 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration >= 0.9, "duration " .. r.duration)
      assert.is_true(r.duration < 2.5, "duration " .. r.duration)
    end)

    it("a fractional timeout is honoured", function()
      local r = http { url = srv:url("/sleep?s=2"), timeout = 0.3 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.is_true(r.duration >= 0.25 and r.duration < 1, "duration " .. r.duration)
    end)

    it("connection refused is failure connect_refused", function()
      local port = helpers.closed_port()
      local r = http { url = "http://127.0.0.1:" .. port .. "/" }
      assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
      local r1 = http { host = "127.0.0.1", port = 1 }
      assert.are.same({ "failure", "connect_refused" }, { r1.status, r1.reason })
    end)

  end)

  describe("kubelet-style spec", function()
    it("builds the URL from scheme, host, port and path", function()
      local r = http { scheme = "HTTP", host = "127.0.0.1", port = srv.port, path = "/ok" }
      assert.are.same({ "success", srv:url("/ok") }, { r.status, r.url })
    end)

    it("keeps the query string exactly", function()
      http { port = srv.port, path = "/h?x=1&y=a%20b" }
      assert.are.equal("/h?x=1&y=a%20b", helpers.request_target(srv:requests()[1]))
    end)

    it("adds a missing leading slash", function()
      http { port = srv.port, path = "healthz" }
      assert.are.equal("/healthz", helpers.request_target(srv:requests()[1]))
    end)

    it("defaults the path to /", function()
      local r = http { port = srv.port, path = "" }
      assert.are.equal("success", r.status)
      local r2 = http { port = srv.port }
      assert.are.same({ "success", srv:url("/") }, { r2.status, r2.url })
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      assert.are.equal("/", helpers.request_target(reqs[1]))
      assert.are.equal("/", helpers.request_target(reqs[2]))
    end)

    it("takes a bare IPv6 literal host and brackets it in the URL", function()
      local r = http { host = "::1", port = srv6.port }
      assert.are.same({ "success", "ok body", "http://[::1]:" .. srv6.port .. "/", "[::1]:" .. srv6.port },
        { r.status, r.body, r.url, r.remote_addr })
      assert.are.equal(1, #srv6:requests())
    end)

    it("accepts a bracketed IPv6 url", function()
      local r = http { url = srv6:url("/ok") }
      assert.are.equal("success", r.status)
    end)

    it("rejects a bracketed IPv6 host", function()
      assert_raises({ host = "[::1]", port = srv6.port }, "host")
    end)

    it("resolves a port name through ports", function()
      local r = http { port = "web", ports = { { name = "other", port = 1 }, { name = "web", port = srv.port } }, path = "/ok" }
      assert.are.same({ "success", srv:url("/ok") }, { r.status, r.url })
    end)

    it("rejects an unknown scheme", function()
      assert_raises({ scheme = "ftp", port = srv.port }, "scheme")
    end)

    it("rejects a negative timeout", function()
      assert_raises({ url = srv:url("/ok"), timeout = -1 }, "timeout")
    end)
  end)

  describe("concurrency and resources", function()
    it("runs 200 concurrent probes in parallel", function()
      local n, results = 200, {}
      local t0 = helpers.now()
      for i = 1, n do
        sonde.http_get({ url = srv:url("/sleep?s=0.5"), timeout = 4 },
          function(r) results[i] = r end)
      end
      sonde.run()
      local wall = helpers.now() - t0
      local ok = 0
      for i = 1, n do
        if results[i] and results[i].status == "success" and results[i].body == "slept" then
          ok = ok + 1
        end
      end
      assert.are.equal(n, ok)
      assert.is_true(wall < 5, "wall time " .. wall)
      assert.are.equal(n, #srv:requests())
    end)

    it("leaves no file descriptor behind", function()
      local refused_port = helpers.closed_port()
      -- warm up whatever the loop and libcurl keep for their lifetime
      http { url = srv:url("/ok") }
      http { url = "http://127.0.0.1:" .. refused_port .. "/" }
      local base = helpers.fd_count()

      local paths = {
        "/ok", "/status/500", "/close", "/keepopen", "/http10", "/a", "/loop",
        "/stall", "/stall?code=503", "/big?n=50000", "/sleep?s=2", "/nolocation",
      }
      local done, expected = 0, 0
      for _ = 1, 5 do
        for _, p in ipairs(paths) do
          expected = expected + 1
          sonde.http_get({ url = srv:url(p), timeout = 0.5 }, function() done = done + 1 end)
        end
        expected = expected + 2
        sonde.http_get({ url = "http://127.0.0.1:" .. refused_port .. "/" }, function() done = done + 1 end)
        sonde.http_get({ url = srv6:url("/ok") }, function() done = done + 1 end)
        assert.is_false(pcall(sonde.http_get, { url = srv:url("/ok"),
          headers = { ["X-Bad"] = "a\r\nb" } }, function() done = done + 1 end))
      end
      sonde.run()
      assert.are.equal(expected, done)
      assert.are.equal(base, helpers.fd_count(), helpers.fd_list())
    end)
  end)

  describe("hardening", function()
    -- The only logged request (asserts there is exactly one).
    local function only_request()
      local reqs = srv:requests()
      assert.are.equal(1, #reqs, "exactly one request expected, log:\n" .. srv:log())
      return reqs[1]
    end

    -- method, body and the request line, Content-Length and Content-Type
    -- sent (a field absent from a row is not checked; ctype {}: none sent)
    local sent = {
      { "GET with a body stays GET, sends the body, and no Content-Type",
        { body = "hello" }, code = 200, line = "GET /echo HTTP/1.1",
        length = "Content-Length: 5", ctype = {} },
      { "POST with a body sends POST and no Content-Type",
        { method = "POST", body = "x" }, line = "POST /echo HTTP/1.1",
        length = "Content-Length: 1", ctype = {} },
      { "a Content-Type given in headers is sent exactly once",
        { method = "POST", body = "x", headers = { ["Content-Type"] = "text/plain" } },
        line = "POST /echo HTTP/1.1", ctype = { "Content-Type: text/plain" } },
      { "a body with NUL bytes is allowed and sent whole",
        { body = "ab\0cd\0\0ef\0" }, code = 200, line = "GET /echo HTTP/1.1",
        length = "Content-Length: 10" },
    }
    for _, c in ipairs(sent) do
      it(c[1], function()
        local spec = { url = srv:url("/echo") }
        for k, v in pairs(c[2]) do spec[k] = v end
        local r = http(spec)
        assert.are.equal("success", r.status)
        if c.code then assert.are.equal(c.code, r.http_status) end
        local head = only_request()
        assert.are.equal(c.line, helpers.request_line(head))
        if c.length then
          assert.are.same({ c.length }, helpers.header_lines(head, "Content-Length"))
        end
        if c.ctype then
          assert.are.same(c.ctype, helpers.header_lines(head, "Content-Type"))
        end
      end)
    end

    it("timeout = 1e9 is accepted", function()
      helpers.accepted(sonde.http_get, { url = srv:url("/ok"), timeout = 1e9 })
    end)

    it("timeout = 1e16 raises naming timeout", function()
      assert_raises({ url = srv:url("/ok"), timeout = 1e16 }, "sonde.http_get", "timeout")
    end)

    -- name, spec, what the message names
    local refused = {
      { "a path with a NUL byte raises naming path",
        { host = "127.0.0.1", path = "/echo\0/evil" }, "path", "NUL" },
      { "a header value with a NUL byte raises naming the header value (array form)",
        { headers = { { name = "X-A", value = "abc\0def" } } }, "headers[1].value", "NUL" },
      { "a header value with a NUL byte raises naming the header value (map form)",
        { headers = { ["X-A"] = "abc\0def" } }, "headers.X-A", "NUL" },
      { "tls.ca_file with a NUL byte raises naming tls.ca_file",
        { tls = { ca_file = "/x\0y" } }, "tls.ca_file", "NUL" },
      { "headers with a hole (explicit [1] and [3]) raise", { headers = {
        [1] = { name = "X-A", value = "1" }, [3] = { name = "X-C", value = "3" } } },
        "headers", connections = 0 },
      { "headers with a hole (constructor with a literal nil) raise", { headers = {
        { name = "X-A", value = "1" }, nil, { name = "X-C", value = "3" } } },
        "headers", connections = 0 },
      { "headers with only index 0 raise",
        { headers = { [0] = { name = "X-A", value = "1" } } }, "headers" },
      { "headers mixing an array and a map raise",
        { headers = { { name = "X-A", value = "1" }, ["X-B"] = "2" } }, "headers" },
    }
    for _, c in ipairs(refused) do
      it(c[1], function()
        local spec = c[2]
        if spec.host then spec.port = srv.port else spec.url = srv:url("/echo") end
        assert_raises(spec, table.unpack(c, 3))
        if c.connections then assert.are.equal(c.connections, srv:connections()) end
      end)
    end

    for _, u in ipairs { "http://127.0.0.1:99999/", "http://:80/", "http://@/", "http://[::1/" } do
      it(("%s raises naming url"):format(u), function()
        assert_raises({ url = u }, "sonde.http_get", "url")
      end)
    end

    it("a body of exactly max_body (10240) bytes: success, whole body, not truncated", function()
      local r = http { url = srv:url("/big?n=10240") }
      assert.are.same({ "success", "ok", 10240, false },
        { r.status, r.reason, #r.body, r.truncated })
    end)

    it("a body of 10241 bytes: success, 10240 kept, truncated", function()
      local r = http { url = srv:url("/big?n=10241") }
      assert.are.same({ "success", 10240, true }, { r.status, #r.body, r.truncated })
    end)

    it("50 concurrent requests to a silent server all time out within 3 s", function()
      local slow = helpers.fixture { host = "127.0.0.1", max_seconds = 60 }
      local results, n = {}, 50
      local t0 = sonde.now()
      local ok, err = pcall(function()
        for i = 1, n do
          sonde.http_get({ url = slow:url("/sleep?s=30"), timeout = 1 },
            function(r) results[i] = r end)
        end
        sonde.run()
      end)
      local elapsed = sonde.now() - t0
      slow:stop()
      assert.is_true(ok, tostring(err))
      local bad = {}
      for i = 1, n do
        local r = results[i]
        if not r or r.status ~= "failure" or r.reason ~= "timeout" then
          bad[#bad + 1] = ("#%d: %s"):format(i, r and (r.status .. " " .. r.reason .. " "
            .. tostring(r.error)) or "no result")
        end
      end
      assert.are.same({}, bad)
      assert.is_true(elapsed < 3, ("the batch took %.2f s"):format(elapsed))
    end)

    it("a same-host redirect to ftp:// is failure, reason redirect", function()
      local r = http {
        url = srv:url("/redirect?to=" .. helpers.urlencode("ftp://127.0.0.1:1/x")),
      }
      assert.are.same({ "failure", "redirect" }, { r.status, r.reason })
      assert.are.equal(1, #srv:requests())
    end)

    it("a reply that is not HTTP is failure reason protocol, not config", function()
      if not os.execute("python3 -c 'import socket' >/dev/null 2>&1") then
        pending("python3 is not available to run a one-shot garbage server")
        return
      end
      local py = [[
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(8)
s.settimeout(20)
print(s.getsockname()[1], os.getpid(), flush=True)
try:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        c.recv(65536)
    except OSError:
        pass
    c.sendall(b"garbage\r\n\r\n")
    c.close()
except OSError:
    pass
]]
      local p = assert(io.popen("exec python3 -c " .. q(py) .. " </dev/null", "r"))
      local line = p:read("l") or ""
      local port, pid = line:match("^(%d+) (%d+)$")
      local ok, r = pcall(function()
        assert(port, "the garbage server printed no port: " .. line)
        return http { url = ("http://127.0.0.1:%s/"):format(port), timeout = 5 }
      end)
      if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
      p:close()
      assert.is_true(ok, tostring(r))
      assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
    end)
  end)
end)

-- HTTPS: the kubelet does not verify certificates; tls.verify and
-- tls.ca_file turn verification on.  The server is `openssl s_server` on
-- 127.0.0.1 with a self-signed certificate made for the test.
describe("https", function()
  local dir, pid, port

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.self_signed(dir)
    local server = helpers.tls_server(dir)
    pid, port = server.pid, server.port
  end)

  lazy_teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if dir then helpers.rmtree(dir) end
  end)

  local function get(spec)
    return helpers.run(function() return sonde.http_get(spec) end, 10)
  end

  it("does not verify the certificate by default (kubelet)", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5 }
    assert.are.same({ "success", 200 }, { r.status, r.http_status })
  end)

  it("scheme HTTPS in kubelet form works the same", function()
    local r = get { scheme = "HTTPS", port = port, timeout = 5 }
    assert.are.same({ "success", "https://127.0.0.1:" .. port .. "/" },
      { r.status, r.url })
  end)

  it("tls.verify with an unknown issuer is failure reason tls", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5,
                    tls = { verify = true } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
  end)

  it("tls.verify with the issuer as ca_file is success", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5,
                    tls = { verify = true, ca_file = dir .. "/cert.pem" } }
    assert.are.equal("success", r.status)
  end)

  it("plain HTTP to the TLS port is failure reason protocol", function()
    local r = get { url = "http://127.0.0.1:" .. port .. "/", timeout = 5 }
    assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
  end)

  it("tls fields are checked", function()
    assert.has_error(function()
      sonde.http_get({ url = "https://127.0.0.1:1/", tls = { verify = "yes" } },
        function() end)
    end)
    assert.has_error(function()
      sonde.http_get({ url = "https://127.0.0.1:1/", tls = { bogus = 1 } },
        function() end)
    end)
  end)
end)
