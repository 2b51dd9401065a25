/*
 * Linked sources (link.c).
 */
#ifndef CANCEL_CORE_LINK_H
#define CANCEL_CORE_LINK_H

#include "source.h"

/* Removes the child's links from its parents (cancel_source_free). */
CANCEL_HIDDEN void cancel__unhook(struct cancel__linked *l);

#endif
