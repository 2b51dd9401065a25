/*
 * Running callbacks through linked trees (dispatch.c).
 */
#ifndef CANCEL_CORE_DISPATCH_H
#define CANCEL_CORE_DISPATCH_H

#include "source.h"

/* Runs the callbacks of the marked source s and of its linked descendants,
 * on the calling thread; consumes a reference on s. */
CANCEL_HIDDEN void cancel__dispatch(struct cancel_source *s);
/* Cancels a linked child through a cancelled parent: records the origin and
 * marks it with the parent's reason. True if this call cancelled it. */
CANCEL_HIDDEN bool cancel__cancel_from_parent(struct cancel__linked *child, struct cancel_source *parent);
/* Callbacks counted as slow so far (cancel_set_slow_callback_threshold). */
CANCEL_HIDDEN size_t cancel__slow_callbacks(void);

#endif
