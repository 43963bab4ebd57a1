/*
 * sonde/tcp.h - the TCP prober (kubelet tcpSocket, reference section 4).
 *
 * Opens a TCP connection within the timeout and closes it at once; nothing
 * is sent or read.  Connected: success (reason ok, output "").  Refused:
 * failure connect_refused.  No connection by the deadline: failure
 * connect_timeout.  Name not resolved: failure dns.  Other errors: failure
 * network.  No socket (socket() failing with EMFILE, ENFILE, ENOBUFS or
 * ENOMEM), or a name not resolved while the process has no descriptor
 * left: unknown resource (the engine's trouble, not the target's).  A port
 * that accepts and then stays silent is a success: connecting is all this
 * probe does.  Control bytes in the error text are replaced with '?'.
 * Resolution and connect go through libcurl (CURLOPT_CONNECT_ONLY)
 * on the loop's multi handle, so nothing blocks.
 */
#ifndef SONDE_TCP_H
#define SONDE_TCP_H

#include <stdint.h>

#include "sonde/loop.h"

struct sonde_tcp_opts {
  const char *host;  /* name or IP literal (IPv6 without brackets) */
  long port;         /* 1..65535 */
  double timeout;    /* seconds, > 0 */
};

/* Start a connection attempt.  Returns the operation id, or 0 when out of
 * memory (cb is then never called). */
uint64_t sonde_tcp_start(struct sonde_loop *loop,
                         const struct sonde_tcp_opts *opts,
                         sonde_result_cb cb, void *arg);

#endif
