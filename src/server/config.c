/* bitnetd's configuration. Every key is one row of `keys` below: its name, type, field,
 * default, range and help. Defaults go through the same parser as file lines, and
 * bn_config_write_defaults() prints the table as conf/bitnetd.conf, so the struct, the
 * parser, the shipped file and --dump-config cannot disagree.
 *
 * Repeatable keys (listen, api_keys, key_class): lines accumulate within one source (a file, or the
 * command line); the first such line of a source replaces what earlier sources set, so a
 * file's `listen` replaces the default address and `--listen` replaces the file's.
 * A failed load leaves the struct partly updated: a reload builds a fresh one
 * (bn_config_from_cmdline) and swaps it in only on success. */
#include "server/config.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/parse.h"

enum key_type {
    K_STR,        /* char *: empty = unset (NULL) */
    K_CHOICE,     /* int: index into choices */
    K_STRCHOICE,  /* char *: one of choices, choices[0] ("auto") = NULL */
    K_BOOL,       /* int 0/1 */
    K_INT,        /* int in [lo, hi] */
    K_U32,        /* uint32_t in [lo, hi] */
    K_SIZE,       /* size_t bytes in [lo, hi] */
    K_DUR,        /* double seconds in [lo, hi] */
    K_CPUS,       /* char *: a CPU list "0-7,16"; empty = unset */
    K_LISTEN,     /* listen[] / n_listen, repeatable */
    K_KEYS,       /* api_keys / n_api_keys, repeatable, comma-separated */
    K_CLASS,      /* key_classes / n_key_classes, repeatable */
};

#define F_AUTO 1      /* K_INT: "auto" = 0 */
#define F_LOGDEST 2   /* K_STR: required; a path, "stderr" or "off" */
#define F_NOOFF 4     /* with F_LOGDEST: "off" is not allowed */

typedef struct conf_key {
    const char *section;   /* non-NULL on the first key of a section of the written file */
    const char *name;
    int type;
    size_t off;
    const char *def;       /* NULL = unset */
    double lo, hi;
    const char *const *choices;   /* K_CHOICE, K_STRCHOICE: NULL-terminated */
    int flags;
    const char *help;      /* lines of the written file's comment */
} conf_key;

static const char *const weights_names[] = {"mmap", "shm", NULL};
static const char *const chat_names[] = {"auto", "bitnet", "llama3", "falcon3", "none", NULL};
static const char *const logfmt_names[] = {"json", "combined", NULL};
static const char *const level_names[] = {"error", "warn", "info", "debug", NULL};

#define OFF(f) offsetof(bn_srv_config, f)
#define KiB 1024.0
#define MiB (1024.0 * 1024)
#define GiB (1024.0 * 1024 * 1024)

