/*
 * oauth.c: owns an OAuth2 credential's tokens, its refreshes, the waiters
 * for a token, and the durable copy of the refresh token.
 *
 * The refresh token is single-use: once the token endpoint has answered,
 * the old one is dead and only the new one works. So the new one is
 * written to disk (and Redis) before anything else happens, and before the
 * new access token is used. What no client can close is the moment between
 * the endpoint rotating the token and its answer reaching us: a crash there
 * loses the new token. That window is one round trip; see README.
 *
 * Redis keys: stp1:o:<cred> (hash: refresh, access, expires_ms) and
 * stp1:o:<cred>:lock (the process refreshing). <cred> is a hash.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "cache_redis.h"
#include "config.h"
#include "janitor.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "oauth.h"

#define MAX_FAILURES          3      /* refresh failures in a row before giving up */
#define LOCK_TTL_MS           15000  /* the Redis refresh lock */
#define POLL_MS               150    /* a process waiting on another's refresh looks this often */
#define STARTUP_REDIS_WAIT_MS 3000   /* how long a starting process waits for Redis */
#define MAX_MARGIN_MS         300000 /* refresh at most 5 minutes early */

/* Where the credential is. */
enum oauth_state {
    OAUTH_IDLE,       /* a token that is valid, or none needed yet */
    OAUTH_LOCKING,    /* asking Redis which process refreshes */
    OAUTH_WAITING,    /* another process refreshes; watching Redis for its result */
    OAUTH_REFRESHING, /* our refresh request is at the token endpoint */
    OAUTH_FAILED,     /* the refresh token is dead: needs `stproxy auth` */
};

/* A request waiting for a token. */
struct token_waiter {
    TAILQ_ENTRY(token_waiter) link;
    oauth_token_fn fn;
    void *arg;
};
TAILQ_HEAD(waiter_list, token_waiter);

struct oauth {
    struct event_base *base;
    struct cache_redis *redis;
    struct upstream_pool *pool; /* to the token URL's origin */
    char *token_path;
    char *client_id;
    char *client_secret;
    char *state_dir;
    char cred[80];
    char lock_owner[40];
    enum oauth_state state;
    char *refresh_token; /* the latest, durable one */
    char *access_token;  /* NULL until the first refresh */
    int64_t expires_ms;  /* wall clock */
    int failures;        /* in a row */
    char *sent_refresh;  /* the refresh token our request at the endpoint carries */
    int64_t started_ms;  /* start-up: wait briefly for Redis before refreshing alone */
    bool recovered;      /* an invalid_grant was followed up once */
    char failure[300];   /* why FAILED */
    time_t state_mtime;  /* of the state file when FAILED: a new one revives */
    struct event *timer; /* proactive refresh, retry, or poll */
    struct waiter_list waiters;
};

static void refresh_start(struct oauth *oa);
static void recover_start(struct oauth *oa);

static void set_secret(char **slot, const char *value)
{
    if (*slot != NULL) {
        OPENSSL_cleanse(*slot, strlen(*slot));
        free(*slot);
    }
    *slot = value ? xstrdup(value) : NULL;
}

/* ---- the state file ------------------------------------------------------ */

char *oauth_state_path(const char *state_dir, const char *client_id)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t len = strlen(state_dir) + 64;
    char *path = xmalloc(len);

    /* Named by a hash: the client id is not secret, but a name keeps paths tidy. */
    SHA256((const unsigned char *)client_id, strlen(client_id), md);
    snprintf(path, len, "%s/oauth-%02x%02x%02x%02x%02x%02x%02x%02x.token", state_dir, md[0], md[1],
             md[2], md[3], md[4], md[5], md[6], md[7]);
    return path;
}

