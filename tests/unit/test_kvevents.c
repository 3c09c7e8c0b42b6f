/* SPDX-License-Identifier: Apache-2.0 */
/* test_kvevents.c - the vLLM KV event decoder: both encodings, old and new fields, bad input. */
#include "ixalloc_int.h"
#include "kvevents_int.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static msgpack_sbuffer sb;
static msgpack_packer pk;
static kvs__ev_decoder_t *dec;

static void setup(void)
{
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    dec = kvs__ev_decoder_create();
    cr_assert_not_null(dec);
}

static void teardown(void)
{
    msgpack_sbuffer_destroy(&sb);
    kvs__ev_decoder_destroy(dec);
}

TestSuite(kvevents, .init = setup, .fini = teardown);

static void str(const char *s)
{
    msgpack_pack_str_with_body(&pk, s, strlen(s));
}

static void batch_head(uint32_t nevents)
{
    msgpack_pack_array(&pk, 3);
    msgpack_pack_double(&pk, 1.5);
    msgpack_pack_array(&pk, nevents);
}

static int decode(kvs__ev_batch_t *b, size_t *skipped, char *why)
{
    return kvs__ev_decode(dec, sb.data, sb.size, b, skipped, why, 128);
}

Test(kvevents, positional_block_stored_all_fields)
{
    batch_head(1);
    msgpack_pack_array(&pk, 12);
    str("BlockStored");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, 0xfedcba9876543210ull);
    msgpack_pack_uint64(&pk, 7);
    msgpack_pack_uint64(&pk, 99); /* parent */
    msgpack_pack_array(&pk, 4);
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint32(&pk, (uint32_t)(100 + i));
    msgpack_pack_uint32(&pk, 2); /* block_size */
    msgpack_pack_nil(&pk);       /* lora_id */
    str("CPU");
    str("adapter-a");
    msgpack_pack_array(&pk, 2); /* extra_keys: one per block */
    msgpack_pack_array(&pk, 1);
    str("adapter-a");
    msgpack_pack_nil(&pk);
    msgpack_pack_int(&pk, 0);
    str("full_attention");
    msgpack_pack_nil(&pk);
    msgpack_pack_int(&pk, 3); /* dp rank */
    kvs__ev_batch_t b;
    char why[128] = "";
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert_eq(b.nevents, 1);
    cr_assert(b.has_dp_rank && b.dp_rank == 3);
    const kvs__ev_t *e = &b.events[0];
    cr_assert_eq(e->type, KVS__EV_STORED);
    cr_assert_eq(e->nhashes, 2);
    cr_assert_eq(e->hashes[0], 0xfedcba9876543210ull);
    cr_assert_eq(e->hashes[1], 7);
    cr_assert(e->has_parent && e->parent == 99);
    cr_assert_eq(e->ntokens, 4);
    cr_assert_eq(e->tokens[3], 103);
    cr_assert_eq(e->block_size, 2);
    cr_assert(e->medium.len == 3 && memcmp(e->medium.ptr, "CPU", 3) == 0);
    cr_assert(e->lora_name.len == 9 && memcmp(e->lora_name.ptr, "adapter-a", 9) == 0);
    cr_assert_eq(e->nextra_keys, 2);
    cr_assert(e->has_group && e->group_idx == 0);
    cr_assert(e->spec_kind.len == 14);
}

