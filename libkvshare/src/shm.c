/* SPDX-License-Identifier: Apache-2.0 */
/* shm.c - memfd-backed memory, the holder's Unix-socket handover and the reader's mapped copy. */
#include "shm_int.h"

#include "copier_int.h"

#include "kvs_cuda.h"
#include "plan_int.h"
#include "pool_int.h"
#include "proto_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define SHM_MAGIC     KVS_SHM_MAGIC
#define SHM_VERSION   KVS_SHM_VERSION
#define SHM_MAX_IDS   KVS_SHM_MAX_IDS
#define SHM_ENTRY_LEN KVS_SHM_ENTRY_LEN
#define SHM_IO_MS     1000
#define SHM_MAX_MAPS  256u
#define SHM_MAX_CONNS 64u /* callers between greeting and request, at once */
/* Runs of adjacent blocks are copied as one memcpy up to this size. */
#define SHM_MAX_RUN (4u << 20)
/* CUDA devices a reader's destinations may lie on, per connection. */
#define SHM_MAX_DEVS 16u

void (*kvs__shm_test_mid_copy)(void);

/* ---------------------------------------------------------------------- */
/* The CUDA driver, for VMM allocations (opened on first need)              */
/* ---------------------------------------------------------------------- */
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;
static kvs_cuda_driver_t cu_drv;
static bool cu_ok;
static char cu_err[256];

static void cu_open(void)
{
    if (kvs_cuda_driver_open(NULL, &cu_drv, cu_err, sizeof(cu_err)) != KVS_OK)
        return;
    CUresult res = cu_drv.cuInit != NULL ? cu_drv.cuInit(0) : CUDA_ERROR_NOT_SUPPORTED;
    if (res != CUDA_SUCCESS || cu_drv.cuMemcpyDtoH_v2 == NULL || cu_drv.cuCtxGetCurrent == NULL ||
        cu_drv.cuCtxSetCurrent == NULL) {
        snprintf(cu_err, sizeof(cu_err), "cuInit: %s", kvs_cuda_result_string(&cu_drv, res));
        kvs_cuda_driver_close(&cu_drv);
        return;
    }
    cu_ok = true;
}

/* The process's driver (it stays open: mappings may outlive any context),
 * or NULL with *why_p saying why. */
static const kvs_cuda_driver_t *cu(const char **why_p)
{
    pthread_once(&cu_once, cu_open);
    *why_p = cu_err;
    return cu_ok ? &cu_drv : NULL;
}

/* ---------------------------------------------------------------------- */
/* Memory                                                                   */
/* ---------------------------------------------------------------------- */
typedef struct seg {
    uint8_t *base;
    size_t len;
    int fd; /* -1: anonymous (memfd_create refused) */
    struct seg *next;
} seg_t;

static pthread_mutex_t segs_lock = PTHREAD_MUTEX_INITIALIZER;
static seg_t *segs;

static size_t page_round(size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (len + pg - 1) / pg * pg;
}

void *kvs__shm_alloc(size_t len, const char *what)
{
    if (len == 0 || len > SIZE_MAX / 2)
        return NULL;
    seg_t *s = kvs__malloc(sizeof(*s)); /* also where tests inject failure */
    if (s == NULL)
        return NULL;
    size_t bytes = page_round(len);
    char name[64];
    snprintf(name, sizeof(name), "kvshare:%d:%s", (int)getpid(), what);
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    void *p = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, (off_t)bytes) == 0 &&
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        if (fd >= 0)
            close(fd);
        fd = -1;
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            kvs__free(s);
            return NULL;
        }
    }
    /* Huge pages where the kernel's shmem setting allows them ("advise"):
     * KV memory is large and dense, and 4 KiB pages cost a TLB entry each
     * (util/thp.c). Below 2 MiB there is nothing to gain. A hint only. */
#ifdef MADV_HUGEPAGE
    if (bytes >= (2u << 20))
        (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    s->base = p;
    s->len = bytes;
    s->fd = fd;
    pthread_mutex_lock(&segs_lock);
    s->next = segs;
    segs = s;
    pthread_mutex_unlock(&segs_lock);
    return p;
}

void kvs__shm_free(void *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&segs_lock);
    seg_t *s = NULL;
    for (seg_t **sp = &segs; *sp != NULL; sp = &(*sp)->next) {
        if ((*sp)->base == p) {
            s = *sp;
            *sp = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&segs_lock);
    if (s == NULL)
        return;
    munmap(s->base, s->len);
    if (s->fd >= 0)
        close(s->fd);
    kvs__free(s);
}

int kvs__shm_fd_of(const void *addr, size_t len, uint64_t *off_p)
{
    const uint8_t *a = addr;
    int fd = -1;
    pthread_mutex_lock(&segs_lock);
    for (seg_t *s = segs; s != NULL; s = s->next) {
        if (s->fd >= 0 && a >= s->base && len <= s->len && (size_t)(a - s->base) <= s->len - len) {
            fd = s->fd;
            *off_p = (uint64_t)(a - s->base);
            break;
        }
    }
    pthread_mutex_unlock(&segs_lock);
    return fd;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void kvs__shm_boot_id(uint8_t out[KVS_SHM_BOOT_ID_LEN])
{
    memset(out, 0, KVS_SHM_BOOT_ID_LEN);
    const char *t = getenv("KVSHARE_TEST_BOOT_ID");
    if (t != NULL && t[0] != '\0') {
        size_t n = strlen(t);
        memcpy(out, t, n < KVS_SHM_BOOT_ID_LEN ? n : KVS_SHM_BOOT_ID_LEN);
        return;
    }
    char buf[64] = "";
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    size_t k = 0;
    for (ssize_t i = 0; i + 1 < n && k < 2 * KVS_SHM_BOOT_ID_LEN; i++) {
        int hi = hexval(buf[i]);
        if (hi < 0)
            continue;
        int lo = hexval(buf[i + 1]);
        if (lo < 0)
            continue;
        out[k / 2] = (uint8_t)(hi << 4 | lo);
        k += 2;
        i++;
    }
}

/* ---------------------------------------------------------------------- */
/* Wire helpers                                                             */
/* ---------------------------------------------------------------------- */
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void shm_mac(const uint8_t *secret, size_t secret_len, bool open, const uint8_t *session,
                    const uint8_t *nonce, uint8_t *out)
{
    static const char role[] = "kvshare-shm";
    uint8_t msg[sizeof(role) - 1 + KVS_PROTO_SESSION_LEN + KVS_PROTO_NONCE_LEN];
    memcpy(msg, role, sizeof(role) - 1);
    memcpy(msg + sizeof(role) - 1, session, KVS_PROTO_SESSION_LEN);
    memcpy(msg + sizeof(role) - 1 + KVS_PROTO_SESSION_LEN, nonce, KVS_PROTO_NONCE_LEN);
    unsigned int n = 0;
    memset(out, 0, KVS_PROTO_MAC_LEN);
    if (!open)
        HMAC(EVP_sha256(), secret, (int)secret_len, msg, sizeof(msg), out, &n);
}

/* Sends @len bytes at @buf as one datagram with @n descriptors attached
 * (SCM_RIGHTS): the bytes sent, or -1. */
static ssize_t send_fds(int fd, const void *buf, size_t len, const int *fds, uint32_t n, int flags)
{
    struct iovec iov = {.iov_base = (void *)(uintptr_t)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * SHM_MAX_IDS)];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
    }
    return sendmsg(fd, &mh, flags | MSG_NOSIGNAL);
}

/* Receives one datagram into @buf (@cap bytes) and the descriptors that
 * came with it into @fds (SHM_MAX_IDS at most; *nfds_p of them, which the
 * caller closes whatever this returns). Its length, or -1 when nothing
 * came or it was cut short (more bytes or descriptors than fit). */
static ssize_t recv_fds(int fd, void *buf, size_t cap, int *fds, uint32_t *nfds_p, int flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * SHM_MAX_IDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n = recvmsg(fd, &mh, flags | MSG_CMSG_CLOEXEC);
    *nfds_p = 0;
    for (struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm != NULL;
         cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t j = 0; j < k && *nfds_p < SHM_MAX_IDS; j++)
            memcpy(&fds[(*nfds_p)++], CMSG_DATA(cm) + j * sizeof(int), sizeof(int));
    }
    return n <= 0 || (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) ? -1 : n;
}

