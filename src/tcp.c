/*
 * tcp.c - the TCP prober (include/sonde/tcp.h), on plain non-blocking
 * sockets.
 *
 * An IP literal is connected at once; a host name is first resolved on the
 * loop, without a thread (resolve.c), and its addresses are tried in turn.
 * An attempt is socket(SOCK_NONBLOCK | SOCK_CLOEXEC), connect(), one
 * event waiting for the socket to become writable, getsockopt(SO_ERROR),
 * close().  One deadline, start + timeout, bounds the lookup and every
 * attempt; while other addresses remain, an attempt gets a share of what
 * is left (Go's partialDeadline, as in the kubelet's net.DialTimeout: an
 * equal share, at least 2 s), so a silent first address does not take it
 * all.  Any failure of one address moves on to the next, except running
 * out of descriptors or memory (the engine's trouble: unknown, at once).
 * The result is that of the last attempt: remote_addr is the address tried
 * last and the error is what it got, in Go's words.
 *
 * Ownership: struct tcp_op owns its one event (embedded: nothing is
 * allocated beyond the op on the way to a success), the attempt's socket,
 * the lookup in progress and the addresses it found; `release` frees them
 * all, so a cancellation closes the socket and cancels the lookup.  An
 * outcome known inside sonde_tcp_start (connect() refusing at once, no
 * socket, a name known at once not to exist) is delivered from the next
 * loop iteration, through the same event.
 *
 * TLS (use_tls) is a phase of its own after the connection: the client
 * context is made at the start (files loaded then, a bad one fails the
 * probe before any connection), the SSL on the connected socket, the
 * handshake driven by the same event until it is done or the deadline
 * passes (tls_io.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event_struct.h>
#include <event2/util.h>

#include <time.h>

#include <openssl/ssl.h>

#include "internal.h"
#include "sonde/tcp.h"
#include "sonde/tls.h"

#define MIN_SHARE 2.0    /* seconds: Go's saneMinimum per address */

/* What ended the last attempt (or the lookup). */
enum what {
  W_NONE,
  W_SOCKET,          /* socket() failed: err */
  W_CONNECT,         /* connect() or SO_ERROR: err */
  W_TIMEOUT,         /* no connection by the (partial) deadline */
  W_WATCH,           /* the socket could not be watched (event_add) */
  W_LOOKUP,          /* the lookup failed: lookup_status, why, err */
  W_LOOKUP_TIMEOUT,  /* no answer to the lookup by the deadline */
  W_TLS,             /* the TLS handshake failed (or its set-up): tls_err */
  W_TLS_TIMEOUT      /* the TLS handshake not done by the deadline */
};

struct tcp_op {
  struct sonde_op op;
  struct event ev;                 /* attempt, lookup deadline or delivery */
  int fd;                          /* the attempt's socket, or -1 */
  int starting;                    /* inside sonde_tcp_start */
  int partial;                     /* ev's timeout is an attempt's share */
  long port;
  double deadline;                 /* sonde_now() seconds */
  struct sonde_lookup *lookup;     /* in progress, or NULL */
  struct evutil_addrinfo *addrs;   /* what the lookup found */
  struct evutil_addrinfo *next;    /* the next of them to try */
  int left;                        /* addresses not tried yet */
  const struct sockaddr *tried;    /* the last address tried, or NULL */
  struct sockaddr_storage lit;     /* an IP literal's address */
  socklen_t litlen;
  const char *zone;                /* an IPv6 literal's zone, as written */
  enum what what;
  int err;                         /* errno of W_SOCKET / W_CONNECT ... */
  enum sonde_lookup_status lookup_status;
  const char *why;                 /* W_LOOKUP's text (static) */
  /* TLS after connecting (use_tls) */
  struct ssl_ctx_st *tls_ctx;      /* made at the start, or NULL */
  struct ssl_st *ssl;              /* on fd during the handshake */
  struct sonde_tls_opts tls;       /* the thresholds (no strings) */
  char *server_name;               /* tls.server_name copied, or NULL */
  char tls_err[256];               /* W_TLS's text */
  char host[];                     /* as given */
};

