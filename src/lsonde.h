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
#include "sonde/worker.h"

struct event;

/* The state behind the "sonde.Loop" userdata, upvalue 1 of every core
 * function. */
struct lcore {
  struct sonde_loop *loop;
  struct event *sig[NSIG];  /* core.on_signal handlers' events */
  lua_State *main;          /* the main thread: every callback runs on it */
  int running;              /* a core.run() is in progress */
  int err_ref;              /* registry ref of a callback error, or NOREF */
  struct sonde_sched_stats sched; /* its workers' schedule (lworker.c) */
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

struct sonde_result;
struct sonde_expo_probe;
struct lworker;

/* The worker userdata at idx (lworker.c), or NULL when it is not one. */
struct lworker *sonde_lworker_test(lua_State *L, int idx);
/* Its series as sonde/expo.h writes them; returns 0 (p->w NULL) when they
 * are not to be written (no set_series yet, or the loop is closed), 2
 * when it has extra lines (sonde_lworker_extras), else 1. */
int sonde_lworker_view(const struct lworker *lw, struct sonde_expo_probe *p);
/* Push the worker's extra lines of `family` (at idx) and return 1, or
 * return 0 with nothing pushed. */
int sonde_lworker_extras(lua_State *L, int idx, int family);

struct sonde_exec_opts;
struct sonde_http_opts;
struct sonde_tcp_opts;
struct sonde_grpc_opts;
struct sonde_icmp_opts;
struct sonde_dns_opts;
struct sonde_tls_opts;

/* Push a prober's result as the table core's callbacks get. */
void sonde_lua_push_result(lua_State *L, const struct sonde_result *r);

/*
 * Read the options of core.exec / core.http / core.tcp / core.grpc from the table at
 * index t into *o (raises on misuse).  Strings are not copied: they stay
 * anchored in that table, and vectors (argv, env, headers) in values the
 * readers push on the stack; the readers return how many
 * they pushed (tcp: its steps).  Keep the table unchanged and those values referenced for
 * as long as *o is used.
 */
int sonde_lua_exec_opts(lua_State *L, int t, struct sonde_exec_opts *o);
int sonde_lua_http_opts(lua_State *L, int t, struct sonde_http_opts *o);
int sonde_lua_tcp_opts(lua_State *L, int t, struct sonde_tcp_opts *o);
void sonde_lua_grpc_opts(lua_State *L, int t, struct sonde_grpc_opts *o);
void sonde_lua_icmp_opts(lua_State *L, int t, struct sonde_icmp_opts *o);
/* core.dns's options (lsonde.c): the regexps' vectors in one userdata
 * pushed (returns 1, or 0 when there are none). */
int sonde_lua_dns_opts(lua_State *L, int t, struct sonde_dns_opts *o);
/* Read the `tls` table of the options at index t (verify, ca_file,
 * cert_file, key_file, server_name, min_version "TLS1.2" ..., and
 * expiry_warning, expiry_failure in seconds) into *o (zeroed first);
 * returns 1 when the table is there, else 0.  The strings stay anchored
 * by the table.  Raises on a wrong type or version. */
int sonde_lua_tls_opts(lua_State *L, int t, struct sonde_tls_opts *o);

/* Register core.worker, core.schedule_stats, core.step and
 * core.next_slot (lworker.c): stack [module, loop] -> [module]. */
void sonde_open_worker(lua_State *L);

/* Register core.listen / core.unlisten: stack [module, loop] -> [module]. */
void sonde_open_httpd(lua_State *L);

/* A lua_CFunction (stream, max_bytes) -> lightuserdata, length | nil: the
 * next bytes of a core.expo_stream (about max_bytes, in the stream's own
 * buffer, valid until its next read), without making a Lua string; nil
 * once everything was given.  Raises like stream:read. */
int sonde_lexpo_step(lua_State *L);
/* 1 when the value at idx is a core.expo_stream. */
int sonde_lexpo_is_stream(lua_State *L, int idx);

/* Register core.expo_family, core.expo_stream and the exposition's
 * number and escape functions (lexpo.c) into the table on top. */
void sonde_open_expo(lua_State *L);

/* Register core.process_stats into the table on top. */
void sonde_open_procstat(lua_State *L);

/* Register core.sd_notify and core.watchdog_usec into the table on top. */
void sonde_open_notify(lua_State *L);

/* Register core.set_deadline, deadline_hit, clear_deadline. */
void sonde_open_deadline(lua_State *L);

/* Register core.regex (POSIX ERE, lregex.c) into the table on top. */
void sonde_open_regex(lua_State *L);

/* Add core.md5 and core.file_stamp (ltargets.c) to the table on top. */
void sonde_open_targets(lua_State *L);

#endif
