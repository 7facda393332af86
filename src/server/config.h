/* bitnetd's configuration: one struct filled from defaults, then the config file, then the
 * command line (flags override the file). The file is `key = value` lines with `#` comments;
 * every key is one row of the table in config.c (name, type, default, range, help), which also
 * writes conf/bitnetd.conf's documentation (`bitnetd --dump-config`). Errors name the file and
 * the line: "bitnetd.conf:12: queue_size: 'abc' is not a whole number". */
#ifndef BN_SERVER_CONFIG_H
#define BN_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/error.h"

#define BN_CONF_MAX_LISTEN 8
#define BN_CONF_MAX_KEYS 64
#define BN_CONF_MAX_CLASSES 64
#define BN_CLASS_NAME_MAX 31       /* key_class names: letters, digits, '_' and '-' */
#define BN_PRIORITY_LIMIT 1000000  /* priorities (key_class, the request's) lie in +-this */

enum bn_weights_mode { BN_WEIGHTS_MMAP = 0, BN_WEIGHTS_SHM = 1 };
enum bn_log_level { BN_LOG_ERROR = 0, BN_LOG_WARN = 1, BN_LOG_INFO = 2, BN_LOG_DEBUG = 3 };
enum bn_log_format { BN_LOGFMT_JSON = 0, BN_LOGFMT_COMBINED = 1 };

/* A key_class line: settings shared by the keys of a class (each key has its own budget). */
typedef struct bn_key_class {
    char name[BN_CLASS_NAME_MAX + 1];
    int priority;              /* the default, and the best (lowest) a request may ask for */
    int max_concurrent;        /* admitted, not finished requests per key; 0 = unlimited */
    uint32_t tokens_per_minute;   /* per key, prompt + completion; 0 = unlimited */
} bn_key_class;

typedef struct bn_srv_config {
    /* model and engine */
    char *model;               /* packed file, HF directory or GGUF (converted through the cache) */
    char *cache_dir;           /* conversion cache; NULL = bn_default_cache_dir() */
    char *model_name;          /* the id served at /v1/models; NULL = the model file's base name */
    int weights;               /* enum bn_weights_mode */
    int mlock;                 /* weights = shm: mlock the copy */
    int huge_pages;            /* weights = shm: try MAP_HUGETLB / MADV_HUGEPAGE */
    uint32_t n_ctx;            /* per worker KV cache; 0 = the model's maximum */
    uint32_t prefill_chunk;    /* tokens per prefill pass (cancel points); 0 = engine default */
    char *chat_format;         /* NULL = the model's; "bitnet" | "llama3" overrides */

    /* placement */
    char *cpus;                /* CPU list "0-7,16"; NULL = the allowed set */
    int workers;               /* 0 = auto */
    int threads;               /* per worker; 0 = auto (one per physical core) */
    int smt;                   /* allow two threads on SMT siblings */
    int share_cores;           /* allow workers to share cores (more workers than cores) */
    int slots;                 /* requests decoded together per worker; 0 = auto (the master's) */
    uint32_t prompt_cache_mb;  /* per worker RAM for saved prompt prefixes; 0 = off */

    /* HTTP */
    char *listen[BN_CONF_MAX_LISTEN];   /* "ADDR:PORT" ("[::1]:30000"); default 127.0.0.1:30000 */
    int n_listen;
    int backlog;
    size_t max_body_size;      /* bytes; larger bodies get 413 */
    size_t max_header_size;    /* bytes */
    double client_timeout;     /* seconds: idle keep-alive and slow request read */
    char **api_keys;           /* NULL-terminated; NULL or empty = no auth (the KEY part only) */
    char **api_key_class;      /* n_api_keys entries: the CLASS of "KEY:CLASS", NULL = default */
    int n_api_keys;
    bn_key_class *key_classes; /* key_class lines, n_key_classes; "default" only if redefined */
    int n_key_classes;

    /* generation limits */
    uint32_t default_max_tokens;   /* when the request has none */
    uint32_t max_max_tokens;       /* a request above it gets 400 */

    /* queue and supervision */
    int queue_size;            /* waiting requests when every worker is busy */
    int reserved_slots;        /* per worker: slots only interactive (priority <= 0) may take */
    double queue_timeout;      /* seconds a request may wait for a worker */
    double worker_timeout;     /* seconds without progress before a busy worker is killed */
    double shutdown_timeout;   /* seconds to finish in-flight requests on SIGTERM */
    double ping_interval;      /* seconds between SSE ": ping" comments while waiting */

    /* process and logs */
    char *pid_file;
    char *user;                /* drop privileges to this user after binding */
    char *access_log;          /* path, "stderr", or "off" */
    char *error_log;           /* path or "stderr" */
    int access_log_format;     /* enum bn_log_format */
    int log_level;             /* enum bn_log_level */
    int daemon;                /* 1 = detach (--daemon), 0 = foreground */

    /* where it came from, for reload and messages */
    char *config_file;         /* NULL = none */
    char *where[BN_CONF_MAX_KEYS];   /* per key: "FILE:LINE" or "--flag" that set it; NULL = default */
} bn_srv_config;