static void ev_clear(struct tcp_op *t) {
  if (event_initialized(&t->ev)) event_del(&t->ev);
}

static void close_fd(struct tcp_op *t) {
  sonde_tls_io_close(t->ssl, t->what != W_TLS);
  t->ssl = NULL;
  if (t->fd >= 0) {
    ev_clear(t);                   /* before close: libevent knows the fd */
    close(t->fd);
    t->fd = -1;
  }
}

static void tcp_release(struct sonde_op *op, int cancelled) {
  struct tcp_op *t = (struct tcp_op *)op;
  (void)cancelled;
  ev_clear(t);
  close_fd(t);
  if (t->lookup) sonde_lookup_cancel(t->lookup);
  t->lookup = NULL;
  if (t->addrs) evutil_freeaddrinfo(t->addrs);
  t->addrs = t->next = NULL;
  t->tried = NULL;
  SSL_CTX_free(t->tls_ctx);
  t->tls_ctx = NULL;
  free(t->server_name);
  t->server_name = NULL;
}

static const struct sonde_op_vtable tcp_vt = {"tcp", tcp_release};

/* ---- the result ----------------------------------------------------------- */

/* strerror in Go's words: "connection refused", "no route to host". */
static const char *go_strerror(int e, char *buf, size_t n) {
  const char *s = strerror_r(e, buf, n);
  if (s != buf) {
    snprintf(buf, n, "%s", s);
  }
  if (buf[0] >= 'A' && buf[0] <= 'Z') buf[0] = (char)(buf[0] - 'A' + 'a');
  return buf;
}

/* "ip:port" / "[ip%zone]:port" of the address tried last. */
static void set_remote_addr(struct tcp_op *t) {
  const struct sockaddr *sa = t->tried;
  char ip[INET6_ADDRSTRLEN + 1 + 64];
  long port;
  if (!sa) return;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (!inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip)) return;
    port = ntohs(in->sin_port);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (!inet_ntop(AF_INET6, &in6->sin6_addr, ip, INET6_ADDRSTRLEN)) return;
    port = ntohs(in6->sin6_port);
    size_t n = strlen(ip);
    if (t->zone)
      snprintf(ip + n, sizeof ip - n, "%%%s", t->zone);
    else if (in6->sin6_scope_id)
      snprintf(ip + n, sizeof ip - n, "%%%u", (unsigned)in6->sin6_scope_id);
  }
  sonde_format_addr(t->op.res.remote_addr, sizeof t->op.res.remote_addr, ip,
                    port);
}

/* The failure the last attempt (or the lookup) ended with.  Error and
 * output in the kubelet's words: net.DialTimeout's error, "dial tcp
 * <addr>: connect: connection refused", and for a lookup "dial tcp:
 * lookup <name>: no such host". */
