/*
 * curlerr.c - map a finished libcurl transfer onto sonde's closed reason
 * set, and small helpers the curl-based probers share.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

void sonde_format_addr(char *out, size_t n, const char *ip, long port) {
  if (!ip || !*ip) { out[0] = '\0'; return; }
  if (strchr(ip, ':'))
    snprintf(out, n, "[%s]:%ld", ip, port);
  else
    snprintf(out, n, "%s:%ld", ip, port);
}

void sonde_curl_classify(struct sonde_result *r, CURL *easy, CURLcode code,
                         const char *errbuf, int connect_only) {
  long oserr = 0;
  curl_off_t connected = 0;
  curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr);
  curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connected);
  r->status = SONDE_FAILURE;
  r->code = (int)code;
  switch (code) {
  case CURLE_OPERATION_TIMEDOUT:
    /* curl says "Connection timed out" while the TCP connect is pending */
    if (connect_only || (connected == 0 && errbuf &&
                         strncmp(errbuf, "Connection timed out", 20) == 0))
      r->reason = SONDE_R_CONNECT_TIMEOUT;
    else if (errbuf && strstr(errbuf, "SSL"))
      r->reason = SONDE_R_TLS;      /* the TLS handshake did not finish */
    else
      r->reason = SONDE_R_TIMEOUT;
    break;
  case CURLE_COULDNT_RESOLVE_HOST:
    r->reason = SONDE_R_DNS;
    break;
  case CURLE_COULDNT_CONNECT:
    if (oserr == EMFILE || oserr == ENFILE || oserr == ENOBUFS) {
      r->status = SONDE_UNKNOWN;    /* the engine's trouble, not the target's */
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
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    break;
  default:
    r->reason = SONDE_R_NETWORK;
  }
  if (errbuf && *errbuf)
    sonde_result_set_error(r, "%s", errbuf);
  else
    sonde_result_set_error(r, "%s", curl_easy_strerror(code));
}
