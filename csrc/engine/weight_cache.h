// A cache of weights in another layout than the checkpoint's (the CPU backend's repacked
// experts), kept in one file and mapped read-only like the checkpoint, so that its pages stay
// reclaimable and shared between processes and a second load costs no more than mapping it.
//
// The file is keyed by a fingerprint of the source tensors (their names, shapes, file sizes and
// modification times, and samples of their bytes; checkpoint_fingerprint) and the layout's
// format name, so a changed checkpoint or packing code never meets an old file. It is written to
// a temporary name, synced and renamed, so readers see it whole or not at all. On open, the
// header, its checksums, the entry table (names, sizes, offsets inside the file) and the
// fingerprint are checked before anything is trusted; each entry's content checksum, written
// with it, is checked by verify_weight_cache() (a full read) on request.
//
// File layout (little-endian): a 4096-byte header {magic "GPTOSSWC", u32 version, u32 entries,
// char format[32], u64 fingerprint, u64 file_bytes, u64 table_checksum, u64 header_checksum},
// then the entry table (kEntryBytes each: char name[80], u64 offset, u64 bytes, u64 checksum,
// u64 reserved), then the entries' bytes, each at a multiple of 4096.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/checkpoint.h"

namespace gptoss {

struct CacheEntry {
  std::string name;                        // at most 79 bytes
  size_t bytes = 0;
  std::function<void(uint8_t* dst)> fill;  // writes the entry's bytes (called from threads)
};

// 64-bit hash of a byte range (not cryptographic: it tells files apart, nothing more).
uint64_t hash64(const void* data, size_t bytes, uint64_t seed = 0);

// Fingerprint of tensors of the mapped checkpoint: names, shapes, the sizes and modification
// times of their files, and three 4 KiB samples of each tensor's bytes.
uint64_t checkpoint_fingerprint(const std::vector<const Tensor*>& tensors, const std::string& format);

// Where caches go when none is named: $GPTOSS_CACHE, else $XDG_CACHE_HOME/gptoss, else
// $HOME/.cache/gptoss (empty if none of these is set).
std::string default_cache_dir();

class WeightCache {
 public:
  ~WeightCache();
  // The cache file for (format, fingerprint) under dir: mapped if present and sound, else built
  // from the entries' fill functions and then mapped. A file that fails its checks is rebuilt;
  // where dir cannot be written the entries are built into memory instead. *note says which
  // happened and why (the path, the time taken, the reason a file was rejected or not written).
  static std::unique_ptr<WeightCache> open(const std::string& dir, const std::string& format,
                                           uint64_t fingerprint,
                                           const std::vector<CacheEntry>& entries,
                                           std::string* note);
  // The entries built into anonymous memory, no file.
  static std::unique_ptr<WeightCache> in_memory(const std::vector<CacheEntry>& entries);

  const uint8_t* data(size_t i) const { return base_ + offsets_[i]; }
  size_t size() const { return offsets_.size(); }
  const std::string& path() const { return path_; }  // empty: in memory
  bool mapped() const { return mapped_; }

 private:
  WeightCache() = default;
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
  bool mapped_ = false;
  std::string path_;
  std::vector<size_t> offsets_;
};

// The file's path for (dir, format, fingerprint).
std::string weight_cache_path(const std::string& dir, const std::string& format,
                              uint64_t fingerprint);

// Reads a cache file whole and checks every entry against the checksum written with it; throws
// gptoss::Error naming the file and the first bad entry. Returns the number of entries.
size_t verify_weight_cache(const std::string& path);

}  // namespace gptoss
