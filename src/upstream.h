/*
 * upstream.h: the pool of keep-alive HTTPS connections to the configured
 * upstream origin, and the exchange of one request for one response on it.
 * The origin is fixed when the pool is made; nothing in a request can change
 * where it goes.
 */
#ifndef STPROXY_UPSTREAM_H
#define STPROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <openssl/ssl.h>

struct evbuffer;
struct upstream_pool;

/* Outcome of one exchange. */
enum upstream_result {
    UPSTREAM_OK,             /* a complete response arrived (any status) */
    UPSTREAM_CONNECT_FAILED, /* name lookup or TCP connect failed */
    UPSTREAM_TLS_FAILED,     /* handshake or certificate verification failed */
    UPSTREAM_TIMEOUT,        /* connect, queue or answer took too long */
    UPSTREAM_BAD_RESPONSE,   /* garbage, truncated or reset mid-answer */
    UPSTREAM_TOO_LARGE,      /* the answer exceeded upstream_max_body_size */
};

/* A response as received. Owned by the exchange: valid only during the
 * done callback, unless the callback takes the body (see below). */
struct upstream_response {
    int status;               /* HTTP status code */
    struct evkeyvalq headers; /* as received, hop-by-hop ones included */
    struct evbuffer *body;    /* decoded (de-chunked) body; the callback may
                                   evbuffer_add_buffer it away */
};

/* Called once per exchange. detail explains a failure (never holds secrets). */
typedef void (*upstream_done_fn)(enum upstream_result result, struct upstream_response *resp,
                                 const char *detail, void *arg);

/* Settings of a pool (copied). */
struct upstream_settings {
    const char *host; /* name or address; SNI and certificate name */
    int port;
    SSL_CTX *tls; /* borrowed; outlives the pool */
    int max_connections;
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_body;
};

struct upstream_pool *upstream_pool_new(struct event_base *base,
                                        const struct upstream_settings *settings);
/* Closes every connection; pending exchanges are completed with a failure. */
void upstream_pool_free(struct upstream_pool *pool);

/*
 * Sends a request. target is path[?query]; headers are the end-to-end headers
 * to send (Host and Content-Length are added here; the caller must not set
 * them); body may be NULL. Everything is copied before this returns. done is
 * always called later, never from within this call.
 */
void upstream_send(struct upstream_pool *pool, const char *method, const char *target,
                   const struct evkeyvalq *headers, struct evbuffer *body, upstream_done_fn done,
                   void *arg);

/* Connections currently open (for metrics and tests). */
int upstream_pool_open_connections(const struct upstream_pool *pool);

#endif
