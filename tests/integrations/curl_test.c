/* libcancel-curl against the real libcurl and a local HTTP server. */
#include "check.h"
#include "http_server.h"

#include <cancel/curl.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/resource.h>

static http_server server;

/* libc's poll, wrapped (the executable's definition comes first for
 * libcurl, whose curl_multi_poll calls poll) to see what a wait watches:
 * whether it includes `watched_fd`, and whether it returned with it
 * readable. Everything else passes straight through. */
typedef int poll_fn(struct pollfd *, nfds_t, int);
static poll_fn *_Atomic real_poll;
static atomic_int watched_fd = -1;
static atomic_int waits_watching; /* waits that included it */
static atomic_int woken_by_it;    /* waits that returned with it readable */
static test_gate watching = TEST_GATE_INIT; /* opened by the first wait that included it */

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    poll_fn *f = atomic_load(&real_poll);
    if (f == NULL) {
        void *sym = dlsym(RTLD_NEXT, "poll");
        memcpy(&f, &sym, sizeof f);
        atomic_store(&real_poll, f);
    }
    int w = atomic_load(&watched_fd);
    nfds_t at = n;
    for (nfds_t i = 0; w >= 0 && i < n; i++)
        if (fds[i].fd == w)
            at = i;
    if (at < n) {
        atomic_fetch_add(&waits_watching, 1);
        test_gate_open(&watching);
    }
    int rc = f(fds, n, timeout);
    if (at < n && rc > 0 && fds[at].revents != 0)
        atomic_fetch_add(&woken_by_it, 1);
    return rc;
}

/* No descriptor can be made until restore_descriptors: the soft limit is
 * lowered to the lowest free descriptor number (those above stay open). */
static struct rlimit saved_limit;
static bool limited;
static void exhaust_descriptors(void)
{
    int lowest = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(lowest >= 0);
    close(lowest);
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &saved_limit), 0);
    struct rlimit l = saved_limit;
    l.rlim_cur = (rlim_t)lowest;
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &l), 0);
    limited = true;
}
static void restore_descriptors(void)
{
    if (limited)
        CHECK_EQ(setrlimit(RLIMIT_NOFILE, &saved_limit), 0);
    limited = false;
}

/* What the user's callbacks saw. */
struct seen {
    char body[256];
    size_t body_len;
    size_t bytes;      /* every body byte, kept or not */
    int progress;      /* calls of the user's progress callback */
    int sockets;       /* sockets curl opened */
    test_gate first;   /* opened by the first body bytes */
    cancel_source *src; /* if set: how many callbacks it had at the first bytes */
    size_t registrations;
};

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    struct seen *s = arg;
    size_t len = size * n;
    size_t keep = len < sizeof s->body - 1 - s->body_len ? len : sizeof s->body - 1 - s->body_len;
    memcpy(s->body + s->body_len, p, keep);
    s->body_len += keep;
    s->body[s->body_len] = '\0';
    if (s->bytes == 0 && s->src != NULL) {
        cancel_source_info info;
        CHECK_EQ(cancel_source_get_info(s->src, &info), 0);
        s->registrations = info.registrations;
    }
    s->bytes += len;
    test_gate_open(&s->first);
    return len;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    ((struct seen *)arg)->progress++;
    return 0;
}

static curl_socket_t on_open(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    ((struct seen *)arg)->sockets++;
    return socket(a->family, a->socktype, a->protocol);
}

/* An easy handle with every callback of ours set, and a private pointer. */
static CURL *new_easy(struct seen *s, const char *path)
{
    char url[128];
    http_url(&server, path, url, sizeof url);
    CURL *e = curl_easy_init();
    CHECK(e != NULL);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, s);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, s);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)s);
    return e;
}

static void reset_seen(struct seen *s)
{
    s->body[0] = '\0';
    s->body_len = 0;
    s->bytes = 0;
    s->progress = 0;
    s->sockets = 0;
    s->first = (test_gate)TEST_GATE_INIT;
    s->src = NULL;
    s->registrations = 0;
}

