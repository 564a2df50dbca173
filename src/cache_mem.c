/*
 * cache_mem.c: the embedded store: a chained hash table plus an LRU list.
 *
 * Each entry owns its key, its bytes and its invalidation tags. Accounting
 * counts everything an entry allocates, so cache_max_bytes bounds the real
 * memory use, not just the bodies. Nothing here knows what the bytes mean.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "cache_mem.h"
#include "mem.h"

/* One stored entry. */
struct mem_entry {
    struct mem_entry *next_in_bucket;
    TAILQ_ENTRY(mem_entry) lru; /* most recently used first */
    uint64_t hash;
    uint64_t expires_ms;
    char *key;
    char *cred;     /* credential id, for purges */
    char *device;   /* device (key form) or NULL */
    bool is_status; /* a status entry, for invalidation */
    void *data;
    size_t len;
    size_t charge; /* bytes counted against the bound */
};
TAILQ_HEAD(mem_lru, mem_entry);

struct cache_mem {
    struct mem_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t bytes;
    size_t max_bytes;
    struct mem_lru lru;
};

/* FNV-1a: keys are already mostly hex digests, so a simple hash spreads well. */
static uint64_t hash_key(const char *key)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *key != '\0'; key++) {
        h ^= (unsigned char)*key;
        h *= 1099511628211ULL;
    }
    return h;
}

struct cache_mem *cache_mem_new(size_t max_bytes)
{
    struct cache_mem *mem = xcalloc(1, sizeof(*mem));
    mem->nbuckets = 1024;
    mem->buckets = xcalloc(mem->nbuckets, sizeof(*mem->buckets));
    mem->max_bytes = max_bytes;
    TAILQ_INIT(&mem->lru);
    return mem;
}

static void entry_destroy(struct mem_entry *e)
{
    free(e->key);
    free(e->cred);
    free(e->device);
    free(e->data);
    free(e);
}

/* Unlinks e from its bucket and the LRU list and frees it. */
static void entry_remove(struct cache_mem *mem, struct mem_entry *e)
{
    struct mem_entry **link = &mem->buckets[e->hash & (mem->nbuckets - 1)];
    while (*link != e)
        link = &(*link)->next_in_bucket;
    *link = e->next_in_bucket;
    TAILQ_REMOVE(&mem->lru, e, lru);
    mem->count--;
    mem->bytes -= e->charge;
    entry_destroy(e);
}

void cache_mem_free(struct cache_mem *mem)
{
    struct mem_entry *e;
    if (mem == NULL)
        return;
    while ((e = TAILQ_FIRST(&mem->lru)) != NULL)
        entry_remove(mem, e);
    free(mem->buckets);
    free(mem);
}

static struct mem_entry *entry_find(struct cache_mem *mem, const char *key, uint64_t hash)
{
    struct mem_entry *e = mem->buckets[hash & (mem->nbuckets - 1)];
    for (; e != NULL; e = e->next_in_bucket)
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

/* Doubles the table when it is fuller than one entry per bucket. */
static void maybe_grow(struct cache_mem *mem)
{
    struct mem_entry **old = mem->buckets;
    size_t oldn = mem->nbuckets;

    if (mem->count < mem->nbuckets)
        return;
    mem->nbuckets *= 2;
    mem->buckets = xcalloc(mem->nbuckets, sizeof(*mem->buckets));
    for (size_t i = 0; i < oldn; i++) {
        struct mem_entry *e = old[i], *next;
        for (; e != NULL; e = next) {
            next = e->next_in_bucket;
            e->next_in_bucket = mem->buckets[e->hash & (mem->nbuckets - 1)];
            mem->buckets[e->hash & (mem->nbuckets - 1)] = e;
        }
    }
    free(old);
}

const void *cache_mem_get(struct cache_mem *mem, const char *key, uint64_t now_ms, size_t *len)
{
    struct mem_entry *e = entry_find(mem, key, hash_key(key));

    if (e == NULL)
        return NULL;
    if (now_ms >= e->expires_ms) {
        entry_remove(mem, e);
        return NULL;
    }
    TAILQ_REMOVE(&mem->lru, e, lru);
    TAILQ_INSERT_HEAD(&mem->lru, e, lru);
    *len = e->len;
    return e->data;
}

void cache_mem_put(struct cache_mem *mem, const char *key, const void *data, size_t len,
                   uint64_t expires_ms, const char *tag_cred, const char *tag_device,
                   bool is_status)
{
    uint64_t hash = hash_key(key);
    struct mem_entry *e = entry_find(mem, key, hash);
    size_t charge = sizeof(*e) + strlen(key) + 1 + len + (tag_cred ? strlen(tag_cred) + 1 : 0) +
                    (tag_device ? strlen(tag_device) + 1 : 0);

    if (e != NULL)
        entry_remove(mem, e);
    if (charge > mem->max_bytes / 4)
        return; /* one huge answer must not flush everything else */
    while (mem->bytes + charge > mem->max_bytes && !TAILQ_EMPTY(&mem->lru))
        entry_remove(mem, TAILQ_LAST(&mem->lru, mem_lru));
    e = xcalloc(1, sizeof(*e));
    e->hash = hash;
    e->expires_ms = expires_ms;
    e->key = xstrdup(key);
    e->cred = tag_cred ? xstrdup(tag_cred) : NULL;
    e->device = tag_device ? xstrdup(tag_device) : NULL;
    e->is_status = is_status;
    e->data = xmalloc(len);
    memcpy(e->data, data, len);
    e->len = len;
    e->charge = charge;
    e->next_in_bucket = mem->buckets[hash & (mem->nbuckets - 1)];
    mem->buckets[hash & (mem->nbuckets - 1)] = e;
    TAILQ_INSERT_HEAD(&mem->lru, e, lru);
    mem->count++;
    mem->bytes += charge;
    maybe_grow(mem);
}

size_t cache_mem_remove(struct cache_mem *mem, const char *cred, const char *device,
                        bool status_only)
{
    struct mem_entry *e, *next;
    size_t removed = 0;

    /* A linear walk: invalidations are rare next to lookups, and the store
     * is bounded, so an index per device would cost more than it saves. */
    for (e = TAILQ_FIRST(&mem->lru); e != NULL; e = next) {
        next = TAILQ_NEXT(e, lru);
        if (cred != NULL && (e->cred == NULL || strcmp(e->cred, cred) != 0))
            continue;
        if (device != NULL && (e->device == NULL || strcmp(e->device, device) != 0))
            continue;
        if (status_only && !e->is_status)
            continue;
        entry_remove(mem, e);
        removed++;
    }
    return removed;
}

void cache_mem_sweep(struct cache_mem *mem, uint64_t now_ms)
{
    struct mem_entry *e, *next;
    for (e = TAILQ_FIRST(&mem->lru); e != NULL; e = next) {
        next = TAILQ_NEXT(e, lru);
        if (now_ms >= e->expires_ms)
            entry_remove(mem, e);
    }
}

size_t cache_mem_entries(const struct cache_mem *mem)
{
    return mem->count;
}

size_t cache_mem_bytes(const struct cache_mem *mem)
{
    return mem->bytes;
}
