/*
 * sonde/http.h - the HTTP prober, on libcurl's multi interface.
 *
 * kubelet semantics (reference/kubelet-probes.md section 3):
 *   - one request per probe on a fresh connection (no keep-alive,
 *     `Connection: close`), no TLS session resumed (not another probe's,
 *     not a redirect hop's: Go's client has no session cache), no proxy
 *     from the environment, no automatic compression, TLS certificates not
 *     verified unless tls.verify;
 *   - default headers `User-Agent: <user_agent>` and `Accept: * / *`; a user
 *     header User-Agent or Accept whose first value is "" removes the line;
 *     a Host header sets the request host, the connection still goes to the
 *     URL's host;
 *   - redirects (301/302/303/307/308 with Location) are followed while the
 *     hostname stays the one of the original URL (the port and the scheme
 *     may change: follow_redirects SONDE_FOLLOW_SAME_HOST, the default);
 *     when max_redirects requests (10) have been made and the last answer
 *     redirects again, the probe fails (reason redirect, "stopped after 10
 *     redirects"), as Go's client does for the kubelet; a redirect
 *     to another hostname ends the probe with that 3xx response, which, like
 *     any 3xx, is a warning (reason redirect);
 *   - 2xx success (output = body), 3xx warning (output `Probe terminated
 *     redirects, Response body: <body>`), else failure (reason http_status,
 *     output `HTTP probe failed with statuscode: <code>`);
 *   - the body is read up to max_body bytes; reaching the cap is not an
 *     error, the transfer ends there;
 *   - one deadline (timeout) bounds resolution, connect, TLS, every hop,
 *     headers and body.
 * With `expect` (copied with the options), the response is then judged
 * against it (sonde/expect.h): status codes accepted instead of the
 * kubelet's classes, max_duration, header and body patterns; an unmet one
 * is a failure, reason expect.
 * A header value holding CR, LF or NUL fails the probe (reason config)
 * before anything is sent.
 *
 * Not kubelet's, for callers that must not be sent elsewhere (webhooks):
 * follow_redirects SONDE_FOLLOW_SAME_ORIGIN follows a redirect only when
 * scheme, hostname and port (the scheme's default port when the URL has
 * none) are all those of the original URL; SONDE_FOLLOW_NONE follows none.
 * A redirect not followed ends the probe with its 3xx response: a warning,
 * reason redirect, http_status the 3xx, as for another hostname.  Hostnames
 * are compared as written (no resolution, case-sensitive, as kubelet).
 *
 * Out of the engine's hands (status unknown, reason resource, no threshold
 * moves): socket() failing with EMFILE, ENFILE, ENOBUFS or ENOMEM; a name
 * that does not resolve while the process has no descriptor left; libcurl
 * or the body buffer out of memory.
 * The peer's fault (failure, reason protocol): a response header line or
 * status line over 100 KB (libcurl's CURL_MAX_HTTP_HEADER, which libcurl
 * reports as out of memory: sonde tells the two apart by counting libcurl's
 * failed allocations), response headers over 300 KB in all.
 * Timeouts: no TCP connection by the deadline is connect_timeout; a TCP
 * connection made but a TLS handshake not finished, or a response not
 * complete, is timeout (the error says "TLS handshake not finished").
 * result.url, result.error and result.output: a password in a URL is
 * masked ("user:xxxxx@", Go's url.Redacted) and control bytes or bytes that
 * are not UTF-8 are replaced with '?'; body and headers are as received.
 * libcurl never writes to stderr (no verbose mode, no progress meter).
 *
 * TLS (sonde/tls.h): the options of `tls` apply to every hop; the result
 * of a request answered over TLS carries the facts of the connection that
 * answered last (result.tls, taken when its first header arrived).  Their
 * expiry is judged (sonde_tls_judge) before the status code: a
 * certificate closer to its end than tls.expiry_warning/_failure makes a
 * warning/failure, reason tls_expiry, whatever the status.
 *
 * Cost: libcurl easy handles are reused from a pool the loop keeps (up to
 * 64 idle, freed with the loop); a probe sees nothing of the probes that
 * ran on its handle before (options, headers, body, TLS settings, errors).
 * A host name is resolved by libcurl's threaded resolver (one thread per
 * lookup, answers cached by the loop for 60 s); an IP literal and
 * "localhost" (127.0.0.1 and ::1) start no thread.
 */
#ifndef SONDE_HTTP_H
#define SONDE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "sonde/expect.h"
#include "sonde/loop.h"
#include "sonde/tls.h"

#define SONDE_MAX_BODY_DEFAULT 10240 /* bytes, kubelet maxRespBodyLength */
#define SONDE_MAX_REDIRECTS 10

/* Which redirects are followed (sonde_http_opts.follow_redirects). */
enum {
  SONDE_FOLLOW_SAME_HOST = 0, /* same hostname, any port/scheme (kubelet) */
  SONDE_FOLLOW_SAME_ORIGIN,   /* same scheme, hostname and port */
  SONDE_FOLLOW_NONE           /* none: a 3xx ends the probe */
};

struct sonde_http_opts {
  const char *url;                      /* absolute http:// or https:// */
  const char *method;                   /* NULL = "GET" */
  const char *body;                     /* request body or NULL */
  size_t body_len;
  const struct sonde_header *headers;   /* user headers, in order */
  size_t nheaders;
  const char *user_agent;               /* default User-Agent value */
  double timeout;                       /* seconds, > 0 */
  size_t max_body;                      /* bytes */
  int max_redirects;
  int follow_redirects;                 /* SONDE_FOLLOW_* */
  struct sonde_tls_opts tls;            /* sonde/tls.h; verify 0 */
  const struct sonde_http_expect *expect; /* judged on the response
                                           (sonde/expect.h), or NULL:
                                           the kubelet's classes only */
};

/* Defaults: GET, timeout 1 s, max_body 10240, 10 redirects on the same
 * host, no TLS verification, User-Agent "sonde/<version>". */
void sonde_http_opts_init(struct sonde_http_opts *opts);

/* Start a request.  Options are copied.  Returns the operation id, or 0
 * when out of memory (cb is then never called). */
uint64_t sonde_http_start(struct sonde_loop *loop,
                          const struct sonde_http_opts *opts,
                          sonde_result_cb cb, void *arg);

/*
 * kubelet formatURL (reference section 6.2): scheme://host:port + path,
 * with an IPv6 host in brackets, a missing leading '/' added, a scheme or
 * authority inside `path` dropped, the fragment dropped and bytes that
 * cannot stand in a URL percent-escaped.  Returns a malloc'd string or NULL
 * when out of memory.
 */
char *sonde_http_format_url(const char *scheme, const char *host, long port,
                            const char *path);

/* 1 if name is a valid header name for a probe ([-A-Za-z0-9]+), else 0. */
int sonde_http_valid_name(const char *name);

/* Canonicalise a header name in place, Go's CanonicalMIMEHeaderKey:
 * "x-forwarded-for" -> "X-Forwarded-For". */
void sonde_http_canonical_name(char *name);

#endif
