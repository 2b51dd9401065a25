/* Linked sources: propagation, causes, order, unhooking, deep and wide trees. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <sys/resource.h>

static size_t children_of(cancel_source *s)
{
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(s, &info), 0);
    return info.children;
}

static void child_follows_any_parent(void)
{
    for (int which = 0; which < 2; which++) {
        cancel_source *p[2] = {cancel_source_new(), cancel_source_new()};
        cancel_token pt[2] = {cancel_source_token(p[0]), cancel_source_token(p[1])};
        cancel_source *c = cancel_source_new_linked(pt, 2);
        CHECK(c);
        cancel_source_info info;
        CHECK_EQ(cancel_source_get_info(c, &info), 0);
        CHECK_EQ(info.parents, 2);
        CHECK(!cancel_token_is_requested(cancel_source_token(c)));
        _Atomic int n = 0;
        cancel_registration r;
        CHECK_EQ(cancel_register(cancel_source_token(c), &r, test_count, &n), 0);
        CHECK(cancel_source_cancel(p[which]));
        /* after cancel returns, the child is cancelled and its callbacks ran */
        CHECK(cancel_token_is_requested(cancel_source_token(c)));
        CHECK_EQ(atomic_load(&n), 1);
        CHECK(!cancel_token_is_requested(pt[1 - which]));
        CHECK(!cancel_source_cancel(c));
        cancel_source_free(c);
        cancel_source_free(p[0]);
        cancel_source_free(p[1]);
    }
}

static void child_cancel_does_not_reach_parent(void)
{
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_source *c = cancel_source_new_linked(&pt, 1);
    CHECK(cancel_source_cancel(c));
    CHECK(!cancel_token_is_requested(pt));
    CHECK_EQ(cancel_token_cause(cancel_source_token(c)).reason, CANCEL_REASON_REQUESTED);
    cancel_source_free(c);
    CHECK_EQ(children_of(p), 0);
    cancel_source_free(p);
}

static void born_cancelled_with_parents_cause(void)
{
    cancel_source *p = cancel_source_new();
    cancel_source_set_name(p, "root");
    cancel_source_fail(p, EPIPE, "broken");
    cancel_source *q = cancel_source_new();
    cancel_token pt[2] = {cancel_source_token(q), cancel_source_token(p)};
    cancel_source *c = cancel_source_new_linked(pt, 2);
    CHECK(cancel_token_is_requested(cancel_source_token(c)));
    cancel_cause cause = cancel_token_cause(cancel_source_token(c));
    CHECK_EQ(cause.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(cause.code, EPIPE);
    CHECK_STR(cause.message, "broken");
    CHECK_STR(cause.origin, "root");
    _Atomic int n = 0;
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(c), &r, test_count, &n), ECANCELED);
    CHECK_EQ(atomic_load(&n), 1);
    cancel_source_free(c);
    CHECK_EQ(children_of(q), 0);
    cancel_source_free(p);
    cancel_source_free(q);
}

static void uncancellable_and_duplicate_parents_are_ignored(void)
{
    cancel_source *p = cancel_source_new();
    cancel_source *dead = cancel_source_new();
    cancel_token dt = cancel_token_retain(cancel_source_token(dead));
    cancel_source_free(dead);
    cancel_token pt[4] = {CANCEL_TOKEN_NONE, cancel_source_token(p), dt, cancel_source_token(p)};
    cancel_source *c = cancel_source_new_linked(pt, 4);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(c, &info), 0);
    CHECK_EQ(info.parents, 1);
    CHECK_EQ(children_of(p), 1);
    cancel_source_cancel(p);
    CHECK(cancel_token_is_requested(cancel_source_token(c)));
    cancel_source_free(c);
    cancel_source_free(p);
    cancel_token_release(dt);

    /* no usable parent at all: a plain source */
    cancel_source *lone = cancel_source_new_linked(pt, 1);
    CHECK(lone && cancel_token_can_be_canceled(cancel_source_token(lone)));
    cancel_source_free(lone);
    lone = cancel_source_new_linked(NULL, 0);
    CHECK(lone);
    cancel_source_free(lone);
    errno = 0;
    CHECK(cancel_source_new_linked(NULL, 3) == NULL);
    CHECK_EQ(errno, EINVAL);
}

