-- sonde.http_get against the fixture server (spec/fixtures/fixture-server.c).
-- kubelet httpGet semantics; every request goes to loopback only.

local sonde = require "sonde"
local fixture = require "fixture"

local DEFAULT_MAX_BODY = 10240

-- Run one probe with a callback and the loop; return its result.
local function http(spec)
  local result, calls = nil, 0
  sonde.http_get(spec, function(r) result = r; calls = calls + 1 end)
  sonde.run()
  assert.are.equal(1, calls, "callback must be called exactly once")
  return result
end

-- The same through a task (no callback: http_get yields and returns).
local function http_in_task(spec)
  local result
  sonde.spawn(function() result = sonde.http_get(spec) end)
  sonde.run()
  assert.is_table(result, "http_get inside a task must return the result")
  return result
end

-- Assert that calling http_get(spec) raises, and that the message mentions
-- every needle (plain substring match).
local function assert_raises(spec, ...)
  local ok, err = pcall(sonde.http_get, spec, function() end)
  sonde.run() -- drain anything a wrongly accepted spec may have started
  assert.is_false(ok, "expected http_get to raise for this spec")
  err = tostring(err)
  for _, needle in ipairs { ... } do
    assert.is_truthy(err:find(needle, 1, true),
      ("error message %q should mention %q"):format(err, needle))
  end
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- Header lines named `name` in the i-th logged request of `srv`.
local function header_lines(srv, i, name)
  local reqs = srv:requests()
  assert.is_not_nil(reqs[i], ("request #%d was not logged"):format(i))
  return fixture.header_lines(reqs[i], name)
end

