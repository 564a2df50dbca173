/*
 * config.c: owns the option table and turns a config file and the
 * environment into a struct config. Precedence: built-in default, then the
 * file given with -c, then STPROXY_<NAME> in the environment. Every error
 * names the setting, where it came from (file and line, or the environment
 * variable) and why it was refused, and stops start-up.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/http.h>
#include <ini.h>

#include "config.h"
#include "credential.h"
#include "mem.h"

#define OPT(n, t, field, d, reload, secret, doc)                                                   \
    {                                                                                              \
        n, t, offsetof(struct config, field), d, reload, secret, doc                               \
    }

/* The one option table. Keep conf/stproxy.conf and README.md in step with it
 * (tests/unit/test_config.c fails when a key is missing from either). */
static const struct option_def options[] = {
    OPT("listen", OPT_ADDR, listen, "127.0.0.1:8080", false, false, "client listener host:port"),
    OPT("admin_listen", OPT_ADDR, admin_listen, "127.0.0.1:9090", false, false,
        "admin listener (health, metrics) host:port; keep it on loopback"),
    OPT("upstream", OPT_ORIGIN, upstream, "https://api.smartthings.com", false, false,
        "upstream origin; TLS verification is always on"),
    OPT("upstream_ca", OPT_PATH, upstream_ca, NULL, false, false,
        "CA bundle that verifies the upstream (default: the system store)"),
    OPT("token", OPT_STRING, token, NULL, false, true,
        "shared upstream credential; set = shared mode"),
    OPT("token_file", OPT_PATH, token_file, NULL, false, false,
        "file holding the shared credential (Docker secrets)"),
    OPT("client_keys", OPT_CLIENT_KEYS, client_keys, NULL, true, true,
        "name:key,name:key local keys that map to the shared credential"),
    OPT("oauth_client_id", OPT_STRING, oauth_client_id, NULL, false, false,
        "OAuth2 app id; set = the shared credential is an OAuth2 one the proxy refreshes"),
    OPT("oauth_client_secret", OPT_STRING, oauth_client_secret, NULL, false, true,
        "OAuth2 app secret"),
    OPT("oauth_refresh_token", OPT_STRING, oauth_refresh_token, NULL, false, true,
        "initial refresh token (from `stproxy auth`); one stored in state_dir wins"),
    OPT("oauth_token_url", OPT_URL, oauth_token_url, "https://api.smartthings.com/oauth/token",
        false, false, "token endpoint (refresh and code exchange)"),
    OPT("oauth_authorize_url", OPT_URL, oauth_authorize_url, NULL, false, false,
        "authorize page for `stproxy auth` (default: /v1/oauth/authorize on the token origin)"),
    OPT("oauth_redirect_uri", OPT_URL, oauth_redirect_uri, "http://127.0.0.1:8765/callback", false,
        false, "redirect URI registered with the app; `stproxy auth` listens there"),
    OPT("oauth_scope", OPT_STRING, oauth_scope,
        "r:devices:* x:devices:* r:locations:* r:scenes:* x:scenes:*", false, false,
        "scopes `stproxy auth` asks for"),
    OPT("state_dir", OPT_STRING, state_dir, "./state", false, false,
        "where durable state (the rotated OAuth2 refresh token) is kept"),
    OPT("log_level", OPT_LOG_LEVEL, log_level, "info", true, false, "error, warn, info or debug"),
    OPT("max_connections", OPT_COUNT, max_connections, "1024", false, false,
        "client connections open at once; at the limit a new one replaces the connection idle "
        "longest, or waits to be accepted"),
    OPT("max_header_size", OPT_SIZE, max_header_size, "16k", false, false,
        "largest request line plus headers a client may send"),
    OPT("max_body_size", OPT_SIZE, max_body_size, "1m", false, false,
        "largest request body a client may send"),
    OPT("client_timeout", OPT_DURATION, client_timeout_ms, "60s", false, false,
        "a client connection idle or stalled this long, or whose request is not whole this long "
        "after its first byte, is closed"),
    OPT("upstream_connections", OPT_COUNT, upstream_connections, "16", false, false,
        "keep-alive TLS connections to the upstream at most"),
    OPT("upstream_connect_timeout", OPT_DURATION, upstream_connect_timeout_ms, "5s", false, false,
        "TCP connect plus TLS handshake to the upstream"),
    OPT("upstream_timeout", OPT_DURATION, upstream_timeout_ms, "8s", false, false,
        "whole upstream answer after the request is sent; then 504"),
    OPT("upstream_max_body_size", OPT_SIZE, upstream_max_body_size, "16m", false, false,
        "largest upstream answer body; larger gives 502"),
    OPT("redis", OPT_REDIS_URL, redis, NULL, false, true,
        "redis://[:password@]host:port[/db] or unix:/path; unset = embedded cache only"),
    OPT("redis_timeout", OPT_DURATION, redis_timeout_ms, "500ms", false, false,
        "a Redis command or connect taking longer counts as a Redis failure"),
    OPT("budget", OPT_BUDGET, budget, "250/60s", true, false,
        "upstream requests per credential: at most N in any window W (N/W)"),
    OPT("device_budget", OPT_BUDGET, device_budget, "12/60s", true, false,
        "per device, for status reads and (separately) for commands: N/W"),
    OPT("queue_timeout", OPT_DURATION, queue_timeout_ms, "5s", true, false,
        "longest a request waits for budget before a 429"),
    OPT("queue_max", OPT_COUNT, queue_max, "1000", true, false,
        "requests waiting for budget at most; beyond, 429 at once"),
    OPT("cache_max_bytes", OPT_SIZE, cache_max_bytes, "64m", false, false,
        "memory bound of the embedded cache (least recently used entries go first)"),
    OPT("cache_not_found", OPT_DURATION0, cache_not_found_ms, "10s", true, false,
        "how long a 404 answer is cached; 0 = never"),
#define POLICY(cls, name, def, doc)                                                                \
    OPT("cache_" name, OPT_POLICY, policies[ROUTE_##cls], def, true, false, doc)
    POLICY(DEVICES, "devices", "30s,300s", "device lists: FRESH,STALE"),
    POLICY(DEVICE, "device", "300s,3600s", "device descriptions: FRESH,STALE"),
    POLICY(DEVICE_STATUS, "device_status", "5s,30s", "full device status: FRESH,STALE"),
    POLICY(COMPONENT_STATUS, "component_status", "5s,30s", "one component's status"),
    POLICY(CAPABILITY_STATUS, "capability_status", "5s,30s", "one capability's status"),
    POLICY(DEVICE_HEALTH, "device_health", "30s,120s", "device health (online/offline)"),
    POLICY(LOCATIONS, "locations", "300s,3600s", "locations"),
    POLICY(ROOMS, "rooms", "300s,3600s", "rooms"),
    POLICY(MODES, "modes", "10s,60s", "location modes, including the current mode"),
    POLICY(SCENES, "scenes", "300s,3600s", "scene lists"),
    POLICY(CAPABILITIES, "capabilities", "3600s,86400s", "capability definitions"),
    POLICY(PRESENTATION, "presentation", "3600s,86400s", "presentation definitions"),
#undef POLICY
};

#define OPTION_COUNT (sizeof(options) / sizeof(options[0]))

_Static_assert(OPTION_COUNT <= sizeof(((struct config *)0)->sources) / sizeof(char *),
               "struct config.sources is too small for the option table");

const struct option_def *config_options(size_t *count)
{
    *count = OPTION_COUNT;
    return options;
}

void config_init(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        xfree(cfg->sources[i]);
        enum option_type t = options[i].type;
        if (t == OPT_STRING || t == OPT_PATH || t == OPT_ADDR || t == OPT_ORIGIN ||
            t == OPT_CLIENT_KEYS || t == OPT_REDIS_URL || t == OPT_URL) {
            char **slot = (char **)((char *)cfg + options[i].offset);
            if (options[i].secret && *slot != NULL)
                memset(*slot, 0, strlen(*slot));
            xfree(*slot);
        }
    }
}

bool config_parse_hostport(const char *text, char **host, int *port)
{
    const char *colon;
    char *end;
    long p;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':' || close == text + 1)
            return false;
        *host = xstrndup(text + 1, (size_t)(close - text - 1));
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL || colon == text || memchr(text, ':', (size_t)(colon - text)))
            return false;
        *host = xstrndup(text, (size_t)(colon - text));
    }
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || p < 0 || p > 65535) {
        xfree(*host);
        return false;
    }
    *port = (int)p;
    return true;
}

