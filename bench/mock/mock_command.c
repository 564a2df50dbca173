/*
 * mock_command.c: POST /devices/{id}/commands. Parses the body with jsmn (this is the one file
 * that includes jsmn's implementation), checks every command first, and only then applies them,
 * so a body with one bad command changes nothing, as a 400 from the real API would. Owns no
 * state: the device belongs to its tenant in mock_data.c, the token array lives for one call.
 */
#include "mock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

/* More tokens than this in a commands body is an abuse, not a test. */
#define COMMAND_MAX_TOKENS 65536

/* What one checked command will do to the device. */
enum command_action {
    COMMAND_IGNORE,     /* valid but unknown here (other component, capability or command) */
    COMMAND_SWITCH_ON,  /* switch.on */
    COMMAND_SWITCH_OFF, /* switch.off */
    COMMAND_SET_LEVEL,  /* switchLevel.setLevel(level) */
};

/* One checked command, waiting for the rest of the body to be checked. */
struct command_step {
    enum command_action action;
    int level; /* for COMMAND_SET_LEVEL */
};

/* A parsed body: the text and its tokens. */
struct command_doc {
    const char *text;
    jsmntok_t *tok;
    int n_tok;
};

/* Returns the index just past token i and everything nested in it. jsmn gives an object's key
 * one child (its value), so the same walk skips keys with their values. */
static int command_skip(const struct command_doc *doc, int i)
{
    int children = doc->tok[i].size;

    i++;
    while (children-- > 0 && i < doc->n_tok)
        i = command_skip(doc, i);
    return i;
}

static bool command_token_is(const struct command_doc *doc, int i, const char *s)
{
    const jsmntok_t *t = &doc->tok[i];
    size_t len = strlen(s);

    return t->type == JSMN_STRING && (size_t)(t->end - t->start) == len &&
           memcmp(doc->text + t->start, s, len) == 0;
}

/* Finds key in the object at token obj; returns its value's index or -1. */
static int command_member(const struct command_doc *doc, int obj, const char *key)
{
    int i = obj + 1;

    for (int k = 0; k < doc->tok[obj].size && i < doc->n_tok; k++) {
        if (command_token_is(doc, i, key))
            return i + 1;
        i = command_skip(doc, i);
    }
    return -1;
}

/* Reads the number at token i as an integer level 0..100. */
static MOCK_MUSTCHECK bool command_level(const struct command_doc *doc, int i, int *level)
{
    const jsmntok_t *t = &doc->tok[i];
    char buf[32];
    size_t len = (size_t)(t->end - t->start);
    char *end;
    double v;

    if (t->type != JSMN_PRIMITIVE || len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, doc->text + t->start, len);
    buf[len] = '\0';
    v = strtod(buf, &end);
    if (*end != '\0' || !isfinite(v) || v < 0 || v > 100)
        return false;
    *level = (int)(v + 0.5); /* v >= 0, so this rounds to nearest */
    return true;
}

/* Checks the command object at token i and decides its action. */
static MOCK_MUSTCHECK bool command_check(const struct command_doc *doc, int i,
                                         struct command_step *step, char *why, size_t why_size)
{
    int component, capability, command, arguments;

    step->action = COMMAND_IGNORE;
    if (doc->tok[i].type != JSMN_OBJECT) {
        snprintf(why, why_size, "each command must be an object");
        return false;
    }
    component = command_member(doc, i, "component");
    capability = command_member(doc, i, "capability");
    command = command_member(doc, i, "command");
    arguments = command_member(doc, i, "arguments");
    if (capability < 0 || doc->tok[capability].type != JSMN_STRING || command < 0 ||
        doc->tok[command].type != JSMN_STRING) {
        snprintf(why, why_size, "each command needs string capability and command fields");
        return false;
    }
    if (component >= 0 && doc->tok[component].type != JSMN_STRING) {
        snprintf(why, why_size, "component must be a string");
        return false;
    }
    if (arguments >= 0 && doc->tok[arguments].type != JSMN_ARRAY) {
        snprintf(why, why_size, "arguments must be an array");
        return false;
    }
    /* component is optional and means "main" when missing, as in the real API. */
    if (component >= 0 && !command_token_is(doc, component, "main"))
        return true;

