/*
 * mock_oauth.c: the OAuth2 side of the mock API, as SMARTTHINGS.md ("Auth") describes the real
 * one, so that tests can run the proxy's OAuth2 credential (refresh, rotation, invalid_grant,
 * `stproxy auth`) against something that behaves like it.
 *
 * Owns the OAuth apps (--oauth-client ID:SECRET), every code, refresh token and access token it
 * issued (one table of grants, kept until shutdown), the token requests waiting out
 * token_latency_ms, and the "oauth" member of /counters. On the API (TLS) port:
 *
 *   GET  [/v1]/oauth/authorize?client_id&response_type=code&redirect_uri&scope&state
 *        stands in for the user approving in a browser: 302 to redirect_uri?code=C&state=S with
 *        a fresh single-use code bound to that client and redirect_uri (400 page for an unknown
 *        client_id, a response_type other than code, or no redirect_uri)
 *   POST [/v1]/oauth/token   Authorization: Basic base64(id:secret), form body
 *        grant_type=authorization_code&code&redirect_uri, or grant_type=refresh_token&
 *        refresh_token (client_id may be in the body too; it must then be the Basic one).
 *        200 {"access_token","token_type":"bearer","refresh_token","expires_in","scope",
 *        "installed_app_id","access_tier":0}. Every refresh rotates: the refresh token used is
 *        dead at once. Errors: 401 invalid_client, 400 invalid_grant (unknown, used or revoked
 *        token or code), 400 invalid_request / unsupported_grant_type, 503 (token_fail).
 *
 * Access tokens issued here are accepted by the API as bearer tokens until they expire
 * (access_ttl_ms when issued) or are revoked; all of one app's access tokens see one world,
 * the tenant "oauth:<client_id>", under which /counters and the limits count them too.
 *
 * A token request waits token_latency_ms before it is looked at, as if it were slow to arrive:
 * a client that leaves meanwhile (a proxy killed mid-refresh) has its request dropped unread, so
 * that no refresh token is rotated behind the back of a client that never saw the answer.
 * Without a latency the answer is made and sent at once.
 *
 * The admin port's /oauth/... endpoints (mock_admin.c routes them here): POST /oauth/issue,
 * POST /oauth/revoke, POST /oauth/expire, GET /oauth/tokens; see each handler.
 */
#include "mock.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* Grants live in one fixed hash table; a long test issues a few thousand at most. */
#define OAUTH_BUCKETS 4096
/* What a code or refresh token carries when nobody asked for a scope. */
#define OAUTH_DEFAULT_SCOPE "r:devices:* x:devices:* r:locations:* r:scenes:* x:scenes:*"
/* Longest Authorization: Basic value decoded (id:secret). */
#define OAUTH_MAX_BASIC 1024

/* One registered OAuth app. Owned by oauth_clients from --oauth-client until shutdown. */
struct oauth_client {
    char *id;
    char *secret;
    char *identity; /* "oauth:<id>": its tenant, its by_token and limits key */
    char installed_app_id[MOCK_ID_LEN + 1];
};

/* What a grant is. */
enum oauth_kind {
    OAUTH_CODE,    /* an authorization code from /oauth/authorize */
    OAUTH_REFRESH, /* a refresh token */
    OAUTH_ACCESS,  /* an access token, a bearer token for the API */
};

/* Where a grant is in its life. Expiry of an access token is by time (expires_at), not here. */
enum oauth_grant_state {
    OAUTH_LIVE,    /* usable */
    OAUTH_USED,    /* a code exchanged or a refresh token rotated: single use, now dead */
    OAUTH_REVOKED, /* killed by POST /oauth/revoke */
};

/* One code or token the mock issued. Owned by the table from oauth_grant_new() to shutdown;
 * never freed earlier, so a dead token stays recognisable as one of ours (401, invalid_grant). */
struct oauth_grant {
    enum oauth_kind kind;
    enum oauth_grant_state state;
    char *value;
    size_t client;           /* index into oauth_clients */
    char *scope;             /* codes and refresh tokens: what the tokens made from them carry */
    char *redirect_uri;      /* codes only: the exchange must name the same one */
    int64_t expires_at;      /* access tokens only, mock_limit_now() microseconds */
    unsigned long long uses; /* refresh tokens: refresh requests that presented it since reset */
    struct oauth_grant *bucket_next; /* hash chain */
    struct oauth_grant *next;        /* every grant in issue order, for walks and /oauth/tokens */
};

