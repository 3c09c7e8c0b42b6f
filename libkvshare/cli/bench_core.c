/* SPDX-License-Identifier: Apache-2.0 */
/* bench_core.c - `kvshare bench keys|lookup`: the core's hashing and lookup speed. */
#include "cli.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bench_opts {
    bool json;
    uint64_t repeats;
    uint64_t blocks;
    uint64_t chain;
    uint64_t block_tokens;
    kvs_hash_algo_t algo;
} bench_opts_t;

static void usage(FILE *f, const char *name)
{
    const bool keys = strcmp(name, "keys") == 0;
    fprintf(f, "usage: kvshare bench %s [--blocks N] [--chain N] [--repeats N]%s [--json]\n", name,
            keys ? " [--block-tokens N] [--algo sha256_cbor|xxhash_cbor]" : "");
    if (keys)
        fprintf(f, "\nBlock keys hashed per second, beside raw SHA-256 of the same bytes.\n"
                   "Defaults: --blocks 65536 --chain 4096 --repeats 5 --block-tokens 16\n"
                   "          --algo sha256_cbor\n");
    else
        fprintf(f, "\nLongest-prefix lookups per second over chains of --chain blocks in a\n"
                   "store of --blocks blocks.\n"
                   "Defaults: --blocks 1048576 --chain 4096 --repeats 5\n");
}

static void usage_keys(FILE *f)
{
    usage(f, "keys");
}

static void usage_lookup(FILE *f)
{
    usage(f, "lookup");
}

enum { O_JSON = 256, O_REPEATS, O_BLOCKS, O_CHAIN, O_BLOCK_TOKENS, O_ALGO };

#define COMMON_OPTIONS                                                                             \
    {"json", no_argument, NULL, O_JSON}, {"repeats", required_argument, NULL, O_REPEATS},          \
        {"blocks", required_argument, NULL, O_BLOCKS},                                             \
        {"chain", required_argument, NULL, O_CHAIN}, KVS_CLI_OPT_HELP_ENTRY

static const struct option keys_options[] = {
    COMMON_OPTIONS,
    {"block-tokens", required_argument, NULL, O_BLOCK_TOKENS},
    {"algo", required_argument, NULL, O_ALGO},
    KVS_CLI_OPT_END};
static const struct option lookup_options[] = {COMMON_OPTIONS, KVS_CLI_OPT_END};
static const kvs_cli_cmd_t keys_cmd = {"bench keys", usage_keys, keys_options};
static const kvs_cli_cmd_t lookup_cmd = {"bench lookup", usage_lookup, lookup_options};

