/*
 * grpc.c - the gRPC health prober (include/sonde/grpc.h).
 *
 * One easy handle per check from the loop's pool, on the loop's curl multi
 * (curlsock.c), like http.c: one POST over HTTP/2, the response body (the
 * framed reply message) kept up to RESPONSE_MAX bytes, grpc-status,
 * grpc-message and content-type taken from the header callback (libcurl
 * hands HTTP/2 trailers to it after the body).  The outcome is decided in
 * on_done, after the transfer has left the multi.
 *
 * TLS: the shared options (sonde/tls.h) set with sonde_tls_curl_apply, as
 * http.c does; the peer's certificate facts are taken in the header
 * callback (the first response head, while libcurl's connection is alive)
 * and go into the result whatever the outcome; the expiry thresholds are
 * judged after the gRPC outcome of a completed call and win over it.
 *
 * Ownership: struct grpc_op owns its easy handle, header list, URL,
 * request body, response buffer, the header values kept, its copy of
 * tls.server_name (libcurl keeps the pointer) and the facts until they
 * move into the result; all are released in grpc_release, before the
 * callback runs.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "internal.h"
#include "sonde/grpc.h"
#include "sonde/http.h"
#include "sonde/pb.h"
#include "sonde/tls.h"

#ifndef SONDE_VERSION
#define SONDE_VERSION "0.1.0"
#endif

/* Bytes of response body kept: a HealthCheckResponse is a few bytes; a
 * server that sends more than this is not answering the health check. */
#define RESPONSE_MAX 65536
/* Bytes of a grpc-message kept. */
#define MESSAGE_MAX 1024

struct grpc_op {
  struct sonde_op op;
  struct sonde_curl_owner owner;
  CURL *easy;
  struct curl_slist *hdrs;
  char errbuf[CURL_ERROR_SIZE];
  char *url;
  uint8_t *req; /* the framed request message */
  size_t req_len;
  double timeout;
  int use_tls;
  struct sonde_tls_opts tls; /* the expiry thresholds (the file names are
                                not kept: libcurl copies them) */
  char *server_name;         /* tls.server_name, for the SSL_CTX callback */
  struct sonde_tls_facts *facts; /* the connection's, from the header cb */
  int facts_taken;           /* looked for already */
  int in_multi;
  char addr[300]; /* "host:port" as the kubelet's messages show it */
  /* the response */
  uint8_t *rbody;
  size_t rlen, rcap;
  int too_big;
  int oom;
  int has_status;
  int status;
  char *message;      /* grpc-message, percent-decoded */
  char *content_type; /* of the last response head */
};

void sonde_grpc_opts_init(struct sonde_grpc_opts *o) {
  memset(o, 0, sizeof *o);
  o->service = "";
  o->timeout = 1;
}

const char *sonde_grpc_serving_name(int s) {
  static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                      "SERVICE_UNKNOWN"};
  return s >= 0 && s <= 3 ? names[s] : NULL;
}

const char *sonde_grpc_code_name(int c) {
  /* google.golang.org/grpc/codes: Code.String() */
  static const char *const names[] = {"OK",
                                      "Canceled",
                                      "Unknown",
                                      "InvalidArgument",
                                      "DeadlineExceeded",
                                      "NotFound",
                                      "AlreadyExists",
                                      "PermissionDenied",
                                      "ResourceExhausted",
                                      "FailedPrecondition",
                                      "Aborted",
                                      "OutOfRange",
                                      "Unimplemented",
                                      "Internal",
                                      "Unavailable",
                                      "DataLoss",
                                      "Unauthenticated"};
  return c >= 0 && c <= 16 ? names[c] : NULL;
}

/* ---- Go's Duration.String() --------------------------------------------- */

/* v / 10^prec as "int[.frac]" with the fraction's trailing zeros dropped,
 * appended at *w. */
static void put_frac(char **w, char *end, uint64_t v, int prec) {
  uint64_t div = 1;
  for (int i = 0; i < prec; i++)
    div *= 10;
  uint64_t ip = v / div, fp = v % div;
  int n = snprintf(*w, (size_t)(end - *w), "%llu", (unsigned long long)ip);
  if (n < 0 || n >= end - *w) return;
  *w += n;
  if (fp == 0) return;
  char digits[24];
  snprintf(digits, sizeof digits, "%0*llu", prec, (unsigned long long)fp);
  size_t len = strlen(digits);
  while (len > 0 && digits[len - 1] == '0')
    len--;
  n = snprintf(*w, (size_t)(end - *w), ".%.*s", (int)len, digits);
  if (n > 0 && n < end - *w) *w += n;
}

