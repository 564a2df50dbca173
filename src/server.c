/*
 * server.c: owns a listening socket, its evhttp, and the accounting of the
 * connections evhttp accepts on it (libevent 2.1's evhttp has no connection
 * limit of its own: see make_bev and server_sweep).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "server.h"

/* The most a client socket's bufferevent writes in one call (libevent's default: 16 KiB). */
#define SERVER_MAX_SINGLE_WRITE (256 * 1024)

/* One accepted connection. We hold a reference on its bufferevent so that
 * we can tell when evhttp has let go of it (its callbacks are cleared) and
 * only then drop the last reference, which closes the socket. */
struct tracked_conn {
    struct bufferevent *bev;
    struct tracked_conn *next;
};

struct server {
    char name[16]; /* "client" or "admin", for logs */
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct evconnlistener *listener; /* owned by evhttp through bound */
    struct server_limits limits;
    int open;                   /* connections accepted and not yet closed */
    bool paused;                /* accepting paused at max_connections */
    bool stopped;               /* no longer accepting (draining) */
    struct tracked_conn *conns; /* every open connection */
    time_t last_pause_log;      /* pauses are logged at most every 10 s */
    char address[80];
};

static void update_gauge(struct server *srv)
{
    if (srv->limits.count_metrics)
        metrics_set(METRIC_CLIENT_OPEN, srv->open);
}

/*
 * evhttp calls this for every connection it accepts. libevent 2.1's evhttp
 * has no connection limit and no hook that runs when it frees a
 * connection, so we count here and let server_sweep notice the end. At the
 * limit the listener is paused: further clients wait in the kernel's accept
 * queue instead of costing us memory.
 */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    struct server *srv = arg;
    struct tracked_conn *tc = xcalloc(1, sizeof(*tc));

    tc->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    /* A device list is tens of kilobytes: one writev instead of libevent's 16 KiB slices. */
    bufferevent_set_max_single_write(tc->bev, SERVER_MAX_SINGLE_WRITE);
    bufferevent_incref(tc->bev);
    tc->next = srv->conns;
    srv->conns = tc;
    srv->open++;
    if (srv->limits.count_metrics)
        metrics_inc(METRIC_CLIENT_ACCEPTED);
    update_gauge(srv);
    if (srv->open >= srv->limits.max_connections && !srv->paused && !srv->stopped) {
        time_t now = time(NULL);
        evconnlistener_disable(srv->listener);
        srv->paused = true;
        if (srv->limits.count_metrics)
            metrics_inc(METRIC_CLIENT_LIMITED);
        if (now - srv->last_pause_log >= 10) {
            log_warn("%s: %d connections open (max_connections): new ones wait until one "
                     "closes",
                     srv->name, srv->open);
            srv->last_pause_log = now;
        }
    }
    return tc->bev;
}

void server_sweep(struct server *srv)
{
    struct tracked_conn **link = &srv->conns;

    while (*link != NULL) {
        struct tracked_conn *tc = *link;
        bufferevent_event_cb eventcb = NULL;
        bufferevent_data_cb readcb = NULL, writecb = NULL;

        bufferevent_getcb(tc->bev, &readcb, &writecb, &eventcb, NULL);
        if (eventcb != NULL || readcb != NULL || writecb != NULL) {
            link = &tc->next;
            continue;
        }
        /* evhttp has freed the connection: ours was the last reference. */
        *link = tc->next;
        bufferevent_decref(tc->bev);
        free(tc);
        srv->open--;
    }
    update_gauge(srv);
    if (srv->paused && !srv->stopped && srv->open < srv->limits.max_connections) {
        evconnlistener_enable(srv->listener);
        srv->paused = false;
    }
}

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
    struct timeval tv;
    int sslen;

    if (!bind_address(addr, &ss, &sslen, err, errlen))
        return NULL;
    srv = xcalloc(1, sizeof(*srv));
    snprintf(srv->name, sizeof(srv->name), "%s", name);
    srv->base = base;
    srv->limits = *limits;
    srv->http = evhttp_new(base);
    evhttp_set_bevcb(srv->http, make_bev, srv);
    evhttp_set_gencb(srv->http, handler, arg);
    evhttp_set_max_headers_size(srv->http, limits->max_header_size);
    evhttp_set_max_body_size(srv->http, limits->max_body_size);
    tv.tv_sec = limits->timeout_ms / 1000;
    tv.tv_usec = (limits->timeout_ms % 1000) * 1000;
    evhttp_set_timeout_tv(srv->http, &tv);
    /* Every method reaches our handler, which refuses CONNECT and TRACE in
     * the API's error shape rather than evhttp's HTML page. */
    evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                              EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    srv->listener = evconnlistener_new_bind(
        base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 512,
        (struct sockaddr *)&ss, sslen);
    if (srv->listener == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        evhttp_free(srv->http);
        free(srv);
        return NULL;
    }
    /* Accepted sockets inherit TCP_NODELAY from the listener (Linux). Without it the last
     * segment of an answer waits for the client's delayed ACK: 40 ms per answer that does not
     * fit in one segment, the first thing the benchmarks showed. */
    {
        int one = 1;
        setsockopt(evconnlistener_get_fd(srv->listener), IPPROTO_TCP, TCP_NODELAY, &one,
                   sizeof(one));
    }
    srv->bound = evhttp_bind_listener(srv->http, srv->listener);
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
        evhttp_del_accept_socket(srv->http, srv->bound);
        srv->listener = NULL;
        srv->bound = NULL;
        srv->stopped = true;
    }
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    server_stop_accepting(srv);
    evhttp_free(srv->http);
    server_sweep(srv);
    while (srv->conns != NULL) { /* evhttp_free let go of them all */
        struct tracked_conn *tc = srv->conns;
        srv->conns = tc->next;
        bufferevent_decref(tc->bev);
        free(tc);
    }
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
