/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_serve.c - `kvshare serve`: a KVCachePool cache node with Prometheus metrics. */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef KVS_HAVE_MHD
#include <microhttpd.h>
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: kvshare serve [--listen HOST:PORT] [--capacity SIZE] [--strategy lru|lfu]\n"
               "                     [--slot-bytes SIZE] [--metrics HOST:PORT]\n"
               "                     [--events [connect:]ENDPOINT [--events-pod NAME]\n"
               "                      [--events-model NAME] [--events-queue N]\n"
               "                      [--events-replay ENDPOINT [--events-replay-batches N]]]\n"
               "\n"
               "A cache-pool node: holds KV blocks that clients offload (kvs_put) in host\n"
               "arenas (one per block size), and serves lookups and fetches of them to any\n"
               "client, for any model and block size at once.\n"
               "  --listen    where peers connect (default 0.0.0.0:18515; port 0 picks one);\n"
               "              prints 'ready HOST:PORT' on stdout once listening\n"
               "  --capacity  arena size, e.g. 512MiB or 8GiB. Default: KVSHARE_TOTAL_MEMORY_GB\n"
               "              divided by KVSHARE_REPLICAS (set by the KVCachePool controller),\n"
               "              else KVSHARE_CAPACITY, else 1GiB\n"
               "  --strategy  eviction order (default KVSHARE_STRATEGY, else lru)\n"
               "  --slot-bytes  round block sizes up to multiples of SIZE, so that fewer\n"
               "              arenas hold them (default 0: an arena per exact block size,\n"
               "              at most 16 sizes)\n"
               "  --metrics   serve Prometheus text on http://HOST:PORT/metrics, bound to HOST\n"
               "              only: an IPv4 or IPv6 literal ([::1]:9090) or a name that\n"
               "              resolves (its first address); 0.0.0.0 or [::] for every\n"
               "              interface; port 0 picks one (printed in the listening line)\n"
               "  --events    publish the node's stores and evictions as vLLM KV events\n"
               "              (ZMQ PUB bound to ENDPOINT, e.g. tcp://*:5557; connect:ENDPOINT\n"
               "              connects to an index's bind: source) with medium KVSHARE_POOL,\n"
               "              so `kvshare index --source` sees the pool as a tier\n"
               "  --events-pod    the pod part of the topic kv@<pod>@<model> (default: the\n"
               "              listen address)\n"
               "  --events-model  the model part (default: each layout id in hex, a topic\n"
               "              per layout); name the vLLM model to score the pool beside pods\n"
               "  --events-queue  events queued for the publisher before they are dropped\n"
               "              and counted (default 65536; a drop shows indexes a gap)\n"
               "  --events-replay  bind a replay ROUTER (vLLM's protocol: an index fills its\n"
               "              gaps and warms up from it); needs --events-model (one topic)\n"
               "  --events-replay-batches  batches kept for replays (default 10000)\n"
               "Authentication (on by default): every client and node of the pool must share\n"
               "one token. KVSHARE_AUTH_TOKEN_FILE=PATH names a file holding it (1 to 4096\n"
               "bytes; make one with `head -c 32 /dev/urandom | base64 > token; chmod 600\n"
               "token`); without it the node refuses to start. KVSHARE_AUTH=none runs open:\n"
               "any process that reaches the port can read and write the cached KV (prompts).\n"
               "Stops cleanly on SIGTERM or SIGINT (and when stdin is a pipe that closes).\n"
               "Exit status: 0 stopped cleanly, 1 a failure at run time (such as a port in\n"
               "use), 2 a usage or configuration error (an option, KVSHARE_* or token file).\n");
}

static volatile sig_atomic_t stop_signal;
#ifdef KVS_HAVE_INDEX
static kvs_cli_events_t *events; /* --events; read by the metrics thread */
#endif

static void on_signal(int sig)
{
    stop_signal = sig;
}