static void set_path(CURL *e, const char *path)
{
    char url[128];
    http_url(&server, path, url, sizeof url);
    curl_easy_setopt(e, CURLOPT_URL, url);
}

/* The handle still works, with every option the user set: callbacks and
 * private pointer. */
static void check_handle_intact(CURL *e, struct seen *s)
{
    reset_seen(s);
    set_path(e, "/fast");
    cancel_source *src = cancel_source_new();
    CHECK_EQ(cancel_curl_perform(cancel_source_token(src), e), CURLE_OK);
    cancel_source_free(src);
    CHECK_STR(s->body, "hello");
    CHECK(s->progress > 0);
    char *priv = NULL;
    CHECK_EQ(curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv), CURLE_OK);
    CHECK(priv == (char *)s);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    CHECK_EQ(code, 200);
    /* and plain curl_easy_perform too */
    reset_seen(s);
    CHECK_EQ(curl_easy_perform(e), CURLE_OK);
    CHECK_STR(s->body, "hello");
    CHECK(s->progress > 0);
}

static void performs_like_easy_perform(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/fast");
    CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, e), CURLE_OK);
    CHECK_STR(s.body, "hello");
    CHECK_EQ(s.sockets, 1);
    set_path(e, "/missing");
    CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, e), CURLE_OK);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    CHECK_EQ(code, 404);
    curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
    CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, e), CURLE_HTTP_RETURNED_ERROR);
    curl_easy_cleanup(e);
}

static void already_cancelled_starts_nothing(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/fast");
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    CHECK_EQ(cancel_curl_perform(cancel_source_token(src), e), CURLE_ABORTED_BY_CALLBACK);
    CHECK_EQ(s.sockets, 0); /* no connection */
    CHECK_EQ(s.bytes, 0);
    CHECK_EQ(s.progress, 0); /* no callback of the user ran */
    cancel_source_free(src);
    check_handle_intact(e, &s);
    curl_easy_cleanup(e);
}

struct canceller {
    cancel_source *src;
    test_gate *when;     /* cancel once this opens */
    int async;           /* cancel_async instead of cancel */
    int64_t cancelled_at;
};

static void *cancel_when(void *arg)
{
    struct canceller *c = arg;
    test_gate_wait(c->when);
    c->cancelled_at = test_now_ns();
    if (c->async)
        cancel_source_cancel_async(c->src);
    else
        cancel_source_cancel(c->src);
    return NULL;
}

/* Cancels mid-body from another thread: the call returns with
 * CURLE_ABORTED_BY_CALLBACK, the connection is closed, and the same handle
 * then completes a request. With /stall the server sends nothing after the
 * first bytes and never closes: only the token can end the call. */
static void cancel_mid_body(const char *path, int async)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, path);
    cancel_source *src = cancel_source_new();
    s.src = src;
    struct canceller c = {src, &s.first, async, 0};
    int closed = http_get(&server, &server.closed);
    pthread_t t = test_spawn(cancel_when, &c);
    CHECK_EQ(cancel_curl_perform(cancel_source_token(src), e), CURLE_ABORTED_BY_CALLBACK);
    int64_t returned = test_now_ns();
    test_join(t);
    CHECK(cancel_token_is_requested(cancel_source_token(src)));
    CHECK(s.bytes > 0 && s.bytes < 1000);
    /* What makes it prompt: the wait is woken through a callback on the
     * token (the printed latency shows the effect; bench/ measures it). */
    CHECK_EQ(s.registrations, 1);
    fprintf(stderr, "   %s%s: cancel to return %.1f us\n", path, async ? " (async)" : "",
            (double)(returned - c.cancelled_at) / 1e3);
    /* The aborted transfer's connection is closed. */
    http_wait_count(&server, &server.closed, closed + 1);
    cancel_source_free(src);
    check_handle_intact(e, &s);
    curl_easy_cleanup(e);
}

