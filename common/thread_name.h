// Names the calling thread, so that `top -H`, `ps -L`, perf and gdb show what each of
// the service's and the worker's threads is (a packer, a lane's issuer, a reply
// reader) instead of the process name for every one of them. Any thread.
#ifndef FREEKV_COMMON_THREAD_NAME_H_
#define FREEKV_COMMON_THREAD_NAME_H_

#include <pthread.h>

#include <string>

#include "absl/strings/string_view.h"

namespace freekv {

// Linux keeps 15 characters of a thread's name; longer names are cut there. Best
// effort: a refusal leaves the inherited name.
inline void NameThisThread(absl::string_view name) {
  const std::string cut(name.substr(0, 15));
  pthread_setname_np(pthread_self(), cut.c_str());
}

}  // namespace freekv

#endif  // FREEKV_COMMON_THREAD_NAME_H_
