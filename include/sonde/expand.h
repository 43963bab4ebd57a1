/*
 * sonde/expand.h - Kubernetes `$(VAR)` expansion.
 *
 * Semantics are the kubelet's (third_party/forked/golang/expansion), see
 * reference/kubelet-probes.md section 7:
 *   - `$(NAME)` with NAME in the mapping is replaced by its value verbatim
 *     (no re-expansion); an undefined NAME leaves `$(NAME)` as it is;
 *   - `$$` is an escaped `$`;
 *   - `$(` with no closing `)` and `$` followed by anything else are copied;
 *   - a `$` at the end of the input is copied.
 * Difference from the kubelet: a byte after `$` that is not valid UTF-8 is
 * copied through unchanged (Go replaces it with U+FFFD).
 */
#ifndef SONDE_EXPAND_H
#define SONDE_EXPAND_H

#include <stddef.h>

/* Look up `name` (`len` bytes, not NUL-terminated).  Return the value and set
 * *vlen, or return NULL when the name is not defined. */
typedef const char *(*sonde_expand_lookup)(void *ctx, const char *name,
                                           size_t len, size_t *vlen);

/* Expand `in` (`len` bytes).  Returns a malloc'd NUL-terminated string and
 * sets *outlen, or NULL when out of memory. */
char *sonde_expand(const char *in, size_t len, sonde_expand_lookup lookup,
                   void *ctx, size_t *outlen);

#endif
