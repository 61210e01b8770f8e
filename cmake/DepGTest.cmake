# GoogleTest and GoogleMock from Debian (libgtest-dev, libgmock-dev).
find_package(GTest REQUIRED CONFIG)
include(GoogleTest)
add_library(stallmon_gtest INTERFACE)
target_link_libraries(stallmon_gtest INTERFACE GTest::gtest GTest::gmock)
add_library(stallmon::gtest ALIAS stallmon_gtest)
add_library(stallmon_gtest_main INTERFACE)
target_link_libraries(stallmon_gtest_main INTERFACE GTest::gtest_main GTest::gmock)
add_library(stallmon::gtest_main ALIAS stallmon_gtest_main)
