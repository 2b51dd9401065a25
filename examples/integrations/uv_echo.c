/* An echo server on 127.0.0.1:7000 that shuts down cleanly on SIGINT or
 * SIGTERM: every connection's read ends with UV_ECANCELED, the listener
 * closes, uv_run returns and uv_loop_close succeeds.   uv_echo */
#include <cancel/uv.h>
#include <signal.h>
#include <stdlib.h>

static cancel_source *shutdown_src;

static void on_signal(int signo)
{
    cancel_source_cancel_signal(shutdown_src, signo); /* async-signal-safe */
}

struct conn {
    uv_tcp_t tcp;
    cancel_uv_t reader;
    int open; /* handles still to close */
};

static void conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open == 0)
        free(c);
}
static void alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    *buf = uv_buf_init(malloc(size), (unsigned)size);
}
static void written(uv_write_t *w, int status)
{
    (void)status; /* UV_ECANCELED for writes pending when the stream closed */
    free(w->data);
    free(w);
}
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (n > 0) {
        uv_write_t *w = malloc(sizeof *w);
        w->data = buf->base;
        uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
        uv_write(w, s, &out, 1, written);
        return;
    }
    free(buf->base);
    if (n < 0) { /* UV_EOF, an error, or UV_ECANCELED: shutting down */
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        cancel_uv_close(&c->reader, conn_closed);
    }
}
static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof *c);
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    c->open = 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0 &&
        cancel_uv_read_start(&c->reader, cancel_source_token(shutdown_src), (uv_stream_t *)&c->tcp, alloc_cb,
                             on_read) == 0) {
        c->reader.data = c;
        c->open = 2;
        return;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_closed); /* ECANCELED: already shutting down */
}
static void on_shutdown(cancel_uv_t *h) /* on the loop's thread, once */
{
    uv_close(h->data, NULL); /* the listener: no new connections */
    cancel_uv_close(h, NULL);
}

int main(void)
{
    shutdown_src = cancel_source_new();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", 7000, &addr);
    uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (uv_listen((uv_stream_t *)&server, 128, on_connection) != 0)
        return 1;
    cancel_uv_t watch;
    cancel_uv_init(loop, &watch, cancel_source_token(shutdown_src), on_shutdown);
    watch.data = &server;

    uv_run(loop, UV_RUN_DEFAULT); /* returns once every handle is closed */
    int rc = uv_loop_close(loop); /* 0: nothing left behind */
    cancel_source_free(shutdown_src);
    return rc;
}
