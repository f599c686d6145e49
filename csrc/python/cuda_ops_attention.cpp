// gptoss._C.ops bindings of the CUDA attention family (csrc/cuda/attention.cu): host arrays copied
// up and back, or device arrays used in place (python/cuda_buffers.h), one wrapper call. Every index the kernels follow (positions, slots, page-table entries) is checked here on
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

using gptoss::pyb::any_on_device;
using gptoss::pyb::Dev;
using gptoss::pyb::is_device_array;
using gptoss::pyb::ndim_of;
using gptoss::pyb::need;
using gptoss::pyb::output;
using gptoss::pyb::result;
using gptoss::pyb::Tensor;
using gptoss::pyb::tensor;
using gptoss::pyb::updated;

// The cache description shared by both bindings; checks every page-table entry lands in the cache.
struct CacheArgs {
  Tensor<uint16_t> k, v;
  Tensor<int32_t> table;
  int rows = 0, Hkv = 0, d = 0, page = 0, ring = 0, slots = 0, max_pages = 0;
};

CacheArgs cache_args(const py::object& k_in, const py::object& v_in, const py::object& table_in,
                     int page, int ring) {
  CacheArgs c;
  c.k = tensor<uint16_t>(k_in, "k_cache", {-1, -1, -1}, "uint16 (bf16 bits)");
  c.rows = int(c.k.shape(0));
  c.Hkv = int(c.k.shape(1));
  c.d = int(c.k.shape(2));
  c.v = tensor<uint16_t>(v_in, "v_cache", {c.k.shape(0), c.k.shape(1), c.k.shape(2)},
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
    c.table = tensor<int32_t>(table_in, "page_table", {-1, -1}, "int32");
    c.slots = int(c.table.shape(0));
    c.max_pages = int(c.table.shape(1));
    for (int32_t t : c.table.values())
      need(t >= 0 && (size_t(t) + 1) * size_t(page) <= size_t(c.rows),
           "page_table entry " + std::to_string(t) + " is outside k_cache (" +
               std::to_string(c.rows) + " rows of pages of " + std::to_string(page) + ")");
  }
  return c;
}

// Every (row_seq, pos) lands in the cache (and below max_pos where >= 0); returns the positions.
std::vector<int32_t> check_rows(const CacheArgs& c, const Tensor<int32_t>& pos_t,
                                const Tensor<int32_t>& seq_t, int max_pos,
                                std::vector<int32_t>* seq_out = nullptr) {
  const std::vector<int32_t> pos = pos_t.values(), seq = seq_t.values();
  for (size_t t = 0; t < pos.size(); ++t) {
    const int p = pos[t], s = seq[t];
    need(p >= 0 && (max_pos < 0 || p < max_pos),
         "pos[" + std::to_string(t) + "] = " + std::to_string(p) + " is out of range");
    need(s >= 0 && s < c.slots, "row_seq[" + std::to_string(t) + "] = " + std::to_string(s) +
                                    " is not a slot of the cache (" + std::to_string(c.slots) +
                                    " slots)");
    need(c.ring > 0 || p / c.page < c.max_pages,
         "pos[" + std::to_string(t) + "] = " + std::to_string(p) + " is beyond the page table");
  }
  if (seq_out) *seq_out = seq;
  return pos;
}

gptoss::cuda::KVLayer layer(const CacheArgs& c) {
  gptoss::cuda::KVLayer kv;
  kv.k = c.k.p;
  kv.v = c.v.p;
  kv.page_table = c.ring > 0 ? nullptr : c.table.p;
  kv.max_pages = c.max_pages;
  kv.page = c.page;
  kv.ring = c.ring;
  return kv;
}

