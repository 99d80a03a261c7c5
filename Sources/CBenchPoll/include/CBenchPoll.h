#ifndef PARLEY_CBENCH_POLL_H
#define PARLEY_CBENCH_POLL_H

/// epoll and timerfd for parley-bench's traffic loop (`RawTrafficLoop`): Swift's Glibc module
/// does not export these Linux headers.
#include <sys/epoll.h>
#include <sys/timerfd.h>

#endif
