#!/bin/sh
# Generates ./configure from configure.ac (needs autoconf, automake, pkg-config, autoconf-archive).
set -e
cd "$(dirname "$0")"
autoreconf --install --force