/* Returns -1 to go on, else the exit code: 0 after --help, 2 for a usage error. */
static int parse_opts(int argc, char **argv, bench_opts_t *o, const kvs_cli_cmd_t *cmd)
{
    int c;
    while ((c = kvs_cli_getopt(cmd, argc, argv)) != -1) {
        switch (c) {
        case O_JSON:
            o->json = true;
            break;
        case O_REPEATS:
            if (!kvs_cli_parse_u64("--repeats", optarg, 1, 1000, &o->repeats))
                return 2;
            break;
        case O_BLOCKS:
            if (!kvs_cli_parse_u64("--blocks", optarg, 1, 1u << 26, &o->blocks))
                return 2;
            break;
        case O_CHAIN:
            if (!kvs_cli_parse_u64("--chain", optarg, 1, 1u << 20, &o->chain))
                return 2;
            break;
        case O_BLOCK_TOKENS:
            if (!kvs_cli_parse_u64("--block-tokens", optarg, 1, 4096, &o->block_tokens))
                return 2;
            break;
        case O_ALGO:
            if (strcmp(optarg, "sha256_cbor") != 0 && strcmp(optarg, "xxhash_cbor") != 0)
                return kvs_cli_usage_error(cmd, "--algo '%s': accepted: sha256_cbor, xxhash_cbor",
                                           optarg);
            o->algo = optarg[0] == 's' ? KVS_HASH_SHA256_CBOR : KVS_HASH_XXHASH_CBOR;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    return kvs_cli_no_operands(cmd, argc, argv) != 0 ? 2 : -1;
}

/* xorshift: reproducible distinct inputs without libc rand's lock. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int kvs_cli_bench_keys(int argc, char **argv)
{
    bench_opts_t o = {.repeats = 5, .blocks = 1u << 16, .chain = 4096, .block_tokens = 16};
    int prc = parse_opts(argc, argv, &o, &keys_cmd);
    if (prc >= 0)
        return prc;
    size_t ntok = (size_t)(o.blocks * o.block_tokens);
    uint32_t *tokens = malloc(ntok * sizeof(*tokens));
    kvs_key_t *keys = malloc((size_t)o.blocks * sizeof(*keys));
    double *t = calloc((size_t)o.repeats, sizeof(double));
    double *tref = calloc((size_t)o.repeats, sizeof(double));
    kvs_hasher_h h = NULL;
    int rc = 1;
    if (!tokens || !keys || !t || !tref)
        goto out;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < ntok; i++)
        tokens[i] = (uint32_t)(rng_next(&seed) % 152064); /* a Qwen-sized vocabulary */
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                            KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .algo = o.algo,
                              .seed = "0",
                              .block_tokens = (uint32_t)o.block_tokens};
    kvs_status_t st = kvs_hasher_create(&hp, &h);
    if (st != KVS_OK) {
        rc = kvs_cli_fail("bench keys", st);
        goto out;
    }
    /* The anchor: OpenSSL SHA-256 alone over inputs of the same size as one
     * block's CBOR (header + parent + tokens), the floor our encoding adds to. */
    size_t in_len = 1 + 2 + kvs_hasher_digest_len(h) + 3 + (size_t)o.block_tokens * 5 + 1;
    uint8_t *ref_in = calloc(1, in_len);
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    if (!ref_in || !md || !mc) {
        free(ref_in);
        EVP_MD_free(md);
        EVP_MD_CTX_free(mc);
        goto out;
    }
    for (uint64_t r = 0; r <= o.repeats; r++) { /* r == 0 warms up */
        double t0 = kvs_cli_now();
        for (uint64_t b = 0; b < o.blocks; b += o.chain) {
            uint64_t n = o.blocks - b < o.chain ? o.blocks - b : o.chain;
            size_t got;
            st = kvs_hasher_chain(h, NULL, tokens + b * o.block_tokens,
                                  (size_t)(n * o.block_tokens), keys + b, (size_t)n, &got);
            if (st != KVS_OK)
                break;
        }
        double t1 = kvs_cli_now();
        uint8_t out[32];
        unsigned int ol;
        for (uint64_t b = 0; b < o.blocks; b++) {
            ref_in[0] = (uint8_t)b;
            EVP_DigestInit_ex2(mc, md, NULL);
            EVP_DigestUpdate(mc, ref_in, in_len);
            EVP_DigestFinal_ex(mc, out, &ol);
            ref_in[1] ^= out[0];
        }
        double t2 = kvs_cli_now();
        if (r > 0) {
            t[r - 1] = t1 - t0;
            tref[r - 1] = t2 - t1;
        }
    }
    free(ref_in);
    EVP_MD_free(md);
    EVP_MD_CTX_free(mc);
    if (st != KVS_OK) {
        rc = kvs_cli_fail("bench keys", st);
        goto out;
    }
    double med = kvs_cli_median(t, (int)o.repeats), medref = kvs_cli_median(tref, (int)o.repeats);
    double bps = (double)o.blocks / med, refbps = (double)o.blocks / medref;
    const char *algo = o.algo == KVS_HASH_SHA256_CBOR ? "sha256_cbor" : "xxhash_cbor";
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "keys");
        cJSON_AddStringToObject(j, "algo", algo);
        cJSON_AddNumberToObject(j, "block_tokens", (double)o.block_tokens);
        cJSON_AddNumberToObject(j, "blocks", (double)o.blocks);
        cJSON_AddNumberToObject(j, "chain", (double)o.chain);
        cJSON_AddNumberToObject(j, "repeats", (double)o.repeats);
        cJSON_AddNumberToObject(j, "threads", 1);
        kvs_cli_json_num(j, "blocks_per_s", bps, 0);
        kvs_cli_json_num(j, "sha256_only_blocks_per_s", refbps, 0);
        kvs_cli_json_num(j, "ratio_sha256_only", bps / refbps, 3);
        rc = kvs_cli_print_json("bench keys", j);
        goto out;
    }
    printf("bench keys: algo %s, %llu-token blocks, %llu blocks, 1 thread, median of %llu\n"
           "  kvshare keys        %12.0f blocks/s\n"
           "  OpenSSL SHA-256 only %11.0f blocks/s (same input size, no CBOR, no chaining)\n"
           "  ratio               %12.3f\n",
           algo, (unsigned long long)o.block_tokens, (unsigned long long)o.blocks,
           (unsigned long long)o.repeats, bps, refbps, bps / refbps);
    rc = 0;
out:
    kvs_hasher_destroy(h);
    free(tokens);
    free(keys);
    free(t);
    free(tref);
    return rc;
}

