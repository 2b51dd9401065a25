/*
 * Groups: structured concurrency on a pool (errgroup with fail fast).
 *
 * A group is a source (hanging from an outer source, which is linked to its
 * parent and to the pool's source: see cancel__group_cancel), two counters,
 * and the list of every task it spawned, whose records (in slabs of the
 * group) are kept for reports until the group is freed. `spawned` (with the CLOSED and FREEING flags) is
 * written by spawners, `ended` (with WAITERS) by whoever ends a task, each
 * on its own cache line; the group has no task left when they are equal.
 *
 * Spawning adds 1 to `spawned` unless CLOSED or FREEING is set (one CAS).
 * cancel_group_wait reads `spawned`, then `ended`; if they are equal, every
 * task spawned by then has ended, and it closes the group with a CAS from
 * that very `spawned` value to CLOSED, which fails if a spawn came in
 * between: "every task ended" and "no more spawns" are one atomic step.
 * Tasks spawned by the group's own tasks are counted while their spawner is
 * still counted, so the counts cannot meet in between.
 *
 * A spawn in progress holds the group. Its task may run and end, and the
 * wait return, while the spawner is still reading the group's tokens and
 * the pool's fields after queueing it (a spawner that is not a task of the
 * group, and not its owner, holds nothing else). So the same CAS that
 * counts the task counts the spawn in progress (SPAWNING), and the spawn's
 * last access to the group is the decrement of that count; cancel_group_free
 * waits for it to reach zero before it frees anything (it sleeps on the
 * futex of the word's upper half, where SPAWNING lives; a decrement that
 * finds FREEING wakes it by address only, since the group may be gone the
 * moment the decrement is done).
 *
 * The end of a task counts it out (pool.c, cancel__group_count_out). When a
 * waiter has set WAITERS, this happens under the group's stripe mutex, and
 * the waker touches the group only inside that critical section: the
 * waiter sets WAITERS under the stripe too, and cancel_group_free takes the
 * stripe once after the group is closed, before it frees anything, so a
 * waker still inside has finished. A count-out that meets zero wakes the
 * waiters but leaves them listed: a spawn (from any thread, a task of the
 * group, a cancellation callback) may raise the count before they look,
 * and the end of that task must wake them again. Each waiter unlists itself
 * when its wait returns.
 *
 * First failure: pool.c records the first failing task with a CAS on
 * first_error (first in time) and only that task fails the group's source,
 * so the cause its siblings see and the error cancel_group_wait returns are
 * the same failure (unless the group was cancelled otherwise first).
 *
 * Lifetime: the group holds its pool's memory; each record holds its slab
 * (a record still in a pool's queue outlives the group, and so does its
 * slab). The group's registration (on the outer source) may touch the
 * group: cancel_group_free unregisters it before anything is freed.
 *
 * Nesting: a group created by a task with that task's token as parent is a
 * child of the task (tasks' `children`); one whose parent token is another
 * live group's token is that group's child. The links are under
 * cancel__tree_mu, which creation, free and reports take; freeing a group
 * makes its nested groups top-level.
 */
#include "task_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

pthread_mutex_t cancel__tree_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel_group *all_groups; /* under cancel__tree_mu */

#define DEFAULT_GRACE (100 * 1000 * 1000)

static void link_child(struct cancel_group **head, struct cancel_group *g)
{
    g->sib_next = *head;
    if (g->sib_next)
        g->sib_next->sib_pprev = &g->sib_next;
    g->sib_pprev = head;
    *head = g;
}

static void unlink_child(struct cancel_group *g)
{
    if (!g->sib_pprev)
        return;
    *g->sib_pprev = g->sib_next;
    if (g->sib_next)
        g->sib_next->sib_pprev = g->sib_pprev;
    g->sib_pprev = NULL;
    g->sib_next = NULL;
    g->parent_group = NULL;
    g->parent_task = NULL;
}

static void nest(struct cancel_group *g, cancel_token parent)
{
    if (!parent.cancel__impl)
        return;
    struct cancel_task *cur = cancel__task_current();
    if (cur && cur->group && cur->tok.cancel__impl == parent.cancel__impl) {
        struct cancel__record *rec = cancel__record_of(cur);
        g->parent_task = rec;
        link_child(&rec->children, g);
        return;
    }
    for (struct cancel_group *o = all_groups; o; o = o->all_next) {
        if (o != g && cancel_source_token(o->src).cancel__impl == parent.cancel__impl) {
            g->parent_group = o;
            link_child(&o->children, g);
            return;
        }
    }
}

