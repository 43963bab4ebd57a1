/*
 * worker.c - a declared probe's worker (include/sonde/worker.h).
 *
 * One timer event per worker, assigned once and re-armed at each slot; the
 * prober is started from the tick with the options the caller prepared
 * once; its result is taken (not copied) as the worker's last result and
 * counted in place.  The caller hears of a result only when it asked to
 * (filter, notify) or when the result changes something.
 *
 * Ownership: the worker owns its timer event, its run in flight (one
 * operation id: cancelled on stop and free) and its last result.  The
 * hooks may stop the worker but not free it (the caller frees it from
 * outside any hook).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "internal.h"
#include "sonde/worker.h"

static const double duration_buckets[SONDE_DURATION_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

const double *sonde_duration_buckets(void) { return duration_buckets; }

struct sonde_worker {
  struct sonde_loop *loop;
  struct event tick;         /* assigned once; armed while active */
  int active;
  double first_at, period;
  uint64_t ticks;
  double slot;               /* the slot of the tick being run */
  sonde_handler handler;
  const void *opts;
  uint64_t inflight;         /* operation id of the run, or 0 */
  double run_wall;           /* wall clock at the start of that run */
  struct sonde_thresholds th;
  struct sonde_count count;
  int gated, filter, notify_success, notify_other, alerted;
  struct sonde_probe_stats stats;
  struct sonde_result last;
  int has_last;
  uint64_t version;          /* bumped by every change a reader can see */
  int committed;             /* a result has been counted: the two below */
  sonde_status last_status;  /* of the last result counted */
  double last_duration;      /* seconds */
  double last_wall;
  const struct sonde_worker_hooks *hooks;
  void *arg;
  struct sonde_sched_stats *sched;
};

/* ---- the pure parts ------------------------------------------------------ */

struct sonde_count sonde_count_seed(sonde_kind kind) {
  struct sonde_count c = {SONDE_PS_FAILURE, SONDE_PS_NONE, 0, 0};
  if (kind == SONDE_LIVENESS) c.state = SONDE_PS_SUCCESS;
  else if (kind == SONDE_STARTUP) c.state = SONDE_PS_UNKNOWN;
  return c;
}

int sonde_step(const struct sonde_count *w, sonde_status status,
               const struct sonde_thresholds *p, struct sonde_count *out,
               struct sonde_transition *t) {
  struct sonde_count n = *w;
  if (status == SONDE_UNKNOWN) {          /* moves no counter */
    *out = n;
    return 0;
  }
  sonde_pstate v = status == SONDE_FAILURE ? SONDE_PS_FAILURE
                                           : SONDE_PS_SUCCESS;
  n.run = v == w->last ? w->run + 1 : 1;
  n.last = v;
  if (n.run < (v == SONDE_PS_FAILURE ? p->failure : p->success)) {
    *out = n;
    return 0;
  }
  memset(t, 0, sizeof *t);
  t->from = w->state;
  t->to = v;
  t->changed = w->state != v;
  t->run = n.run;
  n.state = v;
  if (p->service && ((p->kind == SONDE_LIVENESS && v == SONDE_PS_FAILURE) ||
                     p->kind == SONDE_STARTUP)) {
    n.hold = 1;
    n.run = 0;
    t->hold = 1;
    t->restart = v == SONDE_PS_FAILURE;
  }
  *out = n;
  return 1;
}

uint64_t sonde_next_slot(double first_at, double period, uint64_t ticks,
                         double now, uint64_t *missed) {
  double f = floor((now - first_at) / period) + 1;
  /* f is a slot number only below 2^53 (false for NaN too): beyond, the
   * conversion would be undefined and the loop below endless */
  uint64_t k = f > (double)ticks && f < 0x1p53 ? (uint64_t)f : ticks + 1;
  /* rounding: the slot armed must lie ahead of now (one step while slot
   * numbers are exact) */
  for (int i = 0; i < 4 && first_at + (double)k * period <= now; i++) k++;
  if (missed) *missed += k - ticks - 1;
  return k;
}

/* ---- schedule lateness: log-linear histogram ----------------------------
 * Microseconds; values below 16 us have a bucket each, above that 16
 * buckets per power of two (6 % wide): index = 16 * (e - 3) + mantissa. */
static unsigned late_bucket(double seconds) {
  double us = seconds * 1e6;
  if (!(us >= 1)) return 0;
  if (us < 16) return (unsigned)us;
  int e;
  double m = frexp(us, &e);               /* us = m * 2^e, m in [0.5, 1) */
  unsigned i = (unsigned)(16 * (e - 5) + (int)((m - 0.5) * 32)) + 16;
  return i < 512 ? i : 511;
}

static double late_value(unsigned i) {       /* upper bound of bucket i */
  if (i < 16) return (i + 1) / 1e6;
  unsigned e = (i - 16) / 16 + 5, m = (i - 16) % 16;
  return ldexp(0.5 + (m + 1) / 32.0, (int)e) / 1e6;
}

