// The CUDA layer and the whole CUDA backend without Python, for the sanitizer runs of the
// emulation (tests/test_cuda_sanitizers.py builds this with -DGPTOSS_SANITIZE=address or thread):
//
//   cuda_emu_check selftest        the primitives (shuffles, barriers, mma, ldmatrix, cp.async)
//                                  against plain loops
//   cuda_emu_check racy            a kernel with a missing barrier (ThreadSanitizer must report it)
//   cuda_emu_check engine CKPT [N] [bound] [invariant]
//                                  the CUDA backend against the CPU backend on a checkpoint
//                                  (invariant: Options::batch_invariant, the per-row paths):
//                                  a prefill across the sliding window (tensor-core paths), decode
//                                  steps (GEMV paths, captured graphs replayed), a two-sequence
//                                  batch, and device sampling; prints the relative logit errors
//   cuda_emu_check hollow CKPT N   a hollow checkpoint: its matrices made on the device
//                                  (cuda/fill.cu); an N-token prompt, then the same prompt again in
//                                  a new sequence, which takes its full pages from the prefix cache
//                                  (kv_snapshot); both runs' logits must be finite and close
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "cuda/selftest.h"
#include "gptoss/gptoss.h"

using namespace gptoss;

namespace {

int failures = 0;
void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

uint16_t bf(float f) { return f32_to_bf16(f); }
float fb(uint16_t b) { return bf16_to_f32(b); }

void selftests() {
  std::vector<int32_t> x(64), out(64 * 8);
  for (int i = 0; i < 64; ++i) x[size_t(i)] = i * 37 % 101;
  cuda::selftest_warp(x.data(), out.data());
  int total = 0;
  for (int v : x) total += v;
  for (int i = 0; i < 64; ++i) {
    const int lane = i % 32, w = i / 32;
    int ws = 0;
    for (int j = 0; j < 32; ++j) ws += x[size_t(w * 32 + j)];
    expect(out[size_t(i) * 8 + 0] == ws, "warp sum");
    expect(out[size_t(i) * 8 + 1] == (lane + 3 < 32 ? x[size_t(i + 3)] : x[size_t(i)]), "shfl_down");
    expect(out[size_t(i) * 8 + 2] == (lane >= 5 ? x[size_t(i - 5)] : x[size_t(i)]), "shfl_up");
    expect(out[size_t(i) * 8 + 3] == x[size_t(w * 32 + 7)], "shfl");
    expect(out[size_t(i) * 8 + 5] == total, "block sum");
    expect(out[size_t(i) * 8 + 6] == 32, "syncthreads_count");
  }
  // mma against a loop: one-hot rows select B rows exactly, random values within 1e-5
  std::vector<uint16_t> A(256), B(128), W(128);
  std::vector<float> D(128);
  uint32_t st = 12345;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(int(st >> 9) % 2001 - 1000) / 250.0f;
  };
  for (auto& a : A) a = bf(rnd());
  for (auto& b : B) b = bf(rnd());
  for (auto& w : W) w = bf(rnd());
  cuda::selftest_mma(A.data(), B.data(), D.data());
  double err = 0, ref_max = 0;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      double ref = 0;
      for (int k = 0; k < 16; ++k) ref += double(fb(A[size_t(r * 16 + k)])) * fb(B[size_t(k * 8 + c)]);
      err = std::max(err, std::fabs(ref - D[size_t(r * 8 + c)]));
      ref_max = std::max(ref_max, std::fabs(ref));
    }
  expect(err <= 1e-5 * std::max(1.0, ref_max), "mma.m16n8k16");
  cuda::selftest_mma_ldmatrix(A.data(), W.data(), D.data());
  err = 0;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      double ref = 0;
      for (int k = 0; k < 16; ++k) ref += double(fb(A[size_t(r * 16 + k)])) * fb(W[size_t(c * 16 + k)]);
      err = std::max(err, std::fabs(ref - D[size_t(r * 8 + c)]));
    }
  expect(err <= 1e-5 * std::max(1.0, ref_max * 2), "cp.async + ldmatrix + mma");
  std::vector<uint16_t> M(256);
  for (int i = 0; i < 256; ++i) M[size_t(i)] = uint16_t(i);
  std::vector<uint32_t> R(128);
  for (int trans = 0; trans < 2; ++trans) {
    cuda::selftest_ldmatrix(M.data(), trans != 0, R.data());
    for (int l = 0; l < 32; ++l)
      for (int m = 0; m < 4; ++m) {
        const int g = l / 4, t = l % 4;
        auto at = [&](int r, int c) { return uint32_t(M[size_t(m * 64 + r * 8 + c)]); };
        const uint32_t want = trans ? (at(2 * t, g) | at(2 * t + 1, g) << 16)
                                    : (at(g, 2 * t) | at(g, 2 * t + 1) << 16);
        expect(R[size_t(l * 4 + m)] == want, "ldmatrix");
      }
  }
  std::vector<uint8_t> in(7 * 16), o(7 * 16);
  for (size_t i = 0; i < in.size(); ++i) in[i] = uint8_t(i * 7 + 1);
  cuda::selftest_cp_async(in.data(), 7, 5, o.data());
  for (size_t i = 0; i < in.size(); ++i) expect(o[i] == (i >= 6 * 16 + 11 ? 0 : in[i]), "cp.async");
}

