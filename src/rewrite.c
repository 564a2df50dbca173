/*
 * rewrite.c: JSON edits with jsmn. The document is tokenised once; only the
 * byte ranges of matching href prefixes are replaced, so formatting, key
 * order and every other value reach the client exactly as the upstream sent
 * them. A body that is not a JSON object, or that jsmn cannot parse, is left
 * alone (never an error: the client gets what the upstream said).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include <event2/buffer.h>

#include "mem.h"
#include "rewrite.h"

/* Index of the token after the subtree rooted at i. */
static int skip_token(const jsmntok_t *tok, int ntok, int i)
{
    int pending = 1;
    while (pending > 0 && i < ntok) {
        if (tok[i].type == JSMN_OBJECT)
            pending += tok[i].size * 2;
        else if (tok[i].type == JSMN_ARRAY)
            pending += tok[i].size;
        pending--;
        i++;
    }
    return i;
}

static bool key_is(const char *js, const jsmntok_t *t, const char *word)
{
    size_t len = strlen(word);
    return t->type == JSMN_STRING && (size_t)(t->end - t->start) == len &&
           memcmp(js + t->start, word, len) == 0;
}

/*
 * Matches origin against the start of a raw JSON string s[0..len), where
 * "\/" counts as "/". Scheme and host compare without case. A ":443" in the
 * string after an origin that has no port is accepted too. Returns the raw
 * length matched, or 0; the match must end at the string's end, '/' or '?'.
 */
static size_t match_origin(const char *s, size_t len, const char *origin)
{
    size_t i = 0, o = 0, olen = strlen(origin);

    while (o < olen) {
        if (i < len && s[i] == '\\' && i + 1 < len && s[i + 1] == '/' && origin[o] == '/') {
            i += 2;
            o++;
        } else if (i < len && tolower((unsigned char)s[i]) == tolower((unsigned char)origin[o])) {
            i++;
            o++;
        } else {
            return 0;
        }
    }
    if (i + 4 <= len && memcmp(s + i, ":443", 4) == 0 && strncasecmp(origin, "https:", 6) == 0)
        i += 4;
    if (i == len || s[i] == '/' || s[i] == '?' || (s[i] == '\\' && i + 1 < len && s[i + 1] == '/'))
        return i;
    return 0;
}

/* True when needle occurs in s[0..len), ignoring ASCII case. */
static bool contains_nocase(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    int first = tolower((unsigned char)needle[0]);

    for (size_t i = 0; n > 0 && i + n <= len; i++) {
        if (tolower((unsigned char)s[i]) == first && strncasecmp(s + i, needle, n) == 0)
            return true;
    }
    return n == 0;
}

/* Finds the links to rewrite; with out, writes the rewritten body there, without, stops at the
 * first one. */
static bool scan_links(const char *body, size_t len, const char *from_origin, const char *to_origin,
                       struct evbuffer *out)
{
    const char *authority = strstr(from_origin, "://");
    jsmn_parser parser;
    jsmntok_t *tok = NULL;
    int ntok, i, copied = 0;
    bool changed = false;
    size_t start = 0;

    /* Cheap test first: most answers (status reads) carry no links at all. */
    while (start < len && isspace((unsigned char)body[start]))
        start++;
    if (start == len || body[start] != '{' || len > (size_t)0x7fffffff)
        return false;
    if (memmem(body, len, "\"_links\"", 8) == NULL)
        return false;
    /* Every link match_origin rewrites holds the origin's host[:port] as it is: a body without
     * it (a list that fits one page has "_links":{}) needs no tokenising. The benchmarks showed
     * the tokenising of a 46 KB device list on every hit at 6x nginx's time. */
    if (authority != NULL && !contains_nocase(body, len, authority + 3))
        return false;

    jsmn_init(&parser);
    ntok = jsmn_parse(&parser, body, len, NULL, 0);
    if (ntok <= 0)
        return false;
    tok = xmalloc(sizeof(*tok) * (size_t)ntok);
    jsmn_init(&parser);
    if (jsmn_parse(&parser, body, len, tok, (unsigned)ntok) != ntok || tok[0].type != JSMN_OBJECT)
        goto done;

    /* Walk the top-level members looking for "_links": { name: { href } } */
    for (i = 1; i < ntok && tok[i].start < tok[0].end;) {
        int value = i + 1;
        if (value >= ntok)
            break;
        if (key_is(body, &tok[i], "_links") && tok[value].type == JSMN_OBJECT) {
            int j = value + 1, links_end = skip_token(tok, ntok, value);
            while (j < links_end) {
                int link = j + 1, k, link_end;
                if (link >= links_end)
                    break;
                link_end = skip_token(tok, ntok, link);
                if (tok[link].type == JSMN_OBJECT) {
                    for (k = link + 1; k + 1 < link_end; k = skip_token(tok, ntok, k + 1)) {
                        const jsmntok_t *v = &tok[k + 1];
                        size_t m;
                        if (!key_is(body, &tok[k], "href") || v->type != JSMN_STRING)
                            continue;
                        m = match_origin(body + v->start, (size_t)(v->end - v->start), from_origin);
                        if (m == 0)
                            continue;
                        if (out == NULL) {
                            changed = true;
                            goto done;
                        }
                        evbuffer_add(out, body + copied, (size_t)(v->start - copied));
                        evbuffer_add(out, to_origin, strlen(to_origin));
                        copied = v->start + (int)m;
                        changed = true;
                    }
                }
                j = link_end;
            }
        }
        i = skip_token(tok, ntok, value);
    }
    if (changed)
        evbuffer_add(out, body + copied, len - (size_t)copied);
done:
    free(tok);
    return changed;
}

bool rewrite_links(const char *body, size_t len, const char *from_origin, const char *to_origin,
                   struct evbuffer *out)
{
    return scan_links(body, len, from_origin, to_origin, out);
}

bool rewrite_links_found(const char *body, size_t len, const char *from_origin)
{
    return scan_links(body, len, from_origin, NULL, NULL);
}
