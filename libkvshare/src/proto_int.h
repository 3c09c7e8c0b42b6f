/* SPDX-License-Identifier: Apache-2.0 */
/* proto_int.h - the peer wire protocol: message layout, encoder and a strict parser.
 *
 * Every message is a 40-byte little-endian header followed by its body:
 *   magic u32 "KVSH" | version u16 | type u16 | flags u32 | body_len u32 |
 *   req_id u64 | session 16 bytes
 * The handshake (HELLO, CHALLENGE, AUTH, HELLO_ACK) runs over kvshare's own
 * TCP bootstrap socket with session all zeros; HELLO_ACK's header names the
 * session: 128 random bits that every later message (over the transport)
 * carries, and that is the only way a message reaches a connection.
 * Every count and length is checked against the bytes received before use;
 * the parser is fuzzed (tests/fuzz/fuzz_proto.c, fuzz_boot.c). Decoded
 * messages point into the caller's buffer and copy nothing. */
#ifndef KVS_PROTO_INT_H
#define KVS_PROTO_INT_H

#include "kvs_int.h"
#include "plan_int.h"

/* KVS_PROTO_VERSION 3: views (HELLO/HELLO_ACK), ranged FETCH. 4: RELEASE may carry
 * the number of readers the holder should expect (KVS_PROTO_FLAG_READERS); a v3 holder
 * would fail the connection on that flag, so the version says it up front. */
#define KVS_PROTO_MAGIC       0x4853564Bu /* "KVSH" little-endian */
#define KVS_PROTO_VERSION     4u
#define KVS_PROTO_HDR_LEN     40u
#define KVS_PROTO_SESSION_LEN 16u
#define KVS_PROTO_NONCE_LEN   32u
#define KVS_PROTO_MAC_LEN     32u
#define KVS_PROTO_MAX_BODY    (64u << 20)
#define KVS_PROTO_MAX_KEYS    65536u
#define KVS_PROTO_MAX_REGIONS 4096u
#define KVS_PROTO_MAX_RKEY    4096u
#define KVS_PROTO_MAX_PIECES  1024u
#define KVS_PROTO_MAX_NAME    256u
#define KVS_PROTO_MAX_TEXT    1024u
#define KVS_PROTO_MAX_ADDR    65536u
/* Pushed pieces are at least this big: a FETCH cannot ask for millions of
 * empty sends. */
#define KVS_PROTO_MIN_CHUNK 64u
/* Pieces one FETCH or PUT may move (blocks x chunks per block). */
#define KVS_PROTO_MAX_FETCH_PIECES (1u << 20)
/* Bootstrap: the most a peer may send before it has proved the secret. */
#define KVS_PROTO_MAX_PREAUTH 8192u

typedef enum kvs__msg_type {
    KVS_MSG_HELLO = 1,        /* c->s (bootstrap): layout id, client nonce, name */
    KVS_MSG_CHALLENGE = 2,    /* s->c (bootstrap): server nonce and server proof */
    KVS_MSG_AUTH = 3,         /* c->s (bootstrap): client proof, client address */
    KVS_MSG_HELLO_ACK = 4,    /* s->c (bootstrap): session, address, regions */
    KVS_MSG_LOOKUP = 5,       /* c->s: key chain */
    KVS_MSG_LOOKUP_REPLY = 6, /* s->c: hits, lease, block descriptors */
    KVS_MSG_RELEASE = 7,      /* c->s: end a lease */
    KVS_MSG_ERROR = 8,        /* either way: status and text */
    KVS_MSG_FETCH = 9,        /* c->s: push leased blocks (AM data path) */
    KVS_MSG_DATA = 10,        /* s->c: one piece of a pushed block */
    KVS_MSG_FETCH_DONE = 11,  /* s->c: all pieces sent, with generations */
    KVS_MSG_PUT = 12,         /* c->node: offer blocks (keys and sizes) */
    KVS_MSG_EVENT = 13,       /* reserved: block stored/removed */
    KVS_MSG_PUT_ACK = 14,     /* node->c: which offered blocks it wants */
    KVS_MSG_PUT_DONE = 15,    /* node->c: the wanted blocks are stored */
    KVS_MSG_READ = 16,        /* c->s: blocks read through the holder's mapped index */
    KVS_MSG_TYPE_MAX = 16,
} kvs__msg_type_t;

