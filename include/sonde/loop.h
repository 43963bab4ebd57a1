/*
 * sonde/loop.h - the loop every prober runs on.
 *
 * One sonde_loop wraps one libevent event_base and one libcurl multi handle.
 * Probers started on it (sonde_exec_start, sonde_http_start,
 * sonde_tcp_start) are "operations": each gets an id, runs without blocking,
 * and ends by calling its callback once from inside event_base_loop(), unless
 * it is cancelled first.  Nothing here is thread-safe: use a loop from the
 * thread that runs its base.
 */
#ifndef SONDE_LOOP_H
#define SONDE_LOOP_H

#include <stdint.h>
#include "sonde/result.h"

struct event_base;

/* The longest wait any timer or timeout takes, in seconds (about 31
 * years); longer ones are clamped. */
#define SONDE_MAX_SECONDS 1e9
struct sonde_loop;

/* Create a loop on `base`, or on a new base of its own when `base` is NULL
 * (freed with the loop).  Calls curl_global_init on first use.  If SIGCHLD
 * is ignored (inherited SIG_IGN), its default disposition is restored:
 * otherwise no command's exit status could be collected.
 * Returns NULL when out of memory or libcurl/libevent fail to initialise. */
struct sonde_loop *sonde_loop_new(struct event_base *base);

/* The event_base the loop runs on. */
struct event_base *sonde_loop_base(struct sonde_loop *loop);

/*
 * Free the loop (not from inside one of its callbacks: its base may be
 * running): cancel every operation (no callbacks are called), kill the
 * process groups of running commands with SIGKILL and reap them (bounded
 * wait, at most about 1 s), then free the curl multi handle and, if the loop
 * created it, the base.
 */
void sonde_loop_free(struct sonde_loop *loop);

/* Cancel operation `id`: its callback is never called, its resources are
 * released now (an exec probe's process group is killed and reaped in the
 * background).  Returns 1 if the operation was pending, 0 if unknown/done.
 * Safe from inside any callback of the loop: an operation is never freed
 * while one of its own callbacks runs (cancelled from its own output
 * callback, it is freed when that callback returns; from inside its own
 * result callback it is already done, and this returns 0). */
int sonde_loop_cancel(struct sonde_loop *loop, uint64_t id);

/* Number of operations in flight (started, callback not yet called). */
size_t sonde_loop_pending(struct sonde_loop *loop);

/*
 * Start a timer operation: after `seconds` (>= 0) call cb with a result whose
 * status is success and reason "ok".  Returns the operation id, or 0 when
 * out of memory.
 */
uint64_t sonde_timer_start(struct sonde_loop *loop, double seconds,
                           sonde_result_cb cb, void *arg);

/*
 * Make the process a child subreaper (prctl PR_SET_CHILD_SUBREAPER) or stop
 * being one.  While it is one, descendants that exec probes leave behind are
 * re-parented to this process, and the exec prober reaps them by process
 * group after killing the group.  Returns 0, or -1 with errno set.
 */
int sonde_set_subreaper(int on);

/*
 * Reap children of this process that have exited and that nothing here
 * owns: descendants re-parented to a subreaper (daemons that left their
 * group, orphans of services).  A child is left alone when an exec
 * operation owns it or when it is in this process's own process group
 * (io.popen and os.execute children: their pclose/wait reaps them).
 * Returns the number reaped.  The host calls this on SIGCHLD.
 */
int sonde_reap_orphans(struct sonde_loop *loop);

/* Seconds on CLOCK_MONOTONIC. */
double sonde_now(void);

#endif
