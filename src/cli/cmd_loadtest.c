/* bitnet loadtest: a load generator for OpenAI-compatible servers (bitnetd, llama-server, vLLM).
 * Closed-loop users or Poisson open-loop arrivals send streaming chat completions (or
 * completions) over libevent's HTTP client on one event loop; each SSE stream is parsed as it
 * arrives, so TTFT and inter-token latencies are measured when the bytes land. The statistics
 * and the text/JSON reports are in loadtest_stats.c, the HTML report in loadtest_html.c. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/loadtest_html.h"
#include "cli/loadtest_stats.h"

#define MAX_SSE_LINE (1 << 20) /* a longer line is a malformed stream, not a reason to grow */
#define MAX_ERROR_BODY 4096    /* kept of a non-2xx body, for its message */
#define PROGRESS_S 0.5

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet loadtest [options]\n"
            "\n"
            "Sends streaming chat completions (or completions) to an OpenAI-compatible server and\n"
            "reports latency and throughput. Only standard request fields are sent.\n"
            "\n"
            "  --url URL          server base URL (default http://127.0.0.1:30000); /v1/... is appended\n"
            "  --users N          closed loop: N users, each sending its next request when its last\n"
            "                     one ends (default 1)\n"
            "  --rate R           open loop: Poisson arrivals at R requests/s (exclusive with --users)\n"
            "  --requests N       stop once N requests have finished (default, without --duration:\n"
            "                     10 x users; 10 with --rate)\n"
            "  --duration S       stop after S seconds; requests then in flight are cancelled and\n"
            "                     not counted\n"
            "  --max-tokens N     max_tokens of each request (default 64)\n"
            "  --prompts FILE     JSONL, one {\"messages\":[...]} or {\"prompt\":\"...\"} per line, used in turn\n"
            "  --prompt-len N     generated prompts of about N words (default 32)\n"
            "  --endpoint E       chat (/v1/chat/completions, default) or completions (/v1/completions)\n"
            "  --model NAME       the model field (default: the first id of GET /v1/models, else none)\n"
            "  --api-key KEY      sent as \"Authorization: Bearer KEY\"\n"
            "  --priority N       sent as the request's \"priority\" (vLLM's field, bitnetd's: lower runs\n"
            "                     first; <= 0 is interactive)\n"
            "  --group SPEC       closed loop: a group of users with its own settings, repeatable, so one\n"
            "                     run can mix traffic (interactive users while batch users saturate the\n"
            "                     server); reported per group. SPEC is comma-separated KEY=VALUE:\n"
            "                     users=N (default 1), priority=P, api_key=K, max_tokens=M (default: the\n"
            "                     options above), requests=N (this group's own count; once every group\n"
            "                     with one is done the run ends and other groups' requests in flight are\n"
            "                     cancelled), name=NAME (default: its number). Exclusive with --users/--rate\n"
            "  --ignore-eos       send ignore_eos: true (bitnetd, vLLM, llama-server): fixed-length outputs\n"
            "  --temperature T    sampling temperature (default: the server's)\n"
            "  --seed N           seed sent to the server; also seeds generated prompts and arrivals\n"
            "  --timeout S        per-request limit, from sending to the end of the stream (default 60)\n"
            "  --json             the report as one JSON object on stdout\n"
            "  --html FILE        also write a self-contained HTML report: the summary, latency\n"
            "                     histograms, tokens over time per user, errors, parameters\n"
            "  --no-progress      no progress line (shown on stderr only when it is a terminal)\n"
            "  -h, --help         this help\n"
            "\n"
            "Per request: TTFT (sent to first content chunk), ITL (between content chunks), E2E (sent\n"
            "to end of stream), completion tokens (the usage chunk, else the content chunks) and decode\n"
            "tok/s = (completion_tokens - 1) / (e2e - ttft). Output tok/s = all completion tokens /\n"
            "wall time. Latencies and tokens count successful requests only.\n"
            "With --group, --requests bounds all groups together.\n"
            "Exit status: 0 if a request succeeded, 1 if none did, 2 for bad arguments or prompts.\n");
}

/* ---- options ---- */

#define MAX_GROUPS 16
#define GROUP_NAME_MAX 31

/* One --group. Numbers are doubles, -1 when not given. */
typedef struct {
    char name[GROUP_NAME_MAX + 1];
    char api_key[512];          /* "" when not given */
    double users, max_tokens, requests;
    int has_priority, priority;
} group_opt;

/* Numbers are doubles; -1 means "not given" (every valid value is >= 0). */
typedef struct {
    const char *url, *prompts, *api_key, *model, *html;
    int chat, ignore_eos, json, progress;
    double users, rate, requests, duration, max_tokens, prompt_len, temperature, seed, timeout;
    int has_priority, priority;
    group_opt groups[MAX_GROUPS];
    size_t ngroups;
} options;

static const struct {
    const char *name;
    size_t off;
    double lo, hi;
    int integer;
} num_opts[] = {
    {"users", offsetof(options, users), 1, 100000, 1},
    {"rate", offsetof(options, rate), 1e-6, 1e6, 0},
    {"requests", offsetof(options, requests), 1, 1e12, 1},
    {"duration", offsetof(options, duration), 1e-3, 1e9, 0},
    {"max-tokens", offsetof(options, max_tokens), 1, 1e9, 1},
    {"prompt-len", offsetof(options, prompt_len), 1, 1e6, 1},
    {"temperature", offsetof(options, temperature), 0, 1e3, 0},
    {"seed", offsetof(options, seed), 0, 9007199254740992.0, 1},
    {"timeout", offsetof(options, timeout), 1e-3, 1e7, 0},
};
#define N_NUM (sizeof num_opts / sizeof num_opts[0])

