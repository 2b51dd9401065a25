/*
 * The owner's requests: cancel, fail, cancel_async, cancel_signal.
 *
 * Each sets REQUESTED with its reason (cancel__mark: exactly one request
 * wins) and then leads to a dispatch of the callbacks: on the caller's
 * thread for cancel and fail, on the library thread for the async ones,
 * which must stay async-signal-safe (no lock, no allocation).
 *
 * The Dekker pair with registration. An async cancel queues a dispatch only
 * if a callback can exist: every registration (and every deadline or linked
 * source) first marks the library thread wanted (worker.c). Both sides are
 * seq_cst (the CAS in cancel__mark and the wanted-flag load here; the flag's
 * store and the state load under the lock in registration), so either the
 * cancel sees the flag, or the registration sees REQUESTED and runs its
 * callback inline. Not queueing when nothing can be pending keeps a process
 * that never registers free of threads and of references held by a queue
 * nobody drains.
 */
#include "request.h"

#include "dispatch.h"
#include "lock.h"
#include "ref.h"
#include "state.h"
#include "worker.h"

#include <stdlib.h>
#include <string.h>

static bool cancel_sync(cancel_source *s, uint32_t bits, const char *function)
{
    if (!s || !cancel__source_usable(s, function)) {
        errno = EINVAL;
        return false;
    }
    if (!cancel__mark(s, ST_REQUESTED | bits))
        return false;
    /* The dispatch holds its own reference: a callback may free the source. */
    cancel__retain(s);
    cancel__dispatch(s);
    return true;
}

bool cancel_source_cancel(cancel_source *s)
{
    return cancel_sync(s, cancel__reason_bits(CANCEL_REASON_REQUESTED, 0), "cancel_source_cancel");
}

bool cancel_source_fail(cancel_source *s, int code, const char *message)
{
    if (!s || !cancel__source_usable(s, "cancel_source_fail")) {
        errno = EINVAL;
        return false;
    }
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))
        return false;
    char *copy = NULL;
    struct cancel__extra *ex = NULL;
    uint32_t lost = 0;
    if (message) {
        int saved = errno;
        ex = cancel__extra_get(s);
        copy = ex ? strdup(message) : NULL;
        if (!copy)
            lost = ST_MESSAGE_LOST; /* the cause will say what happened */
        errno = saved;
    }
    /* Under the lock, fail calls are serialised: the message and code are
     * written before the CAS that publishes them, and only by the one call
     * that can still win. A lock-free canceller may still win the CAS; then
     * the fields are never read (the reason is not FAILED) and we take the
     * message back. */
    cancel__held held = cancel__source_lock(s);
    bool won = false;
    if (!(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))) {
        s->code = code;
        if (copy)
            ex->message = copy;
        won = cancel__mark(s, ST_REQUESTED | lost | cancel__reason_bits(CANCEL_REASON_FAILED, 0));
        if (!won && copy)
            ex->message = NULL;
    }
    cancel__source_unlock(s, held);
    if (!won) {
        free(copy);
        return false;
    }
    cancel__retain(s);
    cancel__dispatch(s);
    return true;
}

bool cancel__cancel_with_cause(struct cancel_source *s, cancel_reason reason, int code, const char *message,
                               const char *origin)
{
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))
        return false;
    int saved = errno;
    struct cancel__extra *ex = cancel__extra_get(s);
    char *msg = ex && message && reason == CANCEL_REASON_FAILED ? strdup(message) : NULL;
    char *org = ex && origin ? strdup(origin) : NULL;
    uint32_t lost = message && reason == CANCEL_REASON_FAILED && !msg ? ST_MESSAGE_LOST : 0;
    errno = saved;
    int signo = reason == CANCEL_REASON_SIGNAL && code > 0 && code < 256 ? code : 0;
    cancel__held held = cancel__source_lock(s);
    bool won = false;
    if (!(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))) {
        /* Written before the CAS that publishes them, as in fail. */
        if (reason == CANCEL_REASON_FAILED)
            s->code = code;
        if (msg)
            ex->message = msg;
        if (org)
            ex->origin = org;
        won = cancel__mark(s, ST_REQUESTED | lost | cancel__reason_bits(reason, signo));
        if (!won) {
            if (msg)
                ex->message = NULL;
            if (org)
                ex->origin = NULL;
        }
    }
    cancel__source_unlock(s, held);
    if (!won) {
        free(msg);
        free(org);
        return false;
    }
    cancel__retain(s);
    cancel__dispatch(s);
    return true;
}

/* Sets REQUESTED with `bits` and hands the dispatch to the library thread.
 * AS-safe; errno preserved. */
bool cancel__cancel_async(struct cancel_source *s, uint32_t bits)
{
    int saved = errno;
    bool won = cancel__mark(s, ST_REQUESTED | bits);
    /* seq_cst load: the other half of the Dekker pair at the top. */
    if (won && cancel__worker_wanted()) {
        cancel__retain(s);
        cancel__worker_post(s);
    }
    errno = saved;
    return won;
}

bool cancel_source_cancel_async(cancel_source *s)
{
    if (!s || !cancel__source_usable(s, "cancel_source_cancel_async")) {
        errno = EINVAL;
        return false;
    }
    return cancel__cancel_async(s, cancel__reason_bits(CANCEL_REASON_REQUESTED, 0));
}

bool cancel_source_cancel_signal(cancel_source *s, int signo)
{
    if (!s || signo <= 0 || signo > 255 || !cancel__source_usable(s, "cancel_source_cancel_signal")) {
        errno = EINVAL;
        return false;
    }
    return cancel__cancel_async(s, cancel__reason_bits(CANCEL_REASON_SIGNAL, signo));
}
