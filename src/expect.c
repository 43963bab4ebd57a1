/*
 * expect.c - expectations on an HTTP response (include/sonde/expect.h).
 *
 * Judged once the response is in (http.c, finish_status), on the loop:
 * status ranges, the duration, header and body patterns (pattern.c).
 * What comes from the target is only ever shown through
 * sonde_expect_quote (escaped, cut).
 */
#define _GNU_SOURCE
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sonde/expect.h"
#include "sonde/pattern.h"

#define PATTERN_SHOWN 200    /* bytes of a pattern shown in a message */

size_t sonde_expect_quote(char *out, size_t cap, const char *s, size_t n,
                          size_t max) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0, k = n < max ? n : max;
  if (cap == 0) return 0;
#define PUT(c) do { if (o + 1 < cap) out[o++] = (c); } while (0)
  PUT('"');
  for (size_t i = 0; i < k; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\\' || c == '"') {
      PUT('\\');
      PUT((char)c);
    } else if (c == '\n') {
      PUT('\\');
      PUT('n');
    } else if (c == '\r') {
      PUT('\\');
      PUT('r');
    } else if (c == '\t') {
      PUT('\\');
      PUT('t');
    } else if (c < 0x20 || c > 0x7e) {
      PUT('\\');
      PUT('x');
      PUT(hex[c >> 4]);
      PUT(hex[c & 15]);
    } else {
      PUT((char)c);
    }
  }
  PUT('"');
  if (k < n) {
    PUT('.');
    PUT('.');
    PUT('.');
  }
#undef PUT
  out[o] = '\0';
  return o;
}

/* ---- the flat copy ------------------------------------------------------- */

static size_t up(size_t n) {
  size_t a = alignof(max_align_t);
  return (n + a - 1) / a * a;
}

size_t sonde_http_expect_size(const struct sonde_http_expect *e) {
  size_t n = up(sizeof *e) + up(e->nstatus * sizeof *e->status) +
             up(e->nheaders * sizeof *e->headers);
  for (size_t i = 0; i < e->nheaders; i++)
    n += strlen(e->headers[i].name) + 1 + e->headers[i].pattern_len + 1;
  if (e->body) n += e->body_len + 1;
  if (e->body_not) n += e->body_not_len + 1;
  return n;
}

static const char *put(char **w, const char *s, size_t n) {
  char *d = *w;
  memcpy(d, s, n);
  d[n] = '\0';
  *w += n + 1;
  return d;
}

struct sonde_http_expect *sonde_http_expect_copy(
    void *mem, const struct sonde_http_expect *e) {
  char *w = mem;
  struct sonde_http_expect *c = mem;
  *c = *e;
  w += up(sizeof *e);
  struct sonde_status_range *st = (struct sonde_status_range *)(void *)w;
  if (e->nstatus) memcpy(st, e->status, e->nstatus * sizeof *st);
  c->status = e->nstatus ? st : NULL;
  w += up(e->nstatus * sizeof *e->status);
  struct sonde_header_expect *hd = (struct sonde_header_expect *)(void *)w;
  c->headers = e->nheaders ? hd : NULL;
  w += up(e->nheaders * sizeof *e->headers);
  for (size_t i = 0; i < e->nheaders; i++) {
    hd[i].name = put(&w, e->headers[i].name, strlen(e->headers[i].name));
    hd[i].pattern = put(&w, e->headers[i].pattern, e->headers[i].pattern_len);
    hd[i].pattern_len = e->headers[i].pattern_len;
  }
  if (e->body) c->body = put(&w, e->body, e->body_len);
  if (e->body_not) c->body_not = put(&w, e->body_not, e->body_not_len);
  return c;
}

/* ---- judging ------------------------------------------------------------- */

static void fail(struct sonde_result *r, const char *msg) {
  r->status = SONDE_FAILURE;
  r->reason = SONDE_R_EXPECT;
  if (sonde_result_set_output(r, msg, strlen(msg)) != 0) {
    free(r->output);
    r->output = NULL;
    r->output_len = 0;
  }
}

/* "200 or 401", "2xx", "200, 204 or 3xx" */
static void want_text(const struct sonde_http_expect *e, char *buf,
                      size_t cap) {
  size_t o = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < e->nstatus && o < cap; i++) {
    const struct sonde_status_range *s = &e->status[i];
    const char *sep = i == 0 ? "" : i + 1 == e->nstatus ? " or " : ", ";
    int n = s->lo == s->hi
                ? snprintf(buf + o, cap - o, "%s%d", sep, s->lo)
            : s->lo % 100 == 0 && s->hi == s->lo + 99
                ? snprintf(buf + o, cap - o, "%s%dxx", sep, s->lo / 100)
                : snprintf(buf + o, cap - o, "%s%d-%d", sep, s->lo, s->hi);
    if (n < 0) break;
    o += (size_t)n;
  }
}

/* The pattern as shown: quoted (it is the user's, but may hold any byte). */
static void show_pattern(char *buf, size_t cap, const char *p, size_t n) {
  sonde_expect_quote(buf, cap, p, n, PATTERN_SHOWN);
}

