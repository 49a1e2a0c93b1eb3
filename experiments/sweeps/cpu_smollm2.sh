#!/bin/sh
# The CPU table of SmolLM2-135M (issues 12 and 15) as one resumable chain of sweeps, in this order:
#   cpu_smollm2_pilot          learning-rate grids of MeZO, MeZO-GV, MeZO-Greedy and FT on SST-2
#   cpu_smollm2                the table: 4 tasks x 3 seeds at the pilot's choices (lr_from)
#   cpu_smollm2_subzero_pilot  learning-rate grids of SubZero and SubZero-GV on SST-2
#   cpu_smollm2_subzero        the SubZero rows: SST-2 and COPA x 3 seeds at their pilot's choices
#   cpu_smollm2_centred_pilot  the centred-loss estimate (beyond the paper), SST-2
# Each sweep skips finished cells and resumes a started one from its checkpoint, so running this again
# after a stop continues where it stopped; a sweep that is stopped (or refuses to start) ends the chain.
#
#   nohup sh experiments/sweeps/cpu_smollm2.sh >> cpu_smollm2.log 2>&1 &    # from the repository root
#   pkill -TERM -f "zojax.cli sweep|zojax sweep"                            # pause: the running cell checkpoints
#   pkill -USR1 -f "zojax.cli sweep|zojax sweep"                            # drain: it finishes, no new cell starts
#   zojax table --spec experiments/sweeps/cpu_smollm2.toml --spec experiments/sweeps/cpu_smollm2_subzero.toml
#
# ZOJAX overrides the command (default `zojax`), e.g. ZOJAX="python -m zojax.cli" from a source tree.
set -e
ZOJAX=${ZOJAX:-zojax}
for spec in cpu_smollm2_pilot cpu_smollm2 cpu_smollm2_subzero_pilot cpu_smollm2_subzero cpu_smollm2_centred_pilot; do
    echo "[cpu_smollm2.sh] $(date -u +%FT%TZ) zojax sweep experiments/sweeps/$spec.toml"
    $ZOJAX sweep "experiments/sweeps/$spec.toml" --no-progress
done
