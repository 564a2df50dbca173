/*
 * route.c: request-target checks and path classification. The rules are
 * strict on purpose: the same bytes are later used for the cache key and for
 * the upstream request, so anything that two parties could read two ways
 * (dot segments, encoded slashes, empty segments, control characters) is
 * refused here rather than normalised differently in two places.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>

#include "credential.h"
#include "mem.h"
#include "route.h"

static const char *const class_names[] = {
#define ROUTE_NAME(id, name) name,
    ROUTE_CLASSES(ROUTE_NAME)
#undef ROUTE_NAME
};

const char *route_class_name(enum route_class cls)
{
    return cls < ROUTE_CLASS_COUNT ? class_names[cls] : "other";
}

const char *route_status_reason(enum route_status status)
{
    switch (status) {
    case ROUTE_OK:
        return "ok";
    case ROUTE_BAD_TARGET:
        return "The request target is not a plain API path";
    case ROUTE_FOREIGN_HOST:
        return "This proxy forwards only to its configured API origin";
    case ROUTE_NOT_API:
        return "This path is not part of the SmartThings API";
    }
    return "refused";
}

bool route_is_status(enum route_class cls)
{
    return cls == ROUTE_DEVICE_STATUS || cls == ROUTE_COMPONENT_STATUS ||
           cls == ROUTE_CAPABILITY_STATUS;
}

/* One name=value pair of a query, pointing into a scratch copy. */
struct query_pair {
    const char *name;
    const char *value; /* NULL when the pair had no '=' */
};

static int pair_cmp(const void *a, const void *b)
{
    const struct query_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    if (x->value == NULL || y->value == NULL)
        return (x->value != NULL) - (y->value != NULL);
    return strcmp(x->value, y->value);
}

char *route_normalise_query(const char *query)
{
    struct query_pair *pairs;
    size_t n = 0, cap = 8, len = 0;
    char *scratch, *p, *out;

    if (query == NULL || query[0] == '\0')
        return xstrdup("");
    scratch = xstrdup(query);
    pairs = xmalloc(cap * sizeof(*pairs));
    for (p = scratch; p != NULL;) {
        char *amp = strchr(p, '&'), *eq;
        if (amp != NULL)
            *amp = '\0';
        eq = strchr(p, '=');
        if (*p != '\0') {
            if (eq != NULL)
                *eq = '\0';
            /* Split comma-joined values: a,b means the same as repeating the name. */
            for (char *v = eq ? eq + 1 : NULL;;) {
                char *comma = v ? strchr(v, ',') : NULL;
                if (comma != NULL)
                    *comma = '\0';
                if (n == cap) {
                    cap *= 2;
                    pairs = xrealloc(pairs, cap * sizeof(*pairs));
                }
                pairs[n].name = p;
                pairs[n].value = v;
                len += strlen(p) + (v ? strlen(v) + 1 : 0) + 1;
                n++;
                if (comma == NULL)
                    break;
                v = comma + 1;
            }
        }
        p = amp ? amp + 1 : NULL;
    }
    qsort(pairs, n, sizeof(*pairs), pair_cmp);
    out = xmalloc(len + 1);
    out[0] = '\0';
    p = out;
    for (size_t i = 0; i < n; i++) {
        p += sprintf(p, "%s%s%s%s", i ? "&" : "", pairs[i].name, pairs[i].value ? "=" : "",
                     pairs[i].value ? pairs[i].value : "");
    }
    free(pairs);
    free(scratch);
    return out;
}

void route_key_device(const char *device, char out[ROUTE_ID_MAX])
{
    char hex[CREDENTIAL_ID_LEN + 1];
    bool plain = device[0] != '\0';

    for (const char *p = device; *p != '\0' && plain; p++)
        plain = isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.';
    if (plain && strlen(device) < ROUTE_ID_MAX) {
        strcpy(out, device);
        return;
    }
    /* 'h' and the first 128 bits of the hash, in hex */
    credential_hash_hex(device, strlen(device), hex);
    out[0] = 'h';
    memcpy(out + 1, hex, 32);
    out[33] = '\0';
}

char *route_cache_key(const struct route *r, const char *method, const char *cred_id,
                      const char *accept)
{
    char digest[CREDENTIAL_ID_LEN + 1], device[ROUTE_ID_MAX];
    char *query = route_normalise_query(r->query);
    const char *fields[4] = {method, r->path, query, accept ? accept : ""};
    size_t len = 0;
    char *key, *buf;

    /* NUL separators: no field can run into the next one. */
    for (int i = 0; i < 4; i++)
        len += strlen(fields[i]) + 1;
    buf = xmalloc(len);
    len = 0;
    for (int i = 0; i < 4; i++) {
        size_t n = strlen(fields[i]) + 1;
        memcpy(buf + len, fields[i], n);
        len += n;
    }
    credential_hash_hex(buf, len, digest);
    free(buf);
    free(query);
    if (r->device_id[0] != '\0')
        route_key_device(r->device_id, device);
    else
        strcpy(device, "-");
    len = strlen(cred_id) + strlen(device) + strlen(route_class_name(r->cls)) + sizeof(digest) + 16;
    key = xmalloc(len);
    snprintf(key, len, "stp1:e:%s:%s:%s:%s", cred_id, device, route_class_name(r->cls), digest);
    return key;
}

