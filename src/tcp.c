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
 * passes (tls_io.c); then the steps, if any, go through TLS.  With a
 * STARTTLS step the handshake happens there instead: the plain steps
 * before it, the TLS ones after it, bytes read past its line dropped (a
 * reply injected before the handshake is not taken as one after it).
 *
 * Steps (send / expect, sonde/tcp.h) are a phase of their own, after the
 * connection ("the conversation", below): the connected socket, the same
 * event and the one deadline; the steps and their bytes are copied into
 * the op's block, the read buffer is allocated at the first expect step
 * and freed with the op.  A probe without steps allocates nothing more.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <regex.h>
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
#include "sonde/expect.h"
#include "sonde/pattern.h"
#include "sonde/tcp.h"
#include "sonde/tls.h"

#define MIN_SHARE 2.0    /* seconds: Go's saneMinimum per address */
/* the conversation's buffer: a line and its NUL, then the start of the
 * last line read (for messages) */
#define LAST_AT (SONDE_TCP_LINE_MAX + 1)
#define BUF_SIZE (LAST_AT + SONDE_EXPECT_SHOWN)

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
  int starttls;                    /* TLS at a STARTTLS step, not at once */
  int ssl_failed;                  /* a TLS read or write failed: no
                                      close_notify */
  short want;                      /* the event a step waits for */
  /* the conversation (steps), after connecting */
  const struct sonde_tcp_step *steps; /* copies in the op's block */
  size_t nsteps, step;             /* the step being walked */
  size_t sent;                     /* bytes of a send step written */
  char *buf;                       /* read, not yet consumed (BUF_SIZE
                                      bytes: a line, its NUL, and the
                                      start of the last line read), or
                                      NULL before the first expect */
  size_t blen, total;              /* bytes in buf; read in all */
  size_t lines;                    /* lines read by this expect step */
  size_t last_len;                 /* length of the last line read */
  int eof;                         /* the peer has closed its side */
  long match_steps;                /* matching steps left for the run
                                      (SONDE_PATTERN_STEPS at the start) */
  char *mline;                     /* the line the last EXPECT_RE step
                                      matched, or NULL */
  regmatch_t msub[10];             /* its submatches */
  char *xbuf;                      /* a SEND_EXPAND step's bytes, or NULL */
  size_t xlen;
  char host[];                     /* as given */
};

static void ev_clear(struct tcp_op *t) {
  if (event_initialized(&t->ev)) event_del(&t->ev);
}

