#!/usr/bin/env bash
# Build the gpu-node-agent RPM from a checkout: dist/gpu-node-agent-<version>-1.noarch.rpm and the
# matching .src.rpm.
#
#   packaging/build-rpm.sh [--wheelhouse DIR] [--outdir DIR]
#   packaging/build-rpm.sh --fetch-wheels DIR
#
# The bundled libraries are the hash-pinned wheels of packaging/bundled-requirements.txt, installed
# for Python 3.9 (AL2023's python3):
#   --wheelhouse DIR    install them from DIR only, without network (AMI pipelines without internet);
#   (default)           download exactly those pins from the package index (hash-checked).
#   --fetch-wheels DIR  download the pinned wheels into DIR, for a later --wheelhouse build, and stop.
#   --outdir DIR        where the packages go (default: dist/ in the checkout).
# Needs rpmbuild (the rpm-build package on AL2023/Fedora, rpm on Debian/Ubuntu), GNU tar, gzip and a
# Python 3 with pip ($PYTHON, default python3).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "build-rpm: $*" >&2; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
requirements="$repo/packaging/bundled-requirements.txt"
spec="$repo/rpm.spec"
python=${PYTHON:-python3}
wheelhouse=""
fetch_to=""
outdir="$repo/dist"

while (($#)); do
  case "$1" in
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift 2 ;;
    --fetch-wheels) fetch_to=${2:?--fetch-wheels needs a directory}; shift 2 ;;
    --outdir) outdir=${2:?--outdir needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

pip() { PIP_ROOT_USER_ACTION=ignore "$python" -m pip --disable-pip-version-check "$@"; }
# Wheels for AL2023's interpreter, whatever Python runs this script; pure Python only, no resolver
# surprises: every package is pinned with its hash, dependencies included.
pip_target=(--only-binary=:all: --no-deps --require-hashes --python-version 3.9 -r "$requirements")

if [ -n "$fetch_to" ]; then
  mkdir -p "$fetch_to"
  pip download -q "${pip_target[@]}" --dest "$fetch_to"
  echo "build-rpm: pinned wheels in $fetch_to"
  exit 0
fi

command -v rpmbuild >/dev/null || die "rpmbuild not found: install rpm-build (AL2023/Fedora) or rpm (Debian/Ubuntu)"

# The spec and the code must agree on what is being shipped.
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")
spec_version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
[ -n "$version" ] || die "agent/__init__.py: no __version__ = \"X.Y.Z\" line"
[ "$version" = "$spec_version" ] ||
  die "rpm.spec Version: $spec_version, but agent/__init__.py says $version: make them the same"
while read -r name pinned; do
  norm=$(echo "$name" | tr 'A-Z_.' 'a-z--')
  grep -Eq "^Provides:[[:space:]]+bundled\(python3dist\($norm\)\) = ${pinned//./\\.}\$" "$spec" ||
    die "rpm.spec lacks 'Provides: bundled(python3dist($norm)) = $pinned' (pinned in $requirements)"
done < <(sed -n 's/^\([A-Za-z0-9_.-]*\)==\([^ ]*\).*/\1 \2/p' "$requirements")

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-node-agent-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
top="$work/rpmbuild"
mkdir -p "$top/SOURCES" "$work/vendor"

# Source1: the bundled libraries as a Python 3.9 target tree, without bytecode (%post compiles).
if [ -n "$wheelhouse" ]; then
  [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse: not a directory"
  # --isolated: no pip configuration or PIP_* variables can add an index; only the wheelhouse.
  pip --isolated install -q --no-compile --no-index --find-links "$wheelhouse" \
    --target "$work/vendor" "${pip_target[@]}"
else
  pip install -q --no-compile --target "$work/vendor" "${pip_target[@]}"
fi
tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --exclude=__pycache__ --exclude='*.pyc')
tar -C "$work" -czf "$top/SOURCES/gpu-node-agent-vendor-$version.tar.gz" "${tar_opts[@]}" vendor

# Source0: what the spec installs from the checkout.
tar -C "$repo" -czf "$top/SOURCES/gpu-node-agent-$version.tar.gz" "${tar_opts[@]}" \
  --transform "s,^,gpu-node-agent-$version/," \
  agent systemd docs/operations.md rpm.spec \
  packaging/gpu-node-agent-launcher.py packaging/config.yaml packaging/50-gpu-node-agent.preset

rpmbuild -ba --quiet --define "_topdir $top" "$spec"

mkdir -p "$outdir"
for package in "$top"/RPMS/noarch/*.rpm "$top"/SRPMS/*.src.rpm; do
  cp "$package" "$outdir"/
  echo "build-rpm: $outdir/$(basename "$package")"
done
