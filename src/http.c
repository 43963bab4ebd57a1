/*
 * http.c - the HTTP prober (include/sonde/http.h).
 *
 * One easy handle per probe, reused for each redirect hop, taken from the
 * loop's pool of idle handles and given back to it when the probe ends
 * (internal.h, sonde_curl_easy_put: nothing of one probe stays set for the
 * next, and each makes its own connection).  Redirects are
 * followed here, not by curl (FOLLOWLOCATION is off), so that the redirect
 * policy (same host, same origin or none) is applied before any request
 * leaves for the next hop.
 *
 * Text that reaches the result from the peer or from curl (error messages,
 * redirect locations, the URL) goes through sonde_clean_text: passwords in
 * URLs masked, control bytes replaced.  Response headers and the body are
 * data and are returned as they came.
 *
 * Ownership: struct http_op owns its easy handle, header list (unless it
 * is the loop's shared list: see build_headers), copies of the options,
 * and the body/header buffers of the current response.  All are released
 * in http_release, before the callback runs.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "internal.h"
#include "sonde/http.h"

#ifndef SONDE_VERSION
#define SONDE_VERSION "0.1.0"
#endif

#define MAX_RESP_HEADERS 200

struct http_op {
  struct sonde_op op;
  struct sonde_curl_owner owner;
  CURL *easy;
  struct curl_slist *hdrs;
  int shared_hdrs;           /* hdrs is loop->http_hdrs: not ours to free */
  int user_expect;           /* the user sent an Expect header: the easy
                                handle is not pooled (internal.h) */
  long status;               /* response code of the current hop */
  char errbuf[CURL_ERROR_SIZE];
  char *url;                 /* current hop's URL */
  char *orig_scheme;         /* the original URL's parts, taken at the */
  char *orig_host;           /* first redirect (NULL before) */
  long orig_port;
  char *method;
  char *body;
  size_t body_len;
  double deadline;           /* monotonic */
  size_t max_body;
  int max_redirects;
  int follow;                /* SONDE_FOLLOW_* */
  int redirects;
  int capped;                /* body cap reached on this hop */
  int oom;                   /* a body buffer could not grow */
  int in_multi;
  char *rbody;               /* response body of the current hop */
  size_t rbody_len, rbody_cap; /* grows up to max_body (+1 for a NUL) */
  size_t rbody_seen;         /* body bytes curl delivered on this hop */
  char *cut_loc;             /* a capped hop's Location, resolved against
                                its URL (curl_free) */
  struct sonde_header *rh;   /* response headers of the current hop */
  size_t nrh;
  struct sonde_tls_opts tls; /* expiry thresholds (the strings are not
                                kept: libcurl copies them) */
  char *server_name;         /* tls.server_name, for the SSL_CTX callback */
  struct sonde_tls_facts *facts; /* the current hop's TLS connection */
  int facts_taken;           /* looked for on this hop already */
  const struct sonde_http_expect *expect; /* a copy in the op's block */
};

/* Where the copy of the expectations starts in the op's block. */
#define EXPECT_AT (((sizeof(struct http_op) + 15) / 16) * 16)

void sonde_http_opts_init(struct sonde_http_opts *o) {
  memset(o, 0, sizeof *o);
  o->method = "GET";
  o->user_agent = "sonde/" SONDE_VERSION;
  o->timeout = 1;
  o->max_body = SONDE_MAX_BODY_DEFAULT;
  o->max_redirects = SONDE_MAX_REDIRECTS;
  o->follow_redirects = SONDE_FOLLOW_SAME_HOST;
}

int sonde_http_valid_name(const char *name) {
  if (!*name) return 0;
  for (const char *p = name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '-') return 0;
  return 1;
}

void sonde_http_canonical_name(char *name) {
  int upper = 1;
  for (char *p = name; *p; p++) {
    *p = (char)(upper ? toupper((unsigned char)*p) : tolower((unsigned char)*p));
    upper = *p == '-';
  }
}

/* ---- URL formatting (kubelet formatURL) -------------------------------- */

