/* libcancel-uv against the real libuv: the handle, its close, the read
 * helper, closing a whole loop, and a TCP echo server on 127.0.0.1 shut down
 * mid-transfer by a cancellation from another thread.
 *
 * Every loop is run by the test's main thread; other threads only cancel
 * (or act as TCP clients with plain sockets). */
#include "check.h"

#include <arpa/inet.h>
#include <cancel/uv.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

struct fired {
    int runs;
    pthread_t thread;
    bool close_in_cb;
};
static void on_fire(cancel_uv_t *h)
{
    struct fired *f = h->data;
    f->runs++;
    f->thread = pthread_self();
    if (f->close_in_cb)
        cancel_uv_close(h, NULL);
}

struct canceller {
    test_gate go;
    cancel_source *src;
    uint64_t seed;
    uint32_t jitter;
    test_gate started; /* opened once it runs, before its jitter */
};
static void *cancel_when_open(void *arg)
{
    struct canceller *k = arg;
    test_gate_wait(&k->go);
    test_gate_open(&k->started);
    test_jitter(&k->seed, k->jitter);
    cancel_source_cancel(k->src);
    return NULL;
}

/* Opens a gate from inside the loop, once uv_run is running. */
static void open_gate_timer(uv_timer_t *t)
{
    test_gate_open(t->data);
    uv_close((uv_handle_t *)t, NULL);
}
static void open_gate_soon(uv_loop_t *loop, uv_timer_t *t, test_gate *g)
{
    CHECK_EQ(uv_timer_init(loop, t), 0);
    t->data = g;
    CHECK_EQ(uv_timer_start(t, open_gate_timer, 0, 0), 0);
}

/* Cancelled from another thread while the loop sleeps: the callback runs
 * once, on the loop's thread; closing it there lets uv_run return. */
static void fires_on_loop_thread(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), 1, 0, TEST_GATE_INIT};
    cancel_uv_t h;
    struct fired f = {0, 0, true};
    CHECK_EQ(cancel_uv_init(&loop, &h, cancel_source_token(k.src), on_fire), 0);
    h.data = &f;
    CHECK(!uv_is_closing((uv_handle_t *)&h));
    CHECK(uv_is_active((uv_handle_t *)&h));
    CHECK(cancel_uv_from_handle((uv_handle_t *)&h) == &h);
    uv_timer_t t;
    open_gate_soon(&loop, &t, &k.go);
    pthread_t th = test_spawn(cancel_when_open, &k);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    test_join(th);
    CHECK_EQ(f.runs, 1);
    CHECK(pthread_equal(f.thread, pthread_self()));
    CHECK_EQ(uv_loop_close(&loop), 0);
    cancel_source_free(k.src);
}

/* Already cancelled: never inside init, always in the next iteration. */
static void already_cancelled_fires_next_iteration(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_uv_t h;
    struct fired f = {0, 0, true};
    CHECK_EQ(cancel_uv_init(&loop, &h, cancel_source_token(src), on_fire), 0);
    h.data = &f;
    cancel_source_free(src); /* the handle holds its own reference */
    CHECK_EQ(f.runs, 0);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(f.runs, 1);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* A token that can never be cancelled: the handle never fires and, like a
 * uv_async_t, keeps the loop alive until closed (or unref'd). */
static void never_fires_keeps_loop_alive(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    cancel_uv_t h;
    struct fired f = {0};
    CHECK_EQ(cancel_uv_init(&loop, &h, CANCEL_TOKEN_NONE, on_fire), 0);
    h.data = &f;
    CHECK(uv_loop_alive(&loop));
    CHECK(uv_run(&loop, UV_RUN_NOWAIT) != 0);
    uv_unref((uv_handle_t *)&h);
    CHECK(!uv_loop_alive(&loop));
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0); /* returns: nothing referenced */
    CHECK_EQ(f.runs, 0);
    cancel_uv_close(&h, NULL);
    CHECK(uv_is_closing((uv_handle_t *)&h));
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);

    /* The source freed uncancelled, before or after init. */
    CHECK_EQ(uv_loop_init(&loop), 0);
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(src));
    cancel_uv_t h2;
    CHECK_EQ(cancel_uv_init(&loop, &h, t, on_fire), 0);
    h.data = &f;
    cancel_source_free(src);
    CHECK_EQ(cancel_uv_init(&loop, &h2, t, on_fire), 0);
    h2.data = &f;
    cancel_token_release(t);
    CHECK(uv_run(&loop, UV_RUN_NOWAIT) != 0);
    CHECK_EQ(f.runs, 0);
    cancel_uv_close(&h, NULL);
    cancel_uv_close(&h2, NULL);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

