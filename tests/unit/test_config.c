/* SPDX-License-Identifier: Apache-2.0 */
/* test_config.c - settings from params, KVSHARE_* env and the JSON file, and their errors. */
#include "config_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Criterion runs each test in its own process, so setenv stays local. */
static kvs_status_t create_with(kvs_ctx_params_t *p, char *err, size_t len, kvs_ctx_h *ctx)
{
    p->field_mask |= KVS_CTX_FIELD_ERRBUF;
    p->errbuf = err;
    p->errbuf_len = len;
    return kvs_ctx_create(p, ctx);
}

static void expect_env_error(const char *var, const char *value, const char *accepted_fragment)
{
    char err[512];
    kvs_ctx_params_t p = {.field_mask = 0};
    kvs_ctx_h ctx = (kvs_ctx_h)0x1;
    cr_assert_eq(setenv(var, value, 1), 0);
    kvs_status_t st = create_with(&p, err, sizeof(err), &ctx);
    unsetenv(var);
    cr_assert_eq(st, KVS_ERR_CONFIG, "%s=%s: got %s", var, value, kvs_status_string(st));
    cr_assert_eq(ctx, (kvs_ctx_h)0x1, "failed create wrote *ctx_p");
    cr_assert(strstr(err, var) != NULL, "message does not name %s: %s", var, err);
    cr_assert(strstr(err, accepted_fragment) != NULL, "message lacks accepted values '%s': %s",
              accepted_fragment, err);
    char quoted[256];
    snprintf(quoted, sizeof(quoted), "'%s'", value);
    cr_assert(strstr(err, quoted) != NULL, "message does not quote the bad value: %s", err);
}

