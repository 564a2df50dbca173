/*
 * server.c: the HTTP/1.1 listeners (client and admin): accepting, the
 * connection limit, reading and checking requests, and writing answers.
 *
 * Our own parser rather than evhttp's: the first benchmarks showed evhttp's
 * request and answer handling at about half the instructions of a cache hit
 * (a malloc per header line, a printf per answer header, a Date formatted per
 * answer), and evhttp cannot refuse the shapes a proxy must refuse (both
 * Content-Length and Transfer-Encoding, names with blanks, 431 for oversized
 * headers). Here a request's lines are copied once into a per-listener
 * buffer, the answer head is assembled in one buffer, and Date is formatted
 * once a second.
 *
 * A connection reads one request at a time: while the handler has it,
 * further bytes (a pipelining client) wait in the input buffer, bounded by a
 * read watermark, and are parsed once the answer has been written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "config.h"
#include "httpline.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "reply.h"
#include "server.h"

/* The most a client socket's bufferevent writes in one call (libevent's default: 16 KiB). */
#define SERVER_MAX_SINGLE_WRITE (256 * 1024)
/* Pipelined bytes kept beyond one request's limits while a request is handled. */
#define SERVER_PIPELINE_SLACK (64 * 1024)
/* The line buffer holds a whole request head and a little more. */
#define SERVER_LINE_SLACK     8
#define SERVER_LISTEN_BACKLOG 512

/* Where a connection is in its request/answer cycle. */
enum conn_state {
    CONN_READING_HEAD, /* waiting for a request line and headers (or idle between requests) */
    CONN_READING_BODY, /* headers done, reading the body */
    CONN_HANDLING,     /* the handler has the request */
    CONN_WRITING,      /* the answer is being written */
};

/* How the body of the request being read is framed. */
enum body_state {
    BODY_LENGTH,     /* Content-Length bytes left */
    BODY_CHUNK_SIZE, /* the next chunk-size line */
    BODY_CHUNK_DATA, /* chunk bytes left */
    BODY_CHUNK_END,  /* the CRLF after a chunk's data */
    BODY_TRAILERS,   /* trailer lines up to the empty one */
};

struct server_conn {
    struct server *srv;
    struct bufferevent *bev;
    enum conn_state state;
    enum body_state body;
    struct server_request *req; /* being read or handled; NULL between requests */
    long long left;             /* body or chunk bytes still to read */
    bool keep_alive;            /* after the answer being written */
    bool untimed;               /* the read timeout is off while the handler waits */
    bool throttled;             /* reading stopped: too many pipelined bytes wait */
    struct server_conn *prev, *next;
    /* Idle: kept alive between requests with no byte of the next one yet. Idle connections
     * are listed oldest first, so the limit can close the one idle longest. */
    bool idle;
    struct server_conn *idle_prev, *idle_next;
    /* A request must arrive whole within the timeout of its first byte (slowloris). */
    struct event *arrival;
};

struct server_request {
    struct server_conn *conn; /* NULL once the client has gone */
    enum evhttp_cmd_type cmd;
    char *uri;
    int minor; /* HTTP/1.minor */
    bool head_done;
    bool has_length, chunked, expect_continue;
    long long length;
    struct evkeyvalq in_headers, out_headers;
    struct evbuffer *body;
};

struct server {
    char name[16]; /* "client" or "admin", for logs */
    struct event_base *base;
    struct evconnlistener *listener;
    struct server_limits limits;
    server_handler_fn handler;
    void *handler_arg;
    int open;                  /* connections accepted and not yet closed */
    bool paused;               /* accepting paused at max_connections */
    bool stopped;              /* no longer accepting (draining) */
    struct server_conn *conns; /* every open connection */
    struct server_conn *idle_first, *idle_last;
    time_t last_pause_log; /* pauses are logged at most every 10 s */
    time_t last_evict_log; /* so are idle connections closed for new ones */
    char *line;            /* max_header_size + 1 bytes: the line being parsed */
    char address[80];
};

