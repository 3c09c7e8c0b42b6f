/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The LD_PRELOAD shim end to end: runs tests/integration/shim/shim_probe
 * under LD_PRELOAD=libkvshare_preload.so against the fake libcuda.so.1,
 * then checks its exit status, its stderr and the stats file it leaves.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define PROBE_DEADLINE_MS 60000

typedef struct probe_run {
    int status; /* exit code, or 128 + signal */
    pid_t pid;
    char err[16384]; /* the probe's stderr */
} probe_run_t;

static char g_dir[64];
/* The shim the probes preload; one test swaps in a copy. */
static const char *g_shim = KVS_TEST_SHIM;

static void make_dir(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/kvs-shim-test.XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
}

static void remove_dir(void)
{
    DIR *d = opendir(g_dir);
    struct dirent *e;
    char path[512];

    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof(path), "%s/%s", g_dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    rmdir(g_dir);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs @exe how scenario on|off with the shim preloaded and the fake driver
 * first on the library path; @env adds NAME=value entries (NULL-ended).
 * Variables of ours in the outer environment are dropped first. */
static void run_probe(probe_run_t *r, const char *exe, const char *how, const char *scenario,
                      const char *onoff, const char *const *env)
{
    char preload[1024], libpath[1024];
    char *argv[] = {(char *)exe, (char *)how, (char *)scenario, (char *)onoff, NULL};
    char *envp[256];
    size_t n = 0, used = 0;
    posix_spawn_file_actions_t fa;
    int pipefd[2], wstatus = 0;
    long deadline = now_ms() + PROBE_DEADLINE_MS;

    memset(r, 0, sizeof(*r));
    if (KVS_TEST_ASAN_RUNTIME[0] != '\0') {
        /* ASan's runtime must be the first object loaded. */
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s:%s", KVS_TEST_ASAN_RUNTIME, g_shim);
    } else {
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", g_shim);
    }
    snprintf(libpath, sizeof(libpath), "LD_LIBRARY_PATH=%s", KVS_TEST_FAKECUDA_DIR);
    for (char **e = environ; *e != NULL && n < 200; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 || strncmp(*e, "LD_LIBRARY_PATH=", 16) == 0 ||
            strncmp(*e, "KVSHARE_", 8) == 0 || strncmp(*e, "LSAN_OPTIONS=", 13) == 0) {
            continue;
        }
        envp[n++] = *e;
    }
    envp[n++] = preload;
    envp[n++] = libpath;
    for (size_t i = 0; env != NULL && env[i] != NULL && n < 254; i++) {
        envp[n++] = (char *)env[i];
    }
    envp[n] = NULL;

    cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDERR_FILENO);
    cr_assert_eq(posix_spawn(&r->pid, exe, &fa, NULL, argv, envp), 0, "spawn %s", exe);
    posix_spawn_file_actions_destroy(&fa);
    close(pipefd[1]);

    /* Read stderr to EOF (the probe exited or crashed), with a deadline. */
    for (;;) {
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        long left = deadline - now_ms();
        ssize_t got;
        char sink[512];

        if (left <= 0) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &wstatus, 0);
            close(pipefd[0]);
            cr_assert_fail("%s %s %s: no exit within %d ms", exe, how, scenario, PROBE_DEADLINE_MS);
        }
        if (poll(&pfd, 1, (int)left) <= 0) {
            continue;
        }
        if (used + 1 < sizeof(r->err)) {
            got = read(pipefd[0], r->err + used, sizeof(r->err) - 1 - used);
        } else {
            got = read(pipefd[0], sink, sizeof(sink));
            got = got > 0 ? 0 : got;
            if (got == 0) {
                continue;
            }
        }
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            break;
        }
        used += (size_t)got;
    }
    r->err[used] = '\0';
    close(pipefd[0]);
    cr_assert_eq(waitpid(r->pid, &wstatus, 0), r->pid);
    r->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

/* Lines of @text that start with @prefix (the shim's own, not the
 * sanitizers' notes on the forked child's inherited threads). */
static int count_lines(const char *text, const char *prefix)
{
    int n = 0;
    for (const char *line = text; *line != '\0';) {
        n += strncmp(line, prefix, strlen(prefix)) == 0;
        const char *nl = strchr(line, '\n');
        line = nl != NULL ? nl + 1 : line + strlen(line);
    }
    return n;
}

