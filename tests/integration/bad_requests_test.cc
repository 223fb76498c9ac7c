// Every malformed request gets its status code and a message naming the field, and
// leaves other sessions' pages intact. Drives the real kvservice with a raw gRPC stub
// (to send what the client library would never send) beside two real client sessions.
#include <cstring>
#include <random>
#include <vector>

#include "client/kv_client.h"
#include "common/geometry_proto.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv {
namespace {

using testing::KvServiceProcess;

Geometry TestGeometry() {
  Geometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.head_dim = 32;
  g.page_tokens = 8;
  g.dtype = DType::kFloat32;
  return g;
}

class BadRequestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A small store (16 blocks of 4 KiB per 64 KiB chunk, 2 chunks) to reach capacity.
    absl::StatusOr<std::unique_ptr<KvServiceProcess>> service = KvServiceProcess::Start(
        {"--capacity=128K", "--chunk_bytes=64K", "--max_request_blocks=64"});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    stub_ = v1::KvService::NewStub(
        grpc::CreateChannel(service_->target(), grpc::InsecureChannelCredentials()));
    victim_ = OpenClient("victim");
    attacker_ = OpenClient("attacker");
    // The victim stores 4 pages per layer whose bytes we keep.
    const size_t block = victim_->geometry().block_bytes();
    std::mt19937 rng(7);
    std::vector<OffloadPageRef> refs;
    for (uint32_t layer = 0; layer < 2; ++layer) {
      for (uint32_t page = 0; page < 4; ++page) {
        const uint64_t offset = refs.size() * block;
        for (size_t i = 0; i < block; ++i) {
          victim_->offload_region()[offset + i] = std::byte(rng());
        }
        refs.push_back({1, layer, page, offset});
      }
    }
    victim_bytes_.assign(victim_->offload_region().begin(),
                         victim_->offload_region().begin() + refs.size() * block);
    ASSERT_TRUE(victim_->Offload(refs).ok());
    ASSERT_TRUE(attacker_->Offload({{{9, 0, 0, 0}}}).ok());
  }

  std::unique_ptr<KvClient> OpenClient(const std::string& name) {
    KvClientOptions options;
    options.target = service_->target();
    options.geometry = TestGeometry();
    options.slot_slices = 8;
    options.offload_blocks = 8;
    options.client_name = name;
    absl::StatusOr<std::unique_ptr<KvClient>> client = KvClient::Open(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Recalls every victim slice and compares it with what was offloaded.
  void ExpectVictimIntact() {
    const Geometry g = victim_->geometry();
    const size_t slice = g.head_slice_bytes(), block = g.block_bytes();
    for (uint32_t layer = 0; layer < 2; ++layer) {
      std::vector<RecallSliceRef> slices;
      for (uint32_t page = 0; page < 4; ++page) {
        for (uint32_t head = 0; head < 2; ++head) {
          slices.push_back({1, head, page, slices.size() * slice});
        }
      }
      absl::StatusOr<RecallTicket> t = victim_->Recall(100 + layer, layer, slices,
                                                  RecallOptions::Verified());
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_TRUE(victim_->Wait(*t, absl::Now() + absl::Seconds(10)).ok());
      absl::Span<std::byte> slot = victim_->staging_slot(layer, t->slot);
      for (const RecallSliceRef& s : slices) {
        const std::byte* want =
            victim_bytes_.data() + (layer * 4 + s.page) * block + s.kv_head * slice;
        ASSERT_EQ(std::memcmp(slot.data() + s.slot_offset, want, slice), 0);
      }
      ASSERT_TRUE(victim_->Release(*t).ok());
    }
  }

  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return context;
  }

  std::unique_ptr<KvServiceProcess> service_;
  std::unique_ptr<v1::KvService::Stub> stub_;
  std::unique_ptr<KvClient> victim_, attacker_;
  std::vector<std::byte> victim_bytes_;
};

#define EXPECT_STATUS(call, code_, field)                                     \
  do {                                                                        \
    grpc::Status status_ = (call);                                            \
    EXPECT_EQ(status_.error_code(), grpc::StatusCode::code_)                  \
        << status_.error_message();                                           \
    EXPECT_NE(status_.error_message().find(field), std::string::npos)         \
        << "message does not name '" << field << "': " << status_.error_message(); \
  } while (0)

