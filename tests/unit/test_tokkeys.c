/* SPDX-License-Identifier: Apache-2.0 */
/* test_tokkeys.c - token mode: keys chained from events' token_ids equal a prompt's keys. */
#include "ixalloc_int.h"
#include "tokkeys_int.h"

#include <criterion/criterion.h>
#include <kvshare.h>
#include <string.h>

#define BS 4

static kvs_hasher_h h;
static kvs__tk_t *tk;

static void setup(void)
{
    kvs_hasher_params_t p = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_BLOCK_TOKENS |
                                           KVS_HASHER_FIELD_SEED,
                             .algo = KVS_HASH_XXHASH_CBOR,
                             .seed = "3",
                             .block_tokens = BS};
    cr_assert_eq(kvs_hasher_create(&p, &h), KVS_OK);
    tk = kvs__tk_create(h, BS, 0);
    cr_assert_not_null(tk);
}

static void teardown(void)
{
    kvs__tk_destroy(tk);
    kvs_hasher_destroy(h);
}

TestSuite(tokkeys, .init = setup, .fini = teardown);

/* The prompt's keys as /v1/score computes them. */
static size_t prompt_keys(const uint32_t *tok, size_t n, const char *lora, const char *salt,
                          uint64_t *out)
{
    kvs_chain_params_t cp = {.field_mask = 0};
    if (lora) {
        cp.field_mask |= KVS_CHAIN_FIELD_LORA_NAME;
        cp.lora_name = lora;
    }
    if (salt) {
        cp.field_mask |= KVS_CHAIN_FIELD_CACHE_SALT;
        cp.cache_salt = salt;
    }
    kvs_key_t keys[64];
    size_t nk = 0;
    cr_assert_eq(kvs_hasher_chain(h, &cp, tok, n, keys, 64, &nk), KVS_OK);
    for (size_t i = 0; i < nk; i++)
        out[i] = kvs_key_to_u64(&keys[i], kvs_hasher_digest_len(h));
    return nk;
}

static kvs__ev_t stored(const uint64_t *engine, size_t n, const uint32_t *tok, const uint64_t *par)
{
    kvs__ev_t e = {.type = KVS__EV_STORED,
                   .hashes = engine,
                   .nhashes = n,
                   .tokens = tok,
                   .ntokens = tok ? n * BS : 0,
                   .block_size = BS};
    if (par) {
        e.has_parent = true;
        e.parent = *par;
    }
    return e;
}

static void set_str(kvs__ev_str_t *s, const char *v)
{
    s->ptr = v;
    s->len = strlen(v);
}

/* Random engine hashes (not reproducible), real tokens: a prompt split over two events,
 * chained through the parent's engine hash, keys as the whole prompt's. */
Test(tokkeys, events_chained_by_parent_give_the_prompts_keys)
{
    uint32_t tok[10 * BS];
    for (size_t i = 0; i < 10 * BS; i++)
        tok[i] = (uint32_t)(i * 7919u + 13u);
    uint64_t engine[10], want[10], got[10];
    for (uint64_t i = 0; i < 10; i++)
        engine[i] = (UINT64_C(0x9e3779b97f4a7c15) * (i + 1)) ^ UINT64_C(0xabcdef);
    cr_assert_eq(prompt_keys(tok, 10 * BS, NULL, NULL, want), 10);
    size_t n = 0;
    kvs__ev_t a = stored(engine, 6, tok, NULL);
    cr_assert_eq(kvs__tk_stored(tk, 3, &a, got, &n), KVS__TK_OK);
    cr_assert_eq(n, 6);
    kvs__ev_t b = stored(engine + 6, 4, tok + 6 * BS, &engine[5]);
    cr_assert_eq(kvs__tk_stored(tk, 3, &b, got + 6, &n), KVS__TK_OK);
    cr_assert_eq(n, 4);
    cr_assert_arr_eq(got, want, sizeof(want));
    cr_assert_eq(kvs__tk_entries(tk), 10);
    /* The same blocks under other engine hashes on another pod: the same keys. */
    uint64_t engine2[10], got2[10];
    for (int i = 0; i < 10; i++)
        engine2[i] = (uint64_t)i * 31u + 5u;
    kvs__ev_t c = stored(engine2, 10, tok, NULL);
    cr_assert_eq(kvs__tk_stored(tk, 4, &c, got2, &n), KVS__TK_OK);
    cr_assert_arr_eq(got2, want, sizeof(want));
}

