// Where the real model lives: tools/fetch_model.sh stores stories15M's model.bin and
// tokenizer.bin in ${FREEKV_CACHE:-$HOME/.cache/freekv}/stories15M. Thread-safe
// (reads the environment and the passwd entry only).
#ifndef FREEKV_WORKER_MODEL_MODEL_PATHS_H_
#define FREEKV_WORKER_MODEL_MODEL_PATHS_H_

#include <string>

namespace freekv {

// $FREEKV_MODEL_DIR when set; else $FREEKV_CACHE/stories15M; else
// <home>/.cache/freekv/stories15M, with <home> from $HOME or, where the environment
// lacks it (Bazel tests), from the user's passwd entry.
std::string DefaultModelDir();

// <dir>/model.bin and <dir>/tokenizer.bin.
std::string ModelBinPath(const std::string& dir);
std::string TokenizerBinPath(const std::string& dir);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_MODEL_PATHS_H_
