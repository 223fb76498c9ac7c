#include "transport/ucx_engine.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace freekv {
namespace {

class UcxEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<UcxContext>> context = UcxContext::Create();
    ASSERT_TRUE(context.ok()) << context.status();
    context_ = *std::move(context);
    absl::StatusOr<std::unique_ptr<UcxEngine>> engine =
        UcxEngine::Start(*context_, "test");
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::unique_ptr<UcxContext> context_;
  std::unique_ptr<UcxEngine> engine_;
};

TEST_F(UcxEngineTest, JobsRunInPostOrderOnTheEngineThread) {
  std::vector<int> order;  // touched only by jobs
  std::atomic<int> off_thread{0};
  for (int i = 0; i < 2000; ++i) {
    engine_->Post([&, i] {
      if (!engine_->OnEngineThread()) ++off_thread;
      order.push_back(i);
    });
  }
  const size_t seen = engine_->Call([&] { return order.size(); });
  EXPECT_EQ(seen, 2000u);
  EXPECT_EQ(off_thread.load(), 0);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(order[i], i);
  EXPECT_FALSE(engine_->OnEngineThread());
}

TEST_F(UcxEngineTest, CallOnTheEngineThreadRunsInline) {
  // A Call from inside a job would deadlock if it queued; it must run at once.
  const int result = engine_->Call([&] { return engine_->Call([] { return 7; }) * 6; });
  EXPECT_EQ(result, 42);
}

TEST_F(UcxEngineTest, JobPostedFromAJobRunsAfterTheJobsAlreadyQueued) {
  std::vector<int> order;
  absl::Notification gate, done;
  // Holds the engine until jobs 1 and 2 are both queued.
  engine_->Post([&] { gate.WaitForNotification(); });
  engine_->Post([&] {
    order.push_back(1);
    engine_->Post([&] {
      order.push_back(3);
      done.Notify();
    });
  });
  engine_->Post([&] { order.push_back(2); });
  gate.Notify();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST_F(UcxEngineTest, IdleEngineSleepsAndWakesForAJob) {
  engine_->Call([] {});  // past start-up
  const absl::Duration before = engine_->CpuTime();
  absl::SleepFor(absl::Milliseconds(500));
  const absl::Duration used = engine_->CpuTime() - before;
  // A spinning progress loop would use ~500 ms of CPU here.
  EXPECT_LT(used, absl::Milliseconds(25)) << "idle engine used " << used;

  absl::Notification ran;
  const absl::Time posted = absl::Now();
  engine_->Post([&] { ran.Notify(); });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_LT(absl::Now() - posted, absl::Milliseconds(200));
}

TEST_F(UcxEngineTest, DestructionRunsTheJobsAlreadyPosted) {
  std::atomic<int> ran{0};
  for (int i = 0; i < 100; ++i) engine_->Post([&] { ++ran; });
  engine_.reset();
  EXPECT_EQ(ran.load(), 100);
}

TEST_F(UcxEngineTest, WorkerHasAnAddressForPeers) {
  EXPECT_GT(engine_->worker_address().size(), 8u);
}

}  // namespace
}  // namespace freekv
