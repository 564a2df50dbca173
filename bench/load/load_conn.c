/*
 * load_conn.c: one client connection of stbench and the target it talks to. Owns the socket
 * (a bufferevent, plain or OpenSSL with the chain and host name verified), writing one request
 * at a time and parsing its answer: status line, the headers the reports use (Content-Length,
 * Transfer-Encoding, Connection, X-Cache, Age) and the body, by length, chunked or until close.
 *
 * Its own small parser rather than evhttp's client: per answer it copies the header lines it
 * reads onto the stack and allocates nothing, so the generator is not the bottleneck of the
 * throughput it measures.
 */
#define _GNU_SOURCE /* strcasestr */
#include "load.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/x509v3.h>

#define CONN_ANSWER_TIMEOUT_S 30
#define CONN_MAX_LINE         (64 * 1024) /* a longer header line is a broken answer */

struct load_conn {
    struct event_base *base;
    const struct load_target *target;
    struct bufferevent *bev;
    enum load_conn_state state;
    enum load_parse_state parse;
    struct load_request *req;
    struct evbuffer *body; /* the kept body of req */
    long long left;        /* body or chunk bytes still to read; -1: until close */
    bool chunked;
    load_ready_fn ready;
    void *arg;
};

double load_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the target -------------------------------------------------------------------------- */

bool load_target_parse(struct load_target *t, const char *url, const char *token,
                       const char *cacert)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    struct addrinfo hints, *res = NULL;
    const char *scheme, *host, *path, *query;
    char port[16];
    size_t len;
    int n;

    memset(t, 0, sizeof(*t));
    if (uri == NULL || (scheme = evhttp_uri_get_scheme(uri)) == NULL ||
        (host = evhttp_uri_get_host(uri)) == NULL || *host == '\0' ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        fprintf(stderr, "stbench: %s: expected http://HOST:PORT/PATH or https://...\n", url);
        if (uri != NULL)
            evhttp_uri_free(uri);
        return false;
    }
    t->tls = strcmp(scheme, "https") == 0;
    snprintf(t->host, sizeof(t->host), "%s", host);
    t->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : (t->tls ? 443 : 80);
    path = evhttp_uri_get_path(uri);
    query = evhttp_uri_get_query(uri);
    snprintf(t->path, sizeof(t->path), "%s%s%s", path && *path ? path : "/", query ? "?" : "",
             query ? query : "");
    snprintf(t->prefix, sizeof(t->prefix), "%s", path ? path : "");
    len = strlen(t->prefix);
    while (len > 0 && t->prefix[len - 1] == '/')
        t->prefix[--len] = '\0';
    evhttp_uri_free(uri);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", t->port);
    if (getaddrinfo(t->host, port, &hints, &res) != 0 || res == NULL) {
        fprintf(stderr, "stbench: cannot resolve %s\n", t->host);
        return false;
    }
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    {
        unsigned char scratch[sizeof(struct in6_addr)];
        t->host_is_ip =
            inet_pton(AF_INET, t->host, scratch) == 1 || inet_pton(AF_INET6, t->host, scratch) == 1;
    }

    n = snprintf(t->headers, sizeof(t->headers), "Host: %s:%d\r\nAccept: application/json\r\n",
                 t->host, t->port);
    if (token != NULL)
        n += snprintf(t->headers + n, sizeof(t->headers) - (size_t)n,
                      "Authorization: Bearer %s\r\n", token);
    if (n >= (int)sizeof(t->headers)) {
        fprintf(stderr, "stbench: the token is too long\n");
        return false;
    }

    if (t->tls) {
        t->ssl = SSL_CTX_new(TLS_client_method());
        if (t->ssl == NULL || (cacert != NULL ? SSL_CTX_load_verify_locations(t->ssl, cacert, NULL)
                                              : SSL_CTX_set_default_verify_paths(t->ssl)) != 1) {
            fprintf(stderr, "stbench: cannot load the CA certificates %s\n",
                    cacert ? cacert : "of the system");
            return false;
        }
        SSL_CTX_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
    }
    return true;
}

/* ---- connection life --------------------------------------------------------------------- */

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);

struct load_conn *load_conn_new(struct event_base *base, const struct load_target *target,
                                load_ready_fn ready, void *arg)
{
    struct load_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        abort();
    c->base = base;
    c->target = target;
    c->state = LOAD_CONN_CLOSED;
    c->ready = ready;
    c->arg = arg;
    return c;
}

static void conn_close(struct load_conn *c)
{
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    c->state = LOAD_CONN_CLOSED;
}