/* s as a number in [lo, hi] (an integer if asked): 0, or -1 with the complaint printed. */
static int parse_num(const char *what, const char *s, double lo, double hi, int integer, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi) || (integer && v != floor(v))) {
        fprintf(stderr, "bitnet loadtest: %s: expected %s from %g to %g, got '%s'\n", what,
                integer ? "an integer" : "a number", lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int set_num(options *o, size_t i, const char *s)
{
    char what[64];
    snprintf(what, sizeof what, "--%s", num_opts[i].name);
    return parse_num(what, s, num_opts[i].lo, num_opts[i].hi, num_opts[i].integer,
                     (double *)((char *)o + num_opts[i].off));
}

/* Priorities: any int (the server says which it accepts). */
static int parse_priority(const char *what, const char *s, int *out)
{
    double v;
    if (parse_num(what, s, INT_MIN, INT_MAX, 1, &v)) return -1;
    *out = (int)v;
    return 0;
}

static int group_fail(const char *spec, const char *fmt, const char *arg)
{
    fprintf(stderr, "bitnet loadtest: --group '%s': ", spec);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return -1;
}

/* One KEY=VALUE field of a --group. */
static int group_field(const char *spec, group_opt *g, char *key, const char *val, unsigned *seen)
{
    static const char *const keys[] = {"users", "priority", "api_key", "max_tokens", "requests", "name"};
    size_t k = 0;
    while (k < sizeof keys / sizeof keys[0] && strcmp(keys[k], key)) k++;
    if (k == sizeof keys / sizeof keys[0])
        return group_fail(spec, "unknown key '%s' (users, priority, api_key, max_tokens, requests, name)", key);
    if (*seen & (1u << k)) return group_fail(spec, "'%s' given twice", key);
    *seen |= 1u << k;
    char what[64];
    snprintf(what, sizeof what, "--group %s", keys[k]);
    switch (k) {
    case 0: return parse_num(what, val, 1, 100000, 1, &g->users);
    case 1:
        g->has_priority = 1;
        return parse_priority(what, val, &g->priority);
    case 2:
        if (!*val || strlen(val) >= sizeof g->api_key) return group_fail(spec, "%s: empty or too long", key);
        snprintf(g->api_key, sizeof g->api_key, "%s", val);
        return 0;
    case 3: return parse_num(what, val, 1, 1e9, 1, &g->max_tokens);
    case 4: return parse_num(what, val, 1, 1e12, 1, &g->requests);
    default:
        if (!*val || strlen(val) > GROUP_NAME_MAX || strspn(val, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                            "0123456789_.-") != strlen(val))
            return group_fail(spec, "name '%s': 1 to 31 letters, digits, '_', '.' or '-'", val);
        snprintf(g->name, sizeof g->name, "%s", val);
        return 0;
    }
}

/* --group SPEC: "users=N,priority=P,api_key=K,max_tokens=M,requests=N,name=NAME", any order. */
static int parse_group(const char *spec, size_t index, group_opt *g)
{
    char buf[2048];
    *g = (group_opt){.users = 1, .max_tokens = -1, .requests = -1};
    snprintf(g->name, sizeof g->name, "%zu", index + 1);
    if (!*spec) return group_fail(spec, "%s", "empty (users=N,priority=P,...)");
    if (strlen(spec) >= sizeof buf) return group_fail("...", "%s", "longer than 2047 bytes");
    snprintf(buf, sizeof buf, "%s", spec);
    unsigned seen = 0;
    for (char *field = buf, *next; field; field = next) {
        next = strchr(field, ',');
        if (next) *next++ = 0;
        char *eq = strchr(field, '=');
        if (!eq) return group_fail(spec, "'%s' is not KEY=VALUE", field);
        *eq = 0;
        if (group_field(spec, g, field, eq + 1, &seen)) return -1;
    }
    return 0;
}

/* 0: run; 1: help printed; 2: usage error (printed). */
static int parse_args(int argc, char **argv, options *o)
{
    enum { O_URL = 256, O_PROMPTS, O_KEY, O_MODEL, O_ENDPOINT, O_EOS, O_JSON, O_NOPROG, O_HTML, O_PRIO, O_GROUP,
           O_NUM = 512 };
    struct option longopts[N_NUM + 14] = {
        {"url", required_argument, 0, O_URL}, {"prompts", required_argument, 0, O_PROMPTS},
        {"api-key", required_argument, 0, O_KEY}, {"model", required_argument, 0, O_MODEL},
        {"endpoint", required_argument, 0, O_ENDPOINT}, {"ignore-eos", no_argument, 0, O_EOS},
        {"json", no_argument, 0, O_JSON}, {"no-progress", no_argument, 0, O_NOPROG},
        {"html", required_argument, 0, O_HTML}, {"priority", required_argument, 0, O_PRIO},
        {"group", required_argument, 0, O_GROUP}, {"help", no_argument, 0, 'h'}};
    for (size_t i = 0; i < N_NUM; i++)
        longopts[12 + i] = (struct option){num_opts[i].name, required_argument, 0, O_NUM + (int)i};
    *o = (options){.url = "http://127.0.0.1:30000", .chat = 1, .progress = 1};
    for (size_t i = 0; i < N_NUM; i++) *(double *)((char *)o + num_opts[i].off) = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_URL: o->url = optarg; break;
        case O_PROMPTS: o->prompts = optarg; break;
        case O_KEY: o->api_key = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_EOS: o->ignore_eos = 1; break;
        case O_JSON: o->json = 1; break;
        case O_HTML: o->html = optarg; break;
        case O_NOPROG: o->progress = 0; break;
        case O_PRIO:
            if (parse_priority("--priority", optarg, &o->priority)) return 2;
            o->has_priority = 1;
            break;
        case O_GROUP:
            if (o->ngroups == MAX_GROUPS) {
                fprintf(stderr, "bitnet loadtest: at most %d --group options\n", MAX_GROUPS);
                return 2;
            }
            if (parse_group(optarg, o->ngroups, &o->groups[o->ngroups])) return 2;
            o->ngroups++;
            break;
        case O_ENDPOINT:
            if (!strcmp(optarg, "chat") || !strcmp(optarg, "completions")) {
                o->chat = !strcmp(optarg, "chat");
                break;
            }
            fprintf(stderr, "bitnet loadtest: --endpoint: chat or completions, got '%s'\n", optarg);
            return 2;
        case 'h': usage(stdout); return 1;
        default:
            if (c >= O_NUM && c < O_NUM + (int)N_NUM) {
                if (set_num(o, (size_t)(c - O_NUM), optarg)) return 2;
                break;
            }
            usage(stderr);
            return 2;
        }
    }
    const char *why = optind < argc ? "unexpected argument (see --help)"
                    : o->users >= 0 && o->rate >= 0 ? "--users and --rate are exclusive"
                    : o->ngroups && (o->users >= 0 || o->rate >= 0) ? "--group and --users/--rate are exclusive"
                    : o->prompts && o->prompt_len >= 0 ? "--prompts and --prompt-len are exclusive"
                    : NULL;
    for (size_t i = 0; i < o->ngroups && !why; i++)
        for (size_t k = 0; k < i && !why; k++)
            if (!strcmp(o->groups[i].name, o->groups[k].name)) why = "two --group options have the same name";
    if (why) {
        fprintf(stderr, "bitnet loadtest: %s\n", why);
        return 2;
    }
    int own_limits = 0;
    if (o->ngroups) o->users = 0;
    for (size_t i = 0; i < o->ngroups; i++) {
        o->users += o->groups[i].users;
        own_limits |= o->groups[i].requests >= 0;
    }
    if (o->rate < 0 && o->users < 0) o->users = 1;
    if (o->requests < 0 && o->duration < 0 && !own_limits) o->requests = 10 * (o->users > 0 ? o->users : 1);
    if (o->max_tokens < 0) o->max_tokens = 64;
    if (o->prompt_len < 0) o->prompt_len = 32;
    if (o->timeout < 0) o->timeout = 60;
    return 0;
}

