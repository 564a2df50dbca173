/*
 * fuzz_route.c: libFuzzer target for the request-target checks, the path and query
 * normaliser and the cache-key builder (route.c). Input: a request target; the first byte
 * chooses whether the Accept header is absent.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *target = malloc(size + 1);
    struct route r;

    memcpy(target, data, size);
    target[size] = '\0';
    memset(&r, 0, sizeof(r));
    if (route_parse(target, "127.0.0.1:8080", &r) == ROUTE_OK) {
        char *key = route_cache_key(
            &r, "GET", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            size > 0 && data[0] & 1 ? NULL : "application/json");
        /* A key never carries the raw target's control characters or spaces. */
        for (const char *p = key; *p != '\0'; p++)
            if ((unsigned char)*p <= ' ')
                abort();
        free(key);
    }
    route_free(&r);
    free(target);
    return 0;
}
