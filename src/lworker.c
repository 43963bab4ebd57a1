/*
 * lworker.c - the Lua binding of a declared probe's worker
 * (include/sonde/worker.h): core.worker, core.schedule_stats, and the two
 * pure functions core.step and core.next_slot.
 *
 *   local w = core.worker {
 *     kind = "liveness" | "readiness" | "startup",
 *     success_threshold = 1, failure_threshold = 3, service = false,
 *     period = 10,                         -- seconds, 1e-6 to 1e9
 *     handler = "exec" | "http" | "tcp" | "grpc" | "icmp" | "dns" | nil,
 *                                          -- nil: a custom check
 *     opts = {...},                        -- core.exec/http/tcp/grpc/icmp/dns
 *                                          -- options
 *     on_event = function(ctx, event, t) ... end,
 *     ctx = value,                         -- on_event's first argument
 *   }
 *
 * on_event(ctx, event, t) runs on the main thread like every callback
 * (lsonde.c) and is told:
 *   "tick"       a worker without a handler is due: start the run and
 *                return true, or return false when the last still goes;
 *   "skipped"    a tick found the handler's last run still going;
 *   "result"     a handler's result, not counted yet (set_filter(true)):
 *                read it with w:last(), count it with w:commit();
 *   "committed"  a result the worker counted itself that must be seen
 *                (set_notify, and every result that changes something);
 *                `t` is its transition table or nil.
 * A transition table: { from, to, changed, run, hold, restart, actions },
 * states "success" | "failure" | "unknown", actions "on_failure" |
 * "on_recovery" | nil.
 *
 * Methods: start(first_at) (monotonic seconds, finite, at most 1e9 s
 * before core.now()), stop(), cancel() (both do nothing on a worker
 * already collected), active(), busy(),
 * set_gated(b), set_filter(b), set_notify(success, other),
 * commit(status, duration) -> t | nil, force(to) -> t, reset(),
 * count() -> state, last|nil, run, hold, state() -> string,
 * stats() -> table, last() -> result table | nil, wall time, version()
 * -> a number that changes with every change the others show, runs() ->
 * runs finished (their results came in), seq() -> handler results so far
 * (tells a new last()), finished() (a custom check's run has ended),
 * set_series(base [, histogram]) and set_series_extras(t | nil) (what
 * core.expo_stream writes of it: see each below).
 *
 * Ownership: the userdata owns its worker; on_event, ctx, the options
 * table with the values anchoring its C view, and the loop's userdata
 * are kept in the userdata's user values (UV_*), so that they outlive
 * the worker.  A worker no longer
 * referenced is stopped and freed by its __gc; while on_event runs, the
 * userdata is anchored on the stack.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "lsonde.h"
#include "sonde/expo.h"
#include "sonde/sonde.h"
#include "sonde/worker.h"

#define WORKER_MT "sonde.Worker"

struct lworker {
  struct sonde_worker *w;
  struct lcore *c;
  /* its series (set_series): the label pairs, anchored in UV_BASE */
  const char *base;
  size_t base_len;
  int histogram;             /* write the run-duration histogram */
  int has_extras;            /* UV_EXTRAS holds lines (set_series_extras) */
  /* the handler's options (struct sonde_exec_opts, sonde_http_opts,
   * sonde_tcp_opts, sonde_grpc_opts or sonde_icmp_opts) follow in the
   * same block: only the size of its own */
  unsigned char opts[];
};
/* Lua aligns a userdata's block for pointers and doubles, all the options
 * hold */
_Static_assert(offsetof(struct lworker, opts) % sizeof(double) == 0 &&
                   offsetof(struct lworker, opts) % sizeof(void *) == 0,
               "the options are aligned");

static size_t opts_size(sonde_handler h) {
  switch (h) {
  case SONDE_H_EXEC: return sizeof(struct sonde_exec_opts);
  case SONDE_H_HTTP: return sizeof(struct sonde_http_opts);
  case SONDE_H_TCP: return sizeof(struct sonde_tcp_opts);
  case SONDE_H_GRPC: return sizeof(struct sonde_grpc_opts);
  case SONDE_H_ICMP: return sizeof(struct sonde_icmp_opts);
  case SONDE_H_DNS: return sizeof(struct sonde_dns_opts);
  default: return 0;
  }
}

