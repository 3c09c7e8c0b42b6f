/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Drives the fake CUDA driver under the shim, reaching it the way real
 * programs do: linked to libcuda ("linked"), dlopen + dlsym ("dlsym"), or
 * dlopen + cuGetProcAddress_v2 as libcudart does ("procaddr"). Each scenario
 * checks itself and exits non-zero with a message on the first failure;
 * tests/unit/test_shim.c runs it and checks the stats file it leaves.
 *
 * usage: shim_probe <linked|dlsym|procaddr> <scenario> <on|off>
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KVS_CUDA_DECLARE_PROTOTYPES
#include "kvs_cuda.h"
#include "kvs_preload.h"

#define KV_BYTES (2u << 20) /* tests run with KVSHARE_KV_MIN_BYTES=1MiB */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "shim_probe: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define CU(call) CHECK((call) == CUDA_SUCCESS)

/* The driver functions, however we reached them. */
static struct {
#define PROBE_FIELD(name, params, args) kvs_pfn_##name name;
    KVS_CUDA_ALL_FUNCS(PROBE_FIELD)
#undef PROBE_FIELD
} A;

static const char *const probe_names[] = {
#define PROBE_NAME(name, params, args) #name,
    KVS_CUDA_ALL_FUNCS(PROBE_NAME)
#undef PROBE_NAME
};

/* The fake driver's test controls (tests/fakecuda/fakecuda.h). */
static void *(*fake_proc)(const char *name);
static unsigned long (*fake_calls)(const char *name);
static void (*fake_set_errno)(int err);
static void (*fake_fail_next)(const char *name, CUresult result);
static void (*fake_set_reenter)(int on);
static unsigned long (*fake_live)(void);

/* The shim's API, looked up the way a connector does. */
static kvs_preload_counter_fn P_counter;
static kvs_preload_region_query_fn P_query;
static kvs_preload_set_copy_observer_fn P_observe;
static kvs_preload_enabled_fn P_enabled;
static kvs_preload_register_region_fn P_register;
static kvs_preload_deregister_region_fn P_deregister;

static void *g_cuda;
static int g_on;
static const char *g_how;

static void **probe_slot(size_t i)
{
    return (void **)((char *)&A + i * sizeof(void *));
}

static void *sym(void *h, const char *name)
{
    void *p = dlsym(h, name);
    CHECK(p != NULL);
    return p;
}

/* "cuMemcpyHtoDAsync_v2_ptsz" -> "cuMemcpyHtoDAsync" + per-thread flag. */
static void probe_api_name(const char *name, char *api, size_t len, cuuint64_t *flags, int *ver)
{
    size_t n = strlen(name);

    snprintf(api, len, "%s", name);
    *flags = CU_GET_PROC_ADDRESS_DEFAULT;
    *ver = 12080;
    if (n > 5 && (strcmp(name + n - 5, "_ptds") == 0 || strcmp(name + n - 5, "_ptsz") == 0)) {
        api[n - 5] = '\0';
        n -= 5;
        *flags = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    }
    if (n > 3 && strcmp(api + n - 3, "_v2") == 0) {
        api[n - 3] = '\0';
    }
    if (strcmp(name, "cuGetProcAddress") == 0) {
        *ver = 11030; /* the 4-argument one; 12000+ gets _v2 */
    }
}

