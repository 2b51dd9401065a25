/*
 * <cancel/glib.h>: libcancel with GLib and GIO (libcancel-glib; pkg-config
 * cancel-glib; CMake cancel::glib).
 *
 * GIO operations take a GCancellable; libcancel hands out tokens. Three
 * bridges join the two worlds, each a plain object of the other world that
 * follows one of ours, or the other way round:
 *
 *  - cancel_glib_cancellable_new(tok): a GCancellable cancelled when tok is.
 *    Pass it to any GIO call (g_input_stream_read_async, g_file_load_contents,
 *    g_socket_client_connect_async...): cancelling the source ends the call
 *    with G_IO_ERROR_CANCELLED, as g_cancellable_cancel would.
 *  - cancel_glib_source_new(cancellable): a cancel_source cancelled when a
 *    GCancellable is, for code of ours that GIO-style code calls with a
 *    GCancellable in hand.
 *  - cancel_glib_gsource_new(tok): a GSource that dispatches once when tok is
 *    cancelled, in whatever GMainContext it is attached to: a main loop that
 *    reacts to a cancellation requested from any thread.
 *
 *     cancel_source *src = cancel_source_new_child(parent, 5 * 1000000000LL, "load");
 *     GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
 *     g_file_load_contents_async(file, gc, on_loaded, data);  // ends within 5 s
 *     g_object_unref(gc);     // GIO keeps its own reference while it needs one
 *     ...
 *     cancel_source_free(src); // when the program no longer needs to cancel
 *
 *     GSource *gs = cancel_glib_gsource_new(shutdown_token);
 *     g_source_set_callback(gs, quit_loop, loop, NULL);  // a GSourceFunc
 *     g_source_attach(gs, NULL);
 *     g_source_unref(gs);
 *
 * Threads: GLib emits GCancellable::cancelled on the thread that cancels,
 * and libcancel runs callbacks on the thread that cancels (the library
 * thread for cancel_source_cancel_async, signals and deadlines). A bridge
 * passes a cancellation on synchronously, on that same thread: the handlers
 * connected to a bridged GCancellable run there, and so do the callbacks
 * registered on a bridged source. The bridges hold none of their own locks
 * while they run.
 *
 * Every function is thread-safe and may be called from a cancellation
 * callback. GLib allocations abort the program when memory runs out, as in
 * GLib itself; the errors below are libcancel's.
 */
#ifndef CANCEL_GLIB_H
#define CANCEL_GLIB_H

#include <cancel.h>
#include <gio/gio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returns a new GCancellable (a full reference, to release with
 * g_object_unref) that is cancelled when `tok` is: before
 * cancel_source_cancel returns, on the cancelling thread, or on the library
 * thread for cancel_source_cancel_async, signals and deadlines. If `tok` is
 * already cancelled, the GCancellable is born cancelled. CANCEL_TOKEN_NONE,
 * or the token of a source freed without being cancelled, gives a
 * GCancellable that we never cancel.
 *
 * Ownership: the bridge keeps its own reference to the token (so freeing the
 * source first is fine) and lets go of it when the GCancellable is
 * finalized; it holds only a weak reference to the GCancellable, so the
 * GCancellable lives exactly as long as GLib's references to it. Freeing
 * the source uncancelled leaves a GCancellable that is simply never
 * cancelled by us.
 *
 * The GCancellable is an ordinary one: g_cancellable_cancel on it cancels
 * only it (never the token). After g_cancellable_reset it no longer follows
 * the token (a token is cancelled once).
 *
 * Never returns NULL. Thread-safe; may be called from a callback. */
CANCEL_API GCancellable *cancel_glib_cancellable_new(cancel_token tok);

/* Returns a new source (owned by the caller, freed with cancel_source_free)
 * that is cancelled when `cancellable` is, with reason REQUESTED, on the
 * thread that calls g_cancellable_cancel, before that call returns: the
 * callbacks registered on it run there, inside GLib's emission of
 * GCancellable::cancelled (so they follow the rules of a ::cancelled
 * handler: do not g_cancellable_disconnect from that GCancellable in them).
 * If `cancellable` is already cancelled, the source is born cancelled. The
 * owner may also cancel it like any source; that does not cancel the
 * GCancellable.
 *
 * The cause's origin is "GCancellable": the source is a linked child of a
 * hidden source named so (one per GCancellable, shared by every source
 * bridged from it since its last cancellation), which keeps the bridge free
 * of any reference to the sources it hands out. Consequently a name the
 * caller sets on the source does not replace that origin.
 *
 * Ownership: after cancel_source_free the bridge holds nothing of the
 * source (the link lives in the source and is unhooked by the free), so
 * any number of sources may be bridged from one long-lived GCancellable
 * without anything piling up on it: the bridge attaches one signal handler
 * and one hidden source to the GCancellable the first time, and lets go of
 * both when the GCancellable is finalized. A GCancellable reset with
 * g_cancellable_reset is followed again: sources made after the reset
 * are cancelled by its next cancellation.
 *
 * Returns NULL with errno EINVAL (`cancellable` NULL or not a GCancellable)
 * or ENOMEM. Thread-safe; may be called from a callback, and from a
 * GCancellable::cancelled handler. */
CANCEL_API cancel_source *cancel_glib_source_new(GCancellable *cancellable);

/* Returns a new GSource (a full reference, to release with g_source_unref)
 * that dispatches exactly once, once `tok` is cancelled, in whatever
 * GMainContext it is attached to: its callback, a GSourceFunc set with
 * g_source_set_callback, is called once and the source is then destroyed,
 * whatever the callback returns. The cancellation may come from any thread;
 * it wakes the context's poll at once. A token that is already cancelled
 * dispatches on the context's next iteration; CANCEL_TOKEN_NONE, or a
 * source freed without being cancelled (before or after this call), gives
 * a GSource that never dispatches.
 *
 * How it wakes: it polls the token's descriptor (cancel_token_fd: one
 * eventfd per source, made on first request and shared by every poller of
 * that source), so no callback runs on the cancelling thread for it and
 * nothing of it outlives the GSource. It keeps its own reference to the
 * token, released when the GSource is finalized (or earlier, once the
 * source was freed uncancelled).
 *
 * Returns NULL with errno EMFILE, ENFILE or ENOMEM if the descriptor cannot
 * be made. Thread-safe; may be called from a callback. */
CANCEL_API GSource *cancel_glib_gsource_new(cancel_token tok);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_GLIB_H */
