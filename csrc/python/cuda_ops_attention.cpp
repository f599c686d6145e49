// gptoss._C.ops bindings of the CUDA attention family (csrc/cuda/attention.cu): NumPy host arrays
// in, copied to the device, one wrapper call, results copied back. For tests and checks, not for
// speed. Every index the kernels follow (positions, slots, page-table entries) is checked here on
// the host first, so a bad argument is a ValueError naming it rather than a stray device read.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/kernels.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;

namespace {

using gptoss::pyb::carray;
using gptoss::pyb::need;
using gptoss::pyb::shape_of;
using DeviceBuffer = gptoss::pyb::Dev;

// `a` as a C-contiguous array of T with the given shape (-1: any size); ValueError naming `name`.
template <typename T>
carray<T> arg(const py::array& a, const char* name, std::vector<py::ssize_t> shape,
              const char* dtype_name) {
  return gptoss::pyb::need<T>(a, name, shape, dtype_name);
}

template <typename T>
DeviceBuffer upload(const carray<T>& a) {
  return DeviceBuffer(a.data(), size_t(a.size()) * sizeof(T));
}

// The cache description shared by both bindings; checks every (row_seq, pos) lands in the cache.
struct CacheArgs {
  carray<uint16_t> k, v;
  carray<int32_t> table;
  int rows = 0, Hkv = 0, d = 0, page = 0, ring = 0, slots = 0, max_pages = 0;
};

CacheArgs cache_args(const py::array& k_in, const py::array& v_in, const py::object& table_in,
                     int page, int ring) {
  CacheArgs c;
  c.k = arg<uint16_t>(k_in, "k_cache", {-1, -1, -1}, "uint16 (bf16 bits)");
  c.rows = int(c.k.shape(0));
  c.Hkv = int(c.k.shape(1));
  c.d = int(c.k.shape(2));
  c.v = arg<uint16_t>(v_in, "v_cache", {c.k.shape(0), c.k.shape(1), c.k.shape(2)},
                      "uint16 (bf16 bits)");
  c.page = page;
  c.ring = ring;
  if (ring > 0) {
    need(table_in.is_none(), "page_table must be None for a ring layer (ring > 0)");
    need(c.rows % ring == 0, "k_cache rows (" + std::to_string(c.rows) +
                                 ") must be a multiple of ring (" + std::to_string(ring) + ")");
    c.slots = c.rows / ring;
  } else {
    need(ring == 0, "ring must be >= 0");
    need(!table_in.is_none(), "page_table is required for a paged layer (ring == 0)");
    need(page > 0, "page must be > 0 for a paged layer");
    c.table = arg<int32_t>(table_in.cast<py::array>(), "page_table", {-1, -1}, "int32");
    c.slots = int(c.table.shape(0));
    c.max_pages = int(c.table.shape(1));
    const int32_t* t = c.table.data();
    for (py::ssize_t i = 0; i < c.table.size(); ++i)
      need(t[i] >= 0 && (size_t(t[i]) + 1) * size_t(page) <= size_t(c.rows),
           "page_table entry " + std::to_string(t[i]) + " is outside k_cache (" +
               std::to_string(c.rows) + " rows of pages of " + std::to_string(page) + ")");
  }
  return c;
}

void check_rows(const CacheArgs& c, const carray<int32_t>& pos, const carray<int32_t>& seq,
                int max_pos) {
  for (py::ssize_t t = 0; t < pos.size(); ++t) {
    const int p = pos.data()[t], s = seq.data()[t];
    need(p >= 0 && (max_pos < 0 || p < max_pos),
         "pos[" + std::to_string(t) + "] = " + std::to_string(p) + " is out of range");
    need(s >= 0 && s < c.slots, "row_seq[" + std::to_string(t) + "] = " + std::to_string(s) +
                                    " is not a slot of the cache (" + std::to_string(c.slots) +
                                    " slots)");
    need(c.ring > 0 || p / c.page < c.max_pages,
         "pos[" + std::to_string(t) + "] = " + std::to_string(p) + " is beyond the page table");
  }
}

gptoss::cuda::KVLayer layer(const CacheArgs& c, const DeviceBuffer& k, const DeviceBuffer& v,
                            const DeviceBuffer* table) {
  gptoss::cuda::KVLayer kv;
  kv.k = k.as<uint16_t>();
  kv.v = v.as<uint16_t>();
  kv.page_table = table ? table->as<const int32_t>() : nullptr;
  kv.max_pages = c.max_pages;
  kv.page = c.page;
  kv.ring = c.ring;
  return kv;
}

py::tuple rope_kv_write(const py::array& qkv_in, const py::array& pos_in,
                        const py::array& seq_in, const py::array& cos_in, const py::array& sin_in,
                        const py::array& k_in, const py::array& v_in, int Hq,
                        const py::object& table_in, int page, int ring) {
  CacheArgs c = cache_args(k_in, v_in, table_in, page, ring);
  need(Hq > 0, "Hq must be > 0");
  const py::ssize_t width = py::ssize_t(Hq + 2 * c.Hkv) * c.d;
  auto qkv = arg<float>(qkv_in, "qkv", {-1, width}, "float32");
  const py::ssize_t n = qkv.shape(0);
  auto pos = arg<int32_t>(pos_in, "pos", {n}, "int32");
  auto seq = arg<int32_t>(seq_in, "row_seq", {n}, "int32");
  auto cs = arg<float>(cos_in, "cos", {-1, c.d / 2}, "float32");
  auto sn = arg<float>(sin_in, "sin", {cs.shape(0), c.d / 2}, "float32");
  check_rows(c, pos, seq, int(cs.shape(0)));
  // each (row_seq, pos) once: two rows writing one cache row would race
  std::vector<std::pair<int, int>> keys;
  for (py::ssize_t t = 0; t < n; ++t) keys.emplace_back(seq.data()[t], pos.data()[t]);
  std::sort(keys.begin(), keys.end());
  need(std::adjacent_find(keys.begin(), keys.end()) == keys.end(),
       "(row_seq, pos) pairs must be distinct");

  py::array_t<float> qkv_out({n, width});
  py::array_t<uint16_t> k_out({c.k.shape(0), c.k.shape(1), c.k.shape(2)});
  py::array_t<uint16_t> v_out({c.k.shape(0), c.k.shape(1), c.k.shape(2)});
  {
    py::gil_scoped_release nogil;
    DeviceBuffer dq = upload(qkv), dp = upload(pos), ds = upload(seq), dc = upload(cs),
                 dn = upload(sn), dk = upload(c.k), dv = upload(c.v);
    DeviceBuffer dt(ring > 0 ? nullptr : c.table.data(),
                    ring > 0 ? 0 : size_t(c.table.size()) * 4);
    gptoss::cuda::f32_rope_kv_write(dq.as<float>(), int(n), Hq, c.Hkv, c.d, dp.as<int32_t>(),
                                    ds.as<int32_t>(), dc.as<float>(), dn.as<float>(),
                                    layer(c, dk, dv, ring > 0 ? nullptr : &dt), nullptr);
    gptoss::cuda::copy_to_host(qkv_out.mutable_data(), dq.p, dq.bytes, nullptr);
    gptoss::cuda::copy_to_host(k_out.mutable_data(), dk.p, dk.bytes, nullptr);
    gptoss::cuda::copy_to_host(v_out.mutable_data(), dv.p, dv.bytes, nullptr);
    gptoss::cuda::synchronize(nullptr);
  }
  return py::make_tuple(qkv_out, k_out, v_out);
}

int default_max_len(const carray<int32_t>& pos, int window) {
  int m = 1;
  for (py::ssize_t t = 0; t < pos.size(); ++t) {
    const int keys = pos.data()[t] + 1;
    m = std::max(m, window > 0 ? std::min(keys, window) : keys);
  }
  return m;
}

py::array_t<float> attention(const py::array& q_in, const py::array& k_in,
                             const py::array& v_in, const py::array& pos_in,
                             const py::array& seq_in, const py::array& sinks_in, int window,
                             const py::object& table_in, int page, int ring, int max_len) {
  CacheArgs c = cache_args(k_in, v_in, table_in, page, ring);
  need(window >= 0, "window must be >= 0 (0: none)");
  auto sinks = arg<float>(sinks_in, "sinks", {-1}, "float32");
  const int Hq = int(sinks.shape(0));
  // q [n, Hq, d], or [n, ldq] with the Hq * d query values first in each row (a qkv view)
  need(q_in.ndim() == 3 || q_in.ndim() == 2, "q must be [n, Hq, d] or [n, ldq], got " +
                                                 shape_of(q_in));
  carray<float> q = q_in.ndim() == 3 ? arg<float>(q_in, "q", {-1, Hq, c.d}, "float32")
                                     : arg<float>(q_in, "q", {-1, -1}, "float32");
  const py::ssize_t n = q.shape(0);
  const int ldq = q_in.ndim() == 3 ? Hq * c.d : int(q.shape(1));
  need(ldq >= Hq * c.d, "q rows (" + std::to_string(ldq) + " values) must hold Hq * d = " +
                            std::to_string(Hq * c.d));
  auto pos = arg<int32_t>(pos_in, "pos", {n}, "int32");
  auto seq = arg<int32_t>(seq_in, "row_seq", {n}, "int32");
  check_rows(c, pos, seq, -1);
  if (max_len <= 0) max_len = default_max_len(pos, window);

  py::array_t<float> out({n, py::ssize_t(Hq), py::ssize_t(c.d)});
  {
    py::gil_scoped_release nogil;
    DeviceBuffer dq = upload(q), dp = upload(pos), ds = upload(seq), dsk = upload(sinks),
                 dk = upload(c.k), dv = upload(c.v);
    DeviceBuffer dt(ring > 0 ? nullptr : c.table.data(),
                    ring > 0 ? 0 : size_t(c.table.size()) * 4);
    DeviceBuffer ws(gptoss::cuda::attention_workspace_bytes(int(n), Hq, c.d, max_len));
    DeviceBuffer dout(size_t(out.size()) * sizeof(float));
    gptoss::cuda::f32_bf16kv_attention(dq.as<float>(), ldq, int(n), dp.as<int32_t>(),
                                       ds.as<int32_t>(), layer(c, dk, dv, ring > 0 ? nullptr : &dt),
                                       Hq, c.Hkv, c.d, window, dsk.as<float>(), max_len, ws.p,
                                       dout.as<float>(), nullptr);
    gptoss::cuda::copy_to_host(out.mutable_data(), dout.p, dout.bytes, nullptr);
    gptoss::cuda::synchronize(nullptr);
  }
  return out;
}

}  // namespace

