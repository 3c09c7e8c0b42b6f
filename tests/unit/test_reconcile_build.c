/* SPDX-License-Identifier: Apache-2.0 */
/* The reconciler's pure part: pool validation, desired Deployment/Service, merge patch, drift
 * test, ownership and status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>

#include "controller_int.h"

static const kvsc_rec_cfg_t cfg = {.image = "registry.example/kvshare:1.2.3", .listen_port = 18515};

static cJSON *pool_json(const char *spec)
{
    char buf[2048];
    snprintf(buf, sizeof(buf),
             "{\"apiVersion\":\"kvshare.io/v1alpha1\",\"kind\":\"KVCachePool\","
             "\"metadata\":{\"name\":\"llama\",\"namespace\":\"ml\",\"uid\":\"u-1\","
             "\"generation\":3,\"resourceVersion\":\"7\"},\"spec\":%s}",
             spec);
    cJSON *j = cJSON_Parse(buf);
    cr_assert_not_null(j, "parse %s", spec);
    return j;
}

static kvsc_status_t parse(const char *spec, kvsc_pool_t *p, const char **reason, char *msg)
{
    cJSON *j = pool_json(spec);
    static char strategy[16];
    kvsc_status_t st = kvsc_pool_parse(j, p, reason, msg, 256);
    /* Borrowed strings die with j: keep the one the tests compare, drop the rest. */
    snprintf(strategy, sizeof(strategy), "%s", p->strategy != NULL ? p->strategy : "");
    p->strategy = strategy;
    p->namespace_ = p->name = p->uid = NULL;
    cJSON_Delete(j);
    return st;
}

static const cJSON *at(const cJSON *j, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = j;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok != NULL && cur != NULL;
         tok = strtok_r(NULL, ".", &save)) {
        if (tok[0] >= '0' && tok[0] <= '9') {
            cur = cJSON_GetArrayItem(cur, atoi(tok));
        } else {
            cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
        }
    }
    return cur;
}

static const char *str(const cJSON *j, const char *path)
{
    const cJSON *v = at(j, path);
    cr_assert(cJSON_IsString(v), "%s is a string", path);
    return v->valuestring;
}

static const char *env(const cJSON *deploy, const char *name)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, at(deploy, "spec.template.spec.containers.0.env"))
    {
        if (strcmp(str(e, "name"), name) == 0) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "value");
            return cJSON_IsString(v) ? v->valuestring : "";
        }
    }
    return NULL;
}

Test(pool_parse, defaults_and_values)
{
    kvsc_pool_t p;
    const char *reason = NULL;
    char msg[256];
    cr_assert_eq(parse("{\"totalMemoryGB\":64}", &p, &reason, msg), KVSC_OK);
    cr_assert_eq(p.total_memory_gb, 64);
    cr_assert_eq(p.replicas, 1);
    cr_assert_str_eq(p.strategy, "lru");
    cr_assert_eq(p.generation, 3);
    cr_assert_eq(
        parse("{\"totalMemoryGB\":8,\"replicas\":0,\"strategy\":\"lfu\"}", &p, &reason, msg),
        KVSC_OK);
    cr_assert_eq(p.replicas, 0);
    cr_assert_str_eq(p.strategy, "lfu");
}

