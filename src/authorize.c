/*
 * authorize.c: owns the `stproxy auth` session: its event loop, the
 * loopback redirect listener, standard input, and the code exchange. It
 * runs instead of the proxy and exits when the token is stored.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "authorize.h"
#include "config.h"
#include "log.h"
#include "mem.h"
#include "oauth.h"

#define SESSION_TIMEOUT_S 900 /* give the user 15 minutes */

/* Where the session is. */
enum auth_state {
    AUTH_WAITING_CODE, /* the user is authorising in the browser */
    AUTH_EXCHANGING,   /* the code is at the token endpoint */
    AUTH_DONE,         /* finished; the loop is exiting */
};

/* One `stproxy auth` session. */
struct auth_session {
    const struct config *cfg;
    struct event_base *base;
    enum auth_state state;
    char state_param[33]; /* CSRF guard echoed by the redirect */
    struct upstream_pool *pool;
    char *token_path;
    struct evhttp *http; /* the loopback redirect listener, or NULL */
    char *callback_path;
    struct event *stdin_ev;
    struct evbuffer *stdin_buf;
    struct event *timeout;
    int exit_status;
};

static void finish(struct auth_session *s, int status)
{
    s->state = AUTH_DONE;
    s->exit_status = status;
    event_base_loopexit(s->base, NULL);
}

static void exchange_done(enum upstream_result result, struct upstream_response *resp,
                          const char *detail, void *arg)
{
    struct auth_session *s = arg;
    struct oauth_answer ans;
    char err[300];

    if (result != UPSTREAM_OK) {
        fprintf(stderr, "stproxy auth: the token endpoint could not be reached: %s\n", detail);
        finish(s, 1);
        return;
    }
    if (!oauth_parse_answer((const char *)evbuffer_pullup(resp->body, -1),
                            evbuffer_get_length(resp->body), &ans) ||
        resp->status != 200 || ans.refresh_token == NULL) {
        fprintf(stderr, "stproxy auth: the token endpoint refused the code (%d%s%s)\n",
                resp->status, ans.error ? ": " : "", ans.error ? ans.error : "");
        oauth_answer_free(&ans);
        finish(s, 1);
        return;
    }
    if (!oauth_state_write(s->cfg->state_dir, s->cfg->oauth_client_id, ans.refresh_token, err,
                           sizeof(err))) {
        fprintf(stderr, "stproxy auth: cannot store the refresh token: %s\n", err);
        oauth_answer_free(&ans);
        finish(s, 1);
        return;
    }
    {
        char *path = oauth_state_path(s->cfg->state_dir, s->cfg->oauth_client_id);
        printf("stproxy auth: authorised. The refresh token is stored in %s (mode 0600).\n"
               "Start stproxy with the same state_dir and oauth_client_id; it keeps the token "
               "fresh from now on.\n",
               path);
        fflush(stdout);
        free(path);
    }
    oauth_answer_free(&ans);
    finish(s, 0);
}

static void exchange(struct auth_session *s, const char *code)
{
    char *c = evhttp_encode_uri(code), *r = evhttp_encode_uri(s->cfg->oauth_redirect_uri);
    char *id = evhttp_encode_uri(s->cfg->oauth_client_id);
    size_t len = strlen(c) + strlen(r) + strlen(id) + 80;
    char *form = xmalloc(len);

    if (s->state != AUTH_WAITING_CODE)
        goto done;
    s->state = AUTH_EXCHANGING;
    printf("stproxy auth: exchanging the code at the token endpoint...\n");
    fflush(stdout);
    snprintf(form, len, "grant_type=authorization_code&code=%s&redirect_uri=%s&client_id=%s", c, r,
             id);
    oauth_post_form(s->pool, s->token_path, s->cfg->oauth_client_id, s->cfg->oauth_client_secret,
                    form, exchange_done, s);
done:
    OPENSSL_cleanse(form, len);
    free(form);
    free(c);
    free(r);
    free(id);
}

/* Takes "code", or a redirected URL holding code= (and state=). */
static void take_input(struct auth_session *s, const char *line)
{
    const char *q = strchr(line, '?');
    struct evkeyvalq params;

    if (q == NULL && strstr(line, "code=") == NULL) {
        if (line[0] != '\0')
            exchange(s, line);
        return;
    }
    TAILQ_INIT(&params);
    if (evhttp_parse_query_str(q ? q + 1 : line, &params) == 0) {
        const char *code = evhttp_find_header(&params, "code");
        const char *st = evhttp_find_header(&params, "state");
        if (st != NULL && strcmp(st, s->state_param) != 0)
            fprintf(stderr, "stproxy auth: that URL is from another authorisation (state does "
                            "not match); ignoring it\n");
        else if (code != NULL)
            exchange(s, code);
        else
            fprintf(stderr, "stproxy auth: no code= in what was pasted\n");
    }
    evhttp_clear_headers(&params);
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
    struct auth_session *s = arg;
    char *line;
    int n = evbuffer_read(s->stdin_buf, fd, 4096);
    (void)what;

    while ((line = evbuffer_readln(s->stdin_buf, NULL, EVBUFFER_EOL_ANY)) != NULL) {
        char *p = line, *end;
        while (isspace((unsigned char)*p))
            p++;
        end = p + strlen(p);
        while (end > p && isspace((unsigned char)end[-1]))
            *--end = '\0';
        take_input(s, p);
        free(line);
    }
    if (n <= 0)
        event_del(s->stdin_ev); /* end of input: the browser may still come */
}

