#!/bin/sh
# Makes a Wine prefix that can run corral's Windows test binaries (see docs/windows.md):
# target/wine-prefix, initialised without a display, with the bcryptprimitives.dll
# stand-in (bcryptprimitives.c) in its system32. Idempotent: a ready prefix is reused.
#
#   scripts/wine/setup.sh            (from the repository root, or anywhere)
#
# Environment: WINE (default: wine64 on PATH, else /usr/lib/wine/wine64), CC (default:
# x86_64-w64-mingw32-gcc), CARGO_TARGET_DIR (default: <repo>/target).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
prefix=$target/wine-prefix
wine=${WINE:-$(command -v wine64 || echo /usr/lib/wine/wine64)}
cc=${CC_MINGW:-x86_64-w64-mingw32-gcc}

[ -x "$wine" ] || { echo "setup.sh: no wine64 (tried $wine); install Debian's wine64 or set WINE" >&2; exit 1; }
command -v "$cc" >/dev/null || { echo "setup.sh: no $cc; install gcc-mingw-w64-x86-64" >&2; exit 1; }

mkdir -p "$target"
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY

if [ ! -f "$prefix/system.reg" ]; then
    echo "setup.sh: creating the Wine prefix $prefix" >&2
    "$wine" wineboot -i
    # wineboot returns before the prefix is written out; wait for the server to finish.
    "$(dirname "$wine")/wineserver" -w 2>/dev/null || wineserver -w
fi

dll=$prefix/drive_c/windows/system32/bcryptprimitives.dll
if [ ! -f "$dll" ] || [ "$here/bcryptprimitives.c" -nt "$dll" ]; then
    "$cc" -shared -O2 -o "$target/bcryptprimitives.dll" "$here/bcryptprimitives.c" \
        -Wl,--kill-at -Wl,--enable-stdcall-fixup
    cp "$target/bcryptprimitives.dll" "$dll"
    echo "setup.sh: installed $dll" >&2
fi