bool config_parse_origin(const char *text, char **host, int *port)
{
    static const char scheme[] = "https://";
    const char *authority = text + sizeof(scheme) - 1;
    size_t len;
    char *copy;
    bool ok;

    if (strncasecmp(text, scheme, sizeof(scheme) - 1) != 0)
        return false;
    len = strlen(authority);
    if (len > 0 && authority[len - 1] == '/')
        len--;
    if (len == 0 || memchr(authority, '/', len) || memchr(authority, '@', len) ||
        memchr(authority, '?', len) || memchr(authority, '#', len))
        return false;
    copy = xstrndup(authority, len);
    if (strchr(copy, ']') != NULL || strchr(copy, ':') != NULL) {
        if (copy[0] == '[' && copy[len - 1] == ']') {
            /* bracketed IPv6 without a port */
            *host = xstrndup(copy + 1, len - 2);
            *port = 443;
            ok = true;
        } else {
            ok = config_parse_hostport(copy, host, port) && *port > 0;
        }
    } else {
        *host = xstrdup(copy);
        *port = 443;
        ok = true;
    }
    free(copy);
    return ok;
}

void config_redis_address_free(struct redis_address *addr)
{
    free(addr->host);
    free(addr->path);
    if (addr->password != NULL)
        memset(addr->password, 0, strlen(addr->password));
    free(addr->password);
    memset(addr, 0, sizeof(*addr));
}

