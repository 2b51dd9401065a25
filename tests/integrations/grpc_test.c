/*
 * <cancel/grpc.h> one piece at a time, against a real gRPC server on
 * 127.0.0.1 in this process (its calls on a next queue whose loop passes
 * every event to cancel_grpc_dispatch): argument checks, calls born
 * cancelled, the status for each reason, the deadline carried in both
 * directions (on the real clock and on the manual clock), a peer's reset
 * inside the timeout window, a call that ends normally, a client process
 * killed mid-call, EBUSY, and the lifetime races of cancel_grpc_call_unref.
 */
#include "grpc_harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define MS INT64_C(1000000)
#define S INT64_C(1000000000)

/* What the server's handler saw of its last call. */
static struct {
    struct server srv;
    grpc_channel *ch;
    struct queue client;
    cancel_source *release;    /* lets the handler reply OK */
    test_counter started, done;
    /* written by the handler before it counts itself started / done */
    cancel_source *src;        /* the handler's source, while it works */
    int64_t left_at_arrival;   /* gRPC's deadline, as time left */
    int64_t deadline;          /* its token's deadline */
    cancel_reason reason;
    int64_t stopped_at;        /* when its work stopped */
    bool origin_peer;
    bool released_after_end;   /* the watch ran and left the source alone */
    int busy_errno;            /* errno of a second cancel_grpc_server_source_new */
} T;

static void hold(struct incoming *in)
{
    grpc_call *call = in->call;
    long dispatched_before = test_counter_get(&T.srv.calls.dispatched);
    int64_t left = -1;
    if (in->details.deadline.tv_sec != INT64_MAX)
        left = (int64_t)(gpr_timespec_to_micros(gpr_time_sub(in->details.deadline,
                                                             gpr_now(in->details.deadline.clock_type))) *
                         1000);
    cancel_source *src = cancel_grpc_server_source_new(call, in->details.deadline);
    CHECK(src != NULL);
    errno = 0;
    CHECK(cancel_grpc_server_source_new(call, in->details.deadline) == NULL);
    T.busy_errno = errno;
    cancel_token tok = cancel_source_token(src);
    grpc_byte_buffer *req = server_recv(call);
    CHECK(req != NULL);
    grpc_byte_buffer_destroy(req);
    T.src = src;
    T.left_at_arrival = left;
    T.deadline = cancel_token_deadline(tok);
    test_counter_add(&T.started, 1);

    cancel_token either[2] = {tok, cancel_source_token(T.release)};
    cancel_source *work = cancel_source_new_linked(either, 2);
    CHECK(cancel_token_wait(cancel_source_token(work), CANCEL_INFINITE));
    cancel_source_free(work);
    T.stopped_at = cancel_now();
    cancel_cause c = cancel_token_cause(tok);
    T.reason = c.reason;
    T.origin_peer = c.origin && strcmp(c.origin, "grpc peer") == 0;
    if (c.reason == CANCEL_REASON_NONE) {
        server_reply(call, payload_new(7), GRPC_STATUS_OK);
        /* The call ended normally: once the adapter's event went by, the
         * source is on its own (no deadline, nothing to cancel it). */
        test_counter_wait(&T.srv.calls.dispatched, dispatched_before + 1);
        T.released_after_end =
            !cancel_token_is_requested(tok) && cancel_token_deadline(tok) == CANCEL_INFINITE;
    } else {
        server_reply(call, NULL, status_for(tok));
    }
    cancel_source_free(src);
    grpc_call_unref(call);
    test_counter_add(&T.done, 1);
}

static grpc_call *call_on(cancel_token tok)
{
    grpc_call *call = cancel_grpc_call_new(tok, T.ch, T.client.cq, "/test/hold", NULL);
    CHECK(call != NULL);
    return call;
}

static void dispatch_ignores_foreign_events(void)
{
    CHECK(!cancel_grpc_dispatch(NULL));
    grpc_event ev = {GRPC_QUEUE_TIMEOUT, 0, NULL};
    CHECK(!cancel_grpc_dispatch(&ev));
    ev.type = GRPC_QUEUE_SHUTDOWN;
    CHECK(!cancel_grpc_dispatch(&ev));
    ev.type = GRPC_OP_COMPLETE;
    ev.success = 1;
    ev.tag = (void *)1; /* tags need not be pointers: never dereferenced */
    CHECK(!cancel_grpc_dispatch(&ev));
    int x;
    ev.tag = &x;
    CHECK(!cancel_grpc_dispatch(&ev));
}

