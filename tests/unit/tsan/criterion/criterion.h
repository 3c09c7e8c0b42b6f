/* SPDX-License-Identifier: Apache-2.0 */
/* minimal criterion stand-in for a TSan run (criterion's arena does not start under TSan) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef void (*shim_fn)(void);
struct shim_test {
    const char *name;
    shim_fn fn;
};
extern struct shim_test shim_tests[64];
extern int shim_ntests;
static void (*shim_init)(void), (*shim_fini)(void);
#define TestSuite(s, ...)                                                                          \
    static void shim_suite_##s(void) __attribute__((constructor));                                 \
    static void shim_suite_##s(void)                                                               \
    {                                                                                              \
        struct {                                                                                   \
            void (*init)(void);                                                                    \
            void (*fini)(void);                                                                    \
        } x = {__VA_ARGS__};                                                                       \
        shim_init = x.init;                                                                        \
        shim_fini = x.fini;                                                                        \
    }
#define Test(s, n, ...)                                                                            \
    static void s##_##n(void);                                                                     \
    static void __attribute__((constructor)) reg_##s##_##n(void)                                   \
    {                                                                                              \
        shim_tests[shim_ntests].name = #n;                                                         \
        shim_tests[shim_ntests++].fn = s##_##n;                                                    \
    }                                                                                              \
    static void s##_##n(void)
#define SHIM_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "FAIL %s:%d\n", __FILE__, __LINE__);                                       \
        abort();                                                                                   \
    } while (0)
#define cr_assert(c, ...)                                                                          \
    do {                                                                                           \
        if (!(c))                                                                                  \
            SHIM_FAIL();                                                                           \
    } while (0)
#define cr_assert_eq(a, b, ...)     cr_assert((a) == (b))
#define cr_assert_neq(a, b, ...)    cr_assert((a) != (b))
#define cr_assert_gt(a, b, ...)     cr_assert((a) > (b))
#define cr_assert_geq(a, b, ...)    cr_assert((a) >= (b))
#define cr_assert_lt(a, b, ...)     cr_assert((a) < (b))
#define cr_assert_leq(a, b, ...)    cr_assert((a) <= (b))
#define cr_assert_null(a, ...)      cr_assert((a) == NULL)
#define cr_assert_not_null(a, ...)  cr_assert((a) != NULL)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0)
#define cr_assert_not(c, ...)       cr_assert(!(c))
#define cr_log_info(...)            (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))
