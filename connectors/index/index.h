/* SPDX-License-Identifier: Apache-2.0 */
/* index.h - the commands of kvshare-index: the index daemon and its bench. `kvshare index` and
 * `kvshare bench index` exec this program (libkvshare/cli/cmd_exec.c), so their options,
 * messages and exit codes are these. */
#ifndef KVS_INDEX_H
#define KVS_INDEX_H

#include "kvshare.h"

/* argv[0] is the command's own name; exit status 0, 1 (run time) or 2 (usage). */
int kvs_cli_index(int argc, char **argv);
int kvs_cli_bench_index(int argc, char **argv);

#endif
