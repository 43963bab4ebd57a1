/*
 * lsonde.c - the Lua binding: module `sonde.core`.
 *
 * The user-facing module is lua/sonde/init.lua, which validates specs and
 * calls these functions with normalised tables; the checks here only guard
 * against misuse of the core itself (they raise).
 *
 * One loop per Lua state, created by luaopen_sonde_core and kept as the
 * upvalue of every function (a "sonde.Loop" userdata whose __gc frees it).
 * Callbacks of operations in flight are anchored in a registry table keyed
 * by operation id, and released when the operation completes or is
 * cancelled.
 *
 * Calling into Lua (luv's model): every callback (an operation's result,
 * a streaming exec's output, a signal handler, an HTTP endpoint request)
 * runs on the state's main thread, remembered at luaopen time, whichever
 * thread or coroutine called core.run(): a callback never inherits the
 * stack, hooks (ldeadline.c) or yieldability of the coroutine that runs
 * the loop.  Callbacks only ever run inside core.run() (one that would
 * come outside it is dropped), and all go through one protected call,
 * sonde_lua_pcall, whose message handler adds a traceback.
 *
 * core.run() may be called from the main thread or from any coroutine,
 * but not while it already runs (from a callback): that raises "sonde.run:
 * the loop is already running".
 *
 * Error policy, set once by the host with core.on_error(fn | nil):
 *   - with a handler, a callback's error (its value, with the traceback)
 *     is passed to fn(err), called on the main thread in protected mode,
 *     and the loop goes on; if fn itself raises, "sonde: error in error
 *     handler: <msg>" is written to stderr and the loop goes on;
 *   - without one (the default, for library users), the first error is
 *     kept, the loop is stopped, and core.run() raises it; run() may then
 *     be called again to go on with what is still pending.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string.h>
#include <time.h>

#include <arpa/inet.h>

#include "lsonde.h"
#include "resolve_op.h"
#include "sonde/sonde.h"
#include "sonde/tls.h"

#define LOOP_MT "sonde.Loop"

struct lcore *sonde_lua_core(lua_State *L) {
  struct lcore *c = lua_touserdata(L, lua_upvalueindex(1));
  if (!c || !c->loop) luaL_error(L, "sonde: the loop is closed");
  return c;
}


/* ---- results ------------------------------------------------------------ */

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void set_num(lua_State *L, const char *k, lua_Number v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

/* r.tls: the peer certificate facts (sonde/tls.h). */
static void push_tls(lua_State *L, const struct sonde_tls_facts *f) {
  lua_createtable(L, 0, 12);
  if (f->has_earliest_expiry)
    set_int(L, "earliest_expiry", (lua_Integer)f->earliest_expiry);
  if (f->has_last_chain_expiry)
    set_int(L, "last_chain_expiry", (lua_Integer)f->last_chain_expiry);
  lua_pushboolean(L, f->verified);
  lua_setfield(L, -2, "verified");
  if (f->subject) set_str(L, "subject", f->subject);
  if (f->issuer) set_str(L, "issuer", f->issuer);
  if (f->serial) set_str(L, "serial", f->serial);
  if (f->fingerprint_sha256)
    set_str(L, "fingerprint_sha256", f->fingerprint_sha256);
  lua_createtable(L, (int)f->ndns, 0);
  for (size_t i = 0; i < f->ndns; i++) {
    lua_pushstring(L, f->dns_names[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "dns_names");
  set_str(L, "version", f->version);
  set_str(L, "cipher", f->cipher);
  lua_setfield(L, -2, "tls");
}

/* A DNS result's fields (sonde/dns.h): lookup_time always; once a reply
 * came rcode (name, or its number as a string), answer_rrs,
 * authority_rrs, additional_rrs, answer / authority / additional (the
 * records' text) and serial (SOA). */
static void push_dns(lua_State *L, const struct sonde_dns_reply *d) {
  static const char *const counts[] = {"answer_rrs", "authority_rrs",
                                       "additional_rrs"};
  static const char *const lists[] = {"answer", "authority", "additional"};
  set_num(L, "lookup_time", d->lookup_time);
  if (!d->replied) return;
  const char *name = sonde_dns_rcode_name(d->rcode);
  if (name) set_str(L, "rcode", name);
  else {
    lua_pushfstring(L, "%d", d->rcode);
    lua_setfield(L, -2, "rcode");
  }
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
    set_int(L, counts[s], (lua_Integer)d->count[s]);
    lua_createtable(L, (int)d->count[s], 0);
    for (size_t i = 0; i < d->count[s]; i++) {
      lua_pushstring(L, d->rrs[s][i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, lists[s]);
  }
  if (d->has_serial) set_int(L, "serial", (lua_Integer)d->serial);
}

/* Push the result table.  Raises only on memory errors. */
void sonde_lua_push_result(lua_State *L, const struct sonde_result *r) {
  int is_exec = strcmp(r->kind, "exec") == 0;
  int is_http = strcmp(r->kind, "http") == 0;
  int is_grpc = strcmp(r->kind, "grpc") == 0;
  int is_icmp = strcmp(r->kind, "icmp") == 0;
  lua_createtable(L, 0, 12);
  set_str(L, "status", sonde_status_name(r->status));
  set_str(L, "reason", sonde_reason_name(r->reason));
  lua_pushlstring(L, r->output ? r->output : "", r->output_len);
  lua_setfield(L, -2, "output");
  set_num(L, "duration", r->duration);
  if (r->error) set_str(L, "error", r->error);
  if (r->code) set_int(L, "code", r->code);
  if (is_exec) {
    if (r->pid) set_int(L, "pid", r->pid);
    if (r->exited) set_int(L, "exit_code", r->exit_code);
    if (r->signal) set_int(L, "signal", r->signal);
  }
  if (is_exec || is_http) {
    lua_pushboolean(L, r->truncated);
    lua_setfield(L, -2, "truncated");
  }
  if (is_http) {
    if (r->http_status) set_int(L, "http_status", r->http_status);
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, (int)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
      /* lowercase name -> value; repeats joined with ", " (RFC 9110) */
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (const char *p = r->headers[i].name; *p; p++)
        luaL_addchar(&b, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
      luaL_pushresult(&b);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushliteral(L, ", ");
        lua_pushstring(L, r->headers[i].value);
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushstring(L, r->headers[i].value);
      }
      lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (r->url) set_str(L, "url", r->url);
    set_int(L, "redirects", r->redirects);
    lua_createtable(L, 0, 5);
    set_num(L, "resolve", r->phases.resolve);
    set_num(L, "connect", r->phases.connect);
    set_num(L, "tls", r->phases.tls);
    set_num(L, "processing", r->phases.processing);
    set_num(L, "transfer", r->phases.transfer);
    lua_setfield(L, -2, "phases");
    if (r->http_version % 10)
      set_num(L, "http_version", r->http_version / 10.0);
    else
      set_int(L, "http_version", r->http_version / 10);
    set_int(L, "content_length", r->content_length);
    set_int(L, "body_size", (lua_Integer)r->body_size);
  }
  if (is_grpc) {
    if (r->has_grpc_status) set_int(L, "grpc_status", r->grpc_status);
    if (r->has_serving_status) {
      const char *name = sonde_grpc_serving_name(r->serving_status);
      if (name) {
        set_str(L, "serving_status", name);
      } else {                  /* a value the enum does not name (Go: its
                                   number) */
        lua_pushfstring(L, "%d", r->serving_status);
        lua_setfield(L, -2, "serving_status");
      }
    }
  }
  if (is_icmp) {                 /* sonde/icmp.h */
    if (r->status == SONDE_SUCCESS) set_num(L, "rtt", r->icmp_rtt);
    if (r->icmp_reply_ttl >= 0) set_int(L, "reply_ttl", r->icmp_reply_ttl);
    if (r->ip_protocol)
      set_int(L, "ip_addr_hash", (lua_Integer)r->icmp_addr_hash);
    if (r->icmp_socket)
      set_str(L, "socket", r->icmp_socket == 2 ? "raw" : "datagram");
    lua_createtable(L, 0, 3);
    set_num(L, "resolve", r->icmp_resolve);
    set_num(L, "setup", r->icmp_setup);
    set_num(L, "rtt", r->icmp_rtt);
    lua_setfield(L, -2, "phases");
  }
  if (r->remote_addr[0]) set_str(L, "remote_addr", r->remote_addr);
  if (is_http || is_grpc || is_icmp || strcmp(r->kind, "tcp") == 0 ||
      strcmp(r->kind, "dns") == 0) {
    /* blackbox_exporter's probe_ip_protocol */
    int ipp = r->ip_protocol;
    if (!ipp && r->remote_addr[0]) ipp = r->remote_addr[0] == '[' ? 6 : 4;
    set_int(L, "ip_protocol", ipp);
  }
  if (r->tls) push_tls(L, r->tls);
  if (r->dns) push_dns(L, r->dns);
}

/* Message handler: adds a traceback to string errors. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL && !lua_isnoneornil(L, 1)) return 1; /* keep non-strings */
  if (msg && strstr(msg, "\nstack traceback:")) return 1; /* a task's own */
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Key of core.on_error's handler in the registry. */
static const char on_error_key = 'e';

/* A callback failed: its error is on top of the main thread's stack
 * (popped here).  With a handler, call it (protected) and go on; without,
 * keep the first error for run() to raise and stop the loop. */
static void callback_error(struct lcore *c) {
  lua_State *L = c->main;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &on_error_key) == LUA_TFUNCTION) {
    lua_insert(L, -2);                    /* handler, err */
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      const char *msg = lua_tostring(L, -1);
      if (msg)
        fprintf(stderr, "sonde: error in error handler: %s\n", msg);
      else
        fprintf(stderr, "sonde: error in error handler: (error object is "
                "a %s value)\n", luaL_typename(L, -1));
      fflush(stderr);
      lua_pop(L, 1);
    }
    return;
  }
  lua_pop(L, 1);                          /* not a handler */
  if (c->err_ref == LUA_NOREF)
    c->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);                        /* only the first is kept */
  event_base_loopbreak(sonde_loop_base(c->loop));
}

