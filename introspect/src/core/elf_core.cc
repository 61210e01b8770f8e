// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/elf_core.h"