double sonde_sched_quantile(const struct sonde_sched_stats *s, double q) {
  uint64_t n = 0;
  for (unsigned i = 0; i < 512; i++) n += s->hist[i];
  if (n == 0) return 0;
  uint64_t want = (uint64_t)ceil(q * (double)n), seen = 0;
  if (want < 1) want = 1;
  for (unsigned i = 0; i < 512; i++) {
    seen += s->hist[i];
    if (seen >= want) {
      double v = late_value(i);
      return v < s->max ? v : s->max;
    }
  }
  return s->max;
}

/* ---- the worker ---------------------------------------------------------- */

static void arm(struct sonde_worker *w, double at) {
  w->active = 1;
  sonde_loop_add_timer(w->loop, &w->tick, at - sonde_now());
}

static void on_result(const struct sonde_result *r, void *arg);

/* The caller must see this committed result (see set_notify). */
static int must_tell(const struct sonde_worker *w, sonde_status st,
                     const struct sonde_transition *t) {
  if (st == SONDE_SUCCESS ? w->notify_success : w->notify_other) return 1;
  if (!t) return 0;
  return t->changed || t->hold || t->actions ||
         (w->th.kind == SONDE_STARTUP && w->th.service &&
          t->to == SONDE_PS_SUCCESS);
}