lua_State *sonde_lua_thread(struct lcore *c) {
  if (!c->running) return NULL;
  /* the main thread may be anywhere in a call (resuming the coroutine
   * that runs the loop): make room above its top */
  if (!lua_checkstack(c->main, LUA_MINSTACK)) return NULL;
  return c->main;
}

int sonde_lua_pcall(struct lcore *c, int nargs, int nres) {
  lua_State *L = c->main;
  int base = lua_gettop(L) - nargs;       /* index of the function */
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  if (rc != LUA_OK) callback_error(c);
  lua_remove(L, base);                    /* msgh */
  return rc == LUA_OK ? 0 : -1;
}

/* deliver(cb, result) - the protected part of call_back: build the result
 * table (which may fail for memory) and call cb with it. */
static int deliver(lua_State *L) {
  const struct sonde_result *r = lua_touserdata(L, 2);
  lua_settop(L, 1);
  sonde_lua_push_result(L, r);
  lua_call(L, 1, 0);
  return 0;
}

/* Take the entry for `id` out of the table kept at registry[key]: pushes
 * it (or nil). */
static void take_entry(lua_State *L, const void *key, uint64_t id) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_rawgeti(L, -1, (lua_Integer)id);
  lua_pushnil(L);
  lua_rawseti(L, -3, (lua_Integer)id);
  lua_remove(L, -2);
}

/* Key of the table of output callbacks (services' streams). */
static const char streams_key = 's';

/* The one way into Lua for a finished operation (sonde_result_cb).  Looks
 * the callback up by operation id, releases it, and calls it protected on
 * the main thread. */
static void call_back(const struct sonde_result *r, void *arg) {
  struct lcore *c = arg;
  lua_State *L = sonde_lua_thread(c);
  if (!L) return;                /* completed outside run(): nobody waits */
  int top = lua_gettop(L);
  take_entry(L, &streams_key, r->id);
  lua_pop(L, 1);
  lua_pushcfunction(L, deliver);
  take_entry(L, c, r->id);       /* the callback */
  if (lua_isfunction(L, -1)) {
    lua_pushlightuserdata(L, (void *)r);
    sonde_lua_pcall(c, 2, 0);
  }
  lua_settop(L, top);
}

/* Output of a streaming exec operation (sonde_output_cb).  The exec
 * prober holds the op meanwhile, so on_output may cancel it. */
static void call_output(uint64_t id, int stream, const char *data, size_t len,
                        void *arg) {
  struct lcore *c = arg;
  lua_State *L = sonde_lua_thread(c);
  if (!L) return;
  int top = lua_gettop(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &streams_key);
  if (lua_rawgeti(L, -1, (lua_Integer)id) == LUA_TFUNCTION) {
    lua_pushinteger(L, stream);
    lua_pushlstring(L, data, len);
    sonde_lua_pcall(c, 2, 0);
  }
  lua_settop(L, top);
}

/* Anchor the callback at argument `idx` under the new id (or fail). */
static int started(lua_State *L, struct lcore *c, uint64_t id, int idx) {
  if (id == 0) return luaL_error(L, "sonde: out of memory");
  lua_rawgetp(L, LUA_REGISTRYINDEX, c);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, (lua_Integer)id);
  lua_pop(L, 1);
  lua_pushinteger(L, (lua_Integer)id);
  return 1;
}