/* Header flag: the LOOKUP_REPLY / HELLO_ACK carries a region table. */
#define KVS_PROTO_FLAG_REGIONS 1u
/* Header flag: sent by the serving side of a connection (a process may be
 * both ends of one session when it connects to itself). */
#define KVS_PROTO_FLAG_FROM_SERVER 2u
/* Header flag on PUT: the node pulls the blocks with GET (native RMA). The
 * body then also carries the client's region table, one source descriptor
 * per segment and one block id per key; the node answers with PUT_DONE
 * (never PUT_ACK) once it has read and stored them. */
#define KVS_PROTO_FLAG_PULL 4u
/* Header flag on HELLO: a u64 model fingerprint (kvs_model_id) follows the
 * name; the server may then accept the connection for a pool of the same
 * model in another view. On HELLO_ACK: the server's view of the pool the
 * session serves (KVS_VIEW_WIRE_LEN bytes, validated) follows the address. */
#define KVS_PROTO_FLAG_VIEW 8u
/* Header flag on FETCH: the requester asks for byte ranges of each block
 * (a plan across views) instead of whole blocks cut into its chunk sizes:
 * u16 nsets, per set u16 nranges and nranges x (u32 off, u32 len), strictly
 * ascending and disjoint, then one u16 set index per block. Each range is
 * pushed as one DATA whose offset is the range's. Ranges in all (blocks x
 * their set's) are at most KVS_PROTO_MAX_FETCH_PIECES. */
#define KVS_PROTO_FLAG_RANGES 16u
#define KVS_PROTO_MAX_SETS    64u
/* Header flag on RELEASE: a u32 follows the lease id, how many readers
 * (this one included, 1..KVS_PROTO_MAX_READERS) read these blocks before
 * their producer may free them: e.g. several consumer TP ranks reading one
 * producer rank (kvs_lookup_params_t.readers, kvs_pool_readers()). */
#define KVS_PROTO_FLAG_READERS 64u
#define KVS_PROTO_MAX_READERS  4096u
/* Header flag on HELLO_ACK: after the regions, the holder's same-host
 * offer: its boot id (16 bytes) and the path of its host-local Unix socket
 * (u16 length, 1..107 bytes), where a reader on the same boot id is handed
 * the holder's memfds (shm_int.h). Sent only to a client whose HELLO name
 * ends with KVS_BOOT_SHM_MARK (boot_int.h), so older clients never see it. */
#define KVS_PROTO_FLAG_SHM     32u
#define KVS_PROTO_FLAGS_KNOWN  127u
#define KVS_PROTO_BOOT_ID_LEN  16u
#define KVS_PROTO_MAX_SHM_PATH 107u

typedef struct kvs__hdr {
    uint16_t type;
    uint32_t flags;
    uint32_t body_len;
    uint64_t req_id;
    uint8_t session[KVS_PROTO_SESSION_LEN];
} kvs__hdr_t;

/* A memory region a peer exposes, with its packed remote key. */
typedef struct kvs__region_desc {
    uint32_t id;
    uint64_t base;
    uint64_t length;
    uint32_t rkey_len;
    const uint8_t *rkey;
} kvs__region_desc_t;

/* One contiguous piece of a block in a peer's memory. */
typedef struct kvs__piece {
    uint32_t region;
    uint32_t len;
    uint64_t addr;
} kvs__piece_t;

/* A leased block: its pieces, in the order they concatenate, and where its
 * generation lives. */
typedef struct kvs__block_desc {
    uint32_t gen_region;
    uint16_t npieces;
    uint64_t gen_addr;
    uint64_t gen;
    const uint8_t *pieces; /* npieces encoded kvs__piece_t: read with kvs__proto_piece */
} kvs__block_desc_t;