bool oauth_state_write(const char *state_dir, const char *client_id, const char *refresh_token,
                       char *err, size_t errlen)
{
    char *path = oauth_state_path(state_dir, client_id);
    size_t tlen = strlen(path) + 8;
    char *tmp = xmalloc(tlen);
    int fd = -1, dfd;
    bool ok = false;
    size_t n = strlen(refresh_token);

    snprintf(tmp, tlen, "%s.tmp", path);
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", state_dir, strerror(errno));
        goto done;
    }
    unlink(tmp); /* a crash may have left one; it is never the only copy */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, refresh_token, n) != (ssize_t)n || write(fd, "\n", 1) != 1 ||
        fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        goto done;
    }
    /* The rename is durable only once the directory is. */
    dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "cannot sync %s: %s", state_dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        goto done;
    }
    close(dfd);
    ok = true;
done:
    if (fd >= 0)
        close(fd);
    if (!ok)
        unlink(tmp);
    free(tmp);
    free(path);
    return ok;
}

char *oauth_state_read(const char *state_dir, const char *client_id)
{
    char *path = oauth_state_path(state_dir, client_id);
    char buf[4096];
    FILE *f = fopen(path, "r");
    size_t n;

    free(path);
    if (f == NULL)
        return NULL;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    if (n == 0)
        return NULL;
    path = xstrdup(buf);
    OPENSSL_cleanse(buf, sizeof(buf));
    return path;
}

static time_t state_mtime(const struct oauth *oa)
{
    char *path = oauth_state_path(oa->state_dir, oa->client_id);
    struct stat st;
    time_t t = stat(path, &st) == 0 ? st.st_mtime : 0;
    free(path);
    return t;
}

/* ---- the token endpoint -------------------------------------------------- */

static char *json_string(const char *js, const jsmntok_t *t)
{
    /* Token values are plain ASCII; escapes other than \/ do not occur. */
    char *out = xmalloc((size_t)(t->end - t->start) + 1), *o = out;
    for (int i = t->start; i < t->end; i++) {
        if (js[i] == '\\' && i + 1 < t->end)
            i++;
        *o++ = js[i];
    }
    *o = '\0';
    return out;
}

/* Puts value in *slot, wiping and freeing what was there. */
static void replace_string(char **slot, char *value)
{
    if (*slot != NULL) {
        OPENSSL_cleanse(*slot, strlen(*slot));
        free(*slot);
    }
    *slot = value;
}

/* The decimal number in [p, end) (the body is not NUL-terminated); 0 when there is none. */
static long bounded_long(const char *p, const char *end)
{
    long v = 0;

    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v < 100000000L ? v * 10 + (*p - '0') : v;
    return v;
}

bool oauth_parse_answer(const char *body, size_t len, struct oauth_answer *out)
{
    jsmn_parser p;
    jsmntok_t tok[128];
    int n;

    memset(out, 0, sizeof(*out));
    jsmn_init(&p);
    n = jsmn_parse(&p, body, len, tok, sizeof(tok) / sizeof(tok[0]));
    if (n < 1 || tok[0].type != JSMN_OBJECT)
        return false;
    for (int i = 1; i + 1 < n; i++) {
        const jsmntok_t *k = &tok[i], *v = &tok[i + 1];
        size_t klen = (size_t)(k->end - k->start);
        const char *key = body + k->start;
        if (k->type != JSMN_STRING || v->start < tok[0].start) {
            continue;
        }
#define KEY_IS(s) (klen == sizeof(s) - 1 && memcmp(key, s, klen) == 0)
        /* A key given twice keeps its last value (the fuzzer found the first one leaked). */
        if (v->type == JSMN_STRING && KEY_IS("access_token"))
            replace_string(&out->access_token, json_string(body, v));
        else if (v->type == JSMN_STRING && KEY_IS("refresh_token"))
            replace_string(&out->refresh_token, json_string(body, v));
        else if (v->type == JSMN_STRING && KEY_IS("error"))
            replace_string(&out->error, json_string(body, v));
        else if (v->type == JSMN_STRING && KEY_IS("error_description"))
            replace_string(&out->error_description, json_string(body, v));
        else if (v->type == JSMN_PRIMITIVE && KEY_IS("expires_in"))
            out->expires_in = bounded_long(body + v->start, body + v->end);
#undef KEY_IS
        /* skip the value (answers are flat: values are scalars) */
        i++;
    }
    return true;
}

