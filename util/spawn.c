/* SPDX-License-Identifier: Apache-2.0 */
/* spawn.c - the one way a kvshare program starts another: fork, wire fds, exec. */
#include "util_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* fd onto target, with close-on-exec off (dup2 onto itself would leave it on). */
static void wire(int fd, int target)
{
    if (fd < 0)
        return;
    if (fd == target)
        fcntl(fd, F_SETFD, 0);
    else
        dup2(fd, target);
}

pid_t kvs__spawn(const kvs__spawn_t *sp)
{
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid; /* the child's pid, or -1 with errno from fork */
    /* The child, between fork and exec: async-signal-safe calls only, plus setenv for
     * env_edits (documented as for a single-threaded parent). */
    if (sp->die_with_parent) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* the parent died before prctl took effect */
            _exit(127);
    }
    signal(SIGPIPE, SIG_DFL); /* an ignored disposition would survive exec */
    wire(sp->stdin_fd, 0);
    wire(sp->stdout_fd, 1);
    wire(sp->stderr_fd, 2);
    if (sp->envp != NULL) {
        execve(sp->argv[0], sp->argv, sp->envp);
    } else {
        for (size_t i = 0; sp->env_edits != NULL && sp->env_edits[i] != NULL; i++) {
            const char *e = sp->env_edits[i], *eq = strchr(e, '=');
            if (eq == NULL) {
                unsetenv(e);
            } else {
                char name[128];
                size_t n =
                    (size_t)(eq - e) < sizeof(name) - 1 ? (size_t)(eq - e) : sizeof(name) - 1;
                memcpy(name, e, n);
                name[n] = '\0';
                setenv(name, eq + 1, 1);
            }
        }
        execv(sp->argv[0], sp->argv);
    }
    dprintf(2, "exec %s: %s\n", sp->argv[0], strerror(errno));
    _exit(127);
}
