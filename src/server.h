/*
 * server.h: an HTTP/1.1 listener on libevent's evhttp, with the limits a
 * daemon on a shared LAN needs: bounded header and body sizes, a read and
 * keep-alive idle timeout, and a cap on open connections. The client
 * listener and the admin listener are two instances with different handlers.
 */
#ifndef STPROXY_SERVER_H
#define STPROXY_SERVER_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct evhttp_request;
struct server;

/* The limits of one listener. */
struct server_limits {
    long max_connections;
    long max_header_size;
    long max_body_size;
    long timeout_ms;
    bool count_metrics; /* the client listener reports connection metrics */
};

typedef void (*server_handler_fn)(struct evhttp_request *req, void *arg);

/* Binds addr ("host:port") and serves every request with handler. */
struct server *server_new(struct event_base *base, const char *name, const char *addr,
                          const struct server_limits *limits, server_handler_fn handler, void *arg,
                          char *err, size_t errlen) __attribute__((warn_unused_result));
/* Stops accepting new connections; open ones keep being served. */
void server_stop_accepting(struct server *srv);
void server_free(struct server *srv);
/* The bound address as "host:port" (the real port when 0 was asked for). */
const char *server_address(const struct server *srv);
int server_open_connections(const struct server *srv);
/* Notices connections evhttp has closed; run by the janitor. */
void server_sweep(struct server *srv);

#endif