static const conf_key keys[] = {
    {"model and engine", "model", K_STR, OFF(model), NULL, 0, 0, NULL, 0,
     "The model: a packed .bnpk file, a Hugging Face directory or a GGUF file (the last two\n"
     "are converted once, through the cache). Needed to serve and for -t; -m overrides."},
    {NULL, "cache_dir", K_STR, OFF(cache_dir), NULL, 0, 0, NULL, 0,
     "Conversion cache. Unset: $BITNET_CACHE, else $XDG_CACHE_HOME/bitnetd, else\n"
     "~/.cache/bitnetd."},
    {NULL, "model_name", K_STR, OFF(model_name), NULL, 0, 0, NULL, 0,
     "The model id served at /v1/models. Unset: the model file's base name."},
    {NULL, "weights", K_CHOICE, OFF(weights), "mmap", 0, 0, weights_names, 0,
     "How the workers share one copy of the weights: mmap (the file's page cache) or shm\n"
     "(copied once into shared memory, where huge_pages and mlock apply)."},
    {NULL, "mlock", K_BOOL, OFF(mlock), "off", 0, 0, NULL, 0,
     "weights = shm: lock the copy in RAM (a failure is a warning)."},
    {NULL, "huge_pages", K_BOOL, OFF(huge_pages), "on", 0, 0, NULL, 0,
     "weights = shm: back the copy with huge pages when the kernel gives them."},
    {NULL, "n_ctx", K_U32, OFF(n_ctx), "0", 0, 1048576, NULL, 0,
     "KV cache positions per worker (prompt + completion); 0 = the model's maximum."},
    {NULL, "prefill_chunk", K_U32, OFF(prefill_chunk), "64", 0, 4096, NULL, 0,
     "Prompt tokens per prefill pass: a cancelled request stops within one chunk.\n"
     "0 = the engine's default."},
    {NULL, "chat_format", K_STRCHOICE, OFF(chat_format), "auto", 0, 0, chat_names, 0,
     "Chat template: auto (the model's own), bitnet, llama3, falcon3 or none."},

    {"placement", "cpus", K_CPUS, OFF(cpus), NULL, 0, 0, NULL, 0,
     "CPUs the workers may run on, OS numbering (0-7,16-23). Unset: every CPU this\n"
     "process may use."},
    {NULL, "workers", K_INT, OFF(workers), "auto", 0, 1024, NULL, F_AUTO,
     "Worker processes, one engine each (up to `slots` requests at a time). auto: fill the\n"
     "CPUs with workers of `threads` threads."},
    {NULL, "threads", K_INT, OFF(threads), "auto", 0, 1024, NULL, F_AUTO,
     "Threads per worker. auto: one per physical core, split across the workers."},
    {NULL, "slots", K_INT, OFF(slots), "auto", 0, 256, NULL, F_AUTO,
     "Requests each worker decodes together (one batched pass per token). auto: 8 when the KV\n"
     "cache of 8 x n_ctx fits in a quarter of the RAM per worker, else fewer (at least 1)."},
    {NULL, "prompt_cache_mb", K_U32, OFF(prompt_cache_mb), "1024", 0, 1048576, NULL, 0,
     "RAM per worker (MiB) keeping the KV of finished requests, so a conversation's next turn\n"
     "skips the prompt it shares with them. 0 = off."},
    {NULL, "smt", K_BOOL, OFF(smt), "off", 0, 0, NULL, 0,
     "Run threads on both SMT siblings of a core (off: one thread per physical core)."},
    {NULL, "share_cores", K_BOOL, OFF(share_cores), "off", 0, 0, NULL, 0,
     "Let workers share cores when workers x threads exceeds them (no queueing for many users)."},

    {"HTTP", "listen", K_LISTEN, 0, "127.0.0.1:30000", 0, 0, NULL, 0,
     "Address to listen on: ADDR:PORT, [IPV6]:PORT, or :PORT for every IPv4 address.\n"
     "Repeatable (at most 8); the listen lines of a file replace the default, and --listen\n"
     "replaces the file's."},
    {NULL, "backlog", K_INT, OFF(backlog), "511", 1, 65535, NULL, 0,
     "Pending connections the kernel queues on each listening socket."},
    {NULL, "max_body_size", K_SIZE, OFF(max_body_size), "1m", KiB, GiB, NULL, 0,
     "Largest request body; a larger one gets 413."},
    {NULL, "max_header_size", K_SIZE, OFF(max_header_size), "16k", KiB, MiB, NULL, 0,
     "Largest request header block."},
    {NULL, "client_timeout", K_DUR, OFF(client_timeout), "60s", 0.001, 86400, NULL, 0,
     "Idle keep-alive connections, and requests read slower than this, are closed."},
    {NULL, "api_keys", K_KEYS, 0, NULL, 0, 0, NULL, 0,
     "Keys a client must send as \"Authorization: Bearer KEY\" (401 otherwise); comma-separated,\n"
     "repeatable. KEY:CLASS puts a key in a key_class (else: default). Unset: no\n"
     "authentication. /health and /ready never need a key."},
    {NULL, "key_class", K_CLASS, 0, NULL, 0, 0, NULL, 0,
     "A class of API keys: NAME [priority=N] [max_concurrent=N] [tokens_per_minute=N],\n"
     "repeatable. priority (-1000000..1000000, default 0; lower runs first, <= 0 is\n"
     "interactive) is the keys' default and the best a request may ask for; the limits hold\n"
     "per key (0 = none; over one: 429 with Retry-After). Built in: default, priority 0, no\n"
     "limits (a key_class line may redefine it). E.g. batch priority=10 max_concurrent=4."},

    {"generation limits", "default_max_tokens", K_U32, OFF(default_max_tokens), "256", 1, 1048576,
     NULL, 0, "Completion tokens when a request gives no max_tokens."},
    {NULL, "max_max_tokens", K_U32, OFF(max_max_tokens), "4096", 1, 1048576, NULL, 0,
     "A request asking for more max_tokens than this gets 400."},

    {"queue and supervision", "queue_size", K_INT, OFF(queue_size), "64", 0, 1000000, NULL, 0,
     "Requests that may wait while every worker is busy; one more gets 503 (0: no waiting)."},
    {NULL, "reserved_slots", K_INT, OFF(reserved_slots), "1", 0, 256, NULL, 0,
     "Slots per worker that only interactive requests (priority <= 0) may take, so batch\n"
     "traffic never fills a worker; at most slots - 1 apply."},
    {NULL, "queue_timeout", K_DUR, OFF(queue_timeout), "60s", 0.001, 86400, NULL, 0,
     "A request that waited this long for a worker gets 503."},
    {NULL, "worker_timeout", K_DUR, OFF(worker_timeout), "60s", 0.001, 86400, NULL, 0,
     "A busy worker that makes no progress for this long is killed and respawned."},
    {NULL, "shutdown_timeout", K_DUR, OFF(shutdown_timeout), "30s", 0, 86400, NULL, 0,
     "On SIGTERM, time given to in-flight requests before they are cut off."},
    {NULL, "ping_interval", K_DUR, OFF(ping_interval), "5s", 0.001, 3600, NULL, 0,
     "Streams get a \": ping\" comment this often while queued or in prefill."},

    {"process and logs", "pid_file", K_STR, OFF(pid_file), NULL, 0, 0, NULL, 0,
     "Write the master's pid here (removed on exit). Unset: no pid file."},
    {NULL, "user", K_STR, OFF(user), NULL, 0, 0, NULL, 0,
     "Drop privileges to this user after binding. Unset: keep the current user."},
    {NULL, "access_log", K_STR, OFF(access_log), "stderr", 0, 0, NULL, F_LOGDEST,
     "One line per request: a file path, stderr, or off."},
    {NULL, "access_log_format", K_CHOICE, OFF(access_log_format), "json", 0, 0, logfmt_names, 0,
     "json (one object per line) or combined (Apache/nginx style)."},
    {NULL, "error_log", K_STR, OFF(error_log), "stderr", 0, 0, NULL, F_LOGDEST | F_NOOFF,
     "Server messages: a file path or stderr. SIGUSR1 reopens both logs."},
    {NULL, "log_level", K_CHOICE, OFF(log_level), "info", 0, 0, level_names, 0,
     "Least severe message written: error, warn, info or debug."},
    {NULL, "daemon", K_BOOL, OFF(daemon), "off", 0, 0, NULL, 0,
     "Detach from the terminal (--daemon / --foreground override)."},
};

