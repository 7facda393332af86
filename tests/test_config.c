/* The configuration: defaults, every key type, every bad value named by file:line and key,
 * file syntax, repeatable keys, the command line over the file, the shipped conf/bitnetd.conf
 * against the table, listen addresses, and the checked parsers of base/parse.h (also through
 * the bitnet tool's flags). */
#include <check.h>
#include <float.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/parse.h"
#include "server/config.h"
#include "testutil.h"

/* Every key of the external contract (notes/http-contract.md). */
static const char *const contract_keys[] = {
    "listen", "model", "cache_dir", "model_name", "weights", "mlock", "huge_pages", "n_ctx",
    "prefill_chunk", "chat_format", "cpus", "workers", "threads", "smt", "share_cores", "backlog",
    "max_body_size", "max_header_size", "client_timeout", "api_keys", "default_max_tokens",
    "max_max_tokens", "queue_size", "queue_timeout", "worker_timeout", "shutdown_timeout",
    "ping_interval", "pid_file", "user", "access_log", "access_log_format", "error_log",
    "log_level", "daemon", "slots", "prompt_cache_mb", "reserved_slots", "key_class"};
#define N_CONTRACT (sizeof contract_keys / sizeof contract_keys[0])

static int load(bn_srv_config *c, const char *text, bn_error *err)
{
    return bn_config_load_string(c, text, strlen(text), "t.conf", err);
}

static int streq0(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

/* Every field of two configs equal (config_file aside). */
static int same_config(const bn_srv_config *a, const bn_srv_config *b)
{
    const char *const sa[] = {a->model, a->cache_dir, a->model_name, a->chat_format, a->cpus,
                              a->pid_file, a->user, a->access_log, a->error_log};
    const char *const sb[] = {b->model, b->cache_dir, b->model_name, b->chat_format, b->cpus,
                              b->pid_file, b->user, b->access_log, b->error_log};
    for (size_t i = 0; i < sizeof sa / sizeof sa[0]; i++)
        if (!streq0(sa[i], sb[i])) return 0;
    if (a->n_listen != b->n_listen || a->n_api_keys != b->n_api_keys) return 0;
    for (int i = 0; i < a->n_listen; i++)
        if (strcmp(a->listen[i], b->listen[i])) return 0;
    for (int i = 0; i < a->n_api_keys; i++)
        if (strcmp(a->api_keys[i], b->api_keys[i]) ||
            !streq0(a->api_key_class[i], b->api_key_class[i]))
            return 0;
    if (a->n_key_classes != b->n_key_classes ||
        (a->n_key_classes &&
         memcmp(a->key_classes, b->key_classes, (size_t)a->n_key_classes * sizeof *a->key_classes)))
        return 0;
    return a->slots == b->slots && a->prompt_cache_mb == b->prompt_cache_mb &&
           a->reserved_slots == b->reserved_slots && a->weights == b->weights && a->mlock == b->mlock && a->huge_pages == b->huge_pages &&
           a->n_ctx == b->n_ctx && a->prefill_chunk == b->prefill_chunk &&
           a->workers == b->workers && a->threads == b->threads && a->smt == b->smt &&
           a->backlog == b->backlog && a->max_body_size == b->max_body_size &&
           a->max_header_size == b->max_header_size && a->client_timeout == b->client_timeout &&
           a->default_max_tokens == b->default_max_tokens &&
           a->max_max_tokens == b->max_max_tokens && a->queue_size == b->queue_size &&
           a->queue_timeout == b->queue_timeout && a->worker_timeout == b->worker_timeout &&
           a->shutdown_timeout == b->shutdown_timeout && a->ping_interval == b->ping_interval &&
           a->access_log_format == b->access_log_format && a->log_level == b->log_level &&
           a->daemon == b->daemon;
}

/* bn_config_write_defaults into a malloc'd string. */
static char *written_defaults(size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    ck_assert_ptr_nonnull(f);
    bn_config_write_defaults(f);
    fclose(f);
    return buf;
}

START_TEST(test_defaults)
{
    bn_srv_config c;
    bn_config_defaults(&c);
    ck_assert_int_eq(c.n_listen, 1);
    ck_assert_str_eq(c.listen[0], "127.0.0.1:30000");
    ck_assert_ptr_null(c.model);
    ck_assert_ptr_null(c.cache_dir);
    ck_assert_ptr_null(c.model_name);
    ck_assert_ptr_null(c.chat_format);
    ck_assert_ptr_null(c.cpus);
    ck_assert_ptr_null(c.pid_file);
    ck_assert_ptr_null(c.user);
    ck_assert_ptr_null(c.api_keys);
    ck_assert_int_eq(c.n_api_keys, 0);
    ck_assert_int_eq(c.weights, BN_WEIGHTS_MMAP);
    ck_assert_int_eq(c.mlock, 0);
    ck_assert_int_eq(c.huge_pages, 1);
    ck_assert_uint_eq(c.n_ctx, 0);
    ck_assert_uint_eq(c.prefill_chunk, 64);
    ck_assert_int_eq(c.workers, 0);
    ck_assert_int_eq(c.threads, 0);
    ck_assert_int_eq(c.slots, 0);
    ck_assert_uint_eq(c.prompt_cache_mb, 1024);
    ck_assert_int_eq(c.reserved_slots, 1);
    ck_assert_int_eq(c.n_key_classes, 0);
    ck_assert_ptr_null(c.key_classes);
    ck_assert_int_eq(c.smt, 0);
    ck_assert_int_eq(c.backlog, 511);
    ck_assert_uint_eq(c.max_body_size, 1 << 20);
    ck_assert_uint_eq(c.max_header_size, 16 << 10);
    ck_assert_double_eq(c.client_timeout, 60);
    ck_assert_uint_eq(c.default_max_tokens, 256);
    ck_assert_uint_eq(c.max_max_tokens, 4096);
    ck_assert_int_eq(c.queue_size, 64);
    ck_assert_double_eq(c.queue_timeout, 60);
    ck_assert_double_eq(c.worker_timeout, 60);
    ck_assert_double_eq(c.shutdown_timeout, 30);
    ck_assert_double_eq(c.ping_interval, 5);
    ck_assert_str_eq(c.access_log, "stderr");
    ck_assert_str_eq(c.error_log, "stderr");
    ck_assert_int_eq(c.access_log_format, BN_LOGFMT_JSON);
    ck_assert_int_eq(c.log_level, BN_LOG_INFO);
    ck_assert_int_eq(c.daemon, 0);
    ck_assert_ptr_null(c.config_file);
    bn_error err;
    ck_assert_int_ne(bn_srv_config_validate(&c, &err), 0);   /* serving needs a model */
    ck_assert_ptr_nonnull(strstr(err.msg, "model"));
    bn_config_free(&c);
    ck_assert_ptr_null(c.listen[0]);
}
END_TEST

START_TEST(test_contract_keys)
{
    size_t len;
    char *text = written_defaults(&len);
    for (size_t i = 0; i < N_CONTRACT; i++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "\n%s = ", contract_keys[i]);
        snprintf(b, sizeof b, "\n#%s =\n", contract_keys[i]);
        ck_assert_msg(strstr(text, a) || strstr(text, b), "key %s not written", contract_keys[i]);
    }
    /* and nothing else: every `key =` line written is a contract key */
    int n = 0;
    for (const char *p = text; (p = strchr(p, '\n')); p++) {
        const char *k = p + 1 + (p[1] == '#');
        size_t kl = strcspn(k, " \n");
        if (strncmp(k + kl, " =", 2)) continue;
        int found = 0;
        for (size_t i = 0; i < N_CONTRACT; i++)
            found |= strlen(contract_keys[i]) == kl && !strncmp(k, contract_keys[i], kl);
        ck_assert_msg(found, "written key '%.*s' is not in the contract", (int)kl, k);
        n++;
    }
    ck_assert_int_eq(n, (int)N_CONTRACT);
    free(text);
}
END_TEST

