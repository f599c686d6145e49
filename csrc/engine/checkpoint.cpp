#include "engine/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <algorithm>
#include <map>
#include <tuple>

#include "common/numeric.h"
#include "engine/json.h"

namespace gptoss {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F32: return "F32";
    case DType::U8: return "U8";
    default: return "other";
  }
}

namespace {

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
std::string join(const std::string& a, const std::string& b) { return a + "/" + b; }

std::vector<std::string> safetensors_in(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_text(const std::string& path) {
  // (a FIFO in place of config.json would block the read forever)
  struct stat st;
  GPTOSS_CHECK(::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode),
               path << ": not a regular file");
  FILE* f = std::fopen(path.c_str(), "rb");
  GPTOSS_CHECK(f != nullptr, path << ": cannot open");
  std::string text;
  char buf[1 << 14];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  GPTOSS_CHECK(!failed, path << ": read error");
  return text;
}

// --- config.json ------------------------------------------------------------------------------
struct ConfigReader {
  const json::Value& root;
  const std::string& src;
  const json::Value* rope = nullptr;

  const json::Value* get(const json::Value* obj, std::initializer_list<const char*> keys,
                         std::string* found) const {
    if (!obj) return nullptr;
    for (const char* k : keys) {
      const json::Value* v = obj->find(k);
      if (v && v->kind != json::Value::Null) {
        *found = k;
        return v;
      }
    }
    return nullptr;
  }
  void int_(int& out, std::initializer_list<const char*> keys, const json::Value* obj = nullptr) {
    std::string k;
    const json::Value* v = get(obj ? obj : &root, keys, &k);
    if (!v) return;
    GPTOSS_CHECK(v->kind == json::Value::Number && v->integral && std::fabs(v->num) < 2e9,
                 src << ": " << k << ": must be an integer");
    out = int(v->i64);
  }
  void num_(double& out, std::initializer_list<const char*> keys, const json::Value* obj = nullptr) {
    std::string k;
    const json::Value* v = get(obj ? obj : &root, keys, &k);
    if (!v) return;
    GPTOSS_CHECK(v->kind == json::Value::Number, src << ": " << k << ": must be a number");
    out = v->num;
  }
};

}  // namespace

void Config::validate(const std::string& src) const {
  auto pos = [&](int v, const char* k) {
    GPTOSS_CHECK(v > 0, src << ": " << k << " = " << v << ": must be a positive integer");
  };
  pos(num_layers, "num_layers");
  pos(hidden_size, "hidden_size");
  pos(num_heads, "num_heads");
  pos(num_kv_heads, "num_kv_heads");
  pos(head_dim, "head_dim");
  pos(num_experts, "num_experts");
  pos(experts_per_token, "experts_per_token");
  pos(intermediate_size, "intermediate_size");
  pos(vocab_size, "vocab_size");
  pos(sliding_window, "sliding_window");
  pos(max_context, "max_context");
  pos(rope_original_context, "rope_original_context");
  GPTOSS_CHECK(hidden_size % 32 == 0, src << ": hidden_size = " << hidden_size
                                          << ": must be divisible by 32 (MXFP4 blocks)");
  GPTOSS_CHECK(intermediate_size % 32 == 0, src << ": intermediate_size = " << intermediate_size
                                                << ": must be divisible by 32 (MXFP4 blocks)");
  GPTOSS_CHECK(num_heads % num_kv_heads == 0,
               src << ": num_heads = " << num_heads << ": must be divisible by num_kv_heads ("
                   << num_kv_heads << ")");
  GPTOSS_CHECK(int64_t(num_heads) * head_dim <= (int64_t(1) << 30),
               src << ": num_heads * head_dim = " << int64_t(num_heads) * head_dim
                   << ": too large");
  GPTOSS_CHECK(head_dim % 2 == 0, src << ": head_dim = " << head_dim << ": must be even");
  GPTOSS_CHECK(experts_per_token <= num_experts,
               src << ": experts_per_token = " << experts_per_token << ": must not exceed "
                   << "num_experts (" << num_experts << ")");
  GPTOSS_CHECK(int(layer_sliding.size()) == num_layers,
               src << ": layer_types must have one entry per layer (" << num_layers << ")");
  GPTOSS_CHECK(rope_theta > 1 && std::isfinite(rope_theta), src << ": rope_theta must be > 1");
  GPTOSS_CHECK(rope_factor >= 1, src << ": rope_factor must be at least 1");
  GPTOSS_CHECK(rope_beta_fast > rope_beta_slow && rope_beta_slow > 0,
               src << ": rope_beta_fast must exceed rope_beta_slow (> 0)");
  GPTOSS_CHECK(swiglu_limit > 0 && rms_norm_eps > 0, src << ": swiglu_limit and rms_norm_eps "
                                                            "must be positive");
}

