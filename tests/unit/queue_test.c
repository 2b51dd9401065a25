/* cancel_queue: order, capacity, close, cancellation before and while
 * blocked on either side, timeouts (real and manual clock), bad input. */
#include "../check.h"
#include "sync_probe.h"

#include <cancel.h>
#include <cancel/sync.h>
#include <errno.h>
#include <stdint.h>

#define ITEM(i) ((void *)(uintptr_t)(i))
#define NONE CANCEL_TOKEN_NONE

static void create(void)
{
    errno = 0;
    CHECK(cancel_queue_new(0) == NULL);
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(cancel_queue_new(SIZE_MAX) == NULL);
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(cancel_queue_new(SIZE_MAX / 64) == NULL); /* not representable or not allocatable */
    CHECK(errno == EINVAL || errno == ENOMEM);
    cancel_queue *q = cancel_queue_new(5);
    CHECK(q);
    CHECK_EQ(cancel_queue_capacity(q), 5);
    CHECK_EQ(cancel_queue_len(q), 0);
    cancel_queue_free(q);
    cancel_queue_free(NULL);
    CHECK_EQ(cancel_queue_len(NULL), 0);
    CHECK_EQ(cancel_queue_capacity(NULL), 0);
}

/* FIFO through many laps, NULL items included, at capacities that are and
 * are not powers of two. */
static void fifo_and_capacity(void)
{
    size_t caps[] = {1, 2, 3, 7, 8, 1000};
    for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
        size_t cap = caps[c];
        cancel_queue *q = cancel_queue_new(cap);
        uintptr_t next_in = 0, next_out = 0;
        for (int lap = 0; lap < 5; lap++) {
            for (size_t i = 0; i < cap; i++) {
                CHECK_EQ(cancel_queue_push(NONE, q, ITEM(next_in), 0), 0); /* item 0 is NULL */
                next_in++;
                CHECK_EQ(cancel_queue_len(q), i + 1);
            }
            /* Full: exactly `cap` items fit. */
            CHECK_EQ(cancel_queue_push(NONE, q, ITEM(99), 0), ETIMEDOUT);
            CHECK_EQ(cancel_queue_len(q), cap);
            size_t take = lap % 2 ? cap : cap / 2 + 1;
            for (size_t i = 0; i < take; i++) {
                void *it = ITEM(12345);
                CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), 0);
                CHECK(it == ITEM(next_out));
                next_out++;
            }
            while (cancel_queue_len(q) < cap) {
                CHECK_EQ(cancel_queue_push(NONE, q, ITEM(next_in), CANCEL_INFINITE), 0);
                next_in++;
            }
            while (cancel_queue_len(q) > 0) {
                void *it;
                CHECK_EQ(cancel_queue_pop(NONE, q, &it, CANCEL_INFINITE), 0);
                CHECK(it == ITEM(next_out));
                next_out++;
            }
        }
        void *it = ITEM(7);
        CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), ETIMEDOUT); /* try once */
        CHECK(it == ITEM(7)); /* untouched on error */
        cancel_queue_free(q);
    }
}

static void close_semantics(void)
{
    cancel_queue *q = cancel_queue_new(4);
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    CHECK_EQ(cancel_queue_push(NONE, q, NULL, 0), 0);
    cancel_queue_close(q);
    cancel_queue_close(q); /* idempotent */
    cancel_queue_close(NULL);
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(3), 0), EPIPE); /* room, but closed */
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(3), CANCEL_INFINITE), EPIPE);
    CHECK_EQ(cancel_queue_len(q), 2);
    void *it;
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, CANCEL_INFINITE), 0); /* drains first */
    CHECK(it == ITEM(1));
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), 0);
    CHECK(it == NULL);
    it = ITEM(5);
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), EPIPE);
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, CANCEL_INFINITE), EPIPE);
    CHECK(it == ITEM(5));
    /* A cancelled token wins over a closed queue. */
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    CHECK_EQ(cancel_queue_push(cancel_source_token(src), q, ITEM(1), 0), ECANCELED);
    CHECK_EQ(cancel_queue_pop(cancel_source_token(src), q, &it, 0), ECANCELED);
    cancel_source_free(src);
    cancel_queue_free(q);
}

static void bad_input(void)
{
    cancel_queue *q = cancel_queue_new(2);
    void *it;
    errno = 55;
    CHECK_EQ(cancel_queue_push(NONE, NULL, ITEM(1), 0), EINVAL);
    CHECK_EQ(cancel_queue_pop(NONE, NULL, &it, 0), EINVAL);
    CHECK_EQ(cancel_queue_pop(NONE, q, NULL, 0), EINVAL);
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), -3), EINVAL);
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, INT64_MIN), EINVAL);
    CHECK_EQ(errno, 55);
    CHECK_EQ(cancel_queue_len(q), 0); /* a refused push enqueued nothing */
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, -3), EINVAL);
    CHECK_EQ(cancel_queue_len(q), 1); /* a refused pop dequeued nothing */
    cancel_queue_free(q);
}