typedef struct kvs__msg {
    kvs__hdr_t hdr;
    union {
        struct {
            uint64_t layout_id;
            const uint8_t *nonce;
            uint16_t name_len;
            const char *name;
            uint64_t model; /* KVS_PROTO_FLAG_VIEW only */
        } hello;
        struct {
            const uint8_t *nonce;
            const uint8_t *mac;
            uint8_t auth_required;
        } challenge;
        struct {
            const uint8_t *mac;
            uint32_t addr_len; /* the client's transport address */
            const uint8_t *addr;
        } auth;
        struct {
            uint32_t addr_len; /* the server's transport address */
            const uint8_t *addr;
            const uint8_t *view; /* KVS_PROTO_FLAG_VIEW: KVS_VIEW_WIRE_LEN bytes, valid */
            /* KVS_PROTO_FLAG_SHM only */
            const uint8_t *boot_id; /* KVS_PROTO_BOOT_ID_LEN bytes */
            uint16_t shm_path_len;
            const char *shm_path; /* not NUL-terminated */
        } hello_ack;
        struct {
            uint64_t layout_id;
            uint32_t lease_ms;
            uint32_t nkeys;
            const uint8_t *keys; /* nkeys * 32 bytes */
        } lookup;
        struct {
            int32_t status;
            uint64_t lease_id;
            uint32_t hits;
            const uint8_t *blocks; /* hits encoded block descriptors */
            size_t blocks_len;
        } lookup_reply;
        struct {
            uint64_t lease_id;
            uint32_t readers; /* 0: not said (KVS_PROTO_FLAG_READERS unset) */
        } release;
        struct {
            /* Sent only by a reader that mapped the holder's index, which
             * only a holder that knows this message hands out. */
            uint32_t readers; /* as RELEASE's (0: not said) */
            uint32_t count;
            const uint8_t *refs; /* count x (u32 entry index, u64 serial): read with
                                    kvs__proto_read_ref */
        } read;
        struct {
            int32_t status;
            uint16_t text_len;
            const char *text;
        } error;
        struct {
            uint64_t lease_id;
            uint32_t first;
            uint32_t count;
            uint16_t nchunks;      /* the requester's segment sizes: */
            const uint8_t *chunks; /* each block is pushed as these pieces */
            /* KVS_PROTO_FLAG_RANGES (then nchunks is 0): */
            uint16_t nsets;
            const uint8_t *sets;   /* read with kvs__proto_fetch_set */
            const uint8_t *set_of; /* count u16 */
        } fetch;
        struct {
            uint32_t block;  /* index within the fetch */
            uint32_t offset; /* byte offset within the block */
        } data;
        struct {
            int32_t status;
            uint32_t count;
            const uint8_t *gens; /* count u64 */
        } fetch_done;
        struct {
            uint64_t layout_id;
            uint32_t nkeys;
            uint16_t nchunks;      /* the sender's segment sizes: a block is */
            const uint8_t *chunks; /* pushed as these pieces, in order */
            const uint8_t *keys;   /* nkeys * 32 bytes */
            /* KVS_PROTO_FLAG_PULL only: where segment k of block id b is in
             * the sender's memory: region, base + b * stride, chunks[k]
             * bytes (unchecked against the regions: the node does that). */
            const uint8_t *segs; /* nchunks * (u32 region, u64 base, u64 stride) */
            const uint8_t *ids;  /* nkeys u32 block ids */
        } put;
        struct {
            int32_t status;
            uint32_t count;
            const uint8_t *idx; /* count u32: indices into the PUT's keys */
        } put_ack;
        struct {
            int32_t status;
            uint32_t stored;
        } put_done;
    } u;
    /* Region table, when hdr.flags has KVS_PROTO_FLAG_REGIONS. */
    uint32_t nregions;
    const uint8_t *regions;
} kvs__msg_t;

/* Parses and validates one message of @len bytes. On error returns
 * KVS_ERR_PROTOCOL and writes a reason into @why (if non-NULL). */
kvs_status_t kvs__proto_decode(const void *buf, size_t len, kvs__msg_t *msg, char *why,
                               size_t why_len);
/* Validates just the first KVS_PROTO_HDR_LEN bytes of @buf (magic, version,
 * type, flags, body_len <= @max_body): for stream readers, which must know
 * the length before reading the body, and for receive handlers, which must
 * know the session before they allocate anything. */
kvs_status_t kvs__proto_decode_hdr(const void *buf, size_t len, uint32_t max_body, kvs__hdr_t *hdr,
                                   char *why, size_t why_len);

/* Iterators over validated arrays inside a decoded message. */
void kvs__proto_region(const uint8_t **cursor, kvs__region_desc_t *out);
/* Whether a validated table of @n regions has region @id. */
bool kvs__proto_regions_have(const uint8_t *regions, uint32_t n, uint32_t id);
void kvs__proto_block(const uint8_t **cursor, kvs__block_desc_t *out);
void kvs__proto_piece(const uint8_t *pieces, uint16_t i, kvs__piece_t *out);
uint64_t kvs__proto_u64_at(const uint8_t *p, size_t i);
uint32_t kvs__proto_u32_at(const uint8_t *p, size_t i);

