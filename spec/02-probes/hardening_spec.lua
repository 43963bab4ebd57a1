-- Regression specs for the hardening fixes (commit "Harden probers ..."):
-- GET with a body, no default Content-Type, huge timeouts, NUL bytes,
-- arrays with holes, hosts, URLs, relative commands under cwd, codes
-- defaults, an inherited ignored SIGCHLD, the max_body boundary, timeouts
-- under load, redirects to other schemes, non-HTTP replies.
--
-- Real processes and the loopback fixture server only (127.0.0.1, ::1).

local sonde = require "sonde"
local fixture = require "fixture"
local helpers = require "helpers"

local q = helpers.shell_quote

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- Run one prober with a callback and the loop; return its result.
local function call(prober, spec)
  local result, calls = nil, 0
  prober(spec, function(r) result = r; calls = calls + 1 end)
  sonde.run()
  assert.are.equal(1, calls, "callback must be called exactly once")
  return result
end

-- Run one prober inside a task; return its result.
local function in_task(prober, spec, max_seconds)
  return helpers.run(function() return prober(spec) end, max_seconds)
end

-- Assert that prober(spec, cb) raises at spec time, with every needle in
-- the message.  A spec wrongly accepted is cancelled at once, so that
-- nothing is left waiting (a huge timeout would otherwise hang the suite).
local function assert_raises(prober, spec, ...)
  local ok, res = pcall(prober, spec, function() end)
  if ok then sonde.cancel(res) end
  sonde.run()
  assert.is_false(ok, "expected a spec error, but the probe was started")
  local err = tostring(res)
  for _, needle in ipairs { ... } do
    assert.is_truthy(err:find(needle, 1, true),
      ("error message %q should mention %q"):format(err, needle))
  end
  return err
end

-- Assert that prober(spec, cb) is accepted: it returns an operation id,
-- which is cancelled at once (still pending), and the loop then has
-- nothing to wait for.
local function assert_accepted_then_cancel(prober, spec)
  local called = false
  local ok, id = pcall(prober, spec, function() called = true end)
  assert.is_true(ok, "spec should be accepted, got: " .. tostring(id))
  assert.is_not_nil(id, "an operation id is expected")
  assert.is_true(sonde.cancel(id), "the operation should still be pending")
  local t0 = sonde.now()
  sonde.run()
  assert.is_false(called, "a cancelled operation's callback must not run")
  assert.is_true(sonde.now() - t0 < 2, "sonde.run() waited after cancel")
end

-- Run `script` (Lua source) in a child lua5.4 started by
--   <shell> -c '<prefix> exec lua5.4 -e <script>'
-- (shell "sh" unless given) with the suite's LUA_PATH / LUA_CPATH, under
-- `timeout 30`.  Returns the child's stdout+stderr and os.execute-like
-- status values.
local function run_child(script, prefix, shell)
  local lua = os.getenv("SONDE_LUA") or "lua5.4"
  local lpath = os.getenv("LUA_PATH") or package.path
  local lcpath = os.getenv("LUA_CPATH") or package.cpath
  local inner = (prefix or "") .. " exec " .. q(lua) .. " -e " .. q(script)
  local cmd = ("LUA_PATH=%s LUA_CPATH=%s timeout 30 %s -c %s 2>&1 </dev/null")
    :format(q(lpath), q(lcpath), shell or "sh", q(inner))
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  return out, ok, how, code
end

