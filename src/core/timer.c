/*
 * Deadlines: one hierarchical timing wheel for the whole process, under one
 * lock. The library thread (worker.c) sleeps until the earliest event and
 * calls cancel__timer_fire_due; this file knows nothing of threads: arming
 * tells its caller when the library thread must be woken.
 *
 * Built for deadlines that almost never fire, armed and disarmed in any
 * order (a request's timeout is usually disarmed first-in, first-out):
 * arming appends to a bucket and disarming swaps the last entry of the
 * bucket into the hole, both O(1) and touching at most two cache lines, with
 * no system call unless the new deadline becomes the earliest event (then
 * the library thread is woken to sleep less).
 *
 * The wheel has LEVELS levels of 64 buckets. Level 0 buckets are 2^20 ns
 * (about 1 ms) wide, each level 64 times wider than the one below, so 7
 * levels span 2^62 ns (146 years), counted from the wheel's first use
 * (`base`). An entry sits at the level of the highest 6-bit group in which
 * its deadline differs from the wheel's current time `cur`, in the bucket
 * that group names. When `cur` reaches the start of a
 * bucket above level 0, the bucket is cascaded: its entries are placed again,
 * one level down or more. Entries keep their exact deadline, so a deadline
 * fires on time however far away it was armed; level 0 buckets are searched
 * for their earliest deadline, which is what the library thread sleeps until.
 *
 * Each entry is 16 bytes in its bucket's array; the source keeps the
 * entry's place (level, bucket, index) in its 32-bit timer_slot. Arrays
 * shrink as entries go, and an emptied bucket's array is kept as the single
 * spare for the next bucket that needs one, so memory returns once deadlines
 * are disarmed without an allocation per arm.
 *
 * Kept entries. A source that was cancelled keeps the deadline it had
 * (cancel_token_deadline): when its deadline fires, or when it is cancelled
 * otherwise while armed, its entry moves to the KEPT level, which never
 * fires and is not counted as pending. Freeing, disarming or resetting the
 * source removes it. (Should the move need memory that is not there, the
 * deadline is forgotten: only the report of it is lost.)
 *
 * Entries hold no reference. A source's slot is changed, with release
 * order, only after the timer took the reference it needs to dispatch; so
 * cancel_source_free, which reads the slot with acquire, either sees it and
 * waits for the timer lock, or sees that reference.
 */
#include "clock.h"
#include "timer.h"

#include "lock.h"
#include "ref.h"
#include "state.h"

#include <stdlib.h>
#include <string.h>

enum {
    LEVELS = 7,       /* levels that fire; level LEVELS holds kept entries */
    KEPT_BUCKETS = 32, /* buckets of the kept level, by source address */
    BUCKETS = 64,
    G0 = 20,          /* log2 of the level-0 bucket width in ns */
    IDX_BITS = 23,    /* index within a bucket in timer_slot */
    MIN_CAP = 16,
};
#define IDX_MAX ((UINT32_C(1) << IDX_BITS) - 1)
_Static_assert(LEVELS == 7 && IDX_BITS + 6 == 29, "the slot encoding cancel__timer_slot_live knows");

struct entry {
    int64_t deadline;
    struct cancel_source *src;
};

struct bucket {
    struct entry *v;
    uint32_t n, cap;
};

static struct {
    _Atomic uint32_t lock;
    struct bucket b[LEVELS + 1][BUCKETS]; /* under lock */
    uint64_t nonempty[LEVELS];        /* under lock: bit j set when b[L][j].n > 0 */
    int64_t base;                     /* under lock: clock time of the wheel's position 0 */
    uint64_t cur;                     /* under lock: the wheel's current position (time - base) */
    bool started;                     /* under lock: base and cur were set */
    size_t count;                     /* under lock: pending entries (levels below LEVELS) */
    struct entry *spare;              /* under lock: a MIN_CAP array kept for reuse */
    int64_t sleep_until;              /* under lock: when the library thread next looks */
} T = {.sleep_until = INT64_MAX};

static unsigned shift_of(unsigned level)
{
    return G0 + 6 * level;
}

static uint32_t slot_encode(unsigned level, unsigned bucket, uint32_t index)
{
    return ((uint32_t)level << (IDX_BITS + 6) | (uint32_t)bucket << IDX_BITS | index) + 1;
}

