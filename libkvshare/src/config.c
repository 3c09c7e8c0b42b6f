/* SPDX-License-Identifier: Apache-2.0 */
/* config.c - resolves every context setting from params > KVSHARE_* env > JSON file > default.
 *
 * One table drives all three sources, so every setting has one parser and
 * one error message: the variable (or JSON key), the bad value, and what
 * would have been accepted. Only the value that wins is parsed: a bad
 * KVSHARE_LISTEN is no error when params.listen (`--listen`) replaces it. */
#include "config_int.h"
#include "util_int.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef kvs_status_t (*setting_parse_fn)(const char *value, kvs__config_t *cfg);

typedef struct setting {
    const char *key; /* JSON key; env is KVSHARE_ + upper(key) */
    const char *env;
    const char *accepts; /* for error messages */
    setting_parse_fn parse;
    uint64_t field; /* the KVS_CTX_FIELD_* that sets it in params, 0: none */
} setting_t;

static kvs_status_t parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    char *end = NULL;
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return KVS_ERR_CONFIG;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return KVS_ERR_CONFIG;
    *out = (uint32_t)v;
    return KVS_OK;
}

static kvs_status_t parse_fraction(const char *s, double *out)
{
    char *end = NULL;
    if (s == NULL || s[0] == '\0')
        return KVS_ERR_CONFIG;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !(v > 0.0 && v <= 1.0))
        return KVS_ERR_CONFIG;
    *out = v;
    return KVS_OK;
}

static kvs_status_t set_string(const char *s, char *dst, size_t cap)
{
    size_t n = strlen(s);
    if (n >= cap)
        return KVS_ERR_CONFIG;
    memcpy(dst, s, n + 1);
    return KVS_OK;
}

static kvs_status_t p_log(const char *s, kvs__config_t *c)
{
    int level;
    if (kvs__log_level_parse(s, &level) != 0)
        return KVS_ERR_CONFIG;
    c->log_level = (kvs_log_level_t)level;
    return KVS_OK;
}

static kvs_status_t p_capacity(const char *s, kvs__config_t *c)
{
    uint64_t v;
    if (kvs__size_parse(s, &v, NULL, 0) != 0 || v == 0)
        return KVS_ERR_CONFIG;
    c->capacity_bytes = v;
    return KVS_OK;
}

static kvs_status_t p_slot(const char *s, kvs__config_t *c)
{
    uint64_t v;
    if (kvs__size_parse(s, &v, NULL, 0) != 0)
        return KVS_ERR_CONFIG;
    c->slot_bytes = v;
    return KVS_OK;
}

static kvs_status_t p_strategy(const char *s, kvs__config_t *c)
{
    if (strcmp(s, "lru") == 0)
        c->strategy = KVS_STRATEGY_LRU;
    else if (strcmp(s, "lfu") == 0)
        c->strategy = KVS_STRATEGY_LFU;
    else
        return KVS_ERR_CONFIG;
    return KVS_OK;
}

static kvs_status_t p_high(const char *s, kvs__config_t *c)
{
    return parse_fraction(s, &c->high_watermark);
}

static kvs_status_t p_low(const char *s, kvs__config_t *c)
{
    return parse_fraction(s, &c->low_watermark);
}

static kvs_status_t p_progress(const char *s, kvs__config_t *c)
{
    if (strcmp(s, "thread") == 0)
        c->progress = KVS_PROGRESS_THREAD;
    else if (strcmp(s, "poll") == 0)
        c->progress = KVS_PROGRESS_POLL;
    else
        return KVS_ERR_CONFIG;
    return KVS_OK;
}

static kvs_status_t p_fetch_timeout(const char *s, kvs__config_t *c)
{
    return parse_u32(s, 1, 3600000, &c->fetch_timeout_ms);
}

static kvs_status_t p_lease_timeout(const char *s, kvs__config_t *c)
{
    return parse_u32(s, 1, 3600000, &c->lease_timeout_ms);
}

