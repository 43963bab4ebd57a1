-- sonde.icmp (src/icmp.c): ICMP echo, blackbox_exporter's icmp prober.
-- Loopback only: 127.0.0.0/8 and ::1.  What needs another kernel setting
-- (the kernel not answering, ping_group_range, a small MTU) runs in a
-- child process inside a private network namespace (`unshare -n`, as
-- root), so that this machine's own settings are never touched; the
-- unprivileged cases run that child as nobody (setpriv).  The ::1 cases
-- are skipped, saying so, on a machine without an IPv6 loopback address.
local sonde = require "sonde"
local helpers = require "helpers"

local icmp, assert_raises = helpers.prober(sonde.icmp)
local q = helpers.q

local function ipv6_loopback()
  local t = helpers.read_file("/proc/net/if_inet6") or ""
  return t:find("^" .. ("0"):rep(31) .. "1 %x+ %x+ %x+ %x+%s+lo\n") ~= nil
    or t:find("\n" .. ("0"):rep(31) .. "1 %x+ %x+ %x+ %x+%s+lo\n") ~= nil
end
local HAVE6 = ipv6_loopback()
local NO6 = "skipped: this machine has no IPv6 loopback address (::1 on lo)"

local ROOT = select(2, helpers.sh("id -u")):match("^0") ~= nil
-- a private network namespace can be made (root, unshare(1) allowed)
local NETNS = ROOT and helpers.sh("unshare -n true") == 0
local NO_NETNS = "skipped: needs root and unshare -n (a private network "
  .. "namespace) to change kernel settings without touching this machine's"

