/* Unloading a plugin that uses libcancel is safe: the library stops its
 * thread when it is unloaded (a dlopen/dlclose loop used to crash when the
 * library thread outlived the code it runs). */
#include "../check.h"

#include <dirent.h>
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

static int threads(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A joined thread can still be listed for a moment: the kernel wakes the
 * joiner before it unlists the thread. */
static bool alone(void *arg)
{
    (void)arg;
    return threads() == 1;
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
        CHECK(test_wait_until(alone, NULL, 20LL * 1000000000));
    }
    return 0;
}
