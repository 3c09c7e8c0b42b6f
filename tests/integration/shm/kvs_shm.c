/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_shm.c - the same-host memfd path between real processes: each scenario forks a holder.
 *
 *   kvs_shm [SCENARIO...]   (default: all) prints "ok: ..." per check, exits 1 on the first
 *                           failure
 * Scenarios:
 *   mapped     a reader maps the holder's memfds (zero-copy pool in kvs_mem_alloc memory,
 *              and copy-mode blocks in the arena) and gets every byte right
 *   midread    the holder rewrites a block between the reader's copy and its generation
 *              check: the fetch fails KVS_ERR_STALE; a fresh fetch gets the new bytes
 *   xview      a reader of another view (TP 2 rank 1 of the holder's TP 1) fetches head
 *              slices from the mapping (the planner's copies through staging); a rewrite
 *              between copy and check is KVS_ERR_STALE with nothing landed; then every
 *              byte of its heads right, nothing over UCX
 *   otherhost  a reader posing as another host (KVSHARE_TEST_BOOT_ID), and one with
 *              KVSHARE_SHM=off, fetch over UCX and still get every byte right
 *   unauth     connections to the holder's Unix socket that prove nothing (garbage, a wrong
 *              MAC, a right MAC over an unknown session) get no descriptor, and the holder
 *              keeps serving mapped fetches
 *   cudaput    an engine's CUDA pool (exportable VMM) offloads to a pool node on its host:
 *              the node imports the allocation and copies the put out of it; a reader
 *              fetches every byte back; a non-exportable allocation and KVSHARE_SHM=off
 *              are refused with KVS_ERR_UNSUPPORTED and the node keeps serving
 *   withdraw   a client that offloaded to a node from kvs_mem_alloc memory, and one from an
 *              exportable CUDA allocation, free that memory with the connection still
 *              open: the node lets go of its mapping (it would keep the memory alive,
 *              the engine's GPU memory included); a new pool's put is mapped and copied
 *              again, and every byte comes back
 *   offers     offers of memory (a pool client's request, KVSP) of the wrong length, with a
 *              wrong MAC, over an unknown session, a region request carrying descriptors,
 *              70 descriptors at once, withdrawals carrying descriptors: no answer, each refused
 * for its reason in the log, every descriptor closed in the holder, and it keeps serving mapped
 * fetches silent     callers that connect and stop (silent, after the greeting, a request cut
 *              short), and a flood of more than the holder keeps at once, held open while
 *              a reader's handover still gets the mapped path
 *   forget     the holder replaces its pool (destroyed, its memory freed: kvs_mem_free, or a
 *              CUDA allocation released) with a new one: the reader's next lookups learn
 *              the new region table, it unmaps the old memory (else it would keep it alive
 *              for the connection's life) and maps the new, every byte right each time
 *   order      replies on two carriers: the holder's region table no longer fits the control
 *              channel, so each new one (a new heap pool each round, read with GETs) goes
 *              over UCX; a lookup held (test hook kvs__peer_test_reply) between its reply
 *              with the new table and applying it, while another thread fetches the new
 *              pool, then a newer one, then again after the held lookup applied (or dropped)
 *              its older table: every fetch right
 *   churn      the holder registers a new small region and deregisters the last one, more
 *              times than a reader keeps regions of one peer (KVS_PROTO_MAX_REGIONS),
 *              with a reader (mapped path) and a KVSHARE_SHM=off one (UCX GETs) looking
 *              up and fetching after each: neither fails BUSY, every byte right; then a
 *              client (KVSHARE_SHM=off: the node GETs) offloads one block from a new pool
 *              each time, as many times: every put pulled by the node, none BUSY
 *   index      lookups answered by the holder's mapped block index: nothing sent to the
 *              holder, every byte right (pool, arena), a miss; reads counted by READ; a
 *              block rewritten after the lookup or mid-copy is KVS_ERR_STALE; new memory at
 *              the holder makes the next lookup ask it
 *   defer      the copy of a fetch from the mapping waits for a thread that waits: a lookup
 *              whose reply is held up (the holder stopped for 200 ms) copies the last
 *              fetch meanwhile (kvs_request_test then says OK, every byte right; on 2
 *              CPUs without the copy helper, which would take the holder's core); a
 *              kvs_request_wait with no time left still copies; a fetch freed before any
 *              wait never copies, and the next one does; one waited for only after its
 *              deadline is not timed out (the copy needs no peer)
 *   exit       the holder is killed while the reader holds a lease: the reader's fetch does
 *              not crash, and its mappings of the holder go once the connection is gone
 *   cuda       the holder's KV is a CUDA VMM allocation (the fake driver, tests/fakecuda)
 *              made with POSIX_FD export: the reader imports it, maps it read-only and
 *              copies every byte from it (cuMemcpyDtoH), and unmaps it with the connection
 *   cudamid    the same holder rewrites a block between the copy and the check:
 *              KVS_ERR_STALE, then the new bytes
 *   cudanofd   a VMM allocation made without POSIX_FD cannot be exported: the holder logs
 *              it, and the reader gets every byte over UCX; KVSHARE_SHM=off does the same
 *              with the exportable one
 *   cudadst    the reader's pool is CUDA memory: from host memfds (cuMemcpyHtoDAsync) and
 *              from the exportable VMM allocation (cuMemcpyDtoDAsync), every byte over the
 *              mapping, a rewrite between copy and check KVS_ERR_STALE then the new bytes;
 *              KVSHARE_SHM=off refuses the fetch (the transport takes no CUDA memory)
 *   cudaxview  xview with the reader's pool in CUDA memory: staging goes into the device
 *              (cuMemcpyHtoDAsync) only once the generations held; and a reader of the
 *              other K/V order from a CUDA VMM holder: whole planes go straight from the
 *              mapping into the device (cuMemcpyDtoDAsync)
 * Uses the internal test hooks kvs__shm_test_mid_copy and kvs__peer_test_reply (linked
 * against kvshare_static). */
#include "copier_int.h"
#include "fakecuda.h"
#include "kvshare.h"
#include "peer_int.h"
#include "proto_int.h"
#include "shm_int.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NBLOCKS      64u
#define BB           (64u << 10)
#define GROW_REGIONS 2500u                          /* the holder's table then exceeds 64 KiB */
#define FRESH_KEY(v) (100u * NBLOCKS + (v)*NBLOCKS) /* "fresh V"'s first key */

static char work[256];
static const char token[] = "kvs-shm-test-token-0123456789abcdef";

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "FAIL: " __VA_ARGS__);                                                     \
        fprintf(stderr, "\n");                                                                     \
        exit(1);                                                                                   \
    } while (0)

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static kvs_key_t key_of(uint32_t i)
{
    kvs_key_t k;
    for (int w = 0; w < 4; w++) {
        uint64_t v = mix(0x5151u + i * 4u + (uint64_t)w);
        memcpy(&k.bytes[8 * w], &v, 8);
    }
    return k;
}

static void fill(uint8_t *b, uint32_t i, uint64_t version)
{
    uint64_t x = mix(i * 7919u + version);
    for (size_t j = 0; j < BB; j += 8, x = mix(x))
        memcpy(b + j, &x, 8);
}

static bool same(const uint8_t *b, uint32_t i, uint64_t version)
{
    uint64_t x = mix(i * 7919u + version);
    for (size_t j = 0; j < BB; j += 8, x = mix(x))
        if (memcmp(b + j, &x, 8) != 0)
            return false;
    return true;
}

static kvs_layout_t layout(void)
{
    kvs_layout_t l = {.model_id = "kvs-shm-test",
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = 1,
                      .num_kv_heads = 8,
                      .head_dim = 128,
                      .tp_size = 1};
    return l;
}

static kvs_ctx_h make_ctx(const char *listen)
{
    char err[512] = "";
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                         KVS_CTX_FIELD_CAPACITY,
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .transport = "ucx",
                           .capacity_bytes = 64u << 20};
    if (listen != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_LISTEN;
        cp.listen = listen;
    }
    kvs_ctx_h ctx = NULL;
    if (kvs_ctx_create(&cp, &ctx) != KVS_OK)
        FAIL("kvs_ctx_create: %s", err);
    return ctx;
}

/* A pool of NBLOCKS blocks of @bb bytes (one segment) over host memory @mem. */
static kvs_pool_h pool_over(kvs_ctx_h ctx, const kvs_layout_t *lp, size_t bb, uint8_t *mem)
{
    kvs_layout_t l = *lp;
    kvs_segment_t seg = {
        .base = mem, .block_stride = bb, .block_bytes = bb, .mem_type = KVS_MEM_HOST};
    kvs_pool_params_t pp = {
        .layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = NBLOCKS};
    kvs_pool_h pool = NULL;
    if (kvs_pool_create(ctx, &pp, &pool) != KVS_OK)
        FAIL("kvs_pool_create");
    return pool;
}

/* The same in kvs_mem_alloc memory. */
static kvs_pool_h make_pool_as(kvs_ctx_h ctx, const kvs_layout_t *lp, size_t bb, uint8_t **mem_p)
{
    if (kvs_mem_alloc(ctx, (size_t)NBLOCKS * bb, KVS_MEM_HOST, (void **)mem_p) != KVS_OK)
        FAIL("kvs_mem_alloc");
    return pool_over(ctx, lp, bb, *mem_p);
}

/* The same in the process's own heap: memory no peer can map, which a
 * same-host reader reads with UCX GETs (their rkeys from the region table). */
static kvs_pool_h make_heap_pool(kvs_ctx_h ctx, uint8_t **mem_p)
{
    if ((*mem_p = aligned_alloc(4096, (size_t)NBLOCKS * BB)) == NULL)
        FAIL("aligned_alloc");
    kvs_layout_t l = layout();
    return pool_over(ctx, &l, BB, *mem_p);
}

static kvs_pool_h make_pool(kvs_ctx_h ctx, uint8_t **mem_p)
{
    kvs_layout_t l = layout();
    return make_pool_as(ctx, &l, BB, mem_p);
}

/* The holder's KV memory: kvs_mem_alloc (HOLD_HOST), or a fake-CUDA VMM
 * allocation made with POSIX_FD export (HOLD_CUDA_FD) or without (HOLD_CUDA). */
enum { HOLD_HOST, HOLD_CUDA_FD, HOLD_CUDA };
static int hold_kind = HOLD_HOST;

typedef struct vmm {
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    size_t size;
} vmm_t;

#define CU_OK(call)                                                                                \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS)                                                                    \
            FAIL("%s = %d", #call, r_);                                                            \
    } while (0)

/* A CUDA pool of NBLOCKS blocks in one VMM allocation, as an engine makes it. */
static kvs_pool_h make_cuda_pool(kvs_ctx_h ctx, vmm_t *v, bool posix_fd)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes =
        posix_fd ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
    v->size = (size_t)NBLOCKS * BB;
    CU_OK(cuInit(0));
    CU_OK(cuMemCreate(&v->h, v->size, &prop, 0));
    CU_OK(cuMemAddressReserve(&v->va, v->size, 0, 0, 0));
    CU_OK(cuMemMap(v->va, v->size, 0, v->h, 0));
    CUmemAccessDesc access = {.location = prop.location,
                              .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CU_OK(cuMemSetAccess(v->va, v->size, &access, 1));
    kvs_layout_t l = layout();
    kvs_segment_t seg = {.base = (void *)(uintptr_t)v->va,
                         .block_stride = BB,
                         .block_bytes = BB,
                         .mem_type = KVS_MEM_CUDA};
    kvs_pool_params_t pp = {
        .layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = NBLOCKS};
    kvs_pool_h pool = NULL;
    if (kvs_pool_create(ctx, &pp, &pool) != KVS_OK)
        FAIL("kvs_pool_create (CUDA)");
    return pool;
}

static void free_vmm(vmm_t *v)
{
    CU_OK(cuMemUnmap(v->va, v->size));
    CU_OK(cuMemAddressFree(v->va, v->size));
    CU_OK(cuMemRelease(v->h));
}

/* Block @i of the holder's memory gets version @version of key @key. */
static void put_block(uint8_t *mem, const vmm_t *v, uint32_t i, uint32_t key, uint64_t version)
{
    if (v == NULL) {
        fill(mem + (size_t)i * BB, key, version);
        return;
    }
    static uint8_t buf[BB];
    fill(buf, key, version);
    CU_OK(cuMemcpyHtoD_v2(v->va + (CUdeviceptr)i * BB, buf, BB));
}

/* A child's stderr goes to WORK/@file, its library logging at @level. */
static void child_log(const char *file, const char *level)
{
    char log[300];
    snprintf(log, sizeof(log), "%s/%s", work, file);
    FILE *lf = fopen(log, "w");
    if (lf == NULL || dup2(fileno(lf), 2) < 0)
        FAIL("child: %s", log);
    setenv("KVSHARE_LOG", level, 1);
}

/* --- the holder (a child process) ------------------------------------- */
/* Keys 0..N-1 zero-copy from its pool (block i = key i), keys N..2N-1
 * copied into its arena. Commands on @in: "rewrite I" (force-unpublish
 * key I, write version 2, publish it again; answers "done"), "replace"
 * (destroy the pool, free its memory, make a new one whose blocks hold
 * version 3 of keys 0..N-1; answers "done"). */
static void holder(int in, int out)
{
    /* Its warnings (refused mapping requests) go to WORK/holder.log. */
    child_log("holder.log", "warn");
    kvs_ctx_h ctx = make_ctx("127.0.0.1:0");
    uint8_t *mem = NULL;
    vmm_t vmm, *v = hold_kind == HOLD_HOST ? NULL : &vmm;
    kvs_pool_h pool =
        v == NULL ? make_pool(ctx, &mem) : make_cuda_pool(ctx, v, hold_kind == HOLD_CUDA_FD);
    kvs_key_t keys[2 * NBLOCKS];
    uint32_t ids[NBLOCKS];
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        ids[i] = i;
        keys[i] = key_of(i);
        keys[NBLOCKS + i] = key_of(NBLOCKS + i);
        put_block(mem, v, i, NBLOCKS + i, 1);
    }
    /* Copy mode needs host memory: a CUDA holder serves its pool only. */
    if (v == NULL && kvs_publish(pool, keys + NBLOCKS, ids, NBLOCKS, 0, NULL) != KVS_OK)
        FAIL("holder: copy-mode publish");
    for (uint32_t i = 0; i < NBLOCKS; i++)
        put_block(mem, v, i, i, 1);
    if (kvs_publish(pool, keys, ids, NBLOCKS, KVS_PUBLISH_ZERO_COPY, NULL) != KVS_OK)
        FAIL("holder: zero-copy publish");
    char addr[300], line[128];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
    dprintf(out, "ready %s\n", addr);
    FILE *f = fdopen(in, "r");
    static _Alignas(4096) uint8_t extra[4096];
    kvs_region_h extra_reg = NULL;
    /* "grow": GROW_REGIONS pages registered one by one, so that its region
     * table no longer fits a control-channel message; "fresh V": a new
     * pool in its heap (a new region, which no peer can map) holding
     * version V of keys FRESH_KEY(V)..+NBLOCKS-1, the last one destroyed;
     * "ctl": how many messages it sent on control channels. */
    static _Alignas(4096) uint8_t grown[GROW_REGIONS][4096];
    kvs_region_h grown_reg[GROW_REGIONS] = {0};
    kvs_pool_h fresh = NULL;
    uint8_t *fresh_mem = NULL;
    while (fgets(line, sizeof(line), f) != NULL) {
        uint32_t i;
        if (strcmp(line, "grow\n") == 0) {
            for (uint32_t g = 0; g < GROW_REGIONS; g++)
                if (kvs_mem_register_ex(ctx, grown[g], sizeof(grown[g]), NULL, &grown_reg[g]) !=
                    KVS_OK)
                    FAIL("holder: kvs_mem_register_ex (grow)");
            dprintf(out, "done\n");
            continue;
        }
        if (sscanf(line, "fresh %u", &i) == 1) {
            kvs_pool_destroy(fresh);
            free(fresh_mem);
            fresh = make_heap_pool(ctx, &fresh_mem);
            kvs_key_t fk[NBLOCKS];
            for (uint32_t k = 0; k < NBLOCKS; k++) {
                fk[k] = key_of(FRESH_KEY(i) + k);
                fill(fresh_mem + (size_t)k * BB, FRESH_KEY(i) + k, i);
            }
            if (kvs_publish(fresh, fk, ids, NBLOCKS, KVS_PUBLISH_ZERO_COPY, NULL) != KVS_OK)
                FAIL("holder: publish into the fresh pool");
            dprintf(out, "done\n");
            continue;
        }
        if (sscanf(line, "reads %u", &i) == 1 && i < NBLOCKS) {
            uint32_t reads = 0;
            kvs_pool_reads(pool, &i, 1, &reads);
            dprintf(out, "reads %u\n", reads);
            continue;
        }
        if (strcmp(line, "ctl\n") == 0) {
            kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_CTL};
            kvs_stats_query(ctx, &ks);
            dprintf(out, "ctl %llu\n", (unsigned long long)ks.ctl_messages);
            continue;
        }
        if (strcmp(line, "churn\n") == 0) {
            /* One region more in its table, a new one each time. */
            kvs_mem_deregister(extra_reg);
            extra_reg = NULL;
            if (kvs_mem_register_ex(ctx, extra, sizeof(extra), NULL, &extra_reg) != KVS_OK)
                FAIL("holder: kvs_mem_register_ex");
            dprintf(out, "done\n");
            continue;
        }
        if (sscanf(line, "rewrite %u", &i) == 1 && i < NBLOCKS) {
            if (kvs_unpublish(pool, &i, 1, KVS_UNPUBLISH_FORCE) != KVS_OK)
                FAIL("holder: unpublish");
            put_block(mem, v, i, i, 2);
            if (kvs_publish(pool, &keys[i], &i, 1, KVS_PUBLISH_ZERO_COPY, NULL) != KVS_OK)
                FAIL("holder: republish");
            dprintf(out, "done\n");
        } else if (strcmp(line, "replace\n") == 0) {
            kvs_pool_destroy(pool);
            if (v == NULL) {
                kvs_mem_free(ctx, mem);
                pool = make_pool(ctx, &mem);
            } else {
                free_vmm(v);
                pool = make_cuda_pool(ctx, v, hold_kind == HOLD_CUDA_FD);
            }
            for (uint32_t k = 0; k < NBLOCKS; k++)
                put_block(mem, v, k, k, 3);
            if (kvs_publish(pool, keys, ids, NBLOCKS, KVS_PUBLISH_ZERO_COPY, NULL) != KVS_OK)
                FAIL("holder: publish into the new pool");
            dprintf(out, "done\n");
        }
    }
    kvs_mem_deregister(extra_reg);
    for (uint32_t g = 0; g < GROW_REGIONS; g++)
        kvs_mem_deregister(grown_reg[g]);
    kvs_pool_destroy(fresh);
    free(fresh_mem);
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, mem);
    kvs_ctx_destroy(ctx);
    if (v != NULL)
        free_vmm(v);
    exit(0);
}

