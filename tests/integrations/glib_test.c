/* libcancel-glib against the real GLib and GIO: the three bridges, a GIO
 * read cancelled both ways, and races from two threads.
 *
 * Under a thread sanitizer, GLib's own synchronisation (futex mutexes and
 * atomics in uninstrumented code) is invisible. So every GMainContext here
 * is run by the thread that creates it, and its GSources are made, attached
 * and torn down on that thread; other threads only cancel (libcancel's own
 * synchronisation, which the sanitizer sees) or call g_cancellable_cancel. */
#include "check.h"

#include <cancel/glib.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gunixinputstream.h>
#include <unistd.h>

/* ---- token to GCancellable ---- */

struct seen {
    _Atomic int runs;
    pthread_t thread;
};
static void on_gcancelled(GCancellable *c, gpointer data)
{
    (void)c;
    struct seen *s = data;
    s->thread = pthread_self();
    atomic_fetch_add(&s->runs, 1);
}

static void cancellable_follows_token(void)
{
    cancel_source *src = cancel_source_new();
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
    CHECK(gc != NULL && G_IS_CANCELLABLE(gc));
    CHECK(!g_cancellable_is_cancelled(gc));
    struct seen s = {0};
    g_signal_connect(gc, "cancelled", G_CALLBACK(on_gcancelled), &s);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 1);
    CHECK(cancel_source_cancel(src));
    /* Synchronously, on the cancelling thread. */
    CHECK(g_cancellable_is_cancelled(gc));
    CHECK_EQ(atomic_load(&s.runs), 1);
    CHECK(pthread_equal(s.thread, pthread_self()));
    cancel_source_free(src);
    g_object_unref(gc);
}

static void cancellable_born_cancelled_or_never(void)
{
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
    CHECK(g_cancellable_is_cancelled(gc));
    g_object_unref(gc);
    cancel_source_free(src);

    gc = cancel_glib_cancellable_new(CANCEL_TOKEN_NONE);
    CHECK(!g_cancellable_is_cancelled(gc));
    g_object_unref(gc);

    /* A freed source's token, kept valid by a reference: never cancelled. */
    src = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(src));
    cancel_source_free(src);
    gc = cancel_glib_cancellable_new(t);
    CHECK(!g_cancellable_is_cancelled(gc));
    g_object_unref(gc);
    cancel_token_release(t);

    /* Freed uncancelled after bridging: the GCancellable stays uncancelled
     * and is finalized normally. */
    src = cancel_source_new();
    gc = cancel_glib_cancellable_new(cancel_source_token(src));
    cancel_source_free(src);
    CHECK(!g_cancellable_is_cancelled(gc));
    g_object_unref(gc);
}

/* The bridge does not keep the GCancellable alive, and lets go of its
 * registration when the GCancellable goes: a long-lived token does not
 * accumulate anything (pitfall 7). */
static void cancellable_finalized_lets_go(void)
{
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_source_token(src);
    int n = TEST_SCALE(100000);
    for (int i = 0; i < n; i++) {
        GCancellable *gc = cancel_glib_cancellable_new(t);
        GWeakRef w;
        g_weak_ref_init(&w, gc);
        g_object_unref(gc);
        CHECK(g_weak_ref_get(&w) == NULL); /* finalized: nothing of ours held it */
        g_weak_ref_clear(&w);
    }
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 0);
    cancel_source_cancel(src); /* nothing left to touch freed memory */
    cancel_source_free(src);
}

/* The token may die first: the bridge's own reference keeps it valid. */
static void cancellable_outlives_source(void)
{
    cancel_source *src = cancel_source_new();
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
    cancel_source_cancel(src);
    cancel_source_free(src);
    CHECK(g_cancellable_is_cancelled(gc));
    g_object_unref(gc);
}

static void cancellable_async_and_deadline(void)
{
    /* cancel_async: cancelled on the library thread, soon. */
    cancel_source *src = cancel_source_new();
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
    struct seen s = {0};
    g_signal_connect(gc, "cancelled", G_CALLBACK(on_gcancelled), &s);
    CHECK(cancel_source_cancel_async(src));
    test_drain_library_thread();
    CHECK(g_cancellable_is_cancelled(gc));
    CHECK_EQ(atomic_load(&s.runs), 1);
    CHECK(!pthread_equal(s.thread, pthread_self()));
    g_object_unref(gc);
    cancel_source_free(src);

    /* A deadline, on the manual clock: cancelled when the clock passes it. */
    cancel_clock_use_manual(true);
    src = cancel_source_new_child(CANCEL_TOKEN_NONE, 1000000000, "deadline");
    gc = cancel_glib_cancellable_new(cancel_source_token(src));
    cancel_clock_advance(999999999);
    CHECK(!g_cancellable_is_cancelled(gc));
    cancel_clock_advance(1);
    CHECK(g_cancellable_is_cancelled(gc)); /* advance returns after the callbacks */
    g_object_unref(gc);
    cancel_source_free(src);
    cancel_clock_use_manual(false);
}

