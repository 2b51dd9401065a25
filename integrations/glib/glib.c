/*
 * libcancel-glib: the bridges between tokens and GLib (<cancel/glib.h>).
 *
 * Locking and lifetime.
 *
 * Token to GCancellable (struct follow, one per bridged GCancellable). The
 * GCancellable carries the follow as qdata whose destroy notify runs at
 * finalization; the follow holds a retained token, a registration on it,
 * and only a GWeakRef to the GCancellable, so that it never keeps the
 * GCancellable alive. The registration's callback turns the weak reference
 * into a strong one (GLib makes that atomic with finalization: once the
 * last reference is going, g_weak_ref_get returns NULL), cancels, and drops
 * it. Finalization unregisters, which waits for a callback running on
 * another thread, then frees the follow. Two corners:
 *  - The callback's own g_object_unref may be the last one: finalization
 *    then runs inside the callback, where cancel_unregister does not wait.
 *    So the callback is done with the follow before it unrefs.
 *  - cancel_unregister refuses to wait (EDEADLK) only if the callback's
 *    thread is itself waiting in cancel_unregister. That cannot happen
 *    here: while we finalize, nobody holds a strong reference, so a
 *    running callback is between its start and g_weak_ref_get (which
 *    returns NULL), running our code, not waiting. Were it to happen all
 *    the same, freeing the follow would be a use after free, so `state`
 *    hands the free to whichever side comes second: each exchanges its
 *    mark in.
 *
 * GCancellable to source (struct hub, one per GCancellable that sources
 * were bridged from). The hub's cancel_source is the parent of every source
 * handed out since the GCancellable's last cancellation; the user's sources
 * are linked children, so the bridge holds nothing of them and a freed one
 * simply unhooks itself. A ::cancelled handler (connected once, when the
 * hub is made) takes the hub source out under the lock, then cancels and
 * frees it outside the lock (the children's callbacks are user code). The
 * next bridged source after a reset gets a fresh hub source. Locks: a few
 * striped mutexes; the one chosen by the GCancellable's address guards the
 * lookup and creation of its hub, the one chosen by the hub's address
 * guards hub->src (so that the finalizer, which is handed only the hub,
 * needs to read nothing before locking). Never both at once. They are
 * pthread mutexes, not GMutex: GLib's mutexes are futexes that thread
 * sanitizers cannot see, and GLib's own hand-offs (signal emission, the
 * reference count) are invisible to them too.
 * The hub is freed by the qdata destroy notify at finalization, when no
 * handler can run any more (g_cancellable_cancel holds a reference while it
 * emits) and nobody may call cancel_glib_source_new (that needs a
 * reference).
 *
 * Token to GSource (struct wake_source). The GSource polls the token's
 * descriptor through g_source_add_unix_fd; nothing runs on the cancelling
 * thread, so there is nothing to race with the GSource's destruction. It
 * holds a retained token, which keeps the descriptor open, until it is
 * finalized or learns that the source was freed uncancelled. All of its
 * fields are touched only by the thread running its context (and by the
 * creator before it is attached).
 */
#include <cancel/glib.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* ------------------------------------------------------------------------
 * Token to GCancellable.
 * ------------------------------------------------------------------------ */

enum { FOLLOW_LIVE, FOLLOW_DONE, FOLLOW_ORPHANED };

struct follow {
    GWeakRef cancellable;    /* r/o after init; GLib clears it when the GCancellable dies */
    cancel_token tok;        /* retained; r/o */
    cancel_registration reg; /* the core's */
    _Atomic int state;       /* FOLLOW_*: who frees it in the EDEADLK corner */
};

static GQuark follow_quark(void)
{
    return g_quark_from_static_string("cancel-glib-follow");
}

static void follow_free(struct follow *f)
{
    g_weak_ref_clear(&f->cancellable);
    cancel_token_release(f->tok);
    g_free(f);
}

static void follow_fire(void *arg)
{
    struct follow *f = arg;
    GCancellable *c = g_weak_ref_get(&f->cancellable);
    /* Done with f. acq_rel: our use of f happens before the free by the
     * finalizer (release), and its writes before ours if we free (acquire). */
    if (atomic_exchange_explicit(&f->state, FOLLOW_DONE, memory_order_acq_rel) == FOLLOW_ORPHANED)
        follow_free(f);
    if (c) {
        g_cancellable_cancel(c);
        g_object_unref(c); /* may finalize c, and free f, here */
    }
}

