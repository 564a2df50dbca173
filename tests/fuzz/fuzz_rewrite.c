/*
 * fuzz_rewrite.c: libFuzzer target for the JSON link rewriter (rewrite.c): any body, as an
 * upstream might send it. rewrite_links_found must agree with whether rewrite_links changes
 * anything.
 */
#include <stdint.h>
#include <stdlib.h>

#include <event2/buffer.h>

#include "rewrite.h"

#define FROM "https://api.smartthings.com"
#define TO   "http://127.0.0.1:8080"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evbuffer *out = evbuffer_new();
    bool changed = rewrite_links((const char *)data, size, FROM, TO, out);

    if (changed != rewrite_links_found((const char *)data, size, FROM))
        abort();
    if (!changed && evbuffer_get_length(out) != 0)
        abort();
    evbuffer_free(out);
    return 0;
}
