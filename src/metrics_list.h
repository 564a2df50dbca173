/*
 * metrics_list.h: THE list of metrics. The enum, the Prometheus names, the
 * help text and the /metrics output are all generated from this one table;
 * README.md documents each entry (a test checks that it does).
 *
 * X(id, type, name, help)
 *   COUNTER        a number that only goes up
 *   GAUGE          a number that goes up and down
 *   HISTOGRAM      a latency in seconds, in the buckets of metrics.c
 *   BY_STATUS      a counter labelled by HTTP status code
 *   BY_ROUTE       a counter labelled by path class, X-Cache and status code
 */
#ifndef STPROXY_METRICS_LIST_H
#define STPROXY_METRICS_LIST_H

#define METRICS_LIST(X)                                                                            \
    X(REQUESTS, BY_STATUS, "stproxy_requests_total",                                               \
      "Client requests answered, by HTTP status code")                                             \
    X(ROUTE_REQUESTS, BY_ROUTE, "stproxy_route_requests_total",                                    \
      "Client requests answered, by path class (class), X-Cache (cache) and status (code)")        \
    X(REQUEST_DURATION, HISTOGRAM, "stproxy_request_duration_seconds",                             \
      "Time from a client request's arrival to its answer")                                        \
    X(UPSTREAM_REQUESTS, COUNTER, "stproxy_upstream_requests_total",                               \
      "Requests sent to the upstream API")                                                         \
    X(UPSTREAM_RESPONSES, BY_STATUS, "stproxy_upstream_responses_total",                           \
      "Complete answers from the upstream API, by status code")                                    \
    X(UPSTREAM_ERRORS, COUNTER, "stproxy_upstream_errors_total",                                   \
      "Upstream exchanges that failed: connect, TLS, timeout, bad or oversized answer")            \
    X(UPSTREAM_DURATION, HISTOGRAM, "stproxy_upstream_duration_seconds",                           \
      "Time from handing a request to the upstream pool to its answer or failure (reads and "      \
      "writes)")                                                                                   \
    X(UPSTREAM_CONNECTS, COUNTER, "stproxy_upstream_connections_opened_total",                     \
      "TLS connections opened to the upstream")                                                    \
    X(UPSTREAM_REUSED, COUNTER, "stproxy_upstream_reused_total",                                   \
      "Upstream requests sent on an already open keep-alive connection")                           \
    X(UPSTREAM_OPEN, GAUGE, "stproxy_upstream_connections", "Upstream connections open now")       \
    X(CLIENT_ACCEPTED, COUNTER, "stproxy_client_connections_accepted_total",                       \
      "Client connections accepted")                                                               \
    X(CLIENT_LIMITED, COUNTER, "stproxy_client_connection_limit_reached_total",                    \
      "Times max_connections was reached and accepting paused until a connection closed")          \
    X(CLIENT_IDLE_CLOSED, COUNTER, "stproxy_client_idle_closed_total",                             \
      "Idle keep-alive connections closed at max_connections to make room for a new client")       \
    X(CLIENT_OPEN, GAUGE, "stproxy_client_connections", "Client connections open now")             \
    X(AUTH_REJECTED, COUNTER, "stproxy_auth_rejected_total",                                       \
      "Requests refused with 401: missing or unknown client key")                                  \
    X(CACHE_HITS, COUNTER, "stproxy_cache_hits_total", "Reads answered fresh from the cache")      \
    X(CACHE_STALE, COUNTER, "stproxy_cache_stale_total",                                           \
      "Reads answered from a stale entry: while refreshing, or because the upstream failed")       \
    X(CACHE_MISSES, COUNTER, "stproxy_cache_misses_total",                                         \
      "Cacheable reads that had to go upstream (alone or coalesced)")                              \
    X(CACHE_BYPASS, COUNTER, "stproxy_cache_bypass_total",                                         \
      "Requests that are never cached: writes, uncacheable paths")                                 \
    X(CACHE_STORES, COUNTER, "stproxy_cache_stores_total", "Answers written to the cache")         \
    X(CACHE_INVALIDATIONS, COUNTER, "stproxy_cache_invalidations_total",                           \
      "Invalidations after commands and scene executions")                                         \
    X(COALESCED, COUNTER, "stproxy_coalesced_waiters_total",                                       \
      "Requests that joined an identical fetch already under way instead of going upstream")       \
    X(REFRESHES, COUNTER, "stproxy_cache_refreshes_total",                                         \
      "Background refreshes of stale entries")                                                     \
    X(CACHE_ENTRIES, GAUGE, "stproxy_cache_entries", "Entries in the embedded store")              \
    X(CACHE_BYTES, GAUGE, "stproxy_cache_bytes", "Bytes held by the embedded store")               \
    X(REDIS_UP, GAUGE, "stproxy_redis_up", "1 while Redis is connected and answering, else 0")     \
    X(REDIS_ERRORS, COUNTER, "stproxy_redis_errors_total",                                         \
      "Redis commands that failed or missed their deadline")                                       \
    X(THROTTLE_ADMITTED, COUNTER, "stproxy_throttle_admitted_total",                               \
      "Upstream requests admitted by the budgets (at once or after queueing)")                     \
    X(THROTTLE_QUEUED, COUNTER, "stproxy_throttle_queued_total",                                   \
      "Requests that waited in the admission queue for budget")                                    \
    X(THROTTLE_QUEUE_WAIT, HISTOGRAM, "stproxy_throttle_queue_wait_seconds",                       \
      "Time requests waited in the admission queue")                                               \
    X(THROTTLE_QUEUE_DEPTH, GAUGE, "stproxy_throttle_queue_depth",                                 \
      "Requests waiting in the admission queue now")                                               \
    X(THROTTLE_STALE, COUNTER, "stproxy_throttle_stale_total",                                     \
      "Stale answers whose refresh the budget did not allow (the entry stays stale)")              \
    X(THROTTLE_REJECTED, COUNTER, "stproxy_throttle_rejected_total",                               \
      "Requests answered 429 by the proxy: no budget in time, or the queue full")                  \
    X(UPSTREAM_429, COUNTER, "stproxy_upstream_429_total", "429 answers from the upstream")        \
    X(OAUTH_REFRESHES, COUNTER, "stproxy_oauth_refreshes_total",                                   \
      "OAuth2 access tokens obtained with the refresh_token grant")                                \
    X(OAUTH_REFRESH_FAILURES, COUNTER, "stproxy_oauth_refresh_failures_total",                     \
      "OAuth2 refreshes that failed")                                                              \
    X(CREDENTIAL_FAILED, GAUGE, "stproxy_credential_failed",                                       \
      "1 while the shared credential needs re-authorisation (dead refresh token, rejected token)") \
    X(TARGET_REFUSED, COUNTER, "stproxy_target_refused_total",                                     \
      "Requests refused for their target: foreign host, CONNECT, path tricks")

#endif
