/* SPDX-License-Identifier: Apache-2.0 */
/* ixtls_int.h - rediss:// for hiredis 0.14 (Debian 12), which has no hiredis_ssl and no
 * pluggable read/write: a TLS client (OpenSSL) bridged to hiredis through a socketpair.
 *
 * hiredis talks plain RESP on one end (redisConnectFd), with its own timeouts
 * (redisSetTimeout: SO_RCVTIMEO/SO_SNDTIMEO on that end); a relay thread per connection moves
 * bytes between the other end and SSL_read/SSL_write on the TCP socket, non-blocking, under
 * poll. The relay never waits on anything but poll, and stops when hiredis closes its end
 * (redisFree) or the TLS session ends; on a TLS error it records the cause, then shuts the
 * pair so hiredis sees the end at once instead of at its timeout.
 *
 * What is verified: the server's certificate chain against the CA file (or the system store),
 * TLS >= 1.2, and its name: a DNS name by SAN (SNI sent), an IP address by its SAN entry. */
#ifndef KVS_IXTLS_INT_H
#define KVS_IXTLS_INT_H

#include <stddef.h>

typedef struct kvs__ixtls_ctx kvs__ixtls_ctx_t;
typedef struct kvs__ixtls_conn kvs__ixtls_conn_t;

/* The settings every connection shares. ca_file: PEM CAs (NULL: the system store);
 * cert_file and key_file: a client certificate (both or neither; for tls-auth-clients).
 * Loads them now: NULL with the cause in why (an unreadable file, a key not matching the
 * certificate, out of memory). The caller owns the result (kvs__ixtls_ctx_free). */
kvs__ixtls_ctx_t *kvs__ixtls_ctx_create(const char *ca_file, const char *cert_file,
                                        const char *key_file, char *why, size_t wl);
void kvs__ixtls_ctx_free(kvs__ixtls_ctx_t *t);

/* Connects to host:port (TCP within connect_ms, then the handshake within handshake_ms),
 * verifies the server and starts the relay. *fd_p gets hiredis's end of the pair (for
 * redisConnectFd, which then owns it). NULL with the cause in why: connection refused, a
 * timeout, "certificate verify failed: <reason>", a hostname mismatch, a handshake alert. */
kvs__ixtls_conn_t *kvs__ixtls_connect(kvs__ixtls_ctx_t *t, const char *host, int port,
                                      int connect_ms, int handshake_ms, int *fd_p, char *why,
                                      size_t wl);

/* The TLS error that ended the relay ("TLS: ..."), or NULL while it runs or when it ended
 * cleanly. Any thread. */
const char *kvs__ixtls_error(kvs__ixtls_conn_t *c);

/* Stops the relay and frees the connection. Call after hiredis closed its end (redisFree);
 * accepts NULL. */
void kvs__ixtls_close(kvs__ixtls_conn_t *c);

#endif
