/*
 * The bench's generator ceiling: about the least work a Linux client can do to
 * drive an echo server closed-loop.  One thread, non-blocking sockets,
 * level-triggered epoll, TCP_NODELAY; each connection sends SIZE bytes, waits
 * for all of them to come back, checks them with memcmp and sends again.
 * echod-bench is measured against it ("generator ceiling" in `make bench`):
 * both drive the same server, pinned the same way, and the ratio of their
 * requests/s says how much of the server's speed echod-bench can show.
 *
 * Every byte is checked as echod-bench checks it: a connection's stream is a
 * pseudo-random block read from its own offset, so a lost, duplicated,
 * reordered or crossed-over byte is a mismatch.
 *
 * After the window no new message starts; the client waits up to DRAIN_SECONDS
 * for every message already begun, and counts each connection still owed bytes
 * then as lost, so a server that stops echoing cannot pass as a slow one.
 *
 * Usage: echo-client HOST PORT CONNECTIONS SIZE SECONDS [WARMUP]
 * Prints one JSON object to stdout:
 *   {"requests": N, "seconds": S, "requests_per_s": R, "mismatches": M,
 *    "errors": E, "lost": L}
 * counted over SECONDS after WARMUP seconds (default 1).  Exit 0 when clean,
 * 1 on transport errors or lost echoes, 3 on a mismatch (echod-bench's
 * statuses), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"

#define MAX_EVENTS 512
#define DRAIN_SECONDS 5.0

struct conn {
    int fd;
    size_t base;      /* the connection's offset in the pattern block */
    uint64_t sent;    /* stream position of the next byte to send */
    uint64_t received;
    uint64_t until;   /* stream position where the current message ends */
};

static unsigned char *pattern; /* the block twice, so any slice is contiguous */
static size_t size;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int flush(struct conn *c, uint64_t until) {
    while (c->sent < until) {
        size_t start = (c->base + c->sent) % PERIOD;
        ssize_t n = send(c->fd, pattern + start, (size_t)(until - c->sent), MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->sent += (uint64_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: echo-client HOST PORT CONNECTIONS SIZE SECONDS [WARMUP]\n");
        return 2;
    }
    int count = atoi(argv[3]);
    size = (size_t)atol(argv[4]);
    double seconds = atof(argv[5]);
    double warmup = argc > 6 ? atof(argv[6]) : 1.0;
    if (count < 1 || size < 1 || size > PERIOD || seconds <= 0 || warmup < 0) {
        fprintf(stderr, "echo-client: bad CONNECTIONS, SIZE (1..%u) or SECONDS\n", PERIOD);
        return 2;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(argv[1], argv[2], &hints, &ai);
    if (rc) {
        fprintf(stderr, "echo-client: cannot resolve %s: %s\n", argv[1], gai_strerror(rc));
        return 2;
    }
    pattern = make_pattern();
    unsigned char *buf = malloc(PERIOD);
    int ep = epoll_create1(0);
    struct conn *conns = calloc((size_t)count, sizeof *conns);
    for (int i = 0; i < count; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(ai->ai_family, SOCK_STREAM, 0);
        if (c->fd < 0) {
            fprintf(stderr, "echo-client: socket %d: %s\n", i, strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            fprintf(stderr, "echo-client: connect: %s\n", strerror(errno));
            return 1;
        }
        /* Connect blocks (loopback answers at once); sends must not: a server that
         * stops reading would otherwise hang the client in send() past its window. */
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        c->base = ((size_t)i * 40503u + 1) % PERIOD;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    long requests = 0, mismatches = 0, errors = 0, lost = 0;
    double start = now(), measure_from = start + warmup, end = measure_from + seconds;
    double window = 0;
    int measuring = 0, draining = 0, owed = 0;
    for (int i = 0; i < count; i++) {
        conns[i].until = size;
        if (flush(&conns[i], size) < 0) errors++;
    }
    struct epoll_event events[MAX_EVENTS];
    while (!errors && !mismatches) {
        double t = now();
        if (!draining && t >= end) {
            draining = 1;
            window = t - measure_from;
            owed = 0;
            for (int i = 0; i < count; i++) owed += conns[i].received < conns[i].until;
        }
        if (draining && (!owed || t >= end + DRAIN_SECONDS)) break;
        if (!measuring && t >= measure_from) {
            measuring = 1;
            requests = 0;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 10);
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            ssize_t got = recv(c->fd, buf, PERIOD, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++;
                break;
            }
            if (c->received + (uint64_t)got > c->sent ||
                memcmp(buf, pattern + (c->base + c->received) % PERIOD, (size_t)got)) {
                mismatches++;
                break;
            }
            c->received += (uint64_t)got;
            if (c->received == c->until) {
                if (draining) {
                    owed--;
                    continue;
                }
                requests++;
                c->until += size;
            }
            /* A send cut short by a full buffer resumes as its echo comes back. */
            if (flush(c, c->until) < 0) errors++;
        }
    }
    if (!draining) window = now() - measure_from; /* stopped early by an error */
    for (int i = 0; i < count; i++) lost += conns[i].received < conns[i].until;
    if (errors || mismatches) lost = 0; /* the run already failed: nothing to wait for */
    printf("{\"requests\": %ld, \"seconds\": %.4f, \"requests_per_s\": %.1f, "
           "\"mismatches\": %ld, \"errors\": %ld, \"lost\": %ld}\n",
           requests, window, window > 0 ? (double)requests / window : 0.0, mismatches,
           errors, lost);
    return mismatches ? 3 : (errors || lost) ? 1 : 0;
}
