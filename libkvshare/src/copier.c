/* SPDX-License-Identifier: Apache-2.0 */
/* copier.c - helper threads that share a large memcpy with the thread that asked for it.
 * See copier_int.h. */
#include "copier_int.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* A claim: items [i0, i1), the first from byte off0, the last (i1 - 1 when
 * off1 == 0, else i1) up to byte off1. */
typedef struct claim {
    size_t i0, off0, i1, off1;
} claim_t;

struct kvs__copier {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* helpers: a job, or stop */
    pthread_cond_t idle; /* the caller: no helper inside the job */
    pthread_t th[KVS__COPIER_MAX_THREADS];
    unsigned started, running;
    bool stop;
    pid_t pid; /* the process the helpers belong to */
    const kvs__logger_t *log;
    /* The job (mu held). */
    bool busy;
    uint64_t job; /* bumped per job: a helper joins each once */
    kvs__copier_item_fn item;
    void *arg;
    size_t n, next, off;     /* the claim cursor */
    bool stream;             /* kvs__copy_stream, not memcpy */
    _Atomic unsigned inside; /* helpers copying a chunk of this job (changed under mu) */
    size_t helped_job;
    _Atomic uint64_t helped;
};

static void *helper(void *arg);

kvs_status_t kvs__copier_new(unsigned threads, const kvs__logger_t *log, kvs__copier_t **cp_p)
{
    *cp_p = NULL;
    if (threads == 0)
        return KVS_OK;
    kvs__copier_t *cp = kvs__calloc(1, sizeof(*cp));
    if (cp == NULL)
        return KVS_ERR_NO_MEMORY;
    pthread_mutex_init(&cp->mu, NULL);
    pthread_cond_init(&cp->wake, NULL);
    pthread_cond_init(&cp->idle, NULL);
    cp->pid = getpid();
    cp->log = log;
    /* Started now, and running before this returns, as the progress thread
     * is: a fork while a thread starts up can leave the child holding a
     * lock (peer.c, kvs__peer_create). Their signals stay with the
     * engine's threads. */
    unsigned want = threads < KVS__COPIER_MAX_THREADS ? threads : KVS__COPIER_MAX_THREADS;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    pthread_mutex_lock(&cp->mu);
    while (cp->started < want &&
           (err = pthread_create(&cp->th[cp->started], NULL, helper, cp)) == 0)
        cp->started++;
    while (cp->running < cp->started)
        pthread_cond_wait(&cp->idle, &cp->mu);
    pthread_mutex_unlock(&cp->mu);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (cp->started < want)
        kvs__warn(log, "copy helper threads: %u of %u started (%s)%s", cp->started, want,
                  strerror(err), cp->started == 0 ? "; same-host copies run on one thread" : "");
    if (cp->started == 0)
        kvs__copier_free(cp);
    else
        *cp_p = cp;
    return KVS_OK;
}

/* The next chunk of about KVS__COPIER_CHUNK bytes (mu held): whole items
 * while they fit, an item larger than what is left split. */
static bool claim(kvs__copier_t *cp, claim_t *c)
{
    size_t budget = KVS__COPIER_CHUNK;
    c->i0 = cp->next;
    c->off0 = cp->off;
    while (cp->next < cp->n && budget > 0) {
        void *dst;
        const void *src;
        size_t len;
        cp->item(cp->arg, cp->next, &dst, &src, &len);
        size_t left = len - cp->off;
        if (left <= budget) {
            budget -= left;
            cp->next++;
            cp->off = 0;
        } else {
            cp->off += budget;
            budget = 0;
        }
    }
    c->i1 = cp->next;
    c->off1 = cp->off;
    return c->i0 != c->i1 || c->off0 != c->off1;
}

/* Copies a claim (mu not held: the items are the caller's, fixed for the
 * job); returns its bytes. */
static size_t copy_claim(kvs__copier_item_fn item, void *arg, bool stream, const claim_t *c)
{
    size_t bytes = 0;
    for (size_t i = c->i0; i < c->i1 || (i == c->i1 && c->off1 > 0); i++) {
        void *dst;
        const void *src;
        size_t len;
        item(arg, i, &dst, &src, &len);
        size_t from = i == c->i0 ? c->off0 : 0, to = i == c->i1 ? c->off1 : len;
        if (stream)
            kvs__copy_stream((uint8_t *)dst + from, (const uint8_t *)src + from, to - from);
        else
            memcpy((uint8_t *)dst + from, (const uint8_t *)src + from, to - from);
        bytes += to - from;
    }
    return bytes;
}

