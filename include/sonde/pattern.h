/*
 * sonde/pattern.h - Lua 5.4 patterns in C: what string.find(s, p) finds,
 * without a Lua state, so that expectations (sonde/expect.h, the TCP
 * prober's expect steps) are judged on the loop without entering Lua.
 *
 * Semantics are Lua 5.4's (lstrlib.c, whose matcher src/pattern.c is
 * derived from): classes %a %c %d %g %l %p %s %u %w %x (and their
 * complements), sets [...], . * + - ?, anchors ^ (at the start only) and
 * $ (at the end only), %bxy, %f[set], captures and back-references %1-%9;
 * character classes follow the C library's <ctype.h> in the process's
 * locale, as Lua's do.  A pattern without special characters is a plain
 * substring search, as in string.find.
 *
 * Both the subject and the pattern must have a readable byte just past
 * their end (a NUL, as Lua strings and sonde's buffers have): %f and %b
 * look at it, as in Lua.
 */
#ifndef SONDE_PATTERN_H
#define SONDE_PATTERN_H

#include <stddef.h>

/* NULL when `p` (lp bytes) is a valid pattern, else Lua's message for it
 * ("malformed pattern (missing ']')", "unfinished capture", "invalid
 * capture index %1", ...), a static string.  A pattern that passes never
 * raises any other error in Lua except "pattern too complex" (below). */
const char *sonde_pattern_check(const char *p, size_t lp);

/* string.find(s, p): 1 when found (0-based [*start, *end) of the match,
 * when start/end are not NULL), 0 when not, -1 when the pattern is too
 * complex for the subject: more than 200 nested matching calls (where Lua
 * raises "pattern too complex"), or more than 1,000,000 matching steps,
 * a few milliseconds (Lua has no such bound; ".-.-X" against a long line
 * would hold the event loop for minutes).  The pattern must have passed
 * sonde_pattern_check. */
int sonde_pattern_find(const char *s, size_t ls, const char *p, size_t lp,
                       size_t *start, size_t *end);

/* The steps one run of a probe may spend matching, over all its finds
 * (a few milliseconds). */
#define SONDE_PATTERN_STEPS 1000000L

/* sonde_pattern_find with the steps taken from *steps, a budget shared
 * by several finds (start it at SONDE_PATTERN_STEPS): -1 also when it runs
 * out, and every later find on it then fails with -1 at once.  So a
 * target sending many lines or headers cannot make a pathological
 * pattern cost more than one budget per run. */
int sonde_pattern_find_steps(const char *s, size_t ls, const char *p,
                             size_t lp, size_t *start, size_t *end,
                             long *steps);

#endif