Config Config::from_json_file(const std::string& path) {
  const std::string text = read_text(path);
  return config_from_json(text.data(), text.size(), path);
}

Config config_from_json(const char* text, size_t size, const std::string& path) {
  json::Value root = json::parse(text, size, path);
  GPTOSS_CHECK(root.is_object(), path << ": top level must be a JSON object");
  Config c;
  ConfigReader r{root, path};
  const json::Value* rope = root.find("rope_scaling");
  if (!rope || rope->kind == json::Value::Null) rope = root.find("rope_parameters");
  if (rope && rope->kind == json::Value::Null) rope = nullptr;
  GPTOSS_CHECK(!rope || rope->is_object(), path << ": rope_scaling must be a JSON object");
  r.int_(c.num_layers, {"num_hidden_layers"});
  r.int_(c.hidden_size, {"hidden_size"});
  r.int_(c.num_heads, {"num_attention_heads"});
  r.int_(c.num_kv_heads, {"num_key_value_heads"});
  r.int_(c.head_dim, {"head_dim"});
  r.int_(c.num_experts, {"num_local_experts", "num_experts"});
  r.int_(c.experts_per_token, {"num_experts_per_tok", "experts_per_token"});
  r.int_(c.intermediate_size, {"intermediate_size"});
  r.int_(c.vocab_size, {"vocab_size"});
  r.int_(c.sliding_window, {"sliding_window"});
  r.num_(c.rope_theta, {"rope_theta"});
  if (!root.find("rope_theta") && rope) r.num_(c.rope_theta, {"rope_theta"}, rope);
  r.int_(c.rope_original_context, {"initial_context_length"});
  r.num_(c.rope_factor, {"rope_scaling_factor"});
  r.num_(c.rope_beta_fast, {"rope_ntk_beta"});
  r.num_(c.rope_beta_slow, {"rope_ntk_alpha"});
  if (rope) {
    if (const json::Value* t = rope->find("rope_type")) {
      GPTOSS_CHECK(t->kind != json::Value::String || t->str == "yarn",
                   path << ": rope_scaling.rope_type = " << t->str << ": only yarn is supported");
    }
    r.int_(c.rope_original_context, {"original_max_position_embeddings"}, rope);
    r.num_(c.rope_factor, {"factor"}, rope);
    r.num_(c.rope_beta_fast, {"beta_fast"}, rope);
    r.num_(c.rope_beta_slow, {"beta_slow"}, rope);
    if (const json::Value* t = rope->find("truncate")) {
      GPTOSS_CHECK(t->kind == json::Value::Bool, path << ": truncate must be true or false");
      c.rope_truncate = t->b;
    }
  }
  double lim = c.swiglu_limit, eps = c.rms_norm_eps;
  r.num_(lim, {"swiglu_limit"});
  r.num_(eps, {"rms_norm_eps"});
  // (a double past the range of float or int makes the conversions below undefined)
  GPTOSS_CHECK(std::fabs(lim) <= 3e38 && std::fabs(eps) <= 3e38,
               path << ": swiglu_limit and rms_norm_eps must be within the range of a float");
  c.swiglu_limit = float(lim);
  c.rms_norm_eps = float(eps);
  const double ctx = c.rope_original_context * c.rope_factor;
  GPTOSS_CHECK(std::fabs(ctx) < 2e9, path << ": the context length (original context "
                                          << c.rope_original_context << " times rope factor "
                                          << c.rope_factor << ") is too large");
  c.max_context = int(std::lround(ctx));
  r.int_(c.max_context, {"max_position_embeddings"});
  c.layer_sliding.assign(size_t(std::max(c.num_layers, 0)), false);
  for (int l = 0; l < c.num_layers; ++l) c.layer_sliding[l] = (l % 2 == 0);
  if (const json::Value* lt = root.find("layer_types")) {
    GPTOSS_CHECK(lt->kind == json::Value::Array && int(lt->arr.size()) == c.num_layers,
                 path << ": layer_types must be a list of " << c.num_layers << " entries");
    for (int l = 0; l < c.num_layers; ++l) {
      const json::Value& v = lt->arr[l];
      GPTOSS_CHECK(v.kind == json::Value::String &&
                       (v.str == "sliding_attention" || v.str == "full_attention"),
                   path << ": layer_types has an unknown entry");
      c.layer_sliding[l] = v.str == "sliding_attention";
    }
  }
  c.validate(path);
  return c;
}