static _Atomic int closed_count;
static void count_close(uv_handle_t *h)
{
    (void)h;
    atomic_fetch_add(&closed_count, 1);
}
static void free_close(uv_handle_t *h)
{
    free(h);
}

/* Closed before the cancellation: the close callback runs, the memory is
 * freed, and the later cancellation touches nothing (the registration was
 * withdrawn: the source counts none). */
static void close_then_cancel(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    cancel_source *src = cancel_source_new();
    cancel_uv_t *h = malloc(sizeof *h);
    CHECK_EQ(cancel_uv_init(&loop, h, cancel_source_token(src), on_fire), 0);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 1);
    cancel_uv_close(h, free_close);
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 0);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cancel_source_cancel(src);
    CHECK_EQ(uv_loop_close(&loop), 0);
    cancel_source_free(src);

    /* Fired but not closed in its callback: stays open (and keeps the loop
     * alive) until closed. */
    CHECK_EQ(uv_loop_init(&loop), 0);
    src = cancel_source_new();
    cancel_uv_t h2;
    struct fired f = {0};
    CHECK_EQ(cancel_uv_init(&loop, &h2, cancel_source_token(src), on_fire), 0);
    h2.data = &f;
    cancel_source_cancel(src);
    CHECK(uv_run(&loop, UV_RUN_NOWAIT) != 0);
    CHECK_EQ(f.runs, 1);
    CHECK(uv_run(&loop, UV_RUN_NOWAIT) != 0);
    CHECK_EQ(f.runs, 1); /* once */
    atomic_store(&closed_count, 0);
    cancel_uv_close(&h2, count_close);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(atomic_load(&closed_count), 1);
    CHECK_EQ(uv_loop_close(&loop), 0);
    cancel_source_free(src);
}

/* Deadlines and async cancels fire it too (callbacks on the library thread,
 * which only wakes the loop). */
static void async_and_deadline(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    cancel_source *src = cancel_source_new();
    cancel_uv_t h;
    struct fired f = {0, 0, true};
    CHECK_EQ(cancel_uv_init(&loop, &h, cancel_source_token(src), on_fire), 0);
    h.data = &f;
    CHECK(cancel_source_cancel_async(src));
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(f.runs, 1);
    cancel_source_free(src);

    cancel_clock_use_manual(true);
    src = cancel_source_new_child(CANCEL_TOKEN_NONE, 1000000000, "deadline");
    f.runs = 0;
    CHECK_EQ(cancel_uv_init(&loop, &h, cancel_source_token(src), on_fire), 0);
    h.data = &f;
    cancel_clock_advance(999999999);
    CHECK(uv_run(&loop, UV_RUN_NOWAIT) != 0);
    CHECK_EQ(f.runs, 0);
    cancel_clock_advance(1);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(f.runs, 1);
    cancel_clock_use_manual(false);
    cancel_source_free(src);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* Many handles on one token, in one loop: each fires exactly once. */
static void many_handles_one_token(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), 1, 0, TEST_GATE_INIT};
    enum { N = 100 };
    cancel_uv_t h[N];
    struct fired f[N];
    for (int i = 0; i < N; i++) {
        f[i] = (struct fired){0, 0, true};
        CHECK_EQ(cancel_uv_init(&loop, &h[i], cancel_source_token(k.src), on_fire), 0);
        h[i].data = &f[i];
    }
    uv_timer_t t;
    open_gate_soon(&loop, &t, &k.go);
    pthread_t th = test_spawn(cancel_when_open, &k);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    test_join(th);
    for (int i = 0; i < N; i++)
        CHECK_EQ(f[i].runs, 1);
    CHECK_EQ(uv_loop_close(&loop), 0);
    cancel_source_free(k.src);
}

