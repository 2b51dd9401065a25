/* A plugin that uses libcancel (linked to the shared library): loaded and
 * unloaded in a loop by unload_test.c, whose own code does not link it, so
 * that each dlclose unmaps libcancel too. */
#include <cancel.h>

__attribute__((visibility("default"))) int plugin_run(int variant);

static void nothing(void *arg)
{
    (void)arg;
}

int plugin_run(int variant)
{
    cancel_source *s = cancel_source_new();
    if (!s)
        return -1;
    static cancel_registration r; /* its callback may run after we return */
    switch (variant % 3) {
    case 0: /* a 1 ms deadline that fires, waited for */
        if (cancel_source_cancel_after(s, 1000000) != 0 || !cancel_token_wait(cancel_source_token(s), -1))
            return -1;
        cancel_source_free(s);
        return 0;
    case 1: /* a 1 ms deadline still armed when the plugin goes: leaked on purpose */
        return cancel_source_cancel_after(s, 1000000);
    default: /* an asynchronous cancel whose callback may still be queued */
        cancel_register(cancel_source_token(s), &r, nothing, NULL);
        cancel_source_cancel_async(s);
        cancel_source_free(s);
        return 0;
    }
}
