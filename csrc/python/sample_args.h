// Argument checks shared by the sampling bindings (ops_sample.cpp, cuda_ops_dense.cpp): logits
// [V] or [n, V] float32, and per-row parameters given as scalars or length-n sequences.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/sample_ref.h"
#include "common/sample_params.h"

namespace gptoss {
namespace pysample {
namespace {  // per binding file (pybind11's types have hidden visibility)

namespace py = pybind11;

struct Rows {
  py::array_t<float, py::array::c_style | py::array::forcecast> logits;  // [n, V]
  int n = 0, V = 0;
  bool one_row = false;  // logits was [V]: return one int
  std::vector<SampleParams> params;
};

template <typename T>
std::vector<T> per_row(const py::object& o, int n, const char* name) {
  std::vector<T> out;
  if (py::isinstance<py::list>(o) || py::isinstance<py::tuple>(o) || py::isinstance<py::array>(o)) {
    py::array a = py::array::ensure(o);
    if (!a || a.ndim() != 1 || a.shape(0) != n)
      throw py::value_error(std::string(name) + " must be a scalar or a sequence of " +
                            std::to_string(n) + " values (one per row of logits)");
    for (py::ssize_t i = 0; i < n; ++i) out.push_back(py::cast<T>(a[py::int_(i)]));
  } else {
    try {
      out.assign(size_t(n), py::cast<T>(o));
    } catch (const py::cast_error&) {
      throw py::value_error(std::string(name) + " must be a number or a sequence of numbers");
    }
  }
  return out;
}

// Per-row parameters for n rows of V logits (the logits themselves are checked by the caller).
inline Rows parse_params(int n, py::ssize_t V, const py::object& temperature,
                         const py::object& top_k, const py::object& top_p,
                         const py::object& seed, const py::object& counter) {
  Rows r;
  r.n = n;
  if (V < 1 || V >= kSampleMaxVocab)
    throw py::value_error("logits: vocabulary size " + std::to_string(V) +
                          " must be in [1, 2^21)");
  r.V = int(V);
  auto T = per_row<float>(temperature, r.n, "temperature");
  auto k = per_row<int64_t>(top_k, r.n, "top_k");
  auto p = per_row<float>(top_p, r.n, "top_p");
  auto s = per_row<uint64_t>(seed, r.n, "seed");
  auto c = per_row<uint64_t>(counter, r.n, "counter");
  for (int i = 0; i < r.n; ++i) {
    if (!(T[size_t(i)] >= 0.0f) || std::isinf(T[size_t(i)]))
      throw py::value_error("temperature must be a finite number >= 0");
    if (k[size_t(i)] < 0 || k[size_t(i)] > INT32_MAX)
      throw py::value_error("top_k must be an integer >= 0 (0 = no limit)");
    if (!(p[size_t(i)] > 0.0f && p[size_t(i)] <= 1.0f))
      throw py::value_error("top_p must be in (0, 1]");
    SampleParams sp;
    sp.temperature = T[size_t(i)];
    sp.top_k = int(k[size_t(i)]);
    sp.top_p = p[size_t(i)];
    sp.seed = s[size_t(i)];
    sp.counter = c[size_t(i)];
    r.params.push_back(sp);
  }
  return r;
}

inline Rows parse(const py::array& logits_in, const py::object& temperature,
                  const py::object& top_k, const py::object& top_p, const py::object& seed,
                  const py::object& counter) {
  if (!logits_in.dtype().is(py::dtype::of<float>()))
    throw py::value_error("logits must be float32, got " +
                          py::str(logits_in.dtype()).cast<std::string>());
  if (logits_in.ndim() != 1 && logits_in.ndim() != 2)
    throw py::value_error("logits must have shape [V] or [n, V]");
  const bool one_row = logits_in.ndim() == 1;
  auto logits = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(logits_in);
  Rows r = parse_params(one_row ? 1 : int(logits.shape(0)), logits.shape(one_row ? 0 : 1),
                        temperature, top_k, top_p, seed, counter);
  r.one_row = one_row;
  r.logits = logits;
  return r;
}

inline py::object result(const Rows& r, const std::vector<int32_t>& tokens) {
  if (r.one_row) return py::int_(tokens[0]);
  py::array_t<int32_t> out(r.n);
  for (int i = 0; i < r.n; ++i) out.mutable_data()[i] = tokens[size_t(i)];
  return std::move(out);
}

}  // namespace
}  // namespace pysample
}  // namespace gptoss
