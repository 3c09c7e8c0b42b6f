/* SPDX-License-Identifier: Apache-2.0 */
/* test_copier.c - copy helper threads: every byte where it belongs, whoever copied it; a
 * second caller, a forked child and a context without helpers copy alone. */
#include "copier_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct job {
    uint8_t *src, *dst;
    size_t n;
    size_t *off, *len; /* item i: len[i] bytes at off[i] of src, to the same offset of dst */
    size_t bytes;
} job_t;

static void item_of(void *arg, size_t i, void **dst, const void **src, size_t *len)
{
    job_t *j = arg;
    *dst = j->dst + j->off[i];
    *src = j->src + j->off[i];
    *len = j->len[i];
}

/* @n items of random sizes (some empty, some over a chunk), apart by gaps
 * that must stay untouched. */
static job_t job_new(size_t n, size_t max_len, unsigned seed)
{
    job_t j = {.n = n};
    j.off = calloc(n, sizeof(size_t));
    j.len = calloc(n, sizeof(size_t));
    size_t at = 0;
    srand(seed);
    for (size_t i = 0; i < n; i++) {
        j.len[i] = i % 17 == 5 ? 0 : (size_t)rand() % max_len + 1;
        at += (size_t)rand() % 64; /* a gap */
        j.off[i] = at;
        at += j.len[i];
        j.bytes += j.len[i];
    }
    at += 64;
    j.src = malloc(at);
    j.dst = malloc(at);
    for (size_t k = 0; k < at; k++)
        j.src[k] = (uint8_t)(rand() >> 7);
    memset(j.dst, 0xA5, at);
    cr_assert(j.src && j.dst && j.off && j.len);
    return j;
}

static void job_check(const job_t *j, const char *what)
{
    size_t at = 0;
    for (size_t i = 0; i < j->n; i++) {
        for (size_t k = at; k < j->off[i]; k++)
            cr_assert_eq(j->dst[k], 0xA5, "%s: byte %zu before item %zu written", what, k, i);
        cr_assert(memcmp(j->dst + j->off[i], j->src + j->off[i], j->len[i]) == 0,
                  "%s: item %zu (%zu bytes at %zu) differs", what, i, j->len[i], j->off[i]);
        at = j->off[i] + j->len[i];
    }
}

static void job_free(job_t *j)
{
    free(j->src);
    free(j->dst);
    free(j->off);
    free(j->len);
}

Test(copier, every_byte_lands_with_and_without_helpers)
{
    for (unsigned threads = 0; threads <= 3; threads++) {
        kvs__copier_t *cp = NULL;
        cr_assert_eq(kvs__copier_new(threads, NULL, &cp), KVS_OK);
        cr_assert_eq(cp == NULL, threads == 0);
        /* Small items, one item larger than many chunks, and a job under
         * the threshold (copied by the caller alone). */
        const size_t shapes[][2] = {{512, 16384}, {3, 3u << 20}, {4, 1000}};
        /* Each twice: memcpy, then stores around the caches (whose
         * helpers' chunks start and end anywhere in an item). */
        for (size_t s = 0; s < 6; s++) {
            bool stream = s >= 3;
            job_t j = job_new(shapes[s % 3][0], shapes[s % 3][1], 7 + threads + (unsigned)s);
            size_t helped;
            cr_assert_eq(kvs__copier_run(cp, j.n, item_of, &j, stream, &helped), j.bytes);
            cr_assert_leq(helped, j.bytes);
            if (cp == NULL || j.bytes < KVS__COPIER_MIN_BYTES)
                cr_assert_eq(helped, 0, "%zu bytes: helped %zu", j.bytes, helped);
            job_check(&j, threads ? (stream ? "streamed with helpers" : "with helpers")
                                  : (stream ? "streamed alone" : "alone"));
            job_free(&j);
        }
        kvs__copier_free(cp);
    }
}

/* Job @j copied again into a cleared destination: every byte checked;
 * returns the bytes helpers copied. */
static size_t run_checked(kvs__copier_t *cp, job_t *j, const char *what)
{
    memset(j->dst, 0xA5, j->off[j->n - 1] + j->len[j->n - 1]);
    size_t h;
    cr_assert_eq(kvs__copier_run(cp, j->n, item_of, j, false, &h), j->bytes, "%s", what);
    job_check(j, what);
    return h;
}

