/* SPDX-License-Identifier: Apache-2.0 */
/* A minimal Kubernetes API client over libcurl: in-cluster config, JSON requests and
 * newline-delimited watch streams. */
#include "controller_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>

#define KVSC_SA_DIR         "/var/run/secrets/kubernetes.io/serviceaccount"
#define KVSC_TOKEN_MAX      ((size_t)64 * 1024)
#define KVSC_RESP_MAX       ((size_t)256 * 1024 * 1024)
#define KVSC_REQ_TIMEOUT_S  30L
#define KVSC_CONN_TIMEOUT_S 10L

struct kvsc_kube {
    char *api, *ca_file, *token_file;
    int allow_http;
    int verbose;
    atomic_int cancelled;
};

struct kvsc_kube_conn {
    kvsc_kube_t *kube;
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
};

static char *dup_or_null(const char *s, int *ok)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    if (d == NULL) {
        *ok = 0;
    }
    return d;
}

/* The whole of a small file, NUL-terminated, trailing whitespace removed; NULL on error. */
static char *read_small(const char *path, size_t max)
{
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    buf = malloc(max + 1);
    if (buf == NULL) {
        goto out;
    }
    size_t n = fread(buf, 1, max + 1, f);
    if (ferror(f) || n > max) {
        free(buf);
        buf = NULL;
        goto out;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) {
        n--;
    }
    buf[n] = '\0';
out:
    fclose(f);
    return buf;
}

kvsc_status_t kvsc_kube_incluster_cfg(kvsc_kube_cfg_t *cfg, char *api, size_t api_len)
{
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (host == NULL || host[0] == '\0') {
        return KVSC_ERR_INVALID;
    }
    if (port == NULL || port[0] == '\0') {
        port = "443";
    }
    /* An IPv6 service address needs brackets in a URL. */
    int v6 = strchr(host, ':') != NULL;
    int n = snprintf(api, api_len, "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    if (n < 0 || (size_t)n >= api_len) {
        return KVSC_ERR_INVALID;
    }
    cfg->api = api;
    cfg->ca_file = KVSC_SA_DIR "/ca.crt";
    cfg->token_file = KVSC_SA_DIR "/token";
    return KVSC_OK;
}

kvsc_status_t kvsc_kube_create(const kvsc_kube_cfg_t *cfg, kvsc_kube_t **kube_p)
{
    int ok = 1;
    struct stat st;
    kvsc_kube_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    size_t n = strlen(cfg->api);
    while (n > 0 && cfg->api[n - 1] == '/') {
        n--;
    }
    k->api = strndup(cfg->api, n);
    ok = k->api != NULL;
    k->ca_file = dup_or_null(cfg->ca_file, &ok);
    k->token_file = dup_or_null(cfg->token_file, &ok);
    k->allow_http = cfg->allow_http;
    k->verbose = cfg->verbose;
    atomic_init(&k->cancelled, 0);
    if (!ok) {
        kvsc_kube_destroy(k);
        return KVSC_ERR_NO_MEMORY;
    }
    /* Fail at start-up, naming the file, rather than on every request later. */
    if (k->ca_file != NULL && (stat(k->ca_file, &st) != 0 || !S_ISREG(st.st_mode))) {
        fprintf(stderr, "kvshare-controller: API server CA %s: not a readable file\n", k->ca_file);
        kvsc_kube_destroy(k);
        return KVSC_ERR_IO;
    }
    if (k->token_file != NULL) {
        char *t = read_small(k->token_file, KVSC_TOKEN_MAX);
        if (t == NULL) {
            fprintf(stderr,
                    "kvshare-controller: API token %s: cannot read it (at most %zu bytes)\n",
                    k->token_file, KVSC_TOKEN_MAX);
            kvsc_kube_destroy(k);
            return KVSC_ERR_IO;
        }
        free(t);
    }
    *kube_p = k;
    return KVSC_OK;
}

void kvsc_kube_destroy(kvsc_kube_t *k)
{
    if (k == NULL) {
        return;
    }
    free(k->api);
    free(k->ca_file);
    free(k->token_file);
    free(k);
}

void kvsc_kube_cancel(kvsc_kube_t *k)
{
    atomic_store(&k->cancelled, 1);
}