void load_conn_free(struct load_conn *c)
{
    if (c == NULL)
        return;
    conn_close(c);
    if (c->body != NULL)
        evbuffer_free(c->body);
    free(c);
}

enum load_conn_state load_conn_state(const struct load_conn *c)
{
    return c->state;
}

void load_conn_open(struct load_conn *c)
{
    const struct load_target *t = c->target;

    if (c->state != LOAD_CONN_CLOSED)
        return;
    if (t->tls) {
        SSL *ssl = SSL_new(t->ssl);

        if (ssl == NULL)
            abort();
        if (t->host_is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t->host);
        } else {
            SSL_set_tlsext_host_name(ssl, t->host);
            SSL_set1_host(ssl, t->host);
        }
        c->bev = bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev != NULL)
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    } else {
        c->bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (c->bev == NULL)
        abort();
    bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = LOAD_CONN_CONNECTING;
    if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)&t->addr, (int)t->addr_len) !=
        0)
        conn_event_cb(c->bev, BEV_EVENT_ERROR, c);
}

/* Ends the request in flight: its answer is complete (status > 0) or lost (status 0). */
static void conn_finish(struct load_conn *c, bool keep_open)
{
    struct load_request *req = c->req;

    c->req = NULL;
    if (keep_open && !req->answer.close) {
        c->state = LOAD_CONN_READY;
        bufferevent_set_timeouts(c->bev, NULL, NULL); /* idle: the server decides */
    } else {
        conn_close(c);
    }
    req->answer.latency = load_now() - req->sent;
    if (req->keep_body && c->body != NULL) {
        size_t len = evbuffer_get_length(c->body);

        req->answer.body = malloc(len + 1);
        if (req->answer.body == NULL)
            abort();
        evbuffer_remove(c->body, req->answer.body, len);
        req->answer.body[len] = '\0';
        req->answer.body_len = len;
    }
    req->done(req, req->arg);
    if (c->state != LOAD_CONN_BUSY && c->ready != NULL)
        c->ready(c, c->arg);
}

void load_conn_send(struct load_conn *c, struct load_request *req)
{
    struct timeval timeout = {CONN_ANSWER_TIMEOUT_S, 0};
    struct evbuffer *out;

    memset(&req->answer, 0, sizeof(req->answer));
    req->answer.age = -1;
    snprintf(req->answer.x_cache, sizeof(req->answer.x_cache), "-");
    if (c->state == LOAD_CONN_CLOSED)
        load_conn_open(c);
    c->req = req;
    c->parse = PARSE_STATUS_LINE;
    c->left = 0;
    c->chunked = false;
    if (req->keep_body) {
        if (c->body == NULL)
            c->body = evbuffer_new();
        evbuffer_drain(c->body, evbuffer_get_length(c->body));
    }
    out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "%s %s HTTP/1.1\r\n%s", req->method, req->path, c->target->headers);
    if (req->body != NULL)
        evbuffer_add_printf(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                            strlen(req->body), req->body);
    else
        evbuffer_add(out, "\r\n", 2);
    bufferevent_set_timeouts(c->bev, &timeout, &timeout);
    req->sent = load_now();
    if (c->state == LOAD_CONN_READY)
        c->state = LOAD_CONN_BUSY;
    /* CONNECTING: the bufferevent sends it once connected and the state moves on then. */
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct load_conn *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;

        setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->state = c->req != NULL ? LOAD_CONN_BUSY : LOAD_CONN_READY;
        if (c->state == LOAD_CONN_READY && c->ready != NULL)
            c->ready(c, c->arg);
        return;
    }
    /* EOF, error or timeout. An answer that runs until close is complete now. */
    if (c->req != NULL && c->parse == PARSE_BODY && c->left < 0 && !(what & BEV_EVENT_TIMEOUT)) {
        conn_finish(c, false);
        return;
    }
    if (c->req != NULL) {
        c->req->answer.status = 0;
        conn_finish(c, false);
        return;
    }
    conn_close(c); /* an idle connection the server closed: reopened by the next request */
}

/* ---- the answer parser ------------------------------------------------------------------- */

/* Copies the next CRLF-terminated line (without it, cut to size - 1 bytes) into line and
 * consumes it. Returns the length copied, -1 when the line is not complete yet, -2 when it is
 * longer than any answer of ours has a reason to send. */