static int is_hex(int c) { return isxdigit((unsigned char)c); }

static int needs_escape(const unsigned char *s) {
  unsigned c = *s;
  if (c <= 0x20 || c >= 0x7f) return 1;
  if (c == '%') return !(is_hex(s[1]) && is_hex(s[2]));
  return strchr("\"<>\\^`{|}", (int)c) != NULL;
}

char *sonde_http_format_url(const char *scheme, const char *host, long port,
                            const char *path) {
  const char *p = path ? path : "";
  size_t plen = strcspn(p, "#");            /* the fragment is never sent */
  /* A scheme ("http://evil/x") or authority ("//other/x") in the path is
   * parsed away and replaced by ours, as Go's url.Parse + overwrite does. */
  size_t i = 0;
  while (i < plen && (isalnum((unsigned char)p[i]) || strchr("+-.", p[i])))
    i++;
  if (i > 0 && isalpha((unsigned char)p[0]) && i + 2 < plen + 1 &&
      strncmp(p + i, "://", 3) == 0 && i + 3 <= plen) {
    p += i + 1;
    plen -= i + 1;
  }
  if (plen >= 2 && p[0] == '/' && p[1] == '/') {
    size_t a = 2 + strcspn(p + 2, "/?");
    if (a > plen) a = plen;
    p += a;
    plen -= a;
  }
  int add_slash = plen > 0 && p[0] != '/';
  int v6 = strchr(host, ':') != NULL;
  size_t cap = strlen(scheme) + strlen(host) + plen * 3 + 32;
  char *out = malloc(cap);
  if (!out) return NULL;
  int n = snprintf(out, cap, "%s://%s%s%s:%ld%s", scheme, v6 ? "[" : "",
                   host, v6 ? "]" : "", port, add_slash ? "/" : "");
  char *w = out + n;
  for (size_t k = 0; k < plen; k++) {
    const unsigned char *c = (const unsigned char *)p + k;
    if (needs_escape(c)) {
      w += sprintf(w, "%%%02X", *c);
    } else {
      *w++ = (char)*c;
    }
  }
  *w = '\0';
  return out;
}

/* ---- curl callbacks (no curl_multi_* and no Lua in here) --------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg) {
  struct http_op *h = arg;
  size_t n = size * nmemb;
  h->rbody_seen += n;
  size_t room = h->max_body - h->rbody_len;
  size_t keep = n < room ? n : room;
  if (h->rbody_len + keep + 1 > h->rbody_cap) {
    size_t cap = h->rbody_cap ? h->rbody_cap * 2 : 4096;
    if (cap < h->rbody_len + keep + 1) cap = h->rbody_len + keep + 1;
    if (cap > h->max_body + 1) cap = h->max_body + 1;
    char *d = realloc(h->rbody, cap);
    if (!d) {                  /* out of memory: ends with WRITE_ERROR */
      h->oom = 1;
      return 0;
    }
    h->rbody = d;
    h->rbody_cap = cap;
  }
  if (keep) {
    memcpy(h->rbody + h->rbody_len, data, keep);
    h->rbody_len += keep;
  }
  if (keep == n) return n;
  /* kubelet: reaching the cap is not an error.  Bytes beyond it arrived:
   * stop the transfer here (curl ends it with CURLE_WRITE_ERROR, which
   * on_done forgives). */
  h->capped = 1;
  return 0;
}

static void free_resp_headers(struct http_op *h) {
  for (size_t i = 0; i < h->nrh; i++) {
    free(h->rh[i].name);
    free(h->rh[i].value);
  }
  free(h->rh);
  h->rh = NULL;
  h->nrh = 0;
}

/* The facts of the hop's TLS connection, while it is alive (libcurl
 * hands out its SSL only then). */
