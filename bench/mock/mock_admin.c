/*
 * mock_admin.c: the plain-HTTP admin port that tests use to see and steer the mock.
 *
 * Owns the request counters (total, by path, by token, by status), the copy of the last API
 * request, and the run-time configuration (mock_config) with the table of keys that
 * POST /config accepts. The API side only calls mock_admin_note_request()/_note_status() and
 * reads mock_config; everything the tests see is rendered here.
 *
 *   GET  /counters      {"total":N,"by_path":{"GET /devices":n},"by_token":{..},"by_status":{..},
 *                        "held":N,"rate_limited":N,"max_in_window":{token:n},
 *                        "max_in_sliding_window":{token:n},
 *                        "device_max_in_window":{"token device status|command":n},
 *                        "rate_limited_by_token":{token:n}};
 *                        by_status counts answers by status, and requests that got
 *                        no HTTP answer under "reset", "hang" or "garbage"; held is how many
 *                        hanging requests are held right now (not a counter: /reset keeps it);
 *                        rate_limited counts the 429s of the limits and of inject_429 (and
 *                        rate_limited_by_token the same per token); the max_
 *                        members are the most requests a token (or device and kind) had in one
 *                        fixed window of its limit, and in any interval of rate_window_ms
 *                        (mock_limit.c); "oauth":{"token_requests","refreshes","code_exchanges",
 *                        "invalid_grant","authorizations","abandoned","failed",
 *                        "refreshes_by_token":{refresh token:times presented}} (mock_oauth.c)
 *   GET  /arrivals      {"token":[[ms since start or reset, 1 if limited else 0],...]}: the
 *                        arrival times mock_limit.c keeps (the last 4096 per token)
 *   POST /reset         zeroes the counters, forgets the last request and restarts every limit
 *                        window; device state and config stay
 *   GET  /last-request  {"method","uri","headers":[[name,value],...],"sni","body"}
 *   GET  /config        the current run-time config
 *   POST /config?k=v    changes it (all keys checked before any is applied); see
 *                       admin_config_keys for the keys. fail_mode=none also puts fail_status,
 *                       fail_count and fail_path back to their defaults (unless the same request
 *                       sets them), and setting fail_mode to anything answers the requests that
 *                       fail_mode=hang holds with a 503
 *   GET  /healthz       "ok"
 *   POST /oauth/issue?client_id=ID[&scope=S]   a fresh refresh token {"refresh_token",...}
 *   POST /oauth/revoke[?refresh_token=X]       kills every refresh and access token (or one)
 *   POST /oauth/expire                         every access token issued so far expires now
 *   GET  /oauth/tokens                         every code and token issued, with its state
 *                       (all four in mock_oauth.c)
 */
#include "mock.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h> /* walking the request headers in order */
#include <openssl/ssl.h>

/* A string-keyed counter table that keeps first-seen order, so /counters lists keys in the
 * order requests first used them. Entries chain through indices, which survive realloc. */
struct admin_counter {
    char *key;
    unsigned long long value;
    size_t next; /* index + 1 of the next entry in the same bucket; 0 ends the chain */
};

struct admin_counter_map {
    struct admin_counter *items;
    size_t n, cap;
    size_t *buckets; /* index + 1 of each bucket's first entry; 0 = empty */
    size_t n_buckets;
};

/* All counters /counters reports; /reset zeroes them together. */
struct admin_counters {
    unsigned long long total;
    struct admin_counter_map by_path;   /* "METHOD /path" (no query) */
    struct admin_counter_map by_token;  /* bearer token, "" when missing */
    struct admin_counter_map by_status; /* "200", "401", ... counted when the answer is sent */
};

/* How a config value is written in a query and stored in struct mock_config. */
enum admin_config_type {
    CONFIG_LONG, /* a decimal integer between min and max, stored as long */
    CONFIG_ENUM, /* one of names[], stored as its index in a long */
    CONFIG_TEXT, /* printable text shorter than max bytes, stored in a char[max] */
};

