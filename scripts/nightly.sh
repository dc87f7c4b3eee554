#!/usr/bin/env bash
# Nightly-style durability run (manual or a timer; not CI): the crash battery with many more rounds than CI's 50,
# each with a fresh random seed unless CAFS_CRASH_SEED is given (the seed is printed, so a failure can be
# replayed), then the live-restart test a few times over, then the soak. Run as root, from the repository.
#   CAFS_NIGHTLY_ROUNDS   crash-battery rounds              [default: 500]
#   CAFS_NIGHTLY_RESTARTS runs of the live-restart test     [default: 10]
#   CAFS_SOAK_SECONDS     soak length (0: no soak)          [default: 3600]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh
cafs_install_deps
seed=${CAFS_CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
cafs_log "crash battery: ${CAFS_NIGHTLY_ROUNDS:-500} rounds, seed $seed"
CAFS_CRASH_ITERATIONS=${CAFS_NIGHTLY_ROUNDS:-500} CAFS_CRASH_SEED=$seed \
  cargo test --locked -p cafs-tests --test crash -- random_workloads_killed_at_random_points --nocapture
for i in $(seq "${CAFS_NIGHTLY_RESTARTS:-10}"); do
  cafs_log "live restart, run $i"
  cargo test --locked -p cafs-tests --test restart -- --nocapture
done
if [ "${CAFS_SOAK_SECONDS:-3600}" != 0 ]; then
  cafs_log "soak"
  bench/soak.sh
fi
cafs_log "nightly run passed (crash seed $seed)"
