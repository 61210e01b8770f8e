# protobuf + gRPC C++ from Debian (libgrpc++-dev, protobuf-compiler-grpc). pkg-config is used
# rather than gRPCConfig.cmake, whose Debian build references targets that are not installed.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_PROTOBUF REQUIRED IMPORTED_TARGET GLOBAL protobuf>=3.12)
pkg_check_modules(STALLMON_GRPCPP REQUIRED IMPORTED_TARGET GLOBAL grpc++>=1.30)
find_program(STALLMON_PROTOC protoc REQUIRED)
find_program(STALLMON_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
find_library(STALLMON_GRPCPP_REFLECTION_LIB grpc++_reflection REQUIRED)

add_library(stallmon::protobuf ALIAS PkgConfig::STALLMON_PROTOBUF)
add_library(stallmon_grpc INTERFACE)
target_link_libraries(stallmon_grpc INTERFACE PkgConfig::STALLMON_GRPCPP PkgConfig::STALLMON_PROTOBUF)
add_library(stallmon::grpc ALIAS stallmon_grpc)
add_library(stallmon_grpc_reflection INTERFACE)
# Reflection registers itself from a static initialiser: keep the library even if unreferenced.
target_link_libraries(stallmon_grpc_reflection INTERFACE
  "-Wl,--push-state,--no-as-needed" ${STALLMON_GRPCPP_REFLECTION_LIB} "-Wl,--pop-state" stallmon_grpc)
add_library(stallmon::grpc_reflection ALIAS stallmon_grpc_reflection)
