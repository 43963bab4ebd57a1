/*
 * exec.c - the exec prober (include/sonde/exec.h).
 *
 * Life of a run:
 *   start: look the command up (PATH), make two pipes (O_CLOEXEC, parent
 *          ends non-blocking; a third for stdin when there is input),
 *          posix_spawn it into a new process group, arm the op's one
 *          timer: the check-in (CHECK_IN_SECONDS) or the deadline,
 *          whichever comes first.  The checks that name a start failure
 *          (argv[0] found and executable, cwd a directory) are made only
 *          when posix_spawn has failed: a run that starts costs no stat().
 *   write: feed `input` to the stdin pipe when writable, one write() per
 *          wake-up, SIGPIPE blocked; close it after the last byte or on
 *          any error (EPIPE: the child does not read).
 *   read:  keep the first max_output bytes of each pipe, drop the rest;
 *          at most READS_PER_WAKE reads per wake-up; a pipe that filled
 *          them all (a flood) is paused: its read event is removed and the
 *          op's resume timer reads it again PAUSE_USEC later (and keeps
 *          doing so while it floods), so a flood costs the loop at most
 *          64 KiB per pipe per 5 ms and the writer waits on its full pipe.
 *   exit:  noticed (1) when both pipes are at EOF (the other pipe is
 *          read at once when one ends: a command closes both as it
 *          exits): the leader is a zombie (waitid WNOWAIT, not reaped);
 *          or not yet (it closes its pipes a little before it is one, or
 *          it closed them and runs on): its pidfd is watched from then on;
 *          (2) at the check-in, for a command still running then: its
 *          pidfd is watched from then on (fallback: poll waitid every
 *          20 ms), so a leader that exited while a background process of
 *          its group holds the pipes is seen CHECK_IN_SECONDS after its
 *          start at the latest; (3) at the deadline.  Most commands end
 *          before the check-in and are zombies when their pipes end: most
 *          runs open no pidfd and arm no timer but their one.  Then:
 *          SIGKILL the rest of the group while the leader is still an
 *          unreaped zombie (its pgid cannot be recycled yet), reap the
 *          leader, give the pipes a short drain deadline.
 *   deadline: take what the pipes hold now, SIGTERM the group and hand
 *          it over to the loop (sonde_loop_end_group: SIGKILL after
 *          kill_grace, reaping), and finish at once: the timeout result
 *          comes at the deadline.  Unless the leader has already exited
 *          (exit not yet seen: a stalled host), which is then handled as
 *          an exit, not a timeout.
 *   terminate: SIGTERM the group, SIGKILL after the grace (same timer),
 *          the result when the leader has exited.
 *   done:  exit status known and both pipes at EOF (or drained); or the
 *          deadline.
 *
 * Ownership: struct exec_op owns its fds, events and buffers; all are
 * released in exec_release, before the result callback runs.  Its events
 * (embedded, event_assign) and the command line for messages live in the
 * op's own allocation: one malloc per run.  It owns its
 * process group until the leader is reaped, or until the deadline hands
 * the group over to the loop (`handed`); a cancelled op SIGKILLs the group
 * and leaves the reaping to the loop too.  The output
 * callback of a streaming run is called with the op held (internal.h): if
 * it cancels the op, on_pipe stops reading and the op is freed when the
 * callback returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event_struct.h>

#include "internal.h"
#include "sonde/exec.h"

#define DRAIN_SECONDS 0.5 /* pipe drain after the command's exit */
#define READ_CHUNK 16384  /* bytes per read() */
#define READS_PER_WAKE 4  /* read() calls per wake-up of a pipe: a command
                             writing without pause must not hold the loop;
                             the pipe's event is level-triggered, so what is
                             left is read at the next loop iteration */
#define PAUSE_USEC 5000   /* a flooding pipe's pause between two reads: caps
                             a flood at 64 KiB per 5 ms per pipe */
#define POLL_USEC 20000   /* waitpid poll when pidfd_open is unavailable */
#define CHECK_IN_SECONDS 0.05 /* a command still running then gets its exit
                                 watched (pidfd) */

extern char **environ;

