/*
 * mock_api.c: the SmartThings API as the TLS port serves it.
 *
 * A request for [/v1]/oauth/... goes to mock_oauth.c. Any other goes: mock_api_handle() counts it (mock_admin.c), asks mock_limit.c whether it is
 * over a rate limit and, if not, mock_fault.c whether it is to fail, and, when a latency is
 * configured, parks it on a one-shot timer; then a limited request gets the API's 429, a failing
 * request goes to mock_fault_apply() and the others to api_answer(), which checks the bearer
 * token, strips an optional /v1, finds the route in api_routes[], runs its handler, which fills
 * an evbuffer with JSON from mock_data.c, and sends it with X-Mock-Request-Id. Owns the routing
 * table, the /devices filters, pagination links, SmartThings-shaped error bodies and the list of
 * parked requests.
 */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/keyvalq_struct.h>

/* The deepest route, devices/{id}/components/{c}/capabilities/{cap}/status, has 7 segments. */
#define API_MAX_SEGMENTS      8
#define API_DEFAULT_PAGE_SIZE 200

/* One API request being answered. Lives on api_answer()'s stack for one answer. */
struct api_call {
    struct evhttp_request *req;
    unsigned long long id;              /* X-Mock-Request-Id and the error body's requestId */
    struct mock_tenant *tenant;         /* the token's world, set once the token is accepted */
    const char *path;                   /* as received, query excluded; keeps /v1 for links */
    const char *args[API_MAX_SEGMENTS]; /* the path segments that matched '*' in the route */
    struct mock_query query;
    struct evbuffer *body; /* the answer being built */
    int status;
};

/* A request waiting out the configured latency on a one-shot timer. Kept in a list so that
 * shutdown can drop the ones whose timer never fired. */
struct api_pending {
    struct evhttp_request *req;
    unsigned long long id;
    struct mock_fault fault;         /* decided on arrival, carried out when the timer fires */
    struct mock_limit_verdict limit; /* the same */
    struct api_pending *prev, *next;
};

typedef void (*api_handler)(struct api_call *call);

/* One route: a path pattern of '/'-separated segments where '*' matches any one segment. */
struct api_route {
    const char *pattern;
    enum evhttp_cmd_type method;
    api_handler handler;
};

static struct event_base *api_base;
static const char *api_origin; /* NULL: "https://" + the request's Host */
static char **api_tokens;
static size_t api_n_tokens;
static unsigned long long api_request_seq;
static struct api_pending *api_pending_list;

/* ---- answers ------------------------------------------------------------------------------ */

/* Appends a SmartThings error body. The requestId is the same number as X-Mock-Request-Id, so a
 * test can tie an error body seen through the proxy to one upstream request. */
static void api_error_body(struct evbuffer *out, unsigned long long id, const char *code,
                           const char *message)
{
    evbuffer_add_printf(out, "{\"requestId\":\"%llu\",\"error\":{\"code\":", id);
    mock_json_cstr(out, code);
    evbuffer_add_printf(out, ",\"message\":");
    mock_json_cstr(out, message);
    evbuffer_add_printf(out, ",\"details\":[]}}");
}

/* Replaces whatever the answer holds with a SmartThings error body. Handlers may have written
 * part of a body before finding the error, hence the drain. */
static void api_error(struct api_call *call, int status, const char *code, const char *message)
{
    evbuffer_drain(call->body, evbuffer_get_length(call->body));
    call->status = status;
    api_error_body(call->body, call->id, code, message);
}

/* Unknown paths and unknown ids answer alike, as the real API does for another account's id. */
static void api_not_found(struct api_call *call)
{
    api_error(call, 404, "NotFoundError", "The requested resource was not found");
}

static void api_bad_request(struct api_call *call, const char *message)
{
    api_error(call, 400, "ConstraintViolationError", message);
}

/* Appends the origin links point at: --origin, else https:// and the Host the client used.
 * The proxy under test must rewrite whichever it gets to its own origin (the JS SDK refuses a
 * next link on another origin), so tests pin it with --origin to know what to expect. */
