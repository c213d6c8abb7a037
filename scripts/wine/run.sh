#!/bin/sh
# The cargo runner for the x86_64-pc-windows-gnu target under Wine (see docs/windows.md):
#
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=scripts/wine/run.sh \
#       cargo test --target x86_64-pc-windows-gnu -p corral-testkit --test windows
#
# Runs "$@" in the prefix scripts/wine/setup.sh made, without a display and without
# Wine's debug chatter.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
wine=${WINE:-$(command -v wine64 || echo /usr/lib/wine/wine64)}

export WINEPREFIX="$target/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
[ -f "$WINEPREFIX/system.reg" ] || { echo "run.sh: no Wine prefix at $WINEPREFIX; run scripts/wine/setup.sh" >&2; exit 1; }
exec "$wine" "$@"
