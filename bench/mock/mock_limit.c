/*
 * mock_limit.c: the rate limits of the mock API, so that tests and benchmarks can see whether
 * the proxy keeps a credential inside the upstream's limits.
 *
 * Owns, per bearer token, the fixed window the per-token limit counts in (rate_limit per
 * rate_window_ms) and a bounded ring of recent arrival times from which the largest count in any
 * sliding interval of rate_window_ms is kept; per (token, device, kind) the fixed window of the
 * per-device limit (device_limit per device_window_ms), kind being "status" (GET or HEAD of
 * /devices/{id}/status, .../components/{c}/status, .../capabilities/{cap}/status, with or
 * without /v1) or "command" (POST /devices/{id}/commands); the injected 429s (inject_429); the
 * X-RateLimit-* headers and the 429 body, which is the real API's.
 *
 * Every API request with an accepted token counts on arrival, whatever its answer (a 429
 * included), since an arrival is what a limit counts and what the proxy spent. A token's first
 * window starts at its first request after start, /reset or a change of rate_limit or
 * rate_window_ms, and later windows follow back to back; the same goes for the device windows
 * with device_limit and device_window_ms. Request N+1 in a window (and every later one) gets a
 * 429 whose message reads "attempt K limit N - retry in M millis": K counts the 429s of that
 * window (1 for the first, as in the real API's "attempt 1 limit 1"), M is what is left of the
 * window. The order of decisions: an injected 429, then the per-token limit, then the device
 * limit; a request that gets a 429 uses up no fault (fail_count).
 */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Arrival times kept per token: 4096 * 16 bytes at most. A sliding count that finds the whole
 * ring inside one interval reports the ring's size, a lower bound. */
#define LIMIT_RING_MIN 64
#define LIMIT_RING_MAX 4096

const char *const mock_reset_unit_names[] = {"ms", "s", NULL};

/* One arrival, for the sliding counts and GET /arrivals. */
struct limit_arrival {
    int64_t at;   /* monotonic microseconds */
    bool limited; /* answered 429 by a limit or an injection */
};

/* One fixed window and its record: a token's (key: the token) or a device's (key:
 * "token device kind"). The ring is for tokens only. Entries live by value in their map's array
 * and chain through indices, which survive realloc. */
struct limit_entry {
    char *key;
    size_t next;               /* index + 1 of the next entry in the bucket; 0 ends the chain */
    unsigned long long epoch;  /* the limit_*_epoch the window belongs to; 0: none yet */
    int64_t window_start;      /* monotonic microseconds */
    unsigned long long count;  /* arrivals in the current window */
    unsigned long long denied; /* 429s in the current window */
    unsigned long long max_in_window;
    unsigned long long max_sliding;
    unsigned long long limited; /* tokens: 429s since start or reset, limits and injections */
    struct limit_arrival *ring; /* ring_cap slots, the oldest at ring_first */
    size_t ring_cap, ring_first, ring_n;
};

/* A string-keyed table of entries that keeps first-seen order. */
struct limit_map {
    struct limit_entry *items;
    size_t n, cap;
    size_t *buckets; /* index + 1 of each bucket's first entry; 0 = empty */
    size_t n_buckets;
};

static struct limit_map limit_tokens;
static struct limit_map limit_devices;
/* Bumped when the limits are configured, so every window starts again at its next request. */
static unsigned long long limit_token_epoch = 1;
static unsigned long long limit_device_epoch = 1;
static unsigned long long limit_n_limited; /* 429s sent by a limit or an injection */
static int64_t limit_t0;                   /* start or last reset: time zero of GET /arrivals */

int64_t mock_limit_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the tables ---------------------------------------------------------------------------- */

static size_t limit_hash(const char *key)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)h;
}

static void limit_map_rehash(struct limit_map *m, size_t n_buckets)
{
    free(m->buckets);
    m->n_buckets = n_buckets;
    m->buckets = mock_xcalloc(n_buckets, sizeof(*m->buckets));
    for (size_t i = 0; i < m->n; i++) {
        size_t b = limit_hash(m->items[i].key) % n_buckets;

        m->items[i].next = m->buckets[b];
        m->buckets[b] = i + 1;
    }
}

/* The entry for key, created empty (no window yet) on first use. The pointer is good until the
 * next call. */
static struct limit_entry *limit_map_get(struct limit_map *m, const char *key)
{
    size_t b;