TEST_F(BadRequestsTest, OpenSessionValidatesGeometryRegionsAndTransport) {
  v1::OpenSessionRequest good;
  *good.mutable_geometry() = GeometryToProto(TestGeometry());
  good.set_transport(v1::TRANSPORT_UCX);
  good.set_ucx_worker_address("x");
  good.set_slot_bytes(4096);
  for (auto* region : {good.mutable_staging(), good.mutable_offload()}) {
    region->set_address(4096);
    region->set_length(1 << 20);
    region->set_ucx_rkey("k");
  }
  v1::OpenSessionResponse response;
  auto bad = good;
  bad.mutable_geometry()->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "dtype");
  bad = good;
  bad.mutable_geometry()->set_num_layers(0);
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "num_layers");
  bad = good;
  bad.set_slot_bytes(16);
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "slot_bytes");
  bad = good;
  bad.mutable_staging()->set_length(4096);
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "staging.length");
  bad = good;
  bad.set_transport(v1::TRANSPORT_UNSPECIFIED);
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "transport");
  bad = good;
  bad.mutable_offload()->clear_ucx_rkey();
  EXPECT_STATUS(stub_->OpenSession(Context().get(), bad, &response), INVALID_ARGUMENT,
                "offload.ucx_rkey");
  ExpectVictimIntact();
}

TEST_F(BadRequestsTest, UnknownSessionIsNotFoundEverywhere) {
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_session_id(424242);
  v1::HeartbeatResponse heartbeat_response;
  EXPECT_STATUS(stub_->Heartbeat(Context().get(), heartbeat, &heartbeat_response),
                NOT_FOUND, "424242");
  v1::OffloadRequest offload;
  offload.set_session_id(424242);
  v1::OffloadResponse offload_response;
  EXPECT_STATUS(stub_->Offload(Context().get(), offload, &offload_response), NOT_FOUND,
                "424242");
  v1::CloseSessionRequest close;
  close.set_session_id(424242);
  v1::CloseSessionResponse close_response;
  EXPECT_STATUS(stub_->CloseSession(Context().get(), close, &close_response), NOT_FOUND,
                "424242");
}

TEST_F(BadRequestsTest, OffloadRejectsBadPagesAllOrNothing) {
  const uint64_t id = attacker_->session_id();
  const size_t block = attacker_->geometry().block_bytes();
  auto request = [&](std::vector<OffloadPageRef> pages) {
    v1::OffloadRequest r;
    r.set_session_id(id);
    for (const auto& p : pages) {
      auto* out = r.add_pages();
      out->set_sequence_id(p.sequence_id);
      out->set_layer(p.layer);
      out->set_page(p.page);
      out->set_offload_offset(p.offload_offset);
    }
    return r;
  };
  v1::OffloadResponse response;
  EXPECT_STATUS(stub_->Offload(Context().get(), request({{9, 1, 1, 0}, {9, 2, 1, 0}}),
                               &response),
                INVALID_ARGUMENT, "pages[1].layer");
  EXPECT_STATUS(stub_->Offload(Context().get(), request({{9, 1, 1, 8 * block}}), &response),
                INVALID_ARGUMENT, "offload_offset");
  EXPECT_STATUS(stub_->Offload(Context().get(), request({{9, 1, 1, 8}}), &response),
                INVALID_ARGUMENT, "multiple of 16");
  EXPECT_STATUS(stub_->Offload(Context().get(), request({{9, 1, 1, 0}, {9, 1, 1, block}}),
                               &response),
                INVALID_ARGUMENT, "twice");
  EXPECT_STATUS(stub_->Offload(Context().get(), request({{9, 0, 0, 0}}), &response),
                ALREADY_EXISTS, "already stored");
  EXPECT_STATUS(stub_->Offload(Context().get(), request({}), &response), INVALID_ARGUMENT,
                "empty");
  // Capacity: 128 KiB holds 32 blocks of 4 KiB; 9 are stored. Ask for 64 more.
  std::vector<OffloadPageRef> many;
  for (uint32_t page = 0; page < 64; ++page) many.push_back({10 + page, 0, page, 0});
  v1::GetStatsResponse before, after;
  ASSERT_TRUE(stub_->GetStats(Context().get(), {}, &before).ok());
  EXPECT_STATUS(stub_->Offload(Context().get(), request(many), &response),
                RESOURCE_EXHAUSTED, "capacity");
  ASSERT_TRUE(stub_->GetStats(Context().get(), {}, &after).ok());
  EXPECT_EQ(after.store_pages(), before.store_pages());
  EXPECT_EQ(after.store_bytes_used(), before.store_bytes_used());
  ExpectVictimIntact();
}