static void cancelled_before(void)
{
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_token t = cancel_source_token(src);
    cancel_queue *q = cancel_queue_new(2);
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    void *it = ITEM(9);
    CHECK_EQ(cancel_queue_pop(t, q, &it, CANCEL_INFINITE), ECANCELED);
    CHECK(it == ITEM(9));
    CHECK_EQ(cancel_queue_push(t, q, ITEM(2), CANCEL_INFINITE), ECANCELED);
    CHECK_EQ(cancel_queue_len(q), 1); /* nothing moved */
    CHECK_EQ(cancel_queue_push(t, NULL, ITEM(2), -9), ECANCELED); /* wins over bad arguments */
    CHECK_EQ(cancel_queue_pop(t, NULL, NULL, -9), ECANCELED);
    cancel_queue_free(q);
    cancel_source_free(src);
}

static void timeout_real_clock(void)
{
    cancel_source *src = cancel_source_new();
    cancel_queue *q = cancel_queue_new(1);
    void *it;
    int64_t t0 = test_now_ns();
    CHECK_EQ(cancel_queue_pop(cancel_source_token(src), q, &it, 20 * 1000 * 1000), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000); /* never early */
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    t0 = test_now_ns();
    CHECK_EQ(cancel_queue_push(cancel_source_token(src), q, ITEM(2), 20 * 1000 * 1000), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000);
    CHECK_EQ(cancel_queue_len(q), 1);
    cancel_queue_free(q);
    cancel_source_free(src);
}

struct op {
    bool push;
    cancel_token tok;
    cancel_queue *q;
    void *item;
    int64_t timeout;
    probe p;
    _Atomic int result;
};

static void *op_thread(void *arg)
{
    struct op *o = arg;
    probe_arm(&o->p);
    int e = o->push ? cancel_queue_push(o->tok, o->q, o->item, o->timeout)
                    : cancel_queue_pop(o->tok, o->q, &o->item, o->timeout);
    atomic_store(&o->result, e);
    return NULL;
}

/* Starts a push or pop on another thread and returns once it sleeps. */
static pthread_t start_op(struct op *o, bool push, cancel_token tok, cancel_queue *q, void *item, int64_t timeout)
{
    *o = (struct op){.push = push, .tok = tok, .q = q, .item = item, .timeout = timeout};
    atomic_init(&o->p.word, NULL);
    atomic_init(&o->result, -1);
    pthread_t th = test_spawn(op_thread, o);
    probe_wait_blocked(&o->p, push ? "cancel_queue_push" : "cancel_queue_pop");
    return th;
}

static void blocked_pop_and_push(void)
{
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_source_token(src);
    cancel_queue *q = cancel_queue_new(1);
    struct op o;
    /* A push wakes a blocked pop. */
    pthread_t th = start_op(&o, false, t, q, ITEM(77), CANCEL_INFINITE);
    CHECK_EQ(cancel_queue_push(NONE, q, NULL, 0), 0);
    test_join(th);
    CHECK_EQ(atomic_load(&o.result), 0);
    CHECK(o.item == NULL);
    /* A pop wakes a blocked push. */
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    th = start_op(&o, true, t, q, ITEM(2), CANCEL_INFINITE);
    void *it;
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), 0);
    CHECK(it == ITEM(1));
    test_join(th);
    CHECK_EQ(atomic_load(&o.result), 0);
    CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), 0);
    CHECK(it == ITEM(2));
    /* Nothing is left registered on the token after the waits. */
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 0);
    cancel_queue_free(q);
    cancel_source_free(src);
}

static void cancel_while_blocked(void)
{
    cancel_queue *q = cancel_queue_new(1);
    for (int async = 0; async < 2; async++) {
        /* pop on an empty queue */
        cancel_source *src = cancel_source_new();
        struct op o;
        pthread_t th = start_op(&o, false, cancel_source_token(src), q, ITEM(5), CANCEL_INFINITE);
        async ? cancel_source_cancel_async(src) : cancel_source_cancel(src);
        test_join(th);
        CHECK_EQ(atomic_load(&o.result), ECANCELED);
        CHECK(o.item == ITEM(5));
        cancel_source_free(src);
        /* push on a full queue */
        CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
        src = cancel_source_new();
        th = start_op(&o, true, cancel_source_token(src), q, ITEM(2), CANCEL_INFINITE);
        async ? cancel_source_cancel_async(src) : cancel_source_cancel(src);
        test_join(th);
        CHECK_EQ(atomic_load(&o.result), ECANCELED);
        CHECK_EQ(cancel_queue_len(q), 1); /* not enqueued */
        void *it;
        CHECK_EQ(cancel_queue_pop(NONE, q, &it, 0), 0);
        CHECK(it == ITEM(1));
        cancel_source_free(src);
    }
    cancel_queue_free(q);
}

