/*
 * mock_fault.c: the faults the API injects on request (POST /config?fail_mode=... on the admin
 * port), so that tests can see how the proxy copes with an upstream that errs, resets, hangs or
 * talks nonsense.
 *
 * Owns the decision per request (mock_fault_take(), on arrival, which is where fail_count and
 * fail_path apply) and carrying it out (mock_fault_apply(), after the configured latency). A
 * status fault is an ordinary answer. The other three keep the request or its connection for a
 * while, each in one struct fault_conn on one list, so that shutdown and a change of fail_mode
 * find them all:
 *   - hang: the request is held, the connection watched for the client leaving (libevent then
 *     frees the connection and tells us through its close callback);
 *   - reset and garbage: the connection is taken from evhttp (its bufferevent callbacks become
 *     ours, so evhttp cannot free it behind our back) and freed on the next loop turn by the
 *     sweeper event, never from inside one of its own callbacks.
 */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

/* What is sent in garbage mode: no status line, so no HTTP client can take it for an answer. */
#define FAULT_GARBAGE_BYTES "NOT HTTP\r\n\r\n"

const char *const mock_fail_mode_names[] = {"none",     "status", "reset",   "hang", "garbage",
                                            "truncate", "huge",   "nonjson", NULL};

/* The head of truncate, huge and nonjson: each a 200 that cannot be kept as it is. */
#define FAULT_TRUNCATE_BYTES                                                                       \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"            \
    "{\"items\":[{"
#define FAULT_HUGE_HEAD                                                                            \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
#define FAULT_HUGE_SENT (64 * 1024)
#define FAULT_NONJSON_BODY                                                                         \
    "<html><body>\"_links\": {\"next\": {\"href\": \"https://localhost/x\"}} oops</body></html>"
#define FAULT_NONJSON_BYTES                                                                        \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"                   \
    "Content-Length: 82\r\n\r\n" FAULT_NONJSON_BODY

/* Where a faulted request or connection is in its life. */
enum fault_state {
    FAULT_HELD,    /* hang: the request waits for its client to leave or fail_mode to be set */
    FAULT_WRITING, /* garbage: the bytes are on their way out; FAULT_CLOSING once written */
    FAULT_CLOSING, /* the connection (and the request in it) is freed by the next sweep */
};

/* One faulted request with its connection. Owned by fault_list from fault_track() until
 * fault_untrack(); the request and connection stay libevent's (see each state). */
struct fault_conn {
    enum fault_state state;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    unsigned long long id; /* the API request id, for the 503 a held request may get */
    struct fault_conn *prev, *next;
};

static struct event *fault_sweeper; /* frees FAULT_CLOSING connections, activated on demand */
static struct fault_conn *fault_list;
static size_t fault_n_held;

/* ---- the list ----------------------------------------------------------------------------- */

static struct fault_conn *fault_track(struct evhttp_request *req, unsigned long long id,
                                      enum fault_state state)
{
    struct fault_conn *fc = mock_xcalloc(1, sizeof(*fc));

    fc->req = req;
    fc->evcon = evhttp_request_get_connection(req);
    fc->id = id;
    fc->state = state;
    fc->next = fault_list;
    if (fault_list != NULL)
        fault_list->prev = fc;
    fault_list = fc;
    if (state == FAULT_HELD)
        fault_n_held++;
    return fc;
}

/* Unlinks and frees fc; what it pointed at is the caller's business. */
static void fault_untrack(struct fault_conn *fc)
{
    if (fc->prev != NULL)
        fc->prev->next = fc->next;
    else
        fault_list = fc->next;
    if (fc->next != NULL)
        fc->next->prev = fc->prev;
    if (fc->state == FAULT_HELD)
        fault_n_held--;
    free(fc);
}

static void fault_set_state(struct fault_conn *fc, enum fault_state state)
{
    if (fc->state == FAULT_HELD)
        fault_n_held--;
    fc->state = state;
    if (state == FAULT_HELD)
        fault_n_held++;
    if (state == FAULT_CLOSING)
        event_active(fault_sweeper, EV_TIMEOUT, 0);
}

/* ---- reset and garbage: connections we close ---------------------------------------------- */

/* Frees every connection marked FAULT_CLOSING; evhttp_connection_free() frees the request still
 * queued on it. Runs as its own event, so no connection is freed inside its own callback. */
static void fault_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct fault_conn *fc = fault_list;

    (void)fd;
    (void)what;
    (void)arg;
    while (fc != NULL) {
        struct fault_conn *next = fc->next;

        if (fc->state == FAULT_CLOSING) {
            evhttp_connection_free(fc->evcon);
            fault_untrack(fc);
        }
        fc = next;
    }
}

