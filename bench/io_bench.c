/*
 * io_bench: the blocking calls of <cancel/io.h> beside the raw mechanism,
 * measured in the same run.
 *
 *   io_bench [repeats]          the figures (default 5 repeats; medians)
 *   io_bench sockets [repeats]  the read, accept and connect rows only
 *   io_bench syscalls KIND N    N uncancelled calls, to count system calls:
 *       strace -c -f io_bench syscalls read-ready 100000
 *       strace -c -f io_bench syscalls read-wait 20000
 *     KIND: read-ready (data already there), read-wait (the reader waits
 *     each time; a partner thread feeds it), raw-read-wait (the same with
 *     read(2)), accept-ready (a connection already queued, blocking
 *     listener), accept-ready-nb (the same, non-blocking listener),
 *     connect-ready (a blocking socket connects to a loopback listener,
 *     which the same thread then accepts with accept4(2)), connect-ready-nb
 *     (the same, non-blocking socket).
 *
 * Rows:
 *  - cancel-to-return latency of a thread blocked in cancel_io_read,
 *    cancel_io_poll, cancel_io_recv, cancel_io_write, cancel_io_accept and
 *    cancel_io_connect (to a loopback listener whose accept queue is full)
 *    (each beside a thread in poll(2) on an eventfd woken by a write; the
 *    calls all wait the same way, but each is measured) and in cancel_sleep
 *    (beside a thread in FUTEX_WAIT woken by FUTEX_WAKE), p50/p99;
 *  - the overshoot of a 1 ms cancel_sleep beside clock_nanosleep;
 *  - the server pattern: two threads each looping cancel_io_read on their
 *    own ready socketpair, on one shared token versus two distinct tokens.
 */
#define _GNU_SOURCE
#include <cancel.h>
#include <cancel/io.h>

#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"

static void check(bool ok, const char *what)
{
    if (!ok) {
        perror(what);
        exit(1);
    }
}

static int repeats = 5;

/* ---- cancel-to-return latency ---- */
#define LAT_N 1000
enum { L_READ, L_EVENTFD, L_SLEEP, L_FUTEX, L_POLL, L_RECV, L_WRITE, L_ACCEPT, L_CONNECT };
static _Atomic int64_t woke_at;
static _Atomic int ready;
static cancel_source *lat_src;
static _Atomic uint32_t raw_word;
static int raw_efd, lat_pipe[2], lat_sock[2], lat_listener = -1;
/* A loopback listener whose accept queue is full (never accepted): the
 * kernel drops further SYNs, so a connect to it stays in progress. */
static int full_listener = -1;
static struct sockaddr_in full_addr;

static void make_full_listener(void)
{
    full_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof full_addr;
    full_listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check(full_listener >= 0 && bind(full_listener, (struct sockaddr *)&full_addr, sizeof full_addr) == 0 &&
              listen(full_listener, 0) == 0 &&
              getsockname(full_listener, (struct sockaddr *)&full_addr, &l) == 0,
          "listen");
    /* Backlog 0 takes one connection; a second completes its handshake
     * too on some kernels. Fill it, then check a further one hangs. */
    for (int i = 0; i < 4; i++) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        check(c >= 0, "socket");
        (void)connect(c, (struct sockaddr *)&full_addr, sizeof full_addr);
        struct pollfd p = {c, POLLOUT, 0};
        if (poll(&p, 1, 200) == 0)
            break; /* in progress: the queue is full; leave it pending */
    }
}

static _Atomic int waiter_tid;

/* True once the thread sleeps in the kernel (state S in its stat line). */
static bool sleeping(int tid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool s = false;
    if (fgets(line, sizeof line, f)) {
        char *p = strrchr(line, ')');
        s = p && p[1] == ' ' && p[2] == 'S';
    }
    fclose(f);
    return s;
}

