set -u
B=build-device/uma; export LD_LIBRARY_PATH=/tmp/uma-deps/usr/lib/x86_64-linux-gnu:/tmp/uma-deps/lib/x86_64-linux-gnu
for t in ${TYPES:-q4_0}; do
m=/tmp/uma-llama-7b-$t.gguf; [ -f $m ] || $B synth --shape llama-7b --type $t -o $m >/dev/null
for s in none gemv add_rms_norm,rms_norm rope_store_kv attention swiglu add_rms_norm,rms_norm,rope_store_kv,attention,swiglu; do
  r=$(UMA_CUDA_SKIP=$s $B bench -m $m --device cuda -p 0 -n 128 -r 2 --no-membw 2>&1 | grep -E "tg128" | awk -F'|' '{print $8}')
  echo "$t skip=$s tg128 $r"
done; done
