/*
 * janitor.c: owns the periodic timer and the list of housekeeping tasks.
 */
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>

#include "janitor.h"
#include "mem.h"

#define JANITOR_MAX_TASKS 16

/* A registered task. */
struct janitor_task {
    janitor_task_fn fn;
    void *arg;
};

struct janitor {
    struct event *timer;
    struct janitor_task tasks[JANITOR_MAX_TASKS];
    int ntasks;
};

uint64_t janitor_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

double janitor_seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

int64_t janitor_wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct janitor *jan = arg;
    uint64_t now = janitor_now_ms();
    (void)fd;
    (void)what;

    for (int i = 0; i < jan->ntasks; i++)
        jan->tasks[i].fn(now, jan->tasks[i].arg);
}

struct janitor *janitor_new(struct event_base *base, long interval_ms)
{
    struct janitor *jan = xcalloc(1, sizeof(*jan));
    struct timeval tv = {interval_ms / 1000, (interval_ms % 1000) * 1000};

    jan->timer = event_new(base, -1, EV_PERSIST, tick, jan);
    event_add(jan->timer, &tv);
    return jan;
}

void janitor_add(struct janitor *jan, janitor_task_fn fn, void *arg)
{
    if (jan->ntasks == JANITOR_MAX_TASKS)
        abort(); /* a programming error: raise JANITOR_MAX_TASKS */
    jan->tasks[jan->ntasks].fn = fn;
    jan->tasks[jan->ntasks].arg = arg;
    jan->ntasks++;
}

void janitor_free(struct janitor *jan)
{
    if (jan == NULL)
        return;
    event_free(jan->timer);
    free(jan);
}
