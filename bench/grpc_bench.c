/*
 * grpc_bench: what libcancel-grpc costs per call, as CPU time, beside bare
 * gRPC calls in the same run. Client and server live in this process (one
 * server thread on a next queue, the client on the main thread, unary calls
 * one after another over 127.0.0.1), so the process's CPU clock counts both
 * ends and gRPC's own threads. Wall time per call is printed too, but its
 * noise is larger than the difference.
 *
 *   bare:    grpc_channel_create_call + grpc_call_unref on the client; the
 *            server handler ends with GRPC_OP_RECV_CLOSE_ON_SERVER itself.
 *   adapter: cancel_grpc_call_new + cancel_grpc_call_unref on the client
 *            (a token, its deadline read and converted, a registration); on
 *            the server cancel_grpc_server_source_new and cancel_source_free
 *            for every call, and every event of its queue through
 *            cancel_grpc_dispatch.
 * Both with no deadline, and with a deadline an hour away (bare: computed
 * from gRPC's clock; adapter: the token's, armed on the server too). A third
 * mode, the adapter on the client only, splits the cost between the ends; a
 * fourth, a bare server that starts RECV_CLOSE_ON_SERVER in a batch of its
 * own (as the adapter must), shows what that batch alone costs gRPC.
 *
 *   grpc_bench [calls per mode (10000)] [calls per round (500)]
 * The modes take turns in short rounds (so that they share the machine's
 * load); printed: CPU per call over all the calls of a mode, and the median
 * round. And the client's part alone, without I/O.
 */
#define _GNU_SOURCE
#include <cancel.h>
#include <cancel/grpc.h>
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "latency.h"

#define CHECK(c)                                                                        \
    do {                                                                                \
        if (!(c)) {                                                                     \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c);                     \
            abort();                                                                    \
        }                                                                               \
    } while (0)

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---------------------------------------------------------------- server */

/* How the server handles the next call. */
enum server_mode {
    SERVER_BARE,    /* RECV_CLOSE_ON_SERVER in the handler's last batch */
    SERVER_SPLIT,   /* RECV_CLOSE_ON_SERVER in a batch of its own, as the adapter does */
    SERVER_ADAPTER, /* cancel_grpc_server_source_new */
};
static _Atomic int server_mode;

enum stage { NEW, RECEIVED, SENT };
struct scall {
    enum stage stage;
    enum server_mode mode;
    int events_left; /* SERVER_SPLIT: the last batch and the close batch */
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *req;
    int cancelled;
    cancel_source *src;
};

static grpc_server *server;
static grpc_completion_queue *server_cq;
static int shutdown_tag;

static void request(void)
{
    struct scall *c = calloc(1, sizeof *c);
    CHECK(c);
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    CHECK(grpc_server_request_call(server, &c->call, &c->details, &c->md, server_cq, server_cq, c) ==
          GRPC_CALL_OK);
}

static void release(struct scall *c)
{
    grpc_byte_buffer_destroy(c->req);
    cancel_source_free(c->src);
    grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c);
}

static void *serve(void *arg)
{
    (void)arg;
    long watched = 0; /* adapter batches not yet dispatched */
    request();
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(server_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        /* The bare server never calls cancel_grpc_dispatch once the
         * adapter's rounds are over. */
        if (watched > 0 && cancel_grpc_dispatch(&ev)) {
            watched--;
            continue;
        }
        if (ev.tag == &shutdown_tag) {
            grpc_completion_queue_shutdown(server_cq);
            continue;
        }
        struct scall *c = ev.tag;
        if ((uintptr_t)c & 1) { /* SERVER_SPLIT's close batch: the tag is c + 1 */
            c = (struct scall *)((uintptr_t)c - 1);
            if (--c->events_left == 0)
                release(c);
            continue;
        }
        grpc_op ops[3];
        memset(ops, 0, sizeof ops);
        switch (c->stage) {
        case NEW:
            if (!ev.success) { /* shutting down */
                grpc_call_details_destroy(&c->details);
                grpc_metadata_array_destroy(&c->md);
                free(c);
                continue;
            }
            request();
            c->mode = atomic_load_explicit(&server_mode, memory_order_relaxed);
            if (c->mode == SERVER_ADAPTER) {
                c->src = cancel_grpc_server_source_new(c->call, c->details.deadline);
                CHECK(c->src);
                watched++;
            } else if (c->mode == SERVER_SPLIT) {
                c->events_left = 2;
                ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
                ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
                CHECK(grpc_call_start_batch(c->call, ops, 1, (char *)c + 1, NULL) == GRPC_CALL_OK);
                memset(ops, 0, sizeof ops);
            }
            ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
            ops[1].op = GRPC_OP_RECV_MESSAGE;
            ops[1].data.recv_message.recv_message = &c->req;
            c->stage = RECEIVED;
            CHECK(grpc_call_start_batch(c->call, ops, 2, c, NULL) == GRPC_CALL_OK);
            break;
        case RECEIVED:
            ops[0].op = GRPC_OP_SEND_MESSAGE;
            ops[0].data.send_message.send_message = c->req;
            ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[1].data.send_status_from_server.status = GRPC_STATUS_OK;
            ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
            ops[2].data.recv_close_on_server.cancelled = &c->cancelled;
            c->stage = SENT;
            size_t n = c->mode == SERVER_BARE ? 3 : 2;
            CHECK(grpc_call_start_batch(c->call, ops, n, c, NULL) == GRPC_CALL_OK);
            break;
        case SENT:
            if (c->mode != SERVER_SPLIT || --c->events_left == 0)
                release(c);
            break;
        }
    }
}