static void *lat_waiter(void *arg)
{
    int kind = (int)(intptr_t)arg;
    cancel_token t = cancel_source_token(lat_src);
    char b;
    atomic_store(&waiter_tid, (int)gettid());
    atomic_store(&ready, 1);
    switch (kind) {
    case L_READ:
        check(cancel_io_read(t, lat_pipe[0], &b, 1) == -1 && errno == ECANCELED, "cancel_io_read");
        break;
    case L_EVENTFD: {
        struct pollfd p = {raw_efd, POLLIN, 0};
        while (poll(&p, 1, -1) != 1) {
        }
        break;
    }
    case L_SLEEP:
        check(cancel_sleep(t, CANCEL_INFINITE) == ECANCELED, "cancel_sleep");
        break;
    case L_POLL: {
        struct pollfd p = {lat_pipe[0], POLLIN, 0};
        check(cancel_io_poll(t, &p, 1, CANCEL_INFINITE) == -1 && errno == ECANCELED, "cancel_io_poll");
        break;
    }
    case L_RECV:
        check(cancel_io_recv(t, lat_sock[0], &b, 1, 0) == -1 && errno == ECANCELED, "cancel_io_recv");
        break;
    case L_WRITE:
        check(cancel_io_write(t, lat_pipe[1], &b, 1) == -1 && errno == ECANCELED, "cancel_io_write");
        break;
    case L_ACCEPT:
        check(cancel_io_accept(t, lat_listener, NULL, NULL, SOCK_CLOEXEC) == -1 && errno == ECANCELED,
              "cancel_io_accept");
        break;
    case L_CONNECT: {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        check(c >= 0, "socket");
        check(cancel_io_connect(t, c, (struct sockaddr *)&full_addr, sizeof full_addr) == -1 &&
                  errno == ECANCELED,
              "cancel_io_connect");
        atomic_store(&woke_at, lat_now()); /* the close below is not the call's */
        close(c);
        return NULL;
    }
    case L_FUTEX:
        while (atomic_load(&raw_word) == 0)
            syscall(SYS_futex, (uint32_t *)&raw_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        break;
    }
    atomic_store(&woke_at, lat_now());
    return NULL;
}

static void latency(int kind, double *out, int n)
{
    for (int i = 0; i < n; i++) {
        lat_src = cancel_source_new();
        atomic_store(&raw_word, 0);
        raw_efd = eventfd(0, EFD_CLOEXEC);
        check(pipe2(lat_pipe, O_CLOEXEC) == 0, "pipe");
        check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, lat_sock) == 0, "socketpair");
        if (kind == L_WRITE) {
            /* a full pipe, left blocking as most callers have it */
            static char junk[4096];
            fcntl(lat_pipe[1], F_SETFL, O_NONBLOCK);
            while (write(lat_pipe[1], junk, sizeof junk) > 0) {
            }
            fcntl(lat_pipe[1], F_SETFL, 0);
        }
        if (kind == L_ACCEPT && lat_listener < 0) {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            lat_listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            check(lat_listener >= 0 && bind(lat_listener, (struct sockaddr *)&a, sizeof a) == 0 &&
                      listen(lat_listener, 8) == 0,
                  "listen");
        }
        if (kind == L_CONNECT && full_listener < 0)
            make_full_listener();
        atomic_store(&ready, 0);
        pthread_t th;
        pthread_create(&th, NULL, lat_waiter, (void *)(intptr_t)kind);
        while (!atomic_load(&ready)) {
        }
        /* Until it sleeps in its wait, then a little more so that it is
         * settled there (the kernel may show S a moment early). */
        struct timespec pause = {0, 50000};
        do
            nanosleep(&pause, NULL);
        while (!sleeping(atomic_load(&waiter_tid)));
        nanosleep(&pause, NULL);
        int64_t t0 = lat_now();
        if (kind != L_FUTEX && kind != L_EVENTFD) {
            cancel_source_cancel(lat_src);
        } else if (kind == L_FUTEX) {
            atomic_store(&raw_word, 1);
            syscall(SYS_futex, (uint32_t *)&raw_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        } else {
            uint64_t one = 1;
            check(write(raw_efd, &one, sizeof one) == sizeof one, "write");
        }
        pthread_join(th, NULL);
        out[i] = (double)(atomic_load(&woke_at) - t0) / 1000.0;
        close(raw_efd);
        close(lat_pipe[0]);
        close(lat_pipe[1]);
        close(lat_sock[0]);
        close(lat_sock[1]);
        cancel_source_free(lat_src);
    }
}

/* Ours and the baseline sample by sample, so that the machine's noise hits
 * both alike. */
static void latency_row(const char *what, int kind, const char *base_name, int base_kind)
{
    static double x[LAT_N], y[LAT_N];
    for (int i = 0; i < LAT_N; i++) {
        latency(kind, x + i, 1);
        latency(base_kind, y + i, 1);
    }
    double p50a = lat_percentile(x, LAT_N, 0.5), p99a = lat_percentile(x, LAT_N, 0.99);
    double p50b = lat_percentile(y, LAT_N, 0.5), p99b = lat_percentile(y, LAT_N, 0.99);
    printf("%-40s %6.2f/%6.2f   %-28s %6.2f/%6.2f   %5.2fx\n", what, p50a, p99a, base_name, p50b, p99b,
           p50a / p50b);
    fflush(stdout);
}