py::tuple rope_kv_write(const py::object& qkv_in, const py::object& pos_in,
                        const py::object& seq_in, const py::object& cos_in,
                        const py::object& sin_in, const py::object& k_in,
                        const py::object& v_in, int Hq, const py::object& table_in, int page,
                        int ring) {
  CacheArgs c = cache_args(k_in, v_in, table_in, page, ring);
  need(Hq > 0, "Hq must be > 0");
  const py::ssize_t width = py::ssize_t(Hq + 2 * c.Hkv) * c.d;
  auto qkv = tensor<float>(qkv_in, "qkv", {-1, width}, "float32");
  const py::ssize_t n = qkv.shape(0);
  auto pos = tensor<int32_t>(pos_in, "pos", {n}, "int32");
  auto seq = tensor<int32_t>(seq_in, "row_seq", {n}, "int32");
  auto cs = tensor<float>(cos_in, "cos", {-1, c.d / 2}, "float32");
  auto sn = tensor<float>(sin_in, "sin", {cs.shape(0), c.d / 2}, "float32");
  std::vector<int32_t> seqs;
  const std::vector<int32_t> ps = check_rows(c, pos, seq, int(cs.shape(0)), &seqs);
  // each (row_seq, pos) once: two rows writing one cache row would race
  std::vector<std::pair<int, int>> keys;
  for (size_t t = 0; t < ps.size(); ++t) keys.emplace_back(seqs[t], ps[t]);
  std::sort(keys.begin(), keys.end());
  need(std::adjacent_find(keys.begin(), keys.end()) == keys.end(),
       "(row_seq, pos) pairs must be distinct");
  {
    py::gil_scoped_release nogil;
    gptoss::cuda::f32_rope_kv_write(qkv.p, int(n), Hq, c.Hkv, c.d, pos.p, seq.p, cs.p, sn.p,
                                    layer(c), nullptr);
    gptoss::cuda::synchronize(nullptr);
  }
  const bool dev = any_on_device(qkv, pos, seq, cs, sn, c.k, c.v, c.table);
  return py::make_tuple(updated(qkv, dev), updated(c.k, dev), updated(c.v, dev));
}

int default_max_len(const std::vector<int32_t>& pos, int window) {
  int m = 1;
  for (int32_t p : pos) {
    const int keys = p + 1;
    m = std::max(m, window > 0 ? std::min(keys, window) : keys);
  }
  return m;
}

py::object attention(const py::object& q_in, const py::object& k_in, const py::object& v_in,
                     const py::object& pos_in, const py::object& seq_in,
                     const py::object& sinks_in, int window, const py::object& table_in,
                     int page, int ring, int max_len) {
  CacheArgs c = cache_args(k_in, v_in, table_in, page, ring);
  need(window >= 0, "window must be >= 0 (0: none)");
  auto sinks = tensor<float>(sinks_in, "sinks", {-1}, "float32");
  const int Hq = int(sinks.shape(0));
  // q [n, Hq, d], or [n, ldq] with the Hq * d query values first in each row (a qkv view)
  const int qdim = ndim_of(q_in, "q");
  need(qdim == 3 || qdim == 2, "q must be [n, Hq, d] or [n, ldq]");
  Tensor<float> q = qdim == 3 ? tensor<float>(q_in, "q", {-1, Hq, c.d}, "float32")
                              : tensor<float>(q_in, "q", {-1, -1}, "float32");
  const py::ssize_t n = q.shape(0);
  const int ldq = qdim == 3 ? Hq * c.d : int(q.shape(1));
  need(ldq >= Hq * c.d, "q rows (" + std::to_string(ldq) + " values) must hold Hq * d = " +
                            std::to_string(Hq * c.d));
  auto pos = tensor<int32_t>(pos_in, "pos", {n}, "int32");
  auto seq = tensor<int32_t>(seq_in, "row_seq", {n}, "int32");
  const std::vector<int32_t> ps = check_rows(c, pos, seq, -1);
  if (max_len <= 0) max_len = default_max_len(ps, window);

  auto out = output<float>({n, py::ssize_t(Hq), py::ssize_t(c.d)});
  {
    py::gil_scoped_release nogil;
    Dev ws(gptoss::cuda::attention_workspace_bytes(int(n), Hq, c.d, max_len));
    gptoss::cuda::f32_bf16kv_attention(q.p, ldq, int(n), pos.p, seq.p, layer(c), Hq, c.Hkv, c.d,
                                       window, sinks.p, max_len, ws.p, out.p, nullptr);
    gptoss::cuda::synchronize(nullptr);
  }
  return result(out, any_on_device(q, pos, seq, sinks, c.k, c.v, c.table));
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
