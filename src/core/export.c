/*
 * A token that crosses a process boundary (<cancel/process.h>):
 * cancel_token_export_fd in the exporting process, cancel_source_new_from_fd
 * and cancel_source_new_inherited in the receiving one.
 *
 * The wire is an AF_UNIX SOCK_SEQPACKET socket pair: records keep their
 * boundaries, the receiver sees end-of-file when every copy of the
 * exporter's end is closed (the exporter died, or exited, and every child it
 * forked without exec too, since they inherit the end), and no record can
 * raise SIGPIPE (sent with MSG_NOSIGNAL). Records, little framing:
 *   HELLO  magic, version, the deadline at export (CLOCK_MONOTONIC, or none)
 *          and the name of the source whose deadline it is
 *   CAUSE  reason, code, message, origin    the token was cancelled
 *   NEVER                                   the source was freed uncancelled
 * Processes are assumed to share one time namespace (CLOCK_MONOTONIC).
 *
 * Both sides are served by the library thread, which watches descriptors
 * with epoll (worker.c), so no thread of their own and no system call on any
 * hot path. The exporter watches a duplicate of the token's eventfd (readable
 * once cancelled or freed uncancelled) and its end of the socket (hung up
 * once the receiver closed it); the receiver watches its end of the socket
 * and a duplicate of the new source's own eventfd (once that source is
 * cancelled, by the wire or locally, or freed, nothing more is needed). Each
 * side's handlers run on the library thread only, one at a time, and the
 * first that settles the matter tears the pair of watches down; so nothing
 * here needs a lock of its own.
 */
#include "clock.h"
#include "cancel/process.h"
#include "ref.h"
#include "request.h"
#include "timer.h"
#include "worker.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { REC_HELLO = 1, REC_CAUSE = 2, REC_NEVER = 3, VERSION = 1, TEXT_MAX = 2000 };
static const char magic[4] = {'C', 'N', 'C', 'L'};

/* Records are packed by hand (little-endian, fixed offsets), so both sides
 * need no struct layout in common beyond this file. */
struct record {
    unsigned char b[4 + 1 + 1 + 8 + 4 + 2 + 2 + 2 * TEXT_MAX]; /* the largest: CAUSE */
    size_t n;
};
static void put(struct record *r, const void *p, size_t n)
{
    memcpy(r->b + r->n, p, n);
    r->n += n;
}
static void put_u64(struct record *r, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        r->b[r->n++] = (unsigned char)(v >> (8 * i));
}
static void put_u32(struct record *r, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        r->b[r->n++] = (unsigned char)(v >> (8 * i));
}
static void put_u16(struct record *r, uint16_t v)
{
    r->b[r->n++] = (unsigned char)v;
    r->b[r->n++] = (unsigned char)(v >> 8);
}
static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static void begin(struct record *r, int type)
{
    r->n = 0;
    put(r, magic, 4);
    r->b[r->n++] = VERSION;
    r->b[r->n++] = (unsigned char)type;
}
static int send_record(int sock, const struct record *r)
{
    ssize_t n;
    do
        n = send(sock, r->b, r->n, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)r->n ? 0 : errno ? errno : EPROTO;
}

/* Times cross the boundary on CLOCK_MONOTONIC: a manual clock on either
 * side converts through the time remaining. */
static int64_t to_monotonic(int64_t local)
{
    return cancel_clock_is_manual() ? cancel__add_sat(cancel__clock_ns(), local - cancel__now()) : local;
}
static int64_t from_monotonic(int64_t mono)
{
    return cancel_clock_is_manual() ? cancel__add_sat(cancel__now(), mono - cancel__clock_ns()) : mono;
}

static void cause_record(struct record *r, cancel_token tok)
{
    cancel_cause c = cancel_token_cause(tok);
    size_t ml = c.message ? strnlen(c.message, TEXT_MAX) : 0;
    size_t ol = c.origin ? strnlen(c.origin, TEXT_MAX) : 0;
    begin(r, REC_CAUSE);
    r->b[r->n++] = (unsigned char)c.reason;
    put_u32(r, (uint32_t)c.code);
    /* 0xffff: none (NULL), as opposed to an empty string */
    put_u16(r, c.message ? (uint16_t)ml : 0xffff);
    put_u16(r, c.origin ? (uint16_t)ol : 0xffff);
    put(r, c.message ? c.message : "", ml);
    put(r, c.origin ? c.origin : "", ol);
}

/* ---- the exporting side ---- */

struct export {
    struct cancel__watch on_token, on_peer;
    cancel_token tok; /* retained */
};

static void export_finish(struct export *e)
{
    cancel__watch_remove(&e->on_token);
    cancel__watch_remove(&e->on_peer);
    cancel__fd_close(e->on_token.fd);
    cancel__fd_close(e->on_peer.fd);
    cancel_token_release(e->tok);
    free(e);
}