typedef struct child {
    pid_t pid;
    int to;
    FILE *from;
    char addr[300];
} child_t;

/* A child process running @body(commands in, answers out), once it said
 * "ready ADDR". */
static child_t start_child(void (*body)(int, int), const char *what)
{
    int a[2], b[2];
    if (pipe(a) != 0 || pipe(b) != 0)
        FAIL("pipe");
    fflush(stdout);
    fflush(stderr);
    child_t c = {.pid = fork()};
    if (c.pid < 0)
        FAIL("fork");
    if (c.pid == 0) {
        close(a[1]);
        close(b[0]);
        body(a[0], b[1]);
    }
    close(a[0]);
    close(b[1]);
    c.to = a[1];
    c.from = fdopen(b[0], "r");
    char line[400];
    if (fgets(line, sizeof(line), c.from) == NULL || sscanf(line, "ready %299s", c.addr) != 1)
        FAIL("the %s did not start", what);
    return c;
}

static child_t start_holder(void)
{
    return start_child(holder, "holder");
}

/* start_holder() with a holder of @kind (HOLD_*), the next one a host holder again. */
static child_t start_holder_of(int kind)
{
    hold_kind = kind;
    child_t h = start_holder();
    hold_kind = HOLD_HOST;
    return h;
}

static void stop_holder(child_t *c)
{
    if (c->pid <= 0)
        return;
    close(c->to);
    int status = 0;
    waitpid(c->pid, &status, 0);
    fclose(c->from);
    c->pid = 0;
    /* A clean exit: nothing leaked or crashed in the holder (sanitizers say so with the
     * exit code; the log is in WORK/holder.log). */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("the holder ended with status 0x%x; see %s/holder.log", status, work);
}

/* --- the reader ---------------------------------------------------------- */
typedef struct reader {
    kvs_ctx_h ctx;
    uint8_t *mem;    /* its blocks (a CUDA reader: their host copy, after each fetch) */
    CUdeviceptr dev; /* a CUDA reader's blocks (fake cuMemAlloc memory), or 0 */
    kvs_pool_h pool;
    size_t bb; /* its block bytes */
    int unset; /* what fetch() writes into its blocks first */
} reader_t;

static reader_t reader_new(void)
{
    reader_t r = {.ctx = make_ctx(NULL), .bb = BB};
    r.pool = make_pool(r.ctx, &r.mem);
    return r;
}

/* The holder's view of TP 2 rank 1 (heads 4..7, blocks of half the bytes). */
#define XRANK 1u
#define XBB   (BB / 2)
static kvs_layout_t layout_tp2(void)
{
    kvs_layout_t l = layout();
    l.tp_size = 2;
    l.tp_rank = XRANK;
    l.num_kv_heads = 4;
    return l;
}

static reader_t reader_tp2(void)
{
    kvs_layout_t l = layout_tp2();
    reader_t r = {.ctx = make_ctx(NULL), .bb = XBB, .unset = 0xA5};
    r.pool = make_pool_as(r.ctx, &l, XBB, &r.mem);
    return r;
}

/* Byte @o of the TP 2 rank XRANK view of key @i's block (fill(@i, @version) holds the
 * whole block: planes K then V of 16 tokens x 8 heads x 128 bf16, NHD). */
static uint8_t x_byte(const uint8_t *whole, size_t o)
{
    size_t kv = o / (XBB / 2), t = o % (XBB / 2) / 1024, h = o % 1024 / 256, b = o % 256;
    return whole[kv * (BB / 2) + t * 2048 + (XRANK * 4 + h) * 256 + b];
}

/* A reader whose pool (layout @lp, blocks of @bb bytes) is CUDA memory: a
 * decode engine's KV on the GPU. */
static reader_t reader_cuda_as(const kvs_layout_t *lp, size_t bb)
{
    reader_t r = {.ctx = make_ctx(NULL), .bb = bb, .unset = 0x5A};
    CU_OK(cuInit(0));
    CU_OK(cuMemAlloc_v2(&r.dev, (size_t)NBLOCKS * bb));
    if ((r.mem = malloc((size_t)NBLOCKS * bb)) == NULL)
        FAIL("malloc");
    kvs_layout_t l = *lp;
    kvs_segment_t seg = {.base = (void *)(uintptr_t)r.dev,
                         .block_stride = bb,
                         .block_bytes = bb,
                         .mem_type = KVS_MEM_CUDA};
    kvs_pool_params_t pp = {
        .layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = NBLOCKS};
    if (kvs_pool_create(r.ctx, &pp, &r.pool) != KVS_OK)
        FAIL("kvs_pool_create (CUDA reader)");
    return r;
}

static reader_t reader_cuda(void)
{
    kvs_layout_t l = layout();
    return reader_cuda_as(&l, BB);
}

static void reader_free(reader_t *r)
{
    kvs_pool_destroy(r->pool);
    if (r->dev != 0) {
        CU_OK(cuMemFree_v2(r->dev));
        free(r->mem);
    } else {
        kvs_mem_free(r->ctx, r->mem);
    }
    kvs_ctx_destroy(r->ctx);
}

static uint64_t shm_bytes(const reader_t *r)
{
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_SHM};
    kvs_stats_query(r->ctx, &st);
    return st.shm_fetched_bytes;
}

/* Looks up keys first..first+n-1 at @addr: the lookup's status; one that
 * answers must hit every key. */
static kvs_status_t lookup_keys(reader_t *r, const char *addr, uint32_t first, uint32_t n,
                                kvs_lease_h *lease_p)
{
    kvs_key_t keys[2 * NBLOCKS];
    for (uint32_t i = 0; i < n; i++)
        keys[i] = key_of(first + i);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = addr};
    *lease_p = NULL;
    kvs_status_t st = kvs_lookup(r->ctx, kvs_pool_layout_id(r->pool), keys, n, &lp, lease_p);
    if (st == KVS_OK && kvs_lease_hits(*lease_p) != n)
        FAIL("lookup: %zu of %u hits", kvs_lease_hits(*lease_p), n);
    return st;
}

/* Looks up keys first..first+n-1 at @addr and fetches them into blocks
 * 0..n-1; returns the fetch's status (the lookup must hit every key). */
static kvs_status_t fetch(reader_t *r, const char *addr, uint32_t first, uint32_t n)
{
    uint32_t ids[NBLOCKS];
    for (uint32_t i = 0; i < n; i++)
        ids[i] = i;
    kvs_lease_h lease = NULL;
    kvs_status_t st = lookup_keys(r, addr, first, n, &lease);
    if (st != KVS_OK)
        return st;
    kvs_request_h req = NULL;
    memset(r->mem, r->unset, (size_t)NBLOCKS * r->bb);
    if (r->dev != 0)
        CU_OK(cuMemcpyHtoD_v2(r->dev, r->mem, (size_t)NBLOCKS * r->bb));
    st = kvs_fetch(lease, r->pool, ids, n, NULL, &req);
    if (st == KVS_OK) {
        st = kvs_request_wait(req, -1);
        kvs_request_free(req);
    }
    kvs_lease_release(lease);
    if (r->dev != 0) /* what landed on the device, for check() */
        CU_OK(cuMemcpyDtoH_v2(r->mem, r->dev, (size_t)NBLOCKS * r->bb));
    return st;
}

static void check(const reader_t *r, uint32_t first, uint32_t n, uint64_t version)
{
    for (uint32_t i = 0; i < n; i++)
        if (!same(r->mem + (size_t)i * BB, first + i, version))
            FAIL("block of key %u has wrong bytes", first + i);
}

/* Lines of process @pid's mappings that name @what. */
static int maps_in(pid_t pid, const char *what)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, what) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