/* What "oauth" in /counters reports; POST /reset zeroes it (and every grant's uses). */
struct oauth_counters {
    unsigned long long token_requests; /* every request that reached [/v1]/oauth/token */
    unsigned long long refreshes;      /* refresh_token grants answered 200 */
    unsigned long long code_exchanges; /* authorization_code grants answered 200 */
    unsigned long long invalid_grant;  /* answers with "error":"invalid_grant" */
    unsigned long long authorizations; /* codes issued by /oauth/authorize */
    unsigned long long abandoned;      /* token requests dropped: client left during the delay */
    unsigned long long failed;         /* token requests answered 503 by token_fail */
};

/* A token request waiting out token_latency_ms. Listed so that shutdown finds it. */
struct oauth_pending {
    struct evhttp_request *req;
    struct oauth_pending *prev, *next;
};

static struct event_base *oauth_base;
static struct oauth_client *oauth_clients;
static size_t oauth_n_clients;
static struct oauth_grant *oauth_buckets[OAUTH_BUCKETS];
static struct oauth_grant *oauth_first, *oauth_last; /* issue order */
static struct oauth_counters oauth_counters;
static struct oauth_pending *oauth_pending_list;

/* ---- apps and grants ---------------------------------------------------------------------- */

bool mock_oauth_add_client(const char *spec)
{
    const char *colon = strchr(spec, ':');
    struct oauth_client *c;
    size_t id_len;

    if (colon == NULL || colon == spec || colon[1] == '\0') {
        mock_log("--oauth-client wants ID:SECRET, not '%s'", spec);
        return false;
    }
    id_len = (size_t)(colon - spec);
    for (size_t i = 0; i < oauth_n_clients; i++) {
        if (strlen(oauth_clients[i].id) == id_len &&
            memcmp(oauth_clients[i].id, spec, id_len) == 0) {
            mock_log("--oauth-client: client id '%.*s' given twice", (int)id_len, spec);
            return false;
        }
    }
    oauth_clients = mock_xrealloc(oauth_clients, (oauth_n_clients + 1) * sizeof(*oauth_clients));
    c = &oauth_clients[oauth_n_clients++];
    c->id = mock_xmalloc(id_len + 1);
    memcpy(c->id, spec, id_len);
    c->id[id_len] = '\0';
    c->secret = mock_xstrdup(colon + 1);
    c->identity = mock_xmalloc(id_len + 7);
    snprintf(c->identity, id_len + 7, "oauth:%s", c->id);
    mock_data_uuid(c->installed_app_id, "installedapp", c->id, 0, 0);
    return true;
}

size_t mock_oauth_n_clients(void)
{
    return oauth_n_clients;
}

/* The index of the app called id, or -1. */
static long oauth_client_find(const char *id)
{
    for (size_t i = 0; i < oauth_n_clients; i++) {
        if (strcmp(oauth_clients[i].id, id) == 0)
            return (long)i;
    }
    return -1;
}

static unsigned oauth_bucket(const char *value)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % OAUTH_BUCKETS;
}

static struct oauth_grant *oauth_grant_find(const char *value)
{
    for (struct oauth_grant *g = oauth_buckets[oauth_bucket(value)]; g != NULL;
         g = g->bucket_next) {
        if (strcmp(g->value, value) == 0)
            return g;
    }
    return NULL;
}

/* A fresh random value shaped like the real API's tokens (a UUID), with a prefix that tells a
 * human reading a log which kind it is. Random, not derived: a token must not be guessable from
 * the client id, or a leak test could pass by accident. */
static char *oauth_random_value(const char *prefix)
{
    unsigned char r[16];
    size_t len = strlen(prefix) + MOCK_ID_LEN + 1;
    char *out = mock_xmalloc(len);

    if (RAND_bytes(r, sizeof(r)) != 1) {
        mock_log("fatal: RAND_bytes failed");
        abort();
    }
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    snprintf(out, len, "%s%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             prefix, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
             r[12], r[13], r[14], r[15]);
    return out;
}

