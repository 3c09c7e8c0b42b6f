/* SPDX-License-Identifier: Apache-2.0 */
/* test_boot.c - the server's half of the bootstrap handshake, without sockets. */
#include "boot_int.h"
#include "proto_int.h"

#include <criterion/criterion.h>
#include <string.h>

static const uint8_t secret[] = "s3cret";
static kvs__boot_srv_t s;
static kvs__buf_t b;
static char why[256];

static void init(void)
{
    memset(&s, 0, sizeof(s));
    kvs__buf_init(&b);
    why[0] = '\0';
}

static void fini(void)
{
    kvs__buf_free(&b);
}

TestSuite(boot, .init = init, .fini = fini);

/* A fresh handshake within a test. */
static void reset(void)
{
    fini();
    init();
}

/* Feeds @b into the handshake @step bytes at a time, as reads would. */
static kvs_status_t feed(size_t step, bool open)
{
    size_t off = 0;
    for (;;) {
        long want = kvs__boot_srv_want(&s, why, sizeof(why));
        if (want < 0)
            return KVS_ERR_PROTOCOL;
        if (want == 0)
            break;
        cr_assert(off < b.len, "wants %ld more bytes than the message has", want);
        size_t n = (size_t)want < step ? (size_t)want : step;
        memcpy(s.rx + s.rx_len, b.data + off, n);
        s.rx_len += n;
        off += n;
    }
    cr_assert_eq(off, b.len, "stopped after %zu of %zu bytes", off, b.len);
    return kvs__boot_srv_take(&s, secret, sizeof(secret) - 1, open, why, sizeof(why));
}

static void hello(void)
{
    uint8_t nc[32];
    memset(nc, 0xc1, sizeof(nc));
    cr_assert_eq(kvs__enc_hello(&b, 4, 77, nc, "client"), KVS_OK);
    cr_assert_eq(feed(3, false), KVS_INPROGRESS, "%s", why);
    cr_assert_eq(s.layout_id, 77);
    cr_assert_eq(s.req_id, 4);
    cr_assert_eq(s.state, KVS_BOOT_WAIT_AUTH);
    memset(s.nonce_s, 0x5e, sizeof(s.nonce_s));
}

Test(boot, a_proved_auth_is_accepted_with_its_address)
{
    hello();
    uint8_t mac[32];
    kvs__boot_proof(secret, sizeof(secret) - 1, false, "kvshare-client", s.nonce_c, s.nonce_s, mac);
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "worker-address", 14), KVS_OK);
    cr_assert_eq(feed(1000, false), KVS_OK, "%s", why);
    cr_assert_eq(s.addr_len, 14);
    cr_assert_eq(memcmp(s.addr, "worker-address", 14), 0);
    cr_assert_eq(s.state, KVS_BOOT_DONE);
}

/* Only a HELLO whose name ends with the marker is offered the same-host path. */
Test(boot, the_shm_marker_ends_the_name)
{
    static const struct {
        const char *name;
        bool shm;
    } cases[] = {{"node:12" KVS_BOOT_SHM_MARK, true}, {KVS_BOOT_SHM_MARK, true}, {"node:12", false},
                 {"node:12 +shm more", false},        {"+shm", false},           {"", false}};
    uint8_t nc[32];
    memset(nc, 0xc1, sizeof(nc));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        reset();
        cr_assert_eq(kvs__enc_hello(&b, 4, 77, nc, cases[i].name), KVS_OK);
        cr_assert_eq(feed(7, false), KVS_INPROGRESS, "%s", why);
        cr_assert_eq(s.shm, cases[i].shm, "name '%s'", cases[i].name);
    }
}

Test(boot, a_wrong_proof_is_refused)
{
    hello();
    uint8_t mac[32];
    /* The right secret over the wrong nonce (a replayed proof), then a wrong secret. */
    uint8_t other[32];
    memset(other, 1, sizeof(other));
    kvs__boot_proof(secret, sizeof(secret) - 1, false, "kvshare-client", s.nonce_c, other, mac);
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "a", 1), KVS_OK);
    cr_assert_eq(feed(7, false), KVS_ERR_AUTH);
    cr_assert(strstr(why, "KVSHARE_AUTH_TOKEN_FILE") != NULL, "%s", why);
    s.rx_len = 0;
    kvs__boot_proof((const uint8_t *)"other", 5, false, "kvshare-client", s.nonce_c, s.nonce_s,
                    mac);
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "a", 1), KVS_OK);
    cr_assert_eq(feed(7, false), KVS_ERR_AUTH);
    cr_assert_eq(s.addr, NULL);
}

Test(boot, open_mode_needs_no_proof_but_an_address)
{
    hello();
    uint8_t mac[32] = {0};
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "", 0), KVS_OK);
    cr_assert_eq(feed(9, true), KVS_ERR_PROTOCOL);
    cr_assert(strstr(why, "no transport address") != NULL, "%s", why);
    s.rx_len = 0;
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "x", 1), KVS_OK);
    cr_assert_eq(feed(9, true), KVS_OK, "%s", why);
}

Test(boot, messages_out_of_order_are_refused)
{
    uint8_t mac[32] = {0};
    cr_assert_eq(kvs__enc_auth(&b, 5, mac, "x", 1), KVS_OK);
    cr_assert_eq(feed(64, true), KVS_ERR_PROTOCOL);
    cr_assert(strstr(why, "unexpected message type 3") != NULL, "%s", why);
    reset();
    kvs_key_t k = {{0}};
    uint8_t sess[16] = {0};
    cr_assert_eq(kvs__enc_lookup(&b, 1, sess, 1, 1, &k, 1), KVS_OK);
    cr_assert_eq(feed(64, true), KVS_ERR_PROTOCOL);
    reset();
    hello();
    uint8_t nc[32] = {0};
    cr_assert_eq(kvs__enc_hello(&b, 4, 77, nc, "again"), KVS_OK);
    cr_assert_eq(feed(64, true), KVS_ERR_PROTOCOL, "a second HELLO");
}

/* A header claiming more than the pre-auth bound is refused from the
 * header alone: nothing is allocated or read for it. */
Test(boot, oversized_claims_are_refused_from_the_header)
{
    uint8_t nc[32] = {0};
    cr_assert_eq(kvs__enc_hello(&b, 4, 77, nc, "x"), KVS_OK);
    uint32_t huge = KVS_PROTO_MAX_PREAUTH + 1;
    memcpy(b.data + 12, &huge, 4);
    memcpy(s.rx, b.data, KVS_PROTO_HDR_LEN);
    s.rx_len = KVS_PROTO_HDR_LEN;
    cr_assert_eq(kvs__boot_srv_want(&s, why, sizeof(why)), -1);
    cr_assert(strstr(why, "exceeds") != NULL, "%s", why);
    /* A body that does not parse as what its header says is refused too. */
    reset();
    memset(s.rx, 0xff, 16);
    s.rx_len = 16;
    cr_assert_eq(kvs__boot_srv_want(&s, why, sizeof(why)), KVS_PROTO_HDR_LEN - 16);
    s.rx_len = KVS_PROTO_HDR_LEN;
    memset(s.rx, 0xff, KVS_PROTO_HDR_LEN);
    cr_assert_eq(kvs__boot_srv_want(&s, why, sizeof(why)), -1);
    cr_assert(strstr(why, "magic") != NULL, "%s", why);
}