START_TEST(test_every_type)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_config_defaults(&c);
    const char *text =
        "model = /m/x.bnpk\ncache_dir = /cache\nmodel_name = tiny\nweights = shm\nmlock = yes\n"
        "huge_pages = false\nn_ctx = 2048\nprefill_chunk = 32\nchat_format = llama3\n"
        "cpus = 0-3,8\nworkers = 2\nthreads = 4\nsmt = on\nlisten = [::1]:0\nbacklog = 128\n"
        "max_body_size = 64k\nmax_header_size = 8192\nclient_timeout = 500ms\napi_keys = k1,k2\n"
        "default_max_tokens = 16\nmax_max_tokens = 32\nqueue_size = 0\nqueue_timeout = 2m\n"
        "worker_timeout = 1h\nshutdown_timeout = 0\nping_interval = 0.25\npid_file = /run/b.pid\n"
        "user = nobody\naccess_log = off\naccess_log_format = combined\nerror_log = /var/log/e\n"
        "log_level = debug\ndaemon = 1\nslots = 4\nprompt_cache_mb = 0\nreserved_slots = 2\n"
        "key_class = batch priority=5 max_concurrent=2 tokens_per_minute=600\n";
    ck_assert_msg(load(&c, text, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(c.model, "/m/x.bnpk");
    ck_assert_str_eq(c.cache_dir, "/cache");
    ck_assert_str_eq(c.model_name, "tiny");
    ck_assert_int_eq(c.weights, BN_WEIGHTS_SHM);
    ck_assert_int_eq(c.mlock, 1);
    ck_assert_int_eq(c.huge_pages, 0);
    ck_assert_uint_eq(c.n_ctx, 2048);
    ck_assert_uint_eq(c.prefill_chunk, 32);
    ck_assert_str_eq(c.chat_format, "llama3");
    ck_assert_str_eq(c.cpus, "0-3,8");
    ck_assert_int_eq(c.workers, 2);
    ck_assert_int_eq(c.threads, 4);
    ck_assert_int_eq(c.smt, 1);
    ck_assert_int_eq(c.n_listen, 1);
    ck_assert_str_eq(c.listen[0], "[::1]:0");
    ck_assert_int_eq(c.backlog, 128);
    ck_assert_uint_eq(c.max_body_size, 65536);
    ck_assert_uint_eq(c.max_header_size, 8192);
    ck_assert_double_eq_tol(c.client_timeout, 0.5, 1e-12);
    ck_assert_int_eq(c.n_api_keys, 2);
    ck_assert_str_eq(c.api_keys[0], "k1");
    ck_assert_str_eq(c.api_keys[1], "k2");
    ck_assert_ptr_null(c.api_keys[2]);
    ck_assert_uint_eq(c.default_max_tokens, 16);
    ck_assert_uint_eq(c.max_max_tokens, 32);
    ck_assert_int_eq(c.queue_size, 0);
    ck_assert_double_eq(c.queue_timeout, 120);
    ck_assert_double_eq(c.worker_timeout, 3600);
    ck_assert_double_eq(c.shutdown_timeout, 0);
    ck_assert_double_eq(c.ping_interval, 0.25);
    ck_assert_str_eq(c.pid_file, "/run/b.pid");
    ck_assert_str_eq(c.user, "nobody");
    ck_assert_str_eq(c.access_log, "off");
    ck_assert_int_eq(c.access_log_format, BN_LOGFMT_COMBINED);
    ck_assert_str_eq(c.error_log, "/var/log/e");
    ck_assert_int_eq(c.log_level, BN_LOG_DEBUG);
    ck_assert_int_eq(c.daemon, 1);
    ck_assert_int_eq(c.slots, 4);
    ck_assert_uint_eq(c.prompt_cache_mb, 0);
    ck_assert_int_eq(c.reserved_slots, 2);
    ck_assert_int_eq(c.n_key_classes, 1);
    ck_assert_str_eq(c.key_classes[0].name, "batch");
    ck_assert_int_eq(c.key_classes[0].priority, 5);
    ck_assert_int_eq(c.key_classes[0].max_concurrent, 2);
    ck_assert_uint_eq(c.key_classes[0].tokens_per_minute, 600);
    ck_assert_msg(bn_srv_config_validate(&c, &err) == 0, "%s", err.msg);

    /* "auto" goes back to 0 / NULL, an empty value unsets an optional string */
    ck_assert_int_eq(load(&c, "workers = auto\nthreads=0\nchat_format = auto\nmodel_name =\n"
                              "cpus =\napi_keys =\n", &err), 0);
    ck_assert_int_eq(c.workers, 0);
    ck_assert_int_eq(c.threads, 0);
    ck_assert_ptr_null(c.chat_format);
    ck_assert_ptr_null(c.model_name);
    ck_assert_ptr_null(c.cpus);
    ck_assert_int_eq(c.n_api_keys, 0);
    ck_assert_ptr_nonnull(c.model);
    /* switches in every spelling, any case */
    const char *on[] = {"on", "yes", "true", "1", "ON", "True"}, *off[] = {"off", "no", "false", "0", "OFF", "No"};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(bn_config_set(&c, "smt", on[i], NULL, &err), 0);
        ck_assert_int_eq(c.smt, 1);
        ck_assert_int_eq(bn_config_set(&c, "smt", off[i], NULL, &err), 0);
        ck_assert_int_eq(c.smt, 0);
    }
    bn_config_free(&c);
}
END_TEST

