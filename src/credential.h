/*
 * credential.h: which upstream credential a client request is made with.
 *
 * Pass-through mode: the client's own bearer token goes upstream.
 * Shared mode: the client presents a local client key; a known key maps to
 * the configured shared token, which the proxy puts upstream.
 *
 * A credential is identified everywhere else (cache keys, budgets, flights)
 * by the SHA-256 of its upstream token, never by the token itself; logs use
 * the client name or the first 8 hex digits of that hash.
 */
#ifndef STPROXY_CREDENTIAL_H
#define STPROXY_CREDENTIAL_H

#include <stdbool.h>
#include <stddef.h>

struct config;

#define CREDENTIAL_ID_LEN 64 /* hex SHA-256 */

/* How the proxy obtains the upstream credential for a request. */
enum credential_mode {
    CREDENTIAL_PASS_THROUGH, /* each client's own bearer token goes upstream */
    CREDENTIAL_SHARED,       /* client keys map to one configured credential */
};

/* Outcome of resolving a request's Authorization header. */
enum credential_status {
    CREDENTIAL_OK,          /* a credential was found */
    CREDENTIAL_MISSING,     /* no usable "Bearer <x>" header */
    CREDENTIAL_UNKNOWN_KEY, /* shared mode: the key is not configured */
};

/* One configured client key; only its hash is kept after start-up. */
struct client_key {
    char *name;                 /* shown in logs and metrics */
    unsigned char key_hash[32]; /* SHA-256 of the key */
};

struct oauth;
struct retired_keys;

/* The credentials of one process; replaced whole on reload. */
struct credential_store {
    enum credential_mode mode;
    struct oauth *oauth;                   /* shared mode with an OAuth2 credential */
    int rejections;                        /* static token: upstream 401s in a row */
    long long probe_after_ms;              /* static token failed: next probe allowed */
    char failure[200];                     /* static token rejected: why; "" = fine */
    char *shared_token;                    /* owned; NULL in pass-through mode */
    char shared_id[CREDENTIAL_ID_LEN + 1]; /* hash of shared_token */
    struct client_key *keys;               /* owned array */
    size_t nkeys;
    struct retired_keys *retired; /* key arrays replaced by reloads, kept for requests in flight */
};

/*
 * The credential of one request. Points into the store or into the request's
 * own header value, so it lives no longer than both.
 */
struct credential_ref {
    const char *client; /* client name, or "pass-through" */
    const char *token;  /* token to send upstream */
    size_t token_len;
    char id[CREDENTIAL_ID_LEN + 1]; /* hash of token: the isolation key */
};

bool credential_store_init(struct credential_store *store, const struct config *cfg, char *err,
                           size_t errlen) __attribute__((warn_unused_result));
void credential_store_free(struct credential_store *store);

/* Replaces the client keys (SIGHUP). Requests in flight keep pointing at
 * the old names, so the old keys are kept until the store is freed. */
void credential_store_set_keys(struct credential_store *store, const char *spec);

/* The upstream token a request is sent with, now or once an OAuth2 refresh
 * under way is done: the client's own (passthrough_token) in pass-through
 * mode, the shared one otherwise. token is NULL, with failure saying why,
 * when the shared credential needs re-authorisation. fn may run at once. */
typedef void (*credential_token_fn)(const char *token, size_t len, const char *failure, void *arg);
void credential_with_token(struct credential_store *store, const char *passthrough_token,
                           size_t passthrough_len, credential_token_fn fn, void *arg);

/* What the upstream said to a request sent with token: a 401 counts
 * against a static shared token (three in a row: failed) and makes an
 * OAuth2 credential refresh; a success clears the count. */
void credential_upstream_status(struct credential_store *store, const char *token, int status);

/* Why the shared credential cannot be used now, or NULL. */
const char *credential_failure(const struct credential_store *store);

/* Resolves an Authorization header value (may be NULL). */
enum credential_status credential_resolve(const struct credential_store *store,
                                          const char *authorization, struct credential_ref *out)
    __attribute__((warn_unused_result));

/* Syntax check for "name:key,name:key" (names unique, keys unique, non-empty). */
bool credential_keys_valid(const char *spec, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Hex SHA-256 of a token. */
void credential_hash_hex(const char *token, size_t len, char out[CREDENTIAL_ID_LEN + 1]);

#endif
