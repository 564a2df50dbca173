/*
 * log.h: the log. One line per event on stderr, with a UTC timestamp and a
 * level. Callers never pass a token or a client key: credentials are logged
 * by client name or by the short credential label that credential.c makes.
 */
#ifndef STPROXY_LOG_H
#define STPROXY_LOG_H

#include <stdbool.h>

/* Severity of a log line; a line is written when its level <= the set level. */
enum log_level {
    LOG_ERROR, /* the proxy cannot do what it was asked */
    LOG_WARN,  /* something is wrong but requests are still served */
    LOG_INFO,  /* start-up, shutdown, state transitions, access lines */
    LOG_DEBUG, /* detail for a developer */
};

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug"; false for anything else. */
bool log_level_parse(const char *name, enum log_level *out) __attribute__((warn_unused_result));

void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_get_level() >= LOG_DEBUG)                                                          \
            log_write(LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
