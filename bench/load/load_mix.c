/*
 * load_mix.c: the integration mix, a household's integrations as the upstream sees them. Each
 * integration (Home Assistant, Homebridge, a Node-RED flow, ...) polls the same devices at its
 * own interval: every poll reads the device list and each device's status, every health_every-th
 * poll each device's health too, and now and then (exponentially spread around command_every
 * seconds) it switches a device on or off. An integration runs its requests over a few
 * keep-alive connections of its own; a poll that comes due while the previous one is still
 * running is skipped and counted, as polling coordinators do.
 *
 * Owns the schedule, the per-integration queues and the run's end; the requests go out through
 * load_conn.c and are counted in load_stats.c under their kind.
 */
#include "load.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIX_DRAIN_S 35 /* longest wait for answers still in flight at the end */

/* What a queued request reads or does. */
enum mix_kind { MIX_LIST, MIX_STATUS, MIX_HEALTH, MIX_COMMAND, MIX_KIND_COUNT };

static const char *const mix_kind_names[MIX_KIND_COUNT] = {"list", "status", "health", "command"};

struct mix_item {
    enum mix_kind kind;
    int device;
};

struct mix;

/* One integration: its schedule, its queue and its connections. */
struct mix_integration {
    struct mix *m;
    double interval;
    long polls;
    unsigned rand_state;
    struct event *poll_timer, *command_timer;
    struct mix_item *queue; /* a ring of cap items */
    int q_first, q_len, q_cap;
    struct load_conn **conns;
    struct load_request *reqs; /* one per connection */
    bool *active;              /* reqs[i] is in flight */
    int in_flight;
    bool switch_on;
};

struct mix {
    struct event_base *base;
    const struct load_target *target;
    const struct load_mix_options *o;
    char **device_ids;
    struct load_stats *stats;
    struct mix_integration *in;
    int in_flight;
    bool stopping;
    struct event *stop_timer;
};

static double mix_uniform(unsigned *state)
{
    return (double)rand_r(state) / ((double)RAND_MAX + 1.0);
}

static void mix_timer_in(struct event *ev, double seconds)
{
    struct timeval tv;

    if (seconds < 0)
        seconds = 0;
    tv.tv_sec = (long)seconds;
    tv.tv_usec = (long)((seconds - (double)tv.tv_sec) * 1e6);
    evtimer_add(ev, &tv);
}

static void mix_push(struct mix_integration *in, enum mix_kind kind, int device, bool front)
{
    if (in->q_len == in->q_cap) {
        int cap = in->q_cap ? 2 * in->q_cap : 256;
        struct mix_item *q = calloc((size_t)cap, sizeof(*q));

        if (q == NULL)
            abort();
        for (int i = 0; i < in->q_len; i++)
            q[i] = in->queue[(in->q_first + i) % in->q_cap];
        free(in->queue);
        in->queue = q;
        in->q_first = 0;
        in->q_cap = cap;
    }
    if (front) {
        in->q_first = (in->q_first + in->q_cap - 1) % in->q_cap;
        in->queue[in->q_first] = (struct mix_item){kind, device};
    } else {
        in->queue[(in->q_first + in->q_len) % in->q_cap] = (struct mix_item){kind, device};
    }
    in->q_len++;
}

static void mix_done(struct load_request *req, void *arg);

/* Fills the integration's free connections from its queue. */
static void mix_dispatch(struct mix_integration *in)
{
    struct mix *m = in->m;
    const char *prefix = m->target->prefix;

    for (int c = 0; c < m->o->conns_per_integration && in->q_len > 0 && !m->stopping; c++) {
        struct load_request *req = &in->reqs[c];
        struct mix_item item;

        if (in->active[c])
            continue;
        item = in->queue[in->q_first];
        in->q_first = (in->q_first + 1) % in->q_cap;
        in->q_len--;
        req->method = "GET";
        req->body = NULL;
        switch (item.kind) {
        case MIX_LIST:
            snprintf(req->path, sizeof(req->path), "%s/devices", prefix);
            break;
        case MIX_STATUS:
            snprintf(req->path, sizeof(req->path), "%s/devices/%s/status", prefix,
                     m->device_ids[item.device]);
            break;
        case MIX_HEALTH:
            snprintf(req->path, sizeof(req->path), "%s/devices/%s/health", prefix,
                     m->device_ids[item.device]);
            break;
        case MIX_COMMAND:
            snprintf(req->path, sizeof(req->path), "%s/devices/%s/commands", prefix,
                     m->device_ids[item.device]);
            req->method = "POST";
            in->switch_on = !in->switch_on;
            req->body = in->switch_on ? "{\"commands\":[{\"component\":\"main\",\"capability\":"
                                        "\"switch\",\"command\":\"on\"}]}"
                                      : "{\"commands\":[{\"component\":\"main\",\"capability\":"
                                        "\"switch\",\"command\":\"off\"}]}";
            break;
        case MIX_KIND_COUNT:
            abort();
        }
        req->done = mix_done;
        req->arg = in;
        req->keep_body = false;
        in->active[c] = true;
        in->in_flight++;
        m->in_flight++;
        load_conn_send(in->conns[c], req);
    }
}

/* The kind of a finished request, from its path and method. */
static enum mix_kind mix_kind_of(const struct load_request *req)
{
    size_t len = strlen(req->path);

