-- core.regex (src/lregex.c): POSIX extended regular expressions, and the
-- deferred answers of the endpoint (src/lhttpd.c: "defer" and
-- core.listen_reply).
local H = require "helpers"

describe("core.regex", function()
  local core
  setup(function() core = require "sonde.core" end)

  it("matches anywhere in the subject, NULs included", function()
    local re = assert(core.regex("b+c"))
    assert.is_true(re:match("abbcd"))
    assert.is_false(re:match("ac"))
    -- the whole subject is searched, past a NUL (glibc's `.` does not
    -- match a NUL byte itself)
    assert.is_true(assert(core.regex("c$")):match("a\0c"))
    assert.is_false(assert(core.regex("a.c")):match("a\0c"))
    assert.is_true(assert(core.regex("^x$")):match("x"))
    assert.is_false(assert(core.regex("^x$")):match("x\ny"))
    assert.is_true(assert(core.regex("OK", "i")):match("ok"))
  end)

  it("refuses what does not compile, with regerror's text", function()
    local re, err = core.regex("a(")
    assert.is_nil(re)
    assert.is_string(err)
    re, err = core.regex("a\0b")
    assert.is_nil(re)
    assert.matches("NUL", err)
  end)
end)

describe("core.listen with deferred answers", function()
  it("answers a request later, from a callback; an unknown id is false",
    function()
    local got = H.run(function()
      local core = require "sonde.core"
      local sonde = require "sonde"
      local seen = {}
      local port = assert(core.listen("127.0.0.1", 0, function(m, path, q, headers, id)
        if path == "/later" then
          seen.header = headers["x-probe"]
          core.timer(0.05, function()
            seen.replied = core.listen_reply(id, 201, "later\n", "text/x-later")
            seen.again = core.listen_reply(id, 200, "twice")
          end)
          return "defer"
        end
        return 200, "now\n"
      end))
      local r = sonde.http_get { url = ("http://127.0.0.1:%d/later"):format(port),
        headers = { ["X-Probe"] = "yes" }, timeout = 5 }
      local r2 = sonde.http_get { url = ("http://127.0.0.1:%d/now"):format(port),
        timeout = 5 }
      seen.unknown = core.listen_reply(12345, 200, "x")
      core.unlisten()
      return { status = r.http_status, body = r.body, ctype = r.headers["content-type"],
        now = r2.body, seen = seen }
    end, 20)
    assert.are.equal(201, got.status)
    assert.are.equal("later\n", got.body)
    assert.are.equal("text/x-later", got.ctype)
    assert.are.equal("now\n", got.now)
    assert.are.equal("yes", got.seen.header)
    assert.is_true(got.seen.replied)
    assert.is_false(got.seen.again)
    assert.is_false(got.seen.unknown)
  end)

  it("answers the requests still pending 503 when the server closes", function()
    local got = H.run(function()
      local core = require "sonde.core"
      local sonde = require "sonde"
      local port = assert(core.listen("127.0.0.1", 0, function()
        core.timer(0.05, function() core.unlisten() end)
        return "defer"
      end))
      local r = sonde.http_get { url = ("http://127.0.0.1:%d/x"):format(port), timeout = 5 }
      return { status = r.http_status, body = r.body, reason = r.reason }
    end, 20)
    assert.are.equal(503, got.status, got.reason)
    assert.are.equal("shutting down\n", got.body)
  end)
end)
