-- The curl-based probers (src/http.c, src/tcp.c, src/curlsock.c,
-- src/curlerr.c) against hostile peers and an unlucky host: out of
-- descriptors, oversized response heads, stalled TLS handshakes, redirect
-- policies, credentials in URLs and untrusted text in curl's messages.
-- Loopback only: the fixture server's hostile routes and silent mode
-- (spec/fixtures/fixture-server.c) and `openssl s_server`.
local sonde = require "sonde"
local helpers = require "helpers"

local q = helpers.q
local http, assert_raises = helpers.prober(sonde.http_get)
local tcp = helpers.prober(sonde.tcp_socket)

local function under_sanitizers()
  return (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
end

-- No byte of s is a control byte (the text cannot start a line of its own
-- or drive a terminal).
local function printable(s)
  return not s:find("[%z\1-\31\127]")
end

describe("curl probers under attack", function()
  local srv, srv2, silent, full

  lazy_setup(function()
    srv = helpers.fixture { host = "127.0.0.1", log = true }
    srv2 = helpers.fixture { host = "127.0.0.1", log = true }
    silent = helpers.fixture { host = "127.0.0.1", mode = "silent" }
    full = helpers.fixture { host = "127.0.0.1", mode = "tcp-full" }
  end)

  lazy_teardown(helpers.stop_fixtures)

  before_each(function()
    for _, s in ipairs { srv, srv2 } do s:clear_log() end
  end)

  describe("oversized response heads are the peer's fault", function()
    -- route, what the error says
    for _, c in ipairs {
      { "/bigheader?n=200000", "header line too large" },  -- one line over 100 KB
      { "/bigstatus?n=200000", "header line too large" },  -- the status line
      { "/manyheaders?n=5000&len=100", "Too large response headers" }, -- 500 KB
      { "/manyheaders?n=40000&len=1", "Too large response headers" },  -- many small
    } do
      it(c[1] .. " is failure, reason protocol", function()
        local r = http { url = srv:url(c[1]), timeout = 5 }
        assert.are.same({ "failure", "protocol" }, { r.status, r.reason })
        assert.matches(c[2], r.error, 1, true)
      end)
    end

    it("a header line just under libcurl's limit is read (success)", function()
      local r = http { url = srv:url("/bigheader?n=90000"), timeout = 5 }
      assert.are.same({ "success", "hostile", 90000 }, { r.status, r.body, #r.headers["x-big"] })
    end)

    it("header values are data: returned byte for byte, control bytes included", function()
      local r = http { url = srv:url("/badheader") }
      assert.are.same({ "success", "a\1b\27[31mc\127" }, { r.status, r.headers["x-bad"] })
    end)

    it("the body buffer out of memory is unknown, reason resource (a child under ulimit -v)", function()
      if under_sanitizers() then
        pending("the sanitizers' shadow memory does not fit under ulimit -v")
        return
      end
      local out = helpers.run_lua(([[
        local sonde = require "sonde"
        sonde.http_get({ url = %q, timeout = 20, max_body = 1e12 }, function(r)
          print(r.status, r.reason, #r.body)
        end)
        sonde.run()
      ]]):format(srv:url("/big?n=" .. 64 * 1024 * 1024)), { prefix = "ulimit -v 60000;" })
      assert.are.equal("unknown\tresource\t0\n", out)
    end)
  end)

  describe("a TLS handshake that stalls after the TCP connect", function()
    it("is failure timeout, not connect_timeout, at the deadline", function()
      local r = http { url = "https://127.0.0.1:" .. silent.port .. "/", timeout = 0.5 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
      assert.matches("TLS handshake not finished", r.error, 1, true)
      assert.is_true(r.duration >= 0.4 and r.duration < 3, "duration " .. r.duration)
    end)

    it("while a TCP connect that never completes stays connect_timeout", function()
      local r = http { url = "https://127.0.0.1:" .. full.port .. "/", timeout = 0.5 }
      assert.are.same({ "failure", "connect_timeout" }, { r.status, r.reason })
    end)

    it("plain HTTP to a silent server is failure timeout", function()
      local r = http { url = "http://127.0.0.1:" .. silent.port .. "/", timeout = 0.5 }
      assert.are.same({ "failure", "timeout" }, { r.status, r.reason })
    end)

    it("tcp_socket to a port that accepts and stays silent is success", function()
      local r = tcp { host = "127.0.0.1", port = silent.port }
      assert.are.same({ "success", "ok", "" }, { r.status, r.reason, r.output })
    end)
  end)

  describe("follow_redirects", function()
    local to_other_port
    before_each(function()
      to_other_port = srv:url("/redirect?code=307&to=" .. helpers.urlencode(srv2:url("/ok")))
    end)

    it("same-origin does not follow a redirect to another port: the 3xx is a warning", function()
      local r = http { url = to_other_port, follow_redirects = "same-origin" }
      assert.are.same({ "warning", "redirect", 307, 0 },
        { r.status, r.reason, r.http_status, r.redirects })
      helpers.sleep(0.2) -- a wrongly followed hop would have arrived by now
      assert.are.equal(0, srv2:connections())
    end)

    it("same-origin follows a redirect on the same scheme, host and port", function()
      local r = http { url = srv:url("/a"), follow_redirects = "same-origin" }
      assert.are.same({ "success", "b", 1 }, { r.status, r.body, r.redirects })
    end)

    it("same-origin counts a URL's default port as its port", function()
      -- http://127.0.0.1/x is port 80, not the fixture's: not followed
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode("http://127.0.0.1/x")),
                       follow_redirects = "same-origin" }
      assert.are.same({ "warning", 302 }, { r.status, r.http_status })
    end)

    it("none follows nothing, even on the same origin", function()
      local r = http { url = srv:url("/a"), follow_redirects = "none" }
      assert.are.same({ "warning", "redirect", 302, 0 },
        { r.status, r.reason, r.http_status, r.redirects })
      assert.are.equal(1, #srv:requests())
    end)

    it("same-host (the default) still follows to another port (kubelet)", function()
      local r = http { url = to_other_port, follow_redirects = "same-host" }
      assert.are.same({ "success", 1 }, { r.status, r.redirects })
    end)

    it("any other value raises naming follow_redirects", function()
      assert_raises({ url = srv:url("/ok"), follow_redirects = "always" },
        "follow_redirects", "same-origin")
      assert_raises({ url = srv:url("/ok"), follow_redirects = true }, "follow_redirects")
    end)
  end)

  describe("URL credentials", function()
    it("are masked in output, error-bearing output and url (user:xxxxx@)", function()
      local r = http { url = ("http://user:s3cret@127.0.0.1:%d/close"):format(srv.port) }
      assert.are.equal("failure", r.status)
      assert.are.equal(("Get \"http://user:xxxxx@127.0.0.1:%d/close\": Empty reply from server")
        :format(srv.port), r.output)
      assert.are.equal(("http://user:xxxxx@127.0.0.1:%d/close"):format(srv.port), r.url)
      assert.is_nil(r.output:find("s3cret", 1, true))
    end)

    it("are masked in a redirect location the probe followed", function()
      local to = ("http://admin:hunter2@127.0.0.1:%d/close"):format(srv.port)
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode(to)) }
      assert.are.same({ "failure", 1 }, { r.status, r.redirects })
      for _, k in ipairs { "output", "url", "error" } do
        assert.is_nil(tostring(r[k]):find("hunter2", 1, true), k .. ": " .. tostring(r[k]))
      end
      assert.matches("admin:xxxxx@", r.output, 1, true)
    end)

    it("a failure's message shows at most 2048 bytes of a long redirect "
      .. "location (url keeps it whole)", function()
      local to = ("http://127.0.0.1:%d/close?%s"):format(srv.port, ("a"):rep(6000))
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode(to)) }
      assert.are.same({ "failure", 1 }, { r.status, r.redirects })
      assert.is_true(#r.output < 2200, tostring(#r.output))
      assert.matches('^Get "http://127%.0%.0%.1:%d+/close%?a+%.%.%.": Empty reply', r.output)
      assert.are.equal(to, r.url)
    end)

    it("a user without a password is shown as it is (Go's Redacted)", function()
      local r = http { url = ("http://someone@127.0.0.1:%d/close"):format(srv.port) }
      assert.matches(("\"http://someone@127.0.0.1:%d/close\""):format(srv.port), r.output, 1, true)
    end)

    it("are masked in a ftp:// redirect's error", function()
      local to = "ftp://joe:pw123456@127.0.0.1:1/x"
      local r = http { url = srv:url("/redirect?to=" .. helpers.urlencode(to)) }
      assert.are.same({ "failure", "redirect" }, { r.status, r.reason })
      -- (the probed URL carries it percent-encoded in its query: data)
      assert.is_nil(r.output:find("joe:pw123456@", 1, true), r.output)
      assert.is_nil(r.error:find("pw123456", 1, true), r.error)
      assert.matches("joe:xxxxx@", r.error, 1, true)
    end)
  end)

  describe("descriptors run out", function()
    -- In a child lua5.4 under `ulimit -n 64`: open /dev/null until EMFILE,
    -- probe, free them, probe again.
    local function child(code)
      return helpers.run_lua(([[
        local sonde = require "sonde"
        local function show(tag)
          return function(r) print(tag, r.status, r.reason) end
        end
        local function probe(kind, spec, tag)
          sonde[kind](spec, show(tag))
          sonde.run()
        end
        probe("http_get", { url = %q }, "warm")
        local held = {}
        while true do
          local f = io.open("/dev/null")
          if not f then break end
          held[#held + 1] = f
        end
        %s
        for _, f in ipairs(held) do f:close() end
        held = nil
        collectgarbage()
        %s
      ]]):format(srv:url("/ok"), code.full, code.after), { prefix = "ulimit -n 64;" })
    end

    it("http_get and tcp_socket are unknown/resource, then recover by themselves", function()
      local port = srv.port
      local out = child {
        full = ([[
          probe("http_get", { url = "http://127.0.0.1:%d/ok" }, "http")
          probe("http_get", { url = "http://localhost:%d/ok" }, "http-name")
          probe("tcp_socket", { host = "127.0.0.1", port = %d }, "tcp")
          probe("tcp_socket", { host = "localhost", port = %d }, "tcp-name")
          -- libcurl cannot start its resolver thread: no query leaves
          probe("http_get", { url = "http://sonde-test.invalid:%d/ok" }, "http-dns")
          probe("tcp_socket", { host = "sonde-test.invalid", port = %d }, "tcp-dns")
        ]]):format(port, port, port, port, port, port),
        after = ([[
          probe("http_get", { url = "http://127.0.0.1:%d/ok" }, "http-after")
          probe("tcp_socket", { host = "127.0.0.1", port = %d }, "tcp-after")
        ]]):format(port, port),
      }
      assert.are.same({
        "warm\tsuccess\tok",
        "http\tunknown\tresource",
        "http-name\tunknown\tresource",
        "tcp\tunknown\tresource",
        "tcp-name\tunknown\tresource",
        "http-dns\tunknown\tresource",
        "tcp-dns\tunknown\tresource",
        "http-after\tsuccess\tok",
        "tcp-after\tsuccess\tok",
      }, helpers.lines(out))
    end)

    it("the error names the cause", function()
      local out = child {
        full = ([[
          sonde.http_get({ url = "http://127.0.0.1:%d/ok" }, function(r)
            print(r.error)
          end)
          sonde.run()
        ]]):format(srv.port),
        after = "",
      }
      assert.are.same({ "warm\tsuccess\tok", "cannot open a socket: Too many open files" },
        helpers.lines(out))
    end)
  end)

  describe("curl's own output", function()
    it("never reaches stderr, whatever fails", function()
      local out = helpers.run_lua(([[
        local sonde = require "sonde"
        for _, u in ipairs { %q, %q, %q, %q, "http://127.0.0.1:1/", "https://127.0.0.1:%d/" } do
          sonde.http_get({ url = u, timeout = 0.5 }, function() end)
        end
        sonde.tcp_socket({ host = "127.0.0.1", port = 1 }, function() end)
        sonde.tcp_socket({ host = "127.0.0.1", port = %d, timeout = 0.3 }, function() end)
        sonde.run()
        print("done")
      ]]):format(srv:url("/ok"), srv:url("/close"), srv:url("/bigheader?n=200000"),
        srv:url("/a"), silent.port, full.port))
      assert.are.equal("done\n", out)
    end)
  end)
end)

-- TLS: text a server controls (its certificate's subject) reaches curl's
-- error message; it must not bring control bytes into results.
describe("curl error text from a hostile certificate", function()
  local dir, pid, port

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/req.cnf", "[req]\ndistinguished_name = dn\nprompt = no\n"
      .. "string_mask = utf8only\n[dn]\nCN = $ENV::EVILCN\n")
    assert(os.execute("EVILCN=\"$(printf 'evil\\nInjected: yes\\033[31m')\""
      .. " openssl req -x509 -newkey rsa:2048 -nodes -days 2 -config " .. q(dir .. "/req.cnf")
      .. " -keyout " .. q(dir .. "/key.pem") .. " -out " .. q(dir .. "/cert.pem")
      .. " >/dev/null 2>&1"), "openssl req failed")
    local server = helpers.tls_server(dir)
    pid, port = server.pid, server.port
  end)

  lazy_teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if dir then helpers.rmtree(dir) end
  end)

  it("a subject name with a newline and an escape is shown without them", function()
    local r = helpers.run(function()
      return sonde.http_get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5,
                              tls = { verify = true, ca_file = dir .. "/cert.pem" } }
    end, 10)
    assert.are.same({ "failure", "tls" }, { r.status, r.reason })
    assert.matches("evil?Injected: yes?[31m", r.error, 1, true)
    assert.is_true(printable(r.error), r.error)
    assert.is_true(printable(r.output), r.output)
  end)
end)