static void slot_decode(uint32_t slot, unsigned *level, unsigned *bucket, uint32_t *index)
{
    slot--;
    *index = slot & IDX_MAX;
    *bucket = (slot >> IDX_BITS) & (BUCKETS - 1);
    *level = slot >> (IDX_BITS + 6);
}

/* Clock time to wheel position and back (under lock, once started). */
static uint64_t position(int64_t t)
{
    return t <= T.base ? 0 : (uint64_t)t - (uint64_t)T.base;
}
static int64_t time_at(uint64_t p)
{
    return p > (uint64_t)(INT64_MAX - T.base) ? INT64_MAX : T.base + (int64_t)p;
}

/* The level and bucket for a deadline, relative to T.cur. A deadline
 * already behind `cur` goes to the current level-0 bucket (due at once); one
 * more than 2^60 ns (36 years) ahead is filed as if 2^60 ns ahead, keeping
 * its exact value, so that it lands within the top level and moves down as
 * time passes. */
static void where(int64_t deadline, unsigned *level, unsigned *bucket)
{
    uint64_t p = position(deadline);
    if (p < T.cur)
        p = T.cur;
    if (p - T.cur > (UINT64_C(1) << 60))
        p = T.cur + (UINT64_C(1) << 60);
    /* Within cur's block of the top level (2^62 ns), so that the highest
     * differing group is a level we have and the bucket is never behind
     * `cur` (which would file it again in the same place, for ever). Such
     * an entry moves down when `cur` crosses into the next block. */
    uint64_t block_end = T.cur | ((UINT64_C(1) << (G0 + 6 * LEVELS)) - 1);
    if (p > block_end)
        p = block_end;
    uint64_t differ = (p ^ T.cur) >> G0;
    unsigned l = differ < BUCKETS ? 0 : (unsigned)(63 - __builtin_clzll(differ)) / 6;
    *level = l;
    *bucket = (unsigned)(p >> shift_of(l)) & (BUCKETS - 1);
}

/* Under lock: the wheel starts at its first use and never goes back. */
static void advance(int64_t t)
{
    if (!T.started) {
        T.base = t;
        T.cur = 0;
        T.started = true;
    } else if (position(t) > T.cur) {
        T.cur = position(t);
    }
}

/* When a bucket above level 0 must be cascaded: its start, in T.cur's
 * enclosing block of the level above. */
static int64_t bucket_start(unsigned level, unsigned bucket)
{
    unsigned up = shift_of(level) + 6;
    uint64_t block = up >= 64 ? 0 : T.cur & ~((UINT64_C(1) << up) - 1);
    return time_at(block | (uint64_t)bucket << shift_of(level));
}

static int resize(struct bucket *b, uint32_t cap)
{
    struct entry *v;
    if (cap == MIN_CAP && T.spare) { /* the common case: a bucket comes into use */
        v = T.spare;
        T.spare = NULL;
    } else {
        v = malloc((size_t)cap * sizeof *v);
        if (!v)
            return ENOMEM;
    }
    if (b->v) {
        memcpy(v, b->v, b->n * sizeof *v);
        free(b->v);
    }
    b->v = v;
    b->cap = cap;
    return 0;
}

/* Under lock: appends; the caller sets the source's slot. */
static int push(unsigned level, unsigned bucket, struct entry e, uint32_t *index)
{
    struct bucket *b = &T.b[level][bucket];
    if (b->n == b->cap) {
        if (b->n == IDX_MAX + 1)
            return ENOMEM; /* 8 million in one bucket: the slot cannot say more */
        int err = resize(b, b->cap ? 2 * b->cap : MIN_CAP);
        if (err)
            return err;
    }
    *index = b->n;
    b->v[b->n++] = e;
    if (level < LEVELS) {
        T.nonempty[level] |= UINT64_C(1) << bucket;
        T.count++;
    }
    return 0;
}

/* Under lock: after entries left bucket (level, bucket): frees or shrinks
 * its array. */