bool config_parse_redis(const char *text, struct redis_address *out)
{
    const char *p, *at, *slash;
    char *hostport;
    bool ok;

    memset(out, 0, sizeof(*out));
    if (strncmp(text, "unix:", 5) == 0) {
        if (text[5] != '/')
            return false;
        out->path = xstrdup(text + 5);
        return true;
    }
    if (strncmp(text, "redis://", 8) != 0)
        return false;
    p = text + 8;
    slash = strchr(p, '/');
    at = strchr(p, '@');
    if (at != NULL && (slash == NULL || at < slash)) {
        /* userinfo: ":password" or "user:password" (the user is ignored) */
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL || colon + 1 == at)
            return false;
        out->password = xstrndup(colon + 1, (size_t)(at - colon - 1));
        p = at + 1;
    }
    slash = strchr(p, '/');
    hostport = slash ? xstrndup(p, (size_t)(slash - p)) : xstrdup(p);
    ok = config_parse_hostport(hostport, &out->host, &out->port) && out->host[0] != '\0' &&
         out->port > 0;
    free(hostport);
    if (ok && slash != NULL && slash[1] != '\0') {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        ok = *end == '\0' && db >= 0 && db < 1000 && isdigit((unsigned char)slash[1]);
        out->db = (int)db;
    }
    if (!ok)
        config_redis_address_free(out);
    return ok;
}

/* Parses "<n>[k|m|g]" into bytes. */
static bool parse_size(const char *text, long *out)
{
    char *end;
    long long v, mult = 1;

    errno = 0;
    v = strtoll(text, &end, 10);
    if (end == text || errno != 0 || v <= 0)
        return false;
    switch (tolower((unsigned char)*end)) {
    case '\0':
        break;
    case 'k':
        mult = 1024;
        end++;
        break;
    case 'm':
        mult = 1024 * 1024;
        end++;
        break;
    case 'g':
        mult = 1024LL * 1024 * 1024;
        end++;
        break;
    default:
        return false;
    }
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end != '\0' || v > LONG_MAX / mult)
        return false;
    *out = (long)(v * mult);
    return true;
}

