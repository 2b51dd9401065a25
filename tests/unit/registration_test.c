/* Callback registration, dispatch order, and the unregister contract. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

#include "source.h" /* white box: ST_UNREG_WAITERS says an unregister sleeps */

/* A positive signal that some thread sleeps in cancel_unregister waiting for
 * a callback of `src` (the bit is set under the source lock just before
 * sleeping): what tests wait for instead of sleeping and hoping. */
static bool unregister_sleeps_on(void *src)
{
    return atomic_load(&((struct cancel_source *)src)->head.cancel__word) & ST_UNREG_WAITERS;
}
static void wait_unregister_sleeps_on(cancel_source *src)
{
    CHECK(test_wait_until(unregister_sleeps_on, src, 20LL * 1000000000));
}


static void einval_for_bad_arguments(void)
{
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), NULL, test_never, NULL), EINVAL);
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, NULL, NULL), EINVAL);
    CHECK_EQ(cancel_register_noinvoke(cancel_source_token(s), NULL, test_never, NULL), EINVAL);
    errno = 0;
    CHECK(!cancel_unregister(NULL));
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(!cancel_unregister_nowait(NULL));
    CHECK_EQ(errno, EINVAL);
    cancel_registration zero = CANCEL_REGISTRATION_INIT;
    CHECK(!cancel_unregister(&zero)); /* never registered: harmless */
    cancel_source_free(s);
}

static _Thread_local int on_this_thread;
static void note_thread(void *arg)
{
    *(int *)arg = on_this_thread;
}

static void callback_runs_once_on_canceller(void)
{
    cancel_source *s = cancel_source_new();
    _Atomic int n = 0;
    int where = 0;
    cancel_registration r1, r2;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r1, test_count, &n), 0);
    CHECK_EQ(cancel_register(cancel_source_token(s), &r2, note_thread, &where), 0);
    on_this_thread = 7;
    CHECK(cancel_source_cancel(s));
    CHECK_EQ(atomic_load(&n), 1); /* ran before cancel returned */
    CHECK_EQ(where, 7);
    CHECK(!cancel_source_cancel(s));
    CHECK_EQ(atomic_load(&n), 1);
    CHECK(!cancel_unregister(&r1)); /* ran: false */
    cancel_source_free(s);
}

static void register_on_cancelled_runs_inline(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    _Atomic int n = 0;
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &n), ECANCELED);
    CHECK_EQ(atomic_load(&n), 1);
    CHECK(!cancel_unregister(&r));
    CHECK_EQ(cancel_register_noinvoke(cancel_source_token(s), &r, test_count, &n), ECANCELED);
    CHECK_EQ(atomic_load(&n), 1);
    cancel_source_free(s);
}

/* Pitfall: inline invoke under the caller's lock. noinvoke must not call fn. */
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static void takes_lock(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&held);
    pthread_mutex_unlock(&held);
}
static void noinvoke_can_register_under_callers_lock(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    cancel_registration r;
    pthread_mutex_lock(&held);
    CHECK_EQ(cancel_register_noinvoke(cancel_source_token(s), &r, takes_lock, NULL), ECANCELED);
    pthread_mutex_unlock(&held);
    cancel_source_free(s);
}

static void none_token_registration_is_inert(void)
{
    cancel_registration r;
    CHECK_EQ(cancel_register(CANCEL_TOKEN_NONE, &r, test_never, NULL), 0);
    CHECK(!cancel_unregister(&r));
    CHECK(!cancel_unregister_nowait(&r));
}

static int order_log[8], order_len;
static void log_order(void *arg)
{
    order_log[order_len++] = (int)(intptr_t)arg;
}
static void callbacks_run_newest_first(void)
{
    cancel_source *s = cancel_source_new();
    cancel_registration r[5];
    for (intptr_t i = 0; i < 5; i++)
        CHECK_EQ(cancel_register(cancel_source_token(s), &r[i], log_order, (void *)i), 0);
    CHECK(cancel_unregister(&r[2]));
    order_len = 0;
    cancel_source_cancel(s);
    CHECK_EQ(order_len, 4);
    CHECK_EQ(order_log[0], 4);
    CHECK_EQ(order_log[1], 3);
    CHECK_EQ(order_log[2], 1);
    CHECK_EQ(order_log[3], 0);
    cancel_source_free(s);
}

