// Fuzz target for the checkpoint reader: the JSON parser (csrc/engine/json.cpp), the config
// reader and the safetensors header validation (parse_safetensors, csrc/engine/checkpoint.cpp)
// under hostile bytes. Each input is used three ways:
//   (a) as JSON text, for json::parse;
//   (b) as a whole safetensors file (8-byte little-endian header length + JSON + data), for
//       parse_safetensors, the function the loader (MappedFile) runs on its mapping;
//   (c) as a config.json, for config_from_json (Config::from_json_file without the file).
// The only acceptable failure is gptoss::Error whose message starts with the name it was given
// ("<file>: ..."); any other exception, or a message not naming the file, aborts. A header that
// is accepted must describe byte ranges inside the input, of the size its dtype and shape
// imply, overlapping no other: this checks that and reads every byte of every range, so a range
// past the end is an AddressSanitizer report (the input is an exact-size heap allocation).
//
// Builds, both without Python or CUDA:
//   gcc (CI): the CMake target fuzz_checkpoint links this with tests/fuzz/fuzz_driver.cpp, a
//   main() that runs the seed corpus, then deterministic mutations for a bounded time:
//     cmake -S . -B build/fuzz -G Ninja -DGPTOSS_CUDA=OFF -DGPTOSS_SANITIZE=address
//           -DCMAKE_BUILD_TYPE=RelWithDebInfo
//     cmake --build build/fuzz -j2 --target fuzz_checkpoint
//     build/fuzz/fuzz_checkpoint tests/fuzz/corpus 60
//   clang with libFuzzer (coverage-guided; the driver is not needed), one command:
//     clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc -Icsrc/include
//             tests/fuzz/fuzz_checkpoint.cpp csrc/engine/checkpoint.cpp csrc/engine/json.cpp
//             -o fuzz_checkpoint_lf
//     mkdir -p corpus_work && ./fuzz_checkpoint_lf -max_total_time=60 -max_len=65536
//             corpus_work tests/fuzz/corpus
// tests/test_fuzz_checkpoint.py runs the first; tests/fuzz/README.md says more.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <tuple>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/json.h"
#include "gptoss/error.h"

namespace {

volatile unsigned g_sink;  // the bytes read from accepted tensors go here, so they are read

[[noreturn]] void die(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_checkpoint: %s: %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

void expect_names(const gptoss::Error& e, const std::string& file) {
  const std::string msg = e.what();
  if (msg.compare(0, file.size() + 2, file + ": ") != 0)
    die("an error that does not start with the file's name", msg);
}

// Everything the loader later relies on for an accepted header (Checkpoint::Checkpoint makes
// Tensor::data = base + data_start + begin and reads shape-many elements from there).
void check_accepted(const gptoss::SafetensorsHeader& h, const uint8_t* data, size_t size) {
  if (h.data_start < 8 || h.data_start > size) die("accepted header", "data_start out of the file");
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& kv : h.entries) {
    const gptoss::SafetensorsEntry& e = kv.second;
    if (e.begin > e.end || e.end > size - h.data_start)
      die("accepted header", "tensor '" + kv.first + "' lies outside the file");
    unsigned __int128 bytes = e.dtype == gptoss::DType::F32 ? 4 : e.dtype == gptoss::DType::U8 ? 1
                              : e.dtype == gptoss::DType::Other ? 0 : 2;
    for (int64_t d : e.shape) {
      if (d < 0) die("accepted header", "negative dimension in '" + kv.first + "'");
      bytes *= uint64_t(d);
      if (bytes > size) bytes = size + 1;  // stays above any span; no wrap-around
    }
    if (e.dtype != gptoss::DType::Other && bytes != e.end - e.begin)
      die("accepted header", "span of '" + kv.first + "' is not its shape's size");
    // touch every byte: an out-of-range pointer is an AddressSanitizer report here
    const uint8_t* p = data + h.data_start + e.begin;
    unsigned sum = 0;
    for (uint64_t i = 0; i < e.end - e.begin; ++i) sum += p[i];
    g_sink = g_sink + sum;
    if (e.end > e.begin) spans.emplace_back(e.begin, e.end);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second) die("accepted header", "overlapping tensors");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // libFuzzer passes a null pointer for the empty input; the readers take (nullptr, 0)
  const char* text = reinterpret_cast<const char*>(data);
  try {
    // (a)
    try {
      gptoss::json::Value v = gptoss::json::parse(text, size, "fuzz.json");
      (void)v;
    } catch (const gptoss::Error& e) {
      expect_names(e, "fuzz.json");
    }
    // (b)
    try {
      gptoss::SafetensorsHeader h = gptoss::parse_safetensors(data, size, "fuzz.safetensors");
      check_accepted(h, data, size);
    } catch (const gptoss::Error& e) {
      expect_names(e, "fuzz.safetensors");
    }
    // (c)
    try {
      gptoss::Config c = gptoss::config_from_json(text, size, "config.json");
      (void)c;
    } catch (const gptoss::Error& e) {
      expect_names(e, "config.json");
    }
  } catch (const std::bad_alloc&) {
    die("std::bad_alloc", "a size was not checked against the input before allocating");
  } catch (const std::exception& e) {
    die("an exception other than gptoss::Error", e.what());
  } catch (...) {
    die("an exception other than gptoss::Error", "(not a std::exception)");
  }
  return 0;
}
