/* SPDX-License-Identifier: Apache-2.0 */
/* cli_util.c - helpers shared by subcommands that run other processes. */
#include "cli.h"

#include <fcntl.h>
#include <unistd.h>

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
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execv(argv[0], argv);
        _exit(127);
    }
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
