/*
 * The bench's limit row for the completion model: about the least work an
 * io_uring echo server does per message, written as echod's `uring` backend
 * is (echod/_uring.c, echod/backends/uring.py) so the two differ only by the
 * language the completions are handled in.
 *
 * One thread, one ring (SINGLE_ISSUER|DEFER_TASKRUN where the kernel has
 * them), a multishot accept, one 64 KiB buffer per connection.  Each receive
 * that completes with n bytes submits a send of those n bytes (MSG_WAITALL:
 * the kernel finishes a short send itself; its success completion skipped)
 * linked to the next receive into the same buffer, so there is one completion
 * per echoed read and the buffer is never overwritten before it is sent.  A
 * send that fails posts a completion and its linked receive is cancelled
 * without one: the connection is closed then.  A client that does not read
 * holds its send, and so its next receive: backpressure with one buffer.
 *
 * Usage: echo-uring [HOST [PORT]]   (defaults 127.0.0.1 0; port 0 picks one)
 * Prints "listening on HOST:PORT" to stderr, exits 0 on SIGTERM or SIGINT
 * after "echoed N bytes in M receives" (how messages are counted under strace,
 * which sees no per-message system call here).
 * Build: cc -O2 -o echo-uring echo_uring.c -luring
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSIZE 65536
#define CQ_ENTRIES 65536
enum { OP_RECEIVE = 0, OP_SEND = 1, OP_ACCEPT = 2 };

struct conn {
    int fd;
    unsigned offset, length; /* the send in flight: buf[offset:offset + length] */
    char buf[BUFSIZE];
};

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static struct io_uring ring;

static struct io_uring_sqe *sqe_now(void) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (sqe == NULL) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void receive(struct conn *c) {
    struct io_uring_sqe *sqe = sqe_now();
    io_uring_prep_recv(sqe, c->fd, c->buf, BUFSIZE, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECEIVE);
}

static void echo(struct conn *c) {
    if (io_uring_sq_space_left(&ring) < 2) io_uring_submit(&ring);
    struct io_uring_sqe *sqe = sqe_now();
    io_uring_prep_send(sqe, c->fd, c->buf + c->offset, c->length, MSG_WAITALL | MSG_NOSIGNAL);
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
    receive(c);
}

static void accept_on(int lfd) {
    struct io_uring_sqe *sqe = sqe_now();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c);
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo-uring: not an IPv4 address: %s\n", host);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("echo-uring: bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);

    struct io_uring_params params;
    const unsigned attempts[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                 IORING_SETUP_COOP_TASKRUN, 0};
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof attempts / sizeof attempts[0] && ret == -EINVAL; i++) {
        memset(&params, 0, sizeof params);
        params.flags = attempts[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        params.cq_entries = CQ_ENTRIES;
        ret = io_uring_queue_init_params(4096, &ring, &params);
    }
    if (ret < 0) {
        fprintf(stderr, "echo-uring: io_uring_queue_init: %s\n", strerror(-ret));
        return 1;
    }
    fprintf(stderr, "echo-uring: listening on %s:%d\n", host, ntohs(addr.sin_port));
    accept_on(lfd);

    unsigned long long echoed = 0, receives = 0;
    struct __kernel_timespec tick = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000};
    while (!stopping) {
        struct io_uring_cqe *cqe;
        ret = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &tick, NULL);
        if (ret < 0 && ret != -ETIME && ret != -EINTR) {
            fprintf(stderr, "echo-uring: wait: %s\n", strerror(-ret));
            return 1;
        }
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t data = cqe->user_data;
            int res = cqe->res;
            unsigned flags = cqe->flags;
            struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)3);
            seen++;
            switch (data & 3) {
            case OP_ACCEPT:
                if (res >= 0) {
                    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    if (nc == NULL) {
                        close(res);
                    } else {
                        nc->fd = res;
                        receive(nc);
                    }
                }
                if (!(flags & IORING_CQE_F_MORE)) accept_on(lfd); /* ended (EMFILE): again */
                break;
            case OP_RECEIVE:
                if (res <= 0) { /* EOF or error, nothing in flight */
                    drop(c);
                } else {
                    echoed += (unsigned)res;
                    receives++;
                    c->offset = 0;
                    c->length = (unsigned)res;
                    echo(c);
                }
                break;
            case OP_SEND: /* only a failed or short send completes */
                if (res > 0 && (unsigned)res < c->length) {
                    c->offset += (unsigned)res;
                    c->length -= (unsigned)res;
                    echo(c);
                } else {
                    drop(c);
                }
                break;
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
    fprintf(stderr, "echo-uring: echoed %llu bytes in %llu receives\n", echoed, receives);
    return 0;
}
