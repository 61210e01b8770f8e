// SPDX-License-Identifier: Apache-2.0
// A fake qemu process for the core's (and the gRPC service's) unit tests: an in-memory /proc
// (FakeHostFs) with a main loop and N vCPU threads, host and engine clocks that advance
// together, and the libvirt DomainInfo describing it. Several qemus may share one FakeHost.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../host/fake_proc.h"
#include "stallmon/diagnosis/time.h"
#include "stallmon/host/clock.h"
#include "stallmon/host/host_fs.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::core::testing {

using host::testing::FakeThread;

// What a StallMonitor reads of its host: /proc and the two clocks.
struct FakeHost {
  host::FakeHostFs fs;
  host::SimulatedClock mono{1'000'000'000};
  diagnosis::ManualClock clock;

  void advance_clocks(int64_t ms) {
    mono.advance_ns(ms * 1'000'000);
    clock.advance(std::chrono::milliseconds(ms));
  }
};

class FakeQemu {
  std::unique_ptr<FakeHost> owned_host_;  // declared first: the references below may point into it

 public:
  static constexpr int32_t kPid = 4000;

  // A qemu alone on a host of its own.
  explicit FakeQemu(int vcpus = 4, std::string name = "vm1",
                    std::string uuid = "00000000-0000-0000-0000-000000000001")
      : FakeQemu(std::make_unique<FakeHost>(), nullptr, vcpus, std::move(name), std::move(uuid), kPid) {}
  // One of several qemus on `host`, with its own pid (its vCPU threads are pid+1...).
  FakeQemu(FakeHost& host, int vcpus, std::string name, std::string uuid, int32_t pid)
      : FakeQemu(nullptr, &host, vcpus, std::move(name), std::move(uuid), pid) {}

  // Advances both clocks by `ms` and every thread's /proc files (advance_threads). With a shared
  // host, advance its clocks once and call advance_threads() on each qemu instead.
  void advance(int64_t ms, uint64_t run_ms = 40, uint64_t wait_ms = 5) {
    host_.advance_clocks(ms);
    advance_threads(run_ms, wait_ms);
  }
  // Threads in R ran `run_ms` (and waited `wait_ms`), the main loop ran a little; blocked
  // threads did not move.
  void advance_threads(uint64_t run_ms = 40, uint64_t wait_ms = 5) {
    main_.run_ns += 1'000'000;
    main_.timeslices += 1;
    put(main_);
    for (FakeThread& t : vcpus_) {
      if (t.state == 'R') {
        t.run_ns += run_ms * 1'000'000;
        t.wait_ns += wait_ms * 1'000'000;
        t.timeslices += 2;
      }
      put(t);
    }
  }

  // Puts vCPU `i`'s thread into `state` (D: as the cgroup freezer does) with wchan and stack.
  void block_vcpu(int i, char state = 'D', const std::string& wchan = "__refrigerator") {
    FakeThread& t = vcpus_.at(static_cast<size_t>(i));
    t.state = state;
    t.wchan = wchan;
    t.stack = "[<0>] __refrigerator+0x4c/0x130\n[<0>] get_signal+0x7b5/0x840\n";
    put(t);
  }
  // Another thread of the process (an I/O worker, say), asleep.
  void add_thread(int32_t tid, const std::string& comm) {
    FakeThread t;
    t.tid = tid;
    t.comm = comm;
    t.state = 'S';
    t.wchan = "futex_wait_queue";
    put(t);
  }
  void run_vcpu(int i) {
    FakeThread& t = vcpus_.at(static_cast<size_t>(i));
    t.state = 'R';
    t.wchan = "0";
    t.stack.clear();
    put(t);
  }

  libvirt::DomainInfo info() const {
    libvirt::DomainInfo d;
    d.name = name_;
    d.uuid = uuid_;
    d.id = 7;
    d.state = libvirt::DomainRunState::kRunning;
    d.qemu_pid = pid_;
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      d.vcpus.push_back(libvirt::VcpuThread{static_cast<int>(i), vcpus_[i].tid, vcpus_[i].comm});
    }
    d.vcpu_source = libvirt::VcpuSource::kQmp;
    d.ram_layout = ram_;
    d.generation = 1;
    return d;
  }

