/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_util (util/): the endpoint, byte-size, DNS-name and log-level parsers, success and
 * refusal. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util_int.h"

Test(util_endpoint, accepts_names_v4_and_bracketed_v6)
{
    kvs__endpoint_t ep;
    char why[128];
    cr_assert_eq(kvs__endpoint_parse("127.0.0.1:9090", 0, &ep, why, sizeof(why)), 0, "%s", why);
    cr_expect_str_eq(ep.host, "127.0.0.1");
    cr_expect_str_eq(ep.port, "9090");
    cr_expect_eq(ep.port_num, 9090);
    cr_expect(ep.has_port && !ep.bracketed);
    cr_assert_eq(kvs__endpoint_parse("[::1]:0", 0, &ep, why, sizeof(why)), 0, "%s", why);
    cr_expect_str_eq(ep.host, "::1");
    cr_expect_eq(ep.port_num, 0);
    cr_expect(ep.bracketed);
    cr_assert_eq(kvs__endpoint_parse("pool.ns.svc:65535", 0, &ep, NULL, 0), 0);
    cr_expect_str_eq(ep.host, "pool.ns.svc");
    cr_expect_eq(ep.port_num, 65535);
    /* Leading zeros are digits too; the port is stored canonically. */
    cr_assert_eq(kvs__endpoint_parse("h:080", 0, &ep, NULL, 0), 0);
    cr_expect_str_eq(ep.port, "80");
}

Test(util_endpoint, optional_parts)
{
    kvs__endpoint_t ep;
    cr_assert_eq(kvs__endpoint_parse("pool", KVS__EP_PORT_OPTIONAL, &ep, NULL, 0), 0);
    cr_expect_str_eq(ep.host, "pool");
    cr_expect(!ep.has_port);
    cr_expect_str_eq(ep.port, "");
    cr_assert_eq(kvs__endpoint_parse("[fe80::1]", KVS__EP_PORT_OPTIONAL, &ep, NULL, 0), 0);
    cr_expect_str_eq(ep.host, "fe80::1");
    cr_assert_eq(kvs__endpoint_parse(":8443", KVS__EP_HOST_OPTIONAL, &ep, NULL, 0), 0);
    cr_expect_str_eq(ep.host, "");
    cr_expect_eq(ep.port_num, 8443);
    cr_expect_eq(kvs__endpoint_parse(":8443", 0, &ep, NULL, 0), -1);
    cr_expect_eq(kvs__endpoint_parse("pool", 0, &ep, NULL, 0), -1);
    cr_expect_eq(kvs__endpoint_parse("h:0", KVS__EP_PORT_NONZERO, &ep, NULL, 0), -1);
}

Test(util_endpoint, refuses_and_writes_nothing)
{
    static const char *const bad[] = {
        "",
        "host",
        ":80",
        "h:",
        "h:-1",
        "h:+1",
        "h:65536",
        "h:99999",
        "h:1x",
        "h: 1",
        "h:0x10",
        "::1:80",
        "::1",
        "[::1",
        "[]:80",
        "[::1]80",
        "[::1]:",
        "[::1]:http",
        "h:http",
        "a]:80",
        "[[::1]]:80",
        "h:1:2",
        "h:99999999999999999999",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvs__endpoint_t ep;
        memset(&ep, 0x5a, sizeof(ep));
        char why[128] = "";
        cr_expect_eq(kvs__endpoint_parse(bad[i], 0, &ep, why, sizeof(why)), -1, "'%s'", bad[i]);
        cr_expect_neq(why[0], '\0', "'%s' gave no reason", bad[i]);
        cr_expect_eq(ep.host[0], 0x5a, "'%s' wrote the output", bad[i]);
    }
    kvs__endpoint_t ep;
    char why[128];
    kvs__endpoint_parse("h:99999", 0, &ep, why, sizeof(why));
    cr_expect(strstr(why, "0 to 65535") != NULL, "%s", why);
    kvs__endpoint_parse("::1:80", 0, &ep, why, sizeof(why));
    cr_expect(strstr(why, "brackets") != NULL, "%s", why);
    char host[300];
    memset(host, 'a', sizeof(host));
    host[299] = '\0';
    host[290] = ':';
    cr_expect_eq(kvs__endpoint_parse(host, 0, &ep, why, sizeof(why)), -1);
    cr_expect_eq(kvs__endpoint_parse(NULL, 0, &ep, NULL, 0), -1);
}

Test(util_endpoint, format_brackets_v6)
{
    char out[64];
    kvs__endpoint_format(out, sizeof(out), "10.0.0.1", "80");
    cr_expect_str_eq(out, "10.0.0.1:80");
    kvs__endpoint_format(out, sizeof(out), "::1", "80");
    cr_expect_str_eq(out, "[::1]:80");
}

