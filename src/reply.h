/*
 * reply.h: answers the proxy makes itself. Errors use the API's own shape,
 * {"requestId":"…","error":{"code":"…","message":"…","details":[]}}, so
 * clients parse them like any other API error. Messages never hold a token,
 * a key or anything else the client sent.
 */
#ifndef STPROXY_REPLY_H
#define STPROXY_REPLY_H

#include <stdbool.h>
#include <stddef.h>

struct server_request;

/* A fresh request id: hex, unique within the process and across restarts. */
void reply_request_id(char *buf, size_t len);

/* Sends status with the API error body; extra_header may be NULL. */
void reply_error(struct server_request *req, int status, const char *code, const char *message);

/* Writes s escaped for the inside of a JSON string. */
struct evbuffer;
void reply_json_escape(struct evbuffer *out, const char *s);

/* The standard reason phrase of a status code ("OK", "Bad Gateway"...). */
const char *reply_reason(int status);

#endif
