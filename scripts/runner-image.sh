#!/usr/bin/env bash
# Builds job images ("runner images") from Debian's packages, one per Python:
#
#   scripts/runner-image.sh                 the default image: Python 3.11 (ci-python-runner:3.11)
#   scripts/runner-image.sh --python 3.13   the image of another Python this script knows
#   scripts/runner-image.sh --all           every Python this script knows
#
# Each image is tagged ci-python-runner:<X.Y> and by the hash of its recipe (this
# script, the Dockerfile, the host CA bundle), and labelled ci.python=<X.Y>: the
# controller finds the Pythons on offer by that label. A build is skipped when the
# image for the current recipe exists. Prints the name of each image.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${CI_RUNNER_IMAGE_NAME:-ci-python-runner}
ca=/etc/ssl/certs/ca-certificates.crt
default_python=3.11

# The Debian suite that gives each Python.
suite_of() {
  case "$1" in
    3.11) echo bookworm ;;
    3.13) echo trixie ;;
    3.14) echo forky ;;
    *) return 1 ;;
  esac
}
known="3.11 3.13 3.14"

# What a fresh official Python image gives a project: the interpreter with venv,
# its headers and a C compiler (for packages without a fitting wheel), git, the
# time-zone database, CA certificates. pytest is not taken from Debian: the
# Dockerfile installs the current release beside the job's environment.
packages=python3,python3-venv,python3-dev,gcc,g++,make,libc6-dev,git,tzdata,ca-certificates

build() {
  local python=$1 suite recipe base
  suite=$(suite_of "$python") || {
    echo "runner-image: no recipe for Python $python (known: $known)" >&2
    exit 2
  }
  recipe=$( (cat "$here/scripts/runner-image.sh" "$here/runner-image/Dockerfile" "$ca"; echo "$packages $suite") | sha256sum | cut -c1-16)
  local image="$name:$python-$recipe"

  if ! docker image inspect "$image" >/dev/null 2>&1; then
    base="$name-base:$python-$recipe"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
      if ! command -v mmdebstrap >/dev/null 2>&1; then
        echo "runner-image: installing mmdebstrap" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq mmdebstrap >/dev/null
      fi
      local work
      work=$(mktemp -d)
      echo "runner-image: building the Debian $suite root file system for Python $python (about a minute)" >&2
      # The mirror may serve a frozen snapshot whose Release files have passed
      # their Valid-Until date; their signatures are still checked.
      mmdebstrap --quiet --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
        --include="$packages" "$suite" "$work/rootfs.tar" >&2
      docker import "$work/rootfs.tar" "$base" >/dev/null
      rm -rf "$work"
    fi
    local ctx
    ctx=$(mktemp -d)
    cp "$here/runner-image/Dockerfile" "$ca" "$ctx/"
    echo "runner-image: building $image" >&2
    local unlabelled="$name-unlabelled:$python-$recipe"
    docker build --quiet --build-arg "BASE=$base" -t "$unlabelled" "$ctx" >&2
    rm -rf "$ctx"
    # The labels say which Python the image really runs: the controller
    # chooses images by them.
    local actual
    actual=$(docker run --rm --network none "$unlabelled" python -c 'import platform; print(platform.python_version())')
    case "$actual" in
      "$python".*) ;;
      *)
        echo "runner-image: the image for Python $python runs Python $actual" >&2
        docker image rm -f "$unlabelled" >/dev/null
        exit 1 ;;
    esac
    printf 'FROM %s\nLABEL ci.python="%s" ci.python.version="%s"\n' "$unlabelled" "$python" "$actual" |
      docker build --quiet -t "$image" - >&2
    docker image rm "$unlabelled" >/dev/null
  fi
  docker tag "$image" "$name:$python"
  echo "$image"
}

case "${1:-}" in
  "") build "$default_python" ;;
  --python)
    [ -n "${2:-}" ] || { echo "usage: $0 [--python X.Y | --all]" >&2; exit 2; }
    build "$2" ;;
  --all) for python in $known; do build "$python"; done ;;
  *) echo "usage: $0 [--python X.Y | --all]" >&2; exit 2 ;;
esac
