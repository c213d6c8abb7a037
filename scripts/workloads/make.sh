#!/bin/sh
# make.sh DIR [JOBS] [FILES]: generates a small C project in DIR/src (FILES source files,
# default 40, each slow enough to compile that a build lasts a few seconds) and builds it
# with `make -jJOBS` (default 8): make, the shells it starts and gcc's cc1/as/collect2 form
# a tree that changes all the time. Objects appear in DIR/src/*.o as they are built.
set -eu
dir=$1
jobs=${2:-8}
files=${3:-40}
src=$dir/src
mkdir -p "$src"
i=0
objs=
while [ "$i" -lt "$files" ]; do
    # Heavy enough for cc1 at -O2 to take a noticeable time: many unrolled functions.
    {
        echo "int f$i(int x);"
        j=0
        while [ "$j" -lt 20 ]; do
            echo "static int g${i}_$j(int x) { int s = 0; for (int k = 0; k < x; k++) s += (k * $j) ^ (s >> 3); return s + x * $j; }"
            j=$((j + 1))
        done
        echo "int f$i(int x) { return 0"
        j=0
        while [ "$j" -lt 20 ]; do
            echo " + g${i}_$j(x + $j)"
            j=$((j + 1))
        done
        echo "; }"
    } >"$src/f$i.c"
    objs="$objs f$i.o"
    i=$((i + 1))
done
echo 'int main(void) { return 0; }' >"$src/main.c"
{
    echo "OBJS = main.o$objs"
    echo "all: prog"
    printf 'prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n'
    printf '%%.o: %%.c\n\t$(CC) -O2 -funroll-loops -c -o $@ $<\n'
} >"$src/Makefile"
cd "$src"
exec make -j"$jobs" --no-print-directory
