/*
 * <cancel/curl.h>: libcurl transfers that a cancellation stops promptly
 * (libcancel-curl, pkg-config cancel-curl, CMake cancel::curl).
 *
 * cancel_curl_perform is curl_easy_perform with a token. curl's own way to
 * stop a transfer is a progress callback that returns non-zero, which curl
 * calls only now and then (about once a second while the server is silent)
 * and which takes over the handle's CURLOPT_XFERINFOFUNCTION. Here the
 * token wakes the transfer's wait directly, so a cancellation ends it at
 * once whatever the server does (about a tenth of a millisecond from the
 * cancel call to the return: docs/integrations.md), and the handle is left
 * exactly as you configured it.
 *
 *     CURL *easy = curl_easy_init();
 *     curl_easy_setopt(easy, CURLOPT_URL, "https://example.org/big");
 *     curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, save);
 *     CURLcode rc = cancel_curl_perform(tok, easy);
 *     if (rc == CURLE_ABORTED_BY_CALLBACK && cancel_token_is_requested(tok))
 *         ...stopped by the token (cancel_token_cause(tok) says why)...
 *     curl_easy_cleanup(easy);
 *
 * How it works: the call runs the transfer on a multi handle of its own, as
 * curl_easy_perform does internally (curl_multi_perform, curl_multi_poll),
 * and registers a callback on the token that calls curl_multi_wakeup, the
 * one multi-handle call curl allows from any thread. When the wait wakes and
 * the token is cancelled, the call takes the easy handle out of its multi
 * handle (curl_multi_remove_handle: curl's documented way to abort a
 * transfer in progress, which closes its connection) and returns. It sets
 * no option on the easy handle. curl makes its wake-up socket pair with the
 * multi handle and goes on without it when descriptors are exhausted; the
 * call then waits on the token's descriptor (cancel_token_fd, held open for
 * the call) beside curl's sockets instead. Should that descriptor not be
 * available either, a cancellation is noticed within a second, at the
 * wait's timeout.
 *
 * Resources on cancellation: the connection of the aborted transfer is
 * closed on the calling thread before the call returns; the easy handle,
 * its options, its CURLOPT_PRIVATE pointer, its cookies and its
 * CURLINFO values of the partial transfer stay; nothing is left registered
 * on the token. Differences from curl_easy_perform that follow from the
 * multi handle being made per call:
 *  - connections are not kept from one call to the next (each call closes
 *    what its multi handle opened). To reuse connections across calls, give
 *    the easy handle a share handle with CURL_LOCK_DATA_CONNECT
 *    (CURLOPT_SHARE): its connection cache outlives the call;
 *  - CURLOPT_MAXCONNECTS does not apply (curl's multi default applies).
 *  - CURLOPT_CONNECT_ONLY is not supported: the connection it leaves for
 *    curl_easy_send and curl_easy_recv belongs to the call's multi handle,
 *    which is cleaned up, closing it, before the call returns (those calls
 *    then find no connection). For a connect-only transfer that a token
 *    can stop, add the easy handle to a multi handle of your own, woken by
 *    cancel_curl_multi_wakeup (below), and keep it there while you use the
 *    connection.
 *  - A cancellation during a name lookup by curl's threaded resolver (the
 *    usual build) returns only once that lookup ends, unless CURLOPT_QUICK_EXIT
 *    (curl 7.87) is set: curl waits for its resolver thread when a transfer
 *    is aborted. Numeric addresses and CURLOPT_RESOLVE entries need no lookup.
 *
 * Conventions: the error rule of <cancel.h> gives way to curl's here; every
 * function returns what its curl counterpart returns. Each may be called
 * from any thread, one call per easy handle at a time (curl's rule).
 */
#ifndef CANCEL_CURL_H
#define CANCEL_CURL_H

#include <cancel.h>

#include <curl/curl.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Performs the transfer configured on `easy`, like curl_easy_perform, until
 * it completes or `tok` is cancelled. Returns curl_easy_perform's result,
 * or CURLE_ABORTED_BY_CALLBACK when the token ended the transfer (the only
 * other source of that code is your own progress callback; tell them apart
 * with cancel_token_is_requested). A token already cancelled returns
 * CURLE_ABORTED_BY_CALLBACK at once: nothing is resolved, no connection is
 * made, no callback of yours runs. A cancellation that races the end of the
 * transfer may yield either result. CURLE_BAD_FUNCTION_ARGUMENT for a NULL
 * handle; CURLE_FAILED_INIT if the handle is already in a multi handle (or
 * in use by another perform); CURLE_OUT_OF_MEMORY.
 *
 * Your callbacks (write, read, header, progress...) run on the calling
 * thread as with curl_easy_perform; the token's callback, which only wakes
 * the wait, runs on the cancelling thread (or the library thread for
 * asynchronous cancels and deadlines). The easy handle stays reusable for
 * any later perform, with this function or without. A token whose source
 * is freed uncancelled during the call stops counting: the transfer goes
 * on. Thread-safe as above; errno is left alone. Not to be called from a
 * cancellation callback (it blocks for the whole transfer). */
CANCEL_API CURLcode cancel_curl_perform(cancel_token tok, CURL *easy);

/* A cancellation callback (cancel_fn) for programs that drive their own
 * multi handle: cancel_register(tok, &reg, cancel_curl_multi_wakeup, multi)
 * makes the cancellation wake that handle's curl_multi_poll, after which the
 * loop checks the token and removes its transfers. Unregister (waiting, with
 * cancel_unregister) before curl_multi_cleanup. */
CANCEL_API void cancel_curl_multi_wakeup(void *multi);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_CURL_H */
