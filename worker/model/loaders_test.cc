// The llama2.c checkpoint loader on the real stories15M, and the safetensors reader and
// writer (generic and Hugging Face Llama naming) on random tensors.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/float_convert.h"
#include "worker/model/llama2c_loader.h"
#include "worker/model/model_paths.h"
#include "worker/model/model_safetensors.h"
#include "worker/model/safetensors.h"

namespace freekv {
namespace {

std::string TempPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

TEST(Llama2cLoaderTest, LoadsStories15M) {
  Llama2cRopeTable rope;
  absl::StatusOr<ModelWeights> w =
      LoadLlama2cModel(ModelBinPath(DefaultModelDir()), &rope);
  ASSERT_TRUE(w.ok()) << w.status() << " (run tools/fetch_model.sh)";
  const ModelConfig& c = w->config;
  EXPECT_EQ(c.dim, 288);
  EXPECT_EQ(c.hidden_dim, 768);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.num_heads, 6);
  EXPECT_EQ(c.num_kv_heads, 6);
  EXPECT_EQ(c.head_dim, 48);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.max_seq_len, 256);
  EXPECT_TRUE(w->tied_classifier());
  EXPECT_TRUE(ValidateModelWeights(*w).ok());
  // The last tensor read, so an offset error anywhere would show here: RMSNorm gains
  // of a trained model are positive and of order one.
  for (const float g : w->final_norm) {
    EXPECT_GT(g, 0.0f);
    EXPECT_LT(g, 20.0f);
  }
  // The checkpoint's own RoPE table is cos/sin(pos * 10000^(-2j/head_dim)), so the
  // computed RoPE with theta 10000 reproduces what the model was trained with.
  const int half = c.head_dim / 2;
  ASSERT_EQ(rope.cos.size(), static_cast<size_t>(c.max_seq_len) * half);
  for (int pos : {0, 1, 17, 255}) {
    for (int j = 0; j < half; ++j) {
      const double angle = pos * std::pow(10000.0, -2.0 * j / c.head_dim);
      EXPECT_NEAR(rope.cos[pos * half + j], std::cos(angle), 2e-5) << pos << " " << j;
      EXPECT_NEAR(rope.sin[pos * half + j], std::sin(angle), 2e-5) << pos << " " << j;
    }
  }
}

TEST(Llama2cLoaderTest, RejectsMissingAndTruncatedFiles) {
  EXPECT_EQ(LoadLlama2cModel("/nonexistent/model.bin").status().code(),
            absl::StatusCode::kNotFound);
  const std::string path = TempPath("short.bin");
  std::ofstream out(path, std::ios::binary);
  const int32_t header[7] = {16, 32, 1, 2, 2, 8, 4};
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  out.write("0123456789abcdef", 16);
  out.close();
  const absl::Status s = LoadLlama2cModel(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("header implies"), std::string::npos) << s;
}

TEST(FloatConvertTest, HalfRoundsToNearestEvenAndRoundTrips) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);             // ties to even: overflows
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even zero
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units -> 2
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, even stays
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(NAN) & 0x7c00, 0x7c00);
  EXPECT_NE(FloatToHalf(NAN) & 0x03ff, 0);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN payloads
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(FloatConvertTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(FloatFromBits(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(FloatToBf16(FloatFromBits(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(FloatFromBits(0x3f808001)), 0x3f81);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
}

TEST(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  const std::vector<float> a = RandomFloats(6 * 5, 1);
  const std::vector<float> b = RandomFloats(7, 2);
  const std::vector<float> c = RandomFloats(3 * 2 * 2, 3);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.Add("a", DType::kFloat32, {6, 5}, a).ok());
  ASSERT_TRUE(writer.Add("b.bf16", DType::kBFloat16, {7}, b).ok());
  ASSERT_TRUE(writer.Add("c\"quoted\"", DType::kFloat16, {3, 2, 2}, c).ok());
  writer.SetMetadata("note", "line\nbreak");
  const std::string path = TempPath("round_trip.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());

  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->metadata().at("note"), "line\nbreak");
  EXPECT_EQ(reader->tensors().at("b.bf16").dtype_name, "BF16");
  EXPECT_EQ(*reader->ReadFloat32("a", {6, 5}), a);
  const std::vector<float> b_back = *reader->ReadFloat32("b.bf16", {7});
  const std::vector<float> c_back = *reader->ReadFloat32("c\"quoted\"", {3, 2, 2});
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b_back[i], Bf16ToFloat(FloatToBf16(b[i])));
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c_back[i], HalfToFloat(FloatToHalf(c[i])));
  // The data region starts 8-byte aligned, as the reference implementation writes it.
  uint64_t header = 0;
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(&header), 8);
  EXPECT_EQ(header % 8, 0u);
}