#define N_KEYS (sizeof keys / sizeof keys[0])
_Static_assert(N_KEYS <= BN_CONF_MAX_KEYS, "raise BN_CONF_MAX_KEYS");

static const conf_key *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name)) return &keys[i];
    return NULL;
}

static int repeatable(const conf_key *k)
{
    return k->type == K_LISTEN || k->type == K_KEYS || k->type == K_CLASS;
}

/* ---- setting one key ----------------------------------------------------------------- */

static char **str_field(bn_srv_config *c, const conf_key *k) { return (char **)((char *)c + k->off); }

static int set_str(char **dst, const char *v, bn_error *err)
{
    char *s = *v ? strdup(v) : NULL;
    if (*v && !s) return bn_err(err, "out of memory");
    free(*dst);
    *dst = s;
    return 0;
}

/* "a, b or c" */
static void join_choices(const char *const *ch, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; ch[i] && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i == 0 ? "" : ch[i + 1] ? ", " : " or ", ch[i]);
}

static int parse_choice(const conf_key *k, const char *v, int *out, bn_error *err)
{
    for (int i = 0; k->choices[i]; i++)
        if (!strcmp(v, k->choices[i])) {
            *out = i;
            return 0;
        }
    char all[128];
    join_choices(k->choices, all, sizeof all);
    return bn_err(err, "'%.64s' is not one of %s", v, all);
}

/* "0-7,16": comma-separated CPUs or ascending ranges; the placement module checks them against
 * the machine. */
static int check_cpus(const char *v, bn_error *err)
{
    const char *p = v;
    for (;;) {
        char *end;
        if (*p < '0' || *p > '9') break;
        unsigned long a = strtoul(p, &end, 10), b = a;
        if (*end == '-') {
            p = end + 1;
            if (*p < '0' || *p > '9') break;
            b = strtoul(p, &end, 10);
        }
        if (a > 65535 || b > 65535 || b < a) break;
        if (!*end) return 0;
        if (*end != ',') break;
        p = end + 1;
    }
    return bn_err(err, "'%.64s' is not a CPU list (expected e.g. 0-7,16)", v);
}

static int add_listen(bn_srv_config *c, const char *v, bn_error *err)
{
    char host[256];
    int port;
    if (bn_parse_listen(v, host, sizeof host, &port, err)) return -1;
    if (c->n_listen == BN_CONF_MAX_LISTEN)
        return bn_err(err, "too many addresses (at most %d)", BN_CONF_MAX_LISTEN);
    if (!(c->listen[c->n_listen] = strdup(v))) return bn_err(err, "out of memory");
    c->n_listen++;
    return 0;
}

/* key_class names: 1..BN_CLASS_NAME_MAX letters, digits, '_' or '-' (n bytes at s). */
static int check_class_name(const char *s, size_t n, bn_error *err)
{
    int ok = n >= 1 && n <= BN_CLASS_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] == '_' || s[i] == '-' || (s[i] >= '0' && s[i] <= '9') ||
             ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z');
    if (!ok)
        return bn_err(err, "'%.*s' is not a class name (1..%d letters, digits, '_' or '-')",
                      (int)(n < 64 ? n : 64), s, BN_CLASS_NAME_MAX);
    return 0;
}

/* One key, "KEY" or "KEY:CLASS" (the last ':' splits: a key holding ':' must name its class).
 * No spaces or control characters: it travels in an HTTP header. Never echoed back: keys are
 * secrets and messages go to logs. The class is checked against key_class lines once
 * everything is loaded (they may come later). */
static int add_api_key(bn_srv_config *c, const char *v, size_t len, bn_error *err)
{
    if (!len) return bn_err(err, "empty API key in the list");
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)v[i] <= ' ' || v[i] == 0x7f)
            return bn_err(err, "an API key cannot contain spaces or control characters");
    const char *colon = NULL;
    for (size_t i = len; i-- > 0 && !colon;)
        if (v[i] == ':') colon = v + i;
    size_t klen = colon ? (size_t)(colon - v) : len;
    if (!klen) return bn_err(err, "empty API key before ':CLASS'");
    if (colon && check_class_name(colon + 1, len - klen - 1, err)) return -1;
    char **p = realloc(c->api_keys, ((size_t)c->n_api_keys + 2) * sizeof *p);
    if (!p) return bn_err(err, "out of memory");
    c->api_keys = p;
    p = realloc(c->api_key_class, ((size_t)c->n_api_keys + 1) * sizeof *p);
    if (!p) return bn_err(err, "out of memory");
    c->api_key_class = p;
    char *key = strndup(v, klen), *cls = colon ? strndup(colon + 1, len - klen - 1) : NULL;
    if (!key || (colon && !cls)) {
        free(key);
        free(cls);
        return bn_err(err, "out of memory");
    }
    c->api_key_class[c->n_api_keys] = cls;
    c->api_keys[c->n_api_keys] = key;
    c->api_keys[++c->n_api_keys] = NULL;
    return 0;
}

