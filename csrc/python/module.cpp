// gptoss._C: the bindings (layer 3). They check shapes and dtypes, turn gptoss::Error into Python
// exceptions, release the GIL around long calls, and pass NumPy arrays without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/kernels.h"
#include "engine/engine.h"
#include "engine/weight_cache.h"
#include "gptoss/error.h"
#include "gptoss/gptoss.h"
#if defined(GPTOSS_WITH_CUDA)
#include "cuda/kernels.h"
#endif

namespace py = pybind11;
using namespace gptoss;

void bind_sample_reference(py::module_& ops);  // ops_sample.cpp
#if defined(GPTOSS_WITH_CUDA)
void bind_cuda_core(py::module_& ops);
void bind_cuda_dense(py::module_& ops);  // cuda_ops_dense.cpp
void bind_cuda_bench(py::module_& ops);
void bind_cuda_attention(py::module_& ops);  // cuda_ops_attention.cpp
void bind_cuda_moe(py::module_& ops);
#endif

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void need(bool cond, const std::string& msg) {
  if (!cond) throw py::value_error(msg);
}

std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

py::array_t<float> mxfp4_dequantize(const py::array& blocks_in, const py::array& scales_in) {
  need(blocks_in.dtype().is(py::dtype::of<uint8_t>()), "blocks must be uint8");
  need(scales_in.dtype().is(py::dtype::of<uint8_t>()), "scales must be uint8");
  auto blocks = carray<uint8_t>::ensure(blocks_in);
  auto scales = carray<uint8_t>::ensure(scales_in);
  need(blocks.ndim() >= 2 && blocks.shape(blocks.ndim() - 1) == 16,
       "blocks must have shape [..., nb, 16], got " + shape_str(blocks));
  need(scales.ndim() == blocks.ndim() - 1, "scales must have shape [..., nb] matching blocks " +
                                               shape_str(blocks) + ", got " + shape_str(scales));
  for (py::ssize_t i = 0; i < scales.ndim(); ++i)
    need(scales.shape(i) == blocks.shape(i), "scales " + shape_str(scales) +
                                                 " does not match blocks " + shape_str(blocks));
  const size_t nb = size_t(blocks.shape(blocks.ndim() - 2));
  const size_t rows = nb ? size_t(scales.size()) / nb : 0;
  std::vector<py::ssize_t> shape(blocks.shape(), blocks.shape() + blocks.ndim() - 2);
  shape.push_back(py::ssize_t(nb * 32));
  py::array_t<float> out(shape);
  const uint8_t* b = blocks.data();
  const uint8_t* s = scales.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    cpu::f32_mf4_dequant(b, s, rows, nb, o);
  }
  return out;
}


template <typename T>
carray<T> need_array(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
  // shape entries of -1 match any size
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + " must be " + py::str(py::dtype::of<T>()).cast<std::string>() +
                          ", got " + py::str(a.dtype()).cast<std::string>());
  auto c = carray<T>::ensure(a);
  bool ok = c.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || c.shape(i) == shape[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i)
      want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    throw py::value_error(std::string(name) + " must have shape " + want + "], got " + shape_str(c));
  }
  return c;
}

carray<float> f32(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
  return need_array<float>(py::array(a.attr("astype")("float32", py::arg("copy") = false)), name,
                           std::move(shape));
}

Tensor tensor_of(const py::array& a, DType dt, const char* name) {
  Tensor t;
  t.data = static_cast<const uint8_t*>(a.data());
  t.dtype = dt;
  t.name = name;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(a.shape(i));
  t.row_stride_bytes = a.ndim() ? size_t(a.strides(0)) : 0;
  return t;
}

py::array_t<float> op_bf16_linear(const py::array& x_in, const py::array& w_in,
                                  const py::object& bias_in, int levels) {
  need(levels == 1 || levels == 2, "levels must be 1 or 2");
  auto w = need_array<uint16_t>(w_in, "w (bf16 bits as uint16)", {-1, -1});
  const py::ssize_t R = w.shape(0), K = w.shape(1);
  auto x = f32(x_in, "x", {-1, K});
  carray<float> bias;
  if (!bias_in.is_none()) bias = f32(bias_in.cast<py::array>(), "bias", {R});
  const int m = int(x.shape(0));
  py::array_t<float> out({py::ssize_t(m), R});
  auto be = make_cpu_backend(levels);
  Tensor W = tensor_of(w, DType::BF16, "w");
  const float* b = bias_in.is_none() ? nullptr : bias.data();
  const float* xp = x.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    be->linear(xp, m, W, b, o, int(R));
  }
  return out;
}

