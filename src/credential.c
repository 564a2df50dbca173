/*
 * credential.c: client keys, the shared credential and the mapping from a
 * request's Authorization header to the token that goes upstream. Keys are
 * compared by hash in constant time, visiting every key, so neither timing
 * nor the key's length tells an attacker how close a guess was.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "config.h"
#include "credential.h"
#include "janitor.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "oauth.h"

#define STATIC_REJECTIONS 3     /* upstream 401s in a row that mean a dead token */
#define STATIC_PROBE_MS   30000 /* while failed, let one request test the token this often */

static const char pass_through_name[] = "pass-through";

/*
 * SHA-256 with the digest fetched once and one context reused. OpenSSL 3's
 * one-shot SHA256() fetches the algorithm from the provider on every call,
 * which was a fifth of the instructions of a cache hit (every request hashes
 * its token or client key, and its cache key). The process has one thread.
 */
static void sha256(const void *data, size_t len, unsigned char out[SHA256_DIGEST_LENGTH])
{
    static EVP_MD *md;
    static EVP_MD_CTX *ctx;

    if (md == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ctx = EVP_MD_CTX_new();
    }
    /* Without SHA-256 no credential could be told apart from another: stop. */
    if (md == NULL || ctx == NULL || EVP_DigestInit_ex2(ctx, md, NULL) != 1 ||
        EVP_DigestUpdate(ctx, data, len) != 1 || EVP_DigestFinal_ex(ctx, out, NULL) != 1) {
        log_error("OpenSSL's SHA-256 failed");
        abort();
    }
}

void credential_hash_hex(const char *token, size_t len, char out[CREDENTIAL_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];

    sha256(token, len, md);
    for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[CREDENTIAL_ID_LEN] = '\0';
}

static bool name_char_ok(int c)
{
    return isalnum(c) || c == '-' || c == '_' || c == '.';
}

/* Calls fn for each "name:key" pair of spec; stops at the first false. */
typedef bool (*pair_fn)(const char *name, size_t name_len, const char *key, size_t key_len,
                        void *arg);

static bool for_each_pair(const char *spec, pair_fn fn, void *arg)
{
    const char *p = spec;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        const char *colon;
        size_t len = end ? (size_t)(end - p) : strlen(p);

        colon = memchr(p, ':', len);
        if (!fn(p, colon ? (size_t)(colon - p) : len, colon ? colon + 1 : NULL,
                colon ? len - (size_t)(colon - p) - 1 : 0, arg))
            return false;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return true;
}

/* Accumulates what the syntax check needs to report duplicates. */
struct keys_check {
    char *err;
    size_t errlen;
    size_t count;
    char names[64][64];
    unsigned char hashes[64][SHA256_DIGEST_LENGTH];
};

static bool check_pair(const char *name, size_t name_len, const char *key, size_t key_len,
                       void *arg)
{
    struct keys_check *kc = arg;

    if (name_len == 0 || key == NULL || key_len == 0) {
        snprintf(kc->err, kc->errlen, "expected name:key pairs separated by commas");
        return false;
    }
    if (name_len >= sizeof(kc->names[0])) {
        snprintf(kc->err, kc->errlen, "client name longer than %zu characters",
                 sizeof(kc->names[0]) - 1);
        return false;
    }
    for (size_t i = 0; i < name_len; i++) {
        if (!name_char_ok((unsigned char)name[i])) {
            snprintf(kc->err, kc->errlen,
                     "client name \"%.*s\" may hold only letters, digits, '-', '_' and '.'",
                     (int)name_len, name);
            return false;
        }
    }
    for (size_t i = 0; i < key_len; i++) {
        if (isspace((unsigned char)key[i]) || !isprint((unsigned char)key[i])) {
            /* The key is secret: name the client, never echo the key. */
            snprintf(kc->err, kc->errlen,
                     "the key of client \"%.*s\" holds a blank or control "
                     "character",
                     (int)name_len, name);
            return false;
        }
    }
    if (kc->count == sizeof(kc->names) / sizeof(kc->names[0])) {
        snprintf(kc->err, kc->errlen, "more than %zu client keys",
                 sizeof(kc->names) / sizeof(kc->names[0]));
        return false;
    }
    memcpy(kc->names[kc->count], name, name_len);
    kc->names[kc->count][name_len] = '\0';
    sha256(key, key_len, kc->hashes[kc->count]);
    for (size_t i = 0; i < kc->count; i++) {
        if (strcmp(kc->names[i], kc->names[kc->count]) == 0) {
            snprintf(kc->err, kc->errlen, "client name \"%s\" appears twice", kc->names[i]);
            return false;
        }
        if (memcmp(kc->hashes[i], kc->hashes[kc->count], SHA256_DIGEST_LENGTH) == 0) {
            snprintf(kc->err, kc->errlen, "clients \"%s\" and \"%s\" have the same key",
                     kc->names[i], kc->names[kc->count]);
            return false;
        }
    }
    kc->count++;
    return true;
}