/* Issues a new grant of kind for client. scope and redirect_uri are copied (either may be
 * NULL). The grant belongs to the table. */
static struct oauth_grant *oauth_grant_new(enum oauth_kind kind, size_t client, const char *scope,
                                           const char *redirect_uri)
{
    static const char *const prefixes[] = {
        [OAUTH_CODE] = "code-", [OAUTH_REFRESH] = "rt-", [OAUTH_ACCESS] = "at-"};
    struct oauth_grant *g = mock_xcalloc(1, sizeof(*g));
    unsigned b;

    g->kind = kind;
    g->state = OAUTH_LIVE;
    g->client = client;
    g->scope = mock_xstrdup(scope ? scope : OAUTH_DEFAULT_SCOPE);
    g->redirect_uri = redirect_uri ? mock_xstrdup(redirect_uri) : NULL;
    /* 122 random bits never collide in practice; the loop only keeps the table honest. */
    do {
        free(g->value);
        g->value = oauth_random_value(prefixes[kind]);
    } while (oauth_grant_find(g->value) != NULL);
    if (kind == OAUTH_ACCESS)
        g->expires_at = mock_limit_now() + (int64_t)mock_config.access_ttl_ms * 1000;
    b = oauth_bucket(g->value);
    g->bucket_next = oauth_buckets[b];
    oauth_buckets[b] = g;
    if (oauth_last != NULL)
        oauth_last->next = g;
    else
        oauth_first = g;
    oauth_last = g;
    return g;
}

static bool oauth_access_alive(const struct oauth_grant *g, int64_t now)
{
    return g->state == OAUTH_LIVE && now < g->expires_at;
}

enum mock_oauth_access mock_oauth_check_access(const char *token, const char **identity)
{
    struct oauth_grant *g;

    if (token == NULL)
        return MOCK_OAUTH_NOT_ISSUED;
    g = oauth_grant_find(token);
    if (g == NULL || g->kind != OAUTH_ACCESS)
        return MOCK_OAUTH_NOT_ISSUED;
    *identity = oauth_clients[g->client].identity;
    return oauth_access_alive(g, mock_limit_now()) ? MOCK_OAUTH_VALID : MOCK_OAUTH_DEAD;
}

/* ---- answers ------------------------------------------------------------------------------ */

/* Sends a JSON answer (token endpoint or authorize errors) with the headers the real one has:
 * token answers must never be cached. */
static void oauth_send(struct evhttp_request *req, int status, struct evbuffer *body)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);

    evhttp_add_header(headers, "Content-Type", "application/json;charset=UTF-8");
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_add_header(headers, "Pragma", "no-cache");
    evhttp_send_reply(req, status, NULL, body);
}

/* Answers an RFC 6749 error {"error":code,"error_description":description}. */
static void oauth_send_error(struct evhttp_request *req, int status, const char *code,
                             const char *description)
{
    struct evbuffer *body = mock_xevbuffer();

    if (strcmp(code, "invalid_grant") == 0)
        oauth_counters.invalid_grant++;
    if (status == 401)
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Basic realm=\"oauth\"");
    evbuffer_add_printf(body, "{\"error\":");
    mock_json_cstr(body, code);
    evbuffer_add_printf(body, ",\"error_description\":");
    mock_json_cstr(body, description);
    evbuffer_add(body, "}", 1);
    oauth_send(req, status, body);
    evbuffer_free(body);
}

/* Issues an access token and a refresh token for client and answers them as the real token
 * endpoint does. expires_in is whole seconds, rounded up, so a client that refreshes at
 * expires_in minus its margin is never late because of the rounding of a short test lifetime. */
static void oauth_send_tokens(struct evhttp_request *req, size_t client, const char *scope)
{
    struct oauth_grant *access = oauth_grant_new(OAUTH_ACCESS, client, scope, NULL);
    struct oauth_grant *refresh = oauth_grant_new(OAUTH_REFRESH, client, scope, NULL);
    struct evbuffer *body = mock_xevbuffer();

    evbuffer_add_printf(body, "{\"access_token\":");
    mock_json_cstr(body, access->value);
    evbuffer_add_printf(body, ",\"token_type\":\"bearer\",\"refresh_token\":");
    mock_json_cstr(body, refresh->value);
    evbuffer_add_printf(body,
                        ",\"expires_in\":%ld,\"scope\":", (mock_config.access_ttl_ms + 999) / 1000);
    mock_json_cstr(body, scope);
    evbuffer_add_printf(body, ",\"installed_app_id\":");
    mock_json_cstr(body, oauth_clients[client].installed_app_id);
    evbuffer_add_printf(body, ",\"access_tier\":0}");
    oauth_send(req, 200, body);
    evbuffer_free(body);
}