/* Pitfall 13: cancel on one thread while the loop closes the handle and
 * frees it in the close callback. ASan/TSan see no access after the free;
 * the callback runs at most once. */
struct race_handle {
    cancel_uv_t h;
    struct fired f;
};
static void race_free(uv_handle_t *h)
{
    free(h); /* the handle is the first member */
}
static void close_races_cancel(void)
{
    int n = TEST_SCALE(20000);
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    uint64_t seed = 42;
    int fired = 0;
    for (int i = 0; i < n; i++) {
        struct canceller k = {TEST_GATE_INIT, cancel_source_new(), (uint64_t)i * 7 + 1, 4000, TEST_GATE_INIT};
        struct race_handle *r = calloc(1, sizeof *r);
        CHECK_EQ(cancel_uv_init(&loop, &r->h, cancel_source_token(k.src), on_fire), 0);
        r->h.data = &r->f;
        pthread_t th = test_spawn(cancel_when_open, &k);
        test_gate_open(&k.go);
        test_gate_wait(&k.started); /* both threads run: the close meets the cancel */
        test_jitter(&seed, 4000);
        if (i % 2)
            uv_run(&loop, UV_RUN_NOWAIT); /* sometimes it fires first */
        fired += r->f.runs;
        CHECK(r->f.runs <= 1);
        cancel_uv_close(&r->h, race_free);
        CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        test_join(th);
        cancel_source_free(k.src);
    }
    CHECK_EQ(uv_loop_close(&loop), 0);
    fprintf(stderr, "   fired before close in %d of %d\n", fired, n);
}

/* cancel_uv_close_all: every handle of the loop, ours included, is closed;
 * uv_run returns and the loop closes. */
static void close_everything(cancel_uv_t *h)
{
    struct fired *f = h->data;
    f->runs++;
    cancel_uv_close_all(h->loop, count_close);
}
static void noop_timer(uv_timer_t *t)
{
    (void)t;
}
static void close_all_on_cancel(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), 1, 0, TEST_GATE_INIT};
    atomic_store(&closed_count, 0);
    cancel_uv_t shutdown, idle_watch;
    struct fired f = {0}, g = {0};
    CHECK_EQ(cancel_uv_init(&loop, &shutdown, cancel_source_token(k.src), close_everything), 0);
    shutdown.data = &f;
    CHECK_EQ(cancel_uv_init(&loop, &idle_watch, CANCEL_TOKEN_NONE, on_fire), 0);
    idle_watch.data = &g;
    uv_timer_t tick;
    CHECK_EQ(uv_timer_init(&loop, &tick), 0);
    CHECK_EQ(uv_timer_start(&tick, noop_timer, 1, 1), 0);
    uv_tcp_t listener;
    CHECK_EQ(uv_tcp_init(&loop, &listener), 0);
    struct sockaddr_in addr;
    CHECK_EQ(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    CHECK_EQ(uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0), 0);
    uv_async_t plain;
    CHECK_EQ(uv_async_init(&loop, &plain, NULL), 0);
    CHECK(cancel_uv_from_handle((uv_handle_t *)&plain) == NULL);
    CHECK(cancel_uv_from_handle((uv_handle_t *)&tick) == NULL);
    uv_timer_t t;
    open_gate_soon(&loop, &t, &k.go);
    pthread_t th = test_spawn(cancel_when_open, &k);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    test_join(th);
    CHECK_EQ(f.runs, 1);
    CHECK_EQ(g.runs, 0);
    CHECK_EQ(atomic_load(&closed_count), 5); /* shutdown, idle_watch, tick, listener, plain */
    CHECK_EQ(uv_loop_close(&loop), 0);
    /* The registration of the handle that never fired was withdrawn. */
    cancel_source_free(k.src);
}

