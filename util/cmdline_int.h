/* SPDX-License-Identifier: Apache-2.0 */
/* cmdline_int.h - the command-line toolkit shared by the project's programs: `kvshare`
 * (libkvshare/cli) and `kvshare-index` (connectors/index). Target kvs_cmdline (util/cmdline.c;
 * links cJSON); never linked into a library, so its names keep the CLI's kvs_cli_ prefix. */
#ifndef KVS_CMDLINE_INT_H
#define KVS_CMDLINE_INT_H

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Binds and listens on HOST:PORT (IPv4 literal, [IPv6] literal or a name's first address).
 * Writes the bound "host:port" to bound; returns the socket, or -1 with why filled
 * (*usage 1: a bad value; 0: a bind/listen error). */
int kvs_cli_listen(const char *spec, char *bound, size_t bound_len, char *why, size_t wl,
                   int *usage);
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
