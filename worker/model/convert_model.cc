// convert_model: writes a llama2.c model.bin (or a safetensors model) as one
// safetensors file in Hugging Face's naming, as bf16, f16 or f32, with its geometry in
// the file's metadata. bf16 halves a fp32 checkpoint and is what the GPU worker runs
// (it keeps bf16 weights), so a bf16 file loads into the same GPU model.
//
//   convert_model --model=~/.cache/freekv/stories15M/model.bin --out=model.safetensors
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/model/llama2c_loader.h"
#include "worker/model/model_safetensors.h"

ABSL_FLAG(std::string, model, "", "llama2.c model.bin, or a .safetensors file or directory.");
ABSL_FLAG(std::string, out, "", "The .safetensors file to write.");
ABSL_FLAG(std::string, dtype, "bf16", "Stored dtype: bf16, f16 or f32.");

namespace freekv {
namespace {

absl::Status Convert() {
  const std::string in = absl::GetFlag(FLAGS_model), out = absl::GetFlag(FLAGS_out);
  const std::string name = absl::GetFlag(FLAGS_dtype);
  if (in.empty() || out.empty()) {
    return absl::InvalidArgumentError("give --model=PATH and --out=FILE.safetensors");
  }
  DType dtype;
  if (name == "bf16") {
    dtype = DType::kBFloat16;
  } else if (name == "f16") {
    dtype = DType::kFloat16;
  } else if (name == "f32") {
    dtype = DType::kFloat32;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype is '", name, "'; expected bf16, f16 or f32"));
  }
  absl::StatusOr<ModelWeights> weights = absl::EndsWith(in, ".bin")
                                             ? LoadLlama2cModel(in)
                                             : LoadModelSafetensors(in);
  if (!weights.ok()) return weights.status();
  return SaveModelSafetensors(*weights, out, dtype);
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "writes a model as one safetensors file.\n"
      "  convert_model --model=model.bin --out=model.safetensors [--dtype=bf16]");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status s = freekv::Convert(); !s.ok()) {
    std::fprintf(stderr, "convert_model: %s\n", s.ToString().c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
