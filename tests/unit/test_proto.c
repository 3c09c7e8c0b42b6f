/* SPDX-License-Identifier: Apache-2.0 */
/* test_proto.c - wire messages round-trip, and every truncation or bad field is refused. */
#include "proto_int.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>

static kvs__buf_t b;

static void fini(void)
{
    kvs__buf_free(&b);
}

TestSuite(proto, .fini = fini);

static void decode_ok(kvs__msg_t *m)
{
    char why[256] = "";
    kvs_status_t st = kvs__proto_decode(b.data, b.len, m, why, sizeof(why));
    cr_assert_eq(st, KVS_OK, "decode: %s", why);
}

/* Every strict prefix of a valid message must be refused, never read past. */
static void every_truncation_fails(void)
{
    for (size_t n = 0; n < b.len; n++) {
        kvs__msg_t m;
        char why[256] = "";
        /* A copy of exactly n bytes, so ASan catches any overread. */
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, b.data, n);
        kvs_status_t st = kvs__proto_decode(n ? copy : NULL, n, &m, why, sizeof(why));
        free(copy);
        cr_assert_eq(st, KVS_ERR_PROTOCOL, "prefix of %zu/%zu bytes accepted", n, b.len);
        cr_assert_neq(why[0], '\0', "no reason given for %zu bytes", n);
    }
}

static const uint8_t sess[KVS_PROTO_SESSION_LEN] = {0xab, 0xc, 3,  4,  5,  6,  7,  8,
                                                    9,    10,  11, 12, 13, 14, 15, 16};

static void lookup_msg(uint32_t nkeys)
{
    kvs__proto_begin(&b, KVS_MSG_LOOKUP, 0, 77, sess);
    kvs__buf_u64(&b, 0x1122334455667788ull);
    kvs__buf_u32(&b, 1500);
    kvs__buf_u32(&b, nkeys);
    for (uint32_t i = 0; i < nkeys; i++) {
        uint8_t k[32];
        memset(k, (int)i, sizeof(k));
        kvs__buf_put(&b, k, sizeof(k));
    }
    cr_assert_eq(kvs__proto_finish(&b), KVS_OK);
}

Test(proto, lookup_round_trip_and_truncations)
{
    lookup_msg(3);
    kvs__msg_t m;
    decode_ok(&m);
    cr_assert_eq(m.hdr.type, KVS_MSG_LOOKUP);
    cr_assert_eq(m.hdr.req_id, 77);
    cr_assert_eq(memcmp(m.hdr.session, sess, sizeof(sess)), 0);
    cr_assert_eq(m.u.lookup.layout_id, 0x1122334455667788ull);
    cr_assert_eq(m.u.lookup.lease_ms, 1500);
    cr_assert_eq(m.u.lookup.nkeys, 3);
    cr_assert_eq(m.u.lookup.keys[2 * 32], 2);
    every_truncation_fails();
}