/* Set @k of a validated ranged FETCH: its ranges (nranges x (u32 off, u32 len)). */
void kvs__proto_fetch_set(const uint8_t *sets, uint16_t k, uint16_t *nranges_p,
                          const uint8_t **ranges_p);
uint16_t kvs__proto_u16_at(const uint8_t *p, size_t i);

/* --- encoding into a growable buffer ---------------------------------- */
typedef struct kvs__buf {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* an allocation failed; the buffer is unusable */
} kvs__buf_t;

void kvs__buf_init(kvs__buf_t *b);
void kvs__buf_free(kvs__buf_t *b);
void kvs__buf_put(kvs__buf_t *b, const void *data, size_t len);
void kvs__buf_u8(kvs__buf_t *b, uint8_t v);
void kvs__buf_u16(kvs__buf_t *b, uint16_t v);
void kvs__buf_u32(kvs__buf_t *b, uint32_t v);
void kvs__buf_u64(kvs__buf_t *b, uint64_t v);
/* Starts a message (writes a header with body_len 0); finish fills it in. */
/* @session: KVS_PROTO_SESSION_LEN bytes, or NULL for none (bootstrap). */
void kvs__proto_begin(kvs__buf_t *b, kvs__msg_type_t type, uint32_t flags, uint64_t req_id,
                      const uint8_t *session);
kvs_status_t kvs__proto_finish(kvs__buf_t *b);
void kvs__proto_put_region(kvs__buf_t *b, const kvs__region_desc_t *r);
/* The encoded length of a block descriptor of @npieces pieces, and the
 * same encoding as kvs__proto_put_block written at @p (that many bytes):
 * returns the byte after it. */
static inline size_t kvs__proto_block_len(uint16_t npieces)
{
    return 22u + 16u * (size_t)npieces;
}
uint8_t *kvs__proto_write_block(uint8_t *p, const kvs__block_desc_t *d, const kvs__piece_t *pieces);
void kvs__proto_put_block(kvs__buf_t *b, const kvs__block_desc_t *d, const kvs__piece_t *pieces);
/* Patches the u32 at byte @off (e.g. a count written before it was known). */
void kvs__buf_patch_u32(kvs__buf_t *b, size_t off, uint32_t v);

/* --- one encoder per message: each begins and finishes @b ------------- */
kvs_status_t kvs__enc_hello(kvs__buf_t *b, uint64_t req_id, uint64_t layout_id,
                            const uint8_t *nonce, const char *name);
/* HELLO with KVS_PROTO_FLAG_VIEW: the client's model fingerprint too. */
kvs_status_t kvs__enc_hello_model(kvs__buf_t *b, uint64_t req_id, uint64_t layout_id,
                                  const uint8_t *nonce, const char *name, uint64_t model);
kvs_status_t kvs__enc_challenge(kvs__buf_t *b, uint64_t req_id, const uint8_t *nonce,
                                const uint8_t *mac, bool auth_required);
kvs_status_t kvs__enc_auth(kvs__buf_t *b, uint64_t req_id, const uint8_t *mac, const void *addr,
                           size_t addr_len);
kvs_status_t kvs__enc_error(kvs__buf_t *b, uint64_t req_id, uint32_t flags, const uint8_t *session,
                            kvs_status_t status, const char *text);
kvs_status_t kvs__enc_lookup(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                             uint64_t layout_id, uint32_t lease_ms, const kvs_key_t *keys,
                             size_t n);
/* @readers > 0: KVS_PROTO_FLAG_READERS with that count (at most
 * KVS_PROTO_MAX_READERS, else KVS_ERR_INVALID_PARAM); 0: a plain RELEASE. */
/* READ: blocks a same-host reader copied through the holder's mapped index
 * (index_int.h), for the holder's reads counts and access times: @count
 * (at most KVS_PROTO_MAX_KEYS) entry indices and serials as the index gave
 * them; @readers as RELEASE's. */
#define KVS_PROTO_READ_REF_LEN 12u
kvs_status_t kvs__enc_read(kvs__buf_t *b, uint64_t req_id, const uint8_t *session, uint32_t readers,
                           const uint32_t *idx, const uint64_t *serial, uint32_t count);
