/* Copies standard input to standard output with GIO's asynchronous reads;
 * gives up after 5 seconds, or at once on Ctrl-C.   sleep 9 | glib_gcat */
#include <cancel/glib.h>
#include <gio/gunixinputstream.h>
#include <signal.h>
#include <stdio.h>

static cancel_source *interrupted; /* cancelled by SIGINT */

static void on_sigint(int signo)
{
    cancel_source_cancel_signal(interrupted, signo); /* async-signal-safe */
}

struct copy {
    GInputStream *in;
    GCancellable *cancellable;
    GMainLoop *loop;
    char buf[4096];
};

static void on_read(GObject *in, GAsyncResult *res, gpointer data)
{
    struct copy *c = data;
    GError *err = NULL;
    gssize n = g_input_stream_read_finish(G_INPUT_STREAM(in), res, &err);
    if (n > 0) {
        fwrite(c->buf, 1, (size_t)n, stdout);
        g_input_stream_read_async(c->in, c->buf, sizeof c->buf, G_PRIORITY_DEFAULT, c->cancellable, on_read, c);
        return;
    }
    if (n < 0) /* G_IO_ERROR_CANCELLED once the token is cancelled */
        fprintf(stderr, "gcat: %s\n", err->message);
    g_clear_error(&err);
    g_main_loop_quit(c->loop);
}

int main(void)
{
    interrupted = cancel_source_new();
    signal(SIGINT, on_sigint);
    /* The job's source: cancelled by Ctrl-C (its parent) or after 5 s. */
    cancel_source *job = cancel_source_new_child(cancel_source_token(interrupted), 5000000000LL, "gcat");
    cancel_token tok = cancel_source_token(job);

    struct copy c = {g_unix_input_stream_new(0, FALSE), cancel_glib_cancellable_new(tok),
                     g_main_loop_new(NULL, FALSE), {0}};
    g_input_stream_read_async(c.in, c.buf, sizeof c.buf, G_PRIORITY_DEFAULT, c.cancellable, on_read, &c);
    g_main_loop_run(c.loop);

    cancel_cause why = cancel_token_cause(tok); /* none, timeout or signal */
    fprintf(stderr, "gcat: %s\n", why.reason ? cancel_reason_name(why.reason) : "done");
    g_object_unref(c.cancellable); /* the bridge lets go of the token here */
    g_object_unref(c.in);
    g_main_loop_unref(c.loop);
    cancel_source_free(job);
    cancel_source_free(interrupted);
    return why.reason ? 1 : 0;
}
