/*
 * loop.c - the sonde_loop: operation list, ids, deferred completion,
 * background reaping of signalled process groups, timers.
 *
 * Ownership: the loop owns its operations (see internal.h), the curl multi
 * handle and the idle easy handles (curlsock.c), the shared default header
 * list of HTTP probes (http.c), the resolver (resolve.c) and, when it made
 * it, the event_base.  An operation is never freed while one of its own
 * callbacks runs: cancelling an op that is held (sonde_op_hold) unlinks and
 * releases it and leaves the free to sonde_op_unhold.
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
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event_struct.h>

#include "internal.h"
#include "sonde/exec.h"

static unsigned loop_serial;
static void owner_ended(struct sonde_loop *loop, uint64_t id);

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
  loop->serial = ++loop_serial;
  if (base) {
    loop->base = base;
  } else {
    /* libevent's default clock is CLOCK_MONOTONIC_COARSE, a tick (1 to
     * 10 ms) behind: a timer armed at "now" + s fired up to a tick before
     * its deadline, or up to a tick after it (and epoll_wait's millisecond
     * timeout on top).  The precise timer reads CLOCK_MONOTONIC and sleeps
     * on a timerfd (one more system call per loop iteration). */
    struct event_config *cfg = event_config_new();
    if (!cfg) goto fail;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    loop->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    loop->own_base = 1;
    if (!loop->base) goto fail;
    /* SONDE_LOOP_PRIORITIES: every event at the default, the middle one;
     * work that may wait (a streamed reply's next step) at the lowest,
     * run only in a loop turn where nothing else is due */
    event_base_priority_init(loop->base, SONDE_LOOP_PRIORITIES);
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
  owner_ended(op->loop, op->id);
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
    owner_ended(loop, op->id);
    sonde_result_clear(&op->res);
    /* One of its own callbacks is running (we are called from inside
     * it): the code that called it frees the op when it returns. */
    if (op->busy) op->dead = 1;
    else free(op);
    return 1;
  }
  return 0;
}

int sonde_loop_add_timer(struct sonde_loop *loop, struct event *ev,
                         double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  if (seconds > SONDE_MAX_SECONDS) seconds = SONDE_MAX_SECONDS;
  struct timeval tv;
  tv.tv_sec = (time_t)seconds;
  tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
  event_base_update_cache_time(loop->base);
  return event_add(ev, &tv);
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

#define REAP_POLL 0.02     /* seconds between polls of the reaped groups */
#define REAP_GIVE_UP 5.0   /* after SIGKILL: a member in D state */

/* Has process `pid` (a child) exited?  1: a zombie, not reaped by this;
 * 0: running; -1: not our child any more (reaped elsewhere). */
static int child_exited(pid_t pid) {
  siginfo_t si;
  int rc;
  memset(&si, 0, sizeof si);
  do rc = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) return -1;
  return si.si_pid == pid;
}

/* One poll of r; returns 1 once r is done with. */
static int reap_step(struct sonde_loop *loop, struct sonde_reap *r,
                     double now) {
  if (r->leader) {
    int ex = child_exited(r->pgid);
    if (ex != 0 || (!r->killed && now >= r->kill_at)) {
      /* the leader is still unreaped: the pgid is still this group's */
      kill(-r->pgid, SIGKILL);
      if (!r->killed) r->until = now + REAP_GIVE_UP;
      r->killed = 1;
    }
    if (ex == 1) {
      pid_t p;
      do p = waitpid(r->pgid, NULL, WNOHANG);
      while (p < 0 && errno == EINTR);
    }
    if (ex != 0 || now > r->until) {
      /* reaped, or given up (D state: the scan reaps it later) */
      r->leader = 0;
      owner_ended(loop, r->owner);
    } else {
      return 0;
    }
  }
  return sonde_reap_group_now(r->pgid) < 0 || now > r->until;
}

