/*
 * sonde/dns.h - the DNS prober (blackbox_exporter's dns prober,
 * prober/dns.go of v0.23, whose semantics it follows; the reply's records
 * are shown as its DNS library, github.com/miekg/dns v1.1.50, prints them).
 *
 * One query, sent to one server, with c-ares (ares_create_query, then
 * ares_send on a channel of the probe's own, driven by the loop: its
 * sockets watched with events, its timeouts with a timer; no thread).
 * The channel reads no configuration file (no /etc/resolv.conf, no search
 * list): the server is the one given, the name is asked as written (one
 * query, absolute: "example.test" is "example.test.").  The reply is
 * taken as the server sent it: a truncated UDP reply is not retried over
 * TCP, and SERVFAIL, REFUSED and the like are replies like any other
 * (valid_rcodes decides), as miekg/dns's Client.Exchange gives them to
 * blackbox_exporter.  No EDNS record is sent (blackbox_exporter sends none
 * either).  One deadline, `timeout` after the start, bounds the query
 * (UDP: one datagram, never re-sent; TCP: the connection and the
 * exchange).
 *
 * The reply is checked as blackbox_exporter checks it, in this order:
 *   1. its rcode must be one of valid_rcodes (none given: NOERROR only);
 *   2. the answer, authority and additional records, each section with its
 *      own validator (struct sonde_dns_validator), rendered as text
 *      (below) and matched against regular expressions:
 *        fail_if_matches       a record matching any of them fails;
 *        fail_if_all_match     fails unless every record matches every
 *                              one of them (blackbox_exporter's code,
 *                              whatever the name suggests; no record at
 *                              all passes);
 *        fail_if_not_matches   a record not matching one of them fails;
 *                              no record at all fails too;
 *        fail_if_none_matches  fails when no record matches one of them;
 *                              no record at all fails too.
 * Regular expressions: POSIX extended regular expressions (regcomp,
 * glibc), searched anywhere in the record's text as Go's MatchString does.
 * blackbox_exporter's are Go's (RE2 syntax): the Lua side (sonde.dns,
 * blackbox.yml modules) maps them to POSIX EREs with sonde.regex, one
 * mapping for every prober, and gives them as written in `shown`, for
 * messages.  Matching is by bytes (Go's, by UTF-8 runes, differs only for
 * '.' and classes against non-ASCII text).
 *
 * Record text (miekg/dns RR.String()): "NAME\tTTL\tCLASS\tTYPE\tRDATA",
 * NAME absolute with a final '.', e.g.
 *   "example.test.\t300\tIN\tA\t127.0.0.1"
 *   "example.test.\t300\tIN\tMX\t10 mail.example.test."
 *   "example.test.\t0\tIN\tTXT\t\"v=spf1 -all\""
 * RDATA as miekg/dns prints it for A, AAAA (RFC 5952; an IPv4-mapped
 * address as "::ffff:1.2.3.4"), NS, CNAME, DNAME, PTR, MX, TXT and SPF
 * (each string quoted; '"' and '\\' escaped with a backslash, bytes
 * outside ' '..'~' as \DDD), SOA ("NS MBOX SERIAL REFRESH RETRY EXPIRE
 * MINTTL"), SRV ("PRIO WEIGHT PORT TARGET"), CAA ("FLAG TAG \"VALUE\"")
 * and HINFO; other types in RFC 3597's generic form ("\# LEN HEX") where
 * miekg/dns prints its own presentation form.  Names: '.' inside a label,
 * and ' ', '\'', '@', ';', '(', ')', '"', '\\' escaped with a backslash,
 * bytes outside ' '..'~' as \DDD.  Types and classes by their names
 * ("TYPE65", "CLASS7" for those without one).
 *
 * Results (output: what happened, in one line; error the detail):
 *   a reply, rcode valid, every validator passed
 *                          success ok, "NOERROR: 1 answer, 0 authority, 0
 *                          additional records"
 *   an rcode not in valid_rcodes
 *                          failure dns, "rcode NXDOMAIN is not one of the
 *                          valid rcodes (NOERROR)"
 *   a validator failed     failure expect, e.g. "answer records: a record
 *                          matched fail_if_matches_regexp \"RE\":
 *                          \"RECORD\""
 *   no reply by the deadline  failure timeout, "query to ADDR over udp:
 *                          i/o timeout"
 *   refused (TCP: nothing listens; UDP: the port is closed, an ICMP
 *   port unreachable came back)
 *                          failure connect_refused, "query to ADDR over
 *                          tcp: connection refused"
 *   a reply that cannot be parsed
 *                          failure protocol, "... malformed reply: ..."
 *   TCP: the server closed the connection before a whole reply
 *                          failure protocol, "query to ADDR over tcp:
 *                          connection closed before a whole reply"
 *   other socket errors    failure network
 *   a name c-ares cannot encode, a regexp that does not compile
 *                          failure config (the Lua binding refuses both
 *                          when the probe is declared)
 *   out of memory or descriptors
 *                          unknown resource
 * ADDR is "ip:port", "[ip]:port" for IPv6 (also in remote_addr;
 * ip_protocol is 4 or 6, its family).  The
 * reply's facts (result.dns) are kept whatever the verdict once a reply
 * came.
 *
 * Ownership: the probe's channel (and its sockets, events and timer) is
 * the operation's: released when the result is delivered or the operation
 * is cancelled; no descriptor outlives it.  A channel of c-ares 1.18
 * holds its query tables (about 75 KB): that much memory per query in
 * flight, given back when it ends.  (One channel per probe because c-ares
 * 1.18 cannot cancel one query of a channel: ares_cancel ends them all.)
 */
