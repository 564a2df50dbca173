/*
 * admin.c: answers the operator endpoints. Nothing here reveals a token, a
 * key or a client's request; metrics carry counts only.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

#include "admin.h"
#include "cache.h"
#include "cache_redis.h"
#include "credential.h"
#include "mem.h"
#include "route.h"
#include "server.h"
#include "metrics.h"
#include "reply.h"

/* What /readyz reports. */
enum admin_readiness {
    ADMIN_READY,    /* serving */
    ADMIN_DRAINING, /* shutting down: finishing in-flight requests only */
};

struct admin {
    enum admin_readiness readiness;
    struct cache *cache;
    struct cache_redis *redis;
    const struct credential_store *credentials;
};

struct admin *admin_new(struct cache *cache, struct cache_redis *redis,
                        const struct credential_store *credentials)
{
    struct admin *adm = xcalloc(1, sizeof(struct admin));
    adm->cache = cache;
    adm->redis = redis;
    adm->credentials = credentials;
    return adm;
}

void admin_free(struct admin *adm)
{
    free(adm);
}

void admin_set_draining(struct admin *adm)
{
    adm->readiness = ADMIN_DRAINING;
}

static void send_text(struct server_request *req, int status, const char *ctype,
                      struct evbuffer *body)
{
    evhttp_add_header(server_request_output_headers(req), "Content-Type", ctype);
    evhttp_add_header(server_request_output_headers(req), "Cache-Control", "no-store");
    server_send_reply(req, status, reply_reason(status), body);
}

static void purge_done(size_t purged, void *arg)
{
    struct server_request *req = arg;
    struct evbuffer *body = evbuffer_new();

    evbuffer_add_printf(body, "{\"purged\":%zu}\n", purged);
    send_text(req, 200, "application/json", body);
    evbuffer_free(body);
}

static bool is_credential_id(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == CREDENTIAL_ID_LEN;
}

/* POST /purge[?credential=<id>|client=<name>][&device=<id>] */
static void handle_purge(struct admin *adm, struct server_request *req, const char *query)
{
    struct evkeyvalq params;
    const char *cred = NULL, *client, *device_param;
    char device[ROUTE_ID_MAX];

    TAILQ_INIT(&params);
    if (query != NULL && evhttp_parse_query_str(query, &params) != 0) {
        reply_error(req, 400, "BadRequestError", "Malformed query");
        return;
    }
    cred = evhttp_find_header(&params, "credential");
    client = evhttp_find_header(&params, "client");
    device_param = evhttp_find_header(&params, "device");
    if (cred != NULL && !is_credential_id(cred)) {
        reply_error(req, 400, "BadRequestError",
                    "credential must be the 64 hex digits of the token's SHA-256");
        goto done;
    }
    if (client != NULL) {
        bool known = false;
        for (size_t i = 0; i < adm->credentials->nkeys; i++)
            known = known || strcmp(adm->credentials->keys[i].name, client) == 0;
        if (!known) {
            reply_error(req, 404, "NotFoundError", "No client key has that name");
            goto done;
        }
        cred = adm->credentials->shared_id; /* every client shares the one credential */
    }
    if (device_param != NULL)
        route_key_device(device_param, device);
    cache_purge(adm->cache, cred, device_param ? device : NULL, purge_done, req);
done:
    evhttp_clear_headers(&params);
}

static const char *cache_backend_name(enum cache_backend b)
{
    switch (b) {
    case CACHE_EMBEDDED:
        return "not configured";
    case CACHE_REDIS:
        return "connected";
    case CACHE_REDIS_FALLBACK:
        return "unavailable";
    }
    return "unknown";
}

void admin_handle(struct server_request *req, void *arg)
{
    struct admin *adm = arg;
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags(server_request_uri(req), 0);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = server_request_command(req);
    struct evbuffer *body = evbuffer_new();

    if (path == NULL)
        path = "";
    if (strcmp(path, "/purge") == 0) {
        if (cmd == EVHTTP_REQ_POST)
            handle_purge(adm, req, evhttp_uri_get_query(uri));
        else
            reply_error(req, 405, "MethodNotAllowedError", "/purge takes POST");
    } else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "MethodNotAllowedError", "This admin endpoint answers GET only");
    } else if (strcmp(path, "/healthz") == 0) {
        evbuffer_add_printf(body, "ok\n");
        send_text(req, 200, "text/plain; charset=utf-8", body);
    } else if (strcmp(path, "/readyz") == 0) {
        const char *failure = credential_failure(adm->credentials);
        bool ready = adm->readiness == ADMIN_READY && failure == NULL;
        /* A Redis outage degrades sharing but not service: still ready. A
         * dead credential is not: nothing can be served fresh until someone
         * re-authorises it. */
        evbuffer_add_printf(body, "{\"ready\":%s,\"state\":\"%s\",\"redis\":\"%s\"",
                            ready ? "true" : "false",
                            adm->readiness != ADMIN_READY ? "draining"
                            : failure != NULL             ? "credential failed"
                                                          : "serving",
                            cache_backend_name(cache_backend(adm->cache)));
        evbuffer_add_printf(body, ",\"credential\":\"");
        reply_json_escape(body, failure ? failure : "ok");
        evbuffer_add_printf(body, "\"}\n");
        send_text(req, ready ? 200 : 503, "application/json", body);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics_render(body);
        send_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", body);
    } else {
        reply_error(req, 404, "NotFoundError",
                    "Admin endpoints: /healthz, /readyz, /metrics, POST /purge");
    }
    evbuffer_free(body);
    if (uri != NULL)
        evhttp_uri_free(uri);
}