py::array_t<float> op_mxfp4_linear(const py::array& x_in, const py::array& blocks_in,
                                   const py::array& scales_in, const py::object& bias_in,
                                   int levels) {
  need(levels == 1 || levels == 2, "levels must be 1 or 2");
  auto blocks = need_array<uint8_t>(blocks_in, "blocks", {-1, -1, 16});
  const py::ssize_t R = blocks.shape(0), nb = blocks.shape(1);
  auto scales = need_array<uint8_t>(scales_in, "scales", {R, nb});
  auto x = f32(x_in, "x", {-1, nb * 32});
  carray<float> bias;
  if (!bias_in.is_none()) bias = f32(bias_in.cast<py::array>(), "bias", {R});
  const int m = int(x.shape(0)), K = int(nb * 32);
  py::array_t<float> out({py::ssize_t(m), R});
  const float* b = bias_in.is_none() ? nullptr : bias.data();
  const uint8_t* bp = blocks.data();
  const uint8_t* sp = scales.data();
  const float* xp = x.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::vector<uint8_t> ws(cpu::Q8Act::bytes(m, K));
    cpu::Q8Act q = cpu::Q8Act::carve(ws.data(), m, K);
    cpu::q8_quantize(xp, m, K, q);
    const int band = 32, bands = int((R + band - 1) / band);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < bands; ++i)
      cpu::mf4w_q8_gemm_rows(bp, sp, i * band, std::min(int(R), (i + 1) * band), q, m, b, o,
                             int(R), levels);
  }
  return out;
}

py::array_t<uint8_t> op_mxfp4_pack_r16(const py::array& blocks_in, const py::array& scales_in) {
  auto blocks = need_array<uint8_t>(blocks_in, "blocks", {-1, -1, 16});
  const py::ssize_t R = blocks.shape(0), nb = blocks.shape(1);
  auto scales = need_array<uint8_t>(scales_in, "scales", {R, nb});
  const py::ssize_t G = (R + cpu::kR16 - 1) / cpu::kR16;
  py::array_t<uint8_t> out({G, nb, py::ssize_t(cpu::kR16RecordBytes)});
  uint8_t* o = out.mutable_data();
  const uint8_t* bp = blocks.data();
  const uint8_t* sp = scales.data();
  {
    py::gil_scoped_release nogil;
    cpu::mf4_r16_pack(bp, sp, int(R), int(nb), 0, int(G), o);
  }
  return out;
}

// x [m, K] against a matrix packed in groups of 16 rows ([G, K/32, record_bytes]): the int16 (or,
// levels 1, int8) activation code, then gemm_rows over bands of 32 rows on the threads.
using PackedRows = void (*)(const uint8_t*, int, int, int, const cpu::Q16Act&, int, const float*,
                            float*, int);
py::array_t<float> packed_linear(const py::array& x_in, const py::array& packed_in, int rows,
                                 const py::object& bias_in, size_t record_bytes, int levels,
                                 bool exact, PackedRows gemm_rows) {
  auto packed = need_array<uint8_t>(packed_in, "packed", {-1, -1, py::ssize_t(record_bytes)});
  const py::ssize_t G = packed.shape(0), nb = packed.shape(1);
  need(rows > (G - 1) * cpu::kR16 && rows <= G * cpu::kR16,
       "rows = " + std::to_string(rows) + " does not match " + std::to_string(G) +
           " packed groups of 16");
  auto x = f32(x_in, "x", {-1, nb * 32});
  carray<float> bias;
  if (!bias_in.is_none()) bias = f32(bias_in.cast<py::array>(), "bias", {rows});
  const int m = int(x.shape(0)), K = int(nb * 32);
  py::array_t<float> out({py::ssize_t(m), py::ssize_t(rows)});
  const float* b = bias_in.is_none() ? nullptr : bias.data();
  const uint8_t* pp = packed.data();
  const float* xp = x.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::vector<uint8_t> ws(cpu::Q16Act::bytes(m, K));
    const cpu::Q16Act q = cpu::Q16Act::carve(ws.data(), m, K, levels, exact,
                                             gemm_rows == &cpu::mf4w_r16_gemm_rows);
    cpu::q16_quantize(xp, m, K, q);
    const int band = 32, bands = (rows + band - 1) / band;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < bands; ++i)
      gemm_rows(pp, int(nb), i * band, std::min(rows, (i + 1) * band), q, m, b, o, rows);
  }
  return out;
}

