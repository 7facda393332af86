/* Placement: the plan of which CPUs each worker's threads run on, from the hwloc topology.
 *
 * The unit of allocation is a physical core: a worker owns whole cores, so two workers never
 * share a core's load ports and L1/L2. A core contributes its first usable PU, or every usable
 * PU with smt. Cores are grouped into domains, a domain being the cores of one L3 cache within
 * one NUMA node (one NUMA node when there is no L3), and domains into NUMA nodes, both in
 * topology order (hwloc's logical order walks NUMA node, then L3, then core).
 *
 * Filling (fill()): node by node, first workers that fit in one domain, then workers that span
 * the domains of that node from what is left, and only then the next node; workers that span
 * nodes are made last, from the leftovers of all nodes, and only when workers and threads were
 * both asked for in a way that needs them.
 *
 * threads = auto, workers = auto (the serving default): one worker per domain, each with the
 * domain's cores as threads, but never more than AUTO_MAX_THREADS: decode is bound by memory
 * bandwidth, which a few cores already saturate, so past that more threads add barrier cost,
 * not speed, while another worker adds a whole concurrent request. When the domains are not all
 * the same size (a cgroup that clips an L3), the thread count is the domain size (among those
 * at least half the largest: fragments are left unused) that keeps the most cores busy; ties go
 * to the larger thread count (lower latency per request). */
#include "server/placement.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define CPU_INDEX_MAX 65535    /* cpulist bound: far above any machine, far below overflow */
#define AUTO_MAX_THREADS 16

/* ---- CPU lists ----------------------------------------------------------------------- */

static const char *skip_spaces(const char *p)
{
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* One CPU index at *pp; -1 with err if there is none or it is too large. */
static int parse_index(const char *s, const char **pp, unsigned *out, bn_error *err)
{
    const char *p = *pp;
    if (*p < '0' || *p > '9') {
        if (*p == 0) return bn_err(err, "bad CPU list \"%s\": a CPU number is missing at the end", s);
        return bn_err(err, "bad CPU list \"%s\": expected a CPU number at \"%s\"", s, p);
    }
    unsigned long v = 0;
    const char *start = p;
    for (; *p >= '0' && *p <= '9'; p++)
        if (v <= CPU_INDEX_MAX) v = v * 10 + (unsigned)(*p - '0');
    if (v > CPU_INDEX_MAX)
        return bn_err(err, "bad CPU list \"%s\": CPU %.*s is too large (at most %d)", s,
                      (int)(p - start), start, CPU_INDEX_MAX);
    *out = (unsigned)v;
    *pp = p;
    return 0;
}

int bn_cpulist_parse(const char *s, hwloc_bitmap_t *out, bn_error *err)
{
    *out = NULL;
    if (!s || !*skip_spaces(s)) return bn_err(err, "empty CPU list");
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) return bn_err(err, "out of memory");
    const char *p = skip_spaces(s);
    for (;;) {
        unsigned a, b;
        if (parse_index(s, &p, &a, err)) goto fail;
        b = a;
        p = skip_spaces(p);
        if (*p == '-') {
            p = skip_spaces(p + 1);
            if (parse_index(s, &p, &b, err)) goto fail;
            if (b < a) {
                bn_err(err, "bad CPU list \"%s\": the range %u-%u is reversed", s, a, b);
                goto fail;
            }
            p = skip_spaces(p);
        }
        hwloc_bitmap_set_range(set, a, b);
        if (*p == 0) break;
        if (*p != ',') {
            bn_err(err, "bad CPU list \"%s\": unexpected \"%s\" (expected \",\" or \"-\")", s, p);
            goto fail;
        }
        p = skip_spaces(p + 1);
    }
    *out = set;
    return 0;
fail:
    hwloc_bitmap_free(set);
    return -1;
}

/* ---- the usable cores ---------------------------------------------------------------- */

typedef struct core_ref {
    int pu0, n_pu;     /* its usable PUs: pus[pu0 .. pu0+n_pu), OS indexes in ascending order */
    int numa;          /* OS index of its NUMA node, -1 if none */
    int l3;            /* logical index of its L3, -1 if none */
    int node, dom;     /* indexes into the planner's node and domain lists (first-seen order) */
    int used;
} core_ref;

