/* SPDX-License-Identifier: Apache-2.0 */
/* main.c - kvshare-engine: runs the example engine as prefill, decode, both, or a recompute
 * baseline. */
#include "engine.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: kvshare-engine [options]\n"
    "  --role R            both (default): prefill+publish, then fetch+decode, in one process\n"
    "                      prefill: prefill, publish, print its JSON line and then\n"
    "                      'ready HOST:PORT' (the KVSHARE_LISTEN address peers reach),\n"
    "                      hold the blocks until stdin closes\n"
    "                      decode: fetch the prefix (from --peer), prefill the rest, decode\n"
    "                      recompute: no kvshare; the time-to-first-token baseline\n"
    "  --prompt-tokens N   prompt length (default 4096); tokens are random from --prompt-seed\n"
    "  --prompt-seed S     (default 1)\n"
    "  --diverge-at P      tokens from position P on come from another seed: a prompt\n"
    "                      sharing its first P tokens with the --prompt-seed one\n"
    "  --decode N          tokens to generate (default 16)\n"
    "  --peer HOST:PORT    decode: the prefill engine to fetch from (needs the transport);\n"
    "                      repeat it to fetch the rank's share from each prefill TP rank\n"
    "                      that holds part of it (the shortest fetch counts)\n"
    "  --zero-copy         publish from the KV cache itself instead of copying\n"
    "  --offload           prefill/both: also offload the full blocks to the cache pool\n"
    "                      (KVSHARE_POOL) with kvs_put_ex; a failure is reported in the JSON\n"
    "                      (\"offload\") and is not fatal\n"
    "  --check             both: also recompute locally and require identical tokens\n"
    "  --fetch-again       decode: after decoding, free the sequence and fetch the same\n"
    "                      prefix again on the same engine (connection and pool warm),\n"
    "                      three times; the JSON line adds warm_lookup_ms, warm_fetch_ms,\n"
    "                      warm_fetch_gbps of the one with the median fetch time\n"
    "  --dlopen[=PATH]     reach libkvshare by dlopen (default libkvshare.so.0;\n"
    "                      also KVSHARE_ENGINE_DLOPEN=1 and KVSHARE_ENGINE_LIB=PATH)\n"
    "  --tp-rank R --tp-size N  publish/fetch only TP rank R's share of the KV heads (the\n"
    "                      engine still computes the whole model); default 0 of 1\n"
    "  --kv-layout L       memory layout of that share: nhd (default) or hnd\n"
    "  --dump-slice PATH   decode, tp-size > 1: write the fetched share to PATH and stop\n"
    "                      (no prefill, no decode: the JSON line has no tokens)\n"
    "  --gather PATH       decode: add another rank's share written by --dump-slice\n"
    "                      (repeatable) before prefill; fails unless the file fits\n"
    "  --layers N --d-model N --heads N --kv-heads N --head-dim N --ffn N --vocab N\n"
    "  --threads N         prefill threads (default: online CPUs)\n"
    "  --weight-seed S     (default 42)\n"
    "Prints one JSON object per engine run on stdout.\n";

#define MAX_PEERS 16

typedef struct opts {
    const char *role;
    const char *peers[MAX_PEERS], *gather[MAX_PEERS];
    size_t npeers, ngather;
    const char *dump_slice;
    size_t prompt_tokens, decode, diverge_at;
    uint64_t prompt_seed;
    bool zero_copy, check, use_dlopen, offload, fetch_again;
    const char *dl_path;
    engine_config_t cfg;
} opts_t;

