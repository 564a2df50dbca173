/*
 * cache_mem.h: the embedded store. An in-process hash table of encoded
 * entries, bounded in bytes, evicting the least recently used entry first.
 * It is the whole cache when no Redis is configured, and the fallback while
 * Redis is unreachable.
 */
#ifndef STPROXY_CACHE_MEM_H
#define STPROXY_CACHE_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache_mem;

struct cache_mem *cache_mem_new(size_t max_bytes);
void cache_mem_free(struct cache_mem *mem);

/*
 * The stored bytes of key, or NULL. Entries past expires_ms are dropped
 * here. The pointer stays valid until the next call that changes the store.
 * A hit makes the entry the most recently used.
 */
const void *cache_mem_get(struct cache_mem *mem, const char *key, uint64_t now_ms, size_t *len);

/*
 * Stores a copy of data under key until expires_ms (wall clock). tag_cred,
 * tag_device and is_status are kept for invalidation and purging. Entries
 * larger than a quarter of the bound are not stored.
 */
void cache_mem_put(struct cache_mem *mem, const char *key, const void *data, size_t len,
                   uint64_t expires_ms, const char *tag_cred, const char *tag_device,
                   bool is_status);

/*
 * Removes entries matching every non-NULL filter: credential id, device
 * (key form) and, with status_only, only status entries. Returns how many.
 */
size_t cache_mem_remove(struct cache_mem *mem, const char *cred, const char *device,
                        bool status_only);

/* Drops entries past their expiry; the janitor calls it. */
void cache_mem_sweep(struct cache_mem *mem, uint64_t now_ms);

size_t cache_mem_entries(const struct cache_mem *mem);
size_t cache_mem_bytes(const struct cache_mem *mem);

#endif
