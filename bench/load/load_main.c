/*
 * load_main.c: stbench's command line and its modes. Owns the option parsing, the device
 * discovery the fill and mix modes start with, the mock's counters read before and after a
 * run, and four of the five modes (the mix lives in load_mix.c):
 *
 *   closed  N keep-alive connections, each sending the next request as soon as the previous
 *           answer is complete, for -d seconds: throughput and latency
 *   once    N connections opened first, then one request on each at the same moment: what N
 *           identical concurrent misses cost (coalescing)
 *   idle    N connections that each send one request and then stay open, idle, for -d seconds:
 *           the proxy's memory with many idle clients
 *   fill    reads the device list page by page, then each device's status once, -c at a time: a cache with
 *           one entry per device
 */
#include "load.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <event2/event.h>

#define JSMN_STATIC
#include <jsmn.h>

#define MAIN_MAX_DEVICES 100000
#define MAIN_PAGE_SIZE   200 /* devices per page of the list, as integrations ask */

/* The modes, in the order of the usage text. */
enum main_mode { MODE_CLOSED, MODE_ONCE, MODE_IDLE, MODE_FILL, MODE_MIX };

static const char *const main_mode_names[] = {"closed", "once", "idle", "fill", "mix"};

/* One run: its target, its connections and what they count. */
struct run {
    struct event_base *base;
    struct load_target *target;
    enum main_mode mode;
    int connections;
    double seconds;
    struct load_stats *stats;
    struct load_conn **conns;
    struct load_request *reqs;
    int in_flight, ready, next;
    bool stopping, launched;
    char **paths; /* fill: one path per request */
    int n_paths;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: stbench [options] URL          URL: http://HOST:PORT/PATH or https://...\n"
            "  -c N                connections (default 16)\n"
            "  -d SECONDS          run time (closed, idle, mix); time limit (once, fill)\n"
            "  -t TOKEN            sends Authorization: Bearer TOKEN\n"
            "  --cacert FILE       the CA for an https:// URL (default: the system's)\n"
            "  --json              one JSON object on stdout instead of a table\n"
            "  --label TEXT        names the run in the report\n"
            "  --mock-admin URL    the mock's admin port: reports the upstream calls and 429s\n"
            "                      of --upstream-token (default: -t) from its /counters\n"
            "  --upstream-token T\n"
            "modes (default: a closed loop on URL):\n"
            "  --once              one request on each of -c connections at the same moment\n"
            "  --idle              one request on each of -c connections, then idle for -d s\n"
            "  --fill              reads URL/devices page by page, then each device's status once\n"
            "  --mix               the integration mix against the API under URL:\n"
            "    --integrations N (20)  --devices N (50)  --interval MIN-MAX (5-30 s)\n"
            "    --health-every K (4)  --command-every SECONDS (60)  --conns N (4 per\n"
            "    integration)  --seed N (1)\n");
}

/* ---- one request, start to finish (discovery and the mock's counters) -------------------- */

static void fetch_done(struct load_request *req, void *arg)
{
    (void)req;
    event_base_loopbreak(arg);
}

/* GETs path on target and returns the answer's status; *body gets the body (caller frees). */
static int fetch(struct event_base *base, const struct load_target *target, const char *path,
                 char **body)
{
    struct load_conn *c = load_conn_new(base, target, NULL, NULL);
    struct load_request req;

    memset(&req, 0, sizeof(req));
    req.method = "GET";
    snprintf(req.path, sizeof(req.path), "%s", path);
    req.keep_body = true;
    req.done = fetch_done;
    req.arg = base;
    load_conn_send(c, &req);
    event_base_dispatch(base);
    load_conn_free(c);
    *body = req.answer.body;
    return req.answer.status;
}

/* The ids of the devices in a device list, in its order. */
static int parse_device_ids(const char *body, char ***ids)
{
    const char *p = body;
    int n = 0, cap = 0;

    *ids = NULL;
    while ((p = strstr(p, "\"deviceId\"")) != NULL && n < MAIN_MAX_DEVICES) {
        const char *start, *end;

        p += strlen("\"deviceId\"");
        while (*p == ' ' || *p == ':')
            p++;
        if (*p != '"')
            continue;
        start = p + 1;
        if ((end = strchr(start, '"')) == NULL)
            break;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            if ((*ids = realloc(*ids, (size_t)cap * sizeof(**ids))) == NULL)
                abort();
        }
        (*ids)[n++] = strndup(start, (size_t)(end - start));
        p = end + 1;
    }
    return n;
}

/* The ids of every device under target, read the way integrations read them: page by page
 * (one answer holding ten thousand devices would be ten megabytes). */
