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

#endif
