/*
 * fuzz_limits.c: libFuzzer target for what the upstream says about its limits (limiter.c):
 * the 429 body's "retry in N millis", the X-RateLimit-Reset value and budget strings.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "limiter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    struct budget b;

    memcpy(text, data, size);
    text[size] = '\0';
    (void)limiter_parse_retry_body((const char *)data, size);
    (void)limiter_parse_reset(text, 1764000000000LL);
    if (budget_parse(text, &b) && (b.count < 1 || b.window_ms < 100))
        abort();
    free(text);
    return 0;
}