Test(kvevents, positional_missing_trailing_fields_and_bytes_hashes)
{
    /* An older vLLM: [tag, hashes, parent, tokens, block_size, lora_id, medium], no rank. */
    msgpack_pack_array(&pk, 2);
    msgpack_pack_double(&pk, 2.0);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_array(&pk, 7);
    str("BlockStored");
    msgpack_pack_array(&pk, 1);
    uint8_t digest[32];
    for (int i = 0; i < 32; i++)
        digest[i] = (uint8_t)i;
    msgpack_pack_bin_with_body(&pk, digest, 32);
    msgpack_pack_nil(&pk);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_uint32(&pk, 16);
    msgpack_pack_nil(&pk);
    msgpack_pack_nil(&pk);
    msgpack_pack_array(&pk, 3); /* BlockRemoved without group_idx */
    str("BlockRemoved");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_int64(&pk, -2); /* a signed encoder's view of a u64 */
    str("GPU");
    msgpack_pack_array(&pk, 1);
    str("AllBlocksCleared");
    kvs__ev_batch_t b;
    char why[128] = "";
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert_not(b.has_dp_rank);
    cr_assert_eq(b.nevents, 3);
    cr_assert_eq(b.events[0].hashes[0], 0x18191a1b1c1d1e1full, "last 8 bytes, big-endian");
    cr_assert_null(b.events[0].medium.ptr);
    cr_assert_null(b.events[0].lora_name.ptr);
    cr_assert_eq(b.events[1].type, KVS__EV_REMOVED);
    cr_assert_eq(b.events[1].hashes[0], UINT64_MAX - 1);
    cr_assert_not(b.events[1].has_group);
    cr_assert_eq(b.events[2].type, KVS__EV_CLEARED);
}

Test(kvevents, map_events_with_unknown_fields_and_types)
{
    batch_head(4);
    msgpack_pack_map(&pk, 6);
    str("block_size");
    msgpack_pack_uint32(&pk, 16);
    str("type");
    str("BlockStored");
    str("block_hashes");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 42);
    str("a_field_from_2027");
    msgpack_pack_map(&pk, 1);
    str("x");
    msgpack_pack_true(&pk);
    str("lora_name");
    str("L");
    str("extra_keys");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 1);
    str("L");
    msgpack_pack_map(&pk, 1);
    str("type");
    str("BlockPromoted"); /* a newer vLLM's event: skipped, counted */
    msgpack_pack_map(&pk, 3);
    str("type");
    str("BlockRemoved");
    str("block_hashes");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 42);
    str("medium");
    msgpack_pack_nil(&pk);
    msgpack_pack_map(&pk, 1);
    str("type");
    str("AllBlocksCleared");
    msgpack_pack_nil(&pk);
    kvs__ev_batch_t b;
    size_t skipped = 0;
    char why[128] = "";
    cr_assert_eq(decode(&b, &skipped, why), 0, "%s", why);
    cr_assert_eq(skipped, 1);
    cr_assert_eq(b.nevents, 3);
    cr_assert_eq(b.events[0].hashes[0], 42);
    cr_assert_eq(b.events[0].block_size, 16);
    cr_assert_not(b.events[0].has_parent);
    cr_assert_eq(b.events[0].nextra_keys, 1);
    cr_assert(b.events[0].lora_name.len == 1);
    cr_assert_eq(b.events[1].type, KVS__EV_REMOVED);
    cr_assert_eq(b.events[2].type, KVS__EV_CLEARED);
}

Test(kvevents, malformed_input_gives_a_reason)
{
    kvs__ev_batch_t b;
    char why[128];
    static const struct {
        const char *bytes;
        size_t len;
        const char *reason;
    } cases[] = {
#define C(s, r) {s, sizeof(s) - 1, r}
        C("", "empty"),
        C("\xc1", "not msgpack"),
        C("\x92\xcb", "not msgpack"),             /* truncated float */
        C("\xdd\xff\xff\xff\xff", "not msgpack"), /* claims 4G elements */
        C("\x91\x01", "batch is not"),            /* one element */
        C("\x92\xa1x\x90", "ts is not"),          /* ts a string */
        C("\x92\x01\x01", "events is not"),
        C("\x92\x01\x91\x05", "event 0"), /* event is an int */
        C("\x92\x01\x91\x91\xab"
          "BlockStored",
          "block_hashes missing"),
        C("\x92\x01\x91\x92\xab"
          "BlockStored"
          "\x91\xa1x",
          "block_hashes[0]"),
        C("\x92\x01\x90\x00", "trailing"),
#undef C
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        why[0] = '\0';
        cr_assert_eq(kvs__ev_decode(dec, cases[i].bytes, cases[i].len, &b, NULL, why, sizeof(why)),
                     -1, "case %zu decoded", i);
        cr_assert(strstr(why, cases[i].reason) != NULL, "case %zu: '%s' lacks '%s'", i, why,
                  cases[i].reason);
    }
}