static int judge_status(const struct sonde_http_expect *e,
                        struct sonde_result *r) {
  long code = r->http_status;
  for (size_t i = 0; i < e->nstatus; i++) {
    if (code >= e->status[i].lo && code <= e->status[i].hi) {
      if (r->status != SONDE_SUCCESS) {   /* listed: a success, body shown */
        r->status = SONDE_SUCCESS;
        r->reason = SONDE_R_OK;
        sonde_result_set_output(r, r->body ? r->body : "",
                                r->body ? r->body_len : 0);
      }
      return 1;
    }
  }
  char want[512], msg[640];
  want_text(e, want, sizeof want);
  snprintf(msg, sizeof msg, "expect.status: got %ld, want %s", code, want);
  fail(r, msg);
  return 0;
}

static int judge_header(const struct sonde_header_expect *h,
                        struct sonde_result *r, long *steps) {
  char msg[2048], pat[PATTERN_SHOWN * 4 + 8], val[SONDE_EXPECT_SHOWN * 4 + 8];
  const struct sonde_header *first = NULL;
  size_t lines = 0;
  for (size_t i = 0; i < r->nheaders; i++) {
    const struct sonde_header *rh = &r->headers[i];
    if (strcasecmp(rh->name, h->name) != 0) continue;
    if (!first) first = rh;
    lines++;
    int m = sonde_pattern_find_steps(rh->value, strlen(rh->value),
                                     h->pattern, h->pattern_len, NULL, NULL,
                                     steps);
    if (m == 1) return 1;
    if (m < 0) {
      show_pattern(pat, sizeof pat, h->pattern, h->pattern_len);
      snprintf(msg, sizeof msg, "expect.headers[\"%.100s\"]: pattern %s too "
               "complex for the value", h->name, pat);
      fail(r, msg);
      return 0;
    }
  }
  if (!first) {
    snprintf(msg, sizeof msg, "expect.headers[\"%.100s\"]: missing", h->name);
    fail(r, msg);
    return 0;
  }
  show_pattern(pat, sizeof pat, h->pattern, h->pattern_len);
  sonde_expect_quote(val, sizeof val, first->value, strlen(first->value),
                     SONDE_EXPECT_SHOWN);
  if (lines == 1)
    snprintf(msg, sizeof msg, "expect.headers[\"%.100s\"]: pattern %s not "
             "matched by %s", h->name, pat, val);
  else
    snprintf(msg, sizeof msg, "expect.headers[\"%.100s\"]: pattern %s not "
             "matched by any of its %zu values (first: %s)", h->name, pat,
             lines, val);
  fail(r, msg);
  return 0;
}

static int judge_body(const char *what, const char *p, size_t lp, int want,
                      struct sonde_result *r, long *steps) {
  const char *body = r->body ? r->body : "";
  size_t n = r->body ? r->body_len : 0, s = 0, e = 0;
  int m = sonde_pattern_find_steps(body, n, p, lp, &s, &e, steps);
  if (m == want) return 1;
  char msg[2048], pat[PATTERN_SHOWN * 4 + 8], val[SONDE_EXPECT_SHOWN * 4 + 8];
  char cut[96] = "";
  show_pattern(pat, sizeof pat, p, lp);
  if (r->truncated)
    snprintf(cut, sizeof cut, " (body cut at max_body: %zu bytes read)", n);
  if (m < 0) {
    snprintf(msg, sizeof msg, "%s: pattern %s too complex for the body%s",
             what, pat, cut);
  } else if (want) {
    sonde_expect_quote(val, sizeof val, body, n, SONDE_EXPECT_SHOWN);
    snprintf(msg, sizeof msg, "%s: pattern %s not found in body (first %d "
             "bytes: %s)%s", what, pat, SONDE_EXPECT_SHOWN, val, cut);
  } else {
    sonde_expect_quote(val, sizeof val, body + s, e - s, SONDE_EXPECT_SHOWN);
    snprintf(msg, sizeof msg, "%s: pattern %s found in body: %s", what, pat,
             val);
  }
  fail(r, msg);
  return 0;
}

void sonde_http_expect_judge(const struct sonde_http_expect *e,
                             struct sonde_result *r) {
  if (e->nstatus) {
    if (!judge_status(e, r)) return;
  } else if (r->status == SONDE_FAILURE) {
    return;                                   /* http_status: final */
  }
  if (e->max_duration > 0 && r->duration > e->max_duration) {
    char msg[128];
    snprintf(msg, sizeof msg, "expect.max_duration: took %.3f s, want at "
             "most %g s", r->duration, e->max_duration);
    fail(r, msg);
    return;
  }
  /* one matching budget for the run: a response of many header lines
   * cannot multiply what a pathological pattern costs the loop */
  long steps = SONDE_PATTERN_STEPS;
  for (size_t i = 0; i < e->nheaders; i++)
    if (!judge_header(&e->headers[i], r, &steps)) return;
  if (e->body &&
      !judge_body("expect.body", e->body, e->body_len, 1, r, &steps))
    return;
  if (e->body_not)
    judge_body("expect.body_not", e->body_not, e->body_not_len, 0, r,
               &steps);
}