// --- safetensors headers ------------------------------------------------------------------------
namespace {

// A string from the file (a tensor name, a dtype), shortened for a message.
std::string clip(const std::string& s) { return s.size() > 80 ? s.substr(0, 80) + "..." : s; }

std::string shape_str(const std::vector<int64_t>& s) {
  Message os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// bytes per element of a safetensors dtype; 0 if unknown
size_t dtype_size(const std::string& s, DType* d) {
  *d = DType::Other;
  if (s == "BF16") { *d = DType::BF16; return 2; }
  if (s == "F16") { *d = DType::F16; return 2; }
  if (s == "F32") { *d = DType::F32; return 4; }
  if (s == "U8") { *d = DType::U8; return 1; }
  if (s == "I8" || s == "BOOL") return 1;
  if (s == "I16" || s == "U16") return 2;
  if (s == "I32" || s == "U32") return 4;
  if (s == "I64" || s == "U64" || s == "F64") return 8;
  return 0;
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* base, size_t size, const std::string& path) {
  GPTOSS_CHECK(size >= 8, path << ": truncated: " << size
                               << " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // little-endian on any host
  GPTOSS_CHECK(n <= (100u << 20), path << ": header length " << n << " is implausibly large");
  GPTOSS_CHECK(n <= size - 8, path << ": truncated: header says " << n
                                   << " bytes of JSON but the file holds " << size - 8);
  SafetensorsHeader out;
  out.data_start = 8 + size_t(n);
  size_t len = size_t(n);
  while (len > 0 && (base[8 + len - 1] == 0 || base[8 + len - 1] == ' ')) --len;
  json::Value h = json::parse(reinterpret_cast<const char*>(base + 8), len, path);
  GPTOSS_CHECK(h.is_object(), path << ": header must be a JSON object");
  if (const json::Value* md = h.find("__metadata__")) {
    GPTOSS_CHECK(md->is_object() || md->kind == json::Value::Null,
                 path << ": __metadata__ must be an object");
    // a hollow file (gptoss.testing, hollow=True) holds holes where its matrices would be
    const json::Value* hv = md->find("gptoss_hollow");
    out.hollow = hv && hv->kind == json::Value::String && hv->str == "1";
  }
  const uint64_t data_len = size - out.data_start;
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;
  for (auto& kv : h.obj) {
    if (kv.first == "__metadata__") continue;
    const json::Value& info = kv.second;
    const std::string where = path + ": tensor '" + clip(kv.first) + "'";
    GPTOSS_CHECK(info.is_object(), where << ": entry must be an object");
    const json::Value* dt = info.find("dtype");
    const json::Value* sh = info.find("shape");
    const json::Value* of = info.find("data_offsets");
    GPTOSS_CHECK(dt && dt->kind == json::Value::String, where << ": missing dtype");
    SafetensorsEntry e;
    const uint64_t item = dtype_size(dt->str, &e.dtype);
    GPTOSS_CHECK(item > 0, where << ": unknown dtype " << clip(dt->str));
    e.dtype_str = dt->str;
    GPTOSS_CHECK(sh && sh->kind == json::Value::Array,
                 where << ": bad shape: must be a list of non-negative integers");
    // checked products: a shape whose element count wraps around 2^64 could otherwise claim
    // a small span (shape [2^32, 2^32] times 2 bytes is 0 bytes modulo 2^64)
    uint64_t count = 1;
    for (auto& d : sh->arr) {
      GPTOSS_CHECK(d.kind == json::Value::Number && d.integral && d.i64 >= 0,
                   where << ": bad shape: must be a list of non-negative integers");
      e.shape.push_back(d.i64);
    }
    for (int64_t d : e.shape) {
      GPTOSS_CHECK(d == 0 || count <= UINT64_MAX / uint64_t(d),
                   where << ": shape " << shape_str(e.shape) << ": the element count overflows");
      count *= uint64_t(d);
    }
    GPTOSS_CHECK(count <= UINT64_MAX / item, where << ": shape " << shape_str(e.shape) << " of "
                                                    << e.dtype_str << ": the byte count overflows");
    const uint64_t nbytes = count * item;
    GPTOSS_CHECK(of && of->kind == json::Value::Array && of->arr.size() == 2 &&
                     of->arr[0].kind == json::Value::Number && of->arr[0].integral &&
                     of->arr[1].kind == json::Value::Number && of->arr[1].integral,
                 where << ": bad data_offsets: must be a list of two integers (below 2^63)");
    const int64_t b0 = of->arr[0].i64, e0 = of->arr[1].i64;
    GPTOSS_CHECK(b0 >= 0 && e0 >= 0,
                 where << ": bad data_offsets [" << b0 << ", " << e0 << "]: negative");
    GPTOSS_CHECK(e0 >= b0, where << ": bad data_offsets [" << b0 << ", " << e0
                                 << "]: out of order (the end is before the begin)");
    const uint64_t b = uint64_t(b0), en = uint64_t(e0);
    GPTOSS_CHECK(en - b == nbytes, where << ": data_offsets [" << b << ", " << en << "] span "
                                         << en - b << " bytes but " << e.dtype_str
                                         << shape_str(e.shape) << " needs " << nbytes);
    GPTOSS_CHECK(en <= data_len, where << ": truncated file: tensor ends at byte "
                                       << out.data_start + en << " but the file has " << size
                                       << " bytes");
    e.begin = b;
    e.end = en;
    if (en > b) spans.emplace_back(b, en, kv.first);
    out.entries[kv.first] = std::move(e);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    GPTOSS_CHECK(std::get<0>(spans[i]) >= std::get<1>(spans[i - 1]),
                 path << ": tensors '" << clip(std::get<2>(spans[i - 1])) << "' and '"
                      << clip(std::get<2>(spans[i])) << "' overlap in the file");
  return out;
}

// --- mapped safetensors files ---------------------------------------------------------------
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    // O_NONBLOCK: a FIFO in place of a shard would block open() forever
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    GPTOSS_CHECK(fd >= 0, path << ": cannot open: " << std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      GPTOSS_CHECK(false, path << ": cannot stat: " << std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      GPTOSS_CHECK(false, path << ": not a regular file");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      const int err = errno;
      ::close(fd);
      GPTOSS_CHECK(p != MAP_FAILED, path << ": mmap failed: " << std::strerror(err));
      base_ = static_cast<const uint8_t*>(p);
    } else {
      ::close(fd);
    }
    try {
      SafetensorsHeader h = parse_safetensors(base_, size_, path);
      hollow_ = h.hollow;
      for (auto& kv : h.entries) {
        Entry& e = entries_[kv.first];
        e.data = base_ + h.data_start + kv.second.begin;
        e.dtype = kv.second.dtype;
        e.dtype_str = std::move(kv.second.dtype_str);
        e.shape = std::move(kv.second.shape);
      }
    } catch (...) {
      // the destructor does not run for a constructor that throws
      if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
      throw;
    }
  }
  ~MappedFile() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  }
  struct Entry {
    const uint8_t* data = nullptr;
    DType dtype = DType::Other;
    std::string dtype_str;
    std::vector<int64_t> shape;
  };
  const std::string& path() const { return path_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  bool hollow() const { return hollow_; }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0, data_start_ = 0;
  bool hollow_ = false;
  std::map<std::string, Entry> entries_;
};

Checkpoint::~Checkpoint() = default;

std::vector<float> to_f32(const Tensor& t) {
  size_t n = 1;
  for (auto d : t.shape) n *= size_t(d);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (t.dtype == DType::BF16) {
      uint16_t b;
      std::memcpy(&b, t.data + 2 * i, 2);
      out[i] = bf16_to_f32(b);
    } else if (t.dtype == DType::F32) {
      std::memcpy(&out[i], t.data + 4 * i, 4);
    } else {
      GPTOSS_CHECK(false, t.file << ": tensor '" << t.name << "': dtype " << dtype_name(t.dtype)
                                 << " cannot be read as float");
    }
  }
  return out;
}

namespace {
const char* kLayerRoles[][3] = {
    {"attn_norm", "model.layers.{l}.input_layernorm.weight", "block.{l}.attn.norm.scale"},
    {"q_w", "model.layers.{l}.self_attn.q_proj.weight", "block.{l}.attn.qkv.weight"},
    {"k_w", "model.layers.{l}.self_attn.k_proj.weight", "block.{l}.attn.qkv.weight"},
    {"v_w", "model.layers.{l}.self_attn.v_proj.weight", "block.{l}.attn.qkv.weight"},
    {"q_b", "model.layers.{l}.self_attn.q_proj.bias", "block.{l}.attn.qkv.bias"},
    {"k_b", "model.layers.{l}.self_attn.k_proj.bias", "block.{l}.attn.qkv.bias"},
    {"v_b", "model.layers.{l}.self_attn.v_proj.bias", "block.{l}.attn.qkv.bias"},
    {"sinks", "model.layers.{l}.self_attn.sinks", "block.{l}.attn.sinks"},
    {"out_w", "model.layers.{l}.self_attn.o_proj.weight", "block.{l}.attn.out.weight"},
    {"out_b", "model.layers.{l}.self_attn.o_proj.bias", "block.{l}.attn.out.bias"},
    {"mlp_norm", "model.layers.{l}.post_attention_layernorm.weight", "block.{l}.mlp.norm.scale"},
    {"router_w", "model.layers.{l}.mlp.router.weight", "block.{l}.mlp.gate.weight"},
    {"router_b", "model.layers.{l}.mlp.router.bias", "block.{l}.mlp.gate.bias"},
    {"w1_blocks", "model.layers.{l}.mlp.experts.gate_up_proj_blocks", "block.{l}.mlp.mlp1_weight.blocks"},
    {"w1_scales", "model.layers.{l}.mlp.experts.gate_up_proj_scales", "block.{l}.mlp.mlp1_weight.scales"},
    {"w1_bias", "model.layers.{l}.mlp.experts.gate_up_proj_bias", "block.{l}.mlp.mlp1_bias"},
    {"w2_blocks", "model.layers.{l}.mlp.experts.down_proj_blocks", "block.{l}.mlp.mlp2_weight.blocks"},
    {"w2_scales", "model.layers.{l}.mlp.experts.down_proj_scales", "block.{l}.mlp.mlp2_weight.scales"},
    {"w2_bias", "model.layers.{l}.mlp.experts.down_proj_bias", "block.{l}.mlp.mlp2_bias"},
};

std::string fmt_name(const char* pattern, int layer) {
  std::string s = pattern;
  size_t p = s.find("{l}");
  if (p != std::string::npos) s.replace(p, 3, std::to_string(layer));
  return s;
}

}  // namespace

Checkpoint::Checkpoint(const std::string& path, const std::string& want_layout) {
  GPTOSS_CHECK(want_layout.empty() || want_layout == "hf" || want_layout == "original",
               "layout '" << want_layout << "': must be hf, original or empty");
  GPTOSS_CHECK(is_dir(path), path << ": not a directory (expected a checkpoint directory)");
  const std::string orig = join(path, "original");
  const bool root_has = !safetensors_in(path).empty();
  const bool orig_has = is_dir(orig) && !safetensors_in(orig).empty();
  if (want_layout == "original" && orig_has) {
    directory = orig;
  } else if (want_layout.empty() && root_has && orig_has) {
    directory = path;
    note = path + " holds both layouts; using the Hugging Face files at its root";
  } else if (root_has) {
    directory = path;
  } else if (orig_has) {
    directory = orig;
  } else {
    GPTOSS_CHECK(false, path << ": no .safetensors files here or in " << orig);
  }
  std::string cfg_path = join(directory, "config.json");
  if (!exists(cfg_path) && directory == orig) cfg_path = join(path, "config.json");
  GPTOSS_CHECK(exists(cfg_path), directory << ": no config.json beside the tensors");
  config = Config::from_json_file(cfg_path);

  // which file holds each tensor
  std::map<std::string, std::pair<const MappedFile*, const MappedFile::Entry*>> where;
  const std::string index = join(directory, "model.safetensors.index.json");
  std::vector<std::string> names;
  if (exists(index)) {
    std::string text = read_text(index);
    json::Value v = json::parse(text.data(), text.size(), index);
    const json::Value* wm = v.find("weight_map");
    GPTOSS_CHECK(wm && wm->is_object(), index << ": malformed index: no weight_map object");
    for (auto& kv : wm->obj) {
      GPTOSS_CHECK(kv.second.kind == json::Value::String &&
                       kv.second.str.find('/') == std::string::npos,
                   index << ": bad shard file name for " << kv.first);
      if (std::find(names.begin(), names.end(), kv.second.str) == names.end())
        names.push_back(kv.second.str);
    }
    for (auto& n : names) {
      GPTOSS_CHECK(exists(join(directory, n)), index << ": shard " << n << " is missing from "
                                                      << directory);
      files_.push_back(std::make_unique<MappedFile>(join(directory, n)));
    }
    for (auto& kv : wm->obj) {
      const MappedFile* f = files_[std::find(names.begin(), names.end(), kv.second.str) -
                                   names.begin()].get();
      auto it = f->entries().find(kv.first);
      GPTOSS_CHECK(it != f->entries().end(), index << ": says '" << kv.first << "' is in "
                                                   << kv.second.str << ", but " << f->path()
                                                   << " does not hold it");
      where[kv.first] = {f, &it->second};
    }
  } else {
    for (auto& n : safetensors_in(directory)) {
      files_.push_back(std::make_unique<MappedFile>(join(directory, n)));
      const MappedFile* f = files_.back().get();
      for (auto& kv : f->entries()) {
        GPTOSS_CHECK(!where.count(kv.first), directory << ": tensor '" << kv.first
                                                        << "' is in two files");
        where[kv.first] = {f, &kv.second};
      }
    }
  }
  for (auto& f : files_)
    if (f->hollow() && hollow_file.empty()) hollow_file = f->path();
  if (where.count("model.embed_tokens.weight")) layout = "hf";
  else if (where.count("embedding.weight")) layout = "original";
  else GPTOSS_CHECK(false, directory << ": cannot tell the layout: neither "
                                        "'model.embed_tokens.weight' nor 'embedding.weight' is present");
  GPTOSS_CHECK(want_layout.empty() || want_layout == layout,
               directory << ": asked for layout '" << want_layout << "' but the tensor names are of "
                         << "the '" << layout << "' layout");
  const int col = layout == "hf" ? 1 : 2;
  const Config& c = config;
  const int64_t H = c.hidden_size, E = c.num_experts, I = c.intermediate_size;
  const int64_t qw = c.q_width(), kvw = c.kv_width(), qkv = qw + 2 * kvw;

  auto fetch = [&](const std::string& name, std::vector<int64_t> shape, bool mxfp4,
                   int64_t row_lo = -1) {
    auto it = where.find(name);
    GPTOSS_CHECK(it != where.end(), directory << ": missing tensor '" << name << "'");
    const MappedFile::Entry& e = *it->second.second;
    const std::string& file = it->second.first->path();
    if (mxfp4) {
      GPTOSS_CHECK(e.dtype == DType::U8, file << ": tensor '" << name << "' has dtype "
                                              << e.dtype_str << ", expected U8");
    } else {
      GPTOSS_CHECK(e.dtype == DType::BF16 || e.dtype == DType::F32,
                   file << ": tensor '" << name << "' has dtype " << e.dtype_str
                        << ", expected BF16 or F32");
    }
    std::vector<int64_t> want = shape;
    if (row_lo >= 0) want[0] = qkv;
    GPTOSS_CHECK(e.shape == want, file << ": tensor '" << name << "' has shape "
                                       << shape_str(e.shape) << ", config implies "
                                       << shape_str(want));
    Tensor t;
    t.name = name;
    t.file = file;
    t.dtype = e.dtype;
    t.shape = shape;
    size_t item = e.dtype == DType::F32 ? 4 : (e.dtype == DType::U8 ? 1 : 2);
    size_t row = item;
    for (size_t i = 1; i < shape.size(); ++i) row *= size_t(shape[i]);
    t.row_stride_bytes = row;
    t.data = e.data + (row_lo >= 0 ? size_t(row_lo) * row : 0);
    return t;
  };
  embedding = fetch(layout == "hf" ? "model.embed_tokens.weight" : "embedding.weight",
                    {c.vocab_size, H}, false);
  final_norm = fetch(layout == "hf" ? "model.norm.weight" : "norm.scale", {H}, false);
  unembedding = fetch(layout == "hf" ? "lm_head.weight" : "unembedding.weight",
                      {c.vocab_size, H}, false);
  layers.resize(size_t(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerTensors& L = layers[size_t(l)];
    auto nm = [&](int i) { return fmt_name(kLayerRoles[i][col], l); };
    const bool fused = layout == "original";
    L.attn_norm = fetch(nm(0), {H}, false);
    L.q_w = fetch(nm(1), {qw, H}, false, fused ? 0 : -1);
    L.k_w = fetch(nm(2), {kvw, H}, false, fused ? qw : -1);
    L.v_w = fetch(nm(3), {kvw, H}, false, fused ? qw + kvw : -1);
    L.q_b = fetch(nm(4), {qw}, false, fused ? 0 : -1);
    L.k_b = fetch(nm(5), {kvw}, false, fused ? qw : -1);
    L.v_b = fetch(nm(6), {kvw}, false, fused ? qw + kvw : -1);
    L.sinks = fetch(nm(7), {c.num_heads}, false);
    L.out_w = fetch(nm(8), {H, qw}, false);
    L.out_b = fetch(nm(9), {H}, false);
    L.mlp_norm = fetch(nm(10), {H}, false);
    L.router_w = fetch(nm(11), {E, H}, false);
    L.router_b = fetch(nm(12), {E}, false);
    L.w1_blocks = fetch(nm(13), {E, 2 * I, H / 32, 16}, true);
    L.w1_scales = fetch(nm(14), {E, 2 * I, H / 32}, true);
    L.w1_bias = fetch(nm(15), {E, 2 * I}, false);
    L.w2_blocks = fetch(nm(16), {E, H, I / 32, 16}, true);
    L.w2_scales = fetch(nm(17), {E, H, I / 32}, true);
    L.w2_bias = fetch(nm(18), {E, H}, false);
  }
}

}  // namespace gptoss
