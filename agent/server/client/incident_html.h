// SPDX-License-Identifier: Apache-2.0
// `stallctl incident ID --html FILE`: a self-contained HTML report of an incident bundle (no
// script, stylesheet, font or image from elsewhere: it opens from a mail attachment or an
// air-gapped host). Its timeline is inline SVG:
//   - one lane per vCPU: its host thread's state over time (R running, S sleeping, D/T/t
//     blocked), from the samples;
//   - one lane per guest CPU: running / idle / offline, with the watchdog touch age drawn as a
//     line over it (the higher, the closer to a soft lockup);
//   - each csd wait as an arrow from the waiter's lane to the target's, where the wait began,
//     with the waiting span shaded on the waiter's lane;
//   - the onset and resolution of each finding in the window as vertical marks.
// Every string in it came partly from the guest and is escaped; the picture's element count is
// bounded by the bundle's own bounds (lanes) and by merging samples into spans.
#pragma once

#include <string>

#include "stallmon/base/result.h"
#include "stallmon/v1/stallmon.pb.h"

namespace stallmon::server::client {

// The whole document (XHTML-compatible: every element closed, so it parses as XML too).
std::string render_incident_html(const v1::Incident& incident);
// Writes it to `path` (created 0644, or replaced); errors name the path.
Result<void> write_incident_html(const v1::Incident& incident, const std::string& path);

}  // namespace stallmon::server::client
