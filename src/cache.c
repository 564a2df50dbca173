/*
 * cache.c: the entry format and the choice of store for each operation.
 *
 * With Redis up, entries live only in Redis, so every process sharing it
 * sees one cache and one invalidation. While Redis is down (or when none is
 * configured) the embedded store takes over; a Redis command that fails
 * falls back to the embedded store for that operation. Invalidations always
 * reach both, so an entry stored during an outage cannot outlive a command.
 *
 * Redis keys (no token ever appears; <cred> is the SHA-256 of the token):
 *   stp1:e:<cred>:<device|->:<class>:<digest>   an entry (route_cache_key)
 *   stp1:d:<cred>:<device>                      set of a device's status keys
 *   stp1:s:<cred>                               set of a credential's status keys
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "cache.h"
#include "cache_mem.h"
#include "cache_redis.h"
#include "janitor.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

#define ENTRY_MAGIC    "STP2"
#define INDEX_TTL_MS   "86400000" /* index sets outlive any entry they list */
#define SWEEP_EVERY_MS 5000

/* Stores an entry and, for status entries, lists it in the two index sets. */
static const char store_script[] = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                   "for i = 2, #KEYS do\n"
                                   "  redis.call('SADD', KEYS[i], KEYS[1])\n"
                                   "  redis.call('PEXPIRE', KEYS[i], ARGV[3])\n"
                                   "end\n"
                                   "return 1\n";

/* Deletes every entry an index set lists, and the set. */
static const char invalidate_script[] = "local m = redis.call('SMEMBERS', KEYS[1])\n"
                                        "for i = 1, #m do redis.call('DEL', m[i]) end\n"
                                        "redis.call('DEL', KEYS[1])\n"
                                        "return #m\n";

struct cache {
    struct cache_redis *redis; /* NULL: embedded only */
    struct cache_mem *mem;
    uint64_t epoch; /* invalidations so far */
    uint64_t last_sweep_ms;
};

uint64_t cache_now_ms(void)
{
    return (uint64_t)janitor_wall_ms();
}

enum cache_freshness cache_entry_freshness(const struct cache_entry *e, uint64_t now_ms)
{
    if (now_ms < e->fresh_until_ms)
        return CACHE_FRESH;
    if (now_ms < e->stale_until_ms)
        return CACHE_STALE;
    return CACHE_EXPIRED;
}

void cache_entry_free(struct cache_entry *e)
{
    if (e == NULL)
        return;
    free(e->content_type);
    if (!e->borrowed)
        free(e->body);
    free(e);
}

