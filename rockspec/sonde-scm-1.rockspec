rockspec_format = "3.0"
package = "sonde"
version = "scm-1"
source = {
  url = "git+file:///dev/null",  -- built from a checkout: luarocks make
}
description = {
  summary = "Lua-scriptable probe engine: kubelet-style exec, HTTP, TCP and gRPC probes",
  detailed = [[
    A C core running exec, HTTP (libcurl multi), TCP and gRPC health probes on one
    libevent loop, with kubelet probe semantics, exposed as a Lua 5.4 module
    and a host binary, `sonde`.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  -- Optional, not listed: lua-cjson (`cjson.safe`), loaded only when a
  -- probe declares json expectations (http_get.expect.json), which are
  -- refused without it.  Debian: lua-cjson (`make deps` installs it);
  -- else `luarocks install lua-cjson`.  Listing it here would make
  -- `luarocks make` fetch it even where Debian's package is installed
  -- (not a rock).
}
external_dependencies = {
  -- Debian keeps curl/curl.h in a multiarch directory LuaRocks does not
  -- search: the Makefile finds it through pkg-config.
  CURL = { library = "curl" },
  LIBEVENT = { header = "event2/event.h", library = "event_core" },
  -- TLS facts and TCP over TLS (libssl-dev)
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  -- DNS probes (libc-ares-dev)
  CARES = { header = "ares.h", library = "cares" },
  -- gzip-compressed endpoint answers (zlib1g-dev)
  ZLIB = { header = "zlib.h", library = "z" },
}
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    PREFIX = "$(PREFIX)",
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
    BINDIR = "$(BINDIR)",
  },
}
-- `luarocks --lua-version 5.4 test rockspec/sonde-scm-1.rockspec` from the
-- checkout: the busted suite (.busted; spec/support/setup.lua builds what
-- is missing).  Not `type = "busted"`: that looks for busted as a rock and
-- would download one, while Debian's lua-busted is not a rock.
test = {
  type = "command",
  command = "busted",
  flags = { "--lua=lua5.4" },
}