/* The unregister result in each state. */
static void unregister_result_table(void)
{
    cancel_registration r;
    /* not fired: removed, never runs */
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    CHECK(cancel_unregister(&r));
    /* already removed */
    CHECK(!cancel_unregister(&r));
    CHECK(!cancel_unregister_nowait(&r));
    cancel_source_cancel(s);
    cancel_source_free(s);

    /* nowait on a registered callback */
    s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    CHECK(cancel_unregister_nowait(&r));
    CHECK(!cancel_unregister(&r));
    cancel_source_cancel(s);
    cancel_source_free(s);

    /* finished */
    _Atomic int n = 0;
    s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &n), 0);
    cancel_source_cancel(s);
    CHECK(!cancel_unregister(&r));
    CHECK(!cancel_unregister(&r));
    CHECK_EQ(atomic_load(&n), 1);
    cancel_source_free(s);

    /* source freed uncancelled */
    s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    cancel_source_free(s);
    CHECK(!cancel_unregister(&r));
    CHECK(!cancel_unregister_nowait(&r));

    /* finished, then the source freed: with a retained token, a late
     * unregister stays valid and harmless */
    s = cancel_source_new();
    cancel_token kept = cancel_token_retain(cancel_source_token(s));
    CHECK_EQ(cancel_register(kept, &r, test_count, &n), 0);
    cancel_source_cancel(s);
    CHECK(!cancel_unregister_nowait(&r)); /* after this, storage is ours */
    cancel_source_free(s);
    CHECK(!cancel_unregister(&r));
    cancel_token_release(kept);
}

/* Running on another thread: unregister waits; nowait does not. */
struct blocker {
    test_gate started, finish;
    _Atomic int finished;
    cancel_source *src;
    cancel_registration reg;
};
static void blocking_cb(void *arg)
{
    struct blocker *b = arg;
    test_gate_open(&b->started);
    test_gate_wait(&b->finish);
    atomic_store(&b->finished, 1);
}
static void *cancel_thread(void *arg)
{
    cancel_source_cancel(((struct blocker *)arg)->src);
    return NULL;
}
static void *opener_thread(void *arg)
{
    struct blocker *b = arg;
    wait_unregister_sleeps_on(b->src); /* the unregister under test is waiting */
    test_gate_open(&b->finish);
    return NULL;
}
static void unregister_waits_for_running_callback(void)
{
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}};
    CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, blocking_cb, &b), 0);
    pthread_t c = test_spawn(cancel_thread, &b);
    test_gate_wait(&b.started);
    pthread_t o = test_spawn(opener_thread, &b);
    CHECK(!cancel_unregister(&b.reg));
    CHECK_EQ(atomic_load(&b.finished), 1); /* it waited for the callback */
    test_join(o);
    test_join(c);
    cancel_source_free(b.src);
}
static void nowait_does_not_wait(void)
{
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}};
    CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, blocking_cb, &b), 0);
    pthread_t c = test_spawn(cancel_thread, &b);
    test_gate_wait(&b.started);
    CHECK(!cancel_unregister_nowait(&b.reg));
    CHECK_EQ(atomic_load(&b.finished), 0); /* still running: it did not wait */
    memset(&b.reg, 0xA5, sizeof b.reg);    /* storage is ours again */
    test_gate_open(&b.finish);
    test_join(c);
    cancel_source_free(b.src);
}

/* Pitfall: callback 0 blocks; unregistering callback k meanwhile returns
 * true and k never runs. */
static void unregister_of_pending_callback_during_dispatch(void)
{
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}};
    cancel_registration later[3];
    for (int i = 0; i < 3; i++)
        CHECK_EQ(cancel_register(cancel_source_token(b.src), &later[i], test_never, NULL), 0);
    CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, blocking_cb, &b), 0); /* runs first */
    pthread_t c = test_spawn(cancel_thread, &b);
    test_gate_wait(&b.started);
    for (int i = 0; i < 3; i++)
        CHECK(cancel_unregister(&later[i]));
    test_gate_open(&b.finish);
    test_join(c);
    cancel_source_free(b.src);
}