Test(proto, reply_with_regions_and_blocks_round_trips)
{
    uint8_t rkey[5] = {1, 2, 3, 4, 5};
    kvs__region_desc_t r = {.id = 9, .base = 0x7000, .length = 4096, .rkey_len = 5, .rkey = rkey};
    kvs__piece_t pieces[2] = {{.region = 9, .len = 64, .addr = 0x7000},
                              {.region = 9, .len = 32, .addr = 0x7100}};
    kvs__block_desc_t d = {.gen_region = 9, .gen_addr = 0x7f00, .gen = 42, .npieces = 2};
    kvs__proto_begin(&b, KVS_MSG_LOOKUP_REPLY, KVS_PROTO_FLAG_REGIONS, 5, NULL);
    kvs__buf_u32(&b, (uint32_t)KVS_OK);
    kvs__buf_u64(&b, 1234);
    kvs__buf_u32(&b, 2);
    kvs__buf_u32(&b, 1);
    kvs__proto_put_region(&b, &r);
    kvs__proto_put_block(&b, &d, pieces);
    d.gen = 43;
    kvs__proto_put_block(&b, &d, pieces);
    cr_assert_eq(kvs__proto_finish(&b), KVS_OK);
    kvs__msg_t m;
    decode_ok(&m);
    cr_assert_eq(m.u.lookup_reply.lease_id, 1234);
    cr_assert_eq(m.u.lookup_reply.hits, 2);
    cr_assert_eq(m.nregions, 1);
    const uint8_t *cur = m.regions;
    kvs__region_desc_t r2;
    kvs__proto_region(&cur, &r2);
    cr_assert_eq(r2.id, 9);
    cr_assert_eq(r2.base, 0x7000);
    cr_assert_eq(r2.rkey_len, 5);
    cr_assert_eq(memcmp(r2.rkey, rkey, 5), 0);
    cur = m.u.lookup_reply.blocks;
    kvs__block_desc_t d2;
    kvs__proto_block(&cur, &d2);
    cr_assert_eq(d2.gen, 42);
    cr_assert_eq(d2.npieces, 2);
    kvs__piece_t p2;
    kvs__proto_piece(d2.pieces, 1, &p2);
    cr_assert_eq(p2.addr, 0x7100);
    cr_assert_eq(p2.len, 32);
    kvs__proto_block(&cur, &d2);
    cr_assert_eq(d2.gen, 43);
    cr_assert_eq(cur, m.u.lookup_reply.blocks + m.u.lookup_reply.blocks_len);
    every_truncation_fails();
}

Test(proto, small_messages_round_trip)
{
    kvs__msg_t m;
    uint8_t nonce[32] = {7}, mac[32] = {9};
    kvs__proto_begin(&b, KVS_MSG_HELLO, 0, 1, NULL);
    kvs__buf_u64(&b, 5);
    kvs__buf_put(&b, nonce, 32);
    kvs__buf_u16(&b, 4);
    kvs__buf_put(&b, "node", 4);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(m.u.hello.name_len, 4);
    cr_assert_eq(memcmp(m.u.hello.name, "node", 4), 0);
    every_truncation_fails();

    kvs__proto_begin(&b, KVS_MSG_CHALLENGE, 0, 1, NULL);
    kvs__buf_put(&b, nonce, 32);
    kvs__buf_put(&b, mac, 32);
    kvs__buf_u8(&b, 1);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(m.u.challenge.auth_required, 1);
    cr_assert_eq(m.u.challenge.mac[0], 9);

    kvs__proto_begin(&b, KVS_MSG_ERROR, 0, 3, NULL);
    kvs__buf_u32(&b, (uint32_t)KVS_ERR_LAYOUT_MISMATCH);
    kvs__buf_u16(&b, 3);
    kvs__buf_put(&b, "bad", 3);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(m.u.error.status, KVS_ERR_LAYOUT_MISMATCH);
    every_truncation_fails();

    kvs__proto_begin(&b, KVS_MSG_PUT, 0, 4, NULL);
    kvs__buf_u64(&b, 9);
    kvs__buf_u32(&b, 2);
    kvs__buf_u16(&b, 2);
    kvs__buf_u32(&b, 64);
    kvs__buf_u32(&b, 96);
    for (int i = 0; i < 64; i++)
        kvs__buf_u8(&b, (uint8_t)i);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(m.u.put.nkeys, 2);
    cr_assert_eq(kvs__proto_u32_at(m.u.put.chunks, 1), 96);
    cr_assert_eq(m.u.put.keys[33], 33);
    every_truncation_fails();

    kvs__proto_begin(&b, KVS_MSG_PUT_ACK, 0, 4, NULL);
    kvs__buf_u32(&b, 0);
    kvs__buf_u32(&b, 1);
    kvs__buf_u32(&b, 7);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(kvs__proto_u32_at(m.u.put_ack.idx, 0), 7);
    every_truncation_fails();

    kvs__proto_begin(&b, KVS_MSG_FETCH_DONE, 0, 3, NULL);
    kvs__buf_u32(&b, 0);
    kvs__buf_u32(&b, 2);
    kvs__buf_u64(&b, 10);
    kvs__buf_u64(&b, 11);
    kvs__proto_finish(&b);
    decode_ok(&m);
    cr_assert_eq(kvs__proto_u64_at(m.u.fetch_done.gens, 1), 11);
    every_truncation_fails();
}

