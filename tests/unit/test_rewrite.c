/*
 * test_rewrite.c: the pagination link rewrite.
 */
#include <stdlib.h>

#include <event2/buffer.h>

#include "rewrite.h"
#include "tap.h"

#define FROM "https://api.smartthings.com"
#define TO   "http://127.0.0.1:8080"

/* Runs the rewrite; returns a malloc'd result, or NULL when unchanged. */
static char *run(const char *in)
{
    struct evbuffer *out = evbuffer_new();
    char *s = NULL;

    if (rewrite_links(in, strlen(in), FROM, TO, out)) {
        size_t len = evbuffer_get_length(out);
        s = malloc(len + 1);
        evbuffer_remove(out, s, len);
        s[len] = '\0';
    } else {
        tap_ok(evbuffer_get_length(out) == 0, "nothing written when unchanged");
    }
    evbuffer_free(out);
    return s;
}

static void expect(const char *in, const char *want, const char *name)
{
    char *got = run(in);
    tap_is_str(got, want, name);
    free(got);
}

int main(void)
{
    expect("{\"items\":[],\"_links\":{\"next\":{\"href\":\"https://api.smartthings.com/devices"
           "?page=1&max=200\"}}}",
           "{\"items\":[],\"_links\":{\"next\":{\"href\":\"http://127.0.0.1:8080/devices"
           "?page=1&max=200\"}}}",
           "next link rewritten");
    expect("{ \"_links\" : { \"previous\" : { \"href\" : \"https://api.smartthings.com/v1/"
           "devices?page=0\" }, \"next\": {\"href\": \"https://api.smartthings.com/v1/devices?"
           "page=2\"}},\n \"items\": [{\"deviceId\":\"x\",\"href\":\"https://api.smartthings.com/"
           "keep\"}] }",
           "{ \"_links\" : { \"previous\" : { \"href\" : \"http://127.0.0.1:8080/v1/"
           "devices?page=0\" }, \"next\": {\"href\": \"http://127.0.0.1:8080/v1/devices?"
           "page=2\"}},\n \"items\": [{\"deviceId\":\"x\",\"href\":\"https://api.smartthings.com/"
           "keep\"}] }",
           "both links rewritten, spacing and other hrefs untouched");
    expect(
        "{\"_links\":{\"next\":{\"href\":\"https:\\/\\/api.smartthings.com\\/devices?page=1\"}}}",
        "{\"_links\":{\"next\":{\"href\":\"http://127.0.0.1:8080\\/devices?page=1\"}}}",
        "escaped slashes matched");
    expect("{\"_links\":{\"next\":{\"href\":\"HTTPS://API.SmartThings.com:443/devices\"}}}",
           "{\"_links\":{\"next\":{\"href\":\"http://127.0.0.1:8080/devices\"}}}",
           "case and default port ignored");
    expect("{\"_links\":{\"next\":{\"href\":\"https://api.smartthings.com\"}}}",
           "{\"_links\":{\"next\":{\"href\":\"http://127.0.0.1:8080\"}}}", "bare origin");
    expect("{\"_links\":{\"next\":{\"href\":\"https://api.smartthings.com.evil.example/x\"}}}",
           NULL, "a longer host is not the upstream");
    expect("{\"_links\":{\"next\":{\"href\":\"https://other.example/devices\"}}}", NULL,
           "other origins untouched");
    expect("{\"_links\":{\"next\":{\"href\":\"/devices?page=1\"}}}", NULL, "relative untouched");
    expect("{\"_links\":{},\"items\":[]}", NULL, "empty links");
    expect("{\"items\":[{\"_links\":{\"next\":{\"href\":\"https://api.smartthings.com/x\"}}}]}",
           NULL, "only top-level _links");
    expect("{\"_links\":{\"next\":{\"href\":\"https://api.smartthings.com/x\"}", NULL,
           "truncated JSON left alone");
    expect("[{\"_links\":1}]", NULL, "an array is left alone");
    expect("not json https://api.smartthings.com \"_links\"", NULL, "text is left alone");
    expect("{\"_links\":{\"next\":null,\"self\":{\"href\":\"https://api.smartthings.com/a\","
           "\"x\":[1,{\"href\":2}]}}}",
           "{\"_links\":{\"next\":null,\"self\":{\"href\":\"http://127.0.0.1:8080/a\","
           "\"x\":[1,{\"href\":2}]}}}",
           "nested values skipped correctly");
    return tap_done();
}
