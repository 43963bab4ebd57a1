-- sonde.dns (src/dns.c, c-ares on the loop) against a real DNS server:
-- Debian's dnsmasq on 127.0.0.1 (and ::1) and a free port, serving only
-- the records given below (spec/support/dnsmasq.lua).  blackbox_exporter's
-- dns prober semantics (prober/dns.go, v0.23); records as miekg/dns prints
-- them.
local sonde = require "sonde"
local helpers = require "helpers"

local dns, spec_error = helpers.prober(sonde.dns)

-- An SOA's RDATA in hex for dnsmasq's --dns-rr (uncompressed names).
local function soa_hex(serial)
  local function name(n)
    local t = {}
    for l in n:gmatch("[^.]+") do t[#t + 1] = string.char(#l) .. l end
    return table.concat(t) .. "\0"
  end
  local rd = name("ns.example.test") .. name("hostmaster.example.test")
    .. string.pack(">I4I4I4I4I4", serial, 3600, 600, 86400, 300)
  return (rd:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local SERIAL = 2026120501

local RECORDS = {
  "--local=/example.test/",        -- unknown names there: NXDOMAIN
  "--local-ttl=300",
  "--listen-address=::1",
  "--host-record=www.example.test,127.0.0.5,::5",
  "--host-record=two.example.test,127.0.0.6",
  "--host-record=two.example.test,127.0.0.7",
  "--txt-record=example.test,v=spf1 -all",
  '--txt-record=quote.example.test,say "hi",two',
  "--mx-host=example.test,mail.example.test,10",
  "--cname=alias.example.test,www.example.test",
  "--srv-host=_sip._tcp.example.test,sip.example.test,5060,1,2",
  "--caa-record=example.test,0,issue,ca.example.net",
  "--dns-rr=example.test,6," .. soa_hex(SERIAL),
  "--dns-rr=example.test,65534,0102ff",
  "--address=/wild.test/127.0.0.9",
}

describe("sonde.dns", function()
  local d, server

  lazy_setup(function()
    d = helpers.dnsmasq(RECORDS)
    server = "127.0.0.1:" .. d.port
  end)

  lazy_teardown(function()
    helpers.stop_dnsmasqs()
    assert.is_false(d:alive(), "dnsmasq is still running")
  end)

  local function q(name, qtype, more)
    local spec = { server = server, name = name, type = qtype }
    for k, v in pairs(more or {}) do spec[k] = v end
    return dns(spec)
  end

  describe("queries", function()
    it("A: success, the record as miekg/dns prints it", function()
      local r = q("www.example.test", "A")
      assert.are.same({ "success", "ok", "NOERROR", 1, 0, 0,
        { "www.example.test.\t300\tIN\tA\t127.0.0.5" }, {}, {},
        "NOERROR: 1 answer, 0 authority, 0 additional records",
        "127.0.0.1:" .. d.port },
        { r.status, r.reason, r.rcode, r.answer_rrs, r.authority_rrs,
          r.additional_rrs, r.answer, r.authority, r.additional, r.output,
          r.remote_addr })
      assert.is_number(r.lookup_time)
      assert.is_true(r.lookup_time >= 0 and r.lookup_time <= r.duration)
      assert.is_nil(r.serial)
      assert.is_nil(r.error)
    end)

    it("AAAA, and a lowercase type", function()
      local r = q("www.example.test", "aaaa")
      assert.are.same({ "success", { "www.example.test.\t300\tIN\tAAAA\t::5" } },
        { r.status, r.answer })
    end)

    it("two A records", function()
      local r = q("two.example.test", "A")
      table.sort(r.answer)
      assert.are.same({ 2, { "two.example.test.\t300\tIN\tA\t127.0.0.6",
        "two.example.test.\t300\tIN\tA\t127.0.0.7" } },
        { r.answer_rrs, r.answer })
    end)

    it("MX, TXT (quoted, escaped), CNAME, SRV, CAA", function()
      for _, c in ipairs {
        { "example.test", "MX", "example.test.\t300\tIN\tMX\t10 mail.example.test." },
        { "example.test", "TXT", 'example.test.\t300\tIN\tTXT\t"v=spf1 -all"' },
        { "quote.example.test", "TXT",
          'quote.example.test.\t300\tIN\tTXT\t"say \\"hi\\"" "two"' },
        { "_sip._tcp.example.test", "SRV",
          "_sip._tcp.example.test.\t300\tIN\tSRV\t1 2 5060 sip.example.test." },
        { "example.test", "CAA",
          'example.test.\t300\tIN\tCAA\t0 issue "ca.example.net"' },
      } do
        local r = q(c[1], c[2])
        assert.are.same({ "success", { c[3] } }, { r.status, r.answer },
          c[1] .. " " .. c[2])
      end
      local r = q("alias.example.test", "A")
      assert.are.same({ "alias.example.test.\t300\tIN\tCNAME\twww.example.test.",
        "www.example.test.\t300\tIN\tA\t127.0.0.5" }, r.answer)
    end)

    it("SOA: serial", function()
      local r = q("example.test", "SOA")
      assert.are.same({ "success", SERIAL, { "example.test.\t300\tIN\tSOA\t"
        .. "ns.example.test. hostmaster.example.test. " .. SERIAL
        .. " 3600 600 86400 300" } }, { r.status, r.serial, r.answer })
      -- only for a query of type SOA
      assert.is_nil(q("example.test", "ANY").serial)
    end)

    it("a type without a name (TYPE65534): RFC 3597's form", function()
      local r = q("example.test", "TYPE65534")
      assert.are.same({ "example.test.\t300\tIN\tTYPE65534\t\\# 3 0102ff" },
        r.answer)
      assert.are.same(r.answer, q("example.test", 65534).answer)
    end)

    it("type defaults to ANY (blackbox_exporter's default)", function()
      local r = dns { server = server, name = "www.example.test" }
      table.sort(r.answer)
      assert.are.same({ "www.example.test.\t300\tIN\tA\t127.0.0.5",
        "www.example.test.\t300\tIN\tAAAA\t::5" }, r.answer)
    end)

    it("over TCP", function()
      local r = q("example.test", "MX", { transport = "tcp" })
      assert.are.same({ "success", 1 }, { r.status, r.answer_rrs })
    end)

    it("to ::1, written [::1]:PORT", function()
      local r = dns { server = "[::1]:" .. d.port, name = "www.example.test",
        type = "A" }
      assert.are.same({ "success", "[::1]:" .. d.port, 1, 6 },
        { r.status, r.remote_addr, r.answer_rrs, r.ip_protocol })
      assert.are.equal(4, q("www.example.test", "A").ip_protocol)
    end)

    it("inside a task, without a callback", function()
      local r = helpers.run(function()
        return sonde.dns { server = server, name = "www.example.test",
          type = "A" }
      end)
      assert.are.equal("success", r.status)
    end)
  end)

  describe("rcodes", function()
    it("NXDOMAIN is a failure, reason dns, by default (NOERROR only)",
      function()
      local r = q("nope.example.test", "A")
      assert.are.same({ "failure", "dns", "NXDOMAIN", 0,
        "rcode NXDOMAIN is not one of the valid rcodes (NOERROR)" },
        { r.status, r.reason, r.rcode, r.answer_rrs, r.output })
    end)

    it("NXDOMAIN passes when valid_rcodes lists it", function()
      local r = q("nope.example.test", "A", { valid_rcodes = { "NXDOMAIN" } })
      assert.are.same({ "success", "ok", "NXDOMAIN" },
        { r.status, r.reason, r.rcode })
      r = q("www.example.test", "A", { valid_rcodes = { "NXDOMAIN" } })
      assert.are.same({ "failure", "dns",
        "rcode NOERROR is not one of the valid rcodes (NXDOMAIN)" },
        { r.status, r.reason, r.output })
    end)

    it("REFUSED (a name dnsmasq does not serve) is a reply like any other",
      function()
      local r = q("elsewhere.invalid", "A", { valid_rcodes = { "REFUSED",
        "NOERROR" } })
      assert.are.same({ "success", "REFUSED" }, { r.status, r.rcode })
    end)
  end)

  describe("record validation (blackbox_exporter's validRRs)", function()
    it("fail_if_not_matches_regexp in RE2 syntax (\\t, \\d, (?i)) passes",
      function()
      local r = q("www.example.test", "A", { validate_answer_rrs = {
        fail_if_not_matches_regexp = {
          "(?i)^WWW\\.example\\.test\\.\\t\\d+\\tIN\\tA\\t127\\.0\\.0\\.5$" } } })
      assert.are.same({ "success", "ok" }, { r.status, r.reason }, r.output)
    end)

    it("RE2 forms rewritten for POSIX match as in Go", function()
      for _, re in ipairs {
        "^www\\.example\\.test\\.\\s300\\sIN\\sA\\s[\\d.]+$",
        "(?:www|ftp)\\.example", "\\x09IN\\x09A\\x09", "[[:digit:]]{3}\\tIN",
        "^\\w+\\.", "[\\w.]+\\t\\d", "\\S+\\s\\D", "[^\\t]+$", "\\.\\t",
        "(?i)in\\ta\\t",
      } do
        local r = q("www.example.test", "A", { validate_answer_rrs = {
          fail_if_not_matches_regexp = { re } } })
        assert.are.equal("success", r.status, re .. ": " .. r.output)
      end
      for _, re in ipairs { "\\d{4}", "[\\d]{4}", "IN\\sAAAA", "\\W{2}[a-z]",
          "in\\ta" } do
        local r = q("www.example.test", "A", { validate_answer_rrs = {
          fail_if_matches_regexp = { re } } })
        assert.are.equal("success", r.status, re .. ": " .. r.output)
      end
    end)

    it("fail_if_not_matches_regexp: a record that does not match fails, "
      .. "reason expect", function()
      local r = q("two.example.test", "A", { validate_answer_rrs = {
        fail_if_not_matches_regexp = { "127\\.0\\.0\\.6$" } } })
      assert.are.same({ "failure", "expect" }, { r.status, r.reason })
      assert.is_truthy(r.output:find('answer records: a record did not '
        .. 'match fail_if_not_matches_regexp "127\\\\.0\\\\.0\\\\.6$": '
        .. '"two.example.test.\\009300\\009IN\\009A\\009127.0.0.7"', 1, true),
        r.output)
      assert.are.equal(2, r.answer_rrs)     -- the facts stay
    end)

    it("fail_if_matches_regexp: a record that matches fails", function()
      local r = q("x.wild.test", "A", { validate_answer_rrs = {
        fail_if_matches_regexp = { "127\\.0\\.0\\.9" } } })
      assert.are.same({ "failure", "expect" }, { r.status, r.reason })
      assert.is_truthy(r.output:find("fail_if_matches_regexp", 1, true))
      r = q("x.wild.test", "A", { validate_answer_rrs = {
        fail_if_matches_regexp = { "127\\.0\\.0\\.8" } } })
      assert.are.equal("success", r.status, r.output)
    end)

    it("fail_if_none_matches_regexp: one record matching is enough",
      function()
      local r = q("two.example.test", "A", { validate_answer_rrs = {
        fail_if_none_matches_regexp = { "\\.7$" } } })
      assert.are.equal("success", r.status, r.output)
      r = q("two.example.test", "A", { validate_answer_rrs = {
        fail_if_none_matches_regexp = { "\\.8$" } } })
      assert.are.same({ "failure", "expect", "answer records: no record "
        .. "matched fail_if_none_matches_regexp" },
        { r.status, r.reason, r.output })
    end)

    it("fail_if_all_match_regexp: fails unless every record matches "
      .. "(blackbox_exporter's code)", function()
      local r = q("two.example.test", "A", { validate_answer_rrs = {
        fail_if_all_match_regexp = { "127\\.0\\.0\\.[67]$" } } })
      assert.are.equal("success", r.status, r.output)
      r = q("two.example.test", "A", { validate_answer_rrs = {
        fail_if_all_match_regexp = { "127\\.0\\.0\\.6$" } } })
      assert.are.same({ "failure", "expect" }, { r.status, r.reason })
    end)

    it("an empty section fails fail_if_not_matches and "
      .. "fail_if_none_matches, passes the others", function()
      for _, rule in ipairs { "fail_if_not_matches_regexp",
          "fail_if_none_matches_regexp" } do
        local r = q("www.example.test", "A", { validate_authority_rrs = {
          [rule] = { "." } } })
        assert.are.same({ "failure", "expect", "authority records: " .. rule
          .. " specified but no records returned" },
          { r.status, r.reason, r.output })
      end
      local r = q("www.example.test", "A", { validate_authority_rrs = {
        fail_if_matches_regexp = { "." }, fail_if_all_match_regexp = { "x" } } })
      assert.are.equal("success", r.status, r.output)
    end)

    it("the rcode is judged before the records", function()
      local r = q("nope.example.test", "A", { validate_answer_rrs = {
        fail_if_none_matches_regexp = { "." } } })
      assert.are.equal("dns", r.reason)
    end)
  end)

  describe("replies a well-kept server never sends (a scripted server)",
    function()
    local f
    lazy_setup(function() f = helpers.dns_scripted() end)
    local function ask(first, more)
      local spec = { server = "127.0.0.1:" .. f.port, name = first .. ".test",
        type = "A", timeout = 0.5 }
      for k, v in pairs(more or {}) do spec[k] = v end
      return dns(spec)
    end

    it("names with '.', ' ' and control bytes in labels: escaped as "
      .. "miekg/dns does", function()
      assert.are.same({ "a\\.b.sp\\ ace.\\001.escape.test.\t60\tIN\tA\t"
        .. "127.0.0.1" }, ask("escape").answer)
    end)

    it("IPv6 as Go prints it: IPv4-mapped, zeros compressed (RFC 5952)",
      function()
      assert.are.same({ "addr6.test.\t60\tIN\tAAAA\t::ffff:1.2.3.4",
        "addr6.test.\t60\tIN\tAAAA\t2001:db8::1",
        "addr6.test.\t60\tIN\tAAAA\t2001:db8:0:1::1",
        "addr6.test.\t60\tIN\tAAAA\t::102:304" }, ask("addr6").answer)
    end)

    it("TXT bytes outside ' '..'~' as \\DDD, quotes and backslashes "
      .. "escaped, an empty string", function()
      assert.are.same({ 'txt.test.\t60\tIN\tTXT\t"\\000\\255\\"\\\\" ""' },
        ask("txt").answer)
    end)

    it("SOA names through compression pointers", function()
      local r = ask("soa", { type = "SOA" })
      assert.are.same({ 7, { "soa.test.\t60\tIN\tSOA\tns.test. soa.test. 7 1 "
        .. "2 3 4" } }, { r.serial, r.answer })
    end)

    it("three sections: counted and validated each", function()
      local r = ask("sections", { validate_authority_rrs = {
        fail_if_not_matches_regexp = { "\\tNS\\tns\\.test\\.$" } },
        validate_additional_rrs = { fail_if_matches_regexp = { "127" } } })
      assert.are.same({ "failure", "expect", 1, 1, 1,
        { "test.\t60\tIN\tNS\tns.test." },
        { "ns.test.\t60\tIN\tA\t127.0.0.53" } },
        { r.status, r.reason, r.answer_rrs, r.authority_rrs,
          r.additional_rrs, r.authority, r.additional })
      assert.is_truthy(r.output:find("^additional records: a record matched"),
        r.output)
    end)

    it("SERVFAIL and an rcode without a name are replies (valid_rcodes "
      .. "decides)", function()
      local r = ask("servfail")
      assert.are.same({ "failure", "dns", "SERVFAIL" },
        { r.status, r.reason, r.rcode })
      assert.are.equal("success", ask("servfail",
        { valid_rcodes = { "SERVFAIL" } }).status)
      r = ask("rcode11")
      assert.are.same({ "failure", "dns", "11",
        "rcode 11 is not one of the valid rcodes (NOERROR)" },
        { r.status, r.reason, r.rcode, r.output })
    end)

    it("a truncated reply (TC) is taken as it is, not retried over TCP",
      function()
      local r = ask("tc")
      assert.are.same({ "success", 0 }, { r.status, r.answer_rrs })
    end)

    it("a reply announcing more records than it holds: those it holds",
      function()
      local r = ask("short")
      assert.are.same({ "success", 1 }, { r.status, r.answer_rrs })
    end)

    it("a record cut short, a name pointing at itself: failure protocol, "
      .. "no reply facts", function()
      for _, first in ipairs { "cut", "loop" } do
        local r = ask(first)
        assert.are.same({ "failure", "protocol" }, { r.status, r.reason },
          first)
        assert.is_truthy(r.output:find("malformed reply", 1, true), r.output)
        assert.is_nil(r.rcode)
        assert.is_number(r.lookup_time)
      end
    end)

    it("a reply with another id is not the reply: timeout", function()
      assert.are.equal("timeout", ask("wrongid", { timeout = 0.3 }).reason)
    end)
  end)

  describe("failures", function()
    it("a server that never answers: failure timeout at the deadline; the "
      .. "query carried RD and the question", function()
      local s = helpers.silent_udp()
      finally(s.close)
      local r = dns { server = "127.0.0.1:" .. s.port, name = "www.example.test",
        type = "MX", timeout = 0.3 }
      assert.are.same({ "failure", "timeout",
        "query to 127.0.0.1:" .. s.port .. " over udp: i/o timeout" },
        { r.status, r.reason, r.output })
      assert.is_nil(r.rcode)
      local dgram = s.receive()
      assert.is_string(dgram, "no query reached the socket")
      assert.are.equal(1, dgram:byte(3) & 1, "RD bit")
      assert.is_truthy(dgram:find("\3www\7example\4test\0\0\15\0\1", 13, true))
      -- recursion_desired = false clears it
      dns { server = "127.0.0.1:" .. s.port, name = "www.example.test",
        timeout = 0.1, recursion_desired = false }
      dgram = s.receive()
      assert.are.equal(0, dgram:byte(3) & 1, "RD bit")
    end)

    it("a TCP port where nothing listens: failure connect_refused",
      function()
      local port = helpers.closed_port()
      local r = dns { server = "127.0.0.1:" .. port, name = "www.example.test",
        type = "A", transport = "tcp" }
      assert.are.same({ "failure", "connect_refused",
        "query to 127.0.0.1:" .. port .. " over tcp: connection refused" },
        { r.status, r.reason, r.output })
    end)

    it("a TCP server that accepts, then closes before a whole reply (a "
      .. "length of 65535, then nothing): failure protocol, not "
      .. "connect_refused", function()
      local dir = helpers.scratch()
      local out = dir .. "/out"
      -- accepts, reads the query, sends a length and a few bytes, closes
      os.execute(string.format([[(python3 -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print("PORT %%d" %% s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); c.recv(4096); c.sendall(b"\xff\xff" + bytes(10)); c.close()
' >%s 2>/dev/null </dev/null & echo "PID $!" >>%s.pid)]], helpers.q(out),
        helpers.q(out)))
      local pid = tonumber(helpers.read_file(out .. ".pid"):match("PID (%d+)"))
      finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
      assert.is_truthy(helpers.eventually(function()
        return (helpers.read_file(out) or ""):match("PORT (%d+)")
      end, 10))
      local port = (helpers.read_file(out)):match("PORT (%d+)")
      local r = dns { server = "127.0.0.1:" .. port, name = "www.example.test",
        type = "A", transport = "tcp", timeout = 5 }
      assert.are.same({ "failure", "protocol",
        "query to 127.0.0.1:" .. port .. " over tcp: connection closed "
        .. "before a whole reply" }, { r.status, r.reason, r.output })
    end)
  end)

  describe("resources", function()
    it("cancel: the callback never runs, nothing is left", function()
      local s = helpers.silent_udp()
      finally(s.close)
      local called = false
      local id = sonde.dns({ server = "127.0.0.1:" .. s.port,
        name = "www.example.test", timeout = 30 },
        function() called = true end)
      assert.is_true(sonde.cancel(id))
      helpers.drain(5)
      assert.is_false(called)
      assert.are.equal(0, require("sonde.core").pending())
    end)

    it("leaves no file descriptor behind", function()
      local s = helpers.silent_udp()
      finally(s.close)
      local closed = helpers.closed_port()
      q("www.example.test", "A")      -- warm up
      local base = helpers.fd_count()
      local done, expected = 0, 0
      local function count() done = done + 1 end
      for i = 1, 10 do
        sonde.dns({ server = server, name = "www.example.test", type = "A" },
          count)
        sonde.dns({ server = server, name = "nope.example.test", type = "A",
          transport = "tcp" }, count)
        sonde.dns({ server = "127.0.0.1:" .. closed, name = "x.test",
          transport = "tcp" }, count)
        sonde.dns({ server = "127.0.0.1:" .. s.port, name = "x.test",
          timeout = 0.2 }, count)
        expected = expected + 4
        local id = sonde.dns({ server = "127.0.0.1:" .. s.port,
          name = "x" .. i .. ".test", timeout = 5 }, count)
        sonde.cancel(id)
      end
      helpers.drain(20)
      assert.are.equal(expected, done)
      assert.are.equal(base, helpers.fd_count(), helpers.fd_list())
    end)
  end)

  describe("spec errors name the field", function()
    it("server: an IP address with an optional port", function()
      spec_error({ name = "x" }, "sonde.dns", "server", "is required")
      spec_error({ server = "localhost", name = "x" }, "server",
        "must be an IP address")
      spec_error({ server = "127.0.0.1:0", name = "x" }, "server", "1..65535")
      spec_error({ server = "[::1", name = "x" }, "server")
    end)

    it("name, type, class, transport, valid_rcodes", function()
      spec_error({ server = "127.0.0.1" }, "name", "is required")
      spec_error({ server = "127.0.0.1", name = "a..b" }, "name", "labels")
      spec_error({ server = "127.0.0.1", name = "x", type = "BOGUS" },
        "type", "not a DNS type")
      spec_error({ server = "127.0.0.1", name = "x", class = "XX" }, "class")
      spec_error({ server = "127.0.0.1", name = "x", transport = "quic" },
        "transport", "udp or tcp")
      spec_error({ server = "127.0.0.1", name = "x",
        valid_rcodes = { "NOERROR", "NOPE" } }, "valid_rcodes[2]",
        "not an rcode")
      spec_error({ server = "127.0.0.1", name = "x", valid_rcodes = {} },
        "valid_rcodes", "must not be empty")
      spec_error({ server = "127.0.0.1", name = "x", timeout = 0 },
        "timeout")
    end)

    it("regexps: RE2 forms POSIX cannot do are refused, naming the rule",
      function()
      -- (lazy repetitions, \b and (?s) are mapped: sonde.regex)
      for _, re in ipairs { "a*?b", "\\bword", "(?s)." } do
        helpers.accepted(sonde.dns, { server = "127.0.0.1", name = "x",
          validate_answer_rrs = { fail_if_matches_regexp = { re } } })
      end
      for _, re in ipairs { "(?m)^a", "\\p{L}", "[[:^alpha:]]", "(" } do
        spec_error({ server = "127.0.0.1", name = "x", validate_answer_rrs = {
          fail_if_matches_regexp = { "ok", re } } },
          "validate_answer_rrs.fail_if_matches_regexp[2]", "regexp")
      end
      spec_error({ server = "127.0.0.1", name = "x",
        validate_additional_rrs = { fail_if_bogus = {} } },
        "validate_additional_rrs", "unknown field")
    end)
  end)
end)