/* Mappings in this process of memfds that process @pid made. */
static int maps_of(pid_t pid)
{
    char want[64];
    snprintf(want, sizeof(want), "memfd:kvshare:%d:", (int)pid);
    return maps_in(getpid(), want);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* --- scenarios ------------------------------------------------------------ */
static void s_mapped(void)
{
    child_t h = start_holder();
    reader_t r = reader_new();
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("mapped: zero-copy fetch: %s", kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    if (shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
        FAIL("mapped: %llu bytes through mapped memory, expected %u",
             (unsigned long long)shm_bytes(&r), NBLOCKS * BB);
    st = fetch(&r, h.addr, NBLOCKS, NBLOCKS);
    if (st != KVS_OK)
        FAIL("mapped: arena fetch: %s", kvs_status_string(st));
    check(&r, NBLOCKS, NBLOCKS, 1);
    if (shm_bytes(&r) != 2ull * NBLOCKS * BB)
        FAIL("mapped: arena blocks did not come through mapped memory");
    if (maps_of(h.pid) < 3)
        FAIL("mapped: %d mappings of the holder's memfds (expected pool, arena, generations)",
             maps_of(h.pid));
    printf("ok: mapped: %u zero-copy + %u arena blocks of %u bytes through %d mapped memfds\n",
           NBLOCKS, NBLOCKS, BB, maps_of(h.pid));
    reader_free(&r);
    stop_holder(&h);
}

/* Sends holder @h the command @cmd ("rewrite 0", "replace") and waits for
 * its "done". */
static void ask(child_t *h, const char *cmd, const char *what)
{
    char line[64];
    dprintf(h->to, "%s\n", cmd);
    if (fgets(line, sizeof(line), h->from) == NULL || strcmp(line, "done\n") != 0)
        FAIL("%s: the holder did not do '%s'", what, cmd);
}

static child_t *mid_holder;
static int mid_calls;

static void mid_copy(void)
{
    if (mid_calls++ > 0)
        return;
    ask(mid_holder, "rewrite 0", "midread");
}

/* Fetches keys 0..3 from holder @h while it rewrites block 0 between the
 * copy and the generation check: the fetch's status, *calls_p the mapped
 * copies that ran (1 when the fetch took the mapped path). */
static kvs_status_t fetch_rewritten_mid_copy(child_t *h, reader_t *r, int *calls_p)
{
    mid_holder = h;
    mid_calls = 0;
    kvs__shm_test_mid_copy = mid_copy;
    kvs_status_t st = fetch(r, h->addr, 0, 4);
    kvs__shm_test_mid_copy = NULL;
    *calls_p = mid_calls;
    return st;
}

/* A holder of @kind rewrites block 0 between the reader's copy and its
 * check: KVS_ERR_STALE, then the new bytes, every byte over the mapping. */
static void midread_case(const char *name, int kind, const char *what)
{
    child_t h = start_holder_of(kind);
    reader_t r = reader_new();
    int calls = 0;
    kvs_status_t st = fetch_rewritten_mid_copy(&h, &r, &calls);
    if (calls != 1)
        FAIL("%s: the fetch did not take the mapped path", name);
    if (st != KVS_ERR_STALE)
        FAIL("%s: a block rewritten mid-read gave %s, expected KVS_ERR_STALE", name,
             kvs_status_string(st));
    st = fetch(&r, h.addr, 0, 4);
    if (st != KVS_OK)
        FAIL("%s: fetch after the rewrite: %s", name, kvs_status_string(st));
    check(&r, 0, 1, 2);
    for (uint32_t i = 1; i < 4; i++)
        if (!same(r.mem + (size_t)i * BB, i, 1))
            FAIL("%s: block %u has wrong bytes", name, i);
    if (shm_bytes(&r) != 4ull * BB) /* the stale fetch counts none */
        FAIL("%s: the fetches did not come through the mapping", name);
    printf("ok: %s: a rewrite of %s between copy and check is KVS_ERR_STALE; then new bytes\n",
           name, what);
    reader_free(&r);
    stop_holder(&h);
}

static void s_midread(void)
{
    midread_case("midread", HOLD_HOST, "host memory");
}

static uint64_t ctl_sent(const reader_t *r);
static uint64_t holder_ctl(child_t *h);

static void index_stats(const reader_t *r, uint64_t *answered, uint64_t *asked)
{
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_INDEX};
    kvs_stats_query(r->ctx, &st);
    *answered = st.index_lookups;
    *asked = st.index_asked;
}

static uint32_t holder_reads(child_t *h, uint32_t block)
{
    char line[64];
    unsigned v = 0;
    dprintf(h->to, "reads %u\n", block);
    if (fgets(line, sizeof(line), h->from) == NULL || sscanf(line, "reads %u", &v) != 1)
        FAIL("index: the holder did not answer 'reads'");
    return v;
}

/* The holder's count of messages it sent on control channels. */
static uint64_t holder_ctl(child_t *h)
{
    char line[64];
    unsigned long long n = 0;
    dprintf(h->to, "ctl\n");
    if (fgets(line, sizeof(line), h->from) == NULL || sscanf(line, "ctl %llu", &n) != 1)
        FAIL("the holder did not say its control-channel count");
    return n;
}

/* Lookups answered by the holder's mapped index: no message to the holder
 * (its control channel sends nothing), every byte right from the pool and
 * the arena, a miss answered too; what was read counted at the holder by
 * the READ that ends it; a block rewritten after the lookup (no lease held
 * it) and one rewritten mid-copy are KVS_ERR_STALE, never other bytes; and
 * a holder that replaces its memory is asked again (its regions changed). */
static void s_index(void)
{
    child_t h = start_holder();
    reader_t r = reader_new();
    uint64_t ans0, ask0, ans, asked;
    /* The first lookup asks the holder (it learns the regions the index's
     * addresses lie in). */
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("index: first fetch");
    check(&r, 0, NBLOCKS, 1);
    index_stats(&r, &ans0, &ask0);
    uint64_t ctl0 = holder_ctl(&h), rctl0 = ctl_sent(&r);
    uint32_t reads0 = holder_reads(&h, 0);
    for (int k = 0; k < 3; k++) {
        if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
            FAIL("index: fetch %d", k);
        check(&r, 0, NBLOCKS, 1);
        if (fetch(&r, h.addr, NBLOCKS, NBLOCKS) != KVS_OK)
            FAIL("index: arena fetch %d", k);
        check(&r, NBLOCKS, NBLOCKS, 1);
    }
    index_stats(&r, &ans, &asked);
    if (ans - ans0 != 6 || asked != ask0)
        FAIL("index: %llu of 6 lookups answered by the index, %llu asked the holder",
             (unsigned long long)(ans - ans0), (unsigned long long)(asked - ask0));
    if (holder_ctl(&h) != ctl0)
        FAIL("index: the holder answered lookups the index should have");
    uint32_t reads = reads0;
    for (int t = 0; t < 500 && reads < reads0 + 3; t++) {
        sleep_ms(2); /* READ is one-way */
        reads = holder_reads(&h, 0);
    }
    if (reads != reads0 + 3)
        FAIL("index: block 0 counted %u reads after 3 fetches (had %u)", reads, reads0);
    /* The READs went on the control channel, several releases in one when
     * they came within its deferral (how many depends on the host's pace). */
    uint64_t msgs = ctl_sent(&r) - rctl0;
    if (msgs < 1 || msgs > 6)
        FAIL("index: %llu messages on the control channel for 6 fetches (want 1 to 6 READs)",
             (unsigned long long)msgs);
    /* A miss: keys the holder never had. */
    kvs_key_t none[2] = {key_of(9000), key_of(9001)};
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = h.addr};
    kvs_lease_h l = NULL;
    if (kvs_lookup(r.ctx, kvs_pool_layout_id(r.pool), none, 2, &lp, &l) != KVS_OK ||
        kvs_lease_hits(l) != 0)
        FAIL("index: a miss");
    kvs_lease_release(l);
    index_stats(&r, &ans, &asked);
    if (ans - ans0 != 7)
        FAIL("index: the miss asked the holder");
    /* Rewritten after the lookup, before the fetch: nothing held it. */
    l = NULL;
    if (lookup_keys(&r, h.addr, 0, 4, &l) != KVS_OK)
        FAIL("index: lookup before the rewrite");
    ask(&h, "rewrite 0", "index");
    uint32_t ids[4] = {0, 1, 2, 3};
    kvs_request_h q = NULL;
    if (kvs_fetch(l, r.pool, ids, 4, NULL, &q) != KVS_OK)
        FAIL("index: kvs_fetch");
    kvs_status_t st = kvs_request_wait(q, -1);
    kvs_request_free(q);
    kvs_lease_release(l);
    if (st != KVS_ERR_STALE)
        FAIL("index: a block rewritten after its lookup gave %s, expected KVS_ERR_STALE",
             kvs_status_string(st));
    /* Rewritten between the copy and the check. */
    int calls = 0;
    st = fetch_rewritten_mid_copy(&h, &r, &calls);
    if (calls != 1 || st != KVS_ERR_STALE)
        FAIL("index: a block rewritten mid-copy gave %s (%d copies), expected KVS_ERR_STALE",
             kvs_status_string(st), calls);
    if (fetch(&r, h.addr, 0, 4) != KVS_OK)
        FAIL("index: fetch after the rewrites");
    check(&r, 0, 1, 2);
    index_stats(&r, &ans, &asked);
    if (asked != ask0)
        FAIL("index: the rewrites made lookups ask the holder (republished in known memory)");
    /* New memory: the regions changed, so the holder is asked once. */
    ask(&h, "replace", "index");
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("index: fetch after replace");
    check(&r, 0, NBLOCKS, 3);
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("index: second fetch after replace");
    check(&r, 0, NBLOCKS, 3);
    uint64_t ans1 = ans;
    index_stats(&r, &ans, &asked);
    if (asked - ask0 != 1 || ans - ans1 != 1)
        FAIL("index: after new memory, %llu lookups asked the holder (want 1) and the index "
             "answered %llu (want 1)",
             (unsigned long long)(asked - ask0), (unsigned long long)(ans - ans1));
    /* A READ still deferred when the reader goes is sent first. The new
     * pool's block 0 was read twice since it was published (the lookup that
     * asked, with a lease, then one from the index): wait for both. */
    uint32_t before = holder_reads(&h, 0);
    for (int t = 0; t < 500 && before < 2; t++) {
        sleep_ms(2);
        before = holder_reads(&h, 0);
    }
    if (before != 2)
        FAIL("index: the new pool's block 0 counted %u reads after 2 fetches", before);
    if (fetch(&r, h.addr, 0, 4) != KVS_OK)
        FAIL("index: last fetch");
    reader_free(&r);
    reads = holder_reads(&h, 0);
    for (int t = 0; t < 500 && reads == before; t++) {
        sleep_ms(2);
        reads = holder_reads(&h, 0);
    }
    if (reads != before + 1)
        FAIL("index: a reader that released and went at once: %u reads, want %u", reads,
             before + 1);
    printf("ok: index: %llu lookups answered by the mapped index with no message to the holder "
           "(pool and arena, a miss), reads counted by READ (deferred, and sent by a reader "
           "that goes), rewrites after the lookup and mid-copy KVS_ERR_STALE, new memory asked "
           "the holder once\n",
           (unsigned long long)(ans - ans0));
    stop_holder(&h);
}

static uint64_t ucx_bytes(const reader_t *r)
{
    kvs_stats_t st = {0};
    kvs_stats_query(r->ctx, &st);
    return st.fetched_bytes;
}

/* Reader blocks 0..n-1 hold the TP 2 view of keys first.. at @version (key 0 at
 * @v0), the rest is untouched. */
static void x_check(const reader_t *r, uint32_t first, uint32_t n, uint64_t v0, uint64_t version,
                    const char *what)
{
    uint8_t *whole = malloc(BB);
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        if (i < n)
            fill(whole, first + i, first + i == 0 ? v0 : version);
        for (size_t o = 0; o < XBB; o++) {
            uint8_t want = i < n ? x_byte(whole, o) : (uint8_t)r->unset;
            if (r->mem[(size_t)i * XBB + o] != want)
                FAIL("xview: %s: block %u byte %zu is %02x, want %02x", what, i, o,
                     r->mem[(size_t)i * XBB + o], want);
        }
    }
    free(whole);
}

static reader_t reader_cuda_as(const kvs_layout_t *lp, size_t bb);

/* TP 1 -> TP 2 from the mapping into a host pool, or (@cuda) a CUDA pool:
 * there the staging is copied into the device only after the check. */
static void xview_case(bool cuda)
{
    child_t h = start_holder();
    kvs_layout_t l = layout_tp2();
    reader_t r = cuda ? reader_cuda_as(&l, XBB) : reader_tp2();
    /* Zero-copy blocks (the holder's kvs_mem_alloc pool), then the arena's. */
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("xview: zero-copy fetch: %s", kvs_status_string(st));
    x_check(&r, 0, NBLOCKS, 1, 1, "zero-copy");
    st = fetch(&r, h.addr, NBLOCKS, NBLOCKS);
    if (st != KVS_OK)
        FAIL("xview: arena fetch: %s", kvs_status_string(st));
    x_check(&r, NBLOCKS, NBLOCKS, 1, 1, "arena");
    if (shm_bytes(&r) != 2ull * NBLOCKS * XBB || ucx_bytes(&r) != 0)
        FAIL("xview: %llu bytes from mapped memory and %llu over UCX, want %u and 0",
             (unsigned long long)shm_bytes(&r), (unsigned long long)ucx_bytes(&r),
             2 * NBLOCKS * XBB);
    printf("ok: xview: TP 1 -> TP 2 head slices of %u zero-copy + %u arena blocks from mapped "
           "memory into %s memory, every byte\n",
           NBLOCKS, NBLOCKS, cuda ? "CUDA" : "host");
    /* A rewrite between the copy and the check: STALE, and nothing from staging lands
     * (every copy of this plan is short, so all of it goes through staging). */
    int calls = 0;
    st = fetch_rewritten_mid_copy(&h, &r, &calls);
    if (calls != 1)
        FAIL("xview: the fetch did not take the mapped path");
    if (st != KVS_ERR_STALE)
        FAIL("xview: a block rewritten mid-read gave %s, expected KVS_ERR_STALE",
             kvs_status_string(st));
    x_check(&r, 0, 0, 1, 1, "after KVS_ERR_STALE");
    uint64_t before = shm_bytes(&r);
    st = fetch(&r, h.addr, 0, 4);
    if (st != KVS_OK)
        FAIL("xview: fetch after the rewrite: %s", kvs_status_string(st));
    x_check(&r, 0, 4, 2, 1, "after the rewrite");
    if (shm_bytes(&r) != before + 4u * XBB || ucx_bytes(&r) != 0)
        FAIL("xview: the fetch after the rewrite did not come from mapped memory");
    printf("ok: xview: a rewrite between copy and check is KVS_ERR_STALE with nothing landed; "
           "then the new bytes (%s pool)\n",
           cuda ? "CUDA" : "host");
    reader_free(&r);
    stop_holder(&h);
}

static void s_xview(void)
{
    xview_case(false);
}

/* Across views into CUDA memory, then from a CUDA VMM holder into a CUDA
 * reader of the other K/V order (one layer: the same bytes, but planned):
 * whole planes are runs long enough to go straight from the mapping into
 * the device (cuMemcpyDtoDAsync), no staging; every byte right, a rewrite
 * between copy and check KVS_ERR_STALE then the new bytes. */
