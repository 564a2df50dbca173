/*
 * tap.h: a minimal Test Anything Protocol emitter for the unit tests, read
 * by automake's tap-driver.sh. Each check prints "ok N - name" or
 * "not ok N - name" with a diagnostic; tap_done prints the plan and
 * returns the exit status.
 */
#ifndef STPROXY_TAP_H
#define STPROXY_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_count, tap_failed;

static inline int tap_ok(int cond, const char *name)
{
    tap_count++;
    if (!cond)
        tap_failed++;
    printf("%sok %d - %s\n", cond ? "" : "not ", tap_count, name);
    return cond;
}

static inline void tap_is_int(long got, long want, const char *name)
{
    if (!tap_ok(got == want, name))
        printf("# got %ld, want %ld\n", got, want);
}

static inline void tap_is_str(const char *got, const char *want, const char *name)
{
    int same = (got == NULL && want == NULL) || (got && want && strcmp(got, want) == 0);
    if (!tap_ok(same, name))
        printf("# got \"%s\", want \"%s\"\n", got ? got : "(null)", want ? want : "(null)");
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

#endif
