/*
 * sonde/exec.h - the exec prober: run a command, classify its exit.
 *
 * kubelet semantics (reference/kubelet-probes.md section 2): argv is run
 * directly, no shell; output is stdout followed by stderr (two pipes, not
 * interleaved), capped at max_output bytes (kubelet: 10240), the rest read
 * and dropped (stderr too: the cap is on both together); exit 0 is success, any other exit is failure; a timeout is a
 * failure whose output, when the command printed nothing, is
 * `command timed out: "<argv>" timed out after <d>`.
 *
 * sonde's differences (hygiene): the command runs in a new process group
 * with default signal dispositions, an empty signal mask, /dev/null on
 * stdin (or a pipe fed with `input`, see sonde_exec_opts) and no
 * inherited descriptor above 2.  When the command exits, the
 * rest of its group is killed (SIGKILL) so that background children cannot
 * hold the result back: at once when the command's pipes end with it (the
 * common case), else at the latest 50 ms after its start (a background
 * process of its group holding the pipes; from then on its exit is
 * watched through a pidfd, Linux 5.3, or polled every 20 ms without).
 * The command's own process is always reaped;
 * orphaned descendants are reaped too when the process is a child subreaper
 * (sonde_set_subreaper).  A command that cannot be found or run is a
 * failure (reason not_found / permission / spawn), not unknown; the engine
 * running out of descriptors or processes is unknown (reason resource).
 *
 * Timeout (as kubelet): the result comes at the deadline, with the
 * output read so far (what the pipes hold at the deadline included) and
 * no exit code or signal; the pipes are closed then.  The group gets
 * SIGTERM at the deadline and the loop takes it over: SIGKILL kill_grace
 * seconds later, or as soon as the command's own process has exited,
 * whichever comes first; then the reaping (polled every 20 ms).  Until
 * that process is reaped the loop owns the group: sonde_loop_free and
 * sonde_exec_kill_all still reach it, an ending of escaped processes
 * (sonde_end_orphans) covering it SIGKILLs it at its own deadline, the
 * escaped processes the command left behind are ended only once it is
 * gone (see sonde_reap_orphans), and the loop keeps running (it has a
 * timer) until it is.  sonde_exec_terminate and runs without a deadline
 * (services) are not concerned: their result comes when the process has
 * exited.
 *
 * Floods: each pipe is read at most 4 x 16 KiB per wake-up of the loop,
 * so a command writing without pause never holds the loop for long.  A
 * pipe that filled that budget (a flood) is then paused for 5 ms (its read
 * event removed; one timer per run, no allocation) before it is read
 * again: a flood costs the engine at most 64 KiB per 5 ms per pipe (about
 * 12 MB/s), and the command waits on its full pipe meanwhile
 * (back-pressure).  This applies to output kept, dropped past max_output,
 * and streamed to on_output alike (services get all their output, rate
 * limited).  A command that writes a few MB and exits still finishes with
 * its exit code (5 MB: about 0.4 s).  A deadline that fires after the
 * command has exited (its exit not yet seen: the process running the loop
 * was stopped, SIGSTOP/SIGCONT, or starved) is handled as that exit, with
 * the normal result, not as a timeout.
 */
#ifndef SONDE_EXEC_H
#define SONDE_EXEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sonde/loop.h"

#define SONDE_MAX_OUTPUT_DEFAULT 10240 /* bytes, kubelet maxReadLength */
#define SONDE_MAX_INPUT 1048576        /* bytes of `input`, at most (1 MiB) */

/* Receives output as it arrives when set in sonde_exec_opts (services):
 * `stream` is 1 for stdout, 2 for stderr.  It may cancel the operation
 * (sonde_loop_cancel with `id`): no more output is delivered and the
 * result callback is never called. */
typedef void (*sonde_output_cb)(uint64_t id, int stream, const char *data,
                                size_t len, void *arg);

struct sonde_exec_opts {
  char *const *argv;     /* NULL-terminated; argv[0] without '/' is looked
                            up in PATH of envp (or the host's PATH) */
  char *const *envp;     /* NULL-terminated child environment */
  const char *cwd;       /* working directory, or NULL to inherit */
  double timeout;        /* seconds; 0 = no deadline (services); the
                            result comes at the deadline (see above) */
  double kill_grace;     /* seconds between SIGTERM and SIGKILL after the
                            deadline (the loop kills; default 1) */
  size_t max_output;     /* bytes of stdout+stderr kept */
  sonde_status codes[256];      /* status for each exit code */
  sonde_status timeout_status;  /* status of a timed-out run (failure) */
  sonde_output_cb on_output;    /* stream output instead of keeping it */
  void *output_arg;
  /* stdin: NULL for /dev/null (the default); else the child's stdin is a
   * pipe fed these input_len bytes (NULs allowed; copied at start) from
   * the loop without blocking, then closed (EOF; at once when input_len
   * is 0).  A child that exits or closes its stdin before reading it all
   * just loses the rest: EPIPE is ignored and never raises SIGPIPE in
   * this process.  Bytes not yet written when the command exits are
   * dropped.  More than SONDE_MAX_INPUT bytes: the run fails at once
   * (failure, reason spawn, code E2BIG). */
  const char *input;
  size_t input_len;
};

/* Fill opts with the defaults: timeout 1 s, kill_grace 1 s, max_output
 * 10240, kubelet codes (0 success, else failure), timeout -> failure. */
void sonde_exec_opts_init(struct sonde_exec_opts *opts);

/*
 * Start the command.  The options are copied; the caller may free them on
 * return.  cb gets the result from the loop: status/reason as above,
 * output, exit_code+exited or signal, pid, truncated, duration.
 * Returns the operation id (see sonde_loop_cancel), or 0 when out of
 * memory (cb is then never called).
 */
uint64_t sonde_exec_start(struct sonde_loop *loop,
                          const struct sonde_exec_opts *opts,
                          sonde_result_cb cb, void *arg);

/*
 * Stop a running command: SIGTERM to its process group, SIGKILL after
 * `grace` seconds.  Its callback then reports how it ended (reason signal
 * or exit_code; never timeout).  Returns 0, or -1 if `id` is not a running
 * exec operation.
 */
int sonde_exec_terminate(struct sonde_loop *loop, uint64_t id, double grace);

/* The pid (= process group) of running exec operation `id`, or 0. */
pid_t sonde_exec_pid(struct sonde_loop *loop, uint64_t id);

/* Send `sig` to the process group of every running command (services
 * included) and of every timed-out command the loop is still ending
 * (within its kill_grace); returns how many.  For a host that must exit
 * at once. */
int sonde_exec_kill_all(struct sonde_loop *loop, int sig);

#endif
