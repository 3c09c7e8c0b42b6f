/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_serve.c - `kvshare serve`: a KVCachePool cache node with Prometheus metrics. */
#include "cli.h"
#include "util_int.h"

#include <errno.h>
#include <math.h>
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
               "  --listen    where peers connect (default KVSHARE_LISTEN, else 0.0.0.0:18515;\n"
               "              port 0 picks one);\n"
               "              prints 'ready HOST:PORT' on stdout once listening\n"
               "  --capacity  arena size, e.g. 512MiB or 8GiB. Default: KVSHARE_TOTAL_MEMORY_GB\n"
               "              divided by KVSHARE_REPLICAS (set by the KVCachePool controller),\n"
               "              else KVSHARE_CAPACITY, else 1GiB\n"
               "  --strategy  eviction order (default KVSHARE_STRATEGY, else lru)\n"
               "  --slot-bytes  round block sizes up to multiples of SIZE, so that fewer\n"
               "              arenas hold them (default KVSHARE_SLOT_BYTES, else 0: an arena\n"
               "              per exact block size, at most 16 sizes)\n"
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
               "Settings apply in the order flag > KVSHARE_* > KVSHARE_CONFIG file > default;\n"
               "a value that a flag replaces is not read.\n"
               "Stops cleanly on SIGTERM or SIGINT (and when stdin is a pipe that closes).\n"
               "Exit status: 0 stopped cleanly, 1 a failure at run time (such as a port in\n"
               "use), 2 a usage or configuration error (an option, KVSHARE_* or token file).\n");
}

static volatile sig_atomic_t stop_signal;
#ifdef KVS_HAVE_EVENTS
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
        /* Whether the kernel gives the arena's memfd huge pages: 0 makes
         * same-host puts several times slower on a VM (util/thp.c). */
        char thp[32];
        size_t used = strlen(body);
        snprintf(body + used, sizeof(body) - used,
                 "# HELP kvshare_pool_shmem_huge_pages 1 when the kernel may back the arena's "
                 "memfd with huge pages (shmem_enabled not never/deny).\n"
                 "# TYPE kvshare_pool_shmem_huge_pages gauge\nkvshare_pool_shmem_huge_pages %d\n",
                 kvs__shmem_thp_off(kvs__shmem_thp(thp, sizeof(thp))) ? 0 : 1);
#ifdef KVS_HAVE_EVENTS
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
#ifdef KVS_HAVE_EVENTS
    kvs_cli_events_close(events);
    events = NULL;
#endif
}

/* Settings as the user gave them; each value is checked by the flag's own name. */
typedef struct serve_opts {
    const char *listen, *metrics;
    const char *events_ep, *events_pod, *events_model, *events_replay;
    uint64_t queue, keep;
    bool has_capacity, has_slot, has_strategy;
    uint64_t capacity, slot;
    kvs_strategy_t strategy;
} serve_opts_t;

enum {
    O_LISTEN = 256,
    O_CAPACITY,
    O_STRATEGY,
    O_SLOT_BYTES,
    O_METRICS,
    O_EVENTS,
    O_EVENTS_POD,
    O_EVENTS_MODEL,
    O_EVENTS_QUEUE,
    O_EVENTS_REPLAY,
    O_EVENTS_REPLAY_BATCHES,
};