/* ---- the authorize page ------------------------------------------------------------------- */

/* Answers a short HTML page: what a browser would show for a refused authorization. */
static void oauth_send_page(struct evhttp_request *req, int status, const char *text)
{
    struct evbuffer *body = mock_xevbuffer();
    char *escaped = evhttp_htmlescape(text);

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/html; charset=utf-8");
    evbuffer_add_printf(body,
                        "<!DOCTYPE html><html><head><title>stmock authorize</title></head>"
                        "<body><h1>Authorization failed</h1><p>%s</p></body></html>\n",
                        escaped ? escaped : "");
    free(escaped);
    evhttp_send_reply(req, status, NULL, body);
    evbuffer_free(body);
}

/* GET /oauth/authorize: the user said yes. The redirect_uri is kept exactly as given (any
 * scheme, host and port, as a loopback redirect for a CLI needs), with code and state added to
 * whatever query it already has. */
static void oauth_authorize(struct evhttp_request *req)
{
    struct mock_query q;
    const char *client_id, *response_type, *redirect_uri, *scope, *state;
    struct oauth_grant *code;
    struct evbuffer *location, *body;
    long client;

    mock_query_parse(&q, evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req)));
    client_id = mock_query_get(&q, "client_id");
    response_type = mock_query_get(&q, "response_type");
    redirect_uri = mock_query_get(&q, "redirect_uri");
    scope = mock_query_get(&q, "scope");
    state = mock_query_get(&q, "state");
    client = client_id ? oauth_client_find(client_id) : -1;
    if (client < 0) {
        oauth_send_page(req, 400, "Unknown client_id: no OAuth app is registered under it.");
    } else if (response_type == NULL || strcmp(response_type, "code") != 0) {
        oauth_send_page(req, 400, "response_type must be code.");
    } else if (redirect_uri == NULL || *redirect_uri == '\0') {
        oauth_send_page(req, 400, "redirect_uri is required.");
    } else {
        code = oauth_grant_new(OAUTH_CODE, (size_t)client, scope && *scope ? scope : NULL,
                               redirect_uri);
        oauth_counters.authorizations++;
        location = mock_xevbuffer();
        evbuffer_add_printf(location, "%s%ccode=", redirect_uri,
                            strchr(redirect_uri, '?') ? '&' : '?');
        evbuffer_add(location, code->value, strlen(code->value));
        if (state != NULL) {
            char *enc = evhttp_encode_uri(state);

            evbuffer_add_printf(location, "&state=%s", enc ? enc : "");
            free(enc);
        }
        evbuffer_add(location, "", 1);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Location",
                          (const char *)evbuffer_pullup(location, -1));
        body = mock_xevbuffer();
        evbuffer_add_printf(body, "<!DOCTYPE html><html><body>Redirecting</body></html>\n");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/html; charset=utf-8");
        evhttp_send_reply(req, 302, "Found", body);
        evbuffer_free(body);
        evbuffer_free(location);
    }
    mock_query_free(&q);
}

/* ---- the token endpoint ------------------------------------------------------------------- */

/* Finds the app that Authorization: Basic base64(id:secret) names, with the right secret;
 * -1 when the header is missing, malformed or wrong. */
