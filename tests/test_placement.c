/* The placement planner against hwloc synthetic topologies (so plans are proven on machines the
 * tests do not run on) and against this machine's own topology.
 *
 * Topologies: a 2-socket EPYC (2 x 4 L3 x 8 cores x 2 PUs, PU numbering interleaved the Linux
 * way: socket 0 is 0-31 + 64-95, socket 1 is 32-63 + 96-127), 8 NUMA nodes of 8 cores, a
 * 2-socket machine with one 28-core L3 per socket, a machine without L3. Every plan is checked
 * for the invariants (disjoint cores, SMT siblings only with smt, CPUs in the usable set, numa
 * and l3 fields true to the topology, nodes filled in order) and most for the exact CPU lists.
 * Checked too: the cgroup-limited allowed set, the auto modes, every impossible request failing
 * with a sentence that says why, the CPU list parser, the log lines, the JSON, and binding. */
#define _GNU_SOURCE
#include <check.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/placement.h"

#define EPYC_SHAPE "pack:2 numa:1 l3:4 core:8 pu:2"

/* ---- helpers ------------------------------------------------------------------------- */

/* Every description names its NUMA level: hwloc 2.9 adds a missing one with an overlapping
 * memcpy that valgrind reports. */

static hwloc_topology_t synth(const char *desc)
{
    hwloc_topology_t t;
    ck_assert(hwloc_topology_init(&t) == 0);
    ck_assert_msg(hwloc_topology_set_synthetic(t, desc) == 0, "bad synthetic description %s", desc);
    ck_assert(hwloc_topology_load(t) == 0);
    return t;
}

/* The EPYC shape with Linux's numbering: core k has PUs k and k + 64. */
static hwloc_topology_t epyc(void)
{
    char desc[1024];
    int n = snprintf(desc, sizeof desc, "%s(indexes=", EPYC_SHAPE);
    for (int k = 0; k < 64; k++) n += snprintf(desc + n, sizeof desc - (size_t)n, "%s%d,%d", k ? "," : "", k, k + 64);
    snprintf(desc + n, sizeof desc - (size_t)n, ")");
    hwloc_topology_t t = synth(desc);
    hwloc_obj_t pu1 = hwloc_get_obj_by_type(t, HWLOC_OBJ_PU, 1);
    ck_assert_int_eq(pu1->os_index, 64);   /* the numbering took */
    return t;
}

static hwloc_bitmap_t bits(const char *list)
{
    hwloc_bitmap_t b = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_cpulist_parse(list, &b, &err) == 0, "%s", err.msg);
    return b;
}

static hwloc_obj_t core_of(hwloc_topology_t t, int cpu)
{
    hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu);
    ck_assert_msg(pu != NULL, "CPU %d is not in the topology", cpu);
    hwloc_obj_t c = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_CORE, pu);
    return c ? c : pu;
}

static hwloc_obj_t node_of(hwloc_topology_t t, int cpu)
{
    for (hwloc_obj_t o = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu); o; o = o->parent)
        if (o->memory_first_child) return o->memory_first_child;
    return NULL;
}

static int l3_of(hwloc_topology_t t, int cpu)
{
    hwloc_obj_t l3 = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_L3CACHE,
                                                    hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu));
    return l3 ? (int)l3->logical_index : -1;
}

/* A worker's CPUs as a sorted compact list ("0-3,64-67"). */
static const char *wlist(const bn_plan *p, int i)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    hwloc_bitmap_t s = hwloc_bitmap_alloc();
    for (int j = 0; j < p->w[i].n_threads; j++) hwloc_bitmap_set(s, (unsigned)p->w[i].cpus[j]);
    hwloc_bitmap_list_snprintf(b, 512, s);
    hwloc_bitmap_free(s);
    return b;
}

