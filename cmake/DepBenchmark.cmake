# Google Benchmark from Debian (libbenchmark-dev).
find_package(benchmark REQUIRED CONFIG)
add_library(stallmon_benchmark INTERFACE)
target_link_libraries(stallmon_benchmark INTERFACE benchmark::benchmark)
add_library(stallmon::benchmark ALIAS stallmon_benchmark)
add_library(stallmon_benchmark_main INTERFACE)
target_link_libraries(stallmon_benchmark_main INTERFACE benchmark::benchmark_main)
add_library(stallmon::benchmark_main ALIAS stallmon_benchmark_main)
