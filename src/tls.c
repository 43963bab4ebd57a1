/*
 * tls.c - TLS options and peer certificate facts (include/sonde/tls.h), on
 * OpenSSL 3.
 *
 * sonde_tls_facts_of reads an established SSL: the peer's chain for the
 * earliest expiry, the verified chain for the last chain expiry, the leaf
 * for its names and fingerprint.  sonde_tls_curl_apply sets the options on
 * a libcurl handle; the server name goes through an SSL_CTX callback
 * (libcurl's own SNI and host check are the URL's host): the name to
 * verify is put on the context's X509_VERIFY_PARAM, which every SSL made
 * from it copies, and an info callback sets it as the SNI when the
 * handshake starts, after libcurl set its own.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "sonde/tls.h"

/* ---- facts ----------------------------------------------------------------
 */

/* Seconds since the epoch of t into *out (any date: before 1970 is
 * negative, 1970-01-01 is 0); 0 when it cannot be read, else 1. */
static int time_of(const ASN1_TIME *t, double *out) {
  struct tm tm;
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  *out = (double)timegm(&tm);
  return 1;
}

static char *name_text(const X509_NAME *n) {
  if (!n) return NULL;
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return NULL;
  char *out = NULL;
  /* RFC 2253 order (most specific first, as Go prints a pkix.Name), UTF-8
   * kept as it is */
  if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >=
      0) {
    char *p;
    long len = BIO_get_mem_data(b, &p);
    out = strndup(len > 0 ? p : "", len > 0 ? (size_t)len : 0);
  }
  BIO_free(b);
  return out;
}

static char *hex_of(const unsigned char *p, size_t n) {
  char *out = malloc(n * 2 + 1);
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++)
    sprintf(out + 2 * i, "%02x", p[i]);
  out[n * 2] = '\0';
  return out;
}

static char *serial_of(X509 *x) {
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  if (!bn) return NULL;
  int n = BN_num_bytes(bn);
  unsigned char *buf = malloc((size_t)n + 1);
  char *out = NULL;
  if (buf) {
    BN_bn2bin(bn, buf);
    out = hex_of(buf, (size_t)n); /* Go's fmt %x of SerialNumber.Bytes() */
    free(buf);
  }
  BN_free(bn);
  return out;
}

static int dns_names_of(X509 *x, struct sonde_tls_facts *f) {
  GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (!gens) return 0;
  int n = sk_GENERAL_NAME_num(gens), rc = 0;
  f->dns_names = calloc((size_t)(n > 0 ? n : 1), sizeof *f->dns_names);
  if (!f->dns_names) rc = -1;
  for (int i = 0; i < n && rc == 0; i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
    if (g->type != GEN_DNS) continue;
    const ASN1_IA5STRING *s = g->d.dNSName;
    char *d = strndup((const char *)ASN1_STRING_get0_data(s),
                      (size_t)ASN1_STRING_length(s));
    if (!d)
      rc = -1;
    else
      f->dns_names[f->ndns++] = d;
  }
  GENERAL_NAMES_free(gens);
  return rc;
}

static void version_of(const SSL *ssl, char *buf, size_t n) {
  const char *v;
  switch (SSL_version(ssl)) {
  case TLS1_VERSION:
    v = "TLS 1.0";
    break;
  case TLS1_1_VERSION:
    v = "TLS 1.1";
    break;
  case TLS1_2_VERSION:
    v = "TLS 1.2";
    break;
  case TLS1_3_VERSION:
    v = "TLS 1.3";
    break;
  default:
    v = "unknown";
    break;
  }
  snprintf(buf, n, "%s", v);
}

