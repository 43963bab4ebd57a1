/*
 * logq.c - messages from C to sonde.log (see logq.h), and libevent's own
 * log messages routed there.
 *
 *   core.on_log(fn | nil)
 *
 * fn(level, event, text, dropped) is called on the main thread, inside
 * core.run(), for each queued message: level "debug" | "info" | "warn" |
 * "error", event the log event's name ("libevent" for libevent's own
 * messages, "log_dropped" for the count of those that did not fit),
 * text the message (or "" for log_dropped), dropped the number of
 * messages dropped just before this one.  sonde.log sets it when loaded.
 *
 * Why a queue: libevent calls its log callback from anywhere inside
 * itself, possibly while Lua is running (core.listen binding a socket) or
 * while the loop is not running; calling into Lua there is not safe.
 * libevent's default (fprintf to stderr) writes lines that are not in the
 * log's format, without bound: out of descriptors its listener wrote
 * millions.  The queue keeps the C side to a copy and a counter.
 */
#define _GNU_SOURCE
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "logq.h"
#include "lsonde.h"

#define LOGQ_MT "sonde.LogQ"

struct entry {
  enum sonde_log_level level;
  char event[32];
  char text[SONDE_LOGQ_TEXT];
  unsigned long dropped;        /* dropped just before this one */
};

/* One per loop: the events that deliver the queue on that loop. */
struct sink {
  struct lcore *core;
  struct event *flush;          /* activated when something is queued */
  struct event *tick;           /* end of a second with drops: the count */
};

/* Process-wide, as libevent's log callback is. */
static struct {
  struct entry q[SONDE_LOGQ_CAP];
  int head, n;
  unsigned long dropped;        /* since the last queued message */
  double window;                /* start of the current second */
  int in_window;                /* messages queued in it */
  int busy;                     /* inside push: a nested message is dropped */
  struct sink *owner;           /* the loop that delivers; NULL: none yet */
} Q;

static const char handler_key = 'l';   /* registry: fn of core.on_log */

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void wake(void) {
  if (Q.owner && Q.owner->flush) event_active(Q.owner->flush, EV_TIMEOUT, 0);
}

static struct entry *append(enum sonde_log_level level, const char *event) {
  struct entry *e = &Q.q[(Q.head + Q.n) % SONDE_LOGQ_CAP];
  Q.n++;
  e->level = level;
  snprintf(e->event, sizeof e->event, "%s", event);
  e->text[0] = '\0';
  e->dropped = Q.dropped;
  Q.dropped = 0;
  return e;
}

static void drop(void) {
  Q.dropped++;
  if (Q.owner && Q.owner->tick && !evtimer_pending(Q.owner->tick, NULL)) {
    double left = Q.window + 1.0 - mono();
    if (left < 0.01) left = 0.01;
    struct timeval tv = {(time_t)left, (suseconds_t)((left - (time_t)left) * 1e6)};
    evtimer_add(Q.owner->tick, &tv);
  }
}

void sonde_logq_push(enum sonde_log_level level, const char *event,
                     const char *fmt, ...) {
  if (Q.busy) {
    Q.dropped++;
    return;
  }
  Q.busy = 1;
  double now = mono();
  if (now - Q.window >= 1.0) {
    Q.window = now;
    Q.in_window = 0;
  }
  if (Q.in_window >= SONDE_LOGQ_RATE || Q.n >= SONDE_LOGQ_CAP) {
    drop();
  } else {
    Q.in_window++;
    struct entry *e = append(level, event);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, ap);
    va_end(ap);
    wake();
  }
  Q.busy = 0;
}

/* libevent's log callback: severities _EVENT_LOG_DEBUG..ERR are 0..3. */
static void on_libevent_log(int severity, const char *msg) {
  enum sonde_log_level level = severity <= EVENT_LOG_DEBUG ? SONDE_LOG_DEBUG
                               : severity == EVENT_LOG_MSG ? SONDE_LOG_INFO
                               : severity == EVENT_LOG_WARN ? SONDE_LOG_WARN
                                                            : SONDE_LOG_ERROR;
  sonde_logq_push(level, "libevent", "%s", msg ? msg : "");
}

static const char *level_name(enum sonde_log_level l) {
  switch (l) {
  case SONDE_LOG_DEBUG: return "debug";
  case SONDE_LOG_INFO: return "info";
  case SONDE_LOG_WARN: return "warn";
  case SONDE_LOG_ERROR: return "error";
  }
  return "info";
}

/* Deliver what is queued (inside core.run() only; else it waits). */
static void on_flush(evutil_socket_t fd, short what, void *arg) {
  struct sink *s = arg;
  (void)fd;
  (void)what;
  if (Q.owner != s) return;
  lua_State *L = sonde_lua_thread(s->core);
  if (!L) return;
  int top = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &handler_key) != LUA_TFUNCTION) {
    lua_settop(L, top);
    return;                      /* no handler yet: kept for it */
  }
  lua_pop(L, 1);
  while (Q.n > 0 && Q.owner == s) {
    struct entry e = Q.q[Q.head];     /* a copy: fn may queue more */
    Q.head = (Q.head + 1) % SONDE_LOGQ_CAP;
    Q.n--;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &handler_key) != LUA_TFUNCTION) {
      lua_settop(L, top);
      break;
    }
    lua_pushstring(L, level_name(e.level));
    lua_pushstring(L, e.event);
    lua_pushstring(L, e.text);
    lua_pushinteger(L, (lua_Integer)e.dropped);
    sonde_lua_pcall(s->core, 4, 0);
    lua_settop(L, top);
  }
}

/* The end of a second in which messages were dropped: say how many. */
static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  if (Q.owner != arg || Q.dropped == 0 || Q.n >= SONDE_LOGQ_CAP) return;
  append(SONDE_LOG_WARN, "log_dropped");
  wake();
}

/* Sinks alive: when the last goes (lua_close), libevent's log callback
 * goes back to its default, before this module may be unloaded. */
static int nsinks;

static int sink_gc(lua_State *L) {
  struct sink *s = luaL_checkudata(L, 1, LOGQ_MT);
  if (Q.owner == s) Q.owner = NULL;
  if (s->core && --nsinks == 0) event_set_log_callback(NULL);
  s->core = NULL;
  if (s->flush) event_free(s->flush);
  if (s->tick) event_free(s->tick);
  s->flush = s->tick = NULL;
  return 0;
}

static const char sink_key = 's';      /* registry: this state's sink */

/* core.on_log(fn | nil): deliver C's log messages to fn (see the top). */
static int l_core_on_log(lua_State *L) {
  sonde_lua_core(L);
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &handler_key);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sink_key);
  struct sink *s = luaL_testudata(L, -1, LOGQ_MT);
  if (s && s->flush) {
    Q.owner = s;
    if (Q.n > 0) wake();
  }
  return 0;
}

void sonde_open_logq(lua_State *L) {
  /* [module, loop] */
  struct lcore *c = lua_touserdata(L, -1);
  struct sink *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  if (luaL_newmetatable(L, LOGQ_MT)) {
    lua_pushcfunction(L, sink_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  struct event_base *base = sonde_loop_base(c->loop);
  s->flush = event_new(base, -1, 0, on_flush, s);
  s->tick = evtimer_new(base, on_tick, s);
  if (!s->flush || !s->tick) luaL_error(L, "sonde: cannot create the log events");
  s->core = c;
  nsinks++;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &sink_key);
  lua_pushvalue(L, -1);                  /* the loop */
  lua_pushcclosure(L, l_core_on_log, 1);
  lua_setfield(L, -3, "on_log");
  event_set_log_callback(on_libevent_log);
}
