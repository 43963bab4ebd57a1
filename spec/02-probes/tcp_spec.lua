-- sonde.tcp_socket against the fixture server (spec/fixtures/fixture-server.c).
-- kubelet tcpSocket semantics; loopback addresses only.

local sonde = require "sonde"
local fixture = require "fixture"

-- Run one probe with a callback and the loop; return its result.
local function tcp(spec)
  local result, calls = nil, 0
  sonde.tcp_socket(spec, function(r) result = r; calls = calls + 1 end)
  sonde.run()
  assert.are.equal(1, calls, "callback must be called exactly once")
  return result
end

local function assert_raises(spec, ...)
  local ok, err = pcall(sonde.tcp_socket, spec, function() end)
  sonde.run() -- drain anything a wrongly accepted spec may have started
  assert.is_false(ok, "expected tcp_socket to raise for this spec")
  err = tostring(err)
  for _, needle in ipairs { ... } do
    assert.is_truthy(err:find(needle, 1, true),
      ("error message %q should mention %q"):format(err, needle))
  end
end

describe("sonde.tcp_socket", function()
  local srv, srv6, full

  lazy_setup(function()
    srv = fixture.start { host = "127.0.0.1", log = true }
    srv6 = fixture.start { host = "::1", log = true }
    full = fixture.start { host = "127.0.0.1", mode = "tcp-full" }
  end)

  lazy_teardown(function()
    for _, s in ipairs { srv, srv6, full } do
      if s then s:stop() end
    end
  end)

  before_each(function()
    srv:clear_log()
    srv6:clear_log()
  end)

  it("connecting to a listening port is success, reason ok", function()
    local r = tcp { host = "127.0.0.1", port = srv.port }
    assert.are.equal("success", r.status)
    assert.are.equal("ok", r.reason)
    assert.are.equal("127.0.0.1:" .. srv.port, r.remote_addr)
    assert.is_nil(r.error)
    assert.is_true(r.duration >= 0 and r.duration < 1, "duration " .. r.duration)
    fixture.sleep(0.1)
    assert.are.equal(1, srv:connections())
    assert.are.equal(0, #srv:requests()) -- nothing is sent
  end)

  it("defaults the host to 127.0.0.1", function()
    local r = tcp { port = srv.port }
    assert.are.equal("success", r.status)
    assert.are.equal("127.0.0.1:" .. srv.port, r.remote_addr)
  end)

  it("connects to a bare IPv6 literal", function()
    local r = tcp { host = "::1", port = srv6.port }
    assert.are.equal("success", r.status)
    assert.are.equal("[::1]:" .. srv6.port, r.remote_addr)
    fixture.sleep(0.1)
    assert.are.equal(1, srv6:connections())
  end)

  it("works without a callback inside sonde.spawn", function()
    local r
    sonde.spawn(function() r = sonde.tcp_socket { port = srv.port } end)
    sonde.run()
    assert.is_table(r)
    assert.are.equal("success", r.status)
  end)

  it("resolves a port name through ports", function()
    local r = tcp { port = "svc", ports = { { name = "svc", port = srv.port } } }
    assert.are.equal("success", r.status)
  end)

  it("a closed port is failure connect_refused, at once", function()
    local r = tcp { host = "127.0.0.1", port = 1 }
    assert.are.equal("failure", r.status)
    assert.are.equal("connect_refused", r.reason)
    assert.is_true(r.duration < 0.5, "duration " .. r.duration)
  end)

  it("a port whose server just went away is failure connect_refused", function()
    local gone = fixture.start {}
    local port = gone.port
    gone:stop()
    local r = tcp { port = port }
    assert.are.equal("failure", r.status)
    assert.are.equal("connect_refused", r.reason)
  end)

  it("a full accept queue is failure connect_timeout at the deadline", function()
    local t0 = fixture.now()
    local r = tcp { host = "127.0.0.1", port = full.port, timeout = 1 }
    local wall = fixture.now() - t0
    assert.are.equal("failure", r.status)
    assert.are.equal("connect_timeout", r.reason)
    assert.is_true(r.duration >= 0.9 and r.duration <= 3, "duration " .. r.duration)
    assert.is_true(wall >= 0.9 and wall <= 3, "wall time " .. wall)
  end)

  it("honours a fractional timeout", function()
    local r = tcp { port = full.port, timeout = 0.3 }
    assert.are.equal("connect_timeout", r.reason)
    assert.is_true(r.duration >= 0.25 and r.duration < 1, "duration " .. r.duration)
  end)

  it("a name that does not resolve is failure dns (loopback resolver only)", function()
    local out = fixture.run_with_loopback_resolver([[
      local sonde = require "sonde"
      local r
      sonde.tcp_socket({ host = "no-such-host.invalid", port = 80, timeout = 5 },
        function(x) r = x end)
      sonde.run()
      io.write("REASON ", r.reason, " STATUS ", r.status, "\n")
    ]])
    assert.are.equal("dns", out:match("REASON (%S+)"), out)
    assert.are.equal("failure", out:match("STATUS (%S+)"), out)
  end)

  it("rejects port 0 and port 70000", function()
    assert_raises({ port = 0 }, "port")
    assert_raises({ port = 70000 }, "port")
  end)

  it("rejects an unknown port name", function()
    assert_raises({ port = "nope", ports = { { name = "svc", port = srv.port } } }, "port")
  end)

  it("rejects a missing port", function()
    assert_raises({ host = "127.0.0.1" }, "port")
  end)

  it("rejects an unknown key, naming it", function()
    assert_raises({ port = srv.port, bogus = 1 }, "bogus")
  end)

  it("leaves no file descriptor behind", function()
    -- warm up whatever the loop keeps for its lifetime
    tcp { port = srv.port }
    tcp { port = 1 }
    local base = fixture.fd_count()
    local done, expected = 0, 0
    local function count() done = done + 1 end
    for _ = 1, 20 do
      sonde.tcp_socket({ port = srv.port }, count)
      sonde.tcp_socket({ host = "::1", port = srv6.port }, count)
      sonde.tcp_socket({ port = 1 }, count)
      expected = expected + 3
    end
    for _ = 1, 3 do
      sonde.tcp_socket({ port = full.port, timeout = 0.3 }, count)
      expected = expected + 1
    end
    sonde.run()
    assert.are.equal(expected, done)
    assert.are.equal(base, fixture.fd_count(), fixture.fd_list())
  end)
end)
