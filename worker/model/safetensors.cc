#include "worker/model/safetensors.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "worker/model/float_convert.h"

namespace freekv {
namespace {

// The formats are little-endian and are read by memcpy into host integers and floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian host required");

using google::protobuf::ListValue;
using google::protobuf::Struct;
using google::protobuf::Value;

// The format caps headers at 100 MB; a larger length is a corrupt file.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Element sizes of every dtype the format defines, so that tensors we do not convert
// are still bounds-checked.
std::optional<size_t> ElementBytes(absl::string_view name) {
  static const std::map<absl::string_view, size_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  const auto it = kSizes.find(name);
  if (it == kSizes.end()) return std::nullopt;
  return it->second;
}

std::optional<DType> ConvertibleDType(absl::string_view name) {
  if (name == "F32") return DType::kFloat32;
  if (name == "F16") return DType::kFloat16;
  if (name == "BF16") return DType::kBFloat16;
  return std::nullopt;
}

// A JSON number that must be a non-negative integer exactly representable in a double.
absl::StatusOr<uint64_t> ToIndex(const Value& v, const std::string& what) {
  const double d = v.number_value();
  if (v.kind_case() != Value::kNumberValue || d < 0 || d > 9007199254740992.0 ||
      d != static_cast<double>(static_cast<uint64_t>(d))) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header: ", what, " is not a non-negative integer"));
  }
  return static_cast<uint64_t>(d);
}

absl::StatusOr<TensorInfo> ParseTensor(const std::string& name, const Value& v,
                                       size_t data_bytes) {
  const std::string where = absl::StrCat("tensor '", name, "'");
  if (v.kind_case() != Value::kStructValue) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors header: ", where,
                                                   " is not an object"));
  }
  const auto& f = v.struct_value().fields();
  const auto dtype = f.find("dtype");
  const auto shape = f.find("shape");
  const auto offsets = f.find("data_offsets");
  if (dtype == f.end() || shape == f.end() || offsets == f.end() ||
      shape->second.kind_case() != Value::kListValue ||
      offsets->second.kind_case() != Value::kListValue ||
      offsets->second.list_value().values_size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors header: ", where, " needs dtype, shape and data_offsets [begin, end]"));
  }
  TensorInfo info;
  info.dtype_name = dtype->second.string_value();
  info.dtype = ConvertibleDType(info.dtype_name);
  const std::optional<size_t> element = ElementBytes(info.dtype_name);
  if (!element) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors header: ", where,
                                                   " has unknown dtype '", info.dtype_name, "'"));
  }
  uint64_t count = 1;
  for (const Value& dim : shape->second.list_value().values()) {
    absl::StatusOr<uint64_t> d = ToIndex(dim, where + " shape entry");
    if (!d.ok()) return d.status();
    info.shape.push_back(static_cast<int64_t>(*d));
    count *= *d;
  }
  const ListValue& range = offsets->second.list_value();
  absl::StatusOr<uint64_t> begin = ToIndex(range.values(0), where + " data_offsets[0]");
  absl::StatusOr<uint64_t> end = ToIndex(range.values(1), where + " data_offsets[1]");
  if (!begin.ok()) return begin.status();
  if (!end.ok()) return end.status();
  if (*begin > *end || *end > data_bytes || *end - *begin != count * *element) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "safetensors header: %s data_offsets [%d, %d] do not hold %d elements of %s "
        "within a data region of %d bytes",
        where, *begin, *end, count, info.dtype_name, data_bytes));
  }
  info.begin = *begin;
  info.end = *end;
  return info;
}

void ConvertToFloat(const TensorInfo& info, absl::Span<const uint8_t> bytes, float* out) {
  const size_t n = bytes.size() / DTypeBytes(*info.dtype);
  if (*info.dtype == DType::kFloat32) {
    std::memcpy(out, bytes.data(), bytes.size());
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    out[i] = *info.dtype == DType::kBFloat16 ? Bf16ToFloat(h) : HalfToFloat(h);
  }
}

std::string JsonQuote(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Writes `values` as `dtype` in chunks, so memory stays small for large tensors.
bool WriteConverted(std::FILE* f, DType dtype, absl::Span<const float> values) {
  if (dtype == DType::kFloat32) {
    return std::fwrite(values.data(), sizeof(float), values.size(), f) == values.size();
  }
  constexpr size_t kChunk = 1 << 16;
  std::vector<uint16_t> buffer(kChunk);
  for (size_t at = 0; at < values.size(); at += kChunk) {
    const size_t n = std::min(kChunk, values.size() - at);
    for (size_t i = 0; i < n; ++i) {
      buffer[i] = dtype == DType::kBFloat16 ? FloatToBf16(values[at + i])
                                            : FloatToHalf(values[at + i]);
    }
    if (std::fwrite(buffer.data(), sizeof(uint16_t), n, f) != n) return false;
  }
  return true;
}

}  // namespace

