/*
 * cache.h: the cache as the request path sees it. One interface over two
 * stores: Redis when configured and reachable, the embedded store
 * otherwise. Entries are answers to GETs, stored as received from the
 * upstream (links are rewritten per client when served).
 *
 * Freshness: an entry is FRESH until fresh_until, STALE (served while being
 * refreshed, or when the upstream fails) until stale_until, then gone.
 * Times are wall-clock milliseconds so that processes sharing Redis agree.
 */
#ifndef STPROXY_CACHE_H
#define STPROXY_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct config;
struct cache;
struct cache_redis;

/* An answer as stored. Owns its strings. */
struct cache_entry {
    int status;
    char *content_type; /* NULL when the upstream sent none */
    uint64_t stored_ms; /* when it was fetched (wall clock) */
    uint64_t fresh_until_ms;
    uint64_t stale_until_ms;
    char *body;
    size_t body_len;
    bool links; /* the body has links to the upstream origin: rewritten on every answer */
    /* A looked-up entry's body points into the store or the Redis reply (no
     * copy per hit): valid only until the lookup callback returns. */
    bool borrowed;
};

/* How usable an entry is at a given time. */
enum cache_freshness {
    CACHE_FRESH,   /* serve as HIT */
    CACHE_STALE,   /* serve as STALE and refresh */
    CACHE_EXPIRED, /* do not serve */
};

/* What an entry is about, for invalidation and purging. */
struct cache_tags {
    const char *cred;   /* credential id (hash) */
    const char *device; /* device in key form (route_key_device), or NULL */
    bool is_status;     /* a status read a command makes stale */
};

/* Where the cache keeps entries now, for /readyz. */
enum cache_backend {
    CACHE_EMBEDDED,      /* no Redis configured */
    CACHE_REDIS,         /* Redis up */
    CACHE_REDIS_FALLBACK /* Redis configured but unavailable: embedded store */
};

uint64_t cache_now_ms(void);
enum cache_freshness cache_entry_freshness(const struct cache_entry *e, uint64_t now_ms);
void cache_entry_free(struct cache_entry *e);

/* Serialises an entry; decode returns NULL for bytes that are not one. */
void cache_entry_encode(const struct cache_entry *e, struct evbuffer *out);
struct cache_entry *cache_entry_decode(const void *data, size_t len);

/*
 * redis may be NULL (embedded only). The cache does not own redis.
 */
struct cache *cache_new(struct cache_redis *redis, size_t max_bytes);
void cache_free(struct cache *c);

/* The entry (owned by the callee) or NULL. Called exactly once; may be
 * called before cache_lookup returns (embedded store). The entry's body is
 * borrowed: use or copy it before returning. */
typedef void (*cache_lookup_fn)(struct cache_entry *entry, void *arg);
void cache_lookup(struct cache *c, const char *key, cache_lookup_fn fn, void *arg);

/* Stores e under key until e->stale_until_ms. */
void cache_store(struct cache *c, const char *key, const struct cache_entry *e,
                 const struct cache_tags *tags);

/* A command succeeded on device: its status entries for cred go. */
void cache_invalidate_device(struct cache *c, const char *cred, const char *device);
/* A scene ran: every status entry of cred goes. */
void cache_invalidate_status(struct cache *c, const char *cred);
/* Counts invalidations; a fetch that began before one must not be stored. */
uint64_t cache_epoch(const struct cache *c);

/* Operator purge; cred and device may be NULL (= any). fn gets the count. */
typedef void (*cache_purge_fn)(size_t purged, void *arg);
void cache_purge(struct cache *c, const char *cred, const char *device, cache_purge_fn fn,
                 void *arg);

enum cache_backend cache_backend(const struct cache *c);
/* Janitor task: expiry sweep of the embedded store and its gauges. */
void cache_housekeeping(struct cache *c, uint64_t now_ms);

#endif
