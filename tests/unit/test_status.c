/* SPDX-License-Identifier: Apache-2.0 */
/* test_status.c - status strings and version. */
#include "kvshare.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

Test(status, every_code_has_its_own_text)
{
    const char *seen[32] = {0};
    int n = 0;
    for (int c = KVS_INPROGRESS; c >= KVS_ERR_TRANSPORT; c--) {
        const char *s = kvs_status_string((kvs_status_t)c);
        cr_assert_not_null(s);
        cr_assert_str_neq(s, "unknown status", "code %d has no text", c);
        for (int i = 0; i < n; i++)
            cr_assert_str_neq(s, seen[i], "code %d repeats another code's text", c);
        seen[n++] = s;
    }
    cr_assert_str_eq(kvs_status_string((kvs_status_t)-999), "unknown status");
}

Test(status, codes_are_stable)
{
    /* Append-only: these numbers are ABI. */
    cr_assert_eq(KVS_OK, 0);
    cr_assert_eq(KVS_INPROGRESS, 1);
    cr_assert_eq(KVS_ERR_NO_MEMORY, -2);
    cr_assert_eq(KVS_ERR_PEER_FAILED, -7);
    cr_assert_eq(KVS_ERR_STALE, -14);
}

Test(status, version_matches_header)
{
    char want[32];
    snprintf(want, sizeof(want), "%d.%d.%d", KVS_VERSION_MAJOR, KVS_VERSION_MINOR,
             KVS_VERSION_PATCH);
    cr_assert_str_eq(kvs_version(), want);
}
