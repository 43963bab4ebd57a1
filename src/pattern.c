/*
 * pattern.c - Lua 5.4 pattern matching without a Lua state
 * (include/sonde/pattern.h).
 *
 * The matcher is Lua 5.4.4's (lstrlib.c, "PATTERN MATCHING"), with two
 * changes: errors that depend only on the pattern are found before
 * matching, by sonde_pattern_check (so the matcher never meets them), and
 * the one error that depends on the subject ("pattern too complex") sets
 * a flag instead of raising, and is also met when a find has taken
 * MAXSTEPS matching steps (below): every match call after it fails at once, and
 * sonde_pattern_find reports -1 whatever the frames above it made of it.
 *
 * The code taken from Lua is under Lua's license:
 *
 * Copyright (C) 1994-2022 Lua.org, PUC-Rio.
 *
 * Permission is hereby granted, free of charge, to any person obtaining
 * a copy of this software and associated documentation files (the
 * "Software"), to deal in the Software without restriction, including
 * without limitation the rights to use, copy, modify, merge, publish,
 * distribute, sublicense, and/or sell copies of the Software, and to
 * permit persons to whom the Software is furnished to do so, subject to
 * the following conditions:
 *
 * The above copyright notice and this permission notice shall be
 * included in all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
 * EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 * MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
 * IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
 * CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
 * TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
 * SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
 */
#include <ctype.h>
#include <stddef.h>
#include <string.h>

#include "sonde/pattern.h"

#define MAXCAPTURES 32      /* LUA_MAXCAPTURES */
#define MAXCCALLS 200
/* The work one find may do, in matching steps (a call of match, a
 * character tried by an expansion): a few milliseconds.  Lua has no such
 * bound; a pattern such as ".-.-X" then takes time that grows with the
 * cube of the subject's length, and here the subject is what a target
 * sent and the matching runs on the event loop. */
#define MAXSTEPS SONDE_PATTERN_STEPS
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define L_ESC '%'
#define SPECIALS "^$*+?.([%-"
#define uchar(c) ((unsigned char)(c))

typedef struct MatchState {
  const char *src_init;
  const char *src_end;
  const char *p_end;
  int matchdepth;
  long steps;               /* matching steps left (MAXSTEPS) */
  int toocomplex;           /* the depth or the steps ran out: the find
                               fails with -1 */
  unsigned char level;
  struct {
    const char *init;
    ptrdiff_t len;
  } capture[MAXCAPTURES];
} MatchState;

static const char *match(MatchState *ms, const char *s, const char *p);

/* (checked patterns only: no error left) */
static const char *classend(MatchState *ms, const char *p) {
  switch (*p++) {
  case L_ESC:
    return p + 1;
  case '[':
    if (*p == '^') p++;
    do {
      if (*(p++) == L_ESC && p < ms->p_end) p++;
    } while (*p != ']');
    return p + 1;
  default:
    return p;
  }
}

static int match_class(int c, int cl) {
  int res;
  switch (tolower(cl)) {
  case 'a': res = isalpha(c); break;
  case 'c': res = iscntrl(c); break;
  case 'd': res = isdigit(c); break;
  case 'g': res = isgraph(c); break;
  case 'l': res = islower(c); break;
  case 'p': res = ispunct(c); break;
  case 's': res = isspace(c); break;
  case 'u': res = isupper(c); break;
  case 'w': res = isalnum(c); break;
  case 'x': res = isxdigit(c); break;
  case 'z': res = (c == 0); break;
  default: return (cl == c);
  }
  return (islower(cl) ? res : !res);
}

static int matchbracketclass(int c, const char *p, const char *ec) {
  int sig = 1;
  if (*(p + 1) == '^') {
    sig = 0;
    p++;
  }
  while (++p < ec) {
    if (*p == L_ESC) {
      p++;
      if (match_class(c, uchar(*p))) return sig;
    } else if ((*(p + 1) == '-') && (p + 2 < ec)) {
      p += 2;
      if (uchar(*(p - 2)) <= c && c <= uchar(*p)) return sig;
    } else if (uchar(*p) == c) {
      return sig;
    }
  }
  return !sig;
}

static int singlematch(MatchState *ms, const char *s, const char *p,
                       const char *ep) {
  if (s >= ms->src_end) return 0;
  int c = uchar(*s);
  switch (*p) {
  case '.': return 1;
  case L_ESC: return match_class(c, uchar(*(p + 1)));
  case '[': return matchbracketclass(c, p, ep - 1);
  default: return (uchar(*p) == c);
  }
}

static const char *matchbalance(MatchState *ms, const char *s,
                                const char *p) {
  if (*s != *p) return NULL;
  int b = *p, e = *(p + 1), cont = 1;
  while (++s < ms->src_end) {
    if (*s == e) {
      if (--cont == 0) return s + 1;
    } else if (*s == b) {
      cont++;
    }
  }
  return NULL;
}