struct pipe_buf {
  int fd;
  struct event *ev;          /* read event (set with fd); removed while
                                paused */
  int paused;                /* flooding: read again by the resume timer */
  char *data;                /* grows up to max_output */
  size_t len, cap;
};

struct exec_op {
  struct sonde_op op;
  pid_t pid;
  int pidfd;
  int watch;                 /* exit watched: 0 no, 1 pidfd, 2 poll */
  int final;                 /* the timer is armed for the deadline itself
                                (not the check-in) */
  double deadline;           /* sonde_now() of the deadline; 0: none */
  struct event *exit_ev;     /* pidfd readable, or the poll timer */
  struct event *timer;       /* check-in, deadline, then grace, then
                                drain */
  struct event *resume;      /* reads paused (flooding) pipes again */
  struct pipe_buf out[2];    /* stdout, stderr */
  size_t max_output;
  int truncated;
  int exited;                /* leader reaped; wstatus valid */
  int wstatus;
  int timed_out;
  int term_sent;
  int lost;                  /* the exit status could not be collected */
  int handed;                /* timed out: the loop ends the group now */
  double kill_grace;
  sonde_status timeout_status;
  char *cmdline;             /* argv joined by spaces, for messages (in
                                the op's allocation) */
  double timeout;
  sonde_output_cb on_output;
  void *output_arg;
  int in_fd;                 /* write end of the stdin pipe, or -1 */
  struct event *in_ev;
  char *input;               /* what is left to write: input + in_off */
  size_t input_len, in_off;
  /* the events' storage (event_assign): a pointer above is set once its
   * event has been assigned */
  struct event timer_ev, resume_ev, exit_ev_s, out_ev[2], in_ev_s;
  sonde_status codes[256];   /* last: not zeroed (copied from the opts) */
};

void sonde_exec_opts_init(struct sonde_exec_opts *o) {
  memset(o, 0, sizeof *o);
  o->timeout = 1;
  o->kill_grace = 1;
  o->max_output = SONDE_MAX_OUTPUT_DEFAULT;
  o->codes[0] = SONDE_SUCCESS;
  for (int i = 1; i < 256; i++) o->codes[i] = SONDE_FAILURE;
  o->timeout_status = SONDE_FAILURE;
}

static void close_pipe(struct pipe_buf *p) {
  if (p->ev) event_del(p->ev);
  p->ev = NULL;
  p->paused = 0;
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
}

static void close_stdin(struct exec_op *x) {
  if (x->in_ev) event_del(x->in_ev);
  x->in_ev = NULL;
  if (x->in_fd >= 0) close(x->in_fd);
  x->in_fd = -1;
  free(x->input);
  x->input = NULL;
}

static void exec_release(struct sonde_op *op, int cancelled) {
  struct exec_op *x = (struct exec_op *)op;
  close_stdin(x);
  if (x->pid > 0 && !x->exited && !x->handed) {
    /* Cancelled (or torn down) while running: kill the whole group and
     * leave the leader and the rest to the background reaper. */
    kill(-x->pid, SIGKILL);
    sonde_loop_reap_group(op->loop, x->pid);
  }
  (void)cancelled;
  if (x->exit_ev) event_del(x->exit_ev);
  if (x->timer) event_del(x->timer);
  if (x->resume) event_del(x->resume);
  x->exit_ev = x->timer = x->resume = NULL;
  x->watch = 0;
  if (x->pidfd >= 0) close(x->pidfd);
  x->pidfd = -1;
  for (int i = 0; i < 2; i++) {
    close_pipe(&x->out[i]);
    free(x->out[i].data);
    x->out[i].data = NULL;
  }
}

static const struct sonde_op_vtable exec_vt = {"exec", exec_release};

/* Go-style duration text: 500ms, 1s, 1.5s, 2m0s. */
static void format_duration(char *out, size_t n, double s) {
  if (s < 1)
    snprintf(out, n, "%gms", s * 1000);
  else if (s < 60)
    snprintf(out, n, "%gs", s);
  else
    snprintf(out, n, "%dm%gs", (int)(s / 60), s - 60 * (int)(s / 60));
}

