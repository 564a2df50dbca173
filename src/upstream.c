/*
 * upstream.c: owns the connections to the upstream and the exchanges
 * waiting for one.
 *
 * A connection is a bufferevent_openssl over a TCP socket, with a fresh SSL
 * per connection (a closed TLS session cannot be reused, so a connection is
 * never reconnected: it is closed and a new one is made). An exchange is one
 * request waiting for, or being answered on, a connection. The response
 * parser is a small HTTP/1.1 client reader: status line, headers, and a body
 * framed by Content-Length, chunked coding, or the end of the connection.
 *
 * Lifetimes: the pool owns connections and queued exchanges. A connection
 * owns the exchange it is serving until the exchange finishes. Connections
 * are never freed inside their own callbacks: closing one moves it to the
 * dead list and a reaper event frees it on the next loop turn.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/util.h>
#include <openssl/err.h>

#include "httpline.h"
#include "janitor.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "tls.h"
#include "upstream.h"

#define UPSTREAM_MAX_HEAD 65536 /* status line plus headers */

/* Life of one upstream connection. */
enum uconn_state {
    UCONN_RESOLVING,  /* waiting for the name lookup */
    UCONN_CONNECTING, /* TCP connect and TLS handshake under way */
    UCONN_IDLE,       /* open and unused; in pool->idle */
    UCONN_HEAD,       /* request sent; reading the status line and headers */
    UCONN_BODY,       /* reading the body */
    UCONN_CLOSED,     /* finished with; on pool->dead until the reaper frees it */
};

/* How the end of the body is found. */
enum body_mode {
    BODY_NONE,        /* HEAD, 204, 304: no body */
    BODY_LENGTH,      /* Content-Length bytes */
    BODY_CHUNKED,     /* chunked transfer coding */
    BODY_UNTIL_CLOSE, /* everything until the upstream closes */
};

/* Position inside a chunked body. */
enum chunk_state {
    CHUNK_SIZE,     /* expecting a chunk-size line */
    CHUNK_DATA,     /* inside chunk data */
    CHUNK_DATA_END, /* expecting the CRLF after chunk data */
    CHUNK_TRAILER,  /* after the last chunk: trailer lines up to an empty one */
};

struct uexchange;

/* One TLS connection to the upstream. */
struct uconn {
    TAILQ_ENTRY(uconn) link; /* in pool->idle, pool->busy or pool->dead */
    struct upstream_pool *pool;
    enum uconn_state state;
    struct bufferevent *bev; /* owns the socket and the SSL */
    struct evutil_addrinfo *addrs;
    struct evutil_addrinfo *next_addr; /* next address to try if this one fails */
    struct evdns_getaddrinfo_request *dns;
    struct event *connect_timer;
    struct uexchange *ex; /* the exchange being served, or NULL */
    unsigned answered;    /* responses completed here; > 0 means reused */
    enum body_mode body_mode;
    enum chunk_state chunk_state;
    size_t remaining;  /* bytes left of the body or of the chunk */
    size_t head_bytes; /* bytes of head read so far */
    bool keep_alive;   /* may be reused after this response */
    bool got_bytes;    /* any byte of the current response arrived */
};
TAILQ_HEAD(uconn_list, uconn);

/* One request on its way: waiting, or being answered on conn. */
struct uexchange {
    TAILQ_ENTRY(uexchange) link; /* in pool->waiting while queued */
    struct upstream_pool *pool;
    struct uconn *conn;    /* set while a connection serves it */
    struct evbuffer *wire; /* the serialised request, kept for one retry */
    bool head_request;     /* HEAD: the answer has no body */
    bool retryable;        /* idempotent: may be resent on a fresh connection */
    int attempts;
    struct event *deadline; /* the whole exchange must finish by then */
    upstream_done_fn done;
    void *arg;
    struct upstream_response resp;
    struct timespec started; /* for stproxy_upstream_duration_seconds */
};
TAILQ_HEAD(uexchange_list, uexchange);

