/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_shim.c - `kvshare bench shim`: ns per cuMemAlloc / cuMemFree /
 * cuMemcpyHtoD against the fake driver, with and without the LD_PRELOAD
 * shim, measured in the same run. It re-executes a helper program twice per
 * repeat (alternating the order, as this machine is noisy) and reports the
 * medians and their ratio.
 *
 * Where things are: $KVSHARE_BENCH_SHIM_HELPER, $KVSHARE_BENCH_SHIM_PRELOAD
 * and $KVSHARE_BENCH_FAKECUDA_DIR override the build-tree paths compiled in.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_shim.h"
#include "cli.h"
#include "util_int.h"

extern char **environ;

#ifndef KVS_BENCH_SHIM_HELPER
#define KVS_BENCH_SHIM_HELPER ""
#endif
#ifndef KVS_BENCH_SHIM_PRELOAD
#define KVS_BENCH_SHIM_PRELOAD ""
#endif
#ifndef KVS_BENCH_FAKECUDA_DIR
#define KVS_BENCH_FAKECUDA_DIR ""
#endif
#ifndef KVS_BENCH_ASAN_RUNTIME
#define KVS_BENCH_ASAN_RUNTIME ""
#endif

#define BS_OPS         3
#define BS_MAX_REPEATS 101

static const char *const bs_ops[BS_OPS] = {"cuMemAlloc", "cuMemFree", "cuMemcpyHtoD"};

typedef struct bs_paths {
    const char *helper;
    const char *shim;
    const char *fakedir;
    const char *asan;
} bs_paths_t;

static const char *bs_path(const char *env, const char *built)
{
    const char *v = getenv(env);
    return v != NULL && v[0] != '\0' ? v : built;
}

