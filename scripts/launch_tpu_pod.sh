#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM slice and streams worker 0's log.
# See usage() below, or run with -h.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: scripts/launch_tpu_pod.sh [options] --name NAME --zone ZONE --accelerator TYPE -- COMMAND...
       scripts/launch_tpu_pod.sh [options] --name NAME --zone ZONE --stop

Creates the TPU VM slice NAME (or reuses it if it exists), puts the code on every worker,
installs it (scripts/setup.sh, then the TPU build of jax), starts COMMAND on every worker
(--worker=all) inside the project's .venv, and follows worker 0's log until the run ends.
The run is detached: stopping the log (Ctrl-C) does not stop it; --stop does.

Required (flag, or environment variable):
  --name NAME           TPU VM name                                  INFINI_TPU_NAME
  --zone ZONE           e.g. us-east5-a                              INFINI_TPU_ZONE
  --accelerator TYPE    e.g. v5p-64, v5litepod-16, v6e-32, v4-32     INFINI_TPU_ACCELERATOR
                        (only needed to create the slice)
Options:
  --version VERSION     TPU runtime (INFINI_TPU_VERSION); default by generation: v5p
                        v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e,
                        v4 tpu-ubuntu2204-base
  --project PROJECT     Google Cloud project (INFINI_TPU_PROJECT; default: gcloud's)
  --spot                create the slice as Spot VMs (preemptible; the trainer saves on SIGTERM)
  --ref REF             git clone --repo at REF (branch, tag or commit) on every worker, instead
                        of copying this checkout's files (tracked + untracked, not ignored)
  --repo URL            repository for --ref (default: this checkout's "origin" remote)
  --dir DIR             code directory on the workers, relative to home (default: infini_jax)
  --python PYTHON       interpreter for .venv on the workers (default: python3.11; installed with
                        apt if missing, since the stack needs Python >= 3.11)
  --pip SPEC            installed into .venv after setup.sh (default: jax[tpu] at the version
                        setup.sh installed; "" installs nothing)
  --env KEY=VALUE       exported on every worker before COMMAND (repeatable)
  --stop                stop the run started by this script on every worker, and exit
  --dry-run             print every command, one per line, and run none
  -h, --help            this message

On the workers: DIR/launch.log (each worker's output), DIR/launch.pid, DIR/launch.exit.
Example:
  scripts/launch_tpu_pod.sh --name infini-v5p --zone us-east5-a --accelerator v5p-64 -- \
    python -m infini_jax.train --gin_file=configs/1b.gin --gin_file=configs/meshes/tpu_v5p_pod.gin \
    --gin.MODEL_DIR="'gs://my-bucket/runs/1b'"
EOF
}




# Prints the command (--dry-run) or runs it.
run() {
  if [[ $DRY_RUN == 1 ]]; then line "$@"; echo; else "$@"; fi
}

NAME=${INFINI_TPU_NAME:-}
ZONE=${INFINI_TPU_ZONE:-}
ACCELERATOR=${INFINI_TPU_ACCELERATOR:-}
VERSION=${INFINI_TPU_VERSION:-}
PROJECT=${INFINI_TPU_PROJECT:-}
SPOT=0 REF="" REPO="" DIR=infini_jax PY=python3.11 PIP=default STOP=0 DRY_RUN=0
ENVS=()
COMMAND=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --*=*) flag=${1%%=*}; value=${1#*=}; shift; set -- "$flag" "$value" "$@" ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --accelerator) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --repo) need_value "$@"; REPO=$2; shift 2 ;;
    --dir) need_value "$@"; DIR=$2; shift 2 ;;
    --python) need_value "$@"; PY=$2; shift 2 ;;
    --pip) [[ $# -ge 2 ]] || die "--pip needs a value"; PIP=$2; shift 2 ;;
    --env) need_value "$@"; [[ $2 == *=* ]] || die "--env needs KEY=VALUE, got '$2'"
           ENVS+=("$2"); shift 2 ;;
    --spot) SPOT=1; shift ;;
    --stop) STOP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; COMMAND=("$@"); break ;;
    *) die "unknown argument '$1' (the command to run goes after --)" ;;
  esac
done

[[ -n $NAME ]] || die "missing required flag --name (or INFINI_TPU_NAME)"
[[ -n $ZONE ]] || die "missing required flag --zone (or INFINI_TPU_ZONE)"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
on_all() { run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }
D=$(quote "$DIR")

