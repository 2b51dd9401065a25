/*
 * <cancel/uring.h>: operations on your io_uring, cancelled in the kernel
 * when a token is (libcancel-uring, pkg-config cancel-uring, CMake
 * cancel::uring).
 *
 * A scope joins one token to one ring. Each operation you tie to the scope
 * is cancelled with IORING_OP_ASYNC_CANCEL once the token is cancelled, and
 * completes with -ECANCELED. The scope learns of the cancellation through
 * the ring itself: it polls the token's descriptor (cancel_token_fd) with
 * IORING_OP_POLL_ADD on your ring, so no thread is involved and your loop
 * wakes in its usual io_uring_wait_cqe. Your loop hands every completion to
 * cancel_uring_cqe first, which handles and consumes the scope's own.
 *
 *     cancel_uring *scope = cancel_uring_new(&ring, tok);
 *
 *     struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
 *     io_uring_prep_read(sqe, fd, req->buf, sizeof req->buf, 0);
 *     io_uring_sqe_set_data(sqe, req);
 *     if (cancel_uring_tie(scope, sqe, &req->tie) == ECANCELED)
 *         ...already cancelled: the read never runs, no CQE comes for req...
 *     io_uring_submit(&ring);
 *
 *     for (;;) {
 *         if (io_uring_wait_cqe(&ring, &cqe) != 0)
 *             continue;                                   // -EINTR
 *         if (cancel_uring_cqe(&ring, cqe) == 0) {        // yours
 *             struct req *r = io_uring_cqe_get_data(cqe);
 *             cancel_uring_untie(&r->tie);
 *             ...cqe->res: the result, or -ECANCELED...
 *         }
 *         io_uring_cqe_seen(&ring, cqe);
 *     }
 *     cancel_uring_free(scope);
 *
 * What happens on cancellation, on your loop's thread: the token's
 * descriptor turns readable, the kernel completes the scope's poll, your
 * loop passes that CQE to cancel_uring_cqe, which queues one
 * IORING_OP_ASYNC_CANCEL per tied operation (a round) and submits them
 * (io_uring_submit: with any SQE you prepared and had not submitted yet).
 * Each operation then completes once, with -ECANCELED, or with its result
 * if it finished first (the race is the kernel's: a completion is never
 * both), and stays tied until you untie it. An operation the kernel cannot
 * stop at once (one blocked in an io-wq worker: the cancel answers
 * -EALREADY) completes when the kernel manages to interrupt it, often with
 * -EINTR. A cancel request that finds nothing means the operation has just
 * completed, or is linked in a chain and not issued yet (its predecessor's
 * completion is still being processed); so when a round ends with one and
 * operations are still tied, cancel_uring_cqe has the kernel process its
 * pending completions (io_uring_get_events) and sends another round to the
 * operations still tied, up to 8 rounds. Chains: tie every operation of a
 * link chain; one not started yet completes with -ECANCELED when its
 * predecessor is cancelled, as the kernel does for links, and one whose
 * predecessor completed as the token was cancelled is cancelled once
 * issued. An operation linked after one you did not tie, which runs on, is
 * issued after the rounds are over and runs on too. The descriptors you
 * passed stay yours: nothing is closed.
 *
 * Costs on your ring: the scope's poll takes one SQE when the scope is
 * made (for a token that can be cancelled) and one CQE when it completes;
 * cancel_uring_free takes one more SQE and two CQEs if the poll is still
 * armed; on cancellation each tied operation takes one SQE and one CQE for
 * its cancel request, per round (one round, unless a request found
 * nothing). Size the rings for that. When the
 * submission queue is full the functions submit what is queued to make
 * room; if the kernel still refuses (its completion queue overflowing), the
 * cancel requests still owed are queued by a later call of cancel_uring_cqe
 * for that ring.
 *
 * The scope's requests carry user_data values with the top bit set
 * (CANCEL_URING_USER_DATA_BIT); give your own requests user_data without it
 * (pointers and small integers are fine).
 *
 * Threading: a scope and its ring are used by one thread at a time, as
 * liburing requires of a ring (cancel_uring_cqe may run for different rings
 * on different threads at once). The token may be cancelled from any
 * thread, a signal handler or a deadline. Nothing here may be called from a
 * cancellation callback unless that callback runs on the ring's thread.
 * Not for rings made with IORING_SETUP_IOPOLL (the kernel refuses polls
 * there). Kernel 5.5 or later (IORING_OP_ASYNC_CANCEL).
 *
 * Conventions: the error rule of <cancel.h>: cancel_uring_tie and
 * cancel_uring_free return 0 or an error number, cancel_uring_new NULL with
 * errno; cancel_uring_cqe returns whose completion it was. Only
 * cancel_uring_new's failure changes errno.
 */
#ifndef CANCEL_URING_H
#define CANCEL_URING_H

#include <cancel.h>

#include <liburing.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The bit set in the user_data of every request of a scope. */
#define CANCEL_URING_USER_DATA_BIT (UINT64_C(1) << 63)

