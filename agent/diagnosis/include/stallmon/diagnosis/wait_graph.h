// SPDX-License-Identifier: Apache-2.0
// The guest's cross-CPU wait graph: an edge a -> b means CPU a waits for CPU b to run a
// function call (a locked csd in a's cfd_data for target b). The roots are what everyone waits
// on: the CPUs that wait on nobody, or - when waits form a cycle - the cycle itself.
#pragma once

#include <vector>

namespace stallmon::diagnosis {

struct WaitEdge {
  int waiter = -1;
  int target = -1;
};

struct WaitRoot {
  // The root CPU, or every CPU of a terminal cycle (a set of CPUs that wait on each other and
  // on nobody outside), sorted.
  std::vector<int> roots;
  bool cycle = false;
  // Every CPU outside `roots` whose waits lead (directly or through others) to this root.
  std::vector<int> waiters;
  // The subset of `waiters` with an edge straight into `roots`.
  std::vector<int> direct_waiters;
};

// Roots of the graph, ordered by their lowest CPU number. Self-edges are ignored (a CPU never
// waits on its own csd). A waiter that reaches two roots is listed under both.
std::vector<WaitRoot> find_wait_roots(const std::vector<WaitEdge>& edges);

}  // namespace stallmon::diagnosis
