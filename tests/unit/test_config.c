/*
 * test_config.c: the option table, the file parser, the environment
 * override, the error messages, and that conf/stproxy.conf and README.md
 * document every key of the table.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long len;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    buf = calloc(1, (size_t)len + 1);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len)
        len = 0;
    fclose(f);
    return buf;
}

static char *write_temp(const char *text)
{
    static char path[64];
    int fd;

    snprintf(path, sizeof(path), "/tmp/stproxy-test-XXXXXX");
    fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        abort();
    close(fd);
    return path;
}

/* Loads text as a config file; returns whether it loaded, err filled. */
static bool load_text(const char *text, struct config *cfg, char *err, size_t errlen)
{
    char *path = write_temp(text);
    bool ok;
    config_init(cfg);
    ok = config_load(cfg, path, err, errlen);
    unlink(path);
    return ok;
}

static void expect_error(const char *text, const char *want, const char *name)
{
    struct config cfg;
    char err[512] = "";
    bool ok = load_text(text, &cfg, err, sizeof(err));

    if (!tap_ok(!ok && strstr(err, want) != NULL, name))
        printf("# error was: %s\n# expected it to contain: %s\n", err, want);
    config_free(&cfg);
}

static void check_documented(void)
{
    const char *top = getenv("top_srcdir");
    char path[1024], needle[128];
    size_t n;
    const struct option_def *opts = config_options(&n);
    char *sample, *readme;

    snprintf(path, sizeof(path), "%s/conf/stproxy.conf", top ? top : ".");
    sample = slurp(path);
    snprintf(path, sizeof(path), "%s/README.md", top ? top : ".");
    readme = slurp(path);
    tap_ok(sample != NULL, "conf/stproxy.conf is readable");
    tap_ok(readme != NULL, "README.md is readable");
    for (size_t i = 0; i < n; i++) {
        char env[64], name[160];
        config_env_name(opts[i].name, env, sizeof(env));
        /* the sample holds "key = value" or a commented "# key = value" */
        snprintf(needle, sizeof(needle), "\n%s = ", opts[i].name);
        snprintf(name, sizeof(name), "conf/stproxy.conf documents %s", opts[i].name);
        {
            char commented[140];
            snprintf(commented, sizeof(commented), "\n# %s = ", opts[i].name);
            tap_ok(sample && (strstr(sample, needle) || strstr(sample, commented)), name);
        }
        snprintf(name, sizeof(name), "README.md documents %s", env);
        snprintf(needle, sizeof(needle), "`%s`", env);
        tap_ok(readme && strstr(readme, needle), name);
    }
    free(sample);
    free(readme);
}

