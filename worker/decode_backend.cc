#include "worker/decode_backend.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<Device> ParseDevice(absl::string_view name) {
  for (Device device : {Device::kCpu, Device::kGpu}) {
    if (name == DeviceName(device)) return device;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device is \"", name, "\"; expected cpu or gpu"));
}

const char* DeviceName(Device device) { return device == Device::kGpu ? "gpu" : "cpu"; }

std::optional<double> Tally::rate() const {
  if (chances == 0) return std::nullopt;
  return static_cast<double>(count) / static_cast<double>(chances);
}

}  // namespace freekv
