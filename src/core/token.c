/*
 * Tokens: the listen-only side. The check itself is inline in cancel.h;
 * this file holds its external definitions and the slower queries.
 */
#include "ref.h"

/* The external definitions of the inline functions of cancel.h, for callers
 * that do not inline them (other languages, -O0). */
extern inline bool cancel_token_is_requested(cancel_token tok);
extern inline int cancel_token_check(cancel_token tok);

bool cancel_token_can_be_canceled(cancel_token tok)
{
    struct cancel_source *s = cancel__source_of(tok);
    return s && !(atomic_load_explicit(cancel__word(s), memory_order_acquire) & ST_DEAD);
}

cancel_cause cancel_token_cause(cancel_token tok)
{
    cancel_cause c = {CANCEL_REASON_NONE, 0, NULL, NULL};
    struct cancel_source *s = cancel__source_of(tok);
    if (!s)
        return c;
    /* acquire: pairs with the winning CAS, which published the cause. */
    uint32_t st = atomic_load_explicit(cancel__word(s), memory_order_acquire);
    if (!(st & ST_REQUESTED))
        return c;
    struct cancel_source *origin = s;
    if (st & ST_LINKED_CAUSE) {
        origin = ((struct cancel__linked *)s)->origin;
        /* acquire: the origin's own winning CAS published its code and
         * message (we hold the child, the child holds the origin). */
        (void)atomic_load_explicit(cancel__word(origin), memory_order_acquire);
    }
    c.reason = cancel__reason_of(st);
    if (c.reason == CANCEL_REASON_FAILED)
        c.code = origin->code;
    else if (c.reason == CANCEL_REASON_SIGNAL)
        c.code = (int)((st & ST_SIGNO_MASK) >> ST_SIGNO_SHIFT);
    struct cancel__extra *ex = atomic_load_explicit(&origin->extra, memory_order_acquire);
    if (ex) {
        if (c.reason == CANCEL_REASON_FAILED)
            c.message = ex->message;
        /* A cause received from another process keeps its origin there;
         * so does a deadline received with it, when it fires here. */
        c.origin = ex->origin                                                ? ex->origin
                   : c.reason == CANCEL_REASON_TIMEOUT && ex->deadline_origin ? ex->deadline_origin
                                                                              : atomic_load_explicit(&ex->name, memory_order_acquire);
    }
    if (c.reason == CANCEL_REASON_FAILED && !c.message &&
        (atomic_load_explicit(cancel__word(origin), memory_order_relaxed) & ST_MESSAGE_LOST))
        c.message = cancel__message_lost;
    return c;
}

cancel_token cancel_token_retain(cancel_token tok)
{
    struct cancel_source *s = cancel__source_of(tok);
    if (s)
        cancel__retain(s);
    return tok;
}

void cancel_token_release(cancel_token tok)
{
    struct cancel_source *s = cancel__source_of(tok);
    if (s)
        cancel__release(s);
}
