/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_keys.c - `kvshare keys`: print the block keys vLLM would compute for a prompt. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvshare keys [--algo sha256_cbor|xxhash_cbor] [--seed S] [--block-tokens N]\n"
            "                    [--cache-salt S] [--lora-name S] TOKEN...\n"
            "\n"
            "Prints one line per full block, as vLLM's prefix cache hashes it:\n"
            "  <block> <first token>-<last token> <int64 as in KV events> <hex key>\n"
            "--algo is vLLM's prefix_caching_hash_algo (default sha256_cbor); --block-tokens\n"
            "its block size (default 16).\n"
            "--seed is vLLM's PYTHONHASHSEED (default: $PYTHONHASHSEED, else 0).\n"
            "A partial last block is not hashed (vLLM hashes full blocks only).\n"
            "Tokens may also be read from stdin, whitespace-separated, with '-'.\n"
            "Exit status: 0 done, 1 a failure while hashing, 2 a usage error (a bad option or\n"
            "token, or neither TOKEN nor '-').\n");
}

typedef struct token_list {
    uint32_t *v;
    size_t n, cap;
} token_list_t;

/* Parses one token and appends it; returns 0, or the exit code: 2 for a bad
 * token, 1 when out of memory (both reported). */
static int push_token(token_list_t *t, const char *s)
{
    uint64_t v;
    if (!kvs_cli_parse_u64("TOKEN", s, 0, UINT32_MAX, &v))
        return 2;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        uint32_t *nv = realloc(t->v, cap * sizeof(*nv));
        if (nv == NULL) {
            fprintf(stderr, "kvshare keys: out of memory\n");
            return 1;
        }
        t->v = nv;
        t->cap = cap;
    }
    t->v[t->n++] = (uint32_t)v;
    return 0;
}

enum { O_ALGO = 256, O_SEED, O_BLOCK_TOKENS, O_CACHE_SALT, O_LORA_NAME };

int kvs_cli_keys(int argc, char **argv)
{
    static const struct option opts[] = {{"algo", required_argument, NULL, O_ALGO},
                                         {"seed", required_argument, NULL, O_SEED},
                                         {"block-tokens", required_argument, NULL, O_BLOCK_TOKENS},
                                         {"cache-salt", required_argument, NULL, O_CACHE_SALT},
                                         {"lora-name", required_argument, NULL, O_LORA_NAME},
                                         KVS_CLI_OPT_HELP_ENTRY,
                                         KVS_CLI_OPT_END};
    const kvs_cli_cmd_t cmd = {"keys", usage, opts};
    kvs_hasher_params_t hp = {.field_mask = 0};
    kvs_chain_params_t cp = {.field_mask = 0};
    uint64_t block_tokens = 16;
    token_list_t tl = {0};
    bool from_stdin = false;
    int rc = 2; /* until the options and tokens are read: a usage error */
    int pushed, c;

    /* 1. Parse: options, then the operands (TOKEN... and '-'). */
    while ((c = kvs_cli_getopt(&cmd, argc, argv)) != -1) {
        switch (c) {
        case O_ALGO:
            if (strcmp(optarg, "sha256_cbor") != 0 && strcmp(optarg, "xxhash_cbor") != 0)
                return kvs_cli_usage_error(&cmd, "--algo '%s': accepted: sha256_cbor, xxhash_cbor",
                                           optarg);
            hp.field_mask |= KVS_HASHER_FIELD_ALGO;
            hp.algo =
                strcmp(optarg, "sha256_cbor") == 0 ? KVS_HASH_SHA256_CBOR : KVS_HASH_XXHASH_CBOR;
            break;
        case O_SEED:
            hp.field_mask |= KVS_HASHER_FIELD_SEED;
            hp.seed = optarg;
            break;
        case O_BLOCK_TOKENS:
            if (!kvs_cli_parse_u64("--block-tokens", optarg, 1, 1u << 20, &block_tokens))
                return 2;
            break;
        case O_CACHE_SALT:
            cp.field_mask |= KVS_CHAIN_FIELD_CACHE_SALT;
            cp.cache_salt = optarg;
            break;
        case O_LORA_NAME:
            cp.field_mask |= KVS_CHAIN_FIELD_LORA_NAME;
            cp.lora_name = optarg;
            break;
        default: /* KVS_CLI_OPT_HELP, KVS_CLI_OPT_BAD */
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (strcmp(argv[i], "-") == 0) {
            from_stdin = true;
            continue;
        }
        pushed = push_token(&tl, argv[i]);
        if (pushed != 0) {
            rc = pushed;
            goto out;
        }
    }
    if (from_stdin) {
        char word[32];
        while (scanf("%31s", word) == 1) {
            pushed = push_token(&tl, word);
            if (pushed != 0) {
                rc = pushed;
                goto out;
            }
        }
    }
    if (tl.n == 0 && !from_stdin) { /* an empty stdin ('-') is zero tokens, no error */
        kvs_cli_usage_error(&cmd, "no tokens (give TOKEN... or '-' to read stdin)");
        usage(stderr);
        goto out;
    }

    /* 2. Run and print. */
    rc = 1; /* from here on, a failure is a runtime one */
    const uint32_t *tokens = tl.v;
    size_t ntok = tl.n;

    hp.field_mask |= KVS_HASHER_FIELD_BLOCK_TOKENS;
    hp.block_tokens = (uint32_t)block_tokens;
    kvs_hasher_h h;
    kvs_status_t st = kvs_hasher_create(&hp, &h);
    if (st != KVS_OK) {
        rc = kvs_cli_fail("keys", st);
        goto out;
    }
    size_t nblocks = ntok / block_tokens;
    kvs_key_t *keys = calloc(nblocks ? nblocks : 1, sizeof(*keys));
    size_t nkeys = 0;
    st = keys ? kvs_hasher_chain(h, &cp, tokens, ntok, keys, nblocks, &nkeys) : KVS_ERR_NO_MEMORY;
    if (st != KVS_OK) {
        rc = kvs_cli_fail("keys", st);
    } else {
        size_t dl = kvs_hasher_digest_len(h);
        char hex[2 * KVS_KEY_BYTES + 1];
        for (size_t b = 0; b < nkeys; b++) {
            kvs_key_format_hex(&keys[b], dl, hex, sizeof(hex));
            printf("%zu %zu-%zu %llu %s\n", b, b * block_tokens, (b + 1) * block_tokens - 1,
                   (unsigned long long)kvs_key_to_u64(&keys[b], dl), hex);
        }
        fflush(stdout); /* keep the note after the lines it refers to */
        if (ntok % block_tokens)
            fprintf(stderr, "kvshare keys: %zu trailing tokens form a partial block (not hashed)\n",
                    (size_t)(ntok % block_tokens));
        rc = 0;
    }
    free(keys);
    kvs_hasher_destroy(h);
out:
    free(tl.v);
    return rc;
}