/* Each blocking step on @fd (connect, send, recv) waits at most @ms. */
static void io_timeouts_ms(int fd, unsigned ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* ---------------------------------------------------------------------- */
/* Holder                                                                   */
/* ---------------------------------------------------------------------- */
_Static_assert(KVS_SHM_BOOT_ID_LEN == KVS_PROTO_BOOT_ID_LEN, "one boot id length");
_Static_assert(KVS_SHM_MAX_PATH == KVS_PROTO_MAX_SHM_PATH, "one socket path bound");

/* A caller between its greeting and its request. */
typedef struct sconn {
    int fd;
    pid_t pid;            /* SO_PEERCRED at accept */
    uint64_t deadline_ns; /* SHM_IO_MS after it was accepted */
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
} sconn_t;

struct kvs__shm_srv {
    int lfd, stopfd;
    pthread_t thread;
    char path[KVS_SHM_MAX_PATH + 1];
    const uint8_t *secret;
    size_t secret_len;
    bool open;
    kvs__shm_region_fn fn;
    kvs__shm_offer_fn offer_fn;
    kvs__shm_ctl_fn ctl_fn;
    void *arg;
    const kvs__logger_t *log;
    uint64_t refused;
    bool offer_said; /* an offered memfd that cannot be mapped was logged */
    /* Callers served at once, oldest first: one that stays silent holds
     * its slot until its deadline, never the thread. */
    sconn_t conns[SHM_MAX_CONNS];
    uint32_t nconns;
    bool cuda_said; /* a CUDA region that cannot be exported was logged */
};

static void srv_refuse(kvs__shm_srv_t *s, const char *why)
{
    if (s->refused++ < 10 || s->refused % 1000 == 0)
        kvs__warn(s->log, "shm: refused a mapping request on %s: %s (%llu so far)", s->path, why,
                  (unsigned long long)s->refused);
}

static void srv_drop(kvs__shm_srv_t *s, uint32_t i)
{
    close(s->conns[i].fd);
    memmove(&s->conns[i], &s->conns[i + 1], (s->nconns - i - 1) * sizeof(s->conns[0]));
    s->nconns--;
}

/* Whether @mac proves @session for caller @c's nonce (refused and logged
 * if not). */
static bool srv_proved(kvs__shm_srv_t *s, const sconn_t *c, const uint8_t *session,
                       const uint8_t *mac)
{
    uint8_t want[KVS_PROTO_MAC_LEN];
    shm_mac(s->secret, s->secret_len, s->open, session, c->nonce, want);
    bool ok = CRYPTO_memcmp(want, mac, sizeof(want)) == 0;
    OPENSSL_cleanse(want, sizeof(want));
    if (!ok)
        srv_refuse(s, "the session proof does not hold");
    return ok;
}

/* A POSIX fd for the CUDA VMM allocation under region @id (the caller
 * closes it), or -1: the region stays on the transport, logged once. */
static int srv_export(kvs__shm_srv_t *s, uint32_t id, uint64_t base, uint64_t len,
                      kvs__shm_entry_t *e)
{
    const char *why = NULL;
    const kvs_cuda_driver_t *drv = cu(&why);
    int fd = -1;
    CUresult res = CUDA_SUCCESS;
    kvs_status_t st = drv == NULL ? KVS_ERR_UNSUPPORTED
                                  : kvs_cuda_vmm_export(drv, (const void *)(uintptr_t)base,
                                                        (size_t)len, &fd, &e->off, &e->size, &res);
    if (st == KVS_OK)
        return fd;
    if (drv != NULL)
        why = kvs_cuda_result_string(drv, res);
    if (!s->cuda_said) {
        s->cuda_said = true;
        kvs__warn(s->log,
                  "shm: CUDA region %u (%#llx+%llu) cannot be exported to same-host readers "
                  "(%s; only cuMemCreate allocations that request "
                  "CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR can): it moves over the transport",
                  id, (unsigned long long)base, (unsigned long long)len, why);
    } else {
        kvs__debug(s->log, "shm: CUDA region %u cannot be exported (%s)", id, why);
    }
    return -1;
}

/* A new caller (non-blocking): its uid, then the greeting with a fresh
 * nonce. A full table pushes out the oldest caller, so silent connections
 * cannot lock out one that completes its exchange. */
static void srv_greet(kvs__shm_srv_t *s, int fd)
{
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
        (cr.uid != geteuid() && cr.uid != 0)) {
        srv_refuse(s, "peer runs as another user");
        close(fd);
        return;
    }
    uint8_t hello[8 + KVS_PROTO_NONCE_LEN];
    put32(hello, SHM_MAGIC);
    put32(hello + 4, SHM_VERSION);
    /* A fresh socket's buffer takes one small datagram: MSG_DONTWAIT never waits here. */
    if (RAND_bytes(hello + 8, KVS_PROTO_NONCE_LEN) != 1 ||
        send(fd, hello, sizeof(hello), MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(hello)) {
        close(fd);
        return;
    }
    if (s->nconns == SHM_MAX_CONNS) {
        srv_refuse(s, "too many callers at once (the oldest dropped)");
        srv_drop(s, 0);
    }
    sconn_t *c = &s->conns[s->nconns++];
    c->fd = fd;
    c->pid = cr.pid;
    c->deadline_ns = kvs__now_ns() + (uint64_t)SHM_IO_MS * 1000000u;
    memcpy(c->nonce, hello + 8, sizeof(c->nonce));
}

/* A region or identify request of @n bytes from caller @c, and the answer:
 * one memfd per region, or nothing. */
static void srv_answer_regions(kvs__shm_srv_t *s, const sconn_t *c, const uint8_t *req, size_t n)
{
    int fd = c->fd;
    const size_t fixed = 4 + KVS_PROTO_SESSION_LEN + KVS_PROTO_MAC_LEN + 4;
    if (n < fixed || get32(req) != SHM_MAGIC) {
        srv_refuse(s, "malformed request");
        return;
    }
    const uint8_t *session = req + 4, *mac = req + 4 + KVS_PROTO_SESSION_LEN;
    uint32_t nids = get32(req + fixed - 4);
    if (nids > SHM_MAX_IDS || n != fixed + 4 * (size_t)nids) {
        srv_refuse(s, "malformed request");
        return;
    }
    if (!srv_proved(s, c, session, mac))
        return;
    uint8_t rep[8 + SHM_ENTRY_LEN * SHM_MAX_IDS];
    int fds[SHM_MAX_IDS];
    bool owned[SHM_MAX_IDS]; /* exported for this answer: closed after it */
    uint32_t nfds = 0;
    put32(rep, SHM_MAGIC);
    put32(rep + 4, nids);
    uint64_t ib, il;
    if (nids == 0 && s->fn(s->arg, session, c->pid, KVS_SHM_IDENTIFY, &ib, &il, NULL) < 0) {
        srv_refuse(s, "no such session");
        return;
    }
    for (uint32_t i = 0; i < nids; i++) {
        kvs__shm_entry_t e = {.status = KVS_ERR_NOT_FOUND};
        kvs_mem_type_t type = KVS_MEM_HOST;
        const uint32_t id = get32(req + fixed + 4 * i);
        int r = s->fn(s->arg, session, c->pid, id, &e.base, &e.len, &type);
        if (r < 0) {
            srv_refuse(s, "no such session");
            goto close_owned;
        }
        int mfd = -1;
        bool own = false;
        if (r > 0 && type == KVS_MEM_CUDA) {
            mfd = srv_export(s, id, e.base, e.len, &e);
            own = mfd >= 0;
            e.kind = KVS_SHM_KIND_CUDA_VMM;
        } else if (r > 0) {
            mfd = kvs__shm_fd_of((const void *)(uintptr_t)e.base, (size_t)e.len, &e.off);
            if (mfd >= 0) {
                struct stat st;
                e.size = fstat(mfd, &st) == 0 ? (uint64_t)st.st_size : 0;
            }
            e.kind = KVS_SHM_KIND_MEMFD;
        }
        if (mfd >= 0) {
            e.status = 0;
            owned[nfds] = own;
            fds[nfds++] = mfd;
        } else {
            e.kind = 0;
            e.off = e.size = 0;
        }
        kvs__shm_put_entry(rep + 8 + SHM_ENTRY_LEN * i, &e);
    }
    /* The caller sent one datagram and reads one: its buffer is empty, the
     * answer (under 3 KiB) fits; a caller that cannot take it loses it. */
    if (send_fds(fd, rep, 8 + SHM_ENTRY_LEN * (size_t)nids, fds, nfds, MSG_DONTWAIT) < 0)
        kvs__debug(s->log, "shm: sendmsg: %s", strerror(errno));
close_owned:
    for (uint32_t i = 0; i < nfds; i++)
        if (owned[i])
            close(fds[i]);
}

/* Maps [off, off + len) of memfd @fd read-only (the region @base.. of the
 * other process): only a memfd sealed against shrinking that holds all of
 * it, so no read of the mapping can fault, whatever the other side does
 * with it afterwards. NULL with the mapping in *map_p and *map_len_p and the
 * region's first byte in *at_p, or why not. Reader and node both map so. */
static const char *map_memfd(int fd, uint64_t base, uint64_t len, uint64_t off, void **map_p,
                             size_t *map_len_p, const uint8_t **at_p)
{
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    if (seals < 0)
        return "not a memfd";
    if (!(seals & F_SEAL_SHRINK))
        return "not sealed against shrinking";
    if (fstat(fd, &st) != 0 || len == 0 || off > (uint64_t)st.st_size ||
        len > (uint64_t)st.st_size - off || base + len < base || len > SIZE_MAX - pg)
        return "the region lies outside the memfd";
    uint64_t aoff = off / pg * pg;
    size_t map_len = (size_t)(off - aoff + len);
    void *p = mmap(NULL, map_len, PROT_READ, MAP_SHARED, fd, (off_t)aoff);
    if (p == MAP_FAILED)
        return strerror(errno);
    *map_p = p;
    *map_len_p = map_len;
    *at_p = (const uint8_t *)p + (off - aoff);
    return NULL;
}

kvs__shm_pmap_t *kvs__shm_pmap_open(int fd, const kvs__shm_offer_t *o, const char **why_p)
{
    kvs__shm_pmap_t *m = kvs__calloc(1, sizeof(*m));
    if (m == NULL) {
        *why_p = "out of memory";
        return NULL;
    }
    m->id = o->id;
    m->base = o->base;
    m->len = o->len;
    if (o->kind == KVS_SHM_KIND_CUDA_VMM) {
        /* Imported read-only, as a reader imports a holder's allocation. */
        const kvs_cuda_driver_t *drv = cu(why_p);
        CUresult res = CUDA_SUCCESS;
        m->cuda = kvs__calloc(1, sizeof(*m->cuda));
        if (drv == NULL || m->cuda == NULL || o->off > o->size || o->len > o->size - o->off ||
            kvs_cuda_vmm_import(drv, fd, o->size, m->cuda, &res) != KVS_OK) {
            if (drv != NULL && m->cuda != NULL)
                *why_p = res != CUDA_SUCCESS ? kvs_cuda_result_string(drv, res)
                                             : "the region lies outside the allocation";
            else if (drv != NULL)
                *why_p = "out of memory";
            kvs__free(m->cuda);
            kvs__free(m);
            return NULL;
        }
        m->at = (const uint8_t *)(uintptr_t)m->cuda->va + o->off;
        return m;
    }
    if ((*why_p = map_memfd(fd, o->base, o->len, o->off, &m->map, &m->map_len, &m->at)) != NULL) {
        kvs__free(m);
        return NULL;
    }
    return m;
}

bool kvs__shm_pmap_copy(const kvs__shm_pmap_t *m, void *dst, const uint8_t *src, size_t len,
                        const char **why_p)
{
    if (m->cuda == NULL) {
        memcpy(dst, src, len);
        return true;
    }
    const char *unused = NULL;
    const kvs_cuda_driver_t *drv = cu(&unused); /* non-NULL: it imported @m */
    CUcontext prev = NULL;
    CUresult res = drv->cuCtxGetCurrent(&prev);
    bool swap = res == CUDA_SUCCESS && prev != m->cuda->ctx;
    if (swap)
        res = drv->cuCtxSetCurrent(m->cuda->ctx);
    if (res == CUDA_SUCCESS)
        res = drv->cuMemcpyDtoH_v2(dst, (CUdeviceptr)(uintptr_t)src, len);
    if (swap)
        (void)drv->cuCtxSetCurrent(prev);
    if (res != CUDA_SUCCESS)
        *why_p = kvs_cuda_result_string(drv, res);
    return res == CUDA_SUCCESS;
}

void kvs__shm_pmap_free(kvs__shm_pmap_t *m)
{
    if (m == NULL)
        return;
    if (m->cuda != NULL) {
        const char *why = NULL;
        kvs_cuda_vmm_unmap(cu(&why), m->cuda);
        kvs__free(m->cuda);
    } else {
        munmap(m->map, m->map_len);
    }
    kvs__free(m);
}

/* A pool client's offer: it proves the session as a region request does,
 * counts as its identify request, and each region it offers that maps
 * (kvs__shm_pmap_open) goes to s->offer_fn, which keeps it for that
 * connection; the answer says, per region, whether it was kept. */
static void srv_answer_offer(kvs__shm_srv_t *s, const sconn_t *c, const uint8_t *req, size_t len,
                             const int *fds, uint32_t nfds)
{
    kvs__shm_offer_t offers[SHM_MAX_IDS];
    const uint8_t *session = NULL, *mac = NULL;
    const char *why = NULL;
    uint32_t n = 0;
    if (kvs__shm_parse_offer(req, len, nfds, &session, &mac, offers, &n, &why) != KVS_OK) {
        char msg[96];
        snprintf(msg, sizeof(msg), "malformed offer (%s)", why);
        srv_refuse(s, msg);
        return;
    }
    if (!srv_proved(s, c, session, mac))
        return;
    uint64_t ib, il;
    if (s->fn(s->arg, session, c->pid, KVS_SHM_IDENTIFY, &ib, &il, NULL) < 0) {
        srv_refuse(s, "no such session");
        return;
    }
    uint8_t rep[8 + 4 * SHM_MAX_IDS];
    put32(rep, SHM_MAGIC);
    put32(rep + 4, n);
    uint32_t used = 0; /* descriptors: one per offered entry, in order */
    for (uint32_t i = 0; i < n; i++) {
        int32_t status = KVS_ERR_UNSUPPORTED; /* not kept: no pool node, or a full table */
        if (offers[i].kind == KVS_SHM_KIND_WITHDRAW) {
            bool gone = s->offer_fn != NULL && s->offer_fn(s->arg, session, offers[i].id, NULL);
            put32(rep + 8 + 4 * i, (uint32_t)(gone ? 0 : KVS_ERR_NOT_FOUND));
            continue;
        }
        kvs__shm_pmap_t *m = kvs__shm_pmap_open(fds[used++], &offers[i], &why);
        if (m == NULL) {
            if (!s->offer_said) {
                s->offer_said = true;
                kvs__warn(s->log,
                          "shm: a client offered region %u (%#llx+%llu, %s) that cannot be "
                          "mapped (%s): its puts of it are read another way, or refused",
                          offers[i].id, (unsigned long long)offers[i].base,
                          (unsigned long long)offers[i].len,
                          offers[i].kind == KVS_SHM_KIND_CUDA_VMM ? "CUDA" : "memfd", why);
            }
        } else if (s->offer_fn != NULL && s->offer_fn(s->arg, session, offers[i].id, m)) {
            status = 0;
        } else {
            kvs__shm_pmap_free(m);
        }
        put32(rep + 8 + 4 * i, (uint32_t)status);
    }
    if (send(c->fd, rep, 8 + 4 * (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        kvs__debug(s->log, "shm: send: %s", strerror(errno));
}

/* A reader's request for a control channel: proved, then handed to
 * s->ctl_fn, which keeps a duplicate of the socket; answered either way. */
static void srv_answer_ctl(kvs__shm_srv_t *s, const sconn_t *c, const uint8_t *req, size_t n)
{
    if (n != KVS_SHM_CTL_LEN) {
        srv_refuse(s, "malformed control-channel request");
        return;
    }
    const uint8_t *session = req + 4, *mac = req + 4 + KVS_PROTO_SESSION_LEN;
    if (!srv_proved(s, c, session, mac))
        return;
    int32_t status = KVS_OK;
    if (s->ctl_fn == NULL || !s->ctl_fn(s->arg, session, c->fd))
        status = KVS_ERR_NOT_FOUND; /* no such session, or it has a channel */
    uint8_t rep[8];
    put32(rep, KVS_SHM_CTL_MAGIC);
    put32(rep + 4, (uint32_t)status);
    if (send(c->fd, rep, sizeof(rep), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        kvs__debug(s->log, "shm: send: %s", strerror(errno));
}

/* The request of caller @c, which has one to read (or hung up): a region
 * request or an identify request (KVSM), or a pool client's offer of its
 * memory (KVSP). Descriptors a caller sends are closed here, whatever
 * became of the request (an offer's mappings hold their own references). */
static void srv_answer(kvs__shm_srv_t *s, const sconn_t *c)
{
    uint8_t req[KVS_SHM_OFFER_FIXED + KVS_SHM_OFFER_ENTRY_LEN * SHM_MAX_IDS + 1];
    int fds[SHM_MAX_IDS];
    uint32_t nfds = 0;
    ssize_t n = recv_fds(c->fd, req, sizeof(req), fds, &nfds, MSG_DONTWAIT);
    if (n < 0)
        srv_refuse(s, "malformed request");
    else if (n >= 4 && get32(req) == KVS_SHM_OFFER_MAGIC)
        srv_answer_offer(s, c, req, (size_t)n, fds, nfds);
    else if (nfds > 0)
        srv_refuse(s, "descriptors with a region request");
    else if (n >= 4 && get32(req) == KVS_SHM_CTL_MAGIC)
        srv_answer_ctl(s, c, req, (size_t)n);
    else
        srv_answer_regions(s, c, req, (size_t)n);
    for (uint32_t i = 0; i < nfds; i++)
        close(fds[i]);
}

/* One thread polls the listener and every caller between greeting and
 * request; each caller has SHM_IO_MS from its accept to send its request. */
static void *srv_thread(void *arg)
{
    kvs__shm_srv_t *s = arg;
    struct pollfd p[2 + SHM_MAX_CONNS];
    for (;;) {
        p[0] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = s->stopfd, .events = POLLIN};
        const uint32_t polled = s->nconns;
        int timeout = -1;
        const uint64_t now = kvs__now_ns();
        for (uint32_t i = 0; i < polled; i++) {
            p[2 + i] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
            uint64_t left = s->conns[i].deadline_ns > now ? s->conns[i].deadline_ns - now : 0;
            int ms = (int)((left + 999999u) / 1000000u);
            if (timeout < 0 || ms < timeout)
                timeout = ms;
        }
        if (poll(p, 2 + polled, timeout) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        /* Callers first (their slots move as others go), newest to oldest. */
        const uint64_t t = kvs__now_ns();
        for (uint32_t i = polled; i-- > 0;) {
            if (p[2 + i].revents != 0) {
                srv_answer(s, &s->conns[i]);
                srv_drop(s, i);
            } else if (s->conns[i].deadline_ns <= t) {
                srv_refuse(s, "no request within the deadline");
                srv_drop(s, i);
            }
        }
        if (p[0].revents & POLLIN) {
            int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0)
                srv_greet(s, fd);
        }
    }
    while (s->nconns > 0)
        srv_drop(s, s->nconns - 1);
    return NULL;
}

/* @path as a socket address: "@name" is a Linux abstract socket (no file, gone
 * with its last descriptor), anything else a file. Returns the address length,
 * or 0 when @path does not fit. */
static socklen_t sock_addr(const char *path, struct sockaddr_un *sa)
{
    size_t n = strlen(path);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof(sa->sun_path))
        return 0;
    memcpy(sa->sun_path, path, n);
    if (path[0] == '@') {
        sa->sun_path[0] = '\0';
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    }
    return (socklen_t)sizeof(*sa);
}

/* Sockets of holders that died without unlinking theirs (killed, OOM): nobody accepts on
 * them any more (connect says ECONNREFUSED), so they go; a hostPath directory would
 * otherwise collect one per crash. */
static void sweep_dead(const char *dir, const kvs__logger_t *log)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    unsigned swept = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "kvshare-", 8) != 0 || n < 13 ||
            strcmp(e->d_name + n - 5, ".sock") != 0)
            continue;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, e->d_name) >=
            sizeof(sa.sun_path))
            continue;
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            break;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno == ECONNREFUSED &&
            unlink(sa.sun_path) == 0)
            swept++;
        close(fd);
    }
    closedir(d);
    if (swept > 0)
        kvs__info(log, "shm: removed %u sockets of holders that are gone from %s", swept, dir);
}

