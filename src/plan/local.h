// Reading this machine (RAM, cores, NVIDIA GPUs) and a GGUF file into planner inputs; the impure edges of
// the otherwise pure planner, shared by `uma plan` and `uma run`.
#pragma once
#include <vector>

#include "gguf/gguf.h"
#include "plan/plan.h"

namespace uma::plan {

// How the local CPU's memory bandwidth is found: the read-bandwidth probe of src/runtime/membw.h (256 MiB, all
// threads, prefetching as the decode kernels do, best of 3 passes; ~0.1 s with the first touch), cached in
// $XDG_CACHE_HOME/uma/membw.json (else ~/.cache/uma/membw.json) per core count and prefetch distance (a cache
// without `prefetch_bytes`, from the older plain probe, is measured again). Without a measurement the generic
// catalog estimate stays.
enum class BandwidthSource { probe_or_cache, cache_only };

// Machines of this host: all local CUDA GPUs (when nvidia-smi reports any), then the local CPU.
std::vector<Machine> detect_local_machines(BandwidthSource bandwidth = BandwidthSource::probe_or_cache);
// The local CPU host alone. `uma run` uses cache_only so that the probe's buffer never adds to its peak memory.
Machine local_cpu_machine(BandwidthSource bandwidth = BandwidthSource::cache_only);
// The measured read bandwidth of this host in GB/s (see BandwidthSource); 0 when none is known.
double local_read_bandwidth_gbs(BandwidthSource bandwidth);
// The model shape and exact per-tensor types of a GGUF file.
PlanInputs inputs_for_gguf(const GgufFile& file);

}  // namespace uma::plan