static void on_reap_timer(evutil_socket_t fd, short what, void *arg) {
  struct sonde_loop *loop = arg;
  double now = sonde_now();
  (void)fd;
  (void)what;
  for (struct sonde_reap **pp = &loop->reaps; *pp;) {
    struct sonde_reap *r = *pp;
    if (reap_step(loop, r, now)) {
      *pp = r->next;
      free(r);
    } else {
      pp = &r->next;
    }
  }
  if (loop->reaps) sonde_loop_add_timer(loop, loop->reap_timer, REAP_POLL);
}

static int add_reap(struct sonde_loop *loop, struct sonde_reap *r) {
  if (!loop->reap_timer) loop->reap_timer = evtimer_new(loop->base,
                                                        on_reap_timer, loop);
  if (!loop->reap_timer) return -1;
  r->next = loop->reaps;
  loop->reaps = r;
  if (!evtimer_pending(loop->reap_timer, NULL))
    sonde_loop_add_timer(loop, loop->reap_timer, REAP_POLL);
  return 0;
}

void sonde_loop_reap_group(struct sonde_loop *loop, pid_t pgid) {
  if (sonde_reap_group_now(pgid) < 0) return;
  struct sonde_reap *r = calloc(1, sizeof *r);
  if (!r) return;
  r->pgid = pgid;
  r->killed = 1;
  r->until = sonde_now() + REAP_GIVE_UP;
  if (add_reap(loop, r) != 0) free(r);
}

void sonde_loop_end_group(struct sonde_loop *loop, pid_t pgid, uint64_t owner,
                          double grace) {
  struct sonde_reap *r = calloc(1, sizeof *r);
  if (!(grace >= 0)) grace = 0;
  if (grace > SONDE_MAX_SECONDS) grace = SONDE_MAX_SECONDS;
  if (r) {
    r->pgid = pgid;
    r->leader = 1;
    r->owner = owner;
    r->kill_at = sonde_now() + grace;
    r->until = r->kill_at + REAP_GIVE_UP;
    if (add_reap(loop, r) == 0) return;
    free(r);
  }
  /* out of memory: no grace, and the leader is left to the reaping of
   * the group (or to the orphan scan) */
  kill(-pgid, SIGKILL);
  sonde_loop_reap_group(loop, pgid);
}

int sonde_loop_signal_groups(struct sonde_loop *loop, int sig) {
  int n = 0;
  for (struct sonde_reap *r = loop->reaps; r; r = r->next)
    if (r->leader && kill(-r->pgid, sig) == 0) n++;
  return n;
}

static int cmp_pid(const void *a, const void *b) {
  pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
  return (x > y) - (x < y);
}

static int cmp_id(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static int cmp_orphan(const void *a, const void *b) {
  return cmp_pid(&((const struct sonde_orphan *)a)->pid,
                 &((const struct sonde_orphan *)b)->pid);
}

/* Read a whole (small, /proc) file into a malloc'd NUL-terminated buffer;
 * its length (it may hold NUL bytes) in *lenp when lenp is not NULL. */
static char *read_all(const char *path, size_t *lenp) {
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
  if (lenp) *lenp = len;
  return buf;
}

/* Append the children of every thread of `pid` (0: this process) to the
 * growing array *v (*n entries, *cap allocated).  Returns -1 when out of
 * memory. */
static int children_of(pid_t pid, pid_t **v, size_t *n, size_t *cap) {
  char path[96];
  if (pid) snprintf(path, sizeof path, "/proc/%ld/task", (long)pid);
  else snprintf(path, sizeof path, "/proc/self/task");
  DIR *tasks = opendir(path);
  if (!tasks) return 0;
  struct dirent *t;
  int rc = 0;
  while (rc == 0 && (t = readdir(tasks)) != NULL) {
    if (t->d_name[0] == '.') continue;
    if (pid)
      snprintf(path, sizeof path, "/proc/%ld/task/%.20s/children", (long)pid,
               t->d_name);
    else
      snprintf(path, sizeof path, "/proc/self/task/%.20s/children",
               t->d_name);
    char *buf = read_all(path, NULL);
    if (!buf) continue;
    for (char *p = buf, *end; *p; p = end) {
      long c = strtol(p, &end, 10);
      if (end == p) break;
      if (c <= 0) continue;
      if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        pid_t *m = realloc(*v, ncap * sizeof *m);
        if (!m) { rc = -1; break; }
        *v = m;
        *cap = ncap;
      }
      (*v)[(*n)++] = (pid_t)c;
    }
    free(buf);
  }
  closedir(tasks);
  return rc;
}