/* The methods a request line may name. */
static const struct {
    const char *name;
    enum evhttp_cmd_type cmd;
} server_methods[] = {
    {"GET", EVHTTP_REQ_GET},         {"POST", EVHTTP_REQ_POST},     {"HEAD", EVHTTP_REQ_HEAD},
    {"PUT", EVHTTP_REQ_PUT},         {"DELETE", EVHTTP_REQ_DELETE}, {"PATCH", EVHTTP_REQ_PATCH},
    {"OPTIONS", EVHTTP_REQ_OPTIONS}, {"TRACE", EVHTTP_REQ_TRACE},   {"CONNECT", EVHTTP_REQ_CONNECT},
};

static void conn_read_cb(struct bufferevent *bev, void *arg);

/* ---- connections -------------------------------------------------------------------------- */

static void update_gauge(struct server *srv)
{
    if (srv->limits.count_metrics)
        metrics_set(METRIC_CLIENT_OPEN, srv->open);
}

static void set_timeouts(struct server_conn *c, bool reading)
{
    struct timeval tv = {c->srv->limits.timeout_ms / 1000,
                         (c->srv->limits.timeout_ms % 1000) * 1000};

    bufferevent_set_timeouts(c->bev, reading ? &tv : NULL, &tv);
}

static void request_free(struct server_request *req)
{
    if (req == NULL)
        return;
    evhttp_clear_headers(&req->in_headers);
    evhttp_clear_headers(&req->out_headers);
    if (req->body != NULL)
        evbuffer_free(req->body);
    free(req->uri);
    free(req);
}

static struct server_request *request_new(struct server_conn *c)
{
    struct server_request *req = xcalloc(1, sizeof(*req));

    req->conn = c;
    TAILQ_INIT(&req->in_headers);
    TAILQ_INIT(&req->out_headers);
    req->body = evbuffer_new();
    return req;
}

/* ---- the connection limit ------------------------------------------------------------- */

static void idle_remove(struct server_conn *c)
{
    struct server *srv = c->srv;

    if (!c->idle)
        return;
    if (c->idle_prev != NULL)
        c->idle_prev->idle_next = c->idle_next;
    else
        srv->idle_first = c->idle_next;
    if (c->idle_next != NULL)
        c->idle_next->idle_prev = c->idle_prev;
    else
        srv->idle_last = c->idle_prev;
    c->idle = false;
    c->idle_prev = c->idle_next = NULL;
}

static void idle_add(struct server_conn *c)
{
    struct server *srv = c->srv;

    if (c->idle)
        return;
    c->idle = true;
    c->idle_prev = srv->idle_last;
    c->idle_next = NULL;
    if (srv->idle_last != NULL)
        srv->idle_last->idle_next = c;
    else
        srv->idle_first = c;
    srv->idle_last = c;
}

/* At max_connections the listener keeps accepting while some connection is idle (a new client
 * then takes the place of the one idle longest); with none idle it pauses, and further clients
 * wait in the kernel's accept queue instead of costing us memory. */
static void limit_update(struct server *srv)
{
    bool full = srv->open >= srv->limits.max_connections && srv->idle_first == NULL;

    if (srv->stopped)
        return;
    if (full && !srv->paused) {
        time_t now = time(NULL);

        evconnlistener_disable(srv->listener);
        srv->paused = true;
        if (srv->limits.count_metrics)
            metrics_inc(METRIC_CLIENT_LIMITED);
        if (now - srv->last_pause_log >= 10) {
            log_warn("%s: %d connections open (max_connections), none idle: new ones wait "
                     "until one closes or falls idle",
                     srv->name, srv->open);
            srv->last_pause_log = now;
        }
    } else if (!full && srv->paused) {
        evconnlistener_enable(srv->listener);
        srv->paused = false;
    }
}

static void conn_free(struct server_conn *c)
{
    struct server *srv = c->srv;

    idle_remove(c);
    event_free(c->arrival);

    if (c->req != NULL) {
        if (c->state == CONN_HANDLING)
            c->req->conn = NULL; /* the handler still has it: its answer goes nowhere */
        else
            request_free(c->req);
    }
    bufferevent_free(c->bev);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    free(c);
    srv->open--;
    update_gauge(srv);
    limit_update(srv);
}

