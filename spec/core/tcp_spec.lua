-- sonde.tcp_socket (src/tcp.c, src/resolve.c) against the fixture server
-- (spec/fixtures/fixture-server.c).  kubelet tcpSocket semantics; loopback
-- addresses only: names come from /etc/hosts, from the reserved TLD
-- "invalid" (answered without a query), or, in a child process whose
-- /etc/resolv.conf names the fixture's DNS mode on 127.0.0.1, from there.
local sonde = require "sonde"
local core = require "sonde.core"
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
    assert.are.same({ "success", "ok", "127.0.0.1:" .. srv.port, 4 },
      { r.status, r.reason, r.remote_addr, r.ip_protocol })
    assert.is_nil(r.error)
    assert.is_true(r.duration >= 0 and r.duration < 1, "duration " .. r.duration)
    helpers.sleep(0.1)
    assert.are.equal(1, srv:connections())
    assert.are.equal(0, #srv:requests()) -- nothing is sent
  end)

  it("connects to a bare IPv6 literal", function()
    local r = tcp { host = "::1", port = srv6.port }
    assert.are.same({ "success", "[::1]:" .. srv6.port, 6 },
      { r.status, r.remote_addr, r.ip_protocol })
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

  it("says what failed in the kubelet's words (Go's net.DialTimeout)", function()
    local r = tcp { host = "127.0.0.1", port = 1 }
    assert.are.same({ "127.0.0.1:1", "connect: connection refused",
      "dial tcp 127.0.0.1:1: connect: connection refused" },
      { r.remote_addr, r.error, r.output })
    r = tcp { host = "::1", port = 1 }
    assert.are.same({ "failure", "connect_refused", "[::1]:1",
      "dial tcp [::1]:1: connect: connection refused" },
      { r.status, r.reason, r.remote_addr, r.output })
    r = tcp { host = "127.0.0.1", port = full.port, timeout = 0.3 }
    assert.are.same({ "connect_timeout", "dial tcp 127.0.0.1:" .. full.port .. ": i/o timeout" },
      { r.reason, r.output })
  end)

  it("a success has output \"\" and no error", function()
    local r = tcp { host = "127.0.0.1", port = srv.port }
    assert.are.same({ "", nil }, { r.output, r.error })
  end)

  describe("names", function()
    local has_localhost = (helpers.read_file("/etc/hosts") or "")
      :find("\n?127%.0%.0%.1[ \t][^\n]*%f[%w]localhost%f[^%w.-]") ~= nil

    it("localhost, from /etc/hosts, connects", function()
      if not has_localhost then
        pending("/etc/hosts does not map localhost to 127.0.0.1")
        return
      end
      -- (an earlier spec's connection may be logged late, after the log
      -- was cleared: count from here)
      helpers.sleep(0.1)
      local before = srv:connections()
      local r = tcp { host = "localhost", port = srv.port }
      -- (a ::1 listed first is refused: the address tried last connected)
      assert.are.same({ "success", "ok", "127.0.0.1:" .. srv.port },
        { r.status, r.reason, r.remote_addr })
      helpers.sleep(0.1)
      assert.are.equal(1, srv:connections() - before)
    end)

    it("a name under .invalid is failure dns at once, without waiting for the deadline", function()
      local r = tcp { host = "sonde-test.invalid", port = 80, timeout = 30 }
      assert.are.same({ "failure", "dns", "lookup sonde-test.invalid: no such host",
        "dial tcp: lookup sonde-test.invalid: no such host" },
        { r.status, r.reason, r.error, r.output })
      assert.is_nil(r.remote_addr)
      assert.is_true(r.duration < 10, "duration " .. r.duration)
      r = tcp { host = "INVALID.", port = 80, timeout = 30 }
      assert.are.same({ "failure", "dns" }, { r.status, r.reason })
    end)

    it("a cancelled probe closes its socket, and its callback is never called", function()
      local hosts = { "127.0.0.1", has_localhost and "localhost" or nil }
      for _, host in ipairs(hosts) do
        tcp { host = host, port = srv.port }          -- (warm: the resolver)
        local base = helpers.fd_count()
        local called = false
        -- the accept queue is full: the connect stays in progress
        local id = sonde.tcp_socket({ host = host, port = full.port, timeout = 20 },
          function() called = true end)
        assert.are.equal(base + 1, helpers.fd_count(), host .. ": " .. helpers.fd_list())
        assert.is_true(core.cancel(id))
        assert.are.equal(base, helpers.fd_count(), host .. ": " .. helpers.fd_list())
        assert.are.equal(0, core.pending())
        sonde.run()
        assert.is_false(called, host)
      end
    end)

    it("many probes at once, names and addresses, some cancelled, leave no descriptor behind", function()
      local names = has_localhost and "localhost" or "127.0.0.1"
      tcp { host = names, port = srv.port }           -- (warm: the resolver)
      tcp { host = "::1", port = srv6.port }
      local base = helpers.fd_count()
      local done, expected = 0, 0
      local function count() done = done + 1 end
      local cancel = {}
      for i = 1, 100 do
        sonde.tcp_socket({ host = names, port = srv.port }, count)
        sonde.tcp_socket({ host = "127.0.0.1", port = 1 }, count)
        sonde.tcp_socket({ host = "::1", port = srv6.port }, count)
        sonde.tcp_socket({ host = "x" .. i .. ".invalid", port = 80 }, count)
        expected = expected + 4
        cancel[#cancel + 1] = sonde.tcp_socket({ host = names, port = full.port,
          timeout = 20 }, count)
        cancel[#cancel + 1] = sonde.tcp_socket({ host = "127.0.0.1", port = srv.port },
          count)
      end
      for _, id in ipairs(cancel) do assert.is_true(core.cancel(id)) end
      sonde.run()
      assert.are.equal(expected, done)
      assert.are.equal(base, helpers.fd_count(), helpers.fd_list())
    end)
  end)