/* From inside the callback itself: no wait, no deadlock. */
static cancel_registration self_reg;
static int self_result = -1;
static void unregisters_itself(void *arg)
{
    (void)arg;
    self_result = cancel_unregister(&self_reg);
}
static void unregister_self_from_callback(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &self_reg, unregisters_itself, NULL), 0);
    cancel_source_cancel(s);
    CHECK_EQ(self_result, 0);
    cancel_source_free(s);
}

/* A callback may call anything: register (inline), unregister others,
 * cancel other sources, query its own source, free it. */
struct everything {
    cancel_source *self, *other;
    cancel_registration *victim;
    cancel_registration inner;
    _Atomic int inner_ran;
    int victim_removed, other_cancelled, inline_rc;
};
static void does_everything(void *arg)
{
    struct everything *e = arg;
    e->inline_rc = cancel_register(cancel_source_token(e->self), &e->inner, test_count, &e->inner_ran);
    e->victim_removed = cancel_unregister(e->victim);
    e->other_cancelled = cancel_source_cancel(e->other);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(e->self, &info), 0);
    CHECK_EQ(info.reason, CANCEL_REASON_REQUESTED);
    CHECK(cancel_token_is_requested(cancel_source_token(e->self)));
}
static void callback_may_call_anything(void)
{
    struct everything e = {0};
    e.self = cancel_source_new();
    e.other = cancel_source_new();
    cancel_registration victim, mine, on_other;
    _Atomic int other_ran = 0;
    e.victim = &victim;
    CHECK_EQ(cancel_register(cancel_source_token(e.self), &victim, test_never, NULL), 0);
    CHECK_EQ(cancel_register(cancel_source_token(e.self), &mine, does_everything, &e), 0);
    CHECK_EQ(cancel_register(cancel_source_token(e.other), &on_other, test_count, &other_ran), 0);
    CHECK(cancel_source_cancel(e.self));
    CHECK_EQ(e.inline_rc, ECANCELED);
    CHECK_EQ(atomic_load(&e.inner_ran), 1);
    CHECK_EQ(e.victim_removed, 1);
    CHECK_EQ(e.other_cancelled, 1);
    CHECK_EQ(atomic_load(&other_ran), 1);
    cancel_source_free(e.self);
    cancel_source_free(e.other);
}

