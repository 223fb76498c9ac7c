// Argument checks shared by the CPU references and the CUDA launchers of this folder.
// Each returns INVALID_ARGUMENT with a message naming the field and its value, so a
// caller that passes a wrong shape learns which one. Stateless; any thread.
#ifndef FREEKV_KERNELS_SHAPE_H_
#define FREEKV_KERNELS_SHAPE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

// Returns the status of `expr` from the enclosing function when it is not OK.
#define FREEKV_RETURN_IF_ERROR(expr)          \
  do {                                        \
    const absl::Status status_ = (expr);      \
    if (!status_.ok()) return status_;        \
  } while (false)

namespace freekv {
namespace kernels {

// OK when value > 0.
inline absl::Status CheckPositive(absl::string_view field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " must be > 0, got ", value));
}

// OK when a buffer of `size` elements holds exactly `expected` elements.
inline absl::Status CheckSize(absl::string_view field, size_t size, size_t expected) {
  if (size == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " has ", size, " elements, expected ", expected));
}

// OK when `size` is a positive multiple of `unit` (a whole number of rows).
inline absl::Status CheckRows(absl::string_view field, size_t size, size_t unit) {
  if (unit > 0 && size > 0 && size % unit == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " has ", size, " elements, expected a positive multiple of ", unit));
}

// OK when the query heads split evenly into KV-head groups (GQA).
inline absl::Status CheckGqa(int64_t num_q_heads, int64_t num_kv_heads) {
  if (num_q_heads > 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("num_q_heads (", num_q_heads,
                                                 ") must be a positive multiple of "
                                                 "num_kv_heads (", num_kv_heads, ")"));
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SHAPE_H_
