// The wrappers over real UCX, two workers in one process: a target engine that only
// progresses (as a worker process's regions do) and an initiator engine that connects,
// unpacks the target's rkey and puts and gets.
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/random_bytes.h"
#include "gtest/gtest.h"
#include "transport/ucx_context.h"
#include "transport/ucx_endpoint.h"
#include "transport/ucx_engine.h"
#include "transport/ucx_memory.h"
#include "transport/ucx_status.h"

namespace freekv {
namespace {

// Waits for one UCX request by progressing `worker`; from a job, never a callback.
absl::Status Wait(UcxWorker& worker, ucs_status_ptr_t request, const char* what) {
  if (request == nullptr) return absl::OkStatus();
  if (UCS_PTR_IS_ERR(request)) return UcxStatus(UCS_PTR_STATUS(request), what);
  while (ucp_request_check_status(request) == UCS_INPROGRESS) worker.Progress();
  const ucs_status_t status = ucp_request_check_status(request);
  ucp_request_free(request);
  return UcxStatus(status, what);
}

TEST(UcxMemoryTest, AllocatesPageAlignedMemoryWithAnRkey) {
  absl::StatusOr<std::unique_ptr<UcxContext>> context = UcxContext::Create();
  ASSERT_TRUE(context.ok()) << context.status();
  absl::StatusOr<UcxMemory> memory = UcxMemory::Allocate(**context, 100000);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_GE(memory->size(), 100000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(memory->data()) % 4096, 0u);
  std::memset(memory->data(), 0xa5, memory->size());  // writable, all of it
  absl::StatusOr<std::string> rkey = memory->PackRkey();
  ASSERT_TRUE(rkey.ok()) << rkey.status();
  EXPECT_FALSE(rkey->empty());

  UcxMemory moved = *std::move(memory);
  EXPECT_GE(moved.size(), 100000u);
  EXPECT_EQ(memory->data(), nullptr);  // NOLINT: moved-from state is defined
}

TEST(UcxMemoryTest, RefusesEmptyMappings) {
  absl::StatusOr<std::unique_ptr<UcxContext>> context = UcxContext::Create();
  ASSERT_TRUE(context.ok()) << context.status();
  EXPECT_EQ(UcxMemory::Allocate(**context, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::byte> buffer(64);
  EXPECT_EQ(UcxMemory::Register(**context, nullptr, 64).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UcxMemory::Register(**context, buffer.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UcxContextTest, UnknownTransportIsAnError) {
  EXPECT_FALSE(UcxContext::Create({"no_such_transport"}).ok());
}

class UcxRmaTest : public ::testing::TestWithParam<std::string> {};

TEST_P(UcxRmaTest, PutAndGetBetweenTwoWorkers) {
  const UcxContextOptions options{GetParam()};
  auto target_context = UcxContext::Create(options);
  auto initiator_context = UcxContext::Create(options);
  ASSERT_TRUE(target_context.ok()) << target_context.status();
  ASSERT_TRUE(initiator_context.ok()) << initiator_context.status();
  auto target = UcxEngine::Start(**target_context, "target");
  auto initiator = UcxEngine::Start(**initiator_context, "initiator");
  ASSERT_TRUE(target.ok() && initiator.ok());
  absl::StatusOr<UcxMemory> remote = UcxMemory::Allocate(**target_context, 1 << 20);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const std::vector<std::byte> original = RandomBytes(remote->size(), 1);
  std::memcpy(remote->data(), original.data(), original.size());
  absl::StatusOr<std::string> rkey = remote->PackRkey();
  ASSERT_TRUE(rkey.ok());

  std::vector<std::byte> put_bytes = RandomBytes(65536, 2);
  std::vector<std::byte> got(65536 + 4096);
  const uint64_t base = reinterpret_cast<uint64_t>(remote->data());
  std::string lanes;
  const absl::Status status = (*initiator)->Call([&]() -> absl::Status {
    UcxWorker& worker = (*initiator)->worker();
    absl::StatusOr<UcxEndpoint> ep =
        UcxEndpoint::Connect(worker, (*target)->worker_address());
    if (!ep.ok()) return ep.status();
    absl::StatusOr<UcxRemoteKey> key =
        UcxRemoteKey::Unpack(*ep, *rkey, base, remote->size());
    if (!key.ok()) return key.status();
    lanes = ep->Describe();
    ucp_request_param_t param = {};
    absl::Status s = Wait(worker,
                          ucp_put_nbx(ep->get(), put_bytes.data(), put_bytes.size(),
                                      base + 8192, key->get(), &param),
                          "put");
    if (s.ok()) s = Wait(worker, ucp_ep_flush_nbx(ep->get(), &param), "flush");
    // Read back the put bytes and 4 KiB of untouched memory after them.
    if (s.ok()) {
      s = Wait(
          worker,
          ucp_get_nbx(ep->get(), got.data(), got.size(), base + 8192, key->get(), &param),
          "get");
    }
    key->Reset();  // before the endpoint closes
    return s;
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(remote->data() + 8192, put_bytes.data(), put_bytes.size()), 0);
  EXPECT_EQ(std::memcmp(remote->data(), original.data(), 8192), 0);  // before: intact
  EXPECT_EQ(std::memcmp(got.data(), put_bytes.data(), put_bytes.size()), 0);
  EXPECT_EQ(std::memcmp(got.data() + 65536, original.data() + 8192 + 65536, 4096), 0);
  if (GetParam() == "tcp") EXPECT_NE(lanes.find("tcp"), std::string::npos) << lanes;
  std::cerr << "transport " << (GetParam().empty() ? "(UCX default)" : GetParam())
            << " lanes:\n"
            << lanes;
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxRmaTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return info.param.empty() ? std::string("Default")
                                                     : info.param;
                         });

// UCX 1.13 aborts the process on some malformed blobs; these must come back as errors.
TEST(UcxEndpointTest, MalformedAddressesAndRkeysAreRefused) {
  auto context = UcxContext::Create();
  ASSERT_TRUE(context.ok());
  auto engine = UcxEngine::Start(**context, "malformed");
  auto peer = UcxEngine::Start(**context, "peer");
  ASSERT_TRUE(engine.ok() && peer.ok());
  absl::StatusOr<UcxMemory> memory = UcxMemory::Allocate(**context, 4096);
  ASSERT_TRUE(memory.ok());
  const uint64_t base = reinterpret_cast<uint64_t>(memory->data());
  absl::StatusOr<std::string> rkey = memory->PackRkey();
  ASSERT_TRUE(rkey.ok());
  std::string wrong_version = (*peer)->worker_address();
  wrong_version[0] = 'x';

  (*engine)->Call([&] {
    UcxWorker& worker = (*engine)->worker();
    for (const std::string& address : {std::string(), std::string("x"), wrong_version}) {
      EXPECT_EQ(UcxEndpoint::Connect(worker, address).status().code(),
                absl::StatusCode::kInvalidArgument)
          << address.size() << " bytes";
    }
    absl::StatusOr<UcxEndpoint> ep =
        UcxEndpoint::Connect(worker, (*peer)->worker_address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    const std::string truncated = rkey->substr(0, rkey->size() - 1);
    std::string not_host = *rkey;
    not_host[8] = 3;
    for (const std::string& key :
         {std::string(), std::string("k"), truncated, not_host}) {
      EXPECT_EQ(UcxRemoteKey::Unpack(*ep, key, base, 4096).status().code(),
                absl::StatusCode::kInvalidArgument)
          << key.size() << " bytes";
    }
    EXPECT_TRUE(UcxRemoteKey::Unpack(*ep, *rkey, base, 4096).ok());
    // A range the segment does not hold.
    EXPECT_EQ(UcxRemoteKey::Unpack(*ep, *rkey, base + 4096, 4096).status().code(),
              absl::StatusCode::kInvalidArgument);
  });
}

// UCX 1.13 crashes when it cannot attach a segment an rkey names: the key of memory
// that is gone must come back as UNAVAILABLE first.
TEST(UcxEndpointTest, RkeyOfVanishedSharedMemoryIsUnavailable) {
  auto context = UcxContext::Create();
  ASSERT_TRUE(context.ok());
  auto engine = UcxEngine::Start(**context, "vanished");
  auto peer = UcxEngine::Start(**context, "peer");
  ASSERT_TRUE(engine.ok() && peer.ok());
  absl::StatusOr<UcxMemory> memory = UcxMemory::Allocate(**context, 1 << 20);
  ASSERT_TRUE(memory.ok());
  const uint64_t base = reinterpret_cast<uint64_t>(memory->data());
  absl::StatusOr<std::string> rkey = memory->PackRkey();
  ASSERT_TRUE(rkey.ok());
  *memory = UcxMemory();  // unmapped: its segment is gone
  (*engine)->Call([&] {
    absl::StatusOr<UcxEndpoint> ep =
        UcxEndpoint::Connect((*engine)->worker(), (*peer)->worker_address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    absl::StatusOr<UcxRemoteKey> key = UcxRemoteKey::Unpack(*ep, *rkey, base, 1 << 20);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kUnavailable) << key.status();
    EXPECT_NE(key.status().message().find("shared memory"), absl::string_view::npos);
  });
}

}  // namespace
}  // namespace freekv