/* ---- the TCP echo server ---- */

struct server;
struct client {
    uv_tcp_t tcp;
    cancel_uv_t reader;
    struct server *srv;
    int open; /* handles not yet closed */
};
struct server {
    uv_loop_t loop;
    uv_tcp_t listener;
    cancel_uv_t shutdown;
    cancel_token tok;
    bool close_all; /* shutdown closes every handle, or only the listener and itself */
    int clients;    /* expected */
    _Atomic long long echoed;
    long long threshold;
    bool enough_said;
    test_gate enough; /* opened once every client is in and `threshold` bytes were echoed */
    _Atomic int clients_live, clients_seen, reads_cancelled, writes_cancelled;
};
struct echo_write {
    uv_write_t req;
    char *data;
};

static void client_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    if (!c)
        return; /* the listener or the shutdown handle */
    if (--c->open == 0) {
        atomic_fetch_sub(&c->srv->clients_live, 1);
        free(c);
    }
}
static void client_close(struct client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, client_closed);
    if (!uv_is_closing((uv_handle_t *)&c->reader))
        cancel_uv_close(&c->reader, client_closed);
}
static void echo_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    *buf = uv_buf_init(malloc(suggested), (unsigned)suggested);
}
static void echo_written(uv_write_t *req, int status)
{
    struct echo_write *w = (struct echo_write *)req;
    struct client *c = req->data;
    if (status == UV_ECANCELED)
        atomic_fetch_add(&c->srv->writes_cancelled, 1);
    free(w->data);
    free(w);
}
static void echo_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = stream->data;
    if (nread > 0) {
        struct echo_write *w = malloc(sizeof *w);
        w->data = buf->base;
        w->req.data = c;
        uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
        CHECK_EQ(uv_write(&w->req, stream, &out, 1, echo_written), 0);
        struct server *s = c->srv;
        long long total = atomic_fetch_add(&s->echoed, nread) + nread;
        if (!s->enough_said && total >= s->threshold && atomic_load(&s->clients_seen) == s->clients) {
            s->enough_said = true;
            test_gate_open(&s->enough);
        }
        return;
    }
    free(buf->base);
    if (nread == 0)
        return;
    if (nread == UV_ECANCELED)
        atomic_fetch_add(&c->srv->reads_cancelled, 1);
    client_close(c); /* EOF, error or cancellation: the same path */
}
static void on_connection(uv_stream_t *listener, int status)
{
    struct server *s = listener->data;
    CHECK_EQ(status, 0);
    struct client *c = calloc(1, sizeof *c);
    c->srv = s;
    c->open = 2;
    CHECK_EQ(uv_tcp_init(&s->loop, &c->tcp), 0);
    c->tcp.data = c;
    CHECK_EQ(uv_accept(listener, (uv_stream_t *)&c->tcp), 0);
    atomic_fetch_add(&s->clients_live, 1);
    atomic_fetch_add(&s->clients_seen, 1);
    int rc = cancel_uv_read_start(&c->reader, s->tok, (uv_stream_t *)&c->tcp, echo_alloc, echo_read);
    if (rc == ECANCELED) { /* accepted while shutting down */
        c->open = 1;
        uv_close((uv_handle_t *)&c->tcp, client_closed);
        return;
    }
    CHECK_EQ(rc, 0);
    c->reader.data = c;
}
static void server_shutdown(cancel_uv_t *h)
{
    struct server *s = h->data;
    if (s->close_all) {
        /* Everything at once: the clients' streams and readers too. */
        cancel_uv_close_all(&s->loop, client_closed);
        return;
    }
    /* Stop accepting; each client's read ends with UV_ECANCELED by itself,
     * and its read callback closes it. */
    uv_close((uv_handle_t *)&s->listener, NULL);
    cancel_uv_close(h, NULL);
}

