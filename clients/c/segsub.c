/*
 * segsub - reference subscriber for the segstream wire format, version 1, in C11.
 *
 *   segsub ENDPOINT [ENDPOINT...] [--count N] [--camera ID]... [--timeout S]
 *          [--max-pixels N]
 *
 * Connects a ZeroMQ SUB socket to segstream publishers, subscribes to seg/ (or
 * seg/ID per --camera), cls/ and evt/, and hands every multipart message to segwire.c,
 * which validates it against docs/wire-format.md, decodes label maps and prints one
 * line per message on stdout (format in segwire.h). Malformed messages are reported on
 * stderr ("segsub: rejected message #N: why") and skipped; the client carries on.
 *
 * Exit status: 0 after N label maps (or stopped by a signal with --count 0), 1 on a
 * setup error, 2 on a usage error, 3 when --timeout passed without a label map,
 * 130 when stopped by SIGINT/SIGTERM before N maps.
 *
 * Only libzmq and libzstd are used. Build: make (see README.md).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "segwire.h"

#define MAX_ENDPOINTS 8
#define MAX_CAMERAS 16
#define MAX_FRAMES 3          /* frames kept per message; more are counted and dropped */
#define POLL_SLICE_MS 500     /* longest wait before re-checking signals and timeouts */
#define KEEPALIVE_S 2 /* TCP keepalive: a vanished publisher host is dropped after ~8 s */
#define LOG_EVERY_REJECT 1000 /* log each of the first 1000 rejects, then 1 in 1000 */

enum exit_status { EXIT_OK = 0, EXIT_SETUP = 1, EXIT_USAGE = 2, EXIT_TIMEOUT = 3,
                   EXIT_SIGNAL = 130 };

struct options {
    const char *endpoints[MAX_ENDPOINTS];
    int n_endpoints;
    const char *cameras[MAX_CAMERAS]; /* empty: every camera */
    int n_cameras;
    long long count;                  /* label maps to receive; 0: until stopped */
    double timeout_s;                 /* give up after this long without a map; 0: never */
    long long max_pixels;
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
        "usage: segsub ENDPOINT [ENDPOINT...] [--count N] [--camera ID]... [--timeout S]\n"
        "              [--max-pixels N]\n"
        "\n"
        "Reference subscriber for the segstream wire format (docs/wire-format.md).\n"
        "Prints one line per message:\n"
        "  labels CAMERA SEQ H W ENCODING ID:COUNT,... FNV1A64\n"
        "  class_table ID K NAME...\n"
        "  event CAMERA STATE DETAIL\n"
        "\n"
        "options:\n"
        "  --count N       stop after N label maps (default 0: run until Ctrl-C)\n"
        "  --camera ID     only this camera (repeatable, at most %d)\n"
        "  --timeout S     exit with status 3 after S seconds without a label map\n"
        "                  (default 0: wait forever)\n"
        "  --max-pixels N  largest H*W accepted (default %lld)\n"
        "\n"
        "examples:\n"
        "  segsub tcp://vehicle:5555 --count 10\n"
        "  segsub ipc:///run/segstream.sock --camera front --timeout 5\n",
        MAX_CAMERAS, SEGWIRE_DEFAULT_MAX_PIXELS);
}