static void expect_refused(const char *fragment)
{
    kvs__msg_t m;
    char why[256] = "";
    cr_assert_eq(kvs__proto_decode(b.data, b.len, &m, why, sizeof(why)), KVS_ERR_PROTOCOL,
                 "accepted; wanted '%s'", fragment);
    cr_assert(strstr(why, fragment) != NULL, "'%s' not in '%s'", fragment, why);
}

Test(proto, bad_fields_are_refused_with_a_reason)
{
    lookup_msg(1);
    b.data[0] ^= 1;
    expect_refused("bad magic");
    lookup_msg(1);
    b.data[4] = 9;
    expect_refused("protocol version 9");
    lookup_msg(1);
    b.data[6] = 99;
    expect_refused("unknown message type 99");
    lookup_msg(1);
    b.data[8] = 0x80;
    expect_refused("reserved header bits");
    lookup_msg(1);
    kvs__buf_u8(&b, 0); /* a trailing byte the length does not cover */
    expect_refused("does not match");
    lookup_msg(1);
    kvs__buf_u8(&b, 0);
    kvs__proto_finish(&b); /* covered, but not part of a LOOKUP */
    expect_refused("trailing bytes");
    lookup_msg(1);
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 12, 70000);
    expect_refused("LOOKUP of 70000 keys");
    lookup_msg(2);
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 12, 3); /* claims more keys than sent */
    expect_refused("truncated");
    lookup_msg(0);
    kvs__buf_patch_u32(&b, 8, KVS_PROTO_FLAG_REGIONS);
    expect_refused("region flag");

    kvs__proto_begin(&b, KVS_MSG_EVENT, 0, 1, NULL);
    kvs__proto_finish(&b);
    expect_refused("not served");
    kvs__proto_begin(&b, KVS_MSG_PUT, 0, 1, NULL);
    kvs__buf_u64(&b, 1);
    kvs__buf_u32(&b, 1);
    kvs__buf_u16(&b, 0);
    kvs__proto_finish(&b);
    expect_refused("PUT with 0 chunks");

    /* A reply whose block claims zero pieces. */
    kvs__proto_begin(&b, KVS_MSG_LOOKUP_REPLY, 0, 1, NULL);
    kvs__buf_u32(&b, 0);
    kvs__buf_u64(&b, 1);
    kvs__buf_u32(&b, 1);
    kvs__block_desc_t d = {.npieces = 0};
    kvs__proto_put_block(&b, &d, NULL);
    kvs__proto_finish(&b);
    expect_refused("0 pieces");
}

/* HELLO_ACK with a same-host offer (boot id + socket path), after its regions. */
static void hello_ack_shm(uint16_t path_len, bool regions)
{
    kvs__proto_begin(&b, KVS_MSG_HELLO_ACK,
                     KVS_PROTO_FLAG_SHM | (regions ? KVS_PROTO_FLAG_REGIONS : 0), 9, sess);
    kvs__buf_u32(&b, 3);
    kvs__buf_put(&b, "abc", 3);
    if (regions) {
        kvs__buf_u32(&b, 1);
        kvs__region_desc_t r = {
            .id = 5, .base = 4096, .length = 8192, .rkey_len = 2, .rkey = (const uint8_t *)"rk"};
        kvs__proto_put_region(&b, &r);
    }
    uint8_t bid[KVS_PROTO_BOOT_ID_LEN];
    memset(bid, 0x42, sizeof(bid));
    kvs__buf_put(&b, bid, sizeof(bid));
    kvs__buf_u16(&b, path_len);
    for (uint16_t i = 0; i < path_len; i++)
        kvs__buf_u8(&b, 'p');
    cr_assert_eq(kvs__proto_finish(&b), KVS_OK);
}

