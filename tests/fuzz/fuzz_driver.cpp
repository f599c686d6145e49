// A main() for fuzz targets where libFuzzer is not available (gcc; see fuzz_checkpoint.cpp for
// the clang build). It calls LLVMFuzzerTestOneInput on
//   1. every file of a seed corpus directory, in name order. Seeds named "ok-*" must be accepted
//      by parse_safetensors and seeds named "bad-*" rejected (with gptoss::Error), so the corpus
//      keeps covering what its names say; each bad seed's message is printed;
//   2. then, until SECONDS have passed, deterministic pseudo-random mutations of the seeds (a
//      fixed PRNG seeded by SEED): bit flips, bytes replaced by JSON-significant characters,
//      insertions of tokens (keys, dtypes, escapes, huge and negative numbers), erased ranges,
//      truncations, duplicated slices, splices of two seeds, numbers replaced by edge values,
//      deep nesting and edits of the 8-byte length prefix. Half of the mutants change only the
//      JSON header and get a length prefix that matches it again, so they reach the checks
//      behind the prefix's.
// The count of runs differs with the machine's speed, the sequence of inputs does not.
//
//   fuzz_checkpoint CORPUS_DIR SECONDS [SEED]   the above; exit 0 if nothing failed
//   fuzz_checkpoint --run FILE...               each file once (to replay a saved input)
//
// An input that crashes (a sanitizer report, an abort from the target) or runs for more than
// 20 s is first written to $FUZZ_ARTIFACT_DIR (default: the current directory) as
// crash-<n>.bin or hang-<n>.bin, and its name printed.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "engine/checkpoint.h"
#include "gptoss/error.h"

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define FUZZ_HAVE_DEATH_CALLBACK 1
#endif
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

// --- the input being run, saved if it kills the process ---------------------------------------
const Bytes* g_current = nullptr;
std::atomic<uint64_t> g_runs{0};
std::atomic<bool> g_in_input{false};

void save_current(const char* kind) {
  if (!g_current) return;
  const char* dir = std::getenv("FUZZ_ARTIFACT_DIR");
  std::string path = std::string(dir && *dir ? dir : ".") + "/" + kind + "-" +
                     std::to_string(g_runs.load()) + ".bin";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (!g_current->empty()) std::fwrite(g_current->data(), 1, g_current->size(), f);
    std::fclose(f);
    std::fprintf(stderr, "fuzz_driver: input of run %llu written to %s\n",
                 (unsigned long long)g_runs.load(), path.c_str());
  }
}

void on_death() { save_current("crash"); }

void on_abort(int) {
  save_current("crash");
  std::signal(SIGABRT, SIG_DFL);
  std::abort();
}