static void api_add_origin(struct api_call *call, struct evbuffer *out)
{
    const char *host;

    if (api_origin != NULL) {
        evbuffer_add(out, api_origin, strlen(api_origin));
        return;
    }
    host = evhttp_find_header(evhttp_request_get_input_headers(call->req), "Host");
    evbuffer_add_printf(out, "https://%s", host && *host ? host : "api.smartthings.com");
}

/* Appends "href" for another page of the same list: same origin rules, same path style, the
 * request's other parameters kept as received, page and max first as the real API writes. */
static void api_page_link(struct api_call *call, const char *name, long page, long max)
{
    struct evbuffer *href = mock_xevbuffer();

    api_add_origin(call, href);
    evbuffer_add_printf(href, "%s?page=%ld&max=%ld", call->path, page, max);
    for (size_t i = 0; i < call->query.n; i++) {
        const struct mock_param *p = &call->query.params[i];

        if (strcmp(p->key, "page") != 0 && strcmp(p->key, "max") != 0)
            evbuffer_add_printf(href, "&%s", p->raw);
    }
    /* The Host header is client data: escape the whole href rather than trust it. */
    evbuffer_add_printf(call->body, "\"%s\":{\"href\":", name);
    mock_json_string(call->body, (const char *)evbuffer_pullup(href, -1),
                     evbuffer_get_length(href));
    evbuffer_add(call->body, "}", 1);
    evbuffer_free(href);
}

/* Finds the device named by the route's first '*'; answers 404 when it is not this token's. */
static struct mock_device *api_device(struct api_call *call)
{
    struct mock_device *d = mock_data_find_device(call->tenant, call->args[0]);

    if (d == NULL)
        api_not_found(call);
    return d;
}

/* The same for the location named by the route's first '*'. */
static const struct mock_location *api_location(struct api_call *call)
{
    const struct mock_location *loc = mock_data_find_location(call->tenant, call->args[0]);

    if (loc == NULL)
        api_not_found(call);
    return loc;
}

/* ---- handlers: devices -------------------------------------------------------------------- */

/* The /devices filters of one request. */
struct api_device_filter {
    struct mock_values locations;    /* any of these (empty: all) */
    struct mock_values capabilities; /* all of these, or any with capabilitiesMode=or */
    struct mock_values device_ids;   /* any of these (empty: all) */
    bool any_capability;
};

static bool api_device_matches(const struct api_device_filter *f, const struct mock_tenant *t,
                               const struct mock_device *d)
{
    bool any = false;

    if (f->locations.n > 0 &&
        !mock_query_values_contain(&f->locations, t->locations[d->location].id))
        return false;
    if (f->device_ids.n > 0 && !mock_query_values_contain(&f->device_ids, d->id))
        return false;
    if (f->capabilities.n == 0)
        return true;
    for (size_t i = 0; i < f->capabilities.n; i++) {
        bool has = mock_data_device_has_capability(d, f->capabilities.v[i]);

        if (!has && !f->any_capability)
            return false;
        any = any || has;
    }
    return any;
}

