/*
 * mock_data.c: the world each bearer token sees, and its JSON.
 *
 * Owns every tenant (one per token, created on its first request, freed at shutdown), their
 * devices' mutable state, the fixed tables of capabilities, room, scene and mode names, and the
 * rendering of all of it as SmartThings-shaped JSON. Ids are derived from SHA-256 over the token
 * and an index, so a test that knows the token and the device count can predict every id, and
 * two tokens never share an id. Nothing here knows about HTTP.
 */
#include "mock.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

/* Tenants live in a fixed hash table: the number of tokens in a test or benchmark is small. */
#define DATA_TENANT_BUCKETS 256

/* Deterministic starting times: devices were "created" during 2024 and last reported at the
 * start of 2025, one second apart, so fresh data looks the same on every run. */
#define DATA_CREATED_EPOCH  1704067200 /* 2024-01-01T00:00:00Z */
#define DATA_REPORTED_EPOCH 1735689600 /* 2025-01-01T00:00:00Z */

/* The capabilities a mock device can have, in the order they are listed. */
enum data_capability_index { CAP_SWITCH, CAP_LEVEL, CAP_TEMPERATURE, CAP_HEALTH, CAP_COUNT };

/* One capability: its id, display name, and the attributes/commands part of its definition
 * (GET /capabilities/{id}/1), kept as a JSON fragment because it never changes. */
struct data_capability {
    const char *id;
    const char *name;
    const char *definition;
};

static const struct data_capability data_capabilities[CAP_COUNT] = {
    [CAP_SWITCH] = {"switch", "Switch",
                    "\"attributes\":{\"switch\":{\"schema\":{\"type\":\"object\",\"properties\":"
                    "{\"value\":{\"type\":\"string\",\"enum\":[\"on\",\"off\"]}},"
                    "\"additionalProperties\":false,\"required\":[\"value\"]},"
                    "\"enumCommands\":[{\"command\":\"on\",\"value\":\"on\"},"
                    "{\"command\":\"off\",\"value\":\"off\"}]}},"
                    "\"commands\":{\"on\":{\"name\":\"on\",\"arguments\":[]},"
                    "\"off\":{\"name\":\"off\",\"arguments\":[]}}"},
    [CAP_LEVEL] = {"switchLevel", "Switch Level",
                   "\"attributes\":{\"level\":{\"schema\":{\"type\":\"object\",\"properties\":"
                   "{\"value\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100},"
                   "\"unit\":{\"type\":\"string\",\"enum\":[\"%\"],\"default\":\"%\"}},"
                   "\"additionalProperties\":false,\"required\":[\"value\"]},"
                   "\"setter\":\"setLevel\"}},"
                   "\"commands\":{\"setLevel\":{\"name\":\"setLevel\",\"arguments\":["
                   "{\"name\":\"level\",\"optional\":false,\"schema\":{\"type\":\"integer\","
                   "\"minimum\":0,\"maximum\":100}},{\"name\":\"rate\",\"optional\":true,"
                   "\"schema\":{\"type\":\"integer\",\"minimum\":0}}]}}"},
    [CAP_TEMPERATURE] = {"temperatureMeasurement", "Temperature Measurement",
                         "\"attributes\":{\"temperature\":{\"schema\":{\"type\":\"object\","
                         "\"properties\":{\"value\":{\"type\":\"number\",\"minimum\":-460,"
                         "\"maximum\":10000},\"unit\":{\"type\":\"string\",\"enum\":[\"F\",\"C\"]}}"
                         ",\"additionalProperties\":false,\"required\":[\"value\",\"unit\"]}}},"
                         "\"commands\":{}"},
    [CAP_HEALTH] = {"healthCheck", "Health Check",
                    "\"attributes\":{\"checkInterval\":{\"schema\":{\"type\":\"object\","
                    "\"properties\":{\"value\":{\"type\":\"integer\",\"minimum\":0}}}},"
                    "\"DeviceWatch-DeviceStatus\":{\"schema\":{\"type\":\"object\","
                    "\"properties\":{\"value\":{\"type\":\"string\","
                    "\"enum\":[\"online\",\"offline\"]}}}}},"
                    "\"commands\":{\"ping\":{\"name\":\"ping\",\"arguments\":[]}}"},
};

