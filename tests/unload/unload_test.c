/* Unloading a plugin that uses libcancel is safe: the library stops its
 * thread when it is unloaded (a dlopen/dlclose loop used to crash when the
 * library thread outlived the code it runs). */
#include "../check.h"

#include <dlfcn.h>

static bool libcancel_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f);
    char line[4096];
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "libcancel.so"))
            found = true;
    fclose(f);
    return found;
}



int main(int argc, char **argv)
{
    CHECK(argc == 2);
    CHECK(!libcancel_mapped());
    for (int i = 0; i < 60; i++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        int (*run)(int) = (int (*)(int))dlsym(h, "plugin_run");
        CHECK(run);
        CHECK_EQ(run(i), 0);
        CHECK(libcancel_mapped());
        CHECK_EQ(dlclose(h), 0);
        /* Really unloaded (otherwise this test would test nothing), and its
         * thread really gone. */
        CHECK(!libcancel_mapped());
        CHECK(test_thread_count_becomes(1));
    }
    return 0;
}
