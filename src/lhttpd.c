/*
 * lhttpd.c - the host's HTTP endpoint (/metrics, /healthz, ...): libevent's
 * evhttp server on the loop's event_base, answering through a Lua handler.
 *
 *   core.listen(host, port, handler [, limits]) -> bound port | nil, err
 *   core.unlisten()
 *
 * handler(method, path, query, headers, id)
 *   -> status, body [, content_type [, encoding]];
 * `headers` is a table of the request's headers (lowercase name -> value;
 * the last of a repeated name), `id` an integer naming the request.
 * `status` an integer (outside 100..599: 500), `body` a string, nil, a
 * function (a producer, below) or a core.expo_stream (src/lexpo.c: read
 * like a producer, STREAM_SLICE bytes per step, straight from C, without
 * a Lua string per step), `content_type` a string (default
 * "text/plain; charset=utf-8"), `encoding` nil or "gzip".  Another shape
 * is an error (500, reported as below).  The
 * handler may instead return the string "defer": the request stays open
 * (its request_timeout disarmed, and the connection's idle timeout too)
 * until core.listen_reply(id, status, body [, content_type [, encoding]])
 * answers it (body a string),
 * from any later callback (blackbox_exporter's /probe answers when its
 * probe is done).  listen_reply returns false when there is no such
 * pending request (already answered, or the server closed: closing
 * answers every pending request 503, written as far as the socket takes
 * it at once).  A client that went away meanwhile
 * is noticed by evhttp; the answer is then dropped (listen_reply still
 * returns true).  It runs on
 * the main thread in protected mode, like any callback (an error answers
 * 500 and goes to core.on_error's handler, or is kept for run() to
 * raise).  To a HEAD request the answer is the headers only, with the
 * body's Content-Length.  One server per Lua state.  The handler may call
 * core.unlisten (or core.listen): the server is then freed from the loop
 * once the handler has returned, never under evhttp's feet.
 *
 * encoding "gzip": the body is compressed with zlib (gzip wrapper, RFC
 * 1952; level 1), with `Content-Encoding: gzip` and `Vary:
 * Accept-Encoding`; a HEAD answer's Content-Length is the compressed
 * length.  Whether the client accepts gzip is the handler's business
 * (its Accept-Encoding header); nothing here reads it.
 *
 * A producer (body a function) makes the body in steps: it is called
 * with no argument, once per step, in protected mode like any callback,
 * and returns a string to send (may be ""), or a list of strings sent in
 * turn (so that pieces the caller keeps need no new string joining
 * them), or nil when the body is done.
 * The answer goes with chunked transfer encoding (HTTP/1.1; to an
 * HTTP/1.0 request without it, `Connection: close`, the body ending with
 * the connection) and no Content-Length; gzip'd, each output is deflated
 * (Z_NO_FLUSH: zlib may keep it for later) and the end flushes the rest.
 * Flow control: after a step whose bytes were handed to evhttp, the next
 * step runs only once they were written to the socket (evhttp's chunk
 * callback), at the next loop turn; after a step with no bytes out, at
 * the next loop turn (a zero timeout).  So one step costs the loop what
 * one call of the producer does, timers and other connections run
 * between steps, and a client that reads slowly is not buffered for.
 * While a body streams, the connection's request_timeout is disarmed
 * (armed again once the body is done); the idle timeout stays: a client
 * that reads nothing (or a producer that returns only "") for that long
 * has its connection closed, as does a client that goes away.  Then, or
 * at core.unlisten, a new core.listen, or the state's close, the stream
 * is freed: the producer is no longer called and is unreferenced (it is
 * kept in the registry while the stream lives), zlib's state ended, its
 * event freed.  A producer that raises, or returns something else than a
 * string or nil (an error naming the type), has its error reported as any
 * callback's; the connection is then closed without the terminating
 * chunk, what was queued before written as far as the socket takes it:
 * the client sees an incomplete reply, never one that looks whole (an
 * HTTP/1.0 one, whose end is the close, is reset).  To a HEAD request, or
 * with a status that has no body (1xx, 204, 304), the head only (no
 * Content-Length) and the producer is never called (nor is a string body
 * sent with such a status); a handler that closed the server (core.unlisten)
 * and returns a producer is answered 503.  One stream per
 * connection at a time (evhttp reads the next request once an answer is
 * done).
 *
 * limits (every field optional; the defaults in parentheses):
 *   max_connections   connections open at once (64).  At the cap the
 *                     listener stops accepting: new connections wait in the
 *                     kernel's accept queue (evhttp's backlog, 128) until
 *                     one closes, and beyond it the kernel drops their SYNs
 *                     (clients retry, then time out).  Nothing is refused
 *                     outright: refusing takes an accept() per attempt.
 *   idle_timeout      seconds a connection may stay without reading or
 *                     writing anything, between requests or inside one
 *                     (evhttp_set_timeout_tv) (5).
 *   request_timeout   seconds from a connection's accept, or from the
 *                     previous answer on it, until its request is read
 *                     whole; a client sending a byte now and then (a
 *                     slowloris) is cut there (10).
 *   max_header_bytes  the request line and headers together (8192); more
 *                     is answered 400 (evhttp's answer to a bad header)
 *                     and the connection closed.
 * No request may carry a body: one announced (Content-Length above 0, or
 * chunked) is answered 413 before any of it is read, and the connection
 * is closed.
 *
 * Out of descriptors (accept() fails with EMFILE, ENFILE, ENOBUFS or
 * ENOMEM), the listener pauses, 50 ms then doubling up to 1 s while the
 * failures go on, and resumes by itself; the first failure is logged at
 * once (`http_accept`, through logq.h), then one line every 10 s with the
 * count while they go on.
 *
 * Ownership: the server state (struct server) is malloc'd and pointed to
 * by a userdata kept in the registry; unlisten and __gc close it.  A
 * stream (struct stream) is malloc'd, on its server's list and its
 * connection's (struct conn) `stream`; its producer is a registry
 * reference.  It is freed at its end (before evhttp_send_reply_end), by
 * the connection's close callback, or by the server's close (which closes
 * its connection first).  A connection that fails mid-stream leaves its
 * request to us (evhttp_connection_incoming_fail): the close callback
 * frees it (evhttp_send_reply_end without a connection).
 *
 * Counting connections (libevent 2.1 has no cap of its own): evhttp asks
 * new_bev (evhttp_set_bevcb) for the bufferevent of each connection it
 * accepts, before it makes the evhttp_connection: a struct conn is made and
 * counted there.  Once the accept callback has returned, on_attach (an
 * event made active there, run before any I/O of the new connection) finds
 * the connection (the bufferevent's callback argument) and sets its close
 * callback, which evhttp (2.1.12, http.c: evhttp_connection_free) calls
 * exactly once whichever way it frees an incoming connection (the end of an
 * exchange, a timeout, an error, evhttp_free); a reference
 * of ours on the bufferevent until then tells a connection evhttp failed to
 * set up (callbacks unset) from one that lives.  Connections that never
 * send a byte are counted like the others.  Closing the server forgets
 * every conn (close callbacks unset) before evhttp frees the connections.
 */
