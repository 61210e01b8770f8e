// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/ram_layout.h"