py::array_t<float> op_mxfp4_r16_linear(const py::array& x_in, const py::array& packed_in,
                                       int rows, const py::object& bias_in, int levels,
                                       bool exact) {
  need(levels == 1 || levels == 2, "levels = " + std::to_string(levels) + ": must be 1 or 2");
  return packed_linear(x_in, packed_in, rows, bias_in, cpu::kR16RecordBytes, levels, exact,
                       &cpu::mf4w_r16_gemm_rows);
}

py::array_t<uint8_t> op_q8_pack_r16(const py::array& w_in) {
  auto w = need_array<uint16_t>(w_in, "w", {-1, -1});
  const py::ssize_t R = w.shape(0), K = w.shape(1);
  need(K % 32 == 0 && K > 0, "w: K = " + std::to_string(K) + " must be a positive multiple of 32");
  const py::ssize_t G = (R + cpu::kR16 - 1) / cpu::kR16, nb = K / 32;
  py::array_t<uint8_t> out({G, nb, py::ssize_t(cpu::kQ8R16RecordBytes)});
  uint8_t* o = out.mutable_data();
  const uint16_t* wp = w.data();
  {
    py::gil_scoped_release nogil;
    cpu::q8_r16_pack(wp, size_t(K), int(R), int(K), 0, int(G), o);
  }
  return out;
}

py::array_t<float> op_q8_r16_linear(const py::array& x_in, const py::array& packed_in, int rows,
                                    const py::object& bias_in) {
  // the int16 codes only (exact: no AMX-BF16 terms)
  return packed_linear(x_in, packed_in, rows, bias_in, cpu::kQ8R16RecordBytes, 2, true,
                       &cpu::q8w_r16_gemm_rows);
}

py::array_t<float> op_moe(const py::array& t_in, const py::array& experts_in,
                          const py::array& weights_in, const py::array& w1b_in,
                          const py::array& w1s_in, const py::array& w1bias_in,
                          const py::array& w2b_in, const py::array& w2s_in,
                          const py::array& w2bias_in, float alpha, float limit, int levels,
                          bool repack) {
  need(levels == 1 || levels == 2, "levels must be 1 or 2");
  auto w1b = need_array<uint8_t>(w1b_in, "w1_blocks", {-1, -1, -1, 16});
  const py::ssize_t E = w1b.shape(0), I2 = w1b.shape(1), H = w1b.shape(2) * 32, I = I2 / 2;
  need(I2 % 2 == 0 && I % 32 == 0, "w1_blocks rows must be 2I with I a multiple of 32");
  auto w1s = need_array<uint8_t>(w1s_in, "w1_scales", {E, I2, H / 32});
  auto w1bias = f32(w1bias_in, "w1_bias", {E, I2});
  auto w2b = need_array<uint8_t>(w2b_in, "w2_blocks", {E, H, I / 32, 16});
  auto w2s = need_array<uint8_t>(w2s_in, "w2_scales", {E, H, I / 32});
  auto w2bias = f32(w2bias_in, "w2_bias", {E, H});
  auto t = f32(t_in, "t", {-1, H});
  const py::ssize_t n = t.shape(0);
  auto experts = need_array<int32_t>(py::array(experts_in.attr("astype")("int32")), "experts",
                                     {n, -1});
  const py::ssize_t k = experts.shape(1);
  auto weights = f32(weights_in, "weights", {n, k});
  for (py::ssize_t i = 0; i < n * k; ++i)
    need(experts.data()[i] >= 0 && experts.data()[i] < E,
         "experts holds id " + std::to_string(experts.data()[i]) + " outside [0, " +
             std::to_string(E) + ")");
  LayerTensors L;
  L.w1_blocks = tensor_of(w1b, DType::U8, "w1_blocks");
  L.w1_scales = tensor_of(w1s, DType::U8, "w1_scales");
  L.w2_blocks = tensor_of(w2b, DType::U8, "w2_blocks");
  L.w2_scales = tensor_of(w2s, DType::U8, "w2_scales");
  py::array_t<float> out({n, H});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    auto be = make_cpu_backend(levels);
    if (repack) cpu_backend_repack_in_memory(*be, L);
    be->moe(L, w1bias.data(), w2bias.data(), t.data(), int(n), int(H), int(I), int(k),
            experts.data(), weights.data(), alpha, limit, o);
  }
  return out;
}

