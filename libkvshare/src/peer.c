/* SPDX-License-Identifier: Apache-2.0 */
/* peer.c - the peer plane: bootstrap handshake, sessions, server handlers, fetches and puts.
 *
 * Trust: a connection starts on kvshare's own TCP socket (boot.c). Until
 * the peer has proved the shared secret (HMAC over both nonces) it may send
 * at most KVS_PROTO_MAX_PREAUTH bytes, must finish within
 * KVS_PEER_BOOT_TIMEOUT_MS, and reaches no transport: endpoints are made
 * from transport addresses only after the proof. Every later message
 * carries the 128-bit session the server chose, and the session (with the
 * direction flag) is the only way a message reaches a connection; request
 * ids are matched within that connection. Data pieces are matched to the
 * exact piece they must be, once.
 *
 * Threading: one (recursive) lock serialises the peer plane and every call
 * into the transport. Transport callbacks run inside its progress(), under
 * the lock; they only record, and messages are handled after progress()
 * returns. In thread mode a progress thread polls the transport's event fd,
 * a wake eventfd and the bootstrap sockets; callers waiting for their own
 * replies drive progress themselves while there is work. */
#include "peer_int.h"

#include "auth_int.h"
#include "boot_int.h"
#include "copier_int.h"
#include "index_int.h"
#include "pool_int.h"
#include "proto_int.h"
#include "pull_int.h"
#include "shm_int.h"
#include "xfer_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define IDLE_WAKE_MS 20
/* A release of blocks found in a holder's index (no lease) is told to the
 * holder in a READ at most this late, with the other releases to it by
 * then (at most READ_BATCH blocks a message): each message wakes the
 * holder, which cost a same-host fetch of 64 blocks of 16 KiB 10-95 us a
 * batch when sent with every release (docs/transport.md). */
#define READ_DEFER_NS 2000000u
#define READ_BATCH    4096u
/* A progress step longer than this is logged (stall_check). */
#define STALL_WARN_NS 1000000000ull
/* Coalesced GETs stop growing here: past it UCX's CMA path slows down
 * (measured: 16 MiB GETs ran at a tenth of 256 KiB ones). */
#define MAX_RUN    (1u << 20)
#define GEN_WINDOW (64u << 10)
#define MAX_PIECES KVS_PROTO_MAX_PIECES
/* A peer that has proved the secret may send a larger HELLO_ACK (regions). */
#define MAX_ACK_BODY (16u << 20)

typedef struct conn conn_t;

/* Memory we expose to peers. */
typedef struct region {
    uint32_t id;
    uint8_t *base;
    size_t len;
    kvs_mem_type_t type; /* KVS_MEM_CUDA: shm.c exports it as a VMM allocation */
    void *memh;
    const void *rkey;
    size_t rkey_len;
    struct region *next;
} region_t;

/* A peer's region as we know it: unpacked on first use, then cached. */
typedef struct rregion {
    uint32_t id;
    uint64_t base, len;
    uint8_t *rkey_buf;
    uint32_t rkey_len;
    void *rkey;
    /* Nonzero once the holder's table no longer has it: the last request
     * id of the connection then. New GETs cannot name it; the rkey goes
     * once no request up to that id has a GET in flight (reap_rregions). */
    uint64_t gone_after;
} rregion_t;

typedef struct srv_lease {
    uint64_t id;
    kvs_lease_h lease;
    uint64_t deadline_ns;
    int pushes;             /* pushes still reading it */
    uint64_t table_version; /* the region table its reply carried (0: none) */
    struct srv_lease *next;
} srv_lease_t;

typedef enum conn_state {
    S_WAIT_HELLO, /* server, pre-auth */
    S_WAIT_AUTH,  /* server, pre-auth */
    S_READY,
    S_FAILED,
} conn_state_t;

struct conn {
    kvs__peer_t *pp;
    bool server;
    conn_state_t state;
    kvs_status_t fail_status;
    char peer[256];
    char why[256];
    uint64_t layout_id;       /* server: of the pool it serves; client: ours */
    uint64_t asked_layout_id; /* server: the one the client named (LOOKUP carries it) */
    bool xview;               /* client: the holder's view differs; fetches plan (xfer.c) */
    kvs__view_t lview, rview;
    uint8_t session[KVS_PROTO_SESSION_LEN];
    int fd; /* bootstrap socket: the handshake, then liveness */
    /* Same host: the control channel (kvs__shm_peer_ctl), a Unix socket
     * beside the transport for LOOKUP, LOOKUP_REPLY and RELEASE; -1: none. */
    int ctl_fd;
    bool ctl_tried;        /* client: asked for one (once per connection) */
    bool ctl_had;          /* server: had one; replies took two carriers (take_regions) */
    unsigned ctl_waiters;  /* client: callers waiting for a reply that may come on it */
    kvs__boot_srv_t *boot; /* server, pre-auth: the handshake (boot.c) */
    uint64_t boot_deadline_ns;
    uint64_t accepted_seq;
    void *ep;
    bool rma;
    /* Client: the node could not read a pull put of ours (its GET failed,
     * or it has no RMA to us): puts on this connection push their blocks. */
    bool push_puts;
    bool identify_tried; /* client: told a same-host node our pid (shm.c) */
    /* Server: the client on this host proved this session over the
     * same-host socket (shm.c), which named its pid: its pull puts are read
     * with process_vm_readv on a pidfd that says when the process is gone. */
    bool put_direct;
    pid_t put_pid;
    int put_pidfd;
    /* Server: the client's memory it offered on that socket, mapped
     * read-only: its pull puts from these regions are copied with memcpy
     * (mapped_reads), no kernel copy. Kept for the connection's life. */
    kvs__shm_pmap_t *pmaps[KVS_PEER_MAX_PUT_MAPS];
    uint32_t npmaps;
    bool pmap_said; /* the first put copied from them was logged */
    /* Client: the regions of our puts considered for an offer (shm.c
     * decides which have something to offer); a new one makes the next put
     * offer; offered_ok: the node said it mapped it (a CUDA region's puts
     * need that: the node cannot read CUDA memory any other way). */
    uint32_t offered[KVS_PEER_MAX_PUT_MAPS];
    bool offered_ok[KVS_PEER_MAX_PUT_MAPS];
    uint32_t noffered;
    bool cuda_put_said; /* a CUDA put refused on this connection was logged */
    /* Set inside transport callbacks, where endpoints must not be closed;
     * progress_locked() fails the connection right after. */
    kvs_status_t doom_status;
    char doom_why[160];
    rregion_t *rr;
    size_t nrr, caprr, nrr_gone;
    uint32_t rr_max_id;   /* the highest region id the peer has named (they only grow) */
    bool warming;         /* warm_get's GET may be using an rkey of rr */
    kvs__shm_peer_t *shm; /* client, same host: the holder's memory mapped (shm.c) */
    bool cuda_dst_said;   /* client: a fetch into CUDA memory it could not serve was logged */
    /* Client: the holder's mapped index (index_int.h) is not used on this
     * connection: it has none, or what it showed was no index (logged). */
    bool ix_off;
    /* Client: the holder's index as mapped (kvs__shm_peer_index; it lasts
     * as long as c->shm), and the holder's region table version our table
     * is known to be at least as new as (ix_known: one is): the region
     * version the index showed before a LOOKUP whose reply we applied. */
    const uint8_t *ix_map;
    size_t ix_len;
    bool ix_known;
    uint64_t ix_regions;
    /* Client: pool records as the last lookup copied them (98 KiB: kept,
     * not allocated per lookup), taken by one lookup at a time. */
    kvs__index_geo_t *ix_geo;
    bool ix_geo_busy;
    /* Client: blocks read through the index whose READ has not gone yet
     * (read_flush): one message for many releases, so that a reader does
     * not wake the holder once a batch. All with the same readers count. */
    uint32_t *rd_idx;
    uint64_t *rd_serial;
    uint32_t rd_n, rd_cap, rd_readers;
    uint64_t rd_since_ns; /* when the oldest of them was released */
    srv_lease_t *leases;
    uint32_t nleases;
    uint32_t npushes, nputs, ninbox;
    /* Client: PUT batches sent here that the node has not answered (a
     * PUT_DONE, or an ERROR that ends the batch). The node takes at most
     * KVS_PEER_MAX_PUTS at once from a connection and refuses more BUSY,
     * so the rest wait here (put_more). */
    uint32_t puts_out;
    uint64_t staging_bytes;
    uint64_t regions_sent;
    /* Server: the newest region table the client is known to have applied
     * (a RELEASE of a lease whose reply carried it). Client: the lease id
     * of the newest LOOKUP_REPLY whose table it applied. See table_newer. */
    uint64_t regions_acked;
    uint64_t table_lease;
    uint64_t next_req_id;
    int refs; /* +1 while listed; client leases and requests hold more */
    conn_t *next;
};

typedef struct waiter {
    uint64_t req_id;
    conn_t *conn;
    bool done;
    uint8_t *msg;
    size_t len;
    struct waiter *next;
} waiter_t;

typedef struct rlease {
    conn_t *conn;
    uint64_t lease_id;
    uint32_t hits;
    uint8_t *blocks;
    size_t blocks_len;
    const uint8_t **block_at;
    /* Found in the holder's mapped index (index_lookup): no lease at the
     * holder, only generations stand between an eviction and the copy; the
     * holder's entries read, for the READ that ends it. */
    bool via_index;
    uint32_t *ix_idx;
    uint64_t *ix_serial;
} rlease_t;

/* A fetch or put in flight (client). */
typedef struct preq {
    kvs__peer_t *pp;
    conn_t *conn;
    rlease_t *rl;
    struct kvs_pool *dst;
    uint32_t *dst_ids;
    size_t first, count;
    uint64_t req_id;
    uint64_t deadline_ns;
    kvs_status_t status;
    int stage;       /* GET: 1 data, 2 generations */
    int outstanding; /* transport operations whose callbacks are pending */
    bool push;       /* AM path: pieces arrive as DATA */
    bool done_msg;   /* FETCH_DONE received */
    bool is_put;
    /* Pull put: PUT messages req_id .. req_id + nreq - 1 (one per batch),
     * each answered by one PUT_DONE (a bit per batch once answered); at
     * most KVS_PEER_PUT_WINDOW batches are out at once, the next goes out
     * as one is answered. Keys and ids are copied: the caller's arrays need
     * not outlive kvs_put(). */
    bool pull;
    uint32_t nreq, sent, answered, per_batch;
    /* Put batches the node has answered, by PUT_DONE or an ERROR that ends
     * them (c->puts_out counts sent - settled; push puts count as one). */
    uint32_t settled;
    uint8_t *batch_done;
    uint8_t *batch_how; /* per batch: BATCH_PULL, BATCH_PUSH_ASKED or BATCH_PUSH_SENT */
    struct pull_src *src;
    uint64_t *gens_now;
    uint8_t *genwin;
    uint64_t genwin_base;
    size_t bytes_expected, bytes_got;
    size_t data_bytes; /* GET: the data stage's bytes (the generations' stage reuses the above) */
    /* AM path: one bit per (block, segment) piece, set when it is claimed */
    uint8_t *seen;
    size_t pieces, landed;
    /* Across views: the plan, its staging, each block's first range index */
    kvs__xfer_t *x;
    uint8_t *xbuf;
    size_t *range_at;
    /* Same host, into host memory: the copy from the holder's mapping waits
     * (MAPPED_PENDING) for the first thread of ours that waits: on this
     * request, or on a lookup's reply, so a pipelined caller's next lookup
     * crosses the wire while this copy runs (run_mapped_copy). */
    uint8_t mapped;
    struct preq *next;
} preq_t;

enum { MAPPED_NONE = 0, MAPPED_PENDING = 1, MAPPED_RUNNING = 2 };

/* Blocks a peer is putting into this pool node (server). */
typedef struct sput {
    conn_t *conn;
    uint64_t req_id;
    uint64_t layout_id;
    uint32_t n;
    kvs_key_t *keys;
    uint32_t nchunks;
    uint32_t *chunk_off; /* nchunks + 1 offsets within a block */
    size_t block_bytes;
    uint8_t *staging;
    uint8_t *seen; /* one bit per piece: claimed */
    size_t pieces, landed;
    int outstanding;
    bool dead;
    uint64_t deadline_ns;
    /* Pull (the node GETs into arena slots it reserved): no staging */
    bool pull;
    uint32_t cls;
    uint32_t *slots; /* reserved until published or given back */
    size_t bytes_expected, bytes_got;
    /* A read of ours failed (rkey unpack, GET, flush): the client may push
     * the same batch instead (KVS_ERR_TRANSPORT tells it so). */
    bool rma_failed;
    struct sput *next;
} sput_t;

/* A push in flight (server): posted a window at a time. */
typedef struct push {
    conn_t *conn;
    srv_lease_t *sl;
    uint64_t req_id;
    uint32_t first, count;
    uint32_t *chunks;
    uint16_t nchunks;
    /* Ranged FETCH: set k is ranges[set_at[k] .. set_at[k+1]) */
    kvs__range_t *ranges;
    uint32_t *set_at;
    uint16_t *set_of;
    uint32_t next_block; /* cursor */
    uint32_t next_piece; /* within next_block: a block of many ranges spans windows */
    int outstanding;
    kvs_status_t status;
    struct push *next;
} push_t;

/* A connection being made in the background (kvs_peer_connect). */
typedef struct dialer {
    kvs__peer_t *pp;
    char peer[256];
    uint64_t layout_id;
    uint32_t timeout_ms;
    bool done;
    kvs_status_t status;
    pthread_t thread;
    struct dialer *next;
} dialer_t;

typedef struct inmsg {
    conn_t *conn;
    uint8_t *buf;
    size_t len;
    bool ready;
    struct inmsg *next;
} inmsg_t;

/* Whether polling has been paying off (poll_try / poll_learn). */
typedef struct poll_odds {
    unsigned score; /* moving average of hits, 0-256 */
    unsigned skipped;
} poll_odds_t;

struct kvs__peer {
    struct kvs_ctx *ctx;
    const kvs__logger_t *log;
    const kvs__transport_ops_t *ops;
    void *tl;
    kvs__tl_events_t ev;
    const uint8_t *addr;
    size_t addr_len;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool thread_mode;
    uint64_t poll_ns;         /* KVSHARE_POLL_US: callers' polling window (see poll_window) */
    uint64_t tpoll_ns;        /* KVSHARE_THREAD_POLL_US: the progress thread's */
    uint64_t last_work_ns;    /* when the progress thread last found something to do */
    uint64_t stall_warned_ns; /* the last stall warning (stall_check) */
    unsigned pollers;         /* callers polling for a reply (wait_idle) */
    unsigned mapped_pending;  /* requests whose mapped copy waits (MAPPED_PENDING) */
    poll_odds_t wait_odds;    /* did callers' windows catch their replies (lock held) */
    poll_odds_t spin_odds;    /* did the progress thread's windows catch work (its own) */
    pthread_t thread;
    bool thread_started, thread_running, stopping;
    int wakefd;
    bool kick_due; /* kick(): the progress thread is woken at the next unlock */
    int lfd;
    char listen_addr[300];
    uint8_t secret[4096];
    size_t secret_len;
    bool open;      /* KVSHARE_AUTH=none */
    bool no_secret; /* auth on, but no token: may not talk to peers */
    region_t *regions;
    uint32_t next_region_id;
    uint64_t regions_version;
    conn_t *conns;
    uint32_t npreauth, nready;
    uint64_t accept_seq;
    waiter_t *waiters;
    preq_t *reqs;
    preq_t *zombies;
    push_t *pushes;
    sput_t *sputs;
    dialer_t *dialers;
    uint32_t ndialers;
    inmsg_t *inbox, **inbox_tail;
    uint8_t *ctl_buf;  /* KVS_PEER_CTL_MAX: a control channel's record (ctl_read) */
    uint64_t ctl_sent; /* messages sent on control channels (lock held; read relaxed) */
    uint64_t next_lease_id;
    uint64_t last_boot_poll_ns;
    uint64_t dropped;       /* messages that matched no session */
    uint64_t preauth_fails; /* connections dropped before authenticating */
    struct pollfd *poll_fds;
    conn_t **poll_who;
    size_t poll_cap;
    kvs__piece_loc_t *scratch_locs;
    kvs__piece_t *scratch_pieces;
    bool shm_on;             /* KVSHARE_SHM=auto */
    kvs__shm_srv_t *shm_srv; /* hands our memfds to same-host readers */
    uint64_t shm_bytes;      /* fetched through mapped memory (atomic builtins) */
    kvs__copier_t *copier;   /* KVSHARE_COPY_THREADS: shares those copies (copier_int.h) */
    /* The caller and the helpers take every CPU this process may use: a
     * copy run while waiting for a reply goes without helpers (wait_until). */
    bool copy_leaves_core;
    bool copy_stream; /* KVSHARE_COPY_STREAM: large same-host copies store around the caches */
    /* KVSHARE_SHM_INDEX: ours, which same-host readers map (holder; NULL:
     * none), and whether we read holders' (reader). */
    struct kvs__index *index;
    bool index_on;
    /* Lookups the holder's index answered, and those it sent to the holder
     * instead (busy, unsure or incomplete), on every connection (lock held). */
    uint64_t index_answered, index_asked;
    /* Blocks our puts did not offer because the node's index showed it
     * held them (atomic builtins). */
    uint64_t put_held_blocks;
    /* Our puts' blocks stored by the node's reads vs by our pushes, and
     * connections that fell back from pull to push (lock held). */
    uint64_t put_pulled_blocks, put_pushed_blocks, put_fallbacks;
};

static void conn_fail(conn_t *c, kvs_status_t st, const char *fmt, ...) KVS_PRINTF(3, 4);

static uint64_t now_ns(void)
{
    return kvs__now_ns();
}

static void lock(kvs__peer_t *pp)
{
    pthread_mutex_lock(&pp->lock);
}

/* Wakes the progress thread from its poll(). */
static void wake(kvs__peer_t *pp)
{
    if (pp->wakefd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(pp->wakefd, &one, sizeof(one));
        (void)n; /* a full counter already means "wake up" */
    }
}

/* A kick asked for under the lock, now (lock held; before a wait on the
 * condition, which lets the lock go without unlock()). */
static void kick_now(kvs__peer_t *pp)
{
    if (pp->kick_due) {
        pp->kick_due = false;
        wake(pp);
    }
}

static void unlock(kvs__peer_t *pp)
{
    bool due = pp->kick_due;
    pp->kick_due = false;
    pthread_mutex_unlock(&pp->lock);
    if (due)
        wake(pp);
}

/* The progress thread has work (lock held): it is woken once the lock is
 * let go. Woken before, it would only wait for the lock the caller holds,
 * and be woken a second time when the caller lets it go: two context
 * switches where one will do (seen as a pair per kvs_put between an
 * engine's thread and its progress thread, `kvshare bench pool`). */
static void kick(kvs__peer_t *pp)
{
    pp->kick_due = true;
}

static bool bit_test(const uint8_t *bits, size_t i)
{
    return ((unsigned)bits[i >> 3] >> (i & 7u)) & 1u;
}

static bool bit_claim(uint8_t *bits, size_t i)
{
    uint8_t m = (uint8_t)(1u << (i & 7));
    if (bits[i >> 3] & m)
        return false;
    bits[i >> 3] |= m;
    return true;
}

/* ---------------------------------------------------------------------- */
/* Sending over the transport                                               */
/* ---------------------------------------------------------------------- */
static void msg_sent(void *arg, kvs_status_t st, size_t len)
{
    (void)st;
    (void)len;
    kvs__free(arg);
}

/* The control channel (same host, kvs__shm_peer_ctl) carries what a
 * fetch's every batch sends: LOOKUP, RELEASE and READ one way, LOOKUP_REPLY
 * the other; and a pull put's batches, PUT one way and PUT_DONE the other
 * (over UCX's TCP loopback they cost the nodes a quarter of their time in
 * `kvshare bench pool`). Each is one SOCK_SEQPACKET record. On the 2-core
 * VM a LOOKUP round trip and a RELEASE through the transport (UCX over
 * TCP) cost about 53 us a batch; bare sockets with the same sizes and
 * timing, 37 us over TCP and 30 us over a Unix socket (tests kept in
 * docs/transport.md). Other messages,
 * and any that does not fit or finds the socket full, take the transport:
 * a reply may so overtake an earlier one. Region tables are what that could
 * break (a reply naming a region whose table is still on its way, or an
 * older table applied after a newer one); srv_lookup and table_newer see to
 * both. Put batches do not care: each is answered once, and a PUT's regions
 * only add to what the node knows (ids are never reused). True when sent. */
static bool ctl_send(conn_t *c, const uint8_t *data, size_t len)
{
    kvs__hdr_t h;
    if (len > KVS_PEER_CTL_MAX ||
        kvs__proto_decode_hdr(data, len, KVS_PROTO_MAX_BODY, &h, NULL, 0) != KVS_OK)
        return false;
    bool ours = c->server ? h.type == KVS_MSG_LOOKUP_REPLY || h.type == KVS_MSG_PUT_DONE
                          : h.type == KVS_MSG_LOOKUP || h.type == KVS_MSG_RELEASE ||
                                h.type == KVS_MSG_READ ||
                                (h.type == KVS_MSG_PUT && (h.flags & KVS_PROTO_FLAG_PULL));
    if (!ours)
        return false;
    ssize_t k = send(c->ctl_fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k == (ssize_t)len) {
        __atomic_fetch_add(&c->pp->ctl_sent, 1, __ATOMIC_RELAXED);
        return true;
    }
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return false;
    kvs__debug(c->pp->log, "peer %s: control channel closed (%s): the transport only", c->peer,
               k < 0 ? strerror(errno) : "short send");
    close(c->ctl_fd);
    c->ctl_fd = -1;
    return false;
}

/* Sends a finished message: on the control channel when it takes it, else
 * its header as the AM header, the body as the payload. Takes the buffer. */
static kvs_status_t send_buf(conn_t *c, kvs__buf_t *b)
{
    kvs__peer_t *pp = c->pp;
    if (b->failed || b->len < KVS_PROTO_HDR_LEN) {
        kvs__buf_free(b);
        return KVS_ERR_NO_MEMORY;
    }
    uint8_t *data = b->data;
    size_t len = b->len;
    kvs__buf_init(b);
    if (c->ep == NULL || c->state != S_READY) {
        kvs__free(data);
        return KVS_ERR_PEER_FAILED;
    }
    if (c->ctl_fd >= 0 && ctl_send(c, data, len)) {
        kvs__free(data);
        return KVS_OK;
    }
    kvs_status_t st =
        pp->ops->am_send(pp->tl, c->ep, data, KVS_PROTO_HDR_LEN, data + KVS_PROTO_HDR_LEN,
                         len - KVS_PROTO_HDR_LEN, msg_sent, data);
    if (st == KVS_INPROGRESS)
        kick(pp); /* the transport kept it: progress must send it */
    if (st != KVS_INPROGRESS)
        kvs__free(data);
    return st == KVS_INPROGRESS ? KVS_OK : st;
}

static uint32_t dir_flag(const conn_t *c)
{
    return c->server ? KVS_PROTO_FLAG_FROM_SERVER : 0;
}

static void send_error(conn_t *c, uint64_t req_id, kvs_status_t status, const char *text)
{
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_error(&b, req_id, dir_flag(c), c->session, status, text);
    send_buf(c, &b);
}

/* ---------------------------------------------------------------------- */
/* Connections                                                              */
/* ---------------------------------------------------------------------- */
static void release_server_leases(conn_t *c)
{
    while (c->leases != NULL) {
        srv_lease_t *l = c->leases;
        c->leases = l->next;
        kvs_lease_release(l->lease);
        kvs__free(l);
    }
    c->nleases = 0;
}

static void conn_close_io(conn_t *c)
{
    kvs__peer_t *pp = c->pp;
    if (c->ep != NULL) {
        void *ep = c->ep;
        c->ep = NULL;
        pp->ops->disconnect(pp->tl, ep);
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->ctl_fd >= 0) {
        close(c->ctl_fd);
        c->ctl_fd = -1;
    }
}

static void conn_free(conn_t *c)
{
    kvs__peer_t *pp = c->pp;
    for (size_t i = 0; i < c->nrr; i++) {
        if (c->rr[i].rkey != NULL)
            pp->ops->rkey_destroy(pp->tl, c->rr[i].rkey);
        kvs__free(c->rr[i].rkey_buf);
    }
    kvs__free(c->rr);
    kvs__free(c->ix_geo);
    kvs__free(c->rd_idx);
    kvs__free(c->rd_serial);
    kvs__shm_peer_free(c->shm);
    if (c->put_direct)
        close(c->put_pidfd);
    for (uint32_t i = 0; i < c->npmaps; i++)
        kvs__shm_pmap_free(c->pmaps[i]);
    release_server_leases(c);
    conn_close_io(c);
    kvs__free(c->boot);
    kvs__free(c);
}

static void conn_unlink(conn_t *c)
{
    kvs__peer_t *pp = c->pp;
    for (conn_t **cp = &pp->conns; *cp != NULL; cp = &(*cp)->next) {
        if (*cp == c) {
            *cp = c->next;
            c->refs--;
            return;
        }
    }
}

