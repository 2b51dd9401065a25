/* libcancel-uring against the real kernel io_uring and liburing. */
#include "check.h"

#include <cancel/uring.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

static struct io_uring ring;

/* What the loop reaped: the program's own completions, and the scopes'. */
struct reaped {
    int ours;     /* cancel_uring_cqe returned 1 */
    int released; /* it returned 2 */
    int n;        /* completions of the program's requests */
    uint64_t data[64];
    int res[64];
    int bad;      /* completions of a scope's requests with -EBADF */
};

/* Reaps one CQE the way the header's loop does. */
static void reap_one(struct reaped *r)
{
    struct io_uring_cqe *cqe;
    int e;
    while ((e = io_uring_wait_cqe(&ring, &cqe)) == -EINTR) {
    }
    CHECK_EQ(e, 0);
    int k = cancel_uring_cqe(&ring, cqe);
    if (k == 0) {
        CHECK(r->n < 64);
        r->data[r->n] = cqe->user_data;
        r->res[r->n] = cqe->res;
        r->n++;
    } else if (k == 1) {
        r->ours++;
    } else {
        CHECK_EQ(k, 2);
        r->released++;
    }
    if (k != 0 && cqe->res == -EBADF)
        r->bad++;
    io_uring_cqe_seen(&ring, cqe);
}

/* Reaps until `n` completions of the program's requests arrived. */
static void reap_user(struct reaped *r, int n)
{
    while (r->n < n)
        reap_one(r);
}

/* Reaps until `n` freed scopes were released. */
static void reap_released(struct reaped *r, int n)
{
    while (r->released < n)
        reap_one(r);
}

/* Reaps whatever is already there, without waiting. */
static void reap_ready(struct reaped *r)
{
    while (io_uring_cq_ready(&ring) > 0)
        reap_one(r);
}

/* The result reaped for user_data `ud` (checked to be there once); -1000
 * if none. */
static int result_of(const struct reaped *r, uint64_t ud)
{
    int res = -1000;
    for (int i = 0; i < r->n; i++)
        if (r->data[i] == ud) {
            CHECK_EQ(res, -1000); /* never twice */
            res = r->res[i];
        }
    return res;
}

static struct io_uring_sqe *get_sqe(uint64_t ud)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    CHECK(sqe != NULL);
    io_uring_sqe_set_data64(sqe, ud);
    return sqe;
}

static int tie_read(cancel_uring *s, int fd, char *buf, unsigned len, uint64_t ud, cancel_uring_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(ud);
    io_uring_prep_read(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data64(sqe, ud);
    return cancel_uring_tie(s, sqe, op);
}

static int tie_accept(cancel_uring *s, int lfd, uint64_t ud, cancel_uring_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(ud);
    io_uring_prep_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud);
    return cancel_uring_tie(s, sqe, op);
}

static struct __kernel_timespec an_hour = {3600, 0};
static int tie_timeout(cancel_uring *s, uint64_t ud, cancel_uring_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(ud);
    io_uring_prep_timeout(sqe, &an_hour, 0, 0);
    io_uring_sqe_set_data64(sqe, ud);
    return cancel_uring_tie(s, sqe, op);
}

static int listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(fd, 8), 0);
    return fd;
}

