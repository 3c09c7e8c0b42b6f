/* SPDX-License-Identifier: Apache-2.0 */
/* test_shm.c - memfd-backed memory (shm.c): zeroed, sealed, found again by address; kvs_mem_alloc.
 */
#include "kvs_int.h"
#include "proto_int.h"
#include "shm_int.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

TestSuite(shm);

Test(shm, memory_is_zeroed_sealed_and_found_by_address)
{
    size_t len = 3 * 4096 + 100;
    uint8_t *p = kvs__shm_alloc(len, "test");
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % 4096, 0, "page-aligned");
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(p[i], 0);
    memset(p, 0x5a, len);
    uint64_t off = 99;
    int fd = kvs__shm_fd_of(p + 4096, 100, &off);
    cr_assert_geq(fd, 0, "a memfd holds it");
    cr_assert_eq(off, 4096);
    int seals = fcntl(fd, F_GET_SEALS);
    cr_assert(seals & F_SEAL_SHRINK, "sealed against shrinking: a reader cannot fault");
    cr_assert(seals & F_SEAL_GROW);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    cr_assert_geq((size_t)st.st_size, len);
    /* Past the end, or an address of no allocation: none. */
    cr_assert_lt(kvs__shm_fd_of(p + 4 * 4096, 1, &off), 0);
    int local = 0;
    cr_assert_lt(kvs__shm_fd_of(&local, sizeof(local), &off), 0);
    kvs__shm_free(p);
    cr_assert_lt(kvs__shm_fd_of(p, 1, &off), 0, "gone from the registry");
    kvs__shm_free(NULL);
}

Test(shm, allocation_failure_is_null)
{
    kvs__alloc_fail_after(0, false);
    cr_assert_null(kvs__shm_alloc(4096, "oom"));
    kvs__alloc_fail_after(-1, false);
    cr_assert_null(kvs__shm_alloc(0, "empty"));
}

Test(shm, boot_id_is_this_hosts_unless_a_test_poses)
{
    uint8_t a[KVS_SHM_BOOT_ID_LEN], b[KVS_SHM_BOOT_ID_LEN], zero[KVS_SHM_BOOT_ID_LEN] = {0};
    unsetenv("KVSHARE_TEST_BOOT_ID");
    kvs__shm_boot_id(a);
    kvs__shm_boot_id(b);
    cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
    cr_assert_neq(memcmp(a, zero, sizeof(a)), 0, "read from /proc");
    setenv("KVSHARE_TEST_BOOT_ID", "elsewhere", 1);
    kvs__shm_boot_id(b);
    unsetenv("KVSHARE_TEST_BOOT_ID");
    cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
}

Test(shm, kvs_mem_alloc_checks_its_arguments)
{
    char err[256];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_TRANSPORT | KVS_CTX_FIELD_ERRBUF |
                                         KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_AUTH,
                           .transport = "none",
                           .auth = "none",
                           .errbuf = err,
                           .errbuf_len = sizeof(err)};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&cp, &ctx), KVS_OK, "%s", err);
    void *p = (void *)1;
    cr_assert_eq(kvs_mem_alloc(NULL, 4096, KVS_MEM_HOST, &p), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_mem_alloc(ctx, 0, KVS_MEM_HOST, &p), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_mem_alloc(ctx, 4096, KVS_MEM_HOST, NULL), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_mem_alloc(ctx, 4096, (kvs_mem_type_t)7, &p), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_mem_alloc(ctx, 4096, KVS_MEM_CUDA, &p), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(p, (void *)1, "a failing call writes no output");
    kvs__alloc_fail_after(0, false);
    cr_assert_eq(kvs_mem_alloc(ctx, 4096, KVS_MEM_HOST, &p), KVS_ERR_NO_MEMORY);
    kvs__alloc_fail_after(-1, false);
    cr_assert_eq(kvs_mem_alloc(ctx, 1 << 20, KVS_MEM_HOST, &p), KVS_OK);
    uint64_t off;
    cr_assert_geq(kvs__shm_fd_of(p, 1 << 20, &off), 0);
    kvs_mem_free(ctx, p);
    kvs_mem_free(ctx, NULL);
    kvs_ctx_destroy(ctx);
}

