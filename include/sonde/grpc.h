/*
 * sonde/grpc.h - the gRPC health prober (kubelet grpc probe, GA 1.27;
 * reference/kubelet-probes.md section 5; the kubelet's
 * pkg/probe/grpc/grpc.go).
 *
 * One unary call of the standard health protocol,
 * grpc.health.v1.Health/Check with HealthCheckRequest{service}, over
 * HTTP/2 with libcurl (nghttp2): a POST to
 * http://HOST:PORT/grpc.health.v1.Health/Check with prior knowledge of
 * HTTP/2 (no upgrade), or, with use_tls, to https://... with HTTP/2
 * chosen by ALPN and the shared TLS options (sonde/tls.h, applied with
 * sonde_tls_curl_apply exactly as the HTTP prober does).  Request headers: content-type application/grpc, te trailers,
 * grpc-timeout (what is left of the deadline), user-agent.  The body is
 * one gRPC message: a 0 "compressed" byte, the length as 4 bytes big
 * endian, the protobuf request (sonde/pb.h).  grpc-status and
 * grpc-message are read from the trailers, or from the headers of a
 * Trailers-Only response; the response's one message is decoded with
 * sonde/pb.h.  It runs on the loop's curl multi like the HTTP prober
 * (easy handles from the loop's pool, a fresh connection, closed at the
 * end, no proxy, no TLS session resumed), and one deadline, `timeout`
 * after the start, covers resolution, connect, TLS and the call.
 *
 * Results (output in the kubelet's words; ADDR is "host:port", an IPv6
 * host in brackets; DUR the timeout as Go prints a duration: "1s",
 * "1.5s", "500ms", "1m0s"):
 *   SERVING                     success ok, "service healthy"
 *   NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN (or a value the enum does not
 *   name: its number)           failure grpc_status, `service unhealthy
 *                               (responded with "NOT_SERVING")`
 *   grpc-status 12 UNIMPLEMENTED (no health service)
 *                               failure grpc_status, "error: this server
 *                               does not implement the grpc health
 *                               protocol (grpc.health.v1.Health): MSG"
 *   grpc-status 4 DEADLINE_EXCEEDED, or the deadline passing once the
 *   connection is up            failure timeout, "timeout: health rpc did
 *                               not complete within DUR"
 *   another grpc-status (5 NOT_FOUND for a service the server does not
 *   know, ...)                  failure grpc_status, "error: health rpc
 *                               probe failed: rpc error: code = NotFound
 *                               desc = MSG"
 *   no connection by the deadline (no TCP connect: reason
 *   connect_timeout; a TCP connection but no TLS handshake or no word
 *   from the server: timeout)   failure, "timeout: failed to connect
 *                               service "ADDR" within DUR: context
 *                               deadline exceeded"
 *   refused, TLS failure, name not resolved, other connect errors
 *                               failure connect_refused / tls / dns /
 *                               network, "error: failed to connect
 *                               service at "ADDR": ERROR"
 *   not a gRPC answer (an HTTP/1 server, no HTTP/2 by ALPN, an HTTP
 *   status without grpc-status, a malformed message or frame)
 *                               failure protocol, "error: health rpc
 *                               probe failed: ..."
 *   out of descriptors or memory  unknown resource
 *   a TLS option libcurl refuses  failure config, "error: tls options:
 *                               ..."
 * Over TLS, a certificate expiring sooner than tls.expiry_failure /
 * tls.expiry_warning (sonde_tls_judge) makes the result a failure /
 * warning with reason tls_expiry once the call has completed at the
 * HTTP/2 level, whatever the serving status (as the HTTP prober judges it
 * before the status code); grpc_status and serving_status still say what
 * the server answered.
 * error holds the detail (curl's message, grpc-message, the decoder's
 * error); has_grpc_status/grpc_status the status received, when one was;
 * has_serving_status/serving_status the response's status, when one was
 * decoded; remote_addr the address connected to; tls the peer
 * certificate facts (sonde/tls.h) when the response head came over TLS.
 *
 * "No word from the server": a server speaking HTTP/2 sends its SETTINGS
 * frame as soon as the connection is up; a port that accepts and never
 * sends a byte is not connected for gRPC (grpc-go's blocking dial waits
 * for that frame).  sonde tells the two apart by the bytes the kernel
 * received on the socket (Linux TCP_INFO); elsewhere the deadline passing
 * after the TCP connect counts as the health rpc's.
 *
 * Not the kubelet's: a refused connection fails at once (the kubelet's
 * blocking dial retries until the deadline and reports the timeout);
 * TLS is sonde's own (the kubelet's probe has none: use_tls, with the
 * HTTP prober's options and defaults: certificates not verified unless
 * tls.verify); host may be any name or address (the kubelet always dials
 * the pod IP).
 */
#ifndef SONDE_GRPC_H
#define SONDE_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "sonde/loop.h"
#include "sonde/tls.h"

/* Path of the health check method. */
#define SONDE_GRPC_HEALTH_PATH "/grpc.health.v1.Health/Check"

struct sonde_grpc_opts {
  const char *host;       /* name or IP literal (IPv6 without brackets) */
  long port;              /* 1..65535 */
  const char *service;    /* HealthCheckRequest.service; NULL = "" */
  double timeout;         /* seconds, > 0 */
  const char *user_agent; /* NULL = "sonde/<version>" */
  int use_tls;            /* https, HTTP/2 by ALPN */
  struct sonde_tls_opts tls; /* with use_tls: sonde/tls.h, as the HTTP
                                prober's (verify 0: not verified) */
};

/* Defaults: service "", timeout 1 s, plaintext. */
void sonde_grpc_opts_init(struct sonde_grpc_opts *opts);

/* Start a health check.  Options are copied.  Returns the operation id,
 * or 0 when out of memory (cb is then never called). */
uint64_t sonde_grpc_start(struct sonde_loop *loop,
                          const struct sonde_grpc_opts *opts,
                          sonde_result_cb cb, void *arg);

/* The name of a HealthCheckResponse.ServingStatus value ("SERVING" ...),
 * or NULL for a value the enum does not name. */
const char *sonde_grpc_serving_name(int status);

/* The name of a gRPC status code as Go prints it ("NotFound" ...), or
 * NULL for a code outside 0..16. */
const char *sonde_grpc_code_name(int code);

/* Go's time.Duration String() of `seconds` (rounded to the nanosecond)
 * into out: "1s", "1.5s", "500ms", "1m30s", "0s". */
void sonde_go_duration(char *out, size_t n, double seconds);

#endif