/* Pitfall: the last callback frees the source and every registration. */
struct freer {
    cancel_source *src;
    cancel_registration *regs;
};
static void frees_everything(void *arg)
{
    struct freer *f = arg;
    cancel_source_free(f->src);
    free(f->regs);
}
static void callback_frees_source_and_registrations(void)
{
    struct freer f = {cancel_source_new(), malloc(10 * sizeof(cancel_registration))};
    _Atomic int n = 0;
    CHECK_EQ(cancel_register(cancel_source_token(f.src), &f.regs[0], frees_everything, &f), 0);
    for (int i = 1; i < 10; i++)
        CHECK_EQ(cancel_register(cancel_source_token(f.src), &f.regs[i], test_count, &n), 0);
    CHECK(cancel_source_cancel(f.src)); /* runs 9..1, then 0 frees all */
    CHECK_EQ(atomic_load(&n), 9);

    /* freed by the first callback: the rest still run (they were due) */
    f.src = cancel_source_new();
    f.regs = malloc(sizeof(cancel_registration));
    cancel_registration rest[3];
    atomic_store(&n, 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(cancel_register(cancel_source_token(f.src), &rest[i], test_count, &n), 0);
    CHECK_EQ(cancel_register(cancel_source_token(f.src), f.regs, frees_everything, &f), 0);
    CHECK(cancel_source_cancel(f.src));
    CHECK_EQ(atomic_load(&n), 3);
}

/* Pitfall: registrations pile up on a long-lived token. */
static void registrations_do_not_pile_up(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    cancel_source_info info;
    for (int i = 0; i < TEST_SCALE(1000000); i++) {
        cancel_registration r;
        CHECK_EQ(cancel_register(t, &r, test_never, NULL), 0);
        if (i % 100000 == 0) {
            CHECK_EQ(cancel_source_get_info(s, &info), 0);
            CHECK_EQ(info.registrations, 1);
        }
        CHECK((i & 1) ? cancel_unregister(&r) : cancel_unregister_nowait(&r));
    }
    CHECK_EQ(cancel_source_get_info(s, &info), 0);
    CHECK_EQ(info.registrations, 0);
    cancel_source_free(s);
}

/* Pitfall: two callbacks that unregister each other, two threads cancelling
 * their two sources at once. Must always finish. */
struct cross {
    cancel_source *src;
    cancel_registration reg;
    struct cross *peer;
    _Atomic int ran;
    int removed_peer, deadlock;
    uint64_t rng;
    test_gate *go;
};
static void unregister_peer(void *arg)
{
    struct cross *c = arg;
    atomic_store(&c->ran, 1);
    test_jitter(&c->rng, 2000);
    errno = 0;
    c->removed_peer = cancel_unregister(&c->peer->reg);
    c->deadlock = errno == EDEADLK;
}
static void *cross_cancel(void *arg)
{
    struct cross *c = arg;
    test_gate_wait(c->go);
    test_jitter(&c->rng, 2000);
    cancel_source_cancel(c->src);
    return NULL;
}
static void mutual_unregister_never_deadlocks(void)
{
    int deadlocks_seen = 0;
    for (int i = 0; i < TEST_SCALE(3000); i++) {
        test_gate go = TEST_GATE_INIT;
        struct cross a = {.src = cancel_source_new(), .rng = 88172645463325252ull + (uint64_t)i, .go = &go};
        struct cross b = {.src = cancel_source_new(), .rng = 1181783497276652981ull ^ (uint64_t)i, .go = &go};
        a.peer = &b;
        b.peer = &a;
        CHECK_EQ(cancel_register(cancel_source_token(a.src), &a.reg, unregister_peer, &a), 0);
        CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, unregister_peer, &b), 0);
        pthread_t ta = test_spawn(cross_cancel, &a), tb = test_spawn(cross_cancel, &b);
        test_gate_open(&go);
        test_join(ta);
        test_join(tb);
        /* each callback either ran or was removed by the other, never both */
        CHECK_EQ(atomic_load(&a.ran) + (atomic_load(&b.ran) && b.removed_peer), 1);
        CHECK_EQ(atomic_load(&b.ran) + (atomic_load(&a.ran) && a.removed_peer), 1);
        deadlocks_seen += a.deadlock + b.deadlock;
        CHECK(!(a.deadlock && b.deadlock)); /* only the second waiter backs off */
        cancel_source_free(a.src);
        cancel_source_free(b.src);
    }
    fprintf(stderr, "   EDEADLK returned in %d rounds\n", deadlocks_seen);
}

/* The deadlock rule, forced: A's callback (thread TA) waits in
 * cancel_unregister for B's running callback (thread TB); B's callback then
 * unregisters A's: waiting would close the cycle, so it returns false with
 * EDEADLK at once, and A's wait ends when B's callback returns. */
struct forced {
    cancel_source *src;
    cancel_registration reg;
    struct forced *peer;
    test_gate started;
    int result, err;
};
static void forced_a(void *arg)
{
    struct forced *a = arg;
    test_gate_open(&a->started);
    test_gate_wait(&a->peer->started); /* B's callback runs on TB */
    errno = 0;
    a->result = cancel_unregister(&a->peer->reg); /* waits for it */
    a->err = errno;
}
static void forced_b(void *arg)
{
    struct forced *b = arg;
    test_gate_open(&b->started);
    test_gate_wait(&b->peer->started);
    wait_unregister_sleeps_on(b->src); /* A's callback waits for this one now */
    errno = 0;
    b->result = cancel_unregister(&b->peer->reg);
    b->err = errno;
}
static void *cancel_forced(void *arg)
{
    cancel_source_cancel(((struct forced *)arg)->src);
    return NULL;
}
static void deadlock_rule_forced(void)
{
    for (int i = 0; i < 20; i++) {
        struct forced a = {cancel_source_new(), {{0}}, NULL, TEST_GATE_INIT, -1, -1};
        struct forced b = {cancel_source_new(), {{0}}, NULL, TEST_GATE_INIT, -1, -1};
        a.peer = &b;
        b.peer = &a;
        CHECK_EQ(cancel_register(cancel_source_token(a.src), &a.reg, forced_a, &a), 0);
        CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, forced_b, &b), 0);
        pthread_t ta = test_spawn(cancel_forced, &a), tb = test_spawn(cancel_forced, &b);
        test_join(tb);
        test_join(ta);
        CHECK_EQ(b.result, 0);
        CHECK_EQ(b.err, EDEADLK); /* refused: it would have waited forever */
        CHECK_EQ(a.result, 0);    /* B's callback had started: not removed... */
        CHECK_EQ(a.err, 0);       /* ...and A waited for it, no EDEADLK */
        cancel_source_free(a.src);
        cancel_source_free(b.src);
    }
}

