/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the webhook's review handler: any bytes in, a well-formed reply out. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "controller_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const kvsc_inject_cfg_t cfg = {
        .image = "ghcr.io/kvshare/kvshare:fuzz", .version = "fuzz", .listen_port = 18515};
    if (size > KVSC_MAX_BODY) {
        return 0; /* the server refuses these before parsing */
    }
    kvsc_review_out_t out;
    if (kvsc_review(&cfg, (const char *)data, size, &out) != KVSC_OK) {
        return 0;
    }
    /* Every reply must be JSON the API server can read, with a status that matches. */
    cJSON *resp = cJSON_ParseWithLength(out.body, out.body_len);
    if (resp == NULL || (out.http_status != 200 && out.http_status != 400)) {
        abort();
    }
    if (out.http_status == 200) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(resp, "response");
        const cJSON *uid = cJSON_GetObjectItemCaseSensitive(r, "uid");
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "allowed")) || !cJSON_IsString(uid) ||
            (out.patch_ops > 0) != (cJSON_GetObjectItemCaseSensitive(r, "patch") != NULL)) {
            abort();
        }
    }
    cJSON_Delete(resp);
    kvsc_review_out_free(&out);
    return 0;
}