static void conn_unref(conn_t *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

/* Fails a connection: every waiter and request on it completes with @st,
 * its endpoints close (which stops anything that could still land), its
 * leases end, and it leaves the table so the next use reconnects. */
static void conn_fail(conn_t *c, kvs_status_t st, const char *fmt, ...)
{
    kvs__peer_t *pp = c->pp;
    if (c->state == S_FAILED)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
    if (c->state != S_READY && c->server) {
        /* Hostile input must not flood the log: the first few, then one in
         * a thousand. */
        if (pp->preauth_fails++ < 10 || pp->preauth_fails % 1000 == 0)
            kvs__warn(pp->log, "peer %s: handshake refused: %s (%llu so far)", c->peer, c->why,
                      (unsigned long long)pp->preauth_fails);
    } else if (c->server && st == KVS_ERR_PEER_FAILED) {
        kvs__info(pp->log, "peer %s: disconnected (%s)", c->peer, c->why);
    } else {
        kvs__warn(pp->log, "peer %s: %s", c->peer, c->why);
    }
    if (c->state == S_READY)
        pp->nready--;
    else if (c->server)
        pp->npreauth--;
    c->state = S_FAILED;
    c->fail_status = st;
    release_server_leases(c);
    for (waiter_t *w = pp->waiters; w != NULL; w = w->next)
        if (w->conn == c)
            w->done = true;
    for (preq_t *r = pp->reqs; r != NULL; r = r->next)
        if (r->conn == c && r->status == KVS_INPROGRESS)
            r->status = st;
    for (push_t *p = pp->pushes; p != NULL; p = p->next) {
        if (p->conn == c) {
            p->status = st;
            p->conn = NULL;
            p->sl = NULL; /* its lease went with the connection */
        }
    }
    for (sput_t *p = pp->sputs; p != NULL; p = p->next) {
        if (p->conn == c) {
            p->dead = true;
            p->conn = NULL;
        }
    }
    conn_close_io(c);
    conn_unlink(c);
    if (c->refs == 0)
        conn_free(c);
    pthread_cond_broadcast(&pp->cond);
}

static conn_t *conn_new(kvs__peer_t *pp, bool server)
{
    conn_t *c = kvs__calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->pp = pp;
    c->server = server;
    c->fd = -1;
    c->ctl_fd = -1;
    c->refs = 1; /* the list's */
    c->next = pp->conns;
    pp->conns = c;
    return c;
}

/* The connection a message belongs to: by session and direction only. */
static conn_t *conn_by_session(kvs__peer_t *pp, const uint8_t *session, bool to_server)
{
    for (conn_t *c = pp->conns; c != NULL; c = c->next)
        if (c->state == S_READY && c->server == to_server &&
            CRYPTO_memcmp(c->session, session, KVS_PROTO_SESSION_LEN) == 0)
            return c;
    return NULL;
}

static void conn_doom(conn_t *c, kvs_status_t st, const char *fmt, ...) KVS_PRINTF(3, 4);

static void conn_doom(conn_t *c, kvs_status_t st, const char *fmt, ...)
{
    if (c->doom_status != KVS_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->doom_why, sizeof(c->doom_why), fmt, ap);
    va_end(ap);
    c->doom_status = st;
}

static void on_ep_error(void *arg, void *ep_user, kvs_status_t st)
{
    (void)arg;
    conn_doom(ep_user, KVS_ERR_PEER_FAILED, "transport endpoint failed: %s", kvs_status_string(st));
}

/* ---------------------------------------------------------------------- */
/* Authentication                                                           */
/* ---------------------------------------------------------------------- */
static void proof(const kvs__peer_t *pp, const char *role, const uint8_t *nc, const uint8_t *ns,
                  uint8_t *out)
{
    kvs__boot_proof(pp->secret, pp->secret_len, pp->open, role, nc, ns, out);
}

/* ---------------------------------------------------------------------- */
/* Regions                                                                  */
/* ---------------------------------------------------------------------- */
static const region_t *region_of(const kvs__peer_t *pp, const void *addr, size_t len)
{
    const uint8_t *a = addr;
    for (const region_t *r = pp->regions; r != NULL; r = r->next)
        if (a >= r->base && len <= r->len && (size_t)(a - r->base) <= r->len - len)
            return r;
    return NULL;
}

static void put_regions(kvs__peer_t *pp, conn_t *c, kvs__buf_t *b)
{
    uint32_t n = 0;
    size_t count_at = b->len;
    kvs__buf_u32(b, 0);
    for (const region_t *r = pp->regions; r != NULL && n < KVS_PROTO_MAX_REGIONS; r = r->next) {
        kvs__region_desc_t d = {.id = r->id,
                                .base = (uint64_t)(uintptr_t)r->base,
                                .length = r->len,
                                .rkey_len = (uint32_t)r->rkey_len,
                                .rkey = r->rkey};
        kvs__proto_put_region(b, &d);
        n++;
    }
    kvs__buf_patch_u32(b, count_at, n);
    c->regions_sent = pp->regions_version;
}

/* Entry @k of the peer's region table goes: its rkey destroyed, the last
 * entry moved into its place (nothing keeps an index into rr across the
 * lock). Lock held. */
static void drop_rregion(conn_t *c, size_t k)
{
    rregion_t *r = &c->rr[k];
    if (r->rkey != NULL)
        c->pp->ops->rkey_destroy(c->pp->tl, r->rkey);
    kvs__free(r->rkey_buf);
    *r = c->rr[--c->nrr];
}

/* The regions the holder no longer has whose rkeys no GET can be using
 * any more are dropped (lock held): every request that could have named
 * one (ids up to its gone_after) is done with the transport. */
static void reap_rregions(conn_t *c)
{
    if (c->nrr_gone == 0 || c->warming)
        return;
    kvs__peer_t *pp = c->pp;
    uint64_t busy = UINT64_MAX; /* the oldest request still reading */
    for (const preq_t *r = pp->reqs; r != NULL; r = r->next)
        if (r->conn == c && r->outstanding > 0 && r->req_id < busy)
            busy = r->req_id;
    for (size_t k = 0; k < c->nrr;) {
        if (c->rr[k].gone_after == 0 || c->rr[k].gone_after >= busy) {
            k++;
            continue;
        }
        drop_rregion(c, k);
        c->nrr_gone--;
    }
}

/* A node's table of a client's regions is full: a pull PUT carries the
 * regions it reads, not the client's whole table, so the node cannot tell
 * which the client let go (an engine that keeps replacing its KV memory).
 * When no put is reading (no rkey in use), every region this message does
 * not carry is dropped; a later put that reads one carries it again. */
static void drop_unused_rregions(conn_t *c, const kvs__msg_t *m)
{
    if (c->nputs > 0)
        return;
    for (size_t k = 0; k < c->nrr;) {
        if (kvs__proto_regions_have(m->regions, m->nregions, c->rr[k].id))
            k++;
        else
            drop_rregion(c, k);
    }
    kvs__debug(c->pp->log, "peer %s: its regions filled our table: kept the %zu its put reads",
               c->peer, c->nrr);
}

/* Whether LOOKUP_REPLY @m's region table (if it carries one) is newer
 * than every one applied: the holder numbers its leases in the order it
 * answers, so a reply that overtook a later one on the other carrier (the
 * control channel or the transport) has the lower lease id, and its table
 * is dropped, not applied over the newer one (which would forget regions
 * the newer has). Its blocks stand: a region they name that the newer
 * table lacks was let go since, and fetching them fails STALE. */
static bool table_newer(conn_t *c, const kvs__msg_t *m)
{
    if (!(m->hdr.flags & KVS_PROTO_FLAG_REGIONS))
        return true; /* nothing to apply */
    if (m->u.lookup_reply.lease_id < c->table_lease)
        return false;
    c->table_lease = m->u.lookup_reply.lease_id;
    return true;
}

static kvs_status_t take_regions(conn_t *c, const kvs__msg_t *m)
{
    const uint8_t *cur = m->regions;
    for (uint32_t i = 0; i < m->nregions; i++) {
        kvs__region_desc_t d;
        kvs__proto_region(&cur, &d);
        bool known = false;
        for (size_t k = 0; k < c->nrr && !known; k++)
            known = c->rr[k].id == d.id && c->rr[k].gone_after == 0;
        if (known)
            continue; /* unpacked once, cached while the holder has it */
        if (c->nrr - c->nrr_gone >= KVS_PROTO_MAX_REGIONS) {
            if (c->server)
                drop_unused_rregions(c, m);
            else
                reap_rregions(c);
        }
        if (c->nrr - c->nrr_gone >= KVS_PROTO_MAX_REGIONS)
            return KVS_ERR_BUSY; /* a peer cannot grow this table without end */
        if (c->nrr == c->caprr) {
            size_t cap = c->caprr ? c->caprr * 2 : 8;
            rregion_t *nr = kvs__realloc(c->rr, cap * sizeof(*nr));
            if (nr == NULL)
                return KVS_ERR_NO_MEMORY;
            c->rr = nr;
            c->caprr = cap;
        }
        rregion_t *rr = &c->rr[c->nrr];
        memset(rr, 0, sizeof(*rr));
        rr->rkey_buf = kvs__malloc(d.rkey_len);
        if (rr->rkey_buf == NULL)
            return KVS_ERR_NO_MEMORY;
        memcpy(rr->rkey_buf, d.rkey, d.rkey_len);
        rr->id = d.id;
        if (d.id > c->rr_max_id)
            c->rr_max_id = d.id;
        rr->base = d.base;
        rr->len = d.length;
        rr->rkey_len = d.rkey_len;
        c->nrr++;
    }
    return KVS_OK;
}

/* A holder's reply that carries its whole region table (put_regions sends
 * it whenever the table changed): our mappings of regions it no longer has
 * are let go (a pool destroyed, kvs_mem_free, the shim seeing the engine
 * release its KV memory), or they would keep that memory alive for as long
 * as we stay connected. A table of KVS_PROTO_MAX_REGIONS entries may have
 * been cut short, so nothing is let go on one. */
static void forget_regions(conn_t *c, const kvs__msg_t *m)
{
    if (!(m->hdr.flags & KVS_PROTO_FLAG_REGIONS) || m->nregions >= KVS_PROTO_MAX_REGIONS)
        return;
    /* Their rkeys too: a holder that keeps replacing its memory (an engine
     * that sleeps and wakes) would otherwise fill the table, and every
     * lookup after would fail BUSY. */
    for (size_t k = 0; k < c->nrr; k++) {
        rregion_t *r = &c->rr[k];
        if (r->gone_after != 0 || kvs__proto_regions_have(m->regions, m->nregions, r->id))
            continue;
        r->gone_after = c->next_req_id; /* every request that may use it has an id <= this */
        c->nrr_gone++;
    }
    reap_rregions(c);
    if (c->shm != NULL)
        kvs__shm_peer_keep_only(c->shm, m->regions, m->nregions);
}

/* Unpacks every region's rkey not unpacked yet, so the first fetch does not
 * pay for it (UCX: "rkey unpack is not intended for data path"). A region
 * that fails here is retried, and refused, at first use. */
static void unpack_rkeys(conn_t *c)
{
    kvs__peer_t *pp = c->pp;
    for (size_t k = 0; k < c->nrr && c->ep != NULL; k++) {
        rregion_t *r = &c->rr[k];
        if (r->rkey == NULL && r->gone_after == 0 &&
            pp->ops->rkey_unpack(pp->tl, c->ep, r->rkey_buf, r->rkey_len, &r->rkey) != KVS_OK)
            r->rkey = NULL;
    }
}

static rregion_t *rregion(conn_t *c, uint32_t id, uint64_t addr, uint64_t len)
{
    kvs__peer_t *pp = c->pp;
    for (size_t k = 0; k < c->nrr; k++) {
        rregion_t *r = &c->rr[k];
        if (r->id != id || r->gone_after != 0)
            continue;
        if (addr < r->base || len > r->len || addr - r->base > r->len - len)
            return NULL; /* a descriptor outside its region: refuse it */
        if (r->rkey == NULL &&
            pp->ops->rkey_unpack(pp->tl, c->ep, r->rkey_buf, r->rkey_len, &r->rkey) != KVS_OK) {
            r->rkey = NULL;
            return NULL;
        }
        return r;
    }
    return NULL;
}

/* Why rregion() found nothing for region @id: the holder let it go since
 * the lookup (its blocks are stale), or a descriptor that names no region
 * or lies outside it. A region we no longer list at all was dropped once
 * gone (reap_rregions): the holder's ids only grow, so one at or below the
 * highest it named was in its table, and a lease naming it is stale. */
static kvs_status_t no_rregion(const conn_t *c, uint32_t id)
{
    for (size_t k = 0; k < c->nrr; k++)
        if (c->rr[k].id == id)
            return c->rr[k].gone_after != 0 ? KVS_ERR_STALE : KVS_ERR_PROTOCOL;
    return id != 0 && id <= c->rr_max_id ? KVS_ERR_STALE : KVS_ERR_PROTOCOL;
}

/* ---------------------------------------------------------------------- */
/* Receiving (inside the transport's progress)                              */
/* ---------------------------------------------------------------------- */
static void dropped(kvs__peer_t *pp, const char *what)
{
    /* Garbage from the network must not flood the log either. */
    if (pp->dropped++ % 1000 == 0)
        kvs__warn(pp->log, "dropped a message: %s (%llu so far)", what,
                  (unsigned long long)pp->dropped);
}

/* What a pull put sends in every batch. */
typedef struct pull_src {
    uint64_t layout_id;
    uint16_t nsegs;
    uint32_t nregs;
    uint32_t chunks[KVS_PROTO_MAX_PIECES];
    kvs__put_seg_t segs[KVS_PROTO_MAX_PIECES];
    kvs__region_desc_t regs[KVS_PROTO_MAX_PIECES];
    uint8_t *rkeys; /* the regions' packed keys, copied */
    bool cuda;      /* CUDA blocks: read only from the node's mapping, never pushed */
    size_t n;
    kvs_key_t *keys;
    uint32_t *ids;
} pull_src_t;

static void pull_src_free(pull_src_t *ps)
{
    if (ps == NULL)
        return;
    kvs__free(ps->rkeys);
    kvs__free(ps->keys);
    kvs__free(ps->ids);
    kvs__free(ps);
}

static kvs_status_t send_buf(conn_t *c, kvs__buf_t *b);

/* How each batch of a pull put travels: read by the node, or (after the
 * node's reads failed) offered as a push PUT, then its DATA sent on the
 * node's PUT_ACK. */
enum { BATCH_PULL = 0, BATCH_PUSH_ASKED = 1, BATCH_PUSH_SENT = 2 };

/* Batch @k of a pull put: its first key and its count. */
static size_t batch_span(const preq_t *r, uint32_t k, size_t *cnt_p)
{
    size_t off = (size_t)k * r->per_batch;
    *cnt_p = r->src->n - off < r->per_batch ? r->src->n - off : r->per_batch;
    return off;
}

/* Sends batch @k of a pull put as PUT req_id + k: one the node reads, or,
 * once this connection pushes, one it acknowledges for our DATA. */
static kvs_status_t batch_send(preq_t *r, uint32_t k)
{
    pull_src_t *ps = r->src;
    conn_t *c = r->conn;
    size_t cnt, off = batch_span(r, k, &cnt);
    kvs__buf_t buf;
    kvs__buf_init(&buf);
    if (c->push_puts && ps->cuda)
        return KVS_ERR_UNSUPPORTED; /* the transport takes no CUDA memory */
    if (c->push_puts) {
        r->batch_how[k] = BATCH_PUSH_ASKED;
        kvs__enc_put(&buf, r->req_id + k, c->session, ps->layout_id, ps->chunks, ps->nsegs,
                     ps->keys + off, (uint32_t)cnt);
    } else {
        r->batch_how[k] = BATCH_PULL;
        kvs__enc_put_pull(&buf, r->req_id + k, c->session, ps->layout_id, ps->chunks, ps->nsegs,
                          ps->keys + off, (uint32_t)cnt, ps->regs, ps->nregs, ps->segs,
                          ps->ids + off);
    }
    return send_buf(c, &buf);
}

/* Sends the next batch of a pull put; it counts against the connection's
 * room at the node until answered (put_settle). */
static kvs_status_t pull_send_next(preq_t *r)
{
    r->conn->puts_out++;
    return batch_send(r, r->sent++);
}

/* Sends waiting pull-put batches on @c while the node has room for them
 * (KVS_PEER_MAX_PUTS a connection) and their request is under its window
 * (KVS_PEER_PUT_WINDOW), the oldest request first. Lock held. */
static void put_more(conn_t *c)
{
    while (c->state == S_READY && c->puts_out < KVS_PEER_MAX_PUTS) {
        preq_t *oldest = NULL; /* the list is newest first */
        for (preq_t *r = c->pp->reqs; r != NULL; r = r->next)
            if (r->conn == c && r->is_put && r->pull && r->status == KVS_INPROGRESS &&
                r->sent < r->nreq && r->sent - r->settled < KVS_PEER_PUT_WINDOW)
                oldest = r;
        if (oldest == NULL)
            return;
        kvs_status_t st = pull_send_next(oldest);
        if (st != KVS_OK)
            oldest->status = st;
    }
}

/* One of @r's batches was answered: its room at the node is free again. */
static void put_settle(preq_t *r)
{
    r->settled++;
    if (r->conn->puts_out > 0)
        r->conn->puts_out--;
}

/* Batch @k of pull put @r is over at the node (answered, and not sent
 * again): settled once, and the room it frees goes to what waits. */
static void put_batch_ends(preq_t *r, uint32_t k)
{
    if (bit_claim(r->batch_done, k)) {
        put_settle(r);
        put_more(r->conn);
    }
}

static preq_t *req_on(conn_t *c, uint64_t id)
{
    for (preq_t *r = c->pp->reqs; r != NULL; r = r->next)
        if (r->conn == c && id - r->req_id < (r->nreq > 0 ? r->nreq : 1))
            return r;
    return NULL;
}

static void piece_landed(void *arg, kvs_status_t st, size_t len)
{
    preq_t *r = arg;
    r->outstanding--;
    if (st == KVS_OK) {
        r->landed++;
        r->bytes_got += len;
    } else if (r->status == KVS_INPROGRESS) {
        r->status = KVS_ERR_PEER_FAILED;
    }
}

static void land(kvs__peer_t *pp, preq_t *r, uint8_t *to, void *data, size_t len, bool rndv);

/* A pushed piece for a fetch: it must be exactly one piece of one block of
 * this request, not seen before, and it lands straight in the destination. */
static void data_to_client(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m, void *data, size_t len,
                           bool rndv)
{
    preq_t *r = req_on(c, m->hdr.req_id);
    if (r == NULL || !r->push || r->is_put || r->status != KVS_INPROGRESS) {
        dropped(pp, "DATA for no fetch in flight");
        return;
    }
    uint32_t blk = m->u.data.block, off = m->u.data.offset;
    if (r->x != NULL) { /* across views: a range we asked for, into staging */
        size_t range = 0;
        uint64_t at = kvs__xfer_stage_of(r->x, blk, off, len, &range);
        if (at == UINT64_MAX || !bit_claim(r->seen, r->range_at[blk] + range)) {
            r->status = KVS_ERR_PROTOCOL;
            conn_doom(c, KVS_ERR_PROTOCOL,
                      "DATA range (block %u, offset %u, %zu bytes) is not one this fetch asked "
                      "for, or came twice",
                      blk, off, len);
            return;
        }
        land(pp, r, r->xbuf + at, data, len, rndv);
        return;
    }
    struct kvs_pool *dst = r->dst;
    size_t base = 0, seg = dst->nsegs;
    for (size_t s = 0; s < dst->nsegs; s++) {
        if (off == base) {
            seg = s;
            break;
        }
        base += dst->segs[s].block_bytes;
    }
    if (blk >= r->count || seg == dst->nsegs || len != dst->segs[seg].block_bytes ||
        !bit_claim(r->seen, (size_t)blk * dst->nsegs + seg)) {
        r->status = KVS_ERR_PROTOCOL;
        conn_doom(c, KVS_ERR_PROTOCOL,
                  "DATA piece (block %u, offset %u, %zu bytes) is not one "
                  "this fetch expects, or came twice",
                  blk, off, len);
        return;
    }
    const kvs_segment_t *sg = &dst->segs[seg];
    land(pp, r, (uint8_t *)sg->base + (size_t)r->dst_ids[blk] * sg->block_stride, data, len, rndv);
}

/* A piece claimed once lands at @to: copied now, or received (rendezvous). */
static void land(kvs__peer_t *pp, preq_t *r, uint8_t *to, void *data, size_t len, bool rndv)
{
    if (!rndv) {
        memcpy(to, data, len);
        r->landed++;
        r->bytes_got += len;
        return;
    }
    kvs_status_t st = pp->ops->am_recv(pp->tl, data, to, len, piece_landed, r);
    if (st == KVS_INPROGRESS) {
        r->outstanding++;
    } else if (st == KVS_OK) {
        r->landed++;
        r->bytes_got += len;
    } else {
        r->status = KVS_ERR_TRANSPORT;
    }
}

static void sput_landed(void *arg, kvs_status_t st, size_t len)
{
    sput_t *p = arg;
    (void)len;
    p->outstanding--;
    if (st == KVS_OK)
        p->landed++;
    else
        p->dead = true;
}

/* A piece of a block being put into this node: it lands in staging we
 * chose, exactly where its (block, offset) says, at most once. */
static void data_to_server(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m, void *data, size_t len,
                           bool rndv)
{
    sput_t *p = pp->sputs;
    while (p != NULL && !(p->conn == c && p->req_id == m->hdr.req_id))
        p = p->next;
    if (p == NULL || p->dead) {
        dropped(pp, "DATA for no put in flight");
        return;
    }
    uint32_t blk = m->u.data.block, off = m->u.data.offset;
    uint32_t k = 0;
    while (k < p->nchunks && p->chunk_off[k] != off)
        k++;
    if (blk >= p->n || k == p->nchunks || len != p->chunk_off[k + 1] - p->chunk_off[k] ||
        !bit_claim(p->seen, (size_t)blk * p->nchunks + k)) {
        p->dead = true;
        kvs__warn(pp->log,
                  "peer %s: PUT piece (block %u, offset %u, %zu bytes) is not one the put "
                  "expects, or came twice: dropping the put",
                  c->peer, blk, off, len);
        return;
    }
    uint8_t *to = p->staging + (size_t)blk * p->block_bytes + off;
    if (!rndv) {
        memcpy(to, data, len);
        p->landed++;
        return;
    }
    kvs_status_t st = pp->ops->am_recv(pp->tl, data, to, len, sput_landed, p);
    if (st == KVS_INPROGRESS)
        p->outstanding++;
    else if (st == KVS_OK)
        p->landed++;
    else
        p->dead = true;
}

static void msg_landed(void *arg, kvs_status_t st, size_t len)
{
    inmsg_t *m = arg;
    (void)len;
    m->ready = true;
    if (st != KVS_OK) {
        kvs__free(m->buf);
        m->buf = NULL;
    }
}

/* A message of @len bytes (its header included) queued for @c, its buffer
 * to fill and ready to set; NULL, the connection doomed, when its queue is
 * full or memory short. Lock held. */
static inmsg_t *inbox_add(kvs__peer_t *pp, conn_t *c, size_t len)
{
    if (c->ninbox >= KVS_PEER_MAX_INBOX) {
        conn_doom(c, KVS_ERR_PROTOCOL, "more than %u messages queued", KVS_PEER_MAX_INBOX);
        return NULL;
    }
    inmsg_t *m = kvs__calloc(1, sizeof(*m));
    uint8_t *buf = kvs__malloc(len);
    if (m == NULL || buf == NULL) {
        kvs__free(m);
        kvs__free(buf);
        conn_doom(c, KVS_ERR_NO_MEMORY, "out of memory receiving a message");
        return NULL;
    }
    m->conn = c;
    c->refs++;
    c->ninbox++;
    m->buf = buf;
    m->len = len;
    m->next = NULL;
    *pp->inbox_tail = m;
    pp->inbox_tail = &m->next;
    return m;
}

static void on_am(void *arg, const void *hdr, size_t hlen, void *data, size_t len, bool rndv)
{
    kvs__peer_t *pp = arg;
    kvs__hdr_t h;
    if (kvs__proto_decode_hdr(hdr, hlen, KVS_PROTO_MAX_BODY, &h, NULL, 0) != KVS_OK) {
        dropped(pp, "malformed header");
        return;
    }
    bool to_server = (h.flags & KVS_PROTO_FLAG_FROM_SERVER) == 0;
    conn_t *c = conn_by_session(pp, h.session, to_server);
    if (c == NULL) {
        dropped(pp, "no such session");
        return; /* nothing allocated, nothing received */
    }
    if (h.type == KVS_MSG_DATA) {
        kvs__msg_t m;
        char why[128];
        if (kvs__proto_decode(hdr, hlen, &m, why, sizeof(why)) != KVS_OK) {
            conn_doom(c, KVS_ERR_PROTOCOL, "malformed DATA: %s", why);
            return;
        }
        if (c->server)
            data_to_server(pp, c, &m, data, len, rndv);
        else
            data_to_client(pp, c, &m, data, len, rndv);
        return;
    }
    if (hlen != KVS_PROTO_HDR_LEN || len != h.body_len) {
        conn_doom(c, KVS_ERR_PROTOCOL, "message body of %zu bytes, header says %u", len,
                  h.body_len);
        return;
    }
    inmsg_t *m = inbox_add(pp, c, KVS_PROTO_HDR_LEN + len);
    if (m == NULL)
        return;
    uint8_t *buf = m->buf;
    memcpy(buf, hdr, KVS_PROTO_HDR_LEN);
    if (rndv) {
        kvs__debug(pp->log, "peer %s: receiving a %zu-byte message (type %u) by rendezvous",
                   c->peer, len, h.type);
        kvs_status_t st =
            pp->ops->am_recv(pp->tl, data, buf + KVS_PROTO_HDR_LEN, len, msg_landed, m);
        if (st == KVS_OK)
            m->ready = true;
        else if (st != KVS_INPROGRESS)
            msg_landed(m, st, 0);
    } else {
        memcpy(buf + KVS_PROTO_HDR_LEN, data, len);
        m->ready = true;
    }
}

/* Reads what the control channel of @c holds (lock held), into the inbox
 * as the transport's messages go; each record is one whole message, from
 * the peer that proved this connection's session (kvs__shm_peer_ctl), and
 * is checked as any other: its header names this connection, and the
 * handler decodes it strictly. A record too long for the channel, one
 * whose header names another session, or a full queue fails the
 * connection; end of file closes the channel (the transport stays). */
static int drain_inbox(kvs__peer_t *pp);

static int ctl_read(kvs__peer_t *pp, conn_t *c)
{
    int n = 0;
    if (pp->ctl_buf == NULL && (pp->ctl_buf = kvs__malloc(KVS_PEER_CTL_MAX)) == NULL)
        return 0;
    while (c->ctl_fd >= 0 && c->state == S_READY && n < 64) {
        ssize_t k = recv(c->ctl_fd, pp->ctl_buf, KVS_PEER_CTL_MAX, MSG_DONTWAIT | MSG_TRUNC);
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (k <= 0) {
            kvs__debug(pp->log, "peer %s: control channel closed (%s): the transport only", c->peer,
                       k < 0 ? strerror(errno) : "end of file");
            close(c->ctl_fd);
            c->ctl_fd = -1;
            break;
        }
        n++;
        kvs__hdr_t h;
        char why[128];
        if ((size_t)k > KVS_PEER_CTL_MAX) {
            conn_doom(c, KVS_ERR_PROTOCOL, "a %zd-byte message on the control channel (at most %u)",
                      k, KVS_PEER_CTL_MAX);
            break;
        }
        if (kvs__proto_decode_hdr(pp->ctl_buf, (size_t)k, KVS_PEER_CTL_MAX, &h, why, sizeof(why)) !=
                KVS_OK ||
            (size_t)k != KVS_PROTO_HDR_LEN + (size_t)h.body_len || h.type == KVS_MSG_DATA ||
            ((h.flags & KVS_PROTO_FLAG_FROM_SERVER) != 0) == c->server ||
            CRYPTO_memcmp(h.session, c->session, KVS_PROTO_SESSION_LEN) != 0) {
            conn_doom(c, KVS_ERR_PROTOCOL, "malformed message on the control channel");
            break;
        }
        inmsg_t *m = inbox_add(pp, c, (size_t)k);
        if (m == NULL)
            break;
        memcpy(m->buf, pp->ctl_buf, (size_t)k);
        m->ready = true;
    }
    return n;
}

/* ---------------------------------------------------------------------- */
/* Server side                                                              */
/* ---------------------------------------------------------------------- */
static void srv_lookup(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m)
{
    uint64_t rid = m->hdr.req_id;
    if (m->u.lookup.layout_id != c->asked_layout_id) {
        send_error(c, rid, KVS_ERR_LAYOUT_MISMATCH, "lookup under another layout");
        return;
    }
    if (c->nleases >= KVS_PEER_MAX_LEASES) {
        send_error(c, rid, KVS_ERR_BUSY, "too many leases held by this peer");
        return;
    }
    kvs_lease_h lease = NULL;
    kvs_key_t *keys = NULL;
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    uint32_t n = m->u.lookup.nkeys;
    keys = kvs__malloc((n ? n : 1) * sizeof(*keys)); /* the message's alignment is arbitrary */
    if (keys == NULL)
        goto fail;
    memcpy(keys, m->u.lookup.keys, (size_t)n * KVS_KEY_BYTES);
    uint32_t cap = pp->ctx->cfg.lease_timeout_ms;
    uint32_t lease_ms = m->u.lookup.lease_ms ? m->u.lookup.lease_ms : cap;
    if (lease_ms > cap)
        lease_ms = cap; /* the holder decides the ceiling */
    st = kvs__serve_lookup(pp->ctx, c->layout_id, keys, n, lease_ms, &lease);
    if (st != KVS_OK)
        goto fail;
    size_t hits = kvs_lease_hits(lease);
    uint64_t lease_id = ++pp->next_lease_id;
    /* Once replies may take two carriers (a control channel), one can
     * overtake the reply that carried a new table: every reply carries the
     * table until the client has shown it applied it (a RELEASE of a lease
     * whose reply carried it), so that none names a region the client may
     * not know yet. The client drops tables older than one it applied. */
    bool with_regions = c->regions_sent != pp->regions_version ||
                        (c->ctl_had && c->regions_acked != pp->regions_version);
    kvs__proto_begin(&b, KVS_MSG_LOOKUP_REPLY,
                     KVS_PROTO_FLAG_FROM_SERVER | (with_regions ? KVS_PROTO_FLAG_REGIONS : 0), rid,
                     c->session);
    kvs__buf_u32(&b, (uint32_t)KVS_OK);
    kvs__buf_u64(&b, lease_id);
    size_t hits_at = b.len;
    kvs__buf_u32(&b, 0);
    if (with_regions)
        put_regions(pp, c, &b);
    kvs__piece_loc_t *locs = pp->scratch_locs;
    kvs__piece_t *pieces = pp->scratch_pieces;
    size_t described = 0;
    if (hits > 0)
        kvs__lease_hold(lease);
    for (size_t i = 0; i < hits; i++) {
        kvs__block_loc_t loc = {.npieces = MAX_PIECES, .pieces = locs};
        if (kvs__lease_locate_held(lease, i, &loc) != KVS_OK)
            break; /* the prefix ends where a block cannot be described */
        const region_t *gr = region_of(pp, loc.gen_addr, 8);
        bool ok = gr != NULL;
        for (size_t k = 0; ok && k < loc.npieces; k++) {
            const region_t *pr = region_of(pp, locs[k].addr, locs[k].len);
            ok = pr != NULL && locs[k].len <= UINT32_MAX;
            if (ok) {
                pieces[k].region = pr->id;
                pieces[k].len = (uint32_t)locs[k].len;
                pieces[k].addr = (uint64_t)(uintptr_t)locs[k].addr;
            }
        }
        if (!ok) {
            kvs__warn(pp->log, "peer %s: hit %zu (%p+%zu) lies outside registered memory", c->peer,
                      i, locs[0].addr, locs[0].len);
            break;
        }
        kvs__block_desc_t d = {.gen_region = gr->id,
                               .gen_addr = (uint64_t)(uintptr_t)loc.gen_addr,
                               .gen = loc.gen,
                               .npieces = (uint16_t)loc.npieces};
        kvs__proto_put_block(&b, &d, pieces);
        described++;
    }
    if (hits > 0)
        kvs__lease_unhold(lease);
    kvs__buf_patch_u32(&b, hits_at, (uint32_t)described);
    if (kvs__proto_finish(&b) != KVS_OK)
        goto fail;
    if (described > 0) {
        srv_lease_t *sl = kvs__calloc(1, sizeof(*sl));
        if (sl == NULL)
            goto fail;
        sl->id = lease_id;
        sl->lease = lease;
        sl->table_version = with_regions ? pp->regions_version : 0;
        sl->deadline_ns = now_ns() + (uint64_t)lease_ms * 1000000u;
        sl->next = c->leases;
        c->leases = sl;
        c->nleases++;
        lease = NULL; /* held until RELEASE, its deadline, or the peer's end */
    }
    kvs_lease_release(lease);
    kvs__free(keys);
    send_buf(c, &b);
    return;
fail:
    kvs_lease_release(lease);
    kvs__free(keys);
    kvs__buf_free(&b);
    send_error(c, rid, st == KVS_OK ? KVS_ERR_NO_MEMORY : st, kvs_status_string(st));
}

static void sput_free(kvs__peer_t *pp, sput_t *p)
{
    for (sput_t **pq = &pp->sputs; *pq != NULL; pq = &(*pq)->next) {
        if (*pq == p) {
            *pq = p->next;
            break;
        }
    }
    if (p->conn != NULL) {
        p->conn->nputs--;
        p->conn->staging_bytes -= (uint64_t)p->n * p->block_bytes;
    }
    if (p->slots != NULL)
        kvs__unreserve_slots(pp->ctx, p->cls, p->slots, p->n);
    kvs__free(p->slots);
    kvs__free(p->staging);
    kvs__free(p->seen);
    kvs__free(p->keys);
    kvs__free(p->chunk_off);
    kvs__free(p);
}

/* Pull puts only: a read that fails is the transport's failure. */
static void sput_got(void *arg, kvs_status_t st, size_t len)
{
    sput_t *p = arg;
    p->outstanding--;
    if (st == KVS_OK)
        p->bytes_got += len;
    else
        p->dead = p->rma_failed = true;
}

static void sput_track(sput_t *p, kvs_status_t st, size_t len)
{
    if (st == KVS_INPROGRESS)
        p->outstanding++;
    else if (st == KVS_OK)
        p->bytes_got += len;
    else
        p->dead = p->rma_failed = true;
}

/* The keys of @m this node lacks, as indices, within @c's staging
 * allowance of @block_bytes each. */
static uint32_t put_wanted(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m, size_t block_bytes,
                           uint32_t *idx, kvs_key_t *keys)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < m->u.put.nkeys; i++) {
        kvs_key_t k;
        memcpy(&k, m->u.put.keys + (size_t)i * KVS_KEY_BYTES, sizeof(k));
        if (c->staging_bytes + (uint64_t)(n + 1) * block_bytes > KVS_PEER_MAX_STAGING)
            break;
        if (kvs__ctx_has_key(pp->ctx, m->u.put.layout_id, &k))
            continue;
        keys[n] = k;
        idx[n++] = i;
    }
    return n;
}

