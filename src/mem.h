/*
 * mem.h: allocation wrappers. An allocation failure in a daemon has no useful
 * recovery, so every allocation goes through these and a failure is fatal in
 * one place instead of being checked at every call site.
 */
#ifndef STPROXY_MEM_H
#define STPROXY_MEM_H

#include <stddef.h>
#include <stdlib.h>

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Frees *p and sets it to NULL; safe on NULL. */
#define xfree(p)                                                                                   \
    do {                                                                                           \
        free(p);                                                                                   \
        (p) = NULL;                                                                                \
    } while (0)

#endif
