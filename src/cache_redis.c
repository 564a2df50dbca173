/*
 * cache_redis.c: owns the two hiredis connections (commands, and the
 * subscription to the fill channel), their reconnection, and the deadline
 * of every command.
 *
 * An op is one command in flight. hiredis owns the reply and calls back
 * exactly once per command, also when the connection dies (with a NULL
 * reply). Our deadline may fire first: the op is then answered as failed
 * and marked abandoned, and hiredis's later callback only frees it. So the
 * caller hears once, and the op is freed once.
 *
 * Host names are resolved with evdns first, because hiredis 0.14 resolves
 * with blocking getaddrinfo and nothing may block the loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>

#include "cache_redis.h"
#include "config.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

#define BACKOFF_MIN_MS            100
#define BACKOFF_MAX_MS            5000
#define FAILURES_BEFORE_RECONNECT 3 /* command deadlines missed in a row */

/* Where one command is. */
enum op_state {
    OP_PENDING,   /* sent; the caller waits */
    OP_ABANDONED, /* the caller was told it failed (or will be: never sent); hiredis may still
                     owe a callback */
    OP_DROPPED,   /* shutdown: the caller is not told; its drop function frees what it owns */
};

/* One command in flight. */
struct redis_op {
    TAILQ_ENTRY(redis_op) link; /* in r->ops until answered (or, unsent, failed) */
    struct cache_redis *r;
    enum op_state state;
    redis_reply_fn fn;
    redis_drop_fn drop; /* NULL: arg owns nothing */
    void *arg;
    bool sent; /* hiredis has it (and owes a callback) */
    struct event *deadline;
};

TAILQ_HEAD(redis_op_list, redis_op);

struct cache_redis {
    struct event_base *base;
    struct redis_op_list ops; /* not yet answered by hiredis, or not sent and not yet failed */
    struct evdns_base *dns;
    struct redis_address addr; /* owned copy */
    char *channel;
    redis_message_fn on_message;
    void *message_arg;
    long timeout_ms;
    enum redis_state state;
    redisAsyncContext *ac;  /* commands; NULL while down */
    redisAsyncContext *sub; /* the subscription; NULL while down */
    struct evdns_getaddrinfo_request *resolving;
    char ip[INET6_ADDRSTRLEN];   /* the resolved address */
    struct event *retry_timer;   /* next connect attempt */
    struct event *connect_timer; /* a connect must finish by then */
    long backoff_ms;
    int failures;     /* deadlines missed in a row */
    bool logged_down; /* "unavailable" said once per outage */
    char where[300];  /* host:port or socket path, for logs */
    char *scripts[8]; /* Lua scripts loaded on every connect */
    int nscripts;
};

static void start_connect(struct cache_redis *r);
static void ignore_reply(redisAsyncContext *ac, void *reply, void *privdata);

const char *cache_redis_state_name(enum redis_state state)
{
    switch (state) {
    case REDIS_CONNECTING:
        return "connecting";
    case REDIS_UP:
        return "connected";
    case REDIS_DOWN:
        return "unavailable";
    }
    return "unknown";
}

void cache_redis_load_script(struct cache_redis *r, const char *script)
{
    if (r->nscripts == (int)(sizeof(r->scripts) / sizeof(r->scripts[0])))
        abort(); /* a programming error: raise the array */
    r->scripts[r->nscripts++] = xstrdup(script);
    if (r->ac != NULL)
        redisAsyncCommand(r->ac, ignore_reply, NULL, "SCRIPT LOAD %s", script);
}

void cache_redis_set_message_arg(struct cache_redis *r, void *arg)
{
    r->message_arg = arg;
}

enum redis_state cache_redis_state(const struct cache_redis *r)
{
    return r->state;
}

static void set_state(struct cache_redis *r, enum redis_state state, const char *why)
{
    if (state == r->state)
        return;
    if (state == REDIS_UP) {
        log_info("redis: connected to %s; the cache, flights and budgets are shared again",
                 r->where);
        r->logged_down = false;
    } else if (state == REDIS_DOWN && !r->logged_down) {
        log_warn("redis: %s unavailable (%s); serving from the embedded cache, with local budgets "
                 "at a conservative share, and reconnecting",
                 r->where, why);
        r->logged_down = true;
    }
    r->state = state;
    metrics_set(METRIC_REDIS_UP, state == REDIS_UP);
}

