/*
 * Deadlines: one binary min-heap for the whole process, under one lock, and
 * the library thread (worker.c) sleeping until the earliest deadline.
 *
 * Deadlines are built for the common case where they never fire: arming and
 * disarming are O(log n) heap operations under a short lock, with no system
 * call unless the new deadline becomes the earliest one (then the library
 * thread is woken to sleep less). Each entry is 16 bytes in the heap array
 * plus the 4-byte slot index kept in the source, which is what makes
 * disarming (on free, reset, cancellation) O(log n). The array shrinks as
 * deadlines go, so memory returns once they are disarmed.
 *
 * Heap entries hold no reference. A source's slot is cleared, with release
 * order, only after the timer took the reference it needs to dispatch; so
 * cancel_source_free, which reads the slot with acquire, either sees it and
 * waits for the timer lock, or sees that reference.
 */
#include "internal.h"
#include "lock.h"
#include "platform.h"

#include <stdlib.h>
#include <string.h>

struct entry {
    int64_t deadline;
    struct cancel_source *src;
};

static struct {
    _Atomic uint32_t lock;
    struct entry *heap;  /* under lock */
    uint32_t size, cap;  /* under lock */
    int64_t sleep_until; /* under lock: when the library thread next looks */
} T = {.sleep_until = INT64_MAX};

static int64_t (*_Atomic clock_hook)(void);

int64_t cancel__timer_now(void)
{
    int64_t (*fn)(void) = atomic_load_explicit(&clock_hook, memory_order_acquire);
    return fn ? fn() : cancel__clock_ns();
}

bool cancel__timer_clock_is_real(void)
{
    return atomic_load_explicit(&clock_hook, memory_order_relaxed) == NULL;
}

/* For tests: replace the clock (NULL restores CLOCK_MONOTONIC). After moving
 * a manual clock, call cancel__timer_poke so the library thread looks. */
CANCEL_HIDDEN void cancel__timer_set_clock(int64_t (*fn)(void));
void cancel__timer_set_clock(int64_t (*fn)(void))
{
    atomic_store_explicit(&clock_hook, fn, memory_order_release);
    cancel__worker_kick();
}
CANCEL_HIDDEN void cancel__timer_poke(void);
void cancel__timer_poke(void)
{
    cancel__worker_kick();
}

static void place(uint32_t i, struct entry e)
{
    T.heap[i] = e;
    atomic_store_explicit(&e.src->timer_slot, i + 1, memory_order_relaxed);
}

static void sift_up(uint32_t i)
{
    struct entry e = T.heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (T.heap[parent].deadline <= e.deadline)
            break;
        place(i, T.heap[parent]);
        i = parent;
    }
    place(i, e);
}

static void sift_down(uint32_t i)
{
    struct entry e = T.heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= T.size)
            break;
        if (c + 1 < T.size && T.heap[c + 1].deadline < T.heap[c].deadline)
            c++;
        if (e.deadline <= T.heap[c].deadline)
            break;
        place(i, T.heap[c]);
        i = c;
    }
    place(i, e);
}

/* Under lock: removes the entry at i; the caller clears its source's slot. */
static void remove_at(uint32_t i)
{
    uint32_t last = --T.size;
    if (i != last) {
        struct entry moved = T.heap[last];
        int64_t old = T.heap[i].deadline;
        place(i, moved);
        if (moved.deadline < old)
            sift_up(i);
        else
            sift_down(i);
    }
    if (T.cap > 64 && T.size < T.cap / 4) {
        /* A fresh, smaller array rather than realloc: shrinking a large
         * (mmapped) block in place keeps at least a page of it. */
        struct entry *smaller = malloc((T.cap / 2) * sizeof *smaller);
        if (smaller) { /* on failure keeping the larger array is harmless */
            memcpy(smaller, T.heap, T.size * sizeof *smaller);
            free(T.heap);
            T.heap = smaller;
            T.cap /= 2;
        }
    }
}

static int arm(struct cancel_source *s, int64_t deadline)
{
    cancel__lock(&T.lock);
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_REQUESTED) {
        cancel__unlock(&T.lock);
        return ECANCELED;
    }
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (slot) {
        int64_t old = T.heap[slot - 1].deadline;
        T.heap[slot - 1].deadline = deadline;
        if (deadline < old)
            sift_up(slot - 1);
        else
            sift_down(slot - 1);
    } else {
        if (T.size == T.cap) {
            uint32_t ncap = T.cap ? T.cap * 2 : 64;
            struct entry *bigger = ncap > T.cap ? realloc(T.heap, (size_t)ncap * sizeof *bigger) : NULL;
            if (!bigger) {
                cancel__unlock(&T.lock);
                return ENOMEM;
            }
            T.heap = bigger;
            T.cap = ncap;
        }
        T.heap[T.size] = (struct entry){deadline, s};
        sift_up(T.size++);
    }
    bool wake = T.heap[0].src == s && deadline < T.sleep_until;
    if (wake)
        T.sleep_until = deadline;
    cancel__unlock(&T.lock);
    if (wake)
        cancel__worker_kick();
    return 0;
}

