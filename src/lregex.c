/*
 * lregex.c - POSIX extended regular expressions (regcomp/regexec) for Lua.
 *
 *   core.regex(pattern [, flags]) -> regex | nil, err
 *     pattern: a POSIX ERE (glibc: with its GNU extensions \b \< \> \w);
 *     flags: a string, "i" for a case-insensitive match.  The error is
 *     regerror's text.
 *   regex:match(subject) -> boolean
 *     whether the pattern matches anywhere in subject (all its bytes, past
 *     NULs too: REG_STARTEND; glibc's `.` does not match a NUL byte); `^`
 *     and `$` anchor at the subject's ends.
 *
 * Used where configurations written for Go's RE2 (blackbox_exporter) are
 * mapped to ERE (lua/sonde/blackbox/regex.lua).  A match is bounded by what
 * glibc's matcher does (no backtracking blow-up for ERE without
 * back-references, which ERE does not have).
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lua.h>
#include <regex.h>
#include <string.h>

#include "lsonde.h"

#define REGEX_MT "sonde.regex"

struct lregex {
  regex_t re;
  int compiled;
};

static int regex_gc(lua_State *L) {
  struct lregex *r = luaL_checkudata(L, 1, REGEX_MT);
  if (r->compiled) regfree(&r->re);
  r->compiled = 0;
  return 0;
}

/* regex:match(subject) -> boolean */
static int regex_match(lua_State *L) {
  struct lregex *r = luaL_checkudata(L, 1, REGEX_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!r->compiled) return luaL_error(L, "regex: freed");
  regmatch_t m[1];
  m[0].rm_so = 0;
  m[0].rm_eo = (regoff_t)n;
  int rc = regexec(&r->re, s, 1, m, REG_STARTEND);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* core.regex(pattern [, flags]) -> regex | nil, err */
static int l_core_regex(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  const char *flags = luaL_optstring(L, 2, "");
  if (memchr(p, '\0', n)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "a NUL byte in the pattern");
    return 2;
  }
  int cflags = REG_EXTENDED;
  if (strchr(flags, 'i')) cflags |= REG_ICASE;
  struct lregex *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->compiled = 0;
  luaL_setmetatable(L, REGEX_MT);
  int rc = regcomp(&r->re, p, cflags);
  if (rc != 0) {
    char err[256];
    regerror(rc, &r->re, err, sizeof err);
    regfree(&r->re);
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  r->compiled = 1;
  return 1;
}

static const luaL_Reg methods[] = {{"match", regex_match}, {NULL, NULL}};
static const luaL_Reg funcs[] = {{"regex", l_core_regex}, {NULL, NULL}};

void sonde_open_regex(lua_State *L) {
  if (luaL_newmetatable(L, REGEX_MT)) {
    lua_pushcfunction(L, regex_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
