/*
 * Scopes: operations on the caller's ring cancelled in the kernel when a
 * token is, through a poll of the token's descriptor on that same ring.
 *
 * Locking and lifetime. A scope belongs to its ring's thread: every field
 * is read and written only by calls made on that thread (liburing's own
 * rule for the ring), so none is atomic and no lock protects them. The one
 * shared structure is the list of scopes that owe requests they could not
 * queue for want of a submission queue entry (rare: the kernel refused a
 * submission); it is guarded by `owed_mu`, and `owed_count` lets the common
 * path skip the lock. The token is retained by the scope from
 * cancel_uring_new until the scope's memory is released, so that reading it
 * when the poll completes is always valid, even after the source was freed,
 * and so that its descriptor stays open while a poll naming it may still
 * be submitted (a scope freed before its poll reached the kernel).
 *
 * The kernel refers to a scope through the user_data of its requests
 * (CANCEL_URING_USER_DATA_BIT | address | kind), so the scope's memory must
 * outlive them: `inflight` counts the requests queued or in the kernel, and
 * a freed scope is released by cancel_uring_cqe when the last one completes.
 * Tied operations are the caller's storage, linked into the scope's list
 * while tied; the caller unlinks them (cancel_uring_untie, on their CQE),
 * and the scope does when it can no longer cancel (the source was freed
 * uncancelled) and when it is freed.
 *
 * Rounds. Once cancelled, the scope sends a round of cancel requests, one
 * per tied operation, and keeps the operations tied: a request that finds
 * nothing (-ENOENT) does not tell an operation already completed (its CQE
 * is on the way) from one the kernel has not issued yet (linked after a
 * predecessor whose completion is still being processed), which would run
 * on once issued. So when a round ends with a request that found nothing
 * and operations still tied, the scope has the kernel process its pending
 * completions (io_uring_get_events: with IORING_SETUP_DEFER_TASKRUN they
 * wait for the ring's thread) and sends another round to those still tied,
 * up to MAX_ROUNDS: an operation the user never unties, or one linked after
 * an operation left untied, would otherwise make rounds for ever. The
 * rounds walk the list with a cursor, so that a round short of submission
 * queue entries goes on where it stopped.
 *
 * Why a poll and not a callback: a cancellation callback runs on the
 * cancelling thread, which must not touch the ring (liburing rings are not
 * thread-safe); the eventfd wakes the ring's own thread instead, inside the
 * wait it already makes. The eventfd is never read, so once cancelled it
 * stays readable and a poll armed late completes at once.
 */
#include <cancel/uring.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum kind {
    K_POLL = 1,   /* the poll of the token's descriptor */
    K_CANCEL = 2, /* an IORING_OP_ASYNC_CANCEL of a tied operation */
    K_DUD = 3,    /* an SQE turned into a request of ours by a tie on a cancelled token */
    K_REMOVE = 4, /* the IORING_OP_POLL_REMOVE of cancel_uring_free */
};
#define KIND_MASK UINT64_C(7)

/* Rounds of cancel requests at most, the first included (see the top). */
#define MAX_ROUNDS 8

enum state {
    WATCHING, /* the token may still be cancelled */
    FIRED,    /* cancelled: tied operations are (being) cancelled, ties refused */
    INERT,    /* the token can never be cancelled: ties are accepted, never cancelled */
    BROKEN,   /* the poll failed for good: ties refused with `error` */
};

struct cancel_uring {
    struct io_uring *ring;
    cancel_token tok;      /* retained; released with the scope's memory */
    int fd;                /* the token's descriptor (WATCHING) */
    int error;             /* BROKEN: why */
    enum state state;
    unsigned inflight;     /* our requests queued or in the kernel */
    bool poll_armed;       /* a poll is queued or in the kernel */
    bool remove_sent;      /* the POLL_REMOVE of cancel_uring_free is */
    bool freed;            /* cancel_uring_free was called */
    bool owed;             /* in the owed list */
    cancel_uring_op *head; /* tied operations */
    /* FIRED: the round under way */
    cancel_uring_op *cursor; /* the next tied operation to send a cancel to */
    unsigned round_out;      /* its cancel requests queued or in the kernel */
    unsigned rounds;         /* rounds begun */
    bool missed;             /* one of its requests found nothing */
    struct cancel_uring *next_owed; /* under owed_mu */
};