static int probe_is_hooked(const char *name)
{
#define PROBE_HOOKED(n, params, args)                                                              \
    if (strcmp(name, #n) == 0) {                                                                   \
        return 1;                                                                                  \
    }
    KVS_CUDA_HOOKED_FUNCS(PROBE_HOOKED)
#undef PROBE_HOOKED
    return 0;
}

static void probe_load(void)
{
    size_t nfn = sizeof(probe_names) / sizeof(probe_names[0]);

    g_cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(g_cuda != NULL);
    CHECK(dlsym(g_cuda, "fakecuda_proc") != NULL); /* the fake, never a real driver */
    fake_proc = (void *(*)(const char *))sym(g_cuda, "fakecuda_proc");
    fake_calls = (unsigned long (*)(const char *))sym(g_cuda, "fakecuda_calls");
    fake_set_errno = (void (*)(int))sym(g_cuda, "fakecuda_set_errno");
    fake_fail_next = (void (*)(const char *, CUresult))sym(g_cuda, "fakecuda_fail_next");
    fake_live = (unsigned long (*)(void))sym(g_cuda, "fakecuda_live_allocs");
    fake_set_reenter = (void (*)(int))sym(g_cuda, "fakecuda_set_reenter");

    P_counter = (kvs_preload_counter_fn)dlsym(RTLD_DEFAULT, "kvs_preload_counter");
    P_query = (kvs_preload_region_query_fn)dlsym(RTLD_DEFAULT, "kvs_preload_region_query");
    P_observe =
        (kvs_preload_set_copy_observer_fn)dlsym(RTLD_DEFAULT, "kvs_preload_set_copy_observer");
    P_enabled = (kvs_preload_enabled_fn)dlsym(RTLD_DEFAULT, "kvs_preload_enabled");
    P_register = (kvs_preload_register_region_fn)dlsym(RTLD_DEFAULT, "kvs_preload_register_region");
    P_deregister =
        (kvs_preload_deregister_region_fn)dlsym(RTLD_DEFAULT, "kvs_preload_deregister_region");
    CHECK(P_counter && P_query && P_observe && P_enabled && P_register && P_deregister);

    if (strcmp(g_how, "linked") == 0) {
#ifdef KVS_PROBE_LINKED
#define PROBE_LINK(name, params, args) A.name = name;
        KVS_CUDA_ALL_FUNCS(PROBE_LINK)
#undef PROBE_LINK
#else
        CHECK(0 && "this probe is not linked to libcuda");
#endif
    } else if (strcmp(g_how, "dlsym") == 0) {
        for (size_t i = 0; i < nfn; i++) {
            *probe_slot(i) = sym(g_cuda, probe_names[i]);
            /* Hooked names come back as the shim's hook, others untouched;
             * with the shim off, everything is the driver's own. */
            if (g_on && probe_is_hooked(probe_names[i])) {
                CHECK(*probe_slot(i) != fake_proc(probe_names[i]));
            } else {
                CHECK(*probe_slot(i) == fake_proc(probe_names[i]));
            }
        }
        CHECK(dlsym(g_cuda, "cuMemAlloc") == NULL);     /* not an export: stays NULL */
        CHECK(dlsym(g_cuda, "cuMemAlloc_v2x") == NULL); /* exact names only */
        CHECK(dlsym(g_cuda, "cudnnCreate") == NULL);
    } else if (strcmp(g_how, "procaddr") == 0) {
        kvs_pfn_cuGetProcAddress_v2 gpa =
            (kvs_pfn_cuGetProcAddress_v2)sym(g_cuda, "cuGetProcAddress_v2");
        CUdriverProcAddressQueryResult st;
        void *p = (void *)1;

        for (size_t i = 0; i < nfn; i++) {
            char api[64];
            cuuint64_t flags;
            int ver;
            probe_api_name(probe_names[i], api, sizeof(api), &flags, &ver);
            st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
            CU(gpa(api, probe_slot(i), ver, flags, &st));
            CHECK(st == CU_GET_PROC_ADDRESS_SUCCESS);
            if (g_on && probe_is_hooked(probe_names[i])) {
                CHECK(*probe_slot(i) != fake_proc(probe_names[i]));
            } else {
                CHECK(*probe_slot(i) == fake_proc(probe_names[i]));
            }
        }
        /* A refusal passes through untouched: no hook for a NULL entry. */
        CHECK(gpa("cuMemAllocAsync", &p, 11000, 0, &st) == CUDA_ERROR_NOT_FOUND);
        CHECK(p == NULL && st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
        CHECK(gpa("cuNoSuchThing", &p, 12080, 0, &st) == CUDA_ERROR_NOT_FOUND);
        CHECK(p == NULL && st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    } else {
        CHECK(0 && "unknown way to reach the driver");
    }
}

static uint64_t counter(const char *name)
{
    uint64_t v = UINT64_MAX;
    CHECK(P_counter(name, &v) == KVS_OK);
    return v;
}

static uint64_t query(CUdeviceptr p, const char *field)
{
    uint64_t v = UINT64_MAX;
    CHECK(P_query((const void *)(uintptr_t)p, field, &v) == KVS_OK);
    return v;
}

/* ---- observer ------------------------------------------------------------ */
#define OBS_MAX 64
static struct {
    int n;
    const char *api[OBS_MAX];
    kvs_preload_copy_kind_t kind[OBS_MAX];
    int dst_kv[OBS_MAX];
    int src_kv[OBS_MAX];
    size_t bytes[OBS_MAX];
} g_obs;
static atomic_ulong g_obs_total;

static void obs_record(void *arg, const kvs_preload_copy_t *c)
{
    CHECK(arg == &g_obs && c->version == KVS_PRELOAD_COPY_VERSION);
    /* Calls from inside the observer are refused, not deadlocked. */
    CHECK(P_observe(NULL, NULL) == KVS_ERR_BUSY);
    if (g_obs.n < OBS_MAX) {
        g_obs.api[g_obs.n] = c->api;
        g_obs.kind[g_obs.n] = c->kind;
        g_obs.dst_kv[g_obs.n] = c->dst_kv;
        g_obs.src_kv[g_obs.n] = c->src_kv;
        g_obs.bytes[g_obs.n] = c->bytes;
    }
    g_obs.n++;
}

static void obs_count(void *arg, const kvs_preload_copy_t *c)
{
    (void)arg;
    (void)c;
    atomic_fetch_add(&g_obs_total, 1);
}

/* ---- scenarios ----------------------------------------------------------- */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)(seed * 31u + i * 7u);
    }
}

