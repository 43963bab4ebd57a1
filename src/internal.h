/*
 * internal.h - what the core's files share and the public headers do not
 * show: the operation base struct and the loop's internals.
 *
 * Ownership: a sonde_loop owns every operation linked into it.  An
 * operation is malloc'd by its prober, linked by sonde_op_start, and freed
 * by sonde_op_complete (after its callback) or by cancellation; in both
 * cases the prober's `release` hook frees the prober's own resources first.
 *
 * An operation is never freed while one of its own callbacks runs.  The
 * result callback runs from sonde_op_complete after the op is unlinked
 * (cancelling it from there finds nothing and returns 0); the op is freed
 * when the callback returns.  A prober that calls into user code with the
 * op still linked (exec's output callback) brackets the call with
 * sonde_op_hold / sonde_op_unhold: a sonde_loop_cancel meanwhile unlinks
 * the op, releases its resources (`release(op, 1)`) and marks it dead, and
 * sonde_op_unhold frees it once the call has returned.  After a dead op's
 * callback returns, the prober must touch nothing of it (its fds, events
 * and buffers are gone) and must return at once.
 */
#ifndef SONDE_INTERNAL_H
#define SONDE_INTERNAL_H

#include <curl/curl.h>
#include <event2/event.h>
#include <stdint.h>
#include <sys/types.h>

#include "sonde/loop.h"
#include "sonde/result.h"

struct sonde_op;
struct sonde_curl_owner;
struct sonde_resolver;
struct evutil_addrinfo;

struct sonde_op_vtable {
  const char *kind;
  /* Free the prober's resources (events, fds, curl handles) but not the op
   * itself nor op->res.  `cancelled` is 1 when the op is being cancelled
   * (an exec op then kills its process group). */
  void (*release)(struct sonde_op *op, int cancelled);
};

struct sonde_op {
  struct sonde_loop *loop;
  struct sonde_op *prev, *next;
  uint64_t id;
  const struct sonde_op_vtable *vt;
  sonde_result_cb cb;
  void *arg;
  struct sonde_result res;
  double start;              /* sonde_now() at start */
  struct event *soon;        /* for sonde_op_complete_soon, lazily made */
  unsigned busy;             /* depth of its callbacks running now */
  int dead;                  /* unlinked and released while busy: freed by
                                whoever calls back, once busy is 0 */
};

/* A process group the exec prober has signalled and still reaps; or one
 * the loop still ends (sonde_loop_end_group): its leader not yet reaped. */
struct sonde_reap {
  pid_t pgid;
  int leader;                /* the leader (pid pgid) is not reaped yet:
                                its pgid cannot be recycled meanwhile */
  int killed;                /* SIGKILL sent to the group */
  uint64_t owner;            /* the finished operation that ran it, or 0 */
  double kill_at;            /* SIGKILL the group then (leader only) */
  double until;              /* give up after this (monotonic) */
  struct sonde_reap *next;
};

/* Idle curl easy handles a loop keeps for its next transfers
 * (sonde_curl_easy_get). */
#define SONDE_EASY_POOL_MAX 64

/* A child of this process that the orphan scan has seen (loop.c). */
struct sonde_orphan {
  pid_t pid;
  uint64_t owner;            /* the operation that started it; 0: nobody */
  int termed;                /* SIGTERM sent */
};

