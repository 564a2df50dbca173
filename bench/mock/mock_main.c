/*
 * mock_main.c: stmock's process. Owns the command line (one option table), the TLS context,
 * both listeners and their evhttp objects, the signal events, the "stmock ready" line and the
 * orderly shutdown; also the log and allocation helpers every other file uses.
 *
 * Start-up order, as main() reads: options -> world (mock_data) -> TLS -> event base ->
 * listeners -> signals -> ready line -> loop; shutdown undoes it in reverse.
 */
#include "mock.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>

/* Hundreds of clients may connect at once at benchmark start; 128 would drop SYNs. */
#define MAIN_LISTEN_BACKLOG 1024
/* Idle keep-alive connections are closed after this many seconds. */
#define MAIN_HTTP_TIMEOUT 120
#define MAIN_MAX_BODY     (1024 * 1024)

/* The parsed command line. */
struct main_options {
    const char *listen;       /* HOST:PORT of the TLS API */
    const char *admin_listen; /* HOST:PORT of the plain-HTTP admin port */
    const char *cert;
    const char *key;
    const char *origin; /* NULL: https:// + Host */
    const char *tokens; /* comma list, NULL: any non-empty token */
    const char *ready_file;
    long devices;
    long latency_ms;
};

/* How an option's value is read. */
enum main_option_type {
    OPTION_TEXT,   /* kept as given */
    OPTION_NUMBER, /* decimal integer between min and max */
    OPTION_ADD,    /* repeatable: each value goes to add(), which may refuse it */
};

/* One command-line option: --name VALUE or --name=VALUE. */
struct main_option {
    const char *name;
    enum main_option_type type;
    bool required;
    size_t offset; /* of the field in struct main_options */
    long min, max;
    bool (*add)(const char *value); /* OPTION_ADD only */
    const char *doc;
};

#define MAIN_OPT(field) offsetof(struct main_options, field)

static const struct main_option main_option_table[] = {
    {"listen", OPTION_TEXT, true, MAIN_OPT(listen), 0, 0, NULL,
     "HOST:PORT of the TLS API (port 0: any)"},
    {"admin-listen", OPTION_TEXT, true, MAIN_OPT(admin_listen), 0, 0, NULL,
     "HOST:PORT of the plain-HTTP admin port (port 0: any)"},
    {"cert", OPTION_TEXT, true, MAIN_OPT(cert), 0, 0, NULL, "server certificate chain, PEM"},
    {"key", OPTION_TEXT, true, MAIN_OPT(key), 0, 0, NULL, "server private key, PEM"},
    {"origin", OPTION_TEXT, false, MAIN_OPT(origin), 0, 0, NULL,
     "origin of absolute _links hrefs (default: https:// + Host header)"},
    {"devices", OPTION_NUMBER, false, MAIN_OPT(devices), 0, 1000000, NULL,
     "devices per token (default 5)"},
    {"tokens", OPTION_TEXT, false, MAIN_OPT(tokens), 0, 0, NULL,
     "comma list of accepted bearer tokens (default: any non-empty token); access tokens "
     "of the OAuth token endpoint are always judged by it"},
    {"latency-ms", OPTION_NUMBER, false, MAIN_OPT(latency_ms), 0, 3600 * 1000, NULL,
     "milliseconds added before every API answer (default 0)"},
    {"ready-file", OPTION_TEXT, false, MAIN_OPT(ready_file), 0, 0, NULL,
     "also write the ready line to this file (atomically)"},
    {"oauth-client", OPTION_ADD, false, 0, 0, 0, mock_oauth_add_client,
     "ID:SECRET of an OAuth app for /oauth/authorize and /oauth/token (repeatable)"},
};

#define MAIN_N_OPTIONS (sizeof(main_option_table) / sizeof(main_option_table[0]))

/* One bound listener: what the ready line reports. */
struct main_listener {
    char host[256]; /* as given on the command line, brackets kept */
    unsigned port;  /* the bound port, also when 0 was asked for */
};

/* ---- helpers for every file ---------------------------------------------------------------- */

void mock_log(const char *fmt, ...)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;

    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "%s stmock: ", stamp);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A mock that cannot allocate cannot answer honestly: stop loudly rather than limp on. */
static void *main_check_alloc(void *p)
{
    if (p == NULL) {
        mock_log("fatal: out of memory");
        abort();
    }
    return p;
}

void *mock_xmalloc(size_t size)
{
    return main_check_alloc(malloc(size ? size : 1));
}

