/*
 * host/main.c - the `sonde` host binary: runs a Lua script on sonde's loop.
 *
 *   sonde SCRIPT.lua [ARGS...]
 *
 * The script runs as a sonde task (it may call the probers, sonde.sleep and
 * sonde.spawn directly), then the loop runs until no work is pending.  The
 * host finds its Lua modules relative to its own executable: in the build
 * tree (build/bin/sonde -> build/lib, lua/) and in an installed prefix
 * (PREFIX/bin/sonde -> PREFIX/lib/lua/5.4, PREFIX/share/lua/5.4), ahead of
 * LUA_PATH/LUA_CPATH and Lua's defaults.  `sonde.core` is linked in.
 *
 * Exit status: 0 when the script and the loop finished, 1 on an error
 * (printed with a traceback on stderr), 2 on a usage error.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sonde/sonde.h"

int luaopen_sonde_core(lua_State *L);

static void usage(FILE *f) {
  fprintf(f,
          "usage: sonde SCRIPT.lua [ARGS...]\n"
          "       sonde --version | --help\n"
          "Runs SCRIPT on sonde's event loop until no work is pending.\n");
}

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

/* Prepend the build-tree and installed-prefix locations to package.path
 * and package.cpath. */
static void set_paths(lua_State *L) {
  char *d = exe_dir();
  if (!d) return;
  lua_getglobal(L, "package");
  lua_pushfstring(L,
                  "%s/../../lua/?.lua;%s/../../lua/?/init.lua;"
                  "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua;",
                  d, d, d, d);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pushfstring(L, "%s/../lib/?.so;%s/../lib/lua/5.4/?.so;", d, d);
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

/* Load the script and run it through sonde.main(fn, ...) (lua/sonde). */
static int run_script(lua_State *L) {
  const char *path = lua_tostring(L, 1);
  int nargs = lua_gettop(L) - 1;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sonde");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  if (luaL_loadfile(L, path) != LUA_OK) return lua_error(L);
  for (int i = 0; i < nargs; i++) lua_pushvalue(L, 2 + i);
  lua_call(L, 1 + nargs, 0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("sonde %s (%s, %s)\n", SONDE_VERSION, LUA_RELEASE,
           curl_version());
    return 0;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "sonde: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(L);
  set_paths(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_sonde_core);
  lua_setfield(L, -2, "sonde.core");
  lua_pop(L, 1);
  /* script args as the global `arg`, like lua.c */
  lua_createtable(L, argc - 2, 2);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, msgh);
  lua_pushcfunction(L, run_script);
  for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
  int rc = lua_pcall(L, argc - 1, 0, 1);
  if (rc != LUA_OK) {
    fprintf(stderr, "sonde: %s\n", lua_tostring(L, -1));
  }
  lua_close(L);
  return rc == LUA_OK ? 0 : 1;
}
