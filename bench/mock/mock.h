/*
 * mock.h: the declarations shared by the parts of stmock, the mock SmartThings API that the
 * integration tests and the benchmarks start as a fake https://api.smartthings.com.
 *
 * Where a request goes (one file per concern):
 *   mock_main.c     options, TLS context, listeners, signals, start-up and shutdown, log and
 *                   allocation helpers
 *   mock_api.c      the TLS API port: bearer auth, routing, query parsing, pagination links,
 *                   error bodies, the added latency
 *   mock_command.c  parses POST /devices/{id}/commands bodies (the only jsmn user) and applies
 *                   them to device state
 *   mock_data.c     the deterministic per-token world (devices, locations, rooms, scenes, modes),
 *                   the mutable device state, and the JSON rendering of all of it
 *   mock_admin.c    the plain-HTTP admin port: counters, the last request, run-time config
 *   mock_fault.c    injected faults (fail_mode): error statuses, resets, hangs, garbage, and the
 *                   connections and requests they hold
 *   mock_limit.c    rate limits (per token and per device, fixed windows), injected 429s, the
 *                   X-RateLimit-* headers and the real 429 body, and the window records /counters
 *                   reports
 *   mock_query.c    query-string parsing shared by both ports (decoded values, raw text)
 *   mock_json.c     JSON string escaping used by everything that writes JSON
 *   mock_oauth.c    the OAuth2 apps, the authorize page and token endpoint on the API port, the
 *                   codes and tokens they issue (rotation, expiry, revocation), and the admin
 *                   endpoints and counters that steer and show them
 */
#ifndef STMOCK_MOCK_H
#define STMOCK_MOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#define MOCK_MUSTCHECK __attribute__((warn_unused_result))

/* A UUID-shaped id is 36 characters; a "2025-01-01T00:00:00.000Z" timestamp is 24. */
#define MOCK_ID_LEN 36
#define MOCK_TS_LEN 24

/* The shape of every token's world. The tests count on these numbers; change them here only. */
#define MOCK_LOCATIONS 2 /* locations per token */
#define MOCK_ROOMS     2 /* rooms per location */
#define MOCK_SCENES    2 /* scenes per location */
#define MOCK_MODES     3 /* modes per location (Home, Away, Night) */

/* ---- mock_main.c: process-wide helpers ------------------------------------------------ */

/* Logs one line to stderr with a time stamp. */
void mock_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Allocation failure is fatal (the process logs and aborts), so callers never check. */
void *mock_xmalloc(size_t size);
void *mock_xcalloc(size_t n, size_t size);
void *mock_xrealloc(void *ptr, size_t size);
char *mock_xstrdup(const char *s);
struct evbuffer *mock_xevbuffer(void);

/* ---- mock_json.c ---------------------------------------------------------------------- */

/* Appends s (len bytes, need not be NUL-terminated) as a quoted JSON string. Control characters
 * are escaped; bytes that are not valid UTF-8 are written as \u00XX (read as Latin-1). */
void mock_json_string(struct evbuffer *out, const char *s, size_t len);
/* The same for a NUL-terminated string; NULL becomes null. */
void mock_json_cstr(struct evbuffer *out, const char *s);

/* ---- mock_query.c: query strings ----------------------------------------------------------- */

/* One query parameter: decoded for matching, raw for copying into pagination links. */
struct mock_param {
    char *key;       /* decoded */
    char *value;     /* decoded; "" when the parameter has no '=' */
    const char *raw; /* "key=value" exactly as received, NUL-terminated inside mock_query.text */
};

/* A query string split into parameters in the order received. Owned by whoever parsed it. */
struct mock_query {
    char *text; /* a copy of the raw query with each '&' replaced by NUL */
    struct mock_param *params;
    size_t n;
};

/* The values of one query key: repeated keys and comma-joined values both land here, so
 * capability=a&capability=b and capability=a,b read the same. Owned by whoever built it. */
struct mock_values {
    char **v;
    size_t n;
};

