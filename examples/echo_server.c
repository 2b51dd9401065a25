/*
 * A thread-per-connection echo server that shuts down cleanly on Ctrl+C.
 *
 * One source, `shutdown`, is cancelled by SIGINT or SIGTERM
 * (cancel_signal_watch_new). Its token is handed to the accept loop and to
 * every connection: each one is blocked in cancel_io_accept or
 * cancel_io_read, and each returns ECANCELED at once. A second Ctrl+C while
 * shutting down quits immediately (CANCEL_SIGNAL_FORCE_SECOND).
 *
 * Usage: echo_server [port]   (127.0.0.1; port 0 or none: the kernel picks
 * one, printed at start). Try: nc 127.0.0.1 <port>
 */
#include <cancel.h>
#include <cancel/io.h>
#include <cancel/signal.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static cancel_token shutdown_tok;

/* Connections still running, so that main can wait for them. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_gone = PTHREAD_COND_INITIALIZER;
static int live;

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    ssize_t n;
    /* Echo until the client leaves, an error, or shutdown. */
    while ((n = cancel_io_read(shutdown_tok, fd, buf, sizeof buf)) > 0)
        if (cancel_io_write_all(shutdown_tok, fd, buf, (size_t)n, NULL) != 0)
            break;
    if (n < 0 && errno == ECANCELED)
        cancel_io_write_all(CANCEL_TOKEN_NONE, fd, "server shutting down\n", 21, NULL);
    close(fd);
    pthread_mutex_lock(&mu);
    if (--live == 0)
        pthread_cond_signal(&all_gone);
    pthread_mutex_unlock(&mu);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))) {
        printf("usage: %s [port]\n"
               "Echoes what clients send, on 127.0.0.1:port (0 or none: any free port).\n"
               "Ctrl+C shuts down cleanly; a second Ctrl+C quits at once.\n",
               argv[0]);
        return argc == 2 ? 0 : 2;
    }
    int port = argc == 2 ? atoi(argv[1]) : 0;

    /* A peer that disconnects mid-write must not kill the server: like
     * write(2), the library raises SIGPIPE and never changes its
     * disposition, so this is the program's choice to make. */
    signal(SIGPIPE, SIG_IGN);

    cancel_source *shutdown = cancel_source_new();
    shutdown_tok = cancel_source_token(shutdown);
    cancel_signal_watch *watch;
    int sigs[] = {SIGINT, SIGTERM};
    int err = cancel_signal_watch_new(shutdown, sigs, 2, CANCEL_SIGNAL_FORCE_SECOND, &watch);
    if (err) {
        fprintf(stderr, "signal watch: %s\n", strerror(err));
        return 1;
    }

    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 64) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) != 0) {
        perror("listen");
        return 1;
    }
    printf("echo server on 127.0.0.1:%d (Ctrl+C to stop)\n", ntohs(a.sin_port));
    fflush(stdout);

    for (;;) {
        int fd = cancel_io_accept(shutdown_tok, l, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == ECANCELED)
                break; /* shutdown */
            perror("accept");
            cancel_sleep(shutdown_tok, 100000000); /* out of descriptors? breathe */
            continue;
        }
        pthread_t t;
        pthread_mutex_lock(&mu);
        live++;
        pthread_mutex_unlock(&mu);
        if (pthread_create(&t, NULL, serve, (void *)(intptr_t)fd) != 0) {
            close(fd);
            pthread_mutex_lock(&mu);
            live--;
            pthread_mutex_unlock(&mu);
            continue;
        }
        pthread_detach(t);
    }

    cancel_cause cause = cancel_token_cause(shutdown_tok);
    printf("shutting down: %s (signal %d); waiting for connections\n", cancel_reason_name(cause.reason),
           cause.code);
    close(l);
    pthread_mutex_lock(&mu);
    while (live > 0)
        pthread_cond_wait(&all_gone, &mu);
    pthread_mutex_unlock(&mu);
    cancel_signal_watch_free(watch); /* before the source it cancels */
    cancel_source_free(shutdown);
    printf("bye\n");
    return 0;
}
