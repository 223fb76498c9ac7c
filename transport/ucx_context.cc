#include "transport/ucx_context.h"

#include "absl/strings/str_cat.h"
#include "transport/ucx_status.h"

namespace freekv {
namespace {

// Releases a ucp_config_t on every path out of Create.
struct ConfigDeleter {
  void operator()(ucp_config_t* config) const { ucp_config_release(config); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<UcxContext>> UcxContext::Create(
    const UcxContextOptions& options) {
  ucp_config_t* raw_config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &raw_config); s != UCS_OK) {
    return UcxStatus(s, "ucp_config_read");
  }
  std::unique_ptr<ucp_config_t, ConfigDeleter> config(raw_config);
  if (!options.transports.empty()) {
    if (ucs_status_t s =
            ucp_config_modify(config.get(), "TLS", options.transports.c_str());
        s != UCS_OK) {
      return UcxStatus(s, absl::StrCat("transports \"", options.transports, "\""));
    }
  }
  ucp_params_t params = {};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;
  ucp_context_h context = nullptr;
  if (ucs_status_t s = ucp_init(&params, config.get(), &context); s != UCS_OK) {
    return UcxStatus(s,
                     absl::StrCat("ucp_init (transports \"", options.transports, "\")"));
  }
  return std::unique_ptr<UcxContext>(new UcxContext(context));
}

UcxContext::~UcxContext() { ucp_cleanup(context_); }

}  // namespace freekv