/* The userdata's user values. */
enum { UV_ON_EVENT = 1, UV_CTX, UV_LOOP, UV_OPTS, UV_ANCHORS, UV_BASE,
       UV_EXTRAS, UV__COUNT };

/* Registry key of the weak table lightuserdata(struct lworker) -> userdata. */
static const char workers_key = 'w';

static const char *const PSTATES[] = {"success", "failure", "unknown", NULL};
static const char *const KINDS[] = {"liveness", "readiness", "startup", NULL};

static void push_pstate(lua_State *L, sonde_pstate s) {
  if (s == SONDE_PS_NONE) lua_pushnil(L);
  else lua_pushstring(L, PSTATES[s]);
}

static void push_transition(lua_State *L, const struct sonde_transition *t) {
  lua_createtable(L, 0, 7);
  push_pstate(L, t->from);
  lua_setfield(L, -2, "from");
  push_pstate(L, t->to);
  lua_setfield(L, -2, "to");
  lua_pushboolean(L, t->changed);
  lua_setfield(L, -2, "changed");
  lua_pushinteger(L, t->run);
  lua_setfield(L, -2, "run");
  if (t->hold) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "hold");
  }
  if (t->restart) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "restart");
  }
  if (t->actions) {
    lua_pushstring(L, t->actions == SONDE_ACT_ON_FAILURE ? "on_failure"
                                                         : "on_recovery");
    lua_setfield(L, -2, "actions");
  }
}

/* Call on_event(ctx, ev, t) protected.  Returns the truth of its result, or -1
 * when it could not be called or raised (the error went to the loop's
 * error policy). */
static int call_event(struct lworker *lw, const char *ev,
                      const struct sonde_transition *t) {
  lua_State *L = sonde_lua_thread(lw->c);
  if (!L) return -1;
  int top = lua_gettop(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &workers_key);
  if (lua_rawgetp(L, -1, lw) != LUA_TUSERDATA) {
    lua_settop(L, top);
    return -1;
  }
  /* the userdata stays on the stack below: anchored during the call */
  lua_getiuservalue(L, -1, UV_ON_EVENT);
  lua_getiuservalue(L, -2, UV_CTX);
  lua_pushstring(L, ev);
  if (t) push_transition(L, t);
  else lua_pushnil(L);
  int rc = sonde_lua_pcall(lw->c, 3, 1);
  int res = rc == 0 ? lua_toboolean(L, -1) : -1;
  lua_settop(L, top);
  return res;
}

static int hk_tick(struct sonde_worker *w, void *arg) {
  (void)w;
  return call_event(arg, "tick", NULL) == 1;
}

static void hk_skipped(struct sonde_worker *w, void *arg) {
  (void)w;
  call_event(arg, "skipped", NULL);
}

static void hk_result(struct sonde_worker *w, void *arg) {
  (void)w;
  call_event(arg, "result", NULL);
}

static void hk_committed(struct sonde_worker *w,
                         const struct sonde_transition *t, void *arg) {
  (void)w;
  call_event(arg, "committed", t);
}

static const struct sonde_worker_hooks hooks = {hk_tick, hk_skipped,
                                                hk_result, hk_committed};

static struct lworker *check(lua_State *L) {
  struct lworker *lw = luaL_checkudata(L, 1, WORKER_MT);
  if (!lw->w) luaL_error(L, "sonde: the worker is closed");
  if (!lw->c->loop) luaL_error(L, "sonde: the loop is closed");
  return lw;
}

static unsigned opt_count(lua_State *L, int t, const char *k) {
  int isint = 1;
  lua_Integer n = 1;
  if (lua_getfield(L, t, k) != LUA_TNIL) n = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (!isint) luaL_error(L, "sonde.core.worker: %s: integer expected", k);
  if (n < 1) luaL_error(L, "sonde.core.worker: %s: must be at least 1", k);
  if ((lua_Unsigned)n > UINT_MAX)
    luaL_error(L, "sonde.core.worker: %s: must be at most %u", k, UINT_MAX);
  return (unsigned)n;
}

/* spec[k] as the index of one of `names` (`def` when nil, unless NULL);
 * raises naming the field and the values allowed. */
