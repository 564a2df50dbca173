/*
 * forward.c: owns each client request from arrival to answer.
 *
 * A proxy_request is created when the server (server.c) hands us a complete
 * request and freed right after the answer is sent. While it waits for the
 * upstream the upstream pool holds a pointer to it (the done callback's
 * argument); the upstream always calls back exactly once, so the request is
 * freed exactly once. If the client disconnects meanwhile, the server
 * detaches the request from its connection and server_send_reply then only
 * frees it, so answering late is safe.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "admission.h"
#include "cache.h"
#include "config.h"
#include "credential.h"
#include "flight.h"
#include "janitor.h"
#include "forward.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "reply.h"
#include "rewrite.h"
#include "route.h"
#include "server.h"
#include "upstream.h"

struct forward {
    char *upstream_origin;
    char *listen_address;
    const struct config *config;
    struct forward_parts parts;
    int in_flight;
    bool draining; /* shutting down: new requests are turned away */
};

/* Where a client request is on its way through the proxy. */
enum preq_state {
    PREQ_RECEIVED, /* parsed, being checked */
    PREQ_LOOKUP,   /* a read asking the cache */
    PREQ_FLIGHT,   /* a read waiting on a flight (its own fetch or another's) */
    PREQ_QUEUED,   /* a write (or uncacheable read) waiting for budget */
    PREQ_UPSTREAM, /* a write (or uncacheable read) waiting for the upstream */
    PREQ_ANSWERED, /* answer sent; about to be freed */
};

/* One client request. */
struct proxy_request {
    struct forward *fwd;
    struct server_request *req; /* the server's; valid until we reply */
    enum preq_state state;
    const char *method;
    struct route route;
    struct credential_ref cred; /* points into req's headers or the store */
    char client_origin[300];    /* "http://host:port" the client used */
    struct timespec started;
    double upstream_seconds;  /* < 0 when the upstream was not asked */
    const char *cache_status; /* X-Cache value, for the log */
    char *cache_key;          /* reads: route_cache_key; else NULL */
    char *token_used;         /* the shared token a write was sent with (for a 401) */
    bool retried;             /* sent again after an OAuth2 refresh */
};

/* Request headers that belong to one connection, or that we set ourselves. */
static const char *const request_skip[] = {
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Host",
    "Content-Length",
    "Authorization",
    "Accept-Encoding",
    "Expect",
    NULL,
};

/* Response headers that belong to one connection, or that the server sets. */
static const char *const response_skip[] = {
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Content-Length",
    "X-Cache", /* the proxy's own: where this answer came from */
    "Age",     /* likewise, for cached answers */
    NULL,
};

static bool in_list(const char *name, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcasecmp(name, *list) == 0)
            return true;
    return false;
}

/* True when name is listed in a Connection header (and so is hop-by-hop). */
static bool named_by_connection(const struct evkeyvalq *headers, const char *name)
{
    const struct evkeyval *h;
    size_t nlen = strlen(name);

    TAILQ_FOREACH(h, headers, next)
    {
        const char *p = h->value;
        if (strcasecmp(h->key, "Connection") != 0)
            continue;
        while (*p != '\0') {
            size_t len;
            while (*p == ' ' || *p == ',' || *p == '\t')
                p++;
            len = strcspn(p, " ,\t");
            if (len == nlen && strncasecmp(p, name, len) == 0)
                return true;
            p += len;
        }
    }
    return false;
}

