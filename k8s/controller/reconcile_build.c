/* SPDX-License-Identifier: Apache-2.0 */
/* Pure part of the KVCachePool reconciler: validate a pool, build the objects it should own
 * and its status, and decide whether an existing object has drifted. */
#include "controller_int.h"
#include "util_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *str_at(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integral JSON number that fits a long long without loss: 1 and *out, else 0. */
static int int_at(const cJSON *v, long long *out)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        floor(v->valuedouble) != v->valuedouble || fabs(v->valuedouble) > 9007199254740992.0) {
        return 0;
    }
    *out = (long long)v->valuedouble;
    return 1;
}

kvsc_status_t kvsc_pool_parse(const cJSON *obj, kvsc_pool_t *pool, const char **reason_p, char *msg,
                              size_t msg_len)
{
    kvsc_pool_t p = {.replicas = 1, .strategy = "lru"};
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
    const cJSON *v;
    p.namespace_ = str_at(meta, "namespace");
    p.name = str_at(meta, "name");
    p.uid = str_at(meta, "uid");
    if (!int_at(cJSON_GetObjectItemCaseSensitive(meta, "generation"), &p.generation)) {
        p.generation = 0;
    }
    *pool = p;
    if (p.namespace_ == NULL || p.name == NULL || p.uid == NULL) {
        *reason_p = "InvalidMetadata";
        snprintf(msg, msg_len, "metadata.namespace, metadata.name and metadata.uid are required");
        return KVSC_ERR_INVALID;
    }
    if (!kvs__dns_label(p.name, KVSC_REC_POOL_NAME_MAX, KVS__DNS_1035)) {
        *reason_p = "InvalidName";
        snprintf(msg, msg_len,
                 "metadata.name: must be a DNS-1035 label of at most %zu characters (lower-case "
                 "letters, digits, '-', starting with a letter) so that \"<name>" KVSC_CACHE_SUFFIX
                 "\" can name a Service",
                 (size_t)KVSC_REC_POOL_NAME_MAX);
        return KVSC_ERR_INVALID;
    }
    if (!cJSON_IsObject(spec)) {
        *reason_p = "InvalidSpec";
        snprintf(msg, msg_len, "spec: required, an object");
        return KVSC_ERR_INVALID;
    }
    v = cJSON_GetObjectItemCaseSensitive(spec, "totalMemoryGB");
    if (!int_at(v, &p.total_memory_gb) || p.total_memory_gb <= 0) {
        *reason_p = "InvalidTotalMemoryGB";
        snprintf(msg, msg_len, "spec.totalMemoryGB: required, an integer greater than 0");
        return KVSC_ERR_INVALID;
    }
    v = cJSON_GetObjectItemCaseSensitive(spec, "replicas");
    /* The Deployment API takes an int32. */
    if (v != NULL && !cJSON_IsNull(v) &&
        (!int_at(v, &p.replicas) || p.replicas < 0 || p.replicas > 2147483647LL)) {
        *reason_p = "InvalidReplicas";
        snprintf(msg, msg_len, "spec.replicas: an integer from 0 to 2147483647");
        return KVSC_ERR_INVALID;
    }
    v = cJSON_GetObjectItemCaseSensitive(spec, "strategy");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v) ||
            (strcmp(v->valuestring, "lru") != 0 && strcmp(v->valuestring, "lfu") != 0)) {
            *reason_p = "InvalidStrategy";
            snprintf(msg, msg_len, "spec.strategy: one of lru, lfu");
            return KVSC_ERR_INVALID;
        }
        p.strategy = v->valuestring;
    }
    v = cJSON_GetObjectItemCaseSensitive(spec, "authSecretRef");
    if (v != NULL && !cJSON_IsNull(v)) {
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(v, "key");
        p.auth_secret = cJSON_IsObject(v) ? str_at(v, "name") : NULL;
        p.auth_key = KVSC_AUTH_TOKEN_KEY;
        if (p.auth_secret == NULL || !kvs__dns_subdomain(p.auth_secret)) {
            p.auth_secret = NULL;
            *reason_p = "InvalidAuthSecretRef";
            snprintf(msg, msg_len,
                     "spec.authSecretRef.name: required, the name of a Secret in the pool's "
                     "namespace (a DNS-1123 subdomain)");
            return KVSC_ERR_INVALID;
        }
        if (key != NULL && !cJSON_IsNull(key)) {
            if (!cJSON_IsString(key) || !kvsc_valid_secret_key(key->valuestring)) {
                p.auth_secret = NULL;
                *reason_p = "InvalidAuthSecretRef";
                snprintf(msg, msg_len,
                         "spec.authSecretRef.key: a Secret key ([-._a-zA-Z0-9]+, at most 253 "
                         "characters; default \"" KVSC_AUTH_TOKEN_KEY "\")");
                return KVSC_ERR_INVALID;
            }
            p.auth_key = key->valuestring;
        }
    }
    v = cJSON_GetObjectItemCaseSensitive(spec, "hostSocketDir");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v) || !kvsc_valid_host_dir(v->valuestring)) {
            *reason_p = "InvalidHostSocketDir";
            snprintf(msg, msg_len,
                     "spec.hostSocketDir: an absolute node path of letters, digits, '.', '_', "
                     "'-' and '/', without '..'");
            return KVSC_ERR_INVALID;
        }
        p.host_socket_dir = v->valuestring;
    }
    *pool = p;
    return KVSC_OK;
}

