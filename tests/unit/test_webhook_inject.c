/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for kvsc_inject_patch(): which pods, which operations, escaping, idempotence. */
#include "test_controller_util.h"

static cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* Run the injector on the pod inside fixture-derived review; returns patch (may be NULL). */
static cJSON *inject(const cJSON *pod, const char *ns, cJSON **warnings_p)
{
    cJSON *warnings = cJSON_CreateArray();
    cJSON *patch = (cJSON *)1;
    cr_assert_eq(kvsc_inject_patch(kvsc_t_cfg(), pod, ns, &patch, warnings), KVSC_OK);
    cr_assert_neq(patch, (cJSON *)1, "patch_p is always written on success");
    if (warnings_p != NULL) {
        *warnings_p = warnings;
    } else {
        cJSON_Delete(warnings);
    }
    return patch;
}

static const cJSON *value_of(const cJSON *patch, const char *op, const char *path)
{
    const cJSON *o = kvsc_t_find(patch, op, path);
    cr_assert_not_null(o, "patch has %s %s", op, path);
    return get(o, "value");
}

/* The env entries the patch appends to container idx, in order, as a new array. */
static cJSON *appended_env(const cJSON *patch, int idx)
{
    char path[64];
    snprintf(path, sizeof(path), "/spec/containers/%d/env/-", idx);
    cJSON *env = cJSON_CreateArray();
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        if (strcmp(get(it, "path")->valuestring, path) == 0) {
            cJSON_AddItemToArray(env, cJSON_Duplicate(get(it, "value"), 1));
        }
    }
    return env;
}

static const cJSON *env_named(const cJSON *env, const char *name)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, env)
    {
        if (strcmp(get(it, "name")->valuestring, name) == 0) {
            return it;
        }
    }
    return NULL;
}

static int index_of(const cJSON *env, const char *name)
{
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, env)
    {
        if (strcmp(get(it, "name")->valuestring, name) == 0) {
            return i;
        }
        i++;
    }
    return -1;
}

Test(inject, json_pointer_escaping_is_rfc6901)
{
    static const char *const in[] = {"kvshare.io/injected", "a~b", "a/b~c", "~1", "/~", "plain"};
    static const char *const want[] = {
        "kvshare.io~1injected", "a~0b", "a~1b~0c", "~01", "~1~0", "plain"};
    for (size_t i = 0; i < 6; i++) {
        char *e = kvsc_json_pointer_escape(in[i]);
        cr_assert_str_eq(e, want[i], "escape(%s)", in[i]);
        cJSON_free(e);
    }
}