/* ---- escaped processes --------------------------------------------------- */

#define OWNER_VAR "SONDE_OWNER="
#define ORPHAN_GRACE 1.0   /* an orphan found after its command ended */
#define GIVE_UP 5.0        /* after SIGKILL: a process in D state */
#define SCAN_POLL 0.1      /* rescans while an ending runs */
#define TREE_MAX 4096      /* processes signalled per tree and call */

struct end_op {
  struct sonde_op op;
  uint64_t owner;          /* 0: every escaped process */
  double kill_at, until;
  size_t pending;          /* its processes found at the last scan */
};

static void end_release(struct sonde_op *op, int cancelled) {
  (void)op;
  (void)cancelled;
}

static const struct sonde_op_vtable end_vt = {"orphans", end_release};

/* The marks name this process: a child of fork() that goes on using a
 * loop it inherited makes its own prefix (atfork bumps fork_gen there). */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { fork_gen++; }
static void watch_forks(void) { pthread_atfork(NULL, NULL, on_fork_child); }

int sonde_loop_set_subreaper(struct sonde_loop *loop, int on) {
  if (sonde_set_subreaper(on) != 0) return -1;
  loop->mark_owners = on != 0;
  if (on) pthread_once(&fork_once, watch_forks);
  return 0;
}

#define MARK_MAX 80  /* SONDE_OWNER=<pid>.<serial>.<id> and its NUL */

char *const *sonde_owner_env(struct sonde_loop *loop, uint64_t id,
                             char *const *envp) {
  if (!loop->mark_owners) return envp;
  if (!loop->owner_len || loop->owner_gen != fork_gen) {
    int n = snprintf(loop->owner_prefix, sizeof loop->owner_prefix,
                     OWNER_VAR "%ld.%u.", (long)getpid(), loop->serial);
    if (n <= 0 || (size_t)n >= sizeof loop->owner_prefix) return envp;
    loop->owner_len = (size_t)n;
    loop->owner_gen = fork_gen;
  }
  /* one pass: the pointers of envp but its own marks, then ours; the
   * strings themselves are not copied */
  char **v = loop->env_buf;
  size_t k = 0;
  for (char *const *e = envp; e && *e; e++) {
    if ((*e)[0] == 'S' && strncmp(*e, OWNER_VAR, sizeof OWNER_VAR - 1) == 0)
      continue;
    if (k + 2 > loop->env_cap) {
      size_t cap = loop->env_cap ? loop->env_cap * 2 : 64;
      v = realloc(v, cap * sizeof *v + MARK_MAX);
      if (!v) return envp;
      loop->env_buf = v;
      loop->env_cap = cap;
    }
    v[k++] = *e;
  }
  if (!v) {                          /* an empty environment */
    v = loop->env_buf = malloc(2 * sizeof *v + MARK_MAX);
    if (!v) return envp;
    loop->env_cap = 2;
  }
  char *m = (char *)(v + loop->env_cap), digits[24];
  size_t nd = 0;
  do digits[nd++] = (char)('0' + id % 10);
  while ((id /= 10) != 0);
  memcpy(m, loop->owner_prefix, loop->owner_len);
  for (size_t i = 0; i < nd; i++) m[loop->owner_len + i] = digits[nd - 1 - i];
  m[loop->owner_len + nd] = '\0';
  v[k++] = m;
  v[k] = NULL;
  return v;
}

/* The operation of this loop that started `pid`, from its initial
 * environment; 0 when it carries no mark of this loop (or cannot be read:
 * another user's process, a zombie). */