#define _GNU_SOURCE
#define ZLIB_CONST
#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <lauxlib.h>
#include <lua.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "logq.h"
#include "lsonde.h"

#define DEFAULT_MAX_CONNECTIONS 64
#define DEFAULT_IDLE_TIMEOUT 5.0
#define DEFAULT_REQUEST_TIMEOUT 10.0
#define DEFAULT_MAX_HEADER_BYTES 8192
#define BACKOFF_FIRST 0.05
#define BACKOFF_MAX 1.0
#define ACCEPT_LOG_EVERY 10.0    /* seconds between http_accept lines */
#define STREAM_SLICE 65536       /* bytes read from a core.expo_stream per step */

struct server;

struct conn {
  struct server *s;
  struct bufferevent *bev;       /* until on_attach (a reference of ours) */
  struct evhttp_connection *evcon;   /* from on_attach */
  struct event *deadline;        /* request_timeout */
  struct stream *stream;         /* the reply being streamed on it */
  struct conn *prev, *next;
};

struct server {
  struct evhttp *http;
  struct evconnlistener *listener;
  struct event_base *base;
  struct lcore *core;
  struct event *resume;          /* ends an accept back-off */
  struct event *attach;          /* on_attach, after accepts */
  struct conn *conns;
  int nconns, max_conns;
  struct timeval request_tv;
  double backoff;                /* current pause after accept errors, s */
  unsigned long accept_errors;   /* since the last http_accept line */
  double accept_logged;          /* when it was written (sonde_now) */
  int paused;                    /* by an accept error */
  int in_request;                /* inside the Lua handler */
  int closing;                   /* unlisten: no more Lua, freed soon */
  struct server *next_server;    /* all open servers (errorcb lookup) */
  struct pending *pending;       /* deferred requests */
  lua_Integer next_id;           /* of the next request */
  struct timeval idle_tv;        /* the connections' idle timeout */
  struct stream *streams;        /* replies being streamed */
};

/* A reply whose body a Lua producer makes, one call per step. */
struct stream {
  struct server *s;
  struct conn *c;
  struct evhttp_request *req;
  struct event *step;            /* the next producer call (a loop turn) */
  lua_State *L;                  /* the main thread (the producer's ref) */
  int ref;                       /* registry: the producer */
  int gzip;                      /* z is set up */
  z_stream z;
  int http10;                    /* an HTTP/1.0 request: no chunks */
  int in_call;                   /* inside the producer */
  int dead;                      /* closed during the call: freed after */
  struct stream *prev, *next;
};

/* A request the handler deferred ("defer"), until core.listen_reply. */
struct pending {
  lua_Integer id;
  struct evhttp_request *req;
  struct pending *next;
};

struct lhttpd {
  struct server *s;
};

static const char httpd_key = 'h';      /* registry: the lhttpd userdata */
static const char handler_key = 'f';    /* registry: the Lua handler */

/* evconnlistener's error callback gets the listener's user data, which
 * evhttp sets to the evhttp: find the server by it. */
static struct server *servers;

static struct timeval to_tv(double s) {
  struct timeval tv;
  tv.tv_sec = (time_t)s;
  tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
  return tv;
}

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

/* ---- accepting ------------------------------------------------------------ */

/* Accept again, unless at the cap, in a back-off, or closing. */
static void maybe_accept(struct server *s) {
  if (s->closing || s->paused || !s->listener) return;
  if (s->nconns < s->max_conns) evconnlistener_enable(s->listener);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  struct server *s = arg;
  (void)fd;
  (void)what;
  s->paused = 0;
  maybe_accept(s);
}