static const char *const data_room_names[MOCK_ROOMS] = {"Living Room", "Bedroom"};
static const char *const data_scene_names[MOCK_SCENES] = {"Good Morning", "Good Night"};
static const char *const data_mode_names[MOCK_MODES] = {"Home", "Away", "Night"};

static struct mock_tenant *data_tenants[DATA_TENANT_BUCKETS];
static size_t data_devices_per_token;
/* Two device profiles (and presentations): [1] with temperature, [0] without. Token-independent
 * like real profiles, which many devices share. */
static char data_profile_ids[2][MOCK_ID_LEN + 1];
static char data_presentation_ids[2][MOCK_ID_LEN + 1];

/* ---- ids and times ---------------------------------------------------------------------- */

void mock_data_uuid(char out[MOCK_ID_LEN + 1], const char *kind, const char *token, unsigned a,
                    unsigned b)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    unsigned char nums[8] = {a >> 24, a >> 16, a >> 8, a, b >> 24, b >> 16, b >> 8, b};
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    /* The NUL separators keep ("ab", "c") and ("a", "bc") apart. */
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(ctx, "stmock", 7) || !EVP_DigestUpdate(ctx, kind, strlen(kind) + 1) ||
        !EVP_DigestUpdate(ctx, token, strlen(token) + 1) ||
        !EVP_DigestUpdate(ctx, nums, sizeof(nums)) || !EVP_DigestFinal_ex(ctx, md, &md_len)) {
        mock_log("fatal: SHA-256 failed");
        abort();
    }
    EVP_MD_CTX_free(ctx);
    /* Mark it as a version-4, RFC 4122 variant UUID so it looks like a real SmartThings id. */
    md[6] = (md[6] & 0x0f) | 0x40;
    md[8] = (md[8] & 0x3f) | 0x80;
    snprintf(out, MOCK_ID_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0], md[1],
             md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12], md[13],
             md[14], md[15]);
}

static void data_format_time(char out[MOCK_TS_LEN + 1], time_t sec, unsigned ms)
{
    struct tm tm;
    char date[24];

    gmtime_r(&sec, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, MOCK_TS_LEN + 1, "%.19s.%03uZ", date, ms % 1000);
}

void mock_data_timestamp_now(char out[MOCK_TS_LEN + 1])
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    data_format_time(out, ts.tv_sec, (unsigned)(ts.tv_nsec / 1000000));
}

/* ---- tenants ------------------------------------------------------------------------------ */

void mock_data_init(size_t devices_per_token)
{
    data_devices_per_token = devices_per_token;
    for (unsigned i = 0; i < 2; i++) {
        mock_data_uuid(data_profile_ids[i], "profile", "", i, 0);
        mock_data_uuid(data_presentation_ids[i], "presentation", "", i, 0);
    }
}

/* Which hash bucket holds the tenant of token. */
static unsigned data_token_bucket(const char *token)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)token; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % DATA_TENANT_BUCKETS;
}

static int data_compare_device_ids(const void *a, const void *b)
{
    const struct mock_device *const *da = a;
    const struct mock_device *const *db = b;

    return strcmp((*da)->id, (*db)->id);
}

/* Builds the whole world of one token at once, so ids and initial state depend only on the
 * token and --devices, never on which request came first. */
static struct mock_tenant *data_tenant_create(const char *token)
{
    struct mock_tenant *t = mock_xcalloc(1, sizeof(*t));

    t->token = mock_xstrdup(token);
    mock_data_uuid(t->owner_id, "owner", token, 0, 0);
    for (unsigned l = 0; l < MOCK_LOCATIONS; l++) {
        struct mock_location *loc = &t->locations[l];

        mock_data_uuid(loc->id, "location", token, l, 0);
        snprintf(loc->name, sizeof(loc->name), "Mock Home %u", l + 1);
        for (unsigned r = 0; r < MOCK_ROOMS; r++)
            mock_data_uuid(loc->room_ids[r], "room", token, l, r);
        for (unsigned s = 0; s < MOCK_SCENES; s++)
            mock_data_uuid(loc->scene_ids[s], "scene", token, l, s);
        for (unsigned m = 0; m < MOCK_MODES; m++)
            mock_data_uuid(loc->mode_ids[m], "mode", token, l, m);
    }

