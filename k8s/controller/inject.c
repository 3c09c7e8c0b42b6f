/* SPDX-License-Identifier: Apache-2.0 */
/* Builds the JSON Patch that wires the kvshare shim into an opted-in pod. */
#include "controller_int.h"
#include "util_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

/* Longest pool name whose "<pool>-cache" Service name still fits a DNS-1123 label (63). */
#define KVSC_POOL_NAME_MAX  57
#define KVSC_WARN_VALUE_MAX 63

/* The variables added when the container lacks them, in this order ($(VAR) expands only
 * variables defined earlier). None starts with VLLM_: vLLM rejects unknown VLLM_* names
 * under --fail-on-environ-validation. */
#define KVSC_ENV_VARS(X)                                                                           \
    X(POD_IP, "KVSHARE_POD_IP")                                                                    \
    X(POD_NAME, "KVSHARE_POD_NAME")                                                                \
    X(ROLE, "KVSHARE_ROLE")                                                                        \
    X(POOL, "KVSHARE_POOL")                                                                        \
    X(LISTEN, "KVSHARE_LISTEN")                                                                    \
    X(AUTH_TOKEN_FILE, KVSC_ENV_AUTH_TOKEN_FILE)                                                   \
    X(AUTH, KVSC_ENV_AUTH)                                                                         \
    X(VLLM_ROLE, "KVSHARE_VLLM_ROLE")                                                              \
    X(HOST_SOCKET_DIR, "KVSHARE_HOST_SOCKET_DIR")                                                  \
    X(HASH_SEED, "PYTHONHASHSEED")

enum {
#define KVSC_ENV_ENUM(id, name) KVSC_EV_##id,
    KVSC_ENV_VARS(KVSC_ENV_ENUM)
#undef KVSC_ENV_ENUM
        KVSC_EV_COUNT
};

static const char *const kvsc_env_names[KVSC_EV_COUNT] = {
#define KVSC_ENV_NAME(id, name) name,
    KVSC_ENV_VARS(KVSC_ENV_NAME)
#undef KVSC_ENV_NAME
};

/* Path lists the webhook adds one entry to, keeping what the container already has. */
typedef struct {
    const char *name;  /* the variable */
    const char *entry; /* what is added */
    const char *what;  /* for warnings */
    const char *seps;  /* what separates entries in an existing value */
    int prepend;       /* 1: the entry goes first, 0: last */
} kvsc_list_var_t;

static const kvsc_list_var_t kvsc_list_vars[] = {
    /* ld.so splits LD_PRELOAD on ':' and ' '. */
    {"LD_PRELOAD", KVSC_SHIM_PATH, "the shim", ": ", 0},
    /* First, as Datadog's injector does, so the plugin's dist-info is found whatever the
     * image also ships. */
    {"PYTHONPATH", KVSC_PYTHON_PATH, "the kvshare vLLM plugin", ":", 1},
};