static void set_failure(struct tcp_op *t) {
  struct sonde_result *r = &t->op.res;
  char buf[128];
  int lookup = t->what == W_LOOKUP || t->what == W_LOOKUP_TIMEOUT;
  r->status = SONDE_FAILURE;
  r->code = t->err;
  switch (t->what) {
  case W_SOCKET:
    if (sonde_resource_errno(t->err)) {
      /* no socket: the engine's trouble, not the target's */
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
      sonde_result_set_error(r, "cannot open a socket: %s", strerror(t->err));
    } else {
      r->reason = SONDE_R_NETWORK;
      sonde_result_set_error(r, "socket: %s",
                             go_strerror(t->err, buf, sizeof buf));
    }
    break;
  case W_CONNECT:
    if (t->err == ECONNREFUSED) {
      r->reason = SONDE_R_CONNECT_REFUSED;
    } else if (sonde_resource_errno(t->err)) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
    } else {
      r->reason = SONDE_R_NETWORK;
    }
    sonde_result_set_error(r, "connect: %s",
                           go_strerror(t->err, buf, sizeof buf));
    break;
  case W_TIMEOUT:
    r->reason = SONDE_R_CONNECT_TIMEOUT;
    r->code = ETIMEDOUT;
    sonde_result_set_error(r, "i/o timeout");
    break;
  case W_WATCH:
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    sonde_result_set_error(r, "cannot watch the socket");
    break;
  case W_LOOKUP:
    if (t->lookup_status == SONDE_LOOKUP_RESOURCE) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
    } else {
      r->reason = SONDE_R_DNS;
    }
    sonde_result_set_error(r, "lookup %s: %s", t->host,
                           t->why ? t->why : "no such host");
    break;
  case W_LOOKUP_TIMEOUT:
    /* the name did not resolve (in time): dns, as when the resolver
     * fails at once */
    r->reason = SONDE_R_DNS;
    r->code = ETIMEDOUT;
    sonde_result_set_error(r, "lookup %s: i/o timeout", t->host);
    break;
  case W_TLS:
    r->reason = SONDE_R_TLS;
    sonde_result_set_error(r, "%s", t->tls_err);
    break;
  case W_TLS_TIMEOUT:
    r->reason = SONDE_R_TIMEOUT;
    r->code = ETIMEDOUT;
    sonde_result_set_error(r, "TLS handshake not finished: i/o timeout");
    break;
  case W_NONE:
    r->reason = SONDE_R_DNS;         /* a lookup with no address at all */
    sonde_result_set_error(r, "lookup %s: no such host", t->host);
    break;
  }
  if (!r->error) return;             /* out of memory: no text */
  sonde_clean_text(&r->error, NULL);
  char *out = NULL;
  int n = lookup || !r->remote_addr[0]
              ? asprintf(&out, "dial tcp: %s", r->error)
              : asprintf(&out, "dial tcp %s: %s", r->remote_addr, r->error);
  if (n >= 0) {
    r->output = out;
    r->output_len = (size_t)n;
  }
}

static void on_deliver(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  sonde_op_complete(arg);
}

/* The outcome is known (ok: connected): fill the result in and complete,
 * from the next loop iteration when still inside sonde_tcp_start. */
static void finish(struct tcp_op *t, int ok) {
  struct sonde_result *r = &t->op.res;
  close_fd(t);
  set_remote_addr(t);
  if (ok) {
    r->status = SONDE_SUCCESS;       /* output "" (NULL: nothing allocated) */
    r->reason = SONDE_R_OK;
    /* a certificate expiring too soon (TLS) */
    sonde_tls_judge(r->tls, &t->tls, (double)time(NULL), r);
  } else {
    set_failure(t);
  }
  if (!t->starting) {
    sonde_op_complete(&t->op);
    return;
  }
  r->duration = sonde_now() - t->op.start;
  ev_clear(t);
  event_assign(&t->ev, t->op.loop->base, -1, 0, on_deliver, t);
  event_active(&t->ev, EV_TIMEOUT, 0);
}

/* ---- attempts ------------------------------------------------------------- */

static const struct sockaddr *next_address(struct tcp_op *t,
                                           socklen_t *len) {
  if (!t->addrs) {                   /* an IP literal: one address */
    if (t->left == 0) return NULL;
    t->left = 0;
    *len = t->litlen;
    return (const struct sockaddr *)&t->lit;
  }
  struct evutil_addrinfo *ai = t->next;
  if (!ai) return NULL;
  t->next = ai->ai_next;
  t->left--;
  *len = (socklen_t)ai->ai_addrlen;
  return ai->ai_addr;
}

static void on_connect(evutil_socket_t fd, short what, void *arg);
static void tls_start(struct tcp_op *t);

/* Start connecting to the next address that takes it; when none is left,
 * the last failure is the result. */
