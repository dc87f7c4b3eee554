#!/usr/bin/env bash
# MD5 throughput: cafs's block hashing beside `openssl speed` on the same machine, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p cafs-core --bench md5 2>/dev/null
openssl speed -evp md5 -bytes 1048576 -seconds 3 2>/dev/null | awk '/^md5/ {printf "openssl speed -evp md5 -bytes 1048576: %.0f MiB/s (%.0f MB/s)\n", $2*1000/1048576, $2/1000}'
