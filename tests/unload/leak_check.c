/* Run under valgrind by CTest (no suppression): a program that uses the
 * library's thread, deadlines, asynchronous cancels, descriptors and linked
 * sources, and exits without any clean-up call of the library. Nothing may
 * be reported: no leak, definite or possible (the library's thread is
 * stopped and joined when the library goes). */
#include <cancel.h>
#include <stdio.h>

static void note(void *arg)
{
    ++*(int *)arg;
}

int main(void)
{
    int ran = 0;
    cancel_source *parent = cancel_source_new();
    cancel_token pt = cancel_source_token(parent);
    cancel_source *child = cancel_source_new_child(pt, 2000000, "child");
    static cancel_registration r1, r2; /* valid until their callbacks ran: the exit may come first */
    cancel_register(cancel_source_token(child), &r1, note, &ran);
    (void)cancel_token_fd(cancel_source_token(child));
    if (!cancel_token_wait(cancel_source_token(child), 5000000000)) /* its deadline fires */
        return 1;
    cancel_register(pt, &r2, note, &ran);
    cancel_source_cancel_signal(parent, 15);
    cancel_source_free(child);
    cancel_source_free(parent); /* its dispatch may still be queued: the library finishes it */
    /* a deadline still armed at exit */
    cancel_source *late = cancel_source_new();
    cancel_source_cancel_after(late, 3600LL * 1000000000);
    cancel_source_free(late);
    printf("callbacks run so far: %d\n", ran);
    return 0;
}