/* ---- target URL ---- */

typedef struct {
    char host[256], hosthdr[300], path[1024], models_path[1024];
    int port;
} target;

static int parse_url(const char *url, int chat, target *t, bn_error *err)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    if (!u) return bn_err(err, "--url: cannot parse '%s'", url);
    const char *scheme = evhttp_uri_get_scheme(u), *host = evhttp_uri_get_host(u);
    const char *path = evhttp_uri_get_path(u);
    int rc = 0, port = evhttp_uri_get_port(u);
    if (!scheme || strcasecmp(scheme, "http"))
        rc = bn_err(err, "--url: only http:// URLs are supported, got '%s'", url);
    else if (!host || !*host || strlen(host) >= sizeof t->host) rc = bn_err(err, "--url: no host in '%s'", url);
    if (rc) goto out;
    t->port = port > 0 ? port : 80;
    size_t hl = strlen(host);
    if (host[0] == '[' && host[hl - 1] == ']') snprintf(t->host, sizeof t->host, "%.*s", (int)hl - 2, host + 1);
    else snprintf(t->host, sizeof t->host, "%s", host);
    snprintf(t->hosthdr, sizeof t->hosthdr, "%s:%d", host, t->port);
    /* the base may already end in /v1 (as OpenAI clients' base URLs do) */
    size_t pl = path ? strlen(path) : 0;
    while (pl && path[pl - 1] == '/') pl--;
    const char *v1 = pl >= 3 && !strncmp(path + pl - 3, "/v1", 3) ? "" : "/v1";
    snprintf(t->path, sizeof t->path, "%.*s%s/%s", (int)pl, pl ? path : "", v1,
             chat ? "chat/completions" : "completions");
    snprintf(t->models_path, sizeof t->models_path, "%.*s%s/models", (int)pl, pl ? path : "", v1);
out:
    evhttp_uri_free(u);
    return rc;
}

/* ---- prompts ---- */

/* Each entry is what the request carries: a messages array (chat) or a prompt string. */
typedef struct {
    json_t **v;
    size_t n, cap;
} prompt_set;

static void prompts_free(prompt_set *ps)
{
    for (size_t i = 0; i < ps->n; i++) json_decref(ps->v[i]);
    free(ps->v);
}

static const char *messages_problem(const json_t *m)
{
    if (!json_is_array(m) || !json_array_size(m)) return "\"messages\" must be a non-empty array";
    size_t i;
    json_t *msg;
    json_array_foreach(m, i, msg) {
        json_t *content = json_object_get(msg, "content");
        if (!json_is_string(json_object_get(msg, "role"))) return "each message needs a string \"role\"";
        if (!json_is_string(content) && !json_is_array(content))
            return "each message needs a string or array \"content\"";
    }
    return NULL;
}

/* Validates one JSONL line and turns it into the request's value, or says why not. */
static json_t *prompt_of_line(json_t *j, int chat, const char **why)
{
    json_t *m = json_object_get(j, "messages"), *p = json_object_get(j, "prompt");
    if (!json_is_object(j) || !m == !p) *why = "expected an object with either \"messages\" or \"prompt\"";
    else if (m && !(*why = messages_problem(m)))
        *why = chat ? NULL : "a \"messages\" line needs --endpoint chat";
    else if (!m && (!json_is_string(p) || !json_string_length(p))) *why = "\"prompt\" must be a non-empty string";
    if (*why) return NULL;
    if (m) return json_incref(m);
    if (!chat) return json_incref(p);
    return json_pack("[{s:s,s:O}]", "role", "user", "content", p);
}

static int load_prompts(const char *path, int chat, prompt_set *ps, bn_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return bn_err(err, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        if (!line[strspn(line, " \t\r\n")]) continue;
        json_error_t je;
        const char *why = NULL;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &je), *v = j ? prompt_of_line(j, chat, &why) : NULL;
        json_decref(j);
        if (!j) rc = bn_err(err, "%s:%ld: not JSON: %s", path, lineno, je.text);
        else if (!v) rc = bn_err(err, "%s:%ld: %s", path, lineno, why ? why : "out of memory");
        else if (ps->n == ps->cap) {
            json_t **nv = realloc(ps->v, (ps->cap = ps->cap ? 2 * ps->cap : 64) * sizeof *nv);
            if (!nv) rc = bn_err(err, "out of memory");
            else ps->v = nv;
        }
        if (!rc) ps->v[ps->n++] = v;
        else json_decref(v);
    }
    if (!rc && ferror(f)) rc = bn_err(err, "%s: read error", path);
    if (!rc && !ps->n) rc = bn_err(err, "%s: no prompts in the file", path);
    free(line);
    fclose(f);
    return rc;
}

/* ---- the run ---- */

typedef struct lt_run lt_run;

/* A set of closed-loop users sharing settings: a --group, or the one implicit group of a run
 * without --group (then res is NULL: the run's results are the only ones). */
typedef struct {
    char auth[1024];                 /* the Authorization value, "" for none */
    long max_tokens;
    int has_priority, priority;
    double limit, issued, finished;  /* limit: its own requests=, INFINITY if none */
    bn_lt_results *res;
} lt_group;

/* One connection and the request in flight on it. Callbacks check req: a callback for a
 * request already finished (by our timer or the deadline) finds NULL and does nothing. */