static long oauth_basic_client(struct evhttp_request *req)
{
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    unsigned char decoded[OAUTH_MAX_BASIC + 4];
    size_t in_len, pad = 0;
    char *colon;
    long client;
    int n;

    if (auth == NULL || strncasecmp(auth, "Basic ", 6) != 0)
        return -1;
    auth += 6;
    auth += strspn(auth, " ");
    in_len = strlen(auth);
    /* EVP_DecodeBlock wants whole quanta and counts the padding as zero bytes. */
    if (in_len == 0 || in_len % 4 != 0 || in_len / 4 * 3 > OAUTH_MAX_BASIC)
        return -1;
    n = EVP_DecodeBlock(decoded, (const unsigned char *)auth, (int)in_len);
    if (n < 0)
        return -1;
    pad = (auth[in_len - 1] == '=') + (auth[in_len - 2] == '=');
    n -= (int)pad;
    decoded[n] = '\0';
    if (memchr(decoded, '\0', (size_t)n) != NULL)
        return -1;
    colon = strchr((char *)decoded, ':');
    if (colon == NULL)
        return -1;
    *colon = '\0';
    client = oauth_client_find((char *)decoded);
    if (client < 0 || strcmp(oauth_clients[client].secret, colon + 1) != 0)
        return -1;
    return client;
}

/* grant_type=refresh_token: rotates. The token presented is dead from here on, whatever the
 * client does with the answer. */
static void oauth_grant_refresh(struct evhttp_request *req, size_t client,
                                const struct mock_query *form)
{
    const char *value = mock_query_get(form, "refresh_token");
    struct oauth_grant *g;

    if (value == NULL || *value == '\0') {
        oauth_send_error(req, 400, "invalid_request", "refresh_token is required");
        return;
    }
    g = oauth_grant_find(value);
    if (g != NULL && g->kind == OAUTH_REFRESH && g->client == client)
        g->uses++;
    if (g == NULL || g->kind != OAUTH_REFRESH || g->client != client || g->state != OAUTH_LIVE) {
        mock_log("token endpoint: invalid_grant for refresh token of %s (%s)",
                 oauth_clients[client].id,
                 g == NULL                                         ? "unknown"
                 : g->kind != OAUTH_REFRESH || g->client != client ? "not this app's"
                 : g->state == OAUTH_USED                          ? "already used"
                                                                   : "revoked");
        oauth_send_error(req, 400, "invalid_grant", "Invalid refresh token");
        return;
    }
    g->state = OAUTH_USED;
    oauth_counters.refreshes++;
    oauth_send_tokens(req, client, g->scope);
}

/* grant_type=authorization_code: a code is good once, for the app and redirect_uri it was
 * issued to. */
static void oauth_grant_code(struct evhttp_request *req, size_t client,
                             const struct mock_query *form)
{
    const char *value = mock_query_get(form, "code");
    const char *redirect_uri = mock_query_get(form, "redirect_uri");
    struct oauth_grant *g;

    if (value == NULL || *value == '\0' || redirect_uri == NULL) {
        oauth_send_error(req, 400, "invalid_request", "code and redirect_uri are required");
        return;
    }
    g = oauth_grant_find(value);
    if (g == NULL || g->kind != OAUTH_CODE || g->client != client || g->state != OAUTH_LIVE ||
        strcmp(g->redirect_uri, redirect_uri) != 0) {
        mock_log("token endpoint: invalid_grant for an authorization code of %s",
                 oauth_clients[client].id);
        oauth_send_error(req, 400, "invalid_grant", "Invalid authorization code");
        return;
    }
    g->state = OAUTH_USED;
    oauth_counters.code_exchanges++;
    oauth_send_tokens(req, client, g->scope);
}

/* Answers one token request: injected failure, then client authentication, then the grant. */
static void oauth_token(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    size_t len = evbuffer_get_length(in);
    const char *grant_type, *body_client;
    struct mock_query form;
    char *text;
    long client;

    if (mock_config.token_fail > 0) {
        mock_config.token_fail--;
        oauth_counters.failed++;
        oauth_send_error(req, 503, "temporarily_unavailable", "stmock: injected by token_fail");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        oauth_send_error(req, 405, "invalid_request", "The token endpoint takes POST");
        return;
    }
    client = oauth_basic_client(req);
    if (client < 0) {
        oauth_send_error(req, 401, "invalid_client",
                         "Bad client credentials (Authorization: Basic id:secret)");
        return;
    }
    if (ctype == NULL || strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0) {
        oauth_send_error(req, 400, "invalid_request",
                         "The body must be application/x-www-form-urlencoded");
        return;
    }
    text = mock_xmalloc(len + 1);
    if (len > 0)
        evbuffer_copyout(in, text, len);
    text[len] = '\0';
    if (memchr(text, '\0', len) != NULL) {
        free(text);
        oauth_send_error(req, 400, "invalid_request", "NUL byte in the body");
        return;
    }
    mock_query_parse(&form, text);
    free(text);
    grant_type = mock_query_get(&form, "grant_type");
    body_client = mock_query_get(&form, "client_id");
    if (body_client != NULL && strcmp(body_client, oauth_clients[client].id) != 0)
        oauth_send_error(req, 401, "invalid_client",
                         "client_id in the body differs from the authenticated client");
    else if (grant_type == NULL)
        oauth_send_error(req, 400, "invalid_request", "grant_type is required");
    else if (strcmp(grant_type, "refresh_token") == 0)
        oauth_grant_refresh(req, (size_t)client, &form);
    else if (strcmp(grant_type, "authorization_code") == 0)
        oauth_grant_code(req, (size_t)client, &form);
    else
        oauth_send_error(req, 400, "unsupported_grant_type",
                         "grant_type must be authorization_code or refresh_token");
    mock_query_free(&form);
}

