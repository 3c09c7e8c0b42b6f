/* SPDX-License-Identifier: Apache-2.0 */
/* cli_util.c - helpers shared by subcommands: option parsing and usage errors, JSON output,
 * spawning, a run's token, listening on HOST:PORT. */
#include "cli.h"
#include "util_int.h"

#include <errno.h>
#include <fcntl.h>
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

uint64_t kvs_cli_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Binds and listens on HOST:PORT (serve --metrics, index --http). HOST is an IPv4 literal, a
 * bracketed IPv6 literal or a name (its first address); the socket is bound to exactly that
 * address. Writes the bound "host:port" to bound. Returns the socket, or -1 with why filled (bad
 * value: *usage set to 1; a bind error: 0). */
int kvs_cli_listen(const char *spec, char *bound, size_t bound_len, char *why, size_t wl,
                   int *usage)
{
    kvs__endpoint_t ep;
    *usage = 1;
    if (kvs__endpoint_parse(spec, 0, &ep, why, wl) != 0)
        return -1;
    const char *host = ep.host;
    struct addrinfo hints = {.ai_family = ep.bracketed ? AF_INET6 : AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, ep.port, &hints, &ai);
    if (rc != 0 && rc != EAI_SYSTEM) {
        /* AI_ADDRCONFIG hides ::1 on hosts without a global IPv6 address; retry without. */
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(host, ep.port, &hints, &ai);
    }
    if (rc != 0) {
        snprintf(why, wl, "cannot resolve host '%s': %s", host,
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    *usage = 0;
    char nhost[NI_MAXHOST] = "?", nport[NI_MAXSERV] = "?";
    getnameinfo(ai->ai_addr, ai->ai_addrlen, nhost, sizeof(nhost), nport, sizeof(nport),
                NI_NUMERICHOST | NI_NUMERICSERV);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (ai->ai_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        snprintf(why, wl, "cannot listen on %s%s%s:%s: %s", ai->ai_family == AF_INET6 ? "[" : "",
                 nhost, ai->ai_family == AF_INET6 ? "]" : "", nport, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0)
        getnameinfo((struct sockaddr *)&sa, salen, nhost, sizeof(nhost), nport, sizeof(nport),
                    NI_NUMERICHOST | NI_NUMERICSERV);
    kvs__endpoint_format(bound, bound_len, nhost, nport);
    return fd;
}

/* "kvshare NAME" of the command being parsed, for messages of the shared value parsers. */
static char cli_who[64] = "kvshare";

__attribute__((format(printf, 2, 0))) static void verrorf(const char *who, const char *fmt,
                                                          va_list ap)
{
    fprintf(stderr, "%s: ", who);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void kvs_cli_errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verrorf(cli_who, fmt, ap);
    va_end(ap);
}

int kvs_cli_usage_error(const kvs_cli_cmd_t *cmd, const char *fmt, ...)
{
    char who[64];
    va_list ap;
    snprintf(who, sizeof(who), "kvshare %s", cmd->name);
    va_start(ap, fmt);
    verrorf(who, fmt, ap);
    va_end(ap);
    return 2;
}

const char *kvs_cli_opt_name(const kvs_cli_cmd_t *cmd, int val, char *buf, size_t len)
{
    for (const struct option *o = cmd->opts; o->name != NULL; o++)
        if (o->flag == NULL && o->val == val) {
            snprintf(buf, len, "--%s", o->name);
            return buf;
        }
    snprintf(buf, len, "-%c", val > 32 && val < 127 ? val : '?');
    return buf;
}

/* An option the user wrote (argv element arg) that getopt_long refused: say why by its name. */
static void opt_refused(const kvs_cli_cmd_t *cmd, const char *arg, int c)
{
    if (arg == NULL || strncmp(arg, "--", 2) != 0) { /* a short option: "-x" */
        char s[3] = {'-', (char)(optopt > 32 && optopt < 127 ? optopt : '?'), '\0'};
        if (c == ':')
            kvs_cli_usage_error(cmd, "%s needs a value", s);
        else
            kvs_cli_usage_error(cmd, "unknown option '%s'", s);
        return;
    }
    size_t n = strcspn(arg + 2, "=");
    if (c == ':') {
        kvs_cli_usage_error(cmd, "%.*s needs a value", (int)n + 2, arg);
        return;
    }
    /* An exact name, or a prefix of several ("--events-r"), or of none. */
    const struct option *exact = NULL;
    int prefixed = 0;
    for (const struct option *o = cmd->opts; o->name != NULL; o++) {
        if (strncmp(o->name, arg + 2, n) != 0)
            continue;
        prefixed++;
        if (o->name[n] == '\0')
            exact = o;
    }
    if (exact == NULL && prefixed == 1)
        for (const struct option *o = cmd->opts; o->name != NULL; o++)
            if (strncmp(o->name, arg + 2, n) == 0)
                exact = o;
    if (exact != NULL && arg[2 + n] == '=' && exact->has_arg == no_argument)
        kvs_cli_usage_error(cmd, "option '--%s' takes no value", exact->name);
    else if (prefixed > 1)
        kvs_cli_usage_error(cmd, "ambiguous option '%.*s'", (int)n + 2, arg);
    else
        kvs_cli_usage_error(cmd, "unknown option '%.*s'", (int)n + 2, arg);
}

int kvs_cli_getopt(const kvs_cli_cmd_t *cmd, int argc, char **argv)
{
    /* One parse per argv: a new argv (the first call) restarts getopt. */
    static char **parsing;
    if (parsing != argv) {
        parsing = argv;
        optind = 0;
        snprintf(cli_who, sizeof(cli_who), "kvshare %s", cmd->name);
    }
    opterr = 0;
    /* ':' first: a missing value returns ':' (not '?'), told apart from an unknown option. */
    int c = getopt_long(argc, argv, ":h", cmd->opts, NULL);
    if (c == 'h') {
        cmd->usage(stdout);
        return KVS_CLI_OPT_HELP;
    }
    if (c == '?' || c == ':') {
        /* getopt_long has stepped past the element it refused, unless inside "-xy". */
        const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : NULL;
        if (arg != NULL && arg[0] == '-' && arg[1] != '-' && optopt != 0)
            arg = NULL;
        opt_refused(cmd, arg, c);
        cmd->usage(stderr);
        return KVS_CLI_OPT_BAD;
    }
    return c;
}

int kvs_cli_no_operands(const kvs_cli_cmd_t *cmd, int argc, char **argv)
{
    if (optind >= argc)
        return 0;
    kvs_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    cmd->usage(stderr);
    return 2;
}

cJSON *kvs_cli_json_num(cJSON *o, const char *key, double v, int decimals)
{
    /* cJSON prints the shortest text that reads back the same double: rounded here, a GB/s
     * figure prints as 12.345, not 12.345678901234567. */
    double scale = pow(10.0, decimals);
    if (isfinite(v) && fabs(v) < 1e15)
        v = round(v * scale) / scale;
    return cJSON_AddNumberToObject(o, key, v);
}

int kvs_cli_print_json(const char *who, cJSON *o)
{
    char *text = o != NULL ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (text == NULL) {
        fprintf(stderr, "kvshare %s: out of memory printing JSON\n", who);
        return 1;
    }
    printf("%s\n", text);
    cJSON_free(text);
    fflush(stdout);
    return 0;
}
