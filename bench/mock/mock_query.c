/*
 * mock_query.c: URL query strings, as the API port and the admin port read them.
 *
 * Owns the parsed copy of one query (struct mock_query) and the value lists built from it
 * (struct mock_values); both belong to the caller between _parse/_values and _free. Every
 * parameter keeps its raw text next to its decoded key and value, because pagination links
 * must carry the client's other parameters exactly as the client wrote them, while filters
 * must compare decoded values.
 */
#include "mock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Decodes len bytes of s (%XX and '+'); the result is the caller's. */
static char *query_decode(const char *s, size_t len)
{
    char *raw = mock_xmalloc(len + 1);
    char *decoded;

    memcpy(raw, s, len);
    raw[len] = '\0';
    decoded = evhttp_uridecode(raw, 1, NULL);
    free(raw);
    if (decoded == NULL) {
        mock_log("fatal: out of memory decoding a query");
        abort();
    }
    return decoded;
}

void mock_query_parse(struct mock_query *q, const char *query)
{
    size_t cap = 1;
    char *p;

    memset(q, 0, sizeof(*q));
    if (query == NULL || *query == '\0')
        return;
    q->text = mock_xstrdup(query);
    for (p = q->text; *p; p++)
        cap += *p == '&';
    q->params = mock_xcalloc(cap, sizeof(*q->params));
    for (p = q->text; p != NULL;) {
        char *amp = strchr(p, '&');
        char *eq;

        /* Cutting at '&' leaves each parameter's raw text NUL-terminated in place. */
        if (amp != NULL)
            *amp = '\0';
        if (*p != '\0') {
            struct mock_param *param = &q->params[q->n++];

            eq = strchr(p, '=');
            param->raw = p;
            param->key = query_decode(p, eq ? (size_t)(eq - p) : strlen(p));
            param->value = eq ? query_decode(eq + 1, strlen(eq + 1)) : mock_xstrdup("");
        }
        p = amp ? amp + 1 : NULL;
    }
}

void mock_query_free(struct mock_query *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->params[i].key);
        free(q->params[i].value);
    }
    free(q->params);
    free(q->text);
    memset(q, 0, sizeof(*q));
}

const char *mock_query_get(const struct mock_query *q, const char *key)
{
    for (size_t i = 0; i < q->n; i++) {
        if (strcmp(q->params[i].key, key) == 0)
            return q->params[i].value;
    }
    return NULL;
}

void mock_query_values(struct mock_values *vals, const struct mock_query *q, const char *key)
{
    memset(vals, 0, sizeof(*vals));
    for (size_t i = 0; i < q->n; i++) {
        const char *part = q->params[i].value;

        if (strcmp(q->params[i].key, key) != 0)
            continue;
        /* pysmartthings joins with commas, the JS SDK repeats the key: accept both, and
         * skip empty parts so "a,,b" and a trailing comma do no harm. */
        while (*part != '\0') {
            size_t len = strcspn(part, ",");

            if (len > 0) {
                vals->v = mock_xrealloc(vals->v, (vals->n + 1) * sizeof(*vals->v));
                vals->v[vals->n] = mock_xmalloc(len + 1);
                memcpy(vals->v[vals->n], part, len);
                vals->v[vals->n++][len] = '\0';
            }
            part += len + (part[len] == ',');
        }
    }
}

bool mock_query_values_contain(const struct mock_values *vals, const char *s)
{
    for (size_t i = 0; i < vals->n; i++) {
        if (strcmp(vals->v[i], s) == 0)
            return true;
    }
    return false;
}

void mock_query_values_free(struct mock_values *vals)
{
    for (size_t i = 0; i < vals->n; i++)
        free(vals->v[i]);
    free(vals->v);
    memset(vals, 0, sizeof(*vals));
}

bool mock_query_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    /* strtol alone accepts "", "12abc" and overflow; a parameter must be all digits. */
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}