static void expect_ok(const probe_run_t *r, const char *what)
{
    cr_assert_eq(r->status, 0, "%s: probe exited %d; stderr:\n%s", what, r->status, r->err);
}

static cJSON *read_stats(const char *path)
{
    char buf[8192];
    ssize_t n;
    int fd = open(path, O_RDONLY);
    cJSON *json;

    cr_assert_geq(fd, 0, "stats file %s missing", path);
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    json = cJSON_Parse(buf);
    cr_assert_not_null(json, "stats file is not JSON: %s", buf);
    return json;
}

static double num(const cJSON *json, const char *field)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, field);
    cr_assert(cJSON_IsNumber(item), "stats field %s missing", field);
    return item->valuedouble;
}

static const char *str(const cJSON *json, const char *field)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, field);
    cr_assert(cJSON_IsString(item), "stats field %s missing", field);
    return item->valuestring;
}

static int count_substr(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

TestSuite(shim, .init = make_dir, .fini = remove_dir, .timeout = 120);

/* ---- every hook fires, through every way of reaching the driver --------- */
static void basic_on(const char *exe, const char *how)
{
    char stats[128];
    const char *env[3];
    probe_run_t r;
    cJSON *s;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.json", g_dir);
    env[0] = stats;
    env[1] = "KVSHARE_KV_MIN_BYTES=1MiB";
    env[2] = NULL;
    run_probe(&r, exe, how, "basic", "on", env);
    expect_ok(&r, how);
    cr_expect_str_empty(r.err, "nothing on stderr unless KVSHARE_LOG asks: %s", r.err);

    snprintf(stats, sizeof(stats), "%s/stats.json", g_dir);
    s = read_stats(stats);
    cr_expect_str_eq(str(s, "mode"), "active");
    cr_expect_eq(num(s, "pid"), (double)r.pid);
    cr_expect_eq(num(s, "allocations"), 5);
    cr_expect_eq(num(s, "frees"), 5);
    cr_expect_eq(num(s, "kv_regions"), 1);
    cr_expect_eq(num(s, "kv_registered"), 1);
    cr_expect_eq(num(s, "kv_min_bytes"), 1 << 20);
    cr_expect_eq(num(s, "copies_htod"), 5);
    cr_expect_eq(num(s, "copies_htod_bytes"), 5 * 4096);
    cr_expect_eq(num(s, "copies_dtoh"), 5);
    cr_expect_eq(num(s, "copies_dtoh_bytes"), 5 * 4096);
    cr_expect_eq(num(s, "copies_dtod"), 5);
    cr_expect_eq(num(s, "copies_dtod_bytes"), 5 * 4096);
    cr_expect_eq(num(s, "copies_other"), 1);
    cr_expect_eq(num(s, "copies_other_bytes"), 4096);
    cr_expect_eq(num(s, "observer_calls"), 16);
    cr_expect_eq(num(s, "errors"), 0);
    cr_expect_eq(num(s, "tracked"), 0);
    cr_expect_eq(num(s, "kvs_regions"), 0);
    cJSON_Delete(s);
}

Test(shim, linked_every_hook_fires)
{
    basic_on(KVS_TEST_PROBE_DIRECT, "linked");
}

Test(shim, dlsym_every_hook_fires)
{
    char stats[160];
    cJSON *s;

    basic_on(KVS_TEST_PROBE_DL, "dlsym");
    snprintf(stats, sizeof(stats), "%s/stats.json", g_dir);
    s = read_stats(stats);
    /* dlsym handed out a hook for each of the 31 hooked names. */
    cr_expect_geq(num(s, "dlsym_hooked"), 31);
    cJSON_Delete(s);
}

Test(shim, procaddr_every_hook_fires)
{
    char stats[160];
    cJSON *s;

    basic_on(KVS_TEST_PROBE_DL, "procaddr");
    snprintf(stats, sizeof(stats), "%s/stats.json", g_dir);
    s = read_stats(stats);
    cr_expect_geq(num(s, "procaddr_hooked"), 30);
    cr_expect_eq(num(s, "procaddr_unmatched"), 0);
    cJSON_Delete(s);
}

/* ---- disabled: a true no-op ---------------------------------------------- */
static void basic_off(const char *exe, const char *how)
{
    char stats[128], path[128];
    const char *env[] = {stats, "KVSHARE_KV_MIN_BYTES=1MiB", "KVSHARE_DISABLE=1",
                         "KVSHARE_LOG=debug", NULL};
    probe_run_t r;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.json", g_dir);
    run_probe(&r, exe, how, "basic", "off", env);
    expect_ok(&r, how);
    cr_expect_str_empty(r.err, "disabled shim wrote: %s", r.err);
    snprintf(path, sizeof(path), "%s/stats.json", g_dir);
    cr_expect_neq(access(path, F_OK), 0, "disabled shim wrote a stats file");
}

Test(shim, disabled_linked_is_noop)
{
    basic_off(KVS_TEST_PROBE_DIRECT, "linked");
}

Test(shim, disabled_dlsym_returns_real_pointers)
{
    basic_off(KVS_TEST_PROBE_DL, "dlsym");
}

Test(shim, disabled_procaddr_returns_real_pointers)
{
    basic_off(KVS_TEST_PROBE_DL, "procaddr");
}

/* ---- errno and return values --------------------------------------------- */
Test(shim, errno_and_results_untouched)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    const char *env_off[] = {"KVSHARE_KV_MIN_BYTES=1MiB", "KVSHARE_DISABLE=yes", NULL};
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "errno", "on", env);
    expect_ok(&r, "linked");
    run_probe(&r, KVS_TEST_PROBE_DL, "procaddr", "errno", "on", env);
    expect_ok(&r, "procaddr");
    run_probe(&r, KVS_TEST_PROBE_DL, "dlsym", "errno", "off", env_off);
    expect_ok(&r, "dlsym disabled");
}

