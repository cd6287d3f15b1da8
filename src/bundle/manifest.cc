#include "bundle/manifest.h"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <span>
#include <utility>

#include "bundle/reason.h"

namespace outpost::bundle {
namespace {

using json = nlohmann::json;

// Manifests are small, flat documents; deep nesting only comes from hostile
// input and would make later recursive walks (dump, flatten) deep too.
constexpr int kMaxJsonDepth = 32;
constexpr size_t kMaxNameLength = 128;
constexpr size_t kMaxComponentLength = 255;
constexpr size_t kMaxPathLength = 1024;
constexpr size_t kMaxRank = 16;

constexpr std::string_view kNumericTypes[] = {"UINT8", "UINT16", "UINT32", "UINT64",
                                              "INT8",  "INT16",  "INT32",  "INT64",
                                              "FP16",  "FP32",   "FP64"};

struct DepthExceeded {};

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '+' || c == '@' || c == '=' || c == ',';
}

// A release or model name: 1..128 name characters, not "." or "..".
bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), IsNameChar);
}

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool IsRfc3339Utc(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SSZ
  if (s.size() != 20) return false;
  static constexpr std::string_view kPattern = "dddd-dd-ddTdd:dd:ddZ";
  for (size_t i = 0; i < s.size(); ++i) {
    if (kPattern[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != kPattern[i]) return false;
  }
  auto number = [&](size_t pos, size_t len) {
    int v = 0;
    for (size_t i = pos; i < pos + len; ++i) v = v * 10 + (s[i] - '0');
    return v;
  };
  int month = number(5, 2), day = number(8, 2), hour = number(11, 2), minute = number(14, 2),
      second = number(17, 2);
  return month >= 1 && month <= 12 && day >= 1 && day <= 31 && hour <= 23 && minute <= 59 &&
         second <= 60;
}

bool Contains(std::span<const std::string_view> list, std::string_view value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

std::string JoinList(std::span<const std::string_view> list) {
  std::string out;
  for (std::string_view item : list) StrAppend(&out, out.empty() ? "" : ", ", item);
  return out;
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view source, Reason reason) {
  json::parser_callback_t limit_depth = [](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) throw DepthExceeded{};
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth);
  } catch (const DepthExceeded&) {
    return Refuse(reason, StrCat(source, ": JSON nested deeper than ", kMaxJsonDepth, " levels"));
  } catch (const json::exception& e) {
    return Refuse(reason, StrCat(source, ": not valid JSON: ", e.what()));
  }
}

std::string FieldName(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : StrCat(parent, ".", key);
}

std::string IndexName(std::string_view parent, size_t index) {
  return StrCat(parent, "[", index, "]");
}

// Reads typed fields, naming the field in every error.
class FieldReader {
 public:
  FieldReader(std::string_view source, Reason reason) : source_(source), reason_(reason) {}

  absl::Status Fail(std::string_view field, std::string_view problem) const {
    if (field.empty()) return Refuse(reason_, StrCat(source_, ": ", problem));
    return Refuse(reason_, StrCat(source_, ": field '", field, "': ", problem));
  }