static void arguments_are_checked(void)
{
    errno = 0;
    CHECK(cancel_grpc_call_new(CANCEL_TOKEN_NONE, NULL, T.client.cq, "/m", NULL) == NULL);
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(cancel_grpc_call_new(CANCEL_TOKEN_NONE, T.ch, T.client.cq, NULL, NULL) == NULL);
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(cancel_grpc_server_source_new(NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == NULL);
    CHECK_EQ(errno, EINVAL);
    /* A client call has no RECV_CLOSE_ON_SERVER. */
    grpc_call *call = call_on(CANCEL_TOKEN_NONE);
    errno = 0;
    CHECK(cancel_grpc_server_source_new(call, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == NULL);
    CHECK_EQ(errno, EINVAL);
    cancel_grpc_call_unref(call);
    cancel_grpc_call_unref(NULL);
}

/* Only the status: the call is cancelled before it could reach anyone. */
static void expect_status(grpc_call *call, grpc_status_code status, const char *details)
{
    struct unary u;
    unary_run(call, payload_new(0), &u);
    CHECK_EQ(u.status, status);
    CHECK(u.reply == NULL);
    if (!strstr(u.details, details)) {
        fprintf(stderr, "details \"%s\" lack \"%s\"\n", u.details, details);
        abort();
    }
    cancel_grpc_call_unref(call);
}

static void born_cancelled_for_each_reason(void)
{
    long started = test_counter_get(&T.started);
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    expect_status(call_on(cancel_source_token(s)), GRPC_STATUS_CANCELLED, "requested");
    cancel_source_free(s);

    s = cancel_source_new();
    cancel_source_fail(s, 42, "quota");
    expect_status(call_on(cancel_source_token(s)), GRPC_STATUS_CANCELLED, "failed: quota");
    cancel_source_free(s);

    s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 0), 0);
    CHECK(cancel_token_wait(cancel_source_token(s), CANCEL_INFINITE));
    expect_status(call_on(cancel_source_token(s)), GRPC_STATUS_DEADLINE_EXCEEDED, "");
    cancel_source_free(s);
    CHECK_EQ(test_counter_get(&T.started), started); /* none reached the handler */
}

/* The client cancels from the library thread; the server hears it from its peer. */
static void cancel_reaches_the_server(void)
{
    long done = test_counter_get(&T.done), started = test_counter_get(&T.started);
    cancel_source *s = cancel_source_new();
    grpc_call *call = call_on(cancel_source_token(s));
    struct unary u;
    unary_start(call, payload_new(0), &u);
    test_counter_wait(&T.started, started + 1);
    CHECK(cancel_source_cancel_async(s));
    unary_wait(&u);
    test_counter_wait(&T.done, done + 1);
    CHECK_EQ(u.status, GRPC_STATUS_CANCELLED);
    CHECK_EQ(T.reason, CANCEL_REASON_REQUESTED);
    CHECK(T.origin_peer);
    cancel_grpc_call_unref(call);
    cancel_source_free(s);
}

/* The token's deadline (here a parent's) travels as gRPC's deadline and
 * comes back as the server token's, less the margin; a call that ends
 * normally leaves the server's source alone. */
static void deadline_travels_and_normal_end_releases(void)
{
    long done = test_counter_get(&T.done), started = test_counter_get(&T.started);
    cancel_source *parent = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(parent, 5 * S), 0);
    cancel_source *s = cancel_source_new_child(cancel_source_token(parent), CANCEL_INFINITE, NULL);
    int64_t d = cancel_token_deadline(cancel_source_token(s));
    grpc_call *call = call_on(cancel_source_token(s));
    struct unary u;
    unary_start(call, payload_new(0), &u);
    test_counter_wait(&T.started, started + 1);
    CHECK_EQ(T.busy_errno, EBUSY);
    fprintf(stderr, "   sent 5 s: the server saw %.3f ms left; its token's deadline is %+.3f ms off\n",
            T.left_at_arrival / 1e6, (T.deadline - d) / 1e6);
    CHECK(T.left_at_arrival > 4 * S && T.left_at_arrival <= 5 * S + 10 * MS);
    /* gRPC sends 5 s rounded up to 10 ms, from a cached clock; the margin
     * takes 3 ms and that step off (without the step: about d + 7 ms) */
    CHECK(T.deadline < d + 5 * MS);
    CHECK(T.deadline > d - S);
    cancel_source_cancel(T.release);
    unary_wait(&u);
    test_counter_wait(&T.done, done + 1);
    CHECK_EQ(u.status, GRPC_STATUS_OK);
    CHECK_EQ(payload_read(u.reply), 7);
    grpc_byte_buffer_destroy(u.reply);
    CHECK_EQ(T.reason, CANCEL_REASON_NONE);
    CHECK(T.released_after_end);
    cancel_source_free(T.release);
    T.release = cancel_source_new();
    cancel_grpc_call_unref(call);
    cancel_source_free(s);
    cancel_source_free(parent);
}

