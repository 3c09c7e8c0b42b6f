/* SPDX-License-Identifier: Apache-2.0 */
/* kvshare-controller: command line, signals and the main loop around the webhook server and
 * the KVCachePool reconciler. */
#include "controller_int.h"
#include "util_int.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#ifndef KVSC_VERSION
#define KVSC_VERSION "0.0.0"
#endif

#define KVSC_DEFAULT_IMAGE "ghcr.io/kvshare/kvshare:" KVSC_VERSION

/* metrics.c gains kvsc_metrics_set_extra with the reconciler; until a build has it, the
 * reconciler's counters are simply not exported. */
#pragma weak kvsc_metrics_set_extra

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: kvshare-controller --tls-cert FILE --tls-key FILE [OPTIONS]\n"
            "\n"
            "Mutating admission webhook that injects the kvshare shim into pods labelled\n"
            "kvshare.io/inject=\"true\", and the KVCachePool reconciler: for every pool it\n"
            "keeps a Deployment and a headless Service \"<name>-cache\" of `kvshare serve` nodes\n"
            "and reports their readiness in the pool's status. Serves HTTPS only:\n"
            "  POST /mutate    AdmissionReview admission.k8s.io/v1 in, JSONPatch response out\n"
            "  GET  /healthz   200 while the process runs\n"
            "  GET  /readyz    200 while serving, 503 while shutting down\n"
            "  GET  /metrics   Prometheus text: requests by result, review latency histogram,\n"
            "                  patches emitted, certificate reloads; reconciles by result,\n"
            "                  watch restarts, API errors and writes\n"
            "\n"
            "Options:\n"
            "  --listen ADDR:PORT     address to serve on (default 0.0.0.0:8443; [::]:8443 for\n"
            "                         IPv6; port 0 picks a free port). The bound address is\n"
            "                         printed on stdout as \"listening on ADDR:PORT\".\n"
            "  --tls-cert FILE        PEM certificate (chain). Required.\n"
            "  --tls-key FILE         PEM private key. Required. Both files are checked every\n"
            "                         --reload-interval seconds and reloaded without dropping\n"
            "                         the listening socket when either changes (cert-manager\n"
            "                         rotation); a pair that does not match is refused and the\n"
            "                         old one kept.\n"
            "  --reload-interval SEC  how often to check the certificate files (default 1)\n"
            "  --image IMAGE          image of the injected init container that carries the\n"
            "                         shim, and of the cache nodes the reconciler runs\n"
            "                         (default " KVSC_DEFAULT_IMAGE ")\n"
            "  --listen-port PORT     kvshare data port put in KVSHARE_LISTEN, and the port cache\n"
            "                         nodes listen on (default %u)\n"
            "  --threads N            server threads (default: one per CPU)\n"
            "  --max-body-memory MIB  request bodies held at once, over all connections, in\n"
            "                         MiB (default %zu, sized to the 128 MiB memory limit in\n"
            "                         k8s/deploy). A review past it gets 429 with Retry-After.\n"
            "  --no-reconcile         run the webhook alone, with no API server connection.\n"
            "\n"
            "Reconciler options (API access defaults to the in-cluster ServiceAccount:\n"
            "KUBERNETES_SERVICE_HOST/PORT and "
            "/var/run/secrets/kubernetes.io/serviceaccount):\n"
            "  --kube-api URL         API server base URL, e.g. https://127.0.0.1:6443\n"
            "  --insecure-kube-api    allow an http:// --kube-api (the bearer token then travels\n"
            "                         in cleartext; for tests only, logs a warning). Without\n"
            "                         it an http:// URL is refused with exit status 2.\n"
            "  --kube-ca FILE         PEM CA bundle that signed the API server's certificate\n"
            "  --kube-token-file FILE bearer token, re-read on every request (rotation)\n"
            "  --namespace NS         watch pools in NS only (default: all namespaces)\n"
            "  --backoff-max SEC      cap of the retry delay after API errors (default 30)\n"
            "  --resync SEC           relist every pool this often, 0 never (default 600)\n"
            "  --watch-timeout SEC    longest single watch request (default 300)\n"
            "  --verbose              log every review, API request and reconcile on stderr\n"
            "  --version              print the version and exit\n"
            "  --help                 print this help and exit\n"
            "\n"
            "SIGTERM or SIGINT: stop accepting, finish, exit 0. Exit 1: runtime failure\n"
            "(bind, certificate, unreadable API CA or token file). Exit 2: bad usage, or no\n"
            "API server to reconcile against (not in a cluster and no --kube-api).\n",
            KVSC_DEFAULT_LISTEN_PORT, KVSC_DEFAULT_BODY_BUDGET / (1024 * 1024));
}