/* "a, b,c": each comma-separated key, spaces around commas dropped. */
static int add_api_keys(bn_srv_config *c, const char *v, bn_error *err)
{
    while (*v) {
        const char *comma = strchr(v, ',');
        const char *e = comma ? comma : v + strlen(v);
        while (*v == ' ' || *v == '\t') v++;
        const char *s = e;
        while (s > v && (s[-1] == ' ' || s[-1] == '\t')) s--;
        if (add_api_key(c, v, (size_t)(s > v ? s - v : 0), err)) return -1;
        if (!comma) break;
        v = comma + 1;
        if (!*v) return bn_err(err, "empty API key in the list");
    }
    return 0;
}

/* ---- key_class lines ---------------------------------------------------------------- */

/* The settings of a key_class line, one row each. */
static const struct class_field {
    const char *name;
    size_t off;
    long lo, hi;
} CLASS_FIELDS[] = {
    {"priority", offsetof(bn_key_class, priority), -BN_PRIORITY_LIMIT, BN_PRIORITY_LIMIT},
    {"max_concurrent", offsetof(bn_key_class, max_concurrent), 0, 1000000},
    {"tokens_per_minute", offsetof(bn_key_class, tokens_per_minute), 0, 1000000000},
};
#define N_CLASS_FIELDS (sizeof CLASS_FIELDS / sizeof CLASS_FIELDS[0])

static const bn_key_class default_class = {"default", 0, 0, 0};

const bn_key_class *bn_config_class(const bn_srv_config *c, const char *name)
{
    for (int i = 0; i < c->n_key_classes; i++)
        if (!strcmp(c->key_classes[i].name, name)) return &c->key_classes[i];
    return strcmp(name, "default") ? NULL : &default_class;
}

/* One "NAME=VALUE" word of a key_class line (n bytes at w) into kc; seen has a bit per field. */
static int class_setting(bn_key_class *kc, const char *w, size_t n, unsigned *seen, bn_error *err)
{
    const char *eq = memchr(w, '=', n);
    size_t nl = eq ? (size_t)(eq - w) : n;
    for (size_t i = 0; i < N_CLASS_FIELDS; i++) {
        const struct class_field *f = &CLASS_FIELDS[i];
        if (strlen(f->name) != nl || memcmp(f->name, w, nl)) continue;
        if (!eq) return bn_err(err, "%s needs a value (%s=N)", f->name, f->name);
        if (*seen & (1u << i)) return bn_err(err, "%s is given twice", f->name);
        *seen |= 1u << i;
        char val[32];
        long x;
        snprintf(val, sizeof val, "%.*s", (int)(n - nl - 1 < 31 ? n - nl - 1 : 31), eq + 1);
        if (bn_parse_long(val, f->lo, f->hi, &x, err)) return bn_err_prefix(err, "%s", f->name);
        if (f->off == offsetof(bn_key_class, tokens_per_minute))
            kc->tokens_per_minute = (uint32_t)x;
        else *(int *)((char *)kc + f->off) = (int)x;
        return 0;
    }
    return bn_err(err, "unknown setting '%.*s' (expected priority, max_concurrent or "
                  "tokens_per_minute)", (int)(nl < 64 ? nl : 64), w);
}

/* "NAME [priority=N] [max_concurrent=N] [tokens_per_minute=N]", words split by spaces. */
static int add_class(bn_srv_config *c, const char *v, bn_error *err)
{
    bn_key_class kc = default_class;
    unsigned seen = 0;
    const char *p = v;
    size_t n = strcspn(p, " \t");
    if (!n) return bn_err(err, "missing the class name (expected NAME [priority=N] ...)");
    if (check_class_name(p, n, err)) return -1;
    memset(kc.name, 0, sizeof kc.name);   /* whole: configs compare classes with memcmp */
    memcpy(kc.name, p, n);
    for (p += n;; p += n) {
        p += strspn(p, " \t");
        if (!(n = strcspn(p, " \t"))) break;
        if (class_setting(&kc, p, n, &seen, err)) return bn_err_prefix(err, "class %s", kc.name);
    }
    for (int i = 0; i < c->n_key_classes; i++)
        if (!strcmp(c->key_classes[i].name, kc.name))
            return bn_err(err, "class %s is defined twice", kc.name);
    if (c->n_key_classes == BN_CONF_MAX_CLASSES)
        return bn_err(err, "too many classes (at most %d)", BN_CONF_MAX_CLASSES);
    bn_key_class *a = realloc(c->key_classes, ((size_t)c->n_key_classes + 1) * sizeof *a);
    if (!a) return bn_err(err, "out of memory");
    c->key_classes = a;
    a[c->n_key_classes++] = kc;
    return 0;
}

static void clear_list(bn_srv_config *c, const conf_key *k)
{
    if (k->type == K_LISTEN) {
        for (int i = 0; i < c->n_listen; i++) free(c->listen[i]);
        memset(c->listen, 0, sizeof c->listen);
        c->n_listen = 0;
    } else if (k->type == K_KEYS) {
        for (int i = 0; i < c->n_api_keys; i++) {
            free(c->api_keys[i]);
            free(c->api_key_class[i]);
        }
        free(c->api_keys);
        free(c->api_key_class);
        c->api_keys = c->api_key_class = NULL;
        c->n_api_keys = 0;
    } else {
        free(c->key_classes);
        c->key_classes = NULL;
        c->n_key_classes = 0;
    }
}

static int set_int(bn_srv_config *c, const conf_key *k, const char *v, bn_error *err)
{
    int *dst = (int *)((char *)c + k->off);
    long x;
    if ((k->flags & F_AUTO) && !strcmp(v, "auto")) {
        *dst = 0;
        return 0;
    }
    if (bn_parse_long(v, (long)k->lo, (long)k->hi, &x, err)) {
        if (k->flags & F_AUTO)
            return bn_err(err, "'%.64s' is not auto or a whole number %ld..%ld", v, (long)k->lo + 1,
                          (long)k->hi);
        return -1;
    }
    *dst = (int)x;
    return 0;
}