static uint64_t owner_of(struct sonde_loop *loop, pid_t pid) {
  char path[64];
  size_t len;
  snprintf(path, sizeof path, "/proc/%ld/environ", (long)pid);
  char *buf = read_all(path, &len);
  if (!buf) return 0;
  uint64_t owner = 0;
  for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
    if (strncmp(buf + i, OWNER_VAR, sizeof OWNER_VAR - 1) != 0) continue;
    long p;
    unsigned serial;
    unsigned long long id;
    char tail;
    if (sscanf(buf + i + sizeof OWNER_VAR - 1, "%ld.%u.%llu%c", &p, &serial,
               &id, &tail) == 3 &&
        p == (long)getpid() && serial == loop->serial)
      owner = id;
    break;
  }
  free(buf);
  return owner;
}

/* Signal `root` (a child of this process: its pid cannot be recycled before
 * we reap it) and every descendant of it, parents before children, at most
 * TREE_MAX of them; a stopped process is continued after SIGTERM. */
static void signal_tree(pid_t root, int sig) {
  pid_t *v = NULL;
  size_t n = 0, cap = 0, done = 0;
  kill(root, sig);
  if (sig == SIGTERM) kill(root, SIGCONT);
  children_of(root, &v, &n, &cap);
  while (done < n && done < TREE_MAX) {
    pid_t p = v[done++];
    kill(p, sig);
    if (sig == SIGTERM) kill(p, SIGCONT);
    if (children_of(p, &v, &n, &cap) != 0) break;
  }
  free(v);
}

static void on_scan_timer(evutil_socket_t fd, short what, void *arg);

static void arm_scan(struct sonde_loop *loop, double seconds) {
  if (!loop->scan_timer) {
    loop->scan_timer = evtimer_new(loop->base, on_scan_timer, loop);
    if (!loop->scan_timer) return;
  }
  sonde_loop_add_timer(loop, loop->scan_timer, seconds);
}

static uint64_t end_start(struct sonde_loop *loop, uint64_t owner,
                          double grace, sonde_result_cb cb, void *arg) {
  struct end_op *e = calloc(1, sizeof *e);
  if (!e) return 0;
  e->op.vt = &end_vt;
  e->owner = owner;
  if (!(grace >= 0)) grace = 0;
  if (grace > SONDE_MAX_SECONDS) grace = SONDE_MAX_SECONDS;
  e->kill_at = sonde_now() + grace;
  e->until = e->kill_at + GIVE_UP;
  return sonde_op_start(loop, &e->op, cb, arg);
}

/* An operation has ended (completed or cancelled): if it left orphans
 * behind, scan again from the loop. */
static void owner_ended(struct sonde_loop *loop, uint64_t id) {
  if (loop->nwaiting &&
      bsearch(&id, loop->waiting, loop->nwaiting, sizeof id, cmp_id))
    arm_scan(loop, 0);
}

static struct end_op *find_end(struct sonde_loop *loop, uint64_t id) {
  for (struct sonde_op *op = loop->ops; op; op = op->next)
    if (op->id == id && op->vt == &end_vt) return (struct end_op *)op;
  return NULL;
}