/* cJSON's builders return NULL on no memory and accept a NULL parent, so one check of the
 * finished tree's leaves (via `ok`) replaces a check per call. */
typedef struct {
    int ok;
} kvsc_b_t;

static cJSON *b_obj(kvsc_b_t *b, cJSON *parent, const char *key)
{
    if (parent == NULL) {
        b->ok = 0; /* the parent already failed; a detached child would leak */
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    if (o == NULL ||
        !(key != NULL ? cJSON_AddItemToObject(parent, key, o) : cJSON_AddItemToArray(parent, o))) {
        cJSON_Delete(o);
        b->ok = 0;
        return NULL;
    }
    return o;
}

static cJSON *b_root(kvsc_b_t *b)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) {
        b->ok = 0;
    }
    return o;
}

static void b_arr_str(kvsc_b_t *b, cJSON *arr, const char *val)
{
    cJSON *s = arr != NULL ? cJSON_CreateString(val) : NULL;
    if (s == NULL || !cJSON_AddItemToArray(arr, s)) {
        cJSON_Delete(s);
        b->ok = 0;
    }
}

static cJSON *b_arr(kvsc_b_t *b, cJSON *parent, const char *key)
{
    cJSON *a = parent != NULL ? cJSON_AddArrayToObject(parent, key) : NULL;
    if (a == NULL) {
        b->ok = 0;
    }
    return a;
}

/* The array @key of @parent, made when it is not there yet. */
static cJSON *b_arr_once(kvsc_b_t *b, cJSON *parent, const char *key)
{
    cJSON *a = parent != NULL ? cJSON_GetObjectItemCaseSensitive(parent, key) : NULL;
    return a != NULL ? a : b_arr(b, parent, key);
}

static void b_str(kvsc_b_t *b, cJSON *o, const char *key, const char *val)
{
    if (o == NULL || cJSON_AddStringToObject(o, key, val) == NULL) {
        b->ok = 0;
    }
}

static void b_num(kvsc_b_t *b, cJSON *o, const char *key, double val)
{
    if (o == NULL || cJSON_AddNumberToObject(o, key, val) == NULL) {
        b->ok = 0;
    }
}

static void b_bool(kvsc_b_t *b, cJSON *o, const char *key, int val)
{
    if (o == NULL || cJSON_AddBoolToObject(o, key, val) == NULL) {
        b->ok = 0;
    }
}

static void b_labels(kvsc_b_t *b, cJSON *parent, const char *key, const kvsc_pool_t *pool,
                     int managed_by)
{
    cJSON *l = b_obj(b, parent, key);
    b_str(b, l, KVSC_LABEL_APP_NAME, KVSC_CACHE_APP);
    b_str(b, l, KVSC_LABEL_POOL, pool->name);
    if (managed_by) {
        b_str(b, l, KVSC_LABEL_MANAGED_BY, KVSC_MANAGER);
    }
}

static cJSON *b_meta(kvsc_b_t *b, cJSON *obj, const kvsc_pool_t *pool)
{
    char name[KVSC_REC_POOL_NAME_MAX + sizeof(KVSC_CACHE_SUFFIX)];
    snprintf(name, sizeof(name), "%s" KVSC_CACHE_SUFFIX, pool->name);
    cJSON *meta = b_obj(b, obj, "metadata");
    b_str(b, meta, "name", name);
    b_str(b, meta, "namespace", pool->namespace_);
    b_labels(b, meta, "labels", pool, 1);
    /* controller + blockOwnerDeletion: deleting the pool lets the garbage collector remove
     * these objects, and foreground deletion waits for them. */
    cJSON *refs = b_arr(b, meta, "ownerReferences");
    cJSON *ref = b_obj(b, refs, NULL);
    b_str(b, ref, "apiVersion", KVSC_POOL_GROUP_VERSION);
    b_str(b, ref, "kind", KVSC_POOL_KIND);
    b_str(b, ref, "name", pool->name);
    b_str(b, ref, "uid", pool->uid);
    b_bool(b, ref, "controller", 1);
    b_bool(b, ref, "blockOwnerDeletion", 1);
    return meta;
}