#ifdef KVS_HAVE_MHD
static enum MHD_Result metrics(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *size, void **state)
{
    (void)version;
    (void)data;
    (void)size;
    (void)state;
    kvs_ctx_h ctx = cls;
    char body[4096];
    unsigned code = MHD_HTTP_OK;
    if (strcmp(method, "GET") != 0) {
        snprintf(body, sizeof(body), "method not allowed\n");
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") == 0) {
        kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_PEERS};
        kvs_stats_query(ctx, &st);
        snprintf(body, sizeof(body),
                 "# HELP kvshare_pool_blocks Blocks held.\n# TYPE kvshare_pool_blocks gauge\n"
                 "kvshare_pool_blocks %llu\n"
                 "# HELP kvshare_pool_bytes Arena bytes in use.\n"
                 "# TYPE kvshare_pool_bytes gauge\nkvshare_pool_bytes %llu\n"
                 "# HELP kvshare_pool_capacity_bytes Arena capacity.\n"
                 "# TYPE kvshare_pool_capacity_bytes gauge\nkvshare_pool_capacity_bytes %llu\n"
                 "# HELP kvshare_pool_hits_total Keys found by lookups.\n"
                 "# TYPE kvshare_pool_hits_total counter\nkvshare_pool_hits_total %llu\n"
                 "# HELP kvshare_pool_misses_total Lookups that missed part of their chain.\n"
                 "# TYPE kvshare_pool_misses_total counter\nkvshare_pool_misses_total %llu\n"
                 "# HELP kvshare_pool_evictions_total Blocks evicted.\n"
                 "# TYPE kvshare_pool_evictions_total counter\nkvshare_pool_evictions_total %llu\n"
                 "# HELP kvshare_pool_peers Peers connected now.\n"
                 "# TYPE kvshare_pool_peers gauge\nkvshare_pool_peers %llu\n"
                 "# HELP kvshare_pool_leased_blocks Blocks pinned by peers' leases now.\n"
                 "# TYPE kvshare_pool_leased_blocks gauge\nkvshare_pool_leased_blocks %llu\n",
                 (unsigned long long)st.blocks, (unsigned long long)st.bytes,
                 (unsigned long long)st.capacity_bytes, (unsigned long long)st.hits,
                 (unsigned long long)st.misses, (unsigned long long)st.evictions,
                 (unsigned long long)st.peers, (unsigned long long)st.leased_blocks);
#ifdef KVS_HAVE_INDEX
        if (events != NULL) {
            unsigned long long pub, drop, bat;
            kvs_cli_events_stats(events, &pub, &drop, &bat);
            size_t len = strlen(body);
            snprintf(body + len, sizeof(body) - len,
                     "# HELP kvshare_pool_events_published_total Block events published.\n"
                     "# TYPE kvshare_pool_events_published_total counter\n"
                     "kvshare_pool_events_published_total %llu\n"
                     "# HELP kvshare_pool_events_dropped_total Block events dropped (queue "
                     "full).\n# TYPE kvshare_pool_events_dropped_total counter\n"
                     "kvshare_pool_events_dropped_total %llu\n"
                     "# HELP kvshare_pool_events_batches_total Event batches sent.\n"
                     "# TYPE kvshare_pool_events_batches_total counter\n"
                     "kvshare_pool_events_batches_total %llu\n",
                     pub, drop, bat);
        }
#endif
    } else if (strcmp(url, "/healthz") == 0) {
        snprintf(body, sizeof(body), "ok\n");
    } else {
        snprintf(body, sizeof(body), "not found\n");
        code = MHD_HTTP_NOT_FOUND;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}
#endif

static void events_close(void)
{
#ifdef KVS_HAVE_INDEX
    kvs_cli_events_close(events);
    events = NULL;
#endif
}

/* Capacity from the controller's env: total pool memory split over replicas. */
static bool capacity_from_env(uint64_t *bytes, char *why, size_t wl)
{
    const char *total = getenv("KVSHARE_TOTAL_MEMORY_GB");
    if (total == NULL || total[0] == '\0')
        return false;
    char *end;
    double gb = strtod(total, &end);
    const char *rep = getenv("KVSHARE_REPLICAS");
    unsigned long replicas = rep != NULL && rep[0] != '\0' ? strtoul(rep, NULL, 10) : 1;
    if (*end != '\0' || !(gb > 0) || replicas == 0) {
        snprintf(why, wl,
                 "KVSHARE_TOTAL_MEMORY_GB='%s' / KVSHARE_REPLICAS='%s': expected a number > 0 "
                 "and a count >= 1",
                 total, rep ? rep : "");
        *bytes = 0;
        return true;
    }
    *bytes = (uint64_t)(gb * 1073741824.0 / (double)replicas);
    return true;
}

