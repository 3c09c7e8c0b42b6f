/* SPDX-License-Identifier: Apache-2.0 */
/* Internal interfaces of kvshare-controller: admission review, injection patch, metrics, server. */
#ifndef KVSC_CONTROLLER_INT_H
#define KVSC_CONTROLLER_INT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* The API server refuses objects larger than this, so no honest review is bigger. */
#define KVSC_MAX_BODY ((size_t)3 * 1024 * 1024)
/* Default of --max-body-memory: 32 MiB, ten full-size reviews in flight. It fits the 128 MiB
 * limit of k8s/deploy/deployment.yaml with what a review costs besides its body (the parsed
 * tree and the patch; docs/controller.md has the arithmetic). */
#define KVSC_DEFAULT_BODY_BUDGET ((size_t)32 * 1024 * 1024)

#define KVSC_LABEL_INJECT      "kvshare.io/inject"
#define KVSC_LABEL_ROLE        "kvshare.io/role"
#define KVSC_ANNOT_POOL        "kvshare.io/pool"
#define KVSC_ANNOT_AUTH_SECRET "kvshare.io/auth-secret"
#define KVSC_ANNOT_INJECTED    "kvshare.io/injected"
/* The pod's PYTHONHASHSEED (vLLM's NONE_HASH is the hash of this string, so every pod of a
 * pool must share it); absent: KVSC_DEFAULT_HASH_SEED. */
#define KVSC_ANNOT_HASH_SEED "kvshare.io/python-hash-seed"
/* Opt-in: a node directory (absolute path) shared by the node's kvshare processes as a
 * hostPath volume, where holders put the Unix sockets that hand same-host readers their
 * memfds (KVSHARE_HOST_SOCKET_DIR). Opt-in because Pod Security "baseline" refuses
 * hostPath volumes. */
#define KVSC_ANNOT_HOST_SOCKET "kvshare.io/host-socket-dir"
#define KVSC_DEFAULT_HASH_SEED "0"
/* Set by the webhook: where the pod's kvshare token comes from ("secret:<name>/<key>"),
 * "none" (the pool is open), or "missing" (kvshare in the pod will refuse to start). */
#define KVSC_ANNOT_INJECTED_AUTH "kvshare.io/injected-auth"
#define KVSC_INIT_NAME           "kvshare-init"
#define KVSC_VOLUME_LIB          "kvshare-lib"
#define KVSC_VOLUME_AUTH         "kvshare-auth"
#define KVSC_MOUNT_LIB           "/opt/kvshare"
#define KVSC_MOUNT_AUTH          "/var/run/secrets/kvshare"
#define KVSC_VOLUME_HOST         "kvshare-host"
#define KVSC_MOUNT_HOST          "/var/run/kvshare-host"
#define KVSC_SHIM_PATH           KVSC_MOUNT_LIB "/lib/libkvshare_preload.so"
/* The vLLM plugin package and its dist-info (copied from the image's dist/python). */
#define KVSC_PYTHON_PATH         KVSC_MOUNT_LIB "/python"
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

/* How a pod's KVCachePool authenticates, as far as the controller knows. */
typedef enum {
    KVSC_POOL_AUTH_UNKNOWN = 0, /* no such pool seen (not created yet, or no reconciler) */
    KVSC_POOL_AUTH_SECRET,      /* spec.authSecretRef: secret and key filled */
    KVSC_POOL_AUTH_OPEN,        /* no authSecretRef: the pool runs with KVSHARE_AUTH=none */
} kvsc_pool_auth_t;

/* Look up pool ns/name; fills secret and key (NUL-terminated) for KVSC_POOL_AUTH_SECRET.
 * Must be thread-safe. */
typedef kvsc_pool_auth_t (*kvsc_pool_auth_fn)(void *ud, const char *ns, const char *name,
                                              char *secret, size_t secret_len, char *key,
                                              size_t key_len);

