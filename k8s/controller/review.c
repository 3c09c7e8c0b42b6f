/* SPDX-License-Identifier: Apache-2.0 */
/* Turns an AdmissionReview request into its response: pure, no I/O, shared by server and fuzzer. */
#include "controller_int.h"

#include <string.h>

const char *kvsc_status_string(kvsc_status_t status)
{
    switch (status) {
    case KVSC_OK:
        return "success";
    case KVSC_ERR_NO_MEMORY:
        return "out of memory";
    case KVSC_ERR_INVALID:
        return "invalid argument";
    case KVSC_ERR_IO:
        return "input/output error";
    }
    return "unknown status";
}

const char *kvsc_result_name(kvsc_result_t result)
{
    static const char *const names[KVSC_RESULT_COUNT] = {
        "patched",   "no_patch",           "dry_run",   "bad_request", "too_large",
        "bad_media", "method_not_allowed", "not_found", "error",       "busy",
    };
    return (unsigned)result < KVSC_RESULT_COUNT ? names[result] : "unknown";
}

void kvsc_review_out_free(kvsc_review_out_t *out)
{
    if (out == NULL) {
        return;
    }
    cJSON_free(out->body);
    out->body = NULL;
}

kvsc_status_t kvsc_error_body(unsigned code, const char *message, char **body_p, size_t *len_p)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || cJSON_AddStringToObject(o, "error", message) == NULL ||
        cJSON_AddNumberToObject(o, "code", code) == NULL) {
        cJSON_Delete(o);
        return KVSC_ERR_NO_MEMORY;
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (s == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    *body_p = s;
    *len_p = strlen(s);
    return KVSC_OK;
}

static kvsc_status_t reject(kvsc_review_out_t *out, const char *message)
{
    char *body;
    size_t len;
    kvsc_status_t status = kvsc_error_body(400, message, &body, &len);
    if (status != KVSC_OK) {
        return status;
    }
    out->http_status = 400;
    out->result = KVSC_RESULT_BAD_REQUEST;
    out->body = body;
    out->body_len = len;
    out->patch_ops = 0;
    return KVSC_OK;
}

static const cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static const char *get_str(const cJSON *obj, const char *key)
{
    const cJSON *v = get(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Only core/v1 Pods on CREATE are injected; everything else passes untouched. */
static int wants_injection(const cJSON *req)
{
    const cJSON *kind = get(req, "kind");
    const char *k = get_str(kind, "kind");
    const char *group = get_str(kind, "group");
    const char *op = get_str(req, "operation");
    const char *sub = get_str(req, "subResource");
    return k != NULL && strcmp(k, "Pod") == 0 && (group == NULL || group[0] == '\0') &&
           op != NULL && strcmp(op, "CREATE") == 0 && (sub == NULL || sub[0] == '\0');
}

static kvsc_status_t respond(const cJSON *review, const char *uid, const cJSON *patch,
                             cJSON *warnings, kvsc_review_out_t *out)
{
    kvsc_status_t status = KVSC_ERR_NO_MEMORY;
    char *patch_json = NULL, *patch_b64 = NULL, *text = NULL;
    cJSON *resp_review = cJSON_CreateObject();
    cJSON *resp = cJSON_CreateObject();
    if (resp_review == NULL || resp == NULL ||
        cJSON_AddStringToObject(resp_review, "apiVersion", get_str(review, "apiVersion")) == NULL ||
        cJSON_AddStringToObject(resp_review, "kind", get_str(review, "kind")) == NULL ||
        !cJSON_AddItemToObject(resp_review, "response", resp)) {
        cJSON_Delete(resp);
        goto out;
    }
    if (cJSON_AddStringToObject(resp, "uid", uid) == NULL ||
        cJSON_AddTrueToObject(resp, "allowed") == NULL) {
        goto out;
    }
    if (patch != NULL) {
        patch_json = cJSON_PrintUnformatted(patch);
        patch_b64 = patch_json != NULL
                        ? kvsc_base64((const unsigned char *)patch_json, strlen(patch_json))
                        : NULL;
        if (patch_b64 == NULL || cJSON_AddStringToObject(resp, "patchType", "JSONPatch") == NULL ||
            cJSON_AddStringToObject(resp, "patch", patch_b64) == NULL) {
            goto out;
        }
    }
    if (cJSON_GetArraySize(warnings) > 0) {
        cJSON *w = cJSON_Duplicate(warnings, 1);
        if (w == NULL || !cJSON_AddItemToObject(resp, "warnings", w)) {
            cJSON_Delete(w);
            goto out;
        }
    }
    text = cJSON_PrintUnformatted(resp_review);
    if (text == NULL) {
        goto out;
    }
    out->http_status = 200;
    out->body = text;
    out->body_len = strlen(text);
    status = KVSC_OK;
out:
    cJSON_free(patch_b64);
    cJSON_free(patch_json);
    cJSON_Delete(resp_review);
    return status;
}

kvsc_status_t kvsc_review(const kvsc_inject_cfg_t *cfg, const char *body, size_t len,
                          kvsc_review_out_t *out)
{
    kvsc_status_t status;
    cJSON *review = NULL, *warnings = NULL, *patch = NULL;
    const char *end = NULL;

    if (len == 0) {
        return reject(out, "empty body: expected an AdmissionReview");
    }
    review = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (review == NULL) {
        /* cJSON reports a parse error and out-of-memory alike; retrying with a tiny probe
         * would not tell them apart either, so both are a 400 that names the offset. */
        return reject(out, "body is not valid JSON");
    }
    for (const char *p = end; p < body + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            status = reject(out, "body has trailing data after the JSON value");
            goto out;
        }
    }
    if (!cJSON_IsObject(review)) {
        status = reject(out, "body is not a JSON object: expected an AdmissionReview");
        goto out;
    }
    const char *api = get_str(review, "apiVersion");
    const char *kind = get_str(review, "kind");
    if (api == NULL || strcmp(api, "admission.k8s.io/v1") != 0) {
        status = reject(out, "apiVersion must be admission.k8s.io/v1");
        goto out;
    }
    if (kind == NULL || strcmp(kind, "AdmissionReview") != 0) {
        status = reject(out, "kind must be AdmissionReview");
        goto out;
    }
    const cJSON *req = get(review, "request");
    if (!cJSON_IsObject(req)) {
        status = reject(out, "request is missing or not an object");
        goto out;
    }
    const char *uid = get_str(req, "uid");
    if (uid == NULL || uid[0] == '\0') {
        status = reject(out, "request.uid is missing or empty");
        goto out;
    }
    const cJSON *object = get(req, "object");
    const cJSON *dry = get(req, "dryRun");
    int dry_run = cJSON_IsTrue(dry);
    int inject = wants_injection(req);
    /* DELETE and CONNECT legitimately carry no object; for a pod CREATE it is required. */
    if (inject && !cJSON_IsObject(object)) {
        status = reject(out, "request.object is missing or not an object");
        goto out;
    }

    warnings = cJSON_CreateArray();
    if (warnings == NULL) {
        status = KVSC_ERR_NO_MEMORY;
        goto out;
    }
    if (inject) {
        status = kvsc_inject_patch(cfg, object, get_str(req, "namespace"), &patch, warnings);
        if (status != KVSC_OK) {
            goto out;
        }
    }
    status = respond(review, uid, patch, warnings, out);
    if (status != KVSC_OK) {
        goto out;
    }
    out->patch_ops = patch != NULL ? (size_t)cJSON_GetArraySize(patch) : 0;
    out->result = patch == NULL ? KVSC_RESULT_NO_PATCH
                  : dry_run     ? KVSC_RESULT_DRY_RUN
                                : KVSC_RESULT_PATCHED;
out:
    cJSON_Delete(patch);
    cJSON_Delete(warnings);
    cJSON_Delete(review);
    return status;
}