static const char *const basic_copies[] = {
    "cuMemcpyHtoD_v2", "cuMemcpyHtoD_v2_ptds", "cuMemcpyHtoDAsync_v2", "cuMemcpyHtoDAsync_v2_ptsz",
    "cuMemcpyDtoH_v2", "cuMemcpyDtoH_v2_ptds", "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoHAsync_v2_ptsz",
    "cuMemcpyDtoD_v2", "cuMemcpyDtoD_v2_ptds", "cuMemcpyDtoDAsync_v2", "cuMemcpyDtoDAsync_v2_ptsz",
    "cuMemcpy",        "cuMemcpy_ptds",        "cuMemcpyAsync",        "cuMemcpyAsync_ptsz",
};

static void scenario_basic(void)
{
    enum { N = 4096 };
    static unsigned char h1[N], h2[N], h3[N];
    CUdeviceptr small = 0, kv = 0, pitch = 0, a1 = 0, a2 = 0;
    size_t pp = 0;
    CUstream s = NULL;
    const char *const allocs[] = {"cuMemAlloc_v2",        "cuMemAllocPitch_v2", "cuMemAllocAsync",
                                  "cuMemAllocAsync_ptsz", "cuMemFree_v2",       "cuMemFreeAsync",
                                  "cuMemFreeAsync_ptsz"};
    unsigned long before[16];

    CU(A.cuInit(0));
    for (size_t i = 0; i < 16; i++) {
        before[i] = fake_calls(basic_copies[i]);
    }
    if (g_on) {
        CHECK(P_enabled() == 1);
        CHECK(P_observe(obs_record, &g_obs) == KVS_OK);
    } else {
        uint64_t v;
        CHECK(P_enabled() == 0);
        CHECK(P_counter("allocations", &v) == KVS_ERR_UNSUPPORTED);
        CHECK(P_observe(obs_record, &g_obs) == KVS_ERR_UNSUPPORTED);
    }
    CU(A.cuMemAlloc_v2(&small, N));
    CU(A.cuMemAlloc_v2(&kv, KV_BYTES));
    CU(A.cuMemAllocPitch_v2(&pitch, &pp, 1000, 10, 4));
    CHECK(pp >= 1000);
    CU(A.cuMemAllocAsync(&a1, 8192, s));
    CU(A.cuMemAllocAsync_ptsz(&a2, 8192, s));
    if (g_on) {
        CHECK(counter("allocations") == 5);
        CHECK(counter("allocated_bytes") == N + KV_BYTES + pp * 10 + 2 * 8192);
        CHECK(counter("kv_regions") == 1 && counter("kvs_regions") == 1);
        CHECK(counter("tracked") == 5);
        CHECK(query(kv + 100, "kv") == 1 && query(kv + 100, "base") == kv);
        CHECK(query(kv, "length") == KV_BYTES && query(small, "kv") == 0);
    }

    fill(h1, N, 1);
    CU(A.cuMemcpyHtoD_v2(kv, h1, N));
    CU(A.cuMemcpyHtoD_v2_ptds(kv + N, h1, N));
    CU(A.cuMemcpyHtoDAsync_v2(kv + 2 * N, h1, N, s));
    CU(A.cuMemcpyHtoDAsync_v2_ptsz(kv + 3 * N, h1, N, s));
    CU(A.cuMemcpyDtoH_v2(h2, kv, N));
    CHECK(memcmp(h1, h2, N) == 0);
    memset(h2, 0, N);
    CU(A.cuMemcpyDtoH_v2_ptds(h2, kv + N, N));
    CHECK(memcmp(h1, h2, N) == 0);
    memset(h2, 0, N);
    CU(A.cuMemcpyDtoHAsync_v2(h2, kv + 2 * N, N, s));
    CHECK(memcmp(h1, h2, N) == 0);
    memset(h2, 0, N);
    CU(A.cuMemcpyDtoHAsync_v2_ptsz(h2, kv + 3 * N, N, s));
    CHECK(memcmp(h1, h2, N) == 0);
    CU(A.cuMemcpyDtoD_v2(small, kv, N));
    CU(A.cuMemcpyDtoD_v2_ptds(a1, kv, N));
    CU(A.cuMemcpyDtoDAsync_v2(a2, kv, N, s));
    CU(A.cuMemcpyDtoDAsync_v2_ptsz(pitch, kv, N, s));
    fill(h3, N, 3);
    CU(A.cuMemcpy(kv, (CUdeviceptr)(uintptr_t)h3, N));      /* unified: HtoD */
    CU(A.cuMemcpy_ptds((CUdeviceptr)(uintptr_t)h2, kv, N)); /* DtoH */
    CHECK(memcmp(h2, h3, N) == 0);
    CU(A.cuMemcpyAsync(small, kv, N, s)); /* DtoD */
    CU(A.cuMemcpyAsync_ptsz((CUdeviceptr)(uintptr_t)h2, (CUdeviceptr)(uintptr_t)h1, N,
                            s)); /* host to host */
    CU(A.cuStreamSynchronize(s));

    /* Each hook reached the driver's own variant exactly once. */
    for (size_t i = 0; i < 16; i++) {
        if (fake_calls(basic_copies[i]) != before[i] + 1) {
            fprintf(stderr, "shim_probe: %s ran %lu times\n", basic_copies[i],
                    fake_calls(basic_copies[i]) - before[i]);
            exit(1);
        }
    }
    if (g_on) {
        const kvs_preload_copy_kind_t kinds[16] = {
            KVS_PRELOAD_COPY_HTOD, KVS_PRELOAD_COPY_HTOD, KVS_PRELOAD_COPY_HTOD,
            KVS_PRELOAD_COPY_HTOD, KVS_PRELOAD_COPY_DTOH, KVS_PRELOAD_COPY_DTOH,
            KVS_PRELOAD_COPY_DTOH, KVS_PRELOAD_COPY_DTOH, KVS_PRELOAD_COPY_DTOD,
            KVS_PRELOAD_COPY_DTOD, KVS_PRELOAD_COPY_DTOD, KVS_PRELOAD_COPY_DTOD,
            KVS_PRELOAD_COPY_HTOD, KVS_PRELOAD_COPY_DTOH, KVS_PRELOAD_COPY_DTOD,
            KVS_PRELOAD_COPY_OTHER};
        CHECK(g_obs.n == 16);
        for (int i = 0; i < 16; i++) {
            CHECK(strcmp(g_obs.api[i], basic_copies[i]) == 0);
            CHECK(g_obs.kind[i] == kinds[i] && g_obs.bytes[i] == N);
        }
        CHECK(g_obs.dst_kv[0] == 1 && g_obs.src_kv[0] == 0);
        CHECK(g_obs.dst_kv[8] == 0 && g_obs.src_kv[8] == 1);
        CHECK(counter("copies_htod") == 5 && counter("copies_htod_bytes") == 5 * N);
        CHECK(counter("copies_dtoh") == 5 && counter("copies_dtoh_bytes") == 5 * N);
        CHECK(counter("copies_dtod") == 5 && counter("copies_dtod_bytes") == 5 * N);
        CHECK(counter("copies_other") == 1 && counter("copies_other_bytes") == N);
        CHECK(query(kv, "copies_in") == 5 && query(kv, "bytes_in") == 5 * N);
        CHECK(query(kv, "copies_out") == 10 && query(kv, "bytes_out") == 10 * N);
        CHECK(query(small, "copies_in") == 2);
        CHECK(P_observe(NULL, NULL) == KVS_OK);

        /* A connector names KV memory the size rule missed ... */
        CHECK(P_register((void *)(uintptr_t)(small + 1024), 1024) == KVS_OK);
        CHECK(counter("kvs_regions") == 2 && counter("named_regions") == 1);
        /* ... or memory already registered: nothing more to register. */
        CHECK(P_register((void *)(uintptr_t)(kv + 4096), 4096) == KVS_OK);
        CHECK(counter("kvs_regions") == 2 && counter("named_regions") == 2);
        CHECK(P_deregister((void *)(uintptr_t)(kv + 4096)) == KVS_OK);
        CHECK(P_deregister((void *)(uintptr_t)(kv + 4096)) == KVS_ERR_NOT_FOUND);
        CHECK(P_register(NULL, 10) == KVS_ERR_INVALID_PARAM);
        CHECK(P_register((void *)(uintptr_t)small, 0) == KVS_ERR_INVALID_PARAM);
        /* Named host memory is registered too (with its memory type). */
        CHECK(P_register(h3, sizeof(h3)) == KVS_OK);
        CHECK(counter("kvs_regions") == 3);
        CHECK(P_deregister(h3) == KVS_OK);
        CHECK(counter("kvs_regions") == 2);
    }
    CU(A.cuMemFree_v2(small)); /* takes the region named inside it along */
    if (g_on) {
        CHECK(counter("kvs_regions") == 1);
    }
    CU(A.cuMemFree_v2(kv));
    if (g_on) {
        CHECK(counter("kvs_regions") == 0);
    }
    CU(A.cuMemFree_v2(pitch));
    CU(A.cuMemFreeAsync(a1, s));
    CU(A.cuMemFreeAsync_ptsz(a2, s));
    for (size_t i = 0; i < sizeof(allocs) / sizeof(allocs[0]); i++) {
        CHECK(fake_calls(allocs[i]) >= 1);
    }
    CHECK(fake_calls("cuMemAlloc_v2") == 2 && fake_calls("cuMemFree_v2") == 3);
    CHECK(fake_live() == 0);
    if (g_on) {
        CHECK(counter("frees") == 5 && counter("tracked") == 0);
        CHECK(counter("kv_registered") == 1 && counter("errors") == 0);
        CHECK(counter("freed_bytes") == counter("allocated_bytes"));
    }
}