void sonde_go_duration(char *out, size_t n, double seconds) {
  if (n == 0) return;
  out[0] = '\0';
  if (!(seconds > 0)) {
    snprintf(out, n, "0s");
    return;
  }
  if (seconds > SONDE_MAX_SECONDS) seconds = SONDE_MAX_SECONDS;
  uint64_t ns = (uint64_t)(seconds * 1e9 + 0.5);
  char *w = out, *end = out + n;
  if (ns == 0) {
    snprintf(out, n, "0s");
  } else if (ns < 1000) {
    snprintf(out, n, "%lluns", (unsigned long long)ns);
  } else if (ns < 1000000) {
    put_frac(&w, end, ns, 3);
    snprintf(w, (size_t)(end - w), "\xc2\xb5s"); /* "µs" */
  } else if (ns < 1000000000) {
    put_frac(&w, end, ns, 6);
    snprintf(w, (size_t)(end - w), "ms");
  } else {
    uint64_t s = ns / 1000000000, frac = ns % 1000000000;
    uint64_t m = s / 60, h = m / 60;
    int k = 0;
    if (h > 0)
      k = snprintf(w, (size_t)(end - w), "%lluh%llum", (unsigned long long)h,
                   (unsigned long long)(m % 60));
    else if (m > 0)
      k = snprintf(w, (size_t)(end - w), "%llum", (unsigned long long)m);
    if (k < 0 || k >= end - w) return;
    w += k;
    put_frac(&w, end, (s % 60) * 1000000000 + frac, 9);
    snprintf(w, (size_t)(end - w), "s");
  }
}

/* ---- curl callbacks (no curl_multi_* and no Lua in here) --------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg) {
  struct grpc_op *g = arg;
  size_t n = size * nmemb;
  if (n > RESPONSE_MAX - g->rlen) {
    g->too_big = 1; /* ends the transfer with CURLE_WRITE_ERROR */
    return 0;
  }
  if (g->rlen + n > g->rcap) {
    size_t cap = g->rcap ? g->rcap * 2 : 256;
    while (cap < g->rlen + n)
      cap *= 2;
    if (cap > RESPONSE_MAX) cap = RESPONSE_MAX;
    uint8_t *d = realloc(g->rbody, cap);
    if (!d) {
      g->oom = 1;
      return 0;
    }
    g->rbody = d;
    g->rcap = cap;
  }
  memcpy(g->rbody + g->rlen, data, n);
  g->rlen += n;
  return n;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* grpc-message is percent-encoded (gRPC over HTTP/2, "Status-Message"). */
static char *percent_decode(const char *s, size_t len) {
  if (len > MESSAGE_MAX) len = MESSAGE_MAX;
  char *out = malloc(len + 1), *w = out;
  if (!out) return NULL;
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < len &&
        (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
        (lo = hexval((unsigned char)s[i + 2])) >= 0) {
      *w++ = (char)(hi << 4 | lo);
      i += 2;
    } else {
      *w++ = s[i];
    }
  }
  *w = '\0';
  return out;
}

/* The facts of the TLS connection, while it is alive (libcurl hands out
 * its SSL only then). */
static void take_facts(struct grpc_op *g) {
  struct sonde_tls_facts *f = sonde_tls_curl_facts(g->easy);
  g->facts_taken = 1;
  if (!f) return;
  sonde_tls_facts_free(g->facts);
  g->facts = f;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg) {
  struct grpc_op *g = arg;
  size_t n = size * nmemb, len = n;
  while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
    len--;
  if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
    if (g->use_tls && !g->facts_taken) take_facts(g);
    /* a new response head (after a 1xx): forget the last one's */
    g->has_status = 0;
    free(g->message);
    free(g->content_type);
    g->message = g->content_type = NULL;
    return n;
  }
  const char *colon = memchr(data, ':', len);
  if (!colon) return n;
  size_t nlen = (size_t)(colon - data);
  const char *v = colon + 1, *end = data + len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  size_t vlen = (size_t)(end - v);
  if (nlen == 11 && strncasecmp(data, "grpc-status", 11) == 0) {
    /* a decimal code; anything else is not a status (Unknown, as
     * grpc-go takes it) */
    long code = 0;
    int ok = vlen > 0 && vlen <= 9;
    for (size_t i = 0; ok && i < vlen; i++) {
      if (!isdigit((unsigned char)v[i]))
        ok = 0;
      else
        code = code * 10 + (v[i] - '0');
    }
    g->has_status = 1;
    g->status = ok ? (int)code : 2;
  } else if (nlen == 12 && strncasecmp(data, "grpc-message", 12) == 0) {
    free(g->message);
    g->message = percent_decode(v, vlen);
  } else if (nlen == 12 && strncasecmp(data, "content-type", 12) == 0) {
    free(g->content_type);
    g->content_type = strndup(v, vlen < 200 ? vlen : 200);
  }
  return n;
}