/* Commits the pages of the reserved slots never written (@fresh) before
 * the reads land there, with one MADV_POPULATE_WRITE per run of adjacent
 * ones: such a slot is otherwise faulted in a 4 KiB page at a time inside
 * the copy (an exception each, dear in a VM). A slot written before is
 * left alone: committing pages already there is not free either (warm puts
 * of 64 KiB blocks in `kvshare bench pool --warm`, 4 KiB arena pages: 5.2-6.7
 * GB/s with every slot committed, 7.8-9.1 without). A hint: an older
 * kernel without it faults as before. */
static void populate_slots(uint8_t *const *addrs, const bool *fresh, uint32_t n, size_t block_bytes)
{
#ifdef MADV_POPULATE_WRITE
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t mask = (uintptr_t)(pg > 0 ? pg : 4096) - 1;
    for (uint32_t i = 0; i < n;) {
        if (!fresh[i]) {
            i++;
            continue;
        }
        uint32_t j = i + 1;
        while (j < n && fresh[j] && addrs[j] == addrs[j - 1] + block_bytes)
            j++;
        uintptr_t a = (uintptr_t)addrs[i] & ~mask;
        uintptr_t e = ((uintptr_t)addrs[j - 1] + block_bytes + mask) & ~mask;
        (void)madvise((void *)a, e - a, MADV_POPULATE_WRITE);
        i = j;
    }
#else
    (void)addrs;
    (void)fresh;
    (void)n;
    (void)block_bytes;
#endif
}

#define DIRECT_IOV 512 /* iovecs per process_vm_readv (IOV_MAX is 1024) */

/* Same host, the client identified (c->put_direct): reads the planned
 * blocks out of its process with process_vm_readv, one kernel copy straight
 * into the slots, as UCX's CMA would. UCX 1.13 has no native GET here (its
 * CMA lane is for bulk rendezvous only): ucp_get_nbx falls back to an
 * emulation where the client's progress thread copies every fragment into
 * an active message and ours copies it out, two copies and a round trip per
 * fragment, both processes awake. Every address was checked by the plan
 * against the regions the client advertised. false: nothing counted, the
 * GETs go ahead instead (and this connection stops reading directly). */
static bool direct_reads(kvs__peer_t *pp, conn_t *c, sput_t *p, const kvs__pull_read_t *reads,
                         uint8_t *const *addrs, uint32_t n, uint16_t nch)
{
    struct iovec lv[DIRECT_IOV], rv[DIRECT_IOV];
    size_t k = 0, want = 0, total = 0;
    ssize_t got = 0;
    const char *why = NULL;
    struct pollfd pf = {.fd = c->put_pidfd, .events = POLLIN};
    if (poll(&pf, 1, 0) != 0) { /* readable: the process is gone; its pid may be reused */
        why = "the client's process has exited";
        goto fail;
    }
    for (size_t j = 0; j <= (size_t)n * nch; j++) {
        const kvs__pull_read_t *rd = j < (size_t)n * nch ? &reads[j] : NULL;
        uint8_t *local = rd != NULL ? addrs[j / nch] + rd->off : NULL;
        if (rd != NULL && k > 0 && (uint8_t *)lv[k - 1].iov_base + lv[k - 1].iov_len == local &&
            (uint64_t)(uintptr_t)rv[k - 1].iov_base + rv[k - 1].iov_len == rd->raddr) {
            lv[k - 1].iov_len += rd->len;
            rv[k - 1].iov_len += rd->len;
            want += rd->len;
            continue;
        }
        if (k > 0 && (rd == NULL || k == DIRECT_IOV)) {
            got = process_vm_readv(c->put_pid, lv, (unsigned long)k, rv, (unsigned long)k, 0);
            if (got != (ssize_t)want) {
                why = got < 0 ? strerror(errno) : "a short read";
                goto fail;
            }
            total += want;
            k = want = 0;
        }
        if (rd == NULL)
            break;
        lv[k] = (struct iovec){.iov_base = local, .iov_len = rd->len};
        rv[k] = (struct iovec){.iov_base = (void *)(uintptr_t)rd->raddr, .iov_len = rd->len};
        want += rd->len;
        k++;
    }
    p->bytes_expected = p->bytes_got = total;
    return true;
fail:
    kvs__warn(pp->log, "peer %s: reading its put directly failed (%s); GET from now on", c->peer,
              why);
    close(c->put_pidfd);
    c->put_direct = false;
    return false;
}

/* The client's region @id mapped here, or NULL. */
static const kvs__shm_pmap_t *pmap_of(const conn_t *c, uint32_t id)
{
    for (uint32_t i = 0; i < c->npmaps; i++)
        if (c->pmaps[i]->id == id)
            return c->pmaps[i];
    return NULL;
}

/* Where [addr, addr + len) of @m lies in our mapping, or NULL. */
static const uint8_t *pmap_at(const kvs__shm_pmap_t *m, uint64_t addr, uint64_t len)
{
    if (m == NULL || addr < m->base || len > m->len || addr - m->base > m->len - len)
        return NULL;
    return m->at + (addr - m->base);
}

/* Whether the client's mapped memory holds every one of @nreads reads: 1
 * (also for none), 0 when one lies outside it, -1 when such a read names a
 * CUDA region, which no other way may read. *host_p: none of them is CUDA
 * memory (mapped_reads may share the copy with the helpers). */
static int pmaps_cover(const conn_t *c, const kvs__pull_read_t *reads, size_t nreads, bool *host_p)
{
    bool cuda = false, all = true;
    for (size_t j = 0; j < nreads; j++) {
        const kvs__shm_pmap_t *m = pmap_of(c, c->rr[reads[j].region].id);
        cuda = cuda || (m != NULL && m->cuda != NULL);
        all = all && pmap_at(m, reads[j].raddr, reads[j].len) != NULL;
    }
    *host_p = !cuda;
    return all ? 1 : cuda ? -1 : 0;
}

typedef struct mread_job {
    const conn_t *c;
    const kvs__pull_read_t *reads;
    uint8_t *const *addrs;
    uint16_t nch;
} mread_job_t;

/* Read @j of a put copied from host mappings (pmaps_cover checked it). */
static void mread_item(void *arg, size_t j, void **dst, const void **src, size_t *len)
{
    const mread_job_t *mj = arg;
    const kvs__pull_read_t *rd = &mj->reads[j];
    *src = pmap_at(pmap_of(mj->c, mj->c->rr[rd->region].id), rd->raddr, rd->len);
    *dst = mj->addrs[j / mj->nch] + rd->off;
    *len = rd->len;
}

/* Same host, the client offered the memory these reads lie in (its memfds
 * mapped read-only here, or its CUDA allocations imported read-only), which
 * pmaps_cover() checked: copies each planned read into its slot, runs
 * adjacent on both sides and in one mapping as one (memcpy, shared with
 * the copy helpers from host mappings; or cuMemcpyDtoH); a copy the driver
 * refuses kills the put. A mapping's pages
 * live as long as it does, so a client that exits or frees its memory
 * mid-copy cannot make this fault. */
static void mapped_reads(kvs__peer_t *pp, conn_t *c, sput_t *p, const kvs__pull_read_t *reads,
                         uint8_t *const *addrs, uint32_t n, uint16_t nch, bool host)
{
    const size_t nreads = (size_t)n * nch;
    /* Host memory only (pmaps_cover saw no CUDA mapping): shared with the
     * copy helpers when large enough (copier_int.h), as a reader's fetch
     * from a mapping is, and stored around the caches: this process never
     * reads a stored block, its readers map it (kvs__copy_stream). */
    if (host) {
        mread_job_t mj = {.c = c, .reads = reads, .addrs = addrs, .nch = nch};
        size_t helped;
        size_t bytes =
            kvs__copier_run(pp->copier, nreads, mread_item, &mj, pp->copy_stream, &helped);
        if (!c->pmap_said) {
            c->pmap_said = true;
            kvs__debug(pp->log, "peer %s: its puts are copied from its memory mapped here",
                       c->peer);
        }
        p->bytes_expected = p->bytes_got = bytes;
        return;
    }
    bool cuda = false;
    const kvs__shm_pmap_t *run_m = NULL;
    const uint8_t *run_src = NULL;
    uint8_t *run_dst = NULL;
    size_t run_len = 0, total = 0;
    const char *why = NULL;
    for (size_t j = 0; j <= nreads && why == NULL; j++) {
        const kvs__pull_read_t *rd = j < nreads ? &reads[j] : NULL;
        const kvs__shm_pmap_t *m = rd ? pmap_of(c, c->rr[rd->region].id) : NULL;
        cuda = cuda || (m != NULL && m->cuda != NULL);
        const uint8_t *src = rd ? pmap_at(m, rd->raddr, rd->len) : NULL;
        uint8_t *dst = rd ? addrs[j / nch] + rd->off : NULL;
        if (rd != NULL && run_len > 0 && m == run_m && run_src + run_len == src &&
            run_dst + run_len == dst) {
            run_len += rd->len;
            continue;
        }
        if (run_len > 0 && !kvs__shm_pmap_copy(run_m, run_dst, run_src, run_len, &why))
            break;
        total += run_len;
        run_m = m;
        run_src = src;
        run_dst = dst;
        run_len = rd ? rd->len : 0;
    }
    if (why != NULL) {
        kvs__warn(pp->log, "peer %s: copying its put from its mapped CUDA memory failed (%s)",
                  c->peer, why);
        p->dead = true;
        return;
    }
    if (!c->pmap_said) {
        c->pmap_said = true;
        kvs__debug(pp->log, "peer %s: its puts are copied from its memory mapped here%s", c->peer,
                   cuda ? " (CUDA)" : "");
    }
    p->bytes_expected = p->bytes_got = total;
}

/* A pull PUT: check every read against the regions the client advertised,
 * reserve arena slots, GET each block straight into its slot (runs adjacent
 * on both sides coalesced), one flush. finish_puts publishes the slots when
 * every byte has landed, or gives them back; no reader can see a slot
 * before. */
static void srv_put_pull(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m)
{
    uint64_t rid = m->hdr.req_id;
    char why[256] = "";
    kvs_status_t st = take_regions(c, m);
    if (st != KVS_OK) {
        send_error(c, rid, st, "cannot take the put's regions");
        return;
    }
    if (c->rma)
        unpack_rkeys(c);
    uint32_t nk = m->u.put.nkeys;
    uint16_t nch = m->u.put.nchunks;
    size_t block_bytes = 0;
    for (uint16_t k = 0; k < nch; k++)
        block_bytes += kvs__proto_u32_at(m->u.put.chunks, k);
    sput_t *p = kvs__calloc(1, sizeof(*p));
    uint32_t *idx = kvs__malloc((nk ? nk : 1) * sizeof(*idx));
    kvs_key_t *keys = kvs__malloc((nk ? nk : 1) * sizeof(*keys));
    kvs__pull_region_t *regs = kvs__malloc((c->nrr ? c->nrr : 1) * sizeof(*regs));
    kvs__pull_read_t *reads = NULL;
    uint8_t **addrs = NULL;
    bool *fresh = NULL;
    st = KVS_ERR_NO_MEMORY;
    if (p == NULL || idx == NULL || keys == NULL || regs == NULL)
        goto fail;
    uint32_t n = put_wanted(pp, c, m, block_bytes, idx, keys);
    size_t nreads = (size_t)n * nch;
    reads = kvs__malloc((nreads > 0 ? nreads : 1) * sizeof(*reads));
    addrs = kvs__malloc((n ? n : 1) * sizeof(*addrs));
    fresh = kvs__malloc((n ? n : 1) * sizeof(*fresh));
    p->slots = kvs__malloc((n ? n : 1) * sizeof(*p->slots));
    if (reads == NULL || addrs == NULL || fresh == NULL || p->slots == NULL)
        goto fail;
    for (size_t k = 0; k < c->nrr; k++)
        regs[k] =
            (kvs__pull_region_t){.id = c->rr[k].id, .base = c->rr[k].base, .len = c->rr[k].len};
    /* Every address is checked before anything is reserved or read. */
    st = kvs__pull_plan(m, idx, n, regs, c->nrr, reads, why, sizeof(why));
    if (st != KVS_OK) {
        kvs__warn(pp->log, "peer %s: pull PUT refused: %s", c->peer, why);
        goto fail;
    }
    /* Copied from the client's mapped memory, or read by RMA; neither: the
     * client pushes this batch (KVS_ERR_TRANSPORT). CUDA memory has no
     * other way than its mapping. */
    bool host = false;
    const int cover = pmaps_cover(c, reads, nreads, &host);
    if (cover < 0) {
        st = KVS_ERR_PROTOCOL;
        snprintf(why, sizeof(why), "it reads CUDA memory outside what the client offered");
        kvs__warn(pp->log, "peer %s: pull PUT refused: %s", c->peer, why);
        goto fail;
    }
    if (cover == 0 && !c->rma) {
        st = KVS_ERR_TRANSPORT;
        snprintf(why, sizeof(why),
                 "this node has no native RMA to this client: put with active messages");
        goto fail;
    }
    uint32_t got = 0;
    if (n > 0 && (st = kvs__reserve_slots(pp->ctx, block_bytes, n, &p->cls, p->slots, addrs, fresh,
                                          &got)) != KVS_OK)
        goto fail;
    if (got == 0 && n > 0) {
        st = KVS_ERR_NO_SPACE;
        goto fail;
    }
    n = got; /* what does not fit is not stored; PUT_DONE says how many were */
    p->conn = c;
    p->req_id = rid;
    p->layout_id = m->u.put.layout_id;
    p->n = n;
    p->keys = keys;
    p->nchunks = nch;
    p->block_bytes = block_bytes;
    p->pull = true;
    p->deadline_ns = now_ns() + (uint64_t)pp->ctx->cfg.fetch_timeout_ms * 1000000u;
    p->next = pp->sputs;
    pp->sputs = p;
    c->nputs++;
    c->staging_bytes += (uint64_t)n * block_bytes;
    keys = NULL;
    populate_slots(addrs, fresh, n, block_bytes);
    if (nreads > 0 && cover > 0)
        mapped_reads(pp, c, p, reads, addrs, n, nch, host);
    if (nreads == 0 || cover > 0 || (c->put_direct && direct_reads(pp, c, p, reads, addrs, n, nch)))
        goto posted; /* (nothing to read: complete as it stands) */
    uint8_t *run_local = NULL;
    uint64_t run_remote = 0;
    size_t run_len = 0;
    void *run_rkey = NULL;
    for (uint32_t i = 0; i < n && !p->dead; i++) {
        for (uint16_t k = 0; k < nch && !p->dead; k++) {
            const kvs__pull_read_t *rd = &reads[(size_t)i * nch + k];
            rregion_t *rr = rregion(c, c->rr[rd->region].id, rd->raddr, rd->len);
            if (rr == NULL) { /* its rkey would not unpack (the plan checked bounds) */
                p->dead = p->rma_failed = true;
                break;
            }
            uint8_t *local = addrs[i] + rd->off;
            p->bytes_expected += rd->len;
            if (run_len > 0 && run_rkey == rr->rkey && run_local + run_len == local &&
                run_remote + run_len == rd->raddr && run_len + rd->len <= MAX_RUN) {
                run_len += rd->len;
                continue;
            }
            if (run_len > 0)
                sput_track(p,
                           pp->ops->get(pp->tl, c->ep, run_local, run_len, run_remote, run_rkey,
                                        sput_got, p),
                           run_len);
            run_local = local;
            run_remote = rd->raddr;
            run_len = rd->len;
            run_rkey = rr->rkey;
        }
    }
    if (run_len > 0 && !p->dead)
        sput_track(
            p, pp->ops->get(pp->tl, c->ep, run_local, run_len, run_remote, run_rkey, sput_got, p),
            run_len);
    if (!p->dead)
        sput_track(p, pp->ops->flush(pp->tl, c->ep, sput_got, p), 0);
posted:
    kick(pp);
    kvs__free(idx);
    kvs__free(regs);
    kvs__free(reads);
    kvs__free(addrs);
    kvs__free(fresh);
    return;
fail:
    if (p != NULL)
        kvs__free(p->slots);
    kvs__free(p);
    kvs__free(idx);
    kvs__free(keys);
    kvs__free(regs);
    kvs__free(reads);
    kvs__free(addrs);
    kvs__free(fresh);
    send_error(c, rid, st, why[0] != '\0' ? why : kvs_status_string(st));
}

static void srv_put(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m)
{
    uint64_t rid = m->hdr.req_id;
    if (!pp->ctx->cfg.pool_node) {
        send_error(c, rid, KVS_ERR_UNSUPPORTED,
                   "this node is not a pool node (kvshare serve) and takes no PUT");
        return;
    }
    if (c->nputs >= KVS_PEER_MAX_PUTS) {
        send_error(c, rid, KVS_ERR_BUSY, "too many puts in flight from this peer");
        return;
    }
    if (m->hdr.flags & KVS_PROTO_FLAG_PULL) {
        srv_put_pull(pp, c, m);
        return;
    }
    uint32_t nk = m->u.put.nkeys;
    uint16_t nch = m->u.put.nchunks;
    sput_t *p = kvs__calloc(1, sizeof(*p));
    uint32_t *idx = kvs__malloc((nk ? nk : 1) * sizeof(*idx));
    kvs_key_t *keys = kvs__malloc((nk ? nk : 1) * sizeof(*keys));
    uint32_t *offs = kvs__malloc(((size_t)nch + 1) * sizeof(*offs));
    if (p == NULL || idx == NULL || keys == NULL || offs == NULL)
        goto nomem;
    size_t block_bytes = 0;
    for (uint16_t k = 0; k < nch; k++) {
        offs[k] = (uint32_t)block_bytes;
        block_bytes += kvs__proto_u32_at(m->u.put.chunks, k);
    }
    offs[nch] = (uint32_t)block_bytes; /* the decoder bounds the sum below 4 GiB */
    uint32_t n = put_wanted(pp, c, m, block_bytes, idx, keys);
    p->pieces = (size_t)n * nch;
    p->staging = kvs__malloc(n ? (size_t)n * block_bytes : 1);
    p->seen = kvs__calloc(p->pieces / 8 + 1, 1);
    if (p->staging == NULL || p->seen == NULL)
        goto nomem;
    p->conn = c;
    p->req_id = rid;
    p->layout_id = m->u.put.layout_id;
    p->n = n;
    p->keys = keys;
    p->nchunks = nch;
    p->chunk_off = offs;
    p->block_bytes = block_bytes;
    p->deadline_ns = now_ns() + (uint64_t)pp->ctx->cfg.fetch_timeout_ms * 1000000u * 4;
    p->next = pp->sputs;
    pp->sputs = p;
    c->nputs++;
    c->staging_bytes += (uint64_t)n * block_bytes;
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_put_ack(&b, rid, c->session, idx, n);
    kvs__free(idx);
    send_buf(c, &b);
    return;
nomem:
    if (p != NULL) {
        kvs__free(p->staging);
        kvs__free(p->seen);
    }
    kvs__free(p);
    kvs__free(idx);
    kvs__free(keys);
    kvs__free(offs);
    send_error(c, rid, KVS_ERR_NO_MEMORY, "out of memory staging a PUT");
}

/* Stores puts whose every piece has landed exactly once; drops failed or
 * expired ones. Staging is published only when complete, so no byte of it
 * is ever exposed unwritten. */
static int finish_puts(kvs__peer_t *pp)
{
    int n = 0;
    uint64_t t = now_ns();
    for (sput_t *p = pp->sputs, *next; p != NULL; p = next) {
        next = p->next;
        if (p->outstanding > 0) {
            /* Reads that never end: closing the connection cancels them. */
            if (p->pull && p->conn != NULL && t > p->deadline_ns)
                conn_fail(p->conn, KVS_ERR_TIMED_OUT, "pull PUT timed out");
            continue;
        }
        bool complete =
            !p->dead && (p->pull ? p->bytes_got == p->bytes_expected : p->landed == p->pieces);
        if (!complete && !p->dead && t <= p->deadline_ns)
            continue;
        if (complete && p->conn != NULL) {
            size_t stored = 0;
            kvs_status_t st;
            if (p->pull) {
                /* All or nothing: every slot was read in full, so each one
                 * published holds exactly the client's block. */
                st = kvs__publish_slots(pp->ctx, p->layout_id, p->keys, p->cls, p->slots, p->n,
                                        p->block_bytes, &stored);
                kvs__free(p->slots);
                p->slots = NULL; /* catalogued, or given back by publish */
            } else {
                st = kvs__publish_staged(pp->ctx, p->layout_id, p->keys, p->n, p->staging,
                                         p->block_bytes, &stored);
            }
            kvs__buf_t b;
            kvs__buf_init(&b);
            kvs__enc_put_done(&b, p->req_id, p->conn->session, st, (uint32_t)stored);
            send_buf(p->conn, &b);
            kvs__debug(pp->log, "peer %s: stored %zu of %u put blocks", p->conn->peer, stored,
                       p->n);
        } else if (p->conn != NULL) {
            kvs__warn(pp->log, "peer %s: put of %u blocks %s with %zu of %zu %s", p->conn->peer,
                      p->n, p->dead ? "failed" : "expired", p->pull ? p->bytes_got : p->landed,
                      p->pull ? p->bytes_expected : p->pieces, p->pull ? "bytes" : "pieces");
            if (p->pull && p->rma_failed)
                send_error(p->conn, p->req_id, KVS_ERR_TRANSPORT,
                           "the node's reads of this put failed: push it instead");
            else
                send_error(p->conn, p->req_id, p->dead ? KVS_ERR_PROTOCOL : KVS_ERR_TIMED_OUT,
                           p->dead ? "put refused: a piece was malformed, duplicated or lost"
                                   : "put expired before every piece arrived");
        }
        sput_free(pp, p);
        n++;
    }
    return n;
}

static srv_lease_t **find_lease(conn_t *c, uint64_t id)
{
    for (srv_lease_t **lp = &c->leases; *lp != NULL; lp = &(*lp)->next)
        if ((*lp)->id == id)
            return lp;
    return NULL;
}

static void lease_drop(conn_t *c, srv_lease_t **lp)
{
    srv_lease_t *l = *lp;
    *lp = l->next;
    c->nleases--;
    kvs_lease_release(l->lease);
    kvs__free(l);
}

static void srv_release(conn_t *c, const kvs__msg_t *m)
{
    srv_lease_t **lp = find_lease(c, m->u.release.lease_id);
    if (lp == NULL)
        return; /* already released, expired, or never ours */
    /* The reader is done with these blocks (fetched or gave up): count it
     * before they may go, so a producer waiting on kvs_pool_readers() sees it
     * (with how many readers this one says to expect). */
    kvs__lease_mark_read((*lp)->lease, m->u.release.readers);
    if ((*lp)->table_version > c->regions_acked) /* its reply, and so its table, arrived */
        c->regions_acked = (*lp)->table_version;
    if ((*lp)->pushes > 0) {
        (*lp)->deadline_ns = 0; /* ends when its last push does */
        return;
    }
    lease_drop(c, lp);
}

/* A same-host reader read blocks it found in our index (no lease): count
 * the reads and the accesses. Only a reader we handed the index sends it. */
static void srv_read(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m)
{
    if (pp->index == NULL) {
        conn_fail(c, KVS_ERR_PROTOCOL, "READ, but we have no index to read from");
        return;
    }
    uint32_t n = m->u.read.count;
    uint32_t *idx = kvs__malloc(n * sizeof(*idx));
    uint64_t *serial = kvs__malloc(n * sizeof(*serial));
    if (idx != NULL && serial != NULL) {
        for (uint32_t i = 0; i < n; i++)
            kvs__proto_read_ref(m->u.read.refs, i, &idx[i], &serial[i]);
        kvs__serve_read(pp->ctx, c->layout_id, idx, serial, n, m->u.read.readers);
    }
    kvs__free(idx);
    kvs__free(serial);
}

/* Leases end at their deadline, not only at RELEASE or disconnect. */
static int sweep_leases(kvs__peer_t *pp)
{
    int n = 0;
    uint64_t t = now_ns();
    for (conn_t *c = pp->conns; c != NULL; c = c->next) {
        for (srv_lease_t **lp = &c->leases; *lp != NULL;) {
            if ((*lp)->pushes == 0 && (*lp)->deadline_ns < t) {
                kvs__debug(pp->log, "peer %s: lease %llu expired", c->peer,
                           (unsigned long long)(*lp)->id);
                lease_drop(c, lp);
                n++;
            } else {
                lp = &(*lp)->next;
            }
        }
    }
    return n;
}

static void push_sent(void *arg, kvs_status_t st, size_t len)
{
    push_t *p = arg;
    (void)len;
    p->outstanding--;
    if (st != KVS_OK && p->status == KVS_OK)
        p->status = KVS_ERR_PEER_FAILED;
}

/* Posts the next blocks of a push while its window has room. Returns the
 * number of sends posted. */