void route_free(struct route *r)
{
    xfree(r->path);
    xfree(r->query);
}

/* True when the segment [s, s+len) is "." or ".." after %2e decoding. */
static bool is_dot_segment(const char *s, size_t len)
{
    size_t dots = 0;
    for (size_t i = 0; i < len;) {
        if (s[i] == '.') {
            dots++;
            i++;
        } else if (i + 2 < len && s[i] == '%' && s[i + 1] == '2' &&
                   (s[i + 2] == 'e' || s[i + 2] == 'E')) {
            dots++;
            i += 3;
        } else {
            return false;
        }
    }
    return dots == 1 || dots == 2;
}

/* Checks an origin-form path: printable, no empty or dot segments, no encoded
 * slash or backslash, no NUL. */
static bool path_is_plain(const char *path, size_t len)
{
    const char *seg;

    if (len == 0 || path[0] != '/')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#')
            return false;
        if (c == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)path[i + 1]) ||
                !isxdigit((unsigned char)path[i + 2]))
                return false;
            if ((path[i + 1] == '2' && (path[i + 2] == 'f' || path[i + 2] == 'F')) ||
                (path[i + 1] == '5' && (path[i + 2] == 'c' || path[i + 2] == 'C')) ||
                (path[i + 1] == '0' && path[i + 2] == '0'))
                return false;
        }
    }
    seg = path + 1;
    while (seg <= path + len) {
        const char *end = memchr(seg, '/', (size_t)(path + len - seg));
        size_t seglen = end ? (size_t)(end - seg) : (size_t)(path + len - seg);
        /* An empty last segment ("/devices/") is a trailing slash, kept as is. */
        if (seglen == 0 && end != NULL)
            return false;
        if (is_dot_segment(seg, seglen))
            return false;
        if (end == NULL)
            break;
        seg = end + 1;
    }
    return true;
}

static bool query_is_plain(const char *q)
{
    for (; *q != '\0'; q++) {
        unsigned char c = (unsigned char)*q;
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return false;
    }
    return true;
}

