#!/usr/bin/env bash
# The scratch machine tests/it/readme.rs runs the README's command blocks on, in order, as one
# shell session: PID 1 of its own PID, mount and network namespaces (`unshare`), so whatever the
# walk-through starts or mounts ends with it, and nothing of the host changes. It stands in for
# what the README assumes of the reader's machine: root in /root, secrets.example.com being this
# host (a certificate from a CA the system trusts), a Docker-style /run/secrets with two files, a
# .env, an SSH key, the workloads the examples name (train.py, ./app, serve.py, nginx). /etc and
# /var are overlays and /root, /run and /srv are empty tmpfs, so a line that writes there
# (/etc/hosts, /var/lib/secretfs, /var/backups, ~/.gitconfig) writes into the scratch dir.
#
# Argv: the scratch dir (walk.sh, job.toml, cert.pem, key.pem, ca.pem), the directory of the
# secretfs binary, the lep venv. Values come in the environment (README_*), never argv.
set -euo pipefail
scratch=$1 bindir=$2 venv=$3

mount --make-rprivate /
ip link set lo up
for d in etc var; do
  mkdir -p "$scratch/$d-upper" "$scratch/$d-work"
  mount -t overlay overlay \
    -o "lowerdir=/$d,upperdir=$scratch/$d-upper,workdir=$scratch/$d-work" "/$d"
