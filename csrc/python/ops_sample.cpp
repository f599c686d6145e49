// gptoss._C.ops.sample_reference: the host reference sampler (common/sample_ref.h), the exact
// algorithm of the CUDA sampler and of gptoss.sampling.sample_gumbel. Needs no CUDA.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

#include "common/sample_ref.h"
#include "python/sample_args.h"

namespace py = pybind11;

void bind_sample_reference(py::module_& ops) {
  ops.def(
      "sample_reference",
      [](const py::array& logits, const py::object& temperature, const py::object& top_k,
         const py::object& top_p, const py::object& seed, const py::object& counter) {
        auto r = gptoss::pysample::parse(logits, temperature, top_k, top_p, seed, counter);
        std::vector<int32_t> tokens(size_t(r.n));
        const float* l = r.logits.data();
        {
          py::gil_scoped_release nogil;
          for (int i = 0; i < r.n; ++i)
            tokens[size_t(i)] = gptoss::sample_reference(l + size_t(i) * size_t(r.V), r.V,
                                                         r.params[size_t(i)]);
        }
        return gptoss::pysample::result(r, tokens);
      },
      py::arg("logits"), py::arg("temperature"), py::arg("top_k") = 0, py::arg("top_p") = 1.0,
      py::arg("seed") = 0, py::arg("counter") = 0,
      "One token per row of logits ([V] -> int, [n, V] -> int32 [n]) by the reference sampler: "
      "greedy at temperature 0, else Gumbel-max over top_k / top_p with the noise of "
      "(seed, counter). Each parameter is a scalar or one value per row.");
}
