#!/usr/bin/env bash
# A Plummer-16 star cluster in the field of a host galaxy, run from the command line with the
# pretrained learned dt and compared with the free-fall rule tuned to the same gate.
#
# point-mass-host: the tidal field of a galaxy of mass 1000 at distance 50 (the cluster's circular
# orbit has the period 2 pi sqrt(50^3 / 1000) = 70 time units; the cluster, of mass 1 and radius
# about 1, lies well inside its tidal radius 50 (1 / 3000)^(1/3) = 3.5). The energy the gate checks
# is the Jacobi energy E - Omega L_z, which this field conserves.
set -euo pipefail

HOST=(--field point-mass-host --field-option mass=1000 --field-option distance=50)
CLUSTER=(--preset plummer --n 16 --seed 1)

# fly the learned dt for 5 time units, with the guard retrying any step over the threshold
nbtoolkit simulate "${CLUSTER[@]}" "${HOST[@]}" --predictor learned --guard --t-end 5 --quiet

# learned dt against the tuned free-fall rule (its eta chosen so that every step passes the gate)
nbtoolkit evaluate "${CLUSTER[@]}" "${HOST[@]}" --t-end 5 --predictor learned --rules freefall

# the same cluster at the centre of a static Plummer galaxy of mass 100 and scale radius 10
nbtoolkit simulate "${CLUSTER[@]}" --field plummer-host --field-option mass=100 --field-option radius=10 \
    --predictor learned --guard --t-end 5 --quiet
