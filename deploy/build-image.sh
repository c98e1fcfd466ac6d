#!/usr/bin/env bash
# Builds the dtc container image on a machine without a registry: the release
# binary and the shared libraries `ldd` names, onto `scratch`, with a
# non-root user (uid 10001, from a passwd file) and a /data volume. It is the
# image deploy/Dockerfile describes, without pulling a base image.
#
#   deploy/build-image.sh             cargo build --release -p dtc-cli, then build
#   deploy/build-image.sh --no-build  use target/release/dtc as it is
#
# Tags dtc:VERSION (the binary's own --version) and dtc:latest; prints the
# version tag on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

build=true
case "${1:-}" in
  "") ;;
  --no-build) build=false ;;
  *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

if $build; then
  cargo build --release -p dtc-cli
fi
bin=target/release/dtc
if [ ! -x "$bin" ]; then
  echo "build-image.sh: $bin is missing; run without --no-build" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "build-image.sh: no Docker engine answers (docker info failed)" >&2
  exit 3
fi
version=$("$bin" --version | awk '{print $2}')
if [ -z "$version" ]; then
  echo "build-image.sh: cannot read the version from $bin --version" >&2
  exit 1
fi

ctx=$(mktemp -d -t dtc-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$ctx/data"
cp "$bin" "$root/usr/local/bin/dtc"

# Every library the loader would map, at the path it has on this machine
# (symlinks followed: the loader of /lib64 is a link into /lib on Debian).
libs=$(ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}')
if [ -z "$libs" ]; then
  echo "build-image.sh: ldd lists no libraries for $bin (a static binary needs none, but this one is not)" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# A user to run as, so the process is not root in the container; and host
# names through /etc/hosts then DNS (Docker's resolver gives the peers'
# addresses by service name).
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
dtc:x:10001:10001:dtc:/data:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
dtc:x:10001:
GROUP
echo "hosts: files dns" >"$root/etc/nsswitch.conf"

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
# /data and /tmp belong to the dtc user: a new named volume on /data takes
# this ownership, so the node can write its data without root.
COPY --chown=10001:10001 data/ /data/
COPY --chown=10001:10001 data/ /tmp/
ENV PATH=/usr/local/bin
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
LABEL org.opencontainers.image.title="dtc" org.opencontainers.image.version="$version"
ENTRYPOINT ["/usr/local/bin/dtc"]
DOCKERFILE

docker build --quiet -t "dtc:$version" -t dtc:latest "$ctx" >/dev/null
echo "built dtc:$version and dtc:latest from $bin" >&2
echo "dtc:$version"