typedef struct planner {
    core_ref *core;
    int n_core;
    int *pus;          /* every usable PU, grouped by core */
    int n_pus;
    int n_node, n_dom;
    int *dom_node;     /* [n_dom]: the node of each domain */
    int smt;
    char setstr[160];  /* the usable set as a list, for messages */
} planner;

enum scope { IN_DOMAIN, IN_NODE, ANYWHERE };

/* The nearest NUMA node above obj (hwloc 2 hangs memory off an ancestor of the cores). */
static int numa_of(hwloc_obj_t obj)
{
    for (; obj; obj = obj->parent) {
        hwloc_obj_t m = obj->memory_first_child;
        while (m && m->type != HWLOC_OBJ_NUMANODE) m = m->memory_first_child;   /* MemCache */
        if (m) return (int)m->os_index;
    }
    return -1;
}

/* Index of the first seen entry equal to key in keys[0..*n), appending it if new. */
static int intern(long *keys, int *n, long key)
{
    for (int i = 0; i < *n; i++)
        if (keys[i] == key) return i;
    keys[*n] = key;
    return (*n)++;
}

static void planner_free(planner *P)
{
    free(P->core);
    free(P->pus);
    free(P->dom_node);
    memset(P, 0, sizeof *P);
}

/* Collects the cores (PUs when the topology has no Core level) with a PU in usable. */
static int planner_init(planner *P, hwloc_topology_t topo, hwloc_const_bitmap_t usable, int smt,
                        bn_error *err)
{
    memset(P, 0, sizeof *P);
    P->smt = smt;
    hwloc_bitmap_list_snprintf(P->setstr, sizeof P->setstr, usable);
    hwloc_obj_type_t type =
        hwloc_get_type_depth(topo, HWLOC_OBJ_CORE) < 0 ? HWLOC_OBJ_PU : HWLOC_OBJ_CORE;
    int n_obj = hwloc_get_nbobjs_by_type(topo, type);
    int n_pu_max = hwloc_bitmap_weight(usable);
    long *node_keys = malloc(((size_t)n_obj + 1) * sizeof *node_keys);
    long *dom_keys = malloc(((size_t)n_obj + 1) * sizeof *dom_keys);
    hwloc_bitmap_t mine = hwloc_bitmap_alloc();
    P->core = calloc((size_t)n_obj + 1, sizeof *P->core);
    P->pus = malloc(((size_t)(n_pu_max > 0 ? n_pu_max : 0) + 1) * sizeof *P->pus);
    P->dom_node = malloc(((size_t)n_obj + 1) * sizeof *P->dom_node);
    if (!node_keys || !dom_keys || !mine || !P->core || !P->pus || !P->dom_node) {
        free(node_keys), free(dom_keys), hwloc_bitmap_free(mine), planner_free(P);
        return bn_err(err, "out of memory");
    }
    for (int i = 0; i < n_obj; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, type, (unsigned)i);
        hwloc_bitmap_and(mine, o->cpuset, usable);
        if (hwloc_bitmap_iszero(mine)) continue;
        core_ref *c = &P->core[P->n_core++];
        c->pu0 = P->n_pus;
        int id;
        hwloc_bitmap_foreach_begin(id, mine)
            if (P->n_pus < n_pu_max) P->pus[P->n_pus++] = id;
        hwloc_bitmap_foreach_end();
        c->n_pu = P->n_pus - c->pu0;
        hwloc_obj_t l3 = hwloc_get_ancestor_obj_by_type(topo, HWLOC_OBJ_L3CACHE, o);
        c->l3 = l3 ? (int)l3->logical_index : -1;
        c->numa = numa_of(o);
        c->node = intern(node_keys, &P->n_node, c->numa);
        c->dom = intern(dom_keys, &P->n_dom, (long)c->numa * (INT_MAX + 1L) + c->l3 + 1);
        P->dom_node[c->dom] = c->node;
    }
    free(node_keys);
    free(dom_keys);
    hwloc_bitmap_free(mine);
    return 0;
}

/* Threads a core gives a worker. */
static int core_units(const planner *P, const core_ref *c) { return P->smt ? c->n_pu : 1; }

static int in_scope(const core_ref *c, enum scope s, int key)
{
    return s == ANYWHERE || (s == IN_NODE ? c->node == key : c->dom == key);
}

/* Takes t threads from unused cores in scope, in topology order, if there are enough: marks
 * the cores used and writes the CPUs to cpus (may be NULL). A core that has more PUs than the
 * worker still needs is taken whole, its spare PUs left idle: cores are never shared. */
