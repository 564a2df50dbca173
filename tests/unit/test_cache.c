/*
 * test_cache.c: the entry format, freshness, the embedded store (bound,
 * LRU order, invalidation tags) and the cache key's normalisation.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "cache.h"
#include "cache_mem.h"
#include "route.h"
#include "tap.h"

static void test_entry_format(void)
{
    struct cache_entry e = {.status = 200,
                            .content_type = "application/json",
                            .stored_ms = 1000,
                            .fresh_until_ms = 6000,
                            .stale_until_ms = 36000,
                            .body = "{\"a\":1}\0tail",
                            .body_len = 12,
                            .links = true};
    struct evbuffer *buf = evbuffer_new();
    struct cache_entry *d;
    size_t len;
    unsigned char *raw;

    cache_entry_encode(&e, buf);
    len = evbuffer_get_length(buf);
    raw = evbuffer_pullup(buf, -1);
    d = cache_entry_decode(raw, len);
    tap_ok(d != NULL, "an encoded entry decodes");
    tap_is_int(d->status, 200, "status kept");
    tap_is_str(d->content_type, "application/json", "content type kept");
    tap_ok(d->body_len == 12 && memcmp(d->body, e.body, 12) == 0, "binary body kept");
    tap_ok(d->stored_ms == 1000 && d->fresh_until_ms == 6000 && d->stale_until_ms == 36000,
           "times kept");
    tap_ok(d->links, "the links flag kept");
    tap_is_int(cache_entry_freshness(d, 5999), CACHE_FRESH, "fresh before fresh_until");
    tap_is_int(cache_entry_freshness(d, 6000), CACHE_STALE, "stale from fresh_until");
    tap_is_int(cache_entry_freshness(d, 35999), CACHE_STALE, "stale until stale_until");
    tap_is_int(cache_entry_freshness(d, 36000), CACHE_EXPIRED, "expired from stale_until");
    cache_entry_free(d);
    tap_ok(cache_entry_decode(raw, len - 1) == NULL, "a truncated entry is refused");
    raw[0] = 'X';
    tap_ok(cache_entry_decode(raw, len) == NULL, "a foreign value is refused");
    tap_ok(cache_entry_decode("STP2", 4) == NULL, "a short value is refused");
    evbuffer_free(buf);
    e.content_type = NULL;
    e.body_len = 0;
    buf = evbuffer_new();
    cache_entry_encode(&e, buf);
    d = cache_entry_decode(evbuffer_pullup(buf, -1), evbuffer_get_length(buf));
    tap_ok(d != NULL && d->content_type == NULL && d->body_len == 0, "empty fields round-trip");
    tap_ok(d != NULL && d->links, "the flag as set");
    cache_entry_free(d);
    evbuffer_free(buf);
}

static void test_mem_store(void)
{
    struct cache_mem *mem = cache_mem_new(64 * 1024);
    char value[1000], key[32];
    const void *got;
    size_t len;

    memset(value, 'v', sizeof(value));
    cache_mem_put(mem, "k1", "one", 3, 5000, "cred-a", "dev-1", true);
    got = cache_mem_get(mem, "k1", 1000, &len);
    tap_ok(got != NULL && len == 3 && memcmp(got, "one", 3) == 0, "put then get");
    tap_ok(cache_mem_get(mem, "k1", 5000, &len) == NULL, "gone at its expiry");
    tap_is_int((long)cache_mem_entries(mem), 0, "expired entry dropped on get");

    /* the bound holds, and the least recently used entry goes first */
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        cache_mem_put(mem, key, value, sizeof(value), 99999, "c", NULL, false);
        if (i == 10) /* touch key-0 so it is recent */
            tap_ok(cache_mem_get(mem, "key-0", 1, &len) != NULL, "key-0 present early");
        if (i > 10 && i % 5 == 0)
            (void)cache_mem_get(mem, "key-0", 1, &len);
    }
    tap_ok(cache_mem_bytes(mem) <= 64 * 1024, "bytes stay within the bound");
    tap_ok(cache_mem_entries(mem) > 20 && cache_mem_entries(mem) < 64, "many entries fit");
    tap_ok(cache_mem_get(mem, "key-0", 1, &len) != NULL, "a recently used entry survives");
    tap_ok(cache_mem_get(mem, "key-1", 1, &len) == NULL, "the least recently used went");
    tap_ok(cache_mem_get(mem, "key-199", 1, &len) != NULL, "the newest is there");
    cache_mem_put(mem, "huge", value, 20000, 99999, "c", NULL, false);
    tap_ok(cache_mem_get(mem, "huge", 1, &len) == NULL, "an entry over a quarter is not kept");
    cache_mem_free(mem);

    /* invalidation by tags */
    mem = cache_mem_new(1 << 20);
    cache_mem_put(mem, "a-status-1", "x", 1, 99999, "A", "d1", true);
    cache_mem_put(mem, "a-status-2", "x", 1, 99999, "A", "d2", true);
    cache_mem_put(mem, "a-desc-1", "x", 1, 99999, "A", "d1", false);
    cache_mem_put(mem, "b-status-1", "x", 1, 99999, "B", "d1", true);
    tap_is_int((long)cache_mem_remove(mem, "A", "d1", true), 1, "one device's status for A");
    tap_ok(cache_mem_get(mem, "a-desc-1", 1, &len) != NULL, "its description stays");
    tap_ok(cache_mem_get(mem, "b-status-1", 1, &len) != NULL, "another credential's stays");
    tap_is_int((long)cache_mem_remove(mem, "A", NULL, true), 1, "all status entries of A");
    tap_is_int((long)cache_mem_remove(mem, NULL, "d1", false), 2, "purge by device");
    tap_is_int((long)cache_mem_entries(mem), 0, "empty");
    cache_mem_free(mem);
}