  // nullptr when absent and not required.
  absl::StatusOr<const json*> Member(const json& object, std::string_view key,
                                     std::string_view field, bool required) const {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) return Refuse(reason_, StrCat(source_, ": field '", field, "' is missing"));
      return nullptr;
    }
    return &*it;
  }

  absl::StatusOr<const json*> Typed(const json& object, std::string_view key,
                                    std::string_view parent, bool required, json::value_t type,
                                    std::string_view type_name) const {
    std::string field = FieldName(parent, key);
    ASSIGN_OR_RETURN(const json* value, Member(object, key, field, required));
    if (value == nullptr) return nullptr;
    bool ok = value->type() == type ||
              (type == json::value_t::number_float && value->is_number()) ||
              (type == json::value_t::number_unsigned && value->is_number_unsigned());
    if (!ok) return Fail(field, StrCat("must be ", type_name, ", got ", value->type_name()));
    return value;
  }

  absl::StatusOr<const json*> Object(const json& object, std::string_view key,
                                     std::string_view parent, bool required) const {
    return Typed(object, key, parent, required, json::value_t::object, "an object");
  }
  absl::StatusOr<const json*> Array(const json& object, std::string_view key,
                                    std::string_view parent, bool required) const {
    return Typed(object, key, parent, required, json::value_t::array, "an array");
  }

  absl::StatusOr<std::optional<std::string>> String(const json& object, std::string_view key,
                                                    std::string_view parent, bool required) const {
    ASSIGN_OR_RETURN(const json* value,
                     Typed(object, key, parent, required, json::value_t::string, "a string"));
    if (value == nullptr) return std::nullopt;
    return value->get<std::string>();
  }

  absl::StatusOr<std::optional<uint64_t>> Unsigned(const json& object, std::string_view key,
                                                   std::string_view parent, bool required) const {
    std::string field = FieldName(parent, key);
    ASSIGN_OR_RETURN(const json* value, Member(object, key, field, required));
    if (value == nullptr) return std::nullopt;
    if (value->is_number_unsigned()) return value->get<uint64_t>();
    if (value->is_number_integer() && value->get<int64_t>() >= 0) {
      return static_cast<uint64_t>(value->get<int64_t>());
    }
    return Fail(field, StrCat("must be a non-negative integer, got ", value->dump()));
  }

  absl::StatusOr<std::optional<double>> Number(const json& object, std::string_view key,
                                               std::string_view parent, bool required) const {
    ASSIGN_OR_RETURN(const json* value,
                     Typed(object, key, parent, required, json::value_t::number_float, "a number"));
    if (value == nullptr) return std::nullopt;
    double number = value->get<double>();
    if (!std::isfinite(number)) return Fail(FieldName(parent, key), "must be finite");
    return number;
  }

  absl::StatusOr<std::optional<bool>> Bool(const json& object, std::string_view key,
                                           std::string_view parent, bool required) const {
    ASSIGN_OR_RETURN(const json* value,
                     Typed(object, key, parent, required, json::value_t::boolean, "true or false"));
    if (value == nullptr) return std::nullopt;
    return value->get<bool>();
  }

  Reason reason() const { return reason_; }

 private:
  std::string_view source_;
  Reason reason_;
};

