/*
 * admin.c: answers the operator endpoints. Nothing here reveals a token, a
 * key or a client's request; metrics carry counts only.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "admin.h"
#include "mem.h"
#include "metrics.h"
#include "reply.h"

/* What /readyz reports. */
enum admin_readiness {
    ADMIN_READY,    /* serving */
    ADMIN_DRAINING, /* shutting down: finishing in-flight requests only */
};

struct admin {
    enum admin_readiness readiness;
};

struct admin *admin_new(void)
{
    return xcalloc(1, sizeof(struct admin));
}

void admin_free(struct admin *adm)
{
    free(adm);
}

void admin_set_draining(struct admin *adm)
{
    adm->readiness = ADMIN_DRAINING;
}

static void send_text(struct evhttp_request *req, int status, const char *ctype,
                      struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, status, reply_reason(status), body);
}

void admin_handle(struct evhttp_request *req, void *arg)
{
    struct admin *adm = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    struct evbuffer *body = evbuffer_new();

    if (path == NULL)
        path = "";
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "MethodNotAllowedError", "The admin endpoints answer GET only");
    } else if (strcmp(path, "/healthz") == 0) {
        evbuffer_add_printf(body, "ok\n");
        send_text(req, 200, "text/plain; charset=utf-8", body);
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready = adm->readiness == ADMIN_READY;
        evbuffer_add_printf(body, "{\"ready\":%s,\"state\":\"%s\"}\n", ready ? "true" : "false",
                            ready ? "serving" : "draining");
        send_text(req, ready ? 200 : 503, "application/json", body);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics_render(body);
        send_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", body);
    } else {
        reply_error(req, 404, "NotFoundError", "Admin endpoints: /healthz, /readyz, /metrics");
    }
    evbuffer_free(body);
}
