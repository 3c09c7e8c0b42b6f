/* SPDX-License-Identifier: Apache-2.0 */
/* util_int.h - kvs_util: one parser for each small primitive (endpoints, byte sizes, log-level
 * names, DNS names, process spawning), shared by the core, the shim, the CLI and the controller.
 * Internal; never installed.
 *
 * Every parser here is strict and side-effect free: it returns 0 and fills its outputs, or
 * returns -1, writes none of its outputs and puts a short reason (without the value's name,
 * which only the caller knows) in why when why is not NULL. */
#ifndef KVS_UTIL_INT_H
#define KVS_UTIL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- endpoints: HOST:PORT ---- */

/* The port may be left out ("host", "[::1]"); ep->has_port says whether it was given. */
#define KVS__EP_PORT_OPTIONAL (1u << 0)
/* The host may be empty (":8443", all addresses). */
#define KVS__EP_HOST_OPTIONAL (1u << 1)
/* Port 0 ("pick one") is refused: the endpoint is for connecting, not listening. */
#define KVS__EP_PORT_NONZERO (1u << 2)

typedef struct kvs__endpoint {
    char host[256]; /* without the brackets of an IPv6 literal; may be "" with HOST_OPTIONAL */
    char port[8];   /* decimal, as given ("" when left out) */
    uint16_t port_num;
    bool has_port;
    bool bracketed; /* the host was written [ADDR] */
} kvs__endpoint_t;

/* Parses HOST:PORT. HOST is a name, an IPv4 literal or an IPv6 literal in brackets ([::1]:80);
 * an IPv6 address without brackets is refused, as it cannot be told from its port. PORT is
 * decimal digits only, 0..65535. flags: KVS__EP_*. */
int kvs__endpoint_parse(const char *s, unsigned flags, kvs__endpoint_t *ep, char *why,
                        size_t why_len);

/* Writes HOST:PORT, bracketing a host that contains ':'. Returns snprintf's result. */
int kvs__endpoint_format(char *out, size_t out_len, const char *host, const char *port);

/* ---- byte sizes ---- */

/* Parses a byte size: decimal digits, an optional fraction only with a unit ("1.5G"), and an
 * optional unit, case-insensitive: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB. Every unit is a
 * power of 1024 however it is written ("1GB" = "1G" = "1GiB" = 1073741824); a fraction of a
 * byte is dropped. No signs, spaces, exponents or hex; a value past UINT64_MAX is refused. */
int kvs__size_parse(const char *s, uint64_t *bytes_p, char *why, size_t why_len);

/* What kvs__size_parse accepts, for error messages and --help. */
#define KVS__SIZE_GRAMMAR "bytes, or a number with K, M, G or T (also KiB/KB, ...: powers of 1024)"

/* ---- copies that go around the CPU caches ---- */

/* Copies @len bytes as memcpy does, but with stores that go around the CPU's
 * caches (non-temporal, x86-64), fenced before it returns: for data this
 * thread will not read back soon, a copy into memory not in cache runs
 * 1.5-1.8x faster (streamcopy.c). Below KVS__STREAM_MIN_BYTES, and on CPUs
 * without such stores, it is memcpy. */
#define KVS__STREAM_MIN_BYTES 256u
void kvs__copy_stream(void *dst, const void *src, size_t len);

/* ---- transparent huge pages for shmem (memfds) ---- */

/* The word in brackets of a sysfs THP setting ("always [never] advise" -> "never"): 0, or -1
 * when there is none, it is not lowercase letters and '_', or does not fit @out_len. */
int kvs__thp_bracketed(const char *text, char *out, size_t out_len);
/* The kernel's shmem huge-page mode for 2 MiB pages (the per-size setting where it is not
 * "inherit", else the global one), or "unknown"; written to @out and returned. */
const char *kvs__shmem_thp(char *out, size_t out_len);
/* True for "never" and "deny": memfds get 4 KiB pages whatever we advise. */
bool kvs__shmem_thp_off(const char *mode);

/* ---- DNS names (Kubernetes object names) ---- */

/* The label must start with a letter (RFC 1035: what a Service name must be). */
#define KVS__DNS_1035 (1u << 0)

/* A DNS-1123 label: 1 to max (at most 63) of a-z, 0-9 and '-', starting and ending with a
 * letter or digit (with KVS__DNS_1035, starting with a letter): a namespace, a pool. */
bool kvs__dns_label(const char *s, size_t max, unsigned flags);

/* A DNS-1123 subdomain: at most 253 characters of '.'-separated labels as above (each of any
 * length): a Secret's name. */
bool kvs__dns_subdomain(const char *s);

/* ---- processes ---- */

typedef struct kvs__spawn {
    char *const *argv; /* argv[0] is the program's path (no PATH search) */
    /* The child's whole environment; NULL: this process's, changed by env_edits. */
    char *const *envp;
    /* With envp NULL: "NAME=VALUE" sets, "NAME" unsets, in the child only. The child calls
     * setenv after fork, so only a parent without other threads may use this. */
    const char *const *env_edits;
    int stdin_fd, stdout_fd, stderr_fd; /* become the child's 0, 1, 2; -1: inherited */
    bool die_with_parent;               /* SIGKILL when this process dies (PR_SET_PDEATHSIG) */
} kvs__spawn_t;

/* Starts sp->argv[0]: fork, then in the child the fds, the environment and exec. SIGPIPE is
 * reset to its default. Pass the other ends of pipes close-on-exec: only the three wired fds
 * survive the exec. Returns the child's pid, or -1 (errno from fork). An exec that fails
 * prints "exec PATH: why" on the child's stderr and exits 127. */
pid_t kvs__spawn(const kvs__spawn_t *sp);

/* ---- log levels ---- */

/* The one list of log-level names, lowest first; its index is the level (kvs_log_level_t). */
#define KVS__LOG_LEVELS(X) X(off) X(error) X(warn) X(info) X(debug) X(trace)

#define KVS__LOG_LEVEL_ENUM(name) KVS__LOG_LEVEL_##name,
/* KVS__LOG_LEVEL_COUNT: users with their own enum (kvs_log_level_t, the shim's) check it
 * against this with _Static_assert, so the lists cannot drift apart. */
enum { KVS__LOG_LEVELS(KVS__LOG_LEVEL_ENUM) KVS__LOG_LEVEL_COUNT };

/* What kvs__log_level_parse accepts, for error messages. */
#define KVS__LOG_LEVEL_NAMES "off, error, warn, info, debug or trace"

/* The name of level, or "?" when out of range. */
const char *kvs__log_level_name(int level);

/* Parses a log-level name (exact, lower case) into its index. */
int kvs__log_level_parse(const char *s, int *level_p);

#endif
