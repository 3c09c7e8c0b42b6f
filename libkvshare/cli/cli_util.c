/* SPDX-License-Identifier: Apache-2.0 */
/* cli_util.c - helpers shared by subcommands: option parsing and usage errors, JSON output,
 * spawning, a run's token, listening on HOST:PORT. */
#include "cli.h"
#include "util_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static char run_token_path[4096];
static pid_t run_token_owner;

static void run_token_remove(void)
{
    /* Only the process that made it: a forked child exiting must not. */
    if (run_token_path[0] != '\0' && getpid() == run_token_owner)
        unlink(run_token_path);
}

/* A run stopped by a signal (Ctrl-C, a timeout's SIGTERM) would skip atexit
 * and leave the secret in TMPDIR: remove it, then die of the signal as
 * before. unlink() and raise() are async-signal-safe. */
static void run_token_signal(int sig)
{
    if (run_token_path[0] != '\0' && getpid() == run_token_owner)
        unlink(run_token_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void run_token_on_signals(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        struct sigaction old;
        /* Only where nobody handles the signal already (the command may). */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_DFL)
            signal(sigs[i], run_token_signal);
    }
}

bool kvs_cli_run_token(const char *who)
{
    const char *mode = getenv("KVSHARE_AUTH");
    const char *file = getenv("KVSHARE_AUTH_TOKEN_FILE");
    if ((mode != NULL && strcmp(mode, "none") == 0) || (file != NULL && file[0] != '\0'))
        return true;
    const char *dir = getenv("TMPDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = "/tmp";
    char path[sizeof(run_token_path)];
    int n = snprintf(path, sizeof(path), "%s/kvshare-token-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        fprintf(stderr, "kvshare %s: TMPDIR='%s' is too long for a token file\n", who, dir);
        return false;
    }
    unsigned char raw[32], text[64]; /* base64 of 32 bytes: 44 chars + NUL */
    if (RAND_bytes(raw, (int)sizeof(raw)) != 1) {
        fprintf(stderr, "kvshare %s: RAND_bytes failed: no random token for this run\n", who);
        return false;
    }
    int tl = EVP_EncodeBlock(text, raw, (int)sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    text[tl++] = '\n';
    int fd = mkstemp(path); /* 0600, O_EXCL */
    if (fd < 0) {
        fprintf(stderr, "kvshare %s: mkstemp(%s): %s\n", who, path, strerror(errno));
        OPENSSL_cleanse(text, sizeof(text));
        return false;
    }
    ssize_t w = write(fd, text, (size_t)tl);
    OPENSSL_cleanse(text, sizeof(text));
    if (w != tl || fchmod(fd, 0600) != 0 || close(fd) != 0) {
        fprintf(stderr, "kvshare %s: writing the run's token to %s: %s\n", who, path,
                strerror(errno));
        unlink(path);
        return false;
    }
    memcpy(run_token_path, path, sizeof(path));
    run_token_owner = getpid();
    atexit(run_token_remove);
    run_token_on_signals();
    setenv("KVSHARE_AUTH_TOKEN_FILE", run_token_path, 1);
    return true;
}

pid_t kvs_cli_spawn(char *const argv[], int *to_child, FILE **from_child)
{
    /* Close-on-exec, so a later child does not inherit this child's stdin
     * and keep it open after we close it. */
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    kvs__spawn_t sp = {.argv = argv, .stdin_fd = in[0], .stdout_fd = out[1], .stderr_fd = -1};
    pid_t pid = kvs__spawn(&sp);
    close(in[0]);
    close(out[1]);
    if (pid < 0) {
        close(in[1]);
        close(out[0]);
        return -1;
    }
    *to_child = in[1];
    *from_child = fdopen(out[0], "r");
    return pid;
}

bool kvs_cli_find_program(const char *self, const char *name, const char *build_dir,
                          const char *env_var, char *out, size_t len, char *why, size_t wl)
{
    const char *env = getenv(env_var);
    if (env != NULL && env[0] != '\0') {
        if (access(env, X_OK) != 0) {
            snprintf(why, wl,
                     "%s=%s: not an executable file (%s); point it at a built %s, or unset it to "
                     "use the one built beside kvshare",
                     env_var, env, strerror(errno), name);
            return false;
        }
        snprintf(out, len, "%s", env);
        return true;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", self);
    char *slash = strrchr(dir, '/');
    if (slash != NULL)
        *slash = '\0';
    /* The install first: from PREFIX/bin, ../../BUILD_DIR is outside PREFIX. */
    char cand[2][PATH_MAX + 128];
    snprintf(cand[0], sizeof(cand[0]), "%s/%s", dir, name);
    snprintf(cand[1], sizeof(cand[1]), "%s/../../%s/%s", dir, build_dir, name);
    for (int i = 0; i < 2; i++) {
        char real[PATH_MAX];
        if (access(cand[i], X_OK) == 0 && realpath(cand[i], real) != NULL) {
            snprintf(out, len, "%s", real);
            return true;
        }
    }
    snprintf(why, wl,
             "%s not found; looked at:\n  %s\n  %s\n"
             "Build it (cmake --build build --target %s) or set %s=/path/to/%s",
             name, cand[0], cand[1], name, env_var, name);
    return false;
}
