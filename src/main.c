/*
 * main.c: the command line and the start-up order of one stproxy process:
 * options -> config -> credentials -> TLS -> event base -> upstream pool ->
 * listeners -> signals -> "up" log line -> event loop -> drain -> exit.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/ssl.h>

#include "admin.h"
#include "admission.h"
#include "authorize.h"
#include "cache.h"
#include "cache_redis.h"
#include "config.h"
#include "credential.h"
#include "flight.h"
#include "forward.h"
#include "janitor.h"
#include "log.h"
#include "oauth.h"
#include "server.h"
#include "tls.h"
#include "upstream.h"
#include "version.h"

#define DRAIN_POLL_MS       20
#define JANITOR_INTERVAL_MS 100
#define FLIGHT_LOCK_TTL_MS  2000 /* a Redis flight lock not renewed for this long is free */

/* Everything main() sets up, so that signal callbacks can reach it. */
struct process {
    struct config cfg;
    struct credential_store credentials;
    SSL_CTX *tls;
    struct event_base *base;
    struct upstream_pool *pool;
    struct cache_redis *redis; /* NULL without STPROXY_REDIS */
    struct cache *cache;
    struct flights *flights;
    struct limiter *limiter;
    struct admission *admission;
    struct oauth *oauth; /* an OAuth2 shared credential, or NULL */
    struct forward *fwd;
    struct admin *admin;
    struct server *client;
    struct server *admin_server;
    struct event *sigterm, *sigint, *sighup;
    struct janitor *janitor;
    struct event *drain_timer;
    int drain_polls;
    long drain_deadline_ms;  /* upstream_timeout + 2 s: every exchange can end */
    const char *config_path; /* -c FILE, read again on SIGHUP; NULL = none */
};

static void usage(FILE *out)
{
    size_t n;
    const struct option_def *opts = config_options(&n);

    fprintf(out, "usage: stproxy [-c FILE] [-t] [-V] [-h] [auth]\n"
                 "  -c FILE  read settings from FILE (key = value lines)\n"
                 "  -t       check the configuration and exit (0 valid, 1 not)\n"
                 "  -V       print the version and the library versions\n"
                 "  -h       this help\n"
                 "  auth     authorise an OAuth2 app once and store its refresh token\n\n"
                 "Settings (file key / environment variable, default):\n");
    for (size_t i = 0; i < n; i++) {
        char env[64];
        config_env_name(opts[i].name, env, sizeof(env));
        fprintf(out, "  %-26s %-34s %s\n      %s\n", opts[i].name, env,
                opts[i].def ? opts[i].def : "(unset)", opts[i].doc);
    }
}

static void print_versions(void)
{
    printf("stproxy %s\n", STPROXY_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("%s\n", tls_library_version());
    printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
}

static void housekeeping(uint64_t now_ms, void *arg)
{
    struct process *p = arg;
    cache_housekeeping(p->cache, now_ms);
    limiter_housekeeping(p->limiter, (int64_t)now_ms);
}

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    struct process *p = arg;
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    int left = forward_in_flight(p->fwd);
    (void)fd;
    (void)what;

    if (left == 0 || ++p->drain_polls * DRAIN_POLL_MS >= p->drain_deadline_ms) {
        if (left > 0)
            log_warn("drain: %d requests still in flight after %ld ms; exiting anyway", left,
                     p->drain_deadline_ms);
        event_base_loopexit(p->base, NULL);
        return;
    }
    evtimer_add(p->drain_timer, &tv);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct process *p = arg;
    (void)what;

    if (p->drain_timer != NULL)
        return; /* already draining */
    log_info("signal %d: no longer accepting connections; draining %d in-flight requests", (int)sig,
             forward_in_flight(p->fwd));
    server_stop_accepting(p->client);
    forward_set_draining(p->fwd);
    admin_set_draining(p->admin);
    p->drain_deadline_ms = p->cfg.upstream_timeout_ms + 2000;
    p->drain_timer = evtimer_new(p->base, drain_check, p);
    drain_check(-1, 0, p);
}

/* SIGHUP: reads the configuration again (file and environment) and takes
 * the reloadable settings; a configuration that does not load is refused
 * and the running one stays. Connections are untouched. */
