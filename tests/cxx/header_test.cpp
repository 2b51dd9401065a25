// The public header compiles as C++ and its inline check works there.
#include <cancel.h>

#include <cstdio>

int main()
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    cancel_token none = CANCEL_TOKEN_NONE;
    cancel_registration r = CANCEL_REGISTRATION_INIT;
    bool ok = !cancel_token_is_requested(t) && !cancel_token_is_requested(none) && !cancel_unregister(&r);
    cancel_source_cancel(s);
    ok = ok && cancel_token_is_requested(t) && cancel_token_check(t) == ECANCELED;
    cancel_source_free(s);
    std::puts(ok ? "c++ ok" : "c++ FAILED");
    return ok ? 0 : 1;
}
