/*
 * metrics.c: storage and Prometheus rendering for the metrics declared in
 * metrics_list.h. One process, one event loop: plain integers, no atomics.
 */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "route.h"

enum metric_type { COUNTER, GAUGE, HISTOGRAM, BY_STATUS, BY_ROUTE };

/* The cache label values of BY_ROUTE metrics: X-Cache, or none. */
static const char *const cache_labels[] = {"none", "HIT", "STALE", "MISS", "BYPASS"};
#define NCACHE (sizeof(cache_labels) / sizeof(cache_labels[0]))
#define NCLASS (ROUTE_CLASS_COUNT + 1) /* the last: refused before routing */

struct metric_def {
    enum metric_type type;
    const char *name;
    const char *help;
};

static const struct metric_def defs[METRIC_COUNT] = {
#define METRIC_DEF(id, type, name, help) [METRIC_##id] = {type, name, help},
    METRICS_LIST(METRIC_DEF)
#undef METRIC_DEF
};

/* Upper bounds of the latency buckets, in seconds. */
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBUCKETS   (sizeof(buckets) / sizeof(buckets[0]))
#define STATUS_MIN 100
#define STATUS_MAX 599

static int64_t values[METRIC_COUNT];
static uint64_t by_status[METRIC_COUNT][STATUS_MAX - STATUS_MIN + 1];
static uint64_t hist_counts[METRIC_COUNT][NBUCKETS + 1];
static double hist_sums[METRIC_COUNT];
/* One BY_ROUTE metric (the only one): untouched cells cost no resident memory. */
static uint64_t by_route[NCLASS][NCACHE][STATUS_MAX - STATUS_MIN + 1];

void metrics_inc(enum metric_id id)
{
    values[id]++;
}

void metrics_set(enum metric_id id, int64_t value)
{
    values[id] = value;
}

uint64_t metrics_get(enum metric_id id)
{
    return (uint64_t)values[id];
}

const char *metrics_name(enum metric_id id)
{
    return defs[id].name;
}

void metrics_count_status(enum metric_id id, int status)
{
    if (status < STATUS_MIN || status > STATUS_MAX)
        return;
    by_status[id][status - STATUS_MIN]++;
    values[id]++;
}

void metrics_count_route(enum metric_id id, int cls, const char *cache, int status)
{
    size_t c = 0;

    if (status < STATUS_MIN || status > STATUS_MAX || cls < 0 || cls > ROUTE_CLASS_COUNT)
        return;
    if (cache != NULL) {
        for (c = 1; c < NCACHE && strcmp(cache, cache_labels[c]) != 0; c++)
            ;
        if (c == NCACHE)
            c = 0;
    }
    by_route[cls][c][status - STATUS_MIN]++;
    values[id]++;
}

void metrics_observe(enum metric_id id, double seconds)
{
    size_t i = 0;
    while (i < NBUCKETS && seconds > buckets[i])
        i++;
    hist_counts[id][i]++;
    hist_sums[id] += seconds;
    values[id]++;
}

static void render_histogram(struct evbuffer *out, enum metric_id id)
{
    uint64_t cumulative = 0;

    for (size_t i = 0; i < NBUCKETS; i++) {
        cumulative += hist_counts[id][i];
        evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", defs[id].name, buckets[i],
                            (unsigned long long)cumulative);
    }
    cumulative += hist_counts[id][NBUCKETS];
    evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", defs[id].name,
                        (unsigned long long)cumulative);
    evbuffer_add_printf(out, "%s_sum %.6f\n%s_count %llu\n", defs[id].name, hist_sums[id],
                        defs[id].name, (unsigned long long)cumulative);
}

void metrics_render(struct evbuffer *out)
{
    static const char *const type_names[] = {[COUNTER] = "counter",
                                             [GAUGE] = "gauge",
                                             [HISTOGRAM] = "histogram",
                                             [BY_STATUS] = "counter",
                                             [BY_ROUTE] = "counter"};

    for (int id = 0; id < METRIC_COUNT; id++) {
        const struct metric_def *d = &defs[id];
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name,
                            type_names[d->type]);
        switch (d->type) {
        case COUNTER:
        case GAUGE:
            evbuffer_add_printf(out, "%s %lld\n", d->name, (long long)values[id]);
            break;
        case HISTOGRAM:
            render_histogram(out, (enum metric_id)id);
            break;
        case BY_STATUS:
            for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
                uint64_t v = by_status[id][s - STATUS_MIN];
                if (v > 0)
                    evbuffer_add_printf(out, "%s{code=\"%d\"} %llu\n", d->name, s,
                                        (unsigned long long)v);
            }
            break;
        case BY_ROUTE:
            for (int cls = 0; cls < (int)NCLASS; cls++)
                for (size_t c = 0; c < NCACHE; c++)
                    for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
                        uint64_t v = by_route[cls][c][s - STATUS_MIN];
                        if (v > 0)
                            evbuffer_add_printf(
                                out, "%s{class=\"%s\",cache=\"%s\",code=\"%d\"} %llu\n", d->name,
                                cls < ROUTE_CLASS_COUNT ? route_class_name(cls) : "none",
                                cache_labels[c], s, (unsigned long long)v);
                    }
            break;
        }
    }
}