int main(void)
{
    struct config cfg;
    char err[512];

    /* defaults are the contract's */
    config_init(&cfg);
    tap_ok(config_load(&cfg, NULL, err, sizeof(err)), "defaults load");
    tap_is_str(cfg.listen, "127.0.0.1:8080", "default listen");
    tap_is_str(cfg.admin_listen, "127.0.0.1:9090", "admin listens on loopback by default");
    tap_is_str(cfg.upstream, "https://api.smartthings.com", "default upstream");
    tap_ok(cfg.upstream_ca == NULL, "system trust store by default");
    tap_ok(cfg.token == NULL, "pass-through by default");
    tap_is_int(cfg.log_level, LOG_INFO, "default log level");
    tap_ok(cfg.upstream_timeout_ms < 10000, "upstream timeout below common clients' 10 s");
    config_free(&cfg);

    /* file values, units, comments */
    tap_ok(load_text("# comment\nlisten = 127.0.0.1:18080\n; other comment\n"
                     "upstream_timeout = 2500ms\nmax_body_size = 64k\nclient_timeout = 2m\n"
                     "upstream = https://localhost:4443/\nlog_level = debug\n",
                     &cfg, err, sizeof(err)),
           "a valid file loads");
    tap_is_str(cfg.listen, "127.0.0.1:18080", "listen from file");
    tap_is_int(cfg.upstream_timeout_ms, 2500, "duration in ms");
    tap_is_int(cfg.max_body_size, 65536, "size in k");
    tap_is_int(cfg.client_timeout_ms, 120000, "duration in minutes");
    tap_is_int(cfg.log_level, LOG_DEBUG, "log level from file");
    config_free(&cfg);

    /* the environment overrides the file */
    setenv("STPROXY_LISTEN", "127.0.0.1:28080", 1);
    tap_ok(load_text("listen = 127.0.0.1:18080\n", &cfg, err, sizeof(err)), "file + env load");
    tap_is_str(cfg.listen, "127.0.0.1:28080", "environment wins over the file");
    config_free(&cfg);
    setenv("STPROXY_LISTEN", "nonsense", 1);
    config_init(&cfg);
    tap_ok(!config_load(&cfg, NULL, err, sizeof(err)) &&
               strstr(err, "environment STPROXY_LISTEN") != NULL,
           "a bad environment value names the variable");
    config_free(&cfg);
    unsetenv("STPROXY_LISTEN");

    /* errors name the file, the line, the key and the reason */
    expect_error("listen = 127.0.0.1:8080\n\nlisten = 127.0.0.1\n", ":3: listen: invalid address",
                 "bad address: line 3 and the key");
    expect_error("# x\nbogus_key = 1\n", ":2: bogus_key: unknown setting", "unknown key");
    expect_error("upstream = http://api.smartthings.com\n", "upstream: invalid origin",
                 "plain http upstream refused");
    expect_error("upstream = https://api.smartthings.com/v1\n", "upstream: invalid origin",
                 "upstream with a path refused");
    expect_error("upstream_timeout = soon\n", "upstream_timeout: invalid duration", "bad duration");
    expect_error("max_connections = -4\n", "max_connections: invalid count", "bad count");
    expect_error("max_header_size = 12q\n", "max_header_size: invalid size", "bad size");
    expect_error("log_level = loud\n", "log_level: invalid level", "bad level");
    expect_error("[section]\nlisten = 127.0.0.1:1\n", "[section]: sections are not used",
                 "sections refused");
    expect_error("this line has no equals sign\n", ":1: syntax error", "syntax error line");
    expect_error("# shared\ntoken = abc\n",
                 ":2: token: a shared credential is configured but "
                 "client_keys is not",
                 "shared token without client keys, with its line");
    expect_error("\n\nclient_keys = ha:k1\n", ":3: client_keys: set, but no shared credential",
                 "client keys without a token, with its line");
    expect_error("token = abc\ntoken_file = /etc/hostname\nclient_keys = a:b\n", "not both",
                 "token and token_file together");
    expect_error("token_file = /nonexistent/token\nclient_keys = a:b\n",
                 "token_file: cannot open /nonexistent/token", "missing token file");
    expect_error("upstream_ca = /nonexistent/ca.pem\n", "upstream_ca: cannot read",
                 "missing CA file");
    expect_error("token = abc\nclient_keys = ha:secretkey1,ha:secretkey2\n",
                 "client name \"ha\" appears twice", "duplicate client names");
    expect_error("token = abc\nclient_keys = ha:samekey,nr:samekey\n", "have the same key",
                 "duplicate keys");
    expect_error("token = abc\nclient_keys = ha\n", "name:key", "key missing");
    {
        struct config c2;
        char e2[512] = "";
        bool ok =
            load_text("token = abc\nclient_keys = ha:sup3rsecret,nr:x y\n", &c2, e2, sizeof(e2));
        tap_ok(!ok && strstr(e2, "sup3rsecret") == NULL && strstr(e2, "x y") == NULL,
               "a key never appears in an error message");
        config_free(&c2);
    }

    /* a token file is read and trimmed */
    {
        char *tokpath = write_temp("file-token-123\n");
        char text[256];
        snprintf(text, sizeof(text), "token_file = %s\nclient_keys = ha:k1\n", tokpath);
        tap_ok(load_text(text, &cfg, err, sizeof(err)), "token_file loads");
        tap_is_str(cfg.token, "file-token-123", "token read from the file, newline trimmed");
        config_free(&cfg);
        unlink(tokpath);
    }

    check_documented();
    return tap_done();
}