Test(proto, hello_ack_shm_offer_round_trips_and_is_bounded)
{
    kvs__msg_t m;
    hello_ack_shm(30, true);
    decode_ok(&m);
    cr_assert_eq(m.nregions, 1);
    cr_assert_eq(m.u.hello_ack.boot_id[0], 0x42);
    cr_assert_eq(m.u.hello_ack.shm_path_len, 30);
    cr_assert_eq(memcmp(m.u.hello_ack.shm_path, "pppp", 4), 0);
    every_truncation_fails();
    hello_ack_shm(KVS_PROTO_MAX_SHM_PATH, false);
    decode_ok(&m);
    cr_assert_null(m.regions);
    hello_ack_shm(0, false);
    expect_refused("socket path of 0 bytes");
    hello_ack_shm(KVS_PROTO_MAX_SHM_PATH + 1, false);
    expect_refused("socket path of 108 bytes");
    /* The flag belongs to HELLO_ACK only. */
    lookup_msg(0);
    kvs__buf_patch_u32(&b, 8, KVS_PROTO_FLAG_SHM);
    expect_refused("shm flag");
}

/* Every encoder's output decodes back to what it was given. */
Test(proto, encoders_round_trip)
{
    kvs__msg_t m;
    uint8_t nonce[32] = {1}, mac[32] = {2}, addr[5] = {9, 8, 7, 6, 5};
    cr_assert_eq(kvs__enc_auth(&b, 2, mac, addr, sizeof(addr)), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.auth.addr_len, 5);
    cr_assert_eq(m.u.auth.addr[4], 5);
    cr_assert_eq(m.u.auth.mac[0], 2);
    every_truncation_fails();
    cr_assert_eq(kvs__enc_hello(&b, 1, 77, nonce, "host:1"), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.hello.layout_id, 77);
    kvs_key_t keys[2];
    memset(keys, 0x5a, sizeof(keys));
    cr_assert_eq(kvs__enc_lookup(&b, 9, sess, 5, 100, keys, 2), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.lookup.nkeys, 2);
    cr_assert_eq(memcmp(m.hdr.session, sess, sizeof(sess)), 0);
    uint32_t chunks[2] = {4096, 64};
    cr_assert_eq(kvs__enc_fetch(&b, 3, sess, 11, 2, 5, chunks, 2), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.fetch.first, 2);
    cr_assert_eq(m.u.fetch.count, 5);
    cr_assert_eq(kvs__proto_u32_at(m.u.fetch.chunks, 0), 4096);
    every_truncation_fails();
    uint64_t gens[3] = {1, 2, 3};
    cr_assert_eq(kvs__enc_fetch_done(&b, 3, sess, KVS_OK, gens, 3), KVS_OK);
    decode_ok(&m);
    cr_assert(m.hdr.flags & KVS_PROTO_FLAG_FROM_SERVER);
    cr_assert_eq(kvs__proto_u64_at(m.u.fetch_done.gens, 2), 3);
    cr_assert_eq(kvs__enc_put(&b, 4, sess, 7, chunks, 2, keys, 2), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.put.nkeys, 2);
    uint32_t idx[2] = {1, 0};
    cr_assert_eq(kvs__enc_put_ack(&b, 4, sess, idx, 2), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(kvs__proto_u32_at(m.u.put_ack.idx, 0), 1);
    cr_assert_eq(kvs__enc_put_done(&b, 4, sess, KVS_OK, 2), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.put_done.stored, 2);
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, 0), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.release.lease_id, 99);
    cr_assert_eq(kvs__enc_error(&b, 6, 0, sess, KVS_ERR_AUTH, "nope"), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.error.status, KVS_ERR_AUTH);
    uint8_t data[KVS_PROTO_DATA_LEN];
    kvs__enc_data(data, 8, KVS_PROTO_FLAG_FROM_SERVER, sess, 3, 128);
    cr_assert_eq(kvs__proto_decode(data, sizeof(data), &m, NULL, 0), KVS_OK);
    cr_assert_eq(m.u.data.block, 3);
    cr_assert_eq(m.u.data.offset, 128);
}