static void b_env(kvsc_b_t *b, cJSON *env, const char *name, const char *value)
{
    cJSON *e = b_obj(b, env, NULL);
    b_str(b, e, "name", name);
    b_str(b, e, "value", value);
}

static void b_port(kvsc_b_t *b, cJSON *ports, const char *name, unsigned port, int service)
{
    cJSON *p = b_obj(b, ports, NULL);
    b_str(b, p, "name", name);
    /* Set what the API server would default, so the subset test sees no drift. */
    if (service) {
        b_num(b, p, "port", port);
        b_num(b, p, "targetPort", port);
    } else {
        b_num(b, p, "containerPort", port);
    }
    b_str(b, p, "protocol", "TCP");
}

kvsc_status_t kvsc_desired_deployment(const kvsc_rec_cfg_t *cfg, const kvsc_pool_t *pool,
                                      cJSON **obj_p)
{
    kvsc_b_t b = {.ok = 1};
    char num[32], listen[64];
    cJSON *obj = b_root(&b);
    if (obj == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    b_str(&b, obj, "apiVersion", "apps/v1");
    b_str(&b, obj, "kind", "Deployment");
    b_meta(&b, obj, pool);
    cJSON *spec = b_obj(&b, obj, "spec");
    b_num(&b, spec, "replicas", (double)pool->replicas);
    cJSON *sel = b_obj(&b, spec, "selector");
    b_labels(&b, sel, "matchLabels", pool, 0);
    cJSON *tmpl = b_obj(&b, spec, "template");
    cJSON *tmeta = b_obj(&b, tmpl, "metadata");
    b_labels(&b, tmeta, "labels", pool, 0);
    cJSON *pspec = b_obj(&b, tmpl, "spec");
    cJSON *ctrs = b_arr(&b, pspec, "containers");
    cJSON *c = b_obj(&b, ctrs, NULL);
    b_str(&b, c, "name", "kvshare");
    b_str(&b, c, "image", cfg->image);
    cJSON *cmd = b_arr(&b, c, "command");
    cJSON *args = b_arr(&b, c, "args");
    snprintf(listen, sizeof(listen), "$(POD_IP):%u", cfg->listen_port);
    snprintf(num, sizeof(num), "0.0.0.0:%u", KVSC_CACHE_METRICS_PORT);
    const char *argv[] = {"serve", "--listen", listen, "--metrics", num};
    b_arr_str(&b, cmd, "kvshare");
    for (size_t i = 0; i < sizeof(argv) / sizeof(argv[0]); i++) {
        b_arr_str(&b, args, argv[i]);
    }
    cJSON *env = b_arr(&b, c, "env");
    /* POD_IP first: $(POD_IP) in args and later env can only refer to earlier variables. */
    cJSON *e = b_obj(&b, env, NULL);
    b_str(&b, e, "name", "POD_IP");
    cJSON *fr = b_obj(&b, b_obj(&b, e, "valueFrom"), "fieldRef");
    b_str(&b, fr, "apiVersion", "v1");
    b_str(&b, fr, "fieldPath", "status.podIP");
    snprintf(num, sizeof(num), "%lld", pool->total_memory_gb);
    b_env(&b, env, "KVSHARE_TOTAL_MEMORY_GB", num);
    b_env(&b, env, "KVSHARE_STRATEGY", pool->strategy);
    snprintf(num, sizeof(num), "%lld", pool->replicas);
    b_env(&b, env, "KVSHARE_REPLICAS", num);
    if (pool->auth_secret != NULL) {
        char path[sizeof(KVSC_MOUNT_AUTH) + 256];
        snprintf(path, sizeof(path), KVSC_MOUNT_AUTH "/%s", pool->auth_key);
        b_env(&b, env, KVSC_ENV_AUTH_TOKEN_FILE, path);
        cJSON *m = b_obj(&b, b_arr(&b, c, "volumeMounts"), NULL);
        b_str(&b, m, "name", KVSC_VOLUME_AUTH);
        b_str(&b, m, "mountPath", KVSC_MOUNT_AUTH);
        b_bool(&b, m, "readOnly", 1);
        cJSON *vol = b_obj(&b, b_arr(&b, pspec, "volumes"), NULL);
        b_str(&b, vol, "name", KVSC_VOLUME_AUTH);
        cJSON *sec = b_obj(&b, vol, "secret");
        b_str(&b, sec, "secretName", pool->auth_secret);
        b_num(&b, sec, "defaultMode", KVSC_AUTH_MODE);
    } else {
        /* kvshare refuses to start without a token unless told to run open; a pool without
         * authSecretRef says so here, and in its Authenticated condition. */
        b_env(&b, env, KVSC_ENV_AUTH, "none");
    }
    if (pool->host_socket_dir != NULL) {
        /* Same-host clients map this node's arena through a socket in the shared dir. */
        b_env(&b, env, "KVSHARE_HOST_SOCKET_DIR", KVSC_MOUNT_HOST);
        cJSON *m = b_obj(&b, b_arr_once(&b, c, "volumeMounts"), NULL);
        b_str(&b, m, "name", KVSC_VOLUME_HOST);
        b_str(&b, m, "mountPath", KVSC_MOUNT_HOST);
        cJSON *vol = b_obj(&b, b_arr_once(&b, pspec, "volumes"), NULL);
        b_str(&b, vol, "name", KVSC_VOLUME_HOST);
        cJSON *hp = b_obj(&b, vol, "hostPath");
        b_str(&b, hp, "path", pool->host_socket_dir);
        b_str(&b, hp, "type", "DirectoryOrCreate");
    }
    cJSON *ports = b_arr(&b, c, "ports");
    b_port(&b, ports, "kvshare", cfg->listen_port, 0);
    b_port(&b, ports, "metrics", KVSC_CACHE_METRICS_PORT, 0);
    /* Ready once it accepts connections: that is when clients may place blocks on it. */
    cJSON *probe = b_obj(&b, c, "readinessProbe");
    b_str(&b, b_obj(&b, probe, "tcpSocket"), "port", "kvshare");
    b_num(&b, probe, "periodSeconds", 5);
    if (!b.ok) {
        cJSON_Delete(obj);
        return KVSC_ERR_NO_MEMORY;
    }
    *obj_p = obj;
    return KVSC_OK;
}

kvsc_status_t kvsc_desired_service(const kvsc_rec_cfg_t *cfg, const kvsc_pool_t *pool,
                                   cJSON **obj_p)
{
    kvsc_b_t b = {.ok = 1};
    cJSON *obj = b_root(&b);
    if (obj == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    b_str(&b, obj, "apiVersion", "v1");
    b_str(&b, obj, "kind", "Service");
    b_meta(&b, obj, pool);
    cJSON *spec = b_obj(&b, obj, "spec");
    /* Headless: DNS answers with every ready node's IP, and clients place blocks on them by
     * rendezvous hashing, so a virtual IP would only get in the way. */
    b_str(&b, spec, "clusterIP", "None");
    b_labels(&b, spec, "selector", pool, 0);
    cJSON *ports = b_arr(&b, spec, "ports");
    b_port(&b, ports, "kvshare", cfg->listen_port, 1);
    b_port(&b, ports, "metrics", KVSC_CACHE_METRICS_PORT, 1);
    if (!b.ok) {
        cJSON_Delete(obj);
        return KVSC_ERR_NO_MEMORY;
    }
    *obj_p = obj;
    return KVSC_OK;
}

cJSON *kvsc_update_patch(const cJSON *desired)
{
    cJSON *patch = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(patch, "metadata");
    const cJSON *dmeta = cJSON_GetObjectItemCaseSensitive(desired, "metadata");
    cJSON *labels = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(dmeta, "labels"), 1);
    cJSON *spec = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(desired, "spec"), 1);
    if (meta == NULL || labels == NULL || spec == NULL) {
        goto fail;
    }
    if (!cJSON_AddItemToObject(meta, "labels", labels)) {
        goto fail;
    }
    labels = NULL;
    /* Immutable once created: sending them can only fail, and ours never change. */
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "selector");
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "clusterIP");
    const char *kind = str_at(desired, "kind");
    if (kind != NULL && strcmp(kind, "Service") == 0) {
        /* The selector of a Service is mutable; it is put back. */
        cJSON *sel =
            cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(
                                cJSON_GetObjectItemCaseSensitive(desired, "spec"), "selector"),
                            1);
        if (sel == NULL || !cJSON_AddItemToObject(spec, "selector", sel)) {
            cJSON_Delete(sel);
            goto fail;
        }
    }
    if (!cJSON_AddItemToObject(patch, "spec", spec)) {
        goto fail;
    }
    return patch;