struct sonde_tls_facts *sonde_tls_facts_of(const struct ssl_st *cssl) {
  SSL *ssl = (SSL *)(uintptr_t)cssl; /* OpenSSL's getters take non-const */
  struct sonde_tls_facts *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  version_of(ssl, f->version, sizeof f->version);
  const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
  const char *cn = c ? SSL_CIPHER_standard_name(c) : NULL;
  snprintf(f->cipher, sizeof f->cipher, "%s", cn ? cn : "");
  /* blackbox getEarliestCertExpiry: over the certificates the peer sent
   * (a client's peer chain holds the leaf) */
  STACK_OF(X509) *sent = SSL_get_peer_cert_chain(ssl);
  for (int i = 0; sent && i < sk_X509_num(sent); i++) {
    double t;
    if (time_of(X509_get0_notAfter(sk_X509_value(sent, i)), &t) &&
        (!f->has_earliest_expiry || t < f->earliest_expiry)) {
      f->earliest_expiry = t;
      f->has_earliest_expiry = 1;
    }
  }
  /* getLastChainExpiry over the one chain OpenSSL verified */
  f->verified = SSL_get_verify_result(ssl) == X509_V_OK;
  STACK_OF(X509) *chain = f->verified ? SSL_get0_verified_chain(ssl) : NULL;
  for (int i = 0; chain && i < sk_X509_num(chain); i++) {
    double t;
    if (time_of(X509_get0_notAfter(sk_X509_value(chain, i)), &t) &&
        (!f->has_last_chain_expiry || t < f->last_chain_expiry)) {
      f->last_chain_expiry = t;
      f->has_last_chain_expiry = 1;
    }
  }
  X509 *leaf = SSL_get0_peer_certificate(ssl);
  int oom = 0;
  if (leaf) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    f->subject = name_text(X509_get_subject_name(leaf));
    f->issuer = name_text(X509_get_issuer_name(leaf));
    f->serial = serial_of(leaf);
    if (X509_digest(leaf, EVP_sha256(), md, &mdlen) == 1)
      f->fingerprint_sha256 = hex_of(md, mdlen);
    oom = !f->subject || !f->issuer || !f->serial || !f->fingerprint_sha256 ||
          dns_names_of(leaf, f) != 0;
  }
  if (oom) {
    sonde_tls_facts_free(f);
    return NULL;
  }
  return f;
}

void sonde_tls_facts_free(struct sonde_tls_facts *f) {
  if (!f) return;
  free(f->subject);
  free(f->issuer);
  free(f->serial);
  free(f->fingerprint_sha256);
  for (size_t i = 0; i < f->ndns; i++)
    free(f->dns_names[i]);
  free(f->dns_names);
  free(f);
}

/* ---- options ----------------------------------------------------------------
 */

int sonde_tls_parse_version(const char *s) {
  char buf[8];
  size_t n = 0;
  if (!s || strncasecmp(s, "tls", 3) != 0) return -1;
  for (const char *p = s + 3; *p; p++) {
    if (*p == ' ' || *p == '.' || *p == 'v' || *p == 'V') continue;
    if (*p < '0' || *p > '9' || n + 1 >= sizeof buf) return -1;
    buf[n++] = *p;
  }
  buf[n] = '\0';
  if (strcmp(buf, "10") == 0) return SONDE_TLS_1_0;
  if (strcmp(buf, "11") == 0) return SONDE_TLS_1_1;
  if (strcmp(buf, "12") == 0) return SONDE_TLS_1_2;
  if (strcmp(buf, "13") == 0) return SONDE_TLS_1_3;
  return -1;
}

static int is_ip(const char *name) {
  unsigned char b[16];
  return inet_pton(AF_INET, name, b) == 1 || inet_pton(AF_INET6, name, b) == 1;
}

/* The name to verify (and, unless an IP, to send as SNI) on a param. */
static int param_name(X509_VERIFY_PARAM *p, const char *name) {
  if (is_ip(name)) return X509_VERIFY_PARAM_set1_ip_asc(p, name);
  X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return X509_VERIFY_PARAM_set1_host(p, name, 0);
}

static void sni_cb(const SSL *cssl, int where, int ret) {
  (void)ret;
  if (!(where & SSL_CB_HANDSHAKE_START)) return;
  SSL *ssl = (SSL *)(uintptr_t)cssl;
  const char *h = X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0);
  if (h) SSL_set_tlsext_host_name(ssl, h);
}

