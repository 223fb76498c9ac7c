#include "worker/model/llama2c_loader.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/model/mapped_file.h"

namespace freekv {
namespace {

// The formats are little-endian and are read by memcpy into host integers and floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian host required");

constexpr size_t kHeaderInts = 7;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);

std::vector<float> CopyFloats(const uint8_t* data, size_t count) {
  std::vector<float> out(count);
  std::memcpy(out.data(), data, count * sizeof(float));
  return out;
}

// Hands out consecutive fp32 tensors of the weight region. The caller has checked the
// region's total size, so reads never run past its end.
class FloatCursor {
 public:
  explicit FloatCursor(const uint8_t* data) : data_(data) {}

  // The next `count` floats (possibly unaligned: read them with memcpy).
  const uint8_t* Advance(size_t count) {
    const uint8_t* at = data_ + offset_;
    offset_ += count * sizeof(float);
    return at;
  }
  std::vector<float> Take(size_t count) { return CopyFloats(Advance(count), count); }

 private:
  const uint8_t* data_;
  size_t offset_ = 0;
};

absl::StatusOr<ModelConfig> ParseHeader(absl::Span<const uint8_t> bytes, bool* shared) {
  if (bytes.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c checkpoint is ", bytes.size(), " bytes; the header alone is ", kHeaderBytes));
  }
  int32_t h[kHeaderInts];
  std::memcpy(h, bytes.data(), kHeaderBytes);
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.num_layers = h[2];
  c.num_heads = h[3];
  c.num_kv_heads = h[4];
  c.vocab_size = std::abs(h[5]);
  c.max_seq_len = h[6];
  *shared = h[5] > 0;
  if (c.num_heads <= 0 || c.dim % c.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama2.c header dim ", c.dim,
                                                   " is not a multiple of n_heads ",
                                                   c.num_heads));
  }
  c.head_dim = c.dim / c.num_heads;
  if (auto s = ValidateModelConfig(c); !s.ok()) return s;
  return c;
}

size_t ExpectedFloats(const ModelConfig& c, bool shared) {
  const LayerShapes s = LayerShapesOf(c);
  const size_t table = static_cast<size_t>(c.vocab_size) * c.dim;
  const size_t per_layer = 2 * s.norm + s.wq + 2 * s.wkv + s.wo + 2 * s.w_up + s.w_down;
  const size_t rope = static_cast<size_t>(c.max_seq_len) * c.head_dim;  // cos and sin
  return table + c.num_layers * per_layer + c.dim + rope + (shared ? 0 : table);
}

}  // namespace

absl::StatusOr<ModelWeights> LoadLlama2cModel(const std::string& path,
                                              Llama2cRopeTable* rope_table) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  bool shared = true;
  absl::StatusOr<ModelConfig> config = ParseHeader(file->bytes(), &shared);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  const ModelConfig& c = *config;
  const size_t expected = kHeaderBytes + ExpectedFloats(c, shared) * sizeof(float);
  if (file->bytes().size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is ", file->bytes().size(), " bytes; its header implies ", expected));
  }

  ModelWeights w;
  w.config = c;
  const LayerShapes s = LayerShapesOf(c);
  std::vector<LayerWeights> layers(c.num_layers);
  FloatCursor cursor(file->bytes().data() + kHeaderBytes);
  w.embedding = cursor.Take(static_cast<size_t>(c.vocab_size) * c.dim);
  // Each per-layer tensor is stored as one [num_layers][size] block.
  const auto read_block = [&](size_t size, std::vector<float> LayerWeights::*field) {
    const uint8_t* block = cursor.Advance(c.num_layers * size);
    for (int l = 0; l < c.num_layers; ++l) {
      layers[l].*field = CopyFloats(block + l * size * sizeof(float), size);
    }
  };
  read_block(s.norm, &LayerWeights::attn_norm);
  read_block(s.wq, &LayerWeights::wq);
  read_block(s.wkv, &LayerWeights::wk);
  read_block(s.wkv, &LayerWeights::wv);
  read_block(s.wo, &LayerWeights::wo);
  read_block(s.norm, &LayerWeights::ffn_norm);
  read_block(s.w_up, &LayerWeights::w1);
  read_block(s.w_down, &LayerWeights::w2);
  read_block(s.w_up, &LayerWeights::w3);
  w.final_norm = cursor.Take(c.dim);
  const size_t half_table = static_cast<size_t>(c.max_seq_len) * c.head_dim / 2;
  std::vector<float> rope_cos = cursor.Take(half_table);
  std::vector<float> rope_sin = cursor.Take(half_table);
  if (!shared) w.classifier = cursor.Take(static_cast<size_t>(c.vocab_size) * c.dim);
  if (rope_table != nullptr) {
    rope_table->cos = std::move(rope_cos);
    rope_table->sin = std::move(rope_sin);
  }
  for (LayerWeights& layer : layers) {
    w.layers.push_back(std::make_shared<const LayerWeights>(std::move(layer)));
  }
  if (auto st = ValidateModelWeights(w); !st.ok()) return st;
  return w;
}

}  // namespace freekv
