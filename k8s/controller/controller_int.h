/* SPDX-License-Identifier: Apache-2.0 */
/* Internal interfaces of kvshare-controller: admission review, injection patch, metrics, server. */
#ifndef KVSC_CONTROLLER_INT_H
#define KVSC_CONTROLLER_INT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* The API server refuses objects larger than this, so no honest review is bigger. */
#define KVSC_MAX_BODY ((size_t)3 * 1024 * 1024)

#define KVSC_LABEL_INJECT        "kvshare.io/inject"
#define KVSC_LABEL_ROLE          "kvshare.io/role"
#define KVSC_ANNOT_POOL          "kvshare.io/pool"
#define KVSC_ANNOT_AUTH_SECRET   "kvshare.io/auth-secret"
#define KVSC_ANNOT_INJECTED      "kvshare.io/injected"
#define KVSC_INIT_NAME           "kvshare-init"
#define KVSC_VOLUME_LIB          "kvshare-lib"
#define KVSC_VOLUME_AUTH         "kvshare-auth"
#define KVSC_MOUNT_LIB           "/opt/kvshare"
#define KVSC_MOUNT_AUTH          "/var/run/secrets/kvshare"
#define KVSC_SHIM_PATH           KVSC_MOUNT_LIB "/lib/libkvshare_preload.so"
#define KVSC_AUTH_TOKEN_KEY      "token"
#define KVSC_DEFAULT_LISTEN_PORT 18515u

/* Status codes, append-only. */
typedef enum {
    KVSC_OK = 0,
    KVSC_ERR_NO_MEMORY = -1,
    KVSC_ERR_INVALID = -2,
    KVSC_ERR_IO = -3,
} kvsc_status_t;

const char *kvsc_status_string(kvsc_status_t status);

/* What the injector needs to know; all strings are borrowed for the call. */
typedef struct kvsc_inject_cfg {
    const char *image;    /* image of the init container that carries the shim */
    const char *version;  /* value of the kvshare.io/injected annotation */
    unsigned listen_port; /* port in KVSHARE_LISTEN */
} kvsc_inject_cfg_t;

/* How one review ended; the labels of kvshare_webhook_requests_total. Append-only. */
typedef enum {
    KVSC_RESULT_PATCHED = 0, /* pod mutated */
    KVSC_RESULT_NO_PATCH,    /* allowed untouched: not a pod, not opted in, already injected, ... */
    KVSC_RESULT_DRY_RUN,     /* same response as a real review, not counted as an emitted patch */
    KVSC_RESULT_BAD_REQUEST, /* 400: not JSON, not an AdmissionReview v1, fields missing */
    KVSC_RESULT_TOO_LARGE,   /* 413 */
    KVSC_RESULT_BAD_MEDIA,   /* 415 */
    KVSC_RESULT_BAD_METHOD,  /* 405 */
    KVSC_RESULT_NOT_FOUND,   /* 404 */
    KVSC_RESULT_ERROR,       /* 500: out of memory */
    KVSC_RESULT_COUNT
} kvsc_result_t;

const char *kvsc_result_name(kvsc_result_t result);

/* The outcome of kvsc_review(). body is allocated with cJSON_malloc; free with
 * kvsc_review_out_free. */
typedef struct kvsc_review_out {
    unsigned http_status;
    kvsc_result_t result;
    char *body;
    size_t body_len;
    size_t patch_ops; /* operations in the emitted patch, 0 when none */
} kvsc_review_out_t;

/**
 * Turn an AdmissionReview request body into the HTTP status and JSON body to send back.
 * Pure: no I/O, no globals, safe to call from many threads at once.
 * @param cfg   injection settings (borrowed).
 * @param body  request bytes, need not be NUL-terminated (borrowed).
 * @param len   length of body.
 * @param out   filled on KVSC_OK; the caller owns out->body. Untouched on error.
 * @return KVSC_OK for every handled input, good or bad (bad input gives a 4xx in out);
 *         KVSC_ERR_NO_MEMORY when an allocation failed.
 */