Test(inject, full_patch_for_the_captured_pod)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *pod = kvsc_t_pod(review);
    cJSON *patch = inject(pod, "default", NULL);
    cr_assert_not_null(patch);

    /* The pod has annotations and volumes but no initContainers: only that is created. */
    cr_assert_null(kvsc_t_find(patch, "add", "/metadata/annotations"));
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/volumes"));
    cr_assert(cJSON_IsArray(value_of(patch, "add", "/spec/initContainers")));
    cr_assert_eq(cJSON_GetArraySize(value_of(patch, "add", "/spec/initContainers")), 0);
    const cJSON *init = value_of(patch, "add", "/spec/initContainers/-");
    cr_assert_str_eq(get(init, "image")->valuestring, kvsc_t_cfg()->image);
    cr_assert_str_eq(get(init, "name")->valuestring, KVSC_INIT_NAME);
    const cJSON *vol = value_of(patch, "add", "/spec/volumes/-");
    cr_assert_str_eq(get(vol, "name")->valuestring, KVSC_VOLUME_LIB);
    cr_assert(cJSON_IsObject(get(vol, "emptyDir")));
    const cJSON *mark = value_of(patch, "add", "/metadata/annotations/kvshare.io~1injected");
    cr_assert_str_eq(mark->valuestring, kvsc_t_cfg()->version);

    /* Both containers: mounts appended, env created (neither had env... except nginx). */
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/0/volumeMounts"));
    const cJSON *m = value_of(patch, "add", "/spec/containers/1/volumeMounts/-");
    cr_assert_str_eq(get(m, "mountPath")->valuestring, KVSC_MOUNT_LIB);
    cr_assert(cJSON_IsArray(value_of(patch, "add", "/spec/containers/0/env")));
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/1/env"));

    cJSON *env0 = appended_env(patch, 0);
    cr_assert_str_eq(get(env_named(env0, "LD_PRELOAD"), "value")->valuestring, KVSC_SHIM_PATH);
    cr_assert_str_eq(get(env_named(env0, "KVSHARE_ROLE"), "value")->valuestring, "decode");
    cr_assert_str_eq(get(env_named(env0, "KVSHARE_POOL"), "value")->valuestring,
                     "llama-cache.default.svc");
    cr_assert_str_eq(get(env_named(env0, "KVSHARE_LISTEN"), "value")->valuestring,
                     "$(KVSHARE_POD_IP):18515");
    const cJSON *ip = env_named(env0, "KVSHARE_POD_IP");
    cr_assert_str_eq(get(get(get(ip, "valueFrom"), "fieldRef"), "fieldPath")->valuestring,
                     "status.podIP");
    const cJSON *name = env_named(env0, "KVSHARE_POD_NAME");
    cr_assert_str_eq(get(get(get(name, "valueFrom"), "fieldRef"), "fieldPath")->valuestring,
                     "metadata.name");
    /* $(VAR) only expands variables defined earlier in the list. */
    cr_assert_lt(index_of(env0, "KVSHARE_POD_IP"), index_of(env0, "KVSHARE_LISTEN"));
    /* The fixture names pool "llama", whose authSecretRef (in the fake record) is
     * llama-token/token. */
    cr_assert_str_eq(get(env_named(env0, "KVSHARE_AUTH_TOKEN_FILE"), "value")->valuestring,
                     KVSC_MOUNT_AUTH "/token");
    cr_assert_null(env_named(env0, "KVSHARE_AUTH"));

    /* nginx already had LD_PRELOAD: appended to with ':', guarded by a test op. */
    cJSON *env1 = appended_env(patch, 1);
    cr_assert_null(env_named(env1, "LD_PRELOAD"));
    cr_assert_str_eq(value_of(patch, "test", "/spec/containers/1/env/0/name")->valuestring,
                     "LD_PRELOAD");
    cr_assert_str_eq(value_of(patch, "add", "/spec/containers/1/env/0/value")->valuestring,
                     "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2:" KVSC_SHIM_PATH);
    cJSON_Delete(env0);
    cJSON_Delete(env1);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, absent_maps_and_arrays_are_created_first)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *pod = kvsc_t_pod(review);
    cJSON *meta = get(pod, "metadata");
    cJSON_DeleteItemFromObjectCaseSensitive(meta, "annotations");
    cJSON_DeleteItemFromObjectCaseSensitive(get(pod, "spec"), "volumes");
    cJSON_DeleteItemFromObjectCaseSensitive(
        cJSON_GetArrayItem(get(get(pod, "spec"), "containers"), 0), "volumeMounts");
    cJSON *patch = inject(pod, "default", NULL);
    const char *pairs[][2] = {
        {"/metadata/annotations", "/metadata/annotations/kvshare.io~1injected"},
        {"/spec/volumes", "/spec/volumes/-"},
        {"/spec/initContainers", "/spec/initContainers/-"},
        {"/spec/containers/0/volumeMounts", "/spec/containers/0/volumeMounts/-"},
        {"/spec/containers/0/env", "/spec/containers/0/env/-"},
    };
    for (size_t i = 0; i < 5; i++) {
        int create = -1, use = -1, k = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, patch)
        {
            const char *p = get(it, "path")->valuestring;
            if (create < 0 && strcmp(p, pairs[i][0]) == 0) {
                create = k;
            }
            if (use < 0 && strcmp(p, pairs[i][1]) == 0) {
                use = k;
            }
            k++;
        }
        cr_assert_geq(create, 0, "%s is created", pairs[i][0]);
        cr_assert_lt(create, use, "%s is created before %s", pairs[i][0], pairs[i][1]);
    }
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, existing_env_wins_and_is_not_duplicated)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *c0 = cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), 0);
    cJSON *env = cJSON_AddArrayToObject(c0, "env");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", "KVSHARE_ROLE");
    cJSON_AddStringToObject(e, "value", "prefill");
    cJSON_AddItemToArray(env, e);
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    cJSON *added = appended_env(patch, 0);
    cr_assert_null(env_named(added, "KVSHARE_ROLE"));
    cr_assert_not_null(env_named(added, "KVSHARE_POOL"));
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/0/env"), "env is not recreated");
    cJSON_Delete(added);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, ld_preload_from_valuefrom_is_left_alone_with_a_warning)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *c1 = cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), 1);
    cJSON *pre = cJSON_GetArrayItem(get(c1, "env"), 0);
    cJSON_DeleteItemFromObjectCaseSensitive(pre, "value");
    cJSON *from = cJSON_AddObjectToObject(pre, "valueFrom");
    cJSON *ref = cJSON_AddObjectToObject(from, "configMapKeyRef");
    cJSON_AddStringToObject(ref, "name", "preload");
    cJSON_AddStringToObject(ref, "key", "LD_PRELOAD");
    cJSON *warnings;
    cJSON *patch = inject(kvsc_t_pod(review), "default", &warnings);
    cr_assert_not_null(patch);
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/1/env/0/value"));
    cJSON *added = appended_env(patch, 1);
    cr_assert_null(env_named(added, "LD_PRELOAD"), "no second LD_PRELOAD");
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "valueFrom"));
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "nginx"));
    cJSON_Delete(added);
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, ld_preload_already_holding_the_shim_is_untouched)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *c1 = cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), 1);
    cJSON *pre = cJSON_GetArrayItem(get(c1, "env"), 0);
    cJSON_ReplaceItemInObjectCaseSensitive(pre, "value",
                                           cJSON_CreateString("/a.so " KVSC_SHIM_PATH));
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/1/env/0/value"));
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, invalid_role_is_a_warning_not_a_patch)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *labels = get(get(kvsc_t_pod(review), "metadata"), "labels");
    cJSON_ReplaceItemInObjectCaseSensitive(labels, "kvshare.io/role", cJSON_CreateString("router"));
    cJSON *warnings;
    cJSON *patch = inject(kvsc_t_pod(review), "default", &warnings);
    cr_assert_null(patch);
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "\"router\""));

    /* Through kvsc_review: allowed, no patch, the warning in the response. */
    kvsc_review_out_t out;
    cJSON *resp = kvsc_t_review(review, &out);
    cr_assert_eq(out.result, KVSC_RESULT_NO_PATCH);
    const cJSON *r = get(resp, "response");
    cr_assert(cJSON_IsTrue(get(r, "allowed")));
    cr_assert_null(get(r, "patch"));
    cr_assert_not_null(strstr(cJSON_GetArrayItem(get(r, "warnings"), 0)->valuestring, "router"));
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
    cJSON_Delete(warnings);
    cJSON_Delete(review);
}