static void api_devices_list(struct api_call *call)
{
    const struct mock_query *q = &call->query;
    struct api_device_filter filter;
    const char *max_s = mock_query_get(q, "max");
    const char *page_s = mock_query_get(q, "page");
    const char *mode = mock_query_get(q, "capabilitiesMode");
    const char *health = mock_query_get(q, "includeHealth");
    const char *status = mock_query_get(q, "includeStatus");
    unsigned detail = MOCK_DEVICE_PLAIN;
    unsigned long long first, matched = 0;
    long max = API_DEFAULT_PAGE_SIZE, page = 0;
    const char *sep = "";

    if (max_s != NULL && !mock_query_long(max_s, 1, 1000000, &max)) {
        api_bad_request(call, "max must be a positive integer");
        return;
    }
    if (page_s != NULL && !mock_query_long(page_s, 0, 1000000, &page)) {
        api_bad_request(call, "page must be a non-negative integer");
        return;
    }
    if (mode != NULL && strcmp(mode, "and") != 0 && strcmp(mode, "or") != 0) {
        api_bad_request(call, "capabilitiesMode must be and or or");
        return;
    }
    if (health != NULL && strcmp(health, "true") == 0)
        detail |= MOCK_DEVICE_WITH_HEALTH;
    if (status != NULL && strcmp(status, "true") == 0)
        detail |= MOCK_DEVICE_WITH_STATUS;

    mock_query_values(&filter.locations, q, "locationId");
    mock_query_values(&filter.capabilities, q, "capability");
    mock_query_values(&filter.device_ids, q, "deviceId");
    filter.any_capability = mode != NULL && strcmp(mode, "or") == 0;

    /* One pass over the tenant: count every match (to know if a next page exists) and render
     * only the ones on this page. Fine for thousands of devices. */
    first = (unsigned long long)page * (unsigned long long)max;
    evbuffer_add_printf(call->body, "{\"items\":[");
    for (size_t i = 0; i < call->tenant->n_devices; i++) {
        const struct mock_device *d = &call->tenant->devices[i];

        if (!api_device_matches(&filter, call->tenant, d))
            continue;
        if (matched >= first && matched < first + (unsigned long long)max) {
            evbuffer_add_printf(call->body, "%s", sep);
            mock_data_device_json(call->body, call->tenant, d, detail);
            sep = ",";
        }
        matched++;
    }
    /* _links carries only the links that apply; the real API sends {} when there are none. */
    evbuffer_add_printf(call->body, "],\"_links\":{");
    if (matched > first + (unsigned long long)max)
        api_page_link(call, "next", page + 1, max);
    if (page > 0) {
        if (matched > first + (unsigned long long)max)
            evbuffer_add(call->body, ",", 1);
        api_page_link(call, "previous", page - 1, max);
    }
    evbuffer_add(call->body, "}}", 2);

    mock_query_values_free(&filter.locations);
    mock_query_values_free(&filter.capabilities);
    mock_query_values_free(&filter.device_ids);
}

static void api_device_describe(struct api_call *call)
{
    struct mock_device *d = api_device(call);

    if (d != NULL)
        mock_data_device_json(call->body, call->tenant, d, MOCK_DEVICE_PLAIN);
}

static void api_device_status(struct api_call *call)
{
    struct mock_device *d = api_device(call);

    if (d != NULL)
        mock_data_status_json(call->body, d);
}

static void api_device_health(struct api_call *call)
{
    struct mock_device *d = api_device(call);

    if (d != NULL)
        mock_data_health_json(call->body, d);
}

static void api_component_status(struct api_call *call)
{
    struct mock_device *d = api_device(call);

    if (d != NULL && !mock_data_component_status_json(call->body, d, call->args[1]))
        api_not_found(call);
}

static void api_capability_status(struct api_call *call)
{
    struct mock_device *d = api_device(call);

    if (d != NULL && !mock_data_capability_status_json(call->body, d, call->args[1], call->args[2]))
        api_not_found(call);
}

static void api_device_commands(struct api_call *call)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    struct mock_device *d = api_device(call);
    char why[128];

    if (d == NULL)
        return;
    /* The device is checked first: an unknown id is 404 whatever the body says. */
    if (len == 0) {
        api_bad_request(call, "a commands body is required");
        return;
    }
    if (!mock_command_run(d, (const char *)evbuffer_pullup(in, -1), len, call->body, why,
                          sizeof(why)))
        api_bad_request(call, why);
}

/* Events from integrations that create devices: accepted and dropped, the mock keeps none. */
static void api_device_events(struct api_call *call)
{
    if (api_device(call) != NULL)
        evbuffer_add(call->body, "{}", 2);
}

/* ---- handlers: locations, scenes, definitions ---------------------------------------------- */

static void api_locations_list(struct api_call *call)
{
    evbuffer_add_printf(call->body, "{\"items\":[");
    for (unsigned l = 0; l < MOCK_LOCATIONS; l++) {
        if (l > 0)
            evbuffer_add(call->body, ",", 1);
        mock_data_location_summary_json(call->body, &call->tenant->locations[l]);
    }
    evbuffer_add_printf(call->body, "],\"_links\":{}}");
}

