#!/usr/bin/env bash
# Journal replay at scale: the recovery time of 100,000 uncommitted files (target: at most 2 s).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p cafs-core --bench journal -- "${1:-100000}" 2>/dev/null
