/*
 * fuzz_oauth.c: libFuzzer target for the OAuth2 token endpoint's answer parser (oauth.c).
 */
#include <stdint.h>
#include <string.h>

#include "oauth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct oauth_answer a;

    memset(&a, 0, sizeof(a));
    (void)oauth_parse_answer((const char *)data, size, &a);
    oauth_answer_free(&a); /* whatever the parser kept, success or not */
    return 0;
}