/* accept() failed with an error that retrying at once cannot cure
 * (EMFILE, ENFILE, ENOBUFS, ENOMEM...): without this callback libevent
 * logs it and the listener, still readable, fails again at once. */
static void on_accept_error(struct evconnlistener *lev, void *arg) {
  int err = EVUTIL_SOCKET_ERROR();
  struct server *s = servers;
  while (s && s->http != arg) s = s->next_server;
  evconnlistener_disable(lev);
  if (!s || s->closing) return;
  s->backoff = s->backoff > 0 ? s->backoff * 2 : BACKOFF_FIRST;
  if (s->backoff > BACKOFF_MAX) s->backoff = BACKOFF_MAX;
  s->paused = 1;
  struct timeval tv = to_tv(s->backoff);
  evtimer_add(s->resume, &tv);
  /* the first failure at once, then one line per ACCEPT_LOG_EVERY with
   * the count, however long the shortage lasts */
  s->accept_errors++;
  double now = sonde_now();
  if (s->accept_logged == 0 || now - s->accept_logged >= ACCEPT_LOG_EVERY) {
    sonde_logq_push(SONDE_LOG_WARN, "http_accept",
                    "accept failed %lu time%s: %s; not accepting for %g s",
                    s->accept_errors, s->accept_errors == 1 ? "" : "s",
                    strerror(err), s->backoff);
    s->accept_logged = now;
    s->accept_errors = 0;
  }
}

/* ---- connections ---------------------------------------------------------- */

static void conn_free(struct conn *c) {
  struct server *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  if (c->deadline) event_free(c->deadline);
  free(c);
}

/* evhttp frees the connection (end of the exchange, idle timeout, error,
 * request_timeout below, evhttp_free). */
static void stream_release(struct stream *st);

static void on_close(struct evhttp_connection *evcon, void *arg) {
  struct conn *c = arg;
  struct server *s = c->s;
  (void)evcon;
  if (c->stream) {       /* mid-stream: the client went, or a timeout */
    struct stream *st = c->stream;
    struct evhttp_request *req = st->req;
    /* a failed connection leaves its unfinished request to its user
     * (evhttp_connection_incoming_fail); one freed otherwise is freed
     * with the connection */
    int ours = !st->dead && evhttp_request_get_connection(req) == NULL;
    c->stream = NULL;
    st->c = NULL;
    stream_release(st);
    if (ours) evhttp_send_reply_end(req);     /* frees it */
  }
  conn_free(c);
  maybe_accept(s);
}

/* request_timeout: the request did not come whole in time. */
static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  if (c->evcon) evhttp_connection_free(c->evcon);   /* on_close frees c */
}

/* From the loop, right after the accepts: the bufferevents new_bev made
 * now have their evhttp_connection (the callback argument evhttp set), or
 * evhttp failed to make it and freed them (callbacks unset; our reference
 * kept the memory).  Watch the close of the first, count the others gone. */
static void on_attach(evutil_socket_t fd, short what, void *arg) {
  struct server *s = arg;
  (void)fd;
  (void)what;
  struct conn *next;
  for (struct conn *c = s->conns; c; c = next) {
    next = c->next;
    if (!c->bev) continue;
    struct bufferevent *bev = c->bev;
    bufferevent_event_cb eventcb = NULL;
    void *evcon = NULL;
    bufferevent_getcb(bev, NULL, NULL, &eventcb, &evcon);
    c->bev = NULL;
    if (eventcb && evcon) {
      c->evcon = evcon;
      evhttp_connection_set_closecb(c->evcon, on_close, c);
    } else {
      conn_free(c);
    }
    bufferevent_decref(bev);
  }
  maybe_accept(s);
}

/* evhttp's bevcb, called for each accepted connection before evhttp makes
 * its evhttp_connection: the same bufferevent evhttp would make, counted,
 * with a reference of ours until on_attach.  NULL lets evhttp make its
 * own (uncounted). */
static struct bufferevent *new_bev(struct event_base *base, void *arg) {
  struct server *s = arg;
  struct conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->bev = bufferevent_socket_new(base, -1, 0);
  c->deadline = evtimer_new(base, on_deadline, c);
  if (!c->bev || !c->deadline) {
    if (c->bev) bufferevent_free(c->bev);
    if (c->deadline) event_free(c->deadline);
    free(c);
    return NULL;
  }
  bufferevent_incref(c->bev);
  c->s = s;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  s->backoff = 0;                       /* accept works again */
  evtimer_add(c->deadline, &s->request_tv);
  event_active(s->attach, EV_TIMEOUT, 0);
  if (s->nconns >= s->max_conns) evconnlistener_disable(s->listener);
  return c->bev;
}

static struct conn *conn_of(struct server *s, struct evhttp_request *req) {
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  for (struct conn *c = s->conns; c && evcon; c = c->next)
    if (c->evcon == evcon) return c;
  return NULL;
}

/* ---- requests ------------------------------------------------------------- */

/* The request's headers as a table: lowercase name -> value. */
static void push_headers(lua_State *L, struct evhttp_request *req) {
  struct evkeyvalq *h = evhttp_request_get_input_headers(req);
  lua_newtable(L);
  if (!h) return;
  for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = kv->key; *p; p++)
      luaL_addchar(&b, (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p);
    luaL_pushresult(&b);
    lua_pushstring(L, kv->value);
    lua_rawset(L, -3);
  }
}

