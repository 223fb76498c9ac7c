#include "worker/model_source.h"

#include <sys/stat.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/model/llama2c_loader.h"
#include "worker/model/model_paths.h"
#include "worker/model/model_safetensors.h"

namespace freekv {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

absl::StatusOr<LoadedModel> LoadModel(const std::string& path,
                                      const std::string& tokenizer_path) {
  const std::string model_path = path.empty() ? DefaultModelDir() : path;
  if (!Exists(model_path)) {
    return absl::NotFoundError(absl::StrCat(
        "model path ", model_path, " does not exist",
        path.empty() ? " (the default stories15M; run tools/fetch_model.sh)" : ""));
  }
  const bool dir = IsDirectory(model_path);
  absl::StatusOr<ModelWeights> weights =
      dir && Exists(ModelBinPath(model_path)) ? LoadLlama2cModel(ModelBinPath(model_path))
      : dir || absl::EndsWith(model_path, ".safetensors")
          ? LoadModelSafetensors(model_path)
          : LoadLlama2cModel(model_path);
  if (!weights.ok()) return weights.status();
  LoadedModel loaded{*std::move(weights), std::nullopt};
  const std::string tok = !tokenizer_path.empty() ? tokenizer_path
                          : dir                   ? TokenizerBinPath(model_path)
                                                  : TokenizerBinPath(DirOf(model_path));
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::Load(tok);
  if (!tokenizer.ok()) return tokenizer.status();
  if (tokenizer->vocab_size() != loaded.weights.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", tok, " has ", tokenizer->vocab_size(),
        " tokens; the model's vocabulary has ", loaded.weights.config.vocab_size));
  }
  loaded.tokenizer = *std::move(tokenizer);
  return loaded;
}

}  // namespace freekv