static const char *max_expand(MatchState *ms, const char *s, const char *p,
                              const char *ep) {
  ptrdiff_t i = 0;
  while (singlematch(ms, s + i, p, ep)) {
    i++;
    if (--ms->steps < 0) {
      ms->toocomplex = 1;
      return NULL;
    }
  }
  while (i >= 0) {
    const char *res = match(ms, (s + i), ep + 1);
    if (res) return res;
    i--;
  }
  return NULL;
}

static const char *min_expand(MatchState *ms, const char *s, const char *p,
                              const char *ep) {
  for (;;) {
    const char *res = match(ms, s, ep + 1);
    if (res != NULL) return res;
    if (ms->toocomplex) return NULL;
    if (singlematch(ms, s, p, ep)) s++;
    else return NULL;
  }
}

static const char *start_capture(MatchState *ms, const char *s,
                                 const char *p, int what) {
  const char *res;
  int level = ms->level;
  ms->capture[level].init = s;
  ms->capture[level].len = what;
  ms->level = (unsigned char)(level + 1);
  if ((res = match(ms, s, p)) == NULL) ms->level--;
  return res;
}

static const char *end_capture(MatchState *ms, const char *s,
                               const char *p) {
  int l = ms->level;
  for (l--; l >= 0; l--)
    if (ms->capture[l].len == CAP_UNFINISHED) break;
  const char *res;
  ms->capture[l].len = s - ms->capture[l].init;
  if ((res = match(ms, s, p)) == NULL) ms->capture[l].len = CAP_UNFINISHED;
  return res;
}

static const char *match_capture(MatchState *ms, const char *s, int l) {
  size_t len;
  l -= '1';
  len = (size_t)ms->capture[l].len;
  if ((size_t)(ms->src_end - s) >= len &&
      memcmp(ms->capture[l].init, s, len) == 0)
    return s + len;
  return NULL;
}

static const char *match(MatchState *ms, const char *s, const char *p) {
  if (ms->toocomplex) return NULL;
  if (ms->matchdepth-- == 0 || --ms->steps < 0) {
    ms->toocomplex = 1;
    return NULL;
  }
init:
  if (p != ms->p_end) {
    switch (*p) {
    case '(':
      if (*(p + 1) == ')')
        s = start_capture(ms, s, p + 2, CAP_POSITION);
      else
        s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
      break;
    case ')':
      s = end_capture(ms, s, p + 1);
      break;
    case '$':
      if ((p + 1) != ms->p_end) goto dflt;
      s = (s == ms->src_end) ? s : NULL;
      break;
    case L_ESC:
      switch (*(p + 1)) {
      case 'b':
        s = matchbalance(ms, s, p + 2);
        if (s != NULL) {
          p += 4;
          goto init;
        }
        break;
      case 'f': {
        const char *ep;
        char previous;
        p += 2;
        ep = classend(ms, p);
        previous = (s == ms->src_init) ? '\0' : *(s - 1);
        if (!matchbracketclass(uchar(previous), p, ep - 1) &&
            matchbracketclass(uchar(*s), p, ep - 1)) {
          p = ep;
          goto init;
        }
        s = NULL;
        break;
      }
      case '0': case '1': case '2': case '3': case '4':
      case '5': case '6': case '7': case '8': case '9':
        s = match_capture(ms, s, uchar(*(p + 1)));
        if (s != NULL) {
          p += 2;
          goto init;
        }
        break;
      default:
        goto dflt;
      }
      break;
    default:
    dflt: {
      const char *ep = classend(ms, p);
      if (!singlematch(ms, s, p, ep)) {
        if (*ep == '*' || *ep == '?' || *ep == '-') {
          p = ep + 1;
          goto init;
        }
        s = NULL;
      } else {
        switch (*ep) {
        case '?': {
          const char *res;
          if ((res = match(ms, s + 1, ep + 1)) != NULL) {
            s = res;
          } else {
            p = ep + 1;
            goto init;
          }
          break;
        }
        case '+':
          s++;
          /* FALLTHROUGH */
        case '*':
          s = max_expand(ms, s, p, ep);
          break;
        case '-':
          s = min_expand(ms, s, p, ep);
          break;
        default:
          s++;
          p = ep;
          goto init;
        }
      }
      break;
    }
    }
  }
  ms->matchdepth++;
  return s;
}

static const char *lmemfind(const char *s1, size_t l1, const char *s2,
                            size_t l2) {
  if (l2 == 0) return s1;
  if (l2 > l1) return NULL;
  const char *init;
  l2--;
  l1 = l1 - l2;
  while (l1 > 0 && (init = (const char *)memchr(s1, *s2, l1)) != NULL) {
    init++;
    if (memcmp(init, s2 + 1, l2) == 0) return init - 1;
    l1 -= (size_t)(init - s1);
    s1 = init;
  }
  return NULL;
}

