/* cancel_queue under fire: producers and consumers on a small queue, each
 * call with a token that a chaos thread cancels at random and often a short
 * timeout. A push that fails is retried with a new token, so every item is
 * pushed exactly once; at the end the queue is closed and drained. Every
 * item must come out exactly once: a failed push that had enqueued would
 * show as a duplicate, a failed pop that had dequeued as a loss. A lost
 * wake-up shows as a hang (the CTest timeout is the watchdog). */
#include "../check.h"

#include <cancel.h>
#include <cancel/sync.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>

enum { PRODUCERS = 3, CONSUMERS = 3, WORKERS = PRODUCERS + CONSUMERS, CAPACITY = 5 };

struct worker {
    cancel_source *_Atomic src; /* the token of its current call */
    _Atomic int pinned;         /* threads cancelling src: do not free it meanwhile */
    uint64_t rng;
    long ok, cancelled, timedout;
};

static cancel_queue *q;
static long per_producer;
static _Atomic uint8_t *seen; /* pops per item */
static struct worker workers[WORKERS];
static _Atomic int producers_left = PRODUCERS;
static _Atomic int consumers_left = CONSUMERS;

/* A new source for the worker's next call, the old one freed once the chaos
 * thread no longer holds it. */
static cancel_token renew(struct worker *w)
{
    cancel_source *old = atomic_exchange(&w->src, NULL);
    while (atomic_load(&w->pinned))
        sched_yield();
    cancel_source_free(old);
    cancel_source *src = cancel_source_new();
    CHECK(src);
    /* Half the sources also cancel themselves soon, from the library
     * thread: cancellations at moments no other thread chooses. */
    if (test_rand(&w->rng) % 2)
        CHECK_EQ(cancel_source_cancel_after(src, (int64_t)(test_rand(&w->rng) % 200000)), 0);
    atomic_store(&w->src, src);
    return cancel_source_token(src);
}

static int64_t pick_timeout(struct worker *w)
{
    switch (test_rand(&w->rng) % 4) {
    case 0:
        return 0;
    case 1:
        return (int64_t)(test_rand(&w->rng) % 50000);
    default:
        return CANCEL_INFINITE;
    }
}

/* Workers cancel each other's current call now and then (sync or async),
 * so that cancellations come at a rate that follows the work, whatever the
 * scheduler gives the chaos thread. */
static void cancel_someone(struct worker *self)
{
    if (test_rand(&self->rng) % 8)
        return;
    struct worker *w = &workers[test_rand(&self->rng) % WORKERS];
    if (w == self)
        return;
    atomic_fetch_add(&w->pinned, 1);
    cancel_source *src = atomic_load(&w->src);
    if (src) {
        if (test_rand(&self->rng) % 2)
            cancel_source_cancel(src);
        else
            cancel_source_cancel_async(src);
    }
    atomic_fetch_sub(&w->pinned, 1);
}

static void count(struct worker *w, int e)
{
    if (e == 0)
        w->ok++;
    else if (e == ECANCELED)
        w->cancelled++;
    else if (e == ETIMEDOUT)
        w->timedout++;
}

static void *producer(void *arg)
{
    struct worker *w = arg;
    long first = (long)(w - workers) * per_producer;
    cancel_token t = renew(w);
    for (long i = first; i < first + per_producer;) {
        cancel_someone(w);
        int e = cancel_queue_push(t, q, (void *)(uintptr_t)i, pick_timeout(w));
        CHECK(e == 0 || e == ECANCELED || e == ETIMEDOUT);
        count(w, e);
        if (e == 0)
            i++;
        if (cancel_token_is_requested(t))
            t = renew(w);
    }
    atomic_fetch_sub(&producers_left, 1);
    return NULL;
}

static void *consumer(void *arg)
{
    struct worker *w = arg;
    cancel_token t = renew(w);
    for (;;) {
        cancel_someone(w);
        void *item = (void *)(uintptr_t)0xdeadbeef;
        int e = cancel_queue_pop(t, q, &item, pick_timeout(w));
        CHECK(e == 0 || e == ECANCELED || e == ETIMEDOUT || e == EPIPE);
        if (e == EPIPE)
            break;
        count(w, e);
        if (e == 0) {
            uintptr_t id = (uintptr_t)item;
            CHECK(id < (uintptr_t)(PRODUCERS * per_producer));
            CHECK_EQ(atomic_fetch_add(&seen[id], 1), 0); /* never twice */
        } else {
            CHECK(item == (void *)(uintptr_t)0xdeadbeef); /* untouched on error */
        }
        if (cancel_token_is_requested(t))
            t = renew(w);
    }
    atomic_fetch_sub(&consumers_left, 1);
    return NULL;
}