static void put_u64(struct evbuffer *out, uint64_t v)
{
    unsigned char b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (unsigned char)(v & 0xff);
    evbuffer_add(out, b, 8);
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Layout: "STP2", status (8), flags (8: bit 0 links), stored, fresh_until,
 * stale_until (8 each), content-type length (8) and bytes, body length (8) and
 * bytes. An entry in another layout (an older "STP1") decodes as a miss. */
void cache_entry_encode(const struct cache_entry *e, struct evbuffer *out)
{
    size_t ctlen = e->content_type ? strlen(e->content_type) : 0;

    evbuffer_add(out, ENTRY_MAGIC, 4);
    put_u64(out, (uint64_t)e->status);
    put_u64(out, e->links ? 1 : 0);
    put_u64(out, e->stored_ms);
    put_u64(out, e->fresh_until_ms);
    put_u64(out, e->stale_until_ms);
    put_u64(out, ctlen);
    evbuffer_add(out, e->content_type ? e->content_type : "", ctlen);
    put_u64(out, e->body_len);
    evbuffer_add(out, e->body, e->body_len);
}

/* With borrow, the body points into data instead of a copy. */
static struct cache_entry *entry_decode(const void *data, size_t len, bool borrow)
{
    const unsigned char *p = data, *end = p + len;
    struct cache_entry *e;
    uint64_t ctlen, blen, status;

    if (len < 4 + 7 * 8 || memcmp(p, ENTRY_MAGIC, 4) != 0)
        return NULL;
    p += 4;
    status = get_u64(p);
    if (status < 100 || status > 599)
        return NULL;
    e = xcalloc(1, sizeof(*e));
    e->status = (int)status;
    e->links = (get_u64(p + 8) & 1) != 0;
    e->stored_ms = get_u64(p + 16);
    e->fresh_until_ms = get_u64(p + 24);
    e->stale_until_ms = get_u64(p + 32);
    ctlen = get_u64(p + 40);
    p += 48;
    if (ctlen > (uint64_t)(end - p) || (uint64_t)(end - p) - ctlen < 8)
        goto bad;
    e->content_type = ctlen ? xstrndup((const char *)p, (size_t)ctlen) : NULL;
    p += ctlen;
    blen = get_u64(p);
    p += 8;
    if (blen != (uint64_t)(end - p))
        goto bad;
    if (borrow) {
        e->body = (char *)p;
        e->borrowed = true;
    } else {
        e->body = xmalloc((size_t)blen + 1);
        memcpy(e->body, p, (size_t)blen);
        e->body[blen] = '\0';
    }
    e->body_len = (size_t)blen;
    return e;
bad:
    cache_entry_free(e);
    return NULL;
}

struct cache_entry *cache_entry_decode(const void *data, size_t len)
{
    return entry_decode(data, len, false);
}

/* The embedded store's gauges, kept current on every change (the janitor's
 * tick would leave /metrics up to an interval behind). */
static void mem_gauges(const struct cache *c)
{
    metrics_set(METRIC_CACHE_ENTRIES, (int64_t)cache_mem_entries(c->mem));
    metrics_set(METRIC_CACHE_BYTES, (int64_t)cache_mem_bytes(c->mem));
}

struct cache *cache_new(struct cache_redis *redis, size_t max_bytes)
{
    struct cache *c = xcalloc(1, sizeof(*c));
    c->redis = redis;
    c->mem = cache_mem_new(max_bytes);
    return c;
}

void cache_free(struct cache *c)
{
    if (c == NULL)
        return;
    cache_mem_free(c->mem);
    free(c);
}

static bool redis_up(const struct cache *c)
{
    return c->redis != NULL && cache_redis_state(c->redis) == REDIS_UP;
}

enum cache_backend cache_backend(const struct cache *c)
{
    if (c->redis == NULL)
        return CACHE_EMBEDDED;
    return redis_up(c) ? CACHE_REDIS : CACHE_REDIS_FALLBACK;
}

uint64_t cache_epoch(const struct cache *c)
{
    return c->epoch;
}

/* ---- lookup ------------------------------------------------------------- */

static struct cache_entry *mem_lookup(struct cache *c, const char *key)
{
    size_t len;
    const void *data = cache_mem_get(c->mem, key, cache_now_ms(), &len);
    return data ? entry_decode(data, len, true) : NULL;
}

/* A Redis lookup waiting for its reply. */
struct lookup {
    struct cache *c;
    char *key;
    cache_lookup_fn fn;
    void *arg;
};

static void lookup_reply(bool ok, const redisReply *reply, void *arg)
{
    struct lookup *lk = arg;
    struct cache_entry *e = NULL;

    if (!ok)
        e = mem_lookup(lk->c, lk->key); /* Redis failed: the embedded store */
    else if (reply->type == REDIS_REPLY_STRING)
        e = entry_decode(reply->str, reply->len, true);
    lk->fn(e, lk->arg);
    free(lk->key);
    free(lk);
}

void cache_lookup(struct cache *c, const char *key, cache_lookup_fn fn, void *arg)
{
    struct lookup *lk;
    const char *argv[2] = {"GET", key};

    if (!redis_up(c)) {
        fn(mem_lookup(c, key), arg);
        return;
    }
    lk = xcalloc(1, sizeof(*lk));
    lk->c = c;
    lk->key = xstrdup(key);
    lk->fn = fn;
    lk->arg = arg;
    cache_redis_commandv(c->redis, lookup_reply, lk, 2, argv);
}

/* ---- store -------------------------------------------------------------- */

static void index_keys(const struct cache_tags *tags, char *dev, char *all, size_t len)
{
    snprintf(dev, len, "stp1:d:%s:%s", tags->cred, tags->device ? tags->device : "-");
    snprintf(all, len, "stp1:s:%s", tags->cred);
}

/* A Redis store waiting for its reply; on failure it goes to the embedded store. */
struct store {
    struct cache *c;
    char *key;
    struct evbuffer *data;
    uint64_t expires_ms;
    char cred[80];
    char device[160];
    bool has_device;
    bool is_status;
};

static void mem_store(struct cache *c, const char *key, struct evbuffer *data, uint64_t expires_ms,
                      const char *cred, const char *device, bool is_status)
{
    cache_mem_put(c->mem, key, evbuffer_pullup(data, -1), evbuffer_get_length(data), expires_ms,
                  cred, device, is_status);
    mem_gauges(c);
}

static void store_free(void *arg)
{
    struct store *st = arg;

    evbuffer_free(st->data);
    free(st->key);
    free(st);
}

static void store_reply(bool ok, const redisReply *reply, void *arg)
{
    struct store *st = arg;
    (void)reply;

    if (!ok)
        mem_store(st->c, st->key, st->data, st->expires_ms, st->cred,
                  st->has_device ? st->device : NULL, st->is_status);
    store_free(st);
}

void cache_store(struct cache *c, const char *key, const struct cache_entry *e,
                 const struct cache_tags *tags)
{
    struct evbuffer *data = evbuffer_new();
    uint64_t now = cache_now_ms();
    char ttl[32], dev[256], all[256];
    struct store *st;

    if (e->stale_until_ms <= now) {
        evbuffer_free(data);
        return;
    }
    cache_entry_encode(e, data);
    metrics_inc(METRIC_CACHE_STORES);
    if (!redis_up(c)) {
        mem_store(c, key, data, e->stale_until_ms, tags->cred, tags->device, tags->is_status);
        evbuffer_free(data);
        return;
    }
    st = xcalloc(1, sizeof(*st));
    st->c = c;
    st->key = xstrdup(key);
    st->data = data;
    st->expires_ms = e->stale_until_ms;
    snprintf(st->cred, sizeof(st->cred), "%s", tags->cred);
    st->has_device = tags->device != NULL;
    snprintf(st->device, sizeof(st->device), "%s", tags->device ? tags->device : "");
    st->is_status = tags->is_status;
    snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)(e->stale_until_ms - now));
    index_keys(tags, dev, all, sizeof(dev));
    {
        /* EVAL script numkeys key [dev all] value ttl index_ttl */
        const char *args[9];
        size_t lens[9];
        int argc = 0;
        args[argc++] = "EVAL";
        args[argc++] = store_script;
        args[argc++] = tags->is_status ? "3" : "1";
        args[argc++] = key;
        if (tags->is_status) {
            args[argc++] = dev;
            args[argc++] = all;
        }
        for (int i = 0; i < argc; i++)
            lens[i] = strlen(args[i]);
        args[argc] = (const char *)evbuffer_pullup(data, -1);
        lens[argc++] = evbuffer_get_length(data);
        args[argc] = ttl;
        lens[argc++] = strlen(ttl);
        args[argc] = INDEX_TTL_MS;
        lens[argc++] = strlen(INDEX_TTL_MS);
        cache_redis_command_owned(c->redis, store_reply, store_free, st, argc, args, lens);
    }
}

