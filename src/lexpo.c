/*
 * lexpo.c - the Lua binding of the exposition (include/sonde/expo.h): the
 * series of many declared probes written a slice at a time.
 *
 *   core.expo_family(name, type, help) -> index
 *       The index of family `name`: one of sonde's own (expo.h's list), or
 *       a family of another name (a blackbox_exporter module probe's),
 *       registered with its type and HELP text at its first call and
 *       written after sonde's probe families up to probe_tls_cipher_info.
 *       Indexes key a worker's set_series_extras table.
 *   core.expo_stream(workers [, more]) -> stream
 *       `workers`: a list of core.worker userdata in the order their lines
 *       are to be written (the load's probes).  The stream holds the list
 *       (and so the workers) until it is collected.  `more`: text given
 *       after the probes' families, or a function returning it (called
 *       once, when the probes' families are done; its error is raised by
 *       that read).
 *   stream:read(max_bytes) -> text | nil
 *       The next lines, about max_bytes of them (at least one probe's
 *       lines of one family, whole lines always), or nil once everything
 *       was read.
 *   core.expo_number(v), core.expo_float(v), core.expo_escape(s) -> text
 *       A sample value, Go's FormatFloat(v, 'g', -1, 64) and a label value
 *       escaped, as the streams print them (sonde/expo.h); for checking
 *       them against sonde.metrics.  Each family's HELP and TYPE come before its first line.
 *       Values are read when their family's turn comes: a probe whose
 *       run ends between two reads shows its new values in the families
 *       read after it (the text stays valid: each family has each probe's
 *       lines once).  A worker without set_series is left out.
 *
 * Cost: a read is bounded by max_bytes of text (plus one probe's lines),
 * so a caller that reads 64 KiB per loop turn never holds the loop for
 * long, whatever the number of probes.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "lsonde.h"
#include "sonde/expo.h"

#define STREAM_MT "sonde.ExpoStream"

/* Registry: the families registered by name (not sonde's own). */
static const char families_key = 'F';

struct dynfam {
  const char *name, *type, *help;   /* anchored in the registry table */
};

struct dynfams {
  int n, cap;
  struct dynfam *f;
};

static struct dynfams *dynfams(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &families_key);
  struct dynfams *d = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return d;
}

static int dynfams_gc(lua_State *L) {
  struct dynfams *d = lua_touserdata(L, 1);
  free(d->f);
  d->f = NULL;
  d->n = d->cap = 0;
  return 0;
}

/* core.expo_family(name, type, help) -> index */
static int l_expo_family(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  luaL_checkstring(L, 3);
  for (int f = 0; f < SONDE_EXPO__COUNT; f++) {
    if (strcmp(sonde_expo_family(f)->name, name) == 0) {
      lua_pushinteger(L, f);
      return 1;
    }
  }
  struct dynfams *d = dynfams(L);
  for (int i = 0; i < d->n; i++) {
    if (strcmp(d->f[i].name, name) == 0) {
      lua_pushinteger(L, SONDE_EXPO__COUNT + i);
      return 1;
    }
  }
  if (d->n == d->cap) {
    int cap = d->cap ? d->cap * 2 : 16;
    struct dynfam *f = realloc(d->f, (size_t)cap * sizeof *f);
    if (!f) return luaL_error(L, "sonde: out of memory");
    d->f = f;
    d->cap = cap;
  }
  /* anchor the three strings: the userdata's user value, a list */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &families_key);
  lua_getiuservalue(L, -1, 1);
  for (int k = 1; k <= 3; k++) {
    lua_pushvalue(L, k);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  }
  lua_pop(L, 2);
  d->f[d->n].name = lua_tostring(L, 1);
  d->f[d->n].type = lua_tostring(L, 2);
  d->f[d->n].help = lua_tostring(L, 3);
  lua_pushinteger(L, SONDE_EXPO__COUNT + d->n);
  d->n++;
  return 1;
}

/* ---- streams -------------------------------------------------------------- */

struct stream {
  int n;                        /* workers */
  struct lworker **w;
  int *order, norder;           /* family indexes in writing order */
  int oi, bi;                   /* where the next read goes on */
  int header;                   /* order[oi]'s HELP and TYPE written */
  int more_done;                /* `more` given */
  struct sonde_expo_buf out, lines;
};