template <class T>
void attention_on(const float* qp, py::ssize_t n, py::ssize_t Hq, py::ssize_t d, T* kp, T* vp,
                  py::ssize_t S, py::ssize_t Hkv, const int32_t* pp, const float* sp, int window,
                  float* o) {
  cpu::KVViewT<T> kv;
  kv.k_pages = &kp;
  kv.v_pages = &vp;
  kv.page = int(std::max<py::ssize_t>(S, 1));
  kv.pos_stride = int(Hkv * d);  // [S, Hkv, d]: position-major
  kv.head_stride = int(d);
  py::gil_scoped_release nogil;
  std::vector<cpu::KVViewT<T>> views(size_t(n), kv);
  cpu::attention(qp, int(n), int(Hq * d), pp, views.data(), int(Hq), int(Hkv), int(d), window,
                 sp, o);
}

py::array_t<float> op_attention(const py::array& q_in, const py::array& k_in,
                                const py::array& v_in, const py::array& qpos_in,
                                const py::array& sinks_in, int window) {
  auto q = f32(q_in, "q", {-1, -1, -1});
  const py::ssize_t n = q.shape(0), Hq = q.shape(1), d = q.shape(2);
  // k and v as bf16 bits (uint16, both) take the bf16 cache's kernels; anything else is float32
  const bool bf16 = k_in.dtype().is(py::dtype::of<uint16_t>());
  need(bf16 == v_in.dtype().is(py::dtype::of<uint16_t>()),
       "k and v must both be bf16 bits (uint16) or both float");
  py::ssize_t S = 0, Hkv = 0;
  carray<float> kf, vf;
  carray<uint16_t> kb, vb;
  if (bf16) {
    kb = need_array<uint16_t>(k_in, "k (bf16 bits as uint16)", {-1, -1, d});
    S = kb.shape(0), Hkv = kb.shape(1);
    vb = need_array<uint16_t>(v_in, "v (bf16 bits as uint16)", {S, Hkv, d});
  } else {
    kf = f32(k_in, "k", {-1, -1, d});
    S = kf.shape(0), Hkv = kf.shape(1);
    vf = f32(v_in, "v", {S, Hkv, d});
  }
  auto qpos = need_array<int32_t>(py::array(qpos_in.attr("astype")("int32")), "qpos", {n});
  auto sinks = f32(sinks_in, "sinks", {Hq});
  need(Hkv > 0 && Hq % Hkv == 0 && Hq / Hkv <= 64,
       "q heads must be a multiple (at most 64x) of kv heads");
  for (py::ssize_t i = 0; i < n; ++i)
    need(qpos.data()[i] >= 0 && qpos.data()[i] < S,
         "qpos[" + std::to_string(i) + "] = " + std::to_string(qpos.data()[i]) +
             " must index a key in [0, " + std::to_string(S) + ")");
  py::array_t<float> out({n, Hq, d});
  if (bf16)
    attention_on(q.data(), n, Hq, d, const_cast<uint16_t*>(kb.data()),
                 const_cast<uint16_t*>(vb.data()), S, Hkv, qpos.data(), sinks.data(), window,
                 out.mutable_data());
  else
    attention_on(q.data(), n, Hq, d, const_cast<float*>(kf.data()), const_cast<float*>(vf.data()),
                 S, Hkv, qpos.data(), sinks.data(), window, out.mutable_data());
  return out;
}

// Token and sequence ids arrive as any integer array or list; values that do not fit int32 are
// refused here rather than wrapped.
carray<int32_t> ids32(const carray<int64_t>& a) {
  carray<int32_t> out(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
  for (py::ssize_t i = 0; i < a.size(); ++i) {
    const int64_t v = a.data()[i];
    need(v >= INT32_MIN && v <= INT32_MAX, "id " + std::to_string(v) + " is out of range");
    out.mutable_data()[i] = int32_t(v);
  }
  return out;
}

// Feed tokens to sequence `seq`; logits [vocab] for the last token or [n, vocab] for all.
py::array_t<float> prefill_into(Model& m, int seq, const carray<int64_t>& tokens64,
                                bool all_logits) {
  auto tokens = ids32(tokens64);
  need(tokens.ndim() == 1 && tokens.size() > 0, "tokens must be a non-empty 1-D sequence of ids");
  const size_t n = size_t(tokens.size());
  const py::ssize_t V = m.config().vocab_size;
  py::array_t<float> out = all_logits ? py::array_t<float>({py::ssize_t(n), V})
                                      : py::array_t<float>({V});
  const int32_t* tp = tokens.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    m.prefill_sequence(seq, tp, n, o, all_logits);
  }
  return out;
}

