/*
 * <cancel/process.h>: cancellation across processes.
 *
 * A token that crosses a process boundary: the exporting process turns a
 * token into a descriptor, passes it to one other process (inherited through
 * fork/exec, or sent with SCM_RIGHTS), and that process turns it into a
 * source that is cancelled when the token is, with the same cause and the
 * same deadline, and that fails (EPIPE) if every exporting process is gone,
 * so that no orphan keeps working.
 *
 *     // parent                                   // child (exec'd)
 *     int fd = cancel_token_export_fd(tok);       cancel_source *s = cancel_source_new_inherited();
 *     ... spawn with CANCEL_TOKEN_FD=<fd> ...     work(cancel_source_token(s));
 *     close(fd);                                  cancel_source_free(s);
 *
 * Both ends are served by the library thread (epoll inside it): no thread of
 * their own, no system call on any hot path. All of this assumes processes
 * in one time namespace (they share CLOCK_MONOTONIC).
 */
#ifndef CANCEL_PROCESS_H
#define CANCEL_PROCESS_H

#include <cancel.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Tokens across processes.
 * ------------------------------------------------------------------------ */

/* Returns a new descriptor (the caller's to close; O_CLOEXEC) through which
 * one other process reads the token (cancel_source_new_from_fd): pass it by
 * fork/exec inheritance (clear O_CLOEXEC in the child, or use
 * cancel_process_options.share_token) or with SCM_RIGHTS; export once per
 * receiving process. It carries the cause (reason, code, message, origin)
 * when the token is cancelled, or the news that its source was freed
 * uncancelled, and the deadline the token has now (cancel_token_deadline;
 * later re-arms are not carried). This process never dies of SIGPIPE for it.
 * A child forked without exec counts as an exporting process too (it holds
 * the exporter's end). Returns -1 with errno EMFILE/ENFILE/ENOMEM (a socket
 * pair, and a duplicate of the token's descriptor, are needed) or EAGAIN
 * (the library thread could not be started). Thread-safe. */
CANCEL_API int cancel_token_export_fd(cancel_token tok);

/* In the receiving process: a new source (the caller's to free) cancelled
 * when the exporting token is, with the same cause (reason, code, message,
 * and the origin's name kept), and armed with the same absolute deadline;
 * cancelled with reason FAILED, code EPIPE, message "exporting process gone"
 * when every exporting process is gone. If the exporting source is freed
 * uncancelled, this source is told and is never cancelled through the
 * descriptor (its own owner may still cancel it). Takes ownership of fd and
 * closes it on every path. Returns NULL with errno EBADF (fd not open),
 * EPROTO (not an exported token), ENOMEM, or EMFILE (a descriptor is needed
 * to watch the source). Thread-safe. */
CANCEL_API cancel_source *cancel_source_new_from_fd(int fd);

/* The source of a token the parent process passed through the environment
 * variable CANCEL_TOKEN_FD (the decimal descriptor number; what
 * cancel_process_options.share_token does); the variable is removed after
 * reading, so call it before starting threads. A never-cancelled source if
 * the variable is not set. NULL with errno EBADF if it names no valid
 * descriptor, else as cancel_source_new_from_fd. */
CANCEL_API cancel_source *cancel_source_new_inherited(void);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_PROCESS_H */
