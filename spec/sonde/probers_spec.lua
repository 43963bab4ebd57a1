-- sonde.probers: what the network handlers check and do alike (tcp_socket
-- and http_get): ports, unknown fields, the host and its name.  Each prober's own checks are in
-- spec/core/exec_spec.lua, http_spec.lua and tcp_spec.lua.
local sonde = require "sonde"
local helpers = require "helpers"

local probers = {
  { "tcp_socket", sonde.tcp_socket },
  { "http_get", sonde.http_get },
}

describe("sonde.probers: ports and fields", function()
  -- name, specs (each refused), what the message names
  local refused = {
    { "rejects port 0 and port 70000", { { port = 0 }, { port = 70000 } }, "port" },
    { "rejects an unknown port name",
      { { port = "nope", ports = { { name = "web", port = 8080 } } } }, "port" },
    { "rejects an unknown key, naming it", { { port = 8080, bogus = 1 } }, "bogus" },
  }
  for _, p in ipairs(probers) do
    for _, c in ipairs(refused) do
      it("sonde." .. p[1] .. " " .. c[1], function()
        for _, spec in ipairs(c[2]) do helpers.spec_error(p[2], spec, c[3]) end
      end)
    end
  end
end)

describe("sonde.probers: hosts", function()
  local srv, srv6

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1" }
    srv6 = helpers.fixture { host = "::1" }
  end)

  lazy_teardown(helpers.stop_fixtures)

  for _, c in ipairs {
    { "tcp_socket", function() return { port = srv.port } end },
    { "http_get", function() return { port = srv.port, path = "/ok" } end },
  } do
    it("sonde." .. c[1] .. " defaults the host to 127.0.0.1", function()
      local r = helpers.probe(sonde[c[1]], c[2]())
      assert.are.same({ "success", "127.0.0.1:" .. srv.port },
        { r.status, r.remote_addr })
    end)
  end

  it("a host with a port raises, mentioning the port", function()
    for _, p in ipairs(probers) do
      helpers.spec_error(p[2], { host = "127.0.0.1:80", port = srv.port },
        "sonde." .. p[1], "host", "port")
    end
  end)

  it("':', a backslash and a 300-character name raise", function()
    for _, p in ipairs(probers) do
      for _, h in ipairs { ":", "127.0.0.1\\x", string.rep("a", 300) } do
        helpers.spec_error(p[2], { host = h, port = srv.port }, "sonde." .. p[1], "host")
      end
    end
  end)

  it("'::1' is accepted and reaches the ::1 server", function()
    local r = helpers.probe(sonde.tcp_socket, { host = "::1", port = srv6.port })
    assert.are.same({ "success", "[::1]:" .. srv6.port }, { r.status, r.remote_addr })
    r = helpers.probe(sonde.http_get, { host = "::1", port = srv6.port, path = "/ok" })
    assert.are.same({ "success", "ok body" }, { r.status, r.body })
  end)

  it("'fe80::1%lo' passes validation", function()
    for _, p in ipairs(probers) do
      helpers.accepted(p[2], { host = "fe80::1%lo", port = 9 })
    end
  end)

  -- In a child process whose resolver is 127.0.0.1, where nothing
  -- listens: no query leaves the host.
  for _, c in ipairs {
    { "http_get", '{ url = "http://no-such-host.invalid/", timeout = 5 }' },
    { "tcp_socket", '{ host = "no-such-host.invalid", port = 80, timeout = 5 }' },
  } do
    it("sonde." .. c[1] .. ": a name that does not resolve is failure dns", function()
      local out = helpers.run_lua(string.format([[
        local sonde = require "sonde"
        local r
        sonde.%s(%s, function(x) r = x end)
        sonde.run()
        io.write("REASON ", r.reason, " STATUS ", r.status, "\n")
      ]], c[1], c[2]), { loopback_resolver = true })
      assert.are.equal("dns", out:match("REASON (%S+)"), out)
      assert.are.equal("failure", out:match("STATUS (%S+)"), out)
    end)
  end
end)

describe("sonde.probers.prepare: a spec table checked once while unchanged", function()
  local P = require "sonde.probers"
  local http = P.handlers.http_get

  it("gives the same checked options for the same table, unchanged", function()
    local spec = { url = "http://127.0.0.1:8080/ok", headers = { ["X-A"] = "1" } }
    local a = P.prepare("sonde.http_get", http, spec)
    assert.are.equal(a, P.prepare("sonde.http_get", http, spec))
    -- an equal table of its own is checked on its own
    local other = { url = "http://127.0.0.1:8080/ok", headers = { ["X-A"] = "1" } }
    assert.are_not.equal(a, P.prepare("sonde.http_get", http, other))
  end)

  it("checks again after any change, nested tables included", function()
    local spec = { url = "http://127.0.0.1:8080/ok", headers = { ["X-A"] = "1" } }
    local a = P.prepare("sonde.http_get", http, spec)
    spec.headers["X-A"] = "2"                     -- nested, in place
    local b = P.prepare("sonde.http_get", http, spec)
    assert.are_not.equal(a, b)
    assert.are.same({ { name = "X-A", value = "2" } }, b.headers)
    spec.headers["X-B"] = "3"                     -- a key added
    local c = P.prepare("sonde.http_get", http, spec)
    assert.are.equal(2, #c.headers)
    spec.headers["X-B"] = nil                     -- and removed
    assert.are.equal(1, #P.prepare("sonde.http_get", http, spec).headers)
    spec.url = "http://127.0.0.1:9090/"
    assert.are.equal("http://127.0.0.1:9090/",
      P.prepare("sonde.http_get", http, spec).url)
    -- a change that makes it wrong raises, naming the field
    spec.method = "BAD METHOD"
    local ok, err = pcall(P.prepare, "sonde.http_get", http, spec)
    assert.is_false(ok)
    assert.matches("method", tostring(err))
    spec.method = nil
    assert.is_table(P.prepare("sonde.http_get", http, spec))
  end)

  it("checks every time a spec that holds anything but plain data", function()
    local spec = setmetatable({ port = 8080 }, {})
    local tcp = P.handlers.tcp_socket
    assert.are_not.equal(P.prepare("sonde.tcp_socket", tcp, spec),
      P.prepare("sonde.tcp_socket", tcp, spec))
    local exec = P.handlers.exec
    local fspec = { command = { "true" }, env = setmetatable({}, {}) }
    assert.are_not.equal(P.prepare("sonde.exec", exec, fspec),
      P.prepare("sonde.exec", exec, fspec))
  end)

  it("probes the changed target when the same table is used again", function()
    local srv = helpers.fixture { host = "127.0.0.1" }
    local spec = { port = srv.port }
    local got = {}
    sonde.spawn(function()
      got[1] = sonde.tcp_socket(spec).status
      spec.port = helpers.closed_port()
      got[2] = sonde.tcp_socket(spec).reason
    end)
    sonde.run()
    helpers.stop_fixtures()
    assert.are.same({ "success", "connect_refused" }, got)
  end)
end)
