/*
 * A small HTTP/1.1 server for the curl test and benchmark: its own thread,
 * plain sockets, 127.0.0.1 only, keep-alive. Paths:
 *   /fast          "hello" at once
 *   /stall         headers announcing 1 MB, 16 bytes of body, then nothing
 *                  more until the client goes away
 *   /slow/<n>      n bytes of body, one every 5 ms
 * It counts connections accepted and closed by the client, so a test can
 * wait for "the cancelled transfer's connection was closed".
 */
#ifndef CANCEL_TEST_HTTP_SERVER_H
#define CANCEL_TEST_HTTP_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HTTP_MAX_CONNS 64

struct http_conn {
    int fd;
    char req[2048];
    size_t req_len;
    int slow_left;        /* /slow bytes still to send */
    int64_t next_send_ns; /* when the next /slow byte goes */
};

typedef struct http_server {
    int listen_fd;
    int stop_pipe[2];
    int port;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int accepted; /* under mu */
    int closed;   /* under mu: connections the client closed */
    int stalled;  /* under mu: /stall responses sent up to the stall */
    struct http_conn conns[HTTP_MAX_CONNS];
} http_server;

static inline int64_t http_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void http_count(http_server *s, int *field)
{
    pthread_mutex_lock(&s->mu);
    (*field)++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Waits until *field >= n. */
static inline void http_wait_count(http_server *s, int *field, int n)
{
    pthread_mutex_lock(&s->mu);
    while (*field < n)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static inline int http_get(http_server *s, int *field)
{
    pthread_mutex_lock(&s->mu);
    int v = *field;
    pthread_mutex_unlock(&s->mu);
    return v;
}

static inline void http_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {fd, POLLOUT, 0};
                poll(&pf, 1, 100);
                continue;
            }
            return; /* the client went away; its EOF is counted on read */
        }
        p += w;
        n -= (size_t)w;
    }
}

static inline void http_respond(http_server *s, struct http_conn *c, const char *path)
{
    char head[256];
    if (strcmp(path, "/fast") == 0) {
        static const char r[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        http_send_all(c->fd, r, sizeof r - 1);
    } else if (strcmp(path, "/stall") == 0) {
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        http_send_all(c->fd, head, (size_t)n);
        http_send_all(c->fd, "0123456789abcdef", 16);
        http_count(s, &s->stalled);
    } else if (strncmp(path, "/slow/", 6) == 0) {
        int len = atoi(path + 6);
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len);
        http_send_all(c->fd, head, (size_t)n);
        c->slow_left = len;
        c->next_send_ns = http_now_ns();
    } else {
        static const char r[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        http_send_all(c->fd, r, sizeof r - 1);
    }
}

static inline void http_close(http_server *s, struct http_conn *c)
{
    close(c->fd);
    c->fd = -1;
    http_count(s, &s->closed);
}

/* Reads what the client sent; answers complete requests. */
static inline void http_readable(http_server *s, struct http_conn *c)
{
    ssize_t r = recv(c->fd, c->req + c->req_len, sizeof c->req - 1 - c->req_len, 0);
    if (r <= 0) {
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            return;
        http_close(s, c);
        return;
    }
    c->req_len += (size_t)r;
    c->req[c->req_len] = '\0';
    char *end;
    while ((end = strstr(c->req, "\r\n\r\n")) != NULL) {
        char path[256] = "";
        sscanf(c->req, "GET %255s", path);
        http_respond(s, c, path);
        size_t used = (size_t)(end + 4 - c->req);
        memmove(c->req, end + 4, c->req_len - used + 1);
        c->req_len -= used;
    }
}

static inline void *http_main(void *arg)
{
    http_server *s = arg;
    for (;;) {
        struct pollfd pf[HTTP_MAX_CONNS + 2];
        int idx[HTTP_MAX_CONNS + 2];
        int n = 0, timeout = -1;
        pf[n] = (struct pollfd){s->stop_pipe[0], POLLIN, 0};
        idx[n++] = -1;
        pf[n] = (struct pollfd){s->listen_fd, POLLIN, 0};
        idx[n++] = -2;
        int64_t now = http_now_ns();
        for (int i = 0; i < HTTP_MAX_CONNS; i++) {
            struct http_conn *c = &s->conns[i];
            if (c->fd < 0)
                continue;
            if (c->slow_left > 0) {
                if (now >= c->next_send_ns) {
                    http_send_all(c->fd, "s", 1);
                    c->slow_left--;
                    c->next_send_ns = now + 5 * 1000 * 1000;
                }
                if (c->slow_left > 0) {
                    int ms = (int)((c->next_send_ns - now + 999999) / 1000000);
                    if (timeout < 0 || ms < timeout)
                        timeout = ms;
                }
            }
            pf[n] = (struct pollfd){c->fd, POLLIN, 0};
            idx[n++] = i;
        }
        if (poll(pf, (nfds_t)n, timeout) < 0)
            continue;
        if (pf[0].revents)
            break;
        for (int k = 2; k < n; k++)
            if (pf[k].revents)
                http_readable(s, &s->conns[idx[k]]);
        if (pf[1].revents) {
            int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) {
                int i = 0;
                while (i < HTTP_MAX_CONNS && s->conns[i].fd >= 0)
                    i++;
                if (i == HTTP_MAX_CONNS) {
                    close(fd);
                } else {
                    memset(&s->conns[i], 0, sizeof s->conns[i]);
                    s->conns[i].fd = fd;
                    http_count(s, &s->accepted);
                }
            }
        }
    }
    for (int i = 0; i < HTTP_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0)
            close(s->conns[i].fd);
    return NULL;
}

/* Starts the server; returns 0, or -1 if sockets are unavailable. */
static inline int http_start(http_server *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    for (int i = 0; i < HTTP_MAX_CONNS; i++)
        s->conns[i].fd = -1;
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->listen_fd, 64) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &len) != 0 || pipe(s->stop_pipe) != 0) {
        close(s->listen_fd);
        return -1;
    }
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->thread, NULL, http_main, s) != 0)
        return -1;
    return 0;
}

static inline void http_stop(http_server *s)
{
    (void)!write(s->stop_pipe[1], "x", 1);
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}

static inline void http_url(const http_server *s, const char *path, char *out, size_t size)
{
    snprintf(out, size, "http://127.0.0.1:%d%s", s->port, path);
}

#endif