static void on_hangup(evutil_socket_t sig, short what, void *arg)
{
    struct process *p = arg;
    struct config fresh;
    char err[512], fixed[512];
    (void)sig;
    (void)what;

    config_init(&fresh);
    if (!config_load(&fresh, p->config_path, err, sizeof(err))) {
        log_error("SIGHUP: the new configuration is refused, the running one stays: %s", err);
        config_free(&fresh);
        return;
    }
    config_apply_reloadable(&p->cfg, &fresh, fixed, sizeof(fixed));
    config_free(&fresh);
    log_set_level(p->cfg.log_level);
    if (p->credentials.mode == CREDENTIAL_SHARED)
        credential_store_set_keys(&p->credentials, p->cfg.client_keys);
    limiter_set_budgets(p->limiter, &p->cfg.budget, &p->cfg.device_budget);
    admission_set_limits(p->admission, p->cfg.queue_timeout_ms, p->cfg.queue_max);
    log_info("SIGHUP: reloaded client keys, cache policies, budgets, queue limits and log "
             "level%s%s",
             fixed[0] ? "; changed but needing a restart: " : "", fixed);
}

/* Builds everything that serves traffic. */
static bool process_start(struct process *p, char *err, size_t errlen)
{
    struct upstream_settings us;
    struct forward_settings fs;
    struct forward_parts parts;
    struct server_limits client_limits, admin_limits;
    char *host = NULL;
    int port;
    bool ok;

    p->base = event_base_new();
    if (p->base == NULL) {
        snprintf(err, errlen, "cannot create the event loop");
        return false;
    }
    if (!config_parse_origin(p->cfg.upstream, &host, &port)) {
        snprintf(err, errlen, "upstream: invalid origin");
        return false;
    }
    memset(&us, 0, sizeof(us));
    us.host = host;
    us.port = port;
    us.tls = p->tls;
    us.max_connections = (int)p->cfg.upstream_connections;
    us.connect_timeout_ms = p->cfg.upstream_connect_timeout_ms;
    us.timeout_ms = p->cfg.upstream_timeout_ms;
    us.max_body = (size_t)p->cfg.upstream_max_body_size;
    p->pool = upstream_pool_new(p->base, &us);

    if (p->cfg.redis != NULL) {
        struct redis_address addr;
        if (!config_parse_redis(p->cfg.redis, &addr)) {
            snprintf(err, errlen, "redis: invalid address");
            free(host);
            return false;
        }
        /* Fill messages reach the flights, which exist before the first
         * message can arrive (the connection completes on the loop). */
        p->redis = cache_redis_new(p->base, &addr, p->cfg.redis_timeout_ms, FLIGHT_FILL_CHANNEL,
                                   flights_on_fill, NULL);
        config_redis_address_free(&addr);
    }
    p->cache = cache_new(p->redis, (size_t)p->cfg.cache_max_bytes);
    /* A fetcher renews its 2 s lock while it works, so one that dies holds
     * others back about 2 s; a live one is waited on for its whole fetch. */
    p->flights = flights_new(p->base, p->pool, p->cache, p->redis, FLIGHT_LOCK_TTL_MS,
                             p->cfg.upstream_timeout_ms + 2000);
    if (p->redis != NULL)
        cache_redis_set_message_arg(p->redis, p->flights);
    p->limiter = limiter_new(p->base, p->redis, &p->cfg.budget, &p->cfg.device_budget);
    p->admission = admission_new(p->base, p->limiter, p->cfg.queue_timeout_ms, p->cfg.queue_max);
    flights_set_budgets(p->flights, p->admission, p->limiter);
    flights_set_credentials(p->flights, &p->credentials);
    if (p->cfg.oauth_client_id != NULL) {
        p->oauth =
            oauth_new(p->base, &p->cfg, p->tls, p->redis, p->credentials.shared_id, err, errlen);
        if (p->oauth == NULL) {
            free(host);
            return false;
        }
        p->credentials.oauth = p->oauth;
    }

    /* Links are matched against the canonical origin: no trailing slash,
     * no default port. */
    {
        char origin[300];
        bool v6 = strchr(host, ':') != NULL;
        char portpart[8] = "";
        if (port != 443)
            snprintf(portpart, sizeof(portpart), ":%d", port);
        snprintf(origin, sizeof(origin), "https://%s%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "",
                 portpart);
        fs.upstream_origin = origin;
        flights_set_upstream_origin(p->flights, origin);
        fs.listen_address = p->cfg.listen;
        fs.config = &p->cfg;
        parts.pool = p->pool;
        parts.credentials = &p->credentials;
        parts.cache = p->cache;
        parts.flights = p->flights;
        parts.admission = p->admission;
        parts.limiter = p->limiter;
        p->fwd = forward_new(&fs, &parts);
    }
    free(host);

    client_limits.max_connections = p->cfg.max_connections;
    client_limits.max_header_size = p->cfg.max_header_size;
    client_limits.max_body_size = p->cfg.max_body_size;
    client_limits.timeout_ms = p->cfg.client_timeout_ms;
    client_limits.count_metrics = true;
    p->client = server_new(p->base, "client", p->cfg.listen, &client_limits, forward_handle, p->fwd,
                           err, errlen);
    if (p->client == NULL)
        return false;

    admin_limits.max_connections = 64;
    admin_limits.max_header_size = 8192;
    admin_limits.max_body_size = 4096;
    admin_limits.timeout_ms = 10000;
    admin_limits.count_metrics = false;
    p->admin = admin_new(p->cache, p->redis, &p->credentials);
    p->admin_server = server_new(p->base, "admin", p->cfg.admin_listen, &admin_limits, admin_handle,
                                 p->admin, err, errlen);
    ok = p->admin_server != NULL;
    return ok;
}