/* ---- concurrency and fork ------------------------------------------------ */
Test(shim, eight_threads_allocate_and_free)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "threads", "on", env);
    expect_ok(&r, "linked");
    run_probe(&r, KVS_TEST_PROBE_DL, "procaddr", "threads", "on", env);
    expect_ok(&r, "procaddr");
}

/* The parent's context runs UCX when it forks; a child of such a process
 * cannot run UCX (ucx_tl.c), so the child's shim says why once and steps
 * aside at its first KV region, and every call of the engine still works. */
Test(shim, forked_child_reinitialises)
{
    char stats[128], path[384];
    /* The child cannot tear down the UCX state it inherits (see the file). */
    const char *env[] = {stats, "KVSHARE_KV_MIN_BYTES=1MiB", "KVSHARE_LOG=error",
                         "LSAN_OPTIONS=suppressions=" KVS_TEST_LSAN_FORK_SUPP, NULL};
    probe_run_t r;
    DIR *d;
    struct dirent *e;
    int files = 0, parent = 0, child = 0;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.%%p.json", g_dir);
    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "fork", "on", env);
    expect_ok(&r, "fork");
    cr_expect_not_null(strstr(r.err, "UCX cannot run in this process: it was forked from one whose "
                                     "kvshare context was running"),
                       "the child did not say why it stepped aside; stderr:\n%s", r.err);
    cr_expect_eq(count_lines(r.err, "kvshare-preload["), 1, "one line, the child's; stderr:\n%s",
                 r.err);
    /* One stats file per process, each with its own counters. */
    d = opendir(g_dir);
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL) {
        cJSON *s;
        if (strncmp(e->d_name, "stats.", 6) != 0) {
            continue;
        }
        files++;
        snprintf(path, sizeof(path), "%s/%s", g_dir, e->d_name);
        s = read_stats(path);
        cr_expect_eq(num(s, "allocations"), 1);
        cr_expect_eq(num(s, "kv_regions"), 1);
        cr_expect_eq(num(s, "kvs_regions"), 0);
        if (num(s, "pid") == (double)r.pid) {
            parent++;
            cr_expect_eq(num(s, "kv_registered"), 1);
            cr_expect_eq(num(s, "frees"), 1);
            cr_expect_eq(num(s, "copies_htod"), 1);
            cr_expect_eq(num(s, "errors"), 0);
        } else {
            child++; /* stepped aside at its KV region: nothing registered, calls forwarded */
            cr_expect_eq(num(s, "kv_registered"), 0);
            cr_expect_eq(num(s, "errors"), 1);
            const cJSON *mode = cJSON_GetObjectItemCaseSensitive(s, "mode");
            cr_expect(cJSON_IsString(mode) && strcmp(mode->valuestring, "passthrough") == 0,
                      "the child's shim is not in pass-through");
        }
        cJSON_Delete(s);
    }
    closedir(d);
    cr_expect_eq(files, 2);
    cr_expect_eq(parent, 1);
    cr_expect_eq(child, 1);
}