struct tcp_client {
    int port;
    size_t chunk;
    _Atomic long long sent, received;
    int end_errno; /* how the transfer ended: 0 (EOF) or an errno */
};
/* A blocking client that keeps a transfer going: sends a chunk, reads its
 * echo, until the server goes away. */
static void *client_main(void *arg)
{
    struct tcp_client *tc = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tc->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        tc->end_errno = errno;
        close(fd);
        return NULL;
    }
    char *buf = malloc(tc->chunk);
    memset(buf, 'e', tc->chunk);
    for (;;) {
        ssize_t w = send(fd, buf, tc->chunk, MSG_NOSIGNAL);
        if (w < 0) {
            tc->end_errno = errno;
            break;
        }
        atomic_fetch_add(&tc->sent, w);
        size_t got = 0;
        ssize_t r = 1;
        while (got < (size_t)w && (r = recv(fd, buf, tc->chunk, 0)) > 0)
            got += (size_t)r;
        atomic_fetch_add(&tc->received, (long long)got);
        if (r <= 0) {
            tc->end_errno = r < 0 ? errno : 0;
            break;
        }
    }
    free(buf);
    close(fd);
    return NULL;
}

struct shutdown_thread {
    struct server *s;
    cancel_source *src;
};
static void *cancel_after_enough(void *arg)
{
    struct shutdown_thread *st = arg;
    test_gate_wait(&st->s->enough); /* mid-transfer: bytes are flowing */
    cancel_source_cancel(st->src);
    return NULL;
}

static void echo_server(bool close_all)
{
    enum { CLIENTS = 2 };
    struct server *s = calloc(1, sizeof *s);
    s->close_all = close_all;
    s->clients = CLIENTS;
    CHECK_EQ(uv_loop_init(&s->loop), 0);
    s->enough = (test_gate)TEST_GATE_INIT;
    s->threshold = TEST_SANITIZED ? 4 << 20 : 32 << 20;
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, CANCEL_INFINITE, "shutdown");
    s->tok = cancel_source_token(src);

    CHECK_EQ(uv_tcp_init(&s->loop, &s->listener), 0);
    s->listener.data = s;
    struct sockaddr_in addr;
    CHECK_EQ(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    CHECK_EQ(uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0), 0);
    CHECK_EQ(uv_listen((uv_stream_t *)&s->listener, 16, on_connection), 0);
    struct sockaddr_in bound;
    int len = sizeof bound;
    CHECK_EQ(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len), 0);
    CHECK_EQ(cancel_uv_init(&s->loop, &s->shutdown, s->tok, server_shutdown), 0);
    s->shutdown.data = s;

    struct tcp_client tc[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        tc[i] = (struct tcp_client){ntohs(bound.sin_port), 64 << 10, 0, 0, -1};
        th[i] = test_spawn(client_main, &tc[i]);
    }
    struct shutdown_thread st = {s, src};
    pthread_t killer = test_spawn(cancel_after_enough, &st);

    CHECK_EQ(uv_run(&s->loop, UV_RUN_DEFAULT), 0); /* returns: every handle closed */
    test_join(killer);
    for (int i = 0; i < CLIENTS; i++) {
        test_join(th[i]);
        /* Their server went away mid-transfer: EOF, or a reset. */
        CHECK(tc[i].end_errno == 0 || tc[i].end_errno == ECONNRESET || tc[i].end_errno == EPIPE);
    }
    CHECK_EQ(uv_loop_close(&s->loop), 0);
    CHECK(atomic_load(&s->echoed) >= s->threshold);
    CHECK_EQ(atomic_load(&s->clients_live), 0);
    CHECK_EQ(atomic_load(&s->clients_seen), CLIENTS);
    if (!close_all) /* every transfer was going on: each read ended by the token */
        CHECK_EQ(atomic_load(&s->reads_cancelled), CLIENTS);
    fprintf(stderr, "   %lld bytes echoed, %d clients, %d reads ended by UV_ECANCELED, %d writes cancelled\n",
            (long long)atomic_load(&s->echoed), atomic_load(&s->clients_seen), atomic_load(&s->reads_cancelled),
            atomic_load(&s->writes_cancelled));
    cancel_source_free(src);
    free(s);
}

