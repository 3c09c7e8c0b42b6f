/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the controller's Criterion tests: fixtures, decoding, op lookup. */
#ifndef KVSC_TEST_UTIL_H
#define KVSC_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <openssl/evp.h>

#include "controller_int.h"

static inline char *kvsc_t_read(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", KVSC_FIXTURES, name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static inline cJSON *kvsc_t_load(const char *name)
{
    char *text = kvsc_t_read(name);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(j, "parse %s", name);
    return j;
}

/* A fake of the reconciler's pool record: in namespace "default" (and "ml"), pool "llama"
 * takes its token from Secret "llama-token" key "token", pool "keyed" from "keyed-auth" key
 * "kv.token", pool "open" has no authSecretRef; every other pool is unknown. */
static inline kvsc_pool_auth_t kvsc_t_pool_auth(void *ud, const char *ns, const char *name,
                                                char *secret, size_t secret_len, char *key,
                                                size_t key_len)
{
    (void)ud;
    if (strcmp(ns, "default") != 0 && strcmp(ns, "ml") != 0) {
        return KVSC_POOL_AUTH_UNKNOWN;
    }
    if (strcmp(name, "open") == 0) {
        return KVSC_POOL_AUTH_OPEN;
    }
    const char *s = strcmp(name, "llama") == 0   ? "llama-token"
                    : strcmp(name, "keyed") == 0 ? "keyed-auth"
                                                 : NULL;
    if (s == NULL) {
        return KVSC_POOL_AUTH_UNKNOWN;
    }
    snprintf(secret, secret_len, "%s", s);
    snprintf(key, key_len, "%s", strcmp(name, "keyed") == 0 ? "kv.token" : "token");
    return KVSC_POOL_AUTH_SECRET;
}

static inline const kvsc_inject_cfg_t *kvsc_t_cfg(void)
{
    static const kvsc_inject_cfg_t cfg = {.image = "registry.example/kvshare:test",
                                          .version = "9.8.7",
                                          .listen_port = 18515,
                                          .pool_auth = kvsc_t_pool_auth};
    return &cfg;
}

/* Review a cJSON document; returns the parsed response body (caller deletes). */
static inline cJSON *kvsc_t_review(const cJSON *review, kvsc_review_out_t *out)
{
    char *text = cJSON_PrintUnformatted(review);
    cr_assert_not_null(text);
    cr_assert_eq(kvsc_review(kvsc_t_cfg(), text, strlen(text), out), KVSC_OK);
    free(text);
    cJSON *resp = cJSON_ParseWithLength(out->body, out->body_len);
    cr_assert_not_null(resp, "response is JSON: %.*s", (int)out->body_len, out->body);
    return resp;
}

/* Decode response.patch (base64 JSON) into a cJSON array, or NULL when there is none. */
static inline cJSON *kvsc_t_patch(const cJSON *resp)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(resp, "response");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(r, "patch");
    if (p == NULL) {
        return NULL;
    }
    cr_assert(cJSON_IsString(p));
    size_t n = strlen(p->valuestring);
    unsigned char *raw = malloc(n + 1);
    int len = EVP_DecodeBlock(raw, (const unsigned char *)p->valuestring, (int)n);
    cr_assert_geq(len, 0, "patch is base64");
    /* EVP_DecodeBlock counts the padding bytes as zeros; strip them. */
    while (len > 0 && raw[len - 1] == '\0') {
        len--;
    }
    cJSON *patch = cJSON_ParseWithLength((const char *)raw, (size_t)len);
    free(raw);
    cr_assert(cJSON_IsArray(patch), "patch is a JSON array");
    return patch;
}

/* The first op with this path (and op name), or NULL. */
static inline const cJSON *kvsc_t_find(const cJSON *patch, const char *op, const char *path)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(it, "op");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "path");
        if (strcmp(o->valuestring, op) == 0 && strcmp(p->valuestring, path) == 0) {
            return it;
        }
    }
    return NULL;
}

static inline cJSON *kvsc_t_pod(cJSON *review)
{
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(review, "request"),
                                            "object");
}

#endif