/* Build the result from what was collected and complete the op. */
static void finish(struct exec_op *x) {
  struct sonde_result *r = &x->op.res;
  size_t n0 = x->out[0].len, n1 = x->out[1].len;
  if (n0 + n1 > x->max_output) {
    n1 = x->max_output > n0 ? x->max_output - n0 : 0;
    if (n0 > x->max_output) n0 = x->max_output;
    x->truncated = 1;
  }
  char *buf = malloc(n0 + n1 + 1);
  if (buf) {
    if (n0) memcpy(buf, x->out[0].data, n0);
    if (n1) memcpy(buf + n0, x->out[1].data, n1);
    buf[n0 + n1] = '\0';
    r->output = buf;
    r->output_len = n0 + n1;
  }
  r->pid = x->pid;
  r->truncated = x->truncated;
  if (x->exited && !x->lost && WIFEXITED(x->wstatus)) {
    r->exited = 1;
    r->exit_code = WEXITSTATUS(x->wstatus);
  } else if (x->exited && !x->lost && WIFSIGNALED(x->wstatus)) {
    r->signal = WTERMSIG(x->wstatus);
  }
  if (x->timed_out) {
    char d[32];
    format_duration(d, sizeof d, x->timeout);
    r->status = x->timeout_status;
    r->reason = SONDE_R_TIMEOUT;
    sonde_result_set_error(r, "command timed out: \"%s\" timed out after %s",
                           x->cmdline ? x->cmdline : "", d);
    if (r->output_len == 0 && r->error)
      sonde_result_set_output(r, r->error, strlen(r->error));
  } else if (x->lost) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    r->exited = 0;
    sonde_result_set_error(r, "the exit status was lost (reaped elsewhere; "
                              "is SIGCHLD ignored?)");
  } else if (r->exited) {
    r->status = x->codes[r->exit_code & 255];
    r->reason = r->status == SONDE_SUCCESS ? SONDE_R_OK : SONDE_R_EXIT_CODE;
  } else {
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_SIGNAL;
    sonde_result_set_error(r, "killed by signal %d (%s)", r->signal,
                           strsignal(r->signal));
  }
  sonde_op_complete(&x->op);
}

static int all_drained(struct exec_op *x) {
  return x->out[0].fd < 0 && x->out[1].fd < 0;
}

static void on_leader_exit(struct exec_op *x);
static void on_pidfd(evutil_socket_t fd, short what, void *arg);
static void on_poll(evutil_socket_t fd, short what, void *arg);

/* Has the leader exited?  A zombie, not reaped by this; or no longer our
 * child (reaped elsewhere: SIGCHLD ignored), which on_leader_exit reports
 * as a lost status. */
static int leader_exited(struct exec_op *x) {
  siginfo_t si;
  int rc;
  memset(&si, 0, sizeof si);
  do rc = waitid(P_PID, (id_t)x->pid, &si, WEXITED | WNOHANG | WNOWAIT);
  while (rc < 0 && errno == EINTR);
  return rc < 0 ? errno == ECHILD : si.si_pid == x->pid;
}

/* Arm the op's timer `seconds` from now, or for the deadline if that comes
 * first (x->final then says so). */
static void arm_timer(struct exec_op *x, double seconds) {
  x->final = 0;
  if (x->deadline > 0) {
    double left = x->deadline - sonde_now();
    if (left <= seconds) {
      seconds = left > 0 ? left : 0;
      x->final = 1;
    }
  }
  sonde_loop_add_timer(x->op.loop, x->timer, seconds);
}

/* Watch for the leader's exit from now on: its pidfd, or (no pidfd_open,
 * Linux < 5.3, or out of descriptors) a waitid poll. */
static void watch_exit(struct exec_op *x) {
  if (x->watch || x->exited) return;
  struct event_base *base = x->op.loop->base;
  struct event *ev = &x->exit_ev_s;
  x->pidfd = (int)syscall(SYS_pidfd_open, x->pid, 0);
  if (x->pidfd >= 0) {
    event_assign(ev, base, x->pidfd, EV_READ, on_pidfd, x);
    if (event_add(ev, NULL) == 0) {
      x->exit_ev = ev;
      x->watch = 1;
      return;
    }
    close(x->pidfd);
    x->pidfd = -1;
  }
  struct timeval tv = {0, POLL_USEC};
  event_assign(ev, base, -1, EV_PERSIST, on_poll, x);
  if (event_add(ev, &tv) == 0) {
    x->exit_ev = ev;
    x->watch = 2;
  }
}