/* Each bad value, on line 3 of a file, fails naming "t.conf:3: key: " and the value. */
START_TEST(test_bad_values)
{
    static const struct { const char *key, *value, *says; } bad[] = {
        {"weights", "disk", "not one of mmap or shm"},
        {"mlock", "maybe", "not on or off"},
        {"huge_pages", "", "empty value"},
        {"n_ctx", "abc", "not a whole number"},
        {"n_ctx", "-1", "out of range"},
        {"n_ctx", "99999999999999999999999", "out of range"},
        {"n_ctx", "12k", "not a whole number"},
        {"prefill_chunk", "5000", "out of range (expected 0..4096)"},
        {"chat_format", "chatml", "not one of auto, bitnet, llama3, falcon3 or none"},
        {"cpus", "0-", "not a CPU list"},
        {"cpus", "7-3", "not a CPU list"},
        {"cpus", "a", "not a CPU list"},
        {"cpus", "1,,2", "not a CPU list"},
        {"workers", "many", "not auto or a whole number 1..1024"},
        {"workers", "-2", "not auto or a whole number"},
        {"threads", "1025", "not auto or a whole number 1..1024"},
        {"slots", "257", "not auto or a whole number 1..256"},
        {"slots", "few", "not auto or a whole number"},
        {"prompt_cache_mb", "-1", "out of range"},
        {"prompt_cache_mb", "1g", "not a whole number"},
        {"reserved_slots", "auto", "not a whole number"},
        {"reserved_slots", "300", "out of range (expected 0..256)"},
        {"key_class", "", "missing the class name"},
        {"key_class", "b@d", "'b@d' is not a class name"},
        {"key_class", "a23456789012345678901234567890123", "is not a class name"},
        {"key_class", "batch speed=3", "class batch: unknown setting 'speed'"},
        {"key_class", "batch priority", "class batch: priority needs a value"},
        {"key_class", "batch priority=x", "class batch: priority: 'x' is not a whole number"},
        {"key_class", "batch priority=1000001", "class batch: priority: '1000001' is out of range"},
        {"key_class", "batch max_concurrent=-1", "class batch: max_concurrent: '-1' is out of"},
        {"key_class", "batch tokens_per_minute=1.5", "tokens_per_minute: '1.5' is not a whole"},
        {"key_class", "b priority=1 priority=2", "class b: priority is given twice"},
        {"api_keys", "k:", "'' is not a class name"},
        {"api_keys", ":batch", "empty API key before ':CLASS'"},
        {"api_keys", "k:b!", "'b!' is not a class name"},
        {"smt", "2", "not on or off"},
        {"listen", "localhost", "has no port"},
        {"listen", "127.0.0.1:99999", "port must be a number 0..65535"},
        {"listen", "", "empty listen address"},
        {"backlog", "0", "out of range (expected 1..65535)"},
        {"max_body_size", "1t", "not a size"},
        {"max_body_size", "2g", "out of range (expected 1k..1g)"},
        {"max_body_size", "100", "out of range"},
        {"max_header_size", "16 k", "not a size"},
        {"client_timeout", "forever", "not a duration"},
        {"client_timeout", "0", "out of range"},
        {"client_timeout", "10d", "not a duration"},
        {"api_keys", "a,,b", "empty API key"},
        {"api_keys", "a b", "cannot contain spaces"},
        {"default_max_tokens", "0", "out of range (expected 1..1048576)"},
        {"max_max_tokens", "4096.5", "not a whole number"},
        {"queue_size", "1e3", "not a whole number"},
        {"queue_timeout", "-5s", "out of range"},
        {"worker_timeout", "5 s", "not a duration"},
        {"shutdown_timeout", "1x", "not a duration"},
        {"ping_interval", "2h", "out of range (expected 1ms..1h)"},
        {"access_log", "", "empty value (expected a file path, stderr or off)"},
        {"access_log_format", "JSON", "not one of json or combined"},
        {"error_log", "off", "'off' is not allowed"},
        {"error_log", "", "empty value"},
        {"log_level", "verbose", "not one of error, warn, info or debug"},
        {"daemon", "onn", "not on or off"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_srv_config c;
        bn_error err = {{0}};
        char text[256], want[128];
        bn_config_defaults(&c);
        snprintf(text, sizeof text, "# a comment\n\n%s = %s\nqueue_size = 1\n", bad[i].key, bad[i].value);
        ck_assert_msg(load(&c, text, &err) == -1, "%s = %s accepted", bad[i].key, bad[i].value);
        snprintf(want, sizeof want, "t.conf:3: %s: ", bad[i].key);
        ck_assert_msg(!strncmp(err.msg, want, strlen(want)), "'%s' does not start with '%s'", err.msg, want);
        ck_assert_msg(strstr(err.msg, bad[i].says), "'%s' does not say '%s'", err.msg, bad[i].says);
        /* keys are secrets; a key_class message names the faulty word instead */
        if (bad[i].value[0] && strcmp(bad[i].key, "api_keys") && strcmp(bad[i].key, "key_class")) {
            char quoted[64];
            snprintf(quoted, sizeof quoted, "'%s'", bad[i].value);
            ck_assert_msg(strstr(err.msg, quoted) || strstr(err.msg, bad[i].value), "'%s' does not name the value", err.msg);
        }
        ck_assert_int_eq(c.queue_size, 64);   /* stopped at the bad line */
        bn_config_free(&c);
    }
    /* API keys are secrets: never echoed in a message */
    bn_srv_config c;
    bn_error err;
    bn_config_defaults(&c);
    ck_assert_int_eq(load(&c, "api_keys = good, s3cret key\n", &err), -1);
    ck_assert_ptr_null(strstr(err.msg, "s3cret"));
    bn_config_free(&c);
}
END_TEST

START_TEST(test_syntax_errors)
{
    static const struct { const char *text, *want; } bad[] = {
        {"foo = 1\n", "t.conf:1: unknown key 'foo'"},
        {"\n\nqueue-size = 1\n", "t.conf:3: unknown key 'queue-size'"},
        {"listen 127.0.0.1:80\n", "t.conf:1: missing '=' after 'listen'"},
        {"workers\n", "t.conf:1: missing '=' after 'workers'"},
        {"= 5\n", "t.conf:1: missing key before '='"},
        {"model = \"/a b\n", "t.conf:1: model: unterminated quoted value"},
        {"model = \"/a\" b\n", "t.conf:1: model: unexpected text after the closing quote"},
        {"# ok\nWorkers = 2\n", "t.conf:2: unknown key 'Workers'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_srv_config c;
        bn_error err = {{0}};
        bn_config_defaults(&c);
        ck_assert_int_eq(load(&c, bad[i].text, &err), -1);
        ck_assert_msg(!strncmp(err.msg, bad[i].want, strlen(bad[i].want)), "'%s' is not '%s'", err.msg, bad[i].want);
        bn_config_free(&c);
    }
    /* a NUL byte inside the text */
    bn_srv_config c;
    bn_error err;
    bn_config_defaults(&c);
    ck_assert_int_eq(bn_config_load_string(&c, "a\0b = 1\n", 8, "nul.conf", &err), -1);
    ck_assert_str_eq(err.msg, "nul.conf:1: NUL byte in the line");
    /* a missing file names it */
    ck_assert_int_eq(bn_config_load_file(&c, "/nonexistent/bitnetd.conf", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/bitnetd.conf"));
    ck_assert_ptr_null(c.config_file);
    /* bn_config_set names its source: a file line, a flag, or nothing */
    ck_assert_int_eq(bn_config_set(&c, "workers", "x", "a.conf:7", &err), -1);
    ck_assert_str_eq(err.msg, "a.conf:7: workers: 'x' is not auto or a whole number 1..1024");
    ck_assert_int_eq(bn_config_set(&c, "workers", "x", "--workers", &err), -1);
    ck_assert_str_eq(err.msg, "--workers: 'x' is not auto or a whole number 1..1024");
    ck_assert_int_eq(bn_config_set(&c, "nope", "1", "a.conf:2", &err), -1);
    ck_assert_str_eq(err.msg, "a.conf:2: unknown key 'nope'");
    ck_assert_int_eq(bn_config_set(&c, "nope", "1", NULL, &err), -1);
    ck_assert_str_eq(err.msg, "unknown key 'nope'");
    ck_assert_int_eq(bn_config_set(&c, "n_ctx", NULL, NULL, &err), -1);
    bn_config_free(&c);
}
END_TEST

START_TEST(test_comments_quotes_whitespace)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_config_defaults(&c);
    const char *text =
        "# full-line comment\n"
        "   # indented comment\n"
        "\n"
        "\t \n"
        "workers=3\n"
        "  threads\t=\t2   # trailing comment\n"
        "model = \"/models/my model #1.bnpk\"   # quoted keeps spaces and #\n"
        "model_name = \"  padded  \"\n"
        "user = \"say \\\"hi\\\" \\\\ back\"\n"
        "pid_file = /run/with space/b.pid\r\n"
        "cache_dir = /c#not-a-dir\n"
        "log_level = warn";   /* no final newline */
    ck_assert_msg(load(&c, text, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.workers, 3);
    ck_assert_int_eq(c.threads, 2);
    ck_assert_str_eq(c.model, "/models/my model #1.bnpk");
    ck_assert_str_eq(c.model_name, "  padded  ");
    ck_assert_str_eq(c.user, "say \"hi\" \\ back");
    ck_assert_str_eq(c.pid_file, "/run/with space/b.pid");
    ck_assert_str_eq(c.cache_dir, "/c");   /* an unquoted '#' starts a comment */
    ck_assert_int_eq(c.log_level, BN_LOG_WARN);
    /* the empty text and a comment-only text change nothing */
    ck_assert_int_eq(bn_config_load_string(&c, "", 0, "e.conf", &err), 0);
    ck_assert_int_eq(load(&c, "# nothing\n\n", &err), 0);
    ck_assert_int_eq(c.workers, 3);
    /* a duplicate single-valued key: the last one wins */
    ck_assert_int_eq(load(&c, "queue_size = 1\nqueue_size = 2\n", &err), 0);
    ck_assert_int_eq(c.queue_size, 2);
    bn_config_free(&c);
}
END_TEST

START_TEST(test_repeatable)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_config_defaults(&c);
    /* a file's listen lines replace the default and accumulate */
    ck_assert_int_eq(load(&c, "listen = 127.0.0.1:8080\nlisten = [::1]:8080\n", &err), 0);
    ck_assert_int_eq(c.n_listen, 2);
    ck_assert_str_eq(c.listen[0], "127.0.0.1:8080");
    ck_assert_str_eq(c.listen[1], "[::1]:8080");
    /* a second source replaces the first's list; a source without listen keeps it */
    ck_assert_int_eq(load(&c, "workers = 1\n", &err), 0);
    ck_assert_int_eq(c.n_listen, 2);
    ck_assert_int_eq(load(&c, "listen = :9000\n", &err), 0);
    ck_assert_int_eq(c.n_listen, 1);
    ck_assert_str_eq(c.listen[0], ":9000");
    /* bn_config_set appends */
    ck_assert_int_eq(bn_config_set(&c, "listen", "0.0.0.0:9001", NULL, &err), 0);
    ck_assert_int_eq(c.n_listen, 2);
    /* at most BN_CONF_MAX_LISTEN */
    char text[1024] = "";
    for (int i = 0; i <= BN_CONF_MAX_LISTEN; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "listen = 127.0.0.1:%d\n", 1000 + i);
    ck_assert_int_eq(load(&c, text, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "t.conf:9: listen: too many addresses (at most 8)"));
    /* the same address twice is refused by validate */
    ck_assert_int_eq(load(&c, "model = m\nlisten = :1\nlisten = :1\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "given twice"));
    /* api_keys: comma-separated, spaces around commas dropped, repeatable */
    ck_assert_int_eq(load(&c, "api_keys = a1, b2 ,c3\napi_keys = d4\n", &err), 0);
    ck_assert_int_eq(c.n_api_keys, 4);
    const char *want[] = {"a1", "b2", "c3", "d4"};
    for (int i = 0; i < 4; i++) ck_assert_str_eq(c.api_keys[i], want[i]);
    ck_assert_ptr_null(c.api_keys[4]);
    ck_assert_int_eq(load(&c, "api_keys = z9\n", &err), 0);
    ck_assert_int_eq(c.n_api_keys, 1);
    ck_assert_str_eq(c.api_keys[0], "z9");
    /* key_class: accumulate within a source, the next source's lines replace them */
    ck_assert_int_eq(load(&c, "key_class = a priority=-3\nkey_class = b\tmax_concurrent=1  \n", &err), 0);
    ck_assert_int_eq(c.n_key_classes, 2);
    ck_assert_int_eq(bn_config_class(&c, "a")->priority, -3);
    ck_assert_int_eq(bn_config_class(&c, "a")->max_concurrent, 0);
    ck_assert_int_eq(bn_config_class(&c, "b")->max_concurrent, 1);
    ck_assert_int_eq(bn_config_class(&c, "b")->priority, 0);
    ck_assert_ptr_null(bn_config_class(&c, "c"));
    ck_assert_str_eq(bn_config_class(&c, "default")->name, "default");   /* built in */
    ck_assert_int_eq(load(&c, "key_class = default priority=2 tokens_per_minute=60\n", &err), 0);
    ck_assert_int_eq(c.n_key_classes, 1);
    ck_assert_ptr_null(bn_config_class(&c, "a"));
    ck_assert_int_eq(bn_config_class(&c, "default")->priority, 2);     /* redefined */
    ck_assert_uint_eq(bn_config_class(&c, "default")->tokens_per_minute, 60);
    ck_assert_int_eq(load(&c, "\nkey_class = x\nkey_class = x priority=1\n", &err), -1);
    ck_assert_str_eq(err.msg, "t.conf:3: key_class: class x is defined twice");
    char many[4096] = "";
    for (int i = 0; i <= BN_CONF_MAX_CLASSES; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "key_class = c%d\n", i);
    ck_assert_int_eq(load(&c, many, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "t.conf:65: key_class: too many classes (at most 64)"));
    /* KEY:CLASS splits at the last ':' */
    ck_assert_int_eq(load(&c, "api_keys = k1:gold, k:2:batch ,plain\n", &err), 0);
    ck_assert_int_eq(c.n_api_keys, 3);
    ck_assert_str_eq(c.api_keys[0], "k1");
    ck_assert_str_eq(c.api_key_class[0], "gold");
    ck_assert_str_eq(c.api_keys[1], "k:2");
    ck_assert_str_eq(c.api_key_class[1], "batch");
    ck_assert_str_eq(c.api_keys[2], "plain");
    ck_assert_ptr_null(c.api_key_class[2]);
    ck_assert_ptr_null(c.api_keys[3]);
    bn_config_free(&c);
}
END_TEST

START_TEST(test_validate)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_config_defaults(&c);
    ck_assert_int_eq(load(&c, "model = m.bnpk\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), 0);
    ck_assert_int_eq(load(&c, "default_max_tokens = 5000\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), -1);
    ck_assert_str_eq(err.msg, "default_max_tokens (5000) is larger than max_max_tokens (4096)");
    ck_assert_int_eq(load(&c, "max_max_tokens = 5000\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), 0);
    /* a key's class must be defined, by a key_class line before or after it */
    ck_assert_int_eq(load(&c, "# keys\napi_keys = s3cret:gold, other\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), -1);
    ck_assert_str_eq(err.msg, "t.conf:2: api_keys: key #1 names class 'gold', which no key_class "
                              "line defines");
    ck_assert_int_eq(load(&c, "api_keys = s3cret:gold, other:default\nkey_class = gold priority=-1\n",
                          &err), 0);
    ck_assert_msg(bn_srv_config_validate(&c, &err) == 0, "%s", err.msg);
    /* the same key twice, whatever its classes: named by position, never by value */
    ck_assert_int_eq(load(&c, "api_keys = s3cret:gold\napi_keys = x, s3cret\nkey_class = gold\n", &err), 0);
    ck_assert_int_eq(bn_srv_config_validate(&c, &err), -1);
    ck_assert_str_eq(err.msg, "t.conf:2: api_keys: keys #1 and #3 are the same key");
    ck_assert_ptr_null(strstr(err.msg, "s3cret"));
    /* reserved_slots never takes a worker's last slot */
    ck_assert_int_eq(load(&c, "api_keys =\nreserved_slots = 3\n", &err), 0);
    ck_assert_int_eq(bn_config_reserved(&c, 1), 0);
    ck_assert_int_eq(bn_config_reserved(&c, 2), 1);
    ck_assert_int_eq(bn_config_reserved(&c, 8), 3);
    ck_assert_int_eq(bn_config_reserved(&c, 0), 0);
    bn_config_free(&c);
}
END_TEST

static int parse_argv(bn_cmdline *cl, bn_error *err, int n, ...)
{
    static char *argv[40];
    static char store[40][256];
    va_list ap;
    va_start(ap, n);
    argv[0] = "bitnetd";
    for (int i = 0; i < n; i++) {
        snprintf(store[i], sizeof store[i], "%s", va_arg(ap, const char *));
        argv[i + 1] = store[i];
    }
    va_end(ap);
    argv[n + 1] = NULL;
    return bn_cmdline_parse(n + 1, argv, cl, err);
}

START_TEST(test_cmdline)
{
    char path[512];
    snprintf(path, sizeof path, "%s", bn_test_path("cmdline.conf"));
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("model = /from/file.bnpk\nworkers = 2\nthreads = 2\nlisten = 127.0.0.1:1111\n"
          "listen = 127.0.0.1:2222\ndaemon = on\nqueue_size = 7\n", f);
    fclose(f);

    bn_cmdline cl;
    bn_srv_config c;
    bn_error err = {{0}};
    ck_assert_int_eq(parse_argv(&cl, &err, 12, "-c", path, "-m", "/flag.bnpk", "--workers", "3",
                                "--listen", "127.0.0.1:3333", "--foreground", "--pid-file", "/run/p",
                                "--cpus"), -1);   /* --cpus lacks its value */
    ck_assert_str_eq(err.msg, "option '--cpus' needs a value");
    ck_assert_int_eq(parse_argv(&cl, &err, 13, "-c", path, "-m", "/flag.bnpk", "--workers", "3",
                                "--listen", "127.0.0.1:3333", "--foreground", "--pid-file", "/run/p",
                                "--cpus", "0-1"), 0);
    ck_assert_str_eq(cl.config_file, path);
    ck_assert_int_eq(cl.n_over, 6);
    ck_assert_str_eq(cl.keys[0], "model");
    ck_assert_str_eq(cl.flags[0], "-m");
    ck_assert_str_eq(cl.keys[3], "daemon");
    ck_assert_str_eq(cl.values[3], "off");
    ck_assert_msg(bn_config_from_cmdline(&cl, &c, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(c.config_file, path);
    ck_assert_str_eq(c.model, "/flag.bnpk");   /* flags win */
    ck_assert_int_eq(c.workers, 3);
    ck_assert_int_eq(c.threads, 2);            /* the file where no flag */
    ck_assert_int_eq(c.queue_size, 7);
    ck_assert_int_eq(c.daemon, 0);
    ck_assert_str_eq(c.pid_file, "/run/p");
    ck_assert_str_eq(c.cpus, "0-1");
    ck_assert_int_eq(c.n_listen, 1);           /* --listen replaces the file's list */
    ck_assert_str_eq(c.listen[0], "127.0.0.1:3333");
    bn_config_free(&c);

    /* two --listen accumulate; --daemon; the long forms */
    ck_assert_int_eq(parse_argv(&cl, &err, 9, "--model=/m", "--listen", ":1", "--listen=:2",
                                "--daemon", "--threads", "auto", "--slots", "4"), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), 0);
    ck_assert_int_eq(c.slots, 4);
    ck_assert_str_eq(bn_config_where(&c, "slots"), "--slots");
    ck_assert_int_eq(c.n_listen, 2);
    ck_assert_int_eq(c.daemon, 1);
    ck_assert_ptr_null(c.config_file);
    bn_config_free(&c);

    /* switches */
    ck_assert_int_eq(parse_argv(&cl, &err, 4, "-t", "-h", "-V", "--dump-config"), 0);
    ck_assert(cl.test_only && cl.help && cl.version && cl.dump_config);
    ck_assert_int_eq(cl.n_over, 0);
    /* --dump-config needs no model; serving and -t do */
    ck_assert_int_eq(parse_argv(&cl, &err, 1, "--dump-config"), 0);
    ck_assert_msg(bn_config_from_cmdline(&cl, &c, &err) == 0, "%s", err.msg);
    bn_config_free(&c);
    ck_assert_int_eq(parse_argv(&cl, &err, 1, "-t"), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "no model"));
    bn_config_free(&c);

    /* a bad flag value names the flag; a bad file line names file:line */
    ck_assert_int_eq(parse_argv(&cl, &err, 4, "-m", "x", "--workers", "lots"), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), -1);
    ck_assert_str_eq(err.msg, "--workers: 'lots' is not auto or a whole number 1..1024");
    bn_config_free(&c);
    ck_assert_int_eq(parse_argv(&cl, &err, 4, "-m", "x", "--slots", "0x8"), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), -1);
    ck_assert_str_eq(err.msg, "--slots: '0x8' is not auto or a whole number 1..256");
    bn_config_free(&c);
    ck_assert_int_eq(parse_argv(&cl, &err, 2, "--listen", "nowhere"), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "--listen: 'nowhere' has no port"));
    bn_config_free(&c);
    f = fopen(path, "w");
    fputs("model = m\n\nqueue_timeout = soon\n", f);
    fclose(f);
    ck_assert_int_eq(parse_argv(&cl, &err, 2, "-c", path), 0);
    ck_assert_int_eq(bn_config_from_cmdline(&cl, &c, &err), -1);
    char want[600];
    snprintf(want, sizeof want, "%s:3: queue_timeout: 'soon' is not a duration", path);
    ck_assert_msg(!strncmp(err.msg, want, strlen(want)), "%s", err.msg);
    bn_config_free(&c);
    unlink(path);

    /* command-line errors */
    static const struct { const char *arg, *want; } bad[] = {
        {"--bogus", "unknown option '--bogus'"},
        {"-x", "unknown option '-x'"},
        {"--daemon=yes", "option '--daemon' takes no value"},
        {"stray", "unexpected argument 'stray'"},
        {"-c", "option '-c' needs a value"},
        {"--listen", "option '--listen' needs a value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(parse_argv(&cl, &err, 1, bad[i].arg), -1);
        ck_assert_str_eq(err.msg, bad[i].want);
    }
    /* more overrides than the table holds */
    static char *many[80];
    many[0] = "bitnetd";
    for (int i = 0; i < 33; i++) many[1 + 2 * i] = "--workers", many[2 + 2 * i] = "1";
    ck_assert_int_eq(bn_cmdline_parse(67, many, &cl, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "too many options"));

    /* usage names every flag */
    char *u = NULL;
    size_t ulen;
    FILE *uf = open_memstream(&u, &ulen);
    bn_cmdline_usage(uf);
    fclose(uf);
    const char *flags[] = {"-c", "-t", "-m", "--listen", "--workers", "--threads", "--slots", "--cpus",
                           "--foreground", "--daemon", "--pid-file", "--dump-config", "--help", "--version"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        ck_assert_msg(strstr(u, flags[i]), "usage lacks %s", flags[i]);
    free(u);
}
END_TEST

/* The written defaults load cleanly and give exactly the defaults. */
START_TEST(test_written_defaults_load)
{
    size_t len;
    char *text = written_defaults(&len);
    bn_srv_config d, c;
    bn_error err = {{0}};
    bn_config_defaults(&d);
    bn_config_defaults(&c);
    ck_assert_msg(bn_config_load_string(&c, text, len, "dump", &err) == 0, "%s", err.msg);
    ck_assert(same_config(&c, &d));
    /* a real file of it too */
    const char *path = bn_test_path("dump.conf");
    FILE *f = fopen(path, "w");
    fwrite(text, 1, len, f);
    fclose(f);
    bn_config_free(&c);
    bn_config_defaults(&c);
    ck_assert_msg(bn_config_load_file(&c, path, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(c.config_file, path);
    ck_assert(same_config(&c, &d));
    unlink(path);
    /* every line is a comment, blank, or `key = value` */
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        ck_assert_msg(n == 0 || p[0] == '#' || memchr(p, '=', n), "odd line '%.*s'", (int)n, p);
        ck_assert_msg(n < 96, "long line '%.*s'", (int)n, p);
        ck_assert_msg(n == 0 || p[n - 1] != ' ', "trailing space '%.*s'", (int)n, p);
        p += n + (p[n] == '\n');
    }
    bn_config_free(&c);
    bn_config_free(&d);
    free(text);
}
END_TEST

/* conf/bitnetd.conf is exactly what bn_config_write_defaults() writes. */
START_TEST(test_shipped_conf)
{
    const char *src = getenv("BN_SRCDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/conf/bitnetd.conf", src);
    char *shipped;
    size_t slen, wlen;
    bn_error err = {{0}};
    ck_assert_msg(bn_read_file(path, 1 << 20, &shipped, &slen, &err) == 0, "%s", err.msg);
    char *written = written_defaults(&wlen);
    ck_assert_msg(slen == wlen && !memcmp(shipped, written, slen),
                  "%s differs from bn_config_write_defaults(): regenerate it with "
                  "`bitnetd --dump-config > conf/bitnetd.conf`", path);
    bn_srv_config c, d;
    bn_config_defaults(&c);
    bn_config_defaults(&d);
    ck_assert_msg(bn_config_load_file(&c, path, &err) == 0, "%s", err.msg);
    ck_assert(same_config(&c, &d));
    bn_config_free(&c);
    bn_config_free(&d);
    free(shipped);
    free(written);
}
END_TEST

/* docs/config.md has a row `| `key` | default |` for every key, with the table's default. */
START_TEST(test_docs_table)
{
    const char *src = getenv("BN_SRCDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/config.md", src);
    char *doc;
    size_t dlen, wlen;
    bn_error err = {{0}};
    ck_assert_msg(bn_read_file(path, 1 << 20, &doc, &dlen, &err) == 0, "%s", err.msg);
    char *text = written_defaults(&wlen);
    int rows = 0;   /* keys found in the written defaults: every one must be matched below */
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        char line[256];
        snprintf(line, sizeof line, "%.*s", (int)n, p);
        p += n + (p[n] == '\n');
        char key[64], def[128] = "";
        if (sscanf(line, "%63[a-z_] = %127s", key, def) == 2 || sscanf(line, "#%63[a-z_] =", key) == 1) {
            char row[256];
            snprintf(row, sizeof row, "| `%s` | %s%s%s |", key, *def ? "`" : "", *def ? def : "unset",
                     *def ? "`" : "");
            ck_assert_msg(strstr(doc, row), "docs/config.md lacks the row '%s'", row);
            rows++;
        }
    }
    ck_assert_int_eq(rows, (int)N_CONTRACT);
    free(text);
    free(doc);
}
END_TEST

START_TEST(test_parse_listen)
{
    static const struct { const char *in, *host; int port; } good[] = {
        {"127.0.0.1:30000", "127.0.0.1", 30000},
        {"[::1]:30000", "::1", 30000},
        {"[::]:8080", "::", 8080},
        {"0.0.0.0:80", "0.0.0.0", 80},
        {":30000", "0.0.0.0", 30000},   /* empty host: every IPv4 address */
        {"127.0.0.1:0", "127.0.0.1", 0},   /* ephemeral, for tests */
        {"localhost:65535", "localhost", 65535},
        {"[fe80::1:2]:1", "fe80::1:2", 1},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char host[64];
        int port = -1;
        bn_error err = {{0}};
        ck_assert_msg(bn_parse_listen(good[i].in, host, sizeof host, &port, &err) == 0, "%s: %s",
                      good[i].in, err.msg);
        ck_assert_str_eq(host, good[i].host);
        ck_assert_int_eq(port, good[i].port);
    }
    static const struct { const char *in, *says; } bad[] = {
        {"", "empty"},
        {"127.0.0.1", "has no port"},
        {"127.0.0.1:", "port must be"},
        {"127.0.0.1:abc", "port must be"},
        {"127.0.0.1:65536", "port must be"},
        {"127.0.0.1:-1", "port must be"},
        {"127.0.0.1:+80", "port must be"},
        {"127.0.0.1:80x", "port must be"},
        {"127.0.0.1: 80", "port must be"},
        {"300.1.1.1:80", "not an IPv4 address"},
        {"1.2.3:80", "not an IPv4 address"},
        {"::1:30000", "needs brackets"},
        {"[::1", "missing ']'"},
        {"[::1]", "has no port"},
        {"[::1]30000", "has no port"},
        {"[zz::1]:80", "not an IPv6 address"},
        {"[]:80", "empty IPv6"},
        {"[127.0.0.1]:80", "not an IPv6 address"},
        {"bad host:80", "not a host name"},
        {"*:80", "not a host name"},
        {"-x:80", "not a host name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char host[64];
        int port;
        bn_error err = {{0}};
        ck_assert_msg(bn_parse_listen(bad[i].in, host, sizeof host, &port, &err) == -1, "%s accepted", bad[i].in);
        ck_assert_msg(strstr(err.msg, bad[i].says), "%s: '%s' does not say '%s'", bad[i].in, err.msg, bad[i].says);
    }
    /* the host buffer is never overrun */
    char small[4];
    int port;
    bn_error err;
    ck_assert_int_eq(bn_parse_listen("127.0.0.1:1", small, sizeof small, &port, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "too long"));
    ck_assert_int_eq(bn_parse_listen(":1", small, sizeof small, &port, &err), -1);
}
END_TEST

START_TEST(test_parse_numbers)
{
    bn_error err = {{0}};
    long l;
    static const struct { const char *s; long v; } lgood[] = {
        {"0", 0}, {"-1", -1}, {"+5", 5}, {"007", 7}, {"100", 100}};
    for (size_t i = 0; i < sizeof lgood / sizeof lgood[0]; i++) {
        ck_assert_msg(bn_parse_long(lgood[i].s, -1, 100, &l, &err) == 0, "%s: %s", lgood[i].s, err.msg);
        ck_assert_int_eq(l, lgood[i].v);
    }
    ck_assert_int_eq(bn_parse_long("9223372036854775807", 0, LONG_MAX, &l, &err), 0);
    ck_assert_int_eq(l, LONG_MAX);
    static const struct { const char *s, *msg; } lbad[] = {
        {"", "empty value (expected a whole number, -1..100)"},
        {"abc", "'abc' is not a whole number (expected -1..100)"},
        {"12abc", "'12abc' is not a whole number (expected -1..100)"},
        {" 5", "' 5' is not a whole number (expected -1..100)"},
        {"5 ", "'5 ' is not a whole number (expected -1..100)"},
        {"-", "'-' is not a whole number (expected -1..100)"},
        {"1.5", "'1.5' is not a whole number (expected -1..100)"},
        {"0x10", "'0x10' is not a whole number (expected -1..100)"},
        {"101", "'101' is out of range (expected -1..100)"},
        {"-2", "'-2' is out of range (expected -1..100)"},
        {"99999999999999999999", "'99999999999999999999' is out of range (expected -1..100)"},
        {"-99999999999999999999", "'-99999999999999999999' is out of range (expected -1..100)"},
    };
    for (size_t i = 0; i < sizeof lbad / sizeof lbad[0]; i++) {
        l = 42;
        ck_assert_int_eq(bn_parse_long(lbad[i].s, -1, 100, &l, &err), -1);
        ck_assert_str_eq(err.msg, lbad[i].msg);
        ck_assert_int_eq(l, 42);   /* untouched on error */
    }
    ck_assert_int_eq(bn_parse_long("x", 1, LONG_MAX, &l, &err), -1);
    ck_assert_str_eq(err.msg, "'x' is not a whole number (expected 1 or more)");
    /* long junk is cut in the message */
    char junk[300];
    memset(junk, 'z', sizeof junk - 1);
    junk[sizeof junk - 1] = 0;
    ck_assert_int_eq(bn_parse_long(junk, 0, 1, &l, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "...' is not a whole number"));

    uint32_t u;
    ck_assert_int_eq(bn_parse_u32("4294967295", 0, UINT32_MAX, &u, &err), 0);
    ck_assert_uint_eq(u, UINT32_MAX);
    ck_assert_int_eq(bn_parse_u32("4294967296", 0, UINT32_MAX, &u, &err), -1);
    ck_assert_str_eq(err.msg, "'4294967296' is out of range (expected 0..4294967295)");
    ck_assert_int_eq(bn_parse_u32("-1", 0, 10, &u, &err), -1);
    ck_assert_str_eq(err.msg, "'-1' is out of range (expected 0..10)");
    ck_assert_int_eq(bn_parse_u32("- 1", 0, 10, &u, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a whole number"));
    ck_assert_int_eq(bn_parse_u32("0x5", 0, 10, &u, &err), -1);   /* hex only for u64 */
    ck_assert_int_eq(bn_parse_u32("3", 4, 10, &u, &err), -1);

    uint64_t q;
    ck_assert_int_eq(bn_parse_u64("18446744073709551615", 0, UINT64_MAX, &q, &err), 0);
    ck_assert(q == UINT64_MAX);
    ck_assert_int_eq(bn_parse_u64("0x10", 0, UINT64_MAX, &q, &err), 0);
    ck_assert(q == 16);
    ck_assert_int_eq(bn_parse_u64("0XfF", 0, UINT64_MAX, &q, &err), 0);
    ck_assert(q == 255);
    const char *qbad[] = {"18446744073709551616", "0x", "0x0x5", "0xg", "-1", "1e3", "0x 5", ""};
    for (size_t i = 0; i < sizeof qbad / sizeof qbad[0]; i++)
        ck_assert_msg(bn_parse_u64(qbad[i], 0, UINT64_MAX, &q, &err) == -1, "%s accepted", qbad[i]);

    double d;
    static const struct { const char *s; double v; } dgood[] = {
        {"0.8", 0.8}, {"-2", -2}, {"1e-3", 1e-3}, {"+.5", 0.5}, {"1.", 1}, {"2E0", 2}, {"1e-400", 0}};
    for (size_t i = 0; i < sizeof dgood / sizeof dgood[0]; i++) {
        ck_assert_msg(bn_parse_double(dgood[i].s, -2, 2, &d, &err) == 0, "%s: %s", dgood[i].s, err.msg);
        ck_assert_double_eq_tol(d, dgood[i].v, 1e-12);
    }
    const char *dbad[] = {"", "inf", "nan", "0x1p3", "1e", "1e+", ".", "-", "1.0f", "3", "-2.5", "1e999", " 1", "1,5"};
    for (size_t i = 0; i < sizeof dbad / sizeof dbad[0]; i++)
        ck_assert_msg(bn_parse_double(dbad[i], -2, 2, &d, &err) == -1, "%s accepted", dbad[i]);
    ck_assert_int_eq(bn_parse_double("3", -2, 2, &d, &err), -1);
    ck_assert_str_eq(err.msg, "'3' is out of range (expected -2..2)");
    ck_assert_int_eq(bn_parse_double("nan", 0, 1, &d, &err), -1);
    ck_assert_str_eq(err.msg, "'nan' is not a number (expected 0..1)");
}
END_TEST

START_TEST(test_parse_bool_size_duration)
{
    bn_error err = {{0}};
    int b = 7;
    const char *t[] = {"on", "yes", "true", "1", "On", "TRUE"}, *f[] = {"off", "no", "false", "0", "oFF", "NO"};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(bn_parse_bool(t[i], &b, &err), 0);
        ck_assert_int_eq(b, 1);
        ck_assert_int_eq(bn_parse_bool(f[i], &b, &err), 0);
        ck_assert_int_eq(b, 0);
    }
    const char *bbad[] = {"", "2", "onn", " on", "y", "enabled"};
    for (size_t i = 0; i < sizeof bbad / sizeof bbad[0]; i++)
        ck_assert_msg(bn_parse_bool(bbad[i], &b, &err) == -1, "%s accepted", bbad[i]);
    ck_assert_int_eq(bn_parse_bool("maybe", &b, &err), -1);
    ck_assert_str_eq(err.msg, "'maybe' is not on or off (expected on/off, yes/no, true/false or 1/0)");

    size_t z;
    static const struct { const char *s; size_t v; } zgood[] = {
        {"1048576", 1048576}, {"64k", 65536}, {"64K", 65536}, {"1m", 1 << 20}, {"2g", (size_t)2 << 30},
        {"0", 0}, {"0k", 0}};
    for (size_t i = 0; i < sizeof zgood / sizeof zgood[0]; i++) {
        ck_assert_msg(bn_parse_size(zgood[i].s, 0, SIZE_MAX, &z, &err) == 0, "%s: %s", zgood[i].s, err.msg);
        ck_assert_uint_eq(z, zgood[i].v);
    }
    const char *zbad[] = {"", "k", "1.5m", "1kb", "1 k", "-1", "1t", "64kk", "99999999999999999999",
                          "17179869184g", " 1"};
    for (size_t i = 0; i < sizeof zbad / sizeof zbad[0]; i++)
        ck_assert_msg(bn_parse_size(zbad[i], 0, SIZE_MAX, &z, &err) == -1, "%s accepted", zbad[i]);
    ck_assert_int_eq(bn_parse_size("2g", 1024, 1 << 30, &z, &err), -1);
    ck_assert_str_eq(err.msg, "'2g' is out of range (expected 1k..1g)");
    ck_assert_int_eq(bn_parse_size("12q", 1024, 1 << 30, &z, &err), -1);
    ck_assert_str_eq(err.msg, "'12q' is not a size (expected 1k..1g: bytes, or a number with a k, m or g suffix)");
    char buf[32];
    bn_format_size(1536, buf, sizeof buf);
    ck_assert_str_eq(buf, "1536");
    bn_format_size(3 << 20, buf, sizeof buf);
    ck_assert_str_eq(buf, "3m");

    double d;
    static const struct { const char *s; double v; } dgood[] = {
        {"30s", 30}, {"500ms", 0.5}, {"2m", 120}, {"1h", 3600}, {"45", 45}, {"1.5s", 1.5},
        {"0.25", 0.25}, {"10MS", 0.01}, {"1H", 3600}, {"0", 0}};
    for (size_t i = 0; i < sizeof dgood / sizeof dgood[0]; i++) {
        ck_assert_msg(bn_parse_duration(dgood[i].s, 0, 86400, &d, &err) == 0, "%s: %s", dgood[i].s, err.msg);
        ck_assert_double_eq_tol(d, dgood[i].v, 1e-12);
    }
    const char *dbad[] = {"", "s", "30 s", "30sec", "1d", "-1s", "25h", "inf", "nan", "1e999s", "5ss", "m5"};
    for (size_t i = 0; i < sizeof dbad / sizeof dbad[0]; i++)
        ck_assert_msg(bn_parse_duration(dbad[i], 0, 86400, &d, &err) == -1, "%s accepted", dbad[i]);
    ck_assert_int_eq(bn_parse_duration("25h", 0.001, 86400, &d, &err), -1);
    ck_assert_str_eq(err.msg, "'25h' is out of range (expected 1ms..24h)");
    bn_format_duration(90, buf, sizeof buf);
    ck_assert_str_eq(buf, "90s");
    bn_format_duration(120, buf, sizeof buf);
    ck_assert_str_eq(buf, "2m");
}
END_TEST

/* The bitnet tool's numeric flags go through the same parsers: junk is a clear error, exit 2. */
START_TEST(test_cli_checked_flags)
{
    const char *bitnet = getenv("BN_BITNET");
    static const struct { const char *args, *says; } cases[] = {
        {"run -m X -n abc", "bitnet run: -n/--n-predict: 'abc' is not a whole number"},
        {"run -m X -p hi -t 2x", "bitnet run: -t/--threads: '2x' is not a whole number"},
        {"run -m X -p hi --temp hot", "bitnet run: --temp: 'hot' is not a number"},
        {"run -m X -p hi --top-p 1.5", "bitnet run: --top-p: '1.5' is out of range"},
        {"run -m X -p hi --seed -3", "bitnet run: --seed: '-3' is out of range"},
        {"run -m X -p hi -c 99999999999", "bitnet run: -c/--ctx: '99999999999' is out of range"},
        {"bench -m X -n 12q", "bitnet bench: -n/--n-gen: '12q' is not a whole number"},
        {"bench -m X -t 1,,2", "bitnet bench: -t/--threads: empty value"},
        {"bench -m X -r 0", "bitnet bench: -r/--reps: '0' is out of range"},
        {"perplexity -m X -f Y -c big", "bitnet perplexity: -c/--ctx: 'big' is not a whole number"},
        {"perplexity -m X -f Y -b -1", "bitnet perplexity: -b/--batch: '-1' is out of range"},
    };
    const char *out = bn_test_path("cli-flags.txt");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", bitnet, cases[i].args, out);
        ck_assert_msg(bn_test_sh(cmd) == 2, "%s: exit status is not 2", cases[i].args);
        char *text;
        size_t len;
        bn_error err;
        ck_assert_int_eq(bn_read_file(out, 1 << 20, &text, &len, &err), 0);
        ck_assert_msg(strstr(text, cases[i].says), "%s: output '%s' does not say '%s'", cases[i].args,
                      text, cases[i].says);
        ck_assert_msg(!strstr(text, "usage:"), "%s: a bad value prints usage", cases[i].args);
        free(text);
    }
    unlink(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_contract_keys);
    tcase_add_test(tc, test_every_type);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_syntax_errors);
    tcase_add_test(tc, test_comments_quotes_whitespace);
    tcase_add_test(tc, test_repeatable);
    tcase_add_test(tc, test_validate);
    tcase_add_test(tc, test_cmdline);
    tcase_add_test(tc, test_written_defaults_load);
    BN_TCASE_ADD_TEST_IF(tc, test_shipped_conf, bn_test_needs_env("BN_SRCDIR"));
    BN_TCASE_ADD_TEST_IF(tc, test_docs_table, bn_test_needs_env("BN_SRCDIR"));
    tcase_add_test(tc, test_parse_listen);
    tcase_add_test(tc, test_parse_numbers);
    tcase_add_test(tc, test_parse_bool_size_duration);
    BN_TCASE_ADD_TEST_IF(tc, test_cli_checked_flags, bn_test_needs_env("BN_BITNET"));
    suite_add_tcase(s, tc);
    return bn_test_exit("test_config", s);
}