static void test_keys(void)
{
    struct route a, b;
    char *q, *ka, *kb;

    q = route_normalise_query("capability=switch&capability=lock&locationId=L");
    tap_is_str(q, "capability=lock&capability=switch&locationId=L", "sorted pairs");
    free(q);
    q = route_normalise_query("locationId=L&capability=lock,switch");
    tap_is_str(q, "capability=lock&capability=switch&locationId=L", "comma-joined = repeated");
    free(q);
    q = route_normalise_query(NULL);
    tap_is_str(q, "", "no query");
    free(q);
    q = route_normalise_query("flag&x=");
    tap_is_str(q, "flag&x=", "a name without a value is kept apart from an empty value");
    free(q);

    tap_ok(route_parse("/devices?capability=a,b&max=5", NULL, &a) == ROUTE_OK, "parse a");
    tap_ok(route_parse("/devices?max=5&capability=b&capability=a", NULL, &b) == ROUTE_OK,
           "parse b");
    ka = route_cache_key(&a, "GET", "cred1", "application/json");
    kb = route_cache_key(&b, "GET", "cred1", "application/json");
    tap_is_str(ka, kb, "equivalent queries share a key");
    free(kb);
    kb = route_cache_key(&b, "GET", "cred2", "application/json");
    tap_ok(strcmp(ka, kb) != 0, "another credential, another key");
    free(kb);
    kb = route_cache_key(&b, "GET", "cred1", "application/vnd.smartthings+json;v=1");
    tap_ok(strcmp(ka, kb) != 0, "another Accept, another key");
    free(kb);
    route_free(&b);
    tap_ok(route_parse("/v1/devices?capability=a,b&max=5", NULL, &b) == ROUTE_OK, "parse v1");
    kb = route_cache_key(&b, "GET", "cred1", "application/json");
    tap_ok(strcmp(ka, kb) != 0, "/v1/devices and /devices are different paths");
    tap_ok(strncmp(ka, "stp1:e:cred1:-:devices:", 23) == 0, "key layout");
    free(ka);
    free(kb);
    route_free(&a);
    route_free(&b);
    tap_ok(route_parse("/devices/abc-1/status", NULL, &a) == ROUTE_OK, "parse status");
    ka = route_cache_key(&a, "GET", "c", NULL);
    tap_ok(strncmp(ka, "stp1:e:c:abc-1:device_status:", 29) == 0, "device in the key");
    free(ka);
    route_free(&a);
    {
        char dev[ROUTE_ID_MAX];
        route_key_device("a*b:c", dev);
        tap_ok(dev[0] == 'h' && strlen(dev) == 33 && strchr(dev, '*') == NULL,
               "odd device ids are hashed in keys");
    }
}

int main(void)
{
    test_entry_format();
    test_mem_store();
    test_keys();
    return tap_done();
}