static int connect_to(int lfd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    CHECK_EQ(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* The listener still works: a connection is accepted by a plain accept. */
static void check_listener_works(int lfd)
{
    int c = connect_to(lfd);
    int a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(a >= 0);
    close(a);
    close(c);
}

struct canceller {
    cancel_source *src;
    int async;
    int64_t at;
};
static void *cancel_soon(void *arg)
{
    struct canceller *c = arg;
    test_sleep_ns(2 * 1000 * 1000); /* let the loop block (not needed for correctness) */
    c->at = test_now_ns();
    if (c->async)
        cancel_source_cancel_async(c->src);
    else
        cancel_source_cancel(c->src);
    return NULL;
}

/* A pipe read, a socket accept and a timeout, tied to one token, are all
 * cancelled in the kernel when another thread cancels the token while the
 * loop waits; nothing was consumed and the descriptors work afterwards. */
static void read_accept_timeout_cancelled(int async)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    int lfd = listener();
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    CHECK(scope != NULL);
    cancel_uring_op t1 = CANCEL_URING_OP_INIT, t2 = CANCEL_URING_OP_INIT, t3 = CANCEL_URING_OP_INIT;
    char buf[8];
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 1, &t1), 0);
    CHECK_EQ(tie_accept(scope, lfd, 2, &t2), 0);
    CHECK_EQ(tie_timeout(scope, 3, &t3), 0);
    CHECK(io_uring_submit(&ring) >= 3);
    struct canceller c = {src, async, 0};
    pthread_t t = test_spawn(cancel_soon, &c);
    struct reaped r = {0};
    reap_user(&r, 1);
    int64_t first = test_now_ns();
    reap_user(&r, 3);
    test_join(t);
    fprintf(stderr, "   %s: cancel to first -ECANCELED %.1f us\n", async ? "async" : "sync",
            (double)(first - c.at) / 1e3);
    CHECK_EQ(result_of(&r, 1), -ECANCELED);
    CHECK_EQ(result_of(&r, 2), -ECANCELED);
    CHECK_EQ(result_of(&r, 3), -ECANCELED);
    cancel_uring_untie(&t1); /* as the loop of the header does */
    cancel_uring_untie(&t2);
    cancel_uring_untie(&t3);
    /* The pipe was not read from, the listener accepts. */
    CHECK_EQ(write(p[1], "x", 1), 1);
    CHECK_EQ(read(p[0], buf, sizeof buf), 1);
    check_listener_works(lfd);
    reap_ready(&r);
    CHECK_EQ(r.n, 3); /* nothing else of ours */
    /* Everything of the scope has completed by now: poll and 3 cancels. */
    while (r.ours < 4)
        reap_one(&r);
    CHECK_EQ(cancel_uring_free(scope), 0);
    close(p[0]);
    close(p[1]);
    close(lfd);
    cancel_source_free(src);
}

static void cancelled_from_another_thread(void)
{
    read_accept_timeout_cancelled(0);
}
static void cancelled_asynchronously(void)
{
    read_accept_timeout_cancelled(1);
}

/* A token already cancelled: a tie answers ECANCELED and the operation does
 * not run (the pipe keeps its data); an operation linked after it completes
 * with -ECANCELED, as a broken link chain does. */
static void already_cancelled_runs_nothing(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(write(p[1], "abc", 3), 3);
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    CHECK(scope != NULL);
    cancel_uring_op t1 = CANCEL_URING_OP_INIT;
    char buf[8];
    struct io_uring_sqe *sqe = get_sqe(10);
    io_uring_prep_read(sqe, p[0], buf, sizeof buf, 0);
    io_uring_sqe_set_data64(sqe, 10);
    sqe->flags |= IOSQE_IO_LINK;
    CHECK_EQ(cancel_uring_tie(scope, sqe, &t1), ECANCELED);
    io_uring_prep_nop(get_sqe(11));
    CHECK(io_uring_submit(&ring) >= 2);
    struct reaped r = {0};
    reap_user(&r, 1);
    CHECK_EQ(result_of(&r, 11), -ECANCELED);
    CHECK_EQ(result_of(&r, 10), -1000); /* no completion for the read */
    while (r.ours < 1) /* the entry turned into the scope's request */
        reap_one(&r);
    CHECK_EQ(read(p[0], buf, sizeof buf), 3); /* nothing was read */
    CHECK_EQ(cancel_uring_free(scope), 0);
    close(p[0]);
    close(p[1]);
    cancel_source_free(src);
}

/* Cancelled after the scope was made but before its poll completed: a tie
 * already answers ECANCELED. */
static void cancelled_before_poll_completes(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(write(p[1], "abc", 3), 3);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    cancel_source_cancel(src);
    cancel_uring_op t1 = CANCEL_URING_OP_INIT;
    char buf[8];
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 20, &t1), ECANCELED);
    io_uring_submit(&ring);
    struct reaped r = {0};
    while (r.ours < 2) /* the poll, and the turned entry */
        reap_one(&r);
    reap_ready(&r);
    CHECK_EQ(r.n, 0);
    CHECK_EQ(read(p[0], buf, sizeof buf), 3);
    CHECK_EQ(cancel_uring_free(scope), 0);
    close(p[0]);
    close(p[1]);
    cancel_source_free(src);
}

/* Two scopes on one ring: cancelling one token cancels only its operation;
 * the other completes with its data. An operation untied after completing
 * is not cancelled later. */