bool credential_keys_valid(const char *spec, char *err, size_t errlen)
{
    struct keys_check *kc = xcalloc(1, sizeof(*kc));
    bool ok;

    kc->err = err;
    kc->errlen = errlen;
    ok = for_each_pair(spec, check_pair, kc);
    if (ok && kc->count == 0) {
        snprintf(err, errlen, "no client keys given");
        ok = false;
    }
    OPENSSL_cleanse(kc, sizeof(*kc));
    free(kc);
    return ok;
}

static bool add_pair(const char *name, size_t name_len, const char *key, size_t key_len, void *arg)
{
    struct credential_store *store = arg;
    struct client_key *ck;

    store->keys = xrealloc(store->keys, (store->nkeys + 1) * sizeof(*store->keys));
    ck = &store->keys[store->nkeys++];
    ck->name = xstrndup(name, name_len);
    sha256(key, key_len, ck->key_hash);
    return true;
}

bool credential_store_init(struct credential_store *store, const struct config *cfg, char *err,
                           size_t errlen)
{
    memset(store, 0, sizeof(*store));
    if (cfg->token == NULL && cfg->oauth_client_id == NULL) {
        store->mode = CREDENTIAL_PASS_THROUGH;
        return true;
    }
    if (cfg->client_keys == NULL || !credential_keys_valid(cfg->client_keys, err, errlen))
        return false;
    store->mode = CREDENTIAL_SHARED;
    if (cfg->token != NULL) {
        store->shared_token = xstrdup(cfg->token);
        credential_hash_hex(store->shared_token, strlen(store->shared_token), store->shared_id);
    } else {
        /* An OAuth2 credential's tokens change; its identity (cache, budgets)
         * is the app's: a hash of "oauth:" and the client id. */
        size_t len = strlen(cfg->oauth_client_id) + 7;
        char *id = xmalloc(len);
        snprintf(id, len, "oauth:%s", cfg->oauth_client_id);
        credential_hash_hex(id, strlen(id), store->shared_id);
        free(id);
    }
    if (!for_each_pair(cfg->client_keys, add_pair, store))
        return false;
    return true;
}

/* A key array a reload replaced, kept for requests still using its names. */
struct retired_keys {
    struct retired_keys *next;
    struct client_key *keys;
    size_t nkeys;
};

static void free_keys(struct client_key *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(keys[i].name);
    free(keys);
}

void credential_store_set_keys(struct credential_store *store, const char *spec)
{
    struct retired_keys *old = xcalloc(1, sizeof(*old));

    old->keys = store->keys;
    old->nkeys = store->nkeys;
    old->next = store->retired;
    store->retired = old;
    store->keys = NULL;
    store->nkeys = 0;
    if (spec != NULL)
        (void)for_each_pair(spec, add_pair, store);
}

void credential_store_free(struct credential_store *store)
{
    while (store->retired != NULL) {
        struct retired_keys *r = store->retired;
        store->retired = r->next;
        free_keys(r->keys, r->nkeys);
        free(r);
    }
    if (store->shared_token != NULL) {
        OPENSSL_cleanse(store->shared_token, strlen(store->shared_token));
        xfree(store->shared_token);
    }
    free_keys(store->keys, store->nkeys);
    store->keys = NULL;
    store->nkeys = 0;
}