void *mock_xcalloc(size_t n, size_t size)
{
    return main_check_alloc(calloc(n ? n : 1, size ? size : 1));
}

void *mock_xrealloc(void *ptr, size_t size)
{
    return main_check_alloc(realloc(ptr, size ? size : 1));
}

char *mock_xstrdup(const char *s)
{
    return main_check_alloc(strdup(s));
}

struct evbuffer *mock_xevbuffer(void)
{
    return main_check_alloc(evbuffer_new());
}

/* ---- command line ------------------------------------------------------------------------- */

static void main_usage(FILE *to)
{
    fprintf(to, "usage: stmock --listen HOST:PORT --admin-listen HOST:PORT --cert CERT.pem "
                "--key KEY.pem\n"
                "              [--origin URL] [--devices N] [--tokens TOK1,TOK2,...] "
                "[--latency-ms N]\n"
                "              [--ready-file PATH] [--oauth-client ID:SECRET]...\n\n");
    for (size_t i = 0; i < MAIN_N_OPTIONS; i++)
        fprintf(to, "  --%-14s %s%s\n", main_option_table[i].name, main_option_table[i].doc,
                main_option_table[i].required ? " (required)" : "");
}

/* Fills opts from argv through main_option_table; false (after logging why) on any error. */
static MOCK_MUSTCHECK bool main_parse_options(int argc, char **argv, struct main_options *opts)
{
    bool seen[MAIN_N_OPTIONS] = {false};

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const struct main_option *opt = NULL;
        const char *eq, *value;
        size_t name_len;
        size_t k;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            main_usage(stdout);
            exit(0);
        }
        if (strncmp(arg, "--", 2) != 0) {
            mock_log("unexpected argument '%s'", arg);
            return false;
        }
        arg += 2;
        eq = strchr(arg, '=');
        name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        for (k = 0; k < MAIN_N_OPTIONS; k++) {
            if (strlen(main_option_table[k].name) == name_len &&
                strncmp(main_option_table[k].name, arg, name_len) == 0)
                break;
        }
        if (k == MAIN_N_OPTIONS) {
            mock_log("unknown option '%s'", argv[i]);
            return false;
        }
        opt = &main_option_table[k];
        if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            mock_log("option --%s needs a value", opt->name);
            return false;
        }
        seen[k] = true;
        if (opt->type == OPTION_TEXT) {
            *(const char **)((char *)opts + opt->offset) = value;
        } else if (opt->type == OPTION_ADD) {
            if (!opt->add(value))
                return false;
        } else {
            if (!mock_query_long(value, opt->min, opt->max, (long *)((char *)opts + opt->offset))) {
                mock_log("option --%s wants a number from %ld to %ld, not '%s'", opt->name,
                         opt->min, opt->max, value);
                return false;
            }
        }
    }
    for (size_t k = 0; k < MAIN_N_OPTIONS; k++) {
        if (main_option_table[k].required && !seen[k]) {
            mock_log("option --%s is required", main_option_table[k].name);
            return false;
        }
    }
    return true;
}

/* Splits the --tokens list in place into *tokens (an array the caller frees). */
static size_t main_split_tokens(char *list, char ***tokens)
{
    size_t n = 0;
    char *save = NULL;

    *tokens = mock_xcalloc(strlen(list) / 2 + 1, sizeof(**tokens));
    for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
        (*tokens)[n++] = t;
    return n;
}

/* ---- TLS ----------------------------------------------------------------------------------- */

static void main_log_ssl_errors(const char *what)
{
    unsigned long e;
    char buf[256];

    mock_log("%s", what);
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        mock_log("  %s", buf);
    }
}

/* One context for every connection: the certificate is parsed once, each connection gets only
 * its own SSL. TLS 1.2 is the floor, as on the real API. */