static void s_cudaxview(void)
{
    xview_case(true);
    child_t h = start_holder_of(HOLD_CUDA_FD);
    kvs_layout_t l = layout();
    l.kv_order = KVS_KV_ORDER_BLOCK_OUTER;
    reader_t r = reader_cuda_as(&l, BB);
    unsigned long dtod = fakecuda_calls("cuMemcpyDtoDAsync_v2");
    unsigned long htod = fakecuda_calls("cuMemcpyHtoDAsync_v2");
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("cudaxview: direct runs: %s", kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    if (shm_bytes(&r) != (uint64_t)NBLOCKS * BB || ucx_bytes(&r) != 0 ||
        fakecuda_calls("cuMemcpyDtoDAsync_v2") == dtod ||
        fakecuda_calls("cuMemcpyHtoDAsync_v2") != htod)
        FAIL("cudaxview: direct runs: %llu mapped bytes, %llu over UCX, %lu DtoD, %lu HtoD "
             "(want every byte mapped, straight into the device)",
             (unsigned long long)shm_bytes(&r), (unsigned long long)ucx_bytes(&r),
             fakecuda_calls("cuMemcpyDtoDAsync_v2") - dtod,
             fakecuda_calls("cuMemcpyHtoDAsync_v2") - htod);
    int calls = 0;
    st = fetch_rewritten_mid_copy(&h, &r, &calls);
    if (calls != 1 || st != KVS_ERR_STALE)
        FAIL("cudaxview: direct runs: a rewrite between copy and check gave %s",
             kvs_status_string(st));
    if ((st = fetch(&r, h.addr, 0, 4)) != KVS_OK)
        FAIL("cudaxview: direct runs after the rewrite: %s", kvs_status_string(st));
    check(&r, 0, 1, 2);
    printf("ok: cudaxview: K/V order across views from CUDA VMM into CUDA memory: whole planes "
           "straight into the device, every byte; KVS_ERR_STALE on a rewrite, then new bytes\n");
    reader_free(&r);
    stop_holder(&h);
}

static void s_otherhost(void)
{
    child_t h = start_holder();
    const char *env[][2] = {{"KVSHARE_TEST_BOOT_ID", "another-host"}, {"KVSHARE_SHM", "off"}};
    for (size_t k = 0; k < 2; k++) {
        setenv(env[k][0], env[k][1], 1);
        reader_t r = reader_new();
        kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
        if (st != KVS_OK)
            FAIL("otherhost: %s=%s: %s", env[k][0], env[k][1], kvs_status_string(st));
        check(&r, 0, NBLOCKS, 1);
        st = fetch(&r, h.addr, NBLOCKS, NBLOCKS);
        if (st != KVS_OK)
            FAIL("otherhost: arena blocks: %s", kvs_status_string(st));
        check(&r, NBLOCKS, NBLOCKS, 1);
        if (shm_bytes(&r) != 0 || maps_of(h.pid) != 0)
            FAIL("otherhost: %s=%s still mapped the holder's memory", env[k][0], env[k][1]);
        printf("ok: otherhost: %s=%s: every byte right over UCX, nothing mapped\n", env[k][0],
               env[k][1]);
        reader_free(&r);
        unsetenv(env[k][0]);
    }
    stop_holder(&h);
}

/* Reads the holder's answer on @fd: whether one came; *nfds_p: how many
 * descriptors came with it (each closed here). */
static bool raw_answer(int fd, int *nfds_p)
{
    uint8_t buf[512];
    union {
        char b[CMSG_SPACE(sizeof(int) * 64)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b)};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    *nfds_p = 0;
    for (struct cmsghdr *cm = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm != NULL;
         cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int j = 0; j < k; j++) {
            int got;
            memcpy(&got, CMSG_DATA(cm) + (size_t)j * sizeof(int), sizeof(int));
            close(got);
        }
        *nfds_p += k;
    }
    return n > 0;
}

/* One raw exchange on the holder's socket. @mode: 0 garbage, 1 a wrong MAC,
 * 2 a right MAC over a session the holder never made. Returns the number of
 * descriptors received (the holder must send none) and whether it answered. */
/* Connects to the holder's socket at @path and reads its greeting: the
 * socket, the greeting's nonce in @nonce. */
static int raw_dial(const char *path, const char *what, uint8_t *nonce)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        FAIL("%s: connect %s: %s", what, path, strerror(errno));
    uint8_t hello[8 + KVS_PROTO_NONCE_LEN];
    if (recv(fd, hello, sizeof(hello), 0) != (ssize_t)sizeof(hello))
        FAIL("%s: no greeting", what);
    memcpy(nonce, hello + 8, KVS_PROTO_NONCE_LEN);
    return fd;
}

/* The right MAC (the test's token) over @session and @nonce, into @mac. */
static void raw_mac(const uint8_t *session, const uint8_t *nonce, uint8_t *mac)
{
    uint8_t msg[11 + 16 + 32];
    memcpy(msg, "kvshare-shm", 11);
    memcpy(msg + 11, session, 16);
    memcpy(msg + 27, nonce, 32);
    unsigned int ml = 0;
    HMAC(EVP_sha256(), token, (int)strlen(token), msg, sizeof(msg), mac, &ml);
}

static int raw_try(const char *path, int mode, bool *answered)
{
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
    int fd = raw_dial(path, "unauth", nonce);
    uint8_t req[4 + 16 + 32 + 4 + 4 * 4] = {'K', 'V', 'S', 'M'};
    size_t len = sizeof(req);
    for (size_t i = 4; i < 20; i++)
        req[i] = (uint8_t)(0xA0 + i); /* a session nobody has */
    if (mode == 0) {
        memset(req, 0x41, sizeof(req));
    } else if (mode == 2) {
        raw_mac(req + 4, nonce, req + 20);
    } else {
        memset(req + 20, 0x55, 32);
    }
    req[52] = 4; /* four region ids: 0..3 */
    for (uint8_t i = 0; i < 4; i++)
        req[56 + 4 * i] = i;
    send(fd, req, len, MSG_NOSIGNAL);
    int nfds = 0;
    *answered = raw_answer(fd, &nfds);
    close(fd);
    return nfds;
}

/* After hostile callers: holder @h still serves a reader every byte over the
 * mapping; then it is stopped. */
static void still_serves(child_t *h, const char *scenario)
{
    reader_t r = reader_new();
    kvs_status_t st = fetch(&r, h->addr, 0, NBLOCKS);
    if (st != KVS_OK || shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
        FAIL("%s: the holder stopped serving mapped fetches (%s)", scenario, kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    printf("ok: %s: the holder still serves mapped fetches\n", scenario);
    reader_free(&r);
    stop_holder(h);
}

/* Whether WORK/@file says @what. */
static bool logged_in(const char *file, const char *what)
{
    char path[300], line[1024];
    snprintf(path, sizeof(path), "%s/%s", work, file);
    FILE *f = fopen(path, "r");
    bool found = false;
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, what) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

/* Whether the holder's log says @what. */
static bool logged(const char *what)
{
    return logged_in("holder.log", what);
}

static void s_unauth(void)
{
    child_t h = start_holder();
    char path[600] = "";
    DIR *d = opendir(work);
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".sock") != NULL)
            snprintf(path, sizeof(path), "%s/%s", work, e->d_name);
    if (d != NULL)
        closedir(d);
    if (path[0] == '\0')
        FAIL("unauth: the holder made no socket in %s", work);
    static const char *what[] = {"garbage", "a wrong MAC", "a right MAC, unknown session"};
    static const char *why[] = {"malformed request", "the session proof does not hold",
                                "no such session"};
    for (int mode = 0; mode < 3; mode++) {
        bool answered = false;
        int nfds = raw_try(path, mode, &answered);
        if (nfds != 0 || answered)
            FAIL("unauth: %s got %d descriptors (answered: %d)", what[mode], nfds, answered);
        for (int i = 0; i < 100 && !logged(why[mode]); i++)
            sleep_ms(10);
        if (!logged(why[mode]))
            FAIL("unauth: %s was not refused for '%s'", what[mode], why[mode]);
        printf("ok: unauth: %s: no answer, no descriptor\n", what[mode]);
    }
    still_serves(&h, "unauth");
}

/* Descriptors process @pid has open. */
static int open_fds(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

/* A pool client's offer (KVSP) that is not what it should be, sent with
 * @nfds pipe ends attached. @mode: 0 a wrong length, 1 a wrong MAC, 2 a
 * right MAC over a session the holder never made, 3 a region request (KVSM)
 * that carries descriptors, 4 more descriptors than the holder takes.
 * Returns whether the holder answered, and counts the descriptors it sent. */
static bool raw_offer(const char *path, int mode, int nfds, int *got_p)
{
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
    int fd = raw_dial(path, "offers", nonce);
    uint8_t session[16], mac[32];
    for (size_t i = 0; i < 16; i++)
        session[i] = (uint8_t)(0xB0 + i); /* a session nobody has */
    memset(mac, 0x55, sizeof(mac));
    if (mode == 2)
        raw_mac(session, nonce, mac);
    int pipes[80][2], np = 0, sent[80];
    for (; np < nfds; np++) {
        if (pipe(pipes[np]) != 0)
            FAIL("offers: pipe");
        sent[np] = pipes[np][0];
    }
    uint8_t req[KVS_SHM_OFFER_FIXED + KVS_SHM_OFFER_ENTRY_LEN * 64];
    kvs__shm_offer_t e[64];
    uint32_t n = nfds > 64 ? 64 : (uint32_t)nfds;
    for (uint32_t i = 0; i < n; i++)
        e[i] = (kvs__shm_offer_t){.id = i + 1,
                                  .kind = KVS_SHM_KIND_MEMFD,
                                  .base = 0x10000u * (i + 1),
                                  .len = 4096,
                                  .size = 4096};
    for (uint32_t i = 0; mode == 5 && i < n; i++) /* withdrawals, which bring no descriptor */
        e[i] = (kvs__shm_offer_t){.id = i + 1, .kind = KVS_SHM_KIND_WITHDRAW};
    kvs__shm_put_offer(req, session, mac, e, n);
    size_t len = KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n;
    if (mode == 0)
        len -= 3;
    if (mode == 3) { /* a region request for ids 0..3, as raw_try sends, plus descriptors */
        memcpy(req, "KVSM", 4);
        memset(req + 52, 0, 20);
        req[52] = 4;
        len = 4 + 16 + 32 + 4 + 16;
    }
    struct iovec iov = {.iov_base = req, .iov_len = len};
    union {
        char b[CMSG_SPACE(sizeof(int) * 80)];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = u.b,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), sent, sizeof(int) * (size_t)nfds);
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)len)
        FAIL("offers: sendmsg: %s", strerror(errno));
    for (int i = 0; i < np; i++) {
        close(pipes[i][0]);
        close(pipes[i][1]);
    }
    bool answered = raw_answer(fd, got_p);
    close(fd);
    return answered;
}

static void holder_socket(char *path, size_t len);

/* Offers of memory (a pool client's KVSP request) that prove nothing or
 * carry what they should not: refused with no answer, every descriptor
 * they brought closed in the holder, and the holder keeps serving. */
static void s_offers(void)
{
    child_t h = start_holder();
    char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
    holder_socket(path, sizeof(path));
    if (path[0] == '\0')
        FAIL("offers: the holder made no socket in %s", work);
    static const struct {
        int nfds;
        const char *what, *why;
    } cases[] = {{3, "an offer of the wrong length", "malformed offer"},
                 {2, "an offer with a wrong MAC", "the session proof does not hold"},
                 {2, "an offer with a right MAC, unknown session", "no such session"},
                 {2, "a region request carrying descriptors", "descriptors with a region request"},
                 {70, "an offer with 70 descriptors", "malformed request"},
                 {2, "withdrawals carrying descriptors",
                  "malformed offer (descriptors do not match the entries)"}};
    const int before = open_fds(h.pid);
    for (int mode = 0; mode < 6; mode++) {
        int got = 0;
        bool answered = raw_offer(path, mode, cases[mode].nfds, &got);
        if (answered || got != 0)
            FAIL("offers: %s was answered (%d descriptors)", cases[mode].what, got);
        for (int i = 0; i < 100 && !logged(cases[mode].why); i++)
            sleep_ms(10);
        if (!logged(cases[mode].why))
            FAIL("offers: %s was not refused for '%s'", cases[mode].what, cases[mode].why);
        printf("ok: offers: %s: refused ('%s'), no answer\n", cases[mode].what, cases[mode].why);
    }
    int after = open_fds(h.pid);
    for (int i = 0; i < 100 && after > before; i++) {
        sleep_ms(10);
        after = open_fds(h.pid);
    }
    if (after > before)
        FAIL("offers: the holder keeps %d more descriptors than before (%d -> %d)", after - before,
             before, after);
    printf("ok: offers: every descriptor the offers brought is closed in the holder (%d open)\n",
           after);
    still_serves(&h, "offers");
}

/* The holder's socket in WORK. */
static void holder_socket(char *path, size_t len)
{
    path[0] = '\0';
    DIR *d = opendir(work);
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".sock") != NULL)
            snprintf(path, len, "%s/%s", work, e->d_name);
    if (d != NULL)
        closedir(d);
    if (path[0] == '\0')
        FAIL("the holder made no socket in %s", work);
}

/* Messages the reader sent on its control channel (KVS_STATS_FIELD_CTL). */
static uint64_t ctl_sent(const reader_t *r)
{
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_CTL};
    kvs_stats_query(r->ctx, &st);
    return st.ctl_messages;
}

/* Our socket connected to the holder's at @path: the control channel the
 * library opened (the handover's sockets are closed after each request). */
static int ctl_fd_to(const char *path)
{
    int found = -1;
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_un sa;
        socklen_t sl = sizeof(sa);
        int type = 0;
        socklen_t tl = sizeof(type);
        if (getpeername(fd, (struct sockaddr *)&sa, &sl) != 0 || sa.sun_family != AF_UNIX ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_SEQPACKET)
            continue;
        if (strncmp(sa.sun_path, path, sizeof(sa.sun_path)) == 0) {
            if (found >= 0)
                FAIL("ctl: two sockets connected to %s", path);
            found = fd;
        }
    }
    return found;
}

