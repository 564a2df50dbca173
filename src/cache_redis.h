/*
 * cache_redis.h: the Redis connection of one process. It runs commands on
 * hiredis's async API on the process's event loop, gives every command a
 * deadline (a Redis that hangs must not hang requests), reconnects with
 * backoff, and keeps a second connection subscribed to the fill channel
 * that tells waiting processes a coalesced fetch has landed.
 *
 * Callers never block and never see a hiredis context: a command either
 * answers or reports failure, and every failure means "carry on without
 * Redis" (the embedded store, local flights and budgets).
 */
#ifndef STPROXY_CACHE_REDIS_H
#define STPROXY_CACHE_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

struct event_base;
struct redis_address;
struct cache_redis;

/* Where the connection is. */
enum redis_state {
    REDIS_CONNECTING, /* first connect under way */
    REDIS_UP,         /* connected, authenticated, answering */
    REDIS_DOWN,       /* lost or never reached; reconnecting with backoff */
};

/*
 * A command's outcome: ok with the reply (borrowed, valid during the call),
 * or !ok with reply NULL when Redis failed, timed out or is down.
 */
typedef void (*redis_reply_fn)(bool ok, const redisReply *reply, void *arg);

/* A message on the fill channel (the payload is borrowed). */
typedef void (*redis_message_fn)(const char *payload, size_t len, void *arg);

/* addr is copied. The channel is the one fill messages travel on. */
struct cache_redis *cache_redis_new(struct event_base *base, const struct redis_address *addr,
                                    long timeout_ms, const char *channel,
                                    redis_message_fn on_message, void *arg);
void cache_redis_free(struct cache_redis *r);
/* Closes the connections; commands still pending end without calling back
 * (their callers are being torn down). The first step of shutdown. */
void cache_redis_shutdown(struct cache_redis *r);

/* Has Redis load script (SCRIPT LOAD) now and after every reconnect, so that
 * EVALSHA of its SHA-1 works. */
void cache_redis_load_script(struct cache_redis *r, const char *script);

/* Sets the argument on_message receives (when it is made after the connection). */
void cache_redis_set_message_arg(struct cache_redis *r, void *arg);

enum redis_state cache_redis_state(const struct cache_redis *r);
const char *cache_redis_state_name(enum redis_state state);

/* Frees what a command's argument owns when the command ends without its callback. */
typedef void (*redis_drop_fn)(void *arg);

/*
 * Runs a command given as argv (binary-safe). fn is called exactly once,
 * never from inside this call. When Redis is not up, fn reports failure.
 * At shutdown (cache_redis_shutdown) a command not yet answered ends
 * without fn: with cache_redis_command_owned, drop(arg) runs instead.
 */
void cache_redis_command_owned(struct cache_redis *r, redis_reply_fn fn, redis_drop_fn drop,
                               void *arg, int argc, const char **argv, const size_t *argvlen);
void cache_redis_command(struct cache_redis *r, redis_reply_fn fn, void *arg, int argc,
                         const char **argv, const size_t *argvlen);

/* Same with NUL-terminated arguments. */
void cache_redis_commandv(struct cache_redis *r, redis_reply_fn fn, void *arg, int argc,
                          const char **argv);

#endif
