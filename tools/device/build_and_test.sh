#!/usr/bin/env bash
# Builds uma with the CUDA backend on the GPU machine, runs the CUDA tests, then benchmarks `uma synth`
# models. The GPU machine has no package registry: the build's libraries come as Debian .debs carried in
# .debs/ (fetch them here with tools/device/fetch_debs.sh) and unpacked into a private prefix.
# Test data: UMA_SHARED (default .device/shared, a copy of ../shared's fixtures carried with the call).
#   usage: tools/device/build_and_test.sh [build|cpu-build|test|gemv|profile|bench|llama3|depth|cpu|moe|plan|skip|ab|sweep|mem|ceilings|all]...
#   (default: all but cpu-build, depth, cpu, moe, pprofile, ncu, plan, skip, ab, sweep and mem)
#   cpu-build: a CPU-only build (-DUMA_CUDA=OFF) of uma and the kernel tests (CPU_TARGETS), for the cpu step
#   gemv: GEMV GB/s per type and shape against the copy ceiling (tests/backends/test_cuda_bench.cpp)
#   profile: GPU time per op of a Q4_0 decode (UMA_CUDA_PROFILE=1, op by op)
#   bench: pp512/tg128 of llama-7b Q4_0, Q8_0, F16, Q4_K_M on the GPU; llama3: llama3-8b Q4_0
#   plan: `uma plan --hw h100-sxm --json` of those models (the CUDA fit: tools/device/fit_cuda.py; PLAN_HW=h200 on an H200)
#   skip: tg128 of llama-7b (SKIP_TYPES, default q4_0) with decode ops left out (UMA_CUDA_SKIP): each op's cost
#   mem: uma run's planned GPU memory against nvidia-smi's peak for the process (MEM_MODELS, MEM_CTX)
#   ab: tg128 of llama-7b (AB_TYPES, default q4_0) with the switch AB_ENV at 0 and 1 (AB_VALUES), alternating,
#   three rounds (AB_ROUNDS)
#   sweep: tg128 of llama-7b under several settings at once, alternating, SWEEP_ROUNDS rounds (default 2):
#   SWEEP="q4_0 UMA_CUDA_BULK_ROWS=0 UMA_CUDA_BULK_PAIR=1; q4_0; q8_0 UMA_CUDA_BULK_HELD=0" (type, then switches)
#   pprofile: GPU time per op of a pp512 prefill (Q4_0, F16); ncu: kernel durations of Q4_0 decode steps
#   inside the CUDA graph (Nsight Compute, to $OUT/ncu.csv)
#   depth: tg32 of llama-7b Q4_0 after a DEPTH-token context (default 32768; DEPTH_KV: --kv-type); cpu: the same models on the
#   host's CPU (--device cpu, pp64/tg16); moe: qwen3-30b-a3b and deepseek-v3-mini Q4_0 (MOE_SHAPES) on the
#   host's CPU (MOE_DEVICE=cuda: on the GPU, pp512/tg128, with `uma plan`'s prediction for that GPU)
# Logs go to $OUT (the device tool's result folder) or ./out.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
BUILD=${BUILD:-$ROOT/build-device}
PREFIX=${PREFIX:-/tmp/uma-deps}
export UMA_SHARED=${UMA_SHARED:-$ROOT/.device/shared}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() {
  for s in "${steps[@]}"; do
    [ "$s" = "$1" ] && return 0
    case "$1" in depth | cpu | moe | pprofile | ncu | plan | skip | ab | sweep | mem | cpu-build) ;; *) [ "$s" = all ] && return 0 ;; esac
  done
  return 1
}

