/*
 * sonde/result.h - the one result shape every prober produces.
 *
 * A probe outcome is never an error: a refused connection, a timeout or a
 * non-zero exit is a completed probe whose result says so.  Results are
 * produced by the probers (exec.h, http.h, tcp.h, grpc.h, icmp.h, dns.h)
 * and handed to the caller's callback, which must not keep pointers into
 * them past its return: the
 * prober frees the result right after the callback returns.
 */
#ifndef SONDE_RESULT_H
#define SONDE_RESULT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Result status. kubelet: warning is logically success (an HTTP 3xx that was
 * not followed); unknown means the engine could not evaluate the probe. */
typedef enum {
  SONDE_SUCCESS = 0,
  SONDE_WARNING,
  SONDE_FAILURE,
  SONDE_UNKNOWN
} sonde_status;

/* The closed set of reasons: short, lowercase, stable words.  The X-macro
 * keeps the enum and the names in one list (see sonde_reason_name). */
#define SONDE_REASONS(X)                                                     \
  X(OK, "ok")                 /* the check passed */                        \
  X(EXIT_CODE, "exit_code")   /* exec: the command's exit code decided */   \
  X(SIGNAL, "signal")         /* exec: the command was killed by a signal */\
  X(TIMEOUT, "timeout")       /* the probe's deadline passed */             \
  X(NOT_FOUND, "not_found")   /* exec: command not found */                 \
  X(PERMISSION, "permission") /* exec: command not executable; icmp: no */ \
                              /* ICMP socket allowed */                     \
  X(SPAWN, "spawn")           /* exec: the command could not be started */  \
  X(CONNECT_REFUSED, "connect_refused") /* nothing listens there */         \
  X(CONNECT_TIMEOUT, "connect_timeout") /* no connection by the deadline */ \
  X(DNS, "dns")               /* the host name did not resolve */           \
  X(NETWORK, "network")       /* other connect/transport error */           \
  X(TLS, "tls")               /* TLS handshake or verification failed */    \
  X(TLS_EXPIRY, "tls_expiry") /* a peer certificate expires too soon */     \
  X(HTTP_STATUS, "http_status") /* HTTP: the status code decided */         \
  X(REDIRECT, "redirect")     /* HTTP: redirect not followed, or too many */\
  X(GRPC_STATUS, "grpc_status") /* gRPC: the call's status or the    \
                                 health service's serving status decided */\
  X(PROTOCOL, "protocol")     /* HTTP: no reply or a malformed reply */     \
  X(CONFIG, "config")         /* the request could not be built */          \
  X(RESOURCE, "resource")     /* the engine ran out of fds/processes/mem */ \
  X(CANCELLED, "cancelled")   /* the probe was cancelled before its end */\
  X(EXPECT, "expect")         /* an expectation was not met (expect.h, */ \
                              /* the TCP prober's expect steps) */

typedef enum {
#define SONDE_REASON_ENUM(id, name) SONDE_R_##id,
  SONDE_REASONS(SONDE_REASON_ENUM)
#undef SONDE_REASON_ENUM
  SONDE_R__COUNT
} sonde_reason;

struct sonde_tls_facts; /* sonde/tls.h */
struct sonde_dns_reply; /* sonde/dns.h */

/* One response header (HTTP).  Both strings are NUL-terminated. */
struct sonde_header {
  char *name;
  char *value;
};

/*
 * The result of one probe run.  Strings are NUL-terminated and may also
 * contain NUL bytes: use the *_len fields.  Fields that do not apply to the
 * handler are zero / NULL.
 */
struct sonde_result {
  uint64_t id;           /* the operation id (see sonde/loop.h) */
  const char *kind;      /* "exec", "http", "tcp", "grpc", "icmp", "dns",
                            "timer" (static) */
  sonde_status status;
  sonde_reason reason;
  char *output;          /* human-readable output (kubelet's "output") */
  size_t output_len;     /* bytes */
  double duration;       /* seconds, CLOCK_MONOTONIC */
  char *error;           /* detail text of a failure, or NULL */
  int code;              /* errno or CURLcode behind `error`, or 0 */