/* ---- commands ----------------------------------------------------------- */

static void op_free(struct redis_op *op)
{
    event_free(op->deadline);
    free(op);
}

/* hiredis has answered (or dropped) a sent op, or a never-sent one is done. */
static void op_unlink(struct redis_op *op)
{
    TAILQ_REMOVE(&op->r->ops, op, link);
}

static void drop_connections(struct cache_redis *r, const char *why);

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_op *op = privdata;
    const redisReply *rep = reply;
    (void)ac;

    op_unlink(op);
    if (op->state != OP_PENDING) {
        if (op->state == OP_DROPPED && op->drop != NULL)
            op->drop(op->arg);
        op_free(op);
        return;
    }
    event_del(op->deadline);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        if (rep != NULL)
            log_warn("redis: command failed: %.*s", (int)rep->len, rep->str);
        metrics_inc(METRIC_REDIS_ERRORS);
        op->fn(false, NULL, op->arg);
    } else {
        op->r->failures = 0;
        op->fn(true, rep, op->arg);
    }
    op_free(op);
}

static void op_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis_op *op = arg;
    struct cache_redis *r = op->r;
    (void)fd;
    (void)what;

    if (!op->sent) {
        /* Never sent (Redis was down): nobody else will free it. */
        op_unlink(op);
        op->fn(false, NULL, op->arg);
        op_free(op);
        return;
    }
    op->state = OP_ABANDONED;
    metrics_inc(METRIC_REDIS_ERRORS);
    op->fn(false, NULL, op->arg);
    if (++r->failures >= FAILURES_BEFORE_RECONNECT && r->state == REDIS_UP)
        drop_connections(r, "commands time out");
}

void cache_redis_command_owned(struct cache_redis *r, redis_reply_fn fn, redis_drop_fn drop,
                               void *arg, int argc, const char **argv, const size_t *argvlen)
{
    struct redis_op *op = xcalloc(1, sizeof(*op));
    struct timeval tv = {0, 0};

    op->r = r;
    op->fn = fn;
    op->drop = drop;
    op->arg = arg;
    op->deadline = evtimer_new(r->base, op_deadline_cb, op);
    TAILQ_INSERT_TAIL(&r->ops, op, link);
    if (r->state != REDIS_UP || r->ac == NULL ||
        redisAsyncCommandArgv(r->ac, reply_cb, op, argc, argv, argvlen) != REDIS_OK) {
        /* Report the failure from the loop, never from inside this call. */
        op->state = OP_ABANDONED;
        evtimer_add(op->deadline, &tv);
        return;
    }
    op->sent = true;
    tv.tv_sec = r->timeout_ms / 1000;
    tv.tv_usec = (r->timeout_ms % 1000) * 1000;
    evtimer_add(op->deadline, &tv);
}

void cache_redis_command(struct cache_redis *r, redis_reply_fn fn, void *arg, int argc,
                         const char **argv, const size_t *argvlen)
{
    cache_redis_command_owned(r, fn, NULL, arg, argc, argv, argvlen);
}

void cache_redis_commandv(struct cache_redis *r, redis_reply_fn fn, void *arg, int argc,
                          const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc && i < 16; i++)
        lens[i] = strlen(argv[i]);
    cache_redis_command(r, fn, arg, argc, argv, lens);
}

/* ---- connections -------------------------------------------------------- */