void oauth_answer_free(struct oauth_answer *a)
{
    set_secret(&a->access_token, NULL);
    set_secret(&a->refresh_token, NULL);
    free(a->error);
    free(a->error_description);
    memset(a, 0, sizeof(*a));
}

struct upstream_pool *oauth_token_pool(struct event_base *base, const char *token_url, SSL_CTX *tls,
                                       char **path)
{
    struct evhttp_uri *uri = evhttp_uri_parse(token_url);
    struct upstream_settings us;
    struct upstream_pool *pool;
    const char *p;

    if (uri == NULL)
        return NULL;
    memset(&us, 0, sizeof(us));
    us.host = evhttp_uri_get_host(uri);
    us.port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 443;
    us.tls = tls;
    us.max_connections = 2;
    us.connect_timeout_ms = 5000;
    us.timeout_ms = 10000;
    us.max_body = 65536;
    pool = upstream_pool_new(base, &us);
    p = evhttp_uri_get_path(uri);
    *path = xstrdup(p && *p ? p : "/");
    evhttp_uri_free(uri);
    return pool;
}

void oauth_post_form(struct upstream_pool *pool, const char *path, const char *client_id,
                     const char *client_secret, const char *form, upstream_done_fn done, void *arg)
{
    struct evkeyvalq headers;
    struct evbuffer *body = evbuffer_new();
    size_t clen = strlen(client_id) + strlen(client_secret) + 2;
    char *creds = xmalloc(clen);
    char basic[1024] = "Basic ";
    int n;

    snprintf(creds, clen, "%s:%s", client_id, client_secret);
    n = EVP_EncodeBlock((unsigned char *)basic + 6, (const unsigned char *)creds,
                        (int)strlen(creds));
    if (n < 0 || (size_t)n > sizeof(basic) - 7)
        basic[6] = '\0';
    OPENSSL_cleanse(creds, clen);
    free(creds);
    TAILQ_INIT(&headers);
    evhttp_add_header(&headers, "Authorization", basic);
    evhttp_add_header(&headers, "Content-Type", "application/x-www-form-urlencoded");
    evhttp_add_header(&headers, "Accept", "application/json");
    evbuffer_add(body, form, strlen(form));
    upstream_send(pool, "POST", path, &headers, body, done, arg);
    OPENSSL_cleanse(basic, sizeof(basic));
    evhttp_clear_headers(&headers);
    evbuffer_free(body);
}

/* ---- waiters and state --------------------------------------------------- */

static bool token_valid(const struct oauth *oa, int64_t now)
{
    return oa->access_token != NULL && now < oa->expires_ms;
}

static void answer_waiters(struct oauth *oa)
{
    struct token_waiter *w;
    while ((w = TAILQ_FIRST(&oa->waiters)) != NULL) {
        TAILQ_REMOVE(&oa->waiters, w, link);
        if (oa->state == OAUTH_FAILED || oa->access_token == NULL)
            w->fn(NULL, oa->failure[0] ? oa->failure : "no access token yet", w->arg);
        else
            w->fn(oa->access_token, NULL, w->arg);
        free(w);
    }
}

static void set_failed(struct oauth *oa, const char *why)
{
    snprintf(oa->failure, sizeof(oa->failure),
             "the OAuth2 credential needs re-authorisation: %s; run `stproxy auth`", why);
    log_error("oauth: %s", oa->failure);
    oa->state = OAUTH_FAILED;
    oa->state_mtime = state_mtime(oa);
    metrics_set(METRIC_CREDENTIAL_FAILED, 1);
    answer_waiters(oa);
}

static void schedule(struct oauth *oa, int64_t ms)
{
    struct timeval tv;
    if (ms < 0)
        ms = 0;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(oa->timer, &tv);
}

