// End to end through the real kvservice process: random pages offloaded over UCX come
// back bit-identical into both staging slots, tags agree on both sides, and a slot is
// never handed to a second recall before it was released; a killed kvservice fails the
// session's recalls at once with an error a person can act on; a recall asking for a
// signal word (CUDA IPC only) is refused without harm.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/kv_client.h"
#include "common/integrity.h"
#include "common/random_bytes.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv {
namespace {

using testing::KvServiceProcess;

Geometry SmallGeometry() {
  Geometry g;
  g.num_layers = 3;
  g.num_kv_heads = 4;
  g.head_dim = 64;
  g.page_tokens = 16;
  g.dtype = DType::kBFloat16;
  return g;
}

class OffloadRecallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
        KvServiceProcess::Start({"--capacity=256M", "--chunk_bytes=4M"});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    KvClientOptions options;
    options.target = service_->target();
    options.geometry = SmallGeometry();
    options.slot_slices = 64;
    options.offload_blocks = 32;
    options.client_name = "offload_recall_test";
    absl::StatusOr<std::unique_ptr<KvClient>> client = KvClient::Open(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // Offloads `pages` pages of each layer of `sequence`, remembering their bytes.
  void OffloadSequence(uint64_t sequence, uint32_t pages) {
    const Geometry& g = client_->geometry();
    const size_t block = g.block_bytes();
    absl::Span<std::byte> region = client_->offload_region();
    std::vector<OffloadPageRef> refs;
    for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
      for (uint32_t page = 0; page < pages; ++page) {
        const uint64_t offset = refs.size() * block;
        FillRandomBytes(region.subspan(offset, block), sequence * 1000003 + layer * 1009 + page);
        refs.push_back(OffloadPageRef{sequence, layer, page, offset});
        expected_[{sequence, layer, page}].assign(region.data() + offset,
                                                  region.data() + offset + block);
      }
    }
    absl::StatusOr<std::vector<uint64_t>> tags = client_->Offload(refs);
    ASSERT_TRUE(tags.ok()) << tags.status();
    ASSERT_EQ(tags->size(), refs.size());
    for (size_t i = 0; i < refs.size(); ++i) {
      const auto& bytes = expected_[{sequence, refs[i].layer, refs[i].page}];
      EXPECT_EQ((*tags)[i], IntegrityTag(absl::MakeConstSpan(bytes.data(), bytes.size())))
          << "tag of page " << i << " differs between client and service";
    }
    // Scribble over the offload region: recall must come from the store.
    FillRandomBytes(region, 0xdeadbeef + sequence);
  }

  void ExpectSlice(absl::Span<const std::byte> slot, uint64_t slot_offset,
                   uint64_t sequence, uint32_t layer, uint32_t page, uint32_t head) {
    const size_t slice = client_->geometry().head_slice_bytes();
    const std::vector<std::byte>& block = expected_.at({sequence, layer, page});
    ASSERT_EQ(std::memcmp(slot.data() + slot_offset, block.data() + head * slice, slice),
              0)
        << "sequence " << sequence << " layer " << layer << " page " << page << " head "
        << head << " at slot offset " << slot_offset;
  }

  std::unique_ptr<KvServiceProcess> service_;
  std::unique_ptr<KvClient> client_;
  std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::vector<std::byte>> expected_;
};

TEST_F(OffloadRecallTest, ScatteredSlicesComeBackBitIdenticalInBothSlots) {
  OffloadSequence(/*sequence=*/7, /*pages=*/8);
  const Geometry& g = client_->geometry();
  const size_t slice = g.head_slice_bytes();
  std::mt19937 rng(42);
  for (uint64_t step = 0; step < 6; ++step) {
    const uint32_t layer = step % g.num_layers;
    // A random selection of (page, head) slices, packed in a shuffled order.
    std::vector<RecallSliceRef> slices;
    for (uint32_t page = 0; page < 8; ++page) {
      for (uint32_t head = 0; head < g.num_kv_heads; ++head) {
        if (rng() % 3 == 0) slices.push_back({7, head, page, 0});
      }
    }
    std::shuffle(slices.begin(), slices.end(), rng);
    for (size_t i = 0; i < slices.size(); ++i) slices[i].slot_offset = i * slice;

    RecallOptions options;
    options.verify_integrity = step % 2 == 0;
    options.urgent = step % 3 == 1;  // UCX has no urgent lane: the same bytes, in order
    absl::StatusOr<RecallTicket> ticket = client_->Recall(step, layer, slices, options);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    absl::Span<std::byte> slot = client_->staging_slot(layer, ticket->slot);
    ASSERT_TRUE(client_->Wait(*ticket, absl::Now() + absl::Seconds(10)).ok());
    for (const RecallSliceRef& s : slices) {
      ExpectSlice(slot, s.slot_offset, 7, layer, s.page, s.kv_head);
    }
    ASSERT_TRUE(client_->Release(*ticket).ok());
  }
}