/* ---- VMM, table full, thresholds ----------------------------------------- */
Test(shim, vmm_maps_are_tracked_by_handle)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "vmm", "on", env);
    expect_ok(&r, "linked");
    run_probe(&r, KVS_TEST_PROBE_DL, "dlsym", "vmm", "on", env);
    expect_ok(&r, "dlsym");
}

Test(shim, full_table_logs_once_and_keeps_working)
{
    const char *env[] = {"KVSHARE_LOG=warn", NULL};
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "full", "on", env);
    expect_ok(&r, "full");
    cr_expect_eq(count_substr(r.err, "tracking table full"), 1, "stderr: %s", r.err);
}

Test(shim, default_kv_threshold_is_64MiB)
{
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "threshold", "on", NULL);
    expect_ok(&r, "threshold");
}

/* ---- bad values and internal failures: step aside, never break ---------- */
Test(shim, bad_kv_min_bytes_steps_aside)
{
    static const char *const bad[] = {
        "64X", "", "-1", "64 M", "0x40", "1.5", "99999999999999999999", "18446744073709551615K"};
    char kv[96], stats[128], path[128];
    probe_run_t r;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.json", g_dir);
    snprintf(path, sizeof(path), "%s/stats.json", g_dir);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *env[] = {kv, stats, "KVSHARE_LOG=error", NULL};
        char expect[128];
        cJSON *s;

        snprintf(kv, sizeof(kv), "KVSHARE_KV_MIN_BYTES=%s", bad[i]);
        unlink(path);
        run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "aside", "off", env);
        expect_ok(&r, bad[i]);
        snprintf(expect, sizeof(expect), "KVSHARE_KV_MIN_BYTES=%s:", bad[i]);
        cr_expect_eq(count_substr(r.err, expect), 1, "value '%s', stderr: %s", bad[i], r.err);
        cr_expect_eq(count_substr(r.err, "\n"), 1, "one line only: %s", r.err);
        s = read_stats(path);
        cr_expect_str_eq(str(s, "mode"), "stepped_aside");
        cr_expect_eq(num(s, "allocations"), 0);
        cr_expect_eq(num(s, "errors"), 1);
        cJSON_Delete(s);
    }
    /* Without KVSHARE_LOG the same failure is silent. */
    {
        const char *env[] = {"KVSHARE_KV_MIN_BYTES=64X", NULL};
        run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "aside", "off", env);
        expect_ok(&r, "silent");
        cr_expect_str_empty(r.err, "stderr: %s", r.err);
    }
}

Test(shim, libkvshare_failure_passes_through)
{
    char stats[128], path[128];
    const char *env[] = {stats, "KVSHARE_KV_MIN_BYTES=1MiB", "KVSHARE_LOG=error",
                         "KVSHARE_CONFIG=/nonexistent/kvshare.json", NULL};
    probe_run_t r;
    cJSON *s;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.json", g_dir);
    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "aside", "off", env);
    expect_ok(&r, "ctx failure");
    cr_expect_eq(count_substr(r.err, "kvshare-preload"), 1, "stderr: %s", r.err);
    cr_expect_eq(count_substr(r.err, "kvs_ctx_create"), 1, "stderr: %s", r.err);
    snprintf(path, sizeof(path), "%s/stats.json", g_dir);
    s = read_stats(path);
    cr_expect_str_eq(str(s, "mode"), "passthrough");
    cr_expect_eq(num(s, "allocations"), 1);
    cr_expect_eq(num(s, "errors"), 1);
    cr_expect_eq(num(s, "kv_registered"), 0);
    cJSON_Delete(s);
}