/* What every plan must satisfy. usable: the set it was made from. */
static void check_invariants(hwloc_topology_t t, const bn_plan *p, hwloc_const_bitmap_t usable, int smt)
{
    ck_assert_int_gt(p->n_workers, 0);
    ck_assert_int_gt(p->threads, 0);
    hwloc_bitmap_t seen_cpu = hwloc_bitmap_alloc(), seen_core = hwloc_bitmap_alloc();
    int last_node = -1;
    for (int i = 0; i < p->n_workers; i++) {
        const bn_worker_place *w = &p->w[i];
        ck_assert_int_eq(w->n_threads, p->threads);
        hwloc_bitmap_t cores = hwloc_bitmap_alloc();
        int first_node = -1, one_node = 1, l3 = -2, majority_ok = 0, n_cores = 0;
        for (int j = 0; j < w->n_threads; j++) {
            int cpu = w->cpus[j];
            ck_assert_msg(hwloc_bitmap_isset(usable, (unsigned)cpu), "worker %d: CPU %d outside the set", i, cpu);
            ck_assert_msg(!hwloc_bitmap_isset(seen_cpu, (unsigned)cpu), "CPU %d used twice", cpu);
            hwloc_bitmap_set(seen_cpu, (unsigned)cpu);
            hwloc_obj_t c = core_of(t, cpu);
            ck_assert_msg(!hwloc_bitmap_isset(seen_core, c->logical_index),
                          "worker %d: core L#%u is also another worker's", i, c->logical_index);
            if (!hwloc_bitmap_isset(cores, c->logical_index)) n_cores++;
            else ck_assert_msg(smt, "worker %d: two threads on core L#%u without smt", i, c->logical_index);
            hwloc_bitmap_set(cores, c->logical_index);
            int node = (int)node_of(t, cpu)->os_index;
            if (first_node < 0) first_node = node;
            one_node &= node == first_node;
            majority_ok |= node == w->numa_node;
            l3 = l3 == -2 || l3 == l3_of(t, cpu) ? l3_of(t, cpu) : -1;
        }
        hwloc_bitmap_or(seen_core, seen_core, cores);
        ck_assert_int_eq(w->n_cores, n_cores);
        ck_assert_msg(majority_ok, "worker %d: numa %d holds none of its CPUs", i, w->numa_node);
        if (one_node) {
            ck_assert_int_eq(w->numa_node, first_node);
            /* nodes are filled in order: a single-node worker never precedes one of an earlier node */
            ck_assert_msg(first_node >= last_node, "worker %d on node %d after node %d", i, first_node, last_node);
            last_node = first_node;
        }
        ck_assert_int_eq(w->l3, l3);
        hwloc_bitmap_free(cores);
    }
    hwloc_bitmap_free(seen_cpu);
    hwloc_bitmap_free(seen_core);
}

/* Makes a plan that must succeed, and checks the invariants. */
static void plan_ok(hwloc_topology_t t, const char *allowed, const char *cpus, int workers,
                    int threads, int smt, bn_plan *p)
{
    bn_error err = {{0}};
    hwloc_bitmap_t al = allowed ? bits(allowed) : NULL;
    bn_place_request rq = {.cpus = cpus, .workers = workers, .threads = threads, .smt = smt};
    ck_assert_msg(bn_plan_make(t, al, &rq, p, &err) == 0, "%s", err.msg);
    hwloc_bitmap_t usable = cpus ? bits(cpus) : hwloc_bitmap_dup(al ? al : hwloc_topology_get_allowed_cpuset(t));
    check_invariants(t, p, usable, smt);
    hwloc_bitmap_free(usable);
    hwloc_bitmap_free(al);
}

/* A plan that must fail with a message containing every one of the NULL-terminated needles. */
static void plan_fails(hwloc_topology_t t, const char *allowed, const char *cpus, int workers,
                       int threads, int smt, ...)
{
    bn_error err = {{0}};
    hwloc_bitmap_t al = NULL;
    if (allowed) {
        al = hwloc_bitmap_alloc();
        if (*allowed) {
            hwloc_bitmap_free(al);
            al = bits(allowed);
        }
    }
    bn_place_request rq = {.cpus = cpus, .workers = workers, .threads = threads, .smt = smt};
    bn_plan p;
    ck_assert_msg(bn_plan_make(t, al, &rq, &p, &err) != 0, "cpus %s, %d x %d: expected a failure",
                  cpus ? cpus : "-", workers, threads);
    ck_assert_int_eq(p.n_workers, 0);
    ck_assert_ptr_null(p.w);
    va_list ap;
    va_start(ap, smt);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        ck_assert_msg(strstr(err.msg, s) != NULL, "message \"%s\" lacks \"%s\"", err.msg, s);
    va_end(ap);
    hwloc_bitmap_free(al);
}

