/*
 * loop.c - the sonde_loop: operation list, ids, deferred completion,
 * background reaping of signalled process groups, timers.
 *
 * Ownership: the loop owns its operations (see internal.h), the curl multi
 * handle (curlsock.c) and, when it made it, the event_base.  An operation
 * is never freed while one of its own callbacks runs: cancelling an op that
 * is held (sonde_op_hold) unlinks and releases it and leaves the free to
 * sonde_op_unhold.
 *
 * Freeing an event from inside its own callback (a timer op completed,
 * an exec op cancelled from its output callback) is safe in libevent 2.1:
 * event_process_active_single_queue does not touch a plain or persistent
 * event after its callback returns, and a signal event's delivery loop is
 * aborted by event_del (ev_pncalls).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "sonde/exec.h"

double sonde_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int sonde_set_subreaper(int on) {
  return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0);
}

struct sonde_loop *sonde_loop_new(struct event_base *base) {
  /* With SIGCHLD ignored the kernel reaps children itself and no exit
   * status can be had: give it back its default (which also ignores it,
   * but keeps the status for waitpid). */
  struct sigaction sa;
  if (sigaction(SIGCHLD, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
    sa.sa_handler = SIG_DFL;
    sa.sa_flags &= ~SA_NOCLDWAIT;
    sigaction(SIGCHLD, &sa, NULL);
  }
  struct sonde_loop *loop = calloc(1, sizeof *loop);
  if (!loop) return NULL;
  loop->next_id = 1;
  if (base) {
    loop->base = base;
  } else {
    loop->base = event_base_new();
    loop->own_base = 1;
    if (!loop->base) goto fail;
  }
  if (sonde_curl_init(loop) != 0) goto fail;
  return loop;
fail:
  if (loop->own_base && loop->base) event_base_free(loop->base);
  free(loop);
  return NULL;
}

struct event_base *sonde_loop_base(struct sonde_loop *loop) {
  return loop->base;
}

size_t sonde_loop_pending(struct sonde_loop *loop) { return loop->nops; }

uint64_t sonde_op_start(struct sonde_loop *loop, struct sonde_op *op,
                        sonde_result_cb cb, void *arg) {
  op->loop = loop;
  op->id = loop->next_id++;
  op->cb = cb;
  op->arg = arg;
  op->start = sonde_now();
  op->res.id = op->id;
  op->res.kind = op->vt->kind;
  op->next = loop->ops;
  if (loop->ops) loop->ops->prev = op;
  loop->ops = op;
  loop->nops++;
  return op->id;
}

static void op_unlink(struct sonde_op *op) {
  struct sonde_loop *loop = op->loop;
  if (op->prev) op->prev->next = op->next;
  else loop->ops = op->next;
  if (op->next) op->next->prev = op->prev;
  op->prev = op->next = NULL;
  loop->nops--;
}

static void op_release(struct sonde_op *op, int cancelled) {
  if (op->soon) {
    event_free(op->soon);
    op->soon = NULL;
  }
  op->vt->release(op, cancelled);
}

void sonde_op_complete(struct sonde_op *op) {
  if (op->res.duration == 0) op->res.duration = sonde_now() - op->start;
  op_unlink(op);
  op_release(op, 0);
  /* C state is final: now the user may do anything, even free the loop's
   * other operations. */
  if (op->cb) op->cb(&op->res, op->arg);
  sonde_result_clear(&op->res);
  if (op->busy) op->dead = 1;     /* a caller up the stack frees it */
  else free(op);
}

void sonde_op_hold(struct sonde_op *op) { op->busy++; }

int sonde_op_unhold(struct sonde_op *op) {
  op->busy--;
  if (!op->dead) return 0;
  if (op->busy == 0) free(op);
  return 1;
}

static void on_soon(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  sonde_op_complete(arg);
}

void sonde_op_complete_soon(struct sonde_op *op) {
  if (op->res.duration == 0) op->res.duration = sonde_now() - op->start;
  if (!op->soon) op->soon = evtimer_new(op->loop->base, on_soon, op);
  if (!op->soon) {
    sonde_op_complete(op);
    return;
  }
  event_active(op->soon, EV_TIMEOUT, 0);
}

int sonde_loop_cancel(struct sonde_loop *loop, uint64_t id) {
  for (struct sonde_op *op = loop->ops; op; op = op->next) {
    if (op->id != id) continue;
    op_unlink(op);
    op_release(op, 1);
    sonde_result_clear(&op->res);
    /* One of its own callbacks is running (we are called from inside
     * it): the code that called it frees the op when it returns. */
    if (op->busy) op->dead = 1;
    else free(op);
    return 1;
  }
  return 0;
}

void sonde_loop_add_timer(struct sonde_loop *loop, struct event *ev,
                          double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  if (seconds > SONDE_MAX_SECONDS) seconds = SONDE_MAX_SECONDS;
  struct timeval tv;
  tv.tv_sec = (time_t)seconds;
  tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
  event_base_update_cache_time(loop->base);
  evtimer_add(ev, &tv);
}

/* ---- background reaping ------------------------------------------------ */

int sonde_reap_group_now(pid_t pgid) {
  int n = 0;
  for (;;) {
    pid_t p = waitpid(-pgid, NULL, WNOHANG);
    if (p > 0) { n++; continue; }
    if (p < 0 && errno == EINTR) continue;
    if (p < 0) return n ? n : -1;   /* ECHILD: nothing of ours left */
    return n;                       /* 0: members alive, not yet exited */
  }
}

