/* Fetches a URL to stdout; Ctrl-C or a 10 s deadline stops it at once.
 *   curl_fetch https://example.org/ */
#include <cancel/curl.h>
#include <signal.h>
#include <stdio.h>

static cancel_source *src;

static void on_sigint(int signo) {
    cancel_source_cancel_signal(src, signo);        /* async-signal-safe */
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s URL\n", argv[0]);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    src = cancel_source_new_child(CANCEL_TOKEN_NONE, 10LL * 1000 * 1000 * 1000, "fetch");
    signal(SIGINT, on_sigint);

    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, argv[1]);
    CURLcode rc = cancel_curl_perform(cancel_source_token(src), easy);

    cancel_token tok = cancel_source_token(src);
    if (rc == CURLE_ABORTED_BY_CALLBACK && cancel_token_is_requested(tok))
        fprintf(stderr, "stopped: %s\n", cancel_reason_name(cancel_token_cause(tok).reason));
    else if (rc != CURLE_OK)
        fprintf(stderr, "failed: %s\n", curl_easy_strerror(rc));
    curl_easy_cleanup(easy);                         /* the handle was never damaged */
    signal(SIGINT, SIG_DFL);
    cancel_source_free(src);
    curl_global_cleanup();
    return rc == CURLE_OK ? 0 : 1;
}
