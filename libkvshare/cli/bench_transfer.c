/* SPDX-License-Identifier: Apache-2.0 */
/* bench_transfer.c - `kvshare bench transfer`: fetch speed between two processes, beside
 * one core's memcpy of the same blocks and UCX's own ucx_perftest at the same size. */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct xopts {
    const char *tls, *path;
    uint64_t block_bytes, blocks, batch, repeats, seed, inflight;
    bool json, contiguous, serve, no_perftest;
} xopts_t;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kvshare bench transfer [--tls posix,cma,self|tcp] [--block-bytes B]\n"
        "                              [--blocks N] [--batch K] [--repeats R]\n"
        "                              [--inflight 1|2] [--contiguous] [--no-perftest] [--json]\n"
        "                              [--path auto|memfd|ucx]\n"
        "\n"
        "A server process publishes N distinct blocks (zero-copy, at shuffled block ids);\n"
        "this process looks them up and fetches them all in batches of K, R times, into\n"
        "shuffled ids of its own, with --inflight batches moving at once (default 1; with 2\n"
        "the next batch is looked up while the last one lands). Printed beside it, from the\n"
        "same run: one core's memcpy of the same blocks (the limit of a shared-memory path),\n"
        "and ucx_perftest at the same size and UCX_TLS (ucp_get on shared memory, ucp_am_bw\n"
        "on tcp).\n"
        "--path memfd needs the same-host path (this process maps the server's memfds and\n"
        "copies them itself), ucx turns it off (KVSHARE_SHM=off); auto takes what works.\n"
        "Defaults: --tls posix,cma,self --block-bytes 262144 --blocks 4096 --batch 64\n"
        "          --repeats 5 --inflight 1\n");
}

static kvs_key_t key_of(uint64_t seed, uint64_t i)
{
    kvs_key_t k;
    for (int w = 0; w < 4; w++) {
        uint64_t v = kvs_cli_mix(seed * 1000003u + i * 4u + (uint64_t)w);
        memcpy(&k.bytes[8 * w], &v, 8);
    }
    return k;
}

/* Block ids for keys 0..n-1: a shuffle, or the identity with --contiguous. */
static uint32_t *block_ids(uint64_t n, uint64_t seed, bool contiguous)
{
    uint32_t *ids = malloc(n * sizeof(*ids));
    if (ids == NULL)
        return NULL;
    for (uint64_t i = 0; i < n; i++)
        ids[i] = (uint32_t)i;
    if (!contiguous) {
        uint64_t r = seed;
        for (uint64_t i = n; i > 1; i--) {
            r = kvs_cli_mix(r);
            uint64_t j = r % i;
            uint32_t t = ids[i - 1];
            ids[i - 1] = ids[j];
            ids[j] = t;
        }
    }
    return ids;
}

static kvs_layout_t bench_layout(void)
{
    kvs_layout_t l = {.model_id = "kvshare-bench",
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = 1,
                      .num_kv_heads = 8,
                      .head_dim = 128,
                      .tp_size = 1};
    return l;
}

static kvs_status_t make_pool(kvs_ctx_h ctx, const xopts_t *o, uint8_t **mem_p, kvs_pool_h *p)
{
    size_t bytes = (size_t)(o->blocks * o->block_bytes);
    uint8_t *mem = NULL; /* kvshare's memory: a same-host reader may map it */
    kvs_status_t st = kvs_mem_alloc(ctx, bytes, KVS_MEM_HOST, (void **)&mem);
    if (st != KVS_OK)
        return st;
    memset(mem, 0, bytes); /* touch every page before timing */
    kvs_layout_t l = bench_layout();
    kvs_segment_t seg = {.base = mem,
                         .block_stride = o->block_bytes,
                         .block_bytes = o->block_bytes,
                         .mem_type = KVS_MEM_HOST};
    kvs_pool_params_t pp = {
        .layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = (uint32_t)o->blocks};
    st = kvs_pool_create(ctx, &pp, p);
    if (st != KVS_OK) {
        kvs_mem_free(ctx, mem);
        return st;
    }
    *mem_p = mem;
    return KVS_OK;
}

static kvs_ctx_h make_ctx(const char *listen)
{
    char err[512];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                         (listen != NULL ? KVS_CTX_FIELD_PROGRESS : 0),
                           .progress = KVS_PROGRESS_THREAD, /* the server must serve */
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .transport = "ucx"};
    if (listen != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_LISTEN;
        cp.listen = listen;
    }
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: %s: %s\n", kvs_status_string(st), err);
        return NULL;
    }
    return ctx;
}