/* A FETCH or PUT cannot make its receiver post millions of tiny sends. */
Test(proto, fetch_amplification_is_refused)
{
    uint32_t tiny[2] = {4096, 0};
    cr_assert_eq(kvs__enc_fetch(&b, 3, sess, 11, 0, 5, tiny, 2), KVS_OK);
    expect_refused("chunk 1 of 0 bytes");
    uint32_t many[1024];
    for (int i = 0; i < 1024; i++)
        many[i] = KVS_PROTO_MIN_CHUNK;
    cr_assert_eq(kvs__enc_fetch(&b, 3, sess, 11, 0, 65536, many, 1024), KVS_OK);
    expect_refused("at most");
    cr_assert_eq(kvs__enc_fetch(&b, 3, sess, 11, 0, 1024, many, 1024), KVS_OK);
    kvs__msg_t m;
    decode_ok(&m);
    kvs_key_t key;
    memset(&key, 1, sizeof(key));
    cr_assert_eq(kvs__enc_put(&b, 4, sess, 7, tiny, 2, &key, 1), KVS_OK);
    expect_refused("chunk 1 of 0 bytes");
}

/* The header alone is enough to bound a stream read or a receive. */
Test(proto, header_decoder_bounds_the_body)
{
    uint8_t nonce[32] = {0};
    cr_assert_eq(kvs__enc_hello(&b, 1, 5, nonce, "n"), KVS_OK);
    kvs__hdr_t h;
    char why[128] = "";
    cr_assert_eq(kvs__proto_decode_hdr(b.data, KVS_PROTO_HDR_LEN, 1024, &h, why, sizeof(why)),
                 KVS_OK, "%s", why);
    cr_assert_eq(h.type, KVS_MSG_HELLO);
    cr_assert_eq(h.body_len, b.len - KVS_PROTO_HDR_LEN);
    cr_assert_eq(kvs__proto_decode_hdr(b.data, KVS_PROTO_HDR_LEN, 8, &h, why, sizeof(why)),
                 KVS_ERR_PROTOCOL);
    cr_assert(strstr(why, "exceeds") != NULL, "%s", why);
    cr_assert_eq(kvs__proto_decode_hdr(b.data, KVS_PROTO_HDR_LEN - 1, 1024, &h, why, sizeof(why)),
                 KVS_ERR_PROTOCOL);
    /* A DATA header with a body is not a DATA header. */
    uint8_t data[KVS_PROTO_DATA_LEN + 4] = {0};
    kvs__enc_data(data, 8, 0, sess, 3, 128);
    kvs__msg_t m;
    cr_assert_eq(kvs__proto_decode(data, sizeof(data), &m, NULL, 0), KVS_ERR_PROTOCOL);
}

/* Every seed of the fuzz corpus decodes: the fuzzer starts from valid
 * messages of every type, in this protocol version. */
Test(proto, fuzz_seeds_are_valid_messages)
{
    DIR *d = opendir(KVS_CORPUS_DIR);
    cr_assert_not_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", KVS_CORPUS_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f);
        uint8_t buf[4096];
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        kvs__msg_t m;
        char why[256] = "";
        cr_assert_eq(kvs__proto_decode(buf, len, &m, why, sizeof(why)), KVS_OK, "%s: %s", e->d_name,
                     why);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 14);
}

/* --- v3: views and ranged FETCH (issue 13) ------------------------------ */
static const kvs__range_t set0[] = {{0, 128}, {256, 64}, {1024, 4096}};
static const kvs__range_t set1[] = {{64, 64}};

