/*
 * lsonde.h - what the Lua binding's files (lsonde.c, lhttpd.c) share.
 */
#ifndef SONDE_LSONDE_H
#define SONDE_LSONDE_H

#include <lua.h>
#include <signal.h>

#include "sonde/loop.h"

struct event;

/* The state behind the "sonde.Loop" userdata, upvalue 1 of every core
 * function. */
struct lcore {
  struct sonde_loop *loop;
  struct event *sig[NSIG];  /* core.on_signal handlers' events */
  lua_State *L;             /* the thread inside run(), or NULL */
  int err_ref;              /* registry ref of a callback error, or NOREF */
};

/* The lcore of the calling core function; raises if the loop is closed. */
struct lcore *sonde_lua_core(lua_State *L);

/*
 * Call the function below `nargs` arguments on top of c->L's stack,
 * protected, with a traceback.  Returns 0 with `nres` results pushed, or
 * -1: the error is kept for run() to raise, the loop is stopped, nothing
 * is pushed.  Pops the function and its arguments.
 */
int sonde_lua_pcall(struct lcore *c, int nargs, int nres);

/* Register core.listen / core.unlisten: stack [module, loop] -> [module]. */
void sonde_open_httpd(lua_State *L);

/* Register core.process_stats into the table on top. */
void sonde_open_procstat(lua_State *L);

/* Register core.sd_notify and core.watchdog_usec into the table on top. */
void sonde_open_notify(lua_State *L);

/* Register core.set_deadline, deadline_hit, clear_deadline. */
void sonde_open_deadline(lua_State *L);

#endif