cpu::Isa isa_from(const std::string& s) {
  for (cpu::Isa i : cpu::kIsas)
    if (s == cpu::isa_name(i)) return i;
  throw py::value_error("unknown SIMD level '" + s + "' (" + cpu::kIsaNames + ")");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gptoss native engine and kernels";
  // Errors from the engine are mostly bad input (a checkpoint, a token id, the context), so they
  // derive from ValueError like the Python layer's CheckpointError; the message holds file:line.
  py::register_exception<Error>(m, "NativeError", PyExc_ValueError);

  m.def("build_info", [] {
    py::dict d;
#if defined(GPTOSS_WITH_CUDA)
    d["cuda_compiled"] = true;
    d["cuda_emulated"] = cuda::emulated();
    d["cuda_backend"] = cuda_backend_compiled();
#else
    d["cuda_compiled"] = false;
    d["cuda_emulated"] = false;
    d["cuda_backend"] = false;
#endif
    d["simd"] = cpu::isa_name(cpu::active_isa());
    d["simd_best"] = cpu::isa_name(cpu::detect_isa());
    d["threads"] = cpu::num_threads();
    return d;
  });
  m.def("cuda_device_count", []() -> std::pair<int, std::string> {
#if defined(GPTOSS_WITH_CUDA)
    std::string err;
    int n = cuda::device_count(&err);
    return {n, err};
#else
    return {0, "built without CUDA"};
#endif
  });
#if defined(GPTOSS_WITH_CUDA)
  m.def("cuda_device_name", &cuda::device_name, py::arg("device") = 0);
#endif

  m.def("force_simd", [](const std::string& s) { cpu::force_isa(isa_from(s)); }, py::arg("level"),
        "pin the CPU kernels to one SIMD level (plain, avx2, avx2vnni, avx512bw, avx512, avx512bf16, amx) for "
        "tests");
  m.def("simd_levels", [] {
    std::vector<std::string> out;
    for (cpu::Isa i : cpu::kIsas)
      if (cpu::isa_supported(i)) out.push_back(cpu::isa_name(i));
    return out;
  });
  m.def("read_bandwidth", [](double gb, int repeats) {
    py::gil_scoped_release nogil;
    return cpu::read_bandwidth_gbs(size_t(gb * 1e9), repeats);
  }, py::arg("gb") = 2.0, py::arg("repeats") = 5, "this machine's read bandwidth in GB/s");

  m.def("verify_weight_cache", [](const std::string& path) {
    py::gil_scoped_release nogil;
    return verify_weight_cache(path);
  }, py::arg("path"), "reads a weight cache file whole and checks every entry's checksum; returns "
     "the number of entries (raises naming the file and the bad entry)");
  m.def("default_cache_dir", &default_cache_dir);

  py::class_<Model>(m, "Engine", "the C++ engine on a device: 'cpu' or 'cuda'")
      .def(py::init([](const std::string& path, const std::string& layout, int max_context,
                       int threads, int activation_levels, const std::string& device,
                       bool random_device_weights, double prefix_cache_gb,
                       const std::string& repack, const std::string& cache_dir,
                       bool batch_invariant, const std::string& kv_dtype,
                       const std::string& dense_weights) {
             Options o;
             o.dense_weights = dense_weights;
             o.batch_invariant = batch_invariant;
             o.kv_dtype = kv_dtype;
             o.prefix_cache_gb = prefix_cache_gb;
             o.repack = repack;
             o.cache_dir = cache_dir;
             o.device = device;
             o.random_device_weights = random_device_weights;
             o.layout = layout;
             o.max_context = max_context;
             o.num_threads = threads;
             o.activation_levels = activation_levels;
             py::gil_scoped_release nogil;
             return new Model(path, o);
           }),
           py::arg("path"), py::arg("layout") = "", py::arg("max_context") = 0,
           py::arg("threads") = 0, py::arg("activation_levels") = 2, py::arg("device") = "cpu",
           py::arg("random_device_weights") = false, py::arg("prefix_cache_gb") = 2.0,
           py::arg("repack") = "auto", py::arg("cache_dir") = "",
           py::arg("batch_invariant") = false, py::arg("kv_dtype") = "auto",
           py::arg("dense_weights") = "bf16")
      .def_property_readonly("weights_note", &Model::weights_note,
                             "how the backend holds the weights (repacked, mapped from where)")
      .def("start_from_cache", [](Model& m, int seq, const carray<int64_t>& tokens64) {
        auto tokens = ids32(tokens64);
        need(tokens.ndim() == 1, "tokens must be a 1-D sequence of ids");
        const int32_t* tp = tokens.data();
        const size_t n = size_t(tokens.size());
        py::gil_scoped_release nogil;
        return m.start_from_cache(seq, tp, n);
      }, py::arg("seq"), py::arg("tokens"),
         "start a sequence at position 0 from the longest cached prefix of tokens[:-1]; returns "
         "its length P (feed tokens[P:] next)")
      .def("cached_tokens", &Model::cached_tokens, py::arg("seq") = 0,
           "positions of the sequence its last prefill from position 0 took from the prefix cache")
      .def("prefix_cache_stats", [](const Model& m) {
        const PrefixCacheStats s = m.prefix_cache_stats();
        py::dict d;
        d["lookups"] = s.lookups;
        d["hit_tokens"] = s.hit_tokens;
        d["miss_tokens"] = s.miss_tokens;
        d["evictions"] = s.evictions;
        d["cached_pages"] = s.cached_pages;
        d["idle_pages"] = s.idle_pages;
        d["tails"] = s.tails;
        d["tail_pages"] = s.tail_pages;
        d["page_bytes"] = s.page_bytes;
        d["bytes"] = size_t(s.cached_pages + s.tail_pages) * s.page_bytes;
        return d;
      }, "prefix cache counters: lookups, hit/miss tokens, evictions, cached and idle pages, "
         "cached partial pages (tails) and the page ids they hold, bytes per page and in all")
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("position", &Model::position)
      .def_property_readonly("max_context", &Model::max_context)
      .def_property_readonly("layout", &Model::layout)
      .def_property_readonly("vocab_size", [](const Model& m) { return m.config().vocab_size; })
      .def("reset", &Model::reset)
      .def("prefill",
           [](Model& m, const carray<int64_t>& tokens, bool all_logits) {
             return prefill_into(m, 0, tokens, all_logits);
           },
           py::arg("tokens"), py::arg("all_logits") = true)
      .def("add_sequence", &Model::add_sequence, "a new sequence with its own KV cache; its id")
      .def("remove_sequence", &Model::remove_sequence, py::arg("seq"))
      .def("reset_sequence", &Model::reset_sequence, py::arg("seq"))
      .def("sequence_position", &Model::sequence_position, py::arg("seq"))
      .def("prefill_sequence", &prefill_into,
           py::arg("seq"), py::arg("tokens"), py::arg("all_logits") = false)
      .def("decode_batch",
           [](Model& m, const carray<int64_t>& seqs64, const carray<int64_t>& tokens64) {
             auto seqs = ids32(seqs64);
             auto tokens = ids32(tokens64);
             need(seqs.ndim() == 1 && tokens.ndim() == 1 && seqs.size() == tokens.size() &&
                      seqs.size() > 0,
                  "seqs and tokens must be 1-D, non-empty and of the same length");
             const size_t n = size_t(seqs.size());
             py::array_t<float> out({py::ssize_t(n), py::ssize_t(m.config().vocab_size)});
             const int32_t* sp = seqs.data();
             const int32_t* tp = tokens.data();
             float* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               m.decode_batch(sp, tp, n, o);
             }
             return out;
           },
           py::arg("seqs"), py::arg("tokens"),
           "one token for each of len(seqs) distinct sequences -> logits [n, vocab]")
      .def("decode_batch_sample",
           [](Model& m, const carray<int64_t>& seqs64, const carray<int64_t>& tokens64,
              const carray<float>& temperature, const carray<int64_t>& top_k,
              const carray<float>& top_p, const carray<uint64_t>& seed,
              const carray<uint64_t>& counter) {
             auto seqs = ids32(seqs64);
             auto tokens = ids32(tokens64);
             const py::ssize_t n = seqs.size();
             need(seqs.ndim() == 1 && tokens.ndim() == 1 && tokens.size() == n && n > 0,
                  "seqs and tokens must be 1-D, non-empty and of the same length");
             for (auto* a : {(const py::array*)&temperature, (const py::array*)&top_k,
                             (const py::array*)&top_p, (const py::array*)&seed,
                             (const py::array*)&counter})
               need(a->ndim() == 1 && a->size() == n,
                    "temperature, top_k, top_p, seed and counter must have one entry per sequence");
             std::vector<SampleParams> params(static_cast<size_t>(n));
             for (py::ssize_t i = 0; i < n; ++i) {
               SampleParams& p = params[size_t(i)];
               p.temperature = temperature.data()[i];
               need(top_k.data()[i] >= 0 && top_k.data()[i] <= INT32_MAX, "top_k out of range");
               p.top_k = int(top_k.data()[i]);
               p.top_p = top_p.data()[i];
               p.seed = seed.data()[i];
               p.counter = counter.data()[i];
             }
             py::array_t<int32_t> out({n});
             const int32_t* sp = seqs.data();
             const int32_t* tp = tokens.data();
             int32_t* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               m.decode_batch_sample(sp, tp, size_t(n), params.data(), o);
             }
             return out;
           },
           py::arg("seqs"), py::arg("tokens"), py::arg("temperature"), py::arg("top_k"),
           py::arg("top_p"), py::arg("seed"), py::arg("counter"),
           "one decode step for len(seqs) sequences, sampled on the device -> token ids [n] "
           "(parameters per sequence; see csrc/common/sample_ref.h)")
      .def("decode", [](Model& m, int32_t token) {
        py::array_t<float> out({py::ssize_t(m.config().vocab_size)});
        float* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          m.decode(token, o);
        }
        return out;
      }, py::arg("token"));
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("num_threads", &cpu::num_threads);

  py::module_ ops = m.def_submodule("ops", "single kernels, NumPy arrays in and out");
  bind_sample_reference(ops);