static int take(planner *P, enum scope s, int key, int t, int *cpus)
{
    int have = 0;
    for (int i = 0; i < P->n_core && have < t; i++)
        if (!P->core[i].used && in_scope(&P->core[i], s, key)) have += core_units(P, &P->core[i]);
    if (have < t) return 0;
    int k = 0;
    for (int i = 0; i < P->n_core && k < t; i++) {
        core_ref *c = &P->core[i];
        if (c->used || !in_scope(c, s, key)) continue;
        c->used = 1;
        for (int j = 0; j < core_units(P, c) && k < t; j++, k++)
            if (cpus) cpus[k] = P->pus[c->pu0 + j];
    }
    return 1;
}

/* Places up to wmax workers of t threads (see the file comment for the order); returns how many
 * fit. ws (may be NULL) receives each worker's CPUs, t per worker. Leaves every core unused. */
static int fill(planner *P, int t, int wmax, int cross_node, int *ws)
{
    int n = 0;
#define CPUS_OF(w) (ws ? ws + (size_t)(w) * (size_t)t : NULL)
    for (int node = 0; node < P->n_node && n < wmax; node++) {
        for (int d = 0; d < P->n_dom && n < wmax; d++) {
            if (P->dom_node[d] != node) continue;
            while (n < wmax && take(P, IN_DOMAIN, d, t, CPUS_OF(n))) n++;
        }
        while (n < wmax && take(P, IN_NODE, node, t, CPUS_OF(n))) n++;
    }
    while (cross_node && n < wmax && take(P, ANYWHERE, 0, t, CPUS_OF(n))) n++;
#undef CPUS_OF
    for (int i = 0; i < P->n_core; i++) P->core[i].used = 0;
    return n;
}

/* fill() for w workers; with share, in rounds over the same cores once they are all taken, so
 * later rounds' workers share cores with earlier ones. Returns how many were placed. */
static int place_all(planner *P, int t, int w, int cross_node, int share, int *ws)
{
    int n = fill(P, t, w, cross_node, ws);
    while (share && n > 0 && n < w) {
        int k = fill(P, t, w - n, cross_node, ws ? ws + (size_t)n * (size_t)t : NULL);
        if (k == 0) break;
        n += k;
    }
    return n;
}

static int total_units(const planner *P)
{
    int u = 0;
    for (int i = 0; i < P->n_core; i++) u += core_units(P, &P->core[i]);
    return u;
}

/* threads = workers = auto: see the file comment. */
static void auto_shape(planner *P, int *threads, int *workers)
{
    int *units = calloc((size_t)P->n_dom, sizeof *units);
    int best_t = 1, best_used = -1, t_max = 1;
    if (!units) {   /* out of memory: one single-thread worker per core still works */
        *threads = 1;
        *workers = fill(P, 1, INT_MAX, 0, NULL);
        return;
    }
    for (int i = 0; i < P->n_core; i++) units[P->core[i].dom] += core_units(P, &P->core[i]);
    for (int d = 0; d < P->n_dom; d++) {   /* a big domain becomes equal workers of <= 16 */
        int parts = (units[d] + AUTO_MAX_THREADS - 1) / AUTO_MAX_THREADS;
        units[d] /= parts;
        if (units[d] > t_max) t_max = units[d];
    }
    for (int d = 0; d < P->n_dom; d++) {
        int t = units[d], seen = 0;
        for (int e = 0; e < d && !seen; e++) seen = units[e] == t;
        if (seen || 2 * t < t_max) continue;   /* tried already, or a fragment */
        int used = t * fill(P, t, INT_MAX, 0, NULL);
        if (used > best_used || (used == best_used && t > best_t)) best_t = t, best_used = used;
    }
    free(units);
    *threads = best_t;
    *workers = fill(P, best_t, INT_MAX, 0, NULL);
}

/* ---- the plan ------------------------------------------------------------------------ */

