/* SPDX-License-Identifier: Apache-2.0 */
/* catalog_int.h - the (layout id, key) -> entry hash index inside the store. */
#ifndef KVS_CATALOG_INT_H
#define KVS_CATALOG_INT_H

#include "store_int.h"

#include <string.h>

#define KVS_NO_ENTRY UINT32_MAX

/* Keys are already uniform hashes; mixing in the layout id keeps the same
 * tokens under two models apart. */
static inline uint64_t kvs__catalog_hash(uint64_t layout_id, const kvs_key_t *key)
{
    uint64_t k;
    memcpy(&k, key->bytes, sizeof(k));
    uint64_t h = (k ^ layout_id) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static inline bool kvs__entry_matches(const kvs__entry_t *e, uint64_t layout_id,
                                      const kvs_key_t *key)
{
    return e->layout_id == layout_id && memcmp(e->key.bytes, key->bytes, KVS_KEY_BYTES) == 0;
}

/* Entry index for (layout_id, key), or KVS_NO_ENTRY. Lock held (either mode). */
static inline uint32_t kvs__catalog_find(const kvs__store_t *s, uint64_t hash, uint64_t layout_id,
                                         const kvs_key_t *key)
{
    size_t mask = s->nslots - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const kvs__slot_t *sl = &s->slots[i];
        if (sl->idx1 == 0)
            return KVS_NO_ENTRY;
        if (sl->hash == hash && kvs__entry_matches(&s->entries[sl->idx1 - 1], layout_id, key))
            return sl->idx1 - 1;
    }
}

kvs_status_t kvs__catalog_init(kvs__store_t *s, size_t nslots);
/* Adds idx under hash, growing the table first if needed. Exclusive lock. */
kvs_status_t kvs__catalog_add(kvs__store_t *s, uint64_t hash, uint32_t idx);
/* Removes idx (stored under hash). Exclusive lock. */
void kvs__catalog_del(kvs__store_t *s, uint64_t hash, uint32_t idx);

#endif
