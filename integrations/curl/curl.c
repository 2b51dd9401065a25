/*
 * cancel_curl_perform: curl_easy_perform's loop over a multi handle of the
 * call's own, woken by the token.
 *
 * Locking and lifetime. Everything lives on the calling thread's stack or
 * in the multi handle made for the call; nothing outlives the call and no
 * lock of ours exists. The one object shared with another thread is the
 * multi handle, which the token's callback (cancelling thread, or the
 * library thread) passes to curl_multi_wakeup: curl reads only the wake-up
 * socket there, written when the handle was made, so the call is safe
 * beside our curl_multi_perform/curl_multi_poll. The registration is
 * removed with cancel_unregister, which waits for that callback if it is
 * running, before the multi handle is cleaned up; so the callback never
 * sees a freed handle. Were that wait refused (EDEADLK: a call made from a
 * cancellation callback, which the header forbids), the multi handle is
 * left allocated rather than freed under the callback.
 *
 * Why the token is checked where it is: before any curl call, so that a
 * cancelled token starts nothing; after each wait, before
 * curl_multi_perform, so that a cancellation runs none of the user's
 * callbacks once noticed; and a finished transfer is reported as finished
 * even if the token was cancelled meanwhile (either result is allowed).
 * curl_multi_wakeup leaves a byte in the wake-up socket when it comes after
 * the last wait; that is harmless, the multi handle is cleaned up next.
 *
 * Without curl's wake-up socket pair. curl makes it with the multi handle
 * and goes on without it when it cannot (descriptors exhausted); then
 * curl_multi_wakeup fails, and a cancellation would be noticed only at the
 * wait's timeout. So the call probes it once (the byte a successful probe
 * leaves only makes the first wait return at once) and, when it is
 * missing, waits on the token's descriptor too, holding a reference to the
 * token so that the descriptor stays open for the call. That descriptor
 * also turns readable when the source is freed uncancelled: then the token
 * no longer counts, and the wait stops watching it (else it would return
 * at once, over and over).
 */
#include <cancel/curl.h>

#include <errno.h>
#include <stdbool.h>

void cancel_curl_multi_wakeup(void *multi)
{
    (void)curl_multi_wakeup(multi);
}

/* What curl_easy_perform reports for a failed multi call. */
static CURLcode from_multi(CURLMcode mc)
{
    return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_BAD_FUNCTION_ARGUMENT;
}

/* Drives the transfer until it ends or the token is cancelled; waits on
 * `extra` too (the token's descriptor) if it is not NULL. */
static CURLcode drive(cancel_token tok, CURLM *multi, struct curl_waitfd *extra)
{
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK)
            return from_multi(mc);
        if (running == 0) {
            int left;
            CURLMsg *msg = curl_multi_info_read(multi, &left);
            if (msg != NULL && msg->msg == CURLMSG_DONE)
                return msg->data.result;
            /* No message yet: curl_easy_perform polls again too. */
        }
        if (cancel_token_is_requested(tok))
            return CURLE_ABORTED_BY_CALLBACK;
        /* curl shortens the 1 s to its own next timeout, as in
         * curl_easy_perform; the token wakes it through curl_multi_wakeup. */
        mc = curl_multi_poll(multi, extra, extra != NULL ? 1 : 0, 1000, NULL);
        if (mc != CURLM_OK)
            return from_multi(mc);
        if (cancel_token_is_requested(tok))
            return CURLE_ABORTED_BY_CALLBACK;
        if (extra != NULL && extra->revents != 0)
            extra = NULL; /* readable, not cancelled: the source was freed uncancelled */
    }
}

CURLcode cancel_curl_perform(cancel_token tok, CURL *easy)
{
    if (easy == NULL)
        return CURLE_BAD_FUNCTION_ARGUMENT;
    if (cancel_token_is_requested(tok))
        return CURLE_ABORTED_BY_CALLBACK;
    int saved_errno = errno;
    CURLM *multi = curl_multi_init();
    if (multi == NULL) {
        errno = saved_errno;
        return CURLE_OUT_OF_MEMORY;
    }
    CURLMcode mc = curl_multi_add_handle(multi, easy);
    if (mc != CURLM_OK) {
        curl_multi_cleanup(multi);
        errno = saved_errno;
        return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
    }
    /* Adding starts nothing; the first curl_multi_perform does. */
    struct curl_waitfd fd = {CURL_SOCKET_BAD, CURL_WAIT_POLLIN, 0};
    cancel_token held = CANCEL_TOKEN_NONE; /* keeps fd open (see the top) */
    if (cancel_token_can_be_canceled(tok) && curl_multi_wakeup(multi) != CURLM_OK) {
        held = cancel_token_retain(tok);
        fd.fd = cancel_token_fd(held); /* -1 too: curl's timeout is all that is left */
    }
    CURLcode res;
    cancel_registration reg = CANCEL_REGISTRATION_INIT;
    if (cancel_register_noinvoke(tok, &reg, cancel_curl_multi_wakeup, multi) == ECANCELED)
        res = CURLE_ABORTED_BY_CALLBACK;
    else
        res = drive(tok, multi, fd.fd >= 0 ? &fd : NULL);

    errno = 0;
    bool waited = cancel_unregister(&reg) || errno != EDEADLK;
    curl_multi_remove_handle(multi, easy);
    if (waited)
        curl_multi_cleanup(multi);
    cancel_token_release(held);
    errno = saved_errno;
    return res;
}