Test(pool_parse, invalid_specs_name_the_field)
{
    static const struct {
        const char *spec, *reason, *field;
    } cases[] = {
        {"{\"totalMemoryGB\":64,\"replicas\":-1}", "InvalidReplicas", "spec.replicas"},
        {"{\"totalMemoryGB\":64,\"replicas\":1.5}", "InvalidReplicas", "spec.replicas"},
        {"{\"totalMemoryGB\":64,\"replicas\":\"2\"}", "InvalidReplicas", "spec.replicas"},
        {"{\"totalMemoryGB\":64,\"replicas\":3000000000}", "InvalidReplicas", "spec.replicas"},
        {"{\"totalMemoryGB\":0}", "InvalidTotalMemoryGB", "spec.totalMemoryGB"},
        {"{\"totalMemoryGB\":-5}", "InvalidTotalMemoryGB", "spec.totalMemoryGB"},
        {"{\"replicas\":2}", "InvalidTotalMemoryGB", "spec.totalMemoryGB"},
        {"{\"totalMemoryGB\":1e400}", "InvalidTotalMemoryGB", "spec.totalMemoryGB"},
        {"{\"totalMemoryGB\":64,\"strategy\":\"fifo\"}", "InvalidStrategy", "spec.strategy"},
        {"{\"totalMemoryGB\":64,\"strategy\":\"LRU\"}", "InvalidStrategy", "spec.strategy"},
        {"{\"totalMemoryGB\":64,\"strategy\":1}", "InvalidStrategy", "spec.strategy"},
        {"[]", "InvalidSpec", "spec"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvsc_pool_t p;
        const char *reason = NULL;
        char msg[256] = "";
        cr_assert_eq(parse(cases[i].spec, &p, &reason, msg), KVSC_ERR_INVALID, "%s", cases[i].spec);
        cr_assert_str_eq(reason, cases[i].reason, "%s", cases[i].spec);
        cr_assert(strstr(msg, cases[i].field) != NULL, "%s: message %s", cases[i].spec, msg);
        cr_assert_eq(p.generation, 3, "identity still read");
    }
}

Test(pool_parse, names_that_cannot_name_a_service)
{
    const char *bad[] = {"1abc", "a.b", "Abc",
                         "a234567890123456789012345678901234567890123456789012345678"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON *j = pool_json("{\"totalMemoryGB\":1}");
        cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "metadata"), "name",
                                  cJSON_CreateString(bad[i]));
        kvsc_pool_t p;
        const char *reason;
        char msg[512];
        cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_ERR_INVALID, "%s",
                     bad[i]);
        cr_assert_str_eq(reason, "InvalidName");
        cr_assert(strstr(msg, "metadata.name") != NULL);
        cJSON_Delete(j);
    }
    cJSON *j = pool_json("{\"totalMemoryGB\":1}");
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "metadata"), "uid");
    kvsc_pool_t p;
    const char *reason;
    char msg[512];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_ERR_INVALID);
    cr_assert_str_eq(reason, "InvalidMetadata");
    cJSON_Delete(j);
}

Test(desired, deployment)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":64,\"replicas\":4,\"strategy\":\"lfu\"}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *d = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cr_assert_str_eq(str(d, "apiVersion"), "apps/v1");
    cr_assert_str_eq(str(d, "kind"), "Deployment");
    cr_assert_str_eq(str(d, "metadata.name"), "llama-cache");
    cr_assert_str_eq(str(d, "metadata.namespace"), "ml");
    const cJSON *labels = at(d, "metadata.labels");
    cr_assert_str_eq(cJSON_GetObjectItem(labels, "app.kubernetes.io/name")->valuestring,
                     "kvshare-cache");
    cr_assert_str_eq(cJSON_GetObjectItem(labels, "kvshare.io/pool")->valuestring, "llama");
    const cJSON *ref = at(d, "metadata.ownerReferences.0");
    cr_assert_str_eq(str(ref, "apiVersion"), "kvshare.io/v1alpha1");
    cr_assert_str_eq(str(ref, "kind"), "KVCachePool");
    cr_assert_str_eq(str(ref, "name"), "llama");
    cr_assert_str_eq(str(ref, "uid"), "u-1");
    cr_assert(cJSON_IsTrue(at(ref, "controller")));
    cr_assert(cJSON_IsTrue(at(ref, "blockOwnerDeletion")));
    cr_assert_eq(at(d, "spec.replicas")->valuedouble, 4);
    const cJSON *sel = at(d, "spec.selector.matchLabels");
    cr_assert(kvsc_json_subset(sel, at(d, "spec.template.metadata.labels")),
              "the selector matches the pod template");
    const cJSON *c = at(d, "spec.template.spec.containers.0");
    cr_assert_str_eq(str(c, "image"), "registry.example/kvshare:1.2.3");
    cr_assert_str_eq(str(c, "command.0"), "kvshare");
    cr_assert_str_eq(str(c, "args.0"), "serve");
    cr_assert_str_eq(str(c, "args.1"), "--listen");
    cr_assert_str_eq(str(c, "args.2"), "$(POD_IP):18515");
    cr_assert_str_eq(str(c, "args.3"), "--metrics");
    cr_assert_str_eq(str(c, "args.4"), "0.0.0.0:9090");
    cr_assert_str_eq(str(c, "env.0.name"), "POD_IP", "POD_IP first, for $(POD_IP)");
    cr_assert_str_eq(str(c, "env.0.valueFrom.fieldRef.fieldPath"), "status.podIP");
    cr_assert_str_eq(env(d, "KVSHARE_TOTAL_MEMORY_GB"), "64");
    cr_assert_str_eq(env(d, "KVSHARE_STRATEGY"), "lfu");
    cr_assert_str_eq(env(d, "KVSHARE_REPLICAS"), "4");
    cJSON_Delete(d);
    cJSON_Delete(j);
}