static void stream_free(struct stream *s) {
  free(s->w);
  free(s->order);
  free(s->out.p);
  free(s->lines.p);
  s->w = NULL;
  s->order = NULL;
  s->out.p = s->lines.p = NULL;
  s->n = s->norder = 0;
}

static int stream_gc(lua_State *L) {
  stream_free(luaL_checkudata(L, 1, STREAM_MT));
  return 0;
}

/* core.expo_stream(workers [, more]) -> stream */
static int l_expo_stream(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TSTRING)
    luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  int n = (int)luaL_len(L, 1);
  struct dynfams *d = dynfams(L);
  struct stream *s = lua_newuserdatauv(L, sizeof *s, 2);     /* 3 */
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, STREAM_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 3, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 3, 2);
  s->w = calloc(n > 0 ? (size_t)n : 1, sizeof *s->w);
  s->order = calloc((size_t)(SONDE_EXPO__COUNT + d->n), sizeof *s->order);
  if (!s->w || !s->order) return luaL_error(L, "sonde: out of memory");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    s->w[i] = sonde_lworker_test(L, -1);
    if (!s->w[i])
      return luaL_error(L, "core.expo_stream: workers[%d]: a worker "
                        "expected, got %s", i + 1, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  s->n = n;
  /* sonde's families up to the TLS ones, the others by name, the rest */
  int k = 0;
  for (int f = 0; f <= SONDE_EXPO_TLS_CIPHER; f++) s->order[k++] = f;
  for (int i = 0; i < d->n; i++) s->order[k++] = SONDE_EXPO__COUNT + i;
  for (int f = SONDE_EXPO_TLS_CIPHER + 1; f < SONDE_EXPO__COUNT; f++)
    s->order[k++] = f;
  s->norder = k;
  return 1;
}

static void family_header(lua_State *L, struct stream *s, int f) {
  if (f < SONDE_EXPO__COUNT) {
    const struct sonde_expo_family *fam = sonde_expo_family(f);
    sonde_expo_header(&s->out, fam->name, fam->type, fam->help);
    return;
  }
  struct dynfams *d = dynfams(L);
  const struct dynfam *fam = &d->f[f - SONDE_EXPO__COUNT];
  sonde_expo_header(&s->out, fam->name, fam->type, fam->help);
}

/* Fill s->out with the next lines (about max bytes); at the end of the
 * families, the text of the stream's `more` (user value 2: a string, or a
 * function called once, whose error propagates).  Returns 0 once
 * everything was given (s->out empty). */
static int stream_fill(lua_State *L, int idx, struct stream *s, size_t max) {
  idx = lua_absindex(L, idx);
  if (max < 1) max = 1;
  s->out.n = 0;
  int top = lua_gettop(L);
  lua_getiuservalue(L, idx, 1);                             /* the list */
  int list = lua_gettop(L);
  while (s->oi < s->norder && s->out.n < max) {
    int f = s->order[s->oi];
    if (!s->header && f < SONDE_EXPO__COUNT && sonde_expo_family(f)->always) {
      family_header(L, s, f);
      s->header = 1;
    }
    for (; s->bi < s->n && s->out.n < max; s->bi++) {
      struct sonde_expo_probe p;
      int v = sonde_lworker_view(s->w[s->bi], &p);
      if (!v) continue;
      s->lines.n = 0;
      if (f < SONDE_EXPO__COUNT) sonde_expo_lines(&s->lines, f, &p);
      if (v == 2) {                      /* lines set from Lua */
        lua_rawgeti(L, list, s->bi + 1);
        if (sonde_lworker_extras(L, lua_gettop(L), f)) {
          size_t len;
          const char *t = lua_tolstring(L, -1, &len);
          sonde_expo_add(&s->lines, t, len);
          lua_pop(L, 1);
        }
        lua_pop(L, 1);
      }
      if (!s->lines.n) continue;
      if (!s->header) {
        family_header(L, s, f);
        s->header = 1;
      }
      sonde_expo_add(&s->out, s->lines.p, s->lines.n);
    }
    if (s->bi >= s->n) {
      s->oi++;
      s->bi = 0;
      s->header = 0;
    }
  }
  lua_settop(L, top);
  if (s->out.oom || s->lines.oom) return luaL_error(L, "sonde: out of memory");
  if (s->out.n == 0 && s->oi >= s->norder && !s->more_done) {
    s->more_done = 1;
    int t = lua_getiuservalue(L, idx, 2);
    if (t == LUA_TFUNCTION) {
      lua_call(L, 0, 1);
      t = lua_type(L, -1);
    }
    if (t == LUA_TSTRING) {
      size_t len;
      const char *m = lua_tolstring(L, -1, &len);
      sonde_expo_add(&s->out, m, len);
    } else if (t != LUA_TNIL) {
      return luaL_error(L, "core.expo_stream: more: a string expected, got %s",
                        lua_typename(L, t));
    }
    lua_pop(L, 1);
    if (s->out.oom) return luaL_error(L, "sonde: out of memory");
  }
  return s->out.n > 0;
}