/* ---- the operation ---------------------------------------------------- */

static void grpc_release(struct sonde_op *op, int cancelled) {
  struct grpc_op *g = (struct grpc_op *)op;
  (void)cancelled;
  if (g->easy) {
    if (g->in_multi) curl_multi_remove_handle(op->loop->multi, g->easy);
    g->in_multi = 0;
    sonde_curl_owner_forget(&g->owner);
    sonde_curl_easy_put(op->loop, g->easy, 1);
  }
  g->easy = NULL;
  curl_slist_free_all(g->hdrs);
  g->hdrs = NULL;
  free(g->url);
  free(g->req);
  free(g->rbody);
  free(g->message);
  free(g->content_type);
  free(g->server_name);
  sonde_tls_facts_free(g->facts);
  g->facts = NULL;
  g->url = g->message = g->content_type = g->server_name = NULL;
  g->req = g->rbody = NULL;
}

static const struct sonde_op_vtable grpc_vt = {"grpc", grpc_release};

/* The result's output: printf'd, made safe to show. */
static void set_output(struct sonde_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_output(struct sonde_result *r, const char *fmt, ...) {
  va_list ap;
  char *s = NULL;
  va_start(ap, fmt);
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = (size_t)n;
  if (sonde_clean_text(&s, &len) != 0) {
    free(s);
    return;
  }
  free(r->output);
  r->output = s;
  r->output_len = len;
}

static void clean_error(struct sonde_result *r) {
  if (r->error && sonde_clean_text(&r->error, NULL) != 0) {
    free(r->error);
    r->error = NULL;
  }
}

/* The connection is up as gRPC sees it: TCP connected, the TLS handshake
 * done (with tls), and the server has sent something (its SETTINGS). */
static int connection_up(struct grpc_op *g) {
  if (!g->owner.tcp_connected) return 0;
  if (g->use_tls) {
    curl_off_t t = 0;
    curl_easy_getinfo(g->easy, CURLINFO_APPCONNECT_TIME_T, &t);
    if (t <= 0) return 0;
  }
  return g->owner.peer_bytes != 0; /* -1: not known, taken as yes */
}

/* A transfer that curl ended with an error. */
static void finish_curl_error(struct grpc_op *g, CURLcode code) {
  struct sonde_result *r = &g->op.res;
  char dur[64];
  sonde_go_duration(dur, sizeof dur, g->timeout);
  int up = connection_up(g);
  sonde_curl_classify(r, g->easy, code, g->errbuf, &g->owner, 0);
  if (r->status == SONDE_UNKNOWN) {
    set_output(r, "error: failed to connect service at \"%s\": %s", g->addr,
               r->error ? r->error : "error");
  } else if (code == CURLE_OPERATION_TIMEDOUT) {
    if (up) {
      r->reason = SONDE_R_TIMEOUT;
      set_output(r, "timeout: health rpc did not complete within %s", dur);
    } else {
      if (r->reason != SONDE_R_CONNECT_TIMEOUT) r->reason = SONDE_R_TIMEOUT;
      set_output(r,
                 "timeout: failed to connect service \"%s\" within %s: "
                 "context deadline exceeded",
                 g->addr, dur);
    }
  } else if (r->reason == SONDE_R_TLS) {
    /* the handshake failed, or a TLS alert came after the client's side
     * of it (a TLS 1.3 server refusing the client certificate): no
     * connection as gRPC sees it */
    set_output(r, "error: failed to connect service at \"%s\": %s", g->addr,
               r->error ? r->error : "error");
  } else if (g->owner.tcp_connected &&
             (code == CURLE_SEND_ERROR || code == CURLE_RECV_ERROR ||
              code == CURLE_GOT_NOTHING || code == CURLE_HTTP2 ||
              code == CURLE_HTTP2_STREAM || code == CURLE_PARTIAL_FILE ||
              code == CURLE_WEIRD_SERVER_REPLY)) {
    /* accepted, then closed or broken: not a gRPC server (an HTTP/1
     * server closes on the HTTP/2 preface), or one that broke the call */
    r->reason = SONDE_R_PROTOCOL;
    if (!up)
      set_output(r,
                 "error: failed to connect service at \"%s\": connection "
                 "closed before server preface received (%s)",
                 g->addr, r->error ? r->error : "error");
    else
      set_output(r, "error: health rpc probe failed: %s",
                 r->error ? r->error : "error");
  } else if (!up) {
    set_output(r, "error: failed to connect service at \"%s\": %s", g->addr,
               r->error ? r->error : "error");
  } else {
    set_output(r, "error: health rpc probe failed: %s",
               r->error ? r->error : "error");
  }
}

/* A failure decided by what the server sent: `desc` printf'd is the
 * error; the output is the kubelet's "error: health rpc probe failed:
 * rpc error: code = CODE desc = DESC". */
static void rpc_failure(struct grpc_op *g, sonde_reason reason, int code,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void rpc_failure(struct grpc_op *g, sonde_reason reason, int code,
                        const char *fmt, ...) {
  struct sonde_result *r = &g->op.res;
  va_list ap;
  char *desc = NULL;
  va_start(ap, fmt);
  if (vasprintf(&desc, fmt, ap) < 0) desc = NULL;
  va_end(ap);
  r->status = SONDE_FAILURE;
  r->reason = reason;
  const char *name = sonde_grpc_code_name(code);
  char num[16];
  if (!name) {
    snprintf(num, sizeof num, "Code(%d)", code);
    name = num;
  }
  sonde_result_set_error(r, "rpc error: code = %s desc = %s", name,
                         desc ? desc : "");
  clean_error(r);
  set_output(r, "error: health rpc probe failed: %s",
             r->error ? r->error : "error");
  free(desc);
}

/* The call completed at the HTTP/2 level: decide on what it carried. */
static void finish_answer(struct grpc_op *g) {
  struct sonde_result *r = &g->op.res;
  long http = 0, ver = 0;
  curl_easy_getinfo(g->easy, CURLINFO_RESPONSE_CODE, &http);
  curl_easy_getinfo(g->easy, CURLINFO_HTTP_VERSION, &ver);
  if (ver != CURL_HTTP_VERSION_2_0) {
    rpc_failure(g, SONDE_R_PROTOCOL, 14,
                "the server does not speak HTTP/2 (it answered HTTP/1.x "
                "with status %ld)",
                http);
    return;
  }
  if (!g->has_status) {
    if (http != 200)
      rpc_failure(g, SONDE_R_PROTOCOL, http == 404 ? 12 : 2,
                  "unexpected HTTP status code received from server: %ld; "
                  "no grpc-status",
                  http);
    else if (!g->content_type ||
             strncasecmp(g->content_type, "application/grpc", 16) != 0)
      rpc_failure(g, SONDE_R_PROTOCOL, 2,
                  "unexpected content-type \"%s\"; no grpc-status",
                  g->content_type ? g->content_type : "");
    else
      rpc_failure(g, SONDE_R_PROTOCOL, 13,
                  "server closed the stream without sending trailers");
    return;
  }
  r->grpc_status = g->status;
  r->has_grpc_status = 1;
  const char *msg = g->message ? g->message : "";
  if (g->status == 12) {
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_GRPC_STATUS;
    sonde_result_set_error(r, "rpc error: code = Unimplemented desc = %s", msg);
    clean_error(r);
    set_output(r,
               "error: this server does not implement the grpc health "
               "protocol (grpc.health.v1.Health): %s",
               msg);
    return;
  }
  if (g->status == 4) {
    char dur[64];
    sonde_go_duration(dur, sizeof dur, g->timeout);
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_TIMEOUT;
    sonde_result_set_error(r, "rpc error: code = DeadlineExceeded desc = %s",
                           msg);
    clean_error(r);
    set_output(r, "timeout: health rpc did not complete within %s", dur);
    return;
  }
  if (g->status != 0) {
    rpc_failure(g, SONDE_R_GRPC_STATUS, g->status, "%s", msg);
    return;
  }
  /* OK: exactly one uncompressed message */
  const uint8_t *p = g->rbody;
  size_t n = g->rlen;
  if (n == 0) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13, "no response message");
    return;
  }
  if (n < 5) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13, "truncated message frame");
    return;
  }
  if (p[0] != 0) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13,
                p[0] == 1 ? "compressed response message, but no "
                            "compression was asked for"
                          : "invalid compressed flag %u",
                p[0]);
    return;
  }
  uint64_t mlen =
      (uint64_t)p[1] << 24 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 8 | p[4];
  if (mlen > n - 5) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13,
                "truncated message: %llu bytes announced, %zu sent",
                (unsigned long long)mlen, n - 5);
    return;
  }
  if (mlen < n - 5) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13,
                "more than one response message to a unary call");
    return;
  }
  uint64_t v = 0;
  int found = 0;
  const char *err = sonde_pb_decode_varint(p + 5, (size_t)mlen, 1, &v, &found);
  if (err) {
    rpc_failure(g, SONDE_R_PROTOCOL, 13,
                "grpc: failed to unmarshal the received message: %s", err);
    return;
  }
  int serving = (int)(int32_t)(uint32_t)v; /* an enum is an int32 */
  r->serving_status = serving;
  r->has_serving_status = 1;
  if (serving == 1) {
    r->status = SONDE_SUCCESS;
    r->reason = SONDE_R_OK;
    set_output(r, "service healthy");
    return;
  }
  const char *name = sonde_grpc_serving_name(serving);
  r->status = SONDE_FAILURE;
  r->reason = SONDE_R_GRPC_STATUS;
  if (name)
    set_output(r, "service unhealthy (responded with \"%s\")", name);
  else
    set_output(r, "service unhealthy (responded with \"%d\")", serving);
}

