/* SPDX-License-Identifier: Apache-2.0 */
/* shm_int.h - the same-host path: kvshare-owned memory in memfds that same-host peers map.
 *
 * Memory: kvs__shm_alloc() hands out zeroed, page-aligned memory backed by a
 * sealed memfd (size fixed: F_SEAL_SHRINK|F_SEAL_GROW), or anonymous memory
 * when memfd_create is refused. A process-wide registry maps an address back
 * to its memfd. The serve/copy arenas, every generation array and
 * kvs_mem_alloc() memory come from here.
 *
 * Holder: after the TCP handshake, HELLO_ACK names this host's boot id and a
 * host-local Unix socket (KVSHARE_HOST_SOCKET_DIR). A reader on the same
 * boot id connects there (SOCK_SEQPACKET) and proves the session:
 *   holder -> reader  "KVSM" u32 version 2 | nonce[32]
 *   reader -> holder  "KVSM" | session[16] | mac[32] | n u32 (<= 64) | n region ids u32
 *                     (n = 0: "identify": the reader maps nothing, it only tells the
 *                     holder its pid, so that a pool node can read the reader's pull
 *                     puts itself with process_vm_readv; see peer.c, direct reads)
 *   or, from a pool client instead (an identify request that also offers memory):
 *                     "KVSP" | session[16] | mac[32] | n u32 (<= 64)
 *                     | n x {id u32, kind u32, base u64, len u64, off u64, size u64}
 *                     with n SCM_RIGHTS descriptors (memfds, exported CUDA VMM
 *                     allocations), answered "KVSM" | n | n x status i32: the node
 *                     maps each read-only and copies the client's pull puts from it
 *                     (peer.c, mapped reads; CUDA blocks have no other way out)
 *   holder -> reader  "KVSM" | n u32 | n x {status i32, kind u32, base u64, len u64, off u64,
 *                     size u64} with one SCM_RIGHTS fd per entry of status 0, in order
 *                     (proto_int.h: kvs__shm_parse_reply, strict and fuzzed)
 *   or, for a control channel (kvs__shm_peer_ctl):
 *                     "KVSC" | session[16] | mac[32], answered "KVSC" | status i32; on 0
 *                     the socket stays open as that connection's channel: LOOKUP,
 *                     LOOKUP_REPLY and RELEASE, one record each (peer.c, ctl_send)
 * kind 1: a sealed memfd (kvshare's memory). kind 2: a CUDA region whose memory
 * is a VMM allocation (cuMemCreate + cuMemMap) made with
 * CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR in requestedHandleTypes, exported by
 * cuMemExportToShareableHandle; other CUDA memory (cuMemAlloc, pools, VMM without
 * that bit) cannot be exported and stays on the transport (logged once).
 * mac = HMAC-SHA256(secret, "kvshare-shm" | session | nonce) (zeros with
 * KVSHARE_AUTH=none, where the session alone binds it). The holder checks the
 * peer's uid (SO_PEERCRED: ours or root), the MAC, that the session is a
 * ready connection it serves and that each id is a region it exposes; any
 * failure closes the socket having sent no fd.
 *
 * Reader: maps memfds PROT_READ (checking the seals and the size first, so a
 * holder cannot SIGBUS it) and copies with memcpy; imports CUDA allocations
 * (cuMemImportFromShareableHandle, cuMemAddressReserve, cuMemMap, cuMemSetAccess
 * with read access only, for the device that holds them) and copies with
 * cuMemcpyDtoH in that device's primary context. Either way it checks each
 * block's generation (host memory) before and after the copy (a seqlock read).
 * Whole blocks when both views are the same; across views the planner's
 * copies (plan_int.h), short runs through staging as on the transport.
 * Mappings live as long as the connection; a CUDA step that fails keeps the
 * region, or after a failed copy the connection, on the transport (logged once). */
#ifndef KVS_SHM_INT_H
#define KVS_SHM_INT_H

#include "kvs_int.h"

#include <sys/types.h>

struct kvs_pool;

#define KVS_SHM_BOOT_ID_LEN 16u
#define KVS_SHM_MAX_PATH    107u /* sun_path less its NUL */

