/*
 * limiter.c: owns the budget buckets: the GCRA arithmetic, the local table
 * of buckets, the shared buckets in Redis, and what the upstream teaches.
 *
 * Local bucket keys: "o <cred>" (overall), "s <cred> <device>" (status),
 * "c <cred> <device>" (commands). Redis keys: stp1:b:o:<cred>,
 * stp1:b:s:<cred>:<device>, stp1:b:c:<cred>:<device> (hashes with the TAT
 * and a pause deadline). <cred> is the token's SHA-256, never the token.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/sha.h>

#include "cache_redis.h"
#include "config.h"
#include "janitor.h"
#include "limiter.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

#define TABLE_SIZE 4096
/* Without Redis to share budgets, a process assumes others may be drawing
 * on the same credential and takes this share of each budget. */
#define LOCAL_SHARE_PERCENT 50

/*
 * The shared check. KEYS: the buckets; ARGV: interval and tolerance per
 * key. Uses Redis's clock so that processes on different hosts agree.
 * Returns 0 when admitted (all buckets charged), else the wait in ms,
 * negated when a device bucket (not the first, overall one) is the reason.
 */
static const char check_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local wait, device = 0, false\n"
    "local tats = {}\n"
    "for i = 1, #KEYS do\n"
    "  local tau = tonumber(ARGV[2 * i])\n"
    "  local v = redis.call('HMGET', KEYS[i], 'tat', 'pause')\n"
    "  local tat = tonumber(v[1]) or now\n"
    "  if tat < now then tat = now end\n"
    "  tats[i] = tat\n"
    "  local w = 0\n"
    "  local pause = tonumber(v[2]) or 0\n"
    "  if pause > now then w = pause - now end\n"
    "  if tat - now > tau and tat - tau - now > w then w = tat - tau - now end\n"
    "  if w > wait then wait = w; device = i > 1 end\n"
    "end\n"
    "if wait > 0 then if device then return -wait end return wait end\n"
    "for i = 1, #KEYS do\n"
    "  local T = tonumber(ARGV[2 * i - 1])\n"
    "  redis.call('HSET', KEYS[i], 'tat', tats[i] + T)\n"
    "  redis.call('PEXPIRE', KEYS[i], tats[i] + T - now + tonumber(ARGV[2 * i]) + 60000)\n"
    "end\n"
    "return 0\n";

/* Pauses one bucket for ARGV[1] ms from Redis's now. */
static const char pause_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('HSET', KEYS[1], 'pause', now + tonumber(ARGV[1]))\n"
    "redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 60000)\n"
    "return 1\n";

/* One local bucket. */
struct bucket {
    struct bucket *next_in_bucket;
    char *key;
    struct gcra_state state;
    long learned_count; /* overall buckets: a lower limit the upstream reported; 0 = none */
    int64_t last_used_ms;
};

struct limiter {
    struct event_base *base;
    struct cache_redis *redis;
    struct budget overall;
    struct budget device;
    char check_sha[41]; /* SHA-1 of check_script: what EVALSHA runs */
    struct bucket *table[TABLE_SIZE];
};

/* ---- arithmetic ---------------------------------------------------------- */

void gcra_from_budget(const struct budget *b, struct gcra *out)
{
    long burst = b->count / 4;
    /* Requests admitted together do not reach the upstream in the same
     * order and with the same delay; a window 2% (at least 20 ms) longer
     * than the upstream's keeps that jitter from pushing N+1 into one. */
    long margin = b->window_ms / 50 > 20 ? b->window_ms / 50 : 20;
    struct budget stretched = {b->count, b->window_ms + margin};

    b = &stretched;

    if (burst < 1)
        burst = 1;
    if (b->count - burst < 1) {
        /* N = 1: one request per window, no burst */
        out->interval_ms = b->window_ms;
        out->tolerance_ms = 0;
        return;
    }
    out->interval_ms = (b->window_ms + (b->count - burst) - 1) / (b->count - burst);
    out->tolerance_ms = out->interval_ms * (burst - 1);
}