static int parse_uint(const char *flag, const char *s, unsigned long min, unsigned long max,
                      unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "kvshare-controller: %s %s: want an integer from %lu to %lu\n", flag, s,
                min, max);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

/* --listen ADDR:PORT (IPv6 in brackets, ADDR empty or '*' for all), checked before anything
 * starts: a port past 65535 would otherwise reach getaddrinfo, which takes it modulo 65536
 * (99999 became 34463). The address is resolved when binding. */
static int check_listen(const char *spec)
{
    kvs__endpoint_t ep;
    char why[128];

    if (kvs__endpoint_parse(spec, KVS__EP_HOST_OPTIONAL, &ep, why, sizeof(why)) != 0) {
        fprintf(stderr,
                "kvshare-controller: --listen %s: %s (want ADDR:PORT, [::]:PORT for IPv6)\n", spec,
                why);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CERT,
        OPT_KEY,
        OPT_IMAGE,
        OPT_LPORT,
        OPT_THREADS,
        OPT_MAX_BODY_MEMORY,
        OPT_NORECONCILE,
        OPT_RELOAD,
        OPT_VERBOSE,
        OPT_KUBE_API,
        OPT_INSECURE_KUBE_API,
        OPT_KUBE_CA,
        OPT_KUBE_TOKEN,
        OPT_NAMESPACE,
        OPT_BACKOFF_MAX,
        OPT_RESYNC,
        OPT_WATCH_TIMEOUT,
        OPT_VERSION,
        OPT_HELP
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"tls-cert", required_argument, NULL, OPT_CERT},
        {"tls-key", required_argument, NULL, OPT_KEY},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"listen-port", required_argument, NULL, OPT_LPORT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"max-body-memory", required_argument, NULL, OPT_MAX_BODY_MEMORY},
        {"reload-interval", required_argument, NULL, OPT_RELOAD},
        {"no-reconcile", no_argument, NULL, OPT_NORECONCILE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"kube-api", required_argument, NULL, OPT_KUBE_API},
        {"insecure-kube-api", no_argument, NULL, OPT_INSECURE_KUBE_API},
        {"kube-ca", required_argument, NULL, OPT_KUBE_CA},
        {"kube-token-file", required_argument, NULL, OPT_KUBE_TOKEN},
        {"namespace", required_argument, NULL, OPT_NAMESPACE},
        {"backoff-max", required_argument, NULL, OPT_BACKOFF_MAX},
        {"resync", required_argument, NULL, OPT_RESYNC},
        {"watch-timeout", required_argument, NULL, OPT_WATCH_TIMEOUT},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    kvsc_server_cfg_t cfg = {
        .listen = "0.0.0.0:8443",
        .inject = {.image = KVSC_DEFAULT_IMAGE,
                   .version = KVSC_VERSION,
                   .listen_port = KVSC_DEFAULT_LISTEN_PORT},
    };
    unsigned reload_s = 1, backoff_max_s = 30, resync_s = 600, watch_timeout_s = 300;
    const char *kube_api = NULL, *kube_ca = NULL, *kube_token = NULL, *namespace_ = NULL;
    int no_reconcile = 0, insecure_kube_api = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            if (check_listen(optarg) != 0) {
                return 2;
            }
            cfg.listen = optarg;
            break;
        case OPT_CERT:
            cfg.cert_file = optarg;
            break;
        case OPT_KEY:
            cfg.key_file = optarg;
            break;
        case OPT_IMAGE:
            if (optarg[0] == '\0') {
                fprintf(stderr, "kvshare-controller: --image must not be empty\n");
                return 2;
            }
            cfg.inject.image = optarg;
            break;
        case OPT_LPORT:
            if (parse_uint("--listen-port", optarg, 1, 65535, &cfg.inject.listen_port) != 0) {
                return 2;
            }
            break;
        case OPT_THREADS:
            if (parse_uint("--threads", optarg, 1, 1024, &cfg.threads) != 0) {
                return 2;
            }
            break;
        case OPT_MAX_BODY_MEMORY: {
            unsigned mib;
            if (parse_uint("--max-body-memory", optarg, 1, 65536, &mib) != 0) {
                return 2;
            }
            cfg.body_budget = (size_t)mib * 1024 * 1024;
            break;
        }
        case OPT_RELOAD:
            if (parse_uint("--reload-interval", optarg, 1, 3600, &reload_s) != 0) {
                return 2;
            }
            break;
        case OPT_NORECONCILE:
            no_reconcile = 1;
            break;
        case OPT_VERBOSE:
            cfg.verbose = 1;
            break;
        case OPT_KUBE_API:
            if (strncmp(optarg, "https://", 8) != 0 && strncmp(optarg, "http://", 7) != 0) {
                fprintf(stderr,
                        "kvshare-controller: --kube-api %s: want an https:// URL (http:// "
                        "only with --insecure-kube-api)\n",
                        optarg);
                return 2;
            }
            kube_api = optarg;
            break;
        case OPT_INSECURE_KUBE_API:
            insecure_kube_api = 1;
            break;
        case OPT_KUBE_CA:
            kube_ca = optarg;
            break;
        case OPT_KUBE_TOKEN:
            kube_token = optarg;
            break;
        case OPT_NAMESPACE:
            if (!kvs__dns_label(optarg, 63, 0)) {
                fprintf(stderr,
                        "kvshare-controller: --namespace %s: want a DNS-1123 label "
                        "(lower-case letters, digits and '-', at most 63)\n",
                        optarg);
                return 2;
            }
            namespace_ = optarg;
            break;
        case OPT_BACKOFF_MAX:
            if (parse_uint("--backoff-max", optarg, 1, 3600, &backoff_max_s) != 0) {
                return 2;
            }
            break;
        case OPT_RESYNC:
            if (parse_uint("--resync", optarg, 0, 86400, &resync_s) != 0) {
                return 2;
            }
            break;
        case OPT_WATCH_TIMEOUT:
            if (parse_uint("--watch-timeout", optarg, 1, 3600, &watch_timeout_s) != 0) {
                return 2;
            }
            break;
        case OPT_VERSION:
            printf("kvshare-controller %s\n", KVSC_VERSION);
            return 0;
        case 'h':
        case OPT_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvshare-controller: unexpected argument %s (see --help)\n", argv[optind]);
        return 2;
    }
    if (cfg.cert_file == NULL || cfg.key_file == NULL) {
        fprintf(stderr, "kvshare-controller: --tls-cert and --tls-key are required (see --help)\n");
        return 2;
    }
    /* Every request carries the ServiceAccount's bearer token: over http anyone on the path
     * reads it and can act as the controller (patch Deployments in every namespace). */
    if (!no_reconcile && kube_api != NULL && strncmp(kube_api, "http://", 7) == 0) {
        if (!insecure_kube_api) {
            fprintf(stderr,
                    "kvshare-controller: --kube-api %s: refusing a plain http:// API server, "
                    "which would send the bearer token in cleartext; use https://, or pass "
                    "--insecure-kube-api (tests only)\n",
                    kube_api);
            return 2;
        }
        fprintf(stderr,
                "kvshare-controller: warning: --insecure-kube-api: talking to %s over plain "
                "http; the bearer token is sent in cleartext\n",
                kube_api);
    }
    kvsc_kube_cfg_t kcfg = {
        .api = kube_api, .allow_http = insecure_kube_api, .verbose = cfg.verbose};
    char incluster_api[300];
    if (!no_reconcile && kube_api == NULL &&
        kvsc_kube_incluster_cfg(&kcfg, incluster_api, sizeof(incluster_api)) != KVSC_OK) {
        fprintf(stderr, "kvshare-controller: the KVCachePool reconciler needs an API server: "
                        "KUBERNETES_SERVICE_HOST is unset (not in a cluster) and no --kube-api "
                        "was given; pass --kube-api, or --no-reconcile to serve the webhook "
                        "alone\n");
        return 2;
    }
    if (kube_ca != NULL) {
        kcfg.ca_file = kube_ca;
    }
    if (kube_token != NULL) {
        kcfg.token_file = kube_token;
    }

    /* Block the stop signals before any server thread exists, so every thread inherits the
     * mask and only sigtimedwait below sees them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    kvsc_metrics_t *metrics = NULL;
    kvsc_server_t *server = NULL;
    kvsc_kube_t *kube = NULL;
    kvsc_reconciler_t *rec = NULL;
    kvsc_pool_auth_cache_t *pool_auth = NULL;
    int rc = 1;
    /* Before any thread: curl_global_init is not thread-safe on every build. */
    if (!no_reconcile && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "kvshare-controller: curl_global_init failed\n");
        return 1;
    }
    if (kvsc_metrics_create(&metrics) != KVSC_OK) {
        fprintf(stderr, "kvshare-controller: out of memory\n");
        goto out_curl;
    }
    if (!no_reconcile) {
        /* The webhook learns each pool's authSecretRef from the reconciler's reads. */
        if (kvsc_pool_auth_cache_create(&pool_auth) != KVSC_OK) {
            fprintf(stderr, "kvshare-controller: out of memory\n");
            goto out_metrics;
        }
        cfg.inject.pool_auth = kvsc_pool_auth_cache_lookup;
        cfg.inject.pool_auth_ud = pool_auth;
        kvsc_reconciler_cfg_t rcfg = {
            .build = {.image = cfg.inject.image, .listen_port = cfg.inject.listen_port},
            .namespace_ = namespace_,
            .backoff_max_ms = backoff_max_s * 1000u,
            .resync_s = resync_s,
            .watch_timeout_s = watch_timeout_s,
            .pool_auth = pool_auth,
            .verbose = cfg.verbose,
        };
        if (kvsc_kube_create(&kcfg, &kube) != KVSC_OK) {
            goto out_metrics;
        }
        if (kvsc_reconciler_start(&rcfg, kube, &rec) != KVSC_OK) {
            goto out_kube;
        }
        if (kvsc_metrics_set_extra != NULL) {
            kvsc_metrics_set_extra(metrics, kvsc_reconciler_metrics_render, rec);
        }
        fprintf(stderr, "kvshare-controller: reconciling KVCachePools in %s via %s\n",
                namespace_ != NULL ? namespace_ : "all namespaces", kcfg.api);
    }
    if (kvsc_server_start(&cfg, metrics, &server) != KVSC_OK) {
        goto out_rec;
    }
    printf("listening on %s\n", kvsc_server_address(server));
    fflush(stdout);

    for (;;) {
        struct timespec ts = {.tv_sec = (time_t)reload_s, .tv_nsec = 0};
        int sig = sigtimedwait(&stop, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            fprintf(stderr, "kvshare-controller: %s, shutting down\n",
                    sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
        if (sig < 0 && errno == EAGAIN) {
            kvsc_server_check_reload(server);
        }
    }
    /* The server first: its /metrics may still be reading the reconciler's counters. */
    kvsc_server_stop(server);
    rc = 0;
out_rec:
    kvsc_reconciler_stop(rec);
out_kube:
    kvsc_kube_destroy(kube);
out_metrics:
    kvsc_pool_auth_cache_destroy(pool_auth);
    kvsc_metrics_destroy(metrics);
out_curl:
    if (!no_reconcile) {
        curl_global_cleanup();
    }
    return rc;
}
