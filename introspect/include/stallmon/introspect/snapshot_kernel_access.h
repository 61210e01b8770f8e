// SPDX-License-Identifier: Apache-2.0
// KernelAccess over a discovered Kernel: batched virtual reads through KernelMemory (one
// physical batch per call), kallsyms for names, BTF for member layouts.
#pragma once

#include <memory>

#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

// `kernel` must outlive the result and have types (has_types()).
std::unique_ptr<KernelAccess> make_kernel_access(Kernel& kernel);

// The type queries of KernelAccess answered from `types` alone (no memory, no symbols): what
// `stallctl profile make --btf` records a profile from.
std::unique_ptr<KernelAccess> make_types_access(std::shared_ptr<const Types> types);

}  // namespace stallmon::introspect