void gcra_for_refresh(struct gcra *g)
{
    int64_t burst = g->interval_ms > 0 ? g->tolerance_ms / g->interval_ms + 1 : 1;
    int64_t keep = burst / 4 > 1 ? burst / 4 : 1;

    if (keep > burst - 1)
        keep = burst - 1;
    g->tolerance_ms -= keep * g->interval_ms;
}

int64_t gcra_wait(const struct gcra_state *s, const struct gcra *g, int64_t now_ms)
{
    int64_t tat = s->tat_ms > now_ms ? s->tat_ms : now_ms;
    int64_t wait = 0;

    if (s->paused_until_ms > now_ms)
        wait = s->paused_until_ms - now_ms;
    if (tat - now_ms > g->tolerance_ms && tat - g->tolerance_ms - now_ms > wait)
        wait = tat - g->tolerance_ms - now_ms;
    return wait;
}

int64_t gcra_admit(struct gcra_state *s, const struct gcra *g, int64_t now_ms)
{
    int64_t wait = gcra_wait(s, g, now_ms);
    if (wait > 0)
        return wait;
    s->tat_ms = (s->tat_ms > now_ms ? s->tat_ms : now_ms) + g->interval_ms;
    return 0;
}

bool budget_parse(const char *text, struct budget *out)
{
    const char *slash = strchr(text, '/');
    char *end;
    long n;

    if (slash == NULL || !isdigit((unsigned char)text[0]))
        return false;
    n = strtol(text, &end, 10);
    if (end != slash || n < 1 || n > 1000000)
        return false;
    if (!config_parse_duration(slash + 1, &out->window_ms) || out->window_ms < 100)
        return false;
    out->count = n;
    return true;
}

/* ---- local buckets ------------------------------------------------------- */

static size_t slot_of(const char *key)
{
    size_t h = 5381;
    for (; *key; key++)
        h = h * 33 + (unsigned char)*key;
    return h % TABLE_SIZE;
}

static struct bucket *bucket_get(struct limiter *lim, const char *key)
{
    size_t slot = slot_of(key);
    struct bucket *b = lim->table[slot];

    for (; b != NULL; b = b->next_in_bucket)
        if (strcmp(b->key, key) == 0)
            return b;
    b = xcalloc(1, sizeof(*b));
    b->key = xstrdup(key);
    b->next_in_bucket = lim->table[slot];
    lim->table[slot] = b;
    return b;
}

static void bucket_keys(const char *cred, const char *device, enum limiter_kind kind, char *overall,
                        char *dev, size_t len)
{
    snprintf(overall, len, "o %s", cred);
    snprintf(dev, len, "%c %s %s", kind == LIMIT_COMMAND ? 'c' : 's', cred, device ? device : "-");
}

/* The overall budget in force for cred: the configured one, or lower if the
 * upstream said so; scaled down when buckets are not shared. */
static struct budget effective_overall(struct limiter *lim, const char *cred, bool local)
{
    char key[200];
    struct budget b = lim->overall;
    struct bucket *o;

    snprintf(key, sizeof(key), "o %s", cred);
    o = bucket_get(lim, key);
    if (o->learned_count > 0 && o->learned_count < b.count)
        b.count = o->learned_count;
    if (local && lim->redis != NULL) {
        b.count = b.count * LOCAL_SHARE_PERCENT / 100;
        if (b.count < 1)
            b.count = 1;
    }
    return b;
}

static struct budget effective_device(struct limiter *lim, bool local)
{
    struct budget b = lim->device;
    if (local && lim->redis != NULL) {
        b.count = b.count * LOCAL_SHARE_PERCENT / 100;
        if (b.count < 1)
            b.count = 1;
    }
    return b;
}

static void check_local(struct limiter *lim, const char *cred, const char *device,
                        enum limiter_kind kind, bool refresh, struct limiter_verdict *v)
{
    char okey[200], dkey[300];
    struct budget ob = effective_overall(lim, cred, true), db = effective_device(lim, true);
    struct gcra og, dg, ocheck, dcheck;
    struct bucket *o, *d = NULL;
    int64_t now = janitor_wall_ms(), ow, dw = 0;