Test(config, every_bad_env_value_names_variable_and_accepted_values)
{
    expect_env_error("KVSHARE_LOG", "loud", "off, error, warn, info, debug or trace");
    expect_env_error("KVSHARE_CAPACITY", "lots", "512MiB");
    expect_env_error("KVSHARE_CAPACITY", "0", "a size > 0");
    expect_env_error("KVSHARE_CAPACITY", "-5GiB", "a size > 0");
    expect_env_error("KVSHARE_CAPACITY", "5 parsecs", "a size > 0");
    expect_env_error("KVSHARE_SLOT_BYTES", "x", "a size such as");
    expect_env_error("KVSHARE_PREFAULT", "yes", "0 or 1");
    expect_env_error("KVSHARE_STRATEGY", "fifo", "lru or lfu");
    expect_env_error("KVSHARE_HIGH_WATERMARK", "1.5", "a fraction in (0, 1]");
    expect_env_error("KVSHARE_HIGH_WATERMARK", "abc", "a fraction in (0, 1]");
    expect_env_error("KVSHARE_LOW_WATERMARK", "0", "a fraction in (0, 1]");
    expect_env_error("KVSHARE_PROGRESS", "spin", "thread or poll");
    expect_env_error("KVSHARE_POLL_US", "1001", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_POLL_US", "-1", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_POLL_US", "50us", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_POLL_US", "", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_THREAD_POLL_US", "2000", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_THREAD_POLL_US", "x", "microseconds, 0 to 1000");
    expect_env_error("KVSHARE_COPY_THREADS", "9", "0 to 8 (helper threads");
    expect_env_error("KVSHARE_COPY_THREADS", "-1", "0 to 8 (helper threads");
    expect_env_error("KVSHARE_COPY_THREADS", "two", "0 to 8 (helper threads");
    expect_env_error("KVSHARE_COPY_STREAM", "on", "auto (same-host copies");
    expect_env_error("KVSHARE_COPY_STREAM", "", "auto (same-host copies");
    expect_env_error("KVSHARE_FETCH_TIMEOUT_MS", "0", "milliseconds, 1 to 3600000");
    expect_env_error("KVSHARE_FETCH_TIMEOUT_MS", "5s", "milliseconds, 1 to 3600000");
    expect_env_error("KVSHARE_LEASE_TIMEOUT_MS", "-1", "milliseconds, 1 to 3600000");
    expect_env_error("KVSHARE_LISTEN", "localhost", "HOST:PORT");
    expect_env_error("KVSHARE_LISTEN", "host:99999", "HOST:PORT");
    expect_env_error("KVSHARE_LISTEN", ":80", "HOST:PORT");
    /* An IPv6 address needs brackets (it once passed as host "::1", port 80). */
    expect_env_error("KVSHARE_LISTEN", "::1:80", "HOST:PORT");
    expect_env_error("KVSHARE_LISTEN", "host:http", "HOST:PORT");
    expect_env_error("KVSHARE_TRANSPORT", "rdma", "auto, ucx, none, loop or loop-am");
}

Test(config, watermarks_must_be_ordered)
{
    char err[512];
    kvs_ctx_params_t p = {.field_mask = 0};
    kvs_ctx_h ctx;
    setenv("KVSHARE_HIGH_WATERMARK", "0.5", 1);
    setenv("KVSHARE_LOW_WATERMARK", "0.7", 1);
    cr_assert_eq(create_with(&p, err, sizeof(err), &ctx), KVS_ERR_CONFIG);
    cr_assert(strstr(err, "KVSHARE_LOW_WATERMARK") && strstr(err, "KVSHARE_HIGH_WATERMARK"), "%s",
              err);
}

Test(config, defaults_and_sizes)
{
    kvs__config_t c;
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV};
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert_eq(c.capacity_bytes, 1ull << 30);
    cr_assert_eq(c.strategy, KVS_STRATEGY_LRU);
    cr_assert_float_eq(c.high_watermark, 0.9, 1e-12);
    cr_assert_float_eq(c.low_watermark, 0.8, 1e-12);
    cr_assert_eq(c.fetch_timeout_ms, 5000);
    cr_assert_eq(c.lease_timeout_ms, 30000);
    cr_assert_eq(c.progress, KVS_PROGRESS_THREAD);
    cr_assert_eq(c.poll_us, KVS__POLL_US_DEFAULT);
    cr_assert_eq(c.thread_poll_us, KVS__THREAD_POLL_US_DEFAULT);
    cr_assert_eq(c.copy_threads, KVS__COPY_THREADS_DEFAULT);
    cr_assert(c.copy_stream);
    p.field_mask = 0;
    setenv("KVSHARE_COPY_STREAM", "off", 1);
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert(!c.copy_stream);
    unsetenv("KVSHARE_COPY_STREAM");
    cr_assert(c.shm_index);
    setenv("KVSHARE_SHM_INDEX", "off", 1);
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert(!c.shm_index);
    setenv("KVSHARE_SHM_INDEX", "yes", 1);
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_ERR_CONFIG);
    unsetenv("KVSHARE_SHM_INDEX");
    p.field_mask = KVS_CTX_FIELD_NO_ENV;
    cr_assert_eq(c.log_level, KVS_LOG_OFF);
    /* One size grammar (util/size.c, tested in test_util.c): "GB" is a power of 1024 here as
     * in the shim's KVSHARE_KV_MIN_BYTES (it was once 1e9 here and refused there). */
    static const struct {
        const char *in;
        uint64_t out;
    } sizes[] = {{"1GB", 1ull << 30}, {"1.5G", 3ull << 29}, {"2kb", 2048}, {"12345", 12345}};
    p.field_mask = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        setenv("KVSHARE_CAPACITY", sizes[i].in, 1);
        cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK, "%s", sizes[i].in);
        cr_expect_eq(c.capacity_bytes, sizes[i].out, "%s", sizes[i].in);
    }
    unsetenv("KVSHARE_CAPACITY");
    /* KVSHARE_POLL_US: both ends of its range are taken as given. */
    static const char *const polls[] = {"0", "1000", "37"};
    static const uint32_t poll_us[] = {0, 1000, 37};
    for (size_t i = 0; i < sizeof(polls) / sizeof(polls[0]); i++) {
        setenv("KVSHARE_POLL_US", polls[i], 1);
        cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK, "%s", polls[i]);
        cr_expect_eq(c.poll_us, poll_us[i], "%s", polls[i]);
    }
    unsetenv("KVSHARE_POLL_US");
}