/* Splits the path into at most max segments; returns the count, or max+1 if more. */
static size_t split_segments(const char *path, const char **seg, size_t *seglen, size_t max)
{
    size_t n = 0;
    const char *p = path + 1;

    while (*p != '\0') {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 0) {
            if (n == max)
                return max + 1;
            seg[n] = p;
            seglen[n] = len;
            n++;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    return n;
}

static bool seg_is(const char *seg, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(seg, word, len) == 0;
}

static enum route_class classify_device(struct route *r, const char **seg, size_t *len, size_t n)
{
    if (n == 1)
        return ROUTE_DEVICES;
    if (len[1] < ROUTE_ID_MAX) {
        memcpy(r->device_id, seg[1], len[1]);
        r->device_id[len[1]] = '\0';
    }
    if (n == 2)
        return ROUTE_DEVICE;
    if (n == 3 && seg_is(seg[2], len[2], "status"))
        return ROUTE_DEVICE_STATUS;
    if (n == 3 && seg_is(seg[2], len[2], "health"))
        return ROUTE_DEVICE_HEALTH;
    if (n == 3 && seg_is(seg[2], len[2], "commands"))
        return ROUTE_DEVICE_COMMANDS;
    if (n == 3 && seg_is(seg[2], len[2], "events"))
        return ROUTE_DEVICE_EVENTS;
    if (n == 5 && seg_is(seg[2], len[2], "components") && seg_is(seg[4], len[4], "status"))
        return ROUTE_COMPONENT_STATUS;
    if (n == 7 && seg_is(seg[2], len[2], "components") && seg_is(seg[4], len[4], "capabilities") &&
        seg_is(seg[6], len[6], "status"))
        return ROUTE_CAPABILITY_STATUS;
    return ROUTE_DEVICE_OTHER;
}

static enum route_class classify(struct route *r)
{
    const char *seg[8];
    size_t len[8], n;
    const char *path = r->path;

    if (strcmp(path, "/v1") == 0 || strncmp(path, "/v1/", 4) == 0) {
        r->versioned = true;
        path += 3;
        if (*path == '\0')
            return ROUTE_OTHER;
    }
    n = split_segments(path, seg, len, 7);
    if (n == 0 || n > 7)
        return ROUTE_OTHER;
    if (seg_is(seg[0], len[0], "devices"))
        return classify_device(r, seg, len, n);
    if (seg_is(seg[0], len[0], "locations")) {
        if (n >= 3 && seg_is(seg[2], len[2], "rooms"))
            return ROUTE_ROOMS;
        if (n >= 3 && seg_is(seg[2], len[2], "modes"))
            return ROUTE_MODES;
        return n <= 2 ? ROUTE_LOCATIONS : ROUTE_OTHER;
    }
    if (seg_is(seg[0], len[0], "scenes")) {
        if (n == 3 && seg_is(seg[2], len[2], "execute"))
            return ROUTE_SCENE_EXECUTE;
        return n <= 2 ? ROUTE_SCENES : ROUTE_OTHER;
    }
    if (seg_is(seg[0], len[0], "capabilities"))
        return ROUTE_CAPABILITIES;
    if (seg_is(seg[0], len[0], "presentation"))
        return ROUTE_PRESENTATION;
    return ROUTE_OTHER;
}

/* The API's resource roots: the first path segment (after /v1) of every endpoint the official
 * SDK and the CLI call. Anything else is not the API, and is not forwarded. */
static const char *const api_roots[] = {
    "apps",           "capabilities",  "catalogs",      "channels",       "devicepreferences",
    "deviceprofiles", "devices",       "distchannels",  "drivers",        "history",
    "hubdevices",     "installedapps", "invites",       "locations",      "notification",
    "organizations",  "presentation",  "rules",         "scenes",         "schedules",
    "schema",         "services",      "subscriptions", "virtualdevices",
};

static bool is_api_path(const char *path)
{
    const char *seg = path + (strncmp(path, "/v1/", 4) == 0 ? 4 : 1);
    size_t len = strcspn(seg, "/");

    for (size_t i = 0; i < sizeof(api_roots) / sizeof(api_roots[0]); i++)
        if (seg_is(seg, len, api_roots[i]))
            return true;
    return false;
}

/* Compares an absolute-form authority with the proxy's own, ignoring case. */
static bool same_host(const struct evhttp_uri *uri, const char *self)
{
    const char *h = evhttp_uri_get_host(uri);
    int port = evhttp_uri_get_port(uri);
    char authority[300];

    if (h == NULL || self == NULL)
        return false;
    if (port >= 0)
        evutil_snprintf(authority, sizeof(authority), "%s:%d", h, port);
    else
        evutil_snprintf(authority, sizeof(authority), "%s", h);
    return strcasecmp(authority, self) == 0;
}

enum route_status route_parse(const char *target, const char *self, struct route *out)
{
    const char *q;
    size_t path_len;

    memset(out, 0, sizeof(*out));
    if (target == NULL || target[0] == '\0')
        return ROUTE_BAD_TARGET;
    if (target[0] != '/') {
        /* absolute-form: only for this proxy itself, never another host */
        struct evhttp_uri *uri = evhttp_uri_parse_with_flags(target, 0);
        const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
        enum route_status st = ROUTE_OK;
        if (uri == NULL || scheme == NULL ||
            (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0))
            st = ROUTE_BAD_TARGET;
        else if (!same_host(uri, self) || evhttp_uri_get_userinfo(uri) != NULL)
            st = ROUTE_FOREIGN_HOST;
        if (st == ROUTE_OK) {
            /* Re-enter with the origin-form part. */
            const char *path = evhttp_uri_get_path(uri);
            const char *query = evhttp_uri_get_query(uri);
            char *origin_form;
            size_t need;
            if (path == NULL || path[0] != '/') {
                evhttp_uri_free(uri);
                return ROUTE_BAD_TARGET;
            }
            need = strlen(path) + (query ? strlen(query) + 1 : 0) + 1;
            origin_form = xmalloc(need);
            evutil_snprintf(origin_form, need, "%s%s%s", path, query ? "?" : "",
                            query ? query : "");
            evhttp_uri_free(uri);
            st = route_parse(origin_form, self, out);
            free(origin_form);
            return st;
        }
        if (uri != NULL)
            evhttp_uri_free(uri);
        return st;
    }
    q = strchr(target, '?');
    path_len = q ? (size_t)(q - target) : strlen(target);
    if (!path_is_plain(target, path_len) || (q != NULL && !query_is_plain(q + 1)))
        return ROUTE_BAD_TARGET;
    out->path = xstrndup(target, path_len);
    out->query = q ? xstrdup(q + 1) : NULL;
    out->cls = classify(out);
    if (out->cls == ROUTE_OTHER && !is_api_path(out->path)) {
        route_free(out);
        memset(out, 0, sizeof(*out));
        return ROUTE_NOT_API;
    }
    return ROUTE_OK;
}
