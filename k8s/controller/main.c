/* SPDX-License-Identifier: Apache-2.0 */
/* kvshare-controller: command line, signals and the main loop around the webhook server. */
#include "controller_int.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef KVSC_VERSION
#define KVSC_VERSION "0.0.0"
#endif

#define KVSC_DEFAULT_IMAGE "ghcr.io/kvshare/kvshare:" KVSC_VERSION

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: kvshare-controller --tls-cert FILE --tls-key FILE --no-reconcile [OPTIONS]\n"
            "\n"
            "Mutating admission webhook that injects the kvshare shim into pods labelled\n"
            "kvshare.io/inject=\"true\". Serves HTTPS only:\n"
            "  POST /mutate    AdmissionReview admission.k8s.io/v1 in, JSONPatch response out\n"
            "  GET  /healthz   200 while the process runs\n"
            "  GET  /readyz    200 while serving, 503 while shutting down\n"
            "  GET  /metrics   Prometheus text: requests by result, review latency histogram,\n"
            "                  patches emitted, certificate reloads\n"
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
            "                         shim (default " KVSC_DEFAULT_IMAGE ")\n"
            "  --listen-port PORT     kvshare data port put in KVSHARE_LISTEN (default %u)\n"
            "  --threads N            server threads (default: one per CPU)\n"
            "  --no-reconcile         run the webhook alone, with no API server connection.\n"
            "                         Required for now: the KVCachePool reconciler is not built\n"
            "                         yet, and without this flag the controller exits with 2.\n"
            "  --verbose              log every review on stderr\n"
            "  --version              print the version and exit\n"
            "  --help                 print this help and exit\n"
            "\n"
            "SIGTERM or SIGINT: stop accepting, finish, exit 0. Exit 1: runtime failure\n"
            "(bind, certificate). Exit 2: bad usage.\n",
            KVSC_DEFAULT_LISTEN_PORT);
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

int main(int argc, char **argv)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CERT,
        OPT_KEY,
        OPT_IMAGE,
        OPT_LPORT,
        OPT_THREADS,
        OPT_NORECONCILE,
        OPT_RELOAD,
        OPT_VERBOSE,
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
        {"reload-interval", required_argument, NULL, OPT_RELOAD},
        {"no-reconcile", no_argument, NULL, OPT_NORECONCILE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
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
    unsigned reload_s = 1;
    int no_reconcile = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
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
    if (!no_reconcile) {
        fprintf(stderr, "kvshare-controller: the KVCachePool reconciler is not built yet; run "
                        "with --no-reconcile to serve the webhook alone\n");
        return 2;
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
    int rc = 1;
    if (kvsc_metrics_create(&metrics) != KVSC_OK) {
        fprintf(stderr, "kvshare-controller: out of memory\n");
        return 1;
    }
    if (kvsc_server_start(&cfg, metrics, &server) != KVSC_OK) {
        goto out_metrics;
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
    kvsc_server_stop(server);
    rc = 0;
out_metrics:
    kvsc_metrics_destroy(metrics);
    return rc;
}