static void close_fd(struct tcp_op *t) {
  sonde_tls_io_close(t->ssl, t->what != W_TLS && !t->ssl_failed);
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
  free(t->buf);
  t->buf = NULL;
  free(t->mline);
  t->mline = NULL;
  free(t->xbuf);
  t->xbuf = NULL;
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

static void converse(struct tcp_op *t);

/* What a TLS read or write did, as recv/send say it. */
static ssize_t tls_io_result(struct tcp_op *t, enum sonde_tls_io io,
                             size_t n) {
  switch (io) {
  case SONDE_TLS_IO_DONE: return (ssize_t)n;
  case SONDE_TLS_IO_EOF: return 0;
  case SONDE_TLS_IO_WANT_READ: t->want = EV_READ; errno = EAGAIN; return -1;
  case SONDE_TLS_IO_WANT_WRITE: t->want = EV_WRITE; errno = EAGAIN; return -1;
  case SONDE_TLS_IO_ERROR: break;
  }
  t->ssl_failed = 1;
  errno = EPROTO;
  return -1;
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
  } else {
    set_failure(t);
  }
  /* a certificate expiring too soon, when the peer answered (connected,
   * or a step's expectation unmet, as HTTP judges only a response): a
   * failure threshold overrides that, a warning threshold only a success */
  if (ok || r->reason == SONDE_R_EXPECT)
    sonde_tls_judge(r->tls, &t->tls, (double)time(NULL), r);
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
      if (t->tls_ctx && !t->starttls) tls_start(t);
      else if (t->nsteps) converse(t);
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
    sonde_tls_facts_free(t->op.res.tls);  /* (one handshake per run) */
    t->op.res.tls = f;
    if (t->step < t->nsteps) converse(t);   /* the steps, over TLS */
    else finish(t, 1);
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

/* ---- the conversation (steps after connecting) ---------------------------- */

static void on_converse(evutil_socket_t fd, short what, void *arg);

/* The conversation ended with a failure: `msg` is the result's error and
 * output. */
static void converse_fail(struct tcp_op *t, sonde_reason reason, int code,
                          const char *msg) {
  struct sonde_result *r = &t->op.res;
  close_fd(t);
  set_remote_addr(t);
  /* short of descriptors or memory: the engine's trouble */
  r->status = reason == SONDE_R_RESOURCE ? SONDE_UNKNOWN : SONDE_FAILURE;
  r->reason = reason;
  r->code = code;
  free(r->error);
  r->error = strdup(msg);
  sonde_result_set_output(r, msg, strlen(msg));
  sonde_op_complete(&t->op);
}

/* Wait for the socket (EV_READ or EV_WRITE) until the deadline. */
static void converse_wait(struct tcp_op *t, short what) {
  double left = t->deadline - sonde_now();
  if (left < 0) left = 0;
  ev_clear(t);
  event_assign(&t->ev, t->op.loop->base, t->fd, what, on_converse, t);
  if (sonde_loop_add_timer(t->op.loop, &t->ev, left) != 0)
    converse_fail(t, SONDE_R_RESOURCE, 0, "cannot watch the socket");
}

/* "(N lines read, last: Q)" / "(nothing read)" */
static void read_so_far(struct tcp_op *t, char *out, size_t cap) {
  char q[SONDE_EXPECT_SHOWN * 4 + 8];
  if (t->lines == 0) {
    snprintf(out, cap, "(no line read)");
    return;
  }
  size_t shown = t->last_len < SONDE_EXPECT_SHOWN ? t->last_len
                                                  : SONDE_EXPECT_SHOWN;
  /* the bytes kept are the first SHOWN: quote them as a cut line */
  sonde_expect_quote(q, sizeof q, t->buf + LAST_AT, shown, shown);
  snprintf(out, cap, "(%zu line%s read, last: %s%s)", t->lines,
           t->lines == 1 ? "" : "s", q, t->last_len > shown ? "..." : "");
}

static void fail_expect(struct tcp_op *t, const struct sonde_tcp_step *st,
                        sonde_reason reason, const char *why) {
  char msg[2048], pat[808], seen[512];
  sonde_expect_quote(pat, sizeof pat, st->data, st->len, 200);
  read_so_far(t, seen, sizeof seen);
  snprintf(msg, sizeof msg, "%s: pattern %s not matched %s %s", st->name,
           pat, why, seen);
  converse_fail(t, reason, reason == SONDE_R_TIMEOUT ? ETIMEDOUT : 0, msg);
}

static void fail_errno(struct tcp_op *t, const struct sonde_tcp_step *st,
                       int err) {
  char msg[512], buf[128];
  if (err == EPROTO && t->ssl_failed) {   /* a TLS read or write */
    char e[256];
    snprintf(msg, sizeof msg, "%s: TLS: %s", st->name,
             sonde_tls_error(t->ssl, e, sizeof e));
    converse_fail(t, SONDE_R_TLS, 0, msg);
    return;
  }
  snprintf(msg, sizeof msg, "%s: %s", st->name,
           go_strerror(err, buf, sizeof buf));
  converse_fail(t, sonde_resource_errno(err) ? SONDE_R_RESOURCE
                                             : SONDE_R_NETWORK, err, msg);
}

/* Match the lines in buf against the expect step; 1 when one matched
 * (consumed through it), 0 when none did (all complete lines consumed),
 * -1 when the op has ended. */
static int scan_lines_with(struct tcp_op *t, const struct sonde_tcp_step *st,
                           regex_t *re) {
  for (;;) {
    char *nl = memchr(t->buf, '\n', t->blen);
    size_t len, used;
    if (nl) {
      len = (size_t)(nl - t->buf);
      used = len + 1;
    } else if (t->eof && t->blen > 0) {
      len = used = t->blen;         /* the last line, without "\n" */
    } else {
      return 0;
    }
    if (len > 0 && t->buf[len - 1] == '\r' && nl) len--;
    char keep = t->buf[len];
    t->buf[len] = '\0';             /* the pattern sees a NUL past it */
    size_t shown = len < SONDE_EXPECT_SHOWN ? len : SONDE_EXPECT_SHOWN;
    memcpy(t->buf + LAST_AT, t->buf, shown);
    t->last_len = len;
    t->lines++;
    int m;
    if (st->kind == SONDE_TCP_EXPECT_RE) {
      regmatch_t rm[10];
      rm[0].rm_so = 0;
      rm[0].rm_eo = (regoff_t)len;
      m = regexec(re, t->buf, 10, rm, REG_STARTEND) == 0;
      if (m == 1) {             /* kept for a SEND_EXPAND step */
        free(t->mline);
        if (!(t->mline = malloc(len + 1))) {
          t->buf[len] = keep;
          converse_fail(t, SONDE_R_RESOURCE, ENOMEM, "out of memory");
          return -1;
        }
        memcpy(t->mline, t->buf, len + 1);
        memcpy(t->msub, rm, sizeof rm);
      }
    } else {
      m = sonde_pattern_find_steps(t->buf, len, st->data, st->len, NULL,
                                   NULL, &t->match_steps);
    }
    if (m == 1) {
      struct sonde_result *r = &t->op.res;
      if (sonde_result_set_output(r, t->buf, len) == 0)
        sonde_clean_text(&r->output, &r->output_len);
    }
    t->buf[len] = keep;
    memmove(t->buf, t->buf + used, t->blen - used);
    t->blen -= used;
    if (m == 1) return 1;
    if (m < 0) {
      char msg[1024], pat[808];
      sonde_expect_quote(pat, sizeof pat, st->data, st->len, 200);
      snprintf(msg, sizeof msg, "%s: pattern %s too complex for a line",
               st->name, pat);
      converse_fail(t, SONDE_R_EXPECT, 0, msg);
      return -1;
    }
  }
}

static int scan_lines(struct tcp_op *t, const struct sonde_tcp_step *st) {
  if (st->kind != SONDE_TCP_EXPECT_RE) return scan_lines_with(t, st, NULL);
  /* compiled for this scan: a step's regex lives as long as the scan */
  regex_t re;
  int rc = regcomp(&re, st->data, REG_EXTENDED);
  if (rc != 0) {
    char msg[1024], err[256];
    regerror(rc, &re, err, sizeof err);
    regfree(&re);
    snprintf(msg, sizeof msg, "%s: regular expression does not compile: %s",
             st->name, err);
    converse_fail(t, SONDE_R_CONFIG, 0, msg);
    return -1;
  }
  int m = scan_lines_with(t, st, &re);
  regfree(&re);
  return m;
}

/* send() or, once TLS is on, SSL_write: bytes written, or -1 with errno
 * (EAGAIN: wait for t->want; EPROTO: TLS failed, t->tls_err says why). */
static ssize_t io_send(struct tcp_op *t, const char *p, size_t n) {
  t->want = EV_WRITE;
  if (!t->ssl) return send(t->fd, p, n, MSG_NOSIGNAL);
  size_t put = 0;
  enum sonde_tls_io io = sonde_tls_io_write(t->ssl, p, n, &put);
  return tls_io_result(t, io, put);
}

/* recv() or SSL_read: bytes read, 0 at the end, or -1 with errno as
 * io_send. */
static ssize_t io_recv(struct tcp_op *t, char *p, size_t n) {
  t->want = EV_READ;
  if (!t->ssl) return recv(t->fd, p, n, 0);
  size_t got = 0;
  enum sonde_tls_io io = sonde_tls_io_read(t->ssl, p, n, &got);
  return tls_io_result(t, io, got);
}

/* The bytes of SEND_EXPAND step st into t->xbuf, a newline after them
 * (nothing at all when they are empty): 0, or -1 when out of memory. */
static int expand(struct tcp_op *t, const struct sonde_tcp_step *st) {
  size_t cap = st->len + 1, n = 0;
  for (size_t i = 0; i + 1 < st->len; i++)   /* room for every submatch */
    if (st->data[i] == '$' && st->data[i + 1] >= '0' &&
        st->data[i + 1] <= '9' && t->mline)
      cap += strlen(t->mline);
  char *x = malloc(cap);
  if (!x) return -1;
  for (size_t i = 0; i < st->len; i++) {
    char c = st->data[i];
    if (c == '$' && i + 1 < st->len && st->data[i + 1] == '$') {
      x[n++] = '$';
      i++;
    } else if (c == '$' && i + 1 < st->len && st->data[i + 1] >= '0' &&
               st->data[i + 1] <= '9') {
      const regmatch_t *g = &t->msub[st->data[i + 1] - '0'];
      if (t->mline && g->rm_so >= 0 && g->rm_eo >= g->rm_so) {
        memcpy(x + n, t->mline + g->rm_so, (size_t)(g->rm_eo - g->rm_so));
        n += (size_t)(g->rm_eo - g->rm_so);
      }
      i++;
    } else {
      x[n++] = c;
    }
  }
  if (n > 0) x[n++] = '\n';   /* blackbox_exporter: a line, none if empty */
  t->xbuf = x;
  t->xlen = n;
  return 0;
}

/* Walk the steps from t->step on, until one must wait or all are done. */
static void converse(struct tcp_op *t) {
  while (t->step < t->nsteps) {
    const struct sonde_tcp_step *st = &t->steps[t->step];
    if (st->kind == SONDE_TCP_STARTTLS) {
      if (!t->tls_ctx || t->ssl) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: starttls: %s", st->name,
                 t->ssl ? "TLS is on already" : "no TLS options");
        converse_fail(t, SONDE_R_CONFIG, 0, msg);
        return;
      }
      t->step++;
      t->blen = 0;                   /* nothing read before counts after */
      t->lines = 0;
      tls_start(t);
      return;
    }
    if (st->kind == SONDE_TCP_SEND || st->kind == SONDE_TCP_SEND_EXPAND) {
      const char *data = st->data;
      size_t len = st->len;
      if (st->kind == SONDE_TCP_SEND_EXPAND) {
        if (!t->xbuf && expand(t, st) != 0) {
          converse_fail(t, SONDE_R_RESOURCE, ENOMEM, "out of memory");
          return;
        }
        data = t->xbuf;
        len = t->xlen;
      }
      while (t->sent < len) {
        ssize_t n = io_send(t, data + t->sent, len - t->sent);
        if (n > 0) {
          t->sent += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          converse_wait(t, t->want);
          return;
        } else if (n < 0 && errno == EINTR) {
          continue;
        } else {
          fail_errno(t, st, n < 0 ? errno : EPIPE);
          return;
        }
      }
      t->sent = 0;
      free(t->xbuf);
      t->xbuf = NULL;
      t->step++;
      continue;
    }
    /* expect */
    if (!t->buf && !(t->buf = malloc(BUF_SIZE))) {
      converse_fail(t, SONDE_R_RESOURCE, ENOMEM, "out of memory");
      return;
    }
    int m = scan_lines(t, st);
    if (m < 0) return;
    if (m == 1) {
      t->lines = 0;
      t->step++;
      continue;
    }
    if (t->eof) {
      fail_expect(t, st, SONDE_R_EXPECT, "before the connection closed");
      return;
    }
    if (t->blen >= SONDE_TCP_LINE_MAX) {
      char msg[1024], q[SONDE_EXPECT_SHOWN * 4 + 8];
      sonde_expect_quote(q, sizeof q, t->buf, t->blen, SONDE_EXPECT_SHOWN);
      snprintf(msg, sizeof msg, "%s: a line longer than %d bytes (first %d "
               "bytes: %s)", st->name, SONDE_TCP_LINE_MAX,
               SONDE_EXPECT_SHOWN, q);
      converse_fail(t, SONDE_R_EXPECT, 0, msg);
      return;
    }
    if (t->total >= SONDE_TCP_READ_MAX) {
      char why[64];
      snprintf(why, sizeof why, "in the %d bytes read", SONDE_TCP_READ_MAX);
      fail_expect(t, st, SONDE_R_EXPECT, why);
      return;
    }
    size_t room = SONDE_TCP_LINE_MAX - t->blen;
    if (room > SONDE_TCP_READ_MAX - t->total)
      room = SONDE_TCP_READ_MAX - t->total;
    ssize_t n = io_recv(t, t->buf + t->blen, room);
    if (n > 0) {
      t->blen += (size_t)n;
      t->total += (size_t)n;
    } else if (n == 0) {
      t->eof = 1;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      converse_wait(t, t->want);
      return;
    } else if (errno != EINTR) {
      fail_errno(t, st, errno);
      return;
    }
  }
  finish(t, 1);
}