void bind_cuda_attention(py::module_& ops) {
  ops.def("cuda_rope_kv_write", &rope_kv_write, py::arg("qkv"), py::arg("pos"),
          py::arg("row_seq"), py::arg("cos"), py::arg("sin"), py::arg("k_cache"),
          py::arg("v_cache"), py::arg("Hq"), py::arg("page_table") = py::none(),
          py::arg("page") = 0, py::arg("ring") = 0,
          "on the GPU: RoPE on the query and key heads of qkv [n, (Hq + 2 Hkv) d] float32 with "
          "tables cos/sin [max_pos, d/2], and each row's key and value written as bf16 into "
          "k_cache/v_cache [rows, Hkv, d] uint16 at (row_seq, pos) (paged: page_table [slots, "
          "max_pages] int32 and page; ring layers: ring > 0) -> (qkv, k_cache, v_cache)");
  ops.def("cuda_attention", &attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("pos"), py::arg("row_seq"), py::arg("sinks"), py::arg("window") = 0,
          py::arg("page_table") = py::none(), py::arg("page") = 0, py::arg("ring") = 0,
          py::arg("max_len") = 0,
          "on the GPU: attention with sinks [Hq] float32, GQA and window (0: none) for q [n, Hq, "
          "d] (or [n, ldq]) float32 over the bf16 cache k_cache/v_cache [rows, Hkv, d] uint16, "
          "each row at (row_seq, pos) (paged: page_table + page; ring: ring > 0); max_len "
          "(0: from pos) sizes the split-KV work -> [n, Hq, d] float32");
  ops.def("cuda_attention_workspace_bytes", &gptoss::cuda::attention_workspace_bytes,
          py::arg("n"), py::arg("Hq"), py::arg("d"), py::arg("max_len"),
          "bytes of device workspace the attention wrapper needs (0: no split-KV)");
}

#endif  // GPTOSS_WITH_CUDA