Test(inject, role_defaults_to_both)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON_DeleteItemFromObjectCaseSensitive(get(get(kvsc_t_pod(review), "metadata"), "labels"),
                                            "kvshare.io/role");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    cJSON *env = appended_env(patch, 0);
    cr_assert_str_eq(get(env_named(env, "KVSHARE_ROLE"), "value")->valuestring, "both");
    cJSON_Delete(env);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, bad_pool_or_secret_names_are_warnings)
{
    const char *cases[][2] = {
        {"kvshare.io/pool", "Bad_Pool"},
        {"kvshare.io/pool", "pool-name-of-fifty-eight-characters-is-one-too-many-for-it"},
        /* A pool's name is a Service's prefix: the reconciler refuses one starting with a
         * digit, so the webhook does too (it once took it, naming a pool that cannot exist). */
        {"kvshare.io/pool", "1pool"},
        {"kvshare.io/auth-secret", "no/slash"},
        {"kvshare.io/auth-secret", "a..b"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *review = kvsc_t_load("pod-optin.json");
        cJSON *annots = get(get(kvsc_t_pod(review), "metadata"), "annotations");
        cJSON_DeleteItemFromObjectCaseSensitive(annots, cases[i][0]);
        cJSON_AddStringToObject(annots, cases[i][0], cases[i][1]);
        cJSON *warnings;
        cJSON *patch = inject(kvsc_t_pod(review), "default", &warnings);
        cr_assert_null(patch, "%s=%s is refused", cases[i][0], cases[i][1]);
        cr_assert_eq(cJSON_GetArraySize(warnings), 1);
        cJSON_Delete(warnings);
        cJSON_Delete(review);
    }
}

Test(inject, auth_secret_is_mounted_and_pointed_at)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON_AddStringToObject(get(get(kvsc_t_pod(review), "metadata"), "annotations"),
                            "kvshare.io/auth-secret", "llama-token");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    int found = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        const cJSON *v = get(it, "value");
        if (strcmp(get(it, "path")->valuestring, "/spec/volumes/-") == 0 &&
            get(v, "secret") != NULL) {
            cr_assert_str_eq(get(get(v, "secret"), "secretName")->valuestring, "llama-token");
            found = 1;
        }
    }
    cr_assert(found, "the secret volume is added");
    for (int c = 0; c < 2; c++) {
        cJSON *env = appended_env(patch, c);
        cr_assert_str_eq(get(env_named(env, "KVSHARE_AUTH_TOKEN_FILE"), "value")->valuestring,
                         KVSC_MOUNT_AUTH "/" KVSC_AUTH_TOKEN_KEY);
        cJSON_Delete(env);
    }
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, namespace_falls_back_to_object_metadata)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *meta = get(kvsc_t_pod(review), "metadata");
    cJSON_ReplaceItemInObjectCaseSensitive(meta, "namespace", cJSON_CreateString("team-a"));
    cJSON *patch = inject(kvsc_t_pod(review), NULL, NULL);
    cJSON *env = appended_env(patch, 0);
    cr_assert_str_eq(get(env_named(env, "KVSHARE_POOL"), "value")->valuestring,
                     "llama-cache.team-a.svc");
    cJSON_Delete(env);
    cJSON_Delete(patch);
    /* request.namespace wins over the object's. */
    patch = inject(kvsc_t_pod(review), "team-b", NULL);
    env = appended_env(patch, 0);
    cr_assert_str_eq(get(env_named(env, "KVSHARE_POOL"), "value")->valuestring,
                     "llama-cache.team-b.svc");
    cJSON_Delete(env);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, marked_or_already_injected_pods_get_no_patch)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *pod = kvsc_t_pod(review);
    cJSON_AddStringToObject(get(get(pod, "metadata"), "annotations"), KVSC_ANNOT_INJECTED, "0.0.1");
    cr_assert_null(inject(pod, "default", NULL));
    cJSON_Delete(review);

    review = kvsc_t_load("pod-optin.json");
    pod = kvsc_t_pod(review);
    cJSON *inits = cJSON_AddArrayToObject(get(pod, "spec"), "initContainers");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "name", KVSC_INIT_NAME);
    cJSON_AddItemToArray(inits, c);
    cr_assert_null(inject(pod, "default", NULL));
    cJSON_Delete(review);
}

