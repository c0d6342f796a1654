#!/usr/bin/env bash
# Shared helpers of the launch scripts: --dry-run handling, required variables.
# shellcheck shell=bash

DRY_RUN=0
EXTRA_ARGS=()

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --) shift; EXTRA_ARGS+=("$@"); break ;;
      -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) EXTRA_ARGS+=("$1") ;;
    esac
    shift
  done
}

require() {
  local name missing=0
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: $name is not set (see the header of $0)" >&2
      missing=1
    fi
  done
  [[ $missing -eq 0 ]] || exit 2
}

# Print a command, then run it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then
    "$@"
  fi
}
