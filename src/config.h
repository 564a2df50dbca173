/*
 * config.h: the settings of one stproxy process. Every setting is declared
 * once, in the option table in config.c (name, type, default, reloadable,
 * doc); the file, the environment (STPROXY_<NAME>), `-h` and the tests that
 * check conf/stproxy.conf and README.md all read that table.
 */
#ifndef STPROXY_CONFIG_H
#define STPROXY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "limiter.h"
#include "log.h"
#include "route.h"

/* How long answers of one path class are kept. */
struct cache_policy {
    long fresh_ms; /* served as HIT this long after it was fetched; 0 = not cached */
    long stale_ms; /* then served as STALE (and refreshed) this much longer */
};

/* The parsed settings. Strings are owned by the struct (config_free). */
struct config {
    char *listen;          /* client listener host:port */
    char *admin_listen;    /* admin listener host:port */
    char *upstream;        /* upstream origin, https://host[:port] */
    char *upstream_ca;     /* CA bundle path; NULL = system store */
    char *token;           /* shared credential (also from token_file) */
    char *token_file;      /* file holding the shared credential */
    char *client_keys;     /* name:key,name:key */
    char *oauth_client_id; /* OAuth2 app; set = an OAuth credential */
    char *oauth_client_secret;
    char *oauth_refresh_token; /* initial; a stored one wins */
    char *oauth_token_url;
    char *oauth_authorize_url; /* for `stproxy auth`; NULL = from the token URL */
    char *oauth_redirect_uri;
    char *oauth_scope;
    char *state_dir;                  /* durable state (rotated refresh tokens) */
    enum log_level log_level;         /* log verbosity */
    long max_connections;             /* client connections open at once */
    long max_header_size;             /* bytes of request line + headers */
    long max_body_size;               /* bytes of request body */
    long client_timeout_ms;           /* client read / keep-alive idle timeout */
    long upstream_connections;        /* upstream TLS connections at most */
    long upstream_connect_timeout_ms; /* TCP connect + TLS handshake */
    long upstream_timeout_ms;         /* whole upstream exchange after sending */
    long upstream_max_body_size;      /* bytes of an upstream answer */
    char *redis;                      /* redis://... or unix:/path; NULL = embedded */
    long redis_timeout_ms;            /* one Redis command, or a connect */
    long cache_max_bytes;             /* embedded store bound */
    long cache_not_found_ms;          /* fresh TTL of a 404; 0 = not cached */
    struct cache_policy policies[ROUTE_CLASS_COUNT]; /* by path class */
    struct budget budget;                            /* per credential */
    struct budget device_budget;                     /* per device and kind */
    long queue_timeout_ms;                           /* longest wait for budget */
    long queue_max;                                  /* requests waiting at most */
    char *sources[64];                               /* where each option was last set, by table
                                         index: "FILE:LINE", "environment
                                         STPROXY_X"; NULL = default */
};

/* The kinds of value a setting can hold; each has one parser in config.c. */
enum option_type {
    OPT_STRING,      /* free text */
    OPT_PATH,        /* a file path (checked readable at load) */
    OPT_ADDR,        /* host:port, [v6]:port */
    OPT_ORIGIN,      /* https://host[:port] */
    OPT_COUNT,       /* positive integer */
    OPT_SIZE,        /* bytes, with optional k/m/g suffix */
    OPT_DURATION,    /* milliseconds; suffix ms, s or m (bare number = seconds) */
    OPT_LOG_LEVEL,   /* error|warn|info|debug */
    OPT_CLIENT_KEYS, /* name:key,name:key */
    OPT_REDIS_URL,   /* redis://[:password@]host:port[/db] or unix:/path */
    OPT_POLICY,      /* FRESH[,STALE] durations; 0 = not cached */
    OPT_DURATION0,   /* a duration that may be 0 */
    OPT_BUDGET,      /* N/WINDOW */
    OPT_URL,         /* http(s)://host[:port]/path */
};

/* One row of the option table. */
struct option_def {
    const char *name; /* key in the file; the environment name is STPROXY_<NAME> */
    enum option_type type;
    size_t offset;   /* where the value lives in struct config */
    const char *def; /* default as text; NULL = unset */
    bool reloadable; /* SIGHUP may change it */
    bool secret;     /* its value is never printed */
    const char *doc; /* one line for -h */
};

const struct option_def *config_options(size_t *count);
/* The environment name of a setting: STPROXY_ and the name in capitals. */
void config_env_name(const char *name, char *out, size_t outlen);

void config_init(struct config *cfg);
void config_free(struct config *cfg);

/*
 * Loads defaults, then FILE (may be NULL), then STPROXY_* variables from the
 * environment, then checks the settings against each other. On failure
 * writes "where: key: reason" into err and returns false.
 */
bool config_load(struct config *cfg, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Takes the reloadable settings of fresh into live (SIGHUP). Names of
 * settings that differ but need a restart are written, comma separated,
 * into fixed ("" when none).
 */
void config_apply_reloadable(struct config *live, const struct config *fresh, char *fixed,
                             size_t fixedlen);

/* Splits "host:port" / "[v6]:port"; *host is malloc'd. */
bool config_parse_hostport(const char *text, char **host, int *port)
    __attribute__((warn_unused_result));
/* A parsed STPROXY_REDIS. */
struct redis_address {
    char *host; /* NULL for a unix socket */
    int port;
    char *path;     /* unix socket path, or NULL */
    char *password; /* NULL when none */
    int db;
};
/* "500ms", "8s", "2m" or a bare number of seconds, > 0. */
bool config_parse_duration(const char *text, long *ms) __attribute__((warn_unused_result));

bool config_parse_redis(const char *text, struct redis_address *out)
    __attribute__((warn_unused_result));
void config_redis_address_free(struct redis_address *addr);

/* Splits "https://host[:port][/]"; *host is malloc'd; port defaults to 443. */
bool config_parse_origin(const char *text, char **host, int *port)
    __attribute__((warn_unused_result));

#endif
