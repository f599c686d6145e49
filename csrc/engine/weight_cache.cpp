// The mapped cache of repacked weights (weight_cache.h has the file layout and the guarantees).
#include "engine/weight_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_features.h"
#include "gptoss/error.h"

namespace gptoss {

namespace {
constexpr char kMagic[8] = {'G', 'P', 'T', 'O', 'S', 'S', 'W', 'C'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 4096;
constexpr size_t kEntryBytes = 112;
constexpr size_t kNameBytes = 80;
constexpr size_t kAlign = 4096;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t entries;
  char format[32];
  uint64_t fingerprint;
  uint64_t file_bytes;
  uint64_t table_checksum;
  uint64_t header_checksum;  // of the bytes before this field
};
static_assert(sizeof(Header) == 80, "cache header layout");

struct Entry {
  char name[kNameBytes];
  uint64_t offset;
  uint64_t bytes;
  uint64_t checksum;
  uint64_t reserved;
};
static_assert(sizeof(Entry) == kEntryBytes, "cache entry layout");

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t fmix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

std::string errno_text() { return std::strerror(errno); }

// The layout every entry list implies: offsets of the entries' bytes and the file size.
std::vector<size_t> layout_of(const std::vector<size_t>& sizes, size_t* file_bytes) {
  std::vector<size_t> off(sizes.size());
  size_t at = align_up(kHeaderBytes + sizes.size() * kEntryBytes, kAlign);
  for (size_t i = 0; i < sizes.size(); ++i) {
    off[i] = at;
    at = align_up(at + sizes[i], kAlign);
  }
  *file_bytes = at;
  return off;
}

// Checks the header and the entry table of a file of `size` bytes at base; returns "" if sound
// (and the table in *entries), else the reason.
std::string check_structure(const uint8_t* base, size_t size, Header* h, std::vector<Entry>* entries) {
  if (size < kHeaderBytes) return "shorter (" + std::to_string(size) + " bytes) than its header";
  std::memcpy(h, base, sizeof(Header));
  if (std::memcmp(h->magic, kMagic, 8) != 0) return "not a gptoss weight cache (bad magic)";
  if (h->header_checksum != hash64(base, offsetof(Header, header_checksum), 1))
    return "header checksum mismatch";
  if (h->version != kVersion)
    return "version " + std::to_string(h->version) + ", this build reads " + std::to_string(kVersion);
  if (h->file_bytes != size)
    return "header says " + std::to_string(h->file_bytes) + " bytes, the file holds " +
           std::to_string(size) + " (truncated or grown)";
  if (h->entries > (size - kHeaderBytes) / kEntryBytes) return "entry count past the file";
  const size_t tbytes = size_t(h->entries) * kEntryBytes;
  if (h->table_checksum != hash64(base + kHeaderBytes, tbytes, 2)) return "entry table checksum mismatch";
  entries->resize(h->entries);
  if (tbytes) std::memcpy(entries->data(), base + kHeaderBytes, tbytes);
  const size_t data_start = align_up(kHeaderBytes + tbytes, kAlign);
  for (size_t i = 0; i < entries->size(); ++i) {
    const Entry& e = (*entries)[i];
    if (std::memchr(e.name, 0, kNameBytes) == nullptr) return "entry " + std::to_string(i) + ": name not terminated";
    if (e.offset % kAlign != 0 || e.offset < data_start || e.offset > size || e.bytes > size - e.offset)
      return "entry '" + std::string(e.name) + "': bytes [" + std::to_string(e.offset) + ", +" +
             std::to_string(e.bytes) + ") outside the file";
  }
  return "";
}

struct Mapping {
  uint8_t* base = nullptr;
  size_t size = 0;
};

// Maps path read-only; returns false (with *why) if it cannot.
bool map_file(const std::string& path, Mapping* m, std::string* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *why = errno_text();
    return false;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *why = errno_text();
    ::close(fd);
    return false;
  }
  m->size = size_t(st.st_size);
  if (m->size == 0) {
    ::close(fd);
    *why = "empty file";
    return false;
  }
  void* p = ::mmap(nullptr, m->size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    *why = "mmap failed: " + errno_text();
    return false;
  }
  m->base = static_cast<uint8_t*>(p);
  return true;
}

bool mkdirs(const std::string& dir, std::string* why) {
  std::string cur;
  if (!dir.empty() && dir[0] == '/') cur = "/";
  for (size_t at = 0; at < dir.size();) {
    size_t end = dir.find('/', at);
    if (end == std::string::npos) end = dir.size();
    const std::string part = dir.substr(at, end - at);
    at = end + 1;
    if (part.empty()) continue;
    cur += part + "/";
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create " + cur + ": " + errno_text();
      return false;
    }
  }
  return true;
}

