/*
 * sonde/expo.h - a declared probe's series in the Prometheus text
 * exposition format 0.0.4, written from its worker's live state (the last
 * result, the counters and the published state: sonde/worker.h).
 *
 * A scrape writes the families in one fixed order (SONDE_EXPO_FAMILIES),
 * each family's lines for every probe before the next family's, so that
 * a family's lines stay together as the format requires.  Nothing is kept
 * between scrapes: the text is made from the numbers when asked for, a
 * slice at a time (the Lua binding, src/lexpo.c, streams it).  Series
 * names, HELP texts and values follow blackbox_exporter v0.23 where it
 * has the series (prober/http.go, tcp.go, grpc.go, icmp.go, dns.go,
 * tls.go, utils.go); lua/sonde/metrics.lua documents each series.
 *
 * Numbers print as Prometheus's Go client prints them: integral values
 * below 2^53 as integers, others as Go's strconv.FormatFloat(v, 'g', -1,
 * 64) (the shortest text that reads back as the same double: `0.005`,
 * `1e+06`), and `+Inf`, `-Inf`, `NaN`.
 */
#ifndef SONDE_EXPO_H
#define SONDE_EXPO_H

#include <stddef.h>

#include "sonde/worker.h"

/* The families a probe's series go into, in the order they are written.
 * X(id, name, type, help, always): `always` families have their HELP and
 * TYPE lines even when no probe has a line in them (as sonde always
 * wrote them); the others only when some probe has one.  The module
 * probes' families that none of these names come between TLS_CIPHER and
 * RUNS (sonde_expo_families_split). */
#define SONDE_EXPO_FAMILIES(X)                                                \
  X(SUCCESS, "probe_success", "gauge",                                        \
    "Displays whether or not the probe was a success", 1)                     \
  X(DURATION, "probe_duration_seconds", "gauge",                              \
    "Returns how long the probe took to complete in seconds", 1)              \
  X(HTTP_STATUS, "probe_http_status_code", "gauge",                           \
    "Response HTTP status code", 1)                                           \
  X(HTTP_PHASE, "probe_http_duration_seconds", "gauge",                       \
    "Duration of http request by phase, summed over all redirects", 0)        \
  X(HTTP_LENGTH, "probe_http_content_length", "gauge",                        \
    "Length of http content response", 0)                                     \
  X(HTTP_BODY, "probe_http_uncompressed_body_length", "gauge",                \
    "Length of uncompressed response body", 0)                                \
  X(HTTP_REDIRECTS, "probe_http_redirects", "gauge",                          \
    "The number of redirects", 0)                                             \
  X(HTTP_SSL, "probe_http_ssl", "gauge",                                      \
    "Indicates if SSL was used for the final redirect", 0)                    \
  X(HTTP_VERSION, "probe_http_version", "gauge",                              \
    "Returns the version of HTTP of the probe response", 0)                   \
  X(DNS_LOOKUP, "probe_dns_lookup_time_seconds", "gauge",                     \
    "Returns the time taken for probe dns lookup in seconds", 0)              \
  X(IP_PROTOCOL, "probe_ip_protocol", "gauge",                                \
    "Specifies whether probe ip protocol is IP4 or IP6", 0)                   \
  X(GRPC_STATUS, "probe_grpc_status_code", "gauge",                           \
    "gRPC status of the last run (-1: none received).", 1)                    \
  X(GRPC_HEALTH, "probe_grpc_healthcheck_response", "gauge",                  \
    "1 for the serving status the last run received.", 1)                     \
  X(ICMP_PHASE, "probe_icmp_duration_seconds", "gauge",                       \
    "Duration of icmp request by phase", 0)                                   \
  X(ICMP_HOP, "probe_icmp_reply_hop_limit", "gauge",                          \
    "Replied packet hop limit (TTL for ipv4)", 0)                             \
  X(IP_HASH, "probe_ip_addr_hash", "gauge",                                   \
    "Specifies the hash of IP address. It's useful to detect if the IP "      \
    "address changes.", 0)                                                    \
  X(DNS_ANSWER, "probe_dns_answer_rrs", "gauge",                              \
    "Returns number of entries in the answer resource record list", 0)        \
  X(DNS_AUTHORITY, "probe_dns_authority_rrs", "gauge",                        \
    "Returns number of entries in the authority resource record list", 0)     \
  X(DNS_ADDITIONAL, "probe_dns_additional_rrs", "gauge",                      \
    "Returns number of entries in the additional resource record list", 0)    \
  X(DNS_SUCCEEDED, "probe_dns_query_succeeded", "gauge",                      \
    "Displays whether or not the query was executed successfully", 0)         \
  X(DNS_SERIAL, "probe_dns_serial", "gauge",                                  \
    "Returns the serial number of the zone", 0)                               \
  X(SSL_EARLIEST, "probe_ssl_earliest_cert_expiry", "gauge",                  \
    "Returns last SSL chain expiry in unixtime", 0)                           \
  X(SSL_CHAIN_EXPIRY, "probe_ssl_last_chain_expiry_timestamp_seconds",        \
    "gauge", "Returns last SSL chain expiry in timestamp", 0)                 \
  X(SSL_CHAIN_INFO, "probe_ssl_last_chain_info", "gauge",                     \
    "Contains SSL leaf certificate information", 0)                           \
  X(TLS_VERSION, "probe_tls_version_info", "gauge",                           \
    "Returns the TLS version used or NaN when unknown", 0)                    \
  X(TLS_CIPHER, "probe_tls_cipher_info", "gauge",                             \
    "Returns the TLS cipher negotiated during handshake", 0)                  \
  X(RUNS, "sonde_probe_runs_total", "counter", "Probe runs by result status.", \
    1)                                                                        \
  X(STATE, "sonde_probe_state", "gauge", "1 for the probe's current state.",  \
    1)                                                                        \
  X(RUN_DURATION, "sonde_probe_run_duration_seconds", "histogram",            \
    "Durations of probe runs.", 1)                                            \
  X(PERFDATA, "sonde_perfdata", "gauge", "Plugin performance data value.", 0) \
  X(PERFDATA_WARN, "sonde_perfdata_warn", "gauge",                            \
    "Plugin warning threshold (plain numbers only).", 0)                      \
  X(PERFDATA_CRIT, "sonde_perfdata_crit", "gauge",                            \
    "Plugin critical threshold (plain numbers only).", 0)                     \
  X(PERFDATA_MIN, "sonde_perfdata_min", "gauge", "Plugin minimum.", 0)        \
  X(PERFDATA_MAX, "sonde_perfdata_max", "gauge", "Plugin maximum.", 0)

