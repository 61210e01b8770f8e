// SPDX-License-Identifier: Apache-2.0
#include "stallmon/base/utf8.h"

#include <gtest/gtest.h>

namespace stallmon {
namespace {

constexpr const char* kFffd = "\xEF\xBF\xBD";

TEST(Utf8Test, SequenceLengths) {
  EXPECT_EQ(utf8_sequence_length("a", 0), 1u);
  EXPECT_EQ(utf8_sequence_length("\xc3\xa9", 0), 2u);          // é
  EXPECT_EQ(utf8_sequence_length("\xe2\x82\xac", 0), 3u);      // €
  EXPECT_EQ(utf8_sequence_length("\xf0\x9f\x98\x80", 0), 4u);  // U+1F600
  EXPECT_EQ(utf8_sequence_length("\xf4\x8f\xbf\xbf", 0), 4u);  // U+10FFFF, the last one
}

TEST(Utf8Test, RejectsMalformedSequences) {
  EXPECT_EQ(utf8_sequence_length("\x80", 0), 0u);              // stray continuation byte
  EXPECT_EQ(utf8_sequence_length("\xc3", 0), 0u);              // truncated
  EXPECT_EQ(utf8_sequence_length("\xc3" "a", 0), 0u);          // bad continuation
  EXPECT_EQ(utf8_sequence_length("\xc0\xaf", 0), 0u);          // overlong '/'
  EXPECT_EQ(utf8_sequence_length("\xe0\x80\xaf", 0), 0u);      // overlong, 3 bytes
  EXPECT_EQ(utf8_sequence_length("\xed\xa0\x80", 0), 0u);      // surrogate U+D800
  EXPECT_EQ(utf8_sequence_length("\xf4\x90\x80\x80", 0), 0u);  // U+110000
  EXPECT_EQ(utf8_sequence_length("\xff", 0), 0u);
}

TEST(Utf8Test, SanitizeKeepsValidTextAndReplacesEachBadByte) {
  EXPECT_EQ(sanitize_utf8("swapper/2"), "swapper/2");
  EXPECT_EQ(sanitize_utf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(sanitize_utf8("a\xff" "b"), std::string("a") + kFffd + "b");
  EXPECT_EQ(sanitize_utf8("\xc0\xaf"), std::string(kFffd) + kFffd);
  EXPECT_EQ(sanitize_utf8("\xed\xa0\x80", "?"), "???");
  EXPECT_EQ(sanitize_utf8(std::string_view("a\0b", 3)), std::string("a\0b", 3));  // NUL is valid
}

}  // namespace
}  // namespace stallmon
