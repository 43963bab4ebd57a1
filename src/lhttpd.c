/*
 * lhttpd.c - the host's HTTP endpoint (/metrics, /healthz, ...): libevent's
 * evhttp server on the loop's event_base, answering through a Lua handler.
 *
 *   core.listen(host, port, handler) -> bound port | nil, err
 *   core.unlisten()
 *
 * handler(method, path, query) -> status, body [, content_type]; it runs on
 * the main thread in protected mode, like any callback (an error answers
 * 500 and goes to core.on_error's handler, or is kept for run() to
 * raise).  One server per Lua state.
 *
 * Ownership: the evhttp lives in struct lhttpd, a userdata kept in the
 * registry; unlisten and __gc free it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lauxlib.h>
#include <lua.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "lsonde.h"

struct lhttpd {
  struct evhttp *http;
  struct lcore *core;
};

static const char httpd_key = 'h';      /* registry: the lhttpd userdata */
static const char handler_key = 'f';    /* registry: the Lua handler */

static const char *method_name(enum evhttp_cmd_type t) {
  switch (t) {
  case EVHTTP_REQ_GET: return "GET";
  case EVHTTP_REQ_HEAD: return "HEAD";
  case EVHTTP_REQ_POST: return "POST";
  case EVHTTP_REQ_PUT: return "PUT";
  case EVHTTP_REQ_DELETE: return "DELETE";
  case EVHTTP_REQ_OPTIONS: return "OPTIONS";
  case EVHTTP_REQ_TRACE: return "TRACE";
  case EVHTTP_REQ_CONNECT: return "CONNECT";
  case EVHTTP_REQ_PATCH: return "PATCH";
  }
  return "UNKNOWN";
}

static void on_request(struct evhttp_request *req, void *arg) {
  struct lhttpd *h = arg;
  lua_State *L = sonde_lua_thread(h->core);
  int status = 500;
  const char *ctype = "text/plain; charset=utf-8";
  struct evbuffer *out = evbuffer_new();
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
  if (!out) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  if (L) {
    int top = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &handler_key);
    lua_pushstring(L, method_name(evhttp_request_get_command(req)));
    lua_pushstring(L, path && *path ? path : "/");
    if (query) lua_pushstring(L, query);
    else lua_pushnil(L);
    if (sonde_lua_pcall(h->core, 3, 3) == 0) {
      status = (int)luaL_optinteger(L, -3, 500);
      size_t n = 0;
      const char *body = lua_tolstring(L, -2, &n);
      if (body) evbuffer_add(out, body, n);
      if (lua_type(L, -1) == LUA_TSTRING) ctype = lua_tostring(L, -1);
      evhttp_add_header(evhttp_request_get_output_headers(req),
                        "Content-Type", ctype);
    }
    lua_settop(L, top);
  }
  if (status < 100 || status > 599) status = 500;
  evhttp_send_reply(req, status, NULL, out);
  evbuffer_free(out);
}

static void httpd_close(struct lhttpd *h) {
  if (h->http) evhttp_free(h->http);
  h->http = NULL;
}

static int httpd_gc(lua_State *L) {
  httpd_close(lua_touserdata(L, 1));
  return 0;
}

/* core.unlisten() */
static int l_core_unlisten(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &httpd_key);
  struct lhttpd *h = lua_touserdata(L, -1);
  if (h) httpd_close(h);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &httpd_key);
  return 0;
}

/* core.listen(host, port, handler) -> bound port | nil, err */
static int l_core_listen(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port must be 0..65535");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  l_core_unlisten(L);
  struct lhttpd *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->http = NULL;
  h->core = c;
  lua_newtable(L);
  lua_pushcfunction(L, httpd_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  h->http = evhttp_new(sonde_loop_base(c->loop));
  if (!h->http) return luaL_error(L, "sonde: cannot create the HTTP server");
  evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
      EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
      EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_PATCH);
  evhttp_set_gencb(h->http, on_request, h);
  evhttp_set_timeout(h->http, 10);
  errno = 0;
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port);
  int err = errno ? errno : EADDRNOTAVAIL;
  if (!bs) {
    httpd_close(h);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot listen on %s port %d: %s", host, (int)port,
                    strerror(err));
    return 2;
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int bound = (int)port;
  if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss,
                  &len) == 0) {
    if (ss.ss_family == AF_INET)
      bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
      bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &httpd_key);   /* the userdata */
  lua_pushvalue(L, 3);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &handler_key);
  lua_pushinteger(L, bound);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"listen", l_core_listen}, {"unlisten", l_core_unlisten}, {NULL, NULL}};

void sonde_open_httpd(lua_State *L) {
  luaL_setfuncs(L, funcs, 1);   /* [module, loop] -> [module] */
}
