/*
 * sonde/worker.h - a declared probe's worker: its schedule, its runs, the
 * kubelet's threshold step and its counters, all on the loop.
 *
 * The kubelet runs one goroutine per probe (pkg/kubelet/prober/worker.go):
 * a ticker at the probe's period, one run per tick, the result counted
 * toward success_threshold / failure_threshold.  A sonde worker does the
 * same without a thread: one timer event, the prober started from the
 * tick, and the result counted in the prober's callback.  The caller (the
 * Lua binding, src/lworker.c) is told only what it must act on: a result
 * it filters (an on_result hook), a published transition that changes
 * something, a result that is logged.  A probe whose results change
 * nothing costs its prober and a few hundred instructions.
 *
 * Two pure functions carry the semantics and take no clock:
 * sonde_step (thresholds) and sonde_next_slot (the fixed-rate schedule).
 *
 * Ownership: the caller owns the worker (sonde_worker_free) and the
 * handler options it points the worker at (they must outlive it).  The
 * worker owns its timer event, its run in flight (cancelled by
 * sonde_worker_stop and sonde_worker_free) and its last result.
 */
#ifndef SONDE_WORKER_H
#define SONDE_WORKER_H

#include <stdint.h>

#include "sonde/dns.h"
#include "sonde/exec.h"
#include "sonde/grpc.h"
#include "sonde/http.h"
#include "sonde/icmp.h"
#include "sonde/loop.h"
#include "sonde/result.h"
#include "sonde/tcp.h"

/* Probe kinds (kubelet). */
typedef enum { SONDE_LIVENESS, SONDE_READINESS, SONDE_STARTUP } sonde_kind;

/* A published probe state.  kubelet seeds: readiness failure (not ready),
 * liveness success, startup unknown (no verdict yet). */
typedef enum {
  SONDE_PS_SUCCESS = 0,
  SONDE_PS_FAILURE,
  SONDE_PS_UNKNOWN,
  SONDE_PS_NONE = -1       /* `last` before the first verdict */
} sonde_pstate;

/* The counting state of a worker (kubelet reference 8.3, steps 12-15). */
struct sonde_count {
  sonde_pstate state;      /* published: success, failure or unknown */
  sonde_pstate last;       /* verdict of the current run of equal results,
                              success, failure or NONE */
  unsigned run;            /* results in a row equal to `last` */
  int hold;                /* probing stopped until a new instance of the
                              service (liveness after a failure, startup
                              after any verdict) */
};

struct sonde_thresholds {
  sonde_kind kind;
  unsigned success;        /* success_threshold, >= 1 */
  unsigned failure;        /* failure_threshold, >= 1 */
  int service;             /* the probe watches a supervised service */
};

/* What a published result does. */
enum { SONDE_ACT_NONE = 0, SONDE_ACT_ON_FAILURE, SONDE_ACT_ON_RECOVERY };

struct sonde_transition {
  sonde_pstate from, to;
  int changed;             /* from != to */
  unsigned run;            /* the run that reached the threshold */
  int hold;                /* the worker holds now (its run reset to 0) */
  int restart;             /* a published liveness or startup failure */
  int actions;             /* SONDE_ACT_*: set by sonde_worker_commit and
                              sonde_worker_force (failure published while
                              not alerted; first success after it) */
};

/* The seed state of `kind`. */
struct sonde_count sonde_count_seed(sonde_kind kind);

/*
 * One result through the thresholds (pure: no clock, no worker).  Warning
 * counts as success; unknown moves no counter.  Writes the new counting
 * state to *out (which may be w) and returns 1 with *t filled when a result
 * is published (t->actions 0), else 0.
 */
int sonde_step(const struct sonde_count *w, sonde_status status,
               const struct sonde_thresholds *p, struct sonde_count *out,
               struct sonde_transition *t);