/* A status with no body (RFC 9110 6.4.1): 1xx, 204, 304. */
static int bodiless(int status) {
  return status < 200 || status == 204 || status == 304;
}

/* ---- gzip ----------------------------------------------------------------- */

/* A gzip stream (RFC 1952), level 1: zlib's deflate with its gzip wrapper
 * (windowBits 15 + 16).  0, or -1 (no memory). */
static int gz_init(z_stream *z) {
  memset(z, 0, sizeof *z);
  return deflateInit2(z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) ==
                 Z_OK
             ? 0
             : -1;
}

/* Deflate `n` bytes at `in` onto `out`; flush Z_NO_FLUSH (zlib may keep
 * them for later) or Z_FINISH (the end of the stream: everything out).
 * 0, or -1 (no memory, or zlib failed). */
static int gz_put(z_stream *z, const char *in, size_t n, int flush,
                  struct evbuffer *out) {
  if (n == 0 && flush == Z_NO_FLUSH) return 0;
  for (;;) {
    size_t take = n > (1u << 30) ? (size_t)1 << 30 : n;
    int f = take == n ? flush : Z_NO_FLUSH;
    z->next_in = (const Bytef *)in;
    z->avail_in = (uInt)take;
    for (;;) {
      struct evbuffer_iovec v;
      if (evbuffer_reserve_space(out, 16384, &v, 1) < 1) return -1;
      if (v.iov_len > (1u << 30)) v.iov_len = (size_t)1 << 30;
      z->next_out = v.iov_base;
      z->avail_out = (uInt)v.iov_len;
      int rc = deflate(z, f);
      v.iov_len -= z->avail_out;
      if (evbuffer_commit_space(out, &v, 1) != 0) return -1;
      if (rc == Z_STREAM_END) return 0;
      if (rc != Z_OK && rc != Z_BUF_ERROR) return -1;
      if (z->avail_out != 0 && z->avail_in == 0) {
        if (f != Z_FINISH) break;
        if (rc == Z_BUF_ERROR) return -1;     /* no progress at the end */
      }
    }
    in += take;
    n -= take;
    if (n == 0) return 0;
  }
}

/* The body of a whole answer: `n` bytes at `body` (NULL: none) onto
 * `out`, gzip-compressed when asked (with Content-Encoding and Vary).  To
 * a HEAD request only its Content-Length (evhttp 2.1 writes whatever is
 * in the buffer, and a body after a HEAD answer would be read as the
 * start of the next answer on a kept connection).  0, or -1 (no memory:
 * nothing added). */
static int put_body(struct evhttp_request *req, struct evbuffer *out,
                    const char *body, size_t n, int gzip) {
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  int head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
  size_t len = body ? n : 0;
  if (body && gzip) {
    struct evbuffer *z_out = head ? evbuffer_new() : out;
    z_stream z;
    int rc = -1;
    if (z_out && gz_init(&z) == 0) {
      rc = gz_put(&z, body, n, Z_FINISH, z_out);
      deflateEnd(&z);
    }
    len = z_out ? evbuffer_get_length(z_out) : 0;
    if (head && z_out) evbuffer_free(z_out);
    if (rc != 0) {
      if (!head) evbuffer_drain(out, evbuffer_get_length(out));
      return -1;
    }
    evhttp_add_header(h, "Content-Encoding", "gzip");
    evhttp_add_header(h, "Vary", "Accept-Encoding");
  } else if (body && !head) {
    if (evbuffer_add(out, body, n) != 0) return -1;
  }
  if (head) {
    char num[32];
    snprintf(num, sizeof num, "%zu", len);
    evhttp_add_header(h, "Content-Length", num);
  }
  return 0;
}

/* ---- streamed replies ----------------------------------------------------- */

static const struct timeval zero_tv = {0, 0};

static void on_written(struct evhttp_connection *evcon, void *arg);

/* Free a stream (its producer unreferenced, zlib ended, its event
 * freed), or, inside its producer's call, mark it for the caller to
 * free.  Its request is not touched. */
static void stream_free(struct stream *st) {
  struct server *s = st->s;
  if (st->prev) st->prev->next = st->next;
  else s->streams = st->next;
  if (st->next) st->next->prev = st->prev;
  if (st->c && st->c->stream == st) st->c->stream = NULL;
  if (st->step) event_free(st->step);
  if (st->gzip) deflateEnd(&st->z);
  if (st->ref != LUA_NOREF && st->ref != LUA_REFNIL &&
      lua_checkstack(st->L, 4))
    luaL_unref(st->L, LUA_REGISTRYINDEX, st->ref);
  free(st);
}

static void stream_release(struct stream *st) {
  if (st->c && st->c->stream == st) st->c->stream = NULL;
  st->c = NULL;
  if (st->in_call) {
    st->dead = 1;
    if (st->step) event_del(st->step);
    return;
  }
  stream_free(st);
}

/* End a stream without its end: what is queued (the head, the chunks
 * before) is written as far as the socket takes it at once, then the
 * connection is closed, without the terminating chunk: the client sees
 * an incomplete reply.  An HTTP/1.0 reply, whose end is the close, is
 * reset instead (SO_LINGER 0), so that it does not look whole. */
/* Reset the connection on `fd` (RST, not FIN), leaving the descriptor
 * number open for its owner to shut down and close (evhttp shuts down
 * before closing, which would send a FIN): the socket, lingering 0 s, is
 * replaced by /dev/null (dup3 closes it). */