static kvs_status_t p_poll_us(const char *s, kvs__config_t *c)
{
    return parse_u32(s, 0, KVS__POLL_US_MAX, &c->poll_us);
}

static kvs_status_t p_thread_poll_us(const char *s, kvs__config_t *c)
{
    return parse_u32(s, 0, KVS__POLL_US_MAX, &c->thread_poll_us);
}

static kvs_status_t p_copy_threads(const char *s, kvs__config_t *c)
{
    return parse_u32(s, 0, KVS__COPY_THREADS_MAX, &c->copy_threads);
}

static kvs_status_t p_listen(const char *s, kvs__config_t *c)
{
    /* HOST:PORT (util/endpoint.c; port 0 picks one); "" turns the listener off. */
    kvs__endpoint_t ep;
    if (s[0] != '\0' && kvs__endpoint_parse(s, 0, &ep, NULL, 0) != 0)
        return KVS_ERR_CONFIG;
    return set_string(s, c->listen, sizeof(c->listen));
}

static kvs_status_t p_auth(const char *s, kvs__config_t *c)
{
    if (strcmp(s, "token") == 0)
        c->auth = KVS__AUTH_TOKEN;
    else if (strcmp(s, "none") == 0)
        c->auth = KVS__AUTH_NONE;
    else
        return KVS_ERR_CONFIG;
    return KVS_OK;
}

static kvs_status_t p_auth_token_file(const char *s, kvs__config_t *c)
{
    return set_string(s, c->auth_token_file, sizeof(c->auth_token_file));
}

static kvs_status_t p_pool(const char *s, kvs__config_t *c)
{
    return set_string(s, c->pool, sizeof(c->pool));
}

static kvs_status_t p_prefault(const char *s, kvs__config_t *c)
{
    if (strcmp(s, "0") != 0 && strcmp(s, "1") != 0)
        return KVS_ERR_CONFIG;
    c->prefault = s[0] == '1';
    return KVS_OK;
}

/* A switch whose values are "auto" and "off". */
static kvs_status_t auto_off(const char *s, bool *on)
{
    if (strcmp(s, "auto") != 0 && strcmp(s, "off") != 0)
        return KVS_ERR_CONFIG;
    *on = s[0] == 'a';
    return KVS_OK;
}

static kvs_status_t p_shm(const char *s, kvs__config_t *c)
{
    return auto_off(s, &c->shm);
}

static kvs_status_t p_copy_stream(const char *s, kvs__config_t *c)
{
    return auto_off(s, &c->copy_stream);
}

static kvs_status_t p_shm_index(const char *s, kvs__config_t *c)
{
    return auto_off(s, &c->shm_index);
}

static kvs_status_t p_host_socket_dir(const char *s, kvs__config_t *c)
{
    if (s[0] != '/')
        return KVS_ERR_CONFIG;
    return set_string(s, c->host_socket_dir, sizeof(c->host_socket_dir));
}

static kvs_status_t p_transport(const char *s, kvs__config_t *c)
{
    if (strcmp(s, "auto") != 0 && strcmp(s, "ucx") != 0 && strcmp(s, "none") != 0 &&
        strcmp(s, "loop") != 0 && strcmp(s, "loop-am") != 0 &&
        strcmp(s, "loop-noget") != 0) /* tests only (tl_loop.c): not listed as accepted */
        return KVS_ERR_CONFIG;
    return set_string(s, c->transport, sizeof(c->transport));
}