static void ranged_fetch(uint32_t count, const uint16_t *set_of)
{
    const kvs__range_t *sets[2] = {set0, set1};
    uint16_t nr[2] = {3, 1};
    b.len = 0;
    cr_assert_eq(kvs__enc_fetch_ranges(&b, 8, sess, 99, 4, count, 2, nr, sets, set_of), KVS_OK);
}

Test(proto, ranged_fetch_round_trips_and_truncations)
{
    uint16_t set_of[3] = {0, 1, 0};
    ranged_fetch(3, set_of);
    kvs__msg_t m;
    decode_ok(&m);
    cr_assert_eq(m.hdr.flags, KVS_PROTO_FLAG_RANGES);
    cr_assert_eq(m.u.fetch.lease_id, 99);
    cr_assert(m.u.fetch.first == 4 && m.u.fetch.count == 3 && m.u.fetch.nsets == 2);
    uint16_t n;
    const uint8_t *r;
    kvs__proto_fetch_set(m.u.fetch.sets, 1, &n, &r);
    cr_assert(n == 1 && kvs__proto_u32_at(r, 0) == 64 && kvs__proto_u32_at(r, 1) == 64);
    kvs__proto_fetch_set(m.u.fetch.sets, 0, &n, &r);
    cr_assert(n == 3 && kvs__proto_u32_at(r, 4) == 1024 && kvs__proto_u32_at(r, 5) == 4096);
    cr_assert_eq(kvs__proto_u16_at(m.u.fetch.set_of, 1), 1);
    every_truncation_fails();
}

/* Patches the byte at body offset @off of the message in b and expects a refusal. */
static void refused_with(size_t off, uint8_t v, const char *fragment)
{
    uint8_t old = b.data[KVS_PROTO_HDR_LEN + off];
    b.data[KVS_PROTO_HDR_LEN + off] = v;
    kvs__msg_t m;
    char why[256] = "";
    cr_assert_eq(kvs__proto_decode(b.data, b.len, &m, why, sizeof(why)), KVS_ERR_PROTOCOL,
                 "byte %zu = %u accepted", off, v);
    cr_assert(strstr(why, fragment) != NULL, "reason '%s' lacks '%s'", why, fragment);
    b.data[KVS_PROTO_HDR_LEN + off] = old;
}

Test(proto, hostile_ranged_fetches_are_refused)
{
    uint16_t set_of[3] = {0, 1, 0};
    ranged_fetch(3, set_of);
    /* body: lease u64, first u32, count u32 | nsets u16 @16 | set 0: n u16 @18, ranges @20
     * (off,len) x3 | set 1: n @44, range @46 | set_of @54 */
    refused_with(16, 0, "range sets");         /* no sets */
    refused_with(16, 65, "range sets");        /* more than KVS_PROTO_MAX_SETS */
    refused_with(18, 0, "of 0 ranges");        /* an empty set */
    refused_with(24, 0, "empty, overlapping"); /* range 0 of length 0 */
    refused_with(29, 0, "empty, overlapping"); /* range 1 at 0: inside range 0 */
    refused_with(37, 0, "empty, overlapping"); /* range 2 at 0: before range 1 */
    for (unsigned k = 0; k < 4; k++)           /* range 2 runs past 4 GiB */
        b.data[KVS_PROTO_HDR_LEN + 40 + k] = 0xff;
    expect_refused("empty, overlapping");
    ranged_fetch(3, set_of);
    refused_with(56, 2, "names range set"); /* block 1 names set 2 of 2 */
    /* A count that runs past the bytes, and the flags on other messages. */
    b.data[KVS_PROTO_HDR_LEN + 18] = 4; /* set 0 claims a 4th range: bytes run out */
    kvs__msg_t m;
    cr_assert_eq(kvs__proto_decode(b.data, b.len, &m, NULL, 0), KVS_ERR_PROTOCOL);
    lookup_msg(1);
    b.data[8] |= KVS_PROTO_FLAG_RANGES; /* flags, byte 0 */
    expect_refused("ranges flag");
    lookup_msg(1);
    b.data[8] |= KVS_PROTO_FLAG_VIEW;
    expect_refused("view flag");
}

