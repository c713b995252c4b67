/*
 * The bench's TLS limit row: about the least work a Linux TLS echo server can do
 * per message, as echo_epoll.c is for plain TCP.  One thread, non-blocking sockets,
 * level-triggered epoll, TCP_NODELAY, OpenSSL's defaults (TLS 1.2 and 1.3, its
 * session cache and TLS 1.3 tickets, so resumption works).
 *
 * Each connection handshakes on readiness, then reads a record and writes it back.
 * SSL_write is all or nothing here (no partial writes): a write that would block
 * keeps the buffer, stops reading (EPOLLOUT only) and is retried with the same
 * bytes, as OpenSSL requires.  After a readable event it reads until OpenSSL would
 * block, since plaintext held inside OpenSSL never wakes epoll.  A client's
 * close_notify is answered with ours once the echo owed is written.
 *
 * Usage: echo-tls CERT KEY [HOST [PORT]]   (defaults 127.0.0.1 0; port 0 picks one)
 * Prints "listening on HOST:PORT" to stderr, exits 0 on SIGTERM or SIGINT.
 * Build: cc -O2 -Wall -o echo-tls echo_tls.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSIZE 16384 /* one TLS record's plaintext */
#define MAX_EVENTS 512

struct conn {
    int fd;
    SSL *ssl;
    int handshaken;
    int pending; /* bytes of buf an SSL_write that blocked must be retried with */
    char buf[BUFSIZE];
};

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
}

static void want(int ep, struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Returns 0 when the write is done, 1 when it must wait for EPOLLOUT, -1 on error. */
static int write_pending(struct conn *c) {
    int n = SSL_write(c->ssl, c->buf, c->pending);
    if (n > 0) {
        c->pending = 0;
        return 0;
    }
    int err = SSL_get_error(c->ssl, n);
    return (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) ? 1 : -1;
}

static void echo(int ep, struct conn *c) {
    for (;;) {
        int n = SSL_read(c->ssl, c->buf, BUFSIZE);
        if (n <= 0) {
            int err = SSL_get_error(c->ssl, n);
            if (err == SSL_ERROR_WANT_READ) return;
            if (err == SSL_ERROR_WANT_WRITE) {
                want(ep, c, EPOLLOUT);
                return;
            }
            if (err == SSL_ERROR_ZERO_RETURN) SSL_shutdown(c->ssl); /* close_notify */
            drop(ep, c);
            return;
        }
        c->pending = n;
        int r = write_pending(c);
        if (r < 0) {
            drop(ep, c);
            return;
        }
        if (r > 0) {
            want(ep, c, EPOLLOUT);
            return;
        }
    }
}

static void on_event(int ep, struct conn *c, unsigned events) {
    if (!c->handshaken) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ) want(ep, c, EPOLLIN);
            else if (err == SSL_ERROR_WANT_WRITE) want(ep, c, EPOLLOUT);
            else drop(ep, c);
            return;
        }
        c->handshaken = 1;
        want(ep, c, EPOLLIN);
        echo(ep, c);
        return;
    }
    if (c->pending) {
        int r = write_pending(c);
        if (r < 0) {
            drop(ep, c);
            return;
        }
        if (r > 0) return;
        want(ep, c, EPOLLIN);
    } else if (events & EPOLLOUT) {
        want(ep, c, EPOLLIN); /* a read that needed a write */
    }
    echo(ep, c);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: echo-tls CERT KEY [HOST [PORT]]\n");
        return 2;
    }
    const char *host = argc > 3 ? argv[3] : "127.0.0.1";
    int port = argc > 4 ? atoi(argv[4]) : 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "echo-tls: cannot load %s / %s\n", argv[1], argv[2]);
        return 2;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo-tls: not an IPv4 address: %s\n", host);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("echo-tls: bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    fprintf(stderr, "echo-tls: listening on %s:%d\n", host, ntohs(addr.sin_port));

    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c != NULL) {
                on_event(ep, c, events[i].events);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) break; /* EAGAIN, or EMFILE: retried on the next wakeup */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct conn *nc = calloc(1, sizeof *nc);
                SSL *ssl = nc ? SSL_new(ctx) : NULL;
                if (ssl == NULL) {
                    free(nc);
                    close(fd);
                    continue;
                }
                nc->fd = fd;
                nc->ssl = ssl;
                SSL_set_fd(ssl, fd);
                SSL_set_accept_state(ssl);
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            }
        }
    }
    SSL_CTX_free(ctx);
    return 0;
}