/* Takes up new tokens: the refresh token is already durable. */
static void adopt(struct oauth *oa, const char *access, int64_t expires_ms)
{
    int64_t now = janitor_wall_ms(), lifetime = expires_ms - now, margin = lifetime / 10;

    set_secret(&oa->access_token, access);
    oa->expires_ms = expires_ms;
    oa->failures = 0;
    oa->recovered = false;
    oa->state = OAUTH_IDLE;
    metrics_set(METRIC_CREDENTIAL_FAILED, 0);
    if (margin > MAX_MARGIN_MS)
        margin = MAX_MARGIN_MS;
    schedule(oa, lifetime - margin); /* refresh before it expires */
    answer_waiters(oa);
}

static void ignore_reply(bool ok, const redisReply *reply, void *arg)
{
    (void)ok;
    (void)reply;
    (void)arg;
}

static bool redis_up(const struct oauth *oa)
{
    return oa->redis != NULL && cache_redis_state(oa->redis) == REDIS_UP;
}

static void release_lock(struct oauth *oa)
{
    static const char script[] =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
        "return 0";
    char key[160];
    const char *argv[] = {"EVAL", script, "1", key, oa->lock_owner};

    if (!redis_up(oa))
        return;
    snprintf(key, sizeof(key), "stp1:o:%s:lock", oa->cred);
    cache_redis_commandv(oa->redis, ignore_reply, NULL, 5, argv);
}

/* ---- refreshing ---------------------------------------------------------- */

static void refresh_failed(struct oauth *oa, const char *why)
{
    release_lock(oa);
    metrics_inc(METRIC_OAUTH_REFRESH_FAILURES);
    if (++oa->failures >= MAX_FAILURES) {
        char reason[300];
        snprintf(reason, sizeof(reason), "%d refreshes failed in a row (last: %s)", oa->failures,
                 why);
        set_failed(oa, reason);
        return;
    }
    log_warn("oauth: refresh failed (%s); retrying in %d s", why, oa->failures);
    oa->state = OAUTH_IDLE;
    schedule(oa, 1000L * oa->failures);
}

static void refresh_done(enum upstream_result result, struct upstream_response *resp,
                         const char *detail, void *arg)
{
    struct oauth *oa = arg;
    struct oauth_answer ans;
    char err[300];
    const char *body;
    size_t len;

    if (result != UPSTREAM_OK) {
        refresh_failed(oa, detail);
        return;
    }
    body = (const char *)evbuffer_pullup(resp->body, -1);
    len = evbuffer_get_length(resp->body);
    if (!oauth_parse_answer(body, len, &ans)) {
        snprintf(err, sizeof(err), "the token endpoint answered %d without JSON", resp->status);
        refresh_failed(oa, err);
        return;
    }
    if (ans.error != NULL && strcmp(ans.error, "invalid_grant") == 0) {
        oauth_answer_free(&ans);
        release_lock(oa);
        metrics_inc(METRIC_OAUTH_REFRESH_FAILURES);
        if (!oa->recovered) {
            /* Another process may have rotated it first: look for a newer one. */
            oa->recovered = true;
            oa->state = OAUTH_IDLE;
            recover_start(oa);
            return;
        }
        set_failed(oa, "the token endpoint refused the refresh token (invalid_grant)");
        return;
    }
    if (resp->status != 200 || ans.access_token == NULL) {
        snprintf(err, sizeof(err), "the token endpoint answered %d %s", resp->status,
                 ans.error ? ans.error : "");
        oauth_answer_free(&ans);
        refresh_failed(oa, err);
        return;
    }
    if (ans.refresh_token != NULL) {
        /* Durable first: the old refresh token is already dead. */
        set_secret(&oa->refresh_token, ans.refresh_token);
        if (!oauth_state_write(oa->state_dir, oa->client_id, oa->refresh_token, err, sizeof(err)))
            log_error("oauth: the new refresh token is only in memory: %s", err);
    }
    {
        int64_t expires = janitor_wall_ms() + (ans.expires_in > 0 ? ans.expires_in : 3600) * 1000;
        if (redis_up(oa)) {
            char key[160], exp[24];
            const char *argv[] = {
                "HSET",           key,          "refresh", oa->refresh_token, "access",
                ans.access_token, "expires_ms", exp};
            snprintf(key, sizeof(key), "stp1:o:%s", oa->cred);
            snprintf(exp, sizeof(exp), "%lld", (long long)expires);
            cache_redis_commandv(oa->redis, ignore_reply, NULL, 8, argv);
            release_lock(oa);
        }
        metrics_inc(METRIC_OAUTH_REFRESHES);
        log_info("oauth: refreshed the access token; it lives %ld s", ans.expires_in);
        adopt(oa, ans.access_token, expires);
    }
    oauth_answer_free(&ans);
}