static void cause_names_the_origin_through_levels(void)
{
    cancel_source *root = cancel_source_new();
    cancel_source_set_name(root, "root");
    cancel_token t = cancel_source_token(root);
    cancel_source *mid = cancel_source_new_linked(&t, 1);
    cancel_source_set_name(mid, "mid");
    t = cancel_source_token(mid);
    cancel_source *leaf = cancel_source_new_linked(&t, 1);
    CHECK_EQ(cancel_source_cancel_after(root, 0), 0); /* reason TIMEOUT */
    cancel_token lt = cancel_source_token(leaf);
    CHECK(cancel_token_wait(lt, CANCEL_INFINITE));
    cancel_cause c = cancel_token_cause(lt);
    CHECK_EQ(c.reason, CANCEL_REASON_TIMEOUT);
    CHECK_STR(c.origin, "root");
    /* the origin outlives its source while the leaf is held */
    cancel_source_free(root);
    cancel_source_free(mid);
    CHECK_STR(cancel_token_cause(lt).origin, "root");
    cancel_source_free(leaf);

    /* cancelled in the middle: the origin is the middle */
    root = cancel_source_new();
    t = cancel_source_token(root);
    mid = cancel_source_new_linked(&t, 1);
    cancel_source_set_name(mid, "mid");
    t = cancel_source_token(mid);
    leaf = cancel_source_new_linked(&t, 1);
    cancel_source_fail(mid, 7, "seven");
    c = cancel_token_cause(cancel_source_token(leaf));
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.code, 7);
    CHECK_STR(c.message, "seven");
    CHECK_STR(c.origin, "mid");
    CHECK(!cancel_token_is_requested(cancel_source_token(root)));
    cancel_source_free(leaf);
    cancel_source_free(mid);
    cancel_source_free(root);
}

/* Documented order: depth first; a child's callbacks run where its link
 * stands in the parent's newest-first order. */
static char order[16];
static int order_len;
static void log_char(void *arg)
{
    order[order_len++] = (char)(intptr_t)arg;
}
static void order_is_depth_first_newest_first(void)
{
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_registration r[6];
    cancel_register(pt, &r[0], log_char, (void *)'a');
    cancel_source *c1 = cancel_source_new_linked(&pt, 1);
    cancel_register(cancel_source_token(c1), &r[1], log_char, (void *)'x');
    cancel_register(cancel_source_token(c1), &r[2], log_char, (void *)'y');
    cancel_register(pt, &r[3], log_char, (void *)'b');
    cancel_source *c2 = cancel_source_new_linked(&pt, 1);
    cancel_register(cancel_source_token(c2), &r[4], log_char, (void *)'z');
    cancel_register(pt, &r[5], log_char, (void *)'c');
    order_len = 0;
    cancel_source_cancel(p);
    order[order_len] = 0;
    CHECK_STR(order, "czbyxa");
    cancel_source_free(c1);
    cancel_source_free(c2);
    cancel_source_free(p);
}

/* Pitfall: linked children leak into long-lived parents. */
static void create_link_free_cycles_leave_parent_clean(void)
{
    cancel_source *p = cancel_source_new();
    cancel_source *q = cancel_source_new();
    cancel_token pt[2] = {cancel_source_token(p), cancel_source_token(q)};
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    int cycles = TEST_SANITIZED ? 1000000 : 10000000;
    for (int i = 0; i < cycles; i++) {
        cancel_source *c = cancel_source_new_linked(pt, 1 + (i & 1));
        CHECK(c);
        cancel_source_free(c);
    }
    getrusage(RUSAGE_SELF, &after);
    CHECK_EQ(children_of(p), 0);
    CHECK_EQ(children_of(q), 0);
    fprintf(stderr, "   %d cycles, max RSS %ld -> %ld KiB\n", cycles, before.ru_maxrss, after.ru_maxrss);
    if (!TEST_SANITIZED)
        CHECK(after.ru_maxrss - before.ru_maxrss < 4096); /* flat: no per-cycle growth */
    cancel_source_free(p);
    cancel_source_free(q);
}

static void parent_freed_before_child(void)
{
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_source *c = cancel_source_new_linked(&pt, 1);
    cancel_source_free(p); /* child stays usable, no longer linked */
    cancel_token ct = cancel_source_token(c);
    CHECK(cancel_token_can_be_canceled(ct));
    CHECK(!cancel_token_is_requested(ct));
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(c, &info), 0);
    CHECK_EQ(info.parents, 0);
    CHECK(cancel_source_cancel(c));
    cancel_source_free(c);

    /* cancelled parent freed before the child */
    p = cancel_source_new();
    pt = cancel_source_token(p);
    c = cancel_source_new_linked(&pt, 1);
    cancel_source_cancel(p);
    cancel_source_free(p);
    CHECK(cancel_token_is_requested(cancel_source_token(c)));
    cancel_source_free(c);
}

/* Pitfall: deep trees blow the stack. A chain of a million, cancelled from a
 * thread with a 64 KiB stack. */
