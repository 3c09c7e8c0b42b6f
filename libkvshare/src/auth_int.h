/* SPDX-License-Identifier: Apache-2.0 */
/* auth_int.h - the shared secret peers prove in the bootstrap handshake. */
#ifndef KVS_AUTH_INT_H
#define KVS_AUTH_INT_H

#include "config_int.h"

typedef struct kvs__secret {
    uint8_t bytes[4096];
    size_t len;
    bool open; /* KVSHARE_AUTH=none */
} kvs__secret_t;

kvs_status_t kvs__auth_load(const kvs__config_t *cfg, const kvs__logger_t *log, kvs__secret_t *out,
                            char *err, size_t errlen);
void kvs__secret_clear(kvs__secret_t *s);

#endif