    t->n_devices = data_devices_per_token;
    t->devices = mock_xcalloc(t->n_devices ? t->n_devices : 1, sizeof(*t->devices));
    t->by_id = mock_xcalloc(t->n_devices ? t->n_devices : 1, sizeof(*t->by_id));
    for (size_t i = 0; i < t->n_devices; i++) {
        struct mock_device *d = &t->devices[i];
        char ts[MOCK_TS_LEN + 1];

        d->index = (unsigned)i;
        mock_data_uuid(d->id, "device", token, d->index, 0);
        /* Alternate locations, then fill each location's rooms in turn. */
        d->location = d->index % MOCK_LOCATIONS;
        d->room = (d->index / MOCK_LOCATIONS) % MOCK_ROOMS;
        d->has_temperature = d->index % 2 == 0;
        d->switch_on = false;
        d->level = 50;
        d->temperature = 18 + (int)(d->index % 8);
        data_format_time(ts, DATA_REPORTED_EPOCH + (time_t)i, 0);
        memcpy(d->switch_ts, ts, sizeof(ts));
        memcpy(d->level_ts, ts, sizeof(ts));
        memcpy(d->temperature_ts, ts, sizeof(ts));
        memcpy(d->health_ts, ts, sizeof(ts));
        t->by_id[i] = d;
    }
    /* Ids are hashes, so they are not in index order: sort a second view for lookups, which
     * benchmarks with thousands of devices make on every status read. */
    qsort(t->by_id, t->n_devices, sizeof(*t->by_id), data_compare_device_ids);
    return t;
}

struct mock_tenant *mock_data_tenant(const char *token)
{
    unsigned b = data_token_bucket(token);
    struct mock_tenant *t;

    for (t = data_tenants[b]; t != NULL; t = t->next) {
        if (strcmp(t->token, token) == 0)
            return t;
    }
    t = data_tenant_create(token);
    t->next = data_tenants[b];
    data_tenants[b] = t;
    return t;
}

void mock_data_shutdown(void)
{
    for (unsigned b = 0; b < DATA_TENANT_BUCKETS; b++) {
        struct mock_tenant *t = data_tenants[b];

        while (t != NULL) {
            struct mock_tenant *next = t->next;

            free(t->token);
            free(t->devices);
            free(t->by_id);
            free(t);
            t = next;
        }
        data_tenants[b] = NULL;
    }
}

/* ---- lookups ------------------------------------------------------------------------------ */

struct mock_device *mock_data_find_device(struct mock_tenant *t, const char *id)
{
    struct mock_device key;
    struct mock_device *keyp = &key;
    struct mock_device **found;

    /* Anything but a 36-character id cannot match, and must not overrun key.id. */
    if (strlen(id) != MOCK_ID_LEN)
        return NULL;
    memcpy(key.id, id, MOCK_ID_LEN + 1);
    found = bsearch(&keyp, t->by_id, t->n_devices, sizeof(*t->by_id), data_compare_device_ids);
    return found ? *found : NULL;
}

const struct mock_location *mock_data_find_location(const struct mock_tenant *t, const char *id)
{
    for (unsigned l = 0; l < MOCK_LOCATIONS; l++) {
        if (strcmp(t->locations[l].id, id) == 0)
            return &t->locations[l];
    }
    return NULL;
}

bool mock_data_find_room(const struct mock_location *loc, const char *id, unsigned *room)
{
    for (unsigned r = 0; r < MOCK_ROOMS; r++) {
        if (strcmp(loc->room_ids[r], id) == 0) {
            *room = r;
            return true;
        }
    }
    return false;
}

bool mock_data_find_scene(const struct mock_tenant *t, const char *id, unsigned *location,
                          unsigned *scene)
{
    for (unsigned l = 0; l < MOCK_LOCATIONS; l++) {
        for (unsigned s = 0; s < MOCK_SCENES; s++) {
            if (strcmp(t->locations[l].scene_ids[s], id) == 0) {
                *location = l;
                *scene = s;
                return true;
            }
        }
    }
    return false;
}

