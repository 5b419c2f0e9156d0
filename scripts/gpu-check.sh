#!/usr/bin/env bash
# scripts/gpu-check.sh OUTDIR [DEBS_DIR]
#
# The first check of tensormesh's GPU backends on a machine with an NVIDIA GPU
# and no network. It fetches nothing: everything it runs is already in the
# checkout (node_modules included) or in DEBS_DIR.
#
#   OUTDIR    where the report goes (made if missing): report.md, the
#             figures as JSON, each step's output and error text.
#   DEBS_DIR  Debian packages of the Vulkan loader, fetched beforehand on a
#             machine with network (apt-get download libvulkan1). Unpacked
#             under OUTDIR only when the machine has no libvulkan of its own.
#
# Steps: record the machine (nvidia-smi, Vulkan loader and driver); ask each
# backend whether it loads; start a node with --backend webgpu (and
# tensorflow-gpu if that loads) and read GET /v1/node; time matmuls on each
# GPU backend and check one against numpy; run the bench's compute section.
# Every step is bounded by `timeout`, and all of them by one deadline, so the
# whole check ends in under 5 minutes.
#
# Exit status: 0 once the report is written, whatever the GPU backends did
# (the report says); 2 on bad arguments. GPU_CHECK_SKIP_BENCH=1 leaves out the
# bench (about two minutes), for quick runs and for the test of this script;
# GPU_CHECK_NVIDIA_ICD replaces the default path of NVIDIA's Vulkan ICD
# (/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json).
set -euo pipefail

usage='usage: scripts/gpu-check.sh OUTDIR [DEBS_DIR]'
die_usage () { echo "gpu-check: $1; $usage" >&2; exit 2; }