static int parse_number(const char *flag, const char *text, double min, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = text == NULL ? 0 : strtod(text, &end);
    if (text == NULL || end == text || *end != '\0' || errno != 0 || !(v >= min)) {
        fprintf(stderr, "segsub: %s needs a number >= %g, got '%s' (see --help)\n", flag, min,
                text == NULL ? "" : text);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns -1 on success, else the exit status (usage error, or 0 after --help). */
static int parse_args(int argc, char **argv, struct options *opt)
{
    double v;
    opt->max_pixels = SEGWIRE_DEFAULT_MAX_PIXELS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        struct segwire_err e;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(a, "--count") == 0) {
            if (parse_number(a, next, 0, &v) != 0 || v != (double)(long long)v)
                return EXIT_USAGE;
            opt->count = (long long)v;
            i++;
        } else if (strcmp(a, "--timeout") == 0) {
            if (parse_number(a, next, 0, &opt->timeout_s) != 0)
                return EXIT_USAGE;
            i++;
        } else if (strcmp(a, "--max-pixels") == 0) {
            if (parse_number(a, next, 1, &v) != 0 || v > 9.0e15)
                return EXIT_USAGE;
            opt->max_pixels = (long long)v;
            i++;
        } else if (strcmp(a, "--camera") == 0) {
            if (next == NULL || opt->n_cameras == MAX_CAMERAS) {
                fprintf(stderr, "segsub: --camera needs an id (at most %d cameras)\n",
                        MAX_CAMERAS);
                return EXIT_USAGE;
            }
            if (segwire_check_camera_id(next, strlen(next), &e) != 0) {
                fprintf(stderr, "segsub: --camera: %s\n", e.msg);
                return EXIT_USAGE;
            }
            opt->cameras[opt->n_cameras++] = next;
            i++;
        } else if (a[0] == '-') {
            fprintf(stderr, "segsub: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        } else if (opt->n_endpoints == MAX_ENDPOINTS) {
            fprintf(stderr, "segsub: at most %d endpoints\n", MAX_ENDPOINTS);
            return EXIT_USAGE;
        } else {
            opt->endpoints[opt->n_endpoints++] = a;
        }
    }
    if (opt->n_endpoints == 0) {
        fprintf(stderr, "segsub: no ENDPOINT given, e.g. tcp://localhost:5555 or "
                "ipc:///run/segstream.sock\n\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    return -1;
}

static int subscribe(void *sock, const char *prefix, const char *camera)
{
    char topic[SEGWIRE_ID_BYTES + 8];
    int n = snprintf(topic, sizeof topic, "%s%s", prefix, camera);
    return zmq_setsockopt(sock, ZMQ_SUBSCRIBE, topic, (size_t)n);
}

/* A SUB socket with TCP keepalive, subscribed per the options and connected.
 * Keepalive rather than ZMTP heartbeats on the SUB side: a reader that falls behind
 * fills its queue, libzmq stops reading, its heartbeat timeout fires on a live publisher
 * and the reconnect aborts libzmq 4.3.x ("_input_stopped", see docs/wire-format.md). */
static void *open_socket(void *ctx, const struct options *opt)
{
    int linger = 0, on = 1, idle = KEEPALIVE_S, cnt = 3;
    void *sock = zmq_socket(ctx, ZMQ_SUB);
    if (sock == NULL || zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger)
        || zmq_setsockopt(sock, ZMQ_TCP_KEEPALIVE, &on, sizeof on)
        || zmq_setsockopt(sock, ZMQ_TCP_KEEPALIVE_IDLE, &idle, sizeof idle)
        || zmq_setsockopt(sock, ZMQ_TCP_KEEPALIVE_INTVL, &idle, sizeof idle)
        || zmq_setsockopt(sock, ZMQ_TCP_KEEPALIVE_CNT, &cnt, sizeof cnt)
        || subscribe(sock, "cls/", "")) {
        fprintf(stderr, "segsub: cannot create a ZeroMQ SUB socket: %s\n", zmq_strerror(errno));
        goto fail;
    }
    for (int i = 0; i < (opt->n_cameras ? opt->n_cameras : 1); i++) {
        const char *cam = opt->n_cameras ? opt->cameras[i] : "";
        if (subscribe(sock, "seg/", cam) || subscribe(sock, "evt/", cam)) {
            fprintf(stderr, "segsub: cannot subscribe: %s\n", zmq_strerror(errno));
            goto fail;
        }
    }
    for (int i = 0; i < opt->n_endpoints; i++)
        if (zmq_connect(sock, opt->endpoints[i]) != 0) {
            fprintf(stderr, "segsub: cannot connect to '%s': %s; expected e.g. "
                    "tcp://host:5555 or ipc:///path\n", opt->endpoints[i], zmq_strerror(errno));
            goto fail;
        }
    return sock;
fail:
    if (sock != NULL)
        zmq_close(sock);
    return NULL;
}

/* Receive one whole multipart message, keeping its first MAX_FRAMES frames (initialised
 * in parts; the caller closes min(n, MAX_FRAMES) of them). Returns the frame count n, or
 * -1 (errno set; nothing left to close) on error or when a signal stopped us. */
static int recv_message(void *sock, zmq_msg_t parts[MAX_FRAMES])
{
    int n = 0, more;
    do {
        zmq_msg_t spare, *m = n < MAX_FRAMES ? &parts[n] : &spare;
        zmq_msg_init(m);
        while (zmq_msg_recv(m, sock, 0) < 0) {
            if (errno == EINTR && !g_stop)
                continue;
            int saved = errno;
            for (int i = 0; i <= n && i < MAX_FRAMES; i++)
                zmq_msg_close(&parts[i]);
            if (n >= MAX_FRAMES)
                zmq_msg_close(&spare);
            errno = saved;
            return -1;
        }
        more = zmq_msg_more(m);
        if (m == &spare)
            zmq_msg_close(&spare);
        n++;
    } while (more);
    return n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Receive, validate and print until the count is reached, a signal, or the timeout. */
static int run(void *sock, const struct options *opt, struct segwire *w, long long *rejected)
{
    double deadline = now_s() + opt->timeout_s;
    while (opt->count == 0 || w->maps < opt->count) {
        long wait_ms = POLL_SLICE_MS;
        if (g_stop)
            return opt->count == 0 ? EXIT_OK : EXIT_SIGNAL;
        if (opt->timeout_s > 0) {
            double left = deadline - now_s();
            if (left <= 0) {
                fprintf(stderr, "segsub: no label map for %g s: is the publisher running and "
                        "reachable at the endpoint?\n", opt->timeout_s);
                return EXIT_TIMEOUT;
            }
            if (left * 1000 < wait_ms)
                wait_ms = (long)(left * 1000) + 1;
        }
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, wait_ms);
        if (ready < 0 && errno != EINTR) {
            fprintf(stderr, "segsub: poll failed: %s\n", zmq_strerror(errno));
            return EXIT_SETUP;
        }
        if (ready <= 0)
            continue;
        zmq_msg_t parts[MAX_FRAMES];
        int n = recv_message(sock, parts);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "segsub: receive failed: %s\n", zmq_strerror(errno));
            return EXIT_SETUP;
        }
        struct segwire_frame frames[MAX_FRAMES];
        for (int i = 0; i < n && i < MAX_FRAMES; i++)
            frames[i] = (struct segwire_frame){zmq_msg_data(&parts[i]), zmq_msg_size(&parts[i])};
        struct segwire_err e;
        long long maps_before = w->maps;
        if (segwire_handle(w, frames, n, &e) != 0) {
            ++*rejected;
            if (*rejected <= LOG_EVERY_REJECT || *rejected % LOG_EVERY_REJECT == 0)
                fprintf(stderr, "segsub: rejected message #%lld: %s\n", *rejected, e.msg);
        }
        for (int i = 0; i < n && i < MAX_FRAMES; i++)
            zmq_msg_close(&parts[i]);
        if (w->maps != maps_before)
            deadline = now_s() + opt->timeout_s;
    }
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    struct options opt;
    struct segwire w;
    long long rejected = 0;
    memset(&opt, 0, sizeof opt);
    int status = parse_args(argc, argv, &opt);
    if (status >= 0)
        return status;
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per message, also into a pipe */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (segwire_init(&w, opt.cameras, opt.n_cameras, opt.max_pixels) != 0) {
        fprintf(stderr, "segsub: out of memory creating the zstd decoder\n");
        return EXIT_SETUP;
    }
    void *ctx = zmq_ctx_new();
    void *sock = ctx == NULL ? NULL : open_socket(ctx, &opt);
    if (sock == NULL) {
        status = EXIT_SETUP;
    } else {
        status = run(sock, &opt, &w, &rejected);
        zmq_close(sock);
    }
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    fprintf(stderr, "segsub: %lld label maps, %lld class tables, %lld events, %lld rejected\n",
            w.maps, w.tables, w.events, rejected);
    segwire_free(&w);
    return status;
}
