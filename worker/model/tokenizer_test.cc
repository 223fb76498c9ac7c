#include "worker/model/tokenizer.h"

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/model_paths.h"

namespace freekv {
namespace {

using ::testing::ElementsAreArray;

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = TokenizerBinPath(DefaultModelDir());
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(path);
    ASSERT_TRUE(t.ok()) << t.status() << " (run tools/fetch_model.sh)";
    tokenizer_ = new Tokenizer(std::move(*t));
  }
  static void TearDownTestSuite() { delete tokenizer_; }
  static const Tokenizer& tok() { return *tokenizer_; }

  static Tokenizer* tokenizer_;
};
Tokenizer* TokenizerTest::tokenizer_ = nullptr;

// The expected ids were produced by llama2.c's run.c encode() (master), compiled
// verbatim in a harness and run on this tokenizer.bin with its byte tokens written as
// <0xXX> (the current llama2.c export format).
TEST_F(TokenizerTest, KnownPromptsGiveLlama2cIds) {
  EXPECT_EQ(tok().vocab_size(), 32000);
  EXPECT_THAT(tok().Encode("Once upon a time", true, false),
              ElementsAreArray({1, 9038, 2501, 263, 931}));
  EXPECT_THAT(tok().Encode("Hello world", true, false), ElementsAreArray({1, 15043, 3186}));
  EXPECT_THAT(tok().Encode("Hello world", true, true),
              ElementsAreArray({1, 15043, 3186, 2}));
  EXPECT_THAT(
      tok().Encode("Lily and Tom went to the park. They played with a red ball!", true, false),
      ElementsAreArray({1, 365, 2354, 322, 4335, 3512, 304, 278, 14089, 29889, 2688, 5318, 411,
                        263, 2654, 8287, 29991}));
  EXPECT_THAT(tok().Encode("  two  spaces,\nnewline\ttab", true, false),
              ElementsAreArray({1, 259, 1023, 29871, 8162, 29892, 13, 1482, 1220, 12, 3891}));
  EXPECT_THAT(tok().Encode("", true, false), ElementsAreArray({1}));
}

TEST_F(TokenizerTest, LongParagraphGivesLlama2cIds) {
  const std::string text =
      "One day, a little girl named Lily found a needle in her room. She knew it was "
      "difficult to play with it because it was sharp. Lily wanted to share the needle "
      "with her mom, so she could sew a button on her shirt.";
  EXPECT_THAT(tok().Encode(text, true, false),
              ElementsAreArray({1,    3118, 2462, 29892, 263,   2217, 7826, 4257,  365,  2354,
                                1476, 263,  817,  280,   297,   902,  5716, 29889, 2296, 6363,
                                372,  471,  5189, 304,   1708,  411,  372,  1363,  372,  471,
                                15301, 29889, 365, 2354, 5131, 304,  6232, 278,   817,  280,
                                411,  902,  16823, 29892, 577, 1183, 1033, 409,   29893, 263,
                                2826, 373,  902,  528,   2728,  29889}));
}

TEST_F(TokenizerTest, UnknownCodePointsFallBackToByteTokens) {
  // U+1F984 (unicorn) is not in the vocabulary: its four UTF-8 bytes become <0xF0>,
  // <0x9F>, <0xA6>, <0x84>, ids byte + 3.
  EXPECT_THAT(tok().Encode("naïve café 🦄 ~x", true, false),
              ElementsAreArray({1, 1055, 30085, 345, 274, 28059, 29871, 243, 162, 169, 135,
                                3695, 29916}));
  EXPECT_THAT(tok().Encode("Ünïcödé: 日本語 and emoji 🦄🌈!", true, false),
              ElementsAreArray({1, 7189, 29876, 30085, 29883, 9289, 29948, 29901, 29871, 30325,
                                30346, 30968, 322, 953, 29877, 2397, 29871, 243, 162, 169,
                                135, 243, 162, 143, 139, 29991}));
  EXPECT_EQ(tok().piece(243), "<0xF0>");
}

TEST_F(TokenizerTest, DecodeInvertsEncode) {
  const std::vector<std::string> texts = {
      "Once upon a time",
      "Lily and Tom went to the park. They played with a red ball!",
      "  two  spaces,\nnewline\ttab",
      "Ünïcödé: 日本語 and emoji 🦄🌈!",
      "x",
  };
  for (const std::string& text : texts) {
    const absl::StatusOr<std::string> back = tok().Decode(tok().Encode(text, true, true));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, text);
  }
}

TEST_F(TokenizerTest, OnlyTheTokenAfterBosLosesItsLeadingSpace) {
  EXPECT_EQ(*tok().Decode({9038, 2501}), " Once upon");
  EXPECT_EQ(*tok().Decode({1, 9038, 2501}), "Once upon");
  EXPECT_EQ(*tok().DecodeToken(1, 9038), "Once");
  EXPECT_EQ(*tok().DecodeToken(9038, 2501), " upon");
  EXPECT_EQ(*tok().DecodeToken(1, 3 + 'A'), "A");  // a byte token decodes to its byte
  EXPECT_EQ(tok().DecodeToken(1, 32000).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The id whose piece is exactly `piece`, by linear search; -1 when none.
int IdOfPiece(const Tokenizer& t, const std::string& piece) {
  for (int id = 0; id < t.vocab_size(); ++id) {
    if (t.piece(id) == piece) return id;
  }
  return -1;
}

// llama2.c's merge loop as written there (rescan every adjacent pair each step), over
// an already split sequence; the heap-based Encode must give the same merges.
std::vector<int> QuadraticMerges(const Tokenizer& t, std::vector<int> tokens) {
  while (true) {
    float best_score = -1e10f;
    int best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int id = IdOfPiece(t, t.piece(tokens[i]) + t.piece(tokens[i + 1]));
      if (id >= 0 && t.score(id) > best_score) {
        best_score = t.score(id);
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx < 0) return tokens;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
}

TEST_F(TokenizerTest, HeapMergesMatchTheQuadraticLoopOnRandomText) {
  // Letters and spaces only, so the initial split is one token per byte.
  const std::string alphabet = "aaabeeeehilmnoorssttu    ";
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::string text;
    const int length = 5 + trial;
    for (int i = 0; i < length; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<int> split = {IdOfPiece(tok(), " ")};  // the dummy prefix
    for (const char c : text) split.push_back(IdOfPiece(tok(), std::string(1, c)));
    EXPECT_THAT(tok().Encode(text, false, false), ElementsAreArray(QuadraticMerges(tok(), split)))
        << "text: '" << text << "'";
  }
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  EXPECT_EQ(Tokenizer::Load("/nonexistent/tokenizer.bin").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TokenizerLoadTest, TruncatedFileIsRejected) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/truncated.bin";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const int32_t header[3] = {16, 0, 40};  // max length, score 0.0, a 40-byte token...
  std::fwrite(header, sizeof(header), 1, f);
  std::fputs("short", f);                 // ...of which 5 bytes exist
  std::fclose(f);
  const absl::Status s = Tokenizer::Load(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("length 40"), std::string::npos) << s;
}

}  // namespace
}  // namespace freekv
