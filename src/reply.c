/*
 * reply.c: builds the proxy's own answers (errors in the API's shape) and
 * owns the request-id sequence used in them.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <openssl/rand.h>

#include "metrics.h"
#include "reply.h"
#include "server.h"

void reply_request_id(char *buf, size_t len)
{
    static uint64_t prefix, seq;

    if (prefix == 0 && RAND_bytes((unsigned char *)&prefix, sizeof(prefix)) != 1)
        prefix = 0x5eed;
    snprintf(buf, len, "%016llx-%llu", (unsigned long long)prefix, (unsigned long long)++seq);
}

/* Writes s as the body of a JSON string (quotes not included). */
void reply_json_escape(struct evbuffer *out, const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            evbuffer_add_printf(out, "\\%c", c);
        else if (c < 0x20)
            evbuffer_add_printf(out, "\\u%04x", c);
        else
            evbuffer_add(out, s, 1);
    }
}

void reply_error(struct server_request *req, int status, const char *code, const char *message)
{
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq *headers = server_request_output_headers(req);
    char id[48];

    reply_request_id(id, sizeof(id));
    evbuffer_add_printf(body, "{\"requestId\":\"%s\",\"error\":{\"code\":\"", id);
    reply_json_escape(body, code);
    evbuffer_add_printf(body, "\",\"message\":\"");
    reply_json_escape(body, message);
    evbuffer_add_printf(body, "\",\"details\":[]}}");
    evhttp_add_header(headers, "Content-Type", "application/json;charset=utf-8");
    server_send_reply(req, status, reply_reason(status), body);
    evbuffer_free(body);
}

const char *reply_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        break;
    }
    if (status >= 200 && status < 300)
        return "OK";
    if (status >= 400 && status < 500)
        return "Client Error";
    return "Error";
}