Test(desired, service_is_headless)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":64}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *s = NULL;
    cr_assert_eq(kvsc_desired_service(&cfg, &p, &s), KVSC_OK);
    cr_assert_str_eq(str(s, "kind"), "Service");
    cr_assert_str_eq(str(s, "metadata.name"), "llama-cache");
    cr_assert_str_eq(str(s, "spec.clusterIP"), "None");
    cr_assert_eq(at(s, "spec.ports.0.port")->valuedouble, 18515);
    cr_assert_str_eq(str(s, "metadata.ownerReferences.0.uid"), "u-1");
    cr_assert_str_eq(cJSON_GetObjectItem(at(s, "spec.selector"), "kvshare.io/pool")->valuestring,
                     "llama");

    /* The update patch keeps the selector of a Service but never sends clusterIP. */
    cJSON *patch = kvsc_update_patch(s);
    cr_assert_not_null(patch);
    cr_assert_null(at(patch, "spec.clusterIP"));
    cr_assert_not_null(at(patch, "spec.selector"));
    cr_assert_null(at(patch, "metadata.ownerReferences"));
    cr_assert_null(at(patch, "metadata.name"));
    cJSON_Delete(patch);
    cJSON_Delete(s);
    cJSON_Delete(j);
}

Test(drift, defaulted_fields_are_not_drift)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":64,\"replicas\":2}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *d = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cJSON *patch = kvsc_update_patch(d);
    cr_assert_null(at(patch, "spec.selector"), "selector is immutable: never patched");
    /* What the API server returns: ours plus defaults, other labels, status. */
    cJSON *live = cJSON_Duplicate(d, 1);
    cJSON_AddStringToObject((cJSON *)at(live, "metadata.labels"), "team", "ml");
    cJSON_AddNumberToObject(cJSON_GetObjectItem(live, "spec"), "revisionHistoryLimit", 10);
    cJSON *c = (cJSON *)at(live, "spec.template.spec.containers.0");
    cJSON_AddStringToObject(c, "imagePullPolicy", "IfNotPresent");
    cJSON_AddStringToObject(c, "terminationMessagePath", "/dev/termination-log");
    cJSON_AddItemToObject(live, "status", cJSON_Parse("{\"readyReplicas\":1}"));
    cr_assert(kvsc_json_subset(patch, live), "defaults are no drift");

    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(live, "spec"), "replicas", cJSON_CreateNumber(5));
    cr_assert_not(kvsc_json_subset(patch, live), "replicas changed by hand is drift");
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(live, "spec"), "replicas", cJSON_CreateNumber(2));
    cJSON *envs = (cJSON *)at(live, "spec.template.spec.containers.0.env");
    cJSON_AddItemToArray(envs, cJSON_Parse("{\"name\":\"X\",\"value\":\"1\"}"));
    cr_assert_not(kvsc_json_subset(patch, live), "an extra env var is drift");
    cJSON_Delete(live);
    cJSON_Delete(patch);
    cJSON_Delete(d);
    cJSON_Delete(j);
}

Test(drift, subset_types)
{
    cJSON *a = cJSON_Parse("{\"a\":[1,\"x\",true,null,{\"b\":2}]}");
    cJSON *b = cJSON_Parse("{\"a\":[1,\"x\",true,null,{\"b\":2,\"c\":3}],\"d\":4}");
    cJSON *c = cJSON_Parse("{\"a\":[1,\"x\",false,null,{\"b\":2}]}");
    cJSON *d = cJSON_Parse("{\"a\":[1,\"x\",true,null]}");
    cr_assert(kvsc_json_subset(a, b));
    cr_assert_not(kvsc_json_subset(b, a));
    cr_assert_not(kvsc_json_subset(a, c));
    cr_assert_not(kvsc_json_subset(a, d));
    cr_assert(kvsc_json_subset(NULL, a));
    cr_assert_not(kvsc_json_subset(a, NULL));
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(c);
    cJSON_Delete(d);
}

