/*
 * The timing wheel of deadlines (timer.c). No thread here: the library
 * thread (worker.c) sleeps until the earliest event and fires what is due.
 */
#ifndef CANCEL_CORE_TIMER_H
#define CANCEL_CORE_TIMER_H

#include "source.h"

/* Files (or refiles) s's deadline, an absolute time on cancel_now()'s clock.
 * Returns 0, ECANCELED (s already cancelled) or ENOMEM (an earlier deadline
 * stays). *wake says the new deadline is the earliest event: the library
 * thread must be woken to sleep less. */
CANCEL_HIDDEN int cancel__timer_arm(struct cancel_source *s, int64_t deadline, bool *wake);
/* Removes s's pending deadline; its kept one too if kept_too (checked under
 * the timer lock: a deadline that fires meanwhile is kept unless kept_too). */
CANCEL_HIDDEN void cancel__timer_disarm(struct cancel_source *s, bool kept_too);
/* s was cancelled: its pending deadline will not fire, but is kept for
 * cancel__timer_deadline until s is freed or reset. */
CANCEL_HIDDEN void cancel__timer_keep(struct cancel_source *s);
/* s's deadline, pending or kept, or CANCEL_INFINITE. */
CANCEL_HIDDEN int64_t cancel__timer_deadline(struct cancel_source *s);
/* cancel_token_deadline, and in *origin (the caller's to free) a copy of
 * the name of the source whose deadline it is (NULL if none, unnamed, or no
 * memory): what a timeout's cause reports as its origin. In deadline.c. */
CANCEL_HIDDEN int64_t cancel__token_deadline_origin(cancel_token tok, char **origin);
/* Deadlines pending (not fired, not disarmed, not kept). */
CANCEL_HIDDEN size_t cancel__timer_pending(void);
/* Marks every source whose deadline passed (TIMEOUT) and returns them
 * linked through next_pending, each retained for its dispatch; stores when
 * to look again (-1: nothing pending). */
CANCEL_HIDDEN struct cancel_source *cancel__timer_fire_due(int64_t *next_deadline);

/* A slot names a pending entry (not a kept one, not none): levels 0-6 of the
 * encoding in timer.c. Lets callers skip the timer lock. */
static inline bool cancel__timer_slot_live(uint32_t slot)
{
    return slot != 0 && slot - 1 < (UINT32_C(7) << 29);
}

CANCEL_HIDDEN void cancel__timer_atfork_prepare(void);
CANCEL_HIDDEN void cancel__timer_atfork_parent(void);
CANCEL_HIDDEN void cancel__timer_atfork_child(void);

#endif