int kvs_cli_serve(int argc, char **argv)
{
    const char *listen = "0.0.0.0:18515", *strategy = NULL, *metrics_addr = NULL;
    const char *capacity = NULL, *slot = NULL;
    const char *events_ep = NULL, *events_pod = NULL, *events_model = NULL, *events_queue = NULL;
    const char *events_replay = NULL, *events_keep = NULL;
    /* Options come in pairs: i steps over the flag and its value. */
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char **dst = strcmp(a, "--listen") == 0                  ? &listen
                           : strcmp(a, "--capacity") == 0              ? &capacity
                           : strcmp(a, "--strategy") == 0              ? &strategy
                           : strcmp(a, "--slot-bytes") == 0            ? &slot
                           : strcmp(a, "--metrics") == 0               ? &metrics_addr
                           : strcmp(a, "--events") == 0                ? &events_ep
                           : strcmp(a, "--events-pod") == 0            ? &events_pod
                           : strcmp(a, "--events-model") == 0          ? &events_model
                           : strcmp(a, "--events-queue") == 0          ? &events_queue
                           : strcmp(a, "--events-replay") == 0         ? &events_replay
                           : strcmp(a, "--events-replay-batches") == 0 ? &events_keep
                                                                       : NULL;
        if (dst == NULL) {
            fprintf(stderr, "kvshare serve: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (v == NULL) {
            fprintf(stderr, "kvshare serve: %s needs a value\n", a);
            return 2;
        }
        *dst = v;
    }
    /* Checked here too (the library parses the same grammar) so that the error names the flag. */
    uint64_t size;
    if ((capacity != NULL && !kvs_cli_parse_size("--capacity", capacity, 1, UINT64_MAX, &size)) ||
        (slot != NULL && !kvs_cli_parse_size("--slot-bytes", slot, 0, UINT64_MAX, &size)))
        return 2;
    uint64_t queue = 65536, keep = 10000;
    if ((events_pod || events_model || events_queue || events_replay || events_keep) &&
        events_ep == NULL) {
        fprintf(stderr, "kvshare serve: --events-pod/-model/-queue/-replay need --events\n");
        return 2;
    }
    if ((events_replay || events_keep) && (events_model == NULL || events_replay == NULL)) {
        fprintf(stderr, "kvshare serve: --events-replay needs --events-model (one topic, one "
                        "sequence), and --events-replay-batches needs --events-replay\n");
        return 2;
    }
    if (events_keep &&
        !kvs_cli_parse_u64("--events-replay-batches", events_keep, 1, 1u << 24, &keep))
        return 2;
    if ((events_pod && (strchr(events_pod, '@') || !events_pod[0])) ||
        (events_model && (strchr(events_model, '@') || !events_model[0]))) {
        fprintf(stderr, "kvshare serve: --events-pod/--events-model: a non-empty name "
                        "without '@' (topics are kv@<pod>@<model>)\n");
        return 2;
    }
    if (events_queue && !kvs_cli_parse_u64("--events-queue", events_queue, 1, 1u << 26, &queue))
        return 2;
#ifdef KVS_HAVE_INDEX
    if (events_ep != NULL) {
        char ewhy[256];
        /* Bound before the node starts: the store reports to it from its first block. */
        if ((events = kvs_cli_events_open(events_ep, queue, ewhy, sizeof(ewhy))) == NULL) {
            fprintf(stderr, "kvshare serve: --events '%s': %s\n", events_ep, ewhy);
            return 2;
        }
        if (events_replay != NULL &&
            kvs_cli_events_replay(events, events_replay, keep, ewhy, sizeof(ewhy)) != 0) {
            fprintf(stderr, "kvshare serve: --events-replay '%s': %s\n", events_replay, ewhy);
            events_close();
            return 2;
        }
    }
#else
    if (events_ep != NULL) {
        fprintf(stderr, "kvshare serve: --events: built without libzmq / msgpack-c\n");
        return 2;
    }
#endif
#ifdef KVS_HAVE_MHD
    /* Bound before the node starts, so a bad value fails fast and names itself. */
    int metrics_fd = -1;
    char metrics_bound[300] = "";
    if (metrics_addr != NULL) {
        char mwhy[384];
        int bad_usage;
        metrics_fd = kvs_cli_listen(metrics_addr, metrics_bound, sizeof(metrics_bound), mwhy,
                                    sizeof(mwhy), &bad_usage);
        if (metrics_fd < 0) {
            fprintf(stderr, "kvshare serve: --metrics '%s': %s\n", metrics_addr, mwhy);
            events_close();
            return bad_usage ? 2 : 1;
        }
        metrics_addr = metrics_bound;
    }
#else
    if (metrics_addr != NULL) {
        fprintf(stderr, "kvshare serve: --metrics: built without libmicrohttpd\n");
        return 2;
    }
#endif
    /* Flags become the library's own settings, so one parser checks them. */
    char why[256] = "";
    uint64_t env_cap = 0;
    if (capacity != NULL)
        setenv("KVSHARE_CAPACITY", capacity, 1);
    else if (capacity_from_env(&env_cap, why, sizeof(why))) {
        if (env_cap == 0) {
            fprintf(stderr, "kvshare serve: %s\n", why);
#ifdef KVS_HAVE_MHD
            if (metrics_fd >= 0)
                close(metrics_fd);
#endif
            events_close();
            return 2;
        }
        char b[32];
        snprintf(b, sizeof(b), "%llu", (unsigned long long)env_cap);
        setenv("KVSHARE_CAPACITY", b, 1);
    }
    if (strategy != NULL)
        setenv("KVSHARE_STRATEGY", strategy, 1);
    if (slot != NULL)
        setenv("KVSHARE_SLOT_BYTES", slot, 1);
    if (getenv("KVSHARE_LOG") == NULL)
        setenv("KVSHARE_LOG", "warn", 1);

    char err[512];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_LISTEN | KVS_CTX_FIELD_POOL_NODE |
                                         KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                         KVS_CTX_FIELD_PROGRESS,
                           .listen = listen,
                           .pool_node = 1,
                           .transport = "ucx",
                           .progress = KVS_PROGRESS_THREAD,
                           .errbuf = err,
                           .errbuf_len = sizeof(err)};
