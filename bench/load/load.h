/*
 * load.h: stbench's shared types. stbench is the load generator of stproxy's benchmarks:
 * a small HTTP/1.1 client of its own on libevent bufferevents (plain or TLS, keep-alive),
 * driven by one of five modes, with latency percentiles and answer tallies.
 *
 *   load_conn.c   one client connection: connect, TLS, send a request, parse the answer
 *   load_stats.c  the tallies of a run and its report (a human table or one JSON object)
 *   load_mix.c    the integration mix: integrations polling devices at their own intervals
 *   load_main.c   the command line, the other modes (closed loop, once, idle, fill), the
 *                 mock's counters
 */
#ifndef STBENCH_LOAD_H
#define STBENCH_LOAD_H

#include <stdbool.h>
#include <stddef.h>

#include <sys/socket.h>

#include <event2/event.h>
#include <openssl/ssl.h>

/* Where requests go: from a URL on the command line. */
struct load_target {
    bool tls;
    bool host_is_ip;
    char host[256];
    int port;
    char path[512];   /* the URL's path and query, "/" when empty */
    char prefix[256]; /* the URL's path without a trailing slash: "" or "/v1" */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    SSL_CTX *ssl;       /* NULL for http:// */
    char headers[1024]; /* Host, Authorization and Accept lines every request carries */
};

/* Parses url into t (and resolves its host); token may be NULL. False with a message on
 * stderr when the URL is not usable. */
bool load_target_parse(struct load_target *t, const char *url, const char *token,
                       const char *cacert);

/* What came back for one request. */
struct load_answer {
    int status;       /* 0: no answer (connect failed, connection lost, timeout) */
    char x_cache[16]; /* the X-Cache header, "-" when absent */
    long age;         /* the Age header in seconds, -1 when absent */
    bool close;       /* the server said Connection: close */
    double latency;   /* seconds from sending to the last byte of the answer */
    char *body;       /* the body, NUL-terminated, only when the request asked to keep it */
    size_t body_len;
};

struct load_request;
typedef void (*load_done_fn)(struct load_request *req, void *arg);

/* One request and, once done, its answer. The caller owns it until done runs. */
struct load_request {
    const char *method;
    char path[512];
    const char *body; /* NULL: none */
    bool keep_body;
    struct load_answer answer;
    load_done_fn done;
    void *arg;
    double sent;
};

/* How far a connection has got. */
enum load_conn_state {
    LOAD_CONN_CLOSED,     /* no socket; the next request connects */
    LOAD_CONN_CONNECTING, /* TCP (and TLS) handshake under way */
    LOAD_CONN_READY,      /* connected, nothing in flight */
    LOAD_CONN_BUSY,       /* a request is in flight */
};

/* Where the answer parser is. */
enum load_parse_state {
    PARSE_STATUS_LINE,
    PARSE_HEADERS,
    PARSE_BODY,       /* Content-Length bytes, or until close */
    PARSE_CHUNK_SIZE, /* Transfer-Encoding: chunked */
    PARSE_CHUNK_DATA,
    PARSE_CHUNK_END, /* the CRLF after a chunk's data */
    PARSE_TRAILERS,
};

struct load_conn;
/* Called when the connection becomes ready (connected, or done with an answer). */
typedef void (*load_ready_fn)(struct load_conn *c, void *arg);

struct load_conn *load_conn_new(struct event_base *base, const struct load_target *target,
                                load_ready_fn ready, void *arg);
void load_conn_free(struct load_conn *c);
/* Opens the connection without sending anything; ready runs when it is up. */
void load_conn_open(struct load_conn *c);
/* Sends req (connecting first if needed); req->done runs exactly once. Only one at a time. */
void load_conn_send(struct load_conn *c, struct load_request *req);
enum load_conn_state load_conn_state(const struct load_conn *c);

double load_now(void);

/* ---- tallies ------------------------------------------------------------------------------ */

#define LOAD_MAX_KEYS 32

/* Counts by a short text key, in first-seen order. */
struct load_tally {
    char key[LOAD_MAX_KEYS][24];
    long count[LOAD_MAX_KEYS];
    int n;
};

void load_tally_add(struct load_tally *t, const char *key, long n);

/* Everything a run reports. */
struct load_stats {
    const char *label;
    const char *mode;
    int connections;
    double seconds;
    long requests, errors;
    double *latency; /* seconds, one per answered request */
    long n_latency, cap_latency;
    struct load_tally status, x_cache, kinds;
    long age_max;        /* the largest Age seen, -1: none */
    long skipped_cycles; /* mix: polls skipped because the previous one was still running */
    long open_at_end;    /* idle: connections still open when the run ended, -1: not idle */
    bool have_upstream;
    long long upstream_calls, upstream_limited;
};

void load_stats_init(struct load_stats *s, const char *label, const char *mode);
/* Counts one finished request under kind (NULL: no per-kind count). */
void load_stats_note(struct load_stats *s, const struct load_request *req, const char *kind);
void load_stats_report(struct load_stats *s, bool json);
void load_stats_free(struct load_stats *s);

/* ---- the integration mix ------------------------------------------------------------------ */

struct load_mix_options {
    int integrations;
    int devices;
    double interval_min, interval_max;
    int health_every;     /* every Nth poll also reads each device's health; 0: never */
    double command_every; /* mean seconds between one integration's commands; 0: none */
    int conns_per_integration;
    unsigned seed;
};

/* Runs the mix for seconds against target with device_ids; returns when done. */
void load_mix_run(struct event_base *base, const struct load_target *target,
                  const struct load_mix_options *o, char **device_ids, int n_ids, double seconds,
                  struct load_stats *stats);

#endif