static void schedule_retry(struct cache_redis *r)
{
    struct timeval tv = {r->backoff_ms / 1000, (r->backoff_ms % 1000) * 1000};
    evtimer_add(r->retry_timer, &tv);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Closes both connections (their pending commands fail) and retries later. */
static void drop_connections(struct cache_redis *r, const char *why)
{
    redisAsyncContext *ac = r->ac, *sub = r->sub;

    r->ac = NULL;
    r->sub = NULL;
    event_del(r->connect_timer);
    set_state(r, REDIS_DOWN, why);
    /* hiredis answers every pending command with NULL and frees the
     * context; inside one of its callbacks it defers that itself. */
    if (ac != NULL)
        redisAsyncFree(ac);
    if (sub != NULL)
        redisAsyncFree(sub);
    if (!evtimer_pending(r->retry_timer, NULL))
        schedule_retry(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct cache_redis *r = ac->data;
    char why[160];

    if (r == NULL || (ac != r->ac && ac != r->sub))
        return; /* a context we already let go of */
    snprintf(why, sizeof(why), "%s", status == REDIS_OK ? "connection closed" : ac->errstr);
    if (ac == r->ac)
        r->ac = NULL;
    else
        r->sub = NULL;
    drop_connections(r, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct cache_redis *r = ac->data;

    if (r == NULL || status == REDIS_OK)
        return; /* success is judged by the PING reply */
    /* hiredis frees a context whose connect failed, after this returns. */
    if (ac == r->ac)
        r->ac = NULL;
    else if (ac == r->sub)
        r->sub = NULL;
    drop_connections(r, ac->errstr[0] ? ac->errstr : "cannot connect");
}

static void ping_cb(bool ok, const redisReply *reply, void *arg)
{
    struct cache_redis *r = arg;
    (void)reply;

    if (!ok) {
        if (r->ac != NULL || r->sub != NULL)
            drop_connections(r, "does not answer PING (or AUTH/SELECT failed)");
        return;
    }
    event_del(r->connect_timer);
    r->backoff_ms = BACKOFF_MIN_MS;
    r->failures = 0;
    set_state(r, REDIS_UP, NULL);
}

static void message_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cache_redis *r = privdata;
    const redisReply *rep = reply;
    (void)ac;

    /* ["message", channel, payload]; the subscribe confirmation is ignored */
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || strcmp(rep->element[0]->str, "message") != 0)
        return;
    if (r->on_message != NULL && r->message_arg != NULL &&
        rep->element[2]->type == REDIS_REPLY_STRING)
        r->on_message(rep->element[2]->str, rep->element[2]->len, r->message_arg);
}

static void ignore_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    (void)reply;
    (void)privdata;
}

/* Makes one context with AUTH and SELECT queued; NULL on failure. */
static redisAsyncContext *connect_one(struct cache_redis *r)
{
    redisAsyncContext *ac;

    if (r->addr.path != NULL)
        ac = redisAsyncConnectUnix(r->addr.path);
    else
        ac = redisAsyncConnect(r->ip, r->addr.port);
    if (ac == NULL)
        return NULL;
    if (ac->err) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->addr.password != NULL)
        redisAsyncCommand(ac, ignore_reply, NULL, "AUTH %s", r->addr.password);
    if (r->addr.db != 0)
        redisAsyncCommand(ac, ignore_reply, NULL, "SELECT %d", r->addr.db);
    return ac;
}

static void connect_resolved(struct cache_redis *r)
{
    const char *ping[] = {"PING"};

    r->ac = connect_one(r);
    r->sub = connect_one(r);
    if (r->ac == NULL || r->sub == NULL) {
        drop_connections(r, "cannot create a connection");
        return;
    }
    redisAsyncCommand(r->sub, message_cb, r, "SUBSCRIBE %s", r->channel);
    /* Loaded before the PING that declares Redis up, so EVALSHA never meets
     * a Redis that does not know the script yet. */
    for (int i = 0; i < r->nscripts; i++)
        redisAsyncCommand(r->ac, ignore_reply, NULL, "SCRIPT LOAD %s", r->scripts[i]);
    /* Commands are refused until PING answers; send it on the raw context. */
    {
        struct redis_op *op = xcalloc(1, sizeof(*op));
        struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
        op->r = r;
        op->fn = ping_cb;
        op->arg = r;
        op->deadline = evtimer_new(r->base, op_deadline_cb, op);
        op->sent = true;
        evtimer_add(op->deadline, &tv);
        TAILQ_INSERT_TAIL(&r->ops, op, link);
        redisAsyncCommandArgv(r->ac, reply_cb, op, 1, ping, NULL);
    }
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct cache_redis *r = arg;

    r->resolving = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (result != 0 || res == NULL) {
        drop_connections(r, evutil_gai_strerror(result));
        if (res != NULL)
            evutil_freeaddrinfo(res);
        return;
    }
    if (res->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, r->ip,
                  sizeof(r->ip));
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, r->ip, sizeof(r->ip));
    evutil_freeaddrinfo(res);
    connect_resolved(r);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cache_redis *r = arg;
    (void)fd;
    (void)what;
    if (r->resolving != NULL) {
        struct evdns_getaddrinfo_request *req = r->resolving;
        r->resolving = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    drop_connections(r, "connect timed out");
}