Test(inject, malformed_specs_are_left_alone)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *spec = get(kvsc_t_pod(review), "spec");
    cJSON_ReplaceItemInObjectCaseSensitive(spec, "volumes", cJSON_CreateString("x"));
    cJSON *warnings;
    cr_assert_null(inject(kvsc_t_pod(review), "default", &warnings));
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    cJSON_Delete(warnings);
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "containers");
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "volumes");
    cr_assert_null(inject(kvsc_t_pod(review), "default", NULL));
    cJSON_Delete(review);
}

/* The secret volume the patch adds, or NULL. */
static const cJSON *secret_volume(const cJSON *patch)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        const cJSON *v = get(it, "value");
        if (strcmp(get(it, "path")->valuestring, "/spec/volumes/-") == 0 &&
            get(v, "secret") != NULL) {
            return v;
        }
    }
    return NULL;
}

/* Inject the captured pod with its kvshare.io/pool set to pool (and optionally an
 * kvshare.io/auth-secret) in namespace ns, with cfg. */
static cJSON *inject_pool(const kvsc_inject_cfg_t *cfg, const char *pool, const char *secret,
                          const char *ns, cJSON **warnings_p)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *annots = get(get(kvsc_t_pod(review), "metadata"), "annotations");
    cJSON_ReplaceItemInObjectCaseSensitive(annots, "kvshare.io/pool", cJSON_CreateString(pool));
    if (secret != NULL) {
        cJSON_AddStringToObject(annots, "kvshare.io/auth-secret", secret);
    }
    cJSON *warnings = cJSON_CreateArray();
    cJSON *patch = NULL;
    cr_assert_eq(kvsc_inject_patch(cfg, kvsc_t_pod(review), ns, &patch, warnings), KVSC_OK);
    cr_assert_not_null(patch, "pool %s: injected", pool);
    *warnings_p = warnings;
    cJSON_Delete(review);
    return patch;
}

static const char *auth_annotation(const cJSON *patch)
{
    return value_of(patch, "add", "/metadata/annotations/kvshare.io~1injected-auth")->valuestring;
}

Test(inject, pool_secret_ref_is_mounted_with_its_key)
{
    cJSON *warnings;
    cJSON *patch = inject_pool(kvsc_t_cfg(), "keyed", NULL, "ml", &warnings);
    const cJSON *vol = secret_volume(patch);
    cr_assert_not_null(vol, "the pool's Secret is mounted");
    cr_assert_str_eq(get(vol, "name")->valuestring, KVSC_VOLUME_AUTH);
    cr_assert_str_eq(get(get(vol, "secret"), "secretName")->valuestring, "keyed-auth");
    cr_assert_eq(get(get(vol, "secret"), "defaultMode")->valueint, 0440);
    for (int c = 0; c < 2; c++) {
        cJSON *env = appended_env(patch, c);
        cr_assert_str_eq(get(env_named(env, "KVSHARE_AUTH_TOKEN_FILE"), "value")->valuestring,
                         KVSC_MOUNT_AUTH "/kv.token");
        cr_assert_null(env_named(env, "KVSHARE_AUTH"), "never open with a token");
        cJSON_Delete(env);
        char path[64];
        snprintf(path, sizeof(path), "/spec/containers/%d/volumeMounts/-", c);
        int mounted = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, patch)
        {
            const cJSON *v = get(it, "value");
            if (strcmp(get(it, "path")->valuestring, path) == 0 &&
                strcmp(get(v, "name")->valuestring, KVSC_VOLUME_AUTH) == 0) {
                cr_assert_str_eq(get(v, "mountPath")->valuestring, KVSC_MOUNT_AUTH);
                cr_assert(cJSON_IsTrue(get(v, "readOnly")));
                mounted = 1;
            }
        }
        cr_assert(mounted, "container %d mounts the Secret", c);
    }
    cr_assert_str_eq(auth_annotation(patch), "secret:keyed-auth/kv.token");
    cr_assert_eq(cJSON_GetArraySize(warnings), 0);
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
}