static void bucket_shrunk(unsigned level, unsigned bucket)
{
    struct bucket *b = &T.b[level][bucket];
    if (b->n == 0) {
        if (level < LEVELS)
            T.nonempty[level] &= ~(UINT64_C(1) << bucket);
        if (b->cap == MIN_CAP && !T.spare)
            T.spare = b->v; /* kept for the next bucket that needs one */
        else
            free(b->v);
        b->v = NULL;
        b->cap = 0;
    } else if (b->cap > MIN_CAP && b->n < b->cap / 4) {
        (void)resize(b, b->cap / 2); /* on failure keeping the larger array is harmless */
    }
}

/* Under lock: removes an entry by swapping the bucket's last one into its
 * place; the caller clears the removed source's slot. */
static void remove_entry(unsigned level, unsigned bucket, uint32_t index)
{
    struct bucket *b = &T.b[level][bucket];
    uint32_t last = --b->n;
    if (index != last) {
        b->v[index] = b->v[last];
        atomic_store_explicit(&b->v[index].src->timer_slot, slot_encode(level, bucket, index),
                              memory_order_relaxed);
    }
    if (level < LEVELS)
        T.count--;
    bucket_shrunk(level, bucket);
}

/* Under lock: files (or refiles) a source's deadline; ENOMEM leaves it out.
 * Returns when the library thread must look at it: its deadline at level 0,
 * the start of its bucket above (INT64_MIN on error). */
static int64_t file(struct cancel_source *s, int64_t deadline)
{
    unsigned level, bucket;
    uint32_t index;
    where(deadline, &level, &bucket);
    if (push(level, bucket, (struct entry){deadline, s}, &index) != 0)
        return INT64_MIN; /* the slot is the caller's to fix */
    atomic_store_explicit(&s->timer_slot, slot_encode(level, bucket, index), memory_order_relaxed);
    return level == 0 ? deadline : bucket_start(level, bucket);
}

/* Under lock: the earliest event: a level-0 entry's deadline, or the start of
 * a higher bucket that must be cascaded. INT64_MAX if the wheel is empty.
 * *refile says the bucket is to be filed again rather than fired. */
static int64_t next_event(unsigned *level_out, unsigned *bucket_out, bool *refile)
{
    int64_t best = INT64_MAX;
    bool found = false;
    for (unsigned l = 0; l < LEVELS; l++) {
        if (!T.nonempty[l])
            continue;
        unsigned here = (unsigned)(T.cur >> shift_of(l)) & (BUCKETS - 1);
        uint64_t ahead = T.nonempty[l] & (~UINT64_C(0) << here);
        int64_t t;
        unsigned j;
        bool stale = !ahead;
        if (stale) {
            /* Cannot happen while `cur` only moves past empty buckets; if it
             * did, file these again now, relative to `cur`. */
            j = (unsigned)__builtin_ctzll(T.nonempty[l]);
            t = time_at(T.cur);
        } else {
            j = (unsigned)__builtin_ctzll(ahead);
            t = bucket_start(l, j);
            if (l == 0) {
                struct bucket *b = &T.b[0][j];
                t = INT64_MAX;
                for (uint32_t i = 0; i < b->n; i++)
                    if (b->v[i].deadline < t)
                        t = b->v[i].deadline;
            }
        }
        if (!found || t < best) { /* an event at INT64_MAX is an event too */
            found = true;
            best = t;
            *level_out = l;
            *bucket_out = j;
            *refile = stale || l > 0;
        }
    }
    return best;
}

/* Under lock: removes whatever entry the source has (live or kept). */
static void remove_slot(struct cancel_source *s)
{
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (slot) {
        unsigned l, b;
        uint32_t i;
        slot_decode(slot, &l, &b, &i);
        remove_entry(l, b, i);
        atomic_store_explicit(&s->timer_slot, 0, memory_order_relaxed);
    }
}

/* Under lock: the entry a slot names. */
static struct entry *entry_of(uint32_t slot)
{
    unsigned l, b;
    uint32_t i;
    slot_decode(slot, &l, &b, &i);
    return &T.b[l][b].v[i];
}

/* Under lock: moves the live entry at (l, b, i) to the kept level, or drops
 * it without memory. The source's slot is stored with release order: see
 * the top of the file. */
