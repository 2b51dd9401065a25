/*
 * Pools, their queue and threads, tasks, and waiting.
 *
 * The queue. Vyukov's intrusive multi-producer queue: a producer links a
 * task with one atomic exchange of the tail and one store into its
 * predecessor, never waiting for anyone; one consumer at a time pops, under
 * a try-lock (qlock) held for a few loads and stores. A pop can find the
 * queue "half pushed" (a producer swapped the tail but has not linked yet):
 * it then reports empty, and that producer wakes an idle thread once it has
 * linked (below), so nothing is stranded.
 *
 * Idle threads. A pool thread that finds no work looks a little longer,
 * then parks (wake.c) after setting its bit in the pool's idle set and
 * counting itself in `nidle`. A producer, after linking, reads `nidle`; if
 * a thread is idle it claims one's bit and wakes it. The two form a Dekker pair:
 * the producer links, issues a seq_cst fence and reads nidle; the thread
 * increments nidle, issues a seq_cst fence and looks at the queue: either
 * the producer sees the idle thread, or the thread sees the task. A thread
 * sleeps only when a pop made after its fence found the queue empty (or
 * half pushed: that producer will see it); one that lost the try-lock to
 * another consumer naps briefly instead, as that consumer may leave a task
 * behind. A half-pushed task hides those queued behind it, whose producers
 * may have found no thread idle: so a thread woken by a producer, once it
 * takes a task, wakes another idle thread if more are queued (pass_on). (The
 * process-wide barrier the core's lock uses would spare producers the
 * fence, but it costs 10-20 us with other threads running, on every park.)
 *
 * A task's life. The state word moves PENDING -> RUNNING ->
 * COMPLETED/CANCELED/FAILED, or PENDING -> CANCELED, by CAS: the pool
 * thread that pops a task claims it (PENDING -> RUNNING) while a
 * cancellation may at the same moment end it (PENDING -> CANCELED);
 * exactly one wins, and the loser of a claim only drops its reference.
 * Whoever ends a task wakes its waiters (the WAITERS bit, set under the
 * stripe mutex by a waiter, tells it whether to look), then, for a group
 * task, counts it out of the group: that is its last access to the group.
 * Which token a task gets, and who ends it when its token is cancelled
 * while it is queued, is described above cancel__task_submit.
 *
 * Lifetime. A task is reference-counted: the queue's reference (until a
 * pool thread ran or dropped it, or until it ended before being queued),
 * the handle (cancel_task_run's *out), and the group's record. Plain task
 * blocks are recycled (task_block_new), group records live in their group's
 * slabs (record_new). The pool's memory is reference-counted too (its handle
 * and its groups), so that group handles can reach its `closing` flag after
 * cancel_pool_free. A worker's blocked-in word and CPU clock belong to its
 * thread: reports read them under report_mu, and the thread clears its
 * pointer under report_mu before it ends.
 *
 * Locks: qlock and spare_lock (try-locks, never waited on), report_mu and
 * the stripes (wake.c) are each held for a few instructions and a futex
 * wake at most, never while user code runs, and never nested in one
 * another. A task runs with no lock of the layer held.
 */
#include "task_internal.h"

#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The pool thread this is, or NULL. */
static _Thread_local struct cancel__worker *self;

struct cancel_task *cancel__task_current(void)
{
    return self ? atomic_load_explicit(&self->current, memory_order_relaxed) : NULL;
}