/* The handover's answer (proto.c): what a reader accepts from the holder. */
static size_t reply(uint8_t *out, uint32_t n, const kvs__shm_entry_t *e)
{
    const uint32_t hdr[2] = {KVS_SHM_MAGIC, n};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 4; i++)
            out[4 * k + i] = (uint8_t)(hdr[k] >> (8 * i));
    for (uint32_t i = 0; i < n; i++)
        kvs__shm_put_entry(out + 8 + KVS_SHM_ENTRY_LEN * i, &e[i]);
    return 8 + (size_t)KVS_SHM_ENTRY_LEN * n;
}

Test(shm, handover_answer_round_trips)
{
    kvs__shm_entry_t in[3] = {{.status = 0,
                               .kind = KVS_SHM_KIND_MEMFD,
                               .base = 0x1000,
                               .len = 4096,
                               .off = 0,
                               .size = 8192},
                              {.status = KVS_ERR_NOT_FOUND, .base = 0x9000, .len = 64},
                              {.status = 0,
                               .kind = KVS_SHM_KIND_CUDA_VMM,
                               .base = 0x7f0000000000ull,
                               .len = 1 << 20,
                               .off = 1 << 20,
                               .size = 2 << 20}};
    uint8_t buf[8 + 3 * KVS_SHM_ENTRY_LEN];
    kvs__shm_entry_t out[3];
    const char *why = "x";
    size_t len = reply(buf, 3, in);
    cr_assert_eq(kvs__shm_parse_reply(buf, len, 3, 2, out, &why), KVS_OK, "%s", why);
    cr_assert_null(why);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(out[i].status, in[i].status);
        cr_expect_eq(out[i].kind, in[i].kind);
        cr_expect_eq(out[i].base, in[i].base);
        cr_expect_eq(out[i].len, in[i].len);
        cr_expect_eq(out[i].off, in[i].off);
        cr_expect_eq(out[i].size, in[i].size);
    }
}