Test(ownership, controller_reference)
{
    cJSON *mine = cJSON_Parse("{\"metadata\":{\"ownerReferences\":[{\"uid\":\"x\"},"
                              "{\"uid\":\"u-1\",\"controller\":true}]}}");
    cJSON *other = cJSON_Parse("{\"metadata\":{\"ownerReferences\":[{\"uid\":\"u-0\","
                               "\"controller\":true}]}}");
    cJSON *none = cJSON_Parse("{\"metadata\":{}}");
    cr_assert_eq(kvsc_controlled_by(mine, "u-1"), 1);
    cr_assert_eq(kvsc_controlled_by(other, "u-1"), -1);
    cr_assert_eq(kvsc_controlled_by(none, "u-1"), 0);
    cJSON_Delete(mine);
    cJSON_Delete(other);
    cJSON_Delete(none);
}

Test(status, transition_time_kept_while_status_holds)
{
    kvsc_ready_t r = {
        .ready = 0, .reason = "NodesNotReady", .message = "1 of 2", .ready_replicas = 1};
    cJSON *s1 = kvsc_desired_status(NULL, 3, &r, "2024-01-01T00:00:00Z");
    cr_assert_not_null(s1);
    cr_assert_eq(at(s1, "readyReplicas")->valuedouble, 1);
    cr_assert_eq(at(s1, "observedGeneration")->valuedouble, 3);
    cr_assert_str_eq(str(s1, "conditions.0.type"), "Ready");
    cr_assert_str_eq(str(s1, "conditions.0.status"), "False");
    cr_assert_str_eq(str(s1, "conditions.0.reason"), "NodesNotReady");
    /* Same condition status later: same document, so no write. */
    cJSON *s2 = kvsc_desired_status(s1, 3, &r, "2024-01-02T00:00:00Z");
    cr_assert(kvsc_json_subset(s2, s1) && kvsc_json_subset(s1, s2));
    /* A transition stamps the new time. */
    kvsc_ready_t ok = {
        .ready = 1, .reason = "NodesReady", .message = "2 of 2", .ready_replicas = 2};
    cJSON *s3 = kvsc_desired_status(s1, 3, &ok, "2024-01-03T00:00:00Z");
    cr_assert_str_eq(str(s3, "conditions.0.status"), "True");
    cr_assert_str_eq(str(s3, "conditions.0.lastTransitionTime"), "2024-01-03T00:00:00Z");
    cr_assert_not(kvsc_json_subset(s3, s1));
    cJSON_Delete(s1);
    cJSON_Delete(s2);
    cJSON_Delete(s3);
}

/* Every cJSON allocation in the builders fails once in turn: each reports no memory and
 * leaks nothing (the ASan build checks the leaks). */
static long kvsc_t_fail_at = -1, kvsc_t_allocs;

static void *failing_malloc(size_t n)
{
    if (kvsc_t_fail_at >= 0 && kvsc_t_allocs++ == kvsc_t_fail_at) {
        return NULL;
    }
    return malloc(n);
}

static int build_all(const kvsc_pool_t *p)
{
    cJSON *d = NULL, *s = NULL, *patch = NULL, *st = NULL;
    int ok = kvsc_desired_deployment(&cfg, p, &d) == KVSC_OK &&
             kvsc_desired_service(&cfg, p, &s) == KVSC_OK && (patch = kvsc_update_patch(d)) != NULL;
    kvsc_ready_t r = {.ready = 1,
                      .reason = "NodesReady",
                      .message = "m",
                      .ready_replicas = 1,
                      .auth_known = 1,
                      .auth_secret = p->auth_secret,
                      .auth_key = p->auth_key};
    ok = ok && (st = kvsc_desired_status(NULL, 1, &r, "t")) != NULL;
    cJSON_Delete(d);
    cJSON_Delete(s);
    cJSON_Delete(patch);
    cJSON_Delete(st);
    return ok;
}