Test(proto, ranged_fetch_amplification_is_refused)
{
    /* 65536 blocks x 3 ranges is over KVS_PROTO_MAX_FETCH_PIECES. */
    uint32_t count = KVS_PROTO_MAX_KEYS;
    uint16_t *set_of = calloc(count, sizeof(*set_of));
    const kvs__range_t many[20] = {{0, 1},  {2, 1},  {4, 1},  {6, 1},  {8, 1},  {10, 1}, {12, 1},
                                   {14, 1}, {16, 1}, {18, 1}, {20, 1}, {22, 1}, {24, 1}, {26, 1},
                                   {28, 1}, {30, 1}, {32, 1}, {34, 1}, {36, 1}, {38, 1}};
    const kvs__range_t *sets[1] = {many};
    uint16_t nr[1] = {20};
    b.len = 0;
    cr_assert_eq(kvs__enc_fetch_ranges(&b, 8, sess, 99, 0, count, 1, nr, sets, set_of), KVS_OK);
    free(set_of);
    expect_refused("ranges (at most");
}

Test(proto, hello_model_and_ack_view)
{
    uint8_t nonce[KVS_PROTO_NONCE_LEN] = {1};
    b.len = 0;
    cr_assert_eq(kvs__enc_hello_model(&b, 1, 0x77, nonce, "me", 0xfeedface12345678ull), KVS_OK);
    kvs__msg_t m;
    decode_ok(&m);
    cr_assert_eq(m.hdr.flags, KVS_PROTO_FLAG_VIEW);
    cr_assert_eq(m.u.hello.model, 0xfeedface12345678ull);
    every_truncation_fails();
    /* A HELLO_ACK with a view: a valid one is taken, an inconsistent one refused. */
    kvs__view_t v = {.model = 5,
                     .dtype = KVS_DTYPE_BF16,
                     .elem = 2,
                     .num_layers = 3,
                     .total_heads = 8,
                     .heads = 2,
                     .head_dim = 64,
                     .tp_rank = 3,
                     .tp_size = 4,
                     .block_tokens = 32,
                     .key_tokens = 16,
                     .kv_layout = KVS_KV_HND};
    cr_assert(kvs__view_valid(&v));
    for (int bad = 0; bad < 2; bad++) {
        uint8_t wire[KVS_VIEW_WIRE_LEN];
        kvs__view_encode(&v, wire);
        if (bad)
            wire[8 + 4 * 4] = 3; /* heads 3 of 8 over TP 4 */
        b.len = 0;
        kvs__proto_begin(&b, KVS_MSG_HELLO_ACK, KVS_PROTO_FLAG_FROM_SERVER | KVS_PROTO_FLAG_VIEW, 2,
                         sess);
        kvs__buf_u32(&b, 4);
        kvs__buf_put(&b, "addr", 4);
        kvs__buf_put(&b, wire, sizeof(wire));
        cr_assert_eq(kvs__proto_finish(&b), KVS_OK);
        if (bad) {
            expect_refused("inconsistent view");
        } else {
            decode_ok(&m);
            kvs__view_t w;
            kvs__view_decode(m.u.hello_ack.view, &w);
            cr_assert(kvs__view_same(&v, &w));
            every_truncation_fails();
        }
    }
}

/* --- v4: RELEASE with the readers to expect ------------------------------ */