/* The usable set: the requested CPUs, all of them allowed, or the allowed set itself. */
static int usable_set(hwloc_topology_t topo, hwloc_const_bitmap_t allowed, const char *cpus,
                      hwloc_bitmap_t *out, bn_error *err)
{
    char a[160], b[160];
    hwloc_bitmap_t avail = hwloc_bitmap_alloc(), req = NULL, extra = hwloc_bitmap_alloc();
    if (!avail || !extra) goto oom;
    hwloc_bitmap_and(avail, allowed ? allowed : hwloc_topology_get_allowed_cpuset(topo),
                     hwloc_topology_get_topology_cpuset(topo));
    if (!allowed && hwloc_topology_is_thissystem(topo) &&
        hwloc_get_cpubind(topo, extra, HWLOC_CPUBIND_PROCESS) == 0 && !hwloc_bitmap_iszero(extra))
        hwloc_bitmap_and(avail, avail, extra);   /* taskset / numactl narrow it like a cgroup */
    if (!cpus || !*cpus) {
        if (hwloc_bitmap_iszero(avail)) {
            bn_err(err, "no CPU to run on: the allowed CPU set is empty");
            goto fail;
        }
        hwloc_bitmap_free(extra);
        *out = avail;
        return 0;
    }
    if (bn_cpulist_parse(cpus, &req, err)) goto fail;
    hwloc_bitmap_andnot(extra, req, hwloc_topology_get_topology_cpuset(topo));
    if (!hwloc_bitmap_iszero(extra)) {
        hwloc_bitmap_list_snprintf(a, sizeof a, extra);
        hwloc_bitmap_list_snprintf(b, sizeof b, hwloc_topology_get_topology_cpuset(topo));
        bn_err(err, "cpus %s: CPU %s does not exist (this machine has CPUs %s)", cpus, a, b);
        goto fail;
    }
    hwloc_bitmap_andnot(extra, req, avail);
    if (!hwloc_bitmap_iszero(extra)) {
        hwloc_bitmap_list_snprintf(a, sizeof a, extra);
        hwloc_bitmap_list_snprintf(b, sizeof b, avail);
        bn_err(err, "cpus %s: CPU %s is outside the allowed CPU set %s (cgroup cpuset or affinity)",
               cpus, a, b);
        goto fail;
    }
    hwloc_bitmap_free(avail);
    hwloc_bitmap_free(extra);
    *out = req;
    return 0;
oom:
    bn_err(err, "out of memory");
fail:
    hwloc_bitmap_free(avail);
    hwloc_bitmap_free(req);
    hwloc_bitmap_free(extra);
    return -1;
}

/* Resolves (workers, threads) from the request; -1 with err when it cannot fit. */
static int shape(planner *P, const bn_place_request *rq, int *workers, int *threads, bn_error *err)
{
    int units = total_units(P), w = rq->workers, t = rq->threads;
    const char *what = P->smt ? "CPUs" : "cores";
    if (w == 0 && t == 0) {
        auto_shape(P, threads, workers);
        return 0;
    }
    if (w == 0) {
        w = fill(P, t, INT_MAX, 1, NULL);
        if (w == 0)
            return bn_err(err, "a worker of %d threads needs %d %s; the CPU set %s has %d", t, t,
                          what, P->setstr, units);
    } else if (t == 0) {
        t = units / w;
        while (t > 0 && fill(P, t, w, 1, NULL) < w) t--;   /* smt: whole cores may waste PUs */
        if (t == 0)
            return bn_err(err, "%d workers need at least %d %s; the CPU set %s has %d", w, w, what,
                          P->setstr, units);
    } else if (rq->share && t <= units) {
        if (place_all(P, t, w, 1, 1, NULL) < w)
            return bn_err(err, "%d workers x %d threads do not fit in the CPU set %s even sharing cores",
                          w, t, P->setstr);
    } else if ((long)w * t > units) {
        return bn_err(err, "%d workers x %d threads need %ld %s; the CPU set %s has %d (share_cores = on "
                      "lets workers share them)", w, t, (long)w * t, what, P->setstr, units);
    } else if (fill(P, t, w, 1, NULL) < w) {
        return bn_err(err, "%d workers x %d threads do not fit in the CPU set %s (%d cores, %d CPUs) "
                      "without two workers sharing a core: use an even thread count, or smt off",
                      w, t, P->setstr, P->n_core, P->n_pus);
    }
    if (t > BN_PLACE_MAX_THREADS)
        return bn_err(err, "%d threads per worker is more than the %d supported", t,
                      BN_PLACE_MAX_THREADS);
    *workers = w;
    *threads = t;
    return 0;
}

static int core_index_of_pu(const planner *P, int pu)
{
    for (int i = 0; i < P->n_core; i++)
        for (int j = 0; j < P->core[i].n_pu; j++)
            if (P->pus[P->core[i].pu0 + j] == pu) return i;
    return -1;
}

