/*
 * tcp.c - the TCP prober (include/sonde/tcp.h).
 *
 * libcurl with CURLOPT_CONNECT_ONLY resolves the name (threaded resolver)
 * and connects without blocking the loop; the transfer ends as soon as the
 * connection is up, nothing is sent.  The connection is closed when the
 * easy handle is cleaned up, before the callback runs.
 *
 * Ownership: struct tcp_op owns its easy handle.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonde/tcp.h"

struct tcp_op {
  struct sonde_op op;
  struct sonde_curl_owner owner;
  CURL *easy;
  int in_multi;
  char *target;              /* "host:port" as given, for messages */
  char errbuf[CURL_ERROR_SIZE];
};

static void tcp_release(struct sonde_op *op, int cancelled) {
  struct tcp_op *t = (struct tcp_op *)op;
  (void)cancelled;
  if (t->easy) {
    if (t->in_multi) curl_multi_remove_handle(op->loop->multi, t->easy);
    sonde_curl_owner_forget(&t->owner);
    curl_easy_cleanup(t->easy);
  }
  t->easy = NULL;
  free(t->target);
  t->target = NULL;
}

static const struct sonde_op_vtable tcp_vt = {"tcp", tcp_release};

static void on_done(struct sonde_curl_owner *owner, CURLcode code) {
  struct tcp_op *t = (struct tcp_op *)(void *)((char *)owner -
                                              offsetof(struct tcp_op, owner));
  struct sonde_result *r = &t->op.res;
  char *ip = NULL;
  long port = 0;
  t->in_multi = 0;
  curl_easy_getinfo(t->easy, CURLINFO_PRIMARY_IP, &ip);
  curl_easy_getinfo(t->easy, CURLINFO_PRIMARY_PORT, &port);
  sonde_format_addr(r->remote_addr, sizeof r->remote_addr, ip, port);
  if (code == CURLE_OK) {
    r->status = SONDE_SUCCESS;
    r->reason = SONDE_R_OK;
    sonde_result_set_output(r, "", 0);
  } else {
    sonde_curl_classify(r, t->easy, code, t->errbuf, &t->owner, 1);
    /* kubelet's output shape: "dial tcp <addr>: <error>" */
    char *out = NULL;
    int n = asprintf(&out, "dial tcp %s: %s", t->target,
                     r->error ? r->error : "error");
    if (n >= 0) {
      r->output = out;
      r->output_len = (size_t)n;
      if (sonde_clean_text(&r->output, &r->output_len) != 0) {
        free(r->output);
        r->output = NULL;
        r->output_len = 0;
      }
    }
  }
  sonde_op_complete(&t->op);
}

uint64_t sonde_tcp_start(struct sonde_loop *loop,
                         const struct sonde_tcp_opts *o, sonde_result_cb cb,
                         void *arg) {
  struct tcp_op *t = calloc(1, sizeof *t);
  if (!t) return 0;
  t->op.vt = &tcp_vt;
  t->owner.done = on_done;
  t->easy = curl_easy_init();
  if (!t->easy) {
    free(t);
    return 0;
  }
  int v6 = strchr(o->host, ':') != NULL;
  char *url = NULL;
  if (asprintf(&t->target, "%s%s%s:%ld", v6 ? "[" : "", o->host,
               v6 ? "]" : "", o->port) < 0)
    t->target = NULL;
  if (!t->target || asprintf(&url, "http://%s/", t->target) < 0) {
    curl_easy_cleanup(t->easy);
    free(t->target);
    free(t);
    return 0;
  }
  uint64_t id = sonde_op_start(loop, &t->op, cb, arg);
  double secs = o->timeout > SONDE_MAX_SECONDS ? SONDE_MAX_SECONDS : o->timeout;
  long ms = (long)(secs * 1000);
  if (ms < 1) ms = 1;
  CURL *e = t->easy;
  sonde_curl_setup(e, &t->owner, loop);
  sonde_curl_owner_reset(&t->owner);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_URL, url);   /* curl copies it */
  free(url);
  curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms);
  if (curl_multi_add_handle(loop->multi, e) != CURLM_OK) {
    t->op.res.status = SONDE_UNKNOWN;
    t->op.res.reason = SONDE_R_RESOURCE;
    sonde_result_set_error(&t->op.res, "curl_multi_add_handle failed");
    sonde_op_complete_soon(&t->op);
    return id;
  }
  t->in_multi = 1;
  return id;
}
