#include "worker/model/llama2c_reference.h"

#include <cmath>
#include <cstring>

namespace freekv {
namespace {

void rmsnorm(float* o, const float* x, const float* weight, int size, float eps) {
  float ss = 0.0f;
  for (int j = 0; j < size; j++) ss += x[j] * x[j];
  ss /= size;
  ss += eps;
  ss = 1.0f / sqrtf(ss);
  for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

void softmax(float* x, int size) {
  float max_val = x[0];
  for (int i = 1; i < size; i++) {
    if (x[i] > max_val) max_val = x[i];
  }
  float sum = 0.0f;
  for (int i = 0; i < size; i++) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < size; i++) x[i] /= sum;
}

// W (d,n) @ x (n,) -> xout (d,)
void matmul(float* xout, const float* x, const float* w, int n, int d) {
  for (int i = 0; i < d; i++) {
    float val = 0.0f;
    for (int j = 0; j < n; j++) val += w[static_cast<size_t>(i) * n + j] * x[j];
    xout[i] = val;
  }
}

}  // namespace

Llama2cReference::Llama2cReference(const ModelWeights& weights)
    : w_(weights),
      key_cache_(weights.config.num_layers),
      value_cache_(weights.config.num_layers) {}

std::vector<float> Llama2cReference::Forward(int token, int pos) {
  const ModelConfig& p = w_.config;
  const int dim = p.dim, hidden_dim = p.hidden_dim, head_size = p.head_dim;
  const int q_dim = p.q_width(), kv_dim = p.kv_width();
  const int kv_mul = p.num_heads / p.num_kv_heads;
  std::vector<float> x(w_.embedding.begin() + static_cast<size_t>(token) * dim,
                       w_.embedding.begin() + static_cast<size_t>(token + 1) * dim);
  std::vector<float> xb(std::max(dim, q_dim)), xb2(dim), hb(hidden_dim), hb2(hidden_dim);
  std::vector<float> q(q_dim), k(kv_dim), v(kv_dim), att(pos + 1);
  for (int l = 0; l < p.num_layers; l++) {
    const LayerWeights& lw = *w_.layers[l];
    rmsnorm(xb.data(), x.data(), lw.attn_norm.data(), dim, p.norm_eps);
    matmul(q.data(), xb.data(), lw.wq.data(), dim, q_dim);
    matmul(k.data(), xb.data(), lw.wk.data(), dim, kv_dim);
    matmul(v.data(), xb.data(), lw.wv.data(), dim, kv_dim);
    // RoPE relative positional encoding: complex-valued rotate q and k in each head
    for (int i = 0; i < q_dim; i += 2) {
      const int head_dim = i % head_size;
      const float freq = 1.0f / powf(p.rope_theta, head_dim / static_cast<float>(head_size));
      const float val = pos * freq;
      const float fcr = cosf(val);
      const float fci = sinf(val);
      const int rotn = i < kv_dim ? 2 : 1;  // how many vectors? 2 = q & k, 1 = q only
      for (int r = 0; r < rotn; r++) {
        float* vec = r == 0 ? q.data() : k.data();
        const float v0 = vec[i];
        const float v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
      }
    }
    key_cache_[l].insert(key_cache_[l].end(), k.begin(), k.end());
    value_cache_[l].insert(value_cache_[l].end(), v.begin(), v.end());
    for (int h = 0; h < p.num_heads; h++) {
      const float* qh = q.data() + h * head_size;
      for (int t = 0; t <= pos; t++) {
        const float* kt = key_cache_[l].data() + t * kv_dim + (h / kv_mul) * head_size;
        float score = 0.0f;
        for (int i = 0; i < head_size; i++) score += qh[i] * kt[i];
        att[t] = score / sqrtf(static_cast<float>(head_size));
      }
      softmax(att.data(), pos + 1);
      float* out = xb.data() + h * head_size;
      std::memset(out, 0, head_size * sizeof(float));
      for (int t = 0; t <= pos; t++) {
        const float* vt = value_cache_[l].data() + t * kv_dim + (h / kv_mul) * head_size;
        for (int i = 0; i < head_size; i++) out[i] += att[t] * vt[i];
      }
    }
    matmul(xb2.data(), xb.data(), lw.wo.data(), q_dim, dim);
    for (int i = 0; i < dim; i++) x[i] += xb2[i];
    rmsnorm(xb.data(), x.data(), lw.ffn_norm.data(), dim, p.norm_eps);
    matmul(hb.data(), xb.data(), lw.w1.data(), dim, hidden_dim);
    matmul(hb2.data(), xb.data(), lw.w3.data(), dim, hidden_dim);
    for (int i = 0; i < hidden_dim; i++) {
      hb[i] = hb[i] * (1.0f / (1.0f + expf(-hb[i]))) * hb2[i];
    }
    matmul(xb.data(), hb.data(), lw.w2.data(), hidden_dim, dim);
    for (int i = 0; i < dim; i++) x[i] += xb[i];
  }
  rmsnorm(x.data(), x.data(), w_.final_norm.data(), dim, p.norm_eps);
  std::vector<float> logits(p.vocab_size);
  matmul(logits.data(), x.data(), w_.classifier_data(), dim, p.vocab_size);
  return logits;
}

}  // namespace freekv
