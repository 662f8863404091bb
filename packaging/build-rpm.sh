#!/usr/bin/env bash
# Build the gpu-node-agent RPM from a checkout: dist/gpu-node-agent-<version>-<release>.noarch.rpm and
# the matching .src.rpm. Reproducible: two builds of one commit (with one rpm version) give
# byte-identical packages, wherever the checkout and the temporary directory are (the time of every
# file and of the build is the commit's, SOURCE_DATE_EPOCH; the build host name is fixed).
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
# Needs rpmbuild (the rpm-build package on AL2023/Fedora, rpm on Debian/Ubuntu), GNU tar, gzip, a
# Python 3 with pip ($PYTHON, default python3) and a Python 3.9 to compile the bytecode ($PYTHON39;
# default: python3 when it is 3.9, as on AL2023, else python3.9 on PATH, pyenv's, /usr/local's).
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

# The bytecode is for AL2023's python3, 3.9: compiled by a 3.9.
is39() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1; }
python39=${PYTHON39:-}
if [ -z "$python39" ]; then
  for candidate in python3 python3.9 "${HOME:-/root}"/.pyenv/versions/3.9*/bin/python3.9 /usr/local/bin/python3.9 \
                   /usr/bin/python3.9; do
    if is39 "$candidate"; then python39=$(command -v "$candidate"); break; fi
  done
fi
if [ -z "$python39" ] || ! is39 "$python39"; then
  die "no Python 3.9 to compile the bytecode with: install one (AL2023: python3; elsewhere e.g. 'pyenv install 3.9') or set PYTHON39"
fi

# One time for every file and for the build: the commit's (SOURCE_DATE_EPOCH as given wins; outside
# a git checkout, the newest %changelog entry's day, as rpmbuild itself would take it).
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct)
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  changelog_day=$(sed -n 's/^\* [A-Z][a-z][a-z] \([A-Z][a-z][a-z] [0-9]* [0-9]*\) .*/\1/p' "$spec" | head -1)
  SOURCE_DATE_EPOCH=$(TZ=UTC date -d "$changelog_day" +%s) || die "rpm.spec: no %changelog date; set SOURCE_DATE_EPOCH"
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-node-agent-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
top="$work/rpmbuild"
mkdir -p "$top/SOURCES" "$work/vendor"

# Source1: the bundled libraries as a Python 3.9 target tree, without bytecode (the spec compiles it).
if [ -n "$wheelhouse" ]; then
  [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse: not a directory"
  # --isolated: no pip configuration or PIP_* variables can add an index; only the wheelhouse.
  pip --isolated install -q --no-compile --no-index --find-links "$wheelhouse" \
    --target "$work/vendor" "${pip_target[@]}"
else
  pip install -q --no-compile --target "$work/vendor" "${pip_target[@]}"
fi
tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --mode=go-w
          --format=gnu --exclude=__pycache__ --exclude='*.pyc')
# gzip -n: no name or time in the gzip header.
tar -C "$work" -cf - "${tar_opts[@]}" vendor | gzip -n -9 >"$top/SOURCES/gpu-node-agent-vendor-$version.tar.gz"

# Source0: what the spec installs from the checkout.
tar -C "$repo" -cf - "${tar_opts[@]}" --transform "s,^,gpu-node-agent-$version/," \
  agent systemd docs/operations.md rpm.spec LICENSE packaging/licenses \
  packaging/gpu-node-agent-launcher.py packaging/config.yaml packaging/50-gpu-node-agent.preset |
  gzip -n -9 >"$top/SOURCES/gpu-node-agent-$version.tar.gz"

# The source package lists the sources and the spec with their modes and mtimes: the same whatever
# the umask and whenever the checkout was written (rpm only clamps mtimes newer than the epoch).
install -D -m 0644 "$spec" "$top/SPECS/rpm.spec"
spec="$top/SPECS/rpm.spec"
chmod 0644 "$top"/SOURCES/*
touch -d "@$SOURCE_DATE_EPOCH" "$top"/SOURCES/* "$spec"
# The source package keeps the parsed spec: the 3.9 goes in by name, first on PATH, not by its path.
mkdir "$work/bin"
ln -s "$python39" "$work/bin/python3.9"
PATH="$work/bin:$PATH" rpmbuild -ba --quiet --define "_topdir $top" --define "agent_python python3.9" "$spec"

mkdir -p "$outdir"
for package in "$top"/RPMS/noarch/*.rpm "$top"/SRPMS/*.src.rpm; do
  cp "$package" "$outdir"/
  echo "build-rpm: $outdir/$(basename "$package")"
done