static void *chaos(void *arg)
{
    (void)arg;
    uint64_t rng = 4242;
    while (atomic_load(&consumers_left) > 0) {
        struct worker *w = &workers[test_rand(&rng) % WORKERS];
        atomic_fetch_add(&w->pinned, 1);
        cancel_source *src = atomic_load(&w->src);
        if (src) {
            if (test_rand(&rng) % 2)
                cancel_source_cancel(src);
            else
                cancel_source_cancel_async(src);
        }
        atomic_fetch_sub(&w->pinned, 1);
        test_jitter(&rng, 1000);
        if (test_rand(&rng) % 4 == 0)
            sched_yield();
    }
    return NULL;
}

/* No cancellation, no timeout: only wake-ups keep it going, so a lost one
 * is a hang, which the watchdog reports. Two producers, two consumers, tiny
 * capacities: they sleep all the time on both sides. */
struct plain {
    cancel_queue *q;
    long n;
    _Atomic long sum;
};

static void *plain_producer(void *arg)
{
    struct plain *p = arg;
    for (long i = 1; i <= p->n; i++)
        CHECK_EQ(cancel_queue_push(CANCEL_TOKEN_NONE, p->q, (void *)(uintptr_t)i, CANCEL_INFINITE), 0);
    return NULL;
}

static void *plain_consumer(void *arg)
{
    struct plain *p = arg;
    long sum = 0;
    void *item;
    int e;
    while ((e = cancel_queue_pop(CANCEL_TOKEN_NONE, p->q, &item, CANCEL_INFINITE)) == 0)
        sum += (long)(uintptr_t)item;
    CHECK_EQ(e, EPIPE);
    atomic_fetch_add(&p->sum, sum);
    return NULL;
}

static void join_or_die(pthread_t th, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    if (pthread_timedjoin_np(th, NULL, &ts) != 0) {
        fprintf(stderr, "%s: still blocked after 60 s: a lost wake-up\n", what);
        abort();
    }
}

static void no_lost_wakeups(void)
{
    for (size_t cap = 1; cap <= 4; cap++) {
        struct plain p = {.q = cancel_queue_new(cap), .n = TEST_SCALE(100000)};
        atomic_init(&p.sum, 0);
        pthread_t th[4];
        for (int i = 0; i < 2; i++) {
            th[i] = test_spawn(plain_producer, &p);
            th[2 + i] = test_spawn(plain_consumer, &p);
        }
        join_or_die(th[0], "a producer");
        join_or_die(th[1], "a producer");
        cancel_queue_close(p.q);
        join_or_die(th[2], "a consumer");
        join_or_die(th[3], "a consumer");
        CHECK_EQ(atomic_load(&p.sum), 2 * (p.n * (p.n + 1) / 2));
        cancel_queue_free(p.q);
    }
}

int main(void)
{
    fprintf(stderr, "-- no_lost_wakeups\n");
    no_lost_wakeups();
    fprintf(stderr, "-- random_cancellation\n");
    per_producer = TEST_SCALE(50000);
    long total = PRODUCERS * per_producer;
    seen = calloc((size_t)total, sizeof *seen);
    CHECK(seen);
    q = cancel_queue_new(CAPACITY);
    CHECK(q);
    pthread_t th[WORKERS + 1];
    for (int i = 0; i < WORKERS; i++) {
        workers[i].rng = 1000 + (uint64_t)i;
        th[i] = test_spawn(i < PRODUCERS ? producer : consumer, &workers[i]);
    }
    th[WORKERS] = test_spawn(chaos, NULL);
    for (int i = 0; i < PRODUCERS; i++)
        test_join(th[i]);
    cancel_queue_close(q); /* consumers drain it, then see EPIPE */
    for (int i = PRODUCERS; i <= WORKERS; i++)
        test_join(th[i]);
    CHECK_EQ(cancel_queue_len(q), 0);
    for (long i = 0; i < total; i++)
        if (atomic_load(&seen[i]) != 1) {
            fprintf(stderr, "item %ld came out %d times\n", i, atomic_load(&seen[i]));
            abort();
        }
    long ok[2] = {0}, canc[2] = {0}, tmo[2] = {0};
    for (int i = 0; i < WORKERS; i++) {
        int side = i >= PRODUCERS;
        ok[side] += workers[i].ok;
        canc[side] += workers[i].cancelled;
        tmo[side] += workers[i].timedout;
        cancel_source_free(atomic_load(&workers[i].src));
    }
    CHECK_EQ(ok[0], total);
    CHECK_EQ(ok[1], total);
    fprintf(stderr, "%ld items; pushes: %ld cancelled, %ld timed out; pops: %ld cancelled, %ld timed out\n", total,
            canc[0], tmo[0], canc[1], tmo[1]);
    cancel_queue_free(q);
    free(seen);
    return 0;
}
