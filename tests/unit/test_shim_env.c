/* SPDX-License-Identifier: Apache-2.0 */
/* The shim's strict KVSHARE_* parsers (preload/src/env.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "preload_int.h"

Test(shim_env, bytes_accepts_plain_and_binary_suffixes)
{
    static const struct {
        const char *in;
        uint64_t out;
    } ok[] = {
        {"0", 0},
        {"1", 1},
        {"67108864", 67108864ull},
        {"64M", 64ull << 20},
        {"64MiB", 64ull << 20},
        {"64mib", 64ull << 20},
        {"1K", 1024},
        {"2GiB", 2ull << 30},
        {"1T", 1ull << 40},
        {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 12345;
        cr_expect_eq(kvs__preload_parse_bytes(ok[i].in, &v), KVS_OK, "%s", ok[i].in);
        cr_expect_eq(v, ok[i].out, "%s -> %llu", ok[i].in, (unsigned long long)v);
    }
}

Test(shim_env, bytes_rejects_everything_else_and_writes_nothing)
{
    static const char *const bad[] = {"",
                                      " 1",
                                      "1 ",
                                      "-1",
                                      "+1",
                                      "0x10",
                                      "1.5",
                                      "1KB",
                                      "1Ki",
                                      "1E",
                                      "M",
                                      "64X",
                                      "1e6",
                                      "18446744073709551616",
                                      "16777216TiB",
                                      "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 12345;
        cr_expect_eq(kvs__preload_parse_bytes(bad[i], &v), KVS_ERR_CONFIG, "'%s'", bad[i]);
        cr_expect_eq(v, 12345, "'%s' wrote the output", bad[i]);
    }
    cr_expect_eq(kvs__preload_parse_bytes(NULL, NULL), KVS_ERR_CONFIG);
}

Test(shim_env, bool_values)
{
    static const char *const yes[] = {"1", "true", "TRUE", "yes", "On"};
    static const char *const no[] = {"", "0", "false", "No", "off"};
    static const char *const bad[] = {"2", "y", "enable", " 1", "true "};
    int v;

    for (size_t i = 0; i < 5; i++) {
        v = -1;
        cr_expect_eq(kvs__preload_parse_bool(yes[i], &v), KVS_OK);
        cr_expect_eq(v, 1, "%s", yes[i]);
        v = -1;
        cr_expect_eq(kvs__preload_parse_bool(no[i], &v), KVS_OK);
        cr_expect_eq(v, 0, "%s", no[i]);
        v = -1;
        cr_expect_eq(kvs__preload_parse_bool(bad[i], &v), KVS_ERR_CONFIG, "%s", bad[i]);
        cr_expect_eq(v, -1);
    }
}

Test(shim_env, log_levels_match_libkvshare)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    int v;

    for (int i = 0; i < 6; i++) {
        v = -1;
        cr_expect_eq(kvs__preload_parse_log_level(names[i], &v), KVS_OK);
        cr_expect_eq(v, i);
    }
    cr_expect_eq(kvs__preload_parse_log_level("WARN", &v), KVS_ERR_CONFIG);
    cr_expect_eq(kvs__preload_parse_log_level("3", &v), KVS_ERR_CONFIG);
    cr_expect_eq(kvs__preload_parse_log_level("", &v), KVS_ERR_CONFIG);
}

Test(shim_env, stats_path_expands_pid)
{
    char out[64];

    cr_expect_eq(kvs__preload_expand_path("/tmp/s.%p.json", 42, out, sizeof(out)), KVS_OK);
    cr_expect_str_eq(out, "/tmp/s.42.json");
    cr_expect_eq(kvs__preload_expand_path("a%%b%p%p", 7, out, sizeof(out)), KVS_OK);
    cr_expect_str_eq(out, "a%b77");
    cr_expect_eq(kvs__preload_expand_path("/plain", 7, out, sizeof(out)), KVS_OK);
    cr_expect_str_eq(out, "/plain");
    cr_expect_eq(kvs__preload_expand_path("bad%d", 7, out, sizeof(out)), KVS_ERR_CONFIG);
    cr_expect_eq(kvs__preload_expand_path("trailing%", 7, out, sizeof(out)), KVS_ERR_CONFIG);
    cr_expect_eq(kvs__preload_expand_path("0123456789", 7, out, 10), KVS_ERR_NO_SPACE);
    cr_expect_eq(kvs__preload_expand_path("012345678", 7, out, 10), KVS_OK);
    cr_expect_eq(kvs__preload_expand_path("%p", 123456, out, 6), KVS_ERR_NO_SPACE);
}