/* A callback nested in another on the same thread (a cancel called from a
 * callback) may unregister the outer one: it does not wait for itself. */
struct nested {
    cancel_source *outer_src, *inner_src;
    cancel_registration outer, inner;
    int result;
};
static void inner_cb(void *arg)
{
    struct nested *n = arg;
    n->result = cancel_unregister(&n->outer); /* the outer runs below us: false, no wait */
}
static void outer_cb(void *arg)
{
    struct nested *n = arg;
    CHECK_EQ(cancel_register(cancel_source_token(n->inner_src), &n->inner, inner_cb, n), 0);
    cancel_source_cancel(n->inner_src); /* runs inner_cb here, nested */
}
static void nested_callback_unregisters_outer(void)
{
    struct nested n = {cancel_source_new(), cancel_source_new(), {{0}}, {{0}}, -1};
    CHECK_EQ(cancel_register(cancel_source_token(n.outer_src), &n.outer, outer_cb, &n), 0);
    cancel_source_cancel(n.outer_src); /* returns: nothing waited for itself */
    CHECK_EQ(n.result, 0);
    cancel_source_free(n.inner_src);
    cancel_source_free(n.outer_src);
}

/* cancel_token_wait from inside a callback (of another source): it blocks
 * and wakes like anywhere else. */
struct waits_inside {
    cancel_source *other;
    int woke;
    test_gate waiting;
};
static void wait_inside_cb(void *arg)
{
    struct waits_inside *w = arg;
    CHECK(!cancel_token_wait(cancel_source_token(w->other), 0));
    test_gate_open(&w->waiting);
    w->woke = cancel_token_wait(cancel_source_token(w->other), 20LL * 1000000000);
}
static bool word_has_waiters(void *src)
{
    return atomic_load(&((struct cancel_source *)src)->head.cancel__word) & ST_WAITERS;
}
static void *cancel_after_waiter(void *arg)
{
    struct waits_inside *w = arg;
    test_gate_wait(&w->waiting);
    CHECK(test_wait_until(word_has_waiters, w->other, 20LL * 1000000000)); /* it sleeps */
    cancel_source_cancel(w->other);
    return NULL;
}
static void token_wait_inside_callback(void)
{
    struct waits_inside w = {cancel_source_new(), -1, TEST_GATE_INIT};
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, wait_inside_cb, &w), 0);
    pthread_t t = test_spawn(cancel_after_waiter, &w);
    cancel_source_cancel(s);
    test_join(t);
    CHECK_EQ(w.woke, 1);
    cancel_source_free(s);
    cancel_source_free(w.other);
}

/* Pitfall: cancel racing an unregister that then frees the registrant. */
struct registrant {
    cancel_registration reg;
    int *state;
};
static void touch_state(void *arg)
{
    struct registrant *r = arg;
    r->state[0]++;
}
static cancel_source *shared;
static test_gate shared_go = TEST_GATE_INIT;
static void *registrant_thread(void *arg)
{
    uint64_t rng = (uintptr_t)arg | 1;
    test_gate_wait(&shared_go);
    for (int i = 0; i < 200; i++) {
        struct registrant *r = malloc(sizeof *r);
        r->state = calloc(1, sizeof(int));
        int rc = cancel_register(cancel_source_token(shared), &r->reg, touch_state, r);
        test_jitter(&rng, 500);
        if (rc == 0)
            cancel_unregister(&r->reg); /* after this, freeing is safe */
        free(r->state);
        free(r);
    }
    return NULL;
}
static void cancel_racing_unregister_and_free(void)
{
    for (int round = 0; round < TEST_SCALE(200); round++) {
        shared = cancel_source_new();
        shared_go.open = 0;
        pthread_t t[3];
        for (intptr_t i = 0; i < 3; i++)
            t[i] = test_spawn(registrant_thread, (void *)(i + 1 + round * 7));
        test_gate_open(&shared_go);
        uint64_t rng = (uint64_t)round + 99;
        test_jitter(&rng, 100000);
        cancel_source_cancel(shared);
        for (int i = 0; i < 3; i++)
            test_join(t[i]);
        cancel_source_free(shared);
    }
}