/* ---- 1 ms sleep overshoot ---- */
#define OVER_N 400
static void overshoot_row(void)
{
    static double a[OVER_N], b[OVER_N];
    cancel_source *s = cancel_source_new();
    for (int i = 0; i < OVER_N; i++) {
        int64_t t0 = lat_now();
        if (i % 2 == 0) {
            cancel_sleep(cancel_source_token(s), 1000000);
            a[i / 2] = (double)(lat_now() - t0 - 1000000) / 1000.0;
        } else {
            struct timespec ts = {0, 1000000};
            clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
            b[i / 2] = (double)(lat_now() - t0 - 1000000) / 1000.0;
        }
    }
    cancel_source_free(s);
    int n = OVER_N / 2;
    double p50a = lat_percentile(a, n, 0.5), p99a = lat_percentile(a, n, 0.99);
    double p50b = lat_percentile(b, n, 0.5), p99b = lat_percentile(b, n, 0.99);
    printf("%-40s %6.2f/%6.2f   %-28s %6.2f/%6.2f   %5.2fx\n", "cancel_sleep(1 ms) overshoot", p50a, p99a,
           "clock_nanosleep(1 ms)", p50b, p99b, p50a / p50b);
    fflush(stdout);
}

/* ---- the server pattern ---- */
#define SRV_N 200000
struct srv {
    cancel_token tok;
    int fds[2];
    bool raw;
    pthread_barrier_t *go;
};
static void *srv_loop(void *arg)
{
    struct srv *s = arg;
    char b = 'x';
    pthread_barrier_wait(s->go);
    for (int i = 0; i < SRV_N; i++) {
        check(write(s->fds[1], &b, 1) == 1, "write");
        ssize_t r = s->raw ? read(s->fds[0], &b, 1) : cancel_io_read(s->tok, s->fds[0], &b, 1);
        check(r == 1, "read");
    }
    return NULL;
}
/* Returns millions of loop iterations per second, both threads together. */
static double server(int mode) /* 0: one shared token, 1: two tokens, 2: raw read */
{
    cancel_source *a = cancel_source_new(), *b = cancel_source_new();
    cancel_token_fd(cancel_source_token(a)); /* as a server's token would have */
    cancel_token_fd(cancel_source_token(b));
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 3);
    struct srv s[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        s[i].tok = cancel_source_token(mode == 1 && i == 1 ? b : a);
        s[i].raw = mode == 2;
        s[i].go = &go;
        check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s[i].fds) == 0, "socketpair");
        pthread_create(&th[i], NULL, srv_loop, &s[i]);
    }
    pthread_barrier_wait(&go);
    int64_t t0 = lat_now();
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    double mops = 2.0 * SRV_N / (double)(lat_now() - t0) * 1000.0;
    for (int i = 0; i < 2; i++) {
        close(s[i].fds[0]);
        close(s[i].fds[1]);
    }
    pthread_barrier_destroy(&go);
    cancel_source_free(a);
    cancel_source_free(b);
    return mops;
}
static void server_rows(void)
{
    double v[3][64];
    for (int r = 0; r < repeats; r++)
        for (int m = 0; m < 3; m++)
            v[m][r] = server(m);
    double one = lat_percentile(v[0], repeats, 0.5), two = lat_percentile(v[1], repeats, 0.5),
           raw = lat_percentile(v[2], repeats, 0.5);
    printf("%-40s %13.3f   %-28s %13.3f   %5.2fx\n", "2 threads, one shared token (Mops/s)", one,
           "two distinct tokens", two, two / one);
    printf("%-40s %13.3f   %-28s %13.3f   %5.2fx\n", "2 threads, two tokens (Mops/s)", two,
           "raw read(2)", raw, raw / two);
    fflush(stdout);
}

/* ---- system call counting (run under strace -c -f) ---- */
static int sc_pipe[2], sc_ack[2];
static long sc_n;
static void *sc_partner(void *arg)
{
    (void)arg;
    char b = 'x';
    for (long i = 0; i < sc_n; i++) {
        struct timespec ts = {0, 50000}; /* let the reader block */
        nanosleep(&ts, NULL);
        check(write(sc_pipe[1], &b, 1) == 1, "write");
        check(read(sc_ack[0], &b, 1) == 1, "read ack");
    }
    return NULL;
}
/* A loopback listener (`type`: 0 or SOCK_NONBLOCK); *a gets its address. */
static int sc_listener(int type, struct sockaddr_in *a)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | type, 0);
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof *a;
    check(bind(l, (struct sockaddr *)a, sizeof *a) == 0 && listen(l, 64) == 0 &&
              getsockname(l, (struct sockaddr *)a, &al) == 0,
          "listen");
    return l;
}