Test(tokkeys, lora_and_salt_take_part)
{
    uint32_t tok[3 * BS];
    for (size_t i = 0; i < 3 * BS; i++)
        tok[i] = (uint32_t)i;
    uint64_t engine[3] = {11, 12, 13}, got[3], want[3], plain[3];
    prompt_keys(tok, 3 * BS, "ad1", "s1", want);
    prompt_keys(tok, 3 * BS, NULL, NULL, plain);
    kvs__ev_t e = stored(engine, 3, tok, NULL);
    set_str(&e.lora_name, "ad1");
    set_str(&e.salt, "s1");
    size_t n;
    cr_assert_eq(kvs__tk_stored(tk, 0, &e, got, &n), KVS__TK_OK);
    cr_assert_eq(n, 3);
    cr_assert_arr_eq(got, want, sizeof(want));
    for (int i = 0; i < 3; i++)
        cr_assert_neq(got[i], plain[i]);
    /* A continuation of a LoRA chain keeps the LoRA but never the salt. */
    uint64_t e4 = 14, got4, want4[4];
    uint32_t tok4[4 * BS];
    memcpy(tok4, tok, sizeof(tok));
    for (size_t i = 3 * BS; i < 4 * BS; i++)
        tok4[i] = 99;
    prompt_keys(tok4, 4 * BS, "ad1", "s1", want4);
    kvs__ev_t f = stored(&e4, 1, tok4 + 3 * BS, &engine[2]);
    set_str(&f.lora_name, "ad1");
    cr_assert_eq(kvs__tk_stored(tk, 0, &f, &got4, &n), KVS__TK_OK);
    cr_assert_eq(got4, want4[3]);
}

Test(tokkeys, what_cannot_be_keyed_is_refused_and_maps_nothing)
{
    uint32_t tok[2 * BS] = {0};
    uint64_t engine[2] = {1, 2}, out[2], unknown = 77;
    size_t n = 9;
    kvs__ev_t orphan = stored(engine, 2, tok, &unknown);
    cr_assert_eq(kvs__tk_stored(tk, 0, &orphan, out, &n), KVS__TK_ORPHAN);
    cr_assert_eq(n, 0);
    kvs__ev_t shape = stored(engine, 2, tok, NULL);
    shape.ntokens = 2 * BS - 1;
    cr_assert_eq(kvs__tk_stored(tk, 0, &shape, out, &n), KVS__TK_SHAPE);
    kvs__ev_t other_bs = stored(engine, 2, tok, NULL);
    other_bs.block_size = 2 * BS;
    cr_assert_eq(kvs__tk_stored(tk, 0, &other_bs, out, &n), KVS__TK_SHAPE);
    kvs__ev_t mm = stored(engine, 2, tok, NULL);
    mm.extra_other = true;
    cr_assert_eq(kvs__tk_stored(tk, 0, &mm, out, &n), KVS__TK_EXTRA);
    uint64_t par = 1;
    kvs__ev_t salted_child = stored(engine + 1, 1, tok, &par);
    set_str(&salted_child.salt, "s");
    cr_assert_eq(kvs__tk_stored(tk, 0, &salted_child, out, &n), KVS__TK_EXTRA);
    cr_assert_eq(kvs__tk_entries(tk), 0);
}

Test(tokkeys, removals_and_other_media_resolve_through_the_map)
{
    uint32_t tok[3 * BS];
    for (size_t i = 0; i < 3 * BS; i++)
        tok[i] = (uint32_t)(i + 100);
    uint64_t engine[3] = {0xdead, 0xbeef, 0xf00d}, keys[3], out[3];
    size_t n;
    kvs__ev_t e = stored(engine, 3, tok, NULL);
    cr_assert_eq(kvs__tk_stored(tk, 1, &e, keys, &n), KVS__TK_OK);
    /* The CPU copy: a tokenless BlockStored of known and unknown hashes. */
    uint64_t cpu[3] = {0xbeef, 0x1234, 0xf00d};
    kvs__ev_t c = stored(cpu, 3, NULL, NULL);
    cr_assert_eq(kvs__tk_stored(tk, 1, &c, out, &n), KVS__TK_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0], keys[1]);
    cr_assert_eq(out[1], keys[2]);
    /* GPU copy of 0xbeef removed: the CPU copy still resolves; then it goes too. */
    cr_assert_eq(kvs__tk_removed(tk, 1, &engine[1], 1, out), 1);
    cr_assert_eq(out[0], keys[1]);
    cr_assert_eq(kvs__tk_removed(tk, 1, &engine[1], 1, out), 1);
    cr_assert_eq(kvs__tk_removed(tk, 1, &engine[1], 1, out), 0);
    cr_assert_eq(kvs__tk_entries(tk), 2);
    /* Another pod's hashes are its own. */
    cr_assert_eq(kvs__tk_removed(tk, 2, engine, 3, out), 0);
    kvs__tk_clear_pod(tk, 1);
    cr_assert_eq(kvs__tk_entries(tk), 0);
    cr_assert_eq(kvs__tk_removed(tk, 1, engine, 3, out), 0);
    uint64_t par = 0xdead;
    kvs__ev_t child = stored(engine + 1, 1, tok, &par);
    cr_assert_eq(kvs__tk_stored(tk, 1, &child, out, &n), KVS__TK_ORPHAN);
}