/* What the injector needs to know; all strings are borrowed for the call. */
typedef struct kvsc_inject_cfg {
    const char *image;           /* image of the init container that carries the shim */
    const char *version;         /* value of the kvshare.io/injected annotation */
    unsigned listen_port;        /* port in KVSHARE_LISTEN */
    kvsc_pool_auth_fn pool_auth; /* NULL: every pool is KVSC_POOL_AUTH_UNKNOWN */
    void *pool_auth_ud;
} kvsc_inject_cfg_t;

/* The reconciler's record of every pool's authSecretRef (kvsc_pool_auth_cache_lookup is a
 * kvsc_pool_auth_fn over it). Thread-safe. */
typedef struct kvsc_pool_auth_cache kvsc_pool_auth_cache_t;
kvsc_status_t kvsc_pool_auth_cache_create(kvsc_pool_auth_cache_t **cache_p);
void kvsc_pool_auth_cache_destroy(kvsc_pool_auth_cache_t *cache); /* accepts NULL */
/* Record pool ns/name: secret NULL when it is open (skey NULL: "token"). Returns 1 when
 * this changed what was recorded (a new pool, or another Secret, key or mode), 0 when not,
 * -1 on no memory (the old record stays). */
int kvsc_pool_auth_cache_set(kvsc_pool_auth_cache_t *cache, const char *ns, const char *name,
                             const char *secret, const char *skey);
void kvsc_pool_auth_cache_remove(kvsc_pool_auth_cache_t *cache, const char *ns, const char *name);
kvsc_pool_auth_t kvsc_pool_auth_cache_lookup(void *cache, const char *ns, const char *name,
                                             char *secret, size_t secret_len, char *key,
                                             size_t key_len);

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
    KVSC_RESULT_BUSY,        /* 429: the request-body memory budget is spent; retry later */
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
    /* Bytes that request bodies may hold at once, across every connection; a request that
     * would go past it gets 429 with Retry-After. 0: KVSC_DEFAULT_BODY_BUDGET. */
    size_t body_budget;
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

/* ---- KVCachePool reconciler ------------------------------------------------------------- */

#define KVSC_POOL_GROUP_VERSION "kvshare.io/v1alpha1"
#define KVSC_POOL_KIND          "KVCachePool"
#define KVSC_LABEL_APP_NAME     "app.kubernetes.io/name"
#define KVSC_LABEL_MANAGED_BY   "app.kubernetes.io/managed-by"
#define KVSC_LABEL_POOL         "kvshare.io/pool"
#define KVSC_CACHE_APP          "kvshare-cache"
#define KVSC_CACHE_SUFFIX       "-cache"
#define KVSC_MANAGER            "kvshare-controller"
#define KVSC_CACHE_METRICS_PORT 9090u
/* "<name>-cache" must be a DNS-1035 label (63 characters) to name a Service. */
#define KVSC_REC_POOL_NAME_MAX (63 - (sizeof(KVSC_CACHE_SUFFIX) - 1))

/* What the desired objects are built from; strings borrowed. */
typedef struct kvsc_rec_cfg {
    const char *image;    /* image that runs `kvshare serve` */
    unsigned listen_port; /* kvshare data port of each cache node */
} kvsc_rec_cfg_t;

/* A pool's spec after validation; strings borrow from the pool JSON it was parsed from. */
typedef struct kvsc_pool {
    const char *namespace_;
    const char *name;
    const char *uid;
    long long generation;
    long long total_memory_gb;
    long long replicas;
    const char *strategy;
    /* spec.authSecretRef: the Secret (same namespace) and key holding the token the nodes
     * and their clients prove; auth_secret NULL: no authSecretRef, the pool runs open. */
    const char *auth_secret;
    const char *auth_key; /* default KVSC_AUTH_TOKEN_KEY */
    /* spec.hostSocketDir: the node directory (hostPath) where same-host memfd sockets live,
     * mounted at KVSC_MOUNT_HOST with KVSHARE_HOST_SOCKET_DIR; NULL: none. */
    const char *host_socket_dir;
} kvsc_pool_t;