#ifdef KVS_HAVE_INDEX
    if (events != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_BLOCK_EVENTS;
        cp.block_event_fn = kvs_cli_events_on_block;
        cp.block_event_arg = events;
    }
#endif
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare serve: %s\n", err[0] ? err : kvs_status_string(st));
#ifdef KVS_HAVE_MHD
        if (metrics_fd >= 0)
            close(metrics_fd);
#endif
        events_close();
        /* A bad setting (flag, KVSHARE_* or token file) is the caller's to
         * fix: a usage error. Anything else failed at run time. */
        return st == KVS_ERR_CONFIG ? 2 : 1;
    }
#ifdef KVS_HAVE_MHD
    struct MHD_Daemon *mhd = NULL;
#endif
#ifdef KVS_HAVE_MHD
    if (metrics_fd >= 0) {
        /* MHD takes the socket we bound (and closes it when stopped). */
        mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                               metrics, ctx, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)metrics_fd,
                               MHD_OPTION_END);
        if (mhd == NULL) {
            fprintf(stderr, "kvshare serve: --metrics '%s': cannot start the HTTP server\n",
                    metrics_addr);
            close(metrics_fd);
            kvs_ctx_destroy(ctx);
            events_close();
            return 1;
        }
    }
#endif
    char addr[300];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
#ifdef KVS_HAVE_INDEX
    if (events != NULL) {
        char ewhy[256];
        if (kvs_cli_events_run(events, events_pod ? events_pod : addr, events_model, ewhy,
                               sizeof(ewhy)) != 0) {
            fprintf(stderr, "kvshare serve: --events: %s\n", ewhy);
#ifdef KVS_HAVE_MHD
            if (mhd != NULL)
                MHD_stop_daemon(mhd);
#endif
            kvs_ctx_destroy(ctx);
            events_close();
            return 1;
        }
        char rep_ep[300];
        const char *rep = kvs_cli_events_replay_endpoint(events, rep_ep, sizeof(rep_ep));
        fprintf(stderr, "kvshare serve: publishing block events on %s%s%s\n",
                kvs_cli_events_endpoint(events), rep ? ", replay on " : "", rep ? rep : "");
    }
#endif
    kvs_stats_t s0 = {0};
    kvs_stats_query(ctx, &s0);
    printf("ready %s\n", addr);
    fflush(stdout);
    fprintf(stderr, "kvshare serve: listening on %s, capacity %llu bytes%s%s\n", addr,
            (unsigned long long)s0.capacity_bytes, metrics_addr ? ", metrics on " : "",
            metrics_addr ? metrics_addr : "");

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct stat in;
    bool watch_stdin = fstat(0, &in) == 0 && S_ISFIFO(in.st_mode);
    while (!stop_signal) {
        if (watch_stdin) {
            char buf[64];
            ssize_t n = read(0, buf, sizeof(buf)); /* interrupted by the signal */
            if (n == 0)
                break;
        } else {
            pause();
        }
    }
    fprintf(stderr, "kvshare serve: stopping (%s)\n",
            stop_signal == SIGTERM  ? "SIGTERM"
            : stop_signal == SIGINT ? "SIGINT"
                                    : "stdin closed");
#ifdef KVS_HAVE_MHD
    if (mhd != NULL)
        MHD_stop_daemon(mhd);
#endif
    /* Peers mid-fetch see their connection end and fail with a clear status. */
    kvs_ctx_destroy(ctx);
    events_close(); /* after the store's last event */
    return 0;
}
