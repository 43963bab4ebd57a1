/*
 * curlsock.c - libcurl's multi-socket interface driven by the libevent loop
 * (the pattern of curl's docs/examples/multi-event.c and hiperfifo.c).
 *
 * One CURLM per loop and one timer event for it.  Each socket curl asks us
 * to watch gets a `struct sock` attached with curl_multi_assign; it is freed
 * on CURL_POLL_REMOVE.  No curl_multi_* call is made from inside a curl
 * callback: the timer callback only (re)arms the event, and finished
 * transfers are handed to their owners after socket_action returns.
 *
 * Every transfer's sockets are opened and closed here too
 * (CURLOPT_OPENSOCKETFUNCTION / CLOSESOCKETFUNCTION): the errno of a
 * socket() that fails is kept on the transfer's owner (out of descriptors
 * is the engine's trouble, not the target's), and a socket that is closed
 * connected marks its transfer as having completed a TCP connect (a
 * timeout after that is not a connect timeout).  Sockets are mapped to
 * their owner through loop->fd_owner, not through the callback's data
 * pointer, because libcurl may close a connection after the easy handle
 * (and the owner) are gone.
 *
 * Easy handles are reused: each loop keeps up to SONDE_EASY_POOL_MAX idle
 * ones, reset (curl_easy_reset) when given back; a new one costs libcurl
 * two large zeroed allocations and its defaults, a reset only the defaults.
 * What a reset leaves of a transfer is listed in internal.h
 * (sonde_curl_easy_put) and kept out of the next one.
 *
 * libcurl's allocations go through counting wrappers (curl_global_init_mem)
 * so that a CURLE_OUT_OF_MEMORY that no failed allocation explains is known
 * for what it is: libcurl's own size limit (a response header line over
 * 100 KB), a fault of the peer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/tcp.h>  /* struct tcp_info with tcpi_bytes_received */
#include <netinet/in.h> /* IPPROTO_TCP */
#endif

#include "internal.h"

/* ---- libcurl's memory --------------------------------------------------- */

static atomic_uint alloc_failures;
static int alloc_counted;  /* the wrappers are libcurl's (set once, at init,
                              before any transfer or resolver thread) */
static int alloc_probe;    /* a wrapper ran while alloc_counted was 0 */

#define SEEN() do { if (!alloc_counted) alloc_probe = 1; } while (0)

static void *c_malloc(size_t n) {
  void *p = malloc(n);
  SEEN();
  if (!p) atomic_fetch_add_explicit(&alloc_failures, 1, memory_order_relaxed);
  return p;
}

static void *c_calloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  SEEN();
  if (!p) atomic_fetch_add_explicit(&alloc_failures, 1, memory_order_relaxed);
  return p;
}

static void *c_realloc(void *old, size_t n) {
  void *p = realloc(old, n);
  SEEN();
  if (!p && n)
    atomic_fetch_add_explicit(&alloc_failures, 1, memory_order_relaxed);
  return p;
}

static char *c_strdup(const char *s) {
  char *p = strdup(s);
  SEEN();
  if (!p) atomic_fetch_add_explicit(&alloc_failures, 1, memory_order_relaxed);
  return p;
}

unsigned sonde_curl_alloc_failures(void) {
  return atomic_load_explicit(&alloc_failures, memory_order_relaxed);
}

int sonde_curl_alloc_counted(void) { return alloc_counted; }

/* ---- the sockets of transfers ------------------------------------------ */

static void fd_forget(struct sonde_curl_owner *o, curl_socket_t fd) {
  for (int i = 0; i < SONDE_OWNER_FDS; i++)
    if (o->fds[i] == fd) o->fds[i] = CURL_SOCKET_BAD;
}

