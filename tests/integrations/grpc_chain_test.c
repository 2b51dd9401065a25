/*
 * A request crossing two hops over loopback, with real gRPC servers in this
 * process: client -> server A -> server B. A forwards its token to B; B's
 * handler works until its token is cancelled (or the test releases it).
 *  (a) the client cancels mid-call: B's and A's tokens are cancelled, by
 *      the peer, within milliseconds;
 *  (b) the client's token has a 300 ms deadline: B's token deadline is
 *      earlier than the client's, B's source fires TIMEOUT, the client sees
 *      DEADLINE_EXCEEDED (judged over 10 rounds in which the machine kept
 *      up);
 *  (c) many concurrent calls, half cancelled at random: every handler's
 *      work stops; the others complete; nothing leaks (ASan).
 * Each runs with A's and B's calls on both kinds of completion queue.
 */
#include "grpc_harness.h"

#define MS INT64_C(1000000)
#define MIDDLE "/test/middle"
#define PING UINT32_MAX /* a request answered at once: warms the connections up */

#define RUN_WITH(test, ka, kb)                                                          \
    do {                                                                                \
        fprintf(stderr, "-- %s\n", #test);                                              \
        test(ka, kb);                                                                   \
    } while (0)

struct probe {
    /* opened by the handlers once they read this probe's request (in) and
     * once they wrote their fields below (out) */
    test_gate a_in, a_out, b_in, b_out;
    /* written by B's handler before it counts itself started / done */
    int64_t b_arrived_at; /* when its handler started */
    int64_t b_deadline;
    int64_t b_stopped_at;
    cancel_reason b_reason;
    bool b_origin_peer;
    /* written by A's handler (and its callback) before it counts itself done */
    int64_t a_arrived_at, a_sent_at; /* its handler started; it called B */
    int64_t a_deadline;
    int64_t a_cancelled_at;
    cancel_reason a_reason;
    bool a_origin_peer;
};

static struct world {
    struct server a, b;
    grpc_channel *to_a, *to_b;
    struct queue client;
    cancel_source *release; /* cancelled to let B's uncancelled handlers reply */
    struct probe *probes;
    uint32_t n;
    test_counter b_started, b_done, a_done;
    test_counter b_lost, a_lost; /* handlers whose request never came */
    test_counter b_pings, a_pings;
    struct probe ping;
} W;

static bool is_peer(cancel_cause c)
{
    return c.origin && strcmp(c.origin, "grpc peer") == 0;
}

/* A handler whose call ended before its request came (its deadline passed
 * on the way: only where the test sets one): it answers and counts itself
 * done, for no probe. */
static void lost(grpc_call *call, cancel_source *src, test_counter *lost_count, test_counter *done)
{
    server_reply(call, NULL, status_for(cancel_source_token(src)));
    cancel_source_free(src);
    grpc_call_unref(call);
    test_counter_add(lost_count, 1);
    test_counter_add(done, 1);
}

/* B: works until its token is cancelled or the test releases it. */
static void leaf(struct incoming *in)
{
    int64_t arrived = cancel_now();
    grpc_call *call = in->call;
    cancel_source *src = cancel_grpc_server_source_new(call, in->details.deadline);
    CHECK(src != NULL);
    cancel_token tok = cancel_source_token(src);
    grpc_byte_buffer *req = server_recv(call);
    if (!req) {
        lost(call, src, &W.b_lost, &W.b_done);
        return;
    }
    uint32_t i = payload_read(req);
    grpc_byte_buffer_destroy(req);
    if (i == PING) {
        server_reply(call, payload_new(i), GRPC_STATUS_OK);
        cancel_source_free(src);
        grpc_call_unref(call);
        test_counter_add(&W.b_pings, 1);
        return;
    }
    CHECK(i < W.n);
    struct probe *p = &W.probes[i];
    p->b_arrived_at = arrived;
    p->b_deadline = cancel_token_deadline(tok);
    test_gate_open(&p->b_in);
    test_counter_add(&W.b_started, 1);

    cancel_token either[2] = {tok, cancel_source_token(W.release)};
    cancel_source *work = cancel_source_new_linked(either, 2);
    CHECK(work != NULL);
    CHECK(cancel_token_wait(cancel_source_token(work), CANCEL_INFINITE));
    cancel_source_free(work);

    p->b_stopped_at = cancel_now();
    cancel_cause c = cancel_token_cause(tok);
    p->b_reason = c.reason;
    p->b_origin_peer = is_peer(c);
    if (c.reason != CANCEL_REASON_NONE)
        server_reply(call, NULL, status_for(tok));
    else
        server_reply(call, payload_new(i), GRPC_STATUS_OK);
    cancel_source_free(src);
    grpc_call_unref(call);
    test_gate_open(&p->b_out);
    test_counter_add(&W.b_done, 1);
}

static void note_cancel(void *arg)
{
    ((struct probe *)arg)->a_cancelled_at = cancel_now();
}

/* A: forwards the request and its token to B, and B's answer back. */
static void middle(struct incoming *in)
{
    int64_t arrived = cancel_now();
    grpc_call *call = in->call;
    cancel_source *src = cancel_grpc_server_source_new(call, in->details.deadline);
    CHECK(src != NULL);
    cancel_token tok = cancel_source_token(src);
    grpc_byte_buffer *req = server_recv(call);
    if (!req) {
        lost(call, src, &W.a_lost, &W.a_done);
        return;
    }
    uint32_t i = payload_read(req);
    CHECK(i < W.n || i == PING);
    struct probe *p = i == PING ? &W.ping : &W.probes[i];
    p->a_arrived_at = arrived;
    p->a_deadline = cancel_token_deadline(tok);
    test_gate_open(&p->a_in);
    cancel_registration r;
    cancel_register(tok, &r, note_cancel, p);

    grpc_call *down = cancel_grpc_call_new(tok, W.to_b, W.a.calls.cq, "/test/leaf", NULL);
    CHECK(down != NULL);
    struct unary u;
    p->a_sent_at = cancel_now();
    unary_run(down, req, &u);

    cancel_unregister(&r); /* waits for note_cancel if it runs */
    cancel_cause c = cancel_token_cause(tok);
    p->a_reason = c.reason;
    p->a_origin_peer = is_peer(c);
    server_reply(call, u.reply, u.status);
    cancel_grpc_call_unref(down);
    cancel_source_free(src);
    grpc_call_unref(call);
    test_gate_open(&p->a_out);
    test_counter_add(i == PING ? &W.a_pings : &W.a_done, 1);
}

static void world_start(enum queue_kind ka, enum queue_kind kb, uint32_t n)
{
    fprintf(stderr, "   A on a %s queue, B on a %s queue, %u call(s)\n", queue_kind_name(ka),
            queue_kind_name(kb), n);
    W.n = n;
    W.probes = calloc(n, sizeof *W.probes);
    CHECK(W.probes != NULL);
    for (uint32_t i = 0; i <= n; i++) {
        struct probe *p = i < n ? &W.probes[i] : &W.ping;
        p->a_in = p->a_out = p->b_in = p->b_out = (test_gate)TEST_GATE_INIT;
    }
    W.b_started = (test_counter)TEST_COUNTER_INIT;
    W.b_done = (test_counter)TEST_COUNTER_INIT;
    W.a_done = (test_counter)TEST_COUNTER_INIT;
    W.b_pings = (test_counter)TEST_COUNTER_INIT;
    W.a_pings = (test_counter)TEST_COUNTER_INIT;
    W.b_lost = (test_counter)TEST_COUNTER_INIT;
    W.a_lost = (test_counter)TEST_COUNTER_INIT;
    W.release = cancel_source_new();
    server_start(&W.b, kb, leaf, NULL);
    W.to_b = channel_to(W.b.port);
    server_start(&W.a, ka, middle, NULL);
    W.to_a = channel_to(W.a.port);
    queue_start(&W.client, ka == QUEUE_NEXT ? QUEUE_CALLBACK : QUEUE_NEXT);
    /* A first call on a new channel waits for the connection, and the
     * deadline it carries grows by that wait: measure warm channels. */
    grpc_call *call = cancel_grpc_call_new(CANCEL_TOKEN_NONE, W.to_a, W.client.cq, MIDDLE, NULL);
    struct unary u;
    unary_run(call, payload_new(PING), &u);
    CHECK_EQ(u.status, GRPC_STATUS_OK);
    CHECK_EQ(payload_read(u.reply), PING);
    grpc_byte_buffer_destroy(u.reply);
    cancel_grpc_call_unref(call);
    test_counter_wait(&W.a_pings, 1);
}

static void world_stop(void)
{
    grpc_channel_destroy(W.to_a);
    server_stop(&W.a);
    grpc_channel_destroy(W.to_b);
    server_stop(&W.b);
    queue_stop(&W.client);
    /* On a next queue, the adapter's one event per server call went through
     * cancel_grpc_dispatch, and nothing else did. */
    if (W.a.calls.kind == QUEUE_NEXT)
        CHECK_EQ(test_counter_get(&W.a.calls.dispatched), test_counter_get(&W.a_done) + 1);
    if (W.b.calls.kind == QUEUE_NEXT)
        CHECK_EQ(test_counter_get(&W.b.calls.dispatched), test_counter_get(&W.b_done) + 1);
    CHECK_EQ(test_counter_get(&W.client.dispatched), 0);
    cancel_source_free(W.release);
    free(W.probes);
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
}

/* (a) */
static void client_cancels(enum queue_kind ka, enum queue_kind kb)
{
    world_start(ka, kb, 1);
    cancel_source *cs = cancel_source_new();
    grpc_call *call = cancel_grpc_call_new(cancel_source_token(cs), W.to_a, W.client.cq, MIDDLE, NULL);
    CHECK(call != NULL);
    struct unary u;
    unary_start(call, payload_new(0), &u);
    test_counter_wait(&W.b_started, 1); /* the request reached B, whose handler works */

    int64_t t0 = cancel_now();
    CHECK(cancel_source_cancel(cs));
    test_counter_wait(&W.b_done, 1);
    test_counter_wait(&W.a_done, 1);
    unary_wait(&u);

    struct probe *p = &W.probes[0];
    CHECK_EQ(u.status, GRPC_STATUS_CANCELLED);
    CHECK(u.reply == NULL);
    CHECK_EQ(p->a_reason, CANCEL_REASON_REQUESTED);
    CHECK(p->a_origin_peer);
    CHECK_EQ(p->b_reason, CANCEL_REASON_REQUESTED);
    CHECK(p->b_origin_peer);
    CHECK(p->a_cancelled_at >= t0 && p->b_stopped_at >= t0);
    fprintf(stderr, "   cancel reached A after %.3f ms, B after %.3f ms\n", (p->a_cancelled_at - t0) / 1e6,
            (p->b_stopped_at - t0) / 1e6);
    cancel_grpc_call_unref(call);
    cancel_source_free(cs);
    world_stop();
}

/* (b) gRPC carries a deadline as the time left, so it grows by the time
 * the request takes to travel; the margin covers what gRPC adds on a
 * machine that keeps up (rounding, its cached clock), not a stall of the
 * machine. So a round counts only if each hop delivered the request to its
 * handler within DELIVERY; the test runs until 10 rounds counted (at most
 * 40) and judges those.
 *
 * On a stalled machine a hop may not deliver at all: the deadline passes
 * before the request is sent (A's call to B is then born cancelled and never
 * leaves A), or while it travels. Such a handler never runs, or runs without
 * a request: so each round has its own probe, the wait for a handler to
 * receive its request is bounded (LATE, after the client's call ended: far
 * more than DELIVERY, so a round it gives up on would not count anyway), and
 * a round it gives up on does not count. A handler that did receive its
 * request always ends (every wait it makes is bounded by a deadline). */
static void deadline_shrinks(enum queue_kind ka, enum queue_kind kb)
{
    enum { ROUNDS = 10, MAX_ROUNDS = 40 };
    const int64_t DELIVERY = 2 * MS, LATE = 1000 * MS;
    world_start(ka, kb, MAX_ROUNDS);
    int counted = 0, earlier_a = 0, earlier_b = 0, b_before_a = 0, timeout_b = 0, exceeded = 0;
    for (int r = 0; r < MAX_ROUNDS && counted < ROUNDS; r++) {
        struct probe *p = &W.probes[r];
        cancel_source *cs = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(cs, 300 * MS), 0);
        int64_t d = cancel_token_deadline(cancel_source_token(cs));
        grpc_call *call = cancel_grpc_call_new(cancel_source_token(cs), W.to_a, W.client.cq, MIDDLE, NULL);
        CHECK(call != NULL);
        struct unary u;
        int64_t sent = cancel_now();
        unary_run(call, payload_new((uint32_t)r), &u);
        bool at_a = test_gate_wait_for(&p->a_in, LATE);
        if (at_a)
            test_gate_wait_bounded(&p->a_out);
        bool at_b = at_a && test_gate_wait_for(&p->b_in, LATE);
        if (at_b)
            test_gate_wait_bounded(&p->b_out);
        if (!at_b) {
            fprintf(stderr, "   round %d: the request did not reach %s (not counted); client status %d\n", r,
                    at_a ? "B" : "A", (int)u.status);
        } else {
            int64_t to_a = p->a_arrived_at - sent, to_b = p->b_arrived_at - p->a_sent_at;
            bool counts = to_a <= DELIVERY && to_b <= DELIVERY;
            fprintf(stderr,
                    "   round %d: delivered to A in %.3f ms, to B in %.3f ms%s; deadline at A %+.3f ms, "
                    "at B %+.3f ms (vs the client's); B stopped %+.3f ms, reason %s; client status %d\n",
                    r, to_a / 1e6, to_b / 1e6, counts ? "" : " (not counted)", (p->a_deadline - d) / 1e6,
                    (p->b_deadline - d) / 1e6, (p->b_stopped_at - d) / 1e6, cancel_reason_name(p->b_reason),
                    (int)u.status);
            if (counts) {
                counted++;
                earlier_a += p->a_deadline < d;
                earlier_b += p->b_deadline < d;
                b_before_a += p->b_deadline < p->a_deadline;
                timeout_b += p->b_reason == CANCEL_REASON_TIMEOUT && p->b_origin_peer;
                exceeded += u.status == GRPC_STATUS_DEADLINE_EXCEEDED;
            }
        }
        if (u.reply)
            grpc_byte_buffer_destroy(u.reply);
        cancel_grpc_call_unref(call);
        cancel_source_free(cs);
    }
    fprintf(stderr,
            "   of %d rounds counted: deadline earlier than the client's at A %d, at B %d "
            "(B's earlier than A's %d); B TIMEOUT %d; DEADLINE_EXCEEDED %d; requests lost at A %ld, "
            "at B %ld\n",
            counted, earlier_a, earlier_b, b_before_a, timeout_b, exceeded, test_counter_get(&W.a_lost),
            test_counter_get(&W.b_lost));
    CHECK_EQ(counted, ROUNDS); /* a machine this busy cannot judge it */
    CHECK(earlier_a >= 8);
    CHECK(earlier_b >= 8);
    CHECK(timeout_b >= 8);
    CHECK(exceeded >= 8);
    world_stop();
}