TEST_F(OffloadRecallTest, DoubleBufferingUsesBothSlotsAndRefusesAThird) {
  OffloadSequence(3, 4);
  const size_t slice = client_->geometry().head_slice_bytes();
  std::vector<RecallSliceRef> even = {{3, 0, 0, 0}, {3, 1, 1, slice}};
  std::vector<RecallSliceRef> odd = {{3, 2, 2, 0}, {3, 3, 3, slice}};
  absl::StatusOr<RecallTicket> a = client_->Recall(10, 1, even);
  absl::StatusOr<RecallTicket> b = client_->Recall(11, 1, odd);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->slot, b->slot);
  EXPECT_EQ(client_->Recall(12, 1, even).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(client_->WaitStep(10, 1, absl::Now() + absl::Seconds(10)).ok());
  ASSERT_TRUE(client_->WaitStep(11, 1, absl::Now() + absl::Seconds(10)).ok());
  ExpectSlice(client_->staging_slot(1, a->slot), 0, 3, 1, 0, 0);
  ExpectSlice(client_->staging_slot(1, a->slot), slice, 3, 1, 1, 1);
  ExpectSlice(client_->staging_slot(1, b->slot), 0, 3, 1, 2, 2);
  ExpectSlice(client_->staging_slot(1, b->slot), slice, 3, 1, 3, 3);
  ASSERT_TRUE(client_->Release(*a).ok());
  absl::StatusOr<RecallTicket> c = client_->Recall(12, 1, odd);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->slot, a->slot);
  ASSERT_TRUE(client_->Wait(*c, absl::Now() + absl::Seconds(10)).ok());
}

// A UCX session has no signal words: a recall asking for one is refused with an error
// that says so, writes nothing, and the session goes on.
TEST_F(OffloadRecallTest, ARecallAskingForASignalIsRefusedOverUcxAndTheSessionGoesOn) {
  OffloadSequence(5, 2);
  const size_t slice = client_->geometry().head_slice_bytes();
  std::vector<RecallSliceRef> slices = {{5, 0, 0, 0}, {5, 1, 1, slice}};
  RecallOptions options;
  options.signal = RecallOptions::Signal{0, {4, 8}};
  absl::StatusOr<RecallTicket> refused = client_->Recall(1, 0, slices, options);
  ASSERT_TRUE(refused.ok()) << refused.status();
  absl::Span<std::byte> slot = client_->staging_slot(0, refused->slot);
  FillRandomBytes(slot, 99);
  const std::vector<std::byte> before(slot.begin(), slot.end());
  const absl::Status status = client_->Wait(*refused, absl::Now() + absl::Seconds(10));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("signal"), absl::string_view::npos) << status;
  EXPECT_TRUE(std::equal(before.begin(), before.end(), slot.begin()));
  ASSERT_TRUE(client_->Release(*refused).ok());
  absl::StatusOr<RecallTicket> ticket = client_->Recall(2, 0, slices);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  ASSERT_TRUE(client_->Wait(*ticket, absl::Now() + absl::Seconds(10)).ok());
  ExpectSlice(client_->staging_slot(0, ticket->slot), 0, 5, 0, 0, 0);
  ExpectSlice(client_->staging_slot(0, ticket->slot), slice, 5, 0, 1, 1);
}

TEST_F(OffloadRecallTest, FreedSequenceIsGoneAndItsMemoryReturns) {
  OffloadSequence(5, 6);
  absl::StatusOr<v1::GetStatsResponse> before = client_->ServiceStats();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->store_pages(), 6u * client_->geometry().num_layers);
  absl::StatusOr<uint32_t> freed = client_->FreeSequence(5);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, 6u * client_->geometry().num_layers);
  absl::StatusOr<RecallTicket> ticket = client_->Recall(0, 0, {{{5, 0, 0, 0}}});
  ASSERT_TRUE(ticket.ok());
  EXPECT_EQ(client_->Wait(*ticket, absl::Now() + absl::Seconds(10)).code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<v1::GetStatsResponse> after = client_->ServiceStats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->store_pages(), 0u);
  EXPECT_EQ(after->store_bytes_used(), 0u);
  // The sequence can be offloaded again after being freed.
  OffloadSequence(5, 2);
}

TEST_F(OffloadRecallTest, ServiceStopsCleanlyOnSigterm) {
  OffloadSequence(1, 2);
  client_.reset();
  absl::StatusOr<int> status = service_->Stop();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

// The kvservice dies (SIGKILL): a recall then fails at once or in its Wait, well before
// its deadline, with UNAVAILABLE and a message that names the session and the
// kvservice and says what to do; every later recall is refused at once.
TEST_F(OffloadRecallTest, AKilledServiceFailsRecallsAtOnceWithAnActionableError) {
  OffloadSequence(5, 2);
  const std::vector<RecallSliceRef> one = {{5, 0, 0, 0}};
  absl::StatusOr<RecallTicket> before = client_->Recall(1, 0, one);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(client_->Wait(*before, absl::Now() + absl::Seconds(10)).ok());
  ASSERT_TRUE(client_->Release(*before).ok());

  EXPECT_FALSE(service_->Stop(absl::ZeroDuration()).ok()) << "killed, not drained";
  const absl::Time start = absl::Now();
  absl::Status failed;
  absl::StatusOr<RecallTicket> after = client_->Recall(2, 0, one);
  if (after.ok()) {  // sent before the client saw the stream end: its Wait fails
    failed = client_->Wait(*after, absl::Now() + absl::Seconds(20));
  } else {
    failed = after.status();
  }
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waited for a deadline";
  std::printf("failed after %.0f ms (%s): %s\n",
              absl::ToDoubleMilliseconds(absl::Now() - start), after.ok() ? "in Wait" : "at once",
              failed.ToString().c_str());
  const std::string session = absl::StrCat("session ", client_->session_id());
  EXPECT_NE(failed.message().find(session), absl::string_view::npos) << failed;
  EXPECT_NE(failed.message().find(service_->socket()), absl::string_view::npos) << failed;
  EXPECT_NE(failed.message().find("open a new session"), absl::string_view::npos) << failed;

  // The client has seen the stream end by now: later recalls are refused outright.
  absl::SleepFor(absl::Milliseconds(200));
  const absl::StatusOr<RecallTicket> refused = client_->Recall(3, 1, one);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
}

}  // namespace
}  // namespace freekv