/* Where a cache node or an injected pod finds the pool's token: the Secret is mounted
 * read-only (mode 0440) at KVSC_MOUNT_AUTH and KVSHARE_AUTH_TOKEN_FILE is
 * KVSC_MOUNT_AUTH "/" <key>. */
#define KVSC_ENV_AUTH_TOKEN_FILE "KVSHARE_AUTH_TOKEN_FILE"
#define KVSC_ENV_AUTH            "KVSHARE_AUTH"
#define KVSC_AUTH_MODE           0440

/* Secret names are DNS-1123 subdomains; keys are [-._a-zA-Z0-9]+, not "." or "..", at most
 * 253 characters. 1 when valid. */
int kvsc_valid_secret_key(const char *s);

/* A node directory for a hostPath volume: absolute, of [A-Za-z0-9._/-], no "..", 2 to 200
 * characters. 1 when valid. */
int kvsc_valid_host_dir(const char *d);

/**
 * Read and validate a KVCachePool object. Defaults: replicas 1, strategy "lru".
 * @param obj      the pool as the API server returned it (borrowed).
 * @param pool     filled on KVSC_OK, and its identity fields (namespace_, name, uid,
 *                 generation) also on KVSC_ERR_INVALID when they could be read.
 * @param reason_p on KVSC_ERR_INVALID: a static CamelCase condition reason naming the field
 *                 (InvalidReplicas, InvalidTotalMemoryGB, InvalidStrategy, InvalidName, ...).
 * @param msg      on KVSC_ERR_INVALID: a message naming the field and the accepted values.
 * @return KVSC_OK or KVSC_ERR_INVALID.
 */
kvsc_status_t kvsc_pool_parse(const cJSON *obj, kvsc_pool_t *pool, const char **reason_p, char *msg,
                              size_t msg_len);

/* The Deployment and the headless Service "<name>-cache" for a valid pool, as new cJSON
 * objects (caller deletes). KVSC_OK or KVSC_ERR_NO_MEMORY (then *obj_p is untouched). */
kvsc_status_t kvsc_desired_deployment(const kvsc_rec_cfg_t *cfg, const kvsc_pool_t *pool,
                                      cJSON **obj_p);
kvsc_status_t kvsc_desired_service(const kvsc_rec_cfg_t *cfg, const kvsc_pool_t *pool,
                                   cJSON **obj_p);

/* The part of a desired object that drift is judged on: the labels and the spec fields the
 * controller owns, without immutable fields (Deployment selector, Service clusterIP) or
 * ownerReferences (checked apart, by kvsc_controlled_by). When an existing object holds it
 * (kvsc_json_subset), nothing is applied. It is also a valid JSON merge patch (RFC 7386).
 * New object, caller deletes; NULL on no memory. */
cJSON *kvsc_update_patch(const cJSON *desired);

/* 1 when every field of want is in have with the same value (lists: same length, each
 * element a subset), so fields the API server defaults never count as drift. */
int kvsc_json_subset(const cJSON *want, const cJSON *have);

/* 1: obj has a controller ownerReference with this uid; 0: no controller reference;
 * -1: controlled by something else. */
int kvsc_controlled_by(const cJSON *obj, const char *uid);

/* The Ready condition the status should carry. */
typedef struct kvsc_ready {
    int ready;          /* condition status True/False */
    const char *reason; /* CamelCase */
    const char *message;
    long long ready_replicas;
    /* The Authenticated condition: 0 leaves it out (the spec could not be read); else
     * True with auth_secret/auth_key, or False (the pool is open) when auth_secret is NULL. */
    int auth_known;
    const char *auth_secret;
    const char *auth_key;
} kvsc_ready_t;