/* Parses query (may be NULL) into q; free with mock_query_free(). */
void mock_query_parse(struct mock_query *q, const char *query);
void mock_query_free(struct mock_query *q);
/* The first value of key, or NULL. Borrowed from q. */
const char *mock_query_get(const struct mock_query *q, const char *key);
/* Collects every value of key, split at commas; free with mock_query_values_free(). */
void mock_query_values(struct mock_values *vals, const struct mock_query *q, const char *key);
bool mock_query_values_contain(const struct mock_values *vals, const char *s);
void mock_query_values_free(struct mock_values *vals);
/* Reads s as a whole decimal integer in [min, max]. */
bool mock_query_long(const char *s, long min, long max, long *out) MOCK_MUSTCHECK;

/* ---- mock_data.c: the per-token world --------------------------------------------------- */

/* One mock device. The identity fields are fixed at creation; the state fields change through
 * mock_data_set_switch()/mock_data_set_level() only. Owned by its tenant. */
struct mock_device {
    unsigned index;           /* 0-based position in the tenant's list */
    char id[MOCK_ID_LEN + 1]; /* deviceId */
    unsigned location;        /* index into the tenant's locations */
    unsigned room;            /* index into that location's rooms */
    bool has_temperature;     /* even devices also have temperatureMeasurement */
    bool switch_on;           /* switch.switch: "on" or "off" */
    int level;                /* switchLevel.level, 0..100 */
    int temperature;          /* temperatureMeasurement.temperature, degrees C */
    char switch_ts[MOCK_TS_LEN + 1];
    char level_ts[MOCK_TS_LEN + 1];
    char temperature_ts[MOCK_TS_LEN + 1];
    char health_ts[MOCK_TS_LEN + 1];
};

/* One location with its rooms, scenes and modes. Owned by its tenant; never changes. */
struct mock_location {
    char id[MOCK_ID_LEN + 1];
    char name[32];
    char room_ids[MOCK_ROOMS][MOCK_ID_LEN + 1];
    char scene_ids[MOCK_SCENES][MOCK_ID_LEN + 1];
    char mode_ids[MOCK_MODES][MOCK_ID_LEN + 1];
};

/* Everything one bearer token can see. Created on the token's first request and kept until
 * shutdown; owned by mock_data.c. */
struct mock_tenant {
    char *token;
    struct mock_tenant *next; /* hash-chain link, private to mock_data.c */
    char owner_id[MOCK_ID_LEN + 1];
    struct mock_location locations[MOCK_LOCATIONS];
    size_t n_devices;
    struct mock_device *devices; /* n_devices, in index order */
    struct mock_device **by_id;  /* the same devices sorted by id, for bsearch */
};

/* Flags for mock_data_device_json(), from GET /devices?includeHealth=true&includeStatus=true. */
enum mock_device_detail {
    MOCK_DEVICE_PLAIN = 0,
    MOCK_DEVICE_WITH_HEALTH = 1 << 0, /* adds "healthState" */
    MOCK_DEVICE_WITH_STATUS = 1 << 1, /* adds each component's "status" */
};

void mock_data_init(size_t devices_per_token);
void mock_data_shutdown(void);

/* Returns the token's world, creating it on first use. Never NULL. */
struct mock_tenant *mock_data_tenant(const char *token);

/* Lookups by id; NULL or false when the id is not this tenant's. */
struct mock_device *mock_data_find_device(struct mock_tenant *t, const char *id);
const struct mock_location *mock_data_find_location(const struct mock_tenant *t, const char *id);
bool mock_data_find_room(const struct mock_location *loc, const char *id,
                         unsigned *room) MOCK_MUSTCHECK;
bool mock_data_find_scene(const struct mock_tenant *t, const char *id, unsigned *location,
                          unsigned *scene) MOCK_MUSTCHECK;
bool mock_data_device_has_capability(const struct mock_device *d, const char *capability);

/* Writes a 36-character UUID-shaped id derived from SHA-256(kind, token, a, b) into out. */
void mock_data_uuid(char out[MOCK_ID_LEN + 1], const char *kind, const char *token, unsigned a,
                    unsigned b);
/* Writes the current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" into out. */
void mock_data_timestamp_now(char out[MOCK_TS_LEN + 1]);

/* State changes, each stamping the attribute with the current time. */
void mock_data_set_switch(struct mock_device *d, bool on);
void mock_data_set_level(struct mock_device *d, int level);
/* Runs a scene: every device in its location is switched on. */
void mock_data_execute_scene(struct mock_tenant *t, unsigned location);

