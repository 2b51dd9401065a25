/*
 * curl_bench: how long a cancelled transfer takes to return, measured from
 * the cancel call on another thread to the perform's return, against a
 * local server gone silent mid-body (headers and 16 bytes sent, then
 * nothing):
 *   - cancel_curl_perform, cancelled with cancel_source_cancel;
 *   - the raw mechanism, the floor: a hand-written multi loop (a multi
 *     handle per transfer, as ours) woken with curl_multi_wakeup after
 *     setting a flag;
 *   - curl's own polling way: curl_easy_perform with a progress callback
 *     that aborts when a flag is set, at curl's default tick.
 * The kinds alternate sample by sample. The polling baseline cancels at a
 * random moment within a second of the silence, so that its samples cover
 * the tick's phase; it takes about a second per sample.
 *
 *   curl_bench [samples] [polling_samples]     (default 300 and 15)
 */
#define _GNU_SOURCE
#include "../tests/integrations/http_server.h"
#include "latency.h"

#include <cancel/curl.h>

#include <stdatomic.h>

static http_server server;

enum kind { OURS, RAW, POLLING };

struct sample {
    enum kind kind;
    cancel_source *src;   /* OURS */
    CURLM *multi;         /* RAW */
    atomic_int flag;      /* RAW, POLLING */
    int64_t delay_us;     /* from the first body bytes to the cancel */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int first;            /* the first body bytes arrived */
    int64_t cancelled_at;
};

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    struct sample *s = arg;
    pthread_mutex_lock(&s->mu);
    s->first = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return size * n;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    return atomic_load_explicit(&((struct sample *)arg)->flag, memory_order_acquire);
}

static void *canceller(void *arg)
{
    struct sample *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->first)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    lat_sleep_us(s->delay_us);
    s->cancelled_at = lat_now();
    switch (s->kind) {
    case OURS:
        cancel_source_cancel(s->src);
        break;
    case RAW:
        atomic_store_explicit(&s->flag, 1, memory_order_release);
        curl_multi_wakeup(s->multi);
        break;
    case POLLING:
        atomic_store_explicit(&s->flag, 1, memory_order_release);
        break;
    }
    return NULL;
}

/* The raw floor: curl_easy_perform's loop, woken by curl_multi_wakeup. */
static CURLcode raw_perform(struct sample *s, CURL *easy)
{
    s->multi = curl_multi_init();
    curl_multi_add_handle(s->multi, easy);
    CURLcode res = CURLE_OK;
    for (;;) {
        int running;
        curl_multi_perform(s->multi, &running);
        if (!running)
            break;
        if (atomic_load_explicit(&s->flag, memory_order_acquire)) {
            res = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
        if (atomic_load_explicit(&s->flag, memory_order_acquire)) {
            res = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
    }
    curl_multi_remove_handle(s->multi, easy);
    curl_multi_cleanup(s->multi);
    return res;
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int64_t one(enum kind kind, CURL *easy)
{
    struct sample s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    atomic_init(&s.flag, 0);
    s.delay_us = kind == POLLING ? (int64_t)(next_rand() % 1000000) : 1000 + (int64_t)(next_rand() % 1000);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &s);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, kind == POLLING ? 0L : 1L);
    if (kind == OURS)
        s.src = cancel_source_new();
    pthread_t t;
    pthread_create(&t, NULL, canceller, &s);
    CURLcode rc;
    if (kind == OURS)
        rc = cancel_curl_perform(cancel_source_token(s.src), easy);
    else if (kind == RAW)
        rc = raw_perform(&s, easy);
    else
        rc = curl_easy_perform(easy);
    int64_t back = lat_now();
    pthread_join(t, NULL);
    if (rc != CURLE_ABORTED_BY_CALLBACK) {
        fprintf(stderr, "unexpected result %d\n", (int)rc);
        exit(1);
    }
    cancel_source_free(s.src);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return back - s.cancelled_at;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 300;
    int np = argc > 2 ? atoi(argv[2]) : 15;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (http_start(&server) != 0) {
        fprintf(stderr, "no loopback socket\n");
        return 1;
    }
    char url[128];
    http_url(&server, "/stall", url, sizeof url);
    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    lat ours = {0}, raw = {0}, polling = {0};
    for (int i = 0; i < n; i++) {
        lat_add(&ours, one(OURS, easy));
        lat_add(&raw, one(RAW, easy));
        if (i < np)
            lat_add(&polling, one(POLLING, easy));
    }
    printf("libcurl %s, %d samples (%d of the polling baseline)\n", curl_version_info(CURLVERSION_NOW)->version,
           n, np);
    lat_header("cancel to return, server silent");
    lat_row("cancel_curl_perform", &ours, "multi loop + curl_multi_wakeup", &raw);
    lat_row("cancel_curl_perform", &ours, "progress callback abort (tick)", &polling);
    curl_easy_cleanup(easy);
    http_stop(&server);
    curl_global_cleanup();
    return 0;
}