static void oom_walk(const char *spec)
{
    cJSON *j = pool_json(spec);
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON_Hooks hooks = {.malloc_fn = failing_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    long sites = 0;
    for (kvsc_t_fail_at = 0;; kvsc_t_fail_at++) {
        kvsc_t_allocs = 0;
        if (build_all(&p)) {
            break;
        }
        sites++;
    }
    kvsc_t_fail_at = -1;
    cJSON_InitHooks(NULL);
    cr_assert_gt(sites, 50, "walked %ld allocation sites", sites);
    cJSON_Delete(j);
}

Test(oom, every_allocation_in_the_builders)
{
    oom_walk("{\"totalMemoryGB\":64,\"replicas\":2}");
}

Test(oom, every_allocation_in_the_builders_with_an_auth_secret)
{
    oom_walk("{\"totalMemoryGB\":64,\"replicas\":2,"
             "\"authSecretRef\":{\"name\":\"s\",\"key\":\"k\"}}");
}

/* ---- spec.authSecretRef ---------------------------------------------------------------- */

static const cJSON *find_named(const cJSON *arr, const char *name)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        if (strcmp(str(e, "name"), name) == 0) {
            return e;
        }
    }
    return NULL;
}

Test(pool_parse, auth_secret_ref)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":8,\"authSecretRef\":{\"name\":\"llama-auth\"}}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cr_assert_str_eq(p.auth_secret, "llama-auth");
    cr_assert_str_eq(p.auth_key, "token", "key defaults to token");
    cJSON_Delete(j);
    j = pool_json(
        "{\"totalMemoryGB\":8,\"authSecretRef\":{\"name\":\"a.b\",\"key\":\"KV_tok.1\"}}");
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cr_assert_str_eq(p.auth_secret, "a.b");
    cr_assert_str_eq(p.auth_key, "KV_tok.1");
    cJSON_Delete(j);
    j = pool_json("{\"totalMemoryGB\":8}");
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cr_assert_null(p.auth_secret, "no authSecretRef: open");
    cJSON_Delete(j);
}