static void try_next(struct tcp_op *t) {
  const struct sockaddr *sa;
  socklen_t len;
  while ((sa = next_address(t, &len)) != NULL) {
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) continue;
    double now = sonde_now(), rest = t->deadline - now;
    if (rest <= 0) {
      t->what = W_TIMEOUT;
      break;
    }
    t->tried = sa;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    IPPROTO_TCP);
    if (fd < 0) {
      t->what = W_SOCKET;
      t->err = errno;
      if (sonde_resource_errno(t->err)) break;
      continue;
    }
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS && errno != EINTR) {
      t->what = W_CONNECT;
      t->err = errno;
      close(fd);
      if (sonde_resource_errno(t->err)) break;
      continue;
    }
    /* in progress (or done: the socket is writable at once) */
    t->fd = fd;
    double share = rest;
    if (t->left > 0) {               /* Go's partialDeadline */
      share = rest / (t->left + 1);
      if (share < MIN_SHARE) share = rest < MIN_SHARE ? rest : MIN_SHARE;
    }
    t->partial = share < rest;
    event_assign(&t->ev, t->op.loop->base, fd, EV_WRITE, on_connect, t);
    if (sonde_loop_add_timer(t->op.loop, &t->ev, share) == 0) return;
    t->what = W_WATCH;
    break;
  }
  finish(t, 0);
}

static void on_connect(evutil_socket_t fd, short what, void *arg) {
  struct tcp_op *t = arg;
  if (what & EV_TIMEOUT) {
    t->what = W_TIMEOUT;
    t->err = 0;
    if (!t->partial) {
      finish(t, 0);
      return;
    }
  } else {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0) {
      if (t->tls_ctx) tls_start(t);
      else finish(t, 1);
      return;
    }
    t->what = W_CONNECT;
    t->err = err;
    if (sonde_resource_errno(err)) {
      finish(t, 0);
      return;
    }
  }
  close_fd(t);
  try_next(t);
}

/* ---- TLS after connecting --------------------------------------------------- */

static void on_tls(evutil_socket_t fd, short what, void *arg);

/* One step of the handshake; wait for the socket when it wants to. */
static void tls_step(struct tcp_op *t) {
  enum sonde_tls_io io = sonde_tls_io_handshake(t->ssl);
  if (io == SONDE_TLS_IO_DONE) {
    struct sonde_tls_facts *f = sonde_tls_facts_of(t->ssl);
    if (!f) {
      t->what = W_WATCH;             /* out of memory: unknown resource */
      finish(t, 0);
      return;
    }
    t->op.res.tls = f;
    finish(t, 1);
    return;
  }
  if (io == SONDE_TLS_IO_WANT_READ || io == SONDE_TLS_IO_WANT_WRITE) {
    double left = t->deadline - sonde_now();
    if (left < 0) left = 0;
    ev_clear(t);
    event_assign(&t->ev, t->op.loop->base, t->fd,
                 io == SONDE_TLS_IO_WANT_READ ? EV_READ : EV_WRITE, on_tls, t);
    if (sonde_loop_add_timer(t->op.loop, &t->ev, left) == 0) return;
    t->what = W_WATCH;
    finish(t, 0);
    return;
  }
  char buf[200];
  t->what = W_TLS;
  snprintf(t->tls_err, sizeof t->tls_err, "TLS handshake: %s",
           sonde_tls_error(t->ssl, buf, sizeof buf));
  finish(t, 0);
}

static void on_tls(evutil_socket_t fd, short what, void *arg) {
  struct tcp_op *t = arg;
  (void)fd;
  if (what & EV_TIMEOUT) {
    t->what = W_TLS_TIMEOUT;
    finish(t, 0);
    return;
  }
  tls_step(t);
}

/* Connected: start the handshake on the socket (the whole deadline is
 * left to it, not an address's share). */
static void tls_start(struct tcp_op *t) {
  const char *name = t->server_name;
  if (!name && !strchr(t->host, ':')) name = t->host;  /* not IPv6 */
  t->ssl = sonde_tls_ssl_new(t->tls_ctx, t->fd, name);
  if (!t->ssl) {
    t->what = W_WATCH;               /* out of memory: unknown resource */
    finish(t, 0);
    return;
  }
  tls_step(t);
}

/* ---- names ---------------------------------------------------------------- */

static void on_lookup(struct sonde_lookup_result *res, void *arg) {
  struct tcp_op *t = arg;
  t->lookup = NULL;
  ev_clear(t);                       /* the lookup's deadline */
  if (res->status != SONDE_LOOKUP_OK) {
    t->what = W_LOOKUP;
    t->lookup_status = res->status;
    t->why = res->why;
    t->err = res->code;
    finish(t, 0);
    return;
  }
  t->addrs = t->next = res->ai;
  t->left = 0;
  for (struct evutil_addrinfo *ai = res->ai; ai; ai = ai->ai_next) t->left++;
  try_next(t);
}