/* --- memory (process-wide) ------------------------------------------------ */
/* Zeroed, page-aligned memory of @len bytes; @what names the memfd
 * ("kvshare:<pid>:<what>" in /proc/PID/maps). NULL when out of memory. */
void *kvs__shm_alloc(size_t len, const char *what);
/* Frees what kvs__shm_alloc() returned; accepts NULL. */
void kvs__shm_free(void *p);
/* The memfd that holds [addr, addr + len): its descriptor (the registry's:
 * do not close it) and addr's offset in it; -1 when none does. */
int kvs__shm_fd_of(const void *addr, size_t len, uint64_t *off_p);
/* This host's boot id (/proc/sys/kernel/random/boot_id; tests may pose as
 * another host with KVSHARE_TEST_BOOT_ID). */
void kvs__shm_boot_id(uint8_t out[KVS_SHM_BOOT_ID_LEN]);

/* --- holder --------------------------------------------------------------- */
typedef struct kvs__shm_srv kvs__shm_srv_t;
/* Called on the server's thread: -1 when @session is not a ready
 * connection this process serves, 0 when @region is not one it exposes,
 * 1 with its range and memory type written (@type_p is NULL for an identify
 * request). @pid: the reader's (SO_PEERCRED at accept), after it proved the
 * session. An identify request (no regions) calls it once with @region
 * KVS_SHM_IDENTIFY. */
#define KVS_SHM_IDENTIFY UINT32_MAX
/* The region id under which a holder hands out its block index
 * (index_int.h), when it has one. Region ids count up from 1, never this. */
#define KVS_SHM_INDEX_ID (UINT32_MAX - 1u)
typedef int (*kvs__shm_region_fn)(void *arg, const uint8_t *session, pid_t pid, uint32_t region,
                                  uint64_t *base_p, uint64_t *len_p, kvs_mem_type_t *type_p);
/* A pool client's region mapped read-only here (its offer, proto_int.h):
 * [base, base + len) of the client's address space lies at @at, host memory
 * (a memfd), or a device address when @cuda is set (an imported CUDA VMM
 * allocation: copy out with kvs__shm_pmap_copy). */
typedef struct kvs__shm_pmap {
    uint32_t id;
    uint64_t base, len;
    const uint8_t *at;
    void *map;
    size_t map_len;
    struct kvs_cuda_vmm_map *cuda; /* NULL: a memfd's mapping */
} kvs__shm_pmap_t;
struct kvs__shm_offer;
/* Maps offered region @o from descriptor @fd (not closed here). A memfd
 * only if sealed against shrinking and holding the whole region, so no read
 * of the mapping can fault; a CUDA VMM allocation imported read-only
 * (cuMemImportFromShareableHandle, as a reader imports a holder's). NULL
 * with *why_p saying why. */
kvs__shm_pmap_t *kvs__shm_pmap_open(int fd, const struct kvs__shm_offer *o, const char **why_p);
/* Copies @len bytes at @src (inside @m's mapping) to host memory @dst:
 * memcpy, or cuMemcpyDtoH in the context of the device that holds a CUDA
 * allocation (the caller's context put back). False with *why_p when the
 * driver refuses. */
bool kvs__shm_pmap_copy(const kvs__shm_pmap_t *m, void *dst, const uint8_t *src, size_t len,
                        const char **why_p);
/* Unmaps and frees; accepts NULL. */
void kvs__shm_pmap_free(kvs__shm_pmap_t *m);
/* Called on the server's thread, after the client proved @session, for
 * each region of its offer that mapped (@m, region @id): true when the
 * callee keeps @m (and frees it with kvs__shm_pmap_free), false to have it
 * unmapped; and for each region it withdraws (@m NULL): true when the
 * callee had it mapped and let it go. */
typedef bool (*kvs__shm_offer_fn)(void *arg, const uint8_t *session, uint32_t id,
                                  kvs__shm_pmap_t *m);
/* Called on the server's thread when a reader on this host proved
 * @session and asks for a control channel (KVS_SHM_CTL_MAGIC): @fd is its
 * socket; the callee keeps a duplicate of it as that connection's channel
 * (true) or refuses (false). The socket stays ours, closed after. */