    if (command_token_is(doc, capability, "switch")) {
        if (command_token_is(doc, command, "on"))
            step->action = COMMAND_SWITCH_ON;
        else if (command_token_is(doc, command, "off"))
            step->action = COMMAND_SWITCH_OFF;
    } else if (command_token_is(doc, capability, "switchLevel") &&
               command_token_is(doc, command, "setLevel")) {
        if (arguments < 0 || doc->tok[arguments].size < 1 ||
            !command_level(doc, arguments + 1, &step->level)) {
            snprintf(why, why_size, "setLevel needs a level argument between 0 and 100");
            return false;
        }
        step->action = COMMAND_SET_LEVEL;
    }
    return true;
}

/* Parses text into doc (tokens allocated here, freed by the caller). */
static MOCK_MUSTCHECK bool command_parse(struct command_doc *doc, const char *text, size_t len,
                                         char *why, size_t why_size)
{
    jsmn_parser parser;
    int n;

    doc->text = text;
    jsmn_init(&parser);
    n = jsmn_parse(&parser, text, len, NULL, 0);
    if (n <= 0 || n > COMMAND_MAX_TOKENS) {
        snprintf(why, why_size, "body is not valid JSON");
        return false;
    }
    doc->tok = mock_xcalloc((size_t)n, sizeof(*doc->tok));
    jsmn_init(&parser);
    doc->n_tok = jsmn_parse(&parser, text, len, doc->tok, (unsigned)n);
    /* jsmn accepts several values in a row; a body is exactly one object. */
    if (doc->n_tok != n || doc->tok[0].type != JSMN_OBJECT || command_skip(doc, 0) != n) {
        snprintf(why, why_size, "body must be one JSON object");
        return false;
    }
    return true;
}

bool mock_command_run(struct mock_device *d, const char *body, size_t len, struct evbuffer *out,
                      char *why, size_t why_size)
{
    static unsigned long long command_seq; /* makes each result id unique in this process */
    struct command_doc doc = {0};
    struct command_step *steps = NULL;
    int list, n_steps = 0;
    bool ok = false;

    if (!command_parse(&doc, body, len, why, why_size))
        goto done;
    list = command_member(&doc, 0, "commands");
    if (list < 0 || doc.tok[list].type != JSMN_ARRAY || doc.tok[list].size == 0) {
        snprintf(why, why_size, "commands must be a non-empty array");
        goto done;
    }
    n_steps = doc.tok[list].size;
    steps = mock_xcalloc((size_t)n_steps, sizeof(*steps));
    for (int k = 0, i = list + 1; k < n_steps; k++, i = command_skip(&doc, i)) {
        if (!command_check(&doc, i, &steps[k], why, why_size))
            goto done;
    }

    evbuffer_add_printf(out, "{\"results\":[");
    for (int k = 0; k < n_steps; k++) {
        char id[MOCK_ID_LEN + 1];

        switch (steps[k].action) {
        case COMMAND_SWITCH_ON:
            mock_data_set_switch(d, true);
            break;
        case COMMAND_SWITCH_OFF:
            mock_data_set_switch(d, false);
            break;
        case COMMAND_SET_LEVEL:
            mock_data_set_level(d, steps[k].level);
            break;
        case COMMAND_IGNORE:
            break;
        }
        command_seq++;
        mock_data_uuid(id, "command", "", (unsigned)(command_seq >> 32), (unsigned)command_seq);
        evbuffer_add_printf(out, "%s{\"id\":\"%s\",\"status\":\"ACCEPTED\"}", k ? "," : "", id);
    }
    evbuffer_add(out, "]}", 2);
    ok = true;
done:
    free(steps);
    free(doc.tok);
    return ok;
}