static void *helper(void *arg)
{
    kvs__copier_t *cp = arg;
    uint64_t seen = 0;
    pthread_setname_np(pthread_self(), "kvs-copy");
    pthread_mutex_lock(&cp->mu);
    cp->running++;
    pthread_cond_broadcast(&cp->idle);
    for (;;) {
        while (!cp->stop && (!cp->busy || seen == cp->job))
            pthread_cond_wait(&cp->wake, &cp->mu);
        if (cp->stop)
            break;
        seen = cp->job;
        cp->inside++;
        claim_t c;
        while (claim(cp, &c)) {
            kvs__copier_item_fn item = cp->item;
            void *iarg = cp->arg;
            bool stream = cp->stream;
            pthread_mutex_unlock(&cp->mu);
            size_t bytes = copy_claim(item, iarg, stream, &c);
            pthread_mutex_lock(&cp->mu);
            cp->helped_job += bytes;
        }
        if (--cp->inside == 0)
            pthread_cond_broadcast(&cp->idle);
    }
    pthread_mutex_unlock(&cp->mu);
    return NULL;
}

/* Waits (mu held) until no helper is inside the job. What is left is the
 * rest of one chunk (a few microseconds of memcpy), so the caller watches
 * for it for up to KVS__COPIER_TAIL_SPIN_NS before it sleeps: a sleep and
 * the helper's wake-up of it cost more than that on a VM (bench transfer
 * at 16 KiB, 1 MiB jobs, timed inside: the mean tail went from 8-10 to
 * 3-4 us). A helper preempted mid-chunk still gets the CPU: the caller
 * yields while it watches, then sleeps. */
static void wait_helpers(kvs__copier_t *cp)
{
    if (atomic_load(&cp->inside) == 0)
        return;
    uint64_t until = kvs__now_ns() + KVS__COPIER_TAIL_SPIN_NS;
    pthread_mutex_unlock(&cp->mu);
    while (atomic_load(&cp->inside) > 0 && kvs__now_ns() < until)
        sched_yield();
    pthread_mutex_lock(&cp->mu);
    while (atomic_load(&cp->inside) > 0)
        pthread_cond_wait(&cp->idle, &cp->mu);
}

static _Thread_local bool solo; /* kvs__copier_solo */

bool kvs__copier_solo(bool on)
{
    bool was = solo;
    solo = on;
    return was;
}

size_t kvs__copier_run(kvs__copier_t *cp, size_t n, kvs__copier_item_fn item, void *arg,
                       bool stream, size_t *helped_p)
{
    *helped_p = 0;
    claim_t all = {.i0 = 0, .off0 = 0, .i1 = n, .off1 = 0};
    size_t total = 0;
    const size_t enough = solo ? KVS__COPIER_SOLO_MAX_BYTES + 1 : KVS__COPIER_MIN_BYTES;
    for (size_t i = 0; cp != NULL && i < n && total < enough; i++) {
        void *dst;
        const void *src;
        size_t len;
        item(arg, i, &dst, &src, &len);
        total += len;
    }
    /* A forked child has none of the helpers (nor, maybe, a usable mu). */
    if (cp == NULL || total < KVS__COPIER_MIN_BYTES ||
        (solo && total <= KVS__COPIER_SOLO_MAX_BYTES) || cp->pid != getpid())
        return copy_claim(item, arg, stream, &all);
    pthread_mutex_lock(&cp->mu);
    if (cp->busy || cp->stop) {
        pthread_mutex_unlock(&cp->mu);
        return copy_claim(item, arg, stream, &all);
    }
    cp->busy = true;
    cp->job++;
    cp->item = item;
    cp->arg = arg;
    cp->stream = stream;
    cp->n = n;
    cp->next = cp->off = 0;
    cp->helped_job = 0;
    pthread_cond_broadcast(&cp->wake);
    claim_t c;
    size_t own = 0;
    while (claim(cp, &c)) {
        pthread_mutex_unlock(&cp->mu);
        own += copy_claim(item, arg, stream, &c);
        pthread_mutex_lock(&cp->mu);
    }
    wait_helpers(cp);
    size_t helped = cp->helped_job;
    cp->busy = false;
    cp->item = NULL;
    cp->arg = NULL;
    cp->n = 0;
    pthread_mutex_unlock(&cp->mu);
    atomic_fetch_add_explicit(&cp->helped, helped, memory_order_relaxed);
    *helped_p = helped;
    return own + helped;
}

uint64_t kvs__copier_helped(const kvs__copier_t *cp)
{
    return cp == NULL ? 0 : atomic_load_explicit(&cp->helped, memory_order_relaxed);
}

void kvs__copier_free(kvs__copier_t *cp)
{
    if (cp == NULL)
        return;
    if (cp->pid == getpid()) {
        pthread_mutex_lock(&cp->mu);
        cp->stop = true;
        pthread_cond_broadcast(&cp->wake);
        pthread_mutex_unlock(&cp->mu);
        for (unsigned i = 0; i < cp->started; i++)
            pthread_join(cp->th[i], NULL);
        pthread_cond_destroy(&cp->idle);
        pthread_cond_destroy(&cp->wake);
        pthread_mutex_destroy(&cp->mu);
    }
    kvs__free(cp);
}

/* The first line of @dir/@name, or false. */
static bool read_line(const char *dir, const char *name, char *buf, size_t cap)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return false;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    bool ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    return ok;
}

/* ceil(quota / period) for a positive quota and period; 0 (no limit) else. */
static unsigned quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    long long n = (quota + period - 1) / period;
    return n > (long long)UINT_MAX ? UINT_MAX : (unsigned)n;
}

