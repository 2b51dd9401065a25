/* cancel_io_accept and cancel_io_connect through the thread's io_uring ring
 * (blocking and non-blocking sockets, cancellable tokens): cancelled while
 * blocked and before, success, a cancel racing an arriving connection (no
 * connection lost), no O_NONBLOCK switch (F_SETFL and F_DUPFD_CLOEXEC
 * refused by a seccomp filter), io_uring_enter refused (the switch
 * serves), an already-cancelled token that submits nothing, the ring
 * operation's own states, and fork (the child makes its own ring; the
 * parent's operation in flight is unaffected). */
#include "io_util.h"
#include "seccomp_util.h"

#include <linux/io_uring.h>


#define REFUSED ENOTRECOVERABLE /* an errno no real call gives here */

static int tcp_client(bool nb)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nb ? SOCK_NONBLOCK : 0), 0);
    CHECK(fd >= 0);
    return fd;
}

/* Starts cancel_io_accept(tok, l, NULL, NULL, SOCK_CLOEXEC) on a thread. */
static void start_accept(struct call *c, cancel_token tok, int l)
{
    memset(c, 0, sizeof *c);
    c->fn = do_accept;
    c->tok = tok;
    c->fd = l;
    c->flags = SOCK_CLOEXEC;
    call_start(c);
}

/* Takes a connection known to be queued (its client's connect returned):
 * waits for it to show, at most 10 s, then accepts it. */
static int take_queued(int l)
{
    struct pollfd p = {l, POLLIN, 0};
    CHECK_EQ(poll(&p, 1, 10 * 1000), 1);
    int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(fd >= 0);
    return fd;
}

/* Blocking and non-blocking listeners: blocked then cancelled, then a
 * connection, then cancelled before with a connection queued. */
static void accept_cases_up_to(int nb_max)
{
    for (int nb = 0; nb <= nb_max; nb++) {
        struct sockaddr_in a;
        int l = tcp_listener(8, &a);
        if (nb)
            set_nonblocking(l, true);
        for (int round = 0; round < 2; round++) {
            cancel_source *s = cancel_source_new();
            struct call c;
            start_accept(&c, cancel_source_token(s), l);
            call_wait_blocked(&c, "cancel_io_accept");
            cancel_source_cancel(s);
            call_join(&c);
            CHECK_EQ(c.result, -1);
            CHECK_EQ(c.err, ECANCELED);
            CHECK_EQ(is_nonblocking(l), nb);
            cancel_source_free(s);

            /* still usable, and by a cancellable call */
            s = cancel_source_new();
            c.tok = cancel_source_token(s);
            call_start(&c);
            call_wait_blocked(&c, "cancel_io_accept");
            int cl = tcp_client(false);
            CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
            call_join(&c);
            CHECK(c.result >= 0);
            CHECK(fcntl((int)c.result, F_GETFD) & FD_CLOEXEC);
            CHECK(!is_nonblocking((int)c.result));
            close((int)c.result);
            close(cl);

            /* the peer's address and SOCK_NONBLOCK pass through */
            accept_passes_peer(c.tok, l, tcp_client(false), &a);

            /* accept4's errors */
            errno = 0;
            CHECK_EQ(cancel_io_accept(c.tok, l, NULL, NULL, 12345678), -1);
            CHECK_EQ(errno, EINVAL);
            int notlistening = tcp_client(false);
            CHECK_EQ(cancel_io_accept(c.tok, notlistening, NULL, NULL, 0), -1);
            CHECK_EQ(errno, EINVAL);
            close(notlistening);

            /* cancelled before: the queued connection stays */
            cl = tcp_client(false);
            CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
            cancel_source_cancel(s);
            CHECK_EQ(cancel_io_accept(c.tok, l, NULL, NULL, 0), -1);
            CHECK_EQ(errno, ECANCELED);
            close(take_queued(l));
            close(cl);
            cancel_source_free(s);
            CHECK_EQ(is_nonblocking(l), nb);
        }
        close(l);
    }
}

static void accept_cases(void)
{
    accept_cases_up_to(1);
}

/* A cancel racing a connection that arrives: every connection made is
 * either returned by the call or still queued afterwards. */
static void accept_race(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    int made = 0, by_call = 0, queued = 0;
    for (int i = 0; i < TEST_SCALE(300) + 10; i++) {
        cancel_source *s = cancel_source_new();
        struct call c;
        start_accept(&c, cancel_source_token(s), l);
        if (i % 2)
            call_wait_blocked(&c, "cancel_io_accept");
        int cl = tcp_client(false);
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        made++;
        cancel_source_cancel(s);
        call_join(&c);
        if (c.result >= 0) {
            by_call++;
            close((int)c.result);
        } else {
            CHECK_EQ(c.err, ECANCELED);
            close(take_queued(l));
            queued++;
        }
        close(cl);
        cancel_source_free(s);
    }
    CHECK_EQ(made, by_call + queued);
    CHECK(!is_nonblocking(l));
    close(l);
}