if [[ $STOP == 1 ]]; then
  # SIGTERM to the command itself (the child of the waiting subshell): the trainer saves and exits.
  STOP_RUN="cd $D && "
  STOP_RUN+='if [ -f launch.pid ] && pkill -TERM -P $(cat launch.pid); then echo "$(hostname): stopping"; '
  STOP_RUN+='else echo "$(hostname): no run going"; fi'
  on_all "$STOP_RUN"
  exit 0
fi

[[ ${#COMMAND[@]} -gt 0 ]] || die "missing the command to run after -- (e.g. -- python -m infini_jax.train --gin_file=configs/1b.gin)"
[[ -n $ACCELERATOR ]] || die "missing required flag --accelerator (or INFINI_TPU_ACCELERATOR), e.g. v5p-64"
if [[ -z $VERSION ]]; then
  case $ACCELERATOR in
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default runtime for --accelerator $ACCELERATOR; pass --version (see: gcloud compute tpus tpu-vm versions list --zone=$ZONE)" ;;
  esac
fi
if [[ -n $REF && -z $REPO ]]; then
  REPO=$(git -C "$ROOT" remote get-url origin 2>/dev/null) \
    || die "--ref needs --repo URL (this checkout has no 'origin' remote)"
fi

# 1. Create the slice, or reuse it.
CREATE=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
[[ $SPOT == 0 ]] || CREATE+=(--spot)
DESCRIBE=("${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" --format=value\(state\))
if [[ $DRY_RUN == 1 ]]; then
  echo "$(line "${DESCRIBE[@]}") || $(line "${CREATE[@]}")"
elif "${DESCRIBE[@]}" >/dev/null 2>&1; then
  echo "launch_tpu_pod.sh: reusing the existing TPU VM $NAME" >&2
else
  "${CREATE[@]}"
fi

# 2. The code on every worker.
if [[ -n $REF ]]; then
  CLONE="{ [ -d $D/.git ] || git clone --quiet $(quote "$REPO") $D; }"
  CLONE+=" && git -C $D fetch --quiet origin $(quote "$REF")"
  CLONE+=" && git -C $D checkout --quiet --detach FETCH_HEAD"
  on_all "$CLONE"
else
  TARBALL=${TMPDIR:-/tmp}/infini_jax-$NAME.tgz
  if [[ $DRY_RUN == 1 ]]; then
    echo "git -C $(quote "$ROOT") ls-files -z --cached --others --exclude-standard" \
      "| tar -C $(quote "$ROOT") --null -T - -czf $(quote "$TARBALL")"
  else
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
      | tar -C "$ROOT" --null -T - -czf "$TARBALL"
  fi
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:infini_jax_code.tgz" "${WHERE[@]}" --worker=all
  on_all "mkdir -p $D && tar -xzf infini_jax_code.tgz -C $D && rm infini_jax_code.tgz"
fi

# 3. Install: .venv through scripts/setup.sh, then jax's TPU build.
P=$(quote "$PY")
INSTALL="cd $D && { $P -c \"import ensurepip\" 2>/dev/null"
INSTALL+=" || { sudo apt-get update -qq && sudo apt-get install -y -qq $P $P-venv; }; }"
INSTALL+=" && PYTHON=$P bash scripts/setup.sh"
if [[ $PIP == default ]]; then
  INSTALL+=' && .venv/bin/pip install -q "jax[tpu]==$(.venv/bin/python -c "import jax; print(jax.__version__)")"'
elif [[ -n $PIP ]]; then
  INSTALL+=" && .venv/bin/pip install -q $(quote "$PIP")"
fi
on_all "$INSTALL"

# 4. The run, detached on every worker, refusing to start over a run still going. launch.pid is
#    the subshell that waits for the command and writes its exit status to launch.exit.
EXPORTS=""
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do EXPORTS+="export ${kv%%=*}=$(quote "${kv#*=}"); "; done
RUN="cd $D || exit 1; "
RUN+='if [ -f launch.pid ] && kill -0 $(cat launch.pid) 2>/dev/null; then '
RUN+='echo "$(hostname): a run is still going; stop it with --stop" >&2; exit 1; fi; '
RUN+='rm -f launch.exit; ( trap "" HUP; source .venv/bin/activate && { '
RUN+="${EXPORTS}$(line "${COMMAND[@]}"); }; "
RUN+='echo $? > launch.exit ) > launch.log 2>&1 < /dev/null & echo $! > launch.pid'
on_all "$RUN"

# 5. Worker 0's log until its run ends; exit with the run's status.
FOLLOW="cd $D && "
FOLLOW+='tail -n +1 -F --pid=$(cat launch.pid) launch.log; exit $(cat launch.exit 2>/dev/null || echo 1)'
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="$FOLLOW"
