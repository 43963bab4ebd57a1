-- sonde.validate: declarative schemas, the checks they are made of, and
-- the location rule (errors are raised at the first caller outside
-- sonde's own Lua directory).
local validate = require "sonde.validate"
local helpers = require "helpers"
local checks = validate.checks

-- This file as error positions name it.
local HERE = debug.getinfo(1, "S").short_src

-- The message of the error f(...) raises, without its position, which
-- must be a line of this file (the caller outside sonde).
local function err(f, ...)
  local args = table.pack(...)
  return helpers.error_here(function()
    local _ = f(table.unpack(args, 1, args.n))   -- (not a tail call)
  end)
end

local W = { where = "w" }

-- check `name` on v with rule r; its error message without position
local function cerr(name, v, r, ctx)
  return err(checks[name], ctx or W, v, "f", r)
end

local NAN = 0 / 0
local INF = math.huge

describe("sonde.validate schemas", function()
  local TCP = validate.schema {
    { "host", "host", default = "127.0.0.1" },
    { "port", "port", required = true },
    { "timeout", "seconds", default = 1 },
  }

  it("fills defaults and returns a new table", function()
    local spec = { port = 8080 }
    local out = TCP:apply(W, spec)
    assert.same({ host = "127.0.0.1", port = 8080, timeout = 1 }, out)
    assert.are_not.equal(spec, out)
    assert.same({ port = 8080 }, spec)
  end)

  it("keeps given values (false included) and normalises them", function()
    local S = validate.schema {
      { "verify", "boolean", default = true },
      { "n", "count", default = 7 },
      { "port", "port" },
    }
    assert.same({ verify = false, n = 3, port = 80 },
      S:apply(W, { verify = false, n = 3.0, port = 80.0 }))
    assert.equal("integer", math.type(S:apply(W, { n = 3.0 }).n))
    assert.same({ verify = true, n = 7 }, S:apply(W, {}))
  end)

  it("an empty host gets the rule's default", function()
    assert.same({ host = "127.0.0.1", port = 1, timeout = 1 },
      TCP:apply(W, { host = "", port = 1 }))
  end)

  it("requires required fields", function()
    assert.equal("w: port: is required", err(TCP.apply, TCP, W, {}))
    assert.equal('probe "x": tcp_socket.port: is required',
      err(TCP.apply, TCP, { where = 'probe "x"', prefix = "tcp_socket." },
        { host = "a" }))
  end)

  it("rejects unknown fields", function()
    assert.equal('w: unknown field "x"',
      err(TCP.apply, TCP, W, { port = 1, x = 1 }))
    assert.equal("w: unknown field 1",
      err(TCP.apply, TCP, W, { port = 1, [1] = true }))
    assert.equal('probe "x": http_get: unknown field "x"',
      err(TCP.apply, TCP, { where = 'probe "x"', prefix = "http_get." },
        { port = 1, x = 1 }))
  end)

  it("rejects a spec that is not a table", function()
    assert.equal("w: spec: must be a table, got number",
      err(TCP.apply, TCP, W, 5))
    assert.equal('probe "x": http_get: must be a table, got number',
      err(TCP.apply, TCP, { where = 'probe "x"', prefix = "http_get." }, 5))
  end)

  describe("nested schemas", function()
    local TLS = validate.schema {
      { "verify", "boolean", default = false },
      { "ca_file", "string" },
    }
    local HTTP = validate.schema {
      { "port", "port" },
      { "path", "string", default = "/" },
      { "tls", TLS },
    }
    local P = { where = 'probe "x"', prefix = "http_get." }

    it("check with the field path as prefix", function()
      assert.equal('probe "x": http_get.port: must be 1..65535, got 70000',
        err(HTTP.apply, HTTP, P, { port = 70000 }))
      assert.equal('probe "x": http_get.tls.verify: must be a boolean, got '
        .. "string", err(HTTP.apply, HTTP, P, { tls = { verify = "yes" } }))
      assert.equal('probe "x": http_get.tls: must be a table, got number',
        err(HTTP.apply, HTTP, P, { tls = 5 }))
    end)

    it("reject unknown fields with their path", function()
      assert.equal('w: tls: unknown field "x"',
        err(HTTP.apply, HTTP, W, { tls = { x = 1 } }))
      assert.equal('probe "x": http_get.tls: unknown field "x"',
        err(HTTP.apply, HTTP, P, { tls = { verify = true, x = 1 } }))
    end)

    it("fill their own defaults", function()
      assert.same({ path = "/", tls = { verify = false } },
        HTTP:apply(W, { tls = {} }))
      assert.same({ path = "/" }, HTTP:apply(W, {}))
    end)
  end)

  it("reports the first bad field in the schema's order", function()
    assert.equal("w: port: must be 1..65535, got 0",
      err(TCP.apply, TCP, W, { timeout = -1, port = 0 }))
  end)

  it("calls function types with (ctx, value, field, rule)", function()
    local got
    local function upper(ctx, v, field, rule)
      got = { ctx = ctx, v = v, field = field, extra = rule.extra }
      if type(v) ~= "string" then
        validate.fail(ctx, field, "must be a word, got %s", validate.show(v))
      end
      return v:upper()
    end
    local S = validate.schema { { "word", upper, extra = 42 } }
    local N = validate.schema { { "inner", S } }
    assert.same({ inner = { word = "HI" } }, N:apply(W, { inner = { word = "hi" } }))
    assert.same({ ctx = W, v = "hi", field = "inner.word", extra = 42 }, got)
    assert.equal("w: inner.word: must be a word, got 5",
      err(N.apply, N, W, { inner = { word = 5 } }))
  end)

  it("refuses a rule naming an unknown check, at the caller", function()
    assert.equal("validate.schema: unknown check nope", err(function()
      local s = validate.schema { { "a", "nope" } }   -- the error is here
      return s
    end))
  end)

  it("is_schema", function()
    assert.is_true(validate.is_schema(TCP))
    assert.is_false(validate.is_schema({}))
    assert.is_false(validate.is_schema("port"))
  end)

  it("fail without a field names the spec as a whole", function()
    assert.equal("sonde.exec: bad 3",
      err(validate.fail, { where = "sonde.exec" }, nil, "bad %d", 3))
    assert.equal("sonde.exec: exec: bad",
      err(validate.fail, { where = "sonde.exec", prefix = "exec." }, nil,
        "bad"))
  end)
end)

describe("sonde.validate checks", function()
  it("seconds", function()
    assert.equal(0.5, checks.seconds(W, 0.5, "f"))
    assert.equal(1e9, checks.seconds(W, 1e9, "f"))
    assert.equal(0, checks.seconds(W, 0, "f", { allow_zero = true }))
    assert.equal("w: f: must be > 0, got 0", cerr("seconds", 0))
    assert.equal("w: f: must be > 0, got -0.5", cerr("seconds", -0.5))
    assert.equal("w: f: must be >= 0, got -1",
      cerr("seconds", -1, { allow_zero = true }))
    assert.equal("w: f: must be >= 0.1, got 0.05",
      cerr("seconds", 0.05, { min = 0.1 }))
    assert.equal(0.1, checks.seconds(W, 0.1, "f", { min = 0.1 }))
    assert.equal("w: f: must be at most 1e+09 seconds, got 1000000001",
      cerr("seconds", 1000000001))
    assert.equal("w: f: must be at most 1e+09 seconds, got 2e+20",
      cerr("seconds", 2e20))
    assert.equal("w: f: must be a number of seconds, got " .. tostring(NAN),
      cerr("seconds", NAN))
    assert.equal("w: f: must be a number of seconds, got inf",
      cerr("seconds", INF))
    assert.equal("w: f: must be > 0, got -inf", cerr("seconds", -INF))
    assert.equal('w: f: must be a number of seconds, got "5"',
      cerr("seconds", "5"))
    assert.equal("w: f: must be a number of seconds, got true",
      cerr("seconds", true))
  end)

  it("count", function()
    assert.equal(3, checks.count(W, 3, "f"))
    assert.equal("integer", math.type(checks.count(W, 3.0, "f")))
    assert.equal(0, checks.count(W, 0, "f"))
    assert.equal(1 << 60, checks.count(W, 1 << 60, "f"))
    assert.equal("w: f: must be a whole number, got 2.5", cerr("count", 2.5))
    assert.equal('w: f: must be a whole number, got "3"', cerr("count", "3"))
    assert.equal("w: f: must be a whole number, got inf", cerr("count", INF))
    assert.equal("w: f: must be a whole number, got " .. tostring(NAN),
      cerr("count", NAN))
    assert.equal("w: f: must be a whole number, got 9.007199254741e+15",
      cerr("count", 2.0 ^ 53))
    assert.equal("w: f: must be >= 0, got -1", cerr("count", -1))
    assert.equal("w: f: must be >= 1, got 0", cerr("count", 0, { min = 1 }))
  end)

  it("string", function()
    assert.equal("a", checks.string(W, "a", "f"))
    assert.equal("", checks.string(W, "", "f"))
    assert.equal("a\0b", checks.string(W, "a\0b", "f", { allow_nul = true }))
    assert.equal("w: f: must be a string, got number", cerr("string", 5))
    assert.equal("w: f: must not contain a NUL byte", cerr("string", "a\0b"))
    assert.equal("w: f: must be a non-empty string",
      cerr("string", "", { nonempty = true }))
  end)

  it("boolean, table, function", function()
    assert.is_false(checks.boolean(W, false, "f"))
    assert.equal("w: f: must be a boolean, got string", cerr("boolean", "true"))
    assert.equal("w: f: must be a table, got string", cerr("table", "x"))
    assert.equal("w: f: must be a function, got table", cerr("function", {}))
  end)

  it("array", function()
    local t = { 1, 2 }
    assert.equal(t, checks.array(W, t, "f"))
    assert.same({}, checks.array(W, {}, "f"))
    assert.equal("w: f: must be an array without holes (element 2 is nil)",
      cerr("array", { 1, nil, 3 }))
    assert.equal('w: f: must be an array (bad key "x")',
      cerr("array", { 1, x = 2 }))
    assert.equal("w: f: must be an array (bad key 0)",
      cerr("array", { [0] = 1 }))
    assert.equal("w: f: must be an array (bad key 1.5)",
      cerr("array", { [1.5] = 1 }))
  end)

  it("strings", function()
    local t = { "ls", "-l" }
    assert.equal(t, checks.strings(W, t, "f"))
    assert.same({}, checks.strings(W, {}, "f"))
    assert.equal("w: f: must be a table, got string", cerr("strings", "ls"))
    assert.equal("w: f: must not be empty",
      cerr("strings", {}, { nonempty = true }))
    assert.equal("w: f: must be an array without holes (element 2 is nil)",
      cerr("strings", { "a", nil, "c" }))
    assert.equal("w: f[2]: must be a string, got number",
      cerr("strings", { "a", 1 }))
    assert.equal("w: f[3]: must not contain a NUL byte",
      cerr("strings", { "a", "b", "c\0" }))
    assert.equal('probe "x": exec.command[2]: must be a string, got boolean',
      err(checks.strings, { where = 'probe "x"', prefix = "exec." },
        { "a", true }, "command"))
  end)

  it("env", function()
    local e = { PATH = "/bin", ZONE = "z", A_B = "" }
    assert.equal(e, checks.env(W, e, "env"))
    assert.equal("w: f: must be a table, got string", cerr("env", "A=B"))
    assert.equal('w: f: invalid variable name ""', cerr("env", { [""] = "x" }))
    assert.equal('w: f: invalid variable name "A=B"',
      cerr("env", { ["A=B"] = "x" }))
    assert.equal('w: f: invalid variable name "A\\0"',
      cerr("env", { ["A\0"] = "x" }))
    assert.equal("w: f: invalid variable name 1", cerr("env", { "x" }))
    assert.equal("w: f.A: must be a string, got number", cerr("env", { A = 1 }))
    assert.equal("w: f.A: must not contain a NUL byte",
      cerr("env", { A = "x\0y" }))
  end)

  it("port_number and port", function()
    assert.equal(1, checks.port_number(W, 1, "f"))
    assert.equal(65535, checks.port_number(W, 65535, "f"))
    local p = checks.port_number(W, 80.0, "f")
    assert.equal(80, p)
    assert.equal("integer", math.type(p))
    assert.equal("w: f: must be 1..65535, got 0", cerr("port_number", 0))
    assert.equal("w: f: must be 1..65535, got 65536", cerr("port_number", 65536))
    assert.equal("w: f: must be 1..65535, got -1", cerr("port_number", -1))
    assert.equal("w: f: must be 1..65535, got inf", cerr("port_number", INF))
    assert.equal("w: f: must be a port number 1..65535, got 80.5",
      cerr("port_number", 80.5))
    assert.equal('w: f: must be a port number 1..65535, got "80"',
      cerr("port_number", "80"))
    assert.equal("w: f: must be a port number 1..65535, got " .. tostring(NAN),
      cerr("port_number", NAN))
    -- port: a number, or a name kept for port_of
    assert.equal("http", checks.port(W, "http", "f"))
    assert.equal(8080, checks.port(W, 8080, "f"))
    assert.equal("w: f: must be 1..65535, got 70000", cerr("port", 70000))
    assert.equal("w: f: must be a port number 1..65535, got true",
      cerr("port", true))
  end)

  it("ports", function()
    local ps = { { name = "http", port = 8080 }, { port = 9090 } }
    assert.equal(ps, checks.ports(W, ps, "ports"))
    assert.equal("w: f[2].port: is required",
      cerr("ports", { { name = "a", port = 1 }, { name = "b" } }))
    assert.equal('w: f[1]: unknown field "proto"',
      cerr("ports", { { port = 1, proto = "TCP" } }))
    assert.equal("w: f[1].port: must be 1..65535, got 0",
      cerr("ports", { { port = 0 } }))
    assert.equal("w: f[1].name: must be a string, got number",
      cerr("ports", { { name = 1, port = 1 } }))
    assert.equal("w: f[1]: must be a table, got number", cerr("ports", { 5 }))
    assert.equal("w: f: must be an array without holes (element 1 is nil)",
      cerr("ports", { [2] = { port = 1 } }))
  end)

  it("port_of resolves named ports (first match wins)", function()
    local ports = { { name = "metrics", port = 9100 },
                    { name = "http", port = 8080.0 },
                    { name = "http", port = 1 } }
    assert.equal(9100, validate.port_of(W, "metrics", ports, "port"))
    local p = validate.port_of(W, "http", ports, "port")
    assert.equal(8080, p)
    assert.equal("integer", math.type(p))
    assert.equal(80, validate.port_of(W, 80, ports, "port"))
    assert.equal(80, validate.port_of(W, 80, nil, "port"))
    assert.equal('w: port: port "web" not found in ports',
      err(validate.port_of, W, "web", ports, "port"))
    assert.equal('probe "x": http_get.port: port "web" not found in ports',
      err(validate.port_of, { where = 'probe "x"', prefix = "http_get." },
        "web", nil, "port"))
  end)

  it("host", function()
    local D = { default = "127.0.0.1" }
    for _, h in ipairs { "example.com", "a-b.example", "localhost", "10.0.0.1",
                         "::1", "fe80::1%eth0", "2001:db8::8a2e:370:7334",
                         "::ffff:192.0.2.1", "under_score", ("a"):rep(253) } do
      assert.equal(h, checks.host(W, h, "f", D))
    end
    assert.equal("127.0.0.1", checks.host(W, "", "f", D))
    assert.is_nil(checks.host(W, "", "f"))
    assert.equal('w: f: IPv6 addresses are given without brackets, got "[::1]"',
      cerr("host", "[::1]", D))
    assert.equal('w: f: IPv6 addresses are given without brackets, got '
      .. '"[::1]:80"', cerr("host", "[::1]:80", D))
    assert.equal('w: f: must not include a port (use port), got '
      .. '"example.com:80"', cerr("host", "example.com:80", D))
    assert.equal('w: f: must not include a port (use port), got "1.2.3.4:1"',
      cerr("host", "1.2.3.4:1", D))
    assert.equal('w: f: not a host name or IP address: "a b"',
      cerr("host", "a b", D))
    assert.equal('w: f: not a host name or IP address: "a/b"',
      cerr("host", "a/b", D))
    assert.equal('w: f: not a host name or IP address: "h@x"',
      cerr("host", "h@x", D))
    assert.equal('w: f: not a host name or IP address: "gg::1"',
      cerr("host", "gg::1", D))
    assert.equal('w: f: not a host name or IP address: "' .. ("a"):rep(254)
      .. '"', cerr("host", ("a"):rep(254), D))
    assert.equal("w: f: must not contain a NUL byte", cerr("host", "a\0b", D))
    assert.equal("w: f: must be a string, got number", cerr("host", 1, D))
  end)

  it("enum", function()
    local K = { values = { "liveness", "readiness", "startup" } }
    assert.equal("startup", checks.enum(W, "startup", "kind", K))
    assert.equal('w: kind: must be liveness, readiness or startup, got "x"',
      err(checks.enum, W, "x", "kind", K))
    assert.equal("w: kind: must be liveness, readiness or startup, got 1",
      err(checks.enum, W, 1, "kind", K))
    assert.equal('w: f: must be log or discard, got "LOG"',
      cerr("enum", "LOG", { values = { "log", "discard" } }))
  end)

  it("enum of one value names it alone", function()
    assert.equal('w: f: must be a, got "b"', cerr("enum", "b", { values = { "a" } }))
  end)

  it("show quotes strings only", function()
    assert.equal('"a\\"b"', validate.show('a"b'))
    assert.equal("5", validate.show(5))
    assert.equal("nil", validate.show(nil))
  end)
end)

describe("sonde.validate location", function()
  local own_file = debug.getinfo(validate.fail, "S").source
  local own_dir = own_file:match("^(@.*/)[^/]+$")

  it("is_own_source: sonde's own Lua directory, nothing else", function()
    assert.equal("@", own_file:sub(1, 1))
    assert.is_true(validate.is_own_source(own_file))
    assert.is_true(validate.is_own_source(
      debug.getinfo(require("sonde.worker").step, "S").source))
    assert.is_true(validate.is_own_source(own_dir .. "host/run.lua"))
    assert.is_false(validate.is_own_source(debug.getinfo(1, "S").source))
    assert.is_false(validate.is_own_source("@/etc/sonde/probes.lua"))
    assert.is_false(validate.is_own_source("@/tmp/x/etc/sonde/probes.lua"))
    assert.is_false(validate.is_own_source(own_dir:sub(1, -2) .. "-extra/a.lua"))
    assert.is_false(validate.is_own_source(own_dir:sub(2) .. "a.lua"))
    assert.is_false(validate.is_own_source("=stdin"))
    assert.is_false(validate.is_own_source("=[C]"))
  end)

  describe("with a user's file", function()
    local base, dir

    setup(function()
      base = helpers.tmpdir()
      dir = base .. "/etc/sonde"
      assert(os.execute("mkdir -p " .. helpers.q(dir)))
    end)

    teardown(function() helpers.rmtree(base) end)

    local function write(name, text)
      return helpers.write(dir .. "/" .. name, text)
    end

    it("an error through validate.fail is at the user's file and line",
      function()
      local path = write("probes.lua", table.concat({
        'local validate = require "sonde.validate"',
        'local S = validate.schema { { "port", "port", required = true } }',
        'S:apply({ where = \'probe "x"\', prefix = "http_get." }, { port = 70000 })',
        'return "not reached"',
      }, "\n") .. "\n")
      assert.is_true(#path < 60)   -- no "..." shortening in positions
      local ok, e = pcall(dofile, path)
      assert.is_false(ok)
      assert.equal(path .. ':3: probe "x": http_get.port: must be 1..65535, '
        .. "got 70000", e)
    end)

    it("through nested schemas, the innermost user frame is named",
      function()
      local path = write("nested.lua", table.concat({
        'local validate = require "sonde.validate"',
        'local TLS = validate.schema { { "verify", "boolean" } }',
        'local S = validate.schema { { "tls", TLS } }',
        "local function declare(spec)",
        "  local out = S:apply({ where = 'probe \"y\"' }, spec)",
        "  return out",
        "end",
        "declare { tls = { verify = true } }",
        "declare { tls = { verify = 1 } }",
      }, "\n") .. "\n")
      local ok, e = pcall(dofile, path)
      assert.is_false(ok)
      assert.equal(path .. ':5: probe "y": tls.verify: must be a boolean, '
        .. "got number", e)
    end)
  end)

  it("raise is at the caller outside sonde", function()
    local ok, e = pcall(validate.raise, "sonde.x: bad")
    local line = debug.getinfo(1, "l").currentline - 1
    assert.is_false(ok)
    assert.equal(HERE .. ":" .. line .. ": sonde.x: bad", e)
  end)

  it("fail from a check in this file is at the check's line", function()
    local line
    local S = validate.schema { { "a", function(ctx, v, field)
      line = debug.getinfo(1, "l").currentline + 1
      validate.fail(ctx, field, "no %s", v)
    end } }
    local ok, e = pcall(S.apply, S, W, { a = "x" })
    assert.is_false(ok)
    assert.equal(HERE .. ":" .. line .. ": w: a: no x", e)
  end)
end)