static void api_location_describe(struct api_call *call)
{
    const struct mock_location *loc = api_location(call);

    if (loc != NULL)
        mock_data_location_json(call->body, call->tenant, loc);
}

static void api_rooms_list(struct api_call *call)
{
    const struct mock_location *loc = api_location(call);

    if (loc == NULL)
        return;
    evbuffer_add_printf(call->body, "{\"items\":[");
    for (unsigned r = 0; r < MOCK_ROOMS; r++) {
        if (r > 0)
            evbuffer_add(call->body, ",", 1);
        mock_data_room_json(call->body, loc, r);
    }
    evbuffer_add_printf(call->body, "],\"_links\":{}}");
}

static void api_room_describe(struct api_call *call)
{
    const struct mock_location *loc = api_location(call);
    unsigned room;

    if (loc == NULL)
        return;
    if (mock_data_find_room(loc, call->args[1], &room))
        mock_data_room_json(call->body, loc, room);
    else
        api_not_found(call);
}

static void api_modes_list(struct api_call *call)
{
    const struct mock_location *loc = api_location(call);

    if (loc == NULL)
        return;
    evbuffer_add_printf(call->body, "{\"items\":[");
    for (unsigned m = 0; m < MOCK_MODES; m++) {
        if (m > 0)
            evbuffer_add(call->body, ",", 1);
        mock_data_mode_json(call->body, loc, m);
    }
    evbuffer_add_printf(call->body, "],\"_links\":{}}");
}

static void api_mode_current(struct api_call *call)
{
    const struct mock_location *loc = api_location(call);

    /* Modes never change in the mock: every location stays in its first mode, Home. */
    if (loc != NULL)
        mock_data_mode_json(call->body, loc, 0);
}

static void api_scenes_list(struct api_call *call)
{
    struct mock_values wanted;
    const char *sep = "";

    mock_query_values(&wanted, &call->query, "locationId");
    evbuffer_add_printf(call->body, "{\"items\":[");
    for (unsigned l = 0; l < MOCK_LOCATIONS; l++) {
        const struct mock_location *loc = &call->tenant->locations[l];

        if (wanted.n > 0 && !mock_query_values_contain(&wanted, loc->id))
            continue;
        for (unsigned s = 0; s < MOCK_SCENES; s++) {
            evbuffer_add_printf(call->body, "%s", sep);
            mock_data_scene_json(call->body, loc, s);
            sep = ",";
        }
    }
    evbuffer_add_printf(call->body, "],\"_links\":{}}");
    mock_query_values_free(&wanted);
}

/* A scene changes many devices at once, which is what makes it interesting for a cache: every
 * cached status of that location is stale afterwards. */
static void api_scene_execute(struct api_call *call)
{
    unsigned location, scene;

    if (!mock_data_find_scene(call->tenant, call->args[0], &location, &scene)) {
        api_not_found(call);
        return;
    }
    mock_data_execute_scene(call->tenant, location);
    evbuffer_add_printf(call->body, "{\"status\":\"success\"}");
}

static void api_capability_definition(struct api_call *call)
{
    if (!mock_data_capability_definition_json(call->body, call->args[0], call->args[1]))
        api_not_found(call);
}

/* GET /presentation?deviceId=...: the real API also takes presentationId/manufacturerName; the
 * mock answers only the deviceId form, which is what the clients in SMARTTHINGS.md send. */
static void api_presentation(struct api_call *call)
{
    const char *id = mock_query_get(&call->query, "deviceId");
    struct mock_device *d;

    if (id == NULL || *id == '\0') {
        api_bad_request(call, "deviceId is required");
        return;
    }
    d = mock_data_find_device(call->tenant, id);
    if (d == NULL)
        api_not_found(call);
    else
        mock_data_presentation_json(call->body, d);
}

