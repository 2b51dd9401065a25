/*
 * The state word's two final transitions (state.c): the bottom of the core.
 */
#ifndef CANCEL_CORE_STATE_H
#define CANCEL_CORE_STATE_H

#include "source.h"

/* Sets REQUESTED plus `bits` (reason, signal number, LINKED_CAUSE), or DEAD,
 * unless REQUESTED or DEAD is already set; wakes the threads blocked in
 * cancel_token_wait and signals the descriptor. True if this call set it.
 * Lock-free and AS-safe. */
CANCEL_HIDDEN bool cancel__mark(struct cancel_source *s, uint32_t bits);

/* The link marker: the fn of a linked child's registration on a parent.
 * Never called; its address tells links from callbacks. */
CANCEL_HIDDEN void cancel__link_fire(void *child);

#endif