static void cancel_while_server_silent(void)
{
    cancel_mid_body("/stall", 0);
    cancel_mid_body("/stall", 1);
}

static void cancel_while_body_flows(void)
{
    cancel_mid_body("/slow/100000", 0);
}

/* A deadline on the token ends a transfer the server never finishes. */
static void deadline_ends_transfer(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/stall");
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, 50 * 1000 * 1000, "request");
    CHECK(src != NULL);
    CHECK_EQ(cancel_curl_perform(cancel_source_token(src), e), CURLE_ABORTED_BY_CALLBACK);
    cancel_cause cause = cancel_token_cause(cancel_source_token(src));
    CHECK_EQ(cause.reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(src);
    check_handle_intact(e, &s);
    curl_easy_cleanup(e);
}

/* curl without its wake-up socket pair: no descriptor could be made when
 * the call made its multi handle (curl then goes on without the pair, and
 * curl_multi_wakeup fails). The token's descriptor, made before, is waited
 * on instead, which the cancellation makes readable (with the source freed
 * uncancelled, it wakes the wait once and is no longer watched; the
 * transfer goes on to its end). Descriptors come back
 * when curl opens its socket. Without that, the wait would notice the
 * cancellation only at its timeout, and a source freed uncancelled would
 * wake it over and over. */
static curl_socket_t open_restoring(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    restore_descriptors();
    return on_open(arg, purpose, a);
}

struct at_watch {
    cancel_source *src;
    int free_it;
    test_gate *body;  /* cancel: at a wait begun after the first body bytes */
    int waits;        /* waits that watched the descriptor until then */
    bool watched;     /* a wait watched the token's descriptor */
};
static bool watched_again(void *arg)
{
    return atomic_load(&waits_watching) > ((struct at_watch *)arg)->waits;
}
static void *act_when_watched(void *arg)
{
    struct at_watch *w = arg;
    /* a failure if it never does (the call then still ends) */
    w->watched = test_gate_wait_for(&watching, 10 * 1000000000LL);
    if (w->watched && !w->free_it) {
        test_gate_wait(w->body); /* the server sends nothing more */
        w->waits = atomic_load(&waits_watching);
        w->watched = test_wait_until(watched_again, w, 10 * 1000000000LL);
    }
    if (w->free_it)
        cancel_source_free(w->src);
    else
        cancel_source_cancel(w->src);
    return NULL;
}

static void without_curls_wakeup_socket(int free_it)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, free_it ? "/slow/40" : "/stall");
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_restoring);
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_token_retain(cancel_source_token(src));
    int fd = cancel_token_fd(tok); /* made while descriptors remain */
    CHECK(fd >= 0);
    watching = (test_gate)TEST_GATE_INIT;
    atomic_store(&waits_watching, 0);
    atomic_store(&woken_by_it, 0);
    atomic_store(&watched_fd, fd);
    struct at_watch w = {src, free_it, &s.first, 0, false};
    pthread_t t = test_spawn(act_when_watched, &w);
    exhaust_descriptors();
    CURLcode rc = cancel_curl_perform(tok, e);
    restore_descriptors(); /* if curl never opened its socket */
    test_join(t);
    atomic_store(&watched_fd, -1);
    fprintf(stderr, "   %d waits watched the token's descriptor, %d woken by it\n",
            atomic_load(&waits_watching), atomic_load(&woken_by_it));
    CHECK(w.watched);
    if (free_it) {
        CHECK_EQ(atomic_load(&woken_by_it), 1); /* then no longer watched */
        CHECK_EQ(rc, CURLE_OK);
        CHECK_EQ(s.bytes, 40);
    } else {
        /* 0 when the wait returned for the socket as the cancellation came */
        CHECK(atomic_load(&woken_by_it) <= 1);
        CHECK_EQ(rc, CURLE_ABORTED_BY_CALLBACK);
        cancel_source_free(src);
    }
    cancel_token_release(tok);
    check_handle_intact(e, &s);
    curl_easy_cleanup(e);
}

