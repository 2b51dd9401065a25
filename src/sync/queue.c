/*
 * cancel_queue: a bounded MPMC queue of pointers, lock-free while it is
 * neither full nor empty, sleeping on futexes when it is.
 *
 * The ring. Each slot carries a sequence number saying whose turn it is
 * (the scheme of Dmitry Vyukov's bounded MPMC queue, counting in steps of
 * two so that a capacity of 1 works too): a slot at index i is free for the
 * push at position p (p % cap == i) when seq == 2p, holds that push's item
 * when seq == 2p + 1, and is free again for position p + cap when the pop
 * sets seq = 2(p + cap). A producer claims position `tail` by a CAS
 * only once it saw the slot free, writes the item, then publishes seq; a
 * consumer claims `head` only once it saw the slot full. So a claim never
 * fails after it is made: a push that returns an error never claimed a slot
 * (nothing enqueued), a pop that returns an error never claimed one (nothing
 * dequeued), and every claimed slot is completed by its claimant without
 * waiting for anyone. Positions and sequence numbers are 64-bit on every
 * target, 32-bit ones included, with CLOSED (below) as the top bit of
 * `tail`: 2^63 pushes take centuries at a billion a second, so they never
 * wrap into it (a size_t would, after 2^31 pushes on a 32-bit target).
 *
 * Closing. The top bit of `tail` is CLOSED. Close sets it with one RMW; a
 * producer's claim is a CAS on `tail`, which fails once the bit is set, so no
 * push enqueues after the close and none that claimed before it is lost.
 * Pops see the queue drained when the head slot is empty, `tail` is closed
 * and `head` equals its position: nothing is in flight and nothing can come.
 *
 * Sleeping. Two sides: consumers sleep on `cons` (the queue is empty),
 * producers on `prod` (it is full). Each side has a futex word `seq`, bumped
 * by every wake-up, and a state word: the number of counted sleepers and a
 * SIGNALED bit. A thread about to sleep counts itself, issues a fence, reads
 * seq, tries once more, and sleeps on seq (a bump after its read makes the
 * futex return at once). After a push publishes its slot it issues a fence
 * and reads cons.state; if a consumer is counted, it sets SIGNALED and, if
 * the bit was clear, bumps seq and wakes one. Counting and publishing form a
 * Dekker handshake (store the count, load the slot; store the slot, load the
 * count), hence the fences: either the pusher sees the sleeper or the
 * sleeper sees the item. They are asymmetric (platform.h): the pusher, on
 * every operation, pays a compiler barrier; the rare thread about to sleep
 * issues the process-wide barrier (membarrier). Without membarrier both are
 * full fences. Pops and producers mirror all of this.
 *
 * SIGNALED says "a wake-up is on its way": while it is set, pushes wake
 * nobody, so a burst of pushes onto a queue whose consumer is waking up
 * makes one system call, not one each. Each sleeper answers it: after
 * reading seq, before trying, it clears the bit (an RMW). A signaller whose
 * RMW comes after that clear bumps seq after the sleeper's read, so the
 * sleeper does not sleep through it; one whose RMW came before made its
 * item visible first (acq_rel on both RMWs), so the try sees it. A sleeper
 * that leaves clears the bit too, then, if others sleep and the next slot
 * of its side is ready, signals one of them: a push may have skipped its
 * wake-up for the bit it cleared, and a wake-up can be absorbed (a consumer
 * woken for the item at position p+1 finds p still being written and sleeps
 * again; p's publication then signals once for two items). A sleeper that
 * leaves without success (cancelled, timed out) hands on the wake-up it may
 * have been given the same way. With these, an item that is ready while a
 * consumer sleeps always has a consumer coming for it.
 *
 * Cancellation costs nothing on the fast path: an inline check of the token
 * before trying. Only a call about to sleep registers a callback on its
 * until-token (block.h); the callback bumps the side's seq and wakes every
 * sleeper of that side (a futex cannot name one of them); the others retry
 * and sleep again.
 *
 * Lifetime: the caller frees the queue when no thread uses it; callbacks
 * point at a side of the queue and are unregistered before the wait that
 * registered them returns.
 */
