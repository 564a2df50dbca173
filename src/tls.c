/*
 * tls.c: OpenSSL set-up for the upstream side. One SSL_CTX for the process;
 * one SSL per connection carrying SNI and the expected host name, so a
 * certificate for another name fails verification like an untrusted one.
 */
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"

SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create TLS context: %s",
                 ERR_reason_error_string(ERR_get_error()));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Resumed sessions save a round trip on every new pooled connection. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(err, errlen, "upstream_ca: cannot load %s: %s", ca_file,
                     ERR_reason_error_string(ERR_get_error()));
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "cannot load the system trust store: %s",
                 ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static bool host_is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);

    if (ssl == NULL)
        return NULL;
    if (host_is_ip(host)) {
        /* No SNI for address literals (RFC 6066); match the IP SAN instead. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
            goto fail;
    } else {
        if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
            goto fail;
        /* No partial wildcards like a*.example.com. */
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

void tls_failure_reason(SSL *ssl, unsigned long ssl_err, char *buf, size_t len)
{
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

    if (verify != X509_V_OK) {
        snprintf(buf, len, "certificate verification failed: %s",
                 X509_verify_cert_error_string(verify));
    } else if (ssl_err != 0) {
        const char *reason = ERR_reason_error_string(ssl_err);
        snprintf(buf, len, "TLS handshake failed: %s", reason ? reason : "unknown error");
    } else {
        snprintf(buf, len, "TLS handshake failed: connection closed by the upstream");
    }
}

const char *tls_library_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