/* A run that could not start (out of memory): an unknown result. */
static void no_run(struct sonde_worker *w) {
  sonde_result_clear(&w->last);
  w->last.kind = "worker";
  w->last.status = SONDE_UNKNOWN;
  w->last.reason = SONDE_R_RESOURCE;
  sonde_result_set_error(&w->last, "out of memory");
  w->has_last = 1;
  w->stats.results++;
  w->last_wall = w->run_wall;
  w->version++;
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  struct sonde_worker *w = arg;
  (void)fd;
  (void)what;
  double now = sonde_now();
  uint64_t missed = 0;
  uint64_t k = sonde_next_slot(w->first_at, w->period, w->ticks, now, &missed);
  w->slot = w->first_at + (double)(k - 1) * w->period;
  if (w->slot < w->first_at) w->slot = w->first_at;
  w->stats.missed += missed;
  if (w->sched) w->sched->missed += missed;
  w->ticks = k;
  arm(w, w->first_at + (double)k * w->period);
  if (w->count.hold || w->gated) return;
  if (w->inflight) {
    w->stats.skipped++;
    if (w->sched) w->sched->skipped++;
    if (w->hooks->skipped) w->hooks->skipped(w, w->arg);
    return;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  w->run_wall = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  uint64_t id = 0;
  switch (w->handler) {
  case SONDE_H_TCP: id = sonde_tcp_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_HTTP: id = sonde_http_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_EXEC: id = sonde_exec_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_GRPC: id = sonde_grpc_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_ICMP: id = sonde_icmp_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_DNS: id = sonde_dns_start(w->loop, w->opts, on_result, w); break;
  case SONDE_H_NONE:
    if (!w->hooks->tick || !w->hooks->tick(w, w->arg)) {
      w->stats.skipped++;
      if (w->sched) w->sched->skipped++;
      return;
    }
    break;
  }
  w->stats.runs++;
  if (w->sched) {
    double late = sonde_now() - w->slot;
    if (late < 0) late = 0;
    w->sched->runs++;
    w->sched->hist[late_bucket(late)]++;
    if (late > w->sched->max) w->sched->max = late;
  }
  if (w->handler == SONDE_H_NONE) return;
  if (id) {
    w->inflight = id;
    return;
  }
  no_run(w);
  struct sonde_transition t;
  int has = sonde_worker_commit(w, SONDE_UNKNOWN, 0, &t);
  if (w->hooks->committed) w->hooks->committed(w, has ? &t : NULL, w->arg);
}

static void on_result(const struct sonde_result *r, void *arg) {
  struct sonde_worker *w = arg;
  w->inflight = 0;
  sonde_result_take(&w->last, r);
  w->has_last = 1;
  w->stats.results++;
  w->version++;
  w->last_wall = w->run_wall;
  if (w->filter) {
    if (w->hooks->result) w->hooks->result(w, w->arg);
    return;
  }
  struct sonde_transition t;
  sonde_status st = w->last.status;
  int has = sonde_worker_commit(w, st, w->last.duration, &t);
  if (must_tell(w, st, has ? &t : NULL) && w->hooks->committed)
    w->hooks->committed(w, has ? &t : NULL, w->arg);
}

struct sonde_worker *sonde_worker_new(struct sonde_loop *loop,
                                      const struct sonde_thresholds *th,
                                      double period, sonde_handler handler,
                                      const void *opts,
                                      const struct sonde_worker_hooks *hooks,
                                      void *arg,
                                      struct sonde_sched_stats *stats) {
  struct sonde_worker *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->loop = loop;
  w->th = *th;
  w->period = period > 0 ? period : 1;
  w->handler = handler;
  w->opts = opts;
  w->hooks = hooks;
  w->arg = arg;
  w->sched = stats;
  w->count = sonde_count_seed(th->kind);
  w->notify_other = 1;
  if (event_assign(&w->tick, loop->base, -1, 0, on_tick, w) != 0) {
    free(w);
    return NULL;
  }
  return w;
}

void sonde_worker_free(struct sonde_worker *w) {
  if (!w) return;
  sonde_worker_stop(w);
  sonde_result_clear(&w->last);
  free(w);
}

void sonde_worker_abandon(struct sonde_worker *w) {
  if (!w) return;
  sonde_result_clear(&w->last);
  free(w);
}

int sonde_worker_start(struct sonde_worker *w, double first_at) {
  if (w->active) event_del(&w->tick);
  w->first_at = first_at;
  w->ticks = 0;
  arm(w, first_at);
  return 0;
}

void sonde_worker_cancel(struct sonde_worker *w) {
  if (w->inflight) sonde_loop_cancel(w->loop, w->inflight);
  w->inflight = 0;
}

void sonde_worker_stop(struct sonde_worker *w) {
  if (w->active) event_del(&w->tick);
  w->active = 0;
  sonde_worker_cancel(w);
}

int sonde_worker_active(const struct sonde_worker *w) { return w->active; }
int sonde_worker_busy(const struct sonde_worker *w) { return w->inflight != 0; }
void sonde_worker_set_gated(struct sonde_worker *w, int g) { w->gated = g; }
void sonde_worker_set_filter(struct sonde_worker *w, int f) { w->filter = f; }

void sonde_worker_set_notify(struct sonde_worker *w, int success, int other) {
  w->notify_success = success;
  w->notify_other = other;
}

/* Which actions a published result calls: on_failure when a failure is
 * published (the seed does not count), on_recovery at the first success
 * published after it. */
static void alerting(struct sonde_worker *w, struct sonde_transition *t) {
  t->actions = SONDE_ACT_NONE;
  if (t->to == SONDE_PS_FAILURE && !w->alerted) {
    w->alerted = 1;
    t->actions = SONDE_ACT_ON_FAILURE;
  } else if (t->to == SONDE_PS_SUCCESS && w->alerted) {
    w->alerted = 0;
    t->actions = SONDE_ACT_ON_RECOVERY;
  }
}

int sonde_worker_commit(struct sonde_worker *w, sonde_status status,
                        double duration, struct sonde_transition *t) {
  struct sonde_probe_stats *s = &w->stats;
  if ((unsigned)status > SONDE_UNKNOWN) status = SONDE_UNKNOWN;
  if (!(duration >= 0)) duration = 0;
  s->counts[status]++;
  w->version++;
  w->committed = 1;
  w->last_status = status;
  w->last_duration = duration;
  s->sum += duration;
  s->n++;
  for (int i = SONDE_DURATION_BUCKETS - 1; i >= 0; i--) {
    if (duration > duration_buckets[i]) break;
    s->buckets[i]++;
  }
  if (!sonde_step(&w->count, status, &w->th, &w->count, t)) return 0;
  alerting(w, t);
  return 1;
}

void sonde_worker_force(struct sonde_worker *w, sonde_pstate to,
                        struct sonde_transition *t) {
  memset(t, 0, sizeof *t);
  t->from = w->count.state;
  t->to = to;
  t->changed = w->count.state != to;
  w->count.state = to;
  w->version++;
  alerting(w, t);
}

void sonde_worker_finished(struct sonde_worker *w) {
  w->stats.results++;
  w->version++;
}

void sonde_worker_reset(struct sonde_worker *w) {
  w->count = sonde_count_seed(w->th.kind);
  w->version++;
}

uint64_t sonde_worker_version(const struct sonde_worker *w) {
  return w->version;
}

const struct sonde_count *sonde_worker_count(const struct sonde_worker *w) {
  return &w->count;
}

const struct sonde_probe_stats *sonde_worker_stats(
    const struct sonde_worker *w) {
  return &w->stats;
}

int sonde_worker_committed(const struct sonde_worker *w, sonde_status *status,
                           double *duration) {
  if (!w->committed) return 0;
  *status = w->last_status;
  *duration = w->last_duration;
  return 1;
}

sonde_handler sonde_worker_handler(const struct sonde_worker *w) {
  return w->handler;
}

const void *sonde_worker_opts(const struct sonde_worker *w) { return w->opts; }

const struct sonde_result *sonde_worker_last(const struct sonde_worker *w,
                                             double *wall) {
  if (wall) *wall = w->last_wall;
  return w->has_last ? &w->last : NULL;
}
