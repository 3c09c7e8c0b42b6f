/* SPDX-License-Identifier: Apache-2.0 */
/* main.c - kvshare-index: the index connector's own program.
 *
 *   kvshare-index [index options]        the index daemon (`kvshare index`)
 *   kvshare-index bench [bench options]  its benchmark (`kvshare bench index`)
 *
 * `kvshare` execs it for those two commands, so the daemon is the process a supervisor
 * signals. Options, messages and exit codes are the ones `kvshare index --help` and
 * `kvshare bench index --help` describe. */
#include "index.h"

#include <string.h>

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "bench") == 0)
        return kvs_cli_bench_index(argc - 1, argv + 1);
    return kvs_cli_index(argc, argv);
}
