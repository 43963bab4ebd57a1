/*
 * sonde/tls.h - TLS options and the peer certificate facts every TLS probe
 * (HTTPS, TCP with TLS) reports, on OpenSSL 3.
 *
 * Facts (struct sonde_tls_facts) follow blackbox_exporter's prober/tls.go,
 * so that the /metrics series sonde exports carry the same values:
 *   earliest_expiry     the earliest notAfter of the certificates the peer
 *                       sent (getEarliestCertExpiry), seconds since the
 *                       epoch;
 *   last_chain_expiry   over the verified chains, each chain's earliest
 *                       notAfter, then the latest of those
 *                       (getLastChainExpiry).  OpenSSL builds one chain:
 *                       its earliest notAfter, or unknown (has_last_chain_expiry 0) when the chain was not
 *                       verified (verify off and not trusted, or failed),
 *                       as Go's empty VerifiedChains gives the zero time;
 *   subject, issuer     of the leaf, RFC 2253 ("CN=a,O=b": Go's
 *                       pkix.Name.String order);
 *   dns_names           the leaf's DNS subjectAltNames, in order;
 *   serial              the leaf's serial, lowercase hex of its bytes
 *                       (getSerialNumber: leading zero bytes kept);
 *   fingerprint_sha256  lowercase hex SHA-256 of the leaf's DER;
 *   version             "TLS 1.0" .. "TLS 1.3", else "unknown"
 *                       (getTLSVersion);
 *   cipher              the IANA suite name ("TLS_AES_128_GCM_SHA256",
 *                       "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": Go's
 *                       tls.CipherSuiteName).
 *
 * Options (struct sonde_tls_opts) are shared by every prober that speaks
 * TLS; sonde_tls_curl_apply sets them on a libcurl easy handle and
 * sonde_tls_ctx_new makes an OpenSSL client context of them.
 */
#ifndef SONDE_TLS_H
#define SONDE_TLS_H

#include <curl/curl.h>
#include <stddef.h>

#include "sonde/result.h"

struct ssl_st;     /* OpenSSL's SSL */
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

/* Minimum protocol versions (sonde_tls_opts.min_version). */
enum {
  SONDE_TLS_ANY = 0, /* the library's default floor */
  SONDE_TLS_1_0 = 10,
  SONDE_TLS_1_1 = 11,
  SONDE_TLS_1_2 = 12,
  SONDE_TLS_1_3 = 13
};

struct sonde_tls_opts {
  int verify;              /* verify the chain and the name (kubelet: 0) */
  const char *ca_file;     /* PEM bundle of trusted CAs, or NULL: system */
  const char *cert_file;   /* PEM client certificate (mutual TLS), or NULL */
  const char *key_file;    /* its PEM private key, or NULL: in cert_file */
  const char *server_name; /* SNI sent and name verified, or NULL: the
                              target's host name (none for an IP) */
  int min_version;         /* SONDE_TLS_* */
  double expiry_warning;   /* seconds: a certificate expiring sooner makes
                              the result a warning; 0: off */
  double expiry_failure;   /* seconds: sooner makes it a failure; 0: off */
};

struct sonde_tls_facts {
  double earliest_expiry;   /* seconds since the epoch (0 is 1970-01-01:
                               see has_earliest_expiry) */
  double last_chain_expiry; /* seconds since the epoch */
  int has_earliest_expiry;  /* earliest_expiry is known */
  int has_last_chain_expiry; /* last_chain_expiry is known (verified) */
  int verified;             /* the chain verified (whatever `verify` said) */
  char *subject;            /* leaf subject, RFC 2253, or NULL */
  char *issuer;             /* leaf issuer, RFC 2253, or NULL */
  char *serial;             /* lowercase hex, or NULL */
  char *fingerprint_sha256; /* lowercase hex, or NULL */
  char **dns_names;         /* DNS SANs of the leaf */
  size_t ndns;
  char version[16]; /* "TLS 1.3" ... or "unknown" */
  char cipher[64];  /* IANA name, or "" */
};

/* The facts of an established connection.  Returns a malloc'd struct
 * (free with sonde_tls_facts_free), or NULL when out of memory. */
struct sonde_tls_facts *sonde_tls_facts_of(const struct ssl_st *ssl);

/* Free facts (NULL is fine). */
void sonde_tls_facts_free(struct sonde_tls_facts *f);

/* "TLS1.2", "TLS 1.2", "TLS12", "tls1.2" ... -> SONDE_TLS_1_2; -1 when not
 * a version ("TLS1.0".."TLS1.3" and blackbox_exporter's "TLS10".."TLS13"
 * are accepted). */
