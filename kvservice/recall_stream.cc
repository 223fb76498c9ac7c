#include "kvservice/recall_stream.h"

#include <deque>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/thread_name.h"
#include "kvservice/proto_convert.h"

namespace freekv {

// Replies waiting to be written, and how many accepted recalls are still running.
class RecallStream::Outbox {
 public:
  void Push(v1::RecallReply reply) {
    absl::MutexLock lock(&mu_);
    replies_.push_back(std::move(reply));
  }
  void Accepted() {
    absl::MutexLock lock(&mu_);
    ++outstanding_;
  }
  void Completed(v1::RecallReply reply) {
    absl::MutexLock lock(&mu_);
    replies_.push_back(std::move(reply));
    --outstanding_;
  }
  void ReaderDone() {
    absl::MutexLock lock(&mu_);
    reader_done_ = true;
  }
  // Writes replies until the reader is done and nothing is outstanding. A failed write
  // (client gone) turns later writes into drops; completions are still awaited so that
  // no recall outlives the stream.
  void WriteAll(Stream* stream) {
    bool broken = false;
    for (;;) {
      v1::RecallReply reply;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !replies_.empty() || (reader_done_ && outstanding_ == 0);
        };
        mu_.Await(absl::Condition(&ready));
        if (replies_.empty()) return;
        reply = std::move(replies_.front());
        replies_.pop_front();
      }
      if (!broken && !stream->Write(reply)) broken = true;
    }
  }

 private:
  absl::Mutex mu_;
  std::deque<v1::RecallReply> replies_ ABSL_GUARDED_BY(mu_);
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  bool reader_done_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

v1::RecallReply ReplyFor(const v1::RecallRequest& request, const absl::Status& status) {
  v1::RecallReply reply;
  reply.set_request_id(request.request_id());
  reply.set_step(request.step());
  reply.set_layer(request.layer());
  reply.set_slot(request.slot());
  reply.set_code(static_cast<int32_t>(status.code()));
  reply.set_message(std::string(status.message()));
  return reply;
}

}  // namespace

RecallStream::RecallStream(Stream* stream, Hooks hooks)
    : stream_(stream), hooks_(std::move(hooks)) {}

grpc::Status RecallStream::Run() {
  auto outbox = std::make_shared<Outbox>();
  std::thread writer([this, outbox] {
    NameThisThread("kv-reply-write");
    outbox->WriteAll(stream_);
  });
  v1::RecallRequest request;
  while (stream_->Read(&request)) {
    Start(request, absl::Now(), outbox);
  }
  outbox->ReaderDone();
  writer.join();
  return grpc::Status::OK;
}

void RecallStream::Start(const v1::RecallRequest& request, absl::Time received,
                         const std::shared_ptr<Outbox>& outbox) {
  absl::StatusOr<std::shared_ptr<Session>> session =
      hooks_.touch_session(request.session_id());
  absl::Status status = session.status();
  if (status.ok()) {
    outbox->Accepted();
    const std::vector<RecallItem> items = RecallItemsFromProto(request);
    v1::RecallReply pending = ReplyFor(request, absl::OkStatus());
    status = (*session)->Recall(
        RecallSpecFromProto(request), items,
        [this, outbox, received, pending = std::move(pending)](
            absl::Status done, RecallResult result) mutable {
          const absl::Duration latency = absl::Now() - received;
          if (done.ok()) {
            hooks_.on_recalled(result, latency);
            pending.set_bytes(result.bytes);
            pending.set_blocks(result.blocks);
            pending.set_transfers(result.transfers);
            pending.set_service_latency_ns(absl::ToInt64Nanoseconds(latency));
          } else {
            hooks_.on_error(done);
            pending.set_code(static_cast<int32_t>(done.code()));
            pending.set_message(std::string(done.message()));
          }
          outbox->Completed(std::move(pending));
        });
    if (!status.ok()) {
      // Refused before anything was sent: the completion will never come.
      hooks_.on_error(status);
      outbox->Completed(ReplyFor(request, status));
    }
    return;
  }
  hooks_.on_error(status);
  outbox->Push(ReplyFor(request, status));
}

}  // namespace freekv
