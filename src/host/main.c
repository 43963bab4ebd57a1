/*
 * host/main.c - the `sonde` host binary.
 *
 * Sets up a Lua state and hands the command line to
 * lua/sonde/host/init.lua (`sonde --help` lists the commands).  The host
 * finds its Lua modules relative to its own executable: in the build
 * tree (build/bin/sonde -> build/lib, lua/) or in an installed prefix
 * (PREFIX/bin/sonde -> PREFIX/lib/lua/5.4, PREFIX/share/lua/5.4), ahead of
 * LUA_PATH/LUA_CPATH and Lua's defaults.  The core is not linked in: it
 * is the module `sonde.core` (core.so), loaded from there like any C
 * module, so the host and `require "sonde"` share one copy of it.
 *
 * Exit status: what host.main returns; 1 on an uncaught error (printed
 * with a traceback on stderr).
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Directory of the running executable (malloc'd), or NULL. */
static char *exe_dir(void) {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return NULL;
  buf[n] = '\0';
  char *slash = strrchr(buf, '/');
  if (!slash) return NULL;
  *slash = '\0';
  return strdup(buf);
}

/* Prepend where this host's Lua files are to package.path and
 * package.cpath: the build tree when the executable is build/bin/sonde of a
 * checkout (lua/sonde/init.lua two levels up), else its installed prefix.
 * Nothing outside that tree or prefix is searched before Lua's defaults. */
static void set_paths(lua_State *L) {
  char *d = exe_dir();
  if (!d) return;
  char marker[PATH_MAX];
  snprintf(marker, sizeof marker, "%s/../../lua/sonde/init.lua", d);
  int build_tree = access(marker, R_OK) == 0;
  lua_getglobal(L, "package");
  if (build_tree)
    lua_pushfstring(L, "%s/../../lua/?.lua;%s/../../lua/?/init.lua;", d, d);
  else
    lua_pushfstring(L, "%s/../share/lua/5.4/?.lua;"
                       "%s/../share/lua/5.4/?/init.lua;", d, d);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  if (build_tree)
    lua_pushfstring(L, "%s/../lib/?.so;", d);
  else
    lua_pushfstring(L, "%s/../lib/lua/5.4/?.so;", d);
  lua_getfield(L, -2, "cpath");
  lua_concat(L, 2);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  free(d);
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)",
                                  luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* host.main(args) -> exit code (lua/sonde/host.lua). */
static int run_host(lua_State *L) {
  int n = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sonde.host");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i);
  }
  lua_call(L, 1, 1);
  return 1;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "sonde: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(L);
  set_paths(L);
  /* the command line as the global `arg`, like lua.c */
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, msgh);
  lua_pushcfunction(L, run_host);
  for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
  int status = 1;
  if (lua_pcall(L, argc - 1, 1, 1) != LUA_OK) {
    fprintf(stderr, "sonde: %s\n", lua_tostring(L, -1));
  } else {
    status = (int)luaL_optinteger(L, -1, 0);
  }
  lua_close(L);
  return status;
}