static pthread_mutex_t owed_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel_uring *owed_head; /* under owed_mu */
/* How many scopes are in the list: a hint read without the lock (relaxed).
 * A scope is only added or taken on its ring's thread, and only that
 * thread's own retries need to see it, so program order suffices. */
static atomic_uint owed_count;

static uint64_t tag(const cancel_uring *cu, enum kind k)
{
    return CANCEL_URING_USER_DATA_BIT | (uint64_t)(uintptr_t)cu | (uint64_t)k;
}

/* io_uring_submit, leaving errno alone (some liburing builds go through
 * libc's syscall(), which sets it). */
static void submit(struct io_uring *ring)
{
    int saved = errno;
    (void)io_uring_submit(ring);
    errno = saved;
}

/* An SQE, submitting what is queued to make room if need be. Zeroed:
 * liburing's helpers of older versions leave fields of a reused entry that
 * some opcodes reject. */
static struct io_uring_sqe *get_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) {
        submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    if (sqe != NULL)
        memset(sqe, 0, sizeof *sqe);
    return sqe;
}

/* Releases a freed scope's memory and its token, once nothing of it is
 * queued or in the kernel: a poll still queued names the token's
 * descriptor, which the token keeps open. */
static void release(cancel_uring *cu)
{
    cancel_token_release(cu->tok);
    free(cu);
}

static void unlink_op(cancel_uring *cu, cancel_uring_op *op)
{
    if (cu->cursor == op)
        cu->cursor = op->cancel__next;
    if (op->cancel__prev != NULL)
        op->cancel__prev->cancel__next = op->cancel__next;
    else
        cu->head = op->cancel__next;
    if (op->cancel__next != NULL)
        op->cancel__next->cancel__prev = op->cancel__prev;
    op->cancel__prev = op->cancel__next = NULL;
    op->cancel__scope = NULL;
}

static void untie_all(cancel_uring *cu)
{
    while (cu->head != NULL)
        unlink_op(cu, cu->head);
}

static bool queue_poll(cancel_uring *cu)
{
    struct io_uring_sqe *sqe = get_sqe(cu->ring);
    if (sqe == NULL)
        return false;
    io_uring_prep_poll_add(sqe, cu->fd, POLLIN);
    sqe->user_data = tag(cu, K_POLL);
    cu->poll_armed = true;
    cu->inflight++;
    return true;
}

static bool queue_cancel(cancel_uring *cu, uint64_t user_data)
{
    struct io_uring_sqe *sqe = get_sqe(cu->ring);
    if (sqe == NULL)
        return false;
    io_uring_prep_rw(IORING_OP_ASYNC_CANCEL, sqe, -1, NULL, 0, 0);
    sqe->addr = user_data;
    sqe->user_data = tag(cu, K_CANCEL);
    cu->inflight++;
    cu->round_out++;
    return true;
}

static bool queue_remove(cancel_uring *cu)
{
    struct io_uring_sqe *sqe = get_sqe(cu->ring);
    if (sqe == NULL)
        return false;
    io_uring_prep_rw(IORING_OP_POLL_REMOVE, sqe, -1, NULL, 0, 0);
    sqe->addr = tag(cu, K_POLL);
    sqe->user_data = tag(cu, K_REMOVE);
    cu->remove_sent = true;
    cu->inflight++;
    return true;
}