/**
 * Build the pool's desired .status: readyReplicas, observedGeneration, the Ready condition
 * and, when ready->auth_known, the Authenticated condition. lastTransitionTime is kept from
 * current_status while the condition's status does not change, so an unchanged pool gives an
 * identical status and no write.
 * @param current_status the pool's .status, or NULL (borrowed).
 * @param now_rfc3339    the time to stamp on a transition.
 * @return a new object (caller deletes), NULL on no memory.
 */
cJSON *kvsc_desired_status(const cJSON *current_status, long long generation,
                           const kvsc_ready_t *ready, const char *now_rfc3339);

/* Splits a watch stream into newline-terminated lines across arbitrary write chunks. */
typedef struct kvsc_lines {
    char *buf;
    size_t len, cap;
    size_t max; /* longest line accepted; 0 means KVSC_MAX_BODY * 4 */
} kvsc_lines_t;

/* Called once per non-empty line (no '\n', a trailing '\r' removed, NUL-terminated);
 * a nonzero return stops kvsc_lines_feed, which then returns that value. */
typedef int (*kvsc_line_cb)(void *ud, char *line, size_t len);

/* Feed bytes; returns 0, the callback's nonzero value, -1 (KVSC_ERR_NO_MEMORY) or
 * -2 (KVSC_ERR_INVALID: a line longer than max). Keeps a partial last line. */
int kvsc_lines_feed(kvsc_lines_t *lines, const char *data, size_t len, kvsc_line_cb cb, void *ud);
/* Frees the buffer and resets; accepts a zeroed struct. */
void kvsc_lines_free(kvsc_lines_t *lines);

/* Exponential backoff with a cap and "equal jitter": min(cap, base*2^attempt) scaled into
 * [1/2, 1] by rand (any 64-bit value), so retries spread out but never collapse to 0. */
uint64_t kvsc_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms, uint64_t rand);

/* Work queue of pool keys ("namespace/name"), deduplicated, with delayed retries. */
typedef struct kvsc_queue kvsc_queue_t;

kvsc_status_t kvsc_queue_create(kvsc_queue_t **queue_p);
void kvsc_queue_destroy(kvsc_queue_t *queue);
/* Queue key to be due after delay_ms (an earlier due time wins). */
kvsc_status_t kvsc_queue_add(kvsc_queue_t *queue, const char *key, uint64_t delay_ms);
/* Wait up to wait_ms for a due key; 1 with *key_p (caller frees), 0 on timeout or close,
 * -1 on no memory. */
int kvsc_queue_pop(kvsc_queue_t *queue, uint64_t wait_ms, char **key_p);
/* Failures recorded for key by kvsc_queue_retry since its last kvsc_queue_forget. */
unsigned kvsc_queue_failures(kvsc_queue_t *queue, const char *key);
/* Count a failure and requeue key after delay_ms. */
kvsc_status_t kvsc_queue_retry(kvsc_queue_t *queue, const char *key, uint64_t delay_ms);
/* Reset key's failure count. */
void kvsc_queue_forget(kvsc_queue_t *queue, const char *key);
/* Wake every waiter; later pops return 0 at once. */
void kvsc_queue_close(kvsc_queue_t *queue);

/* The API client (libcurl). */
typedef struct kvsc_kube_cfg {
    const char *api;        /* "https://host:port", no trailing slash needed */
    const char *ca_file;    /* PEM bundle to verify the API server; NULL: system CAs */
    const char *token_file; /* bearer token, re-read when it changes; NULL: none */
    int allow_http;         /* let curl speak plain http (--insecure-kube-api); else https only */
    int verbose;
} kvsc_kube_cfg_t;

typedef struct kvsc_kube kvsc_kube_t;
typedef struct kvsc_kube_conn kvsc_kube_conn_t;

/* Copies cfg. In-cluster settings come from kvsc_kube_incluster_cfg(). Logs why on failure:
 * KVSC_ERR_IO (unreadable CA or token file), KVSC_ERR_NO_MEMORY. */