fail:
    cJSON_Delete(labels);
    cJSON_Delete(spec);
    cJSON_Delete(patch);
    return NULL;
}

int kvsc_json_subset(const cJSON *want, const cJSON *have)
{
    if (want == NULL) {
        return 1;
    }
    if (have == NULL) {
        return 0;
    }
    if (cJSON_IsObject(want)) {
        if (!cJSON_IsObject(have)) {
            return 0;
        }
        for (const cJSON *w = want->child; w != NULL; w = w->next) {
            if (!kvsc_json_subset(w, cJSON_GetObjectItemCaseSensitive(have, w->string))) {
                return 0;
            }
        }
        return 1;
    }
    if (cJSON_IsArray(want)) {
        if (!cJSON_IsArray(have) || cJSON_GetArraySize(want) != cJSON_GetArraySize(have)) {
            return 0;
        }
        const cJSON *h = have->child;
        for (const cJSON *w = want->child; w != NULL; w = w->next, h = h->next) {
            if (!kvsc_json_subset(w, h)) {
                return 0;
            }
        }
        return 1;
    }
    if (cJSON_IsString(want)) {
        return cJSON_IsString(have) && strcmp(want->valuestring, have->valuestring) == 0;
    }
    if (cJSON_IsNumber(want)) {
        return cJSON_IsNumber(have) && want->valuedouble == have->valuedouble;
    }
    if (cJSON_IsBool(want)) {
        return cJSON_IsBool(have) && cJSON_IsTrue(want) == cJSON_IsTrue(have);
    }
    return cJSON_IsNull(have);
}