kvs_status_t kvs__shm_srv_start(const char *dir, const uint8_t *secret, size_t secret_len,
                                bool open, kvs__shm_region_fn fn, kvs__shm_offer_fn offer_fn,
                                kvs__shm_ctl_fn ctl_fn, void *arg, const kvs__logger_t *log,
                                kvs__shm_srv_t **srv_p, char *err, size_t errlen)
{
    kvs__shm_srv_t *s = kvs__calloc(1, sizeof(*s));
    if (s == NULL)
        return KVS_ERR_NO_MEMORY;
    s->lfd = s->stopfd = -1;
    s->secret = secret;
    s->secret_len = secret_len;
    s->open = open;
    s->fn = fn;
    s->offer_fn = offer_fn;
    s->ctl_fn = ctl_fn;
    s->arg = arg;
    s->log = log;
    uint8_t rnd[4] = {0};
    (void)RAND_bytes(rnd, sizeof(rnd));
    /* Without a directory the socket is abstract: nothing on disk to leave
     * behind when a holder is killed, reachable by every process in this
     * network namespace (a host, or one pod). Pods with their own namespaces
     * share a hostPath directory instead (KVSHARE_HOST_SOCKET_DIR). */
    const bool abstract = dir == NULL || dir[0] == '\0';
    int n = abstract ? snprintf(s->path, sizeof(s->path), "@kvshare-%d-%02x%02x%02x%02x",
                                (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3])
                     : snprintf(s->path, sizeof(s->path), "%s/kvshare-%d-%02x%02x%02x%02x.sock",
                                dir, (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3]);
    struct sockaddr_un sa;
    socklen_t salen = n < 0 || (size_t)n >= sizeof(s->path) ? 0 : sock_addr(s->path, &sa);
    if (salen == 0) {
        snprintf(err, errlen, "KVSHARE_HOST_SOCKET_DIR='%s': too long for a Unix socket path", dir);
        kvs__free(s);
        return KVS_ERR_CONFIG;
    }
    if (!abstract)
        sweep_dead(dir, log);
    s->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    mode_t old = umask(077); /* the socket file: this user only */
    int rc = s->lfd < 0 ? -1 : bind(s->lfd, (struct sockaddr *)&sa, salen);
    umask(old);
    if (rc != 0 || listen(s->lfd, 64) != 0) {
        snprintf(err, errlen, "KVSHARE_HOST_SOCKET_DIR: %s: %s", s->path, strerror(errno));
        goto fail;
    }
    s->stopfd = eventfd(0, EFD_CLOEXEC);
    if (s->stopfd < 0 || pthread_create(&s->thread, NULL, srv_thread, s) != 0) {
        snprintf(err, errlen, "shm server: %s", strerror(errno));
        if (s->path[0] != '@')
            unlink(s->path);
        goto fail;
    }
    kvs__info(log, "shm: same-host peers map memory through %s", s->path);
    *srv_p = s;
    return KVS_OK;
fail:
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->stopfd >= 0)
        close(s->stopfd);
    kvs__free(s);
    return KVS_ERR_IO;
}

