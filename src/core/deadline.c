/*
 * Deadlines and time, as the user sees them: cancel_source_cancel_after,
 * cancel_token_deadline, and the manual clock's switch and advance. The
 * wheel itself is timer.c's, the library thread worker.c's, the clock
 * clock.c's.
 */
#include "clock.h"
#include "lock.h"
#include "ref.h"
#include "request.h"
#include "timer.h"
#include "worker.h"

#include <stdlib.h>
#include <string.h>

int cancel_source_cancel_after(cancel_source *s, int64_t delay_ns)
{
    if (!s || !cancel__source_usable(s, "cancel_source_cancel_after"))
        return EINVAL;
    if (delay_ns == CANCEL_INFINITE) {
        /* Disarms a pending deadline; a cancelled source keeps the one it had. */
        if (cancel__timer_slot_live(atomic_load_explicit(&s->timer_slot, memory_order_relaxed)))
            cancel__timer_disarm(s, false);
        return 0;
    }
    if (delay_ns < 0)
        return EINVAL;
    if (atomic_load_explicit(cancel__word(s), memory_order_acquire) & ST_REQUESTED)
        return ECANCELED;
    if (delay_ns == 0)
        return cancel__cancel_async(s, cancel__reason_bits(CANCEL_REASON_TIMEOUT, 0)) ? 0 : ECANCELED;
    if (cancel__worker_ensure() != 0)
        return EAGAIN;
    /* The absolute deadline on the precise clock. (The coarse clock is seven
     * times cheaper here, but it may lag by more than its resolution when
     * ticks are late, and a deadline must never fire early.) */
    bool wake;
    int err = cancel__timer_arm(s, cancel__add_sat(cancel__now(), delay_ns), &wake);
    if (err == 0)
        cancel__worker_filed(wake);
    return err;
}

/* cancel_token_deadline's walk up the ancestors: an explicit stack of
 * retained sources and a set of those already seen (a diamond is walked
 * once), on the C stack until they outgrow it. */
struct walk {
    struct cancel_source **stack, *stack0[16];
    size_t n, cap;
    struct cancel_source **seen, *seen0[32];
    size_t nseen, seen_cap; /* open addressing; seen_cap a power of two */
    bool oom;
};

static bool seen_insert(struct walk *k, struct cancel_source *s)
{
    if (2 * (k->nseen + 1) > k->seen_cap) {
        size_t cap = 2 * k->seen_cap;
        struct cancel_source **t = calloc(cap, sizeof *t);
        if (!t) {
            k->oom = true;
            return true; /* treat as seen: the walk stays finite */
        }
        for (size_t i = 0; i < k->seen_cap; i++) {
            struct cancel_source *x = k->seen[i];
            if (!x)
                continue;
            size_t j = ((uintptr_t)x >> 6) & (cap - 1);
            while (t[j])
                j = (j + 1) & (cap - 1);
            t[j] = x;
        }
        if (k->seen != k->seen0)
            free(k->seen);
        k->seen = t;
        k->seen_cap = cap;
    }
    size_t j = ((uintptr_t)s >> 6) & (k->seen_cap - 1);
    while (k->seen[j]) {
        if (k->seen[j] == s)
            return true;
        j = (j + 1) & (k->seen_cap - 1);
    }
    k->seen[j] = s;
    k->nseen++;
    return false;
}

static bool push(struct walk *k, struct cancel_source *s)
{
    if (k->n == k->cap) {
        size_t cap = 2 * k->cap;
        struct cancel_source **t = malloc(cap * sizeof *t);
        if (!t) {
            k->oom = true;
            return false;
        }
        for (size_t i = 0; i < k->n; i++)
            t[i] = k->stack[i];
        if (k->stack != k->stack0)
            free(k->stack);
        k->stack = t;
        k->cap = cap;
    }
    k->stack[k->n++] = s;
    return true;
}

/* The name of s (or the origin it reports, for a source received from
 * another process), copied; NULL if none or no memory. s is held. */