TEST_F(BadRequestsTest, RecallRepliesWithTheErrorAndTheStreamGoesOn) {
  const uint64_t id = attacker_->session_id();
  const size_t slice = attacker_->geometry().head_slice_bytes();
  grpc::ClientContext context;
  auto stream = stub_->Recall(&context);
  struct Case {
    uint64_t session;
    uint32_t layer, slot;
    std::vector<RecallSliceRef> slices;
    grpc::StatusCode code;
    const char* field;
  };
  std::vector<RecallSliceRef> too_many(9, RecallSliceRef{9, 0, 0, 0});
  const std::vector<Case> cases = {
      {424242, 0, 0, {{9, 0, 0, 0}}, grpc::NOT_FOUND, "424242"},
      {id, 2, 0, {{9, 0, 0, 0}}, grpc::INVALID_ARGUMENT, "layer"},
      {id, 0, 2, {{9, 0, 0, 0}}, grpc::INVALID_ARGUMENT, "slot"},
      {id, 0, 0, {{9, 2, 0, 0}}, grpc::INVALID_ARGUMENT, "blocks[0].kv_head"},
      {id, 0, 0, {{9, 0, 5, 0}}, grpc::NOT_FOUND, "no page 5"},
      {id, 0, 0, {{1, 0, 0, 0}}, grpc::NOT_FOUND, "sequence 1"},  // the victim's
      {id, 0, 0, {{9, 0, 0, 8 * slice}}, grpc::INVALID_ARGUMENT, "slot_offset"},
      {id, 0, 0, {{9, 0, 0, 8}}, grpc::INVALID_ARGUMENT, "multiple of 16"},
      {id, 0, 0, {{9, 0, 0, 0}, {9, 1, 0, slice / 2}}, grpc::INVALID_ARGUMENT, "overlap"},
      {id, 0, 0, too_many, grpc::INVALID_ARGUMENT, "entries"},
      {id, 0, 0, {}, grpc::INVALID_ARGUMENT, "empty"},
  };
  uint64_t request_id = 1;
  for (const Case& c : cases) {
    v1::RecallRequest request;
    request.set_session_id(c.session);
    request.set_request_id(request_id);
    request.set_layer(c.layer);
    request.set_slot(c.slot);
    for (const auto& s : c.slices) {
      auto* b = request.add_blocks();
      b->set_sequence_id(s.sequence_id);
      b->set_kv_head(s.kv_head);
      b->set_page(s.page);
      b->set_slot_offset(s.slot_offset);
    }
    ASSERT_TRUE(stream->Write(request));
    v1::RecallReply reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.request_id(), request_id);
    EXPECT_EQ(reply.code(), c.code) << c.field << ": " << reply.message();
    EXPECT_NE(reply.message().find(c.field), std::string::npos)
        << "message does not name '" << c.field << "': " << reply.message();
    ++request_id;
  }
  // A good request on the same stream still works.
  v1::RecallRequest good;
  good.set_session_id(id);
  good.set_request_id(request_id);
  good.add_blocks()->set_sequence_id(9);
  ASSERT_TRUE(stream->Write(good));
  v1::RecallReply reply;
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(reply.code(), 0) << reply.message();
  EXPECT_EQ(reply.bytes(), slice);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  ExpectVictimIntact();

  // Every refusal was counted by method and code.
  absl::StatusOr<std::string> metrics = testing::HttpGet(service_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  absl::StatusOr<double> invalid = testing::MetricValue(
      *metrics, "freekv_request_errors_total{code=\"INVALID_ARGUMENT\",method=\"Recall\"}");
  ASSERT_TRUE(invalid.ok()) << *metrics;
  EXPECT_EQ(*invalid, 8);
}

}  // namespace
}  // namespace freekv
