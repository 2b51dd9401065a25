/* cancel_io_accept and cancel_io_connect: success, cancelled before and
 * while blocked, timeouts through the token, bad input, O_NONBLOCK kept,
 * several acceptors on one listener, no half-open connection left. Every
 * case runs twice: in a child where io_uring_setup is refused, then as the
 * process finds it (through the thread's io_uring ring when there is one,
 * io_ring_test tests that path further), so that the O_NONBLOCK switch
 * that serves where no ring can be had is tested too. */
#include "io_util.h"
#include "seccomp_util.h"

#include <netinet/tcp.h>
#include <sys/un.h>

static int tcp_client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    return fd;
}

static void accept_success_and_cancel(void)
{
    for (int nb = 0; nb < 2; nb++) {
        struct sockaddr_in a;
        int l = tcp_listener(8, &a);
        set_nonblocking(l, nb);
        cancel_source *s = cancel_source_new();
        struct call c;
        memset(&c, 0, sizeof c);
        c.fn = do_accept;
        c.tok = cancel_source_token(s);
        c.fd = l;
        c.flags = SOCK_CLOEXEC;
        call_start(&c);
        call_wait_blocked(&c, "cancel_io_accept");
        int cl = tcp_client();
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        call_join(&c);
        CHECK(c.result >= 0);
        CHECK(!is_nonblocking((int)c.result)); /* the caller's flags for the new socket */
        CHECK(fcntl((int)c.result, F_GETFD) & FD_CLOEXEC);
        close((int)c.result);
        close(cl);
        CHECK_EQ(is_nonblocking(l), nb);

        /* SOCK_NONBLOCK and the peer's address pass through */
        accept_passes_peer(c.tok, l, tcp_client(), &a);

        /* cancelled while blocked */
        call_cancel_blocked(&c, s, "cancel_io_accept");
        CHECK_EQ(is_nonblocking(l), nb);

        /* cancelled before: a pending connection stays queued */
        cl = tcp_client();
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        errno = 0;
        CHECK_EQ(cancel_io_accept(c.tok, l, NULL, NULL, 0), -1);
        CHECK_EQ(errno, ECANCELED);
        cancel_source_free(s);
        int fd = cancel_io_accept(CANCEL_TOKEN_NONE, l, NULL, NULL, SOCK_CLOEXEC);
        CHECK(fd >= 0);
        close(fd);
        close(cl);
        close(l);
    }
}

/* Two threads accept on one blocking listener; one connection arrives. The
 * loser must stay cancellable rather than block in accept(2). */
static void two_acceptors_never_hang(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    for (int iter = 0; iter < TEST_SCALE(50) + 5; iter++) {
        cancel_source *s = cancel_source_new();
        struct call c[2];
        for (int j = 0; j < 2; j++) {
            memset(&c[j], 0, sizeof c[j]);
            c[j].fn = do_accept;
            c[j].tok = cancel_source_token(s);
            c[j].fd = l;
            c[j].flags = SOCK_CLOEXEC;
            call_start(&c[j]);
        }
        for (int j = 0; j < 2; j++)
            call_wait_blocked(&c[j], "cancel_io_accept");
        int cl = tcp_client();
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        while (!atomic_load(&c[0].finished) && !atomic_load(&c[1].finished))
            test_sleep_ns(100 * 1000);
        cancel_source_cancel(s);
        int got = 0;
        for (int j = 0; j < 2; j++) {
            call_join(&c[j]);
            if (c[j].result >= 0) {
                got++;
                close((int)c[j].result);
            } else {
                CHECK_EQ(c[j].err, ECANCELED);
            }
        }
        CHECK_EQ(got, 1);
        close(cl);
        cancel_source_free(s);
    }
    CHECK(!is_nonblocking(l));
    close(l);
}

