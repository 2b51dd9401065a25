/* cancel_token_deadline (the earliest deadline of a source and its
 * ancestors) and cancel_source_new_child. On the manual clock, so that
 * absolute times are exact. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

#define S (1000LL * 1000000)

static int64_t deadline(cancel_source *s)
{
    return cancel_token_deadline(cancel_source_token(s));
}

static void none_plain_and_rearmed(void)
{
    CHECK_EQ(cancel_token_deadline(CANCEL_TOKEN_NONE), CANCEL_INFINITE);
    int64_t t0 = cancel_now();
    cancel_source *s = cancel_source_new();
    CHECK_EQ(deadline(s), CANCEL_INFINITE);
    CHECK_EQ(cancel_source_cancel_after(s, 5 * S), 0);
    CHECK_EQ(deadline(s), t0 + 5 * S);
    CHECK_EQ(cancel_source_cancel_after(s, 2 * S), 0);
    CHECK_EQ(deadline(s), t0 + 2 * S);
    CHECK_EQ(cancel_source_cancel_after(s, CANCEL_INFINITE), 0);
    CHECK_EQ(deadline(s), CANCEL_INFINITE);
    CHECK_EQ(cancel_source_cancel_after(s, 7 * S), 0);
    CHECK(cancel_source_try_reset(s)); /* reset disarms */
    CHECK_EQ(deadline(s), CANCEL_INFINITE);
    cancel_source_free(s);
}

/* A cancelled token keeps the deadline it had: fired, or cancelled first. */
static void kept_after_cancellation(void)
{
    int64_t t0 = cancel_now();
    cancel_source *a = cancel_source_new(), *b = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(a, 1 * S), 0);
    CHECK_EQ(cancel_source_cancel_after(b, 9 * S), 0);
    cancel_source_cancel(b);
    cancel_clock_advance(1 * S);
    CHECK(cancel_token_is_requested(cancel_source_token(a)));
    CHECK_EQ(deadline(a), t0 + 1 * S);
    CHECK_EQ(deadline(b), t0 + 9 * S);
    /* kept deadlines are no longer pending, and go with the source */
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    CHECK_EQ(cancel_source_cancel_after(b, CANCEL_INFINITE), 0); /* nothing pending to disarm */
    CHECK_EQ(deadline(b), t0 + 9 * S);
    CHECK(!cancel_source_try_reset(b)); /* refused: keeps it */
    CHECK_EQ(deadline(b), t0 + 9 * S);
    cancel_source_free(a);
    cancel_source_free(b);
}

/* A child reports its ancestors' deadline without arming its own. */
static void ancestors_count(void)
{
    int64_t t0 = cancel_now();
    cancel_source *g = cancel_source_new(), *p1 = cancel_source_new(), *p2 = cancel_source_new();
    cancel_token gt = cancel_source_token(g);
    cancel_source *m = cancel_source_new_linked(&gt, 1);
    cancel_token parents[2] = {cancel_source_token(m), cancel_source_token(p2)};
    cancel_source *c = cancel_source_new_linked(parents, 2);
    (void)p1;
    CHECK_EQ(deadline(c), CANCEL_INFINITE);
    CHECK_EQ(cancel_source_cancel_after(g, 8 * S), 0); /* armed after c was linked: seen */
    CHECK_EQ(deadline(c), t0 + 8 * S);
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 1); /* the child armed nothing */
    CHECK_EQ(cancel_source_cancel_after(p2, 3 * S), 0);
    CHECK_EQ(deadline(c), t0 + 3 * S);
    CHECK_EQ(cancel_source_cancel_after(c, 1 * S), 0); /* its own, earlier */
    CHECK_EQ(deadline(c), t0 + 1 * S);
    CHECK_EQ(cancel_source_cancel_after(c, 20 * S), 0); /* its own, later: the ancestors' wins */
    CHECK_EQ(deadline(c), t0 + 3 * S);
    CHECK_EQ(deadline(m), t0 + 8 * S);
    /* A parent freed uncancelled can no longer cancel c: it no longer counts. */
    cancel_source_free(p2);
    CHECK_EQ(deadline(c), t0 + 8 * S);
    cancel_source_free(m); /* the middle of the chain: c loses g too */
    CHECK_EQ(deadline(c), t0 + 20 * S);
    cancel_source_free(c);
    cancel_source_free(g);
    cancel_source_free(p1);
}

/* A diamond (and a ladder of them) is walked once per source, not once per
 * path: 40 levels of diamonds would be 2^40 paths. */
static void diamonds_walk_once(void)
{
    int64_t t0 = cancel_now();
    enum { LEVELS = 40 };
    cancel_source *top = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(top, 4 * S), 0);
    cancel_source *v[LEVELS][2];
    cancel_token below[2] = {cancel_source_token(top), cancel_source_token(top)};
    for (int l = 0; l < LEVELS; l++) {
        v[l][0] = cancel_source_new_linked(below, 2);
        v[l][1] = cancel_source_new_linked(below, 2);
        below[0] = cancel_source_token(v[l][0]);
        below[1] = cancel_source_token(v[l][1]);
    }
    CHECK_EQ(deadline(v[LEVELS - 1][0]), t0 + 4 * S); /* returns at all */
    for (int l = LEVELS - 1; l >= 0; l--) {
        cancel_source_free(v[l][0]);
        cancel_source_free(v[l][1]);
    }
    cancel_source_free(top);
}

