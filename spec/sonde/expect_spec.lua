-- Expectations (sonde.expect; judged in src/expect.c and src/tcp.c):
-- http_get.expect and tcp_socket send/expect against the fixture server
-- (its http and line modes), each met and unmet with its exact output;
-- the order they are judged in; what is refused when declared; declared
-- probes reaching failure with reason expect, in C and through Lua (json).
local sonde = require "sonde"
local helpers = require "helpers"

local http, http_refused = helpers.prober(sonde.http_get)
local tcp, tcp_refused = helpers.prober(sonde.tcp_socket)

-- a JSON health document, percent-encoded for /json?doc=
local function doc(s) return "/json?doc=" .. helpers.urlencode(s) end
local HEALTH = '{"status":"ok","checks":[{"name":"db","healthy":true,"n":3}]}'

describe("http_get.expect", function()
  local srv

  lazy_setup(function() srv = helpers.fixture() end)
  lazy_teardown(helpers.stop_fixtures)

  local function get(path, expect, extra)
    local spec = { url = srv:url(path), expect = expect, timeout = 5 }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return http(spec)
  end

  -- status, reason, output of a result
  local function sro(r) return { r.status, r.reason, r.output } end

  describe("status", function()
    it("a listed code is a success, whatever the kubelet says (401)",
      function()
      local r = get("/status/401", { status = { 200, 401 } })
      assert.are.same({ "success", "ok", "status 401" }, sro(r))
      assert.are.equal(401, r.http_status)
    end)

    it("a code not listed is a failure, reason expect", function()
      local r = get("/status/503", { status = { 200, 401 } })
      assert.are.same({ "failure", "expect",
        "expect.status: got 503, want 200 or 401" }, sro(r))
      assert.are.equal(503, r.http_status)
      assert.are.equal("status 503", r.body)
    end)

    it("takes one code, a class, and lists of both", function()
      assert.are.same({ "success", "ok", "status 200" },
        sro(get("/status/200", { status = 200 })))
      assert.are.same({ "success", "ok", "ok body" },
        sro(get("/ok", { status = "2xx" })))
      assert.are.same({ "failure", "expect", "expect.status: got 503, want 2xx" },
        sro(get("/status/503", { status = "2xx" })))
      assert.are.same({ "failure", "expect",
        "expect.status: got 503, want 200, 204 or 4xx" },
        sro(get("/status/503", { status = { 200, 204, "4xx" } })))
      assert.are.same({ "success", "ok", "status 404" },
        sro(get("/status/404", { status = { 200, "4XX" } })))
    end)

    it("a 3xx listed is a success instead of the kubelet's warning",
      function()
      local away = "/redirect?code=301&to=" .. helpers.urlencode("http://127.0.0.2/x")
      local plain = get(away, nil)
      assert.are.same({ "warning", "redirect" }, { plain.status, plain.reason })
      local r = get(away, { status = { "2xx", "3xx" } })
      assert.are.same({ "success", "ok", "redirecting" }, sro(r))
      assert.are.equal(301, r.http_status)
    end)

    it("without a status list the kubelet's failure stands, reason http_status",
      function()
      assert.are.same({ "failure", "http_status",
        "HTTP probe failed with statuscode: 503" },
        sro(get("/status/503", { body = "nope" })))
    end)
  end)

  describe("body and body_not", function()
    it("a pattern found in the body is met", function()
      assert.are.same({ "success", "ok", "ok body" },
        sro(get("/ok", { body = "^ok %l+$", body_not = "error" })))
    end)

    it("a pattern not found fails, showing the body's first 80 bytes",
      function()
      assert.are.same({ "failure", "expect",
        'expect.body: pattern "nope" not found in body (first 80 bytes: "ok body")' },
        sro(get("/ok", { body = "nope" })))
      local long = sro(get("/big?n=200", { body = "b" }))
      assert.are.same({ "failure", "expect",
        'expect.body: pattern "b" not found in body (first 80 bytes: "'
          .. ("a"):rep(80) .. '"...)' }, long)
    end)

    it("a body cut at max_body is searched as read, and the message says so",
      function()
      assert.are.same({ "failure", "expect",
        'expect.body: pattern "b" not found in body (first 80 bytes: "'
          .. ("a"):rep(80) .. '"...) (body cut at max_body: 100 bytes read)' },
        sro(get("/big?n=20000", { body = "b" }, { max_body = 100 })))
    end)

    it("body_not found fails, showing what it matched", function()
      assert.are.same({ "failure", "expect",
        'expect.body_not: pattern "o%w" found in body: "ok"' },
        sro(get("/ok", { body_not = "o%w" })))
    end)
  end)

  describe("headers", function()
    it("names are matched in any case, values by pattern", function()
      assert.are.same({ "success", "ok", "ok body" },
        sro(get("/ok", { headers = { SERVER = "^sonde%-fixture$",
          ["content-length"] = "^7$" } })))
    end)

    it("a missing header fails", function()
      assert.are.same({ "failure", "expect",
        'expect.headers["content-type"]: missing' },
        sro(get("/ok", { headers = { ["content-type"] = "json" } })))
    end)

    it("a value not matched fails, escaped; with repeats, any line may match",
      function()
      assert.are.same({ "failure", "expect",
        'expect.headers["X-Bad"]: pattern "^3" not matched by '
          .. '"a\\x01b\\x1b[31mc\\x7f"' },
        sro(get("/badheader", { headers = { ["X-Bad"] = "^3" } })))
      assert.are.same({ "failure", "expect",
        'expect.headers["x-dup"]: pattern "^3" not matched by any of its 2 '
          .. 'values (first: "1")' },
        sro(get("/dupheaders", { headers = { ["x-dup"] = "^3" } })))
      assert.are.equal("success",
        get("/dupheaders", { headers = { ["x-dup"] = "^2$" } }).status)
    end)
  end)

  describe("max_duration", function()
    it("a response slower than it fails, with the time it took", function()
      local r = get("/sleep?s=0.3", { max_duration = 0.1 })
      assert.are.same({ "failure", "expect" }, { r.status, r.reason })
      assert.matches("^expect%.max_duration: took 0%.%d%d%d s, want at most "
        .. "0%.1 s$", r.output)
      assert.is_true(r.duration > 0.1)
    end)

    it("a response within it is met", function()
      assert.are.equal("success", get("/ok", { max_duration = 30 }).status)
    end)
  end)

  describe("json", function()
    it("values at paths equal to those given are met", function()
      assert.are.same({ "success", "ok", HEALTH }, sro(get(doc(HEALTH),
        { json = { ["$.status"] = "ok", ["$.checks[0].healthy"] = true,
          ["$.checks[0].n"] = 3, ["$.checks[0].name"] = "db" } })))
    end)

    it("another value fails, showing both", function()
      assert.are.same({ "failure", "expect",
        'expect.json["$.status"]: got "down", want "ok"' },
        sro(get(doc('{"status":"down"}'), { json = { ["$.status"] = "ok" } })))
      assert.are.same({ "failure", "expect",
        'expect.json["$.checks[0].healthy"]: got false, want true' },
        sro(get(doc('{"checks":[{"healthy":false}]}'),
          { json = { ["$.checks[0].healthy"] = true } })))
    end)

    it("types must match: 3 is not \"3\", an object is no value", function()
      assert.are.same({ "failure", "expect",
        'expect.json["$.checks[0].n"]: got 3, want "3"' },
        sro(get(doc(HEALTH), { json = { ["$.checks[0].n"] = "3" } })))
      assert.are.same({ "failure", "expect",
        'expect.json["$.checks[0]"]: got an object, want true' },
        sro(get(doc(HEALTH), { json = { ["$.checks[0]"] = true } })))
      assert.are.same({ "failure", "expect",
        'expect.json["$.x"]: got null, want "ok"' },
        sro(get(doc('{"x":null}'), { json = { ["$.x"] = "ok" } })))
    end)

    it("a missing key or index is not found", function()
      for _, path in ipairs { "$.nope", "$.checks[1].name", "$.status.x",
          "$.checks.name" } do
        assert.are.same({ "failure", "expect",
          'expect.json["' .. path .. '"]: not found' },
          sro(get(doc(HEALTH), { json = { [path] = "ok" } })))
      end
    end)

    it("a body that is not JSON fails with the parser's message", function()
      assert.are.same({ "failure", "expect", "expect.json: body is not JSON "
        .. "(Expected value but found invalid token at character 1)" },
        sro(get("/ok", { json = { ["$.status"] = "ok" } })))
      local r = get(doc(HEALTH), { json = { ["$.status"] = "ok" } },
        { max_body = 20 })
      assert.are.same({ "failure", "expect" }, { r.status, r.reason })
      assert.matches("^expect%.json: body is not JSON %(.*%) %(body cut at "
        .. "max_body: 20 bytes read%)$", r.output)
    end)
  end)

  describe("order", function()
    it("status, max_duration, headers, body, body_not, json: the first "
      .. "unmet decides", function()
      local all = { status = 200, headers = { ["x-none"] = "." },
        body = "nope", body_not = "o", json = { ["$.a"] = 1 } }
      assert.are.equal("expect.status: got 503, want 200",
        get("/status/503", all).output)
      assert.matches("^expect%.max_duration",
        get("/sleep?s=0.2", { max_duration = 0.05, headers = all.headers }).output)
      assert.are.equal('expect.headers["x-none"]: missing', get("/ok", all).output)
      all.headers = nil
      assert.matches("^expect%.body: ", get("/ok", all).output)
      all.body = nil
      assert.matches("^expect%.body_not: ", get("/ok", all).output)
      all.body_not = nil
      assert.matches("^expect%.json: ", get("/ok", all).output)
    end)

    it("a transport failure stays what it is", function()
      local r = http { url = "http://127.0.0.1:" .. helpers.closed_port() .. "/",
        expect = { status = 200, json = { ["$.a"] = 1 } } }
      assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
    end)
  end)

  describe("is checked when declared", function()
    local function refused(expect, ...)
      return http_refused({ port = srv.port, expect = expect }, ...)
    end

    it("status: codes 100..599 and classes 1xx..5xx, not empty", function()
      refused({ status = 99 }, 'sonde.http_get: expect.status: must be a '
        .. 'status code 100..599 or a class "1xx".."5xx", got 99')
      refused({ status = { 200, "2xy" } }, "expect.status[2]:", '"2xy"')
      refused({ status = {} }, "expect.status: must not be empty")
      refused({ status = 200.5 }, "expect.status:")
    end)

    it("patterns Lua would refuse", function()
      refused({ body = "[a" }, 'expect.body: not a valid Lua pattern "[a": '
        .. "malformed pattern (missing ']')")
      refused({ body_not = "(x" }, "expect.body_not:", "unfinished capture")
      refused({ headers = { ["content-type"] = "%" } },
        'expect.headers["content-type"]:', "ends with '%'")
    end)

    it("headers: names, and a pattern each", function()
      refused({ headers = { ["bad name"] = "x" } }, 'expect.headers["bad name"]:',
        "not a header name")
      refused({ headers = { ["x-a"] = 1 } }, 'expect.headers["x-a"]:',
        "must be a string")
      refused({ headers = { "x" } }, "expect.headers:", "header names")
    end)

    it("json: paths and values", function()
      refused({ json = { status = "ok" } }, 'expect.json["status"]:',
        'a path starts with "$"')
      refused({ json = { ["$.a[x]"] = 1 } }, 'expect.json["$.a[x]"]:',
        'bad path "$.a[x]" at byte 4: expected .name or [index]')
      refused({ json = { ["$[99999999999999999999]"] = 1 } },
        'expect.json["$[99999999999999999999]"]:', "index "
        .. "99999999999999999999 is too large")
      refused({ json = { ["$.a[2147483648]"] = 1 } }, "is too large")
      refused({ json = { ["$.a"] = {} } }, 'expect.json["$.a"]:',
        "must be a string, number or boolean, got table")
      refused({ json = { ["$.a"] = 0 / 0 } }, "must be a finite number")
    end)

    it("max_duration, unknown fields, and a body expected of HEAD", function()
      refused({ max_duration = 0 }, "expect.max_duration: must be > 0")
      refused({ bogus = 1 }, "expect:", 'unknown field "bogus"')
      refused("200", "expect: must be a table")
      http_refused({ port = srv.port, method = "HEAD", expect = { body = "x" } },
        "expect: a HEAD request has no body")
    end)
  end)
end)