static cancel_source **chain;
static int chain_len;
static void *cancel_chain_root(void *arg)
{
    (void)arg;
    CHECK(cancel_source_cancel(chain[0]));
    return NULL;
}
static void million_deep_chain_cancels_on_small_stack(void)
{
    chain_len = TEST_SANITIZED ? 200000 : 1000000;
    chain = malloc((size_t)chain_len * sizeof *chain);
    chain[0] = cancel_source_new();
    for (int i = 1; i < chain_len; i++) {
        cancel_token t = cancel_source_token(chain[i - 1]);
        chain[i] = cancel_source_new_linked(&t, 1);
        CHECK(chain[i]);
    }
    _Atomic int n = 0;
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(chain[chain_len - 1]), &r, test_count, &n), 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, TEST_SANITIZED ? 1 << 20 : 64 << 10);
    pthread_t t;
    CHECK(pthread_create(&t, &attr, cancel_chain_root, NULL) == 0);
    test_join(t);
    pthread_attr_destroy(&attr);
    CHECK_EQ(atomic_load(&n), 1);
    CHECK(cancel_token_is_requested(cancel_source_token(chain[chain_len - 1])));
    CHECK_STR(cancel_reason_name(cancel_token_cause(cancel_source_token(chain[chain_len / 2])).reason),
              "requested");
    for (int i = 0; i < chain_len; i++) /* root first: each parent waits for its child */
        cancel_source_free(chain[i]);
    free(chain);
}

static void wide_parent_cancels_all_children(void)
{
    int n = TEST_SCALE(100000);
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_source **kids = malloc((size_t)n * sizeof *kids);
    for (int i = 0; i < n; i++)
        kids[i] = cancel_source_new_linked(&pt, 1);
    CHECK_EQ(children_of(p), (size_t)n);
    cancel_source_cancel(p);
    for (int i = 0; i < n; i++)
        CHECK(cancel_token_is_requested(cancel_source_token(kids[i])));
    CHECK_EQ(children_of(p), 0);
    for (int i = n - 1; i >= 0; i--)
        cancel_source_free(kids[i]);
    free(kids);
    cancel_source_free(p);
}

/* Pitfall 15: after cancel returns, every descendant is cancelled; observer
 * threads never see a descendant behind once cancel has returned. */
static cancel_source *tree[7];
static _Atomic int tree_done;
static void *observe_tree(void *arg)
{
    (void)arg;
    while (!atomic_load(&tree_done)) {
    }
    for (int i = 0; i < 7; i++)
        CHECK(cancel_token_is_requested(cancel_source_token(tree[i])));
    return NULL;
}
static void tree_is_cancelled_when_cancel_returns(void)
{
    for (int round = 0; round < TEST_SCALE(500); round++) {
        tree[0] = cancel_source_new();
        for (int i = 1; i < 7; i++) {
            cancel_token t = cancel_source_token(tree[(i - 1) / 2]);
            tree[i] = cancel_source_new_linked(&t, 1);
        }
        atomic_store(&tree_done, 0);
        pthread_t obs[2] = {test_spawn(observe_tree, NULL), test_spawn(observe_tree, NULL)};
        cancel_source_cancel(tree[0]);
        atomic_store(&tree_done, 1);
        test_join(obs[0]);
        test_join(obs[1]);
        for (int i = 6; i >= 0; i--)
            cancel_source_free(tree[i]);
    }
}

/* A child freed concurrently with its parent's cancellation and free. */
static cancel_source *race_parent, *race_child;
static test_gate race_go = TEST_GATE_INIT;
static void *race_free_child(void *arg)
{
    uint64_t rng = (uintptr_t)arg;
    test_gate_wait(&race_go);
    test_jitter(&rng, 3000);
    cancel_source_free(race_child);
    return NULL;
}
static void child_free_races_parent_cancel_and_free(void)
{
    for (int i = 0; i < TEST_SCALE(5000); i++) {
        race_parent = cancel_source_new();
        cancel_token pt = cancel_source_token(race_parent);
        race_child = cancel_source_new_linked(&pt, 1);
        cancel_registration r;
        _Atomic int n = 0;
        cancel_register(cancel_source_token(race_child), &r, test_count, &n);
        race_go.open = 0;
        pthread_t t = test_spawn(race_free_child, (void *)(uintptr_t)(i * 2654435761u + 1));
        test_gate_open(&race_go);
        uint64_t rng = (uint64_t)i + 5;
        test_jitter(&rng, 3000);
        if (i & 1)
            cancel_source_cancel(race_parent);
        cancel_source_free(race_parent);
        test_join(t);
        CHECK(atomic_load(&n) <= 1);
    }
}

int main(void)
{
    RUN(child_follows_any_parent);
    RUN(child_cancel_does_not_reach_parent);
    RUN(born_cancelled_with_parents_cause);
    RUN(uncancellable_and_duplicate_parents_are_ignored);
    RUN(cause_names_the_origin_through_levels);
    RUN(order_is_depth_first_newest_first);
    RUN(create_link_free_cycles_leave_parent_clean);
    RUN(parent_freed_before_child);
    RUN(million_deep_chain_cancels_on_small_stack);
    RUN(wide_parent_cancels_all_children);
    RUN(tree_is_cancelled_when_cancel_returns);
    RUN(child_free_races_parent_cancel_and_free);
    return 0;
}
