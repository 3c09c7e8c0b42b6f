/* SPDX-License-Identifier: Apache-2.0 */
/* tokkeys.c - token mode: per-pod maps engine hash -> derived key, and the derivation. */
#include "tokkeys_int.h"
#include "ixalloc_int.h"

#include <stdlib.h>
#include <string.h>

typedef struct tk_entry {
    uint64_t engine;
    uint32_t refs; /* media holding the block; 0: the slot is empty */
    kvs_key_t key;
} tk_entry_t;

typedef struct tk_pod {
    tk_entry_t *e;
    uint32_t mask; /* capacity - 1; 0 with e == NULL: no table yet */
    uint32_t n;
} tk_pod_t;

struct kvs__tk {
    kvs_hasher_h h;
    size_t dlen;
    uint32_t block_size;
    uint64_t entries, max_entries, bytes;
    tk_pod_t *pods;
    size_t npods;
    kvs_key_t *scratch;
    size_t scratch_cap;
};

kvs__tk_t *kvs__tk_create(kvs_hasher_h hasher, uint32_t block_size, uint64_t max_entries)
{
    kvs__tk_t *t = kvs__ix_calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->h = hasher;
    t->dlen = kvs_hasher_digest_len(hasher);
    t->block_size = block_size;
    t->max_entries = max_entries ? max_entries : UINT64_MAX;
    return t;
}

void kvs__tk_destroy(kvs__tk_t *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->npods; i++)
        free(t->pods[i].e);
    free(t->pods);
    free(t->scratch);
    free(t);
}

static inline uint32_t home(uint64_t h, uint32_t mask)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h & mask;
}

static tk_entry_t *find(const tk_pod_t *p, uint64_t engine)
{
    if (p->e == NULL)
        return NULL;
    for (uint32_t s = home(engine, p->mask);; s = (s + 1) & p->mask) {
        if (p->e[s].refs == 0)
            return NULL;
        if (p->e[s].engine == engine)
            return &p->e[s];
    }
}

static tk_pod_t *pod_of(kvs__tk_t *t, uint32_t pod, bool create)
{
    if (pod < t->npods)
        return &t->pods[pod];
    if (!create)
        return NULL;
    size_t nn = t->npods ? t->npods : 16;
    while (nn <= pod)
        nn *= 2;
    tk_pod_t *np = kvs__ix_realloc(t->pods, nn * sizeof(*np));
    if (np == NULL)
        return NULL;
    memset(np + t->npods, 0, (nn - t->npods) * sizeof(*np));
    t->pods = np;
    t->npods = nn;
    return &t->pods[pod];
}

/* Room for one more entry at load <= 1/2. */
static bool reserve(kvs__tk_t *t, tk_pod_t *p)
{
    uint32_t cap = p->e ? p->mask + 1 : 0;
    if ((uint64_t)(p->n + 1) * 2 <= cap)
        return true;
    if (cap >= (1u << 31))
        return false;
    uint32_t ncap = cap ? 2 * cap : 64;
    tk_entry_t *ne = kvs__ix_calloc(ncap, sizeof(*ne));
    if (ne == NULL)
        return false;
    for (uint32_t s = 0; s < cap; s++) {
        if (p->e[s].refs == 0)
            continue;
        uint32_t d = home(p->e[s].engine, ncap - 1);
        while (ne[d].refs != 0)
            d = (d + 1) & (ncap - 1);
        ne[d] = p->e[s];
    }
    free(p->e);
    t->bytes += (uint64_t)(ncap - cap) * sizeof(tk_entry_t);
    p->e = ne;
    p->mask = ncap - 1;
    return true;
}

/* Empties slot s: backward-shift deletion keeps every probe chain unbroken. */
static void erase(tk_pod_t *p, uint32_t s)
{
    uint32_t hole = s;
    for (uint32_t j = (hole + 1) & p->mask; p->e[j].refs != 0; j = (j + 1) & p->mask) {
        uint32_t hm = home(p->e[j].engine, p->mask);
        bool stays = hole <= j ? (hm > hole && hm <= j) : (hm > hole || hm <= j);
        if (!stays) {
            p->e[hole] = p->e[j];
            hole = j;
        }
    }
    p->e[hole].refs = 0;
    p->n--;
}

/* A borrowed, not NUL-terminated string as a C string in buf (or a fresh allocation when it
 * does not fit; *heap is then set). NULL for absent, "" never (vLLM treats "" as absent). */
static const char *cstr(const kvs__ev_str_t *s, char *buf, size_t cap, char **heap, bool *nomem)
{
    if (s->ptr == NULL || s->len == 0)
        return NULL;
    char *d = buf;
    if (s->len >= cap) {
        if ((d = *heap = kvs__ix_malloc(s->len + 1)) == NULL) {
            *nomem = true;
            return NULL;
        }
    }
    memcpy(d, s->ptr, s->len);
    d[s->len] = '\0';
    return d;
}

static kvs__tk_result_t stored_tokenless(kvs__tk_t *t, uint32_t pod, const kvs__ev_t *e,
                                         uint64_t *out, size_t *nout)
{
    tk_pod_t *p = pod_of(t, pod, false);
    size_t n = 0;
    for (size_t i = 0; p != NULL && i < e->nhashes; i++) {
        tk_entry_t *x = find(p, e->hashes[i]);
        if (x != NULL) {
            if (x->refs < UINT32_MAX)
                x->refs++;
            out[n++] = kvs_key_to_u64(&x->key, t->dlen);
        }
    }
    *nout = n;
    return KVS__TK_OK;
}

