/*
 * glib_bench: cancel-to-return latency of GLib and GIO work cancelled
 * through libcancel-glib, beside GLib's own mechanism measured in the same
 * run, sample for sample interleaved.
 *
 *  - a g_input_stream_read_async on an empty pipe, pending in a GMainLoop
 *    that sleeps in poll on another thread: from the call that cancels
 *    (cancel_source_cancel on a token bridged by cancel_glib_cancellable_new,
 *    or g_cancellable_cancel) to the read's callback reporting
 *    G_IO_ERROR_CANCELLED;
 *  - a GMainLoop waiting for a cancellation: from the cancel to the dispatch
 *    of cancel_glib_gsource_new's GSource, or of g_cancellable_source_new's.
 *
 *   glib_bench [rounds] [samples per round and kind]   (default 5 1000)
 *
 * Prints, per row, the median over rounds of each round's p50 and p99, and
 * the ratios. On a shared machine trust the ratios more than the times.
 */
#define _GNU_SOURCE
#include <cancel/glib.h>

#include <gio/gunixinputstream.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"

enum kind { READ_OURS, READ_GLIB, WAKE_OURS, WAKE_GLIB, KINDS };
static const char *kind_name[KINDS] = {
    "GIO read_async, cancelled through our token",
    "GIO read_async, g_cancellable_cancel",
    "GMainLoop woken by cancel_glib_gsource_new",
    "GMainLoop woken by g_cancellable_source_new",
};

/* One sample, set up by the loop thread, cancelled by the main thread. */
static struct {
    struct chan go, armed, fired;
    enum kind kind;
    bool stop;
    cancel_source *src;
    GCancellable *gc;
    int64_t t1;
    GMainLoop *loop;
} S = {.go = CHAN_INIT, .armed = CHAN_INIT, .fired = CHAN_INIT};

static void read_done(GObject *stream, GAsyncResult *res, gpointer data)
{
    (void)data;
    int64_t t1 = lat_now();
    GError *e = NULL;
    gssize n = g_input_stream_read_finish(G_INPUT_STREAM(stream), res, &e);
    if (n != -1 || !g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        abort();
    g_error_free(e);
    S.t1 = t1;
    g_main_loop_quit(S.loop);
}
static gboolean woken(gpointer data)
{
    (void)data;
    S.t1 = lat_now();
    g_main_loop_quit(S.loop);
    return G_SOURCE_REMOVE;
}
static gboolean woken_glib(GCancellable *c, gpointer data)
{
    (void)c;
    return woken(data);
}

static void *loop_thread(void *arg)
{
    (void)arg;
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    S.loop = g_main_loop_new(ctx, FALSE);
    int p[2];
    if (pipe(p) != 0)
        abort();
    GInputStream *in = g_unix_input_stream_new(p[0], TRUE);
    char buf[64];
    for (unsigned n = 1;; n++) {
        chan_wait(&S.go, n);
        if (S.stop)
            break;
        GSource *gs = NULL;
        switch (S.kind) {
        case READ_OURS:
            S.src = cancel_source_new();
            S.gc = cancel_glib_cancellable_new(cancel_source_token(S.src));
            g_input_stream_read_async(in, buf, sizeof buf, G_PRIORITY_DEFAULT, S.gc, read_done, NULL);
            break;
        case READ_GLIB:
            S.gc = g_cancellable_new();
            g_input_stream_read_async(in, buf, sizeof buf, G_PRIORITY_DEFAULT, S.gc, read_done, NULL);
            break;
        case WAKE_OURS:
            S.src = cancel_source_new();
            gs = cancel_glib_gsource_new(cancel_source_token(S.src));
            g_source_set_callback(gs, woken, NULL, NULL);
            break;
        case WAKE_GLIB:
            S.gc = g_cancellable_new();
            gs = g_cancellable_source_new(S.gc);
            g_source_set_callback(gs, G_SOURCE_FUNC(woken_glib), NULL, NULL);
            break;
        default:
            abort();
        }
        if (gs)
            g_source_attach(gs, ctx);
        /* Let GIO settle its own set-up before the sample starts. */
        while (g_main_context_iteration(ctx, FALSE)) {
        }
        chan_post(&S.armed);
        g_main_loop_run(S.loop);
        if (gs)
            g_source_unref(gs);
        while (g_main_context_iteration(ctx, FALSE)) {
        }
        chan_post(&S.fired);
    }
    g_object_unref(in);
    close(p[1]);
    g_main_loop_unref(S.loop);
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    int samples = argc > 2 ? atoi(argv[2]) : 1000;
    if (rounds < 1 || rounds > 64 || samples < 10)
        return 2;
    pthread_t th;
    if (pthread_create(&th, NULL, loop_thread, NULL) != 0)
        return 1;
    double *samples_ns[KINDS];
    for (int k = 0; k < KINDS; k++)
        samples_ns[k] = malloc(sizeof(double) * (size_t)samples);
    double p50[KINDS][64], p99[KINDS][64];
    unsigned n = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < samples; i++) {
            for (int k = 0; k < KINDS; k++) {
                S.kind = (enum kind)k;
                S.src = NULL;
                S.gc = NULL;
                n++;
                chan_post(&S.go);
                chan_wait(&S.armed, n);
                /* Give the loop thread time to fall asleep in poll. */
                int64_t until = lat_now() + 50000;
                while (lat_now() < until) {
                }
                int64_t t0 = lat_now();
                if (S.src)
                    cancel_source_cancel(S.src);
                else
                    g_cancellable_cancel(S.gc);
                chan_wait(&S.fired, n);
                samples_ns[k][i] = (double)(S.t1 - t0);
                if (S.gc)
                    g_object_unref(S.gc);
                cancel_source_free(S.src);
            }
        }
        for (int k = 0; k < KINDS; k++) {
            p50[k][r] = lat_percentile(samples_ns[k], samples, 0.50);
            p99[k][r] = lat_percentile(samples_ns[k], samples, 0.99);
        }
    }
    S.stop = true;
    chan_post(&S.go);
    pthread_join(th, NULL);

    printf("cancel-to-return latency, us: median over %d rounds of %d samples (p50 / p99 per round)\n", rounds,
           samples);
    double m50[KINDS], m99[KINDS];
    for (int k = 0; k < KINDS; k++) {
        m50[k] = lat_percentile(p50[k], rounds, 0.5) / 1000;
        m99[k] = lat_percentile(p99[k], rounds, 0.5) / 1000;
        printf("  %-46s p50 %7.2f   p99 %7.2f\n", kind_name[k], m50[k], m99[k]);
    }
    printf("  ratio, GIO read (ours / GLib):      p50 %.2fx   p99 %.2fx\n", m50[READ_OURS] / m50[READ_GLIB],
           m99[READ_OURS] / m99[READ_GLIB]);
    printf("  ratio, GMainLoop wake (ours / GLib): p50 %.2fx   p99 %.2fx\n", m50[WAKE_OURS] / m50[WAKE_GLIB],
           m99[WAKE_OURS] / m99[WAKE_GLIB]);
    for (int k = 0; k < KINDS; k++)
        free(samples_ns[k]);
    return 0;
}
