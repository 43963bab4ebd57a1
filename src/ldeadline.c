/*
 * ldeadline.c - running time bounds for Lua code the engine calls (hooks,
 * custom checks, script loads).
 *
 *   core.set_deadline(co, seconds)   bound coroutine co: once `seconds`
 *                                    have passed, it is stopped
 *   core.deadline_hit(co) -> boolean it was stopped by its bound
 *   core.clear_deadline(co)          no bound (any more)
 *
 * A count hook (every 1000 instructions) on the coroutine compares the
 * monotonic clock with its deadline, kept in the thread's extra space
 * (LUA_EXTRASPACE).  When the deadline has passed the hook *yields* the
 * coroutine: unlike an error, a yield cannot be caught by a pcall inside
 * the user's code, so `while true do pcall(...) end` is stopped too.  The
 * caller sees coroutine.resume return with the coroutine suspended and
 * deadline_hit true, and abandons it.  Where the coroutine cannot yield (a
 * C call boundary: a metamethod such as __tostring, a table.sort
 * comparator, a message handler, a <close> handler run by
 * coroutine.close) the hook raises the error "time limit exceeded"
 * instead.
 *
 * Once hit, the bound stays hit until set_deadline or clear_deadline: the
 * hook then fires at *every* instruction and yields or raises again, so a
 * pcall that catches the error (inside a sort comparator, say) only gets
 * as far as its next instruction, and the error climbs out frame by frame
 * to the first place where the coroutine can yield.
 *
 * What no count hook can stop: a single C call that runs long (a
 * backtracking string.find/match/gsub pattern, string.rep of a huge
 * count, io and os calls that block) and finalizers (__gc) that the
 * collector runs in a thread without the hook (the main thread).  The
 * host's systemd watchdog is the backstop there (see README).
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "lsonde.h"

#define HIT (-1.0)

_Static_assert(LUA_EXTRASPACE >= sizeof(double), "room for a deadline");

/* The deadline lives in the thread's extra space (memcpy: the space is
 * only pointer-aligned). */
static double get(lua_State *co) {
  double d;
  memcpy(&d, lua_getextraspace(co), sizeof d);
  return d;
}

static void put(lua_State *co, double d) {
  memcpy(lua_getextraspace(co), &d, sizeof d);
}

static void deadline_hook(lua_State *L, lua_Debug *ar) {
  double d = get(L);
  (void)ar;
  if (d == 0) return;
  if (d != HIT) {
    if (sonde_now() <= d) return;
    put(L, HIT);
    /* from now on at every instruction, until the bound is set again */
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  if (lua_isyieldable(L)) {
    lua_yield(L, 0); /* a hook may yield with no values */
    return;
  }
  luaL_error(L, "time limit exceeded");
}

static lua_State *check_co(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  return co;
}

static int l_core_set_deadline(lua_State *L) {
  lua_State *co = check_co(L);
  double s = luaL_checknumber(L, 2);
  put(co, sonde_now() + (s > 0 ? s : 0));
  lua_sethook(co, deadline_hook, LUA_MASKCOUNT, 1000);
  return 0;
}

static int l_core_deadline_hit(lua_State *L) {
  lua_pushboolean(L, get(check_co(L)) == HIT);
  return 1;
}

static int l_core_clear_deadline(lua_State *L) {
  lua_State *co = check_co(L);
  lua_sethook(co, NULL, 0, 0);
  put(co, 0);
  return 0;
}

static const luaL_Reg funcs[] = {{"set_deadline", l_core_set_deadline},
                                 {"deadline_hit", l_core_deadline_hit},
                                 {"clear_deadline", l_core_clear_deadline},
                                 {NULL, NULL}};

void sonde_open_deadline(lua_State *L) { luaL_setfuncs(L, funcs, 0); }
