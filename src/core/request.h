/*
 * The owner's requests (request.c), for other files of the core.
 */
#ifndef CANCEL_CORE_REQUEST_H
#define CANCEL_CORE_REQUEST_H

#include "source.h"

/* Sets REQUESTED with `bits` (reason, signal number) and hands the dispatch
 * of the callbacks to the library thread. True if this call won. AS-safe;
 * errno preserved. */
CANCEL_HIDDEN bool cancel__cancel_async(struct cancel_source *s, uint32_t bits);

/* Cancels s with a cause that came from elsewhere (another process):
 * `reason` and `code` as cancel_token_cause reports them, `message` and
 * `origin` copied (either may be NULL; origin is reported instead of s's
 * name). Works on a source already freed by its owner (it is then dead, so
 * nothing happens). Runs the callbacks on the calling thread. True if this
 * call cancelled s. */
CANCEL_HIDDEN bool cancel__cancel_with_cause(struct cancel_source *s, cancel_reason reason, int code,
                                             const char *message, const char *origin);

#endif
