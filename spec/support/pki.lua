-- Certificates made with the `openssl` command, and `openssl s_server`
-- serving them, for the TLS specs (spec/helpers.lua lists the API):
--
--   local pki = H.pki(dir)          -- a CA and leaves signed by it
--   pki.ca, pki.good.cert, pki.good.key, pki.soon.cert ...
--   local s = H.s_server { cert = pki.good, args = { "-tls1_2" } }
--   s.port, s:log(), s:stop()
--
-- Leaves (all signed by the CA "CN=sonde test CA,O=sonde test"):
--   good     CN good.sonde.test, DNS good.sonde.test + localhost, IP
--            127.0.0.1, 90 days
--   soon     CN soon.sonde.test, IP 127.0.0.1, 5 days
--   expired  CN expired.sonde.test, IP 127.0.0.1, 2020-01-01..2020-02-01
--   epoch    CN epoch.sonde.test, IP 127.0.0.1, ..1970-01-01T00:00:00Z (0)
--   other    CN other.sonde.test, DNS other.sonde.test only, 90 days
--   client   CN client.sonde.test, a client certificate, 90 days
return function(H)
  local q = H.q

  local function sh(cmd)
    local code, out = H.sh(cmd)
    assert(code == 0, cmd .. " failed: " .. tostring(out))
    return out
  end

  local LEAVES = {
    { "good", "good.sonde.test",
      "DNS:good.sonde.test,DNS:localhost,IP:127.0.0.1", "-days 90" },
    { "soon", "soon.sonde.test", "DNS:soon.sonde.test,IP:127.0.0.1",
      "-days 5" },
    { "expired", "expired.sonde.test", "DNS:expired.sonde.test,IP:127.0.0.1",
      "-startdate 20200101000000Z -enddate 20200201000000Z" },
    { "epoch", "epoch.sonde.test", "DNS:epoch.sonde.test,IP:127.0.0.1",
      "-startdate 691231000000Z -enddate 700101000000Z" },
    { "other", "other.sonde.test", "DNS:other.sonde.test", "-days 90" },
    { "client", "client.sonde.test", "DNS:client.sonde.test", "-days 90" },
  }

  --- A CA and the leaves above in dir: { ca = path, ca_key = path,
  -- <leaf> = { cert = path, key = path } }.
  function H.pki(dir)
    local pki = { dir = dir, ca = dir .. "/ca.pem", ca_key = dir .. "/ca.key" }
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "
      .. q(pki.ca_key) .. " -out " .. q(pki.ca)
      .. " -subj '/O=sonde test/CN=sonde test CA' 2>&1")
    sh("mkdir -p " .. q(dir .. "/newcerts"))
    H.write(dir .. "/index.txt", "")
    H.write(dir .. "/serial", "1000\n")
    H.write(dir .. "/ca.cnf", table.concat({
      "[ca]", "default_ca = d", "[d]",
      "database = " .. dir .. "/index.txt",
      "new_certs_dir = " .. dir .. "/newcerts",
      "serial = " .. dir .. "/serial",
      "default_md = sha256", "policy = p", "copy_extensions = copy",
      "unique_subject = no", "[p]", "commonName = supplied", "" }, "\n"))
    for _, l in ipairs(LEAVES) do
      local name, cn, san, dates = l[1], l[2], l[3], l[4]
      local base = dir .. "/" .. name
      sh("openssl req -newkey rsa:2048 -nodes -keyout " .. q(base .. ".key")
        .. " -out " .. q(base .. ".csr") .. " -subj " .. q("/CN=" .. cn)
        .. " -addext " .. q("subjectAltName=" .. san) .. " 2>&1")
      sh("openssl ca -batch -notext -config " .. q(dir .. "/ca.cnf")
        .. " -cert " .. q(pki.ca) .. " -keyfile " .. q(pki.ca_key)
        .. " -in " .. q(base .. ".csr") .. " -out " .. q(base .. ".pem")
        .. " " .. dates .. " 2>&1")
      pki[name] = { cert = base .. ".pem", key = base .. ".key" }
    end
    return pki
  end

  --- `openssl x509 -noout <what>` of a certificate: its output, trimmed.
  function H.x509(cert, what)
    return (sh("openssl x509 -noout -in " .. q(cert) .. " " .. what)
      :gsub("%s+$", ""))
  end

  --- A certificate's notAfter as seconds since the epoch (from `openssl
  -- x509 -enddate`, converted by date(1)).
  function H.not_after(cert)
    local s = H.x509(cert, "-enddate"):match("^notAfter=(.*)$")
    return tonumber((sh("date -u -d " .. q(s) .. " +%s"):gsub("%s+$", "")))
  end

  local remember
  remember, H.stop_s_servers = H.registry("stop")

  --- `openssl s_server -www` on 127.0.0.1, on a free port (random ones
  -- tried until it says ACCEPT).  opts: cert = { cert, key }, args =
  -- extra arguments (array of strings).  Returns { port, pid, log(),
  -- stop() }.
  function H.s_server(opts)
    local dir = H.scratch()
    local out = dir .. "/server.out"
    local extra = {}
    for i, a in ipairs(opts.args or {}) do extra[i] = q(a) end
    for _ = 1, 20 do
      local port = math.random(20000, 60000)
      local p = io.popen("exec openssl s_server -accept 127.0.0.1:" .. port
        .. " -cert " .. q(opts.cert.cert) .. " -key " .. q(opts.cert.key)
        .. " " .. table.concat(extra, " ") .. " -www > " .. q(out)
        .. " 2>&1 < /dev/null & echo $!")
      local pid = tonumber(p:read("l"))
      p:close()
      local ok = H.eventually(function()
        local text = H.read_file(out) or ""
        return text:find("ACCEPT", 1, true) or text:find("rror", 1, true)
      end, 5)
      if ok and (H.read_file(out) or ""):find("ACCEPT", 1, true) then
        local s = { port = port, pid = pid }
        function s.log() return H.read_file(out) or "" end
        function s.stop()
          if s.pid then os.execute("kill " .. s.pid .. " 2>/dev/null") end
          s.pid = nil
        end
        remember(s)
        return s
      end
      os.execute("kill " .. pid .. " 2>/dev/null")
    end
    error("could not start openssl s_server: " .. (H.read_file(out) or ""), 2)
  end
end