typedef struct {
    lt_run *run;
    struct evhttp_connection *conn;
    struct evhttp_request *req;
    struct event *timer, *next;  /* per-request timeout; closed loop: start the next request */
    struct evbuffer *buf, *data; /* unparsed response bytes; the current SSE event's data */
    double t_start, t_first, t_last;
    long chunks, usage_completion, usage_prompt;
    int status, got_headers, done_marker, finish_reason, fail; /* fail: -1 or bn_lt_err */
    int evreq_err; /* 1 + libevent's enum evhttp_request_error; 0: none */
    char fail_msg[160];
    bn_lt_samples itl;
    size_t idx; /* closed loop: the user, and its series in the timeline */
    lt_group *grp;
} lt_slot;

struct lt_run {
    const options *o;
    const prompt_set *ps;
    target t;
    char url[1400], auth[1024];
    const char *model;
    struct event_base *base;
    struct event *arrival, *deadline, *progress, *sigint;
    lt_slot **slots;
    size_t nslots;
    lt_group *groups;
    size_t ngroups, n_limited; /* n_limited: groups with their own requests= */
    double limit, t0, t_end, next_arrival; /* limit: INFINITY with --duration only */
    long issued, inflight, live_chunks;
    struct timeval timeout_tv;
    uint64_t rng;
    time_t started; /* wall clock, for the HTML report */
    int stopping, oom;
    bn_lt_results res;
};

static struct timeval tv_of(double s)
{
    if (s < 0) s = 0;
    return (struct timeval){(time_t)s, (suseconds_t)((s - floor(s)) * 1e6)};
}

