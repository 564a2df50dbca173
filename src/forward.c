/*
 * forward.c: owns each client request from arrival to answer.
 *
 * A proxy_request is created when evhttp hands us a complete request and
 * freed right after the answer is sent. While it waits for the upstream the
 * upstream pool holds a pointer to it (the done callback's argument); the
 * upstream always calls back exactly once, so the request is freed exactly
 * once. If the client disconnects meanwhile, libevent detaches the
 * evhttp_request from its connection and evhttp_send_reply then only frees
 * it, so answering late is safe.
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

#include "credential.h"
#include "forward.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "reply.h"
#include "rewrite.h"
#include "route.h"
#include "upstream.h"

struct forward {
    char *upstream_origin;
    char *listen_address;
    struct upstream_pool *pool;
    const struct credential_store *credentials;
    int in_flight;
};

/* Where a client request is on its way through the proxy. */
enum preq_state {
    PREQ_RECEIVED, /* parsed, being checked */
    PREQ_UPSTREAM, /* waiting for the upstream's answer */
    PREQ_ANSWERED, /* answer sent; about to be freed */
};

/* One client request. */
struct proxy_request {
    struct forward *fwd;
    struct evhttp_request *req; /* evhttp's; valid until we reply */
    enum preq_state state;
    const char *method;
    struct route route;
    struct credential_ref cred; /* points into req's headers or the store */
    char client_origin[300];    /* "http://host:port" the client used */
    struct timespec started;
    double upstream_seconds;  /* < 0 when the upstream was not asked */
    const char *cache_status; /* X-Cache value, for the log */
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

/* Response headers that belong to one connection, or that evhttp sets. */
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

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
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
    double total = seconds_since(&pr->started);
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
    metrics_observe(METRIC_REQUEST_DURATION, total);
    pr->state = PREQ_ANSWERED;
    pr->fwd->in_flight--;
    route_free(&pr->route);
    free(pr);
}

static void preq_fail(struct proxy_request *pr, int status, const char *code, const char *message)
{
    reply_error(pr->req, status, code, message);
    preq_finish(pr, status);
}

/* Sends the upstream's answer to the client. */
static void answer_from_upstream(struct proxy_request *pr, struct upstream_response *resp)
{
    struct evkeyvalq *out_headers = evhttp_request_get_output_headers(pr->req);
    const char *ctype = evhttp_find_header(&resp->headers, "Content-Type");
    struct evbuffer *body = resp->body, *rewritten = NULL;
    size_t len = evbuffer_get_length(body);

    copy_headers(&resp->headers, out_headers, response_skip);
    if (len > 0 && ctype != NULL && strstr(ctype, "json") != NULL &&
        evhttp_find_header(&resp->headers, "Content-Encoding") == NULL) {
        rewritten = evbuffer_new();
        if (rewrite_links((const char *)evbuffer_pullup(body, -1), len, pr->fwd->upstream_origin,
                          pr->client_origin, rewritten))
            body = rewritten;
    }
    evhttp_add_header(out_headers, "X-Cache", pr->cache_status);
    evhttp_send_reply(pr->req, resp->status, reply_reason(resp->status), body);
    if (rewritten != NULL)
        evbuffer_free(rewritten);
    preq_finish(pr, resp->status);
}

static void upstream_done(enum upstream_result result, struct upstream_response *resp,
                          const char *detail, void *arg)
{
    struct proxy_request *pr = arg;
    char message[300];

    pr->upstream_seconds = seconds_since(&pr->started);
    metrics_observe(METRIC_UPSTREAM_DURATION, pr->upstream_seconds);
    switch (result) {
    case UPSTREAM_OK:
        answer_from_upstream(pr, resp);
        return;
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
    case UPSTREAM_CONNECT_FAILED:
    case UPSTREAM_BAD_RESPONSE:
    case UPSTREAM_TOO_LARGE:
        snprintf(message, sizeof(message), "The SmartThings API could not be used: %s", detail);
        preq_fail(pr, 502, "BadGatewayError", message);
        return;
    }
}

/* Builds the upstream request and sends it. */
static void send_upstream(struct proxy_request *pr)
{
    struct evkeyvalq headers;
    struct evkeyvalq *in = evhttp_request_get_input_headers(pr->req);
    char auth[8192 + 8];
    char *target;
    size_t tlen;

    TAILQ_INIT(&headers);
    copy_headers(in, &headers, request_skip);
    if (pr->cred.token_len > sizeof(auth) - 8) {
        evhttp_clear_headers(&headers);
        preq_fail(pr, 400, "BadRequestError", "The bearer token is too long");
        return;
    }
    snprintf(auth, sizeof(auth), "Bearer %.*s", (int)pr->cred.token_len, pr->cred.token);
    evhttp_add_header(&headers, "Authorization", auth);
    tlen = strlen(pr->route.path) + (pr->route.query ? strlen(pr->route.query) + 1 : 0) + 1;
    target = xmalloc(tlen);
    snprintf(target, tlen, "%s%s%s", pr->route.path, pr->route.query ? "?" : "",
             pr->route.query ? pr->route.query : "");
    pr->state = PREQ_UPSTREAM;
    upstream_send(pr->fwd->pool, pr->method, target, &headers,
                  evhttp_request_get_input_buffer(pr->req), upstream_done, pr);
    memset(auth, 0, sizeof(auth));
    evhttp_clear_headers(&headers);
    free(target);
}

void forward_handle(struct evhttp_request *req, void *arg)
{
    struct forward *fwd = arg;
    struct proxy_request *pr = xcalloc(1, sizeof(*pr));
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
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

    if (cmd == EVHTTP_REQ_CONNECT || cmd == EVHTTP_REQ_TRACE) {
        metrics_inc(METRIC_TARGET_REFUSED);
        preq_fail(pr, 405, "MethodNotAllowedError",
                  "This proxy forwards only SmartThings API requests");
        return;
    }
    rs = route_parse(evhttp_request_get_uri(req), fwd->listen_address, &pr->route);
    if (rs != ROUTE_OK) {
        metrics_inc(METRIC_TARGET_REFUSED);
        log_warn("refused target (%s) from a %s request", route_status_reason(rs), pr->method);
        preq_fail(pr, rs == ROUTE_FOREIGN_HOST ? 403 : 400,
                  rs == ROUTE_FOREIGN_HOST ? "ForbiddenError" : "BadRequestError",
                  route_status_reason(rs));
        return;
    }
    cs = credential_resolve(fwd->credentials, evhttp_find_header(in, "Authorization"), &pr->cred);
    if (cs != CREDENTIAL_OK) {
        metrics_inc(METRIC_AUTH_REJECTED);
        preq_fail(pr, 401, "UnauthorizedError",
                  fwd->credentials->mode == CREDENTIAL_SHARED
                      ? "Unknown or missing client key: send Authorization: Bearer <client key>"
                      : "Missing bearer token: send Authorization: Bearer <SmartThings token>");
        return;
    }
    /* Nothing is cached yet: reads come from the upstream, writes bypass. */
    pr->cache_status = (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) ? "MISS" : "BYPASS";
    send_upstream(pr);
}

struct forward *forward_new(const struct forward_settings *settings, struct upstream_pool *pool,
                            const struct credential_store *credentials)
{
    struct forward *fwd = xcalloc(1, sizeof(*fwd));
    fwd->upstream_origin = xstrdup(settings->upstream_origin);
    fwd->listen_address = xstrdup(settings->listen_address);
    fwd->pool = pool;
    fwd->credentials = credentials;
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

int forward_in_flight(const struct forward *fwd)
{
    return fwd->in_flight;
}
