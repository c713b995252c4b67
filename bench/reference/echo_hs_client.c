/*
 * The handshake cells' C client (issue 19): about the least work a Linux client
 * can do to make a TLS echo server take TLS 1.3 handshakes, as echo_client.c is
 * for request/response.  A Python client does as much TLS work per handshake as
 * the server, so echod-bench alone cannot show a server's handshake rate.
 *
 * One thread, non-blocking sockets, level-triggered epoll, OpenSSL.  Each of
 * CONNECTIONS slots loops: connect, TLS 1.3 handshake, send SIZE bytes, read them
 * back and check every byte (a slice of the same pseudo-random block echo_client
 * uses, from a new offset each time), send close_notify, close, connect again.
 * The certificate is not verified unless -c names a CA file (echod-bench's
 * --insecure): the client spends its core on the handshake.
 *
 * -r resumes: each slot offers the newest session ticket its previous connection
 * was given (TLS 1.3 tickets arrive after the handshake, before the echo, through
 * the new-session callback; a ticket is used once, RFC 8446 C.4).  Every handshake
 * of a slot after its first must then be resumed (SSL_session_reused): one that is
 * not, or a connection that brought no ticket, counts as "not_resumed", an error,
 * so a server that ignores tickets cannot pass for a fast resuming one.
 *
 * Errors are counted by kind and the slot starts again; the run stops early at the
 * first mismatch or after ERROR_LIMIT errors.  After the window no connection
 * starts; those under way get DRAIN_SECONDS to finish, and count as timeouts then.
 *
 * Usage: echo-hs-client [-r] [-s SIZE] [-c CAFILE] [-n NAME]
 *                       HOST PORT CONNECTIONS SECONDS [WARMUP]
 * Prints one JSON object to stdout, counted over SECONDS after WARMUP (default 1):
 *   {"mode": "full"|"resumed", "handshakes": N, "resumed": R, "seconds": S,
 *    "handshakes_per_s": H, "window": [T0, T1], "latency_us": {"p50": .., "p99": ..,
 *    "p99.9": ..}, "mismatches": M, "closed": C, "timeouts": T, "tls": E,
 *    "connect": K, "not_resumed": U}
 * A handshake counts once its echo is checked; latency is connect + handshake.
 * "window" is the measured window in CLOCK_MONOTONIC seconds, for sampling the
 * server's CPU over the same span.  Exit 0 when clean, 3 on a mismatch, 1 on any
 * other error or no handshake at all, 2 on bad usage.
 * Build: cc -O2 -Wall -o echo-hs-client echo_hs_client.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"

#define MAX_SIZE 16384 /* one TLS record: one SSL_write, all or nothing */
#define MAX_CONNECTIONS 4096
#define MAX_SECONDS 3600.0
#define MAX_EVENTS 512
#define TIMEOUT_SECONDS 10.0 /* one connection's connect, handshake and echo */
#define DRAIN_SECONDS 5.0
#define ERROR_LIMIT 100
#define MAX_SAMPLES (1u << 20) /* latencies kept; past it, a uniform reservoir */

enum state { IDLE, CONNECTING, HANDSHAKING, SENDING, RECEIVING };
enum kind { MISMATCH, CLOSED, TIMEOUT, TLS, CONNECT, NOT_RESUMED, KINDS };
static const char *const KIND_NAMES[KINDS] = {"mismatches", "closed", "timeouts",
                                              "tls", "connect", "not_resumed"};

struct conn {
    int fd;
    SSL *ssl;
    enum state state;
    unsigned watching;    /* the epoll events asked for */
    size_t base;          /* the slot's own offset in the pattern block */
    size_t offset;        /* this message's start in the block */
    size_t received;
    double started;       /* connect() */
    double handshaken;
    int reused;
    int offered;          /* a ticket was offered in this handshake */
    long completed;       /* echoes checked on this slot */
    SSL_SESSION *ticket;  /* the newest ticket this slot was given (-r) */
};

static unsigned char *pattern; /* the block twice, so any slice is contiguous */
static size_t size = 64;
static int resume;
static struct addrinfo *target;
static SSL_CTX *ctx;
static const char *name;   /* SNI and the name verified, if any */
static int ep;
static int *idle, idle_count;
static long counts[KINDS], handshakes, resumed;
static int measuring, draining;
static uint32_t *samples;
static size_t sampled;
static unsigned long long seen, rng = 862;
static char first_tls_error[256]; /* said on stderr: why handshakes failed */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long errors(void) {
    long total = 0;
    for (int k = 0; k < KINDS; k++) total += counts[k];
    return total;
}

static void sample(double seconds) {
    uint32_t us = seconds > 4e3 ? UINT32_MAX : (uint32_t)(seconds * 1e6);
    seen++;
    if (sampled < MAX_SAMPLES) {
        samples[sampled++] = us;
        return;
    }
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    unsigned long long slot = (rng >> 11) % seen;
    if (slot < MAX_SAMPLES) samples[slot] = us;
}