/* qdata destroy notify: the GCancellable is being finalized. */
static void follow_finalized(gpointer data)
{
    struct follow *f = data;
    int saved = errno;
    errno = 0;
    bool removed = cancel_unregister(&f->reg);
    bool deadlock = !removed && errno == EDEADLK;
    errno = saved;
    /* acq_rel: pairs with the exchange in follow_fire. */
    if (deadlock && atomic_exchange_explicit(&f->state, FOLLOW_ORPHANED, memory_order_acq_rel) != FOLLOW_DONE)
        return; /* the callback, still running, frees it */
    /* Otherwise the callback never runs (removed, or inert), has returned
     * (unregister waited for it), or is the caller of this finalization
     * and no longer touches f. */
    follow_free(f);
}

GCancellable *cancel_glib_cancellable_new(cancel_token tok)
{
    GCancellable *c = g_cancellable_new();
    if (cancel_token_is_requested(tok)) {
        g_cancellable_cancel(c);
        return c;
    }
    if (!cancel_token_can_be_canceled(tok))
        return c;
    struct follow *f = g_new0(struct follow, 1);
    f->tok = cancel_token_retain(tok);
    g_weak_ref_init(&f->cancellable, c);
    atomic_init(&f->state, FOLLOW_LIVE);
    g_object_set_qdata_full(G_OBJECT(c), follow_quark(), f, follow_finalized);
    /* Cancelled meanwhile: follow_fire runs here (ECANCELED), cancelling c. */
    (void)cancel_register(tok, &f->reg, follow_fire, f);
    return c;
}

/* ------------------------------------------------------------------------
 * GCancellable to source.
 * ------------------------------------------------------------------------ */

struct hub {
    cancel_source *src; /* under stripe(hub): parent of the sources bridged since the
                           last cancellation; NULL before the first and after each */
    bool connected;     /* under stripe(hub): the ::cancelled handler is connected */
};

#define HUB_STRIPES 16
static pthread_mutex_t hub_locks[HUB_STRIPES] = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER,
};

static pthread_mutex_t *stripe(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    return &hub_locks[(a >> 4 ^ a >> 12) % HUB_STRIPES];
}

static GQuark hub_quark(void)
{
    return g_quark_from_static_string("cancel-glib-hub");
}

/* The parent of bridged sources: named, so that their causes say where the
 * cancellation came from. */
static cancel_source *hub_source_new(void)
{
    cancel_source *s = cancel_source_new();
    if (s && cancel_source_set_name(s, "GCancellable") != 0) {
        cancel_source_free(s);
        errno = ENOMEM;
        return NULL;
    }
    return s;
}

static void hub_cancelled(GCancellable *c, gpointer data)
{
    struct hub *h = data;
    (void)c;
    pthread_mutex_lock(stripe(h));
    cancel_source *s = h->src;
    h->src = NULL;
    pthread_mutex_unlock(stripe(h));
    if (s) {
        cancel_source_cancel(s); /* the children's callbacks run here */
        cancel_source_free(s);
    }
}

/* qdata destroy notify: the GCancellable is being finalized. Its signal
 * handlers are gone already (dispose). The lock only orders us after the
 * last writer, on whatever thread the last reference was dropped. */
static void hub_finalized(gpointer data)
{
    struct hub *h = data;
    pthread_mutex_lock(stripe(h));
    cancel_source *s = h->src;
    h->src = NULL;
    pthread_mutex_unlock(stripe(h));
    cancel_source_free(s); /* unhooks the children, which stay uncancelled */
    g_free(h);
}

/* A source born cancelled with the same cause as the others. */
static cancel_source *born_cancelled(void)
{
    cancel_source *p = hub_source_new();
    if (!p)
        return NULL;
    cancel_source_cancel(p); /* nothing is registered: no callback runs */
    cancel_token t = cancel_source_token(p);
    cancel_source *s = cancel_source_new_linked(&t, 1);
    cancel_source_free(p);
    return s;
}