static int opt_name(lua_State *L, const char *k, const char *def,
                    const char *const names[]) {
  lua_getfield(L, 1, k);
  const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                  : lua_isnil(L, -1)              ? def
                                                  : NULL;
  for (int i = 0; v && names[i]; i++) {
    if (strcmp(names[i], v) == 0) {
      lua_pop(L, 1);
      return i;
    }
  }
  const char *got = luaL_tolstring(L, -1, NULL);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; names[i]; i++) {
    if (i) luaL_addstring(&b, ", ");
    luaL_addstring(&b, names[i]);
  }
  luaL_pushresult(&b);
  return luaL_error(L, "sonde.core.worker: %s: expected one of %s, got %s",
                    k, lua_tostring(L, -1), got);
}

/* core.worker(spec) -> worker */
static int l_worker(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  struct sonde_thresholds th;
  th.kind = (sonde_kind)opt_name(L, "kind", NULL, KINDS);
  th.success = opt_count(L, 1, "success_threshold");
  th.failure = opt_count(L, 1, "failure_threshold");
  lua_getfield(L, 1, "service");
  th.service = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "period");
  if (!lua_isnumber(L, -1))
    return luaL_error(L, "sonde.core.worker: period: number expected, got %s",
                      luaL_typename(L, -1));
  double period = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(period > 0))
    return luaL_error(L, "sonde.core.worker: period: must be > 0");
  if (!(period >= SONDE_MIN_PERIOD && period <= SONDE_MAX_SECONDS))
    return luaL_error(L, "sonde.core.worker: period: must be from 1e-6 to "
                      "1e9 seconds, got %f", (lua_Number)period);
  if (lua_getfield(L, 1, "on_event") != LUA_TFUNCTION)
    return luaL_error(L, "sonde.core.worker: on_event: function expected");
  lua_pop(L, 1);
  static const char *const HANDLERS[] = {"none", "exec", "http", "tcp",
                                            "grpc", "icmp", "dns", NULL};
  sonde_handler h = (sonde_handler)opt_name(L, "handler", "none", HANDLERS);

  size_t size = sizeof(struct lworker) + opts_size(h);
  struct lworker *lw = lua_newuserdatauv(L, size, UV__COUNT - 1);  /* 2 */
  memset(lw, 0, size);
  lw->c = c;
  luaL_setmetatable(L, WORKER_MT);
  lua_getfield(L, 1, "on_event");
  lua_setiuservalue(L, 2, UV_ON_EVENT);
  lua_getfield(L, 1, "ctx");
  lua_setiuservalue(L, 2, UV_CTX);
  lua_pushvalue(L, lua_upvalueindex(1));                        /* the loop */
  lua_setiuservalue(L, 2, UV_LOOP);
  const void *opts = NULL;
  if (h != SONDE_H_NONE) {
    if (lua_getfield(L, 1, "opts") != LUA_TTABLE)               /* 3 */
      return luaL_error(L, "sonde.core.worker: opts: table expected");
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 2, UV_OPTS);
    int n = 0;
    void *o = lw->opts;
    if (h == SONDE_H_EXEC) n = sonde_lua_exec_opts(L, 3, o);
    else if (h == SONDE_H_HTTP) n = sonde_lua_http_opts(L, 3, o);
    else if (h == SONDE_H_GRPC) sonde_lua_grpc_opts(L, 3, o);
    else if (h == SONDE_H_ICMP) sonde_lua_icmp_opts(L, 3, o);
    else if (h == SONDE_H_DNS) n = sonde_lua_dns_opts(L, 3, o);
    else n = sonde_lua_tcp_opts(L, 3, o);
    if (n > 0) {           /* the values anchoring the C view of the options */
      lua_createtable(L, n, 0);
      for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, 3 + i);
        lua_rawseti(L, -2, i);
      }
      lua_setiuservalue(L, 2, UV_ANCHORS);
    }
    lua_settop(L, 2);
    opts = lw->opts;
  }
  lw->w = sonde_worker_new(c->loop, &th, period, h, opts, &hooks, lw,
                           &c->sched);
  if (!lw->w) return luaL_error(L, "sonde: out of memory");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &workers_key);
  lua_pushvalue(L, 2);
  lua_rawsetp(L, -2, lw);
  lua_pop(L, 1);
  return 1;
}

static int w_gc(lua_State *L) {
  struct lworker *lw = luaL_checkudata(L, 1, WORKER_MT);
  if (lw->w) {
    if (lw->c->loop) sonde_worker_free(lw->w);
    else sonde_worker_abandon(lw->w);
  }
  lw->w = NULL;
  return 0;
}