/* ---- libkvshare is loaded only when needed -------------------------------- */
/* A process that inherits LD_PRELOAD and allocates no KV memory (a shell,
 * pip, nvidia-smi) never maps libkvshare or what it pulls in (UCX, OpenSSL,
 * cJSON, xxhash); one that does loads it then, and registers as before. */
Test(shim, libkvshare_is_loaded_at_the_first_kv_region)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    const char *hows[] = {"linked", "dlsym", "procaddr"};
    probe_run_t r;

    for (size_t i = 0; i < 3; i++) {
        const char *exe = i == 0 ? KVS_TEST_PROBE_DIRECT : KVS_TEST_PROBE_DL;
        run_probe(&r, exe, hows[i], "lazy", "on", env);
        expect_ok(&r, "no KV region");
        run_probe(&r, exe, hows[i], "lazy_kv", "on", env);
        expect_ok(&r, "a KV region");
    }
}

Test(shim, get_ctx_loads_libkvshare_before_any_kv_region)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    probe_run_t r;

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "getctx", "on", env);
    expect_ok(&r, "get_ctx first");
}

/* With no libkvshare.so.0 beside it, the shim finds the soname through its
 * RUNPATH (the build folder's libkvshare here, $ORIGIN once installed). */
Test(shim, libkvshare_found_through_runpath)
{
    const char *env[] = {"KVSHARE_KV_MIN_BYTES=1MiB", NULL};
    char copy[128], buf[65536];
    probe_run_t r;
    ssize_t n;
    int in, out;

    if (KVS_TEST_ASAN_RUNTIME[0] != '\0') {
        /* ASan intercepts dlopen, so glibc sees libasan as the caller and
         * searches its RUNPATH, not the shim's. A skipped test gets no
         * .fini, so the suite's folder goes now. */
        remove_dir();
        cr_skip_test("RUNPATH lookup from a dlopen interceptor's frame");
    }
    snprintf(copy, sizeof(copy), "%s/libkvshare_preload.so", g_dir);
    in = open(KVS_TEST_SHIM, O_RDONLY | O_CLOEXEC);
    out = open(copy, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    cr_assert(in >= 0 && out >= 0);
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        cr_assert_eq(write(out, buf, (size_t)n), n);
    }
    close(in);
    cr_assert_eq(close(out), 0);
    g_shim = copy;
    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "lazy_kv", "on", env);
    g_shim = KVS_TEST_SHIM;
    expect_ok(&r, "through RUNPATH");
}

/* KVSHARE_LIBRARY names the library; when it cannot be loaded the shim logs
 * one line naming it and passes through, and the engine keeps running. */
Test(shim, missing_libkvshare_passes_through)
{
    char stats[128], path[128];
    const char *env[] = {stats, "KVSHARE_KV_MIN_BYTES=1MiB", "KVSHARE_LOG=error",
                         "KVSHARE_LIBRARY=/nonexistent/libkvshare.so.0", NULL};
    probe_run_t r;
    cJSON *s;

    snprintf(stats, sizeof(stats), "KVSHARE_STATS_FILE=%s/stats.json", g_dir);
    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "aside", "off", env);
    expect_ok(&r, "no libkvshare");
    cr_expect_eq(count_substr(r.err, "kvshare-preload"), 1, "stderr: %s", r.err);
    cr_expect_eq(count_substr(r.err, "loading libkvshare: dlopen(/nonexistent/libkvshare.so.0)"), 1,
                 "stderr: %s", r.err);
    snprintf(path, sizeof(path), "%s/stats.json", g_dir);
    s = read_stats(path);
    cr_expect_str_eq(str(s, "mode"), "passthrough");
    cr_expect_eq(num(s, "allocations"), 1);
    cr_expect_eq(num(s, "errors"), 1);
    cr_expect_eq(num(s, "kv_registered"), 0);
    cJSON_Delete(s);
}

/* ---- dlsym stays correct for everyone else ------------------------------- */
Test(shim, rtld_next_resolves_from_the_caller)
{
    probe_run_t r;
    const char *off[] = {"KVSHARE_DISABLE=1", NULL};

    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "rtld_next", "on", NULL);
    expect_ok(&r, "on");
    run_probe(&r, KVS_TEST_PROBE_DIRECT, "linked", "rtld_next", "off", off);
    expect_ok(&r, "off");
}