/* The shared record (HGETALL stp1:o:<cred>): fields point into reply. */
struct shared_record {
    const char *refresh;
    const char *access;
    int64_t expires_ms;
};

static void parse_shared(bool ok, const redisReply *reply, struct shared_record *rec)
{
    memset(rec, 0, sizeof(*rec));
    if (!ok || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const char *k = reply->element[i]->str, *v = reply->element[i + 1]->str;
        if (strcmp(k, "refresh") == 0)
            rec->refresh = v;
        else if (strcmp(k, "access") == 0)
            rec->access = v;
        else if (strcmp(k, "expires_ms") == 0)
            rec->expires_ms = strtoll(v, NULL, 10);
    }
}

/* After an invalid_grant: a newer refresh token in the state file or in
 * Redis (another process rotated ours) is tried once; none means dead. */
static void recover_reply(bool ok, const redisReply *reply, void *arg)
{
    struct oauth *oa = arg;
    struct shared_record rec;
    const char *refresh, *access;
    int64_t expires;

    parse_shared(ok, reply, &rec);
    refresh = rec.refresh;
    access = rec.access;
    expires = rec.expires_ms;
    if (refresh != NULL && oa->sent_refresh != NULL && strcmp(refresh, oa->sent_refresh) != 0) {
        char err[300];
        log_info("oauth: another process had rotated the refresh token; using its one");
        set_secret(&oa->refresh_token, refresh);
        if (!oauth_state_write(oa->state_dir, oa->client_id, refresh, err, sizeof(err)))
            log_warn("oauth: cannot store the shared refresh token: %s", err);
        if (access != NULL && expires - janitor_wall_ms() > 1000) {
            adopt(oa, access, expires);
            return;
        }
        refresh_start(oa);
        return;
    }
    set_failed(oa, "the token endpoint refused the refresh token (invalid_grant)");
}

static void recover_start(struct oauth *oa)
{
    char *stored = oauth_state_read(oa->state_dir, oa->client_id);

    if (stored != NULL && oa->sent_refresh != NULL && strcmp(stored, oa->sent_refresh) != 0) {
        log_info("oauth: the state file holds a newer refresh token; using it");
        set_secret(&oa->refresh_token, stored);
        OPENSSL_cleanse(stored, strlen(stored));
        free(stored);
        refresh_start(oa);
        return;
    }
    if (stored != NULL) {
        OPENSSL_cleanse(stored, strlen(stored));
        free(stored);
    }
    if (redis_up(oa)) {
        char key[160];
        const char *argv[] = {"HGETALL", key};
        snprintf(key, sizeof(key), "stp1:o:%s", oa->cred);
        cache_redis_commandv(oa->redis, recover_reply, oa, 2, argv);
        return;
    }
    set_failed(oa, "the token endpoint refused the refresh token (invalid_grant)");
}

static void post_refresh(struct oauth *oa)
{
    char *rt = evhttp_encode_uri(oa->refresh_token);
    char *id = evhttp_encode_uri(oa->client_id);
    size_t len = strlen(rt) + strlen(id) + 64;
    char *form = xmalloc(len);

    snprintf(form, len, "grant_type=refresh_token&refresh_token=%s&client_id=%s", rt, id);
    set_secret(&oa->sent_refresh, oa->refresh_token);
    oa->state = OAUTH_REFRESHING;
    oauth_post_form(oa->pool, oa->token_path, oa->client_id, oa->client_secret, form, refresh_done,
                    oa);
    OPENSSL_cleanse(form, len);
    OPENSSL_cleanse(rt, strlen(rt));
    free(form);
    free(rt);
    free(id);
}

