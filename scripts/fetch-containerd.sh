#!/usr/bin/env bash
# Fetch the containerd daemons the tests run besides Debian 12's own (scripts/containerd-versions.txt:
# 1.7 from trixie, 2.x from forky) from Debian's archive and extract them into
# .cache/containerd/<version>/ (usr/bin/containerd, ctr, containerd-shim-runc-v2).
#
# A private apt configuration: its own sources list (the Debian archive URI this machine's apt sources
# already use, suites from the versions file, component main, signed by debian-archive-keyring), its
# own lists and cache directories (a temporary directory). apt verifies the archive's signatures
# and the package's hash; the machine's apt sources, lists, cache and installed packages stay as they
# are. Idempotent: a version already extracted is only checked (its binaries run and say their version).
# Needs no root. Exit 1 with one line when a pin is no longer served or a binary does not run.
#   scripts/fetch-containerd.sh            every pin
#   scripts/fetch-containerd.sh 2 [1.7]    only the pins of these series (2: every 2.x)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=scripts/containerd-versions.txt
CACHE=.cache/containerd
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BINARIES=(containerd ctr containerd-shim-runc-v2)

die() { echo "fetch-containerd: $*" >&2; exit 1; }

# series suite version, one per line
mapfile -t PINS < <(grep -Ev '^[[:space:]]*(#|$)' "$VERSIONS")
((${#PINS[@]})) || die "$VERSIONS: no pins"
if (($#)); then
  chosen=()
  for pin in "${PINS[@]}"; do
    read -r series _ <<<"$pin"
    for want in "$@"; do
      case "$series" in "$want" | "$want".*) chosen+=("$pin"); break;; esac
    done
  done
  ((${#chosen[@]})) || die "$VERSIONS: no pin of series $*"
  PINS=("${chosen[@]}")
fi

# The upstream release of a Debian version: 1.7.24~ds1-6+deb13u1 -> 1.7.24, 2.1.9+ds1-5 -> 2.1.9
# (containerd prints 1.7.24~ds1 and 2.1.9+unknown).
upstream() { local v=${1%-*}; v=${v%%~*}; echo "${v%%+*}"; }

# A version is ready when every binary runs and containerd names the pinned upstream version.
check() {
  local version=$1 dir="$CACHE/$1/usr/bin" bin out
  for bin in "${BINARIES[@]}"; do
    [ -x "$dir/$bin" ] || return 1
  done
  out=$("$dir/containerd" --version 2>&1) || die "$dir/containerd --version failed: ${out//$'\n'/ }"
  case "$out " in *" $(upstream "$version")"[!0-9.]* | *" v$(upstream "$version")"[!0-9.]*) ;;
    *) die "$dir/containerd --version says '$out', not $(upstream "$version")";; esac
  out=$("$dir/ctr" --version 2>&1) || die "$dir/ctr --version failed: ${out//$'\n'/ }"
  out=$("$dir/containerd-shim-runc-v2" -v 2>&1) || die "$dir/containerd-shim-runc-v2 -v failed: ${out//$'\n'/ }"
}

missing=()
for pin in "${PINS[@]}"; do
  read -r series suite version <<<"$pin"
  [ -n "$version" ] || die "$VERSIONS: '$pin': want 'series suite version'"
  check "$version" || missing+=("$pin")
done
if ((${#missing[@]} == 0)); then
  for pin in "${PINS[@]}"; do read -r series suite version <<<"$pin"; echo "fetch-containerd: ok $series $version"; done
  exit 0
fi

# The Debian archive this machine already uses (deb822 URIs: or one-line deb entries), not security.
archive=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null \
  | sed -nE -e 's#^[[:space:]]*URIs:[[:space:]]*##p' -e 's#^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*#\2#p' \
  | tr ' ' '\n' | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true)
[ -n "$archive" ] || die "no Debian archive URI (…/debian) in /etc/apt/sources.list.d/ or /etc/apt/sources.list"
[ -r "$KEYRING" ] || die "$KEYRING missing (install debian-archive-keyring)"

# The private apt state lives in a directory of its own under /tmp, removed on exit: apt downloads as
# its sandbox user _apt (when run as root), which must reach it (a checkout under /root is not).
APT_DIR=$(mktemp -d /tmp/fetch-containerd.XXXXXX)
extract=""
trap 'rm -rf "$APT_DIR" ${extract:+"$extract"}' EXIT
chmod 755 "$APT_DIR"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/download"
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$APT_DIR/download"; fi
download=$APT_DIR/download
: >"$APT_DIR/sources.list.tmp"
for suite in $(for pin in "${PINS[@]}"; do read -r _ s _ <<<"$pin"; echo "$s"; done | sort -u); do
  echo "deb [signed-by=$KEYRING] $archive $suite main" >>"$APT_DIR/sources.list.tmp"
done
mv "$APT_DIR/sources.list.tmp" "$APT_DIR/sources.list"
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" -o Dir::Etc::sourceparts=/dev/null
  -o Dir::Etc::preferencesparts=/dev/null -o "Dir::Etc::preferences=/dev/null"
  -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
  -o Acquire::Languages=none -o APT::Get::List-Cleanup=true
)
log=$APT_DIR/update.log
if ! apt-get "${APT_OPTS[@]}" -q update >"$log" 2>&1 || grep -qE '^(W|E): ' "$log"; then
  die "apt-get update ($archive) failed: $(grep -E '^(W|E): ' "$log" | head -n1)"
fi

for pin in "${missing[@]}"; do
  read -r series suite version <<<"$pin"
  served=$(apt-cache "${APT_OPTS[@]}" madison containerd | awk -F' [|] ' -v s="$suite/main" '$3 ~ " "s" " {print $2}' | paste -sd, -)
  case ",$served," in *",$version,"*) ;;
    *) die "pin containerd $version ($series, $suite) is no longer served by $archive $suite: it serves ${served:-no containerd} (update $VERSIONS)";; esac
  rm -f "$download"/containerd_*.deb
  if ! (cd "$download" && apt-get "${APT_OPTS[@]}" -q download "containerd=$version" >"$APT_DIR/download.log" 2>&1) \
      || grep -qE '^(W|E): ' "$APT_DIR/download.log"; then
    die "apt-get download containerd=$version ($archive $suite) failed: $(grep -E '^(W|E): ' "$APT_DIR/download.log" | head -n1)"
  fi
  deb=$(ls "$download"/containerd_*.deb)
  mkdir -p "$CACHE"
  extract=$(mktemp -d "$CACHE/.extract.XXXXXX")
  dpkg-deb -x "$deb" "$extract"
  rm -rf "${CACHE:?}/$version"
  mv "$extract" "$CACHE/$version"
  extract=""
  rm -f "$deb"
  check "$version" || die "$CACHE/$version: missing one of ${BINARIES[*]} after extracting $deb"
  echo "fetch-containerd: fetched $series $version ($archive $suite)"
done
for pin in "${PINS[@]}"; do
  read -r series suite version <<<"$pin"
  case " ${missing[*]} " in *" $version"*) ;; *) echo "fetch-containerd: ok $series $version";; esac
done
