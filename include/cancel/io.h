/*
 * <cancel/io.h>: sleep, poll and descriptor I/O that wake on cancellation.
 *
 * Each call blocks like its POSIX namesake but takes a token first, and
 * returns early with ECANCELED once the token is cancelled. A thread-per-
 * connection server hands every connection its shutdown token:
 *
 *     char buf[4096];
 *     ssize_t n;
 *     while ((n = cancel_io_read(tok, conn, buf, sizeof buf)) > 0)
 *         if (cancel_io_write_all(tok, conn, buf, (size_t)n, NULL) != 0)
 *             break;
 *     if (n < 0 && errno == ECANCELED)
 *         ...shutting down (cancel_token_cause(tok) says why)...
 *
 * Conventions (the error rule of <cancel.h>):
 *  - Calls that mirror POSIX (cancel_io_read, _write, _recv, _send, _poll,
 *    _accept, _connect) return like it: -1 with errno on failure, ECANCELED
 *    when the token ended the wait. The others (cancel_sleep,
 *    cancel_io_read_full, cancel_io_write_all) return 0 or an error number
 *    and leave errno alone. Every call leaves errno alone when it succeeds.
 *  - A token already cancelled makes every call return ECANCELED at once,
 *    before any other check and without touching the descriptor.
 *  - Timeouts are nanoseconds on cancel_now()'s clock (the manual clock of a
 *    test governs them too). 0 means "try once", CANCEL_INFINITE waits
 *    forever, another negative value is EINVAL. Calls without a timeout
 *    argument time out through a deadline on the token
 *    (cancel_source_new_child, cancel_source_cancel_after): they return
 *    ECANCELED, and the token's cause says TIMEOUT.
 *  - A token whose source is freed without being cancelled while a call
 *    waits (the caller holds a retained token) simply stops counting: the
 *    call keeps waiting for its descriptor or timeout, never ECANCELED.
 *  - EINTR is retried inside every call: a signal handler never makes a call
 *    return early (SA_RESTART or not).
 *  - A zero-length read or write returns 0 at once (recv and send pass it to
 *    the kernel: an empty datagram is a datagram); a NULL buffer with a
 *    non-zero length is EFAULT. Invalid descriptors are reported by the
 *    kernel (EBADF, ENOTSOCK...) and passed through.
 *  - Thread-safety: every call is thread-safe; several threads may use one
 *    token, and one descriptor, at once. None is async-signal-safe. A call
 *    that may wait should not be made from a cancellation callback (it would
 *    hold up the canceller); with a try-once timeout it may.
 *  - No call leaves anything behind: no registration, no descriptor, no
 *    thread (the descriptors a call holds while it runs, below, are closed
 *    before it returns). Beyond the token's descriptor (below), nothing is allocated
 *    except by cancel_io_poll for more than 15 descriptors, and by timeouts
 *    on the manual clock (a child source per call).
 *
 * How a call waits. It first tries the transfer without blocking; when the
 * data (or room, or connection) is already there, that is the only system
 * call, and nothing is written to memory the token shares with other
 * threads, so a thousand connections listening to one shutdown token do not
 * contend. Otherwise it waits with ppoll(2) on the descriptor and on the
 * token's descriptor (cancel_token_fd: one eventfd per source, shared by
 * every call on that token), then tries again. After a call on a descriptor
 * had to wait, the next call of the same function on it from the same
 * thread polls first instead, which saves the failed try for request/response
 * traffic; a call that fills its whole buffer switches back. (Its one visible
 * effect: if that descriptor number was closed and reused meanwhile for a
 * file on which the call fails whatever the readiness, such as a read of a
 * descriptor open for writing only, the error comes once the descriptor polls
 * ready, or with ECANCELED, rather than at once.)
 *
 * The try must not block even if another thread took the data between the
 * wake-up and the transfer (two readers of one pipe, two acceptors of one
 * listener), so it uses, per kind of descriptor:
 *  - cancel_io_recv, cancel_io_send: MSG_DONTWAIT.
 *  - cancel_io_read, cancel_io_write: preadv2/pwritev2 with RWF_NOWAIT
 *    (sockets, pipes, eventfd and timerfd reads, most character devices).
 *    Where the kernel refuses it (EOPNOTSUPP), by the file's type:
 *  - regular files, block devices (and directories), which are always
 *    "ready": the plain read or write, as read(2) and write(2) would make
 *    it. A disk access is not interruptible, and O_NONBLOCK means nothing
 *    to these files. A write to a file costs one fstat more than write(2).
 *  - ttys (pty masters excepted) and FIFOs: the file is opened again,
 *    non-blocking, through /proc/thread-self/fd for the duration of the
 *    call, and the transfer made on that private open file description.
 *    The flags of yours, which other processes share (a terminal's with the
 *    shell and the other jobs), are never touched: a background job stopped
 *    by SIGTTIN while it reads the terminal leaves it as it was.
 *  - cancel_io_accept and cancel_io_connect on Linux, with a token that
 *    can be cancelled: no try at all. The one accept or connect is handed
 *    to the kernel as an io_uring operation on a ring the calling thread
 *    makes on its first such call and keeps until it exits (one descriptor
 *    per thread, close-on-exec; a child of fork makes its own); it waits
 *    there, and cancellation cancels it. One system call when nothing
 *    cancels it, and the descriptor's flags are never touched, blocking or
 *    not, so a blocking listener shared by pre-forked workers is safe. An
 *    accept that completed although the cancel raced it returns the new
 *    descriptor (no connection is lost). Where no ring can be had (no
 *    io_uring, refused by seccomp or kernel.io_uring_disabled: this is
 *    remembered for the process), with CANCEL_TOKEN_NONE or a token that
 *    can never be cancelled, and for Unix-domain connects, these calls
 *    fall into the next group.
 *  - the rest, and cancel_io_accept and cancel_io_connect without a ring
 *    (above), which have no per-call flag at all (sockets, pty masters,
 *    eventfd writes, other character devices, and a tty or FIFO the system
 *    refused to open again:
 *    no permission on the device, no /proc, no descriptor left): a
 *    descriptor already non-blocking (SOCK_NONBLOCK, O_NONBLOCK) is used as
 *    it is and never switched. A blocking one is waited for untouched; then
 *    O_NONBLOCK is set on its open file description for the one transfer
 *    system call, and the flags are restored right after, through a
 *    duplicate of the descriptor made for the call, so that the restore
 *    reaches the same description even if your descriptor number is closed
 *    and reused meanwhile. Calls of this process switching one file never
 *    overlap (they are serialised per file, only for those few system
 *    calls; calls on other files never wait for each other). So when a call
 *    returns, O_NONBLOCK is as it was; meanwhile, for one system call,
 *    another process sharing the description sees it set (and may get one
 *    EAGAIN from its own blocking call), and if the process is killed in
 *    that window, it stays set.
 *    Nothing serialises these switches across processes. A blocking
 *    descriptor of this last group shared with another process that also
 *    uses these calls on it, typically a listening socket inherited by
 *    pre-forked workers that all call cancel_io_accept where no ring
 *    serves them, is therefore not safe: one worker can see the flag
 *    another set, make its accept believing it non-blocking, and block in
 *    it, deaf to its token, once
 *    the other restored the flag. Make such a descriptor non-blocking
 *    (SOCK_NONBLOCK, or fcntl(fd, F_SETFL, O_NONBLOCK) before forking):
 *    the calls then never switch it and all workers stay cancellable.
 *
 * SIGPIPE: the library never changes its disposition. Like write(2),
 * cancel_io_write and cancel_io_write_all on a pipe or socket whose reader is
 * gone raise SIGPIPE and fail with EPIPE; cancel_io_send passes your flags
 * through, so add MSG_NOSIGNAL to get EPIPE without the signal.
 *
 * Descriptors of the library's own (EMFILE): every call that waits on a
 * token that can be cancelled needs the token's descriptor
 * (cancel_token_fd), made on the first wait for that source and kept until
 * the source is released. So every call here except cancel_sleep may fail
 * with EMFILE, ENFILE or ENOMEM when that descriptor cannot be made; the
 * caller's descriptor is then left as it was (nothing transferred, flags
 * unchanged). A call that never waits never needs it. A call that switches
 * O_NONBLOCK (see above) holds a duplicate of the caller's descriptor while
 * it runs, and a call on a tty or FIFO the private description; without a
 * descriptor for either it fails the same way, with EMFILE or ENFILE.
 *
 * While a call waits, the thread's "blocked in" record names it (for the
 * task layer's reports).
 *
 * pthread cancellation: the library never uses pthread_cancel, and these
 * calls are not meant to meet it: cancel the token instead. A call that
 * waits in ppoll (all but accept and connect through a ring) reaches a
 * cancellation point there, and a thread cancelled in it unwinds without
 * giving back what the call holds (a reference on the token, so the
 * source's memory is never released; a tty's private descriptor). Accept
 * and connect through the thread's ring wait in io_uring_enter, which is
 * not a cancellation point. The ring is the library's descriptor, like the
 * token's: do not close it (close_range over every descriptor of a threaded
 * program would leave that thread's next accept or connect waiting for
 * ever).
 */
