/* SPDX-License-Identifier: Apache-2.0 */
/* The shim's strict KVSHARE_* parsers (preload/src/env.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "preload_int.h"

/* KVSHARE_KV_MIN_BYTES is read with kvs__size_parse (util/size.c), tested in test_util.c. */

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

/* KVSHARE_LOG is read with kvs__log_level_parse (util/loglevel.c), the library's own list. */

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