/* The server half: publish, say where, serve until stdin closes. */
static int serve(const xopts_t *o)
{
    kvs_ctx_h ctx = make_ctx("127.0.0.1:0");
    if (ctx == NULL)
        return 1;
    uint8_t *mem = NULL;
    kvs_pool_h pool = NULL;
    kvs_status_t st = make_pool(ctx, o, &mem, &pool);
    uint32_t *ids = block_ids(o->blocks, o->seed + 1, o->contiguous);
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    if (st != KVS_OK || ids == NULL || keys == NULL) {
        fprintf(stderr, "kvshare bench transfer: server setup: %s\n", kvs_status_string(st));
        return 1;
    }
    for (uint64_t i = 0; i < o->blocks; i++) {
        keys[i] = key_of(o->seed, i);
        uint64_t x = kvs_cli_mix(i);
        uint8_t *b = mem + (size_t)ids[i] * o->block_bytes;
        for (size_t j = 0; j + 8 <= o->block_bytes; j += 8, x = kvs_cli_mix(x))
            memcpy(b + j, &x, 8);
    }
    st = kvs_publish(pool, keys, ids, o->blocks, KVS_PUBLISH_ZERO_COPY, NULL);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: publish: %s\n", kvs_status_string(st));
        return 1;
    }
    char addr[300];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
    /* The pool's address lets the client time raw CMA on the same blocks. */
    printf("ready %s %p\n", addr, (void *)mem);
    fflush(stdout);
    char buf[16];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, mem);
    kvs_ctx_destroy(ctx);
    free(ids);
    free(keys);
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ucx_perftest at the same size and transports, server and client on loopback.
 * Returns GB/s (1e9 bytes), or a negative number when it could not run. */
