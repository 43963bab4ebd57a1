-- Secrets stay out of what sonde shows (lua/sonde/redact.lua and where it
-- is used): URL passwords masked as Go's url.URL.Redacted prints them, in
-- results, messages and the log; the values of env that an exec command's
-- argv was expanded with never echoed (a timeout message, a service's
-- start event, /status).
local sonde = require "sonde"
local helpers = require "helpers"
local redact = require "sonde.redact"
local json = require "sonde.json"
local endpoints = require "sonde.endpoints"
local config = require "sonde.config"

describe("sonde.redact", function()
  it("url masks a password as Go's URL.Redacted", function()
    local cases = {
      { "http://user:pass@host/p?q=1", "http://user:xxxxx@host/p?q=1" },
      { "https://user:p%40ss@h:8443/", "https://user:xxxxx@h:8443/" },
      { "http://:pass@host", "http://:xxxxx@host" },
      { "http://u:a:b@c@host/x@y", "http://u:xxxxx@host/x@y" },
      -- a user without a password stays, as in Go
      { "http://user@host/", "http://user@host/" },
      { "http://host/path?x=a@b", "http://host/path?x=a@b" },
      { "not a url", "not a url" },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[2], redact.url(c[1]), c[1])
    end
    assert.is_nil(redact.url(nil))
  end)

  it("text masks every URL in a message", function()
    assert.are.equal('Get "http://a:xxxxx@h:1/x?t=1": refused; see '
      .. "https://b:xxxxx@k/", redact.text('Get "http://a:secret@h:1/x?t=1": '
      .. "refused; see https://b:other@k/"))
    local plain = "no url here @ all"
    assert.are.equal(plain, redact.text(plain))
  end)

  it("endpoint drops userinfo, query string and fragment", function()
    assert.are.equal("https://h:8443/hook",
      redact.endpoint("https://u:p@h:8443/hook?token=abc#f"))
    assert.are.equal("http://h", redact.endpoint("http://h?x=1"))
  end)

  it("replace is plain, not a pattern", function()
    assert.are.equal("a$(X)b$(X)", redact.replace("a%.b%.", "%.", "$(X)"))
  end)
end)

describe("secrets in results, /status and the log", function()
  local srv, evs, cfg, results = nil, nil, nil, {}
  local SECRET = "s3cr3t-Value"
  local PASSWORD = "pa55w0rd"

  setup(function()
    cfg = helpers.fresh()
    srv = helpers.fixture()
    local closed = helpers.closed_port()
    local function keep(r, p) results[p.name] = r end
    -- times out: the message names the command
    sonde.probe { name = "slow", kind = "liveness", period = 0.2,
      timeout = 0.2, env = { TOKEN = SECRET }, failure_threshold = 1,
      exec = { command = { "sh", "-c", "sleep 5 # $(TOKEN)" } },
      on_result = keep,
      on_failure = sonde.action.exec { command = { "sh", "-c",
        "sleep 5 # $(TOKEN)" }, env = { TOKEN = SECRET }, timeout = 0.2 } }
    -- cannot start: the message names argv[0]
    sonde.probe { name = "missing", kind = "readiness", period = 0.2,
      env = { BIN = "/nonexistent/" .. SECRET },
      exec = { command = { "$(BIN)" } }, on_result = keep }
    sonde.probe { name = "web-creds", kind = "readiness", period = 0.2,
      http_get = { url = "http://alice:" .. PASSWORD .. "@127.0.0.1:"
        .. srv.port .. "/ok" }, on_result = keep }
    sonde.probe { name = "refused-creds", kind = "readiness", period = 0.2,
      http_get = { url = "http://alice:" .. PASSWORD .. "@127.0.0.1:"
        .. closed .. "/x" }, on_result = keep }
    sonde.service { name = "svc-secret", command = { "sh", "-c",
      "sleep 600 # $(TOKEN)" }, env = { TOKEN = SECRET } }
    local status
    local log = helpers.capture()
    local core = require "sonde.core"
    local deadline = core.now() + 10
    local function poll()
      if core.now() > deadline then return end
      local ok, e = pcall(log.all, log)
      if ok and #helpers.select(e, "action", { probe = "slow",
          status = "failed" }) >= 1
          and results.missing and results["web-creds"]
          and results["refused-creds"] then
        status = json.encode(endpoints.status(config.ambient(), true))
        helpers.stop_now()
        return
      end
      core.timer(0.05, poll)
    end
    core.timer(0.05, poll)
    local ok, err = pcall(helpers.run_for, 10)
    evs = ok and log:all() or {}
    results.status = status
    log:close()
    if not ok then error(err, 0) end
  end)

  teardown(function()
    helpers.fresh()
    if srv then srv:stop() end
  end)

  local function no_secret(text, what)
    assert.is_nil(text:find(SECRET, 1, true), what .. ": " .. text)
    assert.is_nil(text:find(PASSWORD, 1, true), what .. ": " .. text)
  end

  it("the log holds neither the env values nor the password", function()
    assert.is_true(#evs > 0)
    no_secret(json.encode(evs), "log")
  end)

  it("results show the command as written and the URL masked", function()
    local slow = results.slow
    assert.are.equal("timeout", slow.reason)
    assert.is_truthy(slow.output:find('"sh -c sleep 5 # $(TOKEN)"', 1, true),
      slow.output)
    assert.is_truthy(results.missing.output:find("^%$%(BIN%): "),
      results.missing.output)
    assert.are.equal("http://alice:xxxxx@127.0.0.1:" .. srv.port .. "/ok",
      results["web-creds"].url)
    assert.are.equal("success", results["web-creds"].status)
    assert.is_truthy(results["refused-creds"].output:find("alice:xxxxx@", 1,
      true), results["refused-creds"].output)
    for name, r in pairs(results) do
      if type(r) == "table" then no_secret(json.encode(r), name) end
    end
  end)

  it("/status (even with ?output=1) holds no secret", function()
    assert.is_string(results.status)
    no_secret(results.status, "/status")
  end)

  it("service_start shows the command as written", function()
    local s = helpers.select(evs, "service_start", { service = "svc-secret" })
    assert.is_true(#s >= 1)
    assert.are.equal("sh -c sleep 600 # $(TOKEN)", s[1].command)
  end)
end)
