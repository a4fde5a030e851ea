#!/usr/bin/env bash
# Makes the local base image the compose test builds Flotilla's image on, for
# machines whose Docker engine cannot pull: a minimal Debian bookworm made with
# debootstrap (from Debian's package mirror) and loaded with `docker import`.
# Prints the image name; does nothing if the image exists.
set -euo pipefail
image="${1:-flotilla-base:bookworm}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >&2
fi
root="$(mktemp -d /tmp/flotilla-rootfs-XXXXXX)"
trap 'rm -rf "$root"' EXIT
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
# Documentation and caches are not needed to run a binary.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$image" >&2
echo "$image"