static void scopes_are_independent(void)
{
    int p[2], q[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(pipe2(q, O_CLOEXEC), 0);
    cancel_source *a = cancel_source_new(), *b = cancel_source_new();
    cancel_uring *sa = cancel_uring_new(&ring, cancel_source_token(a));
    cancel_uring *sb = cancel_uring_new(&ring, cancel_source_token(b));
    cancel_uring_op ta = CANCEL_URING_OP_INIT, tb = CANCEL_URING_OP_INIT, td = CANCEL_URING_OP_INIT;
    char ba[8], bb[8], bd[8];
    CHECK_EQ(tie_read(sa, p[0], ba, sizeof ba, 30, &ta), 0);
    CHECK_EQ(tie_read(sb, q[0], bb, sizeof bb, 31, &tb), 0);
    /* a read of sa that completes before the cancellation, then untied */
    int d[2];
    CHECK_EQ(pipe2(d, O_CLOEXEC), 0);
    CHECK_EQ(write(d[1], "d", 1), 1);
    CHECK_EQ(tie_read(sa, d[0], bd, sizeof bd, 32, &td), 0);
    io_uring_submit(&ring);
    struct reaped r = {0};
    reap_user(&r, 1);
    CHECK_EQ(result_of(&r, 32), 1);
    cancel_uring_untie(&td);
    cancel_source_cancel(a);
    reap_user(&r, 2);
    CHECK_EQ(result_of(&r, 30), -ECANCELED);
    CHECK_EQ(write(q[1], "q", 1), 1);
    reap_user(&r, 3);
    CHECK_EQ(result_of(&r, 31), 1);
    CHECK_EQ(bb[0], 'q');
    cancel_uring_untie(&tb);
    while (r.ours < 2) /* sa's poll and its one cancel: none for the untied read */
        reap_one(&r);
    CHECK_EQ(cancel_uring_free(sa), 0);
    CHECK_EQ(cancel_uring_free(sb), EINPROGRESS); /* its poll is armed */
    reap_released(&r, 1); /* its poll (-ECANCELED) and the removal */
    reap_ready(&r);
    CHECK_EQ(r.ours, 3);
    CHECK_EQ(r.n, 3);
    for (int i = 0; i < 2; i++) {
        close(p[i]);
        close(q[i]);
        close(d[i]);
    }
    cancel_source_free(a);
    cancel_source_free(b);
}

/* The source freed uncancelled: the scope stops counting (its poll sees the
 * descriptor readable and the token not cancelled) and the operation goes
 * on to complete with its data. */
static void freed_source_lets_operations_run(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    cancel_uring_op t = CANCEL_URING_OP_INIT;
    char buf[8];
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 40, &t), 0);
    io_uring_submit(&ring);
    cancel_source_free(src); /* the scope holds a reference */
    struct reaped r = {0};
    while (r.ours < 1)
        reap_one(&r);
    CHECK_EQ(r.n, 0);
    CHECK_EQ(write(p[1], "z", 1), 1);
    reap_user(&r, 1);
    CHECK_EQ(result_of(&r, 40), 1);
    cancel_uring_untie(&t);
    /* a scope that can no longer cancel accepts ties, harmlessly */
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 41, &t), 0);
    cancel_uring_untie(&t);
    CHECK_EQ(write(p[1], "y", 1), 1);
    io_uring_submit(&ring);
    reap_user(&r, 2);
    CHECK_EQ(result_of(&r, 41), 1);
    CHECK_EQ(cancel_uring_free(scope), 0);
    close(p[0]);
    close(p[1]);
}

/* Freeing a scope with its poll armed and an operation tied: the operation
 * is untied (runs on), the poll is removed, the scope released by the CQE
 * loop. */
static void free_with_poll_armed(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    cancel_uring_op t = CANCEL_URING_OP_INIT;
    char buf[8];
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 50, &t), 0);
    io_uring_submit(&ring);
    CHECK_EQ(cancel_uring_free(scope), EINPROGRESS);
    cancel_uring_untie(&t); /* untied by the free: harmless */
    struct reaped r = {0};
    reap_released(&r, 1);
    cancel_source_cancel(src); /* no scope listens any more */
    CHECK_EQ(write(p[1], "w", 1), 1);
    reap_user(&r, 1);
    CHECK_EQ(result_of(&r, 50), 1);
    /* a scope freed before its poll was ever submitted */
    cancel_source *s2 = cancel_source_new();
    cancel_uring *scope2 = cancel_uring_new(&ring, cancel_source_token(s2));
    CHECK_EQ(cancel_uring_free(scope2), EINPROGRESS);
    reap_released(&r, 2);
    cancel_source_free(s2);
    cancel_source_free(src);
    close(p[0]);
    close(p[1]);
}