static int push_pump(kvs__peer_t *pp, push_t *p)
{
    int posted = 0;
    conn_t *c = p->conn;
    kvs__piece_loc_t *locs = pp->scratch_locs;
    while (p->status == KVS_OK && c != NULL && p->next_block < p->count &&
           p->outstanding < (int)KVS_PEER_PUSH_WINDOW) {
        uint32_t i = p->next_block;
        kvs__block_loc_t loc = {.npieces = MAX_PIECES, .pieces = locs};
        if (kvs__lease_locate(p->sl->lease, p->first + i, &loc) != KVS_OK) {
            p->status = KVS_ERR_STALE;
            break;
        }
        /* Cut the block into the requester's segment sizes, or the ranges
         * it asked for; each must lie within one of our pieces. */
        uint32_t off = 0, nk = p->nchunks, r0 = 0, k = p->next_piece;
        if (p->ranges != NULL) {
            r0 = p->set_at[p->set_of[i]];
            nk = p->set_at[p->set_of[i] + 1] - r0;
        }
        for (uint32_t j = 0; p->ranges == NULL && j < k; j++)
            off += p->chunks[j]; /* resuming a block part-way */
        for (; k < nk && p->status == KVS_OK && p->outstanding < (int)KVS_PEER_PUSH_WINDOW; k++) {
            uint32_t len = p->ranges != NULL ? p->ranges[r0 + k].len : p->chunks[k];
            if (p->ranges != NULL)
                off = p->ranges[r0 + k].off;
            size_t pbase = 0;
            const uint8_t *src = NULL;
            for (size_t q = 0; q < loc.npieces; q++) {
                if (off >= pbase && (size_t)off + len <= pbase + locs[q].len) {
                    src = (const uint8_t *)locs[q].addr + (off - pbase);
                    break;
                }
                pbase += locs[q].len;
            }
            if (src == NULL) {
                p->status = KVS_ERR_LAYOUT_MISMATCH;
                break;
            }
            uint8_t hdr[KVS_PROTO_DATA_LEN];
            kvs__enc_data(hdr, p->req_id, KVS_PROTO_FLAG_FROM_SERVER, c->session, i, off);
            kvs_status_t st =
                pp->ops->am_send(pp->tl, c->ep, hdr, sizeof(hdr), src, len, push_sent, p);
            if (st == KVS_INPROGRESS)
                p->outstanding++;
            else if (st != KVS_OK)
                p->status = KVS_ERR_PEER_FAILED;
            off += len;
            posted++;
        }
        if (k < nk) {
            p->next_piece = k; /* the window is full: go on from here */
        } else {
            p->next_block++;
            p->next_piece = 0;
        }
    }
    return posted;
}

static void push_free(kvs__peer_t *pp, push_t *p)
{
    for (push_t **q = &pp->pushes; *q != NULL; q = &(*q)->next) {
        if (*q == p) {
            *q = p->next;
            break;
        }
    }
    kvs__free(p->chunks);
    kvs__free(p->ranges);
    kvs__free(p->set_at);
    kvs__free(p->set_of);
    kvs__free(p);
}

/* Finishes pushes whose sends all completed: FETCH_DONE carries the
 * generations read after the last byte left, so a block that changed
 * meanwhile shows a different number and the requester discards it. */
static int advance_pushes(kvs__peer_t *pp)
{
    int n = 0;
    for (push_t *p = pp->pushes, *next; p != NULL; p = next) {
        next = p->next;
        if (p->conn != NULL && p->status == KVS_OK && p->next_block < p->count) {
            n += push_pump(pp, p) > 0;
            kick(pp);
        }
        if (p->outstanding > 0 || (p->status == KVS_OK && p->next_block < p->count))
            continue;
        conn_t *c = p->conn;
        if (c != NULL && c->state == S_READY) {
            uint64_t *gens = kvs__malloc((p->count ? p->count : 1) * sizeof(*gens));
            kvs__buf_t b;
            kvs__buf_init(&b);
            kvs_status_t st = gens == NULL ? KVS_ERR_NO_MEMORY : p->status;
            for (uint32_t i = 0; gens != NULL && i < p->count; i++)
                gens[i] = st == KVS_OK ? kvs__lease_gen_now(p->sl->lease, p->first + i) : 0;
            kvs__enc_fetch_done(&b, p->req_id, c->session, st, gens, gens != NULL ? p->count : 0);
            kvs__free(gens);
            send_buf(c, &b);
            c->npushes--;
            if (p->sl != NULL)
                p->sl->pushes--;
        }
        push_free(pp, p);
        n++;
    }
    return n;
}

static void srv_fetch(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m)
{
    srv_lease_t **lp = find_lease(c, m->u.fetch.lease_id);
    uint64_t rid = m->hdr.req_id;
    if (lp == NULL) {
        send_error(c, rid, KVS_ERR_NOT_FOUND, "no such lease (released or expired)");
        return;
    }
    if ((size_t)m->u.fetch.first + m->u.fetch.count > kvs_lease_hits((*lp)->lease)) {
        send_error(c, rid, KVS_ERR_INVALID_PARAM, "fetch beyond the lease");
        return;
    }
    if (c->npushes >= KVS_PEER_MAX_PUSHES) {
        send_error(c, rid, KVS_ERR_BUSY, "too many fetches in flight from this peer");
        return;
    }
    push_t *p = kvs__calloc(1, sizeof(*p));
    uint32_t *chunks = kvs__malloc(((size_t)m->u.fetch.nchunks + 1) * sizeof(*chunks));
    if (p == NULL || chunks == NULL ||
        ((m->hdr.flags & KVS_PROTO_FLAG_RANGES) &&
         kvs__xfer_take_ranges(m, &p->ranges, &p->set_at, &p->set_of) != KVS_OK)) {
        if (p != NULL) {
            kvs__free(p->ranges);
            kvs__free(p->set_at);
            kvs__free(p->set_of);
        }
        kvs__free(p);
        kvs__free(chunks);
        send_error(c, rid, KVS_ERR_NO_MEMORY, "out of memory");
        return;
    }
    for (uint16_t k = 0; k < m->u.fetch.nchunks; k++)
        chunks[k] = kvs__proto_u32_at(m->u.fetch.chunks, k);
    p->conn = c;
    p->sl = *lp;
    p->sl->pushes++;
    p->req_id = rid;
    p->first = m->u.fetch.first;
    p->count = m->u.fetch.count;
    p->chunks = chunks;
    p->nchunks = m->u.fetch.nchunks;
    p->status = KVS_OK;
    p->next = pp->pushes;
    pp->pushes = p;
    c->npushes++;
    push_pump(pp, p);
}

/* ---------------------------------------------------------------------- */
/* Message dispatch (outside transport callbacks, lock held)                */
/* ---------------------------------------------------------------------- */
static void deliver_reply(kvs__peer_t *pp, conn_t *c, inmsg_t *in, const kvs__msg_t *m)
{
    for (waiter_t *w = pp->waiters; w != NULL; w = w->next) {
        if (w->conn == c && w->req_id == m->hdr.req_id && !w->done) {
            w->msg = in->buf;
            w->len = in->len;
            in->buf = NULL;
            w->done = true;
            pthread_cond_broadcast(&pp->cond);
            return;
        }
    }
    dropped(pp, "a reply nobody waits for");
}

static void client_fetch_done(conn_t *c, const kvs__msg_t *m)
{
    preq_t *r = req_on(c, m->hdr.req_id);
    if (r == NULL || r->is_put || !r->push || r->status != KVS_INPROGRESS)
        return;
    if (m->u.fetch_done.status != KVS_OK) {
        r->status = (kvs_status_t)m->u.fetch_done.status;
        return;
    }
    if (m->u.fetch_done.count != r->count) {
        r->status = KVS_ERR_PROTOCOL;
        return;
    }
    for (uint32_t i = 0; i < r->count; i++)
        r->gens_now[i] = kvs__proto_u64_at(m->u.fetch_done.gens, i);
    r->done_msg = true;
}

static void put_sent(void *arg, kvs_status_t st, size_t len);

/* The memory a pull put reads is still registered here: the caller has not
 * destroyed its pool (a push reads it ourselves, so it must still exist). */
static bool pull_src_alive(const kvs__peer_t *pp, const pull_src_t *ps)
{
    for (uint32_t k = 0; k < ps->nregs; k++) {
        const region_t *g = pp->regions;
        while (g != NULL && g->id != ps->regs[k].id)
            g = g->next;
        if (g == NULL)
            return false;
    }
    return true;
}

/* The node could not read batch @k of pull put @r (KVS_ERR_TRANSPORT):
 * offer it again as a push PUT, and push every later put on this
 * connection. Said once per connection. */
static void pull_fall_back(preq_t *r, uint32_t k, const kvs__msg_t *m)
{
    conn_t *c = r->conn;
    kvs__peer_t *pp = c->pp;
    if (!pull_src_alive(pp, r->src)) {
        /* Our blocks are gone (the pool was destroyed mid-put): that is why
         * the reads failed, not the transport; nothing is left to push. */
        r->status = KVS_ERR_PEER_FAILED;
        put_batch_ends(r, k);
        return;
    }
    if (r->src->cuda) {
        kvs__warn(pp->log, "peer %s: the node could not read our CUDA blocks (%.*s)", c->peer,
                  (int)m->u.error.text_len, m->u.error.text);
        r->status = KVS_ERR_UNSUPPORTED; /* and never pushed: no CUDA transport */
        put_batch_ends(r, k);
        return;
    }
    if (!c->push_puts) {
        c->push_puts = true;
        pp->put_fallbacks++;
        kvs__warn(pp->log,
                  "peer %s: the node could not read our blocks (%.*s); puts on this connection "
                  "push them instead",
                  c->peer, (int)m->u.error.text_len, m->u.error.text);
    }
    kvs_status_t st = batch_send(r, k);
    if (st != KVS_OK) {
        r->status = st;
        put_batch_ends(r, k);
    }
}

/* PUT_ACK for batch @k of a pull put that fell back to push: send the
 * wanted blocks as DATA, as a push put does; PUT_DONE then answers the
 * batch like a pulled one. */
static void pull_batch_ack(preq_t *r, uint32_t k, const kvs__msg_t *m)
{
    conn_t *c = r->conn;
    kvs__peer_t *pp = c->pp;
    pull_src_t *ps = r->src;
    size_t cnt, off = batch_span(r, k, &cnt);
    if (r->batch_how[k] != BATCH_PUSH_ASKED || m->u.put_ack.count > cnt) {
        conn_fail(c, KVS_ERR_PROTOCOL, "PUT_ACK for a batch not offered for push, or too long");
        return;
    }
    r->batch_how[k] = BATCH_PUSH_SENT;
    if (r->status != KVS_INPROGRESS)
        return;
    if (!pull_src_alive(pp, ps)) {
        r->status = KVS_ERR_PEER_FAILED;
        return;
    }
    uint64_t rid = r->req_id + k;
    for (uint32_t j = 0; j < m->u.put_ack.count && r->status == KVS_INPROGRESS; j++) {
        uint32_t i = kvs__proto_u32_at(m->u.put_ack.idx, j);
        if (i >= cnt) {
            conn_fail(c, KVS_ERR_PROTOCOL, "PUT_ACK names a block the batch lacks");
            return;
        }
        uint32_t id = ps->ids[off + i], boff = 0;
        for (uint16_t s = 0; s < ps->nsegs; s++) {
            uint8_t hdr[KVS_PROTO_DATA_LEN];
            kvs__enc_data(hdr, rid, 0, c->session, j, boff);
            const uint8_t *from =
                (const uint8_t *)(uintptr_t)ps->segs[s].base + (size_t)id * ps->segs[s].stride;
            kvs_status_t st =
                pp->ops->am_send(pp->tl, c->ep, hdr, sizeof(hdr), from, ps->chunks[s], put_sent, r);
            if (st == KVS_INPROGRESS)
                r->outstanding++;
            else if (st != KVS_OK)
                r->status = KVS_ERR_PEER_FAILED;
            boff += ps->chunks[s];
        }
    }
    kick(pp);
}

/* An ERROR for put request @r (message @id) ends the batch it answers at
 * the node: its room is free again (once per batch). */
static void put_error_ends(preq_t *r, uint64_t id)
{
    uint64_t k = id - r->req_id;
    if (r->pull && k < r->sent) {
        put_batch_ends(r, (uint32_t)k);
    } else if (!r->pull && r->settled == 0 && r->sent == 1) { /* its PUT or pieces refused */
        put_settle(r);
        put_more(r->conn);
    }
}

/* Replies for a pull put's batches that are not its PUT_DONE: true when
 * @m was one (and is handled). */
static bool pull_batch_reply(conn_t *c, const kvs__msg_t *m)
{
    preq_t *r = req_on(c, m->hdr.req_id);
    if (r == NULL || !r->is_put || !r->pull)
        return false;
    uint64_t k = m->hdr.req_id - r->req_id;
    if (k >= r->sent) {
        conn_fail(c, KVS_ERR_PROTOCOL, "a reply for a put batch not sent");
        return true;
    }
    if (m->hdr.type == KVS_MSG_PUT_ACK) {
        pull_batch_ack(r, (uint32_t)k, m);
        return true;
    }
    if (r->status == KVS_INPROGRESS && m->u.error.status == KVS_ERR_TRANSPORT &&
        r->batch_how[k] == BATCH_PULL && !bit_test(r->batch_done, k)) {
        pull_fall_back(r, (uint32_t)k, m);
        return true;
    }
    return false; /* an error like any other: it fails the put */
}

static void handle(kvs__peer_t *pp, inmsg_t *in)
{
    conn_t *c = in->conn;
    if (c->state != S_READY || in->buf == NULL)
        return; /* from a connection already gone, or a receive that failed */
    kvs__msg_t m;
    char why[256];
    if (kvs__proto_decode(in->buf, in->len, &m, why, sizeof(why)) != KVS_OK) {
        conn_fail(c, KVS_ERR_PROTOCOL, "malformed message (%s)", why);
        return;
    }
    if (c->server) {
        switch ((kvs__msg_type_t)m.hdr.type) {
        case KVS_MSG_LOOKUP:
            srv_lookup(pp, c, &m);
            return;
        case KVS_MSG_RELEASE:
            srv_release(c, &m);
            return;
        case KVS_MSG_READ:
            srv_read(pp, c, &m);
            return;
        case KVS_MSG_FETCH:
            srv_fetch(pp, c, &m);
            return;
        case KVS_MSG_PUT:
            srv_put(pp, c, &m);
            return;
        default:
            conn_fail(c, KVS_ERR_PROTOCOL, "message type %u is not a request", m.hdr.type);
            return;
        }
    }
    switch ((kvs__msg_type_t)m.hdr.type) {
    case KVS_MSG_PUT_ACK:
        if (pull_batch_reply(c, &m))
            return;
        deliver_reply(pp, c, in, &m);
        return;
    case KVS_MSG_LOOKUP_REPLY:
        deliver_reply(pp, c, in, &m);
        return;
    case KVS_MSG_ERROR: {
        if (pull_batch_reply(c, &m))
            return;
        preq_t *r = req_on(c, m.hdr.req_id);
        if (r != NULL && r->is_put)
            put_error_ends(r, m.hdr.req_id);
        if (r != NULL && r->status == KVS_INPROGRESS) {
            kvs__warn(pp->log, "peer %s: %.*s", c->peer, (int)m.u.error.text_len, m.u.error.text);
            r->status = m.u.error.status < 0 ? (kvs_status_t)m.u.error.status : KVS_ERR_PROTOCOL;
            return;
        }
        deliver_reply(pp, c, in, &m);
        return;
    }
    case KVS_MSG_PUT_DONE: {
        preq_t *r = req_on(c, m.hdr.req_id);
        if (r == NULL || !r->is_put)
            return;
        kvs_status_t st = (kvs_status_t)m.u.put_done.status;
        if (!r->pull) {
            if (r->settled > 0) {
                conn_fail(c, KVS_ERR_PROTOCOL, "PUT_DONE for a put answered before");
                return;
            }
            put_settle(r);
            if (st == KVS_OK && r->status == KVS_INPROGRESS)
                pp->put_pushed_blocks += m.u.put_done.stored;
            if (r->status == KVS_INPROGRESS)
                r->status = st;
            put_more(c);
            return;
        }
        uint64_t k = m.hdr.req_id - r->req_id;
        if (k >= r->sent || r->batch_how[k] == BATCH_PUSH_ASKED || !bit_claim(r->batch_done, k)) {
            conn_fail(c, KVS_ERR_PROTOCOL, "PUT_DONE for a batch not sent, or twice");
            return;
        }
        put_settle(r);
        if (r->status == KVS_INPROGRESS) {
            if (st == KVS_OK && r->batch_how[k] == BATCH_PULL)
                pp->put_pulled_blocks += m.u.put_done.stored;
            else if (st == KVS_OK)
                pp->put_pushed_blocks += m.u.put_done.stored;
            r->answered++;
            if (st != KVS_OK)
                r->status = st;
            else if (r->answered == r->nreq)
                r->status = KVS_OK;
        }
        put_more(c);
        return;
    }
    case KVS_MSG_FETCH_DONE:
        client_fetch_done(c, &m);
        return;
    default:
        conn_fail(c, KVS_ERR_PROTOCOL, "message type %u is not a reply", m.hdr.type);
        return;
    }
}

/* Handles ready messages in arrival order per connection; a message still
 * landing holds back only its own connection's later messages. */
static int drain_inbox(kvs__peer_t *pp)
{
    int n = 0;
    inmsg_t **mp = &pp->inbox;
    inmsg_t *last = NULL;
    while (*mp != NULL) {
        inmsg_t *m = *mp;
        bool blocked = false;
        for (inmsg_t *e = pp->inbox; e != m && !blocked; e = e->next)
            blocked = e->conn == m->conn && !e->ready;
        if (!m->ready || blocked) {
            last = m;
            mp = &m->next;
            continue;
        }
        *mp = m->next;
        conn_t *c = m->conn;
        c->ninbox--;
        handle(pp, m);
        kvs__free(m->buf);
        kvs__free(m);
        conn_unref(c);
        n++;
    }
    pp->inbox_tail = last != NULL ? &last->next : &pp->inbox;
    return n;
}

/* ---------------------------------------------------------------------- */
/* Bootstrap, server side                                                   */
/* ---------------------------------------------------------------------- */
static kvs_status_t boot_reply(conn_t *c, kvs__buf_t *b)
{
    kvs_status_t st = b->failed ? KVS_ERR_NO_MEMORY
                                : kvs__boot_send(c->fd, b->data, b->len,
                                                 now_ns() + KVS_PEER_BOOT_TIMEOUT_MS * 1000000ull);
    kvs__buf_free(b);
    return st;
}

static void boot_refuse(conn_t *c, kvs_status_t st, const char *text)
{
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_error(&b, 0, KVS_PROTO_FLAG_FROM_SERVER, NULL, st, text);
    boot_reply(c, &b);
    conn_fail(c, st, "%s", text);
}

/* A valid HELLO: check the layout, then challenge the peer. */
static void boot_hello(kvs__peer_t *pp, conn_t *c)
{
    kvs__boot_srv_t *bs = c->boot;
    char served[512];
    c->layout_id = c->asked_layout_id = bs->layout_id;
    if (!kvs__ctx_serves_layout(pp->ctx, c->layout_id, served, sizeof(served)) &&
        !(bs->has_model && kvs__ctx_find_model(pp->ctx, bs->model, &c->layout_id))) {
        /* Another view of the same model would have been served through a
         * plan (the reader plans): so this is another model. */
        char text[700];
        snprintf(text, sizeof(text), "layout mismatch: peer has %016llx, this node serves %s%s",
                 (unsigned long long)c->layout_id, served[0] ? served : "no pools",
                 bs->has_model ? " (the peer's is another model, or a layout that cannot be "
                                 "planned across)"
                               : "");
        kvs__warn(pp->log, "peer %s: %s", c->peer, text);
        boot_refuse(c, KVS_ERR_LAYOUT_MISMATCH, text);
        return;
    }
    if (RAND_bytes(bs->nonce_s, sizeof(bs->nonce_s)) != 1) {
        conn_fail(c, KVS_ERR_IO, "RAND_bytes failed");
        return;
    }
    uint8_t mac[KVS_PROTO_MAC_LEN];
    proof(pp, "kvshare-server", bs->nonce_c, bs->nonce_s, mac);
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_challenge(&b, bs->req_id, bs->nonce_s, mac, !pp->open);
    if (boot_reply(c, &b) != KVS_OK)
        conn_fail(c, KVS_ERR_PEER_FAILED, "bootstrap: sending CHALLENGE failed");
}

/* A proved AUTH: make the transport endpoint, name the session, answer. */
static void boot_auth(kvs__peer_t *pp, conn_t *c)
{
    kvs__boot_srv_t *bs = c->boot;
    if (pp->nready >= KVS_PEER_MAX_CONNS) {
        boot_refuse(c, KVS_ERR_BUSY, "this node has too many connections");
        return;
    }
    if (RAND_bytes(c->session, sizeof(c->session)) != 1) {
        conn_fail(c, KVS_ERR_IO, "RAND_bytes failed");
        return;
    }
    bool rma = false;
    kvs_status_t st = pp->ops->connect(pp->tl, bs->addr, bs->addr_len, c, &c->ep, &rma);
    if (st != KVS_OK) {
        c->ep = NULL;
        boot_refuse(c, KVS_ERR_TRANSPORT, "cannot reach the peer's transport address");
        return;
    }
    c->rma = rma; /* a pool node pulls puts with GET when true */
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__view_t view; /* ours, so that a reader of another view can plan */
    bool with_view = kvs__ctx_view_of(pp->ctx, c->layout_id, &view);
    kvs__proto_begin(&b, KVS_MSG_HELLO_ACK,
                     KVS_PROTO_FLAG_FROM_SERVER | KVS_PROTO_FLAG_REGIONS |
                         (with_view ? KVS_PROTO_FLAG_VIEW : 0) |
                         (pp->shm_srv != NULL && bs->shm ? KVS_PROTO_FLAG_SHM : 0),
                     bs->req_id, c->session);
    kvs__buf_u32(&b, (uint32_t)pp->addr_len);
    kvs__buf_put(&b, pp->addr, pp->addr_len);
    if (with_view) {
        uint8_t wire[KVS_VIEW_WIRE_LEN];
        kvs__view_encode(&view, wire);
        kvs__buf_put(&b, wire, sizeof(wire));
    }
    put_regions(pp, c, &b);
    if (pp->shm_srv != NULL && bs->shm)
        kvs__shm_srv_put_offer(pp->shm_srv, &b);
    if (kvs__proto_finish(&b) != KVS_OK || boot_reply(c, &b) != KVS_OK) {
        kvs__buf_free(&b);
        conn_fail(c, KVS_ERR_PEER_FAILED, "bootstrap: sending HELLO_ACK failed");
        return;
    }
    pp->npreauth--;
    pp->nready++;
    c->state = S_READY;
    kvs__free(c->boot);
    c->boot = NULL;
    kvs__info(pp->log, "peer %s: ready (layout %016llx)", c->peer,
              (unsigned long long)c->layout_id);
}

/* Reads what a pre-auth peer sent; handles a whole message when there is
 * one (boot.c decides, pure). Never more than KVS_PROTO_MAX_PREAUTH bytes. */
static void boot_readable(kvs__peer_t *pp, conn_t *c)
{
    if (c->state == S_READY) {
        /* After the handshake the socket only says the peer is alive. */
        uint8_t b[64];
        ssize_t n = recv(c->fd, b, sizeof(b), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            /* What it sent on its control channel before it went (a
             * context that goes sends its last READs, then closes) is
             * still queued there: handle it before the channel closes. */
            if (c->ctl_fd >= 0 && ctl_read(pp, c) > 0)
                drain_inbox(pp);
            conn_fail(c, KVS_ERR_PEER_FAILED, "bootstrap connection closed");
        } else if (n > 0)
            conn_fail(c, KVS_ERR_PROTOCOL, "unexpected bytes on the bootstrap connection");
        return;
    }
    kvs__boot_srv_t *bs = c->boot;
    char why[200];
    long want = kvs__boot_srv_want(bs, why, sizeof(why));
    if (want > 0) {
        ssize_t n = recv(c->fd, bs->rx + bs->rx_len, (size_t)want, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_fail(c, KVS_ERR_PEER_FAILED, "closed during the handshake");
            return;
        }
        if (n < 0)
            return;
        bs->rx_len += (size_t)n;
        want = kvs__boot_srv_want(bs, why, sizeof(why));
    }
    if (want < 0) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bootstrap: %s", why);
        return;
    }
    if (want > 0)
        return;
    kvs_status_t st =
        kvs__boot_srv_take(bs, pp->secret, pp->secret_len, pp->open, why, sizeof(why));
    if (st == KVS_INPROGRESS)
        boot_hello(pp, c);
    else if (st == KVS_OK)
        boot_auth(pp, c);
    else if (st == KVS_ERR_AUTH)
        boot_refuse(c, st, why);
    else
        conn_fail(c, st, "bootstrap: %s", why);
}

/* Accepts what is waiting. When the pre-auth table is full the oldest
 * unauthenticated connection goes: silent connections cannot lock out a
 * peer that completes its handshake. */
static int boot_accept(kvs__peer_t *pp)
{
    int n = 0;
    for (;;) {
        char name[256];
        int fd = kvs__boot_accept(pp->lfd, name, sizeof(name));
        if (fd < 0)
            break;
        n++;
        if (pp->npreauth >= KVS_PEER_MAX_PREAUTH) {
            conn_t *oldest = NULL;
            for (conn_t *c = pp->conns; c != NULL; c = c->next)
                if (c->server && c->state != S_READY && c->state != S_FAILED &&
                    (oldest == NULL || c->accepted_seq < oldest->accepted_seq))
                    oldest = c;
            if (oldest != NULL)
                conn_fail(oldest, KVS_ERR_BUSY, "pre-auth table full: dropped the oldest");
        }
        conn_t *c = conn_new(pp, true);
        kvs__boot_srv_t *bs = kvs__calloc(1, sizeof(*bs));
        if (c == NULL || bs == NULL) {
            kvs__free(bs);
            close(fd);
            if (c != NULL) {
                conn_unlink(c);
                kvs__free(c);
            }
            continue;
        }
        c->fd = fd;
        c->boot = bs;
        c->state = S_WAIT_HELLO;
        c->accepted_seq = ++pp->accept_seq;
        c->boot_deadline_ns = now_ns() + KVS_PEER_BOOT_TIMEOUT_MS * 1000000ull;
        snprintf(c->peer, sizeof(c->peer), "%s", name);
        pp->npreauth++;
    }
    return n;
}

static void boot_deadlines(kvs__peer_t *pp)
{
    uint64_t t = now_ns();
    for (conn_t *c = pp->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->server && (c->state == S_WAIT_HELLO || c->state == S_WAIT_AUTH) &&
            t > c->boot_deadline_ns)
            conn_fail(c, KVS_ERR_TIMED_OUT, "handshake not completed in %u ms",
                      KVS_PEER_BOOT_TIMEOUT_MS);
    }
}

/* Issue 15: on the same-host path a LOOKUP round trip is three hand-offs
 * between sleeping threads (the holder's progress thread, the reader's, the
 * reader's app thread). Per-hop timestamps on the 2-core VM showed the
 * wake-ups, not the holder's work, as most of it; the last hop (the reader's
 * progress thread has the reply, the app thread wakes for it) went from
 * 15-85 us to about 3 us once the caller polled. So a caller waiting for a
 * reply polls for KVSHARE_POLL_US (default 100 us, at most 1 ms, 0: off)
 * before it sleeps, and a progress thread that has just had work for
 * KVSHARE_THREAD_POLL_US (default off). A window is counted from the request
 * or the last work, never renewed by polling itself, so an idle engine
 * sleeps: each message costs at most one window of CPU. Returns when the
 * window opened at @since_ns closes (0: closed already). */
static uint64_t poll_window(const kvs__peer_t *pp, uint64_t since_ns)
{
    return pp->poll_ns > 0 && since_ns > 0 ? since_ns + pp->poll_ns : 0;
}

/* Polling pays only when what we wait for comes within the window. On an
 * oversubscribed host it often does not (A/B on the 2-core VM at load 5-9:
 * a thread that polls and is preempted waits behind the others for a whole
 * slice, where a sleeper would be woken ahead of them, and the mean lookup
 * got worse). So each kind of window keeps the odds that it caught its
 * event (a moving average over about 8 windows) and is opened only while
 * they are even or better, and on every 16th chance otherwise, to notice
 * the host has become quiet. */
static bool poll_try(poll_odds_t *o)
{
    return o->score >= 128 || ++o->skipped % 16 == 0;
}