#if defined(GPTOSS_WITH_CUDA)
  bind_cuda_dense(ops);
#endif
#if defined(GPTOSS_WITH_CUDA)
  bind_cuda_core(ops);
  bind_cuda_bench(ops);
  bind_cuda_attention(ops);
  bind_cuda_moe(ops);
#endif
  ops.def("mxfp4_dequantize", &mxfp4_dequantize, py::arg("blocks"), py::arg("scales"),
          "blocks [..., nb, 16] uint8, scales [..., nb] uint8 -> float32 [..., nb * 32]");
  ops.def("bf16_linear", &op_bf16_linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
          py::arg("levels") = 2,
          "x [m, K] float32, w [R, K] bf16 bits (uint16), bias [R] or None -> [m, R] = x @ w.T + "
          "bias; levels=1: the engine's activation_levels=1 (x as bf16 at the avx512bf16 level)");
  ops.def("mxfp4_linear", &op_mxfp4_linear, py::arg("x"), py::arg("blocks"), py::arg("scales"),
          py::arg("bias") = py::none(), py::arg("levels") = 2,
          "x [m, K] float32, blocks [R, K/32, 16] u8, scales [R, K/32] u8 -> [m, R]; activations are "
          "quantized per 32-block to `levels` int8 levels (2: error below max|x|/64516; 1: below "
          "max|x|/254)");
  ops.def("mxfp4_pack_r16", &op_mxfp4_pack_r16, py::arg("blocks"), py::arg("scales"),
          "blocks [R, nb, 16] u8, scales [R, nb] u8 -> the AVX2 layout [ceil(R/16), nb, 272] u8: "
          "16 rows of each 32-block interleaved with their scales (csrc/cpu/mxfp4_r16.cpp)");
  ops.def("mxfp4_r16_linear", &op_mxfp4_r16_linear, py::arg("x"), py::arg("packed"),
          py::arg("rows"), py::arg("bias") = py::none(), py::arg("levels") = 2,
          py::arg("exact") = false,
          "x [m, K] float32, packed [G, K/32, 272] from mxfp4_pack_r16 of a matrix with `rows` "
          "rows -> [m, rows]; activations quantized per 32-block to int16 (levels 2: error below "
          "max|x|/65534) or int8 (levels 1, as activation_levels 1: below max|x|/254); at the amx "
          "level 8 tokens or more take the AMX-BF16 tiles unless exact (batch_invariant: the "
          "integer code's bits at any number of tokens)");
  ops.def("q8_pack_r16", &op_q8_pack_r16, py::arg("w"),
          "w [R, K] bf16 bits (uint16), K % 32 == 0 -> int8 codes per row and 32-block with float32 "
          "scales in the dense_weights='int8' layout [ceil(R/16), K/32, 576] u8 (csrc/cpu/dense_q8.cpp)");
  ops.def("q8_r16_linear", &op_q8_r16_linear, py::arg("x"), py::arg("packed"), py::arg("rows"),
          py::arg("bias") = py::none(),
          "x [m, K] float32, packed from q8_pack_r16 of a matrix with `rows` rows -> [m, rows]: the "
          "int8 weights against x quantized per 32-block to int16 (error below max|x|/65534)");
  ops.def("moe", &op_moe, py::arg("t"), py::arg("experts"), py::arg("weights"),
          py::arg("w1_blocks"), py::arg("w1_scales"), py::arg("w1_bias"), py::arg("w2_blocks"),
          py::arg("w2_scales"), py::arg("w2_bias"), py::arg("alpha") = 1.702f,
          py::arg("limit") = 7.0f, py::arg("levels") = 2, py::arg("repack") = false,
          "t [n, H], experts [n, k] int, weights [n, k], W1 [E, 2I, H/32, 16] + [E, 2I, H/32] + "
          "bias [E, 2I], W2 [E, H, I/32, 16] + [E, H, I/32] + bias [E, H] -> [n, H]: the grouped "
          "MXFP4 experts with the clamped SwiGLU and the weighted sum; repack: the experts first "
          "repacked (into memory) for the AVX2 kernels, as the engine does on AVX2 processors");
  ops.def("attention", &op_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("qpos"),
          py::arg("sinks"), py::arg("window") = 0,
          "q [n, Hq, d], k/v [S, Hkv, d] (key j at position j; float32, or both uint16 bf16 "
          "bits: the bf16 KV cache's kernels), qpos [n], sinks [Hq], window (0: full causal) -> "
          "[n, Hq, d]");
  ops.def("rmsnorm", [](const py::array& x_in, const py::array& w_in, float eps) {
    auto x = f32(x_in, "x", {-1, -1});
    auto w = f32(w_in, "w", {x.shape(1)});
    py::array_t<float> out({x.shape(0), x.shape(1)});
    cpu::rmsnorm(x.data(), w.data(), int(x.shape(0)), int(x.shape(1)), eps, out.mutable_data());
    return out;
  }, py::arg("x"), py::arg("w"), py::arg("eps") = 1e-5f, "x [n, H], w [H] -> [n, H]");
  ops.def("rope", [](const py::array& x_in, const py::array& cos_in, const py::array& sin_in) {
    auto x = f32(x_in, "x", {-1, -1, -1});
    const py::ssize_t n = x.shape(0), h = x.shape(1), d = x.shape(2);
    auto c = f32(cos_in, "cos", {n, d / 2});
    auto s = f32(sin_in, "sin", {n, d / 2});
    py::array_t<float> out({n, h, d});
    std::memcpy(out.mutable_data(), x.data(), sizeof(float) * size_t(n * h * d));
    cpu::rope(out.mutable_data(), int(n), int(h), int(d), int(h * d), c.data(), s.data());
    return out;
  }, py::arg("x"), py::arg("cos"), py::arg("sin"), "x [n, heads, d], cos/sin [n, d/2] -> rotated");
  ops.def("topk_softmax", [](const py::array& g_in, int k) {
    auto g = f32(g_in, "logits", {-1, -1});
    const py::ssize_t n = g.shape(0), E = g.shape(1);
    need(k >= 1 && k <= E && k <= 16, "k must be in [1, min(E, 16)]");
    py::array_t<int32_t> ex({n, py::ssize_t(k)});
    py::array_t<float> w({n, py::ssize_t(k)});
    cpu::topk_softmax(g.data(), int(n), int(E), k, ex.mutable_data(), w.mutable_data());
    return py::make_tuple(ex, w);
  }, py::arg("logits"), py::arg("k") = 4, "logits [n, E] -> (experts [n, k], weights [n, k])");
  ops.def("swiglu", [](const py::array& u_in, float alpha, float limit) {
    auto u = f32(u_in, "u", {-1, -1});
    need(u.shape(1) % 2 == 0, "u must have an even number of columns");
    py::array_t<float> out({u.shape(0), u.shape(1) / 2});
    cpu::swiglu(u.data(), int(u.shape(0)), int(u.shape(1) / 2), alpha, limit, out.mutable_data());
    return out;
  }, py::arg("u"), py::arg("alpha") = 1.702f, py::arg("limit") = 7.0f,
     "u [m, 2I] (gate even, linear odd columns) -> [m, I]");

}