static int set_log_dest(char **dst, const conf_key *k, const char *v, bn_error *err)
{
    int no_off = k->flags & F_NOOFF;
    if (!*v) return bn_err(err, "empty value (expected a file path, stderr%s)", no_off ? "" : " or off");
    if (no_off && !strcmp(v, "off"))
        return bn_err(err, "'off' is not allowed here (expected a file path or stderr)");
    return set_str(dst, v, err);
}

/* Parses v into k's field: the one place a value becomes a setting. */
static int apply(bn_srv_config *c, const conf_key *k, const char *v, bn_error *err)
{
    void *f = (char *)c + k->off;
    switch (k->type) {
    case K_STR:
        if (k->flags & F_LOGDEST) return set_log_dest(f, k, v, err);
        return set_str(f, v, err);
    case K_CHOICE: return parse_choice(k, v, f, err);
    case K_STRCHOICE: {
        int i;
        if (parse_choice(k, v, &i, err)) return -1;
        return set_str(f, i == 0 ? "" : v, err);
    }
    case K_BOOL: return bn_parse_bool(v, f, err);
    case K_INT: return set_int(c, k, v, err);
    case K_U32: return bn_parse_u32(v, (uint32_t)k->lo, (uint32_t)k->hi, f, err);
    case K_SIZE: return bn_parse_size(v, (size_t)k->lo, (size_t)k->hi, f, err);
    case K_DUR: return bn_parse_duration(v, k->lo, k->hi, f, err);
    case K_CPUS:
        if (*v && check_cpus(v, err)) return -1;
        return set_str(f, v, err);
    case K_LISTEN: return add_listen(c, v, err);
    case K_KEYS: return add_api_keys(c, v, err);
    case K_CLASS: return add_class(c, v, err);
    }
    return bn_err(err, "internal: key type %d", k->type);
}

/* Error prefixes: "FILE:LINE: key: msg" for files, "--flag: msg" for flags (the flag names the
 * key), "key: msg" with no source. */
static int apply_at(bn_srv_config *c, const conf_key *k, const char *v, const char *where,
                    bn_error *err)
{
    if (apply(c, k, v, err) == 0) {
        /* remembered so later errors about the value (a model that does not open) name it */
        char **w = &c->where[k - keys];
        free(*w);
        *w = where ? strdup(where) : NULL;
        if (where && !*w) return bn_err(err, "out of memory");   /* else it reads as a default */
        return 0;
    }
    if (!where) return bn_err_prefix(err, "%s", k->name);
    if (where[0] == '-') return bn_err_prefix(err, "%s", where);
    return bn_err_prefix(err, "%s: %s", where, k->name);
}

int bn_config_set(bn_srv_config *c, const char *key, const char *value, const char *where,
                  bn_error *err)
{
    const conf_key *k = find_key(key);
    if (!k) return where ? bn_err(err, "%s: unknown key '%s'", where, key)
                         : bn_err(err, "unknown key '%s'", key);
    if (!value) return bn_err(err, "%s: %s: no value", where ? where : "config", key);
    return apply_at(c, k, value, where, err);
}

/* Sets k from one source (a file, the command line): the first value of a repeatable key in a
 * source replaces the earlier sources' list. seen has one bit per table row. */
static int set_from_source(bn_srv_config *c, const conf_key *k, const char *v, const char *where,
                           uint64_t *seen, bn_error *err)
{
    uint64_t bit = (uint64_t)1 << (k - keys);
    if (repeatable(k) && !(*seen & bit)) clear_list(c, k);
    *seen |= bit;
    return apply_at(c, k, v, where, err);
}

void bn_config_defaults(bn_srv_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        bn_error e;
        /* defaults are constants that the tests parse; failing here is a bug in the table */
        if (keys[i].def && apply(c, &keys[i], keys[i].def, &e)) abort();
    }
}

void bn_config_free(bn_srv_config *c)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &keys[i];
        if (k->type == K_STR || k->type == K_STRCHOICE || k->type == K_CPUS) free(*str_field(c, k));
        else if (repeatable(k)) clear_list(c, k);
    }
    for (size_t i = 0; i < N_KEYS; i++) free(c->where[i]);
    free(c->config_file);
    memset(c, 0, sizeof *c);
}

const char *bn_config_where(const bn_srv_config *c, const char *key)
{
    const conf_key *k = find_key(key);
    return k ? c->where[k - keys] : NULL;
}

int bn_config_err_at(const bn_srv_config *c, const char *key, bn_error *err)
{
    const char *w = bn_config_where(c, key);
    if (!w) return bn_err_prefix(err, "%s", key);
    if (w[0] == '-') return bn_err_prefix(err, "%s", w);
    return bn_err_prefix(err, "%s: %s", w, key);
}

/* ---- the file ------------------------------------------------------------------------ */

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v'; }

/* A double-quoted value starting after the quote, unescaping \" and \\ in place. After the
 * closing quote only spaces or a comment may follow. */
static int unquote(char *p, char **out, bn_error *err)
{
    char *w = p;
    *out = p;
    for (;; p++) {
        if (!*p) return bn_err(err, "unterminated quoted value (missing the closing \")");
        if (*p == '"') break;
        if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
        *w++ = *p;
    }
    char *rest = p + 1;
    *w = 0;
    while (is_space(*rest)) rest++;
    if (*rest && *rest != '#') return bn_err(err, "unexpected text after the closing quote");
    return 0;
}