/* numa: the node holding most of the worker's threads (its memory goes there); l3: the one
 * L3 holding all of them, -1 when they span several. */
static void describe_worker(const planner *P, bn_worker_place *wp)
{
    int *per_node = calloc((size_t)P->n_node, sizeof *per_node), best = -1, last_core = -1;
    wp->numa_node = -1;
    wp->l3 = -2;
    wp->n_cores = 0;
    for (int k = 0; k < wp->n_threads; k++) {
        int ci = core_index_of_pu(P, wp->cpus[k]);
        const core_ref *c = &P->core[ci];
        if (ci != last_core) wp->n_cores++;   /* a core's PUs are consecutive in cpus */
        last_core = ci;
        wp->l3 = wp->l3 == -2 || wp->l3 == c->l3 ? c->l3 : -1;
        if (per_node && ++per_node[c->node] > best) best = per_node[c->node], wp->numa_node = c->numa;
        if (!per_node) wp->numa_node = c->numa;
    }
    if (wp->l3 == -2) wp->l3 = -1;
    free(per_node);
}

static int count_nodes(const bn_plan *p)
{
    int n = 0;
    for (int i = 0; i < p->n_workers; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = p->w[j].numa_node == p->w[i].numa_node;
        n += !seen;
    }
    return n;
}

int bn_plan_make(hwloc_topology_t topo, hwloc_const_bitmap_t allowed, const bn_place_request *rq,
                 bn_plan *out, bn_error *err)
{
    static const bn_place_request defaults = {0};
    memset(out, 0, sizeof *out);
    if (!rq) rq = &defaults;
    if (rq->workers < 0) return bn_err(err, "workers must be a positive number or auto, not %d", rq->workers);
    if (rq->threads < 0) return bn_err(err, "threads must be a positive number or auto, not %d", rq->threads);
    if (rq->threads > BN_PLACE_MAX_THREADS)
        return bn_err(err, "%d threads per worker is more than the %d supported", rq->threads,
                      BN_PLACE_MAX_THREADS);
    hwloc_bitmap_t usable = NULL;
    if (usable_set(topo, allowed, rq->cpus, &usable, err)) return -1;
    planner P;
    int rc = planner_init(&P, topo, usable, rq->smt != 0, err);
    hwloc_bitmap_free(usable);
    if (rc) return -1;
    int w = 0, t = 0, *cpus = NULL;
    if (P.n_core == 0) {
        rc = bn_err(err, "no core of this machine is in the CPU set %s", P.setstr);
    } else if ((rc = shape(&P, rq, &w, &t, err)) == 0) {
        cpus = malloc((size_t)w * (size_t)t * sizeof *cpus);
        out->w = calloc((size_t)w, sizeof *out->w);
        int share = rq->share && rq->workers > 0 && rq->threads > 0;
        if (!cpus || !out->w || place_all(&P, t, w, rq->workers > 0 || rq->threads > 0, share, cpus) != w)
            rc = bn_err(err, "out of memory");
    }
    for (int i = 0; rc == 0 && i < w; i++) {
        bn_worker_place *wp = &out->w[i];
        wp->n_threads = t;
        if (!(wp->cpus = malloc((size_t)t * sizeof *wp->cpus))) {
            rc = bn_err(err, "out of memory");
            break;
        }
        out->n_workers = i + 1;
        memcpy(wp->cpus, cpus + (size_t)i * (size_t)t, (size_t)t * sizeof *cpus);
        describe_worker(&P, wp);
    }
    free(cpus);
    if (rc == 0) {
        out->n_workers = w;
        out->threads = t;
        out->n_cores = P.n_core;
        out->n_pus = P.n_pus;
        out->n_numa = count_nodes(out);
    } else {
        bn_plan_free(out);
    }
    planner_free(&P);
    return rc;
}

void bn_plan_free(bn_plan *p)
{
    if (!p) return;
    for (int i = 0; p->w && i < p->n_workers; i++) free(p->w[i].cpus);
    free(p->w);
    memset(p, 0, sizeof *p);
}

/* ---- reporting ----------------------------------------------------------------------- */

