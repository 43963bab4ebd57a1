-- HTTP probes run on libcurl easy handles that the loop reuses
-- (src/curlsock.c, sonde_curl_easy_get/put): one run's handle goes back
-- to the loop's pool and the next run takes it.  Nothing of a run may reach
-- the next one: method, body, headers, TLS options, the TLS session, the
-- last socket error.  Every run here follows another on the same loop (the
-- process's one), so each takes the handle the run before it gave back.
-- Loopback only: the fixture server and `openssl s_server`.
local sonde = require "sonde"
local helpers = require "helpers"

local http = helpers.prober(sonde.http_get)

describe("sonde.http_get on reused easy handles", function()
  local srv

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1", log = true }
  end)

  lazy_teardown(helpers.stop_fixtures)

  before_each(function() srv:clear_log() end)

  it("a run with its own method, body and headers leaves none of them to the next", function()
    local r1 = http {
      url = srv:url("/echo"), method = "PUT", body = "first-run-body",
      headers = {
        ["X-First-Run"] = "1", Accept = "application/json",
        ["User-Agent"] = "first/1", Host = "first.example",
        Connection = "keep-alive", ["Content-Type"] = "text/plain",
      },
    }
    assert.are.equal("success", r1.status)
    local r2 = http { url = srv:url("/echo") }
    assert.are.equal("success", r2.status)
    local reqs = srv:requests()
    assert.are.equal(2, #reqs, srv:log())
    assert.are.equal("PUT /echo HTTP/1.1", helpers.request_line(reqs[1]))
    assert.are.same({ "X-First-Run: 1" }, helpers.header_lines(reqs[1], "x-first-run"))
    local head = reqs[2]
    assert.are.equal("GET /echo HTTP/1.1", helpers.request_line(head))
    assert.are.same({}, helpers.header_lines(head, "x-first-run"))
    assert.are.same({ "Accept: */*" }, helpers.header_lines(head, "accept"))
    assert.are.same({ "Host: 127.0.0.1:" .. srv.port }, helpers.header_lines(head, "host"))
    assert.are.same({ "Connection: close" }, helpers.header_lines(head, "connection"))
    assert.are.same({}, helpers.header_lines(head, "content-length"))
    assert.are.same({}, helpers.header_lines(head, "content-type"))
    local ua = helpers.header_lines(head, "user-agent")
    assert.are.equal(1, #ua)
    assert.is_truthy(ua[1]:match("^User%-Agent: sonde/%S+$"), ua[1])
  end)

  it("a HEAD run, then a GET: the GET reads its body", function()
    local r1 = http { url = srv:url("/ok"), method = "HEAD" }
    assert.are.same({ "success", "" }, { r1.status, r1.body })
    local r2 = http { url = srv:url("/ok") }
    assert.are.same({ "success", "ok body" }, { r2.status, r2.body })
    assert.are.equal("GET /ok HTTP/1.1", helpers.request_line(srv:requests()[2]))
  end)

  it("a POST turned into a GET by a 302, then a POST: it stays a POST with its body", function()
    local r1 = http { url = srv:url("/redirect?code=302&to=%2Fecho"), method = "POST", body = "a" }
    assert.are.same({ "success", 1 }, { r1.status, r1.redirects })
    local r2 = http { url = srv:url("/echo"), method = "POST", body = "xyz" }
    assert.are.equal("success", r2.status)
    local reqs = srv:requests()
    assert.are.equal(3, #reqs, srv:log())
    assert.are.equal("GET /echo HTTP/1.1", helpers.request_line(reqs[2]))
    assert.are.equal("POST /echo HTTP/1.1", helpers.request_line(reqs[3]))
    assert.are.same({ "Content-Length: 3" }, helpers.header_lines(reqs[3], "content-length"))
  end)

  it("the body cap and the redirect policy of a run are not the next one's", function()
    local r1 = http { url = srv:url("/a"), follow_redirects = "none", max_body = 3 }
    assert.are.same({ "warning", 302, 0 }, { r1.status, r1.http_status, r1.redirects })
    local r2 = http { url = srv:url("/a") }
    assert.are.same({ "success", "b", 1 }, { r2.status, r2.body, r2.redirects })
    local r3 = http { url = srv:url("/big?n=5000") }
    assert.are.same({ "success", 5000, false }, { r3.status, #r3.body, r3.truncated })
  end)

  -- libcurl never sets a handle's last socket error back to 0: a handle
  -- that saw a refusal must not carry it into a run whose socket() fails
  -- (that run would read as refused instead of out of descriptors).
  it("a refused run, then descriptors running out: resource, not connect_refused", function()
    local closed = helpers.closed_port()
    local out = helpers.run_lua(([[
      local sonde = require "sonde"
      local function probe(url, tag)
        sonde.http_get({ url = url }, function(r) print(tag, r.status, r.reason) end)
        sonde.run()
      end
      probe(%q, "warm")
      probe(%q, "refused")
      local held = {}
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        held[#held + 1] = f
      end
      probe(%q, "full")
      for _, f in ipairs(held) do f:close() end
      held = nil
      collectgarbage()
      probe(%q, "after")
      probe(%q, "refused-again")
    ]]):format(srv:url("/ok"), "http://127.0.0.1:" .. closed .. "/", srv:url("/ok"),
      srv:url("/ok"), "http://127.0.0.1:" .. closed .. "/"), { prefix = "ulimit -n 64;" })
    assert.are.same({
      "warm\tsuccess\tok",
      "refused\tfailure\tconnect_refused",
      "full\tunknown\tresource",
      "after\tsuccess\tok",
      "refused-again\tfailure\tconnect_refused",
    }, helpers.lines(out))
  end)
end)

describe("https on reused easy handles", function()
  local dir, server, base

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.self_signed(dir)
    server = helpers.tls_server(dir)
    base = "https://127.0.0.1:" .. server.port .. "/"
  end)

  lazy_teardown(function()
    if server then server.stop() end
    if dir then helpers.rmtree(dir) end
  end)

  local function get(spec)
    spec.url, spec.timeout = base, 5
    return helpers.run(function() return sonde.http_get(spec) end, 10)
  end

  it("runs after a verification failure keep their own TLS options", function()
    local verify = get { tls = { verify = true } }
    assert.are.same({ "failure", "tls" }, { verify.status, verify.reason })
    local plain = get {}
    assert.are.same({ "success", 200 }, { plain.status, plain.http_status })
    local with_ca = get { tls = { verify = true, ca_file = dir .. "/cert.pem" } }
    assert.are.equal("success", with_ca.status)
    -- the CA file of the run before is not this one's
    local again = get { tls = { verify = true } }
    assert.are.same({ "failure", "tls" }, { again.status, again.reason })
    local last = get {}
    assert.are.equal("success", last.status)
  end)

  -- kubelet: Go's client has no session cache; a run that resumed the
  -- last run's session would not make a TLS handshake of its own.
  -- `openssl s_server -www` says "New," or "Reused," in its page.
  it("no run resumes another run's TLS session", function()
    for i = 1, 3 do
      local r = get {}
      assert.are.equal("success", r.status)
      assert.is_truthy(r.body:find("\nNew, TLS", 1, true), ("run %d: %s"):format(i, r.body))
      assert.is_nil(r.body:find("Reused,", 1, true), ("run %d: %s"):format(i, r.body))
    end
  end)
end)
