/* SPDX-License-Identifier: Apache-2.0 */
/* config_int.h - resolved context settings from params, KVSHARE_* env and a JSON file. */
#ifndef KVS_CONFIG_INT_H
#define KVS_CONFIG_INT_H

#include "kvs_int.h"

/* KVSHARE_AUTH: peers prove a shared token (the default), or nobody proves
 * anything (an explicit opt-out). */
typedef enum kvs__auth_mode {
    KVS__AUTH_TOKEN = 0,
    KVS__AUTH_NONE,
} kvs__auth_mode_t;

/* KVSHARE_POLL_US: how long a thread that has just seen peer-plane traffic
 * keeps polling before it sleeps (peer.c; issue 15). Sleeping and being
 * woken costs more than a same-host round trip, so a reply expected within
 * this window is polled for; the cap keeps an idle engine from spinning. */
#define KVS__POLL_US_DEFAULT 100
/* KVSHARE_THREAD_POLL_US: the same for a progress thread after it had work.
 * Off by default: on the 2-core VM measured, a holder polling after its
 * reply took the core the reader was copying on (ratio 0.50 against 0.53
 * without, 0.39 against 0.45 with --lookup-thread; docs/transport.md). */
#define KVS__THREAD_POLL_US_DEFAULT 0
#define KVS__POLL_US_MAX            1000
/* KVSHARE_COPY_THREADS: helper threads that share a same-host fetch's copy
 * of 256 KiB or more with the thread that waits for it (copier_int.h). One
 * by default: a second memcpy stream took one copy from 14.5 to 21.5 GB/s
 * here; none on a host with one CPU. */
#define KVS__COPY_THREADS_DEFAULT 1
#define KVS__COPY_THREADS_MAX     8

typedef struct kvs__config {
    kvs_log_level_t log_level;
    uint64_t capacity_bytes;
    uint64_t slot_bytes; /* slot classes round block sizes up to this; 0: exact */
    kvs_strategy_t strategy;
    double high_watermark;
    double low_watermark;
    kvs_progress_mode_t progress;
    uint32_t poll_us;        /* KVSHARE_POLL_US: see KVS__POLL_US_DEFAULT */
    uint32_t thread_poll_us; /* KVSHARE_THREAD_POLL_US: see KVS__THREAD_POLL_US_DEFAULT */
    uint32_t copy_threads;   /* KVSHARE_COPY_THREADS: see KVS__COPY_THREADS_DEFAULT */
    bool shm_index;          /* KVSHARE_SHM_INDEX: auto (true) or off (index_int.h) */
    bool copy_stream;        /* KVSHARE_COPY_STREAM: auto (true) or off (copier_int.h) */
    uint32_t fetch_timeout_ms;
    uint32_t lease_timeout_ms;
    char listen[256];           /* "" = no listener */
    kvs__auth_mode_t auth;      /* default token: KVSHARE_AUTH_TOKEN_FILE required */
    char auth_token_file[4096]; /* "" = none given (an error unless auth is none) */
    char pool[1024];            /* "" = no pool */
    char transport[16];         /* auto, ucx or none */
    bool pool_node;             /* serve any layout, accept PUTs */
    bool prefault;              /* fault each arena's pages in when it is made */
    bool shm;                   /* KVSHARE_SHM: same-host peers map memory (auto) or not (off) */
    char host_socket_dir[64];   /* KVSHARE_HOST_SOCKET_DIR; "" = an abstract socket */
} kvs__config_t;

/* Fills *cfg. On failure writes one line naming the setting, its source and
 * the accepted values to errbuf (if any) and returns KVS_ERR_CONFIG (or
 * KVS_ERR_IO / KVS_ERR_NO_MEMORY). */
kvs_status_t kvs__config_resolve(const kvs_ctx_params_t *params, kvs__config_t *cfg, char *errbuf,
                                 size_t errbuf_len);

#endif