static void poll_learn(poll_odds_t *o, bool hit)
{
    o->score = (o->score * 7 + (hit ? 256u : 0u)) / 8;
}

/* A round of a polling loop gives the core away: on an idle host
 * sched_yield returns at once, on a busy one the thread we are waiting for
 * (the holder, our progress thread) may be the one queued behind us. */
static void cpu_relax(void)
{
    sched_yield();
}

/* Polls the bootstrap sockets (listener and every connection's) for at
 * most @timeout_ms, with the lock released while waiting, and handles what
 * is ready. The transport's event fd and the wake fd are polled too. */
static void stall_check(kvs__peer_t *pp, uint64_t t0, uint64_t allowed_ns, const char *what);

static int boot_poll(kvs__peer_t *pp, int timeout_ms)
{
    /* The arrays persist and grow only with the number of connections: no
     * allocation per round in the progress thread. */
    size_t cap = 3;
    for (conn_t *c = pp->conns; c != NULL; c = c->next)
        cap += 2; /* its bootstrap socket, its control channel */
    if (cap > pp->poll_cap) {
        size_t want = cap * 2;
        struct pollfd *f = kvs__realloc(pp->poll_fds, want * sizeof(*f));
        if (f != NULL)
            pp->poll_fds = f;
        conn_t **w = kvs__realloc(pp->poll_who, want * sizeof(*w));
        if (w != NULL)
            pp->poll_who = w;
        if (f == NULL || w == NULL) {
            kvs__warn(pp->log, "out of memory polling %zu bootstrap sockets", cap);
            return 0;
        }
        pp->poll_cap = want;
    }
    struct pollfd *fds = pp->poll_fds;
    conn_t **who = pp->poll_who;
    size_t n = 0;
    int tfd = pp->ops->event_fd(pp->tl);
    if (timeout_ms > 0 && tfd >= 0) {
        fds[n] = (struct pollfd){.fd = tfd, .events = POLLIN};
        who[n++] = NULL;
    }
    if (timeout_ms > 0 && pp->wakefd >= 0) {
        fds[n] = (struct pollfd){.fd = pp->wakefd, .events = POLLIN};
        who[n++] = NULL;
    }
    if (pp->lfd >= 0) {
        fds[n] = (struct pollfd){.fd = pp->lfd, .events = POLLIN};
        who[n++] = NULL;
    }
    for (conn_t *c = pp->conns; c != NULL && n < cap; c = c->next) {
        if (c->fd >= 0) {
            fds[n] = (struct pollfd){.fd = c->fd, .events = POLLIN};
            who[n++] = c;
            c->refs++; /* it may fail while we wait unlocked */
        }
        if (c->ctl_fd >= 0 && n < cap) {
            fds[n] = (struct pollfd){.fd = c->ctl_fd, .events = POLLIN};
            who[n++] = c;
            c->refs++;
        }
    }
    /* The progress thread, a moment after it had work: poll without
     * sleeping until KVSHARE_THREAD_POLL_US since that work have passed
     * (see poll_window), unless a caller is polling the worker already. */
    uint64_t until = timeout_ms > 0 && pp->pollers == 0 && pp->tpoll_ns > 0 && pp->last_work_ns > 0
                         ? pp->last_work_ns + pp->tpoll_ns
                         : 0;
    bool spin = until > now_ns() && poll_try(&pp->spin_odds);
    if (timeout_ms > 0)
        unlock(pp);
    int r = 0;
    while (spin && now_ns() < until && (r = poll(fds, (nfds_t)n, 0)) == 0)
        cpu_relax();
    if (spin)
        poll_learn(&pp->spin_odds, r > 0); /* only this thread: no lock needed */
    uint64_t t0 = now_ns();
    if (r == 0)
        r = poll(fds, (nfds_t)n, timeout_ms);
    if (timeout_ms > 0)
        lock(pp);
    /* Late back from poll() (and the lock): this thread did not run. */
    stall_check(pp, t0, (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u,
                "getting the CPU and the lock back after polling");
    t0 = now_ns();
    int done = 0;
    for (size_t i = 0; i < n; i++) {
        if (r > 0 && fds[i].revents != 0) {
            if (who[i] != NULL) {
                if (who[i]->state != S_FAILED && who[i]->fd == fds[i].fd)
                    boot_readable(pp, who[i]);
                else if (who[i]->state == S_READY && who[i]->ctl_fd == fds[i].fd)
                    ctl_read(pp, who[i]);
                done++;
            } else if (fds[i].fd == pp->lfd) {
                done += boot_accept(pp);
            } else if (fds[i].fd == pp->wakefd) {
                uint64_t v;
                ssize_t k = read(pp->wakefd, &v, sizeof(v));
                (void)k;
            }
        }
        if (who[i] != NULL)
            conn_unref(who[i]);
    }
    boot_deadlines(pp);
    stall_check(pp, t0, 0, "handling the bootstrap sockets");
    return done;
}

/* ---------------------------------------------------------------------- */
/* Progress                                                                 */
/* ---------------------------------------------------------------------- */
static int advance_requests(kvs__peer_t *pp);

static bool reads_due(kvs__peer_t *pp, uint64_t t);

static void check_deadlines(kvs__peer_t *pp)
{
    uint64_t t = now_ns();
    for (preq_t *r = pp->reqs; r != NULL; r = r->next) {
        if (r->status == KVS_INPROGRESS && t > r->deadline_ns && r->is_put && r->pull &&
            r->settled == r->sent) {
            /* Nothing of it at the node: its batches waited for room
             * there (put_more) until its deadline. It alone times out. */
            r->status = KVS_ERR_TIMED_OUT;
            continue;
        }
        if (r->status == KVS_INPROGRESS && t > r->deadline_ns && r->conn->state != S_FAILED &&
            r->mapped == MAPPED_NONE) { /* a mapped copy needs no peer: it runs when waited for */
            /* Closing the connection cancels what is in flight, so nothing
             * lands in the destination after we report the timeout. */
            conn_fail(r->conn, KVS_ERR_TIMED_OUT,
                      "request timed out (%s, stage %d: %zu of %zu bytes, %d transport "
                      "operations outstanding)",
                      r->is_put ? "put"
                      : r->push ? "fetch pushed"
                                : "fetch by GET",
                      r->stage, r->bytes_got, r->bytes_expected, r->outstanding);
            r->status = KVS_ERR_TIMED_OUT;
        }
    }
}

/* Drives the transport and everything queued behind it. Lock held. */
static int progress_locked(kvs__peer_t *pp)
{
    int n = 0;
    while (pp->ops->progress(pp->tl) != 0)
        n++;
    for (conn_t *c = pp->conns, *next; c != NULL; c = next) {
        next = c->next;
        /* A caller waits for a reply that may come on the channel: read it
         * here, with no wake-up. Otherwise the progress thread reads when
         * poll says so; without one, every round does. */
        if (c->ctl_fd >= 0 && (c->ctl_waiters > 0 || !pp->thread_mode))
            n += ctl_read(pp, c);
        if (c->doom_status != KVS_OK && c->state != S_FAILED) {
            char why[sizeof(c->doom_why)];
            memcpy(why, c->doom_why, sizeof(why));
            conn_fail(c, c->doom_status, "%s", why);
            n++;
        }
    }
    n += drain_inbox(pp);
    n += advance_pushes(pp);
    n += finish_puts(pp);
    n += advance_requests(pp);
    /* Housekeeping at most once a millisecond, so busy waiters do not pay
     * a syscall and a lease walk per round. Without a thread, the bootstrap
     * sockets are polled from here. */
    uint64_t t = now_ns();
    if (t - pp->last_boot_poll_ns > 1000000u) {
        pp->last_boot_poll_ns = t;
        if (!pp->thread_mode)
            n += boot_poll(pp, 0);
        n += sweep_leases(pp);
        reads_due(pp, t);
        check_deadlines(pp);
    }
    if (n > 0)
        pthread_cond_broadcast(&pp->cond);
    return n;
}

static void cond_sleep(kvs__peer_t *pp, uint64_t until_ns);
static bool run_a_mapped_copy(kvs__peer_t *pp);

/* A progress round that takes seconds stalls every peer of this node: their
 * requests time out while the replies wait here. Said at most every 10 s,
 * so that a log tells a stall on this side from a message lost on the way
 * (the host starved of CPU, or a transport call that blocked). */
static void stall_check(kvs__peer_t *pp, uint64_t t0, uint64_t allowed_ns, const char *what)
{
    uint64_t t = now_ns();
    if (t - t0 < allowed_ns + STALL_WARN_NS ||
        (pp->stall_warned_ns != 0 && t - pp->stall_warned_ns < 10000000000ull))
        return;
    pp->stall_warned_ns = t;
    kvs__warn(pp->log, "progress: %s took %llu ms; peers' requests waited meanwhile", what,
              (unsigned long long)((t - t0 - allowed_ns) / 1000000u));
}

static void *progress_thread(void *arg)
{
    kvs__peer_t *pp = arg;
    unsigned busy = 0;
    bool stood_aside = false;
    lock(pp);
    pp->thread_running = true; /* kvs__peer_create waits for this */
    pthread_cond_broadcast(&pp->cond);
    while (!pp->stopping) {
        if (pp->pollers > 0 && !stood_aside) {
            /* A caller is polling for its reply (wait_idle): let it take
             * the reply itself rather than hand it over with a wake-up. We
             * are woken by its progress, and sleep one window at most;
             * then one full round, so callers that poll back to back do
             * not starve the bootstrap sockets only this thread polls. */
            stood_aside = true;
            cond_sleep(pp, now_ns() + pp->poll_ns);
            continue;
        }
        stood_aside = false;
        uint64_t t0 = now_ns();
        if (progress_locked(pp) > 0)
            pp->last_work_ns = now_ns(); /* opens the polling window */
        stall_check(pp, t0, 0, "one round of transport progress");
        if (!pp->ops->arm(pp->tl)) {
            /* Events pending: progress again, but let callers take the lock
             * in between, and stop spinning if it never settles (a dead
             * peer's transport can keep the worker busy). */
            unlock(pp);
            if (++busy > 64) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            } else {
                sched_yield();
            }
            lock(pp);
            boot_poll(pp, 0);
            continue;
        }
        busy = 0;
        /* READs waiting to go: back within their deferral, not the idle
         * wake's 20 ms (a wake-up of our own thread, not the holder's). */
        bool reads = reads_due(pp, now_ns());
        boot_poll(pp, reads ? (int)(READ_DEFER_NS / 1000000u) : IDLE_WAKE_MS);
    }
    unlock(pp);
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Waiting                                                                  */
/* ---------------------------------------------------------------------- */
static void cond_sleep(kvs__peer_t *pp, uint64_t until_ns)
{
    uint64_t t = now_ns();
    if (until_ns <= t)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t rel = until_ns - t;
    ts.tv_sec += (time_t)(rel / 1000000000u);
    ts.tv_nsec += (long)(rel % 1000000000u);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    kick_now(pp);
    pthread_cond_timedwait(&pp->cond, &pp->lock, &ts);
}

/* One idle round of a caller waiting in thread mode (lock held): inside
 * the polling window (poll_window) it lets go of the lock for a moment and
 * comes back to drive progress itself, so a reply that arrives is taken by
 * this thread with no wake-up; after the window it sleeps on the condition
 * variable, woken by the progress thread. */
static void wait_idle(kvs__peer_t *pp, uint64_t t, uint64_t poll_until, uint64_t deadline_ns)
{
    if (t < poll_until) {
        /* While a caller polls, the progress thread does not: one thread
         * spinning on a worker is enough, and on a small host two would
         * take the cores from the peer we wait for. */
        pp->pollers++;
        unlock(pp);
        cpu_relax();
        lock(pp);
        pp->pollers--;
        return;
    }
    cond_sleep(pp, deadline_ns - t > 1000000u ? t + 1000000u : deadline_ns);
}

/* Waits (lock held) until *flag or the deadline. The waiter drives
 * progress itself while there is work; it sleeps only when nothing moves
 * for the polling window. */
static bool wait_until(kvs__peer_t *pp, const bool *flag, uint64_t deadline_ns)
{
    bool polls = pp->thread_mode && pp->poll_ns > 0 && poll_try(&pp->wait_odds);
    uint64_t poll_until = polls ? poll_window(pp, now_ns()) : 0;
    while (!*flag) {
        uint64_t t = now_ns();
        if (t >= deadline_ns)
            break;
        if (progress_locked(pp) > 0 || *flag)
            continue;
        /* Rather than idle, a deferred copy of ours (a pipelined caller's
         * last fetch) runs while the reply crosses the wire. Mapped
         * copies come from a holder on this host, which may be computing
         * that reply: where our helpers would take its core, a small copy
         * goes without them (kvs__copier_solo). */
        bool was = pp->copy_leaves_core && kvs__copier_solo(true);
        bool ran = run_a_mapped_copy(pp);
        if (pp->copy_leaves_core)
            kvs__copier_solo(was);
        if (ran)
            continue;
        if (pp->thread_mode)
            wait_idle(pp, t, poll_until, deadline_ns);
        else
            boot_poll(pp, 0);
    }
    /* At the deadline, take what has arrived before calling it lost: after
     * this process was descheduled for a while (a loaded host, a paused
     * VM) the reply may be waiting in the transport already. */
    if (!*flag)
        progress_locked(pp);
    if (polls)
        poll_learn(&pp->wait_odds, *flag && now_ns() <= poll_until);
    return *flag;
}

static waiter_t *waiter_add(kvs__peer_t *pp, conn_t *c, uint64_t req_id)
{
    waiter_t *w = kvs__calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->conn = c;
    w->req_id = req_id;
    w->next = pp->waiters;
    pp->waiters = w;
    return w;
}

static void waiter_del(kvs__peer_t *pp, waiter_t *w)
{
    if (w == NULL)
        return;
    for (waiter_t **wp = &pp->waiters; *wp != NULL; wp = &(*wp)->next) {
        if (*wp == w) {
            *wp = w->next;
            break;
        }
    }
    kvs__free(w->msg);
    kvs__free(w);
}

/* Sends @b and waits for the reply with the same request id. On KVS_OK the
 * decoded reply is in *m and its buffer in *w_p (free with waiter_del). */
static kvs_status_t request(kvs__peer_t *pp, conn_t *c, kvs__buf_t *b, uint64_t req_id,
                            uint64_t deadline_ns, waiter_t **w_p, kvs__msg_t *m)
{
    waiter_t *w = waiter_add(pp, c, req_id);
    if (w == NULL) {
        kvs__buf_free(b);
        return KVS_ERR_NO_MEMORY;
    }
    kvs_status_t st = send_buf(c, b);
    if (st != KVS_OK) {
        waiter_del(pp, w);
        conn_fail(c, st, "send failed");
        return st;
    }
    if (!wait_until(pp, &w->done, deadline_ns)) {
        waiter_del(pp, w);
        conn_fail(c, KVS_ERR_TIMED_OUT, "no reply before the deadline");
        return KVS_ERR_TIMED_OUT;
    }
    if (w->msg == NULL) { /* woken by a failure */
        waiter_del(pp, w);
        return c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
    }
    char why[256];
    st = kvs__proto_decode(w->msg, w->len, m, why, sizeof(why));
    if (st != KVS_OK) {
        waiter_del(pp, w);
        conn_fail(c, KVS_ERR_PROTOCOL, "malformed reply: %s", why);
        return KVS_ERR_PROTOCOL;
    }
    if (m->hdr.type == KVS_MSG_ERROR) {
        kvs__error(pp->log, "peer %s: %.*s", c->peer, (int)m->u.error.text_len, m->u.error.text);
        st = (kvs_status_t)m->u.error.status;
        waiter_del(pp, w);
        return st < 0 ? st : KVS_ERR_PROTOCOL;
    }
    *w_p = w;
    return KVS_OK;
}

/* ---------------------------------------------------------------------- */
/* Bootstrap, client side                                                   */
/* ---------------------------------------------------------------------- */
static kvs_status_t boot_error(kvs__peer_t *pp, const char *peer, const kvs__msg_t *m)
{
    kvs__error(pp->log, "peer %s: %.*s", peer, (int)m->u.error.text_len, m->u.error.text);
    return m->u.error.status < 0 ? (kvs_status_t)m->u.error.status : KVS_ERR_PROTOCOL;
}

/* One client step of the handshake: sends @out (a finished message), reads
 * the reply (body at most @max_body) and expects @type. On KVS_OK *in_p is
 * the reply's buffer (kvs__free it) and *m decodes it. */
static kvs_status_t boot_step(kvs__peer_t *pp, int fd, const char *peer, kvs__buf_t *out,
                              uint32_t max_body, uint16_t type, uint64_t deadline, uint8_t **in_p,
                              size_t *in_len_p, kvs__msg_t *m)
{
    char why[200] = "out of memory";
    uint8_t *in = NULL;
    kvs_status_t st = out->failed ? KVS_ERR_NO_MEMORY : KVS_OK;
    if (st == KVS_OK)
        st = kvs__boot_send(fd, out->data, out->len, deadline);
    kvs__buf_free(out);
    if (st == KVS_OK)
        st = kvs__boot_recv(fd, max_body, deadline, &in, in_len_p, why, sizeof(why));
    if (st == KVS_OK)
        st = kvs__proto_decode(in, *in_len_p, m, why, sizeof(why));
    bool peer_said = false; /* boot_error logged the peer's own reason */
    if (st == KVS_OK && m->hdr.type == KVS_MSG_ERROR) {
        st = boot_error(pp, peer, m);
        peer_said = true;
    } else if (st == KVS_OK && m->hdr.type != type) {
        snprintf(why, sizeof(why), "expected message type %u, got %u", type, m->hdr.type);
        st = KVS_ERR_PROTOCOL;
    }
    if (st != KVS_OK) {
        if (!peer_said)
            kvs__error(pp->log, "peer %s: handshake: %s", peer, why);
        kvs__free(in);
        return st;
    }
    *in_p = in;
    return KVS_OK;
}

/* The client's half of the handshake, over a blocking socket with no lock
 * held. On KVS_OK *ack_p holds the server's HELLO_ACK (kvs__free it). */
static kvs_status_t boot_client(kvs__peer_t *pp, int fd, const char *peer, uint64_t layout_id,
                                uint64_t deadline, uint8_t *nonce_c, uint8_t **ack_p,
                                size_t *ack_len_p, kvs__view_t *view, bool *has_view)
{
    kvs__buf_t b;
    kvs__msg_t m;
    uint8_t *in = NULL;
    size_t in_len = 0;
    char host[64], name[112];
    if (RAND_bytes(nonce_c, KVS_PROTO_NONCE_LEN) != 1)
        return KVS_ERR_IO;
    if (gethostname(host, sizeof(host)) != 0)
        strcpy(host, "?");
    host[sizeof(host) - 1] = '\0';
    snprintf(name, sizeof(name), "%s:%d%s", host, (int)getpid(),
             pp->shm_on ? KVS_BOOT_SHM_MARK : "");
    kvs__buf_init(&b);
    /* Our model, so a holder of another view of it may serve us. Asked
     * here, with no lock of ours held (the pools' lock is taken inside). */
    *has_view = kvs__ctx_view_of(pp->ctx, layout_id, view);
    if (*has_view)
        kvs__enc_hello_model(&b, 1, layout_id, nonce_c, name, view->model);
    else
        kvs__enc_hello(&b, 1, layout_id, nonce_c, name);
    kvs_status_t st = boot_step(pp, fd, peer, &b, KVS_PROTO_MAX_PREAUTH, KVS_MSG_CHALLENGE,
                                deadline, &in, &in_len, &m);
    if (st != KVS_OK)
        return st;
    uint8_t nonce_s[KVS_PROTO_NONCE_LEN];
    memcpy(nonce_s, m.u.challenge.nonce, sizeof(nonce_s));
    bool required = m.u.challenge.auth_required;
    uint8_t want[KVS_PROTO_MAC_LEN];
    proof(pp, "kvshare-server", nonce_c, nonce_s, want);
    bool server_proved =
        !pp->open && required && CRYPTO_memcmp(want, m.u.challenge.mac, sizeof(want)) == 0;
    kvs__free(in);
    if (required && pp->open) {
        kvs__error(pp->log,
                   "peer %s: requires authentication: set KVSHARE_AUTH_TOKEN_FILE to "
                   "the shared secret",
                   peer);
        return KVS_ERR_AUTH;
    }
    if (!pp->open && !server_proved) {
        kvs__error(pp->log, "peer %s: did not prove the shared secret; refusing it", peer);
        return KVS_ERR_AUTH;
    }
    uint8_t mac[KVS_PROTO_MAC_LEN];
    proof(pp, "kvshare-client", nonce_c, nonce_s, mac);
    kvs__buf_init(&b);
    kvs__enc_auth(&b, 2, mac, pp->addr, pp->addr_len);
    st = boot_step(pp, fd, peer, &b, MAX_ACK_BODY, KVS_MSG_HELLO_ACK, deadline, &in, &in_len, &m);
    if (st != KVS_OK)
        return st;
    if (m.u.hello_ack.addr_len == 0) {
        kvs__error(pp->log, "peer %s: handshake: HELLO_ACK carries no transport address", peer);
        kvs__free(in);
        return KVS_ERR_PROTOCOL;
    }
    *ack_p = in;
    *ack_len_p = in_len;
    return KVS_OK;
}

/* Finds or makes a ready connection to @peer for @layout_id. Called with
 * the lock held; releases it around the blocking handshake. On KVS_OK the
 * caller holds a reference. */
/* The holder's view from its HELLO_ACK: when it differs from ours, fetches
 * go through a plan (xfetch_start). */
static kvs_status_t take_view(kvs__peer_t *pp, conn_t *c, const kvs__msg_t *m,
                              const kvs__view_t *ours)
{
    if (!(m->hdr.flags & KVS_PROTO_FLAG_VIEW))
        return KVS_OK; /* a pool node: bytes as they are */
    c->lview = *ours;
    kvs__view_decode(m->u.hello_ack.view, &c->rview);
    const kvs__view_t *l = &c->lview, *h = &c->rview;
    if (kvs__view_same(l, h) && l->key_tokens == l->block_tokens)
        return KVS_OK;
    char why[128];
    if (!kvs__view_compatible(h, l, why, sizeof(why))) {
        kvs__warn(pp->log, "peer %s: holds %s; its blocks are a miss", c->peer, why);
        return KVS_ERR_LAYOUT_MISMATCH;
    }
    c->xview = true;
    uint32_t first, count;
    kvs__view_overlap(h, l, &first, &count);
    kvs__info(pp->log,
              "peer %s: holds TP rank %u/%u %s %u-token blocks, we TP rank %u/%u %s %u-token: "
              "fetches are planned (it has %u of our %u KV heads)",
              c->peer, h->tp_rank, h->tp_size, h->kv_layout == KVS_KV_HND ? "HND" : "NHD",
              h->block_tokens, l->tp_rank, l->tp_size, l->kv_layout == KVS_KV_HND ? "HND" : "NHD",
              l->block_tokens, count, l->heads);
    return KVS_OK;
}

static kvs_status_t get_conn_as(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                                uint64_t deadline, const dialer_t *self, conn_t **c_p)
{
    for (;;) {
        for (conn_t *c = pp->conns; c != NULL; c = c->next) {
            if (!c->server && c->layout_id == layout_id && strcmp(c->peer, peer) == 0 &&
                c->state == S_READY) {
                c->refs++;
                *c_p = c;
                return KVS_OK;
            }
        }
        /* A background connect to the same peer is under way: wait for it
         * rather than make a second connection beside it. */
        const dialer_t *d = pp->dialers;
        while (d != NULL &&
               (d == self || d->done || d->layout_id != layout_id || strcmp(d->peer, peer) != 0))
            d = d->next;
        if (d == NULL)
            break;
        if (now_ns() >= deadline)
            return KVS_ERR_TIMED_OUT;
        cond_sleep(pp, deadline);
    }
    if (strlen(peer) >= sizeof(((conn_t *)0)->peer))
        return KVS_ERR_INVALID_PARAM;
    if (pp->no_secret) {
        kvs__error(pp->log,
                   "peer %s: authentication is on by default and KVSHARE_AUTH_TOKEN_FILE is not "
                   "set: point it at the shared token, or set KVSHARE_AUTH=none to run open",
                   peer);
        return KVS_ERR_AUTH;
    }
    uint64_t boot_deadline = now_ns() + KVS_PEER_BOOT_TIMEOUT_MS * 1000000ull;
    if (boot_deadline > deadline)
        boot_deadline = deadline;
    uint8_t nonce_c[KVS_PROTO_NONCE_LEN];
    uint8_t *ack = NULL;
    size_t ack_len = 0;
    kvs_status_t st;
    kvs__view_t lview;
    bool has_lview = false;
    unlock(pp);
    int fd = kvs__boot_connect(peer, boot_deadline, &st);
    if (fd >= 0) {
        st = boot_client(pp, fd, peer, layout_id, boot_deadline, nonce_c, &ack, &ack_len, &lview,
                         &has_lview);
        if (st != KVS_OK) {
            close(fd);
            fd = -1;
        }
    } else if (st == KVS_ERR_INVALID_PARAM || st == KVS_ERR_NOT_FOUND) {
        kvs__error(pp->log, "peer '%s': cannot resolve (expected HOST:PORT)", peer);
        st = st == KVS_ERR_NOT_FOUND ? KVS_ERR_PEER_FAILED : st;
    } else {
        kvs__warn(pp->log, "peer %s: cannot connect: %s", peer, kvs_status_string(st));
    }
    lock(pp);
    if (st != KVS_OK)
        return st;
    kvs__msg_t m;
    kvs__proto_decode(ack, ack_len, &m, NULL, 0); /* validated in boot_client */
    conn_t *c = conn_new(pp, false);
    if (c == NULL) {
        close(fd);
        kvs__free(ack);
        return KVS_ERR_NO_MEMORY;
    }
    strcpy(c->peer, peer);
    c->layout_id = layout_id;
    c->fd = fd;
    c->state = S_READY;
    pp->nready++;
    c->refs++; /* the caller's */
    memcpy(c->session, m.hdr.session, sizeof(c->session));
    st = take_regions(c, &m);
    if (st == KVS_OK && has_lview)
        st = take_view(pp, c, &m, &lview);
    /* Same host: the holder's memory mapped (whole blocks, or a plan's
     * copies across views). */
    if (st == KVS_OK && pp->shm_on && (m.hdr.flags & KVS_PROTO_FLAG_SHM))
        c->shm = kvs__shm_peer_new(m.u.hello_ack.boot_id, m.u.hello_ack.shm_path,
                                   m.u.hello_ack.shm_path_len, c->session, pp->secret,
                                   pp->secret_len, pp->open, c->peer, pp->log);
    kvs__shm_peer_set_copier(c->shm, pp->copier, pp->copy_stream);
    bool rma = false;
    if (st == KVS_OK)
        st = pp->ops->connect(pp->tl, m.u.hello_ack.addr, m.u.hello_ack.addr_len, c, &c->ep, &rma);
    kvs__free(ack);
    if (st != KVS_OK) {
        c->ep = NULL;
        conn_fail(c, st, "connecting the transport: %s", kvs_status_string(st));
        conn_unref(c);
        return st;
    }
    c->rma = rma;
    if (rma)
        unpack_rkeys(c);
    kvs__info(pp->log, "peer %s: ready, data path %s", c->peer,
              c->shm != NULL ? "mapped memory (same host)"
              : c->rma       ? "GET"
                             : "active-message push");
    /* A request waiting on a background connect to this peer may use the
     * connection now, not only once the connect's warm-up is over. */
    pthread_cond_broadcast(&pp->cond);
    *c_p = c;
    return KVS_OK;
}

static kvs_status_t get_conn(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                             uint64_t deadline, conn_t **c_p)
{
    return get_conn_as(pp, peer, layout_id, deadline, NULL, c_p);
}

/* ---------------------------------------------------------------------- */
/* Connecting ahead of the first request                                    */
/* ---------------------------------------------------------------------- */
/* One round trip over the transport (a LOOKUP of no keys: no lease, and
 * the node's newest regions come with the reply), so that UCX has wired up
 * both directions of the endpoint before the first real request. Without
 * it the first lookup paid 10-20 ms of UCX wire-up here. Lock held. */
static kvs_status_t warm_conn(kvs__peer_t *pp, conn_t *c, uint64_t deadline)
{
    waiter_t *w = NULL;
    kvs__msg_t m;
    kvs__buf_t b;
    kvs__buf_init(&b);
    uint64_t rid = ++c->next_req_id;
    kvs__enc_lookup(&b, rid, c->session, c->layout_id, 0, NULL, 0);
    kvs_status_t st = request(pp, c, &b, rid, deadline, &w, &m);
    if (st == KVS_OK && (m.hdr.type != KVS_MSG_LOOKUP_REPLY || m.u.lookup_reply.hits != 0)) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bad LOOKUP_REPLY");
        st = KVS_ERR_PROTOCOL;
    }
    bool newer = st == KVS_OK && table_newer(c, &m);
    if (newer)
        st = take_regions(c, &m);
    if (newer && st == KVS_OK)
        forget_regions(c, &m);
    if (st == KVS_OK && c->rma)
        unpack_rkeys(c);
    waiter_del(pp, w);
    return st;
}