static void keep(unsigned l, unsigned b, uint32_t i)
{
    struct entry e = T.b[l][b].v[i];
    remove_entry(l, b, i);
    unsigned kb = (unsigned)(((uintptr_t)e.src >> 6) % KEPT_BUCKETS);
    uint32_t ki;
    uint32_t slot = push(LEVELS, kb, e, &ki) == 0 ? slot_encode(LEVELS, kb, ki) : 0;
    atomic_store_explicit(&e.src->timer_slot, slot, memory_order_release);
}

int cancel__timer_arm(struct cancel_source *s, int64_t deadline, bool *wake)
{
    *wake = false;
    cancel__lock(&T.lock);
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_REQUESTED) {
        cancel__unlock(&T.lock);
        return ECANCELED;
    }
    if (!T.started)
        advance(cancel__now());
    /* A cancel that sets REQUESTED just after our check above may find its
     * entry not yet filed: the entry then stays live until it expires (its
     * mark loses, harmlessly) or the source is freed. Closing that window
     * would cost a store-load fence on every arm. */
    uint32_t old = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    int64_t event = file(s, deadline);
    if (event == INT64_MIN) { /* out of memory: any earlier deadline stays */
        cancel__unlock(&T.lock);
        return ENOMEM;
    }
    if (old) { /* re-armed: the new entry is filed, drop the old one */
        unsigned l, b;
        uint32_t i;
        slot_decode(old, &l, &b, &i);
        remove_entry(l, b, i);
    }
    if (event < T.sleep_until) {
        T.sleep_until = event;
        *wake = true;
    }
    cancel__unlock(&T.lock);
    return 0;
}

void cancel__timer_disarm(struct cancel_source *s, bool kept_too)
{
    cancel__lock(&T.lock);
    if (kept_too || cancel__timer_slot_live(atomic_load_explicit(&s->timer_slot, memory_order_relaxed)))
        remove_slot(s);
    cancel__unlock(&T.lock);
}

void cancel__timer_keep(struct cancel_source *s)
{
    cancel__lock(&T.lock);
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (cancel__timer_slot_live(slot)) {
        unsigned l, b;
        uint32_t i;
        slot_decode(slot, &l, &b, &i);
        keep(l, b, i);
    }
    cancel__unlock(&T.lock);
}

int64_t cancel__timer_deadline(struct cancel_source *s)
{
    int64_t d = CANCEL_INFINITE;
    cancel__lock(&T.lock);
    uint32_t slot = atomic_load_explicit(&s->timer_slot, memory_order_relaxed);
    if (slot)
        d = entry_of(slot)->deadline;
    cancel__unlock(&T.lock);
    return d;
}

size_t cancel__timer_pending(void)
{
    cancel__lock(&T.lock);
    size_t n = T.count;
    cancel__unlock(&T.lock);
    return n;
}

static int by_deadline(const void *a, const void *b)
{
    int64_t x = ((const struct entry *)a)->deadline, y = ((const struct entry *)b)->deadline;
    return (x > y) - (x < y);
}

/* Under lock: cancels s for its deadline; if this cancelled it, retains it
 * and appends it to *fired_tail. Marked under the lock, so that try_reset,
 * which disarms first, sees the mark if the deadline fired; retained before
 * the caller changes the slot (the top of the file). */
static void mark_fired(struct cancel_source *s, struct cancel_source ***fired_tail)
{
    if (cancel__mark(s, ST_REQUESTED | cancel__reason_bits(CANCEL_REASON_TIMEOUT, 0))) {
        cancel__retain(s);
        s->next_pending = NULL;
        **fired_tail = s;
        *fired_tail = &s->next_pending;
    }
}

/* Under lock, out of memory: a bucket could not be moved down, so the wheel
 * stops short of `now` until memory returns. What is due fires anyway,
 * from wherever it sits (this needs no memory; its order is the wheel's,
 * not the deadlines'), so that no due deadline waits for memory: on the
 * manual clock, nothing would look again before the clock moves. */
static void fire_due_anywhere(int64_t now, struct cancel_source ***fired_tail)
{
    for (unsigned l = 0; l < LEVELS; l++) {
        for (uint64_t m = T.nonempty[l]; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctzll(m);
            /* downwards: keep() swaps the last entry into the hole */
            for (uint32_t i = T.b[l][j].n; i-- > 0;) {
                struct entry e = T.b[l][j].v[i];
                if (e.deadline > now)
                    continue;
                mark_fired(e.src, fired_tail);
                keep(l, j, i);
            }
        }
    }
}

