/*
 * load_stats.c: what one stbench run counted and how it is reported. Owns the latency samples
 * (grown as needed, up to LOAD_MAX_SAMPLES), the tallies by status, X-Cache and request kind,
 * the percentiles, and the two report shapes: a human table and one JSON object on a line.
 */
#include "load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOAD_MAX_SAMPLES (8L * 1000 * 1000) /* a longer run stops sampling latency */

void load_tally_add(struct load_tally *t, const char *key, long n)
{
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->key[i], key) == 0) {
            t->count[i] += n;
            return;
        }
    }
    if (t->n < LOAD_MAX_KEYS) {
        snprintf(t->key[t->n], sizeof(t->key[t->n]), "%s", key);
        t->count[t->n++] = n;
    }
}

void load_stats_init(struct load_stats *s, const char *label, const char *mode)
{
    memset(s, 0, sizeof(*s));
    s->label = label;
    s->mode = mode;
    s->age_max = -1;
    s->open_at_end = -1;
}

void load_stats_free(struct load_stats *s)
{
    free(s->latency);
    s->latency = NULL;
}

void load_stats_note(struct load_stats *s, const struct load_request *req, const char *kind)
{
    const struct load_answer *a = &req->answer;
    char status[16];

    if (kind != NULL)
        load_tally_add(&s->kinds, kind, 1);
    if (a->status == 0) {
        s->errors++;
        load_tally_add(&s->status, "error", 1);
        return;
    }
    s->requests++;
    snprintf(status, sizeof(status), "%d", a->status);
    load_tally_add(&s->status, status, 1);
    load_tally_add(&s->x_cache, a->x_cache, 1);
    if (a->age > s->age_max)
        s->age_max = a->age;
    if (s->n_latency == s->cap_latency && s->cap_latency < LOAD_MAX_SAMPLES) {
        long cap = s->cap_latency ? 2 * s->cap_latency : 4096;
        double *grown = realloc(s->latency, (size_t)cap * sizeof(*grown));

        if (grown == NULL)
            abort();
        s->latency = grown;
        s->cap_latency = cap;
    }
    if (s->n_latency < s->cap_latency)
        s->latency[s->n_latency++] = a->latency;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* The p-th percentile of n sorted samples, nearest rank. */
static double percentile(const double *sorted, long n, double p)
{
    long i;

    if (n == 0)
        return 0;
    i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static void json_tally(const char *name, const struct load_tally *t)
{
    printf(",\"%s\":{", name);
    for (int i = 0; i < t->n; i++)
        printf("%s\"%s\":%ld", i ? "," : "", t->key[i], t->count[i]);
    printf("}");
}

static void table_tally(const char *name, const struct load_tally *t)
{
    if (t->n == 0)
        return;
    printf("%-11s", name);
    for (int i = 0; i < t->n; i++)
        printf(" %s=%ld", t->key[i], t->count[i]);
    printf("\n");
}

void load_stats_report(struct load_stats *s, bool json)
{
    static const double ps[] = {50, 90, 99, 99.9};
    static const char *const names[] = {"p50", "p90", "p99", "p99.9"};
    double rps = s->seconds > 0 ? (double)s->requests / s->seconds : 0;
    double max = 0;

    qsort(s->latency, (size_t)s->n_latency, sizeof(double), cmp_double);
    if (s->n_latency > 0)
        max = s->latency[s->n_latency - 1];
    if (json) {
        printf("{\"label\":\"%s\",\"mode\":\"%s\",\"connections\":%d,\"seconds\":%.3f,"
               "\"requests\":%ld,\"errors\":%ld,\"rps\":%.1f,\"latency_ms\":{",
               s->label ? s->label : "", s->mode, s->connections, s->seconds, s->requests,
               s->errors, rps);
        for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
            printf("\"%s\":%.3f,", names[i], percentile(s->latency, s->n_latency, ps[i]) * 1e3);
        printf("\"max\":%.3f}", max * 1e3);
        json_tally("status", &s->status);
        json_tally("x_cache", &s->x_cache);
        if (s->kinds.n > 0)
            json_tally("kinds", &s->kinds);
        printf(",\"age_max_s\":%ld", s->age_max);
        if (strcmp(s->mode, "mix") == 0)
            printf(",\"skipped_cycles\":%ld", s->skipped_cycles);
        if (s->open_at_end >= 0)
            printf(",\"open_at_end\":%ld", s->open_at_end);
        if (s->have_upstream)
            printf(",\"upstream\":{\"calls\":%lld,\"rate_limited\":%lld}", s->upstream_calls,
                   s->upstream_limited);
        printf("}\n");
        return;
    }
    if (s->label != NULL)
        printf("run        %s (%s)\n", s->label, s->mode);
    printf("requests   %ld in %.2f s (%d connections): %.0f req/s, %ld errors\n", s->requests,
           s->seconds, s->connections, rps, s->errors);
    printf("latency   ");
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
        printf(" %s %.3f ms ", names[i], percentile(s->latency, s->n_latency, ps[i]) * 1e3);
    printf(" max %.3f ms\n", max * 1e3);
    table_tally("status", &s->status);
    table_tally("X-Cache", &s->x_cache);
    table_tally("kinds", &s->kinds);
    if (s->age_max >= 0)
        printf("Age        at most %ld s\n", s->age_max);
    if (strcmp(s->mode, "mix") == 0)
        printf("skipped    %ld polls (the previous one was still running)\n", s->skipped_cycles);
    if (s->open_at_end >= 0)
        printf("open       %ld connections still open at the end\n", s->open_at_end);
    if (s->have_upstream)
        printf("upstream   %lld calls, %lld answered 429 (the mock's counters)\n",
               s->upstream_calls, s->upstream_limited);
}