static void accept_bad_input_and_timeout(void)
{
    errno = 0;
    CHECK_EQ(cancel_io_accept(CANCEL_TOKEN_NONE, -1, NULL, NULL, 0), -1);
    CHECK_EQ(errno, EBADF);
    int notlistening = tcp_client();
    /* accept(2) reports EINVAL for a socket that is not listening */
    CHECK_EQ(cancel_io_accept(CANCEL_TOKEN_NONE, notlistening, NULL, NULL, 0), -1);
    CHECK_EQ(errno, EINVAL);
    close(notlistening);
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    CHECK_EQ(cancel_io_accept(CANCEL_TOKEN_NONE, l, NULL, NULL, 12345678), -1);
    CHECK_EQ(errno, EINVAL);
    /* a deadline on the token */
    cancel_source *s = cancel_source_new_child(CANCEL_TOKEN_NONE, 10 * 1000 * 1000, NULL);
    CHECK_EQ(cancel_io_accept(cancel_source_token(s), l, NULL, NULL, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(s);
    CHECK(!is_nonblocking(l));
    close(l);
}

static void connect_success_refused_bad(void)
{
    for (int nb = 0; nb < 2; nb++) {
        struct sockaddr_in a;
        int l = tcp_listener(8, &a);
        int cl = tcp_client();
        set_nonblocking(cl, nb);
        cancel_source *s = cancel_source_new();
        errno = 77;
        CHECK_EQ(cancel_io_connect(cancel_source_token(s), cl, (struct sockaddr *)&a, sizeof a), 0);
        CHECK_EQ(errno, 77);
        CHECK_EQ(is_nonblocking(cl), nb);
        CHECK_EQ(tcp_state(cl), TCP_ESTABLISHED);
        close(cl);
        close(l);
        /* nobody listens there any more */
        cl = tcp_client();
        set_nonblocking(cl, nb);
        CHECK_EQ(cancel_io_connect(cancel_source_token(s), cl, (struct sockaddr *)&a, sizeof a), -1);
        CHECK_EQ(errno, ECONNREFUSED);
        CHECK_EQ(is_nonblocking(cl), nb);
        close(cl);
        cancel_source_cancel(s);
        CHECK_EQ(cancel_io_connect(cancel_source_token(s), -1, NULL, 0), -1);
        CHECK_EQ(errno, ECANCELED);
        cancel_source_free(s);
    }
    errno = 0;
    CHECK_EQ(cancel_io_connect(CANCEL_TOKEN_NONE, -1, NULL, 0), -1);
    CHECK_EQ(errno, EBADF);
    int cl = tcp_client();
    struct sockaddr_in bad = {.sin_family = AF_INET};
    CHECK_EQ(cancel_io_connect(CANCEL_TOKEN_NONE, cl, (struct sockaddr *)&bad, 3), -1);
    CHECK_EQ(errno, EINVAL);
    close(cl);
}

/* A listener whose accept queue is full drops new SYNs: a connect to it
 * blocks. Cancelled, it returns ECANCELED with O_NONBLOCK as it was and
 * the attempt aborted (the socket closed in the kernel's eyes). */
static void connect_cancelled_while_blocked(void)
{
    struct sockaddr_in a;
    int filler[4], nfill;
    int l = full_tcp_listener(&a, filler, &nfill);
    for (int nb = 0; nb < 2; nb++) {
        int cl = tcp_client();
        set_nonblocking(cl, nb);
        cancel_source *s = cancel_source_new();
        connect_cancel_blocked(s, cl, &a, sizeof a);
        CHECK_EQ(is_nonblocking(cl), nb);
        CHECK_EQ(tcp_state(cl), TCP_CLOSE); /* nothing half-open */
        close(cl);
        cancel_source_free(s);
    }
    while (nfill > 0)
        close(filler[--nfill]);
    close(l);
}

/* Unix-domain: a full backlog makes connect wait (naps), cancellably; room
 * in the backlog lets it through. */
static void connect_unix_full_backlog(void)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "/tmp/cancel-io-%d.sock", (int)getpid());
    unlink(a.sun_path);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(l, 0), 0);
    int filler[8], nfill = 0;
    for (;;) {
        int f = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (connect(f, (struct sockaddr *)&a, sizeof a) == 0) {
            CHECK(nfill < 8);
            filler[nfill++] = f;
            continue;
        }
        CHECK_EQ(errno, EAGAIN);
        close(f);
        break;
    }
    int cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cancel_source *s = cancel_source_new();
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_connect;
    c.tok = cancel_source_token(s);
    c.fd = cl;
    memcpy(c.buf, &a, sizeof a);
    c.len = sizeof a;
    call_cancel_blocked(&c, s, "cancel_io_connect");
    CHECK(!is_nonblocking(cl));
    cancel_source_free(s);

    /* a deadline on the token ends it the same way */
    s = cancel_source_new_child(CANCEL_TOKEN_NONE, 5 * 1000 * 1000, NULL);
    c.tok = cancel_source_token(s);
    call_start(&c);
    call_join(&c);
    CHECK_EQ(c.result, -1);
    CHECK_EQ(c.err, ECANCELED);
    CHECK_EQ(cancel_token_cause(c.tok).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(s);

    s = cancel_source_new();
    c.tok = cancel_source_token(s);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_connect");
    int fd = accept(l, NULL, NULL); /* room in the backlog */
    CHECK(fd >= 0);
    call_join(&c);
    CHECK_EQ(c.result, 0);
    cancel_source_free(s);
    close(fd);
    close(cl);
    while (nfill > 0)
        close(filler[--nfill]);
    close(l);
    unlink(a.sun_path);
}

static void accept_emfile(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    struct rlimit old, lim;
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)open_fds() + 8;
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
    int spare[64], n = 0;
    while (n < 64 && (spare[n] = dup(0)) >= 0)
        n++;
    cancel_source *s = cancel_source_new();
    errno = 0;
    CHECK_EQ(cancel_io_accept(cancel_source_token(s), l, NULL, NULL, 0), -1);
    CHECK_EQ(errno, EMFILE);
    CHECK(!is_nonblocking(l));
    while (n > 0)
        close(spare[--n]);
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    cancel_source_free(s);
    close(l);
}

static void all_cases(void)
{
    RUN(accept_success_and_cancel);
    RUN(two_acceptors_never_hang);
    RUN(accept_bad_input_and_timeout);
    RUN(connect_success_refused_bad);
    RUN(connect_cancelled_while_blocked);
    RUN(connect_unix_full_backlog);
    RUN(accept_emfile);
}

static void without_ring_case(void)
{
    seccomp_refuse(SYS_io_uring_setup, SECCOMP_ANY_ARG, 0, ENOSYS);
    all_cases();
}

int main(void)
{
    /* The child first, while this process has one thread (TSan cannot
     * follow a child of a threaded process that starts threads). */
    fprintf(stderr, "-- io_uring_setup refused\n");
    run_filtered(without_ring_case);
    fprintf(stderr, "-- as the process finds it\n");
    all_cases();
    return 0;
}