/* ---- option readers (raise on misuse) ---------------------------------- */

static double opt_num(lua_State *L, int t, const char *k, double def) {
  double v = def;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    if (!lua_isnumber(L, -1)) luaL_error(L, "sonde.core: %s: number expected", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* A string field, or NULL.  The string stays anchored in table t. */
static const char *opt_str(lua_State *L, int t, const char *k, size_t *len) {
  const char *s = NULL;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "sonde.core: %s: string expected", k);
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1);
  return s;
}

/* Array of strings t[k] as a NULL-terminated vector in a userdata left on
 * the stack (so that it is freed by the GC even if we raise). */
static char **opt_strv(lua_State *L, int t, const char *k, int required) {
  if (lua_getfield(L, t, k) == LUA_TNIL) {
    lua_pop(L, 1);
    if (required) luaL_error(L, "sonde.core: %s: array expected", k);
    lua_pushnil(L);             /* keep the stack shape */
    return NULL;
  }
  luaL_checktype(L, -1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, -1);
  char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 1);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1);  /* the table anchors the strings */
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, -2, i) != LUA_TSTRING)
      luaL_error(L, "sonde.core: %s[%d]: string expected", k, (int)i);
    v[i - 1] = (char *)lua_tostring(L, -1);
    if (strlen(v[i - 1]) != lua_rawlen(L, -1))
      luaL_error(L, "sonde.core: %s[%d]: contains a NUL byte", k, (int)i);
    lua_pop(L, 1);
  }
  v[n] = NULL;
  lua_remove(L, -2);
  return v;
}

static sonde_status status_of(lua_State *L, const char *s) {
  static const char *const names[] = {"success", "warning", "failure",
                                      "unknown", NULL};
  for (int i = 0; names[i]; i++)
    if (strcmp(s, names[i]) == 0) return (sonde_status)i;
  luaL_error(L, "sonde.core: invalid status '%s'", s);
  return SONDE_UNKNOWN;
}

/* ---- probers -------------------------------------------------------------- */

/* Read core.exec's options (below) from the table at index t; see
 * lsonde.h. */
int sonde_lua_exec_opts(lua_State *L, int t, struct sonde_exec_opts *o) {
  int top = lua_gettop(L);
  sonde_exec_opts_init(o);
  o->argv = opt_strv(L, t, "argv", 1);
  o->envp = opt_strv(L, t, "env", 0);
  if (!o->argv[0]) return luaL_error(L, "sonde.core: argv: empty");
  o->cwd = opt_str(L, t, "cwd", NULL);
  o->input = opt_str(L, t, "input", &o->input_len);
  o->timeout = opt_num(L, t, "timeout", o->timeout);
  o->kill_grace = opt_num(L, t, "kill_grace", o->kill_grace);
  o->max_output = (size_t)opt_num(L, t, "max_output", (double)o->max_output);
  const char *ts = opt_str(L, t, "timeout_status", NULL);
  if (ts) o->timeout_status = status_of(L, ts);
  if (lua_getfield(L, t, "codes") == LUA_TTABLE) {
    if (lua_getfield(L, -1, "default") == LUA_TSTRING) {
      sonde_status d = status_of(L, lua_tostring(L, -1));
      for (int i = 0; i < 256; i++) o->codes[i] = d;
    }
    lua_pop(L, 1);
    /* the codes the table holds (not 256 look-ups): integer keys 0..255
     * with a string value; anything else is ignored */
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_Integer k;
      if (lua_type(L, -1) == LUA_TSTRING && lua_isinteger(L, -2) &&
          (k = lua_tointeger(L, -2)) >= 0 && k < 256)
        o->codes[k] = status_of(L, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return lua_gettop(L) - top;
}

/* core.exec(opts, cb [, on_output]) -> id.  opts: argv, env ("K=V"
 * array), cwd, timeout (0: none), kill_grace, max_output, codes (table
 * code -> status, plus `default`), timeout_status, input (string written
 * to the child's stdin, NULs allowed; nil: /dev/null).  With on_output, output
 * is passed to on_output(stream, bytes) as it arrives (1 stdout, 2
 * stderr) instead of being kept. */
static int l_core_exec(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 3);               /* on_output or nil stays at index 3 */
  int streaming = !lua_isnil(L, 3);
  if (streaming) luaL_checktype(L, 3, LUA_TFUNCTION);
  struct sonde_exec_opts o;
  sonde_lua_exec_opts(L, 1, &o);
  if (streaming) {
    o.on_output = call_output;
    o.output_arg = c;
  }
  uint64_t id = sonde_exec_start(c->loop, &o, call_back, c);
  if (streaming && id) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &streams_key);
    lua_pushvalue(L, 3);
    lua_rawseti(L, -2, (lua_Integer)id);
    lua_pop(L, 1);
  }
  return started(L, c, id, 2);
}

/* core.exec_pid(id) -> pid of a running exec operation, or nil */
static int l_core_exec_pid(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  pid_t pid = sonde_exec_pid(c->loop, (uint64_t)luaL_checkinteger(L, 1));
  if (pid > 0) lua_pushinteger(L, pid);
  else lua_pushnil(L);
  return 1;
}

/* core.kill_all(signum) -> count: signal every running command's group */
static int l_core_kill_all(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  lua_pushinteger(L, sonde_exec_kill_all(c->loop,
                                         (int)luaL_checkinteger(L, 1)));
  return 1;
}

/* core.terminate(id, grace) -> boolean: SIGTERM the command's group,
 * SIGKILL after grace seconds; its callback reports the end. */
static int l_core_terminate(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  double grace = luaL_optnumber(L, 2, 10);
  lua_pushboolean(L, sonde_exec_terminate(c->loop, (uint64_t)id, grace) == 0);
  return 1;
}

/* A checked pattern field of table t (NULL when absent); raises on a
 * pattern Lua would refuse. */
static const char *opt_pattern(lua_State *L, int t, const char *k,
                               size_t *len) {
  const char *p = opt_str(L, t, k, len);
  const char *err = p ? sonde_pattern_check(p, *len) : NULL;
  if (err) luaL_error(L, "sonde.core: %s: %s", k, err);
  return p;
}

/* The expectations of core.http (opts.expect, see sonde/expect.h): status
 * (array of {lo, hi}), max_duration, headers (array of {name, pattern}),
 * body, body_not.  Built in userdata left on the stack, which the caller
 * keeps referenced with the options; strings stay in the expect table. */