/* Whether device d has capability cap: all have every one but temperature. */
static bool data_device_has(const struct mock_device *d, enum data_capability_index cap)
{
    return cap != CAP_TEMPERATURE || d->has_temperature;
}

/* Returns the capability's index, or CAP_COUNT when the device does not have it. */
static enum data_capability_index data_device_capability(const struct mock_device *d,
                                                         const char *id)
{
    for (int c = 0; c < CAP_COUNT; c++) {
        if (strcmp(data_capabilities[c].id, id) == 0)
            return data_device_has(d, c) ? (enum data_capability_index)c : CAP_COUNT;
    }
    return CAP_COUNT;
}

bool mock_data_device_has_capability(const struct mock_device *d, const char *capability)
{
    return data_device_capability(d, capability) != CAP_COUNT;
}

/* ---- state changes -------------------------------------------------------------------------- */

void mock_data_set_switch(struct mock_device *d, bool on)
{
    d->switch_on = on;
    mock_data_timestamp_now(d->switch_ts);
}

void mock_data_set_level(struct mock_device *d, int level)
{
    d->level = level;
    mock_data_timestamp_now(d->level_ts);
}

void mock_data_execute_scene(struct mock_tenant *t, unsigned location)
{
    for (size_t i = 0; i < t->n_devices; i++) {
        if (t->devices[i].location == location)
            mock_data_set_switch(&t->devices[i], true);
    }
}

/* ---- JSON ---------------------------------------------------------------------------------- */

/* One capability's attributes with value and timestamp, the shape of the real status API.
 * Every string printed here is a constant or an id/timestamp made here: no escaping needed. */
static void data_capability_status_json(struct evbuffer *out, const struct mock_device *d,
                                        enum data_capability_index cap)
{
    switch (cap) {
    case CAP_SWITCH:
        evbuffer_add_printf(out, "{\"switch\":{\"value\":\"%s\",\"timestamp\":\"%s\"}}",
                            d->switch_on ? "on" : "off", d->switch_ts);
        break;
    case CAP_LEVEL:
        evbuffer_add_printf(out, "{\"level\":{\"value\":%d,\"unit\":\"%%\",\"timestamp\":\"%s\"}}",
                            d->level, d->level_ts);
        break;
    case CAP_TEMPERATURE:
        evbuffer_add_printf(out,
                            "{\"temperature\":{\"value\":%d,\"unit\":\"C\",\"timestamp\":\"%s\"}}",
                            d->temperature, d->temperature_ts);
        break;
    case CAP_HEALTH:
        evbuffer_add_printf(
            out,
            "{\"DeviceWatch-DeviceStatus\":{\"value\":\"online\",\"data\":{},\"timestamp\":\"%s\"},"
            "\"checkInterval\":{\"value\":60,\"unit\":\"s\",\"data\":{\"deviceScheme\":"
            "\"UNTRACKED\",\"protocol\":\"cloud\"},\"timestamp\":\"%s\"},"
            "\"healthStatus\":{\"value\":null},\"DeviceWatch-Enroll\":{\"value\":null}}",
            d->health_ts, d->health_ts);
        break;
    case CAP_COUNT:
        evbuffer_add(out, "{}", 2);
        break;
    }
}

/* The status of component "main", the only component a mock device has. */
static void data_main_status_json(struct evbuffer *out, const struct mock_device *d)
{
    const char *sep = "";

    evbuffer_add(out, "{", 1);
    for (int c = 0; c < CAP_COUNT; c++) {
        if (!data_device_has(d, c))
            continue;
        evbuffer_add_printf(out, "%s\"%s\":", sep, data_capabilities[c].id);
        data_capability_status_json(out, d, c);
        sep = ",";
    }
    evbuffer_add(out, "}", 1);
}

void mock_data_status_json(struct evbuffer *out, const struct mock_device *d)
{
    evbuffer_add_printf(out, "{\"components\":{\"main\":");
    data_main_status_json(out, d);
    evbuffer_add(out, "}}", 2);
}

bool mock_data_component_status_json(struct evbuffer *out, const struct mock_device *d,
                                     const char *component)
{
    if (strcmp(component, "main") != 0)
        return false;
    data_main_status_json(out, d);
    return true;
}

