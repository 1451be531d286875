// Fused Mamba-2 decoding step on the CPU: one pass over the SSM state.
//
// Eager PyTorch reads and writes the (b, h, p, n) state several times per step (decay, rank-1
// update, readout); this loop reads each entry once, writes it once, and accumulates the readout
// on the way. Same signature and result as ssd_step_ref in ssd.py, which the tests compare it with.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

torch::Tensor ssd_step(torch::Tensor state, torch::Tensor x, torch::Tensor dt, torch::Tensor A,
                       torch::Tensor B, torch::Tensor C) {
  TORCH_CHECK(state.scalar_type() == torch::kFloat32 && state.is_contiguous(), "state: contiguous fp32");
  x = x.contiguous().to(torch::kFloat32);
  dt = dt.contiguous().to(torch::kFloat32);
  A = A.contiguous().to(torch::kFloat32);
  B = B.contiguous().to(torch::kFloat32);
  C = C.contiguous().to(torch::kFloat32);
  const int64_t b = state.size(0), h = state.size(1), p = state.size(2), n = state.size(3);
  const int64_t g = B.size(1), heads_per_group = h / g;
  auto y = torch::empty({b, h, p}, x.options());
  float* S = state.data_ptr<float>();
  const float *X = x.data_ptr<float>(), *DT = dt.data_ptr<float>(), *Ah = A.data_ptr<float>();
  const float *Bp = B.data_ptr<float>(), *Cp = C.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, b * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / h, hi = bh % h, group = bi * g + hi / heads_per_group;
      const float step = DT[bh], decay = std::exp(step * Ah[hi]);
      const float *Bg = Bp + group * n, *Cg = Cp + group * n;
      for (int64_t pi = 0; pi < p; ++pi) {
        float* s = S + (bh * p + pi) * n;
        const float input = step * X[bh * p + pi];
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t ni = 0; ni < n; ++ni) {
          const float v = s[ni] * decay + input * Bg[ni];
          s[ni] = v;
          acc += v * Cg[ni];
        }
        Y[bh * p + pi] = acc;
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("ssd_step", &ssd_step, "fused Mamba-2 decoding step"); }
