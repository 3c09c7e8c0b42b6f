/* SPDX-License-Identifier: Apache-2.0 */
/* bench_pool.c - `kvshare bench pool`: put and fetch speed through cache-pool nodes, and the
 * hit rate of a shared-prefix workload. */
#include "cli.h"
#include "util_int.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct popts {
    const char *pool;
    uint64_t nodes, prefixes, prefix_blocks, prompts, suffix_blocks, block_bytes, depth;
    uint64_t rounds; /* --warm: timed rounds of puts, each followed by its fetches */
    bool json, prefault, warm;
    bool heap; /* --client-mem heap: the clients' blocks in malloc memory */
} popts_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: kvshare bench pool [--pool HOST:PORT,...] [--nodes N] [--prefixes S]\n"
               "                          [--prefix-blocks B] [--prompts P] [--suffix-blocks K]\n"
               "                          [--block-bytes BYTES] [--depth D] [--prefault] [--warm]\n"
               "                          [--rounds R] [--client-mem memfd|heap] [--json]\n"
               "\n"
               "A shared-prefix workload, like llm-d's: P prompts, each one of S long system\n"
               "prefixes followed by its own suffix. Client A offloads every prompt's chain with\n"
               "kvs_put (put_gbps: bytes the nodes stored per second); client B, another context\n"
               "with no local copy, then serves the same prompts in another order, fetching the\n"
               "longest cached prefix of each from the pool (fetch_gbps, and hit_rate = blocks\n"
               "fetched / blocks asked for). Without --pool, N (default 3) local `kvshare serve`\n"
               "nodes are started, sized so the whole workload fits; with --prefault each makes\n"
               "its arena and faults its pages in at start (KVSHARE_SLOT_BYTES=BYTES,\n"
               "KVSHARE_PREFAULT=1: every page committed and written once), much as a node that\n"
               "has run for a while has them: without it, every block a put stores lands in a\n"
               "page never touched before.\n"
               "--depth D: each client keeps up to D prompts' requests in flight (puts: D\n"
               "kvs_put requests, as an engine offloading in the background does; fetches: a\n"
               "lookup, then a kvs_fetch waited for D prompts later, each into its own blocks).\n"
               "--depth 1 waits for every request before the next.\n"
               "--warm: a node that has run for a while stores puts in arena slots written\n"
               "before (eviction hands them back). After the timed puts above (put_gbps_cold),\n"
               "each local node is sent throw-away prompts of its whole capacity (untimed), so\n"
               "eviction has cycled its arena; A then puts the same prompts again under new keys\n"
               "(the same bytes, landing in reused slots), and B fetches those; R rounds\n"
               "(--rounds, default 5) of both, each round under new keys, so that eviction\n"
               "hands the next round's puts the slots of the one before. put_gbps and\n"
               "fetch_gbps are the medians of the rounds (each round's figures are printed\n"
               "too): one put round lasts a few tens of milliseconds, and on a shared host a\n"
               "single stall moves a single round's figure by a fifth.\n"
               "--client-mem: where the clients' blocks live. memfd (default): kvs_mem_alloc,\n"
               "which a node on this host maps and copies puts from; heap: the engine's own\n"
               "memory, which it reads with process_vm_readv (or UCX where it cannot).\n"
               "Printed beside the cold puts, from the same run (after the fetches):\n"
               "first_touch_gbps, one core storing as many bytes into a memfd never touched\n"
               "before (MADV_POPULATE_WRITE, then memcpy, as a node stores a put into fresh\n"
               "slots), and ratio_put_cold_first_touch = put_gbps_cold / first_touch_gbps: on a\n"
               "VM whose host backs each guest page at its first write, that write is the\n"
               "bound of a cold put, whatever kvshare does.\n"
               "Defaults: --prefixes 8 --prefix-blocks 128 --prompts 64 --suffix-blocks 32\n"
               "          --block-bytes 65536 --depth 4 --rounds 5 (1 without --warm)\n");
}

/* The anchor of a cold put: one core storing @bytes (at most 1 GiB) into
 * memory never touched before, of the arena's kind (a memfd), the way a
 * node stores a put into fresh slots (MADV_POPULATE_WRITE over the run,
 * then memcpy). On a VM the host backs a guest page at its first write,
 * whatever the kind of memory: this is that cost alone, with nothing of
 * kvshare in it. Run after the puts and fetches, so that the pages it
 * frees cannot make the nodes' fresh pages cheaper. GB/s, or -1. */
