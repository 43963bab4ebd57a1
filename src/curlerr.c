/*
 * curlerr.c - map a finished libcurl transfer onto sonde's closed reason
 * set, and small helpers the network probers share (text made safe to
 * show, addresses formatted, a shortage of descriptors recognised).
 *
 * Checked against libcurl 7.88.1 as Debian 12 ships it (with its backport
 * of the CVE-2023-38039 fix) and the messages of later releases:
 *   - socket() failing: CURLE_COULDNT_CONNECT; the errno is only known
 *     through curlsock.c's open callback (CURLINFO_OS_ERRNO stays 0);
 *   - one response header line (or the status line) over
 *     CURL_MAX_HTTP_HEADER (100 KB): CURLE_OUT_OF_MEMORY with no message
 *     (lib/dynbuf.c refusing to grow; CURLE_TOO_LARGE, 100, from 8.6);
 *   - response headers over 300 KB in all: CURLE_RECV_ERROR, "Too large
 *     response headers: N > 307200";
 *   - the deadline passing in a TLS handshake: "Connection timed out after
 *     N milliseconds", as for a pending TCP connect (lib/multi.c), and
 *     CURLINFO_CONNECT_TIME_T still 0: only curlsock.c knows whether the
 *     TCP connect had completed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void sonde_format_addr(char *out, size_t n, const char *ip, long port) {
  if (!ip || !*ip) { out[0] = '\0'; return; }
  /* by hand when it fits (every probe run comes here; snprintf is ten
   * times the cost) */
  size_t ilen = strlen(ip);
  int v6 = memchr(ip, ':', ilen) != NULL;
  char digits[24];
  size_t nd = 0;
  unsigned long p = (unsigned long)port;
  do digits[nd++] = (char)('0' + p % 10); while ((p /= 10) != 0);
  if (port < 0 || ilen + 2 * (size_t)v6 + 1 + nd + 1 > n) {
    snprintf(out, n, v6 ? "[%s]:%ld" : "%s:%ld", ip, port);
    return;
  }
  char *w = out;
  if (v6) *w++ = '[';
  memcpy(w, ip, ilen);
  w += ilen;
  if (v6) *w++ = ']';
  *w++ = ':';
  while (nd) *w++ = digits[--nd];
  *w = '\0';
}

/* ---- text from peers and from curl ------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) { len = 2; min = 0x80; }
  else if (c >= 0xe0 && c <= 0xef) { len = 3; min = 0x800; }
  else if (c >= 0xf0 && c <= 0xf4) { len = 4; min = 0x10000; }
  else return 0;
  if (n < len) return 0;
  unsigned cp = c & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

/* Replace control bytes and bytes that are not UTF-8 with '?', in place. */
static void sanitize(char *s, size_t n) {
  unsigned char *p = (unsigned char *)s;
  for (size_t i = 0; i < n;) {
    if (p[i] < 0x20 || p[i] == 0x7f) {
      p[i++] = '?';
    } else if (p[i] < 0x80) {
      i++;
    } else {
      size_t k = utf8_len(p + i, n - i);
      if (k == 0) p[i++] = '?';
      else i += k;
    }
  }
}

/* The password of the next URL in s with one, from `from`: its offset and
 * length in *at and *len; 0 when there is none. */
static int find_password(const char *s, size_t n, size_t from, size_t *at,
                         size_t *len) {
  const char *p = s + from, *end = s + n;
  while ((p = memmem(p, (size_t)(end - p), "://", 3)) != NULL) {
    const char *auth = p + 3;
    /* the authority ends at / ? # or at what cannot be in a URL */
    const char *q = auth;
    while (q < end && !strchr("/?#\"'<> \t\r\n", *q)) q++;
    const char *at_sign = NULL;
    for (const char *r = auth; r < q; r++)
      if (*r == '@') at_sign = r;          /* the last '@' ends userinfo */
    if (at_sign) {
      const char *colon = memchr(auth, ':', (size_t)(at_sign - auth));
      if (colon) {
        *at = (size_t)(colon + 1 - s);
        *len = (size_t)(at_sign - colon - 1);
        return 1;
      }
    }
    p = q;
  }
  return 0;
}

int sonde_clean_text(char **sp, size_t *lenp) {
  char *s = *sp;
  if (!s) return 0;
  size_t n = lenp ? *lenp : strlen(s);
  int rc = 0;
  /* fast path: no '@', no credentials (no allocation) */
  if (memchr(s, '@', n)) {
    static const char mask[] = "xxxxx";    /* Go's url.Redacted */
    size_t at, plen, from = 0, count = 0;
    while (find_password(s, n, from, &at, &plen)) {
      count++;
      from = at + plen;
    }
    if (count) {
      char *out = malloc(n + count * (sizeof mask - 1) + 1);
      if (!out) {
        rc = -1;
      } else {
        size_t w = 0;
        from = 0;
        while (find_password(s, n, from, &at, &plen)) {
          memcpy(out + w, s + from, at - from);
          w += at - from;
          memcpy(out + w, mask, sizeof mask - 1);
          w += sizeof mask - 1;
          from = at + plen;
        }
        memcpy(out + w, s + from, n - from);
        w += n - from;
        out[w] = '\0';
        free(s);
        *sp = s = out;
        n = w;
        if (lenp) *lenp = n;
      }
    }
  }
  sanitize(s, n);
  return rc;
}