// Flattens `data` (flat or nested arrays) into scalars, checking each
// against `datatype`. Appends to `values` for numeric/BOOL types.
absl::Status FlattenTensorData(const FieldReader& reader, const json& data, std::string_view field,
                               std::string_view datatype, int64_t* count,
                               std::vector<double>* values) {
  if (data.is_array()) {
    for (size_t i = 0; i < data.size(); ++i) {
      RETURN_IF_ERROR(
          FlattenTensorData(reader, data[i], IndexName(field, i), datatype, count, values));
    }
    return absl::OkStatus();
  }
  if (datatype == "BYTES") {
    if (!data.is_string()) return reader.Fail(field, "BYTES elements must be strings");
  } else if (datatype == "BOOL") {
    if (!data.is_boolean()) return reader.Fail(field, "BOOL elements must be true or false");
    if (values != nullptr) values->push_back(data.get<bool>() ? 1.0 : 0.0);
  } else {
    bool integer_type = datatype.find("INT") != std::string_view::npos;
    if (!data.is_number() || (integer_type && !data.is_number_integer())) {
      return reader.Fail(
          field, StrCat(datatype, " elements must be ", integer_type ? "integers" : "numbers",
                        ", got ", data.dump()));
    }
    if (data.is_number_float() && !std::isfinite(data.get<double>())) {
      return reader.Fail(field, "elements must be finite");
    }
    if (datatype.front() == 'U' && data.is_number_integer() && !data.is_number_unsigned() &&
        data.get<int64_t>() < 0) {
      return reader.Fail(field, StrCat(datatype, " elements must be >= 0"));
    }
    if (values != nullptr) values->push_back(data.get<double>());
  }
  ++*count;
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ParseTensor(const FieldReader& reader, const json& value,
                                   std::string_view field, std::vector<double>* values) {
  if (!value.is_object()) return reader.Fail(field, "must be an object (a KServe v2 tensor)");
  Tensor tensor;
  ASSIGN_OR_RETURN(auto name, reader.String(value, "name", field, true));
  if (name->empty()) return reader.Fail(FieldName(field, "name"), "must not be empty");
  tensor.name = std::move(*name);
  ASSIGN_OR_RETURN(auto datatype, reader.String(value, "datatype", field, true));
  if (*datatype != "BOOL" && *datatype != "BYTES" && !Contains(kNumericTypes, *datatype)) {
    return reader.Fail(FieldName(field, "datatype"),
                       StrCat("unknown datatype '", *datatype, "'; one of BOOL, ",
                              JoinList(kNumericTypes), ", BYTES"));
  }
  tensor.datatype = std::move(*datatype);
  ASSIGN_OR_RETURN(const json* shape, reader.Array(value, "shape", field, true));
  std::string shape_field = FieldName(field, "shape");
  if (shape->size() > kMaxRank) {
    return reader.Fail(shape_field, StrCat("more than ", kMaxRank, " dimensions"));
  }
  int64_t expected_count = 1;
  for (size_t i = 0; i < shape->size(); ++i) {
    const json& dim = (*shape)[i];
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      return reader.Fail(IndexName(shape_field, i),
                         StrCat("dimensions must be integers >= 0, got ", dim.dump()));
    }
    int64_t d = dim.get<int64_t>();
    if (d != 0 && expected_count > std::numeric_limits<int32_t>::max() / d) {
      return reader.Fail(shape_field, "too many elements");
    }
    expected_count *= d;
    tensor.shape.push_back(d);
  }
  ASSIGN_OR_RETURN(const json* data, reader.Array(value, "data", field, true));
  int64_t count = 0;
  RETURN_IF_ERROR(
      FlattenTensorData(reader, *data, FieldName(field, "data"), tensor.datatype, &count, values));
  if (count != expected_count) {
    return reader.Fail(FieldName(field, "data"),
                       StrCat("has ", count, " elements, shape needs ", expected_count));
  }
  tensor.data = *data;
  return tensor;
}

