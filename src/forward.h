/*
 * forward.h: the request path of the client listener. One client request
 * becomes one proxy_request: its target is checked and classified (route),
 * its credential resolved (credential); a read is answered from the cache
 * or joins a flight (cache, flight), anything else goes straight upstream
 * (upstream); the answer is edited (rewrite) and returned with an access
 * log line.
 */
#ifndef STPROXY_FORWARD_H
#define STPROXY_FORWARD_H

#include <stdbool.h>

struct event_base;
struct server_request;
struct upstream_pool;
struct credential_store;
struct cache;
struct flights;
struct admission;
struct limiter;
struct config;
struct forward;

/* Settings the request path needs, copied at creation. */
struct forward_settings {
    const char *upstream_origin; /* canonical "https://host[:port]" */
    const char *listen_address;  /* used for links when a client sends no Host */
    const struct config *config; /* cache policies; must outlive the forward */
};

/* The parts of the request path; borrowed, they outlive the forward. */
struct forward_parts {
    struct upstream_pool *pool;
    struct credential_store *credentials;
    struct cache *cache;
    struct flights *flights;
    struct admission *admission;
    struct limiter *limiter;
};

struct forward *forward_new(const struct forward_settings *settings,
                            const struct forward_parts *parts);
void forward_free(struct forward *fwd);

/* The client listener's handler (server_handler_fn). */
void forward_handle(struct server_request *req, void *arg);

/* From now on new requests get 503 and Connection: close (shutdown). */
void forward_set_draining(struct forward *fwd);

/* Client requests accepted and not yet answered. */
int forward_in_flight(const struct forward *fwd);

#endif
