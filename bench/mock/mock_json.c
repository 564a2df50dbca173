/*
 * mock_json.c: JSON string escaping for stmock. Everything stmock writes that did not come from
 * a constant in the source (tokens, Host headers, request bodies echoed by /last-request, links)
 * goes through here, so a hostile or binary byte can never break the JSON a test parses.
 */
#include "mock.h"

#include <stdio.h>
#include <string.h>

/* Returns the length of the valid UTF-8 sequence of two or more bytes at s, or 0 when s does not
 * start one (stray continuation byte, overlong form, surrogate, past U+10FFFF, truncated). */
static size_t json_utf8_sequence(const unsigned char *s, size_t avail)
{
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */

    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        need = 2;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        need = 3;
        if (s[0] == 0xe0)
            lo = 0xa0; /* overlong */
        else if (s[0] == 0xed)
            hi = 0x9f; /* UTF-16 surrogates */
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        need = 4;
        if (s[0] == 0xf0)
            lo = 0x90; /* overlong */
        else if (s[0] == 0xf4)
            hi = 0x8f; /* beyond U+10FFFF */
    } else {
        return 0;
    }
    if (avail < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return need;
}

void mock_json_string(struct evbuffer *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0; /* start of the bytes that need no escaping and are not yet written */

    evbuffer_add(out, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        const char *esc = NULL;
        char hex[8];
        size_t seq;

        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\')
            continue;
        if (c >= 0x80 && (seq = json_utf8_sequence(p + i, len - i)) > 0) {
            i += seq - 1; /* valid multi-byte character: copy it as is */
            continue;
        }
        evbuffer_add(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            snprintf(hex, sizeof(hex), "\\u%04x", c);
            esc = hex;
            break;
        }
        evbuffer_add(out, esc, strlen(esc));
    }
    evbuffer_add(out, s + run, len - run);
    evbuffer_add(out, "\"", 1);
}

void mock_json_cstr(struct evbuffer *out, const char *s)
{
    if (s == NULL)
        evbuffer_add(out, "null", 4);
    else
        mock_json_string(out, s, strlen(s));
}