static void reset_socket(evutil_socket_t fd) {
  struct linger lg = {1, 0};
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null < 0) return;
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0)
    dup3(null, fd, O_CLOEXEC);
  close(null);
}

static void stream_abort(struct stream *st) {
  struct evhttp_connection *evcon =
      st->dead ? NULL : evhttp_request_get_connection(st->req);
  int reset = st->http10;
  stream_release(st);
  if (!evcon) return;
  struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
  if (bev) {
    evutil_socket_t fd = bufferevent_getfd(bev);
    evbuffer_write(bufferevent_get_output(bev), fd);
    if (reset) reset_socket(fd);
  }
  evhttp_connection_free(evcon);     /* on_close frees the conn */
}

/* call_producer(producer) -> string | nil; raises for anything else. */
static int call_producer(lua_State *L) {
  lua_call(L, 0, 1);
  int t = lua_type(L, -1);
  if (t == LUA_TTABLE) {          /* a list of strings: checked here */
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
        return luaL_error(L, "core.listen: a body producer returned a "
                          "list whose item %d is a %s (strings expected)",
                          (int)i, luaL_typename(L, -1));
      lua_pop(L, 1);
    }
  } else if (t != LUA_TSTRING && t != LUA_TNIL) {
    return luaL_error(L, "core.listen: a body producer returned a %s "
                      "(a string, a list of strings or nil expected)",
                      lua_typename(L, t));
  }
  return 1;
}

/* The stream's end: the rest of zlib's output, the terminating chunk, the
 * connection's request_timeout again. */
static void stream_end(struct stream *st, struct evbuffer *rest) {
  struct server *s = st->s;
  struct evhttp_request *req = st->req;
  struct conn *c = st->c;
  if (evbuffer_get_length(rest) > 0) evhttp_send_reply_chunk(req, rest);
  if (c && c->deadline && !s->closing)
    evtimer_add(c->deadline, &s->request_tv);
  stream_free(st);                /* before evhttp may close the conn */
  evhttp_send_reply_end(req);
}

/* One step: one call of the producer, its bytes handed to evhttp.  The
 * next step runs from on_written once they went out, or at the next loop
 * turn when there were none (gzip kept them, or ""). */
static void on_step(evutil_socket_t fd, short what, void *arg) {
  struct stream *st = arg;
  struct server *s = st->s;
  (void)fd;
  (void)what;
  lua_State *L = s->closing ? NULL : sonde_lua_thread(s->core);
  if (!L) {
    stream_abort(st);
    return;
  }
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->ref);
  int source = sonde_lexpo_is_stream(L, -1);  /* C bytes, no Lua string */
  lua_pop(L, 1);
  lua_pushcfunction(L, source ? sonde_lexpo_step : call_producer);
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->ref);
  if (source) lua_pushinteger(L, STREAM_SLICE);
  st->in_call = 1;
  s->in_request++;
  int ok = sonde_lua_pcall(s->core, source ? 2 : 1, source ? 2 : 1) == 0;
  s->in_request--;
  st->in_call = 0;
  if (st->dead) {                 /* closed meanwhile (core.unlisten) */
    lua_settop(L, top);
    stream_free(st);
    return;
  }
  struct evbuffer *buf = ok ? evbuffer_new() : NULL;
  size_t n = 0;
  const char *p = NULL;
  int rc = buf ? 0 : -1;
  if (ok && source && lua_islightuserdata(L, -2)) {
    p = lua_touserdata(L, -2);
    n = (size_t)lua_tointeger(L, -1);
    if (!p) p = "";
  } else if (ok && !source && lua_istable(L, -1)) {
    /* a list of strings: each written in turn (no Lua string made of
     * them) */
    p = "";
    lua_Integer k = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= k && rc == 0; i++) {
      lua_rawgeti(L, -1, i);
      size_t len;
      const char *piece = lua_tolstring(L, -1, &len);
      if (piece && st->gzip)
        rc = gz_put(&st->z, piece, len, Z_NO_FLUSH, buf);
      else if (piece)
        rc = evbuffer_add(buf, piece, len);
      lua_pop(L, 1);
    }
    n = 0;
  } else if (ok && !source) {
    p = lua_tolstring(L, -1, &n);
  }
  if (rc == 0 && st->gzip)
    rc = gz_put(&st->z, p ? p : "", p ? n : 0, p ? Z_NO_FLUSH : Z_FINISH,
                buf);
  else if (rc == 0 && p)
    rc = evbuffer_add(buf, p, n);
  lua_settop(L, top);
  if (rc != 0) {
    if (ok)
      sonde_logq_push(SONDE_LOG_ERROR, "http_stream",
                      "out of memory streaming a reply: connection closed");
    stream_abort(st);
  } else if (!p) {
    stream_end(st, buf);
  } else if (evbuffer_get_length(buf) > 0) {
    evhttp_send_reply_chunk_with_cb(st->req, buf, on_written, st);
  } else {
    evtimer_add(st->step, &zero_tv);
  }
  if (buf) evbuffer_free(buf);
}

/* The chunk went out (evhttp's output buffer is empty): the next step, at
 * the next loop turn. */
static void on_written(struct evhttp_connection *evcon, void *arg) {
  struct stream *st = arg;
  (void)evcon;
  evtimer_add(st->step, &zero_tv);
}