static cJSON *obj_get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static const char *str_get(const cJSON *obj, const char *key)
{
    cJSON *v = obj_get(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* printf into a new cJSON_malloc'd string, so the OOM tests see every allocation. */
__attribute__((format(printf, 1, 2))) static char *fmt_alloc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return NULL;
    }
    char *s = cJSON_malloc((size_t)n + 1);
    if (s == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

char *kvsc_json_pointer_escape(const char *token)
{
    size_t extra = 0;
    for (const char *p = token; *p != '\0'; p++) {
        extra += (*p == '~' || *p == '/');
    }
    size_t len = strlen(token);
    char *out = cJSON_malloc(len + extra + 1);
    if (out == NULL) {
        return NULL;
    }
    /* One pass does '~' and '/' at once; that equals "~ first, then /" because the
     * "~1" made from '/' is never rescanned. */
    char *w = out;
    for (const char *p = token; *p != '\0'; p++) {
        if (*p == '~') {
            *w++ = '~';
            *w++ = '0';
        } else if (*p == '/') {
            *w++ = '~';
            *w++ = '1';
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
    return out;
}

char *kvsc_base64(const unsigned char *data, size_t len)
{
    if (len > (size_t)INT32_MAX / 2) {
        return NULL;
    }
    size_t cap = 4 * ((len + 2) / 3) + 1;
    char *out = cJSON_malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    /* EVP_EncodeBlock writes no newlines and NUL-terminates. */
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Add a warning string; values from the pod are clipped and made printable first. */
static kvsc_status_t warn(cJSON *warnings, const char *fmt, const char *value)
{
    char clean[KVSC_WARN_VALUE_MAX + 4];
    size_t i = 0;
    for (; value != NULL && value[i] != '\0' && i < KVSC_WARN_VALUE_MAX; i++) {
        unsigned char c = (unsigned char)value[i];
        clean[i] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (value != NULL && value[i] != '\0') {
        memcpy(clean + i, "...", 3);
        i += 3;
    }
    clean[i] = '\0';
    char *msg = fmt_alloc(fmt, clean);
    if (msg == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    cJSON *item = cJSON_CreateString(msg);
    cJSON_free(msg);
    if (item == NULL || !cJSON_AddItemToArray(warnings, item)) {
        cJSON_Delete(item);
        return KVSC_ERR_NO_MEMORY;
    }
    return KVSC_OK;
}

/* What Python accepts in PYTHONHASHSEED, less "random" (which gives each process its own
 * vLLM NONE_HASH, so no two pods would share a block key): a decimal 0..4294967295. */
static int is_hash_seed(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 10) {
        return 0;
    }
    unsigned long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    return v <= 4294967295ull;
}

/* Append {"op":op,"path":path,"value":value} to patch; takes value (NULL: its builder failed). */
static kvsc_status_t add_op(cJSON *patch, const char *op, const char *path, cJSON *value)
{
    if (value == NULL) {
        return KVSC_ERR_NO_MEMORY; /* every op we emit has a value: its builder ran out */
    }
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || !cJSON_AddItemToArray(patch, o)) {
        cJSON_Delete(o);
        cJSON_Delete(value);
        return KVSC_ERR_NO_MEMORY;
    }
    if (cJSON_AddStringToObject(o, "op", op) == NULL ||
        cJSON_AddStringToObject(o, "path", path) == NULL) {
        cJSON_Delete(value);
        return KVSC_ERR_NO_MEMORY;
    }
    if (!cJSON_AddItemToObject(o, "value", value)) {
        cJSON_Delete(value);
        return KVSC_ERR_NO_MEMORY;
    }
    return KVSC_OK;
}

/* add_op with a printf-built path. */
__attribute__((format(printf, 4, 5))) static kvsc_status_t
add_opf(cJSON *patch, const char *op, cJSON *value, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[160];
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        /* Every path we build is short; a longer one is a bug, never input-driven. */
        cJSON_Delete(value);
        return KVSC_ERR_INVALID;
    }
    return add_op(patch, op, buf, value);
}

/* "add" an empty array or object at path when the parent lacks key: "/-" needs it. */
static kvsc_status_t ensure_container(cJSON *patch, const cJSON *parent, const char *key,
                                      const char *path, int want_array)
{
    if (obj_get(parent, key) != NULL) {
        return KVSC_OK;
    }
    cJSON *v = want_array ? cJSON_CreateArray() : cJSON_CreateObject();
    if (v == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    return add_op(patch, "add", path, v);
}

static cJSON *env_value(const char *name, const char *value)
{
    cJSON *e = cJSON_CreateObject();
    if (e == NULL || cJSON_AddStringToObject(e, "name", name) == NULL ||
        cJSON_AddStringToObject(e, "value", value) == NULL) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

static cJSON *env_field_ref(const char *name, const char *field_path)
{
    cJSON *e = cJSON_CreateObject();
    cJSON *from = cJSON_AddObjectToObject(e, "valueFrom");
    cJSON *ref = cJSON_AddObjectToObject(from, "fieldRef");
    /* apiVersion is what the API server would default; setting it keeps a reinvoked
     * webhook from seeing a difference. */
    if (e == NULL || cJSON_AddStringToObject(e, "name", name) == NULL || ref == NULL ||
        cJSON_AddStringToObject(ref, "apiVersion", "v1") == NULL ||
        cJSON_AddStringToObject(ref, "fieldPath", field_path) == NULL) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

static cJSON *mount(const char *name, const char *path, int read_only)
{
    cJSON *m = cJSON_CreateObject();
    if (m == NULL || cJSON_AddStringToObject(m, "name", name) == NULL ||
        cJSON_AddStringToObject(m, "mountPath", path) == NULL ||
        (read_only && cJSON_AddTrueToObject(m, "readOnly") == NULL)) {
        cJSON_Delete(m);
        return NULL;
    }
    return m;
}

static cJSON *init_container(const kvsc_inject_cfg_t *cfg)
{
    static const char *const cmd[] = {"cp", "-a", "/usr/lib/kvshare/dist/.", KVSC_MOUNT_LIB "/"};
    static const char *const drop[] = {"ALL"};
    cJSON *c = cJSON_CreateObject();
    cJSON *command = cJSON_CreateStringArray(cmd, 4);
    if (c == NULL || !cJSON_AddItemToObject(c, "command", command)) {
        cJSON_Delete(command);
        cJSON_Delete(c);
        return NULL;
    }
    cJSON *mounts = cJSON_AddArrayToObject(c, "volumeMounts");
    cJSON *m = mount(KVSC_VOLUME_LIB, KVSC_MOUNT_LIB, 0);
    if (mounts == NULL || m == NULL || !cJSON_AddItemToArray(mounts, m)) {
        cJSON_Delete(m);
        cJSON_Delete(c);
        return NULL;
    }
    cJSON *res = cJSON_AddObjectToObject(c, "resources");
    cJSON *req = cJSON_AddObjectToObject(res, "requests");
    cJSON *lim = cJSON_AddObjectToObject(res, "limits");
    cJSON *sec = cJSON_AddObjectToObject(c, "securityContext");
    cJSON *caps = cJSON_AddObjectToObject(sec, "capabilities");
    cJSON *drops = cJSON_CreateStringArray(drop, 1);
    if (cJSON_AddStringToObject(c, "name", KVSC_INIT_NAME) == NULL ||
        cJSON_AddStringToObject(c, "image", cfg->image) == NULL ||
        cJSON_AddStringToObject(c, "imagePullPolicy", "IfNotPresent") == NULL || req == NULL ||
        lim == NULL || cJSON_AddStringToObject(req, "cpu", "10m") == NULL ||
        cJSON_AddStringToObject(req, "memory", "16Mi") == NULL ||
        cJSON_AddStringToObject(lim, "memory", "64Mi") == NULL || sec == NULL ||
        cJSON_AddFalseToObject(sec, "allowPrivilegeEscalation") == NULL ||
        cJSON_AddTrueToObject(sec, "readOnlyRootFilesystem") == NULL ||
        cJSON_AddTrueToObject(sec, "runAsNonRoot") == NULL || caps == NULL ||
        !cJSON_AddItemToObject(caps, "drop", drops)) {
        cJSON_Delete(drops);
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

static int array_has_name(const cJSON *arr, const char *name)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        const char *n = str_get(it, "name");
        if (n != NULL && strcmp(n, name) == 0) {
            return 1;
        }
    }
    return 0;
}

static int has_mount_at(const cJSON *containers, const char *path)
{
    const cJSON *c;
    cJSON_ArrayForEach(c, containers)
    {
        const cJSON *m;
        cJSON_ArrayForEach(m, obj_get(c, "volumeMounts"))
        {
            const char *p = str_get(m, "mountPath");
            if (p != NULL && strcmp(p, path) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* Is path already one of the entries of a list separated by any of seps? */
static int list_has(const char *list, const char *path, const char *seps)
{
    size_t plen = strlen(path);
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, seps);
        if (n == plen && strncmp(p, path, plen) == 0) {
            return 1;
        }
        p += n;
        p += (*p != '\0');
    }
    return 0;
}

/* Is the pod something we can patch safely? Anything odd means: leave it alone. */
static int spec_is_sane(const cJSON *pod)
{
    const cJSON *spec = obj_get(pod, "spec");
    const cJSON *containers = obj_get(spec, "containers");
    if (!cJSON_IsArray(containers) || cJSON_GetArraySize(containers) == 0) {
        return 0;
    }
    const cJSON *meta = obj_get(pod, "metadata");
    if ((meta != NULL && !cJSON_IsObject(meta)) ||
        (obj_get(meta, "annotations") != NULL && !cJSON_IsObject(obj_get(meta, "annotations")))) {
        return 0;
    }
    const char *arrays[] = {"volumes", "initContainers"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *a = obj_get(spec, arrays[i]);
        if (a != NULL && !cJSON_IsArray(a)) {
            return 0;
        }
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, containers)
    {
        const cJSON *env = obj_get(c, "env");
        const cJSON *mounts = obj_get(c, "volumeMounts");
        if (!cJSON_IsObject(c) || (env != NULL && !cJSON_IsArray(env)) ||
            (mounts != NULL && !cJSON_IsArray(mounts))) {
            return 0;
        }
    }
    return 1;
}

typedef struct {
    const char *role;
    const char *vllm_role; /* KVSHARE_VLLM_ROLE: vLLM's kv_role for this role */
    const char *hash_seed; /* PYTHONHASHSEED */
    const char *pool_dns;  /* NULL when the pod names no pool */
    const char *auth_secret;
    const char *auth_key; /* the Secret key the token is in */
    int auth_none;        /* the pool is open: KVSHARE_AUTH=none */
    const char *listen;
    const char *host_dir; /* kvshare.io/host-socket-dir, or NULL */
} kvsc_env_plan_t;

/* Add var->entry to the container's var (created when absent). The last entry of a name
 * is the one the kubelet uses. */
static kvsc_status_t patch_list_var(cJSON *patch, cJSON *warnings, const cJSON *c, const char *base,
                                    const kvsc_list_var_t *var)
{
    kvsc_status_t status = KVSC_OK;
    const char *cname = str_get(c, "name");
    int found_idx = -1, i = 0;
    const cJSON *it, *found = NULL;
    cJSON_ArrayForEach(it, obj_get(c, "env"))
    {
        const char *n = str_get(it, "name");
        if (n != NULL && strcmp(n, var->name) == 0) {
            found_idx = i;
            found = it;
        }
        i++;
    }
    char fmt[160];
    if (obj_get(c, "envFrom") != NULL && found == NULL) {
        snprintf(fmt, sizeof(fmt),
                 "kvshare: container %%s uses envFrom; a %s from there is overridden by "
                 "kvshare's",
                 var->name);
        status = warn(warnings, fmt, cname);
        if (status != KVSC_OK) {
            return status;
        }
    }
    if (found != NULL && obj_get(found, "valueFrom") != NULL) {
        snprintf(fmt, sizeof(fmt),
                 "kvshare: container %%s sets %s via valueFrom; %s was not added to it", var->name,
                 var->what);
        return warn(warnings, fmt, cname);
    }
    if (found == NULL) {
        return add_opf(patch, "add", env_value(var->name, var->entry), "%s/env/-", base);
    }
    const char *old = str_get(found, "value");
    if (old != NULL && list_has(old, var->entry, var->seps)) {
        return KVSC_OK;
    }
    char *joined = (old == NULL || old[0] == '\0') ? fmt_alloc("%s", var->entry)
                   : var->prepend                  ? fmt_alloc("%s:%s", var->entry, old)
                                                   : fmt_alloc("%s:%s", old, var->entry);
    cJSON *v = joined != NULL ? cJSON_CreateString(joined) : NULL;
    cJSON_free(joined);
    if (v == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    /* test pins the index we read, so a concurrent reorder fails loudly. */
    status =
        add_opf(patch, "test", cJSON_CreateString(var->name), "%s/env/%d/name", base, found_idx);
    if (status != KVSC_OK) {
        cJSON_Delete(v);
        return status;
    }
    /* "add" on an object member replaces it, and works when value was omitted. */
    return add_opf(patch, "add", v, "%s/env/%d/value", base, found_idx);
}

static kvsc_status_t patch_container(cJSON *patch, cJSON *warnings, const cJSON *c, int idx,
                                     const kvsc_env_plan_t *plan)
{
    kvsc_status_t status;
    char base[48];
    snprintf(base, sizeof(base), "/spec/containers/%d", idx);

    char path[64];
    snprintf(path, sizeof(path), "%s/volumeMounts", base);
    status = ensure_container(patch, c, "volumeMounts", path, 1);
    if (status != KVSC_OK) {
        return status;
    }
    status =
        add_opf(patch, "add", mount(KVSC_VOLUME_LIB, KVSC_MOUNT_LIB, 1), "%s/volumeMounts/-", base);
    if (status == KVSC_OK && plan->auth_secret != NULL) {
        status = add_opf(patch, "add", mount(KVSC_VOLUME_AUTH, KVSC_MOUNT_AUTH, 1),
                         "%s/volumeMounts/-", base);
    }
    if (status == KVSC_OK && plan->host_dir != NULL) {
        status = add_opf(patch, "add", mount(KVSC_VOLUME_HOST, KVSC_MOUNT_HOST, 0),
                         "%s/volumeMounts/-", base);
    }
    if (status != KVSC_OK) {
        return status;
    }

    const cJSON *env = obj_get(c, "env");
    snprintf(path, sizeof(path), "%s/env", base);
    status = ensure_container(patch, c, "env", path, 1);
    if (status != KVSC_OK) {
        return status;
    }

    for (size_t k = 0; k < sizeof(kvsc_list_vars) / sizeof(kvsc_list_vars[0]); k++) {
        status = patch_list_var(patch, warnings, c, base, &kvsc_list_vars[k]);
        if (status != KVSC_OK) {
            return status;
        }
    }

    for (int k = 0; k < KVSC_EV_COUNT; k++) {
        const char *name = kvsc_env_names[k];
        if (array_has_name(env, name)) {
            continue; /* the user's value wins */
        }
        cJSON *e = NULL;
        switch (k) {
        case KVSC_EV_POD_IP:
            e = env_field_ref(name, "status.podIP");
            break;
        case KVSC_EV_POD_NAME:
            e = env_field_ref(name, "metadata.name");
            break;
        case KVSC_EV_ROLE:
            e = env_value(name, plan->role);
            break;
        case KVSC_EV_POOL:
            if (plan->pool_dns == NULL) {
                continue;
            }
            e = env_value(name, plan->pool_dns);
            break;
        case KVSC_EV_LISTEN:
            e = env_value(name, plan->listen);
            break;
        case KVSC_EV_AUTH_TOKEN_FILE: {
            if (plan->auth_secret == NULL) {
                continue;
            }
            char *file = fmt_alloc("%s/%s", KVSC_MOUNT_AUTH, plan->auth_key);
            e = file != NULL ? env_value(name, file) : NULL;
            cJSON_free(file);
            break;
        }
        case KVSC_EV_AUTH:
            if (!plan->auth_none) {
                continue;
            }
            e = env_value(name, "none");
            break;
        case KVSC_EV_VLLM_ROLE:
            e = env_value(name, plan->vllm_role);
            break;
        case KVSC_EV_HOST_SOCKET_DIR:
            if (plan->host_dir == NULL) {
                continue;
            }
            e = env_value(name, KVSC_MOUNT_HOST);
            break;
        default: /* KVSC_EV_HASH_SEED */
            e = env_value(name, plan->hash_seed);
            break;
        }
        status = add_opf(patch, "add", e, "%s/env/-", base);
        if (status != KVSC_OK) {
            return status;
        }
    }
    return KVSC_OK;
}

static cJSON *lib_volume(void)
{
    cJSON *v = cJSON_CreateObject();
    if (v == NULL || cJSON_AddStringToObject(v, "name", KVSC_VOLUME_LIB) == NULL ||
        cJSON_AddObjectToObject(v, "emptyDir") == NULL) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

/* The node directory where same-host holders put their memfd sockets. */
static cJSON *host_volume(const char *dir)
{
    cJSON *v = cJSON_CreateObject();
    cJSON *h = cJSON_AddObjectToObject(v, "hostPath");
    if (v == NULL || cJSON_AddStringToObject(v, "name", KVSC_VOLUME_HOST) == NULL || h == NULL ||
        cJSON_AddStringToObject(h, "path", dir) == NULL ||
        cJSON_AddStringToObject(h, "type", "DirectoryOrCreate") == NULL) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

static cJSON *auth_volume(const char *secret)
{
    cJSON *v = cJSON_CreateObject();
    cJSON *s = cJSON_AddObjectToObject(v, "secret");
    /* 0440: the token is for the app's user and group, nobody else. */
    if (v == NULL || cJSON_AddStringToObject(v, "name", KVSC_VOLUME_AUTH) == NULL || s == NULL ||
        cJSON_AddStringToObject(s, "secretName", secret) == NULL ||
        cJSON_AddNumberToObject(s, "defaultMode", 0440) == NULL) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

kvsc_status_t kvsc_inject_patch(const kvsc_inject_cfg_t *cfg, const cJSON *pod,
                                const char *namespace_, cJSON **patch_p, cJSON *warnings)
{
    kvsc_status_t status = KVSC_OK;
    cJSON *patch = NULL;
    char *pool_dns = NULL, *listen = NULL, *annot_key = NULL, *annot_path = NULL;
    char *auth_key = NULL, *auth_path = NULL, *auth_mode = NULL;
    char pool_secret[256], pool_skey[256];

    const cJSON *meta = obj_get(pod, "metadata");
    const cJSON *labels = obj_get(meta, "labels");
    const cJSON *annotations = obj_get(meta, "annotations");
    const cJSON *spec = obj_get(pod, "spec");
    const cJSON *containers = obj_get(spec, "containers");

    const char *inject = str_get(labels, KVSC_LABEL_INJECT);
    if (inject == NULL || strcmp(inject, "true") != 0) {
        goto out_no_patch;
    }
    /* Idempotence: a marked pod, or one that already carries our init container. */
    if (obj_get(annotations, KVSC_ANNOT_INJECTED) != NULL ||
        array_has_name(obj_get(spec, "initContainers"), KVSC_INIT_NAME)) {
        goto out_no_patch;
    }
    if (!spec_is_sane(pod)) {
        status = warn(warnings, "kvshare: pod spec is malformed%s; not injected", "");
        goto out_no_patch;
    }

    const char *role = str_get(labels, KVSC_LABEL_ROLE);
    if (obj_get(labels, KVSC_LABEL_ROLE) != NULL && role == NULL) {
        role = "";
    }
    if (role == NULL) {
        role = "both";
    } else if (strcmp(role, "prefill") != 0 && strcmp(role, "decode") != 0 &&
               strcmp(role, "both") != 0) {
        status = warn(warnings,
                      "kvshare: invalid kvshare.io/role \"%s\" (want prefill, decode or both); "
                      "pod not injected",
                      role);
        goto out_no_patch;
    }
    /* vLLM's kv_role for the plugin: prefill produces, decode consumes. */
    const char *vllm_role = strcmp(role, "prefill") == 0  ? "kv_producer"
                            : strcmp(role, "decode") == 0 ? "kv_consumer"
                                                          : "kv_both";
    const char *hash_seed = str_get(annotations, KVSC_ANNOT_HASH_SEED);
    if (obj_get(annotations, KVSC_ANNOT_HASH_SEED) != NULL && hash_seed == NULL) {
        hash_seed = "";
    }
    if (hash_seed == NULL) {
        hash_seed = KVSC_DEFAULT_HASH_SEED;
    } else if (!is_hash_seed(hash_seed)) {
        status = warn(warnings,
                      "kvshare: invalid kvshare.io/python-hash-seed \"%s\" (want a decimal "
                      "integer 0..4294967295, the same in every pod of the pool); pod not "
                      "injected",
                      hash_seed);
        goto out_no_patch;
    }
    const char *pool = str_get(annotations, KVSC_ANNOT_POOL);
    if (pool != NULL && !kvs__dns_label(pool, KVSC_POOL_NAME_MAX, KVS__DNS_1035)) {
        status = warn(warnings,
                      "kvshare: invalid kvshare.io/pool \"%s\" (want a DNS-1035 label, starting "
                      "with a letter, of at most 57 characters: a KVSharePool's name); pod not "
                      "injected",
                      pool);
        goto out_no_patch;
    }
    const char *host_dir = str_get(annotations, KVSC_ANNOT_HOST_SOCKET);
    if (obj_get(annotations, KVSC_ANNOT_HOST_SOCKET) != NULL &&
        (host_dir == NULL || !kvsc_valid_host_dir(host_dir))) {
        status = warn(warnings,
                      "kvshare: invalid kvshare.io/host-socket-dir \"%s\" (want an absolute node "
                      "path of letters, digits, '.', '_', '-' and '/', without '..'); pod not "
                      "injected",
                      host_dir != NULL ? host_dir : "");
        goto out_no_patch;
    }
    const char *secret = str_get(annotations, KVSC_ANNOT_AUTH_SECRET);
    if (secret != NULL && !kvs__dns_subdomain(secret)) {
        status = warn(warnings,
                      "kvshare: invalid kvshare.io/auth-secret \"%s\" (want a Secret name); pod "
                      "not injected",
                      secret);
        goto out_no_patch;
    }
    /* Where the token comes from. The annotation names the Secret outright (key "token");
     * otherwise the pool's spec.authSecretRef, as the reconciler last read it. A pool the
     * controller does not know gets no token and no KVSHARE_AUTH=none: kvshare in the pod
     * refuses to start (auth is on by default), the annotation kvshare.io/injected-auth says
     * "missing", and the review warns. It never joins a pool unauthenticated unnoticed. */
    const char *skey = KVSC_AUTH_TOKEN_KEY;
    int auth_none = 0;
    kvsc_pool_auth_t pa = KVSC_POOL_AUTH_UNKNOWN;
    if (pool != NULL && cfg->pool_auth != NULL) {
        const char *ns =
            namespace_ != NULL && namespace_[0] != '\0' ? namespace_ : str_get(meta, "namespace");
        pa = cfg->pool_auth(cfg->pool_auth_ud, ns != NULL && ns[0] != '\0' ? ns : "default", pool,
                            pool_secret, sizeof(pool_secret), pool_skey, sizeof(pool_skey));
    }
    if (secret != NULL) {
        if (pa == KVSC_POOL_AUTH_OPEN ||
            (pa == KVSC_POOL_AUTH_SECRET &&
             (strcmp(pool_secret, secret) != 0 || strcmp(pool_skey, KVSC_AUTH_TOKEN_KEY) != 0))) {
            status = warn(warnings,
                          "kvshare: kvshare.io/auth-secret differs from KVCachePool %s's "
                          "spec.authSecretRef; the annotation wins, and the pool's nodes may "
                          "refuse this pod",
                          pool);
        }
    } else if (pool != NULL && pa == KVSC_POOL_AUTH_SECRET) {
        secret = pool_secret;
        skey = pool_skey;
    } else if (pool != NULL && pa == KVSC_POOL_AUTH_OPEN) {
        auth_none = 1;
        status = warn(warnings,
                      "kvshare: KVCachePool %s has no spec.authSecretRef: the pod joins it with "
                      "KVSHARE_AUTH=none, unauthenticated",
                      pool);
    } else if (pool != NULL) {
        status = warn(warnings,
                      "kvshare: KVCachePool %s is not known to the controller (not created yet, "
                      "invalid, or --no-reconcile): no auth token wired, so kvshare in this pod "
                      "will refuse to start; recreate the pod once the pool exists, or set "
                      "kvshare.io/auth-secret",
                      pool);
    }
    if (status != KVSC_OK) {
        goto out_free;
    }
    const cJSON *volumes = obj_get(spec, "volumes");
    if (array_has_name(volumes, KVSC_VOLUME_LIB) || array_has_name(volumes, KVSC_VOLUME_AUTH) ||
        has_mount_at(containers, KVSC_MOUNT_LIB) ||
        (host_dir != NULL && (array_has_name(volumes, KVSC_VOLUME_HOST) ||
                              has_mount_at(containers, KVSC_MOUNT_HOST))) ||
        (secret != NULL && has_mount_at(containers, KVSC_MOUNT_AUTH))) {
        /* The API server would reject the pod for a duplicate; leaving it alone is safer. */
        status =
            warn(warnings, "kvshare: pod already uses volume %s or its mount path; not injected",
                 KVSC_VOLUME_LIB);
        goto out_no_patch;
    }

    if (namespace_ == NULL || namespace_[0] == '\0') {
        namespace_ = str_get(meta, "namespace");
    }
    if (namespace_ == NULL || namespace_[0] == '\0') {
        namespace_ = "default";
    }
    if (pool != NULL) {
        pool_dns = fmt_alloc("%s-cache.%s.svc", pool, namespace_);
    }
    listen = fmt_alloc("$(KVSHARE_POD_IP):%u", cfg->listen_port);
    annot_key = kvsc_json_pointer_escape(KVSC_ANNOT_INJECTED);
    annot_path = annot_key != NULL ? fmt_alloc("/metadata/annotations/%s", annot_key) : NULL;
    auth_key = kvsc_json_pointer_escape(KVSC_ANNOT_INJECTED_AUTH);
    auth_path = auth_key != NULL ? fmt_alloc("/metadata/annotations/%s", auth_key) : NULL;
    auth_mode = secret != NULL ? fmt_alloc("secret:%s/%s", secret, skey)
                               : fmt_alloc("%s", auth_none ? "none" : "missing");
    patch = cJSON_CreateArray();
    if ((pool != NULL && pool_dns == NULL) || listen == NULL || annot_path == NULL ||
        auth_path == NULL || auth_mode == NULL || patch == NULL) {
        status = KVSC_ERR_NO_MEMORY;
        goto out_free;
    }

    if (meta == NULL) {
        status = add_op(patch, "add", "/metadata", cJSON_CreateObject());
        if (status != KVSC_OK) {
            goto out_free;
        }
    }
    status = ensure_container(patch, meta, "annotations", "/metadata/annotations", 0);
    if (status == KVSC_OK) {
        status = ensure_container(patch, spec, "volumes", "/spec/volumes", 1);
    }
    if (status == KVSC_OK) {
        status = add_op(patch, "add", "/spec/volumes/-", lib_volume());
    }
    if (status == KVSC_OK && secret != NULL) {
        status = add_op(patch, "add", "/spec/volumes/-", auth_volume(secret));
    }
    if (status == KVSC_OK && host_dir != NULL) {
        status = add_op(patch, "add", "/spec/volumes/-", host_volume(host_dir));
    }
    if (status == KVSC_OK) {
        status = ensure_container(patch, spec, "initContainers", "/spec/initContainers", 1);
    }
    if (status == KVSC_OK) {
        status = add_op(patch, "add", "/spec/initContainers/-", init_container(cfg));
    }
    kvsc_env_plan_t plan = {.role = role,
                            .vllm_role = vllm_role,
                            .hash_seed = hash_seed,
                            .pool_dns = pool_dns,
                            .auth_secret = secret,
                            .auth_key = skey,
                            .auth_none = auth_none,
                            .listen = listen,
                            .host_dir = host_dir};
    int idx = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, containers)
    {
        if (status != KVSC_OK) {
            break;
        }
        status = patch_container(patch, warnings, c, idx++, &plan);
    }
    if (status == KVSC_OK) {
        status = add_op(patch, "add", auth_path, cJSON_CreateString(auth_mode));
    }
    if (status == KVSC_OK) {
        /* Last, so a pod is only marked once everything else is in the same patch. */
        status = add_op(patch, "add", annot_path, cJSON_CreateString(cfg->version));
    }
    if (status != KVSC_OK) {
        goto out_free;
    }
    *patch_p = patch;
    patch = NULL;
    goto out_free;

out_no_patch:
    if (status == KVSC_OK) {
        *patch_p = NULL;
    }
out_free:
    cJSON_Delete(patch);
    cJSON_free(annot_path);
    cJSON_free(annot_key);
    cJSON_free(auth_mode);
    cJSON_free(auth_path);
    cJSON_free(auth_key);
    cJSON_free(listen);
    cJSON_free(pool_dns);
    return status;
}
