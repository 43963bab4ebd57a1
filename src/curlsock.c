/*
 * curlsock.c - libcurl's multi-socket interface driven by the libevent loop
 * (the pattern of curl's docs/examples/multi-event.c and hiperfifo.c).
 *
 * One CURLM per loop and one timer event for it.  Each socket curl asks us
 * to watch gets a `struct sock` attached with curl_multi_assign; it is freed
 * on CURL_POLL_REMOVE.  No curl_multi_* call is made from inside a curl
 * callback: the timer callback only (re)arms the event, and finished
 * transfers are handed to their owners after socket_action returns.
 */
#include <stdlib.h>

#include "internal.h"

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
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    global_done = 1;
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
  if (loop->multi) curl_multi_cleanup(loop->multi);
  if (loop->curl_timer) event_free(loop->curl_timer);
  loop->multi = NULL;
  loop->curl_timer = NULL;
}