static void take_facts(struct http_op *h) {
  struct sonde_tls_facts *f = sonde_tls_curl_facts(h->easy);
  h->facts_taken = 1;
  if (!f) return;
  sonde_tls_facts_free(h->facts);
  h->facts = f;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg) {
  struct http_op *h = arg;
  size_t n = size * nmemb, len = n;
  while (len && (data[len - 1] == '\n' || data[len - 1] == '\r')) len--;
  if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
    free_resp_headers(h);    /* a new response (1xx before, or this hop) */
    if (!h->facts_taken) take_facts(h);
    return n;
  }
  const char *colon = memchr(data, ':', len);
  if (!colon || h->nrh >= MAX_RESP_HEADERS) return n;
  struct sonde_header *rh = realloc(h->rh, (h->nrh + 1) * sizeof *rh);
  if (!rh) return n;
  h->rh = rh;
  const char *v = colon + 1, *end = data + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
  char *name = strndup(data, (size_t)(colon - data));
  char *value = strndup(v, (size_t)(end - v));
  if (!name || !value) {
    free(name);
    free(value);
    return n;
  }
  rh[h->nrh].name = name;
  rh[h->nrh].value = value;
  h->nrh++;
  return n;
}

/* ---- the operation -------------------------------------------------------- */

static void http_release(struct sonde_op *op, int cancelled) {
  struct http_op *h = (struct http_op *)op;
  (void)cancelled;
  if (h->easy) {
    if (h->in_multi) curl_multi_remove_handle(op->loop->multi, h->easy);
    h->in_multi = 0;
    sonde_curl_owner_forget(&h->owner);
    sonde_curl_easy_put(op->loop, h->easy, !h->user_expect);
  }
  h->easy = NULL;
  if (!h->shared_hdrs) curl_slist_free_all(h->hdrs);
  h->hdrs = NULL;
  free(h->url);
  curl_free(h->cut_loc);
  h->cut_loc = NULL;
  free(h->orig_scheme);
  free(h->orig_host);
  free(h->method);
  free(h->body);
  free(h->rbody);
  free(h->server_name);
  sonde_tls_facts_free(h->facts);
  h->facts = NULL;
  h->server_name = NULL;
  free_resp_headers(h);
  h->url = h->orig_scheme = h->orig_host = h->method = h->body = NULL;
  h->rbody = NULL;
}

static const struct sonde_op_vtable http_vt = {"http", http_release};

/* Scheme and hostname (malloc'd) and port (the scheme's default when none
 * is given) of an absolute URL.  Returns 0, or -1 when it does not parse or
 * out of memory (*scheme and *host are then NULL). */
static int url_origin(const char *url, char **scheme, char **host,
                      long *port) {
  CURLU *u = curl_url();
  char *sc = NULL, *ho = NULL, *po = NULL;
  int rc = -1;
  *scheme = *host = NULL;
  if (!u) return -1;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &sc, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &ho, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &po, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    *scheme = strdup(sc);
    *host = strdup(ho);
    *port = strtol(po, NULL, 10);
    if (*scheme && *host) {
      rc = 0;
    } else {
      free(*scheme);
      free(*host);
      *scheme = *host = NULL;
    }
  }
  curl_free(sc);
  curl_free(ho);
  curl_free(po);
  curl_url_cleanup(u);
  return rc;
}

/* The result's URL: passwords masked, made printable. */
static void set_result_url(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  r->url = h->url;
  h->url = NULL;
  if (r->url && sonde_clean_text(&r->url, NULL) != 0) {
    free(r->url);
    r->url = NULL;
  }
}

/* Move the current hop's TLS facts into the result (the last hop's win). */
static void take_tls(struct http_op *h) {
  if (!h->facts) return;
  sonde_tls_facts_free(h->op.res.tls);
  h->op.res.tls = h->facts;
  h->facts = NULL;
}

