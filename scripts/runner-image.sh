#!/usr/bin/env bash
# Builds the default job image from Debian's packages. Tags it by the hash of
# its recipe (this script, the Dockerfile, the host CA bundle) and by a stable
# name; skips the build when the image for the current recipe already exists.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${CI_RUNNER_IMAGE_NAME:-ci-python-runner}
ca=/etc/ssl/certs/ca-certificates.crt
packages=python3,python3-pytest,python3-pip,python3-venv,ca-certificates

recipe=$( (cat "$here/scripts/runner-image.sh" "$here/runner-image/Dockerfile" "$ca"; echo "$packages") | sha256sum | cut -c1-16)

if docker image inspect "$name:$recipe" >/dev/null 2>&1; then
  docker tag "$name:$recipe" "$name:latest"
  echo "$name:$recipe"
  exit 0
fi

base="$name-base:$recipe"
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "runner-image: installing mmdebstrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mmdebstrap >/dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "runner-image: building the Debian root file system (about a minute)" >&2
  mmdebstrap --quiet --variant=apt --include="$packages" bookworm "$work/rootfs.tar" >&2
  docker import "$work/rootfs.tar" "$base" >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx" ${work:+"$work"}' EXIT
cp "$here/runner-image/Dockerfile" "$ca" "$ctx/"
echo "runner-image: building $name:$recipe" >&2
docker build --quiet --build-arg "BASE=$base" -t "$name:$recipe" -t "$name:latest" "$ctx" >&2
echo "$name:$recipe"