/* A call with a 30 s deadline on the manual clock, moved an hour away from
 * real time first (so a conversion that read the real clock would show),
 * once the server's handler works on it. */
struct manual_call {
    long done;
    cancel_source *s;
    int64_t d;         /* the client's deadline */
    grpc_call *call;
    struct unary u;
    cancel_token stok; /* the server's token, retained */
};

static void manual_call_start(struct manual_call *m)
{
    long started = test_counter_get(&T.started);
    m->done = test_counter_get(&T.done);
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    cancel_clock_advance(3600 * S);
    m->s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(m->s, 30 * S), 0);
    m->d = cancel_token_deadline(cancel_source_token(m->s));
    m->call = call_on(cancel_source_token(m->s));
    unary_start(m->call, payload_new(0), &m->u);
    test_counter_wait(&T.started, started + 1);
    /* gRPC's deadline is on real time: the 30 s left, converted */
    CHECK(T.left_at_arrival > 29 * S && T.left_at_arrival < 31 * S);
    fprintf(stderr, "   the server's token deadline is %+.3f ms off the client's\n",
            (T.deadline - m->d) / 1e6);
    /* 30 s travels rounded up to 100 ms; the margin takes that step off too */
    CHECK(T.deadline < m->d + 10 * MS);
    /* The handler frees its source once its token fired: hold a reference. */
    m->stok = cancel_token_retain(cancel_source_token(T.src));
}

static void manual_call_end(struct manual_call *m)
{
    unary_wait(&m->u);
    test_counter_wait(&T.done, m->done + 1);
    cancel_token_release(m->stok);
    cancel_clock_advance(m->d - cancel_now());
    CHECK(cancel_token_is_requested(cancel_source_token(m->s)));
    CHECK_EQ(cancel_clock_use_manual(false), 0);
    cancel_grpc_call_unref(m->call);
    cancel_source_free(m->s);
}

/* On the manual clock, the deadline sent to the server fires there when
 * the test moves the clock, not after 30 s of real time. */
static void manual_clock_drives_both_ends(void)
{
    struct manual_call m;
    manual_call_start(&m);
    cancel_clock_advance(T.deadline - cancel_now());
    CHECK(cancel_token_is_requested(m.stok)); /* when the clock has moved, it fired */
    if (T.deadline < m.d)
        CHECK(!cancel_token_is_requested(cancel_source_token(m.s)));
    manual_call_end(&m);
    CHECK_EQ(T.reason, CANCEL_REASON_TIMEOUT);
    CHECK(T.origin_peer);
    CHECK_EQ(m.u.status, GRPC_STATUS_DEADLINE_EXCEEDED);
}

/* A reset that arrives just before the server's deadline would fire (inside
 * the window) is a timeout: that is how an upstream deadline arrives. */
static void peer_cancel_near_the_deadline_is_a_timeout(void)
{
    struct manual_call m;
    manual_call_start(&m);
    cancel_clock_advance(T.deadline - MS - cancel_now());
    CHECK(!cancel_token_is_requested(m.stok)); /* its own deadline is 1 ms away */
    CHECK(cancel_source_cancel(m.s));
    manual_call_end(&m);
    CHECK_EQ(m.u.status, GRPC_STATUS_CANCELLED);
    CHECK_EQ(T.reason, CANCEL_REASON_TIMEOUT);
    CHECK(T.origin_peer);
}