static curl_socket_t open_socket(void *clientp, curlsocktype purpose,
                                 struct curl_sockaddr *a) {
  struct sonde_curl_owner *o = clientp;
  struct sonde_loop *loop = o->loop;
  (void)purpose;
  curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC,
                            a->protocol);
  o->ip_protocol = a->family == AF_INET6 ? 6 : a->family == AF_INET ? 4 : 0;
  if (fd == CURL_SOCKET_BAD) {
    o->sock_errno = errno;
    return CURL_SOCKET_BAD;
  }
  size_t need = (size_t)fd + 1;
  if (need > loop->nfd_owner) {
    size_t n = loop->nfd_owner ? loop->nfd_owner : 64;
    while (n < need) n *= 2;
    struct sonde_curl_owner **t = realloc(loop->fd_owner, n * sizeof *t);
    if (!t) return fd;      /* works, only unwatched: no connect mark */
    memset(t + loop->nfd_owner, 0, (n - loop->nfd_owner) * sizeof *t);
    loop->fd_owner = t;
    loop->nfd_owner = n;
  }
  for (int i = 0; i < SONDE_OWNER_FDS; i++) {
    if (o->fds[i] == CURL_SOCKET_BAD) {
      o->fds[i] = fd;
      loop->fd_owner[fd] = o;
      break;
    }
  }
  return fd;
}

/* Whether the peer of connected socket fd has sent any byte: 1 or 0, or
 * -1 when the system does not tell (the gRPC prober tells a server that
 * never spoke from one slow to answer). */
static int peer_sent(curl_socket_t fd) {
#ifdef __linux__
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
      len >= offsetof(struct tcp_info, tcpi_bytes_received) +
                 sizeof ti.tcpi_bytes_received)
    return ti.tcpi_bytes_received > 0;
#else
  (void)fd;
#endif
  return -1;
}

static int close_socket(void *clientp, curl_socket_t fd) {
  struct sonde_loop *loop = clientp;
  if (fd >= 0 && (size_t)fd < loop->nfd_owner && loop->fd_owner[fd]) {
    struct sonde_curl_owner *o = loop->fd_owner[fd];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0) {
      o->tcp_connected = 1;
      if (o->peer_bytes != 1) o->peer_bytes = peer_sent(fd);
    }
    fd_forget(o, fd);
    loop->fd_owner[fd] = NULL;
  }
  return close(fd);
}

void sonde_curl_setup(CURL *e, struct sonde_curl_owner *o,
                      struct sonde_loop *loop) {
  o->loop = loop;
  for (int i = 0; i < SONDE_OWNER_FDS; i++) o->fds[i] = CURL_SOCKET_BAD;
  curl_easy_setopt(e, CURLOPT_PRIVATE, o);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_VERBOSE, 0L);     /* never a line on stderr */
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 1L);
  /* The session cache is the easy handle's and curl_easy_reset keeps it:
   * a pooled handle would resume another run's TLS session.  Go's client
   * (kubelet) resumes none either: no ClientSessionCache. */
  curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, o);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, loop);
}

void sonde_curl_owner_reset(struct sonde_curl_owner *o) {
  o->sock_errno = 0;
  o->ip_protocol = 0;
  o->tcp_connected = 0;
  o->peer_bytes = 0;
  o->alloc_failures = sonde_curl_alloc_failures();
}

void sonde_curl_owner_look(struct sonde_curl_owner *o) {
  for (int i = 0; i < SONDE_OWNER_FDS; i++) {
    curl_socket_t fd = o->fds[i];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (fd == CURL_SOCKET_BAD ||
        getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
      continue;
    o->tcp_connected = 1;
    if (o->peer_bytes != 1) o->peer_bytes = peer_sent(fd);
  }
}

void sonde_curl_owner_forget(struct sonde_curl_owner *o) {
  struct sonde_loop *loop = o->loop;
  if (!loop) return;
  for (int i = 0; i < SONDE_OWNER_FDS; i++) {
    curl_socket_t fd = o->fds[i];
    if (fd >= 0 && (size_t)fd < loop->nfd_owner && loop->fd_owner[fd] == o)
      loop->fd_owner[fd] = NULL;
    o->fds[i] = CURL_SOCKET_BAD;
  }
}

/* ---- the pool of easy handles ------------------------------------------ */

CURL *sonde_curl_easy_get(struct sonde_loop *loop) {
  if (loop->neasy_pool) return loop->easy_pool[--loop->neasy_pool];
  return curl_easy_init();
}

void sonde_curl_easy_put(struct sonde_loop *loop, CURL *easy, int keep) {
  if (!easy) return;
  long oserr = 0;
  /* libcurl never sets the last socket error back to 0: a refusal of this
   * transfer would show as the next one's */
  if (curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr) != CURLE_OK ||
      oserr != 0)
    keep = 0;
  if (!keep || loop->neasy_pool >= SONDE_EASY_POOL_MAX) {
    curl_easy_cleanup(easy);
    return;
  }
  curl_easy_reset(easy);
  loop->easy_pool[loop->neasy_pool++] = easy;
}

