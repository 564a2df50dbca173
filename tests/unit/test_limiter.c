/*
 * test_limiter.c: the budget arithmetic with a controlled clock, budget
 * parsing, and the parsers of the upstream's hints.
 */
#include <stdlib.h>
#include <string.h>

#include "limiter.h"
#include "tap.h"

/* Admits as fast as allowed for `windows` windows of budget b (a request
 * every ms); returns the largest count seen in any interval of length W. */
static long worst_window(const struct budget *b, int windows, long *total)
{
    struct gcra g;
    struct gcra_state s = {0, 0};
    long span = b->window_ms * windows, worst = 0;
    int64_t *times = calloc((size_t)span + 1, sizeof(*times));
    long n = 0;

    gcra_from_budget(b, &g);
    for (int64_t now = 0; now < span; now++)
        if (gcra_admit(&s, &g, now) == 0)
            times[n++] = now;
    /* sliding window: for each admitted request, count those within W of it */
    for (long i = 0, j = 0; i < n; i++) {
        while (times[i] - times[j] >= b->window_ms)
            j++;
        if (i - j + 1 > worst)
            worst = i - j + 1;
    }
    free(times);
    *total = n;
    return worst;
}

/* How many requests checked with (refresh ? gcra_for_refresh : plain) parameters of b pass at
 * once on a fresh bucket, and how many plain reads pass right after them. */
static void refresh_then_reads(long count, long window_ms, long *refreshes, long *reads)
{
    struct budget b = {count, window_ms};
    struct gcra g, r;
    struct gcra_state s = {0, 0};

    gcra_from_budget(&b, &g);
    r = g;
    gcra_for_refresh(&r);
    *refreshes = *reads = 0;
    while (gcra_wait(&s, &r, 1000) == 0 && gcra_admit(&s, &g, 1000) == 0)
        (*refreshes)++;
    while (gcra_admit(&s, &g, 1000) == 0)
        (*reads)++;
}

int main(void)
{
    struct budget b;
    struct gcra g;
    struct gcra_state s = {0, 0};
    long total;
    const long sizes[][2] = {{12, 60000}, {250, 60000}, {2, 1000},
                             {1, 1000},   {40, 2000},   {7, 3000}};

    /* parsing */
    tap_ok(budget_parse("250/60s", &b) && b.count == 250 && b.window_ms == 60000, "250/60s");
    tap_ok(budget_parse("12/1m", &b) && b.count == 12 && b.window_ms == 60000, "12/1m");
    tap_ok(budget_parse("30/2000ms", &b) && b.window_ms == 2000, "30/2000ms");
    tap_ok(!budget_parse("0/60s", &b), "zero count refused");
    tap_ok(!budget_parse("10", &b), "no window refused");
    tap_ok(!budget_parse("10/50ms", &b), "a window under 100 ms refused");
    tap_ok(!budget_parse("x/60s", &b), "not a number refused");

    /* refreshes leave a reserve for reads a client waits on */
    {
        long refreshes, reads;
        refresh_then_reads(12, 60000, &refreshes, &reads);
        tap_ok(refreshes == 2 && reads == 1,
               "12/60s: refreshes take 2 of the burst of 3, a read the last");
        refresh_then_reads(250, 60000, &refreshes, &reads);
        tap_ok(refreshes == 47 && reads == 15,
               "250/60s: a quarter of the burst of 62 kept for reads");
        refresh_then_reads(3, 60000, &refreshes, &reads);
        tap_ok(refreshes == 1 && reads == 0, "a burst of one is not held back from refreshes");
    }

    /* derived parameters: burst N/4, the rest spread over the window */
    b.count = 12;
    b.window_ms = 60000;
    gcra_from_budget(&b, &g);
    /* the window is stretched by 2% against network jitter: 61.2 s / 9 */
    tap_is_int((long)g.interval_ms, 6800, "12/60s: one request per 6.8 s steady");
    tap_is_int((long)g.tolerance_ms, 2 * 6800, "12/60s: a burst of 3");

    /* a burst, then the steady rate, then a wait */
    tap_is_int((long)gcra_admit(&s, &g, 0), 0, "1st at once");
    tap_is_int((long)gcra_admit(&s, &g, 0), 0, "2nd at once");
    tap_is_int((long)gcra_admit(&s, &g, 0), 0, "3rd at once (the burst)");
    tap_is_int((long)gcra_admit(&s, &g, 0), 6800, "4th must wait one interval");
    tap_is_int((long)gcra_wait(&s, &g, 6000), 800, "the wait shrinks as time passes");
    tap_is_int((long)gcra_admit(&s, &g, 6800), 0, "and is admitted when it is over");
    tap_is_int((long)gcra_admit(&s, &g, 6800), 6800, "then the next waits again");

    /* a pause from the upstream wins over an available budget */
    s.tat_ms = 0;
    s.paused_until_ms = 20000;
    tap_is_int((long)gcra_admit(&s, &g, 100000 - 90000), 10000, "paused: wait until the reset");
    tap_is_int((long)gcra_admit(&s, &g, 20000), 0, "admitted after the pause");

    /* the contract: never more than N in any window, and close to N over time */
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char name[120];
        long worst;
        b.count = sizes[i][0];
        b.window_ms = sizes[i][1];
        worst = worst_window(&b, 5, &total);
        snprintf(name, sizeof(name), "%ld/%ldms: at most %ld in any window (saw %ld)", b.count,
                 b.window_ms, b.count, worst);
        tap_ok(worst <= b.count, name);
        snprintf(name, sizeof(name), "%ld/%ldms: uses most of the budget (%ld in 5 windows)",
                 b.count, b.window_ms, total);
        tap_ok(total >= (b.count * 5) * 7 / 10 || b.count <= 2, name);
    }

    /* the upstream's hints */
    {
        const char *body = "{\"requestId\":\"3647079359088434476\",\"error\":{\"code\":"
                           "\"TooManyRequestError\",\"message\":\"Too Many Requests\",\"details\":"
                           "[{\"code\":\"TooManyRequestError\",\"message\":\"attempt 1 limit 1 - "
                           "retry in 13933 millis\",\"details\":[]}]}}";
        tap_is_int((long)limiter_parse_retry_body(body, strlen(body)), 13933,
                   "retry in N millis from the real 429 body");
        tap_is_int((long)limiter_parse_retry_body("{}", 2), -1, "no hint in an empty body");
        tap_is_int((long)limiter_parse_retry_body("retry in soon", 13), -1, "no number");
    }
    tap_is_int((long)limiter_parse_reset("60", 0), 60000, "a small reset is seconds");
    tap_is_int((long)limiter_parse_reset("13933", 0), 13933, "a larger one is milliseconds");
    tap_is_int((long)limiter_parse_reset("1700000030", 1700000000000LL), 30000,
               "an epoch in seconds");
    tap_is_int((long)limiter_parse_reset("1700000030000", 1700000000000LL), 30000,
               "an epoch in milliseconds");
    tap_is_int((long)limiter_parse_reset("soon", 0), -1, "garbage");
    tap_is_int((long)limiter_parse_reset(NULL, 0), -1, "absent");
    return tap_done();
}