static double rand01(lt_run *r) /* splitmix64 */
{
    uint64_t z = (r->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static json_t *generated_prompt(lt_run *r)
{
    static const char *words[] = {
        "the", "a", "river", "city", "light", "stone", "quiet", "market", "north", "winter", "story", "machine",
        "garden", "old", "bright", "bridge", "letter", "window", "morning", "forest", "engine", "small", "harbor",
        "song", "road", "paper", "silver", "mountain", "cloud", "friend", "clock", "library"};
    size_t n = (size_t)r->o->prompt_len, nw = sizeof words / sizeof words[0];
    struct evbuffer *b = evbuffer_new();
    if (!b) return NULL;
    for (size_t i = 0; i < n; i++)
        evbuffer_add_printf(b, i ? " %s" : "%s", words[(size_t)(rand01(r) * (double)nw) % nw]);
    json_t *s = json_stringn((const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    if (!s || !r->o->chat) return s;
    return json_pack("[{s:s,s:o}]", "role", "user", "content", s);
}

static char *request_body(lt_run *r, const lt_group *g, size_t *len)
{
    const options *o = r->o;
    json_t *p = r->ps->n ? json_incref(r->ps->v[(size_t)r->issued % r->ps->n]) : generated_prompt(r);
    json_t *b = json_pack("{s:o,s:I,s:b,s:{s:b}}", o->chat ? "messages" : "prompt", p, "max_tokens",
                          (json_int_t)g->max_tokens, "stream", 1, "stream_options", "include_usage", 1);
    int bad = !b;
    if (!bad && g->has_priority) bad = json_object_set_new(b, "priority", json_integer(g->priority));
    if (!bad && r->model) bad = json_object_set_new(b, "model", json_string(r->model));
    if (!bad && o->temperature >= 0) bad = json_object_set_new(b, "temperature", json_real(o->temperature));
    if (!bad && o->seed >= 0) bad = json_object_set_new(b, "seed", json_integer((json_int_t)o->seed));
    if (!bad && o->ignore_eos) bad = json_object_set_new(b, "ignore_eos", json_true());
    char *s = bad ? NULL : json_dumps(b, JSON_COMPACT);
    json_decref(b);
    *len = s ? strlen(s) : 0;
    return s;
}

static void add_headers(lt_run *r, struct evhttp_request *req, const char *auth)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", r->t.hosthdr);
    evhttp_add_header(h, "User-Agent", "bitnet-loadtest");
    if (auth[0]) evhttp_add_header(h, "Authorization", auth);
}

static void check_done(lt_run *r)
{
    if (r->inflight == 0 && (r->stopping || r->issued >= r->limit)) event_base_loopexit(r->base, NULL);
}

/* May the slot's user send another request? */
static int may_issue(const lt_slot *s)
{
    const lt_run *r = s->run;
    return !r->stopping && r->issued < r->limit && s->grp->issued < s->grp->limit;
}

/* Every group with its own requests= has finished them (never true without such groups). */
static int groups_done(const lt_run *r)
{
    for (size_t i = 0; i < r->ngroups; i++)
        if (r->groups[i].limit < INFINITY && r->groups[i].finished < r->groups[i].limit) return 0;
    return r->n_limited > 0;
}

static void record_ok(bn_lt_results *res, lt_slot *s, double now)
{
    long toks = s->usage_completion >= 0 ? s->usage_completion : s->chunks;
    res->ok++;
    res->completion_tokens += toks;
    if (s->usage_prompt > 0) res->prompt_tokens += s->usage_prompt;
    int bad = bn_lt_samples_push(&res->e2e, now - s->t_start);
    if (s->chunks && res->timeline.nseries) /* the arrivals: the first chunk, then each ITL later */
        bad |= bn_lt_timeline_add(&res->timeline, s->run->o->users > 0 ? s->idx : 0, s->t_first - s->run->t0,
                                  s->itl.v, s->itl.n);
    if (s->chunks) {
        bad |= bn_lt_samples_push(&res->ttft, s->t_first - s->t_start) | bn_lt_samples_extend(&res->itl, &s->itl);
        if (toks >= 2 && now > s->t_first)
            bad |= bn_lt_samples_push(&res->decode, (double)(toks - 1) / (now - s->t_first));
    }
    s->run->oom |= bad;
}

static void stop_now(lt_run *r);

/* Ends the slot's request: kind -1 is success, else a bn_lt_err. Counted in the run and in
 * its group. */
static void finish(lt_slot *s, int kind, int status, const char *msg)
{
    lt_run *r = s->run;
    double now = bn_now();
    s->req = NULL;
    evtimer_del(s->timer);
    r->inflight--;
    r->t_end = now;
    s->grp->finished++;
    bn_lt_results *res[2] = {&r->res, s->grp->res};
    for (int i = 0; i < 2 && res[i]; i++) {
        if (kind < 0) record_ok(res[i], s, now);
        else bn_lt_count_error(res[i], (enum bn_lt_err)kind, status, msg);
    }
    if (!r->stopping && groups_done(r)) {
        stop_now(r); /* the other groups' requests were background load */
        return;
    }
    if (r->o->users > 0 && may_issue(s)) event_active(s->next, EV_TIMEOUT, 1);
    check_done(r);
}

static void fail(lt_slot *s, enum bn_lt_err kind, const char *fmt, const char *arg)
{
    if (s->fail >= 0) return; /* the first problem is the one reported */
    s->fail = (int)kind;
    snprintf(s->fail_msg, sizeof s->fail_msg, fmt, arg);
}

static void on_content(lt_slot *s)
{
    double now = bn_now();
    if (!s->chunks) s->t_first = now;
    else s->run->oom |= bn_lt_samples_push(&s->itl, now - s->t_last);
    s->t_last = now;
    s->chunks++;
    s->run->live_chunks++;
}

/* One SSE event's data: a JSON chunk of the OpenAI stream (or "[DONE]"). */
static void on_event(lt_slot *s, const char *d, size_t n)
{
    if (n == 6 && !memcmp(d, "[DONE]", 6)) {
        s->done_marker = 1;
        return;
    }
    json_t *j = json_loadb(d, n, 0, NULL), *e = json_object_get(j, "error");
    if (!json_is_object(j)) {
        char head[64];
        snprintf(head, sizeof head, "%.*s", (int)(n < 60 ? n : 60), d);
        fail(s, BN_LT_MALFORMED, "data is not a JSON object: %s", head);
    } else if (e) {
        const char *m = json_string_value(json_object_get(e, "message"));
        fail(s, BN_LT_STREAM, "%s", m ? m : json_is_string(e) ? json_string_value(e) : "(no message)");
    }
    json_t *u = json_object_get(j, "usage"), *c0 = json_array_get(json_object_get(j, "choices"), 0);
    if (json_is_integer(json_object_get(u, "completion_tokens")))
        s->usage_completion = (long)json_integer_value(json_object_get(u, "completion_tokens"));
    if (json_is_integer(json_object_get(u, "prompt_tokens")))
        s->usage_prompt = (long)json_integer_value(json_object_get(u, "prompt_tokens"));
    json_t *delta = json_object_get(c0, "delta");
    json_t *text = s->run->o->chat ? json_object_get(delta, "content") : json_object_get(c0, "text");
    if (s->run->o->chat && !json_string_length(text)) text = json_object_get(delta, "reasoning_content");
    if (json_string_length(text)) on_content(s);
    if (json_is_string(json_object_get(c0, "finish_reason"))) s->finish_reason = 1;
    json_decref(j);
}

/* One line of the SSE stream (without its end of line). */
static void on_line(lt_slot *s, const char *line, size_t n)
{
    size_t dn = evbuffer_get_length(s->data);
    if (!n) { /* blank line: the event is complete */
        if (dn && !s->done_marker) on_event(s, (const char *)evbuffer_pullup(s->data, -1), dn);
        evbuffer_drain(s->data, dn);
    } else if (n >= 5 && !memcmp(line, "data:", 5)) {
        size_t skip = 5 + (n > 5 && line[5] == ' ');
        if (dn) evbuffer_add(s->data, "\n", 1);
        evbuffer_add(s->data, line + skip, n - skip);
    } /* else a comment (": ping") or a field an OpenAI stream does not use (event:, id:, retry:) */
}

/* Parses the complete lines buffered so far; at the end, an unterminated last event too. */
static void parse_sse(lt_slot *s, int at_end)
{
    char *line;
    size_t n;
    while (s->fail < 0 && (line = evbuffer_readln(s->buf, &n, EVBUFFER_EOL_CRLF))) {
        on_line(s, line, n);
        free(line);
    }
    size_t left = evbuffer_get_length(s->buf);
    if (s->fail >= 0) evbuffer_drain(s->buf, left); /* the rest of a failed stream is not parsed */
    else if (at_end) {
        if (left) on_line(s, (const char *)evbuffer_pullup(s->buf, -1), left);
        on_line(s, "", 0);
    } else if (left > MAX_SSE_LINE) {
        fail(s, BN_LT_MALFORMED, "an SSE line longer than %s", "1 MiB");
    }
    if (s->fail == BN_LT_MALFORMED) event_active(s->timer, EV_TIMEOUT, 1); /* stop reading now */
}

static int on_headers(struct evhttp_request *req, void *arg)
{
    lt_slot *s = arg;
    s->got_headers = 1;
    s->status = evhttp_request_get_response_code(req);
    return 0;
}

static void on_chunk(struct evhttp_request *req, void *arg)
{
    lt_slot *s = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    if (!s->req) return;
    if (s->status / 100 == 2) {
        evbuffer_add_buffer(s->buf, in);
        parse_sse(s, 0);
    } else if (evbuffer_get_length(s->buf) < MAX_ERROR_BODY) {
        evbuffer_add_buffer(s->buf, in);
    }
}

static void on_error(enum evhttp_request_error e, void *arg)
{
    lt_slot *s = arg;
    if (s->req) s->evreq_err = (int)e + 1; /* 0: none (EVREQ_HTTP_TIMEOUT is 0) */
}

/* A non-2xx response: its OpenAI error message, else the start of its body. */
static void http_failure(lt_slot *s)
{
    char msg[160];
    size_t n = evbuffer_get_length(s->buf);
    const char *body = n ? (const char *)evbuffer_pullup(s->buf, -1) : "";
    json_t *j = json_loadb(body, n, 0, NULL), *e = json_object_get(j, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    if (!m) m = json_string_value(e);
    snprintf(msg, sizeof msg, "HTTP %d: %.*s", s->status, m ? 140 : (int)(n < 100 ? n : 100), m ? m : body);
    json_decref(j);
    finish(s, BN_LT_HTTP, s->status, msg);
}

static void on_done(struct evhttp_request *req, void *arg)
{
    lt_slot *s = arg;
    if (!s->req) return;
    if (!req || !evhttp_request_get_response_code(req)) { /* no complete response */
        if (s->got_headers && s->status / 100 != 2) http_failure(s);
        else if (s->evreq_err == EVREQ_HTTP_TIMEOUT + 1) finish(s, BN_LT_TIMEOUT, 0, "no data for the --timeout");
        else if (!s->got_headers) finish(s, BN_LT_CONNECT, 0, "connection failed or closed before a response");
        else if (s->fail >= 0) finish(s, s->fail, 0, s->fail_msg);
        else finish(s, BN_LT_MALFORMED, 0, "the connection closed mid-stream");
        return;
    }
    if (s->status / 100 != 2) {
        http_failure(s);
        return;
    }
    parse_sse(s, 1);
    if (!s->done_marker && !s->finish_reason) fail(s, BN_LT_MALFORMED, "%s", "the stream ended without [DONE]");
    finish(s, s->fail, 0, s->fail_msg);
}

/* Timeout, or a malformed stream to cut short: finish first so the cancel's callbacks are ignored. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    lt_slot *s = arg;
    struct evhttp_request *req = s->req;
    if (!req) return;
    if (s->fail < 0) finish(s, BN_LT_TIMEOUT, 0, "no complete response within --timeout");
    else finish(s, s->fail, 0, s->fail_msg);
    evhttp_cancel_request(req);
}

static void start_request(lt_slot *s)
{
    lt_run *r = s->run;
    size_t len;
    char *body = request_body(r, s->grp, &len);
    struct evhttp_request *req = body ? evhttp_request_new(on_done, s) : NULL;
    if (!req) {
        free(body);
        r->oom = 1;
        event_base_loopexit(r->base, NULL);
        return;
    }
    evhttp_request_set_header_cb(req, on_headers);
    evhttp_request_set_chunked_cb(req, on_chunk);
    evhttp_request_set_error_cb(req, on_error);
    add_headers(r, req, s->grp->auth);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "text/event-stream");
    evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    free(body);
    evbuffer_drain(s->buf, evbuffer_get_length(s->buf));
    evbuffer_drain(s->data, evbuffer_get_length(s->data));
    s->itl.n = 0;
    s->chunks = s->status = s->got_headers = s->done_marker = s->finish_reason = s->evreq_err = 0;
    s->usage_completion = s->usage_prompt = s->fail = -1;
    s->fail_msg[0] = 0;
    s->req = req;
    r->issued++;
    s->grp->issued++;
    r->inflight++;
    evtimer_add(s->timer, &r->timeout_tv);
    s->t_start = bn_now();
    /* may call on_done before returning (a refused loopback connect) */
    if (evhttp_make_request(s->conn, req, EVHTTP_REQ_POST, r->t.path) && s->req == req) {
        finish(s, BN_LT_CONNECT, 0, "cannot open a socket");
        evhttp_request_free(req); /* unqueued, not freed, when the socket could not be made */
    }
}

static lt_slot *slot_new(lt_run *r, lt_group *g)
{
    lt_slot *s = calloc(1, sizeof *s), **v = realloc(r->slots, (r->nslots + 1) * sizeof *v);
    if (v) r->slots = v;
    if (!s || !v) {
        free(s);
        return NULL;
    }
    s->idx = r->nslots;
    r->slots[r->nslots++] = s;
    s->run = r;
    s->grp = g;
    s->conn = evhttp_connection_base_new(r->base, NULL, r->t.host, (unsigned short)r->t.port);
    s->timer = evtimer_new(r->base, on_timer, s);
    s->buf = evbuffer_new();
    s->data = evbuffer_new();
    if (!s->conn || !s->timer || !s->buf || !s->data) return NULL; /* freed with the run */
    struct timeval idle = tv_of(r->o->timeout + 1); /* our own timer fires first */
    evhttp_connection_set_timeout_tv(s->conn, &idle);
    return s;
}

static void slot_free(lt_slot *s)
{
    if (s->conn) evhttp_connection_free(s->conn); /* frees a request still queued, no callbacks */
    if (s->timer) event_free(s->timer);
    if (s->next) event_free(s->next);
    if (s->buf) evbuffer_free(s->buf);
    if (s->data) evbuffer_free(s->data);
    bn_lt_samples_free(&s->itl);
    free(s);
}

static void on_next(evutil_socket_t fd, short what, void *arg)
{
    lt_slot *s = arg;
    if (may_issue(s)) start_request(s);
    else check_done(s->run);
}

static void on_arrival(evutil_socket_t fd, short what, void *arg)
{
    lt_run *r = arg;
    if (r->stopping || r->issued >= r->limit) return;
    lt_slot *s = NULL;
    for (size_t i = 0; i < r->nslots && !s; i++)
        if (!r->slots[i]->req) s = r->slots[i];
    if (!s && !(s = slot_new(r, &r->groups[0]))) {
        r->oom = 1;
        event_base_loopexit(r->base, NULL);
        return;
    }
    start_request(s);
    if (r->issued < r->limit) { /* absolute schedule: a late callback does not shift later arrivals */
        r->next_arrival += -log(1 - rand01(r)) / r->o->rate;
        struct timeval tv = tv_of(r->next_arrival - bn_now());
        evtimer_add(r->arrival, &tv);
    }
}

/* The end (--duration, SIGINT, or every limited group done): what is in flight is cancelled
 * and not counted. */
static void stop_now(lt_run *r)
{
    r->stopping = 1;
    r->t_end = bn_now();
    for (size_t i = 0; i < r->nslots; i++) {
        lt_slot *s = r->slots[i];
        struct evhttp_request *req = s->req;
        if (s->next) event_del(s->next);
        if (!req) continue;
        s->req = NULL;
        evtimer_del(s->timer);
        r->inflight--;
        r->res.cancelled++;
        if (s->grp->res) s->grp->res->cancelled++;
        evhttp_cancel_request(req);
    }
    event_base_loopexit(r->base, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    stop_now(arg);
}

static void on_progress(evutil_socket_t fd, short what, void *arg)
{
    lt_run *r = arg;
    double el = bn_now() - r->t0;
    fprintf(stderr, "\r%ld done, %ld errors, %.1f tok/s, %.1f s ", r->res.ok + r->res.failed, r->res.failed,
            el > 0 ? (double)r->live_chunks / el : 0, el);
}

/* GET /v1/models: the first model id, so that servers which check "model" (vLLM) accept us. */
typedef struct {
    lt_run *r;
    int done;
    char *id;
} discovery;

static void on_models(struct evhttp_request *req, void *arg)
{
    discovery *d = arg;
    d->done = 1;
    if (req && evhttp_request_get_response_code(req) == 200) {
        struct evbuffer *b = evhttp_request_get_input_buffer(req);
        json_t *j = json_loadb((const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b), 0, NULL);
        const char *id = json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id"));
        if (id) d->id = strdup(id);
        json_decref(j);
    }
    event_base_loopbreak(d->r->base);
}

static void on_discovery_timeout(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static char *discover_model(lt_run *r)
{
    discovery d = {r, 0, NULL};
    struct timeval tv = tv_of(r->o->timeout < 10 ? r->o->timeout : 10);
    struct evhttp_connection *c = evhttp_connection_base_new(r->base, NULL, r->t.host, (unsigned short)r->t.port);
    struct event *timer = evtimer_new(r->base, on_discovery_timeout, r->base);
    struct evhttp_request *req = c && timer ? evhttp_request_new(on_models, &d) : NULL;
    if (req) {
        evhttp_connection_set_timeout_tv(c, &tv);
        evhttp_connection_set_max_body_size(c, 1 << 20);
        evtimer_add(timer, &tv);
        add_headers(r, req, r->auth[0] ? r->auth : r->groups[0].auth);
        if (evhttp_make_request(c, req, EVHTTP_REQ_GET, r->t.models_path)) {
            if (!d.done) evhttp_request_free(req);
            d.done = 1;
        }
        if (!d.done) event_base_dispatch(r->base);
    }
    if (c) evhttp_connection_free(c); /* frees the request if it is still pending */
    if (timer) event_free(timer);
    return d.id;
}

static int run_load(lt_run *r, bn_error *err)
{
    const options *o = r->o;
    r->limit = o->requests >= 0 ? o->requests : INFINITY;
    r->timeout_tv = tv_of(o->timeout);
    r->t0 = r->t_end = r->next_arrival = bn_now();
    r->started = time(NULL);
    if (o->duration >= 0) {
        struct timeval tv = tv_of(o->duration);
        if (!(r->deadline = evtimer_new(r->base, on_deadline, r)) || evtimer_add(r->deadline, &tv)) goto oom;
    }
    if ((r->sigint = evsignal_new(r->base, SIGINT, on_deadline, r))) evsignal_add(r->sigint, NULL);
    if (o->progress && isatty(STDERR_FILENO)) {
        struct timeval tv = tv_of(PROGRESS_S);
        if ((r->progress = event_new(r->base, -1, EV_PERSIST, on_progress, r))) event_add(r->progress, &tv);
    }
    if (o->users > 0) {
        double started = 0; /* no more users start than requests */
        for (size_t k = 0; k < r->ngroups; k++) {
            lt_group *g = &r->groups[k];
            double users = o->ngroups ? o->groups[k].users : o->users;
            for (double i = 0; i < users && i < g->limit && started < r->limit; i++, started++) {
                lt_slot *s = slot_new(r, g);
                if (!s || !(s->next = evtimer_new(r->base, on_next, s))) goto oom;
                event_active(s->next, EV_TIMEOUT, 1);
            }
        }
    } else {
        if (!(r->arrival = evtimer_new(r->base, on_arrival, r))) goto oom;
        event_active(r->arrival, EV_TIMEOUT, 1);
    }
    event_base_dispatch(r->base);
    if (r->progress) fprintf(stderr, "\r\033[K");
    r->res.wall_s = r->t_end - r->t0;
    for (size_t k = 0; k < r->res.ngroups; k++) r->res.groups[k].wall_s = r->res.wall_s;
    if (r->oom) goto oom;
    return 0;
oom:
    return bn_err(err, "out of memory");
}

static void run_free(lt_run *r)
{
    for (size_t i = 0; i < r->nslots; i++) slot_free(r->slots[i]);
    free(r->slots);
    struct event *evs[] = {r->arrival, r->deadline, r->progress, r->sigint};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i]) event_free(evs[i]);
    bn_lt_results_free(&r->res);
    free(r->groups);
    if (r->base) event_base_free(r->base);
}

static void quiet_log(int severity, const char *msg) {}

/* The run's groups: the --group options, or one implicit group of the plain options. */
static int groups_init(lt_run *r, bn_error *err)
{
    const options *o = r->o;
    size_t n = o->ngroups ? o->ngroups : 1;
    if (!(r->groups = calloc(n, sizeof *r->groups))) return bn_err(err, "out of memory");
    r->ngroups = n;
    for (size_t i = 0; i < n; i++) {
        const group_opt *go = o->ngroups ? &o->groups[i] : NULL;
        lt_group *g = &r->groups[i];
        const char *key = go && go->api_key[0] ? go->api_key : o->api_key;
        if (key) snprintf(g->auth, sizeof g->auth, "Bearer %s", key);
        g->max_tokens = (long)(go && go->max_tokens >= 0 ? go->max_tokens : o->max_tokens);
        g->has_priority = go && go->has_priority ? 1 : o->has_priority;
        g->priority = go && go->has_priority ? go->priority : o->priority;
        g->limit = go && go->requests >= 0 ? go->requests : INFINITY;
        r->n_limited += go && go->requests >= 0;
    }
    return 0;
}

/* Per-group results (with --group only), after r->res is set up. */
static int group_results(lt_run *r, bn_error *err)
{
    const options *o = r->o;
    r->res.has_priority = o->has_priority;
    r->res.priority = o->priority;
    r->res.api_key = o->api_key != NULL;
    r->res.requests_limit = -1;
    if (!o->ngroups) return 0;
    if (!(r->res.groups = calloc(o->ngroups, sizeof *r->res.groups))) return bn_err(err, "out of memory");
    r->res.ngroups = o->ngroups;
    for (size_t i = 0; i < o->ngroups; i++) {
        const group_opt *go = &o->groups[i];
        lt_group *g = &r->groups[i];
        g->res = &r->res.groups[i];
        *g->res = (bn_lt_results){.url = r->res.url, .endpoint = r->res.endpoint, .model = r->res.model,
                                  .users = (int)go->users, .max_tokens = g->max_tokens, .name = go->name,
                                  .has_priority = g->has_priority, .priority = g->priority,
                                  .api_key = g->auth[0] != 0,
                                  .requests_limit = go->requests >= 0 ? (long)go->requests : -1};
    }
    return 0;
}

/* ---- the HTML report ---- */

/* The run's settings as the report shows them; text points into r, o or t. */
#define MAX_PARAMS (16 + MAX_GROUPS)
typedef struct {
    char load[96], requests[48], duration[48], max_tokens[32], prompts[48], temperature[32], seed[32],
        timeout[32], started[64], priority[32];
    char group_name[MAX_GROUPS][48], group_words[MAX_GROUPS][160];
} param_text;

static size_t html_params(const lt_run *r, param_text *t, bn_lt_param p[MAX_PARAMS])
{
    const options *o = r->o;
    struct tm tm;
    if (o->users > 0 && o->ngroups)
        snprintf(t->load, sizeof t->load, "closed loop, %.0f user%s in %zu groups", o->users,
                 o->users == 1 ? "" : "s", o->ngroups);
    else if (o->users > 0)
        snprintf(t->load, sizeof t->load, "closed loop, %.0f user%s", o->users, o->users == 1 ? "" : "s");
    else snprintf(t->load, sizeof t->load, "open loop, Poisson arrivals at %g requests/s", o->rate);
    snprintf(t->requests, sizeof t->requests, o->requests >= 0 ? "%.0f" : "no limit (--duration)", o->requests);
    snprintf(t->duration, sizeof t->duration, o->duration >= 0 ? "%g s" : "none", o->duration);
    snprintf(t->max_tokens, sizeof t->max_tokens, "%.0f", o->max_tokens);
    snprintf(t->prompts, sizeof t->prompts, "generated, %.0f words each", o->prompt_len);
    snprintf(t->temperature, sizeof t->temperature, o->temperature >= 0 ? "%g" : "the server's default",
             o->temperature);
    snprintf(t->seed, sizeof t->seed, o->seed >= 0 ? "%.0f" : "none", o->seed);
    snprintf(t->timeout, sizeof t->timeout, "%g s", o->timeout);
    snprintf(t->priority, sizeof t->priority, o->has_priority ? "%d" : "none sent", o->priority);
    if (!localtime_r(&r->started, &tm) || !strftime(t->started, sizeof t->started, "%Y-%m-%d %H:%M:%S %z", &tm))
        snprintf(t->started, sizeof t->started, "%lld (Unix time)", (long long)r->started);
    size_t n = 0;
    p[n++] = (bn_lt_param){"URL", r->url};
    p[n++] = (bn_lt_param){"endpoint", o->chat ? "chat" : "completions"};
    p[n++] = (bn_lt_param){"model", r->model ? r->model : "(none sent)"};
    p[n++] = (bn_lt_param){"load", t->load};
    p[n++] = (bn_lt_param){"requests", t->requests};
    p[n++] = (bn_lt_param){"duration limit", t->duration};
    p[n++] = (bn_lt_param){"max tokens", t->max_tokens};
    p[n++] = (bn_lt_param){"prompts", o->prompts ? o->prompts : t->prompts};
    p[n++] = (bn_lt_param){"temperature", t->temperature};
    p[n++] = (bn_lt_param){"seed", t->seed};
    p[n++] = (bn_lt_param){"ignore_eos", o->ignore_eos ? "yes" : "no"};
    p[n++] = (bn_lt_param){"timeout per request", t->timeout};
    p[n++] = (bn_lt_param){"API key", o->api_key ? "sent (not shown)" : "none"};
    p[n++] = (bn_lt_param){"priority", t->priority};
    p[n++] = (bn_lt_param){"started", t->started};
    for (size_t i = 0; i < r->res.ngroups; i++) {
        snprintf(t->group_name[i], sizeof t->group_name[i], "group %s", r->res.groups[i].name);
        bn_lt_group_words(&r->res.groups[i], t->group_words[i], sizeof t->group_words[i]);
        p[n++] = (bn_lt_param){t->group_name[i], t->group_words[i]};
    }
    return n;
}

static int write_html(lt_run *r, FILE *f, bn_error *err)
{
    param_text t;
    bn_lt_param p[MAX_PARAMS];
    size_t n = html_params(r, &t, p);
    int rc = bn_lt_report_html(&r->res, p, n, f, err);
    if (fclose(f) && !rc) rc = bn_err(err, "%s: cannot write the HTML report: %s", r->o->html, strerror(errno));
    return rc;
}

int cmd_loadtest(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    bn_error err = {{0}};
    prompt_set ps = {0};
    lt_run r = {.o = &o, .ps = &ps, .rng = o.seed >= 0 ? (uint64_t)o.seed : 0x5eed};
    char *found = NULL;
    FILE *html = NULL; /* opened first: a bad path fails now, not after the run */
    if (parse_url(o.url, o.chat, &r.t, &err) || (o.prompts && load_prompts(o.prompts, o.chat, &ps, &err)) ||
        (o.html && !(html = fopen(o.html, "w")) && bn_err(&err, "--html %s: %s", o.html, strerror(errno)))) {
        fprintf(stderr, "bitnet loadtest: %s\n", err.msg);
        prompts_free(&ps);
        return 2;
    }
    snprintf(r.url, sizeof r.url, "http://%s%s", r.t.hosthdr, r.t.path);
    if (o.api_key) snprintf(r.auth, sizeof r.auth, "Bearer %s", o.api_key);
    signal(SIGPIPE, SIG_IGN); /* a server closing mid-write is an error to count, not a reason to die */
    event_set_log_callback(quiet_log); /* failures are counted and reported, not logged */
    rc = 1;
    if (!(r.base = event_base_new())) {
        bn_err(&err, "cannot create an event loop");
        goto out;
    }
    if (groups_init(&r, &err)) goto out;
    r.model = o.model ? o.model : (found = discover_model(&r));
    r.res = (bn_lt_results){.url = r.url, .endpoint = o.chat ? "chat" : "completions", .model = r.model,
                            .users = o.users > 0 ? (int)o.users : 0, .rate = o.rate > 0 ? o.rate : 0,
                            .max_tokens = (long)o.max_tokens};
    if (group_results(&r, &err)) goto out;
    /* closed loop: one series per user (no more users start than requests); open loop: one */
    size_t nseries = o.users > 0 ? (size_t)(o.requests >= 0 && o.requests < o.users ? o.requests : o.users) : 1;
    if (html && bn_lt_timeline_init(&r.res.timeline, nseries, BN_LT_MAX_ARRIVALS)) {
        bn_err(&err, "out of memory");
        goto out;
    }
    if (run_load(&r, &err)) goto out;
    if (o.json) {
        if (bn_lt_report_json(&r.res, stdout, &err)) goto out;
    } else {
        bn_lt_report_text(&r.res, stdout);
    }
    if (html) {
        FILE *f = html;
        html = NULL;
        if (write_html(&r, f, &err)) goto out;
    }
    rc = r.res.ok > 0 ? 0 : 1;
out:
    if (html) fclose(html);
    if (err.msg[0]) fprintf(stderr, "bitnet loadtest: %s\n", err.msg);
    run_free(&r);
    free(found);
    prompts_free(&ps);
    return rc;
}
