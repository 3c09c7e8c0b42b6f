/* SPDX-License-Identifier: Apache-2.0 */
/* bench.c - `kvshare bench`: dispatch to the benchmarks. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#ifdef KVS_HAVE_BENCH_SHIM
#include "bench_shim.h"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: kvshare bench <what> [options] [--json]\n"
               "\n"
               "  keys     block keys hashed per second (16-token blocks), beside raw SHA-256\n"
               "  lookup   longest-prefix lookups: keys/s over 4096-block chains, 1M-block store\n"
               "  transfer fetch GB/s between two processes, beside memcpy and ucx_perftest\n"
               "  pool     put/fetch GB/s through pool nodes, hit rate of a shared-prefix load\n"
#ifdef KVS_HAVE_INDEX
               "  index    KV event ingest rate, prefix score p99 over 64 pods, bytes per pair\n"
#endif
#ifdef KVS_HAVE_BENCH_SHIM
               "  shim     ns per CUDA driver call with and without the LD_PRELOAD shim\n"
#endif
               "\n"
               "--json prints one JSON object per line instead of a table.\n");
}

int kvs_cli_bench(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "keys") == 0)
        return kvs_cli_bench_keys(argc - 1, argv + 1);
    if (strcmp(argv[1], "lookup") == 0)
        return kvs_cli_bench_lookup(argc - 1, argv + 1);
#ifdef KVS_HAVE_BENCH_SHIM
    if (strcmp(argv[1], "shim") == 0)
        return kvs_cli_bench_shim(argc - 1, argv + 1);
#endif
    if (strcmp(argv[1], "transfer") == 0)
        return kvs_cli_bench_transfer(argc - 1, argv + 1);
    if (strcmp(argv[1], "pool") == 0)
        return kvs_cli_bench_pool(argc - 1, argv + 1);
#ifdef KVS_HAVE_INDEX
    if (strcmp(argv[1], "index") == 0)
        return kvs_cli_exec_index(true, argc - 1, argv + 1);
#endif
    /* Options belong to a benchmark: `kvshare bench transfer --json`. */
    if (argv[1][0] == '-')
        fprintf(stderr, "kvshare bench: unknown option '%s' (options follow the benchmark)\n",
                argv[1]);
    else
        fprintf(stderr, "kvshare bench: unknown benchmark '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
