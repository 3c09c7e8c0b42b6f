/* SPDX-License-Identifier: Apache-2.0 */
/* bench_shim.h - `kvshare bench shim`: the LD_PRELOAD shim's cost per driver call. */
#ifndef KVS_CLI_BENCH_SHIM_H
#define KVS_CLI_BENCH_SHIM_H

/**
 * Runs the shim benchmark. argv[0] is the subcommand's name ("shim");
 * options: --json, --repeats N, --calls N, --help. Returns the exit code.
 */
int kvs_cli_bench_shim(int argc, char **argv);

#endif