static void on_done(struct sonde_curl_owner *owner, CURLcode code) {
  struct grpc_op *g =
      (struct grpc_op *)(void *)((char *)owner -
                                 offsetof(struct grpc_op, owner));
  struct sonde_result *r = &g->op.res;
  g->in_multi = 0;
  sonde_curl_owner_look(&g->owner);
  /* (a socket reset by the peer no longer has a peer name when closed:
   * curl's connect time tells) */
  curl_off_t ct = 0;
  curl_easy_getinfo(g->easy, CURLINFO_CONNECT_TIME_T, &ct);
  if (ct > 0) g->owner.tcp_connected = 1;
  char *ip = NULL;
  long port = 0;
  curl_easy_getinfo(g->easy, CURLINFO_PRIMARY_IP, &ip);
  curl_easy_getinfo(g->easy, CURLINFO_PRIMARY_PORT, &port);
  sonde_format_addr(r->remote_addr, sizeof r->remote_addr, ip, port);
  r->ip_protocol = g->owner.ip_protocol;
  if (code == CURLE_WRITE_ERROR && g->oom) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    r->code = (int)code;
    sonde_result_set_error(r, "out of memory for the response");
    set_output(r, "error: health rpc probe failed: %s",
               r->error ? r->error : "out of memory");
  } else if (code == CURLE_WRITE_ERROR && g->too_big) {
    rpc_failure(g, SONDE_R_PROTOCOL, 8,
                "response larger than %d bytes for a health check",
                RESPONSE_MAX);
  } else if (code != CURLE_OK) {
    finish_curl_error(g, code);
  } else {
    finish_answer(g);
  }
  /* the TLS connection's facts, whatever the outcome (a handshake that
   * failed has none) */
  if (g->facts) {
    sonde_tls_facts_free(r->tls);
    r->tls = g->facts;
    g->facts = NULL;
  }
  /* the certificates' expiry, once an answer came: a failure threshold
   * overrides it, a warning threshold only a success (as for HTTP);
   * grpc_status and serving_status stay what came */
  if (code == CURLE_OK)
    sonde_tls_judge(r->tls, &g->tls, (double)time(NULL), r);
  sonde_op_complete(&g->op);
}

