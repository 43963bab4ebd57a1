/*
 * sonde/loop.h - the loop every prober runs on.
 *
 * One sonde_loop wraps one libevent event_base and one libcurl multi handle,
 * and from the first host name a TCP probe resolves on, one evdns resolver
 * (one UDP socket per name server of /etc/resolv.conf).
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
 * (freed with the loop).  The loop's own base has precise timers
 * (EVENT_BASE_FLAG_PRECISE_TIMER: CLOCK_MONOTONIC and a timerfd, one more
 * system call per loop iteration): a timer fires at its deadline, not up
 * to a tick of the coarse clock (1 to 10 ms, the kernel's HZ) later; a
 * base of the caller's is used as it was made.  Calls curl_global_init on
 * first use.  If SIGCHLD is ignored (inherited SIG_IGN), its default
 * disposition is restored: otherwise no command's exit status could be
 * collected.
 * Returns NULL when out of memory or libcurl/libevent fail to initialise. */
struct sonde_loop *sonde_loop_new(struct event_base *base);

/* The priorities of a loop's own base (libevent's event_priority_set):
 * events are made at the default, 1; SONDE_LOOP_PRIO_IDLE is for work
 * that waits for a loop turn in which no other event is active (libevent
 * runs the active events of the best priority only), such as the next
 * step of a streamed HTTP reply, so that probes' timers and I/O never
 * queue behind it.  A base given to sonde_loop_new keeps its own
 * priorities (setting one it lacks fails and changes nothing). */
#define SONDE_LOOP_PRIORITIES 3
#define SONDE_LOOP_PRIO_IDLE 2

/* The event_base the loop runs on. */
struct event_base *sonde_loop_base(struct sonde_loop *loop);

/*
 * Free the loop (not from inside one of its callbacks: its base may be
 * running): cancel every operation (no callbacks are called), kill the
 * process groups of running commands, and of timed-out commands still in
 * their kill_grace (see sonde/exec.h), with SIGKILL and reap them (bounded
 * wait, at most about 1 s), then free the resolver, the curl multi handle
 * and, if the loop created it, the base.  On a base the loop did not
 * create, the resolver's sockets close at once and the rest of it is freed
 * from the base's next loop iteration (libevent still holds notices of the
 * lookups just cancelled, which refer to it).
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
 * sonde_set_subreaper for a loop that also takes care of what its commands
 * leave behind.  While on, every command the loop starts (exec probes,
 * actions, services) gets SONDE_OWNER=<pid>.<loop>.<operation id> in its
 * environment (replacing any inherited one), and sonde_reap_orphans
 * attributes an orphan re-parented to this process to the operation that
 * started it by reading that variable back from /proc/PID/environ (the
 * environment the process was executed with: a process group or session
 * id is changed by setsid, the initial environment is not, except by a
 * process that overwrites its own argument area or execs with another
 * environment, `env -i`: such an orphan belongs to nobody).  Returns 0,
 * or -1 with errno set (prctl).
 */
int sonde_loop_set_subreaper(struct sonde_loop *loop, int on);

/*
 * Reap children of this process that have exited and that nothing here
 * owns: descendants re-parented to a subreaper (daemons that left their
 * group, orphans of services).  A child is left alone when an exec
 * operation owns it or when it is in this process's own process group
 * (io.popen and os.execute children: their pclose/wait reaps them).
 * Returns the number reaped.  The host calls this on SIGCHLD.
 *
 * It also ends escaped processes (orphans re-parented here, not in this
 * process's group, and with each of them its whole tree of descendants):
 *   - an orphan attributed (see sonde_loop_set_subreaper) to a command
 *     that is still running is left alone until that command's operation
 *     has ended (completed or cancelled; a timed-out command's: once its
 *     process has been reaped, after its kill_grace at the latest); then
 *     it gets SIGTERM (and
 *     SIGCONT), and SIGKILL 1 s later, unless an ending started with
 *     sonde_end_orphans for that operation gives another grace;
 *   - an orphan attributed to nobody is left alone, unless an ending of
 *     everything runs (sonde_end_orphans with owner 0).
 * Cost: one read of /proc/self/task/N/children per call, and one read of
 * /proc/PID/environ per orphan the first time it is seen; a tree of
 * descendants is walked only when its orphan is signalled.
 */
int sonde_reap_orphans(struct sonde_loop *loop);

/*
 * End escaped processes (see sonde_reap_orphans): those attributed to the
 * operation `owner`, or, with owner 0, every one (the host's shutdown).
 * Each gets SIGTERM and SIGCONT when it is found, SIGKILL from `grace`
 * seconds after this call on (found later than that: SIGKILL at once);
 * their trees of descendants get the same signals.  The ending is an
 * operation: cb is called (from the loop, never from this call) once none
 * of its processes is left, with owner 0 once no command of the loop runs
 * either, or after grace + 5 s at the latest (a process in
 * uninterruptible sleep; status "unknown", reason "resource").  Several
 * endings may cover one process: the earliest SIGKILL wins.  Without
 * sonde_loop_set_subreaper nothing is re-parented here and only what is
 * already a child of this process is found.  Returns the id, 0 when out
 * of memory.
 */
uint64_t sonde_end_orphans(struct sonde_loop *loop, uint64_t owner,
                           double grace, sonde_result_cb cb, void *arg);

/* Seconds on CLOCK_MONOTONIC. */
double sonde_now(void);

#endif