cancel_group *cancel_group_new(cancel_pool *pool, cancel_token parent, const char *name)
{
    if (!pool) {
        errno = EINVAL;
        return NULL;
    }
    if (!cancel__pool_ref(pool)) {
        errno = ESHUTDOWN;
        return NULL;
    }
    size_t len = name ? strlen(name) + 1 : 0;
    size_t size = (sizeof(struct cancel_group) + len + CANCEL__CACHELINE - 1) / CANCEL__CACHELINE * CANCEL__CACHELINE;
    struct cancel_group *g = aligned_alloc(CANCEL__CACHELINE, size);
    if (!g) {
        cancel__pool_unref(pool);
        errno = ENOMEM;
        return NULL;
    }
    memset(g, 0, sizeof *g);
    g->pool = pool;
    /* The outer source takes the parent's and the pool's cancellations;
     * the group's token hangs from it alone. Its registration is the
     * newest on it, so it runs before the group's token is cancelled. */
    cancel_token parents[2] = {parent, cancel_source_token(pool->src)};
    g->outer = cancel_source_new_linked(parents, 2);
    cancel_token outer = cancel_source_token(g->outer);
    g->src = g->outer ? cancel_source_new_linked(&outer, 1) : NULL;
    if (!g->src || (name && cancel_source_set_name(g->src, name) != 0)) {
        cancel_source_free(g->src);
        cancel_source_free(g->outer);
        free(g);
        cancel__pool_unref(pool);
        errno = ENOMEM;
        return NULL;
    }
    g->name = name ? memcpy((char *)(g + 1), name, len) : NULL;
    atomic_init(&g->spawned, 0);
    atomic_init(&g->ended, 0);
    atomic_init(&g->first_error, 0);
    atomic_init(&g->first_failed, NULL);
    atomic_init(&g->any_canceled, false);
    atomic_init(&g->tasks, NULL);
    atomic_init(&g->slab, NULL);
    atomic_init(&g->created, cancel_now());
    atomic_init(&g->cancelled, CANCEL__NO_TIME);
    atomic_init(&g->grace, DEFAULT_GRACE);
    (void)cancel_register(outer, &g->reg, cancel__group_cancelled, g); /* inline if born cancelled */

    pthread_mutex_lock(&cancel__tree_mu);
    g->all_next = all_groups;
    if (g->all_next)
        g->all_next->all_pprev = &g->all_next;
    g->all_pprev = &all_groups;
    all_groups = g;
    nest(g, parent);
    pthread_mutex_unlock(&cancel__tree_mu);
    return g;
}

cancel_token cancel_group_token(const cancel_group *g)
{
    return g ? cancel_source_token(g->src) : CANCEL_TOKEN_NONE;
}

/* The futex word over SPAWNING: the upper half of `spawned`. */
static _Atomic uint32_t *spawning_word(struct cancel_group *g)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (_Atomic uint32_t *)(void *)((char *)&g->spawned + 4);
#else
    return (_Atomic uint32_t *)(void *)&g->spawned;
#endif
}

int cancel_group_spawn(cancel_group *g, cancel_task_fn *fn, void *arg, const char *name)
{
    if (!g || !fn)
        return EINVAL;
    uint64_t v = atomic_load_explicit(&g->spawned, memory_order_relaxed);
    do {
        if (v & (CANCEL__SPAWNED_CLOSED | CANCEL__SPAWNED_FREEING))
            return ESHUTDOWN;
        if ((v & CANCEL__COUNT) == CANCEL__COUNT)
            return ENOMEM;
        /* relaxed: the word's own order decides against the wait's close
         * and the free's FREEING. */
    } while (!atomic_compare_exchange_weak_explicit(&g->spawned, &v, v + 1 + CANCEL__SPAWNING_ONE,
                                                    memory_order_relaxed, memory_order_relaxed));
    int err = cancel__task_submit(g->pool, g, cancel_source_token(g->src), fn, arg, name, NULL);
    if (err)
        cancel__group_count_out(g, 1); /* undo the count */
    /* The last access to g. release: pairs with cancel_group_free's acquire
     * load, so that all our reads of g come before it frees. */
    v = atomic_fetch_sub_explicit(&g->spawned, CANCEL__SPAWNING_ONE, memory_order_release);
    if ((v & CANCEL__SPAWNING) == CANCEL__SPAWNING_ONE && (v & CANCEL__SPAWNED_FREEING))
        cancel__futex_wake(spawning_word(g), INT_MAX); /* the address only: g may be gone */
    return err;
}

/* Waits until no spawn is in progress (the caller set FREEING: none can
 * start). A spawn in progress never blocks for long (its task is queued or
 * ended already): spin a little, then sleep until the last one leaves. */
static void wait_spawners(struct cancel_group *g)
{
    for (unsigned i = 0;; i++) {
        /* acquire: pairs with the spawners' release decrements. */
        uint64_t v = atomic_load_explicit(&g->spawned, memory_order_acquire);
        if (!(v & CANCEL__SPAWNING))
            return;
        if (i < 100) {
            cancel__cpu_relax();
            continue;
        }
        /* Returns at once if the upper half changed since our load. */
        (void)cancel__futex_wait(spawning_word(g), (uint32_t)(v >> 32), -1);
    }
}

bool cancel_group_cancel(cancel_group *g)
{
    if (!g) {
        errno = EINVAL;
        return false;
    }
    return cancel__group_cancel(g, 0, NULL);
}