/* Move the response of the current hop into the result. */
static void take_response(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  r->http_status = h->status;
  if (!h->rbody) h->rbody = calloc(1, 1);
  else if (h->rbody_cap > h->rbody_len + 1) {
    /* a result may be kept (a probe's last): no room left unused */
    char *d = realloc(h->rbody, h->rbody_len + 1);
    if (d) h->rbody = d;
  }
  r->body = h->rbody;
  r->body_len = h->rbody ? h->rbody_len : 0;
  if (r->body) r->body[r->body_len] = '\0';
  h->rbody = NULL;
  h->rbody_len = h->rbody_cap = 0;
  r->headers = h->rh;
  r->nheaders = h->nrh;
  h->rh = NULL;
  h->nrh = 0;
  r->truncated = h->capped;
  take_tls(h);
}

static void set_addr(struct http_op *h) {
  char *ip = NULL;
  long port = 0;
  curl_easy_getinfo(h->easy, CURLINFO_PRIMARY_IP, &ip);
  curl_easy_getinfo(h->easy, CURLINFO_PRIMARY_PORT, &port);
  sonde_format_addr(h->op.res.remote_addr, sizeof h->op.res.remote_addr, ip,
                    port);
  h->op.res.ip_protocol = h->owner.ip_protocol;
}

/* Add the hop's timings to the result's phases (curl's times count from
 * the hop's start; a phase curl did not reach adds nothing), and take the
 * hop's HTTP version and Content-Length (the last hop's stay). */
