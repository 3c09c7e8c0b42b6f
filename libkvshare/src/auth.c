/* SPDX-License-Identifier: Apache-2.0 */
/* auth.c - loads the handshake secret (auth on by default) and raises the descriptor limit. */
#include "auth_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every refusal of a token setting: KVS_ERR_CONFIG with a reason. */
#define fail(err, errlen, ...) kvs__failf(err, errlen, KVS_ERR_CONFIG, __VA_ARGS__)

/* Reads all of @fd into @buf (capacity @cap); *n_p receives the count.
 * A file that fills @buf is "too long" to the caller. */
static int read_all(int fd, uint8_t *buf, size_t cap, size_t *n_p)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *n_p = n;
    return 0;
}

kvs_status_t kvs__auth_load(const kvs__config_t *cfg, const kvs__logger_t *log, kvs__secret_t *out,
                            char *err, size_t errlen)
{
    if (cfg == NULL || out == NULL)
        return KVS_ERR_INVALID_PARAM;
    const char *path = cfg->auth_token_file;

    if (cfg->auth == KVS__AUTH_NONE) {
        if (path[0] != '\0')
            return fail(err, errlen,
                        "KVSHARE_AUTH=none and KVSHARE_AUTH_TOKEN_FILE='%s' contradict each "
                        "other: unset KVSHARE_AUTH to require the token, or unset "
                        "KVSHARE_AUTH_TOKEN_FILE to run open",
                        path);
        kvs__secret_clear(out);
        out->open = true;
        kvs__warn(log,
                  "authentication is off (KVSHARE_AUTH=none): any process that can reach this "
                  "node's port can read and overwrite its KV blocks, which hold users' prompts; "
                  "set KVSHARE_AUTH_TOKEN_FILE and unset KVSHARE_AUTH outside a test");
        return KVS_OK;
    }

    if (path[0] == '\0')
        return fail(err, errlen,
                    "authentication is on by default and KVSHARE_AUTH_TOKEN_FILE is not set: "
                    "point KVSHARE_AUTH_TOKEN_FILE at a file holding the shared token "
                    "(e.g. a mounted Secret), or set KVSHARE_AUTH=none to run without "
                    "authentication");

    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return fail(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': cannot open: %s", path,
                    strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': cannot stat: %s", path,
                    strerror(e));
    }
    /* Room for the longest token, its "\r\n" and one byte to tell "longer". */
    uint8_t buf[KVS_SECRET_MAX + 3];
    size_t n = 0;
    int rerr = read_all(fd, buf, sizeof(buf), &n);
    close(fd);
    kvs_status_t status = KVS_OK;
    if (rerr != 0) {
        status = fail(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': cannot read: %s", path,
                      strerror(rerr));
        goto out;
    }
    /* One trailing newline (from `echo` or an editor) is not part of the
     * token; anything else is, so tokens keep their exact bytes. */
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
    }
    if (n == 0) {
        status = fail(err, errlen,
                      "KVSHARE_AUTH_TOKEN_FILE='%s': the file is empty; it must hold the shared "
                      "token (1 to %d bytes)",
                      path, KVS_SECRET_MAX);
        goto out;
    }
    if (n > KVS_SECRET_MAX) {
        status = fail(err, errlen,
                      "KVSHARE_AUTH_TOKEN_FILE='%s': the token is longer than %d bytes "
                      "(is this the right file?)",
                      path, KVS_SECRET_MAX);
        goto out;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH))
        kvs__warn(log,
                  "KVSHARE_AUTH_TOKEN_FILE='%s': mode %04o lets %s read the token; expected for "
                  "a Kubernetes Secret mounted 0440 into a pod's own fsGroup, otherwise "
                  "`chmod 600` it",
                  path, (unsigned)(st.st_mode & 07777),
                  (st.st_mode & S_IROTH) ? "every local user" : "the file's group");
    memcpy(out->bytes, buf, n);
    out->len = n;
    out->open = false;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    return status;
}

void kvs__secret_clear(kvs__secret_t *s)
{
    if (s == NULL)
        return;
    OPENSSL_cleanse(s->bytes, sizeof(s->bytes));
    s->len = 0;
    s->open = false;
}

void kvs__raise_nofile(const kvs__logger_t *log)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        kvs__warn(log, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    if (rl.rlim_cur == rl.rlim_max) {
        kvs__debug(log, "RLIMIT_NOFILE: soft limit already at the hard limit %llu",
                   (unsigned long long)rl.rlim_max);
        return;
    }
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (rl.rlim_max == RLIM_INFINITY) {
        /* Linux refuses an infinite soft limit: the real ceiling is nr_open. */
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        unsigned long long nr = 0;
        if (f != NULL) {
            if (fscanf(f, "%llu", &nr) == 1 && nr > old)
                rl.rlim_cur = (rlim_t)nr;
            fclose(f);
        }
    }
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        kvs__warn(log,
                  "setrlimit(RLIMIT_NOFILE, %llu): %s; staying at %llu descriptors, which "
                  "limits how many peers this process can serve",
                  (unsigned long long)rl.rlim_cur, strerror(errno), (unsigned long long)old);
        return;
    }
    kvs__debug(log, "RLIMIT_NOFILE: raised the soft limit from %llu to %llu (hard limit %llu)",
               (unsigned long long)old, (unsigned long long)rl.rlim_cur,
               (unsigned long long)rl.rlim_max);
}