/*
 * The fixed-rate schedule (pure): a tick that fires at `now`, after
 * `ticks` ticks of a schedule whose first slot is first_at, every `period`
 * seconds.  Returns k, the number of the slot to arm next (due at
 * first_at + k * period, always ahead of now and after slot ticks), and
 * adds to *missed the slots passed over without a tick (a loop held up).
 * Ticks never drift and never stack.  Slot numbers are exact while
 * (now - first_at) / period stays below 2^53 (the Lua binding keeps a
 * worker's there: a period of at least SONDE_MIN_PERIOD, a first_at at
 * most SONDE_MAX_SECONDS in the past); beyond that, or for a NaN or
 * infinite input, it returns ticks + 1 (no slot counted as missed) rather
 * than loop or convert an out-of-range double.
 */
uint64_t sonde_next_slot(double first_at, double period, uint64_t ticks,
                         double now, uint64_t *missed);

/* The shortest period of a worker, seconds: the loop's timers count
 * microseconds (sonde_loop_add_timer). */
#define SONDE_MIN_PERIOD 1e-6

/* Histogram bounds of run durations, seconds (Prometheus' defaults). */
#define SONDE_DURATION_BUCKETS 11
/* The bounds, SONDE_DURATION_BUCKETS of them, ascending.  (A function, not
 * an exported array: the host and the module both hold the core, and one
 * global defined in both is an ODR violation.) */
const double *sonde_duration_buckets(void);

/* A worker's counters, updated in place by every committed result. */
struct sonde_probe_stats {
  uint64_t counts[4];      /* by status of the committed result */
  uint64_t buckets[SONDE_DURATION_BUCKETS]; /* cumulative: duration <= bound */
  double sum;              /* seconds */
  uint64_t n;              /* results committed */
  uint64_t runs;           /* runs started */
  uint64_t skipped;        /* ticks skipped: the run before still going */
  uint64_t missed;         /* slots passed over by a late tick */
  uint64_t results;        /* runs ended: handler results taken as the
                              last result, custom checks' results told
                              by sonde_worker_finished */
};

/* Loop-wide schedule figures of every worker of a loop (lateness: the
 * start of a run minus its slot, seconds). */
struct sonde_sched_stats {
  uint64_t runs, skipped, missed;
  double max;
  uint32_t hist[512];      /* log-linear, see worker.c */
};

/* Lateness quantile q (0..1) of s, seconds (0 without runs). */
double sonde_sched_quantile(const struct sonde_sched_stats *s, double q);

struct sonde_worker;

/* What the caller is told.  All optional; `w` may be stopped (not freed)
 * from inside any of them. */
struct sonde_worker_hooks {
  /* A tick of a worker without a handler (a custom check): start the run;
   * return 1 when one was started, 0 when the one before still goes (the
   * tick is counted as skipped).  Results come back through
   * sonde_worker_commit. */
  int (*tick)(struct sonde_worker *w, void *arg);
  /* A tick skipped: the run before still going (handler workers). */
  void (*skipped)(struct sonde_worker *w, void *arg);
  /* A handler's result, kept as the last result and not yet committed
   * (the worker filters): the caller commits it (sonde_worker_commit). */
  void (*result)(struct sonde_worker *w, void *arg);
  /* A result committed by the worker itself that the caller must see:
   * `t` (or NULL) is its transition.  See sonde_worker_set_notify. */
  void (*committed)(struct sonde_worker *w, const struct sonde_transition *t,
                    void *arg);
};

/* Handlers a worker runs itself. */
typedef enum {
  SONDE_H_NONE = 0, SONDE_H_EXEC, SONDE_H_HTTP, SONDE_H_TCP, SONDE_H_GRPC,
  SONDE_H_ICMP, SONDE_H_DNS
} sonde_handler;

/*
 * A stopped worker.  `opts` points at the handler's options (a struct
 * sonde_exec_opts, sonde_http_opts, sonde_tcp_opts, sonde_grpc_opts or
 * sonde_icmp_opts or sonde_dns_opts; NULL for
 * SONDE_H_NONE), which the caller keeps alive and unchanged for the
 * worker's life.  `stats` (optional) gets the loop-wide figures.  Returns
 * NULL when out of memory.
 */