/* A pipe has been closed (EOF, or a read error): once both are, the run is
 * done if the exit was seen; else the exit is looked for now, unless its
 * pidfd (or poll) watches it already.  A command closes its pipes on its
 * way out, a little before it is a zombie: when it is not one yet (or it
 * closed its pipes and runs on), its pidfd tells. */
static void pipe_closed(struct exec_op *x) {
  if (!all_drained(x)) return;
  if (x->exited) {
    finish(x);
  } else if (!x->watch && !x->term_sent) {
    if (leader_exited(x))
      on_leader_exit(x);
    else
      watch_exit(x);
  }
}

/* What read_pipe found. */
enum { PIPE_EMPTY, PIPE_FULL, PIPE_END, PIPE_GONE };

/* Read what pipe p holds, at most READS_PER_WAKE x READ_CHUNK bytes.
 * Returns PIPE_EMPTY (nothing more for now), PIPE_FULL (the budget was
 * used up: it floods), PIPE_END (EOF or a read error; the caller closes
 * it), or PIPE_GONE (the output callback cancelled the op: touch nothing
 * of it). */
static int read_pipe(struct exec_op *x, struct pipe_buf *p) {
  char chunk[READ_CHUNK];
  for (int reads = 0; reads < READS_PER_WAKE; reads++) {
    ssize_t n = read(p->fd, chunk, sizeof chunk);
    if (n > 0 && x->on_output) {
      /* The callback may cancel this very op: held, it stays allocated
       * until the call returns; if it was cancelled, its pipes, events and
       * buffers are gone and nothing of it may be touched. */
      sonde_op_hold(&x->op);
      x->on_output(x->op.id, p == &x->out[0] ? 1 : 2, chunk, (size_t)n,
                   x->output_arg);
      if (sonde_op_unhold(&x->op)) return PIPE_GONE;
    } else if (n > 0) {
      size_t room = x->max_output > p->len ? x->max_output - p->len : 0;
      size_t keep = (size_t)n < room ? (size_t)n : room;
      if (keep < (size_t)n) x->truncated = 1;
      if (keep && p->len + keep > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4096;
        if (cap < p->len + keep) cap = p->len + keep;
        if (cap > x->max_output) cap = x->max_output;
        char *d = realloc(p->data, cap);
        if (!d) {                  /* keep what we have, drop the rest */
          x->truncated = 1;
          keep = 0;
        } else {
          p->data = d;
          p->cap = cap;
        }
      }
      if (keep) {
        memcpy(p->data + p->len, chunk, keep);
        p->len += keep;
      }
    }
    /* a short read took all the pipe held (EOF shows at the next one) */
    if (n > 0 && (size_t)n < sizeof chunk) return PIPE_EMPTY;
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return PIPE_EMPTY;
    return PIPE_END;
  }
  return PIPE_FULL;
}

/* Pause flooding pipe p: no read event until the resume timer. */
static void pause_pipe(struct exec_op *x, struct pipe_buf *p) {
  event_del(p->ev);
  p->paused = 1;
  if (!evtimer_pending(x->resume, NULL))
    sonde_loop_add_timer(x->op.loop, x->resume, PAUSE_USEC / 1e6);
}

static void on_pipe(evutil_socket_t fd, short what, void *arg) {
  struct exec_op *x = arg;
  struct pipe_buf *p = x->out[0].fd == fd ? &x->out[0] : &x->out[1];
  (void)what;
  switch (read_pipe(x, p)) {
  case PIPE_GONE:
  case PIPE_EMPTY:
    return;
  case PIPE_FULL:
    pause_pipe(x, p);
    return;
  }
  close_pipe(p);
  /* The command closes both pipes at once when it exits: read the other
   * one now rather than at another turn of the loop (its EOF is most
   * likely there already). */
  struct pipe_buf *q = p == &x->out[0] ? &x->out[1] : &x->out[0];
  if (q->fd >= 0 && !q->paused) {
    switch (read_pipe(x, q)) {
    case PIPE_GONE:
    case PIPE_EMPTY:
      return;
    case PIPE_FULL:
      pause_pipe(x, q);
      return;
    }
    close_pipe(q);
  }
  pipe_closed(x);
}