int sonde_out_of_descriptors(void) {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return errno == EMFILE || errno == ENFILE ? errno : 0;
}

int sonde_resource_errno(int e) {
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

/* ---- classification ------------------------------------------------------ */

void sonde_curl_classify(struct sonde_result *r, CURL *easy, CURLcode code,
                         const char *errbuf,
                         const struct sonde_curl_owner *owner,
                         int connect_only) {
  long oserr = 0;
  const char *prefix = "";
  curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr);
  if (!errbuf || !*errbuf) errbuf = curl_easy_strerror(code);
  r->status = SONDE_FAILURE;
  r->code = (int)code;
  switch (code) {
  case CURLE_OPERATION_TIMEDOUT:
    /* curl says "Connection timed out" while the connection is being set
     * up, TLS handshake included: it is a connect timeout only when no
     * TCP connect completed.  A tcp_socket probe only connects. */
    if (connect_only) {
      r->reason = SONDE_R_CONNECT_TIMEOUT;
    } else if (strncmp(errbuf, "Connection timed out", 20) == 0) {
      if (owner->tcp_connected) {
        r->reason = SONDE_R_TIMEOUT;
        prefix = "TLS handshake not finished: ";
      } else {
        r->reason = SONDE_R_CONNECT_TIMEOUT;
      }
    } else {
      r->reason = SONDE_R_TIMEOUT;
    }
    break;
  case CURLE_COULDNT_RESOLVE_HOST:
    /* the resolver could not open its files or sockets */
    if (sonde_out_of_descriptors()) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
      prefix = "out of file descriptors: ";
    } else {
      r->reason = SONDE_R_DNS;
    }
    break;
  case CURLE_COULDNT_CONNECT:
    /* (a refusal on one address beats a socket() failure on another) */
    if (oserr != ECONNREFUSED && sonde_resource_errno(owner->sock_errno)) {
      /* no socket: the engine's trouble, not the target's */
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
      r->code = owner->sock_errno;
      sonde_result_set_error(r, "cannot open a socket: %s",
                             strerror(owner->sock_errno));
      return;
    } else if (sonde_resource_errno((int)oserr)) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
    } else {
      r->reason = oserr == ECONNREFUSED ? SONDE_R_CONNECT_REFUSED
                                        : SONDE_R_NETWORK;
    }
    break;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CRL_BADFILE:
    r->reason = SONDE_R_TLS;
    break;
  case CURLE_GOT_NOTHING:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_TOO_MANY_REDIRECTS:
  /* URLs are checked when the spec is; these come from what the server
   * sent (an HTTP/0.9 or HTTP/2-preface reply, a bad status line). */
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
    r->reason = SONDE_R_PROTOCOL;
    break;
  case CURLE_BAD_FUNCTION_ARGUMENT:
    r->reason = SONDE_R_CONFIG;
    break;
  case CURLE_OUT_OF_MEMORY:
    /* No allocation of libcurl failed during the transfer: its own limit
     * refused what the peer sent (a header line over 100 KB). */
    if (sonde_curl_alloc_counted() &&
        sonde_curl_alloc_failures() == owner->alloc_failures) {
      r->reason = SONDE_R_PROTOCOL;
      sonde_result_set_error(r, "response header line too large (over %d "
                             "bytes)", CURL_MAX_HTTP_HEADER);
      return;
    }
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    break;
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
    if (strncmp(errbuf, "Too large response headers", 26) == 0)
      r->reason = SONDE_R_PROTOCOL;      /* over libcurl's 300 KB in all */
    else if (strstr(errbuf, "SSL routines::") && strstr(errbuf, " alert "))
      /* a TLS alert after the client's side of the handshake: TLS 1.3
       * servers refuse a missing or bad client certificate that way
       * ("tlsv13 alert certificate required") */
      r->reason = SONDE_R_TLS;
    else
      r->reason = SONDE_R_NETWORK;
    break;
  default:
    if ((int)code == 100)                /* CURLE_TOO_LARGE, libcurl 8.6+ */
      r->reason = SONDE_R_PROTOCOL;
    else
      r->reason = SONDE_R_NETWORK;
  }
  sonde_result_set_error(r, "%s%s", prefix, errbuf);
  if (r->error && sonde_clean_text(&r->error, NULL) != 0) {
    free(r->error);                      /* cannot mask: show nothing */
    r->error = NULL;
  }
}
