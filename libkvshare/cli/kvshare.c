/* SPDX-License-Identifier: Apache-2.0 */
/* kvshare.c - entry point of the `kvshare` command: dispatches to subcommands. */
#include "cli.h"
#include "util_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: kvshare <command> [options]\n"
               "\n"
               "commands:\n"
               "  keys     print vLLM-identical block keys for a token sequence\n"
               "  serve    run a cache-pool node (KVCachePool)\n"
#ifdef KVS_HAVE_INDEX
               "  index    vLLM KV events in, longest-prefix scores per pod out (HTTP)\n"
#endif
               "  demo     prefill -> decode end to end over kvshare, checked against recompute\n"
               "  bench    measure: keys, lookup, transfer, pool, shim (kvshare bench --help)\n"
               "  version  print the library version\n"
               "  help     this text\n"
               "\n"

               "Run 'kvshare <command> --help' for a command's options.\n"
               "Exit status of every command: 0 success, 1 a failure at run time, 2 a usage\n"
               "error (a bad option or value); --help prints to stdout and exits 0.\n");
}

static void version_usage(FILE *f)
{
    fprintf(f, "usage: kvshare version\n\nPrints the version of libkvshare in use.\n");
}

static int version(int argc, char **argv)
{
    static const struct option opts[] = {KVS_CLI_OPT_HELP_ENTRY, KVS_CLI_OPT_END};
    const kvs_cli_cmd_t cmd = {"version", version_usage, opts};
    int c = kvs_cli_getopt(&cmd, argc, argv);
    if (c != -1)
        return c == KVS_CLI_OPT_HELP ? 0 : 2;
    if (kvs_cli_no_operands(&cmd, argc, argv) != 0)
        return 2;
    printf("kvshare %s\n", kvs_version());
    return 0;
}

int kvs_cli_fail(const char *what, kvs_status_t status)
{
    fprintf(stderr, "kvshare: %s: %s\n", what, kvs_status_string(status));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "keys") == 0)
        return kvs_cli_keys(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return kvs_cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0)
        return kvs_cli_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return version(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0)
        return kvs_cli_serve(argc - 1, argv + 1);
#ifdef KVS_HAVE_INDEX
    if (strcmp(cmd, "index") == 0)
        return kvs_cli_exec_index(false, argc - 1, argv + 1);
#endif
    fprintf(stderr, "kvshare: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
