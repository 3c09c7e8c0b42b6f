/* SPDX-License-Identifier: Apache-2.0 */
/* driver.c - runs test_kvindex.c's tests without criterion, for a ThreadSanitizer build
 * (criterion's shared arena does not start under TSan). Argument: a substring of the test
 * names to run (default: all). See run_tsan_kvindex.sh. */
#include "test_kvindex.c"

struct shim_test shim_tests[64];
int shim_ntests;

int main(int argc, char **argv)
{
    for (int i = 0; i < shim_ntests; i++) {
        if (argc > 1 && strstr(shim_tests[i].name, argv[1]) == NULL)
            continue;
        if (shim_init)
            shim_init();
        shim_tests[i].fn();
        if (shim_fini)
            shim_fini();
        fprintf(stderr, "ok %s\n", shim_tests[i].name);
    }
    return 0;
}
