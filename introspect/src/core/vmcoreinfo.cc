// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/vmcoreinfo.h"