Test(util_size, one_grammar_powers_of_1024)
{
    static const struct {
        const char *in;
        uint64_t out;
    } ok[] = {
        {"0", 0},
        {"12345", 12345},
        {"12345B", 12345},
        {"1K", 1024},
        {"1k", 1024},
        {"1KB", 1024},
        {"2kb", 2048},
        {"1KiB", 1024},
        {"64M", 64ull << 20},
        {"64MB", 64ull << 20},
        {"64mib", 64ull << 20},
        {"1GB", 1ull << 30},
        {"4GiB", 4ull << 30},
        {"1.5G", 3ull << 29},
        {"0.5KiB", 512},
        {"1.0009765625K", 1025},
        {"1T", 1ull << 40},
        {"16777215TiB", 16777215ull << 40},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 7;
        char why[128];
        cr_expect_eq(kvs__size_parse(ok[i].in, &v, why, sizeof(why)), 0, "%s: %s", ok[i].in, why);
        cr_expect_eq(v, ok[i].out, "%s -> %llu", ok[i].in, (unsigned long long)v);
    }
}

Test(util_size, refuses_and_writes_nothing)
{
    static const char *const bad[] = {
        "",
        " 1",
        "1 ",
        "-1",
        "+1",
        "0x10",
        "1.5",
        "1.5B",
        "1.G",
        ".5G",
        "1Ki",
        "1E",
        "M",
        "64X",
        "1e6",
        "1 GB",
        "1GiBs",
        "18446744073709551616",
        "16777216TiB",
        "99999999999999999999",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 7;
        char why[128] = "";
        cr_expect_eq(kvs__size_parse(bad[i], &v, why, sizeof(why)), -1, "'%s'", bad[i]);
        cr_expect_eq(v, 7, "'%s' wrote the output", bad[i]);
        cr_expect(strstr(why, "powers of 1024") != NULL, "'%s': %s", bad[i], why);
    }
    cr_expect_eq(kvs__size_parse(NULL, NULL, NULL, 0), -1);
}

Test(util_loglevel, one_table)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    for (int i = 0; i < 6; i++) {
        int l = -1;
        cr_expect_str_eq(kvs__log_level_name(i), names[i]);
        cr_expect_eq(kvs__log_level_parse(names[i], &l), 0);
        cr_expect_eq(l, i);
    }
    int l = 42;
    cr_expect_eq(kvs__log_level_parse("INFO", &l), -1);
    cr_expect_eq(kvs__log_level_parse("warning", &l), -1);
    cr_expect_eq(kvs__log_level_parse("", &l), -1);
    cr_expect_eq(kvs__log_level_parse(NULL, &l), -1);
    cr_expect_eq(l, 42);
    cr_expect_str_eq(kvs__log_level_name(6), "?");
    cr_expect_str_eq(kvs__log_level_name(-1), "?");
}

Test(util_dns, labels_and_subdomains)
{
    static const char *const labels[] = {"a", "pool-1", "0abc", "a-b-c"};
    static const char *const bad_labels[] = {"", "-a", "a-", "A", "a_b", "a.b", "a b"};
    for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++)
        cr_expect(kvs__dns_label(labels[i], 63, 0), "%s", labels[i]);
    for (size_t i = 0; i < sizeof(bad_labels) / sizeof(bad_labels[0]); i++) {
        cr_expect(!kvs__dns_label(bad_labels[i], 63, 0), "%s", bad_labels[i]);
        cr_expect(!kvs__dns_subdomain(bad_labels[i]) || strchr(bad_labels[i], '.') != NULL, "%s",
                  bad_labels[i]);
    }
    cr_expect(!kvs__dns_label("0abc", 63, KVS__DNS_1035));
    cr_expect(kvs__dns_label("abc0", 63, KVS__DNS_1035));
    cr_expect(kvs__dns_label("abcd", 4, 0));
    cr_expect(!kvs__dns_label("abcde", 4, 0));
    char long_label[70];
    memset(long_label, 'a', sizeof(long_label));
    long_label[64] = '\0';
    cr_expect(!kvs__dns_label(long_label, 100, 0), "63 at most whatever max says");
    long_label[63] = '\0';
    cr_expect(kvs__dns_label(long_label, 100, 0));
    cr_expect(!kvs__dns_label(NULL, 63, 0));

    cr_expect(kvs__dns_subdomain("llama-token"));
    cr_expect(kvs__dns_subdomain("a.b-c.d0"));
    static const char *const bad_sub[] = {"", ".a", "a.", "a..b", "a.-b", "a-.b", "A.b", "a/b"};
    for (size_t i = 0; i < sizeof(bad_sub) / sizeof(bad_sub[0]); i++)
        cr_expect(!kvs__dns_subdomain(bad_sub[i]), "%s", bad_sub[i]);
    char big[300];
    memset(big, 'a', sizeof(big));
    big[253] = '\0';
    cr_expect(kvs__dns_subdomain(big), "one 253-character label");
    big[254 - 1] = 'a';
    big[254] = '\0';
    cr_expect(!kvs__dns_subdomain(big));
    cr_expect(!kvs__dns_subdomain(NULL));
}

