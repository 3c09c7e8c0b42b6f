/* SPDX-License-Identifier: Apache-2.0 */
/* catalog.c - open-addressing index from (layout id, key) to store entries.
 *
 * Linear probing at load <= 1/2 keeps a probe to about one cache line, and
 * backward-shift deletion keeps the table free of tombstones, so lookups
 * never slow down as blocks churn. */
#include "catalog_int.h"

kvs_status_t kvs__catalog_init(kvs__store_t *s, size_t nslots)
{
    s->slots = kvs__calloc(nslots, sizeof(*s->slots));
    if (s->slots == NULL)
        return KVS_ERR_NO_MEMORY;
    s->nslots = nslots;
    return KVS_OK;
}

static void place(kvs__slot_t *slots, size_t mask, uint64_t hash, uint32_t idx1)
{
    size_t i = hash & mask;
    while (slots[i].idx1 != 0)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].idx1 = idx1;
}

kvs_status_t kvs__catalog_add(kvs__store_t *s, uint64_t hash, uint32_t idx)
{
    if ((size_t)(s->count + 1) * 2 > s->nslots) {
        size_t n = s->nslots * 2;
        kvs__slot_t *ns = kvs__calloc(n, sizeof(*ns));
        if (ns == NULL)
            return KVS_ERR_NO_MEMORY;
        for (size_t i = 0; i < s->nslots; i++)
            if (s->slots[i].idx1 != 0)
                place(ns, n - 1, s->slots[i].hash, s->slots[i].idx1);
        kvs__free(s->slots);
        s->slots = ns;
        s->nslots = n;
    }
    place(s->slots, s->nslots - 1, hash, idx + 1);
    return KVS_OK;
}

void kvs__catalog_del(kvs__store_t *s, uint64_t hash, uint32_t idx)
{
    size_t mask = s->nslots - 1;
    size_t i = hash & mask;
    while (s->slots[i].idx1 != idx + 1) {
        if (s->slots[i].idx1 == 0)
            return; /* not present: nothing to do */
        i = (i + 1) & mask;
    }
    /* Backward shift: pull later members of the probe run into the hole
     * when their home slot is at or before it. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; s->slots[j].idx1 != 0; j = (j + 1) & mask) {
        size_t home = s->slots[j].hash & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    s->slots[hole].idx1 = 0;
    s->slots[hole].hash = 0;
}
