/*
 * libcancel-grpc: tokens carried by gRPC calls (<cancel/grpc.h>).
 *
 * Objects and lifetimes.
 *  - struct client_call, one per cancel_grpc_call_new: the call (the
 *    caller's reference, which the adapter holds), a retained reference to
 *    the token, and a registration on it. Two shares keep it alive: the
 *    caller's handle (dropped by cancel_grpc_call_unref) and the
 *    registration (dropped when the callback has cancelled the call, or by
 *    cancel_grpc_call_unref when the callback will never run: unregistered
 *    in time, or inert because the token can no longer be cancelled; the
 *    callback's `started` flag tells the two outcomes of a failed
 *    unregister apart). The last share out unrefs the call, releases the token
 *    and frees the object, so the callback never touches a call gRPC has
 *    destroyed, even when unregister could not wait for it (it runs on the
 *    unregistering thread, lower in the stack, or waiting would deadlock).
 *  - struct server_watch, one per cancel_grpc_server_source_new: the
 *    functor that tags the RECV_CLOSE_ON_SERVER batch, the inner "grpc peer"
 *    source the adapter owns, and from when a peer cancel counts as a
 *    timeout. The batch completes exactly once; whoever completes it
 *    (gRPC's callback queue, or cancel_grpc_dispatch on a next queue)
 *    cancels or frees the inner source and frees the watch. The source
 *    handed to the caller is a linked child of the inner one, so the caller
 *    may free it at any time.
 *
 * Finding our objects again. cancel_grpc_call_unref gets only the call and
 * cancel_grpc_dispatch gets any tag of the application (possibly not a
 * pointer at all), so each kind lives in a table keyed by pointer, never
 * dereferenced before it is found there: `clients` keyed by the call,
 * `watches` by the functor. Removal from the table is what decides who
 * owns the object next (exactly one remover wins).
 *
 * Locking. Each table is 64 shards, each a mutex over a short chain;
 * the mutex is held for a few pointer operations only, never while user
 * code, libcancel callbacks or gRPC run. No other lock is taken here.
 *
 * Threads. A token's callback runs on the cancelling thread or the library
 * thread; a watch completes on one of gRPC's threads or the dispatcher's.
 * gRPC orders a batch's completion after its start, but gRPC is not built
 * for ThreadSanitizer, so that order is invisible to the tool. The shard
 * mutex states it again in a form it sees: a watch is filled in before it is
 * listed, and its completion unlists it before reading it.
 */
#include <cancel/grpc.h>

#include <errno.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define NS_PER_S INT64_C(1000000000)

/* ---------------------------------------------------------------- tables */

struct entry {
    const void *key;    /* r/o while listed */
    struct entry *next; /* under the shard's mutex */
};

#define SHARD_BITS 6
struct shard {
    _Alignas(64) pthread_mutex_t mu;
    struct entry *head; /* under mu */
};
struct table {
    struct shard shards[1u << SHARD_BITS];
};
#define SHARD_INIT {PTHREAD_MUTEX_INITIALIZER, NULL}
#define SHARDS_4 SHARD_INIT, SHARD_INIT, SHARD_INIT, SHARD_INIT
#define SHARDS_16 SHARDS_4, SHARDS_4, SHARDS_4, SHARDS_4
#define TABLE_INIT {{SHARDS_16, SHARDS_16, SHARDS_16, SHARDS_16}}

static struct table clients = TABLE_INIT; /* struct client_call by call */
static struct table watches = TABLE_INIT; /* struct server_watch by functor */

static struct shard *shard_of(struct table *t, const void *key)
{
    uint64_t h = ((uint64_t)(uintptr_t)key >> 4) * UINT64_C(0x9E3779B97F4A7C15);
    return &t->shards[h >> (64 - SHARD_BITS)];
}

static void table_add(struct table *t, struct entry *e, const void *key)
{
    struct shard *s = shard_of(t, key);
    e->key = key;
    pthread_mutex_lock(&s->mu);
    e->next = s->head;
    s->head = e;
    pthread_mutex_unlock(&s->mu);
}

/* Unlists and returns the entry for `key`, or NULL if there is none. */
static struct entry *table_take(struct table *t, const void *key)
{
    struct shard *s = shard_of(t, key);
    pthread_mutex_lock(&s->mu);
    struct entry **p = &s->head;
    while (*p && (*p)->key != key)
        p = &(*p)->next;
    struct entry *e = *p;
    if (e)
        *p = e->next;
    pthread_mutex_unlock(&s->mu);
    return e;
}

/* ------------------------------------------------------------------ time */

static int64_t add_sat(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    return a + b;
}

/* A gRPC time span in ns, saturated to [INT64_MIN/2, INT64_MAX]. */
static int64_t span_ns(gpr_timespec t)
{
    if (t.tv_sec >= INT64_MAX / NS_PER_S - 1)
        return INT64_MAX;
    if (t.tv_sec <= INT64_MIN / NS_PER_S / 2)
        return INT64_MIN / 2;
    return t.tv_sec * NS_PER_S + t.tv_nsec;
}

