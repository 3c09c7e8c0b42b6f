/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_redis.c - libFuzzer target: the Redis Cluster replies `kvshare index --redis-cluster`
 * reads from the network (connectors/index/redis/ixredis_int.h).
 *
 * Input: RESP bytes, read by hiredis's reader as our connections set it up into reply trees (up to
 * 8); each goes to the CLUSTER SLOTS parser and, when it is an error, to the MOVED/ASK parser. An
 * accepted slot map must point every served slot at a node with a host and a port in 1..65535, and
 * the last entry's slots at that entry's port; a refusal must say why. A redirect is parsed
 * for the slot it names: accepted, its node has a host and the port it names; the same text
 * for another slot, or a slot >= 16384, is refused with a reason. */
#include "ixredis_int.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NSLOTS 16384

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SEED "seed.example"

/* Node n exists, has a host and a port; want_port (when > 0) and want_host (when not NULL,
 * hl bytes) are what the reply named. */
static void node_ok(const kvs__ixr_t *r, int n, long want_port, const char *want_host, size_t hl)
{
    const char *host;
    int port;
    if (!kvs__ixr_node_addr(r, n, &host, &port) || host[0] == '\0' || port < 1 || port > 65535)
        abort();
    if (want_port > 0 && port != want_port)
        abort();
    if (want_host != NULL && (strlen(host) != hl || memcmp(host, want_host, hl) != 0))
        abort();
}

static void check_slots(kvs__ixr_t *r, const redisReply *rep)
{
    static int16_t map[NSLOTS];
    char why[300] = "";
    if (!kvs__ixr_parse_slots_reply(r, rep, map, why, sizeof(why))) {
        if (why[0] == '\0')
            abort(); /* a refusal always says why */
        return;
    }
    size_t served = 0;
    for (size_t s = 0; s < NSLOTS; s++)
        if (map[s] >= 0) {
            node_ok(r, map[s], 0, NULL, 0);
            served++;
        } else if (map[s] != -1) {
            abort();
        }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0 || served == 0)
        abort();
    /* The last entry wins its slots: they go to its node, on its port. */
    const redisReply *e = rep->element[rep->elements - 1];
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    if (lo < 0 || hi >= NSLOTS || lo > hi)
        abort();
    const redisReply *h = e->element[2]->element[0];
    bool asker = h->len == 0 || (h->len == 1 && h->str[0] == '?'); /* the node that answered */
    for (long long s = lo; s <= hi; s++)
        node_ok(r, map[s], (long)e->element[2]->element[1]->integer, asker ? SEED : h->str,
                asker ? strlen(SEED) : h->len);
}

static void check_redirect(kvs__ixr_t *r, const redisReply *rep)
{
    char why[300] = "";
    if (kvs__ixr_parse_redirect(r, rep, 0, why, sizeof(why)) == -2) {
        /* not MOVED/ASK: */
        if (rep->type == REDIS_REPLY_ERROR &&
            (strncmp(rep->str, "MOVED ", 6) == 0 || strncmp(rep->str, "ASK ", 4) == 0))
            abort();
        return;
    }
    if (rep->type != REDIS_REPLY_ERROR)
        abort();
    /* The slot it names, read here on our own: digits after the keyword. */
    const char *p = rep->str + (rep->str[0] == 'M' ? 6 : 4);
    unsigned long slot = 0;
    size_t nd = 0;
    while (p[nd] >= '0' && p[nd] <= '9' && nd < 6)
        slot = slot * 10 + (unsigned long)(p[nd++] - '0');
    if (nd == 0 || slot >= NSLOTS)
        slot = 0;
    why[0] = '\0';
    int n = kvs__ixr_parse_redirect(r, rep, (unsigned)slot, why, sizeof(why));
    if (n < 0) {
        if (n != -1 || why[0] == '\0')
            abort();
    } else {
        const char *colon = memrchr(rep->str, ':', rep->len);
        if (colon == NULL)
            abort();
        node_ok(r, n, strtol(colon + 1, NULL, 10), NULL, 0);
        /* The same redirect for any other slot is refused. */
        why[0] = '\0';
        if (kvs__ixr_parse_redirect(r, rep, (unsigned)(slot + 1) % NSLOTS, why, sizeof(why)) !=
                -1 ||
            why[0] == '\0')
            abort();
    }
    why[0] = '\0';
    if (kvs__ixr_parse_redirect(r, rep, NSLOTS, why, sizeof(why)) != -1 || why[0] == '\0')
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[300];
    /* A fresh client per input: the nodes a reply adds stay, and a full table (1024 nodes)
     * would make runs depend on earlier inputs. */
    kvs__ixr_t *r =
        kvs__ixr_create("redis://" SEED ":7000", "fuzz", 3000, NULL, true, why, sizeof(why));
    if (r == NULL)
        abort();
    redisReader *rd = kvs__ixr_reader_create();
    if (rd == NULL || redisReaderFeed(rd, (const char *)data, size) != REDIS_OK)
        abort();
    for (int i = 0; i < 8; i++) {
        void *v = NULL;
        if (redisReaderGetReply(rd, &v) != REDIS_OK || v == NULL)
            break;
        check_slots(r, v);
        check_redirect(r, v);
        freeReplyObject(v);
    }
    redisReaderFree(rd);
    kvs__ixr_destroy(r);
    return 0;
}