static const struct option serve_options[] = {
    {"listen", required_argument, NULL, O_LISTEN},
    {"capacity", required_argument, NULL, O_CAPACITY},
    {"strategy", required_argument, NULL, O_STRATEGY},
    {"slot-bytes", required_argument, NULL, O_SLOT_BYTES},
    {"metrics", required_argument, NULL, O_METRICS},
    {"events", required_argument, NULL, O_EVENTS},
    {"events-pod", required_argument, NULL, O_EVENTS_POD},
    {"events-model", required_argument, NULL, O_EVENTS_MODEL},
    {"events-queue", required_argument, NULL, O_EVENTS_QUEUE},
    {"events-replay", required_argument, NULL, O_EVENTS_REPLAY},
    {"events-replay-batches", required_argument, NULL, O_EVENTS_REPLAY_BATCHES},
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t serve_cmd = {"serve", usage, serve_options};

/* --capacity's default from the controller's env: KVSHARE_TOTAL_MEMORY_GB split over
 * KVSHARE_REPLICAS. Returns -1 when KVSHARE_TOTAL_MEMORY_GB is unset (the library's own
 * KVSHARE_CAPACITY, file or default then applies), 0 with *bytes set, or 2 after naming the
 * variable that is wrong. */
static int capacity_from_env(uint64_t *bytes)
{
    const char *total = getenv("KVSHARE_TOTAL_MEMORY_GB");
    if (total == NULL || total[0] == '\0')
        return -1;
    char *end;
    errno = 0;
    double gb = strtod(total, &end);
    if (end == total || *end != '\0' || errno != 0 || !isfinite(gb) || !(gb > 0) ||
        gb > 16.0 * 1024 * 1024 * 1024)
        return kvs_cli_usage_error(&serve_cmd,
                                   "KVSHARE_TOTAL_MEMORY_GB='%s': expected a number of GiB > 0, "
                                   "such as 64 or 0.5",
                                   total);
    uint64_t replicas = 1;
    const char *rep = getenv("KVSHARE_REPLICAS");
    if (rep != NULL && rep[0] != '\0' &&
        !kvs_cli_parse_u64("KVSHARE_REPLICAS", rep, 1, 1u << 20, &replicas))
        return 2;
    *bytes = (uint64_t)(gb * 1073741824.0 / (double)replicas);
    if (*bytes == 0)
        return kvs_cli_usage_error(&serve_cmd,
                                   "KVSHARE_TOTAL_MEMORY_GB='%s' / KVSHARE_REPLICAS='%s': less "
                                   "than a byte per replica",
                                   total, rep);
    return 0;
}

/* Reads the options; returns -1 to run, else the exit code (0 after --help, 2). The order is
 * flag > KVSHARE_* > KVSHARE_CONFIG file > default, and a value a flag replaces is not read. */
static int serve_parse(int argc, char **argv, serve_opts_t *o)
{
    const char *queue = NULL, *keep = NULL;
    char why[256];
    int c;
    while ((c = kvs_cli_getopt(&serve_cmd, argc, argv)) != -1) {
        switch (c) {
        case O_LISTEN: {
            kvs__endpoint_t ep;
            if (kvs__endpoint_parse(optarg, 0, &ep, why, sizeof(why)) != 0)
                return kvs_cli_usage_error(&serve_cmd, "--listen '%s': %s", optarg, why);
            o->listen = optarg;
            break;
        }
        case O_CAPACITY:
            /* Checked here (the library parses the same grammar) so that the error names
             * the flag. */
            if (!kvs_cli_parse_size("--capacity", optarg, 1, UINT64_MAX, &o->capacity))
                return 2;
            o->has_capacity = true;
            break;
        case O_SLOT_BYTES:
            if (!kvs_cli_parse_size("--slot-bytes", optarg, 0, UINT64_MAX, &o->slot))
                return 2;
            o->has_slot = true;
            break;
        case O_STRATEGY:
            if (strcmp(optarg, "lru") != 0 && strcmp(optarg, "lfu") != 0)
                return kvs_cli_usage_error(&serve_cmd, "--strategy '%s': accepted: lru, lfu",
                                           optarg);
            o->strategy = optarg[1] == 'r' ? KVS_STRATEGY_LRU : KVS_STRATEGY_LFU;
            o->has_strategy = true;
            break;
        case O_METRICS:
            o->metrics = optarg;
            break;
        case O_EVENTS:
            o->events_ep = optarg;
            break;
        case O_EVENTS_POD:
            o->events_pod = optarg;
            break;
        case O_EVENTS_MODEL:
            o->events_model = optarg;
            break;
        case O_EVENTS_QUEUE:
            queue = optarg;
            break;
        case O_EVENTS_REPLAY:
            o->events_replay = optarg;
            break;
        case O_EVENTS_REPLAY_BATCHES:
            keep = optarg;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    if (kvs_cli_no_operands(&serve_cmd, argc, argv) != 0)
        return 2;
    if ((o->events_pod || o->events_model || queue || o->events_replay || keep) &&
        o->events_ep == NULL)
        return kvs_cli_usage_error(&serve_cmd, "--events-pod/-model/-queue/-replay need --events");
    if ((o->events_replay || keep) && (o->events_model == NULL || o->events_replay == NULL))
        return kvs_cli_usage_error(&serve_cmd,
                                   "--events-replay needs --events-model (one topic, one "
                                   "sequence), and --events-replay-batches needs --events-replay");
    if (keep && !kvs_cli_parse_u64("--events-replay-batches", keep, 1, 1u << 24, &o->keep))
        return 2;
    if (o->events_pod && (strchr(o->events_pod, '@') || !o->events_pod[0]))
        return kvs_cli_usage_error(&serve_cmd,
                                   "--events-pod '%s': a non-empty name without '@' (topics are "
                                   "kv@<pod>@<model>)",
                                   o->events_pod);
    if (o->events_model && (strchr(o->events_model, '@') || !o->events_model[0]))
        return kvs_cli_usage_error(&serve_cmd,
                                   "--events-model '%s': a non-empty name without '@' (topics "
                                   "are kv@<pod>@<model>)",
                                   o->events_model);
    if (queue && !kvs_cli_parse_u64("--events-queue", queue, 1, 1u << 26, &o->queue))
        return 2;
#ifndef KVS_HAVE_EVENTS
    if (o->events_ep != NULL)
        return kvs_cli_usage_error(&serve_cmd, "--events: built without libzmq / msgpack-c");
#endif
#ifndef KVS_HAVE_MHD
    if (o->metrics != NULL)
        return kvs_cli_usage_error(&serve_cmd, "--metrics: built without libmicrohttpd");
#endif
    if (!o->has_capacity) {
        int rc = capacity_from_env(&o->capacity);
        if (rc > 0)
            return rc;
        o->has_capacity = rc == 0;
    }
    /* --listen's default: KVSHARE_LISTEN (checked by the library, by that name), else ours. */
    const char *env_listen = getenv("KVSHARE_LISTEN");
    if (o->listen == NULL && (env_listen == NULL || env_listen[0] == '\0'))
        o->listen = "0.0.0.0:18515";
    return -1;
}

int kvs_cli_serve(int argc, char **argv)
{
    serve_opts_t o = {.queue = 65536, .keep = 10000};
    int prc = serve_parse(argc, argv, &o);
    if (prc >= 0)
        return prc;
    const char *metrics_addr = o.metrics;
    const char *events_ep = o.events_ep, *events_pod = o.events_pod, *events_model = o.events_model;
    const char *events_replay = o.events_replay;
    uint64_t queue = o.queue, keep = o.keep;
#ifdef KVS_HAVE_EVENTS
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
    (void)events_ep;
    (void)events_pod;
    (void)events_model;
    (void)events_replay;
    (void)queue;
    (void)keep;
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
#endif
    if (getenv("KVSHARE_LOG") == NULL)
        setenv("KVSHARE_LOG", "warn", 1);

    char err[512];
    /* Flags become params, which the library ranks above KVSHARE_* and the file. */
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_POOL_NODE | KVS_CTX_FIELD_ERRBUF |
                                         KVS_CTX_FIELD_TRANSPORT | KVS_CTX_FIELD_PROGRESS,
                           .listen = o.listen,
                           .capacity_bytes = o.capacity,
                           .slot_bytes = o.slot,
                           .strategy = o.strategy,
                           .pool_node = 1,
                           .transport = "ucx",
                           .progress = KVS_PROGRESS_THREAD,
                           .errbuf = err,
                           .errbuf_len = sizeof(err)};
    cp.field_mask |= (o.listen != NULL ? KVS_CTX_FIELD_LISTEN : 0) |
                     (o.has_capacity ? KVS_CTX_FIELD_CAPACITY : 0) |
                     (o.has_slot ? KVS_CTX_FIELD_SLOT_BYTES : 0) |
                     (o.has_strategy ? KVS_CTX_FIELD_STRATEGY : 0);
#ifdef KVS_HAVE_EVENTS
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
#ifdef KVS_HAVE_EVENTS
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