    if (strcmp(req->method, "POST") == 0)
        return MIX_COMMAND;
    if (len >= 7 && strcmp(req->path + len - 7, "/status") == 0)
        return MIX_STATUS;
    if (len >= 7 && strcmp(req->path + len - 7, "/health") == 0)
        return MIX_HEALTH;
    return MIX_LIST;
}

static void mix_done(struct load_request *req, void *arg)
{
    struct mix_integration *in = arg;
    struct mix *m = in->m;
    int slot = (int)(req - in->reqs);

    load_stats_note(m->stats, req, mix_kind_names[mix_kind_of(req)]);
    in->active[slot] = false;
    in->in_flight--;
    m->in_flight--;
    if (m->stopping) {
        if (m->in_flight == 0)
            event_base_loopexit(m->base, NULL);
        return;
    }
    mix_dispatch(in);
}

static void mix_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    struct mix_integration *in = arg;
    const struct load_mix_options *o = in->m->o;

    (void)fd;
    (void)what;
    if (in->q_len > 0 || in->in_flight > 0) {
        in->m->stats->skipped_cycles++;
    } else {
        bool health = o->health_every > 0 && in->polls % o->health_every == 0;

        mix_push(in, MIX_LIST, 0, false);
        for (int d = 0; d < o->devices; d++) {
            mix_push(in, MIX_STATUS, d, false);
            if (health)
                mix_push(in, MIX_HEALTH, d, false);
        }
        in->polls++;
        mix_dispatch(in);
    }
    mix_timer_in(in->poll_timer, in->interval);
}

static void mix_command_cb(evutil_socket_t fd, short what, void *arg)
{
    struct mix_integration *in = arg;
    const struct load_mix_options *o = in->m->o;

    (void)fd;
    (void)what;
    /* A person pressed a switch: it goes out ahead of the integration's polling. */
    mix_push(in, MIX_COMMAND, (int)(mix_uniform(&in->rand_state) * o->devices), true);
    mix_dispatch(in);
    mix_timer_in(in->command_timer, -log(1.0 - mix_uniform(&in->rand_state)) * o->command_every);
}

static void mix_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct mix *m = arg;

    (void)fd;
    (void)what;
    if (m->stopping) { /* the drain took too long */
        event_base_loopexit(m->base, NULL);
        return;
    }
    m->stopping = true;
    for (int i = 0; i < m->o->integrations; i++) {
        evtimer_del(m->in[i].poll_timer);
        evtimer_del(m->in[i].command_timer);
    }
    if (m->in_flight == 0)
        event_base_loopexit(m->base, NULL);
    else
        mix_timer_in(m->stop_timer, MIX_DRAIN_S);
}

void load_mix_run(struct event_base *base, const struct load_target *target,
                  const struct load_mix_options *o, char **device_ids, int n_ids, double seconds,
                  struct load_stats *stats)
{
    struct mix m = {
        .base = base, .target = target, .o = o, .device_ids = device_ids, .stats = stats};
    struct load_mix_options used = *o;
    unsigned seed = o->seed;
    double t0;

    if (used.devices > n_ids)
        used.devices = n_ids;
    m.o = &used;
    m.in = calloc((size_t)used.integrations, sizeof(*m.in));
    if (m.in == NULL)
        abort();
    for (int i = 0; i < used.integrations; i++) {
        struct mix_integration *in = &m.in[i];

        in->m = &m;
        in->rand_state = seed + (unsigned)i * 7919u;
        in->interval = used.interval_min +
                       mix_uniform(&in->rand_state) * (used.interval_max - used.interval_min);
        in->conns = calloc((size_t)used.conns_per_integration, sizeof(*in->conns));
        in->reqs = calloc((size_t)used.conns_per_integration, sizeof(*in->reqs));
        in->active = calloc((size_t)used.conns_per_integration, sizeof(*in->active));
        if (in->conns == NULL || in->reqs == NULL || in->active == NULL)
            abort();
        for (int c = 0; c < used.conns_per_integration; c++)
            in->conns[c] = load_conn_new(base, target, NULL, NULL);
        in->poll_timer = evtimer_new(base, mix_poll_cb, in);
        in->command_timer = evtimer_new(base, mix_command_cb, in);
        /* Integrations start at random moments of their first interval, not in step. */
        mix_timer_in(in->poll_timer, mix_uniform(&in->rand_state) * in->interval);
        if (used.command_every > 0)
            mix_timer_in(in->command_timer,
                         -log(1.0 - mix_uniform(&in->rand_state)) * used.command_every);
    }
    m.stop_timer = evtimer_new(base, mix_stop_cb, &m);
    mix_timer_in(m.stop_timer, seconds);
    stats->connections = used.integrations * used.conns_per_integration;
    t0 = load_now();
    event_base_dispatch(base);
    stats->seconds = load_now() - t0;

    for (int i = 0; i < used.integrations; i++) {
        struct mix_integration *in = &m.in[i];

        for (int c = 0; c < used.conns_per_integration; c++)
            load_conn_free(in->conns[c]);
        event_free(in->poll_timer);
        event_free(in->command_timer);
        free(in->conns);
        free(in->reqs);
        free(in->active);
        free(in->queue);
    }
    event_free(m.stop_timer);
    free(m.in);
}