/* ---------------------------------------------------------------- client */

static grpc_channel *channel;
static grpc_completion_queue *client_cq;
static grpc_byte_buffer *payload;

static gpr_timespec hour_from_now(void)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(3600, GPR_TIMESPAN));
}

/* One unary call; `tok` NULL: bare. */
static void one_call(const cancel_token *tok, bool deadline)
{
    grpc_call *call;
    if (tok) {
        call = cancel_grpc_call_new(*tok, channel, client_cq, "/bench/echo", NULL);
    } else {
        gpr_timespec d = deadline ? hour_from_now() : gpr_inf_future(GPR_CLOCK_MONOTONIC);
        call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, client_cq,
                                        grpc_slice_from_static_string("/bench/echo"), NULL, d, NULL);
    }
    CHECK(call);
    grpc_metadata_array im, tm;
    grpc_metadata_array_init(&im);
    grpc_metadata_array_init(&tm);
    grpc_byte_buffer *reply = NULL;
    grpc_status_code status;
    grpc_slice details;
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = payload;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &im;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &reply;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &tm;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    CHECK(grpc_call_start_batch(call, ops, 6, call, NULL) == GRPC_CALL_OK);
    grpc_event ev = grpc_completion_queue_next(client_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    CHECK(ev.type == GRPC_OP_COMPLETE && ev.tag == call && ev.success);
    CHECK(status == GRPC_STATUS_OK && reply);
    grpc_byte_buffer_destroy(reply);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&im);
    grpc_metadata_array_destroy(&tm);
    if (tok)
        cancel_grpc_call_unref(call);
    else
        grpc_call_unref(call);
}

struct result {
    double cpu_ns, wall_ns; /* per call */
};

static struct result round_of(int calls, const cancel_token *tok, enum server_mode mode, bool deadline)
{
    atomic_store_explicit(&server_mode, mode, memory_order_relaxed);
    int64_t c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), w0 = clock_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < calls; i++)
        one_call(tok, deadline);
    int64_t c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), w1 = clock_ns(CLOCK_MONOTONIC);
    return (struct result){(double)(c1 - c0) / calls, (double)(w1 - w0) / calls};
}

/* The modes, interleaved in short rounds so that they share the machine's
 * weather; `total` calls of each in all. */
static void compare(const char *what, int total, int per_round, cancel_token tok, bool deadline)
{
    enum { BARE, SPLIT, CLIENT, BOTH, MODES };
    static const char *const names[MODES] = {"bare gRPC", "bare, close batch apart", "adapter on the client",
                                              "adapter on both ends"};
    int rounds = total / per_round;
    double *cpu[MODES], sum_cpu[MODES] = {0}, sum_wall[MODES] = {0};
    for (int m = 0; m < MODES; m++)
        CHECK((cpu[m] = calloc((size_t)rounds, sizeof(double))) != NULL);
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < MODES; k++) {
            int m = (r + k) % MODES; /* each mode in every position */
            struct result x = round_of(per_round, m >= CLIENT ? &tok : NULL,
                                       m == BOTH ? SERVER_ADAPTER : m == SPLIT ? SERVER_SPLIT : SERVER_BARE,
                                       deadline);
            cpu[m][r] = x.cpu_ns;
            sum_cpu[m] += x.cpu_ns;
            sum_wall[m] += x.wall_ns;
        }
    }
    printf("%s: %d calls per mode, in %d rounds of %d\n", what, rounds * per_round, rounds, per_round);
    printf("  %-24s %s\n", "", "CPU per call: all calls | median round (vs bare)      wall per call");
    double base_all = sum_cpu[BARE] / rounds, base_med = lat_median(cpu[BARE], rounds);
    for (int m = 0; m < MODES; m++) {
        double all = sum_cpu[m] / rounds, med = lat_median(cpu[m], rounds);
        printf("  %-24s %8.2f us (%+6.2f) | %8.2f us (%+6.2f, x%.3f)   %8.2f us\n", names[m], all / 1e3,
               (all - base_all) / 1e3, med / 1e3, (med - base_med) / 1e3, med / base_med,
               sum_wall[m] / rounds / 1e3);
        free(cpu[m]);
    }
}