/* A scope freed before its poll reached the kernel, and its source freed
 * too: the scope keeps the token, so the poll submitted afterwards names
 * the token's open descriptor (not a closed one, nor one reused for
 * something else), and releases it with the scope's memory. */
static void freed_scope_keeps_the_descriptor(void)
{
    cancel_source *src = cancel_source_new();
    int fd = cancel_token_fd(cancel_source_token(src));
    CHECK(fd >= 0);
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    CHECK(scope != NULL);
    CHECK_EQ(cancel_uring_free(scope), EINPROGRESS); /* its poll is queued, not submitted */
    cancel_source_free(src);
    CHECK(fcntl(fd, F_GETFD) != -1); /* still open */
    io_uring_submit(&ring);
    struct reaped r = {0};
    reap_released(&r, 1);
    CHECK_EQ(r.bad, 0); /* the poll and its removal found the descriptor */
    errno = 0;
    CHECK_EQ(fcntl(fd, F_GETFD), -1); /* released with the scope */
    CHECK_EQ(errno, EBADF);
}

/* A ring too small for the cancel requests: the scope submits what is
 * queued to make room, and every operation is still cancelled (the
 * completion queue overflows on the way; the kernel keeps the excess). */
static void small_ring(void)
{
    struct io_uring saved = ring;
    CHECK_EQ(io_uring_queue_init(4, &ring, 0), 0);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    cancel_uring_op t[6];
    char buf[6][4];
    for (int i = 0; i < 6; i++) {
        t[i] = (cancel_uring_op)CANCEL_URING_OP_INIT;
        CHECK_EQ(tie_read(scope, p[0], buf[i], 1, 80 + (uint64_t)i, &t[i]), 0);
        io_uring_submit(&ring);
    }
    cancel_source_cancel(src);
    struct reaped r = {0};
    reap_user(&r, 6);
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(result_of(&r, 80 + (uint64_t)i), -ECANCELED);
        cancel_uring_untie(&t[i]);
    }
    while (r.ours < 7) /* the poll and six cancels */
        reap_one(&r);
    CHECK_EQ(cancel_uring_free(scope), 0);
    cancel_source_free(src);
    close(p[0]);
    close(p[1]);
    io_uring_queue_exit(&ring);
    ring = saved;
}

/* A link chain A -> B whose head completes as the token is cancelled: the
 * scope's first cancel requests find neither (A is done, B not issued yet:
 * the kernel issues a linked request only once its predecessor's completion
 * has been processed), and B must still be cancelled once it is issued.
 * Made deterministic with a ring that defers the kernel's task work to the
 * ring's own waits (IORING_SETUP_DEFER_TASKRUN, Linux 6.1): A is a no-op,
 * the token is cancelled before the submission, so the scope's poll and A
 * complete during it, and B is issued only when the loop next waits, after
 * the scope has handled its poll. B reads an empty pipe: only a
 * cancellation ends it (a generous limit turns a hang into a failure). */
static void chain_issued_after_the_cancel_requests(void)
{
    struct io_uring saved = ring;
    struct io_uring_params params = {0};
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int e = io_uring_queue_init_params(16, &ring, &params);
    if (e < 0) {
        fprintf(stderr, "   no IORING_SETUP_DEFER_TASKRUN (%s): skipped\n", strerror(-e));
        ring = saved;
        return;
    }
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    CHECK(scope != NULL);
    cancel_uring_op ta = CANCEL_URING_OP_INIT, tb = CANCEL_URING_OP_INIT;
    struct io_uring_sqe *sqe = get_sqe(110);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 110);
    sqe->flags |= IOSQE_IO_LINK;
    CHECK_EQ(cancel_uring_tie(scope, sqe, &ta), 0);
    char buf[4];
    CHECK_EQ(tie_read(scope, p[0], buf, 1, 111, &tb), 0);
    cancel_source_cancel(src);
    io_uring_submit(&ring);
    struct reaped r = {0};
    for (int64_t deadline = test_now_ns() + 10 * 1000000000LL; r.n < 2;) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {0, 10 * 1000 * 1000};
        e = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
        if (e == -ETIME || e == -EINTR) {
            CHECK(test_now_ns() < deadline); /* B was never cancelled */
            continue;
        }
        CHECK_EQ(e, 0);
        int k = cancel_uring_cqe(&ring, cqe);
        if (k == 0) {
            r.data[r.n] = cqe->user_data;
            r.res[r.n++] = cqe->res;
            cancel_uring_untie(cqe->user_data == 110 ? &ta : &tb);
        }
        io_uring_cqe_seen(&ring, cqe);
    }
    CHECK_EQ(result_of(&r, 110), 0);
    CHECK_EQ(result_of(&r, 111), -ECANCELED);
    if (cancel_uring_free(scope) == EINPROGRESS)
        reap_released(&r, 1);
    cancel_source_free(src);
    close(p[0]);
    close(p[1]);
    io_uring_queue_exit(&ring);
    ring = saved;
}