Test(kvevents, bad_field_types_are_refused)
{
    batch_head(1);
    msgpack_pack_map(&pk, 3);
    str("type");
    str("BlockStored");
    str("block_hashes");
    msgpack_pack_array(&pk, 0);
    str("token_ids");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_int(&pk, -1);
    msgpack_pack_nil(&pk);
    kvs__ev_batch_t b;
    char why[128] = "";
    cr_assert_eq(decode(&b, NULL, why), -1);
    cr_assert(strstr(why, "token_ids[0]") != NULL, "%s", why);
}

Test(kvevents, hash_from_bytes)
{
    const uint8_t b[] = {1, 2, 3};
    cr_assert_eq(kvs__ev_hash_from_bytes(b, 3), 0x010203);
}

/* The fuzz seeds (tests/fuzz/make_corpus_kvevents.py) are valid batches that decode. */
Test(kvevents, fuzz_seeds_decode)
{
    DIR *dir = opendir(KVS_CORPUS_DIR);
    cr_assert_not_null(dir, "%s", KVS_CORPUS_DIR);
    struct dirent *de;
    int seen = 0;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", KVS_CORPUS_DIR, de->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f);
        static char buf[65536];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        kvs__ev_batch_t b;
        char why[128] = "";
        cr_assert_eq(kvs__ev_decode(dec, buf, n, &b, NULL, why, sizeof(why)), 0, "%s: %s",
                     de->d_name, why);
        cr_assert_gt(b.nevents, 0, "%s", de->d_name);
        seen++;
    }
    closedir(dir);
    cr_assert_geq(seen, 7);
}

/* Every allocation of the decoder fails in turn: a refusal with a reason, never a crash. */
Test(kvevents, every_allocation_failure_is_survived)
{
    batch_head(2);
    msgpack_pack_array(&pk, 4);
    str("BlockStored");
    msgpack_pack_array(&pk, 100);
    for (int i = 0; i < 100; i++)
        msgpack_pack_uint64(&pk, (uint64_t)i);
    msgpack_pack_nil(&pk);
    msgpack_pack_array(&pk, 200);
    for (int i = 0; i < 200; i++)
        msgpack_pack_uint32(&pk, (uint32_t)i);
    msgpack_pack_map(&pk, 1);
    str("type");
    str("AllBlocksCleared");
    msgpack_pack_nil(&pk);
    for (long n = 0;; n++) {
        kvs__ix_alloc_fail_after(n, true);
        kvs__ev_decoder_t *d = kvs__ev_decoder_create();
        kvs__ev_batch_t b;
        char why[128] = "";
        int rc = d ? kvs__ev_decode(d, sb.data, sb.size, &b, NULL, why, sizeof(why)) : -1;
        unsigned long hit = kvs__ix_alloc_failures();
        kvs__ix_alloc_fail_after(-1, false);
        if (d != NULL && rc != 0)
            cr_assert(strstr(why, "out of memory") != NULL, "%s", why);
        if (rc == 0) {
            cr_assert_eq(b.nevents, 2);
            cr_assert_eq(b.events[0].hashes[99], 99);
        }
        kvs__ev_decoder_destroy(d);
        if (hit == 0)
            break;
        cr_assert_lt(n, 1000);
    }
}

/* What token mode reads of extra_keys: the LoRA name is skipped, a string of the first
 * block's tuple is the salt, anything else is flagged. */
