/*
 * expo.c - a declared probe's series in the text exposition format
 * (include/sonde/expo.h), from its worker's live state.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonde/dns.h"
#include "sonde/expo.h"
#include "sonde/tls.h"

static const struct sonde_expo_family families[SONDE_EXPO__COUNT] = {
#define SONDE_EXPO_INFO(id, name, type, help, always) {name, type, help, always},
    SONDE_EXPO_FAMILIES(SONDE_EXPO_INFO)
#undef SONDE_EXPO_INFO
};

const struct sonde_expo_family *sonde_expo_family(int f) {
  return f >= 0 && f < SONDE_EXPO__COUNT ? &families[f] : NULL;
}

/* ---- the buffer ----------------------------------------------------------- */

void sonde_expo_add(struct sonde_expo_buf *b, const char *s, size_t n) {
  if (b->oom || n == 0) return;     /* (memcpy takes no NULL, even for 0) */
  if (b->cap - b->n < n) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->n < n) {
      if (cap > SIZE_MAX / 2) {
        b->oom = 1;
        return;
      }
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

#define ADD_LIT(b, s) sonde_expo_add((b), (s), sizeof(s) - 1)

static void add_str(struct sonde_expo_buf *b, const char *s) {
  sonde_expo_add(b, s, strlen(s));
}

/* ---- numbers -------------------------------------------------------------- */

size_t sonde_expo_float(char *out, double v) {
  if (isnan(v)) return (size_t)sprintf(out, "NaN");
  if (isinf(v)) return (size_t)sprintf(out, v > 0 ? "+Inf" : "-Inf");
  if (v == 0) return (size_t)sprintf(out, signbit(v) ? "-0" : "0");
  /* the shortest digits that read back as v: a normal double's 15
   * significant digits always do, else 16, else 17 (exact); subnormals
   * hold fewer: tried from 1 up */
  char e[40];
  int p = fabs(v) < 2.2250738585072014e-308 ? 0 : 14;
  for (; p <= 16; p++) {
    snprintf(e, sizeof e, "%.*e", p, v);
    if (strtod(e, NULL) == v) break;
  }
  /* e: [-]D[.DDD]e[+-]XX */
  const char *s = e;
  int neg = *s == '-';
  if (neg) s++;
  char digits[24];
  size_t nd = 0;
  for (; *s && *s != 'e'; s++)
    if (*s != '.') digits[nd++] = *s;
  int exp = atoi(s + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  char *o = out;
  if (neg) *o++ = '-';
  /* Go's 'g' at the shortest precision: %e when exp < -4 or exp >= 21?
   * no: eprec is 6 when shortest (strconv/ftoa.go) */
  if (exp < -4 || exp >= 6) {
    *o++ = digits[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, digits + 1, nd - 1);
      o += nd - 1;
    }
    o += sprintf(o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  } else if (exp < 0) {
    *o++ = '0';
    *o++ = '.';
    for (int i = 0; i < -exp - 1; i++) *o++ = '0';
    memcpy(o, digits, nd);
    o += nd;
  } else if ((int)nd <= exp + 1) {
    memcpy(o, digits, nd);
    o += nd;
    for (int i = 0; i < exp + 1 - (int)nd; i++) *o++ = '0';
  } else {
    memcpy(o, digits, (size_t)exp + 1);
    o += exp + 1;
    *o++ = '.';
    memcpy(o, digits + exp + 1, nd - (size_t)exp - 1);
    o += nd - (size_t)exp - 1;
  }
  *o = 0;
  return (size_t)(o - out);
}

size_t sonde_expo_number(char *out, double v) {
  if (v == floor(v) && fabs(v) < 9007199254740992.0)   /* 2^53 */
    return (size_t)sprintf(out, "%lld", (long long)v);
  return sonde_expo_float(out, v);
}

static size_t u64_text(char *out, uint64_t v) {
  char t[24];
  size_t n = 0;
  do {
    t[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++) out[i] = t[n - 1 - i];
  out[n] = 0;
  return n;
}

/* ---- escaping ------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs,
 * surrogates or code points past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (n < len) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return len;
}

/* quote: escape `"` too (label values; not HELP texts) */
static void escape(struct sonde_expo_buf *b, const char *str, size_t n,
                   int quote) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0, run = 0;   /* bytes s[i - run .. i) to copy as they are */
  while (i < n) {
    unsigned c = s[i];
    if (c >= 0x20 && c != 0x7f && c != '\\' && !(quote && c == '"') &&
        c < 0x80) {
      i++;
      run++;
      continue;
    }
    if (c >= 0x80) {
      size_t len = utf8_seq(s + i, n - i);
      if (len) {
        i += len;
        run += len;
        continue;
      }
    }
    sonde_expo_add(b, (const char *)s + i - run, run);
    run = 0;
    if (c == '\\') ADD_LIT(b, "\\\\");
    else if (c == '"') ADD_LIT(b, "\\\"");
    else if (c == '\n') ADD_LIT(b, "\\n");
    else if (c >= 0x80) ADD_LIT(b, "\xEF\xBF\xBD");   /* U+FFFD */
    else {
      char x[8];
      int k = snprintf(x, sizeof x, "\\\\x%02X", c);
      sonde_expo_add(b, x, (size_t)k);
    }
    i++;
  }
  sonde_expo_add(b, (const char *)s + i - run, run);
}

void sonde_expo_escape(struct sonde_expo_buf *b, const char *s, size_t n) {
  escape(b, s, n, 1);
}

void sonde_expo_header(struct sonde_expo_buf *b, const char *name,
                       const char *type, const char *help) {
  ADD_LIT(b, "# HELP ");
  add_str(b, name);
  ADD_LIT(b, " ");
  escape(b, help, strlen(help), 0);
  ADD_LIT(b, "\n# TYPE ");
  add_str(b, name);
  ADD_LIT(b, " ");
  add_str(b, type);
  ADD_LIT(b, "\n");
}

/* ---- lines ---------------------------------------------------------------- */

/* name{base[,k="v"]} */
static void series(struct sonde_expo_buf *b, const char *name,
                   const struct sonde_expo_probe *p, const char *k,
                   const char *v) {
  add_str(b, name);
  ADD_LIT(b, "{");
  sonde_expo_add(b, p->base, p->base_len);
  if (k) {
    ADD_LIT(b, ",");
    add_str(b, k);
    ADD_LIT(b, "=\"");
    add_str(b, v);       /* the caller's constant text: nothing to escape */
    ADD_LIT(b, "\"");
  }
  ADD_LIT(b, "} ");
}

/* The value text `num` (n bytes, room for one more) and the newline. */
static int end_line(struct sonde_expo_buf *b, char *num, size_t n) {
  num[n++] = '\n';
  sonde_expo_add(b, num, n);
  return 1;
}

static int line(struct sonde_expo_buf *b, const char *name,
                const struct sonde_expo_probe *p, const char *k,
                const char *v, double value) {
  char num[40];
  series(b, name, p, k, v);
  return end_line(b, num, sonde_expo_number(num, value));
}

static int line_u64(struct sonde_expo_buf *b, const char *name,
                    const struct sonde_expo_probe *p, const char *k,
                    const char *v, uint64_t value) {
  char num[40];
  series(b, name, p, k, v);
  return end_line(b, num, u64_text(num, value));
}

/* An info series: name{base,k1="v1",...} 1, the values escaped. */
static int info(struct sonde_expo_buf *b, const char *name,
                const struct sonde_expo_probe *p, const char *const *keys,
                const char *const *values, int n) {
  add_str(b, name);
  ADD_LIT(b, "{");
  sonde_expo_add(b, p->base, p->base_len);
  for (int i = 0; i < n; i++) {
    ADD_LIT(b, ",");
    add_str(b, keys[i]);
    ADD_LIT(b, "=\"");
    const char *v = values[i] ? values[i] : "";
    escape(b, v, strlen(v), 1);
    ADD_LIT(b, "\"");
  }
  ADD_LIT(b, "} 1\n");
  return 1;
}

static const char *const STATUSES[] = {"success", "warning", "failure",
                                       "unknown"};
static const char *const STATES[] = {"success", "failure", "unknown"};
static const char *const SERVING[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                      "SERVICE_UNKNOWN"};
static const char *const HTTP_PHASES[] = {"resolve", "connect", "tls",
                                          "processing", "transfer"};

/* The le="..." texts of the duration buckets, made once. */
static const char *bucket_le(int i) {
  static char le[SONDE_DURATION_BUCKETS][32];
  static int made;
  if (!made) {
    const double *bounds = sonde_duration_buckets();
    for (int k = 0; k < SONDE_DURATION_BUCKETS; k++)
      sonde_expo_float(le[k], bounds[k]);
    made = 1;
  }
  return le[i];
}

/* blackbox_exporter's probe_ip_protocol: the family of the address used,
 * or of the address told (remote_addr) */
static int ip_protocol(const struct sonde_result *r) {
  if (r->ip_protocol) return r->ip_protocol;
  if (r->remote_addr[0]) return r->remote_addr[0] == '[' ? 6 : 4;
  return 0;
}

/* Families a handler's last result writes (besides those of every probe). */
static int handler_lines(struct sonde_expo_buf *b, int f,
                         const struct sonde_expo_probe *p, sonde_handler h,
                         const struct sonde_result *r) {
  const char *name = families[f].name;
  switch (f) {
  case SONDE_EXPO_HTTP_STATUS:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL,
                                    (double)r->http_status)
                             : 0;
  case SONDE_EXPO_HTTP_PHASE:
    if (h != SONDE_H_HTTP) return 0;
    {
      const double v[] = {r->phases.resolve, r->phases.connect, r->phases.tls,
                          r->phases.processing, r->phases.transfer};
      for (int i = 0; i < 5; i++) line(b, name, p, "phase", HTTP_PHASES[i], v[i]);
      return 5;
    }
  case SONDE_EXPO_HTTP_LENGTH:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL,
                                    (double)r->content_length)
                             : 0;
  case SONDE_EXPO_HTTP_BODY:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL,
                                    (double)r->body_size)
                             : 0;
  case SONDE_EXPO_HTTP_REDIRECTS:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL, r->redirects) : 0;
  case SONDE_EXPO_HTTP_SSL:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL, r->tls ? 1 : 0)
                             : 0;
  case SONDE_EXPO_HTTP_VERSION:
    return h == SONDE_H_HTTP ? line(b, name, p, NULL, NULL,
                                    r->http_version / 10.0)
                             : 0;
  case SONDE_EXPO_DNS_LOOKUP:
    if (h == SONDE_H_HTTP) return line(b, name, p, NULL, NULL, r->phases.resolve);
    if (h == SONDE_H_ICMP) return line(b, name, p, NULL, NULL, r->icmp_resolve);
    if (h == SONDE_H_DNS)
      return line(b, name, p, NULL, NULL, r->dns ? r->dns->lookup_time : 0);
    return 0;
  case SONDE_EXPO_IP_PROTOCOL:
    if (h == SONDE_H_HTTP || h == SONDE_H_TCP || h == SONDE_H_GRPC ||
        h == SONDE_H_ICMP || h == SONDE_H_DNS)
      return line(b, name, p, NULL, NULL, ip_protocol(r));
    return 0;
  case SONDE_EXPO_GRPC_STATUS:
    return h == SONDE_H_GRPC
               ? line(b, name, p, NULL, NULL,
                      r->has_grpc_status ? r->grpc_status : -1)
               : 0;
  case SONDE_EXPO_GRPC_HEALTH:
    if (h != SONDE_H_GRPC) return 0;
    for (int i = 0; i < 4; i++)
      line(b, name, p, "serving_status", SERVING[i],
           r->has_serving_status && r->serving_status == i ? 1 : 0);
    return 4;
  case SONDE_EXPO_ICMP_PHASE:
    if (h != SONDE_H_ICMP) return 0;
    line(b, name, p, "phase", "resolve", r->icmp_resolve);
    line(b, name, p, "phase", "setup", r->icmp_setup);
    line(b, name, p, "phase", "rtt", r->icmp_rtt);
    return 3;
  case SONDE_EXPO_ICMP_HOP:
    return h == SONDE_H_ICMP && r->status == SONDE_SUCCESS &&
                   r->icmp_reply_ttl >= 0
               ? line(b, name, p, NULL, NULL, r->icmp_reply_ttl)
               : 0;
  case SONDE_EXPO_IP_HASH:
    return h == SONDE_H_ICMP
               ? line(b, name, p, NULL, NULL,
                      r->ip_protocol ? (double)r->icmp_addr_hash : 0)
               : 0;
  case SONDE_EXPO_DNS_ANSWER:
  case SONDE_EXPO_DNS_AUTHORITY:
  case SONDE_EXPO_DNS_ADDITIONAL:
    if (h != SONDE_H_DNS) return 0;
    return line(b, name, p, NULL, NULL,
                r->dns && r->dns->replied
                    ? (double)r->dns->count[f - SONDE_EXPO_DNS_ANSWER]
                    : 0);
  case SONDE_EXPO_DNS_SUCCEEDED:
    return h == SONDE_H_DNS
               ? line(b, name, p, NULL, NULL, r->dns && r->dns->replied)
               : 0;
  case SONDE_EXPO_DNS_SERIAL: {
    const struct sonde_dns_opts *o = sonde_worker_opts(p->w);
    if (h != SONDE_H_DNS || !o || o->qtype != 6 || !r->dns || !r->dns->replied)
      return 0;
    return line(b, name, p, NULL, NULL,
                r->dns->has_serial ? (double)r->dns->serial : 0);
  }
  default:
    break;
  }
  /* TLS: for results that came over TLS */
  const struct sonde_tls_facts *t = r->tls;
  if (!t) return 0;
  switch (f) {
  case SONDE_EXPO_SSL_EARLIEST:
    return t->has_earliest_expiry
               ? line(b, name, p, NULL, NULL,
                      (double)(long long)t->earliest_expiry)
               : 0;
  case SONDE_EXPO_SSL_CHAIN_EXPIRY:
    return t->has_last_chain_expiry
               ? line(b, name, p, NULL, NULL,
                      (double)(long long)t->last_chain_expiry)
               : 0;
  case SONDE_EXPO_SSL_CHAIN_INFO: {
    static const char *const keys[] = {"fingerprint_sha256", "subject",
                                       "issuer", "subjectalternative",
                                       "serialnumber"};
    struct sonde_expo_buf sans = {0};
    for (size_t i = 0; i < t->ndns; i++) {
      if (i) ADD_LIT(&sans, ",");
      add_str(&sans, t->dns_names[i]);
    }
    sonde_expo_add(&sans, "", 1);   /* NUL */
    const char *values[] = {t->fingerprint_sha256, t->subject, t->issuer,
                            sans.oom ? "" : sans.p, t->serial};
    info(b, name, p, keys, values, 5);
    free(sans.p);
    return 1;
  }
  case SONDE_EXPO_TLS_VERSION: {
    static const char *const keys[] = {"version"};
    const char *values[] = {t->version};
    return info(b, name, p, keys, values, 1);
  }
  case SONDE_EXPO_TLS_CIPHER: {
    static const char *const keys[] = {"cipher"};
    const char *values[] = {t->cipher};
    return info(b, name, p, keys, values, 1);
  }
  default:
    return 0;
  }
}