static void copy_headers(const struct evkeyvalq *from, struct evkeyvalq *to,
                         const char *const *skip)
{
    const struct evkeyval *h;
    TAILQ_FOREACH(h, from, next)
    {
        if (in_list(h->key, skip) || named_by_connection(from, h->key))
            continue;
        evhttp_add_header(to, h->key, h->value);
    }
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

/* A Host value safe to put in a URL and a JSON string: name or address, port. */
static bool host_is_safe(const char *host)
{
    if (host == NULL || host[0] == '\0' || strlen(host) > 255)
        return false;
    for (const char *p = host; *p != '\0'; p++)
        if (!isalnum((unsigned char)*p) && strchr(".-:[]_", *p) == NULL)
            return false;
    return true;
}

/* Logs the access line, counts the answer and frees the request. */
static void preq_finish(struct proxy_request *pr, int status)
{
    double total = janitor_seconds_since(&pr->started);
    char upstream_ms[32];

    if (pr->upstream_seconds >= 0)
        snprintf(upstream_ms, sizeof(upstream_ms), "%.1f", pr->upstream_seconds * 1000);
    else
        snprintf(upstream_ms, sizeof(upstream_ms), "-");
    log_info("access client=%s method=%s path=%s status=%d cache=%s upstream_ms=%s total_ms=%.1f",
             pr->cred.client ? pr->cred.client : "-", pr->method,
             pr->route.path ? pr->route.path : "-", status,
             pr->cache_status ? pr->cache_status : "-", upstream_ms, total * 1000);
    metrics_count_status(METRIC_REQUESTS, status);
    metrics_count_route(METRIC_ROUTE_REQUESTS,
                        pr->route.path ? (int)pr->route.cls : ROUTE_CLASS_COUNT, pr->cache_status,
                        status);
    metrics_observe(METRIC_REQUEST_DURATION, total);
    pr->state = PREQ_ANSWERED;
    pr->fwd->in_flight--;
    route_free(&pr->route);
    free(pr->cache_key);
    if (pr->token_used != NULL) {
        memset(pr->token_used, 0, strlen(pr->token_used));
        free(pr->token_used);
    }
    free(pr);
}

static void preq_fail(struct proxy_request *pr, int status, const char *code, const char *message)
{
    reply_error(pr->req, status, code, message);
    preq_finish(pr, status);
}

/*
 * Sends an answer: status, the upstream's end-to-end headers (or just a
 * Content-Type for a cached answer), the body with links rewritten for this
 * client, X-Cache and, for cached answers, Age. The body is not changed.
 */
static void send_answer(struct proxy_request *pr, int status, const struct evkeyvalq *headers,
                        const char *content_type, const char *body, size_t len, bool links,
                        long age_s)
{
    struct evkeyvalq *out_headers = server_request_output_headers(pr->req);
    const char *ctype = headers ? evhttp_find_header(headers, "Content-Type") : content_type;
    const char *encoding = headers ? evhttp_find_header(headers, "Content-Encoding") : NULL;
    struct evbuffer *out = evbuffer_new();
    char age[24];

    if (headers != NULL) {
        copy_headers(headers, out_headers, response_skip);
        /* The server sends no body for HEAD: keep the upstream's length. */
        if (server_request_command(pr->req) == EVHTTP_REQ_HEAD &&
            evhttp_find_header(headers, "Content-Length") != NULL)
            evhttp_add_header(out_headers, "Content-Length",
                              evhttp_find_header(headers, "Content-Length"));
    } else if (content_type != NULL)
        evhttp_add_header(out_headers, "Content-Type", content_type);
    if (!links || len == 0 || ctype == NULL || strstr(ctype, "json") == NULL || encoding != NULL ||
        !rewrite_links(body, len, pr->fwd->upstream_origin, pr->client_origin, out))
        evbuffer_add(out, body, len);
    evhttp_add_header(out_headers, "X-Cache", pr->cache_status);
    if (age_s >= 0) {
        snprintf(age, sizeof(age), "%ld", age_s);
        evhttp_add_header(out_headers, "Age", age);
    }
    server_send_reply(pr->req, status, reply_reason(status), out);
    evbuffer_free(out);
    preq_finish(pr, status);
}

/* Answers with a 502 or 504 for an upstream that failed. */
static void answer_upstream_failure(struct proxy_request *pr, enum upstream_result result,
                                    const char *detail)
{
    char message[300];

    switch (result) {
    case UPSTREAM_TIMEOUT:
        snprintf(message, sizeof(message), "The SmartThings API did not answer in time: %s",
                 detail);
        preq_fail(pr, 504, "GatewayTimeoutError", message);
        return;
    case UPSTREAM_TLS_FAILED:
        snprintf(message, sizeof(message),
                 "The proxy could not verify the SmartThings API's identity: %s", detail);
        preq_fail(pr, 502, "BadGatewayError", message);
        return;
    case UPSTREAM_OK:
    case UPSTREAM_CONNECT_FAILED:
    case UPSTREAM_BAD_RESPONSE:
    case UPSTREAM_TOO_LARGE:
        break;
    }
    snprintf(message, sizeof(message), "The SmartThings API could not be used: %s", detail);
    preq_fail(pr, 502, "BadGatewayError", message);
}

/* A write succeeded: drop the cached reads it made stale. */
static void invalidate_after_write(struct proxy_request *pr, int status)
{
    struct cache *cache = pr->fwd->parts.cache;
    char device[ROUTE_ID_MAX];

    if (status < 200 || status > 299)
        return;
    if (pr->route.cls == ROUTE_DEVICE_COMMANDS && pr->route.device_id[0] != '\0') {
        route_key_device(pr->route.device_id, device);
        cache_invalidate_device(cache, pr->cred.id, device);
    } else if (pr->route.cls == ROUTE_SCENE_EXECUTE) {
        cache_invalidate_status(cache, pr->cred.id);
    }
}

/* Which device budget a request draws from, besides the credential's. */
static enum limiter_kind limiter_kind_of(enum route_class cls)
{
    if (route_is_status(cls))
        return LIMIT_STATUS;
    if (cls == ROUTE_DEVICE_COMMANDS || cls == ROUTE_DEVICE_EVENTS)
        return LIMIT_COMMAND;
    return LIMIT_OVERALL_ONLY;
}

/* The fairness key: the client's name in shared mode; in pass-through mode
 * the token is the client (its requests form their own credential). */
static const char *fairness_key(const struct proxy_request *pr)
{
    return pr->fwd->parts.credentials->mode == CREDENTIAL_SHARED ? pr->cred.client : pr->cred.id;
}

static void send_admitted(bool admitted, int64_t retry_after_ms, void *arg);

static void upstream_done(enum upstream_result result, struct upstream_response *resp,
                          const char *detail, void *arg)
{
    struct proxy_request *pr = arg;

    pr->upstream_seconds = janitor_seconds_since(&pr->started);
    if (result != UPSTREAM_OK) {
        answer_upstream_failure(pr, result, detail);
        return;
    }
    credential_upstream_status(pr->fwd->parts.credentials, pr->token_used, resp->status);
    if (resp->status == 401 && pr->fwd->parts.credentials->oauth != NULL && !pr->retried) {
        /* The access token was refused (revoked, or expired early): a 401
         * means nothing was done, so send it again with the refreshed one. */
        pr->retried = true;
        send_admitted(true, 0, pr);
        return;
    }
    {
        char device[ROUTE_ID_MAX];
        if (pr->route.device_id[0] != '\0')
            route_key_device(pr->route.device_id, device);
        limiter_learn(
            pr->fwd->parts.limiter, pr->cred.id, pr->route.device_id[0] != '\0' ? device : NULL,
            limiter_kind_of(pr->route.cls), resp->status, &resp->headers,
            (const char *)evbuffer_pullup(resp->body, -1), evbuffer_get_length(resp->body));
    }
    invalidate_after_write(pr, resp->status);
    send_answer(pr, resp->status, &resp->headers, NULL,
                (const char *)evbuffer_pullup(resp->body, -1), evbuffer_get_length(resp->body),
                true, -1);
}

#define TOKEN_MAX 8192 /* longer bearer tokens are refused on arrival */

/* Fills headers with what goes upstream: the client's end-to-end headers
 * and, when token is given, the Authorization with it. */
static void upstream_headers(struct proxy_request *pr, struct evkeyvalq *headers, const char *token,
                             size_t token_len)
{
    struct evkeyvalq *in = server_request_input_headers(pr->req);
    char auth[TOKEN_MAX + 8];

    TAILQ_INIT(headers);
    copy_headers(in, headers, request_skip);
    if (token == NULL)
        return;
    snprintf(auth, sizeof(auth), "Bearer %.*s", (int)token_len, token);
    evhttp_add_header(headers, "Authorization", auth);
    memset(auth, 0, sizeof(auth));
}

/* The path and query to send upstream, as the client sent them. malloc'd. */
static char *upstream_target(const struct proxy_request *pr)
{
    size_t len = strlen(pr->route.path) + (pr->route.query ? strlen(pr->route.query) + 1 : 0) + 1;
    char *target = xmalloc(len);
    snprintf(target, len, "%s%s%s", pr->route.path, pr->route.query ? "?" : "",
             pr->route.query ? pr->route.query : "");
    return target;
}

static void clear_headers(struct evkeyvalq *headers)
{
    struct evkeyval *h;
    /* They hold the upstream token: wipe before freeing. */
    TAILQ_FOREACH(h, headers, next)
    memset(h->value, 0, strlen(h->value));
    evhttp_clear_headers(headers);
}

/* Answers 429 in the API's shape with Retry-After (whole seconds, >= 1). */
static void answer_throttled(struct proxy_request *pr, int64_t retry_after_ms)
{
    char retry[24];
    long seconds = (long)((retry_after_ms + 999) / 1000);

    snprintf(retry, sizeof(retry), "%ld", seconds < 1 ? 1 : seconds);
    evhttp_add_header(server_request_output_headers(pr->req), "Retry-After", retry);
    preq_fail(pr, 429, "TooManyRequestError",
              "The proxy is pacing this credential's requests to stay within its SmartThings "
              "rate limit; retry after the time in Retry-After");
}

/* Answers 503: the shared credential needs re-authorisation. */
static void answer_credential_failure(struct proxy_request *pr, const char *failure)
{
    char message[400];
    snprintf(message, sizeof(message), "The proxy's SmartThings credential cannot be used: %s",
             failure);
    preq_fail(pr, 503, "CredentialNeedsReauthorization", message);
}

static void send_with_token(const char *token, size_t len, const char *failure, void *arg)
{
    struct proxy_request *pr = arg;
    struct evkeyvalq headers;
    char *target;

    if (token == NULL) {
        answer_credential_failure(pr, failure);
        return;
    }
    if (pr->fwd->parts.credentials->mode == CREDENTIAL_SHARED) {
        if (pr->token_used != NULL) {
            memset(pr->token_used, 0, strlen(pr->token_used));
            free(pr->token_used);
        }
        pr->token_used = xstrndup(token, len);
    }
    upstream_headers(pr, &headers, token, len);
    target = upstream_target(pr);
    pr->state = PREQ_UPSTREAM;
    upstream_send(pr->fwd->parts.pool, pr->method, target, &headers, server_request_body(pr->req),
                  upstream_done, pr);
    clear_headers(&headers);
    free(target);
}

static void send_admitted(bool admitted, int64_t retry_after_ms, void *arg)
{
    struct proxy_request *pr = arg;

    if (!admitted) {
        answer_throttled(pr, retry_after_ms);
        return;
    }
    credential_with_token(pr->fwd->parts.credentials, pr->cred.token, pr->cred.token_len,
                          send_with_token, pr);
}

/* Sends a request that is not cached upstream, once the budget allows:
 * writes first in the queue, anything else as a read. */
static void send_upstream(struct proxy_request *pr)
{
    enum evhttp_cmd_type cmd = server_request_command(pr->req);
    char device[ROUTE_ID_MAX];
    struct admit_request req = {
        .cred = pr->cred.id,
        .client = fairness_key(pr),
        .kind = limiter_kind_of(pr->route.cls),
        .priority = (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) ? ADMIT_READ : ADMIT_COMMAND};

    if (pr->route.device_id[0] != '\0') {
        route_key_device(pr->route.device_id, device);
        req.device = device;
    }
    pr->state = PREQ_QUEUED;
    admission_request(pr->fwd->parts.admission, &req, send_admitted, pr, NULL);
}

/* ---- reads through the cache -------------------------------------------- */

static void flight_done(const struct flight_answer *answer, void *arg)
{
    struct proxy_request *pr = arg;

    pr->upstream_seconds = janitor_seconds_since(&pr->started);
    if (answer->throttled) {
        answer_throttled(pr, answer->retry_after_ms);
        return;
    }
    if (answer->credential_failure != NULL) {
        answer_credential_failure(pr, answer->credential_failure);
        return;
    }
    if (answer->result != UPSTREAM_OK) {
        answer_upstream_failure(pr, answer->result, answer->detail);
        return;
    }
    send_answer(pr, answer->status, answer->headers, NULL,
                (const char *)evbuffer_pullup(answer->body, -1), evbuffer_get_length(answer->body),
                true, -1);
}

/* Starts (or joins) the fetch of this read, or a background refresh. */
static void start_flight(struct proxy_request *pr, bool background)
{
    const struct config *cfg = pr->fwd->config;
    struct flight_spec spec;
    struct evkeyvalq headers;
    char device[ROUTE_ID_MAX];
    char *target;

    upstream_headers(pr, &headers, NULL, 0); /* the flight adds the token when it sends */
    target = upstream_target(pr);
    if (pr->route.device_id[0] != '\0')
        route_key_device(pr->route.device_id, device);
    memset(&spec, 0, sizeof(spec));
    spec.target = target;
    spec.headers = &headers;
    spec.policy = cfg->policies[pr->route.cls];
    spec.not_found_ms = cfg->cache_not_found_ms;
    spec.tags.cred = pr->cred.id;
    spec.tags.device = pr->route.device_id[0] != '\0' ? device : NULL;
    spec.tags.is_status = route_is_status(pr->route.cls);
    spec.client = fairness_key(pr);
    spec.token = pr->cred.token; /* pass-through; NULL: the shared credential's */
    spec.token_len = pr->cred.token_len;
    spec.kind = limiter_kind_of(pr->route.cls);
    if (background) {
        flight_refresh(pr->fwd->parts.flights, pr->cache_key, &spec);
    } else {
        pr->state = PREQ_FLIGHT;
        flight_join(pr->fwd->parts.flights, pr->cache_key, &spec, flight_done, pr);
    }
    clear_headers(&headers);
    free(target);
}

static void lookup_done(struct cache_entry *entry, void *arg)
{
    struct proxy_request *pr = arg;
    uint64_t now = cache_now_ms();
    enum cache_freshness freshness = entry ? cache_entry_freshness(entry, now) : CACHE_EXPIRED;

    if (freshness == CACHE_EXPIRED) {
        cache_entry_free(entry);
        pr->cache_status = "MISS";
        metrics_inc(METRIC_CACHE_MISSES);
        start_flight(pr, false);
        return;
    }
    if (freshness == CACHE_STALE) {
        /* Answer now; the refresh runs on (it owns copies of what it needs). */
        pr->cache_status = "STALE";
        metrics_inc(METRIC_CACHE_STALE);
        start_flight(pr, true);
    } else {
        pr->cache_status = "HIT";
        metrics_inc(METRIC_CACHE_HITS);
    }
    send_answer(pr, entry->status, NULL, entry->content_type, entry->body, entry->body_len,
                entry->links, (long)((now > entry->stored_ms ? now - entry->stored_ms : 0) / 1000));
    cache_entry_free(entry);
}

/* True for reads whose path class has a cache policy. */
static bool is_cacheable(const struct proxy_request *pr, enum evhttp_cmd_type cmd)
{
    return cmd == EVHTTP_REQ_GET && pr->fwd->config->policies[pr->route.cls].fresh_ms > 0;
}

void forward_handle(struct server_request *req, void *arg)
{
    struct forward *fwd = arg;
    struct proxy_request *pr = xcalloc(1, sizeof(*pr));
    struct evkeyvalq *in = server_request_input_headers(req);
    enum evhttp_cmd_type cmd = server_request_command(req);
    const char *host = evhttp_find_header(in, "Host");
    enum route_status rs;
    enum credential_status cs;

    pr->fwd = fwd;
    pr->req = req;
    pr->state = PREQ_RECEIVED;
    pr->method = method_name(cmd);
    pr->upstream_seconds = -1;
    clock_gettime(CLOCK_MONOTONIC, &pr->started);
    fwd->in_flight++;
    snprintf(pr->client_origin, sizeof(pr->client_origin), "http://%s",
             host_is_safe(host) ? host : fwd->listen_address);

    if (fwd->draining) {
        /* A kept-alive client asking during shutdown: tell it to go elsewhere. */
        evhttp_add_header(server_request_output_headers(req), "Connection", "close");
        evhttp_add_header(server_request_output_headers(req), "Retry-After", "1");
        preq_fail(pr, 503, "ServiceUnavailableError", "The proxy is shutting down");
        return;
    }
    if (cmd == EVHTTP_REQ_CONNECT || cmd == EVHTTP_REQ_TRACE) {
        metrics_inc(METRIC_TARGET_REFUSED);
        preq_fail(pr, 405, "MethodNotAllowedError",
                  "This proxy forwards only SmartThings API requests");
        return;
    }
    rs = route_parse(server_request_uri(req), fwd->listen_address, &pr->route);
    if (rs != ROUTE_OK) {
        metrics_inc(METRIC_TARGET_REFUSED);
        log_warn("refused target (%s) from a %s request", route_status_reason(rs), pr->method);
        preq_fail(pr,
                  rs == ROUTE_FOREIGN_HOST ? 403
                  : rs == ROUTE_NOT_API    ? 404
                                           : 400,
                  rs == ROUTE_FOREIGN_HOST ? "ForbiddenError"
                  : rs == ROUTE_NOT_API    ? "NotFoundError"
                                           : "BadRequestError",
                  route_status_reason(rs));
        return;
    }
    cs = credential_resolve(fwd->parts.credentials, evhttp_find_header(in, "Authorization"),
                            &pr->cred);
    if (cs != CREDENTIAL_OK) {
        metrics_inc(METRIC_AUTH_REJECTED);
        preq_fail(pr, 401, "UnauthorizedError",
                  fwd->parts.credentials->mode == CREDENTIAL_SHARED
                      ? "Unknown or missing client key: send Authorization: Bearer <client key>"
                      : "Missing bearer token: send Authorization: Bearer <SmartThings token>");
        return;
    }
    if (pr->cred.token_len > TOKEN_MAX) {
        preq_fail(pr, 400, "BadRequestError", "The bearer token is too long");
        return;
    }
    if (is_cacheable(pr, cmd)) {
        pr->cache_key =
            route_cache_key(&pr->route, "GET", pr->cred.id, evhttp_find_header(in, "Accept"));
        pr->state = PREQ_LOOKUP;
        cache_lookup(fwd->parts.cache, pr->cache_key, lookup_done, pr);
        return;
    }
    pr->cache_status = "BYPASS";
    metrics_inc(METRIC_CACHE_BYPASS);
    send_upstream(pr);
}

struct forward *forward_new(const struct forward_settings *settings,
                            const struct forward_parts *parts)
{
    struct forward *fwd = xcalloc(1, sizeof(*fwd));
    fwd->upstream_origin = xstrdup(settings->upstream_origin);
    fwd->listen_address = xstrdup(settings->listen_address);
    fwd->config = settings->config;
    fwd->parts = *parts;
    return fwd;
}

void forward_free(struct forward *fwd)
{
    if (fwd == NULL)
        return;
    free(fwd->upstream_origin);
    free(fwd->listen_address);
    free(fwd);
}

void forward_set_draining(struct forward *fwd)
{
    fwd->draining = true;
}

int forward_in_flight(const struct forward *fwd)
{
    return fwd->in_flight;
}