/* A raw control-channel request on the holder's socket: @mode 0 a
 * request of the wrong length, 1 a wrong MAC, 2 a right MAC over a session
 * the holder never made. Returns whether the holder answered with status 0. */
static bool raw_ctl(const char *path, int mode, bool *answered)
{
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
    int fd = raw_dial(path, "ctl", nonce);
    uint8_t req[KVS_SHM_CTL_LEN + 4] = {'K', 'V', 'S', 'C'};
    for (size_t i = 4; i < 20; i++)
        req[i] = (uint8_t)(0xB0 + i); /* a session nobody has */
    if (mode == 1)
        memset(req + 20, 0x55, 32);
    else
        raw_mac(req + 4, nonce, req + 20);
    send(fd, req, mode == 0 ? sizeof(req) : KVS_SHM_CTL_LEN, MSG_NOSIGNAL);
    uint8_t rep[16];
    ssize_t n = recv(fd, rep, sizeof(rep), 0);
    *answered = n > 0;
    bool ok = n == 8 && memcmp(rep, "KVSC", 4) == 0 && rep[4] == 0 && rep[5] == 0 && rep[6] == 0 &&
              rep[7] == 0;
    uint8_t more;
    if (n > 0 && recv(fd, &more, 1, 0) != 0)
        FAIL("ctl: the holder kept a refused caller's socket open");
    close(fd);
    return ok;
}

/* Lookups and releases between same-host peers go over the control
 * channel; one that cannot prove a session gets none; a peer that sends
 * garbage or an oversized message on its channel loses its connection, and
 * the holder serves every other reader on. */
static void s_ctl(void)
{
    child_t h = start_holder();
    char path[600];
    holder_socket(path, sizeof(path));
    setenv("KVSHARE_SHM_INDEX", "off", 1); /* every lookup asks the holder (see s_index) */
    reader_t r = reader_new();
    unsetenv("KVSHARE_SHM_INDEX");
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("ctl: fetch: %s", kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    uint64_t sent = ctl_sent(&r);
    if (sent < 2) /* the lookup and its release */
        FAIL("ctl: %llu messages on the control channel", (unsigned long long)sent);
    st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK || ctl_sent(&r) < sent + 2)
        FAIL("ctl: a second fetch: %s, %llu messages on the channel (had %llu)",
             kvs_status_string(st), (unsigned long long)ctl_sent(&r), (unsigned long long)sent);
    check(&r, 0, NBLOCKS, 1);
    printf("ok: ctl: %llu lookups and releases on the control channel\n",
           (unsigned long long)ctl_sent(&r));
    reader_free(&r); /* its channel closes: the one found below is the attacker's */

    static const char *what[] = {"a request of the wrong length", "a wrong MAC",
                                 "a right MAC, unknown session"};
    static const char *why[] = {"malformed control-channel request",
                                "the session proof does not hold", NULL};
    for (int mode = 0; mode < 3; mode++) {
        bool answered = false;
        if (raw_ctl(path, mode, &answered))
            FAIL("ctl: %s got a control channel", what[mode]);
        if (why[mode] != NULL) {
            for (int i = 0; i < 100 && !logged(why[mode]); i++)
                sleep_ms(10);
            if (answered || !logged(why[mode]))
                FAIL("ctl: %s was not refused for '%s'", what[mode], why[mode]);
        } else if (!answered) {
            FAIL("ctl: %s got no answer", what[mode]);
        }
        printf("ok: ctl: %s: no channel\n", what[mode]);
    }

    /* Garbage, then an oversized record, each on an established channel. */
    static const char *bad[] = {"malformed message on the control channel",
                                "message on the control channel (at most"};
    for (int k = 0; k < 2; k++) {
        reader_t a = reader_new();
        if ((st = fetch(&a, h.addr, 0, NBLOCKS)) != KVS_OK)
            FAIL("ctl: attacker's fetch: %s", kvs_status_string(st));
        int fd = ctl_fd_to(path);
        if (fd < 0)
            FAIL("ctl: no control channel to %s", path);
        size_t len = k == 0 ? 100 : 70000;
        uint8_t *junk = malloc(len);
        memset(junk, 0x5A, len);
        if (k == 1) /* a valid header's start would not matter: it is too long */
            memcpy(junk, "KVSH", 4);
        if (send(fd, junk, len, MSG_NOSIGNAL) != (ssize_t)len)
            FAIL("ctl: send %zu bytes: %s", len, strerror(errno));
        free(junk);
        for (int i = 0; i < 200 && !logged(bad[k]); i++)
            sleep_ms(10);
        if (!logged(bad[k]))
            FAIL("ctl: the holder did not refuse it for '%s'", bad[k]);
        printf("ok: ctl: %s: the connection failed\n", k == 0 ? "garbage" : "70000 bytes");
        /* The same reader's next fetch reconnects. */
        for (int i = 0; i < 100 && (st = fetch(&a, h.addr, 0, NBLOCKS)) != KVS_OK; i++)
            sleep_ms(10);
        if (st != KVS_OK)
            FAIL("ctl: after its channel failed, the reader could not fetch again: %s",
                 kvs_status_string(st));
        check(&a, 0, NBLOCKS, 1);
        reader_free(&a);
    }
    still_serves(&h, "ctl");
}

/* The paused lookup: kvs__peer_test_reply stops the one-key lookup (and
 * only it) once its reply is here, before its table is applied, until the
 * scenario lets it go. */
static sem_t order_paused, order_go;

static void order_hook(size_t nkeys)
{
    if (nkeys != 1)
        return;
    sem_post(&order_paused);
    while (sem_wait(&order_go) != 0)
        ;
}

typedef struct order_arg {
    reader_t *r;
    const char *addr;
    kvs_status_t st;
} order_arg_t;

/* One key of the holder's first pool: its reply carries the holder's new
 * (large) region table over UCX, and is held at the hook. */
static void *order_lookup(void *arg)
{
    order_arg_t *a = arg;
    kvs_lease_h lease = NULL;
    a->st = lookup_keys(a->r, a->addr, 0, 1, &lease);
    kvs_lease_release(lease);
    return NULL;
}

/* Fetches the NBLOCKS keys of "fresh @v" and checks their bytes. */
static void order_fetch(reader_t *r, const char *addr, uint32_t v, const char *when)
{
    kvs_status_t st = fetch(r, addr, FRESH_KEY(v), NBLOCKS);
    if (st != KVS_OK)
        FAIL("order: round %u: fetch of the new pool %s: %s", v, when, kvs_status_string(st));
    for (uint32_t i = 0; i < NBLOCKS; i++)
        if (!same(r->mem + (size_t)i * BB, FRESH_KEY(v) + i, v))
            FAIL("order: round %u: block of key %u has wrong bytes (%s)", v, FRESH_KEY(v) + i,
                 when);
}

/* Replies on two carriers. The holder's region table no longer fits a
 * control-channel message, so a reply that carries a new one takes UCX,
 * and a later reply on the channel can be read first. Each round the
 * holder makes a pool in its heap (a new region, which the reader reads
 * with UCX GETs: their rkeys come from the table), and:
 *   1. a thread's lookup gets the reply with the new table, and is held
 *      (test hook) before it applies it;
 *   2. this thread looks up and fetches the new pool's blocks: its reply
 *      must bring the table itself (else the GETs name a region the reader
 *      does not know: KVS_ERR_PROTOCOL);
 *   3. the holder replaces that pool with another (a newer table) and this
 *      thread fetches those blocks;
 *   4. the held lookup goes on: its older table must not be applied over
 *      the newer (it would forget the newest pool's region), so this
 *      thread's fetch of the newest blocks again must succeed.
 * Every byte right each time. */
static void s_order(void)
{
    if (sem_init(&order_paused, 0, 0) != 0 || sem_init(&order_go, 0, 0) != 0)
        FAIL("order: sem_init");
    child_t h = start_holder();
    ask(&h, "grow", "order");
    reader_t r = reader_new();
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("order: first fetch: %s", kvs_status_string(st));
    uint64_t ctl0 = holder_ctl(&h);
    kvs__peer_test_reply = order_hook;
    const uint32_t rounds = 5;
    char cmd[32];
    for (uint32_t v = 1; v <= 2 * rounds; v += 2) {
        snprintf(cmd, sizeof(cmd), "fresh %u", v);
        ask(&h, cmd, "order");
        order_arg_t a = {.r = &r, .addr = h.addr};
        pthread_t th;
        if (pthread_create(&th, NULL, order_lookup, &a) != 0)
            FAIL("order: pthread_create");
        while (sem_wait(&order_paused) != 0)
            ;
        order_fetch(&r, h.addr, v, "while the reply with its table waits");
        snprintf(cmd, sizeof(cmd), "fresh %u", v + 1);
        ask(&h, cmd, "order");
        order_fetch(&r, h.addr, v + 1, "after the holder replaced it");
        sem_post(&order_go);
        pthread_join(th, NULL);
        if (a.st != KVS_OK)
            FAIL("order: round %u: the held lookup: %s", v, kvs_status_string(a.st));
        order_fetch(&r, h.addr, v + 1, "after the held lookup went on");
    }
    kvs__peer_test_reply = NULL;
    /* The small replies took the channel, the tables UCX. */
    uint64_t ctl = holder_ctl(&h) - ctl0;
    if (ctl == 0)
        FAIL("order: no reply on the control channel");
    printf("ok: order: %u rounds of replies overtaking a new region table (%llu replies on the "
           "control channel), every fetch right\n",
           rounds, (unsigned long long)ctl);
    reader_free(&r);
    stop_holder(&h);
    sem_destroy(&order_paused);
    sem_destroy(&order_go);
}

/* A caller that connects and then stops: @what 0 says nothing, 1 reads the
 * greeting and says nothing, 2 reads it and sends a request cut short. */
static int stalled_caller(const char *path, int what)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        FAIL("silent: connect %s: %s", path, strerror(errno));
    if (what >= 1) {
        uint8_t hello[8 + KVS_PROTO_NONCE_LEN];
        if (recv(fd, hello, sizeof(hello), 0) != (ssize_t)sizeof(hello))
            FAIL("silent: no greeting for a stalled caller");
    }
    if (what == 2) {
        uint8_t req[20] = {'K', 'V', 'S', 'M'};
        send(fd, req, sizeof(req), MSG_NOSIGNAL);
    }
    return fd;
}

/* Callers that stop mid-exchange, held open, must not delay another's
 * handover: a reader started while they hang still gets the mapped path
 * (the reader waits 1 s for its greeting; a holder serving one caller at a
 * time would still be waiting out the silent ones). Then a flood of more
 * silent callers than the holder keeps at once: the oldest are pushed out,
 * and a reader still gets the mapped path. */
static void s_silent(void)
{
    child_t h = start_holder();
    char path[600];
    holder_socket(path, sizeof(path));
    int held[100];
    int nheld = 0;
    /* A request cut short, one silent after its greeting, then silent ones
     * (those last queue up before the reader on a one-at-a-time holder). */
    held[nheld++] = stalled_caller(path, 2);
    held[nheld++] = stalled_caller(path, 1);
    for (int i = 0; i < 8; i++)
        held[nheld++] = stalled_caller(path, 0);
    reader_t r = reader_new();
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("silent: fetch beside silent callers: %s", kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    if (shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
        FAIL("silent: with %d stalled callers held open the reader got %llu bytes through "
             "mapped memory, expected %u (its handover was delayed: it fell back to UCX)",
             nheld, (unsigned long long)shm_bytes(&r), NBLOCKS * BB);
    printf("ok: silent: %d stalled callers held open; a reader's handover still mapped\n", nheld);
    reader_free(&r);
    while (nheld < 100)
        held[nheld++] = stalled_caller(path, 0);
    reader_t r2 = reader_new();
    st = fetch(&r2, h.addr, NBLOCKS, NBLOCKS);
    if (st != KVS_OK || shm_bytes(&r2) != (uint64_t)NBLOCKS * BB)
        FAIL("silent: with %d silent callers the reader got %llu mapped bytes (%s)", nheld,
             (unsigned long long)shm_bytes(&r2), kvs_status_string(st));
    check(&r2, NBLOCKS, NBLOCKS, 1);
    for (int i = 0; i < 100 && !logged("too many callers at once"); i++)
        sleep_ms(10);
    if (!logged("too many callers at once"))
        FAIL("silent: a flood of %d callers pushed none out", nheld);
    printf("ok: silent: %d silent callers: the oldest pushed out, a reader still mapped\n", nheld);
    reader_free(&r2);
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    stop_holder(&h);
}

/* --- a pool node (a child process), for puts --------------------------- */
static void pool_node(int in, int out)
{
    child_log("node.log", "debug");
    char err[512] = "";
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                         KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_LISTEN |
                                         KVS_CTX_FIELD_POOL_NODE,
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .transport = "ucx",
                           .capacity_bytes = 64u << 20,
                           .listen = "127.0.0.1:0",
                           .pool_node = 1};
    kvs_ctx_h ctx = NULL;
    if (kvs_ctx_create(&cp, &ctx) != KVS_OK)
        FAIL("node: kvs_ctx_create: %s", err);
    char addr[300], line[128];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
    dprintf(out, "ready %s\n", addr);
    FILE *f = fdopen(in, "r");
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strcmp(line, "helped\n") == 0) { /* the bytes its copy helpers copied */
            kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_COPY};
            kvs_stats_query(ctx, &ks);
            dprintf(out, "helped %llu\n", (unsigned long long)ks.shm_helper_bytes);
        }
    }
    kvs_ctx_destroy(ctx);
    exit(0);
}

static child_t start_node(void)
{
    return start_child(pool_node, "pool node");
}

/* The warning and error lines of WORK/@file, joined (for failure messages). */
static const char *warnings_in(const char *file)
{
    static char all[2048];
    char path[300], line[1024];
    size_t used = 0;
    snprintf(path, sizeof(path), "%s/%s", work, file);
    snprintf(all, sizeof(all), "(no warning in %s)", file);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL && used < sizeof(all) - 1)
        if (strstr(line, " warn: ") != NULL || strstr(line, " error: ") != NULL) {
            int k = snprintf(all + used, sizeof(all) - used, "%s", line);
            used += k > 0 ? (size_t)k : 0;
        }
    if (f != NULL)
        fclose(f);
    return all;
}