struct sonde_loop {
  struct event_base *base;
  int own_base;
  CURLM *multi;
  struct event *curl_timer;
  struct sonde_op *ops;      /* doubly linked list of pending operations */
  size_t nops;
  uint64_t next_id;
  struct sonde_reap *reaps;  /* groups still being reaped */
  struct event *reap_timer;
  /* escaped processes (sonde_reap_orphans, sonde_end_orphans) */
  unsigned serial;           /* tells this loop's marks from another's */
  int mark_owners;           /* SONDE_OWNER in the commands' environment */
  struct sonde_orphan *orphans;  /* seen at the last scan, sorted by pid */
  size_t norphans;
  uint64_t *waiting;         /* running owners of orphans, sorted */
  size_t nwaiting;
  struct event *scan_timer;  /* next scan while an ending runs */
  int scanning;
  char **env_buf;            /* sonde_owner_env's vector, reused: env_cap
                                pointers, then the mark's text */
  size_t env_cap;
  char owner_prefix[48];     /* "SONDE_OWNER=<pid>.<serial>." */
  size_t owner_len;          /* 0: not made yet */
  unsigned owner_gen;        /* the fork generation it was made in */
  struct sonde_curl_owner **fd_owner; /* curl's sockets: fd -> transfer */
  size_t nfd_owner;
  CURL *easy_pool[SONDE_EASY_POOL_MAX]; /* idle easy handles, reset */
  size_t neasy_pool;
  struct curl_slist *http_hdrs; /* http.c: the request headers of a probe */
  char *http_hdrs_ua;           /* with no header nor body of its own, for
                                   this default User-Agent (or NULL) */
  struct sonde_resolver *resolver;    /* resolve.c; made at first lookup */
};

/* Link a freshly allocated op (zeroed by the caller, `vt` set) into the
 * loop and give it an id.  Returns the id. */
uint64_t sonde_op_start(struct sonde_loop *loop, struct sonde_op *op,
                        sonde_result_cb cb, void *arg);

/* End op: set duration if unset, unlink, release, call the callback, clear
 * the result, free the op (or, when a caller up the stack holds it, leave
 * the free to its sonde_op_unhold).  The op must not be touched
 * afterwards. */
void sonde_op_complete(struct sonde_op *op);

/* Bracket a call into user code made while op is still linked (an output
 * callback): the op is not freed before sonde_op_unhold, even if the user
 * cancels it.  sonde_op_unhold returns 1 when the op was cancelled or
 * completed meanwhile: it has then been released (and freed, if this was
 * the outermost hold) and the caller must not touch it again; else 0. */
void sonde_op_hold(struct sonde_op *op);
int sonde_op_unhold(struct sonde_op *op);

/* Complete op from the next loop iteration (for results known at start, so
 * that callbacks never run inside the starting call).  If that cannot be
 * arranged (out of memory) the op is completed at once. */
void sonde_op_complete_soon(struct sonde_op *op);

/* Arm timer event `ev` to fire `seconds` (>= 0) from now (or an I/O
 * event's timeout).  Refreshes the base's cached time first: inside a
 * callback libevent would otherwise count from the start of the loop
 * iteration and fire early.  Returns event_add's 0 or -1. */
int sonde_loop_add_timer(struct sonde_loop *loop, struct event *ev,
                         double seconds);

/* The leader pid of a running exec operation, or 0 for any other op. */
pid_t sonde_exec_op_pid(struct sonde_op *op);

/* The environment to spawn operation `id` with: envp with SONDE_OWNER set
 * for this loop and `id` (any SONDE_OWNER of envp dropped), in a vector
 * the loop owns and reuses (valid until the next call; no string is
 * copied); or envp itself when the loop does not mark its commands (or
 * out of memory). */
char *const *sonde_owner_env(struct sonde_loop *loop, uint64_t id,
                             char *const *envp);

/* Remember a signalled process group for background reaping. */
void sonde_loop_reap_group(struct sonde_loop *loop, pid_t pgid);

/* Take over the process group `pgid` of operation `owner`, finished
 * (a timed-out command: its result is out) while its leader, a child of
 * this process, is still running and has been sent SIGTERM: SIGKILL the
 * group `grace` seconds from now, or as soon as the leader has exited,
 * whichever comes first; reap the leader (never before that SIGKILL: the
 * pgid cannot be recycled while the leader is unreaped), then the rest
 * like sonde_loop_reap_group.  Until the leader is reaped the loop owns
 * the group: the orphan scan counts it as a running command of `owner`
 * (its escaped processes wait for it; an ending of everything waits for
 * it and SIGKILLs it at its own deadline), sonde_loop_signal_groups
 * signals it, sonde_loop_free kills it.  Polled every 20 ms. */
void sonde_loop_end_group(struct sonde_loop *loop, pid_t pgid, uint64_t owner,
                          double grace);