double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

void engine(const std::string& ckpt, int prompt_len, double bound, bool invariant) {
  Options oc;
  oc.device = "cpu";
  Options og;
  og.device = "cuda";
  og.batch_invariant = invariant;  // the per-row paths for any n
  Model cpu(ckpt, oc), gpu(ckpt, og);
  const int V = cpu.config().vocab_size;
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (int i = 0; i < prompt_len; ++i) prompt[size_t(i)] = int32_t((i * 7919 + 13) % V);
  std::vector<float> lc(static_cast<size_t>(V)), lg(static_cast<size_t>(V));
  cpu.prefill(prompt.data(), prompt.size(), lc.data());
  gpu.prefill(prompt.data(), prompt.size(), lg.data());
  double worst = rel(lg, lc);
  std::printf("prefill %d tokens: relative logit error %.3g\n", prompt_len, worst);
  for (int s = 0; s < 5; ++s) {  // decode: eager, eager, captured, replayed, replayed
    int32_t t = int32_t((s * 104729 + 7) % V);
    cpu.decode(t, lc.data());
    gpu.decode(t, lg.data());
    const double e = rel(lg, lc);
    std::printf("decode %d: relative logit error %.3g\n", s, e);
    worst = std::max(worst, e);
  }
  // a second sequence and a batched step of both
  const int s1c = cpu.add_sequence(), s1g = gpu.add_sequence();
  cpu.prefill_sequence(s1c, prompt.data(), 9, lc.data());
  gpu.prefill_sequence(s1g, prompt.data(), 9, lg.data());
  worst = std::max(worst, rel(lg, lc));
  std::vector<int32_t> seqs_c = {0, s1c}, seqs_g = {0, s1g}, toks = {5, 6};
  std::vector<float> bc(static_cast<size_t>(2 * V)), bg(static_cast<size_t>(2 * V));
  for (int s = 0; s < 3; ++s) {
    cpu.decode_batch(seqs_c.data(), toks.data(), 2, bc.data());
    gpu.decode_batch(seqs_g.data(), toks.data(), 2, bg.data());
    const double e = rel(bg, bc);
    std::printf("decode_batch %d: relative logit error %.3g\n", s, e);
    worst = std::max(worst, e);
  }
  // device sampling: greedy picks the argmax of the same step's logits on the CPU
  std::vector<SampleParams> p(2);
  std::vector<int32_t> outc(2), outg(2);
  p[1].temperature = 0.8f;
  p[1].top_p = 0.9f;
  p[1].seed = 7;
  p[1].counter = 100;
  cpu.decode_batch(seqs_c.data(), toks.data(), 2, bc.data());
  gpu.decode_batch_sample(seqs_g.data(), toks.data(), 2, p.data(), outg.data());
  int arg = 0;
  for (int i = 1; i < V; ++i)
    if (bc[size_t(i)] > bc[size_t(arg)]) arg = i;
  std::printf("device sampling: greedy %d (cpu argmax %d), sampled %d\n", outg[0], arg, outg[1]);
  expect(outg[1] >= 0 && outg[1] < V, "sampled token in range");
  expect(worst <= bound, "CUDA backend logits within the bound of the CPU backend's");
  std::printf("worst relative logit error %.3g (bound %.3g)\n", worst, bound);
}

void hollow(const std::string& ckpt, int prompt_len, double bound) {
  Options o;
  o.device = "cuda";
  o.random_device_weights = true;
  Model m(ckpt, o);
  const int V = m.config().vocab_size;
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (int i = 0; i < prompt_len; ++i) prompt[size_t(i)] = int32_t((i * 7919 + 13) % V);
  std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
  m.prefill(prompt.data(), prompt.size(), a.data());
  bool finite = true;
  for (float x : a) finite = finite && std::isfinite(x);
  expect(finite, "logits of the device-made weights are finite");
  const int s = m.add_sequence();
  m.prefill_sequence(s, prompt.data(), prompt.size(), b.data());
  std::printf("second prefill: %d positions from the prefix cache, relative difference %.3g\n",
              m.cached_tokens(s), rel(b, a));
  expect(prompt_len <= 256 || m.cached_tokens(s) > 0, "the second prefill used the prefix cache");
  expect(rel(b, a) <= bound, "cached prefix within the bound of the full prefill");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  try {
    if (what == "selftest") {
      selftests();
    } else if (what == "racy") {
      float v = 0;
      cuda::selftest_bad("racy", &v);
    } else if (what == "engine" && argc > 2) {
      engine(argv[2], argc > 3 ? std::atoi(argv[3]) : 150, argc > 4 ? std::atof(argv[4]) : 2e-2,
             argc > 5 && std::string(argv[5]) == "invariant");
    } else if (what == "hollow" && argc > 2) {
      hollow(argv[2], argc > 3 ? std::atoi(argv[3]) : 12, argc > 4 ? std::atof(argv[4]) : 2e-2);
    } else {
      std::fprintf(stderr, "usage: cuda_emu_check selftest | racy | engine CKPT [prompt] [bound] [invariant] | "
                           "hollow CKPT [prompt] [bound]\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