Test(pool_parse, bad_auth_secret_ref_names_the_field)
{
    static const char *const bad[][2] = {
        {"\"authSecretRef\":\"llama-auth\"", "spec.authSecretRef.name"},
        {"\"authSecretRef\":{}", "spec.authSecretRef.name"},
        {"\"authSecretRef\":{\"name\":\"Bad_Name\"}", "spec.authSecretRef.name"},
        {"\"authSecretRef\":{\"name\":\"\"}", "spec.authSecretRef.name"},
        {"\"authSecretRef\":{\"name\":7}", "spec.authSecretRef.name"},
        {"\"authSecretRef\":{\"name\":\"ok\",\"key\":\"a/b\"}", "spec.authSecretRef.key"},
        {"\"authSecretRef\":{\"name\":\"ok\",\"key\":\"..\"}", "spec.authSecretRef.key"},
        {"\"authSecretRef\":{\"name\":\"ok\",\"key\":\"\"}", "spec.authSecretRef.key"},
        {"\"authSecretRef\":{\"name\":\"ok\",\"key\":3}", "spec.authSecretRef.key"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char spec[256];
        snprintf(spec, sizeof(spec), "{\"totalMemoryGB\":8,%s}", bad[i][0]);
        kvsc_pool_t p;
        const char *reason = NULL;
        char msg[256] = "";
        cr_assert_eq(parse(spec, &p, &reason, msg), KVSC_ERR_INVALID, "%s", spec);
        cr_assert_str_eq(reason, "InvalidAuthSecretRef", "%s", spec);
        cr_assert_not_null(strstr(msg, bad[i][1]), "%s: %s", spec, msg);
    }
}

Test(desired, deployment_mounts_the_auth_secret)
{
    cJSON *j =
        pool_json("{\"totalMemoryGB\":8,\"authSecretRef\":{\"name\":\"s1\",\"key\":\"tk\"}}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *d = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cr_assert_str_eq(env(d, "KVSHARE_AUTH_TOKEN_FILE"), KVSC_MOUNT_AUTH "/tk");
    cr_assert_null(env(d, "KVSHARE_AUTH"), "never open with a token");
    const cJSON *vol = find_named(at(d, "spec.template.spec.volumes"), KVSC_VOLUME_AUTH);
    cr_assert_not_null(vol);
    cr_assert_str_eq(str(vol, "secret.secretName"), "s1");
    cr_assert_eq(at(vol, "secret.defaultMode")->valueint, 0440);
    const cJSON *m =
        find_named(at(d, "spec.template.spec.containers.0.volumeMounts"), KVSC_VOLUME_AUTH);
    cr_assert_not_null(m);
    cr_assert_str_eq(str(m, "mountPath"), KVSC_MOUNT_AUTH);
    cr_assert(cJSON_IsTrue(at(m, "readOnly")));
    /* Another key or Secret is drift: the Deployment gets reapplied. */
    cJSON *patch = kvsc_update_patch(d);
    cJSON *j2 =
        pool_json("{\"totalMemoryGB\":8,\"authSecretRef\":{\"name\":\"s2\",\"key\":\"tk\"}}");
    kvsc_pool_t p2;
    cr_assert_eq(kvsc_pool_parse(j2, &p2, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *d2 = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p2, &d2), KVSC_OK);
    cr_assert(kvsc_json_subset(patch, d));
    cr_assert_not(kvsc_json_subset(patch, d2), "a new Secret name is drift");
    cJSON_Delete(patch);
    cJSON_Delete(d2);
    cJSON_Delete(j2);
    cJSON_Delete(d);
    cJSON_Delete(j);
}

Test(desired, open_pool_runs_with_auth_none)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":8}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cJSON *d = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cr_assert_str_eq(env(d, "KVSHARE_AUTH"), "none");
    cr_assert_null(env(d, "KVSHARE_AUTH_TOKEN_FILE"));
    cr_assert_null(at(d, "spec.template.spec.volumes"));
    cJSON_Delete(d);
    cJSON_Delete(j);
}

Test(status, authenticated_condition)
{
    kvsc_ready_t open = {.ready = 1,
                         .reason = "NodesReady",
                         .message = "1 of 1",
                         .ready_replicas = 1,
                         .auth_known = 1};
    cJSON *s1 = kvsc_desired_status(NULL, 2, &open, "2024-01-01T00:00:00Z");
    cr_assert_str_eq(str(s1, "conditions.1.type"), "Authenticated");
    cr_assert_str_eq(str(s1, "conditions.1.status"), "False");
    cr_assert_str_eq(str(s1, "conditions.1.reason"), "AuthDisabled");
    cr_assert_not_null(strstr(str(s1, "conditions.1.message"), "KVSHARE_AUTH=none"));
    /* Unchanged: the same document. */
    cJSON *s2 = kvsc_desired_status(s1, 2, &open, "2024-01-02T00:00:00Z");
    cr_assert(kvsc_json_subset(s2, s1) && kvsc_json_subset(s1, s2));
    /* authSecretRef added: True, stamped now; Ready keeps its time. */
    kvsc_ready_t sec = open;
    sec.auth_secret = "s";
    sec.auth_key = "token";
    cJSON *s3 = kvsc_desired_status(s1, 3, &sec, "2024-01-03T00:00:00Z");
    cr_assert_str_eq(str(s3, "conditions.1.status"), "True");
    cr_assert_str_eq(str(s3, "conditions.1.reason"), "SecretRef");
    cr_assert_not_null(strstr(str(s3, "conditions.1.message"), "Secret s, key token"));
    cr_assert_str_eq(str(s3, "conditions.1.lastTransitionTime"), "2024-01-03T00:00:00Z");
    cr_assert_str_eq(str(s3, "conditions.0.lastTransitionTime"), "2024-01-01T00:00:00Z");
    /* An invalid spec: no Authenticated condition at all. */
    kvsc_ready_t inv = {.ready = 0, .reason = "InvalidSpec", .message = "m"};
    cJSON *s4 = kvsc_desired_status(NULL, 1, &inv, "t");
    cr_assert_eq(cJSON_GetArraySize(at(s4, "conditions")), 1);
    cJSON_Delete(s1);
    cJSON_Delete(s2);
    cJSON_Delete(s3);
    cJSON_Delete(s4);
}

Test(pool_auth_cache, set_lookup_remove)
{
    kvsc_pool_auth_cache_t *c = NULL;
    char sec[64], key[64];
    cr_assert_eq(kvsc_pool_auth_cache_create(&c), KVSC_OK);
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "a", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_UNKNOWN);
    cr_assert_eq(kvsc_pool_auth_cache_set(c, "ml", "a", NULL, NULL), 1, "new: changed");
    cr_assert_eq(kvsc_pool_auth_cache_set(c, "ml", "a", NULL, NULL), 0, "same: unchanged");
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "a", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_OPEN);
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "other", "a", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_UNKNOWN, "pools are per namespace");
    cr_assert_eq(kvsc_pool_auth_cache_set(c, "ml", "a", "s", NULL), 1, "open to secret");
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "a", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_SECRET);
    cr_assert_str_eq(sec, "s");
    cr_assert_str_eq(key, "token");
    cr_assert_eq(kvsc_pool_auth_cache_set(c, "ml", "a", "s", "k2"), 1, "another key");
    cr_assert_eq(kvsc_pool_auth_cache_set(c, "ml", "b", "t", "k"), 1);
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "a", sec, 1, key, sizeof(key)),
                 KVSC_POOL_AUTH_UNKNOWN, "a buffer too small is not a match");
    kvsc_pool_auth_cache_remove(c, "ml", "a");
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "a", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_UNKNOWN);
    cr_assert_eq(kvsc_pool_auth_cache_lookup(c, "ml", "b", sec, sizeof(sec), key, sizeof(key)),
                 KVSC_POOL_AUTH_SECRET);
    kvsc_pool_auth_cache_destroy(c);
    kvsc_pool_auth_cache_destroy(NULL);
}