/* The pause is over: read the paused pipes; one that floods still stays
 * paused (no event_add / event_del while it floods), the others get their
 * read event back. */
static void on_resume(evutil_socket_t fd, short what, void *arg) {
  struct exec_op *x = arg;
  int again = 0, closed = 0;
  (void)fd;
  (void)what;
  for (int i = 0; i < 2; i++) {
    struct pipe_buf *p = &x->out[i];
    if (!p->paused) continue;
    p->paused = 0;
    switch (read_pipe(x, p)) {
    case PIPE_GONE:
      return;
    case PIPE_FULL:
      p->paused = again = 1;
      break;
    case PIPE_EMPTY:
      event_add(p->ev, NULL);
      break;
    default:
      close_pipe(p);
      closed = 1;
    }
  }
  if (again)
    sonde_loop_add_timer(x->op.loop, x->resume, PAUSE_USEC / 1e6);
  else if (closed)
    pipe_closed(x);
}

/* write() that never raises SIGPIPE in this process: SIGPIPE is blocked
 * in this thread meanwhile (a pipe's SIGPIPE goes to the writing thread)
 * and one it caused is consumed before the mask is restored. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t n) {
  sigset_t pipe_set, old, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigemptyset(&pending);
  sigpending(&pending);
  int was_pending = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t w = write(fd, buf, n);
  int err = errno;
  if (w < 0 && err == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return w;
}

/* stdin writable: one write() per wake-up (level-triggered, it fires
 * again), so a large input never holds the loop. */
static void on_stdin(evutil_socket_t fd, short what, void *arg) {
  struct exec_op *x = arg;
  (void)what;
  if (x->in_off < x->input_len) {
    ssize_t w = write_nosigpipe(fd, x->input + x->in_off,
                                x->input_len - x->in_off);
    if (w > 0) x->in_off += (size_t)w;
    else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                       errno == EINTR))
      return;
    else
      x->in_off = x->input_len;  /* EPIPE or another error: give up */
  }
  if (x->in_off >= x->input_len) close_stdin(x);
}

/* The leader has exited (it is a zombie, not yet reaped). */
static void on_leader_exit(struct exec_op *x) {
  /* Kill what is left of the group before reaping the leader: while the
   * zombie leader exists its pid (= the pgid) cannot be reused. */
  kill(-x->pid, SIGKILL);
  pid_t p;
  do p = waitpid(x->pid, &x->wstatus, 0);
  while (p < 0 && errno == EINTR);
  x->exited = 1;
  x->lost = p < 0;   /* ECHILD: someone else reaped it (SIGCHLD ignored?) */
  close_stdin(x);    /* nobody is left to read the rest */
  if (x->exit_ev) event_del(x->exit_ev);
  x->exit_ev = NULL;
  x->watch = 0;
  if (x->pidfd >= 0) close(x->pidfd);
  x->pidfd = -1;
  /* Orphans of the group are reaped in the background (subreaper only);
   * a group now empty (the common case: kill(2) finds nobody, ESRCH)
   * has none, and asking waitpid(-pgid) would scan every child. */
  if (kill(-x->pid, 0) == 0 || errno != ESRCH)
    sonde_loop_reap_group(x->op.loop, x->pid);
  if (all_drained(x)) {
    finish(x);
    return;
  }
  /* Group members were killed, so the pipes normally reach EOF at once;
   * a descendant that left the group (setsid) is bounded by the drain. */
  evtimer_del(x->timer);
  sonde_loop_add_timer(x->op.loop, x->timer, DRAIN_SECONDS);
}

static void on_pidfd(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  on_leader_exit(arg);
}

/* Fallback without pidfd: poll for the leader's exit without reaping it. */
static void on_poll(evutil_socket_t fd, short what, void *arg) {
  struct exec_op *x = arg;
  (void)fd;
  (void)what;
  if (leader_exited(x)) on_leader_exit(x);
}

