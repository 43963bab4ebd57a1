/*
 * expand.c - kubelet `$(VAR)` expansion (see include/sonde/expand.h).
 *
 * A single left-to-right scan over bytes.  The output grows in a malloc'd
 * buffer owned by the caller on return.
 */
#include <stdlib.h>
#include <string.h>

#include "sonde/expand.h"

struct buf {
  char *p;
  size_t len, cap;
  int oom;
};

static void buf_add(struct buf *b, const char *s, size_t n) {
  if (b->oom || n == 0) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return; }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

char *sonde_expand(const char *in, size_t len, sonde_expand_lookup lookup,
                   void *ctx, size_t *outlen) {
  struct buf b = {0};
  size_t i = 0;
  buf_add(&b, "", 0);
  while (i < len) {
    const char *dollar = memchr(in + i, '$', len - i);
    if (!dollar) { buf_add(&b, in + i, len - i); break; }
    size_t d = (size_t)(dollar - in);
    buf_add(&b, in + i, d - i);
    if (d + 1 >= len) {                 /* rule 1: trailing `$` */
      buf_add(&b, "$", 1);
      i = len;
    } else if (in[d + 1] == '$') {      /* rule 2: `$$` escape */
      buf_add(&b, "$", 1);
      i = d + 2;
    } else if (in[d + 1] == '(') {
      const char *close = memchr(in + d + 2, ')', len - d - 2);
      if (!close) {                     /* rule 4: unterminated */
        buf_add(&b, "$(", 2);
        i = d + 2;
      } else {                          /* rule 3: reference */
        size_t nstart = d + 2, nlen = (size_t)(close - in) - nstart;
        size_t vlen = 0;
        const char *v = lookup ? lookup(ctx, in + nstart, nlen, &vlen) : NULL;
        if (v)
          buf_add(&b, v, vlen);
        else
          buf_add(&b, in + d, nlen + 3);
        i = nstart + nlen + 1;
      }
    } else {                            /* rule 5: `$` + other byte */
      buf_add(&b, in + d, 2);
      i = d + 2;
    }
  }
  if (b.oom) { free(b.p); return NULL; }
  if (!b.p) {
    b.p = malloc(1);
    if (!b.p) return NULL;
  }
  b.p[b.len] = '\0';
  if (outlen) *outlen = b.len;
  return b.p;
}
