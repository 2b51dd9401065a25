/*
 * An event loop that stops on cancellation: the token's descriptor
 * (cancel_token_fd) is one more descriptor in the epoll set.
 *
 * The loop echoes lines typed on standard input and prints a tick every
 * 250 ms, until the source is cancelled: by its 2-second deadline here, or
 * by any other thread calling cancel_source_cancel. Usage: epoll_loop [ms]
 */
#include <cancel.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc > 1 && argv[1][0] == '-') {
        printf("usage: %s [milliseconds before the deadline cancels the loop (default 2000)]\n", argv[0]);
        return 0;
    }
    int64_t ms = argc > 1 ? atoll(argv[1]) : 2000;

    /* The source whose cancellation ends the loop: a deadline of its own. */
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, ms * 1000000, "epoll loop");
    cancel_token tok = cancel_source_token(src);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tick = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    struct itimerspec every = {{0, 250000000}, {0, 250000000}};
    timerfd_settime(tick, 0, &every, NULL);

    /* The token's descriptor: readable once the token is cancelled. It
     * belongs to the library: never read, write or close it. */
    int cfd = cancel_token_fd(tok);
    if (ep < 0 || tick < 0 || cfd < 0) {
        perror("setup");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = tick;
    epoll_ctl(ep, EPOLL_CTL_ADD, tick, &ev);
    ev.data.fd = STDIN_FILENO;
    epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev); /* fails harmlessly if stdin is a file */
    ev.data.fd = cfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);

    int ticks = 0;
    for (bool running = true; running;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, -1);
        for (int i = 0; i < n; i++) {
            int fd = got[i].data.fd;
            if (fd == cfd) {
                /* Readable also when a source is freed uncancelled: ask. */
                if (cancel_token_is_requested(tok))
                    running = false;
            } else if (fd == tick) {
                uint64_t expirations;
                if (read(tick, &expirations, sizeof expirations) > 0)
                    printf("tick %d\n", ++ticks);
            } else {
                char line[256];
                ssize_t k = read(STDIN_FILENO, line, sizeof line);
                if (k <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL); /* EOF: stop watching */
                } else {
                    printf("you typed: %.*s", (int)k, line);
                }
            }
        }
        fflush(stdout);
    }

    cancel_cause cause = cancel_token_cause(tok);
    printf("stopped after %d ticks: %s (origin: %s)\n", ticks, cancel_reason_name(cause.reason),
           cause.origin ? cause.origin : "-");
    close(tick);
    close(ep);
    cancel_source_free(src); /* also releases the token's descriptor */
    return 0;
}