/* Reads the shared record; adopts another process's fresh token. */
static void shared_reply(bool ok, const redisReply *reply, void *arg)
{
    struct oauth *oa = arg;
    struct shared_record rec;
    const char *refresh, *access;
    int64_t expires, now = janitor_wall_ms();

    parse_shared(ok, reply, &rec);
    refresh = rec.refresh;
    access = rec.access;
    expires = rec.expires_ms;
    if (refresh != NULL && (oa->refresh_token == NULL || strcmp(refresh, oa->refresh_token))) {
        char err[300];
        /* Another process rotated it: that one is the live one now. */
        set_secret(&oa->refresh_token, refresh);
        if (!oauth_state_write(oa->state_dir, oa->client_id, refresh, err, sizeof(err)))
            log_warn("oauth: cannot store the shared refresh token: %s", err);
    }
    if (access != NULL && expires - now > 1000 &&
        (oa->access_token == NULL || strcmp(access, oa->access_token) != 0)) {
        release_lock(oa);
        adopt(oa, access, expires);
        return;
    }
    if (oa->state == OAUTH_WAITING) {
        schedule(oa, POLL_MS); /* keep watching */
        return;
    }
    post_refresh(oa); /* we hold the lock */
}

static void read_shared(struct oauth *oa)
{
    char key[160];
    const char *argv[] = {"HGETALL", key};
    snprintf(key, sizeof(key), "stp1:o:%s", oa->cred);
    cache_redis_commandv(oa->redis, shared_reply, oa, 2, argv);
}

static void lock_reply(bool ok, const redisReply *reply, void *arg)
{
    struct oauth *oa = arg;

    if (!ok) {
        post_refresh(oa); /* no Redis: refresh alone */
        return;
    }
    if (reply->type == REDIS_REPLY_STATUS) {
        oa->state = OAUTH_LOCKING; /* ours: but first see whether it is still needed */
        read_shared(oa);
        return;
    }
    oa->state = OAUTH_WAITING; /* another process refreshes */
    schedule(oa, POLL_MS);
}

