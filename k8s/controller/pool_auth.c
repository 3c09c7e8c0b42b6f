/* SPDX-License-Identifier: Apache-2.0 */
/* What the reconciler last read of each KVCachePool's authSecretRef, for the webhook to wire
 * the same Secret into the pool's client pods without an API call per admission. */
#include "controller_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct kvsc_pa_entry {
    struct kvsc_pa_entry *next;
    char *key;    /* "namespace/name" */
    char *secret; /* NULL: the pool is open */
    char *skey;
} kvsc_pa_entry_t;

struct kvsc_pool_auth_cache {
    pthread_rwlock_t lock;
    kvsc_pa_entry_t *head;
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

static char *pool_key(const char *ns, const char *name)
{
    size_t a = strlen(ns), b = strlen(name);
    char *k = malloc(a + b + 2);
    if (k != NULL) {
        memcpy(k, ns, a);
        k[a] = '/';
        memcpy(k + a + 1, name, b + 1);
    }
    return k;
}

static void entry_free(kvsc_pa_entry_t *e)
{
    if (e != NULL) {
        free(e->key);
        free(e->secret);
        free(e->skey);
        free(e);
    }
}

kvsc_status_t kvsc_pool_auth_cache_create(kvsc_pool_auth_cache_t **cache_p)
{
    kvsc_pool_auth_cache_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    if (pthread_rwlock_init(&c->lock, NULL) != 0) {
        free(c);
        return KVSC_ERR_NO_MEMORY;
    }
    *cache_p = c;
    return KVSC_OK;
}

void kvsc_pool_auth_cache_destroy(kvsc_pool_auth_cache_t *cache)
{
    if (cache == NULL) {
        return;
    }
    for (kvsc_pa_entry_t *e = cache->head, *n; e != NULL; e = n) {
        n = e->next;
        entry_free(e);
    }
    pthread_rwlock_destroy(&cache->lock);
    free(cache);
}

/* The entry for key and the link that points at it; caller holds the lock. */
static kvsc_pa_entry_t **find(kvsc_pool_auth_cache_t *cache, const char *key)
{
    kvsc_pa_entry_t **pp = &cache->head;
    while (*pp != NULL && strcmp((*pp)->key, key) != 0) {
        pp = &(*pp)->next;
    }
    return pp;
}

static int same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int kvsc_pool_auth_cache_set(kvsc_pool_auth_cache_t *cache, const char *ns, const char *name,
                             const char *secret, const char *skey)
{
    kvsc_pa_entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = pool_key(ns, name)) == NULL ||
        (secret != NULL &&
         ((e->secret = dup_str(secret)) == NULL ||
          (e->skey = dup_str(skey != NULL ? skey : KVSC_AUTH_TOKEN_KEY)) == NULL))) {
        entry_free(e);
        return -1;
    }
    int changed = 1;
    pthread_rwlock_wrlock(&cache->lock);
    kvsc_pa_entry_t **pp = find(cache, e->key), *old = *pp;
    if (old != NULL) {
        changed = !same(old->secret, e->secret) || !same(old->skey, e->skey);
        e->next = old->next;
    }
    *pp = e;
    pthread_rwlock_unlock(&cache->lock);
    entry_free(old);
    return changed;
}

void kvsc_pool_auth_cache_remove(kvsc_pool_auth_cache_t *cache, const char *ns, const char *name)
{
    char *key = pool_key(ns, name);
    if (key == NULL) {
        return;
    }
    pthread_rwlock_wrlock(&cache->lock);
    kvsc_pa_entry_t **pp = find(cache, key), *old = *pp;
    if (old != NULL) {
        *pp = old->next;
    }
    pthread_rwlock_unlock(&cache->lock);
    entry_free(old);
    free(key);
}

kvsc_pool_auth_t kvsc_pool_auth_cache_lookup(void *ud, const char *ns, const char *name,
                                             char *secret, size_t secret_len, char *skey,
                                             size_t skey_len)
{
    kvsc_pool_auth_cache_t *cache = ud;
    kvsc_pool_auth_t res = KVSC_POOL_AUTH_UNKNOWN;
    char *key = pool_key(ns, name);
    if (cache == NULL || key == NULL) {
        free(key);
        return res;
    }
    pthread_rwlock_rdlock(&cache->lock);
    kvsc_pa_entry_t *e = *find(cache, key);
    if (e != NULL && e->secret == NULL) {
        res = KVSC_POOL_AUTH_OPEN;
    } else if (e != NULL && strlen(e->secret) < secret_len && strlen(e->skey) < skey_len) {
        strcpy(secret, e->secret);
        strcpy(skey, e->skey);
        res = KVSC_POOL_AUTH_SECRET;
    }
    pthread_rwlock_unlock(&cache->lock);
    free(key);
    return res;
}
