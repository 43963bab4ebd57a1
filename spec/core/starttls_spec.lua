-- tcp_socket with TLS and send/expect steps: STARTTLS (a step upgrading
-- the plain conversation, blackbox_exporter's query_response `starttls`)
-- and steps over TLS from the start, against a small SMTP-like server
-- (spec/fixtures/starttls-server.py, Python's ssl) with certificates made
-- by the `openssl` command (spec/support/pki.lua).
local sonde = require "sonde"
local helpers = require "helpers"

local tcp, tcp_raises = helpers.prober(sonde.tcp_socket)

local SERVER = helpers.root .. "/spec/fixtures/starttls-server.py"

-- The server in the background: its port; stopped by stop_all.
local pids = {}
local function server(pki, mode, ca)
  local dir = helpers.scratch()
  local out = dir .. "/out"
  local p = io.popen("exec python3 " .. helpers.q(SERVER) .. " "
    .. helpers.q(pki.good.cert) .. " " .. helpers.q(pki.good.key) .. " "
    .. mode .. (ca and (" " .. helpers.q(ca)) or "") .. " > "
    .. helpers.q(out) .. " 2>&1 < /dev/null & echo $!")
  pids[#pids + 1] = p:read("l")
  p:close()
  local port = helpers.eventually(function()
    return (helpers.read_file(out) or ""):match("^PORT (%d+)\n")
  end, 10)
  assert(port, "the server did not start: " .. (helpers.read_file(out) or ""))
  return tonumber(port)
end

local function stop_all()
  for _, pid in ipairs(pids) do os.execute("kill " .. pid .. " 2>/dev/null") end
  pids = {}
end

-- SMTP up to STARTTLS, the upgrade, then EHLO over TLS
local SMTP = {
  { expect = "^220 " }, { send = "EHLO sonde\r\n" },
  { expect = "^250 STARTTLS" }, { send = "STARTTLS\r\n" },
  { expect = "^220 ", starttls = true },
  { send = "EHLO sonde\r\n" }, { expect = "^250 .*secured" },
  { send = "QUIT\r\n" },
}

-- IMAP (RFC 3501: "TAG STARTTLS") and POP3 (RFC 2595: "STLS"), each
-- then asking for its capabilities over TLS
local IMAP = {
  { expect = "^%* OK .*STARTTLS" }, { send = "a1 STARTTLS\r\n" },
  { expect = "^a1 OK ", starttls = true },
  { send = "a2 CAPABILITY\r\n" }, { expect = "^a2 OK secured" },
}
local POP3 = {
  { expect = "^%+OK" }, { send = "STLS\r\n" },
  { expect = "^%+OK ", starttls = true },
  { send = "CAPA\r\n" }, { expect = "^%+OK secured" },
}

describe("tcp_socket STARTTLS and steps over TLS", function()
  local pki, starttls, inject, tls, tls_mtls, imap, pop3

  lazy_setup(function()
    pki = helpers.pki(helpers.scratch())
    starttls = server(pki, "starttls")
    inject = server(pki, "inject")
    tls = server(pki, "tls")
    tls_mtls = server(pki, "tls", pki.ca)
    imap = server(pki, "imap")
    pop3 = server(pki, "pop3")
  end)

  lazy_teardown(stop_all)

  it("STARTTLS: the steps after it go through TLS, with the facts",
    function()
    local r = tcp { port = starttls, timeout = 5, expect = SMTP,
      tls = { verify = true, ca_file = pki.ca } }
    assert.are.same({ "success", "ok", "250 sonde.test secured" },
      { r.status, r.reason, r.output })
    assert.are.same({ "CN=good.sonde.test", "TLS 1.3" },
      { r.tls.subject, r.tls.version })
    assert.are.equal(helpers.not_after(pki.good.cert), r.tls.earliest_expiry)
  end)

  it("IMAP and POP3 STARTTLS: the capabilities asked over TLS, verified",
    function()
    for _, c in ipairs { { imap, IMAP, "a2 OK secured" },
                         { pop3, POP3, "+OK secured" } } do
      local r = tcp { port = c[1], timeout = 5, expect = c[2],
        tls = { verify = true, ca_file = pki.ca } }
      assert.are.same({ "success", "ok", c[3], "CN=good.sonde.test" },
        { r.status, r.reason, r.output, r.tls and r.tls.subject })
      -- the same conversation without the upgrade: the server answers
      -- the capability command with "- what" in clear, and the probe
      -- fails on that step (the step after STARTTLS really is over TLS)
      local plain = {}
      for i, st in ipairs(c[2]) do
        plain[i] = { expect = st.expect, send = st.send }
      end
      r = tcp { port = c[1], timeout = 2, expect = plain }
      assert.are.equal("failure", r.status)
      assert.is_nil(r.tls)
    end
  end)

  it("tls = true is TLS with the defaults, tls = false none", function()
    local r = tcp { port = tls, timeout = 5, tls = true }
    assert.are.same({ "success", "ok", "CN=good.sonde.test" },
      { r.status, r.reason, r.tls and r.tls.subject })
    r = tcp { port = tls, timeout = 5, tls = false }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    assert.is_nil(r.tls)
  end)

  it("STARTTLS without a tls table uses the defaults (no verification)",
    function()
    local r = tcp { port = starttls, timeout = 5, expect = SMTP }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
    assert.is_table(r.tls)
  end)

  it("STARTTLS with a failed verification is failure tls", function()
    local r = tcp { port = starttls, timeout = 5, expect = SMTP,
      tls = { verify = true } }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("certificate verify failed", r.error)
  end)

  it("expiry thresholds apply after the steps", function()
    local r = tcp { port = starttls, timeout = 5, expect = SMTP,
      tls = { expiry_warning = 100 * 86400 } }
    assert.are.same({ "warning", "tls_expiry" }, { r.status, r.reason })
  end)

  it("what was read before the upgrade is not read after it", function()
    -- the server sends "250 injected" in clear right after "220 go ahead"
    local r = tcp { port = inject, timeout = 1, expect = {
      { expect = "^220 " }, { send = "EHLO sonde\r\n" },
      { expect = "^250 STARTTLS" }, { send = "STARTTLS\r\n" },
      { expect = "^220 ", starttls = true }, { expect = "^250 injected" } } }
    assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
    assert.matches("expect%[6%]%.expect", r.error)
  end)

  it("tls = {...} without starttls: the steps go through TLS from the start",
    function()
    local r = tcp { port = tls, timeout = 5, tls = {}, expect = {
      { expect = "^220 " }, { send = "EHLO x\r\n" }, { expect = "secured" },
      { send = "QUIT\r\n" } } }
    assert.are.same({ "success", "ok", "250 sonde.test secured" },
      { r.status, r.reason, r.output })
  end)

  it("TLS 1.3 refusing the client certificate: seen by a step, reason tls",
    function()
    local steps = { { expect = "^220 " } }
    local r = tcp { port = tls_mtls, timeout = 5, tls = {}, expect = steps }
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("expect%[1%]%.expect: TLS: .*alert certificate required",
      r.error)
    -- (verification is off: the chain's verify result, computed for the
    -- facts, is not what failed and is not named)
    assert.is_nil(r.error:find("verify failed", 1, true), r.error)
    r = tcp { port = tls_mtls, timeout = 5, expect = steps, tls = {
      cert_file = pki.client.cert, key_file = pki.client.key } }
    assert.are.same({ "success", "ok" }, { r.status, r.reason })
  end)

  it("starttls is checked", function()
    tcp_raises({ port = 1, expect = { { starttls = "yes" } } },
      "expect[1].starttls")
    tcp_raises({ port = 1, expect = { { starttls = true },
      { starttls = true } } }, "expect[2].starttls", "only one")
  end)
end)