static void connect_cases(void)
{
    for (int nb = 0; nb < 2; nb++) {
        /* success, and connect(2)'s errors */
        struct sockaddr_in a;
        int l = tcp_listener(8, &a);
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_source_token(s);
        int cl = tcp_client(nb);
        errno = 77;
        CHECK_EQ(cancel_io_connect(t, cl, (struct sockaddr *)&a, sizeof a), 0);
        CHECK_EQ(errno, 77);
        CHECK_EQ(tcp_state(cl), TCP_ESTABLISHED);
        CHECK_EQ(is_nonblocking(cl), nb);
        close(cl);
        close(l);
        cl = tcp_client(nb);
        CHECK_EQ(cancel_io_connect(t, cl, (struct sockaddr *)&a, sizeof a), -1);
        CHECK_EQ(errno, ECONNREFUSED);
        close(cl);
        cl = tcp_client(nb);
        struct sockaddr_in bad = {.sin_family = AF_INET};
        CHECK_EQ(cancel_io_connect(t, cl, (struct sockaddr *)&bad, 3), -1);
        CHECK_EQ(errno, EINVAL);
        close(cl);
        cancel_source_free(s);

        /* cancelled while blocked: nothing half-open */
        int filler[4], nfill;
        l = full_tcp_listener(&a, filler, &nfill);
        for (int round = 0; round < 2; round++) {
            cl = tcp_client(nb);
            s = cancel_source_new();
            connect_cancel_blocked(s, cl, &a, sizeof a);
            CHECK_EQ(is_nonblocking(cl), nb);
            CHECK_EQ(tcp_state(cl), TCP_CLOSE);
            /* cancelled before */
            CHECK_EQ(cancel_io_connect(cancel_source_token(s), cl, (struct sockaddr *)&a, sizeof a), -1);
            CHECK_EQ(errno, ECANCELED);
            CHECK_EQ(tcp_state(cl), TCP_CLOSE);
            close(cl);
            cancel_source_free(s);
        }
        while (nfill > 0)
            close(filler[--nfill]);
        close(l);
    }
}

/* connect on a socket already connected, raced by a cancel: whether the
 * cancel comes before the operation reaches the kernel or after (EISCONN
 * then), the established connection is left alone. Each call runs on a
 * fresh thread, whose ring is made within the call: a wide window before
 * the submission. (A race: a slow machine only makes it rarer to land
 * there, never a failure.) */
struct connected_call {
    cancel_source *s;
    int fd;
    struct sockaddr_in a;
    _Atomic int go;
    int result, err;
};

static void *connected_call_main(void *arg)
{
    struct connected_call *k = arg;
    atomic_store(&k->go, 1);
    errno = 0;
    k->result = cancel_io_connect(cancel_source_token(k->s), k->fd, (struct sockaddr *)&k->a, sizeof k->a);
    k->err = errno;
    return NULL;
}

static void connect_connected_race(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    int cl = tcp_client(false);
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    for (int i = 0; i < TEST_SCALE(200) + 10; i++) {
        struct connected_call k = {.s = cancel_source_new(), .fd = cl, .a = a};
        pthread_t th = test_spawn(connected_call_main, &k);
        test_wait_while(&k.go, 0);
        for (volatile int spin = 0; spin < i % 8 * 200; spin++) {
        }
        cancel_source_cancel(k.s);
        test_join(th);
        CHECK_EQ(k.result, -1);
        CHECK(k.err == EISCONN || k.err == ECANCELED);
        CHECK_EQ(tcp_state(cl), TCP_ESTABLISHED);
        cancel_source_free(k.s);
    }
    close(take_queued(l));
    close(cl);
    close(l);
}

/* No switch is possible: the calls above still work and stay cancellable. */
static void no_switch_case(void)
{
    seccomp_refuse(SYS_fcntl, 1, F_SETFL, REFUSED);
    seccomp_refuse(SYS_fcntl, 1, F_DUPFD_CLOEXEC, REFUSED);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    errno = 0;
    CHECK_EQ(fcntl(p[0], F_SETFL, O_NONBLOCK), -1);
    CHECK_EQ(errno, REFUSED);
    close(p[0]);
    close(p[1]);
    accept_cases_up_to(0);
    connect_cases();
}

static void no_switch(void)
{
    run_filtered(no_switch_case);
}

/* A filter that lets a ring be made but refuses entering it: the calls
 * find out when making the ring, and switch O_NONBLOCK instead. */
static void enter_refused_case(void)
{
    seccomp_refuse(SYS_io_uring_enter, SECCOMP_ANY_ARG, 0, EPERM);
    accept_cases_up_to(1);
    connect_cases();
}

