/* SPDX-License-Identifier: Apache-2.0 */
/* test_auth.c - KVSHARE_AUTH and its token file: every rule of kvs__auth_load; the fd limit. */
#include "auth_int.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Criterion runs each test in its own process, so setenv and the captured
 * lines stay local to the test. */
static char lines[16][1024];
static int nlines;
static kvs_log_level_t levels[16];

static void sink(void *arg, kvs_log_level_t level, const char *msg)
{
    (void)arg;
    if (nlines < 16) {
        levels[nlines] = level;
        snprintf(lines[nlines++], sizeof(lines[0]), "%s", msg);
    }
}

static const kvs__logger_t logger = {.fn = sink, .arg = NULL, .level = KVS_LOG_TRACE};

/* The line at @level containing @needle, or NULL. */
static const char *logged(kvs_log_level_t level, const char *needle)
{
    for (int i = 0; i < nlines; i++)
        if (levels[i] == level && strstr(lines[i], needle) != NULL)
            return lines[i];
    return NULL;
}

static char tmpdir[64];

static void make_dir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/kvs-auth-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

/* .fini of every test that calls make_dir: removes the directory and the
 * token files in it, whether the test passed or failed. */
static void remove_dir(void)
{
    if (tmpdir[0] == '\0')
        return;
    DIR *d = opendir(tmpdir);
    if (d != NULL) {
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(tmpdir);
    tmpdir[0] = '\0';
}

/* Writes @len bytes of @data to a new file in tmpdir with @mode; returns its path. */
static const char *token_file(const char *name, const void *data, size_t len, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(path, mode), 0);
    return path;
}

/* Resolves the config from the environment the way kvs_ctx_create does. */
static kvs__config_t resolve_env(void)
{
    kvs__config_t cfg;
    char err[512] = "";
    kvs_status_t st = kvs__config_resolve(NULL, &cfg, err, sizeof(err));
    cr_assert_eq(st, KVS_OK, "resolve: %s", err);
    return cfg;
}

/* kvs__auth_load must fail with KVS_ERR_CONFIG, leave *out as it was, and
 * name every fragment in its message. */
static void expect_fail(const kvs__config_t *cfg, const char *f1, const char *f2)
{
    kvs__secret_t s;
    memset(&s, 0xa5, sizeof(s));
    char err[1024] = "";
    cr_assert_eq(kvs__auth_load(cfg, &logger, &s, err, sizeof(err)), KVS_ERR_CONFIG,
                 "expected a config error; message '%s'", err);
    cr_assert(strstr(err, f1) != NULL, "message lacks '%s': %s", f1, err);
    cr_assert(f2 == NULL || strstr(err, f2) != NULL, "message lacks '%s': %s", f2, err);
    for (size_t i = 0; i < sizeof(s.bytes); i++)
        cr_assert_eq(s.bytes[i], 0xa5, "a failing load wrote the output (byte %zu)", i);
}

static void load_ok(const kvs__config_t *cfg, kvs__secret_t *s)
{
    char err[1024] = "";
    cr_assert_eq(kvs__auth_load(cfg, &logger, s, err, sizeof(err)), KVS_OK, "load: %s", err);
}

Test(auth, default_is_token_and_a_missing_token_file_names_both_ways_out)
{
    unsetenv("KVSHARE_AUTH");
    unsetenv("KVSHARE_AUTH_TOKEN_FILE");
    kvs__config_t cfg = resolve_env();
    cr_assert_eq(cfg.auth, KVS__AUTH_TOKEN);
    expect_fail(&cfg, "KVSHARE_AUTH_TOKEN_FILE", "KVSHARE_AUTH=none");

    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", "", 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, "KVSHARE_AUTH_TOKEN_FILE", "KVSHARE_AUTH=none");

    cr_assert_eq(setenv("KVSHARE_AUTH", "token", 1), 0);
    cfg = resolve_env();
    cr_assert_eq(cfg.auth, KVS__AUTH_TOKEN);
    expect_fail(&cfg, "KVSHARE_AUTH_TOKEN_FILE", "KVSHARE_AUTH=none");
}

Test(auth, none_is_open_with_a_warning)
{
    unsetenv("KVSHARE_AUTH_TOKEN_FILE");
    cr_assert_eq(setenv("KVSHARE_AUTH", "none", 1), 0);
    kvs__config_t cfg = resolve_env();
    cr_assert_eq(cfg.auth, KVS__AUTH_NONE);
    kvs__secret_t s;
    memset(&s, 0x5a, sizeof(s));
    load_ok(&cfg, &s);
    cr_assert(s.open);
    cr_assert_eq(s.len, 0);
    cr_assert_eq(s.bytes[0], 0, "an open secret holds no stale bytes");
    cr_assert_not_null(logged(KVS_LOG_WARN, "authentication is off (KVSHARE_AUTH=none): any "
                                            "process that can reach"),
                       "no warning; got %d lines", nlines);
}

