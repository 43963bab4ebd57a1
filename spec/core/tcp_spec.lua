-- sonde.tcp_socket (src/tcp.c) against the fixture server
-- (spec/fixtures/fixture-server.c).  kubelet tcpSocket semantics; loopback
-- addresses only.
local sonde = require "sonde"
local helpers = require "helpers"

-- a probe's result; its spec refused, naming every `...`
local tcp, assert_raises = helpers.prober(sonde.tcp_socket)

describe("sonde.tcp_socket", function()
  local srv, srv6, full

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1", log = true }
    srv6 = helpers.fixture { host = "::1", log = true }
    full = helpers.fixture { host = "127.0.0.1", mode = "tcp-full" }
  end)

  lazy_teardown(helpers.stop_fixtures)

  before_each(function()
    for _, s in ipairs { srv, srv6 } do s:clear_log() end
  end)

  it("connecting to a listening port is success, reason ok", function()
    local r = tcp { host = "127.0.0.1", port = srv.port }
    assert.are.same({ "success", "ok", "127.0.0.1:" .. srv.port },
      { r.status, r.reason, r.remote_addr })
    assert.is_nil(r.error)
    assert.is_true(r.duration >= 0 and r.duration < 1, "duration " .. r.duration)
    helpers.sleep(0.1)
    assert.are.equal(1, srv:connections())
    assert.are.equal(0, #srv:requests()) -- nothing is sent
  end)

  it("connects to a bare IPv6 literal", function()
    local r = tcp { host = "::1", port = srv6.port }
    assert.are.same({ "success", "[::1]:" .. srv6.port }, { r.status, r.remote_addr })
    helpers.sleep(0.1)
    assert.are.equal(1, srv6:connections())
  end)

  it("works without a callback inside sonde.spawn", function()
    local r = helpers.run(function() return sonde.tcp_socket { port = srv.port } end)
    assert.is_table(r)
    assert.are.equal("success", r.status)
  end)

  it("resolves a port name through ports", function()
    local r = tcp { port = "svc", ports = { { name = "svc", port = srv.port } } }
    assert.are.equal("success", r.status)
  end)

  it("a closed port is failure connect_refused, at once", function()
    local r = tcp { host = "127.0.0.1", port = 1 }
    assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
    assert.is_true(r.duration < 0.5, "duration " .. r.duration)
  end)

  it("a port whose server just went away is failure connect_refused", function()
    local r = tcp { port = helpers.closed_port() }
    assert.are.same({ "failure", "connect_refused" }, { r.status, r.reason })
  end)

  it("a full accept queue is failure connect_timeout at the deadline", function()
    local t0 = helpers.now()
    local r = tcp { host = "127.0.0.1", port = full.port, timeout = 1 }
    local wall = helpers.now() - t0
    assert.are.same({ "failure", "connect_timeout" }, { r.status, r.reason })
    assert.is_true(r.duration >= 0.9 and r.duration <= 3, "duration " .. r.duration)
    assert.is_true(wall >= 0.9 and wall <= 3, "wall time " .. wall)
  end)

  it("honours a fractional timeout", function()
    local r = tcp { port = full.port, timeout = 0.3 }
    assert.are.equal("connect_timeout", r.reason)
    assert.is_true(r.duration >= 0.25 and r.duration < 1, "duration " .. r.duration)
  end)

  it("rejects a missing port", function()
    assert_raises({ host = "127.0.0.1" }, "port")
  end)

  it("leaves no file descriptor behind", function()
    -- warm up whatever the loop keeps for its lifetime
    tcp { port = srv.port }
    tcp { port = 1 }
    local base = helpers.fd_count()
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
    assert.are.equal(base, helpers.fd_count(), helpers.fd_list())
  end)

  it("timeout = 1e300 raises naming timeout", function()
    assert_raises({ host = "127.0.0.1", port = srv.port, timeout = 1e300 },
      "sonde.tcp_socket", "timeout")
  end)

  it("timeout = 1e9 is accepted", function()
    helpers.accepted(sonde.tcp_socket, { host = "127.0.0.1", port = srv.port, timeout = 1e9 })
  end)

  it("ports with a hole raise", function()
    assert_raises({ host = "127.0.0.1", port = "a",
      ports = { { name = "a", port = 1 }, [3] = { name = "b", port = 2 } } }, "ports")
  end)
end)