/* Every path, without its optional /v1 prefix. A path that matches a pattern but none of its
 * methods gets 405; a path that matches no pattern gets 404. */
static const struct api_route api_routes[] = {
    {"devices", EVHTTP_REQ_GET, api_devices_list},
    {"devices/*", EVHTTP_REQ_GET, api_device_describe},
    {"devices/*/status", EVHTTP_REQ_GET, api_device_status},
    {"devices/*/health", EVHTTP_REQ_GET, api_device_health},
    {"devices/*/components/*/status", EVHTTP_REQ_GET, api_component_status},
    {"devices/*/components/*/capabilities/*/status", EVHTTP_REQ_GET, api_capability_status},
    {"devices/*/commands", EVHTTP_REQ_POST, api_device_commands},
    {"devices/*/events", EVHTTP_REQ_POST, api_device_events},
    {"locations", EVHTTP_REQ_GET, api_locations_list},
    {"locations/*", EVHTTP_REQ_GET, api_location_describe},
    {"locations/*/rooms", EVHTTP_REQ_GET, api_rooms_list},
    {"locations/*/rooms/*", EVHTTP_REQ_GET, api_room_describe},
    {"locations/*/modes", EVHTTP_REQ_GET, api_modes_list},
    {"locations/*/modes/current", EVHTTP_REQ_GET, api_mode_current},
    {"scenes", EVHTTP_REQ_GET, api_scenes_list},
    {"scenes/*/execute", EVHTTP_REQ_POST, api_scene_execute},
    {"capabilities/*/*", EVHTTP_REQ_GET, api_capability_definition},
    {"presentation", EVHTTP_REQ_GET, api_presentation},
};

/* Matches the path segments against pattern; on success args holds the '*' segments. */
static bool api_route_match(const char *pattern, char **segs, size_t n, const char **args)
{
    size_t i = 0, n_args = 0;
    const char *p = pattern;

    while (*p != '\0') {
        size_t len = strcspn(p, "/");

        if (i == n)
            return false;
        if (len == 1 && *p == '*')
            args[n_args++] = segs[i];
        else if (strlen(segs[i]) != len || memcmp(segs[i], p, len) != 0)
            return false;
        i++;
        p += len + (p[len] == '/');
    }
    return i == n;
}

/* Splits the path into segments (in the caller's copy), dropping empty ones and a leading v1,
 * and runs the matching route. */
static void api_route(struct api_call *call, char *path_copy)
{
    enum evhttp_cmd_type method = evhttp_request_get_command(call->req);
    char *segs[API_MAX_SEGMENTS];
    size_t n = 0, first = 0;
    bool path_known = false;
    char *save = NULL;

    for (char *s = strtok_r(path_copy, "/", &save); s != NULL; s = strtok_r(NULL, "/", &save)) {
        if (n == API_MAX_SEGMENTS) {
            api_not_found(call);
            return;
        }
        segs[n++] = s;
    }
    if (n > 0 && strcmp(segs[0], "v1") == 0)
        first = 1;
    /* HEAD is answered as GET; libevent leaves the body out. */
    if (method == EVHTTP_REQ_HEAD)
        method = EVHTTP_REQ_GET;
    for (size_t r = 0; r < sizeof(api_routes) / sizeof(api_routes[0]); r++) {
        if (!api_route_match(api_routes[r].pattern, segs + first, n - first, call->args))
            continue;
        path_known = true;
        if (api_routes[r].method == method) {
            api_routes[r].handler(call);
            return;
        }
    }
    if (path_known)
        api_error(call, 405, "MethodNotAllowedError", "Method not allowed for this resource");
    else
        api_not_found(call);
}

/* Returns the bearer token of req (pointing into its headers, so valid as long as req) or NULL.
 * The scheme is matched without case, as HTTP auth schemes are. */
static const char *api_bearer_token(struct evhttp_request *req)
{
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");

    if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0)
        return NULL;
    auth += 7;
    auth += strspn(auth, " ");
    return *auth != '\0' ? auth : NULL;
}