/* start(first_at): finite, and at most SONDE_MAX_SECONDS in the past (a
 * NaN or far-past first_at would make every tick due at once; the first
 * tick of a far-future one waits SONDE_MAX_SECONDS, like any timer). */
static int w_start(lua_State *L) {
  struct lworker *lw = check(L);
  double first_at = luaL_checknumber(L, 2);
  luaL_argcheck(L, isfinite(first_at) &&
                first_at >= sonde_now() - SONDE_MAX_SECONDS, 2,
                "first_at: must be finite and at most 1e9 seconds before "
                "core.now()");
  sonde_worker_start(lw->w, first_at);
  return 0;
}

/* stop() and cancel() of a closed worker (collected: its __gc ran) do
 * nothing: it has nothing left to stop. */
static struct lworker *open_or_nil(lua_State *L) {
  struct lworker *lw = luaL_checkudata(L, 1, WORKER_MT);
  return lw->w && lw->c->loop ? lw : NULL;
}

static int w_stop(lua_State *L) {
  struct lworker *lw = open_or_nil(L);
  if (lw) sonde_worker_stop(lw->w);
  return 0;
}

static int w_cancel(lua_State *L) {
  struct lworker *lw = open_or_nil(L);
  if (lw) sonde_worker_cancel(lw->w);
  return 0;
}

static int w_active(lua_State *L) {
  lua_pushboolean(L, sonde_worker_active(check(L)->w));
  return 1;
}

static int w_busy(lua_State *L) {
  lua_pushboolean(L, sonde_worker_busy(check(L)->w));
  return 1;
}

static int w_set_gated(lua_State *L) {
  sonde_worker_set_gated(check(L)->w, lua_toboolean(L, 2));
  return 0;
}

static int w_set_filter(lua_State *L) {
  sonde_worker_set_filter(check(L)->w, lua_toboolean(L, 2));
  return 0;
}

static int w_set_notify(lua_State *L) {
  sonde_worker_set_notify(check(L)->w, lua_toboolean(L, 2),
                          lua_toboolean(L, 3));
  return 0;
}

static sonde_status status_arg(lua_State *L, int i) {
  static const char *const names[] = {"success", "warning", "failure",
                                      "unknown", NULL};
  return (sonde_status)luaL_checkoption(L, i, NULL, names);
}

static int w_commit(lua_State *L) {
  struct lworker *lw = check(L);
  struct sonde_transition t;
  if (!sonde_worker_commit(lw->w, status_arg(L, 2), luaL_optnumber(L, 3, 0),
                           &t))
    return 0;
  push_transition(L, &t);
  return 1;
}

static int w_force(lua_State *L) {
  struct lworker *lw = check(L);
  struct sonde_transition t;
  sonde_worker_force(lw->w,
                     (sonde_pstate)luaL_checkoption(L, 2, NULL, PSTATES), &t);
  push_transition(L, &t);
  return 1;
}

static int w_reset(lua_State *L) {
  sonde_worker_reset(check(L)->w);
  return 0;
}

static int w_count(lua_State *L) {
  const struct sonde_count *n = sonde_worker_count(check(L)->w);
  push_pstate(L, n->state);
  push_pstate(L, n->last);
  lua_pushinteger(L, n->run);
  lua_pushboolean(L, n->hold);
  return 4;
}

static int w_runs(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sonde_worker_stats(check(L)->w)->results);
  return 1;
}

/* finished(): a custom check's result came in (counted in runs()). */
static int w_finished(lua_State *L) {
  sonde_worker_finished(check(L)->w);
  return 0;
}

static int w_seq(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sonde_worker_stats(check(L)->w)->results);
  return 1;
}

static int w_version(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sonde_worker_version(check(L)->w));
  return 1;
}

static int w_state(lua_State *L) {
  push_pstate(L, sonde_worker_count(check(L)->w)->state);
  return 1;
}