static int nospecials(const char *p, size_t l) {
  size_t upto = 0;
  do {
    if (strpbrk(p + upto, SPECIALS)) return 0;
    upto += strlen(p + upto) + 1;
  } while (upto <= l);
  return 1;
}

/* ---- the checks Lua makes while matching, made before ------------------ */

/* classend's errors: the end of the class at p, or NULL with *err. */
static const char *check_class(const char *p, const char *end,
                               const char **err) {
  switch (*p++) {
  case L_ESC:
    if (p == end) {
      *err = "malformed pattern (ends with '%')";
      return NULL;
    }
    return p + 1;
  case '[':
    if (p < end && *p == '^') p++;
    do {
      if (p >= end) {
        *err = "malformed pattern (missing ']')";
        return NULL;
      }
      if (*(p++) == L_ESC && p < end) p++;
    } while (p >= end || *p != ']');
    return p + 1;
  default:
    return p;
  }
}

const char *sonde_pattern_check(const char *p, size_t lp) {
  static const char *const badindex[] = {
      "invalid capture index %0", "invalid capture index %1",
      "invalid capture index %2", "invalid capture index %3",
      "invalid capture index %4", "invalid capture index %5",
      "invalid capture index %6", "invalid capture index %7",
      "invalid capture index %8", "invalid capture index %9"};
  const char *end = p + lp, *err = NULL;
  int closed[MAXCAPTURES], n = 0;
  if (nospecials(p, lp)) return NULL;   /* a plain search: "a)" is fine */
  if (p < end && *p == '^') p++;
  while (p < end) {
    if (*p == '(') {
      if (n >= MAXCAPTURES) return "too many captures";
      if (p + 1 < end && p[1] == ')') {
        closed[n++] = 1;            /* a position capture */
        p += 2;
      } else {
        closed[n++] = 0;
        p++;
      }
      continue;
    }
    if (*p == ')') {
      int l = n - 1;
      while (l >= 0 && closed[l]) l--;
      if (l < 0) return "invalid pattern capture";
      closed[l] = 1;
      p++;
      continue;
    }
    if (*p == L_ESC && p + 1 < end) {
      char d = p[1];
      if (d == 'b') {
        if (p + 2 >= end - 1) return "malformed pattern (missing arguments "
                                     "to '%b')";
        p += 4;
        continue;
      }
      if (d == 'f') {
        p += 2;
        if (p >= end || *p != '[') return "missing '[' after '%f' in pattern";
        if (!(p = check_class(p, end, &err))) return err;
        continue;
      }
      if (d >= '0' && d <= '9') {
        int l = d - '1';
        if (l < 0 || l >= n || !closed[l]) return badindex[d - '0'];
        p += 2;
        continue;
      }
    }
    const char *ep = check_class(p, end, &err);
    if (!ep) return err;
    p = ep < end && strchr("*+?-", *ep) && *ep ? ep + 1 : ep;
  }
  for (int l = 0; l < n; l++)
    if (!closed[l]) return "unfinished capture";
  return NULL;
}

int sonde_pattern_find(const char *s, size_t ls, const char *p, size_t lp,
                       size_t *start, size_t *end) {
  long steps = MAXSTEPS;
  return sonde_pattern_find_steps(s, ls, p, lp, start, end, &steps);
}

int sonde_pattern_find_steps(const char *s, size_t ls, const char *p,
                             size_t lp, size_t *start, size_t *end,
                             long *steps) {
  if (*steps < 0) return -1;
  if (nospecials(p, lp)) {
    const char *s2 = lmemfind(s, ls, p, lp);
    if (!s2) return 0;
    if (start) *start = (size_t)(s2 - s);
    if (end) *end = (size_t)(s2 - s) + lp;
    return 1;
  }
  MatchState ms;
  const char *s1 = s;
  int anchor = (*p == '^');
  if (anchor) {
    p++;
    lp--;
  }
  ms.matchdepth = MAXCCALLS;
  ms.steps = *steps;
  ms.toocomplex = 0;
  ms.src_init = s;
  ms.src_end = s + ls;
  ms.p_end = p + lp;
  do {
    const char *res;
    ms.level = 0;
    res = match(&ms, s1, p);
    if (ms.toocomplex) {
      *steps = -1;
      return -1;
    }
    if (res != NULL) {
      *steps = ms.steps;
      if (start) *start = (size_t)(s1 - s);
      if (end) *end = (size_t)(res - s);
      return 1;
    }
  } while (s1++ < ms.src_end && !anchor);
  *steps = ms.steps;
  return 0;
}