static double perftest(const char *tls, const char *test, uint64_t size, char *note, size_t nlen)
{
    char port[16], sz[32], cmd[512];
    snprintf(port, sizeof(port), "%d", 20000 + (int)(kvs_cli_mix((uint64_t)getpid()) % 20000));
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
    setenv("UCX_TLS", tls, 1);
    char *sargv[] = {"/usr/bin/ucx_perftest", "-p", port, NULL};
    if (access(sargv[0], X_OK) != 0) {
        snprintf(note, nlen, "ucx_perftest not installed (Debian package ucx-utils)");
        return -1;
    }
    int to;
    FILE *from;
    pid_t srv = kvs_cli_spawn(sargv, &to, &from);
    if (srv < 0)
        return -1;
    /* The client retries until the server listens: no fixed sleep. */
    double gbps = -1;
    for (int attempt = 0; attempt < 50 && gbps < 0; attempt++) {
        snprintf(cmd, sizeof(cmd),
                 "UCX_TLS=%s /usr/bin/ucx_perftest 127.0.0.1 -p %s -t %s -s %s -n 2000 -w 200 "
                 "2>/dev/null",
                 tls, port, test, sz);
        FILE *p = popen(cmd, "r");
        char line[512];
        while (p != NULL && fgets(line, sizeof(line), p) != NULL) {
            double it, l50, lavg, lall, bw;
            if (sscanf(line, "Final: %lf %lf %lf %lf %lf", &it, &l50, &lavg, &lall, &bw) == 5)
                gbps = bw * 1048576.0 / 1e9; /* perftest's MB is 2^20 bytes */
        }
        if (p != NULL)
            pclose(p);
        if (gbps < 0) {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
    }
    kill(srv, SIGKILL);
    waitpid(srv, NULL, 0);
    close(to);
    fclose(from);
    if (gbps < 0)
        snprintf(note, nlen, "ucx_perftest did not report");
    return gbps;
}

int kvs_cli_bench_transfer(int argc, char **argv)
{
    xopts_t o = {.tls = "posix,cma,self",
                 .path = "auto",
                 .block_bytes = 262144,
                 .blocks = 4096,
                 .batch = 64,
                 .repeats = 5,
                 .seed = 42,
                 .inflight = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--contiguous") == 0) {
            o.contiguous = true;
        } else if (strcmp(a, "--serve") == 0) {
            o.serve = true;
        } else if (strcmp(a, "--no-perftest") == 0) {
            o.no_perftest = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--path") == 0 && v != NULL) {
            if (strcmp(v, "auto") != 0 && strcmp(v, "memfd") != 0 && strcmp(v, "ucx") != 0) {
                fprintf(stderr, "kvshare bench transfer: --path '%s': auto, memfd or ucx\n", v);
                return 2;
            }
            o.path = v;
            i++;
        } else if (strcmp(a, "--tls") == 0 && v != NULL) {
            o.tls = v;
            i++;
        } else if (strcmp(a, "--block-bytes") == 0) {
            if (!kvs_cli_parse_size(a, v, 8, 1ull << 30, &o.block_bytes))
                return 2;
            i++;
        } else if (strcmp(a, "--blocks") == 0) {
            if (!kvs_cli_parse_u64(a, v, 1, 1u << 24, &o.blocks))
                return 2;
            i++;
        } else if (strcmp(a, "--batch") == 0) {
            if (!kvs_cli_parse_u64(a, v, 1, 65536, &o.batch))
                return 2;
            i++;
        } else if (strcmp(a, "--repeats") == 0) {
            if (!kvs_cli_parse_u64(a, v, 1, 1000, &o.repeats))
                return 2;
            i++;
        } else if (strcmp(a, "--inflight") == 0) {
            if (!kvs_cli_parse_u64(a, v, 1, 2, &o.inflight))
                return 2;
            i++;
        } else if (strcmp(a, "--seed") == 0) {
            if (!kvs_cli_parse_u64(a, v, 0, UINT64_MAX, &o.seed))
                return 2;
            i++;
        } else {
            fprintf(stderr, "kvshare bench transfer: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (o.block_bytes % 8 != 0) {
        fprintf(stderr, "kvshare bench transfer: --block-bytes must be a multiple of 8\n");
        return 2;
    }
    /* Connection setup goes through UCX's TCP connection manager, so our
     * processes need tcp listed; the data path still takes the fastest
     * transport UCX finds in the list (see docs/transport.md). */
    char ours[256];
    bool has_tcp = strstr(o.tls, "tcp") != NULL || strcmp(o.tls, "all") == 0;
    snprintf(ours, sizeof(ours), "%s%s", o.tls, has_tcp ? "" : ",tcp");
    setenv("UCX_TLS", ours, 1);
    if (strcmp(o.path, "ucx") == 0)
        setenv("KVSHARE_SHM", "off", 1); /* both processes: no offer, no mapping */
    /* The --serve child inherits the parent's token; alone it needs one too. */
    if (!kvs_cli_run_token("bench transfer"))
        return 1;
    if (o.serve)
        return serve(&o);

    bool shm = strcmp(o.tls, "tcp") != 0;
    const char *pt_test = shm ? "ucp_get" : "ucp_am_bw";
    double bytes_total = (double)o.blocks * (double)o.block_bytes;
    if (!o.json)
        fprintf(stderr,
                "bench transfer: %llu blocks x %llu bytes (%.0f MiB), batches of %llu, "
                "UCX_TLS=%s, %s ids\n",
                (unsigned long long)o.blocks, (unsigned long long)o.block_bytes,
                bytes_total / 1048576.0, (unsigned long long)o.batch, ours,
                o.contiguous ? "contiguous" : "shuffled");

    /* 1. The server process. */
    char bb[32], nb[32], sb[32];
    snprintf(bb, sizeof(bb), "%llu", (unsigned long long)o.block_bytes);
    snprintf(nb, sizeof(nb), "%llu", (unsigned long long)o.blocks);
    snprintf(sb, sizeof(sb), "%llu", (unsigned long long)o.seed);
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl <= 0)
        return 1;
    self[sl] = '\0';
    char *sargv[] = {self,
                     "bench",
                     "transfer",
                     "--serve",
                     "--tls",
                     (char *)o.tls,
                     "--block-bytes",
                     bb,
                     "--blocks",
                     nb,
                     "--seed",
                     sb,
                     o.contiguous ? "--contiguous" : "--json",
                     NULL};
    int to;
    FILE *from;
    pid_t srv = kvs_cli_spawn(sargv, &to, &from);
    char line[512] = "", addr[300] = "";
    void *srv_base = NULL;
    if (srv < 0 || fgets(line, sizeof(line), from) == NULL ||
        sscanf(line, "ready %299s %p", addr, &srv_base) != 2) {
        fprintf(stderr, "kvshare bench transfer: the server process did not start\n");
        return 1;
    }

    /* 2. Our side: fetch everything, R times after a warm-up pass. */
    int rc = 1;
    kvs_ctx_h ctx = make_ctx(NULL);
    uint8_t *mem = NULL;
    kvs_pool_h pool = NULL;
    kvs_key_t *keys = malloc(o.blocks * sizeof(*keys));
    uint32_t *dst = block_ids(o.blocks, o.seed + 2, o.contiguous);
    uint64_t nbatches = (o.blocks + o.batch - 1) / o.batch;
    double *lat = calloc(nbatches * o.repeats, sizeof(double));
    double *rep = calloc(o.repeats, sizeof(double));
    if (ctx == NULL || keys == NULL || dst == NULL || lat == NULL || rep == NULL ||
        make_pool(ctx, &o, &mem, &pool) != KVS_OK)
        goto out;
    for (uint64_t i = 0; i < o.blocks; i++)
        keys[i] = key_of(o.seed, i);
    size_t nlat = 0;
    kvs_status_t st = KVS_OK;
    /* One batch at a time, or (--inflight 2) two, as an engine overlapping
     * them would: batch b+1 is looked up while batch b's data is still
     * moving, then b is waited for and its lease released. A batch's latency
     * runs from its lookup to its end. */
    for (uint64_t r = 0; r <= o.repeats && st == KVS_OK; r++) {
        double t0 = kvs_cli_now();
        kvs_lease_h prev_lease = NULL;
        kvs_request_h prev_req = NULL;
        double prev_b0 = 0;
        for (uint64_t b = 0; b <= nbatches && st == KVS_OK; b++) {
            kvs_lease_h lease = NULL;
            kvs_request_h req = NULL;
            double b0 = kvs_cli_now();
            if (b < nbatches) {
                uint64_t first = b * o.batch;
                size_t n = (size_t)(o.blocks - first < o.batch ? o.blocks - first : o.batch);
                kvs_lookup_params_t lp = {.field_mask =
                                              KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                                          .sources = KVS_SOURCE_PEER,
                                          .peer = addr};
                st = kvs_lookup(ctx, kvs_pool_layout_id(pool), keys + first, n, &lp, &lease);
                if (st == KVS_OK && kvs_lease_hits(lease) != n) {
                    fprintf(stderr, "kvshare bench transfer: %zu of %zu hits\n",
                            kvs_lease_hits(lease), n);
                    st = KVS_ERR_NOT_FOUND;
                }
                if (st == KVS_OK)
                    st = kvs_fetch(lease, pool, dst + first, n, NULL, &req);
            }
            if (prev_req != NULL) {
                kvs_status_t pst = kvs_request_wait(prev_req, -1);
                if (st == KVS_OK)
                    st = pst;
                kvs_request_free(prev_req);
                kvs_lease_release(prev_lease);
                if (r > 0)
                    lat[nlat++] = (kvs_cli_now() - prev_b0) * 1e6;
            }
            prev_req = req;
            prev_lease = lease;
            prev_b0 = b0;
            if (o.inflight == 1 && prev_req != NULL) { /* no overlap: finish it now */
                kvs_status_t pst = kvs_request_wait(prev_req, -1);
                if (st == KVS_OK)
                    st = pst;
                kvs_request_free(prev_req);
                kvs_lease_release(prev_lease);
                if (r > 0)
                    lat[nlat++] = (kvs_cli_now() - prev_b0) * 1e6;
                prev_req = NULL;
                prev_lease = NULL;
            }
            if (st != KVS_OK) {
                kvs_request_free(prev_req);
                kvs_lease_release(prev_lease);
                prev_req = NULL;
                prev_lease = NULL;
            }
        }
        if (r > 0)
            rep[r - 1] = kvs_cli_now() - t0;
    }
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: %s\n", kvs_status_string(st));
        goto out;
    }
    /* Which path moved the bytes: all through mapped memory, or none. */
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_SHM};
    kvs_stats_query(ctx, &ks);
    const char *ran = ks.shm_fetched_bytes == 0 ? "ucx"
                      : ks.shm_fetched_bytes == o.blocks * o.block_bytes * (o.repeats + 1)
                          ? "memfd"
                          : "mixed";
    if (strcmp(o.path, "auto") != 0 && strcmp(o.path, ran) != 0) {
        fprintf(stderr, "kvshare bench transfer: --path %s asked, but the %s path ran\n", o.path,
                ran);
        goto out;
    }
    /* Spot-check the content against what the server wrote. */
    for (uint64_t i = 0; i < o.blocks; i += 97) {
        uint64_t x = kvs_cli_mix(i), got;
        memcpy(&got, mem + (size_t)dst[i] * o.block_bytes, 8);
        if (got != x) {
            fprintf(stderr, "kvshare bench transfer: block %llu has wrong content\n",
                    (unsigned long long)i);
            goto out;
        }
    }
    double gbps = bytes_total / kvs_cli_median(rep, (int)o.repeats) / 1e9;
    qsort(lat, nlat, sizeof(double), cmp_d);
    double p50 = lat[nlat / 2], p99 = lat[(size_t)((double)(nlat - 1) * 0.99)];

    /* 3. One core copying the same blocks, same shuffled ids both sides. */
    uint8_t *src = aligned_alloc(4096, (size_t)bytes_total);
    uint32_t *sids = block_ids(o.blocks, o.seed + 1, o.contiguous);
    double mc = 0;
    if (src != NULL && sids != NULL) {
        memset(src, 1, (size_t)bytes_total);
        double *mt = calloc(o.repeats, sizeof(double));
        for (uint64_t r = 0; r <= o.repeats && mt != NULL; r++) {
            double t0 = kvs_cli_now();
            for (uint64_t i = 0; i < o.blocks; i++)
                memcpy(mem + (size_t)dst[i] * o.block_bytes, src + (size_t)sids[i] * o.block_bytes,
                       o.block_bytes);
            if (r > 0)
                mt[r - 1] = kvs_cli_now() - t0;
        }
        if (mt != NULL)
            mc = bytes_total / kvs_cli_median(mt, (int)o.repeats) / 1e9;
        free(mt);
    }
    free(src);
    free(sids);

    /* 3b. The kernel's cross-process copy (CMA, process_vm_readv) of the
     * same blocks from the server process: the ceiling of a shared-memory
     * path when the holder's memory cannot be mapped (no xpmem/knem). */
    double cma = 0;
    if (shm) {
        uint32_t *sids2 = block_ids(o.blocks, o.seed + 1, o.contiguous);
        double *ct = calloc(o.repeats, sizeof(double));
        bool ok = sids2 != NULL && ct != NULL;
        for (uint64_t r = 0; ok && r <= o.repeats; r++) {
            double t0 = kvs_cli_now();
            for (uint64_t i = 0; ok && i < o.blocks; i++) {
                struct iovec l = {mem + (size_t)dst[i] * o.block_bytes, o.block_bytes};
                struct iovec rm = {(uint8_t *)srv_base + (size_t)sids2[i] * o.block_bytes,
                                   o.block_bytes};
                ok = process_vm_readv(srv, &l, 1, &rm, 1, 0) == (ssize_t)o.block_bytes;
            }
            if (r > 0)
                ct[r - 1] = kvs_cli_now() - t0;
        }
        if (ok)
            cma = bytes_total / kvs_cli_median(ct, (int)o.repeats) / 1e9;
        free(ct);
        free(sids2);
    }

    /* 4. ucx_perftest at the same size and transports. */
    char note[128] = "";
    double pt = o.no_perftest ? -1 : perftest(o.tls, pt_test, o.block_bytes, note, sizeof(note));
    if (o.no_perftest)
        snprintf(note, sizeof(note), "skipped (--no-perftest)");

    if (o.json) {
        printf("{\"bench\":\"transfer\",\"path\":\"%s\",\"tls\":\"%s\",\"block_bytes\":%llu,"
               "\"blocks\":%llu,"
               "\"batch\":%llu,\"inflight\":%llu,\"repeats\":%llu,\"ids\":\"%s\",\"gbps\":%.3f,"
               "\"memcpy_gbps\":%.3f,\"ratio_memcpy\":%.3f,\"perftest_test\":\"%s\","
               "\"perftest_gbps\":%.3f,\"ratio_perftest\":%.3f,\"cma_gbps\":%.3f,"
               "\"ratio_cma\":%.3f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
               ran, o.tls, (unsigned long long)o.block_bytes, (unsigned long long)o.blocks,
               (unsigned long long)o.batch, (unsigned long long)o.inflight,
               (unsigned long long)o.repeats, o.contiguous ? "contiguous" : "shuffled", gbps, mc,
               mc > 0 ? gbps / mc : 0, pt_test, pt > 0 ? pt : 0, pt > 0 ? gbps / pt : 0, cma,
               cma > 0 ? gbps / cma : 0, p50, p99);
    } else {
        printf(
            "  kvshare fetch        %8.2f GB/s   path %s, batch latency p50 %.0f us, p99 %.0f us\n"
            "  memcpy, one core     %8.2f GB/s   ratio_memcpy   %.2f\n",
            gbps, ran, p50, p99, mc, mc > 0 ? gbps / mc : 0);
        if (cma > 0)
            printf("  raw CMA, one core    %8.2f GB/s   ratio_cma      %.2f\n", cma, gbps / cma);
        if (pt > 0)
            printf("  ucx_perftest %-9s %7.2f GB/s   ratio_perftest %.2f\n", pt_test, pt,
                   gbps / pt);
        else
            printf("  ucx_perftest %-9s   n/a      (%s)\n", pt_test, note);
    }
    rc = 0;
out:
    close(to);
    waitpid(srv, NULL, 0);
    fclose(from);
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, mem);
    kvs_ctx_destroy(ctx);
    free(keys);
    free(dst);
    free(lat);
    free(rep);
    return rc;
}
