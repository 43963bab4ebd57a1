/*
 * logq.h - messages from C to sonde.log: a bounded, rate-limited queue in
 * C, flushed from the loop into the Lua handler set with core.on_log.
 *
 * C code that wants to log (libevent's own messages, the endpoint's
 * listener) cannot call into Lua where it stands: it may be deep inside
 * libevent, or inside a Lua call already.  It pushes a message here; an
 * event on the loop delivers the queued messages later, on the main
 * thread, through sonde_lua_pcall (see lsonde.h), only while a core.run()
 * is in progress.
 *
 * Bounds: at most SONDE_LOGQ_RATE messages are queued per second and at
 * most SONDE_LOGQ_CAP wait at once; texts are cut at SONDE_LOGQ_TEXT
 * bytes.  What does not fit is counted: the next delivered message carries
 * the count (`dropped`), and when nothing follows, a `log_dropped` message
 * with the count comes at the end of the second.
 */
#ifndef SONDE_LOGQ_H
#define SONDE_LOGQ_H

#include <lua.h>

#define SONDE_LOGQ_RATE 10
#define SONDE_LOGQ_CAP 32
#define SONDE_LOGQ_TEXT 512

enum sonde_log_level {
  SONDE_LOG_DEBUG,
  SONDE_LOG_INFO,
  SONDE_LOG_WARN,
  SONDE_LOG_ERROR
};

/* Queue one message: `event` is the log event's name (at most 31 bytes),
 * the text is printf-formatted.  Never calls into Lua, never blocks;
 * process-wide (libevent's log callback is). */
void sonde_logq_push(enum sonde_log_level level, const char *event,
                     const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Register core.on_log into the table on top (upvalue: the loop userdata
 * below it, as for sonde_open_httpd), and send libevent's own messages
 * (event_set_log_callback) to the queue instead of stderr. */
void sonde_open_logq(lua_State *L);

#endif