static SSL_CTX *main_tls_context(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        main_log_ssl_errors("cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Idle connections hold no read/write buffers: hundreds may sit in a keep-alive pool. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        main_log_ssl_errors("cannot load the certificate or key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* evhttp asks for a bufferevent per accepted connection: a fresh SSL from the shared context,
 * in accepting state; evhttp sets the socket. The bufferevent owns the SSL (CLOSE_ON_FREE). */
static struct bufferevent *main_tls_bufferevent(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(arg);
    struct bufferevent *bev;

    /* Returning NULL would make evhttp serve plain HTTP on the TLS port: die instead. */
    if (ssl == NULL) {
        main_log_ssl_errors("fatal: SSL_new failed");
        abort();
    }
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        mock_log("fatal: cannot create a TLS bufferevent");
        abort();
    }
    /* Clients that close without close_notify are normal; do not report them as errors. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* ---- listeners ----------------------------------------------------------------------------- */

/* Parses HOST:PORT (HOST may be [v6]) and binds http to it. */
static MOCK_MUSTCHECK bool main_listen(struct event_base *base, struct evhttp *http,
                                       const char *spec, struct main_listener *out)
{
    const char *colon = strrchr(spec, ':');
    char lookup[256], port_text[8];
    struct addrinfo hints = {0}, *res = NULL;
    struct evconnlistener *listener = NULL;
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof(bound);
    size_t host_len;
    long port;
    int rc;

    if (colon == NULL || (host_len = (size_t)(colon - spec)) >= sizeof(out->host)) {
        mock_log("'%s' is not HOST:PORT", spec);
        return false;
    }
    if (!mock_query_long(colon + 1, 0, 65535, &port)) {
        mock_log("bad port in '%s'", spec);
        return false;
    }
    memcpy(out->host, spec, host_len);
    out->host[host_len] = '\0';
    snprintf(lookup, sizeof(lookup), "%s", out->host);
    if (host_len >= 2 && lookup[0] == '[' && lookup[host_len - 1] == ']') {
        memmove(lookup, lookup + 1, host_len - 2);
        lookup[host_len - 2] = '\0';
    }
    snprintf(port_text, sizeof(port_text), "%ld", port);

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    rc = getaddrinfo(lookup[0] ? lookup : NULL, port_text, &hints, &res);
    if (rc != 0) {
        mock_log("cannot resolve '%s': %s", lookup, gai_strerror(rc));
        return false;
    }
    /* Bind one address only (two would get two different ephemeral ports); prefer IPv4 so
     * "localhost" means 127.0.0.1, which is what test clients usually dial. */
    for (int pass = 0; pass < 2 && listener == NULL; pass++) {
        for (struct addrinfo *ai = res; ai != NULL && listener == NULL; ai = ai->ai_next) {
            if ((pass == 0) != (ai->ai_family == AF_INET))
                continue;
            /* REUSEABLE: a test that restarts the mock on a fixed port must not wait out
             * TIME_WAIT; CLOSE_ON_EXEC: children of a test harness must not hold our port. */
            listener = evconnlistener_new_bind(
                base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                MAIN_LISTEN_BACKLOG, ai->ai_addr, (int)ai->ai_addrlen);
        }
    }
    freeaddrinfo(res);
    if (listener == NULL) {
        mock_log("cannot listen on '%s': %s", spec, strerror(errno));
        return false;
    }
    /* Accepted sockets inherit TCP_NODELAY (Linux): the real API does not hold the end of an
     * answer for the client's delayed ACK, which here cost 40 ms per answer on a reused
     * connection (the TLS records of headers and body go out in separate writes). */
    {
        int one = 1;
        setsockopt(evconnlistener_get_fd(listener), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (evhttp_bind_listener(http, listener) == NULL) {
        mock_log("cannot attach the listener on '%s'", spec);
        evconnlistener_free(listener);
        return false;
    }
    if (getsockname(evconnlistener_get_fd(listener), (struct sockaddr *)&bound, &bound_len) != 0) {
        mock_log("getsockname failed for '%s': %s", spec, strerror(errno));
        return false;
    }
    out->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    return true;
}

static struct evhttp *main_http(struct event_base *base,
                                void (*cb)(struct evhttp_request *, void *))
{
    struct evhttp *http = evhttp_new(base);

    if (http == NULL) {
        mock_log("fatal: evhttp_new failed");
        abort();
    }
    /* Accept every method so a wrong one reaches our router and gets a JSON 405. */
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_PATCH);
    /* The timeout covers idle keep-alive connections and slow sends, not our own latency:
     * a parked request is not being read or written. */
    evhttp_set_timeout(http, MAIN_HTTP_TIMEOUT);
    evhttp_set_max_body_size(http, MAIN_MAX_BODY);
    evhttp_set_gencb(http, cb, NULL);
    return http;
}

/* Writes the ready line to path atomically, so a waiting test never reads half of it. */
static MOCK_MUSTCHECK bool main_write_ready_file(const char *path, const char *line)
{
    size_t len = strlen(path) + 5;
    char *tmp = mock_xmalloc(len);
    FILE *f;
    bool ok;

    snprintf(tmp, len, "%s.tmp", path);
    f = fopen(tmp, "w");
    ok = f != NULL && fputs(line, f) >= 0;
    if (f != NULL && fclose(f) != 0)
        ok = false;
    if (ok && rename(tmp, path) != 0)
        ok = false;
    if (!ok)
        mock_log("cannot write ready file '%s': %s", path, strerror(errno));
    free(tmp);
    return ok;
}

/* ---- signals and main() -------------------------------------------------------------------- */

/* SIGTERM/SIGINT: leave the loop; main() then frees everything and exits 0, which is what the
 * tests' fixtures check (and what keeps valgrind runs clean). */
static void main_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    mock_log("signal %d: shutting down", (int)sig);
    event_base_loopbreak(arg);
}

/* Lets a benchmark hold more connections than the default soft limit of 1024 descriptors. */
static void main_raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            mock_log("cannot raise the descriptor limit: %s", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    struct main_options opts = {.devices = 5, .latency_ms = 0};
    struct main_listener api_at, admin_at;
    struct evhttp *api_http = NULL, *admin_http = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    struct event_base *base = NULL;
    SSL_CTX *tls = NULL;
    char *token_list = NULL, *origin = NULL;
    char **tokens = NULL;
    size_t n_tokens = 0;
    char ready[600];
    int status = 1;

    if (!main_parse_options(argc, argv, &opts)) {
        main_usage(stderr);
        mock_oauth_shutdown(); /* apps registered before the bad option */
        return 2;
    }
    /* OpenSSL writes with write(2): a client gone mid-answer must be an error, not a kill. */
    signal(SIGPIPE, SIG_IGN);
    main_raise_fd_limit();
    if (opts.tokens != NULL) {
        token_list = mock_xstrdup(opts.tokens);
        n_tokens = main_split_tokens(token_list, &tokens);
    }
    if (opts.origin != NULL) {
        /* Links are origin + path, so a trailing slash would double up. */
        origin = mock_xstrdup(opts.origin);
        for (size_t len = strlen(origin); len > 0 && origin[len - 1] == '/'; len--)
            origin[len - 1] = '\0';
    }
    mock_config.latency_ms = opts.latency_ms;
    mock_data_init((size_t)opts.devices);
    mock_limit_init();

    tls = main_tls_context(opts.cert, opts.key);
    if (tls == NULL)
        goto done;
    base = event_base_new();
    if (base == NULL) {
        mock_log("cannot create the event base");
        goto done;
    }
    mock_api_init(base, origin, tokens, n_tokens);
    mock_fault_init(base);
    mock_oauth_init(base);

    api_http = main_http(base, mock_api_handle);
    evhttp_set_bevcb(api_http, main_tls_bufferevent, tls);
    admin_http = main_http(base, mock_admin_handle);
    if (!main_listen(base, api_http, opts.listen, &api_at) ||
        !main_listen(base, admin_http, opts.admin_listen, &admin_at))
        goto done;

    sigterm = evsignal_new(base, SIGTERM, main_on_signal, base);
    sigint = evsignal_new(base, SIGINT, main_on_signal, base);
    if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        mock_log("cannot install signal handlers");
        goto done;
    }

    snprintf(ready, sizeof(ready), "stmock ready api=%s:%u admin=%s:%u\n", api_at.host, api_at.port,
             admin_at.host, admin_at.port);
    /* The file first: whoever saw the stdout line can then rely on the file too. */
    if (opts.ready_file != NULL && !main_write_ready_file(opts.ready_file, ready))
        goto done;
    fputs(ready, stdout);
    fflush(stdout);
    mock_log("%zu devices per token, %s, latency %ld ms, %zu OAuth app(s)", (size_t)opts.devices,
             n_tokens ? "fixed tokens" : "any token", mock_config.latency_ms,
             mock_oauth_n_clients());

    if (event_base_dispatch(base) < 0) {
        mock_log("event loop failed");
        goto done;
    }
    status = 0;
done:
    mock_api_shutdown();
    mock_fault_shutdown();
    mock_oauth_shutdown();
    if (api_http != NULL)
        evhttp_free(api_http);
    if (admin_http != NULL)
        evhttp_free(admin_http);
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    mock_admin_shutdown();
    mock_limit_shutdown();
    mock_data_shutdown();
    if (base != NULL)
        event_base_free(base);
    if (tls != NULL)
        SSL_CTX_free(tls);
    free(tokens);
    free(token_list);
    free(origin);
    return status;
}