kvs__tk_result_t kvs__tk_stored(kvs__tk_t *t, uint32_t pod, const kvs__ev_t *e, uint64_t *out,
                                size_t *nout)
{
    *nout = 0;
    if (e->nhashes == 0)
        return KVS__TK_OK;
    if (e->ntokens == 0) /* a copy to another medium: the blocks were keyed when first stored */
        return stored_tokenless(t, pod, e, out, nout);
    if ((e->block_size != 0 && e->block_size != t->block_size) ||
        e->ntokens != e->nhashes * (size_t)t->block_size)
        return KVS__TK_SHAPE;
    /* The salt belongs to a prompt's first block, which has no parent. */
    if (e->extra_other || (e->has_parent && e->salt.ptr != NULL))
        return KVS__TK_EXTRA;
    if (memchr(e->lora_name.ptr ? e->lora_name.ptr : "", '\0', e->lora_name.len) != NULL ||
        memchr(e->salt.ptr ? e->salt.ptr : "", '\0', e->salt.len) != NULL)
        return KVS__TK_EXTRA; /* a C string cannot carry it; neither can /v1/score's JSON */
    kvs_chain_params_t cp = {.field_mask = 0};
    if (e->has_parent) {
        tk_pod_t *pp = pod_of(t, pod, false);
        const tk_entry_t *par = pp ? find(pp, e->parent) : NULL;
        if (par == NULL)
            return KVS__TK_ORPHAN;
        cp.field_mask |= KVS_CHAIN_FIELD_PARENT;
        cp.parent = &par->key; /* read by the hasher before the map changes below */
    }
    if (e->nhashes > t->scratch_cap) {
        kvs_key_t *ns = kvs__ix_realloc(t->scratch, e->nhashes * sizeof(*ns));
        if (ns == NULL)
            return KVS__TK_NO_MEMORY;
        t->scratch = ns;
        t->scratch_cap = e->nhashes;
    }
    char lbuf[128], sbuf[128], *lheap = NULL, *sheap = NULL;
    bool nomem = false;
    const char *lora = cstr(&e->lora_name, lbuf, sizeof(lbuf), &lheap, &nomem);
    const char *salt = cstr(&e->salt, sbuf, sizeof(sbuf), &sheap, &nomem);
    kvs__tk_result_t rc = KVS__TK_OK;
    size_t nk = 0;
    if (nomem) {
        rc = KVS__TK_NO_MEMORY;
        goto out;
    }
    if (lora != NULL) {
        cp.field_mask |= KVS_CHAIN_FIELD_LORA_NAME;
        cp.lora_name = lora;
    }
    if (salt != NULL) {
        cp.field_mask |= KVS_CHAIN_FIELD_CACHE_SALT;
        cp.cache_salt = salt;
    }
    kvs_status_t st =
        kvs_hasher_chain(t->h, &cp, e->tokens, e->ntokens, t->scratch, e->nhashes, &nk);
    if (st != KVS_OK) {
        rc = st == KVS_ERR_NO_MEMORY ? KVS__TK_NO_MEMORY : KVS__TK_SHAPE;
        goto out;
    }
    tk_pod_t *p = pod_of(t, pod, true);
    if (p == NULL) {
        rc = KVS__TK_NO_MEMORY;
        goto out;
    }
    size_t i = 0;
    for (; i < nk; i++) {
        tk_entry_t *x = find(p, e->hashes[i]);
        if (x == NULL) {
            if (t->entries >= t->max_entries) {
                rc = KVS__TK_FULL;
                break;
            }
            if (!reserve(t, p)) {
                rc = KVS__TK_NO_MEMORY;
                break;
            }
            uint32_t s = home(e->hashes[i], p->mask);
            while (p->e[s].refs != 0)
                s = (s + 1) & p->mask;
            x = &p->e[s];
            x->engine = e->hashes[i];
            x->refs = 0;
            p->n++;
            t->entries++;
        }
        if (x->refs < UINT32_MAX)
            x->refs++;
        /* A re-announced hash takes the newest derivation (the engine reused the hash). */
        x->key = t->scratch[i];
        out[i] = kvs_key_to_u64(&t->scratch[i], t->dlen);
    }
    *nout = i;
out:
    free(lheap);
    free(sheap);
    return rc;
}

size_t kvs__tk_removed(kvs__tk_t *t, uint32_t pod, const uint64_t *hashes, size_t n, uint64_t *out)
{
    tk_pod_t *p = pod_of(t, pod, false);
    size_t m = 0;
    for (size_t i = 0; p != NULL && i < n; i++) {
        tk_entry_t *x = find(p, hashes[i]);
        if (x == NULL)
            continue;
        out[m++] = kvs_key_to_u64(&x->key, t->dlen);
        if (--x->refs == 0) {
            erase(p, (uint32_t)(x - p->e));
            t->entries--;
        }
    }
    return m;
}

void kvs__tk_clear_pod(kvs__tk_t *t, uint32_t pod)
{
    tk_pod_t *p = pod_of(t, pod, false);
    if (p == NULL || p->e == NULL)
        return;
    t->entries -= p->n;
    t->bytes -= (uint64_t)(p->mask + 1) * sizeof(tk_entry_t);
    free(p->e);
    memset(p, 0, sizeof(*p));
}

uint64_t kvs__tk_entries(const kvs__tk_t *t)
{
    return t->entries;
}

uint64_t kvs__tk_bytes(const kvs__tk_t *t)
{
    return t->bytes + t->npods * sizeof(tk_pod_t) + t->scratch_cap * sizeof(kvs_key_t);
}