/* The handler may drop the last reference to the GCancellable while the
 * bridge's callback is running on it (the callback holds its own). */
static void unref_last_from_handler(GCancellable *c, gpointer data)
{
    (void)data;
    g_object_unref(c);
}
static void cancellable_last_unref_in_handler(void)
{
    cancel_source *src = cancel_source_new();
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(src));
    g_signal_connect(gc, "cancelled", G_CALLBACK(unref_last_from_handler), NULL);
    cancel_source_cancel(src); /* finalized inside our callback's own unref */
    cancel_source_free(src);
}

/* ---- GCancellable to source ---- */

struct reg_seen {
    cancel_registration reg;
    _Atomic int runs;
    pthread_t thread;
};
static void on_cancel_seen(void *arg)
{
    struct reg_seen *r = arg;
    r->thread = pthread_self();
    atomic_fetch_add(&r->runs, 1);
}

static void source_follows_cancellable(void)
{
    GCancellable *c = g_cancellable_new();
    cancel_source *s = cancel_glib_source_new(c);
    CHECK(s != NULL);
    cancel_token t = cancel_source_token(s);
    CHECK(!cancel_token_is_requested(t));
    struct reg_seen r = {CANCEL_REGISTRATION_INIT, 0, 0};
    CHECK_EQ(cancel_register(t, &r.reg, on_cancel_seen, &r), 0);
    g_cancellable_cancel(c);
    /* Before g_cancellable_cancel returned, on its thread. */
    CHECK(cancel_token_is_requested(t));
    CHECK_EQ(atomic_load(&r.runs), 1);
    CHECK(pthread_equal(r.thread, pthread_self()));
    cancel_cause cause = cancel_token_cause(t);
    CHECK_EQ(cause.reason, CANCEL_REASON_REQUESTED);
    CHECK_STR(cause.origin, "GCancellable");
    cancel_source_free(s);

    /* Born cancelled, with the same cause. */
    s = cancel_glib_source_new(c);
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    cause = cancel_token_cause(cancel_source_token(s));
    CHECK_EQ(cause.reason, CANCEL_REASON_REQUESTED);
    CHECK_STR(cause.origin, "GCancellable");
    cancel_source_free(s);

    /* After g_cancellable_reset, followed again. */
    g_cancellable_reset(c);
    s = cancel_glib_source_new(c);
    CHECK(!cancel_token_is_requested(cancel_source_token(s)));
    g_cancellable_cancel(c);
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    cancel_source_free(s);
    g_object_unref(c);

    /* The owner may cancel it too; the GCancellable is left alone. */
    c = g_cancellable_new();
    s = cancel_glib_source_new(c);
    cancel_source_cancel(s);
    CHECK(!g_cancellable_is_cancelled(c));
    cancel_source_free(s);
    g_object_unref(c);

    errno = 0;
    CHECK(cancel_glib_source_new(NULL) == NULL);
    CHECK_EQ(errno, EINVAL);
}

static guint cancelled_handlers(GCancellable *c)
{
    guint sig = g_signal_lookup("cancelled", G_TYPE_CANCELLABLE);
    gulong ids[16];
    guint n = 0;
    gulong id;
    while (n < 16 && (id = g_signal_handler_find(c, G_SIGNAL_MATCH_ID | G_SIGNAL_MATCH_UNBLOCKED, sig, 0,
                                                  NULL, NULL, NULL)) != 0) {
        g_signal_handler_block(c, id);
        ids[n++] = id;
    }
    for (guint i = 0; i < n; i++)
        g_signal_handler_unblock(c, ids[i]);
    return n;
}

/* Many sources bridged from one long-lived GCancellable: one handler, and a
 * freed source leaves nothing behind (pitfalls 6 and 7). */
