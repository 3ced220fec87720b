#!/usr/bin/env bash
# Writes an sbatch script that runs a command (or, as a job array, one line of a file per task)
# with one JAX process per node, and submits it. See usage() below, or run with -h.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: scripts/launch_slurm.sh [options] --nodes N --time T -- COMMAND...
       scripts/launch_slurm.sh [options] --nodes N --time T --array-file FILE [--array SPEC]

Submits a SLURM job that runs COMMAND on every node (one process per node, seeing the node's
GPUs), from this checkout (a shared file system) inside its .venv. With --array-file it submits a
job array instead: task i runs line i of FILE (counting from 0), each task on its own N nodes.

Every process gets, for jax.distributed.initialize (infini_jax/distributed.py reads them):
  INFINI_COORDINATOR    host:port of process 0 (the first node of SLURM_JOB_NODELIST, from
                        scontrol show hostnames; port --port, or 20000 + SLURM_JOB_ID % 20000)
  INFINI_NUM_PROCESSES  SLURM_NNODES
  INFINI_PROCESS_ID     SLURM_PROCID (0 .. N-1)

Required:
  --nodes N             nodes per run
  --time T              wall-clock limit, e.g. 24:00:00 or 2-00:00:00
Options:
  --gpus-per-node G     (default 8)
  --partition P         (default: the cluster's)
  --job-name NAME       (default infini_jax)
  --array-file FILE     one command per line, no blank lines; makes a job array
  --array SPEC          which tasks of the array to run, e.g. 0-7%2 or 3,5 (default: every line)
  --port PORT           the coordinator's port
  --logs DIR            where SLURM writes each job's output (default: slurm_logs)
  --venv DIR            the virtual environment to activate (default: .venv of this checkout)
  --env KEY=VALUE       exported before the command (repeatable)
  --sbatch OPTION       an extra #SBATCH line, e.g. --sbatch=--account=proj (repeatable)
  --dry-run             print the sbatch script and the sbatch command; submit nothing
  -h, --help            this message
Example:
  scripts/launch_slurm.sh --nodes 2 --time 24:00:00 --partition gpu -- \
    python -m infini_jax.train --gin_file=configs/8b.gin --gin_file=configs/meshes/h100x8.gin
EOF
}




