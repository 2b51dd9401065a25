/*
 * What the gRPC tests share: completion queues of both kinds behind one
 * interface, real servers on 127.0.0.1 with a thread per incoming call, and
 * byte-buffer payloads (no protobuf).
 *
 * Every batch of the tests is tagged with a `struct op` (a functor that
 * opens a gate), so it works unchanged on a callback queue (gRPC runs the
 * functor) and on a next queue (the queue's poller passes each event to
 * cancel_grpc_dispatch first, then runs the functor itself).
 */
#ifndef CANCEL_TEST_GRPC_HARNESS_H
#define CANCEL_TEST_GRPC_HARNESS_H

#include "check.h"

#include <cancel.h>
#include <cancel/grpc.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <limits.h>

enum queue_kind { QUEUE_NEXT, QUEUE_CALLBACK };

static inline const char *queue_kind_name(enum queue_kind k)
{
    return k == QUEUE_NEXT ? "next" : "callback";
}

/* Every wait of these tests is bounded: a wait that outlasts this fails with
 * a message naming what it waited for, where a hang would only show CTest's
 * timeout. Far above anything a working call needs, even on a busy machine,
 * and below the 120 s a test may take. */
#define TEST_WAIT_LIMIT_NS (60 * INT64_C(1000000000))

static inline struct timespec test_deadline_after(int64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + ns;
    ts.tv_sec = (time_t)(t / 1000000000);
    ts.tv_nsec = (long)(t % 1000000000);
    return ts;
}

static inline void test_wait_failed(const char *what, const char *file, int line)
{
    fprintf(stderr, "%s:%d: waited %d s for %s: giving up\n", file, line,
            (int)(TEST_WAIT_LIMIT_NS / 1000000000), what);
    abort();
}

/* Waits for a gate, failing loudly past TEST_WAIT_LIMIT_NS. */
#define test_gate_wait_bounded(g)                                                       \
    do {                                                                                \
        if (!test_gate_wait_for((g), TEST_WAIT_LIMIT_NS))                               \
            test_wait_failed(#g, __FILE__, __LINE__);                                   \
    } while (0)

/* A counter threads can wait on. */
typedef struct test_counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long n;
} test_counter;
#define TEST_COUNTER_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0}
static inline void test_counter_add(test_counter *c, long d)
{
    pthread_mutex_lock(&c->mu);
    c->n += d;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}
static inline long test_counter_get(test_counter *c)
{
    pthread_mutex_lock(&c->mu);
    long n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}
/* Waits at most `ns` for the counter to reach [lo, hi]; whether it did. */
static inline bool test_counter_wait_for(test_counter *c, long lo, long hi, int64_t ns)
{
    struct timespec ts = test_deadline_after(ns);
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while ((c->n < lo || c->n > hi) && rc == 0)
        rc = pthread_cond_clockwait(&c->cv, &c->mu, CLOCK_MONOTONIC, &ts);
    bool in = c->n >= lo && c->n <= hi;
    pthread_mutex_unlock(&c->mu);
    return in;
}
/* Waits for the counter to reach `at_least`, failing loudly past
 * TEST_WAIT_LIMIT_NS. */