static struct sonde_http_expect *read_expect(lua_State *L, int e) {
  e = lua_absindex(L, e);
  struct sonde_http_expect *x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  if (lua_getfield(L, e, "status") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    struct sonde_status_range *st =
        lua_newuserdatauv(L, sizeof *st * (size_t)(n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -2, i);
      luaL_checktype(L, -1, LUA_TTABLE);
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      st[i - 1].lo = (int)luaL_checkinteger(L, -2);
      st[i - 1].hi = (int)luaL_checkinteger(L, -1);
      lua_pop(L, 3);
    }
    x->status = st;
    x->nstatus = (size_t)n;
  }
  x->max_duration = opt_num(L, e, "max_duration", 0);
  if (lua_getfield(L, e, "headers") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    struct sonde_header_expect *hv =
        lua_newuserdatauv(L, sizeof *hv * (size_t)(n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -2, i);
      luaL_checktype(L, -1, LUA_TTABLE);
      int h = lua_gettop(L);
      hv[i - 1].name = opt_str(L, h, "name", NULL);
      hv[i - 1].pattern = opt_pattern(L, h, "pattern", &hv[i - 1].pattern_len);
      if (!hv[i - 1].name || !hv[i - 1].pattern)
        luaL_error(L, "sonde.core: expect.headers[%d]: name and pattern "
                   "expected", (int)i);
      lua_pop(L, 1);
    }
    x->headers = hv;
    x->nheaders = (size_t)n;
  }
  x->body = opt_pattern(L, e, "body", &x->body_len);
  x->body_not = opt_pattern(L, e, "body_not", &x->body_not_len);
  return x;
}

/* Read core.http's options from the table at index t (see lsonde.h):
 * url, method, body, headers (array of
 * {name, value}, names canonical), user_agent, timeout, max_body,
 * max_redirects, follow_redirects ("same-host" | "same-origin" | "none",
 * see sonde/http.h), tls (see sonde_lua_tls_opts), expect (see
 * read_expect). */
int sonde_lua_http_opts(lua_State *L, int t, struct sonde_http_opts *o) {
  int top = lua_gettop(L);
  sonde_http_opts_init(o);
  o->url = opt_str(L, t, "url", NULL);
  if (!o->url) return luaL_error(L, "sonde.core: url: string expected");
  const char *m = opt_str(L, t, "method", NULL);
  if (m) o->method = m;
  o->body = opt_str(L, t, "body", &o->body_len);
  const char *ua = opt_str(L, t, "user_agent", NULL);
  if (ua) o->user_agent = ua;
  o->timeout = opt_num(L, t, "timeout", o->timeout);
  o->max_body = (size_t)opt_num(L, t, "max_body", (double)o->max_body);
  o->max_redirects = (int)opt_num(L, t, "max_redirects", o->max_redirects);
  const char *fr = opt_str(L, t, "follow_redirects", NULL);
  if (fr) {
    static const char *const names[] = {"same-host", "same-origin", "none",
                                        NULL};
    lua_pushstring(L, fr);
    o->follow_redirects = luaL_checkoption(L, -1, NULL, names);
    lua_pop(L, 1);
  }
  sonde_lua_tls_opts(L, t, &o->tls);
  if (lua_getfield(L, t, "headers") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    struct sonde_header *hv =
        lua_newuserdatauv(L, sizeof *hv * (size_t)(n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -2, i);
      luaL_checktype(L, -1, LUA_TTABLE);
      lua_getfield(L, -1, "name");
      lua_getfield(L, -2, "value");
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "sonde.core: headers[%d]: name and value "
                          "strings expected", (int)i);
      /* anchored by the header tables, which the headers array anchors */
      hv[i - 1].name = (char *)lua_tostring(L, -2);
      hv[i - 1].value = (char *)lua_tostring(L, -1);
      lua_pop(L, 3);
    }
    o->headers = hv;
    o->nheaders = (size_t)n;
  }
  if (lua_getfield(L, t, "expect") == LUA_TTABLE)
    o->expect = read_expect(L, -1);
  return lua_gettop(L) - top;
}