static void assert_cpus(const bn_plan *p, int i, const int *want, int n)
{
    ck_assert_int_eq(p->w[i].n_threads, n);
    for (int j = 0; j < n; j++)
        ck_assert_msg(p->w[i].cpus[j] == want[j], "worker %d thread %d: CPU %d, expected %d", i, j,
                      p->w[i].cpus[j], want[j]);
}

/* ---- the CPU list parser ------------------------------------------------------------- */

START_TEST(cpulist_parses)
{
    hwloc_bitmap_t b = bits("0-7,16,18-19");
    char s[64];
    hwloc_bitmap_list_snprintf(s, sizeof s, b);
    ck_assert_str_eq(s, "0-7,16,18-19");
    ck_assert_int_eq(hwloc_bitmap_weight(b), 11);
    hwloc_bitmap_free(b);
    b = bits(" 3 - 5 , 1,1,4");   /* spaces, overlaps and repeats are fine */
    hwloc_bitmap_list_snprintf(s, sizeof s, b);
    ck_assert_str_eq(s, "1,3-5");
    hwloc_bitmap_free(b);
    b = bits("65535");
    ck_assert(hwloc_bitmap_isset(b, 65535) && hwloc_bitmap_weight(b) == 1);
    hwloc_bitmap_free(b);
}
END_TEST