static void callback_cb(struct evhttp_request *req, void *arg)
{
    struct auth_session *s = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq params;
    const char *code = NULL, *st = NULL, *error = NULL;

    TAILQ_INIT(&params);
    if (path == NULL || strcmp(path, s->callback_path) != 0) {
        evhttp_send_error(req, 404, NULL);
        evbuffer_free(body);
        return;
    }
    if (query != NULL && evhttp_parse_query_str(query, &params) == 0) {
        code = evhttp_find_header(&params, "code");
        st = evhttp_find_header(&params, "state");
        error = evhttp_find_header(&params, "error");
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/html; charset=utf-8");
    if (error != NULL || code == NULL || st == NULL || strcmp(st, s->state_param) != 0) {
        evbuffer_add_printf(body, "<h1>stproxy: authorisation failed</h1><p>Go back to the "
                                  "terminal.</p>\n");
        evhttp_send_reply(req, 400, "Bad Request", body);
        fprintf(stderr, "stproxy auth: the redirect carried %s\n",
                error ? "an error" : "no code or a wrong state");
    } else {
        evbuffer_add_printf(body, "<h1>stproxy is authorised</h1><p>You can close this tab; "
                                  "the terminal says what happens next.</p>\n");
        evhttp_send_reply(req, 200, "OK", body);
        exchange(s, code);
    }
    evhttp_clear_headers(&params);
    evbuffer_free(body);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fprintf(stderr, "stproxy auth: no code arrived within %d minutes\n", SESSION_TIMEOUT_S / 60);
    finish(arg, 1);
}

/* Listens on the redirect URI when it points at this machine. */
static bool listen_for_redirect(struct auth_session *s)
{
    struct evhttp_uri *uri = evhttp_uri_parse(s->cfg->oauth_redirect_uri);
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    int port = uri ? evhttp_uri_get_port(uri) : -1;
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    bool ok = false;

    if (host != NULL && (strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0 ||
                         strcmp(host, "::1") == 0)) {
        s->http = evhttp_new(s->base);
        s->callback_path = xstrdup(path && *path ? path : "/");
        evhttp_set_gencb(s->http, callback_cb, s);
        if (evhttp_bind_socket(s->http, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host,
                               (ev_uint16_t)(port > 0 ? port : 80)) == 0) {
            printf("stproxy auth: waiting for the browser's redirect on %s\n",
                   s->cfg->oauth_redirect_uri);
            ok = true;
        } else {
            fprintf(stderr, "stproxy auth: cannot listen on %s:%d; paste the code instead\n", host,
                    port);
        }
    }
    if (uri != NULL)
        evhttp_uri_free(uri);
    return ok;
}

static char *authorize_url(const struct config *cfg, const char *state)
{
    struct evbuffer *out = evbuffer_new();
    char *id = evhttp_encode_uri(cfg->oauth_client_id);
    char *redirect = evhttp_encode_uri(cfg->oauth_redirect_uri);
    char *scope = evhttp_encode_uri(cfg->oauth_scope);
    char *url;
    size_t len;

    if (cfg->oauth_authorize_url != NULL) {
        evbuffer_add_printf(out, "%s", cfg->oauth_authorize_url);
    } else {
        /* The API's authorize page sits beside its token endpoint. */
        struct evhttp_uri *uri = evhttp_uri_parse(cfg->oauth_token_url);
        int port = evhttp_uri_get_port(uri);
        evbuffer_add_printf(out, "https://%s", evhttp_uri_get_host(uri));
        if (port > 0 && port != 443)
            evbuffer_add_printf(out, ":%d", port);
        evbuffer_add_printf(out, "/v1/oauth/authorize");
        evhttp_uri_free(uri);
    }
    evbuffer_add_printf(out, "?client_id=%s&response_type=code&redirect_uri=%s&scope=%s&state=%s",
                        id, redirect, scope, state);
    len = evbuffer_get_length(out);
    url = xmalloc(len + 1);
    evbuffer_remove(out, url, len);
    url[len] = '\0';
    evbuffer_free(out);
    free(id);
    free(redirect);
    free(scope);
    return url;
}

int authorize_run(const struct config *cfg, SSL_CTX *tls)
{
    struct auth_session s;
    unsigned char rnd[16];
    struct timeval tv = {SESSION_TIMEOUT_S, 0};
    char *url;

    if (cfg->oauth_client_id == NULL || cfg->oauth_client_secret == NULL) {
        fprintf(stderr, "stproxy auth: set oauth_client_id and oauth_client_secret first (see "
                        "README, OAuth2)\n");
        return 1;
    }
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.base = event_base_new();
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return 1;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(s.state_param + 2 * i, 3, "%02x", rnd[i]);
    s.pool = oauth_token_pool(s.base, cfg->oauth_token_url, tls, &s.token_path);
    if (s.pool == NULL) {
        fprintf(stderr, "stproxy auth: oauth_token_url cannot be used\n");
        event_base_free(s.base);
        return 1;
    }
    url = authorize_url(cfg, s.state_param);
    printf("stproxy auth: open this URL in a browser, sign in, and approve the app:\n\n%s\n\n",
           url);
    free(url);
    listen_for_redirect(&s);
    printf("stproxy auth: or paste the code (or the whole URL the browser was sent to) here.\n");
    fflush(stdout);
    s.stdin_buf = evbuffer_new();
    s.stdin_ev = event_new(s.base, STDIN_FILENO, EV_READ | EV_PERSIST, stdin_cb, &s);
    event_add(s.stdin_ev, NULL);
    s.timeout = evtimer_new(s.base, timeout_cb, &s);
    evtimer_add(s.timeout, &tv);
    s.exit_status = 1;
    event_base_dispatch(s.base);

    upstream_pool_free(s.pool);
    if (s.http != NULL)
        evhttp_free(s.http);
    event_free(s.stdin_ev);
    event_free(s.timeout);
    evbuffer_free(s.stdin_buf);
    free(s.callback_path);
    free(s.token_path);
    event_base_free(s.base);
    return s.exit_status;
}
