/* SPDX-License-Identifier: Apache-2.0 */
/* auth_int.h - the handshake secret: KVSHARE_AUTH and KVSHARE_AUTH_TOKEN_FILE. */
#ifndef KVS_AUTH_INT_H
#define KVS_AUTH_INT_H

#include "config_int.h"

#define KVS_SECRET_MAX 4096

/* The token as read from KVSHARE_AUTH_TOKEN_FILE (one trailing newline
 * stripped), or open = true when KVSHARE_AUTH=none. Holds key material:
 * clear it with kvs__secret_clear() before it goes out of scope. */
typedef struct kvs__secret {
    uint8_t bytes[KVS_SECRET_MAX];
    size_t len;
    bool open; /* KVSHARE_AUTH=none: no secret, nothing is proven */
} kvs__secret_t;

/* Loads the secret that @cfg asks for into *out.
 * - auth none: out->open = true, len 0, and one warning through @log;
 *   a token file as well is a contradiction (KVS_ERR_CONFIG).
 * - auth token (the default): KVSHARE_AUTH_TOKEN_FILE must name a readable
 *   file of 1 to 4096 bytes (after one trailing "\n" or "\r\n"). A file that
 *   group or others can read is logged as a warning, not refused (Kubernetes
 *   mounts Secrets 0440 on purpose).
 * On failure writes one line naming the variable(s), the path and the cause
 * to @err (if any), returns KVS_ERR_CONFIG (or KVS_ERR_INVALID_PARAM for
 * NULL arguments), and leaves *out untouched. No copy of the token is left
 * anywhere but *out. */
kvs_status_t kvs__auth_load(const kvs__config_t *cfg, const kvs__logger_t *log, kvs__secret_t *out,
                            char *err, size_t errlen);

/* Wipes the secret (OPENSSL_cleanse) and resets it; accepts NULL. */
void kvs__secret_clear(kvs__secret_t *s);

/* Raises the soft RLIMIT_NOFILE to the hard limit, so that a node with many
 * peers does not run out of descriptors at the default 1024. Logs what it
 * did at debug, and a warning if it could not. */
void kvs__raise_nofile(const kvs__logger_t *log);

#endif