    if (m->n_buckets == 0)
        limit_map_rehash(m, 64);
    b = limit_hash(key) % m->n_buckets;
    for (size_t i = m->buckets[b]; i != 0; i = m->items[i - 1].next) {
        if (strcmp(m->items[i - 1].key, key) == 0)
            return &m->items[i - 1];
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->items = mock_xrealloc(m->items, m->cap * sizeof(*m->items));
    }
    memset(&m->items[m->n], 0, sizeof(m->items[m->n]));
    m->items[m->n].key = mock_xstrdup(key);
    m->items[m->n].next = m->buckets[b];
    m->buckets[b] = ++m->n;
    if (m->n > m->n_buckets) {
        limit_map_rehash(m, 2 * m->n_buckets);
        return limit_map_get(m, key);
    }
    return &m->items[m->n - 1];
}

static void limit_map_clear(struct limit_map *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->items[i].key);
        free(m->items[i].ring);
    }
    free(m->items);
    free(m->buckets);
    memset(m, 0, sizeof(*m));
}

/* {"key":max,...} with the chosen field of every entry. */
static void limit_map_json(struct evbuffer *out, const struct limit_map *m, bool sliding)
{
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < m->n; i++) {
        if (i > 0)
            evbuffer_add(out, ",", 1);
        mock_json_cstr(out, m->items[i].key);
        evbuffer_add_printf(out, ":%llu",
                            sliding ? m->items[i].max_sliding : m->items[i].max_in_window);
    }
    evbuffer_add(out, "}", 1);
}

/* ---- windows and the ring ----------------------------------------------------------------- */

/* Counts one arrival at now in e's fixed window of window_ms, starting a window first if e has
 * none in this epoch or the current one is over. */
static void limit_window_count(struct limit_entry *e, unsigned long long epoch, int64_t now,
                               long window_ms)
{
    int64_t window = (int64_t)window_ms * 1000;

    if (e->epoch != epoch) {
        e->epoch = epoch;
        e->window_start = now;
        e->count = e->denied = 0;
    } else if (now - e->window_start >= window) {
        e->window_start += (now - e->window_start) / window * window;
        e->count = e->denied = 0;
    }
    e->count++;
    if (e->count > e->max_in_window)
        e->max_in_window = e->count;
}

static int64_t limit_window_end(const struct limit_entry *e, long window_ms)
{
    return e->window_start + (int64_t)window_ms * 1000;
}

/* Adds an arrival to the token's ring and updates its largest sliding count: the arrivals in
 * (now - window, now], this one included. */
static void limit_ring_add(struct limit_entry *e, int64_t now, long window_ms)
{
    int64_t since = now - (int64_t)window_ms * 1000;
    unsigned long long n = 0;

    if (e->ring_n == e->ring_cap && e->ring_cap < LIMIT_RING_MAX) {
        size_t cap = e->ring_cap ? 2 * e->ring_cap : LIMIT_RING_MIN;
        struct limit_arrival *ring = mock_xcalloc(cap, sizeof(*ring));

        for (size_t i = 0; i < e->ring_n; i++)
            ring[i] = e->ring[(e->ring_first + i) % e->ring_cap];
        free(e->ring);
        e->ring = ring;
        e->ring_cap = cap;
        e->ring_first = 0;
    }
    if (e->ring_n == e->ring_cap) {
        e->ring[e->ring_first] = (struct limit_arrival){now, false};
        e->ring_first = (e->ring_first + 1) % e->ring_cap;
    } else {
        e->ring[(e->ring_first + e->ring_n) % e->ring_cap] = (struct limit_arrival){now, false};
        e->ring_n++;
    }
    /* Newest first; arrivals are in time order (one thread, a monotonic clock). */
    for (size_t i = e->ring_n; i > 0; i--) {
        if (e->ring[(e->ring_first + i - 1) % e->ring_cap].at <= since)
            break;
        n++;
    }
    if (n > e->max_sliding)
        e->max_sliding = n;
}

static void limit_ring_mark_newest_limited(struct limit_entry *e)
{
    if (e->ring_n > 0)
        e->ring[(e->ring_first + e->ring_n - 1) % e->ring_cap].limited = true;
}

/* Returns the kind ("status" or "command") of a request a device limit counts, with the device
 * id copied into id; NULL for every other request. */