/* A plain gRPC call passes through cancel_grpc_call_unref. */
static void unref_of_a_plain_call(void)
{
    grpc_slice m = grpc_slice_from_static_string("/test/plain");
    grpc_call *call = grpc_channel_create_call(T.ch, NULL, GRPC_PROPAGATE_DEFAULTS, T.client.cq, m, NULL,
                                               gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    CHECK(call != NULL);
    cancel_grpc_call_unref(call);
}

static grpc_call *unref_target;
static void unref_from_callback(void *arg)
{
    (void)arg;
    cancel_grpc_call_unref(unref_target);
}

/* A callback of the token itself releases the call: before the adapter's
 * callback (registered later, so it runs first: LIFO) and after it. */
static void unref_from_a_callback(void)
{
    for (int later = 0; later < 2; later++) {
        cancel_source *s = cancel_source_new();
        cancel_registration r;
        if (!later)
            cancel_register(cancel_source_token(s), &r, unref_from_callback, NULL);
        unref_target = call_on(cancel_source_token(s));
        if (later)
            cancel_register(cancel_source_token(s), &r, unref_from_callback, NULL);
        CHECK(cancel_source_cancel(s));
        cancel_source_free(s);
    }
}

/* The token's callback and cancel_grpc_call_unref race; the token's source
 * is freed at once, before the call. Nothing is used after free (ASan),
 * nothing races (TSan), nothing leaks. */
static void unref_races_cancel(void)
{
    uint64_t rng = 88172645463325252u;
    int n = TEST_SCALE(5000);
    for (int i = 0; i < n; i++) {
        cancel_source *s = cancel_source_new();
        grpc_call *call = call_on(cancel_source_token(s));
        if (i % 3 == 0)
            cancel_source_free(s), s = NULL; /* the adapter retains the token */
        else
            cancel_source_cancel_async(s); /* the callback runs on the library thread */
        test_jitter(&rng, 20000);
        cancel_grpc_call_unref(call);
        cancel_source_free(s);
    }
}

/* The client process: one call to the server at `port`, then it waits to
 * be killed. */
static _Noreturn void client_process(const char *port)
{
    grpc_init();
    struct queue q;
    queue_start(&q, QUEUE_NEXT);
    grpc_channel *ch = channel_to(atoi(port));
    grpc_call *call = cancel_grpc_call_new(CANCEL_TOKEN_NONE, ch, q.cq, "/test/hold", NULL);
    struct unary u;
    unary_start(call, payload_new(0), &u);
    for (;;)
        pause();
}

/* A client process dies mid-call: the server's token is cancelled by the
 * peer going away. */
static void client_process_killed(void)
{
    long done = test_counter_get(&T.done), started = test_counter_get(&T.started);
    char port[16];
    snprintf(port, sizeof port, "%d", T.srv.port);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execl("/proc/self/exe", "grpc_test", "--client", port, (char *)NULL);
        _exit(127);
    }
    test_counter_wait(&T.started, started + 1);
    int64_t t0 = cancel_now();
    CHECK(kill(pid, SIGKILL) == 0);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFSIGNALED(st));
    test_counter_wait(&T.done, done + 1);
    CHECK_EQ(T.reason, CANCEL_REASON_REQUESTED);
    CHECK(T.origin_peer);
    fprintf(stderr, "   the server's token was cancelled %.3f ms after SIGKILL\n", (T.stopped_at - t0) / 1e6);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--client") == 0)
        client_process(argv[2]);
    grpc_init();
    T.started = (test_counter)TEST_COUNTER_INIT;
    T.done = (test_counter)TEST_COUNTER_INIT;
    T.release = cancel_source_new();
    server_start(&T.srv, QUEUE_NEXT, hold, NULL);
    T.ch = channel_to(T.srv.port);
    queue_start(&T.client, QUEUE_NEXT);

    RUN(dispatch_ignores_foreign_events);
    RUN(arguments_are_checked);
    RUN(born_cancelled_for_each_reason);
    RUN(cancel_reaches_the_server);
    RUN(client_process_killed);
    RUN(deadline_travels_and_normal_end_releases);
    RUN(manual_clock_drives_both_ends);
    RUN(peer_cancel_near_the_deadline_is_a_timeout);
    RUN(unref_of_a_plain_call);
    RUN(unref_from_a_callback);
    RUN(unref_races_cancel);

    grpc_channel_destroy(T.ch);
    server_stop(&T.srv);
    queue_stop(&T.client);
    CHECK_EQ(test_counter_get(&T.client.dispatched), 0);
    cancel_source_free(T.release);
    grpc_shutdown();
    /* Nothing of ours is left running: no deadline, no callback queued. */
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    return 0;
}