START_TEST(cpulist_rejects_junk)
{
    static const struct { const char *in, *msg; } bad[] = {
        {"", "empty CPU list"},
        {"   ", "empty CPU list"},
        {"abc", "expected a CPU number at \"abc\""},
        {"0-3x", "unexpected \"x\""},
        {"1,", "missing at the end"},
        {",1", "expected a CPU number at \",1\""},
        {"1--2", "expected a CPU number at \"-2\""},
        {"-1", "expected a CPU number at \"-1\""},
        {"2-", "missing at the end"},
        {"7-3", "the range 7-3 is reversed"},
        {"65536", "CPU 65536 is too large"},
        {"0-99999999999999999999999", "CPU 99999999999999999999999 is too large"},
        {"1;2", "unexpected \";2\""},
        {"0x10", "unexpected \"x10\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_error err = {{0}};
        hwloc_bitmap_t b = (hwloc_bitmap_t)1;
        ck_assert_msg(bn_cpulist_parse(bad[i].in, &b, &err) != 0, "\"%s\" accepted", bad[i].in);
        ck_assert_ptr_null(b);
        ck_assert_msg(strstr(err.msg, bad[i].msg) != NULL, "\"%s\": message \"%s\" lacks \"%s\"",
                      bad[i].in, err.msg, bad[i].msg);
    }
    bn_error err = {{0}};
    hwloc_bitmap_t b;
    ck_assert(bn_cpulist_parse(NULL, &b, &err) != 0);
}
END_TEST

/* ---- (a) the 2-socket EPYC with interleaved numbering -------------------------------- */

START_TEST(epyc_auto_one_worker_per_l3)
{
    hwloc_topology_t t = epyc();
    bn_plan p;
    plan_ok(t, NULL, NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 8);
    ck_assert_int_eq(p.threads, 8);
    ck_assert_int_eq(p.n_cores, 64);
    ck_assert_int_eq(p.n_pus, 128);
    ck_assert_int_eq(p.n_numa, 2);
    for (int i = 0; i < 8; i++) {
        int want[8];
        for (int j = 0; j < 8; j++) want[j] = 8 * i + j;   /* first PU of each core: no sibling */
        assert_cpus(&p, i, want, 8);
        ck_assert_int_eq(p.w[i].numa_node, i / 4);
        ck_assert_int_eq(p.w[i].l3, i);
        ck_assert_int_eq(p.w[i].n_cores, 8);
    }
    bn_plan_free(&p);
    ck_assert_int_eq(p.n_workers, 0);
    bn_plan_free(&p);   /* twice is harmless */
    hwloc_topology_destroy(t);
}
END_TEST

START_TEST(epyc_smt_uses_siblings_only_when_asked)
{
    hwloc_topology_t t = epyc();
    bn_plan p;
    plan_ok(t, NULL, NULL, 0, 0, 1, &p);
    ck_assert_int_eq(p.n_workers, 8);   /* 16 PUs per L3 = the auto cap: still one per L3 */
    ck_assert_int_eq(p.threads, 16);
    int want[16];
    for (int j = 0; j < 8; j++) want[2 * j] = 40 + j, want[2 * j + 1] = 104 + j;   /* L3 5 */
    assert_cpus(&p, 5, want, 16);
    ck_assert_str_eq(wlist(&p, 5), "40-47,104-111");
    ck_assert_int_eq(p.w[5].n_cores, 8);
    ck_assert_int_eq(p.w[5].numa_node, 1);
    bn_plan_free(&p);

    /* the same CPU list: without smt 8 cores (one thread each), with smt 16 threads */
    plan_ok(t, NULL, "0-7,64-71", 1, 0, 0, &p);
    ck_assert_int_eq(p.threads, 8);
    ck_assert_str_eq(wlist(&p, 0), "0-7");
    bn_plan_free(&p);
    plan_ok(t, NULL, "0-7,64-71", 2, 0, 1, &p);
    ck_assert_int_eq(p.threads, 8);
    ck_assert_str_eq(wlist(&p, 0), "0-3,64-67");
    ck_assert_str_eq(wlist(&p, 1), "4-7,68-71");
    bn_plan_free(&p);

    /* smt with an odd thread count: a core is never split between two workers */
    plan_ok(t, NULL, "0-5,64-69", 0, 3, 1, &p);
    ck_assert_int_eq(p.n_workers, 3);
    int w0[] = {0, 64, 1}, w1[] = {2, 66, 3}, w2[] = {4, 68, 5};
    assert_cpus(&p, 0, w0, 3);
    assert_cpus(&p, 1, w1, 3);
    assert_cpus(&p, 2, w2, 3);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

START_TEST(epyc_fill_order)
{
    hwloc_topology_t t = epyc();
    bn_plan p;
    /* 3 workers of 8 fill socket 0's L3s before touching socket 1 */
    plan_ok(t, NULL, NULL, 3, 8, 0, &p);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(p.w[i].numa_node, 0);
        ck_assert_int_eq(p.w[i].l3, i);
    }
    ck_assert_int_eq(p.n_numa, 1);
    bn_plan_free(&p);

    /* 4 threads: two workers per L3, in order */
    plan_ok(t, NULL, NULL, 0, 4, 0, &p);
    ck_assert_int_eq(p.n_workers, 16);
    for (int i = 0; i < 16; i++) {
        int want[4] = {4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3};
        assert_cpus(&p, i, want, 4);
        ck_assert_int_eq(p.w[i].l3, i / 2);
    }
    bn_plan_free(&p);

    /* 12 threads do not fit an L3: workers span the L3s of one socket; the fifth worker
     * (floor(64/12) = 5) is made from both sockets' leftovers, and only it spans sockets */
    plan_ok(t, NULL, NULL, 0, 12, 0, &p);
    ck_assert_int_eq(p.n_workers, 5);
    ck_assert_str_eq(wlist(&p, 0), "0-11");
    ck_assert_str_eq(wlist(&p, 1), "12-23");
    ck_assert_str_eq(wlist(&p, 2), "32-43");
    ck_assert_str_eq(wlist(&p, 3), "44-55");
    ck_assert_str_eq(wlist(&p, 4), "24-31,56-59");
    for (int i = 0; i < 4; i++) ck_assert_int_eq(p.w[i].l3, -1);
    ck_assert_int_eq(p.w[4].numa_node, 0);   /* 8 of its 12 threads are on node 0 */
    ck_assert_int_eq(p.n_numa, 2);
    bn_plan_free(&p);

    /* 2 workers, threads auto: one per socket, 32 threads each */
    plan_ok(t, NULL, NULL, 2, 0, 0, &p);
    ck_assert_int_eq(p.threads, 32);
    ck_assert_str_eq(wlist(&p, 0), "0-31");
    ck_assert_str_eq(wlist(&p, 1), "32-63");
    ck_assert_int_eq(p.w[1].numa_node, 1);
    bn_plan_free(&p);

    /* an explicit CPU list on socket 1 only */
    plan_ok(t, NULL, "32-47,96-111", 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 2);
    ck_assert_str_eq(wlist(&p, 0), "32-39");
    ck_assert_str_eq(wlist(&p, 1), "40-47");
    ck_assert_int_eq(p.w[0].numa_node, 1);
    ck_assert_int_eq(p.w[0].l3, 4);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- (c) 8 NUMA nodes, big L3s, no L3 ------------------------------------------------ */

START_TEST(eight_numa_nodes)
{
    hwloc_topology_t t = synth("pack:2 numa:4 l3:1 core:8 pu:2");
    bn_plan p;
    plan_ok(t, NULL, NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 8);
    ck_assert_int_eq(p.n_numa, 8);
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(p.w[i].numa_node, i);
        ck_assert_int_eq(p.w[i].cpus[0], 16 * i);
        ck_assert_int_eq(p.w[i].cpus[1], 16 * i + 2);   /* the next core's first PU */
    }
    bn_plan_free(&p);
    /* 4 workers x 16 threads (smt): one node each, the first four nodes */
    plan_ok(t, NULL, NULL, 4, 16, 1, &p);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(p.w[i].numa_node, i);
        ck_assert_int_eq(p.w[i].n_cores, 8);
    }
    bn_plan_free(&p);
    /* 16-thread workers (no smt) need two nodes each: they span nodes, in order */
    plan_ok(t, NULL, NULL, 0, 16, 0, &p);
    ck_assert_int_eq(p.n_workers, 4);
    ck_assert_int_eq(p.w[0].cpus[0], 0);
    ck_assert_int_eq(p.w[0].cpus[8], 16);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);

    /* no L3 at all: the domain is the NUMA node */
    t = synth("pack:2 numa:4 core:4 pu:1");
    plan_ok(t, NULL, NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 8);
    ck_assert_int_eq(p.threads, 4);
    ck_assert_int_eq(p.w[3].l3, -1);
    ck_assert_int_eq(p.w[3].numa_node, 3);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