static int syscalls(const char *kind, long n)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    char b = 'x';
    sc_n = n;
    if (strcmp(kind, "read-ready") == 0) {
        int p[2];
        check(pipe2(p, O_CLOEXEC) == 0, "pipe");
        char buf[4096];
        memset(buf, 'x', sizeof buf);
        for (long i = 0; i < n; i++) {
            if (i % 4096 == 0)
                check(write(p[1], buf, sizeof buf) == sizeof buf, "write");
            check(cancel_io_read(t, p[0], &b, 1) == 1, "cancel_io_read");
        }
    } else if (strcmp(kind, "read-wait") == 0 || strcmp(kind, "raw-read-wait") == 0) {
        bool raw = kind[0] == 'r' && kind[1] == 'a';
        check(pipe2(sc_pipe, O_CLOEXEC) == 0 && pipe2(sc_ack, O_CLOEXEC) == 0, "pipe");
        pthread_t th;
        pthread_create(&th, NULL, sc_partner, NULL);
        char buf[64]; /* a request smaller than the buffer, as usual */
        for (long i = 0; i < n; i++) {
            ssize_t r = raw ? read(sc_pipe[0], buf, sizeof buf) : cancel_io_read(t, sc_pipe[0], buf, sizeof buf);
            check(r == 1, "read");
            check(write(sc_ack[1], &b, 1) == 1, "ack");
        }
        pthread_join(th, NULL);
    } else if (strncmp(kind, "accept-ready", 12) == 0) {
        struct sockaddr_in a;
        int l = sc_listener(kind[12] ? SOCK_NONBLOCK : 0, &a);
        for (long i = 0; i < n; i++) {
            int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            check(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
            int fd = cancel_io_accept(t, l, NULL, NULL, SOCK_CLOEXEC);
            check(fd >= 0, "cancel_io_accept");
            close(fd);
            close(c);
        }
    } else if (strncmp(kind, "connect-ready", 13) == 0) {
        struct sockaddr_in a;
        int l = sc_listener(0, &a);
        for (long i = 0; i < n; i++) {
            int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (kind[13] ? SOCK_NONBLOCK : 0), 0);
            check(cancel_io_connect(t, c, (struct sockaddr *)&a, sizeof a) == 0, "cancel_io_connect");
            int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            check(fd >= 0, "accept4");
            close(fd);
            close(c);
        }
    } else {
        fprintf(stderr, "unknown kind %s\n", kind);
        return 2;
    }
    cancel_source_free(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "syscalls") == 0)
        return argc == 4 ? syscalls(argv[2], atol(argv[3])) : 2;
    bool sockets = argc > 1 && strcmp(argv[1], "sockets") == 0;
    if (sockets) {
        argc--;
        argv++;
    }
    if (argc > 1)
        repeats = atoi(argv[1]);
    if (repeats < 1 || repeats > 64)
        repeats = 5;
    printf("libcancel %d.%d.%d <cancel/io.h> benchmark\n", CANCEL_VERSION_MAJOR, CANCEL_VERSION_MINOR,
           CANCEL_VERSION_PATCH);
    printf("%-40s %13s   %-28s %13s   %6s\n", "cancel-to-return latency", "p50/p99 us", "baseline (same run)",
           "p50/p99 us", "ratio");
    latency_row("blocked in cancel_io_read (pipe)", L_READ, "eventfd write -> poll", L_EVENTFD);
    if (sockets) {
        latency_row("blocked in cancel_io_accept (TCP)", L_ACCEPT, "eventfd write -> poll", L_EVENTFD);
        latency_row("blocked in cancel_io_connect (TCP)", L_CONNECT, "eventfd write -> poll", L_EVENTFD);
        return 0;
    }
    latency_row("blocked in cancel_io_poll (pipe)", L_POLL, "eventfd write -> poll", L_EVENTFD);
    latency_row("blocked in cancel_io_recv (socketpair)", L_RECV, "eventfd write -> poll", L_EVENTFD);
    latency_row("blocked in cancel_io_write (full pipe)", L_WRITE, "eventfd write -> poll", L_EVENTFD);
    latency_row("blocked in cancel_io_accept (TCP)", L_ACCEPT, "eventfd write -> poll", L_EVENTFD);
    latency_row("blocked in cancel_io_connect (TCP)", L_CONNECT, "eventfd write -> poll", L_EVENTFD);
    latency_row("blocked in cancel_sleep", L_SLEEP, "FUTEX_WAKE -> FUTEX_WAIT", L_FUTEX);
    overshoot_row();
    printf("%-40s %13s   %-28s %13s   %6s\n", "server pattern (medians of repeats)", "ours",
           "baseline (same run)", "", "ratio");
    server_rows();
    return 0;
}