static void add_hop_facts(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  curl_off_t dns = 0, con = 0, app = 0, first = 0, total = 0, len = -1;
  long ver = 0;
  curl_easy_getinfo(h->easy, CURLINFO_NAMELOOKUP_TIME_T, &dns);
  curl_easy_getinfo(h->easy, CURLINFO_CONNECT_TIME_T, &con);
  curl_easy_getinfo(h->easy, CURLINFO_APPCONNECT_TIME_T, &app);
  curl_easy_getinfo(h->easy, CURLINFO_STARTTRANSFER_TIME_T, &first);
  curl_easy_getinfo(h->easy, CURLINFO_TOTAL_TIME_T, &total);
  r->phases.resolve += (double)dns / 1e6;
  if (con >= dns && con > 0) r->phases.connect += (double)(con - dns) / 1e6;
  if (app >= dns && app > 0) r->phases.tls += (double)(app - dns) / 1e6;
  curl_off_t ready = app > con ? app : con;
  if (first >= ready && first > 0) {
    r->phases.processing += (double)(first - ready) / 1e6;
    if (total >= first) r->phases.transfer += (double)(total - first) / 1e6;
  }
  curl_easy_getinfo(h->easy, CURLINFO_HTTP_VERSION, &ver);
  r->http_version = ver == CURL_HTTP_VERSION_1_0   ? 10
                    : ver == CURL_HTTP_VERSION_1_1 ? 11
                    : ver == CURL_HTTP_VERSION_2_0 ? 20
                    : ver == CURL_HTTP_VERSION_3   ? 30
                                                   : 0;
  curl_easy_getinfo(h->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
  r->content_length = ver ? (int64_t)len : 0;
  r->body_size = h->rbody_seen;
}

static void finish_status(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  char msg[64];
  take_response(h);
  r->redirects = h->redirects;
  set_result_url(h);
  if (r->http_status >= 200 && r->http_status < 300) {
    r->status = SONDE_SUCCESS;
    r->reason = SONDE_R_OK;
    sonde_result_set_output(r, r->body, r->body_len);
  } else if (r->http_status >= 300 && r->http_status < 400) {
    static const char pre[] = "Probe terminated redirects, Response body: ";
    r->status = SONDE_WARNING;
    r->reason = SONDE_R_REDIRECT;
    char *o = malloc(sizeof pre + r->body_len);
    if (o) {
      memcpy(o, pre, sizeof pre - 1);
      memcpy(o + sizeof pre - 1, r->body, r->body_len);
      o[sizeof pre - 1 + r->body_len] = '\0';
      r->output = o;
      r->output_len = sizeof pre - 1 + r->body_len;
    }
  } else {
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_HTTP_STATUS;
    snprintf(msg, sizeof msg, "HTTP probe failed with statuscode: %ld",
             r->http_status);
    sonde_result_set_output(r, msg, strlen(msg));
  }
  if (h->expect) {
    r->duration = sonde_now() - h->op.start;
    sonde_http_expect_judge(h->expect, r);
  }
  /* the certificates' expiry last: a failure threshold overrides any
   * answer, a warning one only a success (sonde_tls_judge) */
  sonde_tls_judge(r->tls, &h->tls, (double)time(NULL), r);
  sonde_op_complete(&h->op);
}

/* Bytes of the URL a failure's message shows; the rest is cut ("...").  A
 * target's redirect can make the URL as long as curl's header limit
 * (100 KB), and the message goes into every log line of the run. */
#define SHOWN_URL_MAX 2048

/* A failure with a message: output = `<Method> "<url>": <err>` (Go's
 * client error shape), the URL's password masked and cut at SHOWN_URL_MAX
 * bytes (`url` keeps it whole). */
static void finish_error(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  const char *m = h->method ? h->method : "GET";
  take_tls(h);               /* a TLS connection made before it failed */
  r->redirects = h->redirects;
  if (r->error && sonde_clean_text(&r->error, NULL) != 0) {
    free(r->error);
    r->error = NULL;
  }
  set_result_url(h);
  char *out = NULL;
  const char *url = r->url ? r->url : "";
  size_t ulen = strlen(url);
  int shown = ulen > SHOWN_URL_MAX ? SHOWN_URL_MAX : (int)ulen;
  int n = asprintf(&out, "%c%s \"%.*s%s\": %s", m[0], m[0] ? m + 1 : "",
                   shown, url, ulen > SHOWN_URL_MAX ? "..." : "",
                   r->error ? r->error : "error");
  if (n >= 0) {
    for (int i = 1; out[i] && out[i] != ' '; i++)
      out[i] = (char)tolower((unsigned char)out[i]);
    free(r->output);
    r->output = out;
    r->output_len = (size_t)n;
  }
  sonde_op_complete(&h->op);
}

static int start_hop(struct http_op *h);

/* The Location of a hop whose body reached the cap, resolved against the
 * hop's URL, or NULL.  (curl computes the redirect URL only for a
 * transfer that completed; the cap ends it early.  Go's client, the
 * kubelet's, follows a redirect whatever its body.) */
static const char *capped_location(struct http_op *h) {
  const char *v = NULL;
  for (size_t i = 0; i < h->nrh; i++)
    if (strcasecmp(h->rh[i].name, "Location") == 0) v = h->rh[i].value;
  if (!v || !*v) return NULL;
  CURLU *u = curl_url();
  if (!u) return NULL;
  curl_free(h->cut_loc);
  h->cut_loc = NULL;
  if (curl_url_set(u, CURLUPART_URL, h->url, 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_URL, v, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_URL, &h->cut_loc, 0) != CURLUE_OK)
    h->cut_loc = NULL;
  curl_url_cleanup(u);
  return h->cut_loc;
}

static void on_done(struct sonde_curl_owner *owner, CURLcode code) {
  struct http_op *h = (struct http_op *)(void *)((char *)owner -
                                                offsetof(struct http_op, owner));
  struct sonde_result *r = &h->op.res;
  h->in_multi = 0;
  set_addr(h);
  add_hop_facts(h);
  if (code == CURLE_WRITE_ERROR && h->capped) code = CURLE_OK;
  if (code == CURLE_WRITE_ERROR && h->oom) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    r->code = (int)code;
    sonde_result_set_error(r, "out of memory for the response body");
    finish_error(h);
    return;
  }
  if (code != CURLE_OK) {
    sonde_curl_classify(r, h->easy, code, h->errbuf, &h->owner, 0);
    finish_error(h);
    return;
  }
  long status = 0;
  char *loc = NULL;
  curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
  h->status = status;
  curl_easy_getinfo(h->easy, CURLINFO_REDIRECT_URL, &loc);
  if (!loc && h->capped && status >= 300 && status < 400)
    loc = (char *)(uintptr_t)capped_location(h);
  int is_redirect = (status == 301 || status == 302 || status == 303 ||
                     status == 307 || status == 308) && loc && *loc;
  if (!is_redirect) {
    finish_status(h);
    return;
  }
  if (h->follow == SONDE_FOLLOW_NONE) {
    finish_status(h);         /* the 3xx is the final response */
    return;
  }
  if (!h->orig_host &&        /* first redirect: h->url is the original */
      url_origin(h->url, &h->orig_scheme, &h->orig_host, &h->orig_port) != 0)
    h->orig_host = NULL;
  char *scheme = NULL, *host = NULL;
  long port = 0;
  int same = h->orig_host && url_origin(loc, &scheme, &host, &port) == 0 &&
             strcmp(host, h->orig_host) == 0;
  if (same && h->follow == SONDE_FOLLOW_SAME_ORIGIN)
    same = strcasecmp(scheme, h->orig_scheme) == 0 && port == h->orig_port;
  free(scheme);
  free(host);
  if (!same) {
    /* kubelet: a redirect to another hostname is not followed; the 3xx
     * itself is the final response (a warning).  Same origin: nor one to
     * another scheme or port. */
    finish_status(h);
    return;
  }
  if (strncasecmp(loc, "http://", 7) != 0 &&
      strncasecmp(loc, "https://", 8) != 0) {
    /* Go's client refuses such a hop: an error, so a failure */
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_REDIRECT;
    sonde_result_set_error(r, "unsupported protocol scheme in redirect to "
                           "%.200s", loc);
    take_response(h);
    finish_error(h);
    return;
  }
  /* Go's client (kubelet): with 10 requests made, a further redirect is
   * an error, "stopped after 10 redirects". */
  if (h->redirects + 1 >= h->max_redirects) {
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_REDIRECT;
    sonde_result_set_error(r, "stopped after %d redirects", h->max_redirects);
    take_response(h);
    finish_error(h);
    return;
  }
  char *next = strdup(loc);
  if (!next) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    finish_error(h);
    return;
  }
  free(h->url);
  h->url = next;
  h->redirects++;
  /* Go's client: 301/302/303 turn a non-GET/HEAD request into GET without
   * a body; 307/308 keep method and body. */
  if (status <= 303 && strcmp(h->method, "GET") != 0 &&
      strcmp(h->method, "HEAD") != 0) {
    free(h->method);
    h->method = strdup("GET");
    free(h->body);
    h->body = NULL;
    h->body_len = 0;
    curl_easy_setopt(h->easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h->easy, CURLOPT_CUSTOMREQUEST, NULL);
  }
  if (start_hop(h) != 0) finish_error(h);
}

