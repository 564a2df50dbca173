/*
 * admission.c: owns the admission queues: one per credential that has
 * requests waiting, each with a command queue and a ring of per-client read
 * queues, and the tickets in them.
 *
 * Refreshes of stale entries wait in a third queue, served only when no
 * command or read can go, and checked against a reserve (gcra_for_refresh):
 * the bench's integration mix showed refreshes draining device buckets so
 * that a read after a command waited a whole interval and got 429.
 *
 * One check per credential is in progress at a time (the limiter may answer
 * later, from Redis); when it says "not yet" the queue sleeps until the
 * limiter's wait is over. A ticket whose device bucket (not the
 * credential's) is spent is set aside until then, so one busy device does
 * not hold up the others.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>

#include "admission.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

#define TABLE_SIZE  256
#define MIN_WAKE_MS 5

struct credq;
struct client_queue;

/* Where a ticket is. */
enum ticket_state {
    TICKET_WAITING,  /* in a queue */
    TICKET_CHECKING, /* the limiter is being asked for it */
    TICKET_EXPIRED,  /* its deadline passed while it was being checked */
};

/* One request waiting for budget. */
struct admit_ticket {
    TAILQ_ENTRY(admit_ticket) link; /* in cq->tickets, q->commands or q->refreshes */
    struct credq *q;
    struct client_queue *cq; /* NULL for commands and refreshes */
    bool refresh;            /* in q->refreshes */
    enum ticket_state state;
    char device[128];
    bool has_device;
    enum limiter_kind kind;
    bool was_queued; /* its first check said "not yet" */
    int64_t enqueued_ms;
    int64_t not_before_ms; /* its device bucket is spent until then */
    struct event *deadline;
    admit_fn fn;
    void *arg;
    struct admit_ticket **handle; /* the caller's pointer to it, cleared when fn runs */
};
TAILQ_HEAD(ticket_list, admit_ticket);

/* The reads of one client, in arrival order. Kept while its credential
 * has a queue, so a client keeps its place between its requests. */
struct client_queue {
    TAILQ_ENTRY(client_queue) ring; /* in q->clients */
    uint64_t last_served;           /* q->served when it was last admitted; 0 = never */
    struct credq *q;
    char name[72];
    struct ticket_list tickets;
};
TAILQ_HEAD(client_ring, client_queue);

/* The queue of one credential. */
struct credq {
    struct credq *next_in_bucket;
    struct admission *adm;
    char cred[72];
    struct ticket_list commands;
    struct client_ring clients; /* every client that queued while q lived */
    struct ticket_list refreshes;
    uint64_t served;              /* admissions so far: orders clients by turn */
    int count;                    /* tickets queued */
    struct admit_ticket *current; /* being checked, or NULL */
    bool in_pump;
    bool verdict_ready; /* a check answered inside pump() */
    struct limiter_verdict verdict;
    bool throttled; /* said "over budget" in the log */
    struct event *wake;
};

struct admission {
    struct event_base *base;
    struct limiter *lim;
    long queue_timeout_ms;
    long queue_max;
    int queued; /* tickets in all queues */
    struct credq *table[TABLE_SIZE];
};