/* Offloads keys @first.. from a CUDA pool (a fake VMM allocation, exportable
 * or not) to the node at @addr: kvs_put_ex's status, or the request's. */
static kvs_status_t cuda_put(const char *addr, bool posix_fd, uint32_t first, uint64_t *pulled_p)
{
    setenv("KVSHARE_POOL", addr, 1);
    kvs_ctx_h ctx = make_ctx(NULL);
    unsetenv("KVSHARE_POOL");
    vmm_t v;
    kvs_pool_h pool = make_cuda_pool(ctx, &v, posix_fd);
    kvs_key_t keys[NBLOCKS];
    uint32_t ids[NBLOCKS];
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        keys[i] = key_of(first + i);
        ids[i] = i;
        put_block(NULL, &v, i, first + i, 1);
    }
    kvs_request_h req = NULL;
    kvs_status_t st = kvs_put_ex(pool, keys, ids, NBLOCKS, NULL, &req);
    if (st == KVS_OK) {
        st = kvs_request_wait(req, -1);
        kvs_request_free(req);
    }
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_PUTS};
    kvs_stats_query(ctx, &ks);
    *pulled_p = ks.put_pulled_blocks;
    kvs_pool_destroy(pool);
    kvs_ctx_destroy(ctx);
    free_vmm(&v);
    return st;
}

/* An engine whose KV is on the GPU offloads to a pool node on its host: the
 * node imports the engine's exportable VMM allocation (read-only) and copies
 * the put out of it (cuMemcpyDtoH); a reader then fetches every byte from
 * the node. An allocation that cannot be exported, and KVSHARE_SHM=off, are
 * refused with KVS_ERR_UNSUPPORTED (the transport takes no CUDA memory, and
 * the node must never try to read device memory another way); the node
 * keeps serving. */
static void s_cudaput(void)
{
    child_t n = start_node();
    uint64_t pulled = 0;
    kvs_status_t st = cuda_put(n.addr, true, 3 * NBLOCKS, &pulled);
    if (st != KVS_OK || pulled != NBLOCKS)
        FAIL("cudaput: put from an exportable CUDA pool: %s, %llu blocks stored (node: %s)",
             kvs_status_string(st), (unsigned long long)pulled, warnings_in("node.log"));
    if (!logged_in("node.log", "its puts are copied from its memory mapped here (CUDA)"))
        FAIL("cudaput: the node did not copy the put from the imported allocation (%s/node.log)",
             work);
    reader_t r = reader_new();
    if ((st = fetch(&r, n.addr, 3 * NBLOCKS, NBLOCKS)) != KVS_OK)
        FAIL("cudaput: fetch back: %s", kvs_status_string(st));
    check(&r, 3 * NBLOCKS, NBLOCKS, 1);
    printf("ok: cudaput: %u CUDA blocks offloaded through the node's import of the allocation, "
           "fetched back byte for byte\n",
           NBLOCKS);
    st = cuda_put(n.addr, false, 4 * NBLOCKS, &pulled);
    if (st != KVS_ERR_UNSUPPORTED || pulled != 0)
        FAIL("cudaput: a put from a CUDA allocation that cannot be exported: %s, %llu stored "
             "(expected UNSUPPORTED)",
             kvs_status_string(st), (unsigned long long)pulled);
    setenv("KVSHARE_SHM", "off", 1);
    st = cuda_put(n.addr, true, 4 * NBLOCKS, &pulled);
    unsetenv("KVSHARE_SHM");
    if (st != KVS_ERR_UNSUPPORTED || pulled != 0)
        FAIL("cudaput: a CUDA put with KVSHARE_SHM=off: %s (expected UNSUPPORTED)",
             kvs_status_string(st));
    if ((st = fetch(&r, n.addr, 3 * NBLOCKS, NBLOCKS)) != KVS_OK)
        FAIL("cudaput: the node stopped serving: %s", kvs_status_string(st));
    check(&r, 3 * NBLOCKS, NBLOCKS, 1);
    printf("ok: cudaput: a non-exportable allocation and KVSHARE_SHM=off are refused "
           "(UNSUPPORTED); the node keeps serving\n");
    reader_free(&r);
    stop_holder(&n);
}

/* A put of keys @first.. from @pool (blocks 0..N-1, version 1 written):
 * KVS_OK only when the node copied all N from its mapping of our memory. */
static kvs_status_t put_mapped(kvs_ctx_h ctx, kvs_pool_h pool, uint32_t first)
{
    kvs_key_t keys[NBLOCKS];
    uint32_t ids[NBLOCKS];
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        keys[i] = key_of(first + i);
        ids[i] = i;
    }
    kvs_stats_t before = {.field_mask = KVS_STATS_FIELD_PUTS}, after = before;
    kvs_stats_query(ctx, &before);
    kvs_request_h req = NULL;
    kvs_status_t st = kvs_put_ex(pool, keys, ids, NBLOCKS, NULL, &req);
    if (st == KVS_OK) {
        st = kvs_request_wait(req, -1);
        kvs_request_free(req);
    }
    kvs_stats_query(ctx, &after);
    if (st == KVS_OK && after.put_pulled_blocks - before.put_pulled_blocks != NBLOCKS)
        st = KVS_ERR_TRANSPORT;
    return st;
}

static void withdraw_case(int kind, const char *what)
{
    child_t n = start_node();
    char needle[64];
    if (kind == HOLD_HOST)
        snprintf(needle, sizeof(needle), "memfd:kvshare:%d:mem", (int)getpid());
    else
        snprintf(needle, sizeof(needle), "memfd:fakecuda");
    setenv("KVSHARE_POOL", n.addr, 1);
    kvs_ctx_h ctx = make_ctx(NULL);
    unsetenv("KVSHARE_POOL");
    const int base = maps_in(n.pid, needle);
    for (uint32_t round = 0; round < 2; round++) {
        uint8_t *mem = NULL;
        vmm_t v, *vp = kind == HOLD_HOST ? NULL : &v;
        kvs_pool_h pool = vp == NULL ? make_pool(ctx, &mem) : make_cuda_pool(ctx, vp, true);
        const uint32_t first = 5 * NBLOCKS + round * NBLOCKS;
        for (uint32_t i = 0; i < NBLOCKS; i++)
            put_block(mem, vp, i, first + i, 1);
        kvs_status_t st = put_mapped(ctx, pool, first);
        if (st != KVS_OK)
            FAIL("withdraw (%s): put %u: %s (node: %s)", what, round, kvs_status_string(st),
                 warnings_in("node.log"));
        const int mapped = maps_in(n.pid, needle);
        if (mapped <= base)
            FAIL("withdraw (%s): the node holds no mapping of our memory after put %u", what,
                 round);
        kvs_pool_destroy(pool);
        if (vp == NULL)
            kvs_mem_free(ctx, mem);
        else
            free_vmm(vp);
        const int left = maps_in(n.pid, needle);
        if (left != base)
            FAIL("withdraw (%s): the node keeps %d mapping(s) of memory we freed (%d before the "
                 "put, %d after)",
                 what, left - base, base, mapped);
        reader_t r = reader_new();
        if ((st = fetch(&r, n.addr, first, NBLOCKS)) != KVS_OK)
            FAIL("withdraw (%s): fetch back: %s", what, kvs_status_string(st));
        check(&r, first, NBLOCKS, 1);
        reader_free(&r);
    }
    printf("ok: withdraw (%s): twice, a put copied from the node's mapping of our memory, the "
           "mapping gone once we freed it with the connection open, every byte fetched back\n",
           what);
    if (kind == HOLD_HOST) {
        /* A node that does not answer (stopped): the free still returns (the
         * withdrawal gives up at its socket timeouts, logged), later frees do
         * not wait on it again, and the node serves once it runs again. */
        uint8_t *m1 = NULL, *m2 = NULL;
        kvs_pool_h p1 = make_pool(ctx, &m1), p2 = make_pool(ctx, &m2);
        for (uint32_t i = 0; i < NBLOCKS; i++) {
            put_block(m1, NULL, i, 8 * NBLOCKS + i, 1);
            put_block(m2, NULL, i, 9 * NBLOCKS + i, 1);
        }
        if (put_mapped(ctx, p1, 8 * NBLOCKS) != KVS_OK ||
            put_mapped(ctx, p2, 9 * NBLOCKS) != KVS_OK)
            FAIL("withdraw (%s): the puts before the node stops", what);
        kill(n.pid, SIGSTOP);
        kvs_pool_destroy(p1);
        kvs_mem_free(ctx, m1);
        kvs_pool_destroy(p2);
        kvs_mem_free(ctx, m2);
        kill(n.pid, SIGCONT);
        reader_t r = reader_new();
        kvs_status_t st = fetch(&r, n.addr, 9 * NBLOCKS, NBLOCKS);
        if (st != KVS_OK)
            FAIL("withdraw (%s): the node after it ran again: %s", what, kvs_status_string(st));
        check(&r, 9 * NBLOCKS, NBLOCKS, 1);
        reader_free(&r);
        printf("ok: withdraw (%s): freeing memory a stopped node mapped returns; the node serves "
               "once it runs again\n",
               what);
    }
    kvs_ctx_destroy(ctx);
    stop_holder(&n);
}

static void s_withdraw(void)
{
    withdraw_case(HOLD_HOST, "kvs_mem_alloc memory");
    withdraw_case(HOLD_CUDA_FD, "CUDA VMM allocation");
}

/* Sockets in WORK. */
static int sockets(void)
{
    int n = 0;
    DIR *d = opendir(work);
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += strstr(e->d_name, ".sock") != NULL;
    if (d != NULL)
        closedir(d);
    return n;
}

static int cuda_maps(int *writable);

static reader_t *forget_reader;
static child_t *forget_holder;
static int forget_calls;

/* Between a fetch's copy and its check: the holder replaces its pool, and a
 * lookup (this thread) learns the new table while the copy's mapping is
 * still being read. */
static void replace_mid_copy(void)
{
    if (forget_calls++ > 0)
        return;
    ask(forget_holder, "replace", "forget");
    kvs_lease_h lease = NULL;
    if (lookup_keys(forget_reader, forget_holder->addr, 0, 1, &lease) != KVS_OK)
        FAIL("forget: the lookup during the copy");
    kvs_lease_release(lease);
}

/* Mappings this reader holds of a holder of @kind's KV memory. */
static int kv_maps(int kind, pid_t holder)
{
    int writable = 0;
    return kind == HOLD_HOST ? maps_of(holder) : cuda_maps(&writable);
}

static void forget_case(int kind, const char *what)
{
    /* The replacement during a copy waits in the holder's kvs_pool_destroy
     * for the reader's lease, which that copy holds until the holder's
     * answer: it ends when the lease expires (30 s by default). */
    setenv("KVSHARE_LEASE_TIMEOUT_MS", "1500", 1);
    child_t h = start_holder_of(kind);
    unsetenv("KVSHARE_LEASE_TIMEOUT_MS");
    reader_t r = reader_new();
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("forget (%s): the first fetch", what);
    check(&r, 0, NBLOCKS, 1);
    int before = kv_maps(kind, h.pid);
    unsigned long released = fakecuda_calls("cuMemRelease");
    if (before == 0 || shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
        FAIL("forget (%s): the first fetch did not map the holder's memory", what);
    for (int round = 1; round <= 3; round++) {
        ask(&h, "replace", "forget");
        kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
        if (st != KVS_OK)
            FAIL("forget (%s): fetch after replacement %d: %s", what, round, kvs_status_string(st));
        check(&r, 0, NBLOCKS, 3);
        if (shm_bytes(&r) != (uint64_t)(round + 1) * NBLOCKS * BB)
            FAIL("forget (%s): the new pool's blocks did not come through mapped memory", what);
        int now = kv_maps(kind, h.pid);
        if (now != before)
            FAIL("forget (%s): %d mappings of the holder's KV memory after %d replacements, "
                 "%d before: the freed memory stays mapped",
                 what, now, round, before);
    }
    if (kind != HOLD_HOST && fakecuda_calls("cuMemRelease") != released + 3)
        FAIL("forget (%s): %lu imported allocations released, expected 3", what,
             fakecuda_calls("cuMemRelease") - released);
    printf("ok: forget (%s): the pool replaced 3 times, every byte right through %d mapping(s) "
           "each time; the old memory unmapped\n",
           what, before);
    /* The table changes while a copy reads the old mapping: it is unmapped
     * only after that copy (an unmap under it would crash the check). */
    forget_reader = &r;
    forget_holder = &h;
    forget_calls = 0;
    kvs__shm_test_mid_copy = replace_mid_copy;
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    kvs__shm_test_mid_copy = NULL;
    if (forget_calls == 0 || (st != KVS_OK && st != KVS_ERR_STALE))
        FAIL("forget (%s): the fetch across the replacement: %s", what, kvs_status_string(st));
    if (st == KVS_OK)
        check(&r, 0, NBLOCKS, 3);
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("forget (%s): the fetch after", what);
    check(&r, 0, NBLOCKS, 3);
    if (kv_maps(kind, h.pid) != before)
        FAIL("forget (%s): %d mappings after a replacement during a copy, %d before", what,
             kv_maps(kind, h.pid), before);
    printf("ok: forget (%s): replaced during a copy: the copy ended %s, the old mapping went "
           "after it\n",
           what, kvs_status_string(st));
    reader_free(&r);
    stop_holder(&h);
}

static void s_forget(void)
{
    forget_case(HOLD_HOST, "kvs_mem_alloc memory");
    forget_case(HOLD_CUDA_FD, "CUDA VMM allocation");
}

static void s_churn(void)
{
    child_t h = start_holder();
    reader_t r = reader_new();
    setenv("KVSHARE_SHM", "off", 1);
    reader_t u = reader_new();
    unsetenv("KVSHARE_SHM");
    const int rounds = (int)KVS_PROTO_MAX_REGIONS + 100;
    for (int i = 0; i < rounds; i++) {
        ask(&h, "churn", "churn");
        uint32_t n = i % 512 == 0 || i == rounds - 1 ? NBLOCKS : 1;
        kvs_status_t st = fetch(&r, h.addr, 0, n), su = fetch(&u, h.addr, 0, n);
        if (st != KVS_OK || su != KVS_OK)
            FAIL("churn: after %d new regions of the holder: mapped %s, UCX %s", i + 1,
                 kvs_status_string(st), kvs_status_string(su));
        check(&r, 0, n, 1);
        check(&u, 0, n, 1);
    }
    if (shm_bytes(&r) == 0 || shm_bytes(&u) != 0)
        FAIL("churn: the readers did not take the paths asked (mapped %llu, UCX %llu bytes)",
             (unsigned long long)shm_bytes(&r), (unsigned long long)shm_bytes(&u));
    printf("ok: churn: the holder replaced a region %d times; both readers looked up and "
           "fetched after each, every byte right\n",
           rounds);
    reader_free(&u);
    reader_free(&r);
    stop_holder(&h);

    /* The node's table of a client's regions: each put from a new pool. */
    child_t n = start_node();
    setenv("KVSHARE_POOL", n.addr, 1);
    setenv("KVSHARE_SHM", "off", 1);
    kvs_ctx_h ctx = make_ctx(NULL);
    unsetenv("KVSHARE_SHM");
    unsetenv("KVSHARE_POOL");
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_PUTS};
    for (int i = 0; i < rounds; i++) {
        uint8_t *mem = NULL;
        kvs_pool_h pool = make_pool(ctx, &mem);
        uint32_t key = 10 * NBLOCKS + (uint32_t)i, id = 0; /* a new key each time */
        kvs_key_t k = key_of(key);
        put_block(mem, NULL, 0, key, 1);
        kvs_request_h req = NULL;
        kvs_status_t st = kvs_put_ex(pool, &k, &id, 1, NULL, &req);
        if (st == KVS_OK) {
            st = kvs_request_wait(req, -1);
            kvs_request_free(req);
        }
        kvs_pool_destroy(pool);
        kvs_mem_free(ctx, mem);
        kvs_stats_query(ctx, &ks);
        if (st != KVS_OK || ks.put_pulled_blocks != (uint64_t)i + 1)
            FAIL("churn: put %d, from a new pool each time: %s, %llu pulled (node: %s)", i + 1,
                 kvs_status_string(st), (unsigned long long)ks.put_pulled_blocks,
                 warnings_in("node.log"));
    }
    /* The node's arena holds 1024 of them: the newest are there. */
    reader_t b = reader_new();
    const uint32_t newest = 10 * NBLOCKS + (uint32_t)rounds - NBLOCKS;
    if (fetch(&b, n.addr, newest, NBLOCKS) != KVS_OK)
        FAIL("churn: fetch back from the node");
    check(&b, newest, NBLOCKS, 1);
    printf("ok: churn: %d puts, each from a new pool, all read by the node; the newest %u "
           "fetched back\n",
           rounds, NBLOCKS);
    reader_free(&b);
    kvs_ctx_destroy(ctx);
    stop_holder(&n);
}