[[ $# -ge 1 ]] || die_usage 'no OUTDIR given'
[[ $# -le 2 ]] || die_usage "too many arguments ($#)"
[[ -n $1 ]] || die_usage 'OUTDIR is empty'
[[ ! -e $1 || -d $1 ]] || die_usage "OUTDIR $1 exists and is not a directory"
if [[ $# -eq 2 ]]; then
  [[ -d $2 ]] || die_usage "DEBS_DIR $2 is not a directory"
fi

mkdir -p "$1"
OUT=$(cd "$1" && pwd)
DEBS=''
if [[ $# -eq 2 ]]; then DEBS=$(cd "$2" && pwd); fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE=$ROOT/node_modules/.bin/node
REPORT=$OUT/report.md
# ldconfig lives in /sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin

# Under 5 minutes in all: 280 s for the steps, the rest for starting and
# stopping processes. Each step gets its own cap and never more than is left.
DEADLINE=$((SECONDS + 280))
left () { echo $((DEADLINE - SECONDS)); }
cap () {
  local want=$1 rest
  rest=$(( $(left) - 5 ))
  if (( rest < 1 )); then rest=1; fi
  if (( want < rest )); then echo "$want"; else echo "$rest"; fi
}
# bounded SECONDS CMD...: the command, killed when it outlives its cap; not
# started at all (status 124, as timeout's) once the deadline has passed.
bounded () {
  local t
  if (( $(left) <= 5 )); then
    echo "gpu-check: out of time, not run: ${*:2}" >&2
    return 124
  fi
  t=$(cap "$1")
  shift
  timeout --kill-after=5 "$t" "$@"
}

note () { printf '%s\n' "$*" >> "$REPORT"; }
finding () { note "- $*"; }
# The few lines the summary at the end repeats: what a reader wants first.
SUMMARY=()
headline () { SUMMARY+=("$*"); finding "$*"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tensormesh-gpu-check.XXXXXX")
BENCH_SAVED=''
NODE_PID=''
# kill_node: SIGKILL to the node under its `timeout` wrapper (which cannot
# pass a SIGKILL on), then to the wrapper.
kill_node () {
  local child
  for child in $(ps -o pid= --ppid "$NODE_PID" 2>/dev/null || true); do kill -KILL "$child" 2>/dev/null || true; done
  kill -KILL "$NODE_PID" 2>/dev/null || true
}
cleanup () {
  if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then kill_node; fi
  # The bench writes its partial results into the checkout; put back what was there.
  if [[ -n $BENCH_SAVED ]]; then
    for f in results.partial.json results.partial.md; do
      if [[ -f $BENCH_SAVED/$f ]]; then cp "$BENCH_SAVED/$f" "$ROOT/bench/$f"; else rm -f "$ROOT/bench/$f"; fi
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

{
  echo "# tensormesh GPU check"
  echo
  echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
  echo "- checkout: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  echo
} > "$REPORT"

# ------------------------------------------------------------------ machine
{
  echo "uname: $(uname -a)"
  echo "node: $("$NODE" --version 2>&1 || echo missing)"
  for v in LD_LIBRARY_PATH VK_DRIVER_FILES VK_ICD_FILENAMES NVIDIA_VISIBLE_DEVICES NVIDIA_DRIVER_CAPABILITIES CUDA_VISIBLE_DEVICES; do
    echo "$v=${!v-(unset)}"
  done
  for p in webgpu @tensorflow/tfjs-backend-webgpu @tensorflow/tfjs-node-gpu @tensorflow/tfjs-node @tensorflow/tfjs-core; do
    if [[ -f $ROOT/node_modules/$p/package.json ]]; then
      echo "$p: $(sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$ROOT/node_modules/$p/package.json" | head -n 1)"
    else
      echo "$p: not installed"
    fi
  done
} > "$OUT/env.txt" 2>&1

note '## Machine'
note
if [[ ! -x $NODE ]]; then
  headline "ERROR: $NODE is missing: run npm ci in the checkout (on a machine with network) first"
fi
if command -v nvidia-smi > /dev/null; then
  bounded 30 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  gpu_line=$(bounded 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1 || true)
  headline "nvidia-smi: ${gpu_line:-no answer}"
else
  headline 'nvidia-smi: not found (no NVIDIA driver visible here)'
fi
# Vulkan needs the driver's graphics libraries, which NVIDIA's container
# runtime mounts only when the capabilities include graphics (or all).
if [[ -n ${NVIDIA_DRIVER_CAPABILITIES-} && ! ${NVIDIA_DRIVER_CAPABILITIES} =~ (graphics|all) ]]; then
  finding "NVIDIA_DRIVER_CAPABILITIES=$NVIDIA_DRIVER_CAPABILITIES has no 'graphics': the container may lack NVIDIA's Vulkan driver"
fi

# ------------------------------------------------------------------ Vulkan loader
# Dawn reaches the GPU through the Vulkan loader (libvulkan.so.1), which such
# machines may lack even though NVIDIA's Vulkan driver is there.
loader=$(ldconfig -p 2>/dev/null | grep libvulkan || true)
# The loader also finds a libvulkan in LD_LIBRARY_PATH, which ldconfig does not list.
if [[ -z $loader ]]; then
  IFS=: read -r -a ld_dirs <<< "${LD_LIBRARY_PATH-}"
  for d in "${ld_dirs[@]}"; do
    if [[ -n $d && -e $d/libvulkan.so.1 ]]; then loader="libvulkan.so.1 => $d/libvulkan.so.1 (LD_LIBRARY_PATH)"; break; fi
  done
fi
if [[ -n $loader ]]; then
  finding "Vulkan loader: $(echo "$loader" | head -n 1 | sed 's/^[[:space:]]*//')"
elif [[ -z $DEBS ]]; then
  finding 'Vulkan loader: none (ldconfig -p has no libvulkan) and no DEBS_DIR given: webgpu cannot reach the GPU'
else
  root=$OUT/vulkan-root
  mkdir -p "$root"
  shopt -s nullglob
  debs=("$DEBS"/*.deb)
  shopt -u nullglob
  if (( ${#debs[@]} == 0 )); then
    finding "Vulkan loader: none, and DEBS_DIR $DEBS holds no .deb"
  else
    for deb in "${debs[@]}"; do
      bounded 30 dpkg -x "$deb" "$root" >> "$OUT/debs.txt" 2>&1 || finding "dpkg -x $(basename "$deb") failed (see debs.txt)"
    done
    libdir=$(find "$root" -name 'libvulkan.so.1*' -printf '%h\n' 2>/dev/null | head -n 1 || true)
    if [[ -z $libdir ]]; then
      finding "Vulkan loader: none, and the .debs in $DEBS hold no libvulkan.so.1"
    else
      # ldconfig -n makes the soname links in that folder only (no cache, no root needed).
      ldconfig -n "$libdir" 2>> "$OUT/debs.txt" || true
      export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      finding "Vulkan loader: unpacked from ${#debs[@]} .deb(s) into $libdir (LD_LIBRARY_PATH points there)"
    fi
  fi
fi

# ------------------------------------------------------------------ Vulkan driver (ICD)
icds=()
if [[ -z ${VK_DRIVER_FILES-}${VK_ICD_FILENAMES-} ]]; then
  # Where the loader looks by itself (its compiled-in and XDG defaults).
  shopt -s nullglob
  for d in /etc/xdg/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d /usr/share/vulkan/icd.d "${HOME:-/nonexistent}/.local/share/vulkan/icd.d"; do
    icds+=("$d"/*.json)
  done
  shopt -u nullglob
  # Where NVIDIA's container runtime puts the driver's ICD; GPU_CHECK_NVIDIA_ICD
  # names another file (the test of this script uses it).
  nvidia_icd=${GPU_CHECK_NVIDIA_ICD:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
  found_nvidia=''
  if (( ${#icds[@]} > 0 )); then found_nvidia=$(grep -li nvidia "${icds[@]}" 2>/dev/null || true); fi
  if (( ${#icds[@]} > 0 )); then finding "Vulkan drivers in the usual places: ${icds[*]}"; fi
  # Mesa's software drivers alone do not count: Dawn would refuse them or, worse, find nothing better.
  if [[ -n $found_nvidia ]]; then
    :
  elif [[ -f $nvidia_icd ]]; then
    # VK_DRIVER_FILES is the loader's name since 1.3.234; older loaders read VK_ICD_FILENAMES.
    export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
    # The ICD names its library (libGLX_nvidia.so.0) without a path; in such
    # containers it sits beside the CUDA libraries.
    if [[ -d /usr/local/nvidia/lib64 && :${LD_LIBRARY_PATH-}: != *:/usr/local/nvidia/lib64:* ]]; then
      export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/nvidia/lib64"
    fi
    finding "Vulkan driver: no NVIDIA one in the usual places; VK_DRIVER_FILES=$nvidia_icd"
    cp "$nvidia_icd" "$OUT/nvidia_icd.json" 2>/dev/null || true
  else
    finding "Vulkan driver: no NVIDIA one in the usual places, and no $nvidia_icd"
  fi
else
  finding "Vulkan driver: as set: VK_DRIVER_FILES=${VK_DRIVER_FILES-} VK_ICD_FILENAMES=${VK_ICD_FILENAMES-}"
fi
# What the Vulkan loader itself sees, where vulkaninfo exists (the system's,
# or vulkan-tools among the .debs).
vulkaninfo_bin=$(command -v vulkaninfo || true)
if [[ -z $vulkaninfo_bin && -x $OUT/vulkan-root/usr/bin/vulkaninfo ]]; then vulkaninfo_bin=$OUT/vulkan-root/usr/bin/vulkaninfo; fi
if [[ -n $vulkaninfo_bin ]]; then
  bounded 30 "$vulkaninfo_bin" --summary > "$OUT/vulkaninfo.txt" 2>&1 || true
  devices=$(sed -n 's/^[[:space:]]*deviceName[[:space:]]*=[[:space:]]*//p' "$OUT/vulkaninfo.txt" | paste -sd ',' - || true)
  finding "vulkaninfo --summary: ${devices:-no Vulkan device (see vulkaninfo.txt)}"
fi
{
  echo "after setup:"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-(unset)}"
  echo "VK_DRIVER_FILES=${VK_DRIVER_FILES-(unset)}"
  echo "VK_ICD_FILENAMES=${VK_ICD_FILENAMES-(unset)}"
} >> "$OUT/env.txt"

cd "$ROOT"

# ------------------------------------------------------------------ backends
note
note '## Backends'
note
# Each candidate's own answer (src/compute/backend.ts), as `auto` sees it.
probe_js='
import { BACKEND_CANDIDATES } from "./src/compute/backend.ts"
const out = {}
for (const c of BACKEND_CANDIDATES) {
  const t0 = performance.now()
  const a = await c.available()
  out[c.name] = { ...a, ms: Math.round(performance.now() - t0) }
}
console.log(JSON.stringify(out))
process.exit(0)
'
bounded 60 "$NODE" --no-warnings --input-type=module -e "$probe_js" > "$OUT/backends.json" 2> "$OUT/backends.stderr" || true
# json_get FILE EXPR: a value from the file's last JSON line, by a JS
# expression on `j`; empty when absent or unreadable.
json_get () {
  "$NODE" -e '
    try {
      const line = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(l => l.startsWith("{")).pop()
      const v = (0, eval)("(j) => " + process.argv[2])(JSON.parse(line))
      if (v !== undefined && v !== null) console.log(typeof v === "object" ? JSON.stringify(v) : String(v))
    } catch {}' "$1" "$2"
}
for b in tensorflow-gpu webgpu tensorflow wasm cpu; do
  ok=$(json_get "$OUT/backends.json" "j['$b'].ok")
  if [[ $ok == true ]]; then
    finding "$b: loads ($(json_get "$OUT/backends.json" "j['$b'].ms") ms to tell)"
  elif [[ $ok == false ]]; then
    finding "$b: does not load: $(json_get "$OUT/backends.json" "j['$b'].reason") ($(json_get "$OUT/backends.json" "j['$b'].ms") ms to tell)"
  else
    finding "$b: ERROR: the availability probe gave no answer (see backends.stderr)"
  fi
done
webgpu_ok=$(json_get "$OUT/backends.json" "j.webgpu.ok")
webgpu_reason=$(json_get "$OUT/backends.json" "j.webgpu.reason")
if [[ $webgpu_ok == true ]]; then
  headline 'RESULT: a WebGPU adapter was found; the webgpu backend loads'
elif [[ $webgpu_reason == 'no WebGPU adapter'* ]]; then
  headline "RESULT: no WebGPU adapter was found, so the webgpu backend does not load: $webgpu_reason"
else
  headline "RESULT: the webgpu backend does not load: ${webgpu_reason:-the probe gave no answer (see backends.stderr)}"
fi
tfgpu_reason=$(json_get "$OUT/backends.json" "j['tensorflow-gpu'].ok ? 'loads' : j['tensorflow-gpu'].reason")
headline "tensorflow-gpu: ${tfgpu_reason:-the probe gave no answer}"

# ------------------------------------------------------------------ nodes
note
note '## A node on each GPU backend'
note
gpu_backends=(webgpu)
if [[ $(json_get "$OUT/backends.json" "j['tensorflow-gpu'].ok") == true ]]; then gpu_backends+=(tensorflow-gpu); fi

# start_node BACKEND: starts a node, records GET /v1/node, stops it with SIGTERM.
start_node () {
  local b=$1 dd ready api token_file rc=0
  if (( $(left) <= 10 )); then headline "node --backend $b: not started: out of time"; return 0; fi
  dd=$(mktemp -d "$WORK/node-$b.XXXXXX")
  # Made here: the background job's redirections may open them after the first look below.
  : > "$OUT/node-$b.stdout"
  : > "$OUT/node-$b.stderr"
  # Its own timeout as well, so it cannot outlive this script.
  timeout --kill-after=5 "$(cap 120)" "$NODE" bin/tensormesh.js start --json --backend "$b" --data-dir "$dd" \
    --api 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --log-level warn > "$OUT/node-$b.stdout" 2> "$OUT/node-$b.stderr" &
  NODE_PID=$!
  # The pool gives a backend 30 s to load (WORKER_START_TIMEOUT_MS); calibration and libp2p take a few more.
  local until=$((SECONDS + $(cap 60)))
  ready=''
  while (( SECONDS < until )) && kill -0 "$NODE_PID" 2>/dev/null; do
    ready=$(grep -m1 '"api"' "$OUT/node-$b.stdout" || true)
    [[ -n $ready ]] && break
    sleep 0.2
  done
  if [[ -z $ready ]]; then
    if kill -0 "$NODE_PID" 2>/dev/null; then
      kill -TERM "$NODE_PID" 2>/dev/null || true
      finding "node --backend $b: ERROR: not ready within $(cap 60) s"
    fi
    wait "$NODE_PID" || rc=$?
    NODE_PID=''
    headline "node --backend $b: did not start (exit $rc): $(grep -v '^{' "$OUT/node-$b.stderr" | head -n 1 || true)"
    return 0
  fi
  api=$(json_get "$OUT/node-$b.stdout" 'j.api')
  token_file=$(json_get "$OUT/node-$b.stdout" 'j.tokenFile')
  [[ -n $token_file ]] || token_file=$dd/api-token
  bounded 20 "$NODE" -e '
    const [url, tokenFile] = process.argv.slice(1)
    const token = require("fs").readFileSync(tokenFile, "utf8").trim()
    fetch(url + "/v1/node", { headers: { authorization: "Bearer " + token } })
      .then(async r => { if (!r.ok) throw new Error("HTTP " + r.status + " " + await r.text()); console.log(await r.text()) })
      .catch(e => { console.error(String(e)); process.exit(1) })
  ' "$api" "$token_file" > "$OUT/node-$b.json" 2>> "$OUT/node-$b.stderr" || finding "node --backend $b: ERROR: GET /v1/node failed (see node-$b.stderr)"
  headline "node --backend $b: backend $(json_get "$OUT/node-$b.json" 'j.backend'), $(json_get "$OUT/node-$b.json" 'j.slots') workers, calibrated $(json_get "$OUT/node-$b.json" 'Math.round(j.gflops * 10) / 10') GFLOPS, gpu $(json_get "$OUT/node-$b.json" 'j.gpu ?? "none"')"
  kill -TERM "$NODE_PID" 2>/dev/null || true
  # A clean stop ends in a few seconds; a driver that crashes on teardown shows here as a signal.
  local t0=$SECONDS
  while kill -0 "$NODE_PID" 2>/dev/null && (( SECONDS - t0 < 20 && $(left) > 0 )); do sleep 0.2; done
  if kill -0 "$NODE_PID" 2>/dev/null; then
    kill_node
    headline "node --backend $b: ERROR: still running $((SECONDS - t0)) s after SIGTERM; killed"
  fi
  wait "$NODE_PID" || rc=$?
  NODE_PID=''
  if (( rc == 0 )); then
    headline "node --backend $b: stopped cleanly on SIGTERM"
  elif (( rc > 128 )); then
    headline "node --backend $b: ERROR: ended by signal $((rc - 128)) after SIGTERM (exit status $rc)"
  else
    headline "node --backend $b: ERROR: exit status $rc after SIGTERM"
  fi
}
for b in "${gpu_backends[@]}"; do start_node "$b"; done

# ------------------------------------------------------------------ kernels
note
note '## Matmul on each GPU backend that loads (1 worker)'
note
# The bench's own kernel timer (scripts/bench/kernel-worker.ts); the bench
# itself times only wasm and cpu this way.
kernel_js='
import { Worker } from "node:worker_threads"
import { pathToFileURL } from "node:url"
const url = new URL("scripts/bench/kernel-worker.ts", pathToFileURL(process.cwd() + "/"))
// execArgv: [] because a worker inherits --input-type, which only an -e script may have.
const w = new Worker(url, { execArgv: [], workerData: { backend: process.argv[1], sizes: [256, 512, 1024, 2048], budgetMs: 1500 } })
w.once("message", async (m) => { console.log(JSON.stringify(m)); await w.terminate(); process.exit(0) })
w.once("error", (e) => { console.error(String(e)); process.exit(1) })
'
ran_kernel=false
for b in "${gpu_backends[@]}"; do
  [[ $(json_get "$OUT/backends.json" "j['$b'].ok") == true ]] || continue
  ran_kernel=true
  rc=0
  bounded 90 "$NODE" --no-warnings --input-type=module -e "$kernel_js" "$b" > "$OUT/kernel-$b.json" 2> "$OUT/kernel-$b.stderr" || rc=$?
  figures=$(json_get "$OUT/kernel-$b.json" 'j.results.map(r => r.n + ": " + Math.round(r.gflops) + " GFLOPS").join(", ")')
  # The figures count even if the process then died tearing the GPU down; that is reported too.
  if [[ -n $figures ]]; then
    headline "matmul on $b, 1 worker: $figures$( ((rc == 0)) || echo " (then exit status $rc)")"
  else
    headline "matmul on $b: ERROR: exit status $rc: $(grep -v '^\s*$' "$OUT/kernel-$b.stderr" | head -n 1 || true)"
  fi
done
$ran_kernel || note '- none: no GPU backend loads'

# The numeric check: a 256x256 matmul on webgpu in an executor worker against numpy.
if [[ $webgpu_ok == true ]]; then
  rc=0
  bounded 90 "$ROOT/node_modules/.bin/vitest" run test/compute/webgpu.test.ts > "$OUT/webgpu-test.txt" 2>&1 || rc=$?
  if (( rc == 0 )); then
    headline 'test/compute/webgpu.test.ts (256x256 matmul on webgpu against numpy): passed'
  else
    headline "test/compute/webgpu.test.ts (256x256 matmul on webgpu against numpy): ERROR: exit status $rc (see webgpu-test.txt)"
  fi
fi

# ------------------------------------------------------------------ bench
note
note '## Bench, compute section'
note
if [[ ${GPU_CHECK_SKIP_BENCH-} == 1 ]]; then
  note '- skipped (GPU_CHECK_SKIP_BENCH=1)'
else
  BENCH_SAVED=$WORK/bench-saved
  mkdir -p "$BENCH_SAVED"
  for f in results.partial.json results.partial.md; do
    if [[ -f $ROOT/bench/$f ]]; then cp "$ROOT/bench/$f" "$BENCH_SAVED/$f"; fi
  done
  rm -f "$ROOT/bench/results.partial.json" "$ROOT/bench/results.partial.md"
  # What `npm run bench -- --only compute` runs, without npm (which may try the network).
  rc=0
  bounded 150 "$NODE" scripts/bench.ts --only compute > "$OUT/bench.txt" 2>&1 || rc=$?
  if (( rc == 0 )); then
    headline "bench --only compute: done; figures in bench-results.partial.md"
  else
    headline "bench --only compute: ERROR: exit status $rc (see bench.txt)"
  fi
  for f in results.partial.json results.partial.md; do
    if [[ -f $ROOT/bench/$f ]]; then cp "$ROOT/bench/$f" "$OUT/bench-$f"; fi
  done
  if [[ -f $OUT/bench-results.partial.md ]]; then
    note
    cat "$OUT/bench-results.partial.md" >> "$REPORT"
  fi
fi

# ------------------------------------------------------------------ summary
{
  echo
  echo '## Summary'
  echo
  for s in "${SUMMARY[@]}"; do echo "- $s"; done
  echo
  echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS} s"
} >> "$REPORT"
printf '%s\n' "${SUMMARY[@]}" > "$OUT/summary.txt"
echo "gpu-check: report in $REPORT"