struct upstream_pool {
    struct event_base *base;
    struct evdns_base *dns;
    struct upstream_settings cfg;
    char *host;             /* owned copy of cfg.host */
    char host_header[300];  /* "host" or "host:port" */
    int open;               /* connections not yet closed */
    struct uconn_list idle; /* most recently used first */
    struct uconn_list busy; /* resolving, connecting or serving */
    struct uconn_list dead; /* closed, waiting for the reaper */
    struct uexchange_list waiting;
    struct event *pump_ev; /* hands waiting exchanges to connections */
    struct event *reap_ev; /* frees dead connections */
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_try_connect(struct uconn *conn);

static const char *const uconn_state_names[] = {
    [UCONN_RESOLVING] = "resolving", [UCONN_CONNECTING] = "connecting", [UCONN_IDLE] = "idle",
    [UCONN_HEAD] = "reading head",   [UCONN_BODY] = "reading body",     [UCONN_CLOSED] = "closed",
};

static void conn_set_state(struct uconn *conn, enum uconn_state state)
{
    log_debug("upstream conn %p: %s -> %s", (void *)conn, uconn_state_names[conn->state],
              uconn_state_names[state]);
    conn->state = state;
}

/* ---- exchanges ---------------------------------------------------------- */

static void exchange_free(struct uexchange *ex)
{
    event_free(ex->deadline);
    evbuffer_free(ex->wire);
    evhttp_clear_headers(&ex->resp.headers);
    evbuffer_free(ex->resp.body);
    free(ex);
}

/* Reports the outcome and frees the exchange. The exchange must already be
 * detached from any connection and from the waiting queue. */
static void exchange_finish(struct uexchange *ex, enum upstream_result result, const char *detail)
{
    metrics_observe(METRIC_UPSTREAM_DURATION, janitor_seconds_since(&ex->started));
    if (result != UPSTREAM_OK)
        metrics_inc(METRIC_UPSTREAM_ERRORS);
    else
        metrics_count_status(METRIC_UPSTREAM_RESPONSES, ex->resp.status);
    ex->done(result, &ex->resp, detail, ex->arg);
    exchange_free(ex);
}

/* ---- connections -------------------------------------------------------- */

static void pool_schedule_pump(struct upstream_pool *pool)
{
    event_active(pool->pump_ev, EV_TIMEOUT, 0);
}

/* Closes a connection; it is freed later by the reaper. Its exchange, if any,
 * must have been detached first. */
static void conn_close(struct uconn *conn)
{
    struct upstream_pool *pool = conn->pool;

    if (conn->state == UCONN_CLOSED)
        return;
    if (conn->state == UCONN_IDLE)
        TAILQ_REMOVE(&pool->idle, conn, link);
    else
        TAILQ_REMOVE(&pool->busy, conn, link);
    if (conn->dns != NULL) {
        struct evdns_getaddrinfo_request *req = conn->dns;
        conn->dns = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    if (conn->bev != NULL) {
        bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
        bufferevent_setcb(conn->bev, NULL, NULL, NULL, NULL);
    }
    event_del(conn->connect_timer);
    conn_set_state(conn, UCONN_CLOSED);
    TAILQ_INSERT_TAIL(&pool->dead, conn, link);
    pool->open--;
    metrics_set(METRIC_UPSTREAM_OPEN, pool->open);
    event_active(pool->reap_ev, EV_TIMEOUT, 0);
    pool_schedule_pump(pool);
}

static struct uexchange *conn_detach(struct uconn *conn)
{
    struct uexchange *ex = conn->ex;
    if (ex != NULL) {
        ex->conn = NULL;
        conn->ex = NULL;
    }
    return ex;
}

/* Fails the connection and the exchange it serves. */
static void conn_fail(struct uconn *conn, enum upstream_result result, const char *detail)
{
    struct uexchange *ex = conn_detach(conn);

    conn_close(conn);
    if (ex != NULL)
        exchange_finish(ex, result, detail);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *pool = arg;
    struct uconn *conn;
    (void)fd;
    (void)what;

    while ((conn = TAILQ_FIRST(&pool->dead)) != NULL) {
        TAILQ_REMOVE(&pool->dead, conn, link);
        if (conn->bev != NULL)
            bufferevent_free(conn->bev);
        if (conn->addrs != NULL)
            evutil_freeaddrinfo(conn->addrs);
        event_free(conn->connect_timer);
        free(conn);
    }
}

/* Starts sending ex on an open connection, which must be on pool->busy. */
static void conn_start(struct uconn *conn, struct uexchange *ex)
{
    struct evbuffer *out = bufferevent_get_output(conn->bev);

    conn->ex = ex;
    ex->conn = conn;
    ex->attempts++;
    conn->got_bytes = false;
    conn->head_bytes = 0;
    conn->keep_alive = true;
    ex->resp.status = 0;
    evhttp_clear_headers(&ex->resp.headers);
    evbuffer_drain(ex->resp.body, evbuffer_get_length(ex->resp.body));
    conn_set_state(conn, UCONN_HEAD);
    evbuffer_add(out, evbuffer_pullup(ex->wire, -1), evbuffer_get_length(ex->wire));
    metrics_inc(METRIC_UPSTREAM_REQUESTS);
    if (conn->answered > 0)
        metrics_inc(METRIC_UPSTREAM_REUSED);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct uconn *conn = arg;
    char detail[128];
    (void)fd;
    (void)what;

    snprintf(detail, sizeof(detail), "connecting to the upstream took longer than %ld ms",
             conn->pool->cfg.connect_timeout_ms);
    log_warn("upstream: %s", detail);
    conn_fail(conn, UPSTREAM_TIMEOUT, detail);
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct uconn *conn = arg;
    char detail[256];

    if (result == EVUTIL_EAI_CANCEL)
        return; /* conn_close cancelled us; conn is on its way out */
    conn->dns = NULL;
    if (result != 0) {
        snprintf(detail, sizeof(detail), "cannot resolve upstream host %s: %s", conn->pool->host,
                 evutil_gai_strerror(result));
        log_warn("upstream: %s", detail);
        conn_fail(conn, UPSTREAM_CONNECT_FAILED, detail);
        return;
    }
    conn->addrs = res;
    conn->next_addr = res;
    conn_try_connect(conn);
}

/* Connects to the next address of the lookup's answer. */
static void conn_try_connect(struct uconn *conn)
{
    struct upstream_pool *pool = conn->pool;
    struct evutil_addrinfo *ai = conn->next_addr;
    SSL *ssl;

    if (ai == NULL) {
        char detail[256];
        snprintf(detail, sizeof(detail), "cannot connect to upstream %s:%d: %s", pool->host,
                 pool->cfg.port, "no address accepted the connection");
        log_warn("upstream: %s", detail);
        conn_fail(conn, UPSTREAM_CONNECT_FAILED, detail);
        return;
    }
    conn->next_addr = ai->ai_next;
    if (conn->bev != NULL) {
        bufferevent_free(conn->bev);
        conn->bev = NULL;
    }
    ssl = tls_client_ssl_new(pool->cfg.tls, pool->host);
    if (ssl == NULL) {
        conn_fail(conn, UPSTREAM_TLS_FAILED, "cannot set up TLS for the upstream");
        return;
    }
    conn->bev = bufferevent_openssl_socket_new(pool->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                               BEV_OPT_CLOSE_ON_FREE);
    if (conn->bev == NULL) {
        SSL_free(ssl);
        conn_fail(conn, UPSTREAM_CONNECT_FAILED, "cannot create an upstream connection");
        return;
    }
    /* An idle kept-alive connection closed without close_notify is an
     * ordinary end. (With OpenSSL 3 a missing close_notify still arrives as
     * an error, so a close-delimited body must end with close_notify to be
     * accepted: a truncated answer is never taken for a whole one.) */
    bufferevent_openssl_set_allow_dirty_shutdown(conn->bev, 1);
    bufferevent_setcb(conn->bev, conn_read_cb, NULL, conn_event_cb, conn);
    conn_set_state(conn, UCONN_CONNECTING);
    if (bufferevent_socket_connect(conn->bev, ai->ai_addr, (int)ai->ai_addrlen) != 0) {
        conn_try_connect(conn);
        return;
    }
    bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
}

/* Opens a new connection for ex. */
static void conn_open(struct upstream_pool *pool, struct uexchange *ex)
{
    struct uconn *conn = xcalloc(1, sizeof(*conn));
    struct evutil_addrinfo hints;
    struct timeval tv;
    char port[8];

    conn->pool = pool;
    conn->state = UCONN_RESOLVING;
    conn->ex = ex;
    ex->conn = conn;
    conn->connect_timer = evtimer_new(pool->base, connect_timeout_cb, conn);
    tv.tv_sec = pool->cfg.connect_timeout_ms / 1000;
    tv.tv_usec = (pool->cfg.connect_timeout_ms % 1000) * 1000;
    evtimer_add(conn->connect_timer, &tv);
    TAILQ_INSERT_TAIL(&pool->busy, conn, link);
    pool->open++;
    metrics_set(METRIC_UPSTREAM_OPEN, pool->open);
    metrics_inc(METRIC_UPSTREAM_CONNECTS);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    snprintf(port, sizeof(port), "%d", pool->cfg.port);
    /* May answer at once (address literals, /etc/hosts): dns_cb then runs
     * before this returns, and conn->dns stays NULL. */
    conn->dns = evdns_getaddrinfo(pool->dns, pool->host, port, &hints, dns_cb, conn);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *pool = arg;
    struct uexchange *ex;
    (void)fd;
    (void)what;

    while ((ex = TAILQ_FIRST(&pool->waiting)) != NULL) {
        struct uconn *conn = TAILQ_FIRST(&pool->idle);
        if (conn != NULL) {
            TAILQ_REMOVE(&pool->waiting, ex, link);
            TAILQ_REMOVE(&pool->idle, conn, link);
            TAILQ_INSERT_TAIL(&pool->busy, conn, link);
            conn_start(conn, ex);
        } else if (pool->open < pool->cfg.max_connections) {
            TAILQ_REMOVE(&pool->waiting, ex, link);
            conn_open(pool, ex);
        } else {
            break;
        }
    }
}

/* The response is complete: hand it over and recycle the connection. */
static void conn_complete(struct uconn *conn)
{
    struct uexchange *ex = conn_detach(conn);
    struct upstream_pool *pool = conn->pool;

    conn->answered++;
    if (conn->keep_alive && evbuffer_get_length(bufferevent_get_input(conn->bev)) == 0) {
        TAILQ_REMOVE(&pool->busy, conn, link);
        conn_set_state(conn, UCONN_IDLE);
        TAILQ_INSERT_HEAD(&pool->idle, conn, link);
        pool_schedule_pump(pool);
    } else {
        conn_close(conn);
    }
    exchange_finish(ex, UPSTREAM_OK, NULL);
}

/* The connection ended or broke before the response was complete. */
static void conn_broken(struct uconn *conn, const char *why)
{
    struct uexchange *ex = conn->ex;
    char detail[256];

    if (ex != NULL && !conn->got_bytes && conn->answered > 0 && ex->retryable && ex->attempts < 2) {
        /* A reused connection that the upstream had already closed: the
         * request never arrived, so sending it again is safe. */
        conn_detach(conn);
        conn_close(conn);
        TAILQ_INSERT_HEAD(&conn->pool->waiting, ex, link);
        pool_schedule_pump(conn->pool);
        return;
    }
    snprintf(detail, sizeof(detail), "upstream %s", why);
    log_warn("upstream: %s", detail);
    conn_fail(conn, UPSTREAM_BAD_RESPONSE, detail);
}

/* ---- response parsing --------------------------------------------------- */

static bool header_has_token(const struct evkeyvalq *headers, const char *name, const char *token)
{
    const struct evkeyval *h;
    size_t tlen = strlen(token);

    TAILQ_FOREACH(h, headers, next)
    {
        const char *p;
        if (strcasecmp(h->key, name) != 0)
            continue;
        for (p = h->value; *p != '\0';) {
            size_t len;
            while (*p == ' ' || *p == '\t' || *p == ',')
                p++;
            len = strcspn(p, ", \t;");
            if (len == tlen && strncasecmp(p, token, tlen) == 0)
                return true;
            p += len;
            while (*p != '\0' && *p != ',')
                p++;
        }
    }
    return false;
}

/* Parses the status line; false for anything that is not HTTP/1.x NNN. */
static bool parse_status_line(struct uconn *conn, const char *line)
{
    int major, minor, code, n = 0;

    if (sscanf(line, "HTTP/%1d.%1d %3d%n", &major, &minor, &code, &n) != 3 || major != 1 ||
        code < 100 || code > 599 || (line[n] != '\0' && line[n] != ' '))
        return false;
    conn->ex->resp.status = code;
    if (minor == 0)
        conn->keep_alive = false;
    return true;
}

static bool parse_header_line(struct uconn *conn, char *line)
{
    const char *why;
    char *value;

    if (!httpline_split(line, &value, &why))
        return false;
    return evhttp_add_header(&conn->ex->resp.headers, line, value) == 0;
}

/* Decides how the body is framed, after the headers. */
static enum upstream_result choose_body_mode(struct uconn *conn, const char **why)
{
    struct upstream_response *resp = &conn->ex->resp;
    const struct evkeyval *h;
    const char *length = NULL;

    if (header_has_token(&resp->headers, "Connection", "close"))
        conn->keep_alive = false;
    if (conn->ex->head_request || resp->status == 204 || resp->status == 304) {
        conn->body_mode = BODY_NONE;
        return UPSTREAM_OK;
    }
    if (evhttp_find_header(&resp->headers, "Transfer-Encoding") != NULL) {
        /* Transfer-Encoding wins over Content-Length, and such a message
         * leaves the connection suspect: do not reuse it. */
        if (evhttp_find_header(&resp->headers, "Content-Length") != NULL)
            conn->keep_alive = false;
        if (header_has_token(&resp->headers, "Transfer-Encoding", "chunked")) {
            conn->body_mode = BODY_CHUNKED;
            conn->chunk_state = CHUNK_SIZE;
            conn->remaining = 0;
        } else {
            conn->body_mode = BODY_UNTIL_CLOSE;
            conn->keep_alive = false;
        }
        return UPSTREAM_OK;
    }
    TAILQ_FOREACH(h, &resp->headers, next)
    {
        if (strcasecmp(h->key, "Content-Length") != 0)
            continue;
        if (length != NULL && strcmp(length, h->value) != 0) {
            *why = "sent conflicting Content-Length headers";
            return UPSTREAM_BAD_RESPONSE;
        }
        length = h->value;
    }
    if (length != NULL) {
        char *end;
        unsigned long long n;
        if (length[0] < '0' || length[0] > '9') {
            *why = "sent an invalid Content-Length";
            return UPSTREAM_BAD_RESPONSE;
        }
        errno = 0;
        n = strtoull(length, &end, 10);
        if (*end != '\0' || errno != 0) {
            *why = "sent an invalid Content-Length";
            return UPSTREAM_BAD_RESPONSE;
        }
        if (n > conn->pool->cfg.max_body) {
            *why = "answer is larger than upstream_max_body_size";
            return UPSTREAM_TOO_LARGE;
        }
        conn->body_mode = BODY_LENGTH;
        conn->remaining = (size_t)n;
        return UPSTREAM_OK;
    }
    conn->body_mode = BODY_UNTIL_CLOSE;
    conn->keep_alive = false;
    return UPSTREAM_OK;
}

/* Moves up to n bytes of body from in to the response, checking the limit. */
static bool take_body(struct uconn *conn, struct evbuffer *in, size_t n)
{
    struct evbuffer *body = conn->ex->resp.body;
    if (evbuffer_get_length(body) + n > conn->pool->cfg.max_body)
        return false;
    evbuffer_remove_buffer(in, body, n);
    return true;
}

/* Reads the head. Returns false when the connection was failed. */
static bool read_head(struct uconn *conn, struct evbuffer *in)
{
    for (;;) {
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        const char *why = NULL;
        enum upstream_result r;

        if (line == NULL) {
            if (evbuffer_get_length(in) + conn->head_bytes > UPSTREAM_MAX_HEAD)
                goto bad_head;
            return true;
        }
        conn->head_bytes += len + 2;
        if (conn->head_bytes > UPSTREAM_MAX_HEAD) {
            free(line);
            goto bad_head;
        }
        if (conn->ex->resp.status == 0) {
            bool ok = parse_status_line(conn, line);
            free(line);
            if (!ok)
                goto garbage;
            continue;
        }
        if (len > 0) {
            bool ok = parse_header_line(conn, line);
            free(line);
            if (!ok)
                goto garbage;
            continue;
        }
        free(line);
        if (conn->ex->resp.status < 200) {
            /* An interim answer (100 Continue): the real one follows. */
            conn->ex->resp.status = 0;
            evhttp_clear_headers(&conn->ex->resp.headers);
            continue;
        }
        r = choose_body_mode(conn, &why);
        if (r != UPSTREAM_OK) {
            char detail[160];
            snprintf(detail, sizeof(detail), "upstream %s", why);
            log_warn("upstream: %s", detail);
            conn_fail(conn, r, detail);
            return false;
        }
        conn_set_state(conn, UCONN_BODY);
        return true;
    }
bad_head:
    conn_broken(conn, "sent a response head larger than 64 KiB");
    return false;
garbage:
    conn->got_bytes = true; /* never retry an answer we could not read */
    conn_broken(conn, "sent a malformed response head");
    return false;
}

/* Reads body bytes. Returns true when the body is complete. */
static bool read_body(struct uconn *conn, struct evbuffer *in, bool *failed)
{
    *failed = false;
    for (;;) {
        size_t avail = evbuffer_get_length(in), n;
        char *line, *end;
        size_t len;

        switch (conn->body_mode) {
        case BODY_NONE:
            return true;
        case BODY_LENGTH:
            n = avail < conn->remaining ? avail : conn->remaining;
            if (n > 0 && !take_body(conn, in, n))
                goto too_large;
            conn->remaining -= n;
            return conn->remaining == 0;
        case BODY_UNTIL_CLOSE:
            if (avail > 0 && !take_body(conn, in, avail))
                goto too_large;
            return false; /* completes on EOF */
        case BODY_CHUNKED:
            break;
        }
        switch (conn->chunk_state) {
        case CHUNK_SIZE:
            line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
            if (line == NULL) {
                if (avail > 1024)
                    goto garbage;
                return false;
            }
            /* Hex digits only (no sign, blanks or 0x), at most 15 of them. */
            len = strspn(line, "0123456789abcdefABCDEF");
            if (len == 0 || len > 15 ||
                (line[len] != '\0' && line[len] != ';' && line[len] != ' ' && line[len] != '\t')) {
                free(line);
                goto garbage;
            }
            conn->remaining = (size_t)strtoull(line, &end, 16);
            free(line);
            if (conn->remaining > conn->pool->cfg.max_body)
                goto too_large;
            conn->chunk_state = conn->remaining == 0 ? CHUNK_TRAILER : CHUNK_DATA;
            break;
        case CHUNK_DATA:
            n = avail < conn->remaining ? avail : conn->remaining;
            if (n > 0 && !take_body(conn, in, n))
                goto too_large;
            conn->remaining -= n;
            if (conn->remaining > 0)
                return false;
            conn->chunk_state = CHUNK_DATA_END;
            break;
        case CHUNK_DATA_END:
            line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
            if (line == NULL)
                return false;
            free(line);
            if (len != 0)
                goto garbage;
            conn->chunk_state = CHUNK_SIZE;
            break;
        case CHUNK_TRAILER:
            line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
            if (line == NULL)
                return false;
            free(line);
            if (len == 0)
                return true;
            break;
        }
    }
too_large:
    log_warn("upstream: answer larger than upstream_max_body_size (%zu bytes)",
             conn->pool->cfg.max_body);
    conn_fail(conn, UPSTREAM_TOO_LARGE, "upstream answer is larger than upstream_max_body_size");
    *failed = true;
    return false;
garbage:
    conn_broken(conn, "sent a malformed chunked body");
    *failed = true;
    return false;
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct uconn *conn = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    bool failed;

    if (evbuffer_get_length(in) == 0)
        return;
    if (conn->state == UCONN_IDLE || conn->ex == NULL) {
        /* Bytes nobody asked for: the stream is out of step. */
        log_warn("upstream: unexpected bytes on an idle connection; closing it");
        conn_close(conn);
        return;
    }
    conn->got_bytes = true;
    if (conn->state == UCONN_HEAD && !read_head(conn, in))
        return;
    if (conn->state != UCONN_BODY)
        return;
    if (read_body(conn, in, &failed))
        conn_complete(conn);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct uconn *conn = arg;
    int saved_errno = EVUTIL_SOCKET_ERROR();
    char detail[256];

    if (what & BEV_EVENT_CONNECTED) {
        /* For a TLS bufferevent this means the handshake and the
         * certificate verification succeeded. */
        struct uexchange *ex = conn_detach(conn);
        event_del(conn->connect_timer);
        if (ex != NULL) {
            conn_start(conn, ex);
        } else {
            TAILQ_REMOVE(&conn->pool->busy, conn, link);
            conn_set_state(conn, UCONN_IDLE);
            TAILQ_INSERT_HEAD(&conn->pool->idle, conn, link);
            pool_schedule_pump(conn->pool);
        }
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    switch (conn->state) {
    case UCONN_CONNECTING: {
        unsigned long ssl_err = bufferevent_get_openssl_error(bev);
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        log_debug("upstream: connect event 0x%x ssl_err=%lu lib=%d reason=%d errno=%d", what,
                  ssl_err, ERR_GET_LIB(ssl_err), ERR_GET_REASON(ssl_err), saved_errno);
        if (ssl_err != 0 && (ERR_GET_LIB(ssl_err) == ERR_LIB_SYS || ERR_GET_LIB(ssl_err) == 0)) {
            /* A socket error (libevent reports it as SSL_ERROR_SYSCALL, or
             * OpenSSL as a system error): not a TLS problem. */
            if (ERR_GET_LIB(ssl_err) == ERR_LIB_SYS)
                saved_errno = ERR_GET_REASON(ssl_err);
            ssl_err = 0;
        }
        if (saved_errno == 0 && (ssl_err != 0 || (ssl && SSL_get_verify_result(ssl) != X509_V_OK) ||
                                 (what & BEV_EVENT_EOF))) {
            tls_failure_reason(ssl, ssl_err, detail, sizeof(detail));
            while (bufferevent_get_openssl_error(bev) != 0)
                ; /* drop the rest of the error queue */
            log_error("upstream: %s:%d: %s", conn->pool->host, conn->pool->cfg.port, detail);
            conn_fail(conn, UPSTREAM_TLS_FAILED, detail);
            return;
        }
        if (conn->next_addr != NULL) {
            conn_try_connect(conn);
            return;
        }
        snprintf(detail, sizeof(detail), "cannot connect to upstream %s:%d: %s", conn->pool->host,
                 conn->pool->cfg.port,
                 saved_errno ? evutil_socket_error_to_string(saved_errno) : "connection failed");
        log_warn("upstream: %s", detail);
        conn_fail(conn, UPSTREAM_CONNECT_FAILED, detail);
        return;
    }
    case UCONN_IDLE:
        /* The upstream closed a kept-alive connection: normal. */
        conn_close(conn);
        return;
    case UCONN_BODY:
        if (conn->body_mode == BODY_UNTIL_CLOSE && (what & BEV_EVENT_EOF)) {
            bool failed;
            read_body(conn, bufferevent_get_input(bev), &failed);
            if (!failed) {
                conn->keep_alive = false;
                conn_complete(conn);
            }
            return;
        }
        conn_broken(conn, "closed the connection in the middle of the body");
        return;
    case UCONN_HEAD:
        conn_broken(conn, (what & BEV_EVENT_EOF) ? "closed the connection without answering"
                                                 : "reset the connection without answering");
        return;
    case UCONN_RESOLVING:
    case UCONN_CLOSED:
        return;
    }
}

/* ---- the pool ----------------------------------------------------------- */

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct uexchange *ex = arg;
    struct upstream_pool *pool = ex->pool;
    char detail[128];
    (void)fd;
    (void)what;

    snprintf(detail, sizeof(detail), "upstream did not answer within %ld ms", pool->cfg.timeout_ms);
    log_warn("upstream: %s", detail);
    if (ex->conn != NULL) {
        /* An answer may still arrive on this connection: it cannot be reused. */
        struct uconn *conn = ex->conn;
        conn_detach(conn);
        conn_close(conn);
    } else {
        TAILQ_REMOVE(&pool->waiting, ex, link);
    }
    exchange_finish(ex, UPSTREAM_TIMEOUT, detail);
}

struct upstream_pool *upstream_pool_new(struct event_base *base,
                                        const struct upstream_settings *settings)
{
    struct upstream_pool *pool = xcalloc(1, sizeof(*pool));

    pool->base = base;
    pool->cfg = *settings;
    pool->host = xstrdup(settings->host);
    pool->cfg.host = pool->host;
    {
        bool v6 = strchr(pool->host, ':') != NULL;
        char port[8] = "";
        if (settings->port != 443)
            snprintf(port, sizeof(port), ":%d", settings->port);
        snprintf(pool->host_header, sizeof(pool->host_header), "%s%s%s%s", v6 ? "[" : "",
                 pool->host, v6 ? "]" : "", port);
    }
    pool->dns = evdns_base_new(base, 0);
    evdns_base_load_hosts(pool->dns, NULL);
    TAILQ_INIT(&pool->idle);
    TAILQ_INIT(&pool->busy);
    TAILQ_INIT(&pool->dead);
    TAILQ_INIT(&pool->waiting);
    pool->pump_ev = event_new(base, -1, 0, pump_cb, pool);
    pool->reap_ev = event_new(base, -1, 0, reap_cb, pool);
    return pool;
}

void upstream_pool_free(struct upstream_pool *pool)
{
    struct uexchange *ex;
    struct uconn *conn;

    while ((ex = TAILQ_FIRST(&pool->waiting)) != NULL) {
        TAILQ_REMOVE(&pool->waiting, ex, link);
        exchange_finish(ex, UPSTREAM_CONNECT_FAILED, "the proxy is shutting down");
    }
    while ((conn = TAILQ_FIRST(&pool->busy)) != NULL)
        conn_fail(conn, UPSTREAM_CONNECT_FAILED, "the proxy is shutting down");
    while ((conn = TAILQ_FIRST(&pool->idle)) != NULL)
        conn_close(conn);
    reap_cb(-1, 0, pool);
    event_free(pool->pump_ev);
    event_free(pool->reap_ev);
    evdns_base_free(pool->dns, 0);
    free(pool->host);
    free(pool);
}

int upstream_pool_open_connections(const struct upstream_pool *pool)
{
    return pool->open;
}

static bool method_is_idempotent(const char *method)
{
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
           strcmp(method, "PUT") == 0 || strcmp(method, "DELETE") == 0 ||
           strcmp(method, "OPTIONS") == 0;
}

void upstream_send(struct upstream_pool *pool, const char *method, const char *target,
                   const struct evkeyvalq *headers, struct evbuffer *body, upstream_done_fn done,
                   void *arg)
{
    struct uexchange *ex = xcalloc(1, sizeof(*ex));
    const struct evkeyval *h;
    size_t body_len = body ? evbuffer_get_length(body) : 0;
    struct timeval tv;

    clock_gettime(CLOCK_MONOTONIC, &ex->started);
    ex->pool = pool;
    ex->done = done;
    ex->arg = arg;
    ex->head_request = strcmp(method, "HEAD") == 0;
    ex->retryable = method_is_idempotent(method);
    TAILQ_INIT(&ex->resp.headers);
    ex->resp.body = evbuffer_new();
    ex->wire = evbuffer_new();
    evbuffer_add_printf(ex->wire, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target,
                        pool->host_header);
    TAILQ_FOREACH(h, headers, next)
    evbuffer_add_printf(ex->wire, "%s: %s\r\n", h->key, h->value);
    if (body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
        strcmp(method, "PATCH") == 0)
        evbuffer_add_printf(ex->wire, "Content-Length: %zu\r\n", body_len);
    evbuffer_add(ex->wire, "\r\n", 2);
    if (body_len > 0)
        evbuffer_add(ex->wire, evbuffer_pullup(body, -1), body_len);

    ex->deadline = evtimer_new(pool->base, deadline_cb, ex);
    tv.tv_sec = pool->cfg.timeout_ms / 1000;
    tv.tv_usec = (pool->cfg.timeout_ms % 1000) * 1000;
    evtimer_add(ex->deadline, &tv);
    TAILQ_INSERT_TAIL(&pool->waiting, ex, link);
    pool_schedule_pump(pool);
}