static void arrival_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server_conn *c = arg;

    (void)fd;
    (void)what;
    /* Bytes kept coming, but too slowly for the request to be whole in time. */
    log_info("%s: closed a connection whose request did not arrive within client_timeout",
             c->srv->name);
    conn_free(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    /* EOF, an error or a timeout: a request half read is dropped without an answer, one being
     * handled is detached, an answer being written is lost with the client. */
    conn_free(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct server_conn *c = arg;

    if (c->state != CONN_WRITING)
        return;
    if (!c->keep_alive) {
        conn_free(c);
        return;
    }
    c->state = CONN_READING_HEAD;
    if (c->untimed) {
        set_timeouts(c, true);
        c->untimed = false;
    }
    if (c->throttled) {
        bufferevent_enable(bev, EV_READ);
        c->throttled = false;
    }
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
        conn_read_cb(bev, c); /* a pipelined request */
    } else {
        idle_add(c);
        limit_update(c->srv);
    }
}

static void accept_cb(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct server *srv = arg;
    struct server_conn *c;

    (void)listener;
    (void)sa;
    (void)salen;
    if (srv->open >= srv->limits.max_connections && srv->idle_first != NULL) {
        time_t now = time(NULL);

        if (srv->limits.count_metrics)
            metrics_inc(METRIC_CLIENT_IDLE_CLOSED);
        if (now - srv->last_evict_log >= 10) {
            log_info("%s: max_connections reached: closing the connection idle longest for a "
                     "new client",
                     srv->name);
            srv->last_evict_log = now;
        }
        conn_free(srv->idle_first);
    }
    c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->state = CONN_READING_HEAD;
    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    /* A device list is tens of kilobytes: one write instead of libevent's 16 KiB slices. */
    bufferevent_set_max_single_write(c->bev, SERVER_MAX_SINGLE_WRITE);
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    c->arrival = evtimer_new(srv->base, arrival_cb, c);
    set_timeouts(c, true);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    srv->open++;
    if (srv->limits.count_metrics)
        metrics_inc(METRIC_CLIENT_ACCEPTED);
    update_gauge(srv);
    /* A new client is not idle: it is about to send its first request. */
    limit_update(srv);
}

/* ---- answers ------------------------------------------------------------------------------ */