typedef struct warm_get {
    int left;
    bool done;
    kvs_status_t status;
    uint8_t buf[8];
} warm_get_t;

static void warm_get_done(void *arg, kvs_status_t st, size_t len)
{
    warm_get_t *w = arg;
    (void)len;
    if (st != KVS_OK)
        w->status = st;
    if (--w->left == 0)
        w->done = true;
}

/* One 8-byte GET from a region the peer advertised, and a flush: UCX sets
 * up the GET endpoint's lanes on first use, and that first use should not
 * be a request's. Lock held. */
static kvs_status_t warm_get(kvs__peer_t *pp, conn_t *c, uint64_t deadline)
{
    if (!c->rma || c->nrr == 0)
        return KVS_OK;
    rregion_t *rr = rregion(c, c->rr[0].id, c->rr[0].base, 8);
    if (rr == NULL)
        return KVS_OK; /* nothing 8 bytes long to read: skip the warm-up */
    warm_get_t *w = kvs__calloc(1, sizeof(*w));
    if (w == NULL)
        return KVS_ERR_NO_MEMORY;
    w->left = 1; /* ours, dropped below once both are posted */
    c->warming = true;
    kvs_status_t st =
        pp->ops->get(pp->tl, c->ep, w->buf, sizeof(w->buf), rr->base, rr->rkey, warm_get_done, w);
    if (st == KVS_INPROGRESS)
        w->left++;
    else if (st != KVS_OK)
        w->status = st;
    st = pp->ops->flush(pp->tl, c->ep, warm_get_done, w);
    if (st == KVS_INPROGRESS)
        w->left++;
    else if (st != KVS_OK)
        w->status = st;
    warm_get_done(w, KVS_OK, 0);
    kick(pp);
    if (!wait_until(pp, &w->done, deadline)) {
        /* The transport may still call back into @w: it stays allocated. */
        conn_fail(c, KVS_ERR_TIMED_OUT, "warm-up GET timed out");
        return KVS_ERR_TIMED_OUT; /* still warming: no rkey of it is destroyed before it */
    }
    c->warming = false;
    reap_rregions(c);
    st = w->status;
    kvs__free(w);
    return st;
}

static kvs_status_t connect_warm(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                                 uint64_t deadline, const dialer_t *self)
{
    conn_t *c = NULL;
    kvs_status_t st = get_conn_as(pp, peer, layout_id, deadline, self, &c);
    if (st == KVS_OK) {
        st = warm_conn(pp, c, deadline);
        /* The warm-up GET only saves the first fetch some time: a region
         * gone meanwhile is no reason to fail the connect. */
        if (st == KVS_OK && warm_get(pp, c, deadline) != KVS_OK)
            kvs__debug(pp->log, "peer %s: warm-up GET failed; the first fetch sets up the lanes",
                       c->peer);
        conn_unref(c); /* the table keeps it */
    }
    return st;
}

static void *dial_thread(void *arg)
{
    dialer_t *d = arg;
    kvs__peer_t *pp = d->pp;
    lock(pp);
    d->status =
        connect_warm(pp, d->peer, d->layout_id, now_ns() + (uint64_t)d->timeout_ms * 1000000u, d);
    d->done = true;
    pthread_cond_broadcast(&pp->cond);
    unlock(pp);
    return NULL;
}

/* Joins background connects that have finished. Lock held. */
static void reap_dialers(kvs__peer_t *pp)
{
    for (dialer_t **dp = &pp->dialers; *dp != NULL;) {
        dialer_t *d = *dp;
        if (!d->done) {
            dp = &d->next;
            continue;
        }
        *dp = d->next;
        pp->ndialers--;
        pthread_join(d->thread, NULL); /* it has returned or is returning */
        kvs__free(d);
    }
}

kvs_status_t kvs__peer_connect(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                               uint32_t timeout_ms, bool background)
{
    if (strlen(peer) >= sizeof(((dialer_t *)0)->peer))
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t st;
    lock(pp);
    reap_dialers(pp);
    if (!background) {
        st = connect_warm(pp, peer, layout_id, now_ns() + (uint64_t)timeout_ms * 1000000u, NULL);
        unlock(pp);
        return st;
    }
    for (conn_t *c = pp->conns; c != NULL; c = c->next) {
        if (!c->server && c->layout_id == layout_id && strcmp(c->peer, peer) == 0 &&
            c->state == S_READY) {
            unlock(pp);
            return KVS_OK;
        }
    }
    for (dialer_t *d = pp->dialers; d != NULL; d = d->next) {
        if (d->layout_id == layout_id && strcmp(d->peer, peer) == 0) {
            unlock(pp);
            return KVS_INPROGRESS;
        }
    }
    st = KVS_ERR_BUSY;
    if (pp->ndialers >= KVS_PEER_MAX_DIALERS || pp->stopping)
        goto out;
    st = KVS_ERR_NO_MEMORY;
    dialer_t *d = kvs__calloc(1, sizeof(*d));
    if (d == NULL)
        goto out;
    d->pp = pp;
    strcpy(d->peer, peer);
    d->layout_id = layout_id;
    d->timeout_ms = timeout_ms;
    if (pthread_create(&d->thread, NULL, dial_thread, d) != 0) {
        kvs__free(d);
        st = KVS_ERR_IO;
        goto out;
    }
    d->next = pp->dialers;
    pp->dialers = d;
    pp->ndialers++;
    st = KVS_INPROGRESS;
out:
    unlock(pp);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Client side: lookup, release, fetch, put                                 */
/* ---------------------------------------------------------------------- */
void (*kvs__peer_test_reply)(size_t nkeys);

static void rlease_free(rlease_t *rl)
{
    if (rl == NULL)
        return;
    kvs__free(rl->blocks);
    kvs__free(rl->block_at);
    kvs__free(rl->ix_idx);
    kvs__free(rl->ix_serial);
    kvs__free(rl);
}

/* The holder's region (as its table named it to us, and still has it) that
 * holds [addr, addr + len): its id, or 0 (ids start at 1). Lock held. */
static uint32_t rregion_at(const conn_t *c, uint64_t addr, uint64_t len, size_t *hint)
{
    for (size_t n = 0; n < c->nrr; n++) {
        size_t k = (*hint + n) % c->nrr; /* a block's pieces mostly share one */
        const rregion_t *r = &c->rr[k];
        if (r->gone_after == 0 && addr >= r->base && len <= r->len &&
            addr - r->base <= r->len - len) {
            *hint = k;
            return r->id;
        }
    }
    return 0;
}

/* The regions of the holder one lookup's hits lie in, for the check that
 * they map here (few: a pool's segments and generations, an arena's). */
#define IX_REGIONS 8u
typedef struct ix_regions {
    uint32_t id[IX_REGIONS];
    uint32_t n;
    bool over; /* more than IX_REGIONS */
} ix_regions_t;

static void ix_region_add(ix_regions_t *r, uint32_t id)
{
    for (uint32_t i = 0; i < r->n; i++)
        if (r->id[i] == id)
            return;
    if (r->n < IX_REGIONS)
        r->id[r->n++] = id;
    else
        r->over = true;
}

/* The pieces of index hit @h (with its pool's record @g): their count, or
 * 0 when a piece is too long for the wire or the numbers overflow. */
static uint16_t index_pieces(const kvs__index_hit_t *h, const kvs__index_geo_t *g,
                             kvs__piece_t *pieces)
{
    if (h->pool == KVS_INDEX_ARENA) {
        if (h->len == 0 || h->len > UINT32_MAX)
            return 0;
        pieces[0] = (kvs__piece_t){.addr = h->addr, .len = (uint32_t)h->len};
        return 1;
    }
    for (uint32_t k = 0; k < g->nsegs; k++) {
        uint64_t off, at;
        if (__builtin_mul_overflow((uint64_t)h->block, g->seg[k].stride, &off) ||
            __builtin_add_overflow(g->seg[k].base, off, &at) || g->seg[k].bytes == 0 ||
            g->seg[k].bytes > UINT32_MAX)
            return 0;
        pieces[k] = (kvs__piece_t){.addr = at, .len = (uint32_t)g->seg[k].bytes};
    }
    return (uint16_t)g->nsegs;
}

/* Encodes index hit @h at @p as a LOOKUP_REPLY's block descriptor, each
 * address named by the holder's region that holds it (lock held); returns
 * the byte after it. NULL when one lies in no region we know (a region the
 * holder added since its last table reached us): the holder is asked then. */
static uint8_t *index_block(const conn_t *c, const kvs__index_hit_t *h, const kvs__piece_t *pieces,
                            uint16_t np, uint8_t *p, size_t *hint, ix_regions_t *regs)
{
    kvs__piece_t named[KVS_INDEX_SEGS];
    for (uint16_t k = 0; k < np; k++) {
        named[k] = pieces[k];
        if ((named[k].region = rregion_at(c, pieces[k].addr, pieces[k].len, hint)) == 0)
            return NULL;
        ix_region_add(regs, named[k].region);
    }
    uint32_t gr = rregion_at(c, h->gen_addr, 8, hint);
    if (gr == 0)
        return NULL;
    ix_region_add(regs, gr);
    kvs__block_desc_t d = {.gen_region = gr, .gen_addr = h->gen_addr, .gen = h->gen, .npieces = np};
    return kvs__proto_write_block(p, &d, named);
}

/* Same host: the chain's longest prefix from the holder's mapped index,
 * with no message to the holder (index_int.h). Lock held (let go while the
 * index is mapped and read). KVS_OK with *rl_p (0 hits included, when the
 * index holds every block); KVS_ERR_UNSUPPORTED: ask the holder. */
/* Whether a chain of @n keys under @layout_id may be read from the mapped
 * index of @c's holder (lock held): same host, same view, an index not
 * known to be absent or broken. */
static bool index_may(const kvs__peer_t *pp, const conn_t *c, uint64_t layout_id, size_t n)
{
    return pp->index_on && !c->ix_off && c->shm != NULL && !c->xview && c->state == S_READY &&
           layout_id == c->layout_id && n > 0;
}

static kvs_status_t index_lookup(kvs__peer_t *pp, conn_t *c, uint64_t layout_id,
                                 const kvs_key_t *keys, size_t n, rlease_t **rl_p)
{
    if (!index_may(pp, c, layout_id, n) || !kvs__shm_peer_usable(c->shm))
        return KVS_ERR_UNSUPPORTED;
    /* Until a LOOKUP's reply told us the holder's regions as of a version
     * the index shows, its addresses cannot be named: ask the holder. */
    if (c->ix_map != NULL && !c->ix_known)
        return KVS_ERR_UNSUPPORTED;
    kvs__shm_peer_t *sp = c->shm;
    kvs__index_hit_t *hits = kvs__malloc(n * sizeof(*hits));
    if (c->ix_geo == NULL)
        c->ix_geo = kvs__malloc(KVS_INDEX_POOLS * sizeof(*c->ix_geo));
    bool own_geo = c->ix_geo_busy || c->ix_geo == NULL; /* another lookup has it */
    kvs__index_geo_t *geo = own_geo ? kvs__malloc(KVS_INDEX_POOLS * sizeof(*geo)) : c->ix_geo;
    c->ix_geo_busy = c->ix_geo_busy || !own_geo;
    rlease_t *rl = kvs__calloc(1, sizeof(*rl));
    kvs_status_t st = KVS_ERR_UNSUPPORTED;
    size_t got = 0;
    bool complete = false;
    kvs__index_res_t res = KVS_INDEX_BAD;
    if (hits == NULL || geo == NULL || rl == NULL)
        goto out; /* out of memory: the holder answers this one */
    unlock(pp);
    size_t len = 0;
    const uint8_t *map = kvs__shm_peer_index(sp, &len);
    uint64_t v1 = kvs__index_regions(map, len), v2 = 0;
    if (map != NULL)
        res = kvs__index_read(map, len, layout_id, keys, n, hits, geo, &got, &complete);
    v2 = kvs__index_regions(map, len);
    lock(pp);
    if (map == NULL) {
        c->ix_off = true; /* it has none (or predates them) */
        goto out;
    }
    if (c->ix_map == NULL) {
        c->ix_map = map;
        c->ix_len = len;
    }
    /* Regions registered or let go since our table: it may not name these
     * addresses right (a new region at a freed one's address). */
    if (!c->ix_known || v1 != v2 || v1 != c->ix_regions)
        goto out;
    if (res == KVS_INDEX_BAD) {
        kvs__warn(pp->log, "peer %s: its shared block index is not one we read: lookups ask it",
                  c->peer);
        c->ix_off = true;
        goto out;
    }
    if (res != KVS_INDEX_READ || (got < n && !complete))
        goto out;
    /* One allocation for every descriptor: their lengths first. */
    size_t blen = 0;
    for (size_t i = 0; i < got; i++)
        blen += kvs__proto_block_len(
            hits[i].pool == KVS_INDEX_ARENA ? 1 : (uint16_t)geo[hits[i].pool].nsegs);
    rl->blocks = kvs__malloc(blen ? blen : 1);
    rl->block_at = kvs__calloc(got ? got : 1, sizeof(*rl->block_at));
    rl->ix_idx = kvs__malloc((got ? got : 1) * sizeof(*rl->ix_idx));
    rl->ix_serial = kvs__malloc((got ? got : 1) * sizeof(*rl->ix_serial));
    if (rl->blocks == NULL || rl->block_at == NULL || rl->ix_idx == NULL || rl->ix_serial == NULL)
        goto out;
    size_t hint = 0;
    ix_regions_t regs = {.n = 0};
    uint8_t *p = rl->blocks;
    for (size_t i = 0; i < got; i++) {
        kvs__piece_t pieces[KVS_INDEX_SEGS];
        uint16_t np = index_pieces(
            &hits[i], hits[i].pool == KVS_INDEX_ARENA ? NULL : &geo[hits[i].pool], pieces);
        rl->block_at[i] = p;
        if (np == 0 || (p = index_block(c, &hits[i], pieces, np, p, &hint, &regs)) == NULL)
            goto out;
        rl->ix_idx[i] = hits[i].idx;
        rl->ix_serial[i] = hits[i].serial;
    }
    rl->via_index = true;
    rl->hits = (uint32_t)got;
    rl->blocks_len = blen;
    /* Only memory we map is read without a lease: other memory (not in a
     * memfd: a plain malloc'ed pool) goes through the holder. Mapped once,
     * an answer kept per region: later lookups cost no I/O here. */
    unlock(pp);
    bool maps = regs.over ? kvs__shm_peer_maps(sp, (const uint8_t *const *)rl->block_at, got)
                          : kvs__shm_peer_maps_ids(sp, regs.id, regs.n);
    lock(pp);
    if (!maps || c->state != S_READY)
        goto out;
    rl->conn = c;
    c->refs++;
    *rl_p = rl;
    rl = NULL;
    st = KVS_OK;
out:
    if (st == KVS_OK)
        pp->index_answered++;
    else if (!c->ix_off)
        pp->index_asked++;
    rlease_free(rl);
    kvs__free(hits);
    if (own_geo)
        kvs__free(geo);
    else
        c->ix_geo_busy = false;
    return st;
}

/* Asks a same-host holder for a control channel, once per connection,
 * before the first lookup or pull put (lock held; let go for the socket
 * I/O). Its four blocking steps take at most half of what is left of the
 * request's time (and 1 s each); a request with under 20 ms left leaves it
 * to the next.
 * Other threads' messages take the transport meanwhile. */
static void ctl_open(kvs__peer_t *pp, conn_t *c, uint64_t deadline_ns)
{
    uint64_t t = now_ns();
    if (c->ctl_tried || c->shm == NULL || c->state != S_READY || deadline_ns < t + 20000000u)
        return;
    c->ctl_tried = true;
    uint64_t step_ms = (deadline_ns - t) / 8000000u; /* four steps: half the time left */
    kvs__shm_peer_t *sp = c->shm;
    unlock(pp);
    int fd = kvs__shm_peer_ctl(sp, (unsigned)(step_ms < 1000 ? step_ms : 1000));
    lock(pp);
    if (fd >= 0 && c->state == S_READY && c->ctl_fd < 0) {
        c->ctl_fd = fd;
        kick(pp); /* into the progress thread's poll set */
    } else if (fd >= 0) {
        close(fd);
    }
}

kvs_status_t kvs__peer_lookup(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                              const kvs_key_t *keys, size_t n, uint32_t lease_ms,
                              uint32_t timeout_ms, void **rlease_p, size_t *hits_p)
{
    conn_t *c = NULL;
    waiter_t *w = NULL;
    kvs__msg_t m;
    rlease_t *rl = NULL;
    kvs_status_t st;
    if (n > KVS_PROTO_MAX_KEYS)
        n = KVS_PROTO_MAX_KEYS; /* a longer chain is asked for in part */
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(pp);
    st = get_conn(pp, peer, layout_id, deadline, &c);
    if (st != KVS_OK)
        goto out;
    ctl_open(pp, c, deadline);
    if (index_lookup(pp, c, layout_id, keys, n, &rl) == KVS_OK) {
        *rlease_p = rl; /* it holds its own reference to c */
        *hits_p = rl->hits;
        rl = NULL;
        goto out;
    }
    /* The holder's region version now: the reply's table (or the one we
     * already have, when it carries none) is at least this new. */
    uint64_t ix_v = kvs__index_regions(c->ix_map, c->ix_len);
    kvs__buf_t b;
    kvs__buf_init(&b);
    uint64_t rid = ++c->next_req_id;
    kvs__enc_lookup(&b, rid, c->session, layout_id, lease_ms, keys, n);
    c->ctl_waiters++;
    st = request(pp, c, &b, rid, deadline, &w, &m);
    c->ctl_waiters--;
    if (st != KVS_OK)
        goto out;
    if (m.hdr.type != KVS_MSG_LOOKUP_REPLY || m.u.lookup_reply.hits > n) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bad LOOKUP_REPLY");
        st = KVS_ERR_PROTOCOL;
        goto out;
    }
    /* Tests only (transport_shm order): the reply is here, its table not
     * yet applied. */
    if (kvs__peer_test_reply != NULL) {
        unlock(pp);
        kvs__peer_test_reply(n);
        lock(pp);
    }
    if (table_newer(c, &m)) {
        if ((st = take_regions(c, &m)) != KVS_OK)
            goto out;
        forget_regions(c, &m);
    }
    if (c->rma)
        unpack_rkeys(c);
    if (c->ix_map != NULL && ix_v != UINT64_MAX && (!c->ix_known || ix_v > c->ix_regions)) {
        c->ix_regions = ix_v;
        c->ix_known = true;
    }
    rl = kvs__calloc(1, sizeof(*rl));
    if (rl == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out;
    }
    rl->hits = m.u.lookup_reply.hits;
    rl->lease_id = m.u.lookup_reply.lease_id;
    rl->blocks_len = m.u.lookup_reply.blocks_len;
    rl->blocks = kvs__malloc(rl->blocks_len ? rl->blocks_len : 1);
    rl->block_at = kvs__calloc(rl->hits ? rl->hits : 1, sizeof(*rl->block_at));
    if (rl->blocks == NULL || rl->block_at == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out;
    }
    memcpy(rl->blocks, m.u.lookup_reply.blocks, rl->blocks_len);
    const uint8_t *cur = rl->blocks;
    for (uint32_t i = 0; i < rl->hits; i++) {
        rl->block_at[i] = cur;
        kvs__block_desc_t d;
        kvs__proto_block(&cur, &d);
    }
    rl->conn = c;
    c = NULL; /* the lease keeps the reference */
    *rlease_p = rl;
    *hits_p = rl->hits;
    rl = NULL;
out:
    waiter_del(pp, w);
    if (c != NULL)
        conn_unref(c);
    rlease_free(rl);
    unlock(pp);
    return st;
}

/* Sends what c's releases of index-found blocks left to tell (lock held). */
static void read_flush(conn_t *c)
{
    if (c->rd_n == 0)
        return;
    if (c->state == S_READY) {
        kvs__buf_t b;
        kvs__buf_init(&b);
        if (kvs__enc_read(&b, ++c->next_req_id, c->session, c->rd_readers, c->rd_idx, c->rd_serial,
                          c->rd_n) == KVS_OK)
            send_buf(c, &b); /* one-way: the holder answers nothing */
        else
            kvs__buf_free(&b);
    }
    c->rd_n = 0;
}

/* READs older than READ_DEFER_NS go out (lock held): from the housekeeping
 * of whichever thread drives progress, at most a millisecond apart while
 * one waits, and from the progress thread, which sleeps less while any
 * wait (progress_thread). True when some are still waiting. */
static bool reads_due(kvs__peer_t *pp, uint64_t t)
{
    bool left = false;
    for (conn_t *c = pp->conns; c != NULL; c = c->next) {
        if (c->rd_n > 0 && t - c->rd_since_ns >= READ_DEFER_NS)
            read_flush(c);
        left = left || c->rd_n > 0;
    }
    return left;
}

/* Keeps a release of blocks found in the index for the next READ to @c
 * (lock held); false when it could not (out of memory): send it now. */
static bool read_defer(conn_t *c, const rlease_t *rl, uint32_t readers)
{
    if (c->rd_n > 0 && (c->rd_readers != readers || c->rd_n + rl->hits > READ_BATCH))
        read_flush(c);
    if (rl->hits > READ_BATCH)
        return false;
    if (c->rd_n + rl->hits > c->rd_cap) {
        uint32_t cap = c->rd_cap ? c->rd_cap : 256;
        while (cap < c->rd_n + rl->hits)
            cap *= 2;
        uint32_t *ni = kvs__realloc(c->rd_idx, cap * sizeof(*ni));
        if (ni != NULL)
            c->rd_idx = ni;
        uint64_t *ns = kvs__realloc(c->rd_serial, cap * sizeof(*ns));
        if (ns != NULL)
            c->rd_serial = ns;
        if (ni == NULL || ns == NULL)
            return false;
        c->rd_cap = cap;
    }
    if (c->rd_n == 0) {
        c->rd_since_ns = now_ns();
        c->rd_readers = readers;
    }
    memcpy(c->rd_idx + c->rd_n, rl->ix_idx, rl->hits * sizeof(*rl->ix_idx));
    memcpy(c->rd_serial + c->rd_n, rl->ix_serial, rl->hits * sizeof(*rl->ix_serial));
    c->rd_n += rl->hits;
    return true;
}

void kvs__peer_release(kvs__peer_t *pp, void *rlease, uint32_t readers)
{
    rlease_t *rl = rlease;
    if (rl == NULL)
        return;
    lock(pp);
    conn_t *c = rl->conn;
    if (c->state == S_READY && rl->hits > 0) {
        /* From the index: no lease to end, but the holder counts what was
         * read (a producer may be waiting on it) and when (eviction), told
         * within READ_DEFER_NS in one message with other releases. */
        kvs__buf_t b;
        kvs__buf_init(&b);
        if (rl->via_index && !read_defer(c, rl, readers)) {
            read_flush(c);
            kvs__enc_read(&b, ++c->next_req_id, c->session, readers, rl->ix_idx, rl->ix_serial,
                          rl->hits);
            send_buf(c, &b);
        } else if (!rl->via_index) {
            kvs__enc_release(&b, ++c->next_req_id, c->session, rl->lease_id, readers);
            send_buf(c, &b); /* fire and forget: the lease deadline backs it up */
        }
    }
    conn_unref(c);
    unlock(pp);
    rlease_free(rl);
}

static void op_done(void *arg, kvs_status_t st, size_t len)
{
    preq_t *r = arg;
    r->outstanding--;
    if (st == KVS_OK)
        r->bytes_got += len;
    else if (r->status == KVS_INPROGRESS)
        r->status = KVS_ERR_PEER_FAILED;
}

static void track(preq_t *r, kvs_status_t st, size_t len)
{
    if (st == KVS_INPROGRESS)
        r->outstanding++;
    else if (st == KVS_OK)
        r->bytes_got += len;
    else if (r->status == KVS_INPROGRESS)
        r->status = KVS_ERR_PEER_FAILED;
}

static void post_get(preq_t *r, void *local, size_t len, uint64_t raddr, void *rkey)
{
    kvs__peer_t *pp = r->pp;
    track(r, pp->ops->get(pp->tl, r->conn->ep, local, len, raddr, rkey, op_done, r), len);
}

static void post_flush(preq_t *r)
{
    kvs__peer_t *pp = r->pp;
    track(r, pp->ops->flush(pp->tl, r->conn->ep, op_done, r), 0);
}

/* A run of GETs adjacent on both sides, posted as one. */
typedef struct get_run {
    uint8_t *local;
    uint64_t remote;
    size_t len;
    void *rkey;
} get_run_t;

/* Adds bytes [off, off+len) of the holder's block @d, bound for @local, to
 * the run (posting it first when they do not continue it). */
static kvs_status_t add_get(preq_t *r, get_run_t *run, const kvs__block_desc_t *d, size_t off,
                            size_t len, uint8_t *local)
{
    size_t pbase = 0;
    kvs__piece_t pc = {0};
    bool found = false;
    for (uint16_t k = 0; k < d->npieces && !found; k++) {
        kvs__proto_piece(d->pieces, k, &pc);
        if (off >= pbase && off + len <= pbase + pc.len)
            found = true;
        else
            pbase += pc.len;
    }
    if (!found)
        return KVS_ERR_LAYOUT_MISMATCH;
    uint64_t raddr = pc.addr + (off - pbase);
    rregion_t *rr = rregion(r->conn, pc.region, raddr, len);
    if (rr == NULL)
        return no_rregion(r->conn, pc.region);
    if (run->len > 0 && run->rkey == rr->rkey && run->local + run->len == local &&
        run->remote + run->len == raddr && run->len + len <= MAX_RUN) {
        run->len += len;
    } else {
        if (run->len > 0)
            post_get(r, run->local, run->len, run->remote, run->rkey);
        *run = (get_run_t){.local = local, .remote = raddr, .len = len, .rkey = rr->rkey};
    }
    r->bytes_expected += len;
    return KVS_OK;
}

/* Posts the GETs of every block, coalescing runs adjacent on both sides,
 * then one flush. Across views: the planned ranges, into staging. */
static kvs_status_t post_data_gets(preq_t *r)
{
    get_run_t run = {0};
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        kvs_status_t st = KVS_OK;
        if (r->x != NULL) {
            const kvs__xset_t *xs = &r->x->sets[r->x->set_of[i]];
            uint8_t *to = r->xbuf + r->x->stage_at[i];
            for (size_t k = 0; k < xs->nranges && st == KVS_OK; k++)
                st = add_get(r, &run, &d, xs->ranges[k].off, xs->ranges[k].len, to + xs->at[k]);
            for (size_t k = 0; k < xs->ndirect && st == KVS_OK; k++) {
                const kvs__copy_t *cp = &xs->direct[k];
                uint8_t *at =
                    kvs__xfer_dst_at(r->dst->segs, r->dst->nsegs, r->dst_ids[i], cp->dst, cp->len);
                st = at == NULL ? KVS_ERR_LAYOUT_MISMATCH
                                : add_get(r, &run, &d, cp->src, cp->len, at);
            }
        } else {
            size_t off = 0;
            for (size_t s = 0; s < r->dst->nsegs && st == KVS_OK; s++) {
                const kvs_segment_t *sg = &r->dst->segs[s];
                st = add_get(r, &run, &d, off, sg->block_bytes,
                             (uint8_t *)sg->base + (size_t)r->dst_ids[i] * sg->block_stride);
                off += sg->block_bytes;
            }
        }
        if (st != KVS_OK)
            return st;
    }
    if (run.len > 0)
        post_get(r, run.local, run.len, run.remote, run.rkey);
    post_flush(r);
    return KVS_OK;
}