void kvs__shm_srv_stop(kvs__shm_srv_t *s)
{
    if (s == NULL)
        return;
    uint64_t one = 1;
    if (write(s->stopfd, &one, sizeof(one)) != sizeof(one))
        kvs__warn(s->log, "shm: cannot stop the server thread: %s", strerror(errno));
    pthread_join(s->thread, NULL);
    close(s->lfd);
    close(s->stopfd);
    if (s->path[0] != '@')
        unlink(s->path);
    kvs__free(s);
}

const char *kvs__shm_srv_path(const kvs__shm_srv_t *s)
{
    return s->path;
}

void kvs__shm_srv_put_offer(const kvs__shm_srv_t *s, kvs__buf_t *b)
{
    uint8_t bid[KVS_SHM_BOOT_ID_LEN];
    kvs__shm_boot_id(bid);
    size_t n = strlen(s->path);
    kvs__buf_put(b, bid, sizeof(bid));
    kvs__buf_u16(b, (uint16_t)n);
    kvs__buf_put(b, s->path, n);
}

/* ---------------------------------------------------------------------- */
/* Reader                                                                   */
/* ---------------------------------------------------------------------- */
typedef struct map {
    uint32_t id;
    bool ok;   /* false: the holder cannot share it (the transport reads it) */
    bool said; /* that it is not shared was logged */
    bool gone; /* the holder no longer has the region: unmapped once no copy reads it */
    uint64_t base, len;
    const uint8_t *at; /* where base is mapped (a device address for CUDA) */
    void *map;         /* a memfd's mapping, or NULL */
    size_t map_len;
    kvs_cuda_vmm_map_t vm; /* a CUDA VMM allocation's mapping (vm.va != 0) */
} map_t;

/* A device that holds destination memory: its primary context (retained)
 * and our own non-blocking stream in it, made on first need and kept for
 * the connection. Copies into the device run on that stream, which is
 * synchronised before the generations are checked again. */
typedef struct dst_dev {
    int ordinal;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
} dst_dev_t;

struct kvs__shm_peer {
    pthread_mutex_t lock;
    char path[KVS_SHM_MAX_PATH + 1];
    char peer[128];
    uint8_t session[KVS_PROTO_SESSION_LEN];
    const uint8_t *secret;
    size_t secret_len;
    bool open;
    bool broken;                  /* the handover failed: the transport for good */
    bool cu_failed;               /* a CUDA copy failed: the transport for good, logged */
    bool dst_failed;              /* a CUDA destination cannot be set up: logged */
    dst_dev_t devs[SHM_MAX_DEVS]; /* devices of CUDA destinations (lock held) */
    uint32_t ndevs;
    bool identify_tried, identified; /* kvs__shm_peer_offer */
    bool offer_refused;              /* the node took no offer: identify only */
    bool withdraw_failed; /* a withdrawal went unanswered: none tried again (a hung node would
                             hold up each of the engine's frees for the I/O timeouts) */
    bool identify_plain;  /* the plain identify request was tried */
    bool index_tried;     /* kvs__shm_peer_index asked for the holder's index */
    const kvs__logger_t *log;
    map_t maps[SHM_MAX_MAPS];
    uint32_t nmaps;
    uint32_t copying;      /* copies reading the mappings outside the lock */
    kvs__copier_t *copier; /* the context's copy helpers (the peer plane's), or NULL */
    bool stream;           /* KVSHARE_COPY_STREAM: large copies store around the caches */
};

void kvs__shm_peer_set_copier(kvs__shm_peer_t *sp, struct kvs__copier *cp, bool stream)
{
    if (sp != NULL) {
        sp->copier = cp;
        sp->stream = stream;
    }
}

kvs__shm_peer_t *kvs__shm_peer_new(const uint8_t *boot_id, const char *path, size_t path_len,
                                   const uint8_t *session, const uint8_t *secret, size_t secret_len,
                                   bool open, const char *peer, const kvs__logger_t *log)
{
    uint8_t ours[KVS_SHM_BOOT_ID_LEN];
    kvs__shm_boot_id(ours);
    if (memcmp(ours, boot_id, sizeof(ours)) != 0) {
        kvs__debug(log, "peer %s: on another host (boot id differs): transport only", peer);
        return NULL;
    }
    if (path_len == 0 || path_len > KVS_SHM_MAX_PATH || memchr(path, '\0', path_len) != NULL)
        return NULL;
    kvs__shm_peer_t *sp = kvs__calloc(1, sizeof(*sp));
    if (sp == NULL)
        return NULL;
    pthread_mutex_init(&sp->lock, NULL);
    memcpy(sp->path, path, path_len);
    snprintf(sp->peer, sizeof(sp->peer), "%s", peer);
    memcpy(sp->session, session, sizeof(sp->session));
    sp->secret = secret;
    sp->secret_len = secret_len;
    sp->open = open;
    sp->log = log;
    kvs__debug(log, "peer %s: same host; memory through %s", peer, sp->path);
    return sp;
}

static bool attach(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n);
static int dial(kvs__shm_peer_t *sp, uint8_t *nonce, const char **why_p);

/* A request's first bytes: @magic, our session and its proof over the
 * holder's @nonce (4 + KVS_PROTO_SESSION_LEN + KVS_PROTO_MAC_LEN bytes). */
static void put_proof(const kvs__shm_peer_t *sp, uint32_t magic, const uint8_t *nonce, uint8_t *out)
{
    put32(out, magic);
    memcpy(out + 4, sp->session, KVS_PROTO_SESSION_LEN);
    shm_mac(sp->secret, sp->secret_len, sp->open, sp->session, nonce,
            out + 4 + KVS_PROTO_SESSION_LEN);
}

/* Sends an offer of @n entries (@nfds descriptors in @fds, one per offered
 * region; withdrawals have none) and reads the node's answer into @status
 * (lock held): true when the node answered. */
static bool offer_xchg(kvs__shm_peer_t *sp, const kvs__shm_offer_t *regions, const int *fds,
                       uint32_t nfds, uint32_t n, int32_t *status)
{
    uint8_t nonce[KVS_PROTO_NONCE_LEN], mac[KVS_PROTO_MAC_LEN];
    uint8_t req[KVS_SHM_OFFER_FIXED + KVS_SHM_OFFER_ENTRY_LEN * SHM_MAX_IDS];
    const char *why = NULL;
    int fd = dial(sp, nonce, &why);
    if (fd < 0)
        return false;
    shm_mac(sp->secret, sp->secret_len, sp->open, sp->session, nonce, mac);
    kvs__shm_put_offer(req, sp->session, mac, regions, n);
    const size_t len = KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n;
    uint8_t rep[8 + 4 * SHM_MAX_IDS + 1];
    ssize_t got = -1;
    if (send_fds(fd, req, len, fds, nfds, 0) == (ssize_t)len)
        got = recv(fd, rep, sizeof(rep), 0);
    close(fd);
    return got > 0 && kvs__shm_parse_offer_reply(rep, (size_t)got, n, status, NULL) == KVS_OK;
}

/* The descriptor that holds region @r ({id, kind, base, len}), with its
 * offset and object size written into @r; -1 when it has none. *own_p: the
 * descriptor is ours to close (an export), not the memfd registry's. */
static int offer_fd(kvs__shm_peer_t *sp, kvs__shm_offer_t *r, bool *own_p)
{
    *own_p = false;
    if (r->kind == KVS_SHM_KIND_CUDA_VMM) {
        const char *why = NULL;
        const kvs_cuda_driver_t *drv = cu(&why);
        CUresult res = CUDA_SUCCESS;
        int fd = -1;
        if (drv != NULL &&
            kvs_cuda_vmm_export(drv, (const void *)(uintptr_t)r->base, (size_t)r->len, &fd, &r->off,
                                &r->size, &res) == KVS_OK) {
            *own_p = true;
            return fd;
        }
        kvs__info(sp->log,
                  "peer %s: our CUDA region %u cannot be offered to the node (%s; only "
                  "cuMemCreate allocations that request CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR "
                  "export)",
                  sp->peer, r->id, drv != NULL ? kvs_cuda_result_string(drv, res) : why);
        return -1;
    }
    int fd = kvs__shm_fd_of((const void *)(uintptr_t)r->base, (size_t)r->len, &r->off);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return -1; /* not kvshare's memory: the node reads it with process_vm_readv */
    r->size = (uint64_t)st.st_size;
    return fd;
}