static void source_no_pile_up(void)
{
    GCancellable *c = g_cancellable_new();
    cancel_source *keep = cancel_glib_source_new(c);
    int n = TEST_SCALE(200000);
    for (int i = 0; i < n; i++) {
        cancel_source *s = cancel_glib_source_new(c);
        cancel_registration r;
        CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
        cancel_source_free(s);
    }
    CHECK_EQ(cancelled_handlers(c), 1);
    struct reg_seen r = {CANCEL_REGISTRATION_INIT, 0, 0};
    CHECK_EQ(cancel_register(cancel_source_token(keep), &r.reg, on_cancel_seen, &r), 0);
    g_cancellable_cancel(c);
    CHECK_EQ(atomic_load(&r.runs), 1);
    cancel_source_free(keep);
    g_object_unref(c);
}

/* The GCancellable may go first: the sources are unhooked, never cancelled,
 * and stay valid until freed. */
static void source_outlives_cancellable(void)
{
    GCancellable *c = g_cancellable_new();
    cancel_source *s = cancel_glib_source_new(c);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(s, &info), 0);
    CHECK_EQ(info.parents, 1);
    g_object_unref(c);
    CHECK_EQ(cancel_source_get_info(s, &info), 0);
    CHECK_EQ(info.parents, 0);
    CHECK(!cancel_token_is_requested(cancel_source_token(s)));
    cancel_source_free(s);

    /* Freed first, then the GCancellable is cancelled: nothing is touched. */
    c = g_cancellable_new();
    s = cancel_glib_source_new(c);
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    cancel_source_free(s);
    g_cancellable_cancel(c);
    g_object_unref(c);
}

/* Both bridges in one chain: token -> GCancellable -> source. */
static void chain_both_ways(void)
{
    cancel_source *top = cancel_source_new();
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(top));
    cancel_source *s = cancel_glib_source_new(gc);
    struct reg_seen r = {CANCEL_REGISTRATION_INIT, 0, 0};
    CHECK_EQ(cancel_register(cancel_source_token(s), &r.reg, on_cancel_seen, &r), 0);
    cancel_source_cancel(top);
    CHECK_EQ(atomic_load(&r.runs), 1);
    CHECK(pthread_equal(r.thread, pthread_self()));
    cancel_source_free(s);
    g_object_unref(gc);
    cancel_source_free(top);
}

/* ---- a real GIO operation ---- */

struct read_op {
    GMainLoop *loop;
    char buf[16];
    _Atomic int done;
    gssize result;
    GError *error;
};
static void read_done(GObject *stream, GAsyncResult *res, gpointer data)
{
    struct read_op *op = data;
    op->result = g_input_stream_read_finish(G_INPUT_STREAM(stream), res, &op->error);
    atomic_fetch_add(&op->done, 1);
    g_main_loop_quit(op->loop);
}

struct canceller {
    test_gate go;
    cancel_source *src;
    GCancellable *gc;
    int write_fd;
    uint64_t seed;
    uint32_t jitter;
};
static void *cancel_source_later(void *arg)
{
    struct canceller *k = arg;
    test_gate_wait(&k->go);
    test_jitter(&k->seed, k->jitter);
    cancel_source_cancel(k->src);
    return NULL;
}
static void *cancel_gcancellable_later(void *arg)
{
    struct canceller *k = arg;
    test_gate_wait(&k->go);
    test_jitter(&k->seed, k->jitter);
    g_cancellable_cancel(k->gc);
    return NULL;
}
static void *write_later(void *arg)
{
    struct canceller *k = arg;
    test_gate_wait(&k->go);
    test_jitter(&k->seed, k->jitter);
    CHECK_EQ(write(k->write_fd, "x", 1), 1);
    return NULL;
}
static gboolean open_gate(gpointer g)
{
    test_gate_open(g);
    return G_SOURCE_REMOVE;
}

/* A read on an empty pipe, started with the bridged GCancellable on a
 * context run by this thread, cancelled through our source by another
 * thread while the loop sleeps in poll: it ends with G_IO_ERROR_CANCELLED. */