/* JSON rendering: each appends one complete JSON value to out. */
void mock_data_device_json(struct evbuffer *out, const struct mock_tenant *t,
                           const struct mock_device *d, unsigned detail);
void mock_data_status_json(struct evbuffer *out, const struct mock_device *d);
bool mock_data_component_status_json(struct evbuffer *out, const struct mock_device *d,
                                     const char *component) MOCK_MUSTCHECK;
bool mock_data_capability_status_json(struct evbuffer *out, const struct mock_device *d,
                                      const char *component, const char *capability) MOCK_MUSTCHECK;
void mock_data_health_json(struct evbuffer *out, const struct mock_device *d);
void mock_data_location_summary_json(struct evbuffer *out, const struct mock_location *loc);
void mock_data_location_json(struct evbuffer *out, const struct mock_tenant *t,
                             const struct mock_location *loc);
void mock_data_room_json(struct evbuffer *out, const struct mock_location *loc, unsigned room);
void mock_data_mode_json(struct evbuffer *out, const struct mock_location *loc, unsigned mode);
void mock_data_scene_json(struct evbuffer *out, const struct mock_location *loc, unsigned scene);
bool mock_data_capability_definition_json(struct evbuffer *out, const char *id,
                                          const char *version) MOCK_MUSTCHECK;
void mock_data_presentation_json(struct evbuffer *out, const struct mock_device *d);

/* ---- mock_command.c --------------------------------------------------------------------- */

/* Parses a commands body, and if the whole body is valid applies every command to d and
 * appends {"results":[...]} to out. On a malformed body nothing changes, false is returned and
 * why holds a message for the 400 answer. */
bool mock_command_run(struct mock_device *d, const char *body, size_t len, struct evbuffer *out,
                      char *why, size_t why_size) MOCK_MUSTCHECK;

/* ---- mock_admin.c: counters, last request, run-time config ----------------------------- */

/* How the API fails the requests that fail_path selects (POST /config?fail_mode=...). */
enum mock_fail_mode {
    MOCK_FAIL_NONE,     /* answer normally */
    MOCK_FAIL_STATUS,   /* answer fail_status with a SmartThings error body */
    MOCK_FAIL_RESET,    /* close the TCP/TLS connection without answering (RST) */
    MOCK_FAIL_HANG,     /* never answer: hold the request until its client leaves or fail_mode is
                          set again, which answers it 503 */
    MOCK_FAIL_GARBAGE,  /* answer bytes that are not HTTP, then close */
    MOCK_FAIL_TRUNCATE, /* a 200 head promising 1000 bytes, 11 of them, then close (mid-body) */
    MOCK_FAIL_HUGE,     /* a 200 head promising 100 MB, 64 KiB of it, then close */
    MOCK_FAIL_NONJSON,  /* a whole 200 answer labelled JSON whose body is HTML, then close */
};

#define MOCK_FAIL_STATUS_DEFAULT 503
#define MOCK_FAIL_PATH_MAX       256

/* Settings that may change while running (POST /config?key=value on the admin port). The API
 * reads them on every request, so a new fault is a new field, a new row in mock_admin.c's
 * config table and a check in mock_api.c (or mock_fault.c). */
struct mock_config {
    long latency_ms;  /* added before every API answer, injected failures included */
    long fail_mode;   /* enum mock_fail_mode, kept as long for the config table */
    long fail_status; /* the status MOCK_FAIL_STATUS answers */
    long fail_count;  /* > 0: only this many more requests fail, then fail_mode goes back to
                         none by itself; 0: every request fails until fail_mode is changed */
    char fail_path[MOCK_FAIL_PATH_MAX]; /* only paths starting with this fail; "" = all */
    long rate_limit;                    /* per token: API requests per fixed window; 0 = no limit */
    long rate_window_ms;                /* that window (also the length of the sliding counts) */
    long device_limit; /* per (token, device, status|command): requests per window; 0 = none */
    long device_window_ms;
    long reset_unit;       /* enum mock_reset_unit: what X-RateLimit-Reset counts */
    long inject_429;       /* > 0: this many more API requests get a 429, whatever the limits */
    long inject_retry_ms;  /* the "retry in M millis" (and Reset) of an injected 429 */
    long access_ttl_ms;    /* lifetime of the access tokens the token endpoint issues from now on */
    long token_latency_ms; /* a token request waits this long before it is looked at */
    long token_fail;       /* > 0: this many more token requests get a 503 */
};