static int by_value(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t percentile(double p) {
    size_t i = (size_t)(p / 100.0 * (double)sampled);
    return samples[i < sampled ? i : sampled - 1];
}

/* TLS 1.3 tickets come after the handshake, while the echo is read. */
static int on_ticket(SSL *ssl, SSL_SESSION *session) {
    struct conn *c = SSL_get_app_data(ssl);
    if (!SSL_SESSION_is_resumable(session)) return 0;
    if (c->ticket) SSL_SESSION_free(c->ticket);
    c->ticket = session;
    return 1; /* the slot keeps the reference */
}

static void watch(struct conn *c, unsigned events) {
    if (c->watching == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->watching = events;
}

static struct conn *conns;

/* close_notify first: OpenSSL marks the session of a connection freed without it
 * as not resumable, and a real client says goodbye. */
static void release(struct conn *c, int clean) {
    if (clean) SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    close(c->fd);
    ERR_clear_error(); /* SSL_get_error reads this thread's queue: leave it empty */
    c->ssl = NULL;
    c->state = IDLE;
    idle[idle_count++] = (int)(c - conns);
}

static void fail(struct conn *c, enum kind kind) {
    counts[kind]++;
    release(c, 0);
}

/* Whether the call would block (and what to wait for is watched), else the error. */
static int would_block(struct conn *c, int r, enum kind *kind) {
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        watch(c, EPOLLIN);
        return 1;
    case SSL_ERROR_WANT_WRITE:
        watch(c, EPOLLOUT);
        return 1;
    case SSL_ERROR_SSL:
        *kind = TLS; /* an alert, a bad record: the server's TLS, not the transport */
        if (!first_tls_error[0])
            ERR_error_string_n(ERR_peek_error(), first_tls_error, sizeof first_tls_error);
        return 0;
    default:
        *kind = CLOSED; /* EOF or a reset, with or without close_notify */
        return 0;
    }
}

static void start(struct conn *c) {
    c->started = now();
    c->received = 0;
    c->offset = (c->base + (size_t)c->completed * size) % PERIOD;
    c->reused = c->offered = 0;
    c->fd = socket(target->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        counts[CONNECT]++;
        idle[idle_count++] = (int)(c - conns);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_app_data(c->ssl, c);
    SSL_set_connect_state(c->ssl);
    if (name) {
        SSL_set_tlsext_host_name(c->ssl, name);
        SSL_set1_host(c->ssl, name);
    }
    if (c->ticket) {
        SSL_set_session(c->ssl, c->ticket); /* takes its own reference */
        SSL_SESSION_free(c->ticket);
        c->ticket = NULL;
        c->offered = 1;
    }
    c->watching = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, target->ai_addr, target->ai_addrlen) < 0 && errno != EINPROGRESS) {
        fail(c, CONNECT);
        return;
    }
    c->state = CONNECTING; /* the first EPOLLOUT says how connect() went */
}

static void done(struct conn *c) {
    if (resume && c->completed > 0 && !c->reused) counts[NOT_RESUMED]++;
    if (measuring && !draining) {
        handshakes++;
        resumed += c->reused;
        sample(c->handshaken - c->started);
    }
    c->completed++;
    release(c, 1);
}

static void advance(struct conn *c, unsigned char *buf) {
    enum kind kind;
    for (;;) {
        int r;
        switch (c->state) {
        case CONNECTING: {
            int code = 0;
            socklen_t len = sizeof code;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &code, &len);
            if (code) {
                fail(c, CONNECT);
                return;
            }
            c->state = HANDSHAKING;
            break;
        }
        case HANDSHAKING:
            r = SSL_connect(c->ssl);
            if (r != 1) {
                if (!would_block(c, r, &kind)) fail(c, kind == CLOSED ? CLOSED : TLS);
                return;
            }
            c->handshaken = now();
            c->reused = SSL_session_reused(c->ssl);
            c->state = SENDING;
            break;
        case SENDING:
            r = SSL_write(c->ssl, pattern + c->offset, (int)size);
            if (r <= 0) {
                if (!would_block(c, r, &kind)) fail(c, kind);
                return;
            }
            c->state = RECEIVING;
            watch(c, EPOLLIN);
            break;
        case RECEIVING:
            r = SSL_read(c->ssl, buf, MAX_SIZE);
            if (r <= 0) {
                if (!would_block(c, r, &kind)) fail(c, kind);
                return;
            }
            if (c->received + (size_t)r > size ||
                memcmp(buf, pattern + c->offset + c->received, (size_t)r)) {
                fail(c, MISMATCH);
                return;
            }
            c->received += (size_t)r;
            if (c->received == size) {
                done(c);
                return;
            }
            break;
        default:
            return; /* IDLE: an event for the descriptor just closed */
        }
    }
}

static int usage(const char *why) {
    fprintf(stderr, "echo-hs-client: %s (usage: echo-hs-client [-r] [-s SIZE] [-c CAFILE] "
                    "[-n NAME] HOST PORT CONNECTIONS SECONDS [WARMUP])\n", why);
    return 2;
}