typedef bool (*kvs__shm_ctl_fn)(void *arg, const uint8_t *session, int fd);
/* Listens on a new socket in @dir and serves it on a thread of its own.
 * @secret is borrowed and must outlive the server. @offer_fn may be NULL
 * (offers are then proved and answered, and nothing is kept); so may
 * @ctl_fn (control channels are then refused). */
kvs_status_t kvs__shm_srv_start(const char *dir, const uint8_t *secret, size_t secret_len,
                                bool open, kvs__shm_region_fn fn, kvs__shm_offer_fn offer_fn,
                                kvs__shm_ctl_fn ctl_fn, void *arg, const kvs__logger_t *log,
                                kvs__shm_srv_t **srv_p, char *err, size_t errlen);
/* Stops the thread, unlinks the socket, frees; accepts NULL. */
void kvs__shm_srv_stop(kvs__shm_srv_t *srv);
const char *kvs__shm_srv_path(const kvs__shm_srv_t *srv);
struct kvs__buf;
/* Appends the HELLO_ACK's same-host section (KVS_PROTO_FLAG_SHM). */
void kvs__shm_srv_put_offer(const kvs__shm_srv_t *srv, struct kvs__buf *b);

/* --- reader --------------------------------------------------------------- */
typedef struct kvs__shm_peer kvs__shm_peer_t;
/* The same-host state of one connection, or NULL when the holder is on
 * another host (boot ids differ) or the path is unusable. @secret and @log
 * are borrowed. */
struct kvs__copier;
/* The context's copy helpers, which share large host copies from the
 * mapping (copier_int.h); NULL: the copying thread alone. @stream
 * (KVSHARE_COPY_STREAM auto): a copy of KVS__COPIER_STREAM_MIN_BYTES or
 * more stores around the caches. */
void kvs__shm_peer_set_copier(kvs__shm_peer_t *sp, struct kvs__copier *cp, bool stream);
kvs__shm_peer_t *kvs__shm_peer_new(const uint8_t *boot_id, const char *path, size_t path_len,
                                   const uint8_t *session, const uint8_t *secret, size_t secret_len,
                                   bool open, const char *peer, const kvs__logger_t *log);
/* Unmaps everything; accepts NULL. */
void kvs__shm_peer_free(kvs__shm_peer_t *sp);
/* Opens this connection's control channel: a second socket to the
 * holder's, proved as a region request is (KVS_SHM_CTL_MAGIC), over which
 * peer.c then sends LOOKUP and RELEASE and takes LOOKUP_REPLY, one
 * SOCK_SEQPACKET record per message: a Unix socket's send costs less than
 * the transport's (see peer.c, ctl_send). A non-blocking descriptor, or -1
 * when the holder refused it or predates it (logged at debug level).
 * Blocking socket I/O, at most @step_ms for each of its four steps
 * (connect, greeting, request, answer); no lock of the caller's held. */
int kvs__shm_peer_ctl(kvs__shm_peer_t *sp, unsigned step_ms);
/* The holder's whole region table is now @regions (@n encoded region
 * descriptors, as a parsed message holds them): mappings of regions not in
 * it are let go, once no copy reads them. A mapping keeps its memory alive
 * (a freed memfd, a released CUDA allocation: an engine's GPU memory would
 * not come back to it), so it must not outlive the region. Allocates
 * nothing. Accepts NULL. */
void kvs__shm_peer_keep_only(kvs__shm_peer_t *sp, const uint8_t *regions, uint32_t n);
/* Before a pull put to a pool node: tells the node our pid (an identify
 * request) once per connection, and offers it the memory behind @regions
 * ({id, kind, base, len}: kind KVS_SHM_KIND_MEMFD for host memory, whose
 * memfd is looked up, KVS_SHM_KIND_CUDA_VMM for CUDA memory, exported as a
 * POSIX fd; off and size are found here; the caller offers each region
 * once per connection), so that it copies our puts from a mapping of them.
 * Host regions without a memfd and CUDA regions that do not export are not
 * offered. @mapped[i]: whether the node said it mapped region i. A node
 * that predates offers is identified the old way (and not offered again).
 * True when the node knows our pid. Blocking socket I/O (bounded): no lock
 * held. */
