/*
 * sonde/tcp.h - the TCP prober (kubelet tcpSocket, reference section 4;
 * the kubelet dials with Go's net.DialTimeout).
 *
 * Opens a TCP connection within the timeout and closes it at once; nothing
 * is sent or read.  A port that accepts and then stays silent is a
 * success: connecting is all this probe does.
 *
 * The host is an IP literal (IPv4, or IPv6 without brackets, with an
 * optional zone: "fe80::1%eth0"), connected directly, or a name, resolved
 * on the loop without a thread (libevent's evdns: /etc/hosts, then the
 * name servers, search list and options of /etc/resolv.conf; both files
 * are read again when they change, looked at no more than every 5 s; a
 * name under the reserved TLD "invalid" (RFC 6761) is known at once not
 * to exist).  A name's addresses (IPv4 ones first) are tried in turn
 * until one connects; while others remain, an address gets an equal share
 * of the time left, at least 2 s (as Go shares a dial's deadline).  One
 * deadline, `timeout` after the start, bounds the lookup and every
 * attempt.
 *
 * Results (the error and output in the kubelet's words, Go's; remote_addr
 * "ip:port" / "[ip]:port" is the address tried last, "" when none was):
 *   connected                    success ok, output "" (NULL in C), no error
 *   refused                      failure connect_refused, "connect:
 *                                connection refused"
 *   no connection by the deadline  failure connect_timeout, "i/o timeout"
 *   name not found, or no answer from the name servers by the deadline
 *                                failure dns, "lookup NAME: no such host"
 *                                ("... i/o timeout")
 *   other errors                 failure network ("connect: no route to
 *                                host", ...)
 *   no socket (socket() failing with EMFILE, ENFILE, ENOBUFS or ENOMEM),
 *   or no resolver while the process has no descriptor left
 *                                unknown resource (the engine's trouble,
 *                                not the target's): "cannot open a
 *                                socket: Too many open files"
 * output is "dial tcp ADDR: ERROR" ("dial tcp: lookup ..." for a lookup),
 * code the errno behind the error (ETIMEDOUT for a deadline), or 0.
 * Control bytes in the texts are replaced with '?'.
 *
 * Steps (a line protocol check, blackbox_exporter's query_response): once
 * connected, the connection walks `steps` in order, within the same
 * deadline:
 *   SONDE_TCP_SEND      write the bytes as they are (nothing appended);
 *   SONDE_TCP_EXPECT    read lines until one matches the Lua pattern
 *                       (sonde/pattern.h); a line ends at "\n", one "\r"
 *                       before it is dropped, and the pattern sees the line
 *                       without them; bytes read past the matching line
 *                       stay for the next expect step; at the peer's EOF a
 *                       last line without "\n" is matched too;
 *   SONDE_TCP_STARTTLS  the TLS handshake (below) now, on the connection
 *                       the plain steps before it used (SMTP, IMAP,
 *                       POP3, ... STARTTLS); the steps after it go
 *                       through TLS.
 * Reads are non-blocking into one buffer of SONDE_TCP_LINE_MAX bytes; at
 * most SONDE_TCP_READ_MAX bytes are read in all.  Outcomes (`name` is the
 * step's name as given, e.g. "expect[2].expect"):
 *   every step done      success ok, output the last line matched
 *                        (control bytes replaced with '?')
 *   EOF before a match   failure expect, "NAME: pattern P not matched
 *                        before the connection closed (N lines read,
 *                        last: Q)"
 *   a line over SONDE_TCP_LINE_MAX bytes  failure expect, "NAME: a line
 *                        longer than 4096 bytes (first 80 bytes: Q)"
 *   SONDE_TCP_READ_MAX bytes read without a match  failure expect
 *   the deadline         failure timeout, "NAME: pattern P not matched by
 *                        the deadline (...)" / "NAME: not all sent by the
 *                        deadline"
 *   send/recv errors     failure network ("NAME: connection reset by
 *                        peer"); a pattern too complex for a line: expect
 * (P the pattern and Q what the peer sent, quoted, escaped and cut as
 * sonde_expect_quote does); error and output both hold the message.
 *
 * TLS (use_tls, blackbox_exporter's tcp `tls: true`): right after the
 * connection, or at the STARTTLS step when there is one, a TLS
 * handshake (sonde/tls.h, on the loop, within the same deadline) with the options of `tls`; the SNI and the name verified are
 * tls.server_name, else the host when it is a name (an IP literal is
 * verified against the certificate's IP addresses, no SNI).  A failed
 * handshake is not retried on another address.  The result carries the
 * facts (result.tls) and their expiry is judged (sonde_tls_judge):
 *   handshake done          success ok (or tls_expiry), output ""
 *   handshake failed        failure tls, "TLS handshake: certificate
 *                           verify failed: ..." / OpenSSL's error
 *   not done by the deadline  failure timeout, "TLS handshake not
 *                           finished: i/o timeout"
 *   a ca_file, cert_file or key_file that cannot be loaded
 *                           failure tls, "ca_file PATH: ...", nothing
 *                           connected
 * TLS 1.3: a server that refuses the client's certificate says so after
 * the client's side of the handshake is done; a probe that only
 * connects does not wait for it (as Go's tls.Dial, blackbox_exporter).
 */