describe("sonde.http_get", function()
  local srv, srv2, srv6

  lazy_setup(function()
    srv = fixture.start { host = "127.0.0.1", log = true }
    srv2 = fixture.start { host = "127.0.0.1", log = true }
    srv6 = fixture.start { host = "::1", log = true }
  end)

  lazy_teardown(function()
    for _, s in ipairs { srv, srv2, srv6 } do
      if s then s:stop() end
    end
  end)

  before_each(function()
    srv:clear_log()
    srv2:clear_log()
    srv6:clear_log()
  end)

  describe("status codes", function()
    it("200 is success, reason ok, output = body", function()
      local r = http { url = srv:url("/ok") }
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal("ok body", r.output)
      assert.are.equal("ok body", r.body)
      assert.are.equal(200, r.http_status)
      assert.are.equal(0, r.redirects)
      assert.are.equal(srv:url("/ok"), r.url)
      assert.are.equal("127.0.0.1:" .. srv.port, r.remote_addr)
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
      assert.are.equal("failure", r.status)
      assert.are.equal("http_status", r.reason)
      assert.are.equal("HTTP probe failed with statuscode: 500", r.output)
      assert.are.equal(500, r.http_status)
      assert.are.equal("status 500", r.body)
    end)

    it("404 is failure http_status", function()
      local r = http { url = srv:url("/nothing-here") }
      assert.are.equal("failure", r.status)
      assert.are.equal("http_status", r.reason)
      assert.are.equal("HTTP probe failed with statuscode: 404", r.output)
    end)

    it("any 2xx is success (201)", function()
      local r = http { url = srv:url("/status/201") }
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal(201, r.http_status)
    end)

    it("works without a callback inside sonde.spawn", function()
      local r = http_in_task { url = srv:url("/ok") }
      assert.are.equal("success", r.status)
      assert.are.equal("ok body", r.output)
    end)

    it("runs several probes one after another in one task", function()
      local a, b
      sonde.spawn(function()
        a = sonde.http_get { url = srv:url("/ok") }
        b = sonde.http_get { url = srv:url("/status/503") }
      end)
      sonde.run()
      assert.are.equal("success", a.status)
      assert.are.equal("failure", b.status)
      assert.are.equal(503, b.http_status)
      assert.are.equal(2, #srv:requests())
    end)
  end)

  describe("redirects", function()
    it("a redirect to another hostname is a warning and is not followed", function()
      local target = "http://localhost:" .. srv.port .. "/ok"
      local r = http { url = srv:url("/redirect?to=" .. urlencode(target)) }
      assert.are.equal("warning", r.status)
      assert.are.equal("redirect", r.reason)
      assert.are.equal("Probe terminated redirects, Response body: redirecting", r.output)
      assert.are.equal(302, r.http_status)
      assert.are.equal(0, r.redirects)
      fixture.sleep(0.2) -- a wrongly followed hop would have arrived by now
      assert.are.equal(1, #srv:requests())
      assert.are.equal(1, srv:connections())
    end)

    it("follows a same-host relative redirect (/a -> /b)", function()
      local r = http { url = srv:url("/a") }
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal("b", r.output)
      assert.are.equal(1, r.redirects)
      assert.are.equal(srv:url("/b"), r.url)
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      assert.are.equal("/a", fixture.request_target(reqs[1]))
      assert.are.equal("/b", fixture.request_target(reqs[2]))
    end)

    for _, code in ipairs { 301, 303, 307, 308 } do
      it("follows a same-host " .. code .. " redirect", function()
        local r = http { url = srv:url("/redirect?code=" .. code .. "&to=%2Fb") }
        assert.are.equal("success", r.status)
        assert.are.equal("b", r.body)
        assert.are.equal(1, r.redirects)
      end)
    end

    -- Go's client (kubelet): the 10th response that redirects again ends
    -- the probe: 10 requests, 9 redirects followed.
    it("stops a redirect loop at the 10th request: failure redirect", function()
      local r = http { url = srv:url("/loop"), timeout = 5 }
      assert.are.equal("failure", r.status)
      assert.are.equal("redirect", r.reason)
      assert.are.equal(9, r.redirects)
      assert.are.equal(10, #srv:requests())
      assert.matches("stopped after 10 redirects", r.output, 1, true)
    end)

    it("a 3xx without Location is a warning", function()
      local r = http { url = srv:url("/nolocation") }
      assert.are.equal("warning", r.status)
      assert.are.equal("redirect", r.reason)
      assert.are.equal(302, r.http_status)
      assert.are.equal("Probe terminated redirects, Response body: no location", r.output)
      assert.are.equal(1, #srv:requests())
    end)

    it("follows a redirect to the same host on another port", function()
      local target = srv2:url("/ok")
      local r = http { url = srv:url("/redirect?to=" .. urlencode(target)) }
      assert.are.equal("success", r.status)
      assert.are.equal("ok body", r.output)
      assert.are.equal(1, r.redirects)
      assert.are.equal(target, r.url)
      assert.are.equal("127.0.0.1:" .. srv2.port, r.remote_addr)
      assert.are.equal(1, #srv:requests())
      assert.are.equal(1, #srv2:requests())
    end)

    it("keeps a user Host header on every hop, exactly once", function()
      local r = http { url = srv:url("/a"), headers = { { name = "host", value = "svc.example" } } }
      assert.are.equal("success", r.status)
      assert.are.equal(1, r.redirects)
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      for i = 1, #reqs do
        assert.are.same({ "Host: svc.example" }, header_lines(srv, i, "host"))
      end
    end)

    it("one deadline bounds all hops together", function()
      -- two hops of 0.6 s each: each fits in 1 s, both together do not
      local r = http {
        url = srv:url("/sleep?s=0.6&code=302&to=" .. urlencode("/sleep?s=0.6")),
        timeout = 1,
      }
      assert.are.equal("failure", r.status)
      assert.are.equal("timeout", r.reason)
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

    it("a user Accept replaces the default (exactly one line)", function()
      http { url = srv:url("/echo"), headers = { { name = "accept", value = "application/json" } } }
      assert.are.same({ "Accept: application/json" }, header_lines(srv, 1, "accept"))
    end)

    it("Accept = \"\" removes the Accept line (map form)", function()
      local r = http { url = srv:url("/echo"), headers = { Accept = "" } }
      assert.are.equal("success", r.status)
      assert.are.same({}, header_lines(srv, 1, "accept"))
    end)

    it("Accept = \"\" removes the Accept line (array form)", function()
      http { url = srv:url("/echo"), headers = { { name = "Accept", value = "" } } }
      assert.are.same({}, header_lines(srv, 1, "accept"))
    end)

    it("User-Agent = \"\" removes the User-Agent line (map form)", function()
      local r = http { url = srv:url("/echo"), headers = { ["User-Agent"] = "" } }
      assert.are.equal("success", r.status)
      assert.are.same({}, header_lines(srv, 1, "user-agent"))
    end)

    it("User-Agent = \"\" removes the User-Agent line (array form)", function()
      http { url = srv:url("/echo"), headers = { { name = "user-agent", value = "" } } }
      assert.are.same({}, header_lines(srv, 1, "user-agent"))
    end)

    it("a user User-Agent replaces the default", function()
      http { url = srv:url("/echo"), headers = { { name = "User-Agent", value = "probe/1" } } }
      assert.are.same({ "User-Agent: probe/1" }, header_lines(srv, 1, "user-agent"))
    end)

    it("a Host header sets the request Host", function()
      local r = http { url = srv:url("/host"), headers = { Host = "svc.example" } }
      assert.are.equal("success", r.status)
      assert.are.equal("svc.example", r.body)
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
      local lines = fixture.head_lines(srv:requests()[1])
      local pos = {}
      for i, l in ipairs(lines) do pos[l] = i end
      assert.is_not_nil(pos["X-Second-Thing: 2"], table.concat(lines, " | "))
      assert.is_not_nil(pos["X-First: 1"], table.concat(lines, " | "))
      assert.is_true(pos["X-Second-Thing: 2"] < pos["X-First: 1"])
    end)

    it("a header value with CR LF fails with reason config and sends nothing", function()
      local r = http {
        url = srv:url("/echo"),
        headers = { { name = "X-Test", value = "a\r\nX-Injected: yes" } },
      }
      assert.are.equal("failure", r.status)
      assert.are.equal("config", r.reason)
      fixture.sleep(0.2)
      assert.are.equal(0, srv:connections())
      assert.are.equal(0, #srv:requests())
    end)

    it("a header value with a bare LF (map form) fails with reason config and sends nothing", function()
      local r = http { url = srv:url("/echo"), headers = { ["X-Test"] = "a\nb" } }
      assert.are.equal("failure", r.status)
      assert.are.equal("config", r.reason)
      fixture.sleep(0.2)
      assert.are.equal(0, srv:connections())
    end)

    it("a header name outside [-A-Za-z0-9] raises, naming the field and the name", function()
      assert_raises({ url = srv:url("/echo"), headers = { { name = "X_Bad", value = "1" } } },
        "headers", "X_Bad")
      assert_raises({ url = srv:url("/echo"), headers = { ["Bad Name"] = "1" } },
        "headers", "Bad Name")
      fixture.sleep(0.1)
      assert.are.equal(0, srv:connections())
    end)
  end)

  describe("bodies", function()
    it("a stalled 200 body is read up to max_body: success at the cap, long before the timeout", function()
      local t0 = fixture.now()
      local r = http { url = srv:url("/stall?code=200&len=1048576&send=20480"), timeout = 5 }
      local wall = fixture.now() - t0
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal(DEFAULT_MAX_BODY, #r.body)
      assert.are.equal(("x"):rep(DEFAULT_MAX_BODY), r.body)
      assert.is_true(r.duration < 3, "duration " .. r.duration)
      assert.is_true(wall < 3, "wall time " .. wall)
    end)

    it("a stalled 503 body reaching the cap is failure http_status, long before the timeout", function()
      local r = http { url = srv:url("/stall?code=503&len=1048576&send=20480"), timeout = 5 }
      assert.are.equal("failure", r.status)
      assert.are.equal("http_status", r.reason)
      assert.are.equal("HTTP probe failed with statuscode: 503", r.output)
      assert.are.equal(503, r.http_status)
      assert.is_true(r.duration < 3, "duration " .. r.duration)
    end)

    it("a response whose server keeps the connection open completes at Content-Length", function()
      local r = http { url = srv:url("/keepopen"), timeout = 5 }
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.body)
      assert.is_true(r.duration < 1, "duration " .. r.duration)
    end)

    it("an HTTP/1.0 body delimited by close is read whole", function()
      local r = http { url = srv:url("/http10") }
      assert.are.equal("success", r.status)
      assert.are.equal(200, r.http_status)
      assert.are.equal("http10 body", r.body)
      assert.are.equal("http10 body", r.output)
    end)

    it("a body one byte over max_body is capped at max_body", function()
      local r = http { url = srv:url("/big?n=" .. (DEFAULT_MAX_BODY + 1)) }
      assert.are.equal("success", r.status)
      assert.are.equal(("a"):rep(DEFAULT_MAX_BODY), r.body)
    end)

    it("a body exactly max_body long is kept whole", function()
      local r = http { url = srv:url("/big?n=" .. DEFAULT_MAX_BODY) }
      assert.are.equal("success", r.status)
      assert.are.equal(("a"):rep(DEFAULT_MAX_BODY), r.body)
    end)

    it("a body under max_body is kept whole", function()
      local r = http { url = srv:url("/big?n=" .. (DEFAULT_MAX_BODY - 1)) }
      assert.are.equal("success", r.status)
      assert.are.equal(("a"):rep(DEFAULT_MAX_BODY - 1), r.body)
    end)

    it("honours a smaller max_body", function()
      local r = http { url = srv:url("/ok"), max_body = 2 }
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.body)
    end)

    it("sends method and request body", function()
      local r = http { url = srv:url("/echo"), method = "POST", body = "hello" }
      assert.are.equal("success", r.status)
      local head = srv:requests()[1]
      assert.are.equal("POST /echo HTTP/1.1", fixture.request_line(head))
      assert.are.same({ "Content-Length: 5" }, fixture.header_lines(head, "content-length"))
    end)
  end)

  describe("connection failures", function()
    it("a server closing without a reply is failure protocol, on one connection", function()
      local r = http { url = srv:url("/close") }
      assert.are.equal("failure", r.status)
      assert.are.equal("protocol", r.reason)
      fixture.sleep(0.2)
      assert.are.equal(1, srv:connections())
    end)

    it("a reply slower than the timeout is failure timeout", function()
      local r = http { url = srv:url("/sleep?s=3"), timeout = 1 }
      assert.are.equal("failure", r.status)
      assert.are.equal("timeout", r.reason)
      assert.is_true(r.duration >= 0.9, "duration " .. r.duration)
      assert.is_true(r.duration < 2.5, "duration " .. r.duration)
    end)

    it("a fractional timeout is honoured", function()
      local r = http { url = srv:url("/sleep?s=2"), timeout = 0.3 }
      assert.are.equal("failure", r.status)
      assert.are.equal("timeout", r.reason)
      assert.is_true(r.duration >= 0.25 and r.duration < 1, "duration " .. r.duration)
    end)

    it("connection refused is failure connect_refused", function()
      local gone = fixture.start {}
      local port = gone.port
      gone:stop()
      local r = http { url = "http://127.0.0.1:" .. port .. "/" }
      assert.are.equal("failure", r.status)
      assert.are.equal("connect_refused", r.reason)
      local r1 = http { host = "127.0.0.1", port = 1 }
      assert.are.equal("failure", r1.status)
      assert.are.equal("connect_refused", r1.reason)
    end)

    it("a name that does not resolve is failure dns (loopback resolver only)", function()
      local out = fixture.run_with_loopback_resolver([[
        local sonde = require "sonde"
        local r
        sonde.http_get({ url = "http://no-such-host.invalid/", timeout = 5 },
          function(x) r = x end)
        sonde.run()
        io.write("REASON ", r.reason, " STATUS ", r.status, "\n")
      ]])
      assert.are.equal("dns", out:match("REASON (%S+)"), out)
      assert.are.equal("failure", out:match("STATUS (%S+)"), out)
    end)
  end)

  describe("kubelet-style spec", function()
    it("builds the URL from scheme, host, port and path", function()
      local r = http { scheme = "HTTP", host = "127.0.0.1", port = srv.port, path = "/ok" }
      assert.are.equal("success", r.status)
      assert.are.equal(srv:url("/ok"), r.url)
    end)

    it("keeps the query string exactly", function()
      http { port = srv.port, path = "/h?x=1&y=a%20b" }
      assert.are.equal("/h?x=1&y=a%20b", fixture.request_target(srv:requests()[1]))
    end)

    it("adds a missing leading slash", function()
      http { port = srv.port, path = "healthz" }
      assert.are.equal("/healthz", fixture.request_target(srv:requests()[1]))
    end)

    it("defaults the path to /", function()
      local r = http { port = srv.port, path = "" }
      assert.are.equal("success", r.status)
      local r2 = http { port = srv.port }
      assert.are.equal("success", r2.status)
      assert.are.equal(srv:url("/"), r2.url)
      local reqs = srv:requests()
      assert.are.equal(2, #reqs)
      assert.are.equal("/", fixture.request_target(reqs[1]))
      assert.are.equal("/", fixture.request_target(reqs[2]))
    end)

    it("defaults the host to 127.0.0.1", function()
      local r = http { port = srv.port, path = "/ok" }
      assert.are.equal("success", r.status)
      assert.are.equal("127.0.0.1:" .. srv.port, r.remote_addr)
    end)

    it("takes a bare IPv6 literal host and brackets it in the URL", function()
      local r = http { host = "::1", port = srv6.port }
      assert.are.equal("success", r.status)
      assert.are.equal("ok body", r.body)
      assert.are.equal("http://[::1]:" .. srv6.port .. "/", r.url)
      assert.are.equal("[::1]:" .. srv6.port, r.remote_addr)
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
      assert.are.equal("success", r.status)
      assert.are.equal(srv:url("/ok"), r.url)
    end)

    it("rejects an unknown port name", function()
      assert_raises({ port = "nope", ports = { { name = "web", port = srv.port } } }, "port")
    end)

    it("rejects port 0 and port 70000", function()
      assert_raises({ port = 0 }, "port")
      assert_raises({ port = 70000 }, "port")
    end)

    it("rejects an unknown scheme", function()
      assert_raises({ scheme = "ftp", port = srv.port }, "scheme")
    end)

    it("rejects an unknown key, naming it", function()
      assert_raises({ url = srv:url("/ok"), bogus = 1 }, "bogus")
    end)

    it("rejects a negative timeout", function()
      assert_raises({ url = srv:url("/ok"), timeout = -1 }, "timeout")
    end)
  end)

  describe("concurrency and resources", function()
    it("runs 200 concurrent probes in parallel", function()
      local n, results = 200, {}
      local t0 = fixture.now()
      for i = 1, n do
        sonde.http_get({ url = srv:url("/sleep?s=0.5"), timeout = 4 },
          function(r) results[i] = r end)
      end
      sonde.run()
      local wall = fixture.now() - t0
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
      local refused = fixture.start {}
      local refused_port = refused.port
      refused:stop()
      -- warm up whatever the loop and libcurl keep for their lifetime
      http { url = srv:url("/ok") }
      http { url = "http://127.0.0.1:" .. refused_port .. "/" }
      local base = fixture.fd_count()

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
        expected = expected + 3
        sonde.http_get({ url = "http://127.0.0.1:" .. refused_port .. "/" }, function() done = done + 1 end)
        sonde.http_get({ url = srv6:url("/ok") }, function() done = done + 1 end)
        sonde.http_get({ url = srv:url("/ok"), headers = { ["X-Bad"] = "a\r\nb" } },
          function() done = done + 1 end)
      end
      sonde.run()
      assert.are.equal(expected, done)
      assert.are.equal(base, fixture.fd_count(), fixture.fd_list())
    end)
  end)
end)