int sonde_lua_tls_opts(lua_State *L, int t, struct sonde_tls_opts *o) {
  memset(o, 0, sizeof *o);
  if (lua_getfield(L, t, "tls") == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  luaL_checktype(L, -1, LUA_TTABLE);
  int s = lua_gettop(L);
  lua_getfield(L, s, "verify");
  o->verify = lua_toboolean(L, -1);
  lua_pop(L, 1);
  o->ca_file = opt_str(L, s, "ca_file", NULL);
  o->cert_file = opt_str(L, s, "cert_file", NULL);
  o->key_file = opt_str(L, s, "key_file", NULL);
  o->server_name = opt_str(L, s, "server_name", NULL);
  const char *v = opt_str(L, s, "min_version", NULL);
  if (v && (o->min_version = sonde_tls_parse_version(v)) < 0)
    return luaL_error(L, "sonde.core: tls.min_version: not a TLS version: %s",
                      v);
  o->expiry_warning = opt_num(L, s, "expiry_warning", 0);
  o->expiry_failure = opt_num(L, s, "expiry_failure", 0);
  lua_pop(L, 1);
  return 1;
}

/* core.http(opts, cb) -> id (options: see above). */
static int l_core_http(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  struct sonde_http_opts o;
  sonde_lua_http_opts(L, 1, &o);
  uint64_t id = sonde_http_start(c->loop, &o, call_back, c);
  return started(L, c, id, 2);
}

/* Read core.tcp's options (host, port, timeout, tls: see
 * sonde_lua_tls_opts, steps) from the table at t; steps: array of
 * { kind = "expect" | "send" | "starttls" | "expect_re" | "send_expand",
 *   data = string,
 * name = string }
 * (sonde/tcp.h), read into a userdata left on the stack (returns 1, else
 * 0). */
int sonde_lua_tcp_opts(lua_State *L, int t, struct sonde_tcp_opts *o) {
  static const char *const kinds[] = {"expect", "send", "starttls",
                                      "expect_re", "send_expand", NULL};
  memset(o, 0, sizeof *o);
  o->host = opt_str(L, t, "host", NULL);
  if (!o->host) luaL_error(L, "sonde.core: host: string expected");
  o->port = (long)opt_num(L, t, "port", 0);
  o->timeout = opt_num(L, t, "timeout", 1);
  o->use_tls = sonde_lua_tls_opts(L, t, &o->tls);
  if (lua_getfield(L, t, "steps") != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_Integer n = luaL_len(L, -1);
  struct sonde_tcp_step *sv =
      lua_newuserdatauv(L, sizeof *sv * (size_t)(n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    luaL_checktype(L, -1, LUA_TTABLE);
    int h = lua_gettop(L);
    lua_getfield(L, h, "kind");
    sv[i - 1].kind = (enum sonde_tcp_step_kind)luaL_checkoption(L, -1, NULL,
                                                                kinds);
    lua_pop(L, 1);
    sv[i - 1].data = sv[i - 1].kind == SONDE_TCP_EXPECT
                         ? opt_pattern(L, h, "data", &sv[i - 1].len)
                         : opt_str(L, h, "data", &sv[i - 1].len);
    if (!sv[i - 1].data) {
      sv[i - 1].data = "";
      sv[i - 1].len = 0;
    }
    sv[i - 1].name = opt_str(L, h, "name", NULL);
    if (!sv[i - 1].name) sv[i - 1].name = kinds[sv[i - 1].kind];
    lua_pop(L, 1);
  }
  lua_remove(L, -2);                  /* the steps stay in table t */
  o->steps = sv;
  o->nsteps = (size_t)n;
  return 1;
}

/* core.tcp(opts, cb) -> id */
static int l_core_tcp(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  struct sonde_tcp_opts o;
  sonde_lua_tcp_opts(L, 1, &o);     /* (its userdata stays on the stack) */
  return started(L, c, sonde_tcp_start(c->loop, &o, call_back, c), 2);
}

/* Read core.grpc's options (host, port, service, timeout, user_agent,
 * tls: see sonde_lua_tls_opts, its presence turning TLS on) from the table
 * at t. */
void sonde_lua_grpc_opts(lua_State *L, int t, struct sonde_grpc_opts *o) {
  sonde_grpc_opts_init(o);
  o->host = opt_str(L, t, "host", NULL);
  if (!o->host) luaL_error(L, "sonde.core: host: string expected");
  o->port = (long)opt_num(L, t, "port", 0);
  const char *svc = opt_str(L, t, "service", NULL);
  if (svc) o->service = svc;
  o->timeout = opt_num(L, t, "timeout", o->timeout);
  o->user_agent = opt_str(L, t, "user_agent", NULL);
  o->use_tls = sonde_lua_tls_opts(L, t, &o->tls);
}

/* core.grpc(opts, cb) -> id */
static int l_core_grpc(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  struct sonde_grpc_opts o;
  sonde_lua_grpc_opts(L, 1, &o);
  return started(L, c, sonde_grpc_start(c->loop, &o, call_back, c), 2);
}

/* Read core.icmp's options (sonde/icmp.h) from the table at t: host,
 * ip_protocol (4 | 6), fallback (boolean), payload_size, dont_fragment
 * (boolean), ttl, source_ip, timeout, socket ("auto" | "raw" |
 * "datagram"). */
void sonde_lua_icmp_opts(lua_State *L, int t, struct sonde_icmp_opts *o) {
  static const char *const sockets[] = {"auto", "raw", "datagram", NULL};
  sonde_icmp_opts_init(o);
  o->host = opt_str(L, t, "host", NULL);
  if (!o->host) luaL_error(L, "sonde.core: host: string expected");
  o->ip_protocol = (int)opt_num(L, t, "ip_protocol", o->ip_protocol);
  if (o->ip_protocol != 4 && o->ip_protocol != 6)
    luaL_error(L, "sonde.core: ip_protocol: 4 or 6 expected");
  if (lua_getfield(L, t, "fallback") != LUA_TNIL)
    o->fallback = lua_toboolean(L, -1);
  lua_pop(L, 1);
  double ps = opt_num(L, t, "payload_size", 0);
  if (!(ps >= 0 && ps <= SONDE_ICMP_PAYLOAD_MAX))
    luaL_error(L, "sonde.core: payload_size: 0..%d expected",
               SONDE_ICMP_PAYLOAD_MAX);
  o->payload_size = (size_t)ps;
  lua_getfield(L, t, "dont_fragment");
  o->dont_fragment = lua_toboolean(L, -1);
  lua_pop(L, 1);
  double ttl = opt_num(L, t, "ttl", o->ttl);
  if (!(ttl >= 0 && ttl <= 255))
    luaL_error(L, "sonde.core: ttl: 0..255 expected");
  o->ttl = (int)ttl;
  o->source_ip = opt_str(L, t, "source_ip", NULL);
  o->timeout = opt_num(L, t, "timeout", o->timeout);
  lua_getfield(L, t, "socket");
  o->socket = (enum sonde_icmp_socket)luaL_checkoption(L, -1, "auto", sockets);
  lua_pop(L, 1);
}

/* core.icmp(opts, cb) -> id */
static int l_core_icmp(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  struct sonde_icmp_opts o;
  sonde_lua_icmp_opts(L, 1, &o);
  return started(L, c, sonde_icmp_start(c->loop, &o, call_back, c), 2);
}

/* Read core.dns's options from the table at t: server (an IP literal),
 * port, name, qtype, qclass (numbers), transport ("udp" | "tcp"),
 * recursion_desired (boolean, default true), timeout, valid_rcodes
 * (array of rcode numbers), validate = { answer = V, authority = V,
 * additional = V } with V = { fail_if_matches_regexp = {...},
 * fail_if_all_match_regexp, fail_if_not_matches_regexp,
 * fail_if_none_matches_regexp } (arrays of POSIX EREs), shown (the same
 * shape: the regexps as written, for messages; optional).  The regexps'
 * vectors go into one userdata left on the stack (returns 1; 0 when
 * there are none); their strings stay in the tables of t. */
int sonde_lua_dns_opts(lua_State *L, int t, struct sonde_dns_opts *o) {
  static const char *const sections[] = {"answer", "authority", "additional"};
  static const char *const rules[] = {
      "fail_if_matches_regexp", "fail_if_all_match_regexp",
      "fail_if_not_matches_regexp", "fail_if_none_matches_regexp"};
  static const char *const transports[] = {"udp", "tcp", NULL};
  t = lua_absindex(L, t);
  sonde_dns_opts_init(o);
  o->server = opt_str(L, t, "server", NULL);
  o->name = opt_str(L, t, "name", NULL);
  if (!o->server) luaL_error(L, "sonde.core: server: string expected");
  if (!o->name) luaL_error(L, "sonde.core: name: string expected");
  o->port = (long)opt_num(L, t, "port", (double)o->port);
  o->qtype = (int)opt_num(L, t, "qtype", o->qtype);
  o->qclass = (int)opt_num(L, t, "qclass", o->qclass);
  o->timeout = opt_num(L, t, "timeout", o->timeout);
  const char *tr = opt_str(L, t, "transport", NULL);
  if (tr) {
    lua_pushstring(L, tr);
    o->transport = luaL_checkoption(L, -1, NULL, transports);
    lua_pop(L, 1);
  }
  if (lua_getfield(L, t, "recursion_desired") != LUA_TNIL)
    o->recursion_desired = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, t, "valid_rcodes") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      lua_Integer c = luaL_checkinteger(L, -1);
      if (c < 0 || c > 31)
        luaL_error(L, "sonde.core: valid_rcodes[%d]: 0..31 expected", (int)i);
      o->valid_rcodes |= 1u << c;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (lua_getfield(L, t, "validate") != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int v = lua_gettop(L);
  int sh = 0;                         /* shown: the same shape, or nil */
  if (lua_getfield(L, t, "shown") == LUA_TTABLE)
    sh = lua_gettop(L);
  else
    lua_pop(L, 1);
  /* count, then fill one vector: the EREs, then (shown) the same as
   * written */
  size_t total = 0;
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
    if (lua_getfield(L, v, sections[s]) == LUA_TTABLE) {
      for (int k = 0; k < SONDE_DNS_RULES; k++) {
        if (lua_getfield(L, -1, rules[k]) == LUA_TTABLE)
          total += (size_t)luaL_len(L, -1);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  const char **vec = lua_newuserdatauv(L, sizeof(char *) * (2 * total + 1), 0);
  size_t at = 0;
  for (int pass = 0; pass < (sh ? 2 : 1); pass++) {
    int from = pass ? sh : v;
    for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
      if (lua_getfield(L, from, sections[s]) == LUA_TTABLE) {
        for (int k = 0; k < SONDE_DNS_RULES; k++) {
          if (lua_getfield(L, -1, rules[k]) == LUA_TTABLE) {
            lua_Integer n = luaL_len(L, -1);
            if (pass)
              o->validate[s].shown[k] = vec + at;
            else
              o->validate[s].re[k] = vec + at;
            size_t got = 0;
            for (lua_Integer i = 1; i <= n && at < 2 * total; i++) {
              if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
                luaL_error(L, "sonde.core: %s.%s.%s[%d]: string expected",
                           pass ? "shown" : "validate", sections[s], rules[k],
                           (int)i);
              vec[at++] = lua_tostring(L, -1);  /* anchored by the table */
              got++;
              lua_pop(L, 1);
            }
            if (!pass)
              o->validate[s].n[k] = got;
            else if (got != o->validate[s].n[k])
              luaL_error(L, "sonde.core: shown.%s.%s: not as many as in "
                         "validate", sections[s], rules[k]);
          }
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
  }
  vec[at] = NULL;
  lua_remove(L, v);                   /* the userdata stays */
  if (sh) lua_remove(L, sh - 1);      /* (shifted down by v's removal) */
  return 1;
}

/* core.dns(opts, cb) -> id */
static int l_core_dns(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  struct sonde_dns_opts o;
  sonde_lua_dns_opts(L, 1, &o);     /* (its userdata stays on the stack) */
  return started(L, c, sonde_dns_start(c->loop, &o, call_back, c), 2);
}

/* core.dns_check(what, value): what the DNS prober's options take
 * (sonde/dns.h).  "regex": nil, or why the regexp is refused; "address":
 * true when value is an IPv4 or IPv6 literal; "type", "class", "rcode":
 * the number of a name, or nil. */
static int l_core_dns_check(lua_State *L) {
  static const char *const whats[] = {"regex", "address", "type", "class",
                                      "rcode", NULL};
  int what = luaL_checkoption(L, 1, NULL, whats);
  size_t len;
  const char *v = luaL_checklstring(L, 2, &len);
  int n = -1;
  switch (what) {
  case 0: {
    char err[256];
    if (strlen(v) != len) {
      lua_pushliteral(L, "contains a NUL byte");
      return 1;
    }
    if (sonde_dns_regex_check(v, err, sizeof err) != 0) lua_pushstring(L, err);
    else lua_pushnil(L);
    return 1;
  }
  case 1: {
    unsigned char buf[16];
    lua_pushboolean(L, strlen(v) == len &&
                           (inet_pton(AF_INET, v, buf) == 1 ||
                            inet_pton(AF_INET6, v, buf) == 1));
    return 1;
  }
  case 2: n = sonde_dns_type(v); break;
  case 3: n = sonde_dns_class(v); break;
  default: n = sonde_dns_rcode(v); break;
  }
  if (n < 0) lua_pushnil(L);
  else lua_pushinteger(L, n);
  return 1;
}

/* core.pb_encode_string(field, bytes) -> the protobuf message holding
 * string field `field` (sonde/pb.h; a test hook of the codec). */
static int l_core_pb_encode_string(lua_State *L) {
  lua_Integer field = luaL_checkinteger(L, 1);
  size_t len, n = 0;
  const char *s = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, field >= 1 && field <= (1 << 29) - 1, 1,
                "not a field number");
  uint8_t *m = sonde_pb_encode_string((uint32_t)field, s, len, &n);
  if (!m) return luaL_error(L, "sonde: out of memory");
  lua_pushlstring(L, (const char *)m, n);
  free(m);
  return 1;
}

/* core.pb_decode_varint(bytes, field) -> value (integer; 0 when absent),
 * found (boolean)  or  nil, error text (sonde/pb.h; a test hook). */
static int l_core_pb_decode_varint(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer field = luaL_checkinteger(L, 2);
  luaL_argcheck(L, field >= 1 && field <= (1 << 29) - 1, 2,
                "not a field number");
  uint64_t v = 0;
  int found = 0;
  const char *err = sonde_pb_decode_varint((const uint8_t *)s, len,
                                           (uint32_t)field, &v, &found);
  if (err) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)v);
  lua_pushboolean(L, found);
  return 2;
}

/* core.pb_varint(n) -> the varint bytes of integer n (as uint64). */
static int l_core_pb_varint(lua_State *L) {
  uint8_t buf[SONDE_PB_VARINT_MAX];
  size_t n = sonde_pb_put_varint(buf, (uint64_t)luaL_checkinteger(L, 1));
  lua_pushlstring(L, (const char *)buf, n);
  return 1;
}

/* core.go_duration(seconds) -> Go's Duration.String() ("1.5s"). */
static int l_core_go_duration(lua_State *L) {
  char buf[64];
  sonde_go_duration(buf, sizeof buf, luaL_checknumber(L, 1));
  lua_pushstring(L, buf);
  return 1;
}

/* A timer's end: its callback is called with no argument (a timer has
 * no result to tell). */
static void call_timer(const struct sonde_result *r, void *arg) {
  struct lcore *c = arg;
  lua_State *L = sonde_lua_thread(c);
  if (!L) return;
  int top = lua_gettop(L);
  take_entry(L, c, r->id);
  if (lua_isfunction(L, -1)) sonde_lua_pcall(c, 0, 0);
  lua_settop(L, top);
}

/* core.timer(seconds, cb) -> id: cb() after seconds */
static int l_core_timer(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  double s = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  return started(L, c, sonde_timer_start(c->loop, s, call_timer, c), 2);
}

/* core.resolve(name, timeout, cb) -> id: the name's addresses (cb gets a
 * result whose output lists them one per line; resolve_op.c). */
static int l_core_resolve(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  const char *name = luaL_checkstring(L, 1);
  double s = luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  return started(L, c, sonde_resolve_start(c->loop, name, s, call_back, c), 3);
}

/* core.cancel(id) -> boolean (true if it was pending).  Safe from any
 * callback, the operation's own included: from its on_output it stops the
 * output and the result callback never runs; from its own result callback
 * it returns false. */
static int l_core_cancel(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  int was = sonde_loop_cancel(c->loop, (uint64_t)id);
  take_entry(L, c, (uint64_t)id);
  take_entry(L, &streams_key, (uint64_t)id);
  lua_pushboolean(L, was);
  return 1;
}

/* core.run() -> true.  Runs until nothing is pending, from the main
 * thread or any coroutine (callbacks run on the main thread).  Without an
 * on_error handler, raises the error of a callback that failed (the loop
 * stops there; run() may be called again to go on).  Raises if the loop
 * is already running. */
static int l_core_run(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  if (c->running)
    return luaL_error(L, "sonde.run: the loop is already running");
  c->running = 1;
  event_base_loop(sonde_loop_base(c->loop), 0);
  c->running = 0;
  if (c->err_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->err_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, c->err_ref);
    c->err_ref = LUA_NOREF;
    return lua_error(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.on_error(fn | nil): the error policy of callbacks (see the top of
 * this file).  fn(err) is called on the main thread, protected, for each
 * error a callback raises, and the loop goes on; nil (the default) makes
 * run() stop and raise the first error. */
static int l_core_on_error(lua_State *L) {
  sonde_lua_core(L);
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &on_error_key);
  return 0;
}

static int l_core_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sonde_loop_pending(sonde_lua_core(L)->loop));
  return 1;
}

/* ---- helpers -------------------------------------------------------------- */

static const char *env_lookup(void *ctx, const char *name, size_t len,
                              size_t *vlen) {
  lua_State *L = ctx;
  const char *v = NULL;
  lua_pushlstring(L, name, len);
  if (lua_rawget(L, 2) == LUA_TSTRING) v = lua_tolstring(L, -1, vlen);
  lua_pop(L, 1);                 /* v stays anchored in the env table */
  return v;
}

/* core.expand(str, env) -> string.  env: table of string -> string. */
static int l_core_expand(lua_State *L) {
  size_t len, outlen;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "sonde.expand: env: names and values must be "
                        "strings");
    lua_pop(L, 1);
  }
  char *out = sonde_expand(s, len, env_lookup, L, &outlen);
  if (!out) return luaL_error(L, "sonde.expand: out of memory");
  lua_pushlstring(L, out, outlen);
  free(out);
  return 1;
}

/* core.format_url(scheme, host, port, path) -> string */
static int l_core_format_url(lua_State *L) {
  char *u = sonde_http_format_url(luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                                  (long)luaL_checkinteger(L, 3),
                                  luaL_optstring(L, 4, ""));
  if (!u) return luaL_error(L, "sonde: out of memory");
  lua_pushstring(L, u);
  free(u);
  return 1;
}

/* core.parse_url(url) -> host, port|nil  or  nil, error text.  Parsed by
 * libcurl's URL API, as the transfer will parse it. */
static int l_core_parse_url(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL;
  if (!u) return luaL_error(L, "sonde: out of memory");
  CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (rc == CURLUE_OK) rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
  if (rc != CURLUE_OK || !host || !*host) {
    luaL_pushfail(L);
    lua_pushstring(L, rc != CURLUE_OK ? curl_url_strerror(rc) : "no host");
    curl_free(host);
    curl_url_cleanup(u);
    return 2;
  }
  lua_pushstring(L, host);
  if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && port)
    lua_pushinteger(L, strtol(port, NULL, 10));
  else
    lua_pushnil(L);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return 2;
}