/* cpus as a compact sorted list ("0-3,64-67"). */
static void cpus_str(const bn_worker_place *wp, char *buf, size_t n)
{
    hwloc_bitmap_t b = hwloc_bitmap_alloc();
    if (!b) {
        snprintf(buf, n, "?");
        return;
    }
    for (int i = 0; i < wp->n_threads; i++) hwloc_bitmap_set(b, (unsigned)wp->cpus[i]);
    hwloc_bitmap_list_snprintf(buf, n, b);
    hwloc_bitmap_free(b);
}

void bn_plan_log(const bn_plan *p, FILE *f)
{
    int cores = 0;
    for (int i = 0; i < p->n_workers; i++) {
        const bn_worker_place *wp = &p->w[i];
        char list[256], shape[64], l3[24];
        cpus_str(wp, list, sizeof list);
        if (wp->n_cores == wp->n_threads)
            snprintf(shape, sizeof shape, "%d cores", wp->n_cores);
        else
            snprintf(shape, sizeof shape, "%d threads on %d cores", wp->n_threads, wp->n_cores);
        if (wp->l3 >= 0) snprintf(l3, sizeof l3, "l3 %d", wp->l3);
        else snprintf(l3, sizeof l3, "l3 -");
        fprintf(f, "worker %d: cpus %s (%s), numa %d, %s\n", i, list, shape, wp->numa_node, l3);
        cores += wp->n_cores;
    }
    const char *shared = cores > p->n_cores ? ", workers sharing cores" : "";
    if (cores > p->n_cores) cores = p->n_cores;
    fprintf(f, "placement: %d worker%s x %d threads on %d of %d cores (%d CPUs usable)%s, %d NUMA node%s\n",
            p->n_workers, p->n_workers == 1 ? "" : "s", p->threads, cores, p->n_cores, p->n_pus, shared,
            p->n_numa, p->n_numa == 1 ? "" : "s");
}

char *bn_plan_json(const bn_plan *p)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < p->n_workers; i++) {
        const bn_worker_place *wp = &p->w[i];
        json_t *cpus = json_array();
        for (int k = 0; cpus && k < wp->n_threads; k++) json_array_append_new(cpus, json_integer(wp->cpus[k]));
        json_array_append_new(arr, json_pack("{s:i, s:o*, s:i, s:i, s:i}", "worker", i, "cpus", cpus,
                                             "cores", wp->n_cores, "numa", wp->numa_node, "l3", wp->l3));
    }
    json_t *root = json_pack("{s:i, s:i, s:i, s:o*}", "workers", p->n_workers, "threads", p->threads,
                             "numa_nodes", p->n_numa, "placement", arr);
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

/* ---- binding ------------------------------------------------------------------------- */

int bn_place_bind_self(hwloc_topology_t topo, const bn_worker_place *wp, bn_error *err)
{
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) return bn_err(err, "out of memory");
    for (int i = 0; i < wp->n_threads; i++) hwloc_bitmap_set(set, (unsigned)wp->cpus[i]);
    int rc = 0;
    if (hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0) {
        char list[256];
        hwloc_bitmap_list_snprintf(list, sizeof list, set);
        rc = bn_err(err, "cannot bind to CPUs %s: %s", list, strerror(errno));
    } else if (wp->numa_node >= 0 && hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE) > 1) {
        /* memory first touched by this worker (KV cache, scratch) lands on its own node */
        hwloc_bitmap_only(set, (unsigned)wp->numa_node);
        if (hwloc_set_membind(topo, set, HWLOC_MEMBIND_BIND,
                              HWLOC_MEMBIND_PROCESS | HWLOC_MEMBIND_BYNODESET) != 0) {
            /* Containers often forbid it (Docker without SYS_NICE): the worker still runs, on
             * the right cores, with first-touch placement. A warning, not a failure. */
            bn_err(err, "cannot bind memory to NUMA node %d (%s): memory is placed on first touch",
                   wp->numa_node, strerror(errno));
            rc = 1;
        }
    }
    hwloc_bitmap_free(set);
    return rc;
}

int bn_topology_load(hwloc_topology_t *out, bn_error *err)
{
    hwloc_topology_t topo;
    *out = NULL;
    if (hwloc_topology_init(&topo) != 0) return bn_err(err, "hwloc: cannot initialise: %s", strerror(errno));
    if (hwloc_topology_load(topo) != 0) {
        int e = errno;
        hwloc_topology_destroy(topo);
        return bn_err(err, "hwloc: cannot read this machine's topology: %s", strerror(e));
    }
    *out = topo;
    return 0;
}