int sonde_tls_parse_version(const char *s);

/*
 * Judge the certificates' expiry, once the rest of a result is judged
 * (the probers call it last, on a result where the peer answered):
 * earliest_expiry - now below o->expiry_failure (when set), or a
 * certificate already expired while either threshold is set, makes r a
 * failure whatever it was (tls_expiry takes precedence over the answer's
 * own failure); below o->expiry_warning it makes a success a warning and
 * leaves a warning or a failure as it is (a warning threshold never
 * hides a failure).  Reason tls_expiry, output/error "TLS certificate
 * expires in 3.2 days (2026-12-08 10:00:00 UTC)" ("expired ... ago").
 * `now` is seconds since the epoch.  Returns 1 when it decided r
 * (status, reason, error, output set), else 0 (r untouched).
 */
int sonde_tls_judge(const struct sonde_tls_facts *f,
                    const struct sonde_tls_opts *o, double now,
                    struct sonde_result *r);

/*
 * Apply o to a libcurl easy handle (built on OpenSSL): verification,
 * ca_file, client certificate and key, min_version, and server_name: the
 * SNI sent and the name verified become server_name while the connection
 * still goes to the URL's host and the Host header stays the URL's
 * (an SSL_CTX callback sets both on OpenSSL; the handle's
 * CURLOPT_SSL_CTX_FUNCTION is taken).  libcurl copies the file names,
 * not server_name: it must stay valid until the transfer ends (http.c
 * keeps a copy in its op).  Returns CURLE_OK or the first setopt error.
 * The facts of such a transfer: CURLINFO_TLS_SSL_PTR while the connection
 * is alive (a header callback), then sonde_tls_facts_of.
 */
CURLcode sonde_tls_curl_apply(CURL *easy, const struct sonde_tls_opts *o);

/* The facts of an easy handle's TLS connection, while it is alive
 * (libcurl hands out its SSL only then: call from a header callback).
 * NULL when the connection has no OpenSSL session or out of memory. */
struct sonde_tls_facts *sonde_tls_curl_facts(CURL *easy);

/*
 * A client SSL_CTX for o (verification with ca_file or the system's CAs,
 * client certificate, min_version).  Returns NULL with a message in err
 * (errlen bytes) when a file cannot be loaded or out of memory.  The
 * server name is per connection: sonde_tls_ssl_new.
 */
struct ssl_ctx_st *sonde_tls_ctx_new(const struct sonde_tls_opts *o, char *err,
                                     size_t errlen);

/* An SSL on fd for ctx, client mode, SNI and name check `name` (o's
 * server_name, or the target's host when that is not an IP literal; NULL:
 * none).  Returns NULL when out of memory. */
struct ssl_st *sonde_tls_ssl_new(struct ssl_ctx_st *ctx, int fd,
                                 const char *name);

/* Text of the last OpenSSL error (and the verify result of ssl, when it
 * failed) into buf; returns buf. */
const char *sonde_tls_error(const struct ssl_st *ssl, char *buf, size_t len);

/*
 * Non-blocking TLS over a socket (tls_io.c), for probers that drive the
 * handshake and the data from the loop's events: each call does what it
 * can without blocking and says what to wait for.
 */
enum sonde_tls_io {
  SONDE_TLS_IO_DONE = 0,   /* done (handshake finished, bytes moved) */
  SONDE_TLS_IO_WANT_READ,  /* wait until the socket is readable, call again */
  SONDE_TLS_IO_WANT_WRITE, /* wait until it is writable, call again */
  SONDE_TLS_IO_EOF,        /* read: the peer closed the TLS session */
  SONDE_TLS_IO_ERROR       /* failed: sonde_tls_error tells why */
};

/* One step of the client handshake (SSL_do_handshake). */
enum sonde_tls_io sonde_tls_io_handshake(struct ssl_st *ssl);

/* Read up to n bytes into buf; *got is set to the bytes read (DONE). */
enum sonde_tls_io sonde_tls_io_read(struct ssl_st *ssl, void *buf, size_t n,
                                    size_t *got);

/* Write up to n bytes of buf; *put is set to the bytes written (DONE). */
enum sonde_tls_io sonde_tls_io_write(struct ssl_st *ssl, const void *buf,
                                     size_t n, size_t *put);

/* Free ssl (NULL is fine); when `clean` (the session has not failed),
 * first send close_notify without waiting for the peer's.  The socket is
 * the caller's to close. */
void sonde_tls_io_close(struct ssl_st *ssl, int clean);

#endif
