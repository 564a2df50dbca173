/*
 * test_route.c: request-target checks and path classification.
 */
#include <stdlib.h>

#include "route.h"
#include "tap.h"

static void expect_class(const char *target, enum route_class cls, const char *device)
{
    struct route r;
    char name[256];
    enum route_status st = route_parse(target, "proxy:8080", &r);

    snprintf(name, sizeof(name), "%s is %s", target, route_class_name(cls));
    if (!tap_ok(st == ROUTE_OK && r.cls == cls, name))
        printf("# status %d class %s\n", st, st == ROUTE_OK ? route_class_name(r.cls) : "-");
    if (device != NULL) {
        snprintf(name, sizeof(name), "%s names device %s", target, device);
        tap_is_str(st == ROUTE_OK ? r.device_id : NULL, device, name);
    }
    route_free(&r);
}

static void expect_refused(const char *target, enum route_status want)
{
    struct route r;
    char name[256];
    enum route_status st = route_parse(target, "proxy:8080", &r);

    snprintf(name, sizeof(name), "%s is refused", target);
    tap_is_int(st, want, name);
    route_free(&r);
}

int main(void)
{
    struct route r;

    /* both path styles, every class */
    expect_class("/devices", ROUTE_DEVICES, NULL);
    expect_class("/v1/devices", ROUTE_DEVICES, NULL);
    expect_class("/devices?capability=switch&capability=lock", ROUTE_DEVICES, NULL);
    expect_class("/devices/abc-1", ROUTE_DEVICE, "abc-1");
    expect_class("/v1/devices/abc-1/status", ROUTE_DEVICE_STATUS, "abc-1");
    expect_class("/devices/abc-1/components/main/status", ROUTE_COMPONENT_STATUS, "abc-1");
    expect_class("/v1/devices/abc-1/components/main/capabilities/switch/status",
                 ROUTE_CAPABILITY_STATUS, "abc-1");
    expect_class("/devices/abc-1/health", ROUTE_DEVICE_HEALTH, "abc-1");
    expect_class("/devices/abc-1/commands", ROUTE_DEVICE_COMMANDS, "abc-1");
    expect_class("/v1/devices/abc-1/events", ROUTE_DEVICE_EVENTS, "abc-1");
    expect_class("/devices/abc-1/preferences", ROUTE_DEVICE_OTHER, "abc-1");
    expect_class("/locations", ROUTE_LOCATIONS, NULL);
    expect_class("/v1/locations/loc-1", ROUTE_LOCATIONS, NULL);
    expect_class("/locations/loc-1/rooms/r1", ROUTE_ROOMS, NULL);
    expect_class("/locations/loc-1/modes/current", ROUTE_MODES, NULL);
    expect_class("/scenes?locationId=loc-1", ROUTE_SCENES, NULL);
    expect_class("/v1/scenes/s-1/execute", ROUTE_SCENE_EXECUTE, NULL);
    expect_class("/capabilities/switch/1", ROUTE_CAPABILITIES, NULL);
    expect_class("/presentation?deviceId=abc", ROUTE_PRESENTATION, NULL);
    expect_class("/apps", ROUTE_OTHER, NULL);
    expect_refused("/v1", ROUTE_NOT_API);
    expect_refused("/v1x/devices", ROUTE_NOT_API);

    /* path and query are kept as received */
    tap_ok(route_parse("/v1/devices?max=2&page=1", NULL, &r) == ROUTE_OK, "parse with query");
    tap_is_str(r.path, "/v1/devices", "path without the query");
    tap_is_str(r.query, "max=2&page=1", "raw query");
    tap_ok(r.versioned, "/v1 is noted");
    route_free(&r);

    /* absolute-form: only for the proxy's own host */
    tap_ok(route_parse("http://proxy:8080/devices?max=1", "proxy:8080", &r) == ROUTE_OK,
           "absolute-form naming this proxy is accepted");
    tap_is_str(r.path, "/devices", "absolute-form keeps the path");
    tap_is_str(r.query, "max=1", "absolute-form keeps the query");
    route_free(&r);
    expect_refused("http://evil.example/devices", ROUTE_FOREIGN_HOST);
    expect_refused("https://api.smartthings.com/devices", ROUTE_FOREIGN_HOST);
    expect_refused("http://user@proxy:8080/devices", ROUTE_FOREIGN_HOST);
    expect_refused("http://proxy:8081/devices", ROUTE_FOREIGN_HOST);
    /* a client that sends Host: evil.example cannot make evil.example "us" */
    /* only the API's own resource roots are forwarded */
    tap_is_int(route_parse("/robots.txt", NULL, &r), ROUTE_NOT_API, "a path outside the API");
    tap_is_int(route_parse("/", NULL, &r), ROUTE_NOT_API, "the bare root is not the API");
    tap_is_int(route_parse("/v1", NULL, &r), ROUTE_NOT_API, "nor is /v1 alone");
    tap_is_int(route_parse("/v1/etc/passwd", NULL, &r), ROUTE_NOT_API, "an unknown root under /v1");
    tap_is_int(route_parse("/apps/x?y=1", NULL, &r), ROUTE_OK, "other API roots are forwarded");
    route_free(&r);
    tap_is_int(route_parse("/v1/installedapps/x/subscriptions", NULL, &r), ROUTE_OK,
               "with /v1 too");
    route_free(&r);
    tap_is_int(route_parse("http://evil.example/devices", "127.0.0.1:8080", &r), ROUTE_FOREIGN_HOST,
               "absolute-form judged against the listen address only");
    route_free(&r);
    expect_refused("ftp://proxy:8080/devices", ROUTE_BAD_TARGET);
    expect_refused("api.smartthings.com:443", ROUTE_BAD_TARGET);

    /* path tricks are refused the same way for every later use */
    expect_refused("", ROUTE_BAD_TARGET);
    expect_refused("*", ROUTE_BAD_TARGET);
    expect_refused("/devices/../apps", ROUTE_BAD_TARGET);
    expect_refused("/devices/%2e%2e/apps", ROUTE_BAD_TARGET);
    expect_refused("/devices/.%2E/apps", ROUTE_BAD_TARGET);
    expect_refused("/devices/./x", ROUTE_BAD_TARGET);
    expect_refused("/devices//x", ROUTE_BAD_TARGET);
    expect_refused("//evil.example/devices", ROUTE_BAD_TARGET);
    expect_refused("/devices/a%2fb/status", ROUTE_BAD_TARGET);
    expect_refused("/devices/a%5Cb", ROUTE_BAD_TARGET);
    expect_refused("/devices/a%00", ROUTE_BAD_TARGET);
    expect_refused("/devices/a%zz", ROUTE_BAD_TARGET);
    expect_refused("/devices/a\\b", ROUTE_BAD_TARGET);
    expect_refused("/devices/a b", ROUTE_BAD_TARGET);
    expect_refused("/devices\r\nX-Injected: 1", ROUTE_BAD_TARGET);
    expect_refused("/devices?x=1\r\nX-Injected: 1", ROUTE_BAD_TARGET);
    expect_refused("/devices#frag", ROUTE_BAD_TARGET);
    expect_class("/devices/", ROUTE_DEVICES, NULL);
    expect_class("/devices/a%20b", ROUTE_DEVICE, "a%20b");
    return tap_done();
}
