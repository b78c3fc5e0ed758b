#!/usr/bin/env bash
# Installs etcd and etcdctl for `synod bench --compare-etcd` and the bench tests, without
# starting any service: Debian's etcd-server package would start a default etcd on
# 127.0.0.1:2379 if installed with apt-get install, so this script only downloads the
# packages and unpacks them into $REPO/.tools/etcd (gitignored).
#
# Idempotent: if the binaries are already there it only prints where they are.
# The last line printed on stdout is the directory holding `etcd` and `etcdctl`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install_dir="${SYNOD_TOOLS_DIR:-$repo/.tools}/etcd"
bin_dir="$install_dir/usr/bin"

if [[ -x "$bin_dir/etcd" && -x "$bin_dir/etcdctl" ]]; then
    echo "$bin_dir"
    exit 0
fi

# Tests run in parallel and may all want etcd at once: one installs, the others wait and
# then find it. The install is unpacked beside its final place and renamed into it, so
# nobody ever runs a half-written binary ("Text file busy").
mkdir -p "$(dirname "$install_dir")"
exec 9>"$install_dir.lock"
flock 9
if [[ -x "$bin_dir/etcd" && -x "$bin_dir/etcdctl" ]]; then
    echo "$bin_dir"
    exit 0
fi
final_dir="$install_dir"
install_dir="$(mktemp -d "$final_dir.partial.XXXXXX")"
bin_dir="$install_dir/usr/bin"

# Root may run apt-get directly; otherwise use sudo if it exists and needs no password.
as_root=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    fi
fi

for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "get-etcd.sh: '$tool' not found; install etcd 3.4+ by hand and set SYNOD_ETCD_BIN" >&2
        exit 1
    fi
done

download_dir="$(mktemp -d)"
trap 'rm -rf "$download_dir" "$install_dir"' EXIT

# `apt-get download` needs the package lists; refresh them once if the packages are unknown.
if ! apt-cache show etcd-server >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 || ${#as_root[@]} -gt 0 ]]; then
        "${as_root[@]}" apt-get update -qq >&2
    else
        echo "get-etcd.sh: apt knows no etcd-server package and cannot refresh its lists without root" >&2
        exit 1
    fi
fi

# `apt-get download` writes into the current directory and needs no root. Under root it
# drops privileges to the _apt user, which cannot write to a mktemp directory, so open it up.
chmod 0777 "$download_dir"
(cd "$download_dir" && apt-get download -qq etcd-server etcd-client >&2)

mkdir -p "$install_dir"
for package in "$download_dir"/*.deb; do
    dpkg -x "$package" "$install_dir"
done

if [[ ! -x "$bin_dir/etcd" ]]; then
    # Some packagings install the server as /usr/bin/etcd via an alternatives link only.
    found="$(find "$install_dir" -type f -name etcd -perm -u+x | head -n 1)"
    if [[ -z "$found" ]]; then
        echo "get-etcd.sh: the etcd-server package held no etcd binary" >&2
        exit 1
    fi
    mkdir -p "$bin_dir"
    ln -sf "$found" "$bin_dir/etcd"
fi

version="$("$bin_dir/etcd" --version | head -n 1 | awk '{print $3}')"
# The symlink made above points into the partial directory: make it relative first.
if [[ -L "$bin_dir/etcd" ]]; then
    target="$(readlink "$bin_dir/etcd")"
    ln -sf "$(realpath --relative-to="$bin_dir" "$target")" "$bin_dir/etcd"
fi
rm -rf "$final_dir"
mv "$install_dir" "$final_dir"
install_dir="$final_dir.partial.none" # nothing left for the exit trap to remove
bin_dir="$final_dir/usr/bin"
echo "installed etcd $version into $bin_dir" >&2
echo "$bin_dir"
