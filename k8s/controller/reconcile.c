/* SPDX-License-Identifier: Apache-2.0 */
/* The KVCachePool reconciler: list+watch pools and the objects they own, and reconcile each
 * pool, level-based and idempotent, in a worker thread. */
#include "controller_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KVSC_POOLS_PREFIX  "/apis/kvshare.io/v1alpha1"
#define KVSC_DEPLOY_PREFIX "/apis/apps/v1"
#define KVSC_SVC_PREFIX    "/api/v1"
/* URL-encoded KVSC_LABEL_APP_NAME=KVSC_CACHE_APP. */
#define KVSC_OWNED_SELECTOR "labelSelector=app.kubernetes.io%2Fname%3Dkvshare-cache"
#define KVSC_MERGE_PATCH    "application/merge-patch+json"
#define KVSC_APPLY_PATCH    "application/apply-patch+yaml"
/* Server-side apply as our field manager; force takes back fields others changed. */
#define KVSC_APPLY_QUERY "?fieldManager=" KVSC_MANAGER "&force=true"
/* Merge patches name the manager too, so managedFields say who wrote the status. */
#define KVSC_UPDATE_QUERY    "?fieldManager=" KVSC_MANAGER
#define KVSC_BACKOFF_BASE_MS 200u

enum { W_POOLS, W_DEPLOYMENTS, W_SERVICES, W_COUNT };
static const char *const kvsc_w_resource[W_COUNT] = {"kvcachepools", "deployments", "services"};
static const char *const kvsc_w_prefix[W_COUNT] = {KVSC_POOLS_PREFIX, KVSC_DEPLOY_PREFIX,
                                                   KVSC_SVC_PREFIX};

/* Why a watch request ended; labels of kvshare_reconciler_watch_restarts_total. */
enum { WR_CLOSED, WR_EXPIRED, WR_ERROR, WR_COUNT };
static const char *const kvsc_wr_name[WR_COUNT] = {"closed", "expired", "error"};

/* How one reconcile ended; labels of kvshare_reconciler_reconciles_total. */
typedef enum { RR_OK, RR_INVALID, RR_NOT_OWNED, RR_ERROR, RR_COUNT } kvsc_rr_t;
static const char *const kvsc_rr_name[RR_COUNT] = {"ok", "invalid", "not_owned", "error"};

enum { WV_CREATE, WV_UPDATE, WV_STATUS, WV_COUNT };
static const char *const kvsc_wv_name[WV_COUNT] = {"create", "update", "status"};

typedef struct kvsc_watcher {
    kvsc_reconciler_t *rec;
    int kind;
    pthread_t thread;
    int started;
    char rv[128];         /* last resourceVersion seen */
    int expired;          /* an ERROR event with code 410 */
    int error_event;      /* another ERROR event, or an unparsable line */
    unsigned long events; /* events handled in the current watch */
} kvsc_watcher_t;

struct kvsc_reconciler {
    kvsc_reconciler_cfg_t cfg;
    kvsc_kube_t *kube;
    kvsc_queue_t *queue;
    kvsc_watcher_t watchers[W_COUNT];
    pthread_t worker;
    int worker_started;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled on stop */
    atomic_int stop;
    atomic_uint_fast64_t rand_state;
    atomic_uint_fast64_t reconciles[RR_COUNT];
    atomic_uint_fast64_t restarts[W_COUNT][WR_COUNT];
    atomic_uint_fast64_t writes[WV_COUNT];
    atomic_uint_fast64_t api_errors;
    atomic_uint_fast64_t apply_conflicts;
};

