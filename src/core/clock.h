/*
 * The library's clock (clock.c): CLOCK_MONOTONIC, or the manual clock that
 * tests move by hand. cancel_now() is the public reading.
 */
#ifndef CANCEL_CORE_CLOCK_H
#define CANCEL_CORE_CLOCK_H

#include "source.h"

/* cancel_now() for the core's own use, inline: the manual clock's reading,
 * or CLOCK_MONOTONIC when it is CANCEL__CLOCK_OFF. */
#define CANCEL__CLOCK_OFF INT64_MIN
extern CANCEL_HIDDEN _Atomic int64_t cancel__manual_now;
static inline int64_t cancel__now(void)
{
    int64_t m = atomic_load(&cancel__manual_now); /* seq_cst: see clock.c */
    return cancel__likely(m == CANCEL__CLOCK_OFF) ? cancel__clock_ns() : m;
}

/* Switches the manual clock on (frozen at the current reading) or off.
 * Returns false if it already was in that state. */
CANCEL_HIDDEN bool cancel__clock_set_manual(bool on);
/* Moves the manual clock forward by ns (saturating). False if it is off. */
CANCEL_HIDDEN bool cancel__clock_move(int64_t ns);

/* A thread blocked in a timed wait on a token (wait.c), known to the clock
 * so that moving or switching the manual clock wakes it: the waker flips
 * ST_TICK in the word the thread sleeps on, then wakes the word, so a wait
 * that read the word before the flip cannot sleep through it. */
struct cancel__sleeper {
    _Atomic uint32_t *word;
    int64_t deadline; /* absolute, on cancel_now()'s clock */
    struct cancel__sleeper *next, *prev;
};
CANCEL_HIDDEN void cancel__clock_sleeper_add(struct cancel__sleeper *z);
CANCEL_HIDDEN void cancel__clock_sleeper_remove(struct cancel__sleeper *z);
/* Wakes the sleepers whose deadline is at or before `now` (all of them for
 * INT64_MAX). */
CANCEL_HIDDEN void cancel__clock_wake_sleepers(int64_t now);

#endif
