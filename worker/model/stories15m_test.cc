// The model on the real stories15M weights and tokenizer (fetched by
// tools/fetch_model.sh): finite logits, agreement with llama2.c's forward, greedy
// decoding that reads as English, prefill and decode paths agreeing, and a
// safetensors round trip with identical logits.
#include <cctype>
#include <cmath>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/full_attention.h"
#include "worker/model/llama2c_loader.h"
#include "worker/model/llama2c_reference.h"
#include "worker/model/model_paths.h"
#include "worker/model/model_safetensors.h"
#include "worker/model/tokenizer.h"
#include "worker/model/transformer.h"

namespace freekv {
namespace {

constexpr char kPrompt[] = "Once upon a time";

class Stories15MTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = DefaultModelDir();
    absl::StatusOr<ModelWeights> w = LoadLlama2cModel(ModelBinPath(dir));
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(TokenizerBinPath(dir));
    ASSERT_TRUE(w.ok()) << w.status() << " (run tools/fetch_model.sh)";
    ASSERT_TRUE(t.ok()) << t.status() << " (run tools/fetch_model.sh)";
    weights_ = new ModelWeights(std::move(*w));
    tokenizer_ = new Tokenizer(std::move(*t));
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete tokenizer_;
  }

  static std::unique_ptr<FullAttention> NewPolicy() {
    return *FullAttention::Create(weights_->config, /*page_tokens=*/8);
  }
  static std::vector<int32_t> PromptTokens() {
    return tokenizer_->Encode(kPrompt, /*bos=*/true, /*eos=*/false);
  }
  // Logits of every position of `tokens` from one prefill pass of `weights`.
  static std::vector<float> PrefillLogits(const ModelWeights& weights,
                                          const std::vector<int32_t>& tokens) {
    Transformer model = *Transformer::Create(weights);
    auto policy = *FullAttention::Create(weights.config, 8);
    std::vector<float> logits;
    EXPECT_TRUE(
        model.Forward({BatchEntry{0, 0, tokens}}, *policy, LogitsFor::kEveryToken, logits).ok());
    return logits;
  }

  static ModelWeights* weights_;
  static Tokenizer* tokenizer_;
};
ModelWeights* Stories15MTest::weights_ = nullptr;
Tokenizer* Stories15MTest::tokenizer_ = nullptr;

constexpr int kVocab = 32000;

absl::Span<const float> Row(const std::vector<float>& logits, size_t row) {
  return absl::MakeConstSpan(logits).subspan(row * kVocab, kVocab);
}

TEST_F(Stories15MTest, LogitsOfAShortPromptAreFinite) {
  const std::vector<float> logits = PrefillLogits(*weights_, PromptTokens());
  ASSERT_EQ(logits.size(), PromptTokens().size() * kVocab);
  float lo = logits[0], hi = logits[0];
  for (const float x : logits) {
    ASSERT_TRUE(std::isfinite(x));
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  EXPECT_GT(hi - lo, 5.0f);  // a trained model is confident somewhere
}

TEST_F(Stories15MTest, MatchesLlama2cForwardTranscription) {
  std::vector<int32_t> tokens =
      tokenizer_->Encode("Once upon a time, there was a little dog", true, false);
  const std::vector<float> ours = PrefillLogits(*weights_, tokens);
  Llama2cReference reference(*weights_);
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    const std::vector<float> theirs = reference.Forward(tokens[pos], static_cast<int>(pos));
    float max_diff = 0.0f;
    for (int i = 0; i < kVocab; ++i) {
      max_diff = std::max(max_diff, std::abs(theirs[i] - Row(ours, pos)[i]));
    }
    EXPECT_LE(max_diff, 1e-4f) << "position " << pos;
    EXPECT_EQ(Argmax(theirs), Argmax(Row(ours, pos))) << "position " << pos;
  }
}