/* A waiter whose callback returned no longer counts as waiting, even before
 * it runs again: thread E waits in its callback for D's first callback;
 * when that returns, D's second callback waits for E's callback. That is no
 * cycle, so it must wait (not return EDEADLK while E's callback runs). */
static cancel_source *dsrc, *esrc;
static cancel_registration d1_reg, d2_reg, e_reg;
static _Atomic int d1_started, e_started, e_finished, d2_saw_running;
static bool flag_set(void *f)
{
    return atomic_load((_Atomic int *)f);
}
static void d1_cb(void *arg)
{
    (void)arg;
    atomic_store(&d1_started, 1);
    wait_unregister_sleeps_on(dsrc); /* E waits for this callback now */
}
static void d2_cb(void *arg)
{
    (void)arg;
    CHECK(test_wait_until(flag_set, &e_started, 20LL * 1000000000));
    errno = 0;
    cancel_unregister(&e_reg); /* E's wait for d1 is over: no cycle, so wait */
    CHECK(errno != EDEADLK);
    if (!atomic_load(&e_finished))
        atomic_store(&d2_saw_running, 1);
}
static void e_cb(void *arg)
{
    (void)arg;
    atomic_store(&e_started, 1);
    CHECK(test_wait_until(flag_set, &d1_started, 20LL * 1000000000));
    cancel_unregister(&d1_reg); /* waits for d1_cb on the other thread */
    wait_unregister_sleeps_on(esrc); /* and now D waits for us */
    atomic_store(&e_finished, 1);
}
static void *cancel_src(void *arg)
{
    cancel_source_cancel(arg);
    return NULL;
}
static void finished_wait_is_no_cycle(void)
{
    for (int i = 0; i < TEST_SCALE(50) + 5; i++) {
        dsrc = cancel_source_new();
        esrc = cancel_source_new();
        atomic_store(&d1_started, 0);
        atomic_store(&e_started, 0);
        atomic_store(&e_finished, 0);
        atomic_store(&d2_saw_running, 0);
        CHECK_EQ(cancel_register(cancel_source_token(dsrc), &d2_reg, d2_cb, NULL), 0);
        CHECK_EQ(cancel_register(cancel_source_token(dsrc), &d1_reg, d1_cb, NULL), 0); /* first */
        CHECK_EQ(cancel_register(cancel_source_token(esrc), &e_reg, e_cb, NULL), 0);
        pthread_t e = test_spawn(cancel_src, esrc), d = test_spawn(cancel_src, dsrc);
        test_join(d);
        test_join(e);
        CHECK_EQ(atomic_load(&d2_saw_running), 0); /* it waited for e_cb to return */
        cancel_source_free(dsrc);
        cancel_source_free(esrc);
    }
}

/* Two threads unregistering one running callback both wait for it. */
struct twice {
    struct blocker b;
    int returned_early;
    pthread_mutex_t mu;
};
static _Atomic int twice_tids[2], twice_n;
static void *unregister_twice(void *arg)
{
    struct twice *t = arg;
    atomic_store(&twice_tids[atomic_fetch_add(&twice_n, 1)], test_tid());
    cancel_unregister(&t->b.reg);
    pthread_mutex_lock(&t->mu);
    t->returned_early += !atomic_load(&t->b.finished);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}
