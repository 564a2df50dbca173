/*
 * metrics.h: process-wide counters, gauges and histograms, rendered in the
 * Prometheus text format by admin.c. Which metrics exist is decided only in
 * metrics_list.h. Labels never carry a token or a key.
 */
#ifndef STPROXY_METRICS_H
#define STPROXY_METRICS_H

#include <stdint.h>

#include "metrics_list.h"

struct evbuffer;

enum metric_id {
#define METRIC_ENUM(id, type, name, help) METRIC_##id,
    METRICS_LIST(METRIC_ENUM)
#undef METRIC_ENUM
        METRIC_COUNT
};

void metrics_inc(enum metric_id id);
void metrics_set(enum metric_id id, int64_t value);
/* For BY_STATUS metrics. */
void metrics_count_status(enum metric_id id, int status);
/* For BY_ROUTE metrics: cls is a route_class (or ROUTE_CLASS_COUNT for a
 * request refused before it had one), cache an X-Cache value or NULL. */
void metrics_count_route(enum metric_id id, int cls, const char *cache, int status);
/* For HISTOGRAM metrics. */
void metrics_observe(enum metric_id id, double seconds);

uint64_t metrics_get(enum metric_id id);
void metrics_render(struct evbuffer *out);
/* The metric names, for tests. */
const char *metrics_name(enum metric_id id);

#endif