START_TEST(big_l3_split_for_serving)
{
    /* one 28-core L3 per socket: auto makes workers of at most 16 threads, 2 per socket */
    hwloc_topology_t t = synth("pack:2 numa:1 l3:1 core:28 pu:2");
    bn_plan p;
    plan_ok(t, NULL, NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 4);
    ck_assert_int_eq(p.threads, 14);
    ck_assert_int_eq(p.w[1].l3, 0);
    ck_assert_int_eq(p.w[2].l3, 1);
    ck_assert_int_eq(p.w[2].numa_node, 1);
    bn_plan_free(&p);
    /* asked for: one 28-thread worker per socket */
    plan_ok(t, NULL, NULL, 0, 28, 0, &p);
    ck_assert_int_eq(p.n_workers, 2);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);

    /* a single-core machine (no Core level in the description) still plans */
    t = synth("numa:1 pu:1");
    plan_ok(t, NULL, NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 1);
    ck_assert_int_eq(p.threads, 1);
    ck_assert_int_eq(p.w[0].cpus[0], 0);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- (d) a cgroup-limited allowed set ------------------------------------------------ */

START_TEST(cgroup_limited_set)
{
    hwloc_topology_t t = epyc();
    bn_plan p;
    plan_ok(t, "0-5", NULL, 0, 0, 0, &p);   /* 6 cores of one L3 */
    ck_assert_int_eq(p.n_workers, 1);
    ck_assert_int_eq(p.threads, 6);
    ck_assert_int_eq(p.n_cores, 6);
    ck_assert_int_eq(p.n_pus, 6);
    ck_assert_str_eq(wlist(&p, 0), "0-5");
    bn_plan_free(&p);
    plan_ok(t, "0-5", NULL, 2, 0, 0, &p);
    ck_assert_int_eq(p.threads, 3);
    ck_assert_str_eq(wlist(&p, 1), "3-5");
    bn_plan_free(&p);
    /* an L3 clipped to 2 of its 8 cores is a fragment: left idle rather than shrink every worker */
    plan_ok(t, "0-9", NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 1);
    ck_assert_str_eq(wlist(&p, 0), "0-7");
    bn_plan_free(&p);
    /* clipped to 4: three 4-thread workers use all 12 cores (one 8 would use 8) */
    plan_ok(t, "0-11", NULL, 0, 0, 0, &p);
    ck_assert_int_eq(p.n_workers, 3);
    ck_assert_int_eq(p.threads, 4);
    ck_assert_int_eq(p.w[2].l3, 1);
    bn_plan_free(&p);
    /* only the hyperthreads of cores 0-3 allowed: those are the cores' usable PUs */
    plan_ok(t, "64-67", NULL, 0, 0, 0, &p);
    ck_assert_str_eq(wlist(&p, 0), "64-67");
    bn_plan_free(&p);
    /* the requested cpus inside the allowed set */
    plan_ok(t, "0-5", "2-3", 0, 0, 0, &p);
    ck_assert_str_eq(wlist(&p, 0), "2-3");
    bn_plan_free(&p);
    plan_fails(t, "0-5", "4-9", 0, 0, 0, "CPU 6-9 is outside the allowed CPU set 0-5", NULL);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- (e) impossible requests --------------------------------------------------------- */

START_TEST(impossible_requests_say_why)
{
    hwloc_topology_t t = epyc();
    plan_fails(t, NULL, "0-7", 4, 8, 0, "4 workers x 8 threads need 32 cores; the CPU set 0-7 has 8", NULL);
    plan_fails(t, NULL, "0-7,64-71", 4, 8, 1, "4 workers x 8 threads need 32 CPUs; the CPU set 0-7,64-71 has 16", NULL);
    plan_fails(t, NULL, NULL, 0, 65, 0, "a worker of 65 threads needs 65 cores; the CPU set 0-127 has 64", NULL);
    plan_fails(t, NULL, NULL, 65, 0, 0, "65 workers need at least 65 cores; the CPU set 0-127 has 64", NULL);
    plan_fails(t, NULL, NULL, 0, 2000, 0, "2000 threads per worker is more than the 1024 supported", NULL);
    plan_fails(t, NULL, NULL, -1, 0, 0, "workers must be a positive number or auto, not -1", NULL);
    plan_fails(t, NULL, NULL, 0, -2, 0, "threads must be a positive number or auto, not -2", NULL);
    plan_fails(t, "", NULL, 0, 0, 0, "the allowed CPU set is empty", NULL);
    plan_fails(t, "", "0-3", 0, 0, 0, "CPU 0-3 is outside the allowed CPU set", NULL);
    plan_fails(t, "0-63", "60-70", 0, 0, 0, "cpus 60-70: CPU 64-70 is outside the allowed CPU set 0-63", NULL);
    plan_fails(t, NULL, "100-200", 0, 0, 0, "cpus 100-200: CPU 128-200 does not exist",
               "this machine has CPUs 0-127", NULL);
    plan_fails(t, NULL, "0-3junk", 0, 0, 0, "bad CPU list \"0-3junk\"", NULL);
    plan_fails(t, NULL, "8-1", 0, 0, 0, "the range 8-1 is reversed", NULL);
    plan_fails(t, NULL, "123456789", 0, 0, 0, "CPU 123456789 is too large", NULL);
    /* 5 cores with smt, 3 workers x 3 threads: 9 <= 10 PUs, but only by sharing a core */
    plan_fails(t, NULL, "0-4,64-68", 3, 3, 1, "3 workers x 3 threads do not fit in the CPU set 0-4,64-68",
               "sharing a core", NULL);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- (f) auto modes ------------------------------------------------------------------ */

START_TEST(auto_modes)
{
    hwloc_topology_t t = synth("pack:1 numa:1 l3:2 core:4 pu:2");   /* 8 cores, 2 L3 */
    bn_plan p;
    bn_error err = {{0}};
    ck_assert_msg(bn_plan_make(t, NULL, NULL, &p, &err) == 0, "%s", err.msg);   /* NULL request */
    ck_assert_int_eq(p.n_workers, 2);
    ck_assert_int_eq(p.threads, 4);
    bn_plan_free(&p);
    bn_place_request empty = {.cpus = ""};
    ck_assert_msg(bn_plan_make(t, NULL, &empty, &p, &err) == 0, "%s", err.msg);   /* "" = allowed set */
    ck_assert_int_eq(p.n_workers, 2);
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 0, 3, 0, &p);   /* threads given: as many as fit, floor(8/3) */
    ck_assert_int_eq(p.n_workers, 2);
    ck_assert_str_eq(wlist(&p, 0), "0,2,4");
    ck_assert_str_eq(wlist(&p, 1), "8,10,12");
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 0, 6, 0, &p);   /* 6 > an L3: spans both */
    ck_assert_int_eq(p.n_workers, 1);
    ck_assert_int_eq(p.w[0].l3, -1);
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 3, 0, 0, &p);   /* workers given: floor(8/3) threads */
    ck_assert_int_eq(p.threads, 2);
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 8, 0, 0, &p);
    ck_assert_int_eq(p.threads, 1);
    bn_plan_free(&p);
    /* smt: floor(16/3) = 5 would leave a worker short (cores are taken whole), so 4 */
    plan_ok(t, NULL, NULL, 3, 0, 1, &p);
    ck_assert_int_eq(p.threads, 4);
    ck_assert_int_eq(p.n_workers, 3);
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 2, 0, 1, &p);   /* floor(16/2) = 8: one L3 each */
    ck_assert_int_eq(p.threads, 8);
    ck_assert_int_eq(p.w[1].l3, 1);
    bn_plan_free(&p);
    plan_ok(t, NULL, NULL, 8, 2, 1, &p);   /* every core a worker, both siblings */
    ck_assert_int_eq(p.n_workers, 8);
    ck_assert_int_eq(p.w[7].cpus[0], 14);
    ck_assert_int_eq(p.w[7].cpus[1], 15);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- log and JSON -------------------------------------------------------------------- */

