#include "safetensors.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace uma::test {

std::map<std::string, RefTensor> load_safetensors(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  std::vector<char> body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto j = nlohmann::json::parse(header);
  std::map<std::string, RefTensor> out;
  for (auto& [name, info] : j.items()) {
    if (name == "__metadata__" || info["dtype"] != "F32") continue;
    RefTensor t;
    t.shape = info["shape"].get<std::vector<int64_t>>();
    const auto off = info["data_offsets"].get<std::vector<size_t>>();
    t.data.resize((off[1] - off[0]) / 4);
    std::memcpy(t.data.data(), body.data() + off[0], off[1] - off[0]);
    out.emplace(name, std::move(t));
  }
  return out;
}

}  // namespace uma::test