/* Parses "<n>ms", "<n>s", "<n>m" or a bare number of seconds into ms. */
static bool parse_duration(const char *text, long *out, bool zero_ok)
{
    char *end;
    long long v, mult;

    errno = 0;
    v = strtoll(text, &end, 10);
    if (end == text || errno != 0 || v < 0 || (v == 0 && !zero_ok) ||
        !isdigit((unsigned char)*text))
        return false;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else
        return false;
    if (v > LONG_MAX / mult)
        return false;
    *out = (long)(v * mult);
    return true;
}

bool config_parse_duration(const char *text, long *ms)
{
    return parse_duration(text, ms, false);
}

/* Sets one option from text. On failure writes the reason into err. */
static bool option_set(struct config *cfg, const struct option_def *opt, const char *value,
                       char *err, size_t errlen)
{
    void *slot = (char *)cfg + opt->offset;
    char *host = NULL;
    int port;
    char *end;
    long n;

    switch (opt->type) {
    case OPT_STRING:
    case OPT_PATH:
        if (value[0] == '\0') {
            snprintf(err, errlen, "empty value");
            return false;
        }
        break;
    case OPT_ADDR:
        if (!config_parse_hostport(value, &host, &port) || host[0] == '\0') {
            free(host);
            snprintf(err, errlen, "invalid address \"%s\" (expected host:port)", value);
            return false;
        }
        free(host);
        break;
    case OPT_ORIGIN:
        if (!config_parse_origin(value, &host, &port) || host[0] == '\0') {
            free(host);
            snprintf(err, errlen, "invalid origin \"%s\" (expected https://host[:port])", value);
            return false;
        }
        free(host);
        break;
    case OPT_COUNT:
        errno = 0;
        n = strtol(value, &end, 10);
        if (end == value || *end != '\0' || errno != 0 || n <= 0 || n > INT_MAX) {
            snprintf(err, errlen, "invalid count \"%s\" (expected a positive integer)", value);
            return false;
        }
        *(long *)slot = n;
        return true;
    case OPT_SIZE:
        if (!parse_size(value, (long *)slot)) {
            snprintf(err, errlen, "invalid size \"%s\" (expected bytes, e.g. 16k or 1m)", value);
            return false;
        }
        return true;
    case OPT_DURATION:
    case OPT_DURATION0:
        if (!parse_duration(value, (long *)slot, opt->type == OPT_DURATION0)) {
            snprintf(err, errlen, "invalid duration \"%s\" (expected e.g. 500ms, 8s or 2m)", value);
            return false;
        }
        return true;
    case OPT_POLICY: {
        struct cache_policy *p = slot;
        char fresh[64];
        const char *comma = strchr(value, ',');
        size_t flen = comma ? (size_t)(comma - value) : strlen(value);
        if (flen >= sizeof(fresh))
            flen = sizeof(fresh) - 1;
        memcpy(fresh, value, flen);
        fresh[flen] = '\0';
        if (!parse_duration(fresh, &p->fresh_ms, true) ||
            (comma != NULL && !parse_duration(comma + 1, &p->stale_ms, true))) {
            snprintf(err, errlen,
                     "invalid policy \"%s\" (expected FRESH[,STALE] durations, e.g. 5s,30s; 0 = "
                     "not cached)",
                     value);
            return false;
        }
        if (comma == NULL)
            p->stale_ms = 0;
        if (p->fresh_ms == 0)
            p->stale_ms = 0;
        return true;
    }
    case OPT_URL: {
        struct evhttp_uri *uri = evhttp_uri_parse(value);
        const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
        bool ok = scheme != NULL && evhttp_uri_get_host(uri) != NULL &&
                  (strcmp(scheme, "https") == 0 ||
                   (opt->offset == offsetof(struct config, oauth_redirect_uri) &&
                    strcmp(scheme, "http") == 0));
        if (uri != NULL)
            evhttp_uri_free(uri);
        if (!ok) {
            snprintf(err, errlen, "invalid URL \"%s\" (expected https://host[:port]/path)", value);
            return false;
        }
        break;
    }
    case OPT_BUDGET:
        if (!budget_parse(value, (struct budget *)slot)) {
            snprintf(err, errlen,
                     "invalid budget \"%s\" (expected N/WINDOW, e.g. 250/60s, N from 1)", value);
            return false;
        }
        return true;
    case OPT_REDIS_URL: {
        struct redis_address addr;
        if (!config_parse_redis(value, &addr)) {
            /* The value may hold a password: never echo it. */
            snprintf(err, errlen,
                     "invalid Redis address (expected redis://[:password@]host:port[/db] or "
                     "unix:/path)");
            return false;
        }
        config_redis_address_free(&addr);
        break;
    }
    case OPT_LOG_LEVEL:
        if (!log_level_parse(value, (enum log_level *)slot)) {
            snprintf(err, errlen, "invalid level \"%s\" (expected error, warn, info or debug)",
                     value);
            return false;
        }
        return true;
    case OPT_CLIENT_KEYS:
        if (!credential_keys_valid(value, err, errlen))
            return false;
        break;
    }
    free(*(char **)slot);
    *(char **)slot = xstrdup(value);
    return true;
}