START_TEST(log_and_json)
{
    hwloc_topology_t t = epyc();
    bn_plan p;
    plan_ok(t, NULL, "0-7,64-71,32-35", 0, 4, 1, &p);
    ck_assert_int_eq(p.n_workers, 5);   /* 4 on cores 0-7 (2 cores each), 1 on 32-35 */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    bn_plan_log(&p, f);
    fclose(f);
    ck_assert_msg(strstr(buf, "worker 0: cpus 0-1,64-65 (4 threads on 2 cores), numa 0, l3 0\n"), "%s", buf);
    ck_assert_msg(strstr(buf, "worker 3: cpus 6-7,70-71 (4 threads on 2 cores), numa 0, l3 0\n"), "%s", buf);
    /* 32-35 without their siblings: one thread per core */
    ck_assert_msg(strstr(buf, "worker 4: cpus 32-35 (4 cores), numa 1, l3 4\n"), "%s", buf);
    ck_assert_msg(strstr(buf, "placement: 5 workers x 4 threads on 12 of 12 cores (20 CPUs usable), 2 NUMA nodes\n"),
                  "%s", buf);
    free(buf);

    char *js = bn_plan_json(&p);
    ck_assert_ptr_nonnull(js);
    json_error_t je;
    json_t *root = json_loads(js, 0, &je);
    ck_assert_msg(root != NULL, "%s: %s", js, je.text);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "workers")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "threads")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "numa_nodes")), 2);
    json_t *pl = json_object_get(root, "placement");
    ck_assert_int_eq(json_array_size(pl), 5);
    json_t *w0 = json_array_get(pl, 0);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "worker")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "numa")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "l3")), 0);
    json_t *cpus = json_object_get(w0, "cpus");
    ck_assert_int_eq(json_array_size(cpus), 4);
    ck_assert_int_eq(json_integer_value(json_array_get(cpus, 1)), 64);   /* thread order */
    json_decref(root);
    free(js);
    bn_plan_free(&p);
    hwloc_topology_destroy(t);
}
END_TEST