/* Answer `req` with the producer on top of L's stack (popped): the head
 * now, the body in steps.  0, or -1 (nothing sent, nothing kept). */
static int stream_start(struct server *s, lua_State *L,
                        struct evhttp_request *req, int status, int gzip) {
  struct conn *c = conn_of(s, req);
  struct stream *st = c && !c->stream ? calloc(1, sizeof *st) : NULL;
  if (!st) {
    lua_pop(L, 1);
    return -1;
  }
  st->s = s;
  st->req = req;
  st->L = s->core->main;
  st->http10 = req->major < 1 || (req->major == 1 && req->minor < 1);
  st->step = evtimer_new(s->base, on_step, st);
  /* a step waits for a turn with nothing else due: probes' timers and
   * I/O, and other connections, go first (sonde/loop.h) */
  if (st->step) event_priority_set(st->step, SONDE_LOOP_PRIO_IDLE);
  if (gzip && gz_init(&st->z) == 0) st->gzip = 1;
  if (!st->step || (gzip && !st->gzip)) {
    if (st->step) event_free(st->step);
    if (st->gzip) deflateEnd(&st->z);
    free(st);
    lua_pop(L, 1);
    return -1;
  }
  st->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  st->c = c;
  c->stream = st;
  st->next = s->streams;
  if (s->streams) s->streams->prev = st;
  s->streams = st;
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  if (gzip) {
    evhttp_add_header(h, "Content-Encoding", "gzip");
    evhttp_add_header(h, "Vary", "Accept-Encoding");
  }
  if (st->http10) {
    /* the body ends with the connection: an HTTP/1.0 keep-alive would
     * make evhttp 2.1 announce Content-Length: 0 */
    evhttp_remove_header(evhttp_request_get_input_headers(req), "Connection");
    evhttp_add_header(h, "Connection", "close");
  }
  /* the body may take longer than request_timeout: only the idle
   * timeout (no byte read nor written for that long) cuts it */
  if (c->deadline) evtimer_del(c->deadline);
  evhttp_send_reply_start(req, status, NULL);
  evtimer_add(st->step, &zero_tv);
  return 0;
}

/* call_handler(handler, method, path, query, headers, id) -> status, body,
 * content_type, encoding; or "defer".  Raises for answers of the wrong
 * shape. */
static int call_handler(lua_State *L) {
  lua_call(L, 5, 4);
  if (lua_type(L, -4) == LUA_TSTRING && strcmp(lua_tostring(L, -4), "defer") == 0)
    return 4;
  int isnum;
  lua_Integer status = lua_tointegerx(L, -4, &isnum);
  if (!isnum && !lua_isnil(L, -4))
    return luaL_error(L, "core.listen: the handler's status is a %s "
                      "(an integer expected)", luaL_typename(L, -4));
  (void)status;
  int t = lua_type(L, -3);
  if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TFUNCTION &&
      t != LUA_TNIL && !sonde_lexpo_is_stream(L, -3))
    return luaL_error(L, "core.listen: the handler's body is a %s (a "
                      "string, a function, a core.expo_stream or nil "
                      "expected)", lua_typename(L, t));
  if (!lua_isnil(L, -2) && lua_type(L, -2) != LUA_TSTRING)
    return luaL_error(L, "core.listen: the handler's content type is a %s "
                      "(a string expected)", luaL_typename(L, -2));
  if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TSTRING ||
                            strcmp(lua_tostring(L, -1), "gzip") != 0))
    return luaL_error(L, "core.listen: the handler's encoding must be nil "
                      "or \"gzip\"");
  return 4;
}

/* Keep `req` open for core.listen_reply: no request_timeout nor idle
 * timeout while its answer is being made. */
static int defer(struct server *s, struct evhttp_request *req,
                 lua_Integer id) {
  struct pending *p = malloc(sizeof *p);
  if (!p) return -1;
  p->id = id;
  p->req = req;
  p->next = s->pending;
  s->pending = p;
  struct conn *c = conn_of(s, req);
  if (c && c->deadline) evtimer_del(c->deadline);
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  struct bufferevent *bev =
      evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
  if (bev) bufferevent_set_timeouts(bev, NULL, NULL);
  return 0;
}

/* Answer a deferred request (and free its entry). */
static void answer(struct server *s, struct pending *p, int status,
                   const char *body, size_t n, const char *ctype, int gzip) {
  struct evhttp_request *req = p->req;
  free(p);
  struct evbuffer *out = evbuffer_new();
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  if (evcon) {
    /* the connection lives on: its timeouts again */
    evhttp_connection_set_timeout_tv(evcon, &s->idle_tv);
    struct conn *c = s->closing ? NULL : conn_of(s, req);
    if (c && c->deadline) evtimer_add(c->deadline, &s->request_tv);
  }
  if (!out) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  if (status < 100 || status > 599) status = 500;
  if (put_body(req, out, bodiless(status) ? NULL : body, n, gzip) != 0) {
    evhttp_send_error(req, 500, NULL);
    evbuffer_free(out);
    return;
  }
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    ctype ? ctype : "text/plain; charset=utf-8");
  struct bufferevent *bev =
      evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
  evhttp_send_reply(req, status, NULL, out);
  evbuffer_free(out);
  /* closing: evhttp goes before this answer is written, write what the
   * socket takes now (best effort) */
  if (s->closing && bev)
    evbuffer_write(bufferevent_get_output(bev), bufferevent_getfd(bev));
}