bool write_all(int fd, const uint8_t* p, size_t n, size_t off, std::string* why) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, std::min(n, size_t(1) << 30), off_t(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      *why = errno_text();
      return false;
    }
    p += w;
    n -= size_t(w);
    off += size_t(w);
  }
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string gb(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GB", double(bytes) / 1e9);
  return b;
}
}  // namespace

uint64_t hash64(const void* data, size_t bytes, uint64_t seed) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t h[4] = {seed ^ 0x9e3779b97f4a7c15ULL, seed + 0x632be59bd9b4e019ULL,
                   seed ^ 0x85ebca77c2b2ae63ULL, seed - 0x27d4eb2f165667c5ULL};
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32)
    for (int j = 0; j < 4; ++j) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * j, 8);
      h[j] = rotl(h[j] ^ (w * 0x87c37b91114253d5ULL), 31) * 0x4cf5ad432745937fULL;
    }
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h[0] = rotl(h[0] ^ (w * 0x87c37b91114253d5ULL), 31) * 0x4cf5ad432745937fULL;
  }
  uint64_t t = 0;
  size_t k = 0;
  for (; i + k < bytes; ++k) t |= uint64_t(p[i + k]) << (8 * k);
  h[1] ^= fmix(t ^ k);
  uint64_t r = uint64_t(bytes);
  for (int j = 0; j < 4; ++j) r = fmix(r ^ rotl(h[j], 17 * j + 7));
  return r;
}

uint64_t checkpoint_fingerprint(const std::vector<const Tensor*>& tensors, const std::string& format) {
  uint64_t h = hash64(format.data(), format.size(), 3);
  for (const Tensor* t : tensors) {
    Message os;
    os << t->name << '|' << t->file << '|' << dtype_name(t->dtype);
    size_t n = 1;
    for (int64_t d : t->shape) os << ',' << d, n *= size_t(d);
    struct stat st;
    if (::stat(t->file.c_str(), &st) == 0)
      os << '|' << st.st_size << '|' << st.st_mtim.tv_sec << '.' << st.st_mtim.tv_nsec;
    const std::string s = os.str();
    h = fmix(h ^ hash64(s.data(), s.size(), 4));
    const size_t bytes = n * (t->dtype == DType::U8 ? 1 : t->dtype == DType::F32 ? 4 : 2);
    const size_t sample = std::min<size_t>(4096, bytes);
    for (size_t at : {size_t(0), bytes / 2 - std::min(bytes / 2, sample / 2), bytes - sample})
      h = fmix(h ^ hash64(t->data + at, sample, 5));
  }
  return h;
}

std::string default_cache_dir() {
  if (const char* d = std::getenv("GPTOSS_CACHE"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/gptoss";
  if (const char* d = std::getenv("HOME"); d && *d) return std::string(d) + "/.cache/gptoss";
  return "";
}

std::string weight_cache_path(const std::string& dir, const std::string& format, uint64_t fp) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(fp));
  return dir + "/weights/" + format + "-" + b + ".bin";
}

WeightCache::~WeightCache() {
  if (!base_) return;
  if (mapped_) ::munmap(base_, bytes_);
  else std::free(base_);
}