  int32_t pid() const { return pid_; }
  pid_t vcpu_tid(int i) const { return vcpus_.at(static_cast<size_t>(i)).tid; }
  // Every thread as its /proc files show it: the main loop, then the vCPUs.
  std::vector<FakeThread> threads() const {
    std::vector<FakeThread> all{main_};
    all.insert(all.end(), vcpus_.begin(), vcpus_.end());
    return all;
  }

  // The host's (shared or own).
  host::FakeHostFs& fs;
  host::SimulatedClock& mono;
  diagnosis::ManualClock& clock;

 private:
  FakeQemu(std::unique_ptr<FakeHost> owned, FakeHost* shared, int vcpus, std::string name, std::string uuid,
           int32_t pid)
      : owned_host_(std::move(owned)),
        fs((shared ? *shared : *owned_host_).fs),
        mono((shared ? *shared : *owned_host_).mono),
        clock((shared ? *shared : *owned_host_).clock),
        host_(shared ? *shared : *owned_host_),
        pid_(pid),
        name_(std::move(name)),
        uuid_(std::move(uuid)) {
    main_.tid = pid_;
    main_.comm = "qemu-system-x86";
    main_.state = 'S';
    main_.wchan = "do_sys_poll";
    put(main_);
    for (int i = 0; i < vcpus; ++i) {
      FakeThread t;
      t.tid = pid_ + 1 + i;
      t.comm = "CPU " + std::to_string(i) + "/TCG";
      t.state = 'R';
      vcpus_.push_back(t);
      put(t);
    }
  }

  void put(const FakeThread& t) {
    host::testing::put_thread(fs, pid_, t);
    fs.set_file("proc/" + std::to_string(pid_) + "/cgroup", "0::/\n");
  }

  FakeHost& host_;
  int32_t pid_;
  std::string name_, uuid_;
  FakeThread main_;
  std::vector<FakeThread> vcpus_;
  std::shared_ptr<const std::vector<introspect::RamRange>> ram_ =
      std::make_shared<const std::vector<introspect::RamRange>>(
          std::vector<introspect::RamRange>{{0, 512u << 20, 0x7f0000000000, "pc.ram"}});
};

// The fake /proc and clocks for tests with pool threads: FakeHostFs counts opens and reads in
// plain maps and the simulated clocks are plain integers, so workers and the test thread must
// not use them at once. Everything goes through one mutex; the test takes it (lock()) around
// its own changes (advance, block_vcpu).
class Serialized {
 public:
  explicit Serialized(FakeQemu& q) : fs(*this, q.fs), mono(*this, q.mono), clock(*this, q.clock) {}
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mu_); }

  class Fs final : public host::HostFs {
   public:
    Fs(Serialized& s, host::HostFs& inner) : s_(s), inner_(inner) {}
    Result<int> open(const std::string& path) override {
      auto l = s_.lock();
      return inner_.open(path);
    }
    Result<size_t> read(int handle, char* buf, size_t len) override {
      auto l = s_.lock();
      return inner_.read(handle, buf, len);
    }
    void close(int handle) override {
      auto l = s_.lock();
      inner_.close(handle);
    }
    Result<std::vector<std::string>> list_dir(const std::string& path) override {
      auto l = s_.lock();
      return inner_.list_dir(path);
    }

   private:
    Serialized& s_;
    host::HostFs& inner_;
  };
  class Mono final : public host::Clock {
   public:
    Mono(Serialized& s, host::Clock& inner) : s_(s), inner_(inner) {}
    int64_t now_ns() override {
      auto l = s_.lock();
      return inner_.now_ns();
    }

   private:
    Serialized& s_;
    host::Clock& inner_;
  };
  class EngineClock final : public diagnosis::Clock {
   public:
    EngineClock(Serialized& s, const diagnosis::Clock& inner) : s_(s), inner_(inner) {}
    diagnosis::Timestamp now() const override {
      auto l = s_.lock();
      return inner_.now();
    }

   private:
    Serialized& s_;
    const diagnosis::Clock& inner_;
  };

 private:
  std::mutex mu_;

 public:
  Fs fs;
  Mono mono;
  EngineClock clock;
};

}  // namespace stallmon::core::testing