/* One key of POST /config. A new fault (forced status, connection resets, per-token rate
 * limits, an OAuth endpoint) is a new field in struct mock_config plus a row here. */
struct admin_config_key {
    const char *name;
    enum admin_config_type type;
    size_t offset;            /* of the field in struct mock_config */
    long min, max;            /* CONFIG_LONG: the range; CONFIG_TEXT: max is the field's size */
    const char *const *names; /* CONFIG_ENUM: the values, NULL-terminated */
    const char *doc;
};

#define ADMIN_CFG(field) offsetof(struct mock_config, field)

static const struct admin_config_key admin_config_keys[] = {
    {"latency_ms", CONFIG_LONG, ADMIN_CFG(latency_ms), 0, 3600 * 1000, NULL,
     "milliseconds added before every API answer (failures included)"},
    {"fail_mode", CONFIG_ENUM, ADMIN_CFG(fail_mode), 0, 0, mock_fail_mode_names,
     "none|status|reset|hang|garbage|truncate|huge|nonjson: how API requests fail; setting it "
     "releases held requests "
     "with 503, none also resets the other fail_ keys"},
    {"fail_status", CONFIG_LONG, ADMIN_CFG(fail_status), 100, 599, NULL,
     "the status fail_mode=status answers, with an API error body (default 503)"},
    {"fail_count", CONFIG_LONG, ADMIN_CFG(fail_count), 0, 1000000000, NULL,
     "only the next N requests fail, then fail_mode is none again (0: until changed)"},
    {"fail_path", CONFIG_TEXT, ADMIN_CFG(fail_path), 0, MOCK_FAIL_PATH_MAX, NULL,
     "only requests whose path starts with this fail (default: all)"},
    {"rate_limit", CONFIG_LONG, ADMIN_CFG(rate_limit), 0, 1000000000, NULL,
     "per bearer token: API requests per fixed window of rate_window_ms, then 429 (0: off); "
     "setting it restarts the windows"},
    {"rate_window_ms", CONFIG_LONG, ADMIN_CFG(rate_window_ms), 1, 86400 * 1000, NULL,
     "the per-token window, also the length of max_in_sliding_window (default 60000)"},
    {"device_limit", CONFIG_LONG, ADMIN_CFG(device_limit), 0, 1000000000, NULL,
     "per (token, device, status|command): requests per fixed window of device_window_ms, then "
     "429 (0: off); setting it restarts the windows"},
    {"device_window_ms", CONFIG_LONG, ADMIN_CFG(device_window_ms), 1, 86400 * 1000, NULL,
     "the per-device window (default 60000)"},
    {"reset_unit", CONFIG_ENUM, ADMIN_CFG(reset_unit), 0, 0, mock_reset_unit_names,
     "ms|s: X-RateLimit-Reset in milliseconds (default) or seconds rounded up"},
    {"inject_429", CONFIG_LONG, ADMIN_CFG(inject_429), 0, 1000000000, NULL,
     "the next N API requests get a 429 with retry in inject_retry_ms, whatever the limits"},
    {"inject_retry_ms", CONFIG_LONG, ADMIN_CFG(inject_retry_ms), 0, 86400 * 1000, NULL,
     "the retry time (and X-RateLimit-Reset) of an injected 429 (default 1000)"},
    {"access_ttl_ms", CONFIG_LONG, ADMIN_CFG(access_ttl_ms), 1, 30L * 86400 * 1000, NULL,
     "lifetime of the access tokens the token endpoint issues from now on (default 3600000); "
     "expires_in is it in seconds rounded up"},
    {"token_latency_ms", CONFIG_LONG, ADMIN_CFG(token_latency_ms), 0, 3600 * 1000, NULL,
     "milliseconds a token request waits before it is looked at; one whose client leaves "
     "meanwhile is dropped unread (default 0)"},
    {"token_fail", CONFIG_LONG, ADMIN_CFG(token_fail), 0, 1000000000, NULL,
     "the next N token requests get a 503 (temporarily_unavailable)"},
};