/* The unit of X-RateLimit-Reset (POST /config?reset_unit=ms|s). */
enum mock_reset_unit {
    MOCK_RESET_MILLIS,
    MOCK_RESET_SECONDS,
};

#define MOCK_WINDOW_MS_DEFAULT       60000
#define MOCK_INJECT_RETRY_MS_DEFAULT 1000
#define MOCK_ACCESS_TTL_MS_DEFAULT   3600000 /* one hour; the real API's is 24 */

extern struct mock_config mock_config;

/* Records an API request as it arrives: counts it and keeps it as the last request. token is
 * what by_token counts it under: the bearer token ("" when there is none), "oauth:<client_id>"
 * for an access token of the mock's token endpoint, or NULL for a request that is not counted by
 * token (the OAuth endpoints). */
void mock_admin_note_request(struct evhttp_request *req, const char *token);
/* Counts the status code of an API answer as it is sent. */
void mock_admin_note_status(int status);
/* Counts an API request that got no HTTP answer under its outcome ("reset", "hang",
 * "garbage"), in the same by_status table. */
void mock_admin_note_outcome(const char *outcome);
/* The admin port's request callback (evhttp_set_gencb). */
void mock_admin_handle(struct evhttp_request *req, void *arg);
void mock_admin_shutdown(void);

/* ---- mock_api.c ------------------------------------------------------------------------- */

/* origin: the scheme://host[:port] put into _links hrefs, or NULL for "https://" + Host.
 * tokens: the accepted bearer tokens, or n_tokens == 0 to accept any. Both are borrowed and
 * must outlive the API. */
void mock_api_init(struct event_base *base, const char *origin, char **tokens, size_t n_tokens);
/* The API port's request callback (evhttp_set_gencb). */
void mock_api_handle(struct evhttp_request *req, void *arg);
/* Drops requests still waiting out their latency. Call before evhttp_free(). */
void mock_api_shutdown(void);
/* Answers req with a SmartThings error body {"requestId","error":{code,message,details:[]}}
 * and X-Mock-Request-Id id. Does not count the status. req may be gone afterwards (as after any
 * evhttp_send_reply()). */
void mock_api_send_error(struct evhttp_request *req, unsigned long long id, int status,
                         const char *code, const char *message);

/* ---- mock_limit.c ----------------------------------------------------------------------- */

/* The names of enum mock_reset_unit in order, as POST /config takes them; NULL-terminated. */
extern const char *const mock_reset_unit_names[];

/* Why a request gets a 429 from the limits. */
enum mock_limit_reason {
    MOCK_LIMIT_NONE,     /* answer normally */
    MOCK_LIMIT_INJECTED, /* inject_429 */
    MOCK_LIMIT_TOKEN,    /* over rate_limit in the token's window */
    MOCK_LIMIT_DEVICE,   /* over device_limit in the device's window */
};

/* What the limits decided for one request on its arrival; carried out when it is answered. */
struct mock_limit_verdict {
    enum mock_limit_reason reason;
    bool headers;               /* send the X-RateLimit-* headers */
    long limit;                 /* X-RateLimit-Limit; < 0 leaves the header out */
    long remaining;             /* X-RateLimit-Remaining */
    int64_t reset_at;           /* when the window (or the injected wait) ends, mock_limit_now() */
    unsigned long long attempt; /* K in "attempt K limit N - retry in M millis" */
    long message_limit;         /* N in the same */
};

void mock_limit_init(void);
void mock_limit_shutdown(void);
/* Monotonic microseconds. */
int64_t mock_limit_now(void);
/* Counts an API request with an accepted token on its arrival and decides whether it gets a 429
 * (using up one inject_429 if set). path excludes the query. */
struct mock_limit_verdict mock_limit_take(const char *token, enum evhttp_cmd_type method,
                                          const char *path);
/* Adds the X-RateLimit-* headers the verdict calls for, Reset counted from now. */
void mock_limit_add_headers(struct evhttp_request *req, const struct mock_limit_verdict *v);
/* Appends the real API's 429 body for a limited verdict and counts it as sent. */
void mock_limit_error_body(struct evbuffer *out, unsigned long long id,
                           const struct mock_limit_verdict *v);