static int discover_devices(struct event_base *base, const struct load_target *target, char ***ids)
{
    int n = 0;

    *ids = NULL;
    for (int page = 0; n < MAIN_MAX_DEVICES; page++) {
        char path[600], *body = NULL, **got;
        int status, k;

        snprintf(path, sizeof(path), "%s/devices?max=%d&page=%d", target->prefix, MAIN_PAGE_SIZE,
                 page);
        status = fetch(base, target, path, &body);
        if (status != 200) {
            fprintf(stderr, "stbench: GET %s answered %d%s\n", path, status,
                    status == 0 ? " (no answer)" : "");
            free(body);
            break;
        }
        k = parse_device_ids(body, &got);
        free(body);
        if (k > 0 && (*ids = realloc(*ids, (size_t)(n + k) * sizeof(**ids))) == NULL)
            abort();
        for (int i = 0; i < k; i++)
            (*ids)[n++] = got[i];
        free(got);
        if (k < MAIN_PAGE_SIZE)
            break;
    }
    if (n == 0)
        fprintf(stderr, "stbench: %s/devices listed no devices\n", target->prefix);
    return n > 0 ? n : -1;
}

/* ---- the mock's counters ----------------------------------------------------------------- */

/* The number under members[object][key] of a JSON document, or 0. */
static long long json_member_count(const char *json, const jsmntok_t *t, int n, const char *object,
                                   const char *key)
{
    if (n < 1 || t[0].type != JSMN_OBJECT)
        return 0;
    /* Top-level members: walk keys, skipping each value's whole subtree. */
    for (int i = 1; i < n;) {
        int value = i + 1, end = value + 1;
        bool match = t[i].type == JSMN_STRING &&
                     (size_t)(t[i].end - t[i].start) == strlen(object) &&
                     strncmp(json + t[i].start, object, strlen(object)) == 0;

        while (end < n && t[end].start < t[value].end)
            end++;
        if (match && t[value].type == JSMN_OBJECT) {
            for (int k = value + 1; k + 1 < end; k += 2) {
                if ((size_t)(t[k].end - t[k].start) == strlen(key) &&
                    strncmp(json + t[k].start, key, strlen(key)) == 0)
                    return strtoll(json + t[k + 1].start, NULL, 10);
            }
            return 0;
        }
        i = end;
    }
    return 0;
}

/* Reads the upstream calls and 429s of token from the mock's /counters. */
static bool mock_counters(struct event_base *base, const struct load_target *admin,
                          const char *token, long long *calls, long long *limited)
{
    char *body = NULL;
    jsmn_parser parser;
    jsmntok_t *tokens;
    int n;

    if (fetch(base, admin, "/counters", &body) != 200 || body == NULL) {
        fprintf(stderr, "stbench: the mock's /counters did not answer\n");
        free(body);
        return false;
    }
    jsmn_init(&parser);
    n = jsmn_parse(&parser, body, strlen(body), NULL, 0);
    if (n <= 0 || (tokens = calloc((size_t)n, sizeof(*tokens))) == NULL) {
        free(body);
        return false;
    }
    jsmn_init(&parser);
    n = jsmn_parse(&parser, body, strlen(body), tokens, (unsigned)n);
    *calls = json_member_count(body, tokens, n, "by_token", token ? token : "");
    *limited = json_member_count(body, tokens, n, "rate_limited_by_token", token ? token : "");
    free(tokens);
    free(body);
    return true;
}

/* ---- closed loop, once, idle, fill ------------------------------------------------------- */

static void run_next(struct run *r, int slot);

static void run_done(struct load_request *req, void *arg)
{
    struct run *r = arg;
    int slot = (int)(req - r->reqs);

    load_stats_note(r->stats, req, NULL);
    r->in_flight--;
    if (r->mode == MODE_CLOSED && !r->stopping) {
        run_next(r, slot);
        return;
    }
    if (r->mode == MODE_FILL && r->next < r->n_paths) {
        run_next(r, slot);
        return;
    }
    if (r->in_flight == 0 && (r->stopping || r->mode == MODE_ONCE || r->mode == MODE_FILL))
        event_base_loopexit(r->base, NULL);
}

static void run_next(struct run *r, int slot)
{
    struct load_request *req = &r->reqs[slot];

    req->method = "GET";
    req->body = NULL;
    req->keep_body = false;
    req->done = run_done;
    req->arg = r;
    snprintf(req->path, sizeof(req->path), "%s",
             r->mode == MODE_FILL ? r->paths[r->next++] : r->target->path);
    r->in_flight++;
    load_conn_send(r->conns[slot], req);
}

/* once: every connection is up; now all requests go out in one go. */
static void run_ready(struct load_conn *c, void *arg)
{
    struct run *r = arg;

    (void)c;
    if (r->mode != MODE_ONCE || r->launched || ++r->ready < r->connections)
        return;
    r->launched = true;
    for (int i = 0; i < r->connections; i++)
        run_next(r, i);
}