static void fault_garbage_written(struct bufferevent *bev, void *arg)
{
    struct fault_conn *fc = arg;

    (void)bev;
    if (fc->state == FAULT_WRITING)
        fault_set_state(fc, FAULT_CLOSING);
}

/* The client closed or the write failed: nothing more to send either way. */
static void fault_conn_event(struct bufferevent *bev, short what, void *arg)
{
    struct fault_conn *fc = arg;

    (void)bev;
    (void)what;
    if (fc->state == FAULT_WRITING)
        fault_set_state(fc, FAULT_CLOSING);
}

/* Takes req's connection from evhttp and closes it: at once with an RST for reset, after the
 * garbage bytes for garbage. */
static void fault_close(struct evhttp_request *req, unsigned long long id, enum mock_fail_mode mode)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev;
    struct fault_conn *fc;

    if (evcon == NULL) {
        /* The client left while the request waited out its latency: libevent gave it to us. */
        evhttp_request_free(req);
        return;
    }
    bev = evhttp_connection_get_bufferevent(evcon);
    if (mode == MOCK_FAIL_RESET) {
        /* Linger 0: close() sends an RST, as a crashed or overloaded upstream would. */
        struct linger hard = {.l_onoff = 1, .l_linger = 0};
        evutil_socket_t fd = bufferevent_getfd(bev);

        if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard)) != 0)
            mock_log("request %llu: cannot set SO_LINGER; closing without it", id);
        fc = fault_track(req, id, FAULT_CLOSING);
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_disable(bev, EV_READ | EV_WRITE);
        event_active(fault_sweeper, EV_TIMEOUT, 0);
        return;
    }
    fc = fault_track(req, id, FAULT_WRITING);
    /* From here on evhttp's callbacks never run for this connection: ours decide when it goes.
     * Reading stays on (without a read callback) so that a client that leaves is noticed. */
    bufferevent_setcb(bev, NULL, fault_garbage_written, fault_conn_event, fc);
    switch (mode) {
    case MOCK_FAIL_TRUNCATE:
        bufferevent_write(bev, FAULT_TRUNCATE_BYTES, strlen(FAULT_TRUNCATE_BYTES));
        break;
    case MOCK_FAIL_HUGE: {
        char *filler = mock_xmalloc(FAULT_HUGE_SENT);

        memset(filler, ' ', FAULT_HUGE_SENT);
        bufferevent_write(bev, FAULT_HUGE_HEAD, strlen(FAULT_HUGE_HEAD));
        bufferevent_write(bev, filler, FAULT_HUGE_SENT);
        free(filler);
        break;
    }
    case MOCK_FAIL_NONJSON:
        bufferevent_write(bev, FAULT_NONJSON_BYTES, strlen(FAULT_NONJSON_BYTES));
        break;
    default:
        bufferevent_write(bev, FAULT_GARBAGE_BYTES, strlen(FAULT_GARBAGE_BYTES));
        break;
    }
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* ---- hang: held requests ------------------------------------------------------------------- */

/* libevent is freeing a held request's connection: the client left, or the connection timed
 * out. If libevent detached the request first (it does when the client leaves), the request is
 * ours to free; otherwise libevent frees it with the connection. */
static void fault_held_closed(struct evhttp_connection *evcon, void *arg)
{
    struct fault_conn *fc = arg;

    (void)evcon;
    if (evhttp_request_get_connection(fc->req) == NULL)
        evhttp_request_free(fc->req);
    mock_log("held request %llu: client gone", fc->id);
    fault_untrack(fc);
}

static void fault_hold(struct evhttp_request *req, unsigned long long id)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev;
    bufferevent_event_cb event_cb;
    bufferevent_data_cb write_cb;
    struct fault_conn *fc;
    void *cb_arg;

    if (evcon == NULL) {
        evhttp_request_free(req);
        return;
    }
    fc = fault_track(req, id, FAULT_HELD);
    /* evhttp stops reading once a request is in, so it would never see the client leave. Read
     * again with no read callback (a byte from the client is not evhttp's business while it
     * answers; its own writer does the same) and keep evhttp's event callback, which frees the
     * connection on EOF or timeout and calls fault_held_closed() on the way. */
    bev = evhttp_connection_get_bufferevent(evcon);
    bufferevent_getcb(bev, NULL, &write_cb, &event_cb, &cb_arg);
    bufferevent_setcb(bev, NULL, write_cb, event_cb, cb_arg);
    evhttp_connection_set_closecb(evcon, fault_held_closed, fc);
    bufferevent_enable(bev, EV_READ);
}