    bucket_keys(cred, device, kind, okey, dkey, sizeof(okey));
    gcra_from_budget(&ob, &og);
    gcra_from_budget(&db, &dg);
    ocheck = og;
    dcheck = dg;
    if (refresh) {
        gcra_for_refresh(&ocheck);
        gcra_for_refresh(&dcheck);
    }
    o = bucket_get(lim, okey);
    o->last_used_ms = now;
    ow = gcra_wait(&o->state, &ocheck, now);
    if (kind != LIMIT_OVERALL_ONLY) {
        d = bucket_get(lim, dkey);
        d->last_used_ms = now;
        dw = gcra_wait(&d->state, &dcheck, now);
    }
    memset(v, 0, sizeof(*v));
    if (ow > 0 || dw > 0) {
        v->wait_ms = ow > dw ? ow : dw;
        v->device_bound = dw > ow;
        return;
    }
    (void)gcra_admit(&o->state, &og, now);
    if (d != NULL)
        (void)gcra_admit(&d->state, &dg, now);
    v->allowed = true;
}

/* ---- shared buckets ------------------------------------------------------ */

/* A Redis check waiting for its reply. */
struct check {
    struct limiter *lim;
    char cred[80];
    char device[160];
    bool has_device;
    enum limiter_kind kind;
    bool refresh; /* checked with gcra_for_refresh's tolerance */
    bool by_sha;  /* sent as EVALSHA (a failure retries with EVAL) */
    limiter_fn fn;
    void *arg;
};

static void send_check(struct check *ck);

static void check_reply(bool ok, const redisReply *reply, void *arg)
{
    struct check *ck = arg;
    struct limiter_verdict v;

    if (!ok && ck->by_sha) {
        /* Most likely NOSCRIPT (a restarted Redis): send the script itself. */
        ck->by_sha = false;
        send_check(ck);
        return;
    }
    if (!ok || reply->type != REDIS_REPLY_INTEGER) {
        check_local(ck->lim, ck->cred, ck->has_device ? ck->device : NULL, ck->kind, ck->refresh,
                    &v);
    } else {
        memset(&v, 0, sizeof(v));
        v.allowed = reply->integer == 0;
        v.wait_ms = reply->integer < 0 ? -reply->integer : reply->integer;
        v.device_bound = reply->integer < 0;
    }
    ck->fn(&v, ck->arg);
    free(ck);
}

static void send_check(struct check *ck)
{
    struct limiter *lim = ck->lim;
    struct budget ob = effective_overall(lim, ck->cred, false), db = effective_device(lim, false);
    struct gcra og, dg;
    char okey[200], dkey[300], oi[24], ot[24], di[24], dt[24];
    const char *argv[10];
    int argc = 0;

    gcra_from_budget(&ob, &og);
    gcra_from_budget(&db, &dg);
    if (ck->refresh) {
        /* The script checks against the tolerance it is given and charges one interval
         * either way: a lower tolerance is all a refresh's reserve needs. */
        gcra_for_refresh(&og);
        gcra_for_refresh(&dg);
    }
    snprintf(okey, sizeof(okey), "stp1:b:o:%s", ck->cred);
    snprintf(dkey, sizeof(dkey), "stp1:b:%c:%s:%s", ck->kind == LIMIT_COMMAND ? 'c' : 's', ck->cred,
             ck->has_device ? ck->device : "-");
    snprintf(oi, sizeof(oi), "%lld", (long long)og.interval_ms);
    snprintf(ot, sizeof(ot), "%lld", (long long)og.tolerance_ms);
    snprintf(di, sizeof(di), "%lld", (long long)dg.interval_ms);
    snprintf(dt, sizeof(dt), "%lld", (long long)dg.tolerance_ms);
    argv[argc++] = ck->by_sha ? "EVALSHA" : "EVAL";
    argv[argc++] = ck->by_sha ? lim->check_sha : check_script;
    argv[argc++] = ck->kind == LIMIT_OVERALL_ONLY ? "1" : "2";
    argv[argc++] = okey;
    if (ck->kind != LIMIT_OVERALL_ONLY)
        argv[argc++] = dkey;
    argv[argc++] = oi;
    argv[argc++] = ot;
    if (ck->kind != LIMIT_OVERALL_ONLY) {
        argv[argc++] = di;
        argv[argc++] = dt;
    }
    cache_redis_commandv(lim->redis, check_reply, ck, argc, argv);
}