#include "block/block.h"
#include "platform/platform.h"
#include "sync/hook.h"

#include <cancel/sync.h>

#include <errno.h>
#include <limits.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#define CLOSED ((uint64_t)1 << 63)
#define LINE 64

struct slot {
    _Atomic uint64_t seq; /* whose turn: see above */
    void *item;         /* written by the claiming producer before seq is published */
};

/* A side's state word: SLEEPER per counted sleeper, plus SIGNALED. */
#define SIGNALED 1u
#define SLEEPER 2u

struct side {
    _Atomic uint32_t seq;   /* futex word of this side's sleepers; bumped by each wake-up */
    _Atomic uint32_t state; /* counted sleepers * SLEEPER | SIGNALED; RMW by sleepers and signallers */
};

struct cancel_queue {
    size_t cap;          /* r/o */
    size_t mask;         /* r/o: cap - 1 */
    bool pow2;           /* r/o: cap is a power of two: index by mask, not by % */
    struct slot *slots;  /* r/o: the ring */
    alignas(LINE) _Atomic uint64_t tail; /* next push position | CLOSED; CAS by producers */
    alignas(LINE) _Atomic uint64_t head; /* next pop position; CAS by consumers */
    alignas(LINE) struct side cons;    /* consumers waiting for an item */
    alignas(LINE) struct side prod;    /* producers waiting for room */
    alignas(LINE) struct slot ring[];
};

static inline struct slot *slot_at(const cancel_queue *q, uint64_t pos)
{
    return (struct slot *)&q->slots[q->pow2 ? (size_t)(pos & q->mask) : (size_t)(pos % q->cap)];
}

cancel_queue *cancel_queue_new(size_t capacity)
{
    if (capacity == 0 || capacity > (SIZE_MAX / 4 - sizeof(cancel_queue)) / sizeof(struct slot)) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = sizeof(cancel_queue) + capacity * sizeof(struct slot);
    size = (size + LINE - 1) / LINE * LINE;
    cancel_queue *q = aligned_alloc(LINE, size);
    if (!q) {
        errno = ENOMEM;
        return NULL;
    }
    memset(q, 0, sizeof *q);
    q->cap = capacity;
    q->mask = capacity - 1;
    q->pow2 = (capacity & (capacity - 1)) == 0;
    q->slots = q->ring;
    for (size_t i = 0; i < capacity; i++) {
        atomic_init(&q->ring[i].seq, 2 * (uint64_t)i);
        q->ring[i].item = NULL;
    }
    atomic_init(&q->tail, 0);
    atomic_init(&q->head, 0);
    atomic_init(&q->cons.seq, 0);
    atomic_init(&q->cons.state, 0);
    atomic_init(&q->prod.seq, 0);
    atomic_init(&q->prod.state, 0);
    cancel__fence_setup(); /* so that the hot side's fence is a compiler barrier */
    return q;
}

void cancel_queue_free(cancel_queue *q)
{
    free(q);
}

size_t cancel_queue_capacity(const cancel_queue *q)
{
    return q ? q->cap : 0;
}

size_t cancel_queue_len(const cancel_queue *q)
{
    if (!q)
        return 0;
    cancel_queue *m = (cancel_queue *)q;
    /* A snapshot: relaxed loads, clamped into [0, cap]. */
    uint64_t h = atomic_load_explicit(&m->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&m->tail, memory_order_relaxed) & ~CLOSED;
    if (t <= h)
        return 0;
    return t - h > q->cap ? q->cap : (size_t)(t - h);
}

static void wake(struct side *sd, int n)
{
    /* The bump is a release: a sleeper whose acquire load of seq reads it
     * sees what the waker did before (the slot it published or freed, the
     * close). */
    cancel__hook_bump_wake(&sd->seq, n);
}

/* Someone of `sd` sleeps: make sure one of them comes to look. If SIGNALED
 * is set, a wake-up was already given and its sleeper has not looked yet:
 * it will, after its own RMW on state, which comes after ours, so it sees
 * what we published (acq_rel on both). */
static void signal_one(struct side *sd)
{
    if (!(atomic_fetch_or_explicit(&sd->state, SIGNALED, memory_order_acq_rel) & SIGNALED))
        wake(sd, 1);
}

