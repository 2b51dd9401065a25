/* Reads standard input with io_uring until end of file; Ctrl-C or 5 s of
 * silence cancels the pending read in the kernel, with no extra thread.
 *   uring_read < /dev/tty          (or: sleep 10 | uring_read) */
#define _GNU_SOURCE /* liburing.h needs POSIX types (sigset_t) */
#include <cancel/uring.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static cancel_source *interrupted;                  /* lives as long as the handler */

static void on_sigint(int signo) {
    cancel_source_cancel_signal(interrupted, signo);
}

int main(void) {
    struct io_uring ring;
    int e = io_uring_queue_init(8, &ring, 0);
    if (e < 0) {
        fprintf(stderr, "io_uring: %s\n", strerror(-e));
        return 1;
    }
    interrupted = cancel_source_new();
    signal(SIGINT, on_sigint);
    char buf[4096];
    long total = 0;
    for (;;) {
        /* Each read: Ctrl-C, or a fresh deadline (5 s of silence). */
        cancel_source *src = cancel_source_new_child(cancel_source_token(interrupted),
                                                     5LL * 1000 * 1000 * 1000, "stdin");
        cancel_uring *scope = cancel_uring_new(&ring, cancel_source_token(src));
        if (scope == NULL) {
            perror("cancel_uring_new");
            return 1;
        }
        cancel_uring_op op = CANCEL_URING_OP_INIT;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_read(sqe, 0, buf, sizeof buf, (__u64)-1);
        io_uring_sqe_set_data64(sqe, 1);
        int res = -ECANCELED;
        if (cancel_uring_tie(scope, sqe, &op) == 0) {
            io_uring_submit(&ring);
            for (;;) {                               /* the program's completion loop */
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(&ring, &cqe) != 0)
                    continue;                        /* -EINTR: a signal came */
                int mine = cancel_uring_cqe(&ring, cqe) == 0;
                if (mine)
                    res = cqe->res;
                io_uring_cqe_seen(&ring, cqe);
                if (mine)
                    break;
            }
            cancel_uring_untie(&op);
        }
        if (cancel_uring_free(scope) == EINPROGRESS) /* its poll is still armed: reap it */
            for (int released = 0; !released;) {
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(&ring, &cqe) != 0)
                    continue;
                released = cancel_uring_cqe(&ring, cqe) == 2;
                io_uring_cqe_seen(&ring, cqe);
            }
        cancel_token tok = cancel_source_token(src);
        if (res == -ECANCELED)
            fprintf(stderr, "read cancelled: %s\n", cancel_reason_name(cancel_token_cause(tok).reason));
        cancel_source_free(src);
        if (res <= 0)
            break;
        total += res;
    }
    printf("%ld bytes\n", total);
    signal(SIGINT, SIG_DFL);
    cancel_source_free(interrupted);
    io_uring_queue_exit(&ring);
    return 0;
}