/* Splits one line (NUL-terminated, modified in place) into key and value. *key = NULL for a
 * blank or comment line. On a value error *key is set so the caller can name it. */
static int split_line(char *line, char **key, char **val, bn_error *err)
{
    char *p = line;
    *key = *val = NULL;
    while (is_space(*p)) p++;
    if (!*p || *p == '#') return 0;
    if (*p == '=') return bn_err(err, "missing key before '='");
    char *k = p;
    while (*p && *p != '=' && *p != '#' && !is_space(*p)) p++;
    char *kend = p;
    while (is_space(*p)) p++;
    if (*p != '=') {
        *kend = 0;
        return bn_err(err, "missing '=' after '%.64s' (expected 'key = value')", k);
    }
    *kend = 0;
    *key = k;
    p++;
    while (is_space(*p)) p++;
    if (*p == '"') return unquote(p + 1, val, err);
    char *v = p;
    while (*p && *p != '#') p++;
    while (p > v && is_space(p[-1])) p--;
    *p = 0;
    *val = v;
    return 0;
}

static int load_line(bn_srv_config *c, char *line, const char *where, uint64_t *seen, bn_error *err)
{
    char *key, *val;
    if (split_line(line, &key, &val, err))
        return key ? bn_err_prefix(err, "%s: %s", where, key) : bn_err_prefix(err, "%s", where);
    if (!key) return 0;
    const conf_key *k = find_key(key);
    if (!k) return bn_err(err, "%s: unknown key '%.64s'", where, key);
    return set_from_source(c, k, val, where, seen, err);
}

int bn_config_load_string(bn_srv_config *c, const char *text, size_t len, const char *name,
                          bn_error *err)
{
    uint64_t seen = 0;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, lineno = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = (nl ? (size_t)(nl - text) : len) - pos;
        char where[300];
        snprintf(where, sizeof where, "%.280s:%d", name, ++lineno);
        if (n + 1 > cap) {
            char *p = realloc(line, cap = n + 1);
            if (!p) { rc = bn_err(err, "%s: out of memory", where); break; }
            line = p;
        }
        memcpy(line, text + pos, n);
        line[n] = 0;
        if (memchr(line, 0, n)) rc = bn_err(err, "%s: NUL byte in the line", where);
        else rc = load_line(c, line, where, &seen, err);
        pos += n + 1;
    }
    free(line);
    return rc;
}

int bn_config_load_file(bn_srv_config *c, const char *path, bn_error *err)
{
    char *text;
    size_t len;
    if (bn_read_file(path, (size_t)1 << 20, &text, &len, err)) return -1;
    int rc = bn_config_load_string(c, text, len, path, err);
    free(text);
    if (rc == 0) {
        char *p = strdup(path);
        if (!p) return bn_err(err, "out of memory");
        free(c->config_file);
        c->config_file = p;
    }
    return rc;
}

/* ---- checks -------------------------------------------------------------------------- */

/* Every key's class exists and no key is given twice (named by position: keys are secret). */
static int check_keys(const bn_srv_config *c, bn_error *err)
{
    for (int i = 0; i < c->n_api_keys; i++) {
        const char *cls = c->api_key_class[i];
        if (cls && !bn_config_class(c, cls)) {
            bn_err(err, "key #%d names class '%s', which no key_class line defines", i + 1, cls);
            return bn_config_err_at(c, "api_keys", err);
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(c->api_keys[i], c->api_keys[j])) {
                bn_err(err, "keys #%d and #%d are the same key", j + 1, i + 1);
                return bn_config_err_at(c, "api_keys", err);
            }
    }
    return 0;
}

int bn_config_reserved(const bn_srv_config *c, int n_slots)
{
    int r = c->reserved_slots;
    if (r > n_slots - 1) r = n_slots - 1;
    return r < 0 ? 0 : r;
}

static int validate(const bn_srv_config *c, int need_model, bn_error *err)
{
    if (c->n_listen < 1) return bn_err(err, "no listen address");
    for (int i = 0; i < c->n_listen; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(c->listen[i], c->listen[j]))
                return bn_err(err, "listen: %s is given twice", c->listen[i]);
    if (c->default_max_tokens > c->max_max_tokens)
        return bn_err(err, "default_max_tokens (%u) is larger than max_max_tokens (%u)",
                      c->default_max_tokens, c->max_max_tokens);
    if (check_keys(c, err)) return -1;
    if (need_model && !c->model)
        return bn_err(err, "no model: set 'model' in the configuration file or pass -m MODEL");
    return 0;
}

int bn_srv_config_validate(const bn_srv_config *c, bn_error *err) { return validate(c, 1, err); }

/* ---- the documented file ------------------------------------------------------------- */

static void write_comment(FILE *f, const char *text)
{
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        fprintf(f, "# %.*s\n", (int)n, p);
        p += n + (nl != NULL);
    }
}

