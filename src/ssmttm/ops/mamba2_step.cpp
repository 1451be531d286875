// Fused Mamba-2 decoding step on the CPU: everything between in_proj and out_proj in one call.
//
// Eager PyTorch runs about twenty small ops per layer and step, and reads and writes the
// (b, h, p, n) SSM state several times (decay, rank-1 update, readout). Here each state entry is
// read once and written once, with the readout accumulated on the way. Same signature and result
// as mamba2_step_ref in ssd.py, which the tests compare it with.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

static inline float silu(float v) { return v / (1.f + std::exp(-v)); }
static inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }

torch::Tensor mamba2_step(torch::Tensor zxbcdt, torch::Tensor conv_state, torch::Tensor conv_weight,
                          torch::Tensor conv_bias, torch::Tensor dt_bias, torch::Tensor A_log, torch::Tensor D,
                          torch::Tensor norm_weight, torch::Tensor ssm_state, int64_t ngroups, double eps) {
  for (const auto& t : {zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, ssm_state}) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu(),
                "mamba2_step: contiguous fp32 CPU tensors only");
  }
  const int64_t batch = ssm_state.size(0), heads = ssm_state.size(1), hdim = ssm_state.size(2);
  const int64_t nstate = ssm_state.size(3), width = conv_state.size(2), conv_dim = conv_state.size(1);
  const int64_t d_inner = heads * hdim, row = zxbcdt.size(1), heads_per_group = heads / ngroups;
  TORCH_CHECK(conv_dim == d_inner + 2 * ngroups * nstate && row == d_inner + conv_dim + heads, "mamba2_step: shapes");

  auto conv_out = torch::empty({batch, conv_dim}, zxbcdt.options());
  auto y = torch::empty({batch, d_inner}, zxbcdt.options());
  const float* in = zxbcdt.data_ptr<float>();
  float* window = conv_state.data_ptr<float>();
  const float *cw = conv_weight.data_ptr<float>(), *cb = conv_bias.data_ptr<float>();
  const float *dtb = dt_bias.data_ptr<float>(), *alog = A_log.data_ptr<float>(), *skip = D.data_ptr<float>();
  const float* nw = norm_weight.data_ptr<float>();
  float *S = ssm_state.data_ptr<float>(), *xbc = conv_out.data_ptr<float>(), *Y = y.data_ptr<float>();

  // 1. The convolution window takes the new input; output = silu(conv + bias).
  at::parallel_for(0, batch * conv_dim, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / conv_dim, c = i % conv_dim;
      float* w = window + i * width;
      float acc = cb[c];
      for (int64_t k = 0; k + 1 < width; ++k) {
        w[k] = w[k + 1];
        acc += cw[c * width + k] * w[k];
      }
      w[width - 1] = in[b * row + d_inner + c];
      acc += cw[c * width + width - 1] * w[width - 1];
      xbc[i] = silu(acc);
    }
  });

  // 2. The state update and readout, one pass over the state.
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads, g = h / heads_per_group;
      const float dt = softplus(in[b * row + d_inner + conv_dim + h] + dtb[h]);
      const float decay = std::exp(-dt * std::exp(alog[h]));
      const float* x = xbc + b * conv_dim + h * hdim;
      const float* Bv = xbc + b * conv_dim + d_inner + g * nstate;
      const float* Cv = xbc + b * conv_dim + d_inner + ngroups * nstate + g * nstate;
      for (int64_t p = 0; p < hdim; ++p) {
        float* s = S + (bh * hdim + p) * nstate;
        const float input = dt * x[p];
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < nstate; ++n) {
          const float v = s[n] * decay + input * Bv[n];
          s[n] = v;
          acc += v * Cv[n];
        }
        Y[b * d_inner + h * hdim + p] = acc + skip[h] * x[p];
      }
    }
  });

  // 3. Gated RMSNorm per group: rmsnorm(y * silu(z)) * weight.
  const int64_t group_size = d_inner / ngroups;
  at::parallel_for(0, batch * ngroups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / ngroups, off = (bg % ngroups) * group_size;
      float* v = Y + b * d_inner + off;
      const float* z = in + b * row + off;
      float ss = 0.f;
      for (int64_t i = 0; i < group_size; ++i) {
        v[i] *= silu(z[i]);
        ss += v[i] * v[i];
      }
      const float scale = 1.f / std::sqrt(ss / group_size + static_cast<float>(eps));
      for (int64_t i = 0; i < group_size; ++i) v[i] *= scale * nw[off + i];
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("mamba2_step", &mamba2_step, "fused Mamba-2 decoding step"); }