bool mock_data_capability_status_json(struct evbuffer *out, const struct mock_device *d,
                                      const char *component, const char *capability)
{
    enum data_capability_index cap = data_device_capability(d, capability);

    if (strcmp(component, "main") != 0 || cap == CAP_COUNT)
        return false;
    data_capability_status_json(out, d, cap);
    return true;
}

void mock_data_health_json(struct evbuffer *out, const struct mock_device *d)
{
    evbuffer_add_printf(out,
                        "{\"deviceId\":\"%s\",\"state\":\"ONLINE\",\"lastUpdatedDate\":\"%s\"}",
                        d->id, d->health_ts);
}

/* The device description: the fields the real API returns for a cloud-connected (VIPER) device,
 * so clients that parse real answers parse these. With MOCK_DEVICE_WITH_STATUS each component
 * carries its "status", which is how includeStatus=true is believed to look (unconfirmed). */
void mock_data_device_json(struct evbuffer *out, const struct mock_tenant *t,
                           const struct mock_device *d, unsigned detail)
{
    const struct mock_location *loc = &t->locations[d->location];
    char created[MOCK_TS_LEN + 1];
    const char *sep = "";

    data_format_time(created, DATA_CREATED_EPOCH + 60 * (time_t)d->index, 0);
    evbuffer_add_printf(out,
                        "{\"deviceId\":\"%s\",\"name\":\"mock-device-%u\",\"label\":\"Device %u\","
                        "\"manufacturerName\":\"SmartThingsCommunity\",\"presentationId\":\"%s\","
                        "\"deviceManufacturerCode\":\"stmock\",\"locationId\":\"%s\","
                        "\"ownerId\":\"%s\",\"roomId\":\"%s\",",
                        d->id, d->index, d->index, data_presentation_ids[d->has_temperature],
                        loc->id, t->owner_id, loc->room_ids[d->room]);
    evbuffer_add_printf(out, "\"components\":[{\"id\":\"main\",\"label\":\"main\","
                             "\"capabilities\":[");
    for (int c = 0; c < CAP_COUNT; c++) {
        if (!data_device_has(d, c))
            continue;
        evbuffer_add_printf(out, "%s{\"id\":\"%s\",\"version\":1}", sep, data_capabilities[c].id);
        sep = ",";
    }
    evbuffer_add_printf(out, "],\"categories\":[{\"name\":\"Light\",\"categoryType\":"
                             "\"manufacturer\"}]");
    if (detail & MOCK_DEVICE_WITH_STATUS) {
        evbuffer_add_printf(out, ",\"status\":");
        data_main_status_json(out, d);
    }
    evbuffer_add_printf(out,
                        "}],\"createTime\":\"%s\",\"profile\":{\"id\":\"%s\"},"
                        "\"viper\":{\"uniqueIdentifier\":\"mock-%u\",\"manufacturerName\":"
                        "\"stmock\",\"modelName\":\"%s\",\"swVersion\":\"1.0\","
                        "\"hwVersion\":\"1.0\"},\"type\":\"VIPER\",\"restrictionTier\":0,"
                        "\"allowed\":[],\"executionContext\":\"CLOUD\"",
                        created, data_profile_ids[d->has_temperature], d->index,
                        d->has_temperature ? "Mock Dimmer with Sensor" : "Mock Dimmer");
    if (detail & MOCK_DEVICE_WITH_HEALTH) {
        evbuffer_add_printf(out,
                            ",\"healthState\":{\"state\":\"ONLINE\",\"lastUpdatedDate\":\"%s\"}",
                            d->health_ts);
    }
    evbuffer_add(out, "}", 1);
}

void mock_data_location_summary_json(struct evbuffer *out, const struct mock_location *loc)
{
    evbuffer_add_printf(out, "{\"locationId\":\"%s\",\"name\":\"%s\"}", loc->id, loc->name);
}

