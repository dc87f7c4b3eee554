#!/usr/bin/env bash
# Manifest codec at scale: parse + normalize + write of a 1,000,000-file manifest, with peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p cafs-core --bench manifest -- "${1:-1000000}" 2>/dev/null
