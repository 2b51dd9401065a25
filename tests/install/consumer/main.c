#include <cancel.h>
#include <stdio.h>

int main(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    if (cancel_token_is_requested(t) || !cancel_source_cancel(s) || cancel_token_check(t) != ECANCELED)
        return 1;
    cancel_source_free(s);
    puts("consumer ok");
    return 0;
}
