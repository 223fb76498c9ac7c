#include "client/ucx_regions.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "client/ucx_regions_child.h"
#include "gtest/gtest.h"
#include "transport/ucx_endpoint.h"
#include "transport/ucx_status.h"

namespace freekv {
namespace {

TEST(UcxRegionsTest, RegionsAreTheSizesAskedForPageAlignedWithKeysAndAnAddress) {
  auto regions = UcxRegions::Create(3 * 4096 + 100, 1 << 20);
  ASSERT_TRUE(regions.ok()) << regions.status();
  const UcxRegions& r = **regions;
  EXPECT_EQ(r.staging().size(), 3 * 4096 + 100u);
  EXPECT_EQ(r.offload().size(), 1u << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r.staging().data()) % 4096, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r.offload().data()) % 4096, 0u);
  EXPECT_FALSE(r.staging_rkey().empty());
  EXPECT_FALSE(r.offload_rkey().empty());
  EXPECT_NE(r.staging_rkey(), r.offload_rkey());
  EXPECT_FALSE(r.worker_address().empty());
  // All of both regions is the caller's to write.
  FillPseudoRandom(r.staging(), 1);
  FillPseudoRandom(r.offload(), 2);
}

TEST(UcxRegionsTest, ZeroSizesAreRefusedNamingTheRegion) {
  auto staging = UcxRegions::Create(0, 4096);
  EXPECT_EQ(staging.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(staging.status().message().find("staging_bytes"), absl::string_view::npos);
  auto offload = UcxRegions::Create(4096, 0);
  EXPECT_EQ(offload.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(offload.status().message().find("offload_bytes"), absl::string_view::npos);
}

TEST(UcxRegionsTest, IdleProgressThreadSleeps) {
  auto regions = UcxRegions::Create(1 << 20, 1 << 20);
  ASSERT_TRUE(regions.ok()) << regions.status();
  const absl::Duration before = (*regions)->progress_cpu_time();
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_LT((*regions)->progress_cpu_time() - before, absl::Milliseconds(25));
}

// Over tcp UCX emulates RMA with messages that the regions' progress thread must
// serve: a put and a get from another worker complete only if it does.
TEST(UcxRegionsTest, ProgressThreadServesRmaOverTcp) {
  auto regions = UcxRegions::Create(1 << 20, 1 << 20, {"tcp"});
  ASSERT_TRUE(regions.ok()) << regions.status();
  UcxRegions& r = **regions;
  FillPseudoRandom(r.offload(), 3);
  auto context = UcxContext::Create({"tcp"});
  ASSERT_TRUE(context.ok());
  auto engine = UcxEngine::Start(**context, "peer");
  ASSERT_TRUE(engine.ok());
  std::vector<std::byte> put(100000), got(50000);
  FillPseudoRandom(absl::MakeSpan(put), 4);
  const absl::Status status = (*engine)->Call([&]() -> absl::Status {
    UcxWorker& worker = (*engine)->worker();
    auto ep = UcxEndpoint::Connect(worker, r.worker_address());
    if (!ep.ok()) return ep.status();
    const uint64_t staging_base = reinterpret_cast<uint64_t>(r.staging().data());
    const uint64_t offload_base = reinterpret_cast<uint64_t>(r.offload().data());
    auto staging =
        UcxRemoteKey::Unpack(*ep, r.staging_rkey(), staging_base, r.staging().size());
    auto offload =
        UcxRemoteKey::Unpack(*ep, r.offload_rkey(), offload_base, r.offload().size());
    if (!staging.ok() || !offload.ok()) return absl::InternalError("rkey unpack");
    ucp_request_param_t param = {};
    ucs_status_ptr_t requests[] = {
        ucp_put_nbx(ep->get(), put.data(), put.size(), staging_base + 12345,
                    staging->get(), &param),
        ucp_get_nbx(ep->get(), got.data(), got.size(), offload_base + 777, offload->get(),
                    &param),
        ucp_ep_flush_nbx(ep->get(), &param)};
    absl::Status result;
    for (ucs_status_ptr_t request : requests) {
      if (UCS_PTR_IS_ERR(request)) result = UcxStatus(UCS_PTR_STATUS(request), "op");
      if (!UCS_PTR_IS_PTR(request)) continue;
      const absl::Time deadline = absl::Now() + absl::Seconds(20);
      while (ucp_request_check_status(request) == UCS_INPROGRESS &&
             absl::Now() < deadline) {
        worker.Progress();
      }
      if (ucp_request_check_status(request) != UCS_OK) {
        result = UcxStatus(ucp_request_check_status(request), "wait");
      }
      ucp_request_free(request);
    }
    staging->Reset();
    offload->Reset();
    return result;
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(r.staging().data() + 12345, put.data(), put.size()), 0);
  EXPECT_EQ(std::memcmp(got.data(), r.offload().data() + 777, got.size()), 0);
  EXPECT_GT(r.progress_cpu_time(), absl::ZeroDuration());
}

}  // namespace
}  // namespace freekv