/*
 * Tears down in the order that lets every pending callback land on a live
 * object: Redis first (its pending commands end silently), then the
 * upstream pool (its exchanges fail, and their requests are answered while
 * the listeners still exist), then flights that wait on nothing now, then
 * the rest.
 */
static void process_stop(struct process *p)
{
    janitor_free(p->janitor);
    cache_redis_shutdown(p->redis);
    /* Queued requests are refused first: none may reach the pool after it.
     * Requests waiting for an OAuth2 token are answered next. */
    admission_free(p->admission);
    oauth_free(p->oauth);
    p->credentials.oauth = NULL;
    if (p->pool != NULL)
        upstream_pool_free(p->pool);
    flights_free(p->flights);
    limiter_free(p->limiter);
    cache_free(p->cache);
    cache_redis_free(p->redis);
    server_free(p->client);
    server_free(p->admin_server);
    forward_free(p->fwd);
    admin_free(p->admin);
    if (p->sigterm != NULL) {
        event_free(p->sigterm);
        event_free(p->sigint);
        event_free(p->sighup);
    }
    if (p->drain_timer != NULL)
        event_free(p->drain_timer);
    if (p->base != NULL)
        event_base_free(p->base);
    if (p->tls != NULL)
        SSL_CTX_free(p->tls);
    credential_store_free(&p->credentials);
    config_free(&p->cfg);
}

int main(int argc, char **argv)
{
    struct process p;
    const char *config_path = NULL;
    bool check_only = false;
    bool authorize = false;
    char err[512];
    int c;

    memset(&p, 0, sizeof(p));
    while ((c = getopt(argc, argv, "c:tVh")) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            print_versions();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc && strcmp(argv[optind], "auth") == 0 && optind + 1 == argc) {
        authorize = true;
    } else if (optind < argc) {
        fprintf(stderr, "stproxy: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    config_init(&p.cfg);
    p.config_path = config_path;
    if (!config_load(&p.cfg, config_path, err, sizeof(err)) ||
        !credential_store_init(&p.credentials, &p.cfg, err, sizeof(err)) ||
        (p.tls = tls_client_ctx_new(p.cfg.upstream_ca, err, sizeof(err))) == NULL) {
        fprintf(stderr, "stproxy: configuration error: %s\n", err);
        process_stop(&p);
        return 1;
    }
    if (authorize) {
        int status = authorize_run(&p.cfg, p.tls);
        process_stop(&p);
        return status;
    }
    if (check_only) {
        printf("stproxy: configuration OK%s%s\n", config_path ? ": " : "",
               config_path ? config_path : "");
        process_stop(&p);
        return 0;
    }
    log_set_level(p.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);

    if (!process_start(&p, err, sizeof(err))) {
        log_error("cannot start: %s", err);
        process_stop(&p);
        return 1;
    }
    p.sigterm = evsignal_new(p.base, SIGTERM, on_stop_signal, &p);
    p.sigint = evsignal_new(p.base, SIGINT, on_stop_signal, &p);
    p.sighup = evsignal_new(p.base, SIGHUP, on_hangup, &p);
    event_add(p.sigterm, NULL);
    event_add(p.sigint, NULL);
    event_add(p.sighup, NULL);
    p.janitor = janitor_new(p.base, JANITOR_INTERVAL_MS);
    janitor_add(p.janitor, housekeeping, &p);

    log_info("stproxy %s up: listen=%s admin=%s upstream=%s mode=%s cache=%s", STPROXY_VERSION,
             server_address(p.client), server_address(p.admin_server), p.cfg.upstream,
             p.credentials.mode == CREDENTIAL_SHARED ? "shared" : "pass-through",
             p.redis ? "redis" : "embedded");
    for (size_t i = 0; i < p.credentials.nkeys; i++)
        log_info("client key configured for \"%s\"", p.credentials.keys[i].name);

    event_base_dispatch(p.base);

    log_info("stproxy stopped");
    process_stop(&p);
    return 0;
}