/* Runs sp with its stdout on a pipe; returns the exit status, the output in out. */
static int run(kvs__spawn_t *sp, char *out, size_t len)
{
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    sp->stdout_fd = fds[1];
    pid_t pid = kvs__spawn(sp);
    cr_assert_gt(pid, 0);
    close(fds[1]);
    size_t used = 0;
    ssize_t got;
    while (used + 1 < len && (got = read(fds[0], out + used, len - 1 - used)) > 0)
        used += (size_t)got;
    out[used] = '\0';
    close(fds[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(util_spawn, env_edits_envp_and_exec_failure)
{
    char out[256];
    setenv("KVS_UTIL_GONE", "still here", 1);
    char *argv[] = {"/bin/sh", "-c", "echo \"$KVS_UTIL_SET|$KVS_UTIL_GONE\"", NULL};
    const char *edits[] = {"KVS_UTIL_SET=a=b", "KVS_UTIL_GONE", NULL};
    kvs__spawn_t sp = {.argv = argv, .env_edits = edits, .stdin_fd = -1, .stderr_fd = -1};
    cr_expect_eq(run(&sp, out, sizeof(out)), 0);
    cr_expect_str_eq(out, "a=b|\n");
    cr_expect_str_eq(getenv("KVS_UTIL_GONE"), "still here", "the parent's env is untouched");

    char *envp[] = {"KVS_UTIL_SET=only", NULL};
    kvs__spawn_t sp2 = {.argv = argv, .envp = envp, .stdin_fd = -1, .stderr_fd = -1};
    cr_expect_eq(run(&sp2, out, sizeof(out)), 0);
    cr_expect_str_eq(out, "only|\n");

    char *missing[] = {"/nonexistent/kvs-util-test", NULL};
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    kvs__spawn_t sp3 = {.argv = missing, .stdin_fd = -1, .stderr_fd = devnull};
    cr_expect_eq(run(&sp3, out, sizeof(out)), 127);
    close(devnull);
    unsetenv("KVS_UTIL_GONE");
}

Test(util_thp, bracketed_word_of_a_sysfs_setting)
{
    char out[16];
    cr_assert_eq(
        kvs__thp_bracketed("always within_size advise [never] deny force\n", out, sizeof(out)), 0);
    cr_expect_str_eq(out, "never");
    cr_assert_eq(kvs__thp_bracketed("always [inherit] within_size advise never", out, sizeof(out)),
                 0);
    cr_expect_str_eq(out, "inherit");
    cr_assert_eq(kvs__thp_bracketed("[within_size] advise", out, sizeof(out)), 0);
    cr_expect_str_eq(out, "within_size");
    cr_expect_eq(kvs__thp_bracketed("always advise never", out, sizeof(out)), -1);
    cr_expect_eq(kvs__thp_bracketed("always [] never", out, sizeof(out)), -1);
    cr_expect_eq(kvs__thp_bracketed("always [never", out, sizeof(out)), -1);
    cr_expect_eq(kvs__thp_bracketed("[Never]", out, sizeof(out)), -1);
    cr_expect_eq(kvs__thp_bracketed("[within_size]", out, 8), -1); /* does not fit */
    cr_expect(kvs__shmem_thp_off("never"));
    cr_expect(kvs__shmem_thp_off("deny"));
    cr_expect(!kvs__shmem_thp_off("advise"));
    cr_expect(!kvs__shmem_thp_off("unknown"));
    /* This machine's answer is one of the kernel's words, or "unknown". */
    const char *m = kvs__shmem_thp(out, sizeof(out));
    cr_expect(m == out && strlen(out) > 0);
}

/* Every alignment of both sides and lengths around the 16-byte head, the
 * 64-byte body and KVS__STREAM_MIN_BYTES: each byte of the range copied,
 * none beside it touched. */
Test(util_stream, copies_exactly_the_range_at_any_alignment)
{
    enum { CAP = 4096 + 256 };
    static uint8_t src[CAP], dst[CAP];
    for (size_t k = 0; k < CAP; k++)
        src[k] = (uint8_t)(k * 131u + 7u);
    const size_t lens[] = {0,   1,   15,  16,  17,  63,  64,   65,   127,  255,
                           256, 257, 271, 319, 320, 333, 1000, 2048, 4095, 4096};
    for (size_t so = 0; so < 64; so += 3) {
        for (size_t dof = 0; dof < 64; dof++) {
            for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
                size_t len = lens[li];
                memset(dst, 0xA5, CAP);
                kvs__copy_stream(dst + 64 + dof, src + so, len);
                for (size_t k = 0; k < 64 + dof; k++)
                    cr_assert_eq(dst[k], 0xA5, "src +%zu dst +%zu len %zu: byte %zu before", so,
                                 dof, len, k);
                cr_assert(memcmp(dst + 64 + dof, src + so, len) == 0,
                          "src +%zu dst +%zu len %zu: the copy differs", so, dof, len);
                for (size_t k = 64 + dof + len; k < CAP; k++)
                    cr_assert_eq(dst[k], 0xA5, "src +%zu dst +%zu len %zu: byte %zu after", so, dof,
                                 len, k);
            }
        }
    }
}