/* The request: the gRPC frame around HealthCheckRequest{service}. */
static int build_request(struct grpc_op *g, const char *service) {
  size_t mlen = 0;
  uint8_t *m = sonde_pb_encode_string(1, service, strlen(service), &mlen);
  if (!m) return -1;
  g->req = malloc(5 + mlen);
  if (!g->req) {
    free(m);
    return -1;
  }
  g->req[0] = 0;
  g->req[1] = (uint8_t)(mlen >> 24);
  g->req[2] = (uint8_t)(mlen >> 16);
  g->req[3] = (uint8_t)(mlen >> 8);
  g->req[4] = (uint8_t)mlen;
  memcpy(g->req + 5, m, mlen);
  g->req_len = 5 + mlen;
  free(m);
  return 0;
}

/* grpc-timeout: at most 8 digits and a unit (gRPC over HTTP/2). */
static void grpc_timeout(char *out, size_t n, double seconds) {
  double ms = seconds * 1000;
  if (ms < 1) ms = 1;
  if (ms < 1e8)
    snprintf(out, n, "grpc-timeout: %lldm", (long long)ms);
  else
    snprintf(out, n, "grpc-timeout: %lldS",
             (long long)(seconds < 1e8 ? seconds : 99999999));
}

static int build_headers(struct grpc_op *g, const struct sonde_grpc_opts *o) {
  char line[600];
  struct curl_slist *l = NULL, *t;
  const char *ua = o->user_agent ? o->user_agent : "sonde/" SONDE_VERSION;
  const char *fixed[] = {"Content-Type: application/grpc", "TE: trailers",
                         "Accept:", "Expect:", NULL};
  for (int i = 0; fixed[i]; i++) {
    if (!(t = curl_slist_append(l, fixed[i]))) goto oom;
    l = t;
  }
  grpc_timeout(line, sizeof line, o->timeout);
  if (!(t = curl_slist_append(l, line))) goto oom;
  l = t;
  if (*ua && strlen(ua) < 500 && !strpbrk(ua, "\r\n")) {
    snprintf(line, sizeof line, "User-Agent: %s", ua);
    if (!(t = curl_slist_append(l, line))) goto oom;
    l = t;
  }
  g->hdrs = l;
  return 0;
oom:
  curl_slist_free_all(l);
  return -1;
}

