/* Placement: which CPUs each prefork worker's threads run on and which NUMA node holds its
 * memory, decided once by the master from the hwloc topology and the configured CPU set.
 *
 * bn_plan_make() is a pure function of (topology, allowed set, request): tests feed it hwloc
 * synthetic or XML topologies (2-socket EPYC with interleaved numbering, SMT on/off, 8 NUMA
 * nodes, a cgroup-limited set) so placement is proven beyond the machine the tests run on.
 *
 * Rules: workers get disjoint physical cores; one thread per core unless smt is asked for;
 * a worker's cores come from one L3 / NUMA node when they fit, and a node is filled before the
 * next is started; impossible requests (more threads than cores, an empty set, a CPU outside
 * the allowed set) fail with a sentence that says why. */
#ifndef BN_SERVER_PLACEMENT_H
#define BN_SERVER_PLACEMENT_H

#include <hwloc.h>
#include <stdio.h>

#include "base/error.h"

#define BN_PLACE_MAX_THREADS 1024

typedef struct bn_place_request {
    const char *cpus;   /* CPU list ("0-7,16-23"), OS numbering; NULL or "" = the whole allowed set */
    int workers;        /* 0 = auto (fill the set with `threads`-thread workers) */
    int threads;        /* per worker; 0 = auto (one per physical core, split across workers) */
    int smt;            /* 1 = use every PU of a core (two threads on siblings) */
    int share;          /* 1 = workers may share cores when workers x threads exceeds them:
                         * placed in rounds over the same cores (each worker's own threads stay
                         * on distinct cores); needs explicit workers and threads */
} bn_place_request;

typedef struct bn_worker_place {
    int n_threads;
    int *cpus;          /* n_threads OS CPU indexes: thread i runs on cpus[i] */
    int numa_node;      /* OS index of the NUMA node holding these cores; -1 if unknown */
    int l3;             /* logical index of the L3 cache holding them; -1 if none */
    int n_cores;        /* physical cores under cpus (n_threads without smt) */
} bn_worker_place;

typedef struct bn_plan {
    int n_workers;
    int threads;                /* per worker */
    bn_worker_place *w;         /* n_workers entries */
    int n_cores, n_pus;         /* in the usable set */
    int n_numa;                 /* NUMA nodes touched by the plan */
} bn_plan;

/* Parses a CPU list ("0-3,8,10-11") into a new bitmap; -1 with err on bad syntax. */
int bn_cpulist_parse(const char *s, hwloc_bitmap_t *out, bn_error *err);

/* Makes the plan. allowed: the CPUs this process may use (NULL = the topology's allowed
 * cpuset: cgroup cpusets are already folded in by hwloc). */
int bn_plan_make(hwloc_topology_t topo, hwloc_const_bitmap_t allowed, const bn_place_request *rq,
                 bn_plan *out, bn_error *err);
void bn_plan_free(bn_plan *p);

/* One line per worker: "worker 0: cpus 0-3 (4 cores), numa 0, l3 0". */
void bn_plan_log(const bn_plan *p, FILE *f);
/* The plan as a JSON string (malloc'd) for GET /v1/status:
 * {"workers":N,"threads":T,"numa_nodes":K,"placement":[{"worker":0,"cpus":[0,1],"numa":0,"l3":0}]} */
char *bn_plan_json(const bn_plan *p);

/* In a worker, before any allocation or thread: binds the process to wp->cpus and its memory to
 * wp->numa_node (when the machine has more than one). Thread i is then pinned to cpus[i] by the
 * engine (bn_engine_opts.cpus). */
int bn_place_bind_self(hwloc_topology_t topo, const bn_worker_place *wp, bn_error *err);
/* Returns 0, -1 (err: the CPU binding failed), or 1 (err: a warning: the memory binding was
 * refused, e.g. in a container; the CPUs are bound). */

/* Loads this machine's topology (with HWLOC_TOPOLOGY_FLAG_... defaults). */
int bn_topology_load(hwloc_topology_t *out, bn_error *err);

#endif
