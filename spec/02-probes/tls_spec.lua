-- HTTPS: the kubelet does not verify certificates; tls.verify and
-- tls.ca_file turn verification on.  The server is `openssl s_server` on
-- 127.0.0.1 with a self-signed certificate made for the test.
local sonde = require "sonde"
local helpers = require "helpers"

local q = helpers.shell_quote

describe("https", function()
  local dir, pid, port

  lazy_setup(function()
    dir = helpers.tmpdir()
    assert(os.execute("openssl req -x509 -newkey rsa:2048 -nodes -days 2"
      .. " -keyout " .. q(dir .. "/key.pem") .. " -out " .. q(dir .. "/cert.pem")
      .. " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
      .. " >/dev/null 2>&1"), "openssl req failed")
    -- find a free port: try a few until s_server says ACCEPT
    for _ = 1, 20 do
      port = math.random(20000, 60000)
      local out = dir .. "/server.out"
      local p = io.popen("openssl s_server -accept 127.0.0.1:" .. port
        .. " -cert " .. q(dir .. "/cert.pem") .. " -key " .. q(dir .. "/key.pem")
        .. " -www > " .. q(out) .. " 2>&1 & echo $!")
      pid = tonumber(p:read("l"))
      p:close()
      local ok = helpers.eventually(function()
        local text = helpers.read_file(out) or ""
        return text:find("ACCEPT", 1, true) or text:find("error", 1, true)
      end, 5)
      if ok and (helpers.read_file(out) or ""):find("ACCEPT", 1, true) then
        return
      end
      os.execute("kill " .. pid .. " 2>/dev/null")
      pid = nil
    end
    error("could not start openssl s_server")
  end)

  lazy_teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if dir then helpers.rmtree(dir) end
  end)

  local function get(spec)
    return helpers.run(function() return sonde.http_get(spec) end, 10)
  end

  it("does not verify the certificate by default (kubelet)", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5 }
    assert.are.equal("success", r.status)
    assert.are.equal(200, r.http_status)
  end)

  it("scheme HTTPS in kubelet form works the same", function()
    local r = get { scheme = "HTTPS", port = port, timeout = 5 }
    assert.are.equal("success", r.status)
    assert.are.equal("https://127.0.0.1:" .. port .. "/", r.url)
  end)

  it("tls.verify with an unknown issuer is failure reason tls", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5,
                    tls = { verify = true } }
    assert.are.equal("failure", r.status)
    assert.are.equal("tls", r.reason)
  end)

  it("tls.verify with the issuer as ca_file is success", function()
    local r = get { url = "https://127.0.0.1:" .. port .. "/", timeout = 5,
                    tls = { verify = true, ca_file = dir .. "/cert.pem" } }
    assert.are.equal("success", r.status)
  end)

  it("plain HTTP to the TLS port is failure reason protocol", function()
    local r = get { url = "http://127.0.0.1:" .. port .. "/", timeout = 5 }
    assert.are.equal("failure", r.status)
    assert.are.equal("protocol", r.reason)
  end)

  it("tls fields are checked", function()
    assert.has_error(function()
      sonde.http_get({ url = "https://127.0.0.1:1/", tls = { verify = "yes" } },
        function() end)
    end)
    assert.has_error(function()
      sonde.http_get({ url = "https://127.0.0.1:1/", tls = { bogus = 1 } },
        function() end)
    end)
  end)
end)
