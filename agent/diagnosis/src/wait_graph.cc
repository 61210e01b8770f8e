// SPDX-License-Identifier: Apache-2.0
#include "stallmon/diagnosis/wait_graph.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

namespace stallmon::diagnosis {

std::vector<WaitRoot> find_wait_roots(const std::vector<WaitEdge>& edges) {
  // Nodes are CPU numbers from guest memory: map them to dense indexes instead of trusting
  // them as array bounds.
  std::map<int, int> index;
  std::vector<int> cpu_of;
  auto node = [&](int cpu) {
    auto [it, inserted] = index.emplace(cpu, static_cast<int>(cpu_of.size()));
    if (inserted) cpu_of.push_back(cpu);
    return it->second;
  };
  std::vector<std::pair<int, int>> e;
  for (const auto& w : edges) {
    if (w.waiter == w.target) continue;
    e.emplace_back(node(w.waiter), node(w.target));
  }
  const int n = static_cast<int>(cpu_of.size());
  std::vector<std::set<int>> out(n), in(n);
  for (auto [a, b] : e) {
    out[a].insert(b);
    in[b].insert(a);
  }

  // Tarjan's strongly connected components (iterative over a small graph; recursion depth is
  // bounded by the CPU count, which is at most a few hundred).
  std::vector<int> comp(n, -1), low(n, 0), order(n, -1), stack;
  std::vector<bool> on_stack(n, false);
  int counter = 0, ncomp = 0;
  std::function<void(int)> strongconnect = [&](int v) {
    order[v] = low[v] = counter++;
    stack.push_back(v);
    on_stack[v] = true;
    for (int w : out[v]) {
      if (order[w] < 0) {
        strongconnect(w);
        low[v] = std::min(low[v], low[w]);
      } else if (on_stack[w]) {
        low[v] = std::min(low[v], order[w]);
      }
    }
    if (low[v] == order[v]) {
      for (;;) {
        int w = stack.back();
        stack.pop_back();
        on_stack[w] = false;
        comp[w] = ncomp;
        if (w == v) break;
      }
      ++ncomp;
    }
  };
  for (int v = 0; v < n; ++v)
    if (order[v] < 0) strongconnect(v);

  std::vector<std::vector<int>> members(ncomp);
  for (int v = 0; v < n; ++v) members[comp[v]].push_back(v);
  std::vector<bool> terminal(ncomp, true);
  for (auto [a, b] : e)
    if (comp[a] != comp[b]) terminal[comp[a]] = false;

  std::vector<WaitRoot> roots;
  for (int c = 0; c < ncomp; ++c) {
    if (!terminal[c]) continue;
    WaitRoot r;
    for (int v : members[c]) r.roots.push_back(cpu_of[v]);
    r.cycle = members[c].size() > 1;
    // Everyone who reaches this component: reverse breadth-first search from its members.
    std::vector<bool> seen(n, false);
    std::vector<int> frontier = members[c];
    for (int v : frontier) seen[v] = true;
    std::set<int> direct;
    while (!frontier.empty()) {
      int v = frontier.back();
      frontier.pop_back();
      for (int u : in[v]) {
        if (comp[v] == c && comp[u] != c) direct.insert(cpu_of[u]);
        if (!seen[u]) {
          seen[u] = true;
          frontier.push_back(u);
        }
      }
    }
    for (int v = 0; v < n; ++v)
      if (seen[v] && comp[v] != c) r.waiters.push_back(cpu_of[v]);
    // A lone node with nobody waiting on it is not a root of anything (only happens for a
    // node that appears solely through ignored self-edges, which were never added).
    if (!r.cycle && r.waiters.empty()) continue;
    r.direct_waiters.assign(direct.begin(), direct.end());
    std::sort(r.roots.begin(), r.roots.end());
    std::sort(r.waiters.begin(), r.waiters.end());
    roots.push_back(std::move(r));
  }
  std::sort(roots.begin(), roots.end(),
            [](const WaitRoot& a, const WaitRoot& b) { return a.roots.front() < b.roots.front(); });
  return roots;
}

}  // namespace stallmon::diagnosis
