/*
 * libcancel-grpc: a token that travels with a gRPC call (gRPC's C core).
 *
 * One request, one token tree, across machines. On the client, a call made
 * from a token carries the token's deadline to the server (gRPC sends it as
 * the time remaining) and is cancelled when the token is. On the server, the
 * incoming call becomes a source that is cancelled when the client cancels,
 * goes away, or runs out of time. A handler that calls further services
 * forwards its token, so a request cancelled at the edge stops every hop, and
 * the budget shrinks hop by hop.
 *
 *     // server A, for an incoming call (call, details from grpc_server_request_call)
 *     cancel_source *src = cancel_grpc_server_source_new(call, details.deadline);
 *     cancel_token tok = cancel_source_token(src);
 *     grpc_call *down = cancel_grpc_call_new(tok, channel_to_b, cq, "/svc/Work", NULL);
 *     ... batches on `down`, work that checks `tok` ...
 *     cancel_grpc_call_unref(down);
 *     cancel_source_free(src);
 *
 *     // the loop of a completion queue made with grpc_completion_queue_create_for_next
 *     for (;;) {
 *         grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
 *         if (ev.type == GRPC_QUEUE_SHUTDOWN)
 *             break;
 *         if (cancel_grpc_dispatch(&ev))
 *             continue;               // the adapter's event: already handled
 *         ... the application's own tags ...
 *     }
 *
 * Deadlines across hops. gRPC sends the time remaining, rounded up (to
 * whole milliseconds below a second; to three significant digits above,
 * that is 10 ms steps from 1 s, 100 ms from 10 s, and so on), computed from
 * a clock it caches, so a deadline received is a little later than the one
 * sent (measured +0.1 to +6 ms per hop over loopback, plus the
 * rounding step above, plus whatever the request waits for a CPU); and a
 * deadline that expires upstream reaches the next hop as a plain stream
 * reset, which looks like a cancel. Hence the two constants below: the
 * server source fires CANCEL_GRPC_DEADLINE_MARGIN_NS before the call's
 * deadline (so each hop's budget is smaller than its caller's), and a reset
 * that arrives within CANCEL_GRPC_TIMEOUT_WINDOW_NS of the deadline counts
 * as a timeout, not as a cancel. For a deadline a second or more away, both
 * grow by gRPC's rounding step for it (at most 1% of the time left).
 *
 * Time. The token's deadline is on cancel_now()'s clock (CLOCK_MONOTONIC, or
 * a test's manual clock); gRPC's are on its own clocks. Both directions are
 * converted through the time remaining when the call is made (client) or the
 * source is made (server), so neither clock's epoch matters. With the manual
 * clock on, the server source's deadline follows the manual clock; gRPC's
 * own deadline on the wire stays on real time.
 *
 * gRPC must be initialised (grpc_init) while these functions are used.
 * Pluck queues (grpc_completion_queue_create_for_pluck) are not supported:
 * the adapter's batch would never be plucked.
 * Errors follow <cancel.h>: a pointer result is NULL with errno set.
 */
#ifndef CANCEL_GRPC_H
#define CANCEL_GRPC_H

