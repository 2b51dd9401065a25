/* cancel_io_poll: readiness, timeouts on both clocks, cancellation before
 * and while blocked (it wins over readiness), many entries, a source freed
 * uncancelled mid-wait, bad input. */
#include "io_util.h"

static void ready_and_timeout(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    struct pollfd f[2] = {{p[0], POLLIN, 77}, {-1, POLLIN, 77}};
    /* try once */
    CHECK_EQ(cancel_io_poll(t, f, 2, 0), 0);
    CHECK_EQ(f[0].revents, 0);
    CHECK_EQ(f[1].revents, 0);
    /* a real timeout, never early */
    int64_t t0 = test_now_ns();
    errno = 55;
    CHECK_EQ(cancel_io_poll(t, f, 2, 15 * 1000 * 1000), 0);
    CHECK(test_now_ns() - t0 >= 15 * 1000 * 1000);
    CHECK_EQ(errno, 55);
    /* ready */
    CHECK_EQ(write(p[1], "x", 1), 1);
    CHECK_EQ(cancel_io_poll(t, f, 2, CANCEL_INFINITE), 1);
    CHECK_EQ(f[0].revents, POLLIN);
    CHECK_EQ(cancel_io_poll(t, f, 2, 0), 1);
    /* cancelled: ECANCELED wins over readiness */
    cancel_source_cancel(s);
    f[0].revents = 99;
    CHECK_EQ(cancel_io_poll(t, f, 2, CANCEL_INFINITE), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_poll(t, NULL, 5, -7), -1);
    CHECK_EQ(errno, ECANCELED);
    cancel_source_free(s);
    close(p[0]);
    close(p[1]);
}

static void cancelled_while_blocked(void)
{
    for (int n = 0; n < 3; n++) {
        int p[2];
        CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
        cancel_source *s = cancel_source_new();
        struct call c;
        memset(&c, 0, sizeof c);
        c.fn = do_poll;
        c.tok = cancel_source_token(s);
        c.timeout = n == 2 ? 60LL * 1000 * 1000 * 1000 : CANCEL_INFINITE;
        c.nfds = n == 0 ? 0 : 1;
        c.pfd[0] = (struct pollfd){p[0], POLLIN, 0};
        call_cancel_blocked(&c, s, "cancel_io_poll");
        cancel_source_free(s);
        close(p[0]);
        close(p[1]);
    }
}

/* More than fit on the stack: the copy comes from the heap. */
static void many_entries(void)
{
    int p[20][2];
    struct call c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < 20; i++) {
        CHECK_EQ(pipe2(p[i], O_CLOEXEC), 0);
        c.pfd[i] = (struct pollfd){p[i][0], POLLIN, 0};
    }
    cancel_source *s = cancel_source_new();
    c.fn = do_poll;
    c.tok = cancel_source_token(s);
    c.timeout = CANCEL_INFINITE;
    c.nfds = 20;
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_poll");
    CHECK_EQ(write(p[17][1], "x", 1), 1);
    call_join(&c);
    CHECK_EQ(c.result, 1);
    for (int i = 0; i < 20; i++)
        CHECK_EQ(c.pfd[i].revents, i == 17 ? POLLIN : 0);
    cancel_source_free(s);
    for (int i = 0; i < 20; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
}

static void freed_source_keeps_waiting(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_poll;
    c.tok = t;
    c.timeout = CANCEL_INFINITE;
    c.nfds = 1;
    c.pfd[0] = (struct pollfd){p[0], POLLIN, 0};
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_poll");
    cancel_source_free(s);
    check_not_spinning(&c);
    CHECK_EQ(write(p[1], "x", 1), 1);
    call_join(&c);
    CHECK_EQ(c.result, 1);
    cancel_token_release(t);
    close(p[0]);
    close(p[1]);
}

static void bad_input(void)
{
    struct pollfd f = {-1, POLLIN, 0};
    errno = 0;
    CHECK_EQ(cancel_io_poll(CANCEL_TOKEN_NONE, &f, 1, -2), -1);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(cancel_io_poll(CANCEL_TOKEN_NONE, NULL, 1, 0), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(cancel_io_poll(CANCEL_TOKEN_NONE, NULL, 0, 0), 0);
    /* a closed descriptor is POLLNVAL, as poll(2) says */
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    close(p[1]);
    f.fd = p[1];
    CHECK_EQ(cancel_io_poll(CANCEL_TOKEN_NONE, &f, 1, CANCEL_INFINITE), 1);
    CHECK_EQ(f.revents, POLLNVAL);
    close(p[0]);
}

/* The manual clock governs the timeout: the call returns 0 exactly when the
 * clock is moved past it, and not before. */
static void manual_clock_timeout(void)
{
    cancel_clock_use_manual(true);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *s = cancel_source_new();
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_poll;
    c.tok = cancel_source_token(s);
    c.timeout = 1000LL * 1000 * 1000;
    c.nfds = 1;
    c.pfd[0] = (struct pollfd){p[0], POLLIN, 0};
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_poll");
    cancel_clock_advance(999LL * 1000 * 1000);
    CHECK(!atomic_load(&c.finished)); /* advance returns after due waits woke */
    cancel_clock_advance(1000 * 1000);
    call_join(&c);
    CHECK_EQ(c.result, 0);
    CHECK(!cancel_token_is_requested(c.tok));
    /* and cancellation still wins */
    call_cancel_blocked(&c, s, "cancel_io_poll");
    cancel_source_free(s);
    close(p[0]);
    close(p[1]);
    cancel_clock_use_manual(false);
}

int main(void)
{
    RUN(ready_and_timeout);
    RUN(cancelled_while_blocked);
    RUN(many_entries);
    RUN(freed_source_keeps_waiting);
    RUN(bad_input);
    RUN(manual_clock_timeout);
    return 0;
}