absl::StatusOr<std::vector<SelfTestCase>> ParseSelfTestArray(const FieldReader& reader,
                                                             const json& array,
                                                             std::string_view field) {
  std::vector<SelfTestCase> cases;
  for (size_t i = 0; i < array.size(); ++i) {
    std::string where = IndexName(field, i);
    const json& item = array[i];
    if (!item.is_object()) return reader.Fail(where, "must be an object");
    SelfTestCase test;
    ASSIGN_OR_RETURN(auto model, reader.String(item, "model", where, true));
    if (!IsValidName(*model)) {
      return reader.Fail(FieldName(where, "model"), StrCat("invalid model name '", *model, "'"));
    }
    test.model = std::move(*model);
    ASSIGN_OR_RETURN(auto version, reader.String(item, "version", where, false));
    if (version.has_value()) {
      if (version->empty() || version->size() > 19 ||
          !std::all_of(version->begin(), version->end(),
                       [](char c) { return c >= '0' && c <= '9'; })) {
        return reader.Fail(FieldName(where, "version"),
                           StrCat("must be a version number like \"1\", got '", *version, "'"));
      }
      test.version = std::move(*version);
    }
    ASSIGN_OR_RETURN(auto name, reader.String(item, "name", where, false));
    test.name = name.has_value() ? std::move(*name) : StrCat(test.model, "#", i);
    if (test.name.empty()) return reader.Fail(FieldName(where, "name"), "must not be empty");

    ASSIGN_OR_RETURN(const json* inputs, reader.Array(item, "inputs", where, true));
    std::string inputs_field = FieldName(where, "inputs");
    if (inputs->empty()) return reader.Fail(inputs_field, "must not be empty");
    std::set<std::string> names;
    for (size_t j = 0; j < inputs->size(); ++j) {
      ASSIGN_OR_RETURN(Tensor tensor,
                       ParseTensor(reader, (*inputs)[j], IndexName(inputs_field, j), nullptr));
      if (!names.insert(tensor.name).second) {
        return reader.Fail(IndexName(inputs_field, j),
                           StrCat("input '", tensor.name, "' given twice"));
      }
      test.inputs.push_back(std::move(tensor));
    }

    ASSIGN_OR_RETURN(const json* outputs, reader.Array(item, "expected_outputs", where, true));
    std::string outputs_field = FieldName(where, "expected_outputs");
    if (outputs->empty()) return reader.Fail(outputs_field, "must not be empty");
    names.clear();
    for (size_t j = 0; j < outputs->size(); ++j) {
      std::string out_field = IndexName(outputs_field, j);
      const json& output = (*outputs)[j];
      if (output.is_object() && output.contains("datatype") && output["datatype"] == "BYTES") {
        return reader.Fail(FieldName(out_field, "datatype"),
                           "BYTES outputs cannot be compared; check a numeric output");
      }
      ExpectedOutput expected;
      ASSIGN_OR_RETURN(expected.tensor, ParseTensor(reader, output, out_field, &expected.values));
      if (!names.insert(expected.tensor.name).second) {
        return reader.Fail(out_field, StrCat("output '", expected.tensor.name, "' given twice"));
      }
      ASSIGN_OR_RETURN(auto abs_tol, reader.Number(output, "absolute_tolerance", out_field, false));
      ASSIGN_OR_RETURN(auto rel_tol, reader.Number(output, "relative_tolerance", out_field, false));
      if (abs_tol.has_value()) expected.absolute_tolerance = *abs_tol;
      if (rel_tol.has_value()) expected.relative_tolerance = *rel_tol;
      if (expected.absolute_tolerance < 0) {
        return reader.Fail(FieldName(out_field, "absolute_tolerance"), "must be >= 0");
      }
      if (expected.relative_tolerance < 0) {
        return reader.Fail(FieldName(out_field, "relative_tolerance"), "must be >= 0");
      }
      test.expected_outputs.push_back(std::move(expected));
    }
    cases.push_back(std::move(test));
  }
  return cases;
}

absl::StatusOr<std::map<std::string, OutputBaseline>> ParseBaselineObject(const FieldReader& reader,
                                                                          const json& object,
                                                                          std::string_view field) {
  std::map<std::string, OutputBaseline> baselines;
  for (auto it = object.begin(); it != object.end(); ++it) {
    std::string where = FieldName(field, it.key());
    if (!IsValidName(it.key())) {
      return reader.Fail(where, StrCat("invalid model name '", it.key(), "'"));
    }
    const json& item = it.value();
    if (!item.is_object()) return reader.Fail(where, "must be an object");
    OutputBaseline baseline;
    ASSIGN_OR_RETURN(auto output, reader.String(item, "output", where, true));
    if (output->empty()) return reader.Fail(FieldName(where, "output"), "must not be empty");
    baseline.output = std::move(*output);

    ASSIGN_OR_RETURN(const json* edges, reader.Array(item, "bin_edges", where, true));
    std::string edges_field = FieldName(where, "bin_edges");
    if (edges->size() < 2) return reader.Fail(edges_field, "needs at least 2 edges");
    for (size_t i = 0; i < edges->size(); ++i) {
      const json& edge = (*edges)[i];
      if (!edge.is_number() || !std::isfinite(edge.get<double>())) {
        return reader.Fail(IndexName(edges_field, i), "must be a finite number");
      }
      double value = edge.get<double>();
      if (!baseline.bin_edges.empty() && value <= baseline.bin_edges.back()) {
        return reader.Fail(IndexName(edges_field, i), "edges must be strictly increasing");
      }
      baseline.bin_edges.push_back(value);
    }

    ASSIGN_OR_RETURN(const json* proportions, reader.Array(item, "proportions", where, true));
    std::string prop_field = FieldName(where, "proportions");
    if (proportions->size() != baseline.bin_edges.size() - 1) {
      return reader.Fail(prop_field, StrCat("needs ", baseline.bin_edges.size() - 1,
                                            " values (one per bin), got ", proportions->size()));
    }
    double sum = 0;
    for (size_t i = 0; i < proportions->size(); ++i) {
      const json& p = (*proportions)[i];
      if (!p.is_number() || !std::isfinite(p.get<double>()) || p.get<double>() < 0) {
        return reader.Fail(IndexName(prop_field, i), "must be a number >= 0");
      }
      sum += p.get<double>();
      baseline.proportions.push_back(p.get<double>());
    }
    if (std::fabs(sum - 1.0) > 1e-6) {
      return reader.Fail(prop_field, StrCat("must sum to 1, sum is ", sum));
    }
    ASSIGN_OR_RETURN(auto samples, reader.Unsigned(item, "samples", where, false));
    baseline.samples = samples.value_or(0);
    baselines.emplace(it.key(), std::move(baseline));
  }
  return baselines;
}