#define ADMIN_N_CONFIG_KEYS (sizeof(admin_config_keys) / sizeof(admin_config_keys[0]))

struct mock_config mock_config = {
    .latency_ms = 0,
    .fail_mode = MOCK_FAIL_NONE,
    .fail_status = MOCK_FAIL_STATUS_DEFAULT,
    .fail_count = 0,
    .fail_path = "",
    .rate_limit = 0,
    .rate_window_ms = MOCK_WINDOW_MS_DEFAULT,
    .device_limit = 0,
    .device_window_ms = MOCK_WINDOW_MS_DEFAULT,
    .reset_unit = MOCK_RESET_MILLIS,
    .inject_429 = 0,
    .inject_retry_ms = MOCK_INJECT_RETRY_MS_DEFAULT,
    .access_ttl_ms = MOCK_ACCESS_TTL_MS_DEFAULT,
    .token_latency_ms = 0,
    .token_fail = 0,
};

static struct admin_counters admin_counters;
/* The last API request rendered as JSON; NULL when none arrived since start or reset. */
static struct evbuffer *admin_last_request;

/* ---- counter maps ------------------------------------------------------------------------- */

static size_t admin_hash(const char *key)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)h;
}

/* Rebuilds the bucket array with n_buckets buckets and relinks every entry. */
static void admin_map_rehash(struct admin_counter_map *m, size_t n_buckets)
{
    free(m->buckets);
    m->n_buckets = n_buckets;
    m->buckets = mock_xcalloc(n_buckets, sizeof(*m->buckets));
    for (size_t i = 0; i < m->n; i++) {
        size_t b = admin_hash(m->items[i].key) % n_buckets;

        m->items[i].next = m->buckets[b];
        m->buckets[b] = i + 1;
    }
}

/* Adds one to key's counter, creating it at 1. By-path keys include device ids, so a benchmark
 * with thousands of devices makes thousands of keys: hashed, not a list. */
static void admin_map_bump(struct admin_counter_map *m, const char *key)
{
    size_t b;

    if (m->n_buckets == 0)
        admin_map_rehash(m, 64);
    b = admin_hash(key) % m->n_buckets;
    for (size_t i = m->buckets[b]; i != 0; i = m->items[i - 1].next) {
        if (strcmp(m->items[i - 1].key, key) == 0) {
            m->items[i - 1].value++;
            return;
        }
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->items = mock_xrealloc(m->items, m->cap * sizeof(*m->items));
    }
    m->items[m->n] = (struct admin_counter){mock_xstrdup(key), 1, m->buckets[b]};
    m->buckets[b] = ++m->n;
    /* Keep chains short: one entry per bucket on average. */
    if (m->n > m->n_buckets)
        admin_map_rehash(m, 2 * m->n_buckets);
}

static void admin_map_clear(struct admin_counter_map *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->items[i].key);
    free(m->items);
    free(m->buckets);
    memset(m, 0, sizeof(*m));
}

static void admin_map_json(struct evbuffer *out, const struct admin_counter_map *m)
{
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < m->n; i++) {
        if (i > 0)
            evbuffer_add(out, ",", 1);
        mock_json_cstr(out, m->items[i].key);
        evbuffer_add_printf(out, ":%llu", m->items[i].value);
    }
    evbuffer_add(out, "}", 1);
}

/* ---- what the API side reports ------------------------------------------------------------ */