/* Many blocks stored and removed in a random order: the map grows, shifts and stays right. */
Test(tokkeys, many_entries_stay_consistent)
{
    enum { N = 3000 };
    static uint32_t tok[N * BS];
    static uint64_t engine[N], keys[N], out[N];
    for (size_t i = 0; i < N * BS; i++)
        tok[i] = (uint32_t)(i * 2654435761u);
    for (size_t i = 0; i < N; i++)
        engine[i] = (uint64_t)i * 0x100000001b3ull; /* clustered homes: long probe chains */
    size_t n;
    kvs__ev_t e = stored(engine, N, tok, NULL);
    cr_assert_eq(kvs__tk_stored(tk, 0, &e, keys, &n), KVS__TK_OK);
    cr_assert_eq(n, N);
    for (size_t i = 0; i < N; i += 2)
        cr_assert_eq(kvs__tk_removed(tk, 0, &engine[i], 1, out), 1);
    cr_assert_eq(kvs__tk_entries(tk), N / 2);
    for (size_t i = 0; i < N; i++) {
        size_t m = kvs__tk_removed(tk, 0, &engine[i], 1, out);
        cr_assert_eq(m, i % 2, "block %zu", i);
        if (m)
            cr_assert_eq(out[0], keys[i]);
    }
    cr_assert_eq(kvs__tk_entries(tk), 0);
}

Test(tokkeys, the_entry_bound_holds)
{
    kvs__tk_t *small = kvs__tk_create(h, BS, 3);
    cr_assert_not_null(small);
    uint32_t tok[5 * BS] = {0};
    uint64_t engine[5] = {1, 2, 3, 4, 5}, out[5];
    size_t n;
    kvs__ev_t e = stored(engine, 5, tok, NULL);
    cr_assert_eq(kvs__tk_stored(small, 0, &e, out, &n), KVS__TK_FULL);
    cr_assert_eq(n, 3);
    cr_assert_eq(kvs__tk_entries(small), 3);
    kvs__tk_destroy(small);
}

Test(tokkeys, every_allocation_failure_is_survived)
{
    uint32_t tok[200 * BS];
    for (size_t i = 0; i < 200 * BS; i++)
        tok[i] = (uint32_t)i;
    uint64_t engine[200], out[200];
    for (int i = 0; i < 200; i++)
        engine[i] = (uint64_t)i + 1000;
    char lora[300];
    memset(lora, 'a', sizeof(lora) - 1);
    lora[sizeof(lora) - 1] = '\0';
    for (long k = 0;; k++) {
        kvs__ix_alloc_fail_after(k, true);
        kvs__tk_t *t = kvs__tk_create(h, BS, 0);
        size_t n = 0;
        if (t != NULL) {
            kvs__ev_t e = stored(engine, 200, tok, NULL);
            set_str(&e.lora_name, lora); /* longer than the stack buffer */
            kvs__tk_result_t r = kvs__tk_stored(t, 5, &e, out, &n);
            cr_assert(r == KVS__TK_OK || r == KVS__TK_NO_MEMORY);
            cr_assert_leq(n, 200);
            cr_assert_eq(kvs__tk_entries(t), r == KVS__TK_OK ? 200 : n);
            cr_assert_eq(kvs__tk_removed(t, 5, engine, 200, out), n);
        }
        unsigned long hit = kvs__ix_alloc_failures();
        kvs__ix_alloc_fail_after(-1, false);
        kvs__tk_destroy(t);
        if (hit == 0)
            break;
        cr_assert_lt(k, 1000);
    }
}
