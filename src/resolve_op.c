/*
 * resolve_op.c - a host name's addresses as an operation of the loop
 * (core.resolve), on resolve.c's evdns lookups: for blackbox_exporter's
 * modules (lua/sonde/blackbox/run.lua), which choose the address family
 * themselves (preferred_ip_protocol) before connecting, as blackbox's
 * chooseProtocol does.
 *
 *   sonde_resolve_start(loop, name, timeout, cb, arg) -> op id (0: no memory)
 *
 * The result: success, reason ok, `output` the addresses one per line
 * ("127.0.0.1\n::1\n": IPv4 first, as resolve.c gives them); failure dns
 * ("lookup NAME: no such host", or the name servers' failure); failure
 * timeout ("lookup NAME: i/o timeout") when no answer came within
 * `timeout` seconds; unknown resource when the resolver could not be made.
 * An IP literal is answered as itself (no lookup).  `duration` is the
 * lookup's time.  Cancelling (sonde_loop_cancel) cancels the lookup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>

#include "internal.h"
#include "resolve_op.h"

struct resolve_op {
  struct sonde_op op;
  struct sonde_lookup *lk; /* in flight, or NULL */
  struct event deadline;
  int armed;
  int starting; /* inside sonde_resolve_start */
  char name[];
};

static void resolve_release(struct sonde_op *op, int cancelled) {
  struct resolve_op *r = (struct resolve_op *)op;
  (void)cancelled;
  if (r->lk) sonde_lookup_cancel(r->lk);
  r->lk = NULL;
  if (r->armed) event_del(&r->deadline);
  r->armed = 0;
}

static const struct sonde_op_vtable resolve_vt = {"resolve", resolve_release};

static void fail(struct resolve_op *r, sonde_status st, sonde_reason reason,
                 const char *why) {
  char msg[600];
  snprintf(msg, sizeof msg, "lookup %.500s: %s", r->name, why);
  r->op.res.status = st;
  r->op.res.reason = reason;
  free(r->op.res.error);
  r->op.res.error = strdup(msg);
  sonde_result_set_output(&r->op.res, msg, strlen(msg));
}

static void on_lookup(struct sonde_lookup_result *res, void *arg) {
  struct resolve_op *r = arg;
  r->lk = NULL;
  if (r->armed) event_del(&r->deadline);
  r->armed = 0;
  if (res->status == SONDE_LOOKUP_OK) {
    char out[4096];
    size_t o = 0;
    for (struct evutil_addrinfo *ai = res->ai; ai; ai = ai->ai_next) {
      char ip[INET6_ADDRSTRLEN] = "";
      if (ai->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip,
                  sizeof ip);
      else if (ai->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr,
                  ip, sizeof ip);
      size_t n = strlen(ip);
      if (n && o + n + 1 < sizeof out) {
        memcpy(out + o, ip, n);
        out[o + n] = '\n';
        o += n + 1;
      }
    }
    if (res->ai) evutil_freeaddrinfo(res->ai);
    r->op.res.status = SONDE_SUCCESS;
    r->op.res.reason = SONDE_R_OK;
    sonde_result_set_output(&r->op.res, out, o);
  } else if (res->status == SONDE_LOOKUP_RESOURCE) {
    fail(r, SONDE_UNKNOWN, SONDE_R_RESOURCE, res->why ? res->why : "resource");
  } else {
    fail(r, SONDE_FAILURE, SONDE_R_DNS, res->why ? res->why : "no such host");
  }
  /* answered at once (hosts file, a name that never resolves): never call
   * back inside the starting call */
  if (r->starting)
    sonde_op_complete_soon(&r->op);
  else
    sonde_op_complete(&r->op);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  struct resolve_op *r = arg;
  (void)fd;
  (void)what;
  r->armed = 0;
  if (r->lk) sonde_lookup_cancel(r->lk);
  r->lk = NULL;
  fail(r, SONDE_FAILURE, SONDE_R_TIMEOUT, "i/o timeout");
  sonde_op_complete(&r->op);
}

uint64_t sonde_resolve_start(struct sonde_loop *loop, const char *name,
                             double timeout, sonde_result_cb cb, void *arg) {
  size_t n = strlen(name);
  struct resolve_op *r = calloc(1, sizeof *r + n + 1);
  if (!r) return 0;
  memcpy(r->name, name, n + 1);
  r->op.vt = &resolve_vt;
  uint64_t id = sonde_op_start(loop, &r->op, cb, arg);
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, name, buf) == 1 ||
      inet_pton(AF_INET6, name, buf) == 1) {
    r->op.res.status = SONDE_SUCCESS;
    r->op.res.reason = SONDE_R_OK;
    char out[INET6_ADDRSTRLEN + 2];
    int k = snprintf(out, sizeof out, "%s\n", name);
    sonde_result_set_output(&r->op.res, out, (size_t)k);
    sonde_op_complete_soon(&r->op);
    return id;
  }
  event_assign(&r->deadline, loop->base, -1, 0, on_deadline, r);
  if (sonde_loop_add_timer(loop, &r->deadline, timeout > 0 ? timeout : 0) == 0)
    r->armed = 1;
  r->starting = 1;
  r->lk = sonde_lookup_start(loop, name, 0, on_lookup, r);
  r->starting = 0;
  return id;
}