static void enter_refused(void)
{
    run_filtered(enter_refused_case);
}

/* An already-cancelled token: no ring is made, nothing is entered. */
static void cancelled_submits_nothing_case(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    int cl = tcp_client(false);
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    int c2 = tcp_client(false);
    seccomp_refuse(SYS_io_uring_setup, SECCOMP_ANY_ARG, 0, REFUSED);
    seccomp_refuse(SYS_io_uring_enter, SECCOMP_ANY_ARG, 0, REFUSED);
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    errno = 0;
    CHECK_EQ(cancel_io_accept(cancel_source_token(s), l, NULL, NULL, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_connect(cancel_source_token(s), c2, (struct sockaddr *)&a, sizeof a), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(tcp_state(c2), TCP_CLOSE);
    close(take_queued(l));
    cancel_source_free(s);
    close(c2);
    close(cl);
    close(l);
}

static void cancelled_submits_nothing(void)
{
    run_filtered(cancelled_submits_nothing_case);
}

/* The ring operation itself: a cancel before the run submits nothing (the
 * queued connection stays); a cancel during the run ends it; a cancel
 * after it completed changes nothing. */
struct canceller {
    struct cancel__ring_op *op;
    struct cancel__blocked *owner;
};

static void *canceller_main(void *arg)
{
    struct canceller *k = arg;
    while (!atomic_load(&k->owner->what))
        test_sleep_ns(100 * 1000);
    cancel__ring_cancel(k->op);
    return NULL;
}

static void ring_op_states(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    int cl = tcp_client(false);
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    struct cancel__ring_op op;
    CHECK_EQ(cancel__ring_prepare(&op, CANCEL__RING_ACCEPT, l, NULL, NULL, 0, SOCK_CLOEXEC), 0);
    cancel__ring_cancel(&op);
    CHECK_EQ(cancel__ring_run(&op), -ECANCELED);
    /* taken now by the ring: proves the cancelled op took nothing */
    CHECK_EQ(cancel__ring_prepare(&op, CANCEL__RING_ACCEPT, l, NULL, NULL, 0, SOCK_CLOEXEC), 0);
    long fd = cancel__ring_run(&op);
    CHECK(fd >= 0);
    close((int)fd);
    cancel__ring_cancel(&op); /* after: nothing to do */
    close(cl);

    for (int i = 0; i < TEST_SCALE(100) + 5; i++) {
        CHECK_EQ(cancel__ring_prepare(&op, CANCEL__RING_ACCEPT, l, NULL, NULL, 0, SOCK_CLOEXEC), 0);
        struct canceller k = {&op, cancel__blocked_here()};
        pthread_t th = test_spawn(canceller_main, &k);
        cancel__blocked_enter("ring", l);
        CHECK_EQ(cancel__ring_run(&op), -ECANCELED);
        cancel__blocked_leave();
        test_join(th);
    }
    close(l);
}

/* fork: the parent has a ring and an accept in flight on another thread;
 * the child accepts cancellably on its own, and the parent's call is
 * unaffected (it still takes its connection, or is cancelled). */
/* The io_uring descriptors the process holds. */
static int ring_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[300], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(path, target, sizeof target - 1);
        if (l > 0) {
            target[l] = 0;
            n += strcmp(target, "anon_inode:[io_uring]") == 0;
        }
    }
    closedir(d);
    return n;
}

static struct sockaddr_in child_addr;
static int child_listener;

