/*
 * janitor.h: the one periodic timer. Modules that need housekeeping
 * (noticing closed connections; later expiry sweeps, idle budgets and
 * reconnects) register a task; each tick runs every task with the same
 * `now`, so tests can drive tasks with a time of their choosing.
 */
#ifndef STPROXY_JANITOR_H
#define STPROXY_JANITOR_H

#include <stdint.h>

struct event_base;
struct janitor;

/* A housekeeping task; now_ms is a monotonic clock in milliseconds. */
typedef void (*janitor_task_fn)(uint64_t now_ms, void *arg);

struct janitor *janitor_new(struct event_base *base, long interval_ms);
void janitor_add(struct janitor *jan, janitor_task_fn fn, void *arg);
void janitor_free(struct janitor *jan);

/* The monotonic clock the janitor passes to its tasks. */
uint64_t janitor_now_ms(void);

/* Seconds on the monotonic clock since t0 (taken with CLOCK_MONOTONIC): for durations. */
struct timespec;
double janitor_seconds_since(const struct timespec *t0);

/* Wall-clock milliseconds: for deadlines other processes (sharing Redis) and
 * the upstream (token lifetimes, reset times) must agree on. */
int64_t janitor_wall_ms(void);

#endif
