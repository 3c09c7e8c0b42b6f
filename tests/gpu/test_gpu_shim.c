/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The shim on a real GPU: re-runs itself under LD_PRELOAD=libkvshare_preload.so,
 * reaches the real driver through cuGetProcAddress as libcudart does, and
 * checks that allocations, KV registration and copies were seen. When
 * python3 with a CUDA-enabled PyTorch is present, runs a tensor through
 * PyTorch's caching allocator under the shim too.
 *
 * Exits 77 (CTest: skipped), saying why, when there is no real driver or GPU.
 * NOTE: written without access to a GPU; on this project's CI it always skips.
 */
#include <dlfcn.h>
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvs_cuda.h"
#include "kvs_preload.h"

#define SKIP 77
#define KV   (64u << 20)

extern char **environ;

#define GPU_TEST_NAME "test_gpu_shim"
#include "gpu_check.h"

static void *g_cuda;

/* Skips unless a real driver with at least one device is here. */
static void require_gpu(void)
{
    kvs_pfn_cuInit init;
    kvs_pfn_cuDeviceGetCount count;
    int n = 0;
    CUresult r;

    g_cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (g_cuda == NULL) {
        printf("SKIP: no CUDA driver here (dlopen libcuda.so.1: %s)\n", dlerror());
        exit(SKIP);
    }
    if (dlsym(g_cuda, "fakecuda_proc") != NULL) {
        printf("SKIP: libcuda.so.1 is kvshare's fake driver, not a real one\n");
        exit(SKIP);
    }
    init = (kvs_pfn_cuInit)dlsym(g_cuda, "cuInit");
    count = (kvs_pfn_cuDeviceGetCount)dlsym(g_cuda, "cuDeviceGetCount");
    if (init == NULL || count == NULL) {
        printf("SKIP: libcuda.so.1 lacks cuInit/cuDeviceGetCount\n");
        exit(SKIP);
    }
    r = init(0);
    if (r != CUDA_SUCCESS || count(&n) != CUDA_SUCCESS || n == 0) {
        printf("SKIP: no usable GPU (cuInit = %d, %d devices)\n", r, n);
        exit(SKIP);
    }
}

static int spawn_wait(char *const argv[], char *const envp[])
{
    pid_t pid;
    int status = 0;

    if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, envp) != 0 ||
        waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* environ + LD_PRELOAD=<shim> + extra entries. */
static char **shim_env(char *preload, size_t len, const char *const *extra)
{
    static char *envp[512];
    size_t n = 0;

    if (KVS_TEST_ASAN_RUNTIME[0] != '\0') {
        snprintf(preload, len, "LD_PRELOAD=%s:%s", KVS_TEST_ASAN_RUNTIME, KVS_TEST_SHIM);
    } else {
        snprintf(preload, len, "LD_PRELOAD=%s", KVS_TEST_SHIM);
    }
    for (char **e = environ; *e != NULL && n < 480; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) != 0 && strncmp(*e, "KVSHARE_", 8) != 0) {
            envp[n++] = *e;
        }
    }
    envp[n++] = preload;
    for (size_t i = 0; extra[i] != NULL && n < 510; i++) {
        envp[n++] = (char *)extra[i];
    }
    envp[n] = NULL;
    return envp;
}

static uint64_t stat_field(const char *path, const char *field)
{
    char buf[8192], key[64];
    FILE *f = fopen(path, "r");
    size_t n;
    const char *p;

    CHECK(f != NULL);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    snprintf(key, sizeof(key), "\"%s\":", field);
    p = strstr(buf, key);
    CHECK(p != NULL);
    return strtoull(p + strlen(key), NULL, 10);
}