/* Under lock: takes the entries of level-0 bucket j that are due at `now`,
 * in deadline order: marks each source (TIMEOUT), retains the ones it
 * cancelled and appends them to *fired_tail, and moves the entries to the
 * kept level. Returns how many it took. */
static uint32_t take_due(unsigned j, int64_t now, struct cancel_source ***fired_tail)
{
    struct bucket *b = &T.b[0][j];
    if (b->n > 1)
        qsort(b->v, b->n, sizeof *b->v, by_deadline);
    uint32_t k = 0;
    while (k < b->n && b->v[k].deadline <= now)
        k++;
    for (uint32_t i = 0; i < k; i++) {
        struct entry e = b->v[i];
        mark_fired(e.src, fired_tail);
        unsigned kb = (unsigned)(((uintptr_t)e.src >> 6) % KEPT_BUCKETS);
        uint32_t ki;
        uint32_t slot = push(LEVELS, kb, e, &ki) == 0 ? slot_encode(LEVELS, kb, ki) : 0;
        /* release: pairs with the acquire load in cancel_source_free, which
         * then sees our reference. */
        atomic_store_explicit(&e.src->timer_slot, slot, memory_order_release);
    }
    /* What stays keeps its order, shifted down. */
    uint32_t rest = b->n - k;
    memmove(b->v, b->v + k, (size_t)rest * sizeof *b->v);
    for (uint32_t i = 0; i < rest; i++)
        atomic_store_explicit(&b->v[i].src->timer_slot, slot_encode(0, j, i), memory_order_relaxed);
    b->n = rest;
    T.count -= k;
    bucket_shrunk(0, j);
    return k;
}

struct cancel_source *cancel__timer_fire_due(int64_t *next_deadline)
{
    struct cancel_source *fired = NULL, **fired_tail = &fired;
    cancel__lock(&T.lock);
    int64_t now = cancel__now(), retry = INT64_MAX;
    unsigned l, j;
    bool refile;
    int64_t t;
    if (!T.started)
        advance(now);
    /* (With nothing pending, next_event's INT64_MAX is no event, even when
     * the manual clock has been advanced to the end of time.) */
    while (T.count && (t = next_event(&l, &j, &refile)) <= now) {
        struct bucket *b = &T.b[l][j];
        advance(t);
        if (!refile) {
            /* Due entries leave in deadline order, so that callbacks of
             * deadlines passed in one look run in that order too. */
            (void)take_due(j, now, &fired_tail);
        } else {
            /* Cascade: from the bucket's start on, its entries belong lower. */
            struct bucket moved = *b;
            *b = (struct bucket){0};
            T.nonempty[l] &= ~(UINT64_C(1) << j);
            T.count -= moved.n;
            uint32_t i = 0;
            while (i < moved.n && file(moved.v[i].src, moved.v[i].deadline) != INT64_MIN)
                i++;
            if (i < moved.n) {
                /* Out of memory: the rest stay here and are tried again in a
                 * millisecond, late rather than early; whatever is due
                 * fires now all the same (fire_due_anywhere). */
                memmove(moved.v, moved.v + i, (moved.n - i) * sizeof *moved.v);
                moved.n -= i;
                *b = moved;
                T.nonempty[l] |= UINT64_C(1) << j;
                T.count += moved.n;
                for (uint32_t k = 0; k < moved.n; k++)
                    atomic_store_explicit(&moved.v[k].src->timer_slot, slot_encode(l, j, k),
                                          memory_order_relaxed);
                retry = cancel__add_sat(now, 1000000);
                fire_due_anywhere(now, &fired_tail);
                break;
            }
            free(moved.v);
        }
    }
    /* Every bucket left is ahead of `now` (or waits for memory): moving `cur`
     * there skips only empty buckets. */
    if (retry == INT64_MAX)
        advance(now);
    t = next_event(&l, &j, &refile);
    if (retry != INT64_MAX && t < retry)
        t = retry; /* the stuck bucket is due now: look again in a millisecond */
    T.sleep_until = t;
    *next_deadline = t == INT64_MAX ? -1 : t;
    cancel__unlock(&T.lock);
    return fired;
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