static void on_request(struct evhttp_request *req, void *arg) {
  struct server *s = arg;
  lua_State *L = s->closing ? NULL : sonde_lua_thread(s->core);
  int status = s->closing ? 503 : 500;
  const char *ctype = "text/plain; charset=utf-8";
  struct evbuffer *out = evbuffer_new();
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
  struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
  if (!out) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  if (L) {
    int top = lua_gettop(L);
    lua_pushcfunction(L, call_handler);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &handler_key);
    lua_pushstring(L, method_name(evhttp_request_get_command(req)));
    lua_pushstring(L, path && *path ? path : "/");
    if (query) lua_pushstring(L, query);
    else lua_pushnil(L);
    push_headers(L, req);
    lua_Integer id = ++s->next_id;
    lua_pushinteger(L, id);
    s->in_request++;
    int ok = sonde_lua_pcall(s->core, 6, 4) == 0;
    s->in_request--;
    if (ok && lua_type(L, -4) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -4), "defer") == 0) {
      lua_settop(L, top);
      evbuffer_free(out);
      if (defer(s, req, id) != 0) evhttp_send_error(req, 500, NULL);
      return;
    }
    if (ok) {
      status = lua_isnil(L, -4) ? 500 : (int)lua_tointeger(L, -4);
      if (status < 100 || status > 599) status = 500;
      int gzip = !lua_isnil(L, -1);
      if (lua_type(L, -2) == LUA_TSTRING) ctype = lua_tostring(L, -2);
      evhttp_add_header(oh, "Content-Type", ctype);
      int streamed = lua_type(L, -3) == LUA_TFUNCTION ||
                     sonde_lexpo_is_stream(L, -3);
      if (streamed &&
          evhttp_request_get_command(req) != EVHTTP_REQ_HEAD &&
          !bodiless(status) && !s->closing) {
        lua_pushvalue(L, -3);
        if (stream_start(s, L, req, status, gzip) == 0) {
          lua_settop(L, top);
          evbuffer_free(out);
          return;
        }
        sonde_logq_push(SONDE_LOG_ERROR, "http_stream",
                        "cannot stream a reply (out of memory): 500");
        evhttp_remove_header(oh, "Content-Type");
        status = 500;
      } else if (streamed && s->closing) {
        /* core.unlisten from the handler: no stream to a closed server */
        static const char msg[] = "shutting down\n";
        status = 503;
        evbuffer_add(out, msg, sizeof msg - 1);
      } else if (streamed) {
        /* HEAD, or a status without a body: the head only, no
         * Content-Length (the producer is not called) */
        if (gzip) {
          evhttp_add_header(oh, "Content-Encoding", "gzip");
          evhttp_add_header(oh, "Vary", "Accept-Encoding");
        }
      } else {
        size_t n = 0;
        const char *body = lua_tolstring(L, -3, &n);
        if (bodiless(status)) body = NULL;
        if (put_body(req, out, body, n, gzip) != 0) {
          sonde_logq_push(SONDE_LOG_ERROR, "http_stream",
                          "cannot compress a reply (out of memory): 500");
          evhttp_remove_header(oh, "Content-Encoding");
          evhttp_remove_header(oh, "Vary");
          status = 500;
        }
      }
    }
    lua_settop(L, top);
  }
  /* RFC 9110 15.5.6: a 405 names the methods allowed; the endpoints
   * (sonde.endpoints) answer GET and HEAD only */
  if (status == 405) evhttp_add_header(oh, "Allow", "GET, HEAD");
  if (!s->closing) {              /* the next request's deadline */
    struct conn *c = conn_of(s, req);
    if (c && c->deadline) evtimer_add(c->deadline, &s->request_tv);
  }
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  struct bufferevent *bev =
      evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
  evhttp_send_reply(req, status, NULL, out);
  evbuffer_free(out);
  /* closed by the handler: evhttp goes before this answer is written,
   * write what the socket takes now (best effort) */
  if (s->closing && bev)
    evbuffer_write(bufferevent_get_output(bev), bufferevent_getfd(bev));
}

/* ---- the server ----------------------------------------------------------- */

static void server_free(struct server *s) {
  if (s->http) evhttp_free(s->http);   /* frees the listener too */
  free(s);
}

static void on_deferred_free(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  server_free(arg);
}

/* Stop serving: no more accepts nor Lua calls at once; evhttp is freed now,
 * or from the loop when the handler called this (evhttp goes on with the
 * request after the handler returns). */
static void server_close(struct server *s) {
  if (!s || s->closing) return;
  s->closing = 1;
  for (struct server **p = &servers; *p; p = &(*p)->next_server)
    if (*p == s) {
      *p = s->next_server;
      break;
    }
  struct stream *next;
  for (struct stream *st = s->streams; st; st = next) {
    next = st->next;              /* (one in its producer's call stays) */
    if (!st->dead) stream_abort(st);
  }
  while (s->conns) {              /* forget them: evhttp closes them */
    struct conn *c = s->conns;
    if (c->evcon) evhttp_connection_set_closecb(c->evcon, NULL, NULL);
    if (c->bev) bufferevent_decref(c->bev);
    conn_free(c);
  }
  if (s->resume) event_free(s->resume);
  if (s->attach) event_free(s->attach);
  s->resume = s->attach = NULL;
  if (s->listener) evconnlistener_disable(s->listener);
  while (s->pending) {            /* before evhttp frees their connections */
    struct pending *p = s->pending;
    s->pending = p->next;
    static const char msg[] = "shutting down\n";
    answer(s, p, 503, msg, sizeof msg - 1, NULL, 0);
  }
  if (s->in_request) {
    struct timeval now = {0, 0};
    if (event_base_once(s->base, -1, EV_TIMEOUT, on_deferred_free, s, &now) == 0)
      return;
    /* no memory for the event: leave the server allocated, closed */
    return;
  }
  server_free(s);
}