Test(shm, handover_answer_is_parsed_strictly)
{
    const kvs__shm_entry_t good = {.status = 0,
                                   .kind = KVS_SHM_KIND_CUDA_VMM,
                                   .base = 0x10000,
                                   .len = 4096,
                                   .off = 4096,
                                   .size = 8192};
    uint8_t buf[8 + 2 * KVS_SHM_ENTRY_LEN];
    kvs__shm_entry_t out[2];
    const char *why = NULL;
    size_t len = reply(buf, 1, &good);
    cr_assert_eq(kvs__shm_parse_reply(buf, len, 1, 1, out, NULL), KVS_OK);
    /* Length, count, magic, descriptors. */
    cr_expect_eq(kvs__shm_parse_reply(buf, len - 1, 1, 1, out, &why), KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong length");
    cr_expect_eq(kvs__shm_parse_reply(buf, len, 2, 1, out, NULL), KVS_ERR_PROTOCOL);
    cr_expect_eq(kvs__shm_parse_reply(buf, len, 0, 0, out, NULL), KVS_ERR_PROTOCOL);
    cr_expect_eq(kvs__shm_parse_reply(buf, len, 1, 0, out, &why), KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "descriptors do not match the entries");
    cr_expect_eq(kvs__shm_parse_reply(buf, len, 1, 2, out, NULL), KVS_ERR_PROTOCOL);
    buf[0] ^= 1;
    cr_expect_eq(kvs__shm_parse_reply(buf, len, 1, 1, out, NULL), KVS_ERR_PROTOCOL);
    buf[0] ^= 1;
    /* Each field of an entry. */
    const struct {
        kvs__shm_entry_t e;
        const char *why;
    } bad[] = {
        {{.status = 0, .kind = 3, .len = 1, .size = 1}, "unknown kind"},
        {{.status = 0, .kind = 0, .len = 1, .size = 1}, "unknown kind"},
        {{.status = 0, .kind = KVS_SHM_KIND_MEMFD, .len = 0, .size = 1},
         "a region outside its object"},
        {{.status = 0, .kind = KVS_SHM_KIND_CUDA_VMM, .len = 4097, .off = 4096, .size = 8192},
         "a region outside its object"},
        {{.status = 0, .kind = KVS_SHM_KIND_CUDA_VMM, .len = 1, .off = 9000, .size = 8192},
         "a region outside its object"},
        {{.status = 0, .kind = KVS_SHM_KIND_MEMFD, .base = UINT64_MAX, .len = 2, .size = 8},
         "a region outside its object"},
        {{.status = 0, .kind = KVS_SHM_KIND_MEMFD, .len = 8, .off = UINT64_MAX, .size = 8},
         "a region outside its object"},
        {{.status = KVS_ERR_NOT_FOUND, .kind = KVS_SHM_KIND_MEMFD},
         "an entry without a descriptor names a kind"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        len = reply(buf, 1, &bad[i].e);
        uint32_t nfds = bad[i].e.status == 0 ? 1 : 0;
        why = NULL;
        cr_expect_eq(kvs__shm_parse_reply(buf, len, 1, nfds, out, &why), KVS_ERR_PROTOCOL,
                     "case %zu", i);
        cr_expect(why != NULL && strcmp(why, bad[i].why) == 0, "case %zu: %s", i, why);
    }
}

/* The fuzzer's seeds (tests/fuzz/make_corpus.py) are answers a reader accepts. */
Test(shm, fuzz_seeds_are_valid_answers)
{
    DIR *dir = opendir(KVS_CORPUS_DIR);
    cr_assert_not_null(dir, "%s", KVS_CORPUS_DIR);
    int seen = 0, offers_seen = 0;
    for (struct dirent *de; (de = readdir(dir)) != NULL;) {
        if (de->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", KVS_CORPUS_DIR, de->d_name);
        uint8_t buf[KVS_SHM_OFFER_FIXED + KVS_SHM_OFFER_ENTRY_LEN * KVS_SHM_MAX_IDS + 2];
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f, "%s", path);
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        cr_assert_geq(len, 2, "%s", path);
        kvs__shm_entry_t out[KVS_SHM_MAX_IDS];
        const char *why = NULL;
        if (buf[0] >= 0x80 && buf[1] == 1) { /* a node's answer to an offer (fuzz_shm.c) */
            int32_t status[KVS_SHM_MAX_IDS];
            cr_expect_eq(kvs__shm_parse_offer_reply(buf + 2, len - 2, buf[0] - 0x80u, status, &why),
                         KVS_OK, "%s: %s", de->d_name, why);
            offers_seen++;
            continue;
        }
        if (buf[0] >= 0x80) { /* an offer (fuzz_shm.c) */
            kvs__shm_offer_t offers[KVS_SHM_MAX_IDS];
            const uint8_t *session, *mac;
            uint32_t n = 0;
            cr_expect_eq(kvs__shm_parse_offer(buf + 2, len - 2, buf[0] - 0x80u, &session, &mac,
                                              offers, &n, &why),
                         KVS_OK, "%s: %s", de->d_name, why);
            offers_seen++;
            continue;
        }
        cr_expect_eq(kvs__shm_parse_reply(buf + 2, len - 2, buf[1], buf[0], out, &why), KVS_OK,
                     "%s: %s", de->d_name, why);
        seen++;
    }
    closedir(dir);
    cr_expect_geq(seen, 3);
    cr_expect_geq(offers_seen, 5);
}

static size_t offer_msg(uint8_t *out, const kvs__shm_offer_t *e, uint32_t n)
{
    uint8_t session[KVS_PROTO_SESSION_LEN], mac[KVS_PROTO_MAC_LEN];
    for (size_t i = 0; i < sizeof(session); i++)
        session[i] = (uint8_t)i;
    memset(mac, 0xAB, sizeof(mac));
    kvs__shm_put_offer(out, session, mac, e, n);
    return KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n;
}

Test(shm, offer_round_trips)
{
    const kvs__shm_offer_t in[2] = {{.id = 3,
                                     .kind = KVS_SHM_KIND_MEMFD,
                                     .base = 0x7f0000001000ull,
                                     .len = 1 << 20,
                                     .off = 4096,
                                     .size = (1 << 20) + 4096},
                                    {.id = 9,
                                     .kind = KVS_SHM_KIND_CUDA_VMM,
                                     .base = 0x2000,
                                     .len = 64,
                                     .off = 0,
                                     .size = 1 << 21}};
    uint8_t buf[KVS_SHM_OFFER_FIXED + 2 * KVS_SHM_OFFER_ENTRY_LEN];
    size_t len = offer_msg(buf, in, 2);
    kvs__shm_offer_t out[KVS_SHM_MAX_IDS];
    const uint8_t *session = NULL, *mac = NULL;
    const char *why = "x";
    uint32_t n = 0;
    cr_assert_eq(kvs__shm_parse_offer(buf, len, 2, &session, &mac, out, &n, &why), KVS_OK, "%s",
                 why);
    cr_assert_null(why);
    cr_assert_eq(n, 2);
    cr_expect_eq(session, buf + 4);
    cr_expect_eq(mac, buf + 4 + KVS_PROTO_SESSION_LEN);
    cr_expect_eq(session[5], 5);
    cr_expect_eq(mac[31], 0xAB);
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(out[i].id, in[i].id);
        cr_expect_eq(out[i].base, in[i].base);
        cr_expect_eq(out[i].len, in[i].len);
        cr_expect_eq(out[i].off, in[i].off);
        cr_expect_eq(out[i].kind, in[i].kind);
        cr_expect_eq(out[i].size, in[i].size);
    }
    /* No regions: an identify request that offers nothing. */
    len = offer_msg(buf, in, 0);
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, NULL), KVS_OK);
    cr_expect_eq(n, 0);
}