static void stored_with_extra(const char *lora, int nblocks, const char *first, const char *later,
                              bool int_item)
{
    batch_head(1);
    msgpack_pack_map(&pk, 4);
    str("type");
    str("BlockStored");
    str("block_hashes");
    msgpack_pack_array(&pk, 0);
    str("lora_name");
    if (lora)
        str(lora);
    else
        msgpack_pack_nil(&pk);
    str("extra_keys");
    msgpack_pack_array(&pk, (uint32_t)nblocks);
    for (int i = 0; i < nblocks; i++) {
        const char *s = i == 0 ? first : later;
        uint32_t n = (lora ? 1u : 0u) + (s ? 1u : 0u) + (int_item && i == 0 ? 1u : 0u);
        if (n == 0) {
            msgpack_pack_nil(&pk);
            continue;
        }
        msgpack_pack_array(&pk, n);
        if (lora)
            str(lora);
        if (int_item && i == 0)
            msgpack_pack_int(&pk, 5);
        if (s)
            str(s);
    }
    msgpack_pack_nil(&pk); /* dp_rank */
}

Test(kvevents, extra_keys_salt_and_others)
{
    kvs__ev_batch_t b;
    char why[128];
    stored_with_extra("ad1", 3, "salt1", NULL, false);
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert_eq(b.events[0].nextra_keys, 3);
    cr_assert_eq(b.events[0].salt.len, 5);
    cr_assert(memcmp(b.events[0].salt.ptr, "salt1", 5) == 0);
    cr_assert(!b.events[0].extra_other);
    sb.size = 0;
    stored_with_extra(NULL, 2, NULL, NULL, false);
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert_null(b.events[0].salt.ptr);
    cr_assert(!b.events[0].extra_other);
    sb.size = 0;
    stored_with_extra("ad1", 2, NULL, "mm-hash", false); /* a string in a later block */
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert(b.events[0].extra_other);
    sb.size = 0;
    stored_with_extra(NULL, 1, "s", NULL, true); /* a non-string item */
    cr_assert_eq(decode(&b, NULL, why), 0, "%s", why);
    cr_assert(b.events[0].extra_other);
}

/* kvshare's own events (serve --events) decode as vLLM's map encoding does. */
Test(kvevents, encoded_batches_decode_back)
{
    uint64_t stored[3] = {1, 0xffffffffffffffffull, 0x8000000000000000ull}, removed[1] = {7};
    kvs__ev_out_t evs[3] = {
        {.type = KVS__EV_STORED, .hashes = stored, .nhashes = 3, .medium = "KVSHARE_POOL"},
        {.type = KVS__EV_REMOVED, .hashes = removed, .nhashes = 1, .medium = "KVSHARE_POOL"},
        {.type = KVS__EV_CLEARED},
    };
    char *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kvs__ev_encode(evs, 3, 12.5, &buf, &len), 0);
    kvs__ev_batch_t b;
    char why[128];
    cr_assert_eq(kvs__ev_decode(dec, buf, len, &b, NULL, why, sizeof(why)), 0, "%s", why);
    free(buf);
    cr_assert_eq(b.ts, 12.5);
    cr_assert_eq(b.nevents, 3);
    cr_assert_eq(b.events[0].type, KVS__EV_STORED);
    cr_assert_eq(b.events[0].nhashes, 3);
    cr_assert_arr_eq(b.events[0].hashes, stored, sizeof(stored));
    cr_assert_eq(b.events[0].medium.len, strlen("KVSHARE_POOL"));
    cr_assert(!b.events[0].has_parent);
    cr_assert_eq(b.events[0].ntokens, 0);
    cr_assert_eq(b.events[1].type, KVS__EV_REMOVED);
    cr_assert_eq(b.events[1].hashes[0], 7);
    cr_assert_eq(b.events[2].type, KVS__EV_CLEARED);
    cr_assert(!b.has_dp_rank);
}
