/*
 * sonde/exec.h - the exec prober: run a command, classify its exit.
 *
 * kubelet semantics (reference/kubelet-probes.md section 2): argv is run
 * directly, no shell; output is stdout followed by stderr (two pipes, not
 * interleaved), capped at max_output bytes (kubelet: 10240), the rest read
 * and dropped; exit 0 is success, any other exit is failure; a timeout is a
 * failure whose output, when the command printed nothing, is
 * `command timed out: "<argv>" timed out after <d>`.
 *
 * sonde's differences (hygiene): the command runs in a new process group
 * with default signal dispositions, an empty signal mask, /dev/null on
 * stdin (or a pipe fed with `input`, see sonde_exec_opts) and no
 * inherited descriptor above 2.  When the command exits, the
 * rest of its group is killed (SIGKILL) so that background children cannot
 * hold the result back; on timeout the group gets SIGTERM, then SIGKILL
 * after kill_grace seconds.  The command's own process is always reaped;
 * orphaned descendants are reaped too when the process is a child subreaper
 * (sonde_set_subreaper).  A command that cannot be found or run is a
 * failure (reason not_found / permission / spawn), not unknown; the engine
 * running out of descriptors or processes is unknown (reason resource).
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
  double timeout;        /* seconds; 0 = no deadline (services) */
  double kill_grace;     /* seconds between SIGTERM and SIGKILL */
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
 * included); returns how many.  For a host that must exit at once. */
int sonde_exec_kill_all(struct sonde_loop *loop, int sig);

#endif