static void refresh_start(struct oauth *oa)
{
    char key[160], ttl[16];
    const char *argv[] = {"SET", key, oa->lock_owner, "NX", "PX", ttl};

    if (oa->state == OAUTH_FAILED || oa->state == OAUTH_LOCKING || oa->state == OAUTH_REFRESHING ||
        oa->state == OAUTH_WAITING)
        return;
    if (oa->redis != NULL && cache_redis_state(oa->redis) == REDIS_CONNECTING &&
        janitor_wall_ms() - oa->started_ms < STARTUP_REDIS_WAIT_MS) {
        /* Just started: another process may hold newer tokens in Redis, and
         * refreshing with a used refresh token would kill the credential. */
        schedule(oa, 50);
        return;
    }
    if (!redis_up(oa)) {
        post_refresh(oa);
        return;
    }
    snprintf(key, sizeof(key), "stp1:o:%s:lock", oa->cred);
    snprintf(ttl, sizeof(ttl), "%d", LOCK_TTL_MS);
    oa->state = OAUTH_LOCKING;
    cache_redis_commandv(oa->redis, lock_reply, oa, 6, argv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct oauth *oa = arg;
    (void)fd;
    (void)what;

    if (oa->state == OAUTH_WAITING) {
        if (redis_up(oa)) {
            read_shared(oa);
            return;
        }
        oa->state = OAUTH_IDLE; /* Redis went away: refresh alone */
    }
    refresh_start(oa);
}

/* ---- the interface ------------------------------------------------------- */

void oauth_with_token(struct oauth *oa, oauth_token_fn fn, void *arg)
{
    struct token_waiter *w;

    if (oa->state == OAUTH_FAILED) {
        /* `stproxy auth` may have written a new token since. */
        time_t m = state_mtime(oa);
        char *rt = m != oa->state_mtime ? oauth_state_read(oa->state_dir, oa->client_id) : NULL;
        if (rt == NULL) {
            fn(NULL, oa->failure, arg);
            return;
        }
        log_info("oauth: a new refresh token was stored; trying it");
        set_secret(&oa->refresh_token, rt);
        OPENSSL_cleanse(rt, strlen(rt));
        free(rt);
        oa->failure[0] = '\0';
        oa->failures = 0;
        oa->state = OAUTH_IDLE;
    }
    if (token_valid(oa, janitor_wall_ms())) {
        fn(oa->access_token, NULL, arg);
        return;
    }
    w = xcalloc(1, sizeof(*w));
    w->fn = fn;
    w->arg = arg;
    TAILQ_INSERT_TAIL(&oa->waiters, w, link);
    refresh_start(oa);
}

void oauth_rejected(struct oauth *oa, const char *token_used)
{
    if (oa->access_token == NULL || strcmp(token_used, oa->access_token) != 0)
        return; /* an older token: the refresh already happened */
    log_warn("oauth: the upstream rejected the access token; refreshing now");
    oa->expires_ms = 0;
    refresh_start(oa);
}

const char *oauth_failure(const struct oauth *oa)
{
    return oa->state == OAUTH_FAILED ? oa->failure : NULL;
}

struct oauth *oauth_new(struct event_base *base, const struct config *cfg, SSL_CTX *tls,
                        struct cache_redis *redis, const char *cred_id, char *err, size_t errlen)
{
    struct oauth *oa = xcalloc(1, sizeof(*oa));
    unsigned char rnd[12];
    char *stored;

    oa->base = base;
    oa->redis = redis;
    oa->client_id = xstrdup(cfg->oauth_client_id);
    oa->client_secret = xstrdup(cfg->oauth_client_secret);
    oa->state_dir = xstrdup(cfg->state_dir);
    snprintf(oa->cred, sizeof(oa->cred), "%s", cred_id);
    TAILQ_INIT(&oa->waiters);
    oa->timer = evtimer_new(base, timer_cb, oa);
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0x33, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(oa->lock_owner + 2 * i, 3, "%02x", rnd[i]);
    oa->pool = oauth_token_pool(base, cfg->oauth_token_url, tls, &oa->token_path);
    /* The stored token wins: the configured one was used up by a rotation. */
    stored = oauth_state_read(cfg->state_dir, cfg->oauth_client_id);
    if (stored != NULL) {
        set_secret(&oa->refresh_token, stored);
        OPENSSL_cleanse(stored, strlen(stored));
        free(stored);
    } else if (cfg->oauth_refresh_token != NULL) {
        set_secret(&oa->refresh_token, cfg->oauth_refresh_token);
    } else {
        snprintf(err, errlen,
                 "oauth_client_id: no refresh token: run `stproxy auth` (or set "
                 "oauth_refresh_token)");
        oauth_free(oa);
        return NULL;
    }
    if (oa->pool == NULL) {
        snprintf(err, errlen, "oauth_token_url: cannot use it");
        oauth_free(oa);
        return NULL;
    }
    oa->started_ms = janitor_wall_ms();
    schedule(oa, 0); /* fetch the first access token right away */
    return oa;
}

void oauth_free(struct oauth *oa)
{
    if (oa == NULL)
        return;
    oa->state = OAUTH_FAILED;
    snprintf(oa->failure, sizeof(oa->failure), "the proxy is shutting down");
    answer_waiters(oa);
    if (oa->pool != NULL)
        upstream_pool_free(oa->pool); /* a refresh in flight ends here (refresh_done) */
    event_free(oa->timer);
    set_secret(&oa->refresh_token, NULL);
    set_secret(&oa->access_token, NULL);
    set_secret(&oa->client_secret, NULL);
    set_secret(&oa->sent_refresh, NULL);
    free(oa->client_id);
    free(oa->state_dir);
    free(oa->token_path);
    free(oa);
}
