#!/usr/bin/env bash
# A headless Chromium for the report.html browser test (tests/report/test_html_browser.py).
#
#   tools/get_chromium.sh          # prints the browser's path; exit 1 (with the reason) if none
#
# 1. a chromium already on PATH (chromium, chromium-browser, google-chrome) or already unpacked
#    into the local prefix: nothing to do (fast: one --version call);
# 2. as root with apt-get: `apt-get install chromium` (set CNNCODES_CHROMIUM_LOCAL=1 to skip this
#    and unpack locally instead, e.g. on a shared machine);
# 3. otherwise, without root: `apt-get download` of the Debian package chromium, chromium-common
#    and every dependency the system lacks (apt-cache depends, breadth first), unpacked with
#    `dpkg-deb -x` into $CNNCODES_CHROMIUM_PREFIX (default ~/.cache/cnncodes-test-chromium), and a
#    wrapper bin/chromium that sets LD_LIBRARY_PATH. Idempotent: a working prefix is reused.
set -euo pipefail

PREFIX="${CNNCODES_CHROMIUM_PREFIX:-$HOME/.cache/cnncodes-test-chromium}"
WRAPPER="$PREFIX/bin/chromium"

works() { timeout 60 "$1" --headless --no-sandbox --version >/dev/null 2>&1; }

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if path="$(command -v "$name" 2>/dev/null)" && works "$path"; then echo "$path"; exit 0; fi
done
if [ -x "$WRAPPER" ] && works "$WRAPPER"; then echo "$WRAPPER"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "get_chromium: no chromium on PATH and no apt-get/dpkg-deb to fetch Debian's" \
         "package (not a Debian/Ubuntu system); the browser test will skip" >&2
    exit 1
fi

if [ "$(id -u)" = 0 ] && [ "${CNNCODES_CHROMIUM_LOCAL:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends chromium >&2
    path="$(command -v chromium)"
    works "$path" && { echo "$path"; exit 0; }
    echo "get_chromium: apt-get installed chromium but it does not start" >&2
    exit 1
fi

# --- no root: unpack the packages into PREFIX
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
available() { apt-cache show --no-all-versions "$1" >/dev/null 2>&1; }

# the Depends of $1 that the system lacks (one package per line; for "a | b" the first
# installable alternative unless one is installed; virtual packages <x> are skipped)
missing_deps() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
        --no-enhances "$1" 2>/dev/null | awk '
        /^ *\|(Pre)?Depends:/ { sub(/^ *\|(Pre)?Depends: */, ""); group = group " " $0; next }
        /^ *(Pre)?Depends:/   { sub(/^ *(Pre)?Depends: */, ""); print group " " $0; group = "" }' |
    while read -r -a alts; do
        pick=""
        for a in "${alts[@]}"; do
            case "$a" in "<"*) continue ;; esac
            if installed "$a"; then pick=""; continue 2; fi
            [ -z "$pick" ] && available "$a" && pick="$a"
        done
        [ -n "$pick" ] && echo "$pick"
    done
}

available chromium || {
    echo "get_chromium: apt-cache knows no package 'chromium' (run apt-get update as root" \
         "once, or install chromium); the browser test will skip" >&2
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/cnncodes-chromium.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root"
declare -A seen=()
queue=(chromium chromium-common)
for p in "${queue[@]}"; do seen[$p]=1; done
i=0
while [ "$i" -lt "${#queue[@]}" ]; do
    p="${queue[$i]}"
    i=$((i + 1))
    while read -r d; do
        [ -n "$d" ] && [ -z "${seen[$d]:-}" ] && { seen[$d]=1; queue+=("$d"); }
    done < <(missing_deps "$p")
done
echo "get_chromium: downloading ${#queue[@]} packages: ${queue[*]}" >&2
(cd "$work/debs" && apt-get download -q "${queue[@]}" >&2)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

libdirs=""
for d in "$work"/root/usr/lib/*-linux-gnu "$work"/root/lib/*-linux-gnu \
         "$work"/root/usr/lib/*-linux-gnu/pulseaudio; do
    [ -d "$d" ] && libdirs="$libdirs:${d#"$work"/root}"
done
missing="$(LD_LIBRARY_PATH="$(echo "${libdirs#:}" | sed "s|^|$work/root|; s|:|:$work/root|g")" \
           ldd "$work/root/usr/lib/chromium/chromium" | awk '/not found/ {print $1}' || true)"
if [ -n "$missing" ]; then
    echo "get_chromium: unpacked chromium still lacks: $(echo "$missing" | tr '\n' ' ')" >&2
    exit 1
fi

rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new/bin"
mv "$work/root" "$PREFIX.new/root"
cat > "$PREFIX.new/bin/chromium" <<EOF
#!/bin/sh
# written by tools/get_chromium.sh: Debian's chromium unpacked without root
P="\$(cd "\$(dirname "\$0")/.." && pwd)"
LD_LIBRARY_PATH="\$(echo "$libdirs" | sed "s|:|:\$P/root|g; s|^:||")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "\$P/root/usr/lib/chromium/chromium" "\$@"
EOF
chmod +x "$PREFIX.new/bin/chromium"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
if works "$WRAPPER"; then echo "$WRAPPER"; exit 0; fi
echo "get_chromium: the unpacked chromium in $PREFIX does not start:" >&2
"$WRAPPER" --headless --no-sandbox --version >&2 || true
exit 1
