#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create the slice or reuse it, copy the
# code and the config to every worker, install, run on all workers at once
# and stream their output here.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --config=PATH --workdir=DIR \
#     [--accelerator_type=v4-32] [--version=tpu-ubuntu2204-base] \
#     [--project=PROJECT] [--reuse] [--python=python3.11] \
#     [--jax=REQUIREMENT] [--dry-run] [-- MORE_FLAGS...]
#
#   --name              TPU VM slice name (required)
#   --zone              zone of the slice (required)
#   --config            config file, copied to every worker (required)
#   --workdir           work directory: the same path on every worker, on a
#                       file system that all of them share (required)
#   --accelerator_type  slice type when the slice is created (default v4-32)
#   --version           TPU software version when created
#                       (default tpu-ubuntu2204-base)
#   --project           Google Cloud project (default: gcloud's own setting)
#   --reuse             the slice exists; skip the check and the creation
#   --python            Python 3.11 or newer on the workers, installed with
#                       apt-get when missing (default python3.11)
#   --jax               pip requirement of JAX for TPU (default jax[tpu])
#   --dry-run           print every command instead of running it
#   MORE_FLAGS          passed on to python -m cganjax.main, such as
#                       --config.train.steps=1000
#
# Without --reuse the script creates the slice when
# `gcloud compute tpus tpu-vm describe` does not find it. The code sent is
# every file that git tracks, as it is now in this checkout. Every worker
# unpacks it to ~/cganjax, installs it with pip into the virtual environment
# ~/cganjax-venv and starts `python -m cganjax.main --distributed=on`; JAX
# finds the other workers from the slice's metadata.
# NOTE: checked with --dry-run only, never run against a real slice.
set -euo pipefail

usage() {
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
}

fail() {
  echo "tpu_pod.sh: error: $1" >&2
  exit 2
}

name=''
zone=''
config=''
workdir=''
accelerator_type='v4-32'
version='tpu-ubuntu2204-base'
project=''
reuse=false
jax_requirement='jax[tpu]'
python='python3.11'
dry_run=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --jax=*) jax_requirement="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --reuse) reuse=true ;;
    --dry-run) dry_run=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *) fail "unknown option $1; see --help." ;;
  esac
  shift
done
extra_flags=("$@")

[[ -n "$name" ]] || fail 'missing --name; pass the name of the TPU VM slice.'
[[ -n "$zone" ]] || fail 'missing --zone; pass the zone of the slice, such as --zone=us-central2-b.'
[[ -n "$config" ]] || fail 'missing --config; pass a config file, such as --config=configs/celeba.py.'
[[ -f "$config" ]] || fail "--config=$config not found; pass the path of a config file."
[[ -n "$workdir" ]] || fail 'missing --workdir; pass a directory that every worker shares.'
[[ "$workdir" == /* ]] || fail "--workdir=$workdir is relative; pass an absolute path that every worker mounts."

repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
location=("--zone=$zone")
if [[ -n "$project" ]]; then
  location+=("--project=$project")
fi
remote_config="configs/launch_$(basename "$config")"

# Print a command as a shell would read it back.
show() {
  local word line=''
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./=:@,+-]+$ ]]; then
      line+="$word "
    else
      line+="${word@Q} "
    fi
  done
  echo "${line% }"
}

run() {
  if "$dry_run"; then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}

# Quote words for the remote shell that `gcloud ... ssh --command` starts.
remote_words() {
  local word line=''
  for word in "$@"; do
    line+="$(printf '%q' "$word") "
  done
  echo "${line% }"
}

if ! "$reuse"; then
  if "$dry_run"; then
    show "${gcloud_tpu[@]}" describe "$name" "${location[@]}"
    echo '# only when describe does not find the slice:'
    show "${gcloud_tpu[@]}" create "$name" "${location[@]}" \
      "--accelerator-type=$accelerator_type" "--version=$version"
  elif run "${gcloud_tpu[@]}" describe "$name" "${location[@]}" >/dev/null 2>&1; then
    echo "tpu_pod.sh: reusing the slice $name" >&2
  else
    run "${gcloud_tpu[@]}" create "$name" "${location[@]}" \
      "--accelerator-type=$accelerator_type" "--version=$version"
  fi
fi

if "$dry_run"; then
  staging='STAGING_DIR'
else
  staging="$(mktemp -d -t cganjax_tpu.XXXXXX)"
  trap 'rm -rf "$staging"' EXIT
fi
archive="$staging/cganjax.tar.gz"
file_list="$staging/files"
if "$dry_run"; then
  echo "# STAGING_DIR is a new temporary directory."
  echo "$(show git -C "$repo" ls-files -z) > $(show "$file_list")"
else
  git -C "$repo" ls-files -z >"$file_list"
fi
run tar -C "$repo" --null -T "$file_list" -czf "$archive"
run "${gcloud_tpu[@]}" scp "$archive" "$name:cganjax.tar.gz" \
  "${location[@]}" --worker=all

remote_python="$(remote_words "$python")"
install_command="(command -v $remote_python >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $remote_python $remote_python-venv)) && rm -rf ~/cganjax && mkdir -p ~/cganjax && tar -xzf ~/cganjax.tar.gz -C ~/cganjax && (test -d ~/cganjax-venv || $remote_python -m venv ~/cganjax-venv) && ~/cganjax-venv/bin/pip install --quiet -e ~/cganjax $(remote_words "$jax_requirement")"
run "${gcloud_tpu[@]}" ssh "$name" "${location[@]}" --worker=all \
  "--command=$install_command"
run "${gcloud_tpu[@]}" scp "$config" "$name:cganjax/$remote_config" \
  "${location[@]}" --worker=all

train_command="cd ~/cganjax && ~/cganjax-venv/bin/python -m cganjax.main --distributed=on $(remote_words "--config=$remote_config" "--workdir=$workdir" "${extra_flags[@]}")"
run "${gcloud_tpu[@]}" ssh "$name" "${location[@]}" --worker=all \
  "--command=$train_command"
