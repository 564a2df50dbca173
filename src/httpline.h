/*
 * httpline.h: the HTTP/1.1 header-line rules both sides share: the client
 * side (server.c) reading requests and the upstream side (upstream.c) reading
 * answers split "Name: value" lines the same strict way.
 */
#ifndef STPROXY_HTTPLINE_H
#define STPROXY_HTTPLINE_H

#include <stdbool.h>

/* RFC 9110 token characters: what a method or a header name is made of. */
bool httpline_is_tchar(unsigned char c);

/*
 * Splits a header line in place: line becomes the name, *value the value
 * with surrounding blanks removed. Returns false, with *why saying which,
 * for folded lines, a missing or empty name, a name that is not a token (a
 * blank before the colon included) and control characters in the value.
 */
bool httpline_split(char *line, char **value, const char **why);

#endif
