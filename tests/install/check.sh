#!/bin/sh
# Installs the project into a scratch prefix and builds a consumer the three
# usual ways: the CMake package (shared and static), pkg-config, and
# add_subdirectory is covered by the project's own build. Usage:
#   check.sh <cmake> <source dir> <build dir> <scratch dir>
set -eu
cmake=$1 src=$2 build=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
"$cmake" --install "$build" --prefix "$prefix" >/dev/null

# CMake package, shared and static
"$cmake" -S "$src/tests/install/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
"$cmake" --build "$work/consumer" >/dev/null
LD_LIBRARY_PATH=$(dirname "$(find "$prefix" -name 'libcancel.so' | head -n 1)") "$work/consumer/consumer_shared"
"$work/consumer/consumer_static"

# pkg-config (skipped where it is not installed)
pc=$(find "$prefix" -name cancel.pc | head -n 1)
test -n "$pc" || { echo "cancel.pc was not installed"; exit 1; }
test -f "$prefix/include/cancel.h" || { echo "cancel.h was not installed"; exit 1; }
if command -v pkg-config >/dev/null 2>&1; then
    export PKG_CONFIG_PATH=$(dirname "$pc")
    cc "$src/tests/install/consumer/main.c" -o "$work/pc_consumer" $(pkg-config --cflags --libs cancel)
    LD_LIBRARY_PATH=$(pkg-config --variable=libdir cancel) "$work/pc_consumer"
    cc "$src/tests/install/consumer/main.c" -o "$work/pc_static" $(pkg-config --cflags cancel) \
        "$(pkg-config --variable=libdir cancel)/libcancel.a" $(pkg-config --libs-only-other --static cancel) -pthread
    "$work/pc_static"
else
    echo "pkg-config not found: pkg-config consumer skipped"
fi
echo "install check ok"
