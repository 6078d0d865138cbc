#!/usr/bin/env bash
# Rebuilds dist/ (committed, shipped as package data: installing omnimember needs no node) from
# package-lock.json: run it after changing src/ or package.json, then commit dist/ and the lock file.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --ignore-scripts  # esbuild needs no install script
npm run build
ls -l dist/