TEST(SafetensorsTest, ReportsMissingTensorsWrongShapesAndBadFiles) {
  const std::vector<float> a = RandomFloats(4, 4);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.Add("a", DType::kFloat32, {2, 2}, a).ok());
  EXPECT_EQ(writer.Add("a", DType::kFloat32, {4}, a).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer.Add("b", DType::kFloat32, {3}, a).code(),
            absl::StatusCode::kInvalidArgument);
  const std::string path = TempPath("errors.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->ReadFloat32("zz", {4}).status().code(), absl::StatusCode::kNotFound);
  const absl::Status shape = reader->ReadFloat32("a", {4}).status();
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(shape.message().find("[2, 2]"), std::string::npos) << shape;

  // A header whose offsets run past the end of the file.
  const std::string json = R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const std::string bad = TempPath("bad.safetensors");
  std::ofstream out(bad, std::ios::binary);
  const uint64_t length = json.size();
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << json << "12345678";  // 8 of the 16 bytes
  out.close();
  const absl::Status s = SafetensorsReader::Open(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("'t'"), std::string::npos) << s;
}

ModelConfig SmallGqaConfig() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;  // q width 32 != dim, as some models have
  c.vocab_size = 50;
  c.max_seq_len = 128;
  c.rope_theta = 500000.0f;
  c.norm_eps = 1e-6f;
  c.rope_scaling.factor = 4.0f;
  c.rope_scaling.original_max_positions = 64;
  return c;
}

void ExpectSameWeights(const ModelWeights& a, const ModelWeights& b) {
  EXPECT_EQ(a.embedding, b.embedding);
  EXPECT_EQ(a.final_norm, b.final_norm);
  EXPECT_EQ(a.classifier, b.classifier);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &x = *a.layers[l], &y = *b.layers[l];
    EXPECT_EQ(x.attn_norm, y.attn_norm);
    EXPECT_EQ(x.wq, y.wq);
    EXPECT_EQ(x.wk, y.wk);
    EXPECT_EQ(x.wv, y.wv);
    EXPECT_EQ(x.wo, y.wo);
    EXPECT_EQ(x.ffn_norm, y.ffn_norm);
    EXPECT_EQ(x.w1, y.w1);
    EXPECT_EQ(x.w2, y.w2);
    EXPECT_EQ(x.w3, y.w3);
  }
}

TEST(ModelSafetensorsTest, Float32RoundTripIsExactAndUsesHuggingFaceRopeOrder) {
  const ModelWeights w = *RandomModelWeights(SmallGqaConfig(), {/*seed=*/5});
  const std::string path = TempPath("model.safetensors");
  ASSERT_TRUE(SaveModelSafetensors(w, path, DType::kFloat32).ok());
  absl::StatusOr<ModelWeights> back = LoadModelSafetensors(path);
  ASSERT_TRUE(back.ok()) << back.status();
  const ModelConfig &c = w.config, &d = back->config;
  EXPECT_EQ(d.dim, c.dim);
  EXPECT_EQ(d.hidden_dim, c.hidden_dim);
  EXPECT_EQ(d.num_heads, c.num_heads);
  EXPECT_EQ(d.num_kv_heads, c.num_kv_heads);
  EXPECT_EQ(d.head_dim, c.head_dim);
  EXPECT_EQ(d.max_seq_len, c.max_seq_len);
  EXPECT_EQ(d.rope_theta, c.rope_theta);
  EXPECT_EQ(d.norm_eps, c.norm_eps);
  EXPECT_EQ(d.rope_scaling.factor, c.rope_scaling.factor);
  ExpectSameWeights(w, *back);

  // On disk, row i of a head's k_proj is llama2.c's row 2i (first halves first).
  const SafetensorsReader reader = *SafetensorsReader::Open(path);
  const std::vector<float> k = *reader.ReadFloat32("model.layers.1.self_attn.k_proj.weight",
                                                   {c.kv_width(), c.dim});
  const std::vector<float>& wk = w.layers[1]->wk;
  const int hd = c.head_dim;
  for (int h = 0; h < c.num_kv_heads; ++h) {
    for (int i = 0; i < hd / 2; ++i) {
      EXPECT_EQ(k[(h * hd + i) * c.dim], wk[(h * hd + 2 * i) * c.dim]);
      EXPECT_EQ(k[(h * hd + hd / 2 + i) * c.dim + 3], wk[(h * hd + 2 * i + 1) * c.dim + 3]);
    }
  }
  EXPECT_TRUE(reader.tensors().count("lm_head.weight"));
}