// a stuck input (an endless loop) never returns: a watchdog saves it and ends the run
void watchdog() {
  uint64_t last = ~uint64_t(0);
  int same = 0;
  while (true) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const uint64_t now = g_runs.load();
    same = (now == last && g_in_input.load()) ? same + 1 : 0;
    last = now;
    if (same >= 20) {
      std::fprintf(stderr, "fuzz_driver: run %llu has taken more than 20 s: a hang\n",
                   (unsigned long long)now);
      save_current("hang");
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
}

void run_one(const Bytes& in) {
  // an exact-size copy on the heap: one byte past it is an AddressSanitizer report
  Bytes exact(in);
  g_current = &exact;
  g_in_input = true;
  LLVMFuzzerTestOneInput(exact.empty() ? nullptr : exact.data(), exact.size());
  g_in_input = false;
  ++g_runs;
  g_current = nullptr;
}

bool read_file(const std::string& path, Bytes* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

// --- deterministic mutations ---------------------------------------------------------------------
struct Rng {
  uint64_t s;
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? size_t(next() % n) : 0; }
  bool coin(unsigned one_in) { return below(one_in) == 0; }
};

const char kSignificant[] = "{}[]\",:\\0123456789eE.-+ tfnul\x00\x1f\x7f\xc3\xff";

const char* const kTokens[] = {
    "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\"gptoss_hollow\"",
    "\"F32\"", "\"BF16\"", "\"F16\"", "\"U8\"", "\"I8\"", "\"F64\"", "\"BOOL\"", "\"F8_E4M3\"",
    "\"\"", "\\u0000", "\\uD800", "\\uDC00", "\\uD83D\\uDE00", "\\u00e9", "\\", "\\x", "\\u12",
    "\xc3\xa9", "\xff", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf", "\xe2\x82",
    "1e999", "-1e999", "1e-400", "-1", "-0", "0.5", "1e2", "01", "1.", ".5", "-", "1e", "+1",
    "18446744073709551616", "18446744073709551615", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "4294967296",
    "4294967295", "2147483648", "9007199254740993", "1000000000000000000000",
    "true", "false", "null", "[]", "{}", "[0,0]", "[0]", "[1,0]", "[[]]", "{\"\":0}",
    "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},",
    "\"y\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]},",
};

const char* const kNumbers[] = {
    "0", "1", "2", "7", "8", "-1", "-8", "255", "256", "65535", "65536", "4294967295",
    "4294967296", "2147483647", "2147483648", "4611686018427387904", "9223372036854775807",
    "9223372036854775808", "18446744073709551615", "18446744073709551616",
    "99999999999999999999999", "1e308", "1e999", "0.0", "1.5", "-0", "3e0",
};

void insert(Bytes& b, size_t at, const void* p, size_t n) {
  const uint8_t* s = static_cast<const uint8_t*>(p);
  b.insert(b.begin() + std::ptrdiff_t(at), s, s + n);
}

// a run of digits (with a leading '-') somewhere in b: [*lo, *hi)
bool find_number(Rng& r, const Bytes& b, size_t* lo, size_t* hi) {
  if (b.empty()) return false;
  for (int tries = 0; tries < 8; ++tries) {
    size_t i = r.below(b.size());
    while (i < b.size() && !(b[i] >= '0' && b[i] <= '9')) ++i;
    if (i == b.size()) continue;
    size_t j = i;
    while (i > 0 && ((b[i - 1] >= '0' && b[i - 1] <= '9') || b[i - 1] == '-')) --i;
    while (j < b.size() && b[j] >= '0' && b[j] <= '9') ++j;
    *lo = i;
    *hi = j;
    return true;
  }
  return false;
}

void mutate_once(Rng& r, Bytes& b, const std::vector<Bytes>& seeds) {
  const size_t n = b.size();
  switch (r.below(12)) {
    case 0:  // flip a bit
      if (n) b[r.below(n)] ^= uint8_t(1u << r.below(8));
      break;
    case 1:  // any byte
      if (n) b[r.below(n)] = uint8_t(r.next());
      break;
    case 2:  // a JSON-significant byte
      if (n) b[r.below(n)] = uint8_t(kSignificant[r.below(sizeof kSignificant - 1)]);
      break;
    case 3: {  // insert a token or a significant byte
      const char* t = kTokens[r.below(sizeof kTokens / sizeof *kTokens)];
      if (r.coin(3)) {
        char c = kSignificant[r.below(sizeof kSignificant - 1)];
        insert(b, r.below(n + 1), &c, 1);
      } else {
        insert(b, r.below(n + 1), t, std::strlen(t));
      }
      break;
    }
    case 4: {  // erase a range
      if (!n) break;
      size_t at = r.below(n), len = 1 + r.below(std::min<size_t>(n - at, 32));
      b.erase(b.begin() + std::ptrdiff_t(at), b.begin() + std::ptrdiff_t(at + len));
      break;
    }
    case 5:  // truncate
      if (n) b.resize(r.below(n));
      break;
    case 6: {  // duplicate a slice elsewhere
      if (!n) break;
      size_t at = r.below(n), len = 1 + r.below(std::min<size_t>(n - at, 256));
      Bytes slice(b.begin() + std::ptrdiff_t(at), b.begin() + std::ptrdiff_t(at + len));
      insert(b, r.below(n + 1), slice.data(), slice.size());
      break;
    }
    case 7: {  // splice: a prefix of this, a suffix of another seed
      const Bytes& o = seeds[r.below(seeds.size())];
      size_t i = r.below(n + 1), j = r.below(o.size() + 1);
      b.resize(i);
      b.insert(b.end(), o.begin() + std::ptrdiff_t(j), o.end());
      break;
    }
    case 8:
    case 9: {  // a number replaced by an edge value
      size_t lo, hi;
      if (!find_number(r, b, &lo, &hi)) break;
      const char* v = kNumbers[r.below(sizeof kNumbers / sizeof *kNumbers)];
      b.erase(b.begin() + std::ptrdiff_t(lo), b.begin() + std::ptrdiff_t(hi));
      insert(b, lo, v, std::strlen(v));
      break;
    }
    case 10: {  // deep nesting, just past or under the parser's bound (json.cpp, kMaxDepth)
      const size_t depth = r.coin(2) ? 60 + r.below(10) : 1 + r.below(2000);
      const bool obj = r.coin(3);
      std::string s;
      for (size_t i = 0; i < depth; ++i) s += obj ? "{\"a\":" : "[";
      s += "0";
      if (r.coin(2)) for (size_t i = 0; i < depth; ++i) s += obj ? "}" : "]";
      insert(b, r.below(n + 1), s.data(), s.size());
      break;
    }
    case 11: {  // the length prefix (mutants of the whole file)
      if (n < 8) break;
      uint64_t v;
      const uint64_t cur = [&] { uint64_t x = 0; for (int i = 7; i >= 0; --i) x = (x << 8) | b[size_t(i)]; return x; }();
      switch (r.below(6)) {
        case 0: v = n - 8; break;
        case 1: v = cur + 1 - 2 * uint64_t(r.coin(2)); break;
        case 2: v = r.below(n + 16); break;
        case 3: v = (100u << 20) + r.below(2); break;
        case 4: v = uint64_t(1) << (32 + r.below(32)); break;
        default: v = ~uint64_t(0) - r.below(16); break;
      }
      for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(v >> (8 * i));
      break;
    }
  }
}

constexpr size_t kMaxInput = 1 << 20;

Bytes mutant(Rng& r, const std::vector<Bytes>& seeds) {
  Bytes b = seeds[r.below(seeds.size())];
  const int edits = 1 + int(r.below(4));
  uint64_t n = 0;
  if (b.size() >= 8)
    for (int i = 7; i >= 0; --i) n = (n << 8) | b[size_t(i)];
  if (b.size() >= 8 && n <= b.size() - 8 && r.coin(2)) {
    // only the header changes; the prefix follows it, the data stays as it was
    Bytes header(b.begin() + 8, b.begin() + 8 + std::ptrdiff_t(n));
    for (int e = 0; e < edits; ++e) mutate_once(r, header, seeds);
    Bytes out(8);
    const uint64_t len = header.size();
    for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(len >> (8 * i));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), b.begin() + 8 + std::ptrdiff_t(n), b.end());
    b.swap(out);
  } else {
    for (int e = 0; e < edits; ++e) mutate_once(r, b, seeds);
  }
  if (b.size() > kMaxInput) b.resize(kMaxInput);
  return b;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string p = dir + "/" + e->d_name;
    struct stat st;
    if (e->d_name[0] != '.' && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode))
      out.push_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// parse_safetensors' verdict on b, without the particulars: "accepted", or the message with its
