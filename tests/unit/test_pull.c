/* SPDX-License-Identifier: Apache-2.0 */
/* test_pull.c - a pull PUT's reads: every address the client sends is checked against the
 * regions it advertised before any read is planned. */
#include "pull_int.h"

#include <criterion/criterion.h>
#include <string.h>

static kvs__buf_t b;

static void fini(void)
{
    kvs__buf_free(&b);
}

TestSuite(pull, .fini = fini);

static const uint8_t sess[KVS_PROTO_SESSION_LEN] = {1, 2,  3,  4,  5,  6,  7,  8,
                                                    9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t rkey[8] = {1, 2, 3, 4, 5, 6, 7, 8};

/* Two segments of 256 and 128 bytes per block, strides 512 and 128, in
 * regions 7 (0x10000 + 4096) and 9 (0x20000 + 1024); three blocks. */
static void pull_msg(kvs__msg_t *m, const uint32_t *ids, const kvs__put_seg_t *segs)
{
    uint32_t chunks[2] = {256, 128};
    kvs_key_t keys[3];
    memset(keys, 0x5a, sizeof(keys));
    kvs__region_desc_t regs[2] = {
        {.id = 7, .base = 0x10000, .length = 4096, .rkey_len = sizeof(rkey), .rkey = rkey},
        {.id = 9, .base = 0x20000, .length = 1024, .rkey_len = sizeof(rkey), .rkey = rkey}};
    cr_assert_eq(kvs__enc_put_pull(&b, 3, sess, 42, chunks, 2, keys, 3, regs, 2, segs, ids),
                 KVS_OK);
    char why[200] = "";
    cr_assert_eq(kvs__proto_decode(b.data, b.len, m, why, sizeof(why)), KVS_OK, "%s", why);
}

static const kvs__pull_region_t regions[2] = {{.id = 7, .base = 0x10000, .len = 4096},
                                              {.id = 9, .base = 0x20000, .len = 1024}};
static const kvs__put_seg_t good_segs[2] = {{.region = 7, .base = 0x10000, .stride = 512},
                                            {.region = 9, .base = 0x20000, .stride = 128}};

Test(pull, plans_every_read_inside_its_region)
{
    kvs__msg_t m;
    const uint32_t ids[3] = {5, 0, 7};
    pull_msg(&m, ids, good_segs);
    cr_assert(m.hdr.flags & KVS_PROTO_FLAG_PULL);
    const uint32_t want[2] = {2, 0};
    kvs__pull_read_t r[4];
    char why[200] = "";
    cr_assert_eq(kvs__pull_plan(&m, want, 2, regions, 2, r, why, sizeof(why)), KVS_OK, "%s", why);
    /* block id 7: segment 0 at 0x10000 + 7 * 512, segment 1 at 0x20000 + 7 * 128 */
    cr_assert_eq(r[0].raddr, 0x10000 + 7 * 512);
    cr_assert_eq(r[0].len, 256);
    cr_assert_eq(r[0].off, 0);
    cr_assert_eq(r[0].region, 0);
    cr_assert_eq(r[1].raddr, 0x20000 + 7 * 128);
    cr_assert_eq(r[1].off, 256);
    cr_assert_eq(r[1].region, 1);
    cr_assert_eq(r[2].raddr, 0x10000 + 5 * 512);
    cr_assert_eq(r[3].raddr, 0x20000 + 5 * 128);
}

static void expect_refused(const uint32_t *ids, const kvs__put_seg_t *segs, const uint32_t *want,
                           uint32_t n, size_t nregions, const char *reason)
{
    kvs__msg_t m;
    pull_msg(&m, ids, segs);
    kvs__pull_read_t r[6];
    char why[200] = "";
    cr_assert_eq(kvs__pull_plan(&m, want, n, regions, nregions, r, why, sizeof(why)),
                 KVS_ERR_PROTOCOL, "accepted; expected: %s", reason);
    cr_assert(strstr(why, reason) != NULL, "reason '%s', expected '%s'", why, reason);
}

Test(pull, a_read_outside_the_advertised_regions_refuses_the_put)
{
    const uint32_t all[3] = {0, 1, 2};
    /* block id 8 of segment 1: 0x20000 + 1024, one past region 9 */
    const uint32_t past_end[3] = {0, 8, 1};
    const kvs__put_seg_t narrow[2] = {{.region = 7, .base = 0x10000, .stride = 256},
                                      {.region = 9, .base = 0x20000, .stride = 128}};
    expect_refused(past_end, narrow, all, 3, 2, "lie outside region 9");
    /* a block straddling the end: segment 0 at 4096 - 256 + 8 */
    const kvs__put_seg_t straddle[2] = {
        {.region = 7, .base = 0x10000 + 4096 - 256 + 8, .stride = 512},
        {.region = 9, .base = 0x20000, .stride = 128}};
    const uint32_t last[3] = {0, 0, 0};
    expect_refused(last, straddle, all, 1, 2, "lie outside region 7");
    /* below the region's base */
    const kvs__put_seg_t below[2] = {{.region = 7, .base = 0xff00, .stride = 512},
                                     {.region = 9, .base = 0x20000, .stride = 128}};
    const uint32_t zero[3] = {0, 0, 0};
    expect_refused(zero, below, all, 1, 2, "lie outside region 7");
    /* an address that wraps around 2^64 */
    const kvs__put_seg_t wrap[2] = {{.region = 7, .base = 0x10000, .stride = UINT64_MAX / 2},
                                    {.region = 9, .base = 0x20000, .stride = 128}};
    const uint32_t big[3] = {3, 0, 0};
    expect_refused(big, wrap, all, 1, 2, "overflows");
    const kvs__put_seg_t wrap2[2] = {{.region = 7, .base = UINT64_MAX - 16, .stride = 512},
                                     {.region = 9, .base = 0x20000, .stride = 128}};
    const uint32_t one[3] = {1, 0, 0};
    expect_refused(one, wrap2, all, 1, 2, "overflows");
    /* a region the client never advertised (here: known to the node for
     * another reason, but not given to this plan) */
    expect_refused(zero, good_segs, all, 1, 1, "did not advertise");
    const kvs__put_seg_t unknown[2] = {{.region = 8, .base = 0x10000, .stride = 512},
                                       {.region = 9, .base = 0x20000, .stride = 128}};
    expect_refused(zero, unknown, all, 1, 2, "region 8");
    /* an index past the PUT's keys */
    const uint32_t bad_want[1] = {3};
    expect_refused(zero, good_segs, bad_want, 1, 2, "block 3 of 3");
}

Test(pull, only_pull_puts_are_planned)
{
    uint32_t chunks[1] = {256};
    kvs_key_t key;
    memset(&key, 1, sizeof(key));
    cr_assert_eq(kvs__enc_put(&b, 3, sess, 42, chunks, 1, &key, 1), KVS_OK);
    kvs__msg_t m;
    cr_assert_eq(kvs__proto_decode(b.data, b.len, &m, NULL, 0), KVS_OK);
    const uint32_t want[1] = {0};
    kvs__pull_read_t r[1];
    char why[200] = "";
    cr_assert_eq(kvs__pull_plan(&m, want, 1, regions, 2, r, why, sizeof(why)), KVS_ERR_PROTOCOL);
}

/* Every strict prefix of a pull PUT is refused by the decoder, and the pull
 * flag means nothing on another message. */
Test(pull, truncated_pull_puts_and_stray_flags_are_refused)
{
    kvs__msg_t m;
    const uint32_t ids[3] = {5, 0, 7};
    pull_msg(&m, ids, good_segs);
    for (size_t n = 0; n < b.len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, b.data, n);
        /* the header's body length is patched so only the body is short */
        if (n >= KVS_PROTO_HDR_LEN) {
            uint32_t body = (uint32_t)(n - KVS_PROTO_HDR_LEN);
            memcpy(copy + 12, &body, 4);
        }
        char why[200] = "";
        cr_assert_eq(kvs__proto_decode(n ? copy : NULL, n, &m, why, sizeof(why)), KVS_ERR_PROTOCOL,
                     "prefix of %zu/%zu bytes accepted", n, b.len);
        free(copy);
    }
    cr_assert_eq(kvs__enc_put_done(&b, 4, sess, KVS_OK, 2), KVS_OK);
    uint32_t flags;
    memcpy(&flags, b.data + 8, 4);
    flags |= KVS_PROTO_FLAG_PULL;
    memcpy(b.data + 8, &flags, 4);
    char why[200] = "";
    cr_assert_eq(kvs__proto_decode(b.data, b.len, &m, why, sizeof(why)), KVS_ERR_PROTOCOL);
    cr_assert(strstr(why, "pull flag") != NULL, "%s", why);
}