/* Lookup of keys first..first+n-1 at @addr, every one a hit. */
static kvs_lease_h lookup_all(reader_t *r, const char *addr, uint32_t first, uint32_t n)
{
    kvs_lease_h lease = NULL;
    if (lookup_keys(r, addr, first, n, &lease) != KVS_OK)
        FAIL("lookup of keys %u..%u", first, first + n - 1);
    return lease;
}

/* The lease's hits into blocks 0..n-1. */
static kvs_request_h fetch_start(reader_t *r, kvs_lease_h lease, uint32_t n)
{
    uint32_t ids[NBLOCKS];
    for (uint32_t i = 0; i < n; i++)
        ids[i] = i;
    kvs_request_h req = NULL;
    if (kvs_fetch(lease, r->pool, ids, n, NULL, &req) != KVS_OK)
        FAIL("kvs_fetch");
    return req;
}

static bool all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

static void *cont_later(void *arg)
{
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    kill(*(pid_t *)arg, SIGCONT);
    return NULL;
}

static uint64_t helper_bytes(const reader_t *r);

static void s_defer(void)
{
    child_t h = start_holder();
    /* Lookups that wait for the holder's answer: the index would answer
     * them at once (s_index). */
    setenv("KVSHARE_SHM_INDEX", "off", 1);
    reader_t r = reader_new();
    unsetenv("KVSHARE_SHM_INDEX");
    const uint32_t half = NBLOCKS / 2;
    kvs_lease_h l1 = lookup_all(&r, h.addr, 0, half);
    uint64_t before = shm_bytes(&r), helped = helper_bytes(&r);
    kvs_request_h f1 = fetch_start(&r, l1, half);
    if (shm_bytes(&r) != before)
        FAIL("defer: kvs_fetch copied in the call");
    /* The next lookup's reply cannot come for 200 ms: its wait copies f1. */
    kill(h.pid, SIGSTOP);
    int ws = 0; /* stopped for sure: it could answer between kill() and its stop */
    if (waitpid(h.pid, &ws, WUNTRACED) != h.pid || !WIFSTOPPED(ws))
        FAIL("defer: the holder did not stop");
    pthread_t th;
    if (pthread_create(&th, NULL, cont_later, &h.pid) != 0)
        FAIL("pthread_create");
    kvs_lease_h l2 = lookup_all(&r, h.addr, half, half);
    pthread_join(th, NULL);
    if (shm_bytes(&r) != before + (uint64_t)half * BB)
        FAIL("defer: the lookup's wait did not copy the fetch before it (%llu bytes, %llu "
             "expected)",
             (unsigned long long)(shm_bytes(&r) - before), (unsigned long long)half * BB);
    kvs_status_t st = kvs_request_test(f1);
    if (st != KVS_OK)
        FAIL("defer: the fetch copied during the lookup: %s", kvs_status_string(st));
    check(&r, 0, half, 1);
    kvs_request_free(f1);
    kvs_lease_release(l1);
    /* That copy (2 MiB) overlapped a lookup whose answer a holder on this
     * host computes: where the waiting thread and the default one helper
     * take every usable CPU, the helper left it alone (kvs__copier_solo). */
    unsigned cpus = kvs__usable_cpus(NULL, NULL);
    if (cpus == 2 && helper_bytes(&r) != helped)
        FAIL("defer: on %u CPUs a helper copied %llu bytes of a copy that overlapped a lookup",
             cpus, (unsigned long long)(helper_bytes(&r) - helped));
    printf("ok: defer: a lookup waiting for its reply copied the fetch before it%s\n",
           cpus == 2 ? ", without the helper (2 CPUs)" : "");
    kvs_request_h f2 = fetch_start(&r, l2, half);
    if ((st = kvs_request_wait(f2, 0)) != KVS_OK)
        FAIL("defer: kvs_request_wait(0) of a mapped fetch: %s", kvs_status_string(st));
    check(&r, half, half, 1);
    kvs_request_free(f2);
    kvs_lease_release(l2);
    kvs_lease_h l3 = lookup_all(&r, h.addr, 0, half);
    before = shm_bytes(&r);
    memset(r.mem, 0, (size_t)half * BB);
    kvs_request_free(fetch_start(&r, l3, half));
    if (shm_bytes(&r) != before || !all_zero(r.mem, (size_t)half * BB))
        FAIL("defer: a fetch freed before any wait copied");
    kvs_request_h f3 = fetch_start(&r, l3, half);
    if ((st = kvs_request_wait(f3, -1)) != KVS_OK)
        FAIL("defer: the fetch after a freed one: %s", kvs_status_string(st));
    check(&r, 0, half, 1);
    kvs_request_free(f3);
    kvs_lease_release(l3);
    /* Waited for after its deadline: a copy not started needs no peer, so
     * it is not timed out (which would also close the connection). */
    kvs_lease_h l4 = lookup_all(&r, h.addr, half, half);
    uint32_t ids4[NBLOCKS];
    for (uint32_t i = 0; i < half; i++)
        ids4[i] = i;
    kvs_fetch_params_t fp = {.field_mask = KVS_FETCH_FIELD_TIMEOUT_MS, .timeout_ms = 20};
    kvs_request_h f4 = NULL;
    if (kvs_fetch(l4, r.pool, ids4, half, &fp, &f4) != KVS_OK)
        FAIL("defer: kvs_fetch with a 20 ms deadline");
    struct timespec pause = {0, 150 * 1000000L};
    nanosleep(&pause, NULL);
    if ((st = kvs_request_wait(f4, -1)) != KVS_OK)
        FAIL("defer: a mapped fetch waited for after its deadline: %s", kvs_status_string(st));
    check(&r, half, half, 1);
    kvs_request_free(f4);
    kvs_lease_release(l4);
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK)
        FAIL("defer: the connection after a late wait");
    printf("ok: defer: kvs_request_wait with no time left copies; a fetch freed before any "
           "wait never copies; one waited for past its deadline still copies\n");
    reader_free(&r);
    stop_holder(&h);
}

static uint64_t helper_bytes(const reader_t *r)
{
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_COPY};
    kvs_stats_query(r->ctx, &st);
    return st.shm_helper_bytes;
}

/* Copies of 256 KiB or more are shared with the context's copy helper
 * (KVSHARE_COPY_THREADS, default 1): whole blocks and a TP view's planned
 * copies land byte for byte whoever copied them; with 0 the waiting thread
 * copies alone. */
static void s_helpers(void)
{
    child_t h = start_holder();
    reader_t r = reader_new();
    reader_t x = reader_tp2();
    setenv("KVSHARE_COPY_THREADS", "0", 1);
    reader_t a = reader_new();
    unsetenv("KVSHARE_COPY_THREADS");
    for (int i = 0; i < 20; i++) {
        memset(r.mem, 0, (size_t)NBLOCKS * BB);
        memset(a.mem, 0, (size_t)NBLOCKS * BB);
        memset(x.mem, x.unset, (size_t)NBLOCKS * XBB);
        kvs_status_t sr = fetch(&r, h.addr, 0, NBLOCKS), sx = fetch(&x, h.addr, 0, NBLOCKS),
                     sa = fetch(&a, h.addr, 0, NBLOCKS);
        if (sr != KVS_OK || sx != KVS_OK || sa != KVS_OK)
            FAIL("helpers: round %d: blocks %s, TP view %s, alone %s", i, kvs_status_string(sr),
                 kvs_status_string(sx), kvs_status_string(sa));
        check(&r, 0, NBLOCKS, 1);
        x_check(&x, 0, NBLOCKS, 1, 1, "helpers");
        check(&a, 0, NBLOCKS, 1);
    }
    const uint64_t whole = 20ull * NBLOCKS * BB;
    if (shm_bytes(&r) != whole || shm_bytes(&a) != whole || shm_bytes(&x) != whole / 2)
        FAIL("helpers: not every fetch took the mapped path (%llu, %llu, %llu bytes)",
             (unsigned long long)shm_bytes(&r), (unsigned long long)shm_bytes(&a),
             (unsigned long long)shm_bytes(&x));
    /* A helper that wakes late can miss one copy, not all twenty. */
    bool cpus = kvs__usable_cpus(NULL, NULL) > 1; /* else no helper starts */
    if (helper_bytes(&a) != 0 || (cpus && (helper_bytes(&r) == 0 || helper_bytes(&x) == 0)) ||
        helper_bytes(&r) > whole || helper_bytes(&x) > whole / 2)
        FAIL("helpers: bytes copied by helpers: %llu of %llu (blocks), %llu of %llu (TP view), "
             "%llu with KVSHARE_COPY_THREADS=0",
             (unsigned long long)helper_bytes(&r), (unsigned long long)whole,
             (unsigned long long)helper_bytes(&x), (unsigned long long)whole / 2,
             (unsigned long long)helper_bytes(&a));
    printf("ok: helpers: 20 fetches of %u blocks each way, every byte; the helper copied %llu of "
           "%llu bytes (%llu of %llu of the TP view's), none with KVSHARE_COPY_THREADS=0\n",
           NBLOCKS, (unsigned long long)helper_bytes(&r), (unsigned long long)whole,
           (unsigned long long)helper_bytes(&x), (unsigned long long)whole / 2);
    reader_free(&a);
    reader_free(&x);
    reader_free(&r);
    stop_holder(&h);

    /* A pool node shares its copies of puts from a client's memfds too:
     * 10 puts of 4 MiB under new keys, the node's helper bytes asked for,
     * the last puts fetched back (the node holds 64 MiB). Started with no
     * context in this process: a child forked while one ran cannot run UCX
     * (ucx_tl.c: its kvs_ctx_create fails). */
    child_t n = start_node();
    setenv("KVSHARE_POOL", n.addr, 1);
    kvs_ctx_h ctx = make_ctx(NULL);
    unsetenv("KVSHARE_POOL");
    uint8_t *mem = NULL;
    kvs_pool_h pool = make_pool(ctx, &mem);
    const int puts = 10;
    for (int i = 0; i < puts; i++) {
        kvs_key_t keys[NBLOCKS];
        uint32_t ids[NBLOCKS];
        for (uint32_t k = 0; k < NBLOCKS; k++) {
            keys[k] = key_of(20 * NBLOCKS + (uint32_t)i * NBLOCKS + k);
            ids[k] = k;
            put_block(mem, NULL, k, 20 * NBLOCKS + (uint32_t)i * NBLOCKS + k, 1);
        }
        kvs_request_h req = NULL;
        kvs_status_t st = kvs_put_ex(pool, keys, ids, NBLOCKS, NULL, &req);
        if (st == KVS_OK) {
            st = kvs_request_wait(req, -1);
            kvs_request_free(req);
        }
        if (st != KVS_OK)
            FAIL("helpers: put %d to the node: %s (node: %s)", i + 1, kvs_status_string(st),
                 warnings_in("node.log"));
    }
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_PUTS};
    kvs_stats_query(ctx, &ks);
    char line[128];
    unsigned long long node_helped = 0;
    dprintf(n.to, "helped\n");
    if (fgets(line, sizeof(line), n.from) == NULL || sscanf(line, "helped %llu", &node_helped) != 1)
        FAIL("helpers: the node did not say what its helpers copied");
    const uint64_t put_bytes = (uint64_t)puts * NBLOCKS * BB;
    if (ks.put_pulled_blocks != (uint64_t)puts * NBLOCKS || node_helped > put_bytes ||
        (cpus && node_helped == 0))
        FAIL("helpers: the node's helpers copied %llu of the %llu bytes put (%llu blocks pulled)",
             node_helped, (unsigned long long)put_bytes, (unsigned long long)ks.put_pulled_blocks);
    const uint32_t last = 20 * NBLOCKS + (uint32_t)(puts - 1) * NBLOCKS;
    reader_t b = reader_new();
    if (fetch(&b, n.addr, last, NBLOCKS) != KVS_OK)
        FAIL("helpers: fetch back the last put from the node");
    check(&b, last, NBLOCKS, 1);
    printf("ok: helpers: %d puts of %u blocks to a pool node, read from the client's memfd; its "
           "helper copied %llu of %llu bytes; the last put fetched back, every byte\n",
           puts, NBLOCKS, node_helped, (unsigned long long)put_bytes);
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, mem);
    kvs_ctx_destroy(ctx);
    reader_free(&b);
    stop_holder(&n);
}

