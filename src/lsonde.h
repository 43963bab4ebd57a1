/*
 * lsonde.h - what the Lua binding's files (lsonde.c, lhttpd.c) share.
 *
 * Every call from C into Lua (operation results, exec output, signal
 * handlers, HTTP endpoint requests) runs on the main thread of the Lua
 * state, never on the coroutine that called core.run(), and only while a
 * core.run() is in progress: get the thread with sonde_lua_thread, call
 * through sonde_lua_pcall.  A callback's error goes to the handler set with
 * core.on_error (the loop goes on) or, without one, is kept for run() to
 * raise (the loop stops).  See the top of lsonde.c.
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
  lua_State *main;          /* the main thread: every callback runs on it */
  int running;              /* a core.run() is in progress */
  int err_ref;              /* registry ref of a callback error, or NOREF */
};

/* The lcore of the calling core function; raises if the loop is closed. */
struct lcore *sonde_lua_core(lua_State *L);

/*
 * The thread to call back into Lua on: c->main, with room for LUA_MINSTACK
 * more values, when a core.run() is in progress; else NULL, and nothing
 * may be called.
 */
lua_State *sonde_lua_thread(struct lcore *c);

/*
 * The one protected call into Lua: call the function below `nargs`
 * arguments on top of the main thread's stack (see sonde_lua_thread), with
 * a traceback message handler.  Returns 0 with `nres` results pushed, or
 * -1 with nothing pushed: the error went to the core.on_error handler (the
 * loop goes on) or, without one, is kept for run() to raise and the loop
 * is stopped.  Pops the function and its arguments.
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