static void run_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;

    (void)fd;
    (void)what;
    if (r->stopping || r->mode != MODE_CLOSED || r->in_flight == 0) {
        event_base_loopexit(r->base, NULL); /* idle's end, or a time limit */
        return;
    }
    r->stopping = true; /* closed loop: let the requests in flight finish */
}

static void run_simple(struct run *r)
{
    struct timeval tv = {(long)r->seconds, (long)((r->seconds - (double)(long)r->seconds) * 1e6)};
    struct event *stop = evtimer_new(r->base, run_stop_cb, r);
    int active = r->mode == MODE_FILL && r->n_paths < r->connections ? r->n_paths : r->connections;
    double t0;

    r->conns = calloc((size_t)r->connections, sizeof(*r->conns));
    r->reqs = calloc((size_t)r->connections, sizeof(*r->reqs));
    if (r->conns == NULL || r->reqs == NULL)
        abort();
    for (int i = 0; i < r->connections; i++)
        r->conns[i] = load_conn_new(r->base, r->target, run_ready, r);
    evtimer_add(stop, &tv);
    t0 = load_now();
    if (r->mode == MODE_ONCE) {
        for (int i = 0; i < r->connections; i++)
            load_conn_open(r->conns[i]);
    } else {
        for (int i = 0; i < active; i++)
            run_next(r, i);
    }
    if (active > 0)
        event_base_dispatch(r->base);
    r->stats->seconds = load_now() - t0;
    if (r->mode == MODE_IDLE) {
        r->stats->open_at_end = 0;
        for (int i = 0; i < r->connections; i++)
            r->stats->open_at_end += load_conn_state(r->conns[i]) == LOAD_CONN_READY;
    }
    if (r->mode == MODE_ONCE && r->ready < r->connections)
        fprintf(stderr, "stbench: only %d of %d connections came up in time\n", r->ready,
                r->connections);
    for (int i = 0; i < r->connections; i++)
        load_conn_free(r->conns[i]);
    event_free(stop);
    free(r->conns);
    free(r->reqs);
}

/* ---- main -------------------------------------------------------------------------------- */

/* Lets the run open as many sockets as the hard limit allows (1000 clients need more than the
 * usual soft limit of 1024 descriptors). */
static void raise_fd_limit(int wanted)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= (rlim_t)wanted)
        return;
    rl.rlim_cur =
        rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)wanted ? (rlim_t)wanted : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < (rlim_t)wanted)
        fprintf(stderr, "stbench: only %ld file descriptors allowed; some connections may fail\n",
                (long)rl.rlim_cur);
}

static bool parse_interval(const char *text, double *min, double *max)
{
    char *end;

    *min = strtod(text, &end);
    if (*end == '-')
        *max = strtod(end + 1, &end);
    else
        *max = *min;
    return *end == '\0' && *min > 0 && *max >= *min;
}

