/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_exec.c - `kvshare index` and `kvshare bench index`: the index connector's program,
 * kvshare-index (connectors/index), run in this process's place. execv keeps the pid, so a
 * supervisor's SIGTERM, the `ready http://...` line and the exit code are the daemon's own. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int kvs_cli_exec_index(bool bench, int argc, char **argv)
{
    const char *who = bench ? "bench index" : "index";
    char self[PATH_MAX], prog[PATH_MAX], why[3 * PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl <= 0) {
        fprintf(stderr, "kvshare %s: readlink /proc/self/exe: %s\n", who, strerror(errno));
        return 1;
    }
    self[sl] = '\0';
    if (!kvs_cli_find_program(self, "kvshare-index", "connectors/index", "KVSHARE_INDEX_BIN", prog,
                              sizeof(prog), why, sizeof(why))) {
        fprintf(stderr, "kvshare %s: %s\n", who, why);
        return 1;
    }
    /* argv[0] is "index" (the command's name): [prog, ("bench"), argv[1..], NULL]. */
    char **args = calloc((size_t)argc + 2, sizeof(*args));
    if (args == NULL) {
        fprintf(stderr, "kvshare %s: out of memory\n", who);
        return 1;
    }
    int n = 0;
    args[n++] = prog;
    if (bench)
        args[n++] = "bench";
    for (int i = 1; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    fflush(NULL);
    execv(prog, args);
    fprintf(stderr, "kvshare %s: cannot run %s: %s\n", who, prog, strerror(errno));
    free(args);
    return 1;
}