/* After the data: read each block's generation (stage 2). */
static kvs_status_t post_gen_gets(preq_t *r)
{
    conn_t *c = r->conn;
    uint64_t lo = UINT64_MAX, hi = 0;
    uint32_t region = 0;
    bool one_region = true;
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        if (i == 0)
            region = d.gen_region;
        one_region = one_region && d.gen_region == region;
        lo = d.gen_addr < lo ? d.gen_addr : lo;
        hi = d.gen_addr + 8 > hi ? d.gen_addr + 8 : hi;
    }
    r->bytes_expected = r->bytes_got = 0;
    if (r->count > 1 && one_region && hi - lo <= GEN_WINDOW) {
        rregion_t *rr = rregion(c, region, lo, hi - lo);
        if (rr == NULL)
            return no_rregion(c, region);
        r->genwin = kvs__malloc((size_t)(hi - lo));
        if (r->genwin == NULL)
            return KVS_ERR_NO_MEMORY;
        r->genwin_base = lo;
        r->bytes_expected = (size_t)(hi - lo);
        post_get(r, r->genwin, (size_t)(hi - lo), lo, rr->rkey);
    } else {
        for (size_t i = 0; i < r->count; i++) {
            kvs__block_desc_t d;
            const uint8_t *cur = r->rl->block_at[r->first + i];
            kvs__proto_block(&cur, &d);
            rregion_t *rr = rregion(c, d.gen_region, d.gen_addr, 8);
            if (rr == NULL)
                return no_rregion(c, d.gen_region);
            r->bytes_expected += 8;
            post_get(r, &r->gens_now[i], 8, d.gen_addr, rr->rkey);
        }
    }
    post_flush(r);
    return KVS_OK;
}

static uint64_t le64(const uint8_t *b)
{
    uint64_t g = 0;
    for (int k = 7; k >= 0; k--)
        g = (g << 8) | b[k];
    return g;
}

static void check_gens(preq_t *r)
{
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        /* GETs bring the holder's little-endian u64s; pushes decoded them. */
        uint64_t g = r->gens_now[i];
        if (r->genwin != NULL)
            g = le64(r->genwin + (d.gen_addr - r->genwin_base));
        else if (!r->push)
            g = le64((const uint8_t *)&r->gens_now[i]);
        if (g != d.gen) {
            r->status = KVS_ERR_STALE;
            return;
        }
    }
    /* Across views the data waited in staging until now: permute it in. */
    kvs_status_t st = KVS_OK;
    for (size_t i = 0; r->x != NULL && i < r->count && st == KVS_OK; i++)
        st = kvs__xfer_apply(r->x, i, r->xbuf, r->dst->segs, r->dst->nsegs, r->dst_ids[i]);
    if (st == KVS_OK) /* what crossed the wire, for kvs_stats_t.fetched_bytes */
        atomic_fetch_add_explicit(&r->pp->ctx->fetched_bytes,
                                  r->push ? r->bytes_got : r->data_bytes, memory_order_relaxed);
    r->status = st;
}

/* Moves requests through their stages as their operations complete. A
 * stage is done only when every byte it asked for has arrived. */
static int advance_requests(kvs__peer_t *pp)
{
    int moved = 0;
    for (preq_t *r = pp->reqs; r != NULL; r = r->next) {
        if (r->status != KVS_INPROGRESS || r->outstanding > 0 || r->is_put ||
            r->mapped != MAPPED_NONE)
            continue;
        if (!r->push) {
            if (r->bytes_got != r->bytes_expected) {
                r->status = KVS_ERR_PROTOCOL;
            } else if (r->stage == 1) {
                r->stage = 2;
                r->data_bytes = r->bytes_got;
                kvs_status_t st = post_gen_gets(r);
                if (st != KVS_OK)
                    r->status = st;
            } else {
                check_gens(r);
            }
            moved++;
        } else if (r->done_msg && r->landed == r->pieces) {
            /* FETCH_DONE may overtake data still landing: complete only
             * when every piece is in, each exactly once. */
            if (r->bytes_got != r->bytes_expected)
                r->status = KVS_ERR_PROTOCOL;
            else
                check_gens(r);
            moved++;
        }
        if (r->status != KVS_INPROGRESS)
            pthread_cond_broadcast(&pp->cond);
    }
    return moved;
}

static void preq_free(preq_t *r)
{
    kvs__xfer_free(r->x);
    kvs__free(r->xbuf);
    kvs__free(r->range_at);
    pull_src_free(r->src);
    kvs__free(r->batch_done);
    kvs__free(r->batch_how);
    kvs__free(r->dst_ids);
    kvs__free(r->gens_now);
    kvs__free(r->genwin);
    kvs__free(r->seen);
    kvs__free(r);
}

/* A fetch across views (lock held): plan it, then GET the planned ranges
 * into staging, or ask the holder to push them (a ranged FETCH). */
static kvs_status_t xfetch_start(preq_t *r)
{
    conn_t *c = r->conn;
    if (!r->dst->planable || !kvs__view_same(&r->dst->view, &c->lview))
        return KVS_ERR_LAYOUT_MISMATCH;
    /* GET: long runs land in place; AM: everything lands in staging. */
    kvs_status_t st = kvs__xfer_build(&c->rview, &c->lview, r->first, r->count,
                                      r->push ? UINT64_MAX : KVS_PLAN_DIRECT_MIN, &r->x);
    if (st != KVS_OK)
        return st;
    if (r->x->stage_bytes + r->x->direct_bytes == 0) {
        r->status = KVS_OK; /* the holder has none of our heads (kvs_lease_heads) */
        return KVS_OK;
    }
    r->xbuf = kvs__malloc(r->x->stage_bytes ? r->x->stage_bytes : 1);
    if (r->xbuf == NULL)
        return KVS_ERR_NO_MEMORY;
    if (!r->push)
        return post_data_gets(r);
    kvs__free(r->seen);
    r->seen = NULL;
    if ((st = kvs__xfer_range_index(r->x, &r->range_at)) != KVS_OK)
        return st;
    r->pieces = r->range_at[r->count];
    r->seen = kvs__calloc(r->pieces / 8 + 1, 1);
    if (r->seen == NULL)
        return KVS_ERR_NO_MEMORY;
    r->bytes_expected = r->x->stage_bytes;
    kvs__buf_t b;
    kvs__buf_init(&b);
    st = kvs__xfer_enc_fetch(&b, r->req_id, c->session, r->rl->lease_id, (uint32_t)r->first, r->x);
    if (st != KVS_OK) {
        kvs__buf_free(&b);
        return st;
    }
    return send_buf(c, &b);
}

bool kvs__peer_lease_heads(kvs__peer_t *pp, void *rlease, uint32_t *first_p, uint32_t *count_p)
{
    rlease_t *rl = rlease;
    lock(pp);
    conn_t *c = rl->conn;
    bool x = c->xview;
    if (x)
        kvs__view_overlap(&c->rview, &c->lview, first_p, count_p);
    unlock(pp);
    return x;
}

/* A fetch across views from the holder's mapped memory, outside the lock:
 * the same plan as xfetch_start's GET path, copied with memcpy.
 * KVS_ERR_UNSUPPORTED: take the transport (which reports what is wrong). */
static kvs_status_t shm_xfetch(conn_t *c, rlease_t *rl, struct kvs_pool *dst, const uint32_t *ids,
                               size_t count, size_t first, size_t *bytes_p)
{
    /* The views were set with c->shm, before the lease existed. */
    if (!dst->planable || !kvs__view_same(&dst->view, &c->lview))
        return KVS_ERR_UNSUPPORTED;
    kvs__xfer_t *x = NULL;
    if (kvs__xfer_build(&c->rview, &c->lview, first, count, KVS_PLAN_DIRECT_MIN, &x) != KVS_OK)
        return KVS_ERR_UNSUPPORTED;
    kvs_status_t st = KVS_ERR_UNSUPPORTED;
    uint8_t *staging = NULL;
    if (x->stage_bytes + x->direct_bytes > 0 &&
        (staging = kvs__malloc(x->stage_bytes ? x->stage_bytes : 1)) != NULL)
        st = kvs__shm_fetch_planned(c->shm, rl->block_at + first, x, staging, dst, ids, bytes_p);
    kvs__free(staging);
    kvs__xfer_free(x);
    return st;
}

/* A fetch into CUDA memory that only the mapped path could serve: logged
 * once per connection. */
static kvs_status_t cuda_dst_refused(kvs__peer_t *pp, conn_t *c, const char *why)
{
    lock(pp);
    bool say = !c->cuda_dst_said;
    c->cuda_dst_said = true;
    unlock(pp);
    if (say)
        kvs__warn(pp->log,
                  "peer %s: fetches into CUDA memory are refused (KVS_ERR_UNSUPPORTED): %s; "
                  "the transport takes no CUDA destinations",
                  c->peer, why);
    return KVS_ERR_UNSUPPORTED;
}

/* Starts fetch @r over the transport (lock held): GETs where the
 * endpoint has native RMA, else the holder pushes; across views, the plan's
 * ranges. A failure to start is the request's status. */
static void fetch_transport(preq_t *r)
{
    conn_t *c = r->conn;
    kvs_status_t st = KVS_OK;
    if (c->xview) {
        st = xfetch_start(r);
    } else if (!r->push) {
        st = post_data_gets(r);
    } else {
        /* No native RMA (TCP): the holder pushes, cut into our segments. */
        uint32_t chunks[KVS_PROTO_MAX_PIECES];
        for (size_t s = 0; s < r->dst->nsegs; s++) {
            chunks[s] = (uint32_t)r->dst->segs[s].block_bytes;
            r->bytes_expected += r->dst->segs[s].block_bytes * r->count;
        }
        kvs__buf_t b;
        kvs__buf_init(&b);
        kvs__enc_fetch(&b, r->req_id, c->session, r->rl->lease_id, (uint32_t)r->first,
                       (uint32_t)r->count, chunks, (uint16_t)r->dst->nsegs);
        st = send_buf(c, &b);
    }
    if (st != KVS_OK)
        r->status = st;
}

/* The end of fetch @r's copy from the mapping (lock held): its status, or
 * for a copy the mapping could not serve (UNSUPPORTED), the transport. */
static void mapped_result(kvs__peer_t *pp, preq_t *r, kvs_status_t st, size_t bytes)
{
    if (st == KVS_ERR_UNSUPPORTED && r->rl->via_index) {
        /* Blocks found in the index hold no lease: the holder may let
         * their memory go, and a GET through a region we still think it
         * has could read what replaced it. Only the mapping (which keeps
         * that memory, generations included) is read; rare, as the index
         * is read only where the holder's memory maps. */
        kvs__debug(pp->log,
                   "peer %s: blocks found in its index cannot be copied from the "
                   "mapping: stale (look them up again)",
                   r->conn->peer);
        r->status = KVS_ERR_STALE;
        return;
    }
    if (st == KVS_ERR_UNSUPPORTED) {
        fetch_transport(r);
        return;
    }
    r->status = st;
    if (st == KVS_OK)
        __atomic_fetch_add(&pp->shm_bytes, bytes, __ATOMIC_RELAXED);
}

kvs_status_t kvs__peer_fetch(kvs__peer_t *pp, void *rlease, struct kvs_pool *dst,
                             const uint32_t *ids, size_t count, size_t first, uint32_t timeout_ms,
                             void **preq_p)
{
    rlease_t *rl = rlease;
    /* CUDA destinations: the same-host mapped path only (the transport's
     * GET would need a CUDA-enabled UCX). */
    if (!dst->host_only && rl->conn->shm == NULL)
        return cuda_dst_refused(pp, rl->conn,
                                "the holder's memory is not mapped here (another "
                                "host, or KVSHARE_SHM=off)");
    if (dst->nsegs > KVS_PROTO_MAX_PIECES ||
        (uint64_t)count * dst->nsegs > KVS_PROTO_MAX_FETCH_PIECES)
        return KVS_ERR_INVALID_PARAM;
    preq_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    r->dst_ids = kvs__malloc((count ? count : 1) * sizeof(*r->dst_ids));
    r->gens_now = kvs__calloc(count ? count : 1, sizeof(*r->gens_now));
    r->pieces = count * dst->nsegs;
    r->seen = kvs__calloc(r->pieces / 8 + 1, 1);
    if (r->dst_ids == NULL || r->gens_now == NULL || r->seen == NULL) {
        preq_free(r);
        return KVS_ERR_NO_MEMORY;
    }
    memcpy(r->dst_ids, ids, count * sizeof(*ids));
    /* Same host: copy from the holder's mapped memory, outside the lock.
     * Into host memory the copy is deferred to the first of our threads
     * that waits (run_mapped_copy); into CUDA memory it runs now, as the
     * transport cannot stand in for it. */
    size_t shm_bytes = 0;
    kvs_status_t shm_st = KVS_ERR_UNSUPPORTED;
    bool live = false, defer = false;
    if (rl->conn->shm != NULL && count > 0) { /* set once, before the lease existed */
        lock(pp);
        live = rl->conn->state == S_READY;
        unlock(pp);
        if (live && dst->host_only)
            defer = kvs__shm_peer_usable(rl->conn->shm);
        else if (live && rl->conn->xview)
            shm_st = shm_xfetch(rl->conn, rl, dst, ids, count, first, &shm_bytes);
        else if (live)
            shm_st =
                kvs__shm_fetch(rl->conn->shm, rl->block_at + first, dst, ids, count, &shm_bytes);
    }
    if (!dst->host_only && live && shm_st == KVS_ERR_UNSUPPORTED) {
        preq_free(r); /* not mapped (or a CUDA copy failed): no transport to fall back on */
        return cuda_dst_refused(pp, rl->conn,
                                "the mapped path cannot serve it (see the warning before)");
    }
    r->pp = pp;
    r->rl = rl;
    r->dst = dst;
    r->first = first;
    r->count = count;
    r->status = KVS_INPROGRESS;
    r->stage = 1;
    r->deadline_ns = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(pp);
    conn_t *c = rl->conn;
    r->conn = c;
    c->refs++;
    r->req_id = ++c->next_req_id;
    r->push = !c->rma;
    r->next = pp->reqs;
    pp->reqs = r;
    if (c->state != S_READY) {
        r->status = c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
    } else if (count == 0) {
        r->status = KVS_OK;
    } else if (defer) {
        r->mapped = MAPPED_PENDING;
        pp->mapped_pending++;
    } else {
        mapped_result(pp, r, shm_st, shm_bytes); /* not tried (UNSUPPORTED): the transport */
    }
    if (r->status == KVS_INPROGRESS && !defer)
        kick(pp); /* only posted transport work needs the progress thread */
    unlock(pp);
    *preq_p = r;
    return KVS_OK;
}

/* Runs request @r's deferred copy from the holder's mapping on this thread
 * (lock held on entry and return; let go during the copy, so the progress
 * thread takes replies meanwhile). A copy the mapping cannot serve takes
 * the transport from here. */
static void run_mapped_copy(kvs__peer_t *pp, preq_t *r)
{
    conn_t *c = r->conn;
    r->mapped = MAPPED_RUNNING;
    pp->mapped_pending--;
    bool live = c->state == S_READY && r->status == KVS_INPROGRESS;
    size_t bytes = 0;
    kvs_status_t st = KVS_ERR_UNSUPPORTED;
    unlock(pp);
    if (live && c->xview)
        st = shm_xfetch(c, r->rl, r->dst, r->dst_ids, r->count, r->first, &bytes);
    else if (live)
        st = kvs__shm_fetch(c->shm, r->rl->block_at + r->first, r->dst, r->dst_ids, r->count,
                            &bytes);
    lock(pp);
    r->mapped = MAPPED_NONE;
    if (r->status == KVS_INPROGRESS) { /* else the connection failed meanwhile: that stands */
        mapped_result(pp, r, st, bytes);
        if (r->status == KVS_INPROGRESS)
            kick(pp);
    }
    pthread_cond_broadcast(&pp->cond);
}

/* Runs the oldest deferred copy, if any (lock held): true when one ran. */
static bool run_a_mapped_copy(kvs__peer_t *pp)
{
    if (pp->mapped_pending == 0)
        return false;
    preq_t *oldest = NULL; /* requests are pushed at the head */
    for (preq_t *r = pp->reqs; r != NULL; r = r->next)
        if (r->mapped == MAPPED_PENDING)
            oldest = r;
    if (oldest == NULL)
        return false;
    run_mapped_copy(pp, oldest);
    return true;
}

kvs_status_t kvs__peer_req_test(kvs__peer_t *pp, void *preq)
{
    preq_t *r = preq;
    lock(pp);
    if (r->mapped == MAPPED_PENDING)
        run_mapped_copy(pp, r);
    if (!pp->thread_mode)
        progress_locked(pp);
    kvs_status_t st =
        (r->outstanding > 0 || r->mapped == MAPPED_RUNNING) && r->status != KVS_INPROGRESS
            ? KVS_INPROGRESS
            : r->status;
    unlock(pp);
    return st;
}

/* Finished with nothing of the transport's left to call back, or failed on
 * a connection whose endpoints are closed (so nothing can land any more). */
static bool req_settled(const preq_t *r)
{
    return r->status != KVS_INPROGRESS && r->mapped != MAPPED_RUNNING &&
           (r->outstanding == 0 || r->conn->state == S_FAILED);
}

kvs_status_t kvs__peer_req_wait(kvs__peer_t *pp, void *preq, int timeout_ms)
{
    preq_t *r = preq;
    uint64_t deadline =
        timeout_ms < 0 ? r->deadline_ns + 1000000000u : now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(pp);
    bool polls = pp->thread_mode && pp->poll_ns > 0 && poll_try(&pp->wait_odds);
    uint64_t poll_until = polls ? poll_window(pp, now_ns()) : 0;
    if (r->mapped == MAPPED_PENDING)
        run_mapped_copy(pp, r); /* a wait with no time left still makes it */
    while (!req_settled(r)) {
        uint64_t t = now_ns();
        if (t >= deadline)
            break;
        if (progress_locked(pp) > 0 || req_settled(r))
            continue;
        if (pp->thread_mode)
            wait_idle(pp, t, poll_until, deadline);
    }
    if (polls)
        poll_learn(&pp->wait_odds, req_settled(r) && now_ns() <= poll_until);
    kvs_status_t st = req_settled(r) ? r->status : KVS_INPROGRESS;
    unlock(pp);
    return st;
}

void kvs__peer_req_free(kvs__peer_t *pp, void *preq)
{
    preq_t *r = preq;
    lock(pp);
    /* Another thread's wait may be copying into our destination: it ends by
     * itself (a memcpy), and the caller may reuse the memory only after. */
    while (r->mapped == MAPPED_RUNNING)
        cond_sleep(pp, now_ns() + 1000000u);
    if (r->mapped == MAPPED_PENDING) {
        r->mapped = MAPPED_NONE; /* never started: nothing to stop */
        pp->mapped_pending--;
        if (r->status == KVS_INPROGRESS)
            r->status = KVS_ERR_CANCELED;
    }
    /* The node of a pull put may still be reading our blocks, and closing
     * the connection cannot stop its reads (CMA needs no key): wait for its
     * answer, up to the request's deadline, before the caller may reuse
     * them. */
    while (r->pull && (r->status == KVS_INPROGRESS || r->settled < r->sent) &&
           r->conn->state == S_READY && now_ns() < r->deadline_ns) {
        if (progress_locked(pp) == 0 && pp->thread_mode)
            cond_sleep(pp, now_ns() + 1000000u);
    }
    if (r->is_put && r->status != KVS_INPROGRESS && r->settled < r->sent &&
        r->conn->state == S_READY) {
        /* A batch the node still holds (the put failed on another, or ran
         * past its deadline): the connection goes, or that batch would
         * count against our room there for good, and its reads would go on
         * into memory the caller now reuses. */
        conn_fail(r->conn, KVS_ERR_TIMED_OUT, "a put ended with %u of its batches unanswered",
                  r->sent - r->settled);
    }
    if (r->status == KVS_INPROGRESS) {
        /* Cancel: closing the connection stops every operation that could
         * still write into the destination. */
        r->status = KVS_ERR_CANCELED;
        conn_fail(r->conn, KVS_ERR_CANCELED, "request cancelled");
    }
    uint64_t deadline = now_ns() + 1000000000u;
    while (r->outstanding > 0 && now_ns() < deadline)
        progress_locked(pp);
    for (preq_t **rp = &pp->reqs; *rp != NULL; rp = &(*rp)->next) {
        if (*rp == r) {
            *rp = r->next;
            break;
        }
    }
    if (r->outstanding == 0)
        reap_rregions(r->conn); /* rkeys of gone regions this one kept */
    conn_unref(r->conn);
    r->conn = NULL;
    if (r->outstanding > 0) {
        /* The transport still owes callbacks on a closed endpoint: keep the
         * request (its callbacks touch it) until the transport is gone. */
        r->next = pp->zombies;
        pp->zombies = r;
        unlock(pp);
        return;
    }
    unlock(pp);
    preq_free(r);
}

static void put_sent(void *arg, kvs_status_t st, size_t len)
{
    preq_t *r = arg;
    (void)len;
    r->outstanding--;
    if (st != KVS_OK && r->status == KVS_INPROGRESS)
        r->status = KVS_ERR_PEER_FAILED;
}

/* A pull put could carry @src, given a way for the node to read it: pulls
 * not given up on this connection, and every segment of @src registered. */
static bool pull_capable(const conn_t *c, const struct kvs_pool *src)
{
    if (c->push_puts || src->seg_memh == NULL)
        return false;
    for (size_t s = 0; s < src->nsegs; s++)
        if (src->seg_memh[s] == NULL)
            return false;
    return true;
}

/* The node said it mapped every region of @src (offered_ok). */
static bool all_mapped(const conn_t *c, const struct kvs_pool *src)
{
    for (size_t s = 0; s < src->nsegs; s++) {
        const region_t *rg = src->seg_memh[s];
        bool ok = false;
        for (uint32_t k = 0; k < c->noffered && !ok; k++)
            ok = c->offered[k] == rg->id && c->offered_ok[k];
        if (!ok)
            return false;
    }
    return true;
}

/* The node can read @src itself: from its mapping of our memory (no RMA
 * needed: across PID namespaces, where the transport has none), or host
 * memory by native RMA (GET, or process_vm_readv on this host); CUDA memory
 * only from the mapping (it could not read device memory any other way, and
 * must never try). */
static bool can_pull(const conn_t *c, const struct kvs_pool *src)
{
    return pull_capable(c, src) && (all_mapped(c, src) || (c->rma && src->host_only));
}

/* The regions of @src not yet considered for an offer on @c, marked
 * considered (bounded: past KVS_PEER_MAX_PUT_MAPS, none), into @out and
 * their slots in c->offered into @slot. */
static uint32_t offers_due(conn_t *c, const struct kvs_pool *src, kvs__shm_offer_t *out,
                           uint32_t *slot)
{
    uint32_t n = 0;
    for (size_t s = 0; s < src->nsegs; s++) {
        const region_t *rg = src->seg_memh[s];
        bool seen = false;
        for (uint32_t k = 0; k < c->noffered && !seen; k++)
            seen = c->offered[k] == rg->id;
        for (uint32_t k = 0; k < n && !seen; k++)
            seen = out[k].id == rg->id;
        uint32_t k = 0; /* a slot a withdrawal freed (id 0), or a new one */
        while (k < c->noffered && c->offered[k] != 0)
            k++;
        if (seen || k == KVS_PEER_MAX_PUT_MAPS)
            continue;
        if (k == c->noffered)
            c->noffered++;
        slot[n] = k;
        c->offered_ok[k] = false;
        c->offered[k] = rg->id;
        out[n++] = (kvs__shm_offer_t){.id = rg->id,
                                      .kind = rg->type == KVS_MEM_CUDA ? KVS_SHM_KIND_CUDA_VMM
                                                                       : KVS_SHM_KIND_MEMFD,
                                      .base = (uint64_t)(uintptr_t)rg->base,
                                      .len = rg->len};
    }
    return n;
}

/* A put request on @c, listed with the others (lock held); NULL when out
 * of memory. */
static preq_t *put_req_new(kvs__peer_t *pp, conn_t *c, uint64_t req_id, kvs_status_t status,
                           uint64_t deadline_ns)
{
    preq_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->pp = pp;
    r->conn = c;
    c->refs++;
    r->req_id = req_id;
    r->is_put = true;
    r->status = status;
    r->deadline_ns = deadline_ns;
    r->next = pp->reqs;
    pp->reqs = r;
    return r;
}

/* Offloads by pull: each batch is one PUT carrying our regions (what the
 * node may read), the segments' layout and the block ids; the node GETs the
 * blocks it lacks straight into arena slots and answers PUT_DONE. A few
 * batches are out at once, so the node reads the next while the last is
 * stored, and each is small enough that its slots can be had by evicting
 * older blocks. The blocks must stay put until the request completes. Lock
 * held. */
static kvs_status_t put_pull(kvs__peer_t *pp, conn_t *c, struct kvs_pool *src,
                             const kvs_key_t *keys, const uint32_t *ids, size_t n,
                             uint64_t deadline, void **preq_p)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= src->num_blocks)
            return KVS_ERR_INVALID_PARAM;
    pull_src_t *ps = kvs__calloc(1, sizeof(*ps));
    uint8_t *done = NULL, *how = NULL;
    preq_t *r = NULL;
    if (ps == NULL)
        goto nomem;
    size_t rkey_bytes = 0;
    for (size_t s = 0; s < src->nsegs; s++)
        rkey_bytes += ((const region_t *)src->seg_memh[s])->rkey_len;
    ps->rkeys = kvs__malloc(rkey_bytes ? rkey_bytes : 1);
    ps->keys = kvs__malloc((n ? n : 1) * sizeof(*keys));
    ps->ids = kvs__malloc((n ? n : 1) * sizeof(*ids));
    if (ps->rkeys == NULL || ps->keys == NULL || ps->ids == NULL)
        goto nomem;
    memcpy(ps->keys, keys, n * sizeof(*keys));
    memcpy(ps->ids, ids, n * sizeof(*ids));
    ps->n = n;
    ps->cuda = !src->host_only;
    ps->layout_id = src->layout_id;
    ps->nsegs = (uint16_t)src->nsegs;
    size_t rk_off = 0;
    for (size_t s = 0; s < src->nsegs; s++) {
        const region_t *rg = src->seg_memh[s];
        const kvs_segment_t *sg = &src->segs[s];
        ps->chunks[s] = (uint32_t)sg->block_bytes;
        ps->segs[s] = (kvs__put_seg_t){
            .region = rg->id, .base = (uint64_t)(uintptr_t)sg->base, .stride = sg->block_stride};
        uint32_t k = 0;
        while (k < ps->nregs && ps->regs[k].id != rg->id)
            k++;
        if (k < ps->nregs)
            continue;
        memcpy(ps->rkeys + rk_off, rg->rkey, rg->rkey_len);
        ps->regs[ps->nregs++] = (kvs__region_desc_t){.id = rg->id,
                                                     .base = (uint64_t)(uintptr_t)rg->base,
                                                     .length = rg->len,
                                                     .rkey_len = (uint32_t)rg->rkey_len,
                                                     .rkey = ps->rkeys + rk_off};
        rk_off += rg->rkey_len;
    }
    size_t per = KVS_PEER_PUT_BATCH_BYTES / (src->block_bytes ? src->block_bytes : 1);
    per = per < 1 ? 1 : per > KVS_PEER_PUT_BATCH_MAX ? KVS_PEER_PUT_BATCH_MAX : per;
    size_t nb = n == 0 ? 1 : (n + per - 1) / per;
    done = kvs__calloc(nb / 8 + 1, 1);
    how = kvs__calloc(nb, 1);
    if (done == NULL || how == NULL ||
        (r = put_req_new(pp, c, c->next_req_id + 1, KVS_INPROGRESS, deadline)) == NULL)
        goto nomem;
    c->next_req_id += nb;
    r->batch_done = done;
    r->batch_how = how;
    r->nreq = (uint32_t)nb;
    r->per_batch = (uint32_t)per;
    r->src = ps;
    r->pull = true;
    put_more(c); /* the node's room allowing: else as earlier batches are answered */
    kick(pp);
    *preq_p = r;
    return KVS_OK;
nomem:
    pull_src_free(ps);
    kvs__free(done);
    kvs__free(how);
    return KVS_ERR_NO_MEMORY;
}

/* Waits (lock held) until the node has room on @c for one more put of
 * ours (KVS_PEER_MAX_PUTS), or the deadline. */
static kvs_status_t put_room(kvs__peer_t *pp, conn_t *c, uint64_t deadline_ns)
{
    while (c->state == S_READY && c->puts_out >= KVS_PEER_MAX_PUTS) {
        if (now_ns() >= deadline_ns)
            return KVS_ERR_TIMED_OUT;
        if (progress_locked(pp) == 0 && pp->thread_mode)
            cond_sleep(pp, now_ns() + 1000000u);
    }
    if (c->state == S_READY)
        return KVS_OK;
    return c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
}