/* Records where opt was set ("FILE:LINE" or "environment STPROXY_X"). */
static void note_source(struct config *cfg, const struct option_def *opt, const char *where)
{
    size_t i = (size_t)(opt - options);
    free(cfg->sources[i]);
    cfg->sources[i] = xstrdup(where);
}

/* "FILE:LINE: " or "environment STPROXY_X: " for the option named name, or
 * "" when it has its default; for messages about settings that disagree. */
static const char *source_of(const struct config *cfg, const char *name, char *buf, size_t len)
{
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (strcmp(options[i].name, name) == 0 && cfg->sources[i] != NULL) {
            snprintf(buf, len, "%s: ", cfg->sources[i]);
            return buf;
        }
    }
    return "";
}

static const struct option_def *option_find(const char *name)
{
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

/* State of one file parse: inih calls our reader per line, so we count lines. */
struct file_parse {
    struct config *cfg;
    FILE *fp;
    const char *path;
    int line;    /* line last read */
    bool failed; /* an error was recorded in err */
    char *err;
    size_t errlen;
};

static char *file_reader(char *buf, int size, void *stream)
{
    struct file_parse *fp = stream;
    char *r = fgets(buf, size, fp->fp);
    if (r != NULL)
        fp->line++;
    return r;
}

static int file_handler(void *user, const char *section, const char *name, const char *value)
{
    struct file_parse *fp = user;
    const struct option_def *opt;
    char reason[256];

    if (fp->failed)
        return 0;
    if (section[0] != '\0') {
        snprintf(fp->err, fp->errlen, "%s:%d: [%s]: sections are not used", fp->path, fp->line,
                 section);
        fp->failed = true;
        return 0;
    }
    opt = option_find(name);
    if (opt == NULL) {
        snprintf(fp->err, fp->errlen, "%s:%d: %s: unknown setting", fp->path, fp->line, name);
        fp->failed = true;
        return 0;
    }
    if (!option_set(fp->cfg, opt, value, reason, sizeof(reason))) {
        snprintf(fp->err, fp->errlen, "%s:%d: %s: %s", fp->path, fp->line, name, reason);
        fp->failed = true;
        return 0;
    }
    snprintf(reason, sizeof(reason), "%s:%d", fp->path, fp->line);
    note_source(fp->cfg, opt, reason);
    return 1;
}

static bool load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct file_parse fp = {.cfg = cfg, .path = path, .err = err, .errlen = errlen};
    int rc;

    fp.fp = fopen(path, "r");
    if (fp.fp == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return false;
    }
    rc = ini_parse_stream(file_reader, &fp, file_handler, &fp);
    fclose(fp.fp);
    if (fp.failed)
        return false;
    if (rc != 0) {
        snprintf(err, errlen, "%s:%d: syntax error (expected key = value)", path, rc);
        return false;
    }
    return true;
}