kvsc_status_t kvsc_review(const kvsc_inject_cfg_t *cfg, const char *body, size_t len,
                          kvsc_review_out_t *out);

/* Build the small JSON error body {"error":...,"code":...} for a 4xx/5xx; caller frees. */
kvsc_status_t kvsc_error_body(unsigned code, const char *message, char **body_p, size_t *len_p);

/* Frees out->body; accepts NULL. */
void kvsc_review_out_free(kvsc_review_out_t *out);

/**
 * Build the JSON Patch that injects kvshare into a pod.
 * @param cfg        injection settings (borrowed).
 * @param pod        the pod object from request.object (borrowed).
 * @param namespace_ the namespace the pod is created in; may be NULL.
 * @param patch_p    set to a new JSON array (caller owns) with the operations, or to NULL
 *                   when the pod must not be touched.
 * @param warnings   JSON array (borrowed) that receives human-readable warning strings.
 * @return KVSC_OK or KVSC_ERR_NO_MEMORY (then *patch_p is untouched).
 */
kvsc_status_t kvsc_inject_patch(const kvsc_inject_cfg_t *cfg, const cJSON *pod,
                                const char *namespace_, cJSON **patch_p, cJSON *warnings);

/**
 * Escape one JSON Pointer reference token (RFC 6901): '~' to "~0", then '/' to "~1".
 * @return a new string from cJSON_malloc (caller frees with cJSON_free), or NULL on no memory.
 */
char *kvsc_json_pointer_escape(const char *token);

/* Base64 of data through OpenSSL EVP_EncodeBlock; a new NUL-terminated string from cJSON_malloc. */
char *kvsc_base64(const unsigned char *data, size_t len);

/* Metrics: lock-free counters shared by every server thread. */
typedef struct kvsc_metrics kvsc_metrics_t;

kvsc_status_t kvsc_metrics_create(kvsc_metrics_t **metrics_p);
void kvsc_metrics_destroy(kvsc_metrics_t *metrics);
/* Count one request that ended in result, took seconds_ns, and emitted patch_ops operations. */
void kvsc_metrics_observe(kvsc_metrics_t *metrics, kvsc_result_t result, uint64_t duration_ns,
                          size_t patch_ops);
void kvsc_metrics_cert_reload(kvsc_metrics_t *metrics, int ok);
/* Prometheus text exposition; a new string from malloc (caller frees), NULL on no memory. */
char *kvsc_metrics_render(kvsc_metrics_t *metrics, const char *version, size_t *len_p);

/* The HTTPS server around kvsc_review(). */
typedef struct kvsc_server_cfg {
    const char *listen;    /* "ADDR:PORT", "[V6ADDR]:PORT"; port 0 picks a free one */
    const char *cert_file; /* PEM certificate (chain), reloaded when it changes */
    const char *key_file;  /* PEM private key, reloaded with the certificate */
    unsigned threads;      /* worker threads; 0 means one per CPU */
    int verbose;
    kvsc_inject_cfg_t inject;
} kvsc_server_cfg_t;

typedef struct kvsc_server kvsc_server_t;

/**
 * Bind, load the certificate and start serving.
 * @param cfg      settings; strings must outlive the server (borrowed).
 * @param metrics  counters (borrowed; must outlive the server).
 * @param server_p set to the new server on KVSC_OK; stop it with kvsc_server_stop().
 * @return KVSC_OK, KVSC_ERR_IO (bind, file or TLS errors; logged), KVSC_ERR_NO_MEMORY.
 */
kvsc_status_t kvsc_server_start(const kvsc_server_cfg_t *cfg, kvsc_metrics_t *metrics,
                                kvsc_server_t **server_p);
/* The bound "host:port", for the "listening on" line. */
const char *kvsc_server_address(const kvsc_server_t *server);
/* Reload certificate and key if either file changed; keeps the old pair if the new is bad. */
void kvsc_server_check_reload(kvsc_server_t *server);
/* Mark not ready, stop accepting, finish, free. Accepts NULL. */
void kvsc_server_stop(kvsc_server_t *server);

#endif