int main(int argc, char **argv)
{
    enum {
        OPT_JSON = 256,
        OPT_CACERT,
        OPT_LABEL,
        OPT_MOCK_ADMIN,
        OPT_UPSTREAM_TOKEN,
        OPT_ONCE,
        OPT_IDLE,
        OPT_FILL,
        OPT_MIX,
        OPT_INTEGRATIONS,
        OPT_DEVICES,
        OPT_INTERVAL,
        OPT_HEALTH_EVERY,
        OPT_COMMAND_EVERY,
        OPT_CONNS,
        OPT_SEED,
    };
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"label", required_argument, NULL, OPT_LABEL},
        {"mock-admin", required_argument, NULL, OPT_MOCK_ADMIN},
        {"upstream-token", required_argument, NULL, OPT_UPSTREAM_TOKEN},
        {"once", no_argument, NULL, OPT_ONCE},
        {"idle", no_argument, NULL, OPT_IDLE},
        {"fill", no_argument, NULL, OPT_FILL},
        {"mix", no_argument, NULL, OPT_MIX},
        {"integrations", required_argument, NULL, OPT_INTEGRATIONS},
        {"devices", required_argument, NULL, OPT_DEVICES},
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"health-every", required_argument, NULL, OPT_HEALTH_EVERY},
        {"command-every", required_argument, NULL, OPT_COMMAND_EVERY},
        {"conns", required_argument, NULL, OPT_CONNS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct load_mix_options mix = {20, 50, 5, 30, 4, 60, 4, 1};
    struct load_target target, admin;
    struct load_stats stats;
    struct run run;
    const char *token = NULL, *cacert = NULL, *label = NULL, *mock_admin = NULL;
    const char *upstream_token = NULL;
    enum main_mode mode = MODE_CLOSED;
    int connections = 16, opt, rc = 0;
    double seconds = -1;
    bool json = false;
    long long calls0 = 0, limited0 = 0, calls1, limited1;
    char **ids = NULL;
    int n_ids = 0;

    while ((opt = getopt_long(argc, argv, "c:d:t:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            connections = atoi(optarg);
            break;
        case 'd':
            seconds = atof(optarg);
            break;
        case 't':
            token = optarg;
            break;
        case OPT_JSON:
            json = true;
            break;
        case OPT_CACERT:
            cacert = optarg;
            break;
        case OPT_LABEL:
            label = optarg;
            break;
        case OPT_MOCK_ADMIN:
            mock_admin = optarg;
            break;
        case OPT_UPSTREAM_TOKEN:
            upstream_token = optarg;
            break;
        case OPT_ONCE:
            mode = MODE_ONCE;
            break;
        case OPT_IDLE:
            mode = MODE_IDLE;
            break;
        case OPT_FILL:
            mode = MODE_FILL;
            break;
        case OPT_MIX:
            mode = MODE_MIX;
            break;
        case OPT_INTEGRATIONS:
            mix.integrations = atoi(optarg);
            break;
        case OPT_DEVICES:
            mix.devices = atoi(optarg);
            break;
        case OPT_INTERVAL:
            if (!parse_interval(optarg, &mix.interval_min, &mix.interval_max)) {
                fprintf(stderr, "stbench: --interval wants SECONDS or MIN-MAX\n");
                return 2;
            }
            break;
        case OPT_HEALTH_EVERY:
            mix.health_every = atoi(optarg);
            break;
        case OPT_COMMAND_EVERY:
            mix.command_every = atof(optarg);
            break;
        case OPT_CONNS:
            mix.conns_per_integration = atoi(optarg);
            break;
        case OPT_SEED:
            mix.seed = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (seconds < 0)
        seconds = mode == MODE_ONCE || mode == MODE_FILL ? 60 : mode == MODE_MIX ? 180 : 5;
    if (optind + 1 != argc || connections < 1 || seconds <= 0 || mix.integrations < 1 ||
        mix.devices < 1 || mix.conns_per_integration < 1 || mix.health_every < 0 ||
        mix.command_every < 0) {
        usage(stderr);
        return 2;
    }
    if (!load_target_parse(&target, argv[optind], token, cacert))
        return 2;
    if (mock_admin != NULL && !load_target_parse(&admin, mock_admin, NULL, NULL))
        return 2;
    if (upstream_token == NULL)
        upstream_token = token;
    raise_fd_limit(connections + mix.integrations * mix.conns_per_integration + 64);

    memset(&run, 0, sizeof(run));
    run.base = event_base_new();
    run.target = &target;
    run.mode = mode;
    run.connections = connections;
    run.seconds = seconds;
    run.stats = &stats;
    load_stats_init(&stats, label, main_mode_names[mode]);
    stats.connections = connections;

    if (mode == MODE_FILL || mode == MODE_MIX) {
        n_ids = discover_devices(run.base, &target, &ids);
        if (n_ids <= 0) {
            rc = 1;
            goto out;
        }
    }
    if (mock_admin != NULL &&
        !mock_counters(run.base, &admin, upstream_token, &calls0, &limited0)) {
        rc = 1;
        goto out;
    }
    if (mode == MODE_MIX) {
        load_mix_run(run.base, &target, &mix, ids, n_ids, seconds, &stats);
    } else {
        if (mode == MODE_FILL) {
            run.paths = calloc((size_t)n_ids, sizeof(*run.paths));
            if (run.paths == NULL)
                abort();
            for (int i = 0; i < n_ids; i++) {
                size_t len = strlen(target.prefix) + strlen(ids[i]) + 32;

                if ((run.paths[i] = malloc(len)) == NULL)
                    abort();
                snprintf(run.paths[i], len, "%s/devices/%s/status", target.prefix, ids[i]);
            }
            run.n_paths = n_ids;
        }
        run_simple(&run);
    }
    if (mock_admin != NULL && mock_counters(run.base, &admin, upstream_token, &calls1, &limited1)) {
        stats.have_upstream = true;
        stats.upstream_calls = calls1 - calls0;
        stats.upstream_limited = limited1 - limited0;
    }
    load_stats_report(&stats, json);
    if (stats.requests == 0)
        rc = 1;
out:
    for (int i = 0; i < n_ids; i++)
        free(ids[i]);
    free(ids);
    for (int i = 0; i < run.n_paths; i++)
        free(run.paths[i]);
    free(run.paths);
    load_stats_free(&stats);
    event_base_free(run.base);
    if (target.ssl != NULL)
        SSL_CTX_free(target.ssl);
    return rc;
}