/* True when req's client has closed its connection (or it is gone altogether). evhttp stops
 * reading once a request is in, so a close sits unread in the socket: peek at it. */
static bool oauth_client_gone(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    char byte;
    ssize_t n;

    if (fd < 0)
        return true;
    n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

static void oauth_pending_unlink(struct oauth_pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        oauth_pending_list = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
}

/* token_latency_ms is over: answer, unless the client left, in which case the request is dropped
 * without being looked at (see the file comment). */
static void oauth_pending_fire(evutil_socket_t fd, short what, void *arg)
{
    struct oauth_pending *p = arg;
    struct evhttp_request *req = p->req;

    (void)fd;
    (void)what;
    oauth_pending_unlink(p);
    free(p);
    if (!oauth_client_gone(req)) {
        oauth_token(req);
        return;
    }
    oauth_counters.abandoned++;
    mock_log("token endpoint: client left during token_latency_ms; request dropped unread");
    if (evhttp_request_get_connection(req) == NULL) {
        /* libevent detached it when the connection went: it is ours to free. */
        evhttp_request_free(req);
        return;
    }
    /* Still attached: an answer nobody reads makes evhttp close and free the connection. */
    oauth_send_error(req, 503, "temporarily_unavailable", "client gone");
}

/* Takes a token request over: answers it now, or after token_latency_ms. */
static void oauth_token_arrived(struct evhttp_request *req)
{
    long latency = mock_config.token_latency_ms;
    struct oauth_pending *p;
    struct timeval delay;

    oauth_counters.token_requests++;
    if (latency <= 0) {
        oauth_token(req);
        return;
    }
    p = mock_xcalloc(1, sizeof(*p));
    p->req = req;
    p->next = oauth_pending_list;
    if (oauth_pending_list != NULL)
        oauth_pending_list->prev = p;
    oauth_pending_list = p;
    delay.tv_sec = latency / 1000;
    delay.tv_usec = (latency % 1000) * 1000;
    /* A one-shot timer: libevent owns and frees the event itself. */
    if (event_base_once(oauth_base, -1, EV_TIMEOUT, oauth_pending_fire, p, &delay) != 0) {
        mock_log("cannot schedule a token_latency_ms timer; answering at once");
        oauth_pending_unlink(p);
        free(p);
        oauth_token(req);
    }
}

bool mock_oauth_handle(struct evhttp_request *req, const char *path)
{
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const char *rest = path;

    if (strncmp(rest, "/v1/", 4) == 0)
        rest += 3;
    if (strcmp(rest, "/oauth") != 0 && strncmp(rest, "/oauth/", 7) != 0)
        return false;
    /* Counted (total, by_path, last request) but not by token or status: these requests carry
     * no bearer token, and an invalid_client 401 is not an API 401. */
    mock_admin_note_request(req, NULL);
    if (strcmp(rest, "/oauth/token") == 0) {
        oauth_token_arrived(req);
    } else if (strcmp(rest, "/oauth/authorize") == 0) {
        if (method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD)
            oauth_authorize(req);
        else
            oauth_send_page(req, 405, "The authorize page takes GET.");
    } else {
        oauth_send_error(req, 404, "not_found", "stmock knows /oauth/authorize and /oauth/token");
    }
    return true;
}

/* ---- the admin side ----------------------------------------------------------------------- */

static const char *oauth_state_name(const struct oauth_grant *g, int64_t now)
{
    if (g->state == OAUTH_USED)
        return "used";
    if (g->state == OAUTH_REVOKED)
        return "revoked";
    if (g->kind == OAUTH_ACCESS && now >= g->expires_at)
        return "expired";
    return "live";
}

/* POST /oauth/issue?client_id=ID[&scope=S]: a fresh refresh token for that app, as if someone
 * had run the authorization already: {"refresh_token","client_id","scope"}. */
int mock_oauth_admin_issue(struct evhttp_request *req, struct evbuffer *out)
{
    struct mock_query q;
    const char *id, *scope;
    struct oauth_grant *g;
    long client;
    int status = 200;

    mock_query_parse(&q, evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req)));
    id = mock_query_get(&q, "client_id");
    scope = mock_query_get(&q, "scope");
    client = id ? oauth_client_find(id) : -1;
    if (client < 0) {
        evbuffer_add_printf(out, "{\"error\":\"unknown client_id (give it with --oauth-client "
                                 "ID:SECRET)\",\"client_id\":");
        mock_json_cstr(out, id);
        evbuffer_add(out, "}", 1);
        status = 400;
    } else {
        g = oauth_grant_new(OAUTH_REFRESH, (size_t)client, scope && *scope ? scope : NULL, NULL);
        evbuffer_add_printf(out, "{\"refresh_token\":");
        mock_json_cstr(out, g->value);
        evbuffer_add_printf(out, ",\"client_id\":");
        mock_json_cstr(out, oauth_clients[client].id);
        evbuffer_add_printf(out, ",\"scope\":");
        mock_json_cstr(out, g->scope);
        evbuffer_add(out, "}", 1);
    }
    mock_query_free(&q);
    return status;
}