static void gio_read_cancelled_by_token(void)
{
    int p[2];
    CHECK_EQ(pipe(p), 0);
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    GInputStream *in = g_unix_input_stream_new(p[0], TRUE);
    struct read_op op = {g_main_loop_new(ctx, FALSE), {0}, 0, 0, NULL};
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), NULL, -1, 1, 0};
    GCancellable *gc = cancel_glib_cancellable_new(cancel_source_token(k.src));
    g_input_stream_read_async(in, op.buf, sizeof op.buf, G_PRIORITY_DEFAULT, gc, read_done, &op);
    g_object_unref(gc); /* GIO holds its own */
    pthread_t th = test_spawn(cancel_source_later, &k);
    /* Opened from inside the loop: the canceller starts once we run it. */
    GSource *idle = g_idle_source_new();
    g_source_set_callback(idle, open_gate, &k.go, NULL);
    g_source_attach(idle, ctx);
    g_source_unref(idle);
    g_main_loop_run(op.loop);
    test_join(th);
    CHECK_EQ(atomic_load(&op.done), 1);
    CHECK_EQ(op.result, -1);
    CHECK(g_error_matches(op.error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    g_clear_error(&op.error);
    g_object_unref(in);
    close(p[1]);
    cancel_source_free(k.src);
    g_main_loop_unref(op.loop);
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
}

/* The GIO side of code of ours: a GIO-style function that received a
 * GCancellable hands our blocking wait a bridged token. */
static void *wait_on_bridged(void *arg)
{
    cancel_source *s = arg;
    CHECK(cancel_token_wait(cancel_source_token(s), CANCEL_INFINITE));
    return NULL;
}
static void gcancellable_wakes_our_waiter(void)
{
    GCancellable *c = g_cancellable_new();
    cancel_source *s = cancel_glib_source_new(c);
    pthread_t th = test_spawn(wait_on_bridged, s);
    g_cancellable_cancel(c);
    test_join(th);
    cancel_source_free(s);
    g_object_unref(c);
}

/* ---- races from two threads ---- */

/* A read racing its own cancellation: data arrives from one thread while
 * another cancels. Exactly one completion, with the byte or with
 * G_IO_ERROR_CANCELLED, and nothing leaked. Both directions: cancelled
 * through our token (bridged GCancellable), or through a GCancellable that
 * our own code watches via a bridged source. */
static void gio_read_races(bool through_token)
{
    int n = TEST_SCALE(300);
    int cancelled = 0, read = 0;
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    for (int i = 0; i < n; i++) {
        int p[2];
        CHECK_EQ(pipe(p), 0);
        GInputStream *in = g_unix_input_stream_new(p[0], TRUE);
        struct read_op op = {g_main_loop_new(ctx, FALSE), {0}, 0, 0, NULL};
        /* Either may come first, and often both at once: each thread waits a
         * random while, the longer range alternating between them. */
        uint32_t longer = 200000, shorter = 20000;
        struct canceller k = {TEST_GATE_INIT, NULL, NULL, p[1], (uint64_t)i * 2654435761u + 1,
                              i & 1 ? longer : shorter};
        struct canceller w = {TEST_GATE_INIT, NULL, NULL, p[1], (uint64_t)i * 40503u + 17, i & 1 ? shorter : longer};
        GCancellable *gc;
        cancel_source *watch = NULL;
        struct reg_seen r = {CANCEL_REGISTRATION_INIT, 0, 0};
        if (through_token) {
            k.src = cancel_source_new();
            gc = cancel_glib_cancellable_new(cancel_source_token(k.src));
        } else {
            gc = k.gc = g_cancellable_new();
            watch = cancel_glib_source_new(gc);
            CHECK_EQ(cancel_register(cancel_source_token(watch), &r.reg, on_cancel_seen, &r), 0);
        }
        g_input_stream_read_async(in, op.buf, sizeof op.buf, G_PRIORITY_DEFAULT, gc, read_done, &op);
        pthread_t t1 = test_spawn(through_token ? cancel_source_later : cancel_gcancellable_later, &k);
        pthread_t t2 = test_spawn(write_later, &w);
        test_gate_open(&k.go);
        test_gate_open(&w.go);
        g_main_loop_run(op.loop);
        test_join(t1);
        test_join(t2);
        CHECK_EQ(atomic_load(&op.done), 1);
        if (op.result == 1) {
            read++;
            CHECK(op.error == NULL);
        } else {
            cancelled++;
            CHECK_EQ(op.result, -1);
            CHECK(g_error_matches(op.error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
            g_clear_error(&op.error);
        }
        CHECK(g_cancellable_is_cancelled(gc));
        if (!through_token)
            CHECK_EQ(atomic_load(&r.runs), 1);
        /* Let GIO finish with the cancellable and the stream. */
        while (g_main_context_iteration(ctx, FALSE)) {
        }
        g_object_unref(gc);
        g_object_unref(in);
        close(p[1]);
        cancel_source_free(k.src);
        cancel_source_free(watch);
        g_main_loop_unref(op.loop);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
    fprintf(stderr, "   %s: %d cancelled, %d read\n", through_token ? "token" : "GCancellable", cancelled,
            read);
}
static void gio_read_races_token(void)
{
    gio_read_races(true);
}
static void gio_read_races_gcancellable(void)
{
    gio_read_races(false);
}

/* Token to GCancellable: the token is cancelled on one thread while the last
 * reference to the GCancellable is dropped on another (finalization racing
 * the bridge's callback; pitfall 13). Nothing leaks, nothing is touched
 * after it is freed; a handler runs at most once. */
struct unref_race {
    test_gate go;
    GCancellable *gc;
    uint64_t seed;
};
static void *unref_later(void *arg)
{
    struct unref_race *u = arg;
    test_gate_wait(&u->go);
    test_jitter(&u->seed, 2000);
    g_object_unref(u->gc);
    return NULL;
}
static void race_cancel_vs_finalize(void)
{
    int n = TEST_SCALE(5000);
    for (int i = 0; i < n; i++) {
        struct canceller k = {TEST_GATE_INIT, cancel_source_new(), NULL, -1, (uint64_t)i + 7, 2000};
        struct unref_race u = {TEST_GATE_INIT, NULL, (uint64_t)i * 31 + 3};
        u.gc = cancel_glib_cancellable_new(cancel_source_token(k.src));
        struct seen s = {0};
        g_signal_connect(u.gc, "cancelled", G_CALLBACK(on_gcancelled), &s);
        pthread_t t1 = test_spawn(cancel_source_later, &k);
        pthread_t t2 = test_spawn(unref_later, &u);
        test_gate_open(&k.go);
        test_gate_open(&u.go);
        test_join(t1);
        test_join(t2);
        CHECK(atomic_load(&s.runs) <= 1);
        cancel_source_free(k.src);
    }
}

/* Token and GCancellable cancelled at once from two threads: the
 * GCancellable is cancelled once. */
static void race_token_vs_gcancellable(void)
{
    int n = TEST_SCALE(5000);
    for (int i = 0; i < n; i++) {
        struct canceller k = {TEST_GATE_INIT, cancel_source_new(), NULL, -1, (uint64_t)i + 11, 2000};
        k.gc = cancel_glib_cancellable_new(cancel_source_token(k.src));
        struct canceller k2 = {TEST_GATE_INIT, NULL, k.gc, -1, (uint64_t)i * 17 + 5, 2000};
        struct seen s = {0};
        g_signal_connect(k.gc, "cancelled", G_CALLBACK(on_gcancelled), &s);
        pthread_t t1 = test_spawn(cancel_source_later, &k);
        pthread_t t2 = test_spawn(cancel_gcancellable_later, &k2);
        test_gate_open(&k.go);
        test_gate_open(&k2.go);
        test_join(t1);
        test_join(t2);
        CHECK_EQ(atomic_load(&s.runs), 1);
        g_object_unref(k.gc);
        cancel_source_free(k.src);
    }
}

/* GCancellable to source: sources bridged on one thread while another
 * cancels the GCancellable. Each source is cancelled exactly once: by the
 * cancellation (its callback ran once) or born cancelled (its registration
 * reports ECANCELED, having run the callback inline). Never neither, never
 * both (pitfall 3). */
struct bridger {
    test_gate go;
    GCancellable *c;
    uint64_t seed;
    cancel_source *s[8];
    struct reg_seen r[8];
};
static void *bridge_many(void *arg)
{
    struct bridger *b = arg;
    test_gate_wait(&b->go);
    for (int j = 0; j < 8; j++) {
        test_jitter(&b->seed, j == 0 ? 3000 : 500); /* the first makes the hub */
        b->s[j] = cancel_glib_source_new(b->c);
        CHECK(b->s[j] != NULL);
        int rc = cancel_register(cancel_source_token(b->s[j]), &b->r[j].reg, on_cancel_seen, &b->r[j]);
        CHECK(rc == 0 || rc == ECANCELED);
    }
    return NULL;
}
static void race_bridge_vs_gcancel(void)
{
    int n = TEST_SCALE(5000);
    for (int i = 0; i < n; i++) {
        struct bridger *b = calloc(1, sizeof *b);
        b->go = (test_gate)TEST_GATE_INIT;
        b->c = g_cancellable_new();
        b->seed = (uint64_t)i * 13 + 1;
        struct canceller k = {TEST_GATE_INIT, NULL, b->c, -1, (uint64_t)i + 99, 3000};
        pthread_t t1 = test_spawn(bridge_many, b);
        pthread_t t2 = test_spawn(cancel_gcancellable_later, &k);
        test_gate_open(&b->go);
        test_gate_open(&k.go);
        test_join(t1);
        test_join(t2);
        for (int j = 0; j < 8; j++) {
            CHECK(cancel_token_is_requested(cancel_source_token(b->s[j])));
            CHECK_EQ(atomic_load(&b->r[j].runs), 1);
            cancel_source_free(b->s[j]);
        }
        g_object_unref(b->c);
        free(b);
    }
}

/* GCancellable cancelled on one thread while the bridged source is freed on
 * another, its callback's state freed with it. */
struct freer {
    test_gate go;
    cancel_source *s;
    struct reg_seen *r;
    uint64_t seed;
};
static void *free_later(void *arg)
{
    struct freer *f = arg;
    test_gate_wait(&f->go);
    test_jitter(&f->seed, 2000);
    cancel_unregister(&f->r->reg); /* waits if the callback is running */
    free(f->r);
    cancel_source_free(f->s);
    return NULL;
}
static void race_gcancel_vs_free(void)
{
    int n = TEST_SCALE(5000);
    for (int i = 0; i < n; i++) {
        GCancellable *c = g_cancellable_new();
        struct freer f = {TEST_GATE_INIT, cancel_glib_source_new(c), calloc(1, sizeof(struct reg_seen)),
                          (uint64_t)i + 5};
        CHECK_EQ(cancel_register(cancel_source_token(f.s), &f.r->reg, on_cancel_seen, f.r), 0);
        struct canceller k = {TEST_GATE_INIT, NULL, c, -1, (uint64_t)i * 7 + 1, 2000};
        pthread_t t1 = test_spawn(free_later, &f);
        pthread_t t2 = test_spawn(cancel_gcancellable_later, &k);
        test_gate_open(&f.go);
        test_gate_open(&k.go);
        test_join(t1);
        test_join(t2);
        g_object_unref(c);
    }
}

/* ---- token to GSource ---- */

struct dispatch_seen {
    int runs;
    pthread_t thread;
    GMainLoop *loop;
};
static gboolean on_dispatch(gpointer data)
{
    struct dispatch_seen *d = data;
    d->runs++;
    d->thread = pthread_self();
    if (d->loop)
        g_main_loop_quit(d->loop);
    return G_SOURCE_CONTINUE; /* ignored: it dispatches once */
}

static void *cancel_when_open(void *arg)
{
    struct canceller *k = arg;
    test_gate_wait(&k->go);
    cancel_source_cancel(k->src);
    return NULL;
}

/* A loop asleep in poll is woken by a cancellation from another thread;
 * the source dispatches once, on the loop's thread, and is destroyed. */
static void gsource_wakes_loop_once(void)
{
    GMainContext *ctx = g_main_context_new();
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), NULL, -1, 1, 0};
    struct dispatch_seen d = {0, 0, g_main_loop_new(ctx, FALSE)};
    GSource *gs = cancel_glib_gsource_new(cancel_source_token(k.src));
    CHECK(gs != NULL);
    g_source_set_callback(gs, on_dispatch, &d, NULL);
    g_source_attach(gs, ctx);
    CHECK(!g_main_context_iteration(ctx, FALSE)); /* not ready: the token is not cancelled */
    pthread_t th = test_spawn(cancel_when_open, &k);
    GSource *idle = g_idle_source_new();
    g_source_set_callback(idle, open_gate, &k.go, NULL);
    g_source_attach(idle, ctx);
    g_source_unref(idle);
    g_main_loop_run(d.loop);
    test_join(th);
    CHECK_EQ(d.runs, 1);
    CHECK(pthread_equal(d.thread, pthread_self()));
    CHECK(g_source_is_destroyed(gs));
    while (g_main_context_iteration(ctx, FALSE)) {
    }
    CHECK_EQ(d.runs, 1);
    g_source_unref(gs);
    cancel_source_free(k.src);
    g_main_loop_unref(d.loop);
    g_main_context_unref(ctx);
}

static void gsource_edge_tokens(void)
{
    GMainContext *ctx = g_main_context_new();

    /* Already cancelled: dispatches on the next iteration, without a descriptor. */
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    struct dispatch_seen d = {0};
    GSource *gs = cancel_glib_gsource_new(cancel_source_token(src));
    g_source_set_callback(gs, on_dispatch, &d, NULL);
    g_source_attach(gs, ctx);
    cancel_source_free(src); /* the GSource holds its own reference */
    CHECK(g_main_context_iteration(ctx, FALSE));
    CHECK_EQ(d.runs, 1);
    CHECK(!g_main_context_iteration(ctx, FALSE));
    CHECK_EQ(d.runs, 1);
    g_source_unref(gs);

    /* CANCEL_TOKEN_NONE: never ready. */
    d.runs = 0;
    gs = cancel_glib_gsource_new(CANCEL_TOKEN_NONE);
    g_source_set_callback(gs, on_dispatch, &d, NULL);
    g_source_attach(gs, ctx);
    CHECK(!g_main_context_iteration(ctx, FALSE));
    g_source_destroy(gs);
    g_source_unref(gs);

    /* Freed uncancelled after attaching: the descriptor turns readable, the
     * source notices, stops polling it and never dispatches. */
    src = cancel_source_new();
    gs = cancel_glib_gsource_new(cancel_source_token(src));
    g_source_set_callback(gs, on_dispatch, &d, NULL);
    g_source_attach(gs, ctx);
    CHECK(!g_main_context_iteration(ctx, FALSE));
    cancel_source_free(src);
    g_main_context_iteration(ctx, FALSE); /* sees the descriptor, lets go */
    CHECK(!g_main_context_iteration(ctx, FALSE));
    CHECK_EQ(d.runs, 0);
    CHECK(!g_source_is_destroyed(gs));
    g_source_destroy(gs);
    g_source_unref(gs);

    /* Never attached, then dropped: nothing leaks. */
    src = cancel_source_new();
    gs = cancel_glib_gsource_new(cancel_source_token(src));
    g_source_unref(gs);
    cancel_source_free(src);

    g_main_context_unref(ctx);
}

/* Many GSources on one token, in two contexts: all dispatch once. */
static void gsource_many_one_token(void)
{
    GMainContext *ctx[2] = {g_main_context_new(), g_main_context_new()};
    cancel_source *src = cancel_source_new();
    struct dispatch_seen d[2] = {{0}, {0}};
    GSource *gs[64];
    for (int i = 0; i < 64; i++) {
        gs[i] = cancel_glib_gsource_new(cancel_source_token(src));
        g_source_set_callback(gs[i], on_dispatch, &d[i % 2], NULL);
        g_source_attach(gs[i], ctx[i % 2]);
    }
    struct canceller k = {TEST_GATE_INIT, src, NULL, -1, 1, 0};
    pthread_t th = test_spawn(cancel_when_open, &k);
    test_gate_open(&k.go);
    test_join(th);
    for (int c = 0; c < 2; c++) {
        while (g_main_context_iteration(ctx[c], FALSE)) {
        }
        CHECK_EQ(d[c].runs, 32);
    }
    for (int i = 0; i < 64; i++)
        g_source_unref(gs[i]);
    cancel_source_free(src);
    g_main_context_unref(ctx[0]);
    g_main_context_unref(ctx[1]);
}

int main(void)
{
    RUN(cancellable_follows_token);
    RUN(cancellable_born_cancelled_or_never);
    RUN(cancellable_finalized_lets_go);
    RUN(cancellable_outlives_source);
    RUN(cancellable_async_and_deadline);
    RUN(cancellable_last_unref_in_handler);
    RUN(source_follows_cancellable);
    RUN(source_no_pile_up);
    RUN(source_outlives_cancellable);
    RUN(chain_both_ways);
    RUN(gcancellable_wakes_our_waiter);
    RUN(gio_read_cancelled_by_token);
    RUN(gio_read_races_token);
    RUN(gio_read_races_gcancellable);
    RUN(race_cancel_vs_finalize);
    RUN(race_token_vs_gcancellable);
    RUN(race_bridge_vs_gcancel);
    RUN(race_gcancel_vs_free);
    RUN(gsource_wakes_loop_once);
    RUN(gsource_edge_tokens);
    RUN(gsource_many_one_token);
    return 0;
}