/* Check-in, deadline, grace and drain share one timer; the state says
 * which. */
static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct exec_op *x = arg;
  (void)fd;
  (void)what;
  if (x->exited) {            /* drain deadline: give up on the pipes */
    close_pipe(&x->out[0]);
    close_pipe(&x->out[1]);
    finish(x);
  } else if (x->term_sent) {  /* terminate's grace over */
    kill(-x->pid, SIGKILL);
  } else if (leader_exited(x)) {
    /* It has exited, its exit not yet seen.  At the deadline too: this
     * process was stopped (SIGSTOP/SIGCONT), or the exit and the deadline
     * came in one loop iteration.  Not a timeout: the normal result, with
     * what its pipes still hold. */
    on_leader_exit(x);
  } else if (!x->final) {     /* the check-in: it runs on */
    watch_exit(x);
    if (x->deadline > 0) arm_timer(x, SONDE_MAX_SECONDS);
  } else {                    /* the probe's deadline: the result now */
    x->timed_out = 1;
    x->term_sent = 1;
    /* what the pipes hold at the deadline is part of the output */
    for (int i = 0; i < 2; i++)
      if (x->out[i].fd >= 0 && read_pipe(x, &x->out[i]) == PIPE_GONE)
        return;
    /* The leader is not reaped: its pgid is still the group's.  From here
     * the loop SIGKILLs the group after the grace and reaps it; the pipes,
     * the pidfd and the events go with the op (finish -> exec_release). */
    kill(-x->pid, SIGTERM);
    sonde_loop_end_group(x->op.loop, x->pid, x->op.id, x->kill_grace);
    x->handed = 1;
    finish(x);
  }
}

/*
 * Find argv0 in `path` the way execvp does.  Returns a malloc'd path, or
 * NULL with errno ENOENT (nowhere) or EACCES (found, not executable).
 */
static char *search_path(const char *argv0, const char *path) {
  int saw_eacces = 0;
  size_t alen = strlen(argv0);
  if (!path) path = "/usr/local/bin:/usr/bin:/bin";
  for (const char *p = path;; p++) {
    const char *end = strchr(p, ':');
    size_t dlen = end ? (size_t)(end - p) : strlen(p);
    char *cand = malloc(dlen + alen + 3);
    if (!cand) return NULL;
    if (dlen == 0)
      snprintf(cand, dlen + alen + 3, "./%s", argv0);
    else
      snprintf(cand, dlen + alen + 3, "%.*s/%s", (int)dlen, p, argv0);
    struct stat st;
    if (stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
      if (access(cand, X_OK) == 0) return cand;
      saw_eacces = 1;
    }
    free(cand);
    if (!end) break;
    p = end;
  }
  errno = saw_eacces ? EACCES : ENOENT;
  return NULL;
}

static const char *env_path(char *const *envp) {
  for (char *const *e = envp; e && *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) return *e + 5;
  return getenv("PATH");
}

/* A start-time failure: classify errno and complete from the loop. */
static uint64_t fail_now(struct exec_op *x, int err, const char *what) {
  struct sonde_result *r = &x->op.res;
  r->code = err;
  switch (err) {
  case ENOENT:
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_NOT_FOUND;
    break;
  case EACCES:
  case EPERM:
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_PERMISSION;
    break;
  case EMFILE:
  case ENFILE:
  case EAGAIN:
  case ENOMEM:
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    break;
  default:
    r->status = SONDE_FAILURE;
    r->reason = SONDE_R_SPAWN;
  }
  sonde_result_set_error(r, "%s: %s", what, strerror(err));
  if (r->error) sonde_result_set_output(r, r->error, strlen(r->error));
  uint64_t id = x->op.id;
  sonde_op_complete_soon(&x->op);
  return id;
}

/* Why argv[0] cannot run in `cwd`, checked the way execve would fail:
 * errno (ENOENT, EACCES, ...), or 0 when it looks runnable.  A relative
 * path is relative to cwd, where the child runs. */