int kvsc_kube_cancelled(kvsc_kube_t *k)
{
    return atomic_load(&k->cancelled);
}

kvsc_status_t kvsc_kube_conn_open(kvsc_kube_t *kube, kvsc_kube_conn_t **conn_p)
{
    kvsc_kube_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    c->kube = kube;
    c->easy = curl_easy_init();
    if (c->easy == NULL) {
        free(c);
        return KVSC_ERR_NO_MEMORY;
    }
    *conn_p = c;
    return KVSC_OK;
}

void kvsc_kube_conn_close(kvsc_kube_conn_t *c)
{
    if (c == NULL) {
        return;
    }
    curl_easy_cleanup(c->easy);
    free(c);
}

/* libcurl calls this about once a second even on an idle watch: the cancel point. */
static int xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                    curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return kvsc_kube_cancelled(ud) ? 1 : 0;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int too_big, no_mem;
} kvsc_body_t;

static size_t body_write(char *data, size_t size, size_t nmemb, void *ud)
{
    kvsc_body_t *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > KVSC_RESP_MAX) {
        b->too_big = 1;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 16384;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->buf, cap);
        if (p == NULL) {
            b->no_mem = 1;
            return 0;
        }
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, data, n);
    b->len += n;
    b->buf[b->len] = '\0';
    return n;
}

/* Common options; *headers_p gets the list to free after the transfer. */
static kvsc_status_t setup(kvsc_kube_conn_t *c, const char *method, const char *path,
                           const char *content_type, struct curl_slist **headers_p)
{
    kvsc_kube_t *k = c->kube;
    kvsc_status_t status = KVSC_ERR_NO_MEMORY;
    struct curl_slist *h = NULL, *t;
    char *url = NULL, *token = NULL, *auth = NULL, *ctype = NULL;
    if (asprintf(&url, "%s%s", k->api, path) < 0) {
        url = NULL;
        goto out;
    }
    /* Re-read every time: the kubelet rotates projected ServiceAccount tokens in place. */
    if (k->token_file != NULL) {
        token = read_small(k->token_file, KVSC_TOKEN_MAX);
        if (token == NULL) {
            fprintf(stderr, "kvshare-controller: API token %s: cannot read it\n", k->token_file);
            status = KVSC_ERR_IO;
            goto out;
        }
        if (asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
            auth = NULL;
            goto out;
        }
    }
    if (content_type != NULL && asprintf(&ctype, "Content-Type: %s", content_type) < 0) {
        ctype = NULL;
        goto out;
    }
    const char *lines[] = {"Accept: application/json",
                           "User-Agent: kvshare-controller/" KVSC_VERSION, auth, ctype};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (lines[i] == NULL) {
            continue;
        }
        t = curl_slist_append(h, lines[i]);
        if (t == NULL) {
            goto out;
        }
        h = t;
    }
    curl_easy_reset(c->easy);
    c->errbuf[0] = '\0';
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for timeouts */
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, KVSC_CONN_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, xferinfo);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, k);
    /* https only, so neither a URL nor anything else can send the token in cleartext;
     * http needs --insecure-kube-api. */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, k->allow_http ? "https,http" : "https");
    if (k->ca_file != NULL) {
        curl_easy_setopt(e, CURLOPT_CAINFO, k->ca_file);
    }
    if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    *headers_p = h;
    h = NULL;
    status = KVSC_OK;
out:
    curl_slist_free_all(h);
    /* libcurl copies CURLOPT_URL; the headers stay referenced until the transfer ends. */
    free(url);
    if (token != NULL) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    if (auth != NULL) {
        explicit_bzero(auth, strlen(auth));
        free(auth);
    }
    free(ctype);
    return status;
}

static void free_headers(struct curl_slist *h)
{
    /* The Authorization line holds the token. */
    for (struct curl_slist *p = h; p != NULL; p = p->next) {
        explicit_bzero(p->data, strlen(p->data));
    }
    curl_slist_free_all(h);
}

