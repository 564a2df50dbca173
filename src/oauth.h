/*
 * oauth.h: an OAuth2 credential the proxy keeps alive. It holds the
 * current access token, refreshes it (refresh_token grant, Basic auth,
 * form body) before it expires and at once when the upstream rejects it,
 * and stores every rotated refresh token durably (state_dir: temporary
 * file, fsync, rename, fsync of the directory; and Redis when configured)
 * before the new access token is used. One refresh at a time per
 * credential, across processes sharing Redis. Requests that need a token
 * during a refresh wait for it.
 */
#ifndef STPROXY_OAUTH_H
#define STPROXY_OAUTH_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "upstream.h"

struct event_base;
struct config;
struct cache_redis;
struct oauth;

/* The current access token (borrowed for the call), or NULL and why not. */
typedef void (*oauth_token_fn)(const char *access_token, const char *failure, void *arg);

/* A token endpoint's answer. Strings are owned (oauth_answer_free). */
struct oauth_answer {
    char *access_token;
    char *refresh_token;
    long expires_in; /* seconds; 0 when absent */
    char *error;     /* e.g. "invalid_grant" */
    char *error_description;
};

/* cred_id names the credential in Redis keys (a hash, never a token). */
struct oauth *oauth_new(struct event_base *base, const struct config *cfg, SSL_CTX *tls,
                        struct cache_redis *redis, const char *cred_id, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Answers every waiter with a failure and frees. */
void oauth_free(struct oauth *oa);

/* Calls fn with a valid access token: at once when there is one, else
 * after the refresh under way (started if none is). */
void oauth_with_token(struct oauth *oa, oauth_token_fn fn, void *arg);
/* The upstream answered 401 to token_used: refresh now (once per token). */
void oauth_rejected(struct oauth *oa, const char *token_used);
/* Why the credential cannot be used (needs re-authorisation), or NULL. */
const char *oauth_failure(const struct oauth *oa);

/* ---- shared with `stproxy auth` ------------------------------------------ */

/* The state file of a client id inside state_dir. malloc'd. */
char *oauth_state_path(const char *state_dir, const char *client_id);
/* Writes the refresh token durably (0600, tmp + fsync + rename + fsync dir). */
bool oauth_state_write(const char *state_dir, const char *client_id, const char *refresh_token,
                       char *err, size_t errlen) __attribute__((warn_unused_result));
/* Reads the stored refresh token; NULL when there is none. malloc'd. */
char *oauth_state_read(const char *state_dir, const char *client_id);

bool oauth_parse_answer(const char *body, size_t len, struct oauth_answer *out)
    __attribute__((warn_unused_result));
void oauth_answer_free(struct oauth_answer *a);

/* A pool for the token URL's origin, and the URL's path. */
struct upstream_pool *oauth_token_pool(struct event_base *base, const char *token_url, SSL_CTX *tls,
                                       char **path);
/* POSTs form (application/x-www-form-urlencoded) with Basic client auth. */
void oauth_post_form(struct upstream_pool *pool, const char *path, const char *client_id,
                     const char *client_secret, const char *form, upstream_done_fn done, void *arg);

#endif