static int check_command(const char *argv0, const char *cwd) {
  char *full = NULL;
  if (argv0[0] != '/' && cwd && asprintf(&full, "%s/%s", cwd, argv0) < 0)
    full = NULL;
  const char *check = full ? full : argv0;
  struct stat st;
  int err = 0;
  if (stat(check, &st) != 0)
    err = errno;
  else if (!S_ISREG(st.st_mode) || access(check, X_OK) != 0)
    err = EACCES;
  free(full);
  return err;
}

/* posix_spawn failed with `err`: name the failure as the checks made before
 * the spawn used to (argv[0] given as a path, then cwd), so that
 * not_found/permission do not depend on how the C library reports exec
 * errors; else the spawn's own error. */
static uint64_t spawn_failed(struct exec_op *x, int err, const char *argv0,
                             int searched, const char *cwd) {
  int why = searched ? 0 : check_command(argv0, cwd);
  if (why) return fail_now(x, why, argv0);
  if (cwd) {
    struct stat st;
    if (stat(cwd, &st) != 0) return fail_now(x, errno, cwd);
    if (!S_ISDIR(st.st_mode)) return fail_now(x, ENOTDIR, cwd);
  }
  return fail_now(x, err, argv0);
}

/* One allocation per run: the op (its events in it), then the command
 * line for messages.  The caller copies the codes. */
static struct exec_op *exec_alloc(char *const *argv) {
  size_t cmdlen = 1;
  for (char *const *a = argv; *a; a++) cmdlen += strlen(*a) + 1;
  /* all zeroed but the codes (copied by the caller) and the command line */
  struct exec_op *x = malloc(sizeof *x + cmdlen);
  if (!x) return NULL;
  memset(x, 0, offsetof(struct exec_op, codes));
  char *w = x->cmdline = (char *)(x + 1);
  for (char *const *a = argv; *a; a++) {
    size_t l = strlen(*a);
    if (w != x->cmdline) *w++ = ' ';
    memcpy(w, *a, l);
    w += l;
  }
  *w = '\0';
  x->timer = &x->timer_ev;
  x->resume = &x->resume_ev;
  return x;
}