/* ---- multi plumbing ------------------------------------------------------ */

struct sock {
  struct sonde_loop *loop;
  curl_socket_t fd;
  struct event *ev;
};

/* Drain curl's finished-transfer messages: copy each message out, remove
 * the easy handle from the multi, then tell its owner. */
static void check_done(struct sonde_loop *loop) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(loop->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *easy = msg->easy_handle;
    CURLcode code = msg->data.result;
    struct sonde_curl_owner *owner = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&owner);
    curl_multi_remove_handle(loop->multi, easy);
    if (owner) owner->done(owner, code);
  }
}

static void on_sock_event(evutil_socket_t fd, short what, void *arg) {
  struct sonde_loop *loop = arg;
  int running, mask = 0;
  if (what & EV_READ) mask |= CURL_CSELECT_IN;
  if (what & EV_WRITE) mask |= CURL_CSELECT_OUT;
  curl_multi_socket_action(loop->multi, fd, mask, &running);
  check_done(loop);
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg) {
  struct sonde_loop *loop = arg;
  int running;
  (void)fd;
  (void)what;
  curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(loop);
}

/* CURLMOPT_TIMERFUNCTION: arm (or, for -1, delete) the single timer. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  struct sonde_loop *loop = userp;
  (void)multi;
  if (timeout_ms < 0) {
    evtimer_del(loop->curl_timer);
  } else {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(loop->curl_timer, &tv);
  }
  return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for the mask curl asks for, or stop. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  struct sonde_loop *loop = userp;
  struct sock *s = socketp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (s) {                 /* may be NULL: a socket never announced */
      event_free(s->ev);
      free(s);
      curl_multi_assign(loop->multi, fd, NULL);
    }
    return 0;
  }
  short kind = EV_PERSIST;
  if (what & CURL_POLL_IN) kind |= EV_READ;
  if (what & CURL_POLL_OUT) kind |= EV_WRITE;
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->loop = loop;
    s->fd = fd;
    s->ev = event_new(loop->base, fd, kind, on_sock_event, loop);
    if (!s->ev) { free(s); return -1; }
    curl_multi_assign(loop->multi, fd, s);
  } else {
    event_del(s->ev);
    event_assign(s->ev, loop->base, fd, kind, on_sock_event, loop);
  }
  event_add(s->ev, NULL);
  return 0;
}

int sonde_curl_init(struct sonde_loop *loop) {
  static int global_done;
  if (!global_done) {
    if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, c_malloc, free, c_realloc,
                             c_strdup, c_calloc) != CURLE_OK)
      return -1;
    global_done = 1;
    /* Had the process initialised libcurl before, the call above kept the
     * memory functions it had: see whether an allocation comes here. */
    alloc_probe = 0;
    CURLU *u = curl_url();
    alloc_counted = alloc_probe;
    curl_url_cleanup(u);
  }
  loop->multi = curl_multi_init();
  if (!loop->multi) return -1;
  loop->curl_timer = evtimer_new(loop->base, on_curl_timer, loop);
  if (!loop->curl_timer) {
    curl_multi_cleanup(loop->multi);
    loop->multi = NULL;
    return -1;
  }
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop);
  return 0;
}

void sonde_curl_free(struct sonde_loop *loop) {
  while (loop->neasy_pool)
    curl_easy_cleanup(loop->easy_pool[--loop->neasy_pool]);
  if (loop->multi) curl_multi_cleanup(loop->multi);
  if (loop->curl_timer) event_free(loop->curl_timer);
  loop->multi = NULL;
  loop->curl_timer = NULL;
  free(loop->fd_owner);
  loop->fd_owner = NULL;
  loop->nfd_owner = 0;
}