static void export_token_ready(struct cancel__watch *w)
{
    struct export *e = (struct export *)((char *)w - offsetof(struct export, on_token));
    struct record r;
    if (cancel_token_is_requested(e->tok))
        cause_record(&r, e->tok);
    else
        begin(&r, REC_NEVER); /* freed uncancelled: it never will be */
    (void)send_record(e->on_peer.fd, &r); /* a receiver already gone needs nothing */
    export_finish(e);
}

static void export_peer_ready(struct cancel__watch *w)
{
    /* The receiver sends nothing: readable means it closed its end. */
    export_finish((struct export *)((char *)w - offsetof(struct export, on_peer)));
}

int cancel_token_export_fd(cancel_token tok)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    int err = 0;
    struct record r;
    begin(&r, REC_HELLO);
    char *dorg = NULL;
    int64_t d = cancel__token_deadline_origin(tok, &dorg);
    put_u64(&r, (uint64_t)(d == CANCEL_INFINITE ? -1 : to_monotonic(d)));
    size_t dl = dorg ? strnlen(dorg, TEXT_MAX) : 0;
    put_u16(&r, dorg ? (uint16_t)dl : 0xffff);
    put(&r, dorg ? dorg : "", dl);
    free(dorg);
    if ((err = send_record(sv[0], &r)) != 0)
        goto fail;
    if (cancel_token_is_requested(tok) || !cancel_token_can_be_canceled(tok)) {
        /* Decided already: say so, and the exporter's part is done. */
        if (cancel_token_is_requested(tok))
            cause_record(&r, tok);
        else
            begin(&r, REC_NEVER);
        if ((err = send_record(sv[0], &r)) != 0)
            goto fail;
        cancel__fd_close(sv[0]);
        return sv[1];
    }
    struct export *e = malloc(sizeof *e);
    int efd = cancel_token_fd(tok);
    int dfd = efd >= 0 ? fcntl(efd, F_DUPFD_CLOEXEC, 0) : -1;
    if (!e || dfd < 0) {
        err = !e ? ENOMEM : errno;
        free(e);
        if (dfd >= 0)
            cancel__fd_close(dfd);
        goto fail;
    }
    e->tok = cancel_token_retain(tok);
    e->on_token = (struct cancel__watch){dfd, export_token_ready, NULL};
    e->on_peer = (struct cancel__watch){sv[0], export_peer_ready, NULL};
    /* The peer cannot hang up before we return its end; the token may fire
     * at once, and its handler tears down both watches: add it last. */
    if ((err = cancel__watch_add(&e->on_peer)) != 0) {
        cancel_token_release(e->tok);
        cancel__fd_close(dfd);
        free(e);
        goto fail;
    }
    if ((err = cancel__watch_add(&e->on_token)) != 0) {
        /* The peer's watch cannot have fired (we still hold the other end),
         * so it may be removed from here. */
        cancel__watch_remove(&e->on_peer);
        cancel_token_release(e->tok);
        cancel__fd_close(dfd);
        free(e);
        goto fail;
    }
    return sv[1];
fail:
    cancel__fd_close(sv[0]);
    cancel__fd_close(sv[1]);
    errno = err;
    return -1;
}

/* ---- the receiving side ---- */

struct import {
    struct cancel__watch on_wire, on_source;
    struct cancel_source *src; /* the user's source, kept by `tok` */
    cancel_token tok;          /* retained */
};

static void import_finish(struct import *m)
{
    cancel__watch_remove(&m->on_wire);
    cancel__watch_remove(&m->on_source);
    cancel__fd_close(m->on_wire.fd);
    cancel__fd_close(m->on_source.fd);
    cancel_token_release(m->tok);
    free(m);
}

/* Reads one record and acts on it. Returns true once the matter is settled
 * (cancelled, never, or the exporters are gone), false to keep waiting. */
