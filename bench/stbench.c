/*
 * stbench.c: a closed-loop HTTP/1.1 load generator for stproxy's
 * benchmarks. N keep-alive connections each send the next request as soon
 * as the previous answer is complete, for a fixed time, and the run reports
 * requests per second, latency percentiles, and answers by status and by
 * X-Cache, as a human table and (with --json) one JSON object.
 *
 * Plain HTTP only (the proxy's client side); libevent's evhttp client does
 * the HTTP. It measures what a client sees, so it runs next to, not inside,
 * the process under test.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define MAX_SAMPLES 4000000 /* latencies kept; a run beyond this stops sampling */

/* The counts of one kind of answer. */
struct tally {
    char key[32];
    long count;
};

/* One connection's loop. */
struct client {
    struct bench *b;
    struct evhttp_connection *conn;
};

struct bench {
    struct event_base *base;
    const char *host;
    int port;
    const char *path;
    const char *token;
    int connections;
    double seconds;
    struct timespec start;
    bool stopping;
    int in_flight;
    long done, errors;
    double *latency; /* seconds */
    long nlatency;
    struct tally by_status[32], by_cache[8];
    int nstatus, ncache;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void count(struct tally *t, int *n, int max, const char *key)
{
    for (int i = 0; i < *n; i++) {
        if (strcmp(t[i].key, key) == 0) {
            t[i].count++;
            return;
        }
    }
    if (*n < max) {
        snprintf(t[*n].key, sizeof(t[*n].key), "%s", key);
        t[*n].count = 1;
        (*n)++;
    }
}

static void send_next(struct client *c);

/* The start time of the request in flight travels as its callback argument's
 * companion: one request per connection at a time, so the client keeps it. */
struct pending {
    struct client *c;
    double sent;
};

static void answered(struct evhttp_request *req, void *arg)
{
    struct pending *p = arg;
    struct client *c = p->c;
    struct bench *b = c->b;
    double elapsed = now_s() - p->sent;
    char status[16];

    free(p);
    b->in_flight--;
    if (req == NULL || evhttp_request_get_response_code(req) == 0) {
        b->errors++;
        count(b->by_status, &b->nstatus, 32, "error");
    } else {
        const char *cache = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Cache");
        snprintf(status, sizeof(status), "%d", evhttp_request_get_response_code(req));
        count(b->by_status, &b->nstatus, 32, status);
        count(b->by_cache, &b->ncache, 8, cache ? cache : "-");
        b->done++;
        if (b->nlatency < MAX_SAMPLES)
            b->latency[b->nlatency++] = elapsed;
    }
    if (b->stopping) {
        if (b->in_flight == 0)
            event_base_loopexit(b->base, NULL);
        return;
    }
    send_next(c);
}

static void send_next(struct client *c)
{
    struct bench *b = c->b;
    struct pending *p = calloc(1, sizeof(*p));
    struct evhttp_request *req;
    char auth[512], host[300];

    p->c = c;
    req = evhttp_request_new(answered, p);
    snprintf(host, sizeof(host), "%s:%d", b->host, b->port);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", host);
    if (b->token != NULL) {
        snprintf(auth, sizeof(auth), "Bearer %s", b->token);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Authorization", auth);
    }
    p->sent = now_s();
    b->in_flight++;
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_GET, b->path) != 0) {
        b->in_flight--;
        b->errors++;
        free(p);
    }
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    (void)fd;
    (void)what;
    b->stopping = true;
    if (b->in_flight == 0)
        event_base_loopexit(b->base, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, long n, double p)
{
    long i;
    if (n == 0)
        return 0;
    i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static void report(struct bench *b, double elapsed, bool json)
{
    static const double ps[] = {50, 90, 99, 99.9};
    double rps = (double)b->done / elapsed;

    qsort(b->latency, (size_t)b->nlatency, sizeof(double), cmp_double);
    if (json) {
        printf("{\"requests\":%ld,\"errors\":%ld,\"seconds\":%.3f,\"rps\":%.1f,\"latency_ms\":{",
               b->done, b->errors, elapsed, rps);
        printf("\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p99.9\":%.3f,\"max\":%.3f},",
               percentile(b->latency, b->nlatency, 50) * 1e3,
               percentile(b->latency, b->nlatency, 90) * 1e3,
               percentile(b->latency, b->nlatency, 99) * 1e3,
               percentile(b->latency, b->nlatency, 99.9) * 1e3,
               b->nlatency ? b->latency[b->nlatency - 1] * 1e3 : 0.0);
        printf("\"status\":{");
        for (int i = 0; i < b->nstatus; i++)
            printf("%s\"%s\":%ld", i ? "," : "", b->by_status[i].key, b->by_status[i].count);
        printf("},\"x_cache\":{");
        for (int i = 0; i < b->ncache; i++)
            printf("%s\"%s\":%ld", i ? "," : "", b->by_cache[i].key, b->by_cache[i].count);
        printf("}}\n");
        return;
    }
    printf("requests   %ld in %.2f s (%d connections): %.0f req/s, %ld errors\n", b->done, elapsed,
           b->connections, rps, b->errors);
    printf("latency    ");
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
        printf("p%g %.3f ms  ", ps[i], percentile(b->latency, b->nlatency, ps[i]) * 1e3);
    printf("max %.3f ms\n", b->nlatency ? b->latency[b->nlatency - 1] * 1e3 : 0.0);
    printf("status    ");
    for (int i = 0; i < b->nstatus; i++)
        printf(" %s=%ld", b->by_status[i].key, b->by_status[i].count);
    printf("\nX-Cache   ");
    for (int i = 0; i < b->ncache; i++)
        printf(" %s=%ld", b->by_cache[i].key, b->by_cache[i].count);
    printf("\n");
}

static void usage(FILE *out)
{
    fprintf(out, "usage: stbench [-c CONNECTIONS] [-d SECONDS] [-t TOKEN] [--json] "
                 "http://HOST:PORT/PATH\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct bench b;
    struct client *clients;
    struct evhttp_uri *uri;
    struct event *stop;
    struct timeval tv;
    bool json = false;
    double t0;
    int opt;

    memset(&b, 0, sizeof(b));
    b.connections = 16;
    b.seconds = 5;
    while ((opt = getopt_long(argc, argv, "c:d:t:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            b.connections = atoi(optarg);
            break;
        case 'd':
            b.seconds = atof(optarg);
            break;
        case 't':
            b.token = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind + 1 != argc || b.connections < 1 || b.seconds <= 0) {
        usage(stderr);
        return 2;
    }
    uri = evhttp_uri_parse(argv[optind]);
    if (uri == NULL || evhttp_uri_get_host(uri) == NULL || evhttp_uri_get_scheme(uri) == NULL ||
        strcmp(evhttp_uri_get_scheme(uri), "http") != 0) {
        fprintf(stderr, "stbench: expected an http:// URL\n");
        return 2;
    }
    b.host = evhttp_uri_get_host(uri);
    b.port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
    {
        const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
        size_t len = strlen(path && *path ? path : "/") + (query ? strlen(query) + 1 : 0) + 1;
        char *full = malloc(len);
        snprintf(full, len, "%s%s%s", path && *path ? path : "/", query ? "?" : "",
                 query ? query : "");
        b.path = full;
    }
    b.latency = malloc(sizeof(double) * MAX_SAMPLES);
    b.base = event_base_new();
    clients = calloc((size_t)b.connections, sizeof(*clients));
    for (int i = 0; i < b.connections; i++) {
        clients[i].b = &b;
        clients[i].conn = evhttp_connection_base_new(b.base, NULL, b.host, (ev_uint16_t)b.port);
        evhttp_connection_set_timeout(clients[i].conn, 30);
    }
    tv.tv_sec = (long)b.seconds;
    tv.tv_usec = (long)((b.seconds - (double)tv.tv_sec) * 1e6);
    stop = evtimer_new(b.base, stop_cb, &b);
    evtimer_add(stop, &tv);
    t0 = now_s();
    for (int i = 0; i < b.connections; i++)
        send_next(&clients[i]);
    event_base_dispatch(b.base);
    report(&b, now_s() - t0, json);
    for (int i = 0; i < b.connections; i++)
        evhttp_connection_free(clients[i].conn);
    event_free(stop);
    event_base_free(b.base);
    free(clients);
    free(b.latency);
    free((char *)b.path);
    evhttp_uri_free(uri);
    return b.errors > 0 && b.done == 0 ? 1 : 0;
}