/* (Re)start the transfer for h->url with what is left of the deadline.
 * Returns 0, or -1 with the result's reason/error set. */
static int start_hop(struct http_op *h) {
  struct sonde_result *r = &h->op.res;
  double left = h->deadline - sonde_now();
  if (left <= 0) {
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_TIMEOUT;
    sonde_result_set_error(r, "timeout after redirect");
    return -1;
  }
  if (left > SONDE_MAX_SECONDS) left = SONDE_MAX_SECONDS;
  long ms = (long)(left * 1000);
  if (ms < 1) ms = 1;
  h->capped = 0;
  h->oom = 0;
  h->facts_taken = 0;
  sonde_tls_facts_free(h->facts);
  h->facts = NULL;
  h->rbody_len = 0;
  h->rbody_seen = 0;
  h->errbuf[0] = '\0';
  sonde_curl_owner_reset(&h->owner);
  free_resp_headers(h);
  curl_easy_setopt(h->easy, CURLOPT_URL, h->url);
  curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(h->easy, CURLOPT_CONNECTTIMEOUT_MS, ms);
  if (curl_multi_add_handle(h->op.loop->multi, h->easy) != CURLM_OK) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    sonde_result_set_error(r, "curl_multi_add_handle failed");
    return -1;
  }
  h->in_multi = 1;
  return 0;
}