Test(inject, open_pool_gets_auth_none_and_a_warning)
{
    cJSON *warnings;
    cJSON *patch = inject_pool(kvsc_t_cfg(), "open", NULL, "default", &warnings);
    cr_assert_null(secret_volume(patch));
    for (int c = 0; c < 2; c++) {
        cJSON *env = appended_env(patch, c);
        cr_assert_str_eq(get(env_named(env, "KVSHARE_AUTH"), "value")->valuestring, "none");
        cr_assert_null(env_named(env, "KVSHARE_AUTH_TOKEN_FILE"));
        cJSON_Delete(env);
    }
    cr_assert_str_eq(auth_annotation(patch), "none");
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    const char *w = cJSON_GetArrayItem(warnings, 0)->valuestring;
    cr_assert(strstr(w, "open") != NULL && strstr(w, "KVSHARE_AUTH=none") != NULL, "%s", w);
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
}

Test(inject, unknown_pool_gets_no_token_a_missing_mark_and_a_warning)
{
    /* "llama" is known in "default" only: in "team-b" it is another pool. And a webhook
     * with no reconciler (no lookup) knows no pool at all. */
    const kvsc_inject_cfg_t bare = {.image = "i", .version = "v", .listen_port = 1};
    const struct {
        const kvsc_inject_cfg_t *cfg;
        const char *pool, *ns;
    } cases[] = {{kvsc_t_cfg(), "nosuch", "default"},
                 {kvsc_t_cfg(), "llama", "team-b"},
                 {&bare, "llama", "default"}};
    for (size_t i = 0; i < 3; i++) {
        cJSON *warnings;
        cJSON *patch = inject_pool(cases[i].cfg, cases[i].pool, NULL, cases[i].ns, &warnings);
        cr_assert_null(secret_volume(patch), "case %zu: no Secret", i);
        for (int c = 0; c < 2; c++) {
            cJSON *env = appended_env(patch, c);
            cr_assert_null(env_named(env, "KVSHARE_AUTH_TOKEN_FILE"), "case %zu", i);
            cr_assert_null(env_named(env, "KVSHARE_AUTH"), "case %zu: never silently open", i);
            cJSON_Delete(env);
        }
        cr_assert_str_eq(auth_annotation(patch), "missing");
        cr_assert_eq(cJSON_GetArraySize(warnings), 1, "case %zu", i);
        const char *w = cJSON_GetArrayItem(warnings, 0)->valuestring;
        cr_assert(strstr(w, cases[i].pool) != NULL && strstr(w, "not known") != NULL &&
                      strstr(w, "refuse to start") != NULL,
                  "%s", w);
        cJSON_Delete(warnings);
        cJSON_Delete(patch);
    }
}

Test(inject, auth_secret_annotation_wins_over_the_pool_and_warns_when_they_differ)
{
    cJSON *warnings;
    cJSON *patch = inject_pool(kvsc_t_cfg(), "llama", "other-token", "default", &warnings);
    cr_assert_str_eq(get(get(secret_volume(patch), "secret"), "secretName")->valuestring,
                     "other-token");
    cr_assert_str_eq(auth_annotation(patch), "secret:other-token/token");
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "differs"));
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
    /* The same Secret as the pool's: no warning. */
    patch = inject_pool(kvsc_t_cfg(), "llama", "llama-token", "default", &warnings);
    cr_assert_eq(cJSON_GetArraySize(warnings), 0);
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
}

/* ---- the vLLM plugin's env: PYTHONPATH, PYTHONHASHSEED, KVSHARE_VLLM_ROLE ---------------- */

/* The captured pod's container idx env, with entry {name: value} put first (created). */
static void put_env(cJSON *review, int idx, const char *name, const char *value)
{
    cJSON *c = cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), idx);
    cJSON *env = get(c, "env");
    if (env == NULL) {
        env = cJSON_AddArrayToObject(c, "env");
    }
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", name);
    if (value != NULL) {
        cJSON_AddStringToObject(e, "value", value);
    }
    cJSON_InsertItemInArray(env, 0, e);
}

static const char *appended_value(const cJSON *patch, int idx, const char *name)
{
    cJSON *env = appended_env(patch, idx);
    const cJSON *e = env_named(env, name);
    static char buf[256];
    if (e == NULL) {
        cJSON_Delete(env);
        return NULL;
    }
    snprintf(buf, sizeof(buf), "%s", get(e, "value")->valuestring);
    cJSON_Delete(env);
    return buf;
}