/* (c) */
static void many_half_cancelled(enum queue_kind ka, enum queue_kind kb)
{
    uint32_t n = TEST_SCALE(1000);
    world_start(ka, kb, n);
    cancel_source **cs = calloc(n, sizeof *cs);
    grpc_call **calls = calloc(n, sizeof *calls);
    struct unary *u = calloc(n, sizeof *u);
    uint32_t *order = calloc(n, sizeof *order);
    bool *cancelled = calloc(n, sizeof *cancelled);
    CHECK(cs && calls && u && order && cancelled);
    for (uint32_t i = 0; i < n; i++) {
        cs[i] = cancel_source_new();
        calls[i] = cancel_grpc_call_new(cancel_source_token(cs[i]), W.to_a, W.client.cq, MIDDLE, NULL);
        CHECK(calls[i] != NULL);
        unary_start(calls[i], payload_new(i), &u[i]);
        order[i] = i;
    }
    test_counter_wait(&W.b_started, n); /* every call is at work in B */

    uint64_t rng = 0x9E3779B97F4A7C15u;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = test_rand(&rng) % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (uint32_t k = 0; k < n / 2; k++) {
        cancelled[order[k]] = true;
        CHECK(cancel_source_cancel(cs[order[k]]));
    }
    test_counter_wait(&W.b_done, n / 2);
    CHECK_EQ(test_counter_get(&W.b_done), n / 2); /* only the cancelled ones stopped */
    cancel_source_cancel(W.release);
    for (uint32_t i = 0; i < n; i++)
        unary_wait(&u[i]);
    test_counter_wait(&W.b_done, n);
    test_counter_wait(&W.a_done, n);

    for (uint32_t i = 0; i < n; i++) {
        struct probe *p = &W.probes[i];
        if (cancelled[i]) {
            CHECK_EQ(u[i].status, GRPC_STATUS_CANCELLED);
            CHECK(u[i].reply == NULL);
            CHECK_EQ(p->a_reason, CANCEL_REASON_REQUESTED);
            CHECK_EQ(p->b_reason, CANCEL_REASON_REQUESTED);
            CHECK(p->a_origin_peer && p->b_origin_peer);
        } else {
            CHECK_EQ(u[i].status, GRPC_STATUS_OK);
            CHECK_EQ(payload_read(u[i].reply), i);
            grpc_byte_buffer_destroy(u[i].reply);
            CHECK_EQ(p->a_reason, CANCEL_REASON_NONE);
            CHECK_EQ(p->b_reason, CANCEL_REASON_NONE);
        }
        cancel_grpc_call_unref(calls[i]);
        cancel_source_free(cs[i]);
    }
    free(cs);
    free(calls);
    free(u);
    free(order);
    free(cancelled);
    world_stop();
}

int main(void)
{
    grpc_init();
    RUN_WITH(client_cancels, QUEUE_CALLBACK, QUEUE_NEXT);
    RUN_WITH(client_cancels, QUEUE_NEXT, QUEUE_CALLBACK);
    RUN_WITH(deadline_shrinks, QUEUE_CALLBACK, QUEUE_NEXT);
    RUN_WITH(deadline_shrinks, QUEUE_NEXT, QUEUE_CALLBACK);
    RUN_WITH(many_half_cancelled, QUEUE_CALLBACK, QUEUE_NEXT);
    RUN_WITH(many_half_cancelled, QUEUE_NEXT, QUEUE_CALLBACK);
    grpc_shutdown();
    /* Nothing of ours is left running: no deadline, no callback queued. */
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    return 0;
}
