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

int kvs_cli_keys(int argc, char **argv)
{
    kvs_hasher_params_t hp = {.field_mask = 0};
    kvs_chain_params_t cp = {.field_mask = 0};
    uint64_t block_tokens = 16;
    token_list_t tl = {0};
    bool from_stdin = false, opts_done = false;
    int rc = 2; /* until the options and tokens are read: a usage error */
    int pushed;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
        if (!opts_done && strcmp(a, "--") == 0) {
            opts_done = true;
        } else if (opts_done) {
            goto token;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            free(tl.v);
            return 0;
        } else if (strcmp(a, "--algo") == 0) {
            if (v == NULL || (strcmp(v, "sha256_cbor") != 0 && strcmp(v, "xxhash_cbor") != 0)) {
                fprintf(stderr, "kvshare keys: --algo '%s': accepted: sha256_cbor, xxhash_cbor\n",
                        v ? v : "");
                goto out;
            }
            hp.field_mask |= KVS_HASHER_FIELD_ALGO;
            hp.algo = strcmp(v, "sha256_cbor") == 0 ? KVS_HASH_SHA256_CBOR : KVS_HASH_XXHASH_CBOR;
            i++;
        } else if (strcmp(a, "--seed") == 0) {
            if (v == NULL) {
                fprintf(stderr, "kvshare keys: --seed needs a value\n");
                goto out;
            }
            hp.field_mask |= KVS_HASHER_FIELD_SEED;
            hp.seed = v;
            i++;
        } else if (strcmp(a, "--block-tokens") == 0) {
            if (!kvs_cli_parse_u64("--block-tokens", v, 1, 1u << 20, &block_tokens))
                goto out;
            i++;
        } else if (strcmp(a, "--cache-salt") == 0 || strcmp(a, "--lora-name") == 0) {
            if (v == NULL) {
                fprintf(stderr, "kvshare keys: %s needs a value\n", a);
                goto out;
            }
            if (a[2] == 'c') {
                cp.field_mask |= KVS_CHAIN_FIELD_CACHE_SALT;
                cp.cache_salt = v;
            } else {
                cp.field_mask |= KVS_CHAIN_FIELD_LORA_NAME;
                cp.lora_name = v;
            }
            i++;
        } else if (strcmp(a, "-") == 0) {
            from_stdin = true;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "kvshare keys: unknown option '%s'\n", a);
            usage(stderr);
            goto out;
        } else {
        token:
            pushed = push_token(&tl, a);
            if (pushed != 0) {
                rc = pushed;
                goto out;
            }
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
        fprintf(stderr, "kvshare keys: no tokens (give TOKEN... or '-' to read stdin)\n");
        usage(stderr);
        goto out;
    }
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