static void new_child_in_one_call(void)
{
    int64_t t0 = cancel_now();
    errno = 0;
    CHECK(cancel_source_new_child(CANCEL_TOKEN_NONE, -2, NULL) == NULL);
    CHECK_EQ(errno, EINVAL);

    cancel_source *plain = cancel_source_new_child(CANCEL_TOKEN_NONE, CANCEL_INFINITE, NULL);
    CHECK(plain);
    CHECK(cancel_source_name(plain) == NULL);
    CHECK_EQ(deadline(plain), CANCEL_INFINITE);

    cancel_source *parent = cancel_source_new();
    cancel_source_set_name(parent, "server");
    CHECK_EQ(cancel_source_cancel_after(parent, 9 * S), 0);
    cancel_source *c = cancel_source_new_child(cancel_source_token(parent), 2 * S, "conn 7");
    CHECK(c);
    CHECK_STR(cancel_source_name(c), "conn 7");
    CHECK_EQ(deadline(c), t0 + 2 * S);
    cancel_source_info info;
    cancel_source_get_info(c, &info);
    CHECK_EQ(info.parents, 1);
    CHECK_EQ(info.deadline_ns, 2 * S);
    /* the parent's cancellation reaches it with the parent's cause */
    cancel_source_cancel(parent);
    cancel_cause cause = cancel_token_cause(cancel_source_token(c));
    CHECK_EQ(cause.reason, CANCEL_REASON_REQUESTED);
    CHECK_STR(cause.origin, "server");
    cancel_source_free(c);

    /* born cancelled under a cancelled parent: no deadline armed, no error */
    cancel_stats st;
    cancel_get_stats(&st);
    size_t before = st.deadlines_pending;
    c = cancel_source_new_child(cancel_source_token(parent), 5 * S, "late");
    CHECK(c);
    CHECK(cancel_token_is_requested(cancel_source_token(c)));
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, before);
    cancel_source_free(c);

    /* timeout 0: cancelled at once, reason TIMEOUT */
    c = cancel_source_new_child(CANCEL_TOKEN_NONE, 0, NULL);
    CHECK(c);
    CHECK_EQ(cancel_token_cause(cancel_source_token(c)).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(c);
    cancel_source_free(parent);
    cancel_source_free(plain);
}

/* Walking up while another thread frees the ancestors: the walker holds
 * only retained tokens, the churner owns the sources and frees them at will
 * (ASan and TSan builds check the walk). */
static _Atomic(struct cancel__state *) slot; /* a retained token of the current middle */
static _Atomic int stop;
static void *churn(void *arg)
{
    cancel_token tt = cancel_source_token(arg);
    cancel_source *prev = NULL;
    while (!atomic_load(&stop)) {
        cancel_source *m = cancel_source_new_child(tt, 50 * S, NULL);
        cancel_token t = cancel_token_retain(cancel_source_token(m));
        struct cancel__state *old = atomic_exchange(&slot, t.cancel__impl);
        if (old)
            cancel_token_release((cancel_token){old});
        cancel_source_free(prev); /* the owner's free, while walkers may be inside */
        prev = m;
    }
    cancel_source_free(prev);
    return NULL;
}
static void *walk(void *arg)
{
    (void)arg;
    for (int i = 0; i < TEST_SCALE(20000); i++) {
        struct cancel__state *impl = atomic_exchange(&slot, NULL);
        if (!impl)
            continue;
        cancel_token mt = {impl};
        cancel_source *leaf = cancel_source_new_linked(&mt, 1);
        cancel_token lt = cancel_token_retain(cancel_source_token(leaf));
        struct cancel__state *none = NULL;
        if (!atomic_compare_exchange_strong(&slot, &none, impl))
            cancel_token_release(mt); /* a newer middle is there */
        int64_t d = cancel_token_deadline(lt); /* the middle may be freed meanwhile */
        CHECK(d == CANCEL_INFINITE || d > 0);
        cancel_source_free(leaf);
        cancel_token_release(lt);
    }
    return NULL;
}
static void walk_races_free(void)
{
    cancel_source *top = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(top, 60 * S), 0);
    atomic_store(&stop, 0);
    pthread_t c = test_spawn(churn, top), w = test_spawn(walk, NULL);
    test_join(w);
    atomic_store(&stop, 1);
    test_join(c);
    struct cancel__state *left = atomic_exchange(&slot, NULL);
    if (left)
        cancel_token_release((cancel_token){left});
    cancel_source_free(top);
}

int main(void)
{
    cancel_clock_use_manual(true);
    RUN(none_plain_and_rearmed);
    RUN(kept_after_cancellation);
    RUN(ancestors_count);
    RUN(diamonds_walk_once);
    RUN(new_child_in_one_call);
    RUN(walk_races_free);
    return 0;
}