/* POST /oauth/revoke: every live refresh token and access token dies ({"revoked":N}); with
 * ?refresh_token=X only that one (404 if the mock never issued it). */
int mock_oauth_admin_revoke(struct evhttp_request *req, struct evbuffer *out)
{
    struct mock_query q;
    const char *one;
    unsigned long long n = 0;
    int status = 200;

    mock_query_parse(&q, evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req)));
    one = mock_query_get(&q, "refresh_token");
    if (one != NULL) {
        struct oauth_grant *g = oauth_grant_find(one);

        if (g == NULL || g->kind != OAUTH_REFRESH) {
            evbuffer_add_printf(out, "{\"error\":\"no such refresh token\"}");
            status = 404;
        } else {
            n = g->state == OAUTH_LIVE;
            g->state = OAUTH_REVOKED;
        }
    } else {
        for (struct oauth_grant *g = oauth_first; g != NULL; g = g->next) {
            if (g->kind != OAUTH_CODE && g->state == OAUTH_LIVE) {
                g->state = OAUTH_REVOKED;
                n++;
            }
        }
    }
    if (status == 200) {
        evbuffer_add_printf(out, "{\"revoked\":%llu}", n);
        mock_log("oauth: revoked %llu token(s)", n);
    }
    mock_query_free(&q);
    return status;
}

/* POST /oauth/expire: every access token issued so far expires now (the API answers them 401);
 * refresh tokens stay good. {"expired":N} counts the ones that were still alive. */
int mock_oauth_admin_expire(struct evhttp_request *req, struct evbuffer *out)
{
    int64_t now = mock_limit_now();
    unsigned long long n = 0;

    (void)req;
    for (struct oauth_grant *g = oauth_first; g != NULL; g = g->next) {
        if (g->kind != OAUTH_ACCESS)
            continue;
        if (oauth_access_alive(g, now))
            n++;
        if (g->expires_at > now)
            g->expires_at = now;
    }
    evbuffer_add_printf(out, "{\"expired\":%llu}", n);
    mock_log("oauth: expired %llu access token(s)", n);
    return 200;
}

/* GET /oauth/tokens: everything issued, in issue order, for tests that look for leaks or check
 * which refresh token is the live one:
 * {"clients":[id,...],"codes":[G...],"refresh_tokens":[G...],"access_tokens":[G...]} where G is
 * {"token","client_id","state":"live|used|revoked|expired"} (refresh tokens add "uses"). */