int main(int argc, char **argv) {
    const char *ca = NULL;
    int opt;
    char why[160];
    while ((opt = getopt(argc, argv, ":rs:c:n:")) != -1) {
        switch (opt) {
        case 'r': resume = 1; break;
        case 's': size = (size_t)atol(optarg); break;
        case 'c': ca = optarg; break;
        case 'n': name = optarg; break;
        default:
            snprintf(why, sizeof why, "%s -%c", opt == ':' ? "no value for" : "unknown option",
                     optopt);
            return usage(why);
        }
    }
    argv += optind;
    argc -= optind;
    if (argc < 4) return usage("missing arguments");
    int count = atoi(argv[2]);
    double seconds = atof(argv[3]);
    double warmup = argc > 4 ? atof(argv[4]) : 1.0;
    if (count < 1 || count > MAX_CONNECTIONS || size < 1 || size > MAX_SIZE ||
        !(seconds > 0 && seconds <= MAX_SECONDS) || !(warmup >= 0 && warmup <= MAX_SECONDS)) {
        snprintf(why, sizeof why, "bad CONNECTIONS (1..%d), SIZE (1..%d), SECONDS or WARMUP "
                 "(up to %.0f)", MAX_CONNECTIONS, MAX_SIZE, MAX_SECONDS);
        return usage(why);
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    int rc = getaddrinfo(argv[0], argv[1], &hints, &target);
    if (rc) {
        fprintf(stderr, "echo-hs-client: cannot resolve %s: %s\n", argv[0], gai_strerror(rc));
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            fprintf(stderr, "echo-hs-client: cannot load CA file %s\n", ca);
            return 2;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        /* Without -n the server must be certified for the address dialled. */
        X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
        if (!name && !X509_VERIFY_PARAM_set1_ip_asc(param, argv[0]))
            X509_VERIFY_PARAM_set1_host(param, argv[0], 0);
    }
    if (resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, on_ticket);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }

    pattern = make_pattern();
    unsigned char *buf = malloc(MAX_SIZE);
    samples = malloc(MAX_SAMPLES * sizeof *samples);
    conns = calloc((size_t)count, sizeof *conns);
    idle = malloc((size_t)count * sizeof *idle);
    ep = epoll_create1(0);
    for (int i = 0; i < count; i++) {
        conns[i].base = ((size_t)i * 40503u + 1) % PERIOD;
        idle[idle_count++] = count - 1 - i;
    }

    double begun = now(), measure_from = begun + warmup, end = measure_from + seconds;
    double window_end = 0, last_scan = begun;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        double t = now();
        if (!measuring && t >= measure_from) measuring = 1;
        if (counts[MISMATCH] || errors() >= ERROR_LIMIT) break;
        if (!draining && t >= end) {
            draining = 1;
            window_end = t;
        }
        int active = count - idle_count;
        if (draining && (!active || t >= window_end + DRAIN_SECONDS)) break;
        while (!draining && idle_count) start(&conns[idle[--idle_count]]);
        if (t - last_scan >= 0.1) {
            last_scan = t;
            for (int i = 0; i < count; i++)
                if (conns[i].state != IDLE && t - conns[i].started > TIMEOUT_SECONDS)
                    fail(&conns[i], TIMEOUT);
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 10);
        for (int e = 0; e < n; e++) advance(events[e].data.ptr, buf);
    }
    int stopped = !draining; /* early, by errors: nothing was waited for */
    if (stopped) window_end = now();
    /* Still under way after the drain: what the server never finished. */
    for (int i = 0; i < count; i++)
        if (conns[i].state != IDLE && !stopped) counts[TIMEOUT]++;
    double window = measuring ? window_end - measure_from : 0.0;
    qsort(samples, sampled, sizeof *samples, by_value);
    printf("{\"mode\": \"%s\", \"handshakes\": %ld, \"resumed\": %ld, \"seconds\": %.4f, "
           "\"handshakes_per_s\": %.1f, \"window\": [%.6f, %.6f], \"latency_us\": ",
           resume ? "resumed" : "full", handshakes, resumed, window,
           window > 0 ? (double)handshakes / window : 0.0, measure_from,
           measuring ? window_end : measure_from);
    if (sampled)
        printf("{\"p50\": %u, \"p99\": %u, \"p99.9\": %u}", percentile(50), percentile(99),
               percentile(99.9));
    else
        printf("{}");
    for (int k = 0; k < KINDS; k++) printf(", \"%s\": %ld", KIND_NAMES[k], counts[k]);
    printf("}\n");
    if (first_tls_error[0]) fprintf(stderr, "echo-hs-client: TLS: %s\n", first_tls_error);
    if (counts[NOT_RESUMED])
        fprintf(stderr, "echo-hs-client: %ld handshakes not resumed: the server gave no "
                        "ticket or refused it\n", counts[NOT_RESUMED]);
    return counts[MISMATCH] ? 3 : (errors() || !handshakes) ? 1 : 0;
}
