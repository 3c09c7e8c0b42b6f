/* SPDX-License-Identifier: Apache-2.0 */
/* boot_int.h - kvshare's own TCP bootstrap sockets: listen, accept, connect, framed reads.
 *
 * The bootstrap handshake runs over these sockets, parsed by our code with
 * small bounds and deadlines, before any transport endpoint exists. */
#ifndef KVS_BOOT_INT_H
#define KVS_BOOT_INT_H

#include "kvs_int.h"

#include <sys/socket.h>

/* "host:port" or "[v6]:port" into an address. KVS_ERR_INVALID_PARAM: no
 * port; KVS_ERR_NOT_FOUND: the host does not resolve. */
kvs_status_t kvs__resolve(const char *hostport, struct sockaddr_storage *ss, socklen_t *len);
/* Listens on @hostport (port 0: any); writes the bound "host:port" to
 * @bound. Returns a non-blocking fd, or -1 with a reason in @err. */
int kvs__boot_listen(const char *hostport, char *bound, size_t bound_len, char *err,
                     size_t err_len);
/* Accepts one connection (non-blocking, close-on-exec) and names its peer;
 * -1 when none is waiting or on error (errno says which). */
int kvs__boot_accept(int lfd, char *peer, size_t peer_len);
/* Connects before @deadline_ns; returns a blocking fd or -1 with *st set. */
int kvs__boot_connect(const char *hostport, uint64_t deadline_ns, kvs_status_t *st);
/* Writes all of @buf before @deadline_ns (works on non-blocking fds). */
kvs_status_t kvs__boot_send(int fd, const void *buf, size_t len, uint64_t deadline_ns);
/* Reads one whole message whose body is at most @max_body bytes, before
 * @deadline_ns. *buf_p is the caller's to kvs__free. */
kvs_status_t kvs__boot_recv(int fd, uint32_t max_body, uint64_t deadline_ns, uint8_t **buf_p,
                            size_t *len_p, char *why, size_t why_len);

/* --- the server's half of the handshake, free of I/O ------------------- */
typedef enum kvs__boot_state {
    KVS_BOOT_WAIT_HELLO,
    KVS_BOOT_WAIT_AUTH,
    KVS_BOOT_DONE,
} kvs__boot_state_t;

/* A client that can take the same-host memfd path ends its HELLO name with this; only
 * then does the HELLO_ACK carry KVS_PROTO_FLAG_SHM, so older clients never see the flag,
 * and older servers take the marker as part of a name. */
#define KVS_BOOT_SHM_MARK " +shm"

typedef struct kvs__boot_srv {
    kvs__boot_state_t state;
    size_t rx_len;
    uint64_t layout_id;
    uint64_t model; /* the HELLO's model fingerprint, when has_model */
    bool has_model;
    uint64_t req_id;
    bool shm; /* the HELLO's name ends with KVS_BOOT_SHM_MARK: the client can map memfds */
    uint8_t nonce_c[32], nonce_s[32]; /* nonce_s: the caller's, before the CHALLENGE */
    const uint8_t *addr;              /* into rx, after an accepted AUTH */
    uint32_t addr_len;
    uint8_t rx[40 + 8192]; /* KVS_PROTO_HDR_LEN + KVS_PROTO_MAX_PREAUTH */
} kvs__boot_srv_t;

/* Bytes still to read for the message in rx (> 0), 0 when it is whole, or
 * -1 (with @why) when its header is refused: never more than the pre-auth
 * bound, whatever the peer claims. */
long kvs__boot_srv_want(const kvs__boot_srv_t *s, char *why, size_t why_len);
/* Takes the whole message in rx:
 *  - KVS_INPROGRESS: a HELLO (layout_id, nonce_c, req_id set): the caller
 *    checks the layout, sets nonce_s and sends the CHALLENGE;
 *  - KVS_OK: an AUTH whose proof holds (or @open): addr set;
 *  - an error, with @why: refuse the peer. */
kvs_status_t kvs__boot_srv_take(kvs__boot_srv_t *s, const uint8_t *secret, size_t secret_len,
                                bool open, char *why, size_t why_len);
/* HMAC-SHA256(secret, role | nonce_c | nonce_s); zeros when @open. */
void kvs__boot_proof(const uint8_t *secret, size_t secret_len, bool open, const char *role,
                     const uint8_t *nonce_c, const uint8_t *nonce_s, uint8_t *out);

#endif
