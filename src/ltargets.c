/*
 * ltargets.c - what target discovery needs from C (lua/sonde/targets.lua):
 *
 *   core.md5(s) -> the 16-byte MD5 digest of the byte string s (raw
 *     bytes), for Prometheus's `hashmod` relabel action (sharding);
 *   core.file_stamp(path) -> "dev:ino:size:mtime_ns:ctime_ns" | nil, err,
 *     what tells that a file_sd file changed (another inode after a
 *     rename, another size or modification or change time); a path
 *     that is not a regular file (after symlinks) is an error (EINVAL),
 *     as reading a FIFO would block and a device might never end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "lsonde.h"

static int l_core_md5(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (EVP_Digest(s, len, md, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16)
    return luaL_error(L, "core.md5: the MD5 digest failed (OpenSSL)");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

static int l_core_file_stamp(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) {
    int e = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(e));
    lua_pushinteger(L, e);
    return 3;
  }
  if (!S_ISREG(st.st_mode)) {
    /* a FIFO would block the reader (and the loop), a device never end */
    lua_pushnil(L);
    lua_pushfstring(L, "%s: not a regular file", path);
    lua_pushinteger(L, EINVAL);
    return 3;
  }
  char buf[160];
  snprintf(buf, sizeof buf, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld",
           (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
           (long long)st.st_size, (long long)st.st_mtim.tv_sec,
           (long)st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec,
           (long)st.st_ctim.tv_nsec);
  lua_pushstring(L, buf);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"md5", l_core_md5}, {"file_stamp", l_core_file_stamp}, {NULL, NULL}};

void sonde_open_targets(lua_State *L) { luaL_setfuncs(L, funcs, 0); }