void mock_fault_release_held(void)
{
    struct fault_conn *fc = fault_list;
    size_t released = 0;

    while (fc != NULL) {
        struct fault_conn *next = fc->next;

        if (fc->state == FAULT_HELD) {
            struct evhttp_request *req = fc->req;
            unsigned long long id = fc->id;

            /* The connection may outlive this answer (keep-alive): it must not call back into
             * an entry that is gone. evhttp_send_reply() puts evhttp's own callbacks back. */
            evhttp_connection_set_closecb(fc->evcon, NULL, NULL);
            fault_untrack(fc);
            mock_api_send_error(req, id, 503, "ServiceUnavailableError",
                                "stmock: request held by fail_mode=hang, released because "
                                "fail_mode was set");
            released++;
        }
        fc = next;
    }
    if (released > 0)
        mock_log("released %zu held request(s) with 503", released);
}

size_t mock_fault_n_held(void)
{
    return fault_n_held;
}

/* ---- deciding and applying ----------------------------------------------------------------- */

void mock_fault_clear(struct mock_config *cfg)
{
    cfg->fail_mode = MOCK_FAIL_NONE;
    cfg->fail_status = MOCK_FAIL_STATUS_DEFAULT;
    cfg->fail_count = 0;
    cfg->fail_path[0] = '\0';
}

struct mock_fault mock_fault_take(const char *path)
{
    struct mock_fault f = {.mode = MOCK_FAIL_NONE, .status = 0};

    if (mock_config.fail_mode == MOCK_FAIL_NONE)
        return f;
    if (strncmp(path, mock_config.fail_path, strlen(mock_config.fail_path)) != 0)
        return f;
    f.mode = (enum mock_fail_mode)mock_config.fail_mode;
    f.status = (int)mock_config.fail_status;
    if (mock_config.fail_count > 0 && --mock_config.fail_count == 0) {
        mock_log("fail_count used up: fail_mode=%s ends", mock_fail_mode_names[f.mode]);
        mock_fault_clear(&mock_config);
    }
    return f;
}

/* The SmartThings error code that goes with a status, as the API names them. */
static const char *fault_error_code(int status)
{
    switch (status) {
    case 400:
        return "ConstraintViolationError";
    case 401:
        return "UnauthorizedError";
    case 403:
        return "ForbiddenError";
    case 404:
        return "NotFoundError";
    case 405:
        return "MethodNotAllowedError";
    case 409:
        return "ConflictError";
    case 422:
        return "UnprocessableEntityError";
    case 429:
        return "TooManyRequestError";
    case 500:
        return "InternalServerError";
    case 501:
        return "NotImplementedError";
    case 502:
        return "BadGatewayError";
    case 503:
        return "ServiceUnavailableError";
    case 504:
        return "GatewayTimeoutError";
    }
    if (status >= 500)
        return "ServerError";
    if (status >= 400)
        return "BadRequestError";
    return "MockFault";
}

void mock_fault_apply(struct evhttp_request *req, unsigned long long id, struct mock_fault f)
{
    char message[64];

    switch (f.mode) {
    case MOCK_FAIL_NONE: /* callers answer these themselves; fail safe rather than hang */
    case MOCK_FAIL_STATUS:
        if (f.mode == MOCK_FAIL_NONE)
            f.status = 500;
        snprintf(message, sizeof(message), "stmock: injected failure (status %d)", f.status);
        mock_admin_note_status(f.status);
        mock_api_send_error(req, id, f.status, fault_error_code(f.status), message);
        return;
    case MOCK_FAIL_RESET:
    case MOCK_FAIL_GARBAGE:
    case MOCK_FAIL_TRUNCATE:
    case MOCK_FAIL_HUGE:
    case MOCK_FAIL_NONJSON:
        mock_admin_note_outcome(mock_fail_mode_names[f.mode]);
        fault_close(req, id, f.mode);
        return;
    case MOCK_FAIL_HANG:
        mock_admin_note_outcome("hang");
        fault_hold(req, id);
        return;
    }
}

void mock_fault_init(struct event_base *base)
{
    fault_sweeper = evtimer_new(base, fault_sweep, NULL);
    if (fault_sweeper == NULL) {
        mock_log("fatal: cannot create the fault sweeper event");
        abort();
    }
}

void mock_fault_shutdown(void)
{
    /* evhttp_free() runs next and frees every connection still open, with the requests queued
     * on them; only requests libevent detached (held ones whose client left) are ours. */
    while (fault_list != NULL) {
        struct fault_conn *fc = fault_list;

        if (fc->state == FAULT_HELD) {
            evhttp_connection_set_closecb(fc->evcon, NULL, NULL);
            if (evhttp_request_get_connection(fc->req) == NULL)
                evhttp_request_free(fc->req);
        } else {
            bufferevent_setcb(evhttp_connection_get_bufferevent(fc->evcon), NULL, NULL, NULL, NULL);
        }
        fault_untrack(fc);
    }
    if (fault_sweeper != NULL)
        event_free(fault_sweeper);
    fault_sweeper = NULL;
}
