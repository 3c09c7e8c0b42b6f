/* SPDX-License-Identifier: Apache-2.0 */
/* auth.c - loads the shared secret (KVSHARE_AUTH_TOKEN_FILE). TEMPORARY: replaced at merge. */
#include "auth_int.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

kvs_status_t kvs__auth_load(const kvs__config_t *cfg, const kvs__logger_t *log, kvs__secret_t *out,
                            char *err, size_t errlen)
{
    (void)log;
    memset(out, 0, sizeof(*out));
    if (cfg->auth_token_file[0] == '\0') {
        out->open = true;
        return KVS_OK;
    }
    FILE *f = fopen(cfg->auth_token_file, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': %s", cfg->auth_token_file,
                 strerror(errno));
        return KVS_ERR_CONFIG;
    }
    size_t n = fread(out->bytes, 1, sizeof(out->bytes), f);
    fclose(f);
    while (n > 0 && (out->bytes[n - 1] == '\n' || out->bytes[n - 1] == '\r'))
        n--;
    if (n == 0) {
        snprintf(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': empty", cfg->auth_token_file);
        return KVS_ERR_CONFIG;
    }
    out->len = n;
    return KVS_OK;
}

void kvs__secret_clear(kvs__secret_t *s)
{
    OPENSSL_cleanse(s, sizeof(*s));
}