void limiter_check(struct limiter *lim, const char *cred, const char *device,
                   enum limiter_kind kind, bool refresh, limiter_fn fn, void *arg)
{
    struct limiter_verdict v;
    struct check *ck;

    if (lim->redis == NULL || cache_redis_state(lim->redis) != REDIS_UP) {
        /* cache_redis logs the outage once; budgets follow it silently. */
        check_local(lim, cred, device, kind, refresh, &v);
        fn(&v, arg);
        return;
    }
    ck = xcalloc(1, sizeof(*ck));
    ck->lim = lim;
    snprintf(ck->cred, sizeof(ck->cred), "%s", cred);
    ck->has_device = device != NULL;
    snprintf(ck->device, sizeof(ck->device), "%s", device ? device : "");
    ck->kind = kind;
    ck->refresh = refresh;
    ck->by_sha = true;
    ck->fn = fn;
    ck->arg = arg;
    send_check(ck);
}

/* ---- learning ------------------------------------------------------------ */

int64_t limiter_parse_retry_body(const char *body, size_t len)
{
    static const char needle[] = "retry in ";
    const char *p = body, *end = body + len;

    while (p < end) {
        const char *hit = memmem(p, (size_t)(end - p), needle, sizeof(needle) - 1);
        char *stop;
        long long v;
        if (hit == NULL)
            return -1;
        p = hit + sizeof(needle) - 1;
        if (p >= end || !isdigit((unsigned char)*p))
            continue;
        /* The body is not NUL-terminated: the digits are read within it (the fuzzer found
         * strtoll reading past the end of "... retry in 0"). */
        v = 0;
        for (stop = (char *)p; stop < end && isdigit((unsigned char)*stop); stop++)
            v = v < 1000000000000LL ? v * 10 + (*stop - '0') : v;
        if (stop + 6 <= end && strncmp(stop, " milli", 6) == 0)
            return v;
        if (stop + 4 <= end && strncmp(stop, " sec", 4) == 0)
            return v * 1000;
    }
    return -1;
}

int64_t limiter_parse_reset(const char *value, int64_t now_epoch_ms)
{
    char *end;
    long long v;

    if (value == NULL || !isdigit((unsigned char)value[0]))
        return -1;
    v = strtoll(value, &end, 10);
    if (*end != '\0' && *end != '.')
        return -1;
    if (v > 100000000000LL) /* an epoch in milliseconds */
        return v > now_epoch_ms ? v - now_epoch_ms : 0;
    if (v > 1000000000LL) /* an epoch in seconds */
        return v * 1000 > now_epoch_ms ? v * 1000 - now_epoch_ms : 0;
    if (v <= 3600) /* small: seconds (the docs' wording) */
        return v * 1000;
    return v; /* otherwise milliseconds, as the 429 body counts */
}

static void ignore_reply(bool ok, const redisReply *reply, void *arg)
{
    (void)ok;
    (void)reply;
    (void)arg;
}

static void pause_bucket(struct limiter *lim, const char *local_key, const char *redis_key,
                         int64_t ms)
{
    struct bucket *b = bucket_get(lim, local_key);
    char arg[24];
    const char *argv[] = {"EVAL", pause_script, "1", redis_key, arg};
    int64_t until = janitor_wall_ms() + ms;

    if (until > b->state.paused_until_ms)
        b->state.paused_until_ms = until;
    if (lim->redis != NULL && cache_redis_state(lim->redis) == REDIS_UP) {
        snprintf(arg, sizeof(arg), "%lld", (long long)ms);
        cache_redis_commandv(lim->redis, ignore_reply, NULL, 5, argv);
    }
}