# Unpack the carried libraries. Debian keeps some under /lib and pkg-config files with prefix=/usr, hence
# the sysroot. Our libraries go first on the search path for uma only (the system's stay untouched).
mkdir -p "$PREFIX/.unpacked"
for f in .debs/*.deb; do  # each once per machine (a warm machine keeps the prefix)
  [ -e "$PREFIX/.unpacked/${f##*/}" ] || { dpkg -x "$f" "$PREFIX" && touch "$PREFIX/.unpacked/${f##*/}"; }
done
LIBS="$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu"
export PKG_CONFIG_LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$PREFIX/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$PREFIX"
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
export PATH="/usr/local/cuda/bin:$PATH"
NPROC=$(nproc)

if want build; then
  echo "== configure + build ($(nvcc --version | tail -1))"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUMA_BUILD_TESTS=ON -DUMA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DOPENSSL_ROOT_DIR="$PREFIX/usr" \
    -DCMAKE_CXX_FLAGS="-isystem $PREFIX/usr/include/x86_64-linux-gnu" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,${LIBS}" >"$OUT/configure.log" 2>&1 \
    || { tail -40 "$OUT/configure.log"; exit 1; }
  grep -i "cuda backend" "$OUT/configure.log"
  cmake --build "$BUILD" -j "$NPROC" --target uma test_backends >"$OUT/build.log" 2>&1 \
    || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  echo "built"
fi

if want cpu-build; then
  echo "== configure + build, CPU only"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUMA_BUILD_TESTS=ON -DUMA_CUDA=OFF \
    -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DOPENSSL_ROOT_DIR="$PREFIX/usr" \
    -DCMAKE_CXX_FLAGS="-isystem $PREFIX/usr/include/x86_64-linux-gnu" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,${LIBS}" >"$OUT/configure-cpu.log" 2>&1 \
    || { tail -40 "$OUT/configure-cpu.log"; exit 1; }
  cmake --build "$BUILD" -j "$NPROC" --target ${CPU_TARGETS:-uma test_kernels} >"$OUT/build-cpu.log" 2>&1 \
    || { grep -E "error|FAILED" "$OUT/build-cpu.log" | head -40; exit 1; }
  echo "built (CPU only)"
fi

if want test; then
  echo "== CUDA op and fixture tests"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  "$BUILD/tests/test_backends" --gtest_brief=1 --gtest_filter=-CudaBench.* 2>&1 | tee "$OUT/test_backends.log" | grep -vE "^\[ +(OK|RUN) " | tail -60
fi

synth() {  # synth TYPE [SHAPE] -> path of a model of that type and shape (default llama-7b; made once per machine)
  local shape=${2:-llama-7b}
  local m=/tmp/uma-$shape-$1.gguf
  [ -f "$m" ] || "$BUILD/uma" synth --shape "$shape" --type "$1" -o "$m" >"$OUT/synth.log" 2>&1 \
    || { tail -5 "$OUT/synth.log" >&2; return 1; }
  echo "$m"
}

tg128() {  # tg128 MODEL [NAME=VALUE]... -> "t/s ± sd" of a tg128 on the GPU under those switches
  local m=$1
  shift
  env "$@" "$BUILD/uma" bench -m "$m" --device cuda -p 0 -n 128 -r 2 --no-membw 2>&1 \
    | grep -E "tg128" | awk -F'|' '{print $8}'
}

if want gemv; then
  echo "== GEMV bandwidth"
  UMA_CUDA_BENCH=1 "$BUILD/tests/test_backends" --gtest_filter=CudaBench.* 2>&1 | tee "$OUT/gemv.log" \
    | grep -E "copy ceiling|^op|^gemv|^quantize|FAIL"
fi

if want profile; then
  echo "== per-op GPU time of a Q4_0 decode (events around every op, no graph)"
  m=$(synth q4_0) && UMA_CUDA_PROFILE=1 "$BUILD/uma" bench -m "$m" -p 0 -n 64 -r 1 --no-membw 2>&1 \
    | tee "$OUT/profile.log" | grep -vE "^\| *(model|---)" | tail -22
fi

if want pprofile; then
  echo "== per-op GPU time of a pp512 prefill (events around every op)"
  for t in ${PROFILE_TYPES:-q4_0 f16}; do
    m=$(synth "$t") && UMA_CUDA_PROFILE=1 "$BUILD/uma" bench -m "$m" -p 512 -n 0 -r 2 --no-membw 2>&1 \
      | tee "$OUT/pprofile-$t.log" | grep -vE "^\| *(model|---)" | head -16
  done
fi

if want ncu; then
  echo "== kernel durations of Q4_0 decode steps inside the CUDA graph (Nsight Compute, one kernel at a time)"
  m=$(synth q4_0) && ncu --graph-profiling node --metrics gpu__time_duration.sum --csv \
    --launch-skip "${NCU_SKIP:-0}" --launch-count "${NCU_COUNT:-1500}" \
    "$BUILD/uma" bench -m "$m" --device cuda -p 0 -n 3 -r 1 --no-membw >"$OUT/ncu.csv" 2>"$OUT/ncu.err" \
    || tail -5 "$OUT/ncu.err"
  wc -l "$OUT/ncu.csv"
fi

if want ab; then
  echo "== A/B of a switch: tg128 with ${AB_ENV:?AB_ENV=NAME of an environment switch} = ${AB_VALUES:-0 1}, alternating"
  for t in ${AB_TYPES:-q4_0}; do
    m=$(synth "$t") || continue
    for round in $(seq "${AB_ROUNDS:-3}"); do
      for v in ${AB_VALUES:-0 1}; do
        r=$(tg128 "$m" "$AB_ENV=$v")
        echo "$t $AB_ENV=$v round $round: tg128 $r"
      done
    done
  done
fi

if want sweep; then
  echo "== tg128 under each setting of SWEEP, alternating"
  IFS=';' read -ra settings <<<"${SWEEP:?SWEEP=\"TYPE [NAME=VALUE]...; TYPE [NAME=VALUE]...\"}"
  for round in $(seq "${SWEEP_ROUNDS:-2}"); do
    for setting in "${settings[@]}"; do
      read -ra words <<<"$setting"
      [ ${#words[@]} -eq 0 ] && continue
      m=$(synth "${words[0]}") || continue
      r=$(tg128 "$m" "${words[@]:1}")
      echo "${words[*]} round $round: tg128 $r"
    done
  done
fi

if want skip; then
  echo "== what each op costs inside a decode step (UMA_CUDA_SKIP: ops left out, results wrong, timing real)"
  for t in ${SKIP_TYPES:-q4_0}; do
    m=$(synth "$t") || continue
    for ops in none gemv add_rms_norm,rms_norm rope_store_kv attention swiglu \
      add_rms_norm,rms_norm,rope_store_kv,attention,swiglu; do
      r=$(tg128 "$m" "UMA_CUDA_SKIP=$ops")
      echo "$t without $ops: tg128 $r" | tee -a "$OUT/skip.log"
    done
  done
fi

if want bench; then
  echo "== benchmarks on uma synth llama-7b models"
  TYPES=${BENCH_TYPES:-"q4_0 q8_0 f16 q4_k_m"}
  for t in $TYPES; do
    m=$(synth "$t") || continue
    "$BUILD/uma" bench -m "$m" --device cuda -p "${BENCH_PP:-512}" -n "${BENCH_TG:-128}" -r "${BENCH_REPS:-3}" \
      --no-membw 2>&1 | tee "$OUT/bench-$t.log" | grep -E "^\| llama|error"
  done
fi

if want llama3; then
  echo "== llama3-8b Q4_0"
  m=$(synth q4_0 llama3-8b) && "$BUILD/uma" bench -m "$m" --device cuda -p 512 -n 128 -r 3 --no-membw 2>&1 \
    | tee "$OUT/bench-llama3.log" | grep -E "^\| llama|error"
fi

if want plan; then
  echo "== the planner's predictions for the bench models (--hw h100-sxm), for tools/device/fit_cuda.py"
  for t in ${BENCH_TYPES:-q4_0 q8_0 f16 q4_k_m}; do
    m=$(synth "$t") && "$BUILD/uma" plan "$m" --hw "${PLAN_HW:-h100-sxm}" --batch 512 --ctx 640 --kv-type f16 --json \
      >"$OUT/plan-$t.json"
  done
  m=$(synth q4_0 llama3-8b) && "$BUILD/uma" plan "$m" --hw "${PLAN_HW:-h100-sxm}" --batch 512 --ctx 640 --kv-type f16 --json \
    >"$OUT/plan-llama3.json"
  # The prefill attention's share: F16 pp512 without it (results wrong, time right).
  m=$(synth f16) && UMA_CUDA_SKIP=attention_gemm "$BUILD/uma" bench -m "$m" --device cuda -p 512 -n 0 -r 3 \
    --no-membw >"$OUT/bench-f16-noattn.log" 2>&1
  ls "$OUT"/plan-*.json
fi

if want depth; then
  echo "== llama-7b Q4_0 decode after a ${DEPTH:-32768}-token context (filled by prefill in chunks of 512), KV cells ${DEPTH_KV:-auto}"
  m=$(synth q4_0) && /usr/bin/time -f "%e s wall" timeout "${DEPTH_TIMEOUT:-300}" "$BUILD/uma" bench -m "$m" \
    --device cuda -d "${DEPTH:-32768}" -p 0 -n 32 -r 2 --no-membw --kv-type "${DEPTH_KV:-auto}" 2>&1 | tee "$OUT/bench-depth.log" \
    | grep -E "^\| llama|error|wall"
fi

if want cpu; then
  echo "== the same models on this machine's CPU ($(nproc) threads)"
  for t in ${CPU_TYPES:-q4_0 q8_0 f16 q4_k_m}; do
    m=$(synth "$t") || continue
    "$BUILD/uma" bench -m "$m" --device cpu -t "${CPU_THREADS:-$(nproc)}" -p 64 -n 16 -r 2 2>&1 | tee "$OUT/cpu-$t.log" \
      | grep -E "^\| llama|bandwidth|error"
  done
  grep -m1 "model name" /proc/cpuinfo
fi

if want moe; then
  MOE_DEVICE=${MOE_DEVICE:-cpu}  # cuda: pp512/tg128 on the GPU instead
  echo "== mixture of experts on $MOE_DEVICE: active vs total bytes per token"
  for shape in ${MOE_SHAPES:-qwen3-30b-a3b deepseek-v3-mini}; do
    m=$(synth q4_0 "$shape") || continue
    if [ "$MOE_DEVICE" = cpu ]; then args=(-t "$(nproc)" -p 32 -n 16 -r 2); else args=(-p 512 -n 128 -r 3 --no-membw); fi
    "$BUILD/uma" bench -m "$m" --device "$MOE_DEVICE" "${args[@]}" 2>&1 | tee "$OUT/moe-$shape.log" \
      | grep -E "^\| |weights read|bandwidth|error"
    # The planner's prediction for the same file and this GPU, to set beside the bench (docs/PLAN.md, CUDA check).
    [ "$MOE_DEVICE" = cuda ] && "$BUILD/uma" plan "$m" --hw local --batch 512 --ctx 640 --kv-type f32 2>&1 \
      | tee "$OUT/moe-plan-$shape.log"
    # A longer prompt (MOE_PP2048=1): whether the per-token MoE and MLA terms hold as the prompt grows.
    [ "$MOE_DEVICE" = cuda ] && [ "${MOE_PP2048:-0}" = 1 ] && "$BUILD/uma" bench -m "$m" --device cuda -p 2048 -n 0 \
      -r 2 --no-membw 2>&1 | tee "$OUT/moe-$shape-pp2048.log" | grep -E "^\| |error"
    rm -f "$m"
  done
fi

if want mem; then
  echo "== device memory: what uma run's plan says it needs on this GPU against nvidia-smi's peak for the process"
  for spec in ${MEM_MODELS:-q4_0:llama-7b q8_0:llama-7b f16:llama-7b q4_0:llama3-8b}; do
    t=${spec%%:*} shape=${spec##*:}
    m=$(synth "$t" "$shape") || continue
    # A 5-token prompt takes the prefill path (cuBLAS, dequantized weights), then decode; -c MEM_CTX cells.
    UMA_CUDA_MEMLOG=1 "$BUILD/uma" run -m "$m" --device cuda -c "${MEM_CTX:-4096}" -n 32 --ignore-eos \
      -p "Once upon a time" >"$OUT/mem-$shape-$t.log" 2>&1 &
    pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
      u=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits \
        | awk -F', ' -v p="$pid" '$1 == p {print $2}')
      [ -n "$u" ] && [ "$u" -gt "$peak" ] && peak=$u
      sleep 0.1
    done
    echo "$shape $t -c ${MEM_CTX:-4096}: nvidia-smi peak $peak MiB"
    grep -E "GPU0|needs|fits|MEMLOG" "$OUT/mem-$shape-$t.log" | head -4
    "$BUILD/uma" plan "$m" --hw h100-sxm --ctx "${MEM_CTX:-4096}" --batch 6 --kv-type f16 --json \
      >"$OUT/mem-plan-$shape-$t.json" 2>&1
    grep -E '"(total|weights|kv_cache|compute|overhead)_bytes"' "$OUT/mem-plan-$shape-$t.json" | head -6 | tr -d ' \n'; echo
  done
fi

if want ceilings; then
  echo "== ceilings: device-to-device copy (bytes read + written) and an f16 GEMM, through PyTorch"
  python3 - <<'PY' 2>&1 | tee "$OUT/ceilings.log"
import torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(10)]; e.record(); torch.cuda.synchronize()
print(f"copy: {2 * x.numel() * 10 / (s.elapsed_time(e) / 1e3) / 1e9:.0f} GB/s")
a = torch.randn(8192, 8192, dtype=torch.float16, device="cuda"); b = torch.randn_like(a)
for _ in range(3): a @ b
s.record(); [a @ b for _ in range(10)]; e.record(); torch.cuda.synchronize()
print(f"f16 gemm 8192^3: {2 * 8192**3 * 10 / (s.elapsed_time(e) / 1e3) / 1e12:.0f} TFLOP/s")
PY
fi