static bool import_read(struct cancel_source *src, int sock)
{
    unsigned char b[sizeof(struct record)];
    ssize_t n;
    do
        n = recv(sock, b, sizeof b, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return false;
    if (n > 0 && n >= 6 && memcmp(b, magic, 4) == 0 && b[4] == VERSION) {
        if (b[5] == REC_NEVER)
            return true;
        if (b[5] == REC_CAUSE && n >= 6 + 1 + 4 + 2 + 2) {
            cancel_reason reason = (cancel_reason)b[6];
            int code = (int)get_u32(b + 7);
            uint16_t ml = get_u16(b + 11), ol = get_u16(b + 13);
            size_t mlen = ml == 0xffff ? 0 : ml, olen = ol == 0xffff ? 0 : ol;
            /* From another process: every length is checked before use. */
            if (reason >= CANCEL_REASON_REQUESTED && reason <= CANCEL_REASON_SIGNAL && mlen <= TEXT_MAX &&
                olen <= TEXT_MAX && 15 + mlen + olen <= (size_t)n) {
                char msg[TEXT_MAX + 1], org[TEXT_MAX + 1];
                memcpy(msg, b + 15, mlen);
                msg[mlen] = 0;
                memcpy(org, b + 15 + mlen, olen);
                org[olen] = 0;
                cancel__cancel_with_cause(src, reason, code, ml == 0xffff ? NULL : msg,
                                          ol == 0xffff ? NULL : org);
                return true;
            }
        }
    }
    /* End of file, an error, or a record we cannot read: every exporter is
     * gone (or broken); no orphan keeps working. */
    cancel__cancel_with_cause(src, CANCEL_REASON_FAILED, EPIPE, "exporting process gone", NULL);
    return true;
}

static void import_wire_ready(struct cancel__watch *w)
{
    struct import *m = (struct import *)((char *)w - offsetof(struct import, on_wire));
    if (import_read(m->src, m->on_wire.fd))
        import_finish(m);
}

static void import_source_ready(struct cancel__watch *w)
{
    /* Cancelled (by the wire or locally) or freed by its owner: done. */
    import_finish((struct import *)((char *)w - offsetof(struct import, on_source)));
}

cancel_source *cancel_source_new_from_fd(int fd)
{
    int err = 0, saved = errno;
    struct cancel_source *s = NULL;
    int flags = fd < 0 ? -1 : fcntl(fd, F_GETFD);
    if (flags < 0) {
        errno = EBADF;
        return NULL;
    }
    /* Ours now: not to be inherited by this process's own children, whose
     * copies would keep the exporter from seeing us go. */
    if (!(flags & FD_CLOEXEC))
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    unsigned char b[sizeof(struct record)];
    ssize_t n;
    do
        n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    /* An exported descriptor has its HELLO waiting: anything else (no
     * record, not a socket, not ours) is not one. */
    uint16_t dl = n >= 16 ? get_u16(b + 14) : 0;
    size_t dlen = dl == 0xffff ? 0 : dl;
    if (n < 16 || memcmp(b, magic, 4) != 0 || b[4] != VERSION || b[5] != REC_HELLO || dlen > TEXT_MAX ||
        16 + dlen > (size_t)n) {
        err = EPROTO;
        goto fail;
    }
    int64_t mono = (int64_t)get_u64(b + 6);
    if (!(s = cancel__source_create())) {
        err = ENOMEM;
        goto fail;
    }
    if (mono >= 0 && dl != 0xffff) {
        /* Whose deadline it is: the origin of a timeout that fires here.
         * Without memory, only that name is lost. */
        struct cancel__extra *ex = cancel__extra_get(s);
        if (ex)
            ex->deadline_origin = strndup((const char *)b + 16, dlen);
    }
    /* A cause sent already (exported cancelled) is applied before we return. */
    if (recv(fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK) > 0) {
        (void)import_read(s, fd);
        cancel__fd_close(fd);
        errno = saved;
        return s;
    }
    struct import *m = malloc(sizeof *m);
    int efd = cancel_token_fd(cancel_source_token(s));
    int dfd = efd >= 0 ? fcntl(efd, F_DUPFD_CLOEXEC, 0) : -1;
    if (!m || dfd < 0) {
        err = !m ? ENOMEM : errno;
        free(m);
        if (dfd >= 0)
            cancel__fd_close(dfd);
        goto fail;
    }
    m->src = s;
    m->tok = cancel_token_retain(cancel_source_token(s));
    m->on_wire = (struct cancel__watch){fd, import_wire_ready, NULL};
    m->on_source = (struct cancel__watch){dfd, import_source_ready, NULL};
    /* Nothing can cancel s before both watches are in place (its deadline
     * is armed last), so neither handler can tear m down under us. */
    if ((err = cancel__watch_add(&m->on_source)) != 0) {
        cancel_token_release(m->tok);
        cancel__fd_close(dfd);
        free(m);
        goto fail;
    }
    if ((err = cancel__watch_add(&m->on_wire)) != 0) {
        /* Only on_source is watched: freeing the source below fires it, and
         * its handler tears everything down (closing fd too). */
        cancel_source_free(s);
        errno = err;
        return NULL;
    }
    if (mono >= 0) {
        bool wake;
        int64_t at = from_monotonic(mono);
        if (at == CANCEL_INFINITE)
            at = CANCEL_INFINITE - 1; /* a time, not the "none" sentinel */
        if ((err = cancel__timer_arm(s, at, &wake)) != 0) {
            /* Both watched: freeing s makes on_source tear it all down. */
            cancel_source_free(s);
            errno = err;
            return NULL;
        }
        cancel__worker_filed(wake);
    }
    errno = saved;
    return s;
fail:
    if (s)
        cancel_source_free(s);
    cancel__fd_close(fd);
    errno = err;
    return NULL;
}

cancel_source *cancel_source_new_inherited(void)
{
    const char *v = getenv("CANCEL_TOKEN_FD");
    if (!v)
        return cancel_source_new();
    char *end;
    errno = 0;
    long fd = strtol(v, &end, 10);
    bool valid = errno == 0 && end != v && *end == 0 && fd >= 0 && fd <= 0x7fffffff;
    unsetenv("CANCEL_TOKEN_FD");
    if (!valid) {
        errno = EBADF;
        return NULL;
    }
    return cancel_source_new_from_fd((int)fd); /* EBADF, EPROTO or ENOMEM */
}