static void owe(cancel_uring *cu, bool owing)
{
    if (owing == cu->owed)
        return;
    pthread_mutex_lock(&owed_mu);
    if (owing) {
        cu->next_owed = owed_head;
        owed_head = cu;
        atomic_fetch_add_explicit(&owed_count, 1, memory_order_relaxed);
    } else {
        struct cancel_uring **p = &owed_head;
        while (*p != cu)
            p = &(*p)->next_owed;
        *p = cu->next_owed;
        atomic_fetch_sub_explicit(&owed_count, 1, memory_order_relaxed);
    }
    cu->owed = owing;
    pthread_mutex_unlock(&owed_mu);
}

/* Queues every request the scope owes (a poll to re-arm, cancels of tied
 * operations, the removal of the poll); submits them if `and_submit`. What
 * cannot be queued now goes to the owed list. */
static void settle(cancel_uring *cu, bool and_submit)
{
    bool queued = false, short_of_sqes = false;
    if (!cu->freed && cu->state == WATCHING && !cu->poll_armed) {
        if (queue_poll(cu))
            queued = true;
        else
            short_of_sqes = true;
    }
    while (cu->state == FIRED && cu->cursor != NULL && !short_of_sqes) {
        if (queue_cancel(cu, cu->cursor->cancel__user_data)) {
            cu->cursor = cu->cursor->cancel__next;
            queued = true;
        } else {
            short_of_sqes = true;
        }
    }
    if (cu->freed && cu->poll_armed && !cu->remove_sent) {
        if (queue_remove(cu))
            queued = true;
        else
            short_of_sqes = true;
    }
    if (queued && and_submit)
        submit(cu->ring);
    owe(cu, short_of_sqes);
}

/* Retries the owed requests of the scopes of `ring`. */
static void retry_owed(struct io_uring *ring)
{
    struct cancel_uring *mine = NULL;
    pthread_mutex_lock(&owed_mu);
    for (struct cancel_uring **p = &owed_head; *p != NULL;) {
        struct cancel_uring *cu = *p;
        if (cu->ring == ring) {
            *p = cu->next_owed;
            cu->owed = false;
            cu->next_owed = mine;
            mine = cu;
            atomic_fetch_sub_explicit(&owed_count, 1, memory_order_relaxed);
        } else {
            p = &cu->next_owed;
        }
    }
    pthread_mutex_unlock(&owed_mu);
    while (mine != NULL) {
        struct cancel_uring *cu = mine;
        mine = cu->next_owed;
        settle(cu, true);
    }
}

cancel_uring *cancel_uring_new(struct io_uring *ring, cancel_token tok)
{
    if (ring == NULL || (ring->flags & IORING_SETUP_IOPOLL) != 0) {
        errno = EINVAL;
        return NULL;
    }
    cancel_uring *cu = calloc(1, sizeof *cu);
    if (cu == NULL)
        return NULL; /* errno ENOMEM */
    cu->ring = ring;
    cu->fd = -1;
    cu->tok = cancel_token_retain(tok);
    if (cancel_token_is_requested(tok)) {
        cu->state = FIRED;
    } else if (!cancel_token_can_be_canceled(tok)) {
        cu->state = INERT;
    } else {
        cu->state = WATCHING;
        cu->fd = cancel_token_fd(tok);
        int err = cu->fd < 0 ? errno : queue_poll(cu) ? 0 : EBUSY;
        if (err != 0) {
            cancel_token_release(cu->tok);
            free(cu);
            errno = err;
            return NULL;
        }
    }
    return cu;
}