static CURLcode ctx_cb(CURL *curl, void *sslctx, void *arg) {
  (void)curl;
  SSL_CTX *ctx = sslctx;
  if (!param_name(SSL_CTX_get0_param(ctx), arg)) return CURLE_OUT_OF_MEMORY;
  SSL_CTX_set_info_callback(ctx, sni_cb);
  return CURLE_OK;
}

struct sonde_tls_facts *sonde_tls_curl_facts(CURL *easy) {
  struct curl_tlssessioninfo *ti = NULL;
  if (curl_easy_getinfo(easy, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK || !ti ||
      ti->backend != CURLSSLBACKEND_OPENSSL || !ti->internals)
    return NULL;
  return sonde_tls_facts_of(ti->internals);
}

CURLcode sonde_tls_curl_apply(CURL *e, const struct sonde_tls_opts *o) {
  static const long versions[] = {[SONDE_TLS_1_0] = CURL_SSLVERSION_TLSv1_0,
                                  [SONDE_TLS_1_1] = CURL_SSLVERSION_TLSv1_1,
                                  [SONDE_TLS_1_2] = CURL_SSLVERSION_TLSv1_2,
                                  [SONDE_TLS_1_3] = CURL_SSLVERSION_TLSv1_3};
  CURLcode rc = CURLE_OK;
#define SET(opt, v)                                                            \
  do {                                                                         \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, v);                      \
  } while (0)
  int own_name = o->server_name && *o->server_name;
  SET(CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
  /* with server_name, OpenSSL checks the name (ctx_cb), not libcurl */
  SET(CURLOPT_SSL_VERIFYHOST, o->verify && !own_name ? 2L : 0L);
  if (o->ca_file) SET(CURLOPT_CAINFO, o->ca_file);
  if (o->cert_file) {
    SET(CURLOPT_SSLCERT, o->cert_file);
    SET(CURLOPT_SSLCERTTYPE, "PEM");
  }
  if (o->key_file) SET(CURLOPT_SSLKEY, o->key_file);
  if (o->min_version >= SONDE_TLS_1_0 && o->min_version <= SONDE_TLS_1_3)
    SET(CURLOPT_SSLVERSION, versions[o->min_version]);
  if (own_name) {
    SET(CURLOPT_SSL_CTX_FUNCTION, ctx_cb);
    SET(CURLOPT_SSL_CTX_DATA, (void *)(uintptr_t)o->server_name);
  }
#undef SET
  return rc;
}

static const char *err_text(char *buf, size_t len) {
  unsigned long e = ERR_peek_last_error();
  if (e)
    ERR_error_string_n(e, buf, len);
  else
    snprintf(buf, len, "unknown error");
  ERR_clear_error();
  return buf;
}

/* The system's trust anchors, loaded once for the process (parsing the
 * bundle costs some 25 ms of CPU: not for every run) and shared by the
 * contexts (an X509_STORE is reference-counted and safe to share; loops
 * in several threads load it once). */
static X509_STORE *store;

static void load_system_store(void) {
  if ((store = X509_STORE_new()) != NULL &&
      X509_STORE_set_default_paths(store) != 1) {
    X509_STORE_free(store);
    store = NULL;
  }
  ERR_clear_error();
}

static X509_STORE *system_store(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, load_system_store);
  return store;
}

/* A file that cannot be opened, in the system's words (OpenSSL's own for
 * it is "system lib"). */
static int unreadable(const char *what, const char *path, char *err,
                      size_t errlen) {
  FILE *f = fopen(path, "r");
  if (f) {
    fclose(f);
    return 0;
  }
  snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
  return 1;
}