static void cancelled_without_curls_wakeup_socket(void)
{
    without_curls_wakeup_socket(0);
}
static void freed_source_without_curls_wakeup_socket(void)
{
    without_curls_wakeup_socket(1);
}

/* A source freed uncancelled mid-transfer: the transfer goes on to its end. */
struct freer {
    cancel_source *src;
    test_gate *when;
};
static void *free_when(void *arg)
{
    struct freer *f = arg;
    test_gate_wait(f->when);
    cancel_source_free(f->src);
    return NULL;
}

static void freed_source_lets_transfer_finish(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/slow/40");
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_token_retain(cancel_source_token(src));
    struct freer f = {src, &s.first};
    pthread_t t = test_spawn(free_when, &f);
    CHECK_EQ(cancel_curl_perform(tok, e), CURLE_OK);
    test_join(t);
    CHECK_EQ(s.bytes, 40);
    cancel_token_release(tok);
    curl_easy_cleanup(e);
}

static void bad_arguments(void)
{
    CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, NULL), CURLE_BAD_FUNCTION_ARGUMENT);
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/fast");
    CURLM *m = curl_multi_init();
    CHECK_EQ(curl_multi_add_handle(m, e), CURLM_OK);
    CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, e), CURLE_FAILED_INIT);
    CHECK_EQ(curl_multi_remove_handle(m, e), CURLM_OK);
    curl_multi_cleanup(m);
    check_handle_intact(e, &s);
    curl_easy_cleanup(e);
}

/* The header's advice: a share handle keeps connections across calls. */
static void share_keeps_connections(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/fast");
    CURLSH *sh = curl_share_init();
    curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_easy_setopt(e, CURLOPT_SHARE, sh);
    int accepted = http_get(&server, &server.accepted);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(cancel_curl_perform(CANCEL_TOKEN_NONE, e), CURLE_OK);
    CHECK_EQ(s.sockets, 1);
    CHECK_EQ(http_get(&server, &server.accepted), accepted + 1);
    curl_easy_cleanup(e);
    curl_share_cleanup(sh);
}

/* A cancellation racing the end of short transfers: either result, and the
 * handle always works afterwards. */
static void race_with_end_of_transfer(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/fast");
    test_racer r;
    test_racer_start(&r, 0x9e3779b97f4a7c15u, 19);
    int n = TEST_SCALE(300), ok = 0, aborted = 0;
    for (int i = 0; i < n; i++) {
        cancel_source *src = cancel_source_new();
        reset_seen(&s);
        test_racer_go(&r, src);
        CURLcode rc = cancel_curl_perform(cancel_source_token(src), e);
        test_racer_wait(&r);
        if (rc == CURLE_OK) {
            ok++;
            CHECK_STR(s.body, "hello");
        } else {
            CHECK_EQ(rc, CURLE_ABORTED_BY_CALLBACK);
            aborted++;
        }
        cancel_source_free(src);
        if (i % 10 == 0)
            check_handle_intact(e, &s);
    }
    test_racer_stop(&r);
    fprintf(stderr, "   %d completed, %d aborted\n", ok, aborted);
    curl_easy_cleanup(e);
}

/* cancel_curl_multi_wakeup drives a program's own multi loop. */
static void wakeup_callback_for_own_loop(void)
{
    struct seen s;
    reset_seen(&s);
    CURL *e = new_easy(&s, "/stall");
    CURLM *m = curl_multi_init();
    curl_multi_add_handle(m, e);
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_source_token(src);
    cancel_registration reg;
    CHECK_EQ(cancel_register(tok, &reg, cancel_curl_multi_wakeup, m), 0);
    struct canceller c = {src, &s.first, 0, 0};
    pthread_t t = test_spawn(cancel_when, &c);
    int running = 1;
    while (running && !cancel_token_is_requested(tok)) {
        curl_multi_perform(m, &running);
        curl_multi_poll(m, NULL, 0, 60 * 1000, NULL);
    }
    test_join(t);
    CHECK(cancel_token_is_requested(tok));
    CHECK(!cancel_unregister(&reg));
    curl_multi_remove_handle(m, e);
    curl_multi_cleanup(m);
    cancel_source_free(src);
    curl_easy_cleanup(e);
}