/* ---- invalidation and purge --------------------------------------------- */

static void ignore_reply(bool ok, const redisReply *reply, void *arg)
{
    (void)ok;
    (void)reply;
    (void)arg;
}

static void invalidate(struct cache *c, const char *index_key, const char *cred, const char *device)
{
    const char *argv[] = {"EVAL", invalidate_script, "1", index_key};

    c->epoch++;
    metrics_inc(METRIC_CACHE_INVALIDATIONS);
    cache_mem_remove(c->mem, cred, device, true);
    mem_gauges(c);
    if (redis_up(c))
        cache_redis_commandv(c->redis, ignore_reply, NULL, 4, argv);
}

void cache_invalidate_device(struct cache *c, const char *cred, const char *device)
{
    char key[256];
    snprintf(key, sizeof(key), "stp1:d:%s:%s", cred, device);
    invalidate(c, key, cred, device);
}

void cache_invalidate_status(struct cache *c, const char *cred)
{
    char key[256];
    snprintf(key, sizeof(key), "stp1:s:%s", cred);
    invalidate(c, key, cred, NULL);
}

/* A purge walking Redis with SCAN. */
struct purge {
    struct cache *c;
    char pattern[300];
    size_t purged;
    cache_purge_fn fn;
    void *arg;
};

static void purge_scan(struct purge *pg, const char *cursor);

