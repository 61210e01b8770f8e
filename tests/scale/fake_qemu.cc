// SPDX-License-Identifier: Apache-2.0
// A process that looks like qemu to stallmon's host side: threads named "CPU n/KVM" (what
// QEMU with debug-threads=on calls its KVM vCPU threads) plus a main loop thread.
//
//   fake_qemu VCPUS PERIOD_MS BUSY_US
//
// Each vCPU thread repeats: run BUSY_US of CPU, sleep the rest of PERIOD_MS (a mostly idle
// guest: a timer tick and a little work). Signals drive scripted stalls:
//   SIGUSR1  vCPU 0 blocks in the host kernel: it vfork()s a child that waits on a pipe, so the
//            thread sits in D (wait_for_vfork_done), as a vCPU stuck in a host syscall does
//   SIGUSR2  releases it
// Prints "ready" on stdout once every vCPU thread is named and running.
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<bool> freeze{false};
std::atomic<bool> frozen{false};
int release_pipe[2];

void on_signal(int sig) {
  if (sig == SIGUSR1) freeze = true;
  if (sig == SIGUSR2 && frozen) {
    char c = 0;
    (void)!write(release_pipe[1], &c, 1);
  }
}

void spin_us(long us) {
  timespec a{}, b{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
  for (;;) {
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    long d = (b.tv_sec - a.tv_sec) * 1'000'000 + (b.tv_nsec - a.tv_nsec) / 1000;
    if (d >= us) return;
  }
}

void vcpu(int index, long period_us, long busy_us) {
  std::string name = "CPU " + std::to_string(index) + "/KVM";
  pthread_setname_np(pthread_self(), name.c_str());
  timespec next{};
  clock_gettime(CLOCK_MONOTONIC, &next);
  // A phase of its own, so thousands of fake vCPUs do not all wake at the same instant (they
  // did, and 1,600 of them spinning together saturated a 2-core host).
  next.tv_nsec += static_cast<long>((static_cast<unsigned long>(index) * 7919 + getpid()) %
                                    static_cast<unsigned long>(period_us)) * 1000;
  while (next.tv_nsec >= 1'000'000'000) {
    next.tv_nsec -= 1'000'000'000;
    ++next.tv_sec;
  }
  for (;;) {
    if (index == 0 && freeze.exchange(false)) {
      frozen = true;
      pid_t c = vfork();
      if (c == 0) {
        char b;
        (void)!read(release_pipe[0], &b, 1);
        _exit(0);
      }
      waitpid(c, nullptr, 0);
      frozen = false;
      clock_gettime(CLOCK_MONOTONIC, &next);
    }
    if (busy_us > 0) spin_us(busy_us);
    next.tv_nsec += period_us * 1000;
    while (next.tv_nsec >= 1'000'000'000) {
      next.tv_nsec -= 1'000'000'000;
      ++next.tv_sec;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, nullptr);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: fake_qemu VCPUS PERIOD_MS BUSY_US\n");
    return 2;
  }
  int n = std::atoi(argv[1]);
  long period_us = std::atol(argv[2]) * 1000;
  long busy_us = std::atol(argv[3]);
  if (pipe(release_pipe) != 0) return 1;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGUSR2, &sa, nullptr);
  // Signals go to the main thread only: the vCPU threads block them.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  sigaddset(&block, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &block, nullptr);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back(vcpu, i, period_us, busy_us);
  pthread_sigmask(SIG_UNBLOCK, &block, nullptr);
  pthread_setname_np(pthread_self(), "qemu-system-x86");
  usleep(100'000);
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) pause();
}
