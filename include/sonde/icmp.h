/*
 * sonde/icmp.h - the ICMP echo prober ("ping"), IPv4 and IPv6, on the loop.
 *
 * Semantics: blackbox_exporter's icmp prober (prober/icmp.go and
 * chooseProtocol in prober/utils.go, v0.23), options by its names.
 *
 * One echo request is sent and the matching echo reply awaited, all within
 * one deadline, `timeout` after the start, that also bounds the lookup.
 *
 * Address: the host is an IP literal (IPv4, or IPv6 without brackets, with
 * an optional zone: "fe80::1%eth0") or a name resolved on the loop without
 * a thread (the TCP prober's resolver: /etc/hosts, then the name servers
 * of /etc/resolv.conf; see sonde/tcp.h).  blackbox_exporter's
 * chooseProtocol: the first address of `ip_protocol` (6 by default) is
 * taken; when there is none and `fallback` is set, the first address of
 * the other family; else the probe fails (dns, "lookup NAME: no suitable
 * address found").  An IP literal of the other family counts the same way
 * (with fallback off, "127.0.0.1" under ip_protocol 6 fails); an
 * IPv4-mapped IPv6 literal ("::ffff:127.0.0.1") is its IPv4 address, as
 * Go's To4 makes it for blackbox_exporter.
 *
 * Socket (blackbox_exporter's choice, Linux): first an unprivileged ICMP
 * datagram socket (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), or AF_INET6
 * with IPPROTO_ICMPV6), which the kernel allows when the process's group
 * is inside net.ipv4.ping_group_range (that one sysctl covers IPv6 too);
 * failing that a raw socket (SOCK_RAW, IPPROTO_ICMP / IPPROTO_ICMPV6),
 * which needs root or CAP_NET_RAW.  `dont_fragment` on IPv4 needs the raw
 * socket (as blackbox_exporter: no datagram attempt).  `socket` forces one
 * kind (SONDE_ICMP_RAW, SONDE_ICMP_DGRAM).  Neither allowed: failure
 * permission, output naming both remedies (the current ping_group_range
 * read from /proc, CAP_NET_RAW).
 *
 * The request: type 8 (IPv4) / 128 (IPv6), code 0, identifier, sequence
 * and the payload: "Prometheus Blackbox Exporter" (28 bytes) when
 * payload_size is 0, else payload_size bytes beginning with that text
 * (cut to fit) and zero-filled (blackbox_exporter's).  The identifier of a
 * raw socket is this process's pid (a random number when the pid is 1),
 * the sequence a per-process counter from a random start; on a datagram
 * socket the kernel replaces the identifier with the socket's own and
 * delivers it only the replies to it.  A reply is the probe's when it is
 * an echo reply (type 0 / 129) from the target address (connect()ed
 * socket, and checked again on each packet) with the same sequence, the
 * same identifier (raw sockets only) and exactly the payload sent (and, on
 * a raw IPv4 socket, a valid checksum).  Anything else is read and
 * dropped: a raw socket sees every echo reply of the host (the kernel is
 * told to pass echo replies only: ICMP_FILTER, ICMP6_FILTER).
 *
 * `ttl` sets the request's TTL / hop limit (IP_TTL, IPV6_UNICAST_HOPS;
 * blackbox_exporter's default 64); `dont_fragment` the IPv4 DF bit
 * (IP_MTU_DISCOVER = IP_PMTUDISC_DO; a request over the path MTU then
 * fails with network, "message too long"); `source_ip` binds the socket
 * to that address (its family must be the target's).
 *
 * Results (kind "icmp"; remote_addr the target IP without a port, "" when
 * no address was chosen; ip_protocol 4 or 6 once chosen, else 0):
 *   the matching reply     success ok, output "echo reply from ADDR in
 *                          S s (seq N, hop limit H)"; icmp_rtt seconds
 *                          from the send to the reply, icmp_reply_ttl the
 *                          reply's TTL / hop limit (IP_RECVTTL,
 *                          IPV6_RECVHOPLIMIT; -1 when the socket did not
 *                          tell)
 *   no matching reply by the deadline  failure timeout, "icmp ADDR: no
 *                          echo reply by the deadline: i/o timeout"
 *   neither socket allowed  failure permission (see above), code EPERM /
 *                          EACCES
 *   the name did not resolve, no address of a usable family, no answer
 *   from the name servers by the deadline  failure dns, "lookup NAME: no
 *                          such host" / "... no suitable address found" /
 *                          "... i/o timeout"
 *   socket, bind, send errors (no route, message too long, source
 *   address not here)      failure network, "icmp ADDR: sendto: network
 *                          is unreachable"
 *   a source_ip of the other family  failure config
 *   out of descriptors or memory  unknown resource
 * code is the errno behind a failure (ETIMEDOUT for the deadline), or 0.
 * icmp_socket tells which socket was opened (1 datagram, 2 raw).
 * Phases (blackbox_exporter's probe_icmp_duration_seconds): icmp_resolve
 * (the lookup; 0 for an IP literal), icmp_setup (socket and options),
 * icmp_rtt; icmp_addr_hash is blackbox_exporter's probe_ip_addr_hash (FNV-1a
 * 32 of the address's 4 or 16 bytes).
 *
 * Cancellation (sonde_loop_cancel) closes the socket and cancels the
 * lookup: no descriptor is left.
 */
#ifndef SONDE_ICMP_H
#define SONDE_ICMP_H

#include <stddef.h>
#include <stdint.h>

#include "sonde/loop.h"

#define SONDE_ICMP_PAYLOAD_MAX 65507   /* bytes: IPv4's limit, both families */
#define SONDE_ICMP_DEFAULT_TTL 64      /* blackbox_exporter's DefaultICMPTTL */

/* Which socket to use. */
enum sonde_icmp_socket {
  SONDE_ICMP_AUTO = 0,  /* datagram, else raw (blackbox_exporter) */
  SONDE_ICMP_RAW,       /* raw only (root or CAP_NET_RAW) */
  SONDE_ICMP_DGRAM      /* datagram only (net.ipv4.ping_group_range) */
};

struct sonde_icmp_opts {
  const char *host;       /* name or IP literal (IPv6 without brackets) */
  int ip_protocol;        /* preferred family: 4 or 6 (0: 6, blackbox's
                             default) */
  int fallback;           /* take the other family when the preferred one
                             has no address (blackbox's default: 1) */
  size_t payload_size;    /* bytes of echo data, 0..SONDE_ICMP_PAYLOAD_MAX
                             (0: the 28 bytes of the default text) */
  int dont_fragment;      /* IPv4: set DF (needs the raw socket) */
  int ttl;                /* 1..255: TTL / hop limit of the request
                             (0: the system's default) */
  const char *source_ip;  /* IP literal to send from, or NULL */
  double timeout;         /* seconds, > 0 */
  enum sonde_icmp_socket socket;
};

/* Defaults: ip_protocol 6, fallback 1, ttl 64, timeout 1. */
void sonde_icmp_opts_init(struct sonde_icmp_opts *o);

/* Start one echo.  Returns the operation id, or 0 when out of memory (cb
 * is then never called).  Strings are copied. */
uint64_t sonde_icmp_start(struct sonde_loop *loop,
                          const struct sonde_icmp_opts *opts,
                          sonde_result_cb cb, void *arg);

#endif