/* Runs the helper once; fills ns[BS_OPS]. Returns 0 or -1 (message printed). */
static int bs_run(const bs_paths_t *p, int with_shim, long calls, double ns[BS_OPS])
{
    char preload[4096], libpath[4096], ncalls[32], out[512];
    char *argv[] = {(char *)p->helper, ncalls, NULL};
    char *envp[512];
    size_t n = 0, used = 0;
    int fds[2], status = 0, rc = -1;
    pid_t pid;
    ssize_t got;

    snprintf(ncalls, sizeof(ncalls), "%ld", calls);
    snprintf(libpath, sizeof(libpath), "LD_LIBRARY_PATH=%s", p->fakedir);
    if (p->asan[0] != '\0') {
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s:%s", p->asan, p->shim);
    } else {
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", p->shim);
    }
    for (char **e = environ; *e != NULL && n < 500; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 || strncmp(*e, "LD_LIBRARY_PATH=", 16) == 0 ||
            strncmp(*e, "KVSHARE_", 8) == 0) {
            continue; /* the same, clean settings for both runs */
        }
        envp[n++] = *e;
    }
    envp[n++] = libpath;
    if (with_shim) {
        envp[n++] = preload;
    }
    envp[n] = NULL;

    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "kvshare bench shim: pipe: %s\n", strerror(errno));
        return -1;
    }
    kvs__spawn_t sp = {
        .argv = argv, .envp = envp, .stdin_fd = -1, .stdout_fd = fds[1], .stderr_fd = -1};
    if ((pid = kvs__spawn(&sp)) < 0) {
        fprintf(stderr, "kvshare bench shim: cannot run %s: %s\n", p->helper, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    close(fds[1]);
    while (used + 1 < sizeof(out) &&
           ((got = read(fds[0], out + used, sizeof(out) - 1 - used)) > 0 ||
            (got < 0 && errno == EINTR))) {
        used += got > 0 ? (size_t)got : 0;
    }
    out[used] = '\0';
    close(fds[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "kvshare bench shim: %s failed (%s shim)\n", p->helper,
                with_shim ? "with" : "without");
        return -1;
    }
    if (sscanf(out, "{\"cuMemAlloc\":%lf,\"cuMemFree\":%lf,\"cuMemcpyHtoD\":%lf", &ns[0], &ns[1],
               &ns[2]) == 3) {
        rc = 0;
    } else {
        fprintf(stderr, "kvshare bench shim: unexpected helper output: %s\n", out);
    }
    return rc;
}

static void bs_usage(FILE *f)
{
    fprintf(f, "usage: kvshare bench shim [--repeats N] [--calls N] [--json]\n"
               "  ns per driver call against the fake driver, with and without the\n"
               "  LD_PRELOAD shim; medians of N repeats (default 7) of CALLS calls\n"
               "  (default 100000) each.\n");
}

enum { O_JSON = 256, O_REPEATS, O_CALLS };

static const struct option bs_options[] = {{"json", no_argument, NULL, O_JSON},
                                           {"repeats", required_argument, NULL, O_REPEATS},
                                           {"calls", required_argument, NULL, O_CALLS},
                                           KVS_CLI_OPT_HELP_ENTRY,
                                           KVS_CLI_OPT_END};
static const kvs_cli_cmd_t bs_cmd = {"bench shim", bs_usage, bs_options};

int kvs_cli_bench_shim(int argc, char **argv)
{
    bs_paths_t p;
    long repeats = 7, calls = 100000;
    int json = 0;
    double with[BS_OPS][BS_MAX_REPEATS], without[BS_OPS][BS_MAX_REPEATS];

    uint64_t v;
    int c;
    while ((c = kvs_cli_getopt(&bs_cmd, argc, argv)) != -1) {
        switch (c) {
        case O_JSON:
            json = 1;
            break;
        case O_REPEATS:
            if (!kvs_cli_parse_u64("--repeats", optarg, 1, BS_MAX_REPEATS, &v))
                return 2;
            repeats = (long)v;
            break;
        case O_CALLS:
            if (!kvs_cli_parse_u64("--calls", optarg, 1000, 100000000, &v))
                return 2;
            calls = (long)v;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    if (kvs_cli_no_operands(&bs_cmd, argc, argv) != 0)
        return 2;
    p.helper = bs_path("KVSHARE_BENCH_SHIM_HELPER", KVS_BENCH_SHIM_HELPER);
    p.shim = bs_path("KVSHARE_BENCH_SHIM_PRELOAD", KVS_BENCH_SHIM_PRELOAD);
    p.fakedir = bs_path("KVSHARE_BENCH_FAKECUDA_DIR", KVS_BENCH_FAKECUDA_DIR);
    p.asan = KVS_BENCH_ASAN_RUNTIME;
    if (access(p.helper, X_OK) != 0 || access(p.shim, R_OK) != 0 || p.fakedir[0] == '\0') {
        fprintf(stderr,
                "kvshare bench shim: needs the build tree's helper, shim and fake driver; "
                "set KVSHARE_BENCH_SHIM_HELPER, KVSHARE_BENCH_SHIM_PRELOAD and "
                "KVSHARE_BENCH_FAKECUDA_DIR (now '%s', '%s', '%s')\n",
                p.helper, p.shim, p.fakedir);
        return 1;
    }

    for (long r = 0; r < repeats; r++) {
        double a[BS_OPS], b[BS_OPS];
        /* Alternate which run goes first so drift hits both sides alike. */
        int first = (int)(r % 2);
        if (bs_run(&p, first, calls, first ? b : a) != 0 ||
            bs_run(&p, !first, calls, first ? a : b) != 0) {
            return 1;
        }
        for (int k = 0; k < BS_OPS; k++) {
            without[k][r] = a[k];
            with[k][r] = b[k];
        }
    }

    if (!json) {
        printf("kvshare bench shim: fake libcuda.so.1, %ld calls per run, median of %ld repeats\n",
               calls, repeats);
        printf("%-14s %12s %12s %12s %8s\n", "call", "no shim ns", "shim ns", "overhead ns",
               "ratio");
    }
    for (int k = 0; k < BS_OPS; k++) {
        double m0 = kvs_cli_median(without[k], (int)repeats);
        double m1 = kvs_cli_median(with[k], (int)repeats);
        double ratio = m0 > 0 ? m1 / m0 : 0;
        if (json) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "bench", "shim");
            cJSON_AddStringToObject(j, "call", bs_ops[k]);
            cJSON_AddStringToObject(j, "driver", "fake");
            cJSON_AddNumberToObject(j, "calls", (double)calls);
            cJSON_AddNumberToObject(j, "repeats", (double)repeats);
            kvs_cli_json_num(j, "ns_no_shim", m0, 1);
            kvs_cli_json_num(j, "ns_shim", m1, 1);
            kvs_cli_json_num(j, "overhead_ns", m1 - m0, 1);
            kvs_cli_json_num(j, "ratio", ratio, 3);
            if (kvs_cli_print_json("bench shim", j) != 0)
                return 1;
        } else {
            printf("%-14s %12.1f %12.1f %12.1f %8.2f\n", bs_ops[k], m0, m1, m1 - m0, ratio);
        }
    }
    return 0;
}
