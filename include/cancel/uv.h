/*
 * <cancel/uv.h>: libcancel with libuv (libcancel-uv; pkg-config cancel-uv;
 * CMake cancel::uv).
 *
 * A cancel_uv_t is a libuv handle that watches a token: its callback runs on
 * the loop's thread once the token is cancelled, whatever thread cancelled
 * it. Like every libuv handle it lives in memory the caller provides, is
 * initialised on the loop's thread, and is closed with a close callback
 * after which the memory may be freed. Two helpers cover what a loop usually
 * does on cancellation: a read that ends with UV_ECANCELED
 * (cancel_uv_read_start), and closing every handle so that uv_run returns
 * (cancel_uv_close_all).
 *
 *     static void on_shutdown(cancel_uv_t *h)
 *     {
 *         cancel_uv_close_all(h->loop, on_closed);   // listener, clients, timers, h
 *     }
 *     ...
 *     cancel_uv_t shutdown;
 *     cancel_uv_init(loop, &shutdown, cancel_source_token(src), on_shutdown);
 *     uv_run(loop, UV_RUN_DEFAULT);    // returns once everything is closed
 *     uv_loop_close(loop);             // 0
 *
 *     // in another thread, or a signal handler through cancel_source_cancel_signal:
 *     cancel_source_cancel(src);
 *
 * The handle. A cancel_uv_t starts with a libuv handle: it is a uv_handle_t
 * of type UV_ASYNC (an async handle underneath), whose public fields it
 * shows as its own, so `handle->data` is yours and `handle->loop` tells its
 * loop, and the read-only handle functions work on (uv_handle_t *)handle:
 * uv_is_closing, uv_is_active, uv_ref, uv_unref, uv_has_ref,
 * uv_handle_get_loop. Close it
 * with cancel_uv_close, never with uv_close: closing must also withdraw its
 * registration on the token, or a later cancellation would touch freed
 * memory. A uv_walk that closes every handle must do the same; it can
 * recognise ours with cancel_uv_from_handle, or call cancel_uv_close_all.
 *
 * Keeping the loop alive: like a uv_async_t, the handle is active and
 * referenced from cancel_uv_init until it is closed, so uv_run does not
 * return while it is open, fired or not. uv_unref((uv_handle_t *)handle)
 * lets the loop end without it (the handle stays usable).
 *
 * Threads: libuv handles belong to their loop's thread; every function here
 * must be called on that thread (cancel_uv_close_all from anywhere in it,
 * callbacks included), except the token's cancellation, which may come from
 * any thread, a signal handler (cancel_source_cancel_signal), a deadline or
 * a linked parent. The canceller only wakes the loop (uv_async_send); no
 * user code runs on its thread for a cancel_uv_t.
 *
 * Errors: functions returning int return 0 or a positive errno value
 * (libcancel's convention: libuv's negative codes are negated), never -1.
 * Callbacks receive libuv's own values (UV_ECANCELED in a uv_read_cb).
 */
#ifndef CANCEL_UV_H
#define CANCEL_UV_H

#include <cancel.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cancel_uv_s cancel_uv_t;

/* Runs once on the loop's thread after the token is cancelled. It may close
 * the handle (cancel_uv_close) and anything else of the loop. */
typedef void (*cancel_uv_cb)(cancel_uv_t *handle);

struct cancel_uv_s {
    union {
        /* The public fields every libuv handle starts with. */
        struct {
            void *data;          /* yours */
            uv_loop_t *loop;     /* read-only */
            uv_handle_type type; /* read-only: UV_ASYNC */
        };
        uv_async_t cancel__async; /* private: the handle itself */
    };
    /* private to libcancel */
    cancel_registration cancel__reg;
    cancel_token cancel__tok; /* retained while open */
    cancel_uv_cb cancel__cb;
    uv_stream_t *cancel__stream; /* cancel_uv_read_start's stream, or NULL */
    uv_read_cb cancel__read_cb;
    int cancel__fired;
};

/* Initialises `handle` on `loop` to watch `tok`: once tok is cancelled (by
 * any thread), `cb` runs on the loop's thread, at most once, in a later
 * iteration of the loop (never inside this call). A token already cancelled
 * fires in the loop's next iteration; CANCEL_TOKEN_NONE, or a source freed
 * uncancelled, never fires. The handle keeps its own reference to the token
 * (freeing the source first is fine) until it is closed.
 *
 * Returns 0, EINVAL (NULL loop, handle or cb), or the error of
 * uv_async_init, negated (EMFILE: the loop could not make its wake-up
 * descriptor); then the handle is not initialised and must not be closed.
 * Loop thread only. */
CANCEL_API int cancel_uv_init(uv_loop_t *loop, cancel_uv_t *handle, cancel_token tok, cancel_uv_cb cb);

/* Closes the handle, with uv_close's semantics: the handle is closing at once
 * (uv_is_closing), its callback will not run any more, and `close_cb` (may be
 * NULL) is called on the loop's thread in a later iteration, with
 * (uv_handle_t *)handle, after which the memory is the caller's again. First
 * withdraws the registration on the token (if the canceller is inside its
 * uv_async_send right now, waits for that to return) and drops the token.
 * Closing twice is a bug, as with uv_close. Loop thread only; may be called
 * from the handle's own callback, and from any libuv callback. */
CANCEL_API void cancel_uv_close(cancel_uv_t *handle, uv_close_cb close_cb);

/* uv_read_start that a cancellation stops: starts reading `stream` (with
 * `alloc_cb` and `read_cb`, called as libuv calls them) and initialises
 * `handle` on the stream's loop to watch `tok`. Once tok is cancelled, on
 * the loop's thread: reading stops (uv_read_stop) and read_cb is called once
 * with nread UV_ECANCELED and a null buffer ({NULL, 0}), so that the
 * program's usual error path (close the stream) handles it. If the stream
 * is closing by then, nothing is done. The handle's data is yours; close it
 * with cancel_uv_close when you close the stream (whether or not it fired),
 * as for any handle.
 *
 * Returns 0; ECANCELED if tok is already cancelled (nothing is started, the
 * handle is not initialised); EINVAL (a NULL argument); or the error of
 * uv_read_start (EINVAL, EALREADY...) or uv_async_init, negated: then
 * nothing was started and the handle is not initialised. Loop thread
 * only. */
CANCEL_API int cancel_uv_read_start(cancel_uv_t *handle, cancel_token tok, uv_stream_t *stream,
                                    uv_alloc_cb alloc_cb, uv_read_cb read_cb);

/* Closes every handle of `loop` that is not already closing, ours with
 * cancel_uv_close and the others with uv_close, all with `close_cb` (may be
 * NULL): what a program does when it shuts down, so that uv_run returns once
 * the close callbacks ran and uv_loop_close then succeeds. Streams are
 * closed without a shutdown: their pending writes end with UV_ECANCELED.
 * Loop thread only; typically called from a cancel_uv_cb. */
CANCEL_API void cancel_uv_close_all(uv_loop_t *loop, uv_close_cb close_cb);

/* `handle` as a cancel_uv_t if it is one (a handle of the loop initialised
 * by cancel_uv_init or cancel_uv_read_start, closing or not), NULL
 * otherwise: for uv_walk callbacks that close handles themselves. Loop
 * thread only. */
CANCEL_API cancel_uv_t *cancel_uv_from_handle(uv_handle_t *handle);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_UV_H */