static void pump(struct credq *q);

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t slot_of(const char *key)
{
    size_t h = 5381;
    for (; *key; key++)
        h = h * 33 + (unsigned char)*key;
    return h % TABLE_SIZE;
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

static struct credq *credq_get(struct admission *adm, const char *cred)
{
    size_t slot = slot_of(cred);
    struct credq *q = adm->table[slot];

    for (; q != NULL; q = q->next_in_bucket)
        if (strcmp(q->cred, cred) == 0)
            return q;
    q = xcalloc(1, sizeof(*q));
    q->adm = adm;
    snprintf(q->cred, sizeof(q->cred), "%s", cred);
    TAILQ_INIT(&q->commands);
    TAILQ_INIT(&q->clients);
    TAILQ_INIT(&q->refreshes);
    q->wake = evtimer_new(adm->base, wake_cb, q);
    q->next_in_bucket = adm->table[slot];
    adm->table[slot] = q;
    return q;
}

static void credq_destroy(struct credq *q)
{
    struct client_queue *cq;
    while ((cq = TAILQ_FIRST(&q->clients)) != NULL) {
        TAILQ_REMOVE(&q->clients, cq, ring);
        free(cq);
    }
    event_free(q->wake);
    free(q);
}

/* Frees a credential's queue once nothing is in it or running. */
static void credq_maybe_free(struct credq *q)
{
    struct credq **link;

    if (q->count > 0 || q->current != NULL || q->in_pump)
        return;
    if (q->throttled) {
        log_info("throttle: credential %.8s is within its budget again", q->cred);
        q->throttled = false;
    }
    link = &q->adm->table[slot_of(q->cred)];
    while (*link != q)
        link = &(*link)->next_in_bucket;
    *link = q->next_in_bucket;
    credq_destroy(q);
}

/* Takes a ticket out of its queue (not freed). */
static void ticket_unlink(struct admit_ticket *t)
{
    struct credq *q = t->q;

    if (t->refresh) {
        TAILQ_REMOVE(&q->refreshes, t, link);
    } else if (t->cq == NULL) {
        TAILQ_REMOVE(&q->commands, t, link);
    } else {
        TAILQ_REMOVE(&t->cq->tickets, t, link);
        t->cq = NULL;
    }
    q->count--;
    q->adm->queued--;
    metrics_set(METRIC_THROTTLE_QUEUE_DEPTH, q->adm->queued);
}

/* Answers a ticket and frees it (already unlinked). */
static void ticket_finish(struct admit_ticket *t, bool admitted, int64_t retry_after_ms)
{
    if (admitted) {
        metrics_inc(METRIC_THROTTLE_ADMITTED);
        if (t->was_queued)
            metrics_observe(METRIC_THROTTLE_QUEUE_WAIT,
                            (double)(now_ms() - t->enqueued_ms) / 1000.0);
    } else if (!t->refresh) {
        metrics_inc(METRIC_THROTTLE_REJECTED); /* a refresh's is counted as throttled stale */
    }
    event_free(t->deadline);
    if (t->handle != NULL)
        *t->handle = NULL;
    t->fn(admitted, retry_after_ms, t->arg);
    free(t);
}

/* When the queue will next have budget, for a rejected ticket's Retry-After. */
static int64_t retry_estimate(const struct credq *q)
{
    struct timeval tv;
    if (evtimer_pending(q->wake, &tv)) {
        int64_t ms = 0;
        struct timeval now;
        event_base_gettimeofday_cached(q->adm->base, &now);
        ms = (int64_t)(tv.tv_sec - now.tv_sec) * 1000 + (tv.tv_usec - now.tv_usec) / 1000;
        if (ms > 0)
            return ms;
    }
    return 1000;
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admit_ticket *t = arg;
    struct credq *q = t->q;
    (void)fd;
    (void)what;

    if (t->state == TICKET_CHECKING) {
        t->state = TICKET_EXPIRED; /* the check in progress decides */
        return;
    }
    ticket_unlink(t);
    ticket_finish(t, false, retry_estimate(q));
    credq_maybe_free(q);
}

/* The next ticket to try: a command, else the first ticket (not set aside)
 * of the client served longest ago, else the oldest refresh. A client keeps
 * its turn until one of its tickets is admitted, so "not yet" never costs it
 * its place, and a client that asks one request at a time alternates with a
 * greedy one. */
static struct admit_ticket *pick(struct credq *q, int64_t now, int64_t *earliest)
{
    struct admit_ticket *t, *best = NULL;
    struct client_queue *cq, *best_cq = NULL;

    *earliest = 0;
    TAILQ_FOREACH(t, &q->commands, link)
    {
        if (t->not_before_ms <= now)
            return t;
        if (*earliest == 0 || t->not_before_ms < *earliest)
            *earliest = t->not_before_ms;
    }
    TAILQ_FOREACH(cq, &q->clients, ring)
    {
        if (best_cq != NULL && cq->last_served >= best_cq->last_served)
            continue;
        TAILQ_FOREACH(t, &cq->tickets, link)
        {
            if (t->not_before_ms <= now) {
                best = t;
                best_cq = cq;
                break;
            }
            if (*earliest == 0 || t->not_before_ms < *earliest)
                *earliest = t->not_before_ms;
        }
    }
    if (best != NULL)
        return best;
    TAILQ_FOREACH(t, &q->refreshes, link)
    {
        if (t->not_before_ms <= now)
            return t;
        if (*earliest == 0 || t->not_before_ms < *earliest)
            *earliest = t->not_before_ms;
    }
    return NULL;
}

static void schedule_wake(struct credq *q, int64_t ms)
{
    struct timeval tv;
    if (ms < MIN_WAKE_MS)
        ms = MIN_WAKE_MS;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(q->wake, &tv);
}

/* Acts on the verdict for q->current. Returns true to try the next ticket. */
static bool apply_verdict(struct credq *q)
{
    struct admit_ticket *t = q->current;
    const struct limiter_verdict *v = &q->verdict;
    bool expired = t->state == TICKET_EXPIRED;

    q->current = NULL;
    t->state = TICKET_WAITING;
    if (v->allowed || expired) {
        if (v->allowed && t->cq != NULL)
            t->cq->last_served = ++q->served; /* its turn is used */
        ticket_unlink(t);
        ticket_finish(t, v->allowed, v->allowed ? 0 : v->wait_ms);
        return true;
    }
    if (!t->was_queued) {
        t->was_queued = true;
        metrics_inc(METRIC_THROTTLE_QUEUED);
    }
    if (v->device_bound) {
        /* Only this device is spent: let the others go meanwhile. */
        t->not_before_ms = now_ms() + v->wait_ms;
        return true;
    }
    if (!q->throttled) {
        log_info("throttle: credential %.8s is over its budget; queueing its requests", q->cred);
        q->throttled = true;
    }
    schedule_wake(q, v->wait_ms);
    return false;
}

static void verdict_cb(const struct limiter_verdict *v, void *arg)
{
    struct credq *q = arg;

    q->verdict = *v;
    if (q->in_pump) {
        q->verdict_ready = true; /* pump() is on the stack and goes on */
        return;
    }
    if (apply_verdict(q))
        pump(q);
    else
        credq_maybe_free(q);
}

static void pump(struct credq *q)
{
    if (q->in_pump || q->current != NULL)
        return;
    q->in_pump = true;
    for (;;) {
        int64_t now = now_ms(), earliest;
        struct admit_ticket *t = pick(q, now, &earliest);
        if (t == NULL) {
            if (earliest > 0)
                schedule_wake(q, earliest - now);
            break;
        }
        q->current = t;
        t->state = TICKET_CHECKING;
        q->verdict_ready = false;
        limiter_check(q->adm->lim, q->cred, t->has_device ? t->device : NULL, t->kind, t->refresh,
                      verdict_cb, q);
        if (!q->verdict_ready)
            break; /* the answer comes later, through verdict_cb */
        if (!apply_verdict(q))
            break;
    }
    q->in_pump = false;
    credq_maybe_free(q);
}

/* The read queue of client in q, made on first use. */
static struct client_queue *client_queue_get(struct credq *q, const char *client)
{
    struct client_queue *cq;

    TAILQ_FOREACH(cq, &q->clients, ring)
    if (strcmp(cq->name, client) == 0)
        return cq;
    cq = xcalloc(1, sizeof(*cq));
    cq->q = q;
    snprintf(cq->name, sizeof(cq->name), "%s", client);
    TAILQ_INIT(&cq->tickets);
    TAILQ_INSERT_TAIL(&q->clients, cq, ring);
    return cq;
}

static void arm_deadline(struct admission *adm, struct admit_ticket *t)
{
    struct timeval tv = {adm->queue_timeout_ms / 1000, (adm->queue_timeout_ms % 1000) * 1000};

    evtimer_add(t->deadline, &tv);
}

void admission_promote(struct admission *adm, struct admit_ticket *t, const char *client)
{
    struct credq *q = t->q;

    if (!t->refresh || t->state == TICKET_EXPIRED)
        return;
    TAILQ_REMOVE(&q->refreshes, t, link);
    t->refresh = false;
    t->cq = client_queue_get(q, client);
    TAILQ_INSERT_TAIL(&t->cq->tickets, t, link);
    t->not_before_ms = 0; /* a refresh's "not yet" counted its reserve: check again now */
    arm_deadline(adm, t); /* the waiter's own queue_timeout, from now */
    pump(q);
}

void admission_request(struct admission *adm, const struct admit_request *req, admit_fn fn,
                       void *arg, struct admit_ticket **handle)
{
    struct credq *q;
    struct admit_ticket *t;

    if (handle != NULL)
        *handle = NULL;
    if (adm->queued >= adm->queue_max) {
        metrics_inc(METRIC_THROTTLE_REJECTED);
        fn(false, 1000, arg);
        return;
    }
    q = credq_get(adm, req->cred);
    t = xcalloc(1, sizeof(*t));
    t->q = q;
    t->kind = req->kind;
    t->has_device = req->device != NULL;
    snprintf(t->device, sizeof(t->device), "%s", req->device ? req->device : "");
    t->enqueued_ms = now_ms();
    t->fn = fn;
    t->arg = arg;
    t->deadline = evtimer_new(adm->base, deadline_cb, t);
    arm_deadline(adm, t);
    if (req->priority == ADMIT_COMMAND) {
        TAILQ_INSERT_TAIL(&q->commands, t, link);
    } else if (req->priority == ADMIT_REFRESH) {
        t->refresh = true;
        TAILQ_INSERT_TAIL(&q->refreshes, t, link);
    } else {
        t->cq = client_queue_get(q, req->client);
        TAILQ_INSERT_TAIL(&t->cq->tickets, t, link);
    }
    t->handle = handle;
    if (handle != NULL)
        *handle = t;
    q->count++;
    adm->queued++;
    metrics_set(METRIC_THROTTLE_QUEUE_DEPTH, adm->queued);
    pump(q);
}

struct admission *admission_new(struct event_base *base, struct limiter *lim, long queue_timeout_ms,
                                long queue_max)
{
    struct admission *adm = xcalloc(1, sizeof(*adm));
    adm->base = base;
    adm->lim = lim;
    adm->queue_timeout_ms = queue_timeout_ms;
    adm->queue_max = queue_max;
    return adm;
}

void admission_set_limits(struct admission *adm, long queue_timeout_ms, long queue_max)
{
    adm->queue_timeout_ms = queue_timeout_ms;
    adm->queue_max = queue_max;
}

void admission_free(struct admission *adm)
{
    if (adm == NULL)
        return;
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        struct credq *q;
        while ((q = adm->table[i]) != NULL) {
            struct admit_ticket *t;
            struct client_queue *cq;
            q->in_pump = true; /* keep q while its tickets are answered */
            while ((t = TAILQ_FIRST(&q->commands)) != NULL) {
                ticket_unlink(t);
                ticket_finish(t, false, 1000);
            }
            while ((t = TAILQ_FIRST(&q->refreshes)) != NULL) {
                ticket_unlink(t);
                ticket_finish(t, false, 1000);
            }
            TAILQ_FOREACH(cq, &q->clients, ring)
            {
                while ((t = TAILQ_FIRST(&cq->tickets)) != NULL) {
                    ticket_unlink(t);
                    ticket_finish(t, false, 1000);
                }
            }
            adm->table[i] = q->next_in_bucket;
            credq_destroy(q);
        }
    }
    free(adm);
}