static void set_u64(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* stats() -> { counts = { success, warning, failure, unknown }, buckets =
 * { cumulative counts, one per sonde_duration_buckets() bound }, sum
 * (seconds), n, runs, skipped, missed, results } */
static int w_stats(lua_State *L) {
  const struct sonde_probe_stats *s = sonde_worker_stats(check(L)->w);
  lua_createtable(L, 0, 8);
  lua_createtable(L, 0, 4);
  static const char *const names[] = {"success", "warning", "failure",
                                      "unknown"};
  for (int i = 0; i < 4; i++) set_u64(L, names[i], s->counts[i]);
  lua_setfield(L, -2, "counts");
  lua_createtable(L, SONDE_DURATION_BUCKETS, 0);
  for (int i = 0; i < SONDE_DURATION_BUCKETS; i++) {
    lua_pushinteger(L, (lua_Integer)s->buckets[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "buckets");
  lua_pushnumber(L, s->sum);
  lua_setfield(L, -2, "sum");
  set_u64(L, "n", s->n);
  set_u64(L, "runs", s->runs);
  set_u64(L, "skipped", s->skipped);
  set_u64(L, "missed", s->missed);
  set_u64(L, "results", s->results);
  return 1;
}

/* set_series(base [, histogram]): the probe's label pairs as its series
 * print them (`probe="a",kind="liveness",...`, escaped, no braces) and
 * whether its run-duration histogram is written (default true).  The
 * series of a worker without them are not written (core.expo_stream). */
static int w_set_series(lua_State *L) {
  struct lworker *lw = luaL_checkudata(L, 1, WORKER_MT);
  size_t n;
  const char *base = luaL_checklstring(L, 2, &n);
  luaL_argcheck(L, n > 0, 2, "the label pairs may not be empty");
  lw->histogram = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, UV_BASE);      /* anchors base */
  lw->base = base;
  lw->base_len = n;
  return 0;
}

/* set_series_extras(t | nil): lines of the probe's own in families by
 * index (core.expo_family): { [index] = "name{...} 1\n..." }, written
 * after the worker's own lines of that family.  The table is kept as it
 * is: give a new one for new lines. */
static int w_set_series_extras(lua_State *L) {
  struct lworker *lw = luaL_checkudata(L, 1, WORKER_MT);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lw->has_extras = !lua_isnil(L, 2);
  lua_setiuservalue(L, 1, UV_EXTRAS);
  return 0;
}

struct lworker *sonde_lworker_test(lua_State *L, int idx) {
  return luaL_testudata(L, idx, WORKER_MT);
}

int sonde_lworker_view(const struct lworker *lw, struct sonde_expo_probe *p) {
  p->w = lw->base && lw->c->loop ? lw->w : NULL;
  p->base = lw->base;
  p->base_len = lw->base_len;
  p->histogram = lw->histogram;
  return p->w ? 1 + (lw->has_extras != 0) : 0;
}

int sonde_lworker_extras(lua_State *L, int idx, int family) {
  struct lworker *lw = lua_touserdata(L, idx);
  if (!lw || !lw->has_extras) return 0;
  lua_getiuservalue(L, idx, UV_EXTRAS);
  if (lua_rawgeti(L, -1, family) == LUA_TSTRING) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 2);
  return 0;
}

/* last() -> the last handler result as core's callbacks get it, and the
 * wall-clock start of its run; nil before the first */
static int w_last(lua_State *L) {
  double wall;
  const struct sonde_result *r = sonde_worker_last(check(L)->w, &wall);
  if (!r) return 0;
  sonde_lua_push_result(L, r);
  lua_pushnumber(L, wall);
  return 2;
}

/* core.schedule_stats([reset]) -> { runs, skipped, missed, p50, p99, max }
 * of every worker of this loop: lateness (seconds) is the start of a run
 * minus its slot; `reset` clears the figures after reading them. */
static int l_schedule_stats(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  struct sonde_sched_stats *s = &c->sched;
  int reset = lua_toboolean(L, 1);      /* before the table takes index 1 */
  lua_createtable(L, 0, 6);
  set_u64(L, "runs", s->runs);
  set_u64(L, "skipped", s->skipped);
  set_u64(L, "missed", s->missed);
  lua_pushnumber(L, sonde_sched_quantile(s, 0.5));
  lua_setfield(L, -2, "p50");
  lua_pushnumber(L, sonde_sched_quantile(s, 0.99));
  lua_setfield(L, -2, "p99");
  lua_pushnumber(L, s->max);
  lua_setfield(L, -2, "max");
  if (reset) memset(s, 0, sizeof *s);
  return 1;
}

/* Argument i: an integer from `min` to UINT_MAX. */
static unsigned count_arg(lua_State *L, int i, lua_Integer min) {
  lua_Integer n = luaL_checkinteger(L, i);
  luaL_argcheck(L, n >= min, i, min ? "must be at least 1" : "must be >= 0");
  luaL_argcheck(L, (lua_Unsigned)n <= UINT_MAX, i, "too large");
  return (unsigned)n;
}

/* core.step(state, last, run, hold, status, kind, success_threshold,
 * failure_threshold, service) -> state, last, run, hold [, from, to,
 * changed, run, hold, restart]: sonde_step, pure. */
static int l_step(lua_State *L) {
  struct sonde_count w, n;
  struct sonde_thresholds p;
  struct sonde_transition t;
  w.state = (sonde_pstate)luaL_checkoption(L, 1, NULL, PSTATES);
  w.last = lua_isnil(L, 2) ? SONDE_PS_NONE
                           : (sonde_pstate)luaL_checkoption(L, 2, NULL, PSTATES);
  w.run = count_arg(L, 3, 0);
  w.hold = lua_toboolean(L, 4);
  sonde_status st = status_arg(L, 5);
  p.kind = (sonde_kind)luaL_checkoption(L, 6, NULL, KINDS);
  p.success = count_arg(L, 7, 1);
  p.failure = count_arg(L, 8, 1);
  p.service = lua_toboolean(L, 9);
  int has = sonde_step(&w, st, &p, &n, &t);
  push_pstate(L, n.state);
  push_pstate(L, n.last);
  lua_pushinteger(L, n.run);
  lua_pushboolean(L, n.hold);
  if (!has) return 4;
  push_pstate(L, t.from);
  push_pstate(L, t.to);
  lua_pushboolean(L, t.changed);
  lua_pushinteger(L, t.run);
  lua_pushboolean(L, t.hold);
  lua_pushboolean(L, t.restart);
  return 10;
}

/* core.next_slot(first_at, period, ticks, now) -> k, missed:
 * sonde_next_slot, pure. */
static int l_next_slot(lua_State *L) {
  double first = luaL_checknumber(L, 1), period = luaL_checknumber(L, 2);
  lua_Integer ticks = luaL_checkinteger(L, 3);
  double now = luaL_checknumber(L, 4);
  luaL_argcheck(L, isfinite(first), 1, "must be finite");
  luaL_argcheck(L, period > 0 && isfinite(period), 2, "must be > 0");
  luaL_argcheck(L, ticks >= 0, 3, "must be >= 0");
  luaL_argcheck(L, isfinite(now), 4, "must be finite");
  luaL_argcheck(L, fabs((now - first) / period) < 0x1p53, 4,
                "too many periods from first_at (slot numbers are exact "
                "below 2^53)");
  uint64_t missed = 0;
  uint64_t k = sonde_next_slot(first, period, (uint64_t)ticks, now, &missed);
  lua_pushinteger(L, (lua_Integer)k);
  lua_pushinteger(L, (lua_Integer)missed);
  return 2;
}

static const luaL_Reg methods[] = {
    {"start", w_start},         {"stop", w_stop},
    {"cancel", w_cancel},       {"active", w_active},
    {"busy", w_busy},           {"set_gated", w_set_gated},
    {"set_filter", w_set_filter}, {"set_notify", w_set_notify},
    {"commit", w_commit},       {"force", w_force},
    {"reset", w_reset},         {"count", w_count},
    {"state", w_state},         {"stats", w_stats},
    {"last", w_last},           {"runs", w_runs},
    {"seq", w_seq},             {"finished", w_finished},
    {"version", w_version},
    {"set_series", w_set_series}, {"set_series_extras", w_set_series_extras},
    {NULL, NULL}};

static const luaL_Reg funcs[] = {{"worker", l_worker},
                                 {"schedule_stats", l_schedule_stats},
                                 {NULL, NULL}};

void sonde_open_worker(lua_State *L) {
  if (luaL_newmetatable(L, WORKER_MT)) {
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);                      /* weak: workers by address */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &workers_key);
  luaL_setfuncs(L, funcs, 1);           /* [module, loop] -> [module] */
  lua_pushcfunction(L, l_step);
  lua_setfield(L, -2, "step");
  lua_pushcfunction(L, l_next_slot);
  lua_setfield(L, -2, "next_slot");
  lua_createtable(L, SONDE_DURATION_BUCKETS, 0);
  for (int i = 0; i < SONDE_DURATION_BUCKETS; i++) {
    lua_pushnumber(L, sonde_duration_buckets()[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "DURATION_BUCKETS");
}
