/* SPDX-License-Identifier: Apache-2.0 */
/* placement.c - which cache-pool node holds a chain: KVSHARE_POOL resolution and rendezvous
 * hashing.
 *
 * A chain is placed by its first key, so a prompt and every prompt that
 * shares its first block live on the same node: the longest cached prefix is
 * always on one node, found with one round trip. Rendezvous (highest random
 * weight) hashing picks that node: losing a node loses only its chains, and
 * adding one moves only the ~1/N of chains it now wins. The price is skew
 * when one first block (a popular system prompt) dominates; DESIGN.md notes
 * it. */
#include "ctx_int.h"
#include "util_int.h"

#include <netdb.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_PORT       "18515"
#define RERESOLVE_EVERY_MS 5000u

/* FNV-1a over the node name, then mixed with the key: a stable weight. */
static uint64_t weight(const kvs_key_t *key, const char *node)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = node; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    uint64_t k;
    memcpy(&k, key->bytes, sizeof(k));
    h ^= k;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

size_t kvs__rendezvous(const kvs_key_t *key, const char *const *nodes, size_t n)
{
    size_t best = 0;
    uint64_t bw = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t w = weight(key, nodes[i]);
        if (i == 0 || w > bw) {
            bw = w;
            best = i;
        }
    }
    return best;
}

static kvs_status_t add_node(kvs_ctx_h ctx, char (**nodes)[300], size_t *n, const char *node)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*nodes)[i], node) == 0)
            return KVS_OK;
    char(*nn)[300] = kvs__realloc(*nodes, (*n + 1) * sizeof(**nodes));
    if (nn == NULL)
        return KVS_ERR_NO_MEMORY;
    *nodes = nn;
    snprintf(nn[*n], sizeof(nn[*n]), "%s", node);
    (*n)++;
    (void)ctx;
    return KVS_OK;
}

/* One entry of KVSHARE_POOL: "host:port", "[v6]:port", or a DNS name
 * (with or without a port) that resolves to every node, as a headless
 * Service does. */
static kvs_status_t resolve_entry(kvs_ctx_h ctx, const char *entry, char (**nodes)[300], size_t *n)
{
    kvs__endpoint_t ep;
    char why[128];
    if (kvs__endpoint_parse(entry, KVS__EP_PORT_OPTIONAL, &ep, why, sizeof(why)) != 0) {
        kvs__warn(&ctx->log, "KVSHARE_POOL entry '%s': %s", entry, why);
        return KVS_ERR_CONFIG;
    }
    const char *host = ep.host, *port = ep.has_port ? ep.port : DEFAULT_PORT;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        kvs__warn(&ctx->log, "KVSHARE_POOL entry '%s': %s", entry, gai_strerror(rc));
        return KVS_ERR_NOT_FOUND;
    }
    kvs_status_t st = KVS_OK;
    for (struct addrinfo *a = ai; a != NULL && st == KVS_OK; a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN], node[300];
        if (a->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, ip, sizeof(ip));
        else if (a->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, ip, sizeof(ip));
        else
            continue;
        kvs__endpoint_format(node, sizeof(node), ip, port);
        st = add_node(ctx, nodes, n, node);
    }
    freeaddrinfo(ai);
    return st;
}

static kvs_status_t resolve_pool(kvs_ctx_h ctx)
{
    char(*nodes)[300] = NULL;
    size_t n = 0;
    char list[sizeof(ctx->cfg.pool)];
    snprintf(list, sizeof(list), "%s", ctx->cfg.pool);
    char *save = NULL;
    for (char *e = strtok_r(list, ", ", &save); e != NULL; e = strtok_r(NULL, ", ", &save)) {
        kvs_status_t st = resolve_entry(ctx, e, &nodes, &n);
        if (st == KVS_ERR_NO_MEMORY) {
            kvs__free(nodes);
            return st;
        }
    }
    if (n == 0) {
        kvs__free(nodes);
        /* Keep the last good membership: a DNS hiccup must not empty the pool. */
        return ctx->npool_nodes > 0 ? KVS_OK : KVS_ERR_NOT_FOUND;
    }
    if (n != ctx->npool_nodes)
        kvs__info(&ctx->log, "KVSHARE_POOL '%s': %zu node(s)", ctx->cfg.pool, n);
    kvs__free(ctx->pool_nodes);
    ctx->pool_nodes = nodes;
    ctx->npool_nodes = n;
    return KVS_OK;
}

kvs_status_t kvs__pool_node_for(struct kvs_ctx *ctx, const kvs_key_t *first, char *out, size_t len)
{
    if (ctx->cfg.pool[0] == '\0')
        return KVS_ERR_UNSUPPORTED;
    kvs_status_t st = KVS_OK;
    pthread_mutex_lock(&ctx->pool_lock);
    uint64_t now = kvs__now_ms();
    if (ctx->npool_nodes == 0 || now - ctx->pool_resolved_ms >= RERESOLVE_EVERY_MS) {
        st = resolve_pool(ctx);
        ctx->pool_resolved_ms = now;
    }
    if (st == KVS_OK) {
        const char *names[256];
        size_t n = ctx->npool_nodes < 256 ? ctx->npool_nodes : 256;
        for (size_t i = 0; i < n; i++)
            names[i] = ctx->pool_nodes[i];
        snprintf(out, len, "%s", names[kvs__rendezvous(first, names, n)]);
    } else {
        kvs__error(&ctx->log, "KVSHARE_POOL '%s': no node could be resolved", ctx->cfg.pool);
    }
    pthread_mutex_unlock(&ctx->pool_lock);
    return st == KVS_ERR_NOT_FOUND ? KVS_ERR_PEER_FAILED : st;
}
