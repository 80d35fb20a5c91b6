#!/usr/bin/env bash
# deepbleed-bids on a SLURM cluster: one array task per participant.
#
# Every task runs the participant level for one participant, all into the same output
# folder (safe: outputs are written atomically and dataset_description.json is created
# once), each with its own work folder on scratch.
#
#   N=$(tail -n +2 /data/bids/participants.tsv | grep -c .)    # number of participants
#   mkdir -p logs
#   sbatch --array=1-"$N"%20 docs/slurm_array.sh              # at most 20 at a time
#
# Settings (environment variables; export them or edit the defaults below):
#   BIDS_DIR   the BIDS dataset                      (default /data/bids)
#   OUT_DIR    the output folder                     (default /data/derivatives/deepbleed)
#   WORK_ROOT  scratch for nipype work folders       (default /scratch/$USER/deepbleed-work)
#   SIF        the Apptainer/Singularity image; empty: the `run.py` of a pip install on PATH
#   EXTRA      more options for run.py, e.g. "--model synthetic-demo"
#   KEEP_WORK  1: keep the task's work folder after a successful run
#   DRY_RUN    1: print the command instead of running it
# The images carry the template and the published weights; without an image, fetch them
# once on a login node first (compute nodes often have no internet access):
#   DEEPBLEED_HOME=/shared/deepbleed deepbleed-bids fetch template weights
# and export the same DEEPBLEED_HOME in this script's environment.
#
# For a GPU: add `#SBATCH --gres=gpu:1`; the image then runs with --nv.
#
#SBATCH --job-name=deepbleed
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=logs/deepbleed_%A_%a.out

set -euo pipefail

BIDS_DIR=${BIDS_DIR:-/data/bids}
OUT_DIR=${OUT_DIR:-/data/derivatives/deepbleed}
WORK_ROOT=${WORK_ROOT:-/scratch/${USER:-deepbleed}/deepbleed-work}
SIF=${SIF:-}
EXTRA=${EXTRA:-}
TASK=${SLURM_ARRAY_TASK_ID:?"submit with sbatch --array=1-N (SLURM_ARRAY_TASK_ID is not set)"}

# The participant of this task: line TASK of participants.tsv (after its header), or else
# the TASK-th sub-* folder.
if [[ -f "$BIDS_DIR/participants.tsv" ]]; then
    SUBJECT=$(awk -F'\t' -v n="$TASK" 'NR > 1 && $1 != "" {i++; if (i == n) {print $1; exit}}' \
        "$BIDS_DIR/participants.tsv")
else
    SUBJECT=$(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sort \
        | sed -n "${TASK}p")
fi
if [[ -z "${SUBJECT:-}" ]]; then
    echo "deepbleed: array task $TASK has no participant in $BIDS_DIR (fewer participants than tasks)" >&2
    exit 2
fi
LABEL=${SUBJECT#sub-}
WORK="$WORK_ROOT/sub-$LABEL"
CPUS=${SLURM_CPUS_PER_TASK:-1}
MEM_GB=$(( ${SLURM_MEM_PER_NODE:-0} / 1024 ))   # SLURM gives MB

ARGS=("$BIDS_DIR" "$OUT_DIR" participant --participant-label "$LABEL" --work-dir "$WORK"
      --nprocs "$CPUS" --omp-nthreads "$CPUS")
if (( MEM_GB > 0 )); then ARGS+=(--mem "${MEM_GB}G"); fi
# shellcheck disable=SC2206  # EXTRA is split into words on purpose
if [[ -n "$EXTRA" ]]; then ARGS+=($EXTRA); fi

if [[ -n "$SIF" ]]; then
    RUNTIME=$(command -v apptainer || command -v singularity || echo apptainer)
    NV=()
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then NV=(--nv); fi
    CMD=("$RUNTIME" run ${NV[@]+"${NV[@]}"} --cleanenv
         -B "$BIDS_DIR:$BIDS_DIR:ro" -B "$OUT_DIR" -B "$WORK" "$SIF" "${ARGS[@]}")
else
    CMD=(run.py "${ARGS[@]}")
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
mkdir -p "$OUT_DIR" "$WORK"
echo "deepbleed: task $TASK -> sub-$LABEL on $(hostname), $CPUS CPUs, ${MEM_GB} GB" >&2
"${CMD[@]}"
if [[ "${KEEP_WORK:-0}" != 1 ]]; then rm -rf "$WORK"; fi