static const char *limit_device_kind(enum evhttp_cmd_type method, const char *path, char *id,
                                     size_t id_size)
{
    const char *seg[8];
    size_t len[8];
    size_t n = 0, first = 0;
    const char *p = path;

    while (*p != '\0') {
        size_t l;

        p += strspn(p, "/");
        l = strcspn(p, "/");
        if (l == 0)
            break;
        if (n == 8)
            return NULL;
        seg[n] = p;
        len[n++] = l;
        p += l;
    }
#define LIMIT_SEG_IS(i, s) (len[i] == strlen(s) && memcmp(seg[i], s, len[i]) == 0)
    if (n > 0 && LIMIT_SEG_IS(0, "v1"))
        first = 1;
    n -= first;
    if (n < 3 || !LIMIT_SEG_IS(first, "devices") || len[first + 1] >= id_size)
        return NULL;
    memcpy(id, seg[first + 1], len[first + 1]);
    id[len[first + 1]] = '\0';
    if (method == EVHTTP_REQ_POST)
        return n == 3 && LIMIT_SEG_IS(first + 2, "commands") ? "command" : NULL;
    if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD)
        return NULL;
    if (n == 3 && LIMIT_SEG_IS(first + 2, "status"))
        return "status";
    if (n == 5 && LIMIT_SEG_IS(first + 2, "components") && LIMIT_SEG_IS(first + 4, "status"))
        return "status";
    if (n == 7 && LIMIT_SEG_IS(first + 2, "components") &&
        LIMIT_SEG_IS(first + 4, "capabilities") && LIMIT_SEG_IS(first + 6, "status"))
        return "status";
#undef LIMIT_SEG_IS
    return NULL;
}

/* ---- deciding ------------------------------------------------------------------------------ */

struct mock_limit_verdict mock_limit_take(const char *token, enum evhttp_cmd_type method,
                                          const char *path)
{
    struct mock_limit_verdict v = {.reason = MOCK_LIMIT_NONE, .limit = -1};
    int64_t now = mock_limit_now();
    struct limit_entry *tok = limit_map_get(&limit_tokens, token);
    struct limit_entry *dev = NULL;
    char id[128];
    const char *kind = limit_device_kind(method, path, id, sizeof(id));

    limit_window_count(tok, limit_token_epoch, now, mock_config.rate_window_ms);
    limit_ring_add(tok, now, mock_config.rate_window_ms);
    if (mock_config.rate_limit > 0) {
        v.headers = true;
        v.limit = mock_config.rate_limit;
        v.remaining = tok->count >= (unsigned long long)mock_config.rate_limit
                          ? 0
                          : mock_config.rate_limit - (long)tok->count;
        v.reset_at = limit_window_end(tok, mock_config.rate_window_ms);
    }

    if (mock_config.inject_429 > 0) {
        if (--mock_config.inject_429 == 0)
            mock_log("inject_429 used up: answers are normal again");
        v.reason = MOCK_LIMIT_INJECTED;
        v.headers = true;
        v.remaining = 0;
        v.reset_at = now + (int64_t)mock_config.inject_retry_ms * 1000;
        v.message_limit = mock_config.rate_limit > 0 ? mock_config.rate_limit : 1;
    } else if (mock_config.rate_limit > 0 &&
               tok->count > (unsigned long long)mock_config.rate_limit) {
        v.reason = MOCK_LIMIT_TOKEN;
        v.message_limit = mock_config.rate_limit;
    }

    if (kind != NULL) {
        size_t key_len = strlen(token) + strlen(id) + strlen(kind) + 3;
        char *key = mock_xmalloc(key_len);

        snprintf(key, key_len, "%s %s %s", token, id, kind);
        /* tok stays valid: it lives in the other table. */
        dev = limit_map_get(&limit_devices, key);
        free(key);
        limit_window_count(dev, limit_device_epoch, now, mock_config.device_window_ms);
        if (v.reason == MOCK_LIMIT_NONE && mock_config.device_limit > 0 &&
            dev->count > (unsigned long long)mock_config.device_limit) {
            /* The headers of a device 429 are the device limit's, so that Reset agrees with
             * the body's "retry in". */
            v.reason = MOCK_LIMIT_DEVICE;
            v.headers = true;
            v.limit = mock_config.device_limit;
            v.reset_at = limit_window_end(dev, mock_config.device_window_ms);
            v.message_limit = mock_config.device_limit;
        }
    }

    if (v.reason != MOCK_LIMIT_NONE) {
        struct limit_entry *counted = v.reason == MOCK_LIMIT_DEVICE ? dev : tok;

        v.remaining = 0;
        counted->denied++;
        v.attempt = counted->denied;
        tok->limited++;
        limit_ring_mark_newest_limited(tok);
    }
    return v;
}