Test(copier, helpers_take_part)
{
    /* One job can end before a helper wakes; over 50 jobs of 8 MiB one
     * cannot miss them all unless it never copies. */
    kvs__copier_t *cp = NULL;
    cr_assert_eq(kvs__copier_new(1, NULL, &cp), KVS_OK);
    cr_assert_not_null(cp);
    job_t j = job_new(512, 32768, 3);
    size_t helped = 0;
    for (int r = 0; r < 50; r++)
        helped += run_checked(cp, &j, "helped");
    cr_assert_gt(helped, 0, "the helper never copied a chunk");
    cr_assert_eq(kvs__copier_helped(cp), helped);
    job_free(&j);
    kvs__copier_free(cp);
}

/* kvs__copier_solo: a job of at most KVS__COPIER_SOLO_MAX_BYTES is the
 * caller's alone, every time; a larger one is still shared (over 50 jobs
 * a helper copies some); the setting is per thread, and put back. */
static void *solo_elsewhere(void *arg)
{
    *(bool *)arg = kvs__copier_solo(false); /* another thread: not solo */
    return NULL;
}

Test(copier, solo_keeps_small_jobs_on_the_caller)
{
    kvs__copier_t *cp = NULL;
    cr_assert_eq(kvs__copier_new(1, NULL, &cp), KVS_OK);
    cr_assert_not_null(cp);
    cr_assert_eq(kvs__copier_solo(true), false);
    bool other = true;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, solo_elsewhere, &other), 0);
    pthread_join(th, NULL);
    cr_assert_eq(other, false, "solo leaked to another thread");
    job_t small = job_new(96, 16384, 11), big = job_new(512, 32768, 12);
    cr_assert(small.bytes >= KVS__COPIER_MIN_BYTES && small.bytes <= KVS__COPIER_SOLO_MAX_BYTES,
              "%zu bytes", small.bytes);
    cr_assert_gt(big.bytes, KVS__COPIER_SOLO_MAX_BYTES);
    size_t big_helped = 0;
    for (int r = 0; r < 50; r++) {
        size_t h = run_checked(cp, &small, "solo");
        cr_assert_eq(h, 0, "round %d: a helper copied %zu bytes of a solo job", r, h);
        big_helped += run_checked(cp, &big, "solo, large");
    }
    cr_assert_gt(big_helped, 0, "no helper took part in a job over the solo limit");
    cr_assert_eq(kvs__copier_solo(false), true);
    job_free(&small);
    job_free(&big);
    kvs__copier_free(cp);
}

typedef struct racer {
    kvs__copier_t *cp;
    job_t j;
} racer_t;

static void *race(void *arg)
{
    racer_t *r = arg;
    size_t helped;
    for (int k = 0; k < 20; k++)
        kvs__copier_run(r->cp, r->j.n, item_of, &r->j, false, &helped);
    return NULL;
}