/* "# Allowed: ..." from the table's range or choices; nothing for free-form keys. */
static void write_allowed(FILE *f, const conf_key *k)
{
    char a[64], b[64], all[128];
    switch (k->type) {
    case K_CHOICE:
    case K_STRCHOICE:
        join_choices(k->choices, all, sizeof all);
        fprintf(f, "# Allowed: %s.\n", all);
        break;
    case K_INT:
    case K_U32:
        if (k->flags & F_AUTO) fprintf(f, "# Allowed: auto, or %.0f..%.0f.\n", k->lo + 1, k->hi);
        else fprintf(f, "# Allowed: %.0f..%.0f.\n", k->lo, k->hi);
        break;
    case K_SIZE:
        bn_format_size((size_t)k->lo, a, sizeof a);
        bn_format_size((size_t)k->hi, b, sizeof b);
        fprintf(f, "# Allowed: %s..%s (bytes; k, m, g = 2^10, 2^20, 2^30).\n", a, b);
        break;
    case K_DUR:
        bn_format_duration(k->lo, a, sizeof a);
        bn_format_duration(k->hi, b, sizeof b);
        fprintf(f, "# Allowed: %s..%s.\n", a, b);
        break;
    case K_BOOL: fprintf(f, "# Allowed: on or off.\n"); break;
    }
}

void bn_config_write_defaults(FILE *f)
{
    fprintf(f,
            "# bitnetd configuration: every key with its default, as `bitnetd --dump-config`\n"
            "# writes it. One `key = value` per line; `#` starts a comment; quote a value (\"...\")\n"
            "# to keep spaces or a '#'. Sizes take k, m or g; durations take ms, s, m or h (a\n"
            "# plain number is seconds); switches are on or off. Keys shown commented out are\n"
            "# unset. Command-line flags override this file. Reference: config.md.\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &keys[i];
        if (k->section) fprintf(f, "\n# ---- %s\n", k->section);
        fprintf(f, "\n");
        write_comment(f, k->help);
        write_allowed(f, k);
        if (k->def) fprintf(f, "%s = %s\n", k->name, k->def);
        else fprintf(f, "#%s =\n", k->name);
    }
}

/* ---- the command line ---------------------------------------------------------------- */

enum { O_LISTEN = 256, O_WORKERS, O_THREADS, O_SLOTS, O_CPUS, O_FG, O_DAEMON, O_PID, O_DUMP };

/* Flags that set a key: value NULL = the flag's argument. */
static const struct { int opt; const char *key, *value, *flag; } flag_keys[] = {
    {'m', "model", NULL, "-m"},          {O_LISTEN, "listen", NULL, "--listen"},
    {O_WORKERS, "workers", NULL, "--workers"}, {O_THREADS, "threads", NULL, "--threads"},
    {O_SLOTS, "slots", NULL, "--slots"},
    {O_CPUS, "cpus", NULL, "--cpus"},    {O_FG, "daemon", "off", "--foreground"},
    {O_DAEMON, "daemon", "on", "--daemon"}, {O_PID, "pid_file", NULL, "--pid-file"},
};

static int add_override(bn_cmdline *cl, int opt, bn_error *err)
{
    for (size_t i = 0; i < sizeof flag_keys / sizeof flag_keys[0]; i++) {
        if (flag_keys[i].opt != opt) continue;
        if (cl->n_over == (int)(sizeof cl->keys / sizeof cl->keys[0]))
            return bn_err(err, "too many options (at most %d)", (int)(sizeof cl->keys / sizeof cl->keys[0]));
        cl->keys[cl->n_over] = flag_keys[i].key;
        cl->values[cl->n_over] = flag_keys[i].value ? flag_keys[i].value : optarg;
        cl->flags[cl->n_over++] = flag_keys[i].flag;
        return 0;
    }
    return bn_err(err, "internal: option %d has no key", opt);
}

/* getopt's ':' (missing value) and '?' (unknown option, or a value given to a switch): long
 * options are named from argv, short ones from optopt (argv may hold a cluster "-tx"). */
static int option_error(int ch, const char *arg, bn_error *err)
{
    int is_long = !strncmp(arg, "--", 2);
    const char *eq = strchr(arg, '=');
    int n = is_long && eq ? (int)(eq - arg) : (int)strlen(arg);
    if (ch == ':') {
        if (is_long) return bn_err(err, "option '%s' needs a value", arg);
        return bn_err(err, "option '-%c' needs a value", optopt);
    }
    if (!is_long) return bn_err(err, "unknown option '-%c'", optopt);
    if (optopt) return bn_err(err, "option '%.*s' takes no value", n, arg);
    return bn_err(err, "unknown option '%.*s'", n, arg);
}

int bn_cmdline_parse(int argc, char **argv, bn_cmdline *cl, bn_error *err)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"test", no_argument, 0, 't'},
        {"model", required_argument, 0, 'm'},  {"listen", required_argument, 0, O_LISTEN},
        {"workers", required_argument, 0, O_WORKERS}, {"threads", required_argument, 0, O_THREADS},
        {"slots", required_argument, 0, O_SLOTS},
        {"cpus", required_argument, 0, O_CPUS}, {"foreground", no_argument, 0, O_FG},
        {"daemon", no_argument, 0, O_DAEMON},  {"pid-file", required_argument, 0, O_PID},
        {"dump-config", no_argument, 0, O_DUMP}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},      {0, 0, 0, 0}};
    memset(cl, 0, sizeof *cl);
    optind = 0;   /* glibc: 0 re-initializes fully, so argv may be parsed more than once */
    opterr = 0;   /* errors are returned, not printed */
    int ch;
    while ((ch = getopt_long(argc, argv, ":c:tm:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': cl->config_file = optarg; break;
        case 't': cl->test_only = 1; break;
        case O_DUMP: cl->dump_config = 1; break;
        case 'h': cl->help = 1; break;
        case 'V': cl->version = 1; break;
        case ':':
        case '?': return option_error(ch, argv[optind - 1], err);
        default:
            if (add_override(cl, ch, err)) return -1;
        }
    }
    if (optind < argc) return bn_err(err, "unexpected argument '%s'", argv[optind]);
    return 0;
}