static const char *admin_method_name(enum evhttp_cmd_type method)
{
    switch (method) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

/* Renders req as the JSON /last-request answers with, replacing the previous one. */
static void admin_keep_request(struct evhttp_request *req)
{
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t body_len = evbuffer_get_length(body);
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *out;
    const char *sep = "";

    if (admin_last_request == NULL)
        admin_last_request = mock_xevbuffer();
    out = admin_last_request;
    evbuffer_drain(out, evbuffer_get_length(out));
    evbuffer_add_printf(
        out, "{\"method\":\"%s\",\"uri\":", admin_method_name(evhttp_request_get_command(req)));
    mock_json_cstr(out, uri ? uri : "");
    evbuffer_add_printf(out, ",\"headers\":[");
    /* libevent keeps headers in arrival order, duplicates included. */
    for (struct evkeyval *h = headers->tqh_first; h != NULL; h = h->next.tqe_next) {
        evbuffer_add_printf(out, "%s[", sep);
        mock_json_cstr(out, h->key);
        evbuffer_add(out, ",", 1);
        mock_json_cstr(out, h->value);
        evbuffer_add(out, "]", 1);
        sep = ",";
    }
    evbuffer_add_printf(out, "],\"sni\":");
    /* The server name the client asked for in its TLS hello (null if none):
     * lets tests check that the proxy sends SNI. */
    {
        struct evhttp_connection *evcon = evhttp_request_get_connection(req);
        struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
        SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
        const char *sni = ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
        if (sni != NULL)
            mock_json_cstr(out, sni);
        else
            evbuffer_add(out, "null", 4);
    }
    evbuffer_add_printf(out, ",\"body\":");
    /* pullup linearizes the input buffer in place; the API handler reads it the same way. */
    mock_json_string(out, body_len ? (const char *)evbuffer_pullup(body, -1) : "", body_len);
    evbuffer_add(out, "}", 1);
}

void mock_admin_note_request(struct evhttp_request *req, const char *token)
{
    const char *method = admin_method_name(evhttp_request_get_command(req));
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    size_t key_len;
    char *key;

    if (path == NULL)
        path = "";
    key_len = strlen(method) + 1 + strlen(path);
    key = mock_xmalloc(key_len + 1);
    snprintf(key, key_len + 1, "%s %s", method, path);

    admin_counters.total++;
    admin_map_bump(&admin_counters.by_path, key);
    if (token != NULL)
        admin_map_bump(&admin_counters.by_token, token);
    admin_keep_request(req);
    free(key);
}

void mock_admin_note_status(int status)
{
    char key[16];

    snprintf(key, sizeof(key), "%d", status);
    admin_map_bump(&admin_counters.by_status, key);
}

void mock_admin_note_outcome(const char *outcome)
{
    admin_map_bump(&admin_counters.by_status, outcome);
}

/* ---- run-time config ---------------------------------------------------------------------- */

/* The current config as one JSON object, one member per row of admin_config_keys. */
static void admin_config_json(struct evbuffer *out)
{
    evbuffer_add(out, "{", 1);
    for (size_t k = 0; k < ADMIN_N_CONFIG_KEYS; k++) {
        const struct admin_config_key *key = &admin_config_keys[k];
        const char *field = (const char *)&mock_config + key->offset;

        evbuffer_add_printf(out, "%s\"%s\":", k ? "," : "", key->name);
        switch (key->type) {
        case CONFIG_LONG:
            evbuffer_add_printf(out, "%ld", *(const long *)field);
            break;
        case CONFIG_ENUM:
            mock_json_cstr(out, key->names[*(const long *)field]);
            break;
        case CONFIG_TEXT:
            mock_json_cstr(out, field);
            break;
        }
    }
    evbuffer_add(out, "}", 1);
}

/* Parses value for key into the config copy cfg. */
static MOCK_MUSTCHECK bool admin_config_parse(const struct admin_config_key *key, const char *value,
                                              struct mock_config *cfg)
{
    char *field = (char *)cfg + key->offset;
    size_t len;

    switch (key->type) {
    case CONFIG_LONG:
        return mock_query_long(value, key->min, key->max, (long *)field);
    case CONFIG_ENUM:
        for (long i = 0; key->names[i] != NULL; i++) {
            if (strcmp(key->names[i], value) == 0) {
                *(long *)field = i;
                return true;
            }
        }
        return false;
    case CONFIG_TEXT:
        len = strlen(value);
        if (len >= (size_t)key->max)
            return false;
        for (size_t i = 0; i < len; i++) {
            if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
                return false;
        }
        memcpy(field, value, len + 1);
        return true;
    }
    return false;
}

/* Applies every key of the query string, or none if any key or value is bad: a test that
 * mistypes one key must not run with half its faults. */
static int admin_config_apply(const char *query, struct evbuffer *out)
{
    struct mock_query params;
    struct mock_config staged = mock_config;
    const char *fail_mode;
    bool sets_fail_mode, sets_token_limit, sets_device_limit;
    int status = 200;

    mock_query_parse(&params, query);
    /* fail_mode=none clears the whole fault first, so a later fault starts from the defaults
     * rather than from whatever path or count an earlier test left; keys given along with it
     * still apply. */
    fail_mode = mock_query_get(&params, "fail_mode");
    sets_fail_mode = fail_mode != NULL;
    sets_token_limit = mock_query_get(&params, "rate_limit") != NULL ||
                       mock_query_get(&params, "rate_window_ms") != NULL;
    sets_device_limit = mock_query_get(&params, "device_limit") != NULL ||
                        mock_query_get(&params, "device_window_ms") != NULL;
    if (fail_mode != NULL && strcmp(fail_mode, mock_fail_mode_names[MOCK_FAIL_NONE]) == 0)
        mock_fault_clear(&staged);
    for (size_t i = 0; i < params.n && status == 200; i++) {
        const struct mock_param *p = &params.params[i];
        const struct admin_config_key *key = NULL;

        for (size_t k = 0; k < ADMIN_N_CONFIG_KEYS; k++) {
            if (strcmp(admin_config_keys[k].name, p->key) == 0)
                key = &admin_config_keys[k];
        }
        if (key == NULL || !admin_config_parse(key, p->value, &staged)) {
            /* Name the bad key and list the good ones, so the test's failure says it all. */
            evbuffer_add_printf(out, "{\"error\":");
            mock_json_cstr(out, key ? "bad value for config key" : "unknown config key");
            evbuffer_add_printf(out, ",\"key\":");
            mock_json_cstr(out, p->key);
            evbuffer_add_printf(out, ",\"value\":");
            mock_json_cstr(out, p->value);
            evbuffer_add_printf(out, ",\"keys\":{");
            for (size_t k = 0; k < ADMIN_N_CONFIG_KEYS; k++) {
                evbuffer_add_printf(out, "%s\"%s\":", k ? "," : "", admin_config_keys[k].name);
                mock_json_cstr(out, admin_config_keys[k].doc);
            }
            evbuffer_add(out, "}}", 2);
            status = 400;
        }
    }
    mock_query_free(&params);
    if (status != 200)
        return status;
    mock_config = staged;
    mock_log("config changed: %s", query ? query : "(nothing)");
    mock_limit_config_changed(sets_token_limit, sets_device_limit);
    /* Whatever fail_mode becomes, requests held by a hang end now, so none outlives the test
     * that made it, and a test can end a hang on purpose. */
    if (sets_fail_mode)
        mock_fault_release_held();
    admin_config_json(out);
    return 200;
}

/* ---- the admin port ----------------------------------------------------------------------- */

/* One admin endpoint: fills out and returns the status code. */
typedef int (*admin_handler)(struct evhttp_request *req, struct evbuffer *out);

static int admin_get_counters(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    evbuffer_add_printf(out, "{\"total\":%llu,\"by_path\":", admin_counters.total);
    admin_map_json(out, &admin_counters.by_path);
    evbuffer_add_printf(out, ",\"by_token\":");
    admin_map_json(out, &admin_counters.by_token);
    evbuffer_add_printf(out, ",\"by_status\":");
    admin_map_json(out, &admin_counters.by_status);
    evbuffer_add_printf(out, ",\"held\":%zu,", mock_fault_n_held());
    mock_limit_counters_json(out);
    evbuffer_add(out, ",", 1);
    mock_oauth_counters_json(out);
    evbuffer_add(out, "}", 1);
    return 200;
}

/* Forgets the counters and the last request. The last request goes too, so that after a reset
 * a 404 from /last-request proves nothing reached the upstream since. */
static void admin_forget(void)
{
    admin_counters.total = 0;
    admin_map_clear(&admin_counters.by_path);
    admin_map_clear(&admin_counters.by_token);
    admin_map_clear(&admin_counters.by_status);
    if (admin_last_request != NULL)
        evbuffer_free(admin_last_request);
    admin_last_request = NULL;
    mock_limit_reset();
    mock_oauth_reset_counters();
}

static int admin_post_reset(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    admin_forget();
    evbuffer_add(out, "{}", 2);
    return 200;
}

static int admin_get_last_request(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    if (admin_last_request == NULL) {
        evbuffer_add_printf(out, "{\"error\":\"no API request since start or reset\"}");
        return 404;
    }
    /* Copy, not move: the same request may be asked for again. */
    evbuffer_add(out, evbuffer_pullup(admin_last_request, -1),
                 evbuffer_get_length(admin_last_request));
    return 200;
}

static int admin_get_arrivals(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    mock_limit_arrivals_json(out);
    return 200;
}

static int admin_get_config(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    admin_config_json(out);
    return 200;
}

static int admin_post_config(struct evhttp_request *req, struct evbuffer *out)
{
    return admin_config_apply(evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req)), out);
}