static const setting_t settings[] = {
    {"log", "KVSHARE_LOG", KVS__LOG_LEVEL_NAMES, p_log, KVS_CTX_FIELD_LOG_LEVEL},
    {"capacity", "KVSHARE_CAPACITY",
     "a size > 0 such as 1073741824, 512MiB or 4GiB (K, M, G, T: powers of 1024)", p_capacity,
     KVS_CTX_FIELD_CAPACITY},
    {"slot_bytes", "KVSHARE_SLOT_BYTES",
     "a size such as 65536 or 256KiB (K, M, G, T: powers of 1024; 0: one slot class per block "
     "size)",
     p_slot, KVS_CTX_FIELD_SLOT_BYTES},
    {"strategy", "KVSHARE_STRATEGY", "lru or lfu", p_strategy, KVS_CTX_FIELD_STRATEGY},
    {"high_watermark", "KVSHARE_HIGH_WATERMARK", "a fraction in (0, 1], e.g. 0.9", p_high,
     KVS_CTX_FIELD_WATERMARKS},
    {"low_watermark", "KVSHARE_LOW_WATERMARK", "a fraction in (0, 1], e.g. 0.8", p_low,
     KVS_CTX_FIELD_WATERMARKS},
    {"progress", "KVSHARE_PROGRESS", "thread or poll", p_progress, KVS_CTX_FIELD_PROGRESS},
    {"poll_us", "KVSHARE_POLL_US", "microseconds, 0 to 1000 (0: a waiting thread sleeps at once)",
     p_poll_us, 0},
    {"thread_poll_us", "KVSHARE_THREAD_POLL_US",
     "microseconds, 0 to 1000 (0: the progress thread sleeps at once)", p_thread_poll_us, 0},
    {"copy_threads", "KVSHARE_COPY_THREADS",
     "0 to 8 (helper threads for same-host copies; 0: the waiting thread copies alone)",
     p_copy_threads, 0},
    {"copy_stream", "KVSHARE_COPY_STREAM",
     "auto (same-host copies of 256 KiB or more, and a pool node's puts, store around the CPU "
     "caches) or off (memcpy)",
     p_copy_stream, 0},
    {"shm_index", "KVSHARE_SHM_INDEX",
     "auto (a holder shows its blocks to same-host readers in a mapped index, which they read "
     "instead of asking it) or off (every lookup asks the holder, and leases)",
     p_shm_index, 0},
    {"fetch_timeout_ms", "KVSHARE_FETCH_TIMEOUT_MS", "milliseconds, 1 to 3600000", p_fetch_timeout,
     KVS_CTX_FIELD_FETCH_TIMEOUT},
    {"lease_timeout_ms", "KVSHARE_LEASE_TIMEOUT_MS", "milliseconds, 1 to 3600000", p_lease_timeout,
     KVS_CTX_FIELD_LEASE_TIMEOUT},
    {"listen", "KVSHARE_LISTEN", "HOST:PORT with a port 0-65535 (0: any free port), or empty",
     p_listen, KVS_CTX_FIELD_LISTEN},
    {"auth", "KVSHARE_AUTH", "token (peers prove KVSHARE_AUTH_TOKEN_FILE) or none", p_auth,
     KVS_CTX_FIELD_AUTH},
    {"auth_token_file", "KVSHARE_AUTH_TOKEN_FILE", "a path shorter than 4096 bytes",
     p_auth_token_file, KVS_CTX_FIELD_AUTH_TOKEN_FILE},
    {"pool", "KVSHARE_POOL", "a DNS name or a comma list of HOST:PORT (< 1024 bytes)", p_pool,
     KVS_CTX_FIELD_POOL},
    {"transport", "KVSHARE_TRANSPORT", "auto, ucx, none, loop or loop-am", p_transport,
     KVS_CTX_FIELD_TRANSPORT},
    {"prefault", "KVSHARE_PREFAULT", "0 or 1", p_prefault, 0},
    {"shm", "KVSHARE_SHM", "auto (same-host peers map each other's memory) or off", p_shm, 0},
    {"host_socket_dir", "KVSHARE_HOST_SOCKET_DIR",
     "an absolute directory path shorter than 64 bytes, shared by the host's kvshare processes",
     p_host_socket_dir, 0},
};

#define fail kvs__failf

