/*
 * admission.h: who goes upstream next when a credential's budget is spent.
 *
 * Every request that must reach the upstream asks here first. With budget
 * left it goes at once. Otherwise it waits in its credential's queue, with
 * a deadline: commands before reads, and reads round-robin between clients
 * (client name in shared mode; in pass-through mode each token is its own
 * credential), so a greedy poller cannot starve the others. A request not
 * admitted by its deadline, or arriving at a full queue, is rejected and
 * the caller answers 429 with Retry-After.
 *
 * Memory per queued request: one struct ticket (about 200 bytes) and one
 * timer event, besides the request itself.
 */
#ifndef STPROXY_ADMISSION_H
#define STPROXY_ADMISSION_H

#include <stdbool.h>
#include <stdint.h>

#include "limiter.h"

struct event_base;
struct admission;

/* Queue order: commands, then reads, then refreshes. */
enum admit_priority {
    ADMIT_COMMAND, /* writes: commands, events, scene executions */
    ADMIT_READ,    /* reads that missed the cache: a client waits with nothing */
    ADMIT_REFRESH, /* background refreshes of stale entries: their client has its answer, and
                      they may only use budget a read would leave (gcra_for_refresh) */
};

/* What a request to go upstream is about. */
struct admit_request {
    const char *cred;   /* credential id (hash) */
    const char *client; /* fairness key: client name or credential id */
    const char *device; /* key form, or NULL */
    enum limiter_kind kind;
    enum admit_priority priority;
};

/* admitted, or not (then retry_after_ms says when to try again). */
typedef void (*admit_fn)(bool admitted, int64_t retry_after_ms, void *arg);

struct admission *admission_new(struct event_base *base, struct limiter *lim, long queue_timeout_ms,
                                long queue_max);
/* New queue limits (SIGHUP); they apply to requests that arrive from now on. */
void admission_set_limits(struct admission *adm, long queue_timeout_ms, long queue_max);

/* Rejects everything still queued (shutdown), then frees. */
void admission_free(struct admission *adm);

struct admit_ticket;

/* Waits for budget (fn exactly once; possibly before this returns). While the
 * request waits, *handle (if not NULL) is its ticket; it is set to NULL when
 * fn runs. */
void admission_request(struct admission *adm, const struct admit_request *req, admit_fn fn,
                       void *arg, struct admit_ticket **handle);
/* A queued refresh that a client now waits on (it joined the flight) queues
 * as a read of client from now on, with a fresh deadline. */
void admission_promote(struct admission *adm, struct admit_ticket *t, const char *client);

#endif
