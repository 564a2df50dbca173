/*
 * limiter.h: budgets. A budget "N per W" means at most N upstream requests
 * in any interval of length W. Each is enforced with GCRA (a token bucket
 * written as one timestamp): a burst of B = max(1, N/4) and a steady rate
 * of N - B per W, so that B + (N - B) = N bounds every window.
 *
 * Budgets belong to a credential: one overall, and per device one for
 * status reads and one for commands. With Redis every process draws from
 * the same buckets through one Lua script; without it (or while it is
 * down) each process keeps its own, at a conservative share of the rate.
 * The upstream's own hints (429s, X-RateLimit-*) pause a bucket or lower a
 * credential's budget.
 *
 * All arithmetic takes `now` so tests control time.
 */
#ifndef STPROXY_LIMITER_H
#define STPROXY_LIMITER_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct cache_redis;
struct evkeyvalq;
struct limiter;

/* A budget as configured: count per window. */
struct budget {
    long count;
    long window_ms;
};

/* GCRA parameters derived from a budget. */
struct gcra {
    int64_t interval_ms;  /* time one request costs at the steady rate */
    int64_t tolerance_ms; /* how far ahead of now the bucket may run (the burst) */
};

/* One bucket's state. */
struct gcra_state {
    int64_t tat_ms;          /* theoretical arrival time of the next request */
    int64_t paused_until_ms; /* the upstream asked for a pause until then */
};

void gcra_from_budget(const struct budget *b, struct gcra *out);
/* 0 when a request fits now (and the state is charged), else the ms to wait. */
int64_t gcra_admit(struct gcra_state *s, const struct gcra *g, int64_t now_ms);
/* The wait without charging anything. */
int64_t gcra_wait(const struct gcra_state *s, const struct gcra *g, int64_t now_ms);
/* The parameters a background refresh is checked with: a quarter of the
 * burst (at least one request, none when the burst is one) stays for reads a
 * client is waiting on, so refreshes of stale entries, which nobody waits for,
 * cannot drain a bucket a miss then waits a whole interval on. */
void gcra_for_refresh(struct gcra *g);

/* Parses "N/W" (e.g. "250/60s"). */
bool budget_parse(const char *text, struct budget *out) __attribute__((warn_unused_result));

/* Which per-device bucket a request draws from, besides the overall one. */
enum limiter_kind {
    LIMIT_OVERALL_ONLY, /* lists, descriptions, locations, ... */
    LIMIT_STATUS,       /* a device's status reads */
    LIMIT_COMMAND,      /* a device's commands and events */
};

/* What a limiter check said. */
struct limiter_verdict {
    bool allowed;
    int64_t wait_ms;   /* when not allowed: how long until it may be */
    bool device_bound; /* the device's bucket (not the credential's) said no */
};

typedef void (*limiter_fn)(const struct limiter_verdict *verdict, void *arg);

struct limiter *limiter_new(struct event_base *base, struct cache_redis *redis,
                            const struct budget *overall, const struct budget *device);
void limiter_free(struct limiter *lim);
/* New budgets (SIGHUP); bucket states carry over. */
void limiter_set_budgets(struct limiter *lim, const struct budget *overall,
                         const struct budget *device);

/* Asks for one upstream request for cred (and device, for kind != OVERALL).
 * Charges the buckets when allowed. fn is called exactly once, possibly
 * before this returns (local buckets). */
void limiter_check(struct limiter *lim, const char *cred, const char *device,
                   enum limiter_kind kind, bool refresh, limiter_fn fn, void *arg);

/*
 * Learns from an upstream answer: a 429 (its "retry in N millis" body or
 * X-RateLimit-Reset) pauses the credential, or the device when the
 * credential still had requests left; an X-RateLimit-Limit below the
 * budget lowers the credential's budget; Remaining 0 pauses until Reset.
 */
void limiter_learn(struct limiter *lim, const char *cred, const char *device,
                   enum limiter_kind kind, int status, const struct evkeyvalq *headers,
                   const char *body, size_t body_len);

/* Parses the wait out of a 429 body ("retry in N millis"); -1 if none. */
int64_t limiter_parse_retry_body(const char *body, size_t len);
/* Reads X-RateLimit-Reset as a wait in ms: small values are seconds, large
 * ones milliseconds, epoch values are converted; -1 if absent or bad. */
int64_t limiter_parse_reset(const char *value, int64_t now_epoch_ms);

/* Janitor task: forget idle local buckets. */
void limiter_housekeeping(struct limiter *lim, int64_t now_ms);

#endif