// file name, tensor name, numbers and check text taken out
std::string verdict_of(const Bytes& b) {
  try {
    gptoss::parse_safetensors(b.empty() ? nullptr : b.data(), b.size(), "f");
    return "accepted";
  } catch (const gptoss::Error& e) {
    std::string m = e.what();
    m = m.substr(0, m.find(" (check failed"));
    if (m.compare(0, 3, "f: ") == 0) m = m.substr(3);
    if (m.compare(0, 8, "tensor '") == 0) {
      const size_t q = m.find("': ");
      m = q == std::string::npos ? m : m.substr(q + 3);
    }
    std::string out;
    for (char c : m) {
      if (c >= '0' && c <= '9') {
        if (out.empty() || out.back() != 'N') out += 'N';
      } else {
        out += c;
      }
    }
    // cut the particulars: duplicate key 'x', tensors 'a' and 'b', unknown dtype X, ... but F32
    for (const char* cut : {" '", " but ", "unknown dtype"}) {
      const size_t q = out.find(cut);
      if (q != std::string::npos) out = out.substr(0, q + (cut[0] == 'u' ? 13 : 0));
    }
    return out;
  }
}

int usage() {
  std::fprintf(stderr, "usage: fuzz_checkpoint CORPUS_DIR SECONDS [SEED]\n"
                       "       fuzz_checkpoint --run FILE...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(FUZZ_HAVE_DEATH_CALLBACK)
  __sanitizer_set_death_callback(on_death);
#endif
  std::signal(SIGABRT, on_abort);
  if (argc >= 3 && std::strcmp(argv[1], "--run") == 0) {
    for (int i = 2; i < argc; ++i) {
      Bytes b;
      if (!read_file(argv[i], &b)) {
        std::fprintf(stderr, "fuzz_driver: %s: cannot read\n", argv[i]);
        return 2;
      }
      run_one(b);
      std::printf("%s: ran (%zu bytes)\n", argv[i], b.size());
    }
    return 0;
  }
  if (argc < 3 || argc > 4) return usage();
  const std::string dir = argv[1];
  char* end = nullptr;
  const double seconds = std::strtod(argv[2], &end);
  if (!end || *end || !(seconds >= 0)) return usage();
  const uint64_t seed = argc == 4 ? std::strtoull(argv[3], nullptr, 10) : 1;

  std::vector<Bytes> seeds;
  int wrong = 0;
  for (const std::string& name : files_in(dir)) {
    Bytes b;
    if (!read_file(dir + "/" + name, &b)) continue;
    std::string verdict = "accepted";
    bool ok = true;
    try {
      gptoss::parse_safetensors(b.empty() ? nullptr : b.data(), b.size(), name);
    } catch (const gptoss::Error& e) {
      ok = false;
      verdict = e.what();
    }
    const bool want_ok = name.compare(0, 3, "ok-") == 0;
    const bool want_bad = name.compare(0, 4, "bad-") == 0;
    if ((want_ok && !ok) || (want_bad && ok)) {
      std::printf("WRONG seed %s: %s\n", name.c_str(), verdict.c_str());
      ++wrong;
    } else {
      std::printf("seed %s: %s\n", name.c_str(), verdict.c_str());
    }
    run_one(b);
    seeds.push_back(std::move(b));
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "fuzz_driver: no seeds in %s\n", dir.c_str());
    return 2;
  }
  std::fflush(stdout);

  std::thread(watchdog).detach();
  Rng rng{seed};
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  uint64_t mutants = 0;
  double next_report = 10;
  // how deep the mutants get: every 64th is classified by the check that rejects it
  std::map<std::string, uint64_t> verdicts;
  while (elapsed() < seconds) {
    for (int i = 0; i < 64; ++i) {
      Bytes m = mutant(rng, seeds);
      run_one(m);
      if (i == 0) ++verdicts[verdict_of(m)];
      ++mutants;
    }
    if (elapsed() >= next_report) {
      std::printf("  %.0f s: %llu mutants\n", elapsed(), (unsigned long long)mutants);
      std::fflush(stdout);
      next_report += 10;
    }
  }
  const double t = std::max(elapsed(), 1e-9);
  std::printf("fuzz_driver: %zu seeds, %llu mutants in %.1f s (%.0f inputs/s), seed %llu\n",
              seeds.size(), (unsigned long long)mutants, t, double(mutants) / t,
              (unsigned long long)seed);
  std::printf("fuzz_driver: verdicts of a sample of %llu mutants (safetensors):\n",
              (unsigned long long)(mutants / 64));
  std::vector<std::pair<uint64_t, std::string>> by_count;
  for (auto& kv : verdicts) by_count.emplace_back(kv.second, kv.first);
  std::sort(by_count.rbegin(), by_count.rend());
  for (auto& c : by_count)
    std::printf("  %8llu  %s\n", (unsigned long long)c.first, c.second.c_str());
  if (wrong) {
    std::printf("fuzz_driver: %d seeds not as their names say (ok-* accepted, bad-* rejected)\n",
                wrong);
    return 1;
  }
  return 0;
}