/* The newest file write_tmp() made: removed at exit too, so a test that
 * fails between write_tmp() and its unlink() leaves nothing in /tmp (a
 * failed assertion ends the test's process before the unlink). */
static char tmp_path[64];

static void remove_tmp(void)
{
    if (tmp_path[0] != '\0')
        unlink(tmp_path);
}

static char *write_tmp(const char *text)
{
    static bool registered;
    char *path = tmp_path;
    if (!registered)
        registered = atexit(remove_tmp) == 0;
    remove_tmp(); /* an earlier test's file, if its unlink was skipped */
    snprintf(path, sizeof(tmp_path), "/tmp/kvs-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

Test(config, precedence_params_over_env_over_file)
{
    char *path = write_tmp("{\"strategy\": \"lfu\", \"capacity\": \"64MiB\", "
                           "\"fetch_timeout_ms\": 777, \"high_watermark\": 0.95}");
    setenv("KVSHARE_CONFIG", path, 1);
    setenv("KVSHARE_CAPACITY", "128MiB", 1);
    kvs__config_t c;
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_FETCH_TIMEOUT, .fetch_timeout_ms = 999};
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert_eq(c.strategy, KVS_STRATEGY_LFU, "file value applies");
    cr_assert_eq(c.capacity_bytes, 128ull << 20, "env beats file");
    cr_assert_eq(c.fetch_timeout_ms, 999, "params beat file");
    cr_assert_float_eq(c.high_watermark, 0.95, 1e-12);
    p.field_mask = KVS_CTX_FIELD_NO_ENV;
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert_eq(c.capacity_bytes, 1ull << 30, "NO_ENV ignores env and KVSHARE_CONFIG");
    unlink(path);
}

/* Only the winning value is parsed: a bad value that a higher source replaces is no error
 * (`kvshare serve --listen` over a stale KVSHARE_LISTEN), while the same value alone is. */
Test(config, overridden_values_are_not_checked)
{
    char *path = write_tmp("{\"strategy\": \"fifo\", \"capacity\": \"64MiB\"}");
    setenv("KVSHARE_CONFIG", path, 1);
    setenv("KVSHARE_STRATEGY", "lfu", 1);
    setenv("KVSHARE_LISTEN", "not-an-endpoint", 1);
    setenv("KVSHARE_CAPACITY", "lots", 1);
    kvs__config_t c;
    char err[512] = "";
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_LISTEN | KVS_CTX_FIELD_CAPACITY,
                          .listen = "127.0.0.1:0",
                          .capacity_bytes = 32ull << 20};
    cr_assert_eq(kvs__config_resolve(&p, &c, err, sizeof(err)), KVS_OK, "%s", err);
    cr_assert_str_eq(c.listen, "127.0.0.1:0", "params beat a bad env value");
    cr_assert_eq(c.capacity_bytes, 32ull << 20);
    cr_assert_eq(c.strategy, KVS_STRATEGY_LFU, "env beats a bad file value");
    /* Without the params, the bad env value is the error, named. */
    p.field_mask = KVS_CTX_FIELD_CAPACITY;
    cr_assert_eq(kvs__config_resolve(&p, &c, err, sizeof(err)), KVS_ERR_CONFIG);
    cr_assert(strstr(err, "KVSHARE_LISTEN='not-an-endpoint'") != NULL, "%s", err);
    /* Without the env value, the bad file value is. */
    unsetenv("KVSHARE_STRATEGY");
    p.field_mask = KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_LISTEN;
    cr_assert_eq(kvs__config_resolve(&p, &c, err, sizeof(err)), KVS_ERR_CONFIG);
    cr_assert(strstr(err, "'fifo'") != NULL && strstr(err, "\"strategy\"") != NULL, "%s", err);
    unlink(path);
}

