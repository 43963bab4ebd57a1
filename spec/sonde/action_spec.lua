-- sonde.action (lua/sonde/action.lua): what a target sent stays data.  A
-- hostile HTTP target answers with shell code; the exec actions of the
-- probe get it in their environment (and the result as JSON on stdin),
-- never in their argv.  Webhooks: named without userinfo or query string,
-- TLS verified by default, no redirect followed.
local sonde = require "sonde"
local helpers = require "helpers"

local q = helpers.q

-- Run the current load until pred(events) holds (at most `max` s); the
-- events logged.
local function run_until(pred, max)
  local core = require "sonde.core"
  local log = helpers.capture()
  local deadline = core.now() + (max or 10)
  local function poll()
    if core.now() > deadline then return end
    local ok, evs = pcall(log.all, log)
    if ok and pred(evs) then helpers.stop_now() return end
    core.timer(0.05, poll)
  end
  core.timer(0.05, poll)
  local ok, err = pcall(helpers.run_for, max or 10)
  local evs = ok and log:all() or {}
  log:close()
  if not ok then error(err, 0) end
  return evs
end

local function actions(evs, probe, status)
  return helpers.select(evs, "action", { probe = probe, status = status })
end

describe("exec actions and a hostile target", function()
  local dir, srv, evs, body, res

  setup(function()
    helpers.fresh()
    dir = helpers.tmpdir()
    srv = helpers.fixture()
    -- /echo answers with the request head: this header is the "body"
    local evil = string.format("$(touch %s/pwned-expand); touch %s/pwned-semi"
      .. " `touch %s/pwned-tick`", dir, dir, dir)
    sonde.probe {
      name = "hostile", kind = "liveness", period = 0.2, timeout = 5,
      failure_threshold = 1, action_interval = 60,
      http_get = { url = srv:url("/echo"), headers = { ["X-Evil"] = evil } },
      on_result = function(r) body = r.body return "failure" end,
      on_change = function(_, _, r) res = r end,
      on_failure = {
        -- the safe form: the output from the environment, quoted
        sonde.action.exec { command = { "sh", "-c",
          'printf %s "$SONDE_OUTPUT" > ' .. q(dir .. "/env-out")
          .. "; cat > " .. q(dir .. "/stdin-out") }, timeout = 5 },
        -- the unsafe form of old: $(SONDE_OUTPUT) in the argv
        sonde.action.exec { command = { "sh", "-c",
          "echo $(SONDE_OUTPUT) > " .. q(dir .. "/argv-out") }, timeout = 5 },
      },
    }
    evs = run_until(function(e)
      return #actions(e, "hostile", "done") + #actions(e, "hostile", "failed")
        >= 2
    end)
  end)

  teardown(function()
    helpers.fresh()
    if srv then srv:stop() end
    if dir then helpers.rmtree(dir) end
  end)

  it("both actions ran", function()
    assert.are.equal(2, #actions(evs, "hostile", "done"),
      helpers.json_decode and require("sonde.json").encode(
        helpers.select(evs, "action")))
  end)

  it("nothing the target sent ran as shell code", function()
    for _, f in ipairs { "pwned-expand", "pwned-semi", "pwned-tick" } do
      assert.is_nil(helpers.read_file(dir .. "/" .. f), f .. " exists")
    end
  end)

  it("$SONDE_OUTPUT holds the literal text of the output", function()
    local got = helpers.read_file(dir .. "/env-out")
    assert.is_string(got)
    assert.is_string(body)
    assert.are.equal(body:sub(1, 4096):gsub("%z", ""), got)
    assert.is_truthy(got:find("X-Evil: $(touch ", 1, true), got)
  end)

  it("stdin holds the result as JSON", function()
    local got = helpers.read_file(dir .. "/stdin-out")
    assert.is_string(got)
    local doc, err = helpers.json_decode(got)
    assert.is_table(doc, tostring(err) .. ": " .. got)
    assert.is_table(res)
    local want = helpers.json_decode(require("sonde.json").encode(res))
    assert.are.same(want, doc)
    assert.are.equal(body, doc.body)
    assert.are.same({ "failure", "hostile" }, { doc.status, doc.probe })
  end)

  it("$(SONDE_OUTPUT) in an argv is not expanded with the output", function()
    local got = helpers.read_file(dir .. "/argv-out") or ""
    assert.is_nil(got:find("X-Evil", 1, true), got)
    -- the events show the command as written
    local started = actions(evs, "hostile", "started")
    assert.is_true(#started >= 2)
    local names = {}
    for _, e in ipairs(started) do names[#names + 1] = e.action end
    assert.is_truthy(table.concat(names, "\n"):find("$(SONDE_OUTPUT)", 1,
      true), table.concat(names, "\n"))
  end)
end)

describe("webhooks", function()
  local srv, other, evs

  setup(function()
    helpers.fresh()
    srv = helpers.fixture()
    other = helpers.fixture { log = true }
    local closed = helpers.closed_port()
    sonde.probe {
      name = "to-closed", kind = "liveness", period = 0.2, timeout = 5,
      failure_threshold = 1, action_interval = 60,
      exec = { command = { "false" } },
      on_failure = sonde.action.webhook {
        url = "http://alice:pa55word@127.0.0.1:" .. closed
          .. "/alert?token=t0ken-value#frag", timeout = 2 },
    }
    -- a 307 to another port of the same host: not followed
    sonde.probe {
      name = "redirected", kind = "liveness", period = 0.2, timeout = 5,
      failure_threshold = 1, action_interval = 60,
      exec = { command = { "false" } },
      on_failure = sonde.action.webhook {
        url = srv:url("/redirect?code=307&to=" .. helpers.urlencode(
          other:url("/stolen"))), timeout = 2 },
    }
    -- a 307 to the same origin: followed
    sonde.probe {
      name = "same-origin", kind = "liveness", period = 0.2, timeout = 5,
      failure_threshold = 1, action_interval = 60,
      exec = { command = { "false" } },
      on_failure = sonde.action.webhook {
        url = srv:url("/redirect?code=307&to=%2Fok"), timeout = 2 },
    }
    evs = run_until(function(e)
      return #actions(e, "same-origin", "done")
          + #actions(e, "same-origin", "failed") >= 1
        and #actions(e, "to-closed", "failed") >= 1
        and #actions(e, "redirected", "failed")
          + #actions(e, "redirected", "done") >= 1
    end)
  end)

  teardown(function()
    helpers.fresh()
    if srv then srv:stop() end
    if other then other:stop() end
  end)

  it("are named without userinfo, query string or fragment", function()
    local all = helpers.select(evs, "action", { probe = "to-closed" })
    assert.is_true(#all >= 2)
    local text = require("sonde.json").encode(all)
    assert.is_nil(text:find("pa55word", 1, true), text)
    assert.is_nil(text:find("t0ken-value", 1, true), text)
    assert.is_nil(text:find("alice", 1, true), text)
    for _, e in ipairs(all) do
      assert.is_truthy(e.action:find("^webhook http://127%.0%.0%.1:%d+/alert$"),
        e.action)
    end
  end)

  it("follow a redirect to the same scheme, host and port", function()
    assert.are.equal(1, #actions(evs, "same-origin", "done"),
      require("sonde.json").encode(helpers.select(evs, "action",
        { probe = "same-origin" })))
  end)

  it("follow no redirect to another port: a 3xx is a failed action",
    function()
    local f = actions(evs, "redirected", "failed")
    assert.are.equal(1, #f, require("sonde.json").encode(
      helpers.select(evs, "action", { probe = "redirected" })))
    assert.are.equal(0, #other:requests(), other:log())
  end)
end)

describe("webhooks over https", function()
  local dir, pid, port

  setup(function()
    dir = helpers.tmpdir()
    helpers.self_signed(dir)
    local server = helpers.tls_server(dir)
    pid, port = server.pid, server.port
  end)

  teardown(function()
    helpers.fresh()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if dir then helpers.rmtree(dir) end
  end)

  it("verify the certificate by default; tls.verify = false opts out",
    function()
    helpers.fresh()
    local url = "https://127.0.0.1:" .. port .. "/"
    for name, tls in pairs { default = false, unverified = { verify = false },
        ca = { verify = true, ca_file = dir .. "/cert.pem" } } do
      sonde.probe {
        name = name, kind = "liveness", period = 0.2, timeout = 5,
        failure_threshold = 1, action_interval = 60,
        exec = { command = { "false" } },
        on_failure = sonde.action.webhook { url = url, method = "GET",
          timeout = 3, tls = tls or nil },
      }
    end
    local function ended(e, name)
      return #actions(e, name, "done") + #actions(e, name, "failed") >= 1
    end
    local evs = run_until(function(e)
      return ended(e, "default") and ended(e, "unverified") and ended(e, "ca")
    end)
    local f = actions(evs, "default", "failed")
    assert.are.equal(1, #f)
    assert.is_truthy(f[1].detail:find("^failure tls"), f[1].detail)
    assert.are.equal(1, #actions(evs, "unverified", "done"))
    assert.are.equal(1, #actions(evs, "ca", "done"))
  end)
end)