done
# An empty home, but the Pythons that live under it (pyenv's) stay where the venvs point.
keep=()
for py in "$venv/bin/python3" "$(command -v python3)"; do
  real=$(readlink -f "$py")
  case $real in /root/*) top=${real#/root/}; keep+=("${top%%/*}") ;; esac
done
mkdir -p "$scratch/home-keep"
for k in "${keep[@]}"; do
  mkdir -p "$scratch/home-keep/$k"
  mount --bind "/root/$k" "$scratch/home-keep/$k"
done
mount -t tmpfs -o mode=0700 tmpfs /root
for k in "${keep[@]}"; do
  mkdir -p "/root/$k"
  mount --move "$scratch/home-keep/$k" "/root/$k"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /srv

echo "127.0.0.1 secrets.example.com" >> /etc/hosts
cat "$scratch/ca.pem" >> /etc/ssl/certs/ca-certificates.crt
# Python's requests (lep) trusts certifi's list, not the system's, unless told.
export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

export HOME=/root
cd /root
cp "$scratch/cert.pem" "$scratch/key.pem" "$scratch/job.toml" /root/
mkdir -p /root/.ssh /run/secrets /run/bin /srv/train
ssh-keygen -q -t ed25519 -N '' -C readme -f /root/.ssh/id_ed25519
printf '%s' "$README_PASSWORD" > password.txt
printf '%s' "$README_NEW_PASSWORD" > new-password.txt
printf '%s' "$README_OPENAI" > /run/secrets/openai-prod
printf '%s' "$README_TLS_KEY" > /run/secrets/tls-key
printf 'WANDB_API_KEY=%s\nexport OLD_API_KEY="%s"\n' "$README_WANDB" "$README_OLD" > .env

# The workloads: each says what it was given (names and sizes, never values) and fails when it
# was given no secret.
cat > train.py <<'EOF'
import os, sys
got = []
for name in ("HF_TOKEN", "OPENAI_API_KEY", "MY_KEY", "DB_PASSWORD_FILE", "WANDB_PROJECT"):
    value = os.environ.get(name)
    if value is None:
        continue
    if name.endswith("_FILE"):
        value = open(value, "rb").read()
    got.append(f"{name} ({len(value)} bytes)")
print("train.py in", os.getcwd(), "got", ", ".join(got) or "nothing")
sys.exit(0 if got else 1)
EOF
cp train.py /srv/train/train.py
cat > serve.py <<'EOF'
import os, time
print("started serve.py with HF_TOKEN" if os.environ.get("HF_TOKEN") else "no HF_TOKEN", flush=True)
while True:
    time.sleep(60)
EOF
cat > app <<'EOF'
#!/bin/sh
test -s "$DB_PASSWORD_FILE" || { echo "app: DB_PASSWORD_FILE is empty or unreadable" >&2; exit 1; }
echo "app: DB_PASSWORD_FILE holds $(wc -c < "$DB_PASSWORD_FILE") bytes"
EOF
cat > /run/bin/nginx <<'EOF'
#!/bin/sh
test -s "$KEY_FILE" || { echo "nginx: KEY_FILE is empty or unreadable" >&2; exit 1; }
echo "started nginx $*"
trap 'echo "nginx: reloading"' HUP
while :; do sleep 60 & wait $!; done
EOF
chmod +x app /run/bin/nginx
cat > job.json <<'EOF'
{"metadata": {"name": "train"},
 "spec": {"container": {"command": ["python3", "train.py"]},
          "envs": [{"name": "WANDB_PROJECT", "value": "demo"},
                   {"name": "HF_TOKEN", "value_from": {"secret_name_ref": "HF_TOKEN"}},
                   {"name": "MY_KEY", "value_from": {"secret_name_ref": "openai-prod"}}]}}
EOF

export PATH="/run/bin:$bindir:$venv/bin:$PATH"
# What the reader's shell has (the README pipes "$HF_TOKEN" into secret create).
export HF_TOKEN=$README_HF_TOKEN

# A command that runs until stopped (a mount, a server, a supervised run) is started in the
# background, as a reader would start it in another terminal, and the walk goes on once it says
# it is ready: "secretfs: mounted" or "secretfs: serving", or its workload's "started". A second
# mount on a directory or a second server stops the first (the reader's ^C); supervised runs
# stop when their block ends. Every secretfs that fails is recorded, so a failure inside `a && b`
# (which set -e lets pass) still fails the walk.
failures=$scratch/failures
declare -A mounts=()
server=""
watches=()

stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

background() {
  local kind=$1 key=$2
  shift 2
  case $kind in
    mount) if [ -n "${mounts[$key]:-}" ]; then stop "${mounts[$key]}"; fi ;;
    serve) if [ -n "$server" ]; then stop "$server"; fi ;;
  esac
  local log
  log=$(mktemp "$scratch/$kind.XXXXXX")
  command secretfs "$@" > "$log" 2>&1 &
  local pid=$! ready='^secretfs: (mounted|serving)'
  if [ "$kind" = watch ]; then ready='^started'; fi
  for _ in $(seq 300); do
    if grep -Eq "$ready" "$log"; then
      cat "$log"
      case $kind in
        mount) mounts[$key]=$pid ;;
        serve) server=$pid ;;
        watch) watches+=("$pid") ;;
      esac
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" || rc=$?
      cat "$log"
      echo "secretfs $kind ended with status $rc before it was ready" >> "$failures"
      return 1
    fi
    sleep 0.1
  done
  cat "$log"
  echo "secretfs $kind was not ready within 30 s" >> "$failures"
  return 1
}

secretfs() {
  case ${1:-} in
    mount) background mount "$2" "$@"; return ;;
    serve) background serve - "$@"; return ;;
    run)
      local a
      for a in "$@"; do
        if [ "$a" = -- ]; then break; fi
        if [ "$a" = --watch ]; then background watch - "$@"; return; fi
      done
      ;;
  esac
  local rc=0
  command secretfs "$@" || rc=$?
  # argv: secretfs puts no value there (values come from stdin or files).
  if [ "$rc" -ne 0 ]; then echo "secretfs $* exited with status $rc" >> "$failures"; fi
  return "$rc"
}

# Called by walk.sh before each block: the last block's supervised runs end.
block() {
  local pid
  for pid in "${watches[@]}"; do stop "$pid"; done
  watches=()
  echo "== README.md line $1"
}

trap 'echo "readme-walk: failed: $BASH_COMMAND (walk.sh line $LINENO)" >&2' ERR
set +u -E
# shellcheck source=/dev/null
# stdin: what the reader pastes at `secret create --type huggingface`'s prompt.
source "$scratch/walk.sh" < <(printf '%s' "$README_HF_TOKEN")
block end
echo "readme-walk: done"