/* Send `sig` to every group the loop still ends (sonde_loop_end_group);
 * returns how many. */
int sonde_loop_signal_groups(struct sonde_loop *loop, int sig);

/* Reap whatever of group `pgid` has become our child; returns the number of
 * processes reaped, or -1 once no child of ours is left in the group. */
int sonde_reap_group_now(pid_t pgid);

/* curl multi plumbing (curlsock.c).  sonde_curl_free frees the multi
 * handle and the idle easy handles (after every operation is gone). */
int sonde_curl_init(struct sonde_loop *loop);
void sonde_curl_free(struct sonde_loop *loop);

/* Easy handles reused from a per-loop pool instead of a curl_easy_init and
 * curl_easy_cleanup per transfer.
 *
 * sonde_curl_easy_get: an idle handle of the loop (every option at its
 * default: curl_easy_reset ran when it was put back) or a new one; NULL
 * when out of memory.
 *
 * sonde_curl_easy_put: give back a handle that is in no multi (removed
 * first) and whose transfer is over.  It is reset (options, header list,
 * error buffer, private pointer, callbacks: nothing of the last transfer
 * stays set) and kept, up to SONDE_EASY_POOL_MAX idle ones, else cleaned
 * up.  Some state of a handle survives curl_easy_reset (libcurl 7.88):
 *   - its TLS session cache: never filled, sonde_curl_setup turns it off
 *     for every transfer;
 *   - the last socket error (CURLINFO_OS_ERRNO, never set back to 0):
 *     a handle that has one is cleaned up, not kept;
 *   - "no Expect: 100-continue any more" after a 417: the caller passes
 *     keep = 0 when the transfer could have set it (a request with an
 *     Expect header of the user's), and the handle is cleaned up.
 * The connection is not the handle's: every transfer makes its own
 * (CURLOPT_FRESH_CONNECT, CURLOPT_FORBID_REUSE), closed when it ends. */
CURL *sonde_curl_easy_get(struct sonde_loop *loop);
void sonde_curl_easy_put(struct sonde_loop *loop, CURL *easy, int keep);

/* Free what http.c keeps per loop (loop->http_hdrs). */
void sonde_http_loop_free(struct sonde_loop *loop);
/* What CURLOPT_PRIVATE of every easy handle on the multi points at: the
 * transfer's owner, told once when the transfer has ended.  The easy handle
 * has already been removed from the multi when `done` runs.
 *
 * The other fields are kept by curlsock.c's socket callbacks (see
 * sonde_curl_setup) and read by sonde_curl_classify; the prober zeroes the
 * owner with the op and calls sonde_curl_owner_reset before each transfer
 * and sonde_curl_owner_forget before giving the easy handle back
 * (sonde_curl_easy_put) or cleaning it up. */
#define SONDE_OWNER_FDS 4
struct sonde_curl_owner {
  void (*done)(struct sonde_curl_owner *owner, CURLcode code);
  struct sonde_loop *loop;
  int sock_errno;            /* errno of a socket() that failed, or 0 */
  int ip_protocol;           /* 4 or 6: the family of the last socket the
                                transfer opened (even one whose connect
                                failed), or 0 */
  int tcp_connected;         /* a TCP connect of the transfer completed */
  int peer_bytes;            /* a connected socket of the transfer had
                                received bytes from the peer when it was
                                closed: 1, 0, or -1 when the system does not
                                tell (not Linux) */
  unsigned alloc_failures;   /* curl's failed allocations at the start */
  curl_socket_t fds[SONDE_OWNER_FDS]; /* its open sockets (-1: none) */
};

/* Set the options every sonde transfer shares on `easy`: CURLOPT_PRIVATE
 * = owner, no signals, nothing ever written to stderr (no verbose, no
 * progress meter), no TLS session cached or resumed, and the socket
 * callbacks that record a socket() errno and whether a TCP connect
 * completed.  owner->loop is set. */
void sonde_curl_setup(CURL *easy, struct sonde_curl_owner *owner,
                      struct sonde_loop *loop);