/* A cgroup directory's CPU quota in whole CPUs (rounded up); 0: none, or
 * unreadable. v2: cpu.max, "max 100000" or "150000 100000". */
static unsigned v2_quota(const char *dir)
{
    char line[128];
    long long quota = 0, period = 0;
    if (!read_line(dir, "cpu.max", line, sizeof(line)) || strncmp(line, "max", 3) == 0 ||
        sscanf(line, "%lld %lld", &quota, &period) != 2)
        return 0;
    return quota_cpus(quota, period);
}

/* v1: cpu.cfs_quota_us over cpu.cfs_period_us ("-1": no quota). */
static unsigned v1_quota(const char *dir)
{
    char q[64], p[64];
    if (!read_line(dir, "cpu.cfs_quota_us", q, sizeof(q)) ||
        !read_line(dir, "cpu.cfs_period_us", p, sizeof(p)))
        return 0;
    return quota_cpus(strtoll(q, NULL, 10), strtoll(p, NULL, 10));
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The smallest quota from @base/@rel up to @base: a cgroup may use no more
 * than any of its ancestors allows (a service in a systemd slice with
 * CPUQuota=, a process in a pod's cgroup seen without a cgroup namespace).
 * A @rel that is not under @base (a container that sees its own cgroup
 * mounted at @base while /proc/self/cgroup names the host's path) counts
 * @base alone. */
static unsigned walk_up(const char *base, const char *rel, unsigned (*quota)(const char *dir))
{
    char dir[PATH_MAX];
    size_t blen = strlen(base);
    if (rel[0] != '/' || strstr(rel, "/..") != NULL ||
        (size_t)snprintf(dir, sizeof(dir), "%s%s", base, rel) >= sizeof(dir) || !is_dir(dir))
        return quota(base);
    size_t len = strlen(dir);
    while (len > blen && dir[len - 1] == '/')
        dir[--len] = '\0';
    unsigned best = 0;
    for (;;) {
        unsigned q = quota(dir);
        if (q > 0 && (best == 0 || q < best))
            best = q;
        char *slash = strrchr(dir + blen, '/');
        if (slash == NULL || len <= blen)
            break;
        *slash = '\0';
        len = strlen(dir);
    }
    return best;
}

/* This process's cgroup paths from @file (/proc/self/cgroup): the v2 one
 * ("0::PATH") and the v1 cpu controller's ("N:cpu,cpuacct:PATH", with its
 * controller list, which names its directory). Empty where not said. */
static void self_cgroups(const char *file, char *v2, char *v1, size_t cap, char *v1dir,
                         size_t dircap)
{
    v2[0] = v1[0] = v1dir[0] = '\0';
    FILE *f = fopen(file, "re");
    if (f == NULL)
        return;
    char line[PATH_MAX + 128];
    while (fgets(line, (int)sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL || strlen(c2 + 1) >= cap)
            continue;
        *c2 = '\0';
        const char *ctls = c1 + 1, *path = c2 + 1;
        if (ctls[0] == '\0' && strncmp(line, "0:", 2) == 0) {
            snprintf(v2, cap, "%s", path);
            continue;
        }
        char list[256];
        snprintf(list, sizeof(list), ",%s,", ctls);
        if (strstr(list, ",cpu,") != NULL && strlen(ctls) < dircap) {
            snprintf(v1, cap, "%s", path);
            snprintf(v1dir, dircap, "%s", ctls);
        }
    }
    fclose(f);
}

/* The CPU quota of this process's cgroup in whole CPUs; 0: none. */
static unsigned cgroup_cpus(const char *root, const char *self)
{
    char v2[PATH_MAX], v1[PATH_MAX], v1dir[256], dir[PATH_MAX];
    self_cgroups(self, v2, v1, sizeof(v2), v1dir, sizeof(v1dir));
    unsigned q = walk_up(root, v2[0] != '\0' ? v2 : "/", v2_quota);
    if (q > 0)
        return q;
    /* v1: the cpu controller's own directory, alone or joined with cpuacct */
    const char *const names[] = {v1dir, "cpu", "cpu,cpuacct", "cpuacct,cpu"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i][0] == '\0' ||
            (size_t)snprintf(dir, sizeof(dir), "%s/%s", root, names[i]) >= sizeof(dir) ||
            !is_dir(dir))
            continue;
        return walk_up(dir, v1[0] != '\0' ? v1 : "/", v1_quota);
    }
    return 0;
}

unsigned kvs__usable_cpus(const char *cgroup_root, const char *self_cgroup)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = online > 0 ? (unsigned)online : 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        n = (unsigned)CPU_COUNT(&set);
    unsigned q = cgroup_cpus(cgroup_root != NULL ? cgroup_root : "/sys/fs/cgroup",
                             self_cgroup != NULL ? self_cgroup : "/proc/self/cgroup");
    if (q > 0 && q < n)
        n = q;
    return n > 0 ? n : 1;
}