static void start_connect(struct cache_redis *r)
{
    struct timeval tv;
    long ms = r->timeout_ms * 4 < 1000 ? 1000 : r->timeout_ms * 4;

    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(r->connect_timer, &tv);
    if (r->state != REDIS_CONNECTING && r->state != REDIS_DOWN)
        r->state = REDIS_CONNECTING;
    if (r->addr.path != NULL) {
        connect_resolved(r);
    } else {
        struct evutil_addrinfo hints;
        char port[8];
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(port, sizeof(port), "%d", r->addr.port);
        r->resolving = evdns_getaddrinfo(r->dns, r->addr.host, port, &hints, dns_cb, r);
    }
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_connect(arg);
}

struct cache_redis *cache_redis_new(struct event_base *base, const struct redis_address *addr,
                                    long timeout_ms, const char *channel,
                                    redis_message_fn on_message, void *arg)
{
    struct cache_redis *r = xcalloc(1, sizeof(*r));

    r->base = base;
    r->addr.host = addr->host ? xstrdup(addr->host) : NULL;
    r->addr.port = addr->port;
    r->addr.path = addr->path ? xstrdup(addr->path) : NULL;
    r->addr.password = addr->password ? xstrdup(addr->password) : NULL;
    r->addr.db = addr->db;
    r->channel = xstrdup(channel);
    r->on_message = on_message;
    r->message_arg = arg;
    r->timeout_ms = timeout_ms;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->state = REDIS_CONNECTING;
    TAILQ_INIT(&r->ops);
    if (addr->path != NULL)
        snprintf(r->where, sizeof(r->where), "unix:%s", addr->path);
    else
        snprintf(r->where, sizeof(r->where), "%s:%d", addr->host, addr->port);
    r->dns =
        evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (r->dns == NULL)
        r->dns = evdns_base_new(base, 0);
    evdns_base_load_hosts(r->dns, NULL);
    r->retry_timer = evtimer_new(base, retry_cb, r);
    r->connect_timer = evtimer_new(base, connect_timeout_cb, r);
    metrics_set(METRIC_REDIS_UP, 0);
    start_connect(r);
    return r;
}

void cache_redis_shutdown(struct cache_redis *r)
{
    struct redis_op *op, *next;

    if (r == NULL)
        return;
    /* Callers are going away: their pending commands end without a callback, and what their
     * arguments own is freed by their drop functions (LeakSanitizer found a cache store in
     * flight at SIGTERM leaking its entry). */
    for (op = TAILQ_FIRST(&r->ops); op != NULL; op = next) {
        next = TAILQ_NEXT(op, link);
        event_del(op->deadline);
        if (op->sent) {
            if (op->state == OP_PENDING)
                op->state = OP_DROPPED; /* redisAsyncFree below answers it: reply_cb drops */
            continue;
        }
        op_unlink(op);
        if (op->drop != NULL)
            op->drop(op->arg);
        op_free(op);
    }
    r->logged_down = true; /* shutting down is not an outage */
    event_del(r->retry_timer);
    event_del(r->connect_timer);
    if (r->resolving != NULL) {
        struct evdns_getaddrinfo_request *req = r->resolving;
        r->resolving = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    if (r->ac != NULL) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
    }
    if (r->sub != NULL) {
        redisAsyncContext *sub = r->sub;
        r->sub = NULL;
        redisAsyncFree(sub);
    }
    r->state = REDIS_DOWN;
}

void cache_redis_free(struct cache_redis *r)
{
    if (r == NULL)
        return;
    cache_redis_shutdown(r);
    for (int i = 0; i < r->nscripts; i++)
        free(r->scripts[i]);
    event_free(r->retry_timer);
    event_free(r->connect_timer);
    evdns_base_free(r->dns, 0);
    config_redis_address_free(&r->addr);
    free(r->channel);
    free(r);
}