TEST(ModelSafetensorsTest, Bf16FileHoldsRoundedWeights) {
  const ModelWeights w = *RandomModelWeights(SmallGqaConfig(), {/*seed=*/6});
  const std::string path = TempPath("model_bf16.safetensors");
  ASSERT_TRUE(SaveModelSafetensors(w, path, DType::kBFloat16).ok());
  const ModelWeights back = *LoadModelSafetensors(path);
  for (size_t i = 0; i < w.layers[0]->w2.size(); ++i) {
    ASSERT_EQ(back.layers[0]->w2[i], Bf16ToFloat(FloatToBf16(w.layers[0]->w2[i])));
  }
}

// A Hugging Face style directory: shards without config metadata, and config.json.
TEST(ModelSafetensorsTest, LoadsShardedDirectoryWithConfigJson) {
  const ModelWeights w = *RandomModelWeights(SmallGqaConfig(), {/*seed=*/7});
  const std::string dir = TempPath("hf_model");
  std::filesystem::create_directories(dir);
  const std::string whole = dir + "/whole.tmp";
  ASSERT_TRUE(SaveModelSafetensors(w, whole, DType::kFloat32).ok());
  const SafetensorsReader src = *SafetensorsReader::Open(whole);
  SafetensorsWriter shard1, shard2;
  std::vector<std::vector<float>> keep;
  keep.reserve(src.tensors().size());
  int index = 0;
  for (const auto& [name, info] : src.tensors()) {
    keep.push_back(*src.ReadFloat32(name, info.shape));
    ASSERT_TRUE(
        (index++ % 2 ? shard1 : shard2).Add(name, DType::kFloat32, info.shape, keep.back()).ok());
  }
  ASSERT_TRUE(shard1.Write(dir + "/model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(shard2.Write(dir + "/model-00002-of-00002.safetensors").ok());
  std::filesystem::remove(whole);
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 50,
            "max_position_embeddings": 128, "rope_theta": 500000.0,
            "rms_norm_eps": 1e-06, "rope_scaling": null, "torch_dtype": "float32"})";
  absl::StatusOr<ModelWeights> back = LoadModelSafetensors(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config.num_kv_heads, 2);
  EXPECT_EQ(back->config.rope_theta, 500000.0f);
  ExpectSameWeights(w, *back);

  // Llama 3.1's scaling is read; other schemes are refused rather than mis-modelled.
  const std::string base =
      R"("hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
         "vocab_size": 50, )";
  std::ofstream(dir + "/config.json")
      << "{" << base
      << R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})";
  absl::StatusOr<ModelWeights> scaled = LoadModelSafetensors(dir);
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_EQ(scaled->config.rope_scaling.factor, 8.0f);
  EXPECT_EQ(scaled->config.rope_scaling.original_max_positions, 8192);
  std::ofstream(dir + "/config.json")
      << "{" << base << R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0}})";
  const absl::Status yarn = LoadModelSafetensors(dir).status();
  EXPECT_EQ(yarn.code(), absl::StatusCode::kUnimplemented) << yarn;
}

}  // namespace
}  // namespace freekv