describe("tcp_socket send and expect", function()
  local redis, smtp, silent

  lazy_setup(function()
    redis = helpers.fixture { mode = "line" }
    smtp = helpers.fixture { mode = "line", banner = "220 sonde.test ESMTP" }
    silent = helpers.fixture { mode = "silent" }
  end)
  lazy_teardown(helpers.stop_fixtures)

  local function sro(r) return { r.status, r.reason, r.output } end

  it("Redis PING -> +PONG", function()
    local r = tcp { port = redis.port, send = "PING\r\n", expect = "^%+PONG$" }
    assert.are.same({ "success", "ok", "+PONG" }, sro(r))
    assert.are.equal("127.0.0.1:" .. redis.port, r.remote_addr)
  end)

  it("an SMTP banner, then EHLO and its last line", function()
    assert.are.same({ "success", "ok", "220 sonde.test ESMTP" },
      sro(tcp { port = smtp.port, expect = "^220 " }))
    assert.are.same({ "success", "ok", "221 bye" }, sro(tcp { port = smtp.port,
      expect = { { expect = "^220" }, { send = "EHLO sonde\r\n" },
        { expect = "^250 " }, { send = "QUIT\r\n" }, { expect = "^221" } } }))
    -- expect then send in one entry (blackbox_exporter's order)
    assert.are.same({ "success", "ok", "250 OK" }, sro(tcp { port = smtp.port,
      expect = { { expect = "^220", send = "EHLO sonde\r\n" },
        { expect = "^250 " } } }))
  end)

  it("one matching budget per run: many lines cannot multiply what a "
    .. "pathological pattern costs", function()
    -- 500 lines of 100 bytes: each alone is within a find's budget (about
    -- 170,000 steps for ".-.-X"), all of them would take 80 times it
    local line = "ECHO " .. ("a"):rep(100) .. "\r\n"
    local r = tcp { port = redis.port, timeout = 30,
      send = line:rep(500), expect = ".-.-X" }
    assert.are.same({ "failure", "expect" }, { r.status, r.reason })
    assert.matches('^expect: pattern "%.%-%.%-X" too complex for a line',
      r.output)
    -- loose by orders of magnitude: within the budget, a few ms
    assert.is_true(r.duration < 10, r.duration)
  end)

  it("send alone: sent, then closed, a success", function()
    assert.are.same({ "success", "ok", "" },
      sro(tcp { port = redis.port, send = "QUIT\r\n" }))
  end)

  it("lines that do not match until EOF: failure expect, the last shown",
    function()
    assert.are.same({ "failure", "expect", 'expect: pattern "^%+PONG" not '
      .. 'matched before the connection closed (1 line read, last: "221 bye")' },
      sro(tcp { port = redis.port, send = "QUIT\r\n", expect = "^%+PONG" }))
    assert.are.same({ "failure", "expect", 'expect: pattern "^%+PONG" not '
      .. "matched before the connection closed (no line read)" },
      sro(tcp { port = redis.port, send = "CLOSE\r\n", expect = "^%+PONG" }))
  end)

  it("a last line without a line end is matched at EOF", function()
    assert.are.same({ "success", "ok", "+PONG" },
      sro(tcp { port = redis.port, send = "PARTIAL\r\n", expect = "^%+PONG$" }))
  end)

  it("a silent peer: failure timeout at the deadline, naming the step",
    function()
    local r = tcp { port = redis.port, timeout = 0.3, send = "SILENT\r\n",
      expect = "^%+PONG" }
    assert.are.same({ "failure", "timeout", 'expect: pattern "^%+PONG" not '
      .. "matched by the deadline (no line read)" }, sro(r))
    assert.are.same({ "failure", "timeout", 'expect: pattern "^220" not '
      .. "matched by the deadline (no line read)" },
      sro(tcp { port = silent.port, timeout = 0.3, expect = "^220" }))
    assert.are.same({ "failure", "timeout", 'expect[3].expect: pattern "^554" '
      .. 'not matched by the deadline (3 lines read, last: "250 OK")' },
      sro(tcp { port = smtp.port, timeout = 0.3, expect = { { expect = "^220" },
        { send = "EHLO x\r\n" }, { expect = "^554" } } }))
  end)

  it("a flood without a line end stops at 4096 bytes", function()
    assert.are.same({ "failure", "expect", "expect: a line longer than 4096 "
      .. 'bytes (first 80 bytes: "' .. ("x"):rep(80) .. '"...)' },
      sro(tcp { port = redis.port, send = "FLOOD\r\n", expect = "^%+PONG" }))
  end)

  it("lines that never match stop at 65536 bytes read", function()
    local r = tcp { port = redis.port, timeout = 5, send = "LINES 100000\r\n",
      expect = "^%+PONG" }
    assert.are.same({ "failure", "expect" }, { r.status, r.reason })
    assert.matches('^expect: pattern "%^%%%+PONG" not matched in the 65536 '
      .. 'bytes read %(%d+ lines read, last: "line %d+"%)$', r.output)
  end)

  it("what the peer sent is escaped in messages, '?' in a success's output",
    function()
    assert.are.same({ "failure", "timeout", 'expect: pattern "^%+PONG" not '
      .. 'matched by the deadline (1 line read, last: '
      .. '"\\x01\\x1b[31m\\xff\\xfe end")' },
      sro(tcp { port = redis.port, timeout = 0.3, send = "BINARY\r\n",
        expect = "^%+PONG" }))
    local r = tcp { port = redis.port, send = "BINARY\r\n", expect = "end$" }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    assert.is_nil(r.output:find("[%c\128-\255]"), r.output)
  end)

  it("a refused connection stays connect_refused", function()
    local r = tcp { port = helpers.closed_port(), send = "PING\r\n",
      expect = "^%+PONG" }
    assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
  end)

  it("is checked when declared", function()
    local p = redis.port
    tcp_refused({ port = p, send = 1 }, "sonde.tcp_socket: send: must be a string")
    tcp_refused({ port = p, expect = 5 }, "expect: must be a Lua pattern or a "
      .. "list of steps, got number")
    tcp_refused({ port = p, expect = "[" }, 'expect: not a valid Lua pattern "["')
    tcp_refused({ port = p, expect = {} }, "expect: must not be empty")
    tcp_refused({ port = p, expect = { {} } }, "expect[1]: needs expect, "
      .. "send or starttls")
    tcp_refused({ port = p, expect = { { expect = "^2", bogus = 1 } } },
      "expect[1]:", 'unknown field "bogus"')
    tcp_refused({ port = p, expect = { { expect = "(" } } }, "expect[1].expect:",
      "unfinished capture")
    tcp_refused({ port = p, expect = { { send = 2 } } }, "expect[1].send:")
    tcp_refused({ port = p, expect = { { expect = "^220" }, { starttls = 1 } } },
      "expect[2].starttls: must be a boolean")
    tcp_refused({ port = p, send = "x", expect = { { expect = "x" } } },
      "send: cannot be combined with a list of steps in expect")
    tcp_refused({ port = p, send = ("x"):rep(65537) }, "send: must be at most "
      .. "65536 bytes")
  end)
end)

