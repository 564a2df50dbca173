/*
 * flight.c: owns flights and their waiters.
 *
 * A flight lives in the table from its first waiter until it completes;
 * it is taken out of the table before its waiters are answered, so a waiter
 * that starts a new identical read starts a new flight instead of joining
 * one that is finishing. The flight owns copies of everything it sends
 * upstream, because the request that started it may have been answered
 * already (a background refresh).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/rand.h>

#include "cache_redis.h"
#include "credential.h"
#include "flight.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "rewrite.h"

#define TABLE_SIZE 1024 /* buckets; flights are few and short-lived */

/* Extends a lock only if this process still holds it. */
static const char renew_script[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then return "
                                   "redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
                                   "return 0\n";

/* Releases a lock only if this process still holds it. */
/* Takes the lock if it is free, or if it already holds this process's token: one process has
 * one flight per key, so such a lock was taken by an attempt whose answer was lost (its SET
 * missed its deadline and landed later). */
static const char lock_script[] = "local v = redis.call('GET', KEYS[1])\n"
                                  "if v == false or v == ARGV[1] then\n"
                                  "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                  "  return redis.status_reply('OK')\n"
                                  "end\n"
                                  "return false\n";

static const char release_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* Where a flight is. */
enum flight_state {
    FLIGHT_STARTING, /* created; starts on the next loop turn */
    FLIGHT_LOCKING,  /* asking Redis which process fetches */
    FLIGHT_QUEUED,   /* this process will fetch, once the budget allows */
    FLIGHT_FETCHING, /* this process is fetching from the upstream */
    FLIGHT_REMOTE,   /* another process fetches; waiting for its fill message */
    FLIGHT_READING,  /* reading the entry another process stored */
};

/* One request waiting on a flight. */
struct waiter {
    TAILQ_ENTRY(waiter) link;
    flight_done_fn fn;
    void *arg;
};
TAILQ_HEAD(waiter_list, waiter);

struct flight {
    struct flight *next_in_bucket;
    struct flights *fl;
    enum flight_state state;
    char *key;
    char *lock_key;
    char *target;
    struct evkeyvalq headers;
    struct cache_policy policy;
    long not_found_ms;
    char cred[80];
    char device[160];
    bool has_device;
    bool is_status;
    bool holds_lock;             /* this process won the Redis lock */
    bool background;             /* a refresh: started with no waiter */
    struct admit_ticket *ticket; /* while queued for budget */
    bool retried;                /* sent again after an OAuth2 refresh */
    char *token;                 /* pass-through token (owned, wiped), or NULL */
    size_t token_len;
    char *token_used; /* what the last send carried (owned, wiped) */
    char client[80];  /* fairness key */
    enum limiter_kind kind;
    int lock_rounds;     /* times the lock was found held by another */
    uint64_t epoch;      /* cache epoch when the fetch began */
    struct event *timer; /* start, or the remote holder's deadline */
    struct waiter_list waiters;
};

struct flights {
    struct event_base *base;
    struct upstream_pool *pool;
    struct cache *cache;
    struct cache_redis *redis;
    struct admission *admission; /* NULL: no budgets */
    struct limiter *limiter;
    struct credential_store *credentials;
    char *upstream_origin; /* for cache_entry.links; NULL: every entry may have links */
    long lock_ttl_ms;      /* a lock not renewed for this long is free */
    int max_lock_rounds;   /* waits on another process before fetching anyway */
    char lock_token[40];   /* identifies this process's locks */
    struct flight *table[TABLE_SIZE];
};

static void flight_start_cb(evutil_socket_t fd, short what, void *arg);

static size_t bucket_of(const char *key)
{
    size_t h = 5381;
    for (; *key; key++)
        h = h * 33 + (unsigned char)*key;
    return h % TABLE_SIZE;
}

static struct flight *flight_find(struct flights *fl, const char *key)
{
    struct flight *f = fl->table[bucket_of(key)];
    for (; f != NULL; f = f->next_in_bucket)
        if (strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

static void flight_unlink(struct flight *f)
{
    struct flight **link = &f->fl->table[bucket_of(f->key)];
    while (*link != NULL && *link != f)
        link = &(*link)->next_in_bucket;
    if (*link == f)
        *link = f->next_in_bucket;
}

static struct flight *flight_new(struct flights *fl, const char *key,
                                 const struct flight_spec *spec)
{
    struct flight *f = xcalloc(1, sizeof(*f));
    const struct evkeyval *h;
    size_t klen = strlen(key) + 8;

    f->fl = fl;
    f->state = FLIGHT_STARTING;
    f->key = xstrdup(key);
    f->lock_key = xmalloc(klen);
    snprintf(f->lock_key, klen, "stp1:l:%s", key + (strncmp(key, "stp1:e:", 7) ? 0 : 7));
    f->target = xstrdup(spec->target);
    TAILQ_INIT(&f->headers);
    TAILQ_FOREACH(h, spec->headers, next)
    evhttp_add_header(&f->headers, h->key, h->value);
    f->policy = spec->policy;
    f->not_found_ms = spec->not_found_ms;
    snprintf(f->cred, sizeof(f->cred), "%s", spec->tags.cred);
    f->has_device = spec->tags.device != NULL;
    snprintf(f->device, sizeof(f->device), "%s", spec->tags.device ? spec->tags.device : "");
    f->is_status = spec->tags.is_status;
    snprintf(f->client, sizeof(f->client), "%s", spec->client ? spec->client : "-");
    f->kind = spec->kind;
    if (spec->token != NULL) {
        f->token = xstrndup(spec->token, spec->token_len);
        f->token_len = spec->token_len;
    }
    TAILQ_INIT(&f->waiters);
    f->timer = evtimer_new(fl->base, flight_start_cb, f);
    f->next_in_bucket = fl->table[bucket_of(key)];
    fl->table[bucket_of(key)] = f;
    return f;
}

static void flight_free(struct flight *f)
{
    event_free(f->timer);
    /* Headers hold the upstream token: wipe before freeing. */
    {
        struct evkeyval *h;
        TAILQ_FOREACH(h, &f->headers, next)
        memset(h->value, 0, strlen(h->value));
    }
    evhttp_clear_headers(&f->headers);
    if (f->token != NULL) {
        memset(f->token, 0, f->token_len);
        free(f->token);
    }
    if (f->token_used != NULL) {
        memset(f->token_used, 0, strlen(f->token_used));
        free(f->token_used);
    }
    free(f->key);
    free(f->lock_key);
    free(f->target);
    free(f);
}

/* Answers every waiter and frees the flight (already out of the table). */
static void flight_deliver(struct flight *f, const struct flight_answer *answer)
{
    struct waiter *w;

    event_del(f->timer);
    while ((w = TAILQ_FIRST(&f->waiters)) != NULL) {
        TAILQ_REMOVE(&f->waiters, w, link);
        w->fn(answer, w->arg);
        free(w);
    }
    flight_free(f);
}

/* Answers every waiter with an answer that has no headers and no body (a
 * failure, a refusal), takes the flight out of the table and frees it. */
static void deliver_empty(struct flight *f, struct flight_answer *answer)
{
    struct evkeyvalq none;

    TAILQ_INIT(&none);
    answer->headers = &none;
    answer->body = evbuffer_new();
    flight_unlink(f);
    flight_deliver(f, answer);
    evbuffer_free(answer->body);
}

static void flight_fail(struct flight *f, enum upstream_result result, const char *detail)
{
    struct flight_answer answer = {.result = result, .detail = detail};
    deliver_empty(f, &answer);
}

/* Answers every waiter from a cache entry (another process fetched it). */
static void flight_answer_entry(struct flight *f, const struct cache_entry *e)
{
    struct flight_answer answer = {.result = UPSTREAM_OK, .status = e->status};
    struct evkeyvalq headers;

    TAILQ_INIT(&headers);
    if (e->content_type != NULL)
        evhttp_add_header(&headers, "Content-Type", e->content_type);
    answer.headers = &headers;
    answer.body = evbuffer_new();
    evbuffer_add(answer.body, e->body, e->body_len);
    flight_unlink(f);
    flight_deliver(f, &answer);
    evbuffer_free(answer.body);
    evhttp_clear_headers(&headers);
}

/* ---- Redis: lock, release, fill ----------------------------------------- */

static bool redis_usable(const struct flights *fl)
{
    return fl->redis != NULL && cache_redis_state(fl->redis) == REDIS_UP;
}

static void ignore_reply(bool ok, const redisReply *reply, void *arg)
{
    (void)ok;
    (void)reply;
    (void)arg;
}

/* How a fetch ended, for the fill message. */
enum fill_outcome {
    FILL_STORED,    /* "key": the entry is in Redis */
    FILL_FAILED,    /* "!key": the upstream failed, or the answer is not cacheable */
    FILL_THROTTLED, /* "?key": no budget in time */
};

/* Tells other processes how the fetch ended, then gives up the lock. Sent
 * after the store, on the same connection, so Redis has the entry before
 * anyone reads the message. */
static void release_and_announce(struct flight *f, enum fill_outcome outcome)
{
    struct flights *fl = f->fl;
    size_t len = strlen(f->key) + 2;
    char *payload = xmalloc(len);
    const char *pub[] = {"PUBLISH", FLIGHT_FILL_CHANNEL, payload};
    const char *rel[] = {"EVAL", release_script, "1", f->lock_key, fl->lock_token};

    snprintf(payload, len, "%s%s",
             outcome == FILL_STORED ? "" : (outcome == FILL_FAILED ? "!" : "?"), f->key);
    cache_redis_commandv(fl->redis, ignore_reply, NULL, 3, pub);
    cache_redis_commandv(fl->redis, ignore_reply, NULL, 5, rel);
    free(payload);
    f->holds_lock = false;
}

/* ---- fetching ----------------------------------------------------------- */

/* The fresh TTL this answer gets, or 0 when it must not be cached. */
static long answer_ttl(const struct flight *f, int status)
{
    if (status == 200)
        return f->policy.fresh_ms;
    if (status == 404)
        return f->not_found_ms;
    return 0; /* 401, 403, 429, 5xx and everything else: never */
}

static void flight_authorize(struct flight *f);

static void fetch_done(enum upstream_result result, struct upstream_response *resp,
                       const char *detail, void *arg)
{
    struct flight *f = arg;
    struct flights *fl = f->fl;
    struct flight_answer answer = {.result = result, .detail = detail};
    bool stored = false;

    if (result == UPSTREAM_OK && fl->credentials != NULL) {
        credential_upstream_status(fl->credentials, f->token_used, resp->status);
        if (resp->status == 401 && fl->credentials->oauth != NULL && !f->retried) {
            /* Refused access token: fetch again once the refresh is done. */
            f->retried = true;
            flight_authorize(f);
            return;
        }
    }
    if (result == UPSTREAM_OK && fl->limiter != NULL)
        limiter_learn(fl->limiter, f->cred, f->has_device ? f->device : NULL, f->kind, resp->status,
                      &resp->headers, (const char *)evbuffer_pullup(resp->body, -1),
                      evbuffer_get_length(resp->body));
    if (result == UPSTREAM_OK) {
        long fresh = answer_ttl(f, resp->status);
        answer.status = resp->status;
        answer.headers = &resp->headers;
        answer.body = resp->body;
        /* An invalidation while we fetched may mean this answer predates a
         * command: hand it to the waiters, but do not keep it. */
        if (fresh > 0 && cache_epoch(fl->cache) == f->epoch) {
            const char *ctype = evhttp_find_header(&resp->headers, "Content-Type");
            struct cache_entry e = {.status = resp->status};
            struct cache_tags tags = {.cred = f->cred,
                                      .device = f->has_device ? f->device : NULL,
                                      .is_status = f->is_status};
            long stale = resp->status == 200 ? f->policy.stale_ms : 0;
            e.content_type = (char *)ctype;
            e.stored_ms = cache_now_ms();
            e.fresh_until_ms = e.stored_ms + (uint64_t)fresh;
            e.stale_until_ms = e.fresh_until_ms + (uint64_t)stale;
            e.body = (char *)evbuffer_pullup(resp->body, -1);
            e.body_len = evbuffer_get_length(resp->body);
            e.links = fl->upstream_origin == NULL ||
                      rewrite_links_found(e.body, e.body_len, fl->upstream_origin);
            cache_store(fl->cache, f->key, &e, &tags);
            stored = true;
        }
    } else {
        struct evkeyvalq none;
        TAILQ_INIT(&none);
        answer.headers = &none;
        answer.body = resp->body;
    }
    if (f->holds_lock && redis_usable(fl))
        release_and_announce(f, stored ? FILL_STORED : FILL_FAILED);
    flight_unlink(f);
    flight_deliver(f, &answer);
}

/* While this process fetches under the lock, it renews the lock at a third
 * of its lifetime, so a waiter can tell a slow fetcher from a dead one. */
static void schedule_renewal(struct flight *f)
{
    long ms = f->fl->lock_ttl_ms / 3;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(f->timer, &tv);
}

static void renew_lock(struct flight *f)
{
    struct flights *fl = f->fl;
    char ttl[24];
    const char *argv[] = {"EVAL", renew_script, "1", f->lock_key, fl->lock_token, ttl};

    if (!redis_usable(fl))
        return;
    snprintf(ttl, sizeof(ttl), "%ld", fl->lock_ttl_ms);
    cache_redis_commandv(fl->redis, ignore_reply, NULL, 6, argv);
    schedule_renewal(f);
}

static void flight_throttled(struct flight *f, int64_t retry_after_ms)
{
    struct flight_answer answer = {.result = UPSTREAM_OK,
                                   .status = 429,
                                   .throttled = true,
                                   .retry_after_ms = retry_after_ms,
                                   .detail = "the credential's upstream budget is spent"};

    if (f->background)
        metrics_inc(METRIC_THROTTLE_STALE); /* the entry stays stale a while longer */
    if (f->holds_lock && redis_usable(f->fl))
        release_and_announce(f, FILL_THROTTLED);
    deliver_empty(f, &answer);
}

static void flight_send(const char *token, size_t len, const char *failure, void *arg)
{
    struct flight *f = arg;
    char *auth;

    if (token == NULL) {
        struct flight_answer answer = {
            .result = UPSTREAM_OK, .status = 503, .credential_failure = failure};
        if (f->holds_lock && redis_usable(f->fl))
            release_and_announce(f, FILL_FAILED);
        deliver_empty(f, &answer);
        return;
    }
    auth = xmalloc(len + 8);
    snprintf(auth, len + 8, "Bearer %.*s", (int)len, token);
    evhttp_remove_header(&f->headers, "Authorization");
    evhttp_add_header(&f->headers, "Authorization", auth);
    memset(auth, 0, len + 8);
    free(auth);
    if (f->token_used != NULL) {
        memset(f->token_used, 0, strlen(f->token_used));
        free(f->token_used);
    }
    f->token_used = xstrndup(token, len);
    f->state = FLIGHT_FETCHING;
    f->epoch = cache_epoch(f->fl->cache);
    upstream_send(f->fl->pool, "GET", f->target, &f->headers, NULL, fetch_done, f);
}

/* Sends the fetch with the credential's current token (which may mean
 * waiting for an OAuth2 refresh). */
static void flight_authorize(struct flight *f)
{
    if (f->fl->credentials == NULL) {
        flight_send(f->token ? f->token : "", f->token_len, NULL, f);
        return;
    }
    credential_with_token(f->fl->credentials, f->token, f->token_len, flight_send, f);
}

static void admitted(bool ok, int64_t retry_after_ms, void *arg)
{
    struct flight *f = arg;

    if (!ok) {
        flight_throttled(f, retry_after_ms);
        return;
    }
    flight_authorize(f);
}

static void flight_fetch(struct flight *f)
{
    struct admit_request req = {.cred = f->cred,
                                .client = f->client,
                                .device = f->has_device ? f->device : NULL,
                                .kind = f->kind,
                                .priority = f->background ? ADMIT_REFRESH : ADMIT_READ};

    f->state = FLIGHT_QUEUED;
    if (f->holds_lock)
        schedule_renewal(f);
    /* A refresh queues too, behind reads (its client was already answered,
     * STALE), oldest first: refreshes taken first-come would let one device
     * lose the race for budget again and again. */
    if (f->fl->admission == NULL)
        admitted(true, 0, f);
    else
        admission_request(f->fl->admission, &req, admitted, f, &f->ticket);
}

/* ---- waiting for another process ---------------------------------------- */

static void flight_try_lock(struct flight *f);

static void remote_entry(struct cache_entry *e, void *arg)
{
    struct flight *f = arg;

    if (e != NULL && cache_entry_freshness(e, cache_now_ms()) != CACHE_EXPIRED) {
        flight_answer_entry(f, e);
        cache_entry_free(e);
        return;
    }
    cache_entry_free(e);
    if (f->state == FLIGHT_READING) {
        /* The message came but the entry did not (not cacheable, or Redis
         * lost it): compete for the lock again. */
        flight_try_lock(f);
        return;
    }
    /* Not there yet: wait for the fill message; after one lock lifetime,
     * ask again whether the fetcher still holds (renews) the lock. */
    {
        struct timeval tv = {f->fl->lock_ttl_ms / 1000, (f->fl->lock_ttl_ms % 1000) * 1000};
        f->state = FLIGHT_REMOTE;
        evtimer_add(f->timer, &tv);
    }
}

static void lock_reply(bool ok, const redisReply *reply, void *arg)
{
    struct flight *f = arg;

    if (!ok) {
        /* A SET that missed its deadline may still land (Redis paused, say): the lock would
         * then be ours with nobody to release it, and the next miss on this key would wait it
         * out (2 s, seen with DEBUG SLEEP). The release queues behind the SET on the same
         * connection and frees it if it is ours. */
        const char *rel[] = {"EVAL", release_script, "1", f->lock_key, f->fl->lock_token};

        if (redis_usable(f->fl))
            cache_redis_commandv(f->fl->redis, ignore_reply, NULL, 5, rel);
        flight_fetch(f); /* no Redis: fetch alone */
        return;
    }
    if (reply->type == REDIS_REPLY_STATUS) { /* "OK": ours */
        f->holds_lock = true;
        flight_fetch(f);
        return;
    }
    /* Held by another process, which renews it while it fetches. Once it
     * has kept it for longer than any fetch may take, fetch anyway. */
    if (++f->lock_rounds > f->fl->max_lock_rounds) {
        flight_fetch(f);
        return;
    }
    f->state = FLIGHT_REMOTE;
    cache_lookup(f->fl->cache, f->key, remote_entry, f);
}

static void flight_try_lock(struct flight *f)
{
    struct flights *fl = f->fl;
    char ttl[24];
    const char *argv[] = {"EVAL", lock_script, "1", f->lock_key, fl->lock_token, ttl};

    if (!redis_usable(fl)) {
        flight_fetch(f);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%ld", fl->lock_ttl_ms);
    f->state = FLIGHT_LOCKING;
    cache_redis_commandv(fl->redis, lock_reply, f, 6, argv);
}

/* The flight's one timer: its start, the renewal of a lock it holds while
 * fetching, or (waiting on another process) the time to ask again. */
static void flight_start_cb(evutil_socket_t fd, short what, void *arg)
{
    struct flight *f = arg;
    (void)fd;
    (void)what;

    if (f->state == FLIGHT_FETCHING || f->state == FLIGHT_QUEUED) {
        renew_lock(f);
        return;
    }
    flight_try_lock(f);
}

void flights_on_fill(const char *payload, size_t len, void *arg)
{
    struct flights *fl = arg;
    bool failed = len > 0 && payload[0] == '!';
    bool throttled = len > 0 && payload[0] == '?';
    size_t skip = failed || throttled;
    char *key = xstrndup(payload + skip, len - skip);
    struct flight *f = flight_find(fl, key);

    free(key);
    if (f == NULL || f->state != FLIGHT_REMOTE)
        return; /* ours, or nobody here waits for it */
    event_del(f->timer);
    if (throttled) {
        flight_throttled(f, 1000);
        return;
    }
    if (failed) {
        flight_fail(f, UPSTREAM_BAD_RESPONSE,
                    "the identical request another proxy process made upstream failed");
        return;
    }
    f->state = FLIGHT_READING;
    cache_lookup(fl->cache, f->key, remote_entry, f);
}

/* ---- joining ------------------------------------------------------------ */

static void start_soon(struct flight *f)
{
    struct timeval zero = {0, 0};
    evtimer_add(f->timer, &zero);
}

void flight_join(struct flights *fl, const char *key, const struct flight_spec *spec,
                 flight_done_fn fn, void *arg)
{
    struct flight *f = flight_find(fl, key);
    struct waiter *w = xcalloc(1, sizeof(*w));

    w->fn = fn;
    w->arg = arg;
    if (f != NULL) {
        metrics_inc(METRIC_COALESCED);
        if (f->background) {
            /* A refresh nobody waited on now has a waiter: it goes on as a read, ahead of
             * the other refreshes, or the waiter would get the refresh's 429. */
            f->background = false;
            if (f->ticket != NULL)
                admission_promote(fl->admission, f->ticket, spec->client);
        }
    } else {
        f = flight_new(fl, key, spec);
        start_soon(f);
    }
    TAILQ_INSERT_TAIL(&f->waiters, w, link);
}

void flight_refresh(struct flights *fl, const char *key, const struct flight_spec *spec)
{
    struct flight *f;

    if (flight_find(fl, key) != NULL)
        return; /* already being fetched: that is the refresh */
    metrics_inc(METRIC_REFRESHES);
    f = flight_new(fl, key, spec);
    f->background = true;
    start_soon(f);
}

void flights_set_upstream_origin(struct flights *fl, const char *origin)
{
    free(fl->upstream_origin);
    fl->upstream_origin = xstrdup(origin);
}

struct flights *flights_new(struct event_base *base, struct upstream_pool *pool,
                            struct cache *cache, struct cache_redis *redis, long lock_ttl_ms,
                            long max_wait_ms)
{
    struct flights *fl = xcalloc(1, sizeof(*fl));
    unsigned char rnd[12];

    fl->base = base;
    fl->pool = pool;
    fl->cache = cache;
    fl->redis = redis;
    fl->lock_ttl_ms = lock_ttl_ms;
    /* Wait on another process at most as long as its fetch may take. */
    fl->max_lock_rounds = (int)((max_wait_ms + lock_ttl_ms - 1) / lock_ttl_ms) + 1;
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0x5a, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(fl->lock_token + 2 * i, 3, "%02x", rnd[i]);
    return fl;
}

void flights_set_budgets(struct flights *fl, struct admission *adm, struct limiter *lim)
{
    fl->admission = adm;
    fl->limiter = lim;
}

void flights_set_credentials(struct flights *fl, struct credential_store *store)
{
    fl->credentials = store;
}

void flights_free(struct flights *fl)
{
    if (fl == NULL)
        return;
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        while (fl->table[i] != NULL) {
            struct flight *f = fl->table[i];
            if (f->state == FLIGHT_FETCHING || f->state == FLIGHT_QUEUED) {
                /* The upstream pool answers it while it shuts down. */
                fl->table[i] = f->next_in_bucket;
                f->next_in_bucket = NULL;
                continue;
            }
            flight_fail(f, UPSTREAM_CONNECT_FAILED, "the proxy is shutting down");
        }
    }
    free(fl->upstream_origin);
    free(fl);
}