#define test_counter_wait(c, at_least)                                                  \
    do {                                                                                \
        if (!test_counter_wait_for((c), (at_least), LONG_MAX, TEST_WAIT_LIMIT_NS))      \
            test_wait_failed(#c " >= " #at_least, __FILE__, __LINE__);                  \
    } while (0)

/* ---- one batch ---- */

/* gRPC is not built for ThreadSanitizer, so the order it gives between
 * starting a batch and running its tag on another thread is invisible to the
 * tool: `published` states it again (release before the batch starts,
 * acquire before the tag is used). */
struct op {
    grpc_completion_queue_functor functor; /* first: the tag */
    _Atomic bool published;
    test_gate done;
    int ok;
};
static inline void op_run(grpc_completion_queue_functor *f, int ok)
{
    struct op *o = (struct op *)f;
    (void)atomic_load_explicit(&o->published, memory_order_acquire);
    o->ok = ok; /* published by the gate's mutex */
    test_gate_open(&o->done);
}
static inline void *op_tag(struct op *o)
{
    atomic_store_explicit(&o->published, true, memory_order_release);
    return &o->functor;
}
static inline void op_init(struct op *o)
{
    memset(o, 0, sizeof *o);
    o->functor.functor_run = op_run;
    o->done = (test_gate)TEST_GATE_INIT;
}
/* Starts a batch and waits for it; returns its success flag. */
static inline int op_batch(grpc_call *call, const grpc_op *ops, size_t n)
{
    struct op o;
    op_init(&o);
    grpc_call_error rc = grpc_call_start_batch(call, ops, n, op_tag(&o), NULL);
    if (rc != GRPC_CALL_OK) {
        fprintf(stderr, "grpc_call_start_batch: %s\n", grpc_call_error_to_string(rc));
        abort();
    }
    test_gate_wait_bounded(&o.done);
    return o.ok;
}

/* ---- a completion queue of either kind ---- */

struct queue {
    enum queue_kind kind;
    grpc_completion_queue *cq;
    pthread_t poller;            /* QUEUE_NEXT */
    struct op shutdown;          /* QUEUE_CALLBACK: gRPC runs it when shut down */
    test_counter dispatched;     /* events cancel_grpc_dispatch took */
};

static inline void *queue_poll(void *arg)
{
    struct queue *q = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(q->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        CHECK(ev.type == GRPC_OP_COMPLETE);
        if (cancel_grpc_dispatch(&ev)) {
            test_counter_add(&q->dispatched, 1);
            continue;
        }
        op_run(ev.tag, ev.success); /* the tests' tags are all struct op */
    }
}

static inline void queue_start(struct queue *q, enum queue_kind kind)
{
    q->kind = kind;
    q->dispatched = (test_counter)TEST_COUNTER_INIT;
    if (kind == QUEUE_NEXT) {
        q->cq = grpc_completion_queue_create_for_next(NULL);
        q->poller = test_spawn(queue_poll, q);
    } else {
        op_init(&q->shutdown);
        q->cq = grpc_completion_queue_create_for_callback(op_tag(&q->shutdown), NULL);
    }
}

static inline void queue_stop(struct queue *q)
{
    grpc_completion_queue_shutdown(q->cq);
    if (q->kind == QUEUE_NEXT)
        test_join(q->poller);
    else
        test_gate_wait_bounded(&q->shutdown.done);
    grpc_completion_queue_destroy(q->cq);
}

/* ---- payloads: a 32-bit index, and nothing else ---- */

static inline grpc_byte_buffer *payload_new(uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)b, sizeof b);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static inline uint32_t payload_read(grpc_byte_buffer *bb)
{
    CHECK(bb != NULL);
    grpc_byte_buffer_reader r;
    CHECK(grpc_byte_buffer_reader_init(&r, bb));
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    CHECK_EQ(GRPC_SLICE_LENGTH(s), 4);
    const unsigned char *p = GRPC_SLICE_START_PTR(s);
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    grpc_slice_unref(s);
    return v;
}

/* ---- a unary client call: everything in one batch ---- */

struct unary {
    struct op op;
    grpc_byte_buffer *req;
    grpc_metadata_array im, tm;
    grpc_slice details_slice;
    /* results, once unary_wait returned */
    grpc_status_code status;
    char details[128];
    grpc_byte_buffer *reply; /* NULL unless the server sent one; the caller's */
};

/* Starts the whole call with request `req` (consumed). */
static inline void unary_start(grpc_call *call, grpc_byte_buffer *req, struct unary *u)
{
    memset(u, 0, sizeof *u);
    op_init(&u->op);
    u->req = req;
    grpc_metadata_array_init(&u->im);
    grpc_metadata_array_init(&u->tm);
    u->details_slice = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->im;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->reply;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->tm;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details_slice;
    CHECK_EQ(grpc_call_start_batch(call, ops, 6, op_tag(&u->op), NULL), GRPC_CALL_OK);
}

/* Waits for the call's status. */
static inline void unary_wait(struct unary *u)
{
    test_gate_wait_bounded(&u->op.done);
    CHECK(u->op.ok);
    size_t n = GRPC_SLICE_LENGTH(u->details_slice);
    if (n >= sizeof u->details)
        n = sizeof u->details - 1;
    memcpy(u->details, GRPC_SLICE_START_PTR(u->details_slice), n);
    u->details[n] = 0;
    grpc_slice_unref(u->details_slice);
    grpc_metadata_array_destroy(&u->im);
    grpc_metadata_array_destroy(&u->tm);
    grpc_byte_buffer_destroy(u->req);
}

static inline void unary_run(grpc_call *call, grpc_byte_buffer *req, struct unary *u)
{
    unary_start(call, req, u);
    unary_wait(u);
}

/* ---- a server on 127.0.0.1, a thread per incoming call ---- */

struct server;
struct incoming {
    struct server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
};
typedef void handler_fn(struct incoming *in);

