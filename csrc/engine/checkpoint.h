// A checkpoint directory of either layout (python/gptoss/checkpoint.py reads the same), memory-mapped, every tensor checked
// against the config, seen through role names that do not depend on the layout.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gptoss/gptoss.h"

namespace gptoss {

enum class DType { BF16, F16, F32, U8, Other };
const char* dtype_name(DType d);

struct Tensor {
  const uint8_t* data = nullptr;  // into the mapping; read-only
  DType dtype = DType::Other;
  std::vector<int64_t> shape;
  std::string name, file;
  size_t row_stride_bytes = 0;    // bytes from one row (first index) to the next
};

struct LayerTensors {
  Tensor attn_norm, q_w, k_w, v_w, q_b, k_b, v_b, sinks, out_w, out_b;
  Tensor mlp_norm, router_w, router_b;
  Tensor w1_blocks, w1_scales, w1_bias, w2_blocks, w2_scales, w2_bias;
};

// One tensor of a safetensors header: its bytes are [begin, end) of the data area, which starts
// at SafetensorsHeader::data_start in the file.
struct SafetensorsEntry {
  DType dtype = DType::Other;
  std::string dtype_str;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct SafetensorsHeader {
  size_t data_start = 0;  // 8 + the header length
  bool hollow = false;    // __metadata__.gptoss_hollow == "1" (gptoss.testing, hollow=True)
  std::map<std::string, SafetensorsEntry> entries;
};

// Validates a whole safetensors file held in memory, bytes [0, size): the 8-byte little-endian
// header length, the JSON header, each tensor's dtype and shape, and its byte range (of the size
// the shape implies, inside the file, overlapping no other). Reads nothing outside [0, size).
// Throws Error "<path>: ..." for any malformed input. The loader (MappedFile) runs this on the
// mapping; tests/fuzz/fuzz_checkpoint.cpp on fuzzed bytes.
SafetensorsHeader parse_safetensors(const uint8_t* file, size_t size, const std::string& path);

// Config::from_json_file on text already read; errors name `path`.
Config config_from_json(const char* text, size_t size, const std::string& path);

class MappedFile;

class Checkpoint {
 public:
  Checkpoint(const std::string& path, const std::string& layout);
  ~Checkpoint();

  Config config;
  std::string layout;      // "hf" or "original"
  std::string directory;   // where the tensors are
  std::string note;
  // A file of the checkpoint whose matrices are holes, to be made on the device by
  // Options::random_device_weights (empty: none).
  std::string hollow_file;
  Tensor embedding, final_norm, unembedding;
  std::vector<LayerTensors> layers;

 private:
  std::vector<std::unique_ptr<MappedFile>> files_;
};

// bf16/f16/f32 tensor -> float32 vector (for the small tensors: norms, biases, sinks).
std::vector<float> to_f32(const Tensor& t);

}  // namespace gptoss