struct ssl_ctx_st *sonde_tls_ctx_new(const struct sonde_tls_opts *o, char *err,
                                     size_t errlen) {
  char e[256];
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  /* each run is a fresh session, as each HTTPS run is */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  /* a peer closing without close_notify ends the data (EOF), as a
   * plain connection's close does */
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  /* the trust anchors are loaded with verify off too: the facts tell
   * whether the chain verified (last_chain_expiry) */
  if ((o->ca_file && unreadable("ca_file", o->ca_file, err, errlen)) ||
      (o->cert_file && unreadable("cert_file", o->cert_file, err, errlen)) ||
      (o->key_file && unreadable("key_file", o->key_file, err, errlen)))
    goto fail;
  if (o->ca_file) {
    if (SSL_CTX_load_verify_file(ctx, o->ca_file) != 1) {
      snprintf(err, errlen, "ca_file %s: %s", o->ca_file,
               err_text(e, sizeof e));
      goto fail;
    }
  } else {
    X509_STORE *st = system_store();
    if (st) SSL_CTX_set1_cert_store(ctx, st);
  }
  if (o->min_version >= SONDE_TLS_1_0 && o->min_version <= SONDE_TLS_1_3) {
    static const int v[] = {[SONDE_TLS_1_0] = TLS1_VERSION,
                            [SONDE_TLS_1_1] = TLS1_1_VERSION,
                            [SONDE_TLS_1_2] = TLS1_2_VERSION,
                            [SONDE_TLS_1_3] = TLS1_3_VERSION};
    SSL_CTX_set_min_proto_version(ctx, v[o->min_version]);
  }
  if (o->cert_file) {
    const char *key = o->key_file ? o->key_file : o->cert_file;
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
      snprintf(err, errlen, "cert_file %s: %s", o->cert_file,
               err_text(e, sizeof e));
      goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      snprintf(err, errlen, "key_file %s: %s", key, err_text(e, sizeof e));
      goto fail;
    }
  }
  return ctx;
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

struct ssl_st *sonde_tls_ssl_new(struct ssl_ctx_st *ctx, int fd,
                                 const char *name) {
  SSL *ssl = SSL_new(ctx);
  if (!ssl) return NULL;
  if (SSL_set_fd(ssl, fd) != 1 ||
      (name && *name &&
       (!param_name(SSL_get0_param(ssl), name) ||
        (!is_ip(name) && SSL_set_tlsext_host_name(ssl, name) != 1)))) {
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

const char *sonde_tls_error(const struct ssl_st *cssl, char *buf, size_t len) {
  SSL *ssl = (SSL *)(uintptr_t)cssl;
  long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  unsigned long e = ERR_peek_last_error();
  char etext[256] = "";
  if (e) ERR_error_string_n(e, etext, sizeof etext);
  ERR_clear_error();
  /* the verify result only when verification is what failed: with
   * verify off it is computed too (the facts' `verified`) and says
   * nothing of an alert or a reset later */
  if (vr != X509_V_OK && e &&
      ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
    snprintf(buf, len, "certificate verify failed: %s",
             X509_verify_cert_error_string(vr));
  else
    snprintf(buf, len, "%s", e ? etext : "handshake failed");
  return buf;
}

/* ---- expiry
 * ------------------------------------------------------------------ */

int sonde_tls_judge(const struct sonde_tls_facts *f,
                    const struct sonde_tls_opts *o, double now,
                    struct sonde_result *r) {
  if (!f || !o || !f->has_earliest_expiry) return 0;
  if (!(o->expiry_warning > 0) && !(o->expiry_failure > 0)) return 0;
  double left = f->earliest_expiry - now;
  sonde_status st;
  if (left <= 0 || (o->expiry_failure > 0 && left < o->expiry_failure))
    st = SONDE_FAILURE;
  else if (o->expiry_warning > 0 && left < o->expiry_warning)
    st = SONDE_WARNING;
  else
    return 0;
  /* a warning never softens what the rest of the result decided: it
   * replaces a success only */
  if (st == SONDE_WARNING && r->status != SONDE_SUCCESS) return 0;
  char when[64] = "?";
  time_t t = (time_t)f->earliest_expiry;
  struct tm tm;
  if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
  r->status = st;
  r->reason = SONDE_R_TLS_EXPIRY;
  if (left <= 0)
    sonde_result_set_error(r, "TLS certificate expired %.1f days ago (%s UTC)",
                           -left / 86400, when);
  else
    sonde_result_set_error(r, "TLS certificate expires in %.1f days (%s UTC)",
                           left / 86400, when);
  if (r->error) sonde_result_set_output(r, r->error, strlen(r->error));
  return 1;
}