static void purge_del_reply(bool ok, const redisReply *reply, void *arg)
{
    struct purge *pg = arg;
    if (ok && reply->type == REDIS_REPLY_INTEGER)
        pg->purged += (size_t)reply->integer;
}

static void purge_scan_reply(bool ok, const redisReply *reply, void *arg)
{
    struct purge *pg = arg;
    const redisReply *keys;

    if (!ok || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
        if (!ok)
            log_warn("cache: purge of Redis stopped early: Redis failed");
        pg->fn(pg->purged, pg->arg);
        free(pg);
        return;
    }
    keys = reply->element[1];
    if (keys->elements > 0) {
        const char **argv = xmalloc((keys->elements + 1) * sizeof(*argv));
        size_t *lens = xmalloc((keys->elements + 1) * sizeof(*lens));
        argv[0] = "DEL";
        lens[0] = 3;
        for (size_t i = 0; i < keys->elements; i++) {
            argv[i + 1] = keys->element[i]->str;
            lens[i + 1] = keys->element[i]->len;
        }
        cache_redis_command(pg->c->redis, purge_del_reply, pg, (int)keys->elements + 1, argv, lens);
        free(argv);
        free(lens);
    }
    if (strcmp(reply->element[0]->str, "0") == 0) {
        /* Replies come in order: the last DEL is answered before this PING. */
        const char *ping[] = {"PING"};
        cache_redis_commandv(pg->c->redis, purge_scan_reply, pg, 1, ping);
        pg->pattern[0] = '\0';
        return;
    }
    purge_scan(pg, reply->element[0]->str);
}

static void purge_scan(struct purge *pg, const char *cursor)
{
    const char *argv[] = {"SCAN", cursor, "MATCH", pg->pattern, "COUNT", "1000"};
    cache_redis_commandv(pg->c->redis, purge_scan_reply, pg, 6, argv);
}

void cache_purge(struct cache *c, const char *cred, const char *device, cache_purge_fn fn,
                 void *arg)
{
    struct purge *pg;
    size_t purged = cache_mem_remove(c->mem, cred, device, false);

    mem_gauges(c);

    c->epoch++;
    if (!redis_up(c)) {
        fn(purged, arg);
        return;
    }
    pg = xcalloc(1, sizeof(*pg));
    pg->c = c;
    pg->purged = purged;
    pg->fn = fn;
    pg->arg = arg;
    snprintf(pg->pattern, sizeof(pg->pattern), "stp1:e:%s:%s:*", cred ? cred : "*",
             device ? device : "*");
    purge_scan(pg, "0");
}

void cache_housekeeping(struct cache *c, uint64_t now_ms)
{
    uint64_t wall = cache_now_ms();
    (void)now_ms;
    if (wall - c->last_sweep_ms >= SWEEP_EVERY_MS) {
        cache_mem_sweep(c->mem, wall);
        c->last_sweep_ms = wall;
    }
    mem_gauges(c);
}