void cancel__timer_disarm(struct cancel_source *s)
{
    cancel__lock(&T.lock);
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (slot) {
        remove_at(slot - 1);
        atomic_store_explicit(&s->timer_slot, 0, memory_order_relaxed);
    }
    cancel__unlock(&T.lock);
}

int64_t cancel__timer_remaining(struct cancel_source *s)
{
    int64_t left = CANCEL_INFINITE;
    cancel__lock(&T.lock);
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (slot) {
        left = T.heap[slot - 1].deadline - cancel__timer_now();
        if (left < 0)
            left = 0;
    }
    cancel__unlock(&T.lock);
    return left;
}

size_t cancel__timer_pending(void)
{
    cancel__lock(&T.lock);
    size_t n = T.size;
    cancel__unlock(&T.lock);
    return n;
}

struct cancel_source *cancel__timer_fire_due(int64_t *next_deadline)
{
    struct cancel_source *fired = NULL;
    cancel__lock(&T.lock);
    int64_t now = cancel__timer_now();
    while (T.size && T.heap[0].deadline <= now) {
        struct cancel_source *s = T.heap[0].src;
        remove_at(0);
        /* Marked under the lock, so that try_reset, which disarms first,
         * sees the mark if the deadline fired. */
        bool won = cancel__mark(s, ST_REQUESTED | cancel__reason_bits(CANCEL_REASON_TIMEOUT, 0));
        if (won) {
            cancel__retain(s);
            s->next_pending = fired;
            fired = s;
        }
        /* release: pairs with the acquire load in cancel_source_free, which
         * must see our reference once it sees the slot empty. */
        atomic_store_explicit(&s->timer_slot, 0, memory_order_release);
    }
    T.sleep_until = T.size ? T.heap[0].deadline : INT64_MAX;
    *next_deadline = T.size ? T.heap[0].deadline : -1;
    cancel__unlock(&T.lock);
    return fired;
}

/* The absolute deadline `delay_ns` from now. Reading the precise clock costs
 * more than the rest of arming a deadline, so a delay long enough that one
 * tick of the coarse clock is under 1/256 of it reads the coarse clock and
 * adds one tick: never early, late by at most one tick (0.4 % at worst). */
static int64_t deadline_after(int64_t delay_ns)
{
    if (cancel__timer_clock_is_real()) {
        int64_t res = cancel__clock_coarse_res_ns();
        if (res <= delay_ns / 256)
            return cancel__add_sat(cancel__clock_coarse_ns() + res, delay_ns);
    }
    return cancel__add_sat(cancel__timer_now(), delay_ns);
}

int cancel_source_cancel_after(cancel_source *s, int64_t delay_ns)
{
    if (!s || !cancel__source_usable(s, "cancel_source_cancel_after"))
        return EINVAL;
    if (delay_ns == CANCEL_INFINITE) {
        if (atomic_load_explicit(&s->timer_slot, memory_order_relaxed))
            cancel__timer_disarm(s);
        return 0;
    }
    if (delay_ns < 0)
        return EINVAL;
    if (atomic_load_explicit(cancel__word(s), memory_order_acquire) & ST_REQUESTED)
        return ECANCELED;
    if (delay_ns == 0) {
        if (!cancel__mark(s, ST_REQUESTED | cancel__reason_bits(CANCEL_REASON_TIMEOUT, 0)))
            return ECANCELED;
        if (cancel__worker_wanted()) {
            cancel__retain(s);
            cancel__worker_post(s);
        }
        return 0;
    }
    int err = cancel__worker_ensure();
    if (err)
        return err;
    return arm(s, deadline_after(delay_ns));
}

void cancel__timer_atfork_prepare(void)
{
    cancel__lock(&T.lock);
}

void cancel__timer_atfork_parent(void)
{
    cancel__unlock(&T.lock);
}

void cancel__timer_atfork_child(void)
{
    atomic_store_explicit(&T.lock, 0, memory_order_relaxed);
    T.sleep_until = INT64_MAX;
}

int cancel_get_stats(cancel_stats *out)
{
    if (!out)
        return EINVAL;
    out->deadlines_pending = cancel__timer_pending();
    out->thread_running = cancel__worker_running();
    return 0;
}