static int httpd_gc(lua_State *L) {
  struct lhttpd *h = lua_touserdata(L, 1);
  server_close(h->s);
  h->s = NULL;
  return 0;
}

/* core.unlisten() */
static int l_core_unlisten(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &httpd_key);
  struct lhttpd *h = lua_touserdata(L, -1);
  if (h) {
    server_close(h->s);
    h->s = NULL;
  }
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &httpd_key);
  return 0;
}

static double opt_number(lua_State *L, int t, const char *k, double dflt,
                         double min, double max) {
  if (lua_isnoneornil(L, t)) return dflt;
  lua_getfield(L, t, k);
  double v = dflt;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = (double)lua_tonumberx(L, -1, &ok);
    if (!ok || !(v >= min && v <= max))
      luaL_error(L, "core.listen: %s must be a number in %g..%g", k, min, max);
  }
  lua_pop(L, 1);
  return v;
}

/* core.listen(host, port, handler [, limits]) -> bound port | nil, err */
static int l_core_listen(lua_State *L) {
  struct lcore *c = sonde_lua_core(L);
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port must be 0..65535");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  int max_conns = (int)opt_number(L, 4, "max_connections",
                                  DEFAULT_MAX_CONNECTIONS, 1, 100000);
  double idle = opt_number(L, 4, "idle_timeout", DEFAULT_IDLE_TIMEOUT, 0.001,
                           86400);
  double request = opt_number(L, 4, "request_timeout",
                              DEFAULT_REQUEST_TIMEOUT, 0.001, 86400);
  double max_header = opt_number(L, 4, "max_header_bytes",
                                 DEFAULT_MAX_HEADER_BYTES, 256, 1 << 24);
  lua_settop(L, 3);
  l_core_unlisten(L);
  struct lhttpd *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->s = NULL;
  lua_newtable(L);
  lua_pushcfunction(L, httpd_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  struct server *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "sonde: cannot create the HTTP server");
  h->s = s;
  s->core = c;
  s->base = sonde_loop_base(c->loop);
  s->max_conns = max_conns;
  s->request_tv = to_tv(request);
  s->http = evhttp_new(s->base);
  s->resume = evtimer_new(s->base, on_resume, s);
  s->attach = event_new(s->base, -1, 0, on_attach, s);
  if (!s->http || !s->resume || !s->attach) {
    if (s->resume) event_free(s->resume);
    if (s->attach) event_free(s->attach);
    s->resume = s->attach = NULL;
    return luaL_error(L, "sonde: cannot create the HTTP server");
  }
  evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
      EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
      EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_PATCH);
  evhttp_set_gencb(s->http, on_request, s);
  evhttp_set_bevcb(s->http, new_bev, s);
  s->idle_tv = to_tv(idle);
  evhttp_set_timeout_tv(s->http, &s->idle_tv);
  evhttp_set_max_headers_size(s->http, (ev_ssize_t)max_header);
  evhttp_set_max_body_size(s->http, 0);
  s->next_server = servers;
  servers = s;
  errno = 0;
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(s->http, host, (ev_uint16_t)port);
  int err = errno ? errno : EADDRNOTAVAIL;
  if (!bs) {
    server_close(s);
    h->s = NULL;
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot listen on %s port %d: %s", host, (int)port,
                    strerror(err));
    return 2;
  }
  s->listener = evhttp_bound_socket_get_listener(bs);
  evconnlistener_set_error_cb(s->listener, on_accept_error);
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

/* core.listen_reply(id, status, body [, content_type [, encoding]]) ->
 * boolean */
static int l_core_listen_reply(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  size_t n = 0;
  const char *body = luaL_optlstring(L, 3, "", &n);
  const char *ctype = luaL_optstring(L, 4, NULL);
  const char *enc = luaL_optstring(L, 5, NULL);
  luaL_argcheck(L, !enc || strcmp(enc, "gzip") == 0, 5,
                "encoding must be nil or \"gzip\"");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &httpd_key);
  struct lhttpd *h = lua_touserdata(L, -1);
  struct server *s = h ? h->s : NULL;
  if (!s || s->closing) {
    lua_pushboolean(L, 0);
    return 1;
  }
  for (struct pending **pp = &s->pending; *pp; pp = &(*pp)->next) {
    if ((*pp)->id == id) {
      struct pending *p = *pp;
      *pp = p->next;
      answer(s, p, status, body, n, ctype, enc != NULL);
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  lua_pushboolean(L, 0);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"listen", l_core_listen}, {"unlisten", l_core_unlisten},
    {"listen_reply", l_core_listen_reply}, {NULL, NULL}};

void sonde_open_httpd(lua_State *L) {
  sonde_open_logq(L);           /* [module, loop] -> [module, loop] */
  luaL_setfuncs(L, funcs, 1);   /* [module, loop] -> [module] */
}
