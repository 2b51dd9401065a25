/*
 * A source's memory (ref.c): creation, references, destruction, and the
 * block of rarely used state.
 */
#ifndef CANCEL_CORE_REF_H
#define CANCEL_CORE_REF_H

#include "source.h"

/* Initialises a new source: one reference (the owner's), nothing else. */
CANCEL_HIDDEN void cancel__source_init(struct cancel_source *s, uint32_t state);
/* A new plain source, or NULL with errno ENOMEM. */
CANCEL_HIDDEN struct cancel_source *cancel__source_create(void);
CANCEL_HIDDEN void cancel__retain(struct cancel_source *s);
/* Drops a reference; the last one (with no child pointing here) destroys. */
CANCEL_HIDDEN void cancel__release(struct cancel_source *s);
/* Frees the memory of a source whose counts reached zero. */
CANCEL_HIDDEN void cancel__destroy(struct cancel_source *s);
/* The extra block, allocated on first need; NULL with errno ENOMEM. */
CANCEL_HIDDEN struct cancel__extra *cancel__extra_get(struct cancel_source *s);

#endif