bool kvs__shm_peer_offer(kvs__shm_peer_t *sp, const kvs__shm_offer_t *regions, uint32_t n,
                         bool *mapped)
{
    kvs__shm_offer_t fresh[SHM_MAX_IDS];
    int fds[SHM_MAX_IDS];
    uint32_t at[SHM_MAX_IDS], nf = 0;
    bool own[SHM_MAX_IDS];
    for (uint32_t i = 0; i < n; i++)
        mapped[i] = false;
    pthread_mutex_lock(&sp->lock);
    for (uint32_t i = 0; i < n && nf < SHM_MAX_IDS && !sp->offer_refused; i++) {
        kvs__shm_offer_t r = regions[i];
        int fd = offer_fd(sp, &r, &own[nf]);
        if (fd < 0)
            continue;
        at[nf] = i;
        fresh[nf] = r;
        fds[nf++] = fd;
    }
    if (!sp->offer_refused && (nf > 0 || !sp->identify_tried)) {
        int32_t status[SHM_MAX_IDS];
        sp->identify_tried = true;
        if (offer_xchg(sp, fresh, fds, nf, nf, status)) {
            sp->identified = true;
            for (uint32_t k = 0; k < nf; k++)
                mapped[at[k]] = status[k] == 0;
        } else {
            sp->offer_refused = true;
            kvs__info(sp->log,
                      "peer %s: the node took no offer of our memory (a node that predates "
                      "offers, or see its log): it reads our puts another way",
                      sp->peer);
        }
    }
    for (uint32_t k = 0; k < nf; k++)
        if (own[k])
            close(fds[k]);
    if (!sp->identified && sp->offer_refused && !sp->identify_plain) {
        sp->identify_plain = true;
        sp->identified = attach(sp, NULL, 0);
    }
    bool ok = sp->identified;
    pthread_mutex_unlock(&sp->lock);
    return ok;
}

bool kvs__shm_peer_withdraw(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n)
{
    if (sp == NULL || n == 0 || n > SHM_MAX_IDS)
        return false;
    kvs__shm_offer_t w[SHM_MAX_IDS];
    int32_t status[SHM_MAX_IDS];
    for (uint32_t i = 0; i < n; i++)
        w[i] = (kvs__shm_offer_t){.id = ids[i], .kind = KVS_SHM_KIND_WITHDRAW};
    pthread_mutex_lock(&sp->lock);
    const bool tried = !sp->withdraw_failed;
    bool ok = tried && offer_xchg(sp, w, NULL, 0, n, status);
    if (tried && !ok)
        sp->withdraw_failed = true;
    pthread_mutex_unlock(&sp->lock);
    if (tried && !ok)
        kvs__warn(sp->log,
                  "peer %s: the node did not confirm it let go of our region %u%s (an older "
                  "node, or see its log): it may keep our freed memory mapped until this "
                  "connection ends; no more withdrawals are sent to it",
                  sp->peer, ids[0], n > 1 ? " and others" : "");
    else if (ok)
        kvs__debug(sp->log, "peer %s: the node let go of %u of our regions", sp->peer, n);
    return ok;
}

static void unmap_one(map_t *m)
{
    const char *why = NULL;
    if (m->map != NULL)
        munmap(m->map, m->map_len);
    if (m->vm.va != 0)
        kvs_cuda_vmm_unmap(cu(&why), &m->vm);
}

void kvs__shm_peer_free(kvs__shm_peer_t *sp)
{
    if (sp == NULL)
        return;
    const char *why = NULL;
    for (uint32_t i = 0; i < sp->nmaps; i++)
        unmap_one(&sp->maps[i]);
    for (uint32_t i = 0; i < sp->ndevs; i++) {
        const kvs_cuda_driver_t *drv = cu(&why); /* non-NULL: it made the stream */
        (void)drv->cuStreamDestroy_v2(sp->devs[i].stream);
        (void)drv->cuDevicePrimaryCtxRelease_v2(sp->devs[i].dev);
    }
    pthread_mutex_destroy(&sp->lock);
    kvs__free(sp);
}

static map_t *map_find(kvs__shm_peer_t *sp, uint32_t id)
{
    for (uint32_t i = 0; i < sp->nmaps; i++)
        if (sp->maps[i].id == id && !sp->maps[i].gone)
            return &sp->maps[i];
    return NULL;
}

/* Unmaps the regions marked gone (lock held, no copy running); their slots
 * are reused, so a holder that keeps replacing its memory never fills the
 * table. */
static void reap(kvs__shm_peer_t *sp)
{
    for (uint32_t i = 0; i < sp->nmaps;) {
        if (!sp->maps[i].gone) {
            i++;
            continue;
        }
        unmap_one(&sp->maps[i]);
        sp->maps[i] = sp->maps[--sp->nmaps];
    }
}

void kvs__shm_peer_keep_only(kvs__shm_peer_t *sp, const uint8_t *regions, uint32_t n)
{
    if (sp == NULL)
        return;
    pthread_mutex_lock(&sp->lock);
    uint32_t dropped = 0;
    for (uint32_t i = 0; i < sp->nmaps; i++) {
        map_t *m = &sp->maps[i];
        /* The index is no region of the table; it lasts as long as we do. */
        if (!m->gone && m->id != KVS_SHM_INDEX_ID && !kvs__proto_regions_have(regions, n, m->id)) {
            m->gone = true;
            dropped++;
        }
    }
    if (dropped > 0) {
        kvs__debug(sp->log, "peer %s: %u mapped regions of the holder are gone: unmapping them%s",
                   sp->peer, dropped, sp->copying > 0 ? " after the copies reading them" : "");
        if (sp->copying == 0)
            reap(sp);
    }
    pthread_mutex_unlock(&sp->lock);
}

/* The end of a copy that read the mappings: the last one out unmaps what
 * went while it ran. */
static void copy_end(kvs__shm_peer_t *sp)
{
    pthread_mutex_lock(&sp->lock);
    if (--sp->copying == 0)
        reap(sp);
    pthread_mutex_unlock(&sp->lock);
}

/* Maps one received fd for entry @e; false leaves nothing mapped. */
static bool map_fd(map_t *m, int fd, uint64_t off)
{
    m->ok = map_memfd(fd, m->base, m->len, off, &m->map, &m->map_len, &m->at) == NULL;
    return m->ok;
}

/* Imports the CUDA VMM allocation behind one received fd for entry @e and
 * maps it read-only; false leaves nothing mapped (logged by the caller). */
static bool map_cuda(map_t *m, int fd, const kvs__shm_entry_t *e, const char **why_p)
{
    const kvs_cuda_driver_t *drv = cu(why_p);
    CUresult res = CUDA_SUCCESS;
    if (drv == NULL)
        return false;
    if (kvs_cuda_vmm_import(drv, fd, e->size, &m->vm, &res) != KVS_OK) {
        *why_p = kvs_cuda_result_string(drv, res);
        return false;
    }
    m->at = (const uint8_t *)(uintptr_t)m->vm.va + e->off;
    m->ok = true;
    return true;
}

/* Asks the holder for @n regions (lock held). False: the exchange itself
 * failed, and the connection keeps to the transport. */
/* Connects to the holder's socket and reads its greeting: the socket, with
 * the nonce in @nonce, or -1 with *why_p set (errno says more). */
static int dial_ms(kvs__shm_peer_t *sp, uint8_t *nonce, const char **why_p, unsigned ms);
static int dial(kvs__shm_peer_t *sp, uint8_t *nonce, const char **why_p)
{
    return dial_ms(sp, nonce, why_p, SHM_IO_MS);
}

/* dial(), each blocking step (connect, the greeting) waiting at most @ms. */
static int dial_ms(kvs__shm_peer_t *sp, uint8_t *nonce, const char **why_p, unsigned ms)
{
    struct sockaddr_un sa;
    const socklen_t salen = sock_addr(sp->path, &sa);
    int fd = salen == 0 ? -1 : socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    *why_p = "socket";
    if (fd < 0)
        return -1;
    io_timeouts_ms(fd, ms);
    *why_p = "connect";
    if (connect(fd, (struct sockaddr *)&sa, salen) != 0)
        goto fail;
    uint8_t hello[8 + KVS_PROTO_NONCE_LEN + 1];
    *why_p = "no greeting";
    if (recv(fd, hello, sizeof(hello), 0) != 8 + KVS_PROTO_NONCE_LEN || get32(hello) != SHM_MAGIC ||
        get32(hello + 4) != SHM_VERSION)
        goto fail;
    memcpy(nonce, hello + 8, KVS_PROTO_NONCE_LEN);
    return fd;
fail:
    close(fd);
    return -1;
}

int kvs__shm_peer_ctl(kvs__shm_peer_t *sp, unsigned step_ms)
{
    const char *why = NULL;
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
    int fd = dial_ms(sp, nonce, &why, step_ms);
    if (fd < 0)
        goto fail;
    uint8_t req[KVS_SHM_CTL_LEN];
    put_proof(sp, KVS_SHM_CTL_MAGIC, nonce, req);
    why = "send";
    if (send(fd, req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req))
        goto fail;
    uint8_t rep[9];
    why = "refused (a holder that predates control channels, or see its log)";
    if (recv(fd, rep, sizeof(rep), 0) != 8 || get32(rep) != KVS_SHM_CTL_MAGIC ||
        get32(rep + 4) != 0)
        goto fail;
    int fl = fcntl(fd, F_GETFL);
    why = "fcntl";
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        goto fail;
    return fd;
fail:
    kvs__debug(sp->log, "peer %s: no control channel through %s (%s): messages take the transport",
               sp->peer, sp->path, why);
    if (fd >= 0)
        close(fd);
    return -1;
}