/* The scan itself; fills *done with the endings to complete (ids). */
static int scan(struct sonde_loop *loop, int adopt, uint64_t **done,
                size_t *ndone) {
  int n = 0;
  double now = sonde_now();
  pid_t self = getpgrp();
  *done = NULL;
  *ndone = 0;
  /* what runs: the leaders exec operations own, every operation id and
   * the endings, sorted for bsearch: one pass over the operations */
  size_t nt = 0, ni = 0, ne = 0, nexec = 0, ndying = 0;
  for (struct sonde_reap *r = loop->reaps; r; r = r->next)
    if (r->leader) ndying++;
  pid_t *tracked = malloc(sizeof *tracked * (loop->nops + ndying + 1));
  uint64_t *live = malloc(sizeof *live * (loop->nops + ndying + 1));
  struct end_op **ends = malloc(sizeof *ends * (loop->nops + 1));
  pid_t *kids = NULL;
  size_t nk = 0, capk = 0;
  struct sonde_orphan *seen = NULL;
  uint64_t *waiting = NULL;
  size_t ns = 0, nw = 0;
  if (!tracked || !live || !ends) goto out;
  for (struct sonde_op *op = loop->ops; op; op = op->next) {
    pid_t pid = sonde_exec_op_pid(op);
    if (pid > 0) tracked[nt++] = pid;
    if (strcmp(op->vt->kind, "exec") == 0) nexec++;
    live[ni++] = op->id;
    if (op->vt == &end_vt) {
      ends[ne] = (struct end_op *)op;
      ends[ne++]->pending = 0;
    }
  }
  /* a group the loop still ends (a timed-out command) runs on: its
   * leader is not an orphan, its operation counts as running, and an
   * ending that covers it SIGKILLs it at the ending's deadline */
  for (struct sonde_reap *r = loop->reaps; r; r = r->next) {
    if (!r->leader) continue;
    tracked[nt++] = r->pgid;
    if (r->owner) live[ni++] = r->owner;
    nexec++;
    for (size_t j = 0; j < ne; j++) {
      struct end_op *e = ends[j];
      if ((e->owner == 0 || e->owner == r->owner) && now >= e->kill_at &&
          !r->killed) {
        kill(-r->pgid, SIGKILL);
        r->killed = 1;
        r->until = now + REAP_GIVE_UP;
      }
    }
  }
  qsort(tracked, nt, sizeof *tracked, cmp_pid);
  qsort(live, ni, sizeof *live, cmp_id);
  /* without marks (not a subreaper) an ending only looks when asked to:
   * a library user's other children are not ours to reap */
  if ((adopt || loop->mark_owners) && children_of(0, &kids, &nk, &capk) != 0)
    goto out;
  if (nk) qsort(kids, nk, sizeof *kids, cmp_pid);
  seen = malloc(sizeof *seen * (nk + 1));
  waiting = malloc(sizeof *waiting * (nk + 1));
  if (!seen || !waiting) goto out;
  for (size_t i = 0; i < nk; i++) {
    pid_t key = kids[i];
    if (i > 0 && kids[i - 1] == key) continue;   /* listed by two threads */
    if (bsearch(&key, tracked, nt, sizeof *tracked, cmp_pid)) continue;
    pid_t pg = getpgid(key);
    if (pg < 0 || pg == self) continue;
    if (waitpid(key, NULL, WNOHANG) > 0) { n++; continue; }
    /* alive (or not yet a zombie): attribute it, once */
    struct sonde_orphan probe = {key, 0, 0}, *o = &seen[ns];
    struct sonde_orphan *old = loop->norphans ?
        bsearch(&probe, loop->orphans, loop->norphans, sizeof probe,
                cmp_orphan) : NULL;
    *o = old ? *old : (struct sonde_orphan){key, owner_of(loop, key), 0};
    ns++;
    /* the endings that cover it; the earliest SIGKILL wins */
    double kill_at = -1;
    for (size_t j = 0; j < ne; j++) {
      struct end_op *e = ends[j];
      if (e->owner != 0 && e->owner != o->owner) continue;
      e->pending++;
      if (kill_at < 0 || e->kill_at < kill_at) kill_at = e->kill_at;
    }
    if (kill_at < 0 && o->owner) {
      if (bsearch(&o->owner, live, ni, sizeof *live, cmp_id)) {
        waiting[nw++] = o->owner;              /* its command still runs */
        continue;
      }
      /* its command has ended and nothing ends it yet */
      uint64_t id = end_start(loop, o->owner, ORPHAN_GRACE, NULL, NULL);
      struct end_op *e = id ? find_end(loop, id) : NULL;
      struct end_op **more = e ? realloc(ends, sizeof *ends * (ne + 1)) : NULL;
      if (!more) continue;
      ends = more;
      ends[ne++] = e;
      e->pending = 1;
      kill_at = e->kill_at;
    }
    if (kill_at < 0) continue;                 /* nobody's: left alone */
    if (now >= kill_at) {
      signal_tree(key, SIGKILL);
    } else if (!o->termed) {
      signal_tree(key, SIGTERM);
      o->termed = 1;
    }
  }
  qsort(waiting, nw, sizeof *waiting, cmp_id);
  free(loop->orphans);
  loop->orphans = seen;
  loop->norphans = ns;
  seen = NULL;
  free(loop->waiting);
  loop->waiting = waiting;
  loop->nwaiting = nw;
  waiting = NULL;
  /* endings done: none of their processes left (for the ending of
   * everything, no command running either), or given up */
  double next = now + SCAN_POLL;
  *done = malloc(sizeof **done * (ne + 1));
  for (size_t j = 0; j < ne; j++) {
    struct end_op *e = ends[j];
    int over = e->pending == 0 && (e->owner != 0 || nexec == 0);
    if (over || now > e->until) {
      e->op.res.status = over ? SONDE_SUCCESS : SONDE_UNKNOWN;
      e->op.res.reason = over ? SONDE_R_OK : SONDE_R_RESOURCE;
      if (*done) (*done)[(*ndone)++] = e->op.id;
    } else if (e->kill_at > now && e->kill_at < next) {
      next = e->kill_at;
    }
  }
  if (ne > *ndone || (ne && !*done)) arm_scan(loop, next - now);
out:
  free(tracked);
  free(live);
  free(ends);
  free(kids);
  free(seen);
  free(waiting);
  return n;
}