/* How many leading keys of a chain to put to same-host node @c it already
 * holds, as its mapped index shows them (lock held; let go to read it): a
 * prefill engine offloads every prompt, and prompts that share a system
 * prompt offload its blocks again and again. Only presence is read (no
 * address is used), so no region table need be known. 0 when the index
 * cannot say. */
static size_t index_held(kvs__peer_t *pp, conn_t *c, uint64_t layout_id, const kvs_key_t *keys,
                         size_t n)
{
    if (!index_may(pp, c, layout_id, n))
        return 0;
    kvs__index_hit_t *hits = kvs__malloc(n * sizeof(*hits));
    kvs__index_geo_t *geo = kvs__malloc(KVS_INDEX_POOLS * sizeof(*geo));
    size_t got = 0;
    bool complete;
    kvs__index_res_t res = KVS_INDEX_BAD;
    kvs__shm_peer_t *sp = c->shm;
    unlock(pp);
    size_t len = 0;
    const uint8_t *map = hits != NULL && geo != NULL ? kvs__shm_peer_index(sp, &len) : NULL;
    if (map != NULL)
        res = kvs__index_read(map, len, layout_id, keys, n, hits, geo, &got, &complete);
    lock(pp);
    kvs__free(hits);
    kvs__free(geo);
    if (map != NULL && c->ix_map == NULL) {
        c->ix_map = map;
        c->ix_len = len;
    }
    if (hits == NULL || geo == NULL)
        return 0;
    if (map == NULL || res == KVS_INDEX_BAD) {
        c->ix_off = true; /* none, or not one we read (index_lookup logs that one) */
        return 0;
    }
    return res == KVS_INDEX_READ ? got : 0;
}

kvs_status_t kvs__peer_put(kvs__peer_t *pp, const char *node, struct kvs_pool *src,
                           const kvs_key_t *keys, const uint32_t *ids, size_t n,
                           uint32_t timeout_ms, void **preq_p)
{
    conn_t *c = NULL;
    waiter_t *w = NULL;
    kvs__msg_t m;
    preq_t *r = NULL;
    if (n > KVS_PROTO_MAX_KEYS || src->nsegs > KVS_PROTO_MAX_PIECES ||
        (uint64_t)n * src->nsegs > KVS_PROTO_MAX_FETCH_PIECES)
        return KVS_ERR_INVALID_PARAM;
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(pp);
    kvs_status_t st = get_conn(pp, node, src->layout_id, deadline, &c);
    if (st != KVS_OK)
        goto out;
    /* What the node already holds is not offered again: on this host its
     * index says so, with no message (the node would only have answered
     * that it keeps them). */
    size_t held = index_held(pp, c, src->layout_id, keys, n);
    if (held > 0) {
        __atomic_fetch_add(&pp->put_held_blocks, held, __ATOMIC_RELAXED);
        keys += held;
        ids += held;
        n -= held;
    }
    if (n == 0) {
        /* Nothing left to send: done at once. */
        if ((r = put_req_new(pp, c, ++c->next_req_id, KVS_OK, deadline)) == NULL)
            st = KVS_ERR_NO_MEMORY;
        else
            *preq_p = r;
        goto out;
    }
    kvs__shm_offer_t offers[KVS_PROTO_MAX_PIECES];
    uint32_t slot[KVS_PROTO_MAX_PIECES], noffers = 0;
    bool mapped[KVS_PROTO_MAX_PIECES];
    if (c->shm != NULL && pull_capable(c, src))
        noffers = offers_due(c, src, offers, slot);
    if (noffers > 0 || (c->shm != NULL && !c->identify_tried && pull_capable(c, src))) {
        /* Same host: tell the node our pid once, so it reads our puts
         * itself (direct_reads), and offer it our memory (kvs_mem_alloc
         * memfds, exportable CUDA allocations), so it copies them from a
         * mapping (mapped_reads). The handover is socket I/O with the
         * node's thread: not under our lock (we may be that node). */
        c->identify_tried = true;
        unlock(pp);
        kvs__shm_peer_offer(c->shm, offers, noffers, mapped);
        lock(pp);
        if (c->state != S_READY) {
            st = c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
            goto out;
        }
        for (uint32_t k = 0; k < noffers; k++) /* unless withdrawn meanwhile */
            if (c->offered[slot[k]] == offers[k].id)
                c->offered_ok[slot[k]] = mapped[k];
    }
    if (!src->host_only && !can_pull(c, src)) {
        /* CUDA blocks leave only through a node's mapping of them. */
        if (!c->cuda_put_said) {
            c->cuda_put_said = true;
            kvs__warn(pp->log,
                      "peer %s: cannot offload CUDA blocks to this node: it maps them only on "
                      "this host (KVSHARE_SHM=auto), from cuMemCreate allocations exportable as "
                      "POSIX fds, and the transport takes no CUDA memory",
                      c->peer);
        }
        st = KVS_ERR_UNSUPPORTED;
        goto out;
    }
    if (can_pull(c, src)) {
        ctl_open(pp, c, deadline);
        if (c->state != S_READY) {
            st = c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
            goto out;
        }
        st = put_pull(pp, c, src, keys, ids, n, deadline, preq_p);
        goto out;
    }
    uint32_t chunks[KVS_PROTO_MAX_PIECES];
    for (size_t s = 0; s < src->nsegs; s++)
        chunks[s] = (uint32_t)src->segs[s].block_bytes;
    if ((st = put_room(pp, c, deadline)) != KVS_OK)
        goto out;
    kvs__buf_t b;
    kvs__buf_init(&b);
    uint64_t rid = ++c->next_req_id;
    kvs__enc_put(&b, rid, c->session, src->layout_id, chunks, (uint16_t)src->nsegs, keys,
                 (uint32_t)n);
    c->puts_out++; /* until its PUT_DONE, or a refusal */
    st = request(pp, c, &b, rid, deadline, &w, &m);
    if (st != KVS_OK) {
        if (c->puts_out > 0) /* refused (or the connection is gone) */
            c->puts_out--;
        put_more(c);
        goto out;
    }
    if (m.hdr.type != KVS_MSG_PUT_ACK || m.u.put_ack.count > n) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bad PUT_ACK");
        st = KVS_ERR_PROTOCOL;
        goto out;
    }
    /* Done at its PUT_DONE, even with nothing wanted: till then the node
     * counts it against our room. */
    r = put_req_new(pp, c, rid, KVS_INPROGRESS, deadline + (uint64_t)timeout_ms * 1000000u);
    if (r == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out;
    }
    r->sent = 1; /* counted in c->puts_out until its PUT_DONE */
    /* Push the wanted blocks; the node lands them where it chooses. */
    for (uint32_t k = 0; k < m.u.put_ack.count && r->status == KVS_INPROGRESS; k++) {
        uint32_t i = kvs__proto_u32_at(m.u.put_ack.idx, k);
        if (i >= n || ids[i] >= src->num_blocks) {
            r->status = KVS_ERR_PROTOCOL;
            break;
        }
        uint32_t off = 0;
        for (size_t s = 0; s < src->nsegs; s++) {
            const kvs_segment_t *sg = &src->segs[s];
            uint8_t hdr[KVS_PROTO_DATA_LEN];
            kvs__enc_data(hdr, rid, 0, c->session, k, off);
            kvs_status_t ps =
                pp->ops->am_send(pp->tl, c->ep, hdr, sizeof(hdr),
                                 (const uint8_t *)sg->base + (size_t)ids[i] * sg->block_stride,
                                 sg->block_bytes, put_sent, r);
            if (ps == KVS_INPROGRESS)
                r->outstanding++;
            else if (ps != KVS_OK)
                r->status = KVS_ERR_PEER_FAILED;
            off += (uint32_t)sg->block_bytes;
        }
    }
    kick(pp);
    *preq_p = r;
out:
    waiter_del(pp, w);
    if (c != NULL)
        conn_unref(c);
    unlock(pp);
    return st;
}

size_t kvs__peer_count(kvs__peer_t *pp)
{
    lock(pp);
    size_t n = pp->nready;
    unlock(pp);
    return n;
}

/* ---------------------------------------------------------------------- */
/* Memory                                                                   */
/* ---------------------------------------------------------------------- */
kvs_status_t kvs__peer_mem_reg(kvs__peer_t *pp, void *base, size_t length, kvs_mem_type_t type,
                               void **memh_p)
{
    region_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    lock(pp);
    kvs_status_t st =
        pp->ops->mem_reg(pp->tl, base, length, type, &r->memh, &r->rkey, &r->rkey_len);
    if (st != KVS_OK) {
        unlock(pp);
        kvs__free(r);
        return st;
    }
    r->id = ++pp->next_region_id;
    r->base = base;
    r->len = length;
    r->type = type;
    r->next = pp->regions;
    pp->regions = r;
    pp->regions_version++;
    kvs__index_set_regions(pp->index, pp->regions_version);
    unlock(pp);
    *memh_p = r;
    return KVS_OK;
}

/* Whether @c's node mapped our region @id for our puts and can be told it
 * is gone (lock held). */
static bool node_maps_ours(const conn_t *c, uint32_t id)
{
    if (c->shm == NULL || c->state != S_READY)
        return false;
    for (uint32_t k = 0; k < c->noffered; k++)
        if (c->offered[k] == id && c->offered_ok[k])
            return true;
    return false;
}

void kvs__peer_mem_dereg(kvs__peer_t *pp, void *memh)
{
    region_t *r = memh;
    if (r == NULL)
        return;
    lock(pp);
    for (region_t **rp = &pp->regions; *rp != NULL; rp = &(*rp)->next) {
        if (*rp == r) {
            *rp = r->next;
            break;
        }
    }
    pp->regions_version++;
    kvs__index_set_regions(pp->index, pp->regions_version);
    /* Pool nodes on this host that mapped the region for our puts are told
     * to let go of it (socket I/O: without our lock), or their mapping would
     * keep the memory alive (an engine's freed GPU memory included) for as
     * long as the connection lasts. Its slot in c->offered is freed. */
    size_t need = 0, ntell = 0;
    for (conn_t *c = pp->conns; c != NULL; c = c->next)
        need += node_maps_ours(c, r->id);
    /* Allocated only when there is a node to tell (then, without it, the
     * node keeps the mapping until the connection ends). */
    conn_t **tell = need > 0 ? kvs__malloc(need * sizeof(*tell)) : NULL;
    for (conn_t *c = pp->conns; c != NULL; c = c->next) {
        if (tell != NULL && ntell < need && node_maps_ours(c, r->id)) {
            c->refs++;
            tell[ntell++] = c;
        }
        for (uint32_t k = 0; k < c->noffered; k++) {
            if (c->offered[k] == r->id) {
                c->offered[k] = 0;
                c->offered_ok[k] = false;
            }
        }
    }
    pp->ops->mem_dereg(pp->tl, r->memh);
    unlock(pp);
    for (size_t i = 0; i < ntell; i++)
        kvs__shm_peer_withdraw(tell[i]->shm, &r->id, 1);
    if (ntell > 0) {
        lock(pp);
        for (size_t i = 0; i < ntell; i++)
            conn_unref(tell[i]);
        unlock(pp);
    }
    kvs__free(tell);
    kvs__free(r);
}

int kvs__peer_progress(kvs__peer_t *pp)
{
    lock(pp);
    int n = progress_locked(pp);
    while (run_a_mapped_copy(pp)) /* the caller's deferred copies are progress too */
        n++;
    unlock(pp);
    return n;
}

kvs_status_t kvs__peer_listen_addr(kvs__peer_t *pp, char *buf, size_t len)
{
    if (pp->lfd < 0)
        return KVS_ERR_NOT_FOUND;
    if (strlen(pp->listen_addr) >= len)
        return KVS_ERR_INVALID_PARAM;
    strcpy(buf, pp->listen_addr);
    return KVS_OK;
}

const char *kvs__peer_transport_name(const kvs__peer_t *pp)
{
    return pp->ops->name;
}

/* ---------------------------------------------------------------------- */
/* Life cycle                                                               */
/* ---------------------------------------------------------------------- */
static kvs_status_t load_secret(kvs__peer_t *pp, const kvs__config_t *cfg, char *err, size_t errlen)
{
    /* A context that neither listens nor uses a pool may never talk to a
     * peer: it starts without a token, and asking a peer is then refused
     * (get_conn) with the same explanation. Listeners and pool clients
     * need the token (or KVSHARE_AUTH=none) to start at all. */
    if (cfg->auth == KVS__AUTH_TOKEN && cfg->auth_token_file[0] == '\0' && cfg->listen[0] == '\0' &&
        cfg->pool[0] == '\0') {
        pp->no_secret = true;
        return KVS_OK;
    }
    kvs__secret_t s;
    kvs_status_t st = kvs__auth_load(cfg, pp->log, &s, err, errlen);
    if (st != KVS_OK)
        return st;
    pp->open = s.open;
    memcpy(pp->secret, s.bytes, s.len);
    pp->secret_len = s.len;
    kvs__secret_clear(&s);
    return KVS_OK;
}

/* The shm server's question (its own thread): is @session a peer we serve,
 * and @id a region we expose to it? */
static int shm_region(void *arg, const uint8_t *session, pid_t pid, uint32_t id, uint64_t *base_p,
                      uint64_t *len_p, kvs_mem_type_t *type_p)
{
    kvs__peer_t *pp = arg;
    int found = -1;
    lock(pp);
    conn_t *c = conn_by_session(pp, session, true);
    if (c != NULL && id == KVS_SHM_INDEX_ID) {
        found = 0;
        if (pp->index != NULL && type_p != NULL) {
            size_t len;
            *base_p = (uint64_t)(uintptr_t)kvs__index_mem(pp->index, &len);
            *len_p = len;
            *type_p = KVS_MEM_HOST;
            found = 1;
        }
    } else if (c != NULL) {
        found = 0;
        /* A client in another process on this host: a pool node reads its
         * pull puts itself (direct_reads). Our own process keeps the
         * transport: its GET already checks what is still registered. */
        if (pp->ctx->cfg.pool_node && !c->put_direct && pid > 0 && pid != getpid()) {
#ifdef SYS_pidfd_open
            int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (pfd >= 0) {
                c->put_direct = true;
                c->put_pid = pid;
                c->put_pidfd = pfd;
                kvs__debug(pp->log, "peer %s: same host (pid %d): its puts are read directly",
                           c->peer, (int)pid);
            }
#endif
        }
        for (const region_t *g = pp->regions; g != NULL && found == 0; g = g->next) {
            if (g->id == id) {
                *base_p = (uint64_t)(uintptr_t)g->base;
                *len_p = g->len;
                if (type_p != NULL) /* NULL for an identify request */
                    *type_p = g->type;
                found = 1;
            }
        }
    }
    unlock(pp);
    return found;
}

/* The shm server's offer (its own thread): a same-host client's memory,
 * mapped, kept for its connection when we are a pool node. */
static bool shm_offer(void *arg, const uint8_t *session, uint32_t id, kvs__shm_pmap_t *m)
{
    kvs__peer_t *pp = arg;
    bool kept = false;
    lock(pp);
    conn_t *c = conn_by_session(pp, session, true);
    if (c != NULL && m == NULL) {
        /* Withdrawn: the client deregistered it (puts run under our lock,
         * so none is reading it now). */
        for (uint32_t i = 0; i < c->npmaps && !kept; i++) {
            if (c->pmaps[i]->id != id)
                continue;
            kvs__shm_pmap_free(c->pmaps[i]);
            c->pmaps[i] = c->pmaps[--c->npmaps];
            kept = true;
            kvs__debug(pp->log, "peer %s: its region %u is deregistered: unmapped here", c->peer,
                       id);
        }
    } else if (c != NULL && pp->ctx->cfg.pool_node) {
        uint32_t i = 0;
        while (i < c->npmaps && c->pmaps[i]->id != m->id)
            i++;
        if (i < c->npmaps) { /* offered again (a new connection's worth): the newer wins */
            kvs__shm_pmap_free(c->pmaps[i]);
            c->pmaps[i] = m;
            kept = true;
        } else if (c->npmaps < KVS_PEER_MAX_PUT_MAPS) {
            c->pmaps[c->npmaps++] = m;
            kept = true;
        }
        if (kept)
            kvs__debug(pp->log, "peer %s: its region %u (%llu bytes) is mapped here for its puts",
                       c->peer, m->id, (unsigned long long)m->len);
    }
    unlock(pp);
    return kept;
}

/* A same-host reader that proved @session asks for a control channel
 * (kvs__shm_peer_ctl): a duplicate of its socket becomes the channel of
 * that connection, one per connection; the progress thread polls it. */
static bool shm_ctl(void *arg, const uint8_t *session, int fd)
{
    kvs__peer_t *pp = arg;
    bool kept = false;
    lock(pp);
    conn_t *c = conn_by_session(pp, session, true);
    /* The server accepts its callers non-blocking (accept4), and a
     * duplicate shares that: nothing here waits on the socket. */
    int dfd = c != NULL && c->ctl_fd < 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dfd >= 0) {
        c->ctl_fd = dfd;
        c->ctl_had = true;
        kept = true;
        kick(pp); /* into the progress thread's poll set */
        kvs__debug(pp->log, "peer %s: control channel open", c->peer);
    }
    unlock(pp);
    return kept;
}

/* Our block index for same-host readers (index_int.h), sized for the
 * store's capacity in blocks of 64 KiB, between 64 Ki and 1 Mi entries
 * (6-96 MiB of address space, committed as blocks come): a store with more
 * blocks than half of that marks it incomplete, and readers then ask us
 * about what it does not show. */
static void index_serve(kvs__peer_t *pp, const kvs__config_t *cfg)
{
    uint64_t want = 2 * (cfg->capacity_bytes / (64u << 10));
    uint32_t n = 1u << 16;
    while (n < want && n < (1u << 20))
        n <<= 1;
    pp->index = kvs__index_new(n);
    if (pp->index == NULL) {
        kvs__warn(pp->log, "shm: no memory for the block index: same-host readers ask us instead");
        return;
    }
    lock(pp);
    kvs__index_set_regions(pp->index, pp->regions_version);
    unlock(pp);
    kvs__store_t *s = &pp->ctx->store;
    pthread_rwlock_wrlock(&s->lock);
    kvs__store_set_index(s, pp->index);
    pthread_rwlock_unlock(&s->lock);
}

/* Offers our memfds to same-host readers; without it they use the transport. */
static void shm_serve(kvs__peer_t *pp, const kvs__config_t *cfg)
{
    char err[256] = "";
    /* No directory configured: an abstract socket (see kvs__shm_srv_start). */
    if (kvs__shm_srv_start(cfg->host_socket_dir, pp->secret, pp->secret_len, pp->open, shm_region,
                           shm_offer, shm_ctl, pp, pp->log, &pp->shm_srv, err,
                           sizeof(err)) != KVS_OK) {
        pp->shm_srv = NULL;
        kvs__warn(pp->log, "shm: same-host peers will use the transport: %s", err);
    }
}

uint64_t kvs__peer_copy_helped(kvs__peer_t *pp)
{
    return kvs__copier_helped(pp->copier);
}

uint64_t kvs__peer_ctl_messages(kvs__peer_t *pp)
{
    return __atomic_load_n(&pp->ctl_sent, __ATOMIC_RELAXED);
}

uint64_t kvs__peer_shm_bytes(kvs__peer_t *pp)
{
    return __atomic_load_n(&pp->shm_bytes, __ATOMIC_RELAXED);
}

void kvs__peer_index_stats(kvs__peer_t *pp, uint64_t *answered_p, uint64_t *asked_p,
                           uint64_t *put_held_p)
{
    lock(pp);
    *answered_p = pp->index_answered;
    *asked_p = pp->index_asked;
    unlock(pp);
    *put_held_p = __atomic_load_n(&pp->put_held_blocks, __ATOMIC_RELAXED);
}

void kvs__peer_put_stats(kvs__peer_t *pp, uint64_t *pulled_p, uint64_t *pushed_p,
                         uint64_t *fallbacks_p)
{
    lock(pp);
    *pulled_p = pp->put_pulled_blocks;
    *pushed_p = pp->put_pushed_blocks;
    *fallbacks_p = pp->put_fallbacks;
    unlock(pp);
}

kvs_status_t kvs__peer_create(struct kvs_ctx *ctx, const kvs__config_t *cfg,
                              const kvs__transport_ops_t *ops, kvs__peer_t **pp_p, char *err,
                              size_t errlen)
{
    char dummy[2];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (ops->version != KVS_TRANSPORT_OPS_VERSION) {
        snprintf(err, errlen, "transport '%s' has vtable version %u, this library needs %u",
                 ops->name, ops->version, KVS_TRANSPORT_OPS_VERSION);
        return KVS_ERR_UNSUPPORTED;
    }
    kvs__peer_t *pp = kvs__calloc(1, sizeof(*pp));
    if (pp == NULL)
        return KVS_ERR_NO_MEMORY;
    pp->ctx = ctx;
    pp->log = kvs__ctx_log(ctx);
    pp->ops = ops;
    pp->wakefd = pp->lfd = -1;
    pp->inbox_tail = &pp->inbox;
    pp->thread_mode = cfg->progress == KVS_PROGRESS_THREAD;
    pp->poll_ns = (uint64_t)cfg->poll_us * 1000u;
    pp->tpoll_ns = (uint64_t)cfg->thread_poll_us * 1000u;
    pp->wait_odds.score = pp->spin_odds.score = 256; /* poll until it proves useless */
    pp->ev = (kvs__tl_events_t){.arg = pp, .on_am = on_am, .on_ep_error = on_ep_error};
    /* Recursive: serving a PUT may create the arena, whose registration
     * comes back into the peer plane (kvs__peer_mem_reg) on this thread. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&pp->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&pp->cond, NULL);
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    pp->scratch_locs = kvs__malloc(MAX_PIECES * sizeof(*pp->scratch_locs));
    pp->scratch_pieces = kvs__malloc(MAX_PIECES * sizeof(*pp->scratch_pieces));
    pp->poll_cap = 64;
    pp->poll_fds = kvs__malloc(pp->poll_cap * sizeof(*pp->poll_fds));
    pp->poll_who = kvs__malloc(pp->poll_cap * sizeof(*pp->poll_who));
    if (pp->scratch_locs == NULL || pp->scratch_pieces == NULL || pp->poll_fds == NULL ||
        pp->poll_who == NULL)
        goto fail;
    if ((st = load_secret(pp, cfg, err, errlen)) != KVS_OK)
        goto fail;
    if ((st = ops->init(cfg, pp->log, &pp->ev, &pp->tl, err, errlen)) != KVS_OK) {
        pp->tl = NULL;
        goto fail;
    }
    if ((st = ops->address(pp->tl, (const void **)&pp->addr, &pp->addr_len)) != KVS_OK) {
        snprintf(err, errlen, "transport '%s' has no address", ops->name);
        goto fail;
    }
    if (cfg->listen[0] != '\0') {
        kvs__raise_nofile(pp->log); /* a node holds a socket per peer */
        pp->lfd =
            kvs__boot_listen(cfg->listen, pp->listen_addr, sizeof(pp->listen_addr), err, errlen);
        if (pp->lfd < 0) {
            st = KVS_ERR_IO;
            goto fail;
        }
        kvs__info(pp->log, "listening on %s (transport %s, auth %s)", pp->listen_addr, ops->name,
                  pp->open ? "OFF" : "on");
    }
    pp->shm_on = cfg->shm;
    pp->index_on = cfg->shm && cfg->shm_index;
    if (pp->lfd >= 0 && cfg->shm && !pp->no_secret)
        shm_serve(pp, cfg);
    if (pp->shm_srv != NULL && cfg->shm_index)
        index_serve(pp, cfg);
    /* Helpers for the copies from same-host holders' mappings; none with a
     * single usable CPU (affinity, or a container's CPU quota), where they
     * could only take turns with the caller. */
    unsigned cpus = cfg->shm && cfg->copy_threads > 0 ? kvs__usable_cpus(NULL, NULL) : 0;
    if (cpus == 1)
        kvs__info(pp->log,
                  "copy helpers off: this process may use one CPU (its affinity or "
                  "its cgroup's CPU quota); KVSHARE_COPY_THREADS=%u not started",
                  cfg->copy_threads);
    if (cpus > 1 && (st = kvs__copier_new(cfg->copy_threads, pp->log, &pp->copier)) != KVS_OK)
        goto fail;
    pp->copy_leaves_core = pp->copier != NULL && cpus < cfg->copy_threads + 2u;
    pp->copy_stream = cfg->copy_stream;
    if (pp->thread_mode) {
        st = KVS_ERR_IO;
        pp->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (pp->wakefd < 0) {
            snprintf(err, errlen, "eventfd: %s", strerror(errno));
            goto fail;
        }
        if (pthread_create(&pp->thread, NULL, progress_thread, pp) != 0) {
            snprintf(err, errlen, "pthread_create: %s", strerror(errno));
            goto fail;
        }
        pp->thread_started = true;
        /* Return only once the thread runs: its start-up (the C library's
         * and a sanitizer's allocations) is over before the caller can
         * fork. A fork in the middle of it leaves the child holding locks
         * nobody will release (seen with GCC 12's ASan, which does not lock
         * its allocator around fork). */
        lock(pp);
        while (!pp->thread_running)
            pthread_cond_wait(&pp->cond, &pp->lock);
        unlock(pp);
    }
    *pp_p = pp;
    return KVS_OK;
fail:
    kvs__peer_destroy(pp);
    return st;
}

void kvs__peer_destroy(kvs__peer_t *pp)
{
    if (pp == NULL)
        return;
    kvs__shm_srv_stop(pp->shm_srv); /* its thread takes the lock: first */
    pp->shm_srv = NULL;
    if (pp->thread_started) {
        lock(pp);
        pp->stopping = true;
        kick(pp);
        unlock(pp);
        pthread_join(pp->thread, NULL);
    }
    lock(pp);
    pp->stopping = true;
    reads_due(pp, UINT64_MAX / 2); /* every READ still waiting, before connections close */
    while (pp->dialers != NULL) {
        dialer_t *d = pp->dialers;
        while (!d->done) {
            kick_now(pp);
            pthread_cond_wait(&pp->cond, &pp->lock);
        }
        reap_dialers(pp);
    }
    while (pp->conns != NULL) {
        conn_t *c = pp->conns;
        if (c->state == S_FAILED) /* listed only while failing: never */
            conn_unlink(c);
        else
            conn_fail(c, KVS_ERR_CANCELED, "context shutting down");
    }
    if (pp->tl != NULL) {
        /* Let cancelled operations call back before the transport goes. */
        for (int i = 0; i < 1000; i++)
            if (pp->ops->progress(pp->tl) == 0)
                break;
    }
    /* Queued messages hold connections, whose rkeys go back to the
     * transport: free them while it is still there. */
    while (pp->inbox != NULL) {
        inmsg_t *m = pp->inbox;
        pp->inbox = m->next;
        kvs__free(m->buf);
        conn_unref(m->conn);
        kvs__free(m);
    }
    pp->inbox_tail = &pp->inbox;
    while (pp->regions != NULL) {
        region_t *r = pp->regions;
        pp->regions = r->next;
        pp->ops->mem_dereg(pp->tl, r->memh);
        kvs__free(r);
    }
    if (pp->tl != NULL)
        pp->ops->fini(pp->tl);
    while (pp->pushes != NULL)
        push_free(pp, pp->pushes);
    while (pp->sputs != NULL) {
        pp->sputs->conn = NULL;
        sput_free(pp, pp->sputs);
    }
    while (pp->zombies != NULL) {
        preq_t *r = pp->zombies;
        pp->zombies = r->next;
        preq_free(r);
    }
    unlock(pp);
    if (pp->lfd >= 0)
        close(pp->lfd);
    if (pp->wakefd >= 0)
        close(pp->wakefd);
    OPENSSL_cleanse(pp->secret, sizeof(pp->secret));
    kvs__free(pp->scratch_locs);
    kvs__free(pp->scratch_pieces);
    kvs__free(pp->poll_fds);
    kvs__free(pp->ctl_buf);
    kvs__free(pp->poll_who);
    kvs__copier_free(pp->copier); /* every copy ended with its request */
    if (pp->index != NULL) {
        /* Readers' mappings keep the memory; the store stops writing to it. */
        kvs__store_t *s = &pp->ctx->store;
        pthread_rwlock_wrlock(&s->lock);
        kvs__store_set_index(s, NULL);
        pthread_rwlock_unlock(&s->lock);
        kvs__index_free(pp->index);
    }
    pthread_cond_destroy(&pp->cond);
    pthread_mutex_destroy(&pp->lock);
    kvs__free(pp);
}