enum {
#define SONDE_EXPO_ENUM(id, name, type, help, always) SONDE_EXPO_##id,
  SONDE_EXPO_FAMILIES(SONDE_EXPO_ENUM)
#undef SONDE_EXPO_ENUM
  SONDE_EXPO__COUNT
};

struct sonde_expo_family {
  const char *name, *type, *help;
  int always;
};

/* Family `f` (0 .. SONDE_EXPO__COUNT - 1). */
const struct sonde_expo_family *sonde_expo_family(int f);

/* A growable byte buffer; `oom` is set (and nothing more appended) once an
 * allocation failed.  Zero-initialise; free p. */
struct sonde_expo_buf {
  char *p;
  size_t n, cap;
  int oom;
};

void sonde_expo_add(struct sonde_expo_buf *b, const char *s, size_t n);

/* A probe as its series need it. */
struct sonde_expo_probe {
  const struct sonde_worker *w;
  const char *base;   /* its label pairs without braces: probe="..",
                         kind="..",target="..",..., escaped; NUL-ended */
  size_t base_len;
  int histogram;      /* write sonde_probe_run_duration_seconds */
};

/* Append the lines of family f (none for most pairs) for probe p to b.
 * Returns the number of lines appended. */
int sonde_expo_lines(struct sonde_expo_buf *b, int f,
                     const struct sonde_expo_probe *p);

/* Append `# HELP name help` and `# TYPE name type` (help escaped). */
void sonde_expo_header(struct sonde_expo_buf *b, const char *name,
                       const char *type, const char *help);

/* A sample value as the exposition prints it (see above) into out (at
 * least 32 bytes); returns its length. */
size_t sonde_expo_number(char *out, double v);

/* Go's strconv.FormatFloat(v, 'g', -1, 64) into out (at least 32 bytes);
 * returns its length. */
size_t sonde_expo_float(char *out, double v);

/* Append a label value escaped (backslash, quote and newline; another
 * control byte as the text `\xHH`, the backslash escaped; bytes that are
 * not valid UTF-8 as U+FFFD), so that the text is valid UTF-8 whatever
 * bytes it is given. */
void sonde_expo_escape(struct sonde_expo_buf *b, const char *s, size_t n);

#endif