/* Finds the token in "Bearer <token>"; false when the header has another shape. */
static bool bearer_token(const char *authorization, const char **token, size_t *len)
{
    const char *p, *end;

    if (authorization == NULL || strncasecmp(authorization, "Bearer", 6) != 0 ||
        (authorization[6] != ' ' && authorization[6] != '\t'))
        return false;
    p = authorization + 6;
    while (*p == ' ' || *p == '\t')
        p++;
    end = p + strlen(p);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (end == p)
        return false;
    *token = p;
    *len = (size_t)(end - p);
    return true;
}

enum credential_status credential_resolve(const struct credential_store *store,
                                          const char *authorization, struct credential_ref *out)
{
    unsigned char presented[SHA256_DIGEST_LENGTH];
    const struct client_key *match = NULL;
    const char *token;
    size_t len;

    memset(out, 0, sizeof(*out));
    if (!bearer_token(authorization, &token, &len))
        return CREDENTIAL_MISSING;
    if (store->mode == CREDENTIAL_PASS_THROUGH) {
        out->client = pass_through_name;
        out->token = token;
        out->token_len = len;
        credential_hash_hex(token, len, out->id);
        return CREDENTIAL_OK;
    }
    sha256(token, len, presented);
    /* Visit every key so the time taken does not depend on which one matched. */
    for (size_t i = 0; i < store->nkeys; i++) {
        if (CRYPTO_memcmp(presented, store->keys[i].key_hash, SHA256_DIGEST_LENGTH) == 0)
            match = &store->keys[i];
    }
    OPENSSL_cleanse(presented, sizeof(presented));
    if (match == NULL)
        return CREDENTIAL_UNKNOWN_KEY;
    out->client = match->name;
    out->token = NULL; /* the shared token is looked up when the request is sent */
    out->token_len = 0;
    memcpy(out->id, store->shared_id, sizeof(out->id));
    return CREDENTIAL_OK;
}

/* Adapts the OAuth2 callback (NUL-terminated token) to ours. */
struct oauth_call {
    credential_token_fn fn;
    void *arg;
};

static void oauth_token_cb(const char *token, const char *failure, void *arg)
{
    struct oauth_call *call = arg;
    call->fn(token, token ? strlen(token) : 0, failure, call->arg);
    free(call);
}

void credential_with_token(struct credential_store *store, const char *passthrough_token,
                           size_t passthrough_len, credential_token_fn fn, void *arg)
{
    if (store->mode == CREDENTIAL_PASS_THROUGH) {
        fn(passthrough_token, passthrough_len, NULL, arg);
        return;
    }
    if (store->oauth != NULL) {
        struct oauth_call *call = xcalloc(1, sizeof(*call));
        call->fn = fn;
        call->arg = arg;
        oauth_with_token(store->oauth, oauth_token_cb, call);
        return;
    }
    if (store->failure[0] != '\0') {
        long long now = janitor_wall_ms();
        if (now < store->probe_after_ms) {
            fn(NULL, 0, store->failure, arg);
            return;
        }
        store->probe_after_ms = now + STATIC_PROBE_MS; /* this request tests the token */
    }
    fn(store->shared_token, strlen(store->shared_token), NULL, arg);
}

void credential_upstream_status(struct credential_store *store, const char *token, int status)
{
    if (store->mode == CREDENTIAL_PASS_THROUGH)
        return; /* a client's own token is the client's business */
    if (store->oauth != NULL) {
        if (status == 401 && token != NULL)
            oauth_rejected(store->oauth, token);
        return;
    }
    if (status == 401) {
        if (++store->rejections >= STATIC_REJECTIONS && store->failure[0] == '\0') {
            snprintf(store->failure, sizeof(store->failure),
                     "the upstream rejects the configured token (%d answers 401 in a row; an "
                     "expired personal access token?): configure a new one",
                     store->rejections);
            log_error("credential: %s", store->failure);
            metrics_set(METRIC_CREDENTIAL_FAILED, 1);
            store->probe_after_ms = janitor_wall_ms() + STATIC_PROBE_MS;
        }
    } else if (status >= 200 && status < 300) {
        if (store->failure[0] != '\0')
            log_info("credential: the upstream accepts the configured token again");
        store->rejections = 0;
        store->failure[0] = '\0';
        metrics_set(METRIC_CREDENTIAL_FAILED, 0);
    }
}

const char *credential_failure(const struct credential_store *store)
{
    if (store->oauth != NULL)
        return oauth_failure(store->oauth);
    return store->failure[0] != '\0' ? store->failure : NULL;
}
