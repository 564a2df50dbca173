/*
 * fuzz_config.c: libFuzzer target for the config file parser (config.c through inih): the
 * input is written to a file and loaded as `stproxy -c` would.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    struct config cfg;
    char err[512];
    FILE *f;

    if (path[0] == '\0')
        snprintf(path, sizeof(path), "/tmp/stproxy-fuzz-config-%d.conf", (int)getpid());
    if ((f = fopen(path, "wb")) == NULL)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    config_init(&cfg);
    (void)config_load(&cfg, path, err, sizeof(err));
    config_free(&cfg);
    return 0;
}