Test(inject, vllm_plugin_env_for_the_captured_pod)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    for (int c = 0; c < 2; c++) {
        cr_assert_str_eq(appended_value(patch, c, "PYTHONPATH"), KVSC_PYTHON_PATH);
        /* The fixture's role is decode. */
        cr_assert_str_eq(appended_value(patch, c, "KVSHARE_VLLM_ROLE"), "kv_consumer");
        cr_assert_str_eq(appended_value(patch, c, "PYTHONHASHSEED"), KVSC_DEFAULT_HASH_SEED);
    }
    /* The init container copies the image's whole dist (lib/ and python/) into the volume. */
    const cJSON *init = value_of(patch, "add", "/spec/initContainers/-");
    const cJSON *cmd = get(init, "command");
    cr_assert_str_eq(cJSON_GetArrayItem(cmd, 2)->valuestring, "/usr/lib/kvshare/dist/.");
    cr_assert_str_eq(cJSON_GetArrayItem(cmd, 3)->valuestring, KVSC_MOUNT_LIB "/");
    cr_assert_str_eq(KVSC_PYTHON_PATH, "/opt/kvshare/python");
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, vllm_role_follows_kvshare_role)
{
    const char *roles[][2] = {{"prefill", "kv_producer"},
                              {"decode", "kv_consumer"},
                              {"both", "kv_both"},
                              {NULL, "kv_both"}};
    for (size_t i = 0; i < 4; i++) {
        cJSON *review = kvsc_t_load("pod-optin.json");
        cJSON *labels = get(get(kvsc_t_pod(review), "metadata"), "labels");
        cJSON_DeleteItemFromObjectCaseSensitive(labels, "kvshare.io/role");
        if (roles[i][0] != NULL) {
            cJSON_AddStringToObject(labels, "kvshare.io/role", roles[i][0]);
        }
        cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
        cr_assert_str_eq(appended_value(patch, 0, "KVSHARE_VLLM_ROLE"), roles[i][1], "role %s",
                         roles[i][0] != NULL ? roles[i][0] : "(none)");
        cJSON_Delete(patch);
        cJSON_Delete(review);
    }
}

Test(inject, pythonpath_is_prepended_and_kept)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    put_env(review, 0, "PYTHONPATH", "/app:/lib/py");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    cr_assert_null(appended_value(patch, 0, "PYTHONPATH"), "no second PYTHONPATH");
    cr_assert_str_eq(value_of(patch, "test", "/spec/containers/0/env/0/name")->valuestring,
                     "PYTHONPATH");
    cr_assert_str_eq(value_of(patch, "add", "/spec/containers/0/env/0/value")->valuestring,
                     KVSC_PYTHON_PATH ":/app:/lib/py");
    cJSON_Delete(patch);
    cJSON_Delete(review);

    /* Empty, or already holding our entry. */
    review = kvsc_t_load("pod-optin.json");
    put_env(review, 0, "PYTHONPATH", "");
    put_env(review, 1, "PYTHONPATH", "/x:" KVSC_PYTHON_PATH);
    patch = inject(kvsc_t_pod(review), "default", NULL);
    cr_assert_str_eq(value_of(patch, "add", "/spec/containers/0/env/0/value")->valuestring,
                     KVSC_PYTHON_PATH);
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/1/env/0/value"));
    cr_assert_null(appended_value(patch, 1, "PYTHONPATH"));
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, pythonpath_from_valuefrom_is_left_alone_with_a_warning)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    put_env(review, 0, "PYTHONPATH", NULL);
    cJSON *pre = cJSON_GetArrayItem(
        get(cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), 0), "env"), 0);
    cJSON *ref =
        cJSON_AddObjectToObject(cJSON_AddObjectToObject(pre, "valueFrom"), "configMapKeyRef");
    cJSON_AddStringToObject(ref, "name", "py");
    cJSON_AddStringToObject(ref, "key", "path");
    cJSON *warnings;
    cJSON *patch = inject(kvsc_t_pod(review), "default", &warnings);
    cr_assert_not_null(patch);
    cr_assert_null(kvsc_t_find(patch, "add", "/spec/containers/0/env/0/value"));
    cr_assert_null(appended_value(patch, 0, "PYTHONPATH"));
    cr_assert_eq(cJSON_GetArraySize(warnings), 1);
    const char *w = cJSON_GetArrayItem(warnings, 0)->valuestring;
    cr_assert(strstr(w, "PYTHONPATH") != NULL && strstr(w, "valueFrom") != NULL &&
                  strstr(w, "vLLM plugin") != NULL,
              "%s", w);
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, envfrom_warns_for_each_list_it_may_set)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *c0 = cJSON_GetArrayItem(get(get(kvsc_t_pod(review), "spec"), "containers"), 0);
    cJSON *from = cJSON_AddArrayToObject(c0, "envFrom");
    cJSON *cm = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(cm, "configMapRef"), "name", "env");
    cJSON_AddItemToArray(from, cm);
    cJSON *warnings;
    cJSON *patch = inject(kvsc_t_pod(review), "default", &warnings);
    cr_assert_eq(cJSON_GetArraySize(warnings), 2);
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "LD_PRELOAD"));
    cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 1)->valuestring, "PYTHONPATH"));
    cJSON_Delete(warnings);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