/* Appends the /counters members "rate_limited", "max_in_window", "max_in_sliding_window" and
 * "device_max_in_window" (no braces, no leading comma). */
void mock_limit_counters_json(struct evbuffer *out);
/* GET /arrivals: {"token":[[ms since start or reset, 1 if it got a 429 from a limit],...]}. */
void mock_limit_arrivals_json(struct evbuffer *out);
/* POST /config set a token limit key (rate_limit, rate_window_ms) or a device one: those
 * windows start again at each key's next request. */
void mock_limit_config_changed(bool token_limit, bool device_limit);
/* POST /reset: forgets every window, record and arrival. */
void mock_limit_reset(void);

/* ---- mock_fault.c ----------------------------------------------------------------------- */

/* The names of enum mock_fail_mode in order, as POST /config takes them; NULL-terminated. */
extern const char *const mock_fail_mode_names[];

/* The fate of one API request, decided when it arrives (so fail_count counts arrivals) and
 * carried out after the configured latency. */
struct mock_fault {
    enum mock_fail_mode mode;
    int status; /* for MOCK_FAIL_STATUS */
};

void mock_fault_init(struct event_base *base);
/* Decides whether a request for path (query excluded) fails, using up one of fail_count if it
 * does; when fail_count runs out, mock_config's fault goes back to none. */
struct mock_fault mock_fault_take(const char *path);
/* Fails req as f says (f.mode is not MOCK_FAIL_NONE) and counts the outcome. Takes req over:
 * it is answered, closed with its connection, or held. */
void mock_fault_apply(struct evhttp_request *req, unsigned long long id, struct mock_fault f);
/* Puts the fault settings of cfg (fail_*) back to their defaults: no fault. */
void mock_fault_clear(struct mock_config *cfg);
/* Answers every held (hanging) request with a 503; called when fail_mode is set. */
void mock_fault_release_held(void);
/* How many requests are held right now. */
size_t mock_fault_n_held(void);
/* Drops held requests and connections being closed. Call before evhttp_free(). */
void mock_fault_shutdown(void);

/* ---- mock_oauth.c ----------------------------------------------------------------------- */

/* What a bearer token is to the OAuth side of the mock. */
enum mock_oauth_access {
    MOCK_OAUTH_NOT_ISSUED, /* not an access token of the token endpoint: --tokens decides */
    MOCK_OAUTH_VALID,      /* one, neither expired nor revoked */
    MOCK_OAUTH_DEAD,       /* one, but expired or revoked: the API answers 401 */
};

/* Registers an OAuth app from --oauth-client's "ID:SECRET"; false (after logging why) for a bad
 * spec or an id given twice. */
bool mock_oauth_add_client(const char *spec) MOCK_MUSTCHECK;
size_t mock_oauth_n_clients(void);
void mock_oauth_init(struct event_base *base);
/* If path (query excluded) is [/v1]/oauth or below, takes req over (it is answered now or after
 * token_latency_ms) and returns true; otherwise leaves it alone and returns false. */
bool mock_oauth_handle(struct evhttp_request *req, const char *path);
/* Looks token up among the access tokens the mock issued. For VALID and DEAD, *identity is set to
 * "oauth:<client_id>" (borrowed; valid until shutdown): the one tenant, by_token key and limit
 * key of every access token of that app. */
enum mock_oauth_access mock_oauth_check_access(const char *token, const char **identity);
/* Admin endpoints (POST /oauth/issue, /oauth/revoke, /oauth/expire, GET /oauth/tokens): fill out
 * and return the status, as mock_admin.c's handlers do. */
int mock_oauth_admin_issue(struct evhttp_request *req, struct evbuffer *out);
int mock_oauth_admin_revoke(struct evhttp_request *req, struct evbuffer *out);
int mock_oauth_admin_expire(struct evhttp_request *req, struct evbuffer *out);
int mock_oauth_admin_tokens(struct evhttp_request *req, struct evbuffer *out);
/* Appends the /counters member "oauth":{...} (no leading comma). */
void mock_oauth_counters_json(struct evbuffer *out);
/* POST /reset: zeroes the OAuth counters; codes and tokens stay as they are. */
void mock_oauth_reset_counters(void);
/* Drops token requests still waiting out their latency (call before evhttp_free()) and frees
 * every app, code and token. */
void mock_oauth_shutdown(void);

#endif