static kvs_status_t apply(const setting_t *st, const char *value, const char *source,
                          kvs__config_t *cfg, char *errbuf, size_t len)
{
    if (st->parse(value, cfg) == KVS_OK)
        return KVS_OK;
    return fail(errbuf, len, KVS_ERR_CONFIG, "%s='%s'%s: invalid value; accepted: %s", st->env,
                value, source, st->accepts);
}

/* Whether params set st, so that its env and file values are never used (nor checked). The
 * rules mirror kvs__config_resolve's own: a NULL string or a zero timeout leaves it unset. */
static bool set_by_params(const setting_t *st, const kvs_ctx_params_t *p)
{
    uint64_t m = p != NULL ? p->field_mask : 0;
    if (st->field == 0 || !(m & st->field))
        return false;
    switch (st->field) {
    case KVS_CTX_FIELD_LISTEN:
        return p->listen != NULL;
    case KVS_CTX_FIELD_AUTH_TOKEN_FILE:
        return p->auth_token_file != NULL;
    case KVS_CTX_FIELD_AUTH:
        return p->auth != NULL;
    case KVS_CTX_FIELD_TRANSPORT:
        return p->transport != NULL;
    case KVS_CTX_FIELD_POOL:
        return p->pool != NULL;
    case KVS_CTX_FIELD_FETCH_TIMEOUT:
        return p->fetch_timeout_ms > 0;
    case KVS_CTX_FIELD_LEASE_TIMEOUT:
        return p->lease_timeout_ms > 0;
    default:
        return true;
    }
}

static kvs_status_t read_file(const char *path, char **text_p, char *errbuf, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail(errbuf, len, KVS_ERR_IO, "KVSHARE_CONFIG='%s': cannot open: %s", path,
                    strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = kvs__malloc(cap);
    if (buf == NULL) {
        fclose(f);
        return KVS_ERR_NO_MEMORY;
    }
    for (;;) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        if (cap >= (1u << 20)) {
            kvs__free(buf);
            fclose(f);
            return fail(errbuf, len, KVS_ERR_CONFIG, "KVSHARE_CONFIG='%s': larger than 1 MiB",
                        path);
        }
        char *nb = kvs__realloc(buf, cap * 2);
        if (nb == NULL) {
            kvs__free(buf);
            fclose(f);
            return KVS_ERR_NO_MEMORY;
        }
        buf = nb;
        cap *= 2;
    }
    bool err = ferror(f) != 0;
    fclose(f);
    if (err) {
        kvs__free(buf);
        return fail(errbuf, len, KVS_ERR_IO, "KVSHARE_CONFIG='%s': read error", path);
    }
    buf[n] = '\0';
    *text_p = buf;
    return KVS_OK;
}