Test(proto, release_with_readers_round_trips_and_is_bounded)
{
    kvs__msg_t m;
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, 3), KVS_OK);
    decode_ok(&m);
    cr_assert(m.hdr.flags & KVS_PROTO_FLAG_READERS);
    cr_assert_eq(m.u.release.lease_id, 99);
    cr_assert_eq(m.u.release.readers, 3);
    every_truncation_fails();
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, KVS_PROTO_MAX_READERS), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.release.readers, KVS_PROTO_MAX_READERS);
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, KVS_PROTO_MAX_READERS + 1),
                 KVS_ERR_INVALID_PARAM);
    /* A plain RELEASE: no flag, no count. */
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 7, 0), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.hdr.flags & KVS_PROTO_FLAG_READERS, 0);
    cr_assert_eq(m.u.release.readers, 0);

    /* Hostile counts: zero, over the bound, a count without the flag, the
     * flag without the count, the flag on another message. */
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, 3), KVS_OK);
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 8, 0);
    expect_refused("RELEASE for 0 readers");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 8, KVS_PROTO_MAX_READERS + 1);
    expect_refused("RELEASE for 4097 readers");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 8, 0xffffffffu);
    expect_refused("RELEASE for 4294967295 readers");
    kvs__buf_patch_u32(&b, 8, 0);
    expect_refused("trailing bytes");
    cr_assert_eq(kvs__enc_release(&b, 5, sess, 99, 0), KVS_OK);
    kvs__buf_patch_u32(&b, 8, KVS_PROTO_FLAG_READERS);
    expect_refused("truncated");
    lookup_msg(0);
    kvs__buf_patch_u32(&b, 8, KVS_PROTO_FLAG_READERS);
    expect_refused("readers flag");
}

/* --- v4: READ, blocks a same-host reader copied through the holder's index ----- */

Test(proto, read_round_trips_and_is_bounded)
{
    kvs__msg_t m;
    const uint32_t idx[3] = {7, 0, 0xfffffffeu};
    const uint64_t serial[3] = {1, 99, 0x0102030405060708ull};
    cr_assert_eq(kvs__enc_read(&b, 5, sess, 2, idx, serial, 3), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.hdr.type, KVS_MSG_READ);
    cr_assert_eq(m.u.read.readers, 2);
    cr_assert_eq(m.u.read.count, 3);
    for (uint32_t i = 0; i < 3; i++) {
        uint32_t x;
        uint64_t s;
        kvs__proto_read_ref(m.u.read.refs, i, &x, &s);
        cr_assert_eq(x, idx[i]);
        cr_assert_eq(s, serial[i]);
    }
    every_truncation_fails();
    /* Readers not said (0) is a READ too; counts out of bounds are not encoded. */
    cr_assert_eq(kvs__enc_read(&b, 5, sess, 0, idx, serial, 1), KVS_OK);
    decode_ok(&m);
    cr_assert_eq(m.u.read.readers, 0);
    cr_assert_eq(kvs__enc_read(&b, 5, sess, KVS_PROTO_MAX_READERS + 1, idx, serial, 1),
                 KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs__enc_read(&b, 5, sess, 1, idx, serial, 0), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs__enc_read(&b, 5, sess, 1, idx, serial, KVS_PROTO_MAX_KEYS + 1),
                 KVS_ERR_INVALID_PARAM);
    /* Hostile counts: readers over the bound, no blocks, more blocks than the
     * body holds, fewer (trailing bytes), a flag it does not take. */
    cr_assert_eq(kvs__enc_read(&b, 5, sess, 2, idx, serial, 3), KVS_OK);
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN, KVS_PROTO_MAX_READERS + 1);
    expect_refused("READ for 4097 readers");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN, 2);
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 4, 0);
    expect_refused("READ of 0 blocks");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 4, KVS_PROTO_MAX_KEYS + 1);
    expect_refused("READ of 65537 blocks");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 4, 4);
    expect_refused("truncated");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 4, 2);
    expect_refused("trailing bytes");
    kvs__buf_patch_u32(&b, KVS_PROTO_HDR_LEN + 4, 3);
    kvs__buf_patch_u32(&b, 8, KVS_PROTO_FLAG_READERS);
    expect_refused("readers flag");
}