static int64_t cpu_ns(const struct cancel__worker *w)
{
    struct timespec ts;
    if (!w->has_cpu_clock || clock_gettime(w->cpu_clock, &ts) != 0)
        return CANCEL__NO_TIME;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------
 * The queue
 * ------------------------------------------------------------------------ */

static void q_link(struct cancel_pool *p, struct cancel__qnode *n, memory_order link_order)
{
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    /* acq_rel: we write into prev, which its producer published. */
    struct cancel__qnode *prev = atomic_exchange_explicit(&p->tail, n, memory_order_acq_rel);
    /* release (at least): the consumer's acquire load of prev->next sees the
     * task's fields and n->next. */
    atomic_store_explicit(&prev->next, n, link_order);
}

/* Is there anything to pop? It may say yes to a task being popped; it
 * says no only when the queue is empty or a push is half done (whose
 * producer then wakes an idle thread). Relaxed: the parking pair orders it
 * with a fence (idle_prepare). */
static bool q_peek(struct cancel_pool *p)
{
    struct cancel__qnode *head = atomic_load_explicit(&p->head, memory_order_relaxed);
    return head != &p->stub || atomic_load_explicit(&p->stub.next, memory_order_relaxed) != NULL;
}

static void wake_one(struct cancel_pool *p);

static void q_unlock(struct cancel_pool *p)
{
    /* release: pairs with the acquire exchange of the next holder. */
    atomic_store_explicit(&p->qlock, 0, memory_order_release);
}

/* Why q_pop found nothing. */
enum pop_miss {
    POP_EMPTY, /* the queue is empty, or half pushed (its producer will wake an idle thread) */
    POP_BUSY,  /* another thread is popping */
};

/* Pops the oldest task, or returns NULL (and says why in *miss). */
static struct cancel_task *q_pop_why(struct cancel_pool *p, enum pop_miss *miss)
{
    *miss = POP_BUSY;
    /* acquire: pairs with q_unlock's release. */
    if (atomic_exchange_explicit(&p->qlock, 1, memory_order_acquire) != 0)
        return NULL;
    *miss = POP_EMPTY;
    struct cancel__qnode *head = atomic_load_explicit(&p->head, memory_order_relaxed);
    /* acquire: pairs with the producer's store of the link (q_link). */
    struct cancel__qnode *next = atomic_load_explicit(&head->next, memory_order_acquire);
    if (head == &p->stub) {
        if (!next)
            goto empty;
        atomic_store_explicit(&p->head, next, memory_order_relaxed);
        head = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (!next) {
        /* head is the last task, unless a producer is between its exchange
         * and its link: then it will link and wake someone. */
        if (atomic_load_explicit(&p->tail, memory_order_acquire) != head)
            goto empty;
        q_link(p, &p->stub, memory_order_release);
        next = atomic_load_explicit(&head->next, memory_order_acquire);
        if (!next)
            goto empty;
    }
    atomic_store_explicit(&p->head, next, memory_order_relaxed);
    q_unlock(p);
    return (struct cancel_task *)(void *)head;
empty:
    q_unlock(p);
    return NULL;
}

static struct cancel_task *q_pop(struct cancel_pool *p)
{
    enum pop_miss miss;
    return q_pop_why(p, &miss);
}

/* ------------------------------------------------------------------------
 * Idle threads
 * ------------------------------------------------------------------------ */

/* The idle set: a bit per thread in `idle_mask`, and their number in
 * `nidle` (what producers look at). A producer that wakes a thread claims
 * its bit with a fetch_and, so exactly one party clears each bit: the
 * producer (then it wakes the thread) or the thread itself (idle_remove). */
static _Atomic uint64_t *idle_word(struct cancel__worker *w)
{
    return &w->pool->idle_mask[w->id / 64];
}

static void idle_add(struct cancel__worker *w)
{
    struct cancel_pool *p = w->pool;
    /* relaxed: idle_prepare's fence orders both with the look at the
     * queue that follows. acq_rel on the mask: ordered with wake_all's
     * exchange (see stop_threads). */
    atomic_fetch_add_explicit(&p->nidle, 1, memory_order_relaxed);
    atomic_fetch_or_explicit(idle_word(w), UINT64_C(1) << (w->id % 64), memory_order_acq_rel);
}

/* Returns false if a producer claimed us to wake us. */
static bool idle_remove(struct cancel__worker *w)
{
    uint64_t bit = UINT64_C(1) << (w->id % 64);
    if (!(atomic_fetch_and_explicit(idle_word(w), ~bit, memory_order_relaxed) & bit))
        return false;
    /* relaxed: a stale count costs a look, never a lost wake-up. */
    atomic_fetch_sub_explicit(&w->pool->nidle, 1, memory_order_relaxed);
    return true;
}

/* Wakes one idle thread, if any. Its parker word lives in the pool, which
 * every waker holds. */
static void wake_one(struct cancel_pool *p)
{
    size_t words = (p->nthreads + 63) / 64;
    for (size_t i = 0; i < words; i++) {
        uint64_t m = atomic_load_explicit(&p->idle_mask[i], memory_order_relaxed);
        while (m) {
            uint64_t bit = m & -m;
            uint64_t old = atomic_fetch_and_explicit(&p->idle_mask[i], ~bit, memory_order_relaxed);
            if (old & bit) {
                atomic_fetch_sub_explicit(&p->nidle, 1, memory_order_relaxed);
                cancel__parker_wake(p->workers[i * 64 + (size_t)__builtin_ctzll(bit)].parker);
                return;
            }
            m = old & ~bit;
        }
    }
}

static void wake_all(struct cancel_pool *p)
{
    size_t words = (p->nthreads + 63) / 64;
    for (size_t i = 0; i < words; i++) {
        /* acq_rel: see stop_threads. */
        uint64_t m = atomic_exchange_explicit(&p->idle_mask[i], 0, memory_order_acq_rel);
        for (; m; m &= m - 1) {
            atomic_fetch_sub_explicit(&p->nidle, 1, memory_order_relaxed);
            cancel__parker_wake(p->workers[i * 64 + (size_t)__builtin_ctzll(m)].parker);
        }
    }
}

/* What an idle thread does next. */
enum idle {
    IDLE_SLEEP, /* until woken: a producer sees us */
    IDLE_NAP,   /* briefly: another thread held the queue, and may leave a task behind */
    IDLE_GOT,   /* run the task it popped */
    IDLE_EXIT,  /* the pool is going */
};
#define NAP_NS (100 * 1000)

/* Lists the thread as idle, then pops once more: only a pop that finds the
 * queue empty (or half pushed: its producer, after linking, sees us idle)
 * lets it sleep for good. The caller unlists itself afterwards
 * (idle_remove) in every case. */
static enum idle idle_prepare(struct cancel__worker *w, struct cancel_task **t)
{
    idle_add(w);
    /* seq_cst: our half of the parking pair (see the top): the increment
     * of nidle comes before the look at the queue. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->pool->exiting, memory_order_acquire))
        return IDLE_EXIT;
    enum pop_miss miss;
    *t = q_pop_why(w->pool, &miss);
    return *t ? IDLE_GOT : miss == POP_BUSY ? IDLE_NAP : IDLE_SLEEP;
}

/* Called by a thread that a producer woke (claimed) and that has just
 * taken a task: if more are queued, wake another idle thread. A producer
 * wakes one thread for its task; one that finds no thread idle counts on
 * the next thread to go idle seeing its task. But that thread may find the
 * queue half pushed by an earlier producer (its pop then says empty) and
 * sleep, with our task queued behind the half-pushed one, where nobody
 * asleep can see it; the earlier producer then wakes one thread, for its
 * own task. Whoever takes that task sees ours behind it, and so passes the
 * wake-up on. (Without this, the second task waited for a busy thread
 * while another slept.) seq_cst: as the producer's fence in the parking
 * pair: either we see the idle thread, or its pop, after its fence, sees
 * the head our pop left. */
static void pass_on(struct cancel_pool *p)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (q_peek(p) && atomic_load_explicit(&p->nidle, memory_order_relaxed) != 0)
        wake_one(p);
}

/* After idle_prepare popped a task: unlist, and pass the wake-up on if a
 * producer claimed us meanwhile or one did earlier and we had not taken a
 * task since (`owed`). */
static void idle_got(struct cancel__worker *w, bool owed)
{
    if (!idle_remove(w) || owed)
        pass_on(w->pool);
}

/* ------------------------------------------------------------------------
 * Tasks
 * ------------------------------------------------------------------------ */

/* Moves the task from `from` to `to` (keeping the WAITERS bit). Returns
 * false if it was not in `from`; else *old is the word it replaced. */
static bool task_move(struct cancel_task *t, cancel_task_state from, cancel_task_state to, uint32_t *old)
{
    uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    while (cancel__task_state(s) == from) {
        /* acq_rel: release publishes what the task's owner wrote before
         * (worker, result, the task's own writes) to whoever sees the new
         * state with acquire; acquire orders us after a waiter's WAITERS. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, (s & ~CANCEL__TASK_STATE_MASK) | to,
                                                  memory_order_acq_rel, memory_order_relaxed)) {
            *old = s;
            return true;
        }
    }
    return false;
}


void cancel__group_count_out(struct cancel_group *g, uint64_t n)
{
    uint64_t e = atomic_load_explicit(&g->ended, memory_order_relaxed);
    for (;;) {
        if (e & CANCEL__ENDED_WAITERS) {
            /* Someone waits: count out under the stripe, so that the
             * waiter (who takes the stripe before it may free the group)
             * cannot free the group while we look at it. */
            pthread_mutex_t *m = cancel__stripe(g);
            pthread_mutex_lock(m);
            /* release: pairs with the waiter's acquire load; the results
             * recorded before (first_error, any_canceled) are visible. */
            e = atomic_fetch_add_explicit(&g->ended, n, memory_order_release) + n;
            /* The waiters stay listed: a spawn may raise the count again
             * before they look, and then this task's successor must wake
             * them again. */
            if ((e & CANCEL__COUNT) == (atomic_load_explicit(&g->spawned, memory_order_relaxed) & CANCEL__COUNT))
                cancel__waiters_wake_listed(g->waiters);
            pthread_mutex_unlock(m);
            return;
        }
        /* release: as above. Fails if a waiter came: then the branch above.
         * After it succeeds the group may be freed. */
        if (atomic_compare_exchange_weak_explicit(&g->ended, &e, e + n, memory_order_release,
                                                  memory_order_relaxed))
            return;
    }
}

/* The task ended (the caller won the move to an ended state): wake its
 * waiters, then count it out of its group: the last access to the group. */
static void task_ended(struct cancel_task *t, uint32_t old, cancel_task_state st)
{
    if (old & CANCEL__TASK_WAITERS) {
        pthread_mutex_t *m = cancel__stripe(t);
        pthread_mutex_lock(m);
        cancel__waiters_wake_all(&t->waiters);
        pthread_mutex_unlock(m);
    }
    struct cancel_group *g = t->group;
    if (g) {
        if (st == CANCEL_TASK_CANCELED)
            atomic_store_explicit(&g->any_canceled, true, memory_order_relaxed);
        cancel__group_count_out(g, 1);
    }
}

/* Ends a task that never ran, if it is still queued (the caller may lose
 * that race to a cancellation callback). `at`: when it was cancelled;
 * CANCEL__NO_TIME: when its group was (its registration had not reached
 * the task yet, which in effect ended then), or now. */
static void end_unrun(struct cancel_task *t, int64_t at)
{
    uint32_t old;
    if (!task_move(t, CANCEL_TASK_PENDING, CANCEL_TASK_CANCELED, &old))
        return; /* ended by another: the group may be gone */
    if (t->group) {
        if (at == CANCEL__NO_TIME)
            at = atomic_load_explicit(&t->group->cancelled, memory_order_relaxed);
        if (at == CANCEL__NO_TIME)
            at = cancel_now();
        struct cancel__record *rec = cancel__record_of(t);
        int64_t none = CANCEL__NO_TIME;
        atomic_compare_exchange_strong_explicit(&rec->cancelled, &none, at, memory_order_relaxed,
                                                memory_order_relaxed);
        atomic_store_explicit(&rec->ended, at, memory_order_relaxed);
    }
    task_ended(t, old, CANCEL_TASK_CANCELED);
}

/* The registration of a task with a source of its own (a plain task with a
 * token of the caller's): a queued task ends CANCELED at once. Runs on the
 * canceller's thread, or inline in cancel_register when the token was
 * already cancelled. */
static void task_cancelled(void *arg)
{
    end_unrun(arg, CANCEL__NO_TIME);
}

/* Notes a group's request in a running task: when, what its thread was
 * blocked in, and its thread's CPU clock. Under the pool's report_mu: the
 * thread cannot end meanwhile. */
static void note_request(struct cancel__record *rec, int64_t at)
{
    struct cancel_task *t = &rec->t;
    int64_t none = CANCEL__NO_TIME;
    if (!atomic_compare_exchange_strong_explicit(&rec->cancelled, &none, at, memory_order_relaxed,
                                                 memory_order_relaxed))
        return; /* noted already, or it returned first */
    struct cancel__worker *w = atomic_load_explicit(&t->worker, memory_order_relaxed);
    if (!w)
        return;
    struct cancel_pool *p = w->pool;
    pthread_mutex_lock(&p->report_mu);
    if (w->blocked) {
        const char *what = atomic_load_explicit(&t->nested_in, memory_order_relaxed);
        int fd = -1;
        if (!what && atomic_load_explicit(&w->current, memory_order_relaxed) == t) {
            /* acquire: pairs with cancel__blocked_enter's release (the fd). */
            what = atomic_load_explicit(&w->blocked->what, memory_order_acquire);
            fd = what ? atomic_load_explicit(&w->blocked->fd, memory_order_relaxed) : -1;
        }
        atomic_store_explicit(&rec->blocked_fd_at_request, fd, memory_order_relaxed);
        atomic_store_explicit(&rec->blocked_at_request, what, memory_order_relaxed);
        atomic_store_explicit(&rec->cpu_at_request, cpu_ns(w), memory_order_relaxed);
    }
    pthread_mutex_unlock(&p->report_mu);
}

/* Walks the group's records from `head` down to `stop` (excluded): ends
 * the queued tasks (CANCELED, unrun, at `at`) and notes the request in the
 * running ones. Returns how many it ended, for the caller to count out. */
static uint64_t group_sweep(struct cancel_group *g, struct cancel__record *head, struct cancel__record *stop,
                            int64_t at)
{
    uint64_t ended = 0;
    for (struct cancel__record *rec = head; rec != stop; rec = rec->gnext) {
        struct cancel_task *t = &rec->t;
        uint32_t old;
        if (task_move(t, CANCEL_TASK_PENDING, CANCEL_TASK_CANCELED, &old)) {
            atomic_store_explicit(&rec->cancelled, at, memory_order_relaxed);
            atomic_store_explicit(&rec->ended, at, memory_order_relaxed);
            if (old & CANCEL__TASK_WAITERS) {
                pthread_mutex_t *m = cancel__stripe(t);
                pthread_mutex_lock(m);
                cancel__waiters_wake_all(&t->waiters);
                pthread_mutex_unlock(m);
            }
            ended++;
            /* acquire: pairs with the claim; `worker` is set. */
        } else if (cancel__task_state(atomic_load_explicit(&t->state, memory_order_acquire)) ==
                   CANCEL_TASK_RUNNING) {
            note_request(rec, at);
        }
    }
    if (ended)
        atomic_store_explicit(&g->any_canceled, true, memory_order_relaxed);
    return ended;
}

/* When the group was cancelled: the first to note it wins. */
static int64_t note_cancel(struct cancel_group *g)
{
    int64_t none = CANCEL__NO_TIME, now = cancel_now();
    if (atomic_compare_exchange_strong_explicit(&g->cancelled, &none, now, memory_order_relaxed,
                                                memory_order_relaxed))
        return now;
    return none;
}

bool cancel__group_cancel(struct cancel_group *g, int err, const char *message)
{
    int64_t at = note_cancel(g);
    /* One walk, before the token reads cancelled, so that no running task
     * returns before its request is noted. The queued tasks it ends are
     * counted out only once the token is cancelled, so that a wait that
     * returns ECANCELED finds the cause set. */
    struct cancel__record *seen = atomic_load_explicit(&g->tasks, memory_order_acquire);
    uint64_t ended = group_sweep(g, seen, NULL, at);
    bool won = err ? cancel_source_fail(g->src, err, message) : cancel_source_cancel(g->src);
    /* seq_cst: our half of the pair with a spawn (cancel__task_submit):
     * after the mark, before our look at the list. A spawn we miss sees
     * the mark and ends its task itself; those spawned since our first
     * look are swept here. */
    atomic_thread_fence(memory_order_seq_cst);
    ended += group_sweep(g, atomic_load_explicit(&g->tasks, memory_order_acquire), seen, at);
    if (ended)
        cancel__group_count_out(g, ended); /* the caller holds the group */
    return won;
}

void cancel__group_cancelled(void *arg)
{
    /* On the outer source: the outer token reads cancelled (so a spawn
     * from now on sees it: the seq_cst fence is our half of that pair),
     * the group's token not yet (no task can return before its request is
     * noted). */
    struct cancel_group *g = arg;
    int64_t at = note_cancel(g);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t ended = group_sweep(g, atomic_load_explicit(&g->tasks, memory_order_acquire), NULL, at);
    if (ended)
        cancel__group_count_out(g, ended); /* cancel_group_free unregisters us first */
}

/* Free slabs a pool keeps for its next groups: a group of 10,000 tasks
 * takes 157 slabs (2.3 MB) that would otherwise come back as fresh pages
 * from the system each time. */
#define SLABS_KEPT 256

void cancel__slab_release(struct cancel__slab *slab, uint32_t n)
{
    /* acq_rel: the last releaser sees every record's last writes. */
    if (atomic_fetch_sub_explicit(&slab->live, n, memory_order_acq_rel) != n)
        return;
    struct cancel_pool *p = slab->pool; /* alive: a group or a pool thread holds it */
    if (atomic_load_explicit(&p->nslabs, memory_order_relaxed) >= SLABS_KEPT) {
        free(slab);
        return;
    }
    atomic_fetch_add_explicit(&p->nslabs, 1, memory_order_relaxed);
    struct cancel__slab *head = atomic_load_explicit(&p->slabs, memory_order_relaxed);
    do
        slab->next = head;
    /* release: the slab's link is visible to the popper. */
    while (!atomic_compare_exchange_weak_explicit(&p->slabs, &head, slab, memory_order_release,
                                                  memory_order_relaxed));
}

/* A free slab from the pool's cache (poppers serialised by spare_lock: no
 * ABA), or a new one; NULL for ENOMEM. */
static struct cancel__slab *slab_get(struct cancel_pool *p)
{
    struct cancel__slab *s = NULL;
    if (atomic_load_explicit(&p->slabs, memory_order_relaxed) &&
        !atomic_exchange_explicit(&p->spare_lock, 1, memory_order_acquire)) {
        /* acquire: pairs with the pushing CAS. */
        s = atomic_load_explicit(&p->slabs, memory_order_acquire);
        while (s && !atomic_compare_exchange_weak_explicit(&p->slabs, &s, s->next, memory_order_acquire,
                                                           memory_order_acquire)) {
        }
        atomic_store_explicit(&p->spare_lock, 0, memory_order_release);
        if (s)
            atomic_fetch_sub_explicit(&p->nslabs, 1, memory_order_relaxed);
    }
    if (!s) {
        s = malloc(sizeof *s);
        if (s)
            s->pool = p;
    }
    return s;
}

/*
 * Plain task blocks are recycled: a task is allocated by its submitter and
 * freed by a pool thread, and a general allocator pays for every block that
 * crosses threads. A pool thread collects freed blocks in a batch of its
 * own and publishes each full batch on its pool's stack with one CAS; a
 * submitter whose thread-local cache is empty pops one batch (under a
 * try-lock that serialises poppers, so a pop cannot suffer ABA; pushes need
 * no lock), and its thread frees the cache when it exits.
 */
#define SPARE_BATCH 32

static _Thread_local struct cancel__spare *cache;
static _Thread_local bool cache_hooked;

static void free_list(struct cancel__spare *b)
{
    while (b) {
        struct cancel__spare *next = b->next;
        free(b);
        b = next;
    }
}

static void cache_free(void *arg)
{
    (void)arg;
    free_list(cache);
    cache = NULL;
}

static void *task_block_new(struct cancel_pool *p)
{
    if (!cache && atomic_load_explicit(&p->spare, memory_order_relaxed) &&
        !atomic_exchange_explicit(&p->spare_lock, 1, memory_order_acquire)) {
        /* acquire: pairs with the publishing CAS: the batch's links. */
        struct cancel__spare *b = atomic_load_explicit(&p->spare, memory_order_acquire);
        /* Only one popper at a time: b cannot be popped and pushed again
         * between our load and our CAS. */
        while (b && !atomic_compare_exchange_weak_explicit(&p->spare, &b, b->next_batch, memory_order_acquire,
                                                           memory_order_acquire)) {
        }
        /* release: pairs with the next popper's acquire exchange. */
        atomic_store_explicit(&p->spare_lock, 0, memory_order_release);
        cache = b;
        if (b && !cache_hooked) {
            cancel__thread_atexit(cache_free, NULL);
            cache_hooked = true;
        }
    }
    struct cancel__spare *b = cache;
    if (!b)
        return malloc(sizeof(struct cancel_task));
    cache = b->next;
    return b;
}

/* A pool thread keeps it; anyone else frees it. */
static void task_block_free(struct cancel_task *t)
{
    struct cancel__worker *w = self;
    if (!w) {
        free(t);
        return;
    }
    struct cancel__spare *b = (struct cancel__spare *)(void *)t, *batch = w->spare;
    b->next = batch;
    b->count = batch ? batch->count + 1 : 1;
    w->spare = b;
    if (b->count < SPARE_BATCH)
        return;
    struct cancel_pool *p = w->pool;
    struct cancel__spare *head = atomic_load_explicit(&p->spare, memory_order_relaxed);
    do
        b->next_batch = head;
    /* release: the batch's links are visible to the taker. */
    while (!atomic_compare_exchange_weak_explicit(&p->spare, &head, b, memory_order_release,
                                                  memory_order_relaxed));
    w->spare = NULL;
}

void cancel__task_unref(struct cancel_task *t)
{
    /* The only reference (a plain task nobody waits for): nobody can take
     * another, so no read-modify-write. acquire: pairs with the release of
     * earlier holders' decrements. Else acq_rel: release our writes to the
     * last holder; acquire theirs. */
    if (atomic_load_explicit(&t->refs, memory_order_acquire) != 1 &&
        atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (atomic_load_explicit(&t->src, memory_order_relaxed))
        cancel_source_free(atomic_exchange_explicit(&t->src, NULL, memory_order_relaxed));
    if (!t->group) {
        if (t->owned)
            free(t);
        else
            task_block_free(t);
        return;
    }
    struct cancel__record *rec = cancel__record_of(t);
    if (rec->name_owned)
        free((char *)rec->name);
    cancel__slab_release(rec->slab, 1);
}

/* A record of group g, with its name copied; NULL for ENOMEM. */
static struct cancel__record *record_new(struct cancel_group *g, const char *name)
{
    size_t len = name ? strlen(name) + 1 : 0;
    for (;;) {
        /* acquire: pairs with the install below: the slab is initialised. */
        struct cancel__slab *s = atomic_load_explicit(&g->slab, memory_order_acquire);
        uint32_t i = s ? atomic_fetch_add_explicit(&s->used, 1, memory_order_relaxed) : CANCEL__SLAB_RECORDS;
        if (i < CANCEL__SLAB_RECORDS) {
            struct cancel__record *rec = &s->records[i];
            rec->slab = s;
            rec->name = NULL;
            rec->name_owned = false;
            if (len) {
                uint32_t at = len <= CANCEL__SLAB_NAMES
                                  ? atomic_fetch_add_explicit(&s->names_used, (uint32_t)len, memory_order_relaxed)
                                  : CANCEL__SLAB_NAMES;
                char *copy = at + len <= CANCEL__SLAB_NAMES ? s->names + at : malloc(len);
                if (!copy) {
                    cancel__slab_release(s, 1); /* the slot goes unused */
                    return NULL;
                }
                rec->name = memcpy(copy, name, len);
                rec->name_owned = copy != s->names + at;
            }
            return rec;
        }
        struct cancel__slab *fresh = slab_get(g->pool);
        if (!fresh)
            return NULL;
        fresh->next = s;
        atomic_init(&fresh->used, 0);
        atomic_init(&fresh->names_used, 0);
        atomic_init(&fresh->live, CANCEL__SLAB_RECORDS);
        /* release: the slab's fields before it is seen. Fails if another
         * spawner installed one first: use theirs. */
        if (!atomic_compare_exchange_strong_explicit(&g->slab, &s, fresh, memory_order_release,
                                                     memory_order_relaxed)) {
            atomic_store_explicit(&fresh->live, 1, memory_order_relaxed);
            cancel__slab_release(fresh, 1); /* back to the cache */
        }
    }
}

/* A popped task that will not run: end it (unless its cancellation did),
 * settle its registration, drop the queue's reference. */
static void drop_task(struct cancel_task *t)
{
    end_unrun(t, CANCEL__NO_TIME);
    if (t->owned) {
        /* A callback that is ending it finishes first. */
        cancel_unregister(&((struct cancel__owned *)(void *)t)->reg);
        cancel_source_free(atomic_exchange_explicit(&t->src, NULL, memory_order_relaxed));
    }
    cancel__task_unref(t);
}

/* A pool thread runs (or drops) a task it popped. */
static void run_task(struct cancel__worker *w, struct cancel_task *t)
{
    struct cancel_pool *p = w->pool;
    struct cancel_group *g = t->group;
    uint32_t old;
    /* relaxed: a pool being freed cancels every token; this only keeps
     * threads from starting tasks that free is about to cancel. */
    if (atomic_load_explicit(&p->closing, memory_order_relaxed)) {
        w->last_end = CANCEL__NO_TIME;
        drop_task(t);
        return;
    }
    /* relaxed: a first look, that writes nothing to a task that already
     * ended (a cancelled group leaves many in the queue). */
    if (cancel__task_state(atomic_load_explicit(&t->state, memory_order_relaxed)) != CANCEL_TASK_PENDING ||
        (atomic_store_explicit(&t->worker, w, memory_order_relaxed),
         !task_move(t, CANCEL_TASK_PENDING, CANCEL_TASK_RUNNING, &old))) {
        w->last_end = CANCEL__NO_TIME;
        drop_task(t); /* its cancellation came first; its group may be gone */
        /* Dropping what a cancel left behind is housekeeping: now and then
         * let the threads that have real work to do (the cancelled tasks
         * returning, their waiter) have the CPU. */
        if (++w->dropped % 64 == 0)
            sched_yield();
        return;
    }
    /* Ours now, and still counted in its group, so its token is valid. A
     * token cancelled before we got here: it never runs. */
    if (cancel_token_is_requested(t->tok)) {
        if (g) {
            int64_t at = atomic_load_explicit(&g->cancelled, memory_order_relaxed);
            struct cancel__record *rec = cancel__record_of(t);
            if (at == CANCEL__NO_TIME)
                at = cancel_now();
            int64_t none = CANCEL__NO_TIME;
            atomic_compare_exchange_strong_explicit(&rec->cancelled, &none, at, memory_order_relaxed,
                                                    memory_order_relaxed);
            atomic_store_explicit(&rec->ended, at, memory_order_relaxed);
        }
        w->last_end = CANCEL__NO_TIME;
        (void)task_move(t, CANCEL_TASK_RUNNING, CANCEL_TASK_CANCELED, &old);
        task_ended(t, old, CANCEL_TASK_CANCELED);
        drop_task(t); /* settles its registration, drops the queue's reference */
        return;
    }

    struct cancel_task *outer = atomic_load_explicit(&w->current, memory_order_relaxed);
    atomic_store_explicit(&w->current, t, memory_order_relaxed);
    struct cancel__record *rec = g ? cancel__record_of(t) : NULL;
    if (rec) {
        /* Straight on from the previous group task: its end is our start. */
        int64_t start = w->last_end != CANCEL__NO_TIME ? w->last_end : cancel_now();
        atomic_store_explicit(&rec->started, start, memory_order_relaxed);
    }
    int r = t->fn(t->arg, t->tok);
    atomic_store_explicit(&w->current, outer, memory_order_relaxed);

    bool requested = cancel_token_is_requested(t->tok);
    cancel_task_state st = r == 0                          ? CANCEL_TASK_COMPLETED
                           : r == ECANCELED && requested ? CANCEL_TASK_CANCELED
                                                         : CANCEL_TASK_FAILED;
    if (t->owned)
        cancel_unregister(&((struct cancel__owned *)(void *)t)->reg); /* it never ran, or is over */
    atomic_store_explicit(&t->result, r, memory_order_relaxed);
    if (rec) {
        int64_t ended = cancel_now();
        w->last_end = ended;
        atomic_store_explicit(&rec->ended, ended, memory_order_relaxed);
        if (!requested) {
            /* It returned before the request reached it. A sweep notes
             * running tasks just before the token reads cancelled, so one
             * may have noted it meanwhile: that note is withdrawn, and no
             * later sweep notes it (its CAS expects CANCEL__NO_TIME) -
             * including the sweep of its own failure below, so a failing
             * task is not shown as asked by the request it made. */
            atomic_store_explicit(&rec->cancelled, CANCEL__NOT_ASKED, memory_order_relaxed);
        } else {
            /* Asked while it ran. If the group's registration has not
             * reached it yet, the request came when the group noted it. */
            int64_t at = atomic_load_explicit(&g->cancelled, memory_order_relaxed);
            int64_t none = CANCEL__NO_TIME;
            atomic_compare_exchange_strong_explicit(&rec->cancelled, &none, at != CANCEL__NO_TIME ? at : ended,
                                                    memory_order_relaxed, memory_order_relaxed);
            atomic_store_explicit(&rec->cpu_at_end, cpu_ns(w), memory_order_relaxed);
        }
        if (st == CANCEL_TASK_FAILED) {
            /* Fail fast: the first failure in time cancels the group, with
             * this task's error and name as the cause. */
            int none = 0;
            if (atomic_compare_exchange_strong_explicit(&g->first_error, &none, r, memory_order_relaxed,
                                                        memory_order_relaxed)) {
                atomic_store_explicit(&g->first_failed, rec, memory_order_relaxed);
                (void)cancel__group_cancel(g, r, rec->name); /* we are still counted: g stays */
            }
        }
    } else {
        w->last_end = CANCEL__NO_TIME;
    }
    bool moved = task_move(t, CANCEL_TASK_RUNNING, st, &old);
    (void)moved; /* only this thread moves a RUNNING task */
    task_ended(t, old, st);
    if (t->owned)
        cancel_source_free(atomic_exchange_explicit(&t->src, NULL, memory_order_relaxed));
    cancel__task_unref(t);
}

/*
 * Which token a task gets. A plain task given CANCEL_TOKEN_NONE gets the
 * pool's token, and a group task the group's: nothing else can cancel
 * them, and a task cannot cancel its token, so a source of its own would
 * add nothing but its cost. Only a plain task given a token of the caller's
 * gets its own source, linked to that token and to the pool's source, with
 * a registration that ends it if cancelled while queued. Queued tasks of a
 * group are ended by the group (cancel__group_cancel); queued tasks on
 * the pool's token end when cancel_pool_free drains them.
 *
 * Submitting while the pool is being freed. The pool's own tasks may
 * submit then: `closing` refuses them, and their thread drains the queue
 * after they return, before the join. Other threads may not use a pool
 * being freed, with one exception: a group spawn, since the group keeps the
 * pool's memory. A spawn looks at `closing` again after its push, behind
 * a seq_cst fence, against cancel_pool_free's store of `closing` followed
 * by a seq_cst fence, before its threads' last look at the queue: either a
 * thread sees the task, or the spawner sees `closing` and ends the task
 * itself; a node left in the queue then is dropped when the pool's memory
 * goes.
 */
int cancel__task_submit(struct cancel_pool *p, struct cancel_group *g, cancel_token tok, cancel_task_fn *fn,
                        void *arg, const char *name, struct cancel_task **out)
{
    /* relaxed: see above; a read-mostly line. */
    if (atomic_load_explicit(&p->closing, memory_order_relaxed))
        return ESHUTDOWN;
    /* A plain task's name is not kept: only reports (of groups) show names. */
    bool owned = !g && tok.cancel__impl;
    struct cancel__record *rec = g ? record_new(g, name) : NULL;
    struct cancel_task *t = g ? (rec ? &rec->t : NULL)
                              : owned ? malloc(sizeof(struct cancel__owned))
                                      : task_block_new(p);
    if (!t)
        return ENOMEM;
    cancel_source *src = NULL;
    if (owned) {
        cancel_token parents[2] = {tok, cancel_source_token(p->src)};
        src = cancel_source_new_linked(parents, 2);
        if (!src) {
            free(t);
            return ENOMEM;
        }
    }
    atomic_init(&t->q.next, NULL);
    atomic_init(&t->state, CANCEL_TASK_PENDING);
    atomic_init(&t->refs, 1u + (out != NULL) + (g != NULL));
    t->fn = fn;
    t->arg = arg;
    t->pool = p;
    t->group = g;
    t->tok = g ? tok : src ? cancel_source_token(src) : cancel_source_token(p->src);
    atomic_init(&t->src, src);
    t->waiters = NULL;
    atomic_init(&t->result, ECANCELED); /* what a task that never runs returns */
    t->owned = owned;
    atomic_init(&t->worker, NULL);
    atomic_init(&t->nested_in, NULL);
    if (out)
        *out = t;
    if (g) {
        int64_t now = cancel_now();
        atomic_init(&rec->queued, now);
        atomic_init(&rec->started, CANCEL__NO_TIME);
        atomic_init(&rec->ended, CANCEL__NO_TIME);
        atomic_init(&rec->cancelled, CANCEL__NO_TIME);
        atomic_init(&rec->cpu_at_request, CANCEL__NO_TIME);
        atomic_init(&rec->cpu_at_end, CANCEL__NO_TIME);
        atomic_init(&rec->blocked_at_request, NULL);
        atomic_init(&rec->blocked_fd_at_request, -1);
        rec->children = NULL;
        struct cancel__record *head = atomic_load_explicit(&g->tasks, memory_order_relaxed);
        do
            rec->gnext = head;
        /* release: readers of the list see the record. */
        while (!atomic_compare_exchange_weak_explicit(&g->tasks, &head, rec, memory_order_release,
                                                      memory_order_relaxed));
        cancel_token outer = cancel_source_token(g->outer);
        if (cancel_token_is_requested(outer) || cancel_token_is_requested(tok)) {
            end_unrun(t, now); /* into a cancelled group: accepted, never run */
            cancel__task_unref(t);
            return 0;
        }
        q_link(p, &t->q, memory_order_release);
        /* seq_cst: three Dekker pairs at once, each with a fence on the
         * other side: cancel__group_cancel (after the mark of the
         * group's token or of its outer source, before its walk of the
         * list): it finds this task, or we see the mark below;
         * cancel_pool_free (see above): we see `closing`, or its threads see
         * the task; and the parking pair: an idle thread sees the task, or
         * we see it idle. */
        atomic_thread_fence(memory_order_seq_cst);
        if (cancel_token_is_requested(outer) || cancel_token_is_requested(tok) ||
            atomic_load_explicit(&p->closing, memory_order_relaxed))
            end_unrun(t, CANCEL__NO_TIME); /* the node stays; a thread, or the pool's end, drops it */
    } else {
        if (owned && cancel_register(t->tok, &((struct cancel__owned *)(void *)t)->reg, task_cancelled, t) != 0) {
            /* Born cancelled: task_cancelled ended it inline; never queued. */
            cancel_source_free(atomic_exchange_explicit(&t->src, NULL, memory_order_relaxed));
            cancel__task_unref(t);
            return 0;
        }
        q_link(p, &t->q, memory_order_release);
        /* seq_cst: the producer's half of the parking pair (see the top). */
        atomic_thread_fence(memory_order_seq_cst);
    }
    if (atomic_load_explicit(&p->nidle, memory_order_relaxed) != 0)
        wake_one(p);
    return 0;
}

int cancel_task_run(cancel_pool *pool, cancel_token tok, cancel_task_fn *fn, void *arg, const char *name,
                    cancel_task **out)
{
    if (out)
        *out = NULL;
    if (!pool || !fn)
        return EINVAL;
    return cancel__task_submit(pool, NULL, tok, fn, arg, name, out);
}

cancel_task_state cancel_task_state_of(const cancel_task *task)
{
    if (!task)
        return CANCEL_TASK_PENDING;
    /* acquire: pairs with the move to the ended state (task_move). */
    return cancel__task_state(atomic_load_explicit(&task->state, memory_order_acquire));
}

int cancel_task_result(const cancel_task *task)
{
    if (!task)
        return EINVAL;
    if (!cancel__task_ended(atomic_load_explicit(&task->state, memory_order_acquire)))
        return EINPROGRESS;
    return atomic_load_explicit(&task->result, memory_order_relaxed);
}

void cancel_task_free(cancel_task *task)
{
    if (task)
        cancel__task_unref(task);
}

/* ------------------------------------------------------------------------
 * Waiting, with help
 * ------------------------------------------------------------------------ */

static bool task_done(void *obj)
{
    struct cancel_task *t = obj;
    return cancel__task_ended(atomic_load_explicit(&t->state, memory_order_acquire));
}

static bool task_subscribe(void *obj, struct cancel__waiter *w)
{
    struct cancel_task *t = obj;
    pthread_mutex_t *m = cancel__stripe(t);
    pthread_mutex_lock(m);
    /* acq_rel: whichever of this and the ender's move comes second in the
     * word's order sees the other: the ender sees WAITERS and wakes us
     * (under the stripe, after we listed ourselves), or we see the end. */
    uint32_t s = atomic_fetch_or_explicit(&t->state, CANCEL__TASK_WAITERS, memory_order_acq_rel);
    bool listed = !cancel__task_ended(s);
    if (listed)
        cancel__waiters_add(&t->waiters, w);
    pthread_mutex_unlock(m);
    return listed;
}

/* Runs t on a pool thread that waits inside task `me` (NULL: a thread of
 * the pool waiting outside any task); the report shows me waiting in `what`
 * meanwhile. */
static void run_nested(struct cancel__worker *w, struct cancel_task *me, const char *what, struct cancel_task *t)
{
    w->last_end = CANCEL__NO_TIME;
    if (me)
        atomic_store_explicit(&me->nested_in, what, memory_order_relaxed);
    run_task(w, t);
    if (me)
        atomic_store_explicit(&me->nested_in, NULL, memory_order_relaxed);
}

int cancel__wait(const struct cancel__waitable *wb, cancel_token wait_tok, int64_t timeout_ns)
{
    /* A cancelled wait token comes first, before the arguments, except
     * that what has ended wins over it. */
    if (cancel_token_is_requested(wait_tok))
        return wb->done(wb->obj) ? 0 : ECANCELED;
    if (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE)
        return EINVAL;
    if (wb->done(wb->obj))
        return 0;
    struct cancel__until u;
    int r = cancel__until_begin(&u, wait_tok, timeout_ns);
    if (r)
        return r;
    struct cancel__worker *w = self;
    _Atomic uint32_t *word = w ? w->parker : cancel__parker();
    struct cancel__waiter node = {NULL, NULL, word};
    cancel_registration reg = CANCEL_REGISTRATION_INIT;
    bool owed = false; /* a producer woke us for work we did not take */
    bool spun = false;
    if (!wb->subscribe(wb->obj, &node))
        goto out;
    (void)cancel_register(cancel__until_token(&u), &reg, cancel__parker_wake_cb, word);
    struct cancel_task *me = w ? atomic_load_explicit(&w->current, memory_order_relaxed) : NULL;
    for (;;) {
        /* acquire: pairs with the release of whoever woke us (wake.c). */
        atomic_exchange_explicit(word, 0, memory_order_acquire);
        if (wb->done(wb->obj)) {
            r = 0;
            break;
        }
        if ((r = cancel__until_check(&u)) != 0)
            break;
        if (w) {
            /* A pool thread runs its pool's queued work meanwhile: waiting
             * inside a task never starves the pool. */
            struct cancel_task *t = q_pop(w->pool);
            if (t) {
                if (owed)
                    pass_on(w->pool);
                owed = false;
                run_nested(w, me, wb->what, t);
                continue;
            }
        }
        if (!spun) {
            /* What we wait for often ends within microseconds (the last
             * tasks of a cancelled group): look a little before sleeping. */
            spun = true;
            for (int i = 0; i < 256 && !wb->done(wb->obj); i++)
                cancel__cpu_relax();
            continue;
        }
        int64_t until = cancel__until_kernel_deadline(&u); /* -1 once the manual clock is on */
        if (w) {
            struct cancel_task *t;
            enum idle next = idle_prepare(w, &t);
            if (next == IDLE_GOT) {
                idle_got(w, owed);
                owed = false;
                run_nested(w, me, wb->what, t);
                continue;
            }
            if (next == IDLE_NAP) {
                int64_t soon = cancel__clock_ns() + NAP_NS;
                if (until < 0 || soon < until)
                    until = soon;
            }
        }
        cancel__blocked_enter(wb->what, -1);
        cancel__parker_sleep(word, until);
        cancel__blocked_leave();
        if (w && !idle_remove(w))
            owed = true; /* kept until a task is taken: a nap must not drop it */
    }
    cancel_unregister(&reg);
    pthread_mutex_t *m = cancel__stripe(wb->obj);
    pthread_mutex_lock(m);
    cancel__waiters_remove(&node);
    pthread_mutex_unlock(m);
out:
    cancel__until_end(&u);
    if (owed && q_peek(w->pool))
        wake_one(w->pool); /* pass the wake-up on */
    return r;
}

int cancel_task_wait(cancel_token wait_tok, cancel_task *task, int64_t timeout_ns)
{
    if (!task)
        return cancel_token_is_requested(wait_tok) ? ECANCELED : EINVAL;
    struct cancel__waitable wb = {task_done, task_subscribe, task, "cancel_task_wait"};
    return cancel__wait(&wb, wait_tok, timeout_ns);
}

/* ------------------------------------------------------------------------
 * Pools
 * ------------------------------------------------------------------------ */

/* How long an idle thread looks for work before it parks. First a few
 * rounds of pauses, a microsecond or two: work that comes at once. Then,
 * only if its last park was short (work comes in dense bursts, and each
 * park costs the producer, often the bottleneck, a wake-up system call), a
 * few yields: with more threads than CPUs they hand the CPU to the thread
 * that brings the work instead of spinning against it. After a long park
 * (work comes rarely, and how soon it starts matters more) it parks again
 * at once: a thread that yielded before it parked is woken later by the
 * scheduler (0.6-1.3 us here). */
#define SPIN_ROUNDS 8
#define SPIN_PAUSES 8
#define SPIN_YIELDS 16
#define SHORT_PARK_NS (100 * 1000)

static void *worker_main(void *arg)
{
    struct cancel__worker *w = arg;
    struct cancel_pool *p = w->pool;
    self = w;
    clockid_t cid;
    bool has_clock = pthread_getcpuclockid(pthread_self(), &cid) == 0;
    pthread_mutex_lock(&p->report_mu);
    w->cpu_clock = cid;
    w->has_cpu_clock = has_clock;
    w->blocked = cancel__blocked_here();
    pthread_mutex_unlock(&p->report_mu);

    int spins = 0;
    bool claimed = false; /* a producer woke us, and we have not taken a task since */
    for (;;) {
        struct cancel_task *t = q_pop(p);
        if (t) {
            if (claimed)
                pass_on(p);
            claimed = false;
            run_task(w, t);
            spins = 0;
            continue;
        }
        w->last_end = CANCEL__NO_TIME;
        if (spins < SPIN_ROUNDS + w->yields) {
            if (spins++ < SPIN_ROUNDS)
                for (int i = 0; i < SPIN_PAUSES && !q_peek(p); i++)
                    cancel__cpu_relax();
            else
                sched_yield();
            continue;
        }
        /* acquire: pairs with cancel_pool_free's store, which comes after
         * its fence: a late group spawn's task is in the queue for us, or
         * the spawn saw `closing` and ended the task itself. */
        if (atomic_load_explicit(&p->exiting, memory_order_acquire) && !q_peek(p))
            break;
        atomic_exchange_explicit(w->parker, 0, memory_order_acquire);
        switch (idle_prepare(w, &t)) {
        case IDLE_GOT:
            idle_got(w, claimed);
            claimed = false;
            run_task(w, t);
            spins = 0;
            continue;
        case IDLE_SLEEP: {
            int64_t parked = cancel__clock_ns();
            cancel__parker_sleep(w->parker, -1);
            w->yields = cancel__clock_ns() - parked < SHORT_PARK_NS ? SPIN_YIELDS : 0;
            break;
        }
        case IDLE_NAP:
            cancel__parker_sleep(w->parker, cancel__clock_ns() + NAP_NS);
            break;
        case IDLE_EXIT:
            break;
        }
        if (!idle_remove(w))
            claimed = true;
        spins = 0;
    }

    pthread_mutex_lock(&p->report_mu);
    w->blocked = NULL;
    pthread_mutex_unlock(&p->report_mu);
    free_list(w->spare);
    w->spare = NULL;
    self = NULL;
    return NULL;
}

static void pool_destroy(struct cancel_pool *p)
{
    /* Nodes a late group spawn left behind (it ended their tasks). */
    for (struct cancel_task *t; (t = q_pop(p)) != NULL;)
        drop_task(t);
    for (struct cancel__spare *b = atomic_load_explicit(&p->spare, memory_order_acquire), *next; b; b = next) {
        next = b->next_batch;
        free_list(b);
    }
    for (struct cancel__slab *s = atomic_load_explicit(&p->slabs, memory_order_acquire), *next; s; s = next) {
        next = s->next;
        free(s);
    }
    cancel_source_free(p->src);
    pthread_mutex_destroy(&p->report_mu);
    free(p);
}

bool cancel__pool_ref(struct cancel_pool *p)
{
    /* relaxed: the caller already holds the pool (its handle or a group). */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    if (atomic_load_explicit(&p->closing, memory_order_acquire)) {
        cancel__pool_unref(p);
        return false;
    }
    return true;
}

void cancel__pool_unref(struct cancel_pool *p)
{
    /* acq_rel: the last holder sees everyone's writes before it frees. */
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        pool_destroy(p);
}

/* Stops the threads started so far (cancel_pool_new's failure path and
 * cancel_pool_free). */
static void stop_threads(struct cancel_pool *p, size_t started)
{
    /* release: pairs with the threads' acquire loads. A thread sets its
     * idle bit before it reads the flag: wake_all's exchange of that word
     * below either finds the bit, or came first and the thread's fetch_or
     * reads after it (acq_rel both: it then sees the flag). */
    atomic_store_explicit(&p->exiting, 1, memory_order_release);
    wake_all(p);
    for (size_t i = 0; i < started; i++)
        (void)cancel__thread_join(p->workers[i].thread, -1);
}

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

cancel_pool *cancel_pool_new(size_t threads, const char *name)
{
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (size_t)n : 1;
    }
    if (threads > 65536) {
        errno = EINVAL;
        return NULL;
    }
    size_t len = name ? strlen(name) + 1 : 0;
    size_t head = round_up(sizeof(struct cancel_pool), CANCEL__CACHELINE);
    size_t words = (threads + 63) / 64;
    size_t mask_at = round_up(head + threads * sizeof(struct cancel__worker), CANCEL__CACHELINE);
    size_t size = round_up(mask_at + words * sizeof(uint64_t) + len, CANCEL__CACHELINE);
    struct cancel_pool *p = aligned_alloc(CANCEL__CACHELINE, size);
    if (!p) {
        errno = ENOMEM;
        return NULL;
    }
    memset(p, 0, size);
    p->workers = (struct cancel__worker *)(void *)((char *)p + head);
    p->idle_mask = (_Atomic uint64_t *)(void *)((char *)p + mask_at);
    for (size_t i = 0; i < words; i++)
        atomic_init(&p->idle_mask[i], 0);
    p->name = name ? memcpy((char *)(p->idle_mask + words), name, len) : NULL;
    p->nthreads = threads;
    atomic_init(&p->stub.next, NULL);
    atomic_init(&p->tail, &p->stub);
    atomic_init(&p->qlock, 0);
    atomic_init(&p->head, &p->stub);
    atomic_init(&p->nidle, 0);
    atomic_init(&p->exiting, 0);
    atomic_init(&p->closing, 0);
    atomic_init(&p->refs, 1);
    atomic_init(&p->spare, NULL);
    atomic_init(&p->spare_lock, 0);
    atomic_init(&p->slabs, NULL);
    atomic_init(&p->nslabs, 0);

    pthread_mutex_init(&p->report_mu, NULL);
    p->src = cancel_source_new();
    if (!p->src || (name && cancel_source_set_name(p->src, name) != 0)) {
        pool_destroy(p);
        errno = ENOMEM;
        return NULL;
    }
    char tname[16];
    snprintf(tname, sizeof tname, "cancel-%s", name ? name : "pool");
    for (size_t i = 0; i < threads; i++) {
        struct cancel__worker *w = &p->workers[i];
        w->pool = p;
        w->id = i;
        atomic_init(&w->parker_word, 0);
        w->parker = &w->parker_word;
        atomic_init(&w->current, NULL);
        w->last_end = CANCEL__NO_TIME;
        int err = cancel__thread_start(&w->thread, worker_main, w, tname);
        if (err) {
            atomic_store_explicit(&p->closing, 1, memory_order_relaxed);
            stop_threads(p, i);
            pool_destroy(p);
            errno = err;
            return NULL;
        }
    }
    return p;
}

void cancel_pool_free(cancel_pool *p)
{
    if (!p)
        return;
    /* No task starts from now on, and no submission is accepted. release:
     * pairs with cancel__pool_ref's acquire load; the fence is our half of
     * the pair with a group spawn (see cancel__task_submit), before our
     * threads' last look at the queue (they see `exiting`, stored below,
     * first). */
    atomic_store_explicit(&p->closing, 1, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    /* Every task's token descends from the pool's source: running tasks
     * are asked to stop, queued tasks of groups and those with tokens of
     * their own end CANCELED through their registrations. */
    cancel_source_cancel(p->src);
    /* The rest of the queue (tasks on the pool's token) ends here and now,
     * beside the threads, which drop what they pop from now on. A thread
     * holding the consumer lock makes us give up early: the threads finish
     * the job. */
    for (int busy = 0; busy < 64 && q_peek(p);) {
        struct cancel_task *t = q_pop(p);
        if (t)
            drop_task(t);
        else
            busy++, cancel__cpu_relax();
    }
    /* The threads drop what is queued, finish what runs, and leave. The
     * joins make everything they did visible to us. */
    stop_threads(p, p->nthreads);
    cancel__pool_unref(p);
}

size_t cancel_pool_threads(const cancel_pool *pool)
{
    return pool ? pool->nthreads : 0;
}