/* A TCP echo server on 127.0.0.1, two clients in the middle of transfers,
 * the shutdown token cancelled from a third thread: the loop closes every
 * handle (the pending echoes end with UV_ECANCELED), uv_run returns, the
 * loop closes, nothing leaks. */
static void echo_server_readers_end_clients(void)
{
    echo_server(false);
}
static void echo_server_close_all(void)
{
    echo_server(true);
}

/* The read helper on its own: a read with no data ends with UV_ECANCELED and
 * a null buffer; an already-cancelled token starts nothing. */
static int read_ended;
static void read_cb_expect_cancel(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    CHECK_EQ(nread, UV_ECANCELED);
    CHECK(buf->base == NULL && buf->len == 0);
    read_ended++;
    cancel_uv_t *reader = stream->data;
    uv_close((uv_handle_t *)stream, NULL);
    cancel_uv_close(reader, NULL);
}
static void read_start_cancelled(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uv_pipe_t p;
    CHECK_EQ(uv_pipe_init(&loop, &p, 0), 0);
    CHECK_EQ(uv_pipe_open(&p, sv[0]), 0);
    cancel_uv_t reader;
    p.data = &reader;
    struct canceller k = {TEST_GATE_INIT, cancel_source_new(), 1, 0, TEST_GATE_INIT};
    CHECK_EQ(cancel_uv_read_start(&reader, cancel_source_token(k.src), (uv_stream_t *)&p, echo_alloc,
                                  read_cb_expect_cancel),
             0);
    CHECK_EQ(cancel_uv_read_start(&reader, cancel_source_token(k.src), NULL, echo_alloc, read_cb_expect_cancel),
             EINVAL);
    uv_timer_t t;
    open_gate_soon(&loop, &t, &k.go);
    pthread_t th = test_spawn(cancel_when_open, &k);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    test_join(th);
    CHECK_EQ(read_ended, 1);

    /* Already cancelled: ECANCELED, nothing started, nothing to close. */
    uv_pipe_t p2;
    int sv2[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2), 0);
    CHECK_EQ(uv_pipe_init(&loop, &p2, 0), 0);
    CHECK_EQ(uv_pipe_open(&p2, sv2[0]), 0);
    cancel_uv_t reader2;
    CHECK_EQ(cancel_uv_read_start(&reader2, cancel_source_token(k.src), (uv_stream_t *)&p2, echo_alloc,
                                  read_cb_expect_cancel),
             ECANCELED);
    CHECK(!uv_is_active((uv_handle_t *)&p2));
    uv_close((uv_handle_t *)&p2, NULL);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
    close(sv[1]);
    close(sv2[1]);
    cancel_source_free(k.src);
}

int main(void)
{
    RUN(fires_on_loop_thread);
    RUN(already_cancelled_fires_next_iteration);
    RUN(never_fires_keeps_loop_alive);
    RUN(close_then_cancel);
    RUN(async_and_deadline);
    RUN(many_handles_one_token);
    RUN(close_races_cancel);
    RUN(close_all_on_cancel);
    RUN(read_start_cancelled);
    RUN(echo_server_readers_end_clients);
    RUN(echo_server_close_all);
    return 0;
}