/* The rounds of cancel requests stop: an operation linked after one left
 * untied (against the header's advice) is not issued while that one runs,
 * so every round's request for it finds nothing. The scope gives up after
 * a bounded number of rounds (each completes at once, inside the loop's
 * cancel_uring_cqe), leaving nothing in the kernel; the operation, issued
 * later, runs on. */
static void rounds_are_bounded(void)
{
    int p[2], q[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(pipe2(q, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new();
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    CHECK(scope != NULL);
    char a[4], b[4];
    struct io_uring_sqe *sqe = get_sqe(120);
    io_uring_prep_read(sqe, p[0], a, 1, 0);
    io_uring_sqe_set_data64(sqe, 120);
    sqe->flags |= IOSQE_IO_LINK; /* not tied */
    cancel_uring_op tb = CANCEL_URING_OP_INIT;
    CHECK_EQ(tie_read(scope, q[0], b, 1, 121, &tb), 0);
    io_uring_submit(&ring);
    cancel_source_cancel(src);
    struct reaped r = {0};
    reap_one(&r); /* the poll: the first round goes out */
    while (io_uring_cq_ready(&ring) > 0) /* each round's requests complete at once */
        reap_one(&r);
    CHECK_EQ(r.n, 0);
    fprintf(stderr, "   %d requests of the scope, then it gave up\n", r.ours);
    CHECK(r.ours > 2);                       /* the poll and more than one round */
    CHECK_EQ(cancel_uring_free(scope), 0);   /* nothing of it left in the kernel */
    CHECK_EQ(write(p[1], "a", 1), 1);
    CHECK_EQ(write(q[1], "b", 1), 1);
    reap_user(&r, 2);
    CHECK_EQ(result_of(&r, 120), 1);
    CHECK_EQ(result_of(&r, 121), 1); /* issued after the rounds: it ran on */
    cancel_source_free(src);
    close(p[0]);
    close(p[1]);
    close(q[0]);
    close(q[1]);
}

/* A deadline on the manual clock: the clock, not time, decides when the
 * kernel cancels. */
struct advancer {
    int64_t ns;
};
static void *advance(void *arg)
{
    test_sleep_ns(2 * 1000 * 1000);
    cancel_clock_advance(((struct advancer *)arg)->ns);
    return NULL;
}

static void deadline_on_manual_clock(void)
{
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, 3600LL * 1000000000, "io");
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
    cancel_uring_op t = CANCEL_URING_OP_INIT;
    char buf[8];
    CHECK_EQ(tie_read(scope, p[0], buf, sizeof buf, 60, &t), 0);
    io_uring_submit(&ring);
    struct advancer adv = {3601LL * 1000000000};
    pthread_t th = test_spawn(advance, &adv);
    struct reaped r = {0};
    reap_user(&r, 1);
    test_join(th);
    CHECK_EQ(result_of(&r, 60), -ECANCELED);
    CHECK_EQ(cancel_token_cause(cancel_source_token(src)).reason, CANCEL_REASON_TIMEOUT);
    while (r.ours < 2)
        reap_one(&r);
    CHECK_EQ(cancel_uring_free(scope), 0);
    cancel_source_free(src);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(cancel_clock_use_manual(false), 0);
}

static void token_none_and_bad_arguments(void)
{
    errno = 0;
    CHECK(cancel_uring_new(NULL, CANCEL_TOKEN_NONE) == NULL);
    CHECK_EQ(errno, EINVAL);
    cancel_uring *scope = cancel_uring_new(&ring, CANCEL_TOKEN_NONE);
    CHECK(scope != NULL);
    CHECK_EQ(io_uring_sq_ready(&ring), 0); /* nothing queued */
    cancel_uring_op t = CANCEL_URING_OP_INIT;
    struct io_uring_sqe *sqe = get_sqe(70);
    io_uring_prep_nop(sqe);
    CHECK_EQ(cancel_uring_tie(NULL, sqe, &t), EINVAL);
    CHECK_EQ(cancel_uring_tie(scope, sqe, NULL), EINVAL);
    io_uring_sqe_set_data64(sqe, CANCEL_URING_USER_DATA_BIT | 8);
    CHECK_EQ(cancel_uring_tie(scope, sqe, &t), EINVAL);
    io_uring_sqe_set_data64(sqe, 70);
    CHECK_EQ(cancel_uring_tie(scope, sqe, &t), 0);
    cancel_uring_untie(&t);
    io_uring_submit(&ring);
    struct reaped r = {0};
    reap_user(&r, 1);
    CHECK_EQ(result_of(&r, 70), 0);
    CHECK_EQ(cancel_uring_free(scope), 0);
    CHECK_EQ(cancel_uring_free(NULL), 0);
    cancel_uring_untie(NULL);
    /* A polled-I/O ring cannot poll the token's descriptor. */
    struct io_uring iop;
    if (io_uring_queue_init(4, &iop, IORING_SETUP_IOPOLL) == 0) {
        errno = 0;
        CHECK(cancel_uring_new(&iop, CANCEL_TOKEN_NONE) == NULL);
        CHECK_EQ(errno, EINVAL);
        io_uring_queue_exit(&iop);
    }
}

/* Every answer of cancel_uring_tie that leaves `op` untied writes it so:
 * untying it then is harmless, whatever the storage held before (here,
 * what malloc may hand back). The scopes: one that can never cancel
 * (CANCEL_TOKEN_NONE), one whose source was freed uncancelled (its poll has
 * told it), one already cancelled. */
static void untied_storage_is_written(void)
{
    cancel_uring_op *t = malloc(sizeof *t);
    CHECK(t != NULL);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    char buf[8];
    struct reaped r = {0};
    /* never cancels */
    cancel_uring *none = cancel_uring_new(&ring, CANCEL_TOKEN_NONE);
    memset(t, 0xAB, sizeof *t);
    struct io_uring_sqe *sqe = get_sqe(90);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 90);
    CHECK_EQ(cancel_uring_tie(none, sqe, t), 0);
    io_uring_submit(&ring);
    reap_user(&r, 1);
    cancel_uring_untie(t);
    CHECK_EQ(cancel_uring_free(none), 0);
    /* freed uncancelled: its poll completed, it stopped counting */
    cancel_source *src = cancel_source_new();
    cancel_uring *freed = cancel_uring_new(&ring, cancel_source_token(src));
    io_uring_submit(&ring);
    cancel_source_free(src);
    while (r.ours < 1)
        reap_one(&r);
    memset(t, 0xAB, sizeof *t);
    CHECK_EQ(tie_read(freed, p[0], buf, 1, 91, t), 0);
    io_uring_submit(&ring);
    CHECK_EQ(write(p[1], "f", 1), 1);
    reap_user(&r, 2);
    CHECK_EQ(result_of(&r, 91), 1);
    cancel_uring_untie(t);
    CHECK_EQ(cancel_uring_free(freed), 0);
    /* already cancelled */
    src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_uring *fired = cancel_uring_new(&ring, cancel_source_token(src));
    memset(t, 0xAB, sizeof *t);
    CHECK_EQ(tie_read(fired, p[0], buf, 1, 92, t), ECANCELED);
    cancel_uring_untie(t);
    io_uring_submit(&ring);
    while (r.ours < 2) /* the turned entry */
        reap_one(&r);
    CHECK_EQ(cancel_uring_free(fired), 0);
    cancel_source_free(src);
    reap_ready(&r);
    CHECK_EQ(r.n, 2);
    free(t);
    close(p[0]);
    close(p[1]);
}

/* Cancellation racing completion, many times: a read of one byte, the byte
 * written and the token cancelled from two threads at random moments. The
 * read completes exactly once, with the byte or -ECANCELED, and a byte not
 * read is still in the pipe. */
struct race {
    cancel_source *_Atomic src;
    int wfd;
    _Atomic int round; /* the main thread starts each round; -1 ends */
    _Atomic int acted; /* the two threads count themselves in */
    uint64_t rng_writer, rng_canceller;
};
/* Waits for the next round; false when it is over. */
static bool next_round(struct race *r, int *seen)
{
    int g;
    while ((g = atomic_load(&r->round)) == *seen)
        sched_yield();
    *seen = g;
    return g >= 0;
}
static void *race_writer(void *arg)
{
    struct race *r = arg;
    uint64_t rng = r->rng_writer;
    int seen = 0;
    while (next_round(r, &seen)) {
        /* later on average than the canceller: the cancellation takes a
         * round trip through the loop, the write completes the read at once */
        test_jitter(&rng, 1u << (test_rand(&rng) % 20));
        CHECK_EQ(write(r->wfd, "r", 1), 1);
        atomic_fetch_add(&r->acted, 1);
    }
    return NULL;
}
static void *race_canceller(void *arg)
{
    struct race *r = arg;
    int seen = 0;
    while (next_round(r, &seen)) {
        test_jitter(&r->rng_canceller, 1u << (test_rand(&r->rng_canceller) % 16));
        cancel_source_cancel(atomic_load(&r->src));
        atomic_fetch_add(&r->acted, 1);
    }
    return NULL;
}

static void race_with_completion(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    struct race rc = {NULL, p[1], 0, 0, 0x853c49e6748fea9bu, 0xda3e39cb94b95bdbu};
    pthread_t w = test_spawn(race_writer, &rc);
    pthread_t c = test_spawn(race_canceller, &rc);
    int n = TEST_SCALE(2000), cancelled = 0, read_ok = 0;
    for (int i = 0; i < n; i++) {
        cancel_source *src = cancel_source_new();
        atomic_store(&rc.src, src);
        cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
        cancel_uring_op t = CANCEL_URING_OP_INIT;
        char buf[4];
        int e = tie_read(scope, p[0], buf, 1, 100 + (uint64_t)i, &t);
        io_uring_submit(&ring);
        atomic_store(&rc.acted, 0);
        atomic_store(&rc.round, i + 1);
        struct reaped r = {0};
        if (e == 0) {
            reap_user(&r, 1);
            cancel_uring_untie(&t);
        }
        while (atomic_load(&rc.acted) != 2) /* both have acted */
            sched_yield();
        int res = e == 0 ? result_of(&r, 100 + (uint64_t)i) : -ECANCELED;
        if (res == 1) {
            read_ok++;
            CHECK_EQ(buf[0], 'r');
            struct pollfd pf = {p[0], POLLIN, 0};
            CHECK_EQ(poll(&pf, 1, 0), 0); /* consumed */
        } else {
            CHECK_EQ(res, -ECANCELED);
            cancelled++;
            CHECK_EQ(read(p[0], buf, 1), 1); /* still there */
        }
        if (cancel_uring_free(scope) == EINPROGRESS)
            reap_released(&r, 1);
        reap_ready(&r);
        CHECK(r.n <= 1);
        cancel_source_free(src);
    }
    atomic_store(&rc.round, -1);
    test_join(w);
    test_join(c);
    fprintf(stderr, "   %d read, %d cancelled\n", read_ok, cancelled);
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    int e = io_uring_queue_init(64, &ring, 0);
    if (e == -ENOSYS || e == -EPERM) {
        fprintf(stderr, "io_uring_queue_init: %s: the kernel refuses io_uring here: skipped\n",
                strerror(-e));
        return 77;
    }
    CHECK_EQ(e, 0);
    RUN(cancelled_from_another_thread);
    RUN(cancelled_asynchronously);
    RUN(already_cancelled_runs_nothing);
    RUN(cancelled_before_poll_completes);
    RUN(scopes_are_independent);
    RUN(freed_source_lets_operations_run);
    RUN(free_with_poll_armed);
    RUN(freed_scope_keeps_the_descriptor);
    RUN(small_ring);
    RUN(chain_issued_after_the_cancel_requests);
    RUN(rounds_are_bounded);
    RUN(deadline_on_manual_clock);
    RUN(token_none_and_bad_arguments);
    RUN(untied_storage_is_written);
    RUN(race_with_completion);
    io_uring_queue_exit(&ring);
    cancel_quiesce(CANCEL_INFINITE);
    return 0;
}