int mock_oauth_admin_tokens(struct evhttp_request *req, struct evbuffer *out)
{
    static const char *const kinds[] = {[OAUTH_CODE] = "codes",
                                        [OAUTH_REFRESH] = "refresh_tokens",
                                        [OAUTH_ACCESS] = "access_tokens"};
    int64_t now = mock_limit_now();

    (void)req;
    evbuffer_add_printf(out, "{\"clients\":[");
    for (size_t i = 0; i < oauth_n_clients; i++) {
        if (i > 0)
            evbuffer_add(out, ",", 1);
        mock_json_cstr(out, oauth_clients[i].id);
    }
    evbuffer_add(out, "]", 1);
    for (int kind = OAUTH_CODE; kind <= OAUTH_ACCESS; kind++) {
        const char *sep = "";

        evbuffer_add_printf(out, ",\"%s\":[", kinds[kind]);
        for (struct oauth_grant *g = oauth_first; g != NULL; g = g->next) {
            if ((int)g->kind != kind)
                continue;
            evbuffer_add_printf(out, "%s{\"token\":", sep);
            mock_json_cstr(out, g->value);
            evbuffer_add_printf(out, ",\"client_id\":");
            mock_json_cstr(out, oauth_clients[g->client].id);
            evbuffer_add_printf(out, ",\"state\":\"%s\"", oauth_state_name(g, now));
            if (kind == OAUTH_REFRESH)
                evbuffer_add_printf(out, ",\"uses\":%llu", g->uses);
            evbuffer_add(out, "}", 1);
            sep = ",";
        }
        evbuffer_add(out, "]", 1);
    }
    evbuffer_add(out, "}", 1);
    return 200;
}

void mock_oauth_counters_json(struct evbuffer *out)
{
    const char *sep = "";

    evbuffer_add_printf(out,
                        "\"oauth\":{\"token_requests\":%llu,\"refreshes\":%llu,"
                        "\"code_exchanges\":%llu,\"invalid_grant\":%llu,\"authorizations\":%llu,"
                        "\"abandoned\":%llu,\"failed\":%llu,\"refreshes_by_token\":{",
                        oauth_counters.token_requests, oauth_counters.refreshes,
                        oauth_counters.code_exchanges, oauth_counters.invalid_grant,
                        oauth_counters.authorizations, oauth_counters.abandoned,
                        oauth_counters.failed);
    for (struct oauth_grant *g = oauth_first; g != NULL; g = g->next) {
        if (g->kind != OAUTH_REFRESH || g->uses == 0)
            continue;
        evbuffer_add_printf(out, "%s", sep);
        mock_json_cstr(out, g->value);
        evbuffer_add_printf(out, ":%llu", g->uses);
        sep = ",";
    }
    evbuffer_add(out, "}}", 2);
}

void mock_oauth_reset_counters(void)
{
    memset(&oauth_counters, 0, sizeof(oauth_counters));
    for (struct oauth_grant *g = oauth_first; g != NULL; g = g->next)
        g->uses = 0;
}

/* ---- start and end ------------------------------------------------------------------------ */

void mock_oauth_init(struct event_base *base)
{
    oauth_base = base;
}

void mock_oauth_shutdown(void)
{
    while (oauth_pending_list != NULL) {
        struct oauth_pending *p = oauth_pending_list;

        oauth_pending_list = p->next;
        /* As in mock_api_shutdown(): a detached request is ours, the others go with their
         * connections in evhttp_free(). */
        if (evhttp_request_get_connection(p->req) == NULL)
            evhttp_request_free(p->req);
        free(p);
    }
    while (oauth_first != NULL) {
        struct oauth_grant *g = oauth_first;

        oauth_first = g->next;
        free(g->value);
        free(g->scope);
        free(g->redirect_uri);
        free(g);
    }
    oauth_last = NULL;
    memset(oauth_buckets, 0, sizeof(oauth_buckets));
    for (size_t i = 0; i < oauth_n_clients; i++) {
        free(oauth_clients[i].id);
        free(oauth_clients[i].secret);
        free(oauth_clients[i].identity);
    }
    free(oauth_clients);
    oauth_clients = NULL;
    oauth_n_clients = 0;
}