/* Under the shim: the driver API the way libcudart reaches it. */
static int child_main(void)
{
    kvs_pfn_cuGetProcAddress_v2 gpa;
    kvs_pfn_cuDriverGetVersion version;
    kvs_pfn_cuDeviceGet device_get;
    kvs_pfn_cuDevicePrimaryCtxRetain retain;
    kvs_pfn_cuDevicePrimaryCtxRelease_v2 release;
    kvs_pfn_cuCtxSetCurrent set_current;
    kvs_pfn_cuMemAlloc_v2 alloc;
    kvs_pfn_cuMemFree_v2 mfree;
    kvs_pfn_cuMemcpyHtoD_v2 htod;
    kvs_pfn_cuMemcpyDtoH_v2 dtoh;
    kvs_pfn_cuMemcpyDtoD_v2 dtod;
    kvs_pfn_cuMemGetHandleForAddressRange dmabuf;
    kvs_preload_counter_fn counter =
        (kvs_preload_counter_fn)dlsym(RTLD_DEFAULT, "kvs_preload_counter");
    CUdriverProcAddressQueryResult st;
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CUdeviceptr kv = 0, small = 0;
    int ver = 0, fd = -1;
    uint64_t v = 0;
    static unsigned char in[1 << 20], out[1 << 20];

    CHECK(counter != NULL); /* the shim is preloaded */
    gpa = (kvs_pfn_cuGetProcAddress_v2)dlsym(g_cuda, "cuGetProcAddress_v2");
    version = (kvs_pfn_cuDriverGetVersion)dlsym(g_cuda, "cuDriverGetVersion");
    CHECK(gpa != NULL && version != NULL);
    CU(version(&ver));
#define GET(var, name)                                                                             \
    do {                                                                                           \
        void *p_ = NULL;                                                                           \
        CU(gpa(name, &p_, ver, CU_GET_PROC_ADDRESS_DEFAULT, &st));                                 \
        CHECK(p_ != NULL);                                                                         \
        memcpy(&var, &p_, sizeof(p_));                                                             \
    } while (0)
    GET(device_get, "cuDeviceGet");
    GET(retain, "cuDevicePrimaryCtxRetain");
    GET(release, "cuDevicePrimaryCtxRelease");
    GET(set_current, "cuCtxSetCurrent");
    GET(alloc, "cuMemAlloc");
    GET(mfree, "cuMemFree");
    GET(htod, "cuMemcpyHtoD");
    GET(dtoh, "cuMemcpyDtoH");
    GET(dtod, "cuMemcpyDtoD");
#undef GET
    dmabuf = (kvs_pfn_cuMemGetHandleForAddressRange)dlsym(g_cuda, "cuMemGetHandleForAddressRange");

    CU(device_get(&dev, 0));
    CU(retain(&ctx, dev));
    CU(set_current(ctx));
    CU(alloc(&kv, KV));
    CU(alloc(&small, sizeof(in)));
    for (size_t i = 0; i < sizeof(in); i++) {
        in[i] = (unsigned char)(i * 13u + 7u);
    }
    CU(htod(kv, in, sizeof(in)));
    CU(dtod(small, kv, sizeof(in)));
    CU(dtoh(out, small, sizeof(out)));
    CHECK(memcmp(in, out, sizeof(in)) == 0);

    CHECK(counter("allocations", &v) == KVS_OK && v == 2);
    CHECK(counter("kv_regions", &v) == KVS_OK && v == 1);
    CHECK(counter("kvs_regions", &v) == KVS_OK && v == 1);
    CHECK(counter("copies_htod", &v) == KVS_OK && v == 1);
    CHECK(counter("copies_dtod", &v) == KVS_OK && v == 1);
    CHECK(counter("copies_dtoh", &v) == KVS_OK && v == 1);
    CHECK(counter("procaddr_unmatched", &v) == KVS_OK);
    printf("procaddr_unmatched = %llu\n", (unsigned long long)v);
    if (dmabuf != NULL) {
        CUresult r = dmabuf(&fd, kv, KV, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
        printf("cuMemGetHandleForAddressRange(DMA_BUF_FD) = %d (fd %d)\n", r, fd);
        if (r == CUDA_SUCCESS && fd >= 0) {
            close(fd);
        }
    }
    CU(mfree(small));
    CU(mfree(kv));
    CHECK(counter("kvs_regions", &v) == KVS_OK && v == 0);
    CU(release(dev));
    return 0;
}

/* PyTorch's caching allocator under the shim, when torch is here. */
static int torch_part(void)
{
    char preload[2048], stats[128], stats_env[160], dir[] = "/tmp/kvs-gpu-test.XXXXXX";
    char *probe[] = {"python3", "-c",
                     "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)", NULL};
    char *run[] = {"python3", "-c",
                   "import torch\n"
                   "x = torch.empty(64 << 20, dtype=torch.uint8, device='cuda')\n"
                   "x.fill_(7)\n"
                   "y = x.cpu()\n"
                   "assert int(y[123]) == 7\n"
                   "z = torch.ones(1 << 20, device='cuda').cpu()\n"
                   "del x\n"
                   "torch.cuda.synchronize()\n",
                   NULL};
    const char *extra[] = {stats_env, NULL};
    int rc;

    rc = spawn_wait(probe, environ);
    if (rc != 0) {
        printf("torch part skipped: python3 with CUDA-enabled PyTorch not found (rc %d)\n", rc);
        return 0;
    }
    CHECK(mkdtemp(dir) != NULL);
    snprintf(stats, sizeof(stats), "%s/stats.json", dir);
    snprintf(stats_env, sizeof(stats_env), "KVSHARE_STATS_FILE=%s", stats);
    rc = spawn_wait(run, shim_env(preload, sizeof(preload), extra));
    CHECK(rc == 0);
    /* The caching allocator reserves big segments with cuMemAlloc (or VMM
     * with expandable segments); either way the shim saw them. */
    CHECK(stat_field(stats, "allocations") >= 1);
    CHECK(stat_field(stats, "kv_regions") >= 1);
    CHECK(stat_field(stats, "copies_dtoh") + stat_field(stats, "copies_other") >= 1);
    printf("torch under the shim: allocations %llu, kv_regions %llu\n",
           (unsigned long long)stat_field(stats, "allocations"),
           (unsigned long long)stat_field(stats, "kv_regions"));
    unlink(stats);
    rmdir(dir);
    return 0;
}

int main(int argc, char **argv)
{
    char preload[2048];
    const char *extra[] = {"KVS_GPU_TEST_CHILD=1", NULL};
    char *args[] = {argv[0], NULL};
    int rc;

    (void)argc;
    require_gpu();
    if (getenv("KVS_GPU_TEST_CHILD") != NULL) {
        return child_main();
    }
    rc = spawn_wait(args, shim_env(preload, sizeof(preload), extra));
    if (rc != 0) {
        fprintf(stderr, "test_gpu_shim: the run under the shim failed (%d)\n", rc);
        return 1;
    }
    return torch_part();
}