static void on_converse(evutil_socket_t fd, short what, void *arg) {
  struct tcp_op *t = arg;
  (void)fd;
  if (what & EV_TIMEOUT) {
    const struct sonde_tcp_step *st = &t->steps[t->step];
    if (st->kind == SONDE_TCP_SEND || st->kind == SONDE_TCP_SEND_EXPAND) {
      char msg[256];
      snprintf(msg, sizeof msg, "%s: not all sent by the deadline (%zu of "
               "%zu bytes)", st->name, t->sent,
               st->kind == SONDE_TCP_SEND ? st->len : t->xlen);
      converse_fail(t, SONDE_R_TIMEOUT, ETIMEDOUT, msg);
    } else {
      fail_expect(t, st, SONDE_R_TIMEOUT, "by the deadline");
    }
    return;
  }
  converse(t);
}

/* The steps and their bytes, copied after the host in the op's block
 * (`at`: the offset of the steps, aligned). */
static size_t steps_size(const struct sonde_tcp_opts *o) {
  size_t n = o->nsteps * sizeof(struct sonde_tcp_step);
  for (size_t i = 0; i < o->nsteps; i++)
    n += o->steps[i].len + 1 + strlen(o->steps[i].name) + 1;
  return n;
}

static void copy_steps(struct tcp_op *t, char *at,
                       const struct sonde_tcp_opts *o) {
  struct sonde_tcp_step *st = (struct sonde_tcp_step *)(void *)at;
  char *w = at + o->nsteps * sizeof *st;
  for (size_t i = 0; i < o->nsteps; i++) {
    size_t nl = strlen(o->steps[i].name);
    st[i].kind = o->steps[i].kind;
    st[i].len = o->steps[i].len;
    memcpy(w, o->steps[i].data, st[i].len);
    w[st[i].len] = '\0';
    st[i].data = w;
    w += st[i].len + 1;
    memcpy(w, o->steps[i].name, nl + 1);
    st[i].name = w;
    w += nl + 1;
  }
  t->steps = st;
  t->nsteps = o->nsteps;
  t->match_steps = SONDE_PATTERN_STEPS;
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
  size_t at = (sizeof(struct tcp_op) + hlen + 1 + 15) / 16 * 16;  /* the steps */
  struct tcp_op *t = calloc(1, o->nsteps ? at + steps_size(o)
                                         : sizeof *t + hlen + 1);
  if (!t) return 0;
  memcpy(t->host, o->host, hlen + 1);
  if (o->nsteps) copy_steps(t, (char *)t + at, o);
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
    for (size_t i = 0; i < o->nsteps; i++)
      if (o->steps[i].kind == SONDE_TCP_STARTTLS) t->starttls = 1;
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