/* First value of header `name` (canonical) among the user's, or NULL. */
static const struct sonde_header *find_header(const struct sonde_http_opts *o,
                                              const char *name) {
  for (size_t i = 0; i < o->nheaders; i++)
    if (strcasecmp(o->headers[i].name, name) == 0) return &o->headers[i];
  return NULL;
}

static int bad_value(const char *v) { return strpbrk(v, "\r\n") != NULL; }

/* Append the line a + b + c to *l (curl_slist_append copies it).  Returns
 * 0, or -1 when out of memory (*l unchanged).  (No printf: this runs for
 * every header of every probe run.) */
static int append(struct curl_slist **l, const char *a, const char *b,
                  const char *c) {
  size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
  char small[256], *line = small;
  if (la + lb + lc >= sizeof small && !(line = malloc(la + lb + lc + 1)))
    return -1;
  memcpy(line, a, la);
  memcpy(line + la, b, lb);
  memcpy(line + la + lb, c, lc + 1);
  struct curl_slist *t = curl_slist_append(*l, line);
  if (line != small) free(line);
  if (!t) return -1;
  *l = t;
  return 0;
}

void sonde_http_loop_free(struct sonde_loop *loop) {
  curl_slist_free_all(loop->http_hdrs);
  free(loop->http_hdrs_ua);
  loop->http_hdrs = NULL;
  loop->http_hdrs_ua = NULL;
}

/* Build the request header list (kubelet rules, see sonde/http.h).
 * A probe with no header nor body of its own gets the same list as every
 * other such probe with its User-Agent: the first one's is kept by the loop
 * (loop->http_hdrs, for that User-Agent) and shared, libcurl only reads it.
 * Returns 0, or -1 (a bad value: the result is set) or -2 (out of
 * memory). */
static int build_headers(struct http_op *h, const struct sonde_http_opts *o) {
  struct sonde_result *r = &h->op.res;
  struct sonde_loop *loop = h->op.loop;
  const char *dua = o->user_agent ? o->user_agent : "";
  int plain = o->nheaders == 0 && !o->body;
  if (plain && loop->http_hdrs && strcmp(loop->http_hdrs_ua, dua) == 0) {
    h->hdrs = loop->http_hdrs;
    h->shared_hdrs = 1;
    return 0;
  }
  h->user_expect = find_header(o, "Expect") != NULL;
  const struct sonde_header *ua = find_header(o, "User-Agent");
  const struct sonde_header *acc = find_header(o, "Accept");
  const struct sonde_header *hosth = find_header(o, "Host");
  int drop_accept = acc && acc->value[0] == '\0';
  struct curl_slist *l = NULL;
  int err = 0;
  for (size_t i = 0; i < o->nheaders && !err; i++) {
    const struct sonde_header *hd = &o->headers[i];
    if (bad_value(hd->value)) {
      r->status = SONDE_FAILURE;
      r->reason = SONDE_R_CONFIG;
      sonde_result_set_error(r, "invalid value for header %s: contains CR "
                             "or LF", hd->name);
      curl_slist_free_all(l);
      return -1;
    }
    if (strcasecmp(hd->name, "Accept") == 0 && drop_accept) continue;
    if (strcasecmp(hd->name, "Host") == 0 &&
        (hd != hosth || hd->value[0] == '\0'))
      continue;                       /* only the first Host counts */
    if (strcasecmp(hd->name, "User-Agent") == 0 &&
        (hd != ua || hd->value[0] == '\0'))
      continue;                       /* "" means: send no User-Agent */
    if (hd->value[0] == '\0')
      err = append(&l, hd->name, ";", "");   /* curl: "Name;" sends "Name:" */
    else
      err = append(&l, hd->name, ": ", hd->value);
  }
  /* "Name:" with nothing after the colon removes a header curl adds. */
  if (!err && drop_accept) err = append(&l, "Accept:", "", "");
  if (!err && !ua && o->user_agent && *o->user_agent)
    err = append(&l, "User-Agent: ", o->user_agent, "");
  if (!err && !find_header(o, "Connection"))
    err = append(&l, "Connection: close", "", "");
  if (!err && o->body && !h->user_expect)
    err = append(&l, "Expect:", "", "");
  if (!err && o->body && !find_header(o, "Content-Type"))
    err = append(&l, "Content-Type:", "", "");  /* no form-urlencoded default */
  if (err) {
    curl_slist_free_all(l);
    return -2;
  }
  h->hdrs = l;
  if (plain && !loop->http_hdrs &&
      (loop->http_hdrs_ua = strdup(dua)) != NULL) {
    loop->http_hdrs = l;
    h->shared_hdrs = 1;
  }
  return 0;
}