static void expect_file_error(const char *text, const char *fragment)
{
    char err[512];
    char *path = write_tmp(text);
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_CONFIG_FILE | KVS_CTX_FIELD_NO_ENV,
                          .config_file = path};
    kvs_ctx_h ctx;
    kvs_status_t st = create_with(&p, err, sizeof(err), &ctx);
    unlink(path);
    cr_assert_eq(st, KVS_ERR_CONFIG, "%s: %s", text, kvs_status_string(st));
    cr_assert(strstr(err, fragment) != NULL, "'%s' not in: %s", fragment, err);
    cr_assert(strstr(err, path) != NULL, "message does not name the file: %s", err);
}

Test(config, bad_files)
{
    expect_file_error("{\"strategy\": \"fifo\"}", "lru or lfu");
    expect_file_error("{\"strategy\": \"fifo\"}", "key \"strategy\"");
    expect_file_error("{\"capasity\": 1}", "unknown key \"capasity\"");
    expect_file_error("{\"capacity\": true}", "must be a string or number");
    expect_file_error("{\"capacity\": ", "not valid JSON");
    expect_file_error("[1, 2]", "top level must be an object");
    expect_file_error("", "not valid JSON");

    char err[512];
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_CONFIG_FILE | KVS_CTX_FIELD_NO_ENV,
                          .config_file = "/nonexistent/kvshare.json"};
    kvs_ctx_h ctx;
    cr_assert_eq(create_with(&p, err, sizeof(err), &ctx), KVS_ERR_IO);
    cr_assert(strstr(err, "/nonexistent/kvshare.json") && strstr(err, "No such file"), "%s", err);
}

Test(config, remote_settings_without_transport_are_refused_clearly)
{
    char err[512];
    setenv("KVSHARE_LISTEN", "127.0.0.1:18515", 1);
    setenv("KVSHARE_TRANSPORT", "none", 1);
    kvs_ctx_params_t p = {.field_mask = 0};
    kvs_ctx_h ctx;
    cr_assert_eq(create_with(&p, err, sizeof(err), &ctx), KVS_ERR_UNSUPPORTED);
    cr_assert(strstr(err, "KVSHARE_LISTEN") != NULL, "%s", err);
}

static int sink_calls;
static kvs_log_level_t sink_level;
static void sink(void *arg, kvs_log_level_t level, const char *msg)
{
    (void)arg;
    (void)msg;
    sink_calls++;
    sink_level = level;
}

Test(config, errors_reach_the_log_sink_and_levels_filter)
{
    setenv("KVSHARE_STRATEGY", "fifo", 1);
    char err[256];
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_LOG_FN, .log_fn = sink};
    kvs_ctx_h ctx;
    cr_assert_eq(create_with(&p, err, sizeof(err), &ctx), KVS_ERR_CONFIG);
    cr_assert_eq(sink_calls, 1);
    cr_assert_eq(sink_level, KVS_LOG_ERROR);
    unsetenv("KVSHARE_STRATEGY");

    /* info lines appear at KVSHARE_LOG=info, not at the default warn */
    sink_calls = 0;
    p.field_mask = KVS_CTX_FIELD_LOG_FN | KVS_CTX_FIELD_NO_ENV;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    kvs_ctx_destroy(ctx);
    cr_assert_eq(sink_calls, 0);
    p.field_mask |= KVS_CTX_FIELD_LOG_LEVEL;
    p.log_level = KVS_LOG_INFO;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    kvs_ctx_destroy(ctx);
    cr_assert_gt(sink_calls, 0);
}
