/* SPDX-License-Identifier: Apache-2.0 */
/* cli.h - shared helpers of the kvshare command's subcommands. */
#ifndef KVS_CLI_H
#define KVS_CLI_H

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
int kvs_cli_index(int argc, char **argv);
int kvs_cli_bench_index(int argc, char **argv);
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
/* Binds and listens on HOST:PORT (IPv4 literal, [IPv6] literal or a name's first address).
 * Writes the bound "host:port" to bound; returns the socket, or -1 with why filled
 * (*usage 1: a bad value; 0: a bind/listen error). */
int kvs_cli_listen(const char *spec, char *bound, size_t bound_len, char *why, size_t wl,
                   int *usage);
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
/* splitmix64: distinct, well-spread test data and keys from an index. */
uint64_t kvs_cli_mix(uint64_t x);

/* Monotonic time in seconds. */
double kvs_cli_now(void);
/* Sorts n doubles, smallest first. */
void kvs_cli_sort(double *v, size_t n);
/* Median of n doubles (sorts them). */
double kvs_cli_median(double *v, int n);
/* Parses a non-negative integer argument; prints "kvshare NAME: OPT '...': ..." and
 * returns false on error. */
bool kvs_cli_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Parses a byte-size argument in the one size grammar (util/size.c: 65536, 64K, 1.5GiB; every
 * unit a power of 1024) within min..max; prints "kvshare NAME: OPT '...': ..." and returns false on
 * error. */
bool kvs_cli_parse_size(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Prints "kvshare: what: status text" to stderr; returns 1 (exit code). */
int kvs_cli_fail(const char *what, kvs_status_t status);

/* ---- every command: parse, run, print ----
 * Exit status of every command: 0 success, 1 a failure at run time, 2 a usage error (a bad
 * option, value or KVSHARE_* variable). --help prints the usage to stdout and exits 0. */

/* A command's name ("serve", "bench transfer": each message starts "kvshare NAME: "), its
 * usage text and its getopt_long table, which holds KVS_CLI_OPT_HELP_ENTRY and ends in
 * KVS_CLI_OPT_END. */
typedef struct kvs_cli_cmd {
    const char *name;
    void (*usage)(FILE *f);
    const struct option *opts;
} kvs_cli_cmd_t;

#define KVS_CLI_OPT_HELP_ENTRY                                                                     \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }
#define KVS_CLI_OPT_END                                                                            \
    {                                                                                              \
        NULL, 0, NULL, 0                                                                           \
    }
/* What kvs_cli_getopt returns besides an option's val and -1 (no more options). */
#define KVS_CLI_OPT_HELP (-2) /* --help or -h: usage printed on stdout; exit 0 */
#define KVS_CLI_OPT_BAD  (-3) /* unknown option, missing value: reported; exit 2 */

/* getopt_long over argv (argv[0] is the command's own name; options and operands may mix, "--"
 * ends the options). An unknown, ambiguous or valueless option is reported by the name the user
 * wrote ("kvshare serve: unknown option '--bogus'", "--listen needs a value") with the usage on
 * stderr. After -1, argv[optind..argc-1] are the operands. */
int kvs_cli_getopt(const kvs_cli_cmd_t *cmd, int argc, char **argv);
/* Prints "kvshare NAME: message" to stderr, NAME the command kvs_cli_getopt parses (the shared
 * value parsers above report through it). */
void kvs_cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "kvshare NAME: message" to stderr; returns 2, the exit code of a usage error. */
int kvs_cli_usage_error(const kvs_cli_cmd_t *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* For a command that takes no operands, after kvs_cli_getopt returned -1: 0 when none is left,
 * else reports "unexpected argument 'X'" and returns 2. */
int kvs_cli_no_operands(const kvs_cli_cmd_t *cmd, int argc, char **argv);
/* The value of option val in cmd's table as the user names it: "--listen". */
const char *kvs_cli_opt_name(const kvs_cli_cmd_t *cmd, int val, char *buf, size_t len);

/* Adds a number rounded to `decimals` places (so 3.14159 prints as 3.142, not 17 digits);
 * returns NULL when out of memory (cJSON's own adders never fail silently either). */
cJSON *kvs_cli_json_num(cJSON *o, const char *key, double v, int decimals);
/* Prints o on one line of stdout (cJSON escapes every string) and frees it; o may be NULL (out
 * of memory). Returns 0, or 1 with a message when o or its text could not be made. */
int kvs_cli_print_json(const char *who, cJSON *o);

#endif