  /* exec */
  pid_t pid;             /* the command's process id (its process group) */
  int exit_code;         /* valid when exited != 0 */
  int exited;            /* the command exited (exit_code is set) */
  int signal;            /* killed by this signal, or 0 */
  int truncated;         /* output (exec) or body (HTTP) hit the cap */

  /* HTTP */
  long http_status;      /* final status code, or 0 */
  char *body;            /* final response body (capped) */
  size_t body_len;
  struct sonde_header *headers; /* final response headers, in order */
  size_t nheaders;
  char *url;             /* last URL requested */
  int redirects;         /* redirects followed */
  /* How the request's time went, seconds, summed over every hop made
   * (blackbox_exporter's probe_http_duration_seconds phases): resolve
   * (name lookup), connect (TCP connect), tls (from the end of the lookup
   * to the end of the TLS handshake: blackbox_exporter's measure, which
   * includes the connect), processing (from the connection ready to the
   * first response byte), transfer (first byte to the end). */
  struct sonde_http_phases {
    double resolve, connect, tls, processing, transfer;
  } phases;
  int http_version;      /* final response: 10, 11, 20 or 30; 0 none */
  int64_t content_length; /* final response's Content-Length, -1 when it
                            had none, 0 when there was no response */
  size_t body_size;      /* bytes of the final response's body received
                            (decoded; the transfer stops at the cap) */

  /* gRPC (grpc.h) */
  int grpc_status;       /* the call's grpc-status code, when has_grpc_status */
  int has_grpc_status;
  int serving_status;    /* HealthCheckResponse.status (0 UNKNOWN, 1 SERVING,
                            2 NOT_SERVING, 3 SERVICE_UNKNOWN), when
                            has_serving_status */
  int has_serving_status;

  /* HTTP, TCP, gRPC and DNS (the server asked) */
  char remote_addr[64];  /* "ip:port" / "[ip]:port" connected to, or ""
                            (TCP: the address tried last, also when that
                            failed) */
  int ip_protocol;       /* 4 or 6: the family of remote_addr, or of the
                            address tried last when no connection was
                            made; 0 when none was tried (blackbox_exporter's
                            probe_ip_protocol; ICMP: of the address chosen) */

  /* ICMP (icmp.h) */
  double icmp_rtt;       /* seconds from the request sent to its reply */
  double icmp_resolve;   /* seconds of the lookup (0 for an IP literal) */
  double icmp_setup;     /* seconds of the socket's set-up */
  int icmp_reply_ttl;    /* the reply's TTL / hop limit, or -1 */
  uint32_t icmp_addr_hash; /* FNV-1a 32 of the address's bytes */
  int icmp_socket;       /* the socket opened: 0 none, 1 datagram, 2 raw */

  /* HTTPS and TCP with TLS: the peer's certificate facts (sonde/tls.h),
   * owned by the result, or NULL when no TLS connection was made */
  struct sonde_tls_facts *tls;

  /* DNS (dns.h): the reply's facts (rcode, records, lookup time), owned by
   * the result, or NULL when no query was sent */
  struct sonde_dns_reply *dns;
};

/* Name of a status ("success" ...) or reason ("ok" ...); never NULL. */
const char *sonde_status_name(sonde_status s);
const char *sonde_reason_name(sonde_reason r);

/* Free everything a result owns and zero it.  Safe on a zeroed result. */
void sonde_result_clear(struct sonde_result *r);

/* Move everything `r` owns into *dst (cleared first) and leave `r` zeroed.
 * A result callback may take its result this way instead of copying it:
 * the prober then has nothing of it left to free. */
void sonde_result_take(struct sonde_result *dst, const struct sonde_result *r);

/* Replace r->output with a copy of the given bytes.  Returns 0, or -1 when
 * out of memory (output left unchanged). */
int sonde_result_set_output(struct sonde_result *r, const char *s, size_t n);

/* printf into r->error (replacing it).  Out of memory leaves error NULL. */
void sonde_result_set_error(struct sonde_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Callback that receives a finished probe's result.  Called from the event
 * loop, never from inside the call that started the probe. */
typedef void (*sonde_result_cb)(const struct sonde_result *r, void *arg);

#endif
