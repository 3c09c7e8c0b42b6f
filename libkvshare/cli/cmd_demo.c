/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_demo.c - `kvshare demo`: prefill -> decode over UCX between real processes on loopback,
 * checked token for token against local prefill, then prefix reuse through a cache-pool node. */
#include "cli.h"
#include "util_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEMO_STEPS        7
#define DEMO_BLOCK_TOKENS 16 /* the example engine's block size (vLLM's) */
#define DEMO_MAX_ARGS     128
#define DEMO_MAX_TP       8 /* ranks per side (--prefill-tp, --decode-tp) */

static void usage(FILE *f)
{
    fprintf(f, "usage: kvshare demo [--tokens N] [--decode N] [--shared PCT] [--no-reuse]\n"
               "                    [--timeout SEC] [--json] [--prefill-tp N] [--decode-tp M]\n"
               "                    [--prefill-kv-layout nhd|hnd] [--decode-kv-layout nhd|hnd]\n"
               "                    [engine options]\n"
               "\n"
               "Runs prefill->decode disaggregation end to end with real processes on loopback:\n"
               "  1. a cache-pool node (kvshare serve --listen 127.0.0.1:0);\n"
               "  2. a prefill engine (kvshare-engine --role prefill) computes a prompt's KV,\n"
               "     publishes it and offloads it to the pool;\n"
               "  3. a decode engine (--role decode --peer ADDR) fetches the KV over UCX and\n"
               "     generates tokens;\n"
               "  4. a second decode replica gets a prompt sharing the first PCT%% of the tokens\n"
               "     and fetches that prefix from the pool;\n"
               "  5-6. both prompts are prefilled locally (--role recompute) and the generated\n"
               "     tokens must be identical.\n"
               "Prints time to first token fetched vs recomputed, their ratio, the bytes moved\n"
               "and the transfer rate. Exits 1 when tokens differ or a step fails.\n"
               "\n"
               "  --tokens N      prompt length (default 4096)\n"
               "  --decode N      tokens to generate (default 32)\n"
               "  --shared PCT    prefix shared by the second replica's prompt (default 75)\n"
               "  --no-reuse      skip the cache-pool steps\n"
               "  --timeout SEC   deadline of each step (default grows with --tokens N:\n"
               "                  60 + 60 * max(1, (N/4096)^2) s: 120 s up to 4096, 300 s at\n"
               "                  8192)\n"
               "  --json          print one JSON object with every figure instead of the table\n"
               "  --prefill-tp N  N prefill TP ranks (default 1, at most 8); each computes\n"
               "                  the whole model and publishes its share of the KV heads\n"
               "  --decode-tp M   M decode TP ranks (default 1, at most 8); each fetches its\n"
               "                  share from the prefill ranks holding it; ranks 1..M-1 hand\n"
               "                  theirs to rank 0 in files, which then prefills the rest and\n"
               "                  decodes. The ranks' bytes must add up to the prompt's KV\n"
               "                  once (times M / kv-heads when M > kv-heads)\n"
               "  --prefill-kv-layout L, --decode-kv-layout L\n"
               "                  layout of each side's share: nhd (default) or hnd; prefix\n"
               "                  reuse (steps 1, 4, 6) runs only at TP 1 with one layout\n"
               "engine options, passed to every engine: --layers N --d-model N --heads N\n"
               "  --kv-heads N --head-dim N --ffn N --vocab N --threads N --weight-seed S\n"
               "  --prompt-seed S --zero-copy\n"
               "\n"
               "The engine is kvshare-engine beside this binary (an install), else\n"
               "build/examples/kvshare-engine (a build tree); set KVSHARE_ENGINE_BIN=PATH to\n"
               "use another. Progress goes to stderr.\n");
}

/* ------------------------------------------------------------------------ */
/* Progress lines                                                           */
/* ------------------------------------------------------------------------ */
static struct {
    bool open;  /* a "[k/N] what…" line waits for its result */
    bool tty;   /* stderr is a terminal: redraw the line with the elapsed time */
    double t0;  /* when the open step began */
    int last_s; /* last elapsed second drawn */
    char text[256];
} g_step;