/* After a slot changed hands. The light fence orders the caller's store to
 * the slot before its load of the state; it pairs with the heavy fence of a
 * thread that counted itself a sleeper (wait_slow). */
static inline void notify(struct side *sd)
{
    cancel__fence_light();
    if (cancel__unlikely(atomic_load_explicit(&sd->state, memory_order_relaxed) >= SLEEPER))
        signal_one(sd);
}

/* A sleeper's change of state: add `delta` (a count of SLEEPER, maybe
 * negative) and clear SIGNALED, whose wake-up it answers by looking again.
 * acq_rel: see signal_one. Returns the new state. */
static uint32_t transition(struct side *sd, int delta)
{
    uint32_t s = atomic_load_explicit(&sd->state, memory_order_relaxed);
    uint32_t n;
    do
        n = (s + (uint32_t)delta) & ~SIGNALED;
    while (!atomic_compare_exchange_weak_explicit(&sd->state, &s, n, memory_order_acq_rel, memory_order_relaxed));
    return n;
}

/* 0, EAGAIN (full) or EPIPE (closed). */
static inline int try_push(cancel_queue *q, void *item)
{
    uint64_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    struct slot *sl;
    for (;;) {
        if (pos & CLOSED)
            return EPIPE;
        sl = slot_at(q, pos);
        /* acquire: pairs with the release in try_pop that freed the slot:
         * the consumer's read of the old item is done before we overwrite it. */
        uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - 2 * pos);
        if (dif == 0) {
            /* relaxed: the slot's seq carries the ordering; the CAS only
             * decides who owns the position (and fails once CLOSED is set). */
            if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            return EAGAIN; /* the slot still holds the item of a lap ago */
        } else {
            pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
        }
    }
    sl->item = item;
    /* release: pairs with the acquire load in try_pop: the item (and what
     * the producer did before) is visible to the consumer. */
    atomic_store_explicit(&sl->seq, 2 * pos + 1, memory_order_release);
    notify(&q->cons);
    return 0;
}

/* 0, EAGAIN (empty, or the next item is still being written) or EPIPE
 * (closed and drained). */
static inline int try_pop(cancel_queue *q, void **item)
{
    uint64_t pos = atomic_load_explicit(&q->head, memory_order_relaxed);
    struct slot *sl;
    for (;;) {
        sl = slot_at(q, pos);
        /* acquire: pairs with the producer's release publication. */
        uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (2 * pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            /* acquire: pairs with nothing stronger than the CAS order, but
             * keeps the head load below after this one. */
            uint64_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
            if ((t & CLOSED) && atomic_load_explicit(&q->head, memory_order_relaxed) == (t & ~CLOSED))
                return EPIPE;
            return EAGAIN;
        } else {
            pos = atomic_load_explicit(&q->head, memory_order_relaxed);
        }
    }
    *item = sl->item;
    /* release: our read of the item comes before the slot's next producer
     * overwrites it (its acquire load in try_push). */
    atomic_store_explicit(&sl->seq, 2 * (pos + q->cap), memory_order_release);
    notify(&q->prod);
    return 0;
}

/* Whether the next operation of a side would find its slot ready: the
 * hand-on tests (approximate is fine: a wrong yes costs a spurious wake-up;
 * a no is right whenever it matters, see the top of the file). */
static bool ready(cancel_queue *q, bool push)
{
    if (push) {
        uint64_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
        return !(t & CLOSED) && atomic_load_explicit(&slot_at(q, t)->seq, memory_order_acquire) == 2 * t;
    }
    uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    return atomic_load_explicit(&slot_at(q, h)->seq, memory_order_acquire) == 2 * h + 1;
}

/* Attempts before sleeping, with 1, 2, 4, 8 pauses between them: about
 * 0.4 us here. Longer spins paid off only on an idle machine; with other
 * processes taking turns on the CPUs (the partner is then often not running
 * at all), 8 rounds cost a third of the throughput and 10 rounds half. */
#ifndef SPIN_ROUNDS
#define SPIN_ROUNDS 4
#endif