void config_env_name(const char *name, char *out, size_t outlen)
{
    size_t i, n = (size_t)snprintf(out, outlen, "STPROXY_");
    for (i = 0; name[i] != '\0' && n + 1 < outlen; i++)
        out[n++] = (char)toupper((unsigned char)name[i]);
    out[n] = '\0';
}

static bool load_environment(struct config *cfg, char *err, size_t errlen)
{
    char env[64], reason[256];
    extern char **environ;

    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const char *value;
        config_env_name(options[i].name, env, sizeof(env));
        value = getenv(env);
        if (value == NULL)
            continue;
        if (!option_set(cfg, &options[i], value, reason, sizeof(reason))) {
            snprintf(err, errlen, "environment %s: %s", env, reason);
            return false;
        }
        snprintf(reason, sizeof(reason), "environment %s", env);
        note_source(cfg, &options[i], reason);
    }
    /* A misspelt variable would otherwise be ignored silently. */
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        bool known = false;
        if (strncmp(*e, "STPROXY_", 8) != 0 || eq == NULL)
            continue;
        for (size_t i = 0; i < OPTION_COUNT && !known; i++) {
            config_env_name(options[i].name, env, sizeof(env));
            known = strlen(env) == (size_t)(eq - *e) && strncmp(env, *e, (size_t)(eq - *e)) == 0;
        }
        if (!known)
            log_warn("config: ignoring unknown environment variable %.*s", (int)(eq - *e), *e);
    }
    return true;
}

/* Reads the token file into cfg->token, trimming the trailing newline that
 * `echo tok > file` and most secret stores add. */