static int reap(struct sonde_loop *loop, int adopt) {
  if (loop->scanning) {          /* from a callback of an ending: later */
    arm_scan(loop, 0);
    return 0;
  }
  uint64_t *done;
  size_t ndone;
  loop->scanning = 1;
  int n = scan(loop, adopt, &done, &ndone);
  loop->scanning = 0;
  /* callbacks last: they may start or cancel anything */
  for (size_t i = 0; i < ndone; i++) {
    struct end_op *e = find_end(loop, done[i]);
    if (e) sonde_op_complete(&e->op);
  }
  free(done);
  return n;
}

int sonde_reap_orphans(struct sonde_loop *loop) { return reap(loop, 1); }

static void on_scan_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  reap(arg, 0);
}

uint64_t sonde_end_orphans(struct sonde_loop *loop, uint64_t owner,
                           double grace, sonde_result_cb cb, void *arg) {
  uint64_t id = end_start(loop, owner, grace, cb, arg);
  if (id) arm_scan(loop, 0);
  return id;
}

/* ---- timers -------------------------------------------------------------- */

struct timer_op {
  struct sonde_op op;
  struct event ev;           /* assigned, not allocated: one malloc a timer */
};

static void timer_release(struct sonde_op *op, int cancelled) {
  struct timer_op *t = (struct timer_op *)op;
  (void)cancelled;
  event_del(&t->ev);
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
  if (event_assign(&t->ev, loop->base, -1, 0, on_timer, t) != 0) {
    free(t);
    return 0;
  }
  sonde_loop_add_timer(loop, &t->ev, seconds);
  return sonde_op_start(loop, &t->op, cb, arg);
}

/* ---- teardown ------------------------------------------------------------ */

void sonde_loop_free(struct sonde_loop *loop) {
  if (!loop) return;
  while (loop->ops) sonde_loop_cancel(loop, loop->ops->id);
  /* Groups still being ended (timed-out commands): no more grace. */
  sonde_loop_signal_groups(loop, SIGKILL);
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
  if (loop->scan_timer) event_free(loop->scan_timer);
  free(loop->orphans);
  free(loop->waiting);
  sonde_resolver_free(loop);
  free(loop->env_buf);
  sonde_curl_free(loop);
  sonde_http_loop_free(loop);
  if (loop->own_base) event_base_free(loop->base);
  free(loop);
}
