// Reading this machine (RAM, cores, NVIDIA GPUs) and a GGUF file into planner inputs; the impure edges of
// the otherwise pure planner, shared by `uma plan` and `uma run`.
#pragma once
#include <vector>

#include "gguf/gguf.h"
#include "plan/plan.h"

namespace uma::plan {

// Machines of this host: all local CUDA GPUs (when nvidia-smi reports any), then the local CPU.
std::vector<Machine> detect_local_machines();
// The local CPU host alone.
Machine local_cpu_machine();
// The model shape and exact per-tensor types of a GGUF file.
PlanInputs inputs_for_gguf(const GgufFile& file);

}  // namespace uma::plan