static int admin_get_healthz(struct evhttp_request *req, struct evbuffer *out)
{
    (void)req;
    evbuffer_add(out, "ok\n", 3);
    return 200;
}

/* One row per admin endpoint. */
struct admin_route {
    const char *path;
    enum evhttp_cmd_type method;
    admin_handler handler;
    const char *content_type;
};

static const struct admin_route admin_routes[] = {
    {"/counters", EVHTTP_REQ_GET, admin_get_counters, "application/json"},
    {"/reset", EVHTTP_REQ_POST, admin_post_reset, "application/json"},
    {"/last-request", EVHTTP_REQ_GET, admin_get_last_request, "application/json"},
    {"/arrivals", EVHTTP_REQ_GET, admin_get_arrivals, "application/json"},
    {"/config", EVHTTP_REQ_GET, admin_get_config, "application/json"},
    {"/config", EVHTTP_REQ_POST, admin_post_config, "application/json"},
    {"/healthz", EVHTTP_REQ_GET, admin_get_healthz, "text/plain"},
    {"/oauth/issue", EVHTTP_REQ_POST, mock_oauth_admin_issue, "application/json"},
    {"/oauth/revoke", EVHTTP_REQ_POST, mock_oauth_admin_revoke, "application/json"},
    {"/oauth/expire", EVHTTP_REQ_POST, mock_oauth_admin_expire, "application/json"},
    {"/oauth/tokens", EVHTTP_REQ_GET, mock_oauth_admin_tokens, "application/json"},
};

void mock_admin_handle(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    struct evbuffer *out = mock_xevbuffer();
    const char *content_type = "application/json";
    bool path_known = false;
    int status = 0;

    (void)arg;
    for (size_t r = 0; r < sizeof(admin_routes) / sizeof(admin_routes[0]); r++) {
        const struct admin_route *route = &admin_routes[r];

        if (path == NULL || strcmp(route->path, path) != 0)
            continue;
        path_known = true;
        if (route->method != method)
            continue;
        status = route->handler(req, out);
        content_type = route->content_type;
        break;
    }
    if (status == 0) {
        status = path_known ? 405 : 404;
        evbuffer_add_printf(out, "{\"error\":\"%s\"}",
                            path_known ? "method not allowed" : "not found");
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
    evhttp_send_reply(req, status, NULL, out);
    evbuffer_free(out);
}

void mock_admin_shutdown(void)
{
    admin_forget();
}