static void scenario_errno(void)
{
    CUdeviceptr p = 0, q = 0;
    unsigned char buf[64] = {0};
    uint64_t allocs;

    /* The first call runs the shim's init: errno must survive it. */
    errno = 777;
    CU(A.cuInit(0));
    CHECK(errno == 777);
    errno = 778;
    CU(A.cuMemAlloc_v2(&p, 4096));
    CHECK(errno == 778);
    /* What the driver sets is what the caller sees. */
    fake_set_errno(4242);
    errno = 0;
    CU(A.cuMemAlloc_v2(&q, KV_BYTES)); /* a KV region: registration in between */
    CHECK(errno == 4242);
    errno = 0;
    CU(A.cuMemcpyHtoD_v2(p, buf, sizeof(buf)));
    CHECK(errno == 4242);
    errno = 0;
    CU(A.cuMemFree_v2(q));
    CHECK(errno == 4242);
    fake_set_errno(0);
    /* Return values pass through untouched, and failures are not tracked. */
    allocs = g_on ? counter("allocations") : 0;
    fake_fail_next("cuMemAlloc_v2", CUDA_ERROR_OUT_OF_MEMORY);
    q = 12345;
    errno = 99;
    CHECK(A.cuMemAlloc_v2(&q, KV_BYTES) == CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(q == 12345 && errno == 99);
    fake_fail_next("cuMemcpyDtoH_v2", 999);
    CHECK(A.cuMemcpyDtoH_v2(buf, p, sizeof(buf)) == 999);
    fake_fail_next("cuMemFree_v2", CUDA_ERROR_INVALID_VALUE);
    CHECK(A.cuMemFree_v2(p) == CUDA_ERROR_INVALID_VALUE);
    if (g_on) {
        CHECK(counter("allocations") == allocs);
        CHECK(counter("copies_dtoh") == 0 && counter("frees") == 1);
    }
    if (g_on) {
        /* A driver calling its own exported entry points lands in our hook
         * with the guard set: forwarded, not counted twice. */
        unsigned long inner = fake_calls("cuMemcpyHtoD_v2");
        uint64_t htod = counter("copies_htod");
        fake_set_reenter(1);
        errno = 31;
        CU(A.cuMemcpy(p, (CUdeviceptr)(uintptr_t)buf, sizeof(buf)));
        fake_set_reenter(0);
        CHECK(errno == 31);
        CHECK(fake_calls("cuMemcpyHtoD_v2") == inner + 1);
        CHECK(counter("copies_htod") == htod + 1);
    }
    CU(A.cuMemFree_v2(p));
    CHECK(fake_live() == 0);
}

#define THREADS 8
#define ITERS   2000

static void *thread_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    unsigned char in[512], out[512];

    for (unsigned i = 0; i < ITERS; i++) {
        CUdeviceptr d = 0;
        size_t len = (i % 50 == 0) ? KV_BYTES : (size_t)((i + seed) % 7 + 1) * 4096;
        fill(in, sizeof(in), seed + i);
        CU(A.cuMemAlloc_v2(&d, len));
        CU(A.cuMemcpyHtoD_v2(d + len - sizeof(in), in, sizeof(in)));
        CU(A.cuMemcpyDtoH_v2(out, d + len - sizeof(in), sizeof(out)));
        CHECK(memcmp(in, out, sizeof(in)) == 0);
        if (g_on) {
            CHECK(query(d + 1, "base") == d);
        }
        CU(A.cuMemFree_v2(d));
    }
    return NULL;
}

