/*
 * server.h: an HTTP/1.1 listener of our own on libevent bufferevents, with
 * the limits a daemon on a shared LAN needs: bounded header and body sizes
 * (431, 413), a read and keep-alive idle timeout, a cap on open connections,
 * and strict parsing (request smuggling shapes, header injection and
 * malformed names are refused with 400 before any handler sees them). The
 * client listener and the admin listener are two instances with different
 * handlers.
 *
 * A handler gets a server_request and must answer it exactly once with
 * server_send_reply, now or later. If the client goes away meanwhile the
 * request stays valid and the late answer is dropped.
 */
#ifndef STPROXY_SERVER_H
#define STPROXY_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/http.h> /* enum evhttp_cmd_type, struct evkeyvalq */

struct event_base;
struct evbuffer;
struct server;
struct server_request;

/* The limits of one listener. */
struct server_limits {
    long max_connections;
    long max_header_size;
    long max_body_size;
    long timeout_ms;
    bool count_metrics; /* the client listener reports connection metrics */
};

typedef void (*server_handler_fn)(struct server_request *req, void *arg);

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

/* ---- one request ----------------------------------------------------------------------- */

enum evhttp_cmd_type server_request_command(const struct server_request *req);
/* The request-target as received: origin-form or absolute-form. */
const char *server_request_uri(const struct server_request *req);
struct evkeyvalq *server_request_input_headers(struct server_request *req);
/* The body, decoded from Content-Length or chunked framing. */
struct evbuffer *server_request_body(struct server_request *req);
/* Headers of the answer; Date, Content-Length and Connection are the server's. */
struct evkeyvalq *server_request_output_headers(struct server_request *req);
/* Answers and frees req. body (may be NULL) is emptied; a HEAD answer carries
 * none. An output header "Connection: close" closes the connection after it. */
void server_send_reply(struct server_request *req, int status, const char *reason,
                       struct evbuffer *body);
/* The same with a body in memory. */
void server_send_reply_mem(struct server_request *req, int status, const char *reason,
                           const void *body, size_t len);

#endif