static void on_lookup_timeout(evutil_socket_t fd, short what, void *arg) {
  struct tcp_op *t = arg;
  (void)fd;
  (void)what;
  sonde_lookup_cancel(t->lookup);
  t->lookup = NULL;
  t->what = W_LOOKUP_TIMEOUT;
  finish(t, 0);
}

/* An IP literal: IPv4 dotted quad, or IPv6 with an optional zone
 * ("fe80::1%eth0", or a number).  Fills t->lit. */
static int parse_literal(struct tcp_op *t) {
  struct sockaddr_in *in = (struct sockaddr_in *)&t->lit;
  if (inet_pton(AF_INET, t->host, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)t->port);
    t->litlen = sizeof *in;
    return 1;
  }
  if (!strchr(t->host, ':')) return 0;
  char buf[INET6_ADDRSTRLEN];
  const char *pct = strchr(t->host, '%');
  size_t n = pct ? (size_t)(pct - t->host) : strlen(t->host);
  if (n >= sizeof buf) return 0;
  memcpy(buf, t->host, n);
  buf[n] = '\0';
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->lit;
  if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1) return 0;
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons((uint16_t)t->port);
  if (pct) {
    const char *zone = pct + 1;
    char *end;
    unsigned long idx = strtoul(zone, &end, 10);
    if (*zone && *end == '\0')
      in6->sin6_scope_id = (uint32_t)idx;
    else
      in6->sin6_scope_id = if_nametoindex(zone);  /* 0: unknown */
    t->zone = zone;
  }
  t->litlen = sizeof *in6;
  return 1;
}

uint64_t sonde_tcp_start(struct sonde_loop *loop,
                         const struct sonde_tcp_opts *o, sonde_result_cb cb,
                         void *arg) {
  size_t hlen = strlen(o->host);
  struct tcp_op *t = calloc(1, sizeof *t + hlen + 1);
  if (!t) return 0;
  memcpy(t->host, o->host, hlen + 1);
  t->op.vt = &tcp_vt;
  t->fd = -1;
  t->port = o->port;
  uint64_t id = sonde_op_start(loop, &t->op, cb, arg);
  double secs = o->timeout > SONDE_MAX_SECONDS ? SONDE_MAX_SECONDS : o->timeout;
  if (!(secs > 0)) secs = 0;
  t->deadline = t->op.start + secs;
  t->starting = 1;
  if (o->use_tls) {
    t->tls = o->tls;
    t->tls.ca_file = t->tls.cert_file = t->tls.key_file = NULL;
    t->tls.server_name = NULL;
    if (o->tls.server_name && *o->tls.server_name &&
        !(t->server_name = strdup(o->tls.server_name))) {
      t->what = W_WATCH;             /* out of memory */
      finish(t, 0);
      t->starting = 0;
      return id;
    }
    t->tls_ctx = sonde_tls_ctx_new(&o->tls, t->tls_err, sizeof t->tls_err);
    if (!t->tls_ctx) {
      t->what = W_TLS;
      finish(t, 0);
      t->starting = 0;
      return id;
    }
  }
  if (parse_literal(t)) {
    t->left = 1;
    try_next(t);
  } else {
    struct sonde_lookup *lk =
        sonde_lookup_start(loop, t->host, t->port, on_lookup, t);
    if (lk) {                        /* no answer yet: wait until the deadline */
      t->lookup = lk;
      event_assign(&t->ev, loop->base, -1, 0, on_lookup_timeout, t);
      if (sonde_loop_add_timer(loop, &t->ev, t->deadline - sonde_now()) != 0) {
        sonde_lookup_cancel(lk);
        t->lookup = NULL;
        t->what = W_WATCH;
        finish(t, 0);
      }
    }
  }
  t->starting = 0;
  return id;
}