/* core.pattern_check(p) -> nil, or Lua's message for a pattern it would
 * refuse (sonde/pattern.h) */
static int l_core_pattern_check(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  const char *err = sonde_pattern_check(p, n);
  if (err) lua_pushstring(L, err);
  else lua_pushnil(L);
  return 1;
}

/* core.pattern_find(s, p) -> start, end (1-based, as string.find) or nil;
 * the C matcher the expectations use.  Raises on a pattern
 * sonde_pattern_check refuses and on "pattern too complex", as Lua. */
static int l_core_pattern_find(lua_State *L) {
  size_t ls, lp, b, e;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *err = sonde_pattern_check(p, lp);
  if (err) return luaL_error(L, "%s", err);
  int m = sonde_pattern_find(s, ls, p, lp, &b, &e);
  if (m < 0) return luaL_error(L, "pattern too complex");
  if (m == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)b + 1);
  lua_pushinteger(L, (lua_Integer)e);
  return 2;
}

/* core.quote(s [, max]) -> s quoted as expectation messages show what a
 * target sent (sonde_expect_quote; max bytes, default 80) */
static int l_core_quote(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer max = luaL_optinteger(L, 2, SONDE_EXPECT_SHOWN);
  luaL_argcheck(L, max >= 0 && max <= 65536, 2, "0..65536 expected");
  size_t cap = (size_t)max * 4 + 8;
  char *out = lua_newuserdatauv(L, cap, 0);
  size_t len = sonde_expect_quote(out, cap, s, n, (size_t)max);
  lua_pushlstring(L, out, len);
  return 1;
}