const char* SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "F32";
    case DType::kFloat16:
      return "F16";
    case DType::kBFloat16:
      return "BF16";
  }
  return "?";
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::Open(const std::string& path) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  const absl::Span<const uint8_t> bytes = file->bytes();
  uint64_t header_bytes = 0;
  if (bytes.size() >= 8) std::memcpy(&header_bytes, bytes.data(), 8);
  if (bytes.size() < 8 || header_bytes > kMaxHeaderBytes || header_bytes > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": safetensors header length ", header_bytes, " does not fit a file of ",
        bytes.size(), " bytes"));
  }
  const absl::string_view json(reinterpret_cast<const char*>(bytes.data()) + 8, header_bytes);
  SafetensorsReader reader(std::move(*file), 8 + header_bytes);
  if (absl::Status s = reader.ParseHeader(json); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return reader;
}

absl::Status SafetensorsReader::ParseHeader(absl::string_view json) {
  Struct header;
  const auto parsed = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &header);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header is not a JSON object: ", parsed.ToString()));
  }
  const size_t data_bytes = file_.bytes().size() - data_start_;
  for (const auto& [name, value] : header.fields()) {
    if (name == "__metadata__") {
      for (const auto& [key, v] : value.struct_value().fields()) {
        metadata_[key] = v.string_value();
      }
      continue;
    }
    absl::StatusOr<TensorInfo> info = ParseTensor(name, value, data_bytes);
    if (!info.ok()) return info.status();
    tensors_[name] = std::move(*info);
  }
  return absl::OkStatus();
}

absl::Span<const uint8_t> SafetensorsReader::RawBytes(const TensorInfo& info) const {
  return file_.bytes().subspan(data_start_ + info.begin, info.end - info.begin);
}

absl::StatusOr<std::vector<float>> SafetensorsReader::ReadFloat32(
    absl::string_view name, absl::Span<const int64_t> expected_shape) const {
  const auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("safetensors file ", file_.path(),
                                            " has no tensor '", name, "'"));
  }
  const TensorInfo& info = it->second;
  if (absl::MakeConstSpan(info.shape) != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has shape [", absl::StrJoin(info.shape, ", "), "]; expected [",
        absl::StrJoin(expected_shape, ", "), "]"));
  }
  if (!info.dtype) {
    return absl::UnimplementedError(absl::StrCat("tensor '", name, "' has dtype ",
                                                 info.dtype_name,
                                                 "; only F32, F16 and BF16 are converted"));
  }
  const absl::Span<const uint8_t> bytes = RawBytes(info);
  std::vector<float> out(bytes.size() / DTypeBytes(*info.dtype));
  ConvertToFloat(info, bytes, out.data());
  return out;
}

absl::Status SafetensorsWriter::Add(std::string name, DType dtype,
                                    std::vector<int64_t> shape,
                                    absl::Span<const float> values) {
  int64_t count = 1;
  for (const int64_t d : shape) count *= d;
  if (count != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape [",
                                                   absl::StrJoin(shape, ", "), "] but ",
                                                   values.size(), " values"));
  }
  for (const Entry& e : entries_) {
    if (e.name == name) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' added twice"));
    }
  }
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), values});
  return absl::OkStatus();
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

std::string SafetensorsWriter::HeaderJson() const {
  std::vector<std::string> items;
  if (!metadata_.empty()) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : metadata_) kv.push_back(JsonQuote(k) + ":" + JsonQuote(v));
    items.push_back(absl::StrCat("\"__metadata__\":{", absl::StrJoin(kv, ","), "}"));
  }
  size_t offset = 0;
  for (const Entry& e : entries_) {
    const size_t size = e.values.size() * DTypeBytes(e.dtype);
    items.push_back(absl::StrCat(JsonQuote(e.name), ":{\"dtype\":\"",
                                 SafetensorsDTypeName(e.dtype), "\",\"shape\":[",
                                 absl::StrJoin(e.shape, ","), "],\"data_offsets\":[", offset,
                                 ",", offset + size, "]}"));
    offset += size;
  }
  std::string json = absl::StrCat("{", absl::StrJoin(items, ","), "}");
  // Pad with spaces so the data region starts 8-byte aligned, as the reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  return json;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  const auto io_error = [&](const char* what) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot ", what, " ", tmp, ": ",
                                            std::strerror(errno)));
  };
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f) return io_error("create");
    const std::string json = HeaderJson();
    const uint64_t length = json.size();
    bool ok = std::fwrite(&length, sizeof(length), 1, f.get()) == 1 &&
              std::fwrite(json.data(), 1, json.size(), f.get()) == json.size();
    for (const Entry& e : entries_) ok = ok && WriteConverted(f.get(), e.dtype, e.values);
    if (!ok || std::fflush(f.get()) != 0) return io_error("write");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return io_error("rename");
  return absl::OkStatus();
}

}  // namespace freekv