Test(copier, callers_at_once_each_get_their_bytes)
{
    kvs__copier_t *cp = NULL;
    cr_assert_eq(kvs__copier_new(2, NULL, &cp), KVS_OK);
    racer_t r[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        r[i] = (racer_t){.cp = cp, .j = job_new(256, 20000, 100 + (unsigned)i)};
        cr_assert_eq(pthread_create(&th[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        job_check(&r[i].j, "racing callers");
        job_free(&r[i].j);
    }
    kvs__copier_free(cp);
}

Test(copier, a_forked_child_copies_alone)
{
    kvs__copier_t *cp = NULL;
    cr_assert_eq(kvs__copier_new(1, NULL, &cp), KVS_OK);
    job_t j = job_new(256, 20000, 9);
    size_t helped;
    kvs__copier_run(cp, j.n, item_of, &j, false, &helped); /* the helper has run once */
    memset(j.dst, 0xA5, j.off[j.n - 1] + j.len[j.n - 1]);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* No helper crossed the fork: waiting for one would hang. */
        alarm(10);
        int bad = kvs__copier_run(cp, j.n, item_of, &j, false, &helped) != j.bytes || helped != 0;
        for (size_t i = 0; i < j.n && !bad; i++)
            bad = memcmp(j.dst + j.off[i], j.src + j.off[i], j.len[i]) != 0;
        kvs__copier_free(cp);
        _exit(bad ? 1 : 0);
    }
    int ws = 0;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child: status 0x%x", ws);
    job_free(&j);
    kvs__copier_free(cp);
}

/* Writes @text to @root/@rel. */
static void cg_add(const char *root, const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    FILE *f = fopen(path, "w");
    cr_assert(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* Writes @text to @root/@rel, making the directories on the way. */
static void cg_put(const char *root, const char *rel, const char *text)
{
    char dir[512];
    for (const char *p = strchr(rel, '/'); p != NULL; p = strchr(p + 1, '/')) {
        snprintf(dir, sizeof(dir), "%s/%.*s", root, (int)(p - rel), rel);
        cr_assert(mkdir(dir, 0700) == 0 || errno == EEXIST, "mkdir %s", dir);
    }
    cg_add(root, rel, text);
}

/* A fresh directory, the root of a cgroup tree. */
static char *cg_tree(void)
{
    char *root = strdup("/tmp/kvs-cg-XXXXXX");
    cr_assert(root != NULL && mkdtemp(root) != NULL);
    return root;
}

static void cg_free(char *root)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    cr_assert_eq(system(cmd), 0);
    free(root);
}

static unsigned at_most(unsigned a, unsigned b)
{
    return a < b ? a : b;
}

/* Helpers are started only with two usable CPUs: a container's quota counts,
 * not the host's cores; so does every cgroup above ours. */
Test(copier, usable_cpus_follow_the_cgroup_quota)
{
    char *none = cg_tree();
    cg_add(none, "self", "0::/\n");
    char self[600];
    snprintf(self, sizeof(self), "%s/self", none);
    unsigned all = kvs__usable_cpus(none, self); /* the affinity mask alone */
    cr_assert_eq(kvs__usable_cpus(none, "/nonexistent/cgroup"), all);
    cg_free(none);
    cr_assert_geq(all, 1);
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    cr_assert_eq(all, (unsigned)CPU_COUNT(&set));
    /* Each case: /proc/self/cgroup's text (NULL: "0::/"), then up to three
     * files with their text, and the CPUs to count. */
    const struct {
        const char *self;
        const char *f[3][2];
        unsigned want;
    } cases[] = {
        {NULL, {{"cpu.max", "max 100000\n"}}, all},
        {NULL, {{"cpu.max", "150000 100000\n"}}, at_most(all, 2)}, /* 1.5 CPUs: 2 */
        {NULL, {{"cpu.max", "100000 100000\n"}}, 1},
        {NULL, {{"cpu.max", "20000 100000\n"}}, 1}, /* a fifth of one */
        {NULL, {{"cpu.max", "banana\n"}}, all},     /* unreadable: no limit */
        {NULL, {{"cpu.max", ""}}, all},
        {NULL, {{"cpu/cpu.cfs_quota_us", "50000\n"}, {"cpu/cpu.cfs_period_us", "100000\n"}}, 1},
        {NULL,
         {{"cpu,cpuacct/cpu.cfs_quota_us", "-1\n"}, {"cpu,cpuacct/cpu.cfs_period_us", "100000\n"}},
         all},
        {NULL,
         {{"cpu,cpuacct/cpu.cfs_quota_us", "300000\n"},
          {"cpu,cpuacct/cpu.cfs_period_us", "100000\n"}},
         at_most(all, 3)},
        {NULL, {{"cpu/cpu.cfs_quota_us", "100000\n"}}, all}, /* no period: no limit */
        /* v2, our cgroup deep in the tree: the smallest quota on the way up */
        {"0::/app.slice/kv.service\n",
         {{"app.slice/cpu.max", "100000 100000\n"},
          {"app.slice/kv.service/cpu.max", "max 100000\n"}},
         1},
        {"0::/app.slice/kv.service/\n",
         {{"cpu.max", "max 100000\n"},
          {"app.slice/cpu.max", "max 100000\n"},
          {"app.slice/kv.service/cpu.max", "200000 100000\n"}},
         at_most(all, 2)},
        /* a host path that is not under the root (a container's own view):
         * the root's files count */
        {"0::/kubepods/pod1/c1\n", {{"cpu.max", "100000 100000\n"}}, 1},
        {"0::/../etc\n", {{"cpu.max", "100000 100000\n"}}, 1},
        /* v1, hybrid: the cpu controller's line names its directory and path */
        {"12:memory:/x\n4:cpuacct,cpu:/system.slice/kv.service\n0::/\n",
         {{"cpuacct,cpu/system.slice/cpu.cfs_quota_us", "100000\n"},
          {"cpuacct,cpu/system.slice/cpu.cfs_period_us", "100000\n"},
          {"cpuacct,cpu/system.slice/kv.service/cpu.cfs_quota_us", "-1\n"}},
         1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *root = cg_tree();
        cg_add(root, "self", cases[i].self != NULL ? cases[i].self : "0::/\n");
        snprintf(self, sizeof(self), "%s/self", root);
        for (size_t k = 0; k < 3 && cases[i].f[k][0] != NULL; k++)
            cg_put(root, cases[i].f[k][0], cases[i].f[k][1]);
        unsigned got = kvs__usable_cpus(root, self);
        cr_expect_eq(got, cases[i].want, "case %zu (%s): %u CPUs, want %u", i, cases[i].f[0][0],
                     got, cases[i].want);
        cg_free(root);
    }
}