NODES="" TIME="" GPUS=8 PARTITION="" JOB_NAME=infini_jax COMMANDS_FILE="" ARRAY="" PORT=""
LOGS=slurm_logs VENV=$ROOT/.venv DRY_RUN=0
ENVS=() EXTRA=() COMMAND=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --*=*) flag=${1%%=*}; value=${1#*=}; shift; set -- "$flag" "$value" "$@" ;;
    --nodes) need_value "$@"; NODES=$2; shift 2 ;;
    --time) need_value "$@"; TIME=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; GPUS=$2; shift 2 ;;
    --partition) need_value "$@"; PARTITION=$2; shift 2 ;;
    --job-name) need_value "$@"; JOB_NAME=$2; shift 2 ;;
    --array-file) need_value "$@"; COMMANDS_FILE=$2; shift 2 ;;
    --array) need_value "$@"; ARRAY=$2; shift 2 ;;
    --port) need_value "$@"; PORT=$2; shift 2 ;;
    --logs) need_value "$@"; LOGS=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --env) need_value "$@"; [[ $2 == *=* ]] || die "--env needs KEY=VALUE, got '$2'"
           ENVS+=("$2"); shift 2 ;;
    --sbatch) [[ $# -ge 2 && -n $2 ]] || die "--sbatch needs a value"; EXTRA+=("$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; COMMAND=("$@"); break ;;
    *) die "unknown argument '$1' (the command to run goes after --)" ;;
  esac
done

[[ -n $NODES ]] || die "missing required flag --nodes"
[[ -n $TIME ]] || die "missing required flag --time (e.g. --time 24:00:00)"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
[[ $GPUS =~ ^[0-9]+$ ]] || die "--gpus-per-node must be an integer, got '$GPUS'"
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || die "--port must be an integer, got '$PORT'"
if [[ -n $COMMANDS_FILE ]]; then
  [[ ${#COMMAND[@]} -eq 0 ]] || die "give either --array-file FILE or a command after --, not both"
  [[ -f $COMMANDS_FILE ]] || die "--array-file: no file $COMMANDS_FILE"
  mapfile -t LINES < "$COMMANDS_FILE"
  [[ ${#LINES[@]} -gt 0 ]] || die "--array-file: $COMMANDS_FILE is empty"
  for i in "${!LINES[@]}"; do
    [[ -n ${LINES[i]//[[:space:]]/} ]] \
      || die "--array-file: line $((i + 1)) of $COMMANDS_FILE is blank (task i runs line i, so none may be)"
  done
  ARRAY=${ARRAY:-0-$((${#LINES[@]} - 1))}
else
  [[ -z $ARRAY ]] || die "--array needs --array-file FILE (one command per array task)"
  [[ ${#COMMAND[@]} -gt 0 ]] || die "missing the command to run after -- (or --array-file FILE)"
fi

[[ $LOGS == /* ]] || LOGS=$ROOT/$LOGS
if [[ -n $ARRAY ]]; then OUT="$LOGS/%x-%A_%a.out"; else OUT="$LOGS/%x-%j.out"; fi

sbatch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$(quote "$JOB_NAME")"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  [[ $GPUS == 0 ]] || echo "#SBATCH --gpus-per-node=$GPUS"
  echo "#SBATCH --time=$TIME"
  [[ -z $PARTITION ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z $ARRAY ]] || echo "#SBATCH --array=$ARRAY"
  echo "#SBATCH --output=$OUT"
  for option in "${EXTRA[@]+"${EXTRA[@]}"}"; do echo "#SBATCH $option"; done
  echo "set -euo pipefail"
  echo "cd $(quote "$ROOT")"
  echo "source $(quote "$VENV")/bin/activate"
  for kv in "${ENVS[@]+"${ENVS[@]}"}"; do echo "export ${kv%%=*}=$(quote "${kv#*=}")"; done
  echo "# jax.distributed.initialize: process 0 on the first node; one process per node."
  echo "export INFINI_COORDINATOR=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1):${PORT:-\$((20000 + SLURM_JOB_ID % 20000))}\""
  echo "export INFINI_NUM_PROCESSES=\$SLURM_NNODES"
  # INFINI_PROCESS_ID differs per task, so it is set inside srun, from SLURM_PROCID.
  local each='export INFINI_PROCESS_ID=$SLURM_PROCID;'
  if [[ -n $COMMANDS_FILE ]]; then
    echo "# Task i runs line i of $(quote "$COMMANDS_FILE") (counting from 0)."
    echo "COMMANDS=("
    for command in "${LINES[@]}"; do echo "  $(quote "$command")"; done
    echo ")"
    echo "COMMAND=\${COMMANDS[\$SLURM_ARRAY_TASK_ID]}"
    echo "echo \"task \$SLURM_ARRAY_TASK_ID: \$COMMAND\""
    echo "srun --kill-on-bad-exit=1 bash -c '$each eval \"\$1\"' task \"\$COMMAND\""
  else
    echo "srun --kill-on-bad-exit=1 bash -c '$each exec \"\$@\"' task $(line "${COMMAND[@]}")"
  fi
}

SCRIPT=$(sbatch_script)
FILE=$LOGS/$JOB_NAME-$(date +%Y%m%d-%H%M%S).sbatch
if [[ $DRY_RUN == 1 ]]; then
  echo "# $FILE"
  echo "$SCRIPT"
  echo "sbatch $(quote "$FILE")"
  exit 0
fi
mkdir -p "$LOGS"
echo "$SCRIPT" > "$FILE"
echo "launch_slurm.sh: wrote $FILE" >&2
sbatch "$FILE"