/* The client's part alone, no I/O: create and release a call that is never
 * started, bare and through the adapter; CPU ns per call, median of rounds. */
static void client_only(int n, cancel_token tok, bool deadline)
{
    enum { ROUNDS = 9 };
    double bare[ROUNDS], ours[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        int64_t t0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < n; i++) {
            gpr_timespec d = deadline ? hour_from_now() : gpr_inf_future(GPR_CLOCK_MONOTONIC);
            grpc_slice m = grpc_slice_from_static_string("/bench/echo");
            grpc_call *c = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, client_cq, m, NULL, d,
                                                    NULL);
            grpc_call_unref(c);
        }
        int64_t t1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < n; i++)
            cancel_grpc_call_unref(cancel_grpc_call_new(tok, channel, client_cq, "/bench/echo", NULL));
        int64_t t2 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        bare[r] = (double)(t1 - t0) / n;
        ours[r] = (double)(t2 - t1) / n;
    }
    double b = lat_median(bare, ROUNDS), o = lat_median(ours, ROUNDS);
    printf("  client's part alone (create + release a call, no I/O): "
           "bare %.0f ns, adapter %.0f ns (%+.0f ns, x%.2f)\n",
           b, o, o - b, o / b);
}

int main(int argc, char **argv)
{
    int total = argc > 1 ? atoi(argv[1]) : 10000;
    int per_round = argc > 2 ? atoi(argv[2]) : 500;
    CHECK(per_round > 0 && total >= per_round);
    grpc_init();

    server = grpc_server_create(NULL, NULL);
    server_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(server, server_cq, NULL);
    grpc_server_credentials *sc = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(server, "127.0.0.1:0", sc);
    grpc_server_credentials_release(sc);
    CHECK(port > 0);
    grpc_server_start(server);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, serve, NULL) == 0);

    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    grpc_channel_credentials *cc = grpc_insecure_credentials_create();
    channel = grpc_channel_create(target, cc, NULL);
    grpc_channel_credentials_release(cc);
    client_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice s = grpc_slice_from_static_string("0123456789abcdef");
    payload = grpc_raw_byte_buffer_create(&s, 1);

    cancel_source *none = cancel_source_new();
    cancel_source *hour = cancel_source_new();
    CHECK(cancel_source_cancel_after(hour, (int64_t)3600 * 1000000000) == 0);
    /* warm up: the connection, the allocator, the library thread */
    round_of(1000, NULL, SERVER_BARE, false);
    round_of(1000, (cancel_token[]){cancel_source_token(hour)}, SERVER_ADAPTER, true);

    printf("grpc_bench: unary calls over 127.0.0.1, client and server in this process (gRPC core %s)\n",
           grpc_version_string());
    compare("no deadline", total, per_round, cancel_source_token(none), false);
    client_only(20000, cancel_source_token(none), false);
    compare("deadline in 1 h", total, per_round, cancel_source_token(hour), true);
    client_only(20000, cancel_source_token(hour), true);

    grpc_byte_buffer_destroy(payload);
    grpc_channel_destroy(channel);
    grpc_server_shutdown_and_notify(server, server_cq, &shutdown_tag);
    grpc_server_cancel_all_calls(server);
    pthread_join(t, NULL);
    grpc_server_destroy(server);
    grpc_completion_queue_destroy(server_cq);
    grpc_completion_queue_shutdown(client_cq);
    gpr_timespec forever = gpr_inf_future(GPR_CLOCK_REALTIME);
    while (grpc_completion_queue_next(client_cq, forever, NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(client_cq);
    cancel_source_free(none);
    cancel_source_free(hour);
    grpc_shutdown();
    return 0;
}