/* The time left until a gRPC deadline, in ns (negative once passed), or
 * CANCEL_INFINITE for none. */
static int64_t grpc_time_left(gpr_timespec deadline)
{
    if (deadline.tv_sec == INT64_MAX)
        return CANCEL_INFINITE; /* gpr_inf_future, on any clock */
    if (deadline.clock_type == GPR_TIMESPAN)
        return span_ns(deadline);
    int64_t left = span_ns(gpr_time_sub(deadline, gpr_now(deadline.clock_type)));
    return left == INT64_MAX ? CANCEL_INFINITE : left;
}

/* How much later than sent a deadline `left` away may arrive, beyond what
 * the margin covers: a second or more away, gRPC sends the time left with
 * three significant digits, rounded up (10 ms steps from 1 s, 100 ms from
 * 10 s, 1 s from 100 s; units of minutes and hours from 1000 s, never more
 * than 1% of the time left). */
static int64_t send_rounding(int64_t left)
{
    if (left < NS_PER_S)
        return 0; /* whole ms: within the margin */
    if (left >= 1000 * NS_PER_S)
        return left / 100;
    int64_t step = 1000000, ms = left / 1000000;
    for (; ms >= 1000; ms /= 10)
        step *= 10;
    return step;
}

/* The token's deadline as a gRPC deadline, through the time remaining. */
static gpr_timespec grpc_deadline_of(cancel_token tok)
{
    int64_t d = cancel_token_deadline(tok);
    if (d == CANCEL_INFINITE)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    /* gRPC's clock first: a pause between the two reads then makes the
     * deadline earlier, never later. */
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    int64_t left = d - cancel_now();
    if (left < 0)
        left = 0;
    return gpr_time_add(now, gpr_time_from_nanos(left, GPR_TIMESPAN));
}

/* ---------------------------------------------------------------- client */

struct client_call {
    struct entry link;      /* in `clients`, keyed by call; first member */
    grpc_call *call;        /* r/o; the reference the caller got */
    cancel_token tok;       /* r/o; retained */
    cancel_registration reg;
    _Atomic bool started;   /* the callback started: it drops its own share */
    _Atomic int shares;     /* the handle and the registration: 2, 1, 0 */
};

static void client_drop(struct client_call *c, int n)
{
    /* acq_rel: each share's last uses of `c` (the callback's cancel, the
     * unregister) happen before the last dropper frees it; pairs with the
     * other dropper's fetch_sub. */
    if (atomic_fetch_sub_explicit(&c->shares, n, memory_order_acq_rel) != n)
        return;
    grpc_call_unref(c->call);
    cancel_token_release(c->tok);
    free(c);
}

static void client_cancelled(void *arg)
{
    struct client_call *c = arg;
    /* release: pairs with the acquire in cancel_grpc_call_unref. */
    atomic_store_explicit(&c->started, true, memory_order_release);
    cancel_cause cause = cancel_token_cause(c->tok);
    char desc[160];
    snprintf(desc, sizeof desc, "cancelled by libcancel: %s%s%s", cancel_reason_name(cause.reason),
             cause.message ? ": " : "", cause.message ? cause.message : "");
    grpc_call_cancel_with_status(c->call,
                                 cause.reason == CANCEL_REASON_TIMEOUT ? GRPC_STATUS_DEADLINE_EXCEEDED
                                                                       : GRPC_STATUS_CANCELLED,
                                 desc, NULL);
    client_drop(c, 1);
}

grpc_call *cancel_grpc_call_new(cancel_token tok, grpc_channel *channel, grpc_completion_queue *cq,
                                const char *method, const char *host)
{
    if (!channel || !method) {
        errno = EINVAL;
        return NULL;
    }
    struct client_call *c = malloc(sizeof *c);
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    grpc_slice m = grpc_slice_from_copied_string(method);
    grpc_slice h = host ? grpc_slice_from_copied_string(host) : grpc_empty_slice();
    c->call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, host ? &h : NULL,
                                       grpc_deadline_of(tok), NULL);
    grpc_slice_unref(m);
    grpc_slice_unref(h);
    if (!c->call) {
        free(c);
        errno = ENOMEM;
        return NULL;
    }
    c->tok = cancel_token_retain(tok);
    c->reg = (cancel_registration)CANCEL_REGISTRATION_INIT;
    atomic_init(&c->started, false);
    atomic_init(&c->shares, 2);
    table_add(&clients, &c->link, c->call);
    /* Already cancelled: the callback runs here and the call is born
     * cancelled. Registering comes last: from here on the callback may run
     * on any thread. */
    cancel_register(tok, &c->reg, client_cancelled, c);
    return c->call;
}