kvsc_status_t kvsc_kube_create(const kvsc_kube_cfg_t *cfg, kvsc_kube_t **kube_p);
/* After every connection is closed. Accepts NULL. */
void kvsc_kube_destroy(kvsc_kube_t *kube);
/* Abort transfers in flight (within about a second) and make new ones fail at once. */
void kvsc_kube_cancel(kvsc_kube_t *kube);
int kvsc_kube_cancelled(kvsc_kube_t *kube);

/* The in-cluster settings: KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount files.
 * Fills api (a buffer of api_len) and points ca/token at the standard paths;
 * KVSC_ERR_INVALID when KUBERNETES_SERVICE_HOST is unset. */
kvsc_status_t kvsc_kube_incluster_cfg(kvsc_kube_cfg_t *cfg, char *api, size_t api_len);

/* One connection (a reusable curl handle) per thread. */
kvsc_status_t kvsc_kube_conn_open(kvsc_kube_t *kube, kvsc_kube_conn_t **conn_p);
void kvsc_kube_conn_close(kvsc_kube_conn_t *conn);

typedef struct kvsc_kube_resp {
    long code;  /* HTTP status */
    cJSON *doc; /* the parsed body, NULL when empty or not JSON; caller deletes */
} kvsc_kube_resp_t;

/**
 * One request. path starts with "/" and carries any query.
 * @param body         NUL-terminated request body or NULL; content_type is sent with it.
 * @return KVSC_OK when a response arrived (any status, see resp->code); KVSC_ERR_IO on a
 *         transport failure or cancel (logged); KVSC_ERR_NO_MEMORY.
 */
kvsc_status_t kvsc_kube_request(kvsc_kube_conn_t *conn, const char *method, const char *path,
                                const char *content_type, const char *body, kvsc_kube_resp_t *resp);

/**
 * A watch: GET path and hand each line of the stream to cb until the server ends it, cb
 * returns nonzero, or the transfer fails. *code_p gets the HTTP status (0 when none came).
 * @return KVSC_OK when the stream ended cleanly or cb stopped it; KVSC_ERR_IO otherwise.
 */
kvsc_status_t kvsc_kube_watch(kvsc_kube_conn_t *conn, const char *path, long timeout_s,
                              kvsc_line_cb cb, void *ud, long *code_p);

/* The reconciler: watches, work queue and reconcile loop, in threads of its own. */
typedef struct kvsc_reconciler_cfg {
    kvsc_rec_cfg_t build;
    const char *namespace_;            /* NULL: every namespace */
    unsigned backoff_max_ms;           /* cap of every retry delay */
    unsigned resync_s;                 /* relist pools this often */
    unsigned watch_timeout_s;          /* longest single watch request */
    kvsc_pool_auth_cache_t *pool_auth; /* filled from every pool read; may be NULL */
    int verbose;
} kvsc_reconciler_cfg_t;

typedef struct kvsc_reconciler kvsc_reconciler_t;

/* Start the threads. cfg strings and kube must outlive the reconciler. */
kvsc_status_t kvsc_reconciler_start(const kvsc_reconciler_cfg_t *cfg, kvsc_kube_t *kube,
                                    kvsc_reconciler_t **rec_p);
/* Cancel, join and free. Accepts NULL. */
void kvsc_reconciler_stop(kvsc_reconciler_t *rec);
/* Prometheus text of the reconciler's counters; a new string from malloc, NULL on no memory. */
char *kvsc_reconciler_metrics_render(void *rec, size_t *len_p);

/* Appends extra Prometheus text (the reconciler's) to every /metrics answer. Set before the
 * server starts; fn returns a malloc'ed string or NULL on no memory. Defined in metrics.c. */
void kvsc_metrics_set_extra(kvsc_metrics_t *metrics, char *(*fn)(void *ud, size_t *len_p),
                            void *ud);

#endif
