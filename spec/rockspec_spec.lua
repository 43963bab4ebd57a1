-- Installing: `luarocks make` from the checkout into a temporary tree, and
-- `make install PREFIX=...`; then the installed module and host are used
-- with only that tree's paths (no LUA_PATH/LUA_CPATH from the build).
local helpers = require "helpers"

local q = helpers.q
local root = helpers.root

-- Run a shell command with a clean Lua environment: exit code, output.
local function sh(cmd)
  -- (MAKEFLAGS and SANITIZE would carry an outer `make check SANITIZE=1`
  -- into our make)
  return helpers.sh("env -u LUA_PATH -u LUA_CPATH -u LD_PRELOAD -u MAKEFLAGS"
    .. " -u MFLAGS -u MAKELEVEL -u SANITIZE sh -c " .. q(cmd))
end

local function check_tree(tree, luadir, libdir)
  local paths = "LUA_PATH=" .. q(luadir .. "/?.lua;" .. luadir .. "/?/init.lua")
    .. " LUA_CPATH=" .. q(libdir .. "/?.so")
  local rc, out = sh(paths .. " lua5.4 -e 'print(require(\"sonde\").version)'")
  assert.are.equal(0, rc, out)
  assert.matches("^%d+%.%d+%.%d+\n", out)
  rc, out = sh(q(tree .. "/bin/sonde") .. " --version")
  assert.are.equal(0, rc, out)
  assert.matches("^sonde %d+%.%d+%.%d+", out)
  -- `once` on an example: nothing listens on port 1, so both fail (exit 1)
  rc, out = sh("SONDE_TCP_PORT=1 " .. q(tree .. "/bin/sonde") .. " once "
    .. q(root .. "/examples/tcp.lua"))
  assert.are.equal(1, rc, out)
  assert.matches("db%-tcp%s+failure%s+connect_refused", out)
  assert.matches("db%-tcp%-v6%s+failure%s+connect_refused", out)
  -- the installed host searches its own prefix first, nothing outside it
  local show = tree .. "/paths.lua"
  helpers.write(show, "print(package.path:match('^[^;]*'))\n"
    .. "print(package.cpath:match('^[^;]*'))\n")
  rc, out = sh(q(tree .. "/bin/sonde") .. " " .. q(show))
  assert.are.equal(0, rc, out)
  assert.are.equal(tree .. "/bin/../share/lua/5.4/?.lua\n"
    .. tree .. "/bin/../lib/lua/5.4/?.so\n", out)
end

describe("installation", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmtree(dir) end)

  it("luarocks make installs the module, its Lua files and the host", function()
    local rc, out = sh("cd " .. q(root) .. " && luarocks --lua-version 5.4 make"
      .. " --tree " .. q(dir) .. " rockspec/sonde-scm-1.rockspec")
    assert.are.equal(0, rc, out)
    check_tree(dir, dir .. "/share/lua/5.4", dir .. "/lib/lua/5.4")
  end)

  it("make install PREFIX=... works the same", function()
    local rc, out = sh("cd " .. q(root) .. " && make -s install PREFIX=" .. q(dir))
    assert.are.equal(0, rc, out)
    check_tree(dir, dir .. "/share/lua/5.4", dir .. "/lib/lua/5.4")
    -- where examples/sonde.service's Documentation= points, under PREFIX
    assert.are.equal(helpers.read_file(root .. "/README.md"),
      helpers.read_file(dir .. "/share/doc/sonde/README.md"))
  end)

  it("the module does not link liblua, and the host loads C modules", function()
    local build = helpers.build
    local so = build .. "/lib/sonde/core.so"
    local rc, out = sh("ldd " .. q(so))
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("liblua", 1, true), out)
    local script = dir .. "/load.lua"
    helpers.write(script, string.format([[
      local open = assert(package.loadlib(%q, "luaopen_sonde_core"))
      print("loaded " .. open().version)
    ]], so))
    rc, out = sh(q(build .. "/bin/sonde") .. " " .. q(script))
    assert.are.equal(0, rc, out)
    assert.matches("loaded %d+%.%d+%.%d+", out)
  end)
end)