void kvs__proto_read_ref(const uint8_t *refs, uint32_t i, uint32_t *idx_p, uint64_t *serial_p);
kvs_status_t kvs__enc_release(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                              uint64_t lease_id, uint32_t readers);
kvs_status_t kvs__enc_fetch(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                            uint64_t lease_id, uint32_t first, uint32_t count,
                            const uint32_t *chunks, uint16_t nchunks);
/* A ranged FETCH (KVS_PROTO_FLAG_RANGES): @nsets sets of ranges
 * (set k: nranges[k] ranges at ranges[k]), then set_of[count]. */
kvs_status_t kvs__enc_fetch_ranges(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                   uint64_t lease_id, uint32_t first, uint32_t count,
                                   uint16_t nsets, const uint16_t *nranges,
                                   const kvs__range_t *const *ranges, const uint16_t *set_of);
kvs_status_t kvs__enc_fetch_done(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                 kvs_status_t status, const uint64_t *gens, uint32_t count);
kvs_status_t kvs__enc_put(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                          uint64_t layout_id, const uint32_t *chunks, uint16_t nchunks,
                          const kvs_key_t *keys, uint32_t n);
/* A pull PUT (KVS_PROTO_FLAG_PULL): @regions (what the node may read, with
 * packed rkeys), then per chunk its source segment, then the block ids. */
typedef struct kvs__put_seg {
    uint32_t region;
    uint64_t base, stride;
} kvs__put_seg_t;
kvs_status_t kvs__enc_put_pull(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                               uint64_t layout_id, const uint32_t *chunks, uint16_t nchunks,
                               const kvs_key_t *keys, uint32_t n, const kvs__region_desc_t *regions,
                               uint32_t nregions, const kvs__put_seg_t *segs, const uint32_t *ids);
#define KVS_PROTO_PUT_SEG_LEN 20u
void kvs__proto_put_seg(const uint8_t *segs, uint16_t k, kvs__put_seg_t *out);
kvs_status_t kvs__enc_put_ack(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                              const uint32_t *idx, uint32_t n);
kvs_status_t kvs__enc_put_done(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                               kvs_status_t status, uint32_t stored);
/* DATA is a header only (the payload travels beside it): into @out, which
 * holds KVS_PROTO_HDR_LEN + 8 bytes. */
void kvs__enc_data(uint8_t *out, uint64_t req_id, uint32_t flags, const uint8_t *session,
                   uint32_t block, uint32_t offset);
#define KVS_PROTO_DATA_LEN (KVS_PROTO_HDR_LEN + 8u)

/* --- the same-host handover's answer (shm.c; a Unix socket, not the transport) ---
 *   "KVSM" u32 | n u32 | n x {status i32, kind u32, base u64, len u64, off u64, size u64}
 * with one SCM_RIGHTS descriptor per entry of status 0, in order. kind says what
 * the descriptor is: a sealed memfd, or a CUDA VMM allocation exported as a POSIX
 * fd (cuMemExportToShareableHandle); the region [base, base+len) lies at
 * offset off of that object, of size bytes. */
#define KVS_SHM_MAGIC         0x4D53564Bu /* "KVSM" */
#define KVS_SHM_VERSION       2u          /* 2: kind and size per entry (CUDA VMM) */
#define KVS_SHM_MAX_IDS       64u
#define KVS_SHM_ENTRY_LEN     40u
#define KVS_SHM_KIND_MEMFD    1u
#define KVS_SHM_KIND_CUDA_VMM 2u
#define KVS_SHM_KIND_WITHDRAW 3u /* offers only: forget the region of this id */
typedef struct kvs__shm_entry {
    int32_t status; /* 0: a descriptor came for it; else why not (a kvs_status_t) */
    uint32_t kind;  /* KVS_SHM_KIND_*; 0 when status != 0 */
    uint64_t base, len, off, size;
} kvs__shm_entry_t;
/* Writes entry @e at @out (KVS_SHM_ENTRY_LEN bytes). */
void kvs__shm_put_entry(uint8_t *out, const kvs__shm_entry_t *e);
/* Parses an answer of @len bytes to a request for @n (1..KVS_SHM_MAX_IDS)
 * regions that came with @nfds descriptors. KVS_OK with @n entries in @out;
 * KVS_ERR_PROTOCOL (@why, if given, says what) for a wrong length, magic or
 * count, an unknown kind, a descriptor entry with no bytes, outside its
 * object or wrapping, an error entry with a kind, or descriptors that do not
 * match the entries of status 0 one to one. Pure; fuzzed (fuzz_shm.c). */