void cancel_grpc_call_unref(grpc_call *call)
{
    if (!call)
        return;
    struct entry *e = table_take(&clients, call);
    if (!e) {
        grpc_call_unref(call);
        return;
    }
    struct client_call *c = (struct client_call *)e;
    /* Removed, or inert (a token that can never be cancelled, or a source
     * freed uncancelled): the callback will never run and its share is ours
     * to drop. Otherwise it ran, or is running: waited for, or lower in this
     * stack, or elsewhere if waiting would deadlock. It set `started` before
     * any of these (and unregister, waiting or finding it on this thread,
     * orders that before us); it drops its own share. */
    bool removed = cancel_unregister(&c->reg);
    bool started = !removed && atomic_load_explicit(&c->started, memory_order_acquire);
    client_drop(c, started ? 1 : 2);
}

/* ---------------------------------------------------------------- server */

struct server_watch {
    grpc_completion_queue_functor functor; /* the batch's tag; r/o after start */
    struct entry link;       /* in `watches`, keyed by &functor */
    cancel_source *peer;     /* r/o; owned: cancelled or freed on completion */
    int64_t timeout_from;    /* r/o; a peer cancel from then on is a TIMEOUT (cancel_now()'s
                                clock), or CANCEL_INFINITE: the call has no deadline */
    int cancelled;           /* written by gRPC before the completion */
};

/* Called once the watch is unlisted (see the top of the file). */
static void watch_complete(struct server_watch *w, int ok)
{
    if (!ok || w->cancelled) {
        if (w->timeout_from != CANCEL_INFINITE && cancel_now() >= w->timeout_from)
            cancel_source_cancel_after(w->peer, 0); /* reason TIMEOUT, on the library thread */
        else
            cancel_source_cancel(w->peer);
    }
    /* Uncancelled: the call ended normally; freeing unhooks the caller's
     * source and disarms the deadline. Cancelled: callbacks under way run on. */
    cancel_source_free(w->peer);
    free(w);
}

/* A callback queue runs this; on a next queue, cancel_grpc_dispatch does. */
static void watch_run(grpc_completion_queue_functor *f, int ok)
{
    if (table_take(&watches, f))
        watch_complete((struct server_watch *)f, ok);
}

bool cancel_grpc_dispatch(const grpc_event *ev)
{
    if (!ev || ev->type != GRPC_OP_COMPLETE)
        return false;
    struct entry *e = table_take(&watches, ev->tag);
    if (!e)
        return false;
    struct server_watch *w = (struct server_watch *)((char *)e - offsetof(struct server_watch, link));
    watch_complete(w, ev->success);
    return true;
}

cancel_source *cancel_grpc_server_source_new(grpc_call *call, gpr_timespec deadline)
{
    if (!call) {
        errno = EINVAL;
        return NULL;
    }
    struct server_watch *w = calloc(1, sizeof *w);
    cancel_source *peer = cancel_source_new();
    int err = ENOMEM;
    if (!w || !peer || cancel_source_set_name(peer, "grpc peer") != 0)
        goto fail;
    /* Our clock first: a pause between the two reads then makes the
     * deadline earlier, never later. The delay is taken from a fresh read,
     * so only the few instructions until cancel_source_cancel_after reads
     * the clock again can make it later. */
    int64_t before = cancel_now();
    int64_t left = grpc_time_left(deadline);
    w->timeout_from = CANCEL_INFINITE;
    if (left != CANCEL_INFINITE) {
        int64_t slack = send_rounding(left);
        w->timeout_from = add_sat(before, left - CANCEL_GRPC_TIMEOUT_WINDOW_NS - slack);
        int64_t delay = add_sat(before, left - CANCEL_GRPC_DEADLINE_MARGIN_NS - slack) - cancel_now();
        err = cancel_source_cancel_after(peer, delay > 0 ? delay : 0);
        if (err != 0)
            goto fail;
        err = ENOMEM;
    }
    cancel_token ptok = cancel_source_token(peer);
    cancel_source *src = cancel_source_new_linked(&ptok, 1);
    if (!src) {
        err = errno;
        goto fail;
    }
    w->functor.functor_run = watch_run;
    w->functor.inlineable = 0;
    w->peer = peer;
    grpc_op op = {0};
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &w->cancelled;
    table_add(&watches, &w->link, &w->functor); /* last: w is complete */
    grpc_call_error rc = grpc_call_start_batch(call, &op, 1, &w->functor, NULL);
    if (rc == GRPC_CALL_OK)
        return src; /* w and peer may be gone already */
    table_take(&watches, &w->functor);
    cancel_source_free(src);
    err = rc == GRPC_CALL_ERROR_TOO_MANY_OPERATIONS ? EBUSY : EINVAL;
fail:
    cancel_source_free(peer);
    free(w);
    errno = err;
    return NULL;
}