static void s_exit(void)
{
    child_t h = start_holder();
    reader_t r = reader_new();
    if (fetch(&r, h.addr, 0, 8) != KVS_OK || shm_bytes(&r) == 0 || maps_of(h.pid) == 0)
        FAIL("exit: the first fetch did not map the holder's memory");
    uint32_t ids[8];
    for (uint32_t i = 0; i < 8; i++)
        ids[i] = i;
    kvs_lease_h lease = lookup_all(&r, h.addr, 0, 8);
    pid_t pid = h.pid;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    h.pid = 0;
    /* The lease still holds the connection: a fetch now either reads the
     * mapping (still valid memory) or fails; it must not crash. */
    kvs_request_h req = NULL;
    kvs_status_t st = kvs_fetch(lease, r.pool, ids, 8, NULL, &req);
    if (st == KVS_OK) {
        st = kvs_request_wait(req, -1);
        kvs_request_free(req);
        if (st == KVS_OK)
            check(&r, 0, 8, 1);
    }
    kvs_lease_release(lease);
    int left = -1;
    for (int i = 0; i < 1000 && (left = maps_of(pid)) != 0; i++)
        sleep_ms(10);
    if (left != 0)
        FAIL("exit: %d mappings of the dead holder remain after 10 s", left);
    printf("ok: exit: the fetch after the holder died gave %s; its mappings are gone\n",
           kvs_status_string(st));
    if (fetch(&r, h.addr, 0, 1) == KVS_OK)
        FAIL("exit: a fetch from the dead holder succeeded");
    reader_free(&r);
    close(h.to);
    fclose(h.from);
    /* The killed holder's socket is left behind; the next holder sweeps it. */
    if (sockets() != 1)
        FAIL("exit: %d sockets after the holder was killed, expected its 1", sockets());
    child_t h2 = start_holder();
    if (sockets() != 1)
        FAIL("exit: %d sockets with a new holder: the dead one was not swept", sockets());
    stop_holder(&h2);
    if (sockets() != 0)
        FAIL("exit: a holder that stopped left its socket");
    printf("ok: exit: the dead holder's socket is swept by the next; a clean stop leaves none\n");
}

/* Mappings in this process of a fake-CUDA allocation (memfd "fakecuda"), and
 * how many of them can be written. */
static int cuda_maps(int *writable)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0;
    *writable = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, "/memfd:fakecuda") == NULL)
            continue;
        n++;
        char perms[8] = "";
        if (sscanf(line, "%*s %7s", perms) == 1 && perms[1] == 'w')
            (*writable)++;
    }
    if (f != NULL)
        fclose(f);
    return n;
}

static void s_cuda(void)
{
    child_t h = start_holder_of(HOLD_CUDA_FD);
    reader_t r = reader_new();
    unsigned long imports = fakecuda_calls("cuMemImportFromShareableHandle");
    unsigned long dtoh = fakecuda_calls("cuMemcpyDtoH_v2");
    kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
    if (st != KVS_OK)
        FAIL("cuda: fetch: %s", kvs_status_string(st));
    check(&r, 0, NBLOCKS, 1);
    if (shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
        FAIL("cuda: %llu bytes through mapped memory, expected %u",
             (unsigned long long)shm_bytes(&r), NBLOCKS * BB);
    if (fakecuda_calls("cuMemImportFromShareableHandle") != imports + 1 ||
        fakecuda_calls("cuMemcpyDtoH_v2") == dtoh)
        FAIL("cuda: the bytes did not come from an imported VMM allocation (%lu imports, %lu "
             "copies)",
             fakecuda_calls("cuMemImportFromShareableHandle") - imports,
             fakecuda_calls("cuMemcpyDtoH_v2") - dtoh);
    int writable = 0, n = cuda_maps(&writable);
    if (n != 1 || writable != 0)
        FAIL("cuda: %d mappings of the holder's allocation (%d writable), expected 1 read-only", n,
             writable);
    /* A second fetch reuses the mapping. */
    if (fetch(&r, h.addr, 0, NBLOCKS) != KVS_OK ||
        fakecuda_calls("cuMemImportFromShareableHandle") != imports + 1)
        FAIL("cuda: a second fetch imported again");
    check(&r, 0, NBLOCKS, 1);
    printf("ok: cuda: %u blocks of %u bytes from the holder's VMM allocation, imported once and "
           "mapped read-only\n",
           NBLOCKS, BB);
    unsigned long unmaps = fakecuda_calls("cuMemUnmap");
    reader_free(&r);
    if (cuda_maps(&writable) != 0 || fakecuda_calls("cuMemUnmap") != unmaps + 1)
        FAIL("cuda: the reader's mapping outlived its connection");
    printf("ok: cuda: the mapping went with the connection\n");
    stop_holder(&h);
}

static void s_cudamid(void)
{
    midread_case("cudamid", HOLD_CUDA_FD, "CUDA memory");
}

static void s_cudanofd(void)
{
    const struct {
        int kind;
        const char *shm;
    } cases[] = {{HOLD_CUDA, NULL}, {HOLD_CUDA_FD, "off"}};
    for (size_t k = 0; k < 2; k++) {
        child_t h = start_holder_of(cases[k].kind);
        if (cases[k].shm != NULL)
            setenv("KVSHARE_SHM", cases[k].shm, 1);
        reader_t r = reader_new();
        unsigned long imports = fakecuda_calls("cuMemImportFromShareableHandle");
        kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
        if (st != KVS_OK)
            FAIL("cudanofd: fetch: %s", kvs_status_string(st));
        check(&r, 0, NBLOCKS, 1);
        int writable = 0;
        if (shm_bytes(&r) != 0 || cuda_maps(&writable) != 0 ||
            fakecuda_calls("cuMemImportFromShareableHandle") != imports)
            FAIL("cudanofd: case %zu: the reader mapped the holder's allocation", k);
        if (cases[k].shm == NULL && !logged("cannot be exported"))
            FAIL("cudanofd: the holder did not say why its CUDA region stays on UCX");
        printf("ok: cudanofd: %s: every byte right over UCX, nothing mapped\n",
               cases[k].shm == NULL ? "VMM allocation without POSIX_FD" : "KVSHARE_SHM=off");
        reader_free(&r);
        unsetenv("KVSHARE_SHM");
        stop_holder(&h);
    }
}

/* A reader whose pool is CUDA memory, from a holder of host memfds (copied
 * with cuMemcpyHtoDAsync) and one of an exportable VMM allocation
 * (cuMemcpyDtoDAsync): every byte over the mapping, a rewrite between copy
 * and check KVS_ERR_STALE then the new bytes, our streams gone with the
 * connection; with KVSHARE_SHM=off the fetch is refused (the transport
 * takes no CUDA destinations) and nothing is mapped. */
static void s_cudadst(void)
{
    static const struct {
        int kind;
        const char *what, *copy, *other;
    } cases[] = {{HOLD_HOST, "memfd source", "cuMemcpyHtoDAsync_v2", "cuMemcpyDtoDAsync_v2"},
                 {HOLD_CUDA_FD, "CUDA VMM source", "cuMemcpyDtoDAsync_v2", "cuMemcpyHtoDAsync_v2"}};
    for (size_t k = 0; k < 2; k++) {
        const char *what = cases[k].what;
        child_t h = start_holder_of(cases[k].kind);
        long streams = fakecuda_live_streams();
        reader_t r = reader_cuda();
        unsigned long copies = fakecuda_calls(cases[k].copy);
        unsigned long others = fakecuda_calls(cases[k].other);
        unsigned long syncs = fakecuda_calls("cuStreamSynchronize");
        kvs_status_t st = fetch(&r, h.addr, 0, NBLOCKS);
        if (st != KVS_OK)
            FAIL("cudadst: %s: fetch into CUDA memory: %s", what, kvs_status_string(st));
        check(&r, 0, NBLOCKS, 1);
        if (shm_bytes(&r) != (uint64_t)NBLOCKS * BB)
            FAIL("cudadst: %s: %llu bytes through mapped memory, expected %u", what,
                 (unsigned long long)shm_bytes(&r), NBLOCKS * BB);
        if (fakecuda_calls(cases[k].copy) == copies || fakecuda_calls(cases[k].other) != others ||
            fakecuda_calls("cuStreamSynchronize") == syncs)
            FAIL("cudadst: %s: %lu %s, %lu %s, %lu stream syncs", what,
                 fakecuda_calls(cases[k].copy) - copies, cases[k].copy,
                 fakecuda_calls(cases[k].other) - others, cases[k].other,
                 fakecuda_calls("cuStreamSynchronize") - syncs);
        printf("ok: cudadst: %s: %u blocks into CUDA memory with %s, all through the mapping\n",
               what, NBLOCKS, cases[k].copy);
        int calls = 0;
        st = fetch_rewritten_mid_copy(&h, &r, &calls);
        if (calls != 1 || st != KVS_ERR_STALE)
            FAIL("cudadst: %s: a rewrite between copy and check gave %s (%d mapped copies), "
                 "expected KVS_ERR_STALE",
                 what, kvs_status_string(st), calls);
        if ((st = fetch(&r, h.addr, 0, 4)) != KVS_OK)
            FAIL("cudadst: %s: fetch after the rewrite: %s", what, kvs_status_string(st));
        check(&r, 0, 1, 2);
        for (uint32_t i = 1; i < 4; i++)
            if (!same(r.mem + (size_t)i * BB, i, 1))
                FAIL("cudadst: %s: block %u has wrong bytes", what, i);
        if (shm_bytes(&r) != (uint64_t)(NBLOCKS + 4) * BB) /* the stale fetch counts none */
            FAIL("cudadst: %s: the fetches after the rewrite did not come through the mapping",
                 what);
        printf("ok: cudadst: %s: a rewrite between copy and check is KVS_ERR_STALE; then the new "
               "bytes\n",
               what);
        reader_free(&r);
        if (fakecuda_live_streams() != streams)
            FAIL("cudadst: %s: %ld streams outlived the connection", what,
                 fakecuda_live_streams() - streams);
        setenv("KVSHARE_SHM", "off", 1);
        reader_t off = reader_cuda();
        st = fetch(&off, h.addr, 0, NBLOCKS);
        int writable = 0;
        if (st != KVS_ERR_UNSUPPORTED || shm_bytes(&off) != 0 || cuda_maps(&writable) != 0)
            FAIL("cudadst: %s: KVSHARE_SHM=off gave %s with %llu mapped bytes, expected "
                 "KVS_ERR_UNSUPPORTED (the transport takes no CUDA destinations)",
                 what, kvs_status_string(st), (unsigned long long)shm_bytes(&off));
        printf("ok: cudadst: %s: KVSHARE_SHM=off: refused (no transport for CUDA memory), "
               "nothing mapped\n",
               what);
        reader_free(&off);
        unsetenv("KVSHARE_SHM");
        stop_holder(&h);
    }
}

static pid_t parent;

/* The parent's work folder goes at exit, whatever is left in it (a killed
 * holder's socket). */
static void cleanup(void)
{
    if (getpid() != parent)
        return;
    DIR *d = opendir(work);
    char path[600];
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", work, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(work);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *tmp = getenv("TMPDIR");
    snprintf(work, sizeof(work), "%s/kvs-shm-XXXXXX", tmp != NULL && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(work) == NULL)
        FAIL("mkdtemp: %s", strerror(errno));
    parent = getpid();
    atexit(cleanup);
    char tok[300];
    snprintf(tok, sizeof(tok), "%s/token", work);
    FILE *f = fopen(tok, "w");
    if (f == NULL || fputs(token, f) < 0 || fclose(f) != 0)
        FAIL("token file");
    setenv("KVSHARE_AUTH_TOKEN_FILE", tok, 1);
    setenv("KVSHARE_HOST_SOCKET_DIR", work, 1);
    setenv("KVSHARE_LIBCUDA", KVS_FAKECUDA_LIB, 1); /* what libkvshare dlopens: this fake */
    unsetenv("KVSHARE_AUTH");
    unsetenv("KVSHARE_SHM");
    unsetenv("KVSHARE_TEST_BOOT_ID");
    static const struct {
        const char *name;
        void (*fn)(void);
    } all[] = {{"mapped", s_mapped},       {"midread", s_midread}, {"xview", s_xview},
               {"otherhost", s_otherhost}, {"unauth", s_unauth},   {"silent", s_silent},
               {"exit", s_exit},           {"cuda", s_cuda},       {"cudamid", s_cudamid},
               {"cudanofd", s_cudanofd},   {"cudadst", s_cudadst}, {"cudaxview", s_cudaxview},
               {"offers", s_offers},       {"cudaput", s_cudaput}, {"forget", s_forget},
               {"churn", s_churn},         {"defer", s_defer},     {"withdraw", s_withdraw},
               {"helpers", s_helpers},     {"ctl", s_ctl},         {"order", s_order},
               {"index", s_index}};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        bool run = argc < 2;
        for (int a = 1; a < argc; a++)
            run = run || strcmp(argv[a], all[i].name) == 0;
        if (run)
            all[i].fn();
    }
    return 0;
}
