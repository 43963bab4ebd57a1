/*
 * lprocstat.c - core.process_stats(): this process's resource use, for the
 * Prometheus process_* metrics (read from /proc, Linux).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lsonde.h"

/* core.process_stats() -> { rss_bytes, cpu_seconds, open_fds,
 * start_time_seconds, max_fds } (fields missing when unreadable) */
static int l_core_process_stats(lua_State *L) {
  long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  lua_createtable(L, 0, 5);
  FILE *f = fopen("/proc/self/statm", "re");
  if (f) {
    unsigned long size, rss;
    if (fscanf(f, "%lu %lu", &size, &rss) == 2) {
      lua_pushnumber(L, (lua_Number)rss * (lua_Number)page);
      lua_setfield(L, -2, "rss_bytes");
    }
    fclose(f);
  }
  char buf[1024];
  f = fopen("/proc/self/stat", "re");
  if (f) {
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the ")" of comm: state is field 3; utime 14, stime 15,
     * starttime 22 */
    char *p = strrchr(buf, ')');
    unsigned long long utime, stime, start;
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                    "%llu %llu %*d %*d %*d %*d %*d %*d %llu",
                    &utime, &stime, &start) == 3) {
      lua_pushnumber(L, (lua_Number)(utime + stime) / (lua_Number)tick);
      lua_setfield(L, -2, "cpu_seconds");
      FILE *s = fopen("/proc/stat", "re");
      unsigned long long btime = 0;
      if (s) {
        char line[256];
        while (fgets(line, sizeof line, s))
          if (sscanf(line, "btime %llu", &btime) == 1) break;
        fclose(s);
      }
      if (btime) {
        lua_pushnumber(L, (lua_Number)btime +
                              (lua_Number)start / (lua_Number)tick);
        lua_setfield(L, -2, "start_time_seconds");
      }
    }
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (e->d_name[0] != '.') n++;
    closedir(d);
    lua_pushinteger(L, n - 1);   /* not the directory's own descriptor */
    lua_setfield(L, -2, "open_fds");
  }
  long maxfd = sysconf(_SC_OPEN_MAX);
  if (maxfd > 0) {
    lua_pushinteger(L, maxfd);
    lua_setfield(L, -2, "max_fds");
  }
  return 1;
}

static const luaL_Reg funcs[] = {{"process_stats", l_core_process_stats},
                                 {NULL, NULL}};

void sonde_open_procstat(lua_State *L) {
  luaL_setfuncs(L, funcs, 0);
}