void limiter_learn(struct limiter *lim, const char *cred, const char *device,
                   enum limiter_kind kind, int status, const struct evkeyvalq *headers,
                   const char *body, size_t body_len)
{
    const char *limit = evhttp_find_header(headers, "X-RateLimit-Limit");
    const char *remaining = evhttp_find_header(headers, "X-RateLimit-Remaining");
    int64_t reset =
        limiter_parse_reset(evhttp_find_header(headers, "X-RateLimit-Reset"), janitor_wall_ms());
    char okey[200], dkey[300], rokey[200], rdkey[300];

    bucket_keys(cred, device, kind, okey, dkey, sizeof(okey));
    snprintf(rokey, sizeof(rokey), "stp1:b:o:%s", cred);
    snprintf(rdkey, sizeof(rdkey), "stp1:b:%c:%s:%s", kind == LIMIT_COMMAND ? 'c' : 's', cred,
             device ? device : "-");
    if (limit != NULL && isdigit((unsigned char)limit[0])) {
        long l = strtol(limit, NULL, 10);
        struct bucket *o = bucket_get(lim, okey);
        if (l > 0 && l < lim->overall.count && l != o->learned_count) {
            log_warn("limiter: the upstream reports a limit of %ld per window for credential "
                     "%.8s, below the configured %ld: using it",
                     l, cred, lim->overall.count);
            o->learned_count = l;
        }
    }
    if (status == 429) {
        int64_t wait = limiter_parse_retry_body(body, body_len);
        bool device_limit =
            kind != LIMIT_OVERALL_ONLY && remaining != NULL && strtol(remaining, NULL, 10) > 0;
        if (wait < 0)
            wait = reset >= 0 ? reset : 1000;
        metrics_inc(METRIC_UPSTREAM_429);
        log_warn("limiter: the upstream answered 429 for credential %.8s%s; pausing %s for %lld "
                 "ms",
                 cred, device_limit ? " (device limit)" : "",
                 device_limit ? "that device" : "the credential", (long long)wait);
        if (device_limit)
            pause_bucket(lim, dkey, rdkey, wait);
        else
            pause_bucket(lim, okey, rokey, wait);
        return;
    }
    if (remaining != NULL && strcmp(remaining, "0") == 0 && reset > 0)
        pause_bucket(lim, okey, rokey, reset);
}

/* ---- lifetime ------------------------------------------------------------ */

struct limiter *limiter_new(struct event_base *base, struct cache_redis *redis,
                            const struct budget *overall, const struct budget *device)
{
    struct limiter *lim = xcalloc(1, sizeof(*lim));
    unsigned char md[SHA_DIGEST_LENGTH];

    lim->base = base;
    lim->redis = redis;
    lim->overall = *overall;
    lim->device = *device;
    SHA1((const unsigned char *)check_script, strlen(check_script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(lim->check_sha + 2 * i, 3, "%02x", md[i]);
    if (redis != NULL)
        cache_redis_load_script(redis, check_script);
    return lim;
}

void limiter_set_budgets(struct limiter *lim, const struct budget *overall,
                         const struct budget *device)
{
    lim->overall = *overall;
    lim->device = *device;
}

void limiter_housekeeping(struct limiter *lim, int64_t now_ms)
{
    int64_t wall = janitor_wall_ms();
    (void)now_ms;
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        struct bucket **link = &lim->table[i];
        while (*link != NULL) {
            struct bucket *b = *link;
            /* Idle for ten minutes and not holding anything back: forget it. */
            if (wall - b->last_used_ms > 600000 && b->state.tat_ms < wall &&
                b->state.paused_until_ms < wall && b->learned_count == 0) {
                *link = b->next_in_bucket;
                free(b->key);
                free(b);
            } else {
                link = &b->next_in_bucket;
            }
        }
    }
}

void limiter_free(struct limiter *lim)
{
    if (lim == NULL)
        return;
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        while (lim->table[i] != NULL) {
            struct bucket *b = lim->table[i];
            lim->table[i] = b->next_in_bucket;
            free(b->key);
            free(b);
        }
    }
    free(lim);
}