int bn_config_from_cmdline(const bn_cmdline *cl, bn_srv_config *c, bn_error *err)
{
    bn_config_defaults(c);
    if (cl->config_file && bn_config_load_file(c, cl->config_file, err)) return -1;
    uint64_t seen = 0;
    for (int i = 0; i < cl->n_over; i++) {
        const conf_key *k = find_key(cl->keys[i]);
        if (!k) return bn_err(err, "%s: unknown key '%s'", cl->flags[i], cl->keys[i]);
        if (set_from_source(c, k, cl->values[i], cl->flags[i], &seen, err)) return -1;
    }
    /* --dump-config only prints; it needs no model */
    return validate(c, !cl->dump_config, err);
}

void bn_cmdline_usage(FILE *f)
{
    fprintf(f,
            "usage: bitnetd [-c FILE] [-t] [-m MODEL] [--listen ADDR:PORT] [--workers N]\n"
            "               [--threads N] [--slots N] [--cpus LIST] [--foreground | --daemon]\n"
            "               [--pid-file FILE]\n"
            "  -c, --config FILE     configuration file (default: none, every key at its default)\n"
            "  -t, --test            check the configuration and that the model opens, then exit\n"
            "  -m, --model MODEL     model file or directory (key: model)\n"
            "      --listen ADDR:PORT  listen address, repeatable; replaces the file's (key: listen)\n"
            "      --workers N|auto  worker processes (key: workers)\n"
            "      --threads N|auto  threads per worker (key: threads)\n"
            "      --slots N|auto    requests each worker decodes together (key: slots)\n"
            "      --cpus LIST       CPUs to use, e.g. 0-7,16 (key: cpus)\n"
            "      --foreground      stay in the foreground (the default; key: daemon = off)\n"
            "      --daemon          detach (key: daemon = on)\n"
            "      --pid-file FILE   write the master's pid (key: pid_file)\n"
            "      --dump-config     print every key with its default, as a documented file\n"
            "  -h, --help            this help\n"
            "  -V, --version         print the version\n"
            "Flags override the configuration file.\n");
}

/* ---- listen addresses ---------------------------------------------------------------- */

static int valid_hostname(const char *h, size_t n)
{
    if (n == 0 || n > 253 || h[0] == '-' || h[0] == '.') return 0;
    for (size_t i = 0; i < n; i++)
        if (!(h[i] == '-' || h[i] == '.' || (h[i] >= '0' && h[i] <= '9') ||
              ((h[i] | 0x20) >= 'a' && (h[i] | 0x20) <= 'z')))
            return 0;
    return 1;
}

/* host (n bytes at h) is an IPv6 literal (v6), else an IPv4 literal or a host name. */
static int check_host(const char *s, const char *h, size_t n, int v6, bn_error *err)
{
    char buf[256];
    unsigned char addr[16];
    if (n >= sizeof buf) return bn_err(err, "'%.64s': the host is too long", s);
    memcpy(buf, h, n);
    buf[n] = 0;
    if (v6) {
        if (inet_pton(AF_INET6, buf, addr) != 1)
            return bn_err(err, "'%.64s': '%s' is not an IPv6 address", s, buf);
        return 0;
    }
    if (strspn(buf, "0123456789.") == n) {
        if (inet_pton(AF_INET, buf, addr) != 1)
            return bn_err(err, "'%.64s': '%s' is not an IPv4 address", s, buf);
        return 0;
    }
    if (!valid_hostname(buf, n)) return bn_err(err, "'%.64s': '%s' is not a host name", s, buf);
    return 0;
}

int bn_parse_listen(const char *s, char *host, size_t hostlen, int *port, bn_error *err)
{
    const char *h = s, *colon;
    size_t n;
    int v6 = s[0] == '[';
    if (!*s) return bn_err(err, "empty listen address (expected ADDR:PORT, e.g. 127.0.0.1:30000)");
    if (v6) {
        const char *close = strchr(s, ']');
        if (!close) return bn_err(err, "'%.64s': missing ']' after the IPv6 address", s);
        h = s + 1;
        n = (size_t)(close - h);
        colon = close + 1;
        if (*colon != ':') colon = NULL;
    } else {
        colon = strrchr(s, ':');
        n = colon ? (size_t)(colon - s) : 0;
        if (colon && memchr(s, ':', n))
            return bn_err(err, "'%.64s': an IPv6 address needs brackets, e.g. [::1]:30000", s);
    }
    if (!colon) return bn_err(err, "'%.64s' has no port (expected ADDR:PORT, e.g. 127.0.0.1:30000)", s);
    const char *ps = colon + 1;
    long p;
    if (!*ps || strspn(ps, "0123456789") != strlen(ps) || bn_parse_long(ps, 0, 65535, &p, NULL))
        return bn_err(err, "'%.64s': the port must be a number 0..65535", s);
    /* an empty host (":30000") means every IPv4 address */
    if (n == 0 && v6) return bn_err(err, "'%.64s': empty IPv6 address", s);
    if (n > 0 && check_host(s, h, n, v6, err)) return -1;
    const char *out = n ? h : "0.0.0.0";
    size_t outn = n ? n : strlen(out);
    if (outn >= hostlen) return bn_err(err, "'%.64s': the host is too long", s);
    memcpy(host, out, outn);
    host[outn] = 0;
    *port = (int)p;
    return 0;
}