static bool attach(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n)
{
    const char *why = NULL;
    bool ok = false;
    int fds[SHM_MAX_IDS];
    uint32_t nfds = 0;
    uint8_t nonce[KVS_PROTO_NONCE_LEN];
    int fd = dial(sp, nonce, &why);
    if (fd < 0)
        goto out;
    uint8_t req[4 + KVS_PROTO_SESSION_LEN + KVS_PROTO_MAC_LEN + 4 + 4 * SHM_MAX_IDS];
    put_proof(sp, SHM_MAGIC, nonce, req);
    size_t fixed = 4 + KVS_PROTO_SESSION_LEN + KVS_PROTO_MAC_LEN + 4;
    put32(req + fixed - 4, n);
    for (uint32_t i = 0; i < n; i++)
        put32(req + fixed + 4 * i, ids[i]);
    why = "send";
    if (send(fd, req, fixed + 4 * (size_t)n, MSG_NOSIGNAL) != (ssize_t)(fixed + 4 * (size_t)n))
        goto out;
    uint8_t rep[8 + SHM_ENTRY_LEN * SHM_MAX_IDS + 1];
    ssize_t got = recv_fds(fd, rep, sizeof(rep), fds, &nfds, 0);
    why = "refused (see the holder's log)";
    if (got < 0)
        goto out;
    kvs__shm_entry_t ents[SHM_MAX_IDS];
    const char *bad = NULL;
    if (kvs__shm_parse_reply(rep, (size_t)got, n, nfds, ents, &bad) != KVS_OK) {
        why = bad;
        errno = EPROTO;
        goto out;
    }
    uint32_t used = 0;
    for (uint32_t i = 0; i < n && sp->nmaps < SHM_MAX_MAPS; i++) {
        const kvs__shm_entry_t *e = &ents[i];
        map_t *m = &sp->maps[sp->nmaps++];
        memset(m, 0, sizeof(*m));
        m->id = ids[i];
        m->base = e->base;
        m->len = e->len;
        if (e->status != 0)
            continue;
        const char *cwhy = NULL;
        int efd = fds[used++];
        if (e->kind == KVS_SHM_KIND_MEMFD && !map_fd(m, efd, e->off))
            kvs__warn(sp->log, "peer %s: region %u: the holder's memfd cannot be mapped", sp->peer,
                      ids[i]);
        if (e->kind == KVS_SHM_KIND_CUDA_VMM && !map_cuda(m, efd, e, &cwhy))
            kvs__warn(sp->log,
                      "peer %s: region %u: the holder's CUDA allocation cannot be mapped (%s); "
                      "its blocks move over the transport",
                      sp->peer, ids[i], cwhy);
    }
    ok = true;
out:
    if (!ok)
        kvs__warn(sp->log,
                  "peer %s: shared-memory handover through %s failed (%s: %s); using the "
                  "transport",
                  sp->peer, sp->path, why, strerror(errno));
    for (uint32_t i = 0; i < nfds; i++)
        close(fds[i]);
    if (fd >= 0)
        close(fd);
    return ok;
}

/* The local address of remote [addr, addr + len) in region @id, or NULL;
 * *ctx_p: the context to copy it in (a CUDA mapping), or NULL (host memory). */
static const uint8_t *xlate(kvs__shm_peer_t *sp, uint32_t id, uint64_t addr, uint64_t len,
                            CUcontext *ctx_p)
{
    map_t *m = map_find(sp, id);
    if (m != NULL && !m->ok && !m->said) {
        m->said = true;
        kvs__info(sp->log,
                  "peer %s: region %u is not in shared memory (not from kvs_mem_alloc or an "
                  "arena): its blocks move over the transport",
                  sp->peer, id);
    }
    if (m == NULL || !m->ok || addr < m->base || len > m->len || addr - m->base > m->len - len)
        return NULL;
    *ctx_p = m->vm.va != 0 ? m->vm.ctx : NULL;
    return m->at + (addr - m->base);
}

typedef struct run {
    const uint8_t *src;
    uint8_t *dst;
    size_t len;
    CUcontext ctx;     /* src is CUDA memory copied in this context; NULL: host memory */
    CUcontext dst_ctx; /* dst is CUDA memory of this (primary) context; NULL: host memory */
    CUstream stream;   /* with dst_ctx: our stream in it */
} run_t;

/* Region ids the blocks need that are not known yet (at most SHM_MAX_IDS). */
static uint32_t missing(kvs__shm_peer_t *sp, const uint8_t *const *block_at, size_t count,
                        uint32_t *ids)
{
    uint32_t n = 0;
    for (size_t i = 0; i < count && n < SHM_MAX_IDS; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = block_at[i];
        kvs__proto_block(&cur, &d);
        for (int k = -1; k < (int)d.npieces && n < SHM_MAX_IDS; k++) {
            uint32_t id = d.gen_region;
            if (k >= 0) {
                kvs__piece_t pc;
                kvs__proto_piece(d.pieces, (uint16_t)k, &pc);
                id = pc.region;
            }
            bool seen = map_find(sp, id) != NULL;
            for (uint32_t j = 0; j < n && !seen; j++)
                seen = ids[j] == id;
            if (!seen)
                ids[n++] = id;
        }
    }
    return n;
}

/* Where bytes [off, off+len) of the holder's block @d are mapped: within
 * one of its pieces, in a region we map; NULL otherwise. */
static const uint8_t *block_src(kvs__shm_peer_t *sp, const kvs__block_desc_t *d, uint64_t off,
                                uint64_t len, CUcontext *ctx_p)
{
    uint64_t pbase = 0;
    for (uint16_t k = 0; k < d->npieces; k++) {
        kvs__piece_t pc;
        kvs__proto_piece(d->pieces, k, &pc);
        if (off >= pbase && off + len <= pbase + pc.len)
            return xlate(sp, pc.region, pc.addr + (off - pbase), len, ctx_p);
        pbase += pc.len;
    }
    return NULL; /* the transport path reports the mismatch */
}

/* Adds a copy to @runs, continuing the last run where both sides (and the
 * contexts of CUDA memory on either side) do. @dd: the destination's
 * device when it is CUDA memory, or NULL. */
static void add_run(run_t *runs, size_t *nruns_p, const uint8_t *src, uint8_t *dst, size_t len,
                    CUcontext ctx, const dst_dev_t *dd)
{
    run_t *last = *nruns_p > 0 ? &runs[*nruns_p - 1] : NULL;
    CUcontext dctx = dd != NULL ? dd->ctx : NULL;
    if (last != NULL && last->src + last->len == src && last->dst + last->len == dst &&
        last->ctx == ctx && last->dst_ctx == dctx && last->len + len <= SHM_MAX_RUN)
        last->len += len;
    else
        runs[(*nruns_p)++] = (run_t){.src = src,
                                     .dst = dst,
                                     .len = len,
                                     .ctx = ctx,
                                     .dst_ctx = dctx,
                                     .stream = dd != NULL ? dd->stream : NULL};
}

/* The device of CUDA destination memory @ptr, set up on first use (lock
 * held): its primary context retained and a non-blocking stream made in
 * it. NULL with *why_p saying why. */
static const dst_dev_t *dst_dev_of(kvs__shm_peer_t *sp, const void *ptr, const char **why_p)
{
    const kvs_cuda_driver_t *drv = cu(why_p);
    if (drv == NULL)
        return NULL;
    if (drv->cuPointerGetAttribute == NULL || drv->cuDeviceGet == NULL ||
        drv->cuDevicePrimaryCtxRetain == NULL || drv->cuDevicePrimaryCtxRelease_v2 == NULL ||
        drv->cuStreamCreate == NULL || drv->cuStreamDestroy_v2 == NULL ||
        drv->cuStreamSynchronize == NULL || drv->cuMemcpyHtoDAsync_v2 == NULL ||
        drv->cuMemcpyDtoDAsync_v2 == NULL || drv->cuMemcpyPeerAsync == NULL) {
        *why_p = "the driver lacks an entry point for copies into the device";
        return NULL;
    }
    int ordinal = -1;
    CUresult res = drv->cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                              (CUdeviceptr)(uintptr_t)ptr);
    if (res != CUDA_SUCCESS) {
        *why_p = kvs_cuda_result_string(drv, res); /* not device memory */
        return NULL;
    }
    for (uint32_t i = 0; i < sp->ndevs; i++)
        if (sp->devs[i].ordinal == ordinal)
            return &sp->devs[i];
    if (sp->ndevs == SHM_MAX_DEVS) {
        *why_p = "destinations on too many devices";
        return NULL;
    }
    dst_dev_t *d = &sp->devs[sp->ndevs];
    memset(d, 0, sizeof(*d));
    d->ordinal = ordinal;
    res = drv->cuDeviceGet(&d->dev, ordinal);
    if (res == CUDA_SUCCESS)
        res = drv->cuDevicePrimaryCtxRetain(&d->ctx, d->dev);
    if (res != CUDA_SUCCESS) {
        *why_p = kvs_cuda_result_string(drv, res);
        return NULL;
    }
    /* The stream belongs to the context current when it is made. */
    CUcontext prev = NULL;
    res = drv->cuCtxGetCurrent(&prev);
    if (res == CUDA_SUCCESS && (res = drv->cuCtxSetCurrent(d->ctx)) == CUDA_SUCCESS) {
        res = drv->cuStreamCreate(&d->stream, CU_STREAM_NON_BLOCKING);
        (void)drv->cuCtxSetCurrent(prev);
    }
    if (res != CUDA_SUCCESS) {
        (void)drv->cuDevicePrimaryCtxRelease_v2(d->dev);
        *why_p = kvs_cuda_result_string(drv, res);
        return NULL;
    }
    sp->ndevs++;
    return d;
}

/* The devices of @dst's segments (NULL for host ones) into @dd (lock
 * held); false when a CUDA one cannot be set up (logged once per
 * connection). */