static void count(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t next_rand(kvsc_reconciler_t *rec)
{
    /* splitmix64 over an atomic counter: cheap, thread-safe, good enough for jitter. */
    uint64_t z = (uint64_t)atomic_fetch_add(&rec->rand_state, 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t backoff(kvsc_reconciler_t *rec, unsigned attempt)
{
    return kvsc_backoff_ms(attempt, KVSC_BACKOFF_BASE_MS, rec->cfg.backoff_max_ms, next_rand(rec));
}

static int stopping(kvsc_reconciler_t *rec)
{
    return atomic_load(&rec->stop);
}

/* Sleep ms, waking at once on stop. */
static void nap(kvsc_reconciler_t *rec, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (ms % 1000u) * 1000000u;
    ts.tv_sec += (time_t)(ms / 1000u + ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&rec->lock);
    while (!stopping(rec)) {
        if (pthread_cond_timedwait(&rec->cond, &rec->lock, &ts) == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&rec->lock);
}

static uint64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

static const char *str_at(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *meta_of(const cJSON *obj)
{
    return cJSON_GetObjectItemCaseSensitive(obj, "metadata");
}

/* The message of a Kubernetes Status body, for logs. */
static const char *status_message(const kvsc_kube_resp_t *r)
{
    const char *m = str_at(r->doc, "message");
    return m != NULL ? m : "";
}

/* ---- watches ----------------------------------------------------------------------------- */

/* "namespace/name" of the pool an event's object belongs to, queued now. */
static void enqueue_owner(kvsc_reconciler_t *rec, int kind, const cJSON *obj)
{
    const cJSON *meta = meta_of(obj);
    const char *ns = str_at(meta, "namespace"), *name = NULL;
    if (kind == W_POOLS) {
        name = str_at(meta, "name");
    } else {
        const cJSON *ref;
        cJSON_ArrayForEach(ref, cJSON_GetObjectItemCaseSensitive(meta, "ownerReferences"))
        {
            const char *k = str_at(ref, "kind"), *av = str_at(ref, "apiVersion");
            if (k != NULL && av != NULL && strcmp(k, KVSC_POOL_KIND) == 0 &&
                strncmp(av, "kvshare.io/", 11) == 0) {
                name = str_at(ref, "name");
            }
        }
        if (name == NULL) {
            /* Not (or no longer) owned: the label still says which pool wants it. */
            name = str_at(cJSON_GetObjectItemCaseSensitive(meta, "labels"), KVSC_LABEL_POOL);
        }
    }
    if (ns == NULL || name == NULL) {
        return;
    }
    char *key;
    if (asprintf(&key, "%s/%s", ns, name) < 0) {
        return; /* no memory: the next resync catches up */
    }
    kvsc_queue_add(rec->queue, key, 0);
    free(key);
}

static void set_rv(kvsc_watcher_t *w, const cJSON *obj)
{
    const char *rv = str_at(meta_of(obj), "resourceVersion");
    if (rv != NULL && strlen(rv) < sizeof(w->rv)) {
        strcpy(w->rv, rv);
    }
}

static int on_event(void *ud, char *line, size_t len)
{
    kvsc_watcher_t *w = ud;
    cJSON *ev = cJSON_ParseWithLength(line, len);
    const char *type = str_at(ev, "type");
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(ev, "object");
    int rc = 0;
    if (type == NULL || !cJSON_IsObject(obj)) {
        fprintf(stderr, "kvshare-controller: watch %s: unreadable event: %.200s\n",
                kvsc_w_resource[w->kind], line);
        w->error_event = 1;
        rc = 1;
        goto out;
    }
    if (strcmp(type, "ERROR") == 0) {
        /* The object is a Status; 410 Expired means our resourceVersion was compacted. */
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(obj, "code");
        if (cJSON_IsNumber(code) && code->valuedouble == 410) {
            w->expired = 1;
        } else {
            fprintf(stderr, "kvshare-controller: watch %s: ERROR event: %s\n",
                    kvsc_w_resource[w->kind], line);
            w->error_event = 1;
        }
        rc = 1;
        goto out;
    }
    set_rv(w, obj);
    w->events++;
    if (strcmp(type, "BOOKMARK") != 0) {
        enqueue_owner(w->rec, w->kind, obj);
    }
out:
    cJSON_Delete(ev);
    return rc;
}

static char *collection_path(kvsc_reconciler_t *rec, int kind, const char *ns)
{
    char *p;
    if (ns == NULL) {
        ns = rec->cfg.namespace_;
    }
    int n = ns != NULL ? asprintf(&p, "%s/namespaces/%s/%s", kvsc_w_prefix[kind], ns,
                                  kvsc_w_resource[kind])
                       : asprintf(&p, "%s/%s", kvsc_w_prefix[kind], kvsc_w_resource[kind]);
    return n < 0 ? NULL : p;
}

/* List: queue every pool it names and remember the list's resourceVersion. */
static int relist(kvsc_watcher_t *w, kvsc_kube_conn_t *conn, const char *base)
{
    kvsc_reconciler_t *rec = w->rec;
    kvsc_kube_resp_t r = {0};
    char *path = NULL;
    int ok = 0;
    if (asprintf(&path, "%s%s", base, w->kind == W_POOLS ? "" : "?" KVSC_OWNED_SELECTOR) < 0) {
        return 0;
    }
    if (kvsc_kube_request(conn, "GET", path, NULL, NULL, &r) != KVSC_OK) {
        count(&rec->api_errors);
        goto out;
    }
    const char *rv = str_at(meta_of(r.doc), "resourceVersion");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(r.doc, "items");
    if (r.code != 200 || rv == NULL || strlen(rv) >= sizeof(w->rv) ||
        (items != NULL && !cJSON_IsArray(items) && !cJSON_IsNull(items))) {
        count(&rec->api_errors);
        fprintf(stderr, "kvshare-controller: list %s: HTTP %ld %s\n", path, r.code,
                status_message(&r));
        goto out;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
    {
        enqueue_owner(rec, w->kind, it);
    }
    strcpy(w->rv, rv);
    ok = 1;
out:
    cJSON_Delete(r.doc);
    free(path);
    return ok;
}

static void *watch_main(void *arg)
{
    kvsc_watcher_t *w = arg;
    kvsc_reconciler_t *rec = w->rec;
    kvsc_kube_conn_t *conn = NULL;
    char *base = collection_path(rec, w->kind, NULL);
    unsigned attempt = 0, expired_streak = 0;
    int need_list = 1;
    uint64_t listed_at = 0;
    if (base == NULL || kvsc_kube_conn_open(rec->kube, &conn) != KVSC_OK) {
        fprintf(stderr, "kvshare-controller: watch %s: out of memory\n", kvsc_w_resource[w->kind]);
        goto out;
    }
    while (!stopping(rec)) {
        /* Pools are relisted every resync period as a safety net: a missed event costs at
         * most that long. The owned objects' events only ever trigger their pool. */
        if (w->kind == W_POOLS && rec->cfg.resync_s > 0 && listed_at != 0 &&
            mono_s() - listed_at >= rec->cfg.resync_s) {
            need_list = 1;
        }
        if (need_list) {
            if (!relist(w, conn, base)) {
                nap(rec, backoff(rec, attempt++));
                continue;
            }
            need_list = 0;
            attempt = 0;
            listed_at = mono_s();
        }
        char *path;
        long timeout = rec->cfg.watch_timeout_s;
        if (w->kind == W_POOLS && rec->cfg.resync_s > 0 &&
            (uint64_t)timeout > rec->cfg.resync_s - (mono_s() - listed_at)) {
            timeout = (long)(rec->cfg.resync_s - (mono_s() - listed_at));
            timeout = timeout < 1 ? 1 : timeout;
        }
        if (asprintf(&path,
                     "%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%ld%s",
                     base, w->rv, timeout, w->kind == W_POOLS ? "" : "&" KVSC_OWNED_SELECTOR) < 0) {
            nap(rec, backoff(rec, attempt++));
            continue;
        }
        long code = 0;
        w->expired = w->error_event = 0;
        w->events = 0;
        kvsc_status_t st = kvsc_kube_watch(conn, path, timeout, on_event, w, &code);
        free(path);
        if (stopping(rec)) {
            break;
        }
        int reason;
        if (w->expired || code == 410) {
            /* Our resourceVersion was compacted away: only a fresh list is consistent. The
             * first time, relist at once; when it keeps happening with nothing in between,
             * back off like any other error. */
            reason = WR_EXPIRED;
            need_list = 1;
            expired_streak = w->events > 0 ? 0 : expired_streak;
            if (expired_streak++ > 0) {
                nap(rec, backoff(rec, expired_streak - 2));
            }
        } else if (st != KVSC_OK || w->error_event) {
            reason = WR_ERROR;
            count(&rec->api_errors);
            need_list = w->error_event; /* the stream said something we cannot trust */
            attempt = w->events > 0 ? 0 : attempt;
            nap(rec, backoff(rec, attempt++));
        } else {
            /* The server ended the watch (timeoutSeconds): resume where we were. */
            reason = WR_CLOSED;
            attempt = 0;
            expired_streak = 0;
        }
        count(&rec->restarts[w->kind][reason]);
        if (rec->cfg.verbose) {
            fprintf(stderr, "kvshare-controller: watch %s restarts (%s, rv %s)\n",
                    kvsc_w_resource[w->kind], kvsc_wr_name[reason], w->rv);
        }
    }
out:
    kvsc_kube_conn_close(conn);
    free(base);
    return NULL;
}

/* ---- reconcile ---------------------------------------------------------------------------- */

typedef enum { ENS_OK, ENS_NOT_OWNED, ENS_ERROR, ENS_NO_MEMORY } kvsc_ens_t;

static void api_error(kvsc_reconciler_t *rec, const char *method, const char *path,
                      const kvsc_kube_resp_t *r)
{
    count(&rec->api_errors);
    fprintf(stderr, "kvshare-controller: %s %s: HTTP %ld %s\n", method, path, r->code,
            status_message(r));
}

/* Make the object at ns/kind/name match desired by server-side apply: GET it, leave it alone
 * when someone else controls it, and apply the whole desired object (one PATCH that creates
 * or updates) only when it is missing or the fields we own drifted. *actual_p gets the object
 * as the server has it (caller deletes). */
static kvsc_ens_t ensure(kvsc_reconciler_t *rec, kvsc_kube_conn_t *conn, int kind,
                         const kvsc_pool_t *pool, cJSON *desired, cJSON **actual_p)
{
    kvsc_ens_t res = ENS_ERROR;
    kvsc_kube_resp_t r = {0};
    char *coll = collection_path(rec, kind, pool->namespace_), *path = NULL, *apply = NULL;
    char *body = NULL;
    cJSON *owned = NULL;
    const char *name = str_at(meta_of(desired), "name");
    if (coll == NULL || asprintf(&path, "%s/%s", coll, name) < 0) {
        path = NULL;
        res = ENS_NO_MEMORY;
        goto out;
    }
    if (asprintf(&apply, "%s" KVSC_APPLY_QUERY, path) < 0) {
        apply = NULL;
        res = ENS_NO_MEMORY;
        goto out;
    }
    if (kvsc_kube_request(conn, "GET", path, NULL, NULL, &r) != KVSC_OK) {
        count(&rec->api_errors);
        goto out;
    }
    int missing = r.code == 404;
    if (!missing) {
        if (r.code != 200 || !cJSON_IsObject(r.doc)) {
            api_error(rec, "GET", path, &r);
            goto out;
        }
        /* Checked before applying: a forced apply would take over someone else's object. */
        if (kvsc_controlled_by(r.doc, pool->uid) != 1) {
            res = ENS_NOT_OWNED;
            *actual_p = r.doc;
            r.doc = NULL;
            goto out;
        }
        owned = kvsc_update_patch(desired);
        if (owned == NULL) {
            res = ENS_NO_MEMORY;
            goto out;
        }
        if (kvsc_json_subset(owned, r.doc)) {
            goto done; /* no drift: no write, so we never fight another writer over nothing */
        }
    }
    /* JSON is YAML, so the desired object goes as it is. force=true: fields another manager
     * took (kubectl edit, kubectl scale) come back to us instead of failing with 409. */
    body = cJSON_PrintUnformatted(desired);
    if (body == NULL) {
        res = ENS_NO_MEMORY;
        goto out;
    }
    cJSON_Delete(r.doc);
    r.doc = NULL;
    if (kvsc_kube_request(conn, "PATCH", apply, KVSC_APPLY_PATCH, body, &r) != KVSC_OK) {
        count(&rec->api_errors);
        goto out;
    }
    if (r.code != 200 && r.code != 201) {
        /* 409: a conflict (only without force) or a concurrent write; the retry reapplies. */
        if (r.code == 409) {
            count(&rec->apply_conflicts);
        }
        api_error(rec, "PATCH", apply, &r);
        goto out;
    }
    int created = r.code == 201; /* the API server answers 201 when the apply created it */
    count(&rec->writes[created ? WV_CREATE : WV_UPDATE]);
    fprintf(stderr, "kvshare-controller: %s %s %s/%s\n", created ? "created" : "updated",
            kvsc_w_resource[kind], pool->namespace_, name);
done:
    *actual_p = r.doc;
    r.doc = NULL;
    res = ENS_OK;
out:
    cJSON_Delete(r.doc);
    cJSON_Delete(owned);
    free(body);
    free(apply);
    free(path);
    free(coll);
    return res;
}

/* The Deployment's readyReplicas, or 0. */
static long long ready_replicas(const cJSON *deploy)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(deploy, "status"), "readyReplicas");
    return cJSON_IsNumber(v) && v->valuedouble > 0 ? (long long)v->valuedouble : 0;
}

static void now_rfc3339(char *buf, size_t len)
{
    struct tm tm;
    time_t t = time(NULL);
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* PATCH .status when it differs from what it should be. 0 or -1 (logged). */
static int write_status(kvsc_reconciler_t *rec, kvsc_kube_conn_t *conn, const cJSON *pool_obj,
                        const kvsc_pool_t *pool, const kvsc_ready_t *ready)
{
    char now[32];
    int rc = -1;
    char *path = NULL, *body = NULL;
    kvsc_kube_resp_t r = {0};
    now_rfc3339(now, sizeof(now));
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(pool_obj, "status");
    cJSON *want = kvsc_desired_status(cur, pool->generation, ready, now);
    cJSON *patch = cJSON_CreateObject();
    if (want == NULL || patch == NULL) {
        goto out;
    }
    if (kvsc_json_subset(want, cur)) {
        rc = 0;
        goto out;
    }
    if (!cJSON_AddItemToObject(patch, "status", want)) {
        goto out;
    }
    want = NULL;
    body = cJSON_PrintUnformatted(patch);
    if (body == NULL ||
        asprintf(&path, KVSC_POOLS_PREFIX "/namespaces/%s/kvcachepools/%s/status" KVSC_UPDATE_QUERY,
                 pool->namespace_, pool->name) < 0) {
        path = NULL;
        goto out;
    }
    if (kvsc_kube_request(conn, "PATCH", path, KVSC_MERGE_PATCH, body, &r) != KVSC_OK) {
        count(&rec->api_errors);
        goto out;
    }
    if (r.code == 404) {
        rc = 0; /* deleted meanwhile */
        goto out;
    }
    if (r.code != 200) {
        api_error(rec, "PATCH", path, &r);
        goto out;
    }
    count(&rec->writes[WV_STATUS]);
    rc = 0;
out:
    cJSON_Delete(r.doc);
    cJSON_Delete(want);
    cJSON_Delete(patch);
    free(body);
    free(path);
    return rc;
}

/* Read-only: the Deployment of an invalid pool, for readyReplicas. NULL when none. */
static cJSON *get_owned(kvsc_reconciler_t *rec, kvsc_kube_conn_t *conn, int kind,
                        const kvsc_pool_t *pool)
{
    kvsc_kube_resp_t r = {0};
    char *path = NULL;
    char *coll = collection_path(rec, kind, pool->namespace_);
    if (coll != NULL && asprintf(&path, "%s/%s" KVSC_CACHE_SUFFIX, coll, pool->name) >= 0 &&
        kvsc_kube_request(conn, "GET", path, NULL, NULL, &r) == KVSC_OK && r.code == 200 &&
        kvsc_controlled_by(r.doc, pool->uid) == 1) {
        free(coll);
        free(path);
        return r.doc;
    }
    cJSON_Delete(r.doc);
    free(coll);
    free(path);
    return NULL;
}

/* The namespace of a queue key "ns/name", NUL-terminated in a thread-local buffer; *slash_p
 * points at the '/' (the key always has one: reconcile checked). */
static const char *pool_ns_name(const char *key, const char **slash_p)
{
    static _Thread_local char ns[256];
    const char *slash = strchr(key, '/');
    size_t n = (size_t)(slash - key);
    if (n >= sizeof(ns)) {
        n = sizeof(ns) - 1;
    }
    memcpy(ns, key, n);
    ns[n] = '\0';
    *slash_p = slash;
    return ns;
}

/* Record the pool's auth for the webhook, and say it once (per process and per change) when
 * a pool runs open: its nodes serve KV blocks, users' prompts, to anyone who connects. */
static void note_auth(kvsc_reconciler_t *rec, const char *key, const kvsc_pool_t *pool)
{
    int changed = 1;
    if (rec->cfg.pool_auth != NULL) {
        changed = kvsc_pool_auth_cache_set(rec->cfg.pool_auth, pool->namespace_, pool->name,
                                           pool->auth_secret, pool->auth_key);
    }
    if (changed == 0) {
        return;
    }
    if (pool->auth_secret == NULL) {
        fprintf(stderr,
                "kvshare-controller: warning: KVCachePool %s has no spec.authSecretRef: its "
                "cache nodes run with KVSHARE_AUTH=none and accept any peer (condition "
                "Authenticated=False)\n",
                key);
    } else if (rec->cfg.verbose) {
        fprintf(stderr, "kvshare-controller: KVCachePool %s: token from Secret %s key %s\n", key,
                pool->auth_secret, pool->auth_key);
    }
}

static kvsc_rr_t reconcile(kvsc_reconciler_t *rec, kvsc_kube_conn_t *conn, const char *key)
{
    kvsc_rr_t res = RR_ERROR;
    kvsc_kube_resp_t r = {0};
    kvsc_pool_t pool;
    kvsc_ready_t ready = {0};
    cJSON *want_d = NULL, *want_s = NULL, *deploy = NULL, *svc = NULL;
    char *path = NULL, msg[512];
    const char *slash = strchr(key, '/');
    if (slash == NULL || asprintf(&path, KVSC_POOLS_PREFIX "/namespaces/%.*s/kvcachepools/%s",
                                  (int)(slash - key), key, slash + 1) < 0) {
        path = NULL;
        goto out;
    }
    if (kvsc_kube_request(conn, "GET", path, NULL, NULL, &r) != KVSC_OK) {
        count(&rec->api_errors);
        goto out;
    }
    if (r.code == 404) {
        /* Deleted: the garbage collector removes what it owned (ownerReferences). */
        if (rec->cfg.pool_auth != NULL) {
            kvsc_pool_auth_cache_remove(rec->cfg.pool_auth, pool_ns_name(key, &slash), slash + 1);
        }
        res = RR_OK;
        goto out;
    }
    if (r.code != 200 || !cJSON_IsObject(r.doc)) {
        api_error(rec, "GET", path, &r);
        goto out;
    }
    const char *reason;
    if (kvsc_pool_parse(r.doc, &pool, &reason, msg, sizeof(msg)) != KVSC_OK) {
        /* Report it on the pool and leave its objects alone; a fixed spec is a new event. */
        fprintf(stderr, "kvshare-controller: KVCachePool %s: %s: %s\n", key, reason, msg);
        if (rec->cfg.pool_auth != NULL) {
            /* The webhook treats it as unknown: its pods get no token and say so. */
            kvsc_pool_auth_cache_remove(rec->cfg.pool_auth, pool_ns_name(key, &slash), slash + 1);
        }
        if (pool.namespace_ == NULL || pool.name == NULL) {
            res = RR_INVALID;
            goto out;
        }
        if (pool.uid != NULL) {
            deploy = get_owned(rec, conn, W_DEPLOYMENTS, &pool);
        }
        ready = (kvsc_ready_t){
            .ready = 0, .reason = reason, .message = msg, .ready_replicas = ready_replicas(deploy)};
        res = write_status(rec, conn, r.doc, &pool, &ready) == 0 ? RR_INVALID : RR_ERROR;
        goto out;
    }
    note_auth(rec, key, &pool);
    if (kvsc_desired_deployment(&rec->cfg.build, &pool, &want_d) != KVSC_OK ||
        kvsc_desired_service(&rec->cfg.build, &pool, &want_s) != KVSC_OK) {
        goto out;
    }
    kvsc_ens_t ed = ensure(rec, conn, W_DEPLOYMENTS, &pool, want_d, &deploy);
    kvsc_ens_t es = ed == ENS_OK || ed == ENS_NOT_OWNED
                        ? ensure(rec, conn, W_SERVICES, &pool, want_s, &svc)
                        : ENS_ERROR;
    if (ed == ENS_ERROR || ed == ENS_NO_MEMORY || es == ENS_ERROR || es == ENS_NO_MEMORY) {
        goto out;
    }
    long long n = ready_replicas(ed == ENS_OK ? deploy : NULL);
    if (ed == ENS_NOT_OWNED || es == ENS_NOT_OWNED) {
        const char *what = ed == ENS_NOT_OWNED ? "Deployment" : "Service";
        snprintf(msg, sizeof(msg),
                 "%s %s" KVSC_CACHE_SUFFIX " exists and is not controlled by this KVCachePool; "
                 "delete or rename it",
                 what, pool.name);
        ready =
            (kvsc_ready_t){.ready = 0,
                           .reason = ed == ENS_NOT_OWNED ? "DeploymentNotOwned" : "ServiceNotOwned",
                           .message = msg,
                           .ready_replicas = n,
                           .auth_known = 1,
                           .auth_secret = pool.auth_secret,
                           .auth_key = pool.auth_key};
        fprintf(stderr, "kvshare-controller: KVCachePool %s: %s\n", key, msg);
        res = write_status(rec, conn, r.doc, &pool, &ready) == 0 ? RR_NOT_OWNED : RR_ERROR;
        goto out;
    }
    snprintf(msg, sizeof(msg), "%lld of %lld cache nodes ready", n, pool.replicas);
    ready = (kvsc_ready_t){.ready = n >= pool.replicas,
                           .reason = n >= pool.replicas ? "NodesReady" : "NodesNotReady",
                           .message = msg,
                           .ready_replicas = n,
                           .auth_known = 1,
                           .auth_secret = pool.auth_secret,
                           .auth_key = pool.auth_key};
    res = write_status(rec, conn, r.doc, &pool, &ready) == 0 ? RR_OK : RR_ERROR;
out:
    cJSON_Delete(r.doc);
    cJSON_Delete(want_d);
    cJSON_Delete(want_s);
    cJSON_Delete(deploy);
    cJSON_Delete(svc);
    free(path);
    return res;
}

static void *work_main(void *arg)
{
    kvsc_reconciler_t *rec = arg;
    kvsc_kube_conn_t *conn = NULL;
    if (kvsc_kube_conn_open(rec->kube, &conn) != KVSC_OK) {
        fprintf(stderr, "kvshare-controller: reconciler: out of memory\n");
        return NULL;
    }
    while (!stopping(rec)) {
        char *key = NULL;
        int got = kvsc_queue_pop(rec->queue, 1000, &key);
        if (got != 1) {
            continue;
        }
        kvsc_rr_t res = reconcile(rec, conn, key);
        if (stopping(rec)) {
            free(key);
            break;
        }
        count(&rec->reconciles[res]);
        if (rec->cfg.verbose) {
            fprintf(stderr, "kvshare-controller: reconciled %s: %s\n", key, kvsc_rr_name[res]);
        }
        if (res == RR_ERROR || res == RR_NOT_OWNED) {
            /* Transient (API errors) or waiting on someone else (an old object the garbage
             * collector has yet to remove): retry with a growing delay. */
            unsigned f = kvsc_queue_failures(rec->queue, key);
            kvsc_queue_retry(rec->queue, key, backoff(rec, f));
        } else {
            kvsc_queue_forget(rec->queue, key);
        }
        free(key);
    }
    kvsc_kube_conn_close(conn);
    return NULL;
}

kvsc_status_t kvsc_reconciler_start(const kvsc_reconciler_cfg_t *cfg, kvsc_kube_t *kube,
                                    kvsc_reconciler_t **rec_p)
{
    kvsc_status_t status = KVSC_ERR_NO_MEMORY;
    pthread_condattr_t ca;
    kvsc_reconciler_t *rec = calloc(1, sizeof(*rec));
    if (rec == NULL) {
        return status;
    }
    rec->cfg = *cfg;
    if (rec->cfg.backoff_max_ms < KVSC_BACKOFF_BASE_MS) {
        rec->cfg.backoff_max_ms = KVSC_BACKOFF_BASE_MS;
    }
    if (rec->cfg.watch_timeout_s == 0) {
        rec->cfg.watch_timeout_s = 300;
    }
    rec->kube = kube;
    atomic_init(&rec->stop, 0);
    atomic_init(&rec->rand_state, (uint_fast64_t)time(NULL) ^ (uint_fast64_t)(uintptr_t)rec);
    pthread_mutex_init(&rec->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rec->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (kvsc_queue_create(&rec->queue) != KVSC_OK) {
        goto fail;
    }
    if (pthread_create(&rec->worker, NULL, work_main, rec) != 0) {
        goto fail;
    }
    rec->worker_started = 1;
    for (int i = 0; i < W_COUNT; i++) {
        kvsc_watcher_t *w = &rec->watchers[i];
        w->rec = rec;
        w->kind = i;
        if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
            goto fail;
        }
        w->started = 1;
    }
    *rec_p = rec;
    return KVSC_OK;
fail:
    fprintf(stderr, "kvshare-controller: cannot start the reconciler threads\n");
    kvsc_reconciler_stop(rec);
    return status;
}

void kvsc_reconciler_stop(kvsc_reconciler_t *rec)
{
    if (rec == NULL) {
        return;
    }
    pthread_mutex_lock(&rec->lock);
    atomic_store(&rec->stop, 1);
    pthread_cond_broadcast(&rec->cond);
    pthread_mutex_unlock(&rec->lock);
    kvsc_kube_cancel(rec->kube);
    if (rec->queue != NULL) {
        kvsc_queue_close(rec->queue);
    }
    for (int i = 0; i < W_COUNT; i++) {
        if (rec->watchers[i].started) {
            pthread_join(rec->watchers[i].thread, NULL);
        }
    }
    if (rec->worker_started) {
        pthread_join(rec->worker, NULL);
    }
    kvsc_queue_destroy(rec->queue);
    pthread_cond_destroy(&rec->cond);
    pthread_mutex_destroy(&rec->lock);
    free(rec);
}

static unsigned long long load(atomic_uint_fast64_t *a)
{
    return (unsigned long long)atomic_load_explicit(a, memory_order_relaxed);
}

char *kvsc_reconciler_metrics_render(void *ud, size_t *len_p)
{
    kvsc_reconciler_t *rec = ud;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        return NULL;
    }
    fprintf(f, "# HELP kvshare_reconciler_reconciles_total KVCachePool reconciles by result.\n"
               "# TYPE kvshare_reconciler_reconciles_total counter\n");
    for (int i = 0; i < RR_COUNT; i++) {
        fprintf(f, "kvshare_reconciler_reconciles_total{result=\"%s\"} %llu\n", kvsc_rr_name[i],
                load(&rec->reconciles[i]));
    }
    fprintf(f, "# HELP kvshare_reconciler_watch_restarts_total Watch requests that ended, by "
               "resource and why (closed: resumed; expired: 410, relisted; error: backed off).\n"
               "# TYPE kvshare_reconciler_watch_restarts_total counter\n");
    for (int i = 0; i < W_COUNT; i++) {
        for (int j = 0; j < WR_COUNT; j++) {
            fprintf(f,
                    "kvshare_reconciler_watch_restarts_total{resource=\"%s\",reason=\"%s\"} %llu\n",
                    kvsc_w_resource[i], kvsc_wr_name[j], load(&rec->restarts[i][j]));
        }
    }
    fprintf(f,
            "# HELP kvshare_reconciler_api_errors_total API requests that failed: transport "
            "errors and unexpected HTTP statuses.\n"
            "# TYPE kvshare_reconciler_api_errors_total counter\n"
            "kvshare_reconciler_api_errors_total %llu\n",
            load(&rec->api_errors));
    fprintf(f,
            "# HELP kvshare_reconciler_apply_conflicts_total Server-side applies answered 409 "
            "Conflict (retried with backoff).\n"
            "# TYPE kvshare_reconciler_apply_conflicts_total counter\n"
            "kvshare_reconciler_apply_conflicts_total %llu\n",
            load(&rec->apply_conflicts));
    fprintf(f, "# HELP kvshare_reconciler_writes_total Writes to the API server by kind "
               "(create and update: server-side apply of a missing or drifted object; status: "
               "merge patch of the status subresource).\n"
               "# TYPE kvshare_reconciler_writes_total counter\n");
    for (int i = 0; i < WV_COUNT; i++) {
        fprintf(f, "kvshare_reconciler_writes_total{verb=\"%s\"} %llu\n", kvsc_wv_name[i],
                load(&rec->writes[i]));
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len_p = len;
    return buf;
}
