/*
 * libcancel-uv: a libuv handle that watches a token (<cancel/uv.h>).
 *
 * Locking and lifetime. A cancel_uv_t is a uv_async_t with a registration
 * on the token beside it. The registration's callback, on whatever thread
 * cancels, only calls uv_async_send on the handle: libuv's cross-thread
 * wake-up, which coalesces and is safe from any thread while the handle is
 * open. Everything else happens on the loop's thread: the async callback
 * checks the token and runs the user's callback once.
 *
 * The one cross-thread hazard is closing: after the close callback the
 * memory is the user's, so no canceller may still be about to call
 * uv_async_send on it. cancel_uv_close therefore unregisters first:
 * cancel_unregister either removes the callback before it starts, or waits
 * until it has returned. It cannot deadlock: our callback waits for nothing,
 * so the thread running it is never part of a cycle of waits (the EDEADLK
 * case cannot arise). Only then is the async handle closed. The handle's
 * own reference to the token (taken at init so that the source may be freed
 * first) is dropped after unregistering, since unregistering needs the
 * token valid.
 *
 * No lock of ours exists; the fields below the libuv ones are written and
 * read on the loop's thread only, except the registration (the core's).
 */
#include <cancel/uv.h>

#include <errno.h>
#include <stddef.h>

/* On the cancelling thread. */
static void wake_loop(void *arg)
{
    (void)uv_async_send(arg);
}

/* On the loop's thread. */
static void on_async(uv_async_t *async)
{
    cancel_uv_t *h = (cancel_uv_t *)(void *)async; /* its first member */
    if (h->cancel__fired || !cancel_token_is_requested(h->cancel__tok))
        return;
    h->cancel__fired = 1;
    if (!h->cancel__stream) {
        h->cancel__cb(h);
        return;
    }
    uv_stream_t *stream = h->cancel__stream;
    if (uv_is_closing((uv_handle_t *)stream))
        return;
    (void)uv_read_stop(stream);
    uv_buf_t none = uv_buf_init(NULL, 0);
    h->cancel__read_cb(stream, UV_ECANCELED, &none);
}

static int start(uv_loop_t *loop, cancel_uv_t *h, cancel_token tok)
{
    int rc = uv_async_init(loop, &h->cancel__async, on_async);
    if (rc != 0)
        return -rc;
    h->cancel__tok = cancel_token_retain(tok);
    h->cancel__fired = 0;
    /* Already cancelled: wake_loop runs here (ECANCELED), and the callback
     * comes in the loop's next iteration. */
    (void)cancel_register(tok, &h->cancel__reg, wake_loop, &h->cancel__async);
    return 0;
}

int cancel_uv_init(uv_loop_t *loop, cancel_uv_t *handle, cancel_token tok, cancel_uv_cb cb)
{
    if (!loop || !handle || !cb)
        return EINVAL;
    handle->cancel__cb = cb;
    handle->cancel__stream = NULL;
    handle->cancel__read_cb = NULL;
    return start(loop, handle, tok);
}

int cancel_uv_read_start(cancel_uv_t *handle, cancel_token tok, uv_stream_t *stream, uv_alloc_cb alloc_cb,
                         uv_read_cb read_cb)
{
    if (!handle || !stream || !alloc_cb || !read_cb)
        return EINVAL;
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    int rc = uv_read_start(stream, alloc_cb, read_cb);
    if (rc != 0)
        return -rc;
    handle->cancel__cb = NULL;
    handle->cancel__stream = stream;
    handle->cancel__read_cb = read_cb;
    rc = start(uv_handle_get_loop((uv_handle_t *)stream), handle, tok);
    if (rc != 0)
        (void)uv_read_stop(stream);
    return rc;
}

void cancel_uv_close(cancel_uv_t *handle, uv_close_cb close_cb)
{
    /* Waits for a wake_loop running on another thread, which waits for
     * nothing itself: never EDEADLK. */
    (void)cancel_unregister(&handle->cancel__reg);
    cancel_token_release(handle->cancel__tok);
    handle->cancel__tok = CANCEL_TOKEN_NONE;
    uv_close((uv_handle_t *)&handle->cancel__async, close_cb);
}

cancel_uv_t *cancel_uv_from_handle(uv_handle_t *handle)
{
    if (handle && handle->type == UV_ASYNC && ((uv_async_t *)handle)->async_cb == on_async)
        return (cancel_uv_t *)(void *)handle;
    return NULL;
}

struct close_all {
    uv_close_cb close_cb;
};

static void close_one(uv_handle_t *handle, void *arg)
{
    struct close_all *c = arg;
    if (uv_is_closing(handle))
        return;
    cancel_uv_t *ours = cancel_uv_from_handle(handle);
    if (ours)
        cancel_uv_close(ours, c->close_cb);
    else
        uv_close(handle, c->close_cb);
}

void cancel_uv_close_all(uv_loop_t *loop, uv_close_cb close_cb)
{
    struct close_all c = {close_cb};
    uv_walk(loop, close_one, &c);
}