Test(inject, python_hash_seed_from_annotation_or_left_to_the_user)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON_AddStringToObject(get(get(kvsc_t_pod(review), "metadata"), "annotations"),
                            KVSC_ANNOT_HASH_SEED, "4294967295");
    put_env(review, 1, "PYTHONHASHSEED", "7");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    cr_assert_str_eq(appended_value(patch, 0, "PYTHONHASHSEED"), "4294967295");
    cr_assert_null(appended_value(patch, 1, "PYTHONHASHSEED"), "the user's value wins");
    cJSON_Delete(patch);
    cJSON_Delete(review);

    const char *bad[] = {"random", "", "-1", "4294967296", "12345678901", "0x10", " 1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        review = kvsc_t_load("pod-optin.json");
        cJSON_AddStringToObject(get(get(kvsc_t_pod(review), "metadata"), "annotations"),
                                KVSC_ANNOT_HASH_SEED, bad[i]);
        cJSON *warnings;
        cr_assert_null(inject(kvsc_t_pod(review), "default", &warnings), "seed \"%s\"", bad[i]);
        cr_assert_eq(cJSON_GetArraySize(warnings), 1);
        cr_assert_not_null(
            strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "python-hash-seed"));
        cJSON_Delete(warnings);
        cJSON_Delete(review);
    }
}

/* Every env name the patch gives a container, whether appended, in a created array, or
 * rewritten in place. */
static void check_no_vllm_names(const cJSON *patch)
{
    const cJSON *op;
    cJSON_ArrayForEach(op, patch)
    {
        const char *path = get(op, "path")->valuestring;
        const cJSON *v = get(op, "value");
        if (strstr(path, "/env") == NULL) {
            continue;
        }
        const cJSON *e;
        if (cJSON_IsArray(v)) {
            cJSON_ArrayForEach(e, v)
            {
                cr_assert_neq(strncmp(get(e, "name")->valuestring, "VLLM_", 5), 0);
            }
        } else if (cJSON_IsObject(v)) {
            cr_assert_neq(strncmp(get(v, "name")->valuestring, "VLLM_", 5), 0, "%s",
                          get(v, "name")->valuestring);
        } else if (strcmp(get(op, "op")->valuestring, "test") == 0) {
            cr_assert_neq(strncmp(v->valuestring, "VLLM_", 5), 0);
        }
    }
}

Test(inject, no_injected_env_name_starts_with_vllm)
{
    const char *pools[] = {"llama", "open", "nosuch"};
    for (size_t i = 0; i < 3; i++) {
        cJSON *warnings;
        cJSON *patch = inject_pool(kvsc_t_cfg(), pools[i], NULL, "default", &warnings);
        check_no_vllm_names(patch);
        cJSON_Delete(warnings);
        cJSON_Delete(patch);
    }
    cJSON *review = kvsc_t_load("pod-optin.json");
    put_env(review, 0, "PYTHONPATH", "/a");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    check_no_vllm_names(patch);
    cJSON_Delete(patch);
    cJSON_Delete(review);
}

/* A small RFC 6902 applier for the ops the injector emits: "add" (object member, or "-" to
 * append) and "test" on a string. Returns 0 on success. */
static int apply_op(cJSON *doc, const cJSON *op)
{
    char path[256];
    snprintf(path, sizeof(path), "%s", get(op, "path")->valuestring);
    cJSON *node = doc;
    char *save = NULL;
    char *tok = strtok_r(path + 1, "/", &save);
    while (tok != NULL) {
        char key[128];
        size_t k = 0;
        for (const char *p = tok; *p != '\0' && k + 1 < sizeof(key); p++) {
            if (p[0] == '~' && p[1] == '1') {
                key[k++] = '/';
                p++;
            } else if (p[0] == '~' && p[1] == '0') {
                key[k++] = '~';
                p++;
            } else {
                key[k++] = *p;
            }
        }
        key[k] = '\0';
        char *next = strtok_r(NULL, "/", &save);
        const cJSON *v = get(op, "value");
        if (next == NULL) {
            if (strcmp(get(op, "op")->valuestring, "test") == 0) {
                const cJSON *cur =
                    cJSON_IsArray(node) ? cJSON_GetArrayItem(node, atoi(key)) : get(node, key);
                return cur != NULL && cJSON_Compare(cur, v, 1) ? 0 : -1;
            }
            cJSON *copy = cJSON_Duplicate(v, 1);
            if (cJSON_IsArray(node) && strcmp(key, "-") == 0) {
                cJSON_AddItemToArray(node, copy);
            } else if (cJSON_IsObject(node)) {
                cJSON_DeleteItemFromObjectCaseSensitive(node, key);
                cJSON_AddItemToObject(node, key, copy);
            } else {
                cJSON_Delete(copy);
                return -1;
            }
            return 0;
        }
        node = cJSON_IsArray(node) ? cJSON_GetArrayItem(node, atoi(key)) : get(node, key);
        if (node == NULL) {
            return -1;
        }
        tok = next;
    }
    return -1;
}

static void apply_patch(cJSON *pod, const cJSON *patch)
{
    const cJSON *op;
    cJSON_ArrayForEach(op, patch)
    {
        cr_assert_eq(apply_op(pod, op), 0, "op %s %s applies", get(op, "op")->valuestring,
                     get(op, "path")->valuestring);
    }
}