static double first_touch_gbps(double bytes)
{
    size_t n = bytes > (double)(1u << 30) ? (size_t)1 << 30 : (size_t)bytes;
    enum { CHUNK = 1 << 20 };
    n = n / CHUNK * CHUNK;
    uint8_t *src = malloc(CHUNK);
    int fd = memfd_create("kvshare-bench-first-touch", MFD_CLOEXEC);
    void *p = MAP_FAILED;
    if (src != NULL && fd >= 0 && n > 0 && ftruncate(fd, (off_t)n) == 0)
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    double gbps = -1;
    if (p != MAP_FAILED) {
        for (size_t i = 0; i < CHUNK; i++) /* written before: its own faults untimed */
            src[i] = (uint8_t)(i * 131u + 7u);
        double t0 = kvs_cli_now();
#ifdef MADV_POPULATE_WRITE
        (void)madvise(p, n, MADV_POPULATE_WRITE);
#endif
        for (size_t off = 0; off < n; off += CHUNK)
            memcpy((uint8_t *)p + off, src, CHUNK);
        double s = kvs_cli_now() - t0;
        gbps = s > 0 ? (double)n / s / 1e9 : -1;
        munmap(p, n);
    }
    if (fd >= 0)
        close(fd);
    free(src);
    return gbps;
}

/* Prompt p's chain: the keys of its system prefix, then its own suffix.
 * Real chains are hashes of their tokens; distinct tokens, distinct keys.
 * Epoch 0 is the workload; others are the same shape under other keys, with
 * --prefixes shared prefixes, or (@shared false) every prompt its own. */
static void chain(const popts_t *o, uint64_t epoch, bool shared, uint64_t p, kvs_key_t *keys)
{
    uint64_t prefix = shared ? p % o->prefixes : p;
    for (uint64_t i = 0; i < o->prefix_blocks + o->suffix_blocks; i++) {
        uint64_t id = i < o->prefix_blocks ? (prefix << 32) | i : (1ull << 63) | (p << 32) | i;
        for (int w = 0; w < 4; w++) {
            uint64_t v = kvs_cli_mix(id * 4 + (uint64_t)w);
            /* Another epoch, other keys (epoch 0: the keys of earlier versions). */
            if (epoch != 0)
                v ^= kvs_cli_mix(~(epoch * 4 + (uint64_t)w));
            memcpy(&keys[i].bytes[8 * w], &v, 8);
        }
    }
}

static kvs_ctx_h client(const char *pool)
{
    char err[512];
    kvs_ctx_params_t cp = {.field_mask =
                               KVS_CTX_FIELD_POOL | KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT,
                           .pool = pool,
                           .transport = "ucx",
                           .errbuf = err,
                           .errbuf_len = sizeof(err)};
    kvs_ctx_h ctx = NULL;
    if (kvs_ctx_create(&cp, &ctx) != KVS_OK) {
        fprintf(stderr, "kvshare bench pool: %s\n", err);
        return NULL;
    }
    return ctx;
}

/* @copies prompts' worth of blocks: one set per request in flight. */
static void free_mem(const popts_t *o, uint8_t *mem)
{
    if (o->heap)
        free(mem);
    else
        kvs_mem_free(NULL, mem);
}

static kvs_pool_h make_pool(kvs_ctx_h ctx, const popts_t *o, uint64_t copies, uint8_t **mem_p)
{
    uint64_t n = (o->prefix_blocks + o->suffix_blocks) * copies;
    size_t bytes = (size_t)((n * o->block_bytes + 4095) / 4096 * 4096);
    uint8_t *mem = NULL;
    if (o->heap)
        mem = aligned_alloc(4096, bytes);
    else if (kvs_mem_alloc(ctx, bytes, KVS_MEM_HOST, (void **)&mem) != KVS_OK)
        mem = NULL;
    if (mem == NULL)
        return NULL;
    for (size_t j = 0; j < n * o->block_bytes; j += 8) {
        uint64_t x = kvs_cli_mix(j);
        memcpy(mem + j, &x, 8);
    }
    kvs_layout_t l = {.model_id = "kvshare-bench-pool",
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = 1,
                      .num_kv_heads = 8,
                      .head_dim = 128,
                      .tp_size = 1};
    kvs_segment_t seg = {
        .base = mem, .block_stride = o->block_bytes, .block_bytes = o->block_bytes};
    kvs_pool_params_t pp = {
        .layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = (uint32_t)n};
    kvs_pool_h pool = NULL;
    if (kvs_pool_create(ctx, &pp, &pool) != KVS_OK) {
        free_mem(o, mem);
        return NULL;
    }
    *mem_p = mem;
    return pool;
}

