/*
 * authorize.h: `stproxy auth`, the one-time authorisation of an OAuth2
 * app. It prints the authorize URL, takes the code from the browser's
 * redirect (a one-shot loopback listener on the redirect URI) or from a
 * pasted code or URL on standard input, exchanges it at the token endpoint
 * and stores the refresh token where the proxy will look for it.
 */
#ifndef STPROXY_AUTHORIZE_H
#define STPROXY_AUTHORIZE_H

#include <openssl/ssl.h>

struct config;

/* Runs the whole exchange; returns the process exit status. */
int authorize_run(const struct config *cfg, SSL_CTX *tls);

#endif