/* A scope: opaque, made by cancel_uring_new. */
typedef struct cancel_uring cancel_uring;

/* Storage for one tied operation, provided by the caller (usually inside
 * the request the operation's user_data points to), so that tying
 * allocates nothing. Zero it (CANCEL_URING_OP_INIT) if it may be untied
 * before it is ever tied. */
typedef struct cancel_uring_op {
    struct cancel_uring_op *cancel__prev; /* private */
    struct cancel_uring_op *cancel__next; /* private */
    cancel_uring *cancel__scope;          /* private: NULL while untied */
    uint64_t cancel__user_data;           /* private */
} cancel_uring_op;
#define CANCEL_URING_OP_INIT {0, 0, 0, 0}

/* Makes a scope tying operations on `ring` to `tok`, which it retains (so
 * the source may be freed meanwhile). For a token that can be cancelled,
 * queues the poll of its descriptor (taken, or made, with cancel_token_fd);
 * it reaches the kernel with the next submission. For a token already
 * cancelled, the scope starts cancelled (cancel_uring_tie answers
 * ECANCELED); for one that can never be cancelled (CANCEL_TOKEN_NONE), the
 * scope never cancels anything and uses nothing of the ring. Returns NULL
 * with errno EINVAL (NULL ring, or an IORING_SETUP_IOPOLL ring), ENOMEM,
 * EMFILE/ENFILE (the token's descriptor could not be made), or EBUSY (no
 * submission queue entry, even after submitting). Ring's thread. */
CANCEL_API cancel_uring *cancel_uring_new(struct io_uring *ring, cancel_token tok);

/* Ties the operation just prepared in `sqe`, a submission queue entry of
 * the scope's ring, to the scope, in storage `op` that must stay in place
 * until cancel_uring_untie. Set the operation's user_data first: the cancel
 * request names it. Returns:
 *  - 0: tied. Call cancel_uring_untie(op) when its CQE arrives.
 *  - ECANCELED: the token is already cancelled. The operation will not run:
 *    `sqe` has been turned into a request of the scope (an
 *    IORING_OP_ASYNC_CANCEL that finds nothing, keeping the SQE's link
 *    flags so that operations linked after it complete with -ECANCELED) and
 *    no CQE comes for your user_data. `op` is left untied.
 *  - EINVAL: a NULL argument. Nothing changed.
 *  - an error number (EINVAL, ENOMEM...) the kernel returned for the
 *    scope's poll, which could not be re-armed: the scope can no longer
 *    cancel. `op` is left untied; the operation runs untied.
 * With a scope that can never cancel, returns 0 and leaves `op` untied.
 * Every answer but EINVAL writes `op` (tied, or untied so that untying it
 * is harmless), whatever it held before. Several operations with the same
 * user_data are each cancelled. Ring's thread. */
CANCEL_API int cancel_uring_tie(cancel_uring *scope, struct io_uring_sqe *sqe, cancel_uring_op *op);

/* Unties an operation, normally once its CQE arrived, so that the storage
 * can be reused and its user_data given to another request. A multishot
 * operation (accept, receive or poll with a multishot flag) posts CQEs
 * with IORING_CQE_F_MORE while more are to come: untie it on its last CQE,
 * the one without IORING_CQE_F_MORE; untied earlier, it would go on
 * running, no longer cancelled by the token. Untied storage
 * (zeroed, already untied, or untied by the scope itself when it was freed
 * or its source was freed uncancelled) is left alone. Ring's thread. */
CANCEL_API void cancel_uring_untie(cancel_uring_op *op);

/* Hands a completion to the scopes: returns 0 for a completion of yours,
 * which it leaves alone, or, for one of a scope's requests, 1 (mark it seen
 * and go on) or 2 (the same, and it was the last request of a scope freed
 * with cancel_uring_free, whose memory is now released). For the completion
 * of a scope's poll, when the token is cancelled, queues and submits the
 * cancel requests of its tied operations; for the last request of a round,
 * when one found nothing, the next round (see above). Call it for every CQE of a ring
 * that has scopes, before you mark the CQE seen; the CQE itself is not
 * modified. Ring's thread. */
CANCEL_API int cancel_uring_cqe(struct io_uring *ring, const struct io_uring_cqe *cqe);

/* Frees the scope: its tied operations are untied (they are no longer
 * cancelled by the token). If its poll is still armed in the kernel, or
 * queued, submits an IORING_OP_POLL_REMOVE; the memory, and with it the
 * scope's reference to the token (which keeps the token's descriptor open
 * for that poll), is then released by cancel_uring_cqe with the scope's
 * last CQE (it returns 2).
 * Returns 0 when everything was released at once, EINPROGRESS when requests
 * of the scope are still in the kernel: keep handing the ring's CQEs to
 * cancel_uring_cqe until it has returned 2 for this scope before
 * io_uring_queue_exit, or the scope's few bytes are never released. NULL is
 * a no-op (returns 0). Ring's thread. */
CANCEL_API int cancel_uring_free(cancel_uring *scope);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_URING_H */
