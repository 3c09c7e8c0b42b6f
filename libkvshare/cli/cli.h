/* SPDX-License-Identifier: Apache-2.0 */
/* cli.h - shared helpers of the kvshare command's subcommands. */
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include "cmdline_int.h"
#include "kvshare.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

int kvs_cli_keys(int argc, char **argv);
int kvs_cli_bench(int argc, char **argv);
int kvs_cli_demo(int argc, char **argv);
int kvs_cli_bench_keys(int argc, char **argv);
int kvs_cli_bench_lookup(int argc, char **argv);
int kvs_cli_bench_transfer(int argc, char **argv);
int kvs_cli_serve(int argc, char **argv);
int kvs_cli_bench_pool(int argc, char **argv);
/* Locates a program of the project that a command runs: $ENV_VAR when set (it must be
 * executable), else NAME beside SELF (an install: PREFIX/bin/kvshare -> PREFIX/bin/NAME), else
 * where the build puts it (build/libkvshare/cli/kvshare -> build/BUILD_DIR/NAME). Writes its path
 * to out; false with why filled (a message naming what was tried). */
bool kvs_cli_find_program(const char *self, const char *name, const char *build_dir,
                          const char *env_var, char *out, size_t len, char *why, size_t wl);
/* `kvshare index ARGS` and `kvshare bench index ARGS`: exec kvshare-index (connectors/index),
 * found by kvs_cli_find_program ($KVSHARE_INDEX_BIN); bench adds its "bench" argument. Returns
 * only on failure (1, with a message). */
int kvs_cli_exec_index(bool bench, int argc, char **argv);
/* Starts argv[0] with its stdin and stdout on pipes; returns its pid or -1. */
pid_t kvs_cli_spawn(char *const argv[], int *to_child, FILE **from_child);
/* Auth is on by default, so a command that runs its own nodes and clients
 * (bench transfer, bench pool, demo) gives them all one token: unless
 * KVSHARE_AUTH_TOKEN_FILE is already set (the user's token, kept) or
 * KVSHARE_AUTH=none, it writes 32 random bytes, base64, to a new 0600 file
 * in $TMPDIR (else /tmp) and exports KVSHARE_AUTH_TOKEN_FILE, which every
 * child inherits. The file is removed when this process exits. Returns false
 * with a message on stderr when no token could be made. */
bool kvs_cli_run_token(const char *who);
/* `kvshare serve --events` (serve_events.c; built with libzmq and msgpack-c).
 * open: binds ENDPOINT (connect:ENDPOINT connects) a ZMQ PUB and makes a queue of at least
 * `queue` events; NULL with why filled. kvs_cli_events_on_block is the store observer to
 * give kvs_ctx_create (arg: the handle); it only queues. run: starts the publisher, topics
 * kv@<pod>@<model> (model NULL: the layout id in hex). close: publishes the rest and
 * AllBlocksCleared, stops, frees; after the context is destroyed. */
typedef struct kvs_cli_events kvs_cli_events_t;
kvs_cli_events_t *kvs_cli_events_open(const char *spec, uint64_t queue, char *why, size_t wl);
const char *kvs_cli_events_endpoint(const kvs_cli_events_t *ev);
/* Binds a replay ROUTER (vLLM's protocol) keeping the last `batches` batches; before run. */
int kvs_cli_events_replay(kvs_cli_events_t *ev, const char *endpoint, uint64_t batches, char *why,
                          size_t wl);
const char *kvs_cli_events_replay_endpoint(const kvs_cli_events_t *ev, char *buf, size_t len);
void kvs_cli_events_on_block(void *arg, const kvs_block_event_t *e);
int kvs_cli_events_run(kvs_cli_events_t *ev, const char *pod, const char *model, char *why,
                       size_t wl);
void kvs_cli_events_stats(const kvs_cli_events_t *ev, unsigned long long *published,
                          unsigned long long *dropped, unsigned long long *batches);
void kvs_cli_events_close(kvs_cli_events_t *ev);

/* Prints "kvshare: what: status text" to stderr; returns 1 (exit code). */
int kvs_cli_fail(const char *what, kvs_status_t status);

#endif