/* ---- (g) this machine ---------------------------------------------------------------- */

START_TEST(real_machine_plans_and_binds)
{
    hwloc_topology_t t = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_topology_load(&t, &err) == 0, "%s", err.msg);
    fprintf(stderr, "hwloc %s (API 0x%x)\n", HWLOC_VERSION, hwloc_get_api_version());
    cpu_set_t before;
    ck_assert(sched_getaffinity(0, sizeof before, &before) == 0);
    hwloc_bitmap_t mask = hwloc_bitmap_alloc();
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &before)) hwloc_bitmap_set(mask, (unsigned)c);
    for (int smt = 0; smt <= 1; smt++) {
        bn_plan p;
        bn_place_request rq = {.smt = smt};
        ck_assert_msg(bn_plan_make(t, NULL, &rq, &p, &err) == 0, "%s", err.msg);
        hwloc_bitmap_t usable = hwloc_bitmap_dup(hwloc_topology_get_allowed_cpuset(t));
        hwloc_bitmap_and(usable, usable, mask);   /* the default honours the affinity mask */
        check_invariants(t, &p, usable, smt);
        hwloc_bitmap_free(usable);
        if (!smt) bn_plan_log(&p, stderr);
        /* one worker of every usable core */
        bn_plan_free(&p);
        rq.workers = 1;
        ck_assert_msg(bn_plan_make(t, NULL, &rq, &p, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(p.w[0].n_threads, smt ? p.n_pus : p.n_cores);
        if (!smt) {
            /* binding: the process runs on exactly the worker's CPUs afterwards */
            ck_assert_msg(bn_place_bind_self(t, &p.w[0], &err) == 0, "%s", err.msg);
            cpu_set_t now;
            ck_assert(sched_getaffinity(0, sizeof now, &now) == 0);
            ck_assert_int_eq(CPU_COUNT(&now), p.w[0].n_threads);
            for (int j = 0; j < p.w[0].n_threads; j++) ck_assert(CPU_ISSET(p.w[0].cpus[j], &now));
            ck_assert(sched_setaffinity(0, sizeof before, &before) == 0);
        }
        bn_plan_free(&p);
    }
    /* binding to a CPU that does not exist fails with a message */
    int bogus = 4000;
    bn_worker_place wp = {.n_threads = 1, .cpus = &bogus, .numa_node = -1, .l3 = -1, .n_cores = 1};
    ck_assert(bn_place_bind_self(t, &wp, &err) != 0);
    ck_assert_msg(strstr(err.msg, "cannot bind to CPUs 4000"), "%s", err.msg);
    cpu_set_t after;
    ck_assert(sched_getaffinity(0, sizeof after, &after) == 0);
    ck_assert(CPU_EQUAL(&after, &before));
    hwloc_bitmap_free(mask);
    hwloc_topology_destroy(t);
}
END_TEST

/* share_cores: more single-thread workers than cores (many users on a small box). Workers are
 * placed in rounds over the same cores; within a worker, threads stay on distinct cores; without
 * share, or with more threads than cores, the request is refused. */
START_TEST(share_cores_rounds)
{
    hwloc_topology_t t = synth("pack:1 numa:1 l3:1 core:2 pu:1");
    bn_error err = {{0}};
    bn_plan p;
    bn_place_request rq = {.workers = 4, .threads = 1, .share = 1};
    ck_assert_msg(bn_plan_make(t, NULL, &rq, &p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(p.n_workers, 4);
    const int c0[] = {0}, c1[] = {1};
    assert_cpus(&p, 0, c0, 1);
    assert_cpus(&p, 1, c1, 1);
    assert_cpus(&p, 2, c0, 1);
    assert_cpus(&p, 3, c1, 1);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    bn_plan_log(&p, f);
    fclose(f);
    ck_assert_msg(strstr(text, "on 2 of 2 cores") && strstr(text, "sharing cores"), "%s", text);
    free(text);
    bn_plan_free(&p);
    rq.workers = 3;
    rq.threads = 2;     /* each worker's two threads on the two cores; three such workers */
    ck_assert_msg(bn_plan_make(t, NULL, &rq, &p, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) ck_assert_int_ne(p.w[i].cpus[0], p.w[i].cpus[1]);
    bn_plan_free(&p);
    rq.threads = 3;     /* more threads than cores: refused even sharing */
    ck_assert_int_ne(bn_plan_make(t, NULL, &rq, &p, &err), 0);
    plan_fails(t, NULL, NULL, 4, 1, 0, "4 workers x 1 threads need 4 cores", "share_cores", NULL);
    hwloc_topology_destroy(t);
}
END_TEST

static Suite *placement_suite(void)
{
    Suite *s = suite_create("placement");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, cpulist_parses);
    tcase_add_test(tc, cpulist_rejects_junk);
    tcase_add_test(tc, epyc_auto_one_worker_per_l3);
    tcase_add_test(tc, epyc_smt_uses_siblings_only_when_asked);
    tcase_add_test(tc, epyc_fill_order);
    tcase_add_test(tc, eight_numa_nodes);
    tcase_add_test(tc, big_l3_split_for_serving);
    tcase_add_test(tc, cgroup_limited_set);
    tcase_add_test(tc, impossible_requests_say_why);
    tcase_add_test(tc, auto_modes);
    tcase_add_test(tc, log_and_json);
    tcase_add_test(tc, real_machine_plans_and_binds);
    tcase_add_test(tc, share_cores_rounds);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(placement_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