enum {
    O_JSON = 256,
    O_PREFAULT,
    O_POOL,
    O_NODES,
    O_PREFIXES,
    O_PREFIX_BLOCKS,
    O_PROMPTS,
    O_SUFFIX_BLOCKS,
    O_BLOCK_BYTES,
    O_DEPTH,
    O_WARM,
    O_ROUNDS,
    O_CLIENT_MEM,
};

static const struct option pool_options[] = {
    {"json", no_argument, NULL, O_JSON},
    {"prefault", no_argument, NULL, O_PREFAULT},
    {"pool", required_argument, NULL, O_POOL},
    {"nodes", required_argument, NULL, O_NODES},
    {"prefixes", required_argument, NULL, O_PREFIXES},
    {"prefix-blocks", required_argument, NULL, O_PREFIX_BLOCKS},
    {"prompts", required_argument, NULL, O_PROMPTS},
    {"suffix-blocks", required_argument, NULL, O_SUFFIX_BLOCKS},
    {"block-bytes", required_argument, NULL, O_BLOCK_BYTES},
    {"depth", required_argument, NULL, O_DEPTH},
    {"warm", no_argument, NULL, O_WARM},
    {"rounds", required_argument, NULL, O_ROUNDS},
    {"client-mem", required_argument, NULL, O_CLIENT_MEM},
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t pool_cmd = {"bench pool", usage, pool_options};

/* Returns -1 to go on, else the exit code: 0 after --help, 2 for a usage error. */
static int parse_opts(int argc, char **argv, popts_t *o)
{
    char name[32];
    int c;
    while ((c = kvs_cli_getopt(&pool_cmd, argc, argv)) != -1) {
        uint64_t *dst = NULL, max = 1u << 30;
        switch (c) {
        case O_JSON:
            o->json = true;
            continue;
        case O_PREFAULT:
            o->prefault = true;
            continue;
        case O_WARM:
            o->warm = true;
            continue;
        case O_POOL:
            o->pool = optarg;
            continue;
        case O_CLIENT_MEM:
            if (strcmp(optarg, "memfd") != 0 && strcmp(optarg, "heap") != 0)
                return kvs_cli_usage_error(&pool_cmd, "--client-mem '%s': memfd or heap", optarg);
            o->heap = strcmp(optarg, "heap") == 0;
            continue;
        case O_BLOCK_BYTES:
            if (!kvs_cli_parse_size("--block-bytes", optarg, 8, 1u << 30, &o->block_bytes))
                return 2;
            if (o->block_bytes % 8 != 0)
                return kvs_cli_usage_error(&pool_cmd, "--block-bytes '%s': not a multiple of 8",
                                           optarg);
            continue;
        case O_NODES:
            dst = &o->nodes;
            max = 16;
            break;
        case O_PREFIXES:
            dst = &o->prefixes;
            break;
        case O_PREFIX_BLOCKS:
            dst = &o->prefix_blocks;
            break;
        case O_PROMPTS:
            dst = &o->prompts;
            break;
        case O_SUFFIX_BLOCKS:
            dst = &o->suffix_blocks;
            break;
        case O_DEPTH:
            dst = &o->depth;
            max = 64;
            break;
        case O_ROUNDS:
            dst = &o->rounds;
            max = 100;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
        if (!kvs_cli_parse_u64(kvs_cli_opt_name(&pool_cmd, c, name, sizeof(name)), optarg, 1, max,
                               dst))
            return 2;
    }
    if (kvs_cli_no_operands(&pool_cmd, argc, argv) != 0)
        return 2;
    if (o->prefault && o->pool != NULL)
        return kvs_cli_usage_error(&pool_cmd, "--prefault starts its own nodes; not with --pool");
    if (o->warm && o->pool != NULL)
        return kvs_cli_usage_error(&pool_cmd,
                                   "--warm fills the nodes it starts (it knows their capacity); "
                                   "not with --pool");
    if (o->rounds > 1 && !o->warm)
        return kvs_cli_usage_error(&pool_cmd,
                                   "--rounds needs --warm (a put into fresh pages happens once)");
    if (o->rounds == 0)
        o->rounds = o->warm ? 5 : 1;
    return -1;
}

/* Waits for and frees a depth slot's request, if any: @st, or the
 * request's failure when @st is KVS_OK. */
static kvs_status_t slot_wait(kvs_request_h *req, kvs_status_t st)
{
    if (*req == NULL)
        return st;
    kvs_status_t w = kvs_request_wait(*req, -1);
    kvs_request_free(*req);
    *req = NULL;
    return st == KVS_OK ? w : st;
}

/* Puts @prompts prompts of @epoch from @pool's first prompt-sized set of
 * blocks, up to --depth requests in flight (kvs_put copies the keys and
 * ids; the blocks stay put throughout). */
static kvs_status_t put_prompts(const popts_t *o, kvs_pool_h pool, uint64_t epoch, bool shared,
                                uint64_t prompts, const uint32_t *ids, kvs_key_t *keys,
                                kvs_request_h *reqs)
{
    uint64_t per_prompt = o->prefix_blocks + o->suffix_blocks;
    kvs_status_t st = KVS_OK;
    for (uint64_t p = 0; p < prompts + o->depth; p++) {
        uint64_t s = p % o->depth;
        st = slot_wait(&reqs[s], st);
        if (p >= prompts || st != KVS_OK)
            continue;
        chain(o, epoch, shared, p, keys);
        st = kvs_put_ex(pool, keys, ids, per_prompt, NULL, &reqs[s]);
    }
    return st;
}

/* B serves every prompt of @epoch, in another order than they were put: a
 * lookup, then a fetch into slot s's blocks, waited for --depth prompts
 * later. Adds the blocks asked for to *asked_p; *hit_p: blocks fetched,
 * *s_p: seconds. Every request and lease is over when it returns. */
static kvs_status_t fetch_prompts(const popts_t *o, kvs_ctx_h b, kvs_pool_h pb, uint64_t epoch,
                                  const uint32_t *ids, kvs_key_t *keys, kvs_request_h *reqs,
                                  kvs_lease_h *leases, uint64_t *asked_p, uint64_t *hit_p,
                                  double *s_p)
{
    uint64_t per_prompt = o->prefix_blocks + o->suffix_blocks;
    kvs_status_t st = KVS_OK;
    double t0 = kvs_cli_now();
    for (uint64_t q = 0; q < o->prompts + o->depth; q++) {
        uint64_t s = q % o->depth;
        st = slot_wait(&reqs[s], st);
        kvs_lease_release(leases[s]);
        leases[s] = NULL;
        if (q >= o->prompts || st != KVS_OK)
            continue;
        uint64_t p = (q * 7919) % o->prompts;
        chain(o, epoch, true, p, keys);
        st = kvs_lookup(b, kvs_pool_layout_id(pb), keys, per_prompt, NULL, &leases[s]);
        if (st != KVS_OK)
            continue;
        size_t h = kvs_lease_hits(leases[s]);
        *asked_p += per_prompt;
        *hit_p += h;
        if (h > 0)
            st = kvs_fetch(leases[s], pb, ids + s * per_prompt, h, NULL, &reqs[s]);
    }
    *s_p = kvs_cli_now() - t0;
    return st;
}

/* --warm: every local node gets throw-away prompts (epochs 2.., no shared
 * prefixes: every block new) worth its whole capacity through a context that knows only that node,
 * so every slot eviction will hand out has been written once. */
static kvs_status_t fill_nodes(const popts_t *o, const char *list, uint64_t cap,
                               const uint32_t *ids, kvs_key_t *keys, kvs_request_h *reqs,
                               double *bytes_p)
{
    uint64_t per_prompt = o->prefix_blocks + o->suffix_blocks;
    uint64_t prompt_bytes = per_prompt * o->block_bytes;
    uint64_t prompts = (cap + prompt_bytes - 1) / prompt_bytes + 1;
    char *nodes = strdup(list);
    if (nodes == NULL)
        return KVS_ERR_NO_MEMORY;
    kvs_status_t st = KVS_OK;
    uint64_t n = 0;
    for (char *save = NULL, *node = strtok_r(nodes, ",", &save); node != NULL && st == KVS_OK;
         node = strtok_r(NULL, ",", &save), n++) {
        kvs_ctx_h c = client(node);
        uint8_t *mem = NULL;
        kvs_pool_h pool = c ? make_pool(c, o, 1, &mem) : NULL;
        if (pool == NULL)
            st = KVS_ERR_NO_MEMORY;
        else
            st = put_prompts(o, pool, 2 + n, false, prompts, ids, keys, reqs);
        /* What the node stored, by its own answers: the fill counts only if
         * it passed the node's capacity (every slot eviction hands out has
         * then been written). */
        kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_PUTS};
        if (st == KVS_OK)
            st = kvs_stats_query(c, &ks);
        uint64_t stored = (ks.put_pulled_blocks + ks.put_pushed_blocks) * o->block_bytes;
        if (st == KVS_OK && stored < cap) {
            fprintf(stderr,
                    "kvshare bench pool: filling %s: it stored %llu bytes, below its capacity "
                    "of %llu; its arena has not cycled\n",
                    node, (unsigned long long)stored, (unsigned long long)cap);
            st = KVS_ERR_NO_SPACE;
        } else if (st != KVS_OK) {
            fprintf(stderr, "kvshare bench pool: filling %s: %s\n", node, kvs_status_string(st));
        }
        *bytes_p += (double)stored;
        kvs_pool_destroy(pool);
        kvs_ctx_destroy(c);
        free_mem(o, mem);
    }
    free(nodes);
    return st;
    return -1;
}

int kvs_cli_bench_pool(int argc, char **argv)
{
    popts_t o = {.nodes = 3,
                 .prefixes = 8,
                 .prefix_blocks = 128,
                 .prompts = 64,
                 .suffix_blocks = 32,
                 .block_bytes = 65536,
                 .depth = 4};
    int prc = parse_opts(argc, argv, &o);
    if (prc >= 0)
        return prc;
    /* Local nodes and this client share one token (auth is on by default);
     * with --pool the user's KVSHARE_AUTH_TOKEN_FILE must match theirs. */
    if (!kvs_cli_run_token("bench pool"))
        return 1;
    uint64_t per_prompt = o.prefix_blocks + o.suffix_blocks;
    uint64_t unique = o.prefixes * o.prefix_blocks + o.prompts * o.suffix_blocks;
    double unique_bytes = (double)unique * (double)o.block_bytes;

    /* Nodes: the given list, or N local ones that can hold everything even
     * if placement puts it all on one (first-key placement can skew). */
    pid_t pids[16];
    int tos[16];
    FILE *froms[16];
    size_t started = 0;
    char list[16 * 64] = "";
    int rc = 1;
    uint64_t cap_bytes = 0;
    double *put_r = NULL, *fetch_r = NULL; /* each round's figures */
    if (o.pool == NULL) {
        char self[4096], cap[32];
        ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (sl <= 0)
            return 1;
        self[sl] = '\0';
        cap_bytes = (uint64_t)(unique_bytes * 1.5) + (64u << 20);
        snprintf(cap, sizeof(cap), "%llu", (unsigned long long)cap_bytes);
        /* --prefault: nodes as a long-running one is, its arena made and its
         * pages in at start (KVSHARE_SLOT_BYTES, KVSHARE_PREFAULT). */
        char slot[32];
        snprintf(slot, sizeof(slot), "%llu", (unsigned long long)o.block_bytes);
        if (o.prefault)
            setenv("KVSHARE_PREFAULT", "1", 1);
        for (uint64_t n = 0; n < o.nodes; n++) {
            char *sargv[] = {self,
                             "serve",
                             "--listen",
                             "127.0.0.1:0",
                             "--capacity",
                             cap,
                             o.prefault ? "--slot-bytes" : NULL,
                             slot,
                             NULL};
            pids[started] = kvs_cli_spawn(sargv, &tos[started], &froms[started]);
            char line[512] = "", addr[300] = "";
            if (pids[started] < 0 || fgets(line, sizeof(line), froms[started]) == NULL ||
                sscanf(line, "ready %299s", addr) != 1) {
                fprintf(stderr, "kvshare bench pool: a local node did not start\n");
                started += pids[started] > 0;
                goto out_nodes;
            }
            started++;
            size_t l = strlen(list);
            if (n + 1 == o.nodes && o.prefault)
                unsetenv("KVSHARE_PREFAULT");
            snprintf(list + l, sizeof(list) - l, "%s%s", l ? "," : "", addr);
        }
        o.pool = list;
    }
    if (!o.json)
        fprintf(stderr,
                "bench pool: %llu prompts = one of %llu prefixes x %llu blocks + %llu own "
                "blocks, %llu-byte blocks, pool %s\n",
                (unsigned long long)o.prompts, (unsigned long long)o.prefixes,
                (unsigned long long)o.prefix_blocks, (unsigned long long)o.suffix_blocks,
                (unsigned long long)o.block_bytes, o.pool);

    kvs_ctx_h a = client(o.pool), b = client(o.pool);
    uint8_t *mema = NULL, *memb = NULL;
    kvs_pool_h pa = a ? make_pool(a, &o, 1, &mema) : NULL;
    kvs_pool_h pb = b ? make_pool(b, &o, o.depth, &memb) : NULL;
    kvs_key_t *keys = malloc(per_prompt * sizeof(*keys));
    uint32_t *ids = malloc(o.depth * per_prompt * sizeof(*ids));
    /* Requests in flight, one slot per depth; fetches hold their lease. */
    kvs_request_h *reqs = calloc(o.depth, sizeof(*reqs));
    kvs_lease_h *leases = calloc(o.depth, sizeof(*leases));
    if (pa == NULL || pb == NULL || keys == NULL || ids == NULL || reqs == NULL || leases == NULL) {
        fprintf(stderr, "kvshare bench pool: client setup failed\n");
        goto out;
    }
    /* Slot s's blocks: ids + s * per_prompt (in B; A puts from slot 0's). */
    for (uint64_t s = 0; s < o.depth; s++)
        for (uint64_t i = 0; i < per_prompt; i++)
            ids[s * per_prompt + i] = (uint32_t)(s * per_prompt + per_prompt - 1 - i);

    /* Both clients connect to every node first: the figures are of puts
     * and fetches, not of first contact (kvs_peer_connect; docs/transport.md). */
    char *nodes = strdup(o.pool);
    if (nodes == NULL)
        goto out;
    for (char *save = NULL, *n = strtok_r(nodes, ",", &save); n != NULL;
         n = strtok_r(NULL, ",", &save)) {
        kvs_status_t cs = kvs_peer_connect(a, kvs_pool_layout_id(pa), n, NULL);
        if (cs == KVS_OK)
            cs = kvs_peer_connect(b, kvs_pool_layout_id(pb), n, NULL);
        if (cs != KVS_OK) {
            fprintf(stderr, "kvshare bench pool: connecting to %s: %s\n", n, kvs_status_string(cs));
            free(nodes);
            goto out;
        }
    }
    free(nodes);

    /* 1. Client A offloads every prompt, up to --depth puts in flight: into
     * arenas never written before (put_gbps_cold). */
    double t0 = kvs_cli_now();
    kvs_status_t st = put_prompts(&o, pa, 0, true, o.prompts, ids, keys, reqs);
    double put_s = kvs_cli_now() - t0, put_cold_s = put_s, fill_bytes = 0, fill_s = 0;
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench pool: put: %s\n", kvs_status_string(st));
        goto out;
    }
    /* --warm: fill every node (untimed), then rounds of the same prompts
     * under new keys, into slots eviction hands back, each round's puts
     * followed by B's fetches of them. */
    uint64_t asked = 0, hit = 0;
    put_r = calloc(o.rounds, sizeof(double));
    fetch_r = calloc(o.rounds, sizeof(double));
    if (put_r == NULL || fetch_r == NULL) {
        fprintf(stderr, "kvshare bench pool: out of memory\n");
        goto out;
    }
    if (o.warm) {
        t0 = kvs_cli_now();
        st = fill_nodes(&o, o.pool, cap_bytes, ids, keys, reqs, &fill_bytes);
        fill_s = kvs_cli_now() - t0;
        if (st != KVS_OK)
            goto out;
    }
    for (uint64_t r = 0; r < o.rounds; r++) {
        /* Round keys: epochs past the fill's (2 + node, at most 17). */
        uint64_t epoch = o.warm ? 32 + r : 0;
        if (o.warm) {
            t0 = kvs_cli_now();
            st = put_prompts(&o, pa, epoch, true, o.prompts, ids, keys, reqs);
            put_s = kvs_cli_now() - t0;
            if (st != KVS_OK) {
                fprintf(stderr, "kvshare bench pool: warm put, round %llu: %s\n",
                        (unsigned long long)r + 1, kvs_status_string(st));
                goto out;
            }
        }
        put_r[r] = unique_bytes / put_s / 1e9;
        double f_s = 0;
        uint64_t f_hit = 0;
        st = fetch_prompts(&o, b, pb, epoch, ids, keys, reqs, leases, &asked, &f_hit, &f_s);
        if (st != KVS_OK) {
            fprintf(stderr, "kvshare bench pool: fetch, round %llu: %s\n",
                    (unsigned long long)r + 1, kvs_status_string(st));
            goto out;
        }
        hit += f_hit;
        fetch_r[r] = (double)f_hit * (double)o.block_bytes / f_s / 1e9;
        if (!o.json && o.rounds > 1)
            fprintf(stderr, "bench pool: round %llu of %llu: put %.2f GB/s, fetch %.2f GB/s\n",
                    (unsigned long long)r + 1, (unsigned long long)o.rounds, put_r[r], fetch_r[r]);
    }
    /* The rounds' medians (kvs_cli_median sorts: on copies). */
    double *sorted = calloc(2 * o.rounds, sizeof(double));
    if (sorted == NULL)
        goto out;
    memcpy(sorted, put_r, o.rounds * sizeof(double));
    memcpy(sorted + o.rounds, fetch_r, o.rounds * sizeof(double));
    double put_gbps = kvs_cli_median(sorted, (int)o.rounds);
    double fetch_gbps = kvs_cli_median(sorted + o.rounds, (int)o.rounds);
    free(sorted);
    double put_gbps_cold = unique_bytes / put_cold_s / 1e9;
    double hit_rate = asked ? (double)hit / (double)asked : 0;
    double touch_gbps = first_touch_gbps(unique_bytes);
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "pool");
        cJSON_AddNumberToObject(j, "nodes", (double)started);
        cJSON_AddNumberToObject(j, "prompts", (double)o.prompts);
        cJSON_AddNumberToObject(j, "prefixes", (double)o.prefixes);
        cJSON_AddNumberToObject(j, "prefix_blocks", (double)o.prefix_blocks);
        cJSON_AddNumberToObject(j, "suffix_blocks", (double)o.suffix_blocks);
        cJSON_AddNumberToObject(j, "block_bytes", (double)o.block_bytes);
        cJSON_AddBoolToObject(j, "prefault", o.prefault);
        cJSON_AddBoolToObject(j, "warm", o.warm);
        cJSON_AddNumberToObject(j, "depth", (double)o.depth);
        cJSON_AddStringToObject(j, "client_mem", o.heap ? "heap" : "memfd");
        /* The kernel's huge pages for memfds (the nodes' arenas): "never"
         * makes puts several times slower on a VM (util/thp.c). */
        char thp[32];
        cJSON_AddStringToObject(j, "shmem_thp", kvs__shmem_thp(thp, sizeof(thp)));
        /* put_gbps and ratio_put_fetch: warm puts with --warm, else the cold
         * ones (put_gbps_cold, always the first timed puts, into fresh pages). */
        cJSON_AddStringToObject(j, "put", o.warm ? "warm" : "cold");
        kvs_cli_json_num(j, "put_gbps", put_gbps, 3);
        kvs_cli_json_num(j, "put_gbps_cold", put_gbps_cold, 3);
        kvs_cli_json_num(j, "fetch_gbps", fetch_gbps, 3);
        kvs_cli_json_num(j, "ratio_put_fetch", fetch_gbps > 0 ? put_gbps / fetch_gbps : 0.0, 3);
        kvs_cli_json_num(j, "ratio_put_fetch_cold",
                         fetch_gbps > 0 ? put_gbps_cold / fetch_gbps : 0.0, 3);
        /* The cold puts beside one core's first writes of as many bytes. */
        if (touch_gbps > 0) {
            kvs_cli_json_num(j, "first_touch_gbps", touch_gbps, 3);
            kvs_cli_json_num(j, "ratio_put_cold_first_touch", put_gbps_cold / touch_gbps, 3);
        }
        /* Each round's figures, in order, and its own ratio; the figures
         * above are their medians. */
        cJSON_AddNumberToObject(j, "rounds", (double)o.rounds);
        cJSON *pr = cJSON_AddArrayToObject(j, "put_gbps_rounds");
        cJSON *fr = cJSON_AddArrayToObject(j, "fetch_gbps_rounds");
        cJSON *rr = cJSON_AddArrayToObject(j, "ratio_put_fetch_rounds");
        for (uint64_t r = 0; r < o.rounds; r++) {
            cJSON_AddItemToArray(pr, cJSON_CreateNumber(round(put_r[r] * 1e3) / 1e3));
            cJSON_AddItemToArray(fr, cJSON_CreateNumber(round(fetch_r[r] * 1e3) / 1e3));
            double ratio = fetch_r[r] > 0 ? put_r[r] / fetch_r[r] : 0.0;
            cJSON_AddItemToArray(rr, cJSON_CreateNumber(round(ratio * 1e3) / 1e3));
        }
        if (o.warm) {
            cJSON_AddNumberToObject(j, "node_capacity_bytes", (double)cap_bytes);
            cJSON_AddNumberToObject(j, "fill_bytes", fill_bytes);
            kvs_cli_json_num(j, "fill_s", fill_s, 3);
        }
        kvs_cli_json_num(j, "hit_rate", hit_rate, 3);
        rc = kvs_cli_print_json("bench pool", j);
        goto out;
    }
    if (o.warm)
        printf("  put    %8.2f GB/s  cold (into arena pages never written before)\n"
               "         after filling the nodes with %.0f MiB (%.1f s, untimed):\n",
               put_gbps_cold, fill_bytes / 1048576.0, fill_s);
    char thp[32];
    kvs__shmem_thp(thp, sizeof(thp));
    if (kvs__shmem_thp_off(thp))
        printf("  (memfds get no huge pages here: shmem_enabled %s; see docs/transport.md)\n", thp);
    printf("  put    %8.2f GB/s  (%.0f MiB stored, prefixes once)\n"
           "  fetch  %8.2f GB/s  (%llu blocks)\n",
           put_gbps, unique_bytes / 1048576.0, fetch_gbps, (unsigned long long)(hit / o.rounds));
    if (o.rounds > 1)
        printf("         (medians of %llu rounds, each its puts then its fetches; put/fetch "
               "%.2f)\n",
               (unsigned long long)o.rounds, fetch_gbps > 0 ? put_gbps / fetch_gbps : 0.0);
    printf("  hit rate %6.3f     (blocks fetched / blocks asked for)\n", hit_rate);
    if (touch_gbps > 0)
        printf("  first touch %4.2f GB/s  one core writing as many bytes into never-touched memfd\n"
               "                         pages: the bound of a cold put (cold put / it: %.2f)\n",
               touch_gbps, put_gbps_cold / touch_gbps);
    rc = 0;
out:
    free(put_r);
    free(fetch_r);
    for (uint64_t s = 0; reqs != NULL && s < o.depth; s++)
        kvs_request_free(reqs[s]);
    for (uint64_t s = 0; leases != NULL && s < o.depth; s++)
        kvs_lease_release(leases[s]);
    free(reqs);
    free(leases);
    kvs_pool_destroy(pa);
    kvs_pool_destroy(pb);
    kvs_ctx_destroy(a);
    kvs_ctx_destroy(b);
    free_mem(&o, mema);
    free_mem(&o, memb);
    free(keys);
    free(ids);
out_nodes:
    for (size_t n = 0; n < started; n++) {
        close(tos[n]); /* stdin closes: the node stops cleanly */
        waitpid(pids[n], NULL, 0);
        fclose(froms[n]);
    }
    return rc;
}