static bool api_token_listed(const char *token)
{
    if (token == NULL)
        return false;
    if (api_n_tokens == 0)
        return true;
    for (size_t i = 0; i < api_n_tokens; i++) {
        if (strcmp(api_tokens[i], token) == 0)
            return true;
    }
    return false;
}

/* Who sent an API request, as far as the API cares. */
struct api_caller {
    const char *identity; /* the tenant, by_token and limits key: the bearer token, "" when
                             there is none, or "oauth:<client_id>" for an OAuth access token */
    bool accepted;        /* the token may use the API */
    bool expired;         /* an OAuth access token that expired or was revoked */
};

/* An access token from the mock's token endpoint is judged by it (whatever --tokens says), and
 * stands for its app; any other token is accepted by the --tokens list. */
static struct api_caller api_identify(const char *token)
{
    struct api_caller c = {.identity = token ? token : "", .accepted = false, .expired = false};
    const char *identity = NULL;

    switch (mock_oauth_check_access(token, &identity)) {
    case MOCK_OAUTH_VALID:
        c.identity = identity;
        c.accepted = true;
        return c;
    case MOCK_OAUTH_DEAD:
        c.identity = identity;
        c.expired = true;
        return c;
    case MOCK_OAUTH_NOT_ISSUED:
        break;
    }
    c.accepted = api_token_listed(token);
    return c;
}

/* Adds the headers every API answer carries. */
static void api_add_answer_headers(struct evhttp_request *req, unsigned long long id)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    char id_text[24];

    snprintf(id_text, sizeof(id_text), "%llu", id);
    evhttp_add_header(headers, "Content-Type", "application/json");
    evhttp_add_header(headers, "X-Mock-Request-Id", id_text);
}

void mock_api_send_error(struct evhttp_request *req, unsigned long long id, int status,
                         const char *code, const char *message)
{
    struct evbuffer *body = mock_xevbuffer();

    api_error_body(body, id, code, message);
    api_add_answer_headers(req, id);
    evhttp_send_reply(req, status, NULL, body);
    evbuffer_free(body);
}

/* Builds and sends the answer to req. After the send req may be gone: libevent frees it once
 * written, or at once if the client has already left. Auth comes before routing, so an unknown
 * path without a token is 401, not 404, as on the real API. */
static void api_answer(struct evhttp_request *req, unsigned long long id)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    struct api_caller caller = api_identify(api_bearer_token(req));
    struct api_call call = {.req = req, .id = id, .status = 200};
    char *path_copy;

    call.path = evhttp_uri_get_path(uri);
    if (call.path == NULL)
        call.path = "";
    call.body = mock_xevbuffer();
    mock_query_parse(&call.query, evhttp_uri_get_query(uri));
    path_copy = mock_xstrdup(call.path);

    /* Judged again now, after the latency: an access token may have expired meanwhile. */
    if (caller.expired) {
        api_error(&call, 401, "UnauthorizedError", "The access token has expired or was revoked");
    } else if (!caller.accepted) {
        api_error(&call, 401, "UnauthorizedError", "Invalid or missing token");
    } else {
        call.tenant = mock_data_tenant(caller.identity);
        api_route(&call, path_copy);
    }

    api_add_answer_headers(req, id);
    mock_admin_note_status(call.status);
    evhttp_send_reply(req, call.status, NULL, call.body);

    evbuffer_free(call.body);
    mock_query_free(&call.query);
    free(path_copy);
}

/* ---- latency and faults ------------------------------------------------------------------- */

/* Answers req with the real API's 429, as the limits decided. */
static void api_send_limited(struct evhttp_request *req, unsigned long long id,
                             const struct mock_limit_verdict *limit)
{
    struct evbuffer *body = mock_xevbuffer();

    mock_limit_error_body(body, id, limit);
    api_add_answer_headers(req, id);
    mock_admin_note_status(429);
    evhttp_send_reply(req, 429, NULL, body);
    evbuffer_free(body);
}

/* Answers req, or fails it as decided on arrival. The rate-limit headers go on every answer
 * (an injected failure's too); Reset is counted from now, when the answer leaves. */
