/*
 * flight.h: coalescing. A flight is one upstream fetch of one cache key;
 * every identical read that arrives while it is under way waits on it
 * instead of going upstream, and all are answered the moment it lands.
 *
 * With Redis, flights span processes: the process that wins a lock with an
 * expiry fetches; the others wait for its message on the fill channel and
 * read the entry it stored. The winner renews its lock while it fetches;
 * if it dies, the lock expires within one short lifetime and a waiter
 * takes over.
 */
#ifndef STPROXY_FLIGHT_H
#define STPROXY_FLIGHT_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/keyvalq_struct.h>

#include "admission.h"
#include "cache.h"
#include "config.h"
#include "limiter.h"
#include "upstream.h"

struct event_base;
struct evbuffer;
struct flights;
struct cache_redis;

/* What a flight fetches and how its answer is kept. Copied by flight_join. */
struct flight_spec {
    const char *target;              /* path?query sent upstream (GET) */
    const struct evkeyvalq *headers; /* end-to-end headers, Authorization included */
    struct cache_policy policy;      /* of the path class */
    long not_found_ms;               /* fresh TTL of a 404; 0 = not cached */
    struct cache_tags tags;
    const char *client; /* fairness key for the admission queue */
    const char *token;  /* pass-through: the client's token; NULL: the shared one */
    size_t token_len;
    enum limiter_kind kind; /* which device budget, if any */
};

/* The outcome every waiter of a flight receives (borrowed during the call). */
struct flight_answer {
    enum upstream_result result; /* UPSTREAM_OK or why it failed */
    int status;
    const struct evkeyvalq *headers; /* upstream's, or Content-Type from an entry */
    struct evbuffer *body;           /* read-only for waiters */
    const char *detail;              /* on failure */
    bool throttled;                  /* no budget in time: answer 429 */
    const char *credential_failure;  /* the shared credential is dead: answer 503 */
    int64_t retry_after_ms;          /* with throttled */
};

typedef void (*flight_done_fn)(const struct flight_answer *answer, void *arg);

/*
 * redis may be NULL. A fetching process renews its lock every lock_ttl_ms/3,
 * so a dead one blocks others at most about lock_ttl_ms; a live one is
 * waited on for at most max_wait_ms (the upstream timeout and a margin).
 */
struct flights *flights_new(struct event_base *base, struct upstream_pool *pool,
                            struct cache *cache, struct cache_redis *redis, long lock_ttl_ms,
                            long max_wait_ms);
/* The upstream origin links are matched against (as forward.c's settings): an
 * entry records whether its body has such links, so hits without skip the rewrite. */
void flights_set_upstream_origin(struct flights *fl, const char *origin);
/* Fetches ask adm for budget and teach lim from the answers. */
void flights_set_budgets(struct flights *fl, struct admission *adm, struct limiter *lim);
/* Fetches take their upstream token from store when they are sent. */
struct credential_store;
void flights_set_credentials(struct flights *fl, struct credential_store *store);
void flights_free(struct flights *fl);

/* Waits for key's flight, starting one if none is under way. fn is called
 * exactly once, never from inside this call. */
void flight_join(struct flights *fl, const char *key, const struct flight_spec *spec,
                 flight_done_fn fn, void *arg);

/* Starts a background refresh of key unless a flight is already under way. */
void flight_refresh(struct flights *fl, const char *key, const struct flight_spec *spec);

/* A message from the fill channel (cache_redis's subscriber). */
void flights_on_fill(const char *payload, size_t len, void *arg);

/* The Redis channel fill messages travel on. */
#define FLIGHT_FILL_CHANNEL "stp1:fill"

#endif
