// TransportRouter hands each session to the factory of the transport its worker named,
// and refuses a kind it has no factory for with the reason it was given.
#include "kvservice/transport_router.h"

#include <utility>

#include "gtest/gtest.h"

namespace freekv {
namespace {

// A factory that counts Connect calls and answers with a fixed status.
class CountingFactory : public TransportFactory {
 public:
  explicit CountingFactory(int* calls) : calls_(calls) {}
  absl::StatusOr<std::unique_ptr<SessionTransport>> Connect(const SessionPeer&) override {
    ++*calls_;
    return absl::UnavailableError("counted");
  }

 private:
  int* calls_;
};

SessionPeer PeerOf(PeerTransport transport) {
  SessionPeer peer;
  peer.transport = transport;
  return peer;
}

TEST(TransportRouterTest, DispatchesOnThePeersTransport) {
  int ucx = 0;
  int ipc = 0;
  TransportRouter router(std::make_unique<CountingFactory>(&ucx),
                         std::make_unique<CountingFactory>(&ipc), "");
  EXPECT_EQ(router.Connect(PeerOf(PeerTransport::kUcx)).status().message(), "counted");
  EXPECT_EQ(ucx, 1);
  EXPECT_EQ(ipc, 0);
  EXPECT_EQ(router.Connect(PeerOf(PeerTransport::kCudaIpc)).status().message(), "counted");
  EXPECT_EQ(ucx, 1);
  EXPECT_EQ(ipc, 1);
}

TEST(TransportRouterTest, RefusesCudaIpcWithoutAFactoryAndSaysWhy) {
  int ucx = 0;
  TransportRouter router(std::make_unique<CountingFactory>(&ucx), nullptr,
                         "this kvservice sees no GPU");
  absl::Status status = router.Connect(PeerOf(PeerTransport::kCudaIpc)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("this kvservice sees no GPU"), absl::string_view::npos)
      << status;
  EXPECT_NE(status.message().find("TRANSPORT_UCX"), absl::string_view::npos) << status;
  EXPECT_EQ(ucx, 0);
}

}  // namespace
}  // namespace freekv