static void api_dispatch(struct evhttp_request *req, unsigned long long id, struct mock_fault f,
                         const struct mock_limit_verdict *limit)
{
    mock_limit_add_headers(req, limit);
    if (limit->reason != MOCK_LIMIT_NONE)
        api_send_limited(req, id, limit);
    else if (f.mode == MOCK_FAIL_NONE)
        api_answer(req, id);
    else
        mock_fault_apply(req, id, f);
}

static void api_pending_unlink(struct api_pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        api_pending_list = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
}

static void api_pending_fire(evutil_socket_t fd, short what, void *arg)
{
    struct api_pending *p = arg;
    struct evhttp_request *req = p->req;
    unsigned long long id = p->id;
    struct mock_fault fault = p->fault;
    struct mock_limit_verdict limit = p->limit;

    (void)fd;
    (void)what;
    api_pending_unlink(p);
    free(p);
    /* If the client gave up meanwhile, libevent has detached req from its connection and
     * api_answer()'s send just frees it (mock_fault_apply() checks for that too). */
    api_dispatch(req, id, fault, &limit);
}

void mock_api_handle(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    unsigned long long id;
    struct api_caller caller;
    long latency = mock_config.latency_ms;
    struct mock_limit_verdict limit = {.reason = MOCK_LIMIT_NONE, .limit = -1};
    struct mock_fault fault = {.mode = MOCK_FAIL_NONE, .status = 0};
    struct api_pending *p;
    struct timeval delay;

    (void)arg;
    /* The OAuth endpoints are another service that shares the port: no bearer token, no
     * limits, no faults, no latency but their own. */
    if (mock_oauth_handle(req, path ? path : ""))
        return;
    id = ++api_request_seq;
    caller = api_identify(api_bearer_token(req));
    mock_admin_note_request(req, caller.identity);
    /* Limits count arrivals of requests with an accepted token (a rejected token belongs to
     * nobody), as the real API counts them at its door. */
    if (caller.accepted)
        limit = mock_limit_take(caller.identity, evhttp_request_get_command(req), path ? path : "");
    /* Decided now, so fail_count=N fails the next N requests to arrive, whatever their
     * latency; carried out after the latency, as a slow upstream that then fails would. A
     * request the limits turn away never reaches the part that fails. */
    if (limit.reason == MOCK_LIMIT_NONE)
        fault = mock_fault_take(path ? path : "");
    if (latency <= 0) {
        api_dispatch(req, id, fault, &limit);
        return;
    }
    /* The request was counted above, on arrival: a test that makes the mock slower than the
     * proxy's timeout still sees that the request reached the upstream. */
    p = mock_xcalloc(1, sizeof(*p));
    p->req = req;
    p->id = id;
    p->fault = fault;
    p->limit = limit;
    p->next = api_pending_list;
    if (api_pending_list != NULL)
        api_pending_list->prev = p;
    api_pending_list = p;
    delay.tv_sec = latency / 1000;
    delay.tv_usec = (latency % 1000) * 1000;
    /* A one-shot timer: libevent owns and frees the event itself. */
    if (event_base_once(api_base, -1, EV_TIMEOUT, api_pending_fire, p, &delay) != 0) {
        mock_log("cannot schedule latency timer; answering request %llu at once", id);
        api_pending_unlink(p);
        free(p);
        api_dispatch(req, id, fault, &limit);
    }
}

void mock_api_init(struct event_base *base, const char *origin, char **tokens, size_t n_tokens)
{
    api_base = base;
    api_origin = origin;
    api_tokens = tokens;
    api_n_tokens = n_tokens;
}

void mock_api_shutdown(void)
{
    while (api_pending_list != NULL) {
        struct api_pending *p = api_pending_list;

        api_pending_list = p->next;
        /* A request whose client left is no longer owned by any connection, so evhttp_free()
         * will not free it; the others go with their connections. */
        if (evhttp_request_get_connection(p->req) == NULL)
            evhttp_request_free(p->req);
        free(p);
    }
}