Test(auth, none_with_a_token_file_is_a_contradiction, .fini = remove_dir)
{
    make_dir();
    const char *path = token_file("tok", "secret\n", 7, 0600);
    cr_assert_eq(setenv("KVSHARE_AUTH", "none", 1), 0);
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    kvs__config_t cfg = resolve_env();
    expect_fail(&cfg, "KVSHARE_AUTH=none", path);
    cr_assert_null(logged(KVS_LOG_WARN, "authentication is off"), "warned though it failed");
}

Test(auth, bad_mode_values_name_the_variable_and_accepted_values)
{
    char err[512] = "";
    kvs__config_t cfg;
    cr_assert_eq(setenv("KVSHARE_AUTH", "off", 1), 0);
    cr_assert_eq(kvs__config_resolve(NULL, &cfg, err, sizeof(err)), KVS_ERR_CONFIG);
    cr_assert(strstr(err, "KVSHARE_AUTH='off'") != NULL, "%s", err);
    cr_assert(strstr(err, "token") != NULL && strstr(err, "none") != NULL, "%s", err);
    unsetenv("KVSHARE_AUTH");

    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_AUTH, .auth = "disabled"};
    err[0] = '\0';
    cr_assert_eq(kvs__config_resolve(&p, &cfg, err, sizeof(err)), KVS_ERR_CONFIG);
    cr_assert(strstr(err, "params.auth='disabled'") != NULL, "%s", err);
}

Test(auth, params_and_json_set_the_mode_with_params_first, .fini = remove_dir)
{
    make_dir();
    const char *json = token_file("cfg.json", "{\"auth\": \"none\"}", 16, 0600);
    char jpath[128];
    snprintf(jpath, sizeof(jpath), "%s", json);
    kvs__config_t cfg;
    char err[512] = "";
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CONFIG_FILE,
                          .config_file = jpath};
    cr_assert_eq(kvs__config_resolve(&p, &cfg, err, sizeof(err)), KVS_OK, "%s", err);
    cr_assert_eq(cfg.auth, KVS__AUTH_NONE, "JSON key \"auth\"");
    p.field_mask |= KVS_CTX_FIELD_AUTH;
    p.auth = "token";
    cr_assert_eq(kvs__config_resolve(&p, &cfg, err, sizeof(err)), KVS_OK, "%s", err);
    cr_assert_eq(cfg.auth, KVS__AUTH_TOKEN, "params win over the file");
    /* The env beats the file too. */
    cr_assert_eq(setenv("KVSHARE_AUTH", "token", 1), 0);
    cr_assert_eq(setenv("KVSHARE_CONFIG", jpath, 1), 0);
    cfg = resolve_env();
    cr_assert_eq(cfg.auth, KVS__AUTH_TOKEN);
}

Test(auth, token_file_is_read_with_one_trailing_newline_stripped, .fini = remove_dir)
{
    make_dir();
    kvs__secret_t s;
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", token_file("a", "s3cr3t\n", 7, 0600), 1), 0);
    kvs__config_t cfg = resolve_env();
    load_ok(&cfg, &s);
    cr_assert_not(s.open);
    cr_assert_eq(s.len, 6);
    cr_assert_arr_eq(s.bytes, "s3cr3t", 6);
    cr_assert_null(logged(KVS_LOG_WARN, "KVSHARE_AUTH_TOKEN_FILE"), "0600 draws no warning");

    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", token_file("b", "s3\r\n", 4, 0600), 1), 0);
    cfg = resolve_env();
    load_ok(&cfg, &s);
    cr_assert_eq(s.len, 2);
    cr_assert_arr_eq(s.bytes, "s3", 2);

    /* Only one newline goes: the rest are the token's own bytes. */
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", token_file("c", "ab\n\n", 4, 0600), 1), 0);
    cfg = resolve_env();
    load_ok(&cfg, &s);
    cr_assert_eq(s.len, 3);
    cr_assert_arr_eq(s.bytes, "ab\n", 3);

    /* Binary tokens keep every byte, NULs included. */
    const uint8_t bin[5] = {0, 1, 0xff, 0, 7};
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", token_file("d", bin, 5, 0400), 1), 0);
    cfg = resolve_env();
    load_ok(&cfg, &s);
    cr_assert_eq(s.len, 5);
    cr_assert_arr_eq(s.bytes, bin, 5);

    kvs__secret_clear(&s);
    cr_assert_eq(s.len, 0);
    for (size_t i = 0; i < sizeof(s.bytes); i++)
        cr_assert_eq(s.bytes[i], 0, "byte %zu survived kvs__secret_clear", i);
    kvs__secret_clear(NULL);
}

Test(auth, unusable_token_files_name_the_path_and_the_cause, .fini = remove_dir)
{
    make_dir();
    char path[160];
    snprintf(path, sizeof(path), "%s/missing", tmpdir);
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    kvs__config_t cfg = resolve_env();
    expect_fail(&cfg, path, "No such file");

    const char *p = token_file("empty", "", 0, 0600);
    snprintf(path, sizeof(path), "%s", p);
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, path, "empty");

    p = token_file("newline-only", "\r\n", 2, 0600);
    snprintf(path, sizeof(path), "%s", p);
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, path, "empty");

    /* A directory opens but does not read. */
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", tmpdir, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, tmpdir, "cannot read");

    if (geteuid() != 0) { /* root reads mode 000 files anyway */
        p = token_file("locked", "x", 1, 0000);
        snprintf(path, sizeof(path), "%s", p);
        cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
        cfg = resolve_env();
        expect_fail(&cfg, path, "Permission denied");
    }
}