#ifndef SONDE_DNS_H
#define SONDE_DNS_H

#include <stddef.h>
#include <stdint.h>

#include "sonde/loop.h"

enum sonde_dns_transport { SONDE_DNS_UDP = 0, SONDE_DNS_TCP };

/* The sections of a reply. */
enum { SONDE_DNS_ANSWER = 0, SONDE_DNS_AUTHORITY, SONDE_DNS_ADDITIONAL,
       SONDE_DNS_SECTIONS };

/* The four lists of a validator (blackbox_exporter's DNSRRValidator). */
enum {
  SONDE_DNS_FAIL_IF_MATCHES = 0,    /* fail_if_matches_regexp */
  SONDE_DNS_FAIL_IF_ALL_MATCH,      /* fail_if_all_match_regexp */
  SONDE_DNS_FAIL_IF_NOT_MATCHES,    /* fail_if_not_matches_regexp */
  SONDE_DNS_FAIL_IF_NONE_MATCHES,   /* fail_if_none_matches_regexp */
  SONDE_DNS_RULES
};

struct sonde_dns_validator {
  const char *const *re[SONDE_DNS_RULES];    /* POSIX EREs (see above) */
  const char *const *shown[SONDE_DNS_RULES]; /* the same regexps as the
                                                user wrote them (RE2), for
                                                messages, or NULL: re */
  size_t n[SONDE_DNS_RULES];
};

struct sonde_dns_opts {
  const char *server;       /* an IP literal: "127.0.0.1", "::1" (IPv6
                               without brackets) */
  long port;                /* 1..65535; blackbox_exporter's default 53 */
  const char *name;         /* the name asked (a final '.' optional) */
  int qtype;                /* 1 A, 28 AAAA, 255 ANY ... (sonde_dns_type) */
  int qclass;               /* 1 IN (sonde_dns_class) */
  int transport;            /* enum sonde_dns_transport */
  int recursion_desired;    /* the RD bit (blackbox_exporter: true) */
  double timeout;           /* seconds, > 0 */
  uint32_t valid_rcodes;    /* bit n: rcode n is valid; 0: NOERROR only */
  struct sonde_dns_validator validate[SONDE_DNS_SECTIONS];
};

/* A reply's facts, owned by the result (result.dns); NULL when the
 * operation failed before a query was sent. */
struct sonde_dns_reply {
  int replied;              /* a reply came and was parsed: the fields
                               below are set (probe_dns_query_succeeded) */
  int rcode;                /* the header's RCODE, 0..15 */
  size_t count[SONDE_DNS_SECTIONS]; /* records parsed per section */
  char **rrs[SONDE_DNS_SECTIONS];   /* their text (see above) */
  int has_serial;           /* the query was for SOA and an SOA answered */
  uint32_t serial;          /* that SOA's serial (the last one) */
  double lookup_time;       /* seconds from sending the query to the
                               reply, or to the failure */
};

/* Defaults: port 53, type ANY, class IN, UDP, recursion desired, timeout
 * 1 s, NOERROR only, no validation (blackbox_exporter's). */
void sonde_dns_opts_init(struct sonde_dns_opts *opts);

/* Start a query.  Options are copied (the regexps compiled).  Returns the
 * operation id, or 0 when out of memory (cb is then never called). */
uint64_t sonde_dns_start(struct sonde_loop *loop,
                         const struct sonde_dns_opts *opts,
                         sonde_result_cb cb, void *arg);

/* Free a reply and what it holds (NULL is fine). */
void sonde_dns_reply_free(struct sonde_dns_reply *reply);

/* Check a POSIX ERE as the prober will compile it: 0, or -1 with the
 * reason in err (n bytes). */
int sonde_dns_regex_check(const char *re, char *err, size_t n);

/* Type and class numbers by name (miekg/dns's names: "A", "AAAA", "MX",
 * ..., or "TYPE123"; "IN", "CH", "HS", "NONE", "ANY", or "CLASS3"), or
 * -1; and names by number (NULL when none: print "TYPE%d"). */
int sonde_dns_type(const char *name);
const char *sonde_dns_type_name(int type);
int sonde_dns_class(const char *name);

/* Rcode numbers by miekg/dns's names ("NOERROR", "FORMERR", "SERVFAIL",
 * "NXDOMAIN", "NOTIMP", "REFUSED", ..., "BADCOOKIE"; also "NOTIMPL"), or
 * -1; and the name of an rcode (NULL when none). */
int sonde_dns_rcode(const char *name);
const char *sonde_dns_rcode_name(int rcode);

#endif