#ifndef SONDE_TCP_H
#define SONDE_TCP_H

#include <stdint.h>

#include <stddef.h>

#include "sonde/loop.h"
#include "sonde/tls.h"

#define SONDE_TCP_LINE_MAX 4096     /* bytes of one line read */
#define SONDE_TCP_READ_MAX 65536    /* bytes read by a connection in all */

enum sonde_tcp_step_kind {
  SONDE_TCP_EXPECT,   /* data: a Lua pattern */
  SONDE_TCP_SEND,     /* data: the bytes to write */
  SONDE_TCP_STARTTLS, /* the TLS handshake (needs use_tls) */
  SONDE_TCP_EXPECT_RE, /* as SONDE_TCP_EXPECT, data a POSIX extended regular
                         expression (regcomp REG_EXTENDED, matched with
                         REG_STARTEND against the line; blackbox_exporter's
                         query_response `expect` mapped from RE2); a
                         pattern that does not compile fails the step,
                         reason config */
  SONDE_TCP_SEND_EXPAND /* as SONDE_TCP_SEND, data a template: "$N" (N a
                           digit) is submatch N of the line the last
                           SONDE_TCP_EXPECT_RE step matched ("" when it
                           has no such submatch or none matched), "$$" a
                           "$"; the expansion is sent with a "\n" after
                           it, or nothing when it is empty
                           (blackbox_exporter's query_response send
                           after an expect, Go's Regexp.Expand: its names
                           and numbers mapped by sonde.blackbox) */
};

struct sonde_tcp_step {
  enum sonde_tcp_step_kind kind;
  const char *data;  /* NUL-terminated; may hold NULs: len */
  size_t len;
  const char *name;  /* for messages: "expect[2].send" */
};

struct sonde_tcp_opts {
  const char *host;  /* name or IP literal (IPv6 without brackets) */
  long port;         /* 1..65535 */
  double timeout;    /* seconds, > 0 */
  int use_tls;       /* a TLS handshake after connecting (or at the
                        STARTTLS step) */
  struct sonde_tls_opts tls; /* its options (the strings are used by
                                sonde_tcp_start only) */
  const struct sonde_tcp_step *steps; /* after connecting, or NULL: the
                                         probe only connects (copied) */
  size_t nsteps;
};

/* Start a connection attempt.  Returns the operation id, or 0 when out of
 * memory (cb is then never called). */
uint64_t sonde_tcp_start(struct sonde_loop *loop,
                         const struct sonde_tcp_opts *opts,
                         sonde_result_cb cb, void *arg);

#endif