static bool dst_devs(kvs__shm_peer_t *sp, const struct kvs_pool *dst, const dst_dev_t **dd)
{
    for (size_t s = 0; s < dst->nsegs; s++) {
        dd[s] = NULL;
        if (dst->segs[s].mem_type != KVS_MEM_CUDA)
            continue;
        const char *why = NULL;
        if ((dd[s] = dst_dev_of(sp, dst->segs[s].base, &why)) != NULL)
            continue;
        if (!sp->dst_failed)
            kvs__warn(sp->log,
                      "peer %s: cannot copy from mapped memory into CUDA destination %p (%s); "
                      "fetches into CUDA memory from this peer take the transport",
                      sp->peer, dst->segs[s].base, why);
        sp->dst_failed = true;
        return false;
    }
    return true;
}

/* The generation word of block @d, mapped and aligned, or NULL
 * (generations are read in place: host memory only). */
static const _Atomic uint64_t *gen_of(kvs__shm_peer_t *sp, const kvs__block_desc_t *d)
{
    CUcontext gctx = NULL;
    const uint8_t *g = xlate(sp, d->gen_region, d->gen_addr, 8, &gctx);
    if (g == NULL || gctx != NULL || ((uintptr_t)g & 7u) != 0)
        return NULL;
    return (const _Atomic uint64_t *)(const void *)g;
}

/* The copies of one fetch, coalesced, and the generations to check. */
static kvs_status_t plan(kvs__shm_peer_t *sp, const uint8_t *const *block_at, struct kvs_pool *dst,
                         const uint32_t *ids, size_t count, run_t *runs, size_t *nruns_p,
                         const _Atomic uint64_t **gens, const dst_dev_t **dd)
{
    size_t nruns = 0;
    if (!dst->host_only && (sp->dst_failed || !dst_devs(sp, dst, dd)))
        return KVS_ERR_UNSUPPORTED;
    for (size_t i = 0; i < count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = block_at[i];
        kvs__proto_block(&cur, &d);
        if ((gens[i] = gen_of(sp, &d)) == NULL)
            return KVS_ERR_UNSUPPORTED;
        size_t off = 0;
        for (size_t s = 0; s < dst->nsegs; s++) {
            const kvs_segment_t *sg = &dst->segs[s];
            uint8_t *local = (uint8_t *)sg->base + (size_t)ids[i] * sg->block_stride;
            CUcontext ctx = NULL;
            const uint8_t *src = block_src(sp, &d, off, sg->block_bytes, &ctx);
            if (src == NULL)
                return KVS_ERR_UNSUPPORTED;
            add_run(runs, &nruns, src, local, sg->block_bytes, ctx, dst->host_only ? NULL : dd[s]);
            off += sg->block_bytes;
        }
    }
    *nruns_p = nruns;
    return KVS_OK;
}

static bool gens_hold(const uint8_t *const *block_at, const _Atomic uint64_t *const *gens,
                      size_t count)
{
    for (size_t i = 0; i < count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = block_at[i];
        kvs__proto_block(&cur, &d);
        if (atomic_load_explicit(gens[i], memory_order_acquire) != d.gen)
            return false;
    }
    return true;
}

/* One copy with a CUDA side, in the context current for it: from a mapped
 * CUDA source into host memory (synchronous), or into a CUDA destination
 * on our stream in its context (host source, the same device, or another
 * device's context through cuMemcpyPeerAsync). */
static CUresult copy_cuda(const kvs_cuda_driver_t *drv, const run_t *r)
{
    CUdeviceptr d = (CUdeviceptr)(uintptr_t)r->dst, s = (CUdeviceptr)(uintptr_t)r->src;
    if (r->dst_ctx == NULL)
        return drv->cuMemcpyDtoH_v2(r->dst, s, r->len);
    if (r->ctx == NULL)
        return drv->cuMemcpyHtoDAsync_v2(d, r->src, r->len, r->stream);
    if (r->ctx == r->dst_ctx)
        return drv->cuMemcpyDtoDAsync_v2(d, s, r->len, r->stream);
    return drv->cuMemcpyPeerAsync(d, r->dst_ctx, s, r->ctx, r->len, r->stream);
}

static void run_item(void *arg, size_t i, void **dst, const void **src, size_t *len)
{
    const run_t *r = (const run_t *)arg + i;
    *dst = r->dst;
    *src = r->src;
    *len = r->len;
}

/* Host runs only: shared with the context's copy helpers when large enough
 * (copier_int.h), and stored around the caches when the job is large
 * (KVS__COPIER_STREAM_MIN_BYTES); true. */
static bool copy_host_runs(kvs__shm_peer_t *sp, const run_t *runs, size_t nruns, size_t *bytes_p)
{
    size_t total = 0;
    for (size_t i = 0; i < nruns; i++) {
        if (runs[i].ctx != NULL || runs[i].dst_ctx != NULL)
            return false;
        total += runs[i].len;
    }
    size_t helped;
    *bytes_p = kvs__copier_run(sp->copier, nruns, run_item, (void *)runs,
                               sp->stream && total >= KVS__COPIER_STREAM_MIN_BYTES, &helped);
    return true;
}

/* The copies: memcpy between host memory (with the copy helpers:
 * copy_host_runs); the driver where either side is
 * CUDA memory, in the context of the destination's device (a CUDA source
 * into host memory: the source's), the caller's context put back. Copies
 * into CUDA memory are asynchronous on our streams, each synchronised
 * before this returns (even after a failure), so the generation check
 * after it follows every read of the source. False when the driver failed
 * a copy: this connection takes the transport. */
static bool copy_runs(kvs__shm_peer_t *sp, const run_t *runs, size_t nruns, size_t *bytes_p)
{
    if (copy_host_runs(sp, runs, nruns, bytes_p))
        return true;
    const kvs_cuda_driver_t *drv = NULL;
    const char *why = NULL;
    CUcontext prev = NULL, cur = NULL;
    CUresult res = CUDA_SUCCESS;
    CUstream streams[SHM_MAX_DEVS];
    uint32_t nstreams = 0;
    bool swapped = false;
    size_t bytes = 0;
    for (size_t i = 0; i < nruns && res == CUDA_SUCCESS; i++) {
        const run_t *r = &runs[i];
        if (r->ctx == NULL && r->dst_ctx == NULL) {
            memcpy(r->dst, r->src, r->len);
            bytes += r->len;
            continue;
        }
        if (drv == NULL) {
            drv = cu(&why); /* non-NULL: a CUDA mapping or destination exists */
            res = drv->cuCtxGetCurrent(&prev);
            cur = prev;
        }
        CUcontext want = r->dst_ctx != NULL ? r->dst_ctx : r->ctx;
        if (res == CUDA_SUCCESS && cur != want) {
            res = drv->cuCtxSetCurrent(want);
            cur = want;
            swapped = true;
        }
        bool seen = r->dst_ctx == NULL;
        for (uint32_t k = 0; k < nstreams && !seen; k++)
            seen = streams[k] == r->stream;
        if (!seen)
            streams[nstreams++] = r->stream; /* one per device: SHM_MAX_DEVS at most */
        if (res == CUDA_SUCCESS)
            res = copy_cuda(drv, r);
        bytes += r->len;
    }
    for (uint32_t k = 0; k < nstreams; k++) {
        CUresult sr = drv->cuStreamSynchronize(streams[k]);
        if (res == CUDA_SUCCESS)
            res = sr;
    }
    if (swapped)
        (void)drv->cuCtxSetCurrent(prev);
    if (res != CUDA_SUCCESS) {
        pthread_mutex_lock(&sp->lock);
        bool say = !sp->cu_failed;
        sp->cu_failed = true;
        pthread_mutex_unlock(&sp->lock);
        if (say)
            kvs__warn(sp->log,
                      "peer %s: copying between the holder's mapped memory and CUDA memory "
                      "failed (%s); using the transport",
                      sp->peer, kvs_cuda_result_string(drv, res));
        return false;
    }
    *bytes_p = bytes;
    return true;
}

/* A seqlock read: generations before, the copies, generations after. The
 * holder moves a block's generation before it reuses the memory, so a block
 * whose generation held on both sides was not written between. KVS_OK
 * (bytes copied in *bytes_p) or KVS_ERR_STALE. */
static kvs_status_t copy_checked(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                                 const _Atomic uint64_t *const *gens, size_t count,
                                 const run_t *runs, size_t nruns, size_t *bytes_p)
{
    if (!gens_hold(block_at, gens, count))
        return KVS_ERR_STALE;
    size_t bytes = 0;
    if (!copy_runs(sp, runs, nruns, &bytes))
        return KVS_ERR_UNSUPPORTED; /* the transport writes every byte again */
    if (kvs__shm_test_mid_copy != NULL)
        kvs__shm_test_mid_copy();
    atomic_thread_fence(memory_order_acquire);
    if (!gens_hold(block_at, gens, count))
        return KVS_ERR_STALE;
    *bytes_p = bytes;
    return KVS_OK;
}

/* Maps what the blocks need that is not mapped yet (lock held); false when
 * the connection keeps to the transport. */
static bool attach_for(kvs__shm_peer_t *sp, const uint8_t *const *block_at, size_t count)
{
    uint32_t want[SHM_MAX_IDS];
    uint32_t n = sp->broken || sp->cu_failed ? 0 : missing(sp, block_at, count, want);
    if (n > 0 && sp->nmaps + n <= SHM_MAX_MAPS && !attach(sp, want, n))
        sp->broken = true;
    return !sp->broken && !sp->cu_failed;
}

bool kvs__shm_peer_maps(kvs__shm_peer_t *sp, const uint8_t *const *block_at, size_t count)
{
    if (sp == NULL)
        return false;
    pthread_mutex_lock(&sp->lock);
    bool ok = attach_for(sp, block_at, count);
    for (size_t i = 0; ok && i < count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = block_at[i];
        kvs__proto_block(&cur, &d);
        ok = gen_of(sp, &d) != NULL;
        for (uint16_t k = 0; ok && k < d.npieces; k++) {
            kvs__piece_t pc;
            CUcontext ctx = NULL;
            kvs__proto_piece(d.pieces, k, &pc);
            ok = xlate(sp, pc.region, pc.addr, pc.len, &ctx) != NULL;
        }
    }
    pthread_mutex_unlock(&sp->lock);
    return ok;
}