static void concurrent_unregisters_all_wait(void)
{
    struct twice t = {{TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}}, 0,
                      PTHREAD_MUTEX_INITIALIZER};
    CHECK_EQ(cancel_register(cancel_source_token(t.b.src), &t.b.reg, blocking_cb, &t.b), 0);
    pthread_t c = test_spawn(cancel_thread, &t.b);
    test_gate_wait(&t.b.started);
    atomic_store(&twice_n, 0);
    atomic_store(&twice_tids[0], 0);
    atomic_store(&twice_tids[1], 0);
    pthread_t u1 = test_spawn(unregister_twice, &t), u2 = test_spawn(unregister_twice, &t);
    /* Both are asleep in cancel_unregister (a thread that returned early
     * would never be seen asleep, and its early return is counted below). */
    wait_unregister_sleeps_on(t.b.src);
    for (int k = 0; k < 2; k++) {
        while (!atomic_load(&twice_tids[k]))
            test_sleep_ns(100 * 1000);
        int tid = atomic_load(&twice_tids[k]);
        test_wait_until(test_thread_sleeps, &tid, 5LL * 1000000000);
    }
    test_gate_open(&t.b.finish);
    test_join(u1);
    test_join(u2);
    test_join(c);
    CHECK_EQ(t.returned_early, 0);
    CHECK(!cancel_unregister(&t.b.reg)); /* and later calls are harmless */
    cancel_source_free(t.b.src);
}

/* A waiting unregister never touches the storage afterwards: the callback it
 * waited for may have registered that storage again elsewhere. */
struct reuse {
    struct blocker b;
    cancel_source *other;
    int rc;
};
static void reregisters_elsewhere(void *arg)
{
    struct reuse *u = arg;
    test_gate_open(&u->b.started);
    test_gate_wait(&u->b.finish);
    u->rc = cancel_register(cancel_source_token(u->other), &u->b.reg, test_never, NULL);
}
static void *cancel_reuse(void *arg)
{
    cancel_source_cancel(((struct reuse *)arg)->b.src);
    return NULL;
}
static void *open_finish_later(void *arg)
{
    struct reuse *u = arg;
    wait_unregister_sleeps_on(u->b.src);
    test_gate_open(&u->b.finish);
    return NULL;
}
static void waiting_unregister_leaves_storage_alone(void)
{
    struct reuse u = {{TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}}, cancel_source_new(), -1};
    CHECK_EQ(cancel_register(cancel_source_token(u.b.src), &u.b.reg, reregisters_elsewhere, &u), 0);
    pthread_t c = test_spawn(cancel_reuse, &u);
    test_gate_wait(&u.b.started);
    pthread_t o = test_spawn(open_finish_later, &u);
    CHECK(!cancel_unregister(&u.b.reg)); /* waits; meanwhile the storage moves to `other` */
    test_join(o);
    test_join(c);
    CHECK_EQ(u.rc, 0);
    CHECK(cancel_unregister(&u.b.reg)); /* still registered on `other`, intact */
    cancel_source_cancel(u.other);      /* test_never must not run */
    cancel_source_free(u.b.src);
    cancel_source_free(u.other);
}

/* errno is left alone unless EDEADLK is reported, even when unregister had
 * to sleep. */
static void unregister_keeps_errno(void)
{
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT, 0, cancel_source_new(), {{0}}};
    CHECK_EQ(cancel_register(cancel_source_token(b.src), &b.reg, blocking_cb, &b), 0);
    pthread_t c = test_spawn(cancel_thread, &b);
    test_gate_wait(&b.started);
    pthread_t o = test_spawn(opener_thread, &b);
    errno = 4242;
    CHECK(!cancel_unregister(&b.reg));
    CHECK_EQ(errno, 4242);
    test_join(o);
    test_join(c);
    cancel_source_free(b.src);
}

int main(void)
{
    RUN(einval_for_bad_arguments);
    RUN(callback_runs_once_on_canceller);
    RUN(register_on_cancelled_runs_inline);
    RUN(noinvoke_can_register_under_callers_lock);
    RUN(none_token_registration_is_inert);
    RUN(callbacks_run_newest_first);
    RUN(unregister_result_table);
    RUN(unregister_waits_for_running_callback);
    RUN(nowait_does_not_wait);
    RUN(unregister_of_pending_callback_during_dispatch);
    RUN(unregister_self_from_callback);
    RUN(callback_may_call_anything);
    RUN(callback_frees_source_and_registrations);
    RUN(registrations_do_not_pile_up);
    RUN(mutual_unregister_never_deadlocks);
    RUN(deadlock_rule_forced);
    RUN(nested_callback_unregisters_outer);
    RUN(token_wait_inside_callback);
    RUN(cancel_racing_unregister_and_free);
    RUN(finished_wait_is_no_cycle);
    RUN(concurrent_unregisters_all_wait);
    RUN(unregister_keeps_errno);
    RUN(waiting_unregister_leaves_storage_alone);
    return 0;
}
