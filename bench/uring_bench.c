/*
 * uring_bench: how long a cancelled io_uring operation (a read of an empty
 * pipe) takes to complete with -ECANCELED, measured from the cancel call on
 * another thread to the loop reaping that completion:
 *   - a cancel_uring scope, cancelled with cancel_source_cancel;
 *   - the raw mechanism, hand-written: the other thread writes an eventfd
 *     the ring polls, the loop then submits IORING_OP_ASYNC_CANCEL;
 *   - and, for scale, the kernel's part alone: IORING_OP_ASYNC_CANCEL
 *     submitted by the loop's own thread (no thread to wake).
 * The kinds alternate sample by sample.
 *
 *   uring_bench [samples]      (default 500)
 */
#define _GNU_SOURCE
#include "latency.h"

#include <cancel/uring.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static struct io_uring ring;
static int pipe_fd[2];
static char buf[16];

enum { READ_UD = 1, POLL_UD = 2, CANCEL_UD = 3 };

struct sample {
    cancel_source *src; /* ours */
    int efd;            /* raw */
    int64_t delay_us;
    int64_t cancelled_at;
};

static void *canceller(void *arg)
{
    struct sample *s = arg;
    lat_sleep_us(s->delay_us);
    s->cancelled_at = lat_now();
    if (s->src != NULL) {
        cancel_source_cancel(s->src);
    } else {
        uint64_t one = 1;
        if (write(s->efd, &one, sizeof one) != sizeof one)
            abort();
    }
    return NULL;
}

static struct io_uring_sqe *sqe_for(uint64_t ud)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (sqe == NULL)
        abort();
    memset(sqe, 0, sizeof *sqe);
    sqe->user_data = ud;
    return sqe;
}

static uint64_t rng = 0x853c49e6748fea9bu;
static int64_t delay(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return 500 + (int64_t)(rng % 1000);
}

static void fail(const char *what)
{
    fprintf(stderr, "%s\n", what);
    exit(1);
}

static int64_t one_ours(void)
{
    struct sample s = {cancel_source_new(), -1, delay(), 0};
    cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(s.src));
    cancel_uring_op op = CANCEL_URING_OP_INIT;
    struct io_uring_sqe *sqe = sqe_for(READ_UD);
    io_uring_prep_read(sqe, pipe_fd[0], buf, sizeof buf, 0);
    sqe->user_data = READ_UD;
    cancel_uring_tie(scope, sqe, &op);
    io_uring_submit(&ring);
    pthread_t t;
    pthread_create(&t, NULL, canceller, &s);
    int64_t back = 0;
    int released = 0;
    while (!released) {
        struct io_uring_cqe *cqe;
        io_uring_wait_cqe(&ring, &cqe);
        int k = cancel_uring_cqe(&ring, cqe);
        if (k == 0) {
            if (cqe->res != -ECANCELED)
                fail("read not cancelled");
            back = lat_now();
            cancel_uring_untie(&op);
            released = cancel_uring_free(scope) == 0;
        }
        released |= k == 2;
        io_uring_cqe_seen(&ring, cqe);
    }
    pthread_join(t, NULL);
    cancel_source_free(s.src);
    return back - s.cancelled_at;
}

static int64_t one_raw(void)
{
    struct sample s = {NULL, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), delay(), 0};
    io_uring_prep_poll_add(sqe_for(POLL_UD), s.efd, POLLIN);
    io_uring_prep_read(sqe_for(READ_UD), pipe_fd[0], buf, sizeof buf, 0);
    io_uring_submit(&ring);
    pthread_t t;
    pthread_create(&t, NULL, canceller, &s);
    int64_t back = 0;
    int pending = 3; /* poll, read, cancel */
    while (pending > 0) {
        struct io_uring_cqe *cqe;
        io_uring_wait_cqe(&ring, &cqe);
        uint64_t ud = cqe->user_data;
        int res = cqe->res;
        io_uring_cqe_seen(&ring, cqe);
        pending--;
        if (ud == POLL_UD) {
            struct io_uring_sqe *sqe = sqe_for(CANCEL_UD);
            io_uring_prep_rw(IORING_OP_ASYNC_CANCEL, sqe, -1, NULL, 0, 0);
            sqe->addr = READ_UD;
            io_uring_submit(&ring);
        } else if (ud == READ_UD) {
            if (res != -ECANCELED)
                fail("read not cancelled");
            back = lat_now();
        }
    }
    pthread_join(t, NULL);
    close(s.efd);
    return back - s.cancelled_at;
}

/* The kernel's part: cancel submitted on the loop's own thread. */
static int64_t one_kernel(void)
{
    io_uring_prep_read(sqe_for(READ_UD), pipe_fd[0], buf, sizeof buf, 0);
    io_uring_submit(&ring);
    lat_sleep_us(delay());
    int64_t t0 = lat_now(), back = 0;
    struct io_uring_sqe *sqe = sqe_for(CANCEL_UD);
    io_uring_prep_rw(IORING_OP_ASYNC_CANCEL, sqe, -1, NULL, 0, 0);
    sqe->addr = READ_UD;
    io_uring_submit(&ring);
    for (int pending = 2; pending > 0; pending--) {
        struct io_uring_cqe *cqe;
        io_uring_wait_cqe(&ring, &cqe);
        if (cqe->user_data == READ_UD) {
            if (cqe->res != -ECANCELED)
                fail("read not cancelled");
            back = lat_now();
        }
        io_uring_cqe_seen(&ring, cqe);
    }
    return back - t0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 500;
    if (io_uring_queue_init(64, &ring, 0) != 0 || pipe2(pipe_fd, O_CLOEXEC) != 0) {
        fprintf(stderr, "io_uring unavailable\n");
        return 1;
    }
    lat ours = {0}, raw = {0}, kernel = {0};
    for (int i = 0; i < n; i++) {
        lat_add(&ours, one_ours());
        lat_add(&raw, one_raw());
        lat_add(&kernel, one_kernel());
    }
    printf("io_uring, %d samples\n", n);
    lat_header("cancel to -ECANCELED reaped");
    lat_row("cancel_uring (token on the ring)", &ours, "eventfd poll + ASYNC_CANCEL", &raw);
    lat_row("cancel_uring (token on the ring)", &ours, "ASYNC_CANCEL, same thread", &kernel);
    io_uring_queue_exit(&ring);
    return 0;
}