// Words of at least two letters; the fraction that is a common English word.
double CommonWordShare(const std::string& text, int* words) {
  static const std::set<std::string> kCommon = {
      "the", "a",    "and",  "was", "to",   "she", "he",   "it",   "of",    "in",
      "her", "his",  "they", "with", "there", "little", "named", "day",  "very", "had",
      "one", "lily", "tim",  "play", "loved", "big",  "said", "saw",  "on",    "you"};
  std::string word;
  int common = 0;
  *words = 0;
  std::istringstream in(text);
  while (in >> word) {
    std::string letters;
    for (const char c : word) {
      if (std::isalpha(static_cast<unsigned char>(c))) letters += std::tolower(c);
    }
    if (letters.empty()) continue;
    ++*words;
    common += kCommon.count(letters);
  }
  return *words == 0 ? 0.0 : static_cast<double>(common) / *words;
}

TEST_F(Stories15MTest, GreedyDecodingOfOnceUponATimeIsDeterministicEnglish) {
  const std::vector<int32_t> prompt = PromptTokens();
  Transformer model = *Transformer::Create(*weights_);
  auto first = NewPolicy(), second = NewPolicy();
  const std::vector<int32_t> run1 = *GreedyDecode(model, *first, 0, prompt, 40);
  const std::vector<int32_t> run2 = *GreedyDecode(model, *second, 0, prompt, 40);
  EXPECT_EQ(run1, run2);

  std::vector<int32_t> all = prompt;
  all.insert(all.end(), run1.begin(), run1.end());
  const std::string text = *tokenizer_->Decode(all);
  std::cout << "stories15M greedy: " << text << "\n";
  ASSERT_EQ(text.rfind(kPrompt, 0), 0u) << text;
  const std::string continuation = text.substr(sizeof(kPrompt) - 1);
  for (const char c : continuation) {
    EXPECT_TRUE(std::isprint(static_cast<unsigned char>(c)) || c == '\n') << int{c};
  }
  int words = 0;
  const double share = CommonWordShare(continuation, &words);
  EXPECT_GE(words, 20) << continuation;
  EXPECT_GE(share, 0.3) << continuation;
}

TEST_F(Stories15MTest, PrefillAndDecodePathsAgreeOnTheFirstSteps) {
  const std::vector<int32_t> prompt = PromptTokens();
  Transformer model = *Transformer::Create(*weights_);
  auto policy = NewPolicy();
  const std::vector<int32_t> generated = *GreedyDecode(model, *policy, 0, prompt, 3);
  std::vector<int32_t> context = prompt;
  context.insert(context.end(), generated.begin(), generated.end() - 1);
  // Path 1: the whole context in one prefill pass (dense causal attention).
  const std::vector<float> prefill = PrefillLogits(*weights_, context);
  // Path 2: one token per pass (paged decode attention).
  auto decode_policy = NewPolicy();
  std::vector<float> logits;
  for (size_t pos = 0; pos < context.size(); ++pos) {
    const BatchEntry e{0, static_cast<int32_t>(pos), absl::MakeConstSpan(&context[pos], 1)};
    ASSERT_TRUE(model.Forward({e}, *decode_policy, LogitsFor::kLastToken, logits).ok());
    const absl::Span<const float> pre = Row(prefill, pos);
    float max_diff = 0.0f;
    for (int i = 0; i < kVocab; ++i) max_diff = std::max(max_diff, std::abs(pre[i] - logits[i]));
    EXPECT_LE(max_diff, 1e-4f) << "position " << pos;
    const int32_t top = Argmax(logits);
    EXPECT_EQ(top, Argmax(pre)) << "position " << pos;
    EXPECT_NEAR(logits[top], pre[top], 1e-4f) << "position " << pos;
    // The last three positions are the greedy steps: their top-1 is what was generated.
    if (pos + 1 >= prompt.size()) {
      EXPECT_EQ(top, generated[pos + 1 - prompt.size()]);
    }
  }
}

TEST_F(Stories15MTest, SafetensorsRoundTripGivesIdenticalLogits) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/stories15M.safetensors";
  ASSERT_TRUE(SaveModelSafetensors(*weights_, path, DType::kFloat32).ok());
  absl::StatusOr<ModelWeights> loaded = LoadModelSafetensors(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->tied_classifier());
  EXPECT_EQ(loaded->config.max_seq_len, 256);
  EXPECT_EQ(loaded->config.norm_eps, weights_->config.norm_eps);
  const std::vector<int32_t> tokens = PromptTokens();
  EXPECT_EQ(PrefillLogits(*loaded, tokens), PrefillLogits(*weights_, tokens));
}

}  // namespace
}  // namespace freekv