static kvs_status_t apply_json(const char *path, const kvs_ctx_params_t *p, bool use_env,
                               kvs__config_t *cfg, char *errbuf, size_t len)
{
    char *text = NULL;
    kvs_status_t status = read_file(path, &text, errbuf, len);
    if (status != KVS_OK)
        return status;
    const char *errptr = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &errptr, 1);
    if (root == NULL) {
        /* cJSON cannot tell an allocation failure from bad JSON; the offset
         * at least points a human at the spot. */
        long off = errptr != NULL ? (long)(errptr - text) : -1;
        status = fail(errbuf, len, KVS_ERR_CONFIG,
                      "KVSHARE_CONFIG='%s': not valid JSON (near byte %ld)", path, off);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        status = fail(errbuf, len, KVS_ERR_CONFIG,
                      "KVSHARE_CONFIG='%s': top level must be an "
                      "object",
                      path);
        goto out;
    }
    for (cJSON *it = root->child; it != NULL; it = it->next) {
        const setting_t *st = NULL;
        for (size_t i = 0; i < KVS_ARRAY_SIZE(settings); i++)
            if (strcmp(it->string, settings[i].key) == 0)
                st = &settings[i];
        if (st == NULL) {
            char known[512];
            size_t off = 0;
            for (size_t i = 0; i < KVS_ARRAY_SIZE(settings) && off < sizeof(known); i++)
                off += (size_t)snprintf(known + off, sizeof(known) - off, "%s%s", i ? ", " : "",
                                        settings[i].key);
            status = fail(errbuf, len, KVS_ERR_CONFIG,
                          "KVSHARE_CONFIG='%s': unknown key \"%s\"; known keys: %s", path,
                          it->string, known);
            goto out;
        }
        char num[64];
        const char *value;
        if (cJSON_IsString(it)) {
            value = it->valuestring;
        } else if (cJSON_IsNumber(it)) {
            snprintf(num, sizeof(num), "%.17g", it->valuedouble);
            value = num;
        } else {
            status = fail(errbuf, len, KVS_ERR_CONFIG,
                          "KVSHARE_CONFIG='%s': \"%s\" must be a string or number; accepted: %s",
                          path, it->string, st->accepts);
            goto out;
        }
        /* A key that env or params replace is known and typed, but not parsed. */
        if (set_by_params(st, p) || (use_env && getenv(st->env) != NULL))
            continue;
        char source[4096 + 128];
        snprintf(source, sizeof(source), " (key \"%s\" in KVSHARE_CONFIG='%s')", st->key, path);
        status = apply(st, value, source, cfg, errbuf, len);
        if (status != KVS_OK)
            goto out;
    }
out:
    cJSON_Delete(root);
    kvs__free(text);
    return status;
}