#include <cancel.h>
#include <grpc/grpc.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The server source fires this long (3 ms) before the deadline it was
 * given (plus gRPC's rounding step for deadlines a second or more away):
 * more than gRPC's usual growth of a deadline over one hop, so the budget a
 * handler forwards is smaller than the one it received. */
#define CANCEL_GRPC_DEADLINE_MARGIN_NS ((int64_t)3 * 1000 * 1000)

/* A cancellation from the peer that arrives this close (10 ms, plus the
 * same rounding step) to the call's deadline, or after it, is reported as
 * reason TIMEOUT: an upstream deadline arrives as a stream reset,
 * indistinguishable from a cancel. */
#define CANCEL_GRPC_TIMEOUT_WINDOW_NS ((int64_t)10 * 1000 * 1000)

/* Creates a client call (as grpc_channel_create_call with no parent call and
 * GRPC_PROPAGATE_DEFAULTS) bound to `cq`, for `method` and `host` (NULL: the
 * channel's default authority; both copied), whose deadline is the token's
 * (cancel_token_deadline): the time remaining on cancel_now()'s clock is
 * added to gRPC's monotonic clock, so the manual clock of a test and gRPC's
 * clock epoch do not matter; no deadline for a token without one. When the
 * token is cancelled, the call is cancelled with status DEADLINE_EXCEEDED
 * for reason TIMEOUT and CANCELLED for any other reason (the description
 * names the reason, and the message of a failure); its pending batches then
 * complete with that status. A token already cancelled gives a call already
 * cancelled, not NULL. CANCEL_TOKEN_NONE gives a plain call.
 * Ownership: the caller owns the call and releases it with
 * cancel_grpc_call_unref, never grpc_call_unref: until then the adapter
 * holds the call and a registration on the token (gRPC tells nobody when a
 * call is over). The token need only be valid during this call (the adapter
 * retains it). The cancellation callback runs on the thread that cancels
 * the token (the library thread for deadlines and asynchronous cancels).
 * Returns NULL with errno EINVAL (NULL channel or method) or ENOMEM (or
 * gRPC refused to create the call). Thread-safe; may be called from a
 * callback. */
CANCEL_API grpc_call *cancel_grpc_call_new(cancel_token tok, grpc_channel *channel, grpc_completion_queue *cq,
                                           const char *method, const char *host);

/* Releases a call made by cancel_grpc_call_new: removes the registration on
 * the token (waiting for the cancellation callback if it is running on
 * another thread), drops the token's reference and the call's. As with
 * grpc_call_unref, a call not yet complete is cancelled by gRPC. A call not
 * made by cancel_grpc_call_new is simply passed to grpc_call_unref; NULL is a
 * no-op. Once per call. Thread-safe (for different calls); may be called from
 * a callback, including the token's, and from a completion of the call. */
CANCEL_API void cancel_grpc_call_unref(grpc_call *call);

/* On the server, for an incoming call: a new source (owned by the caller,
 * freed with cancel_source_free, before or after the call ends) that is
 * cancelled
 *  - with reason REQUESTED, origin "grpc peer", when the client cancels the
 *    call or goes away (the call ends without the server having sent its
 *    status);
 *  - with reason TIMEOUT, origin "grpc peer", CANCEL_GRPC_DEADLINE_MARGIN_NS
 *    before `deadline`, or when the peer's cancellation arrives within
 *    CANCEL_GRPC_TIMEOUT_WINDOW_NS of it (both widened by gRPC's rounding
 *    step for deadlines a second or more away: see the top of this file).
 * `deadline` is the one grpc_server_request_call or
 * grpc_server_request_registered_call gave (gRPC has no getter for it), on
 * any of gRPC's clocks; gpr_inf_future means none. cancel_token_deadline of
 * the new source's token reports the margin-adjusted deadline, which is what
 * a handler forwards to the next hop.
 * The source is linked to an inner source that the adapter owns, named
 * "grpc peer"; when the call ends normally (the server sent its status) the
 * inner source is freed uncancelled, so the returned source is no longer
 * cancelled by the call nor by its deadline.
 * How it learns that the call ended: it starts the call's one
 * GRPC_OP_RECV_CLOSE_ON_SERVER batch, so the handler must never start one
 * (and should not otherwise watch for the end of the call). Call it where
 * the handler starts the call's batches (gRPC wants batches of one call
 * started one at a time). The batch's tag is a
 * grpc_completion_queue_functor: on a callback queue gRPC runs it; on a next
 * queue the loop must pass every event to cancel_grpc_dispatch, up to the
 * queue's shutdown. The peer's cancellation runs the source's callbacks on
 * the thread that completes the batch (gRPC's thread on a callback queue,
 * the caller of cancel_grpc_dispatch on a next queue); a timeout runs them
 * on the library thread.
 * Returns NULL with errno EINVAL (NULL call, or a client call), EBUSY (the
 * call's RECV_CLOSE_ON_SERVER batch was already started, by this function or
 * by the handler), ENOMEM, or EAGAIN (the library thread, which fires the
 * deadline, could not be started). Thread-safe (for different calls); may be
 * called from a callback. */
CANCEL_API cancel_source *cancel_grpc_server_source_new(grpc_call *call, gpr_timespec deadline);

/* For the loop of a next queue (grpc_completion_queue_next) that carries
 * calls watched by cancel_grpc_server_source_new: returns true if `ev` is
 * the adapter's event, which it has then handled (the source cancelled or
 * released): skip it. Returns false for every other event (any type, any
 * tag; tags are never dereferenced), which is the application's. Each event
 * is to be passed once. Thread-safe; runs the source's callbacks on the
 * calling thread when the peer cancelled. */
CANCEL_API bool cancel_grpc_dispatch(const grpc_event *ev);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_GRPC_H */