-- blackbox_exporter's probe_ip_addr_hash: FNV-1a 32 of the address bytes
local function fnv1a(bytes)
  local h = 2166136261
  for i = 1, #bytes do
    h = ((h ~ bytes:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

-- Run `code` (Lua; it prints lines) in a child lua5.4 inside a private
-- network namespace whose lo is up, after the shell commands `setup` (as
-- root, there); opts.nobody runs the child as uid/gid 65534 without
-- groups; opts.responder = "4" | "6" starts the echo responder
-- (spec/fixtures/icmp_responder.py) first.  Returns the output lines and
-- the responder's.
local function in_netns(setup, code, opts)
  opts = opts or {}
  local dir = helpers.tmpdir()
  os.execute("chmod 755 " .. q(dir))
  local script = helpers.write(dir .. "/child.lua", code, "644")
  local lua = os.getenv("SONDE_LUA") or "lua5.4"
  local sh = "ip link set lo up && " .. (setup ~= "" and setup .. " && " or "")
  if opts.responder then
    -- (env -u LD_PRELOAD: a SANITIZE=1 run's runtimes are not for it)
    sh = sh .. "(env -u LD_PRELOAD /usr/bin/python3 " .. q(helpers.root
      .. "/spec/fixtures/icmp_responder.py") .. " " .. opts.responder .. " "
      .. q(dir .. "/ready") .. " > " .. q(dir .. "/responder.log")
      .. " 2>&1 &) && i=0 && until [ -s " .. q(dir .. "/ready")
      .. " ] || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done && "
  end
  local user = opts.nobody
    and "setpriv --reuid=65534 --regid=65534 --clear-groups " or ""
  sh = sh .. "exec " .. user .. q(lua) .. " " .. q(script)
  local cmd = helpers.lua_env() .. " timeout 30 unshare -n sh -c " .. q(sh)
    .. " 2>&1 </dev/null"
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  helpers.sleep(0.05)
  local log = helpers.read_file(dir .. "/responder.log") or ""
  helpers.rmtree(dir)
  return out, log
end

-- Child code: one probe per spec, one line each: status|reason|socket|
-- rtt|ip_protocol|duration|output
local function child_probes(specs)
  local parts = { 'local sonde = require "sonde"\nsonde.main(function()\n' }
  for _, s in ipairs(specs) do
    parts[#parts + 1] = "  do local r = sonde.icmp " .. s .. "\n"
      .. '  io.write(table.concat({ r.status, r.reason, r.socket or "-", '
      .. 'tostring(r.rtt), tostring(r.ip_protocol), tostring(r.duration), '
      .. 'r.output }, "|"), "\\n") end\n'
  end
  parts[#parts + 1] = "end)\n"
  return table.concat(parts)
end

local function parse(out)
  local rs = {}
  for line in out:gmatch("[^\n]+") do
    local st, reason, sock, rtt, proto, dur, output =
      line:match("^(%a+)|([%a_]+)|([%a-]+)|([^|]*)|([^|]*)|([^|]*)|(.*)$")
    if st then
      rs[#rs + 1] = { status = st, reason = reason, socket = sock,
        rtt = tonumber(rtt), ip_protocol = tonumber(proto),
        duration = tonumber(dur), output = output }
    end
  end
  return rs
end

-- the child's results, exactly n of them
local function results(n, out)
  local rs = parse(out)
  assert.are.equal(n, #rs, "child output:\n" .. out)
  return rs
end

local IGNORE = "echo 1 > /proc/sys/net/ipv4/icmp_echo_ignore_all && "
  .. "{ [ ! -e /proc/sys/net/ipv6/icmp/echo_ignore_all ] || "
  .. "echo 1 > /proc/sys/net/ipv6/icmp/echo_ignore_all; }"
-- (net.ipv4.ping_group_range of the namespace: its own, as the rest)
local function range(lo, hi)
  return string.format("echo '%d %d' > /proc/sys/net/ipv4/ping_group_range",
    lo, hi)
end

describe("sonde.icmp", function()
  it("127.0.0.1 answers: success with rtt, hop limit, protocol, address "
    .. "and its hash", function()
    local r = icmp { host = "127.0.0.1" }
    assert.are.same({ "success", "ok", "127.0.0.1", 4, 64 },
      { r.status, r.reason, r.remote_addr, r.ip_protocol, r.reply_ttl })
    assert.is_number(r.rtt)
    assert.is_true(r.rtt >= 0 and r.rtt <= r.duration, "rtt " .. r.rtt)
    assert.are.equal(r.rtt, r.phases.rtt)
    assert.are.equal(0, r.phases.resolve)       -- an IP literal
    assert.is_true(r.phases.setup >= 0)
    assert.are.equal(fnv1a("\127\0\0\1"), r.ip_addr_hash)
    assert.matches("^echo reply from 127%.0%.0%.1 in [%d.]+ s %(seq %d+, "
      .. "hop limit 64%)$", r.output)
    assert.is_nil(r.error)
  end)

  it("::1 answers: success over IPv6", function()
    if not HAVE6 then pending(NO6) return end
    local r = icmp { host = "::1" }
    assert.are.same({ "success", "ok", "::1", 6, 64 },
      { r.status, r.reason, r.remote_addr, r.ip_protocol, r.reply_ttl })
    assert.are.equal(fnv1a(("\0"):rep(15) .. "\1"), r.ip_addr_hash)
  end)

  it("an IPv4-mapped IPv6 literal is its IPv4 address (Go's To4, as "
    .. "blackbox_exporter's chooseProtocol takes it)", function()
    local r = icmp { host = "::ffff:127.0.0.1", timeout = 5 }
    assert.are.same({ "success", "ok", "127.0.0.1", 4 },
      { r.status, r.reason, r.remote_addr, r.ip_protocol })
    assert.are.equal(fnv1a("\127\0\0\1"), r.ip_addr_hash)
  end)

  it("works without a callback inside sonde.spawn", function()
    local r = helpers.run(function() return sonde.icmp { host = "127.0.0.1" } end)
    assert.are.equal("success", r.status)
  end)

  it("the raw socket (root): IPv4 and IPv6", function()
    if not ROOT then pending("skipped: a raw socket needs root") return end
    local r = icmp { host = "127.0.0.2", socket = "raw" }
    assert.are.same({ "success", "raw", "127.0.0.2" },
      { r.status, r.socket, r.remote_addr })
    if not HAVE6 then pending(NO6) return end
    r = icmp { host = "::1", socket = "raw" }
    assert.are.same({ "success", "raw", 6 }, { r.status, r.socket, r.ip_protocol })
  end)

  it("payload_size: blackbox's text then zeros, up to 65507 bytes, echoed "
    .. "back exactly", function()
    for _, n in ipairs { 0, 1, 27, 28, 29, 1000, 65507 } do
      local r = icmp { host = "127.0.0.1", payload_size = n }
      assert.are.equal("success", r.status, n .. ": " .. r.output)
    end
    assert_raises({ host = "127.0.0.1", payload_size = 65508 },
      "payload_size", "must be 0..65507, got 65508")
  end)

  it("preferred_ip_protocol and ip_protocol_fallback (chooseProtocol)", function()
    -- an IPv4 literal under the default ip6: the fallback takes it
    local r = icmp { host = "127.0.0.1" }
    assert.are.same({ "success", 4 }, { r.status, r.ip_protocol })
    r = icmp { host = "127.0.0.1", ip_protocol_fallback = false,
      preferred_ip_protocol = "" }             -- "": ip6, as blackbox's
    assert.are.same({ "failure", "dns" }, { r.status, r.reason })
    assert.matches("lookup 127.0.0.1: no suitable address found", r.output, 1, true)
    assert.are.same({ nil, 0 }, { r.remote_addr, r.ip_protocol })
    r = icmp { host = "localhost", preferred_ip_protocol = "ip4" }
    assert.are.same({ "success", 4, "127.0.0.1" },
      { r.status, r.ip_protocol, r.remote_addr })
    assert.is_true(r.phases.resolve >= 0)
    if not HAVE6 then pending(NO6) return end
    r = icmp { host = "::1", preferred_ip_protocol = "ip4",
      ip_protocol_fallback = false }
    assert.are.same({ "failure", "dns" }, { r.status, r.reason })
  end)

  it("a name that does not resolve is failure dns", function()
    local r = icmp { host = "no-such-host.invalid" }
    assert.are.same({ "failure", "dns", "lookup no-such-host.invalid: no such "
      .. "host" }, { r.status, r.reason, r.output })
  end)

  it("source_ip_address: sent from there; another family is config, an "
    .. "address not here is network (nothing is sent)", function()
    local r = icmp { host = "127.0.0.1", source_ip_address = "127.0.0.3" }
    assert.are.equal("success", r.status)
    r = icmp { host = "127.0.0.1", source_ip_address = "::1" }
    assert.are.same({ "failure", "config" }, { r.status, r.reason })
    assert.matches("source_ip_address ::1 is not an IPv4 address", r.output, 1, true)
    -- (TEST-NET-1, RFC 5737: never an address of this machine; bind fails)
    r = icmp { host = "127.0.0.1", source_ip_address = "192.0.2.1" }
    assert.are.same({ "failure", "network" }, { r.status, r.reason })
    assert.matches("bind 192.0.2.1: cannot assign requested address", r.output,
      1, true)
  end)

  it("bad specs are refused, naming the field", function()
    assert_raises({}, "host", "is required")
    assert_raises({ host = "127.0.0.1", ttl = 256 }, "ttl", "must be 0..255")
    assert_raises({ host = "127.0.0.1", preferred_ip_protocol = "ipv4" },
      "preferred_ip_protocol", "must be ip4 or ip6")
    assert_raises({ host = "127.0.0.1", source_ip_address = "host" },
      "source_ip_address", "must be an IP address")
    assert_raises({ host = "127.0.0.1", socket = "packet" }, "socket",
      "must be auto, raw or datagram")
    assert_raises({ host = "127.0.0.1", port = 7 }, "unknown field \"port\"")
    assert_raises({ host = "[::1]" }, "host", "without brackets")
  end)

  it("many probes at once each get their own reply", function()
    local n, results_by = 0, {}
    local specs = {}
    for i = 1, 40 do
      specs[#specs + 1] = { host = "127.0.0." .. i, payload_size = i * 7,
        socket = ROOT and (i % 2 == 0 and "raw" or "auto") or nil }
    end
    for i = 1, 20 do
      specs[#specs + 1] = { host = "127.0.0.1", payload_size = 100 + i,
        socket = ROOT and "raw" or nil }
    end
    if HAVE6 then
      for i = 1, 20 do specs[#specs + 1] = { host = "::1", payload_size = i } end
    end
    for i, s in ipairs(specs) do
      sonde.icmp(s, function(r) n = n + 1; results_by[i] = r end)
    end
    sonde.run()
    assert.are.equal(#specs, n)
    local seqs = {}
    for i, s in ipairs(specs) do
      local r = results_by[i]
      assert.are.same({ "success", s.host }, { r.status, r.remote_addr },
        "probe " .. i)
      local seq = r.output:match("%(seq (%d+)")
      assert.is_nil(seqs[seq], "sequence " .. tostring(seq) .. " twice")
      seqs[seq] = true
    end
  end)

  it("cancelled: its callback never runs, its socket is closed", function()
    local before = helpers.fd_count()
    local called = false
    local ids = {}
    for i = 1, 10 do
      ids[i] = sonde.icmp({ host = "127.0.0.1" }, function() called = true end)
    end
    for _, id in ipairs(ids) do assert.is_true(sonde.cancel(id)) end
    sonde.run()
    assert.is_false(called)
    assert.are.equal(before, helpers.fd_count(), helpers.fd_list())
  end)

  it("no descriptor is left, whatever the outcome", function()
    local before = helpers.fd_count()
    for _ = 1, 3 do
      for _, s in ipairs {
        { host = "127.0.0.1" }, { host = "127.0.0.1", socket = "datagram" },
        { host = "127.0.0.1", ip_protocol_fallback = false },
        { host = "x.invalid" }, { host = "127.0.0.1", source_ip_address = "192.0.2.1" },
        HAVE6 and { host = "::1" } or { host = "127.0.0.2" },
      } do
        sonde.icmp(s, function() end)
      end
      sonde.run()
    end
    assert.are.equal(before, helpers.fd_count(), helpers.fd_list())
  end)

  describe("in a private network namespace", function()
    it("no reply by the deadline is failure timeout (the kernel there "
      .. "ignores echo requests)", function()
      if not NETNS then pending(NO_NETNS) return end
      local specs = { '{ host = "127.0.0.1", timeout = 0.3 }',
        '{ host = "127.0.0.1", timeout = 0.3, socket = "raw" }' }
      if HAVE6 then specs[3] = '{ host = "::1", timeout = 0.3 }' end
      local out = in_netns(IGNORE, child_probes(specs))
      for _, r in ipairs(results(#specs, out)) do
        assert.are.same({ "failure", "timeout" }, { r.status, r.reason }, out)
        assert.matches("^icmp [%x:.]+: no echo reply by the deadline: i/o "
          .. "timeout$", r.output)
        assert.is_true(r.duration >= 0.29, "duration " .. r.duration)
      end
    end)

    it("replies that are not the probe's are ignored: another sequence, "
      .. "payload, identifier or source (raw socket)", function()
      if not NETNS then pending(NO_NETNS) return end
      local out, log = in_netns(IGNORE, child_probes {
        '{ host = "127.0.0.1", timeout = 5, socket = "raw" }' },
        { responder = "4" })
      local r = results(1, out)[1]
      assert.are.same({ "success", "raw" }, { r.status, r.socket }, out .. log)
      for _, what in ipairs { "other-seq", "other-payload", "other-id",
          "other-source", "good" } do
        assert.matches(what, log, 1, true)
      end
      -- the good reply came 0.3 s after the others
      assert.is_true(r.rtt >= 0.29, "rtt " .. r.rtt .. "\n" .. log)
    end)

    it("... and on IPv6 (raw socket)", function()
      if not NETNS then pending(NO_NETNS) return end
      if not HAVE6 then pending(NO6) return end
      local out, log = in_netns(IGNORE, child_probes {
        '{ host = "::1", timeout = 5, socket = "raw" }' }, { responder = "6" })
      local r = results(1, out)[1]
      assert.are.same({ "success", "raw" }, { r.status, r.socket }, out .. log)
      assert.is_true(r.rtt >= 0.29, "rtt " .. r.rtt .. "\n" .. log)
    end)

    it("the datagram socket, unprivileged (nobody inside ping_group_range)",
      function()
      if not NETNS then pending(NO_NETNS) return end
      local specs = { '{ host = "127.0.0.1" }', '{ host = "127.0.0.4", '
        .. 'socket = "datagram", payload_size = 3000 }' }
      if HAVE6 then specs[3] = '{ host = "::1" }' end
      local out = in_netns(range(65534, 65534), child_probes(specs),
        { nobody = true })
      for _, r in ipairs(results(#specs, out)) do
        assert.are.same({ "success", "datagram" }, { r.status, r.socket }, out)
      end
    end)

    it("the datagram socket ignores replies that are not the probe's too",
      function()
      if not NETNS then pending(NO_NETNS) return end
      local out, log = in_netns(IGNORE .. " && " .. range(65534, 65534),
        child_probes { '{ host = "127.0.0.1", timeout = 5 }' },
        { responder = "4", nobody = true })
      local r = results(1, out)[1]
      assert.are.same({ "success", "datagram" }, { r.status, r.socket },
        out .. log)
      assert.is_true(r.rtt >= 0.29, "rtt " .. r.rtt .. "\n" .. log)
    end)

    it("as root the datagram socket can be asked for", function()
      if not NETNS then pending(NO_NETNS) return end
      local out = in_netns(range(0, 0), child_probes {
        '{ host = "127.0.0.1", socket = "datagram" }' })
      assert.are.same({ "success", "datagram" },
        { results(1, out)[1].status, results(1, out)[1].socket }, out)
    end)

    it("neither socket allowed: failure permission, saying what to do",
      function()
      if not NETNS then pending(NO_NETNS) return end
      local out = in_netns(range(1, 0), child_probes {
        '{ host = "127.0.0.1" }', '{ host = "127.0.0.1", socket = "raw" }',
        '{ host = "127.0.0.1", socket = "datagram" }' }, { nobody = true })
      local rs = results(3, out)
      for _, r in ipairs(rs) do
        assert.are.same({ "failure", "permission", "-" },
          { r.status, r.reason, r.socket }, out)
      end
      assert.matches("no permission to open an ICMP socket: the process's "
        .. "group (gid 65534) is not inside net.ipv4.ping_group_range (now 1 "
        .. "0; e.g. sysctl -w net.ipv4.ping_group_range='0 2147483647'), and "
        .. "a raw socket needs root or CAP_NET_RAW", rs[1].output, 1, true)
      assert.matches("cannot open a raw ICMP socket (a raw socket was asked "
        .. "for): run as root or give the program CAP_NET_RAW", rs[2].output,
        1, true)
      assert.matches("cannot open an unprivileged ICMP socket", rs[3].output,
        1, true)
    end)

    it("dont_fragment needs the raw socket; over the MTU it fails with "
      .. "network", function()
      if not NETNS then pending(NO_NETNS) return end
      -- unprivileged: no raw socket, so no DF
      local out = in_netns(range(65534, 65534), child_probes {
        '{ host = "127.0.0.1", dont_fragment = true }' }, { nobody = true })
      local r = results(1, out)[1]
      assert.are.same({ "failure", "permission" }, { r.status, r.reason }, out)
      assert.matches("dont_fragment needs a raw socket", r.output, 1, true)
      -- root, lo's MTU 1280: 2000 bytes go fragmented, not with DF
      out = in_netns("ip link set lo mtu 1280", child_probes {
        '{ host = "127.0.0.1", payload_size = 2000 }',
        '{ host = "127.0.0.1", payload_size = 2000, dont_fragment = true }',
        '{ host = "127.0.0.1", payload_size = 1000, dont_fragment = true }' })
      local rs = results(3, out)
      assert.are.same({ "success", "raw" }, { rs[1].status, rs[1].socket }, out)
      assert.are.same({ "failure", "network" }, { rs[2].status, rs[2].reason }, out)
      assert.matches("sendto: message too long", rs[2].output, 1, true)
      assert.are.same({ "success", "raw" }, { rs[3].status, rs[3].socket }, out)
    end)

    it("cancelled while waiting for a reply that never comes: nothing "
      .. "called, no descriptor left", function()
      if not NETNS then pending(NO_NETNS) return end
      local out = in_netns(IGNORE, [[
local sonde = require "sonde"
local f = io.open("/proc/self/stat")
local pid = f:read("l"):match("^%d+")
f:close()
local function fds()
  local p = io.popen("ls /proc/" .. pid .. "/fd")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end
local before = fds()
local called = false
local ids = {}
for i = 1, 5 do
  ids[i] = sonde.icmp({ host = "127.0.0.1", timeout = 20,
    socket = i % 2 == 0 and "raw" or "auto" }, function() called = true end)
end
local during = fds()
sonde.after(0.2, function()
  for _, id in ipairs(ids) do io.write("cancel ", tostring(sonde.cancel(id)), "\n") end
end)
sonde.run()
io.write("called ", tostring(called), "\n")
io.write("fds ", before, " ", during, " ", fds(), "\n")
]])
      assert.are.equal(5, select(2, out:gsub("cancel true", "")), out)
      assert.matches("called false", out, 1, true)
      local b, d, a = out:match("fds (%d+) (%d+) (%d+)")
      assert.is_truthy(b, out)
      -- (io.popen's pipe counts in the child's own listing: compare alike)
      assert.are.equal(tonumber(b), tonumber(a), out)
      assert.are.equal(tonumber(b) + 5, tonumber(d), out)
    end)
  end)
end)