uint64_t sonde_exec_start(struct sonde_loop *loop,
                          const struct sonde_exec_opts *o, sonde_result_cb cb,
                          void *arg) {
  struct exec_op *x = exec_alloc(o->argv);
  if (!x) return 0;
  x->op.vt = &exec_vt;
  x->pidfd = -1;
  x->in_fd = -1;
  x->out[0].fd = x->out[1].fd = -1;
  x->max_output = o->max_output;
  x->kill_grace = o->kill_grace > 0 ? o->kill_grace : 1;
  x->timeout = o->timeout;
  memcpy(x->codes, o->codes, sizeof x->codes);
  x->timeout_status = o->timeout_status;
  x->on_output = o->on_output;
  x->output_arg = o->output_arg;
  sonde_op_start(loop, &x->op, cb, arg);
  evtimer_assign(x->timer, loop->base, on_timer, x);
  evtimer_assign(x->resume, loop->base, on_resume, x);
  if (o->input && o->input_len > SONDE_MAX_INPUT)
    return fail_now(x, E2BIG, "input longer than SONDE_MAX_INPUT (1 MiB)");
  if (o->input) {
    x->input = malloc(o->input_len ? o->input_len : 1);
    if (!x->input) return fail_now(x, ENOMEM, "input");
    memcpy(x->input, o->input, o->input_len);
    x->input_len = o->input_len;
  }

  const char *argv0 = o->argv[0];
  char *path = NULL;
  int searched = !strchr(argv0, '/');
  if (searched) {
    path = search_path(argv0, env_path(o->envp));
    if (!path) return fail_now(x, errno, argv0);
  }

  /* fds[0], fds[1]: stdout, stderr; fds[2]: stdin when there is input.
   * The parent's ends are non-blocking (O_NONBLOCK is the only status flag
   * a fresh pipe end can have: F_SETFL sets it without F_GETFL); the
   * child's are not. */
  int fds[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int npipes = x->input ? 3 : 2;
  for (int i = 0; i < npipes; i++) {
    if (pipe2(fds[i], O_CLOEXEC) != 0) {
      int err = errno;
      free(path);
      for (int j = 0; j < i; j++) {
        close(fds[j][0]);
        close(fds[j][1]);
      }
      return fail_now(x, err, "pipe");
    }
  }
  for (int i = 0; i < 2; i++) {
    x->out[i].fd = fds[i][0];
    fcntl(fds[i][0], F_SETFL, O_NONBLOCK);
  }
  if (x->input) {
    x->in_fd = fds[2][1];
    fcntl(x->in_fd, F_SETFL, O_NONBLOCK);
  }

  posix_spawnattr_t attr;
  posix_spawn_file_actions_t fa;
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
                                      POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETSIGMASK);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawn_file_actions_init(&fa);
  if (x->input)
    posix_spawn_file_actions_adddup2(&fa, fds[2][0], 0);
  else
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[0][1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1][1], 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  if (o->cwd) posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
  pid_t pid;
  char *const *envp = o->envp ? o->envp : environ;
  /* SONDE_OWNER (a buffer of the loop's, free to reuse once posix_spawn
   * has returned: the child has exec'd or failed by then) */
  char *const *marked = sonde_owner_env(loop, x->op.id, envp);
  int err = posix_spawn(&pid, path ? path : argv0, &fa, &attr, o->argv,
                        marked);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  free(path);
  close(fds[0][1]);
  close(fds[1][1]);
  if (fds[2][0] >= 0) close(fds[2][0]);
  if (err != 0) return spawn_failed(x, err, argv0, searched, o->cwd);
  x->pid = pid;

  for (int i = 0; i < 2; i++) {
    x->out[i].ev = &x->out_ev[i];
    event_assign(x->out[i].ev, loop->base, x->out[i].fd,
                 EV_READ | EV_PERSIST, on_pipe, x);
  }
  if (x->in_fd >= 0 && x->input_len > 0) {
    x->in_ev = &x->in_ev_s;
    event_assign(x->in_ev, loop->base, x->in_fd, EV_WRITE | EV_PERSIST,
                 on_stdin, x);
  } else {
    close_stdin(x);             /* empty input: EOF at once */
  }
  if (event_add(x->out[0].ev, NULL) != 0 ||
      event_add(x->out[1].ev, NULL) != 0 ||
      (x->in_ev && event_add(x->in_ev, NULL) != 0)) {
    /* Cannot watch it: kill it now (reaped by exec_release's path). */
    return fail_now(x, ENOMEM, "event");
  }
  /* the deadline, or the check-in if that comes first */
  x->deadline = o->timeout > 0 ? sonde_now() + o->timeout : 0;
  arm_timer(x, CHECK_IN_SECONDS);
  return x->op.id;
}

static struct exec_op *find_exec(struct sonde_loop *loop, uint64_t id) {
  for (struct sonde_op *op = loop->ops; op; op = op->next)
    if (op->id == id && op->vt == &exec_vt) return (struct exec_op *)op;
  return NULL;
}

int sonde_exec_terminate(struct sonde_loop *loop, uint64_t id, double grace) {
  struct exec_op *x = find_exec(loop, id);
  if (!x || x->pid <= 0 || x->exited) return -1;
  if (!x->term_sent) {
    x->term_sent = 1;
    kill(-x->pid, SIGTERM);
    watch_exit(x);            /* the result comes when it has exited */
    evtimer_del(x->timer);
    sonde_loop_add_timer(loop, x->timer, grace > 0 ? grace : 0);
  }
  return 0;
}

pid_t sonde_exec_op_pid(struct sonde_op *op) {
  if (op->vt != &exec_vt) return 0;
  struct exec_op *x = (struct exec_op *)op;
  return x->exited || x->handed ? 0 : x->pid;
}

int sonde_exec_kill_all(struct sonde_loop *loop, int sig) {
  /* the groups of timed-out commands the loop still ends too */
  int n = sonde_loop_signal_groups(loop, sig);
  for (struct sonde_op *op = loop->ops; op; op = op->next) {
    pid_t pid = sonde_exec_op_pid(op);
    if (pid > 0 && kill(-pid, sig) == 0) n++;
  }
  return n;
}

pid_t sonde_exec_pid(struct sonde_loop *loop, uint64_t id) {
  struct exec_op *x = find_exec(loop, id);
  return x && !x->exited ? x->pid : 0;
}

