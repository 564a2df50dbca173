/*
 * admin.h: the admin listener's handler: /healthz (the process answers),
 * /readyz (it should be sent traffic, and whether Redis is in use),
 * /metrics (Prometheus text) and POST /purge (drop cached entries).
 * The admin listener binds to loopback unless told otherwise.
 */
#ifndef STPROXY_ADMIN_H
#define STPROXY_ADMIN_H

#include <stdbool.h>

struct server_request;
struct admin;
struct cache;
struct cache_redis;
struct credential_store;

/* All borrowed; redis may be NULL. */
struct admin *admin_new(struct cache *cache, struct cache_redis *redis,
                        const struct credential_store *credentials);
void admin_free(struct admin *adm);
/* Marks the process as draining: /readyz answers 503 from then on. */
void admin_set_draining(struct admin *adm);
/* The admin listener's handler (server_handler_fn). */
void admin_handle(struct server_request *req, void *arg);

#endif