int kvsc_controlled_by(const cJSON *obj, const char *uid)
{
    const cJSON *refs = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "ownerReferences");
    const cJSON *ref;
    cJSON_ArrayForEach(ref, refs)
    {
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ref, "controller"))) {
            continue;
        }
        const char *u = str_at(ref, "uid");
        return u != NULL && strcmp(u, uid) == 0 ? 1 : -1;
    }
    return 0;
}

cJSON *kvsc_desired_status(const cJSON *current, long long generation, const kvsc_ready_t *ready,
                           const char *now_rfc3339)
{
    kvsc_b_t b = {.ok = 1};
    const char *cstatus = ready->ready ? "True" : "False";
    const char *since = now_rfc3339;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(current, "conditions"))
    {
        const char *type = str_at(c, "type"), *st = str_at(c, "status");
        const char *t = str_at(c, "lastTransitionTime");
        if (type != NULL && strcmp(type, "Ready") == 0 && st != NULL && strcmp(st, cstatus) == 0 &&
            t != NULL) {
            since = t;
        }
    }
    cJSON *status = b_root(&b);
    if (status == NULL) {
        return NULL;
    }
    b_num(&b, status, "readyReplicas", (double)ready->ready_replicas);
    b_num(&b, status, "observedGeneration", (double)generation);
    cJSON *conds = b_arr(&b, status, "conditions");
    cJSON *cond = b_obj(&b, conds, NULL);
    b_str(&b, cond, "type", "Ready");
    b_str(&b, cond, "status", cstatus);
    b_num(&b, cond, "observedGeneration", (double)generation);
    b_str(&b, cond, "lastTransitionTime", since);
    b_str(&b, cond, "reason", ready->reason);
    b_str(&b, cond, "message", ready->message);
    if (ready->auth_known) {
        const char *astatus = ready->auth_secret != NULL ? "True" : "False";
        const char *asince = now_rfc3339;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(current, "conditions"))
        {
            const char *type = str_at(c, "type"), *st = str_at(c, "status");
            const char *t = str_at(c, "lastTransitionTime");
            if (type != NULL && strcmp(type, "Authenticated") == 0 && st != NULL &&
                strcmp(st, astatus) == 0 && t != NULL) {
                asince = t;
            }
        }
        char amsg[600];
        if (ready->auth_secret != NULL) {
            snprintf(amsg, sizeof(amsg),
                     "cache nodes and their clients prove the token in Secret %s, key %s",
                     ready->auth_secret, ready->auth_key);
        } else {
            snprintf(amsg, sizeof(amsg),
                     "spec.authSecretRef is not set: cache nodes run with KVSHARE_AUTH=none and "
                     "serve KV blocks to any peer that can reach them");
        }
        cJSON *acond = b_obj(&b, conds, NULL);
        b_str(&b, acond, "type", "Authenticated");
        b_str(&b, acond, "status", astatus);
        b_num(&b, acond, "observedGeneration", (double)generation);
        b_str(&b, acond, "lastTransitionTime", asince);
        b_str(&b, acond, "reason", ready->auth_secret != NULL ? "SecretRef" : "AuthDisabled");
        b_str(&b, acond, "message", amsg);
    }
    if (!b.ok) {
        cJSON_Delete(status);
        return NULL;
    }
    return status;
}