std::unique_ptr<WeightCache> WeightCache::in_memory(const std::vector<CacheEntry>& entries) {
  std::unique_ptr<WeightCache> c(new WeightCache());
  size_t total = 0;
  c->offsets_.resize(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    c->offsets_[i] = total;
    total = align_up(total + entries[i].bytes, 64);
  }
  c->bytes_ = std::max<size_t>(total, 64);
  c->base_ = static_cast<uint8_t*>(std::aligned_alloc(4096, align_up(c->bytes_, 4096)));
  GPTOSS_CHECK(c->base_ != nullptr, "out of memory repacking " << gb(total) << " of weights");
  const long long n = (long long)entries.size();
  uint8_t* base = c->base_;
  const std::vector<size_t>& off = c->offsets_;
#pragma omp parallel for schedule(dynamic)
  for (long long i = 0; i < n; ++i) entries[size_t(i)].fill(base + off[size_t(i)]);
  return c;
}

std::unique_ptr<WeightCache> WeightCache::open(const std::string& dir, const std::string& format,
                                               uint64_t fingerprint,
                                               const std::vector<CacheEntry>& entries,
                                               std::string* note) {
  GPTOSS_CHECK(format.size() < 32, "weight cache format name '" << format << "' too long");
  std::vector<size_t> sizes(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    GPTOSS_CHECK(entries[i].name.size() < kNameBytes, "weight cache entry name too long: " << entries[i].name);
    sizes[i] = entries[i].bytes;
  }
  size_t file_bytes = 0;
  const std::vector<size_t> offsets = layout_of(sizes, &file_bytes);
  std::string rejected;

  auto try_map = [&](const std::string& path, std::string* why) -> std::unique_ptr<WeightCache> {
    Mapping m;
    if (!map_file(path, &m, why)) return nullptr;
    Header h;
    std::vector<Entry> table;
    std::string bad = check_structure(m.base, m.size, &h, &table);
    if (bad.empty() && std::string(h.format, strnlen(h.format, sizeof h.format)) != format)
      bad = "format '" + std::string(h.format, strnlen(h.format, sizeof h.format)) + "', wanted '" + format + "'";
    if (bad.empty() && h.fingerprint != fingerprint) bad = "made from other weights (fingerprint differs)";
    if (bad.empty() && table.size() != entries.size())
      bad = std::to_string(table.size()) + " entries, wanted " + std::to_string(entries.size());
    for (size_t i = 0; bad.empty() && i < table.size(); ++i)
      if (entries[i].name != table[i].name || table[i].bytes != sizes[i] || table[i].offset != offsets[i])
        bad = "entry " + std::to_string(i) + " ('" + table[i].name + "') is not '" + entries[i].name + "' of " +
              std::to_string(sizes[i]) + " bytes";
    if (!bad.empty()) {
      ::munmap(m.base, m.size);
      *why = bad;
      return nullptr;
    }
    std::unique_ptr<WeightCache> c(new WeightCache());
    c->base_ = m.base;
    c->bytes_ = m.size;
    c->mapped_ = true;
    c->path_ = path;
    c->offsets_ = offsets;
    return c;
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::string why;
  if (dir.empty()) {
    why = "no cache directory (set GPTOSS_CACHE, XDG_CACHE_HOME or HOME)";
  } else {
    const std::string path = weight_cache_path(dir, format, fingerprint);
    if (::access(path.c_str(), F_OK) == 0) {
      std::string bad;
      if (auto c = try_map(path, &bad)) {
        *note = "mapped " + path;
        return c;
      }
      rejected = "rejected " + path + " (" + bad + "); ";
    }
    // build it: a temporary file, synced, then renamed over the final name
    std::string err;
    if (mkdirs(dir + "/weights", &err)) {
      const std::string tmp = path + ".tmp." + std::to_string(::getpid());
      const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) {
        err = "cannot create " + tmp + ": " + errno_text();
      } else {
        bool ok = ::ftruncate(fd, off_t(file_bytes)) == 0;
        if (!ok) err = "cannot size " + tmp + ": " + errno_text();
        std::vector<Entry> table(entries.size());
        const size_t batch = size_t(std::max(2, 2 * cpu::num_threads()));
        std::vector<std::vector<uint8_t>> bufs(batch);
        for (size_t b0 = 0; ok && b0 < entries.size(); b0 += batch) {
          const long long nb = (long long)std::min(batch, entries.size() - b0);
#pragma omp parallel for schedule(dynamic)
          for (long long j = 0; j < nb; ++j) {
            const size_t i = b0 + size_t(j);
            bufs[size_t(j)].assign(sizes[i], 0);
            entries[i].fill(bufs[size_t(j)].data());
            table[i].checksum = hash64(bufs[size_t(j)].data(), sizes[i], 6);
          }
          for (long long j = 0; ok && j < nb; ++j) {
            const size_t i = b0 + size_t(j);
            std::memset(table[i].name, 0, kNameBytes);
            std::memcpy(table[i].name, entries[i].name.data(), entries[i].name.size());
            table[i].offset = offsets[i];
            table[i].bytes = sizes[i];
            table[i].reserved = 0;
            ok = write_all(fd, bufs[size_t(j)].data(), sizes[i], offsets[i], &err);
            if (!ok) err = "cannot write " + tmp + ": " + err;
          }
        }
        bufs.clear();
        if (ok) {
          std::vector<uint8_t> head(kHeaderBytes + table.size() * kEntryBytes, 0);
          if (!table.empty()) std::memcpy(head.data() + kHeaderBytes, table.data(), table.size() * kEntryBytes);
          Header h;
          std::memset(&h, 0, sizeof h);
          std::memcpy(h.magic, kMagic, 8);
          h.version = kVersion;
          h.entries = uint32_t(table.size());
          std::memcpy(h.format, format.data(), format.size());
          h.fingerprint = fingerprint;
          h.file_bytes = file_bytes;
          h.table_checksum = hash64(head.data() + kHeaderBytes, table.size() * kEntryBytes, 2);
          h.header_checksum = hash64(&h, offsetof(Header, header_checksum), 1);
          std::memcpy(head.data(), &h, sizeof h);
          ok = write_all(fd, head.data(), head.size(), 0, &err);
          if (!ok) err = "cannot write " + tmp + ": " + err;
        }
        if (ok && ::fsync(fd) != 0) ok = false, err = "cannot sync " + tmp + ": " + errno_text();
        ::close(fd);
        if (ok && ::rename(tmp.c_str(), path.c_str()) != 0)
          ok = false, err = "cannot rename " + tmp + ": " + errno_text();
        if (!ok) {
          ::unlink(tmp.c_str());
        } else {
          const int dfd = ::open((dir + "/weights").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
          if (dfd >= 0) ::fsync(dfd), ::close(dfd);
          std::string bad;
          if (auto c = try_map(path, &bad)) {
            char t[32];
            std::snprintf(t, sizeof t, "%.1f s", seconds_since(t0));
            *note = rejected + "built " + path + " (" + gb(file_bytes) + " in " + t + ") and mapped it";
            return c;
          }
          err = "the file just written does not check: " + bad;
        }
      }
    }
    why = err;
  }
  auto c = in_memory(entries);
  *note = rejected + "repacked into memory (" + gb(c->bytes_) + " anonymous, not shared): " + why;
  return c;
}

size_t verify_weight_cache(const std::string& path) {
  Mapping m;
  std::string why;
  GPTOSS_CHECK(map_file(path, &m, &why), path << ": cannot map: " << why);
  Header h;
  std::vector<Entry> table;
  const std::string bad = check_structure(m.base, m.size, &h, &table);
  std::string fail_msg = bad;
  for (size_t i = 0; fail_msg.empty() && i < table.size(); ++i)
    if (hash64(m.base + table[i].offset, table[i].bytes, 6) != table[i].checksum)
      fail_msg = "entry '" + std::string(table[i].name) + "': content checksum mismatch";
  ::munmap(m.base, m.size);
  GPTOSS_CHECK(fail_msg.empty(), path << ": " << fail_msg);
  return table.size();
}

}  // namespace gptoss