static void step_begin(int k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void step_begin(int k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(g_step.text, sizeof(g_step.text), "[%d/%d] ", k, DEMO_STEPS);
    vsnprintf(g_step.text + n, sizeof(g_step.text) - (size_t)n, fmt, ap);
    va_end(ap);
    g_step.open = true;
    g_step.t0 = kvs_cli_now();
    g_step.last_s = 0;
    fprintf(stderr, "%s… ", g_step.text);
    fflush(stderr);
}

/* Redraws the open line with the time spent so far, so a long prefill
 * visibly progresses (terminals only: logs get one line per step). */
static void step_tick(void)
{
    if (!g_step.open || !g_step.tty)
        return;
    int s = (int)(kvs_cli_now() - g_step.t0);
    if (s > g_step.last_s) {
        g_step.last_s = s;
        fprintf(stderr, "\r\033[K%s… %d s ", g_step.text, s);
        fflush(stderr);
    }
}

static void step_end(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void step_end(const char *fmt, ...)
{
    if (g_step.tty && g_step.open)
        fprintf(stderr, "\r\033[K%s… ", g_step.text);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    g_step.open = false;
}

/* An error message; ends an open progress line first so it reads well. */
static void demo_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void demo_err(const char *fmt, ...)
{
    if (g_step.open) {
        fputs("failed\n", stderr);
        g_step.open = false;
    }
    fputs("kvshare demo: ", stderr);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ------------------------------------------------------------------------ */
/* Child processes                                                          */
/* ------------------------------------------------------------------------ */
static volatile sig_atomic_t g_signal; /* SIGINT/SIGTERM/SIGHUP received */

static void on_signal(int sig)
{
    g_signal = sig;
}

typedef struct child {
    const char *name; /* for messages: "prefill engine" */
    pid_t pid;        /* 0: never started or reaped */
    int in_fd;        /* write end of its stdin; closing it asks it to stop */
    int out_fd;       /* read end of its stdout (non-blocking) */
    int err_fd;       /* memfd that holds its stderr, shown when it fails */
    char *buf;        /* stdout bytes not yet returned as lines */
    size_t len, cap;
    bool eof;
    int status; /* waitpid() status once reaped */
    bool reaped;
    int forced; /* 0: exited when asked; else the signal child_stop() needed */
} child_t;

static void child_init(child_t *c, const char *name)
{
    *c = (child_t){.name = name, .in_fd = -1, .out_fd = -1, .err_fd = -1};
}

/*
 * Starts @argv[0] with stdin and stdout on pipes and stderr in a memfd.
 * @env lists "NAME=VALUE" to set and "NAME" to unset in the child only.
 * The child gets SIGKILL if we die, so even a `kill -9` of the demo leaves
 * no engine behind. Returns false with a message on failure.
 */
static bool child_spawn(child_t *c, char *const argv[], const char *const env[])
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    char memname[64];
    snprintf(memname, sizeof(memname), "kvshare-demo-%s", c->name);
    c->err_fd = memfd_create(memname, MFD_CLOEXEC);
    if (c->err_fd < 0 || pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        demo_err("%s: pipe/memfd: %s", c->name, strerror(errno));
        goto fail;
    }
    /* The child gets SIGKILL if we die; env is applied in the child (the demo has no other
     * threads). */
    kvs__spawn_t sp = {.argv = argv,
                       .env_edits = env,
                       .stdin_fd = in[0],
                       .stdout_fd = out[1],
                       .stderr_fd = c->err_fd,
                       .die_with_parent = true};
    pid_t pid = kvs__spawn(&sp);
    if (pid < 0) {
        demo_err("%s: fork: %s", c->name, strerror(errno));
        goto fail;
    }
    close(in[0]);
    close(out[1]);
    c->pid = pid;
    c->in_fd = in[1];
    c->out_fd = out[0];
    fcntl(c->out_fd, F_SETFL, fcntl(c->out_fd, F_GETFL) | O_NONBLOCK);
    return true;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    return false;
}

/* Reads what the child wrote to stdout so far; false on EOF. */
static bool child_drain(child_t *c)
{
    for (;;) {
        if (c->cap - c->len < 4096) {
            size_t ncap = c->cap ? 2 * c->cap : 8192;
            char *nb = realloc(c->buf, ncap);
            if (nb == NULL)
                return true; /* keep what we have; the caller's deadline still holds */
            c->buf = nb;
            c->cap = ncap;
        }
        ssize_t n = read(c->out_fd, c->buf + c->len, c->cap - c->len - 1);
        if (n > 0) {
            c->len += (size_t)n;
        } else if (n == 0) {
            c->eof = true;
            return false;
        } else {
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        }
    }
}

typedef enum { LINE_OK, LINE_EOF, LINE_TIMEOUT, LINE_SIGNAL } line_status_t;

/*
 * Waits until the child has written a whole line to stdout and returns it in
 * @line (malloc'ed, without the newline; the caller frees it). Gives up at
 * @deadline (kvs_cli_now() time), at EOF, or when we are signalled.
 */
static line_status_t child_read_line(child_t *c, double deadline, char **line)
{
    for (;;) {
        char *nl = c->len > 0 ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl != NULL) {
            size_t n = (size_t)(nl - c->buf);
            *line = malloc(n + 1);
            if (*line == NULL)
                return LINE_EOF;
            memcpy(*line, c->buf, n);
            (*line)[n] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return LINE_OK;
        }
        if (c->eof)
            return LINE_EOF;
        if (g_signal)
            return LINE_SIGNAL;
        double left = deadline - kvs_cli_now();
        if (left <= 0)
            return LINE_TIMEOUT;
        struct pollfd p = {.fd = c->out_fd, .events = POLLIN};
        /* Wake at least every 250 ms to redraw the progress line. */
        int ms = left > 0.25 ? 250 : (int)(left * 1e3) + 1;
        if (poll(&p, 1, ms) > 0)
            child_drain(c);
        step_tick();
    }
}

/* Polls waitpid() until the child exits or @seconds pass. */
static bool child_wait(child_t *c, double seconds)
{
    const double deadline = kvs_cli_now() + seconds;
    while (!c->reaped) {
        pid_t r = waitpid(c->pid, &c->status, WNOHANG);
        if (r == c->pid || (r < 0 && errno == ECHILD)) {
            c->reaped = true;
            break;
        }
        if (kvs_cli_now() >= deadline)
            return false;
        if (c->out_fd >= 0 && !c->eof)
            child_drain(c); /* a child blocked on a full stdout pipe never exits */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return true;
}

/*
 * Stops the child: closes its stdin (how engines and `kvshare serve` are
 * asked to finish), then SIGTERM, then SIGKILL, each after a grace period,
 * and reaps it. Returns its exit code when it exited by itself, or -1.
 */
static int child_stop(child_t *c, double grace_s)
{
    if (c->pid <= 0)
        return -1;
    if (c->in_fd >= 0) {
        close(c->in_fd);
        c->in_fd = -1;
    }
    if (!child_wait(c, grace_s)) {
        c->forced = SIGTERM;
        kill(c->pid, SIGTERM);
        if (!child_wait(c, 5.0)) {
            c->forced = SIGKILL;
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &c->status, 0);
            c->reaped = true;
        }
    }
    return WIFEXITED(c->status) ? WEXITSTATUS(c->status) : -1;
}

/* Why the child ended, as text: "exit 2" or "signal 9". */
static const char *child_how(const child_t *c, char *buf, size_t len)
{
    if (!c->reaped)
        snprintf(buf, len, "still running");
    else if (WIFEXITED(c->status))
        snprintf(buf, len, "exit %d", WEXITSTATUS(c->status));
    else if (WIFSIGNALED(c->status))
        snprintf(buf, len, "signal %d", WTERMSIG(c->status));
    else
        snprintf(buf, len, "status %d", c->status);
    return buf;
}

/* Up to @max bytes from the end of the child's stderr, NUL-terminated,
 * trailing newlines removed; "" when it wrote nothing. */
static void child_stderr_tail(const child_t *c, char *buf, size_t max)
{
    buf[0] = '\0';
    struct stat st;
    if (c->err_fd < 0 || fstat(c->err_fd, &st) != 0 || st.st_size <= 0)
        return;
    size_t size = (size_t)st.st_size;
    size_t n = size < max - 1 ? size : max - 1;
    ssize_t got = pread(c->err_fd, buf, n, (off_t)(size - n));
    if (got <= 0)
        return;
    buf[got] = '\0';
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
        buf[--got] = '\0';
}

/* The last line of the child's stderr (a one-line reason for a summary). */
static void child_last_error(const child_t *c, char *buf, size_t max)
{
    char tail[1024];
    child_stderr_tail(c, tail, sizeof(tail));
    const char *nl = strrchr(tail, '\n');
    const char *last = nl != NULL ? nl + 1 : tail;
    /* Truncating a long line is fine: it is a one-line summary. */
    size_t n = strlen(last) < max - 1 ? strlen(last) : max - 1;
    memcpy(buf, last, n);
    buf[n] = '\0';
}

static void child_report_failure(const child_t *c, const char *what)
{
    char how[32], tail[4096];
    child_stderr_tail(c, tail, sizeof(tail));
    demo_err("%s %s (%s)%s%s", c->name, what, child_how(c, how, sizeof(how)),
             tail[0] ? "; its stderr ends with:\n" : "; it wrote nothing to stderr", tail);
}

static void child_free(child_t *c)
{
    if (c->pid > 0 && !c->reaped)
        child_stop(c, 2.0);
    if (c->in_fd >= 0)
        close(c->in_fd);
    if (c->out_fd >= 0)
        close(c->out_fd);
    if (c->err_fd >= 0)
        close(c->err_fd);
    free(c->buf);
    child_init(c, c->name);
}

/* ------------------------------------------------------------------------ */
/* The engine's JSON line                                                   */
/* ------------------------------------------------------------------------ */
typedef struct engine_run {
    double prefill_ms, ttft_ms, lookup_ms, fetch_ms, fetch_gbps, decode_ms_per_token;
    /* --fetch-again: the same prefix fetched again by the same engine (the
     * median of three fetches) */
    double warm_lookup_ms, warm_fetch_ms, warm_fetch_gbps;
    uint64_t hit_tokens, computed_tokens, fetch_bytes;
    double gather_ms;  /* decode rank 0: adding the other ranks' shares */
    char offload[160]; /* "" when not asked for, else "ok" or the error */
    uint64_t offload_blocks;
    double offload_ms;
    uint32_t *tokens;
    size_t ntokens;
} engine_run_t;

static double json_num(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

/* Parses one line of kvshare-engine output; false if it is not one. */
static bool parse_run(const char *line, engine_run_t *r)
{
    cJSON *o = cJSON_Parse(line);
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    if (o == NULL || !cJSON_IsArray(toks) || !cJSON_IsNumber(cJSON_GetObjectItem(o, "ttft_ms"))) {
        cJSON_Delete(o);
        return false;
    }
    *r = (engine_run_t){0};
    r->prefill_ms = json_num(o, "prefill_ms");
    r->ttft_ms = json_num(o, "ttft_ms");
    r->lookup_ms = json_num(o, "lookup_ms");
    r->fetch_ms = json_num(o, "fetch_ms");
    r->fetch_gbps = json_num(o, "fetch_gbps");
    r->decode_ms_per_token = json_num(o, "decode_ms_per_token");
    r->hit_tokens = (uint64_t)json_num(o, "hit_tokens");
    r->computed_tokens = (uint64_t)json_num(o, "computed_tokens");
    r->fetch_bytes = (uint64_t)json_num(o, "fetch_bytes");
    r->warm_lookup_ms = json_num(o, "warm_lookup_ms");
    r->warm_fetch_ms = json_num(o, "warm_fetch_ms");
    r->warm_fetch_gbps = json_num(o, "warm_fetch_gbps");
    r->gather_ms = json_num(o, "gather_ms");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(o, "offload");
    if (cJSON_IsString(off))
        snprintf(r->offload, sizeof(r->offload), "%s", off->valuestring);
    r->offload_blocks = (uint64_t)json_num(o, "offload_blocks");
    r->offload_ms = json_num(o, "offload_ms");
    int n = cJSON_GetArraySize(toks);
    r->tokens = calloc((size_t)n + 1, sizeof(*r->tokens));
    if (r->tokens == NULL) {
        cJSON_Delete(o);
        return false;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, toks) r->tokens[r->ntokens++] =
        cJSON_IsNumber(t) ? (uint32_t)t->valuedouble : UINT32_MAX;
    cJSON_Delete(o);
    return true;
}

/* ------------------------------------------------------------------------ */
/* The demo                                                                 */
/* ------------------------------------------------------------------------ */
typedef struct demo {
    uint64_t tokens, decode, shared_pct, timeout_s;
    uint64_t prefill_tp, decode_tp;
    const char *prefill_layout, *decode_layout; /* "nhd" or "hnd" */
    bool json, no_reuse;
    /* Engine options passed through verbatim (validated here). */
    const char *pass[2 * 16];
    int npass;
    uint64_t layers, kv_heads, head_dim; /* to size the pool node */
    char engine[PATH_MAX], self[PATH_MAX];
    double step_timeout; /* seconds */
} demo_t;

/* Locates kvshare-engine: $KVSHARE_ENGINE_BIN, else beside this binary (an install), else
 * build/examples/kvshare-engine (a build tree). */
static bool find_engine(demo_t *d)
{
    char why[3 * PATH_MAX];
    if (kvs_cli_find_program(d->self, "kvshare-engine", "examples", "KVSHARE_ENGINE_BIN", d->engine,
                             sizeof(d->engine), why, sizeof(why)))
        return true;
    demo_err("%s", why);
    return false;
}

/* argv for one engine run: the engine, --role, the common options, @extra. */
static void engine_argv(const demo_t *d, const char *role, const char *const extra[], char *bufs[4],
                        char *argv[DEMO_MAX_ARGS])
{
    int n = 0;
    argv[n++] = (char *)d->engine;
    argv[n++] = "--role";
    argv[n++] = (char *)role;
    snprintf(bufs[0], 24, "%llu", (unsigned long long)d->tokens);
    snprintf(bufs[1], 24, "%llu", (unsigned long long)d->decode);
    argv[n++] = "--prompt-tokens";
    argv[n++] = bufs[0];
    argv[n++] = "--decode";
    argv[n++] = bufs[1];
    for (int i = 0; i < d->npass; i++)
        argv[n++] = (char *)d->pass[i];
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < DEMO_MAX_ARGS - 1; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
}

/*
 * Runs one engine to completion: spawns it, reads its JSON line within the
 * step deadline, and requires a clean exit. Returns false with a message.
 */
static bool run_engine(const demo_t *d, child_t *c, const char *role, const char *const extra[],
                       const char *const env[], engine_run_t *r)
{
    char b0[24], b1[24], b2[24], b3[24];
    char *bufs[4] = {b0, b1, b2, b3}, *argv[DEMO_MAX_ARGS];
    engine_argv(d, role, extra, bufs, argv);
    if (!child_spawn(c, argv, env))
        return false;
    char *line = NULL;
    line_status_t ls = child_read_line(c, kvs_cli_now() + d->step_timeout, &line);
    bool ok = ls == LINE_OK && parse_run(line, r);
    free(line);
    if (ls == LINE_TIMEOUT) {
        demo_err("%s did not finish within %.0f s (raise --timeout, or lower --tokens)", c->name,
                 d->step_timeout);
        return false;
    }
    if (ls == LINE_SIGNAL)
        return false;
    int code = child_stop(c, 10.0);
    if (!ok || code != 0) {
        child_report_failure(c, ok ? "failed at exit" : "printed no result");
        return false;
    }
    return true;
}

/*
 * Runs `kvshare bench transfer` with the decode fetch's shape: pieces of one
 * layer's block (@piece bytes), as many per batch as the fetch moved
 * (@pieces), scattered ids on both sides. Its figure is the anchor the warm
 * fetch is compared with. False when it did not run or printed nothing.
 */
static bool run_anchor(const demo_t *d, uint64_t piece, uint64_t pieces, double *gbps_p)
{
    char bb[24], batch[24];
    snprintf(bb, sizeof(bb), "%llu", (unsigned long long)piece);
    snprintf(batch, sizeof(batch), "%llu",
             (unsigned long long)(pieces == 0     ? 64
                                  : pieces > 4096 ? 4096
                                                  : pieces));
    char *argv[] = {(char *)d->self, "bench",   "transfer", "--block-bytes", bb,  "--blocks",
                    "4096",          "--batch", batch,      "--repeats",     "3", "--no-perftest",
                    "--json",        NULL};
    const char *env[] = {"KVSHARE_LISTEN", "KVSHARE_POOL", NULL};
    child_t c;
    child_init(&c, "kvshare bench transfer");
    bool ok = child_spawn(&c, argv, env);
    char *line = NULL;
    if (ok) {
        ok = child_read_line(&c, kvs_cli_now() + d->step_timeout, &line) == LINE_OK;
        child_stop(&c, 10.0);
    }
    cJSON *o = ok ? cJSON_Parse(line) : NULL;
    double g = o != NULL ? json_num(o, "gbps") : 0.0;
    cJSON_Delete(o);
    free(line);
    child_free(&c);
    *gbps_p = g;
    return g > 0;
}

/* Index of the first differing token, or -1 when identical. */
static long first_diff(const engine_run_t *a, const engine_run_t *b)
{
    size_t n = a->ntokens < b->ntokens ? a->ntokens : b->ntokens;
    for (size_t i = 0; i < n; i++)
        if (a->tokens[i] != b->tokens[i])
            return (long)i;
    return a->ntokens == b->ntokens ? -1 : (long)n;
}

/* The KV heads TP rank @r of @n holds of @h, by the example engine's rule
 * (vLLM's): h / n each, or one head replicated on n / h ranks when n > h. */
static bool tp_heads(uint64_t h, uint64_t r, uint64_t n, uint64_t *first_p, uint64_t *count_p)
{
    if (h == 0 || n == 0 || r >= n || (n <= h ? h % n : n % h) != 0)
        return false;
    *count_p = n <= h ? h / n : 1;
    *first_p = n <= h ? r * (h / n) : r * h / n;
    return true;
}

enum {
    O_JSON = 256,
    O_NO_REUSE,
    O_ZERO_COPY,
    O_TOKENS,
    O_DECODE,
    O_SHARED,
    O_TIMEOUT,
    O_PREFILL_TP,
    O_DECODE_TP,
    O_PREFILL_LAYOUT,
    O_DECODE_LAYOUT,
    O_LAYERS, /* from here on: engine options with a value, passed through */
    O_KV_HEADS,
    O_HEAD_DIM,
    O_D_MODEL,
    O_HEADS,
    O_FFN,
    O_VOCAB,
    O_THREADS,
    O_WEIGHT_SEED,
    O_PROMPT_SEED,
    O_ENGINE_END
};

static const struct option demo_options[] = {
    {"json", no_argument, NULL, O_JSON},
    {"no-reuse", no_argument, NULL, O_NO_REUSE},
    {"zero-copy", no_argument, NULL, O_ZERO_COPY},
    {"tokens", required_argument, NULL, O_TOKENS},
    {"decode", required_argument, NULL, O_DECODE},
    {"shared", required_argument, NULL, O_SHARED},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"prefill-tp", required_argument, NULL, O_PREFILL_TP},
    {"decode-tp", required_argument, NULL, O_DECODE_TP},
    {"prefill-kv-layout", required_argument, NULL, O_PREFILL_LAYOUT},
    {"decode-kv-layout", required_argument, NULL, O_DECODE_LAYOUT},
    {"layers", required_argument, NULL, O_LAYERS},
    {"kv-heads", required_argument, NULL, O_KV_HEADS},
    {"head-dim", required_argument, NULL, O_HEAD_DIM},
    {"d-model", required_argument, NULL, O_D_MODEL},
    {"heads", required_argument, NULL, O_HEADS},
    {"ffn", required_argument, NULL, O_FFN},
    {"vocab", required_argument, NULL, O_VOCAB},
    {"threads", required_argument, NULL, O_THREADS},
    {"weight-seed", required_argument, NULL, O_WEIGHT_SEED},
    {"prompt-seed", required_argument, NULL, O_PROMPT_SEED},
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t demo_cmd = {"demo", usage, demo_options};

/* Returns -1 to run, else the exit code: 0 after --help, 2 for a usage error. */
static int parse_args(int argc, char **argv, demo_t *d)
{
    /* The engine's option names, as the engine spells them ("--lay" is "--layers" here). */
    static char names[O_ENGINE_END - O_LAYERS][32];
    int c;
    while ((c = kvs_cli_getopt(&demo_cmd, argc, argv)) != -1) {
        uint64_t x, *dst = &x;
        switch (c) {
        case O_JSON:
            d->json = true;
            continue;
        case O_NO_REUSE:
            d->no_reuse = true;
            continue;
        case O_ZERO_COPY:
            if (d->npass + 1 > (int)(sizeof(d->pass) / sizeof(d->pass[0])))
                return kvs_cli_usage_error(&demo_cmd, "too many engine options");
            d->pass[d->npass++] = "--zero-copy";
            continue;
        case O_TOKENS:
            if (!kvs_cli_parse_u64("--tokens", optarg, 2 * DEMO_BLOCK_TOKENS, 1u << 20, &d->tokens))
                return 2;
            continue;
        case O_DECODE:
            if (!kvs_cli_parse_u64("--decode", optarg, 1, 1u << 16, &d->decode))
                return 2;
            continue;
        case O_SHARED:
            if (!kvs_cli_parse_u64("--shared", optarg, 1, 99, &d->shared_pct))
                return 2;
            continue;
        case O_TIMEOUT:
            if (!kvs_cli_parse_u64("--timeout", optarg, 1, 86400, &d->timeout_s))
                return 2;
            continue;
        case O_PREFILL_TP:
        case O_DECODE_TP:
            if (!kvs_cli_parse_u64(c == O_PREFILL_TP ? "--prefill-tp" : "--decode-tp", optarg, 1,
                                   DEMO_MAX_TP, c == O_PREFILL_TP ? &d->prefill_tp : &d->decode_tp))
                return 2;
            continue;
        case O_PREFILL_LAYOUT:
        case O_DECODE_LAYOUT:
            if (strcmp(optarg, "nhd") != 0 && strcmp(optarg, "hnd") != 0)
                return kvs_cli_usage_error(
                    &demo_cmd, "%s '%s': accepted: nhd, hnd",
                    c == O_PREFILL_LAYOUT ? "--prefill-kv-layout" : "--decode-kv-layout", optarg);
            *(c == O_PREFILL_LAYOUT ? &d->prefill_layout : &d->decode_layout) = optarg;
            continue;
        case O_LAYERS:
            dst = &d->layers;
            break;
        case O_KV_HEADS:
            dst = &d->kv_heads;
            break;
        case O_HEAD_DIM:
            dst = &d->head_dim;
            break;
        case O_D_MODEL:
        case O_HEADS:
        case O_FFN:
        case O_VOCAB:
        case O_THREADS:
        case O_WEIGHT_SEED:
        case O_PROMPT_SEED:
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
        /* An engine option: checked here so a typo fails before any process starts; the
         * engine applies its own limits too. */
        const char *name = kvs_cli_opt_name(&demo_cmd, c, names[c - O_LAYERS], sizeof(names[0]));
        bool seed = c == O_WEIGHT_SEED || c == O_PROMPT_SEED;
        if (!kvs_cli_parse_u64(name, optarg, seed ? 0 : 1, seed ? UINT64_MAX : (1u << 20), dst))
            return 2;
        if (d->npass + 2 > (int)(sizeof(d->pass) / sizeof(d->pass[0])))
            return kvs_cli_usage_error(&demo_cmd, "too many engine options");
        d->pass[d->npass++] = name;
        d->pass[d->npass++] = optarg;
    }
    if (kvs_cli_no_operands(&demo_cmd, argc, argv) != 0)
        return 2;
    /* Every rank's heads must be a whole share, as in vLLM. */
    uint64_t h0, nh;
    for (int side = 0; side < 2; side++) {
        const uint64_t n = side == 0 ? d->prefill_tp : d->decode_tp;
        if (!tp_heads(d->kv_heads, 0, n, &h0, &nh))
            return kvs_cli_usage_error(
                &demo_cmd,
                "%s %llu: the %llu KV heads (--kv-heads) do not split over "
                "%llu ranks (need kv-heads %% tp == 0, or tp %% kv-heads == 0)",
                side == 0 ? "--prefill-tp" : "--decode-tp", (unsigned long long)n,
                (unsigned long long)d->kv_heads, (unsigned long long)n);
    }
    return -1;
}

/* Figures of the whole run, printed as a table or one JSON object. */
typedef struct results {
    engine_run_t prefill, decode, recompute, reuse, reuse_check;
    bool identical;
    long diff_at;
    bool reuse_ran, reuse_identical;
    long reuse_diff_at;
    char reuse_skip[1024]; /* why the pool steps were skipped; "" if they ran */
    char pool_addr[128], prefill_addr[128];
    uint64_t diverge_at;
    /* TP: prefill rank p listens at prefill_addrs[p] (prefill_addr is rank
     * 0's); decode rank 0 is `decode`, ranks 1.. are dec_rank[1..]. */
    char prefill_addrs[DEMO_MAX_TP][128];
    engine_run_t dec_rank[DEMO_MAX_TP];
    /* The prompt's fetched KV once (kv_bytes), how many decode ranks hold
     * each head (replication), and what the decode ranks fetched in all. */
    uint64_t kv_bytes, replication, total_bytes;
    char slice_dir[PATH_MAX]; /* where decode ranks 1.. leave their shares */
    /* The anchor: `kvshare bench transfer` at the fetch's piece size, this run */
    double bench_gbps;
    uint64_t bench_block_bytes;
} results_t;

static int print_json(const demo_t *d, const results_t *r)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return kvs_cli_print_json("demo", NULL);
    const double ratio = r->recompute.ttft_ms > 0 ? r->decode.ttft_ms / r->recompute.ttft_ms : 0.0;
    cJSON_AddStringToObject(o, "engine", d->engine); /* a path: any bytes but NUL */
    cJSON_AddNumberToObject(o, "tokens", (double)d->tokens);
    cJSON_AddNumberToObject(o, "decode", (double)d->decode);
    cJSON_AddNumberToObject(o, "prefill_ms", r->prefill.prefill_ms);
    cJSON_AddNumberToObject(o, "hit_tokens", (double)r->decode.hit_tokens);
    cJSON_AddNumberToObject(o, "lookup_ms", r->decode.lookup_ms);
    cJSON_AddNumberToObject(o, "fetch_ms", r->decode.fetch_ms);
    cJSON_AddNumberToObject(o, "ttft_fetched_ms", r->decode.ttft_ms);
    cJSON_AddNumberToObject(o, "ttft_recompute_ms", r->recompute.ttft_ms);
    cJSON_AddNumberToObject(o, "ratio", ratio);
    cJSON_AddNumberToObject(o, "bytes", (double)r->total_bytes);
    cJSON_AddNumberToObject(o, "gbps", r->decode.fetch_gbps);
    cJSON_AddNumberToObject(o, "fetch_gbps_cold", r->decode.fetch_gbps);
    cJSON_AddNumberToObject(o, "fetch_gbps_warm", r->decode.warm_fetch_gbps);
    cJSON_AddNumberToObject(o, "lookup_ms_warm", r->decode.warm_lookup_ms);
    cJSON_AddNumberToObject(o, "fetch_ms_warm", r->decode.warm_fetch_ms);
    if (r->bench_gbps > 0) {
        cJSON_AddNumberToObject(o, "bench_transfer_block_bytes", (double)r->bench_block_bytes);
        cJSON_AddNumberToObject(o, "bench_transfer_gbps", r->bench_gbps);
        cJSON_AddNumberToObject(o, "ratio_warm_bench", r->decode.warm_fetch_gbps / r->bench_gbps);
    } else {
        cJSON_AddNullToObject(o, "bench_transfer_gbps");
    }
    cJSON_AddBoolToObject(o, "identical", r->identical);
    cJSON_AddNumberToObject(o, "prefill_tp", (double)d->prefill_tp);
    cJSON_AddNumberToObject(o, "decode_tp", (double)d->decode_tp);
    cJSON_AddStringToObject(o, "prefill_kv_layout", d->prefill_layout);
    cJSON_AddStringToObject(o, "decode_kv_layout", d->decode_layout);
    cJSON *per_rank = cJSON_AddArrayToObject(o, "decode_fetch_bytes");
    for (uint64_t k = 0; per_rank != NULL && k < d->decode_tp; k++)
        cJSON_AddItemToArray(
            per_rank,
            cJSON_CreateNumber((double)(k == 0 ? r->decode : r->dec_rank[k]).fetch_bytes));
    cJSON_AddNumberToObject(o, "kv_bytes", (double)r->kv_bytes);
    cJSON_AddNumberToObject(o, "kv_replication", (double)r->replication);
    if (d->decode_tp > 1)
        cJSON_AddNumberToObject(o, "gather_ms", r->decode.gather_ms);
    cJSON_AddStringToObject(o, "reuse", r->reuse_ran ? "ran" : "skipped");
    if (r->reuse_ran) {
        cJSON_AddNumberToObject(o, "reuse_shared_tokens", (double)r->diverge_at);
        cJSON_AddNumberToObject(o, "reuse_hit_tokens", (double)r->reuse.hit_tokens);
        cJSON_AddNumberToObject(o, "reuse_ttft_ms", r->reuse.ttft_ms);
        cJSON_AddNumberToObject(o, "reuse_ttft_recompute_ms", r->reuse_check.ttft_ms);
        cJSON_AddBoolToObject(o, "reuse_identical", r->reuse_identical);
    } else {
        cJSON_AddNullToObject(o, "reuse_hit_tokens");
        cJSON_AddNullToObject(o, "reuse_ttft_ms");
        cJSON_AddStringToObject(o, "reuse_skip_reason", r->reuse_skip);
    }
    return kvs_cli_print_json("demo", o);
}

static void print_table(const demo_t *d, const results_t *r)
{
    const double ratio = r->recompute.ttft_ms > 0 ? r->decode.ttft_ms / r->recompute.ttft_ms : 0.0;
    printf("\nprefill -> decode over UCX: %llu-token prompt, %llu generated tokens\n",
           (unsigned long long)d->tokens, (unsigned long long)d->decode);
    printf("  TTFT fetched   %10.1f ms  (lookup %.1f + fetch %.1f + prefill of the last "
           "%llu tokens %.1f)\n",
           r->decode.ttft_ms, r->decode.lookup_ms, r->decode.fetch_ms,
           (unsigned long long)r->decode.computed_tokens, r->decode.prefill_ms);
    printf("  TTFT recompute %10.1f ms  (local prefill of %llu tokens)\n", r->recompute.ttft_ms,
           (unsigned long long)d->tokens);
    printf("  ratio          %10.3f     (fetched / recompute; %.1fx faster)\n", ratio,
           ratio > 0 ? 1.0 / ratio : 0.0);
    printf("  moved          %10.1f MiB (%llu bytes: KV of %llu tokens%s) at %.2f GB/s\n",
           (double)r->decode.fetch_bytes / 1048576.0, (unsigned long long)r->decode.fetch_bytes,
           (unsigned long long)r->decode.hit_tokens,
           d->decode_tp > 1 ? ", decode rank 0's share" : "", r->decode.fetch_gbps);
    printf("  fetch warm     %10.1f ms  (the same prefix again, same engine, median of 3: lookup "
           "%.1f ms, %.2f GB/s; cold %.2f GB/s)\n",
           r->decode.warm_fetch_ms, r->decode.warm_lookup_ms, r->decode.warm_fetch_gbps,
           r->decode.fetch_gbps);
    if (d->prefill_tp > 1 || d->decode_tp > 1 || strcmp(d->prefill_layout, "nhd") != 0 ||
        strcmp(d->decode_layout, "nhd") != 0) {
        printf("  TP             prefill %llu rank%s (%s) -> decode %llu rank%s (%s); fetched",
               (unsigned long long)d->prefill_tp, d->prefill_tp > 1 ? "s" : "", d->prefill_layout,
               (unsigned long long)d->decode_tp, d->decode_tp > 1 ? "s" : "", d->decode_layout);
        for (uint64_t k = 0; k < d->decode_tp; k++)
            printf("%s%llu", k ? " + " : " ",
                   (unsigned long long)(k == 0 ? r->decode : r->dec_rank[k]).fetch_bytes);
        printf(" = %llu bytes (the prompt's KV%s)", (unsigned long long)r->total_bytes,
               r->replication > 1 ? " times the head replication" : " once");
        if (d->decode_tp > 1)
            printf("; rank 0 gathered the others' shares in %.1f ms", r->decode.gather_ms);
        printf("\n");
    }
    if (r->bench_gbps > 0)
        printf("  anchor         %10.2f GB/s (kvshare bench transfer, %llu-byte pieces, this run; "
               "warm / anchor %.2f)\n",
               r->bench_gbps, (unsigned long long)r->bench_block_bytes,
               r->decode.warm_fetch_gbps / r->bench_gbps);
    if (r->identical)
        printf("  tokens         identical  (%zu of %zu, fetched vs recompute)\n",
               r->decode.ntokens, r->recompute.ntokens);
    else
        printf("  tokens         DIFFER at position %ld (fetched %u, recompute %u)\n", r->diff_at,
               (size_t)r->diff_at < r->decode.ntokens ? r->decode.tokens[r->diff_at] : 0,
               (size_t)r->diff_at < r->recompute.ntokens ? r->recompute.tokens[r->diff_at] : 0);
    if (!r->reuse_ran) {
        printf("prefix reuse: skipped: %s\n", r->reuse_skip);
        return;
    }
    printf("prefix reuse from the cache pool (%s): replica 2, prompt sharing the first %llu "
           "tokens\n",
           r->pool_addr, (unsigned long long)r->diverge_at);
    printf("  hit            %10llu tokens fetched from the pool (of %llu shared), %llu "
           "computed\n",
           (unsigned long long)r->reuse.hit_tokens, (unsigned long long)r->diverge_at,
           (unsigned long long)r->reuse.computed_tokens);
    printf("  TTFT reuse     %10.1f ms  (recompute %.1f ms)\n", r->reuse.ttft_ms,
           r->reuse_check.ttft_ms);
    if (r->reuse_identical)
        printf("  tokens         identical  (%zu of %zu, reuse vs recompute)\n", r->reuse.ntokens,
               r->reuse_check.ntokens);
    else
        printf("  tokens         DIFFER at position %ld (reuse vs recompute)\n", r->reuse_diff_at);
}

static void free_run(engine_run_t *r)
{
    free(r->tokens);
    r->tokens = NULL;
}

int kvs_cli_demo(int argc, char **argv)
{
    demo_t d = {.tokens = 4096,
                .decode = 32,
                .shared_pct = 75,
                .layers = 4,
                .kv_heads = 2,
                .head_dim = 64,
                .prefill_tp = 1,
                .decode_tp = 1,
                .prefill_layout = "nhd",
                .decode_layout = "nhd"};
    int rc = parse_args(argc, argv, &d);
    if (rc >= 0)
        return rc;
    ssize_t sl = readlink("/proc/self/exe", d.self, sizeof(d.self) - 1);
    if (sl <= 0) {
        demo_err("readlink /proc/self/exe: %s", strerror(errno));
        return 1;
    }
    d.self[sl] = '\0';
    if (!find_engine(&d))
        return 1;
    /* Auth is on by default: the pool node and the engines share one token. */
    if (!kvs_cli_run_token("demo"))
        return 1;
    /* Prefill grows with the square of the prompt (attention): 120 s per step
     * at 4096 tokens on a small machine, never under 60 s. */
    double scale = (double)d.tokens / 4096.0;
    d.step_timeout =
        d.timeout_s > 0 ? (double)d.timeout_s : (60.0 + 60.0 * (scale > 1 ? scale * scale : 1.0));
    g_step.tty = isatty(2) == 1;

    /* Ctrl-C and kill end the demo through the cleanup below, never leaving
     * an engine behind; no SA_RESTART, so a blocked poll() returns. */
    struct sigaction sa = {.sa_handler = on_signal}, old[3];
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &sa, &old[i]);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);

    const double t_start = kvs_cli_now();
    child_t pool, prefill[DEMO_MAX_TP], decode[DEMO_MAX_TP], reuse, recompute;
    char names[2][DEMO_MAX_TP][32];
    const bool tp = d.prefill_tp > 1 || d.decode_tp > 1;
    for (int k = 0; k < DEMO_MAX_TP; k++) {
        if (tp) {
            snprintf(names[0][k], sizeof(names[0][k]), "prefill rank %d", k);
            snprintf(names[1][k], sizeof(names[1][k]), "decode rank %d", k);
        } else { /* the names the demo always had */
            snprintf(names[0][k], sizeof(names[0][k]), "prefill engine");
            snprintf(names[1][k], sizeof(names[1][k]), "decode engine");
        }
        child_init(&prefill[k], names[0][k]);
        child_init(&decode[k], names[1][k]);
    }
    child_init(&pool, "cache-pool node (kvshare serve)");
    child_init(&reuse, "decode replica 2");
    child_init(&recompute, "recompute engine");
    results_t res = {.identical = false};
    char *line = NULL, ntok[24], div[24], cap[32], listen_env[] = "KVSHARE_LISTEN=127.0.0.1:0";
    char pool_env[160] = "KVSHARE_POOL";
    rc = 1;
    snprintf(ntok, sizeof(ntok), "%llu", (unsigned long long)d.tokens);
    res.diverge_at = d.tokens * d.shared_pct / 100;
    snprintf(div, sizeof(div), "%llu", (unsigned long long)res.diverge_at);
    /* The prompt's KV as fetched (its full blocks but the last token's), and
     * how many decode ranks hold each head: what the ranks' bytes must add
     * up to. */
    const uint64_t want_hits = (d.tokens - 1) / DEMO_BLOCK_TOKENS * DEMO_BLOCK_TOKENS;
    res.kv_bytes = want_hits * d.layers * 2 * d.kv_heads * d.head_dim * 4;
    res.replication = d.decode_tp > d.kv_heads ? d.decode_tp / d.kv_heads : 1;
    /* Prefix reuse runs between engines of one layout at TP 1: the pool
     * steps are about replicas, not about heterogeneous ranks. */
    const bool hetero = tp || strcmp(d.prefill_layout, d.decode_layout) != 0;
    if (hetero && !d.no_reuse)
        snprintf(res.reuse_skip, sizeof(res.reuse_skip),
                 "prefill TP %llu (%s) -> decode TP %llu (%s): prefix reuse runs at TP 1 with one "
                 "KV layout",
                 (unsigned long long)d.prefill_tp, d.prefill_layout,
                 (unsigned long long)d.decode_tp, d.decode_layout);
    /* Decode ranks 1.. hand their shares to rank 0 through files here. */
    if (d.decode_tp > 1) {
        const char *tmp = getenv("TMPDIR");
        snprintf(res.slice_dir, sizeof(res.slice_dir), "%s/kvshare-demo-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
        if (mkdtemp(res.slice_dir) == NULL) {
            demo_err("mkdtemp %s: %s", res.slice_dir, strerror(errno));
            res.slice_dir[0] = '\0';
            goto out;
        }
    }

    if (!d.json)
        fprintf(stderr, "kvshare demo: %llu-token prompt, %llu generated tokens; engine %s\n",
                (unsigned long long)d.tokens, (unsigned long long)d.decode, d.engine);

    /* 1. The cache-pool node. It is optional: without it only the prefix
     * reuse steps are skipped, with the reason. */
    step_begin(1, "starting cache-pool node (kvshare serve)");
    if (d.no_reuse) {
        snprintf(res.reuse_skip, sizeof(res.reuse_skip), "--no-reuse");
        step_end("skipped (--no-reuse)");
    } else if (res.reuse_skip[0]) {
        step_end("skipped: %s", res.reuse_skip);
    } else {
        /* Room for the prompt's KV twice over: eviction must not be what the
         * demo shows. */
        uint64_t kv = (d.tokens + DEMO_BLOCK_TOKENS) * d.layers * 2 * d.kv_heads * d.head_dim * 4;
        snprintf(cap, sizeof(cap), "%llu", (unsigned long long)(2 * kv + (64u << 20)));
        char *argv_pool[] = {d.self, "serve", "--listen", "127.0.0.1:0", "--capacity", cap, NULL};
        const char *env_pool[] = {"KVSHARE_LISTEN", "KVSHARE_POOL", NULL};
        if (!child_spawn(&pool, argv_pool, env_pool))
            goto out;
        line = NULL;
        line_status_t ls = child_read_line(&pool, kvs_cli_now() + 30.0, &line);
        if (ls == LINE_SIGNAL)
            goto out;
        if (ls == LINE_OK && sscanf(line, "ready %127s", res.pool_addr) == 1) {
            snprintf(pool_env, sizeof(pool_env), "KVSHARE_POOL=%s", res.pool_addr);
            step_end("ready at %s", res.pool_addr);
        } else {
            char how[32] = "not ready in 30 s", why[256];
            child_stop(&pool, 2.0);
            if (ls != LINE_TIMEOUT)
                child_how(&pool, how, sizeof(how));
            child_last_error(&pool, why, sizeof(why));
            snprintf(res.reuse_skip, sizeof(res.reuse_skip), "kvshare serve did not start (%s)%s%s",
                     how, why[0] ? ": " : "", why);
            step_end("skipped: %s", res.reuse_skip);
        }
        free(line);
        line = NULL;
    }

    /* 2. The prefill engine(s): each listens on a free loopback port,
     * prefills, publishes its TP rank's share (all of the KV at TP 1),
     * offloads to the pool, then says "ready ADDR". The ranks run at once. */
    step_begin(2, "%s: prefill of %llu tokens, publish%s", tp ? "prefill ranks" : "prefill engine",
               (unsigned long long)d.tokens, res.pool_addr[0] ? ", offload to the pool" : "");
    for (uint64_t k = 0; k < d.prefill_tp; k++) {
        char b0[24], b1[24], b2[24], b3[24], rank[24], size[24];
        char *bufs[4] = {b0, b1, b2, b3}, *av[DEMO_MAX_ARGS];
        snprintf(rank, sizeof(rank), "%llu", (unsigned long long)k);
        snprintf(size, sizeof(size), "%llu", (unsigned long long)d.prefill_tp);
        const char *extra[8];
        size_t n = 0;
        if (res.pool_addr[0])
            extra[n++] = "--offload";
        /* At TP 1 in NHD the engine's argv is the one it always was. */
        if (d.prefill_tp > 1 || strcmp(d.prefill_layout, "nhd") != 0) {
            extra[n++] = "--tp-rank";
            extra[n++] = rank;
            extra[n++] = "--tp-size";
            extra[n++] = size;
            extra[n++] = "--kv-layout";
            extra[n++] = d.prefill_layout;
        }
        extra[n] = NULL;
        const char *env[] = {listen_env, pool_env, NULL};
        engine_argv(&d, "prefill", extra, bufs, av);
        if (!child_spawn(&prefill[k], av, env))
            goto out;
    }
    {
        /* The ranks share the CPUs: each gets the step's time. */
        const double deadline = kvs_cli_now() + d.step_timeout * (double)d.prefill_tp;
        for (uint64_t k = 0; k < d.prefill_tp; k++) {
            child_t *c = &prefill[k];
            engine_run_t run = {0}, *rp = k == 0 ? &res.prefill : &run;
            line_status_t ls = child_read_line(c, deadline, &line);
            bool ok = ls == LINE_OK && parse_run(line, rp);
            free(line);
            line = NULL;
            if (ok) {
                ls = child_read_line(c, deadline, &line);
                ok = ls == LINE_OK && sscanf(line, "ready %127s", res.prefill_addrs[k]) == 1 &&
                     strchr(res.prefill_addrs[k], ':') != NULL;
                if (ls == LINE_OK && !ok) {
                    demo_err("the %s is not listening (it said '%s')", c->name, line);
                    free_run(&run);
                    goto out;
                }
                free(line);
                line = NULL;
            }
            free_run(&run);
            if (ls == LINE_SIGNAL)
                goto out;
            if (ls == LINE_TIMEOUT) {
                demo_err("the %s did not finish within %.0f s (raise --timeout, or "
                         "lower --tokens)",
                         c->name, d.step_timeout * (double)d.prefill_tp);
                goto out;
            }
            if (!ok) {
                child_stop(c, 2.0);
                child_report_failure(c, "exited before it was ready");
                goto out;
            }
        }
        snprintf(res.prefill_addr, sizeof(res.prefill_addr), "%s", res.prefill_addrs[0]);
    }
    if (res.pool_addr[0] && strcmp(res.prefill.offload, "ok") != 0) {
        char why[256];
        child_last_error(&prefill[0], why, sizeof(why));
        /* The node's own last word usually says why it refused or failed. */
        char node[200];
        child_last_error(&pool, node, sizeof(node));
        snprintf(res.reuse_skip, sizeof(res.reuse_skip),
                 "offload to the pool failed after %.1f s: %s%s%s%s", res.prefill.offload_ms / 1e3,
                 res.prefill.offload[0] ? res.prefill.offload : why,
                 node[0] ? " (kvshare serve's stderr: " : "", node, node[0] ? ")" : "");
    }
    step_end("%.2f s; listening on %s%s%s", res.prefill.prefill_ms / 1e3, res.prefill_addr,
             d.prefill_tp > 1 ? " (rank 0) and more" : "",
             !res.pool_addr[0]                        ? ""
             : strcmp(res.prefill.offload, "ok") == 0 ? "; offloaded to the pool"
                                                      : "; offload to the pool failed");

    /* 3. The decode engine(s) fetch the prompt's KV from the prefill
     * engine(s) over UCX. With TP, rank k fetches its share from each
     * prefill rank holding part of it; ranks 1.. write their shares to
     * files, which rank 0 gathers before it prefills the rest and decodes. */
    step_begin(3, "%s: fetch from %s%s over UCX, decode %llu tokens",
               d.decode_tp > 1 ? "decode ranks" : "decode engine", res.prefill_addr,
               d.prefill_tp > 1 ? " and the other prefill ranks" : "",
               (unsigned long long)d.decode);
    for (uint64_t k = d.decode_tp; k-- > 0;) {
        char rank[24], size[24], dump[PATH_MAX + 32], gathers[DEMO_MAX_TP][PATH_MAX + 32];
        const char *extra[2 * DEMO_MAX_TP + 2 * DEMO_MAX_TP + 16];
        size_t n = 0;
        snprintf(rank, sizeof(rank), "%llu", (unsigned long long)k);
        snprintf(size, sizeof(size), "%llu", (unsigned long long)d.decode_tp);
        /* The prefill ranks whose heads overlap this rank's, one per share
         * (prefill ranks that replicate a head are asked once). With as many
         * ranks on both sides, rank k's heads are prefill rank k's. */
        uint64_t dh0 = 0, dnh = 0, last = UINT64_MAX;
        tp_heads(d.kv_heads, k, d.decode_tp, &dh0, &dnh);
        if (d.prefill_tp == d.decode_tp) {
            extra[n++] = "--peer";
            extra[n++] = res.prefill_addrs[k];
        }
        for (uint64_t p = 0; p < d.prefill_tp && d.prefill_tp != d.decode_tp; p++) {
            uint64_t ph0 = 0, pnh = 0;
            tp_heads(d.kv_heads, p, d.prefill_tp, &ph0, &pnh);
            if (ph0 < dh0 + dnh && dh0 < ph0 + pnh && ph0 != last) {
                extra[n++] = "--peer";
                extra[n++] = res.prefill_addrs[p];
                last = ph0;
            }
        }
        if (d.decode_tp > 1 || strcmp(d.decode_layout, "nhd") != 0) {
            extra[n++] = "--tp-rank";
            extra[n++] = rank;
            extra[n++] = "--tp-size";
            extra[n++] = size;
            extra[n++] = "--kv-layout";
            extra[n++] = d.decode_layout;
        }
        if (k > 0) {
            snprintf(dump, sizeof(dump), "%s/rank%llu.kv", res.slice_dir, (unsigned long long)k);
            extra[n++] = "--dump-slice";
            extra[n++] = dump;
        } else {
            extra[n++] = "--fetch-again";
            for (uint64_t j = 1; j < d.decode_tp; j++) {
                snprintf(gathers[j], sizeof(gathers[j]), "%s/rank%llu.kv", res.slice_dir,
                         (unsigned long long)j);
                extra[n++] = "--gather";
                extra[n++] = gathers[j];
            }
        }
        extra[n] = NULL;
        const char *env[] = {"KVSHARE_LISTEN", "KVSHARE_POOL", NULL};
        if (!run_engine(&d, &decode[k], "decode", extra, env,
                        k == 0 ? &res.decode : &res.dec_rank[k]))
            goto out;
    }
    if (res.decode.hit_tokens == 0) {
        char why[256];
        child_last_error(&decode[0], why, sizeof(why));
        demo_err("the %s fetched nothing from the prefill engine (expected %llu "
                 "tokens)%s%s",
                 decode[0].name, (unsigned long long)want_hits, why[0] ? ": " : "", why);
        goto out;
    }
    /* Every rank fetched its share of the whole prompt, and rank 0 had all of
     * it before it prefilled: the shares add up to the prompt's KV once (per
     * replica of a head), neither more (overlap) nor less (a gap). */
    for (uint64_t k = 0; k < d.decode_tp; k++)
        res.total_bytes += (k == 0 ? res.decode : res.dec_rank[k]).fetch_bytes;
    if (res.total_bytes != res.kv_bytes * res.replication ||
        res.decode.computed_tokens != d.tokens - want_hits) {
        demo_err("the decode rank%s fetched %llu bytes in all (expected the prompt's KV, %llu "
                 "bytes%s) and rank 0 computed %llu of %llu prompt tokens itself (expected %llu)",
                 d.decode_tp > 1 ? "s" : "", (unsigned long long)res.total_bytes,
                 (unsigned long long)(res.kv_bytes * res.replication),
                 res.replication > 1 ? ", times the head replication" : "",
                 (unsigned long long)res.decode.computed_tokens, (unsigned long long)d.tokens,
                 (unsigned long long)(d.tokens - want_hits));
        goto out;
    }
    step_end("TTFT %.1f ms (%llu tokens fetched, %.1f MiB at %.2f GB/s; again: %.2f GB/s)%s",
             res.decode.ttft_ms, (unsigned long long)res.decode.hit_tokens,
             (double)res.total_bytes / 1048576.0, res.decode.fetch_gbps, res.decode.warm_fetch_gbps,
             d.decode_tp > 1 ? "; rank 0's share, rank 0's rate" : "");

    /* The prefill engines' job is done. Stopping them now proves the replica
     * below reads the pool, and keeps them off the CPU for the baseline. */
    for (uint64_t k = 0; k < d.prefill_tp; k++)
        if (child_stop(&prefill[k], 15.0) != 0) {
            child_report_failure(&prefill[k], "did not exit cleanly");
            goto out;
        }

    /* 4. A second decode replica, no peer: its prompt shares a prefix with
     * the first, which it finds in the pool. */
    step_begin(4, "prefix reuse: replica 2 with %s of %llu tokens shared, from the pool", div,
               (unsigned long long)d.tokens);
    if (res.reuse_skip[0]) {
        step_end("skipped: %s", res.reuse_skip);
    } else {
        /* The replica's layout is the decode side's (the same as the prefill
         * side's, or the pool steps are skipped). */
        const char *extra[] = {"--diverge-at", div, "--kv-layout", d.decode_layout, NULL};
        const char *env[] = {"KVSHARE_LISTEN", pool_env, NULL};
        if (!run_engine(&d, &reuse, "decode", extra, env, &res.reuse))
            goto out;
        res.reuse_ran = true;
        step_end("hit %llu tokens, TTFT %.1f ms", (unsigned long long)res.reuse.hit_tokens,
                 res.reuse.ttft_ms);
    }
    if (pool.pid > 0 && !pool.reaped) {
        /* Closing stdin is how `kvshare serve` is asked to stop; SIGTERM
         * too. A node that needs SIGKILL is a bug worth showing. */
        int code = child_stop(&pool, 5.0);
        if (pool.forced != 0)
            fprintf(stderr,
                    "kvshare demo: warning: %s did not stop within 5 s of its stdin closing; "
                    "sent %s\n",
                    pool.name, pool.forced == SIGTERM ? "SIGTERM" : "SIGTERM, then SIGKILL");
        if (WIFEXITED(pool.status) && code != 0) {
            child_report_failure(&pool, "failed at shutdown");
            goto out;
        }
    }

    /* 5. The baseline: the same prompt and weights, prefilled locally with
     * no kvshare at all, alone on the machine. */
    step_begin(5, "recompute: local prefill of %llu tokens, decode %llu",
               (unsigned long long)d.tokens, (unsigned long long)d.decode);
    {
        const char *env[] = {"KVSHARE_LISTEN", "KVSHARE_POOL", NULL};
        if (!run_engine(&d, &recompute, "recompute", NULL, env, &res.recompute))
            goto out;
    }
    res.diff_at = first_diff(&res.decode, &res.recompute);
    res.identical = res.diff_at < 0;
    step_end("TTFT %.1f ms; tokens %s", res.recompute.ttft_ms,
             res.identical ? "identical" : "DIFFER");

    /* 6. The same check for the replica that reused the pool's prefix. */
    step_begin(6, "recompute of replica 2's prompt");
    if (!res.reuse_ran) {
        step_end("skipped (prefix reuse did not run)");
    } else {
        child_t rc2;
        child_init(&rc2, "recompute engine (replica 2's prompt)");
        const char *extra[] = {"--diverge-at", div, NULL};
        const char *env[] = {"KVSHARE_LISTEN", "KVSHARE_POOL", NULL};
        bool ok = run_engine(&d, &rc2, "recompute", extra, env, &res.reuse_check);
        child_free(&rc2);
        if (!ok)
            goto out;
        res.reuse_diff_at = first_diff(&res.reuse, &res.reuse_check);
        res.reuse_identical = res.reuse_diff_at < 0;
        step_end("TTFT %.1f ms; tokens %s", res.reuse_check.ttft_ms,
                 res.reuse_identical ? "identical" : "DIFFER");
    }

    /* 7. The anchor for the fetch rate, measured now on the same machine. */
    {
        /* Pieces of decode rank 0's share of a block: what its fetch moved. */
        uint64_t h0 = 0, nh = d.kv_heads;
        tp_heads(d.kv_heads, 0, d.decode_tp, &h0, &nh);
        res.bench_block_bytes = DEMO_BLOCK_TOKENS * nh * d.head_dim * 2 * 4;
    }
    step_begin(7, "anchor: kvshare bench transfer at %llu-byte pieces",
               (unsigned long long)res.bench_block_bytes);
    if (!run_anchor(&d, res.bench_block_bytes, res.decode.hit_tokens / DEMO_BLOCK_TOKENS * d.layers,
                    &res.bench_gbps))
        step_end("failed; the warm fetch has no anchor in this run");
    else
        step_end("%.2f GB/s (warm fetch / anchor %.2f)", res.bench_gbps,
                 res.decode.warm_fetch_gbps / res.bench_gbps);

    rc = 0;
    if (d.json)
        rc = print_json(&d, &res);
    else
        print_table(&d, &res);
    if (!res.identical) {
        demo_err("fetched and recomputed tokens differ at position %ld", res.diff_at);
        rc = 1;
    }
    if (res.reuse_ran && !res.reuse_identical) {
        demo_err("replica 2's tokens differ from its recompute at position %ld", res.reuse_diff_at);
        rc = 1;
    }
    if (res.reuse_ran && res.reuse.hit_tokens == 0) {
        char why[256];
        child_last_error(&reuse, why, sizeof(why));
        demo_err("prefix reuse: replica 2 found nothing in the pool (expected %s tokens)%s%s", div,
                 why[0] ? ": " : "", why);
        rc = 1;
    }
    if (!d.json)
        fprintf(stderr, "kvshare demo: %s in %.1f s\n", rc == 0 ? "done" : "FAILED",
                kvs_cli_now() - t_start);

out:
    free(line);
    if (g_signal) {
        demo_err("interrupted by signal %d; stopping the processes", (int)g_signal);
        rc = 128 + g_signal;
    }
    /* Every exit path ends here: no process outlives the demo. */
    child_t *all[] = {&recompute, &reuse, &pool};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        child_free(all[i]);
    for (int k = DEMO_MAX_TP; k-- > 0;) {
        child_free(&decode[k]);
        child_free(&prefill[k]);
        free_run(&res.dec_rank[k]);
    }
    if (res.slice_dir[0]) {
        /* The shares hold the prompt's KV: nothing of it stays behind. */
        for (uint64_t k = 1; k < d.decode_tp; k++) {
            char f[PATH_MAX + 32];
            snprintf(f, sizeof(f), "%s/rank%llu.kv", res.slice_dir, (unsigned long long)k);
            unlink(f);
        }
        rmdir(res.slice_dir);
    }
    free_run(&res.prefill);
    free_run(&res.decode);
    free_run(&res.recompute);
    free_run(&res.reuse);
    free_run(&res.reuse_check);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &old[i], NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    return rc;
}