describe("declared probes with expectations", function()
  local srv, redis

  lazy_setup(function()
    srv = helpers.fixture()
    redis = helpers.fixture { mode = "line" }
  end)
  lazy_teardown(function()
    helpers.fresh()
    helpers.stop_fixtures()
  end)

  it("an invalid expectation is refused at the user's line", function()
    local msg = helpers.error_here(function()
      sonde.probe { name = "x", http_get = { port = 1, expect = {
        status = 700 } } }
    end)
    assert.are.equal('probe "x": http_get.expect.status: must be a status '
      .. 'code 100..599 or a class "1xx".."5xx", got 700', msg)
    msg = helpers.error_here(function()
      sonde.probe { name = "y", tcp_socket = { port = 1, expect = "%" } }
    end)
    assert.are.equal('probe "y": tcp_socket.expect: not a valid Lua pattern '
      .. "\"%\": malformed pattern (ends with '%')", msg)
    helpers.fresh()
  end)

  it("reach failure with reason expect, counted in C or through Lua (json)",
    function()
    helpers.fresh()
    local function probe(name, handler)
      local spec = { name = name, period = 0.2, timeout = 2,
        failure_threshold = 1 }
      for k, v in pairs(handler) do spec[k] = v end
      return sonde.probe(spec)
    end
    local ok401 = probe("ok401", { http_get = { port = srv.port,
      path = "/status/401", expect = { status = { 200, 401 } } } })
    local bad = probe("bad-status", { http_get = { port = srv.port,
      path = "/status/503", expect = { status = 200 } } })
    local down = probe("json-down", { http_get = { port = srv.port,
      path = doc('{"status":"down"}'), expect = { json = { ["$.status"] = "ok" } } } })
    local up = probe("json-up", { http_get = { port = srv.port,
      path = doc(HEALTH), expect = { json = { ["$.status"] = "ok" } } } })
    local pong = probe("pong", { tcp_socket = { port = redis.port,
      send = "PING\r\n", expect = "^%+PONG" } })
    local nopong = probe("nopong", { tcp_socket = { port = redis.port,
      send = "QUIT\r\n", expect = "^%+PONG" } })
    -- only json goes through Lua for each result
    assert.are.same({ false, false, true, true, false, false },
      { ok401:filtered(), bad:filtered(), down:filtered(), up:filtered(),
        pong:filtered(), nopong:filtered() })
    local evs = helpers.run_logged(1)
    local function last(p)
      local r = p.last_result
      return { p.state, r.status, r.reason, r.output }
    end
    assert.are.same({ "success", "success", "ok", "status 401" }, last(ok401))
    assert.are.same({ "failure", "failure", "expect",
      "expect.status: got 503, want 200" }, last(bad))
    assert.are.same({ "failure", "failure", "expect",
      'expect.json["$.status"]: got "down", want "ok"' }, last(down))
    assert.are.same({ "success", "success", "ok", HEALTH }, last(up))
    assert.are.same({ "success", "success", "ok", "+PONG" }, last(pong))
    assert.are.same({ "failure", "failure", "expect", 'expect: pattern '
      .. '"^%+PONG" not matched before the connection closed (1 line read, '
      .. 'last: "221 bye")' }, last(nopong))
    for _, name in ipairs { "bad-status", "json-down", "nopong" } do
      local rs = helpers.select(evs, "probe_result", { probe = name })
      assert.is_true(#rs >= 2, name)
      for _, e in ipairs(rs) do
        assert.are.same({ "failure", "expect" }, { e.status, e.reason })
      end
      assert.are.equal(0, #helpers.select(evs, "probe_result",
        { probe = name, status = "success" }))
    end
    assert.are.equal(0, #helpers.select(evs, "probe_result",
      { probe = "json-up", status = "failure" }))
  end)

  it("under the host: sonde once shows reason expect and exits 1", function()
    local path = helpers.script("expect.lua", string.format([[
      local sonde = require "sonde"
      sonde.probe { name = "health", http_get = { port = %d,
        path = %q, expect = { status = 200, json = { ["$.status"] = "ok" } } } }
      sonde.probe { name = "redis", tcp_socket = { port = %d,
        send = "PING\r\n", expect = "^%%+PONG" } }
    ]], srv.port, doc('{"status":"down"}'), redis.port))
    local rc, out, err = helpers.host_run { "once", "--format", "json", path }
    assert.are.equal(1, rc, out .. err)
    local objs = helpers.decode_lines(out)
    assert.are.same({ "health", "failure", "expect",
      'expect.json["$.status"]: got "down", want "ok"' },
      { objs[1].probe, objs[1].status, objs[1].reason, objs[1].output })
    assert.are.same({ "redis", "success", "ok", "+PONG" },
      { objs[2].probe, objs[2].status, objs[2].reason, objs[2].output })
  end)
end)
