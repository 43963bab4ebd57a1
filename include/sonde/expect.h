/*
 * sonde/expect.h - expectations on an HTTP response, judged in C
 * (blackbox_exporter's valid_status_codes and fail_if_*, Gatus'
 * conditions): the status codes accepted, a bound on the duration,
 * header and body patterns (Lua patterns, sonde/pattern.h).
 *
 * They are judged on a response that arrived (a result with http_status;
 * a transport failure, a timeout or "stopped after 10 redirects" stays as
 * it is), in this order, and the first one unmet decides:
 *   1. status       the final status is one of the codes or classes given:
 *                   success (reason ok, output the body) whatever the
 *                   kubelet's classification; else failure.  Without a
 *                   status list the kubelet's classification stands, and a
 *                   failure (reason http_status) is final: nothing else is
 *                   judged;
 *   2. max_duration the response came within this many seconds of the
 *                   start (the result's duration);
 *   3. headers      each named header is present and one of its lines'
 *                   values (repeats are separate lines) matches its
 *                   pattern;
 *   4. body         the pattern is found in the body read (up to max_body
 *                   bytes: a body cut there is searched as read);
 *   5. body_not     the pattern is not found in the body read.
 * An unmet expectation makes the result a failure, reason expect (the
 * status code, headers and body stay in the result), output:
 *   expect.status: got 503, want 200 or 401
 *   expect.max_duration: took 0.612 s, want at most 0.5 s
 *   expect.headers["content-type"]: missing
 *   expect.headers["content-type"]: pattern "^application/json" not
 *     matched by "text/html"
 *   expect.body: pattern "ok" not found in body (first 80 bytes: "...")
 *   expect.body_not: pattern "error" found in body: "error"
 * What came from the target is shown quoted, escaped and cut
 * (sonde_expect_quote).  A pattern too complex for the text it is matched
 * against (Lua's "pattern too complex") is unmet, "... too complex".
 */
#ifndef SONDE_EXPECT_H
#define SONDE_EXPECT_H

#include <stddef.h>

#include "sonde/result.h"

/* Codes lo..hi accepted (200..200; a class "2xx" is 200..299). */
struct sonde_status_range {
  int lo, hi;
};

/* A header that must be there, one of its values matching `pattern`.
 * name: any case (compared without it). */
struct sonde_header_expect {
  const char *name;
  const char *pattern;
  size_t pattern_len;
};

/* Strings are NUL-terminated (patterns may hold NULs: *_len). */
struct sonde_http_expect {
  const struct sonde_status_range *status;  /* NULL/0: kubelet's classes */
  size_t nstatus;
  double max_duration;                      /* seconds; 0: none */
  const struct sonde_header_expect *headers;
  size_t nheaders;
  const char *body;                         /* pattern, or NULL */
  size_t body_len;
  const char *body_not;                     /* pattern, or NULL */
  size_t body_not_len;
};

/* Bytes a flat copy of e takes (sonde_http_expect_copy). */
size_t sonde_http_expect_size(const struct sonde_http_expect *e);

/* Copy e and everything it points at into `mem` (sonde_http_expect_size
 * bytes, aligned for a pointer); returns the copy, which points only into
 * mem. */
struct sonde_http_expect *sonde_http_expect_copy(
    void *mem, const struct sonde_http_expect *e);

/* Judge a result whose response has arrived (r->http_status set, status
 * and output as the kubelet's classification left them): see above.
 * Changes r->status, r->reason and r->output when the outcome changes.
 * Out of memory for the message leaves the output empty. */
void sonde_http_expect_judge(const struct sonde_http_expect *e,
                             struct sonde_result *r);

/* Quote at most `max` bytes of s (n bytes) for a message: "..." with \\,
 * \", \r, \n, \t, and every other byte outside 0x20-0x7e as \xHH, then
 * "..." after the closing quote when s was longer.  Writes a
 * NUL-terminated string into out (cap bytes; 4 * max + 8 always fit) and
 * returns its length. */
size_t sonde_expect_quote(char *out, size_t cap, const char *s, size_t n,
                          size_t max);

/* Bytes of the target's text shown in a message. */
#define SONDE_EXPECT_SHOWN 80

#endif