bool kvs__shm_peer_offer(kvs__shm_peer_t *sp, const struct kvs__shm_offer *regions, uint32_t n,
                         bool *mapped);
/* Tells the node that our regions @ids (n of them, at most
 * KVS_SHM_MAX_IDS), offered before, are deregistered, so that it lets go of
 * its mappings of them (a mapping keeps the memory alive: an engine that
 * frees its KV memory, GPU memory included, would not get it back while
 * the connection lasts). Waits for the node's answer (bounded socket I/O;
 * no lock of the caller's held). False, logged, when the node did not
 * confirm; after that none is sent on this connection. */
bool kvs__shm_peer_withdraw(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n);
/* Copies @count leased blocks (encoded descriptors at @block_at[i]) into
 * @ids of @dst, host or CUDA memory (into CUDA memory on our own stream per
 * device, synchronised before the check after the copies). KVS_OK (bytes in
 * *bytes_p), KVS_ERR_STALE (a generation moved: nothing to trust in @dst),
 * or KVS_ERR_UNSUPPORTED: this fetch must take the transport (which writes
 * every byte of it; a failed CUDA copy may have written some first; a CUDA
 * @dst has no transport to take). Thread-safe. */
kvs_status_t kvs__shm_fetch(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                            struct kvs_pool *dst, const uint32_t *ids, size_t count,
                            size_t *bytes_p);
/* The holder's block index (index_int.h), mapped read-only on first call
 * (blocking socket I/O, bounded: no lock of the caller's held): its first
 * byte, with its length in *len_p; NULL when the holder has none (it
 * predates the index, or runs with KVSHARE_SHM_INDEX=off), the handover
 * failed, or the path is off. Asked once per connection; the mapping lasts
 * as long as the connection. */
const uint8_t *kvs__shm_peer_index(kvs__shm_peer_t *sp, size_t *len_p);
/* Whether every byte and generation of the @count blocks (encoded
 * descriptors at @block_at[i]) lies in memory of the holder mapped here,
 * mapping what is not mapped yet (blocking socket I/O, bounded: no lock of
 * the caller's held). Blocks found in the holder's index are fetched only
 * so (peer.c, index_lookup). */
bool kvs__shm_peer_maps(kvs__shm_peer_t *sp, const uint8_t *const *block_at, size_t count);
/* The same for the holder's regions @ids (n of them, at most
 * KVS_SHM_MAX_IDS), each mapped whole: what a lookup's blocks lie in, once
 * the caller checked them against those regions' bounds. */
bool kvs__shm_peer_maps_ids(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n);
/* Whether fetches from this holder may still take the mapped path (the
 * handover did not fail, no CUDA copy failed): callers that defer a copy
 * start the transport at once when not. */
bool kvs__shm_peer_usable(kvs__shm_peer_t *sp);

struct kvs__xfer;
/* A fetch across views (plan_int.h) from the mapping: each block's planned
 * ranges into @staging (x->stage_bytes) and its long runs straight into
 * @ids of @dst, generations checked before and after, then staging
 * permuted in with kvs__xfer_apply() (a CUDA @dst: copied in with
 * cuMemcpyHtoDAsync, synchronised). KVS_OK (bytes read from the mapping
 * in *bytes_p), KVS_ERR_STALE (a generation moved: nothing from staging
 * landed, the long runs' bytes in @dst are not to be trusted), an error of
 * kvs__xfer_apply(), or KVS_ERR_UNSUPPORTED: a region of the plan is not
 * mapped and the fetch must take the transport (nothing was written), or
 * a CUDA copy failed. Thread-safe. */
kvs_status_t kvs__shm_fetch_planned(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                                    const struct kvs__xfer *x, uint8_t *staging,
                                    struct kvs_pool *dst, const uint32_t *ids, size_t *bytes_p);
/* Test hook: called between the copy and the generation check after it. */
extern void (*kvs__shm_test_mid_copy)(void);

#endif