/* Fills every field with its documented default. */
void bn_config_defaults(bn_srv_config *c);
/* Frees every owned string (the struct itself is the caller's). */
void bn_config_free(bn_srv_config *c);

/* Reads the file at path into c (on top of what c holds). Errors name "path:line: key". */
int bn_config_load_file(bn_srv_config *c, const char *path, bn_error *err);
/* Same from memory; name is used in messages. */
int bn_config_load_string(bn_srv_config *c, const char *text, size_t len, const char *name,
                          bn_error *err);
/* Sets one key from a string, as a file line would ("workers", "4"); where names the source in
 * errors ("--workers", "bitnetd.conf:12"). Repeatable keys (listen, api_keys,
 * key_class) append. */
int bn_config_set(bn_srv_config *c, const char *key, const char *value, const char *where,
                  bn_error *err);
/* Where key was set ("bitnetd.conf:3", "--model") or NULL when it has its default. */
const char *bn_config_where(const bn_srv_config *c, const char *key);
/* Prefixes err with where key was set, as parse errors are ("bitnetd.conf:3: model: ...").
 * Returns -1. For errors found later: a model that does not open, CPUs the machine lacks. */
int bn_config_err_at(const bn_srv_config *c, const char *key, bn_error *err);
/* Cross-key checks after everything is loaded (e.g. default_max_tokens <= max_max_tokens). */
int bn_srv_config_validate(const bn_srv_config *c, bn_error *err);
/* The class a key_class line or api_keys entry names, or NULL. "default" is built in
 * (priority 0, no limits) unless a key_class line redefines it. */
const bn_key_class *bn_config_class(const bn_srv_config *c, const char *name);
/* reserved_slots as it applies to a worker of n_slots slots: at most n_slots - 1, so batch
 * requests always have a slot to run in. */
int bn_config_reserved(const bn_srv_config *c, int n_slots);
/* Writes every key with its default and its help comment: the shipped conf/bitnetd.conf. */
void bn_config_write_defaults(FILE *f);

/* The command line: bitnetd [-c FILE] [-t] [-m MODEL] [--listen ADDR:PORT] [--workers N]
 * [--threads N] [--slots N] [--cpus LIST] [--foreground | --daemon] [--pid-file FILE]. */
typedef struct bn_cmdline {
    const char *config_file;   /* -c */
    int test_only;             /* -t: check config and model, exit 0/1 */
    int dump_config;           /* --dump-config */
    int help, version;
    /* key=value overrides applied after the file, in order */
    const char *keys[32], *values[32], *flags[32];
    int n_over;
} bn_cmdline;

/* Parses argv; returns 0, or -1 with err set (unknown flag, missing value). */
int bn_cmdline_parse(int argc, char **argv, bn_cmdline *cl, bn_error *err);
/* Default config, then the file (cl->config_file, if any), then the overrides, then validate. */
int bn_config_from_cmdline(const bn_cmdline *cl, bn_srv_config *c, bn_error *err);
void bn_cmdline_usage(FILE *f);

/* Splits "127.0.0.1:30000" / "[::1]:30000" / ":30000" into host and port (host written to
 * host[hostlen]); returns -1 with err on a malformed address. IPv6 hosts come back without
 * brackets ("::1"); an empty host (":30000") comes back as "0.0.0.0" (every IPv4 address);
 * a host name is passed through for the resolver. Port 0 (ephemeral) is allowed. */
int bn_parse_listen(const char *s, char *host, size_t hostlen, int *port, bn_error *err);

#endif
