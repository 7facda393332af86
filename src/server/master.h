/* The master process (nginx's master + its event loop in one): it owns the configuration, the
 * shared weights, the placement plan, the listening sockets and libevent's HTTP server, and
 * supervises one bn_slot per prefork worker (each runs up to hello.n_slots requests). It never runs OpenMP and never blocks on a worker:
 * workers talk to it only through their channel (channel.h), read by libevent.
 *
 * This header is shared by master.c (processes, slots, dispatch, signals) and http.c (routes,
 * the OpenAI endpoints, streaming); nothing else includes it. */
#ifndef BN_SERVER_MASTER_H
#define BN_SERVER_MASTER_H

#include <event2/event.h>
#include <event2/http.h>
#include <hwloc.h>
#include <sys/types.h>

#include "server/channel.h"
#include "server/config.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/placement.h"
#include "server/scheduler.h"
#include "server/weights.h"
#include "text/tokenizer.h"

/* What workers are forked from: the config, weights, tokenizer and plan of one (re)load.
 * Slots hold a reference; a generation is freed when the last worker forked from it is gone. */
typedef struct bn_generation {
    int refs;
    int id;
    bn_srv_config *cfg;        /* owned */
    bn_weights weights;
    bn_tokenizer *tok;
    enum bn_chat_kind chat;
    bn_plan plan;
    uint32_t n_ctx;            /* per worker, resolved */
    uint32_t n_slots;          /* requests per worker, resolved (slots = auto) */
    char slots_how[160];       /* how n_slots was chosen, for the start-up log line */
    char *model_path;          /* the packed file actually served */
    char *model_id;            /* /v1/models id */
    char *plan_json;
    long created;              /* wall-clock load time (the /v1/models "created") */
} bn_generation;

#define BN_MAX_WORKERS 256

/* IDLE: up, no job; BUSY: up, at least one job (it may still have free slots). */
enum bn_wstate { BN_W_DOWN = 0, BN_W_STARTING, BN_W_IDLE, BN_W_BUSY };

struct bn_job;

typedef struct bn_slot {
    struct bn_server *srv;
    int index;
    enum bn_wstate state;
    pid_t pid;                 /* 0 when no process */
    int fd;                    /* master end of the channel, -1 when closed */
    struct bufferevent *bev;
    bn_generation *gen;        /* what the process was forked from */
    int retire;                /* replace it once it holds no job (reload, shrink) */
    struct bn_job *jobs[BN_MAX_SEQ];   /* the requests it runs, jobs[0..n_jobs): one per slot */
    int n_jobs;
    bn_fr_hello hello;         /* n_slots clamped to 1..BN_MAX_SEQ */
    bn_sched_prefix *cache;    /* mirror of its prompt cache (CACHE frames; without a prompt
                                * cache, of its idle sequences from DONE), oldest first, ids
                                * owned: a routing hint, so forgetting entries is always safe */
    int n_cache, cap_cache;
    size_t n_cached;           /* tokens in the mirror */
    double spawned_at, last_progress, last_used;
    int restarts, quick_deaths;
    uint64_t requests;
    struct event *respawn;
} bn_slot;

/* A generation request from HTTP to a worker and back. Owned by http.c; freed when both the
 * HTTP side (response sent or client gone) and the worker side (DONE/ERROR, or never run) end. */
typedef struct bn_job {
    uint64_t id;
    bn_qnode qn;               /* first member after id: the queue links */
    struct bn_server *srv;
    bn_api_request api;
    int32_t *ids;              /* prompt tokens */
    size_t n_ids;
    int worker;                /* slot index while running, else -1 */
    int ran_on;                /* slot index it was dispatched to, -1 if never (access log) */
    int http_done, worker_done;
    int cancelled;             /* CANCEL sent */
    int priority, key;         /* from bn_limits: also in qn for the queue's order */
    struct bn_limits *limits;  /* admitted under it (a reference), NULL if never admitted */
    int started;               /* bn_limits_start called (dispatched) */
    double t_arrive, t_dispatch, t_first, t_last;
    uint32_t n_completion, n_cached;
    int32_t *out_ids;          /* generated ids (for the cache mirror) */
    size_t n_out, cap_out;
    void *http;                /* http.c's per-request state */
} bn_job;

typedef struct bn_server {
    struct event_base *base;
    struct evhttp *http;
    bn_cmdline cl;
    bn_srv_config *cfg;        /* in force: the current generation's, or the start-up one */
    hwloc_topology_t topo;
    bn_generation *gen;        /* current: new workers fork from it; NULL while loading */
    bn_slot *slots;            /* BN_MAX_WORKERS entries (fixed: callbacks hold slot pointers) */
    int n_slots;               /* in use */
    bn_queue queue;
    struct bn_limits *limits;  /* API keys and per-key limits of cfg (http.c rebuilds it on reload) */
    bn_metrics *metrics;
    bn_access_log *alog;
    int loading, draining;
    uint64_t next_job_id;
    double started_at;
    double mean_service_s;     /* EWMA of request service time, for Retry-After */
    int n_running;             /* jobs on workers */
    int n_open_http;           /* requests whose response is not finished */
    pid_t converter_pid;       /* helper child converting the model, 0 when none */
    int converter_fd;          /* its pipe: the packed path, or the error */
    bn_srv_config *pending;    /* the config being loaded (start-up or reload) */
    struct event *ev_tick, *ev_sig[6];
    int exit_code;
} bn_server;

double bn_mono(void);

/* master.c, for http.c */
/* Queues or dispatches j (already tokenized and validated). -1 with e filled (503) when the
 * queue is full or the server drains. */
int bn_master_submit(bn_server *s, bn_job *j, bn_api_error *e);
/* The client went away: drop j from the queue, or ask its worker to stop. */
void bn_master_cancel(bn_server *s, bn_job *j);
/* Counts for /health, /ready and /v1/status. */
void bn_master_counts(const bn_server *s, int *idle, int *busy, int *starting, int *down);
/* Slots (one request each) of the workers that are up (past HELLO): in use and in all. */
void bn_master_slot_counts(const bn_server *s, int *busy, int *total);
/* A worker's slots: 0 until its HELLO (and once it is gone). */
int bn_slot_capacity(const bn_slot *sl);
/* KV positions the running requests hold over those of every slot of the workers that are up
 * (vllm:kv_cache_usage_perc: cached prefixes are reusable space, as in vLLM). */
double bn_master_kv_usage(const bn_server *s);
const char *bn_wstate_name(enum bn_wstate st);

/* http.c, for master.c */
int bn_http_start(bn_server *s, bn_error *err);        /* bind every listen address */
void bn_http_stop_listening(bn_server *s);
void bn_http_free(bn_server *s);                     /* at exit */
void bn_http_apply_limits(bn_server *s);             /* s->cfg's sizes and timeouts (reload) */
void bn_http_on_start(bn_job *j);                      /* dispatched to a worker */
void bn_http_on_progress(bn_job *j);
void bn_http_on_chunk(bn_job *j, const char *text, size_t len, uint32_t n_ids);
void bn_http_on_done(bn_job *j, const bn_fr_done *d);
/* The request failed: status/type/code/message for the client. */
void bn_http_on_error(bn_job *j, const bn_api_error *e);
void bn_job_release_worker_side(bn_job *j);

/* bitnetd's whole life: returns the process exit status. */
int bn_master_main(int argc, char **argv);

#endif