/* The stream at 1 with its next slice in s->out (about arg 2's bytes,
 * default 65536), or NULL (nil pushed) once everything was given. */
static struct stream *next_slice(lua_State *L, lua_Integer *max) {
  struct stream *s = luaL_checkudata(L, 1, STREAM_MT);
  *max = luaL_optinteger(L, 2, 65536);
  lua_settop(L, 1);
  if (stream_fill(L, 1, s, *max > 0 ? (size_t)*max : 1)) return s;
  stream_free(s);
  lua_pushnil(L);
  return NULL;
}

/* stream:read(max_bytes) -> text | nil */
static int stream_read(lua_State *L) {
  lua_Integer max;
  struct stream *s = next_slice(L, &max);
  if (!s) return 1;
  lua_pushlstring(L, s->out.p, s->out.n);
  /* a large buffer is not kept between reads */
  if (s->out.cap > (size_t)max * 4) {
    free(s->out.p);
    s->out.p = NULL;
    s->out.cap = 0;
  }
  return 1;
}

int sonde_lexpo_step(lua_State *L) {
  lua_Integer max;
  struct stream *s = next_slice(L, &max);
  if (!s) return 1;
  lua_pushlightuserdata(L, s->out.p);
  lua_pushinteger(L, (lua_Integer)s->out.n);
  return 2;
}

int sonde_lexpo_is_stream(lua_State *L, int idx) {
  return luaL_testudata(L, idx, STREAM_MT) != NULL;
}

/* core.expo_number(v) -> text: a sample value as the exposition prints it */
static int l_expo_number(lua_State *L) {
  char buf[40];
  size_t n = sonde_expo_number(buf, luaL_checknumber(L, 1));
  lua_pushlstring(L, buf, n);
  return 1;
}

/* core.expo_float(v) -> text: Go's FormatFloat(v, 'g', -1, 64) */
static int l_expo_float(lua_State *L) {
  char buf[40];
  size_t n = sonde_expo_float(buf, luaL_checknumber(L, 1));
  lua_pushlstring(L, buf, n);
  return 1;
}

/* core.expo_escape(s) -> the label value escaped */
static int l_expo_escape(lua_State *L) {
  size_t n;
  const char *v = luaL_checklstring(L, 1, &n);
  struct sonde_expo_buf b = {0};
  sonde_expo_escape(&b, v, n);
  if (b.oom) {
    free(b.p);
    return luaL_error(L, "sonde: out of memory");
  }
  lua_pushlstring(L, b.p ? b.p : "", b.n);
  free(b.p);
  return 1;
}

static const luaL_Reg stream_methods[] = {{"read", stream_read}, {NULL, NULL}};

static const luaL_Reg funcs[] = {{"expo_family", l_expo_family},
                                 {"expo_stream", l_expo_stream},
                                 {"expo_number", l_expo_number},
                                 {"expo_float", l_expo_float},
                                 {"expo_escape", l_expo_escape},
                                 {NULL, NULL}};

void sonde_open_expo(lua_State *L) {
  if (luaL_newmetatable(L, STREAM_MT)) {
    lua_pushcfunction(L, stream_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, stream_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &families_key);
  int have = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!have) {
    struct dynfams *d = lua_newuserdatauv(L, sizeof *d, 1);
    memset(d, 0, sizeof *d);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, dynfams_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &families_key);
  }
  luaL_setfuncs(L, funcs, 0);
}