json TensorToJson(const Tensor& tensor) {
  return json{{"name", tensor.name},
              {"datatype", tensor.datatype},
              {"shape", tensor.shape},
              {"data", tensor.data}};
}

bool HasModelFiles(const Manifest& manifest, std::string_view model) {
  std::string prefix = StrCat("models/", model, "/");
  return std::any_of(manifest.files.begin(), manifest.files.end(),
                     [&](const FileEntry& file) { return file.path.starts_with(prefix); });
}

}  // namespace

uint64_t Manifest::TotalSize() const {
  uint64_t total = 0;
  for (const FileEntry& file : files) {
    if (file.size > std::numeric_limits<uint64_t>::max() - total) {
      return std::numeric_limits<uint64_t>::max();
    }
    total += file.size;
  }
  return total;
}

const FileEntry* Manifest::FindFile(std::string_view path) const {
  for (const FileEntry& file : files) {
    if (file.path == path) return &file;
  }
  return nullptr;
}

absl::Status ValidateBundlePath(std::string_view path) {
  if (path.empty()) return Refuse(Reason::kInvalidPath, "empty path");
  std::string quoted = StrCat("path '", path, "'");
  if (path.front() == '/') {
    return Refuse(Reason::kAbsolutePath, StrCat(quoted, " is absolute; paths must be relative"));
  }
  if (path.size() > kMaxPathLength) {
    return Refuse(Reason::kInvalidPath,
                  StrCat("path '", path.substr(0, 64), "...' is longer than ", kMaxPathLength));
  }
  // ".." first so that "a/../b" reports traversal, not a character problem.
  size_t start = 0;
  std::vector<std::string_view> components;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view component = path.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    components.push_back(component);
    if (component == "..") {
      return Refuse(Reason::kPathTraversal, StrCat(quoted, " has a '..' component"));
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  for (std::string_view component : components) {
    if (component.empty()) {
      return Refuse(Reason::kInvalidPath,
                    StrCat(quoted, " has an empty component ('//' or a trailing '/')"));
    }
    if (component == ".")
      return Refuse(Reason::kInvalidPath, StrCat(quoted, " has a '.' component"));
    if (component.size() > kMaxComponentLength) {
      return Refuse(Reason::kInvalidPath,
                    StrCat(quoted, " has a component longer than ", kMaxComponentLength));
    }
    for (char c : component) {
      if (!IsNameChar(c)) {
        unsigned char u = static_cast<unsigned char>(c);
        std::string shown = (u >= 0x20 && u < 0x7f) ? StrCat("'", c, "'") : StrCat("byte ", int{u});
        return Refuse(
            Reason::kInvalidPath,
            StrCat(quoted, " has ", shown, "; path components use only A-Z a-z 0-9 . _ - + @ = ,"));
      }
    }
  }
  bool rooted = std::any_of(std::begin(kPayloadRoots), std::end(kPayloadRoots),
                            [&](std::string_view root) { return path.starts_with(root); });
  if (!rooted) {
    return Refuse(Reason::kInvalidPath, StrCat(quoted, " is not under ", JoinList(kPayloadRoots)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Manifest> ParseManifest(std::string_view text) {
  constexpr std::string_view kSource = "manifest.json";
  FieldReader reader(kSource, Reason::kMalformedManifest);
  ASSIGN_OR_RETURN(json root, ParseJson(text, kSource, Reason::kMalformedManifest));
  if (!root.is_object()) return reader.Fail("", "the top level must be a JSON object");
  Manifest manifest;

  ASSIGN_OR_RETURN(auto format, reader.Unsigned(root, "format_version", "", true));
  if (*format != static_cast<uint64_t>(kFormatVersion)) {
    return reader.Fail("format_version", StrCat("unsupported version ", *format,
                                                "; this build reads version ", kFormatVersion));
  }
  manifest.format_version = kFormatVersion;

  ASSIGN_OR_RETURN(auto release, reader.String(root, "release", "", true));
  if (!IsValidName(*release)) {
    return reader.Fail(
        "release",
        StrCat("'", *release, "' is not 1..128 characters of A-Z a-z 0-9 . _ - + @ = ,"));
  }
  manifest.release = std::move(*release);

  ASSIGN_OR_RETURN(auto sequence, reader.Unsigned(root, "sequence", "", true));
  if (*sequence == 0) return reader.Fail("sequence", "must be >= 1");
  manifest.sequence = *sequence;

  ASSIGN_OR_RETURN(auto created, reader.String(root, "created", "", true));
  if (!IsRfc3339Utc(*created)) {
    return reader.Fail("created",
                       StrCat("must be UTC time like 2024-06-01T12:00:00Z, got '", *created, "'"));
  }
  manifest.created = std::move(*created);

  ASSIGN_OR_RETURN(const json* target, reader.Object(root, "target", "", true));
  ASSIGN_OR_RETURN(auto arch, reader.String(*target, "arch", "target", true));
  if (!Contains(kArchitectures, *arch)) {
    return reader.Fail("target.arch",
                       StrCat("unknown '", *arch, "'; one of ", JoinList(kArchitectures)));
  }
  manifest.target.arch = std::move(*arch);
  ASSIGN_OR_RETURN(auto accelerator, reader.String(*target, "accelerator", "target", true));
  if (!Contains(kAccelerators, *accelerator)) {
    return reader.Fail("target.accelerator",
                       StrCat("unknown '", *accelerator, "'; one of ", JoinList(kAccelerators)));
  }
  manifest.target.accelerator = std::move(*accelerator);
  ASSIGN_OR_RETURN(auto min_agent, reader.String(*target, "min_agent_version", "target", false));
  if (min_agent.has_value()) {
    if (!CompareVersions(*min_agent, "0").ok()) {
      return reader.Fail("target.min_agent_version",
                         StrCat("must be MAJOR.MINOR.PATCH, got '", *min_agent, "'"));
    }
    manifest.target.min_agent_version = std::move(*min_agent);
  }

  ASSIGN_OR_RETURN(const json* files, reader.Array(root, "files", "", true));
  if (files->empty()) return reader.Fail("files", "must name at least one file");
  std::set<std::string_view> paths;
  manifest.files.reserve(files->size());
  for (size_t i = 0; i < files->size(); ++i) {
    std::string where = IndexName("files", i);
    const json& item = (*files)[i];
    if (!item.is_object()) return reader.Fail(where, "must be an object");
    FileEntry file;
    ASSIGN_OR_RETURN(auto path, reader.String(item, "path", where, true));
    absl::Status path_status = ValidateBundlePath(*path);
    if (!path_status.ok()) {
      return Annotate(path_status, StrCat(kSource, ": field '", where, ".path'"));
    }
    file.path = std::move(*path);
    ASSIGN_OR_RETURN(auto size, reader.Unsigned(item, "size", where, true));
    file.size = *size;
    ASSIGN_OR_RETURN(auto sha, reader.String(item, "sha256", where, true));
    if (sha->size() != 64 || !IsLowerHex(*sha)) {
      return reader.Fail(FieldName(where, "sha256"),
                         StrCat("must be 64 lowercase hex characters, got '", *sha, "'"));
    }
    file.sha256 = std::move(*sha);
    ASSIGN_OR_RETURN(auto executable, reader.Bool(item, "executable", where, false));
    file.executable = executable.value_or(false);
    manifest.files.push_back(std::move(file));
  }
  for (const FileEntry& file : manifest.files) {
    if (!paths.insert(file.path).second) {
      return Refuse(Reason::kDuplicateName,
                    StrCat(kSource, ": file '", file.path, "' is listed twice"));
    }
  }
  // A file may not also be a directory of another file ("models/a" and
  // "models/a/1/model.onnx"): unpacking could not create both.
  for (const FileEntry& file : manifest.files) {
    for (size_t slash = file.path.find('/'); slash != std::string::npos;
         slash = file.path.find('/', slash + 1)) {
      std::string_view dir = std::string_view(file.path).substr(0, slash);
      if (paths.count(dir) != 0) {
        return Refuse(
            Reason::kDuplicateName,
            StrCat(kSource, ": '", dir, "' is both a file and the directory of '", file.path, "'"));
      }
    }
  }

  ASSIGN_OR_RETURN(const json* self_test, reader.Array(root, "self_test", "", false));
  if (self_test != nullptr) {
    ASSIGN_OR_RETURN(manifest.self_tests, ParseSelfTestArray(reader, *self_test, "self_test"));
    for (size_t i = 0; i < manifest.self_tests.size(); ++i) {
      if (!HasModelFiles(manifest, manifest.self_tests[i].model)) {
        return reader.Fail(StrCat("self_test[", i, "].model"),
                           StrCat("no files under models/", manifest.self_tests[i].model, "/"));
      }
    }
  }
  ASSIGN_OR_RETURN(const json* baseline, reader.Object(root, "baseline", "", false));
  if (baseline != nullptr) {
    ASSIGN_OR_RETURN(manifest.baselines, ParseBaselineObject(reader, *baseline, "baseline"));
    for (const auto& [model, unused] : manifest.baselines) {
      if (!HasModelFiles(manifest, model)) {
        return reader.Fail(StrCat("baseline.", model),
                           StrCat("no files under models/", model, "/"));
      }
    }
  }
  return manifest;
}

std::string SerializeManifest(const Manifest& manifest) {
  json target{{"arch", manifest.target.arch}, {"accelerator", manifest.target.accelerator}};
  if (!manifest.target.min_agent_version.empty()) {
    target["min_agent_version"] = manifest.target.min_agent_version;
  }
  json files = json::array();
  for (const FileEntry& file : manifest.files) {
    json entry{{"path", file.path}, {"size", file.size}, {"sha256", file.sha256}};
    if (file.executable) entry["executable"] = true;
    files.push_back(std::move(entry));
  }
  json root{{"format_version", manifest.format_version},
            {"release", manifest.release},
            {"sequence", manifest.sequence},
            {"created", manifest.created},
            {"target", std::move(target)},
            {"files", std::move(files)}};
  if (!manifest.self_tests.empty()) {
    json cases = json::array();
    for (const SelfTestCase& test : manifest.self_tests) {
      json item{{"name", test.name}, {"model", test.model}};
      if (!test.version.empty()) item["version"] = test.version;
      json inputs = json::array();
      for (const Tensor& tensor : test.inputs) inputs.push_back(TensorToJson(tensor));
      json outputs = json::array();
      for (const ExpectedOutput& expected : test.expected_outputs) {
        json output = TensorToJson(expected.tensor);
        output["absolute_tolerance"] = expected.absolute_tolerance;
        output["relative_tolerance"] = expected.relative_tolerance;
        outputs.push_back(std::move(output));
      }
      item["inputs"] = std::move(inputs);
      item["expected_outputs"] = std::move(outputs);
      cases.push_back(std::move(item));
    }
    root["self_test"] = std::move(cases);
  }
  if (!manifest.baselines.empty()) {
    json baselines = json::object();
    for (const auto& [model, baseline] : manifest.baselines) {
      json item{{"output", baseline.output},
                {"bin_edges", baseline.bin_edges},
                {"proportions", baseline.proportions}};
      if (baseline.samples != 0) item["samples"] = baseline.samples;
      baselines[model] = std::move(item);
    }
    root["baseline"] = std::move(baselines);
  }
  return root.dump(2) + "\n";
}

absl::StatusOr<std::vector<SelfTestCase>> ParseSelfTests(std::string_view text,
                                                         std::string_view source) {
  FieldReader reader(source, Reason::kNone);
  ASSIGN_OR_RETURN(json root, ParseJson(text, source, Reason::kNone));
  if (!root.is_array()) return reader.Fail("", "must be a JSON array of self-test cases");
  return ParseSelfTestArray(reader, root, "");
}

absl::StatusOr<std::map<std::string, OutputBaseline>> ParseBaselines(std::string_view text,
                                                                     std::string_view source) {
  FieldReader reader(source, Reason::kNone);
  ASSIGN_OR_RETURN(json root, ParseJson(text, source, Reason::kNone));
  if (!root.is_object()) return reader.Fail("", "must be a JSON object keyed by model name");
  return ParseBaselineObject(reader, root, "");
}

absl::Status CompareOutput(const ExpectedOutput& expected, const std::vector<double>& actual) {
  const std::string& name = expected.tensor.name;
  if (actual.size() != expected.values.size()) {
    return absl::InvalidArgumentError(StrCat("output '", name, "': ", actual.size(),
                                             " elements, expected ", expected.values.size()));
  }
  for (size_t i = 0; i < actual.size(); ++i) {
    double want = expected.values[i];
    double diff = std::fabs(actual[i] - want);
    double allowed = expected.absolute_tolerance + expected.relative_tolerance * std::fabs(want);
    if (!(diff <= allowed)) {  // also catches NaN
      return absl::InvalidArgumentError(StrCat("output '", name, "' element ", i, ": got ",
                                               actual[i], ", expected ", want, " (difference ",
                                               diff, " > allowed ", allowed, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> CompareVersions(std::string_view a, std::string_view b) {
  auto parse = [](std::string_view text) -> std::optional<std::array<uint64_t, 3>> {
    size_t end = text.find_first_of("-+");
    std::string_view core = text.substr(0, end);
    std::array<uint64_t, 3> parts = {0, 0, 0};
    size_t index = 0;
    size_t start = 0;
    while (true) {
      if (index >= parts.size()) return std::nullopt;
      size_t dot = core.find('.', start);
      std::string_view part = core.substr(start, dot == std::string_view::npos ? dot : dot - start);
      if (part.empty() || part.size() > 9 ||
          !std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return std::nullopt;
      }
      for (char c : part) parts[index] = parts[index] * 10 + static_cast<uint64_t>(c - '0');
      ++index;
      if (dot == std::string_view::npos) break;
      start = dot + 1;
    }
    return parts;
  };
  auto pa = parse(a);
  if (!pa)
    return absl::InvalidArgumentError(StrCat("'", a, "' is not a MAJOR.MINOR.PATCH version"));
  auto pb = parse(b);
  if (!pb)
    return absl::InvalidArgumentError(StrCat("'", b, "' is not a MAJOR.MINOR.PATCH version"));
  if (*pa < *pb) return -1;
  if (*pb < *pa) return 1;
  return 0;
}

std::string FormatRfc3339(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace outpost::bundle