kvs_status_t kvs__config_resolve(const kvs_ctx_params_t *p, kvs__config_t *cfg, char *errbuf,
                                 size_t len)
{
    kvs_status_t status;
    uint64_t m = p != NULL ? p->field_mask : 0;
    bool use_env = !(m & KVS_CTX_FIELD_NO_ENV);

    memset(cfg, 0, sizeof(*cfg));
    cfg->log_level = KVS_LOG_OFF;
    cfg->capacity_bytes = 1ull << 30;
    cfg->strategy = KVS_STRATEGY_LRU;
    cfg->high_watermark = 0.9;
    cfg->low_watermark = 0.8;
    cfg->progress = KVS_PROGRESS_THREAD;
    cfg->poll_us = KVS__POLL_US_DEFAULT;
    cfg->thread_poll_us = KVS__THREAD_POLL_US_DEFAULT;
    cfg->copy_threads = KVS__COPY_THREADS_DEFAULT;
    cfg->fetch_timeout_ms = 5000;
    cfg->lease_timeout_ms = 30000;
    strcpy(cfg->transport, "auto");
    cfg->shm = true;
    cfg->copy_stream = true;
    cfg->shm_index = true;

    const char *file = NULL;
    if (m & KVS_CTX_FIELD_CONFIG_FILE)
        file = p->config_file;
    else if (use_env)
        file = getenv("KVSHARE_CONFIG");
    if (file != NULL && file[0] != '\0') {
        status = apply_json(file, p, use_env, cfg, errbuf, len);
        if (status != KVS_OK)
            return status;
    }

    if (use_env) {
        for (size_t i = 0; i < KVS_ARRAY_SIZE(settings); i++) {
            const char *v = getenv(settings[i].env);
            if (v == NULL || set_by_params(&settings[i], p))
                continue;
            status = apply(&settings[i], v, "", cfg, errbuf, len);
            if (status != KVS_OK)
                return status;
        }
    }

    if (m & KVS_CTX_FIELD_LOG_FN)
        cfg->log_level = KVS_LOG_WARN; /* a caller who gives a sink wants warnings */
    if (m & KVS_CTX_FIELD_LOG_LEVEL) {
        if ((unsigned)p->log_level > KVS_LOG_TRACE)
            return fail(errbuf, len, KVS_ERR_CONFIG, "params.log_level=%d: out of range 0-5",
                        (int)p->log_level);
        cfg->log_level = p->log_level;
    }
    if (m & KVS_CTX_FIELD_CAPACITY) {
        if (p->capacity_bytes == 0)
            return fail(errbuf, len, KVS_ERR_CONFIG, "params.capacity_bytes=0: must be > 0");
        cfg->capacity_bytes = p->capacity_bytes;
    }
    if (m & KVS_CTX_FIELD_SLOT_BYTES)
        cfg->slot_bytes = p->slot_bytes;
    if (m & KVS_CTX_FIELD_STRATEGY) {
        if ((unsigned)p->strategy > KVS_STRATEGY_LFU)
            return fail(errbuf, len, KVS_ERR_CONFIG, "params.strategy=%d: accepted: lru, lfu",
                        (int)p->strategy);
        cfg->strategy = p->strategy;
    }
    if (m & KVS_CTX_FIELD_WATERMARKS) {
        cfg->high_watermark = p->high_watermark;
        cfg->low_watermark = p->low_watermark;
    }
    if (m & KVS_CTX_FIELD_PROGRESS) {
        if ((unsigned)p->progress > KVS_PROGRESS_POLL)
            return fail(errbuf, len, KVS_ERR_CONFIG, "params.progress=%d: accepted: thread, poll",
                        (int)p->progress);
        cfg->progress = p->progress;
    }
    if ((m & KVS_CTX_FIELD_FETCH_TIMEOUT) && p->fetch_timeout_ms > 0)
        cfg->fetch_timeout_ms = p->fetch_timeout_ms;
    if ((m & KVS_CTX_FIELD_LEASE_TIMEOUT) && p->lease_timeout_ms > 0)
        cfg->lease_timeout_ms = p->lease_timeout_ms;
    if ((m & KVS_CTX_FIELD_LISTEN) && p->listen != NULL) {
        if (p_listen(p->listen, cfg) != KVS_OK)
            return fail(errbuf, len, KVS_ERR_CONFIG, "params.listen='%s': accepted: %s", p->listen,
                        "HOST:PORT with a port 0-65535 (0: any free port), or empty");
    }
    if ((m & KVS_CTX_FIELD_AUTH_TOKEN_FILE) && p->auth_token_file != NULL &&
        p_auth_token_file(p->auth_token_file, cfg) != KVS_OK)
        return fail(errbuf, len, KVS_ERR_CONFIG, "params.auth_token_file: too long");
    if ((m & KVS_CTX_FIELD_AUTH) && p->auth != NULL && p_auth(p->auth, cfg) != KVS_OK)
        return fail(errbuf, len, KVS_ERR_CONFIG, "params.auth='%s': accepted: token or none",
                    p->auth);
    if ((m & KVS_CTX_FIELD_TRANSPORT) && p->transport != NULL &&
        p_transport(p->transport, cfg) != KVS_OK)
        return fail(errbuf, len, KVS_ERR_CONFIG, "params.transport='%s': accepted: %s",
                    p->transport, "auto, ucx, none, loop or loop-am");
    if (m & KVS_CTX_FIELD_POOL_NODE)
        cfg->pool_node = p->pool_node != 0;
    if ((m & KVS_CTX_FIELD_POOL) && p->pool != NULL && p_pool(p->pool, cfg) != KVS_OK)
        return fail(errbuf, len, KVS_ERR_CONFIG, "params.pool: too long");

    if (!(cfg->low_watermark > 0.0 && cfg->low_watermark < cfg->high_watermark &&
          cfg->high_watermark <= 1.0))
        return fail(errbuf, len, KVS_ERR_CONFIG,
                    "KVSHARE_LOW_WATERMARK=%g, KVSHARE_HIGH_WATERMARK=%g: need 0 < low < high <= 1",
                    cfg->low_watermark, cfg->high_watermark);
    return KVS_OK;
}
