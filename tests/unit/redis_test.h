/* SPDX-License-Identifier: Apache-2.0 */
/* redis_test.h - what the tests against a real redis-server share (test_ixredis.c,
 * test_ixredis_tls.c, test_ixredis_cluster.c): a free port, a monotonic clock, and starting
 * redis-server and waiting for it to be ready. Header-only: each test binary is one file. */
#ifndef KVS_REDIS_TEST_H
#define KVS_REDIS_TEST_H

#include "util_int.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A port nobody listens on now (bound, then closed). */
static inline int redis_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

static inline int64_t redis_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs argv (redis-cli, openssl) to its end: its exit status, -1 if it could not run. */
static inline int redis_test_run_wait(char *const *argv)
{
    kvs__spawn_t sp = {.argv = argv, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1};
    pid_t pid = kvs__spawn(&sp);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Starts argv (a redis-server command line; dies with the test) and waits for its "Ready to
 * accept connections" (10 s deadline). Returns its pid. */
static inline pid_t redis_test_start(char *const *argv)
{
    int pfd[2];
    cr_assert(pipe2(pfd, O_CLOEXEC) == 0);
    kvs__spawn_t sp = {.argv = argv,
                       .stdin_fd = -1,
                       .stdout_fd = pfd[1],
                       .stderr_fd = pfd[1],
                       .die_with_parent = true};
    pid_t pid = kvs__spawn(&sp);
    close(pfd[1]);
    cr_assert(pid > 0);
    char log[8192];
    size_t len = 0;
    log[0] = '\0';
    int64_t deadline = redis_test_now_ms() + 10000;
    while (strstr(log, "Ready to accept connections") == NULL) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        int64_t left = deadline - redis_test_now_ms();
        cr_assert(left > 0 && poll(&p, 1, (int)left) == 1, "redis-server not ready: %.*s", (int)len,
                  log);
        ssize_t r = read(pfd[0], log + len, sizeof(log) - 1 - len);
        cr_assert(r > 0, "redis-server exited: %.*s", (int)len, log);
        len += (size_t)r;
        log[len] = '\0';
        if (len > sizeof(log) / 2) { /* keep the tail */
            memmove(log, log + len - 200, 200);
            len = 200;
            log[len] = '\0';
        }
    }
    close(pfd[0]);
    return pid;
}

#endif
