// SPDX-License-Identifier: Apache-2.0
// Translation of libvirt's lifecycle event codes into DomainEvent (private to agent/libvirt).
#pragma once

#include "stallmon/libvirt/domain.h"

namespace stallmon::libvirt {

// `event` is a virDomainEventType, `detail` the matching virDomainEvent*DetailType. Fills kind and
// detail only.
DomainEvent map_lifecycle_event(int event, int detail);

}  // namespace stallmon::libvirt