static void on_reap_timer(evutil_socket_t fd, short what, void *arg) {
  struct sonde_loop *loop = arg;
  double now = sonde_now();
  (void)fd;
  (void)what;
  for (struct sonde_reap **pp = &loop->reaps; *pp;) {
    struct sonde_reap *r = *pp;
    if (sonde_reap_group_now(r->pgid) < 0 || now > r->until) {
      *pp = r->next;
      free(r);
    } else {
      pp = &r->next;
    }
  }
  if (loop->reaps) sonde_loop_add_timer(loop, loop->reap_timer, 0.02);
}

void sonde_loop_reap_group(struct sonde_loop *loop, pid_t pgid) {
  if (sonde_reap_group_now(pgid) < 0) return;
  struct sonde_reap *r = malloc(sizeof *r);
  if (!r) return;
  if (!loop->reap_timer) loop->reap_timer = evtimer_new(loop->base,
                                                        on_reap_timer, loop);
  if (!loop->reap_timer) { free(r); return; }
  r->pgid = pgid;
  r->until = sonde_now() + 5.0;   /* a member that ignores SIGKILL: D state */
  r->next = loop->reaps;
  loop->reaps = r;
  sonde_loop_add_timer(loop, loop->reap_timer, 0.02);
}

static int cmp_pid(const void *a, const void *b) {
  pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
  return (x > y) - (x < y);
}

/* Read a whole (small, /proc) file into a malloc'd NUL-terminated buffer. */
static char *read_all(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    len += fread(buf + len, 1, cap - 1 - len, f);
    if (len < cap - 1) break;
    char *more = realloc(buf, cap * 2);
    if (!more) { free(buf); buf = NULL; break; }
    buf = more;
    cap *= 2;
  }
  fclose(f);
  if (buf) buf[len] = '\0';
  return buf;
}

int sonde_reap_orphans(struct sonde_loop *loop) {
  char path[64];
  int n = 0;
  pid_t self = getpgrp();
  /* the leaders exec operations own, sorted for bsearch: one pass over
   * the operations instead of one per child */
  size_t nt = 0;
  pid_t *tracked = malloc(sizeof *tracked * (loop->nops + 1));
  if (!tracked) return 0;
  for (struct sonde_op *op = loop->ops; op; op = op->next) {
    pid_t pid = sonde_exec_op_pid(op);
    if (pid > 0) tracked[nt++] = pid;
  }
  qsort(tracked, nt, sizeof *tracked, cmp_pid);
  DIR *tasks = opendir("/proc/self/task");
  if (!tasks) { free(tracked); return 0; }
  struct dirent *t;
  while ((t = readdir(tasks)) != NULL) {
    if (t->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%.20s/children", t->d_name);
    char *buf = read_all(path);
    if (!buf) continue;
    for (char *p = buf, *end; *p; p = end) {
      long pid = strtol(p, &end, 10);
      if (end == p) break;
      pid_t key = (pid_t)pid;
      if (pid <= 0 || bsearch(&key, tracked, nt, sizeof *tracked, cmp_pid))
        continue;
      pid_t pg = getpgid(key);
      if (pg < 0 || pg == self) continue;
      if (waitpid(key, NULL, WNOHANG) > 0) n++;
    }
    free(buf);
  }
  closedir(tasks);
  free(tracked);
  return n;
}

/* ---- timers -------------------------------------------------------------- */

struct timer_op {
  struct sonde_op op;
  struct event *ev;
};

static void timer_release(struct sonde_op *op, int cancelled) {
  struct timer_op *t = (struct timer_op *)op;
  (void)cancelled;
  if (t->ev) event_free(t->ev);
  t->ev = NULL;
}

static const struct sonde_op_vtable timer_vt = {"timer", timer_release};

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct timer_op *t = arg;
  (void)fd;
  (void)what;
  t->op.res.status = SONDE_SUCCESS;
  t->op.res.reason = SONDE_R_OK;
  sonde_op_complete(&t->op);
}

uint64_t sonde_timer_start(struct sonde_loop *loop, double seconds,
                           sonde_result_cb cb, void *arg) {
  struct timer_op *t = calloc(1, sizeof *t);
  if (!t) return 0;
  t->op.vt = &timer_vt;
  t->ev = evtimer_new(loop->base, on_timer, t);
  if (!t->ev) { free(t); return 0; }
  sonde_loop_add_timer(loop, t->ev, seconds);
  return sonde_op_start(loop, &t->op, cb, arg);
}

/* ---- teardown ------------------------------------------------------------ */

void sonde_loop_free(struct sonde_loop *loop) {
  if (!loop) return;
  while (loop->ops) sonde_loop_cancel(loop, loop->ops->id);
  /* Bounded final reap: members were sent SIGKILL by the cancellations. */
  double until = sonde_now() + 1.0;
  while (loop->reaps && sonde_now() < until) {
    for (struct sonde_reap **pp = &loop->reaps; *pp;) {
      struct sonde_reap *r = *pp;
      if (sonde_reap_group_now(r->pgid) < 0) {
        *pp = r->next;
        free(r);
      } else {
        pp = &r->next;
      }
    }
    if (loop->reaps) {
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
  }
  while (loop->reaps) {
    struct sonde_reap *r = loop->reaps;
    loop->reaps = r->next;
    free(r);
  }
  if (loop->reap_timer) event_free(loop->reap_timer);
  sonde_curl_free(loop);
  if (loop->own_base) event_base_free(loop->base);
  free(loop);
}
