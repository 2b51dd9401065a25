#!/bin/sh
# Installs the project into a scratch prefix (not a system directory) and
# builds a consumer one of the usual ways, as the README tells users to:
#   check.sh cmake     <cmake> <source dir> <build dir> <scratch dir>
#       the CMake package, shared and static (find_package(cancel))
#   check.sh pkgconfig <cmake> <source dir> <build dir> <scratch dir>
#       pkg-config, shared (with the run path the README gives) and static;
#       exits 77 (SKIPPED) where pkg-config is not installed
#   check.sh integrations <cmake> <source dir> <build dir> <scratch dir> <name>...
#       each integration named (those the build made): its header, its .pc
#       file and its CMake component, each used to build and run a program
#       that links one of its functions; and, where pkg-config cannot be
#       found, the first as an optional component (the core is still found)
#       and as a required one (configuring fails, saying why)
# add_subdirectory is covered by the project's own build.
set -eu
mode=$1 cmake=$2 src=$3 build=$4 work=$5
shift 5
if [ "$mode" = pkgconfig ] && ! command -v pkg-config >/dev/null 2>&1; then
    echo "SKIPPED: pkg-config is not installed"
    exit 77
fi
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/cancel.h" || { echo "cancel.h was not installed"; exit 1; }

case $mode in
cmake)
    "$cmake" -S "$src/tests/install/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
    "$cmake" --build "$work/consumer" >/dev/null
    # CMake puts the run path in the program: no LD_LIBRARY_PATH needed.
    "$work/consumer/consumer_shared"
    "$work/consumer/consumer_static"
    ;;
integrations)
    pc=$(find "$prefix" -name cancel.pc | head -n 1)
    test -n "$pc" || { echo "cancel.pc was not installed"; exit 1; }
    libdir=$(dirname "$(dirname "$pc")")
    mkdir -p "$work/probes"
    for name in "$@"; do
        test -f "$prefix/include/cancel/$name.h" || { echo "cancel/$name.h was not installed"; exit 1; }
        test -f "$libdir/cmake/cancel/cancel-${name}Targets.cmake" ||
            { echo "the CMake component $name was not installed"; exit 1; }
        # The package must not name a path of the machine that built it.
        if grep -n 'INTERFACE_.*[";]/' "$libdir/cmake/cancel/cancel-${name}"Targets*.cmake; then
            echo "the CMake component $name names absolute paths (above)"; exit 1
        fi
        # Any function the library exports will do: the program proves that the
        # header compiles with the flags given and that the library links and loads.
        sym=$(nm -D --defined-only "$libdir/libcancel-$name.so" | awk -v p="cancel_${name}_" \
              '$2 == "T" && index($3, p) == 1 { print $3; exit }')
        test -n "$sym" || { echo "libcancel-$name exports no cancel_${name}_ function"; exit 1; }
        cat > "$work/probes/probe_$name.c" <<PROBE
#include <cancel/$name.h>
#include <stdio.h>
int main(void)
{
    void (*volatile f)(void) = (void (*)(void))$sym;
    printf("probe $name: $sym at %p\\n", (void *)f);
    return f == NULL;
}
PROBE
    done
    "$cmake" -S "$src/tests/install/integrations" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
        "-DCANCEL_PROBES=$(echo "$@" | tr ' ' ';')" -DPROBE_DIR="$work/probes" >/dev/null
    "$cmake" --build "$work/consumer" >/dev/null
    if command -v pkg-config >/dev/null 2>&1; then
        export PKG_CONFIG_PATH=$libdir/pkgconfig
    fi
    for name in "$@"; do
        "$work/consumer/probe_$name"
        if [ -n "${PKG_CONFIG_PATH:-}" ]; then
            test -f "$PKG_CONFIG_PATH/cancel-$name.pc" || { echo "cancel-$name.pc was not installed"; exit 1; }
            cc "$work/probes/probe_$name.c" -o "$work/pc_probe_$name" $(pkg-config --cflags --libs "cancel-$name") \
                -Wl,-rpath,"$(pkg-config --variable=libdir cancel)"
            env -u LD_LIBRARY_PATH "$work/pc_probe_$name"
        fi
    done
    if [ -z "${PKG_CONFIG_PATH:-}" ]; then
        echo "the .pc files were not tried: pkg-config is not installed"
    fi
    # Where pkg-config cannot be found, an optional component is missing but
    # the core is found; a required one fails the configuration, saying why.
    "$cmake" -S "$src/tests/install/without_pkgconfig" -B "$work/optional" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON "-DCANCEL_COMPONENT=$1" >/dev/null
    "$cmake" --build "$work/optional" >/dev/null
    "$work/optional/consumer"
    if "$cmake" -S "$src/tests/install/without_pkgconfig" -B "$work/required" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON "-DCANCEL_COMPONENT=$1" -DREQUIRE_COMPONENT=ON \
        >"$work/required.log" 2>&1; then
        echo "the component $1 was found without pkg-config"; exit 1
    fi
    if ! tr -s '\n ' '  ' <"$work/required.log" | grep -q "libcancel-$1 needs pkg-config"; then
        cat "$work/required.log"
        echo "a missing required component was not explained (above)"; exit 1
    fi
    ;;
pkgconfig)
    pc=$(find "$prefix" -name cancel.pc | head -n 1)
    test -n "$pc" || { echo "cancel.pc was not installed"; exit 1; }
    export PKG_CONFIG_PATH=$(dirname "$pc")
    # Exactly the README's command for a prefix the dynamic linker does not
    # search: the run path comes from pkg-config's libdir.
    cc "$src/tests/install/consumer/main.c" -o "$work/pc_consumer" \
        $(pkg-config --cflags --libs cancel) -Wl,-rpath,"$(pkg-config --variable=libdir cancel)"
    env -u LD_LIBRARY_PATH "$work/pc_consumer"
    cc "$src/tests/install/consumer/main.c" -o "$work/pc_static" $(pkg-config --cflags cancel) \
        "$(pkg-config --variable=libdir cancel)/libcancel.a" $(pkg-config --libs-only-other --static cancel) -pthread
    "$work/pc_static"
    ;;
*)
    echo "unknown mode $mode"; exit 2 ;;
esac
echo "install check ($mode) ok"