cancel_source *cancel_glib_source_new(GCancellable *cancellable)
{
    if (!G_IS_CANCELLABLE(cancellable)) {
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_t *mu = stripe(cancellable);
    pthread_mutex_lock(mu);
    struct hub *h = g_object_get_qdata(G_OBJECT(cancellable), hub_quark());
    if (!h) {
        h = g_new0(struct hub, 1);
        g_object_set_qdata_full(G_OBJECT(cancellable), hub_quark(), h, hub_finalized);
    }
    pthread_mutex_unlock(mu);

    mu = stripe(h);
    pthread_mutex_lock(mu);
    if (!h->connected) {
        /* Connected before the flag is checked below, so a cancellation that
         * the check misses is emitted to the handler; and under the lock the
         * handler takes, so that everything it reads was written before. */
        g_signal_connect(cancellable, "cancelled", G_CALLBACK(hub_cancelled), h);
        h->connected = true;
    }
    if (!h->src) {
        if (g_cancellable_is_cancelled(cancellable)) {
            pthread_mutex_unlock(mu);
            return born_cancelled();
        }
        h->src = hub_source_new();
        if (!h->src) {
            pthread_mutex_unlock(mu);
            return NULL;
        }
    }
    cancel_token t = cancel_source_token(h->src);
    cancel_source *s = cancel_source_new_linked(&t, 1);
    pthread_mutex_unlock(mu);
    return s;
}

/* ------------------------------------------------------------------------
 * Token to GSource.
 * ------------------------------------------------------------------------ */

struct wake_source {
    GSource base;
    cancel_token tok; /* retained, or CANCEL_TOKEN_NONE: it never fires */
    gpointer tag;     /* the descriptor's poll, or NULL */
    bool fired;
};

static gboolean wake_prepare(GSource *gs, gint *timeout)
{
    struct wake_source *w = (struct wake_source *)gs;
    *timeout = -1;
    return cancel_token_is_requested(w->tok);
}

static gboolean wake_check(GSource *gs)
{
    struct wake_source *w = (struct wake_source *)gs;
    /* Readable also once the source was freed uncancelled: dispatch sorts it. */
    return cancel_token_is_requested(w->tok) || (w->tag && g_source_query_unix_fd(gs, w->tag) != 0);
}

static gboolean wake_dispatch(GSource *gs, GSourceFunc fn, gpointer data)
{
    struct wake_source *w = (struct wake_source *)gs;
    if (!cancel_token_is_requested(w->tok)) {
        /* Freed uncancelled: it never fires. Stop polling, let go. */
        if (w->tag)
            g_source_remove_unix_fd(gs, w->tag);
        w->tag = NULL;
        cancel_token_release(w->tok);
        w->tok = CANCEL_TOKEN_NONE;
        return G_SOURCE_CONTINUE;
    }
    if (w->fired)
        return G_SOURCE_REMOVE;
    w->fired = true;
    if (fn)
        (void)fn(data);
    else
        g_warning("a cancellation GSource dispatched without a callback: call g_source_set_callback()");
    return G_SOURCE_REMOVE;
}

static void wake_finalize(GSource *gs)
{
    struct wake_source *w = (struct wake_source *)gs;
    cancel_token_release(w->tok);
}

static GSourceFuncs wake_funcs = {
    .prepare = wake_prepare,
    .check = wake_check,
    .dispatch = wake_dispatch,
    .finalize = wake_finalize,
};

GSource *cancel_glib_gsource_new(cancel_token tok)
{
    int fd = -1;
    if (!cancel_token_is_requested(tok) && cancel_token_can_be_canceled(tok)) {
        fd = cancel_token_fd(tok);
        if (fd < 0)
            return NULL; /* errno set */
    }
    GSource *gs = g_source_new(&wake_funcs, sizeof(struct wake_source));
    g_source_set_name(gs, "libcancel token");
    struct wake_source *w = (struct wake_source *)gs;
    w->tok = cancel_token_retain(tok);
    if (fd >= 0)
        w->tag = g_source_add_unix_fd(gs, fd, G_IO_IN);
    return gs;
}
