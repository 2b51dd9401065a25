/* Registration racing cancellation (pitfall 3): every registration runs
 * exactly once or reports ECANCELED having run inline, or is removed before
 * it ran; never two of these, never none. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

enum { THREADS = 3, SLOTS = 64 };

struct slot {
    cancel_registration reg;
    _Atomic int runs;
    int state; /* 0 idle, 1 registered */
};

struct round {
    cancel_source *src;
    test_gate go;
    _Atomic int stop;
    int with_reset;
};

static void *registrant(void *arg)
{
    struct round *rd = ((void **)arg)[0];
    uint64_t rng = (uintptr_t)((void **)arg)[1];
    struct slot *slots = calloc(SLOTS, sizeof *slots);
    cancel_token t = cancel_source_token(rd->src);
    test_gate_wait(&rd->go);
    int iterations = 0;
    while (!atomic_load(&rd->stop) || iterations < 50) {
        iterations++;
        struct slot *s = &slots[test_rand(&rng) % SLOTS];
        if (s->state == 0) {
            atomic_store(&s->runs, 0);
            bool invoke = test_rand(&rng) & 1;
            int rc = invoke ? cancel_register(t, &s->reg, test_count, &s->runs)
                            : cancel_register_noinvoke(t, &s->reg, test_count, &s->runs);
            if (rc == ECANCELED) {
                /* cancel_register ran it inline, exactly once; noinvoke never */
                CHECK_EQ(atomic_load(&s->runs), invoke ? 1 : 0);
                continue;
            }
            CHECK_EQ(rc, 0);
            s->state = 1;
        } else {
            bool removed = cancel_unregister(&s->reg);
            int runs = atomic_load(&s->runs);
            if (removed)
                CHECK_EQ(runs, 0);
            else if (!rd->with_reset)
                CHECK_EQ(runs, 1); /* it ran, and unregister waited for it */
            else
                CHECK(runs <= 1); /* or reset removed it */
            s->state = 0;
        }
        test_jitter(&rng, 200);
    }
    /* The source is cancelled now: what is still registered has run once. */
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].state == 1) {
            CHECK(!cancel_unregister(&slots[i].reg));
            CHECK(atomic_load(&slots[i].runs) <= 1);
            if (!rd->with_reset)
                CHECK_EQ(atomic_load(&slots[i].runs), 1);
        }
    free(slots);
    return NULL;
}

static void run_rounds(int with_reset)
{
    for (int r = 0; r < TEST_SCALE(300); r++) {
        struct round rd = {cancel_source_new(), TEST_GATE_INIT, 0, with_reset};
        pthread_t th[THREADS];
        void *args[THREADS][2];
        for (int i = 0; i < THREADS; i++) {
            args[i][0] = &rd;
            args[i][1] = (void *)(uintptr_t)(r * 131 + i * 17 + 1);
            th[i] = test_spawn(registrant, args[i]);
        }
        test_gate_open(&rd.go);
        uint64_t rng = (uint64_t)r + 1;
        if (with_reset)
            for (int k = 0; k < 20; k++) {
                test_jitter(&rng, 20000);
                CHECK(cancel_source_try_reset(rd.src));
            }
        test_jitter(&rng, 50000);
        CHECK(cancel_source_cancel(rd.src));
        atomic_store(&rd.stop, 1);
        for (int i = 0; i < THREADS; i++)
            test_join(th[i]);
        cancel_source_free(rd.src);
    }
}

static void register_unregister_cancel(void)
{
    run_rounds(0);
}

static void register_unregister_reset_cancel(void)
{
    run_rounds(1);
}

/* Unregisters from other threads while a long dispatch runs: they intrude
 * into the dispatcher's biased lock (lock.h) thousands of times. */
enum { MANY = 4000 };
struct many {
    cancel_registration regs[MANY];
    _Atomic int runs[MANY];
    int removed[MANY];
    _Atomic int next;
    test_gate go;
    cancel_source *src;
};
static void slow_count(void *arg)
{
    _Atomic int *runs = arg;
    CHECK_EQ(atomic_fetch_add(runs, 1), 0);
    for (volatile int i = 0; i < 200; i++) {
    }
}
static void *unregister_some(void *arg)
{
    struct many *m = arg;
    test_gate_wait(&m->go);
    int i;
    while ((i = atomic_fetch_add(&m->next, 3)) < MANY) /* every third, oldest first */
        m->removed[i] = cancel_unregister(&m->regs[i]);
    return NULL;
}
static void unregister_during_long_dispatch(void)
{
    struct many *m = calloc(1, sizeof *m);
    for (int round = 0; round < TEST_SCALE(50); round++) {
        memset(m, 0, sizeof *m);
        m->go = (test_gate)TEST_GATE_INIT;
        m->src = cancel_source_new();
        for (int i = 0; i < MANY; i++)
            CHECK_EQ(cancel_register(cancel_source_token(m->src), &m->regs[i], slow_count, &m->runs[i]), 0);
        pthread_t t[2] = {test_spawn(unregister_some, m), test_spawn(unregister_some, m)};
        test_gate_open(&m->go);
        CHECK(cancel_source_cancel(m->src)); /* newest first: meets the unregisters midway */
        test_join(t[0]);
        test_join(t[1]);
        int removed = 0;
        for (int i = 0; i < MANY; i++) {
            CHECK_EQ(atomic_load(&m->runs[i]), m->removed[i] ? 0 : 1);
            removed += m->removed[i];
        }
        if (round == 0)
            fprintf(stderr, "   %d of %d removed before they ran\n", removed, (MANY + 2) / 3);
        cancel_source_free(m->src);
    }
    free(m);
}

int main(void)
{
    RUN(unregister_during_long_dispatch);
    RUN(register_unregister_cancel);
    RUN(register_unregister_reset_cancel);
    return 0;
}