uint64_t sonde_grpc_start(struct sonde_loop *loop,
                          const struct sonde_grpc_opts *o, sonde_result_cb cb,
                          void *arg) {
  struct grpc_op *g = calloc(1, sizeof *g);
  if (!g) return 0;
  g->op.vt = &grpc_vt;
  g->op.loop = loop;
  g->owner.done = on_done;
  g->timeout = o->timeout;
  g->use_tls = o->use_tls;
  if (o->use_tls) {
    g->tls = o->tls;
    g->tls.ca_file = g->tls.cert_file = g->tls.key_file = NULL;
    g->tls.server_name = NULL;
    if (o->tls.server_name && *o->tls.server_name)
      g->tls.server_name = g->server_name = strdup(o->tls.server_name);
  }
  const char *host = o->host ? o->host : "127.0.0.1";
  sonde_format_addr(g->addr, sizeof g->addr, host, o->port);
  g->url = sonde_http_format_url(o->use_tls ? "https" : "http", host, o->port,
                                 SONDE_GRPC_HEALTH_PATH);
  g->easy = sonde_curl_easy_get(loop);
  if (!g->url || !g->easy || (g->tls.server_name && !g->server_name) ||
      build_request(g, o->service ? o->service : "") || build_headers(g, o)) {
    grpc_release(&g->op, 0);
    free(g);
    return 0;
  }
  uint64_t id = sonde_op_start(loop, &g->op, cb, arg);
  struct sonde_result *r = &g->op.res;
  double left = o->timeout;
  if (!(left > 0)) left = 0.001;
  if (left > SONDE_MAX_SECONDS) left = SONDE_MAX_SECONDS;
  long ms = (long)(left * 1000);
  if (ms < 1) ms = 1;
  CURL *e = g->easy;
  sonde_curl_setup(e, &g->owner, loop);
  sonde_curl_owner_reset(&g->owner);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, g->errbuf);
  curl_easy_setopt(e, CURLOPT_URL, g->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   o->use_tls ? (long)CURL_HTTP_VERSION_2TLS
                          : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, g->hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)g->req_len);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, g->req);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, g);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, g);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms);
  if (o->use_tls) {
    struct sonde_tls_opts tls = o->tls;
    tls.server_name = g->server_name; /* ours: it must outlive the call */
    CURLcode tc = sonde_tls_curl_apply(e, &tls);
    if (tc != CURLE_OK) { /* libcurl refused a TLS option */
      r->status = SONDE_FAILURE;
      r->reason = SONDE_R_CONFIG;
      r->code = (int)tc;
      sonde_result_set_error(r, "tls options: %s", curl_easy_strerror(tc));
      set_output(r, "error: %s", r->error ? r->error : "tls options");
      sonde_op_complete_soon(&g->op);
      return id;
    }
  }
  if (curl_multi_add_handle(loop->multi, e) != CURLM_OK) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    sonde_result_set_error(r, "curl_multi_add_handle failed");
    set_output(r, "error: %s", r->error ? r->error : "out of memory");
    sonde_op_complete_soon(&g->op);
    return id;
  }
  g->in_multi = 1;
  return id;
}