bool kvs__shm_peer_maps_ids(kvs__shm_peer_t *sp, const uint32_t *ids, uint32_t n)
{
    if (sp == NULL || n > SHM_MAX_IDS)
        return false;
    pthread_mutex_lock(&sp->lock);
    uint32_t want[SHM_MAX_IDS], nw = 0;
    for (uint32_t i = 0; i < n; i++)
        if (map_find(sp, ids[i]) == NULL)
            want[nw++] = ids[i];
    if (nw > 0 && !sp->broken && !sp->cu_failed && sp->nmaps + nw <= SHM_MAX_MAPS &&
        !attach(sp, want, nw))
        sp->broken = true;
    bool ok = !sp->broken && !sp->cu_failed;
    for (uint32_t i = 0; ok && i < n; i++) {
        const map_t *m = map_find(sp, ids[i]);
        ok = m != NULL && m->ok;
    }
    pthread_mutex_unlock(&sp->lock);
    return ok;
}

const uint8_t *kvs__shm_peer_index(kvs__shm_peer_t *sp, size_t *len_p)
{
    if (sp == NULL)
        return NULL;
    pthread_mutex_lock(&sp->lock);
    if (!sp->index_tried && !sp->broken && sp->nmaps < SHM_MAX_MAPS) {
        sp->index_tried = true;
        uint32_t id = KVS_SHM_INDEX_ID;
        /* A holder without one answers "no such region": nothing breaks. */
        if (!attach(sp, &id, 1))
            sp->broken = true;
    }
    const map_t *m = map_find(sp, KVS_SHM_INDEX_ID);
    const uint8_t *at = NULL;
    if (m != NULL && m->ok && m->map != NULL) { /* host memory only, never a CUDA mapping */
        at = m->at;
        *len_p = (size_t)m->len;
    }
    pthread_mutex_unlock(&sp->lock);
    return at;
}

bool kvs__shm_peer_usable(kvs__shm_peer_t *sp)
{
    if (sp == NULL)
        return false;
    pthread_mutex_lock(&sp->lock);
    bool ok = !sp->broken && !sp->cu_failed;
    pthread_mutex_unlock(&sp->lock);
    return ok;
}

kvs_status_t kvs__shm_fetch(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                            struct kvs_pool *dst, const uint32_t *ids, size_t count,
                            size_t *bytes_p)
{
    if (sp == NULL || count == 0)
        return KVS_ERR_UNSUPPORTED;
    run_t *runs = kvs__malloc(count * dst->nsegs * sizeof(*runs));
    const _Atomic uint64_t **gens = kvs__malloc(count * sizeof(*gens));
    const dst_dev_t **dd = kvs__malloc(dst->nsegs * sizeof(*dd));
    kvs_status_t st = KVS_ERR_UNSUPPORTED;
    size_t nruns = 0;
    if (runs == NULL || gens == NULL || dd == NULL)
        goto out;
    pthread_mutex_lock(&sp->lock);
    if (attach_for(sp, block_at, count))
        st = plan(sp, block_at, dst, ids, count, runs, &nruns, gens, dd);
    if (st == KVS_OK)
        sp->copying++;
    pthread_mutex_unlock(&sp->lock);
    if (st == KVS_OK) {
        st = copy_checked(sp, block_at, gens, count, runs, nruns, bytes_p);
        copy_end(sp);
    }
out:
    kvs__free(runs);
    kvs__free(gens);
    kvs__free(dd);
    return st;
}

/* The segment of @dst that holds bytes [off, off + len) of a block, or
 * nsegs (as kvs__xfer_dst_at finds it). */
static size_t seg_at(const struct kvs_pool *dst, uint64_t off, uint64_t len)
{
    uint64_t base = 0;
    for (size_t k = 0; k < dst->nsegs; k++) {
        if (off < base + dst->segs[k].block_bytes)
            return off + len <= base + dst->segs[k].block_bytes ? k : dst->nsegs;
        base += dst->segs[k].block_bytes;
    }
    return dst->nsegs;
}

/* The copies of a planned fetch (lock held): per block its ranges into
 * staging and its long runs straight into @dst, both from the mapping. */
static kvs_status_t plan_x(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                           const kvs__xfer_t *x, uint8_t *staging, struct kvs_pool *dst,
                           const uint32_t *ids, run_t *runs, size_t *nruns_p,
                           const _Atomic uint64_t **gens, const dst_dev_t **dd)
{
    size_t nruns = 0;
    if (!dst->host_only && (sp->dst_failed || !dst_devs(sp, dst, dd)))
        return KVS_ERR_UNSUPPORTED;
    for (size_t i = 0; i < x->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = block_at[i];
        kvs__proto_block(&cur, &d);
        if ((gens[i] = gen_of(sp, &d)) == NULL)
            return KVS_ERR_UNSUPPORTED;
        const kvs__xset_t *xs = &x->sets[x->set_of[i]];
        uint8_t *to = staging + x->stage_at[i];
        for (size_t k = 0; k < xs->nranges; k++) {
            CUcontext ctx = NULL;
            const uint8_t *src = block_src(sp, &d, xs->ranges[k].off, xs->ranges[k].len, &ctx);
            if (src == NULL)
                return KVS_ERR_UNSUPPORTED;
            add_run(runs, &nruns, src, to + xs->at[k], xs->ranges[k].len, ctx, NULL);
        }
        for (size_t k = 0; k < xs->ndirect; k++) {
            const kvs__copy_t *cp = &xs->direct[k];
            CUcontext ctx = NULL;
            const uint8_t *src = block_src(sp, &d, cp->src, cp->len, &ctx);
            uint8_t *at = kvs__xfer_dst_at(dst->segs, dst->nsegs, ids[i], cp->dst, cp->len);
            if (src == NULL || at == NULL)
                return KVS_ERR_UNSUPPORTED; /* the transport path reports the mismatch */
            add_run(runs, &nruns, src, at, (size_t)cp->len, ctx,
                    dst->host_only ? NULL : dd[seg_at(dst, cp->dst, cp->len)]);
        }
    }
    *nruns_p = nruns;
    return KVS_OK;
}

/* Staging permuted into a CUDA @dst once every generation held: the
 * planned copies as runs from host staging into the device (HtoD on our
 * streams, synchronised). KVS_ERR_LAYOUT_MISMATCH as kvs__xfer_apply(), or
 * KVS_ERR_UNSUPPORTED when the driver failed a copy. */
static kvs_status_t apply_cuda(kvs__shm_peer_t *sp, const kvs__xfer_t *x, const uint8_t *staging,
                               struct kvs_pool *dst, const uint32_t *ids, const dst_dev_t **dd)
{
    size_t total = 0;
    for (size_t i = 0; i < x->count; i++)
        total += x->sets[x->set_of[i]].ncopies;
    if (total == 0)
        return KVS_OK;
    run_t *runs = kvs__malloc(total * sizeof(*runs));
    if (runs == NULL)
        return KVS_ERR_UNSUPPORTED; /* the fetch fails; nothing was trusted */
    size_t nruns = 0, ignored = 0;
    kvs_status_t st = KVS_OK;
    for (size_t i = 0; i < x->count && st == KVS_OK; i++) {
        const kvs__xset_t *xs = &x->sets[x->set_of[i]];
        const uint8_t *from = staging + x->stage_at[i];
        for (size_t k = 0; k < xs->ncopies && st == KVS_OK; k++) {
            const kvs__copy_t *c = &xs->copies[k];
            uint8_t *at = kvs__xfer_dst_at(dst->segs, dst->nsegs, ids[i], c->dst, c->len);
            if (at == NULL || c->src + c->len > xs->bytes)
                st = KVS_ERR_LAYOUT_MISMATCH;
            else
                add_run(runs, &nruns, from + c->src, at, (size_t)c->len, NULL,
                        dd[seg_at(dst, c->dst, c->len)]);
        }
    }
    if (st == KVS_OK && !copy_runs(sp, runs, nruns, &ignored))
        st = KVS_ERR_UNSUPPORTED;
    kvs__free(runs);
    return st;
}

kvs_status_t kvs__shm_fetch_planned(kvs__shm_peer_t *sp, const uint8_t *const *block_at,
                                    const kvs__xfer_t *x, uint8_t *staging, struct kvs_pool *dst,
                                    const uint32_t *ids, size_t *bytes_p)
{
    if (sp == NULL || x->count == 0)
        return KVS_ERR_UNSUPPORTED;
    size_t total = 0;
    for (size_t i = 0; i < x->count; i++)
        total += x->sets[x->set_of[i]].nranges + x->sets[x->set_of[i]].ndirect;
    run_t *runs = kvs__malloc((total ? total : 1) * sizeof(*runs));
    const _Atomic uint64_t **gens = kvs__malloc(x->count * sizeof(*gens));
    const dst_dev_t **dd = kvs__malloc(dst->nsegs * sizeof(*dd));
    kvs_status_t st = KVS_ERR_UNSUPPORTED;
    size_t nruns = 0, bytes = 0;
    if (runs == NULL || gens == NULL || dd == NULL)
        goto out;
    pthread_mutex_lock(&sp->lock);
    if (attach_for(sp, block_at, x->count))
        st = plan_x(sp, block_at, x, staging, dst, ids, runs, &nruns, gens, dd);
    if (st == KVS_OK)
        sp->copying++;
    pthread_mutex_unlock(&sp->lock);
    if (st == KVS_OK) {
        st = copy_checked(sp, block_at, gens, x->count, runs, nruns, &bytes);
        copy_end(sp);
    }
    /* Staging lands only once every generation held (as on the transport). */
    if (st == KVS_OK && !dst->host_only)
        st = apply_cuda(sp, x, staging, dst, ids, dd);
    for (size_t i = 0; st == KVS_OK && dst->host_only && i < x->count; i++)
        st = kvs__xfer_apply(x, i, staging, dst->segs, dst->nsegs, ids[i]);
    if (st == KVS_OK)
        *bytes_p = bytes;
out:
    kvs__free(runs);
    kvs__free(gens);
    kvs__free(dd);
    return st;
}