static long conn_line(struct evbuffer *in, char *line, size_t size)
{
    size_t eol_len = 0;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    size_t n, copy;

    if (eol.pos < 0)
        return evbuffer_get_length(in) > CONN_MAX_LINE ? -2 : -1;
    n = (size_t)eol.pos;
    copy = n < size ? n : size - 1;
    evbuffer_copyout(in, line, copy);
    line[copy] = '\0';
    evbuffer_drain(in, n + eol_len);
    return (long)copy;
}

/* One header line of the answer. */
static void conn_header(struct load_conn *c, char *line)
{
    struct load_answer *a = &c->req->answer;
    char *colon = strchr(line, ':');
    char *value;

    if (colon == NULL)
        return;
    *colon = '\0';
    value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strcasecmp(line, "Content-Length") == 0)
        c->left = strtoll(value, NULL, 10);
    else if (strcasecmp(line, "Transfer-Encoding") == 0 && strcasestr(value, "chunked") != NULL)
        c->chunked = true;
    else if (strcasecmp(line, "Connection") == 0 && strcasestr(value, "close") != NULL)
        a->close = true;
    else if (strcasecmp(line, "X-Cache") == 0)
        snprintf(a->x_cache, sizeof(a->x_cache), "%s", value);
    else if (strcasecmp(line, "Age") == 0)
        a->age = strtol(value, NULL, 10);
}

/* Moves up to c->left body bytes out of in; true when they are all there. */
static bool conn_body(struct load_conn *c, struct evbuffer *in)
{
    size_t have = evbuffer_get_length(in);
    size_t n = c->left < 0 || (unsigned long long)c->left > have ? have : (size_t)c->left;

    if (c->req->keep_body)
        evbuffer_remove_buffer(in, c->body, n);
    else
        evbuffer_drain(in, n);
    if (c->left > 0)
        c->left -= (long long)n;
    return c->left == 0;
}

/* Parses as much of the answer as has arrived. False when the answer is broken. */
static bool conn_parse(struct load_conn *c, struct evbuffer *in, bool *complete)
{
    char line[1024];
    long n;

    *complete = false;
    for (;;) {
        switch (c->parse) {
        case PARSE_STATUS_LINE:
            if ((n = conn_line(in, line, sizeof(line))) < 0)
                return n == -1;
            if (strncmp(line, "HTTP/1.", 7) != 0 || strlen(line) < 12)
                return false;
            c->req->answer.status = atoi(line + 9);
            c->left = -1;
            c->chunked = false;
            c->parse = PARSE_HEADERS;
            break;
        case PARSE_HEADERS:
            if ((n = conn_line(in, line, sizeof(line))) < 0)
                return n == -1;
            if (n > 0) {
                conn_header(c, line);
                break;
            }
            if (c->req->answer.status < 200) { /* 100 Continue and friends */
                c->parse = PARSE_STATUS_LINE;
                break;
            }
            if (strcmp(c->req->method, "HEAD") == 0 || c->req->answer.status == 204 ||
                c->req->answer.status == 304 || (!c->chunked && c->left == 0)) {
                *complete = true;
                return true;
            }
            if (c->chunked) {
                c->parse = PARSE_CHUNK_SIZE;
            } else {
                if (c->left < 0)
                    c->req->answer.close = true;
                c->parse = PARSE_BODY;
            }
            break;
        case PARSE_BODY:
            if (!conn_body(c, in) || c->left < 0)
                return true;
            *complete = true;
            return true;
        case PARSE_CHUNK_SIZE:
            if ((n = conn_line(in, line, sizeof(line))) < 0)
                return n == -1;
            c->left = strtoll(line, NULL, 16);
            if (c->left < 0)
                return false;
            c->parse = c->left == 0 ? PARSE_TRAILERS : PARSE_CHUNK_DATA;
            break;
        case PARSE_CHUNK_DATA:
            if (!conn_body(c, in))
                return true;
            c->parse = PARSE_CHUNK_END;
            break;
        case PARSE_CHUNK_END:
            if ((n = conn_line(in, line, sizeof(line))) < 0)
                return n == -1;
            c->parse = PARSE_CHUNK_SIZE;
            break;
        case PARSE_TRAILERS:
            if ((n = conn_line(in, line, sizeof(line))) < 0)
                return n == -1;
            if (n == 0) {
                *complete = true;
                return true;
            }
            break;
        }
    }
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct load_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    bool complete;

    if (c->req == NULL) { /* bytes nobody asked for: the connection is unusable */
        evbuffer_drain(in, evbuffer_get_length(in));
        conn_close(c);
        return;
    }
    if (!conn_parse(c, in, &complete)) {
        c->req->answer.status = 0;
        conn_finish(c, false);
        return;
    }
    if (complete)
        conn_finish(c, true);
}
