/*
 * rewrite.h: edits to upstream JSON answers. For now one: absolute
 * pagination links (_links.<name>.href) on the upstream origin are rewritten
 * to the origin the client used, so clients that refuse to follow a link to
 * another origin (the official JS SDK) page through the proxy.
 */
#ifndef STPROXY_REWRITE_H
#define STPROXY_REWRITE_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;

/*
 * If body is a JSON object whose top-level "_links" members have an "href"
 * starting with from_origin (e.g. "https://api.smartthings.com", matched
 * case-insensitively, with or without its default port, and also written
 * with escaped slashes), writes the body with those prefixes replaced by
 * to_origin into out and returns true. Otherwise returns false and writes
 * nothing: the caller sends the body unchanged. Everything outside the
 * replaced prefixes is copied byte for byte.
 */
bool rewrite_links(const char *body, size_t len, const char *from_origin, const char *to_origin,
                   struct evbuffer *out) __attribute__((warn_unused_result));

/* True when rewrite_links would change body: it has top-level _links whose
 * hrefs start with from_origin. Computed once when an answer is cached, so a
 * hit on an entry without such links skips the tokenising. */
bool rewrite_links_found(const char *body, size_t len, const char *from_origin);

#endif