int kvs_cli_bench_lookup(int argc, char **argv)
{
    bench_opts_t o = {.repeats = 5, .blocks = 1u << 20, .chain = 4096};
    int prc = parse_opts(argc, argv, &o, &lookup_cmd);
    if (prc >= 0)
        return prc;
    if (o.chain > o.blocks)
        o.chain = o.blocks;
    int rc = 1;
    kvs_ctx_h ctx = NULL;
    kvs_pool_h pool = NULL;
    uint8_t *mem = NULL;
    kvs_key_t *keys = NULL;
    uint32_t *ids = NULL;
    double *t = calloc((size_t)o.repeats, sizeof(double));
    double *tp = calloc((size_t)o.repeats, sizeof(double));
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_NO_ENV};
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK || !t || !tp) {
        rc = kvs_cli_fail("bench lookup", st);
        goto out;
    }
    /* Zero-copy entries over a small dummy pool: the catalog is what is
     * measured, not the memory the blocks would occupy. */
    mem = calloc((size_t)o.blocks, 16);
    keys = malloc((size_t)o.blocks * sizeof(*keys));
    ids = malloc((size_t)o.blocks * sizeof(*ids));
    if (!mem || !keys || !ids)
        goto out;
    kvs_layout_t lay = {.model_id = "bench",
                        .dtype = KVS_DTYPE_BF16,
                        .block_tokens = 16,
                        .num_layers = 1,
                        .num_kv_heads = 1,
                        .head_dim = 1,
                        .tp_size = 1};
    kvs_segment_t seg = {.base = mem, .block_stride = 16, .block_bytes = 16};
    kvs_pool_params_t pp = {
        .layout = &lay, .segments = &seg, .num_segments = 1, .num_blocks = (uint32_t)o.blocks};
    st = kvs_pool_create(ctx, &pp, &pool);
    if (st != KVS_OK) {
        rc = kvs_cli_fail("bench lookup: pool", st);
        goto out;
    }
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    for (uint64_t i = 0; i < o.blocks; i++) {
        for (int w = 0; w < 4; w++) {
            uint64_t x = rng_next(&seed);
            memcpy(&keys[i].bytes[8 * w], &x, 8);
        }
        ids[i] = (uint32_t)i;
    }
    double p0 = kvs_cli_now();
    st = kvs_publish(pool, keys, ids, (size_t)o.blocks, KVS_PUBLISH_ZERO_COPY, NULL);
    double publish_s = kvs_cli_now() - p0;
    if (st != KVS_OK) {
        rc = kvs_cli_fail("bench lookup: publish", st);
        goto out;
    }
    uint64_t layout_id = kvs_pool_layout_id(pool);
    uint64_t nchains = o.blocks / o.chain;
    /* Chains in a shuffled order, so successive lookups do not walk memory
     * in publish order. */
    uint64_t looked = 0;
    kvs_lookup_params_t probe = {.field_mask = KVS_LOOKUP_FIELD_NO_LEASE};
    for (uint64_t r = 0; r <= o.repeats; r++) {
        uint64_t s2 = 12345 + r;
        double t0 = kvs_cli_now();
        looked = 0;
        for (uint64_t c = 0; c < nchains; c++) {
            uint64_t ch = rng_next(&s2) % nchains;
            kvs_lease_h lease;
            st = kvs_lookup(ctx, layout_id, keys + ch * o.chain, (size_t)o.chain, NULL, &lease);
            if (st != KVS_OK)
                break;
            looked += kvs_lease_hits(lease);
            kvs_lease_release(lease);
        }
        double t1 = kvs_cli_now();
        for (uint64_t c = 0; c < nchains && st == KVS_OK; c++) {
            uint64_t ch = rng_next(&s2) % nchains;
            kvs_lease_h lease;
            st = kvs_lookup(ctx, layout_id, keys + ch * o.chain, (size_t)o.chain, &probe, &lease);
            if (st == KVS_OK)
                kvs_lease_release(lease);
        }
        double t2 = kvs_cli_now();
        if (r > 0) {
            t[r - 1] = t1 - t0;
            tp[r - 1] = t2 - t1;
        }
        if (st != KVS_OK)
            break;
    }
    if (st != KVS_OK) {
        rc = kvs_cli_fail("bench lookup", st);
        goto out;
    }
    if (looked != nchains * o.chain) {
        fprintf(stderr, "kvshare bench lookup: expected %llu hits, got %llu\n",
                (unsigned long long)(nchains * o.chain), (unsigned long long)looked);
        goto out;
    }
    double kps = (double)looked / kvs_cli_median(t, (int)o.repeats);
    double pkps = (double)looked / kvs_cli_median(tp, (int)o.repeats);
    double pub = (double)o.blocks / publish_s;
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "lookup");
        cJSON_AddNumberToObject(j, "store_blocks", (double)o.blocks);
        cJSON_AddNumberToObject(j, "chain", (double)o.chain);
        cJSON_AddNumberToObject(j, "repeats", (double)o.repeats);
        cJSON_AddNumberToObject(j, "threads", 1);
        kvs_cli_json_num(j, "keys_per_s", kps, 0);
        kvs_cli_json_num(j, "probe_keys_per_s", pkps, 0);
        kvs_cli_json_num(j, "publish_keys_per_s", pub, 0);
        rc = kvs_cli_print_json("bench lookup", j);
        goto out;
    }
    printf("bench lookup: store of %llu blocks, %llu-block chains, 1 thread, median of %llu\n"
           "  lookup + lease + release %12.0f keys/s\n"
           "  lookup, probe only       %12.0f keys/s\n"
           "  publish (zero-copy)      %12.0f keys/s\n",
           (unsigned long long)o.blocks, (unsigned long long)o.chain, (unsigned long long)o.repeats,
           kps, pkps, pub);
    rc = 0;
out:
    kvs_pool_destroy(pool);
    kvs_ctx_destroy(ctx);
    free(mem);
    free(keys);
    free(ids);
    free(t);
    free(tp);
    return rc;
}
