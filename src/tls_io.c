/*
 * tls_io.c - non-blocking TLS over a socket (include/sonde/tls.h): the
 * handshake, reads and writes as steps a prober drives from the loop's
 * events (SSL_get_error's WANT_READ / WANT_WRITE say which event).
 */
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "sonde/tls.h"

static enum sonde_tls_io outcome(SSL *ssl, int rc) {
  switch (SSL_get_error(ssl, rc)) {
  case SSL_ERROR_WANT_READ:
    return SONDE_TLS_IO_WANT_READ;
  case SSL_ERROR_WANT_WRITE:
    return SONDE_TLS_IO_WANT_WRITE;
  case SSL_ERROR_ZERO_RETURN:
    return SONDE_TLS_IO_EOF;
  default:
    return SONDE_TLS_IO_ERROR;
  }
}

enum sonde_tls_io sonde_tls_io_handshake(struct ssl_st *ssl) {
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl);
  return rc == 1 ? SONDE_TLS_IO_DONE : outcome(ssl, rc);
}

enum sonde_tls_io sonde_tls_io_read(struct ssl_st *ssl, void *buf, size_t n,
                                    size_t *got) {
  ERR_clear_error();
  *got = 0;
  int rc = SSL_read_ex(ssl, buf, n, got);
  return rc == 1 ? SONDE_TLS_IO_DONE : outcome(ssl, rc);
}

enum sonde_tls_io sonde_tls_io_write(struct ssl_st *ssl, const void *buf,
                                     size_t n, size_t *put) {
  ERR_clear_error();
  *put = 0;
  int rc = SSL_write_ex(ssl, buf, n, put);
  return rc == 1 ? SONDE_TLS_IO_DONE : outcome(ssl, rc);
}

void sonde_tls_io_close(struct ssl_st *ssl, int clean) {
  if (!ssl) return;
  /* (after a fatal error OpenSSL must not send close_notify) */
  if (clean && SSL_is_init_finished(ssl)) SSL_shutdown(ssl);
  ERR_clear_error();
  SSL_free(ssl);
}