/* A withdrawal (kind 3) names a region id only and brings no descriptor; it
 * may share an offer with regions that do. */
Test(shm, withdrawal_is_parsed_strictly)
{
    const kvs__shm_offer_t in[3] = {
        {.id = 4, .kind = KVS_SHM_KIND_WITHDRAW},
        {.id = 5, .kind = KVS_SHM_KIND_MEMFD, .base = 0x10000, .len = 4096, .size = 4096},
        {.id = 6, .kind = KVS_SHM_KIND_WITHDRAW}};
    uint8_t buf[KVS_SHM_OFFER_FIXED + 3 * KVS_SHM_OFFER_ENTRY_LEN];
    kvs__shm_offer_t out[KVS_SHM_MAX_IDS];
    const uint8_t *session, *mac;
    const char *why = NULL;
    uint32_t n = 0;
    size_t len = offer_msg(buf, in, 3);
    cr_assert_eq(kvs__shm_parse_offer(buf, len, 1, &session, &mac, out, &n, &why), KVS_OK, "%s",
                 why);
    cr_assert_eq(n, 3);
    cr_expect_eq(out[0].kind, KVS_SHM_KIND_WITHDRAW);
    cr_expect_eq(out[0].id, 4);
    cr_expect_eq(out[2].id, 6);
    /* One descriptor per offered region only: none, or one per entry, is wrong. */
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "descriptors do not match the entries");
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 3, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "descriptors do not match the entries");
    /* Withdrawals alone: no descriptor at all. */
    len = offer_msg(buf, in, 1);
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, NULL), KVS_OK);
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 1, &session, &mac, out, &n, NULL),
                 KVS_ERR_PROTOCOL);
    /* A withdrawal that describes a region (any of base, len, off, size). */
    for (int f = 0; f < 4; f++) {
        kvs__shm_offer_t w = {.id = 4, .kind = KVS_SHM_KIND_WITHDRAW};
        *(f == 0 ? &w.base : f == 1 ? &w.len : f == 2 ? &w.off : &w.size) = 1;
        len = offer_msg(buf, &w, 1);
        cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, &why),
                     KVS_ERR_PROTOCOL, "field %d", f);
        cr_expect_str_eq(why, "a withdrawal that describes a region");
        cr_expect_eq(n, 0);
    }
    /* The same id withdrawn twice. */
    const kvs__shm_offer_t twice[2] = {{.id = 7, .kind = KVS_SHM_KIND_WITHDRAW},
                                       {.id = 7, .kind = KVS_SHM_KIND_WITHDRAW}};
    len = offer_msg(buf, twice, 2);
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "a region named twice");
}

#define OUTSIDE "a region with no bytes, wrapping, or outside its object"