static char *origin_copy(struct cancel_source *s)
{
    struct cancel__extra *ex = atomic_load_explicit(&s->extra, memory_order_acquire);
    if (!ex)
        return NULL;
    const char *n = ex->deadline_origin ? ex->deadline_origin : atomic_load_explicit(&ex->name, memory_order_acquire);
    return n ? strdup(n) : NULL;
}

int64_t cancel_token_deadline(cancel_token tok)
{
    return cancel__token_deadline_origin(tok, NULL);
}

int64_t cancel__token_deadline_origin(cancel_token tok, char **origin)
{
    if (origin)
        *origin = NULL;
    struct cancel_source *s = cancel__source_of(tok);
    if (!s)
        return CANCEL_INFINITE;
    if (!(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_LINKED)) {
        int64_t d = cancel__timer_deadline(s); /* the common case: nothing to walk */
        if (origin && d != CANCEL_INFINITE)
            *origin = origin_copy(s);
        return d;
    }

    struct walk k = {.cap = 16, .seen_cap = 32};
    k.stack = k.stack0;
    k.seen = k.seen0;
    for (size_t i = 0; i < k.seen_cap; i++)
        k.seen[i] = NULL;
    int64_t best = INT64_MAX;
    cancel__retain(s);
    seen_insert(&k, s);
    k.stack[k.n++] = s;
    while (k.n) {
        struct cancel_source *x = k.stack[--k.n];
        int64_t d = cancel__timer_deadline(x);
        if (d != CANCEL_INFINITE && d < best) {
            best = d;
            if (origin) { /* whose deadline it is, while we hold x */
                free(*origin);
                *origin = origin_copy(x);
            }
        }
        if (atomic_load_explicit(cancel__word(x), memory_order_relaxed) & ST_LINKED) {
            struct cancel__linked *l = (struct cancel__linked *)x;
            /* Under x's lock, x's links stay hooked (cancel_source_free sets
             * FREED under it before unhooking), so each parent they name
             * is there to be retained. */
            cancel__held held = cancel__source_lock(x);
            if (!(atomic_load_explicit(cancel__word(x), memory_order_relaxed) & ST_FREED)) {
                for (size_t i = 0; i < l->nlinks; i++) {
                    struct cancel_source *p = atomic_load_explicit(&l->links[i].src, memory_order_relaxed);
                    /* A parent freed uncancelled can no longer cancel x. */
                    if (!p || (atomic_load_explicit(cancel__word(p), memory_order_relaxed) & (ST_DEAD | ST_FREED)))
                        continue;
                    if (seen_insert(&k, p))
                        continue;
                    if (!push(&k, p)) /* out of memory: a partial answer */
                        break;
                    cancel__retain(p);
                }
            }
            cancel__source_unlock(x, held);
        }
        cancel__release(x);
    }
    if (k.stack != k.stack0)
        free(k.stack);
    if (k.seen != k.seen0)
        free(k.seen);
    return best == INT64_MAX ? CANCEL_INFINITE : best;
}

int cancel_clock_use_manual(bool on)
{
    if (cancel__clock_set_manual(on)) {
        /* Timed waits and the library thread now follow the other clock:
         * each looks again (the thread may sleep until a real deadline). */
        cancel__clock_wake_sleepers(INT64_MAX);
        if (cancel__worker_running())
            cancel__worker_kick();
    }
    return 0;
}

void cancel_clock_advance(int64_t ns)
{
    if (ns <= 0 || !cancel__clock_move(ns))
        return;
    /* Fire here, so that every source whose deadline is due is cancelled
     * when this returns; their callbacks run on the library thread, and we
     * wait for them, so that a wait woken by a callback (a semaphore's, a
     * queue's) has been woken too. */
    int64_t next;
    struct cancel_source *due = cancel__timer_fire_due(&next);
    bool fired = due != NULL;
    while (due) {
        struct cancel_source *n = due->next_pending;
        cancel__worker_post(due);
        due = n;
    }
    cancel__clock_wake_sleepers(cancel__now());
    if (fired)
        cancel__worker_drain();
}