/* CURLOPT_CONNECT_ONLY, as the header states it: the connection
 * cancel_curl_perform makes does not outlive the call (it belongs to the
 * call's multi handle), so curl_easy_send then finds none; the header's
 * alternative, a multi handle of the program's own woken by
 * cancel_curl_multi_wakeup, keeps it for curl_easy_send and
 * curl_easy_recv. */
static void connect_only(void)
{
    char url[128];
    http_url(&server, "/", url, sizeof url);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_source_token(src);
    int closed = http_get(&server, &server.closed);
    CHECK_EQ(cancel_curl_perform(tok, e), CURLE_OK);
    http_wait_count(&server, &server.closed, closed + 1); /* closed with the call */
    size_t n = 0;
    CHECK(curl_easy_send(e, "x", 1, &n) != CURLE_OK);
    curl_easy_cleanup(e);

    e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    CURLM *m = curl_multi_init();
    CHECK_EQ(curl_multi_add_handle(m, e), CURLM_OK);
    cancel_registration reg;
    CHECK_EQ(cancel_register(tok, &reg, cancel_curl_multi_wakeup, m), 0);
    int running = 1;
    while (running && !cancel_token_is_requested(tok)) {
        CHECK_EQ(curl_multi_perform(m, &running), CURLM_OK);
        if (running)
            curl_multi_poll(m, NULL, 0, 1000, NULL);
    }
    int left;
    CURLMsg *msg = curl_multi_info_read(m, &left);
    CHECK(msg != NULL && msg->msg == CURLMSG_DONE);
    CHECK_EQ(msg->data.result, CURLE_OK);
    const char req[] = "GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    CHECK_EQ(curl_easy_send(e, req, sizeof req - 1, &n), CURLE_OK);
    CHECK_EQ(n, sizeof req - 1);
    curl_socket_t sock;
    CHECK_EQ(curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &sock), CURLE_OK);
    char resp[512];
    size_t got = 0;
    while (got < sizeof resp - 1 && !(got > 5 && memcmp(resp + got - 5, "hello", 5) == 0)) {
        CURLcode rc = curl_easy_recv(e, resp + got, sizeof resp - 1 - got, &n);
        if (rc == CURLE_AGAIN) {
            struct pollfd pf = {sock, POLLIN, 0};
            CHECK_EQ(poll(&pf, 1, 10 * 1000), 1);
            continue;
        }
        CHECK_EQ(rc, CURLE_OK);
        CHECK(n > 0);
        got += n;
    }
    resp[got] = '\0';
    CHECK(strstr(resp, " 200 ") != NULL);
    CHECK(cancel_unregister(&reg)); /* never fired */
    curl_multi_remove_handle(m, e);
    curl_multi_cleanup(m);
    curl_easy_cleanup(e);
    cancel_source_free(src);
}

int main(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "curl_global_init failed: skipped\n");
        return 77;
    }
    if (http_start(&server) != 0) {
        fprintf(stderr, "no loopback socket: skipped\n");
        return 77;
    }
    RUN(performs_like_easy_perform);
    RUN(already_cancelled_starts_nothing);
    RUN(cancel_while_server_silent);
    RUN(cancel_while_body_flows);
    RUN(deadline_ends_transfer);
    RUN(freed_source_lets_transfer_finish);
    RUN(cancelled_without_curls_wakeup_socket);
    RUN(freed_source_without_curls_wakeup_socket);
    RUN(bad_arguments);
    RUN(share_keeps_connections);
    RUN(race_with_end_of_transfer);
    RUN(wakeup_callback_for_own_loop);
    RUN(connect_only);
    http_stop(&server);
    curl_global_cleanup();
    cancel_quiesce(CANCEL_INFINITE);
    return 0;
}