static void scenario_threads(void)
{
    pthread_t t[THREADS];

    CU(A.cuInit(0));
    if (g_on) {
        CHECK(P_observe(obs_count, NULL) == KVS_OK);
    }
    for (uintptr_t i = 0; i < THREADS; i++) {
        CHECK(pthread_create(&t[i], NULL, thread_main, (void *)i) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
    }
    CHECK(fake_live() == 0);
    if (g_on) {
        CHECK(P_observe(NULL, NULL) == KVS_OK);
        CHECK(atomic_load(&g_obs_total) == 2ul * THREADS * ITERS);
        CHECK(counter("allocations") == THREADS * ITERS);
        CHECK(counter("frees") == THREADS * ITERS);
        CHECK(counter("kv_regions") == THREADS * (ITERS / 50));
        CHECK(counter("kv_registered") == THREADS * (ITERS / 50));
        CHECK(counter("tracked") == 0 && counter("kvs_regions") == 0);
        CHECK(counter("copies_htod") == THREADS * ITERS);
        CHECK(counter("errors") == 0 && counter("track_dropped") == 0);
    }
}

static void scenario_fork(void)
{
    CUdeviceptr kv = 0, kv2 = 0;
    unsigned char buf[256];
    pid_t pid;
    int status = 0;

    CU(A.cuInit(0));
    CU(A.cuMemAlloc_v2(&kv, KV_BYTES));
    CHECK(counter("kvs_regions") == 1);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* The child starts over: fresh counters. Its libkvshare context
         * cannot be made (UCX does not run in a child forked while the
         * parent's context ran: ucx_tl.c), so at its first KV region the
         * shim says why once and steps aside; the engine's calls work. */
        CHECK(counter("allocations") == 0 && counter("tracked") == 0);
        CHECK(counter("kvs_regions") == 0);
        CU(A.cuMemAlloc_v2(&kv2, KV_BYTES));
        CHECK(counter("kvs_regions") == 0 && counter("errors") == 1);
        fill(buf, sizeof(buf), 9);
        CU(A.cuMemcpyHtoD_v2(kv2, buf, sizeof(buf)));
        CU(A.cuMemFree_v2(kv2));
        CU(A.cuMemFree_v2(kv)); /* the parent's, untracked here: forwarded */
        CHECK(counter("kvs_regions") == 0);
        exit(0);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(counter("allocations") == 1 && counter("kvs_regions") == 1);
    CU(A.cuMemcpyHtoD_v2(kv, buf, sizeof(buf)));
    CU(A.cuMemFree_v2(kv));
    CHECK(counter("kvs_regions") == 0 && counter("copies_htod") == 1);
}

static void scenario_vmm(void)
{
    CUmemAllocationProp prop;
    CUmemAccessDesc access;
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0;
    size_t gran = 0, size = KV_BYTES;
    unsigned char in[1024], out[1024];

    CU(A.cuInit(0));
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    CU(A.cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CHECK(gran > 0 && size % gran == 0);
    CU(A.cuMemCreate(&h, size, &prop, 0));
    /* The shim asks for POSIX_FD export (same-host readers map such memory);
     * without it the engine's plain request is not exportable. */
    int xfd = -1;
    CUresult xr =
        A.cuMemExportToShareableHandle(&xfd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    CHECK(g_on ? xr == CUDA_SUCCESS && xfd >= 0 : xr == CUDA_ERROR_NOT_SUPPORTED);
    if (xfd >= 0) {
        close(xfd);
    }
    CU(A.cuMemAddressReserve(&va, 2 * size, 0, 0, 0));
    CU(A.cuMemMap(va, size, 0, h, 0));
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CU(A.cuMemSetAccess(va, size, &access, 1));
    fill(in, sizeof(in), 5);
    CU(A.cuMemcpyHtoD_v2(va + 4096, in, sizeof(in)));
    CU(A.cuMemcpyDtoH_v2(out, va + 4096, sizeof(out)));
    CHECK(memcmp(in, out, sizeof(in)) == 0);
    if (g_on) {
        CHECK(query(va + 10, "handle") == h && query(va, "kv") == 1);
        CHECK(counter("kvs_regions") == 1 && counter("vmm_maps") == 1);
        CHECK(query(va, "copies_in") == 1 && query(va, "copies_out") == 1);
    }
    CU(A.cuMemUnmap(va, size));
    if (g_on) {
        CHECK(counter("kvs_regions") == 0 && counter("tracked") == 0);
    }
    CU(A.cuMemRelease(h));
    CU(A.cuMemAddressFree(va, 2 * size));
    if (g_on) {
        CHECK(counter("vmm_creates") == 1 && counter("vmm_releases") == 1);
        CHECK(counter("vmm_reserves") == 1 && counter("vmm_address_frees") == 1);
        CHECK(counter("vmm_unmaps") == 1 && counter("allocations") == 1);
    }
    /* A driver that refuses the export capability: the shim forwards the
     * engine's own request, which succeeds, not exportable. */
    fake_fail_next("cuMemCreate", CUDA_ERROR_NOT_SUPPORTED);
    xr = A.cuMemCreate(&h, size, &prop, 0);
    if (g_on) {
        CHECK(xr == CUDA_SUCCESS);
        CHECK(A.cuMemExportToShareableHandle(&xfd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                                             0) == CUDA_ERROR_NOT_SUPPORTED);
        CU(A.cuMemRelease(h));
    } else {
        CHECK(xr == CUDA_ERROR_NOT_SUPPORTED);
    }
}

static void scenario_full(void)
{
    enum { N = 16384 + 16 };
    static CUdeviceptr p[N];

    CU(A.cuInit(0));
    for (int i = 0; i < N; i++) {
        CU(A.cuMemAlloc_v2(&p[i], 256));
    }
    if (g_on) {
        CHECK(counter("tracked") == 16384 && counter("track_dropped") == 16);
        CHECK(counter("allocations") == N);
    }
    for (int i = N - 1; i >= 0; i--) {
        CU(A.cuMemFree_v2(p[i]));
    }
    if (g_on) {
        CHECK(counter("tracked") == 0);
    }
    CHECK(fake_live() == 0);
}

/* The shim stepped aside or passed through: everything still works. */
static void scenario_aside(void)
{
    CUdeviceptr kv = 0;
    unsigned char buf[256] = {0};

    CU(A.cuInit(0));
    CU(A.cuMemAlloc_v2(&kv, KV_BYTES));
    CU(A.cuMemcpyHtoD_v2(kv, buf, sizeof(buf)));
    CHECK(P_enabled() == 0);
    CU(A.cuMemFree_v2(kv));
    CHECK(fake_live() == 0);
}

/* Run with KVSHARE_KV_MIN_BYTES unset: the default is 64 MiB. */
static void scenario_threshold(void)
{
    CUdeviceptr below = 0, at = 0;

    CU(A.cuInit(0));
    CU(A.cuMemAlloc_v2(&below, (64u << 20) - 1));
    CU(A.cuMemAlloc_v2(&at, 64u << 20));
    if (g_on) {
        CHECK(query(below, "kv") == 0 && query(at, "kv") == 1);
        CHECK(counter("kv_regions") == 1 && counter("kvs_regions") == 1);
    }
    CU(A.cuMemFree_v2(below));
    CU(A.cuMemFree_v2(at));
}

/* 1 when a mapped file's path contains @needle (/proc/self/maps). */
static int mapped(const char *needle)
{
    char line[4096];
    int found = 0;
    FILE *f = fopen("/proc/self/maps", "r");

    CHECK(f != NULL);
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        found = strstr(line, needle) != NULL;
    }
    fclose(f);
    return found;
}

/* What libkvshare pulls in; none of it may be mapped before it is needed. */
static int kvshare_mapped(void)
{
    static const char *const libs[] = {"libkvshare.so", "libucp.so",    "libucs.so", "libuct.so",
                                       "libcjson.so",   "libxxhash.so", "libssl.so"};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        if (mapped(libs[i])) {
            fprintf(stderr, "shim_probe: %s is mapped\n", libs[i]);
            return 1;
        }
    }
    return 0;
}

/* The shim loads libkvshare at the first KV region and not before: small
 * allocations, copies and API calls leave it unmapped. With @kv_too it then
 * allocates KV memory, which loads it and registers the region. */
static void scenario_lazy(int kv_too)
{
    CUdeviceptr small = 0, kv = 0;
    unsigned char buf[256] = {0};

    CHECK(!kvshare_mapped());
    CU(A.cuInit(0));
    CU(A.cuMemAlloc_v2(&small, 4096));
    CU(A.cuMemcpyHtoD_v2(small, buf, sizeof(buf)));
    CHECK(P_enabled() == 1);
    CHECK(counter("allocations") == 1);
    CHECK(!kvshare_mapped());
    if (kv_too) {
        CU(A.cuMemAlloc_v2(&kv, KV_BYTES));
        CHECK(mapped("libkvshare.so"));
        CHECK(counter("kv_registered") == 1 && counter("kvs_regions") == 1);
        CU(A.cuMemFree_v2(kv));
        CHECK(counter("kvs_regions") == 0);
    }
    CU(A.cuMemFree_v2(small));
}

/* A connector asks for the context before any KV allocation: the shim
 * loads libkvshare then, and the KV region that follows shares it. */
static void scenario_getctx(void)
{
    kvs_preload_get_ctx_fn get = (kvs_preload_get_ctx_fn)dlsym(RTLD_DEFAULT, "kvs_preload_get_ctx");
    kvs_ctx_h ctx = NULL, again = NULL;
    CUdeviceptr kv = 0;

    CHECK(get != NULL);
    CHECK(!kvshare_mapped());
    CHECK(get(&ctx) == KVS_OK && ctx != NULL);
    CHECK(mapped("libkvshare.so"));
    CU(A.cuInit(0));
    CU(A.cuMemAlloc_v2(&kv, KV_BYTES));
    CHECK(get(&again) == KVS_OK && again == ctx);
    CHECK(counter("kv_registered") == 1 && counter("kvs_regions") == 1);
    CU(A.cuMemFree_v2(kv));
}

#ifdef KVS_PROBE_LINKED
int kvs_probe_fn(void);
int kvs_probe_next_value(void);
int kvs_probe_b_marker(void);
#endif

static void scenario_rtld_next(void)
{
#ifdef KVS_PROBE_LINKED
    CHECK(kvs_probe_b_marker() == 42);
    /* From the first library, RTLD_NEXT finds the second one's function. */
    CHECK(kvs_probe_next_value() == 2);
    CHECK(((int (*)(void))dlsym(RTLD_DEFAULT, "kvs_probe_fn"))() == 1);
    CHECK(kvs_probe_fn() == 1);
#endif
    /* From the executable, RTLD_NEXT still finds libc's functions. */
    CHECK(dlsym(RTLD_NEXT, "getpid") != NULL);
}

int main(int argc, char **argv)
{
    const char *what;

    if (argc != 4) {
        fprintf(stderr, "usage: shim_probe <linked|dlsym|procaddr> <scenario> <on|off>\n");
        return 2;
    }
    g_how = argv[1];
    what = argv[2];
    g_on = strcmp(argv[3], "on") == 0;
    probe_load();
    if (strcmp(what, "basic") == 0) {
        scenario_basic();
    } else if (strcmp(what, "errno") == 0) {
        scenario_errno();
    } else if (strcmp(what, "threads") == 0) {
        scenario_threads();
    } else if (strcmp(what, "fork") == 0) {
        scenario_fork();
    } else if (strcmp(what, "vmm") == 0) {
        scenario_vmm();
    } else if (strcmp(what, "full") == 0) {
        scenario_full();
    } else if (strcmp(what, "aside") == 0) {
        scenario_aside();
    } else if (strcmp(what, "threshold") == 0) {
        scenario_threshold();
    } else if (strcmp(what, "lazy") == 0) {
        scenario_lazy(0);
    } else if (strcmp(what, "lazy_kv") == 0) {
        scenario_lazy(1);
    } else if (strcmp(what, "getctx") == 0) {
        scenario_getctx();
    } else if (strcmp(what, "rtld_next") == 0) {
        scenario_rtld_next();
    } else {
        fprintf(stderr, "shim_probe: unknown scenario %s\n", what);
        return 2;
    }
    dlclose(g_cuda);
    return 0;
}