/* core.header_name(name) -> canonical name, or nil if invalid */
static int l_core_header_name(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (strlen(s) != n || !sonde_http_valid_name(s)) {
    lua_pushnil(L);
    return 1;
  }
  char *copy = strdup(s);
  if (!copy) return luaL_error(L, "sonde: out of memory");
  sonde_http_canonical_name(copy);
  lua_pushstring(L, copy);
  free(copy);
  return 1;
}

/* core.set_subreaper(on) -> true | nil, err.  While on, the commands
 * this loop starts carry SONDE_OWNER (see sonde_loop_set_subreaper). */
static int l_core_set_subreaper(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  if (sonde_loop_set_subreaper(c->loop, lua_toboolean(L, 1)) != 0) {
    int err = errno;
    luaL_pushfail(L);
    lua_pushstring(L, strerror(err));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Key of the table of signal handlers, by signal number. */
static const char signals_key = 'g';

/* The signal's libevent callback.  It touches nothing of its event after
 * the Lua handler returns: the handler may free that event
 * (core.on_signal(sig, nil)), which libevent 2.1 allows from inside the
 * event's own callback (event_del aborts the signal's delivery loop). */
static void on_signal(evutil_socket_t signum, short what, void *arg) {
  struct lcore *c = arg;
  lua_State *L = sonde_lua_thread(c);
  (void)what;
  if (!L) return;
  int top = lua_gettop(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &signals_key);
  if (lua_rawgeti(L, -1, (lua_Integer)signum) == LUA_TFUNCTION) {
    lua_pushinteger(L, (lua_Integer)signum);
    sonde_lua_pcall(c, 1, 0);
  }
  lua_settop(L, top);
}

/* core.on_signal(signum, fn | nil): call fn(signum) inside run() each time
 * the signal arrives (libevent signal event), or stop watching it (safe
 * from inside that signal's own handler).  While watched, a signal keeps
 * run() from returning. */
static int l_core_on_signal(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  lua_Integer sig = luaL_checkinteger(L, 1);
  luaL_argcheck(L, sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP,
                1, "not a signal that can be handled");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &signals_key);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, sig);
  if (lua_isnoneornil(L, 2)) {
    if (c->sig[sig]) event_free(c->sig[sig]);
    c->sig[sig] = NULL;
  } else if (!c->sig[sig]) {
    c->sig[sig] = evsignal_new(sonde_loop_base(c->loop), (int)sig, on_signal, c);
    if (!c->sig[sig] || evsignal_add(c->sig[sig], NULL) != 0)
      return luaL_error(L, "sonde: cannot watch signal %d", (int)sig);
  }
  return 0;
}