/* ---- spec.hostSocketDir ------------------------------------------------------------------ */

Test(desired, deployment_mounts_the_host_socket_dir)
{
    cJSON *j = pool_json("{\"totalMemoryGB\":8,\"hostSocketDir\":\"/var/run/kvshare\","
                         "\"authSecretRef\":{\"name\":\"s1\"}}");
    kvsc_pool_t p;
    const char *reason;
    char msg[256];
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cr_assert_str_eq(p.host_socket_dir, "/var/run/kvshare");
    cJSON *d = NULL;
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cr_assert_str_eq(env(d, "KVSHARE_HOST_SOCKET_DIR"), KVSC_MOUNT_HOST);
    const cJSON *vols = at(d, "spec.template.spec.volumes");
    cr_assert_eq(cJSON_GetArraySize(vols), 2, "one volumes array: the Secret and the host dir");
    const cJSON *vol = find_named(vols, KVSC_VOLUME_HOST);
    cr_assert_not_null(vol);
    cr_assert_str_eq(str(vol, "hostPath.path"), "/var/run/kvshare");
    cr_assert_str_eq(str(vol, "hostPath.type"), "DirectoryOrCreate");
    const cJSON *mounts = at(d, "spec.template.spec.containers.0.volumeMounts");
    cr_assert_eq(cJSON_GetArraySize(mounts), 2);
    cr_assert_str_eq(str(find_named(mounts, KVSC_VOLUME_HOST), "mountPath"), KVSC_MOUNT_HOST);
    cJSON_Delete(d);
    cJSON_Delete(j);

    j = pool_json("{\"totalMemoryGB\":8}");
    cr_assert_eq(kvsc_pool_parse(j, &p, &reason, msg, sizeof(msg)), KVSC_OK);
    cr_assert_null(p.host_socket_dir);
    cr_assert_eq(kvsc_desired_deployment(&cfg, &p, &d), KVSC_OK);
    cr_assert_null(env(d, "KVSHARE_HOST_SOCKET_DIR"));
    cJSON_Delete(d);
    cJSON_Delete(j);

    static const char *const bad[] = {"\"relative\"", "\"/a/../b\"", "\"/a b\"", "7"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char spec[256];
        snprintf(spec, sizeof(spec), "{\"totalMemoryGB\":8,\"hostSocketDir\":%s}", bad[i]);
        reason = NULL;
        cr_assert_eq(parse(spec, &p, &reason, msg), KVSC_ERR_INVALID, "%s", spec);
        cr_assert_str_eq(reason, "InvalidHostSocketDir", "%s", spec);
        cr_assert_not_null(strstr(msg, "spec.hostSocketDir"), "%s", msg);
    }
}

Test(oom, every_allocation_in_the_builders_with_a_host_socket_dir)
{
    oom_walk("{\"totalMemoryGB\":64,\"replicas\":2,\"hostSocketDir\":\"/var/run/kvshare\","
             "\"authSecretRef\":{\"name\":\"s\",\"key\":\"k\"}}");
}