static bool parse_u64(const char *name, const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-' || v > max) {
        fprintf(stderr, "kvshare-engine: %s '%s': expected an integer 0..%llu\n", name, s,
                (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}

/* The TP options against each other and the model; 0 or 2 with a message. */
static int check_tp(const opts_t *o)
{
    const engine_config_t *c = &o->cfg;
    uint32_t h0, nh;
    if (c->tp_rank >= c->tp_size) {
        fprintf(stderr, "kvshare-engine: --tp-rank %u: must be below --tp-size %u\n", c->tp_rank,
                c->tp_size);
        return 2;
    }
    if (!engine_tp_heads(c->n_kv_heads, c->tp_rank, c->tp_size, &h0, &nh)) {
        fprintf(stderr,
                "kvshare-engine: --tp-size %u: the %u KV heads (--kv-heads) do not split over %u "
                "ranks (need kv-heads %% tp-size == 0, or tp-size %% kv-heads == 0 when tp-size "
                "> kv-heads)\n",
                c->tp_size, c->n_kv_heads, c->tp_size);
        return 2;
    }
    const bool decode = strcmp(o->role, "decode") == 0;
    if (c->tp_size > 1 && strcmp(o->role, "both") == 0) {
        fprintf(stderr,
                "kvshare-engine: --tp-size %u: --role both runs one engine of each "
                "kind; run TP ranks as --role prefill / --role decode (kvshare demo "
                "--prefill-tp N --decode-tp M does)\n",
                c->tp_size);
        return 2;
    }
    if ((o->dump_slice != NULL || o->ngather > 0) && !decode) {
        fprintf(stderr, "kvshare-engine: --%s: only with --role decode\n",
                o->dump_slice != NULL ? "dump-slice" : "gather");
        return 2;
    }
    if (o->dump_slice != NULL && o->ngather > 0) {
        fprintf(stderr, "kvshare-engine: --dump-slice and --gather: a rank either hands its "
                        "share on or gathers the others'\n");
        return 2;
    }
    return 0;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"role", required_argument, NULL, 'r'},
                                             {"prompt-tokens", required_argument, NULL, 'p'},
                                             {"prompt-seed", required_argument, NULL, 'S'},
                                             {"decode", required_argument, NULL, 'n'},
                                             {"peer", required_argument, NULL, 'P'},
                                             {"zero-copy", no_argument, NULL, 'z'},
                                             {"offload", no_argument, NULL, 'o'},
                                             {"diverge-at", required_argument, NULL, 'v'},
                                             {"check", no_argument, NULL, 'c'},
                                             {"fetch-again", no_argument, NULL, 'A'},
                                             {"dlopen", optional_argument, NULL, 'D'},
                                             {"layers", required_argument, NULL, 'L'},
                                             {"d-model", required_argument, NULL, 'd'},
                                             {"heads", required_argument, NULL, 'H'},
                                             {"kv-heads", required_argument, NULL, 'K'},
                                             {"head-dim", required_argument, NULL, 'E'},
                                             {"ffn", required_argument, NULL, 'F'},
                                             {"vocab", required_argument, NULL, 'V'},
                                             {"threads", required_argument, NULL, 't'},
                                             {"weight-seed", required_argument, NULL, 'W'},
                                             {"tp-rank", required_argument, NULL, 'R'},
                                             {"tp-size", required_argument, NULL, 'T'},
                                             {"kv-layout", required_argument, NULL, 'Y'},
                                             {"dump-slice", required_argument, NULL, 'X'},
                                             {"gather", required_argument, NULL, 'G'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *env = getenv("KVSHARE_ENGINE_DLOPEN");
    o->use_dlopen = env != NULL && strcmp(env, "1") == 0;
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *name = ch == '?' ? "" : longopts[0].name;
        for (const struct option *lo = longopts; lo->name != NULL; lo++)
            if (lo->val == ch)
                name = lo->name;
        switch (ch) {
        case 'r':
            o->role = optarg;
            break;
        case 'z':
            o->zero_copy = true;
            break;
        case 'c':
            o->check = true;
            break;
        case 'o':
            o->offload = true;
            break;
        case 'A':
            o->fetch_again = true;
            break;
        case 'D':
            o->use_dlopen = true;
            o->dl_path = optarg;
            break;
        case 'P':
        case 'G':
            if ((ch == 'P' ? o->npeers : o->ngather) == MAX_PEERS) {
                fprintf(stderr, "kvshare-engine: --%s: at most %d\n", name, MAX_PEERS);
                return 2;
            }
            if (ch == 'P')
                o->peers[o->npeers++] = optarg;
            else
                o->gather[o->ngather++] = optarg;
            break;
        case 'X':
            o->dump_slice = optarg;
            break;
        case 'Y':
            if (strcmp(optarg, "nhd") == 0 || strcmp(optarg, "NHD") == 0) {
                o->cfg.kv_layout = KVS_KV_NHD;
            } else if (strcmp(optarg, "hnd") == 0 || strcmp(optarg, "HND") == 0) {
                o->cfg.kv_layout = KVS_KV_HND;
            } else {
                fprintf(stderr, "kvshare-engine: --kv-layout '%s': accepted: nhd, hnd\n", optarg);
                return 2;
            }
            break;
        case 'R':
        case 'T':
            if (!parse_u64(name, optarg, 1u << 16, &v))
                return 2;
            if (ch == 'T' && v == 0) {
                fprintf(stderr, "kvshare-engine: --tp-size '0': expected 1 or more\n");
                return 2;
            }
            *(ch == 'R' ? &o->cfg.tp_rank : &o->cfg.tp_size) = (uint32_t)v;
            break;
        case 'h':
            fputs(usage, stdout);
            exit(0);
        case 'p':
        case 'n':
        case 'v':
            if (!parse_u64(name, optarg, 1u << 24, &v))
                return 2;
            *(ch == 'p' ? &o->prompt_tokens : ch == 'n' ? &o->decode : &o->diverge_at) = (size_t)v;
            break;
        case 'S':
        case 'W':
            if (!parse_u64(name, optarg, UINT64_MAX, &v))
                return 2;
            *(ch == 'S' ? &o->prompt_seed : &o->cfg.weight_seed) = v;
            break;
        case 'L':
        case 'd':
        case 'H':
        case 'K':
        case 'E':
        case 'F':
        case 'V':
        case 't':
            if (!parse_u64(name, optarg, 1u << 20, &v))
                return 2;
            {
                uint32_t *f = ch == 'L'   ? &o->cfg.n_layers
                              : ch == 'd' ? &o->cfg.d_model
                              : ch == 'H' ? &o->cfg.n_heads
                              : ch == 'K' ? &o->cfg.n_kv_heads
                              : ch == 'E' ? &o->cfg.head_dim
                              : ch == 'F' ? &o->cfg.ffn_dim
                              : ch == 'V' ? &o->cfg.vocab
                                          : NULL;
                if (f != NULL)
                    *f = (uint32_t)v;
                else
                    o->cfg.threads = (unsigned)v;
            }
            break;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind != argc || o->prompt_tokens == 0) {
        fputs(usage, stderr);
        return 2;
    }
    const char *roles[] = {"both", "prefill", "decode", "recompute"};
    bool known = false;
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        known = known || strcmp(o->role, roles[i]) == 0;
    if (!known) {
        fprintf(stderr, "kvshare-engine: --role '%s': accepted: both, prefill, decode, recompute\n",
                o->role);
        return 2;
    }
    return check_tp(o);
}

/* What --offload did, for the JSON line (NULL status: not asked for). */
typedef struct offload_result {
    const char *status;
    size_t blocks;
    double ms;
} offload_result_t;

/* A warm fetch of the same prefix by the same engine (--fetch-again): the
 * median of three. */
typedef struct warm_result {
    bool ran;
    double lookup_ms, fetch_ms, gbps;
    size_t hit_tokens;
} warm_result_t;

static void print_run(const opts_t *o, const char *role, const engine_stats_t *stp,
                      const uint32_t *out, size_t n, const offload_result_t *off,
                      const warm_result_t *warm)
{
    engine_stats_t st = *stp;
    const engine_config_t *c = &o->cfg;
    printf("{\"role\":\"%s\",\"prompt_tokens\":%zu,\"hit_tokens\":%zu,\"computed_tokens\":%zu,"
           "\"lookup_ms\":%.3f,\"fetch_ms\":%.3f,\"prefill_ms\":%.3f,\"ttft_ms\":%.3f,"
           "\"fetch_bytes\":%llu,\"fetch_gbps\":%.3f,"
           "\"decode_tokens\":%zu,\"decode_ms_per_token\":%.3f,",
           role, st.prompt_tokens, st.hit_tokens, st.computed_tokens, st.lookup_s * 1e3,
           st.fetch_s * 1e3, st.prefill_s * 1e3, st.ttft_s * 1e3,
           (unsigned long long)st.fetched_bytes,
           st.fetch_s > 0 ? (double)st.fetched_bytes / st.fetch_s / 1e9 : 0.0, st.decoded_tokens,
           st.decoded_tokens ? st.decode_s * 1e3 / (double)st.decoded_tokens : 0.0);
    /* Status texts are our own fixed strings: no JSON escaping needed. */
    if (off != NULL && off->status != NULL)
        printf("\"offload\":\"%s\",\"offload_blocks\":%zu,\"offload_ms\":%.3f,", off->status,
               off->blocks, off->ms);
    /* Only off the defaults (TP 1, NHD), so the usual line stays as it was. */
    if (c->tp_size > 1 || c->kv_layout != KVS_KV_NHD)
        printf("\"tp_rank\":%u,\"tp_size\":%u,\"kv_layout\":\"%s\",", c->tp_rank, c->tp_size,
               c->kv_layout == KVS_KV_HND ? "hnd" : "nhd");
    if (o->ngather > 0)
        printf("\"gather_ms\":%.3f,\"gathered_tokens\":%zu,", st.gather_s * 1e3,
               st.gathered_tokens);
    if (warm != NULL && warm->ran)
        printf("\"warm_hit_tokens\":%zu,\"warm_lookup_ms\":%.3f,\"warm_fetch_ms\":%.3f,"
               "\"warm_fetch_gbps\":%.3f,",
               warm->hit_tokens, warm->lookup_ms, warm->fetch_ms, warm->gbps);
    printf("\"tokens\":[");
    for (size_t i = 0; i < n; i++)
        printf("%s%u", i ? "," : "", out[i]);
    printf("]}\n");
    fflush(stdout);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* One engine run over the prompt: optional prefix fetch, prefill, optional
 * publish, decode. Returns 0, or 1 with a message on stderr. */
typedef struct run {
    const char *role;
    bool fetch, publish, offload, fetch_again;
    const kvs_lookup_params_t *lookup;
} run_t;

/* Loads the prompt's prefix: one lookup and fetch per --peer (each prefill
 * TP rank holding part of this rank's share), or one with @lookup as given.
 * Stops at the first failure (the engine then holds no fetched KV). */
static kvs_status_t load_prefix(const opts_t *o, engine_seq_h seq,
                                const kvs_lookup_params_t *lookup, size_t *hit_p)
{
    if (o->npeers == 0 || lookup == NULL)
        return engine_load_prefix(seq, lookup, hit_p);
    kvs_status_t st = KVS_OK;
    for (size_t i = 0; i < o->npeers && st == KVS_OK; i++) {
        kvs_lookup_params_t lp = *lookup;
        lp.peer = o->peers[i];
        st = engine_load_prefix(seq, &lp, hit_p);
    }
    return st;
}

/* Frees @seq (its blocks go back to the engine, pages already touched) and
 * fetches the same prompt's prefix again into a new sequence: what a warm
 * fetch costs once the peer is known. Three times, and the one with the
 * median fetch time counts: one fetch of a few milliseconds meets one of a
 * shared host's stalls now and then (the anchor it is compared with is a
 * median of passes too). */
#define WARM_FETCHES 3
static kvs_status_t fetch_again(const opts_t *o, engine_h eng, engine_seq_h *seq,
                                const uint32_t *prompt, size_t n, const kvs_lookup_params_t *lookup,
                                warm_result_t *w)
{
    warm_result_t runs[WARM_FETCHES];
    for (int i = 0; i < WARM_FETCHES; i++) {
        engine_seq_destroy(*seq);
        *seq = NULL;
        kvs_status_t st = engine_seq_create(eng, prompt, n, seq);
        size_t hit = 0;
        if (st == KVS_OK)
            st = load_prefix(o, *seq, lookup, &hit);
        if (st != KVS_OK)
            return st;
        engine_stats_t s;
        engine_seq_stats(*seq, &s);
        runs[i] =
            (warm_result_t){.ran = true,
                            .lookup_ms = s.lookup_s * 1e3,
                            .fetch_ms = s.fetch_s * 1e3,
                            .gbps = s.fetch_s > 0 ? (double)s.fetched_bytes / s.fetch_s / 1e9 : 0.0,
                            .hit_tokens = hit};
    }
    /* The median of three by fetch time: the one neither below both others
     * nor above both. */
    int m = 0;
    for (int i = 0; i < WARM_FETCHES; i++) {
        int below = 0, above = 0;
        for (int j = 0; j < WARM_FETCHES; j++) {
            below += j != i && runs[j].fetch_ms < runs[i].fetch_ms;
            above += j != i && runs[j].fetch_ms > runs[i].fetch_ms;
        }
        if (below <= WARM_FETCHES / 2 && above <= WARM_FETCHES / 2)
            m = i;
    }
    *w = runs[m];
    return KVS_OK;
}

static int run_engine(const opts_t *o, const run_t *r, const engine_kvs_t *api, kvs_ctx_h ctx,
                      const uint32_t *prompt, uint32_t *out, engine_h *eng_p, engine_seq_h *seq_p)
{
    engine_h eng;
    engine_seq_h seq;
    kvs_status_t st = engine_create(&o->cfg, api, ctx, &eng);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare-engine: %s: engine_create: %s\n", r->role,
                api ? api->status_string(st) : "failed");
        return 1;
    }
    /* Connect to the named peer now, in the background: the handshake
     * overlaps building the sequence and hashing its keys, and is off the
     * fetch's critical path. A failure shows at the lookup. */
    if (r->fetch && r->lookup != NULL && (r->lookup->field_mask & KVS_LOOKUP_FIELD_PEER))
        for (size_t i = 0; i < o->npeers; i++)
            (void)engine_connect(eng, o->peers[i]);
    st = engine_seq_create(eng, prompt, o->prompt_tokens, &seq);
    if (st != KVS_OK) {
        engine_destroy(eng);
        fprintf(stderr, "kvshare-engine: %s: engine_seq_create failed (%d)\n", r->role, st);
        return 1;
    }
    size_t hit = 0;
    if (r->fetch) {
        st = load_prefix(o, seq, r->lookup, &hit);
        if (st != KVS_OK) /* not fatal: the prefill below computes everything */
            fprintf(stderr, "kvshare-engine: %s: prefix fetch: %s; recomputing\n", r->role,
                    api->status_string(st));
    }
    if (r->fetch && o->dump_slice != NULL) {
        /* A decode TP rank that hands its share to the rank that decodes:
         * no prefill, no tokens. A rank that fetched nothing says so. */
        st = hit > 0 ? engine_slice_save(seq, o->dump_slice) : KVS_ERR_NOT_FOUND;
        if (st != KVS_OK) {
            fprintf(stderr, "kvshare-engine: %s: --dump-slice %s: %s\n", r->role, o->dump_slice,
                    hit > 0 ? api->status_string(st) : "nothing was fetched");
            engine_seq_destroy(seq);
            engine_destroy(eng);
            return 1;
        }
        engine_stats_t stats;
        engine_seq_stats(seq, &stats);
        print_run(o, r->role, &stats, out, 0, NULL, NULL);
        *eng_p = eng;
        *seq_p = seq;
        return 0;
    }
    for (size_t i = 0; r->fetch && i < o->ngather; i++) {
        /* The other ranks' shares: a file that does not fit is an error,
         * never a silent recompute (the demo checks what was gathered). */
        size_t blocks = 0;
        st = engine_slice_load(seq, o->gather[i], &blocks);
        if (st != KVS_OK) {
            fprintf(stderr, "kvshare-engine: %s: --gather %s: %s\n", r->role, o->gather[i],
                    st == KVS_ERR_INVALID_PARAM ? "not a share of this model's KV for this prompt"
                                                : api->status_string(st));
            engine_seq_destroy(seq);
            engine_destroy(eng);
            return 1;
        }
    }
    st = engine_prefill(seq);
    if (st == KVS_OK && r->publish)
        st = engine_publish(seq, o->zero_copy ? ENGINE_PUBLISH_ZERO_COPY : 0, NULL);
    offload_result_t off = {0};
    if (st == KVS_OK && r->offload) {
        /* Not fatal: the peer still serves the published blocks; the JSON
         * says why the pool did not get them. */
        const double t0 = now_ms();
        kvs_status_t ost = engine_offload(seq, &off.blocks);
        off.ms = now_ms() - t0;
        off.status = ost == KVS_OK ? "ok" : api->status_string(ost);
        if (ost != KVS_OK)
            fprintf(stderr, "kvshare-engine: %s: offload to the cache pool: %s\n", r->role,
                    off.status);
    }
    if (st == KVS_OK)
        st = engine_decode(seq, o->decode, out);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare-engine: %s: %s\n", r->role,
                api ? api->status_string(st) : "engine error");
        engine_seq_destroy(seq);
        engine_destroy(eng);
        return 1;
    }
    engine_stats_t stats;
    engine_seq_stats(seq, &stats);
    warm_result_t warm = {0};
    if (r->fetch_again) {
        st = fetch_again(o, eng, &seq, prompt, o->prompt_tokens, r->lookup, &warm);
        if (st != KVS_OK) {
            fprintf(stderr, "kvshare-engine: %s: second fetch: %s\n", r->role,
                    api->status_string(st));
            engine_seq_destroy(seq);
            engine_destroy(eng);
            return 1;
        }
    }
    print_run(o, r->role, &stats, out, o->decode, &off, &warm);
    *eng_p = eng;
    *seq_p = seq;
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = {.role = "both", .prompt_tokens = 4096, .decode = 16, .prompt_seed = 1};
    engine_config_default(&o.cfg);
    int rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc;
    /* Enough blocks for the prompt and the generated tokens. */
    o.cfg.num_blocks =
        (uint32_t)((o.prompt_tokens + o.decode + o.cfg.block_tokens) / o.cfg.block_tokens);

    uint32_t *prompt = malloc(o.prompt_tokens * sizeof(*prompt));
    uint32_t *out[3] = {calloc(o.decode + 1, sizeof(uint32_t)),
                        calloc(o.decode + 1, sizeof(uint32_t)),
                        calloc(o.decode + 1, sizeof(uint32_t))};
    if (prompt == NULL || out[0] == NULL || out[1] == NULL || out[2] == NULL) {
        fprintf(stderr, "kvshare-engine: out of memory\n");
        return 1;
    }
    uint64_t rng = o.prompt_seed;
    for (size_t i = 0; i < o.prompt_tokens; i++) {
        /* From --diverge-at on, another stream: same prefix, different rest. */
        if (o.diverge_at > 0 && i == o.diverge_at)
            rng = ~o.prompt_seed;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (uint32_t)((rng >> 33) % o.cfg.vocab);
    }

    /* kvshare is optional to an engine: recompute needs none of it. */
    engine_kvs_t api;
    kvs_ctx_h ctx = NULL;
    const bool want_kvs = strcmp(o.role, "recompute") != 0;
    char err[256] = "";
    if (want_kvs) {
        if (o.use_dlopen) {
            if (engine_kvs_dlopen(&api, o.dl_path, err, sizeof(err)) != KVS_OK) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
        } else {
            engine_kvs_linked(&api);
        }
        /* Settings (KVSHARE_LISTEN, KVSHARE_CAPACITY, ...) come from the env. */
        kvs_ctx_params_t cp = {
            .field_mask = KVS_CTX_FIELD_ERRBUF, .errbuf = err, .errbuf_len = sizeof(err)};
        kvs_status_t st = api.ctx_create(&cp, &ctx);
        if (st != KVS_OK) {
            fprintf(stderr, "kvshare-engine: kvs_ctx_create: %s: %s\n", api.status_string(st), err);
            engine_kvs_close(&api);
            return 1;
        }
    }

    engine_h eng[3] = {NULL, NULL, NULL};
    engine_seq_h seq[3] = {NULL, NULL, NULL};
    kvs_lookup_params_t lp = {0};
    if (o.npeers > 0) {
        lp.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER;
        lp.sources = KVS_SOURCE_PEER;
        lp.peer = o.peers[0];
    }
    rc = 0;
    if (strcmp(o.role, "recompute") == 0) {
        rc = run_engine(&o, &(run_t){.role = "recompute"}, NULL, NULL, prompt, out[0], &eng[0],
                        &seq[0]);
    } else if (strcmp(o.role, "prefill") == 0) {
        rc = run_engine(&o, &(run_t){.role = "prefill", .publish = true, .offload = o.offload},
                        &api, ctx, prompt, out[0], &eng[0], &seq[0]);
        /* Say where peers reach us (KVSHARE_LISTEN=host:0 binds any free
         * port), only now that the blocks are published: whoever started us
         * can send decoders as soon as it reads this line. */
        char addr[300];
        if (rc == 0) {
            if (api.ctx_listen_addr(ctx, addr, sizeof(addr)) != KVS_OK)
                snprintf(addr, sizeof(addr), "(not listening: set KVSHARE_LISTEN=HOST:PORT)");
            printf("ready %s\n", addr);
            fflush(stdout);
        }
        /* Hold the published blocks until whoever started us closes stdin. */
        while (rc == 0 && getchar() != EOF)
            ;
    } else if (strcmp(o.role, "decode") == 0) {
        rc = run_engine(
            &o,
            &(run_t){.role = "decode", .fetch = true, .fetch_again = o.fetch_again, .lookup = &lp},
            &api, ctx, prompt, out[0], &eng[0], &seq[0]);
    } else { /* both */
        rc = run_engine(&o, &(run_t){.role = "prefill", .publish = true, .offload = o.offload},
                        &api, ctx, prompt, out[0], &eng[0], &seq[0]);
        o.cfg.alloc_seed += 1; /* the decode engine scatters its blocks differently */
        if (rc == 0)
            rc = run_engine(&o, &(run_t){.role = "decode", .fetch = true}, &api, ctx, prompt,
                            out[1], &eng[1], &seq[1]);
        if (rc == 0 && o.check) {
            rc = run_engine(&o, &(run_t){.role = "recompute"}, NULL, NULL, prompt, out[2], &eng[2],
                            &seq[2]);
            if (rc == 0 && memcmp(out[1], out[2], o.decode * sizeof(uint32_t)) != 0) {
                fprintf(stderr, "kvshare-engine: fetched and recomputed tokens differ\n");
                rc = 1;
            }
        }
    }
    for (int i = 2; i >= 0; i--) {
        engine_seq_destroy(seq[i]);
        engine_destroy(eng[i]);
    }
    if (want_kvs) {
        api.ctx_destroy(ctx);
        engine_kvs_close(&api);
    }
    free(prompt);
    for (int i = 0; i < 3; i++)
        free(out[i]);
    return rc;
}