uint64_t sonde_http_start(struct sonde_loop *loop,
                          const struct sonde_http_opts *o, sonde_result_cb cb,
                          void *arg) {
  size_t esize = o->expect ? sonde_http_expect_size(o->expect) : 0;
  struct http_op *h = calloc(1, esize ? EXPECT_AT + esize : sizeof *h);
  if (!h) return 0;
  if (esize) h->expect = sonde_http_expect_copy((char *)h + EXPECT_AT,
                                                o->expect);
  h->op.vt = &http_vt;
  h->op.loop = loop;          /* (for http_release before sonde_op_start) */
  h->owner.done = on_done;
  h->max_body = o->max_body;
  h->max_redirects = o->max_redirects;
  h->follow = o->follow_redirects;
  h->url = strdup(o->url);
  h->tls = o->tls;
  h->tls.ca_file = h->tls.cert_file = h->tls.key_file = NULL;
  h->tls.server_name = NULL;
  if (o->tls.server_name && *o->tls.server_name)
    h->tls.server_name = h->server_name = strdup(o->tls.server_name);
  h->method = strdup(o->method ? o->method : "GET");
  h->easy = sonde_curl_easy_get(loop);
  if (o->body) {
    h->body = malloc(o->body_len + 1);
    if (h->body) memcpy(h->body, o->body, o->body_len);
    h->body_len = o->body_len;
  }
  if (!h->url || !h->method || !h->easy ||
      (o->tls.server_name && *o->tls.server_name && !h->server_name) ||
      (o->body && !h->body)) {
    http_release(&h->op, 0);
    free(h);
    return 0;
  }
  uint64_t id = sonde_op_start(loop, &h->op, cb, arg);
  h->deadline = h->op.start + o->timeout;
  struct sonde_result *r = &h->op.res;
  int rc = build_headers(h, o);
  if (rc != 0) {
    if (rc == -2) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
      sonde_result_set_error(r, "out of memory");
    }
    sonde_result_set_output(r, r->error ? r->error : "",
                            r->error ? strlen(r->error) : 0);
    set_result_url(h);
    sonde_op_complete_soon(&h->op);
    return id;
  }
  CURL *e = h->easy;
  sonde_curl_setup(e, &h->owner, loop);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");      /* ignore *_proxy variables */
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->hdrs);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
  struct sonde_tls_opts tls = o->tls;
  tls.server_name = h->server_name;   /* ours: it must outlive the call */
  CURLcode tc = sonde_tls_curl_apply(e, &tls);
  if (tc != CURLE_OK) {                /* libcurl refused a TLS option */
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_CONFIG;
    r->code = (int)tc;
    sonde_result_set_error(r, "tls options: %s", curl_easy_strerror(tc));
    sonde_result_set_output(r, r->error ? r->error : "",
                            r->error ? strlen(r->error) : 0);
    set_result_url(h);
    sonde_op_complete_soon(&h->op);
    return id;
  }
  if (h->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)h->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, h->body);
  }
  /* POSTFIELDS alone would make it a POST: say the method explicitly. */
  if (strcmp(h->method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (strcmp(h->method, "GET") != 0 || h->body)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, h->method);
  if (start_hop(h) != 0) {
    sonde_result_set_output(r, r->error ? r->error : "",
                            r->error ? strlen(r->error) : 0);
    sonde_op_complete_soon(&h->op);
  }
  return id;
}