end)

-- In a child process whose resolv.conf names the fixture's DNS server
-- (mode dns, on 127.0.0.1) and whose /etc/hosts is a scratch file.
describe("sonde.tcp_socket: names through the name servers", function()
  local srv, srv6, full, dns

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1" }
    srv6 = helpers.fixture { host = "::1" }
    full = helpers.fixture { host = "127.0.0.1", mode = "tcp-full" }
    dns = helpers.fixture { host = "127.0.0.1", mode = "dns", log = true }
  end)

  lazy_teardown(helpers.stop_fixtures)

  before_each(function() dns:clear_log() end)

  local HOSTS = "127.0.0.1 localhost\n127.0.0.1 only-in-hosts.test\n"

  -- Run `body` (Lua, inside a task, with show(tag, spec) printing one line
  -- per result) in the child; its lines by tag: { status, reason,
  -- remote_addr, output, duration }.
  local function child(body)
    local out = helpers.run_lua([[
      local sonde = require "sonde"
      local function show(tag, spec)
        local r = sonde.tcp_socket(spec)
        print(table.concat({ "R", tag, r.status, r.reason, r.remote_addr or "-",
          r.output, string.format("%.3f", r.duration) }, "\t"))
        return r
      end
      sonde.spawn(function()
      ]] .. body .. [[
        print("END")
      end)
      sonde.run()
    ]], { resolv_conf = "nameserver 127.0.0.1:" .. dns.port .. "\n", hosts = HOSTS })
    local res = {}
    for _, line in ipairs(helpers.lines(out)) do
      local f = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
      if f[1] == "R" then
        res[f[2]] = { f[3], f[4], f[5], f[6], tonumber(f[7]) }
      end
    end
    assert.matches("\nEND\n", "\n" .. out, 1, true)
    return res, out
  end

  local function questions()
    local qs = {}
    for t, name in dns:log():gmatch("Q (%S+) (%S+)\n") do qs[#qs + 1] = t .. " " .. name end
    return qs
  end

  it("resolves, tries the addresses in order, and answers failures as the kubelet", function()
    local p, p6 = srv.port, srv6.port
    local res, out = child(([[
      show("one", { host = "one.sonde.test", port = %d })
      show("ONE", { host = "ONE.sonde.test", port = %d })
      show("two", { host = "two.sonde.test", port = %d })
      show("six", { host = "six.sonde.test", port = %d })
      show("nx", { host = "nx.sonde.test", port = %d })
      show("fail", { host = "fail.sonde.test", port = %d, timeout = 20 })
      show("silent", { host = "silent.sonde.test", port = %d, timeout = 0.5 })
      show("hosts", { host = "only-in-hosts.test", port = %d })
      show("localhost", { host = "localhost", port = %d })
      show("invalid", { host = "a.invalid", port = %d })
    ]]):format(p, p, p, p6, p, p, p, p, p, p))
    local addr, addr6 = "127.0.0.1:" .. p, "[::1]:" .. p6
    assert.are.same({ "success", "ok", addr, "" }, { table.unpack(res.one or {}, 1, 4) }, out)
    assert.are.same({ "success", "ok", addr, "" }, { table.unpack(res.ONE or {}, 1, 4) }, out)
    -- 127.0.0.2 first (refused: nothing listens there), then 127.0.0.1
    assert.are.same({ "success", "ok", addr, "" }, { table.unpack(res.two or {}, 1, 4) }, out)
    assert.are.same({ "success", "ok", addr6, "" }, { table.unpack(res.six or {}, 1, 4) }, out)
    assert.are.same({ "failure", "dns", "-", "dial tcp: lookup nx.sonde.test: no such host" },
      { table.unpack(res.nx or {}, 1, 4) }, out)
    assert.are.same({ "failure", "dns", "-" }, { table.unpack(res.fail or {}, 1, 3) }, out)
    -- no answer: the deadline ends it, reason dns
    assert.are.same({ "failure", "dns", "-", "dial tcp: lookup silent.sonde.test: i/o timeout" },
      { table.unpack(res.silent or {}, 1, 4) }, out)
    assert.is_true(res.silent[5] >= 0.45, out)
    assert.are.same({ "success", "ok", addr }, { table.unpack(res.hosts or {}, 1, 3) }, out)
    assert.are.same({ "success", "ok", addr }, { table.unpack(res.localhost or {}, 1, 3) }, out)
    assert.are.same({ "failure", "dns", "-", "dial tcp: lookup a.invalid: no such host" },
      { table.unpack(res.invalid or {}, 1, 4) }, out)
    -- /etc/hosts and .invalid are answered without a query
    local qs = table.concat(questions(), "\n")
    for _, name in ipairs { "one.sonde.test", "ONE.sonde.test", "two.sonde.test",
        "six.sonde.test", "nx.sonde.test", "silent.sonde.test" } do
      assert.matches("A " .. name, qs, 1, true)
    end
    for _, name in ipairs { "only-in-hosts", "localhost", "invalid" } do
      assert.is_nil(qs:find(name, 1, true), qs)
    end
  end)

  it("an address that does not answer gets a share of the deadline, then the next is tried", function()
    -- back.sonde.test: 127.0.0.1 (a full accept queue: no answer), then
    -- 127.0.0.2 (refused); 4 s: the first gets 2 s
    local res, out = child(([[
      show("back", { host = "back.sonde.test", port = %d, timeout = 4 })
    ]]):format(full.port))
    assert.are.same({ "failure", "connect_refused", "127.0.0.2:" .. full.port,
      "dial tcp 127.0.0.2:" .. full.port .. ": connect: connection refused" },
      { table.unpack(res.back or {}, 1, 4) }, out)
    assert.is_true(res.back[5] >= 1.5, out)
  end)

  it("a lookup cancelled in flight: no callback, no query waited for", function()
    local _, out = child(([[
      local t0 = sonde.now()
      local called = false
      local id = sonde.tcp_socket({ host = "silent.sonde.test", port = %d, timeout = 20 },
        function() called = true end)
      sonde.sleep(0.2)
      print("CANCEL", sonde.cancel(id))
      sonde.after(0, function()
        print("AFTER", called, string.format("%%.3f", sonde.now() - t0))
      end)
    ]]):format(srv.port))
    assert.matches("CANCEL\ttrue\n", out, 1, true)
    local called, elapsed = out:match("AFTER\t(%S+)\t(%S+)\n")
    assert.are.equal("false", called, out)
    assert.is_true(tonumber(elapsed) < 10, out)
    assert.matches("A silent.sonde.test", table.concat(questions(), "\n"), 1, true)
  end)

  it("a change of /etc/hosts is seen within 5 s", function()
    local res, out = child(([[
      show("before", { host = "added.test", port = %d })
      if assert(io.open("/etc/hosts")):read("a") ~= %q then error("not the scratch hosts") end
      local f = assert(io.open("/etc/hosts", "w"))
      f:write(%q, "127.0.0.1 added.test\n")
      f:close()
      sonde.sleep(5.5)
      show("after", { host = "added.test", port = %d })
    ]]):format(srv.port, HOSTS, HOSTS, srv.port))
    assert.are.same({ "failure", "dns" }, { table.unpack(res.before or {}, 1, 2) }, out)
    assert.are.same({ "success", "127.0.0.1:" .. srv.port },
      { (res.after or {})[1], (res.after or {})[3] }, out)
  end)
end)
