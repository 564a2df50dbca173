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

#include "log.h"

/* The parsed settings. Strings are owned by the struct (config_free). */
struct config {
    char *listen;                     /* client listener host:port */
    char *admin_listen;               /* admin listener host:port */
    char *upstream;                   /* upstream origin, https://host[:port] */
    char *upstream_ca;                /* CA bundle path; NULL = system store */
    char *token;                      /* shared credential (also from token_file) */
    char *token_file;                 /* file holding the shared credential */
    char *client_keys;                /* name:key,name:key */
    enum log_level log_level;         /* log verbosity */
    long max_connections;             /* client connections open at once */
    long max_header_size;             /* bytes of request line + headers */
    long max_body_size;               /* bytes of request body */
    long client_timeout_ms;           /* client read / keep-alive idle timeout */
    long upstream_connections;        /* upstream TLS connections at most */
    long upstream_connect_timeout_ms; /* TCP connect + TLS handshake */
    long upstream_timeout_ms;         /* whole upstream exchange after sending */
    long upstream_max_body_size;      /* bytes of an upstream answer */
    char *sources[32];                /* where each option was last set, by table
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

void config_init(struct config *cfg);
void config_free(struct config *cfg);

/*
 * Loads defaults, then FILE (may be NULL), then STPROXY_* variables from the
 * environment, then checks the settings against each other. On failure
 * writes "where: key: reason" into err and returns false.
 */
bool config_load(struct config *cfg, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Splits "host:port" / "[v6]:port"; *host is malloc'd. */
bool config_parse_hostport(const char *text, char **host, int *port)
    __attribute__((warn_unused_result));
/* Splits "https://host[:port][/]"; *host is malloc'd; port defaults to 443. */
bool config_parse_origin(const char *text, char **host, int *port)
    __attribute__((warn_unused_result));

#endif
