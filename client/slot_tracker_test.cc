#include "client/slot_tracker.h"

#include <thread>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(SlotTrackerTest, TwoSlotsPerLayerThenRefusesReuse) {
  SlotTracker tracker(/*num_layers=*/3);
  absl::StatusOr<RecallTicket> a = tracker.Claim(10, 1);
  absl::StatusOr<RecallTicket> b = tracker.Claim(11, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->slot, b->slot);
  EXPECT_NE(a->request_id, b->request_id);
  absl::StatusOr<RecallTicket> c = tracker.Claim(12, 1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  // Another layer is independent.
  EXPECT_TRUE(tracker.Claim(12, 2).ok());
}

TEST(SlotTrackerTest, InFlightSlotCannotBeReleasedOrReclaimed) {
  SlotTracker tracker(1);
  RecallTicket a = *tracker.Claim(0, 0);
  RecallTicket b = *tracker.Claim(1, 0);
  EXPECT_EQ(tracker.Release(a).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(tracker.Complete(a.request_id, absl::OkStatus()));
  // Completed but not released: still not reusable.
  EXPECT_FALSE(tracker.Claim(2, 0).ok());
  ASSERT_TRUE(tracker.Release(a).ok());
  absl::StatusOr<RecallTicket> c = tracker.Claim(2, 0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->slot, a.slot);
  // The stale ticket no longer names the slot.
  EXPECT_EQ(tracker.Release(a).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(tracker.Complete(a.request_id, absl::OkStatus()));
  EXPECT_EQ(tracker.claimed(), 2);
  (void)b;
}

TEST(SlotTrackerTest, WaitPassesOnTheServiceLatencyOfItsOwnRecall) {
  SlotTracker tracker(1);
  RecallTicket a = *tracker.Claim(0, 0);
  RecallTicket b = *tracker.Claim(1, 0);
  ASSERT_TRUE(tracker.Complete(b.request_id, absl::OkStatus(), absl::Microseconds(250)));
  ASSERT_TRUE(tracker.Complete(a.request_id, absl::OkStatus(), absl::Microseconds(70)));
  absl::Duration latency = absl::InfiniteDuration();
  ASSERT_TRUE(tracker.Wait(a, absl::Now() + absl::Seconds(1), &latency).ok());
  EXPECT_EQ(latency, absl::Microseconds(70));
  ASSERT_TRUE(tracker.Wait(b, absl::Now() + absl::Seconds(1), &latency).ok());
  EXPECT_EQ(latency, absl::Microseconds(250));
}

TEST(SlotTrackerTest, WaitReturnsTheCompletionStatus) {
  SlotTracker tracker(1);
  RecallTicket a = *tracker.Claim(5, 0);
  std::thread completer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    tracker.Complete(a.request_id, absl::DataLossError("tag mismatch"));
  });
  absl::Status s = tracker.Wait(a, absl::Now() + absl::Seconds(10));
  completer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

TEST(SlotTrackerTest, WaitTimesOutWhileInFlight) {
  SlotTracker tracker(1);
  RecallTicket a = *tracker.Claim(5, 0);
  absl::Status s = tracker.Wait(a, absl::Now() + absl::Milliseconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(tracker.WaitStep(5, 0, absl::Now() + absl::Milliseconds(10)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(SlotTrackerTest, WaitStepCoversEveryRecallOfTheStep) {
  SlotTracker tracker(1);
  RecallTicket a = *tracker.Claim(7, 0);
  RecallTicket b = *tracker.Claim(7, 0);  // e.g. a correction recall
  tracker.Complete(a.request_id, absl::OkStatus());
  EXPECT_EQ(tracker.WaitStep(7, 0, absl::Now() + absl::Milliseconds(10)).code(),
            absl::StatusCode::kDeadlineExceeded);
  tracker.Complete(b.request_id, absl::OkStatus());
  EXPECT_TRUE(tracker.WaitStep(7, 0, absl::Now()).ok());
  EXPECT_EQ(tracker.WaitStep(8, 0, absl::Now()).code(), absl::StatusCode::kNotFound);
}

TEST(SlotTrackerTest, FailAllWakesWaiters) {
  SlotTracker tracker(2);
  RecallTicket a = *tracker.Claim(1, 1);
  std::thread failer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    tracker.FailAll(absl::UnavailableError("stream broke"));
  });
  EXPECT_EQ(tracker.Wait(a, absl::Now() + absl::Seconds(10)).code(),
            absl::StatusCode::kUnavailable);
  failer.join();
  EXPECT_TRUE(tracker.Release(a).ok());
}

TEST(SlotTrackerTest, LayerOutOfRange) {
  SlotTracker tracker(2);
  EXPECT_EQ(tracker.Claim(0, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace freekv
