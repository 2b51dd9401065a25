/*
 * The most common source in one call: a child of a token, with a deadline
 * and a name (Go's context.WithTimeout).
 */
#include "source.h"

cancel_source *cancel_source_new_child(cancel_token parent, int64_t timeout_ns, const char *name)
{
    if (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE) {
        errno = EINVAL;
        return NULL;
    }
    cancel_source *s = cancel_source_new_linked(&parent, 1); /* CANCEL_TOKEN_NONE: no parent */
    if (!s)
        return NULL;
    int err = name ? cancel_source_set_name(s, name) : 0;
    if (err == 0 && timeout_ns != CANCEL_INFINITE) {
        err = cancel_source_cancel_after(s, timeout_ns);
        if (err == ECANCELED)
            err = 0; /* born cancelled through its parent: nothing to arm */
    }
    if (err) {
        cancel_source_free(s);
        errno = err;
        return NULL;
    }
    return s;
}