/* Before each transfer (each redirect hop): clear what the last one
 * recorded. */
void sonde_curl_owner_reset(struct sonde_curl_owner *owner);

/* Record tcp_connected and peer_bytes from the owner's sockets still open
 * (libcurl may close a finished transfer's connection only later). */
void sonde_curl_owner_look(struct sonde_curl_owner *owner);

/* Before the easy handle is cleaned up: the owner's sockets, still open or
 * not, no longer point at it. */
void sonde_curl_owner_forget(struct sonde_curl_owner *owner);

/* Failed allocations made by libcurl so far (all threads), and whether they
 * are counted at all (libcurl was initialised by sonde with its memory
 * callbacks; not so when the process had initialised it before). */
unsigned sonde_curl_alloc_failures(void);
int sonde_curl_alloc_counted(void);

/* Map a finished curl transfer's error onto a reason and detail text
 * (curlerr.c).  Sets r->status, r->reason, r->error (sanitised, URL
 * credentials masked), r->code.  `connect_only`: a TCP probe. */
void sonde_curl_classify(struct sonde_result *r, CURL *easy, CURLcode code,
                         const char *errbuf,
                         const struct sonde_curl_owner *owner,
                         int connect_only);

/* Text that came from a peer or from curl, made safe to show (curlerr.c):
 * userinfo passwords in URLs masked as Go's url.Redacted does
 * ("user:xxxxx@"), then control bytes and bytes that are not UTF-8 replaced
 * with '?'.  sonde_clean_text works on *s (a malloc'd string of *len bytes,
 * len may be NULL; NUL-terminated), replacing it only when a password is
 * masked; returns -1 when out of memory (*s is then left as it was, but
 * still sanitised), else 0. */
int sonde_clean_text(char **s, size_t *len);

/* EMFILE or ENFILE when the process cannot open one more descriptor now
 * (tried with /dev/null), else 0 (curlerr.c). */
int sonde_out_of_descriptors(void);

/* errno `e` says the engine is short of descriptors, buffers or memory
 * (EMFILE, ENFILE, ENOBUFS, ENOMEM): not the target's fault. */
int sonde_resource_errno(int e);

/* Format "ip:port" or "[ip]:port" of a sockaddr-like pair into out. */
void sonde_format_addr(char *out, size_t n, const char *ip, long port);

/* Host names resolved on the loop without a thread (resolve.c: libevent's
 * evdns, one resolver per loop made at the first lookup and freed by
 * sonde_resolver_free from sonde_loop_free). */
enum sonde_lookup_status {
  SONDE_LOOKUP_OK,           /* addresses found */
  SONDE_LOOKUP_NO_HOST,      /* the name does not exist or has no address */
  SONDE_LOOKUP_FAILED,       /* the name servers failed to tell */
  SONDE_LOOKUP_RESOURCE      /* no descriptor or memory for the lookup */
};
struct sonde_lookup_result {
  enum sonde_lookup_status status;
  const char *why;           /* a failure in Go's words ("no such host"),
                                static; NULL for OK */
  int code;                  /* RESOURCE: the errno, else 0 */
  struct evutil_addrinfo *ai; /* OK: TCP addresses with the port set, in
                                the order to try them (IPv4 first); the
                                callback owns them (evutil_freeaddrinfo) */
};
typedef void (*sonde_lookup_cb)(struct sonde_lookup_result *res, void *arg);
struct sonde_lookup;

/* Resolve `name` (a name, not an IP literal) for TCP port `port`.  cb is
 * called once, from the loop, or before this returns when the answer is
 * known at once (a name in /etc/hosts, a name that never resolves, no
 * resolver): this then returns NULL.  Else it returns the lookup, which
 * sonde_lookup_cancel cancels as long as cb has not run (cb is then never
 * called). */
struct sonde_lookup *sonde_lookup_start(struct sonde_loop *loop,
                                        const char *name, long port,
                                        sonde_lookup_cb cb, void *arg);
void sonde_lookup_cancel(struct sonde_lookup *lk);
void sonde_resolver_free(struct sonde_loop *loop);

#endif