static void fork_case(bool cancel_parent)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    child_listener = tcp_listener(8, &child_addr);
    /* this thread's ring */
    int cl = tcp_client(false);
    cancel_source *s = cancel_source_new();
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    int fd = cancel_io_accept(cancel_source_token(s), l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(fd >= 0);
    close(fd);
    close(cl);
    /* another thread's call in flight */
    struct call c;
    start_accept(&c, cancel_source_token(s), l);
    call_wait_blocked(&c, "cancel_io_accept");

    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* the parent's rings are let go, the forking thread's too; a
         * new one serves */
        if (ring_count() != 0)
            _exit(7);
        cancel_source *cs = cancel_source_new();
        struct call cc;
        start_accept(&cc, cancel_source_token(cs), child_listener);
        call_wait_blocked(&cc, "cancel_io_accept");
        cancel_source_cancel(cs);
        call_join(&cc);
        if (cc.result != -1 || cc.err != ECANCELED)
            _exit(1);
        cancel_source_free(cs);
        cs = cancel_source_new();
        int ccl = tcp_client(false);
        if (connect(ccl, (struct sockaddr *)&child_addr, sizeof child_addr) != 0)
            _exit(2);
        int cfd = cancel_io_accept(cancel_source_token(cs), child_listener, NULL, NULL, 0);
        if (cfd < 0)
            _exit(3);
        /* and on this thread, whose inherited ring is gone */
        if (ring_count() != 1)
            _exit(8);
        cancel_source_cancel(cs);
        cancel_source_free(cs);
        _exit(0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        CHECK_EQ(errno, EINTR);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 0);
    CHECK(!atomic_load(&c.finished));
    CHECK(ring_count() >= 2); /* this thread's, and the one in flight */
    if (cancel_parent) {
        cancel_source_cancel(s);
        call_join(&c);
        CHECK_EQ(c.result, -1);
        CHECK_EQ(c.err, ECANCELED);
    } else {
        cl = tcp_client(false);
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        call_join(&c);
        CHECK(c.result >= 0);
        close((int)c.result);
        close(cl);
    }
    /* the parent's own ring still serves this thread */
    cancel_source_free(s);
    s = cancel_source_new();
    cl = tcp_client(false);
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    fd = cancel_io_accept(cancel_source_token(s), l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(fd >= 0);
    close(fd);
    close(cl);
    cancel_source_free(s);
    close(child_listener);
    close(l);
}

static void fork_child_own_ring(void)
{
    fork_case(false);
    fork_case(true);
}

/* fork right after this thread used its ring; then the parent waits on
 * that ring while the child accepts (cancelled by a deadline) on the
 * thread it forked from: both calls end as they should. (A shared ring
 * would share ids and completions between the two, but does not fail
 * here reliably: ring_count() in the child is the check that none is.) */
static int sync_pipe[2];

static void *signal_when_blocked(void *arg)
{
    struct cancel__blocked *b = arg;
    while (!atomic_load(&b->what))
        test_sleep_ns(100 * 1000);
    CHECK_EQ(write(sync_pipe[1], "x", 1), 1);
    return NULL;
}

static void fork_same_thread_ring(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(8, &a);
    child_listener = tcp_listener(8, &child_addr);
    cancel_source *s = cancel_source_new();
    for (int i = 0; i < 5; i++) {
        int cl = tcp_client(false);
        CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        int fd = cancel_io_accept(cancel_source_token(s), l, NULL, NULL, SOCK_CLOEXEC);
        CHECK(fd >= 0);
        close(fd);
        close(cl);
        CHECK_EQ(pipe2(sync_pipe, O_CLOEXEC), 0);
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            char b;
            if (read(sync_pipe[0], &b, 1) != 1)
                _exit(4);
            /* The parent is about to enter its wait, or in it: give it
             * time to be in it (only makes a shared ring show more often;
             * nothing passes because of it). */
            test_sleep_ns(20 * 1000 * 1000);
            cancel_source *cs = cancel_source_new_child(CANCEL_TOKEN_NONE, 20 * 1000 * 1000, NULL);
            int r = cancel_io_accept(cancel_source_token(cs), child_listener, NULL, NULL, 0);
            if (r != -1 || errno != ECANCELED)
                _exit(5);
            int pc = tcp_client(false);
            if (connect(pc, (struct sockaddr *)&a, sizeof a) != 0)
                _exit(6);
            _exit(0);
        }
        pthread_t th = test_spawn(signal_when_blocked, cancel__blocked_here());
        struct sockaddr_in me;
        socklen_t ml = sizeof me;
        fd = cancel_io_accept(cancel_source_token(s), l, NULL, NULL, SOCK_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_EQ(getsockname(fd, (struct sockaddr *)&me, &ml), 0);
        CHECK_EQ(me.sin_port, a.sin_port);
        close(fd);
        test_join(th);
        int st;
        while (waitpid(pid, &st, 0) < 0)
            CHECK_EQ(errno, EINTR);
        CHECK(WIFEXITED(st));
        CHECK_EQ(WEXITSTATUS(st), 0);
        close(sync_pipe[0]);
        close(sync_pipe[1]);
    }
    cancel_source_free(s);
    close(child_listener);
    close(l);
}

int main(void)
{
    int fd = (int)syscall(SYS_io_uring_setup, 1, &(struct io_uring_params){0});
    if (fd < 0) {
        fprintf(stderr, "no io_uring here (%s): skipped\n", strerror(errno));
        return 77;
    }
    close(fd);
    /* Children of fork first, while this process has one thread: TSan
     * cannot follow a child of a threaded process that starts threads. */
    RUN(no_switch);
    RUN(enter_refused);
    RUN(cancelled_submits_nothing);
    RUN(accept_cases);
    RUN(accept_race);
    RUN(connect_cases);
    RUN(connect_connected_race);
    RUN(ring_op_states);
    /* These fork while threads wait, on purpose: not under TSan (above). */
    if (!TEST_TSAN) {
        RUN(fork_child_own_ring);
        RUN(fork_same_thread_ring);
    } else {
        fprintf(stderr, "-- fork cases left out under TSan\n");
    }
    return 0;
}