void mock_data_location_json(struct evbuffer *out, const struct mock_tenant *t,
                             const struct mock_location *loc)
{
    evbuffer_add_printf(out,
                        "{\"locationId\":\"%s\",\"name\":\"%s\",\"countryCode\":\"GBR\","
                        "\"latitude\":51.5072,\"longitude\":-0.1276,\"regionRadius\":150,"
                        "\"temperatureScale\":\"C\",\"timeZoneId\":\"Europe/London\","
                        "\"locale\":\"en-GB\",\"backgroundImage\":null,\"additionalProperties\":{},"
                        "\"parent\":{\"type\":\"ACCOUNT\",\"id\":\"%s\"},"
                        "\"created\":\"2024-01-01T00:00:00.000Z\","
                        "\"lastModified\":\"2024-01-01T00:00:00.000Z\"}",
                        loc->id, loc->name, t->owner_id);
}

void mock_data_room_json(struct evbuffer *out, const struct mock_location *loc, unsigned room)
{
    evbuffer_add_printf(out,
                        "{\"roomId\":\"%s\",\"locationId\":\"%s\",\"name\":\"%s\","
                        "\"backgroundImage\":null,\"created\":\"2024-01-01T00:00:00.000Z\","
                        "\"lastModified\":\"2024-01-01T00:00:00.000Z\"}",
                        loc->room_ids[room], loc->id, data_room_names[room]);
}

void mock_data_mode_json(struct evbuffer *out, const struct mock_location *loc, unsigned mode)
{
    evbuffer_add_printf(out, "{\"id\":\"%s\",\"label\":\"%s\",\"name\":\"%s\"}",
                        loc->mode_ids[mode], data_mode_names[mode], data_mode_names[mode]);
}

void mock_data_scene_json(struct evbuffer *out, const struct mock_location *loc, unsigned scene)
{
    /* The scenes API reports dates as epoch milliseconds, unlike the devices API. */
    evbuffer_add_printf(out,
                        "{\"sceneId\":\"%s\",\"sceneName\":\"%s\",\"sceneIcon\":\"204\","
                        "\"sceneColor\":null,\"locationId\":\"%s\",\"createdBy\":\"stmock\","
                        "\"createdDate\":%lld000,\"lastUpdatedDate\":%lld000,"
                        "\"lastExecutedDate\":null,\"editable\":false,\"apiVersion\":\"20200501\"}",
                        loc->scene_ids[scene], data_scene_names[scene], loc->id,
                        (long long)DATA_CREATED_EPOCH, (long long)DATA_CREATED_EPOCH);
}

bool mock_data_capability_definition_json(struct evbuffer *out, const char *id, const char *version)
{
    /* Every mock capability exists in version 1 only. */
    if (strcmp(version, "1") != 0)
        return false;
    for (int c = 0; c < CAP_COUNT; c++) {
        if (strcmp(data_capabilities[c].id, id) != 0)
            continue;
        evbuffer_add_printf(out,
                            "{\"id\":\"%s\",\"version\":1,\"status\":\"live\",\"name\":\"%s\","
                            "\"ephemeral\":false,%s}",
                            data_capabilities[c].id, data_capabilities[c].name,
                            data_capabilities[c].definition);
        return true;
    }
    return false;
}

void mock_data_presentation_json(struct evbuffer *out, const struct mock_device *d)
{
    const char *pid = data_presentation_ids[d->has_temperature];
    const char *sep = "";

    evbuffer_add_printf(out,
                        "{\"manufacturerName\":\"SmartThingsCommunity\",\"presentationId\":\"%s\","
                        "\"mnmn\":\"SmartThingsCommunity\",\"vid\":\"%s\",\"type\":\"profile\","
                        "\"iconUrl\":null,\"dashboard\":{\"states\":[{\"label\":"
                        "\"{{switch.value}}\",\"capability\":\"switch\",\"version\":1,"
                        "\"component\":\"main\"}],\"actions\":[{\"displayType\":\"toggleSwitch\","
                        "\"capability\":\"switch\",\"version\":1,\"component\":\"main\"}]},"
                        "\"detailView\":[",
                        pid, pid);
    for (int c = 0; c < CAP_COUNT; c++) {
        if (!data_device_has(d, c))
            continue;
        evbuffer_add_printf(out, "%s{\"capability\":\"%s\",\"version\":1,\"component\":\"main\"}",
                            sep, data_capabilities[c].id);
        sep = ",";
    }
    evbuffer_add_printf(out, "],\"automation\":{\"conditions\":[],\"actions\":[]}}");
}