static int wait_slow(cancel_token tok, cancel_queue *q, bool push, void *in, void **out, int64_t timeout_ns)
{
    struct cancel__until u;
    int err = cancel__until_begin(&u, tok, timeout_ns);
    if (err)
        return err;
    struct side *sd = push ? &q->prod : &q->cons;
    cancel_token wt = cancel__until_token(&u);
    struct cancel__hook hook;
    bool counted = false, registered = false, bounded = false;
    for (unsigned round = 0;; round++) {
        uint32_t seq = 0;
        if (counted) {
            /* acquire: pairs with the release bump in wake(). Then answer a
             * SIGNALED: a signaller whose fetch_or comes after our clear
             * bumps seq after our read (so our sleep does not miss it); one
             * whose fetch_or came before is seen by our attempt below. */
            seq = atomic_load_explicit(&sd->seq, memory_order_acquire);
            /* relaxed: if the bit reads clear, a signaller that sets it
             * bumps seq after our read (had we read its bump, acquire would
             * show us its bit). */
            if (atomic_load_explicit(&sd->state, memory_order_relaxed) & SIGNALED)
                transition(sd, 0);
        }
        int why = cancel__until_check(&u);
        if (why == ECANCELED) {
            err = why;
            break;
        }
        err = push ? try_push(q, in) : try_pop(q, out);
        if (err != EAGAIN)
            break;
        if (why) {
            err = why;
            break;
        }
        if (round < SPIN_ROUNDS) {
            for (unsigned i = 0; i < (1u << round); i++)
                cancel__cpu_relax();
            continue;
        }
        if (!counted) {
            /* The heavy fence: the other half of notify()'s handshake. If
             * it failed, the light fences may not have been full ones:
             * sleep no longer than a millisecond at a time. */
            transition(sd, (int)SLEEPER);
            counted = true;
            bounded = !cancel__fence_heavy();
            continue; /* read seq, then try once more before sleeping */
        }
        if (!registered) {
            cancel__hook_arm(&hook, wt, &sd->seq, NULL, NULL, false);
            registered = true;
            continue;
        }
        cancel__blocked_enter(push ? "cancel_queue_push" : "cancel_queue_pop", -1);
        int64_t deadline = cancel__until_kernel_deadline(&u);
        if (bounded) {
            int64_t soon = cancel__add_sat(cancel__clock_ns(), 1000000);
            deadline = deadline < 0 || soon < deadline ? soon : deadline;
        }
        cancel__futex_wait(&sd->seq, seq, deadline);
        cancel__blocked_leave();
    }
    if (counted) {
        /* Success: wake the next sleeper if more is ready (a wake-up may
         * have been absorbed, or skipped because SIGNALED was set).
         * Failure: hand on a wake-up we may have been given. */
        if (transition(sd, -(int)SLEEPER) >= SLEEPER && err != EPIPE && ready(q, push))
            signal_one(sd);
    }
    if (registered)
        cancel__hook_disarm(&hook, wt);
    cancel__until_end(&u);
    return err;
}

int cancel_queue_push(cancel_token tok, cancel_queue *q, void *item, int64_t timeout_ns)
{
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (!q || (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE))
        return EINVAL;
    int err = try_push(q, item);
    if (cancel__likely(err != EAGAIN))
        return err;
    return wait_slow(tok, q, true, item, NULL, timeout_ns);
}

int cancel_queue_pop(cancel_token tok, cancel_queue *q, void **item, int64_t timeout_ns)
{
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (!q || !item || (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE))
        return EINVAL;
    int err = try_pop(q, item);
    if (cancel__likely(err != EAGAIN))
        return err;
    return wait_slow(tok, q, false, NULL, item, timeout_ns);
}

void cancel_queue_close(cancel_queue *q)
{
    if (!q)
        return;
    /* seq_cst: ordered before the bumps below (which release it to
     * sleepers) and against producers' CAS on tail. */
    if (atomic_fetch_or_explicit(&q->tail, CLOSED, memory_order_seq_cst) & CLOSED)
        return;
    wake(&q->cons, INT_MAX);
    wake(&q->prod, INT_MAX);
}