/* core.reap_orphans() -> number reaped (see sonde_reap_orphans). */
static int l_core_reap_orphans(lua_State *L) {
  lua_pushinteger(L, sonde_reap_orphans(sonde_lua_core(L)->loop));
  return 1;
}

/* core.end_orphans(grace [, owner] [, cb]) -> id: end the escaped
 * processes of the exec operation `owner`, or every escaped process
 * (owner nil or 0): SIGTERM, SIGKILL after grace seconds; cb(result) once
 * none is left (see sonde_end_orphans). */
static int l_core_end_orphans(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  double grace = luaL_checknumber(L, 1);
  lua_Integer owner = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, owner >= 0, 2, "not an operation id");
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  return started(L, c, sonde_end_orphans(c->loop, (uint64_t)owner, grace,
                                         call_back, c), 3);
}

/* core.wall_time() -> seconds since the epoch, fractional (CLOCK_REALTIME) */
static int l_core_wall_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int l_core_now(lua_State *L) {
  lua_pushnumber(L, sonde_now());
  return 1;
}

/* core.trim(): give the heap's free memory back to the system
 * (malloc_trim; glibc only, else nothing).  After a load's garbage has
 * been collected. */
static int l_core_trim(lua_State *L) {
  (void)L;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  return 0;
}

static int loop_gc(lua_State *L) {
  struct lcore *c = luaL_checkudata(L, 1, LOOP_MT);
  for (int i = 0; i < NSIG; i++)
    if (c->sig[i]) event_free(c->sig[i]);
  memset(c->sig, 0, sizeof c->sig);
  if (c->loop) sonde_loop_free(c->loop);
  c->loop = NULL;
  return 0;
}

static const luaL_Reg core_funcs[] = {
    {"exec", l_core_exec},
    {"http", l_core_http},
    {"tcp", l_core_tcp},
    {"grpc", l_core_grpc},
    {"icmp", l_core_icmp},
    {"dns", l_core_dns},
    {"dns_check", l_core_dns_check},
    {"timer", l_core_timer},
    {"resolve", l_core_resolve},
    {"cancel", l_core_cancel},
    {"run", l_core_run},
    {"on_error", l_core_on_error},
    {"pending", l_core_pending},
    {"expand", l_core_expand},
    {"format_url", l_core_format_url},
    {"parse_url", l_core_parse_url},
    {"header_name", l_core_header_name},
    {"pattern_check", l_core_pattern_check},
    {"pattern_find", l_core_pattern_find},
    {"quote", l_core_quote},
    {"set_subreaper", l_core_set_subreaper},
    {"now", l_core_now},
    {"wall_time", l_core_wall_time},
    {"terminate", l_core_terminate},
    {"exec_pid", l_core_exec_pid},
    {"kill_all", l_core_kill_all},
    {"on_signal", l_core_on_signal},
    {"reap_orphans", l_core_reap_orphans},
    {"end_orphans", l_core_end_orphans},
    {"trim", l_core_trim},
    {"pb_encode_string", l_core_pb_encode_string},
    {"pb_decode_varint", l_core_pb_decode_varint},
    {"pb_varint", l_core_pb_varint},
    {"go_duration", l_core_go_duration},
    {NULL, NULL}};

int luaopen_sonde_core(lua_State *L);

int luaopen_sonde_core(lua_State *L) {
  luaL_newlibtable(L, core_funcs);
  struct lcore *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  c->err_ref = LUA_NOREF;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  c->main = lua_tothread(L, -1);          /* never collected */
  lua_pop(L, 1);
  if (luaL_newmetatable(L, LOOP_MT)) {
    lua_pushcfunction(L, loop_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  c->loop = sonde_loop_new(NULL);
  if (!c->loop) return luaL_error(L, "sonde: cannot create the event loop");
  lua_newtable(L);                        /* pending callbacks by id */
  lua_rawsetp(L, LUA_REGISTRYINDEX, c);
  lua_pushvalue(L, -2);                   /* module table */
  lua_pushvalue(L, -2);                   /* loop userdata */
  sonde_open_httpd(L);
  lua_pop(L, 1);
  lua_pushvalue(L, -2);                   /* module table */
  lua_pushvalue(L, -2);                   /* loop userdata */
  sonde_open_worker(L);
  lua_pop(L, 1);
  luaL_setfuncs(L, core_funcs, 1);        /* upvalue: the loop userdata */
  sonde_open_procstat(L);
  sonde_open_expo(L);
  sonde_open_notify(L);
  sonde_open_deadline(L);
  sonde_open_regex(L);
  sonde_open_targets(L);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &streams_key);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &signals_key);
  lua_pushliteral(L, SONDE_VERSION);
  lua_setfield(L, -2, "version");
  static const struct { const char *name; int num; } sigs[] = {
      {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
      {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM},
      {"CHLD", SIGCHLD}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}};
  lua_createtable(L, 0, (int)(sizeof sigs / sizeof sigs[0]));
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    lua_pushinteger(L, sigs[i].num);
    lua_setfield(L, -2, sigs[i].name);
  }
  lua_setfield(L, -2, "signals");
  return 1;
}