Test(shm, offer_is_parsed_strictly)
{
    const kvs__shm_offer_t good = {
        .id = 1, .kind = KVS_SHM_KIND_MEMFD, .base = 0x10000, .len = 4096, .off = 0, .size = 4096};
    uint8_t buf[KVS_SHM_OFFER_FIXED + 2 * KVS_SHM_OFFER_ENTRY_LEN + 8];
    kvs__shm_offer_t out[KVS_SHM_MAX_IDS];
    const uint8_t *session, *mac;
    const char *why = NULL;
    uint32_t n = 7;
    size_t len = offer_msg(buf, &good, 1);
    cr_assert_eq(kvs__shm_parse_offer(buf, len, 1, &session, &mac, out, &n, NULL), KVS_OK);
    /* Length (short, long, below the fixed part), magic, descriptors, count. */
    cr_expect_eq(kvs__shm_parse_offer(buf, len - 1, 1, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong length or count");
    cr_expect_eq(n, 0);
    cr_expect_eq(kvs__shm_parse_offer(buf, len + 1, 1, &session, &mac, out, &n, NULL),
                 KVS_ERR_PROTOCOL);
    cr_expect_eq(kvs__shm_parse_offer(buf, 10, 1, &session, &mac, out, &n, &why), KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong length");
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 0, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "descriptors do not match the entries");
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 2, &session, &mac, out, &n, NULL),
                 KVS_ERR_PROTOCOL);
    buf[0] ^= 1;
    cr_expect_eq(kvs__shm_parse_offer(buf, len, 1, &session, &mac, out, &n, &why),
                 KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong magic");
    buf[0] ^= 1;
    /* A count past the bound, with a length to match it. */
    uint8_t big[KVS_SHM_OFFER_FIXED + KVS_SHM_OFFER_ENTRY_LEN * (KVS_SHM_MAX_IDS + 1)];
    memset(big, 0, sizeof(big));
    memcpy(big, buf, KVS_SHM_OFFER_FIXED);
    big[KVS_SHM_OFFER_FIXED - 4] = KVS_SHM_MAX_IDS + 1;
    cr_expect_eq(
        kvs__shm_parse_offer(big, sizeof(big), KVS_SHM_MAX_IDS + 1, &session, &mac, out, &n, &why),
        KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong length or count");
    /* Each entry. */
    const struct {
        kvs__shm_offer_t e[2];
        uint32_t n;
        const char *why;
    } bad[] = {
        {{{.id = 1, .kind = 4, .base = 0x1000, .len = 64, .size = 64}}, 1, "unknown kind"},
        {{{.id = 1, .kind = 0, .base = 0x1000, .len = 64, .size = 64}}, 1, "unknown kind"},
        {{{.id = 1, .kind = KVS_SHM_KIND_MEMFD, .base = 0x1000, .len = 0, .size = 64}}, 1, OUTSIDE},
        {{{.id = 1, .kind = KVS_SHM_KIND_MEMFD, .base = UINT64_MAX - 10, .len = 64, .size = 64}},
         1,
         OUTSIDE},
        {{{.id = 1,
           .kind = KVS_SHM_KIND_CUDA_VMM,
           .base = 0x1000,
           .len = 64,
           .off = 4096,
           .size = 4100}},
         1,
         OUTSIDE},
        {{{.id = 1,
           .kind = KVS_SHM_KIND_MEMFD,
           .base = 0x1000,
           .len = 64,
           .off = UINT64_MAX - 3,
           .size = UINT64_MAX}},
         1,
         OUTSIDE},
        {{{.id = 1, .kind = KVS_SHM_KIND_MEMFD, .base = 0x1000, .len = 64, .off = 8, .size = 4}},
         1,
         OUTSIDE},
        {{{.id = 4, .kind = KVS_SHM_KIND_MEMFD, .base = 0x1000, .len = 64, .size = 64},
          {.id = 4, .kind = KVS_SHM_KIND_MEMFD, .base = 0x9000, .len = 64, .size = 64}},
         2,
         "a region named twice"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        len = offer_msg(buf, bad[i].e, bad[i].n);
        why = NULL;
        cr_expect_eq(kvs__shm_parse_offer(buf, len, bad[i].n, &session, &mac, out, &n, &why),
                     KVS_ERR_PROTOCOL, "case %zu", i);
        cr_expect(why != NULL && strcmp(why, bad[i].why) == 0, "case %zu: %s", i, why);
    }
}

/* Whether [p, p + len) is mapped read-only and shared (/proc/self/maps). */
static bool mapped_read_only(const void *p)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    bool ro = false;
    uintptr_t a = (uintptr_t)p;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && a >= lo && a < hi)
            ro = strcmp(perms, "r--s") == 0;
    }
    if (f != NULL)
        fclose(f);
    return ro;
}

/* A node maps an offered region only from a memfd sealed against shrinking
 * that holds all of it: a pipe, an unsealed memfd or one too small for the
 * region are refused (a read of the mapping could fault or mean nothing). */