describe("hardening", function()
  local srv, srv6

  lazy_setup(function()
    srv = fixture.start { host = "127.0.0.1", log = true }
    srv6 = fixture.start { host = "::1", log = true }
  end)

  lazy_teardown(function()
    for _, s in ipairs { srv, srv6 } do
      if s then s:stop() end
    end
  end)

  before_each(function()
    srv:clear_log()
    srv6:clear_log()
  end)

  -- The only logged request (asserts there is exactly one).
  local function only_request()
    local reqs = srv:requests()
    assert.are.equal(1, #reqs, "exactly one request expected, log:\n" .. srv:log())
    return reqs[1]
  end

  ---------------------------------------------------------------------------
  describe("1. method, body and Content-Type", function()
    it("GET with a body stays GET, sends the body, and no Content-Type", function()
      local r = call(sonde.http_get, { url = srv:url("/echo"), body = "hello" })
      assert.are.equal("success", r.status)
      assert.are.equal(200, r.http_status)
      local head = only_request()
      assert.are.equal("GET /echo HTTP/1.1", fixture.request_line(head))
      assert.are.same({ "Content-Length: 5" }, fixture.header_lines(head, "Content-Length"))
      assert.are.same({}, fixture.header_lines(head, "Content-Type"))
    end)

    it("POST with a body sends POST and no Content-Type", function()
      local r = call(sonde.http_get, { url = srv:url("/echo"), method = "POST", body = "x" })
      assert.are.equal("success", r.status)
      local head = only_request()
      assert.are.equal("POST /echo HTTP/1.1", fixture.request_line(head))
      assert.are.same({ "Content-Length: 1" }, fixture.header_lines(head, "Content-Length"))
      assert.are.same({}, fixture.header_lines(head, "Content-Type"))
    end)

    it("a Content-Type given in headers is sent exactly once", function()
      local r = call(sonde.http_get, {
        url = srv:url("/echo"), method = "POST", body = "x",
        headers = { ["Content-Type"] = "text/plain" },
      })
      assert.are.equal("success", r.status)
      local head = only_request()
      assert.are.equal("POST /echo HTTP/1.1", fixture.request_line(head))
      assert.are.same({ "Content-Type: text/plain" }, fixture.header_lines(head, "Content-Type"))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("2. huge timeouts", function()
    it("exec timeout = 1e19 raises naming timeout", function()
      assert_raises(sonde.exec, { command = { "true" }, timeout = 1e19 }, "sonde.exec", "timeout")
    end)

    it("http timeout = 1e16 raises naming timeout", function()
      assert_raises(sonde.http_get, { url = srv:url("/ok"), timeout = 1e16 }, "sonde.http_get", "timeout")
    end)

    it("tcp timeout = 1e300 raises naming timeout", function()
      assert_raises(sonde.tcp_socket, { host = "127.0.0.1", port = srv.port, timeout = 1e300 },
        "sonde.tcp_socket", "timeout")
    end)

    -- In a child process: were the sleep accepted, its timer would keep
    -- this process's loop busy for ever.
    it("sonde.sleep(1e19) inside a task raises", function()
      local out = run_child([[
        local sonde = require "sonde"
        sonde.spawn(function()
          local ok, err = pcall(sonde.sleep, 1e19)
          io.write(ok and "ACCEPTED\n" or ("RAISED " .. tostring(err) .. "\n"))
        end)
        sonde.run()
        io.write("DONE\n")
      ]])
      assert.is_truthy(out:find("RAISED [^\n]*sonde%.sleep"), "child output:\n" .. out)
      assert.is_truthy(out:find("DONE\n", 1, true), "child output:\n" .. out)
    end)

    it("timeout = 1e9 is accepted by exec, http and tcp", function()
      assert_accepted_then_cancel(sonde.exec, { command = { "true" }, timeout = 1e9 })
      assert_accepted_then_cancel(sonde.http_get, { url = srv:url("/ok"), timeout = 1e9 })
      assert_accepted_then_cancel(sonde.tcp_socket, { host = "127.0.0.1", port = srv.port, timeout = 1e9 })
    end)
  end)

  ---------------------------------------------------------------------------
  describe("3. NUL bytes", function()
    it("exec cwd with a NUL byte raises naming cwd", function()
      assert_raises(sonde.exec, { command = { "true" }, cwd = "/tmp\0junk" }, "cwd", "NUL")
    end)

    it("http path with a NUL byte raises naming path", function()
      assert_raises(sonde.http_get, { host = "127.0.0.1", port = srv.port, path = "/echo\0/evil" },
        "path", "NUL")
    end)

    it("a header value with a NUL byte raises naming the header value", function()
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"), headers = { { name = "X-A", value = "abc\0def" } },
      }, "headers[1].value", "NUL")
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"), headers = { ["X-A"] = "abc\0def" },
      }, "headers.X-A", "NUL")
    end)

    it("tls.ca_file with a NUL byte raises naming tls.ca_file", function()
      assert_raises(sonde.http_get, { url = srv:url("/echo"), tls = { ca_file = "/x\0y" } },
        "tls.ca_file", "NUL")
    end)

    it("a body with NUL bytes is allowed and sent whole", function()
      local body = "ab\0cd\0\0ef\0"
      local r = call(sonde.http_get, { url = srv:url("/echo"), body = body })
      assert.are.equal("success", r.status)
      assert.are.equal(200, r.http_status)
      local head = only_request()
      assert.are.equal("GET /echo HTTP/1.1", fixture.request_line(head))
      assert.are.same({ "Content-Length: " .. #body }, fixture.header_lines(head, "Content-Length"))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("4. arrays with holes or extra keys", function()
    it("headers with a hole (explicit [1] and [3]) raise", function()
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"),
        headers = { [1] = { name = "X-A", value = "1" }, [3] = { name = "X-C", value = "3" } },
      }, "headers")
      assert.are.equal(0, srv:connections())
    end)

    it("headers with a hole (constructor with a literal nil) raise", function()
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"),
        headers = { { name = "X-A", value = "1" }, nil, { name = "X-C", value = "3" } },
      }, "headers")
      assert.are.equal(0, srv:connections())
    end)

    it("headers with only index 0 raise", function()
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"), headers = { [0] = { name = "X-A", value = "1" } },
      }, "headers")
    end)

    it("headers mixing an array and a map raise", function()
      assert_raises(sonde.http_get, {
        url = srv:url("/echo"), headers = { { name = "X-A", value = "1" }, ["X-B"] = "2" },
      }, "headers")
    end)

    it("ports with a hole raise", function()
      assert_raises(sonde.tcp_socket, {
        host = "127.0.0.1", port = "a",
        ports = { { name = "a", port = 1 }, [3] = { name = "b", port = 2 } },
      }, "ports")
    end)
  end)

  ---------------------------------------------------------------------------
  describe("5. hosts", function()
    local probers = {
      { "tcp_socket", sonde.tcp_socket },
      { "http_get", sonde.http_get },
    }

    it("a host with a port raises, mentioning the port", function()
      for _, p in ipairs(probers) do
        assert_raises(p[2], { host = "127.0.0.1:80", port = srv.port }, "sonde." .. p[1], "host", "port")
      end
    end)

    it("':', a backslash and a 300-character name raise", function()
      for _, p in ipairs(probers) do
        for _, h in ipairs { ":", "127.0.0.1\\x", string.rep("a", 300) } do
          assert_raises(p[2], { host = h, port = srv.port }, "sonde." .. p[1], "host")
        end
      end
    end)

    it("'::1' is accepted and reaches the ::1 server", function()
      local r = call(sonde.tcp_socket, { host = "::1", port = srv6.port })
      assert.are.equal("success", r.status)
      assert.are.equal("[::1]:" .. srv6.port, r.remote_addr)
      r = call(sonde.http_get, { host = "::1", port = srv6.port, path = "/ok" })
      assert.are.equal("success", r.status)
      assert.are.equal("ok body", r.body)
    end)

    it("'fe80::1%lo' passes validation", function()
      assert_accepted_then_cancel(sonde.tcp_socket, { host = "fe80::1%lo", port = 9 })
      assert_accepted_then_cancel(sonde.http_get, { host = "fe80::1%lo", port = 9 })
    end)
  end)

  ---------------------------------------------------------------------------
  describe("6. URLs", function()
    for _, u in ipairs { "http://127.0.0.1:99999/", "http://:80/", "http://@/", "http://[::1/" } do
      it(("%s raises naming url"):format(u), function()
        assert_raises(sonde.http_get, { url = u }, "sonde.http_get", "url")
      end)
    end
  end)

  ---------------------------------------------------------------------------
  describe("7. relative command under cwd", function()
    it("./true with cwd /bin is success, exit 0", function()
      local r = in_task(sonde.exec, { command = { "./true" }, cwd = "/bin" })
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal(0, r.exit_code)
    end)

    it("./nosuch with cwd /bin is failure not_found", function()
      local r = in_task(sonde.exec, { command = { "./nosuch" }, cwd = "/bin" })
      assert.are.equal("failure", r.status)
      assert.are.equal("not_found", r.reason)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("8. codes defaults", function()
    it("{ default = 'unknown' } applies to exit 0 too", function()
      local r = in_task(sonde.exec, { command = { "true" }, codes = { default = "unknown" } })
      assert.are.equal("unknown", r.status)
      assert.are.equal("exit_code", r.reason)
      assert.are.equal(0, r.exit_code)
    end)

    it("{ [0] = 'success', default = 'warning' } maps exit 1 to warning", function()
      local r = in_task(sonde.exec, { command = { "false" }, codes = { [0] = "success", default = "warning" } })
      assert.are.equal("warning", r.status)
      assert.are.equal("exit_code", r.reason)
      assert.are.equal(1, r.exit_code)
    end)
  end)

  ---------------------------------------------------------------------------
  -- bash, not sh: Debian's sh (dash) does not pass `trap "" CHLD` on to
  -- the command it execs (SigIgn stays 0), bash does.  The child checks
  -- that it really started with SIGCHLD ignored.
  describe("9. SIGCHLD inherited as ignored", function()
    it("exit statuses are still collected", function()
      local out = run_child([[
        local f = assert(io.open("/proc/self/status"))
        local st = f:read("a"); f:close()
        local ign = tonumber(st:match("SigIgn:%s*(%x+)"), 16)
        io.write((ign & (1 << 16)) ~= 0 and "SIGCHLD ignored\n" or "SIGCHLD not ignored\n")
        local sonde = require "sonde"
        sonde.spawn(function()
          local r = sonde.exec { command = { "false" } }
          io.write(tostring(r.status), " ", tostring(r.reason), " ", tostring(r.exit_code), "\n")
        end)
        sonde.run()
      ]], [[trap "" CHLD;]], "bash")
      -- the precondition: the child really started with SIGCHLD ignored
      assert.is_truthy(out:find("SIGCHLD ignored\n", 1, true), "child output:\n" .. out)
      assert.is_truthy(out:find("\nfailure exit_code 1\n", 1, true), "child output:\n" .. out)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("10. body of exactly max_body bytes", function()
    it("10240 bytes: success, whole body, not truncated", function()
      local r = call(sonde.http_get, { url = srv:url("/big?n=10240") })
      assert.are.equal("success", r.status)
      assert.are.equal("ok", r.reason)
      assert.are.equal(10240, #r.body)
      assert.is_false(r.truncated)
    end)

    it("10241 bytes: success, 10240 kept, truncated", function()
      local r = call(sonde.http_get, { url = srv:url("/big?n=10241") })
      assert.are.equal("success", r.status)
      assert.are.equal(10240, #r.body)
      assert.is_true(r.truncated)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("11. timeouts under load", function()
    it("50 concurrent requests to a silent server all time out within 3 s", function()
      local slow = fixture.start { host = "127.0.0.1", max_seconds = 60 }
      local results, n = {}, 50
      local t0 = sonde.now()
      local ok, err = pcall(function()
        for i = 1, n do
          sonde.http_get({ url = slow:url("/sleep?s=30"), timeout = 1 },
            function(r) results[i] = r end)
        end
        sonde.run()
      end)
      local elapsed = sonde.now() - t0
      slow:stop()
      assert.is_true(ok, tostring(err))
      local bad = {}
      for i = 1, n do
        local r = results[i]
        if not r or r.status ~= "failure" or r.reason ~= "timeout" then
          bad[#bad + 1] = ("#%d: %s"):format(i, r and (r.status .. " " .. r.reason .. " "
            .. tostring(r.error)) or "no result")
        end
      end
      assert.are.same({}, bad)
      assert.is_true(elapsed < 3, ("the batch took %.2f s"):format(elapsed))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("12. redirect to another scheme", function()
    it("a same-host redirect to ftp:// is failure, reason redirect", function()
      local r = call(sonde.http_get, {
        url = srv:url("/redirect?to=" .. urlencode("ftp://127.0.0.1:1/x")),
      })
      assert.are.equal("failure", r.status)
      assert.are.equal("redirect", r.reason)
      assert.are.equal(1, #srv:requests())
    end)
  end)

  ---------------------------------------------------------------------------
  describe("13. a reply that is not HTTP", function()
    it("is failure reason protocol, not config", function()
      if not os.execute("python3 -c 'import socket' >/dev/null 2>&1") then
        pending("python3 is not available to run a one-shot garbage server")
        return
      end
      local py = [[
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(8)
s.settimeout(20)
print(s.getsockname()[1], os.getpid(), flush=True)
try:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        c.recv(65536)
    except OSError:
        pass
    c.sendall(b"garbage\r\n\r\n")
    c.close()
except OSError:
    pass
]]
      local p = assert(io.popen("exec python3 -c " .. q(py) .. " </dev/null", "r"))
      local line = p:read("l") or ""
      local port, pid = line:match("^(%d+) (%d+)$")
      local ok, r = pcall(function()
        assert(port, "the garbage server printed no port: " .. line)
        return call(sonde.http_get, { url = ("http://127.0.0.1:%s/"):format(port), timeout = 5 })
      end)
      if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
      p:close()
      assert.is_true(ok, tostring(r))
      assert.are.equal("failure", r.status)
      assert.are.equal("protocol", r.reason)
    end)
  end)
end)