struct sonde_worker *sonde_worker_new(struct sonde_loop *loop,
                                      const struct sonde_thresholds *th,
                                      double period, sonde_handler handler,
                                      const void *opts,
                                      const struct sonde_worker_hooks *hooks,
                                      void *arg,
                                      struct sonde_sched_stats *stats);

/* Stop it, then free it with its last result. */
void sonde_worker_free(struct sonde_worker *w);

/* Free it without touching its loop, which has been freed already (its
 * timer and run went with it). */
void sonde_worker_abandon(struct sonde_worker *w);

/* Tick at first_at (monotonic seconds, sonde_now(); now or past: at once,
 * from the loop), then every period from there.  Restarts a started
 * worker's schedule; a run in flight goes on. */
int sonde_worker_start(struct sonde_worker *w, double first_at);

/* Stop ticking and cancel the run in flight (its result never comes). */
void sonde_worker_stop(struct sonde_worker *w);

/* Cancel the run in flight only. */
void sonde_worker_cancel(struct sonde_worker *w);

/* 1 while ticking. */
int sonde_worker_active(const struct sonde_worker *w);

/* 1 while a handler's run is in flight. */
int sonde_worker_busy(const struct sonde_worker *w);

/* Ticks do not start runs while gated (a startup probe has not
 * succeeded yet); unlike a hold, the caller decides. */
void sonde_worker_set_gated(struct sonde_worker *w, int gated);

/* Results go to hooks->result before they are counted. */
void sonde_worker_set_filter(struct sonde_worker *w, int filter);

/* Which results the worker commits itself still go to hooks->committed:
 * `success` for success results, `other` for warning, failure and unknown
 * (the caller logs them).  A result whose transition changes the state,
 * holds the worker, restarts the service, calls actions or is a startup
 * probe's success under a service always goes. */
void sonde_worker_set_notify(struct sonde_worker *w, int success, int other);

/*
 * Count a result with status `status` and duration (seconds): counters,
 * threshold step, and which actions it calls.  Returns 1 with *t filled
 * when a result is published, else 0.
 */
int sonde_worker_commit(struct sonde_worker *w, sonde_status status,
                        double duration, struct sonde_transition *t);

/* Publish `to` without counting (kubelet step 6: a readiness probe whose
 * container is not running); fills *t (actions included). */
void sonde_worker_force(struct sonde_worker *w, sonde_pstate to,
                        struct sonde_transition *t);

/* A worker without a handler: its caller's run has ended. */
void sonde_worker_finished(struct sonde_worker *w);

/* Back to the seed: counting state only (counters and alerting stay). */
void sonde_worker_reset(struct sonde_worker *w);

/* Read-only views. */
const struct sonde_count *sonde_worker_count(const struct sonde_worker *w);
const struct sonde_probe_stats *sonde_worker_stats(
    const struct sonde_worker *w);
/* The status and duration (seconds) of the last result counted
 * (sonde_worker_commit: after the caller's hooks, what the thresholds
 * saw); 0 before the first. */
int sonde_worker_committed(const struct sonde_worker *w, sonde_status *status,
                           double *duration);
/* A number that changes whenever what the views below show changes (a
 * result taken, counted, forced or reset): a reader that keeps what it
 * made of them knows when to make it again. */
uint64_t sonde_worker_version(const struct sonde_worker *w);
/* The handler and options the worker was made with. */
sonde_handler sonde_worker_handler(const struct sonde_worker *w);
const void *sonde_worker_opts(const struct sonde_worker *w);
/* The last handler result (NULL before the first) and the wall-clock time
 * its run started (seconds since the epoch). */
const struct sonde_result *sonde_worker_last(const struct sonde_worker *w,
                                             double *wall);

#endif
