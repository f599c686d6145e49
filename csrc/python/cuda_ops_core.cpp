// Bindings of the CUDA layer's own pieces: MXFP4 -> bf16, the self-test kernels of the emulation
// (and, on a GPU, of the emulation's fidelity), and event timing. NumPy host arrays in and out.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/kernels.h"
#include "cuda/selftest.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;
using namespace gptoss;
using namespace gptoss::pyb;

namespace {

}  // namespace

void bind_cuda_core(py::module_& ops) {
  ops.def("cuda_mxfp4_dequantize", [](const py::array& blocks_in, const py::array& scales_in) {
    auto blocks = need<uint8_t>(blocks_in, "blocks", {-1, -1, 16});
    auto scales = need<uint8_t>(scales_in, "scales", {blocks.shape(0), blocks.shape(1)});
    const size_t rows = size_t(blocks.shape(0)), nb = size_t(blocks.shape(1)), n = rows * nb;
    py::array_t<uint16_t> out({blocks.shape(0), blocks.shape(1) * 32});
    const uint8_t* b = blocks.data();
    const uint8_t* s = scales.data();
    uint16_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      Dev db(n * 16), ds(n), dout(n * 64);
      cuda::copy_to_device(db.p, b, n * 16, nullptr);
      cuda::copy_to_device(ds.p, s, n, nullptr);
      cuda::bf16_mf4_dequant(static_cast<const uint8_t*>(db.p), static_cast<const uint8_t*>(ds.p),
                             rows, nb, static_cast<uint16_t*>(dout.p), nullptr);
      cuda::copy_to_host(o, dout.p, n * 64, nullptr);
      cuda::synchronize(nullptr);
    }
    return out;
  }, py::arg("blocks"), py::arg("scales"),
     "blocks [R, nb, 16] u8, scales [R, nb] u8 -> bf16 bits [R, nb * 32] (uint16), on the device");

  ops.def("cuda_bench_mxfp4_dequantize", [](size_t rows, size_t nb, int iters) {
    py::gil_scoped_release nogil;
    const size_t n = rows * nb;
    Dev b(n * 16), s(n), o(n * 64);
    cuda::memset_device(b.p, 0x5a, n * 16, nullptr);
    cuda::memset_device(s.p, 120, n, nullptr);
    return cuda::time_ms([&](cuda::Stream st) {
      cuda::bf16_mf4_dequant(static_cast<const uint8_t*>(b.p), static_cast<const uint8_t*>(s.p),
                             rows, nb, static_cast<uint16_t*>(o.p), st);
    }, iters, nullptr);
  }, py::arg("rows"), py::arg("nb"), py::arg("iters") = 20,
     "median device milliseconds of the MXFP4 -> bf16 kernel on [rows, nb] blocks");

  ops.def("cuda_selftest_warp", [](const py::array& in_) {
    auto in = need<int32_t>(in_, "x", {64});
    py::array_t<int32_t> out({64, 8});
    cuda::selftest_warp(in.data(), out.mutable_data());
    return out;
  }, py::arg("x"), "x [64] int32 -> [64, 8] what each thread saw (see csrc/cuda/selftest.h)");
  ops.def("cuda_selftest_mma", [](const py::array& a_, const py::array& b_) {
    auto a = need<uint16_t>(a_, "a", {16, 16});
    auto b = need<uint16_t>(b_, "b", {16, 8});
    py::array_t<float> d({16, 8});
    cuda::selftest_mma(a.data(), b.data(), d.mutable_data());
    return d;
  }, py::arg("a"), py::arg("b"), "one mma.m16n8k16: a [16, 16] bf16, b [16, 8] bf16 -> [16, 8]");
  ops.def("cuda_selftest_mma_ldmatrix", [](const py::array& a_, const py::array& w_) {
    auto a = need<uint16_t>(a_, "a", {16, 16});
    auto w = need<uint16_t>(w_, "w", {8, 16});
    py::array_t<float> d({16, 8});
    cuda::selftest_mma_ldmatrix(a.data(), w.data(), d.mutable_data());
    return d;
  }, py::arg("a"), py::arg("w"), "cp.async + ldmatrix + mma: a [16, 16], w [8, 16] -> a @ w.T");
  ops.def("cuda_selftest_ldmatrix", [](const py::array& m_, bool trans) {
    auto m = need<uint16_t>(m_, "m", {4, 8, 8});
    py::array_t<uint32_t> out({32, 4});
    cuda::selftest_ldmatrix(m.data(), trans, out.mutable_data());
    return out;
  }, py::arg("m"), py::arg("trans") = false, "ldmatrix.x4: m [4, 8, 8] bf16 -> [32 lanes, 4]");
  ops.def("cuda_selftest_cp_async", [](const py::array& in_, int partial) {
    auto in = need<uint8_t>(in_, "x", {-1, 16});
    py::array_t<uint8_t> out({in.shape(0), py::ssize_t(16)});
    cuda::selftest_cp_async(in.data(), int(in.shape(0)), partial, out.mutable_data());
    return out;
  }, py::arg("x"), py::arg("partial") = 0, "cp.async of x [n <= 64, 16] u8 in two groups");
  ops.def("cuda_selftest_bad", [](const std::string& which) {
    float out = 0;
    {
      py::gil_scoped_release nogil;
      cuda::selftest_bad(which, &out);
    }
    return out;
  }, py::arg("which"), "a kernel that breaks a rule on purpose (see csrc/cuda/selftest.h)");
}
#endif
