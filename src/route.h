/*
 * route.h: what a request target means. route_parse checks a target is a
 * plain origin-form API path (refusing foreign absolute-form targets and path
 * tricks the same way for every later use), and classifies it into a path
 * class that policies, invalidation and metrics are keyed on.
 */
#ifndef STPROXY_ROUTE_H
#define STPROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

/* Path classes of the SmartThings API (both /v1/x and /x styles). */
#define ROUTE_CLASSES(X)                                                                           \
    X(DEVICES, "devices")                     /* GET /devices list */                              \
    X(DEVICE, "device")                       /* /devices/{id} description */                      \
    X(DEVICE_STATUS, "device_status")         /* /devices/{id}/status */                           \
    X(COMPONENT_STATUS, "component_status")   /* /devices/{id}/components/{c}/status */            \
    X(CAPABILITY_STATUS, "capability_status") /* .../capabilities/{cap}/status */                  \
    X(DEVICE_HEALTH, "device_health")         /* /devices/{id}/health */                           \
    X(DEVICE_COMMANDS, "device_commands")     /* POST /devices/{id}/commands */                    \
    X(DEVICE_EVENTS, "device_events")         /* POST /devices/{id}/events */                      \
    X(DEVICE_OTHER, "device_other")           /* anything else under /devices/{id} */              \
    X(LOCATIONS, "locations")                 /* /locations, /locations/{id} */                    \
    X(ROOMS, "rooms")                         /* /locations/{id}/rooms[/{r}] */                    \
    X(MODES, "modes")                         /* /locations/{id}/modes[...] */                     \
    X(SCENES, "scenes")                       /* /scenes */                                        \
    X(SCENE_EXECUTE, "scene_execute")         /* POST /scenes/{id}/execute */                      \
    X(CAPABILITIES, "capabilities")           /* /capabilities/... definitions */                  \
    X(PRESENTATION, "presentation")           /* /presentation... */                               \
    X(OTHER, "other")                         /* any other API path */

enum route_class {
#define ROUTE_ENUM(id, name) ROUTE_##id,
    ROUTE_CLASSES(ROUTE_ENUM)
#undef ROUTE_ENUM
        ROUTE_CLASS_COUNT
};

/* Why a target was refused. */
enum route_status {
    ROUTE_OK,           /* target accepted */
    ROUTE_BAD_TARGET,   /* not an origin-form path, or a path trick */
    ROUTE_FOREIGN_HOST, /* absolute-form target naming another host */
    ROUTE_NOT_API,      /* a path under none of the API's resource roots */
};

#define ROUTE_ID_MAX 128

/* A parsed request target. Owns path and query (route_free). */
struct route {
    enum route_class cls;
    bool versioned;               /* the path starts with /v1 */
    char *path;                   /* as received, without the query */
    char *query;                  /* raw query without '?', or NULL */
    char device_id[ROUTE_ID_MAX]; /* set for /devices/{id}... routes */
};

/*
 * Parses target (the request-target as received). self is the proxy's own
 * listen address "host:port" (may be NULL); an absolute-form target is
 * accepted only when its authority is exactly that, and then only its path
 * and query are kept. The Host header plays no part: the client controls it.
 */
enum route_status route_parse(const char *target, const char *self, struct route *out)
    __attribute__((warn_unused_result));
void route_free(struct route *r);

const char *route_class_name(enum route_class cls);

/* True for the status classes a command on the device makes stale. */
bool route_is_status(enum route_class cls);

/*
 * The normalised form of a raw query: pairs sorted, and array values in one
 * form (capability=a&capability=b and capability=a,b both become
 * capability=a&capability=b). malloc'd; "" when query is NULL or empty.
 */
char *route_normalise_query(const char *query) __attribute__((warn_unused_result));

/*
 * The device id as it appears in cache keys: itself when it is made of
 * letters, digits, '-', '_' and '.', else a hash of it (so that keys never
 * hold glob or separator characters).
 */
void route_key_device(const char *device, char out[ROUTE_ID_MAX]);

/*
 * The cache key of a read: "stp1:e:<cred>:<device or ->:<class>:<digest>"
 * where digest is the SHA-256 of method, path, normalised query and Accept.
 * The credential id is already a hash; no token ever enters a key. malloc'd.
 */
char *route_cache_key(const struct route *r, const char *method, const char *cred_id,
                      const char *accept) __attribute__((warn_unused_result));
/* Human reason for a refused target, for the error body. */
const char *route_status_reason(enum route_status status);

#endif
