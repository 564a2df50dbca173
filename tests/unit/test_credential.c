/*
 * test_credential.c: pass-through and shared-mode resolution of the
 * Authorization header.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "credential.h"
#include "tap.h"

static const char *got_token;

static void remember_token(const char *token, size_t len, const char *failure, void *arg)
{
    (void)len;
    (void)failure;
    (void)arg;
    got_token = token;
}

int main(void)
{
    struct config cfg;
    struct credential_store store;
    struct credential_ref ref;
    char err[256], want[CREDENTIAL_ID_LEN + 1];

    /* pass-through: the client's token goes upstream, keyed by its hash */
    config_init(&cfg);
    tap_ok(credential_store_init(&store, &cfg, err, sizeof(err)), "pass-through store");
    tap_is_int(store.mode, CREDENTIAL_PASS_THROUGH, "no token means pass-through");
    tap_is_int(credential_resolve(&store, "Bearer tok-A", &ref), CREDENTIAL_OK, "bearer found");
    tap_is_str(ref.client, "pass-through", "client name");
    tap_ok(ref.token_len == 5 && memcmp(ref.token, "tok-A", 5) == 0, "token passed through");
    credential_with_token(&store, ref.token, ref.token_len, remember_token, NULL);
    tap_ok(got_token == ref.token, "pass-through sends the client's own token");
    credential_hash_hex("tok-A", 5, want);
    tap_is_str(ref.id, want, "id is the token's SHA-256");
    tap_ok(strstr(ref.id, "tok-A") == NULL && strlen(ref.id) == 64, "id is 64 hex digits");
    tap_is_int(credential_resolve(&store, "bearer   tok-A  ", &ref), CREDENTIAL_OK,
               "scheme case and blanks tolerated");
    tap_ok(ref.token_len == 5, "blanks trimmed");
    tap_is_int(credential_resolve(&store, NULL, &ref), CREDENTIAL_MISSING, "no header");
    tap_is_int(credential_resolve(&store, "Basic abc", &ref), CREDENTIAL_MISSING, "not bearer");
    tap_is_int(credential_resolve(&store, "Bearer ", &ref), CREDENTIAL_MISSING, "empty bearer");
    tap_is_int(credential_resolve(&store, "Bearertok", &ref), CREDENTIAL_MISSING, "no space");
    credential_store_free(&store);

    /* shared: client keys map to the configured token */
    cfg.token = strdup("shared-upstream-token");
    cfg.client_keys = strdup("homeassistant:key-ha,node-red:key-nr");
    tap_ok(credential_store_init(&store, &cfg, err, sizeof(err)), "shared store");
    tap_is_int(store.mode, CREDENTIAL_SHARED, "token means shared mode");
    tap_is_int(store.nkeys, 2, "two keys");
    tap_is_int(credential_resolve(&store, "Bearer key-nr", &ref), CREDENTIAL_OK, "known key");
    tap_is_str(ref.client, "node-red", "client named");
    tap_ok(ref.token == NULL, "no token is bound to the request: it is looked up at send time");
    got_token = NULL;
    credential_with_token(&store, ref.token, ref.token_len, remember_token, NULL);
    tap_is_str(got_token, "shared-upstream-token", "the shared token goes upstream");
    credential_upstream_status(&store, got_token, 401);
    credential_upstream_status(&store, got_token, 401);
    tap_ok(credential_failure(&store) == NULL, "two 401s are not yet a dead token");
    credential_upstream_status(&store, got_token, 401);
    tap_ok(credential_failure(&store) != NULL, "three 401s in a row: the token is reported dead");
    tap_ok(strstr(credential_failure(&store), "shared-upstream-token") == NULL,
           "the report never holds the token");
    got_token = "unset";
    credential_with_token(&store, ref.token, ref.token_len, remember_token, NULL);
    tap_ok(got_token == NULL, "while dead, requests get no token (clients get 503)");
    credential_upstream_status(&store, "shared-upstream-token", 200);
    tap_ok(credential_failure(&store) == NULL, "a success clears it");
    credential_hash_hex("shared-upstream-token", strlen("shared-upstream-token"), want);
    tap_is_str(ref.id, want, "keyed by the shared token's hash");
    tap_is_int(credential_resolve(&store, "Bearer key-ha", &ref), CREDENTIAL_OK, "other key");
    tap_is_str(ref.client, "homeassistant", "other client named");
    tap_is_str(ref.id, want, "both clients share the credential");
    tap_is_int(credential_resolve(&store, "Bearer key-h", &ref), CREDENTIAL_UNKNOWN_KEY,
               "prefix of a key is unknown");
    tap_is_int(credential_resolve(&store, "Bearer key-ha2", &ref), CREDENTIAL_UNKNOWN_KEY,
               "extension of a key is unknown");
    tap_is_int(credential_resolve(&store, "Bearer shared-upstream-token", &ref),
               CREDENTIAL_UNKNOWN_KEY, "the upstream token itself is not a client key");
    tap_is_int(credential_resolve(&store, NULL, &ref), CREDENTIAL_MISSING, "missing key");
    credential_store_free(&store);
    config_free(&cfg);

    /* syntax */
    tap_ok(credential_keys_valid("a:b", err, sizeof(err)), "one pair");
    tap_ok(credential_keys_valid("a:b,", err, sizeof(err)), "trailing comma tolerated");
    tap_ok(!credential_keys_valid("a b:c", err, sizeof(err)), "blank in a name");
    tap_ok(!credential_keys_valid(":c", err, sizeof(err)), "empty name");
    tap_ok(!credential_keys_valid("a:", err, sizeof(err)), "empty key");
    return tap_done();
}