static bool group_done(void *obj)
{
    struct cancel_group *g = obj;
    uint64_t s = atomic_load_explicit(&g->spawned, memory_order_relaxed);
    /* acquire: pairs with the release of the count-outs: what the tasks
     * did is visible. ended never passes spawned, so equal means every task
     * spawned by our first load has ended. */
    uint64_t e = atomic_load_explicit(&g->ended, memory_order_acquire);
    return (e & CANCEL__COUNT) == (s & CANCEL__COUNT);
}

int cancel__group_result(const struct cancel_group *g)
{
    if (!group_done((void *)g))
        return -1;
    int err = atomic_load_explicit(&g->first_error, memory_order_relaxed);
    if (err)
        return err;
    return atomic_load_explicit(&g->any_canceled, memory_order_relaxed) ? ECANCELED : 0;
}


static bool group_subscribe(void *obj, struct cancel__waiter *w)
{
    struct cancel_group *g = obj;
    pthread_mutex_t *m = cancel__stripe(g);
    pthread_mutex_lock(m);
    /* acq_rel: whichever of this and a count-out comes second in the
     * word's order sees the other (pool.c takes the stripe when it sees
     * WAITERS, and compares the counts there). */
    uint64_t e = atomic_fetch_or_explicit(&g->ended, CANCEL__ENDED_WAITERS, memory_order_acq_rel);
    uint64_t s = atomic_load_explicit(&g->spawned, memory_order_relaxed);
    bool listed = (e & CANCEL__COUNT) != (s & CANCEL__COUNT);
    if (listed)
        cancel__waiters_add(&g->waiters, w);
    pthread_mutex_unlock(m);
    return listed;
}

int cancel_group_wait(cancel_group *g)
{
    if (!g)
        return EINVAL;
    for (;;) {
        uint64_t s = atomic_load_explicit(&g->spawned, memory_order_acquire);
        if (s & CANCEL__SPAWNED_CLOSED)
            return cancel__group_result(g);
        /* acquire: pairs with the release of the count-outs. */
        uint64_t e = atomic_load_explicit(&g->ended, memory_order_acquire);
        if ((e & CANCEL__COUNT) == (s & CANCEL__COUNT)) {
            /* Fails if a spawn came after our read of `spawned`. */
            if (atomic_compare_exchange_strong_explicit(&g->spawned, &s, s | CANCEL__SPAWNED_CLOSED,
                                                        memory_order_acq_rel, memory_order_relaxed))
                return cancel__group_result(g);
            continue;
        }
        struct cancel__waitable wb = {group_done, group_subscribe, g, "cancel_group_wait"};
        (void)cancel__wait(&wb, CANCEL_TOKEN_NONE, CANCEL_INFINITE); /* no timeout: it only returns 0 */
    }
}

void cancel_group_free(cancel_group *g)
{
    if (!g)
        return;
    uint64_t v = atomic_fetch_or_explicit(&g->spawned, CANCEL__SPAWNED_FREEING, memory_order_acq_rel);
    if (!(v & CANCEL__SPAWNED_CLOSED)) {
        (void)cancel__group_cancel(g, 0, NULL);
        (void)cancel_group_wait(g);
    }
    wait_spawners(g);
    /* A task that counted itself out under the stripe has left it. */
    pthread_mutex_t *m = cancel__stripe(g);
    pthread_mutex_lock(m);
    pthread_mutex_unlock(m);

    struct cancel__record *tasks = atomic_load_explicit(&g->tasks, memory_order_acquire);
    pthread_mutex_lock(&cancel__tree_mu);
    while (g->children)
        unlink_child(g->children);
    for (struct cancel__record *rec = tasks; rec; rec = rec->gnext)
        while (rec->children)
            unlink_child(rec->children);
    unlink_child(g);
    *g->all_pprev = g->all_next;
    if (g->all_next)
        g->all_next->all_pprev = g->all_pprev;
    pthread_mutex_unlock(&cancel__tree_mu);

    cancel_unregister(&g->reg);
    /* The slots never handed out (the newest slab's rest) first: each
     * record still holds its slab, so none goes during this walk. */
    for (struct cancel__slab *s = atomic_load_explicit(&g->slab, memory_order_relaxed), *next; s; s = next) {
        next = s->next;
        uint32_t used = atomic_load_explicit(&s->used, memory_order_relaxed);
        if (used < CANCEL__SLAB_RECORDS)
            cancel__slab_release(s, CANCEL__SLAB_RECORDS - used);
    }
    while (tasks) {
        struct cancel__record *next = tasks->gnext;
        cancel__task_unref(&tasks->t);
        tasks = next;
    }
    cancel_source_free(g->src);
    cancel_source_free(g->outer);
    cancel__pool_unref(g->pool);
    free(g);
}

void cancel_group_set_grace(cancel_group *g, int64_t grace_ns)
{
    if (g)
        atomic_store_explicit(&g->grace, grace_ns < 0 ? CANCEL_INFINITE : grace_ns, memory_order_relaxed);
}
