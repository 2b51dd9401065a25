#!/bin/sh
# Installs the project into a scratch prefix (not a system directory) and
# builds a consumer one of the usual ways, as the README tells users to:
#   check.sh cmake     <cmake> <source dir> <build dir> <scratch dir>
#       the CMake package, shared and static (find_package(cancel))
#   check.sh pkgconfig <cmake> <source dir> <build dir> <scratch dir>
#       pkg-config, shared (with the run path the README gives) and static;
#       exits 77 (SKIPPED) where pkg-config is not installed
# add_subdirectory is covered by the project's own build.
set -eu
mode=$1 cmake=$2 src=$3 build=$4 work=$5
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
