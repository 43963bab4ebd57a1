/*
 * result.c - names and memory of struct sonde_result (include/sonde/result.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonde/dns.h"
#include "sonde/result.h"
#include "sonde/tls.h"

static const char *const status_names[] = {"success", "warning", "failure",
                                           "unknown"};

static const char *const reason_names[] = {
#define SONDE_REASON_NAME(id, name) name,
    SONDE_REASONS(SONDE_REASON_NAME)
#undef SONDE_REASON_NAME
};

const char *sonde_status_name(sonde_status s) {
  return (unsigned)s <= SONDE_UNKNOWN ? status_names[s] : "unknown";
}

const char *sonde_reason_name(sonde_reason r) {
  return (unsigned)r < SONDE_R__COUNT ? reason_names[r] : "unknown";
}

void sonde_result_take(struct sonde_result *dst,
                       const struct sonde_result *r) {
  /* the callback's result belongs to the finished operation, which only
   * clears it once the callback has returned */
  struct sonde_result *src = (struct sonde_result *)(uintptr_t)r;
  sonde_result_clear(dst);
  *dst = *src;
  memset(src, 0, sizeof *src);
}

void sonde_result_clear(struct sonde_result *r) {
  free(r->output);
  free(r->error);
  free(r->body);
  free(r->url);
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  free(r->headers);
  sonde_tls_facts_free(r->tls);
  sonde_dns_reply_free(r->dns);
  memset(r, 0, sizeof *r);
}

int sonde_result_set_output(struct sonde_result *r, const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return -1;
  if (n) memcpy(p, s, n);
  p[n] = '\0';
  free(r->output);
  r->output = p;
  r->output_len = n;
  return 0;
}

void sonde_result_set_error(struct sonde_result *r, const char *fmt, ...) {
  va_list ap;
  char *p = NULL;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n >= 0 && (p = malloc((size_t)n + 1)) != NULL) {
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  free(r->error);
  r->error = p;
}