int sonde_expo_lines(struct sonde_expo_buf *b, int f,
                     const struct sonde_expo_probe *p) {
  if (f < 0 || f >= SONDE_EXPO__COUNT || !p->w) return 0;
  const char *name = families[f].name;
  const struct sonde_worker *w = p->w;
  sonde_status status;
  double duration;
  switch (f) {
  case SONDE_EXPO_SUCCESS:
    if (!sonde_worker_committed(w, &status, &duration)) return 0;
    return line(b, name, p, NULL, NULL,
                status == SONDE_SUCCESS || status == SONDE_WARNING);
  case SONDE_EXPO_DURATION:
    if (!sonde_worker_committed(w, &status, &duration)) return 0;
    return line(b, name, p, NULL, NULL, duration);
  case SONDE_EXPO_RUNS: {
    const struct sonde_probe_stats *s = sonde_worker_stats(w);
    for (int i = 0; i < 4; i++)
      line_u64(b, name, p, "status", STATUSES[i], s->counts[i]);
    return 4;
  }
  case SONDE_EXPO_STATE: {
    sonde_pstate st = sonde_worker_count(w)->state;
    for (int i = 0; i < 3; i++)
      line(b, name, p, "state", STATES[i], (int)st == i ? 1 : 0);
    return 3;
  }
  case SONDE_EXPO_RUN_DURATION: {
    if (!p->histogram) return 0;
    const struct sonde_probe_stats *s = sonde_worker_stats(w);
    for (int i = 0; i < SONDE_DURATION_BUCKETS; i++)
      line_u64(b, "sonde_probe_run_duration_seconds_bucket", p, "le",
               bucket_le(i), s->buckets[i]);
    line_u64(b, "sonde_probe_run_duration_seconds_bucket", p, "le", "+Inf",
             s->n);
    line(b, "sonde_probe_run_duration_seconds_sum", p, NULL, NULL, s->sum);
    line_u64(b, "sonde_probe_run_duration_seconds_count", p, NULL, NULL, s->n);
    return SONDE_DURATION_BUCKETS + 3;
  }
  default:
    break;
  }
  sonde_handler h = sonde_worker_handler(w);
  const struct sonde_result *r = sonde_worker_last(w, NULL);
  if (h == SONDE_H_NONE || !r) return 0;
  return handler_lines(b, f, p, h, r);
}