kvs_status_t kvs__shm_parse_reply(const uint8_t *rep, size_t len, uint32_t n, uint32_t nfds,
                                  kvs__shm_entry_t *out, const char **why);

/* --- a pool client's offer of its own memory (client -> node, same socket) ---
 *   "KVSP" u32 | session[16] | mac[32] | n u32 (<= KVS_SHM_MAX_IDS)
 *   | n x {id u32, kind u32, base u64, len u64, off u64, size u64}
 * with one SCM_RIGHTS descriptor per entry, in order: the client's registered
 * region @id, [base, base+len) of its address space, lies at offset off of an
 * object of size bytes: a sealed memfd (kind 1) or a CUDA VMM allocation
 * exported as a POSIX fd (kind 2); or, kind 3 with base, len, off and size 0
 * and no descriptor, a withdrawal: the client deregistered region @id, and
 * the node lets go of its mapping (else it would keep the memory alive, an
 * engine's GPU memory included, until the connection ends; status 0: it was
 * mapped and is gone). Also an identify request (the node takes
 * the client's pid from SO_PEERCRED). The node maps each read-only and copies
 * the client's pull puts from it (peer.c, mapped reads), and answers
 *   "KVSM" u32 | n u32 | n x status i32   (0: mapped and kept; else why not)
 * A node that predates it refuses the magic and closes the socket: the client
 * then identifies the old way. */
#define KVS_SHM_OFFER_MAGIC 0x5053564Bu /* "KVSP" */
/* A reader's request for a control channel on the same socket (shm_int.h,
 * kvs__shm_peer_ctl): "KVSC" | session[16] | mac[32], proved as a region
 * request is, answered "KVSC" | status i32 (0: kept as that connection's
 * channel). A holder that predates it refuses the magic and closes. */
#define KVS_SHM_CTL_MAGIC       0x4353564Bu /* "KVSC" */
#define KVS_SHM_CTL_LEN         (4u + 16u + 32u)
#define KVS_SHM_OFFER_FIXED     (4u + 16u + 32u + 4u)
#define KVS_SHM_OFFER_ENTRY_LEN 40u
typedef struct kvs__shm_offer {
    uint32_t id;
    uint32_t kind; /* KVS_SHM_KIND_* */
    uint64_t base, len, off, size;
} kvs__shm_offer_t;
/* Writes an offer of @n entries (session and mac given) into @out, which
 * holds KVS_SHM_OFFER_FIXED + n * KVS_SHM_OFFER_ENTRY_LEN bytes. */
void kvs__shm_put_offer(uint8_t *out, const uint8_t *session, const uint8_t *mac,
                        const kvs__shm_offer_t *e, uint32_t n);
/* Parses an offer of @len bytes that came with @nfds descriptors: KVS_OK
 * with its session and mac (pointers into @req) and *n_p entries in @out
 * (room for KVS_SHM_MAX_IDS); KVS_ERR_PROTOCOL (@why, if given, says what)
 * for a wrong length or magic, more than KVS_SHM_MAX_IDS entries,
 * descriptors that do not match the offered (not withdrawn) entries one to
 * one, an unknown kind, an entry with no bytes, wrapping, or outside its
 * object, a withdrawal with any of them set, or an id named twice. Pure;
 * fuzzed (fuzz_shm.c). */
kvs_status_t kvs__shm_parse_offer(const uint8_t *req, size_t len, uint32_t nfds,
                                  const uint8_t **session_p, const uint8_t **mac_p,
                                  kvs__shm_offer_t *out, uint32_t *n_p, const char **why);
/* The node's answer to an offer of @n entries: "KVSM" | n | n statuses
 * (@len bytes) into @status. KVS_OK, or KVS_ERR_PROTOCOL (@why) for a wrong
 * length, magic or count. Pure; fuzzed (fuzz_shm.c). */
kvs_status_t kvs__shm_parse_offer_reply(const uint8_t *rep, size_t len, uint32_t n, int32_t *status,
                                        const char **why);

#endif
