#!/usr/bin/env bash
# Install Debian packages whose programs are missing, with one `apt-get update` first.
#
#   scripts/apt_ensure.sh PROGRAM=PACKAGE ...
#
# PROGRAM is a command looked up on PATH, or an absolute path (a glob is allowed, e.g.
# /usr/lib/postgresql/*/bin/initdb); an empty PROGRAM (`=PACKAGE`) means "install it".
# Nothing happens when every program is already there.
set -euo pipefail

missing=()
for pair in "$@"; do
    program=${pair%%=*}
    package=${pair#*=}
    if [[ -z $program ]]; then
        :
    elif [[ $program == /* ]]; then
        compgen -G "$program" >/dev/null && continue
    else
        command -v "$program" >/dev/null 2>&1 && continue
    fi
    missing+=("$package")
done
((${#missing[@]})) || exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "==> apt-get update (to install: ${missing[*]})"
"${sudo[@]}" apt-get update -qq
echo "==> apt-get install ${missing[*]} (Debian packages; a minute or two)"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${missing[@]}" >/dev/null
