/* The README's example: create a source, hand its token to workers, cancel. */
#include <cancel.h>
#include <pthread.h>
#include <stdio.h>

static void *worker(void *arg) {
    cancel_token tok = *(cancel_token *)arg;
    unsigned long steps = 0;
    while (!cancel_token_is_requested(tok))   /* one load: cheap to call often */
        steps++;                              /* ... a slice of real work ... */
    printf("worker stopped after %lu steps: %s\n", steps,
           cancel_reason_name(cancel_token_cause(tok).reason));
    return NULL;
}

int main(void) {
    cancel_source *src = cancel_source_new();      /* the owner's right to cancel */
    cancel_token tok = cancel_source_token(src);   /* what workers listen to */
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, worker, &tok);
    cancel_token_wait(tok, 100 * 1000 * 1000);     /* let them work for 100 ms */
    cancel_source_cancel(src);                     /* every worker notices and stops */
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    cancel_source_free(src);
    return 0;
}