Test(inject, reinvocation_on_the_patched_pod_is_an_empty_patch)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    put_env(review, 0, "PYTHONPATH", "/app");
    cJSON *pod = kvsc_t_pod(review);
    cJSON *patch = inject(pod, "default", NULL);
    apply_patch(pod, patch);
    cJSON_Delete(patch);
    /* What the pod now holds. */
    cJSON *env0 = get(cJSON_GetArrayItem(get(get(pod, "spec"), "containers"), 0), "env");
    cr_assert_str_eq(get(env_named(env0, "PYTHONPATH"), "value")->valuestring,
                     KVSC_PYTHON_PATH ":/app");
    cr_assert_str_eq(get(env_named(env0, "KVSHARE_VLLM_ROLE"), "value")->valuestring,
                     "kv_consumer");
    cr_assert_not_null(env_named(env0, "PYTHONHASHSEED"));
    /* Reinvoked (reinvocationPolicy: IfNeeded): nothing more. */
    cr_assert_null(inject(pod, "default", NULL));
    /* Even without the mark, the init container keeps it untouched. */
    cJSON_DeleteItemFromObjectCaseSensitive(get(get(pod, "metadata"), "annotations"),
                                            KVSC_ANNOT_INJECTED);
    cr_assert_null(inject(pod, "default", NULL));
    /* Through kvsc_review: allowed, no patch. */
    kvsc_review_out_t out;
    cJSON *resp = kvsc_t_review(review, &out);
    cr_assert_eq(out.result, KVSC_RESULT_NO_PATCH);
    cr_assert_null(kvsc_t_patch(resp));
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
    cJSON_Delete(review);
}

/* kvshare.io/host-socket-dir: the node directory as a hostPath volume, mounted in every
 * container, and KVSHARE_HOST_SOCKET_DIR pointing at the mount; without it, none of that. */
Test(inject, host_socket_dir_is_opt_in_and_mounted)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *patch = inject(kvsc_t_pod(review), "default", NULL);
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        const cJSON *v = get(it, "value");
        cr_assert(v == NULL || !cJSON_IsObject(v) || get(v, "hostPath") == NULL,
                  "no hostPath unless asked");
    }
    cJSON *env = appended_env(patch, 0);
    cr_assert_null(env_named(env, "KVSHARE_HOST_SOCKET_DIR"));
    cJSON_Delete(env);
    cJSON_Delete(patch);

    cJSON_AddStringToObject(get(get(kvsc_t_pod(review), "metadata"), "annotations"),
                            KVSC_ANNOT_HOST_SOCKET, "/var/run/kvshare");
    patch = inject(kvsc_t_pod(review), "default", NULL);
    int volumes = 0, mounts = 0;
    cJSON_ArrayForEach(it, patch)
    {
        const cJSON *v = get(it, "value");
        const char *path = get(it, "path")->valuestring;
        if (strcmp(path, "/spec/volumes/-") == 0 && get(v, "hostPath") != NULL) {
            cr_assert_str_eq(get(v, "name")->valuestring, KVSC_VOLUME_HOST);
            cr_assert_str_eq(get(get(v, "hostPath"), "path")->valuestring, "/var/run/kvshare");
            cr_assert_str_eq(get(get(v, "hostPath"), "type")->valuestring, "DirectoryOrCreate");
            volumes++;
        }
        if (strstr(path, "/volumeMounts/-") != NULL && cJSON_IsObject(v) &&
            strcmp(get(v, "name")->valuestring, KVSC_VOLUME_HOST) == 0) {
            cr_assert_str_eq(get(v, "mountPath")->valuestring, KVSC_MOUNT_HOST);
            cr_assert_null(get(v, "readOnly"), "holders create their sockets there");
            mounts++;
        }
    }
    cr_assert_eq(volumes, 1);
    cr_assert_eq(mounts, 2, "both containers mount it");
    for (int c = 0; c < 2; c++) {
        env = appended_env(patch, c);
        cr_assert_str_eq(get(env_named(env, "KVSHARE_HOST_SOCKET_DIR"), "value")->valuestring,
                         KVSC_MOUNT_HOST);
        cJSON_Delete(env);
    }
    cJSON_Delete(patch);

    static const char *const bad[] = {"relative/dir", "/var/../etc", "/var/run/a b", "/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON_ReplaceItemInObjectCaseSensitive(
            get(get(kvsc_t_pod(review), "metadata"), "annotations"), KVSC_ANNOT_HOST_SOCKET,
            cJSON_CreateString(bad[i]));
        cJSON *warnings;
        patch = inject(kvsc_t_pod(review), "default", &warnings);
        cr_assert_null(patch, "'%s' refused", bad[i]);
        cr_assert_not_null(strstr(cJSON_GetArrayItem(warnings, 0)->valuestring, "host-socket-dir"));
        cJSON_Delete(warnings);
    }
    cJSON_Delete(review);
}
