/* SPDX-License-Identifier: Apache-2.0 */
/* cmdline.c - the command-line toolkit of the project's programs (kvshare, kvshare-index):
 * getopt with messages by the name the user wrote, value parsers, listening sockets, JSON
 * output. Messages start "kvshare NAME: ", NAME the command being parsed. */
#include "cmdline_int.h"
#include "util_int.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

double kvs_cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void kvs_cli_sort(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
}

double kvs_cli_median(double *v, int n)
{
    kvs_cli_sort(v, (size_t)n);
    return (n % 2) ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

bool kvs_cli_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    if (s == NULL) {
        kvs_cli_errorf("%s needs a value", opt);
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '-' || end == s || *end != '\0' || errno != 0 || v < min || v > max) {
        kvs_cli_errorf("%s '%s': expected an integer in %llu..%llu", opt, s,
                       (unsigned long long)min, (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}

bool kvs_cli_parse_size(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char why[160];
    uint64_t v;
    if (s == NULL) {
        kvs_cli_errorf("%s needs a value", opt);
        return false;
    }
    if (kvs__size_parse(s, &v, why, sizeof(why)) != 0) {
        kvs_cli_errorf("%s '%s': %s", opt, s, why);
        return false;
    }
    if (v < min || v > max) {
        kvs_cli_errorf("%s '%s': expected a size from %llu to %llu bytes", opt, s,
                       (unsigned long long)min, (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}
