/*
 * httpline.c: splitting and checking one HTTP/1.1 header line (httpline.h).
 */
#include <string.h>

#include "httpline.h"

bool httpline_is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

bool httpline_split(char *line, char **value, const char **why)
{
    char *colon = strchr(line, ':'), *v, *end;

    if (line[0] == ' ' || line[0] == '\t') {
        *why = "Folded header lines are not accepted";
        return false;
    }
    if (colon == NULL || colon == line) {
        *why = "A header line has no name";
        return false;
    }
    *colon = '\0';
    for (const char *p = line; *p != '\0'; p++) {
        if (!httpline_is_tchar((unsigned char)*p)) {
            *why = "A header name is not a token";
            return false;
        }
    }
    v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    end = v + strlen(v);
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f) {
            *why = "A header value has control characters";
            return false;
        }
    }
    *value = v;
    return true;
}