#ifndef CANCEL_IO_H
#define CANCEL_IO_H

#include <cancel.h>

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sleeps `ns` nanoseconds (cancel_now()'s clock) or until the token is
 * cancelled. Returns 0 when the time has passed, ECANCELED early, EINVAL for
 * a negative `ns` other than CANCEL_INFINITE (which sleeps until
 * cancellation; forever for a token that cannot be cancelled). 0 returns at
 * once. A source freed uncancelled mid-sleep: the rest is slept. Uses no
 * descriptor (a futex wait on the token, as cancel_token_wait;
 * clock_nanosleep for a token that cannot be cancelled; on the manual clock,
 * a private source, allocated, for that case). errno is left alone.
 * Thread-safe. */
CANCEL_API int cancel_sleep(cancel_token tok, int64_t ns);

/* Like poll(2): waits until one of `fds` is ready, the token is cancelled,
 * or `timeout_ns` passed. Returns the number of entries with a non-zero
 * revents (every revents is written, as poll does), 0 on timeout, or -1 with
 * errno: ECANCELED (it wins over readiness: no entry is reported ready
 * then), EINVAL (bad timeout, or from the kernel), EFAULT (fds NULL with
 * nfds > 0), ENOMEM (more than 15 entries and no memory for the copy),
 * EMFILE/ENFILE (the token's descriptor). nfds 0 waits for the token or the
 * timeout alone. A timeout of 0 polls once. */
CANCEL_API int cancel_io_poll(cancel_token tok, struct pollfd *fds, nfds_t nfds, int64_t timeout_ns);

/* Like read(2): waits until `fd` has data (or EOF, or an error) and reads at
 * most `len` bytes. Returns the count (0 at end of file), or -1 with errno:
 * ECANCELED (nothing was read), EFAULT (buf NULL), any error of read(2)
 * (EBADF...), EMFILE/ENFILE. Works on blocking and non-blocking descriptors
 * alike (see the top of this header for the mechanism per kind). */
CANCEL_API ssize_t cancel_io_read(cancel_token tok, int fd, void *buf, size_t len);

/* Like write(2): waits until `fd` has room and writes at most `len` bytes;
 * it may write fewer, as write(2) may (cancel_io_write_all writes them all).
 * Returns the count or -1 with errno: ECANCELED (nothing was written),
 * EFAULT, EPIPE (with SIGPIPE, as write(2)), any error of write(2),
 * EMFILE/ENFILE. */
CANCEL_API ssize_t cancel_io_write(cancel_token tok, int fd, const void *buf, size_t len);

/* Like recv(2) on a socket, with `flags` passed through. MSG_DONTWAIT in
 * `flags` means "try once": EAGAIN rather than a wait. MSG_WAITALL on a
 * stream socket waits until `len` bytes arrived, the peer closed, an error,
 * or cancellation; if some bytes arrived first, that count is returned
 * (nothing is lost) and the next call reports the condition. MSG_PEEK with
 * MSG_WAITALL (without MSG_DONTWAIT) is refused with EINVAL: nothing could
 * wait for the rest without taking or spinning on the part already there.
 * Returns the count (0: the peer closed), or -1 with errno: ECANCELED,
 * EFAULT, EINVAL (that combination), ENOTSOCK, any error of recv(2),
 * EMFILE/ENFILE. */
CANCEL_API ssize_t cancel_io_recv(cancel_token tok, int fd, void *buf, size_t len, int flags);

/* Like send(2), with `flags` passed through (MSG_NOSIGNAL, MSG_MORE...).
 * MSG_DONTWAIT means "try once". It may send fewer than `len` bytes once
 * some are queued. Returns the count or -1 with errno: ECANCELED (nothing
 * was sent), EFAULT, EPIPE, ENOTSOCK, any error of send(2), EMFILE/ENFILE. */
CANCEL_API ssize_t cancel_io_send(cancel_token tok, int fd, const void *buf, size_t len, int flags);

/* Like accept4(2) (`flags`: SOCK_NONBLOCK, SOCK_CLOEXEC for the new socket):
 * waits for a connection on the listening socket `fd`. Returns the new
 * descriptor, or -1 with errno: ECANCELED (no connection was taken), any
 * error of accept4(2) (EBADF, EINVAL: not listening...), EMFILE/ENFILE (also
 * for the token's descriptor, the duplicate or the thread's ring). Through
 * the thread's io_uring ring (see the top) the listener is never switched;
 * without one, on a blocking listener, the accept itself is made
 * non-blocking as described at the top. Several threads may accept on one
 * listener; several processes on a blocking one only where the ring serves
 * (see the top: pre-forked workers). A cancel that races an arriving
 * connection may still return it. addr and addrlen as accept4 (both may be
 * NULL). */
CANCEL_API int cancel_io_accept(cancel_token tok, int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);

/* Like connect(2), on a blocking or non-blocking socket: connects through
 * the thread's io_uring ring, or else starts the connection (the one
 * connect system call with O_NONBLOCK set, as described at the top), and
 * waits until it is established or failed. Returns 0, or -1
 * with errno: ECANCELED, any error of connect(2) (ECONNREFUSED, ETIMEDOUT
 * from the kernel...), EMFILE/ENFILE. After ECANCELED the attempt is
 * aborted (the socket is disconnected, which for TCP sends a reset if the
 * handshake had completed), so no half-open connection is left; treat the
 * socket as unusable and close it. O_NONBLOCK is as it was. A Unix-domain
 * socket whose listener's backlog is full is retried after short naps (1 ms,
 * doubling up to 64 ms), which wake at once on cancellation: the kernel has
 * nothing to poll for that case. For other sockets EAGAIN (TCP: no local
 * port free) is returned as connect(2) returns it. */
CANCEL_API int cancel_io_connect(cancel_token tok, int fd, const struct sockaddr *addr, socklen_t addrlen);

/* Writes all `len` bytes, waiting as cancel_io_write. Returns 0 once all are
 * written, or an error number (ECANCELED, EFAULT, EPIPE, EBADF, EMFILE...;
 * EIO when a write returns 0 for a non-zero length, as some file systems
 * and devices do: nothing would ever make progress).
 * *done (NULL: not wanted) always receives how many bytes were written, so
 * that a cancelled transfer can be resumed or accounted for. errno is left
 * alone. */
CANCEL_API int cancel_io_write_all(cancel_token tok, int fd, const void *buf, size_t len, size_t *done);

/* Reads until `len` bytes arrived or end of file, waiting as cancel_io_read.
 * Returns 0 in both cases (*done tells which: less than len means EOF came
 * first), or an error number (ECANCELED...). *done (NULL: not wanted) always
 * receives how many bytes were read: nothing read is lost. errno is left
 * alone. */
CANCEL_API int cancel_io_read_full(cancel_token tok, int fd, void *buf, size_t len, size_t *done);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_IO_H */