/* ---- answering ----------------------------------------------------------------------------- */

/* Milliseconds from now to at, rounded up, never negative. */
static long long limit_ms_until(int64_t at)
{
    int64_t left = at - mock_limit_now();

    return left <= 0 ? 0 : (long long)((left + 999) / 1000);
}

void mock_limit_add_headers(struct evhttp_request *req, const struct mock_limit_verdict *v)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    long long reset = limit_ms_until(v->reset_at);
    char text[32];

    if (!v->headers)
        return;
    if (mock_config.reset_unit == MOCK_RESET_SECONDS)
        reset = (reset + 999) / 1000;
    if (v->limit >= 0) {
        snprintf(text, sizeof(text), "%ld", v->limit);
        evhttp_add_header(headers, "X-RateLimit-Limit", text);
    }
    snprintf(text, sizeof(text), "%ld", v->remaining);
    evhttp_add_header(headers, "X-RateLimit-Remaining", text);
    snprintf(text, sizeof(text), "%lld", reset);
    evhttp_add_header(headers, "X-RateLimit-Reset", text);
}

void mock_limit_error_body(struct evbuffer *out, unsigned long long id,
                           const struct mock_limit_verdict *v)
{
    limit_n_limited++;
    evbuffer_add_printf(out,
                        "{\"requestId\":\"%llu\",\"error\":{\"code\":\"TooManyRequestError\","
                        "\"message\":\"Too Many Requests\",\"details\":[{\"code\":"
                        "\"TooManyRequestError\",\"message\":\"attempt %llu limit %ld - retry in "
                        "%lld millis\",\"details\":[]}]}}",
                        id, v->attempt, v->message_limit, limit_ms_until(v->reset_at));
}

/* ---- the admin side ------------------------------------------------------------------------ */

void mock_limit_counters_json(struct evbuffer *out)
{
    evbuffer_add_printf(out, "\"rate_limited\":%llu,\"max_in_window\":", limit_n_limited);
    limit_map_json(out, &limit_tokens, false);
    evbuffer_add_printf(out, ",\"max_in_sliding_window\":");
    limit_map_json(out, &limit_tokens, true);
    evbuffer_add_printf(out, ",\"device_max_in_window\":");
    limit_map_json(out, &limit_devices, false);
    evbuffer_add_printf(out, ",\"rate_limited_by_token\":{");
    for (size_t i = 0; i < limit_tokens.n; i++) {
        if (i > 0)
            evbuffer_add(out, ",", 1);
        mock_json_cstr(out, limit_tokens.items[i].key);
        evbuffer_add_printf(out, ":%llu", limit_tokens.items[i].limited);
    }
    evbuffer_add(out, "}", 1);
}

void mock_limit_arrivals_json(struct evbuffer *out)
{
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < limit_tokens.n; i++) {
        const struct limit_entry *e = &limit_tokens.items[i];

        if (i > 0)
            evbuffer_add(out, ",", 1);
        mock_json_cstr(out, e->key);
        evbuffer_add(out, ":[", 2);
        for (size_t k = 0; k < e->ring_n; k++) {
            const struct limit_arrival *a = &e->ring[(e->ring_first + k) % e->ring_cap];
            int64_t us = a->at - limit_t0;

            evbuffer_add_printf(out, "%s[%lld.%03lld,%d]", k ? "," : "", (long long)(us / 1000),
                                (long long)(us % 1000), a->limited ? 1 : 0);
        }
        evbuffer_add(out, "]", 1);
    }
    evbuffer_add(out, "}", 1);
}

void mock_limit_config_changed(bool token_limit, bool device_limit)
{
    if (token_limit)
        limit_token_epoch++;
    if (device_limit)
        limit_device_epoch++;
}

void mock_limit_reset(void)
{
    limit_map_clear(&limit_tokens);
    limit_map_clear(&limit_devices);
    limit_n_limited = 0;
    limit_t0 = mock_limit_now();
}

void mock_limit_init(void)
{
    limit_t0 = mock_limit_now();
}

void mock_limit_shutdown(void)
{
    limit_map_clear(&limit_tokens);
    limit_map_clear(&limit_devices);
}