/* "Date: ...\r\n" for this second, formatted once a second; *len is its length. */
static const char *date_header(size_t *len)
{
    static time_t last;
    static char line[64];
    static size_t line_len;
    time_t now = time(NULL);

    if (now != last) {
        struct tm tm;

        gmtime_r(&now, &tm);
        line_len = strftime(line, sizeof(line), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = now;
    }
    *len = line_len;
    return line;
}

/* Appends s to the head being built in buf (flushing to out when full). */
static void head_add(struct evbuffer *out, char *buf, size_t *used, size_t size, const char *s,
                     size_t len)
{
    if (*used + len > size) {
        evbuffer_add(out, buf, *used);
        *used = 0;
        if (len > size) {
            evbuffer_add(out, s, len);
            return;
        }
    }
    memcpy(buf + *used, s, len);
    *used += len;
}

/* Writes v in decimal at dst (20 bytes at most); returns the length. snprintf was a tenth of a
 * cache hit's instructions. */
static size_t put_decimal(char *dst, size_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

static void send_reply(struct server_request *req, int status, const char *reason,
                       struct evbuffer *body, const void *mem, size_t mem_len)
{
    struct server_conn *c = req->conn;
    struct evbuffer *out;
    const struct evkeyval *h;
    const char *length_header = NULL;
    size_t body_len = body != NULL ? evbuffer_get_length(body) : mem_len, used = 0;
    bool no_body = status < 200 || status == 204 || status == 304;
    bool head = req->cmd == EVHTTP_REQ_HEAD;
    char buf[2048], num[64];
    const char *date;
    size_t n, date_len;

    if (c == NULL || c->state != CONN_HANDLING) { /* the client has gone */
        request_free(req);
        return;
    }
    out = bufferevent_get_output(c->bev);
    if (status < 100 || status > 999)
        status = 500;
    memcpy(buf, "HTTP/1.1 ", 9);
    used = 9 + put_decimal(buf + 9, (size_t)status);
    buf[used++] = ' ';
    head_add(out, buf, &used, sizeof(buf), reason ? reason : "", reason ? strlen(reason) : 0);
    head_add(out, buf, &used, sizeof(buf), "\r\n", 2);
    TAILQ_FOREACH(h, &req->out_headers, next)
    {
        if (strcasecmp(h->key, "Connection") == 0) {
            if (strcasecmp(h->value, "close") == 0)
                c->keep_alive = false;
            continue;
        }
        if (strcasecmp(h->key, "Content-Length") == 0) {
            length_header = h->value; /* HEAD: the length the GET would have */
            continue;
        }
        if (strcasecmp(h->key, "Date") == 0)
            continue;
        head_add(out, buf, &used, sizeof(buf), h->key, strlen(h->key));
        head_add(out, buf, &used, sizeof(buf), ": ", 2);
        head_add(out, buf, &used, sizeof(buf), h->value, strlen(h->value));
        head_add(out, buf, &used, sizeof(buf), "\r\n", 2);
    }
    date = date_header(&date_len);
    head_add(out, buf, &used, sizeof(buf), date, date_len);
    if (!no_body) {
        head_add(out, buf, &used, sizeof(buf), "Content-Length: ", 16);
        if (head && length_header != NULL) {
            head_add(out, buf, &used, sizeof(buf), length_header, strlen(length_header));
        } else {
            n = put_decimal(num, body_len);
            head_add(out, buf, &used, sizeof(buf), num, n);
        }
        head_add(out, buf, &used, sizeof(buf), "\r\n", 2);
    }
    if (!c->keep_alive)
        head_add(out, buf, &used, sizeof(buf), "Connection: close\r\n", 19);
    else if (req->minor == 0)
        head_add(out, buf, &used, sizeof(buf), "Connection: keep-alive\r\n", 24);
    head_add(out, buf, &used, sizeof(buf), "\r\n", 2);
    evbuffer_add(out, buf, used);
    if (!no_body && !head) {
        if (body != NULL)
            evbuffer_add_buffer(out, body);
        else if (mem_len > 0)
            evbuffer_add(out, mem, mem_len);
    }
    c->req = NULL;
    c->state = CONN_WRITING;
    request_free(req);
}

void server_send_reply(struct server_request *req, int status, const char *reason,
                       struct evbuffer *body)
{
    send_reply(req, status, reason, body, NULL, 0);
}

void server_send_reply_mem(struct server_request *req, int status, const char *reason,
                           const void *body, size_t len)
{
    send_reply(req, status, reason, NULL, body, len);
}

/* Refuses the request being read: an error in the API's shape, then the connection closes (the
 * rest of its bytes can no longer be framed). */
static void conn_refuse(struct server_conn *c, int status, const char *code, const char *message)
{
    if (c->req == NULL)
        c->req = request_new(c);
    log_info("%s: refused a request with %d: %s", c->srv->name, status, message);
    c->state = CONN_HANDLING;
    c->keep_alive = false;
    bufferevent_disable(c->bev, EV_READ);
    reply_error(c->req, status, code, message);
}

/* ---- requests ----------------------------------------------------------------------------- */

/* The next line of in, without its CRLF (or LF), copied into srv->line and consumed. Returns its
 * length; -1 when no whole line has arrived; -2 when it would pass the header limit. */
static long next_line(struct server_conn *c, struct evbuffer *in)
{
    struct server *srv = c->srv;
    size_t eol_len = 0, limit = (size_t)srv->limits.max_header_size;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    size_t n;

    if (eol.pos < 0)
        return evbuffer_get_length(in) > limit ? -2 : -1;
    n = (size_t)eol.pos;
    if (n + eol_len > limit)
        return -2;
    evbuffer_remove(in, srv->line, n);
    srv->line[n] = '\0';
    evbuffer_drain(in, eol_len);
    return (long)n;
}

/* Parses "METHOD SP target SP HTTP/1.x". */
static bool parse_request_line(struct server_conn *c, char *line, int *status, const char **why)
{
    struct server_request *req = c->req;
    char *sp1 = strchr(line, ' '), *sp2 = strrchr(line, ' ');
    size_t i;

    *status = 400;
    if (sp1 == NULL || sp2 == sp1) {
        *why = "The request line is not METHOD TARGET HTTP/1.1";
        return false;
    }
    *sp1 = *sp2 = '\0';
    for (const char *p = line; *p != '\0'; p++) {
        if (!httpline_is_tchar((unsigned char)*p)) {
            *why = "The request method is not a token";
            return false;
        }
    }
    for (const unsigned char *p = (const unsigned char *)sp1 + 1; *p != '\0'; p++) {
        if (*p <= 0x20 || *p == 0x7f) {
            *why = "The request target has blanks or control characters";
            return false;
        }
    }
    if (sp1[1] == '\0') {
        *why = "The request target is empty";
        return false;
    }
    if (strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1') || sp2[9] != '\0') {
        if (strncmp(sp2 + 1, "HTTP/", 5) == 0) {
            *status = 505;
            *why = "Only HTTP/1.0 and HTTP/1.1 are spoken here";
        } else {
            *why = "The request line has no HTTP version";
        }
        return false;
    }
    req->minor = sp2[8] - '0';
    for (i = 0; i < sizeof(server_methods) / sizeof(server_methods[0]); i++) {
        if (strcmp(line, server_methods[i].name) == 0)
            break;
    }
    if (i == sizeof(server_methods) / sizeof(server_methods[0])) {
        *status = 501;
        *why = "The request method is not one the API uses";
        return false;
    }
    req->cmd = server_methods[i].cmd;
    req->uri = xstrdup(sp1 + 1);
    return true;
}

/* Parses one header line into the request, checking what a proxy must: the name is a token
 * (no blank before the colon), the value has no control characters, and the framing headers
 * appear in a shape that only one reading allows. */
static bool parse_header(struct server_request *req, char *line, int *status, const char **why)
{
    char *value;

    *status = 400;
    if (!httpline_split(line, &value, why))
        return false;
    if (strcasecmp(line, "Content-Length") == 0) {
        char *digits_end;
        long long n;

        if (*value == '\0' || strspn(value, "0123456789") != strlen(value) || strlen(value) > 18) {
            *why = "Content-Length is not a number";
            return false;
        }
        n = strtoll(value, &digits_end, 10);
        if (req->has_length && n != req->length) {
            *why = "Two different Content-Length headers";
            return false;
        }
        req->has_length = true;
        req->length = n;
    } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
        if (req->chunked) {
            *why = "More than one Transfer-Encoding header";
            return false;
        }
        if (strcasecmp(value, "chunked") != 0) {
            *status = 501;
            *why = "Only the chunked transfer coding is accepted";
            return false;
        }
        req->chunked = true;
    } else if (strcasecmp(line, "Expect") == 0) {
        if (strcasecmp(value, "100-continue") != 0) {
            *status = 417;
            *why = "Only Expect: 100-continue is understood";
            return false;
        }
        req->expect_continue = true;
    } else if (strcasecmp(line, "Host") == 0 && evhttp_find_header(&req->in_headers, "Host")) {
        *why = "More than one Host header";
        return false;
    }
    if (evhttp_add_header(&req->in_headers, line, value) != 0) {
        *why = "A header could not be read";
        return false;
    }
    return true;
}

/* Headers done: decides how the body is framed and whether the connection stays open. */
static bool head_complete(struct server_conn *c, int *status, const char **why)
{
    struct server_request *req = c->req;
    const char *connection = evhttp_find_header(&req->in_headers, "Connection");

    *status = 400;
    if (req->chunked && (req->has_length || req->minor == 0)) {
        *why = req->minor == 0 ? "Transfer-Encoding in an HTTP/1.0 request"
                               : "Both Content-Length and Transfer-Encoding";
        return false;
    }
    if (req->minor == 1 && evhttp_find_header(&req->in_headers, "Host") == NULL) {
        *why = "An HTTP/1.1 request without a Host header";
        return false;
    }
    if (req->has_length && req->length > c->srv->limits.max_body_size) {
        *status = 413;
        *why = "The request body is larger than max_body_size";
        return false;
    }
    if (req->minor == 0)
        c->keep_alive = connection != NULL && strcasecmp(connection, "keep-alive") == 0;
    else
        c->keep_alive = connection == NULL || strcasestr(connection, "close") == NULL;
    if (req->chunked) {
        c->body = BODY_CHUNK_SIZE;
    } else {
        c->body = BODY_LENGTH;
        c->left = req->has_length ? req->length : 0;
    }
    if (req->expect_continue && req->minor == 1 && (req->chunked || c->left > 0))
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    req->head_done = true;
    return true;
}

/* Reads as much of the body as has arrived. Returns 1 when it is complete, 0 when more must
 * arrive, -1 when it is malformed or too large (status and why say how). */
static int read_body(struct server_conn *c, struct evbuffer *in, int *status, const char **why)
{
    struct server_request *req = c->req;
    long n;

    for (;;) {
        switch (c->body) {
        case BODY_LENGTH:
        case BODY_CHUNK_DATA: {
            size_t have = evbuffer_get_length(in);
            size_t take = (unsigned long long)c->left < have ? (size_t)c->left : have;

            evbuffer_remove_buffer(in, req->body, take);
            c->left -= (long long)take;
            if (c->left > 0)
                return 0;
            if (c->body == BODY_LENGTH)
                return 1;
            c->body = BODY_CHUNK_END;
            break;
        }
        case BODY_CHUNK_SIZE: {
            char *end;
            long long size;

            if ((n = next_line(c, in)) == -1)
                return 0;
            size = n >= 0 ? strtoll(c->srv->line, &end, 16) : -1;
            if (n <= 0 || size < 0 || end == c->srv->line || (*end != '\0' && *end != ';')) {
                *status = 400;
                *why = "A chunk size is not a hexadecimal number";
                return -1;
            }
            if (size > c->srv->limits.max_body_size - (long long)evbuffer_get_length(req->body)) {
                *status = 413;
                *why = "The request body is larger than max_body_size";
                return -1;
            }
            c->left = size;
            c->body = size == 0 ? BODY_TRAILERS : BODY_CHUNK_DATA;
            break;
        }
        case BODY_CHUNK_END:
            if ((n = next_line(c, in)) == -1)
                return 0;
            if (n != 0) {
                *status = 400;
                *why = "A chunk is longer than its size";
                return -1;
            }
            c->body = BODY_CHUNK_SIZE;
            break;
        case BODY_TRAILERS:
            if ((n = next_line(c, in)) == -1)
                return 0;
            if (n < 0) {
                *status = 431;
                *why = "A trailer line is too long";
                return -1;
            }
            if (n == 0)
                return 1; /* trailers are read and dropped */
            break;
        }
    }
}

/* The request is complete: the handler gets it. */
static void dispatch(struct server_conn *c)
{
    struct server *srv = c->srv;

    c->state = CONN_HANDLING;
    evtimer_del(c->arrival);
    srv->handler(c->req, srv->handler_arg);
    if (c->state == CONN_HANDLING) {
        /* Not answered at once: the upstream may take longer than the client timeout. EOF
         * still detaches the request. */
        set_timeouts(c, false);
        c->untimed = true;
    }
}

/* Finds the end of a request head (the blank line) in the first look bytes of p: the head's
 * length including that line, or 0 when it has not all arrived. Lines may end in CRLF or LF. */
static size_t head_length(const char *p, size_t look)
{
    const char *nl = p;

    while ((nl = memchr(nl, '\n', look - (size_t)(nl - p))) != NULL) {
        size_t at = (size_t)(nl - p) + 1;

        if (at < look && p[at] == '\n')
            return at + 1;
        if (at + 1 < look && p[at] == '\r' && p[at + 1] == '\n')
            return at + 2;
        nl++;
    }
    return 0;
}

/* Reads a whole request head at once: the bytes are copied into srv->line, taken from the
 * input buffer in one go, and parsed in place. Returns 1 when the head is parsed, 0 when more
 * must arrive, -1 when it is refused (status and why say how). */
static int read_head(struct server_conn *c, struct evbuffer *in, int *status, const char **why)
{
    struct server *srv = c->srv;
    size_t limit = (size_t)srv->limits.max_header_size, have, look, len;
    const char *p;
    char *line, *next;

    /* Blank lines before a request are tolerated. */
    while ((p = (const char *)evbuffer_pullup(in, 2)) != NULL &&
           (p[0] == '\n' || (p[0] == '\r' && p[1] == '\n')))
        evbuffer_drain(in, p[0] == '\n' ? 1 : 2);
    have = evbuffer_get_length(in);
    if (have == 0)
        return 0;
    look = have < limit + 2 ? have : limit + 2;
    p = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
    len = head_length(p, look);
    if (len == 0 || len > limit + 2) {
        if (have <= limit)
            return 0;
        *status = 431;
        *why = "The request line and headers are larger than max_header_size";
        return -1;
    }
    memcpy(srv->line, p, len);
    srv->line[len] = '\0';
    evbuffer_drain(in, len);

    for (line = srv->line; *line != '\0'; line = next) {
        char *eol = strchr(line, '\n');

        next = eol + 1;
        if (eol > line && eol[-1] == '\r')
            eol--;
        *eol = '\0';
        if (c->req->uri == NULL) {
            if (!parse_request_line(c, line, status, why))
                return -1;
        } else if (*line != '\0') {
            if (!parse_header(c->req, line, status, why))
                return -1;
        } else {
            return head_complete(c, status, why) ? 1 : -1;
        }
    }
    *status = 400;
    *why = "The request head ended early";
    return -1;
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct server_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    const char *why = NULL;
    int status = 400, done;

    while (c->state == CONN_READING_HEAD || c->state == CONN_READING_BODY) {
        if (c->state == CONN_READING_HEAD) {
            if (c->req == NULL && evbuffer_get_length(in) == 0)
                return;
            if (c->req == NULL) {
                struct timeval tv = {c->srv->limits.timeout_ms / 1000,
                                     (c->srv->limits.timeout_ms % 1000) * 1000};

                c->req = request_new(c);
                idle_remove(c);
                evtimer_add(c->arrival, &tv);
            }
            done = read_head(c, in, &status, &why);
            if (done < 0)
                goto refuse;
            if (done == 0)
                return;
            c->state = CONN_READING_BODY;
        }
        done = read_body(c, in, &status, &why);
        if (done < 0)
            goto refuse;
        if (done == 0)
            return;
        dispatch(c);
        /* Answered at once: the next pipelined request may be here too. */
    }
    /* The handler has the request: further bytes wait, but not without bound. */
    if (evbuffer_get_length(in) >
        (size_t)(c->srv->limits.max_header_size + c->srv->limits.max_body_size) +
            SERVER_PIPELINE_SLACK) {
        bufferevent_disable(bev, EV_READ);
        c->throttled = true;
    }
    return;
refuse:
    conn_refuse(c, status,
                status == 413   ? "PayloadTooLargeError"
                : status == 431 ? "RequestHeaderFieldsTooLargeError"
                : status == 501 ? "NotImplementedError"
                : status == 505 ? "HttpVersionNotSupportedError"
                : status == 417 ? "ExpectationFailedError"
                                : "BadRequestError",
                why);
}

/* ---- accessors ---------------------------------------------------------------------------- */

enum evhttp_cmd_type server_request_command(const struct server_request *req)
{
    return req->cmd;
}

const char *server_request_uri(const struct server_request *req)
{
    return req->uri ? req->uri : "";
}

struct evkeyvalq *server_request_input_headers(struct server_request *req)
{
    return &req->in_headers;
}

struct evbuffer *server_request_body(struct server_request *req)
{
    return req->body;
}

struct evkeyvalq *server_request_output_headers(struct server_request *req)
{
    return &req->out_headers;
}

/* ---- listeners ---------------------------------------------------------------------------- */

static void listener_error_cb(struct evconnlistener *listener, void *arg)
{
    struct server *srv = arg;
    int err = EVUTIL_SOCKET_ERROR();
    (void)listener;
    /* EMFILE and friends: keep the listener; it retries on the next event. */
    log_error("%s: accept failed: %s", srv->name, evutil_socket_error_to_string(err));
}

static bool bind_address(const char *addr, struct sockaddr_storage *ss, int *sslen, char *err,
                         size_t errlen)
{
    char *host = NULL;
    int port;

    if (!config_parse_hostport(addr, &host, &port)) {
        snprintf(err, errlen, "invalid address %s", addr);
        return false;
    }
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
        *sslen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
        *sslen = sizeof(struct sockaddr_in6);
    } else if (strcmp(host, "localhost") == 0) {
        ((struct sockaddr_in *)ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
        *sslen = sizeof(struct sockaddr_in);
    } else {
        snprintf(err, errlen, "%s: listen on an IP address (e.g. 127.0.0.1 or 0.0.0.0)", addr);
        free(host);
        return false;
    }
    free(host);
    return true;
}

struct server *server_new(struct event_base *base, const char *name, const char *addr,
                          const struct server_limits *limits, server_handler_fn handler, void *arg,
                          char *err, size_t errlen)
{
    struct server *srv;
    struct sockaddr_storage ss, bound;
    socklen_t blen = sizeof(bound);
    char host[INET6_ADDRSTRLEN];
    int sslen, one = 1;

    if (!bind_address(addr, &ss, &sslen, err, errlen))
        return NULL;
    srv = xcalloc(1, sizeof(*srv));
    snprintf(srv->name, sizeof(srv->name), "%s", name);
    srv->base = base;
    srv->limits = *limits;
    srv->handler = handler;
    srv->handler_arg = arg;
    srv->line = xmalloc((size_t)limits->max_header_size + SERVER_LINE_SLACK);
    srv->listener = evconnlistener_new_bind(
        base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        SERVER_LISTEN_BACKLOG, (struct sockaddr *)&ss, sslen);
    if (srv->listener == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        free(srv->line);
        free(srv);
        return NULL;
    }
    /* Accepted sockets inherit TCP_NODELAY from the listener (Linux). Without it the last
     * segment of an answer waits for the client's delayed ACK: 40 ms per answer that does not
     * fit in one segment, the first thing the benchmarks showed. */
    setsockopt(evconnlistener_get_fd(srv->listener), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    evconnlistener_set_error_cb(srv->listener, listener_error_cb);
    getsockname(evconnlistener_get_fd(srv->listener), (struct sockaddr *)&bound, &blen);
    if (bound.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, host, sizeof(host));
        snprintf(srv->address, sizeof(srv->address), "[%s]:%d", host,
                 ntohs(((struct sockaddr_in6 *)&bound)->sin6_port));
    } else {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, host, sizeof(host));
        snprintf(srv->address, sizeof(srv->address), "%s:%d", host,
                 ntohs(((struct sockaddr_in *)&bound)->sin_port));
    }
    return srv;
}

void server_stop_accepting(struct server *srv)
{
    if (!srv->stopped) {
        evconnlistener_free(srv->listener);
        srv->listener = NULL;
        srv->stopped = true;
    }
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    server_stop_accepting(srv);
    while (srv->conns != NULL)
        conn_free(srv->conns);
    free(srv->line);
    free(srv);
}

const char *server_address(const struct server *srv)
{
    return srv->address;
}

int server_open_connections(const struct server *srv)
{
    return srv->open;
}