static void close_wakes_waiters(void)
{
    cancel_queue *empty = cancel_queue_new(1), *full = cancel_queue_new(1);
    CHECK_EQ(cancel_queue_push(NONE, full, ITEM(1), 0), 0);
    struct op pops[3], push;
    pthread_t th[4];
    for (int i = 0; i < 3; i++)
        th[i] = start_op(&pops[i], false, NONE, empty, ITEM(8), CANCEL_INFINITE);
    th[3] = start_op(&push, true, NONE, full, ITEM(2), CANCEL_INFINITE);
    cancel_queue_close(empty);
    cancel_queue_close(full);
    for (int i = 0; i < 4; i++)
        test_join(th[i]);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(atomic_load(&pops[i].result), EPIPE);
        CHECK(pops[i].item == ITEM(8));
    }
    CHECK_EQ(atomic_load(&push.result), EPIPE);
    void *it;
    CHECK_EQ(cancel_queue_pop(NONE, full, &it, 0), 0); /* the item before the close is still there */
    CHECK(it == ITEM(1));
    CHECK_EQ(cancel_queue_pop(NONE, full, &it, 0), EPIPE);
    cancel_queue_free(empty);
    cancel_queue_free(full);
}

/* Each push wakes a sleeping consumer: four sleep, four items come, all
 * four return with one each. */
static void every_sleeper_gets_its_item(void)
{
    cancel_queue *q = cancel_queue_new(2);
    struct op pops[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        th[i] = start_op(&pops[i], false, NONE, q, NULL, CANCEL_INFINITE);
    for (uintptr_t i = 1; i <= 4; i++)
        CHECK_EQ(cancel_queue_push(NONE, q, ITEM(i), CANCEL_INFINITE), 0);
    uintptr_t seen = 0;
    for (int i = 0; i < 4; i++) {
        test_join(th[i]);
        CHECK_EQ(atomic_load(&pops[i].result), 0);
        seen |= (uintptr_t)1 << (uintptr_t)pops[i].item;
    }
    CHECK_EQ(seen, 0x1e);
    cancel_queue_free(q);
}

static void source_freed_mid_wait(void)
{
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(src));
    cancel_queue *q = cancel_queue_new(1);
    struct op o;
    pthread_t th = start_op(&o, false, t, q, NULL, CANCEL_INFINITE);
    cancel_source_free(src);
    CHECK_EQ(atomic_load(&o.result), -1);
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(3), 0), 0);
    test_join(th);
    CHECK_EQ(atomic_load(&o.result), 0);
    CHECK(o.item == ITEM(3));
    cancel_token_release(t);
    cancel_queue_free(q);
}

static void timeout_manual_clock(void)
{
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    cancel_source *src = cancel_source_new();
    cancel_queue *q = cancel_queue_new(1);
    struct op o;
    pthread_t th = start_op(&o, false, cancel_source_token(src), q, ITEM(4), 1000 * 1000 * 1000);
    cancel_clock_advance(999 * 1000 * 1000);
    CHECK_EQ(atomic_load(&o.result), -1);
    cancel_clock_advance(1000 * 1000);
    test_join(th);
    CHECK_EQ(atomic_load(&o.result), ETIMEDOUT);
    CHECK(o.item == ITEM(4));
    CHECK_EQ(cancel_queue_push(NONE, q, ITEM(1), 0), 0);
    th = start_op(&o, true, NONE, q, ITEM(2), 50);
    cancel_clock_advance(50);
    test_join(th);
    CHECK_EQ(atomic_load(&o.result), ETIMEDOUT);
    CHECK_EQ(cancel_queue_len(q), 1);
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    CHECK_EQ(st.deadlines_pending, 0); /* the waits left no timer behind */
    cancel_queue_free(q);
    cancel_source_free(src);
    CHECK_EQ(cancel_clock_use_manual(false), 0);
}

int main(void)
{
    RUN(create);
    RUN(fifo_and_capacity);
    RUN(close_semantics);
    RUN(bad_input);
    RUN(cancelled_before);
    RUN(timeout_real_clock);
    RUN(blocked_pop_and_push);
    RUN(cancel_while_blocked);
    RUN(close_wakes_waiters);
    RUN(every_sleeper_gets_its_item);
    RUN(source_freed_mid_wait);
    RUN(timeout_manual_clock);
    return 0;
}