Test(shm, offered_memory_maps_only_from_a_sealed_memfd_that_holds_it)
{
    const char *why = NULL;
    uint8_t *mem = kvs__shm_alloc(3 * 4096, "test-offer");
    cr_assert_not_null(mem);
    for (int i = 0; i < 3 * 4096; i++)
        mem[i] = (uint8_t)(i * 7);
    uint64_t off = 99;
    int fd = kvs__shm_fd_of(mem + 4096, 8192, &off);
    cr_assert_geq(fd, 0);
    kvs__shm_offer_t o = {.id = 5,
                          .kind = KVS_SHM_KIND_MEMFD,
                          .base = 0x50000,
                          .len = 8192,
                          .off = off,
                          .size = 3 * 4096};
    kvs__shm_pmap_t *m = kvs__shm_pmap_open(fd, &o, &why);
    cr_assert_not_null(m, "%s", why);
    cr_expect_eq(m->id, 5);
    cr_expect_eq(m->base, 0x50000);
    cr_expect_eq(m->len, 8192);
    cr_expect_null(m->cuda);
    cr_expect_eq(memcmp(m->at, mem + 4096, 8192), 0);
    uint8_t back[100];
    const char *cwhy = NULL;
    cr_expect(kvs__shm_pmap_copy(m, back, m->at + 5, sizeof(back), &cwhy));
    cr_expect_eq(memcmp(back, mem + 4096 + 5, sizeof(back)), 0);
    cr_expect(mapped_read_only(m->at));
    mem[4096 + 17] ^= 0xFF; /* the same pages: a write on the client's side shows */
    cr_expect_eq(m->at[17], mem[4096 + 17]);
    kvs__shm_pmap_free(m);
    kvs__shm_pmap_free(NULL);

    o.len = 3 * 4096 - off + 1; /* one byte past the memfd */
    cr_expect_null(kvs__shm_pmap_open(fd, &o, &why));
    cr_expect_str_eq(why, "the region lies outside the memfd");
    o.off = UINT64_MAX - 1;
    o.len = 8;
    cr_expect_null(kvs__shm_pmap_open(fd, &o, &why));
    kvs__shm_free(mem);

    int p[2];
    cr_assert_eq(pipe(p), 0);
    o = (kvs__shm_offer_t){.id = 1, .kind = KVS_SHM_KIND_MEMFD, .base = 0x1000, .len = 4096};
    cr_expect_null(kvs__shm_pmap_open(p[0], &o, &why));
    cr_expect_str_eq(why, "not a memfd");
    close(p[0]);
    close(p[1]);

    int unsealed = memfd_create("kvs-test-unsealed", MFD_ALLOW_SEALING);
    cr_assert_geq(unsealed, 0);
    cr_assert_eq(ftruncate(unsealed, 8192), 0);
    cr_expect_null(kvs__shm_pmap_open(unsealed, &o, &why));
    cr_expect_str_eq(why, "not sealed against shrinking");
    cr_assert_eq(fcntl(unsealed, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    m = kvs__shm_pmap_open(unsealed, &o, &why);
    cr_expect_not_null(m, "%s", why);
    kvs__shm_pmap_free(m);
    close(unsealed);
}

Test(shm, offer_reply_is_parsed_strictly)
{
    uint8_t rep[8 + 4 * 3];
    const uint32_t words[5] = {KVS_SHM_MAGIC, 3, 0, (uint32_t)KVS_ERR_UNSUPPORTED, 0};
    for (int i = 0; i < 5; i++)
        for (int b = 0; b < 4; b++)
            rep[4 * i + b] = (uint8_t)(words[i] >> (8 * b));
    int32_t st[KVS_SHM_MAX_IDS];
    const char *why = NULL;
    cr_assert_eq(kvs__shm_parse_offer_reply(rep, sizeof(rep), 3, st, &why), KVS_OK, "%s", why);
    cr_expect_eq(st[0], 0);
    cr_expect_eq(st[1], KVS_ERR_UNSUPPORTED);
    cr_expect_eq(st[2], 0);
    cr_expect_eq(kvs__shm_parse_offer_reply(rep, sizeof(rep) - 1, 3, st, &why), KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong length");
    cr_expect_eq(kvs__shm_parse_offer_reply(rep, sizeof(rep) - 4, 2, st, &why), KVS_ERR_PROTOCOL);
    cr_expect_str_eq(why, "wrong magic or count");
    rep[0] ^= 1;
    cr_expect_eq(kvs__shm_parse_offer_reply(rep, sizeof(rep), 3, st, &why), KVS_ERR_PROTOCOL);
    cr_expect_eq(kvs__shm_parse_offer_reply(rep, 8, 65, st, &why), KVS_ERR_PROTOCOL);
}
