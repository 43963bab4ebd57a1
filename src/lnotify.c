/*
 * lnotify.c - core.sd_notify(state): the systemd notification protocol
 * (sd_notify(3)) spoken directly: one datagram to $NOTIFY_SOCKET, a path
 * or, with a leading '@', an abstract socket.  No libsystemd needed.
 *
 *   core.sd_notify("READY=1") -> true | false (no NOTIFY_SOCKET) | nil, err
 *   core.watchdog_usec() -> microseconds | nil  ($WATCHDOG_USEC for us)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lsonde.h"

static int l_core_sd_notify(lua_State *L) {
  size_t n;
  const char *state = luaL_checklstring(L, 1, &n);
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) {
    lua_pushboolean(L, 0);
    return 1;
  }
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t plen = strlen(path);
  if (plen >= sizeof sa.sun_path) {
    luaL_pushfail(L);
    lua_pushliteral(L, "NOTIFY_SOCKET is too long");
    return 2;
  }
  memcpy(sa.sun_path, path, plen);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0';   /* abstract */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    luaL_pushfail(L);
    lua_pushstring(L, strerror(err));
    return 2;
  }
  ssize_t w = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa,
                     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen));
  int err = errno;
  close(fd);
  if (w < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "NOTIFY_SOCKET %s: %s", path, strerror(err));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* The watchdog interval systemd asked of this process, if any
 * (WATCHDOG_USEC, and WATCHDOG_PID when set must be our pid). */
static int l_core_watchdog_usec(lua_State *L) {
  const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
  long long v = usec ? strtoll(usec, NULL, 10) : 0;
  if (v <= 0 || (pid && *pid && strtol(pid, NULL, 10) != (long)getpid())) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

static const luaL_Reg funcs[] = {{"sd_notify", l_core_sd_notify},
                                 {"watchdog_usec", l_core_watchdog_usec},
                                 {NULL, NULL}};

void sonde_open_notify(lua_State *L) {
  luaL_setfuncs(L, funcs, 0);
}