kvsc_status_t kvsc_kube_request(kvsc_kube_conn_t *c, const char *method, const char *path,
                                const char *content_type, const char *body, kvsc_kube_resp_t *resp)
{
    struct curl_slist *h = NULL;
    kvsc_body_t b = {0};
    long code = 0;
    if (kvsc_kube_cancelled(c->kube)) {
        return KVSC_ERR_IO;
    }
    kvsc_status_t status = setup(c, method, path, body != NULL ? content_type : NULL, &h);
    if (status != KVSC_OK) {
        return status;
    }
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_TIMEOUT, KVSC_REQ_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (body != NULL) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    CURLcode rc = curl_easy_perform(e);
    free_headers(h);
    if (b.no_mem) {
        status = KVSC_ERR_NO_MEMORY;
        goto out;
    }
    if (rc != CURLE_OK) {
        if (!kvsc_kube_cancelled(c->kube)) {
            fprintf(stderr, "kvshare-controller: %s %s: %s\n", method, path,
                    b.too_big ? "response too large"
                              : (c->errbuf[0] != '\0' ? c->errbuf : curl_easy_strerror(rc)));
        }
        status = KVSC_ERR_IO;
        goto out;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    resp->code = code;
    resp->doc = b.len > 0 ? cJSON_ParseWithLength(b.buf, b.len) : NULL;
    if (c->kube->verbose) {
        fprintf(stderr, "kvshare-controller: %s %s -> %ld\n", method, path, code);
    }
    status = KVSC_OK;
out:
    free(b.buf);
    return status;
}

typedef struct {
    kvsc_lines_t lines;
    kvsc_line_cb cb;
    void *ud;
    int stopped; /* the callback asked to stop */
    int broken;  /* a line too long or no memory */
    long code;
    CURL *easy;
    kvsc_body_t err; /* the body of a non-200 answer, for the log */
} kvsc_watch_t;

static size_t watch_write(char *data, size_t size, size_t nmemb, void *ud)
{
    kvsc_watch_t *w = ud;
    size_t n = size * nmemb;
    if (w->code == 0) {
        curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &w->code);
    }
    if (w->code != 200) {
        /* Keep a little of an error body (a Status object) to log. */
        size_t room = w->err.len < 4096 ? 4096 - w->err.len : 0;
        body_write(data, 1, n < room ? n : room, &w->err);
        return n;
    }
    int rc = kvsc_lines_feed(&w->lines, data, n, w->cb, w->ud);
    if (rc == -1 || rc == -2) {
        w->broken = 1;
        return 0;
    }
    if (rc != 0) {
        w->stopped = 1;
        return 0;
    }
    return n;
}

kvsc_status_t kvsc_kube_watch(kvsc_kube_conn_t *c, const char *path, long timeout_s,
                              kvsc_line_cb cb, void *ud, long *code_p)
{
    struct curl_slist *h = NULL;
    kvsc_watch_t w = {.cb = cb, .ud = ud, .easy = c->easy};
    *code_p = 0;
    if (kvsc_kube_cancelled(c->kube)) {
        return KVSC_ERR_IO;
    }
    kvsc_status_t status = setup(c, "GET", path, NULL, &h);
    if (status != KVSC_OK) {
        return status;
    }
    CURL *e = c->easy;
    /* The server ends the watch after timeoutSeconds; this only catches a dead peer. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT, timeout_s + 30);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &w);
    CURLcode rc = curl_easy_perform(e);
    free_headers(h);
    if (w.code == 0) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &w.code);
    }
    *code_p = w.code;
    if (w.stopped) {
        status = KVSC_OK;
    } else if (w.broken) {
        fprintf(stderr,
                "kvshare-controller: watch %s: broken stream (line too long or no memory)\n", path);
        status = KVSC_ERR_IO;
    } else if (rc != CURLE_OK) {
        if (!kvsc_kube_cancelled(c->kube)) {
            fprintf(stderr, "kvshare-controller: watch %s: %s\n", path,
                    c->errbuf[0] != '\0' ? c->errbuf : curl_easy_strerror(rc));
        }
        status = KVSC_ERR_IO;
    } else if (w.code != 200) {
        if (w.code != 410) {
            fprintf(stderr, "kvshare-controller: watch %s: HTTP %ld %.*s\n", path, w.code,
                    (int)w.err.len, w.err.buf != NULL ? w.err.buf : "");
        }
        status = KVSC_ERR_IO;
    } else {
        status = KVSC_OK;
    }
    kvsc_lines_free(&w.lines);
    free(w.err.buf);
    return status;
}