int cancel_uring_tie(cancel_uring *cu, struct io_uring_sqe *sqe, cancel_uring_op *op)
{
    if (cu == NULL || sqe == NULL || op == NULL || (sqe->user_data & CANCEL_URING_USER_DATA_BIT))
        return EINVAL;
    /* Untied, whatever the storage held, on every path that leaves it so:
     * cancel_uring_untie reads it. */
    op->cancel__prev = op->cancel__next = NULL;
    op->cancel__scope = NULL;
    op->cancel__user_data = sqe->user_data;
    if (cu->state == FIRED || cancel_token_is_requested(cu->tok)) {
        /* Not started: the entry becomes a request of ours that fails at
         * once (nothing carries that user_data), breaking its link chain. */
        uint8_t links = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);
        memset(sqe, 0, sizeof *sqe);
        io_uring_prep_rw(IORING_OP_ASYNC_CANCEL, sqe, -1, NULL, 0, 0);
        sqe->addr = tag(cu, K_DUD);
        sqe->flags = links;
        sqe->user_data = tag(cu, K_DUD);
        cu->inflight++;
        return ECANCELED;
    }
    if (cu->state == BROKEN)
        return cu->error;
    if (cu->state == INERT)
        return 0;
    op->cancel__scope = cu;
    op->cancel__next = cu->head;
    if (cu->head != NULL)
        cu->head->cancel__prev = op;
    cu->head = op;
    return 0;
}

void cancel_uring_untie(cancel_uring_op *op)
{
    if (op != NULL && op->cancel__scope != NULL)
        unlink_op(op->cancel__scope, op);
}

/* Begins a round of cancel requests (see the top); settle queues them. */
static void begin_round(cancel_uring *cu)
{
    cu->cursor = cu->head;
    cu->missed = false;
    cu->rounds++;
}

/* A cancel request completed (res: 0, -ENOENT, -EALREADY...). */
static void on_cancel(cancel_uring *cu, int res)
{
    cu->round_out--;
    if (res == -ENOENT)
        cu->missed = true;
    if (cu->freed || cu->round_out != 0 || cu->cursor != NULL || !cu->missed || cu->head == NULL ||
        cu->rounds >= MAX_ROUNDS)
        return;
    /* Completions the kernel has yet to process issue linked operations. */
    int saved = errno;
    (void)io_uring_get_events(cu->ring);
    errno = saved;
    begin_round(cu);
    settle(cu, true);
}

/* The poll completed (res: the poll mask, or -errno). */
static void on_poll(cancel_uring *cu, int res)
{
    if (cancel_token_is_requested(cu->tok)) {
        cu->state = FIRED;
        begin_round(cu);
    } else if (!cancel_token_can_be_canceled(cu->tok)) {
        cu->state = INERT; /* freed uncancelled: the operations run on */
        untie_all(cu);
    } else if (res < 0 && res != -ECANCELED && res != -EINTR && res != -EAGAIN && res != -ENOMEM) {
        cu->state = BROKEN;
        cu->error = -res;
        untie_all(cu);
    }
    /* else: a transient failure; settle arms the poll again. */
    settle(cu, true);
}

int cancel_uring_cqe(struct io_uring *ring, const struct io_uring_cqe *cqe)
{
    if (atomic_load_explicit(&owed_count, memory_order_relaxed) != 0)
        retry_owed(ring);
    uint64_t ud = cqe->user_data;
    uint64_t kind = ud & KIND_MASK;
    if ((ud & CANCEL_URING_USER_DATA_BIT) == 0 || ud == LIBURING_UDATA_TIMEOUT || kind < K_POLL ||
        kind > K_REMOVE)
        return 0;
    cancel_uring *cu = (cancel_uring *)(uintptr_t)(ud & ~(CANCEL_URING_USER_DATA_BIT | KIND_MASK));
    cu->inflight--;
    if (kind == K_POLL) {
        cu->poll_armed = false;
        if (!cu->freed && cu->state == WATCHING)
            on_poll(cu, cqe->res);
    } else if (kind == K_CANCEL) {
        on_cancel(cu, cqe->res);
    }
    if (cu->owed)
        settle(cu, true);
    if (cu->freed && cu->inflight == 0 && !cu->owed) {
        release(cu);
        return 2;
    }
    return 1;
}

int cancel_uring_free(cancel_uring *cu)
{
    if (cu == NULL)
        return 0;
    untie_all(cu);
    cu->freed = true;
    settle(cu, true);
    if (cu->inflight == 0 && !cu->owed) {
        release(cu);
        return 0;
    }
    return EINPROGRESS;
}