static bool load_token_file(struct config *cfg, char *err, size_t errlen)
{
    char buf[8192];
    size_t n;
    FILE *f = fopen(cfg->token_file, "r");

    if (f == NULL) {
        char where[1100];
        snprintf(err, errlen, "%stoken_file: cannot open %s: %s",
                 source_of(cfg, "token_file", where, sizeof(where)), cfg->token_file,
                 strerror(errno));
        return false;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    buf[n] = '\0';
    if (n == 0 || strpbrk(buf, " \t\r\n") != NULL) {
        memset(buf, 0, sizeof(buf));
        char where[1100];
        snprintf(err, errlen, "%stoken_file: %s must hold one token on one line",
                 source_of(cfg, "token_file", where, sizeof(where)), cfg->token_file);
        return false;
    }
    cfg->token = xstrdup(buf);
    memset(buf, 0, sizeof(buf));
    return true;
}

/* Checks that settings agree with each other. Messages start with where the
 * setting that is refused was made. */
static bool config_check(struct config *cfg, char *err, size_t errlen)
{
    char where[1100];

    if (cfg->token != NULL && cfg->token_file != NULL) {
        snprintf(err, errlen, "%stoken_file: set token or token_file, not both",
                 source_of(cfg, "token_file", where, sizeof(where)));
        return false;
    }
    if (cfg->token_file != NULL && !load_token_file(cfg, err, errlen))
        return false;
    if (cfg->token != NULL) {
        for (const char *t = cfg->token; *t != '\0'; t++) {
            if (*t <= ' ' || *t >= 0x7f) {
                /* Never echo the token itself. */
                snprintf(err, errlen, "%stoken: holds a blank or control character",
                         source_of(cfg, "token", where, sizeof(where)));
                return false;
            }
        }
    }
    if (cfg->oauth_client_id != NULL && cfg->token != NULL) {
        snprintf(err, errlen, "%soauth_client_id: set an OAuth2 credential or a token, not both",
                 source_of(cfg, "oauth_client_id", where, sizeof(where)));
        return false;
    }
    if (cfg->oauth_client_id != NULL && cfg->oauth_client_secret == NULL) {
        snprintf(err, errlen, "%soauth_client_id: oauth_client_secret is needed too",
                 source_of(cfg, "oauth_client_id", where, sizeof(where)));
        return false;
    }
    if (cfg->oauth_client_id != NULL && cfg->client_keys == NULL) {
        snprintf(err, errlen,
                 "%soauth_client_id: an OAuth2 credential is configured but client_keys is not; "
                 "clients could not use it",
                 source_of(cfg, "oauth_client_id", where, sizeof(where)));
        return false;
    }
    if (cfg->token != NULL && cfg->client_keys == NULL) {
        snprintf(err, errlen,
                 "%s%s: a shared credential is configured but client_keys is not; clients "
                 "could not use it",
                 source_of(cfg, cfg->token_file ? "token_file" : "token", where, sizeof(where)),
                 cfg->token_file ? "token_file" : "token");
        return false;
    }
    if (cfg->token == NULL && cfg->oauth_client_id == NULL && cfg->client_keys != NULL) {
        snprintf(err, errlen,
                 "%sclient_keys: set, but no shared credential (token, token_file or "
                 "oauth_client_id) for them to map to",
                 source_of(cfg, "client_keys", where, sizeof(where)));
        return false;
    }
    if (cfg->upstream_ca != NULL && access(cfg->upstream_ca, R_OK) != 0) {
        snprintf(err, errlen, "%supstream_ca: cannot read %s: %s",
                 source_of(cfg, "upstream_ca", where, sizeof(where)), cfg->upstream_ca,
                 strerror(errno));
        return false;
    }
    if (cfg->upstream_timeout_ms >= 10000)
        log_warn("config: upstream_timeout is %ld ms: common clients give up after 10 s",
                 cfg->upstream_timeout_ms);
    return true;
}

/* Bytes of the value an option of type t holds; 0 for strings (char *). */
static size_t value_size(enum option_type t)
{
    switch (t) {
    case OPT_COUNT:
    case OPT_SIZE:
    case OPT_DURATION:
    case OPT_DURATION0:
        return sizeof(long);
    case OPT_LOG_LEVEL:
        return sizeof(enum log_level);
    case OPT_POLICY:
        return sizeof(struct cache_policy);
    case OPT_BUDGET:
        return sizeof(struct budget);
    case OPT_STRING:
    case OPT_PATH:
    case OPT_ADDR:
    case OPT_ORIGIN:
    case OPT_CLIENT_KEYS:
    case OPT_REDIS_URL:
    case OPT_URL:
        break;
    }
    return 0;
}

void config_apply_reloadable(struct config *live, const struct config *fresh, char *fixed,
                             size_t fixedlen)
{
    size_t used = 0;

    fixed[0] = '\0';
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const struct option_def *opt = &options[i];
        void *to = (char *)live + opt->offset;
        const void *from = (const char *)fresh + opt->offset;
        size_t size = value_size(opt->type);
        bool same;

        if (size > 0) {
            same = memcmp(to, from, size) == 0;
        } else {
            const char *a = *(char *const *)to, *b = *(const char *const *)from;
            same = (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
        }
        if (same)
            continue;
        if (!opt->reloadable) {
            used += (size_t)snprintf(fixed + used, used < fixedlen ? fixedlen - used : 0, "%s%s",
                                     used ? ", " : "", opt->name);
            continue;
        }
        if (size > 0) {
            memcpy(to, from, size);
        } else {
            char **slot = to;
            const char *b = *(const char *const *)from;
            if (*slot != NULL && opt->secret)
                memset(*slot, 0, strlen(*slot));
            free(*slot);
            *slot = b ? xstrdup(b) : NULL;
        }
    }
}

bool config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    char reason[256];

    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (options[i].def == NULL)
            continue;
        if (!option_set(cfg, &options[i], options[i].def, reason, sizeof(reason))) {
            snprintf(err, errlen, "default of %s: %s", options[i].name, reason);
            return false;
        }
    }
    if (path != NULL && !load_file(cfg, path, err, errlen))
        return false;
    if (!load_environment(cfg, err, errlen))
        return false;
    return config_check(cfg, err, errlen);
}
