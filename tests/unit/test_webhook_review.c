/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for kvsc_review(): the AdmissionReview envelope, bad input, dry runs, OOM. */
#include "test_controller_util.h"

static cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

Test(review, opted_in_pod_is_patched_and_envelope_echoed)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    kvsc_review_out_t out;
    cJSON *resp = kvsc_t_review(review, &out);
    cr_assert_eq(out.http_status, 200);
    cr_assert_eq(out.result, KVSC_RESULT_PATCHED);
    cr_assert_str_eq(get(resp, "apiVersion")->valuestring, get(review, "apiVersion")->valuestring);
    cr_assert_str_eq(get(resp, "kind")->valuestring, "AdmissionReview");
    const cJSON *r = get(resp, "response");
    cr_assert_str_eq(get(r, "uid")->valuestring, get(get(review, "request"), "uid")->valuestring);
    cr_assert(cJSON_IsTrue(get(r, "allowed")));
    cr_assert_str_eq(get(r, "patchType")->valuestring, "JSONPatch");
    cJSON *patch = kvsc_t_patch(resp);
    cr_assert_eq((size_t)cJSON_GetArraySize(patch), out.patch_ops);
    cr_assert_gt(out.patch_ops, 0);
    cJSON_Delete(patch);
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
    cJSON_Delete(review);
}

static void expect_no_patch(cJSON *review)
{
    kvsc_review_out_t out;
    cJSON *resp = kvsc_t_review(review, &out);
    cr_assert_eq(out.http_status, 200);
    cr_assert_eq(out.result, KVSC_RESULT_NO_PATCH);
    cr_assert_eq(out.patch_ops, 0);
    const cJSON *r = get(resp, "response");
    cr_assert(cJSON_IsTrue(get(r, "allowed")));
    cr_assert_null(get(r, "patch"));
    cr_assert_null(get(r, "patchType"));
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
}

Test(review, deployment_passes_untouched)
{
    cJSON *review = kvsc_t_load("deployment.json");
    expect_no_patch(review);
    cJSON_Delete(review);
}

Test(review, pod_without_label_passes_untouched)
{
    cJSON *review = kvsc_t_load("pod-privileged.json");
    expect_no_patch(review);
    cJSON_Delete(review);
}

Test(review, label_not_exactly_true_passes_untouched)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *labels = get(get(kvsc_t_pod(review), "metadata"), "labels");
    cJSON_ReplaceItemInObjectCaseSensitive(labels, "kvshare.io/inject", cJSON_CreateString("True"));
    expect_no_patch(review);
    cJSON_Delete(review);
}

Test(review, update_and_delete_are_not_patched)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *req = get(review, "request");
    cJSON_ReplaceItemInObjectCaseSensitive(req, "operation", cJSON_CreateString("UPDATE"));
    expect_no_patch(review);
    /* DELETE carries no object; that is fine when we are not going to inject. */
    cJSON_ReplaceItemInObjectCaseSensitive(req, "operation", cJSON_CreateString("DELETE"));
    cJSON_DeleteItemFromObjectCaseSensitive(req, "object");
    expect_no_patch(review);
    cJSON_Delete(review);
}

Test(review, dry_run_gets_the_same_response_but_another_result)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    kvsc_review_out_t real, dry;
    cJSON *r1 = kvsc_t_review(review, &real);
    cJSON_ReplaceItemInObjectCaseSensitive(get(review, "request"), "dryRun", cJSON_CreateTrue());
    cJSON *r2 = kvsc_t_review(review, &dry);
    cr_assert_eq(real.result, KVSC_RESULT_PATCHED);
    cr_assert_eq(dry.result, KVSC_RESULT_DRY_RUN);
    cr_assert_eq(real.body_len, dry.body_len);
    cr_assert_eq(memcmp(real.body, dry.body, real.body_len), 0);
    cr_assert_eq(real.patch_ops, dry.patch_ops);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    kvsc_review_out_free(&real);
    kvsc_review_out_free(&dry);
    cJSON_Delete(review);
}

