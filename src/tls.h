/*
 * tls.h: the TLS client context used for every upstream connection.
 * Verification of the certificate chain and of the host name is always on;
 * there is no setting that turns it off.
 */
#ifndef STPROXY_TLS_H
#define STPROXY_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

/* Makes the client context; ca_file NULL means the system trust store. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* A new SSL for one connection to host: SNI set (for names) and the name or IP
 * address the certificate must match. */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host) __attribute__((warn_unused_result));

/*
 * Explains why a handshake failed, for the log and the 502 body: the
 * certificate verification result when that is what failed, else the first
 * OpenSSL error (ssl_err from bufferevent_get_openssl_error, or 0).
 */
void tls_failure_reason(SSL *ssl, unsigned long ssl_err, char *buf, size_t len);

/* The OpenSSL version string, for -V. */
const char *tls_library_version(void);

#endif