Test(auth, the_limit_is_4096_token_bytes, .fini = remove_dir)
{
    make_dir();
    static uint8_t big[KVS_SECRET_MAX + 3];
    memset(big, 'k', sizeof(big));
    kvs__secret_t s;

    /* Exactly 4096 bytes, with or without a trailing "\r\n": accepted. */
    big[KVS_SECRET_MAX] = '\r';
    big[KVS_SECRET_MAX + 1] = '\n';
    cr_assert_eq(
        setenv("KVSHARE_AUTH_TOKEN_FILE", token_file("max", big, KVS_SECRET_MAX + 2, 0600), 1), 0);
    kvs__config_t cfg = resolve_env();
    load_ok(&cfg, &s);
    cr_assert_eq(s.len, KVS_SECRET_MAX);

    char path[160];
    memset(big, 'k', sizeof(big));
    snprintf(path, sizeof(path), "%s", token_file("long", big, KVS_SECRET_MAX + 1, 0600));
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, path, "longer than 4096 bytes");

    /* 4096 + "\n\n": one newline is stripped, the other makes it too long. */
    big[KVS_SECRET_MAX] = '\n';
    big[KVS_SECRET_MAX + 1] = '\n';
    snprintf(path, sizeof(path), "%s", token_file("long2", big, KVS_SECRET_MAX + 2, 0600));
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, path, "longer than 4096 bytes");

    static uint8_t huge[1 << 16];
    memset(huge, 'h', sizeof(huge));
    snprintf(path, sizeof(path), "%s", token_file("huge", huge, sizeof(huge), 0600));
    cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
    cfg = resolve_env();
    expect_fail(&cfg, path, "longer than 4096 bytes");
}

Test(auth, group_or_world_readable_files_are_a_warning_not_an_error, .fini = remove_dir)
{
    make_dir();
    static const struct {
        const char *name;
        mode_t mode;
        const char *mode_text;
        bool warns;
    } cases[] = {
        {"m0600", 0600, "0600", false}, {"m0400", 0400, "0400", false},
        {"m0440", 0440, "0440", true},  {"m0640", 0640, "0640", true},
        {"m0604", 0604, "0604", true},  {"m0644", 0644, "0644", true},
        {"m0620", 0620, "0620", false}, /* group may write, not read: not a leak */
    };
    for (size_t i = 0; i < KVS_ARRAY_SIZE(cases); i++) {
        char path[160];
        snprintf(path, sizeof(path), "%s", token_file(cases[i].name, "tok\n", 4, cases[i].mode));
        cr_assert_eq(setenv("KVSHARE_AUTH_TOKEN_FILE", path, 1), 0);
        kvs__config_t cfg = resolve_env();
        kvs__secret_t s;
        nlines = 0;
        load_ok(&cfg, &s);
        cr_assert_eq(s.len, 3, "%s", cases[i].name);
        const char *w = logged(KVS_LOG_WARN, path);
        if (!cases[i].warns) {
            cr_assert_null(w, "%s: unexpected warning: %s", cases[i].name, w);
            continue;
        }
        cr_assert_not_null(w, "%s: no warning naming the path", cases[i].name);
        cr_assert(strstr(w, cases[i].mode_text) != NULL, "%s: warning lacks the mode: %s",
                  cases[i].name, w);
        cr_assert(strstr(w, "0440") != NULL && strstr(w, "Secret") != NULL,
                  "%s: warning does not explain the Kubernetes case: %s", cases[i].name, w);
        kvs__secret_clear(&s);
    }
}

Test(auth, raise_nofile_lifts_the_soft_limit_to_the_hard_one)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max <= 64 || rl.rlim_max == RLIM_INFINITY)
        cr_skip_test("hard RLIMIT_NOFILE %llu", (unsigned long long)rl.rlim_max);
    rlim_t hard = rl.rlim_max;
    rl.rlim_cur = 64;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    kvs__raise_nofile(&logger);
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert_eq(rl.rlim_cur, hard, "soft %llu, hard %llu", (unsigned long long)rl.rlim_cur,
                 (unsigned long long)hard);
    cr_assert_not_null(logged(KVS_LOG_DEBUG, "from 64 to"), "no debug line");

    /* Already at the limit: says so, changes nothing. */
    nlines = 0;
    kvs__raise_nofile(&logger);
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert_eq(rl.rlim_cur, hard);
    cr_assert_not_null(logged(KVS_LOG_DEBUG, "already at the hard limit"));
    cr_assert_null(logged(KVS_LOG_WARN, "RLIMIT"));
    kvs__raise_nofile(NULL); /* no logger: still harmless */
}