/* Feed raw bytes; expect a 400 whose JSON body's error mentions needle. */
static void expect_400(const char *body, size_t len, const char *needle)
{
    kvsc_review_out_t out;
    cr_assert_eq(kvsc_review(kvsc_t_cfg(), body, len, &out), KVSC_OK);
    cr_assert_eq(out.http_status, 400, "status for %.*s", (int)len, body);
    cr_assert_eq(out.result, KVSC_RESULT_BAD_REQUEST);
    cJSON *resp = cJSON_ParseWithLength(out.body, out.body_len);
    cr_assert_not_null(resp);
    const cJSON *err = get(resp, "error");
    cr_assert(cJSON_IsString(err));
    cr_assert_not_null(strstr(err->valuestring, needle), "\"%s\" names %s", err->valuestring,
                       needle);
    cr_assert_eq(get(resp, "code")->valueint, 400);
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
}

static void expect_400_json(cJSON *doc, const char *needle)
{
    char *text = cJSON_PrintUnformatted(doc);
    expect_400(text, strlen(text), needle);
    free(text);
}

Test(review, malformed_bodies_are_400)
{
    expect_400("", 0, "empty");
    expect_400("not json", 8, "JSON");
    expect_400("{\"a\":", 5, "JSON");
    expect_400("[1,2]", 5, "object");
    expect_400("{} trailing", 11, "trailing");
    /* The length is honoured: the NUL and what follows are not part of the body. */
    expect_400("{\"apiVersion\":1}\0garbage", 16, "apiVersion");
}

Test(review, wrong_envelope_is_400)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON_ReplaceItemInObjectCaseSensitive(review, "apiVersion",
                                           cJSON_CreateString("admission.k8s.io/v1beta1"));
    expect_400_json(review, "apiVersion");
    cJSON_Delete(review);

    review = kvsc_t_load("pod-optin.json");
    cJSON_ReplaceItemInObjectCaseSensitive(review, "kind", cJSON_CreateString("Pod"));
    expect_400_json(review, "kind");
    cJSON_DeleteItemFromObjectCaseSensitive(review, "kind");
    expect_400_json(review, "kind");
    cJSON_Delete(review);
}

Test(review, missing_request_uid_or_object_is_400)
{
    cJSON *review = kvsc_t_load("pod-optin.json");
    cJSON *req = get(review, "request");
    cJSON_DeleteItemFromObjectCaseSensitive(req, "object");
    expect_400_json(review, "request.object");
    cJSON_DeleteItemFromObjectCaseSensitive(req, "uid");
    expect_400_json(review, "request.uid");
    cJSON_AddStringToObject(req, "uid", "");
    expect_400_json(review, "request.uid");
    cJSON_DeleteItemFromObjectCaseSensitive(review, "request");
    expect_400_json(review, "request");
    cJSON_AddStringToObject(review, "request", "nope");
    expect_400_json(review, "request");
    cJSON_Delete(review);
}

Test(review, base64_matches_rfc4648_vectors)
{
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const want[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                       "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *b = kvsc_base64((const unsigned char *)in[i], strlen(in[i]));
        cr_assert_str_eq(b, want[i]);
        cJSON_free(b);
    }
}

/* ---- out of memory: fail the Nth allocation, for every N ---- */

static long kvsc_t_budget = -1;

static void *failing_malloc(size_t n)
{
    if (kvsc_t_budget == 0) {
        return NULL;
    }
    if (kvsc_t_budget > 0) {
        kvsc_t_budget--;
    }
    return malloc(n);
}

Test(review, every_allocation_failure_is_reported_not_crashed)
{
    char *text = kvsc_t_read("pod-optin.json");
    cJSON_Hooks hooks = {.malloc_fn = failing_malloc, .free_fn = free};
    int finished = 0;
    for (long n = 0; n < 100000 && !finished; n++) {
        kvsc_review_out_t out;
        cJSON_InitHooks(&hooks);
        kvsc_t_budget = n;
        kvsc_status_t status = kvsc_review(kvsc_t_cfg(), text, strlen(text), &out);
        kvsc_t_budget = -1;
        if (status == KVSC_OK) {
            /* cJSON reports a parse that ran out of memory as a parse error. */
            cr_assert(out.http_status == 200 || out.http_status == 400);
            finished = out.http_status == 200;
            if (finished) {
                cr_assert_eq(out.result, KVSC_RESULT_PATCHED);
            }
            kvsc_review_out_free(&out);
        } else {
            cr_assert_eq(status, KVSC_ERR_NO_MEMORY);
        }
    }
    cJSON_InitHooks(NULL);
    cr_assert(finished, "the review succeeds once allocations stop failing");
    free(text);
}