struct server {
    grpc_server *srv;
    int port;
    grpc_completion_queue *notify; /* a next queue, polled by `acceptor` */
    struct queue calls;            /* the calls' batches (and the handlers' outgoing calls) */
    handler_fn *handle;
    void *ctx;                     /* the handlers' */
    pthread_t acceptor;
    test_counter live;             /* handler threads running */
};

static inline void *handler_main(void *arg)
{
    struct incoming *in = arg;
    struct server *s = in->srv;
    s->handle(in);
    grpc_call_details_destroy(&in->details);
    grpc_metadata_array_destroy(&in->md);
    free(in);
    test_counter_add(&s->live, -1);
    return NULL;
}

static inline struct incoming *server_request(struct server *s)
{
    struct incoming *in = calloc(1, sizeof *in);
    CHECK(in != NULL);
    in->srv = s;
    grpc_call_details_init(&in->details);
    grpc_metadata_array_init(&in->md);
    CHECK_EQ(grpc_server_request_call(s->srv, &in->call, &in->details, &in->md, s->calls.cq, s->notify, in),
             GRPC_CALL_OK);
    return in;
}

static inline void *server_accept(void *arg)
{
    struct server *s = arg;
    struct incoming *pending = server_request(s);
    bool shut = false;
    while (pending || !shut) {
        grpc_event ev = grpc_completion_queue_next(s->notify, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        CHECK(ev.type == GRPC_OP_COMPLETE);
        if (ev.tag == (void *)s) { /* the shutdown notification */
            shut = true;
            continue;
        }
        struct incoming *in = ev.tag;
        CHECK(in == pending);
        pending = NULL;
        if (!ev.success) { /* shutting down: no call */
            grpc_call_details_destroy(&in->details);
            grpc_metadata_array_destroy(&in->md);
            free(in);
            continue;
        }
        if (!shut)
            pending = server_request(s);
        test_counter_add(&s->live, 1);
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 256 * 1024);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        CHECK(pthread_create(&t, &a, handler_main, in) == 0);
        pthread_attr_destroy(&a);
    }
    return NULL;
}

static inline void server_start(struct server *s, enum queue_kind kind, handler_fn *handle, void *ctx)
{
    memset(s, 0, sizeof *s);
    s->handle = handle;
    s->ctx = ctx;
    s->live = (test_counter)TEST_COUNTER_INIT;
    s->srv = grpc_server_create(NULL, NULL);
    s->notify = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->srv, s->notify, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->srv, "127.0.0.1:0", creds);
    grpc_server_credentials_release(creds);
    CHECK(s->port > 0);
    queue_start(&s->calls, kind);
    grpc_server_start(s->srv);
    s->acceptor = test_spawn(server_accept, s);
}

/* Shuts the server down: cancels the calls still open, waits for every
 * handler thread, then tears down its queues. */
static inline void server_stop(struct server *s)
{
    grpc_server_shutdown_and_notify(s->srv, s->notify, s);
    grpc_server_cancel_all_calls(s->srv);
    test_join(s->acceptor);
    if (!test_counter_wait_for(&s->live, LONG_MIN, 0, TEST_WAIT_LIMIT_NS))
        test_wait_failed("the server's handler threads to end", __FILE__, __LINE__);
    grpc_server_destroy(s->srv);
    grpc_completion_queue_shutdown(s->notify);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->notify, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(s->notify);
    queue_stop(&s->calls);
}

static inline grpc_channel *channel_to(int port)
{
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    CHECK(ch != NULL);
    return ch;
}

/* ---- handler steps ---- */

/* Sends initial metadata and receives the request; returns its payload, or
 * NULL if the call already failed. */
static inline grpc_byte_buffer *server_recv(grpc_call *call)
{
    grpc_byte_buffer *req = NULL;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &req;
    if (!op_batch(call, ops, 2) && req) {
        grpc_byte_buffer_destroy(req);
        req = NULL;
    }
    return req;
}

/* Sends the reply (may be NULL; consumed) and the status. */
static inline void server_reply(grpc_call *call, grpc_byte_buffer *reply, grpc_status_code status)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (reply) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n++].data.send_status_from_server.status = status;
    (void)op_batch(call, ops, n); /* fails harmlessly if the call is already over */
    if (reply)
        grpc_byte_buffer_destroy(reply);
}

static inline grpc_status_code status_for(cancel_token tok)
{
    return cancel_token_cause(tok).reason == CANCEL_REASON_TIMEOUT ? GRPC_STATUS_DEADLINE_EXCEEDED
                                                                   : GRPC_STATUS_CANCELLED;
}

#endif
